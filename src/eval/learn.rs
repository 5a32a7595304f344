//! `hearken train`: a detector per group (logistic regression or a small MLP) on
//! what the model says about each window (embedding, class log-odds or both; see
//! [`Features`]), learnt from labelled clips mixed into home backgrounds (the
//! augmentation: SNR, background, level and time shift all vary by seed, and each
//! clip is placed `repeats` times per SNR).
//!
//! Features, model and L2 penalty, and the `on` threshold and onset rule, are chosen
//! by cross-validation *by source recording*: the clips and backgrounds are dealt
//! into folds so that no recording is in two; each candidate is fitted on all folds
//! but one and scored on that one, and the detector logic is replayed over the
//! out-of-fold scores to find, per group, the candidate with the highest event
//! recall at the target false-alarm rate. The winner is refitted on all folds.
//!
//! Training mixtures go through the same pipeline as `hearken run --fast`, so the
//! features are exactly those the daemon sees. Everything is seeded; the split by
//! source recording ([`super::dataset`]) keeps the held-out recordings out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use serde::Serialize;

use super::dataset::{fnv1a, Split};
use super::hopcache;
use super::metrics::{median_sorted, score, Matching, TruthEvent};
use super::mix::{self, MixSpec, Signal};
use super::net::{self, NetOptions};
use super::run::{detections, load_clips, replay, run_pipeline, write_wav};
use crate::config::Config;
use crate::detect::trained::log_odds;
use crate::detect::trained::{Features, Gate, Hidden, LinearDetector, NetRef};
use crate::detect::{Detector, Fixed, Identity, OwnedHop};
use crate::eval::fit::{fit_logistic, fit_mlp, standardisation, window_label};
use crate::eval::validation::{Header as ValHeader, ValEvent, ValHop, ValidationSet};
use crate::model::Model;

/// A labelled source of clips.
#[derive(Debug, Clone)]
pub struct Source {
    /// Folder with `labels.csv`.
    pub dir: PathBuf,
    /// Which of its recordings to train on.
    pub split: Split,
    /// Only these groups' event clips, and none of its ordinary sounds (a folder
    /// kept for what it adds to some groups); `None`: all of it.
    pub groups: Option<Vec<String>>,
}

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Where the clips come from.
    pub sources: Vec<Source>,
    /// Groups to train (each needs event clips).
    pub groups: Vec<String>,
    /// Mixtures (seed, SNRs, slots); the rate should be the model's.
    pub mix: MixSpec,
    /// Event placements per mixture (bounds memory).
    pub events_per_mixture: usize,
    /// At most this many clips per group.
    pub max_per_group: Option<usize>,
    /// Placements of each clip per SNR, each over another stretch of background.
    pub repeats: usize,
    /// Target false alarms per hour when picking `on`.
    pub target_fa_per_hour: f64,
    /// Candidate feature kinds.
    pub features: Vec<Features>,
    /// Candidate L2 penalties.
    pub l2s: Vec<f64>,
    /// Candidate hidden-layer sizes (0: logistic regression).
    pub hidden_units: Vec<usize>,
    /// Gradient steps of a logistic regression.
    pub iterations: usize,
    /// Passes over the data of an MLP.
    pub epochs: usize,
    /// Cross-validation folds (at least 2), dealt by source recording.
    pub folds: usize,
    /// Deal background sounds to folds by kind (label) rather than by recording, so
    /// each fold's false alarms are counted on kinds of sound its fit never heard.
    pub backgrounds_by_kind: bool,
    /// Share of a candidate's cross-validated recall an evidence gate must keep
    /// (the strictest such gate is chosen).
    pub gate_keep: f64,
    /// Hard-negative mining: this share of a fit's negative windows, those it
    /// scores highest, count `hard_weight` times in a second fit (0: no mining).
    pub hard_share: f64,
    /// See `hard_share`.
    pub hard_weight: usize,
    /// Folder the detectors are written to.
    pub out: PathBuf,
    /// Scratch folder for mixture files.
    pub work_dir: PathBuf,
    /// Where scored mixtures are kept between runs (see [`super::hopcache`]); a
    /// mixture whose clips, backgrounds, mixing and model settings are unchanged is
    /// read back instead of run through the model again. Fine-tuned networks are
    /// kept there too.
    pub cache_dir: Option<PathBuf>,
    /// Also fine-tune the network end to end ([`super::net`]) and, per group, ship
    /// its output where it wins; with [`NetOptions::only`] the heads (`features`,
    /// `l2s`, `hidden_units`, hard negatives) are not tried at all.
    pub net: Option<NetOptions>,
}

impl TrainOptions {
    /// Whether hard-negative mining is on (for heads; a fine-tuned network has
    /// none to refit).
    fn mines(&self) -> bool {
        self.hard_share > 0.0 && self.hard_weight > 1 && !self.net.as_ref().is_some_and(|n| n.only)
    }
}

/// One candidate's cross-validated result.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Feature kind.
    pub features: &'static str,
    /// L2 penalty.
    pub l2: f64,
    /// Hidden units (0: logistic regression).
    pub hidden: usize,
    /// The threshold the replay chose.
    pub on: f32,
    /// The onset rule it chose: `onset_hops` of the last `onset_of` hops.
    pub onset_hops: usize,
    /// See `onset_hops`.
    pub onset_of: usize,
    /// The score that starts an event on its own hop (none: the rule alone).
    pub sure: Option<f32>,
    /// Evidence gate: the lowest score of the group's own classes that lets it
    /// fire (0: no gate).
    pub gate: f32,
    /// Whether the model was refitted with its hardest negatives weighted up.
    pub hard_negatives: bool,
    /// Out-of-fold event recall at that threshold.
    pub recall: f64,
    /// Out-of-fold false alarms per hour at that threshold.
    pub fa_per_hour: f64,
    /// Median out-of-fold latency from onset, seconds (none: nothing found).
    pub latency_s: Option<f64>,
}

impl Candidate {
    fn new(features: &'static str, l2: f64, hidden: usize, c: Choice) -> Self {
        Candidate {
            features,
            l2,
            hidden,
            on: 0.0,
            onset_hops: 0,
            onset_of: 0,
            sure: None,
            gate: 0.0,
            hard_negatives: false,
            recall: 0.0,
            fa_per_hour: 0.0,
            latency_s: None,
        }
        .with(c)
    }

    /// The same candidate with threshold, onset rule and results from `c`.
    fn with(self, c: Choice) -> Self {
        Candidate {
            on: c.on,
            onset_hops: c.onset.0,
            onset_of: c.onset.1,
            sure: c.sure,
            recall: c.recall,
            fa_per_hour: c.fa,
            latency_s: c.latency_s,
            ..self
        }
    }

    fn log(&self, group: &str) {
        tracing::info!(
            group = %group,
            "{group}: {} features, {} hidden units, L2 {}, hard negatives {}, gate {}: cross-validated recall {:.2} at {:.2} false alarms/h, latency {} (on {:.6}, {} of {} hops, sure {})",
            self.features, self.hidden, self.l2, self.hard_negatives, self.gate, self.recall, self.fa_per_hour,
            self.latency_s.map_or("-".to_string(), |l| format!("{l:.2} s")),
            self.on, self.onset_hops, self.onset_of,
            self.sure.map_or("-".to_string(), |s| format!("{s:.6}"))
        );
    }
}

