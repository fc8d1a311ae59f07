//! Markdown tables the docs can paste, and the figure formats every
//! benchmark prints in them.
//!
//! A [`Table`] has a header row and right-aligned figure columns (the
//! first `text_columns` are left-aligned labels). Cells are strings, made
//! with the formatters below, so a median always reads the same way:
//! `median (p10–p90)`, and a ratio `0.89× (0.85–0.93)`.

use std::fmt;

use crate::stats::Summary;

/// A markdown table.
#[derive(Clone, Debug)]
pub struct Table {
    header: Vec<String>,
    text_columns: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles; the first `text_columns` columns
    /// are labels (left-aligned), the others figures (right-aligned).
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>, text_columns: usize) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            text_columns,
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    ///
    /// # Panics
    /// If the row has another number of cells than the header.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        assert_eq!(
            cells.len(),
            self.header.len(),
            "a row of {:?} needs one cell per column {:?}",
            cells,
            self.header
        );
        self.rows.push(cells);
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| {
            write!(f, "|")?;
            for c in cells {
                // A `|` inside a cell would end it.
                write!(f, " {} |", c.replace('|', "\\|"))?;
            }
            writeln!(f)
        };
        line(f, &self.header)?;
        write!(f, "|")?;
        for i in 0..self.header.len() {
            f.write_str(if i < self.text_columns {
                "---|"
            } else {
                "---:|"
            })?;
        }
        writeln!(f)?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

/// Nanoseconds as a short human figure: `850 ns`, `4.9 µs`, `1.09 ms`,
/// `2.31 s`.
pub fn human_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A byte count as the largest binary unit it is a whole multiple of, or
/// MiB with one decimal: `16 MiB`, `4 GiB`, `8.6 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        b if b >= GIB && b.is_multiple_of(GIB) => format!("{} GiB", b / GIB),
        b if b >= MIB && b.is_multiple_of(MIB) => format!("{} MiB", b / MIB),
        b if b < MIB && b.is_multiple_of(KIB) => format!("{} KiB", b / KIB),
        b => format!("{:.1} MiB", b as f64 / MIB as f64),
    }
}

/// `median (p10–p90)`, each figure through `each`.
pub fn spread(s: &Summary, each: impl Fn(f64) -> String) -> String {
    format!("{} ({}–{})", each(s.median), each(s.p10), each(s.p90))
}

/// `median (p10–p90)` of nanoseconds, in human units ([`human_ns`]).
pub fn time(s: &Summary) -> String {
    spread(s, human_ns)
}

/// `median (p10–p90)` with `decimals` decimals.
pub fn number(s: &Summary, decimals: usize) -> String {
    spread(s, |x| format!("{x:.decimals$}"))
}

/// A ratio: `0.89× (0.85–0.93)`.
pub fn ratio(s: &Summary) -> String {
    format!("{:.2}× ({:.2}–{:.2})", s.median, s.p10, s.p90)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_with_aligned_figure_columns() {
        let mut t = Table::new(["case", "a", "b"], 1);
        t.row(["x|y", "1", "2"])
            .row(["z".to_string(), "3".into(), "4".into()]);
        assert_eq!(
            t.to_string(),
            "| case | a | b |\n|---|---:|---:|\n| x\\|y | 1 | 2 |\n| z | 3 | 4 |\n"
        );
    }

    #[test]
    #[should_panic(expected = "one cell per column")]
    fn a_short_row_is_refused() {
        Table::new(["a", "b"], 1).row(["only one"]);
    }

    #[test]
    fn figures_read_the_same_everywhere() {
        let s = Summary::of(&[850.0, 4_900.0, 1_090_000.0]);
        assert_eq!(time(&s), "4.9 µs (1.7 µs–873.0 µs)");
        assert_eq!(human_ns(2.31e9), "2.31 s");
        assert_eq!(ratio(&Summary::of(&[0.9, 1.0, 1.1])), "1.00× (0.92–1.08)");
        assert_eq!(number(&Summary::of(&[1.0, 2.0, 3.0]), 1), "2.0 (1.2–2.8)");
        assert_eq!(human_bytes(16 << 20), "16 MiB");
        assert_eq!(human_bytes(4 << 30), "4 GiB");
        assert_eq!(human_bytes(9_017_753), "8.6 MiB");
        assert_eq!(human_bytes(4096), "4 KiB");
    }
}
