//! Events that have started and not yet ended, kept on disk so that a crash never
//! leaves Home Assistant believing an alarm is still on.
//!
//! The publisher records every start here and forgets it at its end
//! (`open-events.json` in the state directory, replaced atomically: temp file,
//! fsync, rename). After a crash (`kill -9`, power loss) the next start finds the
//! events the dead process left open and closes each with an `end` marked
//! `interrupted` ([`interrupted_end`]), so the retained state goes back to `OFF`
//! and the event entity sees the end. Starts still waiting in the outbox count too
//! ([`open_in_outbox`]): they may have been queued just before the crash, before
//! this file was written.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use uuid::Uuid;

use super::outbox::OutboxEntry;
use super::topics::Topics;
use crate::detect::{Event, EventState};

/// Name of the file inside the state directory.
pub const FILE: &str = "open-events.json";

/// The open events of this node, in memory and on disk.
#[derive(Debug)]
pub struct OpenEvents {
    path: PathBuf,
    open: BTreeMap<Uuid, Event>,
}

impl OpenEvents {
    /// Reads the events a previous run left open in `state_dir` (none if the file
    /// is missing). A damaged file is moved aside with a warning, not trusted.
    /// The returned journal starts empty: the caller closes the left-over events.
    pub fn load(state_dir: &Path) -> (OpenEvents, Vec<Event>) {
        let path = state_dir.join(FILE);
        let left = match fs::read(&path) {
            Ok(data) => match serde_json::from_slice::<Vec<Event>>(&data) {
                Ok(v) => v,
                Err(e) => {
                    let aside = path.with_extension("json.damaged");
                    let _ = fs::rename(&path, &aside);
                    tracing::warn!(
                        path = %path.display(),
                        "{}: unreadable ({e}); moved to {}: events open before the last crash may stay shown as on until their group's next event",
                        path.display(),
                        aside.display()
                    );
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "{}: cannot read: {e}", path.display());
                Vec::new()
            }
        };
        (
            OpenEvents {
                path,
                open: BTreeMap::new(),
            },
            left,
        )
    }

    /// Notes a start or forgets an end, then writes the file. The change is kept in
    /// memory even when the write fails (the error says why).
    pub fn record(&mut self, e: &Event) -> Result<()> {
        match e.state {
            EventState::Start => {
                self.open.insert(e.id, e.clone());
            }
            EventState::End => {
                if self.open.remove(&e.id).is_none() {
                    return Ok(());
                }
            }
        }
        self.save()
    }

    /// Writes the file (atomically); removes it when nothing is open.
    pub fn save(&self) -> Result<()> {
        if self.open.is_empty() {
            return match fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("{}: cannot remove", self.path.display())),
            };
        }
        let events: Vec<&Event> = self.open.values().collect();
        let json = serde_json::to_vec(&events).expect("events always serialise");
        write_atomic(&self.path, &json)
    }

    /// The groups with an open event.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.open.values().map(|e| e.group.as_str())
    }

    /// True if an event of `group` heard by `source` is open (an event written
    /// before sources had names counts as the single source's).
    pub fn is_open(&self, source: &str, group: &str) -> bool {
        self.open
            .values()
            .any(|e| e.group == group && source_name(e) == source)
    }
}

/// The source of `e`: its `source`, or the single source's name for messages
/// written before sources had names.
pub fn source_name(e: &Event) -> &str {
    if e.source.is_empty() {
        crate::audio::config::SINGLE_SOURCE_NAME
    } else {
        &e.source
    }
}

/// Writes `data` to `path` through a temp file, fsync and rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Start events among the pending outbox messages that have no pending end: events
/// whose start was queued but whose end never was.
pub fn open_in_outbox<'a>(
    topics: &Topics,
    pending: impl Iterator<Item = &'a OutboxEntry>,
) -> Vec<Event> {
    let mut open: BTreeMap<Uuid, Event> = BTreeMap::new();
    // `<base>/event/<group>` or a source's `<base>/<source>/event/<group>`.
    let base = format!("{}/", topics.base());
    let is_event = |topic: &str| {
        topic.strip_prefix(&base).is_some_and(|rest| {
            let levels: Vec<&str> = rest.split('/').collect();
            matches!(levels.as_slice(), ["event", _] | [_, "event", _])
        })
    };
    for m in pending {
        if !is_event(&m.topic) {
            continue;
        }
        let Ok(e) = serde_json::from_slice::<Event>(&m.payload) else {
            continue;
        };
        match e.state {
            EventState::Start => {
                open.insert(e.id, e);
            }
            EventState::End => {
                open.remove(&e.id);
            }
        }
    }
    open.into_values().collect()
}

