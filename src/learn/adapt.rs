//! `hearken adapt`: teaches each trained detector this home's own false alarms.
//!
//! For every group it has a trained detector and a validation set for, it takes the
//! windows the home store kept (those that reached the detector's `off` threshold:
//! the only ones that can ever become false alarms) as negatives, weighted by their
//! score so the highest weigh most, and the household's "false alarm" verdicts four
//! times over; "that was real" verdicts and the validation set's event windows are
//! the positives. It learns a [`HomeCorrection`] — a term on the log-odds of the
//! model's AudioSet class scores that can only lower the detector's log-odds — and
//! a raise of the thresholds.
//!
//! Every way of adapting (no correction, or one per L2 penalty, each with the
//! thresholds raised in quarter log-odds) is judged out of sample: the home's
//! windows are split into alternating ten-minute blocks and the validation events
//! into two halves, each half scored by a correction fitted on the other. Among
//! those that keep validation recall within the allowed drop, it takes the highest
//! recall that meets the false-alarm budget or, when none does, the fewest false
//! alarms; a group where nothing cuts false alarms within the recall bound keeps
//! its shipped detector, and the report says why. The final correction is then
//! fitted on everything.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use uuid::Uuid;

use crate::config::GroupConfig;
use crate::detect::trained::{HomeCorrection, LinearDetector};
use crate::detect::{apply_trained, Detector, Fixed, Identity, OwnedHop};
use crate::eval::metrics::{Matching, TruthEvent};
use crate::eval::run::{detections, replay};
use crate::eval::validation::{ValEvent, ValidationSet};
use crate::model::Labels;
use crate::store::Contents;

/// Folder of the adapted detectors inside the state directory.
pub const ADAPTED_DIR: &str = "adapted";

/// How to adapt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptOptions {
    /// False alarms per week the home may expect.
    pub false_alarms_per_week: f64,
    /// Largest validation-recall loss accepted.
    pub max_recall_drop: f64,
    /// Hours of stored home sound needed before adapting at all.
    pub min_hours: f64,
    /// L2 penalties tried for the correction.
    pub l2s: Vec<f64>,
    /// Gradient steps per fit.
    pub iterations: usize,
}

impl Default for AdaptOptions {
    fn default() -> Self {
        AdaptOptions {
            false_alarms_per_week: 1.0,
            max_recall_drop: 0.05,
            min_hours: 0.5,
            l2s: vec![0.003, 0.01, 0.03, 0.1, 0.3],
            iterations: 300,
        }
    }
}

/// What adapting did for one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    /// Group.
    pub group: String,
    /// `adapted`, `kept` (the shipped detector stays: see `reason`) or `unchanged`
    /// (already within the budget).
    pub outcome: String,
    /// Why, in a sentence.
    pub reason: String,
    /// `on` threshold before and after.
    pub on_before: f32,
    /// See `on_before`.
    pub on_after: f32,
    /// Expected false alarms per week in this home, before and after (after: scored
    /// out of sample).
    pub fa_per_week_before: f64,
    /// See `fa_per_week_before`.
    pub fa_per_week_after: f64,
    /// Validation event recall before and after (none without validation events).
    pub recall_before: Option<f64>,
    /// See `recall_before`.
    pub recall_after: Option<f64>,
    /// Validation events of the group.
    pub validation_events: usize,
    /// Home windows used (those at or over the shipped `off`).
    pub home_windows: usize,
    /// Events of the group the household marked as false alarms / as real.
    pub marked_false_alarms: usize,
    /// See `marked_false_alarms`.
    pub marked_real: usize,
    /// L2 penalty of the correction (none: thresholds only, or nothing changed).
    pub l2: Option<f64>,
    /// Log-odds the thresholds moved up.
    pub threshold_shift: f64,
}

