//! `hearken enroll GROUP`: learn a household's own sound — its smoke alarm, its
//! doorbell, a beep of its own — from a few examples.
//!
//! The examples ("takes") come from files or from the microphone, each checked for
//! a clear event. They are mixed, each several times and over other stretches of
//! background, into the shared recordings' home sounds, beside the group's shipped
//! examples when the group is a built-in one, and a detector is trained on the
//! mixtures exactly as `hearken train` trains one (cross-validated by recording,
//! thresholds chosen for a false-alarm target). The detector and its validation
//! set go to `<state dir>/enrolled/<group>/`; the daemon puts it in the place of
//! the group's shipped detector (or adds the group) on SIGHUP or restart, and
//! `hearken adapt` adapts it like any other. A new group is added to the
//! configuration file with the AudioSet classes the takes sounded most like.
//! Takes recorded from the microphone are deleted after training unless kept.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::Config;
use crate::detect::tone::{ToneTemplate, ToneTracker};
use crate::detect::trained::{configured, detectors_dir, load_dir, LinearDetector, ToneRule};
use crate::model::{Labels, Model};

/// Folder of the enrolled detectors in the state directory.
pub const DIR: &str = "enrolled";

/// Where the enrolled detectors of a state directory live.
pub fn enrolled_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// The trained detectors the daemon runs, with where each came from.
#[derive(Debug, Default)]
pub struct Loaded {
    /// One per enabled group that has one.
    pub detectors: Vec<LinearDetector>,
    /// The file each was loaded from.
    pub files: Vec<PathBuf>,
    /// What was left out, with why (for the log).
    pub warnings: Vec<String>,
}

/// The detectors for `cfg`'s enabled groups: the shipped ones (`[detection]
/// detectors`), each replaced by the household's enrolled one for its group, plus
/// enrolled groups that ship none; with `adapted`, the adapted ones of
/// `hearken adapt` over those they were made for. Nothing when trained detectors
/// are off.
pub fn load(cfg: &Config, model: &Model, state_dir: &Path, adapted: bool) -> Result<Loaded> {
    over_shipped(
        configured(&cfg.detection, &cfg.model, model)?,
        cfg,
        model,
        state_dir,
        adapted,
    )
}

/// [`load`] for shipped detectors already read (`configured(&cfg.detection, &cfg.model, model)`).
pub fn over_shipped(
    shipped: Vec<LinearDetector>,
    cfg: &Config,
    model: &Model,
    state_dir: &Path,
    adapted: bool,
) -> Result<Loaded> {
    let Some(dir) = detectors_dir(&cfg.detection, model)? else {
        return Ok(Loaded::default());
    };
    let mut out = Loaded::default();
    for d in shipped {
        out.files.push(dir.join(format!("{}.json", d.group)));
        out.detectors.push(d);
    }
    let enrolled = enrolled_dir(state_dir);
    let mut subdirs: Vec<PathBuf> = match std::fs::read_dir(&enrolled) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => bail!(
            "cannot read the enrolled detectors in {}: {e}",
            enrolled.display()
        ),
    };
    subdirs.sort();
    let enabled: Vec<&str> = cfg.enabled_groups().map(|(n, _)| n.as_str()).collect();
    for sub in subdirs {
        let found = load_dir(
            &sub,
            model.name(),
            model.manifest().io.embedding_dim,
            model.labels().len(),
        )
        .map_err(|e| anyhow!("{e:#}; remove {} or enrol again", sub.display()))?;
        for d in found {
            if !enabled.contains(&d.group.as_str()) {
                continue;
            }
            let differs = |a: f64, b: f64| a > 0.0 && (a - b).abs() > 1e-6;
            if differs(d.window_s, cfg.model.window_s) || differs(d.hop_s, cfg.model.hop_s) {
                out.warnings.push(format!(
                    "{}: enrolled on {} s windows every {} s, but the daemon runs {} s every {} s; using the shipped {} detector (enrol again)",
                    sub.display(),
                    d.window_s,
                    d.hop_s,
                    cfg.model.window_s,
                    cfg.model.hop_s,
                    d.group
                ));
                continue;
            }
            let file = sub.join(format!("{}.json", d.group));
            match out.detectors.iter().position(|s| s.group == d.group) {
                Some(i) => {
                    out.detectors[i] = d;
                    out.files[i] = file;
                }
                None => {
                    out.detectors.push(d);
                    out.files.push(file);
                }
            }
        }
    }
    if adapted {
        let skipped = super::adapt::overlay(
            &mut out.detectors,
            &out.files,
            &super::adapt::adapted_dir(state_dir),
        )?;
        out.warnings.extend(skipped);
    }
    Ok(out)
}

