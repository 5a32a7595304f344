//! Home Assistant MQTT discovery: the retained configs that make a node's entities
//! appear in Home Assistant without any configuration there, and the empty retained
//! messages that remove them again.
//!
//! Config topics are `<discovery_prefix>/<component>/<node_id>/<object_id>/config`,
//! with node and object ids in `[A-Za-z0-9_-]` as Home Assistant requires. Per node:
//!
//! | component       | object id  | what                                            |
//! |-----------------|------------|-------------------------------------------------|
//! | `binary_sensor` | `<group>`  | `ON` while the group's event lasts              |
//! | `event`         | `<group>`  | fires `detected` with the event's details       |
//! | `button`        | `<group>`  | "false alarm": a verdict on the group's latest event |
//! | `sensor`        | `top`      | current top label (attributes: labels, dBFS)    |
//! | `sensor`        | `loudness` | current loudness, dBFS                          |
//! | `binary_sensor` | `node-problem` | `ON` while hearken cannot write its state (disk) |
//!
//! All entities share one device (`identifiers: ["hearken_<node>"]`) and the node's
//! availability topic. Each source of `[[sources]]` is a device of its own
//! (`hearken_<node>_<source>`, `via_device` the node's) with the group entities and
//! the two sensors, object ids `<source>--<group>` / `<source>--top` /
//! `<source>--loudness`, available while both the node and the source are
//! (`availability_mode: all`). Unique ids use `.` and `:` as separators, characters that
//! neither node ids nor group names can hold, so no two entities, on one node or
//! across nodes, can share one.

use serde_json::{json, Map, Value};

use super::feedback::FALSE_ALARM;
use super::topics::{sanitize_id, Topics};
use super::{OutMessage, OFFLINE, ONLINE, STATE_OFF, STATE_ON};

/// Home Assistant's default discovery prefix.
pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";
/// Payload Home Assistant publishes on `<discovery_prefix>/status` when it starts;
/// the configs are re-announced when it arrives.
pub const HA_BIRTH: &str = "online";

/// Object id of the top-label sensor.
const TOP_OBJECT: &str = "top";
/// Object id of the loudness sensor.
const LOUDNESS_OBJECT: &str = "loudness";
/// Object id of the problem binary sensor; the `-` keeps it apart from every group
/// name (`[a-z0-9_]`).
pub const PROBLEM_OBJECT: &str = "node-problem";

/// The topic Home Assistant announces its start on: `<discovery_prefix>/status`.
pub fn ha_status_topic(discovery_prefix: &str) -> String {
    format!("{discovery_prefix}/status")
}

/// True if a message is Home Assistant's birth message (time to re-announce).
pub fn is_ha_birth(discovery_prefix: &str, topic: &str, payload: &[u8]) -> bool {
    topic == ha_status_topic(discovery_prefix) && payload == HA_BIRTH.as_bytes()
}

/// `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, with node and
/// object ids passed through [`sanitize_id`].
pub fn config_topic(
    discovery_prefix: &str,
    component: &str,
    node_id: &str,
    object_id: &str,
) -> String {
    format!(
        "{discovery_prefix}/{component}/{}/{}/config",
        sanitize_id(node_id),
        sanitize_id(object_id)
    )
}

/// Subscription filter matching every config this node may have announced:
/// `<discovery_prefix>/+/<node_id>/+/config`. Retained configs seen there and no
/// longer produced by [`discovery_messages`] are what [`stale_configs`] removes.
pub fn config_filter(discovery_prefix: &str, node_id: &str) -> String {
    format!("{discovery_prefix}/+/{}/+/config", sanitize_id(node_id))
}

