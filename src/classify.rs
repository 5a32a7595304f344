//! `hearken classify`: whole-file AudioSet classification, streamed so memory stays
//! flat whatever the file's length.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::audio::{FileDecoder, StreamResampler};
use crate::dsp::LogMel;
use crate::model::{InputLayout, Labels, Model};
use crate::scoring::{Scorer, WindowPlan, WindowScore};

/// What to compute and report.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Labels reported per clip and per window.
    pub top_k: usize,
    /// Window length override, seconds.
    pub window_s: Option<f64>,
    /// Window hop override, seconds.
    pub hop_s: Option<f64>,
    /// Seconds of audio skipped at the start of the file.
    pub start_s: f64,
    /// Only report these classes (indices); `None` reports all.
    pub filter: Option<Vec<usize>>,
    /// Include every window's full score vector.
    pub keep_scores: bool,
    /// Anonymise the whole file before classifying it.
    pub anonymize: Option<crate::privacy::Anonymize>,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            top_k: 5,
            window_s: None,
            hop_s: None,
            start_s: 0.0,
            filter: None,
            keep_scores: false,
            anonymize: None,
        }
    }
}

/// One label with its score, in the shape IBM MAX clients read.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Prediction {
    /// AudioSet id.
    pub label_id: String,
    /// Display name.
    pub label: String,
    /// Score in [0, 1].
    pub probability: f32,
}

/// One window of a file.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// Start, seconds from the file start.
    pub start_s: f64,
    /// End, seconds from the file start.
    pub end_s: f64,
    /// Top labels.
    pub predictions: Vec<Prediction>,
    /// Full score vector in model order (with `--patches`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f32>>,
}

/// The result for one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The path as given.
    pub file: String,
    /// Always `ok`.
    pub status: &'static str,
    /// Decoded audio length, seconds.
    pub duration_s: f64,
    /// Model name.
    pub model: String,
    /// Top labels for the whole clip.
    pub predictions: Vec<Prediction>,
    /// Per-window results.
    pub windows: Vec<WindowReport>,
    /// Set when the file was damaged but audio before the damage was classified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Samples (per channel) that were NaN, infinite or absurdly large and were
    /// replaced — silenced, or clamped to ±[`crate::audio::SAMPLE_LIMIT`] — before
    /// analysis; 0 for a sound file.
    pub replaced_samples: u64,
}

/// The JSON for a file that failed.
#[derive(Debug, Clone, Serialize)]
pub struct FileError {
    /// The path as given.
    pub file: String,
    /// Always `error`.
    pub status: &'static str,
    /// One-line reason.
    pub message: String,
}

/// The `k` best classes of `scores`, restricted to `filter` when given.
pub fn top_k(
    scores: &[f32],
    labels: &Labels,
    k: usize,
    filter: Option<&[usize]>,
) -> Vec<Prediction> {
    let mut idx: Vec<usize> = match filter {
        Some(f) => f.iter().copied().filter(|&i| i < scores.len()).collect(),
        None => (0..scores.len()).collect(),
    };
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter()
        .map(|i| {
            let l = labels.get(i);
            Prediction {
                label_id: l.map(|l| l.id.clone()).unwrap_or_default(),
                label: l
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| format!("class {i}")),
                probability: scores[i],
            }
        })
        .collect()
}

/// Runs `model` on one unit of frames.
pub fn run_unit(model: &Model, frames: &[f32]) -> Result<crate::model::Output> {
    match model.manifest().io.layout {
        InputLayout::BatchChannelMelsFrames => model.run_window(frames),
        InputLayout::BatchFramesMels => model
            .run_patches(frames)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("model returned no output")),
    }
}

/// Classifies one file. Errors are one line and name the file.
pub fn classify_file(model: &Model, path: &Path, opts: &ClassifyOptions) -> Result<FileReport> {
    check_start(opts)?;
    let dec = FileDecoder::open(path)?;
    classify_decoder(model, dec, path, opts)
}

/// Classifies audio held in memory (an upload), named `name` in errors and in the
/// report.
pub fn classify_bytes(
    model: &Model,
    name: &str,
    bytes: Vec<u8>,
    opts: &ClassifyOptions,
) -> Result<FileReport> {
    check_start(opts)?;
    let dec = FileDecoder::from_bytes(name, bytes)?;
    classify_decoder(model, dec, Path::new(name), opts)
}

fn check_start(opts: &ClassifyOptions) -> Result<()> {
    if !(opts.start_s.is_finite() && opts.start_s >= 0.0) {
        bail!(
            "--start {} must be a non-negative number of seconds",
            opts.start_s
        );
    }
    Ok(())
}

