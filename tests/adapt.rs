//! hearken learns its home: the daemon fills the home store from a household's
//! sound, `hearken adapt` teaches the detectors that household's false alarms, and
//! on another hour of the same kinds of sound (other recordings) they raise far
//! fewer, while finding nearly as many held-out events.
//!
//! The household: a subset of `eval-dev`'s ordinary-sound labels, from its
//! held-out recordings only (training never heard them), dealt by recording into
//! two halves: one hour made from each (clips laid in layers at varying levels).
//! The events: `eval-dev`'s held-out safety events mixed into the second half.
//!
//! The target — at least 5× fewer false alarms on the unseen hour with
//! held-out recall lower by at most 0.05 — is not reached yet (docs/detection.md,
//! "Learning the home", has the figures this test prints). What it asserts: the
//! store counts the hour, adapting cuts the false alarms of the unseen hour, and
//! held-out recall stays within 0.15 of the shipped detectors'.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{models_dir, shared, succeeds};
use hearken::eval::dataset::{fnv1a, Split};
use hearken::eval::metrics::{Detection, Matching, TruthEvent};
use hearken::eval::mix::{self, MixSpec, Signal};
use hearken::eval::run::{load_clips, write_wav};
use rand::SeedableRng;
use serde_json::Value;

/// The household's kinds of sound.
const HOUSEHOLD: &[&str] = &[
    "baby_cry",
    "laughter",
    "dog_bark",
    "door_slam",
    "door_knock",
    "phone_ring",
    "cough",
    "speech",
    "keyboard_typing",
];
/// The groups the detectors are trained for.
const GROUPS: &str = "scream,glass,gunshot,smoke_alarm,siren";
const RATE: u32 = 32_000;

fn hearken(args: &[&str]) -> Output {
    succeeds(
        Command::new(env!("CARGO_BIN_EXE_hearken"))
            .args(args)
            .env("HEARKEN_SHARED", shared()),
        &format!("hearken {args:?}"),
    )
}

/// Start events of a `--print-events` run, merged with their ends.
fn detections(out: &Output) -> Vec<Detection> {
    let mut by_id: HashMap<String, Detection> = HashMap::new();
    let mut order = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let id = e["id"].as_str().unwrap_or_default().to_string();
        let start = e["start_s"].as_f64().unwrap_or(0.0);
        if e["state"] == "start" {
            order.push(id.clone());
            by_id.insert(
                id,
                Detection {
                    group: e["group"].as_str().unwrap().to_string(),
                    start_s: start,
                    detected_s: e["detected_s"].as_f64().unwrap_or(start),
                    end_s: e["end_s"].as_f64().unwrap_or(start + 1.0),
                    peak_score: 0.0,
                },
            );
        } else if let Some(d) = by_id.get_mut(&id) {
            d.end_s = e["end_s"].as_f64().unwrap_or(d.end_s);
        }
    }
    order.into_iter().filter_map(|i| by_id.remove(&i)).collect()
}

fn run(wav: &Path, cfg: &Path, state: &Path) -> Vec<Detection> {
    let src = format!("file:{}", wav.display());
    detections(&hearken(&[
        "run",
        "--fast",
        "--print-events",
        "--source",
        &src,
        "--config",
        cfg.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]))
}

/// Safety events found, per group: (found, events).
fn recall(truth: &[TruthEvent], dets: &[Detection]) -> HashMap<String, (usize, usize)> {
    let mut out: HashMap<String, (usize, usize)> = HashMap::new();
    for t in truth {
        let e = out.entry(t.group.clone()).or_default();
        e.1 += 1;
        if dets
            .iter()
            .any(|d| d.group == t.group && Matching::default().overlaps(t, d))
        {
            e.0 += 1;
        }
    }
    out
}

/// False alarms of the trained groups (the household's dog barks are real dog
/// barks: the other groups are not counted).
fn count_by_group(dets: &[Detection]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for d in dets
        .iter()
        .filter(|d| GROUPS.split(',').any(|g| g == d.group))
    {
        *out.entry(d.group.clone()).or_default() += 1;
    }
    out
}

