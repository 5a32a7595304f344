//! Evidence clips (`[privacy] evidence_clips`, off by default): a few seconds of
//! audio around each event, saved as FLAC in `<state>/clips/` — unless speech is
//! heard in them.
//!
//! The audio lives in memory only, in a rolling history a little longer than a
//! clip. When an event starts, its clip is cut once the history reaches `after`
//! seconds past the onset; before anything is written the model scores the clip's
//! windows, and if any of its speech classes (speech, conversation, narration,
//! whispering …; read from the full score vector, not a top-k) reaches
//! `speech_threshold`, no clip is written: the event keeps
//! `clip: suppressed (speech)`. Saved clips can be scrambled too, and are pruned
//! by count, age and total size, oldest first.
//!
//! Pure parts ([`AudioHistory`], [`speech_score`], [`to_prune`], [`encode_flac`],
//! [`clip_name`]) are unit-tested; [`ClipWriter`] is the thread around them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use crate::classify::run_unit;
use crate::detect::{Event, EventState};
use crate::dsp::LogMel;
use crate::live::Live;
use crate::model::Model;
use crate::privacy::PrivacyConfig;
use crate::scoring::{Scorer, WindowPlan};

/// What the event records when its clip was not written because of speech.
pub const SUPPRESSED_SPEECH: &str = "suppressed (speech)";

/// AudioSet classes that mean someone is talking (ids, so any model with AudioSet
/// labels finds them).
pub const SPEECH_CLASS_IDS: [&str; 9] = [
    "/m/09x0r",   // Speech
    "/m/05zppz",  // Male speech, man speaking
    "/m/02zsn",   // Female speech, woman speaking
    "/m/0ytgt",   // Child speech, kid speaking
    "/m/01h8n0",  // Conversation
    "/m/02qldy",  // Narration, monologue
    "/m/0261r1",  // Babbling
    "/m/0brhx",   // Speech synthesizer
    "/m/02rtxlg", // Whispering
];

/// The last few seconds of the analysed audio (mono, at the model's rate), with the
/// stream sample index of its first sample.
#[derive(Debug, Clone)]
pub struct AudioHistory {
    rate: u32,
    keep: usize,
    start: u64,
    samples: VecDeque<f32>,
}

impl AudioHistory {
    /// A history of at most `keep_s` seconds at `rate` Hz.
    pub fn new(rate: u32, keep_s: f64) -> AudioHistory {
        AudioHistory {
            rate,
            keep: (keep_s * rate as f64).ceil() as usize,
            start: 0,
            samples: VecDeque::new(),
        }
    }

    /// Stream sample index one past the newest sample.
    pub fn end(&self) -> u64 {
        self.start + self.samples.len() as u64
    }

    /// Seconds of stream time one past the newest sample.
    pub fn end_s(&self) -> f64 {
        self.end() as f64 / self.rate as f64
    }

    /// Appends `chunk`, whose first sample is stream sample `at`. A gap (audio the
    /// writer missed) is filled with silence; a chunk older than the end is trimmed.
    pub fn push(&mut self, at: u64, chunk: &[f32]) {
        let end = self.end();
        let chunk = if at < end {
            let skip = (end - at) as usize;
            if skip >= chunk.len() {
                return;
            }
            &chunk[skip..]
        } else {
            let gap = (at - end) as usize;
            if gap > self.keep {
                self.samples.clear();
                self.start = at;
            } else {
                self.samples.extend(std::iter::repeat_n(0.0, gap));
            }
            chunk
        };
        self.samples.extend(chunk.iter().copied());
        let over = self.samples.len().saturating_sub(self.keep);
        self.samples.drain(..over);
        self.start += over as u64;
    }

    /// The audio between stream seconds `from_s` and `to_s`, clipped to what is
    /// held.
    pub fn slice(&self, from_s: f64, to_s: f64) -> Vec<f32> {
        let idx = |t: f64| ((t.max(0.0) * self.rate as f64) as u64).clamp(self.start, self.end());
        let (a, b) = (idx(from_s), idx(to_s));
        self.samples
            .range((a - self.start) as usize..(b.max(a) - self.start) as usize)
            .copied()
            .collect()
    }
}

/// Indices of the speech classes in `model`'s labels.
pub fn speech_classes(model: &Model) -> Vec<usize> {
    model
        .labels()
        .iter()
        .enumerate()
        .filter(|(_, l)| SPEECH_CLASS_IDS.contains(&l.id.as_str()))
        .map(|(i, _)| i)
        .collect()
}

