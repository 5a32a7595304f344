//! Damaged sample values and short files through the binary: float WAVs holding
//! NaN, ±Inf and absurd values (`hearken classify` at a resampled and at the model
//! rate, and the daemon), and the daemon's summary of a file shorter than the model
//! window.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::models_dir;
use serde_json::Value;

fn hearken(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearken"))
        .args(args)
        .env("HEARKEN_MODELS", models_dir())
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-damaged-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A mono 440 Hz tone of `seconds` at `rate`, written as 32-bit float, with the
/// `bad` (index, value) samples put in.
fn float_wav(path: &Path, rate: u32, seconds: f64, bad: &[(usize, f32)]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let n = (rate as f64 * seconds) as usize;
    for i in 0..n {
        let mut v = 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin();
        if let Some(&(_, b)) = bad.iter().find(|(j, _)| *j == i) {
            v = b;
        }
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

/// NaN, +Inf, -Inf and 1e30: four replaced samples.
fn damage(rate: u32) -> Vec<(usize, f32)> {
    let r = rate as usize;
    vec![
        (r / 2, f32::NAN),
        (r, f32::INFINITY),
        (r + r / 3, f32::NEG_INFINITY),
        (2 * r, 1e30),
    ]
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn classify_reports_replaced_samples_and_carries_on() {
    let dir = tmpdir("classify");
    // At 48 kHz the samples go through the resampler (where a NaN panicked); at
    // 32 kHz, mn04's rate, they would go into the model unchecked.
    let bad48 = dir.join("nan-48k.wav");
    let bad32 = dir.join("nan-32k.wav");
    let good = dir.join("good-16k.wav");
    float_wav(&bad48, 48000, 3.0, &damage(48000));
    float_wav(&bad32, 32000, 3.0, &damage(32000));
    float_wav(&good, 16000, 2.0, &[]);
    let files = [&bad48, &good, &bad32];
    let paths: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();

    let mut args = vec!["classify", "--json"];
    args.extend(&paths);
    let out = hearken(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "every file gets a result");
    for (v, (path, replaced)) in lines.iter().zip([(&bad48, 4), (&good, 0), (&bad32, 4)]) {
        let name = path.display().to_string();
        assert_eq!(v["file"], name.as_str());
        assert_eq!(v["status"], "ok", "{name}: {v}");
        assert_eq!(v["replaced_samples"], replaced, "{name}");
        // Scores are numbers (a NaN would be written as null).
        for p in v["predictions"].as_array().unwrap() {
            let s = p["probability"].as_f64();
            assert!(s.is_some_and(|s| (0.0..=1.0).contains(&s)), "{name}: {p}");
        }
        assert!(
            (v["duration_s"].as_f64().unwrap() - if replaced > 0 { 3.0 } else { 2.0 }).abs() < 1e-6
        );
    }

    // Text: a note per damaged file.
    let mut args = vec!["classify"];
    args.extend(&paths);
    let out = hearken(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let notes: Vec<&str> = text.lines().filter(|l| l.contains("note:")).collect();
    assert_eq!(notes.len(), 2, "{text}");
    assert!(
        notes
            .iter()
            .all(|n| n.contains("4 samples were NaN, infinite or out of range")),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn run_fast(file: &Path) -> Output {
    let source = format!("file:{}", file.display());
    hearken(&["run", "--fast", "--print-events", "--source", &source])
}

#[test]
fn the_daemon_replaces_reports_and_exits_zero() {
    let dir = tmpdir("daemon");
    for rate in [48000, 32000] {
        let bad = dir.join(format!("nan-{rate}.wav"));
        float_wav(&bad, rate, 3.0, &damage(rate));
        let out = run_fast(&bad);
        let err = stderr(&out);
        assert!(out.status.success(), "{rate} Hz: {err}");
        assert!(
            err.contains("4 NaN, infinite or out-of-range samples replaced"),
            "{rate} Hz: {err}"
        );
        assert!(
            err.contains("stopped after 3.0 s of audio"),
            "{rate} Hz: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_daemon_summary_gives_the_real_length_of_a_short_file() {
    // 2.7 s: mn04's frontend pads it to its 10 s window, which the summary reported.
    let dir = tmpdir("short");
    let short = dir.join("short.wav");
    float_wav(&short, 16000, 2.7, &[]);
    let out = run_fast(&short);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped after 2.7 s of audio"), "{err}");
    assert!(!err.contains("replaced"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
