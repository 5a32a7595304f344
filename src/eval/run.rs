//! Running an evaluation: decode the labelled clips, build a seeded mixture, write it
//! as a WAV file at the chosen device rate and channel count, run it through the
//! live [`Pipeline`] as `hearken run --fast` does, and score what the detector said.
//! The pipeline's hops are recorded, so threshold sweeps replay the detector on
//! them without running the model again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use super::dataset::{self, in_split, Split, EVAL_GROUPS};
use super::metrics::{score, CurvePoint, Detection, GroupResult, Matching, TruthEvent};
use super::mix::{self, MixSpec, Mixture, Placed, Signal};
use crate::audio::source::SourceSpec;
use crate::audio::{FileDecoder, StreamResampler};
use crate::config::Config;
use crate::detect::{Detector, Event, EventState, OwnedHop};
use crate::model::Model;
use crate::pipeline::{Message, Pipeline, PipelineSettings};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The labelled folder (with `labels.csv`).
    pub data: PathBuf,
    /// Which recordings.
    pub split: Split,
    /// The mixture (seed, rate, SNRs, slots).
    pub mix: MixSpec,
    /// Channels of the written mixture (the same signal in each).
    pub channels: u16,
    /// At most this many clips per group (`None`: all), chosen by the seed.
    pub max_per_group: Option<usize>,
    /// Threshold multipliers for the sweep (1.0 = the configured thresholds).
    pub scales: Vec<f64>,
    /// Matching tolerances.
    pub matching: Matching,
    /// Hours of background without events added to the false-alarm count (see
    /// [`mix::background`]), in streams of at most 30 minutes.
    pub background_h: f64,
    /// Where the mixture WAV is written (kept for listening).
    pub work_dir: PathBuf,
}

/// Threshold multipliers from ×0.25 to ×4, log-spaced, with 1.0 among them.
pub fn default_scales() -> Vec<f64> {
    (-8..=8).map(|i| 2f64.powf(i as f64 / 4.0)).collect()
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Model name.
    pub model: String,
    /// Which split was evaluated.
    pub split: String,
    /// Mixture seed.
    pub seed: u64,
    /// SNRs, dB.
    pub snrs_db: Vec<f64>,
    /// Mixture rate and channels.
    pub rate: u32,
    /// Mixture channels.
    pub channels: u16,
    /// Mixture length, seconds.
    pub duration_s: f64,
    /// Seconds of background without events (false-alarm denominator).
    pub background_s: f64,
    /// The mixture file.
    pub mixture: PathBuf,
    /// Per group at the configured thresholds.
    pub groups: Vec<GroupResult>,
    /// Per group, the threshold sweep.
    pub curves: Vec<(String, Vec<CurvePoint>)>,
    /// Per group, the sweep's point of best recall with at most one false alarm
    /// per hour of background (none: no point holds it).
    pub best_at_1_per_h: Vec<(String, Option<CurvePoint>)>,
    /// The same at one false alarm in ten hours.
    pub best_at_0_1_per_h: Vec<(String, Option<CurvePoint>)>,
    /// Per group, what its false alarms were heard over (see
    /// [`super::metrics::false_alarm_causes`]).
    pub false_alarm_causes: Vec<(String, Vec<(String, usize)>)>,
    /// Per group, events found of those placed at each SNR, in the order of
    /// `snrs_db`.
    pub found_by_snr: Vec<(String, Vec<FoundAt>)>,
    /// Ground truth.
    pub truth: Vec<Placed>,
    /// What the live pipeline detected (all groups).
    pub detections: Vec<Detection>,
}

/// Events of one group found among those placed at one SNR.
#[derive(Debug, Clone, Serialize)]
pub struct FoundAt {
    /// Event-to-background ratio, dB.
    pub snr_db: f64,
    /// Events found.
    pub found: usize,
    /// Events placed.
    pub events: usize,
}