/// The highest score any of `classes` reaches in any window of `samples` (mono, at
/// the model's rate), windows as `plan`.
pub fn speech_score(
    model: &Model,
    plan: WindowPlan,
    samples: &[f32],
    classes: &[usize],
) -> Result<f32> {
    let mut fe = LogMel::new(&model.manifest().frontend);
    let mut frames = Vec::new();
    fe.push(samples, &mut frames);
    fe.finish(&mut frames);
    let mut scorer = Scorer::new(plan);
    let mut run = |f: &[f32]| run_unit(model, f);
    let mut windows = Vec::new();
    scorer.push(&frames, None, &mut run, &mut windows)?;
    scorer.finish(&mut run, &mut windows)?;
    Ok(windows
        .iter()
        .flat_map(|w| classes.iter().filter_map(|&c| w.scores.get(c).copied()))
        .fold(0.0f32, f32::max))
}

/// `samples` (mono, in [-1, 1]) as a 16-bit FLAC file.
pub fn encode_flac(samples: &[f32], rate: u32) -> Result<Vec<u8>> {
    use flacenc::component::BitRepr;
    use flacenc::error::Verify;
    let ints: Vec<i32> = samples
        .iter()
        .map(|&v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i32)
        .collect();
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|e| anyhow::anyhow!("FLAC encoder settings: {e:?}"))?;
    let source = flacenc::source::MemSource::from_samples(&ints, 1, 16, rate as usize);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| anyhow::anyhow!("FLAC encoding failed: {e:?}"))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream
        .write(&mut sink)
        .map_err(|e| anyhow::anyhow!("FLAC encoding failed: {e:?}"))?;
    let mut bytes = sink.as_slice().to_vec();
    // flacenc writes the short last block's size as STREAMINFO's minimum block
    // size; the format excludes the last block there, and symphonia reads a
    // minimum below the maximum as a variable-block stream it then cannot open.
    // STREAMINFO is always the first block: bytes 8..10 (min) and 10..12 (max).
    if bytes.len() >= 12 && &bytes[..4] == b"fLaC" && bytes[4] & 0x7f == 0 {
        let max = [bytes[10], bytes[11]];
        bytes[8..10].copy_from_slice(&max);
    }
    Ok(bytes)
}

/// A clip's file name: onset time (UTC, from the event's `started_at`), group and
/// the event id, e.g. `20261207T101500Z-glass-6f1c….flac`.
pub fn clip_name(e: &Event) -> String {
    let when: String = e
        .started_at
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let group: String = e
        .group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{when}Z-{group}-{}.flac", e.id)
}

/// One stored clip, as [`to_prune`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClip {
    /// File name.
    pub name: String,
    /// Size, bytes.
    pub bytes: u64,
    /// Last written.
    pub modified: SystemTime,
}

/// The clips to delete so that at most `max_clips` remain, none older than
/// `max_age`, and together at most `max_bytes`: the oldest go first.
pub fn to_prune(
    clips: &[StoredClip],
    max_clips: usize,
    max_age: Duration,
    max_bytes: u64,
    now: SystemTime,
) -> Vec<String> {
    let mut sorted: Vec<&StoredClip> = clips.iter().collect();
    // Newest first: keep from the front while every bound holds.
    sorted.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.name.cmp(&a.name)));
    let mut kept = 0usize;
    let mut bytes = 0u64;
    let mut out = Vec::new();
    for c in sorted {
        let age = now.duration_since(c.modified).unwrap_or_default();
        if kept < max_clips && age <= max_age && bytes + c.bytes <= max_bytes {
            kept += 1;
            bytes += c.bytes;
        } else {
            out.push(c.name.clone());
        }
    }
    out
}

