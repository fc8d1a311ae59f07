//! The one statistics module of the benchmarks: one percentile definition,
//! one summary (median and p10–p90), and one way of comparing frostheap
//! with a baseline.
//!
//! **Percentile.** [`percentile`] interpolates linearly between the two
//! closest ranks of the sorted samples: the sample at fractional position
//! `q·(n−1)` (Hyndman and Fan's definition 7, the default of numpy and R).
//! For an odd count the median is the middle sample, for an even count the
//! mean of the two middle ones. Every table of every benchmark uses it.
//!
//! **Ratio.** A benchmark runs its variants interleaved, in rounds (see
//! [`crate::interleave`]): round `i` of the subject and round `i` of the
//! baseline ran one right after the other, under the same machine load.
//! [`ratio`] therefore divides round by round, `subject[i] / baseline[i]`,
//! and summarises those per-round ratios like any other samples: median
//! and p10–p90. On a shared machine the per-round ratio is steadier than
//! either time, because a burst of load slows both halves of a round. A
//! ratio of times below 1 means the subject (frostheap) is faster.

/// Median and p10–p90 of a set of samples, with their count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The number of samples summarised.
    pub n: usize,
    /// The 50th percentile.
    pub median: f64,
    /// The 10th percentile.
    pub p10: f64,
    /// The 90th percentile.
    pub p90: f64,
}

impl Summary {
    /// Summarises `samples` (in any order).
    ///
    /// # Panics
    /// If `samples` is empty or holds a NaN: a benchmark that produced no
    /// figure, or an undefined one, has a bug to report, not a row to print.
    pub fn of(samples: &[f64]) -> Summary {
        let sorted = sorted(samples);
        Summary {
            n: sorted.len(),
            median: percentile_sorted(&sorted, 0.5),
            p10: percentile_sorted(&sorted, 0.1),
            p90: percentile_sorted(&sorted, 0.9),
        }
    }

    /// The same summary with every figure multiplied by `factor` (a change
    /// of unit, such as ns to ms, or ns per run to items per second).
    pub fn scaled(self, factor: f64) -> Summary {
        let (a, b) = (self.p10 * factor, self.p90 * factor);
        Summary {
            n: self.n,
            median: self.median * factor,
            p10: a.min(b),
            p90: a.max(b),
        }
    }
}

/// The `q`-quantile (`0.0 ..= 1.0`) of `samples`, in any order: linear
/// interpolation between the closest ranks (see the module docs).
///
/// # Panics
/// If `samples` is empty or holds a NaN, or `q` is outside `0.0 ..= 1.0`.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    percentile_sorted(&sorted(samples), q)
}

/// The per-round ratios `subject[i] / baseline[i]`, summarised.
///
/// `subject` and `baseline` are the samples of two variants run in the
/// same interleaved rounds, in round order (what
/// [`crate::interleave::Samples::of`] returns), so index `i` of each comes
/// from the same round.
///
/// # Panics
/// If the two have different lengths (they were not run in the same
/// rounds), are empty, or a baseline sample is zero.
pub fn ratio(subject: &[f64], baseline: &[f64]) -> Summary {
    assert_eq!(
        subject.len(),
        baseline.len(),
        "a ratio needs the same rounds of both variants"
    );
    let per_round: Vec<f64> = subject
        .iter()
        .zip(baseline)
        .map(|(s, b)| {
            assert!(*b != 0.0, "a baseline round measured zero");
            s / b
        })
        .collect();
    Summary::of(&per_round)
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    assert!(!samples.is_empty(), "no samples to summarise");
    assert!(
        samples.iter().all(|x| !x.is_nan()),
        "a sample is NaN: {samples:?}"
    );
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!((0.0..=1.0).contains(&q), "percentile {q} is outside 0..=1");
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 0.5), 2.5);
        assert_eq!(percentile(&[7.0], 0.9), 7.0);
    }

    #[test]
    fn percentiles_interpolate_between_closest_ranks() {
        // 11 samples 0..=10: position q·10 is the value itself.
        let v: Vec<f64> = (0..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.1), 1.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        // 5 samples: p10 sits at position 0.4 between 10 and 20.
        let s = Summary::of(&[50.0, 10.0, 40.0, 20.0, 30.0]);
        assert!((s.p10 - 14.0).abs() < 1e-9, "{s:?}");
        assert!((s.p90 - 46.0).abs() < 1e-9, "{s:?}");
        assert_eq!((s.n, s.median), (5, 30.0));
    }

    #[test]
    fn ratio_pairs_rounds_by_index() {
        // Round 2 is slow for both variants (machine noise): its ratio is
        // still 0.5, while a ratio of medians would mix rounds.
        let baseline = [10.0, 10.0, 100.0, 10.0, 10.0];
        let subject = [5.0, 5.0, 50.0, 5.0, 5.0];
        let r = ratio(&subject, &baseline);
        assert_eq!((r.median, r.p10, r.p90, r.n), (0.5, 0.5, 0.5, 5));
        let r = ratio(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]);
        assert_eq!(r.median, 2.0);
    }

    #[test]
    #[should_panic(expected = "same rounds")]
    fn ratio_of_different_round_counts_is_refused() {
        ratio(&[1.0, 2.0], &[1.0]);
    }

    #[test]
    #[should_panic(expected = "no samples")]
    fn an_empty_summary_is_refused() {
        Summary::of(&[]);
    }

    #[test]
    fn scaling_keeps_p10_below_p90() {
        let s = Summary::of(&[1.0, 2.0, 4.0]).scaled(-1.0);
        assert!(s.p10 <= s.median && s.median <= s.p90, "{s:?}");
        let s = Summary::of(&[1.0, 2.0, 4.0]).scaled(1e-6);
        assert_eq!(s.median, 2e-6);
    }
}
