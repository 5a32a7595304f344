//! Publishing to MQTT and Home Assistant.
//!
//! This module turns hearken's values (events, top labels, the group list) into
//! [`OutMessage`]s: topic, payload, QoS and retain flag, without I/O or clocks. The
//! durable [`outbox`] keeps them on disk until the broker acknowledges them.
//!
//! - [`topics`]: topic names under `<prefix>/<node_id>`.
//! - [`discovery`]: Home Assistant MQTT discovery configs and their removal.
//! - [`feedback`]: verdicts on events ("that was a false alarm") received back.
//! - [`outbox`]: the crash-safe on-disk queue.
//! - [`client`]: the publisher thread; [`tls`]: its TLS setup; [`broker`]: the
//!   optional embedded broker.

pub mod broker;
pub mod client;
pub mod config;
pub mod discovery;
pub mod feedback;
pub mod open_events;
pub mod outbox;
pub mod tls;
pub mod topics;

use serde::Serialize;

use crate::classify::Prediction;
use crate::detect::{Event, EventState};

pub use discovery::{discovery_messages, removal_messages, NodeInfo};
pub use topics::{TopicError, Topics};

/// Payload of the availability topic while the node runs.
pub const ONLINE: &str = "online";
/// Payload of the availability topic once the node is gone (also the Last Will).
pub const OFFLINE: &str = "offline";
/// State payload while a group's event lasts.
pub const STATE_ON: &str = "ON";
/// State payload when no event of the group is open.
pub const STATE_OFF: &str = "OFF";
/// Default minimum seconds between two diagnostic `top` messages.
pub const DEFAULT_TOP_INTERVAL_S: f64 = 10.0;

/// One MQTT message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Full topic name.
    pub topic: String,
    /// Payload bytes (UTF-8 text or JSON for everything hearken sends; empty to
    /// clear a retained message).
    pub payload: Vec<u8>,
    /// MQTT QoS level: 0, 1 or 2.
    pub qos: u8,
    /// Whether the broker keeps the message for later subscribers.
    pub retain: bool,
}

impl OutMessage {
    /// A message with a text payload.
    pub fn text(topic: String, payload: &str, qos: u8, retain: bool) -> OutMessage {
        OutMessage {
            topic,
            payload: payload.as_bytes().to_vec(),
            qos,
            retain,
        }
    }
}

/// Lets an action through at most once every `min_interval_s` seconds of the
/// caller's clock (monotonic seconds; the caller supplies them, so this is pure).
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Minimum seconds between two allowed actions; 0 or less allows everything.
    pub min_interval_s: f64,
    last: Option<f64>,
}

impl RateLimit {
    /// A limiter that allows its first call.
    pub fn new(min_interval_s: f64) -> RateLimit {
        RateLimit {
            min_interval_s,
            last: None,
        }
    }

    /// True (and remembers `now_s`) if the first call, if `min_interval_s` has passed
    /// since the last allowed call, or if the clock went backwards (a reset clock must
    /// not silence the topic until it catches up).
    pub fn allow(&mut self, now_s: f64) -> bool {
        let ok = match self.last {
            None => true,
            Some(last) => now_s < last || now_s - last >= self.min_interval_s,
        };
        if ok {
            self.last = Some(now_s);
        }
        ok
    }
}

/// The availability message: `online` or `offline` on `<base>/status`, QoS 1,
/// retained. The `offline` one is also what the client registers as its Last Will.
pub fn availability_message(topics: &Topics, online: bool) -> OutMessage {
    let payload = if online { ONLINE } else { OFFLINE };
    OutMessage::text(topics.status(), payload, 1, true)
}

/// The messages an event produces, in publishing order: the event JSON on
/// `<base>/event/<group>` (not retained), then the group's state on
/// `<base>/<group>/state`: `ON` for a start, `OFF` for an end (retained); both at
/// `qos` (the config's, 1 by default).
pub fn messages_for_event(topics: &Topics, e: &Event, qos: u8) -> Vec<OutMessage> {
    vec![
        event_message(topics, e, qos),
        state_message(topics, &e.group, e.state == EventState::Start, qos),
    ]
}

/// The event JSON on `<base>/event/<group>` (not retained): the part of an event
/// that the outbox keeps until the broker has it. The state is not queued: it is a
/// latest value, published live and again on every connect ([`state_message`]).
pub fn event_message(topics: &Topics, e: &Event, qos: u8) -> OutMessage {
    OutMessage {
        topic: topics.event(&e.group),
        payload: serde_json::to_vec(e).expect("an Event always serialises"),
        qos,
        retain: false,
    }
}

/// A group's retained state, `ON` or `OFF`: what the publisher says for every group
/// on connect, so Home Assistant never shows a group as unknown, and never as on
/// because of a retained `ON` left by a process that died.
pub fn state_message(topics: &Topics, group: &str, on: bool, qos: u8) -> OutMessage {
    let state = if on { STATE_ON } else { STATE_OFF };
    OutMessage::text(topics.state(group), state, qos, true)
}

/// The retained `<base>/problem` message: `{"state": "ON", "reason": …}` while
/// `reason` is `Some`, `{"state": "OFF"}` otherwise.
pub fn problem_message(topics: &Topics, reason: Option<&str>) -> OutMessage {
    let v = match reason {
        Some(r) => serde_json::json!({ "state": STATE_ON, "reason": r }),
        None => serde_json::json!({ "state": STATE_OFF }),
    };
    OutMessage {
        topic: topics.problem(),
        payload: serde_json::to_vec(&v).expect("JSON always serialises"),
        qos: 1,
        retain: true,
    }
}