/// Loudness of a take, for the check and the report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TakeCheck {
    /// Length, seconds.
    pub duration_s: f64,
    /// Loudest 50 ms, dBFS.
    pub peak_dbfs: f64,
    /// The quiet part (10th percentile of 50 ms levels), dBFS.
    pub floor_dbfs: f64,
    /// Seconds within 20 dB of the peak.
    pub active_s: f64,
    /// Share of samples at full scale.
    pub clipped: f64,
}

/// Quieter than this at its loudest, a take holds no usable event.
pub const MIN_PEAK_DBFS: f64 = -55.0;
/// How far a recorded take's event must stand above its quiet part.
pub const MIN_CONTRAST_DB: f64 = 10.0;
/// Shortest take, seconds.
pub const MIN_TAKE_S: f64 = 0.25;
/// Longest take, seconds (an example, not a recording of the evening).
pub const MAX_TAKE_S: f64 = 120.0;

/// Checks that a take (mono samples at `rate`) holds a clear event. With
/// `contrast`, as for a take recorded from the microphone, the event must stand
/// [`MIN_CONTRAST_DB`] above the rest of the take; a file cut tight around its
/// event need not. The error says what is wrong and what to do.
pub fn check_take(x: &[f32], rate: u32, contrast: bool) -> Result<TakeCheck, String> {
    let duration_s = x.len() as f64 / rate.max(1) as f64;
    if duration_s < MIN_TAKE_S {
        return Err(format!(
            "only {duration_s:.2} s long: a take needs at least {MIN_TAKE_S} s with the sound in it"
        ));
    }
    if duration_s > MAX_TAKE_S {
        return Err(format!(
            "{duration_s:.0} s long: cut it to the sound itself (at most {MAX_TAKE_S:.0} s)"
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err("holds samples that are not numbers (NaN or infinite)".into());
    }
    let n = ((rate as f64 * 0.05) as usize).max(1);
    let mut levels: Vec<f64> = x
        .chunks(n)
        .filter(|c| c.len() * 2 >= n)
        .map(|c| {
            let p = c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c.len() as f64;
            10.0 * p.max(1e-12).log10()
        })
        .collect();
    if levels.is_empty() {
        return Err("holds no audio".into());
    }
    let peak = levels.iter().cloned().fold(f64::MIN, f64::max);
    let active_s =
        levels.iter().filter(|&&l| l >= peak - 20.0).count() as f64 * n as f64 / rate as f64;
    levels.sort_by(|a, b| a.total_cmp(b));
    let floor = levels[levels.len() / 10];
    let clipped = x.iter().filter(|v| v.abs() >= 0.999).count() as f64 / x.len() as f64;
    let c = TakeCheck {
        duration_s,
        peak_dbfs: peak,
        floor_dbfs: floor,
        active_s,
        clipped,
    };
    if peak < MIN_PEAK_DBFS {
        return Err(format!(
            "too quiet (loudest {peak:.0} dBFS): bring the microphone closer or check that it is the right one"
        ));
    }
    if contrast && peak - floor < MIN_CONTRAST_DB {
        return Err(format!(
            "no clear event: the loudest part ({peak:.0} dBFS) is only {:.0} dB above the rest ({floor:.0} dBFS); start the sound after the prompt and keep the room quiet",
            peak - floor
        ));
    }
    Ok(c)
}

/// AudioSet classes that say where a sound was heard or that it was heard at
/// all, not what it was: never chosen as a new group's labels.
const UNSPECIFIC: &[&str] = &[
    "Speech",
    "Silence",
    "Music",
    "Noise",
    "Static",
    "Hum",
    "Mains hum",
    "White noise",
    "Pink noise",
    "Environmental noise",
    "Sound effect",
    "Echo",
    "Reverberation",
    "Inside, small room",
    "Inside, large room or hall",
    "Inside, public space",
    "Outside, urban or manmade",
    "Outside, rural or natural",
];

/// The labels a new group gets: the `k` classes the takes sounded most like
/// (`scores`: per class, the mean over takes of its highest window score), the
/// unspecific ones left out, those under 0.02 too unless none is above.
pub fn choose_labels(scores: &[f32], labels: &Labels, k: usize) -> Vec<String> {
    let mut order: Vec<usize> = (0..scores.len().min(labels.len()))
        .filter(|&i| {
            labels
                .get(i)
                .is_some_and(|l| !UNSPECIFIC.iter().any(|u| u.eq_ignore_ascii_case(&l.name)))
        })
        .collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out: Vec<String> = order
        .iter()
        .take(k)
        .filter(|&&i| scores[i] >= 0.02)
        .filter_map(|&i| labels.get(i).map(|l| l.name.clone()))
        .collect();
    if out.is_empty() {
        out.extend(
            order
                .first()
                .and_then(|&i| labels.get(i))
                .map(|l| l.name.clone()),
        );
    }
    out
}

/// `text` (a configuration file) with a table for the new group `group` appended,
/// or an error if the file already has one.
pub fn with_new_group(text: &str, group: &str, labels: &[String], safety: bool) -> Result<String> {
    let doc: toml::Table = text
        .parse()
        .context("the configuration file is not valid TOML")?;
    let exists = doc
        .get("detection")
        .and_then(|d| d.get("groups"))
        .and_then(|g| g.get(group))
        .is_some();
    if exists {
        bail!("the configuration file already has [detection.groups.{group}]");
    }
    let list = labels
        .iter()
        .map(|l| toml::Value::String(l.clone()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# Added by `hearken enroll {group}`: the AudioSet classes its takes sounded most\n# like; the detector learnt from the takes is in the state directory (enrolled/{group}).\n[detection.groups.{group}]\nsafety = {safety}\nlabels = [{list}]\n"
    ));
    Ok(out)
}

/// A labelled folder for training: `labels.csv` naming each take `copies` times
/// with `group` as its label (each take its own recording, so its copies stay on
/// one side of the cross-validation).
pub fn write_takes_source(dir: &Path, takes: &[PathBuf], group: &str, copies: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut w = csv::Writer::from_path(dir.join("labels.csv"))?;
    w.write_record(["file", "source_repo", "source_path", "label", "duration_s"])?;
    for t in takes {
        let abs = std::fs::canonicalize(t).unwrap_or_else(|_| t.clone());
        let name = abs.display().to_string();
        for _ in 0..copies.max(1) {
            w.write_record([name.as_str(), "enrolled", name.as_str(), group, "0"])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Copies per take so that the mixtures hold at least `placements` of the takes.
pub fn copies_for(takes: usize, placements: usize) -> usize {
    placements.div_ceil(takes.max(1)).max(1)
}

/// What [`prompt_for`] says when the group has no prompt of its own.
pub const GENERIC_PROMPT: &str = "make the sound now";

/// What to ask for before each recorded take of `group`.
pub fn prompt_for(group: &str) -> &'static str {
    match group {
        "smoke_alarm" | "fire" => "press the alarm's test button now",
        "doorbell" => "ring the doorbell now",
        "glass" => "break (or play) the glass now",
        _ => GENERIC_PROMPT,
    }
}

/// A level meter for a terminal line: `▕█████     ▏ -23 dBFS`.
pub fn meter(dbfs: f64) -> String {
    let width = 30usize;
    let filled = (((dbfs + 60.0) / 60.0).clamp(0.0, 1.0) * width as f64).round() as usize;
    format!(
        "\u{2595}{}{}\u{258f} {:>4.0} dBFS",
        "\u{2588}".repeat(filled),
        " ".repeat(width - filled),
        dbfs.max(-99.0)
    )
}

/// A source kept open across takes (a second reader of stdin, or a device
/// reopened between takes, would lose audio or fight the first).
pub struct Recorder {
    source: crate::audio::source::Source,
    ring: crate::audio::source::SourceConsumer,
}

impl Recorder {
    /// Opens `spec` (a device, a file or stdin).
    pub fn start(spec: &crate::audio::source::SourceSpec) -> Result<Recorder> {
        use crate::audio::source::{Source, SourceOptions};
        let (source, ring) = Source::start(
            spec,
            &SourceOptions {
                ring_seconds: 4.0,
                realtime: true,
            },
        )?;
        Ok(Recorder { source, ring })
    }

    /// What is recorded from.
    pub fn description(&self) -> &str {
        &self.source.description
    }

    /// Records one take of `seconds`, from now (what came before is dropped),
    /// showing the level on `out` as it comes: mono samples at the source's rate.
    pub fn take(&mut self, seconds: f64, out: &mut dyn std::io::Write) -> Result<(Vec<f32>, u32)> {
        use ringbuf::traits::Consumer;
        let rate = self.source.sample_rate;
        let want = (seconds * rate as f64) as usize;
        let mut take: Vec<f32> = Vec::with_capacity(want);
        let mut chunk = vec![0f32; (rate as usize / 10).max(1)];
        while self.ring.pop_slice(&mut chunk) > 0 {}
        let started = std::time::Instant::now();
        let mut shown = std::time::Instant::now();
        let mut last_level = -99.0;
        while take.len() < want {
            let n = self.ring.pop_slice(&mut chunk);
            if n > 0 {
                let got = &chunk[..n.min(want - take.len())];
                let p =
                    got.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / got.len() as f64;
                last_level = 10.0 * p.max(1e-10).log10();
                take.extend_from_slice(got);
            } else {
                if let Some(e) = self.source.error() {
                    bail!("recording from {}: {e}", self.source.description);
                }
                if self.source.is_finished() {
                    bail!(
                        "{} ended after {:.1} s of the {seconds} s take",
                        self.source.description,
                        take.len() as f64 / rate as f64
                    );
                }
                if started.elapsed().as_secs_f64() > seconds * 3.0 + 10.0 {
                    bail!("{} delivers no audio", self.source.description);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if shown.elapsed().as_millis() >= 250 {
                shown = std::time::Instant::now();
                let _ = write!(
                    out,
                    "\r  {} {:>4.1} s ",
                    meter(last_level),
                    take.len() as f64 / rate as f64
                );
                let _ = out.flush();
            }
        }
        let _ = writeln!(out);
        Ok((take, rate))
    }
}

/// One take as training saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Take {
    /// The file.
    pub file: PathBuf,
    /// Its loudness.
    #[serde(flatten)]
    pub check: TakeCheck,
}

/// What enrolling needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The group.
    pub group: String,
    /// The takes, checked (files the user gave, or recordings).
    pub takes: Vec<Take>,
    /// Labelled folders of other sounds (negatives; and the group's own examples
    /// when it is a built-in group).
    pub sources: Vec<crate::eval::learn::Source>,
    /// Seed of the mixtures.
    pub seed: u64,
    /// Event-to-background ratios, dB.
    pub snrs_db: Vec<f64>,
    /// Placements of the takes in the mixtures, per ratio, at least.
    pub placements: usize,
    /// At most this many of the group's shipped examples.
    pub max_shipped: usize,
    /// False alarms per hour the threshold is chosen for.
    pub target_fa_per_hour: f64,
    /// Where the detector goes (its folder is replaced).
    pub out: PathBuf,
    /// Scratch folder.
    pub work_dir: PathBuf,
}

/// The class scores of a take: per class, its highest window score.
pub fn take_scores(model: &Model, file: &Path) -> Result<Vec<f32>> {
    let r = crate::classify::classify_file(
        model,
        file,
        &crate::classify::ClassifyOptions {
            keep_scores: true,
            ..Default::default()
        },
    )?;
    let mut best = vec![0f32; model.labels().len()];
    for w in &r.windows {
        for (b, &s) in best.iter_mut().zip(w.scores.iter().flatten()) {
            *b = b.max(s);
        }
    }
    Ok(best)
}

/// How an enrolment's tone template was learnt and calibrated.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ToneReport {
    /// The template's key mel bands (none: no template, see `refused`).
    pub bands: Option<[usize; 2]>,
    /// Its hop score threshold.
    pub on: Option<f32>,
    /// Why the takes gave no template.
    pub refused: Option<String>,
    /// Hours of other sounds it was calibrated on.
    pub negatives_h: f64,
    /// Their clips.
    pub negative_clips: usize,
    /// Clips of other sounds whose highest hop reached the threshold.
    pub negatives_over: usize,
    /// Clips of other sounds that hold the same tone (as clear as the takes': see
    /// [`SAME_TONE`]); they will raise the group too.
    pub same_tone: Vec<String>,
    /// Each take, left out of the template and placed into other sounds at every
    /// ratio: the share found at the threshold.
    pub recall: Option<f64>,
    /// Those placements.
    pub placements: usize,
}

/// A hop score from which a clip of other sounds counts as holding the takes' very
/// tone (1.0 is as clear as in the takes).
pub const SAME_TONE: f32 = 0.8;

/// Stretches of other sounds the recall check places takes into, at most.
const BEDS: usize = 64;
/// Their length, seconds (a bed is repeated under a longer take).
const BED_S: usize = 4;

/// The log-mel frames of `x` (at the model's rate), frame-major.
pub fn frames_of(model: &Model, x: &[f32]) -> Vec<f32> {
    let mut fe = crate::dsp::frontend::LogMel::new(&model.manifest().frontend);
    let mut out = Vec::new();
    fe.push(x, &mut out);
    fe.finish(&mut out);
    out
}

/// The highest hop score of `template` over frames `from..to` of `frames`, hops of
/// `hop` frames as the daemon scores them.
fn best_hop(template: &ToneTemplate, frames: &[f32], hop: usize, from: usize, to: usize) -> f32 {
    let mut t = ToneTracker::new(template.clone());
    t.push(frames);
    let n = frames.len() / template.n_mels;
    let mut best = 0f32;
    let mut end = hop;
    while end < n + hop {
        if end > from && end - hop < to {
            best = best.max(t.hop_score(end.min(n) as u64, hop));
        }
        end += hop;
    }
    best
}

/// Learns the takes' tone template ([`crate::detect::tone`]) and its threshold:
/// the highest hop score over `negatives` (other sounds; at most one false alarm
/// counted per clip) that leaves `target_fa_per_hour` of them, with a 10 % margin,
/// leaving out (and naming) clips that hold the same tone ([`SAME_TONE`]).
/// The recall is measured by leaving each take out of the template and placing it,
/// three times per ratio of `snrs_db`, into stretches of the negatives.
pub fn tone_rule(
    model: &Model,
    takes: &[PathBuf],
    negatives: &[PathBuf],
    snrs_db: &[f64],
    hop_s: f64,
    target_fa_per_hour: f64,
    seed: u64,
) -> Result<(Option<ToneRule>, ToneReport)> {
    use rand::{Rng, SeedableRng};
    let fe = &model.manifest().frontend;
    let (rate, n_mels, fh) = (fe.sample_rate, fe.n_mels, fe.frame_hop_s());
    let hop = ((hop_s / fh).round() as usize).max(1);
    let mut report = ToneReport::default();
    let audio: Vec<Vec<f32>> = takes
        .iter()
        .map(|f| crate::eval::run::decode_at(f, rate))
        .collect::<Result<_>>()?;
    let take_frames: Vec<Vec<f32>> = audio.iter().map(|x| frames_of(model, x)).collect();
    let template = match ToneTemplate::learn(&take_frames, n_mels, fh) {
        Ok(t) => t,
        Err(why) => {
            report.refused = Some(why);
            return Ok((None, report));
        }
    };
    report.bands = Some(template.bands);
    // Each negative clip's highest hop; beds for the recall check: the first
    // seconds of clips spread over the list (bounded: a Pi has little memory).
    let every = negatives.len().div_ceil(BEDS).max(1);
    let mut beds: Vec<Vec<f32>> = Vec::new();
    let mut maxima = Vec::new();
    for (i, f) in negatives.iter().enumerate() {
        let Ok(x) = crate::eval::run::decode_at(f, rate) else {
            continue;
        };
        if x.is_empty() {
            continue;
        }
        report.negatives_h += x.len() as f64 / rate as f64 / 3600.0;
        let fr = frames_of(model, &x);
        maxima.push((best_hop(&template, &fr, hop, 0, usize::MAX), f));
        if i % every == 0 {
            beds.push(x[..x.len().min(BED_S * rate as usize)].to_vec());
        }
    }
    report.negative_clips = maxima.len();
    if maxima.is_empty() {
        bail!("no other sounds to calibrate the tone on");
    }
    // A clip whose tone stands out nearly as clearly as in the takes holds the
    // same tone (another beeper at this pitch): no threshold tells it from the
    // device without losing the device. It is named, not calibrated against.
    for (m, f) in &maxima {
        if *m >= SAME_TONE {
            report.same_tone.push(f.display().to_string());
        }
    }
    let mut rest: Vec<f32> = maxima
        .iter()
        .map(|(m, _)| *m)
        .filter(|&m| m < SAME_TONE)
        .collect();
    rest.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target_fa_per_hour * report.negatives_h).floor() as usize;
    let on = (rest.get(allowed).copied().unwrap_or(0.0) * 1.1).clamp(0.25, SAME_TONE);
    report.on = Some(on);
    report.negatives_over = maxima.iter().filter(|(m, _)| *m >= on).count();
    // Leave-one-take-out recall.
    if takes.len() >= 2 && !beds.is_empty() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut found, mut placed) = (0usize, 0usize);
        for (i, x) in audio.iter().enumerate() {
            let others: Vec<Vec<f32>> = take_frames
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, f)| f.clone())
                .collect();
            let t = ToneTemplate::learn(&others, n_mels, fh).ok();
            let Some((a, b, p)) = crate::eval::mix::active_span(x, rate) else {
                continue;
            };
            for &snr in snrs_db {
                for _ in 0..3 {
                    placed += 1;
                    let Some(t) = &t else { continue };
                    let bed = &beds[rng.gen_range(0..beds.len())];
                    let len = (b - a) + 2 * rate as usize;
                    let start = rng.gen_range(0..bed.len().max(1));
                    let mut y: Vec<f32> = (0..len).map(|k| bed[(start + k) % bed.len()]).collect();
                    let bed_p = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / len as f64;
                    let gain = if p > 0.0 && bed_p > 0.0 {
                        (bed_p / p * 10f64.powf(snr / 10.0)).sqrt()
                    } else {
                        1.0
                    };
                    let at = rate as usize;
                    for (k, &v) in x[a..b].iter().enumerate() {
                        y[at + k] += (gain * v as f64) as f32;
                    }
                    let fr = frames_of(model, &y);
                    let (f0, f1) = (
                        (at as f64 / rate as f64 / fh) as usize,
                        ((at + b - a) as f64 / rate as f64 / fh) as usize + 1,
                    );
                    if best_hop(t, &fr, hop, f0, f1) >= on {
                        found += 1;
                    }
                }
            }
        }
        if placed > 0 {
            report.recall = Some(found as f64 / placed as f64);
            report.placements = placed;
        }
    }
    let rule = ToneRule {
        template,
        on,
        trained: serde_json::json!({
            "negatives_h": report.negatives_h,
            "negative_clips": report.negative_clips,
            "target_fa_per_hour": target_fa_per_hour,
            "recall_left_out": report.recall,
            "same_tone": report.same_tone,
        }),
    };
    Ok((Some(rule), report))
}

