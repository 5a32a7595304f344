//! `hearken bench`: audio seconds per CPU second, per stage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::*;

/// Measure audio seconds processed per CPU second, per stage.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Model name or directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub(crate) model: String,
    /// Times the file is processed.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeat: usize,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Recording to process.
    pub(crate) file: PathBuf,
}

/// Runs `hearken bench`.
pub(crate) fn run(a: BenchArgs) -> Result<ExitCode> {
    let BenchArgs {
        model,
        repeat,
        json,
        file,
    } = a;

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