/// Everything adapting reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptReport {
    /// Hours of home sound the store counted.
    pub observed_h: f64,
    /// Windows it kept.
    pub stored_windows: usize,
    /// Per group.
    pub groups: Vec<GroupReport>,
    /// The options.
    pub options: AdaptOptions,
}

/// Detections of one group replayed over `(end_s, score)` hops with `gc`.
fn replay_scores(
    name: &str,
    gc: &GroupConfig,
    hops: &[(f64, f32)],
    window_s: f64,
    hop_s: f64,
    labels: &Labels,
) -> Vec<crate::eval::metrics::Detection> {
    let mut gc = gc.clone();
    gc.enabled = true;
    let d = Detector::new(
        vec![(
            name.to_string(),
            gc,
            Box::new(Fixed::new(hops.iter().map(|h| h.1).collect())),
        )],
        Identity::default(),
    );
    let owned: Vec<OwnedHop> = hops
        .iter()
        .map(|&(end_s, _)| OwnedHop {
            start_s: end_s - window_s,
            end_s,
            hop_s,
            scores_mean: Vec::new(),
            scores_max: Vec::new(),
            dbfs: 0.0,
            embedding: Vec::new(),
            heads: Vec::new(),
            net_scores: Vec::new(),
            tones: Vec::new(),
        })
        .collect();
    detections(&replay(d, &owned, labels))
}

/// The home's windows of one group as a hop sequence: each stored window at its
/// time, and where windows were not kept (under every floor), enough zero-score
/// hops to let the onset rule and any open event see the gap.
fn home_hops(times: &[f64], scores: &[f32], hop_s: f64, gc: &GroupConfig) -> Vec<(f64, f32)> {
    let reset = gc.tuning.onset_of.max(1) + 1;
    let mut out = Vec::with_capacity(times.len() * 2);
    for (i, (&t, &s)) in times.iter().zip(scores).enumerate() {
        if i > 0 {
            let prev = times[i - 1];
            let mut k = 1;
            while k <= reset && prev + (k as f64 + 0.5) * hop_s < t {
                out.push((prev + k as f64 * hop_s, 0.0));
                k += 1;
            }
        }
        out.push((t, s));
    }
    if let Some(&last) = times.last() {
        for k in 1..=reset {
            out.push((last + k as f64 * hop_s, 0.0));
        }
    }
    out
}

fn logit(p: f32) -> f64 {
    let p = (p as f64).clamp(1e-7, 1.0 - 1e-7);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `score` with a correction of `c` log-odds (a gated or empty score stays 0).
fn corrected(score: f32, c: f64) -> f32 {
    if score <= 0.0 {
        return 0.0;
    }
    sigmoid(logit(score) + c) as f32
}

/// One row a correction is fitted on: a window's class log-odds.
struct Row<'a> {
    x: &'a [f32],
    base_logit: f64,
    positive: bool,
    weight: f64,
}

