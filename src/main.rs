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
    /// Diagnostics level: error, warn, info, debug or trace [default: info; without
    /// this flag RUST_LOG is honoured].
    #[arg(long, global = true, value_enum)]
    log_level: Option<LogLevel>,
    #[command(subcommand)]
    command: Command,
}

/// `--log-level` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::level_filters::LevelFilter {
    fn from(l: LogLevel) -> Self {
        use tracing::level_filters::LevelFilter;
        match l {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

// Parsed once at start-up and matched once: the size of its largest variant (train's
// options) costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
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
        /// Anonymise each file before classifying it, as the SIFIS-Home routes do:
        /// `scramble` (blocks of --block-s shuffled) or `dp_noise` (Laplace noise
        /// --noise-snr-db below the signal, low-passed at --cutoff-hz).
        #[arg(long, value_parser = ["scramble", "dp_noise"])]
        anonymize: Option<String>,
        /// Block length for --anonymize scramble, seconds (0.5 or less breaks words).
        #[arg(long, default_value_t = 0.5)]
        block_s: f64,
        /// Noise level for --anonymize dp_noise, dB below each channel's RMS.
        #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
        noise_snr_db: f64,
        /// Low-pass cutoff for --anonymize dp_noise, Hz.
        #[arg(long, default_value_t = 8000.0)]
        cutoff_hz: f64,
        /// Seed for --anonymize.
        #[arg(long, default_value_t = 1)]
        anonymize_seed: u64,
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
        /// Serve the local HTTP API and page here (host:port; overrides [http]
        /// listen; "" turns it off).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
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
    /// Measure detection on labelled recordings mixed into home backgrounds: per group
    /// recall, false alarms per hour, latency, and a threshold sweep.
    Eval {
        /// Labelled folder with labels.csv (default: $HEARKEN_SHARED/eval-dev).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Configuration file (groups, thresholds); without it, built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model name or directory (overrides the config).
        #[arg(long)]
        model: Option<String>,
        /// Which recordings: test (held out by source recording), train, or all.
        #[arg(long, default_value = "test")]
        split: String,
        #[command(flatten)]
        mixing: MixArgs,
        /// Sample rate of the mixture (the simulated device), Hz.
        #[arg(long, default_value_t = 48_000)]
        rate: u32,
        /// Channels of the mixture.
        #[arg(long, default_value_t = 2)]
        channels: u16,
        /// At most this many event clips per group (chosen by the seed).
        #[arg(long)]
        max_per_group: Option<usize>,
        /// Seconds per event slot in the mixture.
        #[arg(long, default_value_t = 30.0)]
        slot: f64,
        /// Seconds of background only before the first event.
        #[arg(long, default_value_t = 60.0)]
        lead: f64,
        /// Hours of background without events added to the false-alarm count
        /// (the held-out ordinary sounds in new orders, levels and two-sound
        /// mixes, in 30-minute streams): one false alarm per hour cannot be
        /// measured on the mixture's own hour.
        #[arg(long, default_value_t = 0.0)]
        background_h: f64,
        /// Where the mixture WAV goes (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write recall against false alarms per hour as SVG here.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Learn a detector per group on the model's embeddings from labelled recordings
    /// mixed into home backgrounds; writes <group>.json files the daemon loads.
    Train {
        /// Labelled folders (labels.csv); default: the training part of
        /// $HEARKEN_SHARED/eval-dev and all of $HEARKEN_SHARED/train-extra. A folder
        /// given here is used whole.
        #[arg(long)]
        data: Vec<PathBuf>,
        /// Labelled folders used whole on top of the `--data` ones (or the defaults),
        /// e.g. $HEARKEN_SHARED/train-candidates, to measure what a source adds.
        #[arg(long)]
        also: Vec<PathBuf>,
        /// Configuration file (groups and their timing); without it, the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Model name or directory (overrides the config).
        #[arg(long)]
        model: Option<String>,
        /// Groups to train.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "glass,gunshot,siren,smoke_alarm,scream"
        )]
        groups: Vec<String>,
        /// Where the detectors go (default: the model's `detectors` folder).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        mixing: MixArgs,
        /// At most this many clips per group.
        #[arg(long, default_value_t = 60)]
        max_per_group: usize,
        /// Target false alarms per hour on the cross-validation mixtures.
        #[arg(long, default_value_t = 0.5)]
        target_fa: f64,
        /// Placements of each clip per SNR, each over other background.
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// Feature kinds to try: scores (class log-odds), embedding, embedding_scores.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "scores,embedding,embedding_scores"
        )]
        features: Vec<String>,
        /// L2 penalties to try.
        #[arg(long, value_delimiter = ',', default_value = "0.0003,0.003,0.03")]
        l2: Vec<f64>,
        /// Window the detectors are trained on and the daemon then uses, seconds
        /// (default: [model] window_s if the configuration sets it, else 2).
        #[arg(long)]
        window_s: Option<f64>,
        /// Hop between windows, seconds (default: [model] hop_s if set, else 0.5).
        #[arg(long)]
        hop_s: Option<f64>,
        /// Hidden-layer sizes to try (0: logistic regression; more: a small MLP).
        #[arg(long, value_delimiter = ',', default_value = "0,16")]
        hidden: Vec<usize>,
        /// Cross-validation folds, dealt by source recording.
        #[arg(long, default_value_t = 2)]
        folds: usize,
        /// How background sounds are dealt to the folds: `recording` (each source
        /// recording whole) or `kind` (each label whole, so false alarms are
        /// counted on kinds of sound the fold's fit never heard).
        #[arg(long, default_value = "recording", value_parser = ["recording", "kind"])]
        background_folds: String,
        /// Keep the scored training mixtures in this folder and read them back on
        /// the next run when clips, mixing and model settings are unchanged (a
        /// retrain that only tries other candidates then skips the model).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Share of the cross-validated recall the AudioSet evidence gate must
        /// keep; the strictest gate level that does is chosen (0: the strictest
        /// level tried, ignoring recall; above 1: no gate).
        #[arg(long, default_value_t = 0.9)]
        gate_keep: f64,
        /// Hard-negative mining: share of the negative windows, those a fitted
        /// detector scores highest, that count --hard-weight times in a refit of
        /// the best candidates (0: no mining).
        #[arg(long, default_value_t = 0.02)]
        hard_share: f64,
        /// How many times a mined hard negative counts.
        #[arg(long, default_value_t = 4)]
        hard_weight: usize,
        /// `heads`: small detectors on the model's embedding and scores; `net`:
        /// fine-tune the network itself on the mixtures, one output per group
        /// (needs Python with torch: Debian's python3-torch); `auto`: both, and
        /// each group keeps whichever wins the cross-validation (heads alone,
        /// with a warning, when torch is missing); `crnn`: a small frame-level
        /// CNN + GRU event detector on the log-mels for every group instead.
        #[arg(long, default_value = "auto", value_parser = ["heads", "net", "auto", "crnn"])]
        method: String,
        /// With --method auto: how much more cross-validated recall the network
        /// needs than the best head to take a group.
        #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
        net_margin: f64,
        /// With --method net or auto: at most this many clips per group train the
        /// network (default: all); the mixtures take --max-per-group of them.
        #[arg(long)]
        net_max_per_group: Option<usize>,
        /// With --method net: passes over the training windows.
        #[arg(long, default_value_t = 6)]
        epochs: usize,
        /// With --method net: training windows drawn per pass.
        #[arg(long, default_value_t = 2000)]
        net_windows: usize,
        /// With --method net: the first of mn04's blocks (0-16) that is trained;
        /// the ones below stay as shipped.
        #[arg(long, default_value_t = 10)]
        train_from: usize,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List audio input devices (for --source device:NAME) and their configurations.
    Devices,
    /// Teach the trained detectors this home's own false alarms, from the home
    /// store the daemon keeps (no audio): per group, a correction that only
    /// lowers scores and the smallest raise of the thresholds that brings the
    /// expected false alarms within [learning] false_alarms_per_week, as long as
    /// validation recall drops by at most [learning] max_recall_drop. The adapted
    /// detectors go to <state dir>/adapted; the daemon takes them on SIGHUP or
    /// restart.
    Adapt(AdaptArgs),
    /// Learn a household's own sound — its smoke alarm, doorbell, a beep of its
    /// own — from 3 to 10 examples, given as files (--file) or recorded from the
    /// microphone with prompts. Trains a detector for GROUP on the examples mixed
    /// into the shared home sounds, reports its cross-validated recall and false
    /// alarms, and keeps it in <state dir>/enrolled/GROUP; a new group is added to
    /// the configuration file. The daemon takes it on SIGHUP or restart.
    Enroll(EnrollArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hearken::logging::init(cli.log_level.map(Into::into));
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
            anonymize,
            block_s,
            noise_snr_db,
            cutoff_hz,
            anonymize_seed,
            files,
        } => {
            if !(block_s.is_finite()
                && block_s > 0.0
                && noise_snr_db.is_finite()
                && cutoff_hz > 0.0)
            {
                bail!("--block-s and --cutoff-hz must be above 0 and --noise-snr-db a number");
            }
            let anonymize = anonymize.map(|a| match a.as_str() {
                "scramble" => hearken::privacy::Anonymize::Scramble {
                    block_s,
                    seed: anonymize_seed,
                },
                _ => hearken::privacy::Anonymize::DpNoise {
                    snr_db: noise_snr_db,
                    cutoff_hz,
                    seed: anonymize_seed,
                },
            });
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
                anonymize,
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
            http,
        } => run_daemon(
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
        Command::Eval {
            data,
            config,
            model,
            split,
            mixing: MixArgs { seed, snr },
            rate,
            channels,
            max_per_group,
            slot,
            lead,
            background_h,
            work_dir,
            json,
            plot,
        } => {
            use hearken::eval::{mix::MixSpec, run};
            let mut cfg = effective_config(
                config.as_deref(),
                &Overrides {
                    source: None,
                    model,
                    node_id: None,
                    http: None,
                },
            )?;
            let split: hearken::eval::dataset::Split = split
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--split: {e}"))?;
            if !(1..=8).contains(&channels) {
                bail!("--channels must be 1 to 8, not {channels}");
            }
            if !(8_000..=192_000).contains(&rate) {
                bail!("--rate must be 8000 to 192000 Hz, not {rate}");
            }
            if slot.is_nan() || slot < 5.0 || lead.is_nan() || lead < 0.0 {
                bail!("--slot must be at least 5 s and --lead not negative");
            }
            if !(0.0..=100.0).contains(&background_h) {
                bail!("--background-h must be 0 to 100 hours");
            }
            let model = std::sync::Arc::new(Model::open(&cfg.model.name)?);
            cfg.check_labels(model.labels())?;
            hearken::train::adopt_window(&mut cfg, &model)?;
            let opts = run::EvalOptions {
                data: data.unwrap_or_else(|| hearken::shared_dir().join("eval-dev")),
                split,
                mix: MixSpec {
                    seed,
                    rate,
                    snrs_db: snr,
                    slot_s: slot,
                    lead_s: lead,
                    ..MixSpec::default()
                },
                channels,
                max_per_group,
                scales: run::default_scales(),
                matching: Default::default(),
                background_h,
                work_dir: work_dir.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("hearken-eval-{}", std::process::id()))
                }),
            };
            let report = run::evaluate(model, &cfg, &opts)?;
            if let Some(p) = &plot {
                hearken::eval::plot::plot_recall_vs_fa(
                    p,
                    &format!(
                        "{}: recall vs false alarms ({} split)",
                        report.model, report.split
                    ),
                    &report.curves,
                )?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", run::render_text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train {
            data,
            also,
            config,
            model,
            groups,
            out,
            mixing: MixArgs { seed, snr },
            max_per_group,
            target_fa,
            repeats,
            features,
            l2,
            window_s,
            hop_s,
            hidden,
            folds,
            background_folds,
            cache,
            gate_keep,
            hard_share,
            hard_weight,
            method,
            epochs,
            net_windows,
            net_margin,
            net_max_per_group,
            train_from,
            json,
        } => {
            use hearken::eval::{dataset::Split, learn, mix::MixSpec, net};
            let mut cfg = effective_config(
                config.as_deref(),
                &Overrides {
                    source: None,
                    model,
                    node_id: None,
                    http: None,
                },
            )?;
            let model = std::sync::Arc::new(Model::open(&cfg.model.name)?);
            cfg.check_labels(model.labels())?;
            {
                use hearken::config::{DEFAULT_HOP_S, DEFAULT_WINDOW_S};
                use hearken::train::{TRAIN_HOP_S, TRAIN_WINDOW_S};
                let default =
                    (cfg.model.window_s, cfg.model.hop_s) == (DEFAULT_WINDOW_S, DEFAULT_HOP_S);
                let (w, h) = if default {
                    (TRAIN_WINDOW_S, TRAIN_HOP_S)
                } else {
                    (cfg.model.window_s, cfg.model.hop_s)
                };
                cfg.model.window_s = window_s.unwrap_or(w);
                cfg.model.hop_s = hop_s.unwrap_or(h);
                if !(0.96..=60.0).contains(&cfg.model.window_s)
                    || !(0.1..=cfg.model.window_s).contains(&cfg.model.hop_s)
                {
                    bail!("--window-s must be 0.96 to 60 s and --hop-s 0.1 s to the window");
                }
            }
            if !(0.0..=0.5).contains(&hard_share) {
                bail!("--hard-share must be 0 to 0.5 (a share of the negative windows)");
            }
            for g in &groups {
                if !cfg.detection.groups.contains_key(g) {
                    bail!("--groups: no group {g:?} in the configuration");
                }
            }
            let whole = |dir| learn::Source {
                dir,
                split: Split::All,
            };
            let mut sources = if data.is_empty() {
                learn::default_sources(&hearken::shared_dir())
            } else {
                data.into_iter().map(whole).collect()
            };
            sources.extend(also.into_iter().map(whole));
            let out = out.unwrap_or_else(|| model.dir().join("detectors"));
            let opts = learn::TrainOptions {
                sources,
                groups,
                mix: MixSpec {
                    seed,
                    rate: model.manifest().frontend.sample_rate,
                    snrs_db: snr,
                    slot_s: 25.0,
                    lead_s: 60.0,
                    ..MixSpec::default()
                },
                events_per_mixture: 40,
                max_per_group: Some(max_per_group),
                repeats,
                target_fa_per_hour: target_fa,
                features: features
                    .iter()
                    .map(|f| {
                        hearken::train::Features::ALL
                            .into_iter()
                            .find(|k| k.name() == f)
                            .ok_or_else(|| anyhow::anyhow!("--features: {f:?} is not scores, embedding or embedding_scores"))
                    })
                    .collect::<Result<_>>()?,
                l2s: l2,
                hidden_units: hidden,
                iterations: 300,
                epochs: 20,
                folds,
                backgrounds_by_kind: background_folds == "kind",
                out,
                work_dir: std::env::temp_dir()
                    .join(format!("hearken-train-{}", std::process::id())),
                cache_dir: cache,
                gate_keep,
                hard_share,
                hard_weight,
                net: match method.as_str() {
                    "net" | "auto" | "crnn" => {
                        if !(1..=16).contains(&train_from) || epochs == 0 || net_windows == 0 {
                            bail!("--train-from must be 1 to 16, --epochs and --net-windows above 0");
                        }
                        if !net_margin.is_finite() {
                            bail!("--net-margin must be a number");
                        }
                        let python = net::default_python();
                        let kind = match method.as_str() {
                            "crnn" => net::NetKind::Crnn,
                            _ => net::NetKind::Mn04,
                        };
                        let script = match net::trainer_missing(&python) {
                            Some(why) => Err(anyhow::anyhow!(why)),
                            None => net::default_script(kind),
                        };
                        match script {
                            Err(e) if method == "auto" => {
                                tracing::warn!("training heads only: the network cannot be trained here: {e:#}");
                                None
                            }
                            Err(e) => bail!("--method {method}: {e:#}"),
                            Ok(script) => Some(net::NetOptions {
                                kind,
                                python,
                                script,
                                epochs,
                                windows: net_windows,
                                train_from,
                                threads: std::thread::available_parallelism()
                                    .map_or(1, |n| n.get()),
                                only: method != "auto",
                                margin: net_margin,
                                max_per_group: net_max_per_group.unwrap_or(usize::MAX),
                            }),
                        }
                    }
                    _ => None,
                },
            };
            let summary = learn::train(model, &cfg, &opts)?;
            let _ = std::fs::remove_dir_all(&opts.work_dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                for s in &summary {
                    println!(
                        "{:<12} {:>4} clips, {:>6} / {:>6} windows +/-, {} features, {} hidden units, L2 {}, on {:.6} off {:.6} in {} of {} hops{}: cross-validated recall {:.2} at {:.2} false alarms/h, latency {} -> {}",
                        s.group, s.clips, s.positives, s.negatives, s.chosen.features, s.chosen.hidden, s.chosen.l2, s.chosen.on, s.off, s.chosen.onset_hops, s.chosen.onset_of,
                        s.chosen.sure.map_or(String::new(), |v| format!(" or {v:.6} in one")),
                        s.chosen.recall, s.chosen.fa_per_hour,
                        s.chosen.latency_s.map_or("-".to_string(), |l| format!("{l:.2} s")),
                        s.file.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Adapt(a) => adapt_command(a),
        Command::Enroll(a) => enroll_command(a),
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

/// Which daemon a learning command works for: its configuration, state and model.
#[derive(clap::Args)]
struct DaemonArgs {
    /// Configuration file (as `hearken run --config`); `hearken enroll` adds a new
    /// group to it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's state directory (as `hearken run --state-dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Model name or directory (overrides model.name).
    #[arg(long)]
    model: Option<String>,
}

/// `hearken adapt`'s options (see [`Command::Adapt`]).
#[derive(clap::Args)]
struct AdaptArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Go back to the shipped detectors (removes the adapted ones).
    #[arg(long)]
    reset: bool,
    /// Overrides [learning] false_alarms_per_week.
    #[arg(long)]
    false_alarms_per_week: Option<f64>,
    /// Overrides [learning] max_recall_drop.
    #[arg(long)]
    max_recall_drop: Option<f64>,
    /// Hours of stored home sound needed before adapting.
    #[arg(long, default_value_t = 0.5)]
    min_hours: f64,
    /// L2 penalties tried for the home correction.
    #[arg(long, value_delimiter = ',', default_values_t = hearken::learn::adapt::AdaptOptions::default().l2s)]
    l2: Vec<f64>,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

/// How mixtures are made (`eval`, `train`, `enroll`).
#[derive(clap::Args, Clone)]
struct MixArgs {
    /// Seed of the mixtures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event-to-background ratios in dB; each event is placed once per ratio.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "9,3,-3",
        allow_hyphen_values = true
    )]
    snr: Vec<f64>,
}

/// `hearken enroll`'s options (see [`Command::Enroll`]).
#[derive(clap::Args)]
struct EnrollArgs {
    /// The group: a built-in one (smoke_alarm, glass…) or a new name (a-z, 0-9, _).
    group: String,
    /// The examples as audio files (WAV, FLAC…), 3 to 10; without it they are
    /// recorded from the configured source (or --source).
    #[arg(long, num_args = 1..)]
    file: Vec<PathBuf>,
    /// How many takes to record (3 to 10).
    #[arg(long, default_value_t = 5)]
    takes: usize,
    /// Seconds per recorded take.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Where to record from (as `hearken run --source`).
    #[arg(long)]
    source: Option<String>,
    /// What to ask before each recorded take (default: one for the group).
    #[arg(long)]
    prompt: Option<String>,
    /// Keep the recorded takes (in <state dir>/enroll-takes/GROUP) instead of
    /// deleting them after training.
    #[arg(long)]
    keep: bool,
    /// A new group is a home-safety group.
    #[arg(long)]
    safety: bool,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Labelled folders of other sounds (labels.csv) to mix the takes into and
    /// learn against; default: the training part of $HEARKEN_SHARED/eval-dev and
    /// all of $HEARKEN_SHARED/train-extra.
    #[arg(long)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    mixing: MixArgs,
    /// Placements of the takes in the mixtures per ratio, at least.
    #[arg(long, default_value_t = 24)]
    placements: usize,
    /// At most this many of a built-in group's own examples beside the takes.
    #[arg(long, default_value_t = 30)]
    max_shipped: usize,
    /// False alarms per hour the threshold is chosen for.
    #[arg(long, default_value_t = 0.5)]
    target_fa: f64,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

/// MQTT options from the command line.
#[derive(Default)]
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

/// `hearken adapt`: see [`Command::Adapt`].
fn adapt_command(a: AdaptArgs) -> Result<ExitCode> {
    let AdaptArgs {
        daemon: DaemonArgs {
            config,
            state_dir,
            model,
        },
        reset,
        false_alarms_per_week,
        max_recall_drop,
        min_hours,
        l2: l2s,
        json,
    } = a;
    let config = config.as_deref();
    use hearken::learn::{adapt, store, validation::ValidationSet};
    let overrides = Overrides {
        model,
        ..Default::default()
    };
    let flags = Mqtt {
        state_dir,
        ..Default::default()
    };
    // Everything `hearken run` checks: adapting for a daemon that would not start
    // helps nobody.
    let p = match prepare(config, &overrides, &flags) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("hearken: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let out = adapt::adapted_dir(&p.state_dir);
    if reset {
        match std::fs::remove_dir_all(&out) {
            Ok(()) => println!(
                "removed the adapted detectors in {}; the daemon uses the shipped ones after SIGHUP or a restart",
                out.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("no adapted detectors in {}: the shipped ones are in use", out.display())
            }
            Err(e) => bail!("cannot remove {}: {e}", out.display()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(dir) = hearken::train::detectors_dir(&p.cfg, &p.model)? else {
        bail!("[detection] detectors = \"off\": there are no trained detectors to adapt");
    };
    // The shipped detectors with the household's enrolled ones over them: what
    // the daemon runs before adapting.
    let loaded = hearken::learn::enroll::load(&p.cfg, &p.model, &p.state_dir, false)?;
    for m in &loaded.warnings {
        tracing::warn!("{m}");
    }
    let shipped = loaded.detectors;
    if shipped.is_empty() {
        bail!(
            "no trained detectors for the enabled groups in {}: adapting needs them (./setup.sh or `hearken train` makes them)",
            dir.display()
        );
    }
    // Each detector's validation set is the one beside it.
    let mut sets: Vec<(PathBuf, Option<ValidationSet>)> = Vec::new();
    for f in &loaded.files {
        let folder = f
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        if !sets.iter().any(|(d, _)| *d == folder) {
            let v = ValidationSet::load(&folder)?;
            sets.push((folder, v));
        }
    }
    let validation: Vec<Option<&ValidationSet>> = loaded
        .files
        .iter()
        .map(|f| {
            let folder = f.parent().unwrap_or(std::path::Path::new("."));
            sets.iter()
                .find(|(d, _)| d == folder)
                .and_then(|(_, v)| v.as_ref())
        })
        .collect();
    let home_dir = p.state_dir.join(store::DIR);
    let home = store::read(&home_dir)?;
    for (f, why) in &home.damaged {
        tracing::warn!("home store: {} {why}; left out", f.display());
    }
    if home.corrupt_regions > 0 || home.torn_tail_bytes > 0 {
        tracing::warn!(
            "home store: {} corrupt region(s) and {} bytes of torn tail skipped",
            home.corrupt_regions,
            home.torn_tail_bytes
        );
    }
    let opts = adapt::AdaptOptions {
        false_alarms_per_week: false_alarms_per_week
            .unwrap_or(p.cfg.learning.false_alarms_per_week),
        max_recall_drop: max_recall_drop.unwrap_or(p.cfg.learning.max_recall_drop),
        min_hours,
        l2s,
        ..Default::default()
    };
    let report = adapt::adapt_all(
        &adapt::Shipped {
            detectors: &shipped,
            files: &loaded.files,
            validation: &validation,
        },
        &p.cfg.detection.groups,
        &home,
        p.model.labels(),
        &opts,
        &out,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "home store {}: {:.2} h of sound, {} windows kept",
        home_dir.display(),
        report.observed_h,
        report.stored_windows
    );
    println!(
        "{:<12} {:<9} {:>15} {:>21} {:>19} {:>8}",
        "group", "outcome", "on", "false alarms/week", "validation recall", "windows"
    );
    let r2 = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    for g in &report.groups {
        println!(
            "{:<12} {:<9} {:>15} {:>21} {:>19} {:>8}",
            g.group,
            g.outcome,
            format!("{:.3} → {:.3}", g.on_before, g.on_after),
            format!("{:.1} → {:.1}", g.fa_per_week_before, g.fa_per_week_after),
            format!("{} → {}", r2(g.recall_before), r2(g.recall_after)),
            g.home_windows
        );
        println!("{:<12} {}", "", g.reason);
    }
    if report.groups.iter().any(|g| g.outcome == "adapted") {
        println!(
            "adapted detectors: {} (the daemon takes them on SIGHUP or restart; `hearken adapt --reset` goes back to the shipped ones)",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `hearken enroll`: see [`Command::Enroll`].
fn enroll_command(a: EnrollArgs) -> Result<ExitCode> {
    use anyhow::Context;
    use hearken::learn::enroll::{self, Take};
    let group = a.group.trim().to_string();
    if group.is_empty()
        || group.len() > 32
        || !group
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("{group:?} is not a group name: use a-z, 0-9 and _, up to 32 characters (e.g. smoke_alarm, doorbell)");
    }
    let n = if a.file.is_empty() {
        a.takes
    } else {
        a.file.len()
    };
    if !(3..=10).contains(&n) {
        bail!("enrolling takes 3 to 10 examples, not {n}");
    }
    if !(a.seconds.is_finite() && (1.0..=60.0).contains(&a.seconds)) {
        bail!("--seconds must be 1 to 60");
    }
    if a.mixing.snr.is_empty() || a.mixing.snr.iter().any(|v| !v.is_finite()) || a.placements == 0 {
        bail!("--snr needs at least one ratio in dB and --placements must be above 0");
    }
    let overrides = Overrides {
        source: a.source.clone(),
        model: a.daemon.model.clone(),
        ..Default::default()
    };
    let flags = Mqtt {
        state_dir: a.daemon.state_dir.clone(),
        ..Default::default()
    };
    // What `hearken run` would refuse, refused before anything is recorded.
    let p = match prepare(a.daemon.config.as_deref(), &overrides, &flags) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("hearken: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if hearken::train::detectors_dir(&p.cfg, &p.model)?.is_none() {
        bail!("[detection] detectors = \"off\": the daemon would not use an enrolled detector; set it to \"\" first");
    }
    let new_group = !p.cfg.detection.groups.contains_key(&group);
    let config_text = match (&a.daemon.config, new_group) {
        (None, true) => bail!(
            "{group} is a new group, and enrolling adds it to the configuration file: pass --config FILE (the daemon's, e.g. /etc/hearken/hearken.toml)"
        ),
        (Some(f), true) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            // Refuse an unwritable file now, not after training.
            std::fs::OpenOptions::new()
                .append(true)
                .open(f)
                .with_context(|| format!("cannot write {} (the group is added there; run as its owner, e.g. with sudo)", f.display()))?;
            Some(text)
        }
        _ => None,
    };
    if !new_group && !p.cfg.detection.groups[&group].enabled {
        eprintln!("note: the group {group} is disabled in the configuration; its enrolled detector is used once it is enabled");
    }
    let shared = hearken::shared_dir();
    let sources: Vec<hearken::eval::learn::Source> = if a.data.is_empty() {
        let s = hearken::eval::learn::default_sources(&shared);
        if let Some(missing) = s.iter().find(|s| !s.dir.join("labels.csv").is_file()) {
            bail!(
                "{} not found: enrolling mixes the takes into those home sounds; set HEARKEN_SHARED or pass --data FOLDER",
                missing.dir.join("labels.csv").display()
            );
        }
        s
    } else {
        a.data
            .iter()
            .map(|d| hearken::eval::learn::Source {
                dir: d.clone(),
                split: hearken::eval::dataset::Split::All,
            })
            .collect()
    };

    // The takes: files as given, or recorded now.
    let rate = p.model.manifest().frontend.sample_rate;
    let takes_dir = p.state_dir.join("enroll-takes").join(&group);
    let mut recorded: Vec<PathBuf> = Vec::new();
    let mut takes: Vec<Take> = Vec::new();
    if !a.file.is_empty() {
        for f in &a.file {
            let x = hearken::eval::run::decode_at(f, rate)
                .with_context(|| format!("{}: cannot read it as audio", f.display()))?;
            let check = enroll::check_take(&x, rate, false)
                .map_err(|why| anyhow::anyhow!("{}: {why}", f.display()))?;
            takes.push(Take {
                file: f.clone(),
                check,
            });
        }
    } else {
        std::fs::create_dir_all(&takes_dir)
            .with_context(|| format!("cannot create {}", takes_dir.display()))?;
        let prompt = a
            .prompt
            .clone()
            .unwrap_or_else(|| enroll::prompt_for(&group).to_string());
        eprintln!(
            "Recording {n} takes of {:.0} s from {} (the level is shown as it comes).",
            a.seconds, p.source
        );

        let mut stderr = std::io::stderr();
        let mut recorder = enroll::Recorder::start(&p.source).map_err(|e| {
            anyhow::anyhow!("{e:#}; or give the examples as files: hearken enroll {group} --file A.wav B.wav C.wav")
        })?;
        for k in 1..=n {
            let mut attempt = 0;
            loop {
                attempt += 1;
                eprintln!("Take {k} of {n}: {prompt}");
                let (x, take_rate) = match recorder.take(a.seconds, &mut stderr) {
                    Ok(t) => t,
                    Err(e) => {
                        remove_takes(&recorded, &takes_dir, a.keep);
                        return Err(e);
                    }
                };
                match enroll::check_take(&x, take_rate, true) {
                    Ok(check) => {
                        let file = takes_dir.join(format!("take-{k}.wav"));
                        hearken::eval::run::write_wav(&file, &x, take_rate, 1)?;
                        eprintln!(
                            "  ok: loudest {:.0} dBFS, {:.0} dB above the rest, {:.1} s of sound",
                            check.peak_dbfs,
                            check.peak_dbfs - check.floor_dbfs,
                            check.active_s
                        );
                        recorded.push(file.clone());
                        takes.push(Take { file, check });
                        break;
                    }
                    Err(why) if attempt < 3 => eprintln!("  take {k} again: {why}"),
                    Err(why) => {
                        remove_takes(&recorded, &takes_dir, a.keep);
                        bail!("take {k}: {why} (three tries)");
                    }
                }
            }
        }
    }
    let result = enroll_train(&a, &p, &group, new_group, config_text, takes, sources);
    remove_takes(&recorded, &takes_dir, a.keep);
    result
}

/// Deletes recorded takes unless they are to be kept.
fn remove_takes(recorded: &[PathBuf], dir: &std::path::Path, keep: bool) {
    if keep {
        if !recorded.is_empty() {
            eprintln!("the takes are kept in {}", dir.display());
        }
        return;
    }
    for f in recorded {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir(dir);
}

/// The training half of `hearken enroll`: labels for a new group, the detector,
/// the configuration, the report.
fn enroll_train(
    a: &EnrollArgs,
    p: &Prepared,
    group: &str,
    new_group: bool,
    config_text: Option<String>,
    takes: Vec<hearken::learn::enroll::Take>,
    sources: Vec<hearken::eval::learn::Source>,
) -> Result<ExitCode> {
    use anyhow::Context;
    use hearken::learn::enroll;
    let mut cfg = p.cfg.clone();
    let mut labels = Vec::new();
    let mut new_text = None;
    if new_group {
        let mut mean = vec![0f32; p.model.labels().len()];
        for t in &takes {
            for (m, s) in mean.iter_mut().zip(enroll::take_scores(&p.model, &t.file)?) {
                *m += s / takes.len() as f32;
            }
        }
        labels = enroll::choose_labels(&mean, p.model.labels(), 3);
        let text = config_text.unwrap_or_default();
        let path = a
            .daemon
            .config
            .as_ref()
            .expect("a new group has a config file");
        let updated = enroll::with_new_group(&text, group, &labels, a.safety)?;
        let parsed = hearken::config::Config::from_str(&updated, &path.display().to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        cfg.detection
            .groups
            .insert(group.to_string(), parsed.detection.groups[group].clone());
        new_text = Some((path.clone(), updated));
    }
    let work = std::env::temp_dir().join(format!("hearken-enroll-{}", std::process::id()));
    let out = enroll::enrolled_dir(&p.state_dir).join(group);
    std::fs::create_dir_all(enroll::enrolled_dir(&p.state_dir))?;
    let req = enroll::Request {
        group: group.to_string(),
        takes: takes.clone(),
        sources,
        seed: a.mixing.seed,
        snrs_db: a.mixing.snr.clone(),
        placements: a.placements,
        max_shipped: a.max_shipped,
        target_fa_per_hour: a.target_fa,
        out: out.clone(),
        work_dir: work.clone(),
    };
    eprintln!(
        "training the {group} detector on {} takes mixed into home sounds (a few minutes)…",
        takes.len()
    );
    let summary = enroll::train(p.model.clone(), &cfg, &req);
    let _ = std::fs::remove_dir_all(&work);
    let summary = summary?;
    if let Some((path, text)) = &new_text {
        // Written whole and renamed, so a crash leaves the old file or the new one.
        let tmp = path.with_extension("toml.enroll-tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let report = serde_json::json!({
        "group": group,
        "new_group": new_group,
        "labels": labels,
        "takes": takes,
        "detector": summary.file,
        "recall": summary.chosen.recall,
        "false_alarms_per_hour": summary.chosen.fa_per_hour,
        "on": summary.chosen.on,
        "off": summary.off,
        "features": summary.chosen.features,
        "hidden": summary.chosen.hidden,
        "clips": summary.clips,
        "config": new_text.as_ref().map(|(p, _)| p.clone()),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("enrolled {group} from {} takes:", takes.len());
    for t in &takes {
        println!(
            "  {}: {:.1} s, loudest {:.0} dBFS",
            t.file.display(),
            t.check.duration_s,
            t.check.peak_dbfs
        );
    }
    println!(
        "cross-validated on mixtures of the takes and {} other examples into home sounds: recall {:.2} at {:.2} false alarms per hour (on {:.3}, off {:.3})",
        summary.clips.saturating_sub(0),
        summary.chosen.recall,
        summary.chosen.fa_per_hour,
        summary.chosen.on,
        summary.off
    );
    println!("detector: {}", summary.file.display());
    if let Some((path, _)) = &new_text {
        println!(
            "added [detection.groups.{group}] to {} with labels {:?}",
            path.display(),
            labels
        );
    }
    println!("the daemon takes it on SIGHUP or restart (sudo systemctl reload hearken); `hearken adapt` adapts it to this home like the others");
    Ok(ExitCode::SUCCESS)
}

/// The daemon's state directory: `--state-dir`, `[mqtt] state_dir`, or the
/// default of [`state_dir`].
fn daemon_state_dir(cfg: &hearken::config::Config, flags: &Mqtt) -> PathBuf {
    let configured = (!cfg.mqtt.state_dir.is_empty()).then(|| PathBuf::from(&cfg.mqtt.state_dir));
    state_dir(flags.state_dir.clone().or(configured))
}

/// Starts the home store's writer in `state/home` (see [`hearken::learn::store`]);
/// `None`, with the reason logged, when `[learning] store` is off or the folder
/// cannot be made: the daemon listens and alarms without it.
fn start_home_store(
    cfg: &hearken::config::Config,
    state: &std::path::Path,
) -> Option<(
    crossbeam_channel::Sender<hearken::learn::store::HomeMsg>,
    std::thread::JoinHandle<()>,
)> {
    use hearken::learn::store;
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
struct Overrides {
    source: Option<String>,
    model: Option<String>,
    node_id: Option<String>,
    http: Option<String>,
}

/// Where the values of the configuration in force came from, so that an error found
/// after loading points at them: the line of the key in the file, or the
/// command-line option that set it.
struct Provenance {
    /// The file as shown in messages, and its text (to find a key's line).
    file: Option<(String, String)>,
    /// Dotted keys set on the command line, with the option that set them.
    cli: Vec<(&'static str, &'static str)>,
}

impl Provenance {
    fn new(file: Option<&std::path::Path>, o: &Overrides, flags: &Mqtt) -> Provenance {
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
        set(o.source.is_some(), &["audio.source"], "--source");
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
    fn locate(&self, e: hearken::config::ConfigError) -> hearken::config::ConfigError {
        let flag = e
            .key
            .as_deref()
            .and_then(|k| self.cli.iter().find(|(key, _)| *key == k));
        match (flag, &self.file) {
            (Some((_, flag)), _) => e.on_command_line(flag),
            (None, Some((name, text))) => e.in_file(name, text),
            (None, None) => e,
        }
    }

    /// An error about `key`, attributed to where its value came from.
    fn error(&self, key: &str, message: &str) -> hearken::config::ConfigError {
        self.locate(hearken::config::ConfigError::for_key(key, message))
    }

    /// An error about no single key, attributed to the file if there is one.
    fn general(&self, message: &str) -> hearken::config::ConfigError {
        let mut e = hearken::config::ConfigError::for_key("", message);
        e.key = None;
        self.locate(e)
    }
}

/// The configuration in force: the file (or the defaults) with the command line on
/// top, every value checked, with where each came from. Errors name the file, line
/// and key, or the command-line option.
fn load_config(
    file: Option<&std::path::Path>,
    o: &Overrides,
    flags: &Mqtt,
) -> Result<(hearken::config::Config, Provenance), Vec<hearken::config::ConfigError>> {
    let mut cfg = match file {
        Some(p) => hearken::config::Config::load_all(p)?,
        None => hearken::config::Config::default(),
    };
    if let Some(s) = &o.source {
        cfg.audio.source = s.clone();
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
    let prov = Provenance::new(file, o, flags);
    cfg.validate()
        .map_err(|errs| errs.into_iter().map(|e| prov.locate(e)).collect::<Vec<_>>())?;
    Ok((cfg, prov))
}

/// The configuration in force (see [`load_config`]); the first error if several.
fn effective_config(
    file: Option<&std::path::Path>,
    o: &Overrides,
) -> Result<hearken::config::Config, hearken::config::ConfigError> {
    load_config(file, o, &Mqtt::default())
        .map(|(cfg, _)| cfg)
        .map_err(|mut errs| errs.remove(0))
}

/// Everything `hearken run` sets up before it opens the audio source and the broker,
/// checked: what [`prepare`] returns.
struct Prepared {
    /// The configuration in force (with the trained detectors' window adopted).
    cfg: hearken::config::Config,
    /// The audio source.
    source: hearken::audio::source::SourceSpec,
    /// The model, loaded.
    model: std::sync::Arc<Model>,
    /// The window and hop taken from the model's trained detectors, if any.
    adopted: Option<(f64, f64)>,
    /// The detector of the enabled groups.
    detector: hearken::detect::Detector,
    /// The trained detectors it uses.
    trained: Vec<hearken::train::LinearDetector>,
    /// The state directory (home store, adapted detectors, outbox).
    state_dir: PathBuf,
    /// Where the embedded broker listens, if it runs.
    broker: Option<std::net::SocketAddr>,
    /// The publisher's settings, if hearken publishes.
    mqtt: Option<hearken::publish::client::MqttSettings>,
}

/// The whole start-up validation of `hearken run`, shared with `hearken
/// check-config` so that the two refuse exactly the same configurations: the file
/// and the command line, the source spec, the model, the labels, the trained
/// detectors and their window, the detector, the embedded broker's address and the
/// publisher's settings (topics, node and client id, TLS files, state directory).
/// It opens no device, binds no port, connects to nothing and writes nothing. Every
/// error names the file, line and key, or the command-line option; independent
/// problems are all reported.
fn prepare(
    file: Option<&std::path::Path>,
    o: &Overrides,
    flags: &Mqtt,
) -> Result<Prepared, Vec<hearken::config::ConfigError>> {
    let (mut cfg, prov) = load_config(file, o, flags)?;
    let mut errors = Vec::new();
    let source = match cfg
        .audio
        .source
        .parse::<hearken::audio::source::SourceSpec>()
    {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(prov.error("audio.source", &e.to_string()));
            None
        }
    };
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
        (Some(m), Some((_, _, trained))) => match hearken::train::model_for(&m, trained) {
            Ok(m) => Some(m),
            Err(e) => {
                errors.push(prov.error("detection.detectors", &format!("{e:#}")));
                None
            }
        },
        (m, _) => m,
    };
    match (source, model, scoring) {
        (Some(source), Some(model), Some((adopted, detector, trained))) if errors.is_empty() => {
            Ok(Prepared {
                cfg,
                source,
                model,
                adopted,
                detector,
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
/// `cfg`), the window plan, and the detector with its trained detectors.
#[allow(clippy::type_complexity)]
fn prepare_scoring(
    cfg: &mut hearken::config::Config,
    model: &Model,
    prov: &Provenance,
    state: &std::path::Path,
) -> Result<
    (
        Option<(f64, f64)>,
        hearken::detect::Detector,
        Vec<hearken::train::LinearDetector>,
    ),
    hearken::config::ConfigError,
> {
    let adopted = hearken::train::adopt_window(cfg, model)
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

/// Checks `cfg` against the running model and builds its detector, with the trained
/// detectors it uses (those `hearken adapt` adapted in `state` in place of the
/// shipped ones); errors name the file (and line) or option the value came from.
fn build_detector(
    cfg: &hearken::config::Config,
    model: &Model,
    prov: &Provenance,
    state: &std::path::Path,
) -> Result<
    (
        hearken::detect::Detector,
        Vec<hearken::train::LinearDetector>,
    ),
    hearken::config::ConfigError,
> {
    use hearken::detect::{Detector, Identity};
    cfg.check_labels(model.labels())
        .map_err(|e| prov.locate(e))?;
    let ident = Identity {
        node: cfg.node.id.clone(),
        room: cfg.node.room.clone(),
        model: model.name().to_string(),
    };
    let trained = hearken::train::configured(cfg, model).map_err(|e| {
        // The folder and its files are read whatever the groups; with none enabled
        // only the match of windows is left out. So if that still fails, the folder
        // is to blame, else the window.
        let mut folder_only = cfg.clone();
        folder_only
            .detection
            .groups
            .values_mut()
            .for_each(|g| g.enabled = false);
        let key = if hearken::train::configured(&folder_only, model).is_err() {
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
    let detector = Detector::with_trained(cfg.enabled_groups(), model.labels(), ident, &trained)
        .map_err(|e| prov.general(&e))?;
    Ok((detector, trained))
}

/// What the publisher checks when it starts, checked without starting it: the
/// broker host, the topics (base topic and node id), the TLS files, and, when one is
/// configured, that the state directory can hold the outbox.
fn check_publisher(
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
fn check_tls(
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
fn check_outbox_dir(dir: &std::path::Path) -> Result<(), String> {
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

/// Whether two publisher configurations differ.
fn mqtt_changed(
    a: &Option<hearken::publish::client::MqttSettings>,
    b: &Option<hearken::publish::client::MqttSettings>,
) -> bool {
    a != b
}

/// What a reload needs and changes.
struct Running {
    file: Option<PathBuf>,
    overrides: Overrides,
    mqtt_flags: Mqtt,
    model: std::sync::Arc<Model>,
    cfg: hearken::config::Config,
    mqtt: Option<hearken::publish::client::MqttSettings>,
}

impl Running {
    /// SIGHUP: re-reads the file, validates it completely and applies what can change
    /// while running; on any error the running configuration stays.
    fn reload(
        &mut self,
        pipeline: &hearken::pipeline::Pipeline,
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
            hearken::train::adopt_window(&mut new, &self.model)?;
            let restart = hearken::service::restart_keys(&self.cfg, &new);
            hearken::service::keep_running_values(&self.cfg, &mut new);
            let prov = Provenance::new(Some(&file), &self.overrides, &self.mqtt_flags);
            let state = daemon_state_dir(&new, &self.mqtt_flags);
            let (detector, trained) = build_detector(&new, &self.model, &prov, &state)?;
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
            Ok((new, restart, detector, mqtt))
        })();
        let (new, restart, detector, mqtt) = match prepared {
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
        let groups = detector.group_names().join(", ");
        if let Err(e) = pipeline.reconfigure(detector) {
            error!("cannot apply the reloaded configuration: {e:#}");
            return;
        }
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
fn swap_publisher(
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

fn run_daemon(
    config: Option<PathBuf>,
    source: Option<String>,
    fast: bool,
    model: Option<String>,
    http: Option<String>,
    print_events: bool,
    mqtt: Mqtt,
) -> Result<ExitCode> {
    use hearken::pipeline::{Message, Pipeline, PipelineSettings};
    use hearken::service::{self, Health, Notifier, StallCheck};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tracing::{debug, error, info, warn};

    // SIGHUP's default action is to terminate: take it over before anything else.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
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
        source: spec,
        model,
        adopted,
        detector,
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
        info!(
            "{} runs the fine-tuned network {} beside its own network",
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
    let live = Arc::new(hearken::live::Live::new(
        &cfg.node.id,
        model.name(),
        cfg.http.events_kept,
        &detector.group_names(),
    ));
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
    let clips = if cfg.privacy.evidence_clips {
        let dir = state.join("clips");
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
        info!(
            "evidence clips on: {:.0} s before and {:.0} s after each event's onset, in {} (none where speech is heard)",
            cfg.privacy.clip_before_s,
            cfg.privacy.clip_after_s,
            dir.display()
        );
        Some(w)
    } else {
        None
    };
    let home = start_home_store(&cfg, &state);
    // Verdicts from the feedback topics go to the store (the publisher keeps this
    // sender until it stops, so the store outlives it).
    let feedback = home
        .as_ref()
        .map(|(tx, _)| hearken::learn::store::feedback_sink(tx.clone()));
    let publisher = mqtt_now
        .clone()
        .map(|s| hearken::publish::client::Publisher::start(s, feedback.clone()))
        .transpose()?;
    live.set_publisher(publisher.as_ref().map(|p| p.stats()));
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
            hop_tap: None,
            home_tap: home.as_ref().map(|h| h.0.clone()),
            live: Some(live.clone()),
            audio_tap: clips.as_ref().and_then(|c| c.audio_sender()),
        },
        tx,
    )?;
    live.set_source(&pipeline.source_description, pipeline.source_stats.clone());
    // The pipeline and the publisher hold its senders now: the store ends when
    // both have.
    let home_thread = home.map(|(_, h)| h);
    let stop = pipeline.stop_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    info!(
        source = %pipeline.source_description,
        model = %model.name(),
        groups = %groups,
        "listening on {} with {} (groups: {groups})",
        pipeline.source_description,
        model.name()
    );
    let events_seen = Arc::new(AtomicU64::new(0));
    let (pub_tx, pub_rx) = crossbeam_channel::unbounded();
    let (audio_tx, audio_rx) = crossbeam_channel::unbounded::<bool>();
    let printer = {
        let events_seen = events_seen.clone();
        let live = live.clone();
        let clips = clips;
        let mut settings = mqtt_now.clone();
        std::thread::spawn(move || {
            let mut publisher = publisher;
            let mut pub_rx = pub_rx;
            let mut last_overruns = 0;
            loop {
                let msg = crossbeam_channel::select! {
                    recv(rx) -> m => match m {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    recv(audio_rx) -> ok => {
                        if let (Ok(ok), Some(p)) = (ok, &publisher) {
                            p.set_listening(ok);
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
                    p.send_top(hearken::publish::TopReport {
                        top: s.top.clone(),
                        dbfs: s.dbfs,
                    });
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
                        if let Some(c) = &clips {
                            c.event(&e);
                        }
                        if let Some(p) = &publisher {
                            p.send(e.clone());
                        }
                        let text = format!(
                            "event {:?} {} {} at {:.2} s (score {:.2})",
                            e.state, e.group, e.id, e.start_s, e.peak_score
                        );
                        if print_events {
                            if let Ok(line) = serde_json::to_string(&e) {
                                println!("{line}");
                            }
                            debug!(group = %e.group, event_id = %e.id, state = ?e.state, safety = e.safety, start_s = e.start_s, score = e.peak_score, "{text}");
                        } else {
                            info!(group = %e.group, event_id = %e.id, state = ?e.state, safety = e.safety, start_s = e.start_s, score = e.peak_score, "{text}");
                        }
                    }
                    Message::Status(s) if print_events => {
                        let top: Vec<String> = s
                            .top
                            .iter()
                            .map(|p| format!("{} {:.2}", p.label, p.probability))
                            .collect();
                        info!(
                            stream_s = s.t_s,
                            dbfs = s.dbfs,
                            cpu_percent = s.cpu_percent,
                            overruns = s.overruns,
                            "status t={:.0}s level={:.1} dBFS top=[{}] cpu={:.1}% overruns={} gated={}/{}",
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
                            warn!(
                                dropped = s.overruns - last_overruns,
                                "{} samples dropped at capture since the last report (the pipeline fell behind)",
                                s.overruns - last_overruns
                            );
                            last_overruns = s.overruns;
                        }
                    }
                }
            }
            // The pipeline has ended: pending clips are cut with the audio there is.
            if let Some(c) = clips {
                c.stop();
            }
            publisher
        })
    };

    // The control loop: readiness, the watchdog, status and reloads.
    let mut running = Running {
        file: config,
        overrides,
        mqtt_flags: mqtt,
        model: model.clone(),
        cfg,
        mqtt: mqtt_now,
    };
    let status_line = |stalled: Option<service::Stage>| {
        let n = events_seen.load(Ordering::Relaxed);
        let base = format!(
            "listening on {} with {}, {n} events",
            pipeline.source_description,
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
    let mut check: Option<StallCheck> = None;
    let mut stalled: Option<service::Stage> = None;
    let mut next_ping = Instant::now();
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut device_lost = false;
    while !stop.load(Ordering::Acquire) && !pipeline.source_finished() {
        // The capture thread logs the loss and reopens the device; here the MQTT
        // availability and systemd's status line follow it.
        let lost = pipeline.source_stats.device_lost.load(Ordering::Acquire);
        if lost != device_lost {
            device_lost = lost;
            let _ = audio_tx.send(!lost);
            let line = if lost {
                format!("{}; audio device lost, reconnecting", status_line(stalled))
            } else {
                status_line(stalled)
            };
            let _ = notifier.send(&service::status_message(&line));
        }
        if hup.swap(false, Ordering::AcqRel) {
            let _ = notifier.send(&service::reloading_message(service::monotonic_usec()));
            running.reload(&pipeline, &pub_tx);
            if ready {
                let _ = notifier.send(&service::ready_message(&status_line(stalled)));
            }
        }
        let now = Instant::now();
        if !ready && pipeline.source_stats.samples.load(Ordering::Relaxed) > 0 {
            ready = true;
            let _ = notifier.send(&service::ready_message(&status_line(None)));
            debug!("audio flows: ready");
            if let Some(wd) = watchdog {
                let limit = wd.as_secs_f64();
                check = Some(StallCheck::new(
                    t0.elapsed().as_secs_f64(),
                    pipeline.snapshot(),
                    limit,
                    (2.0 * pipeline.hop_s + 1.0).max(limit),
                ));
                info!(
                    watchdog_s = limit,
                    "watchdog enabled: pinging every {:.1} s while capture, DSP and inference make progress",
                    limit / 2.0
                );
            }
        }
        if let (Some(c), Some(wd)) = (check.as_mut(), watchdog) {
            if now >= next_ping {
                next_ping = now + wd / 2;
                match c.observe(t0.elapsed().as_secs_f64(), pipeline.snapshot()) {
                    Health::Healthy => {
                        let _ = notifier.send(service::WATCHDOG_MESSAGE);
                        if let Some(stage) = stalled.take() {
                            info!(stage = %stage, "the {stage} stage is making progress again; watchdog pings resume");
                            let _ = notifier.send(&service::status_message(&status_line(None)));
                        }
                    }
                    Health::Stalled { stage, idle_s } => {
                        if stalled.is_none() {
                            error!(
                                stage = %stage,
                                idle_s = idle_s,
                                "the {stage} stage has made no progress for {idle_s:.1} s; no longer pinging the watchdog (systemd will restart hearken)"
                            );
                            stalled = Some(stage);
                            let _ = notifier.send(&service::status_message(&status_line(stalled)));
                        }
                    }
                }
            }
        }
        if ready && now >= next_status {
            next_status = now + STATUS_EVERY;
            let _ = notifier.send(&service::status_message(&status_line(stalled)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = notifier.send(&service::stopping_message(
        "stopping: draining the pipeline",
    ));
    let summary = pipeline.wait()?;
    drop(pub_tx);
    // The pipeline has closed every event; the publisher flushes and says offline.
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
    stopped?;
    info!(
        audio_s = summary.audio_s,
        events = summary.events,
        model_calls = summary.model_calls,
        gated_calls = summary.gated_calls,
        overruns = summary.overruns,
        "stopped after {:.1} s of audio: {} events, {} model calls, {} gated, {} samples dropped",
        summary.audio_s,
        summary.events,
        summary.model_calls,
        summary.gated_calls,
        summary.overruns
    );
    Ok(ExitCode::SUCCESS)
}

/// `hearken check-config FILE`: every error on its own line (stderr) and failure, or
/// a one-line summary and success. It runs [`prepare`], the start-up validation of
/// `hearken run` (without command-line options), so it refuses exactly the files
/// `run` refuses.
fn check_config(file: &std::path::Path) -> ExitCode {
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
    let enabled = p.detector.group_names();
    let groups = match enabled.len() {
        0 => "no groups enabled".to_string(),
        n => format!("{n} groups enabled: {}", enabled.join(", ")),
    };
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
