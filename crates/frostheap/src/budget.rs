//! Budgets: turning bytes into capacity, and admission by memory.
//!
//! A server should not be told "at most 512 clients"; it should be told
//! "you have 256 MiB" and work out how many clients fit. A [`Budget`] is a
//! byte count with a lock-free counter of the bytes handed out:
//!
//! ```
//! use frostheap::budget::{Budget, PerClient};
//! let budget = Budget::with_per_client(256 << 20, PerClient::Declared(128 << 10))?;
//! assert_eq!(budget.clients(), 2048);
//! let permit = budget.try_acquire(100 << 10).expect("fits");
//! assert_eq!(budget.stats().in_use, 100 << 10);
//! drop(permit); // the bytes come back
//! assert_eq!(budget.stats().in_use, 0);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! **Admission** is one compare-and-swap on an `AtomicUsize` holding the
//! bytes in use: `in_use + bytes <= total` is checked and applied in the
//! same CAS, so the invariant `in_use <= total` holds at every instant, for
//! any number of threads. [`Budget::acquire`] waits instead of refusing:
//! waiters queue in FIFO order (a mutex-protected queue touched only when
//! someone waits), and a release hands the freed bytes directly to the
//! waiters at the front that fit, so a stream of new arrivals cannot starve
//! a waiter. Waiting never holds bytes while waiting for more, so waiters
//! cannot deadlock each other.
//!
//! **Per-client cost** is either declared ([`PerClient::Declared`]) or
//! measured ([`PerClient::Measured`]): every permit may record the bytes its
//! client really used ([`Permit::record_usage`]); when the permit drops, the
//! total is fed to a running estimator. The estimator is Jacobson's
//! round-trip-time estimator from TCP (RFC 6298) applied to bytes: a mean
//! and a mean deviation, both exponentially weighted (gains 1/8 and 1/4),
//! and the estimate is `mean + 2 × deviation`. For a normal distribution
//! the mean deviation is ≈ 0.8 σ, so the estimate sits near the 95th
//! percentile: capacity is derived from what a heavy client costs, not an
//! average one, and it follows a workload that changes. Both numbers live
//! in one `AtomicU64` (two saturating `u32`s), updated by CAS.
//!
//! The budget is bookkeeping: it allocates nothing itself. Code that holds
//! a [`Permit`] promises to keep its allocations within the permit's bytes
//! (or to grow it with [`Permit::try_grow`]).
//!
//! With the `tower` feature, [`tower`](self::tower) admits HTTP requests
//! through a budget.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::size::Bytes;
use crate::{Error, Heap};