/// Fits `final = base_logit − softplus(−(b + w·x))` on standardised class log-odds by
/// full-batch Adam with L2 penalty `l2` on `w`, positives and negatives each
/// weighing half in total (rows keep their relative weights within a class).
/// Deterministic; `None` without both classes.
fn fit_correction(rows: &[Row<'_>], l2: f64, iterations: usize) -> Option<HomeCorrection> {
    let pos: f64 = rows.iter().filter(|r| r.positive).map(|r| r.weight).sum();
    let neg: f64 = rows.iter().filter(|r| !r.positive).map(|r| r.weight).sum();
    if pos <= 0.0 || neg <= 0.0 {
        return None;
    }
    let xs: Vec<&[f32]> = rows.iter().map(|r| r.x).collect();
    let (mean, scale) = crate::eval::fit::standardisation(&xs);
    let d = mean.len();
    let x: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            r.x.iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((v, m), s)| (v - m) * s)
                .collect()
        })
        .collect();
    let wt: Vec<f64> = rows
        .iter()
        .map(|r| r.weight * if r.positive { 0.5 / pos } else { 0.5 / neg })
        .collect();
    let mut w = vec![0f64; d];
    // Starts as a correction of about −0.05 log-odds: nearly nothing.
    let mut b = 3.0f64;
    let mut adam = crate::eval::fit::Adam::new(d, 0.05);
    let mut g = vec![0f64; d + 1];
    for _ in 0..iterations {
        g.iter_mut().for_each(|x| *x = 0.0);
        for ((row, xr), &weight) in rows.iter().zip(&x).zip(&wt) {
            let u = b + xr
                .iter()
                .zip(&w)
                .map(|(&a, &wi)| a as f64 * wi)
                .sum::<f64>();
            let p = sigmoid(row.base_logit - softplus(-u));
            let y = row.positive as u8 as f64;
            // d final / d u = sigmoid(−u).
            let gu = (p - y) * sigmoid(-u) * weight;
            for (gi, &a) in g.iter_mut().zip(xr) {
                *gi += gu * a as f64;
            }
            g[d] += gu;
        }
        adam.step(&mut w, &mut b, &mut g, l2);
    }
    Some(HomeCorrection {
        mean,
        scale,
        weights: w.into_iter().map(|x| x as f32).collect(),
        bias: b as f32,
        from_sha256: String::new(),
        shipped_off: 0.0,
        adapted: serde_json::Value::Null,
    })
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// One home window of the group, as adapting uses it.
struct HomeWindow<'a> {
    t_s: f64,
    base: f32,
    classes: &'a [f32],
    fold: usize,
    /// Verdict: some(false) marked a false alarm, some(true) marked real.
    verdict: Option<bool>,
}

/// What one way of adapting (a correction fitted with one L2 penalty, or none,
/// and a raise of the thresholds) gives on the out-of-sample scores.
#[derive(Debug, Clone, Copy)]
struct Choice {
    l2: Option<f64>,
    shift: f64,
    fa_per_week: f64,
    recall: Option<f64>,
}

/// Inputs for one group.
pub struct GroupInput<'a> {
    /// The shipped detector.
    pub detector: &'a LinearDetector,
    /// The group's settings (cooldown, timing); the detector's thresholds are put
    /// over them.
    pub settings: &'a GroupConfig,
    /// Its validation events, and the window and hop they were scored with.
    pub validation: Vec<&'a ValEvent>,
    /// Validation window, seconds.
    pub val_window_s: f64,
    /// Validation hop, seconds.
    pub val_hop_s: f64,
}