/// The `end` that closes `start` when the process that raised it died before it
/// ended: `interrupted` is set, the end time is when the start was announced (the
/// last moment the event is known to have lasted), and `ended_at` is `now_rfc3339`,
/// when the closing is published.
pub fn interrupted_end(start: &Event, now_rfc3339: &str) -> Event {
    let mut e = start.clone();
    e.state = EventState::End;
    e.end_s = Some(start.detected_s.max(start.start_s));
    e.ended_at = Some(now_rfc3339.to_string());
    e.interrupted = true;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::messages_for_event;

    fn start(group: &str) -> Event {
        Event {
            id: Uuid::new_v4(),
            group: group.into(),
            state: EventState::Start,
            safety: true,
            start_s: 3.0,
            end_s: None,
            detected_s: 4.5,
            started_at: "2026-01-01T00:00:03Z".into(),
            ended_at: None,
            peak_score: 0.9,
            labels: vec![],
            dbfs: -20.0,
            node: "n".into(),
            room: "".into(),
            source: "default".into(),
            model: "m".into(),
            interrupted: false,
            clip: None,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hearken-open-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn starts_survive_a_crash_and_ends_forget_them() {
        let d = dir("journal");
        let (mut j, left) = OpenEvents::load(&d);
        assert!(left.is_empty());
        let a = start("gunshot");
        let b = start("glass");
        j.record(&a).unwrap();
        j.record(&b).unwrap();
        let mut end = b.clone();
        end.state = EventState::End;
        j.record(&end).unwrap();
        assert!(j.is_open("default", "gunshot") && !j.is_open("default", "glass"));
        drop(j); // as if killed
        let (j, left) = OpenEvents::load(&d);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, a.id);
        assert_eq!(j.groups().count(), 0);
        // Everything ended: no file at all.
        let (mut j, _) = OpenEvents::load(&d);
        j.record(&a).unwrap();
        let mut end = a.clone();
        end.state = EventState::End;
        j.record(&end).unwrap();
        assert!(!d.join(FILE).exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_journal_is_moved_aside() {
        let d = dir("damaged");
        fs::write(d.join(FILE), b"\0\0\0{not json").unwrap();
        let (_, left) = OpenEvents::load(&d);
        assert!(left.is_empty());
        assert!(!d.join(FILE).exists());
        assert!(d.join("open-events.json.damaged").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn outbox_starts_without_ends_are_open() {
        let t = Topics::new("hearken", "n").unwrap();
        let a = start("gunshot");
        let b = start("glass");
        let mut b_end = b.clone();
        b_end.state = EventState::End;
        let mut pending = Vec::new();
        for e in [&a, &b, &b_end] {
            for (i, m) in messages_for_event(&t, e, 1).into_iter().enumerate() {
                pending.push(OutboxEntry {
                    seq: pending.len() as u64 + i as u64 + 1,
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos,
                    retain: m.retain,
                });
            }
        }
        let open = open_in_outbox(&t, pending.iter());
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, a.id);
    }

    #[test]
    fn an_interrupted_end_closes_its_start() {
        let a = start("gunshot");
        let e = interrupted_end(&a, "2026-01-02T00:00:00Z");
        assert_eq!(e.id, a.id);
        assert_eq!(e.state, EventState::End);
        assert!(e.interrupted);
        assert_eq!(e.end_s, Some(4.5));
        assert_eq!(e.ended_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["interrupted"], true);
        assert_eq!(v["state"], "end");
        // Ordinary events do not carry the key at all.
        let v = serde_json::to_value(&a).unwrap();
        assert!(v.get("interrupted").is_none());
    }

    #[test]
    fn sources_keep_their_own_open_events() {
        let node = Topics::new("hearken", "n").unwrap();
        let kitchen = node.for_source("kitchen");
        let mut e = start("glass");
        e.source = "kitchen".into();
        let mut old = start("glass");
        old.source = String::new();
        let pending: Vec<OutboxEntry> = [(&kitchen, &e), (&node, &old)]
            .iter()
            .enumerate()
            .map(|(i, (t, ev))| {
                let m = crate::publish::event_message(t, ev, 1);
                OutboxEntry {
                    seq: i as u64,
                    topic: m.topic,
                    payload: m.payload,
                    qos: 1,
                    retain: false,
                }
            })
            .collect();
        let open = open_in_outbox(&node, pending.iter());
        assert_eq!(open.len(), 2, "a source's starts count too");
        let d = dir("sources");
        let (mut j, _) = OpenEvents::load(&d);
        j.record(&e).unwrap();
        j.record(&old).unwrap();
        assert!(j.is_open("kitchen", "glass"));
        assert!(!j.is_open("hall", "glass"));
        assert!(
            j.is_open("default", "glass"),
            "unnamed events are the single source's"
        );
        let _ = fs::remove_dir_all(&d);
    }
}
