//! `hearken run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::*;

/// Run the daemon: listen, classify rolling windows, detect and report events.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Configuration file (TOML); without it, built-in defaults.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Audio source: default | device:NAME | file:PATH | stdin:RATE:CHANNELS.
    /// Repeat as NAME=SPEC to run several sources, each its own Home Assistant
    /// device (replaces the file's [[sources]]; a name there keeps its settings).
    #[arg(long, value_name = "[NAME=]SPEC")]
    pub(crate) source: Vec<String>,
    /// With a file source, process as fast as possible instead of in real time.
    #[arg(long)]
    pub(crate) fast: bool,
    /// Model name or directory (overrides the config).
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Print each event as a JSON line on stdout and a status line to stderr.
    #[arg(long)]
    pub(crate) print_events: bool,
    /// Publish events to this MQTT broker: mqtt://[user:pass@]host[:port] or
    /// mqtts://… (TLS).
    #[arg(long)]
    pub(crate) mqtt: Option<String>,
    /// When no broker is configured, run the embedded one ([mqtt]
    /// embedded_listen, 127.0.0.1:1883 by default) and publish to it.
    #[arg(long)]
    pub(crate) embedded_broker: bool,
    /// Node id in MQTT topics (overrides node.id).
    #[arg(long)]
    pub(crate) node_id: Option<String>,
    /// Directory for state that must survive restarts (the MQTT outbox).
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Serve the local HTTP API and page here (host:port; overrides [http]
    /// listen; "" turns it off).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<String>,
}

/// Runs `hearken run`.
pub(crate) fn run(a: RunArgs) -> Result<ExitCode> {
    let RunArgs {
        config,
        source,
        fast,
        model,
        print_events,
        mqtt,
        embedded_broker,
        node_id,
        state_dir,
        http,
    } = a;
    run_daemon(
        config,
        source,
        fast,
        model,
        http,
        print_events,
        Mqtt {
            url: mqtt,
            embedded_broker,
            node_id,
            state_dir,
        },
    )
}

/// Whether two publisher configurations differ.
pub(crate) fn mqtt_changed(
    a: &Option<hearken::publish::client::MqttSettings>,
    b: &Option<hearken::publish::client::MqttSettings>,
) -> bool {
    a != b
}

/// What a reload needs and changes.
pub(crate) struct Running {
    pub(crate) file: Option<PathBuf>,
    pub(crate) overrides: Overrides,
    pub(crate) mqtt_flags: Mqtt,
    pub(crate) model: std::sync::Arc<Model>,
    pub(crate) cfg: hearken::config::Config,
    pub(crate) mqtt: Option<hearken::publish::client::MqttSettings>,
    /// The trained detectors in force (a source that opens late starts with them).
    pub(crate) trained: Vec<hearken::detect::trained::LinearDetector>,
    /// What `/status` and `/metrics` read: a reload lists its new groups there.
    pub(crate) live: std::sync::Arc<hearken::live::Live>,
}