/// Adapts one group: the report, and the adapted detector when there is one.
pub fn adapt_group(
    input: &GroupInput<'_>,
    home: &Contents,
    labels: &Labels,
    opts: &AdaptOptions,
) -> (GroupReport, Option<LinearDetector>) {
    let d = input.detector;
    let name = d.group.as_str();
    let mut gc = input.settings.clone();
    apply_trained(&mut gc, d);
    let window_s = if d.window_s > 0.0 { d.window_s } else { 2.0 };
    let hop_s = if d.hop_s > 0.0 { d.hop_s } else { 0.5 };
    let observed_h = home.observed_s / 3600.0;
    let per_week = |fa: usize| fa as f64 / observed_h.max(1e-9) * 168.0;

    // The household's verdicts on this group's events, as time spans; a later
    // verdict on an event replaces an earlier one (a press taken back).
    let mut verdicts: Vec<(Uuid, u64, bool)> = Vec::new();
    for &(id, at, real) in &home.marks {
        match verdicts.iter_mut().find(|v| v.0 == id) {
            Some(v) if at >= v.1 => *v = (id, at, real),
            Some(_) => {}
            None => verdicts.push((id, at, real)),
        }
    }
    let mut spans: Vec<(f64, f64, bool)> = Vec::new();
    let (mut marked_false, mut marked_real) = (0, 0);
    for (id, _, real) in &verdicts {
        if let Some(e) = home.events.iter().find(|e| &e.id == id && e.group == name) {
            let start = e.start_ms as f64 / 1000.0 - window_s;
            let end = e.end_ms.unwrap_or(e.start_ms + 30_000) as f64 / 1000.0 + 0.01;
            spans.push((start, end, *real));
            if *real {
                marked_real += 1;
            } else {
                marked_false += 1;
            }
        }
    }
    let t0 = home.windows.first().map_or(0, |w| w.wall_ms);
    let windows: Vec<HomeWindow<'_>> = home
        .windows
        .iter()
        .filter_map(|w| {
            let v = w.view(name)?;
            if v.base <= 0.0 || v.base < d.off || w.classes.len() != d.classes {
                return None;
            }
            let t = w.wall_ms as f64 / 1000.0;
            let verdict = spans
                .iter()
                .rev()
                .find(|s| s.0 <= t && t <= s.1)
                .map(|s| s.2);
            Some(HomeWindow {
                t_s: (w.wall_ms - t0) as f64 / 1000.0,
                base: v.base,
                classes: &w.classes,
                fold: ((w.wall_ms / 600_000) % 2) as usize,
                verdict,
            })
        })
        .collect();
    let real_spans: Vec<(f64, f64)> = spans
        .iter()
        .filter(|s| s.2)
        .map(|s| (s.0 - t0 as f64 / 1000.0, s.1 - t0 as f64 / 1000.0))
        .collect();
    let times: Vec<f64> = windows.iter().map(|w| w.t_s).collect();
    let false_alarms = |scores: &[f32], gc: &GroupConfig| -> usize {
        replay_scores(
            name,
            gc,
            &home_hops(&times, scores, hop_s, gc),
            window_s,
            hop_s,
            labels,
        )
        .iter()
        .filter(|det| {
            !real_spans
                .iter()
                .any(|&(a, b)| det.start_s <= b && det.end_s >= a)
        })
        .count()
    };
    let val = &input.validation;
    let recall = |scores: &[Vec<f32>], gc: &GroupConfig| -> Option<f64> {
        if val.is_empty() {
            return None;
        }
        let found = val
            .iter()
            .zip(scores)
            .filter(|(e, s)| {
                let hops: Vec<(f64, f32)> = e
                    .hops
                    .iter()
                    .zip(s.iter())
                    .map(|(h, &s)| (h.end_s as f64, s))
                    .collect();
                let truth = TruthEvent {
                    group: name.to_string(),
                    onset_s: e.onset_s as f64,
                    offset_s: e.offset_s as f64,
                };
                replay_scores(name, gc, &hops, input.val_window_s, input.val_hop_s, labels)
                    .iter()
                    .any(|det| Matching::default().overlaps(&truth, det))
            })
            .count();
        Some(found as f64 / val.len() as f64)
    };
    let base_scores: Vec<f32> = windows.iter().map(|w| w.base).collect();
    let val_base: Vec<Vec<f32>> = val
        .iter()
        .map(|e| e.hops.iter().map(|h| h.score).collect())
        .collect();
    let fa_before = per_week(false_alarms(&base_scores, &gc));
    let recall_before = recall(&val_base, &gc);
    let mut report = GroupReport {
        group: name.to_string(),
        outcome: "kept".into(),
        reason: String::new(),
        on_before: d.on,
        on_after: d.on,
        fa_per_week_before: fa_before,
        fa_per_week_after: fa_before,
        recall_before,
        recall_after: recall_before,
        validation_events: val.len(),
        home_windows: windows.len(),
        marked_false_alarms: marked_false,
        marked_real,
        l2: None,
        threshold_shift: 0.0,
    };
    if observed_h < opts.min_hours {
        report.reason = format!(
            "the home store holds {:.2} h of sound; adapting needs at least {} h (--min-hours)",
            observed_h, opts.min_hours
        );
        return (report, None);
    }
    if fa_before <= opts.false_alarms_per_week && marked_false == 0 {
        report.outcome = "unchanged".into();
        report.reason = format!(
            "already within {} false alarms per week here",
            opts.false_alarms_per_week
        );
        return (report, None);
    }
    if val.is_empty() {
        report.reason = "no validation events for the group (retrain with `hearken train` to make them), so what adapting costs cannot be measured".into();
        return (report, None);
    }

    // Rows: home windows (negatives unless marked real; the household's "false
    // alarm" verdicts count four times) and the validation hops inside their event
    // that could matter (at or over `off`).
    let val_rows: Vec<(usize, &[f32], f32)> = val
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            e.hops
                .iter()
                .filter(move |h| {
                    !h.classes.is_empty()
                        && h.score >= d.off
                        && h.end_s > e.onset_s
                        && h.start_s < e.offset_s
                })
                .map(move |h| (i, h.classes.as_slice(), h.score))
        })
        .collect();
    let rows_for = |fold: Option<usize>| -> Vec<Row<'_>> {
        let keep = |f: usize| fold.is_none_or(|k| f != k);
        let mut rows: Vec<Row<'_>> = windows
            .iter()
            .filter(|w| keep(w.fold))
            .map(|w| Row {
                x: w.classes,
                base_logit: logit(w.base),
                positive: w.verdict == Some(true),
                weight: (w.base as f64).max(0.05)
                    * if w.verdict == Some(false) { 4.0 } else { 1.0 },
            })
            .collect();
        rows.extend(
            val_rows
                .iter()
                .filter(|(i, ..)| keep(i % 2))
                .map(|&(_, e, s)| Row {
                    x: e,
                    base_logit: logit(s),
                    positive: true,
                    weight: 1.0,
                }),
        );
        rows
    };
    // Every way of adapting (no correction, or one per L2 penalty, each with the
    // thresholds raised in quarter log-odds), scored out of sample: each half of
    // the home's windows and of the validation events by a correction fitted on
    // the other half.
    let mut choices: Vec<Choice> = Vec::new();
    let mut curve = |home_scores: &[f32], val_scores: &[Vec<f32>], l2: Option<f64>| {
        for k in 0..=48 {
            let shift = 0.25 * k as f64;
            let mut shifted = d.clone();
            shifted.shift_thresholds(shift);
            let mut g = input.settings.clone();
            apply_trained(&mut g, &shifted);
            let fa = per_week(false_alarms(home_scores, &g));
            let r = recall(val_scores, &g);
            tracing::debug!(
                group = name,
                "{name}: correction {l2:?}, thresholds +{shift}: {fa:.1} false alarms/week, recall {r:?}"
            );
            choices.push(Choice {
                l2,
                shift,
                fa_per_week: fa,
                recall: r,
            });
            if fa == 0.0 {
                break;
            }
        }
    };
    curve(&base_scores, &val_base, None);
    for &l2 in &opts.l2s {
        let mut home_scores = base_scores.clone();
        let mut val_scores = val_base.clone();
        let mut ok = true;
        for fold in 0..2 {
            let Some(c) = fit_correction(&rows_for(Some(fold)), l2, opts.iterations) else {
                ok = false;
                break;
            };
            for (s, w) in home_scores.iter_mut().zip(&windows) {
                if w.fold == fold {
                    *s = corrected(w.base, c.logit(w.classes) as f64);
                }
            }
            for (i, (s, e)) in val_scores.iter_mut().zip(val).enumerate() {
                if i % 2 == fold {
                    for (x, h) in s.iter_mut().zip(&e.hops) {
                        *x = corrected(h.score, c.logit(&h.classes) as f64);
                    }
                }
            }
        }
        if ok {
            curve(&home_scores, &val_scores, Some(l2));
        }
    }
    // Within the recall bound: the highest recall that meets the budget or, if
    // none does, the fewest false alarms (then the higher recall, the smaller raise).
    let floor = recall_before.unwrap_or(0.0) - opts.max_recall_drop - 1e-9;
    let r = |c: &Choice| c.recall.unwrap_or(0.0);
    let allowed: Vec<&Choice> = choices.iter().filter(|c| r(c) >= floor).collect();
    let meets = |c: &Choice| c.fa_per_week <= opts.false_alarms_per_week;
    let best = if allowed.iter().any(|c| meets(c)) {
        allowed
            .iter()
            .filter(|c| meets(c))
            .max_by(|a, b| r(a).total_cmp(&r(b)).then(b.shift.total_cmp(&a.shift)))
    } else {
        allowed.iter().min_by(|a, b| {
            a.fa_per_week
                .total_cmp(&b.fa_per_week)
                .then(r(b).total_cmp(&r(a)))
                .then(a.shift.total_cmp(&b.shift))
        })
    }
    .map(|c| **c);
    let Some(best) = best.filter(|b| b.fa_per_week < fa_before) else {
        // What meeting the budget would have cost, for the report.
        let cheapest = choices
            .iter()
            .filter(|c| c.fa_per_week <= opts.false_alarms_per_week)
            .max_by(|a, b| r(a).total_cmp(&r(b)));
        report.reason = match cheapest {
            Some(c) => format!(
                "nothing cuts its false alarms here without losing more than {} of validation recall (--max-recall-drop); meeting {} per week would cost {:.2} ({:.2} → {:.2})",
                opts.max_recall_drop,
                opts.false_alarms_per_week,
                recall_before.unwrap_or(0.0) - r(c),
                recall_before.unwrap_or(0.0),
                r(c)
            ),
            None => format!(
                "nothing cuts its false alarms here without losing more than {} of validation recall (--max-recall-drop)",
                opts.max_recall_drop
            ),
        };
        return (report, None);
    };
    report.fa_per_week_after = best.fa_per_week;
    report.recall_after = best.recall;
    report.l2 = best.l2;
    report.threshold_shift = best.shift;
    let mut adapted = d.clone();
    adapted.shift_thresholds(best.shift);
    report.on_after = adapted.on;
    let mut c = match best.l2 {
        Some(l2) => fit_correction(&rows_for(None), l2, opts.iterations)
            .expect("both classes are present: the folds had them"),
        // Thresholds alone: a correction that changes nothing keeps the record of
        // what was adapted and from what.
        None => HomeCorrection {
            mean: vec![0.0; d.classes],
            scale: vec![1.0; d.classes],
            weights: vec![0.0; d.classes],
            bias: 30.0,
            from_sha256: String::new(),
            shipped_off: 0.0,
            adapted: serde_json::Value::Null,
        },
    };
    c.shipped_off = d.off;
    adapted.home = Some(c);
    report.outcome = "adapted".into();
    let how = match best.l2 {
        Some(_) => format!(
            "a correction for this home's sounds and thresholds {:.2} log-odds higher",
            best.shift
        ),
        None => format!("thresholds {:.2} log-odds higher", best.shift),
    };
    report.reason = if best.fa_per_week <= opts.false_alarms_per_week {
        how
    } else {
        format!(
            "{how}: the most it can cut while keeping validation recall within {} (the budget of {} per week is out of reach)",
            opts.max_recall_drop, opts.false_alarms_per_week
        )
    };
    (report, Some(adapted))
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&data)))
}

