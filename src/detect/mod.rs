//! Event detection over per-hop group scores (pure logic: no threads, no clocks).
//!
//! Each hop the inference stage hands over one scored window. A *group* (glass,
//! gunshot, …) maps to AudioSet classes; its score for the hop is the highest of its
//! classes' pooled scores (the window pooled per the group's `pooling`). A group's
//! event is raised when its score reaches `on` in `onset_hops` of the last
//! `onset_of` hops, or `sure` (when set) in one, outside its cooldown; it ends when the score falls below `off`
//! (hysteresis) or the event reaches `max_event_s`. The onset time is the start of
//! the newest hop of audio in the first window that crossed `on`: that slice is what
//! the previous window did not hear.
//!
//! Scores come in through [`GroupScorer`], so a trained per-group detector can
//! replace the pooled AudioSet scores without touching the event logic.

pub mod config;
pub mod tone;
pub mod trained;

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::classify::{top_k, Prediction};
use crate::model::{Labels, Pooling};
use config::GroupConfig;

/// One hop's scored window, as the detector sees it.
#[derive(Debug, Clone)]
pub struct Hop<'a> {
    /// Window start, seconds from the stream start.
    pub start_s: f64,
    /// Window end, seconds from the stream start.
    pub end_s: f64,
    /// Seconds of new audio this hop added (the window's newest slice).
    pub hop_s: f64,
    /// Scores pooled by mean over the window's units.
    pub scores_mean: &'a [f32],
    /// Scores pooled by max over the window's units.
    pub scores_max: &'a [f32],
    /// Window loudness, dBFS.
    pub dbfs: f32,
    /// The model's embedding pooled over the window (all zeros when the gate
    /// skipped it; empty when the caller has none).
    pub embedding: &'a [f32],
    /// A fine-tuned network's group probabilities (empty without one).
    pub heads: &'a [f32],
    /// That network's own AudioSet probabilities, max-pooled (empty without one).
    pub net_scores: &'a [f32],
    /// The hop's score of each tone template (see [`Detector::tone_templates`]).
    pub tones: &'a [f32],
    /// Wall-clock time of the window end.
    pub wall: SystemTime,
}

/// A [`Hop`] that owns its scores, for recording a stream's hops and replaying
/// them through detectors with other settings (`hearken eval`'s threshold sweeps).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedHop {
    /// Window start, seconds.
    pub start_s: f64,
    /// Window end, seconds.
    pub end_s: f64,
    /// Seconds of new audio this hop added.
    pub hop_s: f64,
    /// Scores pooled by mean.
    pub scores_mean: Vec<f32>,
    /// Scores pooled by max.
    pub scores_max: Vec<f32>,
    /// Window loudness, dBFS.
    pub dbfs: f32,
    /// Pooled embedding.
    pub embedding: Vec<f32>,
    /// A fine-tuned network's group probabilities (empty without one).
    pub heads: Vec<f32>,
    /// That network's own AudioSet probabilities (empty without one).
    pub net_scores: Vec<f32>,
    /// Tone template scores (empty without templates).
    pub tones: Vec<f32>,
}

impl OwnedHop {
    /// A copy of `hop`.
    pub fn of(hop: &Hop<'_>) -> OwnedHop {
        OwnedHop {
            start_s: hop.start_s,
            end_s: hop.end_s,
            hop_s: hop.hop_s,
            scores_mean: hop.scores_mean.to_vec(),
            scores_max: hop.scores_max.to_vec(),
            dbfs: hop.dbfs,
            embedding: hop.embedding.to_vec(),
            heads: hop.heads.to_vec(),
            net_scores: hop.net_scores.to_vec(),
            tones: hop.tones.to_vec(),
        }
    }

    /// This hop as a [`Hop`] stamped with `wall`.
    pub fn as_hop(&self, wall: SystemTime) -> Hop<'_> {
        Hop {
            start_s: self.start_s,
            end_s: self.end_s,
            hop_s: self.hop_s,
            scores_mean: &self.scores_mean,
            scores_max: &self.scores_max,
            dbfs: self.dbfs,
            embedding: &self.embedding,
            heads: &self.heads,
            net_scores: &self.net_scores,
            tones: &self.tones,
            wall,
        }
    }
}

