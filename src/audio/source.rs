//! Audio sources feeding the capture ring.
//!
//! Every source — a cpal input device, a WAV/FLAC file, or raw PCM on stdin — pushes
//! mono `f32` samples at its native sample rate into one lock-free SPSC ring
//! ([`ringbuf::HeapRb`]). [`Source::start`] returns the consumer half, a
//! [`SourceConsumer`] (= `ringbuf::HeapCons<f32>`), for the DSP thread:
//!
//! ```no_run
//! use ringbuf::traits::{Consumer, Observer};
//! use hearken::audio::source::{Source, SourceOptions, SourceSpec};
//!
//! let spec: SourceSpec = "file:clip.wav".parse().unwrap();
//! let (source, mut ring) = Source::start(&spec, &SourceOptions::default()).unwrap();
//! let mut buf = vec![0.0f32; 4096];
//! loop {
//!     let n = ring.pop_slice(&mut buf); // mono samples at source.sample_rate
//!     if n == 0 {
//!         // Nothing buffered: the end if the source is finished (or gone), else wait.
//!         if source.is_finished() || !ring.write_is_held() {
//!             break;
//!         }
//!         std::thread::sleep(std::time::Duration::from_millis(5));
//!     }
//! }
//! source.stop();
//! ```
//!
//! The cpal audio callback never allocates, locks, logs or blocks: it mixes to mono
//! into a scratch buffer allocated before the stream starts, pushes into the ring and
//! counts what did not fit in [`SourceStats::overruns`].
//!
//! Every source hands the ring only finite samples within ±[`super::SAMPLE_LIMIT`]:
//! NaN and ±Inf become silence and absurd values are clamped, counted in
//! [`SourceStats::replaced`] (the callback with one atomic add; the pipeline reports
//! the count from its own threads).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};
use ringbuf::traits::{Producer, Split};
use ringbuf::{HeapProd, HeapRb};

use super::decode::RATE_RANGE;
use super::{sanitize, sanitize_sample, FileDecoder};

/// The consumer half of the capture ring: mono `f32` at the source's sample rate.
///
/// Read it with the [`ringbuf::traits::Consumer`] methods (`pop_slice`, `try_pop`,
/// `pop_iter`, …) and inspect it with [`ringbuf::traits::Observer`] (`occupied_len`,
/// `write_is_held` — false once the source's producer half is gone).
pub type SourceConsumer = ringbuf::HeapCons<f32>;

/// The accepted `--source` forms, for error messages and help text.
pub const SOURCE_FORMS: &str = "default, device:NAME, file:PATH, stdin:RATE:CHANNELS";

/// Highest channel count accepted for raw PCM on stdin.
pub const MAX_STDIN_CHANNELS: usize = 64;

/// Error text when there is no usable default input device.
const NO_DEFAULT_DEVICE: &str = "no default audio input device found; list devices with \
     `hearken devices` or use --source file:PATH / --source stdin:RATE:CHANNELS";

/// Smallest ring, in samples, whatever `ring_seconds` says.
const MIN_RING_SAMPLES: usize = 64;

/// Where audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The host's default input device (`default`).
    Default,
    /// An input device by exact name, as `hearken devices` prints it (`device:NAME`).
    Device(String),
    /// A WAV or FLAC file (`file:PATH`).
    File(PathBuf),
    /// Raw interleaved signed 16-bit little-endian PCM on stdin
    /// (`stdin:RATE:CHANNELS`).
    Stdin {
        /// Sample rate, Hz.
        rate: u32,
        /// Interleaved channels per frame.
        channels: usize,
    },
}

/// A `--source` string that is not one of [`SOURCE_FORMS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source '{input}': {reason}; expected one of: {forms}", forms = SOURCE_FORMS)]
pub struct ParseSourceError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for SourceSpec {
    type Err = ParseSourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseSourceError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s == "default" {
            return Ok(SourceSpec::Default);
        }
        if let Some(name) = s.strip_prefix("device:") {
            if name.is_empty() {
                return Err(err("the device name is empty"));
            }
            return Ok(SourceSpec::Device(name.to_string()));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(err("the file path is empty"));
            }
            return Ok(SourceSpec::File(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("stdin:") {
            let (rate, channels) = rest
                .split_once(':')
                .ok_or_else(|| err("stdin needs a rate and a channel count"))?;
            let rate: u32 = rate
                .parse()
                .map_err(|_| err(&format!("'{rate}' is not a sample rate in Hz")))?;
            if !RATE_RANGE.contains(&rate) {
                return Err(err(&format!(
                    "sample rate {rate} Hz is outside {}..={} Hz",
                    RATE_RANGE.start(),
                    RATE_RANGE.end()
                )));
            }
            let channels: usize = channels
                .parse()
                .map_err(|_| err(&format!("'{channels}' is not a channel count")))?;
            if !(1..=MAX_STDIN_CHANNELS).contains(&channels) {
                return Err(err(&format!(
                    "channel count {channels} is outside 1..={MAX_STDIN_CHANNELS}"
                )));
            }
            return Ok(SourceSpec::Stdin { rate, channels });
        }
        if s == "stdin" {
            return Err(err("stdin needs a rate and a channel count"));
        }
        Err(err("unknown source kind"))
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Default => f.write_str("default"),
            SourceSpec::Device(name) => write!(f, "device:{name}"),
            SourceSpec::File(path) => write!(f, "file:{}", path.display()),
            SourceSpec::Stdin { rate, channels } => write!(f, "stdin:{rate}:{channels}"),
        }
    }
}

/// Counters shared between a source's producer (audio callback or feeder thread) and
/// the rest of the daemon. Atomics only, so the audio callback can update them.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// The thread that empties the ring (the DSP thread), woken when samples arrive
    /// so that it can sleep until then instead of polling.
    consumer: std::sync::OnceLock<std::thread::Thread>,
    /// Wake the consumer only once this many samples have arrived since the last
    /// wake (0: at every push): fewer, larger pieces of work for the DSP thread.
    wake_every: AtomicU64,
    /// Samples pushed since the consumer was last woken.
    unwoken: AtomicU64,
    /// Samples dropped because the ring was full.
    pub overruns: AtomicU64,
    /// Samples pushed into the ring.
    pub samples: AtomicU64,
    /// Samples that arrived NaN, infinite or absurdly large and were replaced (with
    /// silence, or clamped: [`crate::audio::sanitize_sample`]) before the ring; counted
    /// per channel, before mixing. Nothing downstream ever sees such a sample.
    pub replaced: AtomicU64,
    /// The end of the file/stdin was reached and everything was pushed.
    pub finished: AtomicBool,
    /// Milliseconds since the UNIX epoch of the last callback/push (for a watchdog).
    pub last_callback_ms: AtomicU64,
    /// The device reported a non-recoverable stream error (see [`Source::error`]).
    pub stream_error: AtomicBool,
    /// Buffer over/underruns the device reported (recoverable glitches).
    pub xruns: AtomicU64,
    /// Kind of the first stream error, as an [`error_kind_code`] code.
    stream_error_kind: AtomicU8,
    /// The device is gone and the capture thread is reopening it.
    pub device_lost: AtomicBool,
    /// Times the device was reopened after a loss.
    pub reconnects: AtomicU64,
    /// Attempts to reopen it (successful or not).
    pub reconnect_attempts: AtomicU64,
    /// Ticks of the capture thread while the device is lost (it is alive, waiting
    /// to retry: a watchdog must not take that for a hang).
    pub reconnect_ticks: AtomicU64,
}

