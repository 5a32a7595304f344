//! Tone templates: a household's own beeping device (a smoke alarm, a washing
//! machine's end-of-cycle beep, a doorbell chime) recognised by the log-mel band
//! where its tone stands out, learnt from the few takes `hearken enroll` gets.
//!
//! A head on the model's pooled 2 s embedding hears a 0.5 s beep under speech or a
//! television poorly; the beep is, however, a narrow ridge in the log-mel frames at
//! one pitch, which little else in a home has at that very pitch. A template is two
//! adjacent mel bands (the strongest ridge of the takes) and how far it stood out
//! there. Each frame is scored by two prominences of those bands, each divided by
//! what the takes showed:
//! - *narrow*: each key band above the higher of the means of the four bands on
//!   either side (one band apart), the smaller of the two key bands;
//! - *wide*: the loudest band of the key bands and one on each side, above the
//!   higher of the means of eight bands four further out on either side.
//!
//! and the frame's score is the smaller ratio (1.0: as clear as in the takes). A
//! hop's score is the highest mean of `smooth_frames` consecutive frame scores
//! ending in that hop's frames: a tone must last about 50 ms, a click does not.
//!
//! Pure logic: [`ToneTemplate::learn`] from takes' frames, [`ToneTracker`] fed the
//! stream's frames by the inference stage.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Bands on each side of a key band for the narrow prominence.
const NARROW_W: usize = 4;
/// Gap between a key band and its narrow neighbours.
const NARROW_GAP: usize = 1;
/// Bands on each side for the wide prominence.
const WIDE_W: usize = 8;
/// Gap between the key region and its wide neighbours.
const WIDE_GAP: usize = 4;
/// Frames within this much (log-mel units) of a take's loudest are its tone.
const ACTIVE: f32 = 0.3;
/// A template needs its tone this far above its neighbours (log-mel units, about
/// 6.5 dB for mn04's `(ln(mel) + 4.5) / 5`), narrow and wide.
const MIN_PROMINENCE: f32 = 0.3;

/// A learnt tone: where it is and how clearly it stood out in the takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToneTemplate {
    /// Mel bands of the frames it reads.
    pub n_mels: usize,
    /// The two adjacent key bands, ascending.
    pub bands: [usize; 2],
    /// Median narrow prominence over the takes' tone frames.
    pub narrow_ref: f32,
    /// Median wide prominence over the same frames.
    pub wide_ref: f32,
    /// Frames averaged before a hop takes its highest.
    pub smooth_frames: usize,
}

fn mean(v: &[f32]) -> Option<f32> {
    (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
}

/// `f[k]` above the higher of the means of `w` bands on each side, `gap` bands away
/// (one side alone near an edge; `None` with neither).
fn prominence(f: &[f32], lo: usize, hi: usize, w: usize, gap: usize) -> Option<f32> {
    let peak = f[lo..hi].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let left = lo
        .checked_sub(gap)
        .and_then(|end| mean(&f[end.saturating_sub(w)..end]));
    let right = f.get(hi + gap..(hi + gap + w).min(f.len())).and_then(mean);
    let reference = match (left, right) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return None,
    };
    Some(peak - reference)
}

impl ToneTemplate {
    /// The two raw prominences of frame `f` at `bands` (see the module's
    /// description).
    fn raw(bands: [usize; 2], f: &[f32]) -> Option<(f32, f32)> {
        let narrow = bands
            .iter()
            .map(|&k| prominence(f, k, k + 1, NARROW_W, NARROW_GAP))
            .try_fold(f32::INFINITY, |m, p| p.map(|p| m.min(p)))?;
        let lo = bands[0].saturating_sub(1);
        let hi = (bands[1] + 2).min(f.len());
        let wide = prominence(f, lo, hi, WIDE_W, WIDE_GAP)?;
        Some((narrow, wide))
    }

