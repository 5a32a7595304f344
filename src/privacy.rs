//! Anonymising audio before it is classified: the two methods of the SIFIS-Home
//! privacy-aware classifier, done right.
//!
//! - [`scramble`] cuts the audio into short blocks and shuffles their order. A sound
//!   event (a glass break, an alarm's beeps, a gunshot) is still there, but speech
//!   longer than a block loses its word order; blocks of 0.5 s or less break words
//!   themselves. Joints are cross-faded so the cuts add no clicks (a click is
//!   broadband and could itself look like an impact) and no dips (a dip every
//!   block is a rhythm of its own).
//! - [`dp_noise`] adds Laplace noise, independently per channel (so stereo works),
//!   at a level set relative to each channel's own loudness, and then low-pass
//!   filters the result, so the filter is actually applied.
//!
//! Both take interleaved samples and are deterministic for a seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use realfft::RealFftPlanner;
use serde::{Deserialize, Serialize};

/// An anonymisation step applied to audio before it is classified.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anonymize {
    /// [`scramble`] with blocks of `block_s` seconds.
    Scramble {
        /// Block length, seconds.
        block_s: f64,
        /// Shuffle seed.
        seed: u64,
    },
    /// [`dp_noise`] at `snr_db`, low-passed at `cutoff_hz`.
    DpNoise {
        /// Noise level below each channel's RMS, dB.
        snr_db: f64,
        /// Low-pass cutoff, Hz.
        cutoff_hz: f64,
        /// Noise seed.
        seed: u64,
    },
}

impl Anonymize {
    /// The method's name as the SIFIS-Home routes spell it (`scramble`, `dp_noise`).
    pub fn name(&self) -> &'static str {
        match self {
            Anonymize::Scramble { .. } => "scramble",
            Anonymize::DpNoise { .. } => "dp_noise",
        }
    }

    /// `samples` (interleaved, `channels` per frame, at `rate` Hz) anonymised.
    pub fn apply(&self, samples: &[f32], channels: usize, rate: u32) -> Vec<f32> {
        match *self {
            Anonymize::Scramble { block_s, seed } => {
                scramble(samples, channels, rate, block_s, seed)
            }
            Anonymize::DpNoise {
                snr_db,
                cutoff_hz,
                seed,
            } => dp_noise(samples, channels, rate, snr_db, cutoff_hz, seed),
        }
    }
}

/// Longest cross-fade at a block joint, seconds.
const FADE_S: f64 = 0.005;

/// `samples` (interleaved, `channels` per frame, at `rate` Hz) cut into blocks of
/// `block_s` seconds, in a shuffled order; the last, shorter block is shuffled
/// with the others. Every block appears exactly once, so the length is unchanged.
/// The last few milliseconds of each block cross-fade (equal power) into the audio
/// that led into the next block, so a joint neither clicks nor dips.
pub fn scramble(samples: &[f32], channels: usize, rate: u32, block_s: f64, seed: u64) -> Vec<f32> {
    let channels = channels.max(1);
    let frames = samples.len() / channels;
    let block = ((block_s * rate as f64).round() as usize).max(1);
    let mut order: Vec<usize> = (0..frames.div_ceil(block)).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let fade = ((FADE_S * rate as f64) as usize).min(block / 4);
    let frame = |f: usize, c: usize| samples[f * channels + c];
    let mut out = Vec::with_capacity(frames * channels);
    for (k, &b) in order.iter().enumerate() {
        let (start, end) = (b * block, ((b + 1) * block).min(frames));
        let len = end - start;
        // Where the next block starts in the input, and how much lead-in it has.
        let next = order.get(k + 1).map(|&n| n * block);
        for i in 0..len {
            let into = i + fade.min(len) >= len;
            for c in 0..channels {
                let a = frame(start + i, c);
                let v = match next {
                    // (The input's first block has no lead-in: it is cut into.)
                    Some(n) if into && fade > 0 && n >= fade => {
                        let j = i + fade.min(len) - len; // 0..fade
                        let t = (j as f64 + 0.5) / fade as f64 * std::f64::consts::FRAC_PI_2;
                        let lead = frame(n + j - fade, c);
                        a * t.cos() as f32 + lead * t.sin() as f32
                    }
                    _ => a,
                };
                out.push(v);
            }
        }
    }
    out
}

