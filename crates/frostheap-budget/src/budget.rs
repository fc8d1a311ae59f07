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
//! a [`Permit`] promises to keep its allocations within the permit's bytes
//! (or to grow it with [`Permit::try_grow`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use frostheap::{Bytes, Error, Heap};
use tokio::sync::Semaphore;

use crate::estimator::Estimator;
use crate::permit::{Acquire, Permit};

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
    /// Live client permits (from `try_acquire` / `acquire`).
    pub clients: usize,
    /// The most client permits alive at once.
    pub peak_clients: usize,
    /// Client permits ever granted.
    pub admitted: u64,
    /// Requests refused because the bytes did not fit (`try_acquire`
    /// returning `None`, a failed `try_grow`, a refused reservation).
    pub refused: u64,
    /// Client permits granted after waiting in [`Budget::acquire`].
    pub waited: u64,
    /// Callers waiting in [`Budget::acquire`] right now.
    pub waiting: usize,
    /// The per-client cost in force (declared, or the running estimate).
    pub per_client: usize,
    /// Whether `per_client` is measured (true) or declared.
    pub measured: bool,
    /// Measurements fed to the estimator.
    pub samples: u64,
    /// `budget / per_client`: how many clients fit.
    pub capacity: usize,
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
    /// Free granules. `total / granule` permits in all; a live [`Permit`]
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

    /// The per-client cost in force: the declared bytes, or the running
    /// estimate of measured usage.
    pub fn per_client(&self) -> usize {
        self.inner.estimator.estimate()
    }

    /// How many clients fit at the per-client cost in force.
    pub fn clients(&self) -> usize {
        self.capacity(self.per_client())
    }

    /// Admits a client of `bytes` if they fit now, or returns `None` at
    /// once (and counts a refusal). The bytes return when the permit (and
    /// every clone of it) drops. Never waits and never overtakes a caller
    /// waiting in [`Budget::acquire`].
    pub fn try_acquire(&self, bytes: usize) -> Option<Permit> {
        match self.inner.try_take(bytes) {
            Some(granules) => Some(Permit::new(self.clone(), bytes, granules, true, false)),
            None => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Reserves `bytes` for something that is not a client (connection
    /// buffers, a cache): they count in `in_use`, not in `admitted` or
    /// `clients`, and feed no measurement.
    pub fn try_reserve(&self, bytes: usize) -> Option<Permit> {
        match self.inner.try_take(bytes) {
            Some(granules) => Some(Permit::new(self.clone(), bytes, granules, false, false)),
            None => {
                self.inner.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Admits a client of `bytes`, waiting (in FIFO order) until they fit.
    /// The future resolves to [`Error::OutOfMemory`] at once if `bytes`
    /// exceeds the whole budget. Dropping the future gives up its place
    /// (and hands on bytes set aside for it).
    ///
    /// The future is runtime-agnostic (std wakers only).
    pub fn acquire(&self, bytes: usize) -> Acquire {
        Acquire::new(self.clone(), bytes, false)
    }

    /// Like [`Budget::acquire`], for a reservation (see
    /// [`Budget::try_reserve`]).
    pub fn reserve(&self, bytes: usize) -> Acquire {
        Acquire::new(self.clone(), bytes, true)
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
        write!(
            f,
            "{}: {} clients at ≈{} each",
            Bytes(self.total()),
            Thousands(self.capacity(per_client)),
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
    /// Granules that cover `bytes`, or `None` past what one acquisition
    /// may take (more than the whole budget).
    pub(crate) fn granules(&self, bytes: usize) -> Option<u32> {
        u32::try_from(bytes.div_ceil(self.granule)).ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Wake, Waker};

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(fut: &mut Acquire, wake: &Arc<CountWake>) -> Poll<Result<Permit, Error>> {
        let waker = Waker::from(wake.clone());
        let mut cx = Context::from_waker(&waker);
        Pin::new(fut).poll(&mut cx)
    }

    #[test]
    fn capacity_is_budget_over_per_client() {
        let b = Budget::with_per_client(256 << 20, PerClient::Declared(128 << 10)).unwrap();
        assert_eq!(b.capacity(128 << 10), 2048);
        assert_eq!(b.clients(), 2048);
        assert_eq!(b.capacity(0), 256 << 20);
        assert_eq!(b.to_string(), "256 MiB: 2,048 clients at ≈128 KiB each");
    }

    #[test]
    fn budget_smaller_than_one_client_is_refused() {
        let err = Budget::with_per_client(64 << 10, PerClient::Declared(128 << 10)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig { name: "budget", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("128 KiB"), "{err}");
    }

    #[test]
    fn permits_return_their_bytes_and_refuse_past_the_budget() {
        let b = Budget::new(1000);
        let p1 = b.try_acquire(600).unwrap();
        assert!(b.try_acquire(500).is_none());
        let p2 = b.try_acquire(400).unwrap();
        assert_eq!(b.available(), 0);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.admitted, s.refused),
            (1000, 2, 2, 1)
        );
        let clone = p1.clone();
        drop(p1);
        assert_eq!(b.stats().in_use, 1000, "a clone keeps the bytes");
        drop(clone);
        drop(p2);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.peak_in_use, s.peak_clients),
            (0, 0, 1000, 2)
        );
    }

    #[test]
    fn grow_and_reserve() {
        let b = Budget::new(1000);
        let r = b.try_reserve(300).unwrap();
        let p = b.try_acquire(500).unwrap();
        assert!(p.try_grow(200));
        assert!(!p.try_grow(1));
        assert_eq!(p.bytes(), 700);
        let s = b.stats();
        assert_eq!(
            (s.in_use, s.clients, s.admitted),
            (1000, 1, 1),
            "a reservation is not a client"
        );
        drop((r, p));
        assert_eq!(b.stats().in_use, 0);
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_budget() {
        let b = Budget::new(10_000);
        let over = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..4 {
                let (b, over) = (b.clone(), over.clone());
                s.spawn(move || {
                    for i in 0..20_000 {
                        if let Some(p) = b.try_acquire(100 + (i * 7 + t) % 900) {
                            if b.stats().in_use > 10_000 {
                                over.fetch_add(1, Ordering::Relaxed);
                            }
                            drop(p);
                        }
                    }
                });
            }
        });
        assert_eq!(over.load(Ordering::Relaxed), 0);
        let s = b.stats();
        assert_eq!((s.in_use, s.clients), (0, 0));
        assert!(s.peak_in_use <= 10_000);
        assert_eq!(s.admitted + s.refused, 80_000);
    }

    #[test]
    fn acquire_waits_in_fifo_order_and_is_woken_by_a_release() {
        let b = Budget::new(1000);
        let held = b.try_acquire(800).unwrap();
        let (w1, w2) = (
            Arc::new(CountWake(AtomicUsize::new(0))),
            Arc::new(CountWake(AtomicUsize::new(0))),
        );
        let mut a1 = b.acquire(500);
        let mut a2 = b.acquire(100);
        assert!(poll_once(&mut a1, &w1).is_pending());
        // 100 bytes would fit, but a2 queues behind a1 (no overtaking).
        assert!(poll_once(&mut a2, &w2).is_pending());
        assert_eq!(b.stats().waiting, 2);
        drop(held);
        assert_eq!(w1.0.load(Ordering::SeqCst), 1);
        assert_eq!(w2.0.load(Ordering::SeqCst), 1);
        let p1 = match poll_once(&mut a1, &w1) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("a1 not granted: {:?}", other.map(|r| r.map(|p| p.bytes()))),
        };
        let p2 = match poll_once(&mut a2, &w2) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("a2 not granted: {:?}", other.map(|r| r.map(|p| p.bytes()))),
        };
        let s = b.stats();
        assert_eq!((s.in_use, s.waited, s.waiting), (600, 2, 0));
        drop((p1, p2));
        assert_eq!(b.stats().in_use, 0);
    }

    #[test]
    fn a_cancelled_waiter_passes_its_grant_on() {
        let b = Budget::new(1000);
        let held = b.try_acquire(1000).unwrap();
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a1 = b.acquire(1000);
        let mut a2 = b.acquire(1000);
        assert!(poll_once(&mut a1, &w).is_pending());
        assert!(poll_once(&mut a2, &w).is_pending());
        drop(held); // granted to a1 ...
        drop(a1); // ... which never takes it: a2 gets it.
        assert!(matches!(poll_once(&mut a2, &w), Poll::Ready(Ok(_))));
        assert_eq!(b.stats().in_use, 0, "a2's permit was dropped at once");
    }

    #[test]
    fn acquire_larger_than_the_budget_fails_at_once() {
        let b = Budget::new(1000);
        let w = Arc::new(CountWake(AtomicUsize::new(0)));
        let mut a = b.acquire(1001);
        match poll_once(&mut a, &w) {
            Poll::Ready(Err(e)) => assert_eq!((e.requested(), e.limit()), (Some(1001), Some(1000))),
            _ => panic!("expected an error"),
        }
    }

    #[test]
    fn measured_cost_follows_recorded_usage() {
        let b = Budget::new(100 << 20);
        assert_eq!(b.per_client(), DEFAULT_PER_CLIENT);
        for _ in 0..200 {
            let p = b.try_acquire(64 << 10).unwrap();
            p.record_usage(20 << 10);
            p.record_usage(12 << 10);
        }
        // Constant usage: the deviation decays and the estimate converges.
        let est = b.per_client();
        assert!(((32 << 10)..(33 << 10)).contains(&est), "estimate {est}");
        assert_eq!(b.clients(), (100 << 20) / est);
        assert_eq!(b.stats().samples, 200);
        // A declared cost ignores measurements.
        b.set_per_client(PerClient::Declared(1 << 20)).unwrap();
        b.try_acquire(1).unwrap().record_usage(5);
        assert_eq!(b.per_client(), 1 << 20);
    }

    #[test]
    fn estimate_sits_above_the_mean_for_varied_usage() {
        let b = Budget::new(1 << 30);
        for i in 0..1000usize {
            let p = b.try_acquire(1).unwrap();
            // Alternating 10 KiB and 50 KiB: mean 30 KiB.
            p.record_usage(if i % 2 == 0 { 10 << 10 } else { 50 << 10 });
        }
        let est = b.per_client();
        assert!(
            est > 40 << 10,
            "estimate {est} should cover the heavy clients"
        );
    }

    #[test]
    #[allow(unsafe_code)] // frees the block it allocated
    fn from_heap_takes_the_room_under_the_limit() {
        let heap = Heap::builder()
            .name("budget-test")
            .max(8 << 20)
            .build()
            .unwrap();
        let block = heap
            .try_alloc(std::alloc::Layout::from_size_align(1 << 20, 8).unwrap())
            .unwrap();
        let b = Budget::from_heap(&heap);
        assert_eq!(b.total(), heap.limit() - heap.stats().in_use);
        assert!(b.total() <= 7 << 20);
        // SAFETY: `block` came from `heap` and is not used again.
        unsafe { heap.dealloc(block) };
    }

    #[test]
    fn thousands() {
        assert_eq!(Thousands(0).to_string(), "0");
        assert_eq!(Thousands(999).to_string(), "999");
        assert_eq!(Thousands(2048).to_string(), "2,048");
        assert_eq!(Thousands(1234567).to_string(), "1,234,567");
    }
}