/// Candidates (the best by cross-validation without a gate) that training tries
/// the evidence gate on.
const GATED_CANDIDATES: usize = 3;

/// Evidence-gate levels tried, from lenient to strict.
pub const GATE_LEVELS: [f32; 8] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];

/// The model's class indices of a group's labels.
fn group_classes(cfg: &Config, model: &Model, group: &str) -> Vec<usize> {
    cfg.detection
        .groups
        .get(group)
        .map(|gc| {
            gc.labels
                .iter()
                .filter_map(|l| model.labels().find(l))
                .collect()
        })
        .unwrap_or_default()
}

/// `scores` with every hop whose `evidence` is under `min` set to 0.
fn gated(scores: &[Vec<f32>], evidence: &[Vec<f32>], min: f32) -> Vec<Vec<f32>> {
    scores
        .iter()
        .zip(evidence)
        .map(|(s, e)| {
            s.iter()
                .zip(e)
                .map(|(&s, &e)| if e >= min { s } else { 0.0 })
                .collect()
        })
        .collect()
}

/// What training did, per group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    /// Group.
    pub group: String,
    /// Event clips used.
    pub clips: usize,
    /// Positive training windows.
    pub positives: usize,
    /// Negative windows.
    pub negatives: usize,
    /// The candidate chosen, with its cross-validated threshold, onset rule, recall
    /// and false alarms.
    #[serde(flatten)]
    pub chosen: Candidate,
    /// Off threshold.
    pub off: f32,
    /// Every candidate tried.
    pub candidates: Vec<Candidate>,
    /// The detector file.
    pub file: PathBuf,
}

struct Batch {
    fold: usize,
    truth: Vec<TruthEvent>,
    hops: Vec<OwnedHop>,
    background_h: f64,
}