impl SourceStats {
    fn touch(&self) {
        self.last_callback_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn touch_waiting(&self) {
        self.reconnect_ticks.fetch_add(1, Ordering::Relaxed);
    }

    fn note_replaced(&self, replaced: usize) {
        if replaced > 0 {
            self.replaced.fetch_add(replaced as u64, Ordering::Relaxed);
        }
    }

    /// Names the thread that empties the ring: it is woken whenever samples arrive
    /// and when the source finishes (it should still wake itself now and then).
    pub fn set_consumer(&self, t: std::thread::Thread) {
        let _ = self.consumer.set(t);
    }

    /// Wakes the consumer only once `samples` have arrived since its last wake
    /// (it still wakes itself now and then, and at the end of the source).
    pub fn set_wake_every(&self, samples: u64) {
        self.wake_every.store(samples, Ordering::Relaxed);
    }

    fn wake_consumer(&self) {
        // An atomic load, and `unpark` is an atomic swap plus, only when the thread
        // sleeps, one futex wake: it neither allocates, locks nor blocks, so the
        // audio callback may call it.
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    /// Marks the end of the source's audio (everything is in the ring) and wakes the
    /// consumer to drain it.
    pub fn mark_finished(&self) {
        self.finished.store(true, Ordering::Release);
        self.wake_consumer();
    }

    fn count(&self, pushed: usize, dropped: usize) {
        if pushed > 0 {
            self.samples.fetch_add(pushed as u64, Ordering::Relaxed);
            let waiting = self.unwoken.fetch_add(pushed as u64, Ordering::Relaxed) + pushed as u64;
            if waiting >= self.wake_every.load(Ordering::Relaxed) {
                self.unwoken.store(0, Ordering::Relaxed);
                self.wake_consumer();
            }
        }
        if dropped > 0 {
            self.overruns.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        self.touch();
    }

    /// Called from the stream error callback: atomics only.
    fn note_stream_error(&self, kind: cpal::ErrorKind) {
        match kind {
            cpal::ErrorKind::Xrun => {
                self.xruns.fetch_add(1, Ordering::Relaxed);
            }
            // Real-time scheduling refused: the stream still runs.
            cpal::ErrorKind::RealtimeDenied => {}
            _ => {
                let _ = self.stream_error_kind.compare_exchange(
                    0,
                    error_kind_code(kind),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.stream_error.store(true, Ordering::Release);
            }
        }
    }
}

/// Small nonzero code for a cpal error kind (0 = none), so it fits an atomic.
fn error_kind_code(kind: cpal::ErrorKind) -> u8 {
    use cpal::ErrorKind as K;
    match kind {
        K::DeviceBusy => 1,
        K::DeviceChanged => 2,
        K::DeviceNotAvailable => 3,
        K::HostUnavailable => 4,
        K::InvalidInput => 5,
        K::PermissionDenied => 6,
        K::RealtimeDenied => 7,
        K::ResourceExhausted => 8,
        K::StreamInvalidated => 9,
        K::UnsupportedConfig => 10,
        K::UnsupportedOperation => 11,
        K::Xrun => 12,
        K::BackendError => 13,
        _ => 14,
    }
}

fn error_kind_text(code: u8) -> &'static str {
    match code {
        1 => "device busy",
        2 => "device changed",
        3 => "device not available (unplugged?)",
        4 => "audio host unavailable",
        5 => "invalid input",
        6 => "permission denied",
        7 => "real-time scheduling denied",
        8 => "resources exhausted",
        9 => "stream invalidated",
        10 => "unsupported configuration",
        11 => "unsupported operation",
        12 => "buffer overrun",
        13 => "backend error",
        _ => "unknown error",
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a source runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceOptions {
    /// Ring capacity in seconds of audio at the source's rate.
    pub ring_seconds: f64,
    /// Files only: pace in real time (dropping on a full ring, like a device);
    /// `false` = as fast as the consumer takes it, never dropping.
    pub realtime: bool,
}

impl Default for SourceOptions {
    /// A 2 s ring, real-time pacing.
    fn default() -> Self {
        SourceOptions {
            ring_seconds: 2.0,
            realtime: true,
        }
    }
}

/// State shared with a feeder thread.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Control {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn set_error(&self, message: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(message);
        }
    }
}

/// A running audio source. Stop it with [`Source::stop`] (dropping it stops it too).
pub struct Source {
    /// Sample rate of the ring's samples, Hz (the device's or file's native rate).
    pub sample_rate: u32,
    /// Channels of the underlying device/file/stream (the ring is always mono).
    pub channels: usize,
    /// Human-readable description: what is captured, at which format.
    pub description: String,
    /// Live counters.
    pub stats: Arc<SourceStats>,
    control: Arc<Control>,
    stream: Option<cpal::Stream>,
    thread: Option<JoinHandle<()>>,
    /// The thread may block in a read that the stop flag cannot interrupt (stdin).
    may_block: bool,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("description", &self.description)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Starts `spec` and returns it with the consumer half of its ring.
    ///
    /// Errors when the device cannot be found or opened, or the file cannot be opened
    /// or its header decoded. Stdin is read from this process's standard input.
    pub fn start(spec: &SourceSpec, opts: &SourceOptions) -> Result<(Source, SourceConsumer)> {
        if !(opts.ring_seconds.is_finite() && opts.ring_seconds > 0.0) {
            bail!(
                "ring_seconds must be a positive number of seconds, not {}",
                opts.ring_seconds
            );
        }
        match spec {
            SourceSpec::Default => start_cpal(None, opts),
            SourceSpec::Device(name) => start_cpal(Some(name), opts),
            SourceSpec::File(path) => Self::start_file(path, opts),
            SourceSpec::Stdin { rate, channels } => Self::start_raw_s16le(
                std::io::stdin(),
                *rate,
                *channels,
                opts,
                format!("stdin: raw s16le, {rate} Hz, {channels} ch"),
            ),
        }
    }

    /// Starts a file source (what [`Source::start`] does for [`SourceSpec::File`]).
    pub fn start_file(path: &Path, opts: &SourceOptions) -> Result<(Source, SourceConsumer)> {
        let decoder = FileDecoder::open(path)?;
        let info = decoder.info().clone();
        let (prod, cons) = ring(info.sample_rate, opts)?;
        let stats = Arc::new(SourceStats::default());
        let control = Arc::new(Control::default());
        let description = format!(
            "file {}: {} Hz, {} ch, {}",
            path.display(),
            info.sample_rate,
            info.channels,
            if opts.realtime {
                "real-time"
            } else {
                "as fast as possible"
            }
        );
        let thread = {
            let (stats, control, realtime) = (stats.clone(), control.clone(), opts.realtime);
            std::thread::Builder::new()
                .name("hearken-file".into())
                .spawn(move || file_feeder(decoder, prod, &stats, &control, realtime))
                .context("cannot start the file reader thread")?
        };
        Ok((
            Source {
                sample_rate: info.sample_rate,
                channels: info.channels,
                description,
                stats,
                control,
                stream: None,
                thread: Some(thread),
                may_block: false,
            },
            cons,
        ))
    }

    /// Starts a source reading raw interleaved s16le PCM at `rate`/`channels` from
    /// `reader` (stdin for [`SourceSpec::Stdin`]) in a thread, with back-pressure:
    /// nothing is dropped. End of input sets `finished`; a trailing partial frame is
    /// dropped.
    pub fn start_raw_s16le<R: Read + Send + 'static>(
        reader: R,
        rate: u32,
        channels: usize,
        opts: &SourceOptions,
        description: String,
    ) -> Result<(Source, SourceConsumer)> {
        if rate == 0 || channels == 0 {
            bail!("raw PCM needs a nonzero rate and channel count");
        }
        let (prod, cons) = ring(rate, opts)?;
        let stats = Arc::new(SourceStats::default());
        let control = Arc::new(Control::default());
        let thread = {
            let (stats, control) = (stats.clone(), control.clone());
            std::thread::Builder::new()
                .name("hearken-pcm".into())
                .spawn(move || pcm_feeder(reader, channels, prod, &stats, &control))
                .context("cannot start the PCM reader thread")?
        };
        Ok((
            Source {
                sample_rate: rate,
                channels,
                description,
                stats,
                control,
                stream: None,
                thread: Some(thread),
                may_block: true,
            },
            cons,
        ))
    }

    /// Stops capture / the feeder thread and joins it. A thread blocked reading stdin
    /// is detached after a short wait instead of hanging.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// True once the end of the file/stdin was reached and everything was pushed
    /// (never for a device).
    pub fn is_finished(&self) -> bool {
        self.stats.finished.load(Ordering::Acquire)
    }

    /// What went wrong, if anything: a file damaged mid-stream, a stdin read error, or
    /// a device stream error.
    pub fn error(&self) -> Option<String> {
        let e = self
            .control
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if e.is_some() {
            return e;
        }
        if self.stats.stream_error.load(Ordering::Acquire) {
            let code = self.stats.stream_error_kind.load(Ordering::Relaxed);
            return Some(format!(
                "{}: audio stream error: {}",
                self.description,
                error_kind_text(code)
            ));
        }
        None
    }

    fn shutdown(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        if let Some(stream) = self.stream.take() {
            let _ = stream.pause();
            drop(stream);
        }
        if let Some(handle) = self.thread.take() {
            if self.may_block {
                let deadline = Instant::now() + Duration::from_millis(250);
                while !handle.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if handle.is_finished() {
                    let _ = handle.join();
                }
                // else: blocked in read(); detach it, it exits at the next read.
            } else {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A new ring of `opts.ring_seconds` at `rate`.
fn ring(rate: u32, opts: &SourceOptions) -> Result<(HeapProd<f32>, SourceConsumer)> {
    let n = (opts.ring_seconds * rate as f64).ceil();
    if !(n.is_finite() && n < (1u64 << 32) as f64) {
        bail!("ring of {} s at {rate} Hz is too large", opts.ring_seconds);
    }
    Ok(HeapRb::<f32>::new((n as usize).max(MIN_RING_SAMPLES)).split())
}

/// A ring whose producer can be made again (after a device reconnect): producer,
/// consumer and the shared ring.
fn shared_ring(
    rate: u32,
    opts: &SourceOptions,
) -> Result<(HeapProd<f32>, SourceConsumer, Arc<HeapRb<f32>>)> {
    let n = (opts.ring_seconds * rate as f64).ceil();
    if !(n.is_finite() && n < (1u64 << 32) as f64) {
        bail!("ring of {} s at {rate} Hz is too large", opts.ring_seconds);
    }
    let rb = Arc::new(HeapRb::<f32>::new((n as usize).max(MIN_RING_SAMPLES)));
    Ok((
        HeapProd::new(rb.clone()),
        SourceConsumer::new(rb.clone()),
        rb,
    ))
}

/// Sleeps until `due`, in short naps so a stop request is seen. False if stopped.
fn sleep_until(due: Instant, control: &Control) -> bool {
    loop {
        if control.stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(20)));
    }
}

/// Pushes all of `samples`, waiting ~1 ms whenever the ring is full. False if stopped.
fn push_all(
    prod: &mut HeapProd<f32>,
    mut samples: &[f32],
    stats: &SourceStats,
    control: &Control,
) -> bool {
    while !samples.is_empty() {
        if control.stopped() {
            return false;
        }
        let n = prod.push_slice(samples);
        if n > 0 {
            stats.count(n, 0);
            samples = &samples[n..];
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    true
}

/// The file thread: decodes and pushes, paced or with back-pressure.
fn file_feeder(
    mut decoder: FileDecoder,
    mut prod: HeapProd<f32>,
    stats: &SourceStats,
    control: &Control,
    realtime: bool,
) {
    let rate = decoder.info().sample_rate as u64;
    // Real time: 20 ms pieces; fast: bigger pieces, fewer wake-ups.
    let piece = if realtime {
        (rate / 50).max(1) as usize
    } else {
        8192
    };
    let mut pending: Vec<f32> = Vec::with_capacity(piece * 2);
    let mut pos = 0usize;
    let mut eof = false;
    let mut sent: u64 = 0;
    let start = Instant::now();
    loop {
        if control.stopped() {
            return;
        }
        while pending.len() - pos < piece && !eof {
            if pos > 0 {
                pending.drain(..pos);
                pos = 0;
            }
            match decoder.next_chunk(&mut pending) {
                Ok(true) => {}
                Ok(false) => eof = true,
                Err(e) => {
                    control.set_error(e.to_string());
                    eof = true;
                }
            }
            // The decoder has already replaced them; publish its running total.
            stats
                .replaced
                .store(decoder.replaced_samples(), Ordering::Relaxed);
        }
        let n = piece.min(pending.len() - pos);
        if n == 0 {
            break;
        }
        let chunk = &pending[pos..pos + n];
        if realtime {
            let due = start + Duration::from_secs_f64((sent + n as u64) as f64 / rate as f64);
            if !sleep_until(due, control) {
                return;
            }
            let pushed = prod.push_slice(chunk);
            stats.count(pushed, n - pushed);
        } else if !push_all(&mut prod, chunk, stats, control) {
            return;
        }
        sent += n as u64;
        pos += n;
    }
    if let Some(t) = decoder.truncation() {
        control.set_error(t.to_string());
    }
    stats.touch();
    stats.mark_finished();
}

/// Converts whole frames of interleaved s16le PCM in `bytes` to mono `f32` (channels
/// averaged, full scale = 1.0), appending to `out`. Returns the bytes consumed: a
/// trailing partial frame is left for the caller.
pub fn s16le_to_mono(bytes: &[u8], channels: usize, out: &mut Vec<f32>) -> usize {
    let channels = channels.max(1);
    let frame_bytes = 2 * channels;
    let frames = bytes.len() / frame_bytes;
    let scale = 1.0 / (32768.0 * channels as f32);
    out.reserve(frames);
    out.extend(
        bytes[..frames * frame_bytes]
            .chunks_exact(frame_bytes)
            .map(|f| {
                f.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                    .sum::<f32>()
                    * scale
            }),
    );
    frames * frame_bytes
}

/// The raw PCM thread: reads, converts, pushes with back-pressure.
fn pcm_feeder<R: Read>(
    mut reader: R,
    channels: usize,
    mut prod: HeapProd<f32>,
    stats: &SourceStats,
    control: &Control,
) {
    let frame_bytes = 2 * channels;
    let mut buf = vec![0u8; frame_bytes * 8192];
    let mut have = 0usize;
    let mut mono = Vec::with_capacity(4096);
    loop {
        if control.stopped() {
            return;
        }
        match reader.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => {
                have += n;
                // A short read: the writer trickles (a microphone piped in). Let
                // 50 ms gather in the pipe rather than waking for every few
                // milliseconds of sound (the DSP thread takes 100 ms at a time).
                if have < buf.len() / 2 {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                control.set_error(format!("reading raw PCM failed: {e}"));
                break;
            }
        }
        mono.clear();
        let used = s16le_to_mono(&buf[..have], channels, &mut mono);
        buf.copy_within(used..have, 0);
        have -= used;
        // s16le is finite and within ±1 by construction; kept so that every source
        // upholds the same guarantee, whatever its format.
        stats.note_replaced(sanitize(&mut mono));
        if !push_all(&mut prod, &mono, stats, control) {
            return;
        }
    }
    stats.touch();
    stats.mark_finished();
}

/// What the audio callback owns: everything allocated before the stream starts.
struct Capture {
    prod: HeapProd<f32>,
    /// Mono scratch, one entry per frame; callbacks larger than this go in pieces.
    scratch: Box<[f32]>,
    channels: usize,
    stats: Arc<SourceStats>,
}

impl Capture {
    /// The real-time path: no allocation, no locks, no logging, no blocking.
    fn process<T>(&mut self, data: &[T])
    where
        T: SizedSample,
        f32: FromSample<T>,
    {
        let ch = self.channels;
        let scale = 1.0 / ch as f32;
        let (mut pushed, mut dropped, mut replaced) = (0usize, 0usize, 0usize);
        // Each sample is made safe (NaN/Inf → 0, absurd values clamped) as it is
        // converted, before mixing, so one bad channel cannot spoil the others.
        let mut safe = |x: T| {
            let (v, bad) = sanitize_sample(<f32 as FromSample<T>>::from_sample_(x));
            replaced += bad as usize;
            v
        };
        for piece in data.chunks(self.scratch.len() * ch) {
            let frames = piece.len() / ch;
            let out = &mut self.scratch[..frames];
            if ch == 1 {
                for (o, &x) in out.iter_mut().zip(piece) {
                    *o = safe(x);
                }
            } else {
                for (o, frame) in out.iter_mut().zip(piece.chunks_exact(ch)) {
                    let mut sum = 0.0f32;
                    for &x in frame {
                        sum += safe(x);
                    }
                    *o = sum * scale;
                }
            }
            let n = self.prod.push_slice(out);
            pushed += n;
            dropped += frames - n;
        }
        self.stats.note_replaced(replaced);
        self.stats.count(pushed, dropped);
    }
}

fn build_stream<T>(
    device: &cpal::Device,
    config: cpal::StreamConfig,
    mut capture: Capture,
    stats: Arc<SourceStats>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    device.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _: &cpal::InputCallbackInfo| capture.process(data),
        move |e: cpal::Error| stats.note_stream_error(e.kind()),
        None,
    )
}

/// The name hearken uses for a cpal device: its ALSA PCM id (`pulse`, `default`,
/// `hw:CARD=PCH,DEV=0`), or the host's device id elsewhere.
fn device_name(device: &cpal::Device) -> Option<String> {
    device.id().ok().map(|id| id.id().to_string())
}

fn device_label(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| d.name().to_string())
        .unwrap_or_default()
}

/// Finds an input device by exact name (PCM id, full `host:id`, or description name).
fn find_device(host: &cpal::Host, name: &str) -> Result<cpal::Device> {
    if name == "default" {
        return host
            .default_input_device()
            .ok_or_else(|| anyhow!(NO_DEFAULT_DEVICE));
    }
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| anyhow!("cannot list audio devices: {e}"))?
        .collect();
    let by = |f: &dyn Fn(&cpal::Device) -> bool| devices.iter().find(|d| f(d)).cloned();
    let found = by(&|d| device_name(d).as_deref() == Some(name))
        .or_else(|| by(&|d| d.id().map(|id| id.to_string() == name).unwrap_or(false)))
        .or_else(|| by(&|d| device_label(d) == name))
        .or_else(|| host.device_by_id(&cpal::DeviceId::new(host.id(), name)));
    if let Some(d) = found {
        return Ok(d);
    }
    drop(devices);
    // The devices that can really capture (probing them is quiet).
    let inputs: Vec<String> = list_devices()
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.name)
        .collect();
    let available = if inputs.is_empty() {
        "none can be opened".to_string()
    } else {
        inputs.join(", ")
    };
    bail!(
        "audio input device '{name}' not found (available input devices: {available}); \
         list them with `hearken devices`, or use --source file:PATH / --source stdin:RATE:CHANNELS"
    )
}

/// Seconds without a callback after which a running device counts as lost (ALSA
/// does not always report an unplugged device as an error).
const CALLBACK_STALL_MS: u64 = 5_000;

/// Reconnection delays: 0.5 s doubling to 10 s (a safety device should come back
/// soon after its microphone does).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// 0.5 s first, at most 10 s.
    pub fn new() -> Backoff {
        Backoff {
            next: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Whether a running device stream must be reopened: it reported a non-recoverable
/// error, or no callback came for `stall_ms`.
pub fn stream_lost(stream_error: bool, last_callback_ms: u64, now_ms: u64, stall_ms: u64) -> bool {
    stream_error || now_ms.saturating_sub(last_callback_ms) > stall_ms
}

/// What a device is opened with.
struct DeviceStream {
    stream: cpal::Stream,
    rate: u32,
    channels: usize,
    description: String,
}

/// Opens `name` (the default device for `None`) at its default configuration, or
/// at `want_rate` when given (a reconnect must keep the ring's rate), feeding `prod`.
fn open_device(
    name: Option<&str>,
    want_rate: Option<u32>,
    prod: impl FnOnce(u32) -> Result<HeapProd<f32>>,
    stats: &Arc<SourceStats>,
) -> Result<DeviceStream> {
    let host = cpal::default_host();
    let device = match name {
        None => host
            .default_input_device()
            .ok_or_else(|| anyhow!(NO_DEFAULT_DEVICE))?,
        Some(n) => find_device(&host, n)?,
    };
    let dname = device_name(&device).unwrap_or_else(|| "?".into());
    let mut supported = match device.default_input_config() {
        Ok(c) => c,
        Err(e) if matches!(name, None | Some("default")) => {
            return Err(anyhow!("cannot open ALSA device '{dname}': {e}").context(NO_DEFAULT_DEVICE))
        }
        Err(e) => bail!("audio input device '{dname}' cannot capture: {e}"),
    };
    if let Some(rate) = want_rate.filter(|&r| r != supported.sample_rate()) {
        supported = device
            .supported_input_configs()
            .map_err(|e| anyhow!("audio input device '{dname}': {e}"))?
            .find(|c| c.min_sample_rate() <= rate && rate <= c.max_sample_rate())
            .map(|c| c.with_sample_rate(rate))
            .ok_or_else(|| {
                anyhow!(
                    "audio input device '{dname}' came back without {rate} Hz (it offers {} Hz \
                     now); restart hearken to use the new rate",
                    supported.sample_rate()
                )
            })?;
    }
    let format = supported.sample_format();
    let config = supported.config();
    let rate = config.sample_rate;
    let channels = config.channels.max(1) as usize;
    let capture = Capture {
        prod: prod(rate)?,
        scratch: vec![0.0f32; rate.max(1024) as usize].into_boxed_slice(),
        channels,
        stats: stats.clone(),
    };
    let s = stats.clone();
    let stream = match format {
        SampleFormat::I8 => build_stream::<i8>(&device, config, capture, s),
        SampleFormat::I16 => build_stream::<i16>(&device, config, capture, s),
        SampleFormat::I24 => build_stream::<cpal::I24>(&device, config, capture, s),
        SampleFormat::I32 => build_stream::<i32>(&device, config, capture, s),
        SampleFormat::I64 => build_stream::<i64>(&device, config, capture, s),
        SampleFormat::U8 => build_stream::<u8>(&device, config, capture, s),
        SampleFormat::U16 => build_stream::<u16>(&device, config, capture, s),
        SampleFormat::U24 => build_stream::<cpal::U24>(&device, config, capture, s),
        SampleFormat::U32 => build_stream::<u32>(&device, config, capture, s),
        SampleFormat::U64 => build_stream::<u64>(&device, config, capture, s),
        SampleFormat::F32 => build_stream::<f32>(&device, config, capture, s),
        SampleFormat::F64 => build_stream::<f64>(&device, config, capture, s),
        other => bail!("audio input device '{dname}': unsupported sample format {other}"),
    }
    .map_err(|e| anyhow!("cannot open audio input device '{dname}': {e}"))?;
    // A fresh stream has not called back yet: start its stall clock now.
    stats.touch();
    stream
        .play()
        .map_err(|e| anyhow!("cannot start audio input device '{dname}': {e}"))?;
    let label = device_label(&device);
    let description = format!(
        "device {dname}{}: {rate} Hz, {channels} ch, {format}",
        if label.is_empty() || label == dname {
            String::new()
        } else {
            format!(" ({label})")
        }
    );
    Ok(DeviceStream {
        stream,
        rate,
        channels,
        description,
    })
}

/// Opens the device in a capture thread that owns the stream (cpal streams need
/// not be `Send`) and keeps it alive: when the device reports an error or stops
/// calling back (unplugged, taken by another program), the thread drops the stream
/// and reopens the device with backoff, at the same rate, into the same ring.
fn start_cpal(name: Option<&str>, opts: &SourceOptions) -> Result<(Source, SourceConsumer)> {
    let stats = Arc::new(SourceStats::default());
    let control = Arc::new(Control::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = {
        let (name, opts, stats, control) = (
            name.map(String::from),
            *opts,
            stats.clone(),
            control.clone(),
        );
        std::thread::Builder::new()
            .name("hearken-capture".into())
            .spawn(move || {
                let mut ring_arc = None;
                let first = open_device(
                    name.as_deref(),
                    None,
                    |rate| {
                        let (prod, cons, rb) = shared_ring(rate, &opts)?;
                        ring_arc = Some((rb, cons));
                        Ok(prod)
                    },
                    &stats,
                );
                let (dev, (rb, cons)) = match (first, ring_arc) {
                    (Ok(d), Some(r)) => (d, r),
                    (Err(e), _) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    (Ok(_), None) => unreachable!("the ring is made before the stream"),
                };
                let DeviceStream {
                    stream,
                    rate,
                    channels,
                    description,
                } = dev;
                if ready_tx
                    .send(Ok((rate, channels, description.clone(), cons)))
                    .is_err()
                {
                    return;
                }
                keep_alive(
                    name.as_deref(),
                    stream,
                    rate,
                    &description,
                    &rb,
                    &stats,
                    &control,
                );
            })
            .context("cannot start the audio capture thread")?
    };
    let (rate, channels, description, cons) = ready_rx
        .recv()
        .map_err(|_| anyhow!("the audio capture thread ended while opening the device"))??;
    Ok((
        Source {
            sample_rate: rate,
            channels,
            description,
            stats,
            control,
            stream: None,
            thread: Some(thread),
            may_block: false,
        },
        cons,
    ))
}

/// The capture thread's loop after the first open: watches the stream, reopens the
/// device when it is lost, and drops the stream when told to stop.
fn keep_alive(
    name: Option<&str>,
    stream: cpal::Stream,
    rate: u32,
    description: &str,
    rb: &Arc<HeapRb<f32>>,
    stats: &Arc<SourceStats>,
    control: &Control,
) {
    let mut stream = Some(stream);
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    let mut last_error = String::new();
    while !control.stopped() {
        std::thread::sleep(Duration::from_millis(50));
        match &stream {
            Some(_) => {
                let error = stats.stream_error.load(Ordering::Acquire);
                let last = stats.last_callback_ms.load(Ordering::Relaxed);
                if !stream_lost(error, last, now_ms(), CALLBACK_STALL_MS) {
                    continue;
                }
                let why = if error {
                    error_kind_text(stats.stream_error_kind.load(Ordering::Relaxed))
                } else {
                    "no audio for 5 s"
                };
                tracing::warn!(
                    device = description,
                    "audio device lost ({why}); reconnecting with backoff"
                );
                // Dropping the stream drops its callback and with it the ring's
                // producer, so a new one can be made for the next stream.
                drop(stream.take());
                stats.device_lost.store(true, Ordering::Release);
                backoff = Backoff::new();
                retry_at = Instant::now() + backoff.next_delay();
                last_error.clear();
            }
            None if Instant::now() >= retry_at => {
                stats.touch_waiting();
                stats.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
                let _ = stats.stream_error_kind.swap(0, Ordering::Relaxed);
                stats.stream_error.store(false, Ordering::Release);
                match open_device(name, Some(rate), |_| Ok(HeapProd::new(rb.clone())), stats) {
                    Ok(d) => {
                        tracing::info!(
                            device = d.description.as_str(),
                            "audio device back; listening again"
                        );
                        stream = Some(d.stream);
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        stats.device_lost.store(false, Ordering::Release);
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        if e != last_error {
                            tracing::warn!(
                                device = description,
                                "cannot reopen the audio device yet: {e}"
                            );
                            last_error = e;
                        }
                        retry_at = Instant::now() + backoff.next_delay();
                    }
                }
            }
            None => {
                // Waiting to retry: the capture thread is alive (for a watchdog).
                stats.touch_waiting();
            }
        }
    }
    drop(stream);
}

/// One supported input configuration range of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRange {
    /// Channels.
    pub channels: u16,
    /// Lowest sample rate, Hz.
    pub min_rate: u32,
    /// Highest sample rate, Hz.
    pub max_rate: u32,
    /// Sample format (`f32`, `i16`, …).
    pub sample_format: String,
}

/// Compact lines for a device's configurations: ranges that differ only in channel
/// count are merged, e.g. `"1-32 ch, 1-384000 Hz, f32"`.
pub fn config_summary(configs: &[ConfigRange]) -> Vec<String> {
    let mut groups: Vec<((String, u32, u32), Vec<u16>)> = Vec::new();
    for c in configs {
        let key = (c.sample_format.clone(), c.min_rate, c.max_rate);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, chans)) => chans.push(c.channels),
            None => groups.push((key, vec![c.channels])),
        }
    }
    let mut lines = Vec::new();
    for ((format, min_rate, max_rate), mut chans) in groups {
        chans.sort_unstable();
        chans.dedup();
        let mut runs: Vec<String> = Vec::new();
        let mut i = 0;
        while i < chans.len() {
            let mut j = i;
            while j + 1 < chans.len() && chans[j + 1] == chans[j] + 1 {
                j += 1;
            }
            runs.push(if j > i {
                format!("{}-{}", chans[i], chans[j])
            } else {
                chans[i].to_string()
            });
            i = j + 1;
        }
        let rates = if min_rate == max_rate {
            format!("{min_rate} Hz")
        } else {
            format!("{min_rate}-{max_rate} Hz")
        };
        lines.push(format!("{} ch, {rates}, {format}", runs.join(",")));
    }
    lines
}

