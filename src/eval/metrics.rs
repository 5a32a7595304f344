//! Scoring of an evaluation run: which labelled events the detector found, how many
//! false alarms it raised, how fast it was, and summary numbers for threshold sweeps.
//!
//! Everything here is pure (no I/O, no clock): the runner hands in the truth of a
//! mixture and what the detector reported, and gets per-group results back.
//!
//! # Matching rule
//!
//! A [`Detection`] of group `g` *matches* a [`TruthEvent`] of the same group `g` when
//! the closed intervals `[start_s, end_s]` and `[onset_s - early_s, offset_s + late_s]`
//! overlap (touching at an edge counts). Only groups are compared, never labels within a
//! group. There is no one-to-one assignment:
//!
//! - one detection may match several events (two barks close together reported as one
//!   event make both barks found);
//! - several detections may match one event: the event is found once, and every one of
//!   those detections is a true detection (a detector that splits a long alarm in two is
//!   not charged a false alarm for the second half).
//!
//! A detection of `g` that matches no event of `g` is a false alarm of `g`, also when it
//! overlaps an event of another group: cross-group confusion is a false alarm.

use serde::{Deserialize, Serialize};

use super::mix::Laid;

/// A labelled event placed in a mixture (seconds of stream time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthEvent {
    /// Detection group the event belongs to.
    pub group: String,
    /// Stream time the event starts.
    pub onset_s: f64,
    /// Stream time the event ends.
    pub offset_s: f64,
}

/// What the detector reported, one per event id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Detection group that fired.
    pub group: String,
    /// Estimated onset of the event (stream time).
    pub start_s: f64,
    /// Stream time the start message was emitted (what a user waits for).
    pub detected_s: f64,
    /// End of the event (stream time).
    pub end_s: f64,
    /// Highest score seen during the event.
    pub peak_score: f32,
}

/// Tolerances of the matching rule (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Matching {
    /// How long before a truth onset a detection may start and still match.
    pub early_s: f64,
    /// How long after a truth offset a detection may start and still match.
    pub late_s: f64,
}

impl Default for Matching {
    /// `early_s = 0.5`, `late_s = 2.0`.
    fn default() -> Self {
        Matching {
            early_s: 0.5,
            late_s: 2.0,
        }
    }
}

impl Matching {
    /// Whether `det` matches `ev`, looking at time only (the caller compares groups).
    pub fn overlaps(&self, ev: &TruthEvent, det: &Detection) -> bool {
        det.start_s <= ev.offset_s + self.late_s && det.end_s >= ev.onset_s - self.early_s
    }
}

/// Detection quality of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupResult {
    /// The group.
    pub group: String,
    /// Truth events of the group.
    pub events: usize,
    /// Truth events matched by at least one detection of the group.
    pub found: usize,
    /// `found / events`; 1.0 when the group has no events (nothing was missed: look at
    /// `events` to tell a vacuous 1.0 from a real one).
    pub recall: f64,
    /// Detections of the group.
    pub detections: usize,
    /// Detections that match at least one truth event of the group.
    pub true_detections: usize,
    /// `detections - true_detections`.
    pub false_alarms: usize,
    /// `false_alarms / background_hours`; 0.0 when `background_hours` is not > 0.
    pub false_alarms_per_hour: f64,
    /// `true_detections / detections`; 1.0 when there are no detections.
    pub precision: f64,
    /// Per found event, in truth order: `detected_s - onset_s` of the first matching
    /// detection (the one with the smallest `detected_s`). Negative when the detector
    /// reported the event before its labelled onset (allowed by `early_s`); kept as is.
    pub latencies_s: Vec<f64>,
    /// Median of `latencies_s` (mean of the two middle values for an even count).
    pub latency_median_s: Option<f64>,
    /// 90th percentile of `latencies_s`, nearest-rank: the `ceil(0.9 n)`-th smallest.
    pub latency_p90_s: Option<f64>,
}

/// Scores detections against truth, one [`GroupResult`] per entry of `groups`, in that
/// order.
///
/// Events and detections of groups not listed in `groups` are ignored.
/// `background_hours` is the length of background the detections were run over, the
/// denominator of `false_alarms_per_hour`; when it is not > 0 (0, negative, NaN) the
/// rate is reported as 0.0 rather than infinity or NaN.
pub fn score(
    truth: &[TruthEvent],
    dets: &[Detection],
    groups: &[String],
    background_hours: f64,
    m: &Matching,
) -> Vec<GroupResult> {
    groups
        .iter()
        .map(|g| score_group(g, truth, dets, background_hours, m))
        .collect()
}

