//! A streaming log-mel frontend driven entirely by [`FrontendParams`].
//!
//! One implementation covers both shipped models:
//! - EfficientAT (torch.stft semantics): pre-emphasis, a symmetric Hann window of
//!   `win_length` centred in `n_fft`, centre padding by reflection, power spectrum,
//!   Kaldi-style mel bands (Nyquist bin dropped), `(ln(mel + offset) + add) / div`.
//! - YAMNet (tf.signal.stft semantics): no padding, periodic Hann of `win_length`
//!   zero-padded to `n_fft`, magnitude spectrum, HTK mel bands (DC bin dropped),
//!   `ln(mel + offset)`.
//!
//! Samples are pushed in arbitrary chunks; complete frames come out as soon as the
//! samples under their window have arrived. [`LogMel::finish`] closes the stream and
//! emits the frames that need the right-hand reflection padding.
//!
//! All arithmetic after windowing is done in f64: the golden vectors are pinned to
//! 1e-3 after the log, where f32 spectra of quiet frames fall short.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use super::mel::{mel_filterbank, MelBank, MelScale};

/// Shape of the analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// `0.5 - 0.5 cos(2πn / (N-1))` (torch `periodic=False`).
    HannSymmetric,
    /// `0.5 - 0.5 cos(2πn / N)` (torch/tf default).
    HannPeriodic,
}

/// Which spectrum feeds the mel bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpectrumKind {
    /// |X|²
    Power,
    /// |X|
    Magnitude,
}

/// Every parameter of a log-mel frontend, as written in a model's `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendParams {
    /// Sample rate the frontend expects, Hz.
    pub sample_rate: u32,
    /// Pre-emphasis coefficient `c` in `y[n] = x[n+1] - c·x[n]`; 0 disables it.
    #[serde(default)]
    pub preemphasis: f64,
    /// FFT length.
    pub n_fft: usize,
    /// Window length (≤ `n_fft`).
    pub win_length: usize,
    /// Hop between frames, samples.
    pub hop_length: usize,
    /// Window shape.
    pub window: WindowKind,
    /// Centre frames on `k·hop` with reflection padding (torch `center=True`).
    #[serde(default)]
    pub center: bool,
    /// Power or magnitude spectrum.
    pub spectrum: SpectrumKind,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest mel band edge, Hz.
    pub fmin: f64,
    /// Highest mel band edge, Hz.
    pub fmax: f64,
    /// Mel filterbank construction.
    pub mel_scale: MelScale,
    /// `offset` in `ln(mel + offset)`.
    pub log_offset: f64,
    /// `add` in `(ln(mel + offset) + add) / div`.
    #[serde(default)]
    pub norm_add: f64,
    /// `div` in `(ln(mel + offset) + add) / div`.
    #[serde(default = "one")]
    pub norm_div: f64,
    /// Clips shorter than this many samples are zero-padded to it before analysis.
    #[serde(default)]
    pub min_samples: usize,
}

fn one() -> f64 {
    1.0
}

impl FrontendParams {
    /// Checks the parameters for consistency; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1000..=384_000).contains(&self.sample_rate) {
            return Err(format!("sample_rate {} is out of range", self.sample_rate));
        }
        if self.n_fft < 2 || !self.n_fft.is_multiple_of(2) {
            return Err(format!("n_fft {} must be even and at least 2", self.n_fft));
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return Err(format!(
                "win_length {} must be in 1..=n_fft",
                self.win_length
            ));
        }
        if self.hop_length == 0 {
            return Err("hop_length must be positive".into());
        }
        if self.n_mels == 0 {
            return Err("n_mels must be positive".into());
        }
        if !(self.fmin >= 0.0
            && self.fmax > self.fmin
            && self.fmax <= self.sample_rate as f64 / 2.0)
        {
            return Err(format!(
                "fmin {} / fmax {} must satisfy 0 <= fmin < fmax <= sample_rate/2",
                self.fmin, self.fmax
            ));
        }
        if self.log_offset.is_nan() || self.log_offset <= 0.0 {
            return Err("log_offset must be positive".into());
        }
        if self.norm_div == 0.0 || !self.norm_div.is_finite() {
            return Err("norm_div must be finite and non-zero".into());
        }
        if !(0.0..1.0).contains(&self.preemphasis) {
            return Err("preemphasis must be in [0, 1)".into());
        }
        Ok(())
    }

    /// Seconds between consecutive frames.
    pub fn frame_hop_s(&self) -> f64 {
        self.hop_length as f64 / self.sample_rate as f64
    }

    /// Number of frames the reference frontend gives for a clip of `n` samples
    /// (after `min_samples` padding).
    pub fn frames_for(&self, n: usize) -> usize {
        let n = n.max(self.min_samples);
        let m = if self.preemphasis > 0.0 {
            n.saturating_sub(1)
        } else {
            n
        };
        if self.center {
            if m == 0 {
                0
            } else {
                1 + m / self.hop_length
            }
        } else if m < self.win_length {
            0
        } else {
            1 + (m - self.win_length) / self.hop_length
        }
    }
}