/// Payload of the diagnostic `<base>/top` topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopReport {
    /// Highest-scoring labels of the latest window, best first.
    pub top: Vec<Prediction>,
    /// Loudness of the latest window, dBFS.
    pub dbfs: f32,
}

/// The diagnostic message on `<base>/top` (QoS 0, not retained); rate-limit calls
/// with a [`RateLimit`] (default [`DEFAULT_TOP_INTERVAL_S`]).
pub fn top_message(topics: &Topics, report: &TopReport) -> OutMessage {
    OutMessage {
        topic: topics.top(),
        payload: serde_json::to_vec(report).expect("a TopReport always serialises"),
        qos: 0,
        retain: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn event(state: EventState) -> Event {
        Event {
            id: Uuid::new_v4(),
            group: "glass".into(),
            state,
            safety: true,
            start_s: 1.5,
            end_s: matches!(state, EventState::End).then_some(3.0),
            detected_s: 2.0,
            started_at: "2024-01-01T00:00:01Z".into(),
            ended_at: None,
            peak_score: 0.9,
            labels: vec![Prediction {
                label_id: "/m/07q0yl5".into(),
                label: "Shatter".into(),
                probability: 0.9,
            }],
            dbfs: -12.0,
            node: "n1".into(),
            room: "kitchen".into(),
            source: "default".into(),
            model: "yamnet".into(),
            interrupted: false,
            clip: None,
        }
    }

    #[test]
    fn state_and_problem_messages() {
        let t = Topics::new("hearken", "n1").unwrap();
        let m = state_message(&t, "gunshot", false, 1);
        assert_eq!(m.topic, "hearken/n1/gunshot/state");
        assert_eq!(m.payload, b"OFF");
        assert!(m.retain);
        assert_eq!(state_message(&t, "gunshot", true, 1).payload, b"ON");
        let p = problem_message(&t, Some("disk full"));
        assert_eq!(p.topic, "hearken/n1/problem");
        assert!(p.retain);
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(v["state"], "ON");
        assert_eq!(v["reason"], "disk full");
        let v: serde_json::Value =
            serde_json::from_slice(&problem_message(&t, None).payload).unwrap();
        assert_eq!(v, serde_json::json!({"state": "OFF"}));
    }

    #[test]
    fn start_event_messages() {
        let t = Topics::new("hearken", "n1").unwrap();
        let e = event(EventState::Start);
        let m = messages_for_event(&t, &e, 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].topic, "hearken/n1/event/glass");
        assert_eq!((m[0].qos, m[0].retain), (1, false));
        let v: serde_json::Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(v["id"], e.id.to_string());
        assert_eq!(v["state"], "start");
        assert_eq!(v["group"], "glass");
        assert!(v["end_s"].is_null());
        assert_eq!(v["labels"][0]["label"], "Shatter");
        assert_eq!(m[1].topic, "hearken/n1/glass/state");
        assert_eq!(m[1].payload, b"ON");
        assert_eq!((m[1].qos, m[1].retain), (1, true));
    }

    #[test]
    fn end_event_messages() {
        let t = Topics::new("hearken", "n1").unwrap();
        let e = event(EventState::End);
        let m = messages_for_event(&t, &e, 1);
        let v: serde_json::Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(v["id"], e.id.to_string());
        assert_eq!(v["state"], "end");
        assert_eq!(v["end_s"], 3.0);
        assert_eq!(m[1].payload, b"OFF");
        assert!(m[1].retain);
    }

    #[test]
    fn availability() {
        let t = Topics::new("hearken", "n1").unwrap();
        let on = availability_message(&t, true);
        let off = availability_message(&t, false);
        assert_eq!(on.topic, "hearken/n1/status");
        assert_eq!(on.payload, b"online");
        assert_eq!(off.payload, b"offline");
        assert!(on.retain && off.retain);
        assert_eq!((on.qos, off.qos), (1, 1));
    }

    #[test]
    fn top_payload() {
        let t = Topics::new("hearken", "n1").unwrap();
        let m = top_message(
            &t,
            &TopReport {
                top: vec![Prediction {
                    label_id: "/m/09x0r".into(),
                    label: "Speech".into(),
                    probability: 0.5,
                }],
                dbfs: -30.5,
            },
        );
        assert_eq!(m.topic, "hearken/n1/top");
        assert_eq!((m.qos, m.retain), (0, false));
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["top"][0]["label"], "Speech");
        assert_eq!(v["dbfs"], -30.5);
    }

    #[test]
    fn rate_limit() {
        let mut r = RateLimit::new(10.0);
        assert!(r.allow(100.0));
        assert!(!r.allow(100.0));
        assert!(!r.allow(109.9));
        assert!(r.allow(110.0));
        assert!(!r.allow(115.0));
        assert!(r.allow(120.5));
        // Clock went backwards: allowed, and the window restarts there.
        assert!(r.allow(5.0));
        assert!(!r.allow(6.0));
        let mut any = RateLimit::new(0.0);
        assert!(any.allow(1.0) && any.allow(1.0));
    }
}