/// The binary_sensor device class of a group: `smoke` for `smoke_alarm` and `fire`,
/// `sound` for every other group.
///
/// Both read "Detected" / "Clear" in Home Assistant. `safety`, which reads "Unsafe" /
/// "Safe", is not used: a glass break or a gunshot is a sound that was heard, not a
/// verdict on whether the home is safe, and "Gunshot: Safe" read as a claim hearken
/// cannot make. Whether a group is a safety group still shows in each event's
/// `safety` field.
pub fn device_class(group: &str) -> &'static str {
    match group {
        "smoke_alarm" | "fire" => "smoke",
        _ => "sound",
    }
}

/// `smoke_alarm` → `Smoke alarm`.
fn display_name(group: &str) -> String {
    let words = group.replace('_', " ");
    let mut c = words.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A source of `[[sources]]`, as discovery and the publisher see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Its name (`[a-z0-9_]{1,32}`).
    pub name: String,
    /// Its room, the device's suggested area ("" for none).
    pub room: String,
    /// The groups it watches, with their safety flag.
    pub groups: Vec<(String, bool)>,
}

/// Object id of a source's entity: `<source>--<what>` (`--` appears in no group
/// name, source name or node-level object id).
pub fn source_object(source: &str, what: &str) -> String {
    format!("{source}--{what}")
}

/// What discovery tells Home Assistant about one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeInfo<'a> {
    /// Node id (sanitised for topics and ids).
    pub node_id: &'a str,
    /// Enabled groups with their safety flag, on the node's own topics (the single
    /// `[audio] source`; empty with `[[sources]]`).
    pub groups: &'a [(String, bool)],
    /// The `[[sources]]`, each a device of its own.
    pub sources: &'a [SourceInfo],
    /// hearken's version, the device's `sw_version`.
    pub version: &'a str,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: &'a str,
    /// `[node] room`, the device's suggested area ("" for none).
    pub room: &'a str,
    /// Seconds without a new `top` report after which Home Assistant shows the
    /// top-sound and loudness sensors as unavailable instead of a stale value.
    pub expire_after_s: u64,
}

/// Keys every entity of the node carries: availability, device, origin.
fn common(topics: &Topics, node: &str, info: &NodeInfo<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("availability_topic".into(), json!(topics.status()));
    m.insert("payload_available".into(), json!(ONLINE));
    m.insert("payload_not_available".into(), json!(OFFLINE));
    let mut device = json!({
        "identifiers": [format!("hearken_{node}")],
        "name": format!("Hearken {node}"),
        "manufacturer": "hearken",
        "model": "Hearken sound monitor",
        "sw_version": info.version,
    });
    if !info.room.is_empty() {
        device["suggested_area"] = json!(info.room);
    }
    m.insert("device".into(), device);
    m.insert(
        "origin".into(),
        json!({ "name": "hearken", "sw_version": info.version }),
    );
    m
}

fn config_message(topic: String, common: &Map<String, Value>, specific: Value) -> OutMessage {
    let mut obj = common.clone();
    if let Value::Object(s) = specific {
        obj.extend(s);
    }
    OutMessage {
        topic,
        payload: serde_json::to_vec(&Value::Object(obj)).expect("JSON always serialises"),
        qos: 1,
        retain: true,
    }
}

/// The event entity's value template: a start becomes event type `detected` with
/// the event's details as attributes; an end renders empty, which Home Assistant
/// ignores, so an automation on the event entity fires once per event (the end
/// shows on the binary sensor).
const EVENT_TEMPLATE: &str = "{% if value_json.state == 'start' %}\
{{ {'event_type': 'detected', 'id': value_json.id, 'room': value_json.room, \
'peak_score': value_json.peak_score, 'dbfs': value_json.dbfs, \
'labels': value_json.labels} | tojson }}{% endif %}";

