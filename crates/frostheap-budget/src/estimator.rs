//! The per-client cost estimate of a measured budget: the 95th percentile
//! of the usage recorded in a sliding time window.
//!
//! **The choice.** Capacity should follow what a heavy client costs, not an
//! average one, and it should follow a workload that changes — but a few
//! large requests must not halve capacity for everyone. A high quantile
//! over a window does both, with behaviour that can be stated exactly:
//!
//! - **Window**: the samples of the last `window` (default
//!   [`DEFAULT_WINDOW`], 10 s), kept as [`SLOTS`] sub-windows of
//!   `window / SLOTS`; a sample is forgotten between `7/8` and `8/8` of a
//!   window after it was recorded.
//! - **Estimate**: the [`QUANTILE`] (95th percentile) of the window's
//!   samples, read from a histogram with 8 buckets per power of two: the
//!   largest sample of the bucket the quantile falls in (so at most 12.5 %
//!   above the exact quantile, and exact for a constant workload).
//! - **Outliers**: heavy samples that are at most 5 % of the window's
//!   samples do not move the estimate at all (a burst of 1 % outliers
//!   leaves capacity where it was). A burst above 5 % raises it until the
//!   burst has left the window: at most one window later.
//! - **A real shift**: requests that became heavier move the estimate as
//!   soon as they are more than 5 % of the window (at a steady rate, after
//!   about 5 % of a window); requests that became lighter move it down
//!   once the heavier ones are less than 5 % (within one window).
//! - With no samples in the window, the estimate keeps its last value
//!   (nothing new is known); before the first sample it is the declared
//!   initial cost.
//!
//! The exponentially weighted `mean + 2 × deviation` estimator this
//! replaces (Jacobson's, from TCP) let one 1 MiB outlier among 32 KiB
//! requests raise the estimate for hundreds of requests afterwards; its
//! memory was a number of samples, not a time.
//!
//! Recording takes a mutex (a few increments; the histogram is re-read
//! every [`REFRESH`] samples and at each sub-window turn); reading the
//! estimate is one atomic load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The quantile of recorded usage that the estimate follows.
pub const QUANTILE: f64 = 0.95;

/// The window the estimate looks at, unless set otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// Sub-windows per window.
pub const SLOTS: usize = 8;

/// Samples between two reads of the histogram (the estimate also refreshes
/// at every sub-window turn and at the first sample of a window).
const REFRESH: u32 = 16;

/// Histogram buckets: values below 8 exactly, then 8 per power of two.
const BUCKETS: usize = 8 + 61 * 8;

fn bucket(x: u64) -> usize {
    if x < 8 {
        return x as usize;
    }
    let e = 63 - x.leading_zeros() as usize; // ≥ 3
    let m = ((x >> (e - 3)) & 7) as usize;
    8 + (e - 3) * 8 + m
}

/// The largest value of bucket `b`.
#[cfg(test)]
fn upper(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let (e, m) = ((b - 8) / 8 + 3, ((b - 8) % 8) as u128);
    // In u128: the last bucket's top is 2^64 - 1, one below a u64's range.
    u64::try_from(((8 + m + 1) << (e - 3)) - 1).expect("a bucket's top fits a u64")
}

/// What the estimator reports beside its estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowStats {
    pub(crate) window: Duration,
    pub(crate) samples: u64,
    pub(crate) max: usize,
}

pub(crate) struct Estimator {
    /// The estimate in force, bytes (≥ 1).
    estimate: AtomicUsize,
    /// Samples ever recorded since the last reset.
    samples: AtomicU64,
    epoch: Instant,
    window: Mutex<Window>,
}

struct Window {
    /// `window / SLOTS`, in nanoseconds (≥ 1).
    slot_ns: u64,
    /// The sub-window the newest slot holds (time / slot_ns).
    head: u64,
    slots: Vec<Slot>,
    /// Sum of the slots' histograms.
    total: Vec<u32>,
    /// Every bucket of `total` outside `lo..=hi` is empty (a bound, not
    /// always tight: expiry does not shrink it; an empty window resets it).
    /// The quantile scans only these buckets.
    lo: usize,
    hi: usize,
    count: u64,
    since_refresh: u32,
}