fn classify_decoder(
    model: &Model,
    mut dec: FileDecoder,
    path: &Path,
    opts: &ClassifyOptions,
) -> Result<FileReport> {
    let plan = WindowPlan::from_manifest(model.manifest(), opts.window_s, opts.hop_s)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rate = dec.info().sample_rate;
    let fe_params = &model.manifest().frontend;
    let mut rs = StreamResampler::new(rate, fe_params.sample_rate)?;
    let mut fe = LogMel::new(fe_params);
    let mut scorer = Scorer::new(plan);
    let mut run = |f: &[f32]| run_unit(model, f);

    let skip_total = (opts.start_s * rate as f64).round() as u64;
    let mut skipped = 0u64;
    let (mut mono, mut resampled, mut frames) = (Vec::new(), Vec::new(), Vec::new());
    let mut windows: Vec<WindowScore> = Vec::new();
    let mut reports = Vec::new();
    let labels = model.labels();
    let filter = opts.filter.as_deref();
    let drain = |windows: &mut Vec<WindowScore>, reports: &mut Vec<WindowReport>| {
        for w in windows.drain(..) {
            reports.push(WindowReport {
                start_s: w.start_s + opts.start_s,
                end_s: w.end_s + opts.start_s,
                predictions: top_k(&w.scores, labels, opts.top_k, filter),
                scores: opts.keep_scores.then_some(w.scores),
            });
        }
    };
    // Anonymising needs the whole file at once (scramble shuffles all of it), and
    // works on every channel before they are mixed.
    let mut whole = match opts.anonymize {
        Some(a) => {
            let channels = dec.info().channels;
            dec.keep_channels();
            let mut all = Vec::new();
            while dec.next_chunk(&mut all)? {}
            let done = a.apply(&all, channels, rate);
            let mut mono = Vec::with_capacity(done.len() / channels.max(1));
            crate::audio::mix_to_mono(&done, channels, &mut mono);
            Some(mono)
        }
        None => None,
    };
    loop {
        mono.clear();
        if opts.anonymize.is_some() {
            match whole.take() {
                Some(all) if !all.is_empty() => mono = all,
                _ => break,
            }
        } else if !dec.next_chunk(&mut mono)? {
            break;
        }
        let mut chunk = &mono[..];
        if skipped < skip_total {
            let n = ((skip_total - skipped) as usize).min(chunk.len());
            skipped += n as u64;
            chunk = &chunk[n..];
        }
        resampled.clear();
        rs.push(chunk, &mut resampled);
        frames.clear();
        fe.push(&resampled, &mut frames);
        scorer.push(&frames, None, &mut run, &mut windows)?;
        drain(&mut windows, &mut reports);
    }
    let duration_s = dec.frames_read() as f64 / rate as f64;
    if skipped < skip_total || (skip_total > 0 && dec.frames_read() <= skip_total) {
        bail!(
            "{}: --start {} s is past the end of the audio ({duration_s:.2} s)",
            path.display(),
            opts.start_s
        );
    }
    resampled.clear();
    rs.finish(&mut resampled);
    frames.clear();
    fe.push(&resampled, &mut frames);
    fe.finish(&mut frames);
    scorer.push(&frames, None, &mut run, &mut windows)?;
    scorer.finish(&mut run, &mut windows)?;
    drain(&mut windows, &mut reports);
    if dec.frames_read() == 0 {
        bail!("{}: the file holds no audio samples", path.display());
    }
    // Window ends past the real audio (min-length padding, tail frames) are clipped.
    for w in &mut reports {
        w.end_s = w.end_s.min(duration_s);
        w.start_s = w.start_s.min(w.end_s);
    }
    Ok(FileReport {
        file: path.display().to_string(),
        status: "ok",
        duration_s,
        model: model.name().to_string(),
        predictions: top_k(&scorer.clip_scores(), labels, opts.top_k, filter),
        windows: reports,
        warning: dec.truncation().map(str::to_string),
        replaced_samples: dec.replaced_samples(),
    })
}

/// Human-readable rendering of a report.
pub fn render_text(r: &FileReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}  ({:.2} s, {})", r.file, r.duration_s, r.model);
    if let Some(w) = &r.warning {
        let _ = writeln!(s, "  warning: {w}");
    }
    if r.replaced_samples > 0 {
        let _ = writeln!(
            s,
            "  note: {} samples were NaN, infinite or out of range and were replaced \
             (silenced or clamped); the rest was classified",
            r.replaced_samples
        );
    }
    let fmt = |p: &[Prediction]| {
        p.iter()
            .map(|p| format!("{} {:.3}", p.label, p.probability))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(s, "  clip          {}", fmt(&r.predictions));
    for w in &r.windows {
        let _ = writeln!(
            s,
            "  {:6.2}-{:6.2}s {}",
            w.start_s,
            w.end_s,
            fmt(&w.predictions)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_filters() {
        let labels = Labels::from_names(&["a", "b", "c", "d"]);
        let s = [0.1, 0.7, 0.3, 0.7];
        let t = top_k(&s, &labels, 3, None);
        let names: Vec<&str> = t.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, vec!["b", "d", "c"]);
        let f = top_k(&s, &labels, 5, Some(&[0, 2]));
        let names: Vec<&str> = f.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, vec!["c", "a"]);
    }
}
