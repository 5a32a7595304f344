//! Trained detectors: a logistic regression per group on what the model says about
//! each window — its pooled embedding (mn04: 384-d per window; YAMNet: 1024-d
//! averaged over the window's patches), the log-odds of its AudioSet class scores,
//! or both — learnt from labelled recordings mixed into home backgrounds.
//!
//! A detector is a small JSON file (`<group>.json`): the model it belongs to, the
//! `features` it reads (`embedding`, `scores` or `embedding_scores`: the embedding
//! followed by `ln(p / (1 − p))` of each class score, max-pooled over the window,
//! `p` clamped to [1e-6, 1 − 1e-6]), the standardisation (`mean`, `scale`),
//! `weights`, `bias`, and the `on`/`off` thresholds chosen on validation mixtures.
//! Its score for a window with features `x` is
//! `sigmoid(bias + Σ weights[i] · (x[i] − mean[i]) · scale[i])`. The daemon loads
//! detectors from a folder and uses them in place of the raw AudioSet class scores
//! of their groups, with the same onset, hysteresis and cooldown machinery.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::tone::ToneTemplate;
use super::{GroupScorer, Hop};

/// What a detector reads from each scored window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Features {
    /// The model's pooled embedding.
    #[default]
    Embedding,
    /// The log-odds of every class score (max-pooled over the window).
    Scores,
    /// The embedding, then the class log-odds.
    EmbeddingScores,
    /// The log-odds of a fine-tuned network's group outputs (see [`NetRef`]); its
    /// weights pick the group's own output.
    Net,
}

impl Features {
    /// Every kind, in the order training tries them.
    pub const ALL: [Features; 3] = [
        Features::Scores,
        Features::Embedding,
        Features::EmbeddingScores,
    ];

    /// The name used in detector files.
    pub fn name(self) -> &'static str {
        match self {
            Features::Embedding => "embedding",
            Features::Scores => "scores",
            Features::EmbeddingScores => "embedding_scores",
            Features::Net => "net",
        }
    }

    /// Length of the feature vector, for a model with `heads` group outputs.
    pub fn dim(self, embedding_dim: usize, classes: usize, heads: usize) -> usize {
        match self {
            Features::Embedding => embedding_dim,
            Features::Scores => classes,
            Features::EmbeddingScores => embedding_dim + classes,
            Features::Net => heads,
        }
    }

    /// Writes the hop's features into `out` (cleared first); `false`, with `out`
    /// empty, for a window the loudness gate skipped (all-zero embedding and scores).
    pub fn extract(self, hop: &Hop<'_>, out: &mut Vec<f32>) -> bool {
        out.clear();
        let gated =
            hop.embedding.iter().all(|&v| v == 0.0) && hop.scores_max.iter().all(|&v| v == 0.0);
        if gated {
            return false;
        }
        let log_odds = |p: &f32| log_odds(*p);
        match self {
            Features::Net => {
                out.extend(hop.heads.iter().map(log_odds));
                return !out.is_empty();
            }
            Features::Embedding => out.extend_from_slice(hop.embedding),
            Features::Scores => out.extend(hop.scores_max.iter().map(log_odds)),
            Features::EmbeddingScores => {
                out.extend_from_slice(hop.embedding);
                out.extend(hop.scores_max.iter().map(log_odds));
            }
        }
        true
    }
}

/// `ln(p / (1 − p))` with `p` clamped to [1e-6, 1 − 1e-6]: how detectors, the
/// home store and the home correction read a class score.
pub fn log_odds(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// A hidden layer of rectified linear units: unit `j` is
/// `max(0, bias[j] + Σ weights[j · n + i] · x[i])` over the `n` standardised features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hidden {
    /// Row-major weights, one row of `n` inputs per unit.
    pub weights: Vec<f32>,
    /// One bias per unit.
    pub bias: Vec<f32>,
}

/// AudioSet evidence a trained detector needs before it may fire: one of its group's
/// own classes must score at least `min` (max-pooled over the window). A detector
/// learnt from a few hundred recordings can answer anything for a kind of sound it
/// never saw (rain, applause, birdsong); the network behind it has heard two million
/// clips, and its own classes stay near zero on such sounds. Training picks `min`
/// by cross-validation as the strictest level that costs (almost) no recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Indices of the group's classes in the model's labels.
    pub classes: Vec<usize>,
    /// Lowest class score that lets the detector fire.
    pub min: f32,
}

impl Gate {
    /// The highest of `classes` in a window's max-pooled `scores` (0 for none): what
    /// a gate compares with `min`.
    pub fn evidence(classes: &[usize], scores: &[f32]) -> f32 {
        classes
            .iter()
            .filter_map(|&i| scores.get(i).copied())
            .fold(0.0, f32::max)
    }

    /// Whether the window's max-pooled `scores` show enough evidence.
    pub fn passes(&self, scores: &[f32]) -> bool {
        Gate::evidence(&self.classes, scores) >= self.min
    }
}

