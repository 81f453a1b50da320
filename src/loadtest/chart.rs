//! The report's charts, drawn with plotters to SVG strings: stacked per-second areas, per-second
//! lines, and phase marks. No file or HTML here; `report` places the charts in the page.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::summary::Summary;
use super::LoadtestError;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 300;
/// plotters writes SVG font sizes as the given size / 1.24: 16 is about 13 px.
const FONT: &str = "sans-serif";

/// Tableau 10: distinct, colour-blind tolerable, readable on white.
pub(super) const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0xba, 0xb0, 0xac),
    RGBColor(0xe1, 0x57, 0x59),
];

/// One colour per failure kind, in [`FailureKind::ALL`](super::record::FailureKind::ALL) order; 5xx
/// is red everywhere.
pub(super) const FAILURE_COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xe3, 0x77, 0xc2),
];

pub(super) const P50_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
pub(super) const P99_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const MARK_COLOR: RGBColor = RGBColor(0x33, 0x33, 0x33);

/// A named series of per-second values.
pub(super) struct Series<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

fn chart_error<E: std::error::Error + Send + Sync>(
    error: DrawingAreaErrorKind<E>,
) -> LoadtestError {
    LoadtestError::Chart(error.to_string())
}

/// Seconds on the x axis: at least 1, and covering every mark.
fn x_end(summary: &Summary) -> f64 {
    let marks = summary.marks.iter().map(|m| m.at_s.ceil());
    marks.fold(summary.seconds.len() as f64, f64::max).max(1.0)
}

/// Room above the data for the mark labels.
fn y_end(max: f64) -> f64 {
    if max > 0.0 {
        max * 1.3
    } else {
        1.0
    }
}

/// An SVG chart of the standard size over `x` × `y`, painted by `paint`.
fn canvas(
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    paint: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), LoadtestError>,
) -> Result<String, LoadtestError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(chart_error)?;
        paint(&mut chart)?;
        root.present().map_err(chart_error)?;
    }
    Ok(svg)
}

/// Stacked areas, first series at the bottom, drawn as steps (a bucket holds one whole second).
pub(super) fn stacked(
    summary: &Summary,
    series: &[Series],
    unit: &str,
    empty: &str,
) -> Result<String, LoadtestError> {
    let seconds = summary.seconds.len();
    let mut cumulative: Vec<Vec<f64>> = Vec::with_capacity(series.len());
    for s in series {
        let below = cumulative.last();
        cumulative.push(
            (0..seconds)
                .map(|i| s.values[i] + below.map_or(0.0, |b| b[i]))
                .collect(),
        );
    }
    let top = cumulative
        .last()
        .map_or(0.0, |c| c.iter().copied().fold(0.0, f64::max));
    canvas(0.0..x_end(summary), 0.0..y_end(top), |chart| {
        axes(chart, unit, y_end(top))?;
        // Top layer first: each lower layer is painted over the one above it.
        for (s, values) in series.iter().zip(&cumulative).rev() {
            let steps =
                (0..seconds).flat_map(|i| [(i as f64, values[i]), (i as f64 + 1.0, values[i])]);
            chart
                .draw_series(
                    AreaSeries::new(steps, 0.0, s.color.filled())
                        .border_style(s.color.stroke_width(1)),
                )
                .map_err(chart_error)?;
        }
        if top == 0.0 {
            let style = TextStyle::from((FONT, 22).into_font()).color(&RGBColor(0x55, 0x55, 0x55));
            chart
                .draw_series(std::iter::once(Text::new(
                    empty.to_owned(),
                    (x_end(summary) / 2.0 - 1.0, 0.5),
                    style,
                )))
                .map_err(chart_error)?;
        }
        marks(chart, summary, y_end(top))?;
        Ok(())
    })
}

/// A horizontal limit line (a threshold), labelled.
pub(super) struct Limit {
    pub y: f64,
    pub label: String,
    pub color: RGBColor,
}

/// One line per series; seconds without a value leave a gap; `limits` as dashed horizontal lines.
pub(super) fn lines(
    summary: &Summary,
    series: &[Series],
    limits: &[Limit],
    unit: &str,
) -> Result<String, LoadtestError> {
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(limits.iter().map(|l| l.y))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    canvas(0.0..x_end(summary), 0.0..y_end(top), |chart| {
        axes(chart, unit, y_end(top))?;
        for s in series {
            // Split at gaps so a second without responses is not bridged by a straight line.
            let points: Vec<(f64, f64)> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 + 0.5, *v))
                .collect();
            for run in points
                .split(|(_, v)| !v.is_finite())
                .filter(|r| !r.is_empty())
            {
                chart
                    .draw_series(LineSeries::new(
                        run.iter().copied(),
                        s.color.stroke_width(2),
                    ))
                    .map_err(chart_error)?;
            }
        }
        limit_lines(chart, limits, x_end(summary))?;
        marks(chart, summary, y_end(top))?;
        Ok(())
    })
}

