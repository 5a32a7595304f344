//! Trained detectors: a logistic regression per group on the model's pooled
//! embedding (mn04: 384-d per 10 s window; YAMNet: 1024-d averaged over the
//! window's patches), learnt from labelled recordings mixed into home backgrounds.
//!
//! A detector is a small JSON file (`<group>.json`): the model it belongs to, the
//! standardisation (`mean`, `scale`), `weights`, `bias`, and the `on`/`off`
//! thresholds chosen on the training mixtures. Its score for a window is
//! `sigmoid(bias + Σ weights[i] · (e[i] − mean[i]) · scale[i])`. The daemon loads
//! detectors from a folder and uses them in place of the raw AudioSet class scores
//! of their groups, with the same onset, hysteresis and cooldown machinery.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::{GroupScorer, Hop};

/// One group's trained detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearDetector {
    /// Group name.
    pub group: String,
    /// Model whose embedding it reads.
    pub model: String,
    /// Embedding size.
    pub embedding_dim: usize,
    /// Per-dimension mean of the training embeddings.
    pub mean: Vec<f32>,
    /// Per-dimension 1/standard deviation.
    pub scale: Vec<f32>,
    /// Weights on the standardised embedding.
    pub weights: Vec<f32>,
    /// Bias.
    pub bias: f32,
    /// Score at which an event starts.
    pub on: f32,
    /// Score under which it ends.
    pub off: f32,
    /// How it was trained (for people; not read back).
    #[serde(default)]
    pub trained: serde_json::Value,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl LinearDetector {
    /// The detector's score in [0, 1] for an embedding; 0 for an all-zero embedding
    /// (a window the loudness gate skipped) or one of the wrong size.
    pub fn score(&self, e: &[f32]) -> f32 {
        if e.len() != self.embedding_dim || e.iter().all(|&v| v == 0.0) {
            return 0.0;
        }
        let z: f64 = self.bias as f64
            + e.iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .zip(&self.weights)
                .map(|(((&x, &m), &s), &w)| ((x - m) * s * w) as f64)
                .sum::<f64>();
        sigmoid(z) as f32
    }

    /// Checks sizes and values; errors name `origin`.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let d = self.embedding_dim;
        if d == 0 || self.mean.len() != d || self.scale.len() != d || self.weights.len() != d {
            bail!("{origin}: mean, scale and weights must each have embedding_dim = {d} values");
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !finite(&self.mean)
            || !finite(&self.scale)
            || !finite(&self.weights)
            || !self.bias.is_finite()
        {
            bail!("{origin}: holds a value that is not a finite number");
        }
        if !(0.0..=1.0).contains(&self.on) || !(0.0..=1.0).contains(&self.off) || self.off > self.on
        {
            bail!(
                "{origin}: thresholds must satisfy 0 <= off <= on <= 1 (on {}, off {})",
                self.on,
                self.off
            );
        }
        Ok(())
    }

    /// Reads and validates a detector file.
    pub fn load(path: &Path) -> Result<LinearDetector> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the detector {}", path.display()))?;
        let d: LinearDetector =
            serde_json::from_str(&text).map_err(|e| anyhow!("detector {}: {e}", path.display()))?;
        d.validate(&path.display().to_string())?;
        Ok(d)
    }

    /// Writes the detector as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a detector always serialises");
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the detector {}", path.display()))
    }
}

/// The [`GroupScorer`] of a trained detector.
#[derive(Debug, Clone)]
pub struct LinearScorer(pub LinearDetector);

impl GroupScorer for LinearScorer {
    fn score(&mut self, hop: &Hop<'_>) -> f32 {
        self.0.score(hop.embedding)
    }
}

/// The detectors in `dir` for `model` (`*.json`, one per group), sorted by group.
/// A missing folder is no detectors; a file for another model or with bad content
/// is an error naming it.
pub fn load_dir(dir: &Path, model: &str, embedding_dim: usize) -> Result<Vec<LinearDetector>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow!(
                "cannot read the detectors folder {}: {e}",
                dir.display()
            ))
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let d = LinearDetector::load(&p)?;
        if d.model != model || d.embedding_dim != embedding_dim {
            bail!(
                "detector {} was trained for model {} ({}-d embedding), not {model} ({embedding_dim}-d); retrain it with `hearken train --model {model}`",
                p.display(),
                d.model,
                d.embedding_dim
            );
        }
        out.push(d);
    }
    Ok(out)
}

