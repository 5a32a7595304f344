//! Running under systemd: the `sd_notify` protocol, the watchdog's stall check and
//! what a configuration reload may change.
//!
//! The protocol is a few `KEY=VALUE` lines in one datagram sent to the unix socket
//! named by `$NOTIFY_SOCKET` (a path, or a Linux abstract socket when it starts with
//! `@`); see sd_notify(3). It is spoken here with std's [`UnixDatagram`] rather than a
//! crate: it is a dozen lines, std handles abstract addresses, and it keeps
//! `MONOTONIC_USEC` (needed for `RELOADING=1`) under our control.
//!
//! Everything that decides something is pure and unit-tested: [`notify_address`],
//! [`watchdog_interval`], the message builders, [`StallCheck`] and
//! [`restart_keys`]. The daemon's control loop (in the binary) does the I/O.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddress {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (the name without the leading `@`).
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: `@name` is an abstract socket, an absolute path a socket
/// file; anything else (empty, relative, `vsock:` …) is not supported → `None`.
pub fn notify_address(value: &OsStr) -> Option<NotifyAddress> {
    let b = value.as_bytes();
    match b.first()? {
        b'@' if b.len() > 1 => Some(NotifyAddress::Abstract(b[1..].to_vec())),
        b'/' => Some(NotifyAddress::Path(PathBuf::from(value))),
        _ => None,
    }
}

/// Sends notifications to the service manager; a no-op when `$NOTIFY_SOCKET` is unset
/// or unusable. Sending never fails loudly: notifications are best-effort.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET` (disabled when it is unset or unusable).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET")
            .as_deref()
            .and_then(notify_address)
            .and_then(|a| {
                let addr = match a {
                    NotifyAddress::Path(p) => SocketAddr::from_pathname(p).ok()?,
                    NotifyAddress::Abstract(name) => {
                        use std::os::linux::net::SocketAddrExt;
                        SocketAddr::from_abstract_name(name).ok()?
                    }
                };
                Some((UnixDatagram::unbound().ok()?, addr))
            });
        Notifier { target }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one notification (newline-separated `KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Some((sock, addr)) => sock.send_to_addr(message.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// A `STATUS=` line's value: one line, at most 200 bytes (on a char boundary).
fn status_value(status: &str) -> String {
    let mut s: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// `READY=1` with a status line.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}", status_value(status))
}

/// A status update.
pub fn status_message(status: &str) -> String {
    format!("STATUS={}", status_value(status))
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd wants on reload notifications.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// `STOPPING=1` with a status line.
pub fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", status_value(status))
}

/// The watchdog keep-alive.
pub const WATCHDOG_MESSAGE: &str = "WATCHDOG=1";

/// `CLOCK_MONOTONIC` in microseconds (the clock of `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// The watchdog timeout from `$WATCHDOG_USEC` and `$WATCHDOG_PID` (sd_watchdog_enabled(3)):
/// `None` when unset, unparsable or zero, or when `WATCHDOG_PID` names another process.
/// Pings are due every half of it.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// A stage of the pipeline the watchdog watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The audio source pushing samples into the ring.
    Capture,
    /// The DSP thread taking samples from the ring.
    Dsp,
    /// The inference thread scoring windows.
    Inference,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Capture => "capture",
            Stage::Dsp => "DSP",
            Stage::Inference => "inference",
        })
    }
}

/// The pipeline's progress counters at one moment (all only ever grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Samples the source pushed into the ring.
    pub captured: u64,
    /// Ticks of the capture thread while it reopens a lost device (alive, though
    /// no samples flow).
    pub reconnecting: u64,
    /// Samples the DSP thread took from the ring.
    pub dsp: u64,
    /// Blocks of frames the DSP thread handed to the inference thread.
    pub blocks_sent: u64,
    /// Blocks the inference thread finished.
    pub blocks_done: u64,
    /// Windows the inference thread scored.
    pub windows: u64,
}

/// The verdict of one [`StallCheck::observe`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// Every stage is making progress (or has nothing to do).
    Healthy,
    /// `stage` has made no progress for `idle_s` seconds although it had work.
    Stalled {
        /// The stage that is stuck.
        stage: Stage,
        /// Seconds since it last made progress.
        idle_s: f64,
    },
}

