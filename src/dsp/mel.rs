//! Triangular mel filterbanks.

use serde::{Deserialize, Serialize};

/// How the filterbank is laid out. Both use `mel(f) = 1127 ln(1 + f/700)` and
/// triangles evenly spaced in mel; they differ in which edge FFT bin is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MelScale {
    /// Kaldi / EfficientAT: the Nyquist bin gets weight 0.
    Kaldi,
    /// HTK as in `tf.signal.linear_to_mel_weight_matrix`: the DC bin gets weight 0.
    Htk,
}

/// One band: weights over a contiguous run of FFT bins.
#[derive(Debug, Clone)]
pub struct Band {
    /// First FFT bin with non-zero weight.
    pub first_bin: usize,
    /// Weights for bins `first_bin..first_bin + weights.len()`.
    pub weights: Vec<f64>,
}

/// A sparse mel filterbank over `n_fft/2 + 1` bins.
#[derive(Debug, Clone)]
pub struct MelBank {
    bands: Vec<Band>,
    centres_hz: Vec<f64>,
}

impl MelBank {
    /// The bands, lowest first.
    pub fn bands(&self) -> &[Band] {
        &self.bands
    }

    /// Centre frequency of band `i`, Hz.
    pub fn centre_hz(&self, i: usize) -> f64 {
        self.centres_hz[i]
    }
}

fn hz_to_mel(f: f64) -> f64 {
    1127.0 * (f / 700.0).ln_1p()
}

fn mel_to_hz(m: f64) -> f64 {
    700.0 * ((m / 1127.0).exp() - 1.0)
}

/// Builds the filterbank for `n_fft/2 + 1` bins at `sample_rate`.
pub fn mel_filterbank(
    scale: MelScale,
    n_mels: usize,
    n_fft: usize,
    sample_rate: f64,
    fmin: f64,
    fmax: f64,
) -> MelBank {
    let n_bins = n_fft / 2 + 1;
    let lo = hz_to_mel(fmin);
    let hi = hz_to_mel(fmax);
    let delta = (hi - lo) / (n_mels + 1) as f64;
    let bin_mel: Vec<f64> = (0..n_bins)
        .map(|k| hz_to_mel(sample_rate / n_fft as f64 * k as f64))
        .collect();
    let mut bands = Vec::with_capacity(n_mels);
    let mut centres_hz = Vec::with_capacity(n_mels);
    for b in 0..n_mels {
        let left = lo + b as f64 * delta;
        let centre = lo + (b + 1) as f64 * delta;
        let right = lo + (b + 2) as f64 * delta;
        centres_hz.push(mel_to_hz(centre));
        let w: Vec<f64> = bin_mel
            .iter()
            .enumerate()
            .map(|(k, &m)| {
                let dropped = match scale {
                    MelScale::Kaldi => k == n_bins - 1,
                    MelScale::Htk => k == 0,
                };
                if dropped {
                    return 0.0;
                }
                let up = (m - left) / (centre - left);
                let down = (right - m) / (right - centre);
                let v = up.min(down).max(0.0);
                // Kaldi banks are stored as f32 by the reference.
                match scale {
                    MelScale::Kaldi => v as f32 as f64,
                    MelScale::Htk => v,
                }
            })
            .collect();
        let first = w.iter().position(|&v| v != 0.0).unwrap_or(0);
        let last = w.iter().rposition(|&v| v != 0.0).map_or(first, |l| l + 1);
        bands.push(Band {
            first_bin: first,
            weights: w[first..last.max(first)].to_vec(),
        });
    }
    MelBank { bands, centres_hz }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_are_triangles_that_rise_then_fall() {
        let bank = mel_filterbank(MelScale::Kaldi, 128, 1024, 32000.0, 0.0, 15000.0);
        assert_eq!(bank.bands().len(), 128);
        for b in bank.bands() {
            let peak = b.weights.iter().cloned().fold(0.0f64, f64::max);
            assert!(peak > 0.0 && peak <= 1.0);
            assert!(
                b.first_bin + b.weights.len() <= 512,
                "Nyquist bin is dropped"
            );
        }
    }

    #[test]
    fn htk_drops_dc_and_respects_edges() {
        let bank = mel_filterbank(MelScale::Htk, 64, 512, 16000.0, 125.0, 7500.0);
        for b in bank.bands() {
            assert!(b.first_bin >= 1);
        }
        assert!(bank.centre_hz(0) > 125.0 && bank.centre_hz(63) < 7500.0);
        // The first band's support starts above fmin: bin 4 is 125 Hz.
        assert!(bank.bands()[0].first_bin >= 4);
    }
}
