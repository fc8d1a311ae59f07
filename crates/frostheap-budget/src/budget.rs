//! [`Budget`]: a byte count that turns into client capacity and admission.
//!
//! **Admission** is a weighted FIFO semaphore whose permits are bytes:
//! tokio's (`tokio::sync::Semaphore`, the `sync` module only, which runs
//! under any executor and is model-checked with loom upstream). A caller
//! either takes what is free now ([`Budget::try_acquire`], the shedding
//! path) or queues ([`Budget::acquire`]); bytes given back go to the
//! waiters in arrival order first, so a stream of small arrivals never
//! starves a large waiter, and `try_acquire` never overtakes a waiter.
//!
//! tokio takes at most `u32::MAX` permits per call, so the semaphore counts
//! *granules* of ⌈total / 2³²⌉ bytes: one byte for every budget up to
//! 4 GiB, and a whole budget is always one acquisition. The bytes a permit
//! holds are counted exactly beside it (`in_use`), which is what
//! [`BudgetStats`] reports.
//!
//! The budget is bookkeeping: it allocates nothing itself. Code that holds
//! a [`Permit`](crate::Permit) promises to keep its allocations within the permit's bytes
//! (or to grow it with [`Permit::try_grow`](crate::Permit::try_grow)).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use frostheap::{Bytes, Error, Heap};
use tokio::sync::Semaphore;

use crate::estimator::Estimator;

/// The per-client cost assumed until something better is known: 128 KiB
/// (an HTTP request with its buffers, a parsed JSON body of a few tens of
/// KiB, and the response).
pub const DEFAULT_PER_CLIENT: usize = 128 << 10;

/// How the cost of one client is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerClient {
    /// A fixed number of bytes per client, never revised.
    Declared(usize),
    /// A running estimate from the usage permits record, starting at
    /// `initial` until the first measurement arrives.
    Measured {
        /// The estimate before any measurement.
        initial: usize,
    },
}

impl PerClient {
    fn initial(self) -> usize {
        match self {
            PerClient::Declared(b) | PerClient::Measured { initial: b } => b.max(1),
        }
    }
}

/// A snapshot of a budget's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget in bytes.
    pub budget: usize,
    /// Bytes held by live permits (`in_use <= budget`).
    pub in_use: usize,
    /// The highest `in_use` seen.
    pub peak_in_use: usize,
    /// Live client permits (from `try_acquire` / `acquire`), but those
    /// suspended ([`Permit::suspend`](crate::Permit::suspend)).
    pub clients: usize,
    /// The most client permits alive at once.
    pub peak_clients: usize,
    /// Client permits ever granted.
    pub admitted: u64,
    /// Requests refused because the bytes did not fit (`try_acquire`
    /// returning `None`, a failed `try_grow`, a refused reservation).
    pub refused: u64,
    /// Client permits granted after waiting: in [`Budget::acquire`], or as
    /// a reservation that waited in [`Budget::reserve`] and was then
    /// admitted ([`Permit::admit`](crate::Permit::admit), the tower
    /// layer's path).
    pub waited: u64,
    /// Callers waiting in [`Budget::acquire`] right now.
    pub waiting: usize,
    /// The per-client cost in force (declared, or the running estimate).
    pub per_client: usize,
    /// Whether `per_client` is measured (true) or declared.
    pub measured: bool,
    /// Measurements fed to the estimator since it started (or was reset).
    pub samples: u64,
    /// `budget / per_client`: how many clients fit.
    pub capacity: usize,
    /// The time window the measured estimate looks at (see
    /// [`Budget::set_estimate_window`]).
    pub window: Duration,
    /// Measurements in the window now.
    pub window_samples: u64,
    /// The largest measurement in the window now (0 when empty).
    pub window_max: usize,
}

