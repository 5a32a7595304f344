//! hearken: an always-on home-sound safety daemon.
//!
//! The library holds every stage as plain, testable code; the `hearken` binary wires
//! the stages to the command line (and, in the daemon, to threads).

pub mod audio;
pub mod bench;
pub mod classify;
pub mod clips;
pub mod dsp;
pub mod eval;
pub mod http;
pub mod learn;
pub mod live;
pub mod logging;
pub mod memory;
pub mod model;
pub mod privacy;
pub mod scoring;
pub mod service;
pub mod store;

/// Root of the shared assets (models, recordings): `$HEARKEN_SHARED`, or `../shared`
/// next to the source tree.
pub fn shared_dir() -> std::path::PathBuf {
    match std::env::var_os("HEARKEN_SHARED") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}
pub mod config;
pub mod detect;
pub mod pipeline;
pub mod publish;
