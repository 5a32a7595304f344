//! SVG plots of threshold sweeps: recall against false alarms per hour, and precision
//! against recall, one line per detection group.
//!
//! Drawn with plotters' SVG backend and no font feature: text is written as SVG
//! `<text>` elements (`font-family="sans-serif"`) that the viewer renders, and plotters
//! only estimates text sizes for layout, so no system font library is needed.

use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::metrics::CurvePoint;

const SIZE: (u32, u32) = (900, 620);

/// Writes an SVG of recall (y, 0..1) against false alarms per hour (x, log scale), one
/// line per `(group, curve)` with its operating points marked, a legend with the group
/// names and `title`.
///
/// Points are joined in order of `scale`. The log axis spans whole decades around the
/// positive rates; points with 0 false alarms per hour are drawn on its left edge (the
/// axis label says so). Points with a non-finite coordinate are left out. An empty
/// `curves` still gives a plot with axes.
pub fn plot_recall_vs_fa(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<CurvePoint>)],
) -> Result<()> {
    let (lo, hi) = log_fa_range(curves);
    let lines = lines(curves, |p| (p.false_alarms_per_hour.max(lo), p.recall));
    render(
        path,
        title,
        "false alarms per hour (log; 0 drawn at the left edge)",
        "recall",
        (lo..hi).log_scale(),
        &lines,
        SeriesLabelPosition::LowerRight,
    )
    .with_context(|| format!("cannot write the plot {}", path.display()))
}

/// Writes an SVG of precision (y, 0..1) against recall (x, 0..1), one line per
/// `(group, curve)` with its operating points marked, a legend with the group names and
/// `title`. Points are joined in order of `scale`; non-finite points are left out.
pub fn plot_precision_recall(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<CurvePoint>)],
) -> Result<()> {
    let lines = lines(curves, |p| (p.recall, p.precision));
    render(
        path,
        title,
        "recall",
        "precision",
        0.0..1.0,
        &lines,
        SeriesLabelPosition::LowerLeft,
    )
    .with_context(|| format!("cannot write the plot {}", path.display()))
}