/// A benchmark (about 9 minutes in release, 6 of them training; far longer in
/// CI's debug build): `cargo test --release --test adapt -- --ignored --nocapture`.
/// CI covers its parts: the store filled by the daemon (tests/daemon.rs), the
/// store, validation set, correction and overlay (unit tests).
#[test]
#[ignore = "a benchmark: cargo test --release --test adapt -- --ignored --nocapture"]
fn a_detector_adapted_to_one_hour_of_a_household_raises_5x_fewer_false_alarms_on_another() {
    let tmp = std::env::temp_dir().join(format!("hearken-adapt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let hours: f64 = std::env::var("HEARKEN_ADAPT_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(1.0);

    // Detectors as `hearken train` makes them (small and seeded), with their
    // validation set.
    let det = match std::env::var_os("HEARKEN_ADAPT_DETECTORS") {
        Some(d) => PathBuf::from(d),
        None => {
            let det = tmp.join("detectors");
            hearken(&[
                "train",
                "--json",
                "--method",
                "heads",
                "--groups",
                GROUPS,
                "--seed",
                "1",
                "--snr",
                "9,0",
                "--max-per-group",
                "30",
                "--hidden",
                "0",
                // The recipe docs/detection.md's figures were measured with.
                "--no-candidates",
                "--out",
                det.to_str().unwrap(),
            ]);
            det
        }
    };
    assert!(
        det.join("validation.hkv").is_file(),
        "train leaves its validation set"
    );

    // The household, dealt into two halves by recording.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let groups: Vec<&str> = GROUPS.split(',').collect();
    let (events, backgrounds) = load_clips(
        &shared().join("eval-dev"),
        Split::Test,
        &groups,
        true,
        RATE,
        None,
        &mut rng,
    )
    .unwrap();
    let kinds: Vec<&Signal> = backgrounds
        .iter()
        .filter(|b| HOUSEHOLD.contains(&b.label.as_str()))
        .collect();
    // Per kind, recordings alternate between the halves (by a stable hash order).
    let mut halves: [Vec<&Signal>; 2] = [Vec::new(), Vec::new()];
    for kind in HOUSEHOLD {
        let mut recs: Vec<&str> = kinds
            .iter()
            .filter(|s| s.label == *kind)
            .map(|s| s.recording.as_str())
            .collect();
        recs.sort_by_key(|r| fnv1a(r));
        recs.dedup();
        for (i, r) in recs.iter().enumerate() {
            halves[i % 2].extend(kinds.iter().filter(|s| s.recording == *r));
        }
    }
    assert!(
        halves.iter().all(|h| h.len() >= 10),
        "{:?}",
        halves.map(|h| h.len())
    );
    let spec = |seed| MixSpec {
        seed,
        rate: RATE,
        ..MixSpec::default()
    };
    let hour = |half: &[&Signal], seed, name: &str| {
        let m = mix::background(half, hours * 3600.0, 2, &spec(seed));
        let p = tmp.join(name);
        write_wav(&p, &m.samples, RATE, 1).unwrap();
        p
    };
    let learn_wav = hour(&halves[0], 11, "household-1.wav");
    let test_wav = hour(&halves[1], 12, "household-2.wav");
    // The same recordings as the learning hour, laid out anew: what a home whose
    // baby and television stay the same hears the next day.
    let again_wav = hour(&halves[0], 14, "household-1-again.wav");
    let event_refs: Vec<&Signal> = events.iter().collect();
    let with_events = mix::build(
        &event_refs,
        &halves[1],
        &MixSpec {
            snrs_db: vec![9.0, 3.0],
            slot_s: 20.0,
            lead_s: 5.0,
            ..spec(13)
        },
    );
    let events_wav = tmp.join("events.wav");
    write_wav(&events_wav, &with_events.samples, RATE, 1).unwrap();
    let truth: Vec<TruthEvent> = with_events.truth.iter().map(TruthEvent::from).collect();

    let cfg = |store: bool| {
        let p = tmp.join(format!("hearken-{store}.toml"));
        std::fs::write(
            &p,
            format!(
                "[model]\nwindow_s = 2.0\nhop_s = 0.5\n[detection]\ndetectors = \"{}\"\n[learning]\nstore = {store}\n",
                det.display()
            ),
        )
        .unwrap();
        p
    };
    let (learning, measuring) = (cfg(true), cfg(false));
    let home = tmp.join("state");
    let shipped = tmp.join("shipped-state");

    // One hour of the household through the daemon fills the store.
    let learnt = run(&learn_wav, &learning, &home);
    assert!(home.join("home").is_dir());
    let before_learn = count_by_group(&learnt);

    let out = hearken(&[
        "adapt",
        "--json",
        "--config",
        learning.to_str().unwrap(),
        "--state-dir",
        home.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        (report["observed_h"].as_f64().unwrap() - hours).abs() < 0.05 * hours,
        "the store counted the hour: {}",
        report["observed_h"]
    );

    // The other hour, and the events, with the shipped and the adapted detectors.
    let fa_before = count_by_group(&run(&test_wav, &measuring, &shipped));
    let fa_after = count_by_group(&run(&test_wav, &measuring, &home));
    let again_before = count_by_group(&run(&again_wav, &measuring, &shipped));
    let again_after = count_by_group(&run(&again_wav, &measuring, &home));
    let r_before = recall(&truth, &run(&events_wav, &measuring, &shipped));
    let r_after = recall(&truth, &run(&events_wav, &measuring, &home));
    eprintln!("false alarms on the learning hour: {before_learn:?}");
    eprintln!("false alarms on the unseen hour: shipped {fa_before:?}, adapted {fa_after:?}");
    eprintln!(
        "false alarms on the learning hour's recordings laid anew: shipped {again_before:?}, adapted {again_after:?}"
    );
    eprintln!("held-out events (found, of): shipped {r_before:?}, adapted {r_after:?}");
    let total = |m: &HashMap<String, usize>| m.values().sum::<usize>();
    let found = |m: &HashMap<String, (usize, usize)>| {
        let (f, n) = m.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
        f as f64 / n.max(1) as f64
    };
    assert!(
        total(&fa_before) >= 5,
        "the household must trouble the shipped detectors for the test to mean anything: {fa_before:?}"
    );
    assert!(
        total(&fa_after) < total(&fa_before) && total(&again_after) < total(&again_before),
        "adapting cuts false alarms: unseen hour {fa_before:?} → {fa_after:?}, the learning hour's recordings {again_before:?} → {again_after:?}"
    );
    assert!(
        found(&r_after) >= found(&r_before) - 0.15,
        "event recall {} → {}",
        found(&r_before),
        found(&r_after)
    );

    // Reset goes back to the shipped detectors.
    hearken(&[
        "adapt",
        "--reset",
        "--config",
        learning.to_str().unwrap(),
        "--state-dir",
        home.to_str().unwrap(),
    ]);
    assert!(!home.join("adapted").exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// What the weekly timer runs (`hearken adapt --scheduled`) does nothing, says
/// why and succeeds where there is nothing to do; the same without `--scheduled`
/// is an error a user running it by hand should see.
#[test]
fn the_weekly_run_does_nothing_and_says_why_when_there_is_nothing_to_do() {
    let tmp = std::env::temp_dir().join(format!("hearken-adapt-scheduled-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let state = tmp.join("state");
    let cases = [
        (
            "[learning]\nweekly_adapt = false\n",
            "weekly adapting is off ([learning] weekly_adapt = false",
        ),
        (
            "[learning]\nstore = false\n",
            "the home store is off ([learning] store = false",
        ),
        (
            "[detection]\ndetectors = \"off\"\n",
            "there are no trained detectors to adapt; nothing changed",
        ),
    ];
    for (i, (toml, says)) in cases.iter().enumerate() {
        let cfg = tmp.join(format!("c{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let adapt = |scheduled: bool| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
            c.arg("adapt")
                .arg("--config")
                .arg(&cfg)
                .arg("--state-dir")
                .arg(&state)
                .env("HEARKEN_SHARED", shared())
                .env("HEARKEN_MODELS", models_dir());
            if scheduled {
                c.arg("--scheduled");
            }
            c.output().unwrap()
        };
        let out = adapt(true);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(says),
            "{toml:?}: want success and {says:?}, got {:?}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !state.join("adapted").exists(),
            "{toml:?}: nothing may be written"
        );
        if toml.contains("detectors") {
            assert!(
                !adapt(false).status.success(),
                "by hand, adapting with no detectors is an error"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
