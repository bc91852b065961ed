//! The SVG chart README shows: throughput and p99 latency against concurrency, one line per
//! route, side by side. Drawn with `plotters`' SVG backend only (no fonts or bitmaps built):
//! the viewer renders the text.

use std::path::Path;

use plotters::prelude::*;

/// One route's measurements: `(concurrent connections, requests per second, p99 in ms)`.
pub struct Line<'a> {
    pub label: &'a str,
    pub points: Vec<(u32, f64, f64)>,
}

const COLOURS: [RGBColor; 2] = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28)];

pub fn draw(path: &Path, title: &str, lines: &[Line]) -> Result<(), Box<dyn std::error::Error>> {
    let max_c = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2);
    let max_rps = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let p99s = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.2));
    // Latencies span orders of magnitude: a log axis keeps one slow point from flattening
    // the rest.
    let max_p99 = p99s().fold(0.1, f64::max);
    let min_p99 = p99s().fold(max_p99, f64::min).max(0.01);

    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(500);

    let mut throughput = ChartBuilder::on(&left)
        .caption("Throughput", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1u32..max_c).log_scale(), 0.0..max_rps * 1.1)?;
    throughput
        .configure_mesh()
        .x_desc("concurrent connections")
        .y_desc("requests / s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut latency = ChartBuilder::on(&right)
        .caption("p99 latency", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1u32..max_c).log_scale(),
            (min_p99 / 1.5..max_p99 * 1.5).log_scale(),
        )?;
    latency
        .configure_mesh()
        .x_desc("concurrent connections")
        .y_desc("ms (log scale)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()?;

    for (line, colour) in lines.iter().zip(COLOURS.iter().cycle()) {
        let colour = *colour;
        let key = move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
        };
        throughput
            .draw_series(LineSeries::new(
                line.points.iter().map(|&(c, rps, _)| (c, rps)),
                colour.stroke_width(2),
            ))?
            .label(line.label)
            .legend(key);
        throughput.draw_series(
            line.points
                .iter()
                .map(|&(c, rps, _)| Circle::new((c, rps), 3, colour.filled())),
        )?;
        latency
            .draw_series(LineSeries::new(
                line.points.iter().map(|&(c, _, p99)| (c, p99)),
                colour.stroke_width(2),
            ))?
            .label(line.label)
            .legend(key);
        latency.draw_series(
            line.points
                .iter()
                .map(|&(c, _, p99)| Circle::new((c, p99), 3, colour.filled())),
        )?;
    }
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
