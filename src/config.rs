//! Daemon configuration (one TOML file).
//!
//! Every key has a default, so an empty file is a valid configuration; the commented
//! reference is `config/hearken.example.toml`. Loading is all-or-nothing: unknown keys,
//! values of the wrong type and values out of range are rejected with a [`ConfigError`]
//! that names the file, the line and the dotted key (`detection.groups.glass.on`), so
//! the daemon never starts half-configured.
//!
//! Parsing happens in three steps:
//!
//! 1. the text is parsed into a spanned TOML tree (syntax errors, with their line);
//! 2. the text is deserialised with serde into the file schema (`deny_unknown_fields`
//!    everywhere: unknown keys and bad types, located through the error's span);
//! 3. the file's `[detection.groups.*]` tables are merged over the built-in groups and
//!    every value is range-checked; each problem is reported against its dotted key,
//!    whose line is looked up in the tree from step 1.
//!
//! The built-in groups and their initial thresholds live in one table,
//! [`BUILTIN_GROUPS`] (with the shared settings in [`MAX_POOLED`] / [`MEAN_POOLED`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::model::{Labels, Pooling};

// ---------------------------------------------------------------------------------
// Defaults: the one place to tune them.
// ---------------------------------------------------------------------------------

// Each section's type lives beside the stage it configures; this module assembles
// them into one file, validates it and says where a problem is.
pub use crate::audio::config::{
    AudioConfig, SourceConfig, SourcePlan, DEFAULT_GATE_DBFS, DEFAULT_RING_SECONDS, DEFAULT_SOURCE,
    MAX_SOURCES, RESERVED_SOURCE_NAMES, SINGLE_SOURCE_NAME,
};
pub use crate::detect::config::{
    BuiltinGroup, DetectionConfig, GroupConfig, Tuning, BUILTIN_GROUPS, DEFAULT_STATUS_INTERVAL_S,
    MAX_POOLED, MEAN_POOLED, NEW_GROUP_ENABLED, NEW_GROUP_SAFETY,
};
pub use crate::http::config::{check_http_bind, HttpConfig, DEFAULT_HTTP_LISTEN};
pub use crate::model::config::{ModelConfig, DEFAULT_HOP_S, DEFAULT_WINDOW_S};
pub use crate::privacy::PrivacyConfig;
pub use crate::publish::config::{MqttConfig, DEFAULT_EMBEDDED_LISTEN};
pub use crate::store::LearningConfig;

/// Applies the command line's `--source` values to `cfg`: one plain spec (`file:x`)
/// replaces every source with that one (`[audio] source`, topics of the node);
/// `NAME=SPEC` values become the `[[sources]]`, each keeping the room, gain, groups
/// and thresholds of the configured source of that name. Mixing the two forms, a
/// repeated name or several plain specs is an error.
pub fn apply_source_flags(cfg: &mut Config, flags: &[String]) -> Result<(), String> {
    if flags.is_empty() {
        return Ok(());
    }
    let named: Vec<Option<(&str, &str)>> = flags.iter().map(|f| split_named_source(f)).collect();
    if named.iter().all(Option::is_none) {
        if flags.len() > 1 {
            return Err(format!(
                "give one --source SPEC, or name each: --source NAME=SPEC (got {})",
                flags.join(", ")
            ));
        }
        cfg.audio.source = flags[0].clone();
        cfg.sources.clear();
        return Ok(());
    }
    if let Some(i) = named.iter().position(Option::is_none) {
        return Err(format!(
            "{:?}: with several sources every --source is NAME=SPEC",
            flags[i]
        ));
    }
    let mut out: Vec<SourceConfig> = Vec::new();
    for (name, spec) in named.into_iter().flatten() {
        if out.iter().any(|s| s.name == name) {
            return Err(format!("source {name:?} is given twice"));
        }
        let mut s = cfg
            .sources
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or(SourceConfig {
                name: name.to_string(),
                source: String::new(),
                room: String::new(),
                gain_db: 0.0,
                groups: None,
                thresholds: BTreeMap::new(),
            });
        s.source = spec.to_string();
        out.push(s);
    }
    cfg.sources = out;
    Ok(())
}

/// `Some((name, spec))` for `NAME=SPEC`, where NAME has no `:` (so `file:a=b.wav`
/// stays a plain spec).
fn split_named_source(flag: &str) -> Option<(&str, &str)> {
    let (name, spec) = flag.split_once('=')?;
    (!name.is_empty() && !name.contains(':')).then_some((name, spec))
}

/// Node id used when no id is configured and the hostname yields nothing usable.
pub const FALLBACK_NODE_ID: &str = "hearken";

// ---------------------------------------------------------------------------------
// The configuration.
// ---------------------------------------------------------------------------------

/// The whole configuration, validated and with the built-in groups merged in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[node]`: who this node is.
    pub node: NodeConfig,
    /// `[audio]`: where sound comes from.
    pub audio: AudioConfig,
    /// `[model]`: which model runs and how it is windowed.
    pub model: ModelConfig,
    /// `[detection]`: groups and event logic.
    pub detection: DetectionConfig,
    /// `[mqtt]`: where events are published.
    pub mqtt: MqttConfig,
    /// `[learning]`: the home store and `hearken adapt`.
    pub learning: LearningConfig,
    /// `[http]`: the local API and web page.
    pub http: HttpConfig,
    /// `[privacy]`: evidence clips and the anonymisation methods.
    pub privacy: PrivacyConfig,
    /// `[[sources]]`: several microphones in one daemon (empty: the one source of
    /// `[audio] source`).
    pub sources: Vec<SourceConfig>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of node settings")]
pub struct NodeConfig {
    /// Node id (`[A-Za-z0-9_-]{1,64}`); when empty in the file, the machine's hostname
    /// lowercased with other characters replaced by `-` (see [`default_node_id`]).
    /// After loading it is never empty.
    pub id: String,
    /// Free-text room name, copied into events.
    pub room: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            room: String::new(),
        }
    }
}

impl Default for Config {
    /// The configuration of an empty file: defaults and the built-in groups, with the
    /// node id taken from the hostname.
    fn default() -> Self {
        Config {
            node: NodeConfig::default(),
            audio: AudioConfig::default(),
            model: ModelConfig::default(),
            detection: DetectionConfig::default(),
            mqtt: MqttConfig::default(),
            learning: LearningConfig::default(),
            http: HttpConfig::default(),
            privacy: PrivacyConfig::default(),
            sources: Vec::new(),
        }
    }
}