/// Where percentile `p` (0–100) sits on the distribution plot's x axis: the number of nines,
/// `-log10(1 − p/100)`, so 90% is 1, 99% is 2, 99.9% is 3; 100% (the max) at [`NINES`].
fn nines(p: f64) -> f64 {
    match p >= 100.0 {
        true => NINES,
        false => (-(1.0 - p / 100.0).log10()).min(NINES),
    }
}

/// The distribution plot's right end: 99.9999%.
const NINES: f64 = 6.0;

/// Latency by percentile, HDR style: the x axis stretches the tail (90%, 99%, 99.9%... evenly
/// spaced), so a canary's p99.9 is as visible as its median. `curves` hold (percentile, ms) points.
pub(super) fn distribution(
    curves: &[(Series, &[(f64, f64)])],
    limits: &[Limit],
) -> Result<String, LoadtestError> {
    let top = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .chain(limits.iter().map(|l| l.y))
        .fold(0.0, f64::max);
    // The tail as far as the largest run resolves it, plus a decade for the max.
    let right = curves
        .iter()
        .flat_map(|(_, points)| points.iter().rev().nth(1).map(|p| nines(p.0) + 1.0))
        .fold(1.0, f64::max)
        .min(NINES);
    canvas(0.0..right, 0.0..y_end(top), |chart| {
        chart
            .configure_mesh()
            .max_light_lines(0)
            .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
            .x_labels(right as usize + 1)
            .x_desc("percentile")
            .y_desc("ms")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 17))
            .x_label_formatter(&|x| {
                let percent = 100.0 * (1.0 - 10f64.powf(-x));
                let decimals = (x.round() as usize).saturating_sub(2);
                format!("{percent:.decimals$}%")
            })
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(chart_error)?;
        for (s, points) in curves {
            // The max (the last point) one decade past the deepest percentile this run resolves.
            let (last, rest) = match points.split_last() {
                Some(split) => split,
                None => continue,
            };
            let deepest = rest.last().map_or(0.0, |p| nines(p.0));
            let line = rest
                .iter()
                .map(|(p, ms)| (nines(*p), *ms))
                .chain(std::iter::once(((deepest + 1.0).min(right), last.1)));
            chart
                .draw_series(LineSeries::new(line, s.color.stroke_width(2)))
                .map_err(chart_error)?;
        }
        limit_lines(chart, limits, right)?;
        Ok(())
    })
}

/// Dashed horizontal lines, each labelled at its right end.
fn limit_lines(
    chart: &mut Chart<'_, '_>,
    limits: &[Limit],
    x_end: f64,
) -> Result<(), LoadtestError> {
    for limit in limits {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, limit.y), (x_end, limit.y)],
                8,
                4,
                limit.color.stroke_width(2),
            ))
            .map_err(chart_error)?;
        let style = TextStyle::from((FONT, 16).into_font())
            .color(&limit.color)
            .pos(Pos::new(HPos::Right, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} ", limit.label),
                (x_end, limit.y),
                style,
            )))
            .map_err(chart_error)?;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn axes(chart: &mut Chart<'_, '_>, unit: &str, y_top: f64) -> Result<(), LoadtestError> {
    // Enough decimals that neighbouring ticks differ (about 10 ticks per axis).
    let decimals = match y_top {
        t if t >= 20.0 => 0,
        t if t >= 2.0 => 1,
        t if t >= 0.2 => 2,
        _ => 3,
    };
    chart
        .configure_mesh()
        .max_light_lines(0)
        .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
        .x_desc("seconds since start")
        .y_desc(unit)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.decimals$}"))
        .draw()
        .map_err(chart_error)
}

/// Phase marks: a dashed vertical line each, labelled at the top; labels of marks close together
/// are put on different rows.
fn marks(chart: &mut Chart<'_, '_>, summary: &Summary, y_top: f64) -> Result<(), LoadtestError> {
    let left = TextStyle::from((FONT, 17).into_font()).color(&MARK_COLOR);
    // Labels of marks near the right edge go to the line's left, so they are not cut off.
    let right = left.pos(Pos::new(HPos::Right, VPos::Top));
    let x_end = x_end(summary);
    for (i, mark) in summary.marks.iter().enumerate() {
        chart
            .draw_series(DashedLineSeries::new(
                [(mark.at_s, 0.0), (mark.at_s, y_top)],
                6,
                4,
                MARK_COLOR.stroke_width(1),
            ))
            .map_err(chart_error)?;
        let row = (i % 3) as f64;
        let y = y_top * (0.97 - 0.07 * row);
        let (label, style) = match mark.at_s > x_end * 0.75 {
            true => (format!("{} ", mark.label), &right),
            false => (format!(" {}", mark.label), &left),
        };
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (mark.at_s, y),
                style.clone(),
            )))
            .map_err(chart_error)?;
    }
    Ok(())
}