/// The fine-tuned network a detector reads ([`Features::Net`]): a file beside the
/// detector files, which the daemon then runs in place of the model's own network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRef {
    /// File name, in the detectors folder.
    pub file: String,
    /// Its sha256: a network retrained without its detectors is refused.
    pub sha256: String,
    /// Its group outputs, in order.
    pub groups: Vec<String>,
    /// Where it was found (set when the detector is loaded).
    #[serde(skip)]
    pub path: PathBuf,
}

/// One group's trained detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearDetector {
    /// Group name.
    pub group: String,
    /// Model whose embedding it reads.
    pub model: String,
    /// Embedding size.
    pub embedding_dim: usize,
    /// What it reads (files from before this field read the embedding).
    #[serde(default)]
    pub features: Features,
    /// Number of class scores (0 when it reads none).
    #[serde(default)]
    pub classes: usize,
    /// The fine-tuned network whose outputs it reads (with [`Features::Net`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetRef>,
    /// Window length it was trained on, seconds (0: not recorded).
    #[serde(default)]
    pub window_s: f64,
    /// Hop it was trained on, seconds (0: not recorded).
    #[serde(default)]
    pub hop_s: f64,
    /// Per-feature mean over the training windows.
    pub mean: Vec<f32>,
    /// Per-dimension 1/standard deviation.
    pub scale: Vec<f32>,
    /// Output weights: on the standardised features, or on the hidden units.
    pub weights: Vec<f32>,
    /// Output bias.
    pub bias: f32,
    /// A hidden layer between features and output (a small MLP); none for a
    /// logistic regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Hidden>,
    /// The AudioSet evidence it needs before it may fire (none: it fires on its
    /// score alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Onset rule chosen in training: an event starts when the score reaches `on`
    /// in `onset_hops` of the last `onset_of` hops (0: the group's own rule).
    #[serde(default)]
    pub onset_hops: usize,
    /// See `onset_hops`.
    #[serde(default)]
    pub onset_of: usize,
    /// A score at which an event starts on its own hop, without the onset rule
    /// (none: only the rule starts events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sure: Option<f32>,
    /// Score at which an event starts.
    pub on: f32,
    /// Score under which it ends.
    pub off: f32,
    /// How it was trained (for people; not read back).
    #[serde(default)]
    pub trained: serde_json::Value,
    /// What `hearken adapt` learnt in this home (none: the shipped detector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<HomeCorrection>,
    /// A household's own tone (`hearken enroll`), found beside the score above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tone: Option<ToneRule>,
}

/// A tone template with its threshold: an enrolled detector raises its group when
/// the template's hop score reaches `on`, whatever its head says (see
/// [`super::tone`]). The hop's group score is then the higher of the head's and
/// the tone's, the tone's mapped onto the detector's thresholds: `sure` (or `on`)
/// from `on` up, `off`…`on` between `on / 2` and `on`, below `off` under that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToneRule {
    /// The template.
    pub template: ToneTemplate,
    /// Hop score at which the tone counts as heard.
    pub on: f32,
    /// How it was calibrated (for people; not read back).
    #[serde(default)]
    pub trained: serde_json::Value,
}

impl ToneRule {
    /// The group score of a hop whose tone score is `t`, for a detector with
    /// thresholds `off`, `on` and `sure`.
    pub fn score(&self, t: f32, off: f32, on: f32, sure: Option<f32>) -> f32 {
        let half = 0.5 * self.on;
        if !t.is_finite() || t <= 0.0 {
            0.0
        } else if t >= self.on {
            sure.unwrap_or(on).max(on)
        } else if t >= half {
            off + (on - off) * (t - half) / half
        } else {
            off * t / half
        }
    }
}

/// A correction `hearken adapt` learnt from one home's stored windows: a term added
/// to the detector's log-odds, `−softplus(−(bias + Σ weights[i] · (x[i] − mean[i]) ·
/// scale[i]))` on the log-odds `x` of the model's AudioSet class scores (max-pooled
/// over the window, clamped as detectors read them). It is never positive: it can
/// only lower a score (for windows that sound like the household's false alarms:
/// its baby, its television), so a window the shipped detector ignores stays
/// ignored. Reading the class scores rather than the embedding makes it learn
/// kinds of sound, which carry over to the next recording of the same kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeCorrection {
    /// Per-class mean of the log-odds.
    pub mean: Vec<f32>,
    /// Per-dimension 1/standard deviation.
    pub scale: Vec<f32>,
    /// Weights on the standardised log-odds, one per class of the model.
    pub weights: Vec<f32>,
    /// Bias.
    pub bias: f32,
    /// sha256 of the shipped detector file it was learnt for: a correction outlives
    /// no retraining or upgrade of that file.
    pub from_sha256: String,
    /// The shipped detector's `off`: windows whose uncorrected score reaches it are
    /// the ones the home store keeps.
    pub shipped_off: f32,
    /// What adapting measured (for people; not read back).
    #[serde(default)]
    pub adapted: serde_json::Value,
}

