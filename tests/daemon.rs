//! `hearken run` end to end on real recordings: file (paced and fast) and stdin
//! sources, the detector's events, signals and errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{audio, models_dir, succeeds};
use serde_json::Value;

/// Onset of the first shot in gunshots.wav (first 10 ms block above -30 dBFS).
const FIRST_SHOT_S: f64 = 0.58;

fn hearken() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
    c.env("HEARKEN_MODELS", models_dir());
    c
}

fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn run_file(file: &str, model: &str, fast: bool) -> (Output, Vec<Value>) {
    let mut c = hearken();
    c.args(["run", "--print-events", "--model", model, "--source"])
        .arg(format!("file:{}", audio(file).display()));
    if fast {
        c.arg("--fast");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out);
    (out, ev)
}

fn starts(ev: &[Value]) -> Vec<&Value> {
    ev.iter().filter(|e| e["state"] == "start").collect()
}

#[test]
fn gunshots_in_real_time_give_one_timely_gunshot_event() {
    let t = Instant::now();
    let (_, ev) = run_file("gunshots.wav", "efficientat-mn04", false);
    // Real-time pacing: the 10.5 s file takes about that long.
    assert!(t.elapsed() >= Duration::from_secs(9), "{:?}", t.elapsed());
    let s = starts(&ev);
    let gun: Vec<_> = s.iter().filter(|e| e["group"] == "gunshot").collect();
    assert_eq!(gun.len(), 1, "{ev:#?}");
    let start = gun[0]["start_s"].as_f64().unwrap();
    assert!(
        (start - FIRST_SHOT_S).abs() <= 1.5,
        "event starts at {start} s, first shot at {FIRST_SHOT_S} s"
    );
    // The end message repeats the id and carries the end.
    let end: Vec<_> = ev
        .iter()
        .filter(|e| e["state"] == "end" && e["id"] == gun[0]["id"])
        .collect();
    assert_eq!(end.len(), 1);
    assert!(end[0]["end_s"].as_f64().unwrap() > start);
    assert!(end[0]["ended_at"].is_string());
    let e = gun[0];
    for k in [
        "id",
        "started_at",
        "peak_score",
        "labels",
        "dbfs",
        "node",
        "model",
    ] {
        assert!(!e[k].is_null(), "missing {k}");
    }
    assert_eq!(e["model"], "efficientat-mn04");
    assert!(e["labels"][0]["label_id"]
        .as_str()
        .unwrap()
        .starts_with('/'));
}

#[test]
fn gunshots_fire_with_yamnet_too() {
    let (_, ev) = run_file("gunshots.wav", "yamnet", true);
    let gun: Vec<_> = starts(&ev)
        .into_iter()
        .filter(|e| e["group"] == "gunshot")
        .collect();
    assert_eq!(gun.len(), 1, "{ev:#?}");
    assert!((gun[0]["start_s"].as_f64().unwrap() - FIRST_SHOT_S).abs() <= 1.5);
}

#[test]
fn ordinary_sounds_raise_no_safety_event() {
    for model in ["efficientat-mn04", "yamnet"] {
        for f in [
            "speech_sample1.wav",
            "speech_sample2.flac",
            "typing.wav",
            "rain.wav",
            "birds1.wav",
            "applause.wav",
            "car-horn.wav",
        ] {
            let (_, ev) = run_file(f, model, true);
            let safety: Vec<_> = ev.iter().filter(|e| e["safety"] == true).collect();
            assert!(safety.is_empty(), "{model} {f}: {safety:#?}");
        }
    }
}

/// Decodes a recording to mono s16le bytes.
fn s16le(name: &str) -> (u32, Vec<u8>) {
    let mut dec = hearken::audio::FileDecoder::open(&audio(name)).unwrap();
    let rate = dec.info().sample_rate;
    let mut mono = Vec::new();
    while dec.next_chunk(&mut mono).unwrap() {}
    let bytes = mono
        .iter()
        .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    (rate, bytes)
}