/// The shipped detectors and what came with them.
pub struct Shipped<'a> {
    /// The detectors.
    pub detectors: &'a [LinearDetector],
    /// The file each was loaded from (an adapted detector is tied to it by its
    /// sha256).
    pub files: &'a [PathBuf],
    /// The validation set beside each, if its folder has one.
    pub validation: &'a [Option<&'a ValidationSet>],
}

/// Adapts every shipped detector for `settings`' groups with the home store
/// `home`, writing the adapted ones into `out` (and removing adapted files of
/// groups that keep their shipped detector).
pub fn adapt_all(
    shipped: &Shipped<'_>,
    settings: &std::collections::BTreeMap<String, GroupConfig>,
    home: &Contents,
    labels: &Labels,
    opts: &AdaptOptions,
    out: &Path,
) -> Result<AdaptReport> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut groups = Vec::new();
    for (i, d) in shipped.detectors.iter().enumerate() {
        let val = shipped.validation.get(i).copied().flatten();
        let Some(gc) = settings.get(&d.group) else {
            continue;
        };
        let input = GroupInput {
            detector: d,
            settings: gc,
            validation: val.map(|v| v.of(&d.group).collect()).unwrap_or_default(),
            val_window_s: val.map_or(2.0, |v| v.header.window_s),
            val_hop_s: val.map_or(0.5, |v| v.header.hop_s),
        };
        let (mut report, adapted) = adapt_group(&input, home, labels, opts);
        let path = out.join(format!("{}.json", d.group));
        match adapted {
            Some(mut a) => {
                let home_c = a
                    .home
                    .as_mut()
                    .expect("adapted detectors carry a correction");
                home_c.from_sha256 = file_sha256(&shipped.files[i])?;
                home_c.adapted = serde_json::json!({
                    "by": format!("hearken adapt {}", env!("CARGO_PKG_VERSION")),
                    "report": &report,
                });
                let tmp = out.join(format!(".{}.json.tmp", d.group));
                a.save(&tmp)?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            None => {
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                    report
                        .reason
                        .push_str("; its earlier adaptation was removed");
                }
            }
        }
        groups.push(report);
    }
    Ok(AdaptReport {
        observed_h: home.observed_s / 3600.0,
        stored_windows: home.windows.len(),
        groups,
        options: opts.clone(),
    })
}