impl Running {
    /// SIGHUP: re-reads the file, validates it completely and applies what can change
    /// while running; on any error the running configuration stays.
    fn reload(
        &mut self,
        runs: &mut [SourceRun],
        publisher: &crossbeam_channel::Sender<Option<hearken::publish::client::MqttSettings>>,
    ) {
        use tracing::{error, info, warn};
        let Some(file) = self.file.clone() else {
            info!("SIGHUP: no --config file was given, so there is nothing to reload");
            return;
        };
        let shown = file.display().to_string();
        let prepared = (|| -> Result<_> {
            let mut new = effective_config(Some(&file), &self.overrides)?;
            hearken::detect::trained::adopt_window(&new.detection, &mut new.model, &self.model)?;
            let restart = hearken::service::restart_keys(&self.cfg, &new);
            hearken::service::keep_running_values(&self.cfg, &mut new);
            let prov = Provenance::new(Some(&file), &self.overrides, &self.mqtt_flags);
            let state = daemon_state_dir(&new, &self.mqtt_flags);
            let (detectors, trained) = build_detector(&new, &self.model, &prov, &state)?;
            let wanted = trained.iter().find_map(|d| d.net.as_ref());
            let running = self.model.net().map(|(_, sha)| sha);
            if wanted.map(|n| n.sha256.to_ascii_lowercase()).as_deref() != running {
                bail!(
                    "the detectors now read {}, the running daemon {}; restart to apply",
                    wanted.map_or("no fine-tuned network".to_string(), |n| format!(
                        "the fine-tuned network {}",
                        n.path.display()
                    )),
                    self.model
                        .net()
                        .map_or("none".to_string(), |(p, _)| p.display().to_string())
                );
            }
            for d in &trained {
                info!(group = %d.group, "group {}: trained detector (on {:.2}, off {:.2})", d.group, d.on, d.off);
            }
            let mqtt = mqtt_settings(&new, &self.mqtt_flags, self.model.name())?;
            Ok((new, restart, detectors, trained, mqtt))
        })();
        let (new, restart, detectors, trained, mqtt) = match prepared {
            Ok(p) => p,
            Err(e) => {
                error!(
                    file = %shown,
                    reason = %format!("{e:#}"),
                    "cannot reload {shown}: {e:#}; keeping the current configuration"
                );
                return;
            }
        };
        if !restart.is_empty() {
            let keys = restart.join(", ");
            warn!(file = %shown, keys = %keys, "{keys} changed in {shown}; restart to apply (keeping the running values)");
        }
        let groups: Vec<&str> = new.enabled_groups().map(|(n, _)| n.as_str()).collect();
        self.live.set_groups(&groups);
        let groups = groups.join(", ");
        // The sources are the same ones (a changed list waits for a restart).
        for (plan, detector) in detectors {
            let Some(r) = runs.iter_mut().find(|r| r.plan.name == plan.name) else {
                continue;
            };
            r.plan = plan;
            // A source not open yet builds its detector from the new
            // configuration when it opens.
            if let Some(p) = &r.pipeline {
                if let Err(e) = p.reconfigure(detector) {
                    error!("cannot apply the reloaded configuration: {e:#}");
                    return;
                }
            }
        }
        self.trained = trained;
        if mqtt_changed(&self.mqtt, &mqtt) {
            info!("MQTT settings changed: restarting the publisher (queued events stay in the outbox)");
            let _ = publisher.send(mqtt.clone());
            self.mqtt = mqtt;
        }
        self.cfg = new;
        info!(file = %shown, groups = %groups, "configuration reloaded from {shown} (groups: {groups})");
    }
}

/// Replaces the running publisher: the old one flushes to its outbox and stops, then
/// the new one opens the same outbox (nothing queued is lost). If the new one cannot
/// start, the old settings are started again.
pub(crate) fn swap_publisher(
    current: &mut Option<hearken::publish::client::Publisher>,
    settings: &mut Option<hearken::publish::client::MqttSettings>,
    new: Option<hearken::publish::client::MqttSettings>,
    feedback: &Option<hearken::publish::feedback::FeedbackSink>,
) {
    use hearken::publish::client::Publisher;
    use tracing::{error, info, warn};
    if let Some(p) = current.take() {
        if let Err(e) = p.shutdown() {
            warn!("stopping the MQTT publisher: {e:#}");
        }
    }
    let Some(s) = new else {
        info!("MQTT publishing is off");
        *settings = None;
        return;
    };
    match Publisher::take_over(s.clone(), feedback.clone()) {
        Ok(p) => {
            info!(host = %s.host, port = s.port, "MQTT publisher started for {}:{}", s.host, s.port);
            *current = Some(p);
            *settings = Some(s);
        }
        Err(e) => {
            error!("cannot start the MQTT publisher with the new settings: {e:#}; keeping the previous ones");
            if let Some(old) = settings.clone() {
                match Publisher::take_over(old, feedback.clone()) {
                    Ok(p) => *current = Some(p),
                    Err(e) => error!("cannot restart the MQTT publisher: {e:#}"),
                }
            }
        }
    }
}

