//! The inference stage's thread: blocks of frames → rolling windows, the
//! loudness gate, the model, the detector → events and status reports. The pure
//! parts live in `scoring` (windows, gate), `model` and `detect`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender};

use super::{Block, GroupStatus, Message, Progress, Status, Summary};
use crate::audio::source::SourceStats;
use crate::classify::{run_unit, top_k};
use crate::detect::tone::ToneBank;
use crate::detect::{Detector, Event, Hop, QUIET_MARGIN};
use crate::model::Model;
use crate::scoring::{Scorer, WindowPlan, WindowScore, LEVEL_SILENCE};
use crate::store::{log_odds, HomeMsg, Record};

/// The inference stage: scores rolling windows with the model, runs the detector on
/// each, and sends events and status reports; at the end of the stream it scores the
/// tail, closes what is open and returns the totals. A new detector arriving on
/// `rrx` takes over between two blocks.
pub(super) struct InferStage {
    pub(super) name: String,
    pub(super) model: Arc<Model>,
    pub(super) plan: WindowPlan,
    pub(super) gate_dbfs: Option<f32>,
    pub(super) skip_quiet: bool,
    pub(super) status_interval_s: f64,
    pub(super) realtime: bool,
    pub(super) rate: u32,
    pub(super) detector: Detector,
    pub(super) hop_tap: Option<Sender<crate::detect::OwnedHop>>,
    pub(super) home_tap: Option<Sender<HomeMsg>>,
    pub(super) live: Option<Arc<crate::live::Live>>,
    pub(super) brx: Receiver<Block>,
    pub(super) rrx: Receiver<Detector>,
    pub(super) tx: Sender<Message>,
    pub(super) progress: Arc<Progress>,
    pub(super) stats: Arc<SourceStats>,
}

impl InferStage {
    /// Runs until the DSP stage ends (or the caller stops listening).
    pub(super) fn run(self) -> Result<Summary> {
        let InferStage {
            name,
            model,
            plan,
            gate_dbfs,
            skip_quiet,
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
        let mut tones = ToneBank::new(detector.tone_templates());
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
        let (frame_hop_s, hop_frames) = (scorer.plan().frame_hop_s, scorer.plan().hop_frames);
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
                let _ = tap.try_send(HomeMsg::Event {
                    source: name.clone(),
                    record: match e.state {
                        crate::detect::EventState::Start => Record::EventStart {
                            id: e.id,
                            wall_ms: at(e.start_s),
                            group: e.group.clone(),
                        },
                        crate::detect::EventState::End => Record::EventEnd {
                            id: e.id,
                            wall_ms: at(e.end_s.unwrap_or(end_s)),
                        },
                    },
                });
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
                    lag_s: f64,
                    tones: &mut ToneBank,
                    detector: &mut Detector,
                    events: &mut Vec<Event>,
                    home_floors: &[f32]| {
            // Wall clock of the window end (`lag_s` before now for a window
            // stepped late, after the one that followed it); files run fast are
            // stamped as if they had started when the pipeline did.
            let wall = if realtime {
                SystemTime::now()
                    .checked_sub(Duration::from_secs_f64(lag_s.max(0.0)))
                    .unwrap_or_else(SystemTime::now)
            } else {
                t0_wall + Duration::from_secs_f64(ws.end_s)
            };
            let end_frame = (ws.end_s / frame_hop_s).round() as u64;
            let hop = Hop {
                tones: tones.hop_scores(end_frame, hop_frames),
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
        // A window the scorer left unscored, waiting for the one after it.
        let mut held: Option<WindowScore> = None;
        let mut ready: Vec<(WindowScore, f64)> = Vec::new();
        let mut quiet_tones: Vec<f32> = Vec::new();
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
                    tones = ToneBank::new(detector.tone_templates());
                    tones.skip_to(scorer.total_frames());
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
            tones.push(&block.frames);
            scorer.push(&block.frames, Some(&block.levels), &mut run, &mut windows)?;
            for ws in windows.drain(..) {
                if ws.deferred {
                    held = Some(ws);
                    continue;
                }
                if let Some(p) = held.take() {
                    // The window left unscored: taken to be like this one when
                    // its sound is steady and both are quiet (its own tones
                    // included), else scored now.
                    let copy = p.filled_from(&ws);
                    let mut quiet_at = |w: &WindowScore, detector: &mut Detector| {
                        let end = (w.end_s / frame_hop_s).round() as u64;
                        quiet_tones.clear();
                        quiet_tones.extend_from_slice(tones.hop_scores(end, hop_frames));
                        let hop = quiet_hop(w, &quiet_tones, hop_s, t0_wall);
                        detector.quiet(&hop, QUIET_MARGIN)
                    };
                    let quiet = p.steady()
                        && quiet_at(&copy, &mut detector)
                        && quiet_at(&ws, &mut detector);
                    let late = if quiet {
                        scorer.release();
                        copy
                    } else {
                        scorer.resolve(&mut run)?.unwrap_or(copy)
                    };
                    let lag = ws.end_s - late.end_s;
                    ready.push((late, lag));
                }
                ready.push((ws, 0.0));
            }
            for (ws, lag) in ready.drain(..) {
                inf_progress.windows.fetch_add(1, Ordering::Relaxed);
                step(
                    &ws,
                    lag,
                    &mut tones,
                    &mut detector,
                    &mut events,
                    &home_floors,
                );
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
            scorer.defer_next(skip_quiet && held.is_none() && detector.settled(QUIET_MARGIN));
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
        // End of stream: score a window left unscored and the tail, then close
        // what is open.
        if held.take().is_some() {
            windows.extend(scorer.resolve(&mut run)?);
        }
        scorer.finish(&mut run, &mut windows)?;
        for ws in windows.drain(..) {
            step(
                &ws,
                0.0,
                &mut tones,
                &mut detector,
                &mut events,
                &home_floors,
            );
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
        summary.skipped_calls = scorer.deferred_calls();
        summary.overruns = inf_stats.overruns.load(Ordering::Relaxed);
        Ok(summary)
    }
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

/// A hop of `w` for judging quietness ([`Detector::quiet`]): nothing outside the
/// scorers reads it, so its wall time does not matter.
fn quiet_hop<'a>(w: &'a WindowScore, tones: &'a [f32], hop_s: f64, wall: SystemTime) -> Hop<'a> {
    Hop {
        tones,
        start_s: w.start_s,
        end_s: w.end_s,
        hop_s,
        scores_mean: &w.scores_mean,
        scores_max: &w.scores_max,
        dbfs: w.dbfs,
        embedding: &w.embedding,
        heads: &w.heads,
        net_scores: &w.net_scores,
        wall,
    }
}