fn score_group(
    group: &str,
    truth: &[TruthEvent],
    dets: &[Detection],
    background_hours: f64,
    m: &Matching,
) -> GroupResult {
    let events: Vec<&TruthEvent> = truth.iter().filter(|e| e.group == group).collect();
    let gdets: Vec<&Detection> = dets.iter().filter(|d| d.group == group).collect();

    let mut latencies_s = Vec::new();
    for ev in &events {
        let first = gdets
            .iter()
            .filter(|d| m.overlaps(ev, d))
            .min_by(|a, b| a.detected_s.total_cmp(&b.detected_s));
        if let Some(d) = first {
            latencies_s.push(d.detected_s - ev.onset_s);
        }
    }
    let found = latencies_s.len();

    let true_detections = gdets
        .iter()
        .filter(|d| events.iter().any(|ev| m.overlaps(ev, d)))
        .count();
    let false_alarms = gdets.len() - true_detections;

    let false_alarms_per_hour = if background_hours > 0.0 {
        false_alarms as f64 / background_hours
    } else {
        0.0
    };

    let mut sorted = latencies_s.clone();
    sorted.sort_by(f64::total_cmp);

    GroupResult {
        group: group.to_string(),
        events: events.len(),
        found,
        recall: ratio_or_one(found, events.len()),
        detections: gdets.len(),
        true_detections,
        false_alarms,
        false_alarms_per_hour,
        precision: ratio_or_one(true_detections, gdets.len()),
        latency_median_s: median_sorted(&sorted),
        latency_p90_s: nearest_rank_sorted(&sorted, 0.9),
        latencies_s,
    }
}

fn ratio_or_one(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Median of ascending `v` (mean of the two middle values for an even length).
pub fn median_sorted(v: &[f64]) -> Option<f64> {
    let n = v.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(v[n / 2])
    } else {
        Some((v[n / 2 - 1] + v[n / 2]) / 2.0)
    }
}

/// Nearest-rank percentile of ascending `v`: the `ceil(q n)`-th smallest (at least
/// the first), `q` in (0, 1].
fn nearest_rank_sorted(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// One operating point of a threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Threshold scale of this point (1.0 = the configured thresholds).
    pub scale: f64,
    /// Recall at this point.
    pub recall: f64,
    /// False alarms per hour of background at this point.
    pub false_alarms_per_hour: f64,
    /// Precision at this point.
    pub precision: f64,
}

impl CurvePoint {
    /// A point of a sweep at threshold multiplier `scale`.
    pub fn new(scale: f64, recall: f64, false_alarms_per_hour: f64, precision: f64) -> Self {
        CurvePoint {
            scale,
            recall,
            false_alarms_per_hour,
            precision,
        }
    }
}

