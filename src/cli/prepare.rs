//! What `hearken run` checks and sets up before it starts, shared with `hearken
//! check-config` so that the two refuse exactly the same configurations.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::*;

/// The daemon's state directory: `--state-dir`, `[mqtt] state_dir`, or the
/// default of [`state_dir`].
pub(crate) fn daemon_state_dir(cfg: &hearken::config::Config, flags: &Mqtt) -> PathBuf {
    let configured = (!cfg.mqtt.state_dir.is_empty()).then(|| PathBuf::from(&cfg.mqtt.state_dir));
    state_dir(flags.state_dir.clone().or(configured))
}

/// Starts the home store's writer in `state/home` (see [`hearken::store`]);
/// `None`, with the reason logged, when `[learning] store` is off or the folder
/// cannot be made: the daemon listens and alarms without it.
pub(crate) fn start_home_store(
    cfg: &hearken::config::Config,
    state: &std::path::Path,
) -> Option<(
    crossbeam_channel::Sender<hearken::store::HomeMsg>,
    std::thread::JoinHandle<()>,
)> {
    use hearken::store;
    if !cfg.learning.store {
        return None;
    }
    let dir = state.join(store::DIR);
    let limits = store::Limits {
        max_bytes: (cfg.learning.max_mb * 1e6) as u64,
        max_age: std::time::Duration::from_secs_f64(cfg.learning.days * 86_400.0),
    };
    match store::Writer::open(&dir, limits) {
        Ok(w) => {
            // Room for minutes of windows: the inference thread never waits for it.
            let (tx, rx) = crossbeam_channel::bounded(4096);
            let h = std::thread::Builder::new()
                .name("hearken-home".into())
                .spawn(move || store::run(w, rx))
                .ok()?;
            tracing::info!(
                "home store: {} (no audio; [learning] store = false turns it off)",
                dir.display()
            );
            Some((tx, h))
        }
        Err(e) => {
            tracing::error!("{e:#}; running without the home store (hearken adapt will have nothing new to learn from)");
            None
        }
    }
}

/// Where the embedded broker should listen: `Some` when it is asked for (config or
/// `--embedded-broker`) and no other broker is configured.
pub(crate) fn embedded_broker_addr(
    cfg: &hearken::config::Config,
    flags: &Mqtt,
) -> Result<Option<std::net::SocketAddr>> {
    let m = &cfg.mqtt;
    if !(m.embedded_broker || flags.embedded_broker) || flags.url.is_some() || !m.host.is_empty() {
        return Ok(None);
    }
    m.embedded_listen.parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "[mqtt] embedded_listen: must be an IP address and port such as \"127.0.0.1:1883\", got {:?}",
            m.embedded_listen
        )
    })
}