#[test]
fn stdin_gives_the_same_events_as_file() {
    let (_, file_ev) = run_file("gunshots.wav", "efficientat-mn04", true);
    let (rate, bytes) = s16le("gunshots.wav");
    let (child, mut stdin) =
        common::spawn_on_stdin(hearken().args(["run", "--print-events"]), rate);
    let writer = std::thread::spawn(move || {
        stdin.write_all(&bytes).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdin_ev = events(&out);
    let key = |ev: &[Value]| -> Vec<(String, String, f64, Option<f64>)> {
        ev.iter()
            .map(|e| {
                (
                    e["group"].as_str().unwrap().to_string(),
                    e["state"].as_str().unwrap().to_string(),
                    e["start_s"].as_f64().unwrap(),
                    e["end_s"].as_f64(),
                )
            })
            .collect()
    };
    assert!(!file_ev.is_empty());
    assert_eq!(key(&stdin_ev), key(&file_ev));
    // s16 quantisation moves scores only in the third decimal.
    for (a, b) in stdin_ev.iter().zip(&file_ev) {
        let (a, b) = (
            a["peak_score"].as_f64().unwrap(),
            b["peak_score"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 0.02, "peak {a} vs {b}");
    }
}

#[test]
fn sigint_drains_and_exits_zero() {
    let child = hearken()
        .args(["run", "--print-events", "--source"])
        .arg(format!("file:{}", audio("gunshots.wav").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped after"), "{err}");
    // An event opened before the signal is closed, not lost.
    let ev = events(&out);
    let opened = ev.iter().filter(|e| e["state"] == "start").count();
    let closed = ev.iter().filter(|e| e["state"] == "end").count();
    assert_eq!(opened, closed, "{ev:#?}");
}

#[test]
fn a_missing_device_or_bad_source_is_a_clear_error() {
    let out = hearken()
        .args(["run", "--source", "device:no-such-microphone"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-microphone") && err.contains("--source"),
        "{err}"
    );
    let out = hearken()
        .args(["run", "--source", "tape:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--source"));
    let out = hearken()
        .args(["run", "--source", "file:/nonexistent/x.wav"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.wav"));
}

/// The home store fills from any source: every window counted, the ones near an
/// alarm kept with their events, nothing of it audio, and it survives the next run.
#[test]
fn a_run_fills_the_home_store_and_the_next_run_adds_to_it() {
    let state = std::env::temp_dir().join(format!("hearken-home-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let run = || {
        events(&succeeds(
            hearken()
                .args(["run", "--fast", "--print-events", "--source"])
                .arg(format!("file:{}", audio("gunshots.wav").display()))
                .arg("--state-dir")
                .arg(&state),
            "hearken run with a state dir",
        ))
    };
    let first = run();
    let c = hearken::store::read(&state.join("home")).unwrap();
    let wav = hound::WavReader::open(audio("gunshots.wav")).unwrap();
    let duration = wav.duration() as f64 / wav.spec().sample_rate as f64;
    // Windows are counted up to the model's minimum length (10 s for mn04).
    assert!(
        c.observed_s >= duration - 1.0 && c.observed_s <= duration.max(10.0) + 1.0,
        "{} s counted for {duration} s",
        c.observed_s
    );
    assert!(!c.windows.is_empty(), "gunshots come near an alarm");
    assert!(c
        .windows
        .iter()
        .all(|w| w.classes.len() == 527 && w.embedding.len() == 384));
    let starts = first.iter().filter(|e| e["state"] == "start").count();
    assert_eq!(c.events.len(), starts, "every event is in the store");
    // With its end, also one the end of the file closed.
    assert!(
        c.events
            .iter()
            .all(|e| e.end_ms.is_some_and(|end| end >= e.start_ms)),
        "{:?}",
        c.events
    );
    assert!(c.windows.iter().any(|w| w.views.iter().any(|v| v.active)));
    // Nothing in the folder is audio: only the store's segments.
    for f in std::fs::read_dir(state.join("home")).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(p.extension().and_then(|e| e.to_str()), Some("hks"), "{p:?}");
    }
    run();
    let again = hearken::store::read(&state.join("home")).unwrap();
    assert_eq!(again.files, 2, "each run adds its own segment");
    assert!((again.observed_s - 2.0 * c.observed_s).abs() < 1.0);
    let _ = std::fs::remove_dir_all(&state);
}

/// Model calls made and skipped, from `hearken run`'s last line.
fn calls(out: &Output) -> (u64, u64) {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("stopped after"))
        .unwrap_or_else(|| panic!("no summary line in {err}"));
    let count = |what: &str| -> u64 {
        let before = line.split(what).next().unwrap();
        before
            .rsplit(' ')
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (count(" model calls"), count(" skipped while quiet"))
}

/// Quiet, steady windows are left unscored (about every second one) without
/// changing what is found: on a stream of typing, gunshots, rain and typing again (2 s
/// windows every 0.5 s, the groups on raw class scores), the events are the same
/// with the skipping on as off, to the stream time, score and labels, for fewer
/// model calls.
#[test]
fn skipping_quiet_windows_saves_model_calls_and_finds_the_same_events() {
    let rate = 32_000;
    let mut x = Vec::new();
    for f in ["typing.wav", "gunshots.wav", "rain.wav", "typing.wav"] {
        x.extend(hearken::eval::run::decode_at(&audio(f), rate).unwrap());
    }
    let dir = std::env::temp_dir().join(format!("hearken-skip-quiet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("stream.wav");
    hearken::eval::run::write_wav(&wav, &x, rate, 1).unwrap();
    let run = |skip: bool| {
        let cfg = dir.join(format!("skip-{skip}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[model]\nwindow_s = 2.0\nhop_s = 0.5\nskip_quiet_windows = {skip}\n[detection]\ndetectors = \"off\"\n"
            ),
        )
        .unwrap();
        let out = succeeds(
            hearken()
                .args(["run", "--print-events", "--fast", "--config"])
                .arg(&cfg)
                .arg("--state-dir")
                .arg(dir.join(format!("state-{skip}")))
                .arg("--source")
                .arg(format!("file:{}", wav.display())),
            "hearken run",
        );
        let seen: Vec<String> = events(&out)
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} {} {} {} {}",
                    e["group"],
                    e["state"],
                    e["start_s"],
                    e["end_s"],
                    e["detected_s"],
                    e["peak_score"],
                    e["labels"]
                )
            })
            .collect();
        (seen, calls(&out))
    };
    let (with, (calls_with, skipped)) = run(true);
    let (without, (calls_without, none)) = run(false);
    eprintln!(
        "skipping: {calls_with} model calls and {skipped} skipped; without: {calls_without} calls; {} event messages",
        with.len()
    );
    assert!(
        with.iter().any(|e| e.starts_with("\"gunshot\" \"start\"")),
        "the gunshots are found: {with:?}"
    );
    assert_eq!(with, without, "the same events with and without skipping");
    assert_eq!(none, 0);
    assert!(
        skipped > 0 && calls_with + skipped == calls_without,
        "{calls_with} calls and {skipped} skipped, against {calls_without} calls"
    );
    // Only steady sound is skipped: the rain (a quarter of the stream), about
    // every second window of it; typing's keystrokes stand out of their windows.
    assert!(
        skipped * 10 >= calls_without,
        "{skipped} of {calls_without} windows skipped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