/// One source of the daemon: its pipeline once it runs, or what it needs to start
/// again while its device cannot be opened.
struct SourceRun {
    plan: hearken::config::SourcePlan,
    spec: hearken::audio::source::SourceSpec,
    pipeline: Option<hearken::pipeline::Pipeline>,
    /// Not open yet (its device could not be opened): when to try again.
    retry_at: Option<std::time::Instant>,
    /// Sends its analysed audio to its clip writer.
    audio_tap: Option<crossbeam_channel::Sender<hearken::clips::AudioChunk>>,
    device_lost: bool,
    ready: bool,
    check: Option<hearken::service::StallCheck>,
}

/// Whether `spec` is a capture device (which may be unplugged and come back).
fn is_device(spec: &hearken::audio::source::SourceSpec) -> bool {
    use hearken::audio::source::SourceSpec;
    matches!(spec, SourceSpec::Default | SourceSpec::Device(_))
}

/// How often a source whose device cannot be opened is tried again.
const SOURCE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// What every source's pipeline shares.
struct Shared<'a> {
    model: &'a std::sync::Arc<Model>,
    cfg: &'a hearken::config::Config,
    fast: bool,
    home: Option<crossbeam_channel::Sender<hearken::store::HomeMsg>>,
    live: &'a std::sync::Arc<hearken::live::Live>,
    tx: &'a crossbeam_channel::Sender<hearken::pipeline::Message>,
}

impl SourceRun {
    /// Starts the pipeline with `detector`.
    fn start(&mut self, detector: hearken::detect::Detector, sh: &Shared<'_>) -> Result<()> {
        use hearken::pipeline::{Pipeline, PipelineSettings};
        let cfg = sh.cfg;
        let started = Pipeline::start(
            PipelineSettings {
                model: sh.model.clone(),
                source: self.spec.clone(),
                name: self.plan.name.clone(),
                gain: self.plan.gain,
                realtime: !sh.fast,
                ring_seconds: cfg.audio.ring_seconds,
                gate_dbfs: Some(cfg.audio.gate_dbfs),
                skip_quiet: cfg.model.skip_quiet_windows,
                window_s: Some(cfg.model.window_s),
                hop_s: Some(cfg.model.hop_s),
                detector,
                status_interval_s: cfg.detection.status_interval_s,
                hop_tap: None,
                home_tap: sh.home.clone(),
                live: Some(sh.live.clone()),
                audio_tap: self.audio_tap.clone(),
            },
            sh.tx.clone(),
        );
        match started {
            Ok(p) => {
                sh.live.set_source(
                    &self.plan.name,
                    &p.source_description,
                    p.source_stats.clone(),
                );
                self.pipeline = Some(p);
                self.retry_at = None;
                Ok(())
            }
            Err(e) => Err(e.context(format!("source {}", self.plan.name))),
        }
    }
}

