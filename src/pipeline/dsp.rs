//! The DSP stage's thread: capture ring → resample, gain, levels, log-mel →
//! blocks of frames for the inference stage (and the analysed audio for the clip
//! writer). The pure parts live in `audio` (resampling) and `dsp` (the frontend).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::Sender;
use ringbuf::traits::{Consumer, Observer};

use super::Progress;
use crate::audio::source::SourceStats;
use crate::audio::StreamResampler;
use crate::dsp::LogMel;
use crate::scoring::LEVEL_SILENCE;

/// When to warn about replaced (non-finite or absurd) samples: as soon as the count
/// first grows, then at most once per interval while it keeps growing, and once at
/// the end of the stream if it grew since the last warning — so a device that
/// sends garbage all the time cannot flood the log.
#[derive(Debug, Clone)]
pub struct ReplacedWarnings {
    interval: Duration,
    logged: u64,
    last: Option<Instant>,
}

impl ReplacedWarnings {
    /// Warnings at most every `interval`.
    pub fn new(interval: Duration) -> Self {
        ReplacedWarnings {
            interval,
            logged: 0,
            last: None,
        }
    }

    /// The count to warn about now, if any, given the running total `count` at time
    /// `now`; `at_end` for the last call of the stream.
    pub fn check(&mut self, count: u64, now: Instant, at_end: bool) -> Option<u64> {
        if count <= self.logged {
            return None;
        }
        let due = at_end
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if !due {
            return None;
        }
        self.logged = count;
        self.last = Some(now);
        Some(count)
    }
}

/// Per-frame levels: mean power of consecutive `hop`-sample blocks, in dBFS.
pub(super) struct LevelMeter {
    hop: usize,
    acc: f64,
    n: usize,
    pending: std::collections::VecDeque<f32>,
    last: f32,
}

impl LevelMeter {
    fn new(hop: usize) -> Self {
        LevelMeter {
            hop,
            acc: 0.0,
            n: 0,
            pending: Default::default(),
            last: LEVEL_SILENCE,
        }
    }

    fn push(&mut self, x: &[f32]) {
        for &v in x {
            self.acc += (v as f64) * (v as f64);
            self.n += 1;
            if self.n == self.hop {
                let ms = self.acc / self.hop as f64;
                let db = if ms <= 1e-12 {
                    LEVEL_SILENCE as f64
                } else {
                    10.0 * ms.log10()
                };
                self.pending.push_back(db.max(LEVEL_SILENCE as f64) as f32);
                self.acc = 0.0;
                self.n = 0;
            }
        }
    }

    /// One level per frame just emitted.
    fn take(&mut self, frames: usize, out: &mut Vec<f32>) {
        for _ in 0..frames {
            if let Some(l) = self.pending.pop_front() {
                self.last = l;
            }
            out.push(self.last);
        }
    }
}

/// Log-mel frames and their levels, DSP → inference.
pub(super) struct Block {
    pub(super) frames: Vec<f32>,
    pub(super) levels: Vec<f32>,
}

/// The DSP stage: takes the source's samples off the capture ring, resamples them,
/// measures levels and computes log-mel frames, and hands blocks of frames to the
/// inference stage (and the analysed audio to the clip writer, if any).
pub(super) struct DspStage {
    pub(super) rate: u32,
    pub(super) fe_params: crate::dsp::FrontendParams,
    pub(super) stats: Arc<SourceStats>,
    pub(super) progress: Arc<Progress>,
    pub(super) source: String,
    pub(super) gain: f32,
    pub(super) warn_interval: Duration,
    pub(super) cons: crate::audio::source::SourceConsumer,
    pub(super) btx: Sender<Block>,
    pub(super) audio_tap: Option<Sender<crate::clips::AudioChunk>>,
}

