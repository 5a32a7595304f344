//! `hearken run` as a systemd service: readiness, the watchdog and stopping through a
//! real notify socket, on real audio fed through stdin; and where logs go.
//!
//! Timing bounds are generous on purpose: CI is a loaded 2-core machine.

mod common;

use std::time::{Duration, Instant};

use common::service::{s16le, tmp, Daemon, NotifySocket};

#[test]
fn ready_after_audio_flows_watchdog_pings_stop_on_a_capture_stall_and_stopping_at_exit() {
    let dir = tmp("svc-watchdog");
    let mut notify = NotifySocket::bind(&dir);
    let (rate, gunshots) = s16le("gunshots.wav");
    let sock = notify.path.display().to_string();
    // The first audio is written 2 s after the start: READY must wait for it.
    let mut d = Daemon::spawn(
        rate,
        &[],
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "1000000")],
        true,
        Duration::from_secs(2),
    );
    d.feeder().queue(gunshots.clone());
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(120))
        .unwrap_or_else(|| panic!("no READY=1: {}", d.stderr.text()));
    let first_write = d
        .feeder()
        .first_write
        .lock()
        .unwrap()
        .expect("nothing written");
    assert!(ready >= first_write, "READY=1 before any audio was written");
    assert!(
        notify
            .times("WATCHDOG=1", ready - Duration::from_secs(600), ready)
            .is_empty(),
        "watchdog pinged before READY"
    );
    let ready_msg = &notify.got.iter().find(|(t, _)| *t == ready).unwrap().1;
    assert!(
        ready_msg.contains("STATUS=listening on"),
        "READY=1 without a status: {ready_msg:?}"
    );

    // Audio flowing in real time: pings every 0.5 s; at least 4 in 5 s.
    notify.collect(Duration::from_secs(6));
    let now = Instant::now();
    let pings = notify.times("WATCHDOG=1", now - Duration::from_secs(5), now);
    assert!(pings.len() >= 4, "{} pings in 5 s", pings.len());

    // Capture stalls for real (stdin open, nothing written): pings stop.
    d.feeder().pause(true);
    let paused = Instant::now();
    notify.collect(Duration::from_secs(7));
    let late = notify.times(
        "WATCHDOG=1",
        paused + Duration::from_secs(4),
        Instant::now(),
    );
    assert!(late.is_empty(), "{} pings long after the stall", late.len());
    assert!(
        d.stderr
            .wait_for(0, Duration::from_secs(5), |l| l.contains("capture stage")
                && l.contains("no progress"))
            .is_some(),
        "no stall report naming capture: {}",
        d.stderr.text()
    );

    // Audio again (systemd would have restarted us; we recover anyway).
    d.feeder().pause(false);
    let resumed = Instant::now();
    notify.collect(Duration::from_secs(5));
    let again = notify.times("WATCHDOG=1", resumed, Instant::now());
    assert!(
        !again.is_empty(),
        "pings did not resume: {}",
        d.stderr.text()
    );

    // End of stream: a clean exit that says STOPPING=1 first.
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    notify.collect(Duration::from_millis(500));
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(1))
            .is_some(),
        "no STOPPING=1: {:?}",
        notify.got
    );
    assert!(d.stderr.text().contains("stopped after"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_watchdog_usec_there_are_no_pings_but_ready_and_stopping() {
    let dir = tmp("svc-nowatchdog");
    let mut notify = NotifySocket::bind(&dir);
    let (rate, gunshots) = s16le("gunshots.wav");
    let sock = notify.path.display().to_string();
    let mut d = Daemon::spawn(
        rate,
        &[],
        &[("NOTIFY_SOCKET", &sock)],
        false,
        Duration::ZERO,
    );
    d.feeder().queue(gunshots[..rate as usize * 2 * 3].to_vec());
    assert!(notify
        .wait_for("READY=1", Duration::from_secs(120))
        .is_some());
    notify.collect(Duration::from_secs(3));
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    notify.collect(Duration::from_millis(500));
    assert!(notify
        .wait_for("STOPPING=1", Duration::from_secs(1))
        .is_some());
    assert!(
        notify.got.iter().all(|(_, m)| !m.contains("WATCHDOG=1")),
        "{:?}",
        notify.got
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watchdog_pid_of_another_process_disables_the_pings() {
    let dir = tmp("svc-otherpid");
    let mut notify = NotifySocket::bind(&dir);
    let (rate, gunshots) = s16le("gunshots.wav");
    let sock = notify.path.display().to_string();
    let mut d = Daemon::spawn(
        rate,
        &[],
        &[
            ("NOTIFY_SOCKET", &sock),
            ("WATCHDOG_USEC", "1000000"),
            ("WATCHDOG_PID", "1"),
        ],
        true,
        Duration::ZERO,
    );
    d.feeder().queue(gunshots[..rate as usize * 2 * 3].to_vec());
    assert!(notify
        .wait_for("READY=1", Duration::from_secs(120))
        .is_some());
    notify.collect(Duration::from_secs(3));
    let st = d.finish(Duration::from_secs(60));
    assert!(st.success(), "{}", d.stderr.text());
    assert!(notify.got.iter().all(|(_, m)| !m.contains("WATCHDOG=1")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `JOURNAL_STREAM` naming stderr, logs go to journald, or (no journald here)
/// stay on stderr with a note; with a `JOURNAL_STREAM` that names another file (a
/// child whose stderr was redirected), they stay on stderr.
#[test]
fn journal_stream_detection_end_to_end() {
    use std::os::unix::fs::MetadataExt;
    let dir = tmp("svc-journal");
    let err_path = dir.join("stderr");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let meta = err_file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let run = |journal_stream: &str, err: std::fs::File| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", common::models_dir())
            .env("JOURNAL_STREAM", journal_stream)
            .env_remove("NOTIFY_SOCKET")
            .args(["run", "--fast", "--source"])
            .arg(format!("file:{}", common::audio("typing.wav").display()))
            .stderr(err)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    run(&stream, err_file.try_clone().unwrap());
    let text = std::fs::read_to_string(&err_path).unwrap();
    let journald = std::path::Path::new("/run/systemd/journal/socket").exists();
    if journald {
        // The messages went to the journal, not to the stream.
        assert!(!text.contains("listening on"), "{text}");
    } else {
        assert!(text.contains("cannot reach journald"), "{text}");
        assert!(text.contains("hearken: listening on"), "{text}");
        assert!(!text.contains('\x1b'), "colours in a non-terminal: {text}");
    }
    // Another file's dev:inode: plain stderr, no journal attempt.
    let other = dir.join("stderr2");
    run(&stream, std::fs::File::create(&other).unwrap());
    let text = std::fs::read_to_string(&other).unwrap();
    assert!(!text.contains("journald"), "{text}");
    assert!(text.contains("hearken: listening on"), "{text}");
    assert!(text.contains("hearken: stopped after"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_level_flag_filters_and_rejects_unknown_levels() {
    let run = |level: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearken"))
            .env("HEARKEN_MODELS", common::models_dir())
            .env_remove("RUST_LOG")
            .args(["run", "--fast", "--log-level", level, "--source"])
            .arg(format!("file:{}", common::audio("typing.wav").display()))
            .output()
            .unwrap()
    };
    let out = run("warn");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("listening on"), "{err}");
    let out = run("debug");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listening on") && err.contains("debug: "),
        "{err}"
    );
    let out = run("loud");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));
}