/// Per-group score source for a hop. The default reads pooled AudioSet scores.
pub trait GroupScorer: Send {
    /// The group's score in [0, 1] for this hop.
    fn score(&mut self, hop: &Hop<'_>) -> f32;

    /// How high [`GroupScorer::score`] could go for `hop` (without counting it as
    /// the next hop): the score itself, or, for a scorer with a hard gate, the
    /// score the gate would let through. Quietness is judged by it: a gate whose
    /// evidence sits near its threshold opens in one window and not in the next,
    /// so a gated-out neighbour says nothing about a skipped window. `None`: this
    /// scorer cannot say (a replay of fixed scores).
    fn reach(&mut self, _hop: &Hop<'_>) -> Option<f32> {
        None
    }

    /// [`GroupScorer::reach`] of the last hop scored (`None`: the score itself).
    fn last_reach(&self) -> Option<f32> {
        None
    }

    /// A scorer that reads a tone template's hop score takes `slot` in
    /// [`Hop::tones`] and returns its template; others return `None`.
    fn tone(&mut self, _slot: usize) -> Option<tone::ToneTemplate> {
        None
    }

    /// For a scorer with a home correction: the last hop's score without it, and
    /// the `off` threshold that score was shipped with (what the home store keeps
    /// windows by). `None`: the score is its own base, and the group's `off` the floor.
    fn base(&self) -> Option<(f32, f32)> {
        None
    }
}

/// Scores handed out in order, one per hop whatever the hop (0 past the end): a
/// replay of precomputed scores through the real event logic (training's
/// out-of-fold predictions, adapting's corrected home windows).
#[derive(Debug, Clone)]
pub struct Fixed {
    scores: Vec<f32>,
    next: usize,
}

impl Fixed {
    /// A scorer that hands out `scores` in order.
    pub fn new(scores: Vec<f32>) -> Self {
        Fixed { scores, next: 0 }
    }
}

impl GroupScorer for Fixed {
    fn score(&mut self, _: &Hop<'_>) -> f32 {
        let s = self.scores.get(self.next).copied().unwrap_or(0.0);
        self.next += 1;
        s
    }
}

/// Group score = highest pooled score among the group's AudioSet classes.
#[derive(Debug, Clone)]
pub struct ClassScorer {
    classes: Vec<usize>,
    pooling: Pooling,
}

impl ClassScorer {
    /// Resolves `cfg.labels` against `labels`; errors name the unknown label.
    pub fn new(group: &str, cfg: &GroupConfig, labels: &Labels) -> Result<Self, String> {
        let mut classes = Vec::new();
        for l in &cfg.labels {
            match labels.find(l) {
                Some(i) => classes.push(i),
                None => {
                    return Err(format!(
                        "detection.groups.{group}.labels: '{l}' is not a class of this model"
                    ))
                }
            }
        }
        Ok(ClassScorer {
            classes,
            pooling: cfg.tuning.pooling,
        })
    }
}

impl GroupScorer for ClassScorer {
    fn score(&mut self, hop: &Hop<'_>) -> f32 {
        let s = match self.pooling {
            Pooling::Mean => hop.scores_mean,
            Pooling::Max => hop.scores_max,
        };
        self.classes
            .iter()
            .filter_map(|&i| s.get(i).copied())
            .fold(0.0, f32::max)
    }

    fn reach(&mut self, hop: &Hop<'_>) -> Option<f32> {
        Some(self.score(hop))
    }
}

/// Whether an event message announces a start or an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// The event was raised; `end_s` is null.
    Start,
    /// The event ended; same id as its start.
    End,
}

/// One group's view of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupView {
    /// Score before any home correction (what the shipped detector says).
    pub base: f32,
    /// Score the daemon acted on.
    pub score: f32,
    /// Whether an event of the group was open at this window.
    pub active: bool,
}

