//! Rolling windows over a stream of log-mel frames (pure logic).
//!
//! A model is called on *units*: for window models (mn04) a unit is the whole
//! analysis window; for patch models (YAMNet) a unit is a fixed patch and a window's
//! score pools the patches that lie wholly inside it. Windows start every `hop`
//! frames; when the stream ends, one last window is aligned to its end so the tail
//! is always scored, and a stream shorter than a window gets one short window.
//!
//! Two options serve the live daemon: a *prefill* of silent frames, so the first
//! window is scored one hop after the stream starts instead of one window after;
//! and a loudness *gate*: a unit whose loudest frame is under the gate is not run
//! through the model and scores zero.

use std::collections::VecDeque;

use anyhow::Result;

use crate::model::{InputLayout, Manifest, Output, Pooling};

/// Level given to frames that carry no level (no gating applies to them).
pub const LEVEL_UNKNOWN: f32 = 0.0;
/// Level of digital silence, dBFS.
pub const LEVEL_SILENCE: f32 = -120.0;

/// How frames are grouped into model calls and windows.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    /// Values per frame.
    pub n_mels: usize,
    /// `Some((patch_frames, patch_hop))` for patch models, `None` when a unit is a window.
    pub patch: Option<(usize, usize)>,
    /// Window length, frames.
    pub window_frames: usize,
    /// Hop between windows, frames.
    pub hop_frames: usize,
    /// How units are pooled into a window's `scores`.
    pub window_pooling: Pooling,
    /// How units are pooled over the whole stream.
    pub clip_pooling: Pooling,
    /// Seconds per frame hop.
    pub frame_hop_s: f64,
    /// Classes the model scores.
    pub classes: usize,
    /// Embedding width.
    pub embedding_dim: usize,
    /// The log-mel value of digital silence (used for prefill frames).
    pub silence_value: f32,
}

impl WindowPlan {
    /// The plan a manifest describes, with optional overrides of window and hop
    /// (seconds). Errors say which value is wrong.
    pub fn from_manifest(
        m: &Manifest,
        window_s: Option<f64>,
        hop_s: Option<f64>,
    ) -> Result<Self, String> {
        let fh = m.frontend.frame_hop_s();
        let window_s = window_s.unwrap_or(m.windows.window_s);
        let hop_s = hop_s.unwrap_or(m.windows.hop_s);
        if !(window_s.is_finite() && window_s > 0.0 && window_s <= 600.0) {
            return Err(format!("window {window_s} s must be in (0, 600]"));
        }
        if !(hop_s.is_finite() && hop_s > 0.0 && hop_s <= 600.0) {
            return Err(format!("hop {hop_s} s must be in (0, 600]"));
        }
        let window_frames = ((window_s / fh).round() as usize).max(1);
        let hop_frames = ((hop_s / fh).round() as usize).max(1);
        let patch = match m.io.layout {
            InputLayout::BatchChannelMelsFrames => None,
            InputLayout::BatchFramesMels => {
                let p = m.windows.patch_frames.unwrap_or(1);
                let h = m.windows.patch_hop_frames.unwrap_or(1);
                if window_frames < p {
                    return Err(format!(
                        "window {window_s} s is shorter than one {:.2} s patch",
                        p as f64 * fh
                    ));
                }
                Some((p, h))
            }
        };
        let f = &m.frontend;
        Ok(WindowPlan {
            n_mels: f.n_mels,
            patch,
            window_frames,
            hop_frames,
            window_pooling: m.windows.window_pooling,
            clip_pooling: m.windows.clip_pooling,
            frame_hop_s: fh,
            classes: m.model.classes,
            embedding_dim: m.io.embedding_dim,
            silence_value: ((f.log_offset.ln() + f.norm_add) / f.norm_div) as f32,
        })
    }
}

