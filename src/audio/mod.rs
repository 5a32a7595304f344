//! Audio input: file decoding, channel mixing and resampling.

pub mod decode;
pub mod resample;
pub mod source;

pub use decode::{AudioInfo, DecodeError, FileDecoder};
pub use resample::StreamResampler;

/// Averages interleaved `channels`-channel samples into mono and appends them to `out`.
pub fn mix_to_mono(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels <= 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale),
    );
}

/// RMS level of `samples` in dBFS (full scale sine = -3 dBFS); `-120` for silence.
pub fn rms_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return -120.0;
    }
    let ms = samples
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        / samples.len() as f64;
    if ms <= 1e-12 {
        -120.0
    } else {
        (10.0 * ms.log10()).max(-120.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_averages_channels() {
        let mut out = Vec::new();
        mix_to_mono(&[1.0, 0.0, 0.5, 0.5, -1.0, 1.0], 2, &mut out);
        assert_eq!(out, vec![0.5, 0.5, 0.0]);
        let mut out = Vec::new();
        mix_to_mono(&[0.25, 0.5], 1, &mut out);
        assert_eq!(out, vec![0.25, 0.5]);
    }

    #[test]
    fn rms_of_full_scale_square_is_zero_db() {
        assert!((rms_dbfs(&[1.0, -1.0, 1.0, -1.0])).abs() < 1e-6);
        assert_eq!(rms_dbfs(&[0.0; 10]), -120.0);
        assert!((rms_dbfs(&[0.1; 10]) + 20.0).abs() < 1e-4);
    }
}