/// Retained discovery configs (QoS 1) for a node: per group (`(name, safety)`) a
/// `binary_sensor` on the group's state topic and an `event` entity on its event
/// topic and a `button` that sends "false alarm" for its latest event on the
/// group's feedback topic; then the `top` and `loudness` sensors on the diagnostic topic and the
/// `problem` binary sensor; the same group entities and sensors for each source of
/// `[[sources]]`, on its own device. Publish them on connect and again whenever Home
/// Assistant's birth message arrives ([`is_ha_birth`]).
pub fn discovery_messages(topics: &Topics, info: &NodeInfo<'_>) -> Vec<OutMessage> {
    let node = sanitize_id(info.node_id);
    let discovery_prefix = info.discovery_prefix;
    let common = common(topics, &node, info);
    let mut out = Vec::with_capacity(3 * info.groups.len() + 3);
    // The single source's entities are the node's own; without [[sources]] they
    // are always announced (a node with no group still shows its level).
    if info.sources.is_empty() || !info.groups.is_empty() {
        listening_entities(&mut out, topics, &common, info, None, info.groups);
    }
    for src in info.sources {
        let t = topics.for_source(&src.name);
        let c = source_common(topics, &t, &node, info, src);
        listening_entities(&mut out, &t, &c, info, Some(&src.name), &src.groups);
    }
    out.push(config_message(
        config_topic(discovery_prefix, "binary_sensor", &node, PROBLEM_OBJECT),
        &common,
        json!({
            "name": "Problem",
            "unique_id": format!("hearken_{node}:{PROBLEM_OBJECT}"),
            "state_topic": topics.problem(),
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.problem(),
            "payload_on": STATE_ON,
            "payload_off": STATE_OFF,
            "device_class": "problem",
            "entity_category": "diagnostic",
            "qos": 1,
        }),
    ));
    out
}

/// The keys every entity of a source's device carries: both availabilities (the
/// node's and the source's), its device (via the node's), the origin.
fn source_common(
    node_topics: &Topics,
    t: &Topics,
    node: &str,
    info: &NodeInfo<'_>,
    src: &SourceInfo,
) -> Map<String, Value> {
    let mut m = common(node_topics, node, info);
    m.remove("availability_topic");
    m.remove("payload_available");
    m.remove("payload_not_available");
    m.insert(
        "availability".into(),
        json!([
            { "topic": node_topics.node_status(), "payload_available": ONLINE, "payload_not_available": OFFLINE },
            { "topic": t.status(), "payload_available": ONLINE, "payload_not_available": OFFLINE },
        ]),
    );
    m.insert("availability_mode".into(), json!("all"));
    let mut device = json!({
        "identifiers": [format!("hearken_{node}_{}", src.name)],
        "name": format!("Hearken {node} {}", src.name),
        "manufacturer": "hearken",
        "model": "Hearken sound monitor (source)",
        "sw_version": info.version,
        "via_device": format!("hearken_{node}"),
    });
    if !src.room.is_empty() {
        device["suggested_area"] = json!(src.room);
    }
    m.insert("device".into(), device);
    m
}

