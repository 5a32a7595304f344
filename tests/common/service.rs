//! Running `hearken run` on stdin like a service: a feeder thread that writes audio
//! (paced or fast, with real-time silence in between), line readers for stdout and
//! stderr, and a fake systemd notify socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fresh temporary directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearken-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A recording as mono s16le bytes with its rate (decoded with hound).
pub fn s16le(name: &str) -> (u32, Vec<u8>) {
    let mut r = hound::WavReader::open(super::audio(name)).unwrap();
    let spec = r.spec();
    assert_eq!(spec.channels, 1, "{name}: mono expected");
    assert_eq!(spec.bits_per_sample, 16, "{name}: 16-bit expected");
    let bytes = r
        .samples::<i16>()
        .flat_map(|s| s.unwrap().to_le_bytes())
        .collect();
    (spec.sample_rate, bytes)
}

enum Cmd {
    Queue(Vec<u8>),
    Pause(bool),
    Close,
}

/// Writes to the daemon's stdin from a thread: queued audio first (paced in real time
/// or as fast as the daemon takes it), then silence in real time, unless paused (then
/// nothing, with stdin kept open).
pub struct Feeder {
    tx: Sender<Cmd>,
    handle: Option<JoinHandle<()>>,
    /// Bytes written so far.
    pub written: Arc<AtomicU64>,
    /// When the first byte was written.
    pub first_write: Arc<Mutex<Option<Instant>>>,
    rate: u32,
}

