//! `[detection]`: groups, their AudioSet classes, thresholds and timing; the
//! built-in groups.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::Pooling;

/// Default `detection.status_interval_s`.
pub const DEFAULT_STATUS_INTERVAL_S: f64 = 10.0;
/// The tunable event settings of a group (everything but `enabled`, `safety` and
/// `labels`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tuning {
    /// Raise threshold.
    pub on: f32,
    /// Clear threshold.
    pub off: f32,
    /// N of "N of the last M hops".
    pub onset_hops: usize,
    /// M of "N of the last M hops".
    pub onset_of: usize,
    /// A score this high raises an event on its own hop, without waiting for the
    /// onset rule (none: only the onset rule raises events). Only a trained
    /// detector sets it: the file has no key for it.
    pub sure: Option<f32>,
    /// How per-patch scores are pooled over the window.
    pub pooling: Pooling,
    /// Quiet time after an event ends.
    pub cooldown_s: f64,
    /// Longest event.
    pub max_event_s: f64,
    /// Shortest reported event.
    pub min_duration_s: f64,
}

/// Initial settings of a max-pooled group (short, impulsive sounds); also the
/// defaults of a group the file defines that is not built in.
pub const MAX_POOLED: Tuning = Tuning {
    on: 0.3,
    off: 0.15,
    onset_hops: 1,
    onset_of: 1,
    sure: None,
    pooling: Pooling::Max,
    cooldown_s: 30.0,
    max_event_s: 300.0,
    min_duration_s: 0.0,
};

/// Initial settings of a mean-pooled group (long, steady sounds).
pub const MEAN_POOLED: Tuning = Tuning {
    pooling: Pooling::Mean,
    ..MAX_POOLED
};

/// Default `enabled` of a group the file defines that is not built in.
pub const NEW_GROUP_ENABLED: bool = true;
/// Default `safety` of a group the file defines that is not built in.
pub const NEW_GROUP_SAFETY: bool = true;

/// A group that exists even when the file does not mention it.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinGroup {
    /// Group key (`detection.groups.NAME`).
    pub name: &'static str,
    /// Home-safety group or an ordinary one.
    pub safety: bool,
    /// AudioSet display names; every one exists in both shipped models' label files.
    pub labels: &'static [&'static str],
    /// Thresholds, onset, pooling and timing with the default model (mn04).
    pub tuning: Tuning,
    /// `on`, `off` and `pooling` with YAMNet, whose scores run higher.
    pub yamnet: (f32, f32, Pooling),
}

/// The built-in groups with their initial settings (all enabled).
pub const BUILTIN_GROUPS: &[BuiltinGroup] = &[
    // Safety groups: thresholds tuned on shared/eval-dev with tools/tune-thresholds.py
    // (lowest threshold at which no ordinary home sound fires; see docs/detection.md).
    BuiltinGroup {
        name: "glass",
        safety: true,
        labels: &["Glass", "Shatter", "Breaking"],
        tuning: Tuning {
            on: 0.03,
            off: 0.015,
            ..MAX_POOLED
        },
        yamnet: (0.30, 0.15, Pooling::Max),
    },
    BuiltinGroup {
        name: "scream",
        safety: true,
        labels: &["Screaming", "Yell", "Shout", "Children shouting"],
        tuning: Tuning {
            on: 0.03,
            off: 0.015,
            ..MAX_POOLED
        },
        yamnet: (0.10, 0.05, Pooling::Max),
    },
    BuiltinGroup {
        name: "smoke_alarm",
        safety: true,
        // Not the generic "Alarm": phone rings score near 1 on it.
        labels: &["Smoke detector, smoke alarm", "Fire alarm", "Beep, bleep"],
        tuning: Tuning {
            on: 0.02,
            off: 0.01,
            ..MEAN_POOLED
        },
        yamnet: (0.05, 0.025, Pooling::Mean),
    },
    BuiltinGroup {
        name: "fire",
        safety: true,
        labels: &["Fire", "Crackle"],
        // No fire recordings to tune on: conservative.
        tuning: Tuning {
            on: 0.2,
            off: 0.1,
            ..MEAN_POOLED
        },
        yamnet: (0.3, 0.15, Pooling::Mean),
    },
    BuiltinGroup {
        name: "gunshot",
        safety: true,
        labels: &[
            "Gunshot, gunfire",
            "Machine gun",
            "Fusillade",
            "Artillery fire",
            "Cap gun",
            "Explosion",
        ],
        tuning: Tuning {
            on: 0.025,
            off: 0.012,
            ..MAX_POOLED
        },
        yamnet: (0.35, 0.17, Pooling::Max),
    },
    BuiltinGroup {
        name: "siren",
        safety: true,
        labels: &[
            "Siren",
            "Civil defense siren",
            "Police car (siren)",
            "Ambulance (siren)",
            "Fire engine, fire truck (siren)",
            "Emergency vehicle",
        ],
        tuning: Tuning {
            on: 0.02,
            off: 0.01,
            ..MEAN_POOLED
        },
        yamnet: (0.06, 0.03, Pooling::Mean),
    },
    // Ordinary groups: not tuned on data yet.
    BuiltinGroup {
        name: "dog_bark",
        safety: false,
        labels: &["Bark", "Dog", "Bow-wow", "Yip"],
        tuning: MAX_POOLED,
        yamnet: (0.3, 0.15, Pooling::Max),
    },
    BuiltinGroup {
        name: "baby_cry",
        safety: false,
        labels: &["Baby cry, infant cry"],
        tuning: MEAN_POOLED,
        yamnet: (0.3, 0.15, Pooling::Mean),
    },
    BuiltinGroup {
        name: "water_running",
        safety: false,
        labels: &["Water tap, faucet", "Sink (filling or washing)"],
        tuning: MEAN_POOLED,
        yamnet: (0.3, 0.15, Pooling::Mean),
    },
    BuiltinGroup {
        name: "door_knock",
        safety: false,
        labels: &["Knock"],
        tuning: MAX_POOLED,
        yamnet: (0.3, 0.15, Pooling::Max),
    },
];