/// An input device as `hearken devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The name to pass as `--source device:NAME`.
    pub name: String,
    /// The host's human-readable description (may be empty).
    pub description: String,
    /// This is the host's default input device.
    pub is_default: bool,
    /// The configuration `--source` would use: "RATE Hz, CH ch, FORMAT".
    pub default_config: Option<String>,
    /// Supported input configurations.
    pub configs: Vec<ConfigRange>,
}

/// Lists the input devices that can be opened for capture, with their supported
/// configurations. Silence generators (ALSA `null`) are left out.
///
/// ALSA and JACK plugins print diagnostics to stderr while they are probed; stderr is
/// redirected to `/dev/null` for the duration, so call this before other threads log.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let _quiet = QuietStderr::new();
    let host = cpal::default_host();
    let default = host.default_input_device();
    let devices = host
        .input_devices()
        .map_err(|e| anyhow!("cannot list audio devices: {e}"))?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for device in devices {
        let Some(name) = device_name(&device) else {
            continue;
        };
        if name == "null" || !seen.insert(name.clone()) {
            continue;
        }
        let Ok(configs) = device.supported_input_configs() else {
            continue;
        };
        let configs: Vec<ConfigRange> = configs
            .map(|c| ConfigRange {
                channels: c.channels(),
                min_rate: c.min_sample_rate(),
                max_rate: c.max_sample_rate(),
                sample_format: c.sample_format().to_string(),
            })
            .collect();
        if configs.is_empty() {
            continue;
        }
        let default_config = device.default_input_config().ok().map(|c| {
            format!(
                "{} Hz, {} ch, {}",
                c.sample_rate(),
                c.channels(),
                c.sample_format()
            )
        });
        out.push(DeviceInfo {
            is_default: default.as_ref() == Some(&device),
            description: device_label(&device),
            name,
            default_config,
            configs,
        });
    }
    Ok(out)
}