/// One scored window.
#[derive(Debug, Clone)]
pub struct WindowScore {
    /// First frame of the window (absolute, from the stream start; prefill frames
    /// have negative indices and are not counted).
    pub start_frame: u64,
    /// Frames in the window.
    pub frames: usize,
    /// Window start, seconds from the stream start (0 while prefill is in it).
    pub start_s: f64,
    /// Window end, seconds from the stream start.
    pub end_s: f64,
    /// Class scores pooled by the plan's window pooling.
    pub scores: Vec<f32>,
    /// Class scores pooled by max (equal to `scores` for window models).
    pub scores_max: Vec<f32>,
    /// Class scores pooled by mean (equal to `scores` for window models).
    pub scores_mean: Vec<f32>,
    /// Pooled embedding.
    pub embedding: Vec<f32>,
    /// A fine-tuned network's group probabilities, max-pooled (empty without one,
    /// or when the loudness gate skipped the window).
    pub heads: Vec<f32>,
    /// That network's own AudioSet probabilities, max-pooled (empty likewise).
    pub net_scores: Vec<f32>,
    /// Units pooled into this window.
    pub units: usize,
    /// Units skipped by the loudness gate.
    pub gated_units: usize,
    /// Window loudness (mean power over its frames), dBFS.
    pub dbfs: f32,
    /// Loudest frame in the window, dBFS.
    pub peak_dbfs: f32,
    /// A placeholder for a window the scorer left unscored ([`Scorer::defer_next`]):
    /// times and levels only, every score empty until [`Scorer::resolve`] or
    /// [`WindowScore::filled_from`].
    pub deferred: bool,
}

/// A window whose loudest frame stands at most this far above its mean level (dB)
/// holds steady sound: no knock, clink or bang stands out in it. See
/// [`WindowScore::steady`].
pub const STEADY_CREST_DB: f32 = 10.0;

impl WindowScore {
    /// Whether the window's sound is steady (its loudest frame within
    /// [`STEADY_CREST_DB`] of its mean level): only such a window may be taken to
    /// be like its neighbour when quiet windows are skipped. A short break or bang
    /// stands out of the window it is in, and a network can score it in one
    /// window and not 0.5 s later, so those windows are always scored.
    pub fn steady(&self) -> bool {
        self.peak_dbfs - self.dbfs <= STEADY_CREST_DB
    }

    /// This placeholder with `other`'s model outputs (its times and levels kept):
    /// what a deferred window is taken to be when the windows on both sides of it
    /// are far from any alarm.
    pub fn filled_from(&self, other: &WindowScore) -> WindowScore {
        WindowScore {
            start_frame: self.start_frame,
            frames: self.frames,
            start_s: self.start_s,
            end_s: self.end_s,
            dbfs: self.dbfs,
            peak_dbfs: self.peak_dbfs,
            deferred: false,
            ..other.clone()
        }
    }
}

/// Element-wise pooling accumulator.
#[derive(Debug, Clone)]
pub struct Pool {
    kind: Pooling,
    acc: Vec<f32>,
    n: usize,
}

impl Pool {
    /// An empty accumulator.
    pub fn new(kind: Pooling) -> Self {
        Pool {
            kind,
            acc: Vec::new(),
            n: 0,
        }
    }

    /// Adds one vector.
    pub fn add(&mut self, v: &[f32]) {
        if self.n == 0 {
            self.acc.clear();
            self.acc.extend_from_slice(v);
        } else {
            for (a, &x) in self.acc.iter_mut().zip(v) {
                match self.kind {
                    Pooling::Mean => *a += x,
                    Pooling::Max => *a = a.max(x),
                }
            }
        }
        self.n += 1;
    }

    /// Vectors added so far.
    pub fn count(&self) -> usize {
        self.n
    }

    /// The pooled vector (empty when nothing was added).
    pub fn result(&self) -> Vec<f32> {
        match self.kind {
            Pooling::Mean if self.n > 0 => {
                let k = 1.0 / self.n as f32;
                self.acc.iter().map(|a| a * k).collect()
            }
            _ => self.acc.clone(),
        }
    }
}

struct Unit {
    start: u64,
    out: Output,
    gated: bool,
}

/// Streaming window scorer. The model call is passed in as a closure so the logic
/// can be tested without a network.
pub struct Scorer {
    plan: WindowPlan,
    gate_dbfs: Option<f32>,
    /// Silent frames put in front of the stream (internal indices count them).
    prefill: u64,
    frames: Vec<f32>,
    levels: Vec<f32>,
    base: u64,
    total: u64,
    next_unit: u64,
    units: VecDeque<Unit>,
    next_window: u64,
    last_end: Option<u64>,
    clip: Pool,
    model_calls: u64,
    gated_calls: u64,
    /// Leave the next window unscored ([`Scorer::defer_next`]).
    defer: bool,
    /// Start (internal index) of the window left unscored, until resolved or released.
    pending: Option<u64>,
    deferred_calls: u64,
}