/// Publisher settings from `[mqtt]` with the command line on top; `None` when no
/// broker is configured (neither a host nor the embedded broker).
pub(crate) fn mqtt_settings(
    cfg: &hearken::config::Config,
    flags: &Mqtt,
    model: &str,
) -> Result<Option<hearken::publish::client::MqttSettings>> {
    use hearken::publish::client::MqttSettings;
    let m = &cfg.mqtt;
    let dir = match (&flags.state_dir, m.state_dir.is_empty()) {
        (Some(d), _) => Some(d.clone()),
        (None, false) => Some(PathBuf::from(&m.state_dir)),
        (None, true) => None,
    };
    let mut s = match &flags.url {
        Some(url) => MqttSettings::from_url(url, &cfg.node.id, state_dir(dir))?,
        None => {
            let url = match embedded_broker_addr(cfg, flags)? {
                Some(addr) => format!("mqtt://{addr}"),
                None if !m.host.is_empty() => format!("mqtt://{}:{}", m.host, m.port),
                None => return Ok(None),
            };
            let mut s = MqttSettings::from_url(&url, &cfg.node.id, state_dir(dir))?;
            if !m.username.is_empty() {
                s.username = Some(m.username.clone());
                s.password = Some(m.password.clone());
            }
            if m.tls {
                s.tls = Some(hearken::publish::tls::TlsFiles {
                    ca_file: (!m.ca_file.is_empty()).then(|| PathBuf::from(&m.ca_file)),
                    client_auth: (!m.client_cert_file.is_empty()).then(|| {
                        (
                            PathBuf::from(&m.client_cert_file),
                            PathBuf::from(&m.client_key_file),
                        )
                    }),
                });
            }
            s
        }
    };
    // A mqtts:// URL on the command line still takes the CA and client
    // certificate from the file.
    if let (Some(t), Some(_)) = (s.tls.as_mut(), flags.url.as_ref()) {
        if !m.ca_file.is_empty() {
            t.ca_file = Some(PathBuf::from(&m.ca_file));
        }
        if !m.client_cert_file.is_empty() {
            t.client_auth = Some((
                PathBuf::from(&m.client_cert_file),
                PathBuf::from(&m.client_key_file),
            ));
        }
    }
    s.qos = m.qos;
    if !m.client_id.is_empty() {
        s.client_id = m.client_id.clone();
    }
    s.keepalive_s = m.keepalive_s;
    s.prefix = m.base_topic.clone();
    s.discovery_prefix = m.discovery_prefix.clone();
    s.outbox_max_bytes = m.outbox_max_mib << 20;
    let safety = |name: &String| cfg.detection.groups.get(name).is_some_and(|g| g.safety);
    s.groups.clear();
    s.sources.clear();
    for plan in cfg.source_plans() {
        let groups: Vec<(String, bool)> =
            plan.groups.iter().map(|g| (g.clone(), safety(g))).collect();
        if plan.scoped {
            s.sources.push(hearken::publish::discovery::SourceInfo {
                name: plan.name,
                room: plan.room,
                groups,
            });
        } else {
            s.groups = groups;
        }
    }
    s.model = model.to_string();
    s.room = cfg.node.room.clone();
    // Three missed reports (or a minute) before Home Assistant calls the level stale.
    s.top_expire_s = (3.0
        * cfg
            .detection
            .status_interval_s
            .max(hearken::publish::DEFAULT_TOP_INTERVAL_S))
    .ceil()
    .max(60.0) as u64;
    Ok(Some(s))
}

/// Command-line settings that stay on top of the configuration file, at start and on
/// every reload.
#[derive(Default)]
pub(crate) struct Overrides {
    /// `--source` values: one plain spec, or `NAME=SPEC` for each source.
    pub(crate) source: Vec<String>,
    pub(crate) model: Option<String>,
    pub(crate) node_id: Option<String>,
    pub(crate) http: Option<String>,
}

/// Where the values of the configuration in force came from, so that an error found
/// after loading points at them: the line of the key in the file, or the
/// command-line option that set it.
pub(crate) struct Provenance {
    /// The file as shown in messages, and its text (to find a key's line).
    pub(crate) file: Option<(String, String)>,
    /// Dotted keys set on the command line, with the option that set them.
    pub(crate) cli: Vec<(&'static str, &'static str)>,
}

impl Provenance {
    pub(crate) fn new(file: Option<&std::path::Path>, o: &Overrides, flags: &Mqtt) -> Provenance {
        let file = file.map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            (p.display().to_string(), text)
        });
        let mut cli = Vec::new();
        let mut set = |on: bool, keys: &[&'static str], flag: &'static str| {
            if on {
                cli.extend(keys.iter().map(|k| (*k, flag)));
            }
        };
        set(
            !o.source.is_empty(),
            &["audio.source", "sources"],
            "--source",
        );
        set(o.model.is_some(), &["model.name"], "--model");
        set(o.node_id.is_some(), &["node.id"], "--node-id");
        set(o.http.is_some(), &["http.listen"], "--http");
        set(
            flags.url.is_some(),
            &[
                "mqtt.host",
                "mqtt.port",
                "mqtt.username",
                "mqtt.password",
                "mqtt.tls",
            ],
            "--mqtt",
        );
        set(
            flags.embedded_broker,
            &["mqtt.embedded_broker"],
            "--embedded-broker",
        );
        set(
            flags.state_dir.is_some(),
            &["mqtt.state_dir"],
            "--state-dir",
        );
        Provenance { file, cli }
    }

    /// `e` attributed to where its key's value came from.
    pub(crate) fn locate(&self, e: hearken::config::ConfigError) -> hearken::config::ConfigError {
        // `sources` stands for every key under it (`sources.0.source`).
        let flag = e.key.as_deref().and_then(|k| {
            self.cli.iter().find(|(key, _)| {
                k == *key || k.strip_prefix(*key).is_some_and(|r| r.starts_with('.'))
            })
        });
        match (flag, &self.file) {
            (Some((_, flag)), _) => e.on_command_line(flag),
            (None, Some((name, text))) => e.in_file(name, text),
            (None, None) => e,
        }
    }

    /// An error about `key`, attributed to where its value came from.
    pub(crate) fn error(&self, key: &str, message: &str) -> hearken::config::ConfigError {
        self.locate(hearken::config::ConfigError::for_key(key, message))
    }

    /// An error about no single key, attributed to the file if there is one.
    pub(crate) fn general(&self, message: &str) -> hearken::config::ConfigError {
        let mut e = hearken::config::ConfigError::for_key("", message);
        e.key = None;
        self.locate(e)
    }
}