/// Deals recordings into `folds` folds: per group (and for the backgrounds), the
/// recordings sorted by a stable hash go round-robin, so each fold gets its share
/// of every group and a recording's clips all land in one fold. With
/// `backgrounds_by_kind`, background recordings go by their label instead: each
/// kind of sound whole to the fold with the least background audio so far
/// (largest kinds first), so no kind is heard on both sides.
fn deal_folds(
    signals: &[&Signal],
    folds: usize,
    backgrounds_by_kind: bool,
) -> HashMap<String, usize> {
    let mut by_key: HashMap<Option<&str>, Vec<&str>> = HashMap::new();
    let mut kinds: HashMap<&str, (usize, Vec<&str>)> = HashMap::new();
    for s in signals {
        if backgrounds_by_kind && s.group.is_none() {
            let k = kinds.entry(&s.label).or_default();
            k.0 += s.samples.len();
            k.1.push(&s.recording);
        } else {
            by_key
                .entry(s.group.as_deref())
                .or_default()
                .push(&s.recording);
        }
    }
    let mut keys: Vec<_> = by_key.keys().copied().collect();
    keys.sort();
    let mut fold_of = HashMap::new();
    for k in keys {
        let recs = by_key.get_mut(&k).expect("key from the map");
        recs.sort_by_key(|r| (fnv1a(r), r.to_string()));
        recs.dedup();
        let mut next = 0;
        for r in recs.iter() {
            if !fold_of.contains_key(*r) {
                fold_of.insert(r.to_string(), next % folds);
                next += 1;
            }
        }
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
    let mut load = vec![0usize; folds];
    for (_, (len, recs)) in kinds {
        let f = (0..folds).min_by_key(|&f| load[f]).unwrap_or(0);
        load[f] += len;
        for r in recs {
            fold_of.entry(r.to_string()).or_insert(f);
        }
    }
    fold_of
}

/// A hash of everything a scored mixture depends on: the model and the pipeline
/// settings, the mixing spec, and the clips and backgrounds (names and lengths).
fn mixture_key(
    model: &Model,
    cfg: &Config,
    spec: &MixSpec,
    fold: usize,
    events: &[&Signal],
    backgrounds: &[&Signal],
) -> u64 {
    let mut text = format!(
        "{} {:?} {} {} {} {:?} {fold}",
        model.name(),
        model.manifest(),
        cfg.model.window_s,
        cfg.model.hop_s,
        cfg.audio.gate_dbfs,
        spec
    );
    // Only a fine-tuned network (run beside the model, adding its group outputs)
    // is named, so the shipped model's cached mixtures keep their keys.
    if let Some((_, sha)) = model.net() {
        text.push_str(&format!(" net-beside {sha}"));
    }
    for s in events.iter().chain(backgrounds) {
        text.push_str(&format!("|{} {:?} {}", s.name, s.group, s.samples.len()));
    }
    fnv1a(&text)
}

/// Trains and writes one detector per group; returns what it did.
pub fn train(model: Arc<Model>, cfg: &Config, opts: &TrainOptions) -> Result<Vec<GroupSummary>> {
    if opts.folds < 2 {
        bail!("cross-validation needs at least 2 folds");
    }
    if opts.features.is_empty() || opts.l2s.is_empty() || opts.hidden_units.is_empty() {
        bail!("no candidate features, L2 penalties or hidden sizes to try");
    }
    let group_refs: Vec<&str> = opts.groups.iter().map(String::as_str).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.mix.seed);
    // The network learns from up to `net.max_per_group` clips per group; the
    // mixtures (heads and calibration) take the first `max_per_group` of those, the
    // very clips a run without the network takes (a shuffle cut shorter).
    let net_max = opts.net.as_ref().map(|n| n.max_per_group);
    let (mut all_events, mut in_mixtures, mut backgrounds) = (Vec::new(), Vec::new(), Vec::new());
    for s in &opts.sources {
        let groups_here: Vec<&str> = match &s.groups {
            Some(only) => group_refs
                .iter()
                .copied()
                .filter(|g| only.iter().any(|o| o == g))
                .collect(),
            None => group_refs.clone(),
        };
        let (e, b) = load_clips(
            &s.dir,
            s.split,
            &groups_here,
            s.groups.is_none(),
            opts.mix.rate,
            net_max.or(opts.max_per_group),
            &mut rng,
        )?;
        let mut kept: HashMap<Option<String>, usize> = HashMap::new();
        for c in e {
            let n = kept.entry(c.group.clone()).or_default();
            in_mixtures.push(opts.max_per_group.is_none_or(|m| *n < m));
            *n += 1;
            all_events.push(c);
        }
        backgrounds.extend(b);
    }
    // Without the network the two are the same clips (loaded at most
    // `max_per_group` per group already).
    let events: Vec<&Signal> = all_events
        .iter()
        .zip(&in_mixtures)
        .filter_map(|(s, &mixed)| mixed.then_some(s))
        .collect();
    for g in &opts.groups {
        if !events.iter().any(|e| e.group.as_deref() == Some(g)) {
            bail!("no event clips for group {g} in the training data");
        }
    }
    if backgrounds.is_empty() {
        bail!("no background clips (labels that are not events) in the training data");
    }
    let all: Vec<&Signal> = all_events.iter().chain(&backgrounds).collect();
    let fold_of = deal_folds(&all, opts.folds, opts.backgrounds_by_kind);
    std::fs::create_dir_all(&opts.work_dir)?;
    // Each fold is scored by the model that never heard it: the shipped network
    // (its heads are fitted later), or a network fine-tuned without that fold.
    let (fold_models, shipped_net) = match &opts.net {
        None => (vec![model.clone(); opts.folds], None),
        Some(n) => fine_tune(&model, cfg, opts, n, &all_events, &backgrounds, &fold_of)?,
    };
    let matching = Matching::default();
    let mut batches = Vec::new();
    for (fold, fold_model) in fold_models.iter().enumerate() {
        let bg: Vec<&Signal> = backgrounds
            .iter()
            .filter(|s| fold_of[&s.recording] == fold)
            .collect();
        if bg.is_empty() {
            bail!("fold {fold} of the cross-validation got no background recordings; add more ordinary sounds to the data or use fewer folds");
        }
        let mut ev: Vec<&Signal> = Vec::new();
        for _ in 0..opts.repeats.max(1) {
            ev.extend(events.iter().filter(|s| fold_of[&s.recording] == fold));
        }
        {
            use rand::seq::SliceRandom;
            ev.shuffle(&mut rng);
        }
        for chunk in ev.chunks(opts.events_per_mixture.max(1)) {
            let i = batches.len();
            let spec = MixSpec {
                seed: opts.mix.seed.wrapping_add(1 + i as u64),
                ..opts.mix.clone()
            };
            let cache = opts.cache_dir.as_ref().map(|d| {
                let key = mixture_key(fold_model, cfg, &spec, fold, chunk, &bg);
                d.join(format!("{}-{i}-{key:016x}.hops", model.name()))
            });
            if let Some((header, hops)) = cache.as_deref().and_then(hopcache::load) {
                tracing::info!(
                    mixture = i,
                    "training mixture {i} (fold {fold}): read back from {}",
                    cache.as_deref().unwrap_or(Path::new("")).display()
                );
                batches.push(Batch {
                    fold,
                    truth: header.truth,
                    background_h: header.background_h,
                    hops,
                });
                continue;
            }
            let m = mix::build(chunk, &bg, &spec);
            let wav = opts.work_dir.join(format!("train-{i}.wav"));
            write_wav(&wav, &m.samples, m.rate, 1)?;
            let detector =
                Detector::from_config(std::iter::empty(), model.labels(), ident(cfg, &model))
                    .map_err(anyhow::Error::msg)?;
            // Every hop: training fits on all of them.
            let (_, hops) = run_pipeline(fold_model, cfg, &wav, detector, false)?;
            let _ = std::fs::remove_file(&wav);
            tracing::info!(
                mixture = i,
                "training mixture {i} (fold {fold}): {:.1} min, {} events, {} windows",
                m.duration_s() / 60.0,
                m.truth.len(),
                hops.len()
            );
            let batch = Batch {
                fold,
                truth: m.truth.iter().map(TruthEvent::from).collect(),
                background_h: mix::background_s(&m, matching.early_s, matching.late_s) / 3600.0,
                hops,
            };
            if let Some(path) = &cache {
                std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
                let header = hopcache::Header {
                    fold,
                    background_h: batch.background_h,
                    truth: batch.truth.clone(),
                };
                hopcache::save(path, &header, &batch.hops)?;
            }
            batches.push(batch);
        }
    }
    let total_h: f64 = batches.iter().map(|b| b.background_h).sum();

    // Every hop by (batch, index); gated windows carry no features and never fire.
    let rows: Vec<(usize, usize)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| (0..batch.hops.len()).map(move |i| (b, i)))
        .collect();
    let mut kinds = if opts.net.as_ref().is_some_and(|n| n.only) {
        Vec::new()
    } else {
        opts.features.clone()
    };
    kinds.dedup();
    let mut matrices = Vec::new();
    for &kind in &kinds {
        matrices.push(FeatureMatrix::build(kind, &batches, &rows)?);
    }

    std::fs::create_dir_all(&opts.out)?;
    let mut out = Vec::new();
    let mut val_events = Vec::new();
    for g in &opts.groups {
        let labels: Vec<Option<bool>> = rows
            .iter()
            .map(|&(b, i)| {
                let h = &batches[b].hops[i];
                let mut label = Some(false);
                for t in batches[b].truth.iter().filter(|t| &t.group == g) {
                    match window_label(h.start_s, h.end_s, t.onset_s, t.offset_s, 0.5) {
                        Some(true) => return Some(true),
                        None => label = None,
                        Some(false) => {}
                    }
                }
                label
            })
            .collect();
        // Also the log-odds of the group's own classes alone: a handful of weights
        // that start from what AudioSet knows of the group.
        let own = matrices
            .iter()
            .find(|m| m.kind == Features::Scores)
            .map(|m| m.masked(&group_classes(cfg, &model, g)));
        let all: Vec<&FeatureMatrix> = matrices.iter().chain(own.as_ref()).collect();
        let own_classes = group_classes(cfg, &model, g);
        let evidence_of = |of: fn(&OwnedHop) -> &[f32]| -> Vec<Vec<f32>> {
            batches
                .iter()
                .map(|b| {
                    b.hops
                        .iter()
                        .map(|h| Gate::evidence(&own_classes, of(h)))
                        .collect()
                })
                .collect()
        };
        // A head's gate reads the model's own AudioSet scores; the fine-tuned
        // network's gate reads that network's.
        let evidence = evidence_of(|h| &h.scores_max);
        // A network without AudioSet outputs (the frame-level detector) has no
        // evidence of its own to gate on, and is not gated.
        let net_has_scores = batches
            .iter()
            .flat_map(|b| &b.hops)
            .any(|h| !h.net_scores.is_empty());
        let net_evidence = match &shipped_net {
            Some(_) if net_has_scores => evidence_of(|h| &h.net_scores),
            _ => Vec::new(),
        };
        let choose = |scores: &[Vec<f32>]| {
            choose_threshold(
                &model,
                cfg,
                g,
                opts.target_fa_per_hour,
                total_h,
                &batches,
                scores,
            )
        };
        let mut candidates = Vec::new();
        let mut tried: Vec<(usize, Candidate, Vec<Vec<f32>>)> = Vec::new();
        let mut net_tried: Option<(Candidate, Vec<Vec<f32>>)> = None;
        if let Some(n) = &shipped_net {
            // The fine-tuned networks' own output for the group, out of fold.
            let gi = n
                .groups
                .iter()
                .position(|x| x == g)
                .expect("trained for every group");
            let scores: Vec<Vec<f32>> = batches
                .iter()
                .map(|b| {
                    b.hops
                        .iter()
                        .map(|h| h.heads.get(gi).copied().unwrap_or(0.0))
                        .collect()
                })
                .collect();
            let c = Candidate::new(Features::Net.name(), 0.0, 0, choose(&scores));
            c.log(g);
            candidates.push(c.clone());
            net_tried = Some((c, scores));
        }
        let grid = opts.hidden_units.iter().flat_map(|&u| {
            (0..all.len()).flat_map(move |k| opts.l2s.iter().map(move |&l2| (u, k, l2)))
        });
        for (units, k, l2) in grid {
            let fm = all[k];
            let spec = FitSpec {
                l2,
                units,
                mine: false,
            };
            let scores = cross_validate(fm, &labels, &rows, &batches, opts, spec);
            let c = Candidate::new(fm.name, l2, units, choose(&scores));
            c.log(g);
            candidates.push(c.clone());
            tried.push((k, c, scores));
        }
        tried.sort_by(|a, b| rank(&a.1, &b.1, opts.target_fa_per_hour));
        tried.truncate(GATED_CANDIDATES);
        // Hard negatives, on the few best: each refitted with the negatives it
        // scored highest weighted up, as a candidate of its own.
        if opts.mines() {
            // Over the plain candidates only: the range is fixed before the pushes.
            for i in 0..tried.len() {
                let (k, base) = (tried[i].0, &tried[i].1);
                let spec = FitSpec {
                    l2: base.l2,
                    units: base.hidden,
                    mine: true,
                };
                let scores = cross_validate(all[k], &labels, &rows, &batches, opts, spec);
                let c = Candidate {
                    hard_negatives: true,
                    ..Candidate::new(base.features, base.l2, base.hidden, choose(&scores))
                };
                c.log(g);
                candidates.push(c.clone());
                tried.push((k, c, scores));
            }
        }
        // The evidence gate, on those: the strictest level that keeps `gate_keep`
        // of the ungated cross-validated recall (every level is tried: a stricter
        // one can recover what a laxer one lost).
        // The network's own output is tried beside the heads (never cut above).
        if let Some((c, s)) = net_tried {
            tried.push((usize::MAX, c, s));
        }
        let mut best: Option<(usize, Candidate, &[Vec<f32>])> = None;
        let mut best_net: Option<(usize, Candidate, &[Vec<f32>])> = None;
        for (k, ungated, scores) in &tried {
            let is_net = *k == usize::MAX;
            let evidence = if is_net { &net_evidence } else { &evidence };
            let mut pick = ungated.clone();
            let ungateable = own_classes.is_empty() || (is_net && net_evidence.is_empty());
            if !ungateable {
                for &min in &GATE_LEVELS {
                    let choice = choose(&gated(scores, evidence, min));
                    let c = Candidate {
                        gate: min,
                        ..ungated.clone()
                    }
                    .with(choice);
                    c.log(g);
                    let keeps = c.recall >= opts.gate_keep * ungated.recall
                        && (c.fa_per_hour <= opts.target_fa_per_hour
                            || c.fa_per_hour <= ungated.fa_per_hour);
                    candidates.push(c.clone());
                    if keeps {
                        pick = c;
                    }
                }
            }
            let slot = if is_net { &mut best_net } else { &mut best };
            if slot
                .as_ref()
                .is_none_or(|(_, b, _)| rank(&pick, b, opts.target_fa_per_hour).is_lt())
            {
                *slot = Some((*k, pick, scores));
            }
        }
        // The network where it beats the best head by the margin, else the head.
        let margin = opts.net.as_ref().map_or(0.0, |n| n.margin);
        let (k, mut chosen, scores) = match (best, best_net) {
            (Some(h), Some(n)) if !net_wins(&n.1, &h.1, margin, opts.target_fa_per_hour) => {
                tracing::info!(
                    group = %g,
                    "{g}: the heads ({} at {:.2} false alarms/h) keep the group: the network's {:.2} at {:.2}/h does not beat them by {margin}",
                    h.1.recall, h.1.fa_per_hour, n.1.recall, n.1.fa_per_hour
                );
                h
            }
            (_, Some(n)) => n,
            (Some(h), None) => h,
            (None, None) => unreachable!("at least one candidate"),
        };
        let uses_net = k == usize::MAX;
        let evidence = if uses_net { &net_evidence } else { &evidence };
        // A slow onset rule gets a `sure` score that starts an event at once,
        // if one costs no cross-validated false alarm.
        if chosen.onset_hops > 1 {
            let scores = if chosen.gate > 0.0 {
                gated(scores, evidence, chosen.gate)
            } else {
                scores.to_vec()
            };
            let base = Choice::of(&chosen);
            let sure = choose_sure(&model, cfg, g, base, total_h, &batches, &scores);
            if sure.sure.is_some() {
                chosen = chosen.with(sure);
                chosen.log(g);
                candidates.push(chosen.clone());
            }
        }
        // The validation set `hearken adapt` measures recall on: each event of the
        // group with the hops around it and their out-of-fold scores.
        {
            let final_scores = if chosen.gate > 0.0 {
                gated(scores, evidence, chosen.gate)
            } else {
                scores.to_vec()
            };
            let off = chosen.on * 0.7;
            let gi = opts.groups.iter().position(|x| x == g).unwrap_or(0);
            for (batch, s) in batches.iter().zip(&final_scores) {
                for t in batch.truth.iter().filter(|t| &t.group == g) {
                    let hops = batch
                        .hops
                        .iter()
                        .zip(s)
                        .filter(|(h, _)| h.end_s > t.onset_s - 1.0 && h.start_s < t.offset_s + 2.0)
                        .map(|(h, &sc)| ValHop {
                            start_s: h.start_s as f32,
                            end_s: h.end_s as f32,
                            score: sc,
                            embedding: if sc >= off && sc > 0.0 {
                                h.embedding.clone()
                            } else {
                                Vec::new()
                            },
                            classes: if sc >= off && sc > 0.0 {
                                h.scores_max.iter().map(|&p| log_odds(p)).collect()
                            } else {
                                Vec::new()
                            },
                        })
                        .collect();
                    val_events.push(ValEvent {
                        group: gi,
                        onset_s: t.onset_s as f32,
                        offset_s: t.offset_s as f32,
                        hops,
                    });
                }
            }
        }
        let count = |want: bool| labels.iter().filter(|&&y| y == Some(want)).count();
        let (mut positives, mut negatives) = (count(true), count(false));
        let (kind, mean, scale, hidden, weights, bias) =
            match shipped_net.as_ref().filter(|_| uses_net) {
                // Weights that pick the group's own output: its score is that output.
                Some(n) => {
                    let one_hot = n.groups.iter().map(|x| (x == g) as u8 as f32).collect();
                    let d = n.groups.len();
                    (
                        Features::Net,
                        vec![0.0; d],
                        vec![1.0; d],
                        None,
                        one_hot,
                        0.0,
                    )
                }
                None => {
                    let fm = all[k];
                    let (zs, ys) = fm.labelled(&labels, |_| true);
                    positives = ys.iter().filter(|&&y| y).count();
                    negatives = ys.len() - positives;
                    let (hidden, weights, bias) = fit(
                        &zs,
                        &ys,
                        FitSpec {
                            l2: chosen.l2,
                            units: chosen.hidden,
                            mine: chosen.hard_negatives,
                        },
                        opts,
                    );
                    (
                        fm.kind,
                        fm.mean.clone(),
                        fm.scale.clone(),
                        hidden,
                        weights,
                        bias,
                    )
                }
            };
        let of_group = |s: &Signal| s.group.as_deref() == Some(g);
        let clips = if uses_net {
            all_events.iter().filter(|s| of_group(s)).count()
        } else {
            events.iter().filter(|s| of_group(s)).count()
        };
        let det = LinearDetector {
            tone: None,
            group: g.clone(),
            model: model.name().to_string(),
            embedding_dim: model.manifest().io.embedding_dim,
            features: kind,
            classes: model.labels().len(),
            net: shipped_net.clone().filter(|_| uses_net),
            window_s: cfg.model.window_s,
            hop_s: cfg.model.hop_s,
            mean,
            scale,
            weights,
            bias,
            hidden,
            gate: (chosen.gate > 0.0).then(|| Gate {
                classes: own_classes.clone(),
                min: chosen.gate,
            }),
            onset_hops: chosen.onset_hops,
            onset_of: chosen.onset_of,
            sure: chosen.sure,
            on: chosen.on,
            off: chosen.on * 0.7,
            trained: serde_json::json!({
                "by": format!("hearken train {}", env!("CARGO_PKG_VERSION")),
                "seed": opts.mix.seed,
                "snrs_db": opts.mix.snrs_db,
                "repeats": opts.repeats,
                "clips": clips,
                "positive_windows": positives,
                "negative_windows": negatives,
                "net": opts.net,
                "l2": chosen.l2,
                "hidden_units": chosen.hidden,
                "candidate": chosen.features,
                "iterations": opts.iterations,
                "epochs": opts.epochs,
                "folds": opts.folds,
                "backgrounds_by_kind": opts.backgrounds_by_kind,
                "target_fa_per_hour": opts.target_fa_per_hour,
                "cv_recall": chosen.recall,
                "cv_fa_per_hour": chosen.fa_per_hour,
                "gate_keep": opts.gate_keep,
                "hard_negatives": chosen.hard_negatives,
                "hard_share": opts.hard_share,
                "hard_weight": opts.hard_weight,
                "cv_latency_s": chosen.latency_s,
            }),
            home: None,
        };
        let file = opts.out.join(format!("{g}.json"));
        det.save(&file)?;
        out.push(GroupSummary {
            group: g.clone(),
            clips,
            positives,
            negatives,
            off: det.off,
            chosen,
            candidates,
            file,
        });
    }
    ValidationSet {
        header: ValHeader {
            model: model.name().to_string(),
            embedding_dim: model.manifest().io.embedding_dim,
            window_s: cfg.model.window_s,
            hop_s: cfg.model.hop_s,
            groups: opts.groups.clone(),
            background_h: total_h,
        },
        events: val_events,
    }
    .save(&opts.out)?;
    // No group chose the network: its file would only be loaded for nothing.
    if let Some(n) = &shipped_net {
        if !out
            .iter()
            .any(|s| s.chosen.features == Features::Net.name())
        {
            std::fs::remove_file(&n.path)
                .with_context(|| format!("cannot remove {}", n.path.display()))?;
        }
    }
    Ok(out)
}

