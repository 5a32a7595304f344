//! Reproducible mixtures: labelled events placed in a long home background made of
//! ordinary sounds, at chosen signal-to-noise ratios. Pure: signals in, signal and
//! ground truth out; the same seed gives the same mixture on every machine.
//!
//! Levels are measured on a clip's *active* part (20 ms frames within 30 dB of its
//! loudest frame), so a short bang padded with silence is not judged quiet, and the
//! truth onset is the first active frame, not the start of the file.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// A decoded clip at the mixing rate, mono.
#[derive(Debug, Clone)]
pub struct Signal {
    /// Where it came from (for the report).
    pub name: String,
    /// Detection group (`None` for a background sound).
    pub group: Option<String>,
    /// The dataset's label of the clip (e.g. `speech`, `door_slam`).
    pub label: String,
    /// The source recording it was cut from (clips of one recording stay on one
    /// side of every split).
    pub recording: String,
    /// Samples at the mixing rate.
    pub samples: Vec<f32>,
}

/// How to build a mixture.
#[derive(Debug, Clone)]
pub struct MixSpec {
    /// Random seed.
    pub seed: u64,
    /// Mixing sample rate, Hz.
    pub rate: u32,
    /// Event-to-background ratios, dB; every event is placed once per SNR.
    pub snrs_db: Vec<f64>,
    /// Seconds from one event slot to the next (events never overlap and each is
    /// followed by background only).
    pub slot_s: f64,
    /// Background-only seconds at the start (false alarms on pure background).
    pub lead_s: f64,
    /// Background loudness range, dBFS (active RMS), drawn per background clip.
    pub background_dbfs: (f64, f64),
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec {
            seed: 1,
            rate: 48_000,
            snrs_db: vec![9.0, 3.0, -3.0],
            slot_s: 30.0,
            lead_s: 60.0,
            background_dbfs: (-45.0, -28.0),
        }
    }
}

/// One event as placed: the ground truth of a mixture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placed {
    /// Detection group.
    pub group: String,
    /// The event's clip.
    pub clip: String,
    /// First active sample, seconds into the mixture.
    pub onset_s: f64,
    /// Last active sample, seconds.
    pub offset_s: f64,
    /// Event-to-background ratio, dB.
    pub snr_db: f64,
}

impl From<&Placed> for super::metrics::TruthEvent {
    fn from(p: &Placed) -> Self {
        super::metrics::TruthEvent {
            group: p.group.clone(),
            onset_s: p.onset_s,
            offset_s: p.offset_s,
        }
    }
}

/// A built mixture.
#[derive(Debug, Clone)]
pub struct Mixture {
    /// Mono samples at the mixing rate, in [-1, 1].
    pub samples: Vec<f32>,
    /// Sample rate, Hz.
    pub rate: u32,
    /// The events, in time order.
    pub truth: Vec<Placed>,
    /// The background clips as laid, in time order.
    pub beds: Vec<Laid>,
}

/// One background clip as laid in a mixture.
#[derive(Debug, Clone, PartialEq)]
pub struct Laid {
    /// The clip's dataset label.
    pub label: String,
    /// Where it starts, seconds into the mixture.
    pub start_s: f64,
    /// Where it ends, seconds.
    pub end_s: f64,
}

impl Mixture {
    /// Length, seconds.
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.rate as f64
    }
}

const FRAME_S: f64 = 0.02;
const ACTIVE_RANGE_DB: f64 = 30.0;

fn db(power: f64) -> f64 {
    10.0 * power.max(1e-20).log10()
}

/// Mean power of each 20 ms frame.
fn frame_powers(x: &[f32], rate: u32) -> Vec<f64> {
    let n = ((rate as f64 * FRAME_S) as usize).max(1);
    x.chunks(n)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c.len() as f64)
        .collect()
}

/// The active part of a clip: (first sample, end sample, mean power over its active
/// frames). `None` for silence.
pub fn active_span(x: &[f32], rate: u32) -> Option<(usize, usize, f64)> {
    let p = frame_powers(x, rate);
    let peak = p.iter().cloned().fold(0.0f64, f64::max);
    if peak <= 1e-12 {
        return None;
    }
    let floor = peak * 10f64.powf(-ACTIVE_RANGE_DB / 10.0);
    let active: Vec<usize> = (0..p.len()).filter(|&i| p[i] >= floor).collect();
    let n = ((rate as f64 * FRAME_S) as usize).max(1);
    let first = *active.first()?;
    let last = *active.last()?;
    let power = active.iter().map(|&i| p[i]).sum::<f64>() / active.len() as f64;
    Some((first * n, ((last + 1) * n).min(x.len()), power))
}

/// Mean power of `x[a..b]` (0 for an empty range).
fn power(x: &[f32], a: usize, b: usize) -> f64 {
    let b = b.min(x.len());
    if b <= a {
        return 0.0;
    }
    x[a..b]
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        / (b - a) as f64
}

