//! The publisher thread: events → durable outbox → MQTT broker (rumqttc).
//!
//! Every event message is written to the [`Outbox`] before it is sent and removed
//! only when the broker acknowledges it (PUBACK at QoS 1, PUBCOMP at QoS 2), so a
//! broker outage or a restart loses nothing (QoS 1: a message may arrive twice,
//! never zero times; QoS 0 has no acknowledgement, so a message is removed once
//! written to the connection). Outbox messages go out one at a time, oldest first.
//! On connect the thread publishes availability (`online`, retained; the Last Will
//! says `offline`), the Home Assistant discovery configs, the true state of every
//! group, the problem state and the latest diagnostic report, before anything from
//! the outbox, and announces them again when Home Assistant comes online. Group
//! states are not queued (they are a current value); event messages are. At start
//! it closes, with an `end` marked `interrupted`, every event a dead process left
//! open ([`super::open_events`]). It also subscribes to this node's
//! retained discovery configs and clears those of groups no longer configured, so
//! Home Assistant removes their entities, and to the groups' feedback topics, whose
//! verdicts ("that was a false alarm") it hands to a [`FeedbackSink`].
//!
//! Each connection gets a fresh rumqttc client: after a failure nothing is resent
//! by rumqttc itself, only by the outbox, which keeps PUBACK bookkeeping exact.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, unbounded, Receiver, Sender};
use rumqttc::{
    Client, ConnectionError, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};

use super::discovery::{
    config_filter, discovery_messages, ha_status_topic, is_ha_birth, stale_config_removal,
    NodeInfo, SourceInfo,
};
use super::feedback::{self, FeedbackSink};
use super::open_events::{interrupted_end, open_in_outbox, source_name, OpenEvents};
use super::outbox::Outbox;
use super::tls::{client_config, TlsFiles};
use super::topics::Topics;
use super::{
    availability_message, event_message, problem_message, state_message, top_message, OutMessage,
    RateLimit, TopReport, DEFAULT_TOP_INTERVAL_S, OFFLINE,
};
use crate::detect::Event;

/// How often held messages are retried while the disk refuses the outbox.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Where and how to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive, seconds.
    pub keepalive_s: u64,
    /// Topic prefix (`hearken`).
    pub prefix: String,
    /// Home Assistant discovery prefix (`homeassistant`).
    pub discovery_prefix: String,
    /// Node id.
    pub node_id: String,
    /// Directory of the outbox.
    pub state_dir: PathBuf,
    /// Outbox size bound, bytes.
    pub outbox_max_bytes: u64,
    /// Enabled groups with their safety flag, for discovery, on the node's own
    /// topics (the single `[audio] source`; empty with `[[sources]]`).
    pub groups: Vec<(String, bool)>,
    /// The `[[sources]]`: each publishes under `<base>/<source>` and is a Home
    /// Assistant device of its own.
    pub sources: Vec<SourceInfo>,
    /// Model name, for the device description.
    pub model: String,
    /// QoS of event and state messages (0, 1 or 2).
    pub qos: u8,
    /// TLS, when the broker wants it (`mqtts://`).
    pub tls: Option<TlsFiles>,
    /// `[node] room`: the Home Assistant device's suggested area ("" for none).
    pub room: String,
    /// Seconds without a `top` report after which Home Assistant shows the
    /// top-sound and loudness sensors as unavailable.
    pub top_expire_s: u64,
}

/// A source's name, its topics and its groups.
type Scope<'a> = (String, Topics, &'a [(String, bool)]);

impl MqttSettings {
    /// The topics of `source`'s events, states and reports: its own for a source of
    /// `[[sources]]`, else the node's.
    pub fn topics_for(&self, node: &Topics, source: &str) -> Topics {
        if self.sources.iter().any(|s| s.name == source) {
            node.for_source(source)
        } else {
            node.clone()
        }
    }