/// The configuration in force: the file (or the defaults) with the command line on
/// top, every value checked, with where each came from. Errors name the file, line
/// and key, or the command-line option.
pub(crate) fn load_config(
    file: Option<&std::path::Path>,
    o: &Overrides,
    flags: &Mqtt,
) -> Result<(hearken::config::Config, Provenance), Vec<hearken::config::ConfigError>> {
    let mut cfg = match file {
        Some(p) => hearken::config::Config::load_all(p)?,
        None => hearken::config::Config::default(),
    };
    let prov = Provenance::new(file, o, flags);
    if let Err(m) = hearken::config::apply_source_flags(&mut cfg, &o.source) {
        return Err(vec![prov.error("sources", &m)]);
    }
    if let Some(m) = &o.model {
        cfg.set_model(m);
    }
    if let Some(id) = &o.node_id {
        cfg.node.id = id.clone();
    }
    if let Some(h) = &o.http {
        cfg.http.listen = h.clone();
    }
    cfg.validate()
        .map_err(|errs| errs.into_iter().map(|e| prov.locate(e)).collect::<Vec<_>>())?;
    Ok((cfg, prov))
}

/// The configuration in force (see [`load_config`]); the first error if several.
pub(crate) fn effective_config(
    file: Option<&std::path::Path>,
    o: &Overrides,
) -> Result<hearken::config::Config, hearken::config::ConfigError> {
    load_config(file, o, &Mqtt::default())
        .map(|(cfg, _)| cfg)
        .map_err(|mut errs| errs.remove(0))
}

/// Everything `hearken run` sets up before it opens the audio source and the broker,
/// checked: what [`prepare`] returns.
pub(crate) struct Prepared {
    /// The configuration in force (with the trained detectors' window adopted).
    pub(crate) cfg: hearken::config::Config,
    /// The sources, each with its spec parsed and its detector.
    pub(crate) sources: Vec<PreparedSource>,
    /// The model, loaded.
    pub(crate) model: std::sync::Arc<Model>,
    /// The window and hop taken from the model's trained detectors, if any.
    pub(crate) adopted: Option<(f64, f64)>,
    /// The trained detectors it uses.
    pub(crate) trained: Vec<hearken::detect::trained::LinearDetector>,
    /// The state directory (home store, adapted detectors, outbox).
    pub(crate) state_dir: PathBuf,
    /// Where the embedded broker listens, if it runs.
    pub(crate) broker: Option<std::net::SocketAddr>,
    /// The publisher's settings, if hearken publishes.
    pub(crate) mqtt: Option<hearken::publish::client::MqttSettings>,
}

/// One source, ready to start: what the configuration says of it, its parsed spec
/// and its detector.
pub(crate) struct PreparedSource {
    pub(crate) plan: hearken::config::SourcePlan,
    pub(crate) spec: hearken::audio::source::SourceSpec,
    pub(crate) detector: hearken::detect::Detector,
}

