//! The embedded MQTT broker (rumqttd): `[mqtt] embedded_broker = true` runs one in
//! process, so a new user can subscribe to hearken's events without installing
//! a broker. It listens on loopback by default, speaks MQTT 3.1.1, keeps retained
//! messages and Last Wills in memory, and lives as long as the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// A running embedded broker (its threads end with the process).
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// The broker's configuration: one MQTT v4 listener on `addr`, small in-memory
/// logs (hearken's traffic is a few messages a minute), and, when `login` is
/// given, only that user name and password accepted.
pub fn broker_config(addr: SocketAddr, login: Option<(&str, &str)>) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: login.map(|(u, p)| HashMap::from([(u.to_string(), p.to_string())])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "hearken-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

impl EmbeddedBroker {
    /// Starts the broker on `addr` and waits until it accepts connections.
    /// Errors when the address is taken (another broker already runs there) or
    /// the broker does not come up.
    pub fn start(addr: SocketAddr, login: Option<(&str, &str)>) -> Result<EmbeddedBroker> {
        // rumqttd only logs a failed bind from its own thread; try it here first
        // so a taken port is a clear start-up error.
        TcpListener::bind(addr).map_err(|e| {
            anyhow!(
                "[mqtt] embedded_listen {addr}: cannot listen there: {e} (is another MQTT \
                 broker running? then set [mqtt] host to it and embedded_broker = false, \
                 or pick another embedded_listen port)"
            )
        })?;
        let config = broker_config(addr, login);
        std::thread::Builder::new()
            .name("hearken-broker".into())
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!("embedded broker stopped: {e}");
                }
            })
            .context("cannot start the embedded broker thread")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "the embedded broker did not start listening on {addr} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(EmbeddedBroker { addr })
    }
}