/// Fine-tunes one network per fold, with that fold left out, and one on every fold,
/// which is copied into `opts.out` as `net.onnx`. Returns the fold models (the
/// model with each fold's network beside it) and the shipped network's reference.
/// With `opts.cache_dir`, a network trained on the same clips by the same recipe
/// is read back from there instead of trained again.
#[allow(clippy::type_complexity)]
fn fine_tune(
    model: &Arc<Model>,
    cfg: &Config,
    opts: &TrainOptions,
    n: &NetOptions,
    events: &[Signal],
    backgrounds: &[Signal],
    fold_of: &HashMap<String, usize>,
) -> Result<(Vec<Arc<Model>>, Option<NetRef>)> {
    let data = opts.work_dir.join("net-data");
    let data_key = net::export(&data, opts.mix.rate, events, backgrounds, fold_of)?;
    let recipe = net::recipe_key(
        n,
        &opts.groups,
        opts.mix.seed,
        cfg.model.window_s,
        cfg.model.hop_s,
    );
    let key = data_key ^ recipe.rotate_left(17) ^ fnv1a(&model.manifest().model.sha256);
    let base = model.dir().join(&model.manifest().model.onnx);
    let train = |exclude: Option<usize>, name: &str| -> Result<PathBuf> {
        let cached = opts
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{name}-{key:016x}.onnx", model.name())));
        if let Some(c) = cached.as_ref().filter(|c| c.is_file()) {
            tracing::info!("{name}: read back from {}", c.display());
            return Ok(c.clone());
        }
        if let Some(c) = &cached {
            tracing::info!(
                "{name}: not in the cache; training it, then keeping it as {}",
                c.display()
            );
        }
        let out = opts.work_dir.join(format!("{name}.onnx"));
        net::finetune(
            n,
            &data,
            &base,
            &opts.groups,
            exclude,
            opts.mix.seed,
            cfg.model.window_s,
            cfg.model.hop_s,
            &out,
        )?;
        match cached {
            Some(c) => {
                std::fs::create_dir_all(c.parent().unwrap_or(Path::new(".")))?;
                std::fs::copy(&out, &c)
                    .with_context(|| format!("cannot keep the network in {}", c.display()))?;
                Ok(c)
            }
            None => Ok(out),
        }
    };
    let load = |path: &Path| -> Result<Arc<Model>> {
        let sha = crate::model::sha256_file(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Arc::new(model.with_net(path, &sha, opts.groups.len())?))
    };
    let mut models = Vec::new();
    for k in 0..opts.folds {
        models.push(load(&train(Some(k), &format!("net-fold{k}"))?)?);
    }
    let shipped = train(None, "net")?;
    std::fs::create_dir_all(&opts.out)?;
    let dest = opts.out.join("net.onnx");
    std::fs::copy(&shipped, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let sha = crate::model::sha256_file(&dest)?;
    // Loaded once here as the daemon will load it.
    model.with_net(&dest, &sha, opts.groups.len())?;
    Ok((
        models,
        Some(NetRef {
            file: "net.onnx".to_string(),
            sha256: sha,
            groups: opts.groups.clone(),
            path: dest,
        }),
    ))
}

/// One feature kind's standardised rows (`None` for a gated window).
struct FeatureMatrix {
    kind: Features,
    /// Candidate name: the kind's, or `group_scores` for a masked one.
    name: &'static str,
    mean: Vec<f32>,
    scale: Vec<f32>,
    rows: Vec<Option<Vec<f32>>>,
}

impl FeatureMatrix {
    fn build(kind: Features, batches: &[Batch], rows: &[(usize, usize)]) -> Result<Self> {
        let wall = std::time::SystemTime::UNIX_EPOCH;
        let mut buf = Vec::new();
        let mut x: Vec<Option<Vec<f32>>> = rows
            .iter()
            .map(|&(b, i)| {
                let h = batches[b].hops[i].as_hop(wall);
                kind.extract(&h, &mut buf).then(|| buf.clone())
            })
            .collect();
        let present: Vec<&Vec<f32>> = x.iter().flatten().collect();
        if present.is_empty() {
            bail!("the training mixtures gave no scored windows");
        }
        let (mean, scale) = standardisation(&present);
        for r in x.iter_mut().flatten() {
            for ((v, &m), &s) in r.iter_mut().zip(&mean).zip(&scale) {
                *v = (*v - m) * s;
            }
        }
        Ok(FeatureMatrix {
            kind,
            name: kind.name(),
            mean,
            scale,
            rows: x,
        })
    }

    /// A copy with every column but `keep` set to 0 (standardised: the mean), so
    /// a model fitted on it puts no weight there.
    fn masked(&self, keep: &[usize]) -> FeatureMatrix {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                r.as_ref().map(|r| {
                    let mut m = vec![0.0; r.len()];
                    for &i in keep.iter().filter(|&&i| i < r.len()) {
                        m[i] = r[i];
                    }
                    m
                })
            })
            .collect();
        FeatureMatrix {
            kind: self.kind,
            name: "group_scores",
            mean: self.mean.clone(),
            scale: self.scale.clone(),
            rows,
        }
    }

    /// The rows that have features and a label and pass `keep` (by row index),
    /// with their labels: what a model is fitted on.
    fn labelled(
        &self,
        labels: &[Option<bool>],
        keep: impl Fn(usize) -> bool,
    ) -> (Vec<&[f32]>, Vec<bool>) {
        (0..self.rows.len())
            .filter(|&r| keep(r))
            .filter_map(|r| Some((self.row(r)?, labels[r]?)))
            .unzip()
    }

    fn row(&self, r: usize) -> Option<&[f32]> {
        self.rows[r].as_deref()
    }
}

