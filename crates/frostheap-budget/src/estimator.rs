//! The per-client cost estimate of a measured budget.
//!
//! The estimator is Jacobson's round-trip-time estimator from TCP (RFC
//! 6298) applied to bytes: a mean and a mean deviation, both exponentially
//! weighted (gains 1/8 and 1/4), and the estimate is `mean + 2 ×
//! deviation`. For a normal distribution the mean deviation is ≈ 0.8 σ, so
//! the estimate sits near the 95th percentile: capacity is derived from
//! what a heavy client costs, not an average one, and it follows a workload
//! that changes. Both numbers live in one `AtomicU64` (two saturating
//! `u32`s), updated by CAS.

use std::sync::atomic::{AtomicU64, Ordering};

/// `mean` (high 32 bits) and mean deviation (low 32 bits), bytes, saturating
/// at 4 GiB − 1 per client.
pub(crate) struct Estimator {
    packed: AtomicU64,
    samples: AtomicU64,
}

fn pack(mean: u64, dev: u64) -> u64 {
    (mean.min(u32::MAX as u64) << 32) | dev.min(u32::MAX as u64)
}

fn unpack(p: u64) -> (u64, u64) {
    (p >> 32, p & u32::MAX as u64)
}

impl Estimator {
    pub(crate) fn new(initial: usize) -> Estimator {
        Estimator {
            packed: AtomicU64::new(pack(initial as u64, 0)),
            samples: AtomicU64::new(0),
        }
    }

    pub(crate) fn reset(&self, initial: usize) {
        self.samples.store(0, Ordering::Relaxed);
        self.packed
            .store(pack(initial as u64, 0), Ordering::Relaxed);
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }

    pub(crate) fn estimate(&self) -> usize {
        let (mean, dev) = unpack(self.packed.load(Ordering::Relaxed));
        ((mean + 2 * dev) as usize).max(1)
    }

    /// Jacobson/Karels: `err = x − mean; mean += err/8; dev += (|err| − dev)/4`.
    /// The first sample replaces the initial guess (`mean = x, dev = x/4`).
    pub(crate) fn record(&self, sample: usize) {
        let x = (sample as u64).min(u32::MAX as u64) as i64;
        let first = self.samples.fetch_add(1, Ordering::Relaxed) == 0;
        let mut cur = self.packed.load(Ordering::Relaxed);
        loop {
            let (mean, dev) = unpack(cur);
            let (mean, dev) = (mean as i64, dev as i64);
            let (new_mean, new_dev) = if first {
                (x, x / 4)
            } else {
                let err = x - mean;
                (mean + err / 8, dev + (err.abs() - dev) / 4)
            };
            let next = pack(new_mean.max(0) as u64, new_dev.max(0) as u64);
            if next == cur {
                // Converged (the integer steps round to zero): no write.
                return;
            }
            match self
                .packed
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}