/// A memory budget: a cheap, cloneable handle (an `Arc` inside).
///
/// ```
/// use frostheap_budget::{Budget, PerClient};
/// let budget = Budget::with_per_client(256 << 20, PerClient::Declared(128 << 10))?;
/// assert_eq!(budget.clients(), 2048);
/// let permit = budget.try_acquire(100 << 10).expect("fits");
/// assert_eq!(budget.stats().in_use, 100 << 10);
/// drop(permit); // the bytes come back
/// assert_eq!(budget.stats().in_use, 0);
/// # Ok::<(), frostheap::Error>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The budget in bytes. Never changes.
    pub(crate) total: usize,
    /// Bytes per semaphore permit: ⌈total / u32::MAX⌉, at least 1.
    granule: usize,
    /// Free granules. `total / granule` permits in all; a live [`Permit`](crate::Permit)
    /// holds `granules(bytes)` of them (forgotten from the semaphore, given
    /// back with `add_permits` when it drops).
    pub(crate) semaphore: Arc<Semaphore>,
    /// Bytes held by live permits. Invariant: `in_use <= total` (each
    /// permit's bytes fit in the granules it took).
    pub(crate) in_use: AtomicUsize,
    peak_in_use: AtomicUsize,
    /// Live client permits (not reservations).
    pub(crate) clients: AtomicUsize,
    pub(crate) peak_clients: AtomicUsize,
    pub(crate) admitted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) waited: AtomicU64,
    /// `Acquire` futures queued in the semaphore now.
    pub(crate) waiting: AtomicUsize,
    /// True when the per-client cost is measured.
    pub(crate) measured: AtomicBool,
    pub(crate) estimator: Estimator,
}

impl Budget {
    /// A budget of `bytes`, with the per-client cost measured starting from
    /// [`DEFAULT_PER_CLIENT`].
    pub fn new(bytes: usize) -> Budget {
        Budget::build(
            bytes,
            PerClient::Measured {
                initial: DEFAULT_PER_CLIENT,
            },
        )
    }

    /// A budget of `bytes` with the given per-client cost. Fails with
    /// [`Error::InvalidConfig`] when not even one client fits.
    pub fn with_per_client(bytes: usize, per_client: PerClient) -> Result<Budget, Error> {
        check_fits(bytes, per_client)?;
        Ok(Budget::build(bytes, per_client))
    }

    /// A budget for the room left under a heap's hard cap: `limit − in_use
    /// − external`, taken when called.
    ///
    /// Memory the heap already holds for live data is not the budget's to
    /// hand out; free pages the heap has committed but not used are (they
    /// are reused before the heap grows). The budget does not allocate in
    /// the heap and does not follow it afterwards: build it once the
    /// long-lived data (indexes, caches) is loaded.
    pub fn from_heap(heap: &Heap) -> Budget {
        let s = heap.stats();
        Budget::new(s.limit.saturating_sub(s.in_use).saturating_sub(s.external))
    }

    fn build(bytes: usize, per_client: PerClient) -> Budget {
        let granule = bytes.div_ceil(u32::MAX as usize).max(1);
        let inner = Inner {
            total: bytes,
            granule,
            semaphore: Arc::new(Semaphore::new(bytes / granule)),
            in_use: AtomicUsize::new(0),
            peak_in_use: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            peak_clients: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            measured: AtomicBool::new(matches!(per_client, PerClient::Measured { .. })),
            estimator: Estimator::new(per_client.initial()),
        };
        Budget {
            inner: Arc::new(inner),
        }
    }

