//! The `hearken` command line: the arguments of every command, and one module per
//! command that runs it (`main` parses and calls [`dispatch`]).

mod adapt;
mod bench;
mod classify;
mod enroll;
mod eval;
mod prepare;
mod run;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use enroll::*;
use hearken::model::Model;
use hearken::model::DEFAULT_MODEL;
use prepare::*;

#[derive(Parser)]
#[command(
    name = "hearken",
    version,
    about = "Home-sound safety daemon: AudioSet sound recognition on the edge"
)]
pub(crate) struct Cli {
    /// Diagnostics level: error, warn, info, debug or trace [default: info; without
    /// this flag RUST_LOG is honoured].
    #[arg(long, global = true, value_enum)]
    pub(crate) log_level: Option<LogLevel>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--log-level` values.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogLevel {
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
pub(crate) enum Command {
    /// Classify audio files (WAV or FLAC): top AudioSet labels per clip and per window.
    Classify(classify::ClassifyArgs),
    /// Run the daemon: listen, classify rolling windows, detect and report events.
    Run(run::RunArgs),
    /// Validate a configuration file (and its labels against the configured model).
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Measure audio seconds processed per CPU second, per stage.
    Bench(bench::BenchArgs),
    /// Measure detection on labelled recordings mixed into home backgrounds: per group
    /// recall, false alarms per hour, latency, and a threshold sweep.
    Eval(eval::EvalArgs),
    /// Learn a detector per group on the model's embeddings from labelled recordings
    /// mixed into home backgrounds; writes <group>.json files the daemon loads.
    Train(train::TrainArgs),
    /// List audio input devices (for --source device:NAME) and their configurations.
    Devices,
    /// Teach the trained detectors this home's own false alarms, from the home
    /// store the daemon keeps (no audio): per group, a correction that only
    /// lowers scores and the smallest raise of the thresholds that brings the
    /// expected false alarms within [learning] false_alarms_per_week, as long as
    /// validation recall drops by at most [learning] max_recall_drop. The adapted
    /// detectors go to <state dir>/adapted; the daemon takes them on SIGHUP or
    /// restart.
    Adapt(adapt::AdaptArgs),
    /// Learn a household's own sound — its smoke alarm, doorbell, a beep of its
    /// own — from 3 to 10 examples, given as files (--file) or recorded from the
    /// microphone with prompts. Trains a detector for GROUP on the examples mixed
    /// into the shared home sounds, reports its cross-validated recall and false
    /// alarms, and keeps it in <state dir>/enrolled/GROUP; a new group is added to
    /// the configuration file. The daemon takes it on SIGHUP or restart.
    Enroll(EnrollArgs),
}

/// Runs the command the command line names.
pub(crate) fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify(a) => classify::run(a),
        Command::Run(a) => run::run(a),
        Command::CheckConfig { file } => Ok(prepare::check_config(&file)),
        Command::Bench(a) => bench::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::Adapt(a) => adapt::run(a),
        Command::Enroll(a) => enroll::run(a),
        Command::Devices => devices(),
    }
}

/// `hearken devices`: the input devices and what they offer.
fn devices() -> Result<ExitCode> {
    let devices = hearken::audio::source::list_devices()?;
    if devices.is_empty() {
        println!("no audio input devices found");
        println!(
            "hint: use --source file:PATH, or pipe raw s16le PCM with --source stdin:RATE:CHANNELS"
        );
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

/// Which daemon a learning command works for: its configuration, state and model.
#[derive(clap::Args)]
pub(crate) struct DaemonArgs {
    /// Configuration file (as `hearken run --config`); `hearken enroll` adds a new
    /// group to it.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The daemon's state directory (as `hearken run --state-dir`).
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Model name or directory (overrides model.name).
    #[arg(long)]
    pub(crate) model: Option<String>,
}

/// How mixtures are made (`eval`, `train`, `enroll`).
#[derive(clap::Args, Clone)]
pub(crate) struct MixArgs {
    /// Seed of the mixtures.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Event-to-background ratios in dB; each event is placed once per ratio.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "9,3,-3",
        allow_hyphen_values = true
    )]
    pub(crate) snr: Vec<f64>,
}

/// MQTT options from the command line.
#[derive(Default)]
pub(crate) struct Mqtt {
    pub(crate) url: Option<String>,
    pub(crate) embedded_broker: bool,
    pub(crate) node_id: Option<String>,
    pub(crate) state_dir: Option<PathBuf>,
}

/// Where state lives: `--state-dir`, systemd's `$STATE_DIRECTORY`, or
/// `$XDG_STATE_HOME/hearken` (`~/.local/state/hearken`).
pub(crate) fn state_dir(flag: Option<PathBuf>) -> PathBuf {
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