    /// Every set of topics that carries groups, with the source's name and groups:
    /// the node's own (the single source), then each source's.
    fn scopes(&self, node: &Topics) -> Vec<Scope<'_>> {
        let mut out = Vec::new();
        if self.sources.is_empty() || !self.groups.is_empty() {
            out.push((
                crate::audio::config::SINGLE_SOURCE_NAME.to_string(),
                node.clone(),
                self.groups.as_slice(),
            ));
        }
        for s in &self.sources {
            out.push((
                s.name.clone(),
                node.for_source(&s.name),
                s.groups.as_slice(),
            ));
        }
        out
    }

    /// `host:port`, with `mqtts://` in front when TLS is on (for log lines).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

impl MqttSettings {
    /// Settings for `mqtt://[user:pass@]host[:port]` (port 1883 by default) or
    /// `mqtts://…` (TLS with the system's trusted roots, port 8883 by default),
    /// with defaults for the rest.
    pub fn from_url(url: &str, node_id: &str, state_dir: PathBuf) -> Result<MqttSettings> {
        let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("mqtt://") {
            (r, None, 1883)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (r, Some(TlsFiles::default()), 8883)
        } else {
            bail!("--mqtt {url}: expected mqtt://[user:pass@]host[:port] or mqtts://…");
        };
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("--mqtt {url}: bad port {p:?}"))?,
            ),
            None => (hostport.to_string(), default_port),
        };
        if host.is_empty() {
            bail!("--mqtt {url}: no host");
        }
        let (username, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        Ok(MqttSettings {
            host,
            port,
            username,
            password,
            client_id: format!("hearken-{node_id}"),
            keepalive_s: 30,
            prefix: super::topics::DEFAULT_PREFIX.to_string(),
            discovery_prefix: super::discovery::DEFAULT_DISCOVERY_PREFIX.to_string(),
            node_id: node_id.to_string(),
            state_dir,
            outbox_max_bytes: 16 << 20,
            groups: Vec::new(),
            sources: Vec::new(),
            model: String::new(),
            qos: 1,
            tls,
            room: String::new(),
            top_expire_s: 6 * DEFAULT_TOP_INTERVAL_S as u64,
        })
    }
}

enum Net {
    Connected,
    Outgoing(u16),
    PubAck(u16),
    PubComp(u16),
    HaOnline,
    /// A retained discovery config of this node exists on the broker.
    Config(String),
    /// A message on one of this node's feedback topics: topic, payload.
    Feedback(String, Vec<u8>),
    Down(String),
}

enum Kind {
    Outbox(u64),
    Other,
}

struct Conn {
    client: Client,
    net: Receiver<Net>,
    connected: bool,
    kinds: VecDeque<Kind>,
    pkids: HashMap<u16, u64>,
    in_flight: Option<u64>,
}

enum Item {
    Event(Box<Event>),
    Top(String, TopReport),
    Listening(String, bool),
}

/// The running publisher.
pub struct Publisher {
    tx: Option<Sender<Item>>,
    handle: Option<JoinHandle<Result<()>>>,
    stats: Arc<PublisherStats>,
}

/// What the publisher thread reports about itself (for `/status` and `/metrics`);
/// refreshed at least every 100 ms.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Connected to the broker now.
    pub connected: std::sync::atomic::AtomicBool,
    /// Messages waiting in the outbox.
    pub outbox_depth: std::sync::atomic::AtomicU64,
    /// The broker's address, `host:port`.
    pub endpoint: std::sync::Mutex<String>,
}

/// What the publisher does with verdicts received on the feedback topics.
fn ignore_feedback() -> FeedbackSink {
    Arc::new(|f: feedback::Feedback| {
        tracing::warn!(
            group = %f.group,
            "a verdict on a {} event arrived, but the home store is off ([learning] store = false): not kept",
            f.group
        )
    })
}

/// What the events found open in the state directory mean for a new publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// The process starts: events left open were left by one that died. They are
    /// closed with an interrupted `end`.
    AfterExit,
    /// The publisher is replaced in a running process (a reload): its open events
    /// are still open in the pipeline, and their ends will come.
    Handover,
}

