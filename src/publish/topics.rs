//! MQTT topic names for one node (pure string building).
//!
//! Layout, with `<base>` = `<prefix>/<node_id>` (prefix default `hearken`):
//!
//! | topic                  | payload                  | QoS | retained |
//! |------------------------|--------------------------|-----|----------|
//! | `<base>/status`        | `online` / `offline`     | 1   | yes (also the Last Will) |
//! | `<base>/event/<group>` | event JSON               | 1   | no       |
//! | `<base>/<group>/state` | `ON` / `OFF`             | 1   | yes      |
//! | `<base>/top`           | top labels + dBFS JSON   | 0   | no       |
//! | `<base>/problem`       | `{"state": "ON"/"OFF", "reason"}` | 1 | yes |
//!
//! A source of `[[sources]]` has the same layout one level down, under
//! `<base>/<source>` ([`Topics::for_source`]): its events, group states, feedback,
//! `top`, and its own availability (`<base>/<source>/status`, `offline` while its
//! device is lost). `problem` stays the node's.

use std::fmt;

/// Default first level of every hearken topic.
pub const DEFAULT_PREFIX: &str = "hearken";

/// Why a prefix or node id cannot be used in topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// The node id is not `[A-Za-z0-9_-]{1,64}`.
    BadNodeId(String),
    /// The prefix is empty, has an empty level, or holds `+`, `#` or NUL.
    BadPrefix(String),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::BadNodeId(s) => {
                write!(f, "node id must match [A-Za-z0-9_-]{{1,64}}, got {s:?}")
            }
            TopicError::BadPrefix(s) => write!(
                f,
                "MQTT base topic must be non-empty levels without '+', '#' or NUL, got {s:?}"
            ),
        }
    }
}

impl std::error::Error for TopicError {}

/// True if `id` can be a node id: `[A-Za-z0-9_-]{1,64}`. This is also the character
/// set Home Assistant accepts for the node and object ids of discovery topics.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `s` with every character outside `[A-Za-z0-9_-]` replaced by `_` (`_` if empty),
/// so it can be a Home Assistant discovery node or object id.
pub fn sanitize_id(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        "_".to_string()
    } else {
        out
    }
}

fn valid_prefix(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|level| !level.is_empty()) && !p.contains(['+', '#', '\0'])
}

/// The topics of one node, all under `<prefix>/<node_id>`.
///
/// Group names are used verbatim in topics; the configuration guarantees they match
/// `[a-z0-9_]{1,32}`, so they never hold `/`, `+` or `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    node_base: String,
    node_id: String,
    source: Option<String>,
}

impl Topics {
    /// Topics under `<prefix>/<node_id>`. The prefix may have several levels
    /// (`home/hearken`) but no empty level, wildcard or NUL; the node id must match
    /// `[A-Za-z0-9_-]{1,64}`. Odd values are rejected, not rewritten, so that two
    /// nodes can never end up sharing topics.
    pub fn new(prefix: &str, node_id: &str) -> Result<Topics, TopicError> {
        if !valid_prefix(prefix) {
            return Err(TopicError::BadPrefix(prefix.to_string()));
        }
        if !valid_node_id(node_id) {
            return Err(TopicError::BadNodeId(node_id.to_string()));
        }
        let base = format!("{prefix}/{node_id}");
        Ok(Topics {
            node_base: base.clone(),
            base,
            node_id: node_id.to_string(),
            source: None,
        })
    }

    /// The topics of source `name` of this node (a `[[sources]]` entry, whose name
    /// matches `[a-z0-9_]{1,32}`): under `<prefix>/<node_id>/<name>`.
    pub fn for_source(&self, name: &str) -> Topics {
        debug_assert!(!name.contains(['/', '+', '#']), "bad source {name:?}");
        Topics {
            base: format!("{}/{name}", self.node_base),
            node_base: self.node_base.clone(),
            node_id: self.node_id.clone(),
            source: Some(name.to_string()),
        }
    }

    /// The source these topics are scoped to (`None`: the node's own).
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// `<prefix>/<node_id>`, or `<prefix>/<node_id>/<source>` for a source's topics.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The node's availability, `<prefix>/<node_id>/status` (the Last Will), also
    /// from a source's topics.
    pub fn node_status(&self) -> String {
        format!("{}/status", self.node_base)
    }

    /// The node id the topics were built for.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Availability: `<base>/status` (`online`/`offline`, retained; the node's is the
    /// Last Will, a source's says whether its device is heard).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// Event messages of a group: `<base>/event/<group>` (JSON, QoS 1, not retained).
    pub fn event(&self, group: &str) -> String {
        debug_assert!(!group.contains(['/', '+', '#']), "bad group {group:?}");
        format!("{}/event/{group}", self.base)
    }

    /// Subscription filter matching every group's event topic: `<base>/event/+`.
    pub fn event_filter(&self) -> String {
        format!("{}/event/+", self.base)
    }