/// `samples` (interleaved) with Laplace noise added to each channel at `snr_db`
/// below that channel's RMS, then low-passed at `cutoff_hz` (none at or above
/// Nyquist). A silent channel stays silent.
pub fn dp_noise(
    samples: &[f32],
    channels: usize,
    rate: u32,
    snr_db: f64,
    cutoff_hz: f64,
    seed: u64,
) -> Vec<f32> {
    let channels = channels.max(1);
    let frames = samples.len() / channels;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = samples[..frames * channels].to_vec();
    for c in 0..channels {
        let mut x: Vec<f32> = (0..frames).map(|i| samples[i * channels + c]).collect();
        let rms =
            (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / frames.max(1) as f64).sqrt();
        // A Laplace variable of scale b has variance 2 b².
        let b = rms * 10f64.powf(-snr_db / 20.0) / std::f64::consts::SQRT_2;
        if b > 0.0 {
            for v in x.iter_mut() {
                let u: f64 = rng.gen_range(-0.5..0.5);
                *v += (-b * u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln()) as f32;
            }
        }
        low_pass(&mut x, rate, cutoff_hz);
        for (i, v) in x.into_iter().enumerate() {
            out[i * channels + c] = v;
        }
    }
    out
}

/// Zeroes everything above `cutoff_hz` (with a short cosine taper) in the
/// spectrum of `x`.
fn low_pass(x: &mut [f32], rate: u32, cutoff_hz: f64) {
    let nyquist = rate as f64 / 2.0;
    if x.len() < 2 || cutoff_hz >= nyquist || cutoff_hz <= 0.0 {
        return;
    }
    let n = x.len() + x.len() % 2;
    let mut planner = RealFftPlanner::<f32>::new();
    let (fwd, inv) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
    let mut buf = x.to_vec();
    buf.resize(n, 0.0);
    let mut spec = fwd.make_output_vec();
    if fwd.process(&mut buf, &mut spec).is_err() {
        return;
    }
    let taper = cutoff_hz * 0.1;
    for (k, s) in spec.iter_mut().enumerate() {
        let f = k as f64 * rate as f64 / n as f64;
        let g = if f <= cutoff_hz - taper {
            1.0
        } else if f >= cutoff_hz {
            0.0
        } else {
            0.5 + 0.5 * (std::f64::consts::PI * (f - cutoff_hz + taper) / taper).cos()
        };
        *s *= g as f32 / n as f32;
    }
    // The imaginary parts of DC and Nyquist must be zero for the inverse.
    spec[0].im = 0.0;
    if let Some(last) = spec.last_mut() {
        last.im = 0.0;
    }
    if inv.process(&mut spec, &mut buf).is_err() {
        return;
    }
    let len = x.len();
    x.copy_from_slice(&buf[..len]);
}

/// `[privacy]`: what the daemon may keep of the audio itself, and how the SIFIS-Home
/// anonymisation routes work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of privacy settings"
)]
pub struct PrivacyConfig {
    /// Save a FLAC clip of each event in the state directory (off by default).
    pub evidence_clips: bool,
    /// Seconds of audio kept before an event's onset (0..=30).
    pub clip_before_s: f64,
    /// Seconds of audio kept after it (1..=60).
    pub clip_after_s: f64,
    /// Most clips kept; the oldest go first (1..=100000).
    pub max_clips: usize,
    /// Days a clip is kept (0.01..=3650).
    pub max_age_days: f64,
    /// Size bound of all clips, MB (1..=100000).
    pub max_mb: f64,
    /// A clip is not written when any of the model's speech classes reaches this
    /// score in any of its windows (0..=1).
    pub speech_threshold: f32,
    /// Scramble saved clips (blocks of `scramble_block_s`) so words cannot be
    /// followed even where speech was too faint to suppress the clip.
    pub scramble_clips: bool,
    /// Block length of `scramble`, seconds (0.05..=5; 0.5 or less breaks words).
    pub scramble_block_s: f64,
    /// Level of `dp_noise`'s noise below each channel's RMS, dB (-40..=60).
    pub dp_noise_snr_db: f64,
    /// Low-pass applied after `dp_noise`, Hz (500..=24000).
    pub dp_noise_cutoff_hz: f64,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            evidence_clips: false,
            clip_before_s: 5.0,
            clip_after_s: 5.0,
            max_clips: 100,
            max_age_days: 30.0,
            max_mb: 200.0,
            speech_threshold: 0.3,
            scramble_clips: false,
            scramble_block_s: 0.5,
            dp_noise_snr_db: 10.0,
            dp_noise_cutoff_hz: 8000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(frames: usize, channels: usize) -> Vec<f32> {
        (0..frames * channels)
            .map(|i| ((i / channels) as f32 + 1.0) * if i % channels == 0 { 1.0 } else { -1.0 })
            .collect()
    }

