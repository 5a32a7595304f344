//! `[http]`: the local API's settings.

use serde::{Deserialize, Serialize};

/// Whether the HTTP server may listen on `addr` with `token`: loopback always; any
/// other address only with a token (it would otherwise answer anyone on the network).
pub fn check_http_bind(addr: std::net::SocketAddr, token: &str) -> Result<(), String> {
    if addr.ip().is_loopback() || !token.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the HTTP server would listen on {addr}, which is not loopback, without a token: \
         set [http] token = \"<a long random string>\" (clients send Authorization: Bearer <token>) \
         or listen on 127.0.0.1"
    ))
}

/// `[http]`: the local HTTP API (`/model/predict`, `/events`, `/status`, `/metrics`)
/// and the web page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of http settings")]
pub struct HttpConfig {
    /// Address to listen on (`host:port`); empty turns the server off. Any address
    /// other than loopback needs a `token`.
    pub listen: String,
    /// Bearer token clients must send (`Authorization: Bearer …`); empty: none
    /// (allowed on loopback only).
    pub token: String,
    /// Largest request body, MB (0.01..=200): an upload to `/model/predict`.
    pub max_upload_mb: f64,
    /// Classification requests (`/model/predict…`) allowed per minute (1..=10000),
    /// across all clients.
    pub predict_per_minute: u32,
    /// Recent events kept in memory for `/events` (1..=10000).
    pub events_kept: usize,
}

/// Default `[http] listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8765";

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_HTTP_LISTEN.into(),
            token: String::new(),
            max_upload_mb: 20.0,
            predict_per_minute: 30,
            events_kept: 100,
        }
    }
}

impl HttpConfig {
    /// The address to listen on, `None` when the server is off; errors name the key.
    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen
            .trim()
            .parse::<std::net::SocketAddr>()
            .map(Some)
            .map_err(|_| {
                format!(
                    "{:?} is not an address to listen on: write host:port, e.g. \"127.0.0.1:8765\" (empty turns the server off)",
                    self.listen
                )
            })
    }
}
