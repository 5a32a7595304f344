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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use ringbuf::traits::{Consumer, Observer};
use serde::Serialize;

use crate::audio::source::{Source, SourceOptions, SourceSpec, SourceStats};
use crate::audio::StreamResampler;
use crate::classify::{run_unit, top_k, Prediction};
use crate::detect::{Detector, Event, Hop};
use crate::dsp::LogMel;
use crate::model::Model;
use crate::scoring::{Scorer, WindowPlan, LEVEL_SILENCE};
use crate::store::{log_odds, HomeMsg, Record};

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
    /// Samples dropped at capture.
    pub overruns: u64,
    /// Samples replaced because they were NaN, infinite or absurdly large.
    pub replaced_samples: u64,
    /// Events started.
    pub events: u64,
}

/// When to warn about replaced (non-finite or absurd) samples: as soon as the count
/// first grows, then at most once per interval while it keeps growing, and once at
/// the end of the stream if it grew since the last warning — so a device that
/// sends garbage all the time cannot flood the log.
#[derive(Debug, Clone)]
pub struct ReplacedWarnings {
    interval: Duration,
    logged: u64,
    last: Option<Instant>,
}

impl ReplacedWarnings {
    /// Warnings at most every `interval`.
    pub fn new(interval: Duration) -> Self {
        ReplacedWarnings {
            interval,
            logged: 0,
            last: None,
        }
    }

    /// The count to warn about now, if any, given the running total `count` at time
    /// `now`; `at_end` for the last call of the stream.
    pub fn check(&mut self, count: u64, now: Instant, at_end: bool) -> Option<u64> {
        if count <= self.logged {
            return None;
        }
        let due = at_end
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if !due {
            return None;
        }
        self.logged = count;
        self.last = Some(now);
        Some(count)
    }
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

/// Per-frame levels: mean power of consecutive `hop`-sample blocks, in dBFS.
struct LevelMeter {
    hop: usize,
    acc: f64,
    n: usize,
    pending: std::collections::VecDeque<f32>,
    last: f32,
}

impl LevelMeter {
    fn new(hop: usize) -> Self {
        LevelMeter {
            hop,
            acc: 0.0,
            n: 0,
            pending: Default::default(),
            last: LEVEL_SILENCE,
        }
    }

    fn push(&mut self, x: &[f32]) {
        for &v in x {
            self.acc += (v as f64) * (v as f64);
            self.n += 1;
            if self.n == self.hop {
                let ms = self.acc / self.hop as f64;
                let db = if ms <= 1e-12 {
                    LEVEL_SILENCE as f64
                } else {
                    10.0 * ms.log10()
                };
                self.pending.push_back(db.max(LEVEL_SILENCE as f64) as f32);
                self.acc = 0.0;
                self.n = 0;
            }
        }
    }