/// What a fit learns: hidden layer (for an MLP), output weights, bias.
type Fitted = (Option<Hidden>, Vec<f32>, f32);

/// What to fit: L2 penalty, hidden units (0: logistic regression), and whether to
/// mine hard negatives.
#[derive(Debug, Clone, Copy)]
struct FitSpec {
    l2: f64,
    units: usize,
    mine: bool,
}

/// Fits a logistic regression (`units` = 0) or an MLP with `units` hidden units.
/// With `mine`, then mines hard negatives: the `hard_share` of negative rows the
/// first fit scores highest (the windows most like its false alarms) count
/// `hard_weight` times in a second fit, which is returned.
fn fit(zs: &[&[f32]], ys: &[bool], spec: FitSpec, opts: &TrainOptions) -> Fitted {
    let FitSpec { l2, units, mine } = spec;
    let once = |zs: &[&[f32]], ys: &[bool]| {
        if units == 0 {
            let (w, b) = fit_logistic(zs, ys, l2, opts.iterations);
            (None, w, b)
        } else {
            let (h, w, b) = fit_mlp(zs, ys, l2, units, opts.epochs, opts.mix.seed);
            (Some(h), w, b)
        }
    };
    let first = once(zs, ys);
    if !mine || !opts.mines() {
        return first;
    }
    let hard = hardest_negatives(zs, ys, &first, opts.hard_share);
    let (mut z2, mut y2) = (zs.to_vec(), ys.to_vec());
    for _ in 1..opts.hard_weight {
        z2.extend(hard.iter().map(|&i| zs[i]));
        y2.extend(hard.iter().map(|_| false));
    }
    once(&z2, &y2)
}

