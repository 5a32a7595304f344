//! The `hearken` command: parses the command line and runs the command (each in its
//! own module under `src/cli/`; the stages they use are in the library).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    hearken::logging::init(args.log_level.map(Into::into));
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hearken: {e:#}");
            ExitCode::FAILURE
        }
    }
}
