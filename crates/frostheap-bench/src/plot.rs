//! Figures for the docs: a log–log line chart, drawn as SVG by `plotters`.
//!
//! A [`LogLogChart`] has lines (solid or dashed, each with its points
//! marked), tick marks at the x values given and at every power of ten on
//! the y axis, a legend, and optional horizontal reference lines (a
//! target). A line with no points still appears in the legend, with its
//! note saying why (a backend the machine lacks). plotters is built
//! without its `ttf` feature, so it needs no system fonts: it estimates
//! text widths itself and leaves the font to the SVG viewer.

use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Line {
    /// Its legend entry.
    pub name: String,
    /// Its colour, as `0xRRGGBB`.
    pub color: u32,
    /// Dashed (a baseline) or solid.
    pub dashed: bool,
    /// Its points `(x, y)`, both positive.
    pub points: Vec<(f64, f64)>,
    /// Shown after the name in the legend when there are no points.
    pub note: String,
}

/// A horizontal reference line (a target), dotted, with its legend entry.
#[derive(Clone, Debug)]
pub struct Mark {
    /// Where it crosses the y axis.
    pub y: f64,
    /// Its legend entry.
    pub label: String,
    /// Its colour, as `0xRRGGBB`.
    pub color: u32,
}

/// A chart with logarithmic x and y axes.
pub struct LogLogChart {
    /// The caption above the chart.
    pub title: String,
    /// The x axis' description.
    pub x_desc: String,
    /// The y axis' description.
    pub y_desc: String,
    /// The x values that get a tick mark and a label.
    pub x_ticks: Vec<f64>,
    /// How an x tick is labelled.
    pub x_label: fn(f64) -> String,
    /// How a y tick (a power of ten) is labelled.
    pub y_label: fn(f64) -> String,
    /// The lines, drawn and listed in this order.
    pub lines: Vec<Line>,
    /// Reference lines.
    pub marks: Vec<Mark>,
    /// Width and height in pixels.
    pub size: (u32, u32),
}

impl LogLogChart {
    /// The chart as an SVG document.
    ///
    /// # Errors
    /// If there is nothing to draw (no x tick, or no positive y value in
    /// any line or mark), or plotters fails to draw.
    pub fn to_svg(&self) -> Result<String, String> {
        let (x0, x1) = self.x_range().ok_or("the chart has no positive x tick")?;
        let (y0, y1) = self.y_range().ok_or("the chart has no positive y value")?;
        let y_ticks: Vec<f64> = (y0.log10().round() as i32..=y1.log10().round() as i32)
            .map(|d| 10f64.powi(d))
            .collect();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            let e = |e| format!("drawing the chart: {e:?}");
            root.fill(&WHITE).map_err(e)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(84)
                .build_cartesian_2d(
                    (x0..x1).log_scale().with_key_points(self.x_ticks.clone()),
                    (y0..y1).log_scale().with_key_points(y_ticks),
                )
                .map_err(e)?;
            let (x_label, y_label) = (self.x_label, self.y_label);
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .x_label_formatter(&|x| x_label(*x))
                .y_label_formatter(&|y| y_label(*y))
                .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
                .draw()
                .map_err(e)?;
            for m in &self.marks {
                let style = rgb(m.color).stroke_width(1);
                chart
                    .draw_series(DashedLineSeries::new([(x0, m.y), (x1, m.y)], 2, 4, style))
                    .map_err(e)?
                    .label(&m.label)
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 24, y)], 2, 4, style)
                    });
            }
            for l in &self.lines {
                let style = rgb(l.color).stroke_width(2);
                let label = if l.points.is_empty() {
                    format!("{}: {}", l.name, l.note)
                } else {
                    l.name.clone()
                };
                let points = l.points.iter().copied();
                let anno = if l.dashed {
                    chart.draw_series(DashedLineSeries::new(points, 7, 5, style))
                } else {
                    chart.draw_series(LineSeries::new(points, style))
                }
                .map_err(e)?;
                let dashed = l.dashed;
                anno.label(label).legend(move |(x, y)| {
                    let pts = vec![(x, y), (x + 24, y)];
                    if dashed {
                        DashedPathElement::new(pts, 7, 5, style).into_dyn()
                    } else {
                        PathElement::new(pts, style).into_dyn()
                    }
                });
                chart
                    .draw_series(l.points.iter().map(|p| Circle::new(*p, 3, style.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(0x99, 0x99, 0x99))
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(e)?;
            root.present().map_err(e)?;
        }
        Ok(svg)
    }

    /// The x ticks' range, widened by a quarter of a power of two at each
    /// end so the outer points are not on the frame.
    fn x_range(&self) -> Option<(f64, f64)> {
        let xs = self.x_ticks.iter().copied().filter(|x| *x > 0.0);
        let lo = xs.clone().fold(f64::INFINITY, f64::min);
        let hi = xs.fold(0.0, f64::max);
        (hi > 0.0).then(|| (lo / 2f64.powf(0.25), hi * 2f64.powf(0.25)))
    }

    /// The y values' range, out to whole powers of ten.
    fn y_range(&self) -> Option<(f64, f64)> {
        let ys = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.marks.iter().map(|m| m.y))
            .filter(|y| *y > 0.0);
        let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        (hi > 0.0).then(|| {
            (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
            )
        })
    }
}

fn rgb(c: u32) -> RGBColor {
    RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(lines: Vec<Line>) -> LogLogChart {
        LogLogChart {
            title: "cost against size".into(),
            x_desc: "size (log scale)".into(),
            y_desc: "time (log scale)".into(),
            x_ticks: vec![16.0, 64.0, 256.0],
            x_label: |x| format!("{x} B"),
            y_label: |y| format!("{y} ns"),
            lines,
            marks: vec![Mark {
                y: 100.0,
                label: "target 100 ns".into(),
                color: 0x2e8b57,
            }],
            size: (640, 400),
        }
    }

    #[test]
    fn draws_every_line_its_legend_and_the_ticks() {
        let svg = chart(vec![
            Line {
                name: "measured".into(),
                color: 0x1f5fbf,
                dashed: false,
                points: vec![(16.0, 300.0), (64.0, 2_000.0), (256.0, 9_000.0)],
                note: String::new(),
            },
            Line {
                name: "absent".into(),
                color: 0xc0392b,
                dashed: true,
                points: vec![],
                note: "unavailable here".into(),
            },
        ])
        .to_svg()
        .expect("a chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "cost against size",
            "measured",
            "absent: unavailable here",
            "target 100 ns",
            "64 B",
            "1000 ns",
            "10000 ns",
        ] {
            assert!(svg.contains(text), "{text:?} missing from the SVG");
        }
        // Three points marked with circles.
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
    }

    #[test]
    fn a_chart_with_nothing_to_draw_is_an_error() {
        let mut c = chart(vec![]);
        c.marks.clear();
        assert!(c.to_svg().unwrap_err().contains("no positive y"));
        c.x_ticks.clear();
        assert!(c.to_svg().unwrap_err().contains("no positive x"));
    }
}
