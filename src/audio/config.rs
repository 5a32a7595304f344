//! `[audio]` and `[[sources]]`: where sound comes from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default `audio.source`: the system's default capture device.
pub const DEFAULT_SOURCE: &str = "default";
/// Default `audio.ring_seconds`.
pub const DEFAULT_RING_SECONDS: f64 = 4.0;
/// Default `audio.gate_dbfs`.
pub const DEFAULT_GATE_DBFS: f32 = -70.0;
/// `[audio]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of audio settings")]
pub struct AudioConfig {
    /// `default`, `device:NAME`, `file:PATH` or `stdin:RATE:CHANNELS` (raw
    /// interleaved samples on standard input).
    pub source: String,
    /// Capacity of the capture ring in seconds (0.5..=60).
    pub ring_seconds: f64,
    /// Loudness gate: windows whose loudest 10 ms frame is below this many dBFS are not
    /// run through the model (-120..=0).
    pub gate_dbfs: f32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            source: DEFAULT_SOURCE.to_string(),
            ring_seconds: DEFAULT_RING_SECONDS,
            gate_dbfs: DEFAULT_GATE_DBFS,
        }
    }
}

/// A `[[sources]]` entry: one microphone (or file, or stdin) with a pipeline and a
/// Home Assistant device of its own. Every source shares the model, the detectors
/// and the publisher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of source settings")]
pub struct SourceConfig {
    /// Name in events (`"source"`), topics and Home Assistant: `[a-z0-9_]{1,32}`.
    pub name: String,
    /// `default`, `device:NAME`, `file:PATH` or `stdin:RATE:CHANNELS`.
    pub source: String,
    /// Room of this microphone (events' `room`, the device's area); `[node] room`
    /// when empty.
    #[serde(default)]
    pub room: String,
    /// Gain applied before analysis, dB (-40..=40).
    #[serde(default)]
    pub gain_db: f32,
    /// The groups this source watches (each an enabled group); all enabled groups
    /// when absent.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Per-group `on` thresholds for this source (group name → (0, 1]); a group's
    /// `off` is lowered to it when higher.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f32>,
}

/// Name of the one source of a configuration without `[[sources]]`.
pub const SINGLE_SOURCE_NAME: &str = "default";
/// Names a source cannot have: the node's own topic levels.
pub const RESERVED_SOURCE_NAMES: [&str; 4] = ["event", "status", "top", "problem"];
/// Most `[[sources]]` one daemon runs.
pub const MAX_SOURCES: usize = 16;

/// One source as the daemon runs it: a `[[sources]]` entry, or `[audio] source`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePlan {
    /// Name (events' `"source"`).
    pub name: String,
    /// The source spec.
    pub spec: String,
    /// Room (events' `room`).
    pub room: String,
    /// Linear gain.
    pub gain: f32,
    /// The enabled groups it watches.
    pub groups: Vec<String>,
    /// Per-group `on` thresholds.
    pub thresholds: BTreeMap<String, f32>,
    /// From `[[sources]]`: its topics and Home Assistant device are its own
    /// (`<base>/<name>/…`). False for the single `[audio] source`, whose topics are
    /// the node's.
    pub scoped: bool,
}
