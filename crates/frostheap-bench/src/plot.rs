//! Figures for the docs: a log–log line chart, drawn as SVG by `plotters`.
//!
//! A [`LogLogChart`] has lines (solid or dashed, each with its points
//! marked), tick marks at the x values given and at every power of ten on
//! the y axis, optional horizontal reference lines (a target, dotted), and
//! a legend to the right of the plot, where it covers no line. A line with
//! no points still appears in the legend, with its note saying why (a
//! backend the machine lacks). plotters is built without its `ttf`
//! feature, so it needs no system fonts: it estimates text widths itself
//! and leaves the font to the SVG viewer.

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
        let y_ticks: Vec<f64> = (y0.log10().ceil() as i32..=y1.log10().floor() as i32)
            .map(|d| 10f64.powi(d))
            .collect();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            let e = |e| format!("drawing the chart: {e:?}");
            root.fill(&WHITE).map_err(e)?;
            let (plot_area, legend_area) =
                root.split_horizontally(self.size.0.saturating_sub(LEGEND_WIDTH));
            let mut chart = ChartBuilder::on(&plot_area)
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
                    .map_err(e)?;
            }
            for l in &self.lines {
                let style = rgb(l.color).stroke_width(2);
                let points = l.points.iter().copied();
                if l.dashed {
                    chart.draw_series(DashedLineSeries::new(points, 7, 5, style))
                } else {
                    chart.draw_series(LineSeries::new(points, style))
                }
                .map_err(e)?;
                chart
                    .draw_series(l.points.iter().map(|p| Circle::new(*p, 3, style.filled())))
                    .map_err(e)?;
            }
            // The legend, beside the plot: marks first, then the lines.
            let top = chart.plotting_area().get_pixel_range().1.start;
            let mut y = top + 8;
            let entries = self
                .marks
                .iter()
                .map(|m| (m.label.clone(), String::new(), m.color, (2, 4), 1))
                .chain(self.lines.iter().map(|l| {
                    let note = if l.points.is_empty() {
                        l.note.clone()
                    } else {
                        String::new()
                    };
                    let dash = if l.dashed { (7, 5) } else { (24, 0) };
                    (l.name.clone(), note, l.color, dash, 2)
                }));
            for (label, note, color, (dash, gap), width) in entries {
                let style = rgb(color).stroke_width(width);
                let pts = vec![(8, y), (32, y)];
                if gap == 0 {
                    legend_area.draw(&PathElement::new(pts, style))
                } else {
                    legend_area.draw(&DashedPathElement::new(pts, dash, gap, style))
                }
                .map_err(e)?;
                legend_area
                    .draw(&Text::new(label, (38, y - 6), ("sans-serif", 12)))
                    .map_err(e)?;
                y += 18;
                for part in wrap(&note, 34) {
                    legend_area
                        .draw(&Text::new(
                            part,
                            (38, y - 6),
                            ("sans-serif", 11).into_font().color(&rgb(0x555555)),
                        ))
                        .map_err(e)?;
                    y += 15;
                }
                y += 4;
            }
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

    /// The y values' range, widened by a fifth of a power of ten at each
    /// end (a mark on a decade stays off the frame).
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
        let pad = 10f64.powf(0.2);
        (hi > 0.0).then(|| (lo / pad, hi * pad))
    }
}

/// The legend's width in pixels, to the right of the plot.
const LEGEND_WIDTH: u32 = 250;

/// `text` in lines of at most about `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
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
            "absent",
            "unavailable here",
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
    fn notes_wrap_at_spaces() {
        assert_eq!(
            wrap("unavailable on this machine (pkey_alloc failed)", 20),
            ["unavailable on this", "machine (pkey_alloc", "failed)"]
        );
        assert!(wrap("", 20).is_empty());
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