/// A home event, as published (JSON) when it starts and again when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Stable id shared by the start and end messages.
    pub id: Uuid,
    /// Group name.
    pub group: String,
    /// `start` or `end`.
    pub state: EventState,
    /// True for home-safety groups.
    pub safety: bool,
    /// Onset, seconds from the stream start.
    pub start_s: f64,
    /// End, seconds from the stream start (null while it lasts).
    pub end_s: Option<f64>,
    /// When the start was announced, seconds from the stream start (the end of the
    /// window that raised it): `detected_s - start_s` is the detection latency.
    pub detected_s: f64,
    /// Onset, RFC 3339 wall clock.
    pub started_at: String,
    /// End, RFC 3339 wall clock (null while it lasts).
    pub ended_at: Option<String>,
    /// Highest group score so far.
    pub peak_score: f32,
    /// Top AudioSet labels of the window with the peak score.
    pub labels: Vec<Prediction>,
    /// Loudness of the window with the peak score, dBFS.
    pub dbfs: f32,
    /// Node id.
    pub node: String,
    /// Room of the source.
    pub room: String,
    /// The source that heard it (`[[sources]]` name; `default` for the single
    /// `[audio] source`). Empty in messages written before sources had names.
    #[serde(default)]
    pub source: String,
    /// Model name.
    pub model: String,
    /// On an `end` only: the process that raised the event died while it was open,
    /// so its true end is unknown; hearken closed it when it started again. Absent
    /// (false) on every other message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// The evidence clip of this event (`[privacy] evidence_clips`), once its fate
    /// is known: the file name under the state directory's `clips/`, or
    /// `suppressed (speech)`. Absent when clips are off or not yet decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
}

impl Event {
    /// An event of `group` for unit tests: stream second 1 to 3 (open for a start),
    /// score 0.9, no labels.
    #[cfg(test)]
    pub(crate) fn for_test(group: &str, state: EventState, id: uuid::Uuid) -> Event {
        Event {
            id,
            group: group.into(),
            state,
            safety: true,
            start_s: 1.0,
            end_s: (state == EventState::End).then_some(3.0),
            detected_s: 1.5,
            started_at: "2026-12-07T10:15:00.123Z".into(),
            ended_at: None,
            peak_score: 0.9,
            labels: vec![],
            dbfs: -20.0,
            node: "n".into(),
            room: "r".into(),
            source: "default".into(),
            model: "m".into(),
            interrupted: false,
            clip: None,
        }
    }
}

struct Group {
    name: String,
    cfg: GroupConfig,
    scorer: Box<dyn GroupScorer>,
    history: VecDeque<bool>,
    /// Onset candidates (newest-slice start) of the hops in `history`.
    onsets: VecDeque<f64>,
    active: Option<Event>,
    /// The open event's start message has been sent (it waits for
    /// `min_duration_s`).
    announced: bool,
    cooldown_until: f64,
    last_score: f32,
}

impl Group {
    /// No event open and no hop over `on` in the onset rule's memory.
    fn calm(&self) -> bool {
        self.active.is_none() && !self.history.iter().any(|&h| h)
    }
}

/// A group's settings with a trained detector's thresholds and onset rule (the
/// raw-score ones mean nothing on its scale); cooldown and timing stay the group's.
pub fn apply_trained(cfg: &mut GroupConfig, d: &trained::LinearDetector) {
    cfg.tuning.on = d.on;
    cfg.tuning.off = d.off;
    if d.onset_hops > 0 {
        cfg.tuning.onset_hops = d.onset_hops;
        cfg.tuning.onset_of = d.onset_of;
    }
    cfg.tuning.sure = d.sure;
}

/// Identity stamped on every event.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Node id.
    pub node: String,
    /// Room of the source.
    pub room: String,
    /// Source name.
    pub source: String,
    /// Model name.
    pub model: String,
}

/// The detector for all enabled groups.
pub struct Detector {
    groups: Vec<Group>,
    ident: Identity,
    top_labels: usize,
}

