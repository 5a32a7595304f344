//! The live pipeline: capture ring → DSP thread → inference thread → events.
//!
//! ```text
//! source (cpal callback / file / stdin) ──ringbuf──► DSP thread: resample, levels, log-mel
//!        ──crossbeam (bounded)──► inference thread: rolling windows, gate, model, detector
//!        ──crossbeam──► caller: events and status
//! ```
//! The threads are thin shells around the pure stages in `audio`, `dsp`, `scoring`
//! and `detect`. A stop flag (SIGINT/SIGTERM) stops the source; everything already
//! captured then drains through, open events are closed, and [`Pipeline::wait`]
//! returns.
//!
//! A configuration reload hands the inference thread a new [`Detector`] through
//! [`Pipeline::reconfigure`]: it takes over between two blocks, at the current stream
//! time, without touching the source or losing audio.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;

use crate::audio::source::{Source, SourceOptions, SourceSpec, SourceStats};
use crate::classify::Prediction;
use crate::detect::{Detector, Event};
use crate::model::Model;
use crate::scoring::WindowPlan;

mod dsp;
mod infer;

pub use dsp::ReplacedWarnings;
use dsp::{Block, DspStage};
use infer::InferStage;

/// Everything the pipeline needs to start.
pub struct PipelineSettings {
    /// The model, loaded.
    pub model: Arc<Model>,
    /// Where audio comes from.
    pub source: SourceSpec,
    /// The source's name (in status reports and the live board).
    pub name: String,
    /// Linear gain applied to the source's samples before analysis.
    pub gain: f32,
    /// Pace files in real time (false: as fast as possible, losing nothing).
    pub realtime: bool,
    /// Capture ring capacity, seconds.
    pub ring_seconds: f64,
    /// Loudness gate, dBFS (`None`: every window is classified).
    pub gate_dbfs: Option<f32>,
    /// Leave a window unscored while every group is far below its thresholds
    /// (`[model] skip_quiet_windows`; see [`crate::detect::QUIET_MARGIN`]).
    pub skip_quiet: bool,
    /// Window length override, seconds.
    pub window_s: Option<f64>,
    /// Hop override, seconds.
    pub hop_s: Option<f64>,
    /// The detector, built from the config.
    pub detector: Detector,
    /// Seconds between status messages.
    pub status_interval_s: f64,
    /// Receives a copy of every hop the detector sees (evaluation; `None` in the
    /// daemon).
    pub hop_tap: Option<Sender<crate::detect::OwnedHop>>,
    /// Receives what the home store keeps (see [`crate::store`]): every
    /// window's group scores, the embedding of those near an alarm, and events.
    /// Sent without waiting: when the store falls behind, windows are dropped.
    pub home_tap: Option<Sender<crate::store::HomeMsg>>,
    /// The live board the HTTP API reads: every window's view and every model
    /// call's time are posted to it.
    pub live: Option<Arc<crate::live::Live>>,
    /// Receives the analysed audio itself (mono, at the model's rate, stream
    /// sample 0 first), chunk by chunk, for evidence clips. Sent without waiting: a
    /// clip writer that falls behind loses audio, never the pipeline.
    pub audio_tap: Option<Sender<crate::clips::AudioChunk>>,
}

/// A periodic health and level report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The source's name.
    pub source: String,
    /// Stream time, seconds.
    pub t_s: f64,
    /// Loudness of the latest window, dBFS.
    pub dbfs: f32,
    /// Top labels of the latest window (empty when it was gated).
    pub top: Vec<Prediction>,
    /// Whether the latest window was skipped by the loudness gate.
    pub gated: bool,
    /// Samples dropped because the capture ring was full.
    pub overruns: u64,
    /// Samples replaced so far because they were NaN, infinite or absurdly large
    /// (damaged audio; see [`SourceStats::replaced`]).
    pub replaced_samples: u64,
    /// CPU use of the whole process since the last status, % of one core.
    pub cpu_percent: f64,
    /// Model calls made so far.
    pub model_calls: u64,
    /// Model calls the gate saved so far.
    pub gated_calls: u64,
    /// Each group's latest score and whether its event is open.
    pub groups: Vec<GroupStatus>,
}

/// One group's state in a [`Status`].
pub use crate::live::GroupStatus;

/// What the pipeline sends to its caller.
#[derive(Debug, Clone)]
pub enum Message {
    /// An event started or ended.
    Event(Event),
    /// A periodic status report.
    Status(Status),
}

/// Totals after the pipeline ends.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Audio processed, seconds: what the source delivered, not counting the
    /// padding a model's frontend adds to a short clip.
    pub audio_s: f64,
    /// Model calls made.
    pub model_calls: u64,
    /// Model calls skipped by the gate.
    pub gated_calls: u64,
    /// Model calls saved by leaving quiet windows unscored.
    pub skipped_calls: u64,
    /// Samples dropped at capture.
    pub overruns: u64,
    /// Samples replaced because they were NaN, infinite or absurdly large.
    pub replaced_samples: u64,
    /// Events started.
    pub events: u64,
}

/// Counters shared between the threads and the caller (a watchdog can read them).
#[derive(Debug, Default)]
pub struct Progress {
    /// Samples the DSP thread has taken from the ring.
    pub dsp_samples: AtomicU64,
    /// Windows the inference thread has scored.
    pub windows: AtomicU64,
    /// Blocks of frames the DSP thread has handed (or is handing) to the inference
    /// thread.
    pub blocks_sent: AtomicU64,
    /// Blocks the inference thread has finished.
    pub blocks_done: AtomicU64,
}

