//! `[mqtt]`: the broker events are published to.

use serde::{Deserialize, Serialize};

/// Where the embedded broker listens by default: loopback only.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";

/// `[mqtt]`: the broker events are published to (off while `host` is empty and
/// `embedded_broker` is off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of MQTT settings")]
pub struct MqttConfig {
    /// Broker host name or address; empty: do not publish.
    pub host: String,
    /// Broker port (1..=65535).
    pub port: u16,
    /// User name; empty: none.
    pub username: String,
    /// Password.
    #[serde(skip_serializing)]
    pub password: String,
    /// Client id; empty: `hearken-<node id>`.
    pub client_id: String,
    /// Keep-alive in seconds (5..=3600).
    pub keepalive_s: u64,
    /// Topic prefix; topics are `<base_topic>/<node id>/...`.
    pub base_topic: String,
    /// Home Assistant discovery prefix.
    pub discovery_prefix: String,
    /// Directory of the durable outbox; empty: `$STATE_DIRECTORY` or
    /// `~/.local/state/hearken`.
    pub state_dir: String,
    /// Outbox size bound in MiB (1..=4096); the oldest events are dropped past it.
    pub outbox_max_mib: u64,
    /// QoS of event and state messages (0, 1 or 2). At 0 the broker acknowledges
    /// nothing, so an event sent into a dying connection can be lost.
    pub qos: u8,
    /// Connect with TLS (`mqtts`).
    pub tls: bool,
    /// PEM file of the CA(s) that signed the broker's certificate; empty: the
    /// system's trusted roots.
    pub ca_file: String,
    /// PEM client certificate (chain) for brokers that want one; needs `client_key_file`.
    pub client_cert_file: String,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: String,
    /// Run a broker inside hearken (rumqttd) and publish to it; `host` must then
    /// be empty.
    pub embedded_broker: bool,
    /// Address the embedded broker listens on.
    pub embedded_listen: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: String::new(),
            port: 1883,
            username: String::new(),
            password: String::new(),
            client_id: String::new(),
            keepalive_s: 30,
            base_topic: "hearken".into(),
            discovery_prefix: "homeassistant".into(),
            state_dir: String::new(),
            outbox_max_mib: 16,
            qos: 1,
            tls: false,
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            embedded_broker: false,
            embedded_listen: DEFAULT_EMBEDDED_LISTEN.into(),
        }
    }
}
