//! Audio input: file decoding, channel mixing and resampling.

pub mod config;
pub mod decode;
pub mod resample;
pub mod source;

pub use decode::{AudioInfo, DecodeError, FileDecoder};
pub use resample::StreamResampler;

/// Largest sample magnitude passed on unchanged: four times full scale (+12 dBFS).
/// Float recordings may go a little past ±1.0 ("overs"); nothing real comes near
/// this, so a sample beyond it is damage, not sound.
pub const SAMPLE_LIMIT: f32 = 4.0;

/// One sample made safe for the DSP: NaN and ±Inf become 0.0 (silence), finite
/// values beyond ±[`SAMPLE_LIMIT`] are clamped to it. Returns the sample and whether
/// it was changed.
#[inline]
pub fn sanitize_sample(x: f32) -> (f32, bool) {
    if x.abs() <= SAMPLE_LIMIT {
        (x, false)
    } else if x.is_nan() || x.is_infinite() {
        (0.0, true)
    } else {
        (SAMPLE_LIMIT.copysign(x), true)
    }
}

/// Makes every sample of `samples` safe in place (see [`sanitize_sample`]) and
/// returns how many were replaced. Allocation-free, so the audio callback can use it.
pub fn sanitize(samples: &mut [f32]) -> usize {
    let mut replaced = 0;
    for s in samples.iter_mut() {
        let (v, changed) = sanitize_sample(*s);
        if changed {
            *s = v;
            replaced += 1;
        }
    }
    replaced
}

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
    fn sanitize_replaces_non_finite_and_clamps_absurd_samples() {
        let mut x = [
            0.5,
            f32::NAN,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.5,
            -SAMPLE_LIMIT,
            1e30,
            -7.0,
            f32::MIN_POSITIVE,
            -f32::NAN,
        ];
        assert_eq!(sanitize(&mut x), 6);
        assert_eq!(
            x,
            [
                0.5,
                0.0,
                -1.0,
                0.0,
                0.0,
                1.5,
                -SAMPLE_LIMIT,
                SAMPLE_LIMIT,
                -SAMPLE_LIMIT,
                f32::MIN_POSITIVE,
                0.0
            ]
        );
        // Already safe: untouched, nothing counted.
        assert_eq!(sanitize(&mut x), 0);
        assert_eq!(sanitize(&mut []), 0);
        assert_eq!(sanitize_sample(0.25), (0.25, false));
        assert_eq!(sanitize_sample(f32::NAN), (0.0, true));
    }

    #[test]
    fn rms_of_full_scale_square_is_zero_db() {
        assert!((rms_dbfs(&[1.0, -1.0, 1.0, -1.0])).abs() < 1e-6);
        assert_eq!(rms_dbfs(&[0.0; 10]), -120.0);
        assert!((rms_dbfs(&[0.1; 10]) + 20.0).abs() < 1e-4);
    }
}