/// Trains the group's detector on the takes mixed into the sources' home sounds
/// (see the module's description) and puts it, with its validation set, in
/// `req.out`. `cfg` must hold the group.
pub fn train(model: std::sync::Arc<Model>, cfg: &Config, req: &Request) -> Result<Enrolled> {
    use crate::eval::learn::{self, Source, TrainOptions};
    use crate::eval::mix::MixSpec;
    if !cfg.detection.groups.contains_key(&req.group) {
        bail!("the configuration has no group {}", req.group);
    }
    let takes_dir = req.work_dir.join("takes");
    let files: Vec<PathBuf> = req.takes.iter().map(|t| t.file.clone()).collect();
    let copies = copies_for(files.len(), req.placements);
    write_takes_source(&takes_dir, &files, &req.group, copies)?;
    let mut sources = req.sources.clone();
    sources.push(Source {
        dir: takes_dir.clone(),
        split: crate::eval::dataset::Split::All,
        groups: None,
    });
    let staging = req.out.with_file_name(format!(".{}-new", req.group));
    let _ = std::fs::remove_dir_all(&staging);
    let opts = TrainOptions {
        sources,
        groups: vec![req.group.clone()],
        mix: MixSpec {
            seed: req.seed,
            rate: model.manifest().frontend.sample_rate,
            snrs_db: req.snrs_db.clone(),
            slot_s: 25.0,
            lead_s: 60.0,
            ..MixSpec::default()
        },
        events_per_mixture: 40,
        // The takes come whole (every copy); the group's shipped examples up to
        // `max_shipped`.
        max_per_group: Some(req.max_shipped.max(copies * files.len())),
        repeats: 1,
        target_fa_per_hour: req.target_fa_per_hour,
        features: crate::detect::trained::Features::ALL.to_vec(),
        l2s: vec![0.0003, 0.003, 0.03],
        hidden_units: vec![0, 16],
        iterations: 300,
        epochs: 20,
        folds: 2,
        backgrounds_by_kind: false,
        gate_keep: 0.9,
        hard_share: 0.02,
        hard_weight: 4,
        out: staging.clone(),
        work_dir: req.work_dir.join("mixtures"),
        cache_dir: None,
        net: None,
    };
    let summary = learn::train(model.clone(), cfg, &opts)?
        .into_iter()
        .find(|g| g.group == req.group)
        .ok_or_else(|| anyhow!("training made no detector for {}", req.group))?;
    // The tone beside the head: calibrated on every ordinary sound of the sources.
    let mut negatives = Vec::new();
    for src in req.sources.iter().filter(|s| s.groups.is_none()) {
        for c in crate::eval::dataset::load(&src.dir)? {
            if crate::eval::dataset::in_split(&c, src.split)
                && c.group.is_none()
                && c.label != req.group
            {
                negatives.push(c.file);
            }
        }
    }
    let (rule, tone) = tone_rule(
        &model,
        &files,
        &negatives,
        &req.snrs_db,
        cfg.model.hop_s,
        req.target_fa_per_hour,
        req.seed,
    )?;
    if let Some(rule) = rule {
        let file = staging.join(format!("{}.json", req.group));
        let mut d = LinearDetector::load(&file)?;
        d.tone = Some(rule);
        d.save(&file)?;
    }
    if req.out.exists() {
        std::fs::remove_dir_all(&req.out)
            .with_context(|| format!("cannot replace {}", req.out.display()))?;
    }
    std::fs::rename(&staging, &req.out)
        .with_context(|| format!("cannot write {}", req.out.display()))?;
    let _ = std::fs::remove_dir_all(&takes_dir);
    Ok(Enrolled {
        summary: learn::GroupSummary {
            file: req.out.join(format!("{}.json", req.group)),
            ..summary
        },
        tone,
    })
}