    /// The score of one frame (`n_mels` values): 1.0 is as clear as in the takes,
    /// 0 or below is no tone there.
    pub fn frame_score(&self, f: &[f32]) -> f32 {
        if f.len() != self.n_mels {
            return 0.0;
        }
        match Self::raw(self.bands, f) {
            Some((n, w)) => (n / self.narrow_ref).min(w / self.wide_ref),
            None => 0.0,
        }
    }

    /// Learns a template from takes (each frame-major, `n_mels` per frame) framed
    /// every `frame_hop_s` seconds. Refused, with why, when no band stands out
    /// clearly in the takes (a knock or a voice is no tone).
    pub fn learn(takes: &[Vec<f32>], n_mels: usize, frame_hop_s: f64) -> Result<Self, String> {
        if n_mels < 2 * (WIDE_W + WIDE_GAP) || takes.is_empty() {
            return Err("too few mel bands or no takes".into());
        }
        // The narrow prominence of every band over each take's loudest frames,
        // averaged over the takes.
        let mut profile = vec![0f32; n_mels];
        let mut counted = 0usize;
        for t in takes {
            let frames: Vec<&[f32]> = t.chunks_exact(n_mels).collect();
            let loudest = |f: &&[f32]| f.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let top = frames.iter().map(loudest).fold(f32::NEG_INFINITY, f32::max);
            let active: Vec<&[f32]> = frames
                .iter()
                .filter(|f| loudest(f) > top - ACTIVE)
                .copied()
                .collect();
            if active.is_empty() {
                continue;
            }
            counted += 1;
            for (k, p) in profile.iter_mut().enumerate() {
                let s: f32 = active
                    .iter()
                    .filter_map(|f| prominence(f, k, k + 1, NARROW_W, NARROW_GAP))
                    .sum();
                *p += s / active.len() as f32;
            }
        }
        if counted == 0 {
            return Err("the takes hold no frames".into());
        }
        let best = |r: std::ops::Range<usize>| {
            r.max_by(|&a, &b| profile[a].total_cmp(&profile[b]))
                .expect("a non-empty range")
        };
        let k1 = best(1..n_mels - 1);
        let k2 = best(k1 - 1..k1 + 2);
        let k2 = if k2 == k1 {
            if profile[k1 - 1] > profile[k1 + 1] {
                k1 - 1
            } else {
                k1 + 1
            }
        } else {
            k2
        };
        let bands = [k1.min(k2), k1.max(k2)];
        // How clear the tone was: the median over every take's frames near its
        // loudest in the strongest key band.
        let (mut narrow, mut wide) = (Vec::new(), Vec::new());
        for t in takes {
            let frames: Vec<&[f32]> = t.chunks_exact(n_mels).collect();
            let top = frames
                .iter()
                .map(|f| f[k1])
                .fold(f32::NEG_INFINITY, f32::max);
            for f in frames.iter().filter(|f| f[k1] > top - ACTIVE) {
                if let Some((n, w)) = Self::raw(bands, f) {
                    narrow.push(n);
                    wide.push(w);
                }
            }
        }
        let median = |v: &mut Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let (narrow_ref, wide_ref) = (median(&mut narrow), median(&mut wide));
        if !(narrow_ref >= MIN_PROMINENCE && wide_ref >= MIN_PROMINENCE) {
            return Err(format!(
                "no tone stands out in the takes (at mel bands {}-{}: {:.1} and {:.1} dB above their neighbours; {:.1} needed)",
                bands[0],
                bands[1],
                narrow_ref * 21.7,
                wide_ref * 21.7,
                MIN_PROMINENCE * 21.7
            ));
        }
        Ok(ToneTemplate {
            n_mels,
            bands,
            narrow_ref,
            wide_ref,
            smooth_frames: ((0.05 / frame_hop_s).round() as usize).max(1),
        })
    }