    #[test]
    fn scramble_keeps_every_block_once_and_moves_them() {
        let (rate, channels) = (1000, 2);
        let x = ramp(2500, channels);
        let y = scramble(&x, channels, rate, 0.25, 7);
        assert_eq!(y.len(), x.len());
        // Block middles (away from the fades) are exact copies of some block's.
        let block = 250;
        let mut starts: Vec<usize> = (0..10)
            .map(|b| {
                let mid = y[(b * block + block / 2) * channels];
                (mid as usize - 1) / block
            })
            .collect();
        assert_ne!(starts, (0..10).collect::<Vec<_>>(), "the order changed");
        starts.sort();
        assert_eq!(starts, (0..10).collect::<Vec<_>>(), "each block once");
        // Channels stay with their frames.
        for f in (0..2500).step_by(37) {
            assert!(y[f * 2] >= 0.0 && y[f * 2 + 1] <= 0.0);
            assert!((y[f * 2] + y[f * 2 + 1]).abs() < 1e-6);
        }
        // Deterministic for a seed, different for another.
        assert_eq!(y, scramble(&x, channels, rate, 0.25, 7));
        assert_ne!(y, scramble(&x, channels, rate, 0.25, 8));
    }

    #[test]
    fn scramble_destroys_the_order_of_speech_length_audio() {
        // 30 s of a marker signal (each sample holds its own frame index) in 0.25 s
        // blocks: the share of blocks still followed by their own successor.
        let rate = 1000;
        let x: Vec<f32> = (0..30 * rate).map(|i| i as f32).collect();
        let block = 250;
        let y = scramble(&x, 1, rate as u32, 0.25, 1);
        let source: Vec<usize> = y
            .chunks(block)
            .map(|b| b[block / 2] as usize / block)
            .collect();
        let kept = source.windows(2).filter(|w| w[1] == w[0] + 1).count();
        let share = kept as f64 / (source.len() - 1) as f64;
        assert!(
            share < 0.05,
            "{kept} of {} successions kept",
            source.len() - 1
        );
    }

    #[test]
    fn scramble_joints_neither_dip_nor_click_and_odd_input_is_safe() {
        // A constant signal stays constant through every joint (equal-power fade of
        // two equal, correlated signals overshoots by at most √2).
        let x = vec![1.0f32; 4000];
        let y = scramble(&x, 1, 8000, 0.1, 1);
        assert!(
            y.iter().all(|&v| (0.99..=1.42).contains(&v)),
            "no dip to zero"
        );
        // A slow sine (at most 0.01 per sample) is cut at 9 joints; only the one into
        // the input's first block, which has no lead-in, may jump.
        let s: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.01).sin()).collect();
        let z = scramble(&s, 1, 8000, 0.1, 2);
        let jumps = z.windows(2).filter(|w| (w[1] - w[0]).abs() > 0.1).count();
        assert!(jumps <= 1, "{jumps} jumps");
        assert!(scramble(&[], 2, 8000, 0.1, 1).is_empty());
        assert_eq!(
            scramble(&[0.5; 3], 2, 8000, 0.1, 1).len(),
            2,
            "a torn frame is dropped"
        );
        assert_eq!(scramble(&[0.5; 10], 1, 8000, 0.0, 1).len(), 10);
    }

    #[test]
    fn dp_noise_is_per_channel_at_the_asked_level_and_low_passed() {
        let rate = 16000;
        let n = 16000;
        // Left: a 500 Hz tone; right: silence.
        let mut x = vec![0.0f32; n * 2];
        for i in 0..n {
            x[i * 2] = 0.5 * (2.0 * std::f32::consts::PI * 500.0 * i as f32 / rate as f32).sin();
        }
        let y = dp_noise(&x, 2, rate, 10.0, rate as f64, 3);
        let rms = |v: &[f32]| (v.iter().map(|&s| s * s).sum::<f32>() / v.len() as f32).sqrt();
        let noise: Vec<f32> = (0..n).map(|i| y[i * 2] - x[i * 2]).collect();
        let snr = 20.0 * (rms(&(0..n).map(|i| x[i * 2]).collect::<Vec<_>>()) / rms(&noise)).log10();
        assert!((snr - 10.0).abs() < 0.5, "snr {snr}");
        assert!(
            (0..n).all(|i| y[i * 2 + 1] == 0.0),
            "a silent channel stays silent"
        );
        // With a 1 kHz low-pass the noise above it is gone and the tone is kept.
        let z = dp_noise(&x, 2, rate, 10.0, 1000.0, 3);
        let left: Vec<f32> = (0..n).map(|i| z[i * 2]).collect();
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(n);
        let mut buf = left.clone();
        let mut spec = fft.make_output_vec();
        fft.process(&mut buf, &mut spec).unwrap();
        let energy = |lo: usize, hi: usize| spec[lo..hi].iter().map(|c| c.norm_sqr()).sum::<f32>();
        // Bins are 1 Hz wide here.
        assert!(
            energy(2000, 8000) < 1e-6 * energy(0, 1000),
            "high band left"
        );
        assert!(energy(495, 506) > 0.5 * energy(0, 8001), "the tone is kept");
        assert_eq!(z, dp_noise(&x, 2, rate, 10.0, 1000.0, 3), "deterministic");
    }
}
