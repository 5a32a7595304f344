//! `hearken enroll`: a household's own sound learnt from a few takes.
//!
//! The device: the beeping alarm of one Edge Impulse project
//! (`alarm_beep__tinyalert__*` in `eval-dev`, seven takes of one device). The
//! small tests enrol a new group from three of its takes, as files and from a
//! "microphone" (raw audio on stdin), against a handful of home sounds, and check
//! that the daemon then raises that group on a fourth take. The benchmark
//! (`--ignored`) measures what the issue asks: enrolling `smoke_alarm` with three
//! takes of a device training never heard, then finding the device's other takes
//! in mixtures with home sounds, against a detector trained without it. The
//! issue's target (0.9 of them at <= 1 false alarm per hour) is not reached.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{labelled_subset, models_dir, shared, succeeds};
use serde_json::Value;

/// The device's takes, in `eval-dev`, in a fixed order: the first three are
/// enrolled, the rest held out.
fn device_takes() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(shared().join("eval-dev/clips"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("alarm_beep__tinyalert__")
        })
        .collect();
    v.sort();
    assert_eq!(v.len(), 7, "seven takes of the device in eval-dev");
    // Enrol the three longest-lived names first (de9a, klo8n, kcu8t); hold out
    // the rest, long and short.
    let order = [
        "6gnkde9a", "6gnklo8n", "6gnkcu8t", "6gnkqj4g", "6gnks14a", "6gnktai4", "6gnkjndj",
    ];
    order
        .iter()
        .map(|k| {
            v.iter()
                .find(|p| p.to_string_lossy().contains(k))
                .unwrap()
                .clone()
        })
        .collect()
}

fn hearken() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir())
        .env("HEARKEN_SHARED", shared())
        .env_remove("RUST_LOG");
    c
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-enroll-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A few home sounds to mix the takes into (the small tests).
fn home_sounds(tag: &str) -> PathBuf {
    labelled_subset(
        tag,
        &[
            ("speech", 3),
            ("dog_bark", 2),
            ("door_knock", 2),
            ("keyboard_typing", 2),
            ("laughter", 2),
        ],
    )
}

/// `clip` with quiet room noise around it (2 s before, 8 s after) as a mono WAV.
fn padded(clip: &Path, out: &Path) -> PathBuf {
    let x = hearken::eval::run::decode_at(clip, 32_000).unwrap();
    let mut y: Vec<f32> = (0..64_000)
        .map(|i| 1e-4 * ((i as u64 * 7919 % 200) as f32 - 100.0) / 100.0)
        .collect();
    y.extend(&x);
    y.extend((0..256_000).map(|i| 1e-4 * ((i as u64 * 104_729 % 200) as f32 - 100.0) / 100.0));
    hearken::eval::run::write_wav(out, &y, 32_000, 1).unwrap();
    out.to_path_buf()
}

