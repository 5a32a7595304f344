//! `[model]`: which model runs and how it is windowed.

use serde::{Deserialize, Serialize};

use super::DEFAULT_MODEL;

/// Default `model.window_s`.
pub const DEFAULT_WINDOW_S: f64 = 10.0;
/// Default `model.hop_s`.
pub const DEFAULT_HOP_S: f64 = 1.0;
/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of model settings")]
pub struct ModelConfig {
    /// Model name (`efficientat-mn04`, `yamnet`) or a directory holding `model.toml`.
    pub name: String,
    /// Analysis window in seconds (0.96..=60).
    pub window_s: f64,
    /// Hop between windows in seconds (0.1..=window_s).
    pub hop_s: f64,
    /// While every group is far below its thresholds, score every second window
    /// only (the one between is scored after all if the next is not quiet or its
    /// own sound is not steady). On by default: held out it finds exactly the
    /// events scoring every window finds (docs/architecture.md).
    pub skip_quiet_windows: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: DEFAULT_MODEL.to_string(),
            window_s: DEFAULT_WINDOW_S,
            hop_s: DEFAULT_HOP_S,
            skip_quiet_windows: true,
        }
    }
}