/// A source's entities (the node's own when `source` is `None`): per group a
/// `binary_sensor`, an `event` and a "false alarm" `button`, then the `top` and
/// `loudness` sensors.
fn listening_entities(
    out: &mut Vec<OutMessage>,
    topics: &Topics,
    common: &Map<String, Value>,
    info: &NodeInfo<'_>,
    source: Option<&str>,
    groups: &[(String, bool)],
) {
    let node = sanitize_id(info.node_id);
    let discovery_prefix = info.discovery_prefix;
    let object_of = |what: &str| match source {
        Some(s) => source_object(s, what),
        None => sanitize_id(what),
    };
    for (group, _safety) in groups {
        let object = object_of(group);
        let name = display_name(group);
        out.push(config_message(
            config_topic(discovery_prefix, "binary_sensor", &node, &object),
            common,
            json!({
                "name": name,
                "unique_id": format!("hearken_{node}.{object}"),
                "state_topic": topics.state(group),
                "payload_on": STATE_ON,
                "payload_off": STATE_OFF,
                "device_class": device_class(group),
                "qos": 1,
            }),
        ));
        out.push(config_message(
            config_topic(discovery_prefix, "event", &node, &object),
            common,
            json!({
                "name": name,
                "unique_id": format!("hearken_{node}.{object}.event"),
                "state_topic": topics.event(group),
                "event_types": ["detected"],
                "value_template": EVENT_TEMPLATE,
                "qos": 1,
            }),
        ));
        out.push(config_message(
            config_topic(discovery_prefix, "button", &node, &object),
            common,
            json!({
                "name": format!("{name}: false alarm"),
                "unique_id": format!("hearken_{node}.{object}.false_alarm"),
                "command_topic": topics.feedback(group),
                "payload_press": FALSE_ALARM,
                "icon": "mdi:alarm-light-off-outline",
                "qos": 1,
            }),
        ));
    }
    let expire = info.expire_after_s.max(1);
    let top = object_of(TOP_OBJECT);
    out.push(config_message(
        config_topic(discovery_prefix, "sensor", &node, &top),
        common,
        json!({
            "name": "Top sound",
            "unique_id": format!("hearken_{node}:{top}"),
            "state_topic": topics.top(),
            "value_template":
                "{{ value_json.top[0].label if value_json.top else 'none' }}",
            "json_attributes_topic": topics.top(),
            "expire_after": expire,
            "entity_category": "diagnostic",
            "icon": "mdi:waveform",
        }),
    ));
    let loudness = object_of(LOUDNESS_OBJECT);
    out.push(config_message(
        config_topic(discovery_prefix, "sensor", &node, &loudness),
        common,
        json!({
            "name": "Loudness",
            "unique_id": format!("hearken_{node}:{loudness}"),
            "state_topic": topics.top(),
            "value_template": "{{ value_json.dbfs }}",
            // dBFS is relative to digital full scale, not sound pressure: no
            // `sound_pressure` device class (that one means dB SPL).
            "unit_of_measurement": "dBFS",
            "state_class": "measurement",
            "suggested_display_precision": 1,
            "expire_after": expire,
            "entity_category": "diagnostic",
            "icon": "mdi:volume-high",
        }),
    ));
}

fn clear(topic: String) -> OutMessage {
    OutMessage {
        topic,
        payload: Vec::new(),
        qos: 1,
        retain: true,
    }
}

/// Messages that remove the entities of groups no longer configured: an empty
/// retained payload on each group's `binary_sensor`, `event` and `button` config
/// topics (Home
/// Assistant deletes the entity; the broker drops the retained config), and on the
/// group's retained state topic so no stale `ON` lingers.
pub fn removal_messages(
    topics: &Topics,
    node_id: &str,
    removed_groups: &[String],
    discovery_prefix: &str,
) -> Vec<OutMessage> {
    let mut out = Vec::with_capacity(4 * removed_groups.len());
    for group in removed_groups {
        for component in ["binary_sensor", "event", "button"] {
            out.push(clear(config_topic(
                discovery_prefix,
                component,
                node_id,
                group,
            )));
        }
        out.push(clear(topics.state(group)));
    }
    out
}

/// Removal messages for the configs seen on the broker (`seen`, e.g. retained
/// messages received on [`config_filter`]) that `current` no longer announces.
/// Topics seen with an empty payload are already removed; pass only non-empty ones.
pub fn stale_configs(seen: &[String], current: &[OutMessage]) -> Vec<OutMessage> {
    seen.iter()
        .filter(|t| t.ends_with("/config") && !current.iter().any(|m| &m.topic == *t))
        .map(|t| clear(t.clone()))
        .collect()
}