/// Runs the model on one unit of frames (frame-major).
pub type UnitFn<'a> = dyn FnMut(&[f32]) -> Result<Output> + 'a;

impl Scorer {
    /// A scorer for `plan`.
    pub fn new(plan: WindowPlan) -> Self {
        let clip = Pool::new(plan.clip_pooling);
        Scorer {
            plan,
            gate_dbfs: None,
            prefill: 0,
            frames: Vec::new(),
            levels: Vec::new(),
            base: 0,
            total: 0,
            next_unit: 0,
            units: VecDeque::new(),
            next_window: 0,
            last_end: None,
            clip,
            model_calls: 0,
            gated_calls: 0,
            defer: false,
            pending: None,
            deferred_calls: 0,
        }
    }

    /// Units whose loudest frame is below `gate_dbfs` are not run through the model.
    pub fn with_gate(mut self, gate_dbfs: Option<f32>) -> Self {
        self.gate_dbfs = gate_dbfs;
        self
    }

    /// Puts `window - hop` silent frames in front of the stream, so a full window is
    /// scored one hop after the stream starts. Call before the first push.
    pub fn with_prefill(mut self) -> Self {
        let n = self.plan.window_frames.saturating_sub(self.plan.hop_frames);
        let mut frames = vec![self.plan.silence_value; n * self.plan.n_mels];
        let mut levels = vec![LEVEL_SILENCE; n];
        std::mem::swap(&mut self.frames, &mut frames);
        std::mem::swap(&mut self.levels, &mut levels);
        self.total = n as u64;
        self.prefill = n as u64;
        self
    }

    /// The plan.
    pub fn plan(&self) -> &WindowPlan {
        &self.plan
    }

    /// Real frames received so far.
    pub fn total_frames(&self) -> u64 {
        self.total - self.prefill
    }

    /// Model calls made so far.
    pub fn model_calls(&self) -> u64 {
        self.model_calls
    }

    /// Units the gate skipped so far.
    pub fn gated_calls(&self) -> u64 {
        self.gated_calls
    }

    /// Windows left unscored and released so far (model calls the quiet-window
    /// skipping saved).
    pub fn deferred_calls(&self) -> u64 {
        self.deferred_calls
    }

    /// Leaves the next window unscored when `on`: it comes out of [`Scorer::push`]
    /// as a placeholder ([`WindowScore::deferred`]) and its frames are kept until
    /// the caller either scores it ([`Scorer::resolve`]) or takes it to be like
    /// its neighbour ([`Scorer::release`]). One window at a time; windows of
    /// patch-pooling plans are never deferred.
    pub fn defer_next(&mut self, on: bool) {
        self.defer = on && self.plan.patch.is_none();
    }

    /// Scores the window left unscored (`None` if there is none).
    pub fn resolve(&mut self, run: &mut UnitFn<'_>) -> Result<Option<WindowScore>> {
        let Some(start) = self.pending.take() else {
            return Ok(None);
        };
        self.window(start, self.plan.window_frames, run)
    }

    /// Forgets the window left unscored: the caller took it to be like its
    /// neighbour.
    pub fn release(&mut self) {
        if self.pending.take().is_some() {
            self.deferred_calls += 1;
        }
    }

    /// Scores pooled over every unit so far (the whole clip).
    pub fn clip_scores(&self) -> Vec<f32> {
        self.clip.result()
    }

    fn range(&self, start: u64, len: usize) -> std::ops::Range<usize> {
        let s = (start - self.base) as usize;
        s..s + len
    }

    fn run_unit(&mut self, start: u64, len: usize, run: &mut UnitFn<'_>) -> Result<Unit> {
        let r = self.range(start, len);
        let peak = self.levels[r.clone()]
            .iter()
            .copied()
            .fold(LEVEL_SILENCE, f32::max);
        if self.gate_dbfs.is_some_and(|g| peak < g) {
            self.gated_calls += 1;
            let out = Output {
                scores: vec![0.0; self.plan.classes],
                embedding: vec![0.0; self.plan.embedding_dim],
                heads: Vec::new(),
                net_scores: Vec::new(),
            };
            self.clip.add(&out.scores);
            return Ok(Unit {
                start,
                out,
                gated: true,
            });
        }
        let m = self.plan.n_mels;
        let out = run(&self.frames[r.start * m..r.end * m])?;
        self.model_calls += 1;
        self.clip.add(&out.scores);
        Ok(Unit {
            start,
            out,
            gated: false,
        })
    }