fn stored_clips(dir: &Path) -> Vec<StoredClip> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok()?;
            (meta.is_file() && name.ends_with(".flac")).then(|| StoredClip {
                name,
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

/// Settings of the clip writer.
#[derive(Debug, Clone)]
pub struct ClipSettings {
    /// `[privacy]`.
    pub privacy: PrivacyConfig,
    /// `<state>/clips`.
    pub dir: PathBuf,
    /// The daemon's window and hop, seconds (the speech check scores windows as
    /// the daemon does).
    pub window_s: f64,
    /// See `window_s`.
    pub hop_s: f64,
}

/// Analysed audio chunks for the writer: `(stream sample index, samples)`.
pub type AudioChunk = (u64, Vec<f32>);

/// The clip writer thread.
pub struct ClipWriter {
    audio: Option<Sender<AudioChunk>>,
    events: Option<Sender<Event>>,
    handle: Option<JoinHandle<()>>,
}

struct PendingClip {
    event: Event,
}

impl ClipWriter {
    /// Creates `<state>/clips` (an error names it) and starts the thread.
    pub fn start(s: ClipSettings, model: Arc<Model>, live: Arc<Live>) -> Result<ClipWriter> {
        std::fs::create_dir_all(&s.dir).with_context(|| {
            format!(
                "[privacy] evidence_clips: cannot create {}: make the state directory writable or turn clips off",
                s.dir.display()
            )
        })?;
        let plan = WindowPlan::from_manifest(model.manifest(), Some(s.window_s), Some(s.hop_s))
            .map_err(|e| anyhow::anyhow!("evidence clips: {e}"))?;
        let (atx, arx) = bounded::<AudioChunk>(4096);
        let (etx, erx) = bounded::<Event>(256);
        let handle = std::thread::Builder::new()
            .name("hearken-clips".into())
            .spawn(move || run(s, model, live, plan, arx, erx))?;
        Ok(ClipWriter {
            audio: Some(atx),
            events: Some(etx),
            handle: Some(handle),
        })
    }

    /// The sender the pipeline's audio tap feeds.
    pub fn audio_sender(&self) -> Option<Sender<AudioChunk>> {
        self.audio.clone()
    }

    /// An event started or ended (only starts make clips). Never waits.
    pub fn event(&self, e: &Event) {
        if e.state == EventState::Start {
            if let Some(tx) = &self.events {
                let _ = tx.try_send(e.clone());
            }
        }
    }

    /// Cuts what is pending with the audio there is and ends the thread.
    pub fn stop(mut self) {
        drop(self.audio.take());
        drop(self.events.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    s: ClipSettings,
    model: Arc<Model>,
    live: Arc<Live>,
    plan: WindowPlan,
    arx: Receiver<AudioChunk>,
    erx: Receiver<Event>,
) {
    let rate = model.manifest().frontend.sample_rate;
    let p = &s.privacy;
    // Long enough for the onset's look-back even when the event is announced a
    // few windows after its onset.
    let keep_s = p.clip_before_s + p.clip_after_s + 2.0 * s.window_s + 10.0;
    let mut history = AudioHistory::new(rate, keep_s);
    let classes = speech_classes(&model);
    let mut pending: Vec<PendingClip> = Vec::new();
    let (mut arx, mut erx) = (Some(arx), Some(erx));
    let never_a = crossbeam_channel::never();
    let never_e = crossbeam_channel::never();
    prune(&s);
    while arx.is_some() || erx.is_some() {
        crossbeam_channel::select! {
            recv(arx.as_ref().unwrap_or(&never_a)) -> m => match m {
                Ok((at, chunk)) => history.push(at, &chunk),
                Err(_) => arx = None,
            },
            recv(erx.as_ref().unwrap_or(&never_e)) -> m => match m {
                Ok(e) => pending.push(PendingClip { event: e }),
                Err(_) => erx = None,
            },
        }
        let done = arx.is_none();
        let (ready, wait): (Vec<_>, Vec<_>) = pending
            .drain(..)
            .partition(|c| done || history.end_s() >= c.event.start_s + p.clip_after_s);
        pending = wait;
        for c in ready {
            finish(
                &s,
                &model,
                &live,
                plan.clone(),
                &classes,
                &history,
                &c.event,
            );
        }
    }
}

fn finish(
    s: &ClipSettings,
    model: &Model,
    live: &Live,
    plan: WindowPlan,
    classes: &[usize],
    history: &AudioHistory,
    e: &Event,
) {
    let p = &s.privacy;
    let rate = model.manifest().frontend.sample_rate;
    let audio = history.slice(e.start_s - p.clip_before_s, e.start_s + p.clip_after_s);
    if audio.is_empty() {
        tracing::warn!(event_id = %e.id, "no audio left for the {} event's clip", e.group);
        return;
    }
    let speech = match speech_score(model, plan, &audio, classes) {
        Ok(v) => v,
        Err(err) => {
            // Unsure whether someone spoke: nothing is written.
            tracing::warn!(event_id = %e.id, "cannot check the clip for speech ({err:#}): not saved");
            live.clip(e.id, SUPPRESSED_SPEECH, false);
            return;
        }
    };
    if speech >= p.speech_threshold {
        tracing::info!(
            event_id = %e.id,
            group = %e.group,
            speech,
            "evidence clip of the {} event not saved: speech heard (score {speech:.2} ≥ {:.2})",
            e.group,
            p.speech_threshold
        );
        live.clip(e.id, SUPPRESSED_SPEECH, false);
        return;
    }
    let audio = if p.scramble_clips {
        crate::privacy::scramble(&audio, 1, rate, p.scramble_block_s, rand::random())
    } else {
        audio
    };
    let name = clip_name(e);
    let written = encode_flac(&audio, rate).and_then(|bytes| {
        let tmp = s.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, s.dir.join(&name)))
            .map_err(|err| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::anyhow!("cannot write {}: {err}", s.dir.join(&name).display())
            })
    });
    match written {
        Ok(()) => {
            tracing::info!(event_id = %e.id, group = %e.group, clip = %name, "evidence clip saved: {}", s.dir.join(&name).display());
            live.clip(e.id, &name, true);
            prune(s);
        }
        Err(err) => tracing::error!(event_id = %e.id, "evidence clip not saved: {err:#}"),
    }
}

fn prune(s: &ClipSettings) {
    let p = &s.privacy;
    let gone = to_prune(
        &stored_clips(&s.dir),
        p.max_clips,
        Duration::from_secs_f64(p.max_age_days * 86_400.0),
        (p.max_mb * 1e6) as u64,
        SystemTime::now(),
    );
    for name in gone {
        match std::fs::remove_file(s.dir.join(&name)) {
            Ok(()) => tracing::debug!("evidence clip {name} removed (retention)"),
            Err(err) => tracing::warn!("cannot remove the old evidence clip {name}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_newest_and_fills_gaps() {
        let mut h = AudioHistory::new(10, 1.0); // 10 samples
        h.push(0, &[1.0; 6]);
        h.push(6, &[2.0; 6]);
        assert_eq!(h.end(), 12);
        assert_eq!(h.slice(0.0, 10.0).len(), 10, "only the newest 10 kept");
        assert_eq!(h.slice(0.2, 0.8), vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        h.push(14, &[3.0; 2]); // 2 samples missed
        assert_eq!(h.slice(1.1, 1.6), vec![2.0, 0.0, 0.0, 3.0, 3.0]);
        h.push(15, &[9.0; 2]); // overlaps: only the new sample is taken
        assert_eq!(h.end(), 17);
        assert_eq!(h.slice(1.6, 1.7), vec![9.0]);
        h.push(1000, &[4.0; 3]); // far ahead: starts over
        assert_eq!(h.slice(0.0, 99.0), Vec::<f32>::new());
        assert_eq!(h.slice(0.0, 1000.0), vec![4.0; 3]);
        assert!(h.slice(50.0, 40.0).is_empty(), "reversed bounds");
    }

    #[test]
    fn pruning_drops_the_oldest_over_any_bound() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clip = |n: &str, bytes: u64, age_s: u64| StoredClip {
            name: n.into(),
            bytes,
            modified: t0 - Duration::from_secs(age_s),
        };
        let clips = [clip("a", 10, 30), clip("b", 10, 20), clip("c", 10, 10)];
        let day = Duration::from_secs(86_400);
        assert!(to_prune(&clips, 3, day, 100, t0).is_empty());
        assert_eq!(to_prune(&clips, 2, day, 100, t0), vec!["a"]);
        assert_eq!(to_prune(&clips, 3, day, 25, t0), vec!["a"]);
        assert_eq!(
            to_prune(&clips, 3, Duration::from_secs(15), 100, t0),
            vec!["b", "a"]
        );
    }

    #[test]
    fn flac_round_trips_through_the_decoder() {
        let rate = 32_000;
        // Not a whole number of blocks: the last one is short.
        let tone: Vec<f32> = (0..rate + 123)
            .map(|i| 0.5 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin())
            .collect();
        let bytes = encode_flac(&tone, rate).unwrap();
        assert_eq!(&bytes[..4], b"fLaC");
        let mut dec = crate::audio::FileDecoder::from_bytes("t.flac", bytes).unwrap();
        assert_eq!(dec.info().sample_rate, rate);
        let mut back = Vec::new();
        while dec.next_chunk(&mut back).unwrap() {}
        assert_eq!(back.len(), tone.len());
        let err = back
            .iter()
            .zip(&tone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "{err}");
    }

    #[test]
    fn clip_names_are_plain_file_names() {
        let e = Event::for_test("smoke alarm/x", EventState::Start, uuid::Uuid::nil());
        assert_eq!(
            clip_name(&e),
            "20261207T101500Z-smoke_alarm_x-00000000-0000-0000-0000-000000000000.flac"
        );
    }
}
