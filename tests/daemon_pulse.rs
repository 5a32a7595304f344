//! The whole daemon listening to a "microphone": cpal capture from the ALSA `pulse`
//! device of a private PulseAudio daemon whose null sink `paplay` plays a real
//! gunshot recording into. The event must arrive, in real time.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::pulse::{start_pulse, wait_with_timeout};

#[test]
fn a_gunshot_played_into_the_microphone_raises_an_event() {
    let Some(_pulse) = start_pulse() else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .env("HEARKEN_MODELS", common::models_dir())
        .args(["run", "--print-events", "--source", "device:pulse"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it listens, then give the ALSA pulse plugin time to start.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t = Instant::now();
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let listening = l.contains("listening on");
                log.push(l);
                if listening {
                    break;
                }
            }
            Err(_) if t.elapsed() > Duration::from_secs(60) => panic!("never started: {log:?}"),
            Err(_) => {}
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("hearken exited {st}: {log:?}");
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let played_at = SystemTime::now();
    let clip = hearken::shared_dir().join("audio/gunshots.wav");
    let mut player = Command::new("paplay")
        .arg("--device=hearken_null")
        .arg(&clip)
        .spawn()
        .expect("paplay");
    let st = wait_with_timeout(&mut player, Duration::from_secs(30)).expect("paplay hung");
    assert!(st.success());
    // Let the tail of the clip pass through the windows.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    log.extend(rx.try_iter());
    assert!(out.status.success(), "{log:?}");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let gun: Vec<_> = events
        .iter()
        .filter(|e| e["group"] == "gunshot" && e["state"] == "start")
        .collect();
    assert_eq!(gun.len(), 1, "events: {events:#?}\nlog: {log:?}");
    // The event's wall-clock onset lies near the first shot (0.58 s into the clip),
    // allowing for the sound server's buffering.
    let started: SystemTime =
        humantime::parse_rfc3339(gun[0]["started_at"].as_str().unwrap()).unwrap();
    let shot = played_at + Duration::from_millis(580);
    let diff = match started.duration_since(shot) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    assert!(
        diff.abs() < 2.5,
        "event onset {diff:+.2} s from the first shot"
    );
}

/// Runs hearken on the ALSA `pulse` device and returns it with a channel of its
/// stderr lines, once it listens.
fn listen(
    extra: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearken"))
        .env("HEARKEN_MODELS", common::models_dir())
        .args(["run", "--print-events", "--source", "device:pulse"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    wait_for(&rx, &mut log, "listening on", Duration::from_secs(60));
    (child, rx, log)
}

/// Reads stderr lines until one contains `what`; panics after `limit`.
fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    log: &mut Vec<String>,
    what: &str,
    limit: Duration,
) {
    let t = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let hit = l.contains(what);
                log.push(l);
                if hit {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("hearken ended before {what:?}: {log:#?}")
            }
            Err(_) => {}
        }
        assert!(
            t.elapsed() < limit,
            "no {what:?} within {limit:?}: {log:#?}"
        );
    }
}

#[test]
fn the_microphone_vanishes_and_comes_back_and_detection_resumes() {
    let Some(pulse) = start_pulse() else {
        return;
    };
    let (child, rx, mut log) = listen(&[]);
    std::thread::sleep(Duration::from_secs(2));
    // Unplugged: the sound server goes away with the stream.
    pulse.kill();
    wait_for(&rx, &mut log, "audio device lost", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    // Plugged back in: hearken reopens it by itself.
    pulse.restart();
    wait_for(&rx, &mut log, "audio device back", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let clip = hearken::shared_dir().join("audio/gunshots.wav");
    let mut player = Command::new("paplay")
        .arg("--device=hearken_null")
        .arg(&clip)
        .spawn()
        .expect("paplay");
    let st = wait_with_timeout(&mut player, Duration::from_secs(30)).expect("paplay hung");
    assert!(st.success());
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    log.extend(rx.try_iter());
    assert!(out.status.success(), "{log:#?}");
    let gunshots = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["group"] == "gunshot" && e["state"] == "start")
        .count();
    assert_eq!(gunshots, 1, "log: {log:#?}");
}