impl Config {
    /// Parses and validates a configuration; `origin` (usually the file name) prefixes
    /// error messages. Returns the first error (by line) when there are several; see
    /// [`Config::from_str_all`].
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_str_all(text, origin).map_err(|mut v| v.remove(0))
    }

    /// Like [`Config::from_str`] but returns every error found, ordered by line (never
    /// an empty list). Syntax and type errors stop parsing, so those come alone.
    pub fn from_str_all(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
        parse(text, origin)
    }

    /// Reads and validates the file at `path`; a missing or unreadable file is an
    /// error naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_all(path).map_err(|mut v| v.remove(0))
    }

    /// Like [`Config::load`] but returns every error found (see
    /// [`Config::from_str_all`]).
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| {
            vec![ConfigError {
                origin: origin.clone(),
                line: None,
                key: None,
                message: format!("cannot read config file: {e}"),
            }]
        })?;
        let text = String::from_utf8(bytes).map_err(|e| vec![not_utf8(&origin, &e)])?;
        parse(&text, &origin)
    }

    /// Checks every value again, as loading does after merging the file: for a
    /// configuration changed since it was loaded (the command line's `--source`,
    /// `--model`, `--node-id`). Errors name the key but have no origin or line:
    /// attribute them with [`ConfigError::on_command_line`] or
    /// [`ConfigError::in_file`].
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let doc = DeTable::new();
        let mut ck = Checker {
            doc: &doc,
            issues: Vec::new(),
        };
        ck.check(self);
        if ck.issues.is_empty() {
            return Ok(());
        }
        Err(ck
            .issues
            .into_iter()
            .map(|(segs, message)| ConfigError::for_key(&render_key(&segs), &message))
            .collect())
    }

    /// Switches to model `name` (a `--model` override): built-in groups whose
    /// thresholds the file does not set take that model's defaults.
    pub fn set_model(&mut self, name: &str) {
        self.model.name = name.to_string();
        for b in BUILTIN_GROUPS {
            if self.detection.file_tuned.contains(b.name) {
                continue;
            }
            if let Some(g) = self.detection.groups.get_mut(b.name) {
                (g.tuning.on, g.tuning.off, g.tuning.pooling) = b.thresholds_for(name);
            }
        }
    }

    /// The sources the daemon runs: the `[[sources]]`, or the one `[audio] source`.
    pub fn source_plans(&self) -> Vec<SourcePlan> {
        let enabled: Vec<String> = self.enabled_groups().map(|(n, _)| n.clone()).collect();
        if self.sources.is_empty() {
            return vec![SourcePlan {
                name: SINGLE_SOURCE_NAME.to_string(),
                spec: self.audio.source.clone(),
                room: self.node.room.clone(),
                gain: 1.0,
                groups: enabled,
                thresholds: BTreeMap::new(),
                scoped: false,
            }];
        }
        self.sources
            .iter()
            .map(|s| SourcePlan {
                name: s.name.clone(),
                spec: s.source.clone(),
                room: if s.room.is_empty() {
                    self.node.room.clone()
                } else {
                    s.room.clone()
                },
                gain: 10f32.powf(s.gain_db / 20.0),
                groups: match &s.groups {
                    Some(g) => enabled.iter().filter(|e| g.contains(e)).cloned().collect(),
                    None => enabled.clone(),
                },
                thresholds: s.thresholds.clone(),
                scoped: true,
            })
            .collect()
    }

    /// The enabled groups, by key.
    pub fn enabled_groups(&self) -> impl Iterator<Item = (&String, &GroupConfig)> {
        self.detection.enabled_groups()
    }

    /// Checks that every label of every enabled group exists in `labels` (the model's
    /// classes). The error names the group's `labels` key and the label, and suggests
    /// close matches; its `origin` is empty and `line` is `None` (the configuration
    /// does not keep its source): fill them in with [`ConfigError::in_file`].
    pub fn check_labels(&self, labels: &Labels) -> Result<(), ConfigError> {
        for (name, g) in self.enabled_groups() {
            for l in &g.labels {
                if labels.find(l).is_some() {
                    continue;
                }
                let close = suggest(labels, l);
                let mut message = format!(
                    "{l:?} is not a label of the model ({} labels)",
                    labels.len()
                );
                if !close.is_empty() {
                    let quoted: Vec<String> = close.iter().map(|c| format!("{c:?}")).collect();
                    message.push_str(&format!("; did you mean {}?", quoted.join(", ")));
                }
                return Err(ConfigError {
                    origin: String::new(),
                    line: None,
                    key: Some(render_key(&["detection", "groups", name, "labels"])),
                    message,
                });
            }
        }
        Ok(())
    }
}

/// Labels whose display name contains `wanted` or is contained in it (ignoring case),
/// or failing that shares a word of 3+ letters with it; at most 5, in label order.
fn suggest(labels: &Labels, wanted: &str) -> Vec<String> {
    const MAX: usize = 5;
    let w = wanted.trim().to_lowercase();
    if w.is_empty() {
        return Vec::new();
    }
    let names = || {
        labels
            .iter()
            .map(|l| (l.name.clone(), l.name.to_lowercase()))
    };
    let mut out: Vec<String> = names()
        .filter(|(_, n)| !n.is_empty() && (n.contains(&w) || w.contains(n.as_str())))
        .map(|(name, _)| name)
        .take(MAX)
        .collect();
    if out.is_empty() {
        let words: Vec<&str> = w
            .split(|c: char| !c.is_alphanumeric())
            .filter(|s| s.chars().count() >= 3)
            .collect();
        out = names()
            .filter(|(_, n)| words.iter().any(|word| n.contains(word)))
            .map(|(name, _)| name)
            .take(MAX)
            .collect();
    }
    out
}

// ---------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------

/// A configuration problem, located by file, line and dotted key where known.
///
/// Displays as `hearken.toml:12: detection.groups.glass.on: must be in (0, 1], got 1.5`,
/// leaving out the parts that are unknown.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// Where the text came from (the file name); may be empty.
    pub origin: String,
    /// 1-based line in the file.
    pub line: Option<usize>,
    /// Dotted key, e.g. `detection.groups.glass.on`.
    pub key: Option<String>,
    /// What is wrong; one line.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut s = self.origin.clone();
        if let Some(line) = self.line {
            if s.is_empty() {
                s = format!("line {line}");
            } else {
                s.push_str(&format!(":{line}"));
            }
        }
        for part in [self.key.as_deref(), Some(self.message.as_str())]
            .into_iter()
            .flatten()
        {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(part);
        }
        s
    }

    /// An error about the dotted `key` (spelt as in [`ConfigError::key`]) found after
    /// loading: no origin and no line until [`ConfigError::in_file`] or
    /// [`ConfigError::on_command_line`] says where the value came from.
    pub fn for_key(key: &str, message: &str) -> ConfigError {
        ConfigError {
            origin: String::new(),
            line: None,
            key: Some(key.to_string()),
            message: one_line(message),
        }
    }

    /// Attributes an error to the command-line option `flag` (`--source`) that set
    /// its value: `command line (--source): audio.source: ...`.
    pub fn on_command_line(mut self, flag: &str) -> ConfigError {
        self.origin = format!("command line ({flag})");
        self.line = None;
        self
    }

    /// Attributes an error found after loading (e.g. by [`Config::check_labels`]) to the
    /// file it was loaded from: sets `origin` if empty and, if `line` is unknown, looks
    /// the key up in `text` (the file's contents).
    pub fn in_file(mut self, origin: &str, text: &str) -> ConfigError {
        if self.origin.is_empty() {
            self.origin = origin.to_string();
        }
        if self.line.is_none() {
            if let (Some(key), Ok(doc)) = (&self.key, DeTable::parse(text)) {
                let segs = split_key(key);
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                self.line = locate(doc.get_ref(), &segs).map(|(offset, _)| line_of(text, offset));
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------
// The file schema (what serde reads before merging and validation).
// ---------------------------------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
struct FileConfig {
    node: NodeConfig,
    audio: AudioConfig,
    model: ModelConfig,
    detection: FileDetection,
    mqtt: MqttConfig,
    learning: LearningConfig,
    http: HttpConfig,
    privacy: PrivacyConfig,
    sources: Vec<SourceConfig>,
}

#[derive(Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a table of detection settings"
)]
struct FileDetection {
    status_interval_s: f64,
    detectors: String,
    groups: BTreeMap<String, FileGroup>,
}

impl Default for FileDetection {
    fn default() -> Self {
        FileDetection {
            status_interval_s: DEFAULT_STATUS_INTERVAL_S,
            detectors: String::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// A `[detection.groups.NAME]` table: only the fields it sets.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of group settings")]
struct FileGroup {
    enabled: Option<bool>,
    safety: Option<bool>,
    labels: Option<Vec<String>>,
    on: Option<f32>,
    off: Option<f32>,
    onset_hops: Option<usize>,
    onset_of: Option<usize>,
    pooling: Option<Pooling>,
    cooldown_s: Option<f64>,
    max_event_s: Option<f64>,
    min_duration_s: Option<f64>,
}

impl FileGroup {
    fn apply(self, g: &mut GroupConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { g.$f = v; } )* };
        }
        set!(enabled, safety, labels);
        let t = &mut g.tuning;
        macro_rules! tune {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { t.$f = v; } )* };
        }
        tune!(
            on,
            off,
            onset_hops,
            onset_of,
            pooling,
            cooldown_s,
            max_event_s,
            min_duration_s
        );
    }
}

// ---------------------------------------------------------------------------------
// Parsing and validation.
// ---------------------------------------------------------------------------------

fn parse(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
    let at = |offset: Option<usize>, key: Option<String>, message: String| ConfigError {
        origin: origin.to_string(),
        line: offset.map(|o| line_of(text, o)),
        key,
        message: one_line(&message),
    };

    // 1. Syntax.
    let (doc, errors) = DeTable::parse_recoverable(text);
    if let Some(e) = errors.first() {
        let offset = e.span().map(|s| s.start);
        let mut key = offset.and_then(|o| key_at(doc.get_ref(), o));
        if key.is_none() && e.message() == "duplicate key" {
            // The span covers the repeated key, which the partial tree does not hold.
            key = e
                .span()
                .and_then(|s| text.get(s))
                .map(|k| k.trim().to_string());
        }
        return Err(vec![at(
            offset,
            key,
            format!("invalid TOML: {}", e.message()),
        )]);
    }
    let doc = doc.get_ref();

    // 2. Schema: unknown keys and types.
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let key = offset.and_then(|o| key_at(doc, o));
        let message = e
            .message()
            .replace("unknown field", "unknown key")
            .replace("expected f32", "expected a number")
            .replace("expected f64", "expected a number")
            .replace("expected usize", "expected a whole number >= 0")
            .replace("expected u64", "expected a whole number >= 0")
            .replace("expected u16", "expected a whole number from 0 to 65535")
            .replace("expected u8", "expected a whole number from 0 to 255");
        vec![at(offset, key, message)]
    })?;

    // 3. Merge and validate.
    let mut ck = Checker {
        doc,
        issues: Vec::new(),
    };
    let cfg = ck.build(file);
    if ck.issues.is_empty() {
        return Ok(cfg);
    }
    let mut errs: Vec<ConfigError> = ck
        .issues
        .into_iter()
        .map(|(segs, message)| {
            let s: Vec<&str> = segs.iter().map(String::as_str).collect();
            let offset = locate(doc, &s).map(|(o, _)| o);
            at(offset, Some(render_key(&s)), message)
        })
        .collect();
    errs.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(errs)
}