/// Indices of the `share` of negative rows `fitted` scores highest (ties: the
/// earlier row first).
fn hardest_negatives(zs: &[&[f32]], ys: &[bool], fitted: &Fitted, share: f64) -> Vec<usize> {
    let dim = zs.first().map_or(0, |r| r.len());
    let (hidden, weights, bias) = fitted.clone();
    let d = LinearDetector::on_standardised(dim, weights, bias, hidden);
    let mut neg: Vec<(f32, usize)> = ys
        .iter()
        .enumerate()
        .filter(|(_, &y)| !y)
        .map(|(i, _)| (d.score(zs[i]), i))
        .collect();
    neg.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let n = ((neg.len() as f64 * share).ceil() as usize).min(neg.len());
    neg[..n].iter().map(|&(_, i)| i).collect()
}

/// Out-of-fold scores for every hop of every batch: each fold's hops scored by a
/// model fitted on the other folds (0 for gated windows, and for a fold whose
/// complement has no positives). Folds are fitted in parallel.
fn cross_validate(
    fm: &FeatureMatrix,
    labels: &[Option<bool>],
    rows: &[(usize, usize)],
    batches: &[Batch],
    opts: &TrainOptions,
    spec: FitSpec,
) -> Vec<Vec<f32>> {
    let dim = fm.mean.len();
    let fits: Vec<Option<LinearDetector>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.folds)
            .map(|k| {
                s.spawn(move || {
                    let (zs, ys) = fm.labelled(labels, |r| batches[rows[r].0].fold != k);
                    ys.iter().any(|&y| y).then(|| {
                        let (hidden, weights, bias) = fit(&zs, &ys, spec, opts);
                        LinearDetector::on_standardised(dim, weights, bias, hidden)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fitting thread does not panic"))
            .collect()
    });
    let mut scores: Vec<Vec<f32>> = batches.iter().map(|b| vec![0.0; b.hops.len()]).collect();
    for (r, &(b, i)) in rows.iter().enumerate() {
        if let (Some(x), Some(d)) = (fm.row(r), &fits[batches[b].fold]) {
            scores[b][i] = d.score(x);
        }
    }
    scores
}

/// Orders candidates best first by [`beats`].
fn rank(a: &Candidate, b: &Candidate, target_fa_per_hour: f64) -> std::cmp::Ordering {
    let (a, b) = ((a.recall, a.fa_per_hour), (b.recall, b.fa_per_hour));
    if beats(a, b, target_fa_per_hour) {
        std::cmp::Ordering::Less
    } else if beats(b, a, target_fa_per_hour) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// Whether the fine-tuned network's candidate `net` should take a group from the
/// best head `head`: it must beat the head with `margin` taken off its recall (a
/// head is cheaper to run and, in held-out tests, generalised better whenever the
/// cross-validated recalls were close).
fn net_wins(net: &Candidate, head: &Candidate, margin: f64, target_fa_per_hour: f64) -> bool {
    beats(
        (net.recall - margin, net.fa_per_hour),
        (head.recall, head.fa_per_hour),
        target_fa_per_hour,
    )
}

/// Whether `(recall, false alarms/h)` `a` beats `b`: holding the target beats not
/// holding it; then the higher recall; then the fewer false alarms.
fn beats(a: (f64, f64), b: (f64, f64), target_fa_per_hour: f64) -> bool {
    let (ok, bok) = (a.1 <= target_fa_per_hour, b.1 <= target_fa_per_hour);
    (ok && !bok) || (ok == bok && (a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)))
}

/// Onset rules training tries: `(hops, of)` — an event starts when the score
/// reaches `on` in `hops` of the last `of` hops.
pub const ONSET_RULES: [(usize, usize); 3] = [(1, 1), (2, 3), (3, 4)];

/// A threshold and onset rule with what they gave on the out-of-fold scores.
#[derive(Debug, Clone, Copy, Default)]
struct Choice {
    on: f32,
    onset: (usize, usize),
    sure: Option<f32>,
    recall: f64,
    fa: f64,
    latency_s: Option<f64>,
}

impl Choice {
    /// A candidate's threshold, rules and results.
    fn of(c: &Candidate) -> Choice {
        Choice {
            on: c.on,
            onset: (c.onset_hops, c.onset_of),
            sure: c.sure,
            recall: c.recall,
            fa: c.fa_per_hour,
            latency_s: c.latency_s,
        }
    }
}

/// Threshold steps of a quarter logit from −2.
const THRESHOLD_STEPS: usize = 72;
/// Steps per stride of the coarse walk.
const COARSE: usize = 4;

/// Per onset rule, the lowest `on` (off = 0.7 on) whose replay over the
/// out-of-fold scores keeps false alarms at or under the target (if none does,
/// the one with the fewest); then the rule with the highest recall among those
/// that hold the target (ties: fewer false alarms, then the simpler rule).
/// Candidates are even steps of the logit, so the search reaches far into the
/// tail (0.12 … 1 − 1e-7); they are walked four at a time, then one at a time
/// below the first that holds the target.
fn choose_threshold(
    model: &Model,
    cfg: &Config,
    group: &str,
    target_fa_per_hour: f64,
    total_h: f64,
    batches: &[Batch],
    scores: &[Vec<f32>],
) -> Choice {
    // The onset rules are independent: one thread each.
    let picks: Vec<Choice> = std::thread::scope(|s| {
        let handles: Vec<_> = ONSET_RULES
            .into_iter()
            .map(|onset| {
                s.spawn(move || {
                    let at = |k: usize| {
                        let c = Choice {
                            on: step(k),
                            onset,
                            sure: None,
                            recall: 0.0,
                            fa: 0.0,
                            latency_s: None,
                        };
                        replay_scores(model, cfg, group, c, total_h, batches, scores)
                    };
                    lowest_holding(0, at, |c| c.fa <= target_fa_per_hour)
                        .unwrap_or_else(|fewest| fewest.expect("at least one threshold"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a replay thread does not panic"))
            .collect()
    });
    let mut best: Option<Choice> = None;
    for c in picks {
        if best.is_none_or(|b| beats((c.recall, c.fa), (b.recall, b.fa), target_fa_per_hour)) {
            best = Some(c);
        }
    }
    best.expect("at least one onset rule")
}

/// The threshold of step `k`: even quarter-logit steps from −2.
fn step(k: usize) -> f32 {
    sigmoid_f32(-2.0 + 0.25 * k as f32)
}

/// The lowest threshold step from `from` whose replay `at` holds: steps are walked
/// `COARSE` at a time up to the first that holds, then one at a time just below
/// it. When none holds, the stride with the fewest false alarms (`Err`).
fn lowest_holding(
    from: usize,
    at: impl Fn(usize) -> Choice,
    holds: impl Fn(&Choice) -> bool,
) -> Result<Choice, Option<Choice>> {
    let mut fewest: Option<Choice> = None;
    for k in (from..=THRESHOLD_STEPS).step_by(COARSE) {
        let c = at(k);
        if holds(&c) {
            return Ok((k.saturating_sub(COARSE - 1).max(from)..k)
                .map(&at)
                .find(|f| holds(f))
                .unwrap_or(c));
        }
        if fewest.is_none_or(|p| c.fa < p.fa) {
            fewest = Some(c);
        }
    }
    Err(fewest)
}

/// The lowest `sure` score above `base.on` whose replay raises no more false
/// alarms than `base` and finds events sooner or more of them; `base` unchanged
/// (without `sure`) when none does, found by [`lowest_holding`].
fn choose_sure(
    model: &Model,
    cfg: &Config,
    group: &str,
    base: Choice,
    total_h: f64,
    batches: &[Batch],
    scores: &[Vec<f32>],
) -> Choice {
    let at = |k: usize| {
        let c = Choice {
            sure: Some(step(k)),
            ..base
        };
        replay_scores(model, cfg, group, c, total_h, batches, scores)
    };
    let first = (0..=THRESHOLD_STEPS)
        .find(|&k| step(k) > base.on)
        .unwrap_or(THRESHOLD_STEPS + 1);
    match lowest_holding(first, at, |c| c.fa <= base.fa).ok() {
        Some(c)
            if c.recall > base.recall
                || (c.recall == base.recall && c.latency_s < base.latency_s) =>
        {
            c
        }
        _ => base,
    }
}

/// `c` (threshold `on`, off 0.7 `on`, its onset rule and `sure`) replayed over one
/// group scored by `scores` (per batch, per hop) through the real event logic:
/// `c` with its recall, false alarms per hour and median latency.
fn replay_scores(
    model: &Model,
    cfg: &Config,
    group: &str,
    c: Choice,
    total_h: f64,
    batches: &[Batch],
    scores: &[Vec<f32>],
) -> Choice {
    let Some((name, gc)) = cfg.detection.groups.get_key_value(group) else {
        return Choice {
            recall: 0.0,
            fa: f64::INFINITY,
            latency_s: None,
            ..c
        };
    };
    let mut gc = gc.clone();
    gc.enabled = true;
    gc.tuning.on = c.on;
    gc.tuning.off = c.on * 0.7;
    (gc.tuning.onset_hops, gc.tuning.onset_of) = c.onset;
    gc.tuning.sure = c.sure;
    let (mut found, mut events, mut fas) = (0usize, 0usize, 0usize);
    let mut latencies = Vec::new();
    for (b, s) in batches.iter().zip(scores) {
        let d = Detector::new(
            vec![(name.clone(), gc.clone(), Box::new(Fixed::new(s.clone())))],
            ident(cfg, model),
        );
        let dets = detections(&replay(d, &b.hops, model.labels()));
        let r = &score(
            &b.truth,
            &dets,
            std::slice::from_ref(name),
            1.0,
            &Matching::default(),
        )[0];
        found += r.found;
        events += r.events;
        fas += r.false_alarms;
        latencies.extend_from_slice(&r.latencies_s);
    }
    let recall = if events == 0 {
        0.0
    } else {
        found as f64 / events as f64
    };
    Choice {
        recall,
        fa: fas as f64 / total_h.max(1e-9),
        latency_s: {
            latencies.sort_by(f64::total_cmp);
            median_sorted(&latencies)
        },
        ..c
    }
}

fn sigmoid_f32(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn ident(cfg: &Config, model: &Model) -> Identity {
    Identity {
        node: cfg.node.id.clone(),
        room: cfg.node.room.clone(),
        source: crate::config::SINGLE_SOURCE_NAME.to_string(),
        model: model.name().to_string(),
    }
}

/// The default sources: the training part of `eval-dev`, all of `train-extra`
/// and, where `train-candidates` is there, its sirens (held out they raised siren
/// recall at <= 1 false alarm/h; its 8 kHz forest gunshots lowered gunshot's, so
/// they stay out: docs/detection.md).
pub fn default_sources(shared: &Path) -> Vec<Source> {
    let mut sources = vec![
        Source {
            dir: shared.join("eval-dev"),
            split: Split::Train,
            groups: None,
        },
        Source {
            dir: shared.join("train-extra"),
            split: Split::All,
            groups: None,
        },
    ];
    let candidates = shared.join("train-candidates");
    if candidates.join("labels.csv").is_file() {
        sources.push(Source {
            dir: candidates,
            split: Split::All,
            groups: Some(vec!["siren".into()]),
        });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::GroupScorer;

    #[test]
    fn the_default_sources_take_only_the_candidate_sirens_and_only_where_they_are() {
        let shared = std::env::temp_dir().join(format!("hearken-sources-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&shared);
        std::fs::create_dir_all(shared.join("train-candidates")).unwrap();
        let names = |s: &[Source]| -> Vec<(String, Option<Vec<String>>)> {
            s.iter()
                .map(|s| {
                    let dir = s.dir.file_name().unwrap().to_string_lossy().into_owned();
                    (dir, s.groups.clone())
                })
                .collect()
        };
        let without = default_sources(&shared);
        assert_eq!(
            names(&without),
            [("eval-dev".into(), None), ("train-extra".into(), None)]
        );
        std::fs::write(shared.join("train-candidates/labels.csv"), "file\n").unwrap();
        let with = default_sources(&shared);
        assert_eq!(with.len(), 3);
        assert_eq!(
            names(&with)[2],
            ("train-candidates".into(), Some(vec!["siren".to_string()]))
        );
        std::fs::remove_dir_all(&shared).unwrap();
    }

    fn sig(group: Option<&str>, recording: &str) -> Signal {
        Signal {
            name: format!("{recording}.wav"),
            group: group.map(String::from),
            label: String::new(),
            recording: recording.into(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn the_network_takes_a_group_only_by_the_margin_or_by_holding_the_target() {
        let c = |recall: f64, fa_per_hour: f64| Candidate {
            recall,
            fa_per_hour,
            ..Candidate::new("x", 0.0, 0, Choice::default())
        };
        // Both hold the target of 1/h: the network needs 0.05 more recall.
        assert!(net_wins(&c(0.50, 0.0), &c(0.40, 0.5), 0.05, 1.0));
        assert!(!net_wins(&c(0.44, 0.0), &c(0.40, 0.5), 0.05, 1.0));
        assert!(!net_wins(&c(0.41, 0.0), &c(0.41, 0.0), 0.05, 1.0));
        // Holding the target beats missing it, whatever the recall.
        assert!(net_wins(&c(0.10, 0.5), &c(0.60, 15.0), 0.05, 1.0));
        assert!(!net_wins(&c(0.90, 3.0), &c(0.20, 0.0), 0.05, 1.0));
        // A negative margin favours the network.
        assert!(net_wins(&c(0.40, 0.0), &c(0.41, 0.0), -0.05, 1.0));
    }

    #[test]
    fn folds_keep_recordings_together_and_share_out_every_group() {
        let mut v = Vec::new();
        for i in 0..6 {
            // Two clips cut from each glass recording.
            v.push(sig(Some("glass"), &format!("g{i}")));
            v.push(sig(Some("glass"), &format!("g{i}")));
        }
        for i in 0..3 {
            v.push(sig(Some("siren"), &format!("s{i}")));
        }
        for i in 0..4 {
            v.push(sig(None, &format!("b{i}")));
        }
        let refs: Vec<&Signal> = v.iter().collect();
        let f = deal_folds(&refs, 2, false);
        assert_eq!(f.len(), 6 + 3 + 4, "one entry per recording");
        let count = |prefix: &str, fold: usize| {
            f.iter()
                .filter(|(r, &k)| r.starts_with(prefix) && k == fold)
                .count()
        };
        assert_eq!((count("g", 0), count("g", 1)), (3, 3));
        assert_eq!(count("s", 0) + count("s", 1), 3);
        assert!(count("s", 0) >= 1 && count("s", 1) >= 1);
        assert_eq!((count("b", 0), count("b", 1)), (2, 2));
        assert_eq!(f, deal_folds(&refs, 2, false), "deterministic");
    }

    #[test]
    fn backgrounds_dealt_by_kind_keep_each_kind_on_one_side() {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(sig(Some("glass"), &format!("g{i}")));
        }
        // Speech: 4 recordings of 3 s; typing: 2 of 2 s; rain: 1 of 3 s.
        for (label, n, len) in [("speech", 4, 3), ("typing", 2, 2), ("rain", 1, 3)] {
            for i in 0..n {
                let mut s = sig(None, &format!("{label}{i}"));
                s.label = label.into();
                s.samples = vec![0.0; len];
                v.push(s);
            }
        }
        let refs: Vec<&Signal> = v.iter().collect();
        let f = deal_folds(&refs, 2, true);
        let folds_of = |prefix: &str| {
            let mut k: Vec<usize> = f
                .iter()
                .filter(|(r, _)| r.starts_with(prefix))
                .map(|(_, &k)| k)
                .collect();
            k.sort();
            k.dedup();
            k
        };
        // Speech (12 s) alone in one fold, typing and rain (7 s) in the other.
        assert_eq!(folds_of("speech").len(), 1);
        assert_eq!(folds_of("typing"), folds_of("rain"));
        assert_ne!(folds_of("speech"), folds_of("typing"));
        // Events are still dealt by recording.
        assert_eq!(folds_of("g"), vec![0, 1]);
        assert_eq!(f, deal_folds(&refs, 2, true), "deterministic");
    }

    #[test]
    fn a_masked_matrix_keeps_only_the_groups_columns() {
        let fm = FeatureMatrix {
            kind: Features::Scores,
            name: "scores",
            mean: vec![0.0; 3],
            scale: vec![1.0; 3],
            rows: vec![Some(vec![1.0, 2.0, 3.0]), None],
        };
        let m = fm.masked(&[2, 7]);
        assert_eq!((m.kind, m.name), (Features::Scores, "group_scores"));
        assert_eq!(m.row(0), Some(&[0.0, 0.0, 3.0][..]));
        assert_eq!(m.row(1), None);
        // Nothing to learn from a zero column: its weight stays 0.
        let z: Vec<&[f32]> = vec![&[0.0, 1.0], &[0.0, -1.0], &[0.0, 2.0], &[0.0, -2.0]];
        let (w, _) = fit_logistic(&z, &[true, false, true, false], 1e-3, 100);
        assert_eq!(w[0], 0.0);
        assert!(w[1] > 0.0);
    }

    #[test]
    fn gating_zeroes_hops_without_evidence() {
        let s = vec![vec![0.9, 0.8], vec![0.7]];
        let e = vec![vec![0.01, 0.2], vec![0.05]];
        assert_eq!(gated(&s, &e, 0.05), vec![vec![0.0, 0.8], vec![0.7]]);
        assert_eq!(gated(&s, &e, 0.0), s);
    }

    #[test]
    fn fixed_scores_replay_in_order_then_zero() {
        let mut s = Fixed::new(vec![0.2, 0.9]);
        let h = OwnedHop {
            start_s: 0.0,
            end_s: 1.0,
            hop_s: 1.0,
            scores_mean: vec![],
            scores_max: vec![],
            dbfs: -20.0,
            embedding: vec![],
            heads: vec![],
            net_scores: vec![],
            tones: vec![],
        };
        let hop = h.as_hop(std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(
            [s.score(&hop), s.score(&hop), s.score(&hop)],
            [0.2, 0.9, 0.0]
        );
    }

    #[test]
    fn the_hardest_negatives_are_those_scored_highest() {
        let rows: Vec<Vec<f32>> = vec![vec![-1.0], vec![2.0], vec![0.5], vec![3.0], vec![2.0]];
        let zs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let ys = [false, false, true, false, false];
        let line = (None, vec![1.0], 0.0);
        // 4 negatives: half of them, highest first, ties by row.
        assert_eq!(hardest_negatives(&zs, &ys, &line, 0.5), vec![3, 1]);
        assert_eq!(hardest_negatives(&zs, &ys, &line, 0.6), vec![3, 1, 4]);
        assert!(hardest_negatives(&zs, &ys, &line, 0.0).is_empty());
        assert_eq!(hardest_negatives(&zs, &ys, &line, 1.0).len(), 4);
    }
}
