//! The daemon's live board: what the local HTTP API reports (`/status`, `/events`,
//! `/events/stream`, `/metrics`), kept current by the threads that know it.
//!
//! - The inference thread posts every scored window ([`Live::window`]) and times
//!   every model call ([`Live::model_call`]).
//! - The daemon's event loop posts every event start and end ([`Live::event`]) and
//!   each evidence clip's fate ([`Live::clip`]).
//! - The source's and the publisher's own counters are read when asked.
//!
//! Writers take a short lock or bump an atomic; nothing here blocks on a reader, and
//! the audio callback never touches it. Live subscribers (`/events/stream`) get each
//! update through a broadcast channel that drops what a slow reader cannot keep up
//! with. The text formats ([`render_metrics`], the JSON views) are pure functions,
//! unit-tested apart from the threads.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio::source::SourceStats;
use crate::detect::{Event, EventState};
use crate::publish::client::PublisherStats;

/// Upper bounds of the inference-time histogram, seconds.
pub const INFERENCE_BUCKETS_S: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of durations with fixed buckets, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram with `bounds` (ascending upper bounds, seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| s <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus' `le` buckets), the sum in seconds and
    /// the count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&b, c)| {
                acc += c.load(Ordering::Relaxed);
                (b, acc)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound s, observations ≤ it)`, cumulative.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observations, seconds.
    pub sum_s: f64,
    /// Number of observations.
    pub count: u64,
}

/// One event as `/events` shows it: the latest message of the event (its end once it
/// ended), with the clip's fate once known.
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    /// The event message.
    #[serde(flatten)]
    pub event: Event,
}

/// Each group's state and latest score, the latest level and top labels.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Now {
    /// The source that heard it (left out where the source is said otherwise).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Stream time of the latest window, seconds.
    pub t_s: f64,
    /// Loudness of the latest window, dBFS.
    pub dbfs: f32,
    /// Top labels of the latest window (empty when it was gated).
    pub top: Vec<crate::classify::Prediction>,
    /// The latest window was skipped by the loudness gate.
    pub gated: bool,
    /// Each group's latest score and whether its event is open.
    pub groups: Vec<GroupStatus>,
}

/// One group's state in a status report.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    /// Group name.
    pub group: String,
    /// Latest score.
    pub score: f32,
    /// An event of this group is open.
    pub active: bool,
}

/// What `/status` answers.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Always `ok`.
    pub status: &'static str,
    /// Node id.
    pub node: String,
    /// The audio source, as the pipeline describes it.
    pub source: String,
    /// Model name.
    pub model: String,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// The latest window's view.
    #[serde(flatten)]
    pub now: Now,
    /// Events started since the daemon did.
    pub events: u64,
    /// MQTT: `connected`, `disconnected` or `off`.
    pub broker: &'static str,
    /// The broker's address, when MQTT is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_endpoint: Option<String>,
    /// Messages waiting in the outbox.
    pub outbox_depth: u64,
    /// Samples dropped because the capture ring was full.
    pub dropped_samples: u64,
    /// Over/underruns the audio device reported.
    pub xruns: u64,
    /// The audio device is lost and being reopened (any source's).
    pub device_lost: bool,
    /// Every source, with its own latest window.
    pub sources: Vec<SourceView>,
}

/// One source in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// The source, as the pipeline describes it ("" until it has started).
    pub description: String,
    /// Its device is lost and being reopened, or it has not started yet.
    pub device_lost: bool,
    /// Samples dropped because its capture ring was full.
    pub dropped_samples: u64,
    /// Its latest window.
    pub now: Now,
}

/// One source on the board.
struct LiveSource {
    name: String,
    description: String,
    stats: Option<Arc<SourceStats>>,
}

/// Everything `/metrics` reports, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Seconds since start.
    pub uptime_s: f64,
    /// Loudness of the latest window, dBFS.
    pub level_dbfs: f64,
    /// Model calls made.
    pub model_calls: u64,
    /// Windows skipped by the loudness gate.
    pub gated_windows: u64,
    /// Windows scored.
    pub windows: u64,
    /// Time per model call.
    pub inference: Option<HistogramSnapshot>,
    /// Events started, per group (every configured group listed, zeros too).
    pub events: BTreeMap<String, u64>,
    /// Messages waiting in the outbox (absent without MQTT).
    pub outbox_depth: Option<u64>,
    /// Connected to the broker (absent without MQTT).
    pub broker_connected: Option<bool>,
    /// Samples captured.
    pub captured_samples: u64,
    /// Samples dropped because the capture ring was full.
    pub dropped_samples: u64,
    /// Over/underruns the audio device reported.
    pub xruns: u64,
    /// Damaged samples replaced.
    pub replaced_samples: u64,
    /// Evidence clips written.
    pub clips_saved: u64,
    /// Evidence clips not written because speech was heard.
    pub clips_suppressed: u64,
    /// Classification requests served over HTTP, by outcome (`ok`, `error`).
    pub predict_requests: BTreeMap<String, u64>,
}

/// One live update: `status` (a window's [`Now`]), `event` (an [`Event`]) or `clip`
/// (`{"id", "clip"}`), as JSON.
#[derive(Debug, Clone)]
pub struct LiveUpdate {
    /// `status`, `event` or `clip`.
    pub kind: &'static str,
    /// The value, JSON.
    pub json: String,
}

/// The board (see the module doc).
pub struct Live {
    started: Instant,
    node: String,
    model: String,
    sources: Mutex<Vec<LiveSource>>,
    now: Mutex<BTreeMap<String, Now>>,
    events: Mutex<VecDeque<EventView>>,
    events_kept: usize,
    events_by_group: Mutex<BTreeMap<String, u64>>,
    stream: tokio::sync::broadcast::Sender<Arc<LiveUpdate>>,
    inference: Histogram,
    model_calls: AtomicU64,
    gated_windows: AtomicU64,
    windows: AtomicU64,
    clips_saved: AtomicU64,
    clips_suppressed: AtomicU64,
    predict_ok: AtomicU64,
    predict_err: AtomicU64,
    publisher: Mutex<Option<Arc<PublisherStats>>>,
}

impl Live {
    /// A board for node `node` running `model`, keeping the last `events_kept`
    /// events, with `groups` listed (at zero) in the event counts.
    pub fn new(node: &str, model: &str, events_kept: usize, groups: &[&str]) -> Live {
        let (stream, _) = tokio::sync::broadcast::channel(256);
        Live {
            started: Instant::now(),
            node: node.into(),
            model: model.into(),
            sources: Mutex::new(Vec::new()),
            now: Mutex::new(BTreeMap::new()),
            events: Mutex::new(VecDeque::new()),
            events_kept: events_kept.max(1),
            events_by_group: Mutex::new(groups.iter().map(|g| (g.to_string(), 0)).collect()),
            stream,
            inference: Histogram::new(&INFERENCE_BUCKETS_S),
            model_calls: AtomicU64::new(0),
            gated_windows: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            clips_saved: AtomicU64::new(0),
            clips_suppressed: AtomicU64::new(0),
            predict_ok: AtomicU64::new(0),
            predict_err: AtomicU64::new(0),
            publisher: Mutex::new(None),
        }
    }

    /// Lists source `name` (before its pipeline starts: shown as not listening).
    pub fn add_source(&self, name: &str) {
        if let Ok(mut list) = self.sources.lock() {
            if !list.iter().any(|s| s.name == name) {
                list.push(LiveSource {
                    name: name.to_string(),
                    description: String::new(),
                    stats: None,
                });
            }
        }
    }

    /// Source `name` runs: its description and counters.
    pub fn set_source(&self, name: &str, description: &str, stats: Arc<SourceStats>) {
        self.add_source(name);
        if let Ok(mut list) = self.sources.lock() {
            if let Some(s) = list.iter_mut().find(|s| s.name == name) {
                s.description = description.to_string();
                s.stats = Some(stats);
            }
        }
    }

    /// Sums a counter over the sources that run.
    fn source_sum(&self, f: impl Fn(&SourceStats) -> u64) -> u64 {
        self.sources
            .lock()
            .map(|l| l.iter().filter_map(|s| s.stats.as_deref()).map(&f).sum())
            .unwrap_or(0)
    }

    /// The latest window of the first source (the one the page's meter shows).
    fn first_now(&self) -> Now {
        let first = self
            .sources
            .lock()
            .ok()
            .and_then(|l| l.first().map(|s| s.name.clone()));
        let now = self.now.lock().ok();
        first
            .and_then(|f| now.as_ref().and_then(|n| n.get(&f).cloned()))
            .unwrap_or(Now {
                dbfs: crate::scoring::LEVEL_SILENCE,
                ..Now::default()
            })
    }

    /// The publisher whose counters `/status` and `/metrics` read (`None`: MQTT off).
    /// A reload that replaces the publisher calls it again.
    pub fn set_publisher(&self, stats: Option<Arc<PublisherStats>>) {
        if let Ok(mut p) = self.publisher.lock() {
            *p = stats;
        }
    }

    /// Lists `groups` in the event counts (a reload may add some).
    pub fn set_groups(&self, groups: &[&str]) {
        if let Ok(mut m) = self.events_by_group.lock() {
            for g in groups {
                m.entry(g.to_string()).or_insert(0);
            }
        }
    }

    /// A subscription to live updates (a reader that falls more than 256 behind
    /// skips what it missed).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveUpdate>> {
        self.stream.subscribe()
    }

    fn broadcast(&self, kind: &'static str, value: &impl Serialize) {
        if self.stream.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(value) {
            let _ = self.stream.send(Arc::new(LiveUpdate { kind, json }));
        }
    }

    /// One model call took `d`.
    pub fn model_call(&self, d: Duration) {
        self.inference.observe(d);
        self.model_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest window's view (from the inference thread).
    pub fn window(&self, now: Now) {
        self.windows.fetch_add(1, Ordering::Relaxed);
        if now.gated {
            self.gated_windows.fetch_add(1, Ordering::Relaxed);
        }
        self.broadcast("status", &now);
        if let Ok(mut n) = self.now.lock() {
            n.insert(now.source.clone(), now);
        }
    }

    /// An event started or ended: the list keeps one entry per event, its latest
    /// message (a clip decided before the end stays on it).
    pub fn event(&self, e: &Event) {
        if e.state == EventState::Start {
            if let Ok(mut m) = self.events_by_group.lock() {
                *m.entry(e.group.clone()).or_insert(0) += 1;
            }
        }
        if let Ok(mut list) = self.events.lock() {
            if let Some(v) = list.iter_mut().find(|v| v.event.id == e.id) {
                let clip = v.event.clip.take();
                v.event = e.clone();
                v.event.clip = e.clip.clone().or(clip);
            } else {
                list.push_front(EventView { event: e.clone() });
                list.truncate(self.events_kept);
            }
        }
        self.broadcast("event", e);
    }

    /// The fate of event `id`'s evidence clip: `saved` (the file name) or not.
    pub fn clip(&self, id: uuid::Uuid, clip: &str, saved: bool) {
        let counter = if saved {
            &self.clips_saved
        } else {
            &self.clips_suppressed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut list) = self.events.lock() {
            if let Some(v) = list.iter_mut().find(|v| v.event.id == id) {
                v.event.clip = Some(clip.to_string());
            }
        }
        self.broadcast("clip", &serde_json::json!({ "id": id, "clip": clip }));
    }

    /// The clip noted for event `id`, if its fate is known.
    pub fn clip_of(&self, id: uuid::Uuid) -> Option<String> {
        let list = self.events.lock().ok()?;
        list.iter()
            .find(|v| v.event.id == id)
            .and_then(|v| v.event.clip.clone())
    }

    /// A classification request over HTTP ended, well or not.
    pub fn predict_request(&self, ok: bool) {
        let c = if ok {
            &self.predict_ok
        } else {
            &self.predict_err
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The newest `limit` events, newest first.
    pub fn events(&self, limit: usize) -> Vec<EventView> {
        self.events
            .lock()
            .map(|l| l.iter().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    fn publisher(&self) -> Option<Arc<PublisherStats>> {
        self.publisher.lock().ok().and_then(|p| p.clone())
    }

    /// What `/status` answers now.
    pub fn status(&self) -> StatusView {
        let p = self.publisher();
        let load = |a: Option<&AtomicU64>| a.map_or(0, |a| a.load(Ordering::Relaxed));
        let nows = self.now.lock().map(|n| n.clone()).unwrap_or_default();
        let sources: Vec<SourceView> = self
            .sources
            .lock()
            .map(|l| {
                l.iter()
                    .map(|s| SourceView {
                        name: s.name.clone(),
                        description: s.description.clone(),
                        device_lost: s
                            .stats
                            .as_ref()
                            .is_none_or(|st| st.device_lost.load(Ordering::Relaxed)),
                        dropped_samples: s
                            .stats
                            .as_ref()
                            .map_or(0, |st| st.overruns.load(Ordering::Relaxed)),
                        now: nows.get(&s.name).cloned().unwrap_or(Now {
                            source: s.name.clone(),
                            dbfs: crate::scoring::LEVEL_SILENCE,
                            ..Now::default()
                        }),
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatusView {
            status: "ok",
            node: self.node.clone(),
            source: sources
                .first()
                .map(|s| s.description.clone())
                .unwrap_or_default(),
            model: self.model.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            // `source` is the first source's description here.
            now: Now {
                source: String::new(),
                ..self.first_now()
            },
            events: self
                .events_by_group
                .lock()
                .map(|m| m.values().sum())
                .unwrap_or(0),
            broker: match &p {
                None => "off",
                Some(p) if p.connected.load(Ordering::Relaxed) => "connected",
                Some(_) => "disconnected",
            },
            broker_endpoint: p
                .as_ref()
                .and_then(|p| p.endpoint.lock().ok().map(|e| e.clone())),
            outbox_depth: load(p.as_ref().map(|p| &p.outbox_depth)),
            dropped_samples: self.source_sum(|s| s.overruns.load(Ordering::Relaxed)),
            xruns: self.source_sum(|s| s.xruns.load(Ordering::Relaxed)),
            device_lost: sources.iter().any(|s| s.device_lost),
            sources,
        }
    }

    /// What `/metrics` reports now.
    pub fn metrics(&self) -> MetricsSnapshot {
        let p = self.publisher();
        let mut predict = BTreeMap::new();
        predict.insert("ok".into(), self.predict_ok.load(Ordering::Relaxed));
        predict.insert("error".into(), self.predict_err.load(Ordering::Relaxed));
        MetricsSnapshot {
            uptime_s: self.started.elapsed().as_secs_f64(),
            level_dbfs: self.first_now().dbfs as f64,
            model_calls: self.model_calls.load(Ordering::Relaxed),
            gated_windows: self.gated_windows.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            inference: Some(self.inference.snapshot()),
            events: self
                .events_by_group
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            outbox_depth: p.as_ref().map(|p| p.outbox_depth.load(Ordering::Relaxed)),
            broker_connected: p.as_ref().map(|p| p.connected.load(Ordering::Relaxed)),
            captured_samples: self.source_sum(|s| s.samples.load(Ordering::Relaxed)),
            dropped_samples: self.source_sum(|s| s.overruns.load(Ordering::Relaxed)),
            xruns: self.source_sum(|s| s.xruns.load(Ordering::Relaxed)),
            replaced_samples: self.source_sum(|s| s.replaced.load(Ordering::Relaxed)),
            clips_saved: self.clips_saved.load(Ordering::Relaxed),
            clips_suppressed: self.clips_suppressed.load(Ordering::Relaxed),
            predict_requests: predict,
        }
    }
}

/// A label value for the Prometheus text format: `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float in the Prometheus text format (`+Inf`, `-Inf`, `NaN` spelled its way).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// One metric family: `# HELP`, `# TYPE`, then each sample as `name<suffix> value`
/// (the suffix holds `{labels}`, or `_bucket{…}`, `_sum`, `_count`).
fn write_family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (suffix, v) in samples {
        let _ = writeln!(out, "{name}{suffix} {}", number(*v));
    }
}

