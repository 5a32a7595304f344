//! Rolling windows over a stream of log-mel frames (pure logic).
//!
//! A model is called on *units*: for window models (mn04) a unit is the whole
//! analysis window; for patch models (YAMNet) a unit is a fixed patch and a window's
//! score pools the patches that lie wholly inside it. Windows start every `hop`
//! frames; when the stream ends, one last window is aligned to its end so the tail
//! is always scored, and a stream shorter than a window gets one short window.

use std::collections::VecDeque;

use anyhow::Result;

use crate::model::{InputLayout, Manifest, Output, Pooling};

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
    /// How units are pooled into a window.
    pub window_pooling: Pooling,
    /// How units are pooled over the whole stream.
    pub clip_pooling: Pooling,
    /// Seconds per frame hop.
    pub frame_hop_s: f64,
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
        Ok(WindowPlan {
            n_mels: m.frontend.n_mels,
            patch,
            window_frames,
            hop_frames,
            window_pooling: m.windows.window_pooling,
            clip_pooling: m.windows.clip_pooling,
            frame_hop_s: fh,
        })
    }
}

/// One scored window.
#[derive(Debug, Clone)]
pub struct WindowScore {
    /// First frame of the window (absolute, from the stream start).
    pub start_frame: u64,
    /// Frames in the window.
    pub frames: usize,
    /// Window start, seconds from the stream start.
    pub start_s: f64,
    /// Window end, seconds from the stream start.
    pub end_s: f64,
    /// Pooled class scores.
    pub scores: Vec<f32>,
    /// Pooled embedding.
    pub embedding: Vec<f32>,
    /// Model calls pooled into this window.
    pub units: usize,
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

/// Streaming window scorer. The model call is passed in as a closure so the logic
/// can be tested without a network.
pub struct Scorer {
    plan: WindowPlan,
    frames: Vec<f32>,
    base: u64,
    total: u64,
    next_unit: u64,
    units: VecDeque<(u64, Output)>,
    next_window: u64,
    last_end: Option<u64>,
    clip: Pool,
    model_calls: u64,
}

/// Runs the model on one unit of frames (frame-major).
pub type UnitFn<'a> = dyn FnMut(&[f32]) -> Result<Output> + 'a;

impl Scorer {
    /// A scorer for `plan`.
    pub fn new(plan: WindowPlan) -> Self {
        let clip = Pool::new(plan.clip_pooling);
        Scorer {
            plan,
            frames: Vec::new(),
            base: 0,
            total: 0,
            next_unit: 0,
            units: VecDeque::new(),
            next_window: 0,
            last_end: None,
            clip,
            model_calls: 0,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &WindowPlan {
        &self.plan
    }

    /// Frames received so far.
    pub fn total_frames(&self) -> u64 {
        self.total
    }

    /// Model calls made so far.
    pub fn model_calls(&self) -> u64 {
        self.model_calls
    }

    /// Scores pooled over every unit so far (the whole clip).
    pub fn clip_scores(&self) -> Vec<f32> {
        self.clip.result()
    }

    fn frame_slice(&self, start: u64, len: usize) -> &[f32] {
        let m = self.plan.n_mels;
        let s = (start - self.base) as usize * m;
        &self.frames[s..s + len * m]
    }

    fn run_unit(&mut self, start: u64, len: usize, run: &mut UnitFn<'_>) -> Result<Output> {
        let out = run(self.frame_slice(start, len))?;
        self.model_calls += 1;
        self.clip.add(&out.scores);
        Ok(out)
    }

    /// Adds frames (frame-major, a whole number of frames) and appends every window
    /// that became complete to `out`.
    pub fn push(
        &mut self,
        frames: &[f32],
        run: &mut UnitFn<'_>,
        out: &mut Vec<WindowScore>,
    ) -> Result<()> {
        debug_assert_eq!(frames.len() % self.plan.n_mels, 0);
        self.frames.extend_from_slice(frames);
        self.total += (frames.len() / self.plan.n_mels) as u64;
        let w = self.plan.window_frames as u64;
        if let Some((p, ph)) = self.plan.patch {
            while self.total >= self.next_unit + p as u64 {
                let start = self.next_unit;
                let o = self.run_unit(start, p, run)?;
                self.units.push_back((start, o));
                self.next_unit += ph as u64;
            }
        }
        while self.total >= self.next_window + w {
            let start = self.next_window;
            if let Some(ws) = self.window(start, w as usize, run)? {
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
        if t == 0 || self.last_end.is_some_and(|e| e >= t) {
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

    fn window(
        &mut self,
        start: u64,
        len: usize,
        run: &mut UnitFn<'_>,
    ) -> Result<Option<WindowScore>> {
        let (scores, embedding, units) = match self.plan.patch {
            None => {
                let o = self.run_unit(start, len, run)?;
                (o.scores, o.embedding, 1)
            }
            Some((p, _)) => {
                let end = start + len as u64;
                let mut sp = Pool::new(self.plan.window_pooling);
                let mut ep = Pool::new(Pooling::Mean);
                for (s, o) in &self.units {
                    if *s >= start && s + p as u64 <= end {
                        sp.add(&o.scores);
                        ep.add(&o.embedding);
                    }
                }
                if sp.count() == 0 {
                    return Ok(None);
                }
                (sp.result(), ep.result(), sp.count())
            }
        };
        let fh = self.plan.frame_hop_s;
        Ok(Some(WindowScore {
            start_frame: start,
            frames: len,
            start_s: start as f64 * fh,
            end_s: (start + len as u64) as f64 * fh,
            scores,
            embedding,
            units,
        }))
    }

    /// Drops frames and units that no future window (including the tail window)
    /// can reach.
    fn trim(&mut self) {
        let w = self.plan.window_frames as u64;
        let tail_start = self.total.saturating_sub(w);
        let keep_window = self.next_window.min(tail_start);
        let keep_frames = match self.plan.patch {
            None => keep_window,
            Some(_) => self.next_unit.min(self.total),
        };
        if keep_frames > self.base {
            let n = ((keep_frames - self.base) as usize) * self.plan.n_mels;
            self.frames.drain(..n.min(self.frames.len()));
            self.base = keep_frames;
        }
        while self.units.front().is_some_and(|(s, _)| *s < keep_window) {
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
            sc.push(c, &mut run, &mut out).unwrap();
        }
        sc.finish(&mut run, &mut out).unwrap();
        out
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
            sc.push(c, &mut run, &mut out).unwrap();
            assert!(sc.frames.len() <= 8 + 13);
            assert!(sc.units.len() <= 6);
        }
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