    /// Changes how the per-client cost is known (and restarts the
    /// estimate). Fails like [`Budget::with_per_client`].
    pub fn set_per_client(&self, per_client: PerClient) -> Result<(), Error> {
        check_fits(self.inner.total, per_client)?;
        self.inner.estimator.reset(per_client.initial());
        self.inner.measured.store(
            matches!(per_client, PerClient::Measured { .. }),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Sets the window of the measured estimate (default
    /// [`DEFAULT_WINDOW`](crate::DEFAULT_WINDOW), 10 s): the estimate is
    /// the [95th percentile](crate::QUANTILE) of the usage recorded in the
    /// last `window`. Samples recorded so far are forgotten; the estimate
    /// in force stays until new ones arrive. Fails with
    /// [`Error::InvalidConfig`] for a zero window.
    pub fn set_estimate_window(&self, window: Duration) -> Result<(), Error> {
        if window.is_zero() {
            return Err(Error::InvalidConfig {
                name: "estimate window",
                value: "0s".into(),
                expected: "a window longer than zero, such as 10s".into(),
            });
        }
        self.inner.estimator.set_window(window);
        Ok(())
    }

    /// The budget in bytes.
    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Bytes free to take now: neither held by a permit nor set aside for
    /// the caller at the front of the queue.
    pub fn available(&self) -> usize {
        self.inner.semaphore.available_permits() * self.inner.granule
    }

    /// How many clients of `per_client_bytes` each fit in the budget
    /// (`total / per_client_bytes`; a cost of 0 counts as 1 byte).
    pub fn capacity(&self, per_client_bytes: usize) -> usize {
        self.inner.total / per_client_bytes.max(1)
    }

    /// The per-client cost in force: the declared bytes, or the estimate
    /// from measured usage (the 95th percentile of the window: see
    /// [`Budget::set_estimate_window`]).
    pub fn per_client(&self) -> usize {
        self.inner.estimator.estimate()
    }

    /// How many clients fit at the per-client cost in force.
    pub fn clients(&self) -> usize {
        self.capacity(self.per_client())
    }

    /// Callers waiting in [`Budget::acquire`] now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Counts a refusal made outside the budget (a caller that sheds load
    /// for its own reasons but wants it in the same statistics).
    pub fn count_refusal(&self) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the numbers.
    pub fn stats(&self) -> BudgetStats {
        let i = &self.inner;
        let per_client = self.per_client();
        let window = i.estimator.window_stats();
        BudgetStats {
            budget: i.total,
            in_use: i.in_use.load(Ordering::Relaxed),
            peak_in_use: i.peak_in_use.load(Ordering::Relaxed),
            clients: i.clients.load(Ordering::Relaxed),
            peak_clients: i.peak_clients.load(Ordering::Relaxed),
            admitted: i.admitted.load(Ordering::Relaxed),
            refused: i.refused.load(Ordering::Relaxed),
            waited: i.waited.load(Ordering::Relaxed),
            waiting: i.waiting.load(Ordering::Relaxed),
            per_client,
            measured: i.measured.load(Ordering::Relaxed),
            samples: i.estimator.samples(),
            capacity: self.capacity(per_client),
            window: window.window,
            window_samples: window.samples,
            window_max: window.max,
        }
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("stats", &self.stats())
            .finish()
    }
}

impl fmt::Display for Budget {
    /// `256 MiB: 2,048 clients at ≈128 KiB each`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_client = self.per_client();
        let capacity = self.capacity(per_client);
        write!(
            f,
            "{}: {} {} at ≈{} each",
            Bytes(self.total()),
            Thousands(capacity),
            if capacity == 1 { "client" } else { "clients" },
            Bytes(per_client)
        )
    }
}

/// Displays an integer with thousands separators: `2,048`.
#[derive(Clone, Copy, Debug)]
pub struct Thousands(pub usize);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        f.write_str(&out)
    }
}

fn check_fits(bytes: usize, per_client: PerClient) -> Result<(), Error> {
    let cost = per_client.initial();
    if bytes < cost {
        return Err(Error::InvalidConfig {
            name: "budget",
            value: format!("{} (one client costs {})", Bytes(bytes), Bytes(cost)),
            expected: format!(
                "a budget of at least one client ({}), or a smaller per-client cost",
                Bytes(cost)
            ),
        });
    }
    Ok(())
}

/// Raises `peak` to `now` if that is higher. A plain load first: below
/// the peak (the steady state of a server) this costs no locked
/// instruction, where `fetch_max` always takes the cache line exclusively.
#[inline]
pub(crate) fn raise_peak(peak: &AtomicUsize, now: usize) {
    if now > peak.load(Ordering::Relaxed) {
        peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl Inner {
    /// Granules that cover `bytes`, or `None` for more than the whole
    /// budget. Capped at all of them: a request of the whole budget (not a
    /// multiple of the granule) takes every granule and is alone, so the
    /// bytes held never exceed the budget.
    pub(crate) fn granules(&self, bytes: usize) -> Option<u32> {
        if bytes > self.total {
            return None;
        }
        let all = self.total / self.granule;
        u32::try_from(bytes.div_ceil(self.granule).min(all)).ok()
    }

    /// Takes `bytes` if they are free now (no waiting); the granules taken.
    pub(crate) fn try_take(&self, bytes: usize) -> Option<u32> {
        let granules = self.granules(bytes)?;
        let permit = self.semaphore.try_acquire_many(granules).ok()?;
        permit.forget();
        self.charge(bytes);
        Some(granules)
    }

    /// Counts `bytes` whose granules were just taken.
    pub(crate) fn charge(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        raise_peak(&self.peak_in_use, now);
    }

    /// Gives back `bytes` held in `granules`; the semaphore hands them to
    /// the waiters at the front first.
    pub(crate) fn release(&self, bytes: usize, granules: usize) {
        let before = self.in_use.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(
            before >= bytes,
            "budget: released {bytes} bytes with only {before} in use"
        );
        if granules > 0 {
            self.semaphore.add_permits(granules);
        }
    }
}