    /// Per-group state: `<base>/<group>/state` (`ON`/`OFF`, retained).
    pub fn state(&self, group: &str) -> String {
        debug_assert!(!group.contains(['/', '+', '#']), "bad group {group:?}");
        format!("{}/{group}/state", self.base)
    }

    /// Verdicts on a group's events, sent by Home Assistant's button or an
    /// automation: `<base>/<group>/feedback` (see [`super::feedback`]).
    pub fn feedback(&self, group: &str) -> String {
        debug_assert!(!group.contains(['/', '+', '#']), "bad group {group:?}");
        format!("{}/{group}/feedback", self.base)
    }

    /// Subscription filter matching every group's feedback topic:
    /// `<base>/+/feedback`.
    pub fn feedback_filter(&self) -> String {
        format!("{}/+/feedback", self.base)
    }

    /// Diagnostic top labels and loudness: `<base>/top` (JSON, rate-limited).
    pub fn top(&self) -> String {
        format!("{}/top", self.base)
    }

    /// Whether the node has a problem it cannot fix itself (a full disk):
    /// `<base>/problem` (JSON `{"state": "ON"|"OFF", "reason": …}`, retained).
    pub fn problem(&self) -> String {
        format!("{}/problem", self.node_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_strings() {
        let t = Topics::new(DEFAULT_PREFIX, "kitchen-pi").unwrap();
        assert_eq!(t.base(), "hearken/kitchen-pi");
        assert_eq!(t.node_id(), "kitchen-pi");
        assert_eq!(t.status(), "hearken/kitchen-pi/status");
        assert_eq!(t.event("glass"), "hearken/kitchen-pi/event/glass");
        assert_eq!(t.event_filter(), "hearken/kitchen-pi/event/+");
        assert_eq!(t.feedback("glass"), "hearken/kitchen-pi/glass/feedback");
        assert_eq!(t.feedback_filter(), "hearken/kitchen-pi/+/feedback");
        assert_eq!(
            t.state("smoke_alarm"),
            "hearken/kitchen-pi/smoke_alarm/state"
        );
        assert_eq!(t.top(), "hearken/kitchen-pi/top");
        assert_eq!(t.problem(), "hearken/kitchen-pi/problem");
    }

    #[test]
    fn source_topics() {
        let n = Topics::new(DEFAULT_PREFIX, "pi").unwrap();
        let t = n.for_source("kitchen");
        assert_eq!(t.source(), Some("kitchen"));
        assert_eq!(n.source(), None);
        assert_eq!(t.base(), "hearken/pi/kitchen");
        assert_eq!(t.status(), "hearken/pi/kitchen/status");
        assert_eq!(t.node_status(), "hearken/pi/status");
        assert_eq!(n.node_status(), n.status());
        assert_eq!(t.event("glass"), "hearken/pi/kitchen/event/glass");
        assert_eq!(t.state("glass"), "hearken/pi/kitchen/glass/state");
        assert_eq!(t.feedback_filter(), "hearken/pi/kitchen/+/feedback");
        assert_eq!(t.top(), "hearken/pi/kitchen/top");
        assert_eq!(t.problem(), "hearken/pi/problem");
        assert_eq!(t.node_id(), "pi");
    }

    #[test]
    fn multi_level_prefix() {
        let t = Topics::new("home/sound", "n1").unwrap();
        assert_eq!(t.status(), "home/sound/n1/status");
    }

    #[test]
    fn odd_node_ids_are_rejected() {
        for bad in [
            "",
            "a/b",
            "a+b",
            "a#",
            "kitchen pi",
            "küche",
            "a.b",
            &"x".repeat(65),
        ] {
            assert_eq!(
                Topics::new("hearken", bad),
                Err(TopicError::BadNodeId(bad.to_string())),
                "{bad:?}"
            );
        }
        assert!(Topics::new("hearken", "Node_1-a").is_ok());
        assert!(Topics::new("hearken", &"x".repeat(64)).is_ok());
    }

    #[test]
    fn odd_prefixes_are_rejected() {
        for bad in ["", "/", "a/", "/a", "a//b", "a/+", "#", "a\0"] {
            assert!(
                matches!(Topics::new(bad, "n"), Err(TopicError::BadPrefix(_))),
                "{bad:?}"
            );
        }
        let e = Topics::new("a/+", "n").unwrap_err().to_string();
        assert!(e.contains("a/+"), "{e}");
    }

    #[test]
    fn sanitising_ids() {
        assert_eq!(sanitize_id("kitchen-pi_2"), "kitchen-pi_2");
        assert_eq!(sanitize_id("a b/c+#.ü"), "a_b_c____");
        assert_eq!(sanitize_id(""), "_");
        assert!(valid_node_id(&sanitize_id("weird id!")));
    }
}