/// The x range of the recall-vs-FA plot: from the decade strictly below the smallest
/// positive rate (so the clamped zeros are told apart from real points) to the decade
/// at or above the largest; 0.01..10 when no rate is positive.
fn log_fa_range(curves: &[(String, Vec<CurvePoint>)]) -> (f64, f64) {
    let positive = curves
        .iter()
        .flat_map(|(_, c)| c.iter())
        .map(|p| p.false_alarms_per_hour)
        .filter(|fa| fa.is_finite() && *fa > 0.0);
    let (min, max) = positive.fold((f64::INFINITY, 0.0f64), |(a, b), fa| (a.min(fa), b.max(fa)));
    if !min.is_finite() {
        return (0.01, 10.0);
    }
    let lo = 10f64.powf(min.log10().ceil() - 1.0);
    let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// Each curve as points in plot coordinates, ordered by scale, non-finite ones dropped.
fn lines(
    curves: &[(String, Vec<CurvePoint>)],
    xy: impl Fn(&CurvePoint) -> (f64, f64),
) -> Vec<(String, Vec<(f64, f64)>)> {
    curves
        .iter()
        .map(|(name, c)| {
            let mut c: Vec<&CurvePoint> = c.iter().collect();
            c.sort_by(|a, b| a.scale.total_cmp(&b.scale));
            let pts = c
                .into_iter()
                .map(&xy)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (name.clone(), pts)
        })
        .collect()
}

fn render<X>(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_range: X,
    lines: &[(String, Vec<(f64, f64)>)],
    legend_at: SeriesLabelPosition,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let y_range: Range<f64> = 0.0..1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, RangedCoordf64::from(y_range))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .draw()
        .map_err(|e| err(&e))?;

    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(legend_at)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    drop(chart);
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A tick label without float noise or trailing zeros: 0.01, 0.3, 1, 100.
fn tick_label(v: &f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir()
                .join(format!("hearken-plot-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pt(scale: f64, recall: f64, fa: f64, precision: f64) -> CurvePoint {
        CurvePoint::new(scale, recall, fa, precision)
    }

    fn sample() -> Vec<(String, Vec<CurvePoint>)> {
        vec![
            (
                "glass_break".to_string(),
                vec![
                    pt(1.5, 0.55, 0.0, 1.0),
                    pt(0.5, 0.95, 4.0, 0.3),
                    pt(1.0, 0.8, 0.5, 0.7),
                ],
            ),
            (
                "smoke_alarm".to_string(),
                vec![pt(0.5, 1.0, 0.25, 0.9), pt(1.0, 0.9, 0.0417, 0.95)],
            ),
            (
                "dog & <cat>".to_string(),
                vec![pt(1.0, 0.3, 12.0, 0.2), pt(2.0, f64::NAN, 1.0, 0.5)],
            ),
        ]
    }

    fn check_svg(svg: &str, curves: &[(String, Vec<CurvePoint>)], texts: &[&str]) {
        assert!(
            svg.starts_with("<svg") || svg.contains("<svg "),
            "not an SVG"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "SVG not closed");
        for (i, _) in curves.iter().enumerate() {
            // Each curve is a polyline in its own colour (plus its legend swatch).
            let c = Palette99::pick(i).to_rgba();
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let n = svg
                .lines()
                .filter(|l| l.contains("<polyline") && l.contains(&stroke))
                .count();
            assert!(n >= 2, "curve {i}: {n} polylines with {stroke}");
        }
        for t in texts {
            assert!(svg.contains(t), "missing text {t:?}");
        }
    }

    #[test]
    fn recall_vs_fa_writes_an_svg_with_a_line_and_legend_per_group() {
        let dir = TempDir::new("fa");
        let path = dir.0.join("recall_vs_fa.svg");
        let curves = sample();
        plot_recall_vs_fa(&path, "Recall vs false alarms (dev)", &curves).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        check_svg(
            &svg,
            &curves,
            &[
                "glass_break",
                "smoke_alarm",
                "dog &amp; &lt;cat&gt;",
                "Recall vs false alarms (dev)",
                "false alarms per hour",
                "recall",
            ],
        );
    }

    #[test]
    fn precision_recall_writes_an_svg_with_a_line_and_legend_per_group() {
        let dir = TempDir::new("pr");
        let path = dir.0.join("pr.svg");
        let curves = sample();
        plot_precision_recall(&path, "Precision-recall", &curves).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        check_svg(
            &svg,
            &curves,
            &[
                "glass_break",
                "smoke_alarm",
                "Precision-recall",
                "precision",
            ],
        );
    }

    #[test]
    fn empty_and_all_zero_curves_still_plot() {
        let dir = TempDir::new("empty");
        plot_recall_vs_fa(&dir.0.join("none.svg"), "none", &[]).unwrap();
        plot_precision_recall(&dir.0.join("none-pr.svg"), "none", &[]).unwrap();
        let zeros = vec![(
            "g".to_string(),
            vec![pt(1.0, 0.5, 0.0, 1.0), pt(2.0, 0.4, 0.0, 1.0)],
        )];
        plot_recall_vs_fa(&dir.0.join("zeros.svg"), "zeros", &zeros).unwrap();
        let empty_curve = vec![("g".to_string(), vec![])];
        plot_recall_vs_fa(&dir.0.join("empty-curve.svg"), "e", &empty_curve).unwrap();
        for f in ["none.svg", "none-pr.svg", "zeros.svg", "empty-curve.svg"] {
            let svg = std::fs::read_to_string(dir.0.join(f)).unwrap();
            assert!(svg.contains("<svg"), "{f}");
        }
    }

    #[test]
    fn log_range_spans_decades_below_the_smallest_rate() {
        let c = |fas: &[f64]| {
            vec![(
                "g".to_string(),
                fas.iter()
                    .map(|&fa| pt(1.0, 0.5, fa, 1.0))
                    .collect::<Vec<_>>(),
            )]
        };
        assert_eq!(log_fa_range(&[]), (0.01, 10.0));
        assert_eq!(log_fa_range(&c(&[0.0])), (0.01, 10.0));
        let (lo, hi) = log_fa_range(&c(&[0.0, 1.0 / 24.0, 3.0]));
        assert!(
            (lo - 0.01).abs() < 1e-12 && (hi - 10.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        // A power of ten is not put on the edge where zeros go.
        let (lo, hi) = log_fa_range(&c(&[1.0]));
        assert!(
            (lo - 0.1).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12,
            "{lo} {hi}"
        );
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(&0.01), "0.01");
        assert_eq!(tick_label(&0.30000000000000004), "0.3");
        assert_eq!(tick_label(&1.0), "1");
        assert_eq!(tick_label(&100.0), "100");
        assert_eq!(tick_label(&0.0), "0");
        assert_eq!(tick_label(&0.0001), "0.0001");
    }

    #[test]
    fn error_names_the_path() {
        let dir = TempDir::new("err");
        let path = dir.0.join("no-such-dir").join("plot.svg");
        let err = plot_recall_vs_fa(&path, "t", &sample()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        let err = plot_precision_recall(&path, "t", &sample()).unwrap_err();
        assert!(format!("{err:#}").contains(&path.display().to_string()));
    }
}