/// A background bed of `len` samples: background clips in random order (reshuffled
/// when used up), each at a random level, joined with 50 ms crossfades.
fn bed(
    backgrounds: &[&Signal],
    len: usize,
    spec: &MixSpec,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<Laid>) {
    let mut out = vec![0.0f32; len];
    let mut laid = Vec::new();
    let fade = (spec.rate as f64 * 0.05) as usize;
    let mut order: Vec<usize> = Vec::new();
    let mut pos = 0usize;
    while pos < len {
        if order.is_empty() {
            order = (0..backgrounds.len()).collect();
            order.shuffle(rng);
        }
        let clip = backgrounds[order.pop().expect("refilled above")];
        let Some((_, _, p)) = active_span(&clip.samples, spec.rate) else {
            continue;
        };
        let target = rng.gen_range(spec.background_dbfs.0..=spec.background_dbfs.1);
        let gain = 10f64.powf((target - db(p)) / 20.0) as f32;
        let n = clip.samples.len();
        for (i, &v) in clip.samples.iter().enumerate() {
            let Some(o) = out.get_mut(pos + i) else {
                break;
            };
            let w = if i < fade {
                i as f32 / fade as f32
            } else if n - i <= fade {
                (n - i) as f32 / fade as f32
            } else {
                1.0
            };
            *o += v * gain * w;
        }
        laid.push(Laid {
            label: clip.label.clone(),
            start_s: pos as f64 / spec.rate as f64,
            end_s: (pos + n).min(len) as f64 / spec.rate as f64,
        });
        pos += n.saturating_sub(fade).max(1);
    }
    (out, laid)
}

/// Builds a mixture: `lead_s` of background, then one slot of `slot_s` per (event,
/// SNR) in random order, each event starting at a random point in the first half of
/// its slot, scaled so its active power is `snr_db` above the background's power
/// under it. Background clips must be silence-free enough to measure (clips without
/// an active part are skipped). Peaks are limited to full scale by scaling the whole
/// mixture down, never by clipping.
pub fn build(events: &[&Signal], backgrounds: &[&Signal], spec: &MixSpec) -> Mixture {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let rate = spec.rate as f64;
    let mut jobs: Vec<(usize, f64)> = events
        .iter()
        .enumerate()
        .flat_map(|(i, _)| spec.snrs_db.iter().map(move |&s| (i, s)))
        .collect();
    jobs.shuffle(&mut rng);
    let slot = (spec.slot_s * rate) as usize;
    let lead = (spec.lead_s * rate) as usize;
    let len = lead + slot * jobs.len();
    let (mut out, beds) = if backgrounds.is_empty() {
        (vec![0.0f32; len], Vec::new())
    } else {
        bed(backgrounds, len, spec, &mut rng)
    };
    let mut truth = Vec::with_capacity(jobs.len());
    for (k, (i, snr)) in jobs.into_iter().enumerate() {
        let ev = events[i];
        let Some((a, b, p_ev)) = active_span(&ev.samples, spec.rate) else {
            continue;
        };
        // Events longer than a slot are cut to it (minus a second of quiet).
        let max_len = slot.saturating_sub((rate * 1.0) as usize);
        let n = ev.samples.len().min(max_len);
        let room = slot.saturating_sub(n);
        let start = lead + k * slot + rng.gen_range(0..=room / 2);
        let (a, b) = (a.min(n), b.min(n));
        let p_bg = power(&out, start + a, start + b).max(1e-12);
        let gain = 10f64.powf((snr + db(p_bg) - db(p_ev)) / 20.0) as f32;
        for (o, &v) in out[start..start + n].iter_mut().zip(&ev.samples[..n]) {
            *o += v * gain;
        }
        truth.push(Placed {
            group: ev.group.clone().unwrap_or_default(),
            clip: ev.name.clone(),
            onset_s: (start + a) as f64 / rate,
            offset_s: (start + b) as f64 / rate,
            snr_db: snr,
        });
    }
    let peak = out.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    if peak > 0.99 {
        let g = 0.99 / peak;
        out.iter_mut().for_each(|v| *v *= g);
    }
    truth.sort_by(|x, y| x.onset_s.total_cmp(&y.onset_s));
    Mixture {
        samples: out,
        rate: spec.rate,
        truth,
        beds,
    }
}

/// `seconds` of background only: the clips in an order and at levels drawn from
/// `spec.seed`; with `layers` 2, a second bed of other draws is laid under the first
/// 6 dB down, so two ordinary sounds are heard at once.
pub fn background(backgrounds: &[&Signal], seconds: f64, layers: usize, spec: &MixSpec) -> Mixture {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let len = (seconds * spec.rate as f64) as usize;
    let (mut out, mut beds) = bed(backgrounds, len, spec, &mut rng);
    for _ in 1..layers.max(1) {
        let (under, laid) = bed(backgrounds, len, spec, &mut rng);
        for (o, u) in out.iter_mut().zip(under) {
            *o += u * 0.5;
        }
        beds.extend(laid);
    }
    beds.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    let peak = out.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    if peak > 0.99 {
        let g = 0.99 / peak;
        out.iter_mut().for_each(|v| *v *= g);
    }
    Mixture {
        samples: out,
        rate: spec.rate,
        truth: Vec::new(),
        beds,
    }
}

