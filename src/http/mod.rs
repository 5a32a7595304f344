//! The local HTTP API and web page (`[http]`), on axum in a thread of its own with
//! its own small tokio runtime, so a slow client or a large upload can never stall
//! capture or inference.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page: level, top labels, groups, last events, a file drop |
//! | `POST /model/predict` | IBM MAX's classifier route: multipart `audio`, optional `start_time`; top 5 |
//! | `POST /model/predict/anonymized_audio/{method}/{requestor_id}/{requestor_type}/{request_id}` | the SIFIS-Home route: `scramble` (or `scrample`) or `dp_noise` first |
//! | `GET /events` | recent events, newest first (`?limit=`) |
//! | `GET /events/stream` | live updates as server-sent events (`status`, `event`, `clip`) |
//! | `GET /status` | source, level, top labels, groups, uptime, outbox, broker |
//! | `GET /healthz` | `ok`, or 503 while the audio device is lost |
//! | `GET /metrics` | Prometheus text |
//! | `GET /clips/{file}` | an evidence clip, to a client with the token only |
//!
//! With `[http] token` set every route but `/healthz` needs `Authorization: Bearer
//! <token>` (or `?access_token=` where a browser cannot set a header, as for
//! `EventSource`). Classification requests share a rate limit and run one at a time
//! on the blocking pool; bodies are bounded by `[http] max_upload_mb`.

pub mod config;
mod limit;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::classify::{classify_bytes, ClassifyOptions, Prediction};
use crate::live::{render_metrics, Live};
use crate::model::Model;
use crate::privacy::Anonymize;
use crate::privacy::PrivacyConfig;
use config::HttpConfig;

pub use limit::RateLimiter;

/// The page served at `/` (no build step: one file, embedded).
const PAGE: &str = include_str!("page.html");

/// Labels `/model/predict` returns unless the client asks otherwise (as MAX does).
pub const DEFAULT_TOP: usize = 5;

/// Everything the server needs.
pub struct HttpSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The bearer token (`None`: no authentication; loopback only).
    pub token: Option<String>,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Classification requests per minute.
    pub predict_per_minute: u32,
    /// Block length and noise settings of the anonymisation routes.
    pub privacy: PrivacyConfig,
    /// Where evidence clips are (`<state>/clips`).
    pub clips_dir: PathBuf,
}

impl HttpSettings {
    /// The settings of `[http]` and `[privacy]`, listening on `addr`.
    pub fn new(
        addr: SocketAddr,
        http: &HttpConfig,
        privacy: &PrivacyConfig,
        clips_dir: PathBuf,
    ) -> HttpSettings {
        HttpSettings {
            addr,
            token: (!http.token.is_empty()).then(|| http.token.clone()),
            max_body: (http.max_upload_mb * 1e6) as usize,
            predict_per_minute: http.predict_per_minute,
            privacy: privacy.clone(),
            clips_dir,
        }
    }
}

struct AppState {
    live: Arc<Live>,
    model: Arc<Model>,
    token: Option<String>,
    privacy: PrivacyConfig,
    clips_dir: PathBuf,
    limiter: Mutex<RateLimiter>,
    started: Instant,
    /// One classification at a time: the inference thread keeps the other core.
    predicting: tokio::sync::Semaphore,
}

/// The running server.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `settings.addr` (an error names it: in use, not permitted…) and serves
    /// on a thread of its own until [`Server::stop`].
    pub fn start(settings: HttpSettings, live: Arc<Live>, model: Arc<Model>) -> Result<Server> {
        let listener = std::net::TcpListener::bind(settings.addr).with_context(|| {
            format!(
                "[http] listen = \"{}\": cannot listen there (another program on the port? \
                 choose another with --http ADDR or [http] listen, or turn the server off with listen = \"\")",
                settings.addr
            )
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            live,
            model,
            token: settings.token,
            privacy: settings.privacy,
            clips_dir: settings.clips_dir,
            limiter: Mutex::new(RateLimiter::per_minute(settings.predict_per_minute)),
            started: Instant::now(),
            predicting: tokio::sync::Semaphore::new(1),
        });
        let app = router(state, settings.max_body);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(2)
            .thread_name("hearken-http")
            .build()
            .context("starting the HTTP server's runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hearken-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("the HTTP server cannot use its socket: {e}");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app);
                    tokio::select! {
                        r = serve => if let Err(e) = r {
                            tracing::error!("the HTTP server stopped: {e}");
                        },
                        _ = rx => {}
                    }
                });
                // Open streams and uploads are cut; a classification under way
                // gets a moment to finish.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/events/stream", get(stream))
        .route("/model/predict", post(predict))
        .route(
            "/model/predict/anonymized_audio/{method}/{requestor_id}/{requestor_type}/{request_id}",
            post(predict_anonymized),
        )
        .route("/clips/{file}", get(clip))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// An error as JSON: `{"status": "error", "message": …}`.
fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        Json(serde_json::json!({ "status": "error", "message": message.into() })),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}: see / or docs/http.md for the routes",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Whether `given` equals `token`, comparing every byte whatever the first
/// difference (no timing hint).
fn token_matches(given: &str, token: &str) -> bool {
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request presents: `Authorization: Bearer …`, else `?access_token=`.
fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(|t| t.trim().to_string());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_string())
    })
}

/// Authentication (when a token is set) and the classification rate limit.
async fn guard(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if let Some(token) = &s.token {
        if path != "/healthz" && !presented_token(&req).is_some_and(|t| token_matches(&t, token)) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this hearken needs its token: send Authorization: Bearer <[http] token>",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if path.starts_with("/model/predict") {
        let wait = s
            .limiter
            .lock()
            .map(|mut l| l.take(s.started.elapsed().as_secs_f64()))
            .unwrap_or(Ok(()));
        if let Err(wait_s) = wait {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many classification requests ([http] predict_per_minute); try again in {:.0} s",
                    wait_s.ceil()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("{}", wait_s.ceil().max(1.0))) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    next.run(req).await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let st = s.live.status();
    if st.device_lost {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "audio device lost: reconnecting\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn status(State(s): State<Arc<AppState>>) -> Response {
    Json(s.live.status()).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&s.live.metrics()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<String>,
}

async fn events(State(s): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a whole number ≥ 1, e.g. /events?limit=10",
            )
        }
    };
    Json(s.live.events(limit)).into_response()
}

async fn stream(State(s): State<Arc<AppState>>) -> Response {
    let rx = s.live.subscribe();
    let updates = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(u) => {
                    let e = SseEvent::default().event(u.kind).data(u.json.as_str());
                    return Some((Ok::<_, Infallible>(e), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(updates)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// MAX's answer: `status` and the top labels, in its field names.
#[derive(serde::Serialize)]
struct PredictResponse {
    status: &'static str,
    predictions: Vec<Prediction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymization: Option<serde_json::Value>,
}

/// What a multipart upload carried.
struct Upload {
    name: String,
    audio: Vec<u8>,
    start_time: f64,
}

/// The error for a multipart body that could not be read.
fn multipart_error(status: StatusCode, what: &str, detail: String) -> Response {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            status,
            "the upload is larger than the server's limit ([http] max_upload_mb)",
        );
    }
    error(status, format!("{what}: {detail}"))
}

async fn read_upload(
    multipart: Result<Multipart, MultipartRejection>,
    query_start: Option<&str>,
) -> Result<Upload, Response> {
    let mut multipart = multipart.map_err(|r| {
        error(
            r.status(),
            format!(
                "send the audio as multipart/form-data in a field named audio (curl -F \"audio=@file.wav\"): {}",
                r.body_text()
            ),
        )
    })?;
    let mut audio = None;
    let mut start = query_start.map(str::to_string);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(multipart_error(
                    e.status(),
                    "the multipart body cannot be read",
                    e.body_text(),
                ))
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().unwrap_or("upload").to_string();
        let bytes = field.bytes().await.map_err(|e| {
            multipart_error(
                e.status(),
                &format!("the multipart field {name:?} cannot be read"),
                e.body_text(),
            )
        })?;
        match name.as_str() {
            "audio" => audio = Some((file, bytes.to_vec())),
            "start_time" => start = Some(String::from_utf8_lossy(&bytes).trim().to_string()),
            _ => {}
        }
    }
    let Some((name, audio)) = audio else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no field named audio: send the file as curl -F \"audio=@file.wav\"",
        ));
    };
    let start_time = match start.as_deref().filter(|s| !s.is_empty()) {
        None => 0.0,
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => v,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("start_time {s:?} must be a number of seconds ≥ 0"),
                ))
            }
        },
    };
    Ok(Upload {
        name,
        audio,
        start_time,
    })
}

async fn classify_upload(
    s: &Arc<AppState>,
    upload: Upload,
    anonymize: Option<Anonymize>,
) -> Result<Vec<Prediction>, Response> {
    let _permit = s
        .predicting
        .acquire()
        .await
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))?;
    let model = s.model.clone();
    let opts = ClassifyOptions {
        top_k: DEFAULT_TOP,
        start_s: upload.start_time,
        anonymize,
        ..ClassifyOptions::default()
    };
    let name = upload.name;
    let audio = upload.audio;
    let done =
        tokio::task::spawn_blocking(move || classify_bytes(&model, &name, audio, &opts)).await;
    let result = match done {
        Ok(Ok(r)) => Ok(r.predictions),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("{e:#} (send a WAV or FLAC file)"),
        )),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the classification failed unexpectedly",
        )),
    };
    s.live.predict_request(result.is_ok());
    result
}

