//! "That was a false alarm" / "that was real": the household's verdicts on events,
//! received on `<base>/<group>/feedback`.
//!
//! The payload is either a bare verdict (`false_alarm` or `real`, what the Home
//! Assistant button of each group sends), which means the group's latest event, or
//! JSON naming the event: `{"verdict": "false_alarm", "event_id": "<uuid>"}` (`id`
//! is accepted for `event_id`). The publisher parses it here and hands the verdict
//! to whoever keeps it (the home store, which `hearken adapt` reads).

use std::sync::Arc;

use uuid::Uuid;

use super::topics::Topics;

/// The verdict payload for "that was a false alarm".
pub const FALSE_ALARM: &str = "false_alarm";
/// The verdict payload for "that was real".
pub const REAL: &str = "real";

/// A verdict on one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// The group, from the topic.
    pub group: String,
    /// The source whose topic it came on (`None`: a single-source daemon's
    /// topics, which name none).
    pub source: Option<String>,
    /// The event, when the payload names one; `None` means the group's latest.
    pub event_id: Option<Uuid>,
    /// True for "that was real", false for "that was a false alarm".
    pub real: bool,
}

/// Where verdicts go. Called on the publisher thread: it must not block.
pub type FeedbackSink = Arc<dyn Fn(Feedback) + Send + Sync>;

/// The group a feedback topic names: `Some("glass")` for `<base>/glass/feedback`.
pub fn feedback_group<'a>(topics: &Topics, topic: &'a str) -> Option<&'a str> {
    let rest = topic.strip_prefix(topics.base())?.strip_prefix('/')?;
    let group = rest.strip_suffix("/feedback")?;
    (!group.is_empty() && !group.contains('/')).then_some(group)
}

fn verdict(word: &str) -> Option<bool> {
    match word
        .trim()
        .to_ascii_lowercase()
        .replace([' ', '-'], "_")
        .as_str()
    {
        FALSE_ALARM | "false" | "wrong" => Some(false),
        REAL | "true" | "correct" => Some(true),
        _ => None,
    }
}

/// Parses a message received on a feedback topic. `groups` are the configured
/// groups; a verdict for any other is refused. The error says what was wrong and
/// what to send instead.
pub fn parse(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    groups: &[(String, bool)],
) -> Result<Feedback, String> {
    let Some(group) = feedback_group(topics, topic) else {
        return Err(format!("{topic} is not a feedback topic"));
    };
    if !groups.iter().any(|(g, _)| g == group) {
        return Err(format!(
            "feedback on {topic}: {group} is not a configured group"
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| format!("feedback on {topic}: the payload is not UTF-8 text"))?
        .trim();
    let usage = format!(
        "send `{FALSE_ALARM}` or `{REAL}`, or {{\"verdict\": \"{FALSE_ALARM}\", \"event_id\": \"<id>\"}}"
    );
    let (real, event_id) = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("feedback on {topic}: bad JSON ({e}); {usage}"))?;
        let word = v
            .get("verdict")
            .and_then(|w| w.as_str())
            .ok_or_else(|| format!("feedback on {topic}: no \"verdict\"; {usage}"))?;
        let real = verdict(word)
            .ok_or_else(|| format!("feedback on {topic}: unknown verdict {word:?}; {usage}"))?;
        let id = match v.get("event_id").or_else(|| v.get("id")) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(Uuid::parse_str(s).map_err(|e| {
                format!("feedback on {topic}: event_id {s:?} is not an event id ({e})")
            })?),
            Some(other) => {
                return Err(format!(
                    "feedback on {topic}: event_id must be a string, not {other}"
                ))
            }
        };
        (real, id)
    } else {
        let real = verdict(text)
            .ok_or_else(|| format!("feedback on {topic}: unknown verdict {text:?}; {usage}"))?;
        (real, None)
    };
    Ok(Feedback {
        group: group.to_string(),
        source: topics.source().map(String::from),
        event_id,
        real,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<(String, bool)> {
        vec![("glass".into(), true), ("smoke_alarm".into(), true)]
    }

    #[test]
    fn bare_verdicts_mean_the_latest_event() {
        let t = Topics::new("hearken", "n1").unwrap();
        let f = parse(&t, "hearken/n1/glass/feedback", b"false_alarm", &groups()).unwrap();
        assert_eq!(
            f,
            Feedback {
                group: "glass".into(),
                source: None,
                event_id: None,
                real: false
            }
        );
        // A source's topic names its source: its latest event is meant.
        let k = t.for_source("kitchen");
        let f = parse(
            &k,
            "hearken/n1/kitchen/glass/feedback",
            b"false_alarm",
            &groups(),
        )
        .unwrap();
        assert_eq!(f.source.as_deref(), Some("kitchen"));
        for p in ["real", " REAL\n", "true"] {
            assert!(
                parse(&t, "hearken/n1/glass/feedback", p.as_bytes(), &groups())
                    .unwrap()
                    .real
            );
        }
        for p in ["False alarm", "false-alarm", "false"] {
            assert!(
                !parse(
                    &t,
                    "hearken/n1/smoke_alarm/feedback",
                    p.as_bytes(),
                    &groups()
                )
                .unwrap()
                .real
            );
        }
    }

    #[test]
    fn json_names_the_event() {
        let t = Topics::new("home/hearken", "n1").unwrap();
        let glass = |p: &str| {
            parse(
                &t,
                "home/hearken/n1/glass/feedback",
                p.as_bytes(),
                &groups(),
            )
            .unwrap()
        };
        let id = Uuid::new_v4();
        let f = glass(&format!(
            "{{\"verdict\": \"real\", \"event_id\": \"{id}\"}}"
        ));
        assert_eq!((f.real, f.event_id), (true, Some(id)));
        let f = glass(&format!(
            "{{\"verdict\": \"false_alarm\", \"id\": \"{id}\"}}"
        ));
        assert_eq!((f.real, f.event_id), (false, Some(id)));
        let f = glass(r#"{"verdict": "false_alarm", "event_id": null}"#);
        assert_eq!(f.event_id, None);
    }

    #[test]
    fn bad_feedback_is_refused_with_a_reason() {
        let t = Topics::new("hearken", "n1").unwrap();
        let bad = |topic: &str, p: &[u8], what: &str| {
            let e = parse(&t, topic, p, &groups()).unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        bad(
            "hearken/n1/gunshot/feedback",
            b"real",
            "not a configured group",
        );
        bad("hearken/n2/glass/feedback", b"real", "not a feedback topic");
        bad("hearken/n1/glass/state", b"real", "not a feedback topic");
        bad("hearken/n1/glass/feedback", b"maybe", "unknown verdict");
        bad(
            "hearken/n1/glass/feedback",
            b"{\"verdict\": 1}",
            "no \"verdict\"",
        );
        bad("hearken/n1/glass/feedback", b"{nope", "bad JSON");
        bad(
            "hearken/n1/glass/feedback",
            br#"{"verdict": "real", "event_id": "x"}"#,
            "not an event id",
        );
        bad(
            "hearken/n1/glass/feedback",
            br#"{"verdict": "real", "event_id": 7}"#,
            "must be a string",
        );
        bad("hearken/n1/glass/feedback", &[0xff, 0xfe], "not UTF-8");
    }
}
