//! The publisher thread: events → durable outbox → MQTT broker (rumqttc).
//!
//! Every event message is written to the [`Outbox`] before it is sent and removed
//! only when the broker's PUBACK arrives, so a broker outage or a restart loses
//! nothing (QoS 1: a message may arrive twice, never zero times). Outbox messages go
//! out one at a time, oldest first. On connect the thread publishes availability
//! (`online`, retained; the Last Will says `offline`) and the Home Assistant
//! discovery configs, and announces them again when Home Assistant comes online.
//!
//! Each connection gets a fresh rumqttc client: after a failure nothing is resent
//! by rumqttc itself, only by the outbox, which keeps PUBACK bookkeeping exact.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, unbounded, Receiver, Sender};
use rumqttc::{
    Client, ConnectionError, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS,
};

use super::discovery::{discovery_messages, ha_status_topic, is_ha_birth};
use super::outbox::Outbox;
use super::topics::Topics;
use super::{
    availability_message, messages_for_event, top_message, OutMessage, RateLimit, TopReport,
    DEFAULT_TOP_INTERVAL_S, OFFLINE,
};
use crate::detect::Event;

/// Where and how to publish.
#[derive(Debug, Clone)]
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
    /// Enabled groups with their safety flag, for discovery.
    pub groups: Vec<(String, bool)>,
    /// Model name, for the device description.
    pub model: String,
}

impl MqttSettings {
    /// Settings for `mqtt://[user:pass@]host[:port]` with defaults for the rest.
    pub fn from_url(url: &str, node_id: &str, state_dir: PathBuf) -> Result<MqttSettings> {
        let Some(rest) = url.strip_prefix("mqtt://") else {
            if url.starts_with("mqtts://") {
                bail!("--mqtt {url}: TLS (mqtts://) is not supported yet; use mqtt://");
            }
            bail!("--mqtt {url}: expected mqtt://[user:pass@]host[:port]");
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
            None => (hostport.to_string(), 1883),
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
            model: String::new(),
        })
    }
}

enum Net {
    Connected,
    Outgoing(u16),
    PubAck(u16),
    HaOnline,
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
    Event(Event),
    Top(TopReport),
}

/// The running publisher.
pub struct Publisher {
    tx: Option<Sender<Item>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Publisher {
    /// Opens the outbox and starts the publisher thread. A broker that is down is
    /// not an error: events wait in the outbox and the thread retries with backoff.
    pub fn start(s: MqttSettings) -> Result<Publisher> {
        let topics = Topics::new(&s.prefix, &s.node_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let outbox = Outbox::open(&s.state_dir.join("outbox"), s.outbox_max_bytes)
            .with_context(|| format!("opening the outbox in {}", s.state_dir.display()))?;
        let (tx, rx) = unbounded();
        let handle = std::thread::Builder::new()
            .name("hearken-mqtt".into())
            .spawn(move || run(s, topics, outbox, rx))?;
        Ok(Publisher {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues an event for publishing.
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Item::Event(e));
        }
    }

    /// Offers a diagnostic report for `<base>/top`; sent at most every
    /// [`DEFAULT_TOP_INTERVAL_S`] while connected, never queued.
    pub fn send_top(&self, r: TopReport) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Item::Top(r));
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

fn connect(s: &MqttSettings, topics: &Topics) -> Conn {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
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
    std::thread::Builder::new()
        .name("hearken-mqtt-net".into())
        .spawn(move || {
            for ev in connection.iter() {
                let msg = match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => Net::Connected,
                    Ok(MqttEvent::Incoming(Packet::PubAck(a))) => Net::PubAck(a.pkid),
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if is_ha_birth(&dp, &p.topic, &p.payload) {
                            Net::HaOnline
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

fn announce(c: &mut Conn, s: &MqttSettings, topics: &Topics) {
    publish(c, &availability_message(topics, true), Kind::Other);
    for m in discovery_messages(
        topics,
        &s.node_id,
        &s.groups,
        env!("CARGO_PKG_VERSION"),
        &s.discovery_prefix,
    ) {
        publish(c, &m, Kind::Other);
    }
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

fn run(s: MqttSettings, topics: Topics, mut outbox: Outbox, rx: Receiver<Item>) -> Result<()> {
    let mut conn: Option<Conn> = None;
    let mut retry_at = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut last_state = String::new();
    let mut closing: Option<Instant> = None;
    let started = Instant::now();
    let mut top_limit = RateLimit::new(DEFAULT_TOP_INTERVAL_S);
    let say = |state: String, last: &mut String| {
        if *last != state {
            eprintln!("hearken: mqtt {}:{}: {state}", s.host, s.port);
            *last = state;
        }
    };
    loop {
        if conn.is_none() && Instant::now() >= retry_at && closing.is_none() {
            conn = Some(connect(&s, &topics));
        }
        let never = crossbeam_channel::never();
        let never_ev: Receiver<Item> = crossbeam_channel::never();
        let net = conn.as_ref().map_or(&never, |c| &c.net);
        let evrx = if closing.is_some() { &never_ev } else { &rx };
        let mut drop_conn = false;
        select! {
            recv(evrx) -> msg => match msg {
                Ok(Item::Event(e)) => {
                    for m in messages_for_event(&topics, &e) {
                        outbox.push(&m.topic, &m.payload, m.qos, m.retain)?;
                    }
                }
                Ok(Item::Top(r)) => {
                    if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                        if top_limit.allow(started.elapsed().as_secs_f64()) {
                            publish(c, &top_message(&topics, &r), Kind::Other);
                        }
                    }
                }
                Err(_) => closing = Some(Instant::now()),
            },
            recv(net) -> msg => match msg {
                Ok(Net::Connected) => {
                    if let Some(c) = conn.as_mut() {
                        c.connected = true;
                        backoff = Duration::from_millis(500);
                        say("connected".into(), &mut last_state);
                        let _ = c.client.try_subscribe(ha_status_topic(&s.discovery_prefix), QoS::AtLeastOnce);
                        announce(c, &s, &topics);
                    }
                }
                Ok(Net::HaOnline) => {
                    if let Some(c) = conn.as_mut() {
                        announce(c, &s, &topics);
                    }
                }
                Ok(Net::Outgoing(pkid)) => {
                    if let Some(c) = conn.as_mut() {
                        if let Some(Kind::Outbox(seq)) = c.kinds.pop_front() {
                            c.pkids.insert(pkid, seq);
                        }
                    }
                }
                Ok(Net::PubAck(pkid)) => {
                    if let Some(c) = conn.as_mut() {
                        if let Some(seq) = c.pkids.remove(&pkid) {
                            outbox.ack(seq)?;
                            if c.in_flight == Some(seq) {
                                c.in_flight = None;
                            }
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
        if drop_conn {
            conn = None;
            retry_at = Instant::now() + backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        if let Some(c) = conn.as_mut() {
            pump(c, &outbox);
        }
        if let Some(t) = closing {
            // Finish when everything is acknowledged, when the broker is down (no
            // attempt under way), or after a few seconds.
            let flushed = outbox.is_empty() && conn.as_ref().is_some_and(|c| c.connected);
            if flushed || conn.is_none() || t.elapsed() > Duration::from_secs(3) {
                if let Some(c) = conn.as_mut().filter(|c| c.connected) {
                    // A clean disconnect suppresses the Last Will: say offline first.
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
                    eprintln!(
                        "hearken: mqtt: {} messages stay in the outbox for the next start",
                        outbox.len()
                    );
                }
                return Ok(());
            }
        }
    }
}