/// Runs the daemon on `file` with the config and state dir; its output.
fn run_daemon(config: &Path, state: &Path, file: &Path) -> Output {
    succeeds(
        hearken()
            .args(["run", "--fast", "--print-events", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .arg("--source")
            .arg(format!("file:{}", file.display())),
        "hearken run with the enrolled group",
    )
}

fn starts_of(out: &Output, group: &str) -> usize {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["group"] == group && e["state"] == "start")
        .count()
}

/// `hearken enroll my_beep` as the small tests run it: few placements at one
/// ratio, the given home sounds, config and state dir; the takes to be added.
fn enroll_my_beep(data: &Path, config: &Path, state: &Path) -> Command {
    let mut c = hearken();
    c.args([
        "enroll",
        "my_beep",
        "--json",
        "--snr",
        "6",
        "--placements",
        "6",
    ])
    .arg("--data")
    .arg(data)
    .arg("--config")
    .arg(config)
    .arg("--state-dir")
    .arg(state);
    c
}

/// Writes the detector `from` to `to` with its head silenced (zero weights, a
/// bias of −40): what is left is its tone template. Returns what was written.
fn head_silenced(from: &Path, to: &Path) -> Value {
    let mut det: Value = serde_json::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
    for w in det["weights"].as_array_mut().unwrap() {
        *w = 0.0.into();
    }
    det["bias"] = (-40.0).into();
    std::fs::write(to, det.to_string()).unwrap();
    det
}

/// The checks both small tests make after enrolling `my_beep`.
fn check_enrolled(dir: &Path, config: &Path, state: &Path, report: &Value) {
    assert_eq!(report["group"], "my_beep");
    assert_eq!(report["new_group"], true);
    let labels: Vec<&str> = report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"Smoke detector, smoke alarm") || labels.contains(&"Beep, bleep"),
        "{labels:?}"
    );
    assert!(report["recall"].as_f64().unwrap() > 0.0, "{report}");
    let detector = state.join("enrolled/my_beep/my_beep.json");
    assert_eq!(Path::new(report["detector"].as_str().unwrap()), detector);
    assert!(detector.is_file() && state.join("enrolled/my_beep/validation.hkv").is_file());
    // The group is in the config file now, and the file is still valid.
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("[detection.groups.my_beep]"), "{text}");
    succeeds(
        hearken().arg("check-config").arg(config),
        "check-config on the config enrol wrote",
    );
    // The daemon runs it: a held-out take of the device raises the new group.
    let held_out = padded(&device_takes()[3], &dir.join("held-out.wav"));
    let out = run_daemon(config, state, &held_out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group my_beep: trained detector"), "{err}");
    assert_eq!(starts_of(&out, "my_beep"), 1, "{err}");
}