#[derive(Deserialize)]
struct PredictQuery {
    start_time: Option<String>,
}

async fn predict(
    State(s): State<Arc<AppState>>,
    Query(q): Query<PredictQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let upload = match read_upload(multipart, q.start_time.as_deref()).await {
        Ok(u) => u,
        Err(r) => {
            s.live.predict_request(false);
            return r;
        }
    };
    match classify_upload(&s, upload, None).await {
        Ok(predictions) => Json(PredictResponse {
            status: "ok",
            predictions,
            anonymization: None,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// The anonymisation a SIFIS-Home method name asks for, with the configured
/// settings; `None` for an unknown method.
pub fn anonymization_for(method: &str, p: &PrivacyConfig, seed: u64) -> Option<Anonymize> {
    match method {
        "scramble" | "scrample" => Some(Anonymize::Scramble {
            block_s: p.scramble_block_s,
            seed,
        }),
        "dp_noise" => Some(Anonymize::DpNoise {
            snr_db: p.dp_noise_snr_db,
            cutoff_hz: p.dp_noise_cutoff_hz,
            seed,
        }),
        _ => None,
    }
}

async fn predict_anonymized(
    State(s): State<Arc<AppState>>,
    Path((method, requestor_id, requestor_type, request_id)): Path<(
        String,
        String,
        String,
        String,
    )>,
    Query(q): Query<PredictQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    // A fresh seed per request: a fixed one would let a caller undo the shuffle.
    let seed = rand::random::<u64>();
    let Some(anonymize) = anonymization_for(&method, &s.privacy, seed) else {
        s.live.predict_request(false);
        // Read the upload before answering: a reply while the client is still
        // sending makes the server close the connection under it, and the client
        // sees a reset instead of this error (the body limit still applies).
        if let Ok(mut m) = multipart {
            while let Ok(Some(field)) = m.next_field().await {
                let _ = field.bytes().await;
            }
        }
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown anonymization method {method:?}: use scramble (or scrample) or dp_noise"
            ),
        );
    };
    let upload = match read_upload(multipart, q.start_time.as_deref()).await {
        Ok(u) => u,
        Err(r) => {
            s.live.predict_request(false);
            return r;
        }
    };
    let settings = match anonymize {
        Anonymize::Scramble { block_s, .. } => serde_json::json!({ "block_s": block_s }),
        Anonymize::DpNoise {
            snr_db, cutoff_hz, ..
        } => serde_json::json!({ "snr_db": snr_db, "cutoff_hz": cutoff_hz }),
    };
    match classify_upload(&s, upload, Some(anonymize)).await {
        Ok(predictions) => Json(PredictResponse {
            status: "ok",
            predictions,
            anonymization: Some(serde_json::json!({
                "method": anonymize.name(),
                "requested": method,
                "settings": settings,
                "requestor_id": requestor_id,
                "requestor_type": requestor_type,
                "request_id": request_id,
            })),
        })
        .into_response(),
        Err(r) => r,
    }
}

/// Whether `name` is a plain clip file name (no path, no hidden file).
fn clip_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.ends_with(".flac")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

async fn clip(State(s): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    // Audio goes only to a client that proved it holds the token.
    if s.token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "evidence clips are served only to an authenticated client: set [http] token and send it",
        );
    }
    if !clip_name_ok(&file) {
        return error(StatusCode::BAD_REQUEST, "not a clip name");
    }
    let path = s.clips_dir.join(&file);
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "audio/flac"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::from(bytes),
        )
            .into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("no clip {file}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn clip_names_cannot_leave_the_folder() {
        assert!(clip_name_ok("2026-12-07T10-00-00Z-glass-1234.flac"));
        for bad in ["../x.flac", "a/b.flac", ".x.flac", "x.wav", "", "x%2f.flac"] {
            assert!(!clip_name_ok(bad), "{bad}");
        }
    }

    #[test]
    fn sifis_methods_map_to_anonymizers() {
        let p = PrivacyConfig::default();
        assert!(matches!(
            anonymization_for("scrample", &p, 1),
            Some(Anonymize::Scramble { block_s, .. }) if block_s == p.scramble_block_s
        ));
        assert!(matches!(
            anonymization_for("scramble", &p, 1),
            Some(Anonymize::Scramble { .. })
        ));
        assert!(matches!(
            anonymization_for("dp_noise", &p, 1),
            Some(Anonymize::DpNoise { .. })
        ));
        assert!(anonymization_for("blur", &p, 1).is_none());
    }
}