/// Average precision of scored clips `(score, is_positive)`: the area under the
/// precision-recall curve as scikit-learn's `average_precision_score` computes it,
/// `AP = sum_n (R_n - R_{n-1}) P_n` over the distinct scores taken as thresholds from
/// the highest down (no interpolation). Clips with equal scores form one threshold, so
/// their order in `scored` does not matter. A NaN score counts as the lowest possible
/// score. `None` if there is no positive clip.
pub fn average_precision(scored: &[(f32, bool)]) -> Option<f64> {
    let positives = scored.iter().filter(|(_, p)| *p).count();
    if positives == 0 {
        return None;
    }
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let mut v: Vec<(f32, bool)> = scored.iter().map(|&(s, p)| (key(s), p)).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));

    let (mut tp, mut fp) = (0usize, 0usize);
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    let mut i = 0;
    while i < v.len() {
        let s = v[i].0;
        // Take every clip with this score as one threshold step.
        while i < v.len() && v[i].0 == s {
            if v[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Some(ap)
}

/// The best recall reachable at or under `max_fa_per_hour` on a curve: among the points
/// whose `false_alarms_per_hour <= max_fa_per_hour`, the one with the highest recall;
/// ties go to fewer false alarms per hour, then higher precision, then the earlier
/// point. Points with a NaN recall or rate never qualify. `None` if no point qualifies.
pub fn recall_at_fa(curve: &[CurvePoint], max_fa_per_hour: f64) -> Option<&CurvePoint> {
    let mut best: Option<&CurvePoint> = None;
    for p in curve {
        if p.recall.is_nan()
            || p.false_alarms_per_hour.is_nan()
            || p.false_alarms_per_hour > max_fa_per_hour
        {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                p.recall > b.recall
                    || (p.recall == b.recall
                        && (p.false_alarms_per_hour < b.false_alarms_per_hour
                            || (p.false_alarms_per_hour == b.false_alarms_per_hour
                                && p.precision > b.precision)))
            }
        };
        if better {
            best = Some(p);
        }
    }
    best
}

/// What each false alarm of `group` was heard over, counted and sorted (most
/// first, then by name): `event:<group>` when it overlaps an event of another group
/// (as [`Matching::overlaps`] has it), else the label of the background clip it
/// overlaps most, else `unknown`.
pub fn false_alarm_causes(
    group: &str,
    truth: &[TruthEvent],
    beds: &[Laid],
    dets: &[Detection],
    m: &Matching,
) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for d in dets.iter().filter(|d| d.group == group) {
        if truth
            .iter()
            .any(|ev| ev.group == group && m.overlaps(ev, d))
        {
            continue;
        }
        let cause = if let Some(ev) = truth.iter().find(|ev| m.overlaps(ev, d)) {
            format!("event:{}", ev.group)
        } else {
            // A detection's span can be a point: it then counts as a tiny span.
            let (a, b) = (d.start_s, d.end_s.max(d.start_s + 1e-6));
            beds.iter()
                .map(|l| (&l.label, b.min(l.end_s) - a.max(l.start_s)))
                .filter(|&(_, o)| o > 0.0)
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .map_or_else(|| "unknown".to_string(), |(label, _)| label.to_string())
        };
        *counts.entry(cause).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(group: &str, onset_s: f64, offset_s: f64) -> TruthEvent {
        TruthEvent {
            group: group.into(),
            onset_s,
            offset_s,
        }
    }

    fn det(group: &str, start_s: f64, detected_s: f64, end_s: f64) -> Detection {
        Detection {
            group: group.into(),
            start_s,
            detected_s,
            end_s,
            peak_score: 0.9,
        }
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn default_tolerances() {
        let m = Matching::default();
        assert_eq!(m.early_s, 0.5);
        assert_eq!(m.late_s, 2.0);
    }

    #[test]
    fn matching_is_inclusive_at_the_tolerance_edges() {
        // Event 10..12, window with default tolerances: [9.5, 14.0] (exact in binary).
        let truth = vec![ev("glass", 10.0, 12.0)];
        let m = Matching::default();
        let g = groups(&["glass"]);
        let cases = [
            // (start, end, matches)
            (9.0, 9.5, true),     // ends exactly at onset - early
            (9.0, 9.49, false),   // ends just before
            (14.0, 15.0, true),   // starts exactly at offset + late
            (14.01, 15.0, false), // starts just after
            (11.0, 11.5, true),   // inside
            (5.0, 20.0, true),    // covers the window
        ];
        for (start, end, matches) in cases {
            let r = &score(&truth, &[det("glass", start, start, end)], &g, 1.0, &m)[0];
            assert_eq!(r.found, usize::from(matches), "det {start}..{end}");
            assert_eq!(
                r.true_detections,
                usize::from(matches),
                "det {start}..{end}"
            );
            assert_eq!(r.false_alarms, usize::from(!matches), "det {start}..{end}");
        }
        // Custom tolerances move the edges.
        let tight = Matching {
            early_s: 0.0,
            late_s: 0.0,
        };
        let r = &score(&truth, &[det("glass", 12.5, 12.5, 13.0)], &g, 1.0, &tight)[0];
        assert_eq!((r.found, r.false_alarms), (0, 1));
        let r = &score(&truth, &[det("glass", 12.0, 12.5, 13.0)], &g, 1.0, &tight)[0];
        assert_eq!((r.found, r.false_alarms), (1, 0));
    }

    #[test]
    fn detection_of_another_group_is_a_false_alarm() {
        // A dog detection over a glass event: glass missed, dog false alarm.
        let truth = vec![ev("glass", 10.0, 11.0)];
        let dets = vec![det("dog", 10.0, 10.5, 11.0)];
        let res = score(
            &truth,
            &dets,
            &groups(&["glass", "dog"]),
            2.0,
            &Default::default(),
        );
        let (glass, dog) = (&res[0], &res[1]);
        assert_eq!(glass.group, "glass");
        assert_eq!((glass.events, glass.found, glass.recall), (1, 0, 0.0));
        assert_eq!((glass.detections, glass.false_alarms), (0, 0));
        assert_eq!(glass.precision, 1.0);
        assert_eq!(glass.latency_median_s, None);
        assert_eq!(dog.group, "dog");
        assert_eq!((dog.events, dog.found, dog.recall), (0, 0, 1.0));
        assert_eq!(
            (dog.detections, dog.true_detections, dog.false_alarms),
            (1, 0, 1)
        );
        assert_eq!(dog.precision, 0.0);
        assert_eq!(dog.false_alarms_per_hour, 0.5);
    }

    #[test]
    fn event_found_once_with_two_detections() {
        let truth = vec![ev("smoke", 100.0, 130.0)];
        let dets = vec![
            // Second half first in the input, to check "first" is by detected_s.
            det("smoke", 116.0, 117.0, 131.0),
            det("smoke", 100.5, 101.25, 115.0),
        ];
        let r = &score(
            &truth,
            &dets,
            &groups(&["smoke"]),
            10.0,
            &Default::default(),
        )[0];
        assert_eq!((r.events, r.found, r.recall), (1, 1, 1.0));
        assert_eq!((r.detections, r.true_detections, r.false_alarms), (2, 2, 0));
        assert_eq!(r.precision, 1.0);
        assert_eq!(r.false_alarms_per_hour, 0.0);
        assert_eq!(r.latencies_s, vec![1.25]);
    }

    #[test]
    fn one_detection_can_find_two_close_events() {
        let truth = vec![ev("dog", 10.0, 10.5), ev("dog", 11.0, 11.5)];
        let dets = vec![det("dog", 10.1, 10.75, 11.6)];
        let r = &score(&truth, &dets, &groups(&["dog"]), 1.0, &Default::default())[0];
        assert_eq!((r.found, r.true_detections, r.false_alarms), (2, 1, 0));
        assert_eq!(r.latencies_s, vec![0.75, -0.25]);
    }

    #[test]
    fn counts_rates_and_ignored_groups() {
        let truth = vec![
            ev("baby", 10.0, 12.0),
            ev("baby", 50.0, 52.0),
            ev("baby", 90.0, 92.0),
            ev("baby", 130.0, 132.0),
            ev("other", 0.0, 1.0), // not a scored group: ignored
        ];
        let dets = vec![
            det("baby", 10.0, 11.0, 12.0),
            det("baby", 50.0, 51.0, 52.0),
            det("baby", 70.0, 71.0, 72.0),    // false alarm
            det("baby", 200.0, 201.0, 202.0), // false alarm
            det("other", 500.0, 501.0, 502.0),
        ];
        let res = score(&truth, &dets, &groups(&["baby"]), 0.5, &Default::default());
        assert_eq!(res.len(), 1);
        let r = &res[0];
        assert_eq!((r.events, r.found), (4, 2));
        assert!(close(r.recall, 0.5));
        assert_eq!((r.detections, r.true_detections, r.false_alarms), (4, 2, 2));
        assert!(close(r.precision, 0.5));
        assert!(close(r.false_alarms_per_hour, 4.0));

        // No background length: the rate is 0, not inf/NaN.
        for hours in [0.0, -1.0, f64::NAN] {
            let r = &score(
                &truth,
                &dets,
                &groups(&["baby"]),
                hours,
                &Default::default(),
            )[0];
            assert_eq!(r.false_alarms_per_hour, 0.0);
        }
    }

    #[test]
    fn empty_inputs() {
        let res = score(&[], &[], &groups(&["a", "b"]), 1.0, &Default::default());
        assert_eq!(res.len(), 2);
        for r in &res {
            assert_eq!(
                (r.events, r.found, r.detections, r.false_alarms),
                (0, 0, 0, 0)
            );
            assert_eq!(
                (r.recall, r.precision, r.false_alarms_per_hour),
                (1.0, 1.0, 0.0)
            );
            assert!(r.latencies_s.is_empty());
            assert_eq!((r.latency_median_s, r.latency_p90_s), (None, None));
        }
        assert!(score(&[], &[], &[], 1.0, &Default::default()).is_empty());
    }

    #[test]
    fn latency_median_and_nearest_rank_p90() {
        // Ten events found with latencies 1..=10 s (given out of order): median 5.5,
        // p90 nearest rank ceil(0.9*10) = 9th smallest = 9.
        let lat = [3.0, 1.0, 10.0, 2.0, 7.0, 5.0, 4.0, 9.0, 6.0, 8.0];
        let truth: Vec<_> = (0..10)
            .map(|i| ev("g", 100.0 * i as f64, 100.0 * i as f64 + 1.0))
            .collect();
        let dets: Vec<_> = (0..10)
            .map(|i| {
                let t = 100.0 * i as f64;
                det("g", t, t + lat[i], t + 12.0)
            })
            .collect();
        let r = &score(&truth, &dets, &groups(&["g"]), 1.0, &Default::default())[0];
        assert_eq!(r.latencies_s, lat.to_vec());
        assert_eq!(r.latency_median_s, Some(5.5));
        assert_eq!(r.latency_p90_s, Some(9.0));

        // Odd count, with a negative latency (started before the labelled onset).
        let s = [-0.25, 0.5, 2.0];
        assert_eq!(median_sorted(&s), Some(0.5));
        assert_eq!(nearest_rank_sorted(&s, 0.9), Some(2.0)); // ceil(2.7) = 3rd
        assert_eq!(median_sorted(&[4.0]), Some(4.0));
        assert_eq!(nearest_rank_sorted(&[4.0], 0.9), Some(4.0));
        // Eleven values: ceil(9.9) = 10th smallest.
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(nearest_rank_sorted(&v, 0.9), Some(10.0));
        assert_eq!(median_sorted(&v), Some(6.0));
        assert_eq!(median_sorted(&[]), None);
        assert_eq!(nearest_rank_sorted(&[], 0.9), None);
    }

    #[test]
    fn results_serialize_to_json() {
        let r = &score(
            &[ev("g", 1.0, 2.0)],
            &[det("g", 1.0, 1.5, 2.0)],
            &groups(&["g"]),
            1.0,
            &Default::default(),
        )[0];
        let j = serde_json::to_value(r).unwrap();
        assert_eq!(j["group"], "g");
        assert_eq!(j["found"], 1);
        assert_eq!(j["latency_median_s"], 0.5);
        let p = CurvePoint {
            scale: 1.0,
            recall: 0.5,
            false_alarms_per_hour: 0.25,
            precision: 0.75,
        };
        assert_eq!(
            serde_json::to_value(p).unwrap()["false_alarms_per_hour"],
            0.25
        );
    }

    fn labelled(scores: &[f32], labels: &[u8]) -> Vec<(f32, bool)> {
        scores
            .iter()
            .zip(labels)
            .map(|(&s, &l)| (s, l == 1))
            .collect()
    }

    #[test]
    fn average_precision_matches_sklearn() {
        // sklearn docs example: average_precision_score([0,0,1,1], [0.1,0.4,0.35,0.8])
        // = 0.8333...: 0.8 (+) P=1 R=.5; 0.4 (-) R unchanged; 0.35 (+) P=2/3 R=1.
        let ap = average_precision(&labelled(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1])).unwrap();
        assert!(close(ap, 0.5 + 0.5 * 2.0 / 3.0), "{ap}");
        assert!(close(ap, 5.0 / 6.0));

        // Perfect ranking and the worst ranking.
        assert_eq!(
            average_precision(&labelled(&[0.9, 0.8, 0.1], &[1, 1, 0])),
            Some(1.0)
        );
        let ap = average_precision(&labelled(&[0.9, 0.8, 0.1], &[0, 0, 1])).unwrap();
        assert!(close(ap, 1.0 / 3.0));

        // No positives: undefined.
        assert_eq!(average_precision(&labelled(&[0.9, 0.1], &[0, 0])), None);
        assert_eq!(average_precision(&[]), None);
    }

    #[test]
    fn average_precision_treats_ties_as_one_threshold() {
        // One tie of a positive and a negative: a single step to P=1/2, R=1 (not 1.0 as
        // positive-first ordering would give).
        assert_eq!(
            average_precision(&labelled(&[0.5, 0.5], &[1, 0])),
            Some(0.5)
        );
        assert_eq!(
            average_precision(&labelled(&[0.5, 0.5], &[0, 1])),
            Some(0.5)
        );

        // labels [0,1,0,1], scores [0.8,0.5,0.5,0.5]: 0.8 (-) P=0 R=0; the 0.5 tie
        // (+,-,+) is one step to tp=2 fp=2: P=1/2, R=1. AP = 0.5, in any input order
        // (one clip at a time, it would depend on the order: 5/12 for -,+,+ and
        // 7/12 for +,+,-).
        let a = labelled(&[0.8, 0.5, 0.5, 0.5], &[0, 1, 0, 1]);
        let b = labelled(&[0.5, 0.5, 0.8, 0.5], &[0, 1, 0, 1]);
        assert_eq!(average_precision(&a), Some(0.5));
        assert_eq!(average_precision(&b), Some(0.5));

        // labels [1,0,1,1], scores [0.9,0.5,0.5,0.1]: 1/3*1 + 1/3*2/3 + 1/3*3/4 = 29/36.
        let ap = average_precision(&labelled(&[0.9, 0.5, 0.5, 0.1], &[1, 0, 1, 1])).unwrap();
        assert!(close(ap, 29.0 / 36.0), "{ap}");

        // All scores equal: AP is the positive rate.
        let ap = average_precision(&labelled(&[0.3; 4], &[1, 0, 0, 0])).unwrap();
        assert!(close(ap, 0.25));
    }

    #[test]
    fn average_precision_nan_scores_rank_last() {
        // The NaN positive is found last: 0.9 (+) P=1 R=.5; 0.2 (-); NaN (+) P=2/3 R=1.
        let ap = average_precision(&[(0.9, true), (f32::NAN, true), (0.2, false)]).unwrap();
        assert!(close(ap, 0.5 + 0.5 * 2.0 / 3.0), "{ap}");
    }

    fn pt(scale: f64, recall: f64, fa: f64, precision: f64) -> CurvePoint {
        CurvePoint::new(scale, recall, fa, precision)
    }

    #[test]
    fn recall_at_fa_picks_best_qualifying_point() {
        let curve = vec![
            pt(0.5, 0.95, 3.0, 0.4),
            pt(0.75, 0.9, 1.0, 0.7),
            pt(1.0, 0.8, 0.5, 0.8),
            pt(1.25, 0.8, 0.25, 0.85),
            pt(1.5, 0.6, 0.0, 1.0),
        ];
        // At or under the limit (inclusive).
        assert_eq!(recall_at_fa(&curve, 1.0).unwrap().scale, 0.75);
        assert_eq!(recall_at_fa(&curve, 0.99).unwrap().scale, 1.25); // tie at 0.8: fewer FA
        assert_eq!(recall_at_fa(&curve, 0.1).unwrap().scale, 1.5);
        assert_eq!(recall_at_fa(&curve, 10.0).unwrap().scale, 0.5);
        assert_eq!(recall_at_fa(&curve[..4], 0.1), None);
        assert_eq!(recall_at_fa(&[], 1.0), None);

        // Same recall and rate: higher precision wins, then the earlier point.
        let tied = vec![
            pt(1.0, 0.7, 0.5, 0.5),
            pt(2.0, 0.7, 0.5, 0.9),
            pt(3.0, 0.7, 0.5, 0.9),
        ];
        assert_eq!(recall_at_fa(&tied, 1.0).unwrap().scale, 2.0);

        // NaN never qualifies.
        let nan = vec![
            pt(1.0, f64::NAN, 0.0, 1.0),
            pt(2.0, 0.5, f64::NAN, 1.0),
            pt(3.0, 0.1, 0.0, 1.0),
        ];
        assert_eq!(recall_at_fa(&nan, 1.0).unwrap().scale, 3.0);
    }

    #[test]
    fn false_alarms_are_blamed_on_what_they_were_heard_over() {
        let truth = [ev("glass", 10.0, 11.0), ev("siren", 30.0, 34.0)];
        let laid = |label: &str, start_s, end_s| Laid {
            label: label.into(),
            start_s,
            end_s,
        };
        let beds = [
            laid("speech", 0.0, 20.0),
            laid("door_slam", 20.0, 25.0),
            laid("speech", 25.0, 60.0),
        ];
        let dets = [
            det("glass", 10.0, 10.5, 11.0), // found: not a false alarm
            det("glass", 31.0, 31.5, 32.0), // over the siren
            det("glass", 19.0, 19.5, 24.0), // mostly over the door slam
            det("glass", 40.0, 40.5, 40.0), // a point, over speech
            det("glass", 45.0, 45.5, 46.0), // speech again
            det("glass", 70.0, 70.5, 71.0), // past the beds
            det("siren", 50.0, 50.5, 51.0), // another group's false alarm
        ];
        assert_eq!(
            false_alarm_causes("glass", &truth, &beds, &dets, &Matching::default()),
            vec![
                ("speech".to_string(), 2),
                ("door_slam".to_string(), 1),
                ("event:siren".to_string(), 1),
                ("unknown".to_string(), 1),
            ]
        );
    }
}
