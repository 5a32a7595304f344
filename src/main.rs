//! The `hearken` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use hearken::classify::{classify_file, render_text, ClassifyOptions, FileError};
use hearken::model::{Model, DEFAULT_MODEL};

#[derive(Parser)]
#[command(
    name = "hearken",
    version,
    about = "Home-sound safety daemon: AudioSet sound recognition on the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify audio files (WAV or FLAC): top AudioSet labels per clip and per window.
    Classify {
        /// Model name (efficientat-mn04, yamnet) or a directory holding model.toml.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Labels to report per clip and per window.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Window length in seconds (default: the model's, 10 s).
        #[arg(long)]
        window: Option<f64>,
        /// Hop between windows in seconds (default: the model's, 1 s).
        #[arg(long)]
        hop: Option<f64>,
        /// Skip this many seconds at the start of each file.
        #[arg(long, default_value_t = 0.0)]
        start: f64,
        /// Only report these labels (display names or AudioSet ids, comma-separated).
        #[arg(long, value_delimiter = ',')]
        filter: Vec<String>,
        /// One JSON object per file (IBM MAX shape) instead of text.
        #[arg(long)]
        json: bool,
        /// With --json, add each window's full score vector ("scores").
        #[arg(long)]
        patches: bool,
        /// Audio files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the daemon: listen, classify rolling windows, detect and report events.
    Run {
        /// Configuration file (TOML); without it, built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Audio source: default | device:NAME | file:PATH | stdin:RATE:CHANNELS.
        #[arg(long)]
        source: Option<String>,
        /// With a file source, process as fast as possible instead of in real time.
        #[arg(long)]
        fast: bool,
        /// Model name or directory (overrides the config).
        #[arg(long)]
        model: Option<String>,
        /// Print each event as a JSON line on stdout and a status line to stderr.
        #[arg(long)]
        print_events: bool,
        /// Publish events to this MQTT broker: mqtt://[user:pass@]host[:port] or
        /// mqtts://… (TLS).
        #[arg(long)]
        mqtt: Option<String>,
        /// When no broker is configured, run the embedded one ([mqtt]
        /// embedded_listen, 127.0.0.1:1883 by default) and publish to it.
        #[arg(long)]
        embedded_broker: bool,
        /// Node id in MQTT topics (overrides node.id).
        #[arg(long)]
        node_id: Option<String>,
        /// Directory for state that must survive restarts (the MQTT outbox).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a configuration file (and its labels against the configured model).
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Measure audio seconds processed per CPU second, per stage.
    Bench {
        /// Model name or directory.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Times the file is processed.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Recording to process.
        file: PathBuf,
    },
    /// List audio input devices (for --source device:NAME) and their configurations.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hearken: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify {
            model,
            top,
            window,
            hop,
            start,
            filter,
            json,
            patches,
            files,
        } => {
            let model = Model::open(&model)?;
            let filter = if filter.is_empty() {
                None
            } else {
                let mut idx = Vec::new();
                for f in &filter {
                    match model.labels().find(f) {
                        Some(i) => idx.push(i),
                        None => bail!("--filter: '{f}' is not a label of model {}", model.name()),
                    }
                }
                Some(idx)
            };
            let opts = ClassifyOptions {
                top_k: top,
                window_s: window,
                hop_s: hop,
                start_s: start,
                filter,
                keep_scores: patches,
            };
            let mut failed = 0;
            for f in &files {
                match classify_file(&model, f, &opts) {
                    Ok(r) => {
                        if json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            print!("{}", render_text(&r));
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        let message = format!("{e:#}");
                        if json {
                            let err = FileError {
                                file: f.display().to_string(),
                                status: "error",
                                message,
                            };
                            println!("{}", serde_json::to_string(&err)?);
                        } else {
                            eprintln!("hearken: {message}");
                        }
                    }
                }
            }
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Run {
            config,
            source,
            fast,
            model,
            print_events,
            mqtt,
            embedded_broker,
            node_id,
            state_dir,
        } => run_daemon(
            config,
            source,
            fast,
            model,
            print_events,
            Mqtt {
                url: mqtt,
                embedded_broker,
                node_id,
                state_dir,
            },
        ),
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Bench {
            model,
            repeat,
            json,
            file,
        } => {
            let model = Model::open(&model)?;
            let res = hearken::bench::run(&model, &file, repeat)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                println!("model {} on {} (x{repeat})", model.name(), file.display());
                println!(
                    "{:<22} {:>10} {:>10} {:>14}",
                    "stage", "audio s", "cpu s", "audio s/cpu s"
                );
                for r in &res {
                    println!(
                        "{:<22} {:>10.1} {:>10.3} {:>14.1}",
                        r.stage, r.audio_s, r.cpu_s, r.audio_s_per_cpu_s
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices => {
            let devices = hearken::audio::source::list_devices()?;
            if devices.is_empty() {
                println!("no audio input devices found");
                println!("hint: use --source file:PATH, or pipe raw s16le PCM with --source stdin:RATE:CHANNELS");
            }
            for d in &devices {
                let default = if d.is_default { " (default)" } else { "" };
                println!("{}{default}  {}", d.name, d.description);
                if let Some(c) = &d.default_config {
                    println!("    uses: {c}");
                }
                for line in hearken::audio::source::config_summary(&d.configs) {
                    println!("    supports: {line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// MQTT options from the command line.
struct Mqtt {
    url: Option<String>,
    embedded_broker: bool,
    node_id: Option<String>,
    state_dir: Option<PathBuf>,
}

/// Where state lives: `--state-dir`, systemd's `$STATE_DIRECTORY`, or
/// `$XDG_STATE_HOME/hearken` (`~/.local/state/hearken`).
fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) => PathBuf::from(d).join("hearken"),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/hearken"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/hearken")),
    }
}

/// Where the embedded broker should listen: `Some` when it is asked for (config or
/// `--embedded-broker`) and no other broker is configured.
fn embedded_broker_addr(
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
fn mqtt_settings(
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
    s.groups = cfg
        .enabled_groups()
        .map(|(n, g)| (n.clone(), g.safety))
        .collect();
    s.model = model.to_string();
    Ok(Some(s))
}

fn run_daemon(
    config: Option<PathBuf>,
    source: Option<String>,
    fast: bool,
    model: Option<String>,
    print_events: bool,
    mqtt: Mqtt,
) -> Result<ExitCode> {
    use hearken::audio::source::SourceSpec;
    use hearken::config::Config;
    use hearken::detect::{Detector, Identity};
    use hearken::pipeline::{Message, Pipeline, PipelineSettings};
    use std::sync::Arc;

    let mut cfg = match &config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(s) = source {
        cfg.audio.source = s;
    }
    if let Some(m) = model {
        cfg.set_model(&m);
    }
    let spec: SourceSpec = cfg
        .audio
        .source
        .parse()
        .map_err(|e| anyhow::anyhow!("--source / audio.source: {e}"))?;
    let model = Arc::new(Model::open(&cfg.model.name)?);
    cfg.check_labels(model.labels())?;
    let ident = Identity {
        node: cfg.node.id.clone(),
        room: cfg.node.room.clone(),
        model: model.name().to_string(),
    };
    if let Some(id) = mqtt.node_id.clone() {
        cfg.node.id = id;
    }
    let ident = Identity {
        node: cfg.node.id.clone(),
        ..ident
    };
    let detector = Detector::from_config(cfg.enabled_groups(), model.labels(), ident)
        .map_err(anyhow::Error::msg)?;
    let _broker = match embedded_broker_addr(&cfg, &mqtt)? {
        Some(addr) => {
            let login = (!cfg.mqtt.username.is_empty())
                .then_some((cfg.mqtt.username.as_str(), cfg.mqtt.password.as_str()));
            let b = hearken::publish::broker::EmbeddedBroker::start(addr, login)?;
            eprintln!(
                "hearken: embedded MQTT broker listening on {} (subscribe: mosquitto_sub -h {} -p {} -t '{}/#' -v)",
                b.addr,
                b.addr.ip(),
                b.addr.port(),
                cfg.mqtt.base_topic
            );
            Some(b)
        }
        None => None,
    };
    let publisher = mqtt_settings(&cfg, &mqtt, model.name())?
        .map(hearken::publish::client::Publisher::start)
        .transpose()?;
    let groups = detector.group_names().join(", ");
    let (tx, rx) = crossbeam_channel::unbounded();
    let pipeline = Pipeline::start(
        PipelineSettings {
            model: model.clone(),
            source: spec.clone(),
            realtime: !fast,
            ring_seconds: cfg.audio.ring_seconds,
            gate_dbfs: Some(cfg.audio.gate_dbfs),
            window_s: Some(cfg.model.window_s),
            hop_s: Some(cfg.model.hop_s),
            detector,
            status_interval_s: cfg.detection.status_interval_s,
        },
        tx,
    )?;
    let stop = pipeline.stop_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    eprintln!(
        "hearken: listening on {} with {} (groups: {groups})",
        pipeline.source_description,
        model.name()
    );
    let printer = std::thread::spawn(move || {
        let mut last_overruns = 0;
        for msg in rx.iter() {
            if let (Message::Status(s), Some(p)) = (&msg, &publisher) {
                p.send_top(hearken::publish::TopReport {
                    top: s.top.clone(),
                    dbfs: s.dbfs,
                });
            }
            match msg {
                Message::Event(e) => {
                    if let Some(p) = &publisher {
                        p.send(e.clone());
                    }
                    if print_events {
                        if let Ok(line) = serde_json::to_string(&e) {
                            println!("{line}");
                        }
                    } else {
                        eprintln!(
                            "hearken: event {:?} {} {} at {:.2} s (score {:.2})",
                            e.state, e.group, e.id, e.start_s, e.peak_score
                        );
                    }
                }
                Message::Status(s) if print_events => {
                    let top: Vec<String> = s
                        .top
                        .iter()
                        .map(|p| format!("{} {:.2}", p.label, p.probability))
                        .collect();
                    eprintln!(
                        "hearken: status t={:.0}s level={:.1} dBFS top=[{}] cpu={:.1}% overruns={} gated={}/{}",
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
                    if s.overruns > last_overruns {
                        eprintln!(
                            "hearken: warning: {} samples dropped at capture since the last report (the pipeline fell behind)",
                            s.overruns - last_overruns
                        );
                        last_overruns = s.overruns;
                    }
                }
            }
        }
        publisher
    });
    let summary = pipeline.wait()?;
    // The pipeline has closed every event; the publisher flushes and says offline.
    if let Ok(Some(p)) = printer.join() {
        p.shutdown()?;
    }
    eprintln!(
        "hearken: stopped after {:.1} s of audio: {} events, {} model calls, {} gated, {} samples dropped",
        summary.audio_s, summary.events, summary.model_calls, summary.gated_calls, summary.overruns
    );
    Ok(ExitCode::SUCCESS)
}

/// `hearken check-config FILE`: every error on its own line (stderr) and failure, or
/// a one-line summary and success.
fn check_config(file: &std::path::Path) -> ExitCode {
    use hearken::config::Config;

    let shown = file.display();
    let cfg = match Config::load_all(file) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let model = match Model::open(&cfg.model.name) {
        Ok(model) => {
            if let Err(e) = cfg.check_labels(model.labels()) {
                let text = std::fs::read_to_string(file).unwrap_or_default();
                eprintln!("{}", e.in_file(&shown.to_string(), &text));
                return ExitCode::FAILURE;
            }
            format!("model {}, labels checked", model.name())
        }
        Err(e) => {
            println!(
                "{shown}: note: labels not checked: cannot open model {:?}: {e:#}",
                cfg.model.name
            );
            format!("model {}, labels not checked", cfg.model.name)
        }
    };
    let enabled: Vec<&str> = cfg.enabled_groups().map(|(n, _)| n.as_str()).collect();
    let groups = match enabled.len() {
        0 => "no groups enabled".to_string(),
        n => format!("{n} groups enabled: {}", enabled.join(", ")),
    };
    println!("{shown}: ok ({groups}; {model})");
    ExitCode::SUCCESS
}