/// Redirects file descriptor 2 to `/dev/null` until dropped (Unix; no-op elsewhere).
struct QuietStderr {
    #[cfg(unix)]
    saved: Option<libc::c_int>,
}

impl QuietStderr {
    fn new() -> Self {
        #[cfg(unix)]
        {
            // SAFETY: plain fd calls; every fd opened here is closed or kept in `saved`.
            unsafe {
                let saved = libc::dup(2);
                if saved < 0 {
                    return QuietStderr { saved: None };
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if null < 0 {
                    libc::close(saved);
                    return QuietStderr { saved: None };
                }
                libc::dup2(null, 2);
                libc::close(null);
                QuietStderr { saved: Some(saved) }
            }
        }
        #[cfg(not(unix))]
        QuietStderr {}
    }
}

impl Drop for QuietStderr {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            // SAFETY: `saved` is a valid fd duplicated from stderr in `new`.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbuf::traits::{Consumer, Observer};

    #[test]
    fn sources_and_rings_move_between_threads() {
        fn send<T: Send>() {}
        send::<Source>();
        send::<SourceConsumer>();
        send::<Capture>();
    }

    #[test]
    fn config_summary_merges_channel_counts() {
        let c = |channels, min_rate, max_rate, f: &str| ConfigRange {
            channels,
            min_rate,
            max_rate,
            sample_format: f.into(),
        };
        let configs = [
            c(1, 8000, 48000, "i16"),
            c(2, 8000, 48000, "i16"),
            c(3, 8000, 48000, "i16"),
            c(6, 8000, 48000, "i16"),
            c(2, 48000, 48000, "f32"),
        ];
        assert_eq!(
            config_summary(&configs),
            vec!["1-3,6 ch, 8000-48000 Hz, i16", "2 ch, 48000 Hz, f32"]
        );
    }