impl Publisher {
    /// Opens the outbox, reads the TLS files, and starts the publisher thread, at
    /// process start: any event the previous process left open (it crashed or was
    /// killed while the event lasted) is closed first with an `end` marked
    /// `interrupted`. A broker that is down is not an error: events wait in the
    /// outbox and the thread retries with backoff. Unreadable TLS files are.
    /// Verdicts received on the feedback topics go to `feedback` (without one they
    /// are logged as not kept).
    pub fn start(s: MqttSettings, feedback: Option<FeedbackSink>) -> Result<Publisher> {
        Publisher::launch(s, Resume::AfterExit, feedback)
    }

    /// Starts a publisher that replaces one stopped in this process (new MQTT
    /// settings on reload): events open in the pipeline stay open.
    pub fn take_over(s: MqttSettings, feedback: Option<FeedbackSink>) -> Result<Publisher> {
        Publisher::launch(s, Resume::Handover, feedback)
    }

    fn launch(
        s: MqttSettings,
        resume: Resume,
        feedback: Option<FeedbackSink>,
    ) -> Result<Publisher> {
        if s.qos > 2 {
            bail!("MQTT QoS must be 0, 1 or 2, not {}", s.qos);
        }
        let topics = Topics::new(&s.prefix, &s.node_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tls = match &s.tls {
            Some(files) => Some(Arc::new(
                client_config(files).context("[mqtt] TLS settings")?,
            )),
            None => None,
        };
        let mut outbox = Outbox::open(&s.state_dir.join("outbox"), s.outbox_max_bytes)
            .with_context(|| format!("opening the outbox in {}", s.state_dir.display()))?;
        // Group states are published from the truth on every connect; ones queued
        // by older versions would only replay stale values after it.
        let stale: Vec<u64> = outbox
            .pending()
            .filter(|e| {
                e.topic.starts_with(&format!("{}/", topics.base())) && e.topic.ends_with("/state")
            })
            .map(|e| e.seq)
            .collect();
        for seq in stale {
            let _ = outbox.ack(seq);
        }
        let (mut journal, mut open) = OpenEvents::load(&s.state_dir);
        for e in open_in_outbox(&topics, outbox.pending()) {
            if !open.iter().any(|o| o.id == e.id) {
                open.push(e);
            }
        }
        match resume {
            Resume::AfterExit => close_interrupted(&s, &topics, &mut outbox, &open),
            Resume::Handover => {
                for e in &open {
                    if let Err(err) = journal.record(e) {
                        tracing::warn!("{err:#}");
                    }
                }
            }
        }
        if resume == Resume::AfterExit {
            // The file now says nothing is open; a failure leaves the old one, whose
            // events the next start closes again (the same ids: harmless).
            if let Err(err) = journal.save() {
                tracing::warn!("{err:#}");
            }
        }
        let (tx, rx) = unbounded();
        let stats = Arc::new(PublisherStats::default());
        if let Ok(mut e) = stats.endpoint.lock() {
            *e = s.endpoint();
        }
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("hearken-mqtt".into())
            .spawn(move || {
                let feedback = feedback.unwrap_or_else(ignore_feedback);
                run(s, tls, topics, outbox, journal, rx, feedback, thread_stats)
            })?;
        Ok(Publisher {
            tx: Some(tx),
            handle: Some(handle),
            stats,
        })
    }

    /// The publisher's own report: connected or not, outbox depth.
    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Queues an event for publishing.
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Item::Event(Box::new(e)));
        }
    }

    /// Offers a diagnostic report for `<base>/top`; sent at most every
    /// [`DEFAULT_TOP_INTERVAL_S`] while connected, never queued.
    pub fn send_top(&self, source: &str, r: TopReport) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Item::Top(source.to_string(), r));
        }
    }

    /// Says whether `source` can hear: while its audio device is lost, its
    /// availability topic (the node's for the single source) says `offline` (Home
    /// Assistant shows its entities as unavailable, which automations can act on),
    /// and `online` again once audio flows.
    pub fn set_listening(&self, source: &str, ok: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Item::Listening(source.to_string(), ok));
        }
    }

    /// Flushes what it can (a few seconds at most), publishes `offline` and
    /// disconnects. Unsent events stay in the outbox for the next start.
    pub fn shutdown(mut self) -> Result<()> {
        drop(self.tx.take());
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the MQTT thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// Queues an interrupted `end` for each event a dead process left open.
fn close_interrupted(s: &MqttSettings, topics: &Topics, outbox: &mut Outbox, open: &[Event]) {
    let now = crate::detect::rfc3339(std::time::SystemTime::now());
    for start in open {
        tracing::warn!(
            group = %start.group,
            event_id = %start.id,
            "the {} event {} (started {}) was still open when hearken last stopped without closing it; publishing its end, marked interrupted",
            start.group,
            start.id,
            start.started_at
        );
        let t = s.topics_for(topics, source_name(start));
        let m = event_message(&t, &interrupted_end(start, &now), s.qos);
        if let Err(e) = outbox.push(&m.topic, &m.payload, m.qos, m.retain) {
            tracing::error!("cannot queue the interrupted end of {}: {e:#}", start.id);
        }
    }
}

fn connect(s: &MqttSettings, tls: Option<&Arc<rustls::ClientConfig>>, topics: &Topics) -> Conn {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    if let Some(t) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            t.clone(),
        )));
    }
    opts.set_keep_alive(Duration::from_secs(s.keepalive_s.max(5)));
    opts.set_clean_session(true);
    opts.set_last_will(LastWill::new(
        topics.status(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(u) = &s.username {
        opts.set_credentials(u, s.password.clone().unwrap_or_default());
    }
    let (client, mut connection) = Client::new(opts, 512);
    let (ntx, nrx) = unbounded();
    let dp = s.discovery_prefix.clone();
    let config_prefix = format!("{dp}/");
    let scopes: Vec<Topics> = s.scopes(topics).into_iter().map(|(_, t, _)| t).collect();
    let tls_on = tls.is_some();
    std::thread::Builder::new()
        .name("hearken-mqtt-net".into())
        .spawn(move || {
            for ev in connection.iter() {
                let msg = match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => Net::Connected,
                    Ok(MqttEvent::Incoming(Packet::PubAck(a))) => Net::PubAck(a.pkid),
                    Ok(MqttEvent::Incoming(Packet::PubComp(a))) => Net::PubComp(a.pkid),
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if is_ha_birth(&dp, &p.topic, &p.payload) {
                            Net::HaOnline
                        } else if scopes.iter().any(|t| feedback::feedback_group(t, &p.topic).is_some()) {
                            Net::Feedback(p.topic.clone(), p.payload.to_vec())
                        } else if p.retain
                            && !p.payload.is_empty()
                            && p.topic.starts_with(&config_prefix)
                        {
                            Net::Config(p.topic.clone())
                        } else {
                            continue;
                        }
                    }
                    Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => Net::Outgoing(pkid),
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        let _ = ntx.send(Net::Down(format!(
                            "the broker refused the connection ({code:?}): check the user name and password"
                        )));
                        break;
                    }
                    Err(e @ ConnectionError::Tls(_)) => {
                        let _ = ntx.send(Net::Down(format!(
                            "{e} (check [mqtt] ca_file, client_cert_file and the broker's host name)"
                        )));
                        break;
                    }
                    Err(ConnectionError::Io(e)) if tls_on && e.kind() == std::io::ErrorKind::InvalidData => {
                        let _ = ntx.send(Net::Down(format!(
                            "TLS: {e} (check [mqtt] ca_file, client_cert_file and the broker's host name)"
                        )));
                        break;
                    }
                    Err(e) => {
                        let _ = ntx.send(Net::Down(e.to_string()));
                        break;
                    }
                };
                if ntx.send(msg).is_err() {
                    break;
                }
            }
        })
        .expect("spawning the MQTT network thread");
    Conn {
        client,
        net: nrx,
        connected: false,
        kinds: VecDeque::new(),
        pkids: HashMap::new(),
        in_flight: None,
    }
}