    /// Adds frames (frame-major, a whole number of frames) with their levels in dBFS
    /// (one per frame; `None` = unknown, never gated) and appends every window that
    /// became complete to `out`.
    pub fn push(
        &mut self,
        frames: &[f32],
        levels: Option<&[f32]>,
        run: &mut UnitFn<'_>,
        out: &mut Vec<WindowScore>,
    ) -> Result<()> {
        let n = frames.len() / self.plan.n_mels;
        debug_assert_eq!(frames.len() % self.plan.n_mels, 0);
        self.frames.extend_from_slice(frames);
        match levels {
            Some(l) => {
                debug_assert_eq!(l.len(), n);
                self.levels.extend_from_slice(&l[..n.min(l.len())]);
                self.levels
                    .resize(self.frames.len() / self.plan.n_mels, LEVEL_UNKNOWN);
            }
            None => self.levels.resize(self.levels.len() + n, LEVEL_UNKNOWN),
        }
        self.total += n as u64;
        let w = self.plan.window_frames as u64;
        if let Some((p, ph)) = self.plan.patch {
            while self.total >= self.next_unit + p as u64 {
                let start = self.next_unit;
                let u = self.run_unit(start, p, run)?;
                self.units.push_back(u);
                self.next_unit += ph as u64;
            }
        }
        while self.total >= self.next_window + w {
            let start = self.next_window;
            if self.defer && self.pending.is_none() {
                self.defer = false;
                self.pending = Some(start);
                out.push(self.placeholder(start, w as usize));
            } else if let Some(ws) = self.window(start, w as usize, run)? {
                out.push(ws);
            }
            self.last_end = Some(start + w);
            self.next_window += self.plan.hop_frames as u64;
        }
        self.trim();
        Ok(())
    }

    /// Ends the stream: scores the tail window (aligned to the end) unless the last
    /// window already ended there.
    pub fn finish(&mut self, run: &mut UnitFn<'_>, out: &mut Vec<WindowScore>) -> Result<()> {
        let t = self.total;
        if t == self.prefill || self.last_end.is_some_and(|e| e >= t) {
            return Ok(());
        }
        let w = (self.plan.window_frames as u64).min(t);
        let start = t - w;
        if let Some(ws) = self.window(start, w as usize, run)? {
            out.push(ws);
        }
        self.last_end = Some(t);
        Ok(())
    }

    /// Mean and peak level of frames `[start, start + len)`, dBFS.
    fn levels_of(&self, start: u64, len: usize) -> (f32, f32) {
        let lv = &self.levels[self.range(start, len)];
        let peak_dbfs = lv.iter().copied().fold(LEVEL_SILENCE, f32::max);
        let mean_pow = lv.iter().map(|&d| 10f64.powf(d as f64 / 10.0)).sum::<f64>() / len as f64;
        let dbfs = (10.0 * mean_pow.max(1e-12).log10()).max(LEVEL_SILENCE as f64) as f32;
        (dbfs, peak_dbfs)
    }

    /// The placeholder of a window left unscored.
    fn placeholder(&self, start: u64, len: usize) -> WindowScore {
        let (dbfs, peak_dbfs) = self.levels_of(start, len);
        let fh = self.plan.frame_hop_s;
        let real_start = start.saturating_sub(self.prefill);
        let real_end = (start + len as u64).saturating_sub(self.prefill);
        WindowScore {
            start_frame: real_start,
            frames: len,
            start_s: real_start as f64 * fh,
            end_s: real_end as f64 * fh,
            scores: Vec::new(),
            scores_max: Vec::new(),
            scores_mean: Vec::new(),
            embedding: Vec::new(),
            heads: Vec::new(),
            net_scores: Vec::new(),
            units: 0,
            gated_units: 0,
            dbfs,
            peak_dbfs,
            deferred: true,
        }
    }