/// What to publish when the broker shows this node's retained config on `topic`
/// (received through [`config_filter`]): nothing if `current` still announces it;
/// otherwise an empty retained payload on it (Home Assistant then deletes the
/// entity) and, for a group's `binary_sensor`, on the group's retained state topic.
pub fn stale_config_removal(
    topics: &Topics,
    topic: &str,
    current: &[OutMessage],
) -> Vec<OutMessage> {
    let mut out = stale_configs(&[topic.to_string()], current);
    if !out.is_empty() {
        let parts: Vec<&str> = topic.rsplitn(5, '/').collect();
        // [config, object, node, component, prefix]
        if parts.len() == 5 && parts[3] == "binary_sensor" && parts[1] != PROBLEM_OBJECT {
            match parts[1].split_once("--") {
                Some((source, group)) => out.push(clear(topics.for_source(source).state(group))),
                None => out.push(clear(topics.state(parts[1]))),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn groups() -> Vec<(String, bool)> {
        [
            ("glass", true),
            ("smoke_alarm", true),
            ("fire", true),
            ("dog_bark", false),
        ]
        .iter()
        .map(|(g, s)| (g.to_string(), *s))
        .collect()
    }

    fn parse(m: &OutMessage) -> Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    fn find<'a>(ms: &'a [OutMessage], topic: &str) -> &'a OutMessage {
        ms.iter()
            .find(|m| m.topic == topic)
            .unwrap_or_else(|| panic!("no {topic}"))
    }

    fn info<'a>(node: &'a str, groups: &'a [(String, bool)], room: &'a str) -> NodeInfo<'a> {
        NodeInfo {
            node_id: node,
            groups,
            sources: &[],
            version: "0.1.0",
            discovery_prefix: DEFAULT_DISCOVERY_PREFIX,
            room,
            expire_after_s: 30,
        }
    }

    fn announce(node: &str) -> Vec<OutMessage> {
        let t = Topics::new("hearken", node).unwrap();
        discovery_messages(&t, &info(node, &groups(), ""))
    }

    fn is_id(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    #[test]
    fn every_config_has_what_ha_requires() {
        let ms = announce("n1");
        assert_eq!(ms.len(), 3 * groups().len() + 3);
        for m in &ms {
            assert!(m.retain, "{}", m.topic);
            assert_eq!(m.qos, 1);
            // <prefix>/<component>/<node_id>/<object_id>/config
            let parts: Vec<&str> = m.topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{}", m.topic);
            assert_eq!(parts[0], "homeassistant");
            assert!(["binary_sensor", "event", "sensor", "button"].contains(&parts[1]));
            assert_eq!(parts[2], "n1");
            assert!(is_id(parts[3]), "{}", m.topic);
            assert_eq!(parts[4], "config");

            let v = parse(m);
            // A button is written to, every other entity is read.
            let topic_key = if parts[1] == "button" {
                "command_topic"
            } else {
                "state_topic"
            };
            for key in ["name", "unique_id", topic_key] {
                assert!(
                    v[key].as_str().is_some_and(|s| !s.is_empty()),
                    "{key} in {v}"
                );
            }
            assert_eq!(v["availability_topic"], "hearken/n1/status");
            assert_eq!(v["payload_available"], "online");
            assert_eq!(v["payload_not_available"], "offline");
            assert_eq!(v["device"]["identifiers"], json!(["hearken_n1"]));
            assert_eq!(v["device"]["manufacturer"], "hearken");
            assert_eq!(v["device"]["sw_version"], "0.1.0");
            assert!(v["device"]["name"].is_string() && v["device"]["model"].is_string());
            assert_eq!(v["origin"]["name"], "hearken");
            if parts[1] != "button" {
                assert!(v.get("command_topic").is_none(), "read-only entities");
            }
            if parts[1] == "event" {
                assert_eq!(v["event_types"], json!(["detected"]));
                let tpl = v["value_template"].as_str().unwrap();
                assert!(tpl.contains("'event_type': 'detected'"), "{tpl}");
                assert!(tpl.contains("tojson"), "{tpl}");
            }
        }
        let ids: HashSet<&str> = ms.iter().map(|m| m.topic.as_str()).collect::<HashSet<_>>();
        assert_eq!(ids.len(), ms.len(), "config topics are distinct");
    }

    #[test]
    fn binary_sensors() {
        let ms = announce("n1");
        let expect = [
            ("glass", "sound"),
            ("smoke_alarm", "smoke"),
            ("fire", "smoke"),
            ("dog_bark", "sound"),
        ];
        for (g, class) in expect {
            let v = parse(find(
                &ms,
                &format!("homeassistant/binary_sensor/n1/{g}/config"),
            ));
            assert_eq!(v["device_class"], class, "{g}");
            assert_eq!(v["state_topic"], format!("hearken/n1/{g}/state"));
            assert_eq!(v["payload_on"], "ON");
            assert_eq!(v["payload_off"], "OFF");
            assert_eq!(v["unique_id"], format!("hearken_n1.{g}"));
        }
        let v = parse(find(
            &ms,
            "homeassistant/binary_sensor/n1/smoke_alarm/config",
        ));
        assert_eq!(v["name"], "Smoke alarm");
        assert_eq!(device_class("door_knock"), "sound");
        assert_eq!(device_class("scream"), "sound");
        assert_eq!(device_class("gunshot"), "sound");
    }

    #[test]
    fn event_entities() {
        let ms = announce("n1");
        let v = parse(find(&ms, "homeassistant/event/n1/glass/config"));
        assert_eq!(v["state_topic"], "hearken/n1/event/glass");
        assert_eq!(v["unique_id"], "hearken_n1.glass.event");
        assert_eq!(v["name"], "Glass", "the entity's kind already says event");
        assert_eq!(
            v["value_template"],
            "{% if value_json.state == 'start' %}{{ {'event_type': 'detected', \
             'id': value_json.id, 'room': value_json.room, 'peak_score': \
             value_json.peak_score, 'dbfs': value_json.dbfs, 'labels': \
             value_json.labels} | tojson }}{% endif %}"
        );
    }

    #[test]
    fn false_alarm_buttons() {
        let ms = announce("n1");
        for (g, _) in groups() {
            let v = parse(find(&ms, &format!("homeassistant/button/n1/{g}/config")));
            assert_eq!(v["command_topic"], format!("hearken/n1/{g}/feedback"));
            assert_eq!(v["payload_press"], "false_alarm");
            assert_eq!(v["unique_id"], format!("hearken_n1.{g}.false_alarm"));
            assert!(v.get("state_topic").is_none());
        }
        let v = parse(find(&ms, "homeassistant/button/n1/smoke_alarm/config"));
        assert_eq!(v["name"], "Smoke alarm: false alarm");
        // What the button sends is what the publisher takes as a verdict.
        let t = Topics::new("hearken", "n1").unwrap();
        let f = crate::publish::feedback::parse(
            &t,
            v["command_topic"].as_str().unwrap(),
            v["payload_press"].as_str().unwrap().as_bytes(),
            &groups(),
        )
        .unwrap();
        assert_eq!(
            (f.group.as_str(), f.real, f.event_id),
            ("smoke_alarm", false, None)
        );
    }

    #[test]
    fn sensors() {
        let ms = announce("n1");
        let top = parse(find(&ms, "homeassistant/sensor/n1/top/config"));
        assert_eq!(top["state_topic"], "hearken/n1/top");
        assert_eq!(top["json_attributes_topic"], "hearken/n1/top");
        assert!(top["value_template"]
            .as_str()
            .unwrap()
            .contains("value_json.top[0].label"));
        assert!(
            top.get("state_class").is_none(),
            "a label is not a measurement"
        );
        let loud = parse(find(&ms, "homeassistant/sensor/n1/loudness/config"));
        assert_eq!(loud["state_topic"], "hearken/n1/top");
        assert_eq!(loud["value_template"], "{{ value_json.dbfs }}");
        assert_eq!(loud["unit_of_measurement"], "dBFS");
        assert_eq!(loud["state_class"], "measurement");
        assert!(loud.get("device_class").is_none());
        for v in [&top, &loud] {
            assert_eq!(v["entity_category"], "diagnostic");
            // A stale level from an earlier run must not linger.
            assert_eq!(v["expire_after"], 30);
        }
    }

    #[test]
    fn problem_sensor_and_device() {
        let ms = announce("n1");
        let p = parse(find(
            &ms,
            "homeassistant/binary_sensor/n1/node-problem/config",
        ));
        assert_eq!(p["device_class"], "problem");
        assert_eq!(p["state_topic"], "hearken/n1/problem");
        assert_eq!(p["json_attributes_topic"], "hearken/n1/problem");
        assert_eq!(p["value_template"], "{{ value_json.state }}");
        assert_eq!(p["entity_category"], "diagnostic");
        assert_eq!(p["device"]["name"], "Hearken n1");
        assert!(p["device"].get("suggested_area").is_none());
        let t = Topics::new("hearken", "n1").unwrap();
        let g = groups();
        for m in discovery_messages(&t, &info("n1", &g, "Kitchen")) {
            assert_eq!(parse(&m)["device"]["suggested_area"], "Kitchen");
        }
    }

    #[test]
    fn unique_ids_never_collide() {
        // A group named like a sensor, and node/group splits that would collide
        // with `_` as the only separator.
        let gs: Vec<(String, bool)> = ["top", "loudness", "problem", "b_c", "glass", "glass_event"]
            .iter()
            .map(|g| (g.to_string(), false))
            .collect();
        let mut seen = HashSet::new();
        for node in ["a", "a_b"] {
            let t = Topics::new("hearken", node).unwrap();
            let mut gs = gs.clone();
            if node == "a_b" {
                gs.push(("c".into(), false));
            }
            for m in discovery_messages(&t, &info(node, &gs, "")) {
                let id = parse(&m)["unique_id"].as_str().unwrap().to_string();
                assert!(seen.insert(id.clone()), "duplicate unique_id {id}");
            }
        }
    }

    #[test]
    fn odd_node_id_is_sanitised_in_discovery() {
        // Topics reject such ids; discovery ids never carry characters HA refuses.
        let t = Topics::new("hearken", "n1").unwrap();
        let g = groups();
        let ms = discovery_messages(&t, &info("kitchen pi/2", &g, ""));
        for m in &ms {
            let node = m.topic.split('/').nth(2).unwrap();
            assert_eq!(node, "kitchen_pi_2", "{}", m.topic);
        }
        assert_eq!(
            config_topic("homeassistant", "sensor", "a+b", "c#"),
            "homeassistant/sensor/a_b/c_/config"
        );
    }

    #[test]
    fn removal() {
        let t = Topics::new("hearken", "n1").unwrap();
        let ms = removal_messages(&t, "n1", &["dog_bark".to_string()], "homeassistant");
        let topics: Vec<&str> = ms.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/n1/dog_bark/config",
                "homeassistant/event/n1/dog_bark/config",
                "homeassistant/button/n1/dog_bark/config",
                "hearken/n1/dog_bark/state",
            ]
        );
        for m in &ms {
            assert!(m.payload.is_empty());
            assert!(m.retain);
        }
        // The removal topics are exactly the ones the announcement used.
        let announced = announce("n1");
        for m in &ms[..3] {
            assert!(announced.iter().any(|a| a.topic == m.topic));
        }
    }

    #[test]
    fn stale_configs_are_cleared() {
        let current = announce("n1");
        let seen = vec![
            "homeassistant/binary_sensor/n1/glass/config".to_string(),
            "homeassistant/binary_sensor/n1/old_group/config".to_string(),
            "homeassistant/event/n1/old_group/config".to_string(),
        ];
        let ms = stale_configs(&seen, &current);
        let topics: Vec<&str> = ms.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, [seen[1].as_str(), seen[2].as_str()]);
        assert!(ms.iter().all(|m| m.payload.is_empty() && m.retain));
        assert_eq!(
            config_filter("homeassistant", "n1"),
            "homeassistant/+/n1/+/config"
        );
    }

    #[test]
    fn a_removed_groups_sensor_and_state_are_cleared_one_config_at_a_time() {
        let current = announce("n1");
        let t = Topics::new("hearken", "n1").unwrap();
        assert!(
            stale_config_removal(&t, "homeassistant/binary_sensor/n1/glass/config", &current)
                .is_empty()
        );
        let m = stale_config_removal(&t, "homeassistant/binary_sensor/n1/old/config", &current);
        let topics: Vec<&str> = m.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/n1/old/config",
                "hearken/n1/old/state"
            ]
        );
        assert!(m.iter().all(|m| m.payload.is_empty() && m.retain));
        let m = stale_config_removal(&t, "homeassistant/event/n1/old/config", &current);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn ha_birth() {
        assert_eq!(ha_status_topic("homeassistant"), "homeassistant/status");
        assert!(is_ha_birth(
            "homeassistant",
            "homeassistant/status",
            b"online"
        ));
        assert!(!is_ha_birth(
            "homeassistant",
            "homeassistant/status",
            b"offline"
        ));
        assert!(!is_ha_birth("homeassistant", "other/status", b"online"));
    }

    #[test]
    fn each_source_is_a_device_via_the_node() {
        let t = Topics::new("hearken", "n1").unwrap();
        let sources = vec![
            SourceInfo {
                name: "kitchen".into(),
                room: "Kitchen".into(),
                groups: groups(),
            },
            SourceInfo {
                name: "hall".into(),
                room: String::new(),
                groups: vec![("glass".into(), true)],
            },
        ];
        let mut i = info("n1", &[], "House");
        i.sources = &sources;
        let ms = discovery_messages(&t, &i);
        // 4 groups × 3 + 2 sensors, 1 × 3 + 2, and the node's problem sensor.
        assert_eq!(ms.len(), 14 + 5 + 1);
        let ids: HashSet<String> = ms
            .iter()
            .map(|m| parse(m)["unique_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), ms.len(), "unique ids are distinct");
        let k = parse(find(
            &ms,
            "homeassistant/binary_sensor/n1/kitchen--glass/config",
        ));
        assert_eq!(k["state_topic"], "hearken/n1/kitchen/glass/state");
        assert_eq!(k["device"]["identifiers"], json!(["hearken_n1_kitchen"]));
        assert_eq!(k["device"]["via_device"], "hearken_n1");
        assert_eq!(k["device"]["suggested_area"], "Kitchen");
        assert_eq!(k["availability_mode"], "all");
        assert_eq!(k["availability"][0]["topic"], "hearken/n1/status");
        assert_eq!(k["availability"][1]["topic"], "hearken/n1/kitchen/status");
        assert!(k.get("availability_topic").is_none());
        let h = parse(find(&ms, "homeassistant/sensor/n1/hall--top/config"));
        assert_eq!(h["state_topic"], "hearken/n1/hall/top");
        assert!(h["device"].get("suggested_area").is_none());
        let b = parse(find(&ms, "homeassistant/button/n1/hall--glass/config"));
        assert_eq!(b["command_topic"], "hearken/n1/hall/glass/feedback");
        let p = parse(find(
            &ms,
            "homeassistant/binary_sensor/n1/node-problem/config",
        ));
        assert_eq!(p["device"]["identifiers"], json!(["hearken_n1"]));
        assert!(
            !ms.iter()
                .any(|m| m.topic == "homeassistant/binary_sensor/n1/glass/config"),
            "no node-level group entities"
        );
        // A source's stale binary sensor clears its own state topic.
        let gone = stale_config_removal(
            &t,
            "homeassistant/binary_sensor/n1/attic--glass/config",
            &ms,
        );
        let topics: Vec<&str> = gone.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            vec![
                "homeassistant/binary_sensor/n1/attic--glass/config",
                "hearken/n1/attic/glass/state"
            ]
        );
    }
}