/// A running pipeline.
pub struct Pipeline {
    source: Option<Source>,
    dsp: Option<JoinHandle<Result<()>>>,
    inference: Option<JoinHandle<Result<Summary>>>,
    stop: Arc<AtomicBool>,
    /// Progress counters.
    pub progress: Arc<Progress>,
    /// The source's counters (samples captured, last callback).
    pub source_stats: Arc<SourceStats>,
    /// Source sample rate and description.
    pub source_description: String,
    /// Seconds between scored windows.
    pub hop_s: f64,
    reconfigure: Sender<Detector>,
}

impl Pipeline {
    /// Starts the source and the threads; messages arrive on `tx`.
    pub fn start(settings: PipelineSettings, tx: Sender<Message>) -> Result<Pipeline> {
        let PipelineSettings {
            model,
            source,
            name,
            gain,
            realtime,
            ring_seconds,
            gate_dbfs,
            skip_quiet,
            window_s,
            hop_s,
            detector,
            status_interval_s,
            hop_tap,
            home_tap,
            live,
            audio_tap,
        } = settings;
        let plan = WindowPlan::from_manifest(model.manifest(), window_s, hop_s)
            .map_err(|e| anyhow!("model window settings: {e}"))?;
        // Build the plan for the window shape before audio flows.
        if plan.patch.is_none() {
            let silence = vec![plan.silence_value; plan.window_frames * plan.n_mels];
            model.run_window(&silence).context("warming up the model")?;
        }
        let (src, cons) = Source::start(
            &source,
            &SourceOptions {
                ring_seconds,
                realtime,
            },
        )?;
        let rate = src.sample_rate;
        let source_description = src.description.clone();
        let stats = src.stats.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let (btx, brx): (Sender<Block>, Receiver<Block>) = bounded(32);
        let (rtx, rrx): (Sender<Detector>, Receiver<Detector>) = crossbeam_channel::unbounded();
        let plan_hop_s = plan.hop_frames as f64 * plan.frame_hop_s;

        let dsp_stage = DspStage {
            rate,
            fe_params: model.manifest().frontend.clone(),
            stats: stats.clone(),
            progress: progress.clone(),
            source: source.to_string(),
            gain,
            warn_interval: Duration::from_secs_f64(status_interval_s.max(1.0)),
            cons,
            btx,
            audio_tap,
        };
        let dsp = std::thread::Builder::new()
            .name("hearken-dsp".into())
            .spawn(move || dsp_stage.run())?;

        let inf_stage = InferStage {
            name,
            model,
            plan,
            gate_dbfs,
            skip_quiet,
            status_interval_s,
            realtime,
            rate,
            detector,
            hop_tap,
            home_tap,
            live,
            brx,
            rrx,
            tx,
            progress: progress.clone(),
            stats: stats.clone(),
        };
        let inference = std::thread::Builder::new()
            .name("hearken-infer".into())
            .spawn(move || inf_stage.run())?;

        Ok(Pipeline {
            source: Some(src),
            dsp: Some(dsp),
            inference: Some(inference),
            stop,
            progress,
            source_stats: stats,
            source_description,
            hop_s: plan_hop_s,
            reconfigure: rtx,
        })
    }

    /// Hands the inference thread a new detector (a configuration reload). It takes
    /// over before the next block at the current stream time: open events of groups
    /// that remain continue, those of removed groups end (see
    /// [`Detector::reconfigure`]). Fails only when the inference thread has ended.
    pub fn reconfigure(&self, detector: Detector) -> Result<()> {
        self.reconfigure
            .send(detector)
            .map_err(|_| anyhow!("the inference thread has ended"))
    }

    /// The progress counters now, for the watchdog.
    pub fn snapshot(&self) -> crate::service::Snapshot {
        let p = &self.progress;
        crate::service::Snapshot {
            captured: self.source_stats.samples.load(Ordering::Relaxed),
            reconnecting: self.source_stats.reconnect_ticks.load(Ordering::Relaxed),
            dsp: p.dsp_samples.load(Ordering::Relaxed),
            blocks_sent: p.blocks_sent.load(Ordering::Relaxed),
            blocks_done: p.blocks_done.load(Ordering::Relaxed),
            windows: p.windows.load(Ordering::Relaxed),
        }
    }

    /// A flag that stops capture when set (wire SIGINT/SIGTERM to it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// True once the source has ended (file or stdin exhausted).
    pub fn source_finished(&self) -> bool {
        self.source.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Waits for the stream to end (or the stop flag), drains the pipeline and
    /// returns the totals.
    pub fn wait(mut self) -> Result<Summary> {
        let stop = self.stop.clone();
        while !stop.load(Ordering::Acquire) && !self.source_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(src) = self.source.take() {
            let stats = src.stats.clone();
            src.stop();
            // Whatever was captured still drains through the pipeline.
            stats.mark_finished();
        }
        let dsp = self.dsp.take().map(|h| h.join());
        let inf = self.inference.take().map(|h| h.join());
        if let Some(r) = dsp {
            r.map_err(|_| anyhow!("the DSP thread panicked"))??;
        }
        match inf {
            Some(r) => r.map_err(|_| anyhow!("the inference thread panicked"))?,
            None => Ok(Summary::default()),
        }
    }
}