    fn window(
        &mut self,
        start: u64,
        len: usize,
        run: &mut UnitFn<'_>,
    ) -> Result<Option<WindowScore>> {
        let (dbfs, peak_dbfs) = self.levels_of(start, len);
        let (scores, scores_max, scores_mean, embedding, (heads, net_scores), units, gated_units) =
            match self.plan.patch {
                None => {
                    let u = self.run_unit(start, len, run)?;
                    let s = u.out.scores;
                    (
                        s.clone(),
                        s.clone(),
                        s,
                        u.out.embedding,
                        (u.out.heads, u.out.net_scores),
                        1,
                        u.gated as usize,
                    )
                }
                Some((p, _)) => {
                    let end = start + len as u64;
                    let mut sp = Pool::new(Pooling::Mean);
                    let mut mp = Pool::new(Pooling::Max);
                    let mut ep = Pool::new(Pooling::Mean);
                    let mut hp = Pool::new(Pooling::Max);
                    let mut np = Pool::new(Pooling::Max);
                    let mut gated = 0;
                    for u in &self.units {
                        if u.start >= start && u.start + p as u64 <= end {
                            sp.add(&u.out.scores);
                            mp.add(&u.out.scores);
                            ep.add(&u.out.embedding);
                            if !u.out.heads.is_empty() {
                                hp.add(&u.out.heads);
                            }
                            if !u.out.net_scores.is_empty() {
                                np.add(&u.out.net_scores);
                            }
                            gated += u.gated as usize;
                        }
                    }
                    if sp.count() == 0 {
                        return Ok(None);
                    }
                    let (mean, max) = (sp.result(), mp.result());
                    let scores = match self.plan.window_pooling {
                        Pooling::Mean => mean.clone(),
                        Pooling::Max => max.clone(),
                    };
                    (
                        scores,
                        max,
                        mean,
                        ep.result(),
                        (hp.result(), np.result()),
                        sp.count(),
                        gated,
                    )
                }
            };
        let fh = self.plan.frame_hop_s;
        let real_start = start.saturating_sub(self.prefill);
        let real_end = (start + len as u64).saturating_sub(self.prefill);
        Ok(Some(WindowScore {
            start_frame: real_start,
            frames: len,
            start_s: real_start as f64 * fh,
            end_s: real_end as f64 * fh,
            scores,
            scores_max,
            scores_mean,
            embedding,
            heads,
            net_scores,
            units,
            gated_units,
            dbfs,
            peak_dbfs,
            deferred: false,
        }))
    }