/// Puts the adapted detectors in `adapted_dir` over `shipped` (loaded from
/// `files`): each one made for exactly that shipped file (by its sha256)
/// takes its group's place, running the shipped network if any. Returns what was
/// skipped, with why (a shipped detector retrained or upgraded since). A file that
/// cannot be read or is not a valid detector is an error naming it.
pub fn overlay(
    shipped: &mut [LinearDetector],
    files: &[PathBuf],
    adapted_dir: &Path,
) -> Result<Vec<String>> {
    let mut skipped = Vec::new();
    if !adapted_dir.is_dir() {
        return Ok(skipped);
    }
    for (d, file) in shipped.iter_mut().zip(files) {
        let path = adapted_dir.join(format!("{}.json", d.group));
        if !path.exists() {
            continue;
        }
        let mut a = LinearDetector::load(&path)
            .map_err(|e| anyhow!("{e:#}; `hearken adapt --reset` removes the adapted detectors"))?;
        let Some(h) = &a.home else {
            bail!(
                "{} is not an adapted detector (it has no home correction); `hearken adapt --reset` removes the adapted detectors",
                path.display()
            );
        };
        let now = file_sha256(file)?;
        if h.from_sha256 != now || a.group != d.group {
            skipped.push(format!(
                "{}: the shipped {} detector changed since it was adapted; using the shipped one (run `hearken adapt` again)",
                path.display(),
                d.group
            ));
            continue;
        }
        a.net = d.net.clone();
        *d = a;
    }
    Ok(skipped)
}