    /// One level per frame just emitted.
    fn take(&mut self, frames: usize, out: &mut Vec<f32>) {
        for _ in 0..frames {
            if let Some(l) = self.pending.pop_front() {
                self.last = l;
            }
            out.push(self.last);
        }
    }
}

struct Block {
    frames: Vec<f32>,
    levels: Vec<f32>,
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

/// The DSP stage: takes the source's samples off the capture ring, resamples them,
/// measures levels and computes log-mel frames, and hands blocks of frames to the
/// inference stage (and the analysed audio to the clip writer, if any).
struct DspStage {
    rate: u32,
    fe_params: crate::dsp::FrontendParams,
    stats: Arc<SourceStats>,
    progress: Arc<Progress>,
    source: String,
    gain: f32,
    warn_interval: Duration,
    cons: crate::audio::source::SourceConsumer,
    btx: Sender<Block>,
    audio_tap: Option<Sender<crate::clips::AudioChunk>>,
}

impl DspStage {
    /// Runs until the source has finished and the ring is empty, or the inference
    /// stage is gone.
    fn run(self) -> Result<()> {
        let DspStage {
            rate,
            fe_params,
            stats: dsp_stats,
            progress: dsp_progress,
            source: dsp_source,
            gain,
            warn_interval,
            mut cons,
            btx,
            audio_tap,
        } = self;
        let mut rs = StreamResampler::new(rate, fe_params.sample_rate)?;
        let mut fe = LogMel::new(&fe_params);
        let mut meter = LevelMeter::new(fe_params.hop_length);
        let mut buf = vec![0.0f32; 4096];
        let mut resampled = Vec::new();
        let mut warnings = ReplacedWarnings::new(warn_interval);
        // Stream index of the next analysed sample (for the audio tap).
        let mut tapped = 0u64;
        dsp_stats.set_consumer(std::thread::current());
        // Woken for every 50 ms of sound at most: windows are 0.5 s apart, so
        // waking for each few-millisecond callback only costs context switches.
        dsp_stats.set_wake_every(u64::from(rate / 20));
        // The source counts damaged samples (from its callback or reader);
        // this thread, which may log, reports them.
        let warn_replaced = |warnings: &mut ReplacedWarnings, at_end: bool| {
            let count = dsp_stats.replaced.load(Ordering::Relaxed);
            if let Some(n) = warnings.check(count, Instant::now(), at_end) {
                tracing::warn!(
                    source = dsp_source.as_str(),
                    replaced_samples = n,
                    "{dsp_source}: {n} NaN, infinite or out-of-range samples replaced \
                     so far: the audio is damaged; they were silenced or clamped and \
                     the rest is analysed"
                );
            }
        };
        loop {
            let n = cons.pop_slice(&mut buf);
            if n == 0 {
                if dsp_stats.finished.load(Ordering::Acquire) && cons.is_empty() {
                    break;
                }
                // The source wakes this thread when samples arrive or it
                // ends; the timeout only bounds a missed wake-up.
                std::thread::park_timeout(Duration::from_millis(100));
                continue;
            }
            dsp_progress
                .dsp_samples
                .fetch_add(n as u64, Ordering::Relaxed);
            warn_replaced(&mut warnings, false);
            if gain != 1.0 {
                buf[..n].iter_mut().for_each(|x| *x *= gain);
            }
            resampled.clear();
            rs.push(&buf[..n], &mut resampled);
            if let Some(tap) = &audio_tap {
                if !resampled.is_empty() {
                    let _ = tap.try_send((tapped, resampled.clone()));
                }
            }
            tapped += resampled.len() as u64;
            let block = analyse(&mut fe, &mut meter, &resampled, false);
            if !block.frames.is_empty() {
                // Counted before the send, which blocks while inference is
                // behind: the watchdog sees the block waiting.
                dsp_progress.blocks_sent.fetch_add(1, Ordering::Relaxed);
                if btx.send(block).is_err() {
                    return Ok(());
                }
            }
        }
        warn_replaced(&mut warnings, true);
        resampled.clear();
        rs.finish(&mut resampled);
        let block = analyse(&mut fe, &mut meter, &resampled, true);
        if !block.frames.is_empty() {
            dsp_progress.blocks_sent.fetch_add(1, Ordering::Relaxed);
            let _ = btx.send(block);
        }
        Ok(())
    }
}

/// The inference stage: scores rolling windows with the model, runs the detector on
/// each, and sends events and status reports; at the end of the stream it scores the
/// tail, closes what is open and returns the totals. A new detector arriving on
/// `rrx` takes over between two blocks.
struct InferStage {
    name: String,
    model: Arc<Model>,
    plan: WindowPlan,
    gate_dbfs: Option<f32>,
    status_interval_s: f64,
    realtime: bool,
    rate: u32,
    detector: Detector,
    hop_tap: Option<Sender<crate::detect::OwnedHop>>,
    home_tap: Option<Sender<HomeMsg>>,
    live: Option<Arc<crate::live::Live>>,
    brx: Receiver<Block>,
    rrx: Receiver<Detector>,
    tx: Sender<Message>,
    progress: Arc<Progress>,
    stats: Arc<SourceStats>,
}

impl InferStage {
    /// Runs until the DSP stage ends (or the caller stops listening).
    fn run(self) -> Result<Summary> {
        let InferStage {
            name,
            model,
            plan,
            gate_dbfs,
            status_interval_s,
            realtime,
            rate,
            mut detector,
            hop_tap,
            home_tap,
            live,
            brx,
            rrx,
            tx,
            progress: inf_progress,
            stats: inf_stats,
        } = self;
        let labels = model.labels();
        let mut scorer = Scorer::new(plan).with_prefill().with_gate(gate_dbfs);
        let mut run = |f: &[f32]| {
            let t = Instant::now();
            let out = run_unit(&model, f);
            if let Some(live) = &live {
                live.model_call(t.elapsed());
            }
            out
        };
        let mut windows = Vec::new();
        let mut events = Vec::new();
        let mut summary = Summary::default();
        let hop_s = scorer.plan().hop_frames as f64 * scorer.plan().frame_hop_s;
        let interval = Duration::from_secs_f64(status_interval_s.max(0.1));
        let mut last_status = Instant::now();
        let mut first_status_due = true;
        let mut last_cpu = crate::bench::cpu_seconds();
        let t0_wall = SystemTime::now();
        let mut last_window = None;
        let model_name = model.name().to_string();
        let embedding_dim = model.manifest().io.embedding_dim as u32;
        // Tells the home store which groups the windows' views belong to.
        let home_groups = |detector: &Detector| {
            if let Some(tap) = &home_tap {
                let _ = tap.try_send(HomeMsg::Groups(Record::Header {
                    groups: detector
                        .group_names()
                        .iter()
                        .map(|g| g.to_string())
                        .collect(),
                    embedding_dim,
                    hop_s: hop_s as f32,
                    model: model_name.clone(),
                }));
            }
        };
        home_groups(&detector);
        let mut home_floors = detector.home_floors();
        // Starts and ends for the home store, stamped on the wall clock
        // (`wall` is the time of stream second `end_s`).
        let home_events = |events: &[Event], end_s: f64, wall: SystemTime| {
            let Some(tap) = &home_tap else {
                return;
            };
            let wall_ms = wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let at = |s: f64| wall_ms.saturating_sub(((end_s - s).max(0.0) * 1000.0) as u64);
            for e in events {
                let _ = tap.try_send(HomeMsg::Event(match e.state {
                    crate::detect::EventState::Start => Record::EventStart {
                        id: e.id,
                        wall_ms: at(e.start_s),
                        group: e.group.clone(),
                    },
                    crate::detect::EventState::End => Record::EventEnd {
                        id: e.id,
                        wall_ms: at(e.end_s.unwrap_or(end_s)),
                    },
                }));
            }
        };
        let send_events = |events: &mut Vec<Event>, summary: &mut Summary| -> bool {
            for e in events.drain(..) {
                if e.state == crate::detect::EventState::Start {
                    summary.events += 1;
                }
                if tx.send(Message::Event(e)).is_err() {
                    return false;
                }
            }
            true
        };
        let step = |ws: &crate::scoring::WindowScore,
                    detector: &mut Detector,
                    events: &mut Vec<Event>,
                    home_floors: &[f32]| {
            // Wall clock of the window end; files run fast are stamped as if
            // they had started when the pipeline did.
            let wall = if realtime {
                SystemTime::now()
            } else {
                t0_wall + Duration::from_secs_f64(ws.end_s)
            };
            let hop = Hop {
                start_s: ws.start_s,
                end_s: ws.end_s,
                hop_s,
                scores_mean: &ws.scores_mean,
                scores_max: &ws.scores_max,
                dbfs: ws.dbfs,
                embedding: &ws.embedding,
                heads: &ws.heads,
                net_scores: &ws.net_scores,
                wall,
            };
            if let Some(tap) = &hop_tap {
                let _ = tap.send(crate::detect::OwnedHop::of(&hop));
            }
            let before = events.len();
            detector.step(&hop, labels, events);
            if let Some(tap) = &home_tap {
                let ms = |t: SystemTime| {
                    t.duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                };
                let views = detector.home_views();
                let keep = crate::store::is_candidate(&views, home_floors);
                let _ = tap.try_send(HomeMsg::Window(Record::Window {
                    wall_ms: ms(wall),
                    dbfs: ws.dbfs,
                    views,
                    embedding: if keep {
                        ws.embedding.clone()
                    } else {
                        Vec::new()
                    },
                    classes: if keep {
                        ws.scores_max.iter().map(|&p| log_odds(p)).collect()
                    } else {
                        Vec::new()
                    },
                }));
            }
            home_events(&events[before..], ws.end_s, wall);
        };
        let mut rrx = rrx;
        loop {
            // A new detector takes over before any later block: pending ones
            // first, then whichever arrives.
            let block = match rrx.try_recv() {
                Ok(d) => Err(d),
                Err(_) => crossbeam_channel::select! {
                    recv(brx) -> b => match b {
                        Ok(b) => Ok(b),
                        Err(_) => break,
                    },
                    recv(rrx) -> d => match d {
                        Ok(d) => Err(d),
                        Err(_) => {
                            rrx = crossbeam_channel::never();
                            continue;
                        }
                    },
                },
            };
            let block = match block {
                Ok(b) => b,
                Err(new) => {
                    let end_s = scorer.total_frames() as f64 * scorer.plan().frame_hop_s;
                    let wall = if realtime {
                        SystemTime::now()
                    } else {
                        t0_wall + Duration::from_secs_f64(end_s)
                    };
                    detector.reconfigure(new, end_s, wall, &mut events);
                    // Ends of removed groups' events: the store closes them too.
                    home_events(&events, end_s, wall);
                    home_groups(&detector);
                    home_floors = detector.home_floors();
                    tracing::info!(
                        stream_s = end_s,
                        groups = %detector.group_names().join(", "),
                        "detector reconfigured at {end_s:.1} s of audio (groups: {})",
                        detector.group_names().join(", ")
                    );
                    if !send_events(&mut events, &mut summary) {
                        break;
                    }
                    continue;
                }
            };
            scorer.push(&block.frames, Some(&block.levels), &mut run, &mut windows)?;
            for ws in windows.drain(..) {
                inf_progress.windows.fetch_add(1, Ordering::Relaxed);
                step(&ws, &mut detector, &mut events, &home_floors);
                if let Some(live) = &live {
                    let s = make_status(
                        &name,
                        &scorer,
                        &detector,
                        Some(&ws),
                        labels,
                        &inf_stats,
                        0.0,
                    );
                    live.window(crate::live::Now {
                        source: s.source,
                        t_s: s.t_s,
                        dbfs: s.dbfs,
                        top: s.top,
                        gated: s.gated,
                        groups: s.groups,
                    });
                }
                last_window = Some(ws);
            }
            inf_progress.blocks_done.fetch_add(1, Ordering::Relaxed);
            if !send_events(&mut events, &mut summary) {
                break;
            }
            // The first report goes out with the first window, so that the
            // top-sound and loudness sensors are not unknown for a whole interval.
            let first = first_status_due && last_window.is_some();
            if first || last_status.elapsed() >= interval {
                first_status_due = false;
                let cpu = crate::bench::cpu_seconds();
                let wall = last_status.elapsed().as_secs_f64();
                let status = make_status(
                    &name,
                    &scorer,
                    &detector,
                    last_window.as_ref(),
                    labels,
                    &inf_stats,
                    100.0 * (cpu - last_cpu) / wall.max(1e-6),
                );
                last_cpu = cpu;
                last_status = Instant::now();
                if tx.send(Message::Status(status)).is_err() {
                    break;
                }
            }
        }
        // End of stream: score the tail, then close what is open.
        scorer.finish(&mut run, &mut windows)?;
        for ws in windows.drain(..) {
            step(&ws, &mut detector, &mut events, &home_floors);
        }
        let end_s = scorer.total_frames() as f64 * scorer.plan().frame_hop_s;
        let wall = if realtime {
            SystemTime::now()
        } else {
            t0_wall + Duration::from_secs_f64(end_s)
        };
        let before = events.len();
        detector.finish(end_s, wall, &mut events);
        home_events(&events[before..], end_s, wall);
        send_events(&mut events, &mut summary);
        // The real audio, not `end_s`: a short clip is padded by the
        // frontend to the model's minimum length (10 s for mn04).
        summary.audio_s = inf_progress.dsp_samples.load(Ordering::Relaxed) as f64 / rate as f64;
        summary.replaced_samples = inf_stats.replaced.load(Ordering::Relaxed);
        summary.model_calls = scorer.model_calls();
        summary.gated_calls = scorer.gated_calls();
        summary.overruns = inf_stats.overruns.load(Ordering::Relaxed);
        Ok(summary)
    }
}

fn analyse(fe: &mut LogMel, meter: &mut LevelMeter, samples: &[f32], end: bool) -> Block {
    let n_mels = fe.params().n_mels;
    let mut frames = Vec::new();
    meter.push(samples);
    fe.push(samples, &mut frames);
    if end {
        fe.finish(&mut frames);
    }
    let mut levels = Vec::with_capacity(frames.len() / n_mels);
    meter.take(frames.len() / n_mels, &mut levels);
    Block { frames, levels }
}

fn make_status(
    source: &str,
    scorer: &Scorer,
    detector: &Detector,
    last: Option<&crate::scoring::WindowScore>,
    labels: &crate::model::Labels,
    stats: &SourceStats,
    cpu_percent: f64,
) -> Status {
    let (dbfs, top, gated) = match last {
        Some(w) if w.gated_units < w.units => (w.dbfs, top_k(&w.scores, labels, 3, None), false),
        Some(w) => (w.dbfs, Vec::new(), true),
        None => (LEVEL_SILENCE, Vec::new(), false),
    };
    Status {
        source: source.to_string(),
        t_s: scorer.total_frames() as f64 * scorer.plan().frame_hop_s,
        dbfs,
        top,
        gated,
        overruns: stats.overruns.load(Ordering::Relaxed),
        replaced_samples: stats.replaced.load(Ordering::Relaxed),
        cpu_percent,
        model_calls: scorer.model_calls(),
        gated_calls: scorer.gated_calls(),
        groups: detector
            .last_scores()
            .into_iter()
            .map(|(g, s, a)| GroupStatus {
                group: g.to_string(),
                score: s,
                active: a,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_sample_warnings_are_prompt_then_rate_limited() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = ReplacedWarnings::new(Duration::from_secs(10));
        assert_eq!(w.check(0, s(0), false), None, "nothing replaced");
        assert_eq!(w.check(2, s(10), false), Some(2), "the first one at once");
        assert_eq!(w.check(2, s(20_000), false), None, "no growth, no warning");
        assert_eq!(w.check(5, s(5_000), false), None, "too soon after the last");
        assert_eq!(w.check(7, s(10_010), false), Some(7));
        assert_eq!(
            w.check(9, s(10_020), true),
            Some(9),
            "the end reports the rest"
        );
        assert_eq!(w.check(9, s(10_030), true), None);
    }
}