/// `m` in the Prometheus text exposition format (version 0.0.4): one `# HELP` and
/// `# TYPE` per family, counters named `_total`.
pub fn render_metrics(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        write_family(&mut out, name, kind, help, samples)
    };
    let one = |v: f64| vec![(String::new(), v)];
    family(
        "hearken_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &one(m.uptime_s),
    );
    family(
        "hearken_level_dbfs",
        "gauge",
        "Loudness of the latest analysis window, dBFS.",
        &one(m.level_dbfs),
    );
    family(
        "hearken_model_calls_total",
        "counter",
        "Model calls made.",
        &one(m.model_calls as f64),
    );
    family(
        "hearken_windows_total",
        "counter",
        "Analysis windows scored.",
        &one(m.windows as f64),
    );
    family(
        "hearken_gated_windows_total",
        "counter",
        "Windows skipped by the loudness gate.",
        &one(m.gated_windows as f64),
    );
    if let Some(h) = &m.inference {
        let name = "hearken_inference_seconds";
        let mut samples: Vec<(String, f64)> = h
            .buckets
            .iter()
            .map(|&(le, c)| (format!("_bucket{{le=\"{}\"}}", number(le)), c as f64))
            .collect();
        samples.push(("_bucket{le=\"+Inf\"}".into(), h.count as f64));
        samples.push(("_sum".into(), h.sum_s));
        samples.push(("_count".into(), h.count as f64));
        write_family(
            &mut out,
            name,
            "histogram",
            "Time per model call, seconds.",
            &samples,
        );
    }
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        write_family(&mut out, name, kind, help, samples)
    };
    let events: Vec<(String, f64)> = m
        .events
        .iter()
        .map(|(g, n)| (format!("{{group=\"{}\"}}", label_value(g)), *n as f64))
        .collect();
    family(
        "hearken_events_total",
        "counter",
        "Events started, by group.",
        &events,
    );
    if let Some(d) = m.outbox_depth {
        family(
            "hearken_outbox_depth",
            "gauge",
            "MQTT messages waiting in the outbox.",
            &[(String::new(), d as f64)],
        );
    }
    if let Some(c) = m.broker_connected {
        family(
            "hearken_broker_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            &[(String::new(), if c { 1.0 } else { 0.0 })],
        );
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "hearken_captured_samples_total",
            "Audio samples captured.",
            m.captured_samples,
        ),
        (
            "hearken_dropped_samples_total",
            "Samples dropped because the capture ring was full.",
            m.dropped_samples,
        ),
        (
            "hearken_overruns_total",
            "Buffer over/underruns the audio device reported.",
            m.xruns,
        ),
        (
            "hearken_replaced_samples_total",
            "NaN, infinite or out-of-range samples replaced.",
            m.replaced_samples,
        ),
        (
            "hearken_clips_saved_total",
            "Evidence clips written.",
            m.clips_saved,
        ),
        (
            "hearken_clips_suppressed_total",
            "Evidence clips not written because speech was heard.",
            m.clips_suppressed,
        ),
    ];
    for (name, help, v) in counters {
        family(name, "counter", help, &[(String::new(), v as f64)]);
    }
    let predict: Vec<(String, f64)> = m
        .predict_requests
        .iter()
        .map(|(o, n)| (format!("{{outcome=\"{}\"}}", label_value(o)), *n as f64))
        .collect();
    family(
        "hearken_predict_requests_total",
        "counter",
        "Classification requests served over HTTP, by outcome.",
        &predict,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(group: &str, state: EventState, id: uuid::Uuid) -> Event {
        Event::for_test(group, state, id)
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&INFERENCE_BUCKETS_S);
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0005, 1));
        assert_eq!(s.buckets[1], (0.001, 2));
        assert_eq!(s.buckets.last().unwrap().1, 2, "3 s is above every bound");
        assert_eq!(s.count, 3);
        assert!((s.sum_s - 3.001).abs() < 1e-9);
    }

    #[test]
    fn events_keep_one_entry_per_event_newest_first_with_its_clip() {
        let live = Live::new("n", "m", 2, &["glass", "scream"]);
        let (a, b, c) = (
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
        );
        live.event(&event("glass", EventState::Start, a));
        live.clip(a, "a.flac", true);
        live.event(&event("glass", EventState::End, a));
        live.event(&event("scream", EventState::Start, b));
        let list = live.events(10);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].event.id, b, "newest first");
        assert_eq!(
            list[1].event.state,
            EventState::End,
            "the end replaced the start"
        );
        assert_eq!(
            list[1].event.clip.as_deref(),
            Some("a.flac"),
            "the clip stays"
        );
        live.event(&event("glass", EventState::Start, c));
        assert_eq!(live.events(10).len(), 2, "bounded");
        assert_eq!(live.events(1)[0].event.id, c);
        let m = live.metrics();
        assert_eq!(m.events["glass"], 2);
        assert_eq!(m.events["scream"], 1);
        assert_eq!(m.clips_saved, 1);
        assert_eq!(live.status().events, 3);
        assert_eq!(live.status().broker, "off");
    }

    #[test]
    fn metrics_text_has_one_family_each_with_help_and_type() {
        let live = Live::new("n", "m", 10, &["glass", "smoke \"alarm\""]);
        live.model_call(Duration::from_micros(800));
        live.set_publisher(Some(Arc::new(PublisherStats::default())));
        let text = render_metrics(&live.metrics());
        for needed in [
            "# TYPE hearken_inference_seconds histogram",
            "hearken_inference_seconds_bucket{le=\"0.001\"} 1",
            "hearken_inference_seconds_bucket{le=\"+Inf\"} 1",
            "hearken_inference_seconds_count 1",
            "hearken_model_calls_total 1",
            "hearken_events_total{group=\"glass\"} 0",
            "hearken_events_total{group=\"smoke \\\"alarm\\\"\"} 0",
            "hearken_broker_connected 0",
            "hearken_outbox_depth 0",
            "hearken_dropped_samples_total 0",
            "hearken_overruns_total 0",
        ] {
            assert!(text.contains(needed), "{needed} missing in\n{text}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a family twice");
    }
}
