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
    }
}