/// Seconds of the mixture that no event (widened by `early_s` before its onset and
/// `late_s` after its offset) covers: the denominator of false alarms per hour.
pub fn background_s(m: &Mixture, early_s: f64, late_s: f64) -> f64 {
    let covered: f64 = m
        .truth
        .iter()
        .map(|t| (t.offset_s + late_s).min(m.duration_s()) - (t.onset_s - early_s).max(0.0))
        .sum();
    (m.duration_s() - covered).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(name: &str, group: Option<&str>, secs: f64, amp: f32, silence_s: f64) -> Signal {
        let rate = 16_000.0;
        let pad = (silence_s * rate) as usize;
        let mut samples = vec![0.0f32; pad];
        samples
            .extend((0..(secs * rate) as usize).map(|i| {
                amp * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin()
            }));
        Signal {
            name: name.into(),
            group: group.map(String::from),
            label: group.unwrap_or("tone").into(),
            recording: name.into(),
            samples,
        }
    }

    fn noise(secs: f64, seed: u64) -> Signal {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Signal {
            name: format!("noise{seed}"),
            group: None,
            label: "noise".into(),
            recording: format!("noise{seed}"),
            samples: (0..(secs * 16_000.0) as usize)
                .map(|_| rng.gen_range(-0.1f32..0.1))
                .collect(),
        }
    }

    fn spec() -> MixSpec {
        MixSpec {
            rate: 16_000,
            slot_s: 10.0,
            lead_s: 5.0,
            ..MixSpec::default()
        }
    }

    #[test]
    fn the_active_span_skips_leading_silence() {
        let t = tone("t", None, 1.0, 0.5, 0.5);
        let (a, b, p) = active_span(&t.samples, 16_000).unwrap();
        assert_eq!(a, 8000);
        assert_eq!(b, 24_000);
        assert!((db(p) - db(0.125)).abs() < 0.1, "{}", db(p));
        assert!(active_span(&[0.0; 100], 16_000).is_none());
    }

    #[test]
    fn events_land_at_the_requested_snr_with_truth_at_their_onset() {
        let ev = tone("bang", Some("gunshot"), 1.0, 0.5, 0.3);
        let (b1, b2) = (noise(7.0, 1), noise(5.0, 2));
        let m = build(&[&ev], &[&b1, &b2], &spec());
        assert_eq!(m.truth.len(), 3);
        assert_eq!(m.duration_s(), 35.0);
        for t in &m.truth {
            assert_eq!(t.group, "gunshot");
            assert!((t.offset_s - t.onset_s - 1.0).abs() < 0.03, "{t:?}");
            let (a, b) = (
                (t.onset_s * 16_000.0) as usize,
                (t.offset_s * 16_000.0) as usize,
            );
            // Around the event: background only, just before it.
            let bg = power(&m.samples, a - 8000, a - 100);
            let mixed = power(&m.samples, a, b);
            // mixed = event + background (uncorrelated): event = mixed - bg.
            let snr = db(mixed - bg) - db(bg);
            assert!((snr - t.snr_db).abs() < 1.5, "{t:?}: measured {snr:.2} dB");
        }
        let snrs: Vec<f64> = m.truth.iter().map(|t| t.snr_db).collect();
        let mut sorted = snrs.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted, [-3.0, 3.0, 9.0]);
    }

    #[test]
    fn the_same_seed_gives_the_same_mixture_and_another_seed_another() {
        let ev = tone("bang", Some("glass"), 0.5, 0.5, 0.0);
        let (b1, b2) = (noise(3.0, 1), noise(4.0, 2));
        let a = build(&[&ev], &[&b1, &b2], &spec());
        let b = build(&[&ev], &[&b1, &b2], &spec());
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.truth, b.truth);
        let c = build(&[&ev], &[&b1, &b2], &MixSpec { seed: 2, ..spec() });
        assert_ne!(a.samples, c.samples);
    }

    #[test]
    fn background_time_excludes_the_events() {
        let ev = tone("bang", Some("glass"), 1.0, 0.5, 0.0);
        let m = build(&[&ev], &[&noise(3.0, 1)], &spec());
        let bg = background_s(&m, 0.5, 2.0);
        assert!((bg - (35.0 - 3.0 * 3.5)).abs() < 0.1, "{bg}");
    }

    #[test]
    fn loud_mixtures_are_scaled_not_clipped() {
        let ev = tone("loud", Some("siren"), 1.0, 0.9, 0.0);
        let b = tone("hum", None, 2.0, 0.9, 0.0);
        let m = build(
            &[&ev],
            &[&b],
            &MixSpec {
                background_dbfs: (-3.0, -3.0),
                ..spec()
            },
        );
        let peak = m.samples.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        assert!(peak <= 0.99 + 1e-6 && peak > 0.5, "{peak}");
    }
}
