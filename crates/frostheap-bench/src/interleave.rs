//! Running the variants of one case interleaved, in rounds.
//!
//! A round runs every variant once; the variant that starts a round
//! rotates (round `r` starts with variant `r mod n`), so none always runs
//! first, right after another's cache or page-cache warm-up. The first
//! `warmup` rounds are run and dropped. A machine shared with other work
//! slows whole stretches of time: interleaving spreads such a stretch over
//! all variants alike, and [`crate::stats::ratio`] then compares them
//! round by round.
//!
//! A round of one variant returns whatever the benchmark measures (a
//! time in ns, or a child process's [`Outcome`](crate::child::Outcome));
//! [`Rounds`] keeps those results per variant in round order, and
//! [`Rounds::samples`] picks the figure to summarise, so that sample `i`
//! of every variant comes from the same round. A round may also yield
//! several figures of one kind (a child that times several runs):
//! [`Rounds::samples_each`] flattens them, and requires the same number
//! from every round.
//!
//! The number of rounds is fixed ([`Stop::Rounds`]), or set by a time
//! budget ([`Stop::Budget`]: rounds until the budget is spent, within a
//! minimum and a maximum) for cases whose cost ranges over orders of
//! magnitude, such as freezing 16 MiB or 4 GiB.

use std::time::{Duration, Instant};

use crate::stats::{self, Summary};

/// Runs `f` once and returns the time it took, in ns.
pub fn time_ns(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64
}

/// When a case stops running rounds.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Exactly this many timed rounds.
    Rounds(usize),
    /// Timed rounds until `time` has passed since the first, but at least
    /// `min` and at most `max`.
    Budget {
        /// Time to spend on the timed rounds of the case.
        time: Duration,
        /// Fewest timed rounds, whatever the time.
        min: usize,
        /// Most timed rounds, whatever the time.
        max: usize,
    },
}

/// How many rounds a case runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Rounds run first and dropped.
    pub warmup: usize,
    /// When the timed rounds stop.
    pub stop: Stop,
}

impl Plan {
    /// `warmup` dropped rounds, then `rounds` timed ones.
    pub fn rounds(warmup: usize, rounds: usize) -> Plan {
        Plan {
            warmup,
            stop: Stop::Rounds(rounds),
        }
    }

    /// `warmup` dropped rounds, then timed rounds for `time` (at least
    /// `min`, at most `max`).
    pub fn budget(warmup: usize, time: Duration, min: usize, max: usize) -> Plan {
        Plan {
            warmup,
            stop: Stop::Budget { time, min, max },
        }
    }

    /// Runs `round(variant)` for every variant of `variants`, in rotation,
    /// round after round, and returns the results of the timed rounds.
    ///
    /// # Panics
    /// If `variants` is empty.
    pub fn run<V, T>(&self, variants: &[V], mut round: impl FnMut(&V) -> T) -> Rounds<T> {
        let n = variants.len();
        assert!(n > 0, "a case needs at least one variant");
        let mut per_variant: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
        let mut timed = 0;
        let mut started: Option<Instant> = None;
        for r in 0.. {
            let warm = r < self.warmup;
            if !warm && self.done(timed, started) {
                break;
            }
            if !warm && started.is_none() {
                started = Some(Instant::now());
            }
            for j in 0..n {
                let v = (r + j) % n;
                let result = round(&variants[v]);
                if !warm {
                    per_variant[v].push(result);
                }
            }
            if !warm {
                timed += 1;
            }
        }
        Rounds { per_variant }
    }

    fn done(&self, timed: usize, started: Option<Instant>) -> bool {
        match self.stop {
            Stop::Rounds(n) => timed >= n,
            Stop::Budget { time, min, max } => {
                timed >= max || (timed >= min && started.is_some_and(|t| t.elapsed() >= time))
            }
        }
    }
}

/// The results of the timed rounds of one case, per variant, in round
/// order; variant `i` is `variants[i]` of [`Plan::run`].
#[derive(Clone, Debug)]
pub struct Rounds<T> {
    per_variant: Vec<Vec<T>>,
}

impl<T> Rounds<T> {
    /// The results of variant `v`, in round order.
    pub fn of(&self, v: usize) -> &[T] {
        &self.per_variant[v]
    }

    /// One figure per round, picked from each result by `figure`.
    pub fn samples(&self, figure: impl Fn(&T) -> f64) -> Samples {
        Samples::from_lists(
            self.per_variant
                .iter()
                .map(|rounds| rounds.iter().map(&figure).collect())
                .collect(),
        )
    }