#[derive(Clone)]
struct Slot {
    /// Which sub-window this slot holds (`u64::MAX`: none).
    index: u64,
    hist: Vec<u32>,
    /// The largest sample of each bucket.
    top: Vec<u64>,
    count: u64,
    max: u64,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            index: u64::MAX,
            hist: vec![0; BUCKETS],
            top: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            slot_ns: (window.as_nanos() / SLOTS as u128).clamp(1, u64::MAX as u128) as u64,
            head: 0,
            slots: vec![Slot::empty(); SLOTS],
            total: vec![0; BUCKETS],
            lo: BUCKETS,
            hi: 0,
            count: 0,
            since_refresh: 0,
        }
    }

    /// Moves the window to `now` (nanoseconds since the epoch), dropping
    /// the sub-windows that fell out; true if any did. Within the newest
    /// sub-window (most calls) nothing can fall out: no slot is looked at.
    fn advance(&mut self, now: u64) -> bool {
        let cur = now / self.slot_ns;
        if cur <= self.head {
            return false;
        }
        self.head = cur;
        let mut turned = false;
        for slot in &mut self.slots {
            if slot.index != u64::MAX && slot.index + SLOTS as u64 <= cur {
                for (t, h) in self.total.iter_mut().zip(&slot.hist) {
                    *t -= h;
                }
                self.count -= slot.count;
                *slot = Slot::empty();
                turned = true;
            }
        }
        if self.count == 0 {
            (self.lo, self.hi) = (BUCKETS, 0);
        }
        turned
    }

    fn max(&self) -> u64 {
        self.slots.iter().map(|s| s.max).max().unwrap_or(0)
    }

    /// The quantile of the window (the largest sample of its bucket);
    /// `None` when the window is empty.
    fn quantile(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * QUANTILE).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for b in self.lo..=self.hi.min(BUCKETS - 1) {
            seen += self.total[b] as u64;
            if seen >= rank {
                return Some(self.slots.iter().map(|s| s.top[b]).max().unwrap_or(0));
            }
        }
        Some(self.max())
    }
}