/// Decodes `path` to mono at `rate`.
pub fn decode_at(path: &Path, rate: u32) -> Result<Vec<f32>> {
    let mut dec = FileDecoder::open(path)?;
    let mut rs = StreamResampler::new(dec.info().sample_rate, rate)?;
    let mut chunk = Vec::new();
    let mut out = Vec::new();
    while dec.next_chunk(&mut chunk)? {
        rs.push(&chunk, &mut out);
        chunk.clear();
    }
    rs.push(&chunk, &mut out);
    rs.finish(&mut out);
    Ok(out)
}

/// Writes mono `samples` as a 16-bit WAV with `channels` identical channels.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32, channels: u16) -> Result<()> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for &v in samples {
        let s = (v.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        for _ in 0..channels {
            w.write_sample(s)?;
        }
    }
    w.finalize()
        .with_context(|| format!("cannot finish {}", path.display()))
}

/// Detections from an event stream: one per event id, its start and end merged.
pub fn detections(events: &[Event]) -> Vec<Detection> {
    let mut by_id: HashMap<uuid::Uuid, Detection> = HashMap::new();
    let mut order = Vec::new();
    for e in events {
        match e.state {
            EventState::Start => {
                order.push(e.id);
                by_id.insert(
                    e.id,
                    Detection {
                        group: e.group.clone(),
                        start_s: e.start_s,
                        detected_s: e.detected_s,
                        end_s: e.end_s.unwrap_or(e.detected_s),
                        peak_score: e.peak_score,
                    },
                );
            }
            EventState::End => {
                if let Some(d) = by_id.get_mut(&e.id) {
                    d.end_s = e.end_s.unwrap_or(d.end_s);
                    d.peak_score = d.peak_score.max(e.peak_score);
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

/// A detector for `cfg`'s enabled groups (with the trained detectors it names)
/// with every `on`/`off` threshold multiplied by `scale` (capped at 1; for a trained
/// detector, moved by 2·log2(scale) in log-odds, and its `sure` score with them).
pub fn scaled_detector(cfg: &Config, model: &Model, scale: f64) -> Result<Detector> {
    let mut trained = crate::detect::trained::configured(&cfg.detection, &cfg.model, model)?;
    // A trained detector's score is a probability that crowds near 0 and 1, so its
    // thresholds move in logit steps: ×0.25 … ×4 becomes −4 … +4 in log-odds.
    for d in &mut trained {
        d.shift_thresholds(2.0 * scale.log2());
    }
    let groups: Vec<(String, crate::config::GroupConfig)> = cfg
        .enabled_groups()
        .map(|(n, g)| {
            let mut g = g.clone();
            g.tuning.on = (g.tuning.on as f64 * scale).min(1.0) as f32;
            g.tuning.off = (g.tuning.off as f64 * scale).min(1.0) as f32;
            (n.clone(), g)
        })
        .collect();
    Detector::for_source(
        &groups,
        model.labels(),
        (
            &cfg.node.id,
            &cfg.node.room,
            crate::config::SINGLE_SOURCE_NAME,
            model.name(),
        ),
        &trained,
    )
    .map_err(anyhow::Error::msg)
}

/// `dets` moved `offset` seconds later (a stream laid after another on one time line).
fn shifted(dets: Vec<Detection>, offset: f64) -> impl Iterator<Item = Detection> {
    dets.into_iter().map(move |mut d| {
        d.start_s += offset;
        d.detected_s += offset;
        d.end_s += offset;
        d
    })
}

/// Runs `hops` through `detector` and returns its events (closed at the end).
pub fn replay(
    mut detector: Detector,
    hops: &[OwnedHop],
    labels: &crate::model::Labels,
) -> Vec<Event> {
    let mut out = Vec::new();
    let wall = |t: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
    for h in hops {
        detector.step(&h.as_hop(wall(h.end_s)), labels, &mut out);
    }
    let end = hops.last().map_or(0.0, |h| h.end_s);
    detector.finish(end, wall(end), &mut out);
    out
}

/// Clips of `split` in `dir` decoded at `rate`: (events of `groups`, backgrounds;
/// none of those without `with_backgrounds`). `max_per_group` picks that many
/// event clips per group with `rng`.
pub fn load_clips(
    dir: &Path,
    split: Split,
    groups: &[&str],
    with_backgrounds: bool,
    rate: u32,
    max_per_group: Option<usize>,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<(Vec<Signal>, Vec<Signal>)> {
    use rand::seq::SliceRandom;
    let clips: Vec<_> = dataset::load(dir)?
        .into_iter()
        .filter(|c| in_split(c, split))
        .collect();
    let decode = |c: &dataset::Clip, group: Option<String>| -> Result<Signal> {
        Ok(Signal {
            name: c.file.display().to_string(),
            group,
            label: c.label.clone(),
            recording: c.recording.clone(),
            samples: decode_at(&c.file, rate)
                .with_context(|| format!("decoding {}", c.file.display()))?,
        })
    };
    // A clip belongs to a group by the dataset's label mapping or, for a group of
    // the user's own (a doorbell), by a label spelt like the group.
    let mut events = Vec::new();
    for g in groups {
        let mut of_group: Vec<_> = clips
            .iter()
            .filter(|c| c.group == Some(*g) || c.label == *g)
            .collect();
        if let Some(n) = max_per_group {
            of_group.shuffle(rng);
            of_group.truncate(n);
        }
        for c in of_group {
            events.push(decode(c, Some(g.to_string()))?);
        }
    }
    let mut backgrounds = Vec::new();
    for c in clips
        .iter()
        .filter(|c| with_backgrounds && c.group.is_none() && !groups.contains(&c.label.as_str()))
    {
        backgrounds.push(decode(c, None)?);
    }
    Ok((events, backgrounds))
}

/// Runs `wav` through the pipeline as `hearken run --fast` does, with `detector`;
/// returns its events and every hop it scored.
pub fn run_pipeline(
    model: &Arc<Model>,
    cfg: &Config,
    wav: &Path,
    detector: Detector,
    skip_quiet: bool,
) -> Result<(Vec<Event>, Vec<OwnedHop>)> {
    let (hop_tx, hop_rx) = crossbeam_channel::unbounded();
    let (tx, rx) = crossbeam_channel::unbounded();
    let pipeline = Pipeline::start(
        PipelineSettings {
            model: model.clone(),
            source: SourceSpec::File(wav.to_path_buf()),
            name: crate::config::SINGLE_SOURCE_NAME.to_string(),
            gain: 1.0,
            realtime: false,
            ring_seconds: cfg.audio.ring_seconds,
            gate_dbfs: Some(cfg.audio.gate_dbfs),
            skip_quiet,
            window_s: Some(cfg.model.window_s),
            hop_s: Some(cfg.model.hop_s),
            detector,
            status_interval_s: 3600.0,
            hop_tap: Some(hop_tx),
            home_tap: None,
            live: None,
            audio_tap: None,
        },
        tx,
    )?;
    // Drain while it runs: an hour of hops is big.
    let collector = std::thread::spawn(move || {
        let mut events = Vec::new();
        let mut hops = Vec::new();
        loop {
            crossbeam_channel::select! {
                recv(rx) -> m => match m {
                    Ok(Message::Event(e)) => events.push(e),
                    Ok(_) => {}
                    Err(_) => break,
                },
                recv(hop_rx) -> h => if let Ok(h) = h { hops.push(h) },
            }
        }
        hops.extend(hop_rx.try_iter());
        (events, hops)
    });
    pipeline.wait()?;
    collector
        .join()
        .map_err(|_| anyhow!("the pipeline collector panicked"))
}

/// Builds the mixture, runs the pipeline on it, scores the result and sweeps the
/// thresholds.
pub fn evaluate(model: Arc<Model>, cfg: &Config, opts: &EvalOptions) -> Result<EvalReport> {
    let model = crate::detect::trained::model_for(
        &model,
        &crate::detect::trained::configured(&cfg.detection, &cfg.model, &model)?,
    )?;
    let enabled: Vec<&str> = cfg.enabled_groups().map(|(n, _)| n.as_str()).collect();
    let groups: Vec<&str> = EVAL_GROUPS
        .iter()
        .copied()
        .filter(|g| enabled.contains(g))
        .collect();
    if groups.is_empty() {
        return Err(anyhow!(
            "none of the evaluated groups ({}) is enabled in the configuration",
            EVAL_GROUPS.join(", ")
        ));
    }
    let mut rng = {
        use rand::SeedableRng;
        rand_chacha::ChaCha8Rng::seed_from_u64(opts.mix.seed)
    };
    let (events, backgrounds) = load_clips(
        &opts.data,
        opts.split,
        &groups,
        true,
        opts.mix.rate,
        opts.max_per_group,
        &mut rng,
    )?;
    if events.is_empty() {
        return Err(anyhow!(
            "{}: no event clips of {} in the {:?} split",
            opts.data.display(),
            groups.join(", "),
            opts.split
        ));
    }
    let ev: Vec<&Signal> = events.iter().collect();
    let bg: Vec<&Signal> = backgrounds.iter().collect();
    let mixture: Mixture = mix::build(&ev, &bg, &opts.mix);
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;
    let wav = opts.work_dir.join(format!(
        "mixture-seed{}-{}hz-{}ch.wav",
        opts.mix.seed, opts.mix.rate, opts.channels
    ));
    write_wav(&wav, &mixture.samples, mixture.rate, opts.channels)?;

    let skip = cfg.model.skip_quiet_windows;
    let (live_events, hops) =
        run_pipeline(&model, cfg, &wav, scaled_detector(cfg, &model, 1.0)?, skip)?;

    let truth: Vec<TruthEvent> = mixture.truth.iter().map(TruthEvent::from).collect();
    let m = &opts.matching;
    let mut background_s = mix::background_s(&mixture, m.early_s, m.late_s);
    let group_names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let mut live = detections(&live_events);
    let mut beds = mixture.beds.clone();
    // Each stream's hops and where it starts on the one time line the scoring sees.
    let mut streams: Vec<(f64, Vec<OwnedHop>)> = vec![(0.0, hops)];
    let mut offset = mixture.duration_s();
    let mut extra_s = opts.background_h * 3600.0;
    let mut k = 0u64;
    while extra_s >= 1.0 {
        let secs = extra_s.min(1800.0);
        let spec = MixSpec {
            seed: opts.mix.seed.wrapping_mul(1000).wrapping_add(k + 1),
            ..opts.mix.clone()
        };
        let layers = 1 + (k % 2) as usize;
        let stream = mix::background(&bg, secs, layers, &spec);
        let path = opts
            .work_dir
            .join(format!("background-seed{}-{k}.wav", opts.mix.seed));
        write_wav(&path, &stream.samples, stream.rate, opts.channels)?;
        let (events, hops) =
            run_pipeline(&model, cfg, &path, scaled_detector(cfg, &model, 1.0)?, skip)?;
        let _ = std::fs::remove_file(&path);
        tracing::info!(
            "background stream {k}: {:.0} min, {} sounds at once, {} detections",
            secs / 60.0,
            layers,
            detections(&events).len()
        );
        live.extend(shifted(detections(&events), offset));
        beds.extend(stream.beds.into_iter().map(|mut b| {
            b.start_s += offset;
            b.end_s += offset;
            b
        }));
        streams.push((offset, hops));
        background_s += secs;
        offset += secs;
        extra_s -= secs;
        k += 1;
    }
    let hours = background_s / 3600.0;
    let results = score(&truth, &live, &group_names, hours, m);
    let mut found_by_snr: Vec<(String, Vec<FoundAt>)> = group_names
        .iter()
        .map(|g| (g.clone(), Vec::new()))
        .collect();
    for &snr in &opts.mix.snrs_db {
        let at: Vec<TruthEvent> = mixture
            .truth
            .iter()
            .filter(|p| p.snr_db == snr)
            .map(TruthEvent::from)
            .collect();
        for (r, (_, row)) in score(&at, &live, &group_names, hours, m)
            .into_iter()
            .zip(found_by_snr.iter_mut())
        {
            row.push(FoundAt {
                snr_db: snr,
                found: r.found,
                events: r.events,
            });
        }
    }
    let false_alarm_causes = group_names
        .iter()
        .map(|g| {
            let causes = super::metrics::false_alarm_causes(g, &truth, &beds, &live, m);
            (g.clone(), causes)
        })
        .collect();

    let mut curves: Vec<(String, Vec<CurvePoint>)> = group_names
        .iter()
        .map(|g| (g.clone(), Vec::new()))
        .collect();
    for &scale in &opts.scales {
        let mut dets = Vec::new();
        for (offset, hops) in &streams {
            let d = replay(scaled_detector(cfg, &model, scale)?, hops, model.labels());
            dets.extend(shifted(detections(&d), *offset));
        }
        for (r, (_, curve)) in score(&truth, &dets, &group_names, hours, m)
            .into_iter()
            .zip(curves.iter_mut())
        {
            curve.push(CurvePoint::new(
                scale,
                r.recall,
                r.false_alarms_per_hour,
                r.precision,
            ));
        }
    }
    let best_at = |fa: f64| -> Vec<(String, Option<CurvePoint>)> {
        curves
            .iter()
            .map(|(g, c)| (g.clone(), super::metrics::recall_at_fa(c, fa).cloned()))
            .collect()
    };
    let (best_at_1_per_h, best_at_0_1_per_h) = (best_at(1.0), best_at(0.1));
    Ok(EvalReport {
        model: model.name().to_string(),
        best_at_1_per_h,
        best_at_0_1_per_h,
        split: format!("{:?}", opts.split).to_lowercase(),
        seed: opts.mix.seed,
        snrs_db: opts.mix.snrs_db.clone(),
        rate: opts.mix.rate,
        channels: opts.channels,
        duration_s: mixture.duration_s(),
        background_s,
        mixture: wav,
        groups: results,
        curves,
        false_alarm_causes,
        found_by_snr,
        truth: mixture.truth,
        detections: live,
    })
}

/// The report as a text table.
pub fn render_text(r: &EvalReport) -> String {
    let mut s = format!(
        "{} on {:.1} min of mixtures ({} split, seed {}, SNR {:?} dB, {} Hz {} ch; {:.1} min of background)\n",
        r.model,
        r.duration_s / 60.0,
        r.split,
        r.seed,
        r.snrs_db,
        r.rate,
        r.channels,
        r.background_s / 60.0
    );
    s.push_str(
        "group         events  found  recall  false alarms/h  precision  latency median/p90\n",
    );
    for g in &r.groups {
        let lat = match (g.latency_median_s, g.latency_p90_s) {
            (Some(a), Some(b)) => format!("{a:.2} / {b:.2} s"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:<13} {:>6} {:>6} {:>7.2} {:>15.1} {:>10.2}  {lat}\n",
            g.group, g.events, g.found, g.recall, g.false_alarms_per_hour, g.precision
        ));
    }
    s.push_str("events found by SNR:\n");
    for (g, row) in &r.found_by_snr {
        let cells: Vec<String> = row
            .iter()
            .map(|f| format!("{:+.0} dB {}/{}", f.snr_db, f.found, f.events))
            .collect();
        s.push_str(&format!("  {g:<13} {}\n", cells.join(", ")));
    }
    if r.false_alarm_causes.iter().any(|(_, c)| !c.is_empty()) {
        s.push_str("false alarms heard over:\n");
        for (g, causes) in r.false_alarm_causes.iter().filter(|(_, c)| !c.is_empty()) {
            let list: Vec<String> = causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
            s.push_str(&format!("  {g:<13} {}\n", list.join(", ")));
        }
    }
    for (limit, best) in [
        ("1 false alarm per hour", &r.best_at_1_per_h),
        ("1 false alarm in 10 hours", &r.best_at_0_1_per_h),
    ] {
        s.push_str(&format!(
            "best recall with at most {limit} (threshold scale):\n"
        ));
        for (g, p) in best {
            match p {
                Some(p) => s.push_str(&format!(
                    "  {g:<13} {:.2} at x{:.2} ({:.2}/h)\n",
                    p.recall, p.scale, p.false_alarms_per_hour
                )),
                None => s.push_str(&format!("  {g:<13} none\n")),
            }
        }
    }
    s
}