    /// Several figures per round (a child's timed runs), flattened in
    /// round order.
    ///
    /// # Panics
    /// If two rounds of a variant give different numbers of figures: then
    /// index `i` would not mean the same round for every variant.
    pub fn samples_each(&self, figures: impl Fn(&T) -> Vec<f64>) -> Samples {
        Samples::from_lists(
            self.per_variant
                .iter()
                .enumerate()
                .map(|(v, rounds)| {
                    let mut out = Vec::new();
                    let mut per_round = None;
                    for r in rounds {
                        let got = figures(r);
                        assert_eq!(
                            *per_round.get_or_insert(got.len()),
                            got.len(),
                            "variant {v}: every round must yield the same number of samples"
                        );
                        out.extend(got);
                    }
                    out
                })
                .collect(),
        )
    }
}

/// Figures of the timed rounds of one case, per variant, in round order
/// (from [`Rounds::samples`]); variant `i` is `variants[i]` of
/// [`Plan::run`].
#[derive(Clone, Debug)]
pub struct Samples {
    per_variant: Vec<Vec<f64>>,
}

impl Samples {
    /// Samples from lists already in round order, one list per variant.
    pub fn from_lists(per_variant: Vec<Vec<f64>>) -> Samples {
        Samples { per_variant }
    }

    /// The samples of variant `v`, in round order.
    pub fn of(&self, v: usize) -> &[f64] {
        &self.per_variant[v]
    }

    /// Median and p10–p90 of variant `v`.
    pub fn summary(&self, v: usize) -> Summary {
        Summary::of(self.of(v))
    }

    /// The per-round ratio `subject / baseline` (see [`stats::ratio`]).
    pub fn ratio(&self, subject: usize, baseline: usize) -> Summary {
        stats::ratio(self.of(subject), self.of(baseline))
    }

    /// Of the variants `among`, the one with the lowest median (the
    /// fastest, when samples are times).
    pub fn lowest_median(&self, among: &[usize]) -> usize {
        *among
            .iter()
            .min_by(|a, b| {
                self.summary(**a)
                    .median
                    .total_cmp(&self.summary(**b).median)
            })
            .expect("at least one variant to choose from")
    }

    /// The number of variants.
    pub fn variants(&self) -> usize {
        self.per_variant.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_first_variant_and_drop_the_warmup() {
        let mut order = Vec::new();
        let mut calls = 0.0;
        let s = Plan::rounds(1, 2)
            .run(&['a', 'b', 'c'], |v| {
                order.push(*v);
                calls += 1.0;
                calls
            })
            .samples(|t| *t);
        assert_eq!(order, ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b']);
        // The warm-up round (calls 1–3) is dropped; index = round.
        assert_eq!(s.of(0), &[6.0, 8.0]);
        assert_eq!(s.of(1), &[4.0, 9.0]);
        assert_eq!(s.of(2), &[5.0, 7.0]);
    }

    #[test]
    fn several_samples_per_round_stay_in_round_order() {
        let mut next = 0.0;
        let s = Plan::rounds(0, 2)
            .run(&[0, 1], |_| {
                next += 1.0;
                next
            })
            .samples_each(|t| vec![*t, t + 0.5]);
        assert_eq!(s.of(0), &[1.0, 1.5, 4.0, 4.5]);
        assert_eq!(s.of(1), &[2.0, 2.5, 3.0, 3.5]);
    }

    #[test]
    #[should_panic(expected = "same number of samples")]
    fn rounds_of_different_sizes_are_refused() {
        let mut k = 0;
        Plan::rounds(0, 2)
            .run(&[0], |_| {
                k += 1;
                k
            })
            .samples_each(|k| vec![0.0; *k]);
    }

    #[test]
    fn a_budget_stops_at_its_bounds() {
        // No time: the minimum.
        let r = Plan::budget(0, Duration::ZERO, 3, 10).run(&[0, 1], |_| ());
        assert_eq!((r.of(0).len(), r.of(1).len()), (3, 3));
        // Unbounded time: the maximum.
        let r = Plan::budget(2, Duration::from_secs(3600), 3, 10).run(&[0], |_| ());
        assert_eq!(r.of(0).len(), 10);
    }

    #[test]
    fn lowest_median_and_ratio_by_variant() {
        let s = Samples::from_lists(vec![vec![4.0, 4.0], vec![2.0, 3.0], vec![8.0, 6.0]]);
        assert_eq!(s.lowest_median(&[0, 2]), 0);
        assert_eq!(s.lowest_median(&[0, 1, 2]), 1);
        assert_eq!(s.ratio(1, 0).median, 0.625);
        assert_eq!(s.variants(), 3);
    }
}