impl Estimator {
    pub(crate) fn new(initial: usize) -> Estimator {
        Estimator {
            estimate: AtomicUsize::new(initial.max(1)),
            samples: AtomicU64::new(0),
            epoch: Instant::now(),
            window: Mutex::new(Window::new(DEFAULT_WINDOW)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every sample; the estimate is `initial` again.
    pub(crate) fn reset(&self, initial: usize) {
        let mut w = self.lock();
        let window = Duration::from_nanos(w.slot_ns * SLOTS as u64);
        *w = Window::new(window);
        self.samples.store(0, Ordering::Relaxed);
        self.estimate.store(initial.max(1), Ordering::Relaxed);
    }

    /// Sets the window (and forgets the samples, keeping the estimate).
    pub(crate) fn set_window(&self, window: Duration) {
        *self.lock() = Window::new(window);
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    pub(crate) fn estimate(&self) -> usize {
        self.estimate.load(Ordering::Relaxed)
    }

    pub(crate) fn window_stats(&self) -> WindowStats {
        let mut w = self.lock();
        w.advance(self.now());
        WindowStats {
            window: Duration::from_nanos(w.slot_ns * SLOTS as u64),
            samples: w.count,
            max: w.max() as usize,
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn record(&self, sample: usize) {
        self.record_at(sample, self.now());
    }

    /// Records `sample` at `now` nanoseconds after the estimator's epoch
    /// (tests pass their own clock).
    pub(crate) fn record_at(&self, sample: usize, now: u64) {
        let x = sample as u64;
        self.samples.fetch_add(1, Ordering::Relaxed);
        let mut w = self.lock();
        let turned = w.advance(now);
        let cur = now / w.slot_ns;
        let i = (cur % SLOTS as u64) as usize;
        let first_in_window = w.count == 0;
        let b = bucket(x);
        let slot = &mut w.slots[i];
        if slot.index != cur {
            // A slot left from a turn `advance` did not see (time went
            // backwards in a test, or it was already empty).
            debug_assert!(slot.count == 0 || slot.index == u64::MAX || slot.index < cur);
            slot.index = cur;
        }
        slot.hist[b] += 1;
        slot.top[b] = slot.top[b].max(x);
        slot.count += 1;
        slot.max = slot.max.max(x);
        w.total[b] += 1;
        w.lo = w.lo.min(b);
        w.hi = w.hi.max(b);
        w.count += 1;
        w.since_refresh += 1;
        if turned || first_in_window || w.since_refresh >= REFRESH {
            w.since_refresh = 0;
            if let Some(q) = w.quantile() {
                self.estimate.store((q as usize).max(1), Ordering::Relaxed);
            }
        }
    }

    /// Moves the window to `now` and refreshes the estimate (tests).
    #[cfg(test)]
    pub(crate) fn refresh_at(&self, now: u64) {
        let mut w = self.lock();
        w.advance(now);
        if let Some(q) = w.quantile() {
            self.estimate.store((q as usize).max(1), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn buckets_cover_their_values_within_an_eighth() {
        for x in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            4096,
            32 << 10,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket(x);
            assert!(upper(b) >= x, "{x} above its bucket's top {}", upper(b));
            if b > 0 {
                assert!(upper(b - 1) < x, "{x} also fits bucket {}", b - 1);
            }
            assert!(upper(b) - x <= x / 8, "{x}: bucket top {}", upper(b));
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    /// `n` samples of `x`, spread evenly over `[from, from + span)`.
    fn feed(e: &Estimator, x: usize, n: u64, from: u64, span: u64) {
        for k in 0..n {
            e.record_at(x, from + span * k / n);
        }
    }

    #[test]
    fn a_burst_of_one_percent_outliers_leaves_the_estimate_alone() {
        let e = Estimator::new(128 << 10);
        // 100 requests a second of 32 KiB, for a window.
        feed(&e, 32 << 10, 1000, 0, 10 * SEC);
        assert_eq!(e.estimate(), 32 << 10);
        // Then, within one second, 1 % of the window's requests are 1 MiB.
        feed(&e, 1 << 20, 10, 10 * SEC, SEC / 10);
        feed(&e, 32 << 10, 100, 10 * SEC, SEC);
        e.refresh_at(11 * SEC);
        assert_eq!(e.estimate(), 32 << 10, "1 % outliers moved the estimate");
    }

    #[test]
    fn a_larger_burst_raises_the_estimate_for_at_most_one_window() {
        let e = Estimator::new(128 << 10);
        feed(&e, 32 << 10, 1000, 0, 10 * SEC);
        // 10 % of a window's requests are 1 MiB, all within 100 ms.
        feed(&e, 1 << 20, 100, 10 * SEC, SEC / 10);
        e.refresh_at(10 * SEC + SEC / 10);
        assert!(e.estimate() >= 1 << 20, "estimate {}", e.estimate());
        // Steady traffic afterwards: the burst leaves the window within
        // one window (10 s) of being recorded.
        feed(&e, 32 << 10, 1000, 10 * SEC + SEC / 10, 10 * SEC);
        e.refresh_at(20 * SEC + SEC / 10);
        assert_eq!(e.estimate(), 32 << 10, "the burst outlived its window");
    }

    #[test]
    fn a_real_shift_moves_the_estimate_within_the_window() {
        let e = Estimator::new(128 << 10);
        feed(&e, 32 << 10, 1000, 0, 10 * SEC);
        // Every request is now 128 KiB: after 1 s of them (10 % of the
        // window) the estimate is theirs.
        feed(&e, 128 << 10, 100, 10 * SEC, SEC);
        assert_eq!(e.estimate(), 128 << 10);
        // And back down: lighter requests take over within one window.
        feed(&e, 16 << 10, 1000, 11 * SEC, 10 * SEC);
        e.refresh_at(21 * SEC);
        assert_eq!(e.estimate(), 16 << 10);
    }

    #[test]
    fn an_empty_window_keeps_the_last_estimate_and_reset_restores_the_initial() {
        let e = Estimator::new(128 << 10);
        assert_eq!(e.estimate(), 128 << 10);
        e.record_at(40 << 10, 0);
        assert_eq!(
            e.estimate(),
            40 << 10,
            "the first sample replaces the guess"
        );
        e.refresh_at(100 * SEC);
        assert_eq!(e.estimate(), 40 << 10);
        assert_eq!(e.window_stats().samples, 0);
        e.reset(64 << 10);
        assert_eq!((e.estimate(), e.samples()), (64 << 10, 0));
    }
}