/// Three takes given as files: a new group, its labels chosen from what the
/// takes sound like, its detector trained and run by the daemon.
#[test]
fn a_new_group_enrolled_from_three_files_fires_on_a_fourth_take() {
    let dir = tmp("files");
    let data = home_sounds("enroll-files-data");
    let config = dir.join("hearken.toml");
    std::fs::write(&config, "# my home\n[node]\nroom = \"hall\"\n").unwrap();
    let state = dir.join("state");
    let takes = device_takes();
    let out = succeeds(
        enroll_my_beep(&data, &config, &state)
            .arg("--file")
            .args(&takes[..3]),
        "hearken enroll --file",
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["takes"].as_array().unwrap().len(), 3);
    check_enrolled(&dir, &config, &state, &report);
    // Files the user gave are never deleted.
    assert!(takes[..3].iter().all(|t| t.is_file()));

    // The tone template alone: with the head silenced, the daemon still hears a
    // held-out take under speech 3 dB louder than the beep; without the template
    // it hears nothing.
    let tone = &report["tone"];
    assert_eq!(tone["bands"].as_array().map(Vec::len), Some(2), "{report}");
    assert!(tone["recall"].as_f64().unwrap() > 0.5, "{report}");
    let file = state.join("enrolled/my_beep/my_beep.json");
    let mut det = head_silenced(&file, &file);
    let speech =
        hearken::eval::run::decode_at(&common::audio("speech_sample1.wav"), 32_000).unwrap();
    let beep = hearken::eval::run::decode_at(&takes[3], 32_000).unwrap();
    let power = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let (speech_p, beep_p) = (power(&speech), power(&beep));
    let gain = (speech_p / beep_p * 10f64.powf(-3.0 / 10.0)).sqrt() as f32;
    // The speech over and over, 6 s; the beep from 2 s.
    let mut mixed: Vec<f32> = (0..192_000).map(|i| speech[i % speech.len()]).collect();
    for (i, v) in beep.iter().enumerate() {
        mixed[64_000 + i] += gain * v;
    }
    let under_speech = dir.join("under-speech.wav");
    hearken::eval::run::write_wav(&under_speech, &mixed, 32_000, 1).unwrap();
    let out = run_daemon(&config, &state, &under_speech);
    assert_eq!(
        starts_of(&out, "my_beep"),
        1,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    det.as_object_mut().unwrap().remove("tone");
    std::fs::write(&file, det.to_string()).unwrap();
    let out = run_daemon(&config, &state, &under_speech);
    assert_eq!(
        starts_of(&out, "my_beep"),
        0,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
}

/// Takes recorded with prompts from a source (raw audio on stdin standing in for
/// the microphone): each take checked, then deleted after training.
#[test]
fn takes_recorded_with_prompts_are_trained_on_and_then_deleted() {
    let dir = tmp("mic");
    let data = home_sounds("enroll-mic-data");
    let config = dir.join("hearken.toml");
    std::fs::write(&config, "").unwrap();
    let state = dir.join("state");
    // The device beeps every 3 s in a quiet room.
    let rate = 16_000u32;
    let beep = hearken::eval::run::decode_at(&device_takes()[0], rate).unwrap();
    let mut period: Vec<f32> = (0..rate as usize / 2)
        .map(|i| 2e-4 * (((i * 7919) % 200) as f32 / 100.0 - 1.0))
        .collect();
    period.extend(&beep);
    while period.len() < 3 * rate as usize {
        let i = period.len();
        period.push(2e-4 * (((i * 104_729) % 200) as f32 / 100.0 - 1.0));
    }
    let bytes: Vec<u8> = period
        .iter()
        .flat_map(|v| ((v * 32767.0) as i16).to_le_bytes())
        .collect();
    let (child, mut stdin) = common::spawn_on_stdin(
        enroll_my_beep(&data, &config, &state).args(["--takes", "3", "--seconds", "4"]),
        rate,
    );
    // Paced like a device, until hearken stops reading.
    let feeder = std::thread::spawn(move || {
        let step = rate as usize / 10;
        let mut i = 0usize;
        loop {
            let a = (i * step * 2) % bytes.len();
            let chunk = &bytes[a..(a + step * 2).min(bytes.len())];
            if stdin.write_all(chunk).is_err() {
                break;
            }
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let _ = feeder.join();
    for k in 1..=3 {
        assert!(
            err.contains(&format!("Take {k} of 3: make the sound now")),
            "{err}"
        );
    }
    assert!(err.contains("dBFS"), "the level is shown: {err}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["takes"].as_array().unwrap().len(), 3);
    check_enrolled(&dir, &config, &state, &report);
    // No audio is left behind.
    assert!(!state.join("enroll-takes/my_beep").exists());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
}

/// What enrolling refuses, before any training: each with the reason.
#[test]
fn bad_takes_and_a_new_group_without_a_config_are_refused() {
    let dir = tmp("refused");
    let takes = device_takes();
    let fails = |args: &[&str], files: &[PathBuf], what: &str| {
        let out = hearken()
            .arg("enroll")
            .args(args)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--file")
            .args(files)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(what), "{args:?}: {err}");
    };
    fails(&["smoke_alarm"], &takes[..2], "3 to 10 examples");
    fails(&["Bad Name"], &takes[..3], "not a group name");
    fails(&["my_beep"], &takes[..3], "pass --config");
    let silent = dir.join("silent.wav");
    hearken::eval::run::write_wav(&silent, &vec![0.0; 32_000], 32_000, 1).unwrap();
    let mut with_silence = takes[..2].to_vec();
    with_silence.push(silent.clone());
    fails(&["smoke_alarm"], &with_silence, "silent.wav: too quiet");
    let broken = dir.join("broken.wav");
    std::fs::write(&broken, b"RIFF....WAVEfmt nonsense").unwrap();
    let mut with_broken = takes[..2].to_vec();
    with_broken.push(broken);
    fails(&["smoke_alarm"], &with_broken, "broken.wav");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a labelled folder: the rows of `eval-dev` that `keep` accepts (file
/// paths made absolute), each `copies(row)` times.
fn eval_dev_rows(dir: &Path, keep: impl Fn(&csv::StringRecord, bool) -> usize) -> PathBuf {
    use hearken::eval::dataset::{is_held_out, recording_id};
    let src = shared().join("eval-dev");
    std::fs::create_dir_all(dir).unwrap();
    let mut r = csv::Reader::from_path(src.join("labels.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (file, repo, path) = (col("file"), col("source_repo"), col("source_path"));
    let mut w = csv::Writer::from_path(dir.join("labels.csv")).unwrap();
    w.write_record(&headers).unwrap();
    for row in r.records() {
        let row = row.unwrap();
        let rec = if row[path].is_empty() {
            format!("file:{}", &row[file])
        } else {
            recording_id(&row[repo], &row[path])
        };
        for _ in 0..keep(&row, is_held_out(&rec)) {
            let mut out: Vec<String> = row.iter().map(String::from).collect();
            out[file] = src.join(&row[file]).display().to_string();
            w.write_record(&out).unwrap();
        }
    }
    w.flush().unwrap();
    dir.to_path_buf()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// smoke_alarm's recall and false alarms per hour in an eval report, at the
/// detector's thresholds and at the sweep's best point with ≤ 1 per hour.
fn smoke(report: &Value) -> (f64, f64, usize, f64, f64) {
    let g = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "smoke_alarm")
        .unwrap();
    let best = report["best_at_1_per_h"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b[0] == "smoke_alarm")
        .map(|b| b[1].clone())
        .unwrap_or(Value::Null);
    (
        g["recall"].as_f64().unwrap(),
        g["false_alarms_per_hour"].as_f64().unwrap(),
        g["events"].as_u64().unwrap() as usize,
        best["recall"].as_f64().unwrap_or(0.0),
        best["false_alarms_per_hour"].as_f64().unwrap_or(f64::NAN),
    )
}

/// The measurement. Training data: `eval-dev`'s training recordings
/// without the device, and `train-extra`. Before: `hearken train` makes a
/// smoke_alarm detector from them (it never heard the device). After:
/// `hearken enroll smoke_alarm` with three of the device's takes and the same
/// data. Both are evaluated (`hearken eval`, 48 kHz stereo mixtures at +9/+3/−3
/// dB, plus an hour of background-only streams) on the device's four other takes,
/// each placed three times, over `eval-dev`'s held-out home sounds.
///
/// `cargo test --release --test enroll -- --ignored --nocapture` (about 10 min).
#[test]
#[ignore]
fn enrolling_an_unseen_smoke_alarm_finds_its_other_alarms() {
    let dir = tmp("bench");
    let device = device_takes();
    let is_device = |row: &csv::StringRecord| row[0].contains("alarm_beep__tinyalert__");
    let train_data = eval_dev_rows(&dir.join("train"), |row, held_out| {
        usize::from(!held_out && !is_device(row))
    });
    let held_out_takes: Vec<String> = device[3..]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let test_data = eval_dev_rows(&dir.join("test"), |row, held_out| {
        let name = row[0].rsplit('/').next().unwrap_or("");
        if held_out_takes.iter().any(|t| t == name) {
            3
        } else {
            let label = &row[3];
            usize::from(
                held_out && !is_device(row) && hearken::eval::dataset::group_of(label).is_none(),
            )
        }
    });
    let extra = shared().join("train-extra");
    let evaluate = |detectors: &Path, tag: &str| {
        let cfg = common::detectors_config(&dir.join(format!("{tag}.toml")), detectors);
        json_of(&succeeds(
            hearken()
                .args([
                    "eval",
                    "--json",
                    "--split",
                    "all",
                    "--background-h",
                    "1",
                    "--data",
                ])
                .arg(&test_data)
                .arg("--config")
                .arg(&cfg)
                .arg("--work-dir")
                .arg(dir.join(format!("eval-{tag}"))),
            &format!("hearken eval ({tag})"),
        ))
    };

    let base = dir.join("base");
    let t = std::time::Instant::now();
    succeeds(
        hearken()
            .args([
                "train",
                "--method",
                "heads",
                "--groups",
                "smoke_alarm",
                "--max-per-group",
                "30",
                "--data",
            ])
            .arg(&train_data)
            .arg("--data")
            .arg(&extra)
            .arg("--out")
            .arg(&base),
        "hearken train without the device",
    );
    eprintln!(
        "trained the detector without the device in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let before = evaluate(&base, "before");

    let state = dir.join("state");
    // The window the detectors above were trained on (the shipped detectors'):
    // enrolling trains on the window the daemon runs.
    let window = dir.join("window.toml");
    std::fs::write(&window, "[model]\nwindow_s = 2.0\nhop_s = 0.5\n").unwrap();
    let t = std::time::Instant::now();
    let enrolled = json_of(&succeeds(
        hearken()
            .args(["enroll", "smoke_alarm", "--json", "--config"])
            .arg(&window)
            .arg("--file")
            .args(&device[..3])
            .arg("--data")
            .arg(&train_data)
            .arg("--data")
            .arg(&extra)
            .arg("--state-dir")
            .arg(&state),
        "hearken enroll smoke_alarm",
    ));
    eprintln!(
        "enrolled in {:.0} s: cross-validated recall {} at {} false alarms/h; tone {}",
        t.elapsed().as_secs_f64(),
        enrolled["recall"],
        enrolled["false_alarms_per_hour"],
        enrolled["tone"]
    );
    let after = evaluate(&state.join("enrolled/smoke_alarm"), "after");
    // What the tone template finds by itself: the enrolled detector with its
    // head silenced.
    let alone = dir.join("tone-alone");
    std::fs::create_dir_all(&alone).unwrap();
    head_silenced(
        &state.join("enrolled/smoke_alarm/smoke_alarm.json"),
        &alone.join("smoke_alarm.json"),
    );
    let tone_alone = evaluate(&alone, "tone-alone");

    for (tag, r) in [
        ("before", &before),
        ("after", &after),
        ("tone alone", &tone_alone),
    ] {
        let of = |key: &str| {
            r[key]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g[0] == "smoke_alarm")
                .map(|g| g[1].to_string())
                .unwrap_or_default()
        };
        eprintln!(
            "{tag}: false alarms over {}; found by ratio {}",
            of("false_alarm_causes"),
            of("found_by_snr")
        );
    }
    let (r0, f0, n, b0, bf0) = smoke(&before);
    let (r1, f1, _, b1, bf1) = smoke(&after);
    eprintln!(
        "held-out alarms of the device: {n} placements over {:.2} h of background",
        after["background_s"].as_f64().unwrap() / 3600.0
    );
    eprintln!("before enrolling: recall {r0:.2} at {f0:.2} false alarms/h (best at <= 1/h: {b0:.2} at {bf0:.2}/h)");
    eprintln!("after enrolling:  recall {r1:.2} at {f1:.2} false alarms/h (best at <= 1/h: {b1:.2} at {bf1:.2}/h)");
    let (r2, f2, _, _, _) = smoke(&tone_alone);
    eprintln!("its tone alone:   recall {r2:.2} at {f2:.2} false alarms/h");
    assert!(n >= 30, "{n} held-out placements");
    // The target (recall >= 0.9 at <= 1 false alarm per hour) is not
    // reached (docs/detection.md, "Enrolling a household's sound"): what holds
    // is that enrolling costs nothing against the detector that never heard the
    // device.
    assert!(
        r1 >= r0 - 0.05 && f1 <= f0 + 1.0,
        "enrolling made it worse: recall {r0:.2} -> {r1:.2}, {f0:.2} -> {f1:.2}/h"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