    /// Checks a template read from a file; `origin` names it in the message.
    pub fn validate(&self, origin: &str, n_mels: usize) -> Result<(), String> {
        let ok = self.n_mels == n_mels
            && self.bands[0] + 1 == self.bands[1]
            && self.bands[1] < n_mels
            && self.narrow_ref.is_finite()
            && self.narrow_ref > 0.0
            && self.wide_ref.is_finite()
            && self.wide_ref > 0.0
            && (1..=100).contains(&self.smooth_frames);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{origin}: its tone template does not fit the model ({} mel bands, bands {:?}): enrol the sound again",
                n_mels, self.bands
            ))
        }
    }
}

/// Frames kept for hop queries.
const KEPT: usize = 2048;

/// A template's scores over a stream: fed every frame, asked for a hop's score.
#[derive(Debug, Clone)]
pub struct ToneTracker {
    template: ToneTemplate,
    recent: VecDeque<f32>,
    sum: f32,
    /// Smoothed scores of frames `base..base + scores.len()`.
    scores: VecDeque<f32>,
    base: u64,
}

impl ToneTracker {
    /// A tracker at the start of a stream.
    pub fn new(template: ToneTemplate) -> Self {
        ToneTracker {
            recent: VecDeque::with_capacity(template.smooth_frames + 1),
            template,
            sum: 0.0,
            scores: VecDeque::with_capacity(KEPT + 1),
            base: 0,
        }
    }

    /// Adds frames (frame-major, `n_mels` each).
    pub fn push(&mut self, frames: &[f32]) {
        for f in frames.chunks_exact(self.template.n_mels) {
            let s = self.template.frame_score(f);
            self.recent.push_back(s);
            self.sum += s;
            if self.recent.len() > self.template.smooth_frames {
                self.sum -= self.recent.pop_front().unwrap_or(0.0);
            }
            // Summed afresh now and then, so rounding cannot drift.
            if (self.base + self.scores.len() as u64).is_multiple_of(1024) {
                self.sum = self.recent.iter().sum();
            }
            self.scores.push_back(self.sum / self.recent.len() as f32);
            if self.scores.len() > KEPT {
                self.scores.pop_front();
                self.base += 1;
            }
        }
    }

    /// The highest smoothed score of frames `[end − hop, end)` (frames counted from
    /// the stream's first; what is no longer kept or not yet pushed is left out).
    pub fn hop_score(&self, end: u64, hop: usize) -> f32 {
        let from = end.saturating_sub(hop as u64).max(self.base);
        let to = end.min(self.base + self.scores.len() as u64);
        (from..to)
            .map(|i| self.scores[(i - self.base) as usize])
            .fold(0.0, f32::max)
    }
}

/// The trackers of a detector's templates, in [`super::Detector::tone_templates`]
/// order: what the inference stage keeps beside its window scorer.
#[derive(Debug, Clone, Default)]
pub struct ToneBank {
    trackers: Vec<ToneTracker>,
    scores: Vec<f32>,
}

impl ToneBank {
    /// Trackers for `templates`, at the start of a stream.
    pub fn new(templates: Vec<ToneTemplate>) -> Self {
        ToneBank {
            scores: vec![0.0; templates.len()],
            trackers: templates.into_iter().map(ToneTracker::new).collect(),
        }
    }

    /// Starts the trackers at frame `frame` of the stream (a bank built while it
    /// runs: after a reload).
    pub fn skip_to(&mut self, frame: u64) {
        for t in &mut self.trackers {
            t.scores.clear();
            t.recent.clear();
            t.sum = 0.0;
            t.base = frame;
        }
    }

    /// Adds the stream's next frames.
    pub fn push(&mut self, frames: &[f32]) {
        for t in &mut self.trackers {
            t.push(frames);
        }
    }

