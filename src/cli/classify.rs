//! `hearken classify`: whole-file AudioSet labels.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use hearken::classify::{classify_file, render_text, ClassifyOptions, FileError};

use super::*;

/// Classify audio files (WAV or FLAC): top AudioSet labels per clip and per window.
#[derive(clap::Args)]
pub(crate) struct ClassifyArgs {
    /// Model name (efficientat-mn04, yamnet) or a directory holding model.toml.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub(crate) model: String,
    /// Labels to report per clip and per window.
    #[arg(long, default_value_t = 5)]
    pub(crate) top: usize,
    /// Window length in seconds (default: the model's, 10 s).
    #[arg(long)]
    pub(crate) window: Option<f64>,
    /// Hop between windows in seconds (default: the model's, 1 s).
    #[arg(long)]
    pub(crate) hop: Option<f64>,
    /// Skip this many seconds at the start of each file.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) start: f64,
    /// Only report these labels (display names or AudioSet ids, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) filter: Vec<String>,
    /// One JSON object per file (IBM MAX shape) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// With --json, add each window's full score vector ("scores").
    #[arg(long)]
    pub(crate) patches: bool,
    /// Anonymise each file before classifying it, as the SIFIS-Home routes do:
    /// `scramble` (blocks of --block-s shuffled) or `dp_noise` (Laplace noise
    /// --noise-snr-db below the signal, low-passed at --cutoff-hz).
    #[arg(long, value_parser = ["scramble", "dp_noise"])]
    pub(crate) anonymize: Option<String>,
    /// Block length for --anonymize scramble, seconds (0.5 or less breaks words).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) block_s: f64,
    /// Noise level for --anonymize dp_noise, dB below each channel's RMS.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub(crate) noise_snr_db: f64,
    /// Low-pass cutoff for --anonymize dp_noise, Hz.
    #[arg(long, default_value_t = 8000.0)]
    pub(crate) cutoff_hz: f64,
    /// Seed for --anonymize.
    #[arg(long, default_value_t = 1)]
    pub(crate) anonymize_seed: u64,
    /// Audio files.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
}

/// Runs `hearken classify`.
pub(crate) fn run(a: ClassifyArgs) -> Result<ExitCode> {
    let ClassifyArgs {
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
    } = a;

    if !(block_s.is_finite() && block_s > 0.0 && noise_snr_db.is_finite() && cutoff_hz > 0.0) {
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