/// The detectors the configuration asks for: `[detection] detectors` = a folder,
/// empty for the model's own `detectors` folder (none if it does not exist), or
/// `off`.
pub fn configured(
    cfg: &crate::config::Config,
    model: &crate::model::Model,
) -> Result<Vec<LinearDetector>> {
    let dir = match cfg.detection.detectors.as_str() {
        "off" => return Ok(Vec::new()),
        "" => model.dir().join("detectors"),
        d => {
            let p = PathBuf::from(d);
            if !p.is_dir() {
                bail!("[detection] detectors: {d} is not a folder (use \"\" for the model's own, or \"off\")");
            }
            p
        }
    };
    let enabled: Vec<&str> = cfg.enabled_groups().map(|(n, _)| n.as_str()).collect();
    Ok(
        load_dir(&dir, model.name(), model.manifest().io.embedding_dim)?
            .into_iter()
            .filter(|d| enabled.contains(&d.group.as_str()))
            .collect(),
    )
}

/// Per-dimension mean and 1/std (1 where a dimension is constant).
pub fn standardisation(x: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for row in x {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for row in x {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    let scale = var
        .iter()
        .map(|&s| {
            let sd = (s / n).sqrt();
            if sd > 1e-8 {
                (1.0 / sd) as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), scale)
}

/// Fits `sigmoid(b + w·z)` to labels `y` on standardised rows `z` by full-batch
/// gradient descent with L2 penalty `l2` on `w`, positives and negatives weighted
/// to count equally. Deterministic (no randomness at all).
pub fn fit_logistic(z: &[Vec<f32>], y: &[bool], l2: f64, iterations: usize) -> (Vec<f32>, f32) {
    let d = z.first().map_or(0, Vec::len);
    let pos = y.iter().filter(|&&v| v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let (wp, wn) = (0.5 / pos, 0.5 / neg);
    let mut w = vec![0f64; d];
    let mut b = 0f64;
    // Adam: robust to the scale of the problem without a tuned step.
    let (lr, b1, b2, eps) = (0.05, 0.9, 0.999, 1e-8);
    let mut m = vec![0f64; d + 1];
    let mut v = vec![0f64; d + 1];
    let mut g = vec![0f64; d + 1];
    for t in 1..=iterations {
        g.iter_mut().for_each(|x| *x = 0.0);
        for (row, &label) in z.iter().zip(y) {
            let s = b + row
                .iter()
                .zip(&w)
                .map(|(&x, &wi)| x as f64 * wi)
                .sum::<f64>();
            let (target, weight) = if label { (1.0, wp) } else { (0.0, wn) };
            let err = (sigmoid(s) - target) * weight;
            for (gi, &x) in g.iter_mut().zip(row) {
                *gi += err * x as f64;
            }
            g[d] += err;
        }
        for (gi, wi) in g.iter_mut().zip(&w) {
            *gi += l2 * wi;
        }
        for i in 0..=d {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t as i32));
            let vh = v[i] / (1.0 - b2.powi(t as i32));
            let step = lr * mh / (vh.sqrt() + eps);
            if i < d {
                w[i] -= step;
            } else {
                b -= step;
            }
        }
    }
    (w.into_iter().map(|x| x as f32).collect(), b as f32)
}

/// Whether a window `[start_s, end_s]` holds enough of an event `[onset, offset]` to
/// count as a positive: `Some(true)` with at least `min_overlap_s` of it (or all of
/// a shorter event), `Some(false)` with none, `None` (left out of training) between.
pub fn window_label(
    start_s: f64,
    end_s: f64,
    onset_s: f64,
    offset_s: f64,
    min_overlap_s: f64,
) -> Option<bool> {
    let overlap = end_s.min(offset_s) - start_s.max(onset_s);
    if overlap <= 0.0 {
        Some(false)
    } else if overlap >= min_overlap_s.min(offset_s - onset_s) {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(w: Vec<f32>, b: f32) -> LinearDetector {
        let d = w.len();
        LinearDetector {
            group: "glass".into(),
            model: "m".into(),
            embedding_dim: d,
            mean: vec![0.0; d],
            scale: vec![1.0; d],
            weights: w,
            bias: b,
            on: 0.6,
            off: 0.4,
            trained: serde_json::Value::Null,
        }
    }

    #[test]
    fn scores_are_a_logistic_of_the_standardised_embedding() {
        let mut d = det(vec![2.0, -1.0], 0.5);
        d.mean = vec![1.0, 0.0];
        d.scale = vec![0.5, 1.0];
        // z = 0.5 + 2 * (3 - 1) * 0.5 - 1 * 1 = 1.5
        assert!((d.score(&[3.0, 1.0]) - sigmoid(1.5) as f32).abs() < 1e-6);
        assert_eq!(d.score(&[0.0, 0.0]), 0.0, "a gated window scores 0");
        assert_eq!(d.score(&[1.0]), 0.0, "a wrong-sized embedding scores 0");
    }

    #[test]
    fn logistic_regression_separates_separable_data_deterministically() {
        // Positives have x0 > 0.5; x1 is noise.
        let z: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                vec![
                    (i as f32 / 100.0) - 1.0,
                    ((i * 37) % 11) as f32 / 11.0 - 0.5,
                ]
            })
            .collect();
        let y: Vec<bool> = z.iter().map(|r| r[0] > 0.5).collect();
        let (w, b) = fit_logistic(&z, &y, 1e-4, 400);
        let acc = z
            .iter()
            .zip(&y)
            .filter(|(r, &l)| (sigmoid(b as f64 + (r[0] * w[0] + r[1] * w[1]) as f64) > 0.5) == l)
            .count();
        // Balanced class weights put the boundary near x0 = 0.5, a few points either side.
        assert!(acc >= 185, "{acc}/200");
        assert!(w[0] > 1.0 && w[1].abs() < w[0].abs() / 5.0, "{w:?}");
        let boundary = -b / w[0];
        assert!((0.3..0.6).contains(&boundary), "{boundary}");
        assert_eq!(fit_logistic(&z, &y, 1e-4, 400), (w, b));
    }

    #[test]
    fn standardisation_centres_and_scales() {
        let x = vec![vec![1.0, 5.0], vec![3.0, 5.0]];
        let (m, s) = standardisation(&x);
        assert_eq!(m, [2.0, 5.0]);
        assert_eq!(s, [1.0, 1.0]); // sd 1; constant column keeps scale 1
    }

    #[test]
    fn windows_are_labelled_by_overlap() {
        assert_eq!(window_label(0.0, 10.0, 12.0, 13.0, 0.5), Some(false));
        assert_eq!(window_label(0.0, 10.0, 9.8, 11.0, 0.5), None);
        assert_eq!(window_label(0.0, 10.0, 9.0, 11.0, 0.5), Some(true));
        // An event shorter than the minimum counts when it is wholly inside.
        assert_eq!(window_label(0.0, 10.0, 4.0, 4.2, 0.5), Some(true));
    }

    #[test]
    fn files_round_trip_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("hearken-det-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = det(vec![1.0, 2.0], 0.1);
        d.save(&dir.join("glass.json")).unwrap();
        assert_eq!(load_dir(&dir, "m", 2).unwrap(), vec![d.clone()]);
        let e = format!("{:#}", load_dir(&dir, "other", 2).unwrap_err());
        assert!(e.contains("glass.json") && e.contains("retrain"), "{e}");
        let mut bad = d;
        bad.weights.pop();
        bad.save(&dir.join("glass.json")).unwrap();
        let e = format!("{:#}", load_dir(&dir, "m", 2).unwrap_err());
        assert!(e.contains("embedding_dim"), "{e}");
        assert!(load_dir(&dir.join("none"), "m", 2).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
