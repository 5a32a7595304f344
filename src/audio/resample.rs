//! Streaming mono resampling with rubato's synchronous FFT resampler.
//!
//! The resampler's start-up delay is trimmed, and [`StreamResampler::finish`] flushes
//! the tail, so a clip of `n` input samples becomes `ceil(n · to / from)` output
//! samples aligned with the input in time.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use super::sanitize;

const CHUNK: usize = 1024;

/// Converts a mono stream from one sample rate to another, chunk by chunk.
pub struct StreamResampler {
    from: u32,
    to: u32,
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
    skip: usize,
    in_total: u64,
    out_total: u64,
}

/// A resampler could not be built for these rates.
#[derive(Debug, thiserror::Error)]
#[error("cannot resample {from} Hz to {to} Hz: {detail}")]
pub struct ResampleSetupError {
    from: u32,
    to: u32,
    detail: String,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (a pass-through when they are equal).
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleSetupError> {
        let inner = if from == to {
            None
        } else {
            Some(
                Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).map_err(
                    |e| ResampleSetupError {
                        from,
                        to,
                        detail: e.to_string(),
                    },
                )?,
            )
        };
        let (skip, out_cap) = match &inner {
            Some(r) => (r.output_delay(), r.output_frames_max()),
            None => (0, 0),
        };
        Ok(StreamResampler {
            from,
            to,
            inner,
            pending: Vec::with_capacity(2 * CHUNK),
            out_buf: vec![0.0; out_cap],
            skip,
            in_total: 0,
            out_total: 0,
        })
    }

    /// Input rate, Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate, Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Feeds `input` and appends whatever output is ready to `out`.
    ///
    /// Input samples that are NaN, infinite or beyond ±[`super::SAMPLE_LIMIT`] are
    /// made safe first (see [`super::sanitize`]; the sources already do this and
    /// count them): one such sample would otherwise poison every output sample of
    /// its FFT chunk, or panic inside the resampler.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.in_total += input.len() as u64;
        if self.inner.is_none() {
            let start = out.len();
            out.extend_from_slice(input);
            sanitize(&mut out[start..]);
            self.out_total += input.len() as u64;
            return;
        }
        let start = self.pending.len();
        self.pending.extend_from_slice(input);
        sanitize(&mut self.pending[start..]);
        let mut consumed = 0;
        loop {
            let need = self.inner.as_ref().map_or(0, |r| r.input_frames_next());
            if self.pending.len() - consumed < need {
                break;
            }
            let (used, _) = self.process(consumed, None, out);
            consumed += used;
        }
        self.pending.drain(..consumed);
    }

    /// Flushes the tail: appends the remaining output so the total matches the input
    /// duration. The resampler can be reused afterwards for a new stream.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if self.inner.is_none() {
            return;
        }
        let expected = (self.in_total * self.to as u64).div_ceil(self.from as u64);
        let mut guard = 0;
        while self.out_total < expected && guard < 64 {
            let avail = self.pending.len();
            let (used, _) = self.process(0, Some(avail), out);
            self.pending.drain(..used.min(avail));
            guard += 1;
        }
        if self.out_total > expected {
            let extra = (self.out_total - expected) as usize;
            out.truncate(out.len().saturating_sub(extra));
            self.out_total = expected;
        }
        self.reset();
    }

    /// Forgets all state and starts a new stream.
    pub fn reset(&mut self) {
        if let Some(r) = self.inner.as_mut() {
            r.reset();
            self.skip = r.output_delay();
        }
        self.pending.clear();
        self.in_total = 0;
        self.out_total = 0;
    }

    /// Runs one chunk starting at `pending[offset]`; with `partial` the chunk holds
    /// only that many real samples (the rest is silence).
    fn process(
        &mut self,
        offset: usize,
        partial: Option<usize>,
        out: &mut Vec<f32>,
    ) -> (usize, usize) {
        let Some(r) = self.inner.as_mut() else {
            return (0, 0);
        };
        let need = r.input_frames_next();
        let mut zeros;
        let input: &[f32] = match partial {
            Some(n) if n < need => {
                zeros = vec![0.0; need];
                zeros[..n].copy_from_slice(&self.pending[offset..offset + n]);
                &zeros
            }
            _ => &self.pending[offset..offset + need],
        };
        let cap = self.out_buf.len();
        let (Ok(inp), Ok(mut outp)) = (
            InterleavedSlice::new(input, 1, need),
            InterleavedSlice::new_mut(&mut self.out_buf, 1, cap),
        ) else {
            return (need, 0);
        };
        let idx = Indexing::new();
        // Buffer sizes are the resampler's own, so processing cannot fail.
        let (used, written) = r
            .process_into_buffer(&inp, &mut outp, Some(&idx))
            .unwrap_or((need, 0));
        let drop = self.skip.min(written);
        self.skip -= drop;
        out.extend_from_slice(&self.out_buf[drop..written]);
        self.out_total += (written - drop) as u64;
        let real = partial.map_or(used, |n| n.min(used));
        (real, written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, f: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin())
            .collect()
    }

    fn resample_all(from: u32, to: u32, x: &[f32], chunk: usize) -> Vec<f32> {
        let mut r = StreamResampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for c in x.chunks(chunk) {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn length_matches_duration() {
        for (from, to) in [
            (44100, 32000),
            (48000, 16000),
            (8000, 32000),
            (96000, 32000),
        ] {
            for n in [1usize, 100, 1023, 1024, 44100, 100_003] {
                let out = resample_all(from, to, &vec![0.1; n], 777);
                let expected = (n as u64 * to as u64).div_ceil(from as u64) as usize;
                assert_eq!(out.len(), expected, "{from}->{to} n={n}");
            }
        }
    }

    #[test]
    fn a_tone_keeps_its_timing_and_level() {
        let (from, to) = (44100, 32000);
        let x = tone(from, 440.0, 44100);
        let y = resample_all(from, to, &x, 500);
        // Away from the edges the output matches the ideal tone best at lag 0 (the
        // start-up delay is trimmed to within a sample) and keeps its level.
        let err_at = |lag: i64| {
            (2000..30000)
                .map(|i| {
                    let t = (i as i64 + lag) as f32;
                    let ideal = (2.0 * std::f32::consts::PI * 440.0 * t / to as f32).sin();
                    (y[i] - ideal).abs()
                })
                .fold(0.0f32, f32::max)
        };
        let e0 = err_at(0);
        assert!(e0 < 0.05, "max error {e0}");
        assert!(e0 < err_at(-1) && e0 < err_at(1));
        let rms = (y[2000..30000].iter().map(|v| v * v).sum::<f32>() / 28000.0).sqrt();
        assert!(
            (rms - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.01,
            "rms {rms}"
        );
    }

    #[test]
    fn non_finite_input_neither_panics_nor_spreads() {
        // One NaN and one Inf in a tone, resampled (this panicked inside rubato) and
        // passed through: the output is finite and, away from the damaged samples,
        // the tone is unchanged.
        for (from, to) in [(48000, 32000), (32000, 32000)] {
            let clean = tone(from, 440.0, 20000);
            let mut bad = clean.clone();
            bad[5000] = f32::NAN;
            bad[12000] = f32::INFINITY;
            bad[15000] = -1e30;
            let (a, b) = (
                resample_all(from, to, &clean, 700),
                resample_all(from, to, &bad, 700),
            );
            assert_eq!(a.len(), b.len());
            assert!(b.iter().all(|v| v.is_finite()), "{from}->{to}");
            let far = |i: usize| {
                let t = i as f64 * from as f64 / to as f64;
                [5000.0, 12000.0, 15000.0]
                    .iter()
                    .all(|&d| (t - d).abs() > 600.0)
            };
            let err = (0..a.len())
                .filter(|&i| far(i))
                .map(|i| (a[i] - b[i]).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-3, "{from}->{to}: {err}");
        }
    }

    #[test]
    fn equal_rates_pass_through() {
        let x = tone(16000, 300.0, 5000);
        assert_eq!(resample_all(16000, 16000, &x, 333), x);
    }
}