/// Collects validation problems as (key segments, message).
struct Checker<'a, 'i> {
    doc: &'a DeTable<'i>,
    issues: Vec<(Vec<String>, String)>,
}

impl Checker<'_, '_> {
    fn fail(&mut self, key: &[&str], message: String) {
        self.issues
            .push((key.iter().map(|s| s.to_string()).collect(), message));
    }

    /// Whether `key` is written in the file.
    fn present(&self, key: &[&str]) -> bool {
        matches!(locate(self.doc, key), Some((_, true)))
    }

    /// Which of two keys in a conflict to report: `first` if the file sets it or does
    /// not set `second`, else `second`.
    fn blame<'k>(&self, first: &'k [&'k str], second: &'k [&'k str]) -> &'k [&'k str] {
        if self.present(first) || !self.present(second) {
            first
        } else {
            second
        }
    }

    /// Checks `lo <= v <= hi` (`lo < v` when `open_lo`); NaN fails.
    fn range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        key: &[&str],
        v: T,
        lo: T,
        open_lo: bool,
        hi: T,
    ) -> bool {
        let lo_ok = if open_lo { v > lo } else { v >= lo };
        if lo_ok && v <= hi {
            return true;
        }
        let b = if open_lo { '(' } else { '[' };
        self.fail(key, format!("must be in {b}{lo}, {hi}], got {v}"));
        false
    }

    /// Merges the file's tables over the defaults and the built-in groups, then checks
    /// every value (see [`Checker::check`]). Problems that only the file's own tables
    /// can have (a bad group name, a new group without labels) are found here.
    fn build(&mut self, file: FileConfig) -> Config {
        let FileConfig {
            mut node,
            audio,
            model,
            detection,
            mqtt,
            learning,
            http,
            privacy,
            sources,
        } = file;

        if node.id.is_empty() {
            node.id = default_node_id();
        }
        let mut groups = DetectionConfig::default().groups;
        let mut file_tuned = std::collections::BTreeSet::new();
        for b in BUILTIN_GROUPS {
            if let Some(g) = groups.get_mut(b.name) {
                (g.tuning.on, g.tuning.off, g.tuning.pooling) = b.thresholds_for(&model.name);
            }
        }
        for (name, fg) in detection.groups {
            if fg.on.is_some() || fg.off.is_some() || fg.pooling.is_some() {
                file_tuned.insert(name.clone());
            }
            let key = ["detection", "groups", name.as_str()];
            if !valid_group_name(&name) {
                self.fail(
                    &key,
                    format!("group name must match [a-z0-9_]{{1,32}}, got {name:?}"),
                );
                continue;
            }
            match groups.get_mut(&name) {
                Some(g) => fg.apply(g),
                None => {
                    if fg.labels.is_none() {
                        self.fail(
                            &key,
                            format!(
                                "{name:?} is not a built-in group, so it must set labels \
                                 (built-in groups: {})",
                                BUILTIN_GROUPS
                                    .iter()
                                    .map(|b| b.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        continue;
                    }
                    let mut g = GroupConfig::new(
                        NEW_GROUP_ENABLED,
                        NEW_GROUP_SAFETY,
                        Vec::new(),
                        MAX_POOLED,
                    );
                    fg.apply(&mut g);
                    groups.insert(name, g);
                }
            }
        }

        let cfg = Config {
            node,
            audio,
            model,
            detection: DetectionConfig {
                status_interval_s: detection.status_interval_s,
                detectors: detection.detectors,
                groups,
                file_tuned,
            },
            mqtt,
            learning,
            http,
            privacy,
            sources,
        };
        self.check(&cfg);
        cfg
    }

    /// Checks every value of a merged configuration: ranges, combinations, and the
    /// text of the values used as paths, topics, ids and addresses. The same checks
    /// run on a configuration the command line changed ([`Config::validate`]).
    fn check(&mut self, cfg: &Config) {
        let Config {
            node,
            audio,
            model,
            detection,
            mqtt,
            learning,
            http,
            privacy,
            sources,
        } = cfg;

        // Text used as a path, a name to look up, a topic or an id: no control
        // characters (a NUL cannot even be passed to the operating system).
        for (key, v) in [
            (&["audio", "source"][..], &audio.source),
            (&["model", "name"], &model.name),
            (&["detection", "detectors"], &detection.detectors),
            (&["mqtt", "username"], &mqtt.username),
            (&["mqtt", "client_id"], &mqtt.client_id),
            (&["mqtt", "state_dir"], &mqtt.state_dir),
            (&["mqtt", "ca_file"], &mqtt.ca_file),
            (&["mqtt", "client_cert_file"], &mqtt.client_cert_file),
            (&["mqtt", "client_key_file"], &mqtt.client_key_file),
        ] {
            if let Err(m) = check_text(v) {
                self.fail(key, m);
            }
        }

        // [learning]
        self.range(&["learning", "days"], learning.days, 1.0, false, 365.0);
        self.range(
            &["learning", "max_mb"],
            learning.max_mb,
            1.0,
            false,
            10_000.0,
        );
        self.range(
            &["learning", "false_alarms_per_week"],
            learning.false_alarms_per_week,
            0.0,
            false,
            1000.0,
        );
        self.range(
            &["learning", "max_recall_drop"],
            learning.max_recall_drop,
            0.0,
            false,
            1.0,
        );

        // [http]
        match http.addr() {
            Err(m) => self.fail(&["http", "listen"], m),
            Ok(Some(addr)) => {
                if let Err(m) = check_text(&http.token) {
                    self.fail(&["http", "token"], m);
                } else if let Err(m) = check_http_bind(addr, &http.token) {
                    self.fail(&["http", "listen"], m);
                }
            }
            Ok(None) => {}
        }
        self.range(
            &["http", "max_upload_mb"],
            http.max_upload_mb,
            0.01,
            false,
            200.0,
        );
        self.range(
            &["http", "predict_per_minute"],
            http.predict_per_minute,
            1,
            false,
            10_000,
        );
        self.range(&["http", "events_kept"], http.events_kept, 1, false, 10_000);

        // [privacy]
        self.range(
            &["privacy", "clip_before_s"],
            privacy.clip_before_s,
            0.0,
            false,
            30.0,
        );
        self.range(
            &["privacy", "clip_after_s"],
            privacy.clip_after_s,
            1.0,
            false,
            60.0,
        );
        self.range(
            &["privacy", "max_clips"],
            privacy.max_clips,
            1,
            false,
            100_000,
        );
        self.range(
            &["privacy", "max_age_days"],
            privacy.max_age_days,
            0.01,
            false,
            3650.0,
        );
        self.range(
            &["privacy", "max_mb"],
            privacy.max_mb,
            1.0,
            false,
            100_000.0,
        );
        self.range(
            &["privacy", "speech_threshold"],
            privacy.speech_threshold,
            0.0,
            false,
            1.0,
        );
        self.range(
            &["privacy", "scramble_block_s"],
            privacy.scramble_block_s,
            0.05,
            false,
            5.0,
        );
        self.range(
            &["privacy", "dp_noise_snr_db"],
            privacy.dp_noise_snr_db,
            -40.0,
            false,
            60.0,
        );
        self.range(
            &["privacy", "dp_noise_cutoff_hz"],
            privacy.dp_noise_cutoff_hz,
            500.0,
            false,
            24_000.0,
        );

        // [mqtt]
        if let Err(m) = check_host(&mqtt.host) {
            self.fail(&["mqtt", "host"], m);
        }
        if mqtt.port == 0 {
            self.fail(&["mqtt", "port"], "must be in [1, 65535], got 0".into());
        }
        self.range(&["mqtt", "keepalive_s"], mqtt.keepalive_s, 5, false, 3600);
        self.range(
            &["mqtt", "outbox_max_mib"],
            mqtt.outbox_max_mib,
            1,
            false,
            4096,
        );
        self.range(&["mqtt", "qos"], mqtt.qos, 0, false, 2);
        // Checked even while the embedded broker is off: `--embedded-broker` turns
        // it on from the command line.
        if mqtt
            .embedded_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            self.fail(
                &["mqtt", "embedded_listen"],
                format!(
                    "must be an IP address and port such as \"{DEFAULT_EMBEDDED_LISTEN}\", got {:?}",
                    mqtt.embedded_listen
                ),
            );
        }
        if mqtt.embedded_broker {
            if !mqtt.host.is_empty() {
                let key = self.blame(&["mqtt", "host"], &["mqtt", "embedded_broker"]);
                self.fail(
                    key,
                    "host and embedded_broker = true both set: publish either to a broker of \
                     your own (host) or to the embedded one"
                        .into(),
                );
            }
            if mqtt.tls {
                self.fail(
                    &["mqtt", "tls"],
                    "the embedded broker speaks plain MQTT on its listen address; turn tls off"
                        .into(),
                );
            }
        }
        if mqtt.client_cert_file.is_empty() != mqtt.client_key_file.is_empty() {
            let key = if mqtt.client_cert_file.is_empty() {
                &["mqtt", "client_cert_file"]
            } else {
                &["mqtt", "client_key_file"]
            };
            self.fail(
                key,
                "client_cert_file and client_key_file go together: set both or neither".into(),
            );
        }
        for (k, v) in [
            ("ca_file", &mqtt.ca_file),
            ("client_cert_file", &mqtt.client_cert_file),
            ("client_key_file", &mqtt.client_key_file),
        ] {
            if !v.is_empty() && !mqtt.tls {
                self.fail(
                    &["mqtt", k],
                    "is set but tls = false; set tls = true to use it".into(),
                );
            }
        }
        for (k, v) in [
            ("base_topic", &mqtt.base_topic),
            ("discovery_prefix", &mqtt.discovery_prefix),
        ] {
            if let Err(m) = check_topic_prefix(v) {
                self.fail(&["mqtt", k], m);
            }
        }

        // [node]
        if !valid_node_id(&node.id) {
            self.fail(
                &["node", "id"],
                format!(
                    "must be 1 to 64 characters from A-Z a-z 0-9 _ -, got {:?}",
                    node.id
                ),
            );
        }

        // [audio]
        if check_text(&audio.source).is_ok() {
            if let Err(m) = check_source(&audio.source) {
                self.fail(&["audio", "source"], m);
            }
        }
        self.range(
            &["audio", "ring_seconds"],
            audio.ring_seconds,
            0.5,
            false,
            60.0,
        );
        self.range(&["audio", "gate_dbfs"], audio.gate_dbfs, -120.0, false, 0.0);

        // [model]
        if model.name.trim().is_empty() {
            self.fail(&["model", "name"], "must not be empty".to_string());
        }
        let window_ok = self.range(&["model", "window_s"], model.window_s, 0.96, false, 60.0);
        if self.range(&["model", "hop_s"], model.hop_s, 0.1, false, 60.0)
            && window_ok
            && model.hop_s > model.window_s
        {
            let key = self.blame(&["model", "hop_s"], &["model", "window_s"]);
            self.fail(
                key,
                format!(
                    "hop_s ({}) must not exceed window_s ({})",
                    model.hop_s, model.window_s
                ),
            );
        }

        // [detection]
        self.range(
            &["detection", "status_interval_s"],
            detection.status_interval_s,
            1.0,
            false,
            3600.0,
        );
        for (name, g) in &detection.groups {
            self.group(name, g);
        }

        // [[sources]]
        if !sources.is_empty() && self.present(&["audio", "source"]) {
            self.fail(
                &["audio", "source"],
                "is not used when [[sources]] are given: set each source's `source` instead"
                    .to_string(),
            );
        }
        if sources.len() > MAX_SOURCES {
            self.fail(
                &["sources"],
                format!("at most {MAX_SOURCES} sources, got {}", sources.len()),
            );
        }
        for (i, src) in sources.iter().enumerate() {
            self.source(i, src, sources, detection);
        }
    }

    fn source(&mut self, i: usize, s: &SourceConfig, all: &[SourceConfig], d: &DetectionConfig) {
        let index = i.to_string();
        let k = |f: &'static str| ["sources", index.as_str(), f];
        if !valid_group_name(&s.name) {
            self.fail(
                &k("name"),
                format!("source name must match [a-z0-9_]{{1,32}}, got {:?}", s.name),
            );
        } else if RESERVED_SOURCE_NAMES.contains(&s.name.as_str()) {
            self.fail(
                &k("name"),
                format!(
                    "{:?} is a topic name of the node; choose another (not {})",
                    s.name,
                    RESERVED_SOURCE_NAMES.join(", ")
                ),
            );
        } else if all[..i].iter().any(|o| o.name == s.name) {
            self.fail(&k("name"), format!("source {:?} is named twice", s.name));
        }
        match check_text(&s.source) {
            Err(m) => self.fail(&k("source"), m),
            Ok(()) => {
                if let Err(m) = check_source(&s.source) {
                    self.fail(&k("source"), format!("source {:?}: {m}", s.name));
                }
            }
        }
        if let Err(m) = check_text(&s.room) {
            self.fail(&k("room"), m);
        }
        self.range(&k("gain_db"), s.gain_db, -40.0, false, 40.0);
        let enabled = |g: &str| d.groups.get(g).is_some_and(|c| c.enabled);
        if let Some(groups) = &s.groups {
            for g in groups {
                if !enabled(g) {
                    self.fail(
                        &k("groups"),
                        format!("source {:?}: {g:?} is not an enabled group", s.name),
                    );
                }
            }
        }
        for (g, &on) in &s.thresholds {
            let key = ["sources", index.as_str(), "thresholds", g.as_str()];
            let watched = s.groups.as_ref().is_none_or(|l| l.contains(g));
            if !enabled(g) || !watched {
                self.fail(
                    &key,
                    format!(
                        "source {:?}: {g:?} is not a group this source watches",
                        s.name
                    ),
                );
            } else {
                self.range(&key, on, 0.0, true, 1.0);
            }
        }
    }

    fn group(&mut self, name: &str, g: &GroupConfig) {
        let k = |f: &'static str| ["detection", "groups", name, f];
        if g.labels.is_empty() {
            self.fail(&k("labels"), "must list at least one label".to_string());
        }
        if let Some(i) = g.labels.iter().position(|l| l.trim().is_empty()) {
            self.fail(&k("labels"), format!("label {} is empty", i + 1));
        }
        let on_ok = self.range(&k("on"), g.tuning.on, 0.0, true, 1.0);
        if self.range(&k("off"), g.tuning.off, 0.0, false, 1.0)
            && on_ok
            && g.tuning.off > g.tuning.on
        {
            let (ka, kb) = (k("off"), k("on"));
            let key = self.blame(&ka, &kb);
            self.fail(
                key,
                format!(
                    "off ({}) must not exceed on ({})",
                    g.tuning.off, g.tuning.on
                ),
            );
        }
        let of_ok = self.range(&k("onset_of"), g.tuning.onset_of, 1, false, 60);
        if self.range(&k("onset_hops"), g.tuning.onset_hops, 1, false, 60)
            && of_ok
            && g.tuning.onset_hops > g.tuning.onset_of
        {
            let (ka, kb) = (k("onset_hops"), k("onset_of"));
            let key = self.blame(&ka, &kb);
            self.fail(
                key,
                format!(
                    "onset_hops ({}) must not exceed onset_of ({})",
                    g.tuning.onset_hops, g.tuning.onset_of
                ),
            );
        }
        self.range(&k("cooldown_s"), g.tuning.cooldown_s, 0.0, false, 86400.0);
        let max_ok = self.range(&k("max_event_s"), g.tuning.max_event_s, 1.0, false, 86400.0);
        if self.range(
            &k("min_duration_s"),
            g.tuning.min_duration_s,
            0.0,
            false,
            600.0,
        ) && max_ok
            && g.tuning.min_duration_s > g.tuning.max_event_s
        {
            let (ka, kb) = (k("min_duration_s"), k("max_event_s"));
            let key = self.blame(&ka, &kb);
            self.fail(
                key,
                format!(
                    "min_duration_s ({}) must not exceed max_event_s ({})",
                    g.tuning.min_duration_s, g.tuning.max_event_s
                ),
            );
        }
    }
}

/// Checks text that is used as a path, a name to look up, a topic or an id: it must
/// hold no control characters (`\0` cannot even be passed to the operating system,
/// and MQTT forbids it in topics, client ids and user names).
pub fn check_text(v: &str) -> Result<(), String> {
    if v.chars().any(char::is_control) {
        return Err(format!("must not contain control characters, got {v:?}"));
    }
    Ok(())
}

/// Checks a broker host (`[mqtt] host`, or the host of `--mqtt`): empty (no broker),
/// a host name, or an IP address (IPv6 with or without brackets). A port or a login
/// written into it would be misread, so `:` outside an IPv6 address, `@`, `/` and
/// white space are refused.
pub fn check_host(v: &str) -> Result<(), String> {
    check_text(v)?;
    let ipv6 = || {
        v.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    };
    let odd = v.contains(['@', '/', '?', '#']) || v.chars().any(char::is_whitespace);
    if odd || (v.contains(':') && !ipv6()) {
        return Err(format!(
            "must be a host name or an IP address (the port goes in port, the login in \
             username and password), got {v:?}"
        ));
    }
    Ok(())
}

/// Checks an MQTT topic prefix (`base_topic`, `discovery_prefix`): levels that are not
/// empty, without the wildcards `+` and `#` and without control characters.
fn check_topic_prefix(v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.contains(['+', '#'])
        || v.split('/').any(str::is_empty)
        || check_text(v).is_err()
    {
        return Err(format!(
            "must be a topic prefix without + or #, empty levels or control characters, \
             got {v:?}"
        ));
    }
    Ok(())
}

/// Validates the syntax of `audio.source`.
fn check_source(s: &str) -> Result<(), String> {
    const FORMS: &str = "\"default\", \"device:NAME\", \"file:PATH\" or \"stdin:RATE:CHANNELS\"";
    if s == "default" {
        return Ok(());
    }
    if let Some(name) = s.strip_prefix("device:") {
        if name.trim().is_empty() {
            return Err(format!("device:NAME needs a device name, got {s:?}"));
        }
        return Ok(());
    }
    if let Some(path) = s.strip_prefix("file:") {
        if path.is_empty() {
            return Err(format!("file:PATH needs a path, got {s:?}"));
        }
        return Ok(());
    }
    if let Some(rest) = s.strip_prefix("stdin:") {
        let mut it = rest.split(':');
        let (Some(rate), Some(ch), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("must be stdin:RATE:CHANNELS, got {s:?}"));
        };
        match rate.parse::<u32>() {
            Ok(r) if (4000..=384000).contains(&r) => {}
            _ => {
                return Err(format!(
                    "stdin sample rate must be an integer in [4000, 384000], got {rate:?}"
                ))
            }
        }
        match ch.parse::<u32>() {
            Ok(c) if (1..=32).contains(&c) => {}
            _ => {
                return Err(format!(
                    "stdin channel count must be an integer in [1, 32], got {ch:?}"
                ))
            }
        }
        return Ok(());
    }
    Err(format!("must be {FORMS}, got {s:?}"))
}

fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_group_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The node id used when none is configured: the hostname (from `gethostname`, else
/// `/etc/hostname`) up to its first dot, lowercased, with characters outside
/// `[a-z0-9_-]` replaced by `-`, at most 64 characters; [`FALLBACK_NODE_ID`] if that
/// leaves nothing.
pub fn default_node_id() -> String {
    let raw = os_hostname()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    sanitize_node_id(&raw)
}

fn sanitize_node_id(raw: &str) -> String {
    let host = raw.trim().split('.').next().unwrap_or("");
    let id: String = host
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.chars().all(|c| c == '-') {
        FALLBACK_NODE_ID.to_string()
    } else {
        id
    }
}

fn os_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, which is the length
    // passed; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

// ---------------------------------------------------------------------------------
// Keys, spans and lines.
// ---------------------------------------------------------------------------------

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The error for a file that is not UTF-8 text (TOML must be): where the first bad
/// byte is, so it can be found and fixed.
fn not_utf8(origin: &str, e: &std::string::FromUtf8Error) -> ConfigError {
    let bytes = e.as_bytes();
    let bad = e.utf8_error().valid_up_to();
    let line_start = bytes[..bad]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    ConfigError {
        origin: origin.to_string(),
        line: Some(bytes[..bad].iter().filter(|&&b| b == b'\n').count() + 1),
        key: None,
        message: format!(
            "not UTF-8 text: byte 0x{:02x} at column {} is invalid; save the file as UTF-8",
            bytes[bad],
            bad - line_start + 1
        ),
    }
}

/// Messages are one line (TOML parser messages can have several).
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Dotted key, quoting segments that are not bare TOML keys.
fn render_key<S: AsRef<str>>(segs: &[S]) -> String {
    segs.iter()
        .map(|s| {
            let s = s.as_ref();
            let bare = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if bare {
                s.to_string()
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Inverse of [`render_key`].
fn split_key(key: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut chars = key.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '.' if !quoted => segs.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    segs.push(cur);
    segs
}

fn entries<'a, 'i>(
    t: &'a DeTable<'i>,
) -> impl Iterator<Item = (&'a str, &'a toml::Spanned<DeValue<'i>>, usize)> {
    t.iter()
        .map(|(k, v)| (k.get_ref().as_ref(), v, k.span().start))
}

/// Byte offset of the deepest part of `key` written in the document (the key itself,
/// or its nearest enclosing table), and whether the whole key was found.
fn locate(doc: &DeTable<'_>, key: &[&str]) -> Option<(usize, bool)> {
    let mut table = doc;
    let mut found = None;
    let mut i = 0;
    while i < key.len() {
        let Some((_, v, offset)) = entries(table).find(|(k, _, _)| *k == key[i]) else {
            return found.map(|o| (o, false));
        };
        found = Some(offset);
        let mut value = v.get_ref();
        // An array of tables (`[[sources]]`) is entered by a numeric segment.
        while let (DeValue::Array(a), Some(n)) =
            (value, key.get(i + 1).and_then(|s| s.parse::<usize>().ok()))
        {
            let Some(item) = a.get(n) else {
                return Some((offset, false));
            };
            found = Some(item.span().start);
            value = item.get_ref();
            i += 1;
        }
        match value {
            DeValue::Table(t) => table = t,
            _ => return found.map(|o| (o, i + 1 == key.len())),
        }
        i += 1;
    }
    found.map(|o| (o, true))
}

/// Dotted key of the deepest entry whose key or value covers byte `offset`.
fn key_at(doc: &DeTable<'_>, offset: usize) -> Option<String> {
    fn walk(t: &DeTable<'_>, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        let covers =
            |r: std::ops::Range<usize>| r.start <= offset && offset < r.end.max(r.start + 1);
        for (k, v) in t.iter() {
            path.push(k.get_ref().to_string());
            if (covers(k.span()) || covers(v.span())) && path.len() > best.len() {
                *best = path.clone();
            }
            match v.get_ref() {
                DeValue::Table(inner) => walk(inner, offset, path, best),
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(inner) = item.get_ref() {
                            path.push(i.to_string());
                            if covers(item.span()) && path.len() > best.len() {
                                *best = path.clone();
                            }
                            walk(inner, offset, path, best);
                            path.pop();
                        }
                    }
                }
                _ => {}
            }
            path.pop();
        }
    }
    let mut best = Vec::new();
    walk(doc, offset, &mut Vec::new(), &mut best);
    (!best.is_empty()).then(|| render_key(&best))
}

// ---------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/hearken.example.toml");

    #[test]
    fn the_http_server_stays_on_loopback_unless_a_token_is_set() {
        let c = Config::from_str("", "t.toml").unwrap();
        assert_eq!(
            c.http.addr().unwrap(),
            Some("127.0.0.1:8765".parse().unwrap())
        );
        assert_eq!(c.http, Config::from_str(EXAMPLE, "e").unwrap().http);
        assert_eq!(c.privacy, Config::from_str(EXAMPLE, "e").unwrap().privacy);
        let off = Config::from_str("[http]\nlisten = \"\"\n", "t.toml").unwrap();
        assert_eq!(off.http.addr().unwrap(), None);
        Config::from_str("[http]\nlisten = \"[::1]:9000\"\n", "t.toml").unwrap();
        let e = assert_err("[http]\nlisten = \"0.0.0.0:8765\"\n", "http.listen", 2);
        assert!(e.to_string().contains("token"), "{e}");
        Config::from_str(
            "[http]\nlisten = \"0.0.0.0:8765\"\ntoken = \"long-secret\"\n",
            "t.toml",
        )
        .unwrap();
        assert_err("[http]\nlisten = \"localhost\"\n", "http.listen", 2);
        assert_err("[http]\nmax_upload_mb = 0\n", "http.max_upload_mb", 2);
        assert_err(
            "[http]\npredict_per_minute = 0\n",
            "http.predict_per_minute",
            2,
        );
        assert_err(
            "[privacy]\nspeech_threshold = 1.5\n",
            "privacy.speech_threshold",
            2,
        );
        assert_err(
            "[privacy]\nscramble_block_s = 0\n",
            "privacy.scramble_block_s",
            2,
        );
        assert_err("[privacy]\nclip_after_s = 0.5\n", "privacy.clip_after_s", 2);
    }

    fn err(text: &str) -> ConfigError {
        match Config::from_str(text, "t.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts the error names `key` at `line`.
    fn assert_err(text: &str, key: &str, line: usize) -> ConfigError {
        let e = err(text);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
        assert_eq!(e.origin, "t.toml");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("t.toml:{line}: {key}: ")),
            "{shown}"
        );
        e
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_line_and_column() {
        let path = std::env::temp_dir().join(format!("hearken-utf8-{}.toml", std::process::id()));
        std::fs::write(&path, b"[node]\nroom = \"K\xfcche\"\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert_eq!(e.line, Some(2), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: not UTF-8 text: byte 0xfc at column 10 is invalid; save the file as UTF-8",
                path.display()
            )
        );
    }

    #[test]
    fn integer_type_errors_say_which_numbers_fit() {
        for (text, want) in [
            (
                "[mqtt]\nport = 70000\n",
                "expected a whole number from 0 to 65535",
            ),
            (
                "[mqtt]\nqos = \"1\"\n",
                "expected a whole number from 0 to 255",
            ),
            ("[mqtt]\nkeepalive_s = -5\n", "expected a whole number >= 0"),
        ] {
            let e = err(text);
            assert_eq!(e.line, Some(2), "{e}");
            assert!(e.message.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::from_str("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.audio.source, "default");
        assert_eq!(c.model.name, crate::model::DEFAULT_MODEL);
        assert!(valid_node_id(&c.node.id), "{:?}", c.node.id);
        assert_eq!(c.detection.groups.len(), BUILTIN_GROUPS.len());
        assert_eq!(c.enabled_groups().count(), BUILTIN_GROUPS.len());
        let glass = &c.detection.groups["glass"];
        assert!(glass.safety);
        assert_eq!(glass.tuning.pooling, Pooling::Max);
        assert_eq!((glass.tuning.on, glass.tuning.off), (0.03, 0.015));
        assert_eq!(
            c.detection.groups["smoke_alarm"].tuning.pooling,
            Pooling::Mean
        );
        assert!(!c.detection.groups["dog_bark"].safety);
    }

    #[test]
    fn builtin_thresholds_follow_the_model_unless_the_file_pins_them() {
        let c = Config::from_str("[model]\nname = \"yamnet\"\n", "t.toml").unwrap();
        assert_eq!(c.detection.groups["glass"].tuning.on, 0.30);
        assert_eq!(c.detection.groups["siren"].tuning.pooling, Pooling::Mean);
        let mut c = Config::from_str("[detection.groups.gunshot]\non = 0.5\n", "t.toml").unwrap();
        c.set_model("yamnet");
        assert_eq!(
            c.detection.groups["gunshot"].tuning.on, 0.5,
            "pinned by the file"
        );
        assert_eq!(c.detection.groups["glass"].tuning.on, 0.30);
        c.set_model("/opt/models/yamnet/");
        assert_eq!(c.detection.groups["glass"].tuning.on, 0.30);
        c.set_model("efficientat-mn04");
        assert_eq!(c.detection.groups["glass"].tuning.on, 0.03);
    }

    #[test]
    fn builtins_are_valid() {
        let mut ck = Checker {
            doc: &DeTable::new(),
            issues: Vec::new(),
        };
        for b in BUILTIN_GROUPS {
            assert!(valid_group_name(b.name), "{}", b.name);
            ck.group(b.name, &b.config());
        }
        assert!(ck.issues.is_empty(), "{:?}", ck.issues);
    }

    #[test]
    fn example_file_is_defaults() {
        let c = Config::from_str(EXAMPLE, "hearken.example.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, Config::default());
    }

    #[test]
    fn example_file_writes_out_every_builtin_group_and_key() {
        let doc = DeTable::parse(EXAMPLE).unwrap();
        let doc = doc.get_ref();
        let fields = [
            "enabled",
            "safety",
            "labels",
            "onset_hops",
            "onset_of",
            "cooldown_s",
            "max_event_s",
            "min_duration_s",
        ];
        for b in BUILTIN_GROUPS {
            for f in fields {
                assert!(
                    matches!(
                        locate(doc, &["detection", "groups", b.name, f]),
                        Some((_, true))
                    ),
                    "example lacks detection.groups.{}.{f}",
                    b.name
                );
            }
        }
        // Thresholds are shown commented out, so they follow the model.
        for f in ["on", "off", "pooling"] {
            let shown = EXAMPLE.matches(&format!("\n# {f} = ")).count();
            assert!(
                shown >= BUILTIN_GROUPS.len(),
                "commented {f} lines: {shown}"
            );
        }
        // Top-level keys: set or commented out.
        for k in [
            "id",
            "room",
            "source",
            "ring_seconds",
            "gate_dbfs",
            "name",
            "window_s",
            "hop_s",
            "skip_quiet_windows",
            "status_interval_s",
            "detectors",
            "host",
            "port",
            "username",
            "password",
            "client_id",
            "keepalive_s",
            "base_topic",
            "discovery_prefix",
            "state_dir",
            "outbox_max_mib",
            "store",
            "days",
            "max_mb",
            "false_alarms_per_week",
            "max_recall_drop",
            "weekly_adapt",
        ] {
            assert!(
                EXAMPLE.lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{k} ="))),
                "example lacks {k}"
            );
        }
    }

    #[test]
    fn mqtt_settings_are_checked() {
        assert_err("[mqtt]\nport = 0\n", "mqtt.port", 2);
        assert_err("[mqtt]\n\nkeepalive_s = 1\n", "mqtt.keepalive_s", 3);
        assert_err("[mqtt]\nbase_topic = \"a/#\"\n", "mqtt.base_topic", 2);
        assert_err("[mqtt]\nqos = 3\n", "mqtt.qos", 2);
        assert_err(
            "[mqtt]\nhost = \"b\"\nembedded_broker = true\n",
            "mqtt.host",
            2,
        );
        assert_err(
            "[mqtt]\nembedded_broker = true\nembedded_listen = \"localhost\"\n",
            "mqtt.embedded_listen",
            3,
        );
        assert_err("[mqtt]\nca_file = \"/etc/ca.pem\"\n", "mqtt.ca_file", 2);
        let e = err("[mqtt]\ntls = true\nclient_cert_file = \"c.pem\"\n");
        assert_eq!(e.key.as_deref(), Some("mqtt.client_key_file"), "{e}");
        let c = Config::from_str(
            "[mqtt]\nembedded_broker = true\nembedded_listen = \"0.0.0.0:1884\"\nqos = 2\n",
            "t.toml",
        )
        .unwrap();
        assert!(c.mqtt.embedded_broker && c.mqtt.qos == 2);
        let c = Config::from_str("[mqtt]\nhost = \"broker.lan\"\nport = 8883\n", "t.toml").unwrap();
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("broker.lan", 8883));
        assert_eq!(c.mqtt.base_topic, "hearken");
    }

    #[test]
    fn control_characters_are_refused_where_text_is_a_path_topic_or_id() {
        for (table, key) in [
            ("audio", "source"),
            ("model", "name"),
            ("detection", "detectors"),
            ("mqtt", "host"),
            ("mqtt", "username"),
            ("mqtt", "client_id"),
            ("mqtt", "base_topic"),
            ("mqtt", "discovery_prefix"),
            ("mqtt", "state_dir"),
        ] {
            for bad in ["\\u0000", "a\\u0000b", "x\\ny", "tab\\there", "\\u007f"] {
                let e = assert_err(
                    &format!("[{table}]\n\n{key} = \"{bad}\"\n"),
                    &format!("{table}.{key}"),
                    3,
                );
                assert!(e.message.contains("control characters"), "{e}");
            }
        }
        // The TLS files too (with tls on, so that is not what is blamed).
        for key in ["ca_file", "client_cert_file", "client_key_file"] {
            let mut text = "[mqtt]\ntls = true\n".to_string();
            for k in ["ca_file", "client_cert_file", "client_key_file"] {
                let v = if k == key { "a\\u0000" } else { "f.pem" };
                text.push_str(&format!("{k} = \"{v}\"\n"));
            }
            let e = err(&text);
            assert_eq!(
                e.key.as_deref(),
                Some(format!("mqtt.{key}").as_str()),
                "{e}"
            );
            assert!(e.message.contains("control characters"), "{e}");
        }
        // Free text is not a path: the room may hold anything printable or not.
        Config::from_str("[node]\nroom = \"Kitchen\\tnorth\"\n", "t").unwrap();
    }

    #[test]
    fn a_broker_host_is_a_name_or_an_address() {
        for bad in [
            "broker.lan:1884",
            "user@broker",
            "broker/x",
            "a b",
            " broker",
        ] {
            assert_err(&format!("[mqtt]\nhost = \"{bad}\"\n"), "mqtt.host", 2);
        }
        for good in ["broker.lan", "192.168.1.5", "::1", "[fe80::1]", "localhost"] {
            let c = Config::from_str(&format!("[mqtt]\nhost = \"{good}\"\n"), "t").unwrap();
            assert_eq!(c.mqtt.host, good);
        }
        assert!(check_host("").is_ok(), "empty: no broker");
    }

    #[test]
    fn embedded_listen_is_checked_even_with_the_embedded_broker_off() {
        // `--embedded-broker` can turn it on from the command line.
        assert_err(
            "[mqtt]\nembedded_listen = \"localhost\"\n",
            "mqtt.embedded_listen",
            2,
        );
    }

    #[test]
    fn validate_checks_values_set_after_loading() {
        let mut c = Config::from_str("", "t").unwrap();
        c.validate().unwrap();
        c.node.id = "a b".into();
        c.audio.source = "file:".into();
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_deref().unwrap()).collect();
        assert_eq!(keys, ["node.id", "audio.source"], "{errs:?}");
        assert!(errs.iter().all(|e| e.origin.is_empty() && e.line.is_none()));
        let e = errs[0].clone().on_command_line("--node-id");
        assert!(
            e.to_string()
                .starts_with("command line (--node-id): node.id: must be"),
            "{e}"
        );
    }

    #[test]
    fn an_error_for_a_key_is_located_in_the_file() {
        let text = "[model]\nname = \"x\"\n\nwindow_s = 5\n";
        let e = ConfigError::for_key("model.window_s", "trained on 2 s\nwindows")
            .in_file("h.toml", text);
        assert_eq!(
            e.to_string(),
            "h.toml:4: model.window_s: trained on 2 s; windows"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = assert_err(
            "[audio]\nsource = \"default\"\n\n[broker]\nhost = \"x\"\n",
            "broker",
            4,
        );
        assert!(e.message.contains("unknown key"), "{e}");
    }

    #[test]
    fn unknown_group_key() {
        let e = assert_err(
            "[detection.groups.glass]\non = 0.5\nthreshold = 0.4\n",
            "detection.groups.glass.threshold",
            3,
        );
        assert!(e.message.contains("unknown key `threshold`"), "{e}");
        // Dotted keys and inline tables are located too.
        assert_err(
            "\ndetection.groups.glass.bad = 1\n",
            "detection.groups.glass.bad",
            2,
        );
        assert_err(
            "[detection]\ngroups = { glass = { on = 0.5, zz = 1 } }\n",
            "detection.groups.glass.zz",
            2,
        );
    }

    #[test]
    fn bad_type() {
        assert_err(
            "[detection.groups.glass]\n\non = \"high\"\n",
            "detection.groups.glass.on",
            3,
        );
        assert_err("[audio]\nring_seconds = \"4\"\n", "audio.ring_seconds", 2);
        assert_err(
            "[detection.groups.glass]\nlabels = [\n  \"Glass\",\n  3,\n]\n",
            "detection.groups.glass.labels",
            4,
        );
        assert_err(
            "[detection.groups.glass]\nonset_hops = 1.5\n",
            "detection.groups.glass.onset_hops",
            2,
        );
        assert_err(
            "[detection.groups.glass]\npooling = \"median\"\n",
            "detection.groups.glass.pooling",
            2,
        );
        assert_err("detection = 5\n", "detection", 1);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[audio]\nsource = \"default\"\nring_seconds = \n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
        let e = err("[audio]\nsource = \"a\"\nsource = \"b\"\n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn on_above_one() {
        let e = assert_err(
            "# glass\n[detection.groups.glass]\non = 1.5\n",
            "detection.groups.glass.on",
            3,
        );
        assert_eq!(e.message, "must be in (0, 1], got 1.5");
        assert_eq!(
            e.to_string(),
            "t.toml:3: detection.groups.glass.on: must be in (0, 1], got 1.5"
        );
        assert_err(
            "[detection.groups.fire]\non = 0\n",
            "detection.groups.fire.on",
            2,
        );
        assert_err(
            "[detection.groups.fire]\non = nan\n",
            "detection.groups.fire.on",
            2,
        );
    }

    #[test]
    fn off_above_on() {
        let e = assert_err(
            "[detection.groups.glass]\non = 0.2\noff = 0.25\n",
            "detection.groups.glass.off",
            3,
        );
        assert!(e.message.contains("must not exceed on"), "{e}");
        // Only `on` written: it is the one blamed.
        assert_err(
            "[detection.groups.glass]\n\non = 0.01\n",
            "detection.groups.glass.on",
            3,
        );
    }

    #[test]
    fn onset_hops_above_onset_of() {
        let e = assert_err(
            "[detection.groups.scream]\nonset_of = 3\nonset_hops = 4\n",
            "detection.groups.scream.onset_hops",
            3,
        );
        assert!(e.message.contains("must not exceed onset_of (3)"), "{e}");
        assert_err(
            "[detection.groups.scream]\nonset_of = 61\n",
            "detection.groups.scream.onset_of",
            2,
        );
    }

    #[test]
    fn bad_node_id() {
        let e = assert_err(
            "[node]\nroom = \"hall\"\nid = \"kitchen pi\"\n",
            "node.id",
            3,
        );
        assert!(e.message.contains("\"kitchen pi\""), "{e}");
        assert_err(
            &format!("[node]\nid = \"{}\"\n", "a".repeat(65)),
            "node.id",
            2,
        );
        let c = Config::from_str("[node]\nid = \"Kitchen-Pi_2\"\n", "t").unwrap();
        assert_eq!(c.node.id, "Kitchen-Pi_2");
    }

    #[test]
    fn bad_source_syntax() {
        for bad in [
            "pulse",
            "device:",
            "file:",
            "stdin",
            "stdin:48000",
            "stdin:1000:1",
            "stdin:48000:0",
            "stdin:48000:33",
            "stdin:48000:2:x",
            "stdin:abc:2",
        ] {
            assert_err(
                &format!("[audio]\n\nsource = \"{bad}\"\n"),
                "audio.source",
                3,
            );
        }
        for good in [
            "default",
            "device:hw:1,0",
            "file:/tmp/a.wav",
            "stdin:16000:1",
            "stdin:384000:32",
        ] {
            let c = Config::from_str(&format!("[audio]\nsource = \"{good}\"\n"), "t").unwrap();
            assert_eq!(c.audio.source, good);
        }
    }

    #[test]
    fn other_ranges() {
        assert_err("[audio]\nring_seconds = 0.1\n", "audio.ring_seconds", 2);
        assert_err("[audio]\ngate_dbfs = 3\n", "audio.gate_dbfs", 2);
        assert_err("[model]\nwindow_s = 0.5\n", "model.window_s", 2);
        assert_err("[model]\nwindow_s = 2\nhop_s = 3\n", "model.hop_s", 3);
        assert_err("[model]\nname = \"\"\n", "model.name", 2);
        assert_err(
            "[detection]\nstatus_interval_s = 0\n",
            "detection.status_interval_s",
            2,
        );
        assert_err(
            "[detection.groups.glass]\nmax_event_s = 10\nmin_duration_s = 20\n",
            "detection.groups.glass.min_duration_s",
            3,
        );
        assert_err(
            "[detection.groups.glass]\ncooldown_s = -1\n",
            "detection.groups.glass.cooldown_s",
            2,
        );
        assert_err(
            "[detection.groups.glass]\nlabels = []\n",
            "detection.groups.glass.labels",
            2,
        );
        assert_err(
            "[detection.groups.Glass]\nlabels = [\"Glass\"]\n",
            "detection.groups.Glass",
            1,
        );
    }

    #[test]
    fn several_errors_are_all_reported_in_line_order() {
        let errs = Config::from_str_all(
            "[model]\nhop_s = 0\n[detection.groups.glass]\non = 2\n[audio]\ngate_dbfs = 1\n",
            "t",
        )
        .unwrap_err();
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(4), Some(6)], "{errs:?}");
    }

    #[test]
    fn override_keeps_other_fields() {
        let c = Config::from_str("[detection.groups.siren]\non = 0.6\n", "t").unwrap();
        let mut want = Config::default().detection.groups["siren"].clone();
        want.tuning.on = 0.6;
        assert_eq!(c.detection.groups["siren"], want);
        assert_eq!(c.detection.groups.len(), BUILTIN_GROUPS.len());

        let c = Config::from_str("[detection.groups.dog_bark]\nenabled = false\n", "t").unwrap();
        assert!(!c.detection.groups["dog_bark"].enabled);
        assert!(c.enabled_groups().all(|(n, _)| n != "dog_bark"));
        assert_eq!(c.enabled_groups().count(), BUILTIN_GROUPS.len() - 1);
    }

    #[test]
    fn new_group() {
        let e = assert_err(
            "[detection.groups.glass]\non = 0.4\n\n[detection.groups.cat]\non = 0.5\n",
            "detection.groups.cat",
            4,
        );
        assert!(e.message.contains("must set labels"), "{e}");

        let c = Config::from_str(
            "[detection.groups.cat]\nlabels = [\"Cat\", \"Meow\"]\nsafety = false\n",
            "t",
        )
        .unwrap();
        let cat = &c.detection.groups["cat"];
        assert_eq!(cat.labels, ["Cat", "Meow"]);
        assert!(cat.enabled && !cat.safety);
        assert_eq!(cat.tuning.on, MAX_POOLED.on);
        assert_eq!(cat.tuning.pooling, Pooling::Max);
    }

    #[test]
    fn check_labels_names_unknown_label() {
        let mut c = Config::default();
        c.detection
            .groups
            .retain(|n, _| n == "glass" || n == "dog_bark");
        let all = Labels::from_names(&[
            "Glass", "Shatter", "Breaking", "Bark", "Dog", "Bow-wow", "Yip",
        ]);
        c.check_labels(&all).unwrap();

        // "Breaking" is missing; "Bark" too, but dog_bark is disabled, so not checked.
        let partial = Labels::from_names(&["Glass", "Shatter", "Breaking, crash", "Dog"]);
        c.detection.groups.get_mut("dog_bark").unwrap().enabled = false;
        let e = c.check_labels(&partial).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("detection.groups.glass.labels"));
        assert!(e.message.contains("\"Breaking\" is not a label"), "{e}");
        assert!(
            e.message.contains("did you mean \"Breaking, crash\"?"),
            "{e}"
        );

        // Located in the file it came from.
        let text =
            "[node]\nroom = \"x\"\n[detection.groups.glass]\nlabels = [\"Glass\", \"Breaking\"]\n";
        let e = e.in_file("h.toml", text);
        assert_eq!(e.line, Some(4));
        assert!(e
            .to_string()
            .starts_with("h.toml:4: detection.groups.glass.labels: "));
    }

    #[test]
    fn builtin_labels_exist_in_shipped_models() {
        for model in ["efficientat-mn04", "yamnet"] {
            let path = crate::shared_dir()
                .join("models")
                .join(model)
                .join("labels.csv");
            if !path.is_file() {
                eprintln!("skipping: {} not found", path.display());
                continue;
            }
            let labels = Labels::load(&path).unwrap();
            Config::default()
                .check_labels(&labels)
                .unwrap_or_else(|e| panic!("{model}: {e}"));
        }
    }

    #[test]
    fn node_id_sanitising() {
        assert_eq!(sanitize_node_id("Kitchen-Pi.local\n"), "kitchen-pi");
        assert_eq!(sanitize_node_id("my host"), "my-host");
        assert_eq!(sanitize_node_id(""), FALLBACK_NODE_ID);
        assert_eq!(sanitize_node_id(&"x".repeat(100)).len(), 64);
        assert!(valid_node_id(&default_node_id()));
    }

    #[test]
    fn load_missing_file_names_path() {
        let e = Config::load(Path::new("/nonexistent/hearken.toml")).unwrap_err();
        assert_eq!(e.origin, "/nonexistent/hearken.toml");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/hearken.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn keys_round_trip() {
        let segs = ["detection", "groups", "a.b", "on"];
        let k = render_key(&segs);
        assert_eq!(k, "detection.groups.\"a.b\".on");
        assert_eq!(split_key(&k), segs);
    }

    const SOURCES: &str = "[node]\nroom = \"House\"\n\n\
[[sources]]\nname = \"kitchen\"\nsource = \"default\"\nroom = \"Kitchen\"\n\n\
[[sources]]\nname = \"hall\"\nsource = \"device:USB mic\"\ngain_db = 6.0\n\
groups = [\"glass\", \"smoke_alarm\"]\n\n\
[sources.thresholds]\nglass = 0.7\n";

    #[test]
    fn sources_become_plans() {
        let c = Config::from_str(SOURCES, "t.toml").unwrap();
        let p = c.source_plans();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].room.as_str()),
            ("kitchen", "Kitchen")
        );
        assert!(p[0].scoped && p[0].groups.len() == c.enabled_groups().count());
        assert_eq!(
            p[1].room, "House",
            "a source without a room takes the node's"
        );
        assert_eq!(
            p[1].groups,
            vec!["glass".to_string(), "smoke_alarm".to_string()]
        );
        assert!((p[1].gain - 1.995).abs() < 0.01, "{}", p[1].gain);
        assert_eq!(p[1].thresholds.get("glass"), Some(&0.7));
        // Without [[sources]]: the one [audio] source, on the node's own topics.
        let single = Config::from_str("", "t.toml").unwrap().source_plans();
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].name, SINGLE_SOURCE_NAME);
        assert!(!single[0].scoped);
    }

    #[test]
    fn bad_sources_name_their_entry_and_line() {
        let cases = [
            ("name = \"Kitchen!\"", "sources.0.name", "[a-z0-9_]"),
            ("name = \"top\"", "sources.0.name", "topic name"),
            ("source = \"mic\"", "sources.0.source", "must be"),
            ("gain_db = 60.0", "sources.0.gain_db", "must be in"),
            (
                "groups = [\"glas\"]",
                "sources.0.groups",
                "not an enabled group",
            ),
        ];
        for (line, key, says) in cases {
            let mut text = "[[sources]]\nname = \"a\"\nsource = \"default\"\n".to_string();
            let field = line.split(' ').next().unwrap();
            text = text
                .lines()
                .filter(|l| !l.starts_with(&format!("{field} ")))
                .collect::<Vec<_>>()
                .join("\n");
            text.push_str(&format!("\n{line}\n"));
            let e = Config::from_str(&text, "t.toml").unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{line}: {e}");
            assert!(e.message.contains(says), "{line}: {e}");
            assert!(e.line.is_some(), "{line}: {e}");
        }
        // The second of two entries, on its own line.
        let text = "[[sources]]\nname = \"a\"\nsource = \"default\"\n\n[[sources]]\nname = \"a\"\nsource = \"default\"\n";
        let e = Config::from_str(text, "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources.1.name"));
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("twice"), "{e}");
        // A threshold for a group the source does not watch.
        let text = format!("{SOURCES}smoke_alarm = 0.5\nsiren = 0.4\n");
        let e = Config::from_str(&text, "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sources.1.thresholds.siren"), "{e}");
        // [audio] source beside [[sources]] would be ignored: refused.
        let text = format!("[audio]\nsource = \"default\"\n{SOURCES}");
        let e = Config::from_str(&text, "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("audio.source"), "{e}");
        // An unknown key inside an entry.
        let e = Config::from_str(
            "[[sources]]\nname = \"a\"\nsource = \"default\"\nvolume = 3\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("unknown key"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn source_flags() {
        let base = Config::from_str(SOURCES, "t.toml").unwrap();
        // One plain spec: the single source, on the node's topics.
        let mut c = base.clone();
        apply_source_flags(&mut c, &["file:a.wav".into()]).unwrap();
        assert!(c.sources.is_empty());
        assert_eq!(c.audio.source, "file:a.wav");
        // Named: a configured name keeps its settings; a new one gets defaults.
        let mut c = base.clone();
        apply_source_flags(
            &mut c,
            &["hall=file:h.wav".into(), "attic=file:x=y.wav".into()],
        )
        .unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources[0].source, "file:h.wav");
        assert_eq!(c.sources[0].gain_db, 6.0);
        assert_eq!(
            (c.sources[1].name.as_str(), c.sources[1].source.as_str()),
            ("attic", "file:x=y.wav")
        );
        // `=` inside a plain spec is not a name.
        let mut c = base.clone();
        apply_source_flags(&mut c, &["file:a=b.wav".into()]).unwrap();
        assert_eq!(c.audio.source, "file:a=b.wav");
        // Mixed forms, two plain specs, a name twice: errors.
        for bad in [
            vec!["a=default", "file:x.wav"],
            vec!["file:x.wav", "file:y.wav"],
            vec!["a=default", "a=file:x.wav"],
        ] {
            let flags: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(
                apply_source_flags(&mut base.clone(), &flags).is_err(),
                "{bad:?}"
            );
        }
        let mut c = base.clone();
        apply_source_flags(&mut c, &[]).unwrap();
        assert_eq!(c, base);
    }
}