/// Decides from successive [`Snapshot`]s whether a stage is stuck.
///
/// Back-pressure makes a stuck stage stall everything upstream of it (a hung model
/// fills the block channel, the DSP thread blocks, the ring fills, capture stops), so
/// stages are judged downstream first and only while they have work waiting:
///
/// 1. inference: blocks are queued for it and none was finished for `limit`; or it
///    went on finishing blocks for `window_limit` after its last window (windows only
///    come every hop, so `window_limit` must exceed the hop);
/// 2. DSP: the ring holds samples and none was taken for `limit`;
/// 3. capture: no sample arrived for `limit` and the capture thread was not busy
///    reopening a lost device (that is progress of its own: the log and the status
///    say the device is gone, and restarting would not bring it back).
///
/// Each stage is judged over the whole `limit` (the watchdog interval), never between
/// two close observations, so a pause shorter than that is not a stall.
#[derive(Debug, Clone)]
pub struct StallCheck {
    limit_s: f64,
    window_limit_s: f64,
    last: Snapshot,
    /// When each counter last changed: captured, dsp, blocks_done, windows.
    changed_at: [f64; 4],
    /// When blocks started flowing again after a pause of `limit` or more.
    blocks_flowing_since: f64,
}

impl StallCheck {
    /// A check that starts at `now_s` (any monotonic seconds) from `first`, with
    /// stall limits in seconds.
    pub fn new(now_s: f64, first: Snapshot, limit_s: f64, window_limit_s: f64) -> StallCheck {
        StallCheck {
            limit_s,
            window_limit_s: window_limit_s.max(limit_s),
            last: first,
            changed_at: [now_s; 4],
            blocks_flowing_since: now_s,
        }
    }

    /// Records the counters at `now_s` and judges the pipeline.
    pub fn observe(&mut self, now_s: f64, s: Snapshot) -> Health {
        let prev = self.last;
        let counters = [
            (
                prev.captured + prev.reconnecting,
                s.captured + s.reconnecting,
            ),
            (prev.dsp, s.dsp),
            (prev.blocks_done, s.blocks_done),
            (prev.windows, s.windows),
        ];
        if prev.blocks_done != s.blocks_done && now_s - self.changed_at[2] >= self.limit_s {
            self.blocks_flowing_since = now_s;
        }
        for (i, (a, b)) in counters.into_iter().enumerate() {
            if a != b {
                self.changed_at[i] = now_s;
            }
        }
        self.last = s;
        let idle = |i: usize| (now_s - self.changed_at[i]).max(0.0);
        let stalled = |stage, idle_s| Health::Stalled { stage, idle_s };
        let (cap, dsp, blk, win) = (idle(0), idle(1), idle(2), idle(3));
        if s.blocks_sent > s.blocks_done && blk >= self.limit_s {
            return stalled(Stage::Inference, blk);
        }
        // Blocks kept being finished for a whole window_limit after the last window
        // (counting from when they last started flowing: after a pause, the next
        // window is a hop away).
        let since = self.changed_at[3].max(self.blocks_flowing_since);
        if self.changed_at[2] - since >= self.window_limit_s {
            return stalled(Stage::Inference, win);
        }
        if s.captured > s.dsp && dsp >= self.limit_s {
            return stalled(Stage::Dsp, dsp);
        }
        if cap >= self.limit_s {
            return stalled(Stage::Capture, cap);
        }
        Health::Healthy
    }
}

/// The configuration keys a reload cannot apply (they need a new source, model or
/// window plan), among those whose value differs between `old` and `new`.
pub fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.model.name != new.model.name {
        keys.push("model.name");
    }
    if old.model.window_s != new.model.window_s {
        keys.push("model.window_s");
    }
    if old.model.hop_s != new.model.hop_s {
        keys.push("model.hop_s");
    }
    if old.model.skip_quiet_windows != new.model.skip_quiet_windows {
        keys.push("model.skip_quiet_windows");
    }
    if old.audio.source != new.audio.source {
        keys.push("audio.source");
    }
    if !same_pipelines(old, new) {
        keys.push("sources");
    }
    if old.audio.ring_seconds != new.audio.ring_seconds {
        keys.push("audio.ring_seconds");
    }
    if old.audio.gate_dbfs != new.audio.gate_dbfs {
        keys.push("audio.gate_dbfs");
    }
    if old.detection.status_interval_s != new.detection.status_interval_s {
        keys.push("detection.status_interval_s");
    }
    if old.mqtt.embedded_broker != new.mqtt.embedded_broker {
        keys.push("mqtt.embedded_broker");
    }
    if old.mqtt.embedded_listen != new.mqtt.embedded_listen {
        keys.push("mqtt.embedded_listen");
    }
    // The home store's writer is started with its folder and bounds.
    if old.learning.store != new.learning.store {
        keys.push("learning.store");
    }
    if old.learning.days != new.learning.days {
        keys.push("learning.days");
    }
    if old.learning.max_mb != new.learning.max_mb {
        keys.push("learning.max_mb");
    }
    // The HTTP server is bound, and the clip writer started, with these.
    if old.http != new.http {
        keys.push("http");
    }
    if old.privacy != new.privacy {
        keys.push("privacy");
    }
    keys
}