/// The labels an event reports: the group's own best class first (its evidence:
/// "Gunshot, gunfire 0.41" before an unrelated "Firecracker 0.26" that happens to
/// score higher), then the window's other top labels, `k` in all. A group none of
/// whose labels the model knows gets the plain top `k`.
pub fn evidence_first(
    scores: &[f32],
    labels: &Labels,
    k: usize,
    group_labels: &[String],
) -> Vec<Prediction> {
    let own: Vec<usize> = group_labels.iter().filter_map(|l| labels.find(l)).collect();
    let mut out = top_k(scores, labels, 1.min(k), Some(&own));
    for p in top_k(scores, labels, k + 1, None) {
        if out.len() >= k {
            break;
        }
        if !out
            .iter()
            .any(|o| o.label_id == p.label_id && o.label == p.label)
        {
            out.push(p);
        }
    }
    out
}

/// How far under its `off` threshold every group's score must be for the
/// inference stage to leave a window unscored: a window is skipped only while the
/// windows before and after it (which share three quarters of its sound at the
/// usual 2 s windows every 0.5 s) score every group under half its `off`, and
/// is scored after all when the one after it does not.
pub const QUIET_MARGIN: f32 = 0.5;

/// `t` as RFC 3339 with milliseconds, UTC. A time before 1970 (an event that
/// started just after a clock without an RTC was reset to the epoch, or a replay
/// on a time line that starts there) is written as the epoch: humantime panics on it.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t.max(SystemTime::UNIX_EPOCH)).to_string()
}

impl Detector {
    /// A detector over `(name, config, scorer)` triples; disabled groups are skipped.
    pub fn new(groups: Vec<(String, GroupConfig, Box<dyn GroupScorer>)>, ident: Identity) -> Self {
        let mut d = Detector {
            groups: groups
                .into_iter()
                .filter(|(_, c, _)| c.enabled)
                .map(|(name, cfg, scorer)| Group {
                    name,
                    cfg,
                    scorer,
                    history: VecDeque::new(),
                    onsets: VecDeque::new(),
                    active: None,
                    announced: false,
                    cooldown_until: f64::NEG_INFINITY,
                    last_score: 0.0,
                })
                .collect(),
            ident,
            top_labels: 5,
        };
        // Tone scorers learn their slots now: a replay of recorded hops reads them
        // without asking for the templates.
        d.tone_templates();
        d
    }