/// The whole start-up validation of `hearken run`, shared with `hearken
/// check-config` so that the two refuse exactly the same configurations: the file
/// and the command line, the source spec, the model, the labels, the trained
/// detectors and their window, the detector, the embedded broker's address and the
/// publisher's settings (topics, node and client id, TLS files, state directory).
/// It opens no device, binds no port, connects to nothing and writes nothing. Every
/// error names the file, line and key, or the command-line option; independent
/// problems are all reported.
pub(crate) fn prepare(
    file: Option<&std::path::Path>,
    o: &Overrides,
    flags: &Mqtt,
) -> Result<Prepared, Vec<hearken::config::ConfigError>> {
    let (mut cfg, prov) = load_config(file, o, flags)?;
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    for (i, plan) in cfg.source_plans().into_iter().enumerate() {
        match plan.spec.parse::<hearken::audio::source::SourceSpec>() {
            Ok(s) => specs.push(s),
            Err(e) => {
                let key = if plan.scoped {
                    format!("sources.{i}.source")
                } else {
                    "audio.source".to_string()
                };
                errors.push(prov.error(&key, &e.to_string()));
            }
        }
    }
    let model = match Model::open(&cfg.model.name) {
        Ok(m) => Some(std::sync::Arc::new(m)),
        Err(e) => {
            let message = format!("cannot open model {:?}: {e:#}", cfg.model.name);
            errors.push(prov.error("model.name", &message));
            None
        }
    };
    let state = daemon_state_dir(&cfg, flags);
    let scoring = model
        .as_ref()
        .map(|m| prepare_scoring(&mut cfg, m, &prov, &state));
    let broker = embedded_broker_addr(&cfg, flags)
        .map_err(|e| errors.push(prov.error("mqtt.embedded_listen", &format!("{e:#}"))))
        .ok()
        .flatten();
    let model_name = model.as_ref().map_or(cfg.model.name.as_str(), |m| m.name());
    let mqtt = match mqtt_settings(&cfg, flags, model_name) {
        Ok(s) => s,
        Err(e) => {
            errors.push(prov.error("mqtt.host", &format!("{e:#}")));
            None
        }
    };
    if let Some(s) = &mqtt {
        let explicit_dir = flags.state_dir.is_some() || !cfg.mqtt.state_dir.is_empty();
        errors.extend(check_publisher(s, explicit_dir, &prov));
    }
    let scoring = match scoring {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    // Detectors that read a fine-tuned network bring it: the daemon runs it in
    // place of the model's own network.
    let model = match (model, &scoring) {
        (Some(m), Some((_, _, trained))) => {
            match hearken::detect::trained::model_for(&m, trained) {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.push(prov.error("detection.detectors", &format!("{e:#}")));
                    None
                }
            }
        }
        (m, _) => m,
    };
    match (model, scoring) {
        (Some(model), Some((adopted, detectors, trained))) if errors.is_empty() => {
            let sources = detectors
                .into_iter()
                .zip(specs)
                .map(|((plan, detector), spec)| PreparedSource {
                    plan,
                    spec,
                    detector,
                })
                .collect();
            Ok(Prepared {
                cfg,
                sources,
                model,
                adopted,
                trained,
                state_dir: state,
                broker,
                mqtt,
            })
        }
        _ => Err(errors),
    }
}

/// What the model decides: the window the trained detectors bring (adopted into
/// `cfg`), the window plan, and each source's detector with the trained detectors.
#[allow(clippy::type_complexity)]
pub(crate) fn prepare_scoring(
    cfg: &mut hearken::config::Config,
    model: &Model,
    prov: &Provenance,
    state: &std::path::Path,
) -> Result<
    (
        Option<(f64, f64)>,
        Vec<(hearken::config::SourcePlan, hearken::detect::Detector)>,
        Vec<hearken::detect::trained::LinearDetector>,
    ),
    hearken::config::ConfigError,
> {
    let adopted = hearken::detect::trained::adopt_window(&cfg.detection, &mut cfg.model, model)
        .map_err(|e| prov.error("detection.detectors", &format!("{e:#}")))?;
    hearken::scoring::WindowPlan::from_manifest(
        model.manifest(),
        Some(cfg.model.window_s),
        Some(cfg.model.hop_s),
    )
    .map_err(|e| prov.error("model.window_s", &format!("model {}: {e}", model.name())))?;
    let (detector, trained) = build_detector(cfg, model, prov, state)?;
    Ok((adopted, detector, trained))
}

