//! A private PulseAudio daemon with a null sink for capture tests
//! (tools/pulse-null-sink.sh).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/pulse-null-sink.sh")
}

/// Waits for `child` up to `limit`; kills it past that. None on timeout.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sound server per test process at a time: its address is process-wide
/// environment (PULSE_SERVER), inherited by every child.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The daemon; stopped (and its directory removed) on drop, even when a check fails.
pub struct Pulse {
    /// Runtime directory of the daemon.
    pub dir: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Pulse {
    fn drop(&mut self) {
        if let Ok(mut child) = Command::new(script())
            .args(["stop", &self.dir])
            .stdin(Stdio::null())
            .spawn()
        {
            wait_with_timeout(&mut child, Duration::from_secs(10));
        }
    }
}

/// Starts the daemon and exports its client environment into this process.
/// None when the packages cannot be installed (exit status 2).
pub fn start_pulse() -> Option<Pulse> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out_path = std::env::temp_dir().join(format!("hearken-pulse-{}.out", std::process::id()));
    let err_path = out_path.with_extension("err");
    let mut child = Command::new(script())
        .arg("start")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("cannot run tools/pulse-null-sink.sh");
    // First run may install packages with apt-get.
    let status = wait_with_timeout(&mut child, Duration::from_secs(600));
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    std::fs::remove_file(&out_path).ok();
    std::fs::remove_file(&err_path).ok();
    let status = status.unwrap_or_else(|| panic!("pulse-null-sink.sh start timed out:\n{stderr}"));
    if status.code() == Some(2) {
        eprintln!("SKIPPED capture_pulse: PulseAudio packages could not be installed:\n{stderr}");
        return None;
    }
    assert!(
        status.success(),
        "pulse-null-sink.sh start failed ({status}):\n{stderr}"
    );
    let mut dir = None;
    for line in stdout.lines() {
        let Some((key, value)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
        else {
            continue;
        };
        if key == "HEARKEN_PULSE_DIR" {
            dir = Some(value.to_string());
        }
        // Before any ALSA use in this process: the ALSA pulse plugin reads these.
        std::env::set_var(key, value);
    }
    let dir = dir.unwrap_or_else(|| panic!("no HEARKEN_PULSE_DIR in:\n{stdout}"));
    Some(Pulse { dir, _turn: turn })
}

impl Pulse {
    /// Kills the sound server (the "device" vanishes) and keeps its directory.
    pub fn kill(&self) {
        let st = Command::new(script())
            .args(["kill", &self.dir])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Starts it again on the same socket (the device comes back).
    pub fn restart(&self) {
        let out = Command::new(script())
            .args(["start", &self.dir])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
