//! `model.toml`: everything hearken needs to know to feed and read a model.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dsp::FrontendParams;

/// How scores are pooled across units (patches or windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Arithmetic mean.
    Mean,
    /// Element-wise maximum.
    Max,
}

/// The tensor layout the network takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputLayout {
    /// `[1, 1, n_mels, frames]`: one call classifies a whole window of frames.
    BatchChannelMelsFrames,
    /// `[batch, frames, n_mels]`: one call classifies fixed-length patches.
    BatchFramesMels,
}

/// The `[model]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Short name (`efficientat-mn04`).
    pub name: String,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// ONNX file, relative to the model directory.
    pub onnx: String,
    /// Expected sha256 of the ONNX file (hex).
    pub sha256: String,
    /// Where the setup step downloads the ONNX file from when no local copy exists.
    #[serde(default)]
    pub url: String,
    /// Labels CSV (`index,mid,display_name`), relative to the model directory.
    pub labels: String,
    /// Where the setup step downloads the labels from.
    #[serde(default)]
    pub labels_url: String,
    /// Number of classes the network outputs.
    pub classes: usize,
}

/// The `[io]` table: tensor names and layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    /// Input tensor name.
    pub input: String,
    /// Input layout.
    pub layout: InputLayout,
    /// Output tensor carrying per-class probabilities (sigmoid applied).
    pub scores: String,
    /// Output tensor carrying the embedding.
    pub embedding: String,
    /// Embedding width.
    pub embedding_dim: usize,
}

/// The `[windows]` table: how audio is cut into model calls and pooled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Fixed patch length in frames for patch models; absent for models that take a
    /// whole window in one call.
    #[serde(default)]
    pub patch_frames: Option<usize>,
    /// Hop between patches, frames.
    #[serde(default)]
    pub patch_hop_frames: Option<usize>,
    /// Default analysis window, seconds.
    pub window_s: f64,
    /// Default hop between windows, seconds.
    pub hop_s: f64,
    /// How patch scores are pooled into a window's score.
    pub window_pooling: Pooling,
    /// How window scores are pooled into a whole clip's score.
    pub clip_pooling: Pooling,
}

/// A parsed `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identity and files.
    pub model: ModelInfo,
    /// Tensor names.
    pub io: IoSpec,
    /// Log-mel frontend.
    pub frontend: FrontendParams,
    /// Windowing and pooling.
    pub windows: WindowSpec,
}

impl Manifest {
    /// Reads and validates a manifest; errors name the file and the key.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read model manifest: {e}", path.display()))?;
        let m: Manifest = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid model manifest: {e}", path.display()))?;
        m.validate()
            .map_err(|e| anyhow::anyhow!("{}: invalid model manifest: {e}", path.display()))?;
        Ok(m)
    }

    /// Consistency checks beyond what the types enforce.
    pub fn validate(&self) -> Result<(), String> {
        self.frontend
            .validate()
            .map_err(|e| format!("[frontend] {e}"))?;
        if self.model.classes == 0 {
            return Err("[model] classes must be positive".into());
        }
        if self.model.sha256.len() != 64
            || !self.model.sha256.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err("[model] sha256 must be 64 hex digits".into());
        }
        let w = &self.windows;
        if !(w.window_s > 0.0 && w.hop_s > 0.0) {
            return Err("[windows] window_s and hop_s must be positive".into());
        }
        match (self.io.layout, w.patch_frames, w.patch_hop_frames) {
            (InputLayout::BatchFramesMels, Some(p), Some(h)) if p > 0 && h > 0 => {
                if (p as f64 * self.frontend.frame_hop_s()) > w.window_s + 1e-9 {
                    return Err("[windows] window_s is shorter than one patch".into());
                }
            }
            (InputLayout::BatchFramesMels, _, _) => {
                return Err(
                    "[windows] patch models need positive patch_frames and patch_hop_frames".into(),
                )
            }
            (InputLayout::BatchChannelMelsFrames, None, None) => {}
            (InputLayout::BatchChannelMelsFrames, _, _) => {
                return Err(
                    "[windows] patch_frames applies only to layout batch_frames_mels".into(),
                )
            }
        }
        Ok(())
    }
}