    /// Builds class scorers for every enabled group of `groups` against `labels`.
    pub fn from_config<'a>(
        groups: impl IntoIterator<Item = (&'a String, &'a GroupConfig)>,
        labels: &Labels,
        ident: Identity,
    ) -> Result<Self, String> {
        Self::with_trained(groups, labels, ident, &[])
    }

    /// As [`Detector::from_config`], but a group with a trained detector in
    /// `trained` is scored by it, with its `on`/`off` thresholds (the raw-score ones
    /// mean nothing on its scale) and its onset rule if it has one; cooldown and
    /// timing stay the group's.
    pub fn with_trained<'a>(
        groups: impl IntoIterator<Item = (&'a String, &'a GroupConfig)>,
        labels: &Labels,
        ident: Identity,
        trained: &[trained::LinearDetector],
    ) -> Result<Self, String> {
        let mut v = Vec::new();
        for (name, cfg) in groups {
            if !cfg.enabled {
                continue;
            }
            let mut cfg = cfg.clone();
            let scorer: Box<dyn GroupScorer> = match trained.iter().find(|d| &d.group == name) {
                Some(d) => {
                    apply_trained(&mut cfg, d);
                    Box::new(trained::LinearScorer::new(d.clone()))
                }
                None => Box::new(ClassScorer::new(name, &cfg, labels)?),
            };
            v.push((name.clone(), cfg, scorer));
        }
        Ok(Detector::new(v, ident))
    }

    /// [`Detector::with_trained`] for groups held as owned pairs, stamping events
    /// with node `node`, room `room`, source `source` and model `model`.
    pub fn for_source(
        groups: &[(String, config::GroupConfig)],
        labels: &Labels,
        (node, room, source, model): (&str, &str, &str, &str),
        trained: &[trained::LinearDetector],
    ) -> Result<Self, String> {
        let ident = Identity {
            node: node.to_string(),
            room: room.to_string(),
            source: source.to_string(),
            model: model.to_string(),
        };
        Self::with_trained(groups.iter().map(|(n, g)| (n, g)), labels, ident, trained)
    }

    /// The tone templates of the groups' scorers, in the order their scores go
    /// in [`Hop::tones`] (each scorer learns its slot here).
    pub fn tone_templates(&mut self) -> Vec<tone::ToneTemplate> {
        let mut out = Vec::new();
        for g in &mut self.groups {
            if let Some(t) = g.scorer.tone(out.len()) {
                out.push(t);
            }
        }
        out
    }

    /// Names of the groups being watched.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// What the home store records of the last hop: each group's score before and
    /// after any home correction, and whether an event of it is open.
    pub fn home_views(&self) -> Vec<GroupView> {
        self.groups
            .iter()
            .map(|g| GroupView {
                base: g.scorer.base().map_or(g.last_score, |b| b.0),
                score: g.last_score,
                active: g.active.is_some(),
            })
            .collect()
    }

    /// Each group's floor for the home store: the `off` threshold of its base
    /// score (see [`GroupScorer::base`]).
    pub fn home_floors(&self) -> Vec<f32> {
        self.groups
            .iter()
            .map(|g| g.scorer.base().map_or(g.cfg.tuning.off, |b| b.1))
            .collect()
    }

    /// Whether every group is far from an event after the last hop: none open,
    /// no hop over `on` in any onset rule's memory, and every score (its reach,
    /// [`GroupScorer::reach`]) under `margin × off`. The inference stage then
    /// leaves the next window unscored (see [`QUIET_MARGIN`]).
    pub fn settled(&self, margin: f32) -> bool {
        self.groups.iter().all(|g| {
            g.calm() && g.scorer.last_reach().unwrap_or(g.last_score) < margin * g.cfg.tuning.off
        })
    }

    /// Whether `hop` would leave every group far from an event (as
    /// [`Detector::settled`], for a hop not yet fed). A group whose scorer
    /// cannot score ahead counts as not quiet.
    pub fn quiet(&mut self, hop: &Hop<'_>, margin: f32) -> bool {
        self.groups.iter_mut().all(|g| {
            g.calm()
                && g.scorer
                    .reach(hop)
                    .is_some_and(|s| s < margin * g.cfg.tuning.off)
        })
    }

    /// Each group's latest score, for status reports.
    pub fn last_scores(&self) -> Vec<(&str, f32, bool)> {
        self.groups
            .iter()
            .map(|g| (g.name.as_str(), g.last_score, g.active.is_some()))
            .collect()
    }

    /// Feeds one hop; appends started and ended events to `out`.
    pub fn step(&mut self, hop: &Hop<'_>, labels: &Labels, out: &mut Vec<Event>) {
        let ident = &self.ident;
        let k = self.top_labels;
        for g in &mut self.groups {
            let score = g.scorer.score(hop);
            g.last_score = score;
            let m = g.cfg.tuning.onset_of.max(1);
            g.history.push_back(score >= g.cfg.tuning.on);
            g.onsets.push_back((hop.end_s - hop.hop_s).max(hop.start_s));
            while g.history.len() > m {
                g.history.pop_front();
                g.onsets.pop_front();
            }
            let pool = || match g.cfg.tuning.pooling {
                Pooling::Mean => hop.scores_mean,
                Pooling::Max => hop.scores_max,
            };
            let event_labels = || evidence_first(pool(), labels, k, &g.cfg.labels);
            if let Some(a) = g.active.as_mut() {
                if score > a.peak_score {
                    a.peak_score = score;
                    a.labels = event_labels();
                    a.dbfs = hop.dbfs;
                }
                let too_long = hop.end_s - a.start_s >= g.cfg.tuning.max_event_s;
                if score < g.cfg.tuning.off || too_long {
                    out.extend(Self::close(g, hop.end_s, hop.wall));
                } else if !g.announced && hop.end_s - a.start_s >= g.cfg.tuning.min_duration_s {
                    g.announced = true;
                    a.detected_s = hop.end_s;
                    out.push(a.clone());
                }
                continue;
            }
            let hits = g.history.iter().filter(|&&h| h).count();
            let in_cooldown = hop.end_s < g.cooldown_until;
            let sure = g.cfg.tuning.sure.is_some_and(|s| score >= s);
            if (hits >= g.cfg.tuning.onset_hops.max(1) || sure) && !in_cooldown {
                // Onset: the newest slice of the earliest qualifying hop.
                let first = g
                    .history
                    .iter()
                    .position(|&h| h)
                    .map_or(hop.end_s - hop.hop_s, |i| g.onsets[i]);
                let back = hop.end_s - first;
                let started_wall = hop
                    .wall
                    .checked_sub(std::time::Duration::from_secs_f64(back.max(0.0)))
                    .unwrap_or(hop.wall);
                let event = Event {
                    id: Uuid::new_v4(),
                    group: g.name.clone(),
                    state: EventState::Start,
                    safety: g.cfg.safety,
                    start_s: first.max(0.0),
                    end_s: None,
                    detected_s: hop.end_s,
                    started_at: rfc3339(started_wall),
                    ended_at: None,
                    peak_score: score,
                    labels: event_labels(),
                    dbfs: hop.dbfs,
                    node: ident.node.clone(),
                    room: ident.room.clone(),
                    source: ident.source.clone(),
                    model: ident.model.clone(),
                    interrupted: false,
                    clip: None,
                };
                // Short events wait for min_duration_s before they are announced.
                g.announced = g.cfg.tuning.min_duration_s <= 0.0;
                if g.announced {
                    out.push(event.clone());
                }
                g.active = Some(event);
                // A fresh event must not be re-raised from the same hits.
                g.history.clear();
                g.onsets.clear();
            }
        }
    }

    /// Ends the open event; `None` when it was never announced (too short).
    fn close(g: &mut Group, end_s: f64, wall: SystemTime) -> Option<Event> {
        let mut e = g.active.take()?;
        g.cooldown_until = end_s + g.cfg.tuning.cooldown_s;
        g.history.clear();
        g.onsets.clear();
        e.state = EventState::End;
        e.end_s = Some(end_s.max(e.start_s));
        e.ended_at = Some(rfc3339(wall));
        std::mem::take(&mut g.announced).then_some(e)
    }

    /// Ends every open event (end of stream or shutdown) at `end_s`.
    pub fn finish(&mut self, end_s: f64, wall: SystemTime, out: &mut Vec<Event>) {
        for g in &mut self.groups {
            out.extend(Self::close(g, end_s, wall));
        }
    }

    /// Replaces group settings (a config reload) keeping open events of groups that
    /// still exist; events of removed or disabled groups are ended at `end_s`.
    pub fn reconfigure(
        &mut self,
        new: Detector,
        end_s: f64,
        wall: SystemTime,
        out: &mut Vec<Event>,
    ) {
        let mut old: Vec<Group> = std::mem::take(&mut self.groups);
        let mut groups = new.groups;
        for g in &mut groups {
            if let Some(pos) = old.iter().position(|o| o.name == g.name) {
                let o = old.swap_remove(pos);
                g.active = o.active;
                g.announced = o.announced;
                g.cooldown_until = o.cooldown_until;
            }
        }
        for mut o in old {
            out.extend(Self::close(&mut o, end_s, wall));
        }
        self.groups = groups;
        self.ident = new.ident;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_are_written_as_the_epoch() {
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(500);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let after = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500);
        assert_eq!(rfc3339(after), "1970-01-01T00:00:01.500Z");
    }

    fn cfg(on: f32, off: f32, n: usize, m: usize) -> GroupConfig {
        GroupConfig::new(
            true,
            true,
            vec!["Glass".into()],
            config::Tuning {
                on,
                off,
                onset_hops: n,
                onset_of: m,
                sure: None,
                pooling: Pooling::Max,
                cooldown_s: 5.0,
                max_event_s: 20.0,
                min_duration_s: 0.0,
            },
        )
    }

    fn labels() -> Labels {
        Labels::from_names(&["Speech", "Glass"])
    }

    #[test]
    fn an_event_reports_its_own_evidence_first() {
        let l = Labels::from_names(&["Firecracker", "Gunshot, gunfire", "Silence", "Speech"]);
        let s = [0.26, 0.12, 0.2, 0.01];
        let names =
            |v: Vec<Prediction>| -> Vec<String> { v.into_iter().map(|p| p.label).collect() };
        let g = vec!["Gunshot, gunfire".to_string(), "Explosion".to_string()];
        assert_eq!(
            names(evidence_first(&s, &l, 3, &g)),
            vec!["Gunshot, gunfire", "Firecracker", "Silence"]
        );
        // Already on top: no duplicate.
        let g = vec!["Firecracker".to_string()];
        assert_eq!(
            names(evidence_first(&s, &l, 3, &g)),
            vec!["Firecracker", "Silence", "Gunshot, gunfire"]
        );
        // Labels the model lacks: the plain top k.
        assert_eq!(
            names(evidence_first(&s, &l, 2, &["Bark".to_string()])),
            vec!["Firecracker", "Silence"]
        );
        assert!(evidence_first(&s, &l, 0, &g).is_empty());
    }

    /// Runs the detector over per-hop glass scores (hop 1 s, window 10 s ending at
    /// t = i + 1).
    fn run(c: GroupConfig, glass: &[f32]) -> Vec<Event> {
        let l = labels();
        let mut d = Detector::from_config(
            [(&"glass".to_string(), &c)],
            &l,
            Identity {
                node: "n".into(),
                room: "r".into(),
                source: "default".into(),
                model: "m".into(),
            },
        )
        .unwrap();
        let mut out = Vec::new();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (i, &s) in glass.iter().enumerate() {
            let scores = [0.5, s];
            let end = i as f64 + 1.0;
            let hop = Hop {
                start_s: (end - 10.0).max(0.0),
                end_s: end,
                hop_s: 1.0,
                scores_mean: &scores,
                scores_max: &scores,
                dbfs: -20.0,
                embedding: &[],
                heads: &[],
                net_scores: &[],
                tones: &[],
                wall: t0 + std::time::Duration::from_secs_f64(end),
            };
            d.step(&hop, &l, &mut out);
        }
        let end = glass.len() as f64;
        d.finish(end, t0 + std::time::Duration::from_secs_f64(end), &mut out);
        out
    }

    #[test]
    fn raises_once_and_ends_with_the_same_id() {
        let ev = run(cfg(0.5, 0.3, 1, 1), &[0.1, 0.2, 0.8, 0.9, 0.4, 0.2, 0.1]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].state, EventState::Start);
        assert_eq!(ev[1].state, EventState::End);
        assert_eq!(ev[0].id, ev[1].id);
        // First crossing hop ends at t=3: its new slice starts at 2.
        assert_eq!(ev[0].start_s, 2.0);
        assert_eq!(ev[0].end_s, None);
        // Falls under off (0.3) at the hop ending t=6 (score 0.2); 0.4 is hysteresis.
        assert_eq!(ev[1].end_s, Some(6.0));
        assert!((ev[1].peak_score - 0.9).abs() < 1e-6);
        assert_eq!(ev[1].labels[0].label, "Glass");
        assert_eq!(ev[0].started_at, "2023-11-14T22:13:22.000Z");
        assert!(ev[1].ended_at.is_some());
    }

    #[test]
    fn n_of_m_onset_ignores_single_spikes() {
        assert!(run(cfg(0.5, 0.3, 2, 3), &[0.1, 0.9, 0.1, 0.1, 0.9, 0.1]).is_empty());
        let ev = run(cfg(0.5, 0.3, 2, 3), &[0.1, 0.9, 0.1, 0.9, 0.6, 0.1]);
        assert_eq!(ev.len(), 2);
        // Onset dates back to the first hit of the qualifying run (hop ending t=2).
        assert_eq!(ev[0].start_s, 1.0);
    }

    #[test]
    fn a_sure_score_raises_at_once_and_a_lesser_one_waits_for_the_rule() {
        let mut c = cfg(0.5, 0.3, 3, 4);
        c.tuning.sure = Some(0.95);
        // 0.9 on its own waits for three hits: raised at the hop ending t=4.
        let ev = run(c.clone(), &[0.1, 0.9, 0.9, 0.9, 0.1]);
        assert_eq!((ev[0].start_s, ev[0].detected_s), (1.0, 4.0));
        // 0.97 is sure: raised at the hop ending t=2, where it came.
        let ev = run(c.clone(), &[0.1, 0.97, 0.9, 0.9, 0.1]);
        assert_eq!((ev[0].start_s, ev[0].detected_s), (1.0, 2.0));
        assert_eq!(
            ev.iter().filter(|e| e.state == EventState::Start).count(),
            1
        );
        // A sure hop after earlier hits dates the onset back to the first of them.
        let ev = run(c, &[0.1, 0.6, 0.97, 0.1, 0.1]);
        assert_eq!((ev[0].start_s, ev[0].detected_s), (1.0, 3.0));
    }

    #[test]
    fn cooldown_suppresses_a_quick_repeat() {
        // Ends at t=3, cooldown 5 s: the hit at t=6 is suppressed, t=9 raises again.
        let ev = run(
            cfg(0.5, 0.3, 1, 1),
            &[0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9],
        );
        let starts: Vec<f64> = ev
            .iter()
            .filter(|e| e.state == EventState::Start)
            .map(|e| e.start_s)
            .collect();
        assert_eq!(starts, vec![0.0, 8.0]);
    }

    #[test]
    fn long_events_are_cut_at_max_length_and_open_ones_close_at_the_end() {
        let mut c = cfg(0.5, 0.3, 1, 1);
        c.tuning.max_event_s = 4.0;
        c.tuning.cooldown_s = 0.0;
        let ev = run(c, &[0.9; 7]);
        let ends: Vec<Option<f64>> = ev
            .iter()
            .filter(|e| e.state == EventState::End)
            .map(|e| e.end_s)
            .collect();
        assert_eq!(ends, vec![Some(4.0), Some(7.0)]);
    }

    #[test]
    fn events_shorter_than_min_duration_are_not_reported() {
        let mut c = cfg(0.5, 0.3, 1, 1);
        c.tuning.min_duration_s = 2.5;
        assert!(run(c.clone(), &[0.1, 0.9, 0.9, 0.1, 0.1]).is_empty());
        let ev = run(c, &[0.1, 0.9, 0.9, 0.9, 0.1]);
        assert_eq!(ev.len(), 2);
        // Announced at the hop ending t=4 (3 s after the onset at 1), onset kept.
        assert_eq!(ev[0].start_s, 1.0);
        assert_eq!(ev[1].end_s, Some(5.0));
    }

    #[test]
    fn disabled_groups_and_unknown_labels() {
        let mut c = cfg(0.5, 0.3, 1, 1);
        c.enabled = false;
        assert!(run(c, &[0.9, 0.9]).is_empty());
        let mut c = cfg(0.5, 0.3, 1, 1);
        c.labels = vec!["Nope".into()];
        let err =
            Detector::from_config([(&"glass".to_string(), &c)], &labels(), Identity::default())
                .err()
                .unwrap();
        assert!(err.contains("detection.groups.glass.labels") && err.contains("Nope"));
    }

    #[test]
    fn event_json_has_the_documented_fields() {
        let ev = run(cfg(0.5, 0.3, 1, 1), &[0.9, 0.1]);
        let v = serde_json::to_value(&ev[0]).unwrap();
        for k in [
            "id",
            "group",
            "state",
            "safety",
            "start_s",
            "end_s",
            "started_at",
            "ended_at",
            "peak_score",
            "labels",
            "dbfs",
            "node",
            "room",
            "model",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(v["end_s"].is_null());
    }
}