    /// Each template's score for the hop of frames `[end − hop, end)` (empty
    /// without templates).
    pub fn hop_scores(&mut self, end: u64, hop: usize) -> &[f32] {
        for (s, t) in self.scores.iter_mut().zip(&self.trackers) {
            *s = t.hop_score(end, hop);
        }
        &self.scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = 64;

    /// A frame: a sloping floor, with a ridge at `ridge` (two bands) of `height`.
    fn frame(ridge: Option<(usize, f32)>, jitter: f32) -> Vec<f32> {
        let mut f: Vec<f32> = (0..M)
            .map(|k| -1.0 + 0.01 * k as f32 + jitter * ((k * 7919) % 13) as f32 / 13.0)
            .collect();
        if let Some((k, h)) = ridge {
            f[k] += h;
            f[k + 1] += 0.8 * h;
        }
        f
    }

    fn take(ridge: usize, frames: usize) -> Vec<f32> {
        let mut v = Vec::new();
        for i in 0..frames {
            let on = (10..frames - 10).contains(&i);
            v.extend(frame(on.then_some((ridge, 1.5)), 0.1));
        }
        v
    }

    #[test]
    fn a_beep_is_learnt_at_its_bands_and_found_under_other_sound() {
        let t = ToneTemplate::learn(&[take(30, 60), take(30, 80)], M, 0.01).unwrap();
        assert_eq!(t.bands, [30, 31]);
        assert_eq!(t.smooth_frames, 5);
        // As clear as in the takes: about 1.
        let s = t.frame_score(&frame(Some((30, 1.5)), 0.1));
        assert!((0.8..1.2).contains(&s), "{s}");
        // Half as loud above a busier floor: still clearly above nothing.
        let half = t.frame_score(&frame(Some((30, 0.75)), 0.3));
        let none = t.frame_score(&frame(None, 0.3));
        assert!(half > 0.3 && none < 0.15, "{half} {none}");
        // Another pitch is not this tone.
        let other = t.frame_score(&frame(Some((40, 1.5)), 0.1));
        assert!(other < 0.1, "{other}");
        // Broadband sound raising every band is no tone either.
        let loud: Vec<f32> = frame(None, 0.1).iter().map(|v| v + 2.0).collect();
        assert!(t.frame_score(&loud) < 0.15);
        assert_eq!(t.frame_score(&[0.0; 3]), 0.0, "a frame of another size");
        assert!(t.validate("x", M).is_ok());
        assert!(t.validate("x", 128).is_err());
    }

    #[test]
    fn a_take_without_a_tone_is_refused() {
        let flat: Vec<f32> = (0..50).flat_map(|_| frame(None, 0.05)).collect();
        let e = ToneTemplate::learn(&[flat], M, 0.01).unwrap_err();
        assert!(e.contains("no tone stands out"), "{e}");
        assert!(ToneTemplate::learn(&[], M, 0.01).is_err());
        assert!(ToneTemplate::learn(&[vec![0.0; 8]], 8, 0.01).is_err());
    }

    #[test]
    fn a_hop_scores_a_tone_that_lasts_and_not_a_click() {
        let t = ToneTemplate::learn(&[take(20, 60)], M, 0.01).unwrap();
        let mut tr = ToneTracker::new(t);
        // 100 quiet frames, a 2-frame click, 100 quiet, a 30-frame beep, 100 quiet.
        let mut s = Vec::new();
        for i in 0..332 {
            let ridge = (100..102).contains(&i) || (202..232).contains(&i);
            s.extend(frame(ridge.then_some((20, 1.5)), 0.1));
        }
        // Fed in uneven blocks, as the stage gets them.
        for chunk in s.chunks(M * 37) {
            tr.push(chunk);
        }
        let click = tr.hop_score(150, 50);
        let beep = tr.hop_score(250, 50);
        let quiet = tr.hop_score(332, 50);
        assert!(click < 0.5, "{click}");
        assert!(beep > 0.8, "{beep}");
        assert!(quiet < 0.1, "{quiet}");
        // Frames not yet pushed count for nothing.
        assert_eq!(tr.hop_score(10_000, 50), 0.0);
    }
}
