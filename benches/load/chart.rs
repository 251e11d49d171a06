//! The fan-out chart: delivery latency against client count, as SVG (plotters).

use std::path::Path;

use plotters::prelude::*;

use crate::FanoutPoint;

/// Draws p50 and p99 delivery latency of each variant against the client count.
pub(crate) fn fanout(
    path: &Path,
    tick_hz: f64,
    points: &[FanoutPoint],
) -> Result<(), crate::client::BoxError> {
    let max_clients = points.iter().map(|p| p.1).max().unwrap_or(1).max(1);
    let max_ms = points
        .iter()
        .map(|p| p.3)
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Fan-out delivery latency at {tick_hz} updates/s (update ts to receipt)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0..max_clients + max_clients / 20, 0.0..max_ms)?;
    chart
        .configure_mesh()
        .x_desc("connected clients")
        .y_desc("latency (ms)")
        .draw()?;
    let variants: Vec<&str> = {
        let mut v: Vec<&str> = points.iter().map(|p| p.0).collect();
        v.dedup();
        v.sort_unstable();
        v.dedup();
        v
    };
    let colours = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    for (i, variant) in variants.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let mut series: Vec<&FanoutPoint> = points.iter().filter(|p| p.0 == *variant).collect();
        series.sort_by_key(|p| p.1);
        for (label, pick, dashed) in [("p50", 2usize, false), ("p99", 3usize, true)] {
            let data: Vec<(usize, f64)> = series
                .iter()
                .map(|p| (p.1, if pick == 2 { p.2 } else { p.3 }))
                .filter(|p| p.1.is_finite())
                .collect();
            let style = ShapeStyle {
                color: colour.to_rgba(),
                filled: false,
                stroke_width: if dashed { 1 } else { 3 },
            };
            chart
                .draw_series(LineSeries::new(data.clone(), style))?
                .label(format!("{variant} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                data.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