    #[test]
    fn spec_parses_and_round_trips() {
        let cases = [
            ("default", SourceSpec::Default),
            ("device:pulse", SourceSpec::Device("pulse".into())),
            (
                "device:hw:CARD=PCH,DEV=0",
                SourceSpec::Device("hw:CARD=PCH,DEV=0".into()),
            ),
            (
                "file:/tmp/a b.wav",
                SourceSpec::File(PathBuf::from("/tmp/a b.wav")),
            ),
            ("file:x:y.flac", SourceSpec::File(PathBuf::from("x:y.flac"))),
            (
                "stdin:16000:1",
                SourceSpec::Stdin {
                    rate: 16000,
                    channels: 1,
                },
            ),
            (
                "stdin:48000:2",
                SourceSpec::Stdin {
                    rate: 48000,
                    channels: 2,
                },
            ),
        ];
        for (text, spec) in cases {
            let parsed: SourceSpec = text.parse().unwrap();
            assert_eq!(parsed, spec, "{text}");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<SourceSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn spec_errors_name_the_accepted_forms() {
        for bad in [
            "",
            "mic",
            "Default",
            "device:",
            "file:",
            "stdin",
            "stdin:16000",
            "stdin:abc:1",
            "stdin:16000:x",
            "stdin:16000:0",
            "stdin:100:1",
            "stdin:16000:1000",
        ] {
            let e = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(e.contains(SOURCE_FORMS), "{bad}: {e}");
            assert!(e.contains(&format!("'{bad}'")), "{bad}: {e}");
        }
        let e = "stdin:16000".parse::<SourceSpec>().unwrap_err().to_string();
        assert!(e.contains("rate and a channel count"), "{e}");
    }

    #[test]
    fn s16le_frames_mix_to_mono_and_keep_partial_frames() {
        let mut bytes = Vec::new();
        for s in [16384i16, -16384, 32767, 32767, -32768, 0] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        bytes.push(0x12); // half a sample
        let mut out = Vec::new();
        let used = s16le_to_mono(&bytes, 2, &mut out);
        assert_eq!(used, 12);
        assert_eq!(out.len(), 3);
        assert!((out[0] - 0.0).abs() < 1e-6);
        assert!((out[1] - 32767.0 / 32768.0).abs() < 1e-6);
        assert!((out[2] + 0.5).abs() < 1e-6);
        let mut out = Vec::new();
        assert_eq!(s16le_to_mono(&bytes[..5], 1, &mut out), 4);
        assert_eq!(out, vec![0.5, -0.5]);
        let mut out = Vec::new();
        assert_eq!(s16le_to_mono(&bytes[..3], 2, &mut out), 0);
        assert!(out.is_empty());
    }

    /// Drains `cons` in a thread until the source is finished and the ring empty.
    fn drain(
        mut cons: SourceConsumer,
        stats: Arc<SourceStats>,
    ) -> std::thread::JoinHandle<Vec<f32>> {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0.0f32; 333];
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = stats.finished.load(Ordering::Acquire) || !cons.write_is_held();
                let n = cons.pop_slice(&mut buf);
                all.extend_from_slice(&buf[..n]);
                if n == 0 {
                    if done || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            all
        })
    }