    /// Drops frames and units that no future window (including the tail window)
    /// can reach.
    fn trim(&mut self) {
        let w = self.plan.window_frames as u64;
        let tail_start = self.total.saturating_sub(w);
        let keep_window = self
            .next_window
            .min(tail_start)
            .min(self.pending.unwrap_or(u64::MAX));
        let keep_frames = match self.plan.patch {
            None => keep_window,
            Some(_) => self.next_unit.min(self.total).min(keep_window),
        };
        if keep_frames > self.base {
            let n = (keep_frames - self.base) as usize;
            let n = n.min(self.levels.len());
            self.frames.drain(..n * self.plan.n_mels);
            self.levels.drain(..n);
            self.base += n as u64;
        }
        while self.units.front().is_some_and(|u| u.start < keep_window) {
            self.units.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(patch: Option<(usize, usize)>, window: usize, hop: usize) -> WindowPlan {
        WindowPlan {
            n_mels: 1,
            patch,
            window_frames: window,
            hop_frames: hop,
            window_pooling: Pooling::Mean,
            clip_pooling: Pooling::Mean,
            frame_hop_s: 0.01,
            classes: 1,
            embedding_dim: 2,
            silence_value: -1.0,
        }
    }

    /// Each unit's single score is the mean of its frame values; frames carry their
    /// own index, so a score tells which frames a call saw.
    fn mean_runner(calls: &mut Vec<(f32, usize)>) -> impl FnMut(&[f32]) -> Result<Output> + '_ {
        move |f: &[f32]| {
            calls.push((f[0], f.len()));
            let m = f.iter().sum::<f32>() / f.len() as f32;
            Ok(Output {
                scores: vec![m],
                embedding: vec![m, 1.0],
                heads: Vec::new(),
                net_scores: Vec::new(),
            })
        }
    }

    fn feed(
        sc: &mut Scorer,
        n: usize,
        chunk: usize,
        calls: &mut Vec<(f32, usize)>,
    ) -> Vec<WindowScore> {
        let frames: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mut out = Vec::new();
        let mut run = mean_runner(calls);
        for c in frames.chunks(chunk) {
            sc.push(c, None, &mut run, &mut out).unwrap();
        }
        sc.finish(&mut run, &mut out).unwrap();
        out
    }

    #[test]
    fn a_deferred_window_is_a_placeholder_until_resolved_with_the_same_scores() {
        // Windows of 10 frames every 4; frames carry their index, so a window's
        // score is the mean of its frame indices.
        let frames: Vec<f32> = (0..30).map(|i| i as f32).collect();
        let mut calls = Vec::new();
        let mut run = mean_runner(&mut calls);
        let mut sc = Scorer::new(plan(None, 10, 4));
        let mut out = Vec::new();
        sc.push(&frames[..10], None, &mut run, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        sc.defer_next(true);
        // The next window (frames 4..14) is left unscored: a placeholder.
        sc.push(&frames[10..14], None, &mut run, &mut out).unwrap();
        assert!(out[1].deferred && out[1].scores.is_empty());
        assert_eq!(out[1].start_frame, 4);
        // Its frames outlive the windows after it; scored late, it is as if on time.
        sc.push(&frames[14..26], None, &mut run, &mut out).unwrap();
        assert_eq!(out.len(), 5);
        assert!(out[2..].iter().all(|w| !w.deferred));
        let late = sc.resolve(&mut run).unwrap().unwrap();
        assert_eq!((late.start_frame, late.scores[0]), (4, 8.5));
        assert!(sc.resolve(&mut run).unwrap().is_none());
        drop(run);
        assert_eq!(calls.len(), 5);
        assert_eq!(sc.deferred_calls(), 0);
    }

    #[test]
    fn a_released_window_costs_no_call_and_takes_its_neighbours_scores() {
        let frames: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let mut calls = Vec::new();
        let mut run = mean_runner(&mut calls);
        let mut sc = Scorer::new(plan(None, 10, 4));
        let mut out = Vec::new();
        sc.push(&frames[..10], None, &mut run, &mut out).unwrap();
        sc.defer_next(true);
        sc.push(&frames[10..18], None, &mut run, &mut out).unwrap();
        // One placeholder, then the window after it; the flag lasts one window.
        assert_eq!(out.len(), 3);
        assert!(out[1].deferred && !out[2].deferred);
        let filled = out[1].filled_from(&out[2]);
        assert_eq!((filled.start_frame, filled.end_s), (4, out[1].end_s));
        assert_eq!(filled.scores, out[2].scores);
        assert!(!filled.deferred);
        sc.release();
        sc.finish(&mut run, &mut out).unwrap();
        drop(run);
        // Windows at 0 and 8 (the last ends with the stream): none for the one at 4.
        assert_eq!(calls.len(), 2);
        assert_eq!(sc.deferred_calls(), 1);
    }

    #[test]
    fn patch_plans_never_defer() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(Some((4, 4)), 8, 4));
        sc.defer_next(true);
        let out = feed(&mut sc, 20, 4, &mut calls);
        assert!(out.iter().all(|w| !w.deferred));
    }