impl BuiltinGroup {
    /// The group's configuration before the file is applied (default model).
    pub fn config(&self) -> GroupConfig {
        GroupConfig::new(
            true,
            self.safety,
            self.labels.iter().map(|s| s.to_string()).collect(),
            self.tuning,
        )
    }

    /// `(on, off, pooling)` of this group with the model `model` (a name or a
    /// directory; YAMNet is recognised by its name).
    pub fn thresholds_for(&self, model: &str) -> (f32, f32, Pooling) {
        if is_yamnet(model) {
            self.yamnet
        } else {
            (self.tuning.on, self.tuning.off, self.tuning.pooling)
        }
    }
}

fn is_yamnet(model: &str) -> bool {
    std::path::Path::new(model.trim_end_matches('/'))
        .file_name()
        .is_some_and(|n| n == "yamnet")
}

/// `[detection]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionConfig {
    /// How often `--print-events` writes a status line, in seconds (1..=3600).
    pub status_interval_s: f64,
    /// Trained detectors (`hearken train`): a folder of `<group>.json` files; empty:
    /// the model's `detectors` folder if it exists; `off`: raw AudioSet scores only.
    pub detectors: String,
    /// All groups by key: the built-ins merged with the file's tables, including
    /// disabled ones (see [`Config::enabled_groups`]).
    pub groups: BTreeMap<String, GroupConfig>,
    /// Groups whose `on`, `off` or `pooling` the file sets: their thresholds stay
    /// as written when the model changes.
    #[serde(skip)]
    pub file_tuned: std::collections::BTreeSet<String>,
}

impl DetectionConfig {
    /// The enabled groups, by key.
    pub fn enabled_groups(&self) -> impl Iterator<Item = (&String, &GroupConfig)> {
        self.groups.iter().filter(|(_, g)| g.enabled)
    }
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            status_interval_s: DEFAULT_STATUS_INTERVAL_S,
            detectors: String::new(),
            groups: BUILTIN_GROUPS
                .iter()
                .map(|b| (b.name.to_string(), b.config()))
                .collect(),
            file_tuned: Default::default(),
        }
    }
}

/// `[detection.groups.NAME]`: one user-facing event and the AudioSet classes behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupConfig {
    /// Whether the group is detected at all.
    pub enabled: bool,
    /// A home-safety group (glass, gunshot…) rather than an ordinary one (dog bark…).
    pub safety: bool,
    /// AudioSet display names or ids (`/m/...`); never empty.
    pub labels: Vec<String>,
    /// Thresholds, onset, pooling and timing.
    #[serde(flatten)]
    pub tuning: Tuning,
}

impl GroupConfig {
    /// A group from its flags, labels and tuning.
    pub fn new(enabled: bool, safety: bool, labels: Vec<String>, tuning: Tuning) -> GroupConfig {
        GroupConfig {
            enabled,
            safety,
            labels,
            tuning,
        }
    }
}