    #[test]
    fn fast_file_source_delivers_every_sample_through_a_tiny_ring() {
        let path = crate::shared_dir().join("audio/gunshots.wav");
        let mut dec = FileDecoder::open(&path).unwrap();
        let mut expected = Vec::new();
        while dec.next_chunk(&mut expected).unwrap() {}
        let opts = SourceOptions {
            ring_seconds: 0.05,
            realtime: false,
        };
        let (source, cons) = Source::start(&SourceSpec::File(path.clone()), &opts).unwrap();
        assert_eq!(source.sample_rate, dec.info().sample_rate);
        assert!(cons.capacity().get() < expected.len() / 10);
        let got = drain(cons, source.stats.clone()).join().unwrap();
        assert!(source.is_finished());
        assert_eq!(source.error(), None);
        assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 0);
        assert_eq!(
            source.stats.samples.load(Ordering::Relaxed),
            expected.len() as u64
        );
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "samples differ");
        assert!(source.stats.last_callback_ms.load(Ordering::Relaxed) > 0);
        source.stop();
    }

    fn write_tone(path: &Path, rate: u32, channels: u16, seconds: f64) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        let frames = (rate as f64 * seconds) as usize;
        for i in 0..frames {
            let v = (0.5 * (i as f64 * 440.0 * std::f64::consts::TAU / rate as f64).sin() * 32767.0)
                as i16;
            for _ in 0..channels {
                w.write_sample(v).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    fn temp_wav(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hearken-source-{}-{name}.wav", std::process::id()))
    }

    #[test]
    fn realtime_file_source_is_paced_by_the_clock() {
        let path = temp_wav("paced");
        write_tone(&path, 16000, 2, 1.0);
        let opts = SourceOptions {
            ring_seconds: 0.1,
            realtime: true,
        };
        let t0 = Instant::now();
        let (source, cons) = Source::start(&SourceSpec::File(path.clone()), &opts).unwrap();
        assert_eq!((source.sample_rate, source.channels), (16000, 2));
        let got = drain(cons, source.stats.clone()).join().unwrap();
        let took = t0.elapsed().as_secs_f64();
        std::fs::remove_file(&path).ok();
        assert!(source.is_finished());
        assert_eq!(got.len(), 16000);
        assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 0);
        assert!((0.95..1.5).contains(&took), "took {took:.3} s");
    }

    #[test]
    fn realtime_file_source_drops_when_nobody_reads() {
        let path = temp_wav("drops");
        write_tone(&path, 8000, 1, 0.5);
        let opts = SourceOptions {
            ring_seconds: 0.1,
            realtime: true,
        };
        let (source, cons) = Source::start(&SourceSpec::File(path.clone()), &opts).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !source.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_file(&path).ok();
        assert!(source.is_finished());
        let cap = cons.capacity().get() as u64;
        assert_eq!(source.stats.samples.load(Ordering::Relaxed), cap);
        assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 4000 - cap);
        assert_eq!(cons.occupied_len() as u64, cap);
    }

    #[test]
    fn stop_returns_promptly_from_back_pressure_and_pacing() {
        let path = temp_wav("stop");
        write_tone(&path, 16000, 1, 3.0);
        for realtime in [false, true] {
            let opts = SourceOptions {
                ring_seconds: 0.05,
                realtime,
            };
            let (source, _cons) = Source::start(&SourceSpec::File(path.clone()), &opts).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let t0 = Instant::now();
            source.stop();
            assert!(t0.elapsed() < Duration::from_millis(200), "{realtime}");
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn file_errors_come_from_start() {
        let opts = SourceOptions::default();
        let missing = SourceSpec::File("/nonexistent/hearken.wav".into());
        let e = Source::start(&missing, &opts).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/hearken.wav"), "{e}");
        let path = temp_wav("garbage");
        std::fs::write(&path, b"this is not audio at all, not even close").unwrap();
        let e = Source::start(&SourceSpec::File(path.clone()), &opts);
        std::fs::remove_file(&path).ok();
        assert!(e.is_err());
        let bad = SourceOptions {
            ring_seconds: 0.0,
            realtime: false,
        };
        let e = Source::start(&SourceSpec::File(path), &bad)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ring_seconds"), "{e}");
    }

    #[test]
    fn raw_pcm_source_mixes_pushes_everything_and_finishes() {
        // 5000 stereo frames (+ a dangling half frame) through a 64-sample ring.
        let mut bytes = Vec::new();
        for i in 0..5000i32 {
            let l = (i % 200 - 100) as i16 * 100;
            bytes.extend_from_slice(&l.to_le_bytes());
            bytes.extend_from_slice(&(-l).to_le_bytes());
        }
        bytes.extend_from_slice(&[1, 2]);
        let opts = SourceOptions {
            ring_seconds: 0.001,
            realtime: true,
        };
        let (source, cons) =
            Source::start_raw_s16le(std::io::Cursor::new(bytes), 8000, 2, &opts, "test".into())
                .unwrap();
        let got = drain(cons, source.stats.clone()).join().unwrap();
        assert!(source.is_finished());
        assert_eq!(got.len(), 5000);
        assert!(got.iter().all(|&x| x == 0.0));
        assert_eq!(source.stats.overruns.load(Ordering::Relaxed), 0);
        assert_eq!(source.error(), None);
        source.stop();
    }

    #[test]
    fn stop_detaches_a_reader_blocked_forever() {
        struct Never;
        impl Read for Never {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
        }
        let (source, _cons) =
            Source::start_raw_s16le(Never, 16000, 1, &SourceOptions::default(), "never".into())
                .unwrap();
        let t0 = Instant::now();
        source.stop();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn device_errors_point_to_the_alternatives() {
        let opts = SourceOptions::default();
        let spec = SourceSpec::Device("no-such-device-hearken".into());
        let e = format!("{:#}", Source::start(&spec, &opts).err().unwrap());
        assert!(e.contains("'no-such-device-hearken' not found"), "{e}");
        assert!(
            e.contains("hearken devices") && e.contains("--source file:PATH"),
            "{e}"
        );
        // Without a sound card (and no sound server reachable) the default device fails
        // with the documented message; with one, it captures.
        match Source::start(&SourceSpec::Default, &opts) {
            Ok((source, _ring)) => source.stop(),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.starts_with(NO_DEFAULT_DEVICE), "{e}");
            }
        }
    }

    /// A stereo capture callback feeding a ring of `ring` samples.
    fn stereo_capture(ring: usize) -> (Capture, SourceConsumer, Arc<SourceStats>) {
        let (prod, cons) = HeapRb::<f32>::new(ring).split();
        let stats = Arc::new(SourceStats::default());
        let cap = Capture {
            prod,
            scratch: vec![0.0; 2].into_boxed_slice(),
            channels: 2,
            stats: stats.clone(),
        };
        (cap, cons, stats)
    }

    #[test]
    fn capture_callback_mixes_converts_and_counts_overruns() {
        let (mut cap, mut cons, stats) = stereo_capture(6);
        // i16 stereo, 4 frames processed in pieces of 2 frames.
        cap.process::<i16>(&[16384, 16384, -16384, 0, 0, 0, 32767, -32768]);
        let mut out = [0.0f32; 8];
        let n = cons.pop_slice(&mut out);
        assert_eq!(n, 4);
        assert_eq!(&out[..4], &[0.5, -0.25, 0.0, -0.5 / 32768.0]);
        // u8 (128 = silence), 8 frames into a ring of 6: 2 overruns.
        cap.process::<u8>(&[128; 16]);
        assert_eq!(stats.samples.load(Ordering::Relaxed), 10);
        assert_eq!(stats.overruns.load(Ordering::Relaxed), 2);
        assert_eq!(cons.pop_slice(&mut out), 6);
        assert!(out[..6].iter().all(|&x| x == 0.0));
        stats.note_stream_error(cpal::ErrorKind::Xrun);
        assert!(!stats.stream_error.load(Ordering::Relaxed));
        stats.note_stream_error(cpal::ErrorKind::DeviceNotAvailable);
        assert!(stats.stream_error.load(Ordering::Relaxed));
        assert_eq!(stats.xruns.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn capture_callback_replaces_non_finite_samples_in_place() {
        let (mut cap, mut cons, stats) = stereo_capture(16);
        // f32 stereo: a NaN beside a good sample, ±Inf, a huge value.
        cap.process::<f32>(&[
            0.5,
            f32::NAN,
            0.25,
            0.25,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -0.5,
        ]);
        let mut out = [0.0f32; 8];
        assert_eq!(cons.pop_slice(&mut out), 4);
        assert_eq!(
            &out[..4],
            &[0.25, 0.25, 0.0, (crate::audio::SAMPLE_LIMIT - 0.5) / 2.0]
        );
        assert_eq!(stats.replaced.load(Ordering::Relaxed), 4);
        assert_eq!(stats.samples.load(Ordering::Relaxed), 4);
        // Good audio adds nothing.
        cap.process::<f32>(&[0.1, -0.1]);
        assert_eq!(stats.replaced.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn file_source_replaces_and_counts_non_finite_samples() {
        let path = temp_wav("nan");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..4000 {
            let (l, r) = match i {
                100 => (f32::NAN, 0.5),
                2000 => (f32::INFINITY, f32::NEG_INFINITY),
                _ => (0.25, 0.25),
            };
            w.write_sample(l).unwrap();
            w.write_sample(r).unwrap();
        }
        w.finalize().unwrap();
        let opts = SourceOptions {
            ring_seconds: 0.1,
            realtime: false,
        };
        let (source, cons) = Source::start(&SourceSpec::File(path.clone()), &opts).unwrap();
        let got = drain(cons, source.stats.clone()).join().unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(got.len(), 4000);
        assert_eq!(source.stats.replaced.load(Ordering::Relaxed), 3);
        assert_eq!((got[100], got[2000], got[0]), (0.25, 0.0, 0.25));
        assert!(got.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn reconnect_backoff_doubles_to_ten_seconds() {
        let mut b = Backoff::new();
        let d: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
    }

    #[test]
    fn a_stream_is_lost_on_an_error_or_a_long_silence_of_callbacks() {
        assert!(!stream_lost(false, 10_000, 14_000, 5_000));
        assert!(stream_lost(false, 10_000, 15_001, 5_000));
        assert!(stream_lost(true, 10_000, 10_000, 5_000));
        // A clock that went backwards is not a stall.
        assert!(!stream_lost(false, 10_000, 9_000, 5_000));
    }
}