    #[test]
    fn window_model_windows_hop_and_cover_the_tail() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 10, 4));
        let out = feed(&mut sc, 25, 3, &mut calls);
        let starts: Vec<u64> = out.iter().map(|w| w.start_frame).collect();
        assert_eq!(starts, vec![0, 4, 8, 12, 15]);
        assert!(out.iter().all(|w| w.frames == 10));
        // The window over frames 15..25 saw exactly those frames.
        assert_eq!(calls.last(), Some(&(15.0, 10)));
        assert!((out[4].scores[0] - 19.5).abs() < 1e-6);
        assert!((out[4].end_s - 0.25).abs() < 1e-9);
    }

    #[test]
    fn short_stream_gets_one_short_window() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 10, 4));
        let out = feed(&mut sc, 6, 100, &mut calls);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start_frame, out[0].frames), (0, 6));
    }

    #[test]
    fn exact_fit_adds_no_duplicate_tail() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 10, 5));
        let out = feed(&mut sc, 20, 7, &mut calls);
        let starts: Vec<u64> = out.iter().map(|w| w.start_frame).collect();
        assert_eq!(starts, vec![0, 5, 10]);
    }

    #[test]
    fn patch_model_pools_the_patches_inside_each_window() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(Some((4, 2)), 8, 4));
        let out = feed(&mut sc, 14, 1, &mut calls);
        // Patches start at 0,2,4,6,8,10.
        assert_eq!(
            calls.iter().map(|c| c.0 as u64).collect::<Vec<_>>(),
            vec![0, 2, 4, 6, 8, 10]
        );
        let starts: Vec<u64> = out.iter().map(|w| w.start_frame).collect();
        assert_eq!(starts, vec![0, 4, 6]);
        // Window 0..8 pools patches 0,2,4 (means 1.5, 3.5, 5.5).
        assert_eq!(out[0].units, 3);
        assert!((out[0].scores[0] - 3.5).abs() < 1e-6);
        // Tail window 6..14 pools patches 6, 8, 10.
        assert_eq!(out[2].units, 3);
        assert!((out[2].scores[0] - 9.5).abs() < 1e-6);
        // The clip pools every patch once.
        assert!((sc.clip_scores()[0] - 6.5).abs() < 1e-6);
        assert_eq!(sc.model_calls(), 6);
    }

    #[test]
    fn memory_stays_bounded_on_long_streams() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(Some((4, 2)), 8, 4));
        let frames: Vec<f32> = vec![0.5; 10_000];
        let mut out = Vec::new();
        let mut run = mean_runner(&mut calls);
        for c in frames.chunks(13) {
            sc.push(c, None, &mut run, &mut out).unwrap();
            assert!(sc.frames.len() <= 8 + 13);
            assert!(sc.units.len() <= 6);
        }
    }

    #[test]
    fn a_window_is_steady_unless_one_frame_stands_out_of_its_level() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 20, 20));
        let mut run = mean_runner(&mut calls);
        let mut out = Vec::new();
        let frames = [1.0f32; 60];
        // A hum (±2 dB), the hum with one frame 20 dB over it (a clink), and the
        // same clink under a level 15 dB louder throughout.
        let mut levels: Vec<f32> = (0..60).map(|i| -50.0 + (i % 3) as f32 * 2.0).collect();
        levels[30] = -30.0;
        for l in &mut levels[40..] {
            *l += 15.0;
        }
        sc.push(&frames, Some(&levels), &mut run, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out[0].steady());
        assert!(!out[1].steady(), "{} / {}", out[1].peak_dbfs, out[1].dbfs);
        assert!(out[2].steady());
    }

    #[test]
    fn prefill_scores_the_first_window_one_hop_in() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 10, 4)).with_prefill();
        let out = feed(&mut sc, 9, 1, &mut calls);
        // 6 silent frames in front: windows end at real frames 4 and 8, then the tail.
        let ends: Vec<f64> = out.iter().map(|w| w.end_s).collect();
        assert_eq!(ends.len(), 3);
        assert!((ends[0] - 0.04).abs() < 1e-9 && (ends[1] - 0.08).abs() < 1e-9);
        assert!((ends[2] - 0.09).abs() < 1e-9);
        assert_eq!(out[0].start_s, 0.0);
        // The first call saw 6 silence frames (-1) then real frames 0..4.
        assert_eq!(calls[0], (-1.0, 10));
        assert_eq!(sc.total_frames(), 9);
    }

    #[test]
    fn the_gate_skips_quiet_units_and_reports_levels() {
        let mut calls = Vec::new();
        let mut sc = Scorer::new(plan(None, 4, 4)).with_gate(Some(-50.0));
        let mut run = mean_runner(&mut calls);
        let mut out = Vec::new();
        let frames = [1.0f32; 8];
        let levels = [-60.0, -70.0, -55.0, -65.0, -60.0, -40.0, -60.0, -60.0];
        sc.push(&frames, Some(&levels), &mut run, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].gated_units, 1);
        assert_eq!(out[0].scores, vec![0.0]);
        assert_eq!(out[1].gated_units, 0);
        assert_eq!(out[1].peak_dbfs, -40.0);
        assert!(
            out[1].dbfs > -47.0 && out[1].dbfs < -45.0,
            "{}",
            out[1].dbfs
        );
        assert_eq!((sc.model_calls(), sc.gated_calls()), (1, 1));
    }

    #[test]
    fn max_pooling_takes_the_peak() {
        let mut p = Pool::new(Pooling::Max);
        p.add(&[0.1, 0.9]);
        p.add(&[0.5, 0.2]);
        assert_eq!(p.result(), vec![0.5, 0.9]);
        let mut m = Pool::new(Pooling::Mean);
        m.add(&[0.0, 1.0]);
        m.add(&[1.0, 1.0]);
        assert_eq!(m.result(), vec![0.5, 1.0]);
    }
}