pub(crate) fn run_daemon(
    config: Option<PathBuf>,
    source: Vec<String>,
    fast: bool,
    model: Option<String>,
    http: Option<String>,
    print_events: bool,
    mqtt: Mqtt,
) -> Result<ExitCode> {
    use hearken::pipeline::Message;
    use hearken::service::{self, Health, Notifier, StallCheck};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tracing::{debug, error, info, warn};

    // SIGHUP's default action is to terminate: take it over before anything else.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    // Stops every source (SIGINT/SIGTERM).
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let notifier = Notifier::from_env();
    let watchdog = service::watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );

    let overrides = Overrides {
        source,
        model,
        node_id: mqtt.node_id.clone(),
        http,
    };
    // Everything check-config checks, and only then devices and brokers.
    let Prepared {
        cfg,
        sources,
        model,
        adopted,
        trained,
        state_dir: state,
        broker,
        mqtt: mqtt_now,
    } = match prepare(config.as_deref(), &overrides, &mqtt) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("hearken: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    debug!(model = %model.name(), "model {} loaded", model.name());
    if let Some((w, h)) = adopted {
        info!(
            "{}'s trained detectors use {w} s windows every {h} s",
            model.name()
        );
    }
    if let Some((net, _)) = model.net() {
        let shared = match model.net_reads() {
            Some(t) => format!(" (its trained blocks only, on {t})"),
            None => String::new(),
        };
        info!(
            "{} runs the fine-tuned network {}{shared} beside its own network",
            model.name(),
            net.display()
        );
    }
    for d in &trained {
        let adapted = if d.home.is_some() {
            ", adapted to this home by `hearken adapt`"
        } else {
            ""
        };
        info!(group = %d.group, "group {}: trained detector (on {:.2}, off {:.2}{adapted})", d.group, d.on, d.off);
    }
    let _broker = match broker {
        Some(addr) => {
            let login = (!cfg.mqtt.username.is_empty())
                .then_some((cfg.mqtt.username.as_str(), cfg.mqtt.password.as_str()));
            let b = hearken::publish::broker::EmbeddedBroker::start(addr, login)?;
            info!(
                "embedded MQTT broker listening on {} (subscribe: mosquitto_sub -h {} -p {} -t '{}/#' -v)",
                b.addr,
                b.addr.ip(),
                b.addr.port(),
                cfg.mqtt.base_topic
            );
            Some(b)
        }
        None => None,
    };
    let all_groups: Vec<&str> = cfg.enabled_groups().map(|(n, _)| n.as_str()).collect();
    let live = Arc::new(hearken::live::Live::new(
        &cfg.node.id,
        model.name(),
        cfg.http.events_kept,
        &all_groups,
    ));
    for s in &sources {
        live.add_source(&s.plan.name);
    }
    // Bound before any audio flows: an address in use refuses the start.
    let http_server = match cfg.http.addr() {
        Ok(Some(addr)) => {
            let settings = hearken::http::HttpSettings::new(
                addr,
                &cfg.http,
                &cfg.privacy,
                state.join("clips"),
            );
            let chosen =
                overrides.http.is_some() || cfg.http.listen != hearken::config::DEFAULT_HTTP_LISTEN;
            match hearken::http::Server::start(settings, live.clone(), model.clone()) {
                Ok(server) => {
                    let auth = if cfg.http.token.is_empty() {
                        "no token: loopback only"
                    } else {
                        "bearer token required"
                    };
                    info!(
                        "HTTP API and page on http://{} ({auth}; e.g. curl -F \"audio=@clip.wav\" -XPOST http://{}/model/predict)",
                        server.addr(),
                        server.addr()
                    );
                    if !server.addr().ip().is_loopback() {
                        warn!(
                            "the HTTP server listens on {}, reachable from the network: every request needs the [http] token",
                            server.addr()
                        );
                    }
                    Some(server)
                }
                // The default address taken (another hearken running, say): this
                // one still starts, without the API. An address the owner chose is
                // refused like any other setting that cannot be applied.
                Err(e) if !chosen => {
                    warn!("{e:#}: the HTTP API is off for this run");
                    None
                }
                Err(e) => return Err(e),
            }
        }
        _ => None,
    };
    // One clip writer per source: each keeps its own source's recent audio.
    let mut clips: HashMap<String, hearken::clips::ClipWriter> = HashMap::new();
    if cfg.privacy.evidence_clips {
        let dir = state.join("clips");
        for s in &sources {
            let w = hearken::clips::ClipWriter::start(
                hearken::clips::ClipSettings {
                    privacy: cfg.privacy.clone(),
                    dir: dir.clone(),
                    window_s: cfg.model.window_s,
                    hop_s: cfg.model.hop_s,
                },
                model.clone(),
                live.clone(),
            )?;
            clips.insert(s.plan.name.clone(), w);
        }
        info!(
            "evidence clips on: {:.0} s before and {:.0} s after each event's onset, in {} (none where speech is heard)",
            cfg.privacy.clip_before_s,
            cfg.privacy.clip_after_s,
            dir.display()
        );
    }
    let home = start_home_store(&cfg, &state);
    // Verdicts from the feedback topics go to the store (the publisher keeps this
    // sender until it stops, so the store outlives it).
    let feedback = home
        .as_ref()
        .map(|(tx, _)| hearken::store::feedback_sink(tx.clone()));
    let publisher = mqtt_now
        .clone()
        .map(|s| hearken::publish::client::Publisher::start(s, feedback.clone()))
        .transpose()?;
    live.set_publisher(publisher.as_ref().map(|p| p.stats()));
    let (tx, rx) = crossbeam_channel::unbounded();
    let (home_tx, home_thread) = match home {
        Some((t, h)) => (Some(t), Some(h)),
        None => (None, None),
    };
    let several = sources.len() > 1;
    let mut runs: Vec<SourceRun> = Vec::new();
    let mut failed_at_start = Vec::new();
    {
        let shared = Shared {
            model: &model,
            cfg: &cfg,
            fast,
            home: home_tx.clone(),
            live: &live,
            tx: &tx,
        };
        for s in sources {
            let mut run = SourceRun {
                audio_tap: clips.get(&s.plan.name).and_then(|c| c.audio_sender()),
                plan: s.plan,
                spec: s.spec,
                pipeline: None,
                retry_at: None,
                device_lost: false,
                ready: false,
                check: None,
            };
            let groups = s.detector.group_names().join(", ");
            match run.start(s.detector, &shared) {
                Ok(()) => {
                    let p = run.pipeline.as_ref().expect("started");
                    info!(
                        source = %run.plan.name,
                        description = %p.source_description,
                        model = %model.name(),
                        groups = %groups,
                        "listening on {} with {} (groups: {groups})",
                        if several || run.plan.scoped {
                            format!("{} ({})", run.plan.name, p.source_description)
                        } else {
                            p.source_description.clone()
                        },
                        model.name()
                    );
                }
                // With one source nothing can be heard, and a file or stdin that
                // cannot be read is a mistake in the configuration, not a device
                // that may come back: refuse to start.
                Err(e) if !several || !is_device(&run.spec) => return Err(e),
                // With several, one bad device does not stop the others: it is
                // tried again every few seconds.
                Err(e) => {
                    error!(
                        source = %run.plan.name,
                        "{e:#}; the other sources run, and this one is tried again every {} s",
                        SOURCE_RETRY.as_secs()
                    );
                    failed_at_start.push(run.plan.name.clone());
                    run.retry_at = Some(Instant::now() + SOURCE_RETRY);
                }
            }
            runs.push(run);
        }
    }
    if runs.iter().all(|r| r.pipeline.is_none()) {
        bail!("no source could be opened: nothing to listen to");
    }
    let events_seen = Arc::new(AtomicU64::new(0));
    let (pub_tx, pub_rx) = crossbeam_channel::unbounded();
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded::<(String, bool)>();
    for name in &failed_at_start {
        let _ = audio_tx.send((name.clone(), false));
    }
    let printer = {
        let events_seen = events_seen.clone();
        let live = live.clone();
        let mut settings = mqtt_now.clone();
        std::thread::spawn(move || {
            let mut publisher = publisher;
            let mut pub_rx = pub_rx;
            let mut last_overruns: HashMap<String, u64> = HashMap::new();
            loop {
                let msg = crossbeam_channel::select! {
                    recv(rx) -> m => match m {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    recv(audio_rx) -> ok => {
                        if let (Ok((source, ok)), Some(p)) = (ok, &publisher) {
                            p.set_listening(&source, ok);
                        }
                        continue;
                    },
                    recv(pub_rx) -> s => {
                        match s {
                            Ok(s) => {
                                swap_publisher(&mut publisher, &mut settings, s, &feedback);
                                live.set_publisher(publisher.as_ref().map(|p| p.stats()));
                            }
                            Err(_) => pub_rx = crossbeam_channel::never(),
                        }
                        continue;
                    },
                };
                if let (Message::Status(s), Some(p)) = (&msg, &publisher) {
                    p.send_top(
                        &s.source,
                        hearken::publish::TopReport {
                            top: s.top.clone(),
                            dbfs: s.dbfs,
                        },
                    );
                }
                match msg {
                    Message::Event(e) => {
                        if e.state == hearken::detect::EventState::Start {
                            events_seen.fetch_add(1, Ordering::Relaxed);
                        }
                        let mut e = e;
                        if e.state == hearken::detect::EventState::End {
                            e.clip = live.clip_of(e.id);
                        }
                        live.event(&e);
                        if let Some(c) = clips.get(&e.source) {
                            c.event(&e);
                        }
                        if let Some(p) = &publisher {
                            p.send(e.clone());
                        }
                        let text = format!(
                            "event {:?} {} {} at {:.2} s (score {:.2})",
                            e.state, e.group, e.id, e.start_s, e.peak_score
                        );
                        let text = if several {
                            format!("{}: {text}", e.source)
                        } else {
                            text
                        };
                        if print_events {
                            if let Ok(line) = serde_json::to_string(&e) {
                                println!("{line}");
                            }
                            debug!(source = %e.source, group = %e.group, event_id = %e.id, state = ?e.state, safety = e.safety, start_s = e.start_s, score = e.peak_score, "{text}");
                        } else {
                            info!(source = %e.source, group = %e.group, event_id = %e.id, state = ?e.state, safety = e.safety, start_s = e.start_s, score = e.peak_score, "{text}");
                        }
                    }
                    Message::Status(s) if print_events => {
                        let top: Vec<String> = s
                            .top
                            .iter()
                            .map(|p| format!("{} {:.2}", p.label, p.probability))
                            .collect();
                        let who = if several {
                            format!("{} ", s.source)
                        } else {
                            String::new()
                        };
                        info!(
                            source = %s.source,
                            stream_s = s.t_s,
                            dbfs = s.dbfs,
                            cpu_percent = s.cpu_percent,
                            overruns = s.overruns,
                            "{who}status t={:.0}s level={:.1} dBFS top=[{}] cpu={:.1}% overruns={} gated={}/{}",
                            s.t_s,
                            s.dbfs,
                            top.join(", "),
                            s.cpu_percent,
                            s.overruns,
                            s.gated_calls,
                            s.gated_calls + s.model_calls
                        );
                    }
                    // Without --print-events, only news worth a line: dropped audio.
                    Message::Status(s) => {
                        let last = last_overruns.entry(s.source.clone()).or_insert(0);
                        if s.overruns > *last {
                            warn!(
                                source = %s.source,
                                dropped = s.overruns - *last,
                                "{}: {} samples dropped at capture since the last report (the pipeline fell behind)",
                                s.source,
                                s.overruns - *last
                            );
                            *last = s.overruns;
                        }
                    }
                }
            }
            // The pipelines have ended: pending clips are cut with the audio there is.
            for (_, c) in clips {
                c.stop();
            }
            publisher
        })
    };

    // The control loop: readiness, the watchdog, status, reloads, and sources
    // whose device could not be opened.
    let mut running = Running {
        file: config,
        overrides,
        mqtt_flags: mqtt,
        model: model.clone(),
        cfg,
        mqtt: mqtt_now,
        trained,
        live: live.clone(),
    };
    let describe = |runs: &[SourceRun]| -> String {
        let names: Vec<String> = runs
            .iter()
            .map(|r| match &r.pipeline {
                Some(p) if runs.len() == 1 && !r.plan.scoped => p.source_description.clone(),
                Some(p) => format!("{} ({})", r.plan.name, p.source_description),
                None => format!("{} (not open)", r.plan.name),
            })
            .collect();
        names.join(", ")
    };
    let status_line = |runs: &[SourceRun], stalled: Option<service::Stage>| {
        let n = events_seen.load(Ordering::Relaxed);
        let base = format!(
            "listening on {} with {}, {n} events",
            describe(runs),
            model.name()
        );
        match stalled {
            Some(stage) => format!("{base}; {stage} stalled"),
            None => base,
        }
    };
    const STATUS_EVERY: Duration = Duration::from_secs(10);
    let t0 = Instant::now();
    let mut ready = false;
    let mut stalled: Option<service::Stage> = None;
    let mut next_ping = Instant::now();
    let mut next_status = Instant::now() + STATUS_EVERY;
    // Done when every open source has ended (files, stdin) and no device is still
    // waiting to be opened: a microphone that appears later keeps the daemon up.
    let finished = |runs: &[SourceRun]| {
        runs.iter().all(|r| match &r.pipeline {
            Some(p) => p.source_finished(),
            None => r.retry_at.is_none(),
        })
    };
    while !stop.load(Ordering::Acquire) && !finished(&runs) {
        let now = Instant::now();
        // A source whose device could not be opened: try again, with a detector
        // from the configuration in force.
        let shared = Shared {
            model: &model,
            cfg: &running.cfg,
            fast,
            home: home_tx.clone(),
            live: &live,
            tx: &tx,
        };
        for r in runs.iter_mut() {
            if r.retry_at.is_none_or(|at| now < at) {
                continue;
            }
            r.retry_at = Some(now + SOURCE_RETRY);
            let opened = prepare::source_detector(&running.cfg, &model, &running.trained, &r.plan)
                .map_err(anyhow::Error::msg)
                .and_then(|d| r.start(d, &shared));
            match opened {
                Ok(()) => {
                    info!(source = %r.plan.name, "source {} is open now", r.plan.name);
                    let _ = audio_tx.send((r.plan.name.clone(), true));
                }
                Err(e) => debug!(source = %r.plan.name, "{e:#}"),
            }
        }
        // The capture thread logs the loss and reopens the device; here the MQTT
        // availability and systemd's status line follow it.
        let mut lost_now = Vec::new();
        let mut changed = false;
        for r in runs.iter_mut() {
            let Some(p) = &r.pipeline else { continue };
            let lost = p.source_stats.device_lost.load(Ordering::Acquire);
            if lost != r.device_lost {
                r.device_lost = lost;
                changed = true;
                let _ = audio_tx.send((r.plan.name.clone(), !lost));
            }
            if lost {
                lost_now.push(r.plan.name.clone());
            }
        }
        if changed {
            let line = match lost_now.len() {
                0 => status_line(&runs, stalled),
                _ if !several => format!(
                    "{}; audio device lost, reconnecting",
                    status_line(&runs, stalled)
                ),
                _ => format!(
                    "{}; audio device of {} lost, reconnecting",
                    status_line(&runs, stalled),
                    lost_now.join(", ")
                ),
            };
            let _ = notifier.send(&service::status_message(&line));
        }
        if hup.swap(false, Ordering::AcqRel) {
            let _ = notifier.send(&service::reloading_message(service::monotonic_usec()));
            running.reload(&mut runs, &pub_tx);
            if ready {
                let _ = notifier.send(&service::ready_message(&status_line(&runs, stalled)));
            }
        }
        for r in runs.iter_mut() {
            let Some(p) = &r.pipeline else { continue };
            if r.ready || p.source_stats.samples.load(Ordering::Relaxed) == 0 {
                continue;
            }
            r.ready = true;
            if let Some(wd) = watchdog {
                let limit = wd.as_secs_f64();
                r.check = Some(StallCheck::new(
                    t0.elapsed().as_secs_f64(),
                    p.snapshot(),
                    limit,
                    (2.0 * p.hop_s + 1.0).max(limit),
                ));
            }
        }
        if !ready && runs.iter().any(|r| r.ready) {
            ready = true;
            // The plans are built and audio flows: what only start-up needed
            // (the parsed graph, freed heap, start-up code) goes back.
            model.release_graph();
            hearken::memory::trim_heap();
            hearken::memory::drop_startup_code();
            let _ = notifier.send(&service::ready_message(&status_line(&runs, None)));
            debug!("audio flows: ready");
            if let Some(wd) = watchdog {
                info!(
                    watchdog_s = wd.as_secs_f64(),
                    "watchdog enabled: pinging every {:.1} s while capture, DSP and inference make progress",
                    wd.as_secs_f64() / 2.0
                );
            }
        }
        if let (true, Some(wd)) = (ready, watchdog) {
            if now >= next_ping {
                next_ping = now + wd / 2;
                let mut worst: Option<(String, service::Stage, f64)> = None;
                for r in runs.iter_mut() {
                    let (Some(p), Some(c)) = (&r.pipeline, r.check.as_mut()) else {
                        continue;
                    };
                    if let Health::Stalled { stage, idle_s } =
                        c.observe(t0.elapsed().as_secs_f64(), p.snapshot())
                    {
                        worst.get_or_insert((r.plan.name.clone(), stage, idle_s));
                    }
                }
                match worst {
                    None => {
                        let _ = notifier.send(service::WATCHDOG_MESSAGE);
                        if let Some(stage) = stalled.take() {
                            info!(stage = %stage, "the {stage} stage is making progress again; watchdog pings resume");
                            let _ =
                                notifier.send(&service::status_message(&status_line(&runs, None)));
                        }
                    }
                    Some((source, stage, idle_s)) => {
                        if stalled.is_none() {
                            let whose = if several {
                                format!("source {source}: ")
                            } else {
                                String::new()
                            };
                            error!(
                                source = %source,
                                stage = %stage,
                                idle_s = idle_s,
                                "{whose}the {stage} stage has made no progress for {idle_s:.1} s; no longer pinging the watchdog (systemd will restart hearken)"
                            );
                            stalled = Some(stage);
                            let _ = notifier
                                .send(&service::status_message(&status_line(&runs, stalled)));
                        }
                    }
                }
            }
        }
        if ready && now >= next_status {
            next_status = now + STATUS_EVERY;
            let _ = notifier.send(&service::status_message(&status_line(&runs, stalled)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = notifier.send(&service::stopping_message(
        "stopping: draining the pipeline",
    ));
    // The store's last sender here: it ends once the pipelines and the publisher
    // have stopped too.
    drop(home_tx);
    // Every pipeline stops (all at once), then each drains; the totals are summed.
    for p in runs.iter().filter_map(|r| r.pipeline.as_ref()) {
        p.stop_flag().store(true, Ordering::Release);
    }
    let mut summary = hearken::pipeline::Summary::default();
    let mut first_error = None;
    for r in runs {
        let Some(p) = r.pipeline else { continue };
        match p.wait() {
            Ok(s) => {
                summary.audio_s += s.audio_s;
                summary.events += s.events;
                summary.model_calls += s.model_calls;
                summary.gated_calls += s.gated_calls;
                summary.skipped_calls += s.skipped_calls;
                summary.overruns += s.overruns;
            }
            Err(e) => {
                error!(source = %r.plan.name, "source {}: {e:#}", r.plan.name);
                first_error.get_or_insert(e);
            }
        }
    }
    drop(tx);
    drop(pub_tx);
    // The pipelines have closed every event; the publisher flushes and says offline.
    let stopped = match printer.join() {
        Ok(Some(p)) => p.shutdown(),
        _ => Ok(()),
    };
    // Every sender of the store is gone now: it writes what it has and ends.
    if let Some(h) = home_thread {
        let _ = h.join();
    }
    if let Some(server) = http_server {
        server.stop();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    stopped?;
    info!(
        audio_s = summary.audio_s,
        events = summary.events,
        model_calls = summary.model_calls,
        gated_calls = summary.gated_calls,
        skipped_calls = summary.skipped_calls,
        overruns = summary.overruns,
        "stopped after {:.1} s of audio: {} events, {} model calls, {} gated, {} skipped while quiet, {} samples dropped",
        summary.audio_s,
        summary.events,
        summary.model_calls,
        summary.gated_calls,
        summary.skipped_calls,
        summary.overruns
    );
    Ok(ExitCode::SUCCESS)
}