impl Feeder {
    /// Starts feeding `stdin` at `rate` Hz mono; `paced`: queued audio in real time too.
    pub fn start(mut stdin: ChildStdin, rate: u32, paced: bool, delay: Duration) -> Feeder {
        let (tx, rx) = channel::<Cmd>();
        let written = Arc::new(AtomicU64::new(0));
        let first_write = Arc::new(Mutex::new(None));
        let (w, fw) = (written.clone(), first_write.clone());
        let chunk = (rate as usize / 10) * 2;
        let handle = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let mut queue: std::collections::VecDeque<u8> = Default::default();
            let mut paused = false;
            let silence = vec![0u8; chunk];
            let mut next = Instant::now();
            loop {
                loop {
                    match rx.try_recv() {
                        Ok(Cmd::Queue(b)) => queue.extend(b),
                        Ok(Cmd::Pause(p)) => paused = p,
                        Ok(Cmd::Close) | Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    }
                }
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(20)));
                    continue;
                }
                if paused {
                    next = now + Duration::from_millis(100);
                    continue;
                }
                let data: Vec<u8> = if queue.is_empty() {
                    silence.clone()
                } else if paced {
                    let n = chunk.min(queue.len());
                    queue.drain(..n).collect()
                } else {
                    queue.drain(..).collect()
                };
                let paced_chunk = paced || data.len() == chunk;
                fw.lock().unwrap().get_or_insert_with(Instant::now);
                if stdin.write_all(&data).is_err() {
                    return;
                }
                w.fetch_add(data.len() as u64, Ordering::Relaxed);
                // Real time for silence and paced audio; fast audio goes at once.
                next = if paced_chunk {
                    next.max(now - Duration::from_millis(200)) + Duration::from_millis(100)
                } else {
                    Instant::now()
                };
            }
        });
        Feeder {
            tx,
            handle: Some(handle),
            written,
            first_write,
            rate,
        }
    }

    /// Queues audio; returns the stream time (s) at which it will start, roughly
    /// (the silence written before it counts).
    pub fn queue(&self, bytes: Vec<u8>) -> f64 {
        let at = self.stream_s();
        let _ = self.tx.send(Cmd::Queue(bytes));
        at
    }

    /// Stops writing (true) with stdin kept open, or resumes (false).
    pub fn pause(&self, p: bool) {
        let _ = self.tx.send(Cmd::Pause(p));
    }

    /// Stream seconds written so far.
    pub fn stream_s(&self) -> f64 {
        self.written.load(Ordering::Relaxed) as f64 / 2.0 / self.rate as f64
    }

    /// Closes stdin (end of stream) and waits for the thread.
    pub fn close(mut self) {
        let _ = self.tx.send(Cmd::Close);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Lines of a child's stream, collected by a thread, kept and searchable.
pub struct Lines {
    rx: Receiver<String>,
    /// Every line so far.
    pub seen: Vec<String>,
}

impl Lines {
    /// Reads `r` line by line in a thread.
    pub fn read(r: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `timeout` for a line (new or already seen after `from`) matching
    /// `pred`; returns its index.
    pub fn wait_for(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<usize> {
        if let Some(i) = self.seen.iter().skip(from).position(|l| pred(l)) {
            return Some(from + i);
        }
        let t = Instant::now();
        while t.elapsed() < timeout {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = pred(&l);
                    self.seen.push(l);
                    if hit {
                        return Some(self.seen.len() - 1);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    /// Collects what arrives until the stream closes or `timeout`.
    pub fn drain(&mut self, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Everything so far, one string.
    pub fn text(&self) -> String {
        self.seen.join("\n")
    }
}

/// A daemon on stdin.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its stdout (JSON events with `--print-events`).
    pub stdout: Lines,
    /// Its stderr (diagnostics).
    pub stderr: Lines,
    /// Its stdin.
    pub feeder: Option<Feeder>,
}

impl Daemon {
    /// Spawns `hearken run --print-events --source stdin:RATE:1 ARGS…` with `env`.
    pub fn spawn(
        rate: u32,
        args: &[&str],
        env: &[(&str, &str)],
        paced: bool,
        delay: Duration,
    ) -> Daemon {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hearken"));
        c.env("HEARKEN_MODELS", super::models_dir())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .args(["run", "--print-events", "--source"])
            .arg(format!("stdin:{rate}:1"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let stdout = Lines::read(child.stdout.take().unwrap());
        let stderr = Lines::read(child.stderr.take().unwrap());
        let feeder = Feeder::start(child.stdin.take().unwrap(), rate, paced, delay);
        Daemon {
            child,
            stdout,
            stderr,
            feeder: Some(feeder),
        }
    }

    /// The feeder.
    pub fn feeder(&self) -> &Feeder {
        self.feeder.as_ref().unwrap()
    }

    /// Waits for "listening on" (panics with the log otherwise).
    pub fn wait_listening(&mut self) {
        if self
            .stderr
            .wait_for(0, Duration::from_secs(120), |l| l.contains("listening on"))
            .is_none()
        {
            panic!("never started: {}", self.stderr.text());
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits until a `status t=Ns` line shows at least `t_s` seconds of audio.
    pub fn wait_stream_time(&mut self, t_s: f64, timeout: Duration) {
        let ok = self.stderr.wait_for(0, timeout, |l| {
            l.split("status t=")
                .nth(1)
                .and_then(|r| r.split('s').next())
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|t| t >= t_s)
        });
        assert!(
            ok.is_some(),
            "stream never reached {t_s} s: {}",
            self.stderr.text()
        );
    }

    /// Closes stdin and waits for the exit (at most `timeout`); drains the output.
    pub fn finish(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(f) = self.feeder.take() {
            f.close();
        }
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.stdout.drain(Duration::from_secs(5));
                self.stderr.drain(Duration::from_secs(5));
                return st;
            }
            if t.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("did not exit in {timeout:?}: {}", self.stderr.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JSON events printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .seen
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fake systemd notify socket: every datagram with its arrival time.
pub struct NotifySocket {
    /// The socket path (for `NOTIFY_SOCKET`).
    pub path: PathBuf,
    rx: Receiver<(Instant, String)>,
    /// Everything received so far.
    pub got: Vec<(Instant, String)>,
}

impl NotifySocket {
    /// Binds `dir/notify`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            rx,
            got: Vec::new(),
        }
    }

    /// Collects what arrived, waiting up to `wait`.
    pub fn collect(&mut self, wait: Duration) {
        let t = Instant::now();
        loop {
            let left = wait.saturating_sub(t.elapsed());
            match self.rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(m) => self.got.push(m),
                Err(_) if t.elapsed() >= wait => return,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(_) => {}
            }
        }
    }

    /// Waits up to `timeout` for a message containing `line` (a `KEY=VALUE` line);
    /// returns when it arrived.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<Instant> {
        let has = |m: &str| m.lines().any(|l| l == line);
        if let Some((t, _)) = self.got.iter().find(|(_, m)| has(m)) {
            return Some(*t);
        }
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(m) = self.rx.recv_timeout(Duration::from_millis(100)) {
                let hit = has(&m.1).then_some(m.0);
                self.got.push(m);
                if hit.is_some() {
                    return hit;
                }
            }
        }
        None
    }

    /// Arrival times of messages containing `line`, within [from, to).
    pub fn times(&self, line: &str, from: Instant, to: Instant) -> Vec<Instant> {
        self.got
            .iter()
            .filter(|(t, m)| *t >= from && *t < to && m.lines().any(|l| l == line))
            .map(|(t, _)| *t)
            .collect()
    }
}