#[cfg(feature = "tower")]
pub mod tower;

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
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    /// The budget in bytes. Never changes.
    total: usize,
    /// Bytes held by live permits. Invariant: `in_use <= total`, kept by
    /// CAS in `try_take`; decreased only by `release`.
    in_use: AtomicUsize,
    peak_in_use: AtomicUsize,
    /// Live client permits (not reservations).
    clients: AtomicUsize,
    peak_clients: AtomicUsize,
    admitted: AtomicU64,
    refused: AtomicU64,
    waited: AtomicU64,
    /// True when the per-client cost is measured.
    measured: AtomicBool,
    estimator: Estimator,
    waiters: Waiters,
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
        let inner = Inner {
            total: bytes,
            in_use: AtomicUsize::new(0),
            peak_in_use: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            peak_clients: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            measured: AtomicBool::new(matches!(per_client, PerClient::Measured { .. })),
            estimator: Estimator::new(per_client.initial()),
            waiters: Waiters {
                queue: Mutex::new(VecDeque::new()),
                count: AtomicUsize::new(0),
            },
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

    /// Bytes not held by any permit.
    pub fn available(&self) -> usize {
        self.inner.total - self.inner.in_use.load(Ordering::Relaxed)
    }

    /// How many clients of `per_client_bytes` each fit in the budget
    /// (`total / per_client_bytes`; a cost of 0 counts as 1 byte).
    pub fn capacity(&self, per_client_bytes: usize) -> usize {
        self.inner.total / per_client_bytes.max(1)
    }

    /// The per-client cost in force: the declared bytes, or the running
    /// estimate (`mean + 2 × mean deviation` of measured usage).
    pub fn per_client(&self) -> usize {
        self.inner.estimator.estimate()
    }

    /// How many clients fit at the per-client cost in force.
    pub fn clients(&self) -> usize {
        self.capacity(self.per_client())
    }

    /// Admits a client of `bytes` if they fit, or returns `None` at once
    /// (and counts a refusal). The bytes return when the permit (and every
    /// clone of it) drops. Lock-free: one CAS loop on the bytes in use.
    ///
    /// This does not queue behind callers waiting in [`Budget::acquire`]:
    /// it is the shedding path, and takes whatever fits now.
    pub fn try_acquire(&self, bytes: usize) -> Option<Permit> {
        if self.inner.try_take(bytes) {
            Some(Permit::new(self.clone(), bytes, true, false))
        } else {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Reserves `bytes` for something that is not a client (connection
    /// buffers, a cache): they count in `in_use`, not in `admitted` or
    /// `clients`, and feed no measurement.
    pub fn try_reserve(&self, bytes: usize) -> Option<Permit> {
        if self.inner.try_take(bytes) {
            Some(Permit::new(self.clone(), bytes, false, false))
        } else {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Admits a client of `bytes`, waiting (in FIFO order) until they fit.
    /// The future resolves to [`Error::OutOfMemory`] at once if `bytes`
    /// exceeds the whole budget. Dropping the future gives up its place
    /// (and hands on bytes it was granted but did not take).
    ///
    /// The future is runtime-agnostic (std wakers only).
    pub fn acquire(&self, bytes: usize) -> Acquire {
        Acquire {
            budget: self.clone(),
            bytes,
            slot: None,
            reserve: false,
        }
    }

    /// Like [`Budget::acquire`], for a reservation (see
    /// [`Budget::try_reserve`]).
    pub fn reserve(&self, bytes: usize) -> Acquire {
        Acquire {
            budget: self.clone(),
            bytes,
            slot: None,
            reserve: true,
        }
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
            waiting: i.waiters.count.load(Ordering::Relaxed),
            per_client,
            measured: i.measured.load(Ordering::Relaxed),
            samples: i.estimator.samples.load(Ordering::Relaxed),
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
        return Err(Error::invalid(
            "budget",
            format_args!("{} (one client costs {})", Bytes(bytes), Bytes(cost)),
            format!(
                "a budget of at least one client ({}), or a smaller per-client cost",
                Bytes(cost)
            ),
        ));
    }
    Ok(())
}

/// Raises `peak` to `now` if that is higher. A plain load first: below
/// the peak (the steady state of a server) this costs no locked
/// instruction, where `fetch_max` always takes the cache line exclusively.
#[inline]
fn raise_peak(peak: &AtomicUsize, now: usize) {
    if now > peak.load(Ordering::Relaxed) {
        peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl Inner {
    /// Adds `bytes` to `in_use` if the result stays within `total`.
    fn try_take(&self, bytes: usize) -> bool {
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|&n| n <= self.total) else {
                return false;
            };
            // SeqCst pairs with the waiter count in `release` / `Acquire::poll`
            // (a Dekker-style handshake: see `release`).
            match self
                .in_use
                .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => {
                    raise_peak(&self.peak_in_use, next);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns `bytes` and hands them to waiters that fit.
    ///
    /// No lost wake-up: a waiter increments `waiters.count` and then retries
    /// `try_take` (under the queue lock); a release decrements `in_use` and
    /// then reads `waiters.count`, all SeqCst. Either the waiter's retry sees
    /// the freed bytes, or this read sees the waiter and dispatches after the
    /// waiter has queued itself (the lock orders them).
    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.in_use.fetch_sub(bytes, Ordering::SeqCst);
        debug_assert!(
            before >= bytes,
            "budget: released {bytes} bytes with only {before} in use"
        );
        if self.waiters.count.load(Ordering::SeqCst) > 0 {
            self.dispatch();
        }
    }

    /// Grants the bytes that fit to the waiters at the front of the queue,
    /// in order; stops at the first one that does not fit (strict FIFO, so
    /// a large waiter is not overtaken forever by small ones).
    fn dispatch(&self) {
        let mut queue = self.waiters.queue.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = queue.front() {
            if front.state.load(Ordering::Acquire) == CANCELLED {
                queue.pop_front();
                self.waiters.count.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            if !self.try_take(front.bytes) {
                break;
            }
            let slot = queue.pop_front().expect("front exists");
            self.waiters.count.fetch_sub(1, Ordering::SeqCst);
            if slot
                .state
                .compare_exchange(WAITING, GRANTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let waker = slot.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(w) = waker {
                    w.wake();
                }
            } else {
                // Cancelled between the check and the grant: give back.
                self.in_use.fetch_sub(slot.bytes, Ordering::SeqCst);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Permits
// ---------------------------------------------------------------------------

/// Bytes admitted from a [`Budget`]. A cheap handle: clones share the same
/// bytes, which return to the budget when the last clone drops (so a
/// request, its handler and its response body can each hold one).
#[derive(Clone)]
pub struct Permit {
    shared: Arc<PermitShared>,
}

struct PermitShared {
    budget: Budget,
    /// Bytes charged to the budget; changed only by `try_grow` (CAS'd into
    /// the budget first), returned in `drop`.
    charged: AtomicUsize,
    /// Bytes the client reported using (`record_usage`), fed to the
    /// estimator on drop when the budget measures.
    used: AtomicUsize,
    /// A client permit (counted in `clients` / `admitted`), or a
    /// reservation. Goes from false to true at most once (`admit`).
    client: AtomicBool,
}

impl Permit {
    fn new(budget: Budget, bytes: usize, client: bool, waited: bool) -> Permit {
        if client {
            let i = &budget.inner;
            i.admitted.fetch_add(1, Ordering::Relaxed);
            if waited {
                i.waited.fetch_add(1, Ordering::Relaxed);
            }
            let now = i.clients.fetch_add(1, Ordering::Relaxed) + 1;
            raise_peak(&i.peak_clients, now);
        }
        Permit {
            shared: Arc::new(PermitShared {
                budget,
                charged: AtomicUsize::new(bytes),
                used: AtomicUsize::new(0),
                client: AtomicBool::new(client),
            }),
        }
    }

    /// Turns a reservation into a client permit (counted in `admitted` and
    /// `clients`); no effect on a client permit. The tower layer reserves
    /// in `poll_ready` and admits in `call`, once the request is known.
    pub fn admit(&self) {
        if !self.shared.client.swap(true, Ordering::Relaxed) {
            let i = &self.shared.budget.inner;
            i.admitted.fetch_add(1, Ordering::Relaxed);
            let now = i.clients.fetch_add(1, Ordering::Relaxed) + 1;
            raise_peak(&i.peak_clients, now);
        }
    }

    /// Like [`Permit::try_grow`], without counting a refusal (for callers
    /// that will wait instead). Used by the tower layer.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn try_grow_quiet(&self, extra: usize) -> bool {
        if self.shared.budget.inner.try_take(extra) {
            self.shared.charged.fetch_add(extra, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.shared.charged.load(Ordering::Relaxed)
    }

    /// The budget the bytes came from.
    pub fn budget(&self) -> &Budget {
        &self.shared.budget
    }

    /// Takes `extra` more bytes if they fit now; `false` (and a refusal
    /// counted) if not. Never waits.
    pub fn try_grow(&self, extra: usize) -> bool {
        let inner = &self.shared.budget.inner;
        if inner.try_take(extra) {
            self.shared.charged.fetch_add(extra, Ordering::Relaxed);
            true
        } else {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Adds `bytes` to the usage this client reports. When the last clone
    /// drops, the total is one measurement of the per-client cost (if the
    /// budget measures it). Record what the client really held: request
    /// and response buffers, parsed data, its share of connection buffers.
    pub fn record_usage(&self, bytes: usize) {
        self.shared.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Whether the budget measures the per-client cost (so recorded usage
    /// is used). Callers whose measurement costs something (walking a
    /// parsed document) can skip it when this is false.
    #[inline]
    pub fn measuring(&self) -> bool {
        self.shared.budget.inner.measured.load(Ordering::Relaxed)
    }

    /// The usage recorded so far.
    pub fn used(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bytes", &self.bytes())
            .field("used", &self.used())
            .finish()
    }
}

impl Drop for PermitShared {
    fn drop(&mut self) {
        let inner = &self.budget.inner;
        if *self.client.get_mut() {
            inner.clients.fetch_sub(1, Ordering::Relaxed);
            let used = *self.used.get_mut();
            if used > 0 && inner.measured.load(Ordering::Relaxed) {
                inner.estimator.record(used);
            }
        }
        inner.release(*self.charged.get_mut());
    }
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

struct Waiters {
    /// Waiting callers in arrival order (cancelled ones removed lazily).
    queue: Mutex<VecDeque<Arc<WaitSlot>>>,
    /// Entries in `queue`, cancelled ones included. Read without the lock
    /// by `release` and by the fast path of `Acquire`.
    count: AtomicUsize,
}

const WAITING: u8 = 0;
const GRANTED: u8 = 1;
const TAKEN: u8 = 2;
const CANCELLED: u8 = 3;

/// One waiter. `state` goes WAITING → GRANTED (dispatch has taken the
/// bytes on its behalf) → TAKEN (the future made a permit of them), or
/// WAITING → CANCELLED (the future was dropped first).
struct WaitSlot {
    bytes: usize,
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl WaitSlot {
    /// Takes a grant made by dispatch (GRANTED → TAKEN); true if there was
    /// one.
    fn take_grant(&self) -> bool {
        self.state
            .compare_exchange(GRANTED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The future of [`Budget::acquire`]: resolves to a [`Permit`] once the
/// bytes fit.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    budget: Budget,
    bytes: usize,
    slot: Option<Arc<WaitSlot>>,
    reserve: bool,
}

impl Acquire {
    /// The bytes this future waits for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn permit(&self, waited: bool) -> Permit {
        Permit::new(self.budget.clone(), self.bytes, !self.reserve, waited)
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let inner = &this.budget.inner;
        if let Some(slot) = &this.slot {
            if slot.take_grant() {
                return Poll::Ready(Ok(this.permit(true)));
            }
            *slot.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // The grant may have come between the check and the store.
            if slot.take_grant() {
                return Poll::Ready(Ok(this.permit(true)));
            }
            return Poll::Pending;
        }
        if this.bytes > inner.total {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(Error::OutOfMemory {
                requested: this.bytes,
                limit: inner.total,
                in_use: inner.in_use.load(Ordering::Relaxed),
            }));
        }
        // Fast path, only when nobody queues (no overtaking waiters).
        if inner.waiters.count.load(Ordering::SeqCst) == 0 && inner.try_take(this.bytes) {
            return Poll::Ready(Ok(this.permit(false)));
        }
        let mut queue = inner
            .waiters
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        inner.waiters.count.fetch_add(1, Ordering::SeqCst);
        // Retry after announcing ourselves: see `Inner::release`. Only
        // when we would be first in line, to keep the order.
        if queue.is_empty() && inner.try_take(this.bytes) {
            inner.waiters.count.fetch_sub(1, Ordering::SeqCst);
            return Poll::Ready(Ok(this.permit(false)));
        }
        let slot = Arc::new(WaitSlot {
            bytes: this.bytes,
            state: AtomicU8::new(WAITING),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        queue.push_back(slot.clone());
        drop(queue);
        this.slot = Some(slot);
        // Bytes may have been freed while the queue was non-empty and its
        // front did not fit; a dispatch now serves whoever fits in order.
        inner.dispatch();
        if let Some(slot) = &this.slot {
            if slot.take_grant() {
                return Poll::Ready(Ok(this.permit(true)));
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let inner = &self.budget.inner;
        match slot
            .state
            .compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            // Still queued: it is removed lazily; a waiter behind it may
            // fit now that it no longer blocks the front.
            Ok(_) => inner.dispatch(),
            Err(GRANTED) => {
                // Granted but never taken: pass the bytes on.
                if slot
                    .state
                    .compare_exchange(GRANTED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    inner.release(slot.bytes);
                }
            }
            Err(_) => {}
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("bytes", &self.bytes)
            .field("queued", &self.slot.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// The per-client estimator
// ---------------------------------------------------------------------------

/// `mean` (high 32 bits) and mean deviation (low 32 bits), bytes, saturating
/// at 4 GiB − 1 per client.
struct Estimator {
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
    fn new(initial: usize) -> Estimator {
        Estimator {
            packed: AtomicU64::new(pack(initial as u64, 0)),
            samples: AtomicU64::new(0),
        }
    }

    fn reset(&self, initial: usize) {
        self.samples.store(0, Ordering::Relaxed);
        self.packed
            .store(pack(initial as u64, 0), Ordering::Relaxed);
    }

    fn estimate(&self) -> usize {
        let (mean, dev) = unpack(self.packed.load(Ordering::Relaxed));
        ((mean + 2 * dev) as usize).max(1)
    }

    /// Jacobson/Karels: `err = x − mean; mean += err/8; dev += (|err| − dev)/4`.
    /// The first sample replaces the initial guess (`mean = x, dev = x/4`).
    fn record(&self, sample: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

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