/// Checks `cfg` against the running model and builds each source's detector, with
/// the trained detectors they use (those `hearken adapt` adapted in `state` in place
/// of the shipped ones); errors name the file (and line) or option the value came
/// from.
#[allow(clippy::type_complexity)]
pub(crate) fn build_detector(
    cfg: &hearken::config::Config,
    model: &Model,
    prov: &Provenance,
    state: &std::path::Path,
) -> Result<
    (
        Vec<(hearken::config::SourcePlan, hearken::detect::Detector)>,
        Vec<hearken::detect::trained::LinearDetector>,
    ),
    hearken::config::ConfigError,
> {
    cfg.check_labels(model.labels())
        .map_err(|e| prov.locate(e))?;
    let trained =
        hearken::detect::trained::configured(&cfg.detection, &cfg.model, model).map_err(|e| {
            // The folder and its files are read whatever the groups; with none enabled
            // only the match of windows is left out. So if that still fails, the folder
            // is to blame, else the window.
            let mut folder_only = cfg.clone();
            folder_only
                .detection
                .groups
                .values_mut()
                .for_each(|g| g.enabled = false);
            let key = if hearken::detect::trained::configured(
                &folder_only.detection,
                &folder_only.model,
                model,
            )
            .is_err()
            {
                "detection.detectors"
            } else {
                "model.window_s"
            };
            prov.error(key, &format!("{e:#}"))
        })?;
    // The shipped detectors read without error: now with the household's enrolled
    // and adapted ones over them.
    let loaded = hearken::learn::enroll::over_shipped(trained, cfg, model, state, true)
        .map_err(|e| prov.general(&format!("{e:#}")))?;
    for m in &loaded.warnings {
        tracing::warn!("{m}");
    }
    let trained = loaded.detectors;
    let detectors = cfg
        .source_plans()
        .into_iter()
        .map(|plan| {
            let d = source_detector(cfg, model, &trained, &plan).map_err(|e| prov.general(&e))?;
            Ok((plan, d))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((detectors, trained))
}

/// The detector of one source: the groups it watches, with its thresholds over
/// the group's (or the trained detector's), stamping its name and room on every
/// event.
pub(crate) fn source_detector(
    cfg: &hearken::config::Config,
    model: &Model,
    trained: &[hearken::detect::trained::LinearDetector],
    plan: &hearken::config::SourcePlan,
) -> Result<hearken::detect::Detector, String> {
    use hearken::detect::Detector;
    let mut groups: Vec<(String, hearken::config::GroupConfig)> = cfg
        .enabled_groups()
        .filter(|(n, _)| plan.groups.contains(n))
        .map(|(n, g)| (n.clone(), g.clone()))
        .collect();
    let mut trained = trained.to_vec();
    for (group, &on) in &plan.thresholds {
        for (_, g) in groups.iter_mut().filter(|(n, _)| n == group) {
            g.tuning.on = on;
            g.tuning.off = g.tuning.off.min(on);
        }
        for d in trained.iter_mut().filter(|d| &d.group == group) {
            d.on = on;
            d.off = d.off.min(on);
        }
    }
    Detector::for_source(
        &groups,
        model.labels(),
        (&cfg.node.id, &plan.room, &plan.name, model.name()),
        &trained,
    )
}

/// What the publisher checks when it starts, checked without starting it: the
/// broker host, the topics (base topic and node id), the TLS files, and, when one is
/// configured, that the state directory can hold the outbox.
pub(crate) fn check_publisher(
    s: &hearken::publish::client::MqttSettings,
    explicit_state_dir: bool,
    prov: &Provenance,
) -> Vec<hearken::config::ConfigError> {
    use hearken::publish::topics::{TopicError, Topics};
    let mut errors = Vec::new();
    if let Err(m) = hearken::config::check_host(&s.host) {
        errors.push(prov.error("mqtt.host", &m));
    }
    if let Err(e) = Topics::new(&s.prefix, &s.node_id) {
        let key = match e {
            TopicError::BadNodeId(_) => "node.id",
            TopicError::BadPrefix(_) => "mqtt.base_topic",
        };
        errors.push(prov.error(key, &e.to_string()));
    }
    if let Some(t) = &s.tls {
        errors.extend(check_tls(t, prov));
    }
    if explicit_state_dir {
        if let Err(m) = check_outbox_dir(&s.state_dir.join("outbox")) {
            errors.push(prov.error("mqtt.state_dir", &format!("cannot hold the outbox: {m}")));
        }
    }
    errors
}

/// Builds the TLS client configuration the publisher will use, blaming the key of
/// the file at fault.
pub(crate) fn check_tls(
    t: &hearken::publish::tls::TlsFiles,
    prov: &Provenance,
) -> Option<hearken::config::ConfigError> {
    use hearken::publish::tls::{client_config, TlsFiles};
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let roots = TlsFiles {
        ca_file: t.ca_file.clone(),
        client_auth: None,
    };
    if let Err(e) = client_config(&roots) {
        let key = if t.ca_file.is_some() {
            "mqtt.ca_file"
        } else {
            "mqtt.tls"
        };
        return Some(prov.error(key, &format!("{e:#}")));
    }
    let (_, key_file) = t.client_auth.as_ref()?;
    let e = client_config(t).err()?;
    let key = if PrivateKeyDer::from_pem_file(key_file).is_ok() {
        "mqtt.client_cert_file"
    } else {
        "mqtt.client_key_file"
    };
    Some(prov.error(key, &format!("{e:#}")))
}

/// Whether the outbox can live at `dir`, as far as can be told without creating
/// anything: an existing directory this user may write in, or a path whose nearest
/// existing ancestor is one (the publisher creates the rest).
pub(crate) fn check_outbox_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a directory", p.display())),
            // Not there, or under something that is not a directory: look further up.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match p.parent() {
                    Some(up) if !up.as_os_str().is_empty() => p = up,
                    // A relative path under the working directory.
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{:?} holds a NUL byte", p.display()))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; access(2) only
    // reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{} is not writable by this user: {e}", p.display()));
    }
    Ok(())
}