fn publish(c: &mut Conn, m: &OutMessage, kind: Kind) -> bool {
    let qos = match m.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    if c.client
        .try_publish(&m.topic, qos, m.retain, m.payload.clone())
        .is_err()
    {
        return false;
    }
    c.kinds.push_back(kind);
    true
}

fn node_info(s: &MqttSettings) -> NodeInfo<'_> {
    NodeInfo {
        node_id: &s.node_id,
        groups: &s.groups,
        sources: &s.sources,
        version: env!("CARGO_PKG_VERSION"),
        discovery_prefix: &s.discovery_prefix,
        room: &s.room,
        expire_after_s: s.top_expire_s,
    }
}

/// What a (re)connection publishes before anything from the outbox: availability,
/// the discovery configs, the true state of every group (so no entity is unknown
/// and no `ON` retained by a dead process survives), the problem state, and the
/// latest diagnostic report.
struct Announce<'a> {
    listening: &'a HashMap<String, bool>,
    journal: &'a OpenEvents,
    problem: Option<&'a str>,
    top: &'a HashMap<String, TopReport>,
}

fn announce(c: &mut Conn, s: &MqttSettings, topics: &Topics, a: &Announce<'_>) {
    let hears = |source: &str| a.listening.get(source).copied().unwrap_or(true);
    // With [[sources]] the node itself is online while it runs; each source says
    // whether it hears.
    let node_ok = !s.sources.is_empty() || hears(crate::audio::config::SINGLE_SOURCE_NAME);
    publish(c, &availability_message(topics, node_ok), Kind::Other);
    for m in discovery_messages(topics, &node_info(s)) {
        publish(c, &m, Kind::Other);
    }
    for (source, t, groups) in s.scopes(topics) {
        if t.source().is_some() {
            publish(c, &availability_message(&t, hears(&source)), Kind::Other);
        }
        for (group, _) in groups {
            let on = a.journal.is_open(&source, group);
            publish(c, &state_message(&t, group, on, s.qos), Kind::Other);
        }
        if let Some(r) = a.top.get(&source) {
            publish(c, &top_message(&t, r), Kind::Other);
        }
    }
    publish(c, &problem_message(topics, a.problem), Kind::Other);
}

