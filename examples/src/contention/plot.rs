//! `--plot FILE.svg`: throughput and p99 latency against writer count, one row of two
//! charts per workload. plotters' SVG backend writes text as SVG `<text>`, so no font
//! library is involved.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Report, Row, WorkloadReport};
use super::systems::System;

/// Colour of each system's series (and of the serial ceiling, grey).
const COLOURS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(148, 103, 189),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];
const CEILING: RGBColor = RGBColor(120, 120, 120);

/// Writes the chart.
///
/// # Errors
/// A message from plotters (for example, the file cannot be written).
pub(crate) fn write_svg(path: &Path, report: &Report) -> Result<(), String> {
    let rows = report.workloads.len().max(1) as u32;
    let root = SVGBackend::new(path, (1200, 420 * rows)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            "luca contention: throughput and p99 latency against writer count",
            ("sans-serif", 22),
        )
        .map_err(|e| e.to_string())?;
    let (charts, legend_area) = root.split_horizontally(960);
    legend(&legend_area)?;
    let panels = charts.split_evenly((rows as usize, 2));
    for (i, w) in report.workloads.iter().enumerate() {
        chart(&panels[2 * i], w, Metric::Throughput)?;
        chart(&panels[2 * i + 1], w, Metric::P99)?;
    }
    root.present().map_err(|e| e.to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Metric {
    Throughput,
    P99,
}

impl Metric {
    fn of(self, row: &Row) -> f64 {
        match self {
            Metric::Throughput => row.ops_per_sec,
            Metric::P99 => row.p99_us as f64 / 1e3,
        }
    }
}

/// A log-scale range around the positive values (`1..10` when there are none).
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if hi <= 0.0 {
        (1.0, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    }
}

fn chart(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    w: &WorkloadReport,
    metric: Metric,
) -> Result<(), String> {
    let (x_lo, x_hi) = log_range(w.rows.iter().map(|r| r.writers as f64));
    let mut ys: Vec<f64> = w.rows.iter().map(|r| metric.of(r)).collect();
    if metric == Metric::Throughput {
        ys.push(w.ceiling.ops_per_sec);
    }
    let (y_lo, y_hi) = log_range(ys.into_iter());
    let (caption, y_desc) = match metric {
        Metric::Throughput => (format!("{}: throughput", w.workload), "ok operations / s"),
        Metric::P99 => (format!("{}: p99 latency", w.workload), "p99 latency (ms)"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("writers")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1000.0 {
                format!("{:.0}k", y / 1000.0)
            } else if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    if metric == Metric::Throughput {
        let c = w.ceiling.ops_per_sec.max(y_lo);
        chart
            .draw_series(LineSeries::new(
                [(x_lo, c), (x_hi, c)],
                CEILING.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
    }
    for (system, colour) in System::ALL.into_iter().zip(COLOURS) {
        let points: Vec<(f64, f64)> = w
            .rows
            .iter()
            .filter(|r| r.label == system.label())
            .map(|r| (r.writers as f64, metric.of(r).max(y_lo)))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One legend for every chart, in its own column, so it never hides a point.
fn legend(area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String> {
    let entries = std::iter::once(("serial ceiling", CEILING, 1)).chain(
        System::ALL
            .into_iter()
            .zip(COLOURS)
            .map(|(s, c)| (s.label(), c, 2)),
    );
    for (i, (label, colour, width)) in entries.enumerate() {
        let y = 70 + 24 * i as i32;
        area.draw(&PathElement::new(
            [(10, y), (40, y)],
            colour.stroke_width(width),
        ))
        .map_err(|e| e.to_string())?;
        area.draw(&Text::new(label, (48, y - 7), ("sans-serif", 14)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