/// Where the adapted detectors of a state directory live.
pub fn adapted_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(ADAPTED_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_correction_only_lowers_and_learns_the_households_sound() {
        // Negatives near (1, 0), positives near (0, 1): the correction must push
        // the negatives down and leave the positives.
        let neg: Vec<Vec<f32>> = (0..50).map(|i| vec![1.0 + i as f32 * 0.01, 0.0]).collect();
        let pos: Vec<Vec<f32>> = (0..50).map(|i| vec![0.0, 1.0 + i as f32 * 0.01]).collect();
        let row = |e: &'static [f32], positive| Row {
            x: e,
            base_logit: 2.0,
            positive,
            weight: 1.0,
        };
        let neg: &'static [Vec<f32>] = Box::leak(neg.into_boxed_slice());
        let pos: &'static [Vec<f32>] = Box::leak(pos.into_boxed_slice());
        let mut rows: Vec<Row<'_>> = neg.iter().map(|e| row(e, false)).collect();
        rows.extend(pos.iter().map(|e| row(e, true)));
        let c = fit_correction(&rows, 1e-3, 300).unwrap();
        let (n, p) = (c.logit(&neg[10]), c.logit(&pos[10]));
        assert!(n < -3.0, "negatives pushed down: {n}");
        assert!(p > -0.5 && p <= 0.0, "positives left alone: {p}");
        assert_eq!(
            c.logit(&[1.0]),
            0.0,
            "a wrong-sized embedding is left alone"
        );
        // Without one class there is nothing to learn.
        assert!(fit_correction(&rows[..50], 1e-3, 10).is_none());
    }

    #[test]
    fn an_adapted_detector_replaces_only_the_shipped_file_it_was_made_for() {
        let root = std::env::temp_dir().join(format!("hearken-overlay-{}", std::process::id()));
        let (shipped_dir, adapted) = (root.join("shipped"), root.join("adapted"));
        std::fs::create_dir_all(&shipped_dir).unwrap();
        std::fs::create_dir_all(&adapted).unwrap();
        let mut d = LinearDetector::on_standardised(2, vec![1.0, 0.0], 0.0, None);
        d.group = "scream".into();
        d.classes = 2;
        (d.on, d.off) = (0.9, 0.6);
        d.save(&shipped_dir.join("scream.json")).unwrap();
        let mut a = d.clone();
        a.shift_thresholds(1.0);
        a.home = Some(HomeCorrection {
            mean: vec![0.0; 2],
            scale: vec![1.0; 2],
            weights: vec![-1.0, 0.0],
            bias: 0.0,
            from_sha256: file_sha256(&shipped_dir.join("scream.json")).unwrap(),
            shipped_off: 0.6,
            adapted: serde_json::Value::Null,
        });
        a.save(&adapted.join("scream.json")).unwrap();
        let files = [shipped_dir.join("scream.json")];
        let mut dets = vec![d.clone()];
        assert!(overlay(&mut dets, &files, &adapted).unwrap().is_empty());
        assert!(dets[0].home.is_some() && dets[0].on > 0.9);
        // The shipped file changes (a retrain): the adaptation no longer applies.
        let mut retrained = d.clone();
        retrained.bias = 0.5;
        retrained.save(&shipped_dir.join("scream.json")).unwrap();
        let mut dets = vec![retrained];
        let skipped = overlay(&mut dets, &files, &adapted).unwrap();
        assert!(
            skipped[0].contains("changed since it was adapted"),
            "{skipped:?}"
        );
        assert!(dets[0].home.is_none());
        // A damaged adapted file is an error that names it and the way out.
        std::fs::write(adapted.join("scream.json"), "{\"group\": ").unwrap();
        let e = overlay(&mut dets, &files, &adapted)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapted/scream.json") && e.contains("--reset"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn gaps_between_kept_windows_become_zero_hops() {
        let gc = GroupConfig::new(true, true, vec![], crate::config::MAX_POOLED);
        let h = home_hops(&[0.0, 0.5, 10.0], &[0.9, 0.9, 0.9], 0.5, &gc);
        let zeros = h.iter().filter(|x| x.1 == 0.0).count();
        assert!(zeros >= 2, "{h:?}");
        assert!(
            h.windows(2).all(|w| w[0].0 < w[1].0),
            "in time order: {h:?}"
        );
        assert_eq!(h.iter().filter(|x| x.1 > 0.0).count(), 3);
    }
}
