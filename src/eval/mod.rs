//! `hearken eval`: detection quality measured the way a home hears events — mixed
//! into long backgrounds of ordinary sounds — through the real pipeline.
//!
//! - [`dataset`]: labelled folders, groups, the split by source recording.
//! - [`mix`]: seeded mixtures at chosen SNRs (pure).
//! - [`metrics`]: matching detections to events, recall, false alarms per hour,
//!   latency, precision, average precision (pure).
//! - [`hopcache`]: scored training mixtures kept on disk for the next run.
//! - [`plot`]: the curves as SVG.
//! - [`learn`]: `hearken train`, detectors learnt on mixtures.
//! - [`net`]: `hearken train --method net`, mn04 fine-tuned by the PyTorch trainer.
//! - [`run`]: building mixtures from files and running them through
//!   [`crate::pipeline::Pipeline`], the code path of `hearken run --fast`.

pub mod dataset;
pub mod fit;
pub mod hopcache;
pub mod learn;
pub mod metrics;
pub mod mix;
pub mod net;
pub mod plot;
pub mod run;
pub mod validation;