/// `hearken check-config FILE`: every error on its own line (stderr) and failure, or
/// a one-line summary and success. It runs [`prepare`], the start-up validation of
/// `hearken run` (without command-line options), so it refuses exactly the files
/// `run` refuses.
pub(crate) fn check_config(file: &std::path::Path) -> ExitCode {
    let shown = file.display();
    let p = match prepare(Some(file), &Overrides::default(), &Mqtt::default()) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let enabled: Vec<&String> = p.cfg.enabled_groups().map(|(n, _)| n).collect();
    let mut groups = match enabled.len() {
        0 => "no groups enabled".to_string(),
        n => format!(
            "{n} groups enabled: {}",
            enabled
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if p.sources.len() > 1 || p.sources.iter().any(|s| s.plan.scoped) {
        let names: Vec<String> = p
            .sources
            .iter()
            .map(|s| format!("{} ({})", s.plan.name, s.spec))
            .collect();
        groups.push_str(&format!("; sources: {}", names.join(", ")));
    }
    let mut model = format!("model {}, labels checked", p.model.name());
    if let Some((net, _)) = p.model.net() {
        model.push_str(&format!(", fine-tuned network {}", net.display()));
    }
    if !p.trained.is_empty() {
        let names: Vec<&str> = p.trained.iter().map(|d| d.group.as_str()).collect();
        model.push_str(&format!(
            "; trained detectors: {} ({} s windows every {} s)",
            names.join(", "),
            p.cfg.model.window_s,
            p.cfg.model.hop_s
        ));
    }
    let publish = match (&p.mqtt, p.broker) {
        (_, Some(addr)) => format!("; publishing to the embedded broker on {addr}"),
        (Some(s), None) => format!("; publishing to {}", s.endpoint()),
        (None, None) => String::new(),
    };
    println!("{shown}: ok ({groups}; {model}{publish})");
    ExitCode::SUCCESS
}