/// What enrolling made: the head's training summary and the tone's.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The head (trained as `hearken train` trains one).
    pub summary: crate::eval::learn::GroupSummary,
    /// The tone template beside it.
    pub tone: ToneReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f64, amp: f32, from: f64, to: f64) -> Vec<f32> {
        (0..(rate as f64 * seconds) as usize)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let on = t >= from && t < to;
                let a = if on { amp } else { amp * 0.001 };
                a * (2.0 * std::f64::consts::PI * 3100.0 * t).sin() as f32
            })
            .collect()
    }

    #[test]
    fn a_clear_beep_passes_and_silence_or_a_flat_take_does_not() {
        let ok = check_take(&tone(16000, 6.0, 0.3, 2.0, 3.0), 16000, true).unwrap();
        assert!(
            ok.peak_dbfs > -15.0 && ok.peak_dbfs - ok.floor_dbfs > 40.0,
            "{ok:?}"
        );
        assert!((ok.active_s - 1.0).abs() < 0.11, "{ok:?}");
        let e = check_take(&vec![0.0; 16000 * 4], 16000, true).unwrap_err();
        assert!(e.contains("too quiet"), "{e}");
        // The whole take at one level: a tight cut passes as a file, not as a
        // microphone take.
        let flat = tone(16000, 3.0, 0.3, 0.0, 3.0);
        assert!(check_take(&flat, 16000, false).is_ok());
        let e = check_take(&flat, 16000, true).unwrap_err();
        assert!(e.contains("no clear event"), "{e}");
        let e = check_take(&flat[..1000], 16000, false).unwrap_err();
        assert!(e.contains("at least"), "{e}");
        let mut nan = flat.clone();
        nan[5] = f32::NAN;
        assert!(check_take(&nan, 16000, false)
            .unwrap_err()
            .contains("not numbers"));
        let clipped: Vec<f32> = flat.iter().map(|v| (v * 10.0).clamp(-1.0, 1.0)).collect();
        assert!(check_take(&clipped, 16000, false).unwrap().clipped > 0.3);
    }

    #[test]
    fn a_new_groups_labels_are_what_the_takes_sounded_like() {
        let labels = Labels::from_names(&[
            "Speech",
            "Smoke detector, smoke alarm",
            "Beep, bleep",
            "Inside, small room",
            "Dog",
        ]);
        let labels = &labels;
        let scores = [0.9, 0.4, 0.1, 0.8, 0.001];
        assert_eq!(
            choose_labels(&scores, labels, 3),
            ["Smoke detector, smoke alarm", "Beep, bleep"]
        );
        // Nothing above the floor: the best specific class still.
        assert_eq!(
            choose_labels(&[0.5, 0.001, 0.0, 0.5, 0.003], labels, 3),
            ["Dog"]
        );
    }

    #[test]
    fn a_new_group_is_appended_and_an_existing_one_refused() {
        let text = "# mine\n[node]\nroom = \"hall\"";
        let out = with_new_group(
            text,
            "doorbell",
            &["Doorbell".into(), "Ding-dong".into()],
            false,
        )
        .unwrap();
        assert!(out.starts_with(text), "comments and keys stay as they are");
        let doc: toml::Table = out.parse().unwrap();
        let g = &doc["detection"]["groups"]["doorbell"];
        assert_eq!(g["labels"].as_array().unwrap().len(), 2);
        assert_eq!(g["safety"].as_bool(), Some(false));
        let e = with_new_group(&out, "doorbell", &["Doorbell".into()], false).unwrap_err();
        assert!(e.to_string().contains("already has"), "{e}");
        assert!(with_new_group("[[", "x", &[], false).is_err());
        // A label with quotes is written as a TOML string.
        let out = with_new_group("", "odd", &["a \"b\"".into()], true).unwrap();
        let doc: toml::Table = out.parse().unwrap();
        assert_eq!(
            doc["detection"]["groups"]["odd"]["labels"][0].as_str(),
            Some("a \"b\"")
        );
    }

    #[test]
    fn takes_are_listed_as_their_own_recordings_with_copies() {
        let dir = std::env::temp_dir().join(format!("hearken-enroll-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let takes = [PathBuf::from("/x/a.wav"), PathBuf::from("/x/b.flac")];
        write_takes_source(&dir, &takes, "my_alarm", 3).unwrap();
        let clips = crate::eval::dataset::load(&dir).unwrap();
        assert_eq!(clips.len(), 6);
        assert!(clips
            .iter()
            .all(|c| c.label == "my_alarm" && c.file.is_absolute()));
        let recs: std::collections::HashSet<_> =
            clips.iter().map(|c| c.recording.clone()).collect();
        assert_eq!(recs.len(), 2, "copies of a take are one recording");
        assert_eq!(copies_for(3, 24), 8);
        assert_eq!(copies_for(30, 24), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