/// Streaming log-mel analyser. Frames are appended to a caller's `Vec<f32>`, each
/// `n_mels` values long (frame-major).
pub struct LogMel {
    p: FrontendParams,
    window: Vec<f64>,
    mel: MelBank,
    fft: Arc<dyn RealToComplex<f64>>,
    fft_in: Vec<f64>,
    fft_out: Vec<realfft::num_complex::Complex<f64>>,
    scratch: Vec<realfft::num_complex::Complex<f64>>,
    spec: Vec<f64>,
    /// Analysed signal (after pre-emphasis); `buf[0]` is sample `base`.
    buf: Vec<f32>,
    base: usize,
    /// Samples of analysed signal received so far.
    len: usize,
    /// Raw input samples received so far (before pre-emphasis).
    raw_len: usize,
    prev: Option<f32>,
    next_frame: usize,
    finished: bool,
}

impl LogMel {
    /// Builds an analyser; `params` must have passed [`FrontendParams::validate`].
    pub fn new(params: &FrontendParams) -> Self {
        let p = params.clone();
        let n = p.win_length;
        let denom = match p.window {
            WindowKind::HannSymmetric => (n.max(2) - 1) as f64,
            WindowKind::HannPeriodic => n as f64,
        };
        // Window values computed in f32, as both reference frontends do.
        let window = (0..n)
            .map(|i| {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / denom).cos();
                if p.window == WindowKind::HannSymmetric {
                    w as f32 as f64
                } else {
                    w
                }
            })
            .collect();
        let mel = mel_filterbank(
            p.mel_scale,
            p.n_mels,
            p.n_fft,
            p.sample_rate as f64,
            p.fmin,
            p.fmax,
        );
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(p.n_fft);
        let fft_in = fft.make_input_vec();
        let fft_out = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        let spec = vec![0.0; p.n_fft / 2 + 1];
        LogMel {
            p,
            window,
            mel,
            fft,
            fft_in,
            fft_out,
            scratch,
            spec,
            buf: Vec::new(),
            base: 0,
            len: 0,
            raw_len: 0,
            prev: None,
            next_frame: 0,
            finished: false,
        }
    }

    /// The parameters this analyser runs with.
    pub fn params(&self) -> &FrontendParams {
        &self.p
    }

    /// Number of frames emitted so far.
    pub fn frames_emitted(&self) -> usize {
        self.next_frame
    }

    /// Clears all state so the analyser can start a new, independent stream.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.base = 0;
        self.len = 0;
        self.raw_len = 0;
        self.prev = None;
        self.next_frame = 0;
        self.finished = false;
    }

    /// Offset of frame `k`'s window start in analysed-signal samples (may be negative
    /// for centred frames).
    fn frame_start(&self, k: usize) -> isize {
        let off = if self.p.center {
            self.p.win_length / 2
        } else {
            0
        };
        (k * self.p.hop_length) as isize - off as isize
    }

    /// Appends samples and writes every frame that became complete to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        debug_assert!(!self.finished, "push after finish");
        self.raw_len += samples.len();
        if self.p.preemphasis > 0.0 {
            let c = self.p.preemphasis as f32;
            for &x in samples {
                if let Some(prev) = self.prev {
                    self.buf.push(x - c * prev);
                    self.len += 1;
                }
                self.prev = Some(x);
            }
        } else {
            self.buf.extend_from_slice(samples);
            self.len += samples.len();
        }
        self.emit(out, false);
    }

    /// Ends the stream: pads as the reference does (zeros up to `min_samples`, then
    /// reflection for centred frames) and writes the remaining frames to `out`.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if self.finished {
            return;
        }
        if self.raw_len < self.p.min_samples {
            let pad = vec![0.0f32; self.p.min_samples - self.raw_len];
            self.push(&pad, out);
        }
        self.finished = true;
        self.emit(out, true);
    }

    fn emit(&mut self, out: &mut Vec<f32>, at_end: bool) {
        let total_frames = if at_end {
            // Same count as the reference, whatever was padded.
            self.p.frames_for(self.raw_len)
        } else {
            usize::MAX
        };
        loop {
            let k = self.next_frame;
            if k >= total_frames {
                break;
            }
            let start = self.frame_start(k);
            let end = start + self.p.win_length as isize;
            // Highest index the frame reads, counting the left reflection of a
            // centred first frame (index -i reads sample i).
            let needed = end.max(1 - start);
            if !at_end && needed > self.len as isize {
                break;
            }
            if at_end && self.len == 0 {
                break;
            }
            self.analyse_frame(start, out);
            self.next_frame += 1;
        }
        // Drop samples no later frame can reach (keep a window of slack for the
        // right-hand reflection at the end).
        let keep_from = self.frame_start(self.next_frame) - self.p.win_length as isize;
        if keep_from > self.base as isize {
            let drop = keep_from as usize - self.base;
            if drop > 0 && drop <= self.buf.len() {
                self.buf.drain(..drop);
                self.base += drop;
            }
        }
    }

    /// Signal value at absolute index `i`, reflecting at both ends like numpy's
    /// `mode="reflect"` (right end only once the stream has finished).
    fn sample_at(&self, i: isize) -> f64 {
        let n = self.len as isize;
        if n == 1 {
            return self.buf[0] as f64;
        }
        let mut i = i;
        loop {
            if i < 0 {
                i = -i;
            } else if i >= n {
                i = 2 * (n - 1) - i;
            } else {
                break;
            }
        }
        let idx = (i as usize).saturating_sub(self.base);
        self.buf.get(idx).copied().unwrap_or(0.0) as f64
    }

    fn analyse_frame(&mut self, start: isize, out: &mut Vec<f32>) {
        let win = self.p.win_length;
        let inside = start >= 0 && (start as usize + win) <= self.len;
        for v in self.fft_in.iter_mut() {
            *v = 0.0;
        }
        if inside {
            let s = start as usize - self.base;
            for (j, (&x, &w)) in self.buf[s..s + win].iter().zip(&self.window).enumerate() {
                self.fft_in[j] = x as f64 * w;
            }
        } else {
            for j in 0..win {
                self.fft_in[j] = self.sample_at(start + j as isize) * self.window[j];
            }
        }
        // Buffer sizes come from the planner itself, so this cannot fail.
        self.fft
            .process_with_scratch(&mut self.fft_in, &mut self.fft_out, &mut self.scratch)
            .expect("FFT buffers sized by the planner");
        for (s, c) in self.spec.iter_mut().zip(&self.fft_out) {
            let pw = c.re * c.re + c.im * c.im;
            *s = match self.p.spectrum {
                SpectrumKind::Power => pw,
                SpectrumKind::Magnitude => pw.sqrt(),
            };
        }
        let (add, div, off) = (self.p.norm_add, self.p.norm_div, self.p.log_offset);
        for band in self.mel.bands() {
            let e: f64 = band
                .weights
                .iter()
                .zip(&self.spec[band.first_bin..])
                .map(|(w, s)| w * s)
                .sum();
            out.push((((e + off).ln() + add) / div) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mn04() -> FrontendParams {
        FrontendParams {
            sample_rate: 32000,
            preemphasis: 0.97,
            n_fft: 1024,
            win_length: 800,
            hop_length: 320,
            window: WindowKind::HannSymmetric,
            center: true,
            spectrum: SpectrumKind::Power,
            n_mels: 128,
            fmin: 0.0,
            fmax: 15000.0,
            mel_scale: MelScale::Kaldi,
            log_offset: 1e-5,
            norm_add: 4.5,
            norm_div: 5.0,
            min_samples: 0,
        }
    }

    fn yamnet() -> FrontendParams {
        FrontendParams {
            sample_rate: 16000,
            preemphasis: 0.0,
            n_fft: 512,
            win_length: 400,
            hop_length: 160,
            window: WindowKind::HannPeriodic,
            center: false,
            spectrum: SpectrumKind::Magnitude,
            n_mels: 64,
            fmin: 125.0,
            fmax: 7500.0,
            mel_scale: MelScale::Htk,
            log_offset: 0.001,
            norm_add: 0.0,
            norm_div: 1.0,
            min_samples: 15600,
        }
    }

    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.013).sin() * 0.3 + ((i * 7919) % 101) as f32 / 1000.0)
            .collect()
    }

    fn run_chunked(p: &FrontendParams, x: &[f32], chunk: usize) -> Vec<f32> {
        let mut fe = LogMel::new(p);
        let mut out = Vec::new();
        for c in x.chunks(chunk.max(1)) {
            fe.push(c, &mut out);
        }
        fe.finish(&mut out);
        out
    }

    #[test]
    fn frame_counts_match_the_reference_formulas() {
        let p = mn04();
        assert_eq!(p.frames_for(320_000), 1000);
        assert_eq!(p.frames_for(1), 0);
        let y = yamnet();
        assert_eq!(y.frames_for(160_000), 998);
        assert_eq!(y.frames_for(10), 96);
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        for p in [mn04(), yamnet()] {
            let x = signal(40_000);
            let whole = run_chunked(&p, &x, x.len());
            assert_eq!(whole.len(), p.frames_for(x.len()) * p.n_mels);
            for chunk in [1, 7, 333, 4096] {
                let got = run_chunked(&p, &x, chunk);
                assert_eq!(got, whole, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn tiny_inputs_give_finite_frames() {
        for p in [mn04(), yamnet()] {
            for n in [0usize, 1, 2, 3, 399, 513] {
                let out = run_chunked(&p, &signal(n), 5);
                assert_eq!(out.len(), p.frames_for(n) * p.n_mels, "n={n}");
                assert!(out.iter().all(|v| v.is_finite()));
            }
        }
    }

    #[test]
    fn silence_gives_the_log_floor() {
        let p = yamnet();
        let out = run_chunked(&p, &vec![0.0; 16000], 1000);
        let floor = (0.001f64).ln() as f32;
        assert!(out.iter().all(|v| (v - floor).abs() < 1e-6));
    }

    #[test]
    fn a_tone_lands_in_the_right_band() {
        let p = yamnet();
        let f = 1000.0;
        let x: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / 16000.0).sin() * 0.5)
            .collect();
        let out = run_chunked(&p, &x, 16000);
        let frame = &out[50 * 64..51 * 64];
        let best = (0..64)
            .max_by(|&a, &b| frame[a].total_cmp(&frame[b]))
            .unwrap();
        let bank = mel_filterbank(MelScale::Htk, 64, 512, 16000.0, 125.0, 7500.0);
        let centre = bank.centre_hz(best);
        assert!(
            (centre - f as f64).abs() < 80.0,
            "peak band centre {centre} Hz"
        );
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut p = mn04();
        p.win_length = 2048;
        assert!(p.validate().unwrap_err().contains("win_length"));
        let mut p = mn04();
        p.fmax = 20000.0;
        assert!(p.validate().unwrap_err().contains("fmax"));
        assert!(mn04().validate().is_ok());
        assert!(yamnet().validate().is_ok());
    }
}