/// Whether two configurations run the same pipelines: the same sources, by name,
/// spec and gain, in the same order.
fn same_pipelines(old: &Config, new: &Config) -> bool {
    let key = |c: &Config| -> Vec<(String, String, u32)> {
        c.sources
            .iter()
            .map(|s| (s.name.clone(), s.source.clone(), s.gain_db.to_bits()))
            .collect()
    };
    key(old) == key(new)
}

/// Puts `old`'s values back into `new` for every key of [`restart_keys`], so a reload
/// applies the rest and keeps what is running. Group thresholds that follow the model
/// are re-derived for the running model.
pub fn keep_running_values(old: &Config, new: &mut Config) {
    if new.model.name != old.model.name {
        new.set_model(&old.model.name);
    }
    new.model.window_s = old.model.window_s;
    new.model.hop_s = old.model.hop_s;
    new.audio = old.audio.clone();
    // Each source's pipeline runs on: its groups, thresholds and room follow the
    // file, but not a new list of sources, specs or gains.
    if !same_pipelines(old, new) {
        new.sources = old.sources.clone();
    }
    new.detection.status_interval_s = old.detection.status_interval_s;
    new.mqtt.embedded_broker = old.mqtt.embedded_broker;
    new.mqtt.embedded_listen = old.mqtt.embedded_listen.clone();
    new.learning.store = old.learning.store;
    new.learning.days = old.learning.days;
    new.learning.max_mb = old.learning.max_mb;
    new.http = old.http.clone();
    new.privacy = old.privacy.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            notify_address(OsStr::new("/run/systemd/notify")),
            Some(NotifyAddress::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            notify_address(OsStr::new("@/org/systemd/x")),
            Some(NotifyAddress::Abstract(b"/org/systemd/x".to_vec()))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert_eq!(notify_address(OsStr::new(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn notifier_reaches_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("hearken-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = SocketAddr::from_pathname(&path).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
        };
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("hearken-notify-unit-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), abs)),
        };
        n.send(WATCHDOG_MESSAGE).unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);

        assert!(Notifier::disabled().send("READY=1").is_ok());
    }

    #[test]
    fn messages() {
        assert_eq!(ready_message("listening"), "READY=1\nSTATUS=listening");
        assert_eq!(status_message("a\nb"), "STATUS=a b");
        assert_eq!(
            reloading_message(42),
            "RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=reloading the configuration"
        );
        assert!(stopping_message("bye").starts_with("STOPPING=1\n"));
        let long = "é".repeat(300);
        assert!(status_message(&long).len() <= 200 + "STATUS=".len());
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn watchdog_env() {
        let s = Some;
        assert_eq!(
            watchdog_interval(s("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(s("1000000"), s("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(s("1000000"), s("8"), 7), None);
        assert_eq!(watchdog_interval(s("1000000"), s("x"), 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
        assert_eq!(watchdog_interval(s("0"), None, 7), None);
        assert_eq!(watchdog_interval(s("-5"), None, 7), None);
        assert_eq!(watchdog_interval(s("soon"), None, 7), None);
    }

    /// A pipeline where every stage moves: samples every 0.1 s, a block each time, a
    /// window every second.
    fn flowing(t: f64) -> Snapshot {
        let ticks = (t * 10.0) as u64;
        Snapshot {
            captured: ticks * 1600,
            dsp: ticks * 1600,
            blocks_sent: ticks,
            blocks_done: ticks,
            windows: ticks / 10,
            reconnecting: 0,
        }
    }

    /// Observes `snap(t)` every 0.5 s from 0 to `until`; returns the last verdict and
    /// the time of the first stall.
    fn run(snap: impl Fn(f64) -> Snapshot, until: f64) -> (Health, Option<f64>) {
        let mut c = StallCheck::new(0.0, snap(0.0), 1.0, 2.5);
        let mut first = None;
        let mut h = Health::Healthy;
        let mut t = 0.0;
        while t <= until {
            h = c.observe(t, snap(t));
            if first.is_none() && h != Health::Healthy {
                first = Some(t);
            }
            t += 0.5;
        }
        (h, first)
    }

    #[test]
    fn a_flowing_pipeline_is_healthy_although_windows_come_once_a_hop() {
        let (h, first) = run(flowing, 30.0);
        assert_eq!(h, Health::Healthy);
        assert_eq!(first, None);
    }

    fn stage(h: Health) -> Option<Stage> {
        match h {
            Health::Stalled { stage, .. } => Some(stage),
            Health::Healthy => None,
        }
    }

    #[test]
    fn reopening_a_lost_device_is_not_a_capture_stall() {
        let mut c = StallCheck::new(0.0, flowing(0.0), 2.0, 3.0);
        let mut last = flowing(0.0);
        for i in 1..=100 {
            let t = i as f64 * 0.1;
            let mut s = flowing(t.min(1.0));
            // The device vanished at 1 s; the capture thread retries from then on.
            if t > 1.0 {
                s = Snapshot {
                    reconnecting: i,
                    ..last
                };
            }
            last = s;
            assert_eq!(c.observe(t, s), Health::Healthy, "at {t:.1} s");
        }
    }

    #[test]
    fn capture_stall_is_blamed_on_capture() {
        // The source stops at 5 s; DSP and inference drain and go idle too.
        let (h, first) = run(|t| flowing(t.min(5.0)), 10.0);
        assert_eq!(stage(h), Some(Stage::Capture));
        let first = first.unwrap();
        assert!((6.0..=6.5).contains(&first), "{first}");
    }

    #[test]
    fn dsp_stall_is_blamed_on_dsp_not_on_capture_starved_by_it() {
        // The DSP thread hangs at 5 s; capture fills the ring and then stops too
        // (back-pressure), but the ring holds samples the DSP never took.
        let (h, _) = run(
            |t| {
                let mut s = flowing(t.min(5.0));
                s.captured = flowing(t.min(7.0)).captured;
                s
            },
            12.0,
        );
        assert_eq!(stage(h), Some(Stage::Dsp));
    }

    #[test]
    fn inference_stall_is_blamed_on_inference() {
        // The model hangs at 5 s with a block in hand; blocks keep queueing until the
        // channel is full, then DSP and capture back up.
        let (h, first) = run(
            |t| {
                let mut s = flowing(t.min(8.0));
                s.blocks_done = flowing(t.min(5.0)).blocks_done;
                s.windows = flowing(t.min(5.0)).windows;
                s
            },
            12.0,
        );
        assert_eq!(stage(h), Some(Stage::Inference));
        assert!(first.unwrap() <= 6.5);
    }

    #[test]
    fn inference_that_takes_blocks_but_scores_no_window_is_stalled() {
        let (h, first) = run(
            |t| {
                let mut s = flowing(t);
                s.windows = flowing(t.min(5.0)).windows;
                s
            },
            12.0,
        );
        assert_eq!(stage(h), Some(Stage::Inference));
        // Judged over window_limit (2.5 s) after the last window (at 5 s).
        assert!(first.unwrap() >= 7.5, "{first:?}");
    }

    #[test]
    fn a_short_pause_is_not_a_stall_and_recovery_is_healthy() {
        // Nothing moves between 5 and 5.8 s.
        let snap = |t: f64| {
            if (5.0..5.8).contains(&t) {
                flowing(5.0)
            } else {
                flowing(t)
            }
        };
        assert_eq!(run(snap, 10.0), (Health::Healthy, None));
        // A long stall, then everything flows again: healthy again.
        let snap = |t: f64| {
            if (5.0..9.0).contains(&t) {
                flowing(5.0)
            } else {
                flowing(t)
            }
        };
        let (h, first) = run(snap, 12.0);
        assert_eq!(h, Health::Healthy);
        assert!(first.is_some());
    }

    #[test]
    fn after_a_capture_stall_the_first_hop_without_a_window_is_not_an_inference_stall() {
        // Capture stops 5..9 s; when it resumes, blocks flow at once but the next
        // window only comes a hop (here 2 s) later.
        let snap = |t: f64| {
            let mut s = flowing(if (5.0..9.0).contains(&t) { 5.0 } else { t });
            if t >= 5.0 {
                s.windows = if t < 11.0 { 5 } else { 5 + (t - 10.0) as u64 };
            }
            s
        };
        let mut c = StallCheck::new(0.0, snap(0.0), 1.0, 2.5);
        let mut t = 0.0;
        while t <= 16.0 {
            let h = c.observe(t, snap(t));
            if (6.5..9.0).contains(&t) {
                assert_eq!(stage(h), Some(Stage::Capture), "t={t}");
            } else if t >= 9.0 {
                assert_eq!(h, Health::Healthy, "t={t}");
            }
            t += 0.5;
        }
    }

    #[test]
    fn restart_keys_and_keeping_running_values() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(restart_keys(&old, &new).is_empty());
        new.set_model("yamnet");
        new.audio.source = "stdin:16000:1".into();
        new.model.hop_s = 0.5;
        new.node.room = "hall".into();
        new.detection.groups.get_mut("glass").unwrap().enabled = false;
        assert_eq!(
            restart_keys(&old, &new),
            vec!["model.name", "model.hop_s", "audio.source"]
        );
        keep_running_values(&old, &mut new);
        assert!(restart_keys(&old, &new).is_empty());
        // What a reload can change stays changed; thresholds follow the running model.
        assert_eq!(new.node.room, "hall");
        assert!(!new.detection.groups["glass"].enabled);
        assert_eq!(
            new.detection.groups["gunshot"], old.detection.groups["gunshot"],
            "thresholds for the running model"
        );
    }
}
