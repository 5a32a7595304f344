//! `hearken bench`: audio seconds processed per CPU second, per stage.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::audio::{FileDecoder, StreamResampler};
use crate::classify::{classify_file, run_unit, ClassifyOptions};
use crate::dsp::LogMel;
use crate::model::Model;
use crate::scoring::{Scorer, WindowPlan};

/// CPU time used by this process so far, seconds.
pub fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One stage's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    /// Stage name.
    pub stage: String,
    /// Audio processed, seconds.
    pub audio_s: f64,
    /// CPU time spent, seconds.
    pub cpu_s: f64,
    /// Audio seconds per CPU second (real-time factor: higher is faster).
    pub audio_s_per_cpu_s: f64,
}

fn stage(name: &str, audio_s: f64, f: impl FnOnce() -> Result<()>) -> Result<StageResult> {
    let t0 = cpu_seconds();
    f()?;
    let cpu_s = (cpu_seconds() - t0).max(1e-9);
    Ok(StageResult {
        stage: name.to_string(),
        audio_s,
        cpu_s,
        audio_s_per_cpu_s: audio_s / cpu_s,
    })
}

/// Benchmarks each stage on `file` (decoded `repeat` times) with `model`.
pub fn run(model: &Model, file: &Path, repeat: usize) -> Result<Vec<StageResult>> {
    let repeat = repeat.max(1);
    let rate_out = model.manifest().frontend.sample_rate;
    // Warm the plan cache so plan building is not billed to inference.
    let opts = ClassifyOptions::default();
    classify_file(model, file, &opts)?;

    // Each repetition is its own stream, so every stage sees what classify sees.
    let mut audio: Vec<Vec<f32>> = Vec::new();
    let mut in_seconds = 0.0;
    let decode = stage("decode+resample", 0.0, || {
        for _ in 0..repeat {
            let mut dec = FileDecoder::open(file)?;
            let mut rs = StreamResampler::new(dec.info().sample_rate, rate_out)?;
            let mut mono = Vec::new();
            let mut out = Vec::new();
            loop {
                mono.clear();
                if !dec.next_chunk(&mut mono)? {
                    break;
                }
                rs.push(&mono, &mut out);
            }
            rs.finish(&mut out);
            audio.push(out);
            in_seconds += dec.frames_read() as f64 / dec.info().sample_rate as f64;
        }
        Ok(())
    })?;
    let decode = StageResult {
        audio_s: in_seconds,
        audio_s_per_cpu_s: in_seconds / decode.cpu_s,
        ..decode
    };
    let audio_s = audio.iter().map(Vec::len).sum::<usize>() as f64 / rate_out as f64;

    let mut frames: Vec<Vec<f32>> = Vec::new();
    let frontend = stage("frontend", audio_s, || {
        for a in &audio {
            let mut fe = LogMel::new(&model.manifest().frontend);
            let mut f = Vec::new();
            for c in a.chunks(4096) {
                fe.push(c, &mut f);
            }
            fe.finish(&mut f);
            frames.push(f);
        }
        Ok(())
    })?;

    let plan =
        WindowPlan::from_manifest(model.manifest(), None, None).map_err(anyhow::Error::msg)?;
    let inference = stage("inference", audio_s, || {
        let mut run = |f: &[f32]| run_unit(model, f);
        let step = 100 * model.manifest().frontend.n_mels;
        for f in &frames {
            let mut sc = Scorer::new(plan.clone());
            let mut out = Vec::new();
            for c in f.chunks(step) {
                sc.push(c, None, &mut run, &mut out)?;
                out.clear();
            }
            sc.finish(&mut run, &mut out)?;
        }
        Ok(())
    })?;

    let whole = stage("end-to-end classify", in_seconds, || {
        for _ in 0..repeat {
            classify_file(model, file, &opts)?;
        }
        Ok(())
    })?;
    Ok(vec![decode, frontend, inference, whole])
}