impl HomeCorrection {
    /// The (non-positive) log-odds added for a window whose class log-odds are
    /// `e`; 0 for a vector of another size (a window the loudness gate skipped).
    pub fn logit(&self, e: &[f32]) -> f32 {
        if e.len() != self.weights.len() {
            return 0.0;
        }
        let u = self.bias
            + e.iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .zip(&self.weights)
                .map(|(((x, m), s), w)| (x - m) * s * w)
                .sum::<f32>();
        // −softplus(−u), computed without overflow.
        -((-u).max(0.0) + (-(u.abs())).exp().ln_1p())
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let d = self.weights.len();
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if d == 0 || self.mean.len() != d || self.scale.len() != d {
            bail!("{origin}: the home correction must have as many means and scales as weights, one per class");
        }
        if !finite(&self.mean)
            || !finite(&self.scale)
            || !finite(&self.weights)
            || !self.bias.is_finite()
            || !(0.0..=1.0).contains(&self.shipped_off)
        {
            bail!("{origin}: the home correction holds a value that is not a finite number");
        }
        Ok(())
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl LinearDetector {
    /// A glass detector on `w.len()` standardised inputs for unit tests (10 s
    /// windows, on 0.6, off 0.4).
    #[cfg(test)]
    pub(crate) fn for_test(w: Vec<f32>, b: f32) -> LinearDetector {
        LinearDetector {
            group: "glass".into(),
            model: "m".into(),
            window_s: 10.0,
            hop_s: 1.0,
            on: 0.6,
            off: 0.4,
            ..LinearDetector::on_standardised(w.len(), w, b, None)
        }
    }

    /// A detector over `dim` features that are standardised already (mean 0, scale
    /// 1), as training scores its rows; no group, model or thresholds yet.
    pub fn on_standardised(
        dim: usize,
        weights: Vec<f32>,
        bias: f32,
        hidden: Option<Hidden>,
    ) -> LinearDetector {
        LinearDetector {
            tone: None,
            group: String::new(),
            model: String::new(),
            embedding_dim: dim,
            features: Features::Embedding,
            classes: 0,
            net: None,
            window_s: 0.0,
            hop_s: 0.0,
            mean: vec![0.0; dim],
            scale: vec![1.0; dim],
            weights,
            bias,
            hidden,
            gate: None,
            onset_hops: 0,
            onset_of: 0,
            sure: None,
            on: 1.0,
            off: 1.0,
            trained: serde_json::Value::Null,
            home: None,
        }
    }

    /// Length of its feature vector.
    pub fn input_dim(&self) -> usize {
        let heads = self.net.as_ref().map_or(0, |n| n.groups.len());
        self.features.dim(self.embedding_dim, self.classes, heads)
    }

    /// The detector's score in [0, 1] for a feature vector; 0 for an empty one (a
    /// window the loudness gate skipped) or one of the wrong size. The home
    /// correction is not applied (see [`LinearDetector::logit`]).
    pub fn score(&self, e: &[f32]) -> f32 {
        self.logit(e).map_or(0.0, |z| sigmoid(z) as f32)
    }

    /// The detector's log-odds for a feature vector (none for an empty one or one
    /// of the wrong size), before any home correction.
    pub fn logit(&self, e: &[f32]) -> Option<f64> {
        if e.len() != self.input_dim() {
            return None;
        }
        let std = |i: usize| (e[i] - self.mean[i]) * self.scale[i];
        let z: f64 = match &self.hidden {
            None => {
                self.bias as f64
                    + (0..e.len())
                        .map(|i| (std(i) * self.weights[i]) as f64)
                        .sum::<f64>()
            }
            Some(h) => {
                let n = e.len();
                self.bias as f64
                    + h.weights
                        .chunks_exact(n)
                        .zip(&h.bias)
                        .zip(&self.weights)
                        .map(|((row, &b), &w)| {
                            let a = b + (0..n).map(|i| row[i] * std(i)).sum::<f32>();
                            (a.max(0.0) * w) as f64
                        })
                        .sum::<f64>()
            }
        };
        Some(z)
    }

    /// Checks sizes and values; errors name `origin`.
    pub fn validate(&self, origin: &str) -> Result<()> {
        match (&self.net, self.features) {
            (None, Features::Net) => bail!("{origin}: features = \"net\" needs a `net`"),
            (Some(_), f) if f != Features::Net => {
                bail!("{origin}: a `net` goes with features = \"net\" only")
            }
            (Some(n), _) => {
                let plain = !n.file.is_empty()
                    && !n.file.contains(['/', '\\', '\0'])
                    && n.file != ".."
                    && n.file != ".";
                if !plain
                    || n.sha256.len() != 64
                    || !n.sha256.chars().all(|c| c.is_ascii_hexdigit())
                    || n.groups.is_empty()
                {
                    bail!("{origin}: `net` needs a file name in the detectors folder, its 64-digit sha256 and its groups");
                }
            }
            (None, _) => {}
        }
        let d = self.input_dim();
        let out_dim = match &self.hidden {
            None => d,
            Some(h) => {
                let units = h.bias.len();
                if units == 0
                    || h.weights.len() != units * d
                    || !h.weights.iter().chain(&h.bias).all(|x| x.is_finite())
                {
                    bail!("{origin}: the hidden layer must have finite weights for {units} units × {d} features");
                }
                units
            }
        };
        if d == 0 || self.mean.len() != d || self.scale.len() != d || self.weights.len() != out_dim
        {
            bail!(
                "{origin}: mean and scale must have {d} values and weights {out_dim} ({} features of embedding_dim {} and {} classes)",
                self.features.name(),
                self.embedding_dim,
                self.classes
            );
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
        if let Some(g) = &self.gate {
            if g.classes.is_empty()
                || g.classes.iter().any(|&i| i >= self.classes)
                || !(0.0..=1.0).contains(&g.min)
            {
                bail!(
                    "{origin}: the gate needs class indices under classes ({}) and a min in [0, 1]",
                    self.classes
                );
            }
        }
        if self.sure.is_some_and(|s| !(self.on..=1.0).contains(&s)) {
            bail!(
                "{origin}: sure ({}) must lie between on ({}) and 1",
                self.sure.unwrap_or_default(),
                self.on
            );
        }
        if let Some(h) = &self.home {
            h.validate(origin)?;
        }
        if let Some(t) = &self.tone {
            if !(t.on.is_finite() && t.on > 0.0) {
                bail!("{origin}: the tone's on must be a number above 0");
            }
            t.template
                .validate(origin, t.template.n_mels)
                .map_err(anyhow::Error::msg)?;
        }
        if self.onset_hops > self.onset_of || self.onset_of > 60 {
            bail!(
                "{origin}: onset_hops ({}) must not exceed onset_of ({}), which is at most 60",
                self.onset_hops,
                self.onset_of
            );
        }
        Ok(())
    }

    /// Moves `on`, `off` and `sure` by `logits` in log-odds, keeping
    /// `off <= on <= sure`.
    pub fn shift_thresholds(&mut self, logits: f64) {
        let shift = |p: f32| {
            let p = (p as f64).clamp(1e-9, 1.0 - 1e-9);
            (1.0 / (1.0 + (-((p / (1.0 - p)).ln() + logits)).exp())) as f32
        };
        self.on = shift(self.on);
        self.off = shift(self.off).min(self.on);
        self.sure = self.sure.map(|s| shift(s).max(self.on));
        // A tone's threshold stays: enrolling set it for its false-alarm target
        // on its own scale, so a sweep shows what the tone adds at each of the
        // head's thresholds.
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
pub struct LinearScorer {
    detector: LinearDetector,
    features: Vec<f32>,
    classes: Vec<f32>,
    base: f32,
    /// The last hop's score with the evidence gate open ([`GroupScorer::reach`]).
    reach: f32,
    /// Where this detector's tone score sits in [`Hop::tones`].
    tone_slot: Option<usize>,
}

/// A hop's scores by a trained detector.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Parts {
    /// The head's score, before any home correction.
    base: f32,
    /// The score acted on.
    score: f32,
    /// `score` had the evidence gate let the hop through.
    reach: f32,
}

impl LinearScorer {
    /// A scorer for `detector`.
    pub fn new(detector: LinearDetector) -> Self {
        let features = Vec::with_capacity(detector.input_dim());
        let classes = Vec::with_capacity(detector.classes);
        LinearScorer {
            detector,
            features,
            classes,
            base: 0.0,
            reach: 0.0,
            tone_slot: None,
        }
    }

    /// The head's score, the home-corrected one and its reach, each raised to
    /// the tone's.
    fn score_parts(&mut self, hop: &Hop<'_>) -> Parts {
        let p = self.head_parts(hop);
        let d = &self.detector;
        match (&d.tone, self.tone_slot.and_then(|i| hop.tones.get(i))) {
            (Some(rule), Some(&t)) => {
                let s = rule.score(t, d.off, d.on, d.sure);
                Parts {
                    base: p.base.max(s),
                    score: p.score.max(s),
                    reach: p.reach.max(s),
                }
            }
            _ => p,
        }
    }

    fn head_parts(&mut self, hop: &Hop<'_>) -> Parts {
        let zero = Parts {
            base: 0.0,
            score: 0.0,
            reach: 0.0,
        };
        if !self.detector.features.extract(hop, &mut self.features) {
            return zero;
        }
        let Some(z) = self.detector.logit(&self.features) else {
            return zero;
        };
        let base = sigmoid(z) as f32;
        let score = match &self.detector.home {
            None => base,
            Some(h) => {
                self.classes.clear();
                self.classes
                    .extend(hop.scores_max.iter().map(|&p| log_odds(p)));
                sigmoid(z + h.logit(&self.classes) as f64) as f32
            }
        };
        if let Some(g) = &self.detector.gate {
            // A fine-tuned network's detector gates on that network's own AudioSet
            // outputs (what training calibrated it with), not on the model's.
            let evidence = match self.detector.features {
                Features::Net => hop.net_scores,
                _ => hop.scores_max,
            };
            if !g.passes(evidence) {
                return Parts {
                    reach: score,
                    ..zero
                };
            }
        }
        Parts {
            base,
            score,
            reach: score,
        }
    }
}

impl GroupScorer for LinearScorer {
    fn score(&mut self, hop: &Hop<'_>) -> f32 {
        let p = self.score_parts(hop);
        self.base = p.base;
        self.reach = p.reach;
        p.score
    }

    fn reach(&mut self, hop: &Hop<'_>) -> Option<f32> {
        Some(self.score_parts(hop).reach)
    }

    fn last_reach(&self) -> Option<f32> {
        Some(self.reach)
    }

    fn tone(&mut self, slot: usize) -> Option<ToneTemplate> {
        let t = self.detector.tone.as_ref()?.template.clone();
        self.tone_slot = Some(slot);
        Some(t)
    }

    fn base(&self) -> Option<(f32, f32)> {
        let floor = self
            .detector
            .home
            .as_ref()
            .map_or(self.detector.off, |h| h.shipped_off);
        Some((self.base, floor))
    }
}

/// The detectors in `dir` for `model` (`*.json`, one per group), sorted by group.
/// A missing folder is no detectors; a file for another model or with bad content
/// is an error naming it.
pub fn load_dir(
    dir: &Path,
    model: &str,
    embedding_dim: usize,
    classes: usize,
) -> Result<Vec<LinearDetector>> {
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
    let mut net: Option<NetRef> = None;
    for p in paths {
        let mut d = LinearDetector::load(&p)?;
        if let Some(n) = &mut d.net {
            n.path = dir.join(&n.file);
            match &net {
                Some(first) if (&first.file, &first.sha256, &first.groups) != (&n.file, &n.sha256, &n.groups) => bail!(
                    "detector {} reads the network {} ({}), another detector in {} reads {} ({}); one folder holds one fine-tuned network: retrain them together",
                    p.display(),
                    n.file,
                    n.sha256,
                    dir.display(),
                    first.file,
                    first.sha256
                ),
                Some(_) => {}
                None => net = Some(n.clone()),
            }
        }
        let reads_classes =
            d.features != Features::Embedding || d.gate.is_some() || d.home.is_some();
        if d.home.as_ref().is_some_and(|h| h.weights.len() != classes) {
            bail!(
                "detector {}: its home correction reads {} classes, the model {model} has {classes}; `hearken adapt --reset` removes it",
                p.display(),
                d.home.as_ref().map_or(0, |h| h.weights.len())
            );
        }
        let wrong_classes = reads_classes && d.classes != classes;
        if d.model != model || d.embedding_dim != embedding_dim || wrong_classes {
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

/// The folder `[detection] detectors` names: the model's own `detectors` folder
/// for `""` (it may not exist), none for `off`; a named folder must exist.
pub fn detectors_dir(
    detection: &super::config::DetectionConfig,
    model: &crate::model::Model,
) -> Result<Option<PathBuf>> {
    Ok(Some(match detection.detectors.as_str() {
        "off" => return Ok(None),
        "" => model.dir().join("detectors"),
        d => {
            let p = PathBuf::from(d);
            if !p.is_dir() {
                bail!("[detection] detectors: {d} is not a folder (use \"\" for the model's own, or \"off\")");
            }
            p
        }
    }))
}

/// The detectors the configuration asks for: `[detection] detectors` = a folder,
/// empty for the model's own `detectors` folder (none if it does not exist), or
/// `off`.
pub fn configured(
    detection: &super::config::DetectionConfig,
    window: &crate::model::config::ModelConfig,
    model: &crate::model::Model,
) -> Result<Vec<LinearDetector>> {
    let Some(dir) = detectors_dir(detection, model)? else {
        return Ok(Vec::new());
    };
    let enabled: Vec<&str> = detection
        .enabled_groups()
        .map(|(n, _)| n.as_str())
        .collect();
    let detectors: Vec<LinearDetector> = load_dir(
        &dir,
        model.name(),
        model.manifest().io.embedding_dim,
        model.labels().len(),
    )?
    .into_iter()
    .filter(|d| enabled.contains(&d.group.as_str()))
    .collect();
    for d in &detectors {
        let differs = |a: f64, b: f64| a > 0.0 && (a - b).abs() > 1e-6;
        if differs(d.window_s, window.window_s) || differs(d.hop_s, window.hop_s) {
            bail!(
                "the {} detector in {} was trained on {} s windows every {} s, but [model] has window_s = {} and hop_s = {}; set those or retrain it",
                d.group,
                dir.display(),
                d.window_s,
                d.hop_s,
                window.window_s,
                window.hop_s
            );
        }
    }
    Ok(detectors)
}

/// The model the daemon runs for `detectors`: `model` itself, or, when they read
/// a fine-tuned network, `model` with that network run beside its own (checked
/// against the sha256 they recorded).
pub fn model_for(
    model: &std::sync::Arc<crate::model::Model>,
    detectors: &[LinearDetector],
) -> Result<std::sync::Arc<crate::model::Model>> {
    match detectors.iter().find_map(|d| d.net.as_ref()) {
        None => Ok(model.clone()),
        Some(n) => Ok(std::sync::Arc::new(model.with_net(
            &n.path,
            &n.sha256,
            n.groups.len(),
        )?)),
    }
}

/// Window and hop `hearken train` uses unless told otherwise: short windows keep a
/// one-second bang from being averaged away in ten seconds of room sound, and a
/// half-second hop announces it sooner.
pub const TRAIN_WINDOW_S: f64 = 2.0;
/// See [`TRAIN_WINDOW_S`].
pub const TRAIN_HOP_S: f64 = 0.5;

/// Lets the model's own trained detectors bring their window: when `[detection]
/// detectors` is `""` (the model's `detectors` folder) and `[model] window_s` and
/// `hop_s` are at their defaults, and every enabled group's detector there was
/// trained on one window and hop, the configuration takes those. Returns the
/// window and hop it set, if it changed anything.
pub fn adopt_window(
    detection: &super::config::DetectionConfig,
    window: &mut crate::model::config::ModelConfig,
    model: &crate::model::Model,
) -> Result<Option<(f64, f64)>> {
    use crate::model::config::{DEFAULT_HOP_S, DEFAULT_WINDOW_S};
    if !detection.detectors.is_empty()
        || window.window_s != DEFAULT_WINDOW_S
        || window.hop_s != DEFAULT_HOP_S
    {
        return Ok(None);
    }
    let enabled: Vec<&str> = detection
        .enabled_groups()
        .map(|(n, _)| n.as_str())
        .collect();
    let windows: Vec<(f64, f64)> = load_dir(
        &model.dir().join("detectors"),
        model.name(),
        model.manifest().io.embedding_dim,
        model.labels().len(),
    )?
    .iter()
    .filter(|d| enabled.contains(&d.group.as_str()) && d.window_s > 0.0)
    .map(|d| (d.window_s, d.hop_s))
    .collect();
    match windows.first() {
        Some(&w) if windows.iter().all(|&x| x == w) && w != (window.window_s, window.hop_s) => {
            (window.window_s, window.hop_s) = w;
            Ok(Some(w))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(w: Vec<f32>, b: f32) -> LinearDetector {
        LinearDetector::for_test(w, b)
    }

    #[test]
    fn scores_are_a_logistic_of_the_standardised_embedding() {
        let mut d = det(vec![2.0, -1.0], 0.5);
        d.mean = vec![1.0, 0.0];
        d.scale = vec![0.5, 1.0];
        // z = 0.5 + 2 * (3 - 1) * 0.5 - 1 * 1 = 1.5
        assert!((d.score(&[3.0, 1.0]) - sigmoid(1.5) as f32).abs() < 1e-6);
        assert_eq!(d.score(&[]), 0.0, "a gated window scores 0");
        assert_eq!(d.score(&[1.0]), 0.0, "a wrong-sized embedding scores 0");
    }

    #[test]
    fn a_hidden_layer_scores_through_rectified_units() {
        let mut d = det(vec![1.0, -2.0], 0.25);
        d.hidden = Some(Hidden {
            // Unit 0 = x0 + x1; unit 1 = x0 - x1 - 1.
            weights: vec![1.0, 1.0, 1.0, -1.0],
            bias: vec![0.0, -1.0],
        });
        d.validate("t").unwrap();
        // x = (2, 3): units relu(5) = 5, relu(-2) = 0 → 0.25 + 5.
        assert!((d.score(&[2.0, 3.0]) - sigmoid(5.25) as f32).abs() < 1e-6);
        // x = (3, -1): units relu(2) = 2, relu(3) = 3 → 0.25 + 2 - 6.
        assert!((d.score(&[3.0, -1.0]) - sigmoid(-3.75) as f32).abs() < 1e-6);
        d.hidden.as_mut().unwrap().bias.pop();
        assert!(d.validate("t").is_err());
    }

    fn hop<'a>(embedding: &'a [f32], scores: &'a [f32]) -> Hop<'a> {
        Hop {
            start_s: 0.0,
            end_s: 10.0,
            hop_s: 1.0,
            scores_mean: scores,
            scores_max: scores,
            dbfs: -20.0,
            embedding,
            heads: &[],
            net_scores: &[],
            tones: &[],
            wall: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_enrolled_tone_raises_the_group_whatever_the_head_says() {
        // A head that scores every window 0.5 (on 0.6, off 0.4), with a tone.
        let mut d = det(vec![0.0, 0.0], 0.0);
        let template = crate::detect::tone::ToneTemplate {
            n_mels: 64,
            bands: [20, 21],
            narrow_ref: 1.0,
            wide_ref: 1.0,
            smooth_frames: 5,
        };
        d.tone = Some(ToneRule {
            template: template.clone(),
            on: 0.5,
            trained: serde_json::Value::Null,
        });
        d.validate("t").unwrap();
        let rule = d.tone.clone().unwrap();
        assert_eq!(rule.score(0.7, 0.4, 0.6, None), 0.6, "heard: on");
        assert_eq!(rule.score(0.7, 0.4, 0.6, Some(0.9)), 0.9, "heard: sure");
        assert!((rule.score(0.375, 0.4, 0.6, None) - 0.5).abs() < 1e-6);
        assert!(rule.score(0.2, 0.4, 0.6, None) < 0.4);
        assert_eq!(rule.score(f32::NAN, 0.4, 0.6, None), 0.0);
        let mut s = LinearScorer::new(d.clone());
        assert_eq!(s.tone(3), Some(template));
        let mut h = hop(&[1.0, 1.0], &[]);
        assert!(
            (s.score(&h) - 0.5).abs() < 1e-6,
            "no tone score: the head's"
        );
        let tones = [0.0, 0.0, 0.0, 0.8];
        h.tones = &tones;
        assert_eq!(s.score(&h), 0.6, "its slot's tone heard");
        let quiet = [0.8, 0.8, 0.8, 0.1];
        h.tones = &quiet;
        assert!(
            (s.score(&h) - 0.5).abs() < 1e-6,
            "other slots are not its own"
        );
        // A sweep moves the head's thresholds, not the tone's.
        let mut shifted = d.clone();
        shifted.shift_thresholds(2.0);
        assert_eq!(shifted.tone, d.tone);
        assert!(shifted.on > d.on);
        d.tone.as_mut().unwrap().on = f32::NAN;
        assert!(d.validate("t").is_err());
        d.tone.as_mut().unwrap().on = 0.5;
        d.tone.as_mut().unwrap().template.bands = [20, 30];
        assert!(d.validate("t").is_err());
    }

    #[test]
    fn features_are_the_embedding_and_class_log_odds() {
        let mut out = Vec::new();
        let h = hop(&[1.0, 2.0], &[0.5, 0.0, 1.0]);
        assert!(Features::Embedding.extract(&h, &mut out));
        assert_eq!(out, [1.0, 2.0]);
        assert!(Features::Scores.extract(&h, &mut out));
        assert_eq!(out[0], 0.0);
        assert!(
            (out[1] + 13.8155).abs() < 1e-3 && (out[2] - 13.8155).abs() < 0.05,
            "{out:?}"
        );
        assert!(Features::EmbeddingScores.extract(&h, &mut out));
        assert_eq!(out.len(), Features::EmbeddingScores.dim(2, 3, 0));
        assert!(!Features::Scores.extract(&hop(&[0.0, 0.0], &[0.0; 3]), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_scorer_reads_its_features_from_the_hop() {
        let mut d = det(vec![0.0, 0.0, 1.0], 0.0);
        d.features = Features::Scores;
        d.embedding_dim = 2;
        d.classes = 3;
        d.validate("t").unwrap();
        let mut s = LinearScorer::new(d);
        let p = s.score(&hop(&[1.0, 2.0], &[0.1, 0.1, 0.75]));
        assert!((p - 0.75).abs() < 1e-4, "{p}");
        assert_eq!(s.score(&hop(&[0.0, 0.0], &[0.0; 3])), 0.0);
    }

    #[test]
    fn the_evidence_gate_silences_windows_its_classes_do_not_back() {
        // An embedding detector that is sure of everything, gated on class 1.
        let mut d = det(vec![0.0, 0.0], 20.0);
        d.classes = 3;
        d.gate = Some(Gate {
            classes: vec![1],
            min: 0.05,
        });
        d.validate("t").unwrap();
        let mut s = LinearScorer::new(d.clone());
        assert!(s.score(&hop(&[1.0, 2.0], &[0.9, 0.06, 0.0])) > 0.99);
        assert_eq!(s.score(&hop(&[1.0, 2.0], &[0.9, 0.04, 0.9])), 0.0);
        // A closed gate is not quiet: evidence just under `min` may be just over
        // it in the next window, so its reach is the score it holds back.
        assert!(s.last_reach().unwrap() > 0.99);
        assert!(s.reach(&hop(&[1.0, 2.0], &[0.9, 0.04, 0.9])).unwrap() > 0.99);
        // The file round-trips it, and a class the model lacks is refused.
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<LinearDetector>(&text).unwrap(), d);
        d.gate.as_mut().unwrap().classes = vec![3];
        assert!(d.validate("t").is_err());
    }

    fn net_det(groups: &[&str], pick: usize) -> LinearDetector {
        let n = groups.len();
        let mut d = det((0..n).map(|i| (i == pick) as u8 as f32).collect(), 0.0);
        d.features = Features::Net;
        d.embedding_dim = 2;
        d.net = Some(NetRef {
            file: "net.onnx".into(),
            sha256: "ab".repeat(32),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            path: PathBuf::new(),
        });
        d
    }

    #[test]
    fn a_net_detector_scores_its_groups_own_output() {
        let d = net_det(&["glass", "gunshot", "siren"], 1);
        d.validate("t").unwrap();
        let mut s = LinearScorer::new(d.clone());
        let mut h = hop(&[1.0, 2.0], &[0.1, 0.1]);
        h.heads = &[0.2, 0.97, 0.5];
        assert!((s.score(&h) - 0.97).abs() < 1e-4);
        // A window without the network's outputs (the shipped network, or one the
        // loudness gate skipped) scores nothing.
        h.heads = &[];
        assert_eq!(s.score(&h), 0.0);
        // The file round-trips it, without the path it was found at.
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("path"), "{text}");
        assert_eq!(serde_json::from_str::<LinearDetector>(&text).unwrap(), d);
    }

    #[test]
    fn a_net_detector_gates_on_the_networks_own_audioset_scores() {
        let mut d = net_det(&["glass", "gunshot"], 0);
        d.classes = 3;
        d.gate = Some(Gate {
            classes: vec![1],
            min: 0.05,
        });
        d.validate("t").unwrap();
        let mut s = LinearScorer::new(d);
        // The model itself hears nothing of class 1; the network does.
        let mut h = hop(&[1.0, 2.0], &[0.9, 0.0, 0.0]);
        h.heads = &[0.9, 0.1];
        h.net_scores = &[0.0, 0.3, 0.0];
        assert!((s.score(&h) - 0.9).abs() < 1e-4);
        // And the other way round: the model's evidence does not open it.
        let mut h = hop(&[1.0, 2.0], &[0.9, 0.9, 0.0]);
        h.heads = &[0.9, 0.1];
        h.net_scores = &[0.0, 0.01, 0.0];
        assert_eq!(s.score(&h), 0.0);
    }

    #[test]
    fn a_net_reference_must_name_a_plain_file_with_its_hash() {
        let ok = net_det(&["glass", "gunshot"], 0);
        ok.validate("t").unwrap();
        let bad = |f: &dyn Fn(&mut LinearDetector)| {
            let mut d = ok.clone();
            f(&mut d);
            d.validate("t").unwrap_err().to_string()
        };
        let net = |d: &mut LinearDetector| d.net.as_mut().unwrap().clone();
        for file in ["../net.onnx", "", "a/b.onnx", ".."] {
            let e = bad(&|d| d.net.as_mut().unwrap().file = file.into());
            assert!(e.contains("file name"), "{file}: {e}");
        }
        assert!(bad(&|d| d.net.as_mut().unwrap().sha256 = "12".into()).contains("sha256"));
        assert!(bad(&|d| d.net = None).contains("needs a `net`"));
        assert!(bad(&|d| {
            let n = net(d);
            d.features = Features::Embedding;
            d.net = Some(n);
        })
        .contains("features = \"net\" only"));
        // Weights for another number of outputs than the network has.
        assert!(bad(&|d| d.net.as_mut().unwrap().groups.push("siren".into())).contains("weights"));
    }

    #[test]
    fn thresholds_shift_together_in_log_odds() {
        let mut d = det(vec![1.0], 0.0);
        (d.on, d.off, d.sure) = (0.5, 0.35, Some(0.9));
        d.shift_thresholds(2.0_f64.ln());
        // Odds ×2: 1 → 2, 0.35/0.65 → 0.7/0.65, 9 → 18.
        assert!((d.on - 2.0 / 3.0).abs() < 1e-6, "{}", d.on);
        assert!((d.off - 0.7 / 1.35).abs() < 1e-6, "{}", d.off);
        assert!((d.sure.unwrap() - 18.0 / 19.0).abs() < 1e-6);
        d.shift_thresholds(-2.0_f64.ln());
        assert!((d.on - 0.5).abs() < 1e-6 && (d.sure.unwrap() - 0.9).abs() < 1e-6);
        // Near 1 the order holds even where f32 cannot tell them apart.
        (d.on, d.sure) = (0.999_999_9, Some(0.999_999_95));
        d.shift_thresholds(8.0);
        assert!(d.off <= d.on && d.on <= d.sure.unwrap());
    }

    #[test]
    fn files_round_trip_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("hearken-det-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = det(vec![1.0, 2.0], 0.1);
        d.save(&dir.join("glass.json")).unwrap();
        assert_eq!(load_dir(&dir, "m", 2, 3).unwrap(), vec![d.clone()]);
        let e = format!("{:#}", load_dir(&dir, "other", 2, 3).unwrap_err());
        assert!(e.contains("glass.json") && e.contains("retrain"), "{e}");
        let mut bad = d;
        bad.weights.pop();
        bad.save(&dir.join("glass.json")).unwrap();
        let e = format!("{:#}", load_dir(&dir, "m", 2, 3).unwrap_err());
        assert!(e.contains("embedding_dim"), "{e}");
        let mut low = det(vec![1.0, 2.0], 0.1);
        (low.on, low.off, low.sure) = (0.8, 0.5, Some(0.7));
        low.save(&dir.join("glass.json")).unwrap();
        let e = format!("{:#}", load_dir(&dir, "m", 2, 3).unwrap_err());
        assert!(e.contains("glass.json") && e.contains("sure (0.7)"), "{e}");
        low.sure = Some(0.9);
        low.save(&dir.join("glass.json")).unwrap();
        assert_eq!(load_dir(&dir, "m", 2, 3).unwrap()[0].sure, Some(0.9));
        assert!(load_dir(&dir.join("none"), "m", 2, 3).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_folder_holds_one_fine_tuned_network() {
        let dir = std::env::temp_dir().join(format!("hearken-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let groups = ["glass", "gunshot"];
        let glass = net_det(&groups, 0);
        let mut gunshot = net_det(&groups, 1);
        gunshot.group = "gunshot".into();
        glass.save(&dir.join("glass.json")).unwrap();
        gunshot.save(&dir.join("gunshot.json")).unwrap();
        let loaded = load_dir(&dir, "m", 2, 0).unwrap();
        // Found beside the detector files.
        for d in &loaded {
            assert_eq!(d.net.as_ref().unwrap().path, dir.join("net.onnx"));
        }
        gunshot.net.as_mut().unwrap().sha256 = "cd".repeat(32);
        gunshot.save(&dir.join("gunshot.json")).unwrap();
        let e = format!("{:#}", load_dir(&dir, "m", 2, 0).unwrap_err());
        assert!(
            e.contains("gunshot.json") && e.contains("retrain them together"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