/// Sends the oldest outbox message when nothing of the outbox is in flight.
fn pump(c: &mut Conn, outbox: &Outbox) {
    if !c.connected || c.in_flight.is_some() {
        return;
    }
    if let Some(e) = outbox.front() {
        let m = OutMessage {
            topic: e.topic.clone(),
            payload: e.payload.clone(),
            qos: e.qos,
            retain: e.retain,
        };
        let seq = e.seq;
        if publish(c, &m, Kind::Outbox(seq)) {
            c.in_flight = Some(seq);
        }
    }
}

/// The broker has message `seq`: it leaves the outbox, and the next one may go.
/// A mark that cannot be written is logged; delivery goes on regardless (after a
/// restart the message may be sent once more, which QoS 1 allows).
fn acked(c: &mut Conn, outbox: &mut Outbox, seq: u64) {
    if let Err(e) = outbox.ack(seq) {
        tracing::error!("{e:#}");
    }
    if c.in_flight == Some(seq) {
        c.in_flight = None;
    }
}

#[allow(clippy::too_many_arguments)] // the thread's whole state, handed over once
fn run(
    s: MqttSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    topics: Topics,
    mut outbox: Outbox,
    mut journal: OpenEvents,
    rx: Receiver<Item>,
    feedback: FeedbackSink,
    stats: Arc<PublisherStats>,
) -> Result<()> {
    use std::sync::atomic::Ordering;
    let current = discovery_messages(&topics, &node_info(&s));
    let mut conn: Option<Conn> = None;
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut last_state = String::new();
    let mut closing: Option<Instant> = None;
    let started = Instant::now();
    let mut top_limits: HashMap<String, RateLimit> = HashMap::new();
    let mut listening: HashMap<String, bool> = HashMap::new();
    let mut last_top: HashMap<String, TopReport> = HashMap::new();
    // Why the open-events file cannot be written, while it cannot.
    let mut journal_problem: Option<String> = None;
    // The problem state as last published (None: never published on this connection).
    let mut said_problem: Option<Option<String>> = None;
    let mut next_retry = Instant::now() + RETRY_EVERY;
    let say = |state: String, last: &mut String| {
        if *last != state {
            if state.starts_with("unavailable") {
                tracing::warn!(broker = %s.endpoint(), "mqtt {}: {state}", s.endpoint());
            } else {
                tracing::info!(broker = %s.endpoint(), "mqtt {}: {state}", s.endpoint());
            }
            *last = state;
        }
    };
    loop {
        if conn.is_none() && Instant::now() >= retry_at && closing.is_none() {
            conn = Some(connect(&s, tls.as_ref(), &topics));
        }
        let never = crossbeam_channel::never();
        let never_ev: Receiver<Item> = crossbeam_channel::never();
        let net = conn.as_ref().map_or(&never, |c| &c.net);
        let evrx = if closing.is_some() { &never_ev } else { &rx };
        let mut drop_conn = false;
        select! {
            recv(evrx) -> msg => match msg {
                Ok(Item::Event(e)) => {
                    let source = source_name(&e).to_string();
                    let t = s.topics_for(&topics, &source);
                    let m = event_message(&t, &e, s.qos);
                    if let Err(err) = outbox.push(&m.topic, &m.payload, m.qos, m.retain) {
                        tracing::error!(event_id = %e.id, "cannot queue an event message: {err:#}");
                    }
                    match journal.record(&e) {
                        Ok(()) => journal_problem = None,
                        Err(err) => {
                            if journal_problem.is_none() {
                                tracing::error!("{err:#}: an event open now may be shown as on after a crash until hearken starts again");
                            }
                            journal_problem = Some(format!("{err:#}"));
                        }
                    }
                    if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                        let on = journal.is_open(&source, &e.group);
                        publish(c, &state_message(&t, &e.group, on, s.qos), Kind::Other);
                    }
                }
                Ok(Item::Top(source, r)) => {
                    if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                        let limit = top_limits
                            .entry(source.clone())
                            .or_insert_with(|| RateLimit::new(DEFAULT_TOP_INTERVAL_S));
                        if limit.allow(started.elapsed().as_secs_f64()) {
                            let t = s.topics_for(&topics, &source);
                            publish(c, &top_message(&t, &r), Kind::Other);
                        }
                    }
                    last_top.insert(source, r);
                }
                Ok(Item::Listening(source, ok)) => {
                    listening.insert(source.clone(), ok);
                    let t = s.topics_for(&topics, &source);
                    if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                        publish(c, &availability_message(&t, ok), Kind::Other);
                    }
                }
                Err(_) => closing = Some(Instant::now()),
            },
            recv(net) -> msg => match msg {
                Ok(n @ (Net::Connected | Net::HaOnline)) => {
                    if let Some(c) = conn.as_mut() {
                        let fresh = matches!(n, Net::Connected);
                        if fresh {
                            c.connected = true;
                            backoff = Duration::from_millis(500);
                            say("connected".into(), &mut last_state);
                            let _ = c.client.try_subscribe(ha_status_topic(&s.discovery_prefix), QoS::AtLeastOnce);
                            for (_, t, _) in s.scopes(&topics) {
                                let _ = c.client.try_subscribe(t.feedback_filter(), QoS::AtLeastOnce);
                            }
                        }
                        let problem = problem_now(&outbox, &journal_problem);
                        announce(c, &s, &topics, &Announce {
                            listening: &listening,
                            journal: &journal,
                            problem: problem.as_deref(),
                            top: &last_top,
                        });
                        said_problem = Some(problem);
                        if fresh {
                            // Retained configs of this node arrive next: those no
                            // longer announced are cleared (Net::Config).
                            let _ = c.client.try_subscribe(config_filter(&s.discovery_prefix, &s.node_id), QoS::AtLeastOnce);
                        }
                    }
                }
                Ok(Net::Config(topic)) => {
                    if let Some(c) = conn.as_mut() {
                        for m in stale_config_removal(&topics, &topic, &current) {
                            tracing::info!("mqtt: clearing {} (its group is no longer configured)", m.topic);
                            publish(c, &m, Kind::Other);
                        }
                    }
                }
                Ok(Net::Feedback(topic, payload)) => {
                    let scopes = s.scopes(&topics);
                    let scope = scopes
                        .iter()
                        .find(|(_, t, _)| feedback::feedback_group(t, &topic).is_some());
                    if let Some((_, t, groups)) = scope {
                        match feedback::parse(t, &topic, &payload, groups) {
                            Ok(f) => feedback(f),
                            Err(why) => tracing::warn!("{why}"),
                        }
                    }
                }
                Ok(Net::Outgoing(pkid)) => {
                    if let Some(c) = conn.as_mut() {
                        if let Some(Kind::Outbox(seq)) = c.kinds.pop_front() {
                            if s.qos == 0 {
                                // Nothing will acknowledge it: written is done.
                                acked(c, &mut outbox, seq);
                            } else {
                                c.pkids.insert(pkid, seq);
                            }
                        }
                    }
                }
                Ok(Net::PubAck(pkid)) | Ok(Net::PubComp(pkid)) => {
                    if let Some(c) = conn.as_mut() {
                        if let Some(seq) = c.pkids.remove(&pkid) {
                            acked(c, &mut outbox, seq);
                        }
                    }
                }
                Ok(Net::Down(why)) => {
                    say(format!("unavailable ({why}); {} events kept in the outbox, retrying", outbox.len()), &mut last_state);
                    drop_conn = true;
                }
                Err(_) => drop_conn = true,
            },
            default(Duration::from_millis(100)) => {}
        }
        if Instant::now() >= next_retry {
            next_retry = Instant::now() + RETRY_EVERY;
            outbox.retry();
            if journal_problem.is_some() {
                match journal.save() {
                    Ok(()) => journal_problem = None,
                    Err(err) => journal_problem = Some(format!("{err:#}")),
                }
            }
        }
        let problem = problem_now(&outbox, &journal_problem);
        if said_problem.as_ref() != Some(&problem) {
            if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                if problem.is_none() {
                    tracing::info!("the state directory can be written again: problem cleared");
                }
                publish(
                    c,
                    &problem_message(&topics, problem.as_deref()),
                    Kind::Other,
                );
                said_problem = Some(problem);
            }
        }
        if drop_conn {
            said_problem = None;
            conn = None;
            retry_at = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        if let Some(c) = conn.as_mut() {
            pump(c, &outbox);
        }
        stats.connected.store(
            conn.as_ref().is_some_and(|c| c.connected),
            Ordering::Relaxed,
        );
        stats
            .outbox_depth
            .store(outbox.len() as u64, Ordering::Relaxed);
        if let Some(t) = closing {
            // Finish when everything is acknowledged, when the broker is down (no
            // attempt under way), or after a few seconds.
            let flushed = outbox.is_empty() && conn.as_ref().is_some_and(|c| c.connected);
            if flushed || conn.is_none() || t.elapsed() > Duration::from_secs(3) {
                if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                    // A clean disconnect suppresses the Last Will: say offline first
                    // (a source's entities follow the node's availability too).
                    publish(c, &availability_message(&topics, false), Kind::Other);
                    let deadline = Instant::now() + Duration::from_millis(500);
                    while Instant::now() < deadline && !c.kinds.is_empty() {
                        if let Ok(Net::Outgoing(_)) = c.net.recv_timeout(Duration::from_millis(50))
                        {
                            c.kinds.pop_front();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = c.client.disconnect();
                    std::thread::sleep(Duration::from_millis(100));
                }
                if !outbox.is_empty() {
                    tracing::warn!(
                        "mqtt: {} messages stay in the outbox for the next start",
                        outbox.len()
                    );
                }
                stats.connected.store(false, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
}

/// The node's problem, if any: the outbox's, else the open-events file's.
fn problem_now(outbox: &Outbox, journal_problem: &Option<String>) -> Option<String> {
    outbox
        .problem()
        .map(|p| format!("cannot write the outbox ({p}); events are held in memory"))
        .or_else(|| {
            journal_problem
                .as_ref()
                .map(|p| format!("cannot record open events ({p})"))
        })
}