impl DspStage {
    /// Runs until the source has finished and the ring is empty, or the inference
    /// stage is gone.
    pub(super) fn run(self) -> Result<()> {
        let DspStage {
            rate,
            fe_params,
            stats: dsp_stats,
            progress: dsp_progress,
            source: dsp_source,
            gain,
            warn_interval,
            mut cons,
            btx,
            audio_tap,
        } = self;
        let mut rs = StreamResampler::new(rate, fe_params.sample_rate)?;
        let mut fe = LogMel::new(&fe_params);
        let mut meter = LevelMeter::new(fe_params.hop_length);
        let mut buf = vec![0.0f32; 4096];
        let mut resampled = Vec::new();
        let mut warnings = ReplacedWarnings::new(warn_interval);
        // Stream index of the next analysed sample (for the audio tap).
        let mut tapped = 0u64;
        dsp_stats.set_consumer(std::thread::current());
        // Woken for every 100 ms of sound at most: windows are 0.5 s apart, so
        // waking for each few-millisecond callback only costs context switches.
        dsp_stats.set_wake_every(u64::from(rate / 10));
        // The source counts damaged samples (from its callback or reader);
        // this thread, which may log, reports them.
        let warn_replaced = |warnings: &mut ReplacedWarnings, at_end: bool| {
            let count = dsp_stats.replaced.load(Ordering::Relaxed);
            if let Some(n) = warnings.check(count, Instant::now(), at_end) {
                tracing::warn!(
                    source = dsp_source.as_str(),
                    replaced_samples = n,
                    "{dsp_source}: {n} NaN, infinite or out-of-range samples replaced \
                     so far: the audio is damaged; they were silenced or clamped and \
                     the rest is analysed"
                );
            }
        };
        loop {
            let n = cons.pop_slice(&mut buf);
            if n == 0 {
                if dsp_stats.finished.load(Ordering::Acquire) && cons.is_empty() {
                    break;
                }
                // The source wakes this thread when samples arrive or it
                // ends; the timeout only bounds a missed wake-up.
                std::thread::park_timeout(Duration::from_millis(100));
                continue;
            }
            dsp_progress
                .dsp_samples
                .fetch_add(n as u64, Ordering::Relaxed);
            warn_replaced(&mut warnings, false);
            if gain != 1.0 {
                buf[..n].iter_mut().for_each(|x| *x *= gain);
            }
            resampled.clear();
            rs.push(&buf[..n], &mut resampled);
            if let Some(tap) = &audio_tap {
                if !resampled.is_empty() {
                    let _ = tap.try_send((tapped, resampled.clone()));
                }
            }
            tapped += resampled.len() as u64;
            let block = analyse(&mut fe, &mut meter, &resampled, false);
            if !block.frames.is_empty() {
                // Counted before the send, which blocks while inference is
                // behind: the watchdog sees the block waiting.
                dsp_progress.blocks_sent.fetch_add(1, Ordering::Relaxed);
                if btx.send(block).is_err() {
                    return Ok(());
                }
            }
        }
        warn_replaced(&mut warnings, true);
        resampled.clear();
        rs.finish(&mut resampled);
        let block = analyse(&mut fe, &mut meter, &resampled, true);
        if !block.frames.is_empty() {
            dsp_progress.blocks_sent.fetch_add(1, Ordering::Relaxed);
            let _ = btx.send(block);
        }
        Ok(())
    }
}

fn analyse(fe: &mut LogMel, meter: &mut LevelMeter, samples: &[f32], end: bool) -> Block {
    let n_mels = fe.params().n_mels;
    let mut frames = Vec::new();
    meter.push(samples);
    fe.push(samples, &mut frames);
    if end {
        fe.finish(&mut frames);
    }
    let mut levels = Vec::with_capacity(frames.len() / n_mels);
    meter.take(frames.len() / n_mels, &mut levels);
    Block { frames, levels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_sample_warnings_are_prompt_then_rate_limited() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = ReplacedWarnings::new(Duration::from_secs(10));
        assert_eq!(w.check(0, s(0), false), None, "nothing replaced");
        assert_eq!(w.check(2, s(10), false), Some(2), "the first one at once");
        assert_eq!(w.check(2, s(20_000), false), None, "no growth, no warning");
        assert_eq!(w.check(5, s(5_000), false), None, "too soon after the last");
        assert_eq!(w.check(7, s(10_010), false), Some(7));
        assert_eq!(
            w.check(9, s(10_020), true),
            Some(9),
            "the end reports the rest"
        );
        assert_eq!(w.check(9, s(10_030), true), None);
    }
}
