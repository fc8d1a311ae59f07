//! [`Permit`]: bytes admitted from a budget, and [`Acquire`], the future
//! that waits for them.
//!
//! A permit is a cheap handle (an `Arc`): a request, its handler and its
//! response body can each hold a clone, and the bytes return when the last
//! one drops. Its client may record what it really used
//! ([`Permit::record_usage`]); on drop the total is one sample of the
//! per-client cost (see the estimator).
//!
//! Waiting never holds bytes while waiting for more: a permit that wants to
//! grow past what is free either fails ([`Permit::try_grow`]) or is given
//! back and the whole amount waited for in one piece, so waiters cannot
//! deadlock each other. A client that stops needing its place for a while
//! gives all of it back ([`Permit::suspend`]) and takes it again later
//! ([`Permit::try_resume`], or [`Permit::resume`], which waits holding
//! nothing).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use frostheap::Error;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};

use crate::budget::{raise_peak, Budget};

impl Budget {
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
}

/// Bytes admitted from a [`Budget`]. A cheap handle: clones share the same
/// bytes, which return to the budget when the last clone drops (so a
/// request, its handler and its response body can each hold one).
#[derive(Clone)]
pub struct Permit {
    shared: Arc<PermitShared>,
}

struct PermitShared {
    budget: Budget,
    /// Bytes charged to the budget; changed only by `try_grow` (taken from
    /// the budget first), returned in `drop`.
    charged: AtomicUsize,
    /// Semaphore granules behind `charged`, returned in `drop`.
    granules: AtomicUsize,
    /// Bytes the client reported using (`record_usage`), fed to the
    /// estimator on drop when the budget measures.
    used: AtomicUsize,
    /// A client permit (counted in `clients` / `admitted`), or a
    /// reservation. Goes from false to true at most once (`admit`).
    client: AtomicBool,
    /// Granted after waiting in the queue: a reservation that waited
    /// counts in `waited` when it is admitted.
    waited: bool,
    /// Suspended ([`Permit::suspend`]): it holds no bytes (until a resume
    /// takes them) and, a client, is not counted in `clients`. Written by
    /// `suspend` and the resumes, which the permit's one user calls in
    /// turn.
    suspended: AtomicBool,
}

impl Permit {
    pub(crate) fn new(
        budget: Budget,
        bytes: usize,
        granules: u32,
        client: bool,
        waited: bool,
    ) -> Permit {
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
                granules: AtomicUsize::new(granules as usize),
                used: AtomicUsize::new(0),
                client: AtomicBool::new(client),
                waited,
                suspended: AtomicBool::new(false),
            }),
        }
    }

    /// Turns a reservation into a client permit (counted in `admitted` and
    /// `clients`, and in `waited` if the reservation waited for its
    /// bytes); no effect on a client permit. The tower layer reserves in
    /// `poll_ready` and admits in `call`, once the request is known.
    pub fn admit(&self) {
        if !self.shared.client.swap(true, Ordering::Relaxed) {
            let i = &self.shared.budget.inner;
            i.admitted.fetch_add(1, Ordering::Relaxed);
            if self.shared.waited {
                i.waited.fetch_add(1, Ordering::Relaxed);
            }
            // A suspended permit is counted in `clients` when it resumes.
            if !self.is_suspended() {
                let now = i.clients.fetch_add(1, Ordering::Relaxed) + 1;
                raise_peak(&i.peak_clients, now);
            }
        }
    }

    /// Gives back every byte this permit holds, at once (to the waiters
    /// first), and, for a client permit, leaves `clients` until it
    /// resumes: for a client that has stopped needing its place for a
    /// while and must not keep it from others (`frostheap serve`'s
    /// request whose body arrives slowly, which keeps what it has sent in
    /// memory counted apart). Returns the bytes it held (0, and nothing
    /// done, if it is suspended already). The permit stays valid; its
    /// bytes come back with [`Permit::try_resume`] or [`Permit::resume`].
    /// A permit that drops suspended feeds no measurement: its client did
    /// not run to its end.
    ///
    /// ```
    /// use frostheap_budget::Budget;
    /// let budget = Budget::new(1 << 20);
    /// let permit = budget.try_acquire(600 << 10).expect("fits");
    /// assert_eq!(permit.suspend(), 600 << 10);
    /// assert_eq!((budget.stats().in_use, budget.stats().clients), (0, 0));
    /// let other = budget.try_acquire(600 << 10).expect("its place is free");
    /// assert!(!permit.try_resume(600 << 10), "taken meanwhile");
    /// drop(other);
    /// assert!(permit.try_resume(600 << 10));
    /// assert_eq!((budget.stats().in_use, budget.stats().clients), (600 << 10, 1));
    /// assert_eq!(budget.stats().admitted, 2, "a resume is no new admission");
    /// ```
    pub fn suspend(&self) -> usize {
        if self.shared.suspended.swap(true, Ordering::Relaxed) {
            return 0;
        }
        let held = self.bytes();
        self.shrink_to(0);
        if self.shared.client.load(Ordering::Relaxed) {
            let i = &self.shared.budget.inner;
            i.clients.fetch_sub(1, Ordering::Relaxed);
        }
        held
    }

    /// Whether the permit is suspended ([`Permit::suspend`]).
    pub fn is_suspended(&self) -> bool {
        self.shared.suspended.load(Ordering::Relaxed)
    }

    /// Takes the permit up to `bytes` again if they are free now (no
    /// waiting, no overtaking a waiter) and ends its suspension: a client
    /// counts in `clients` again (not in `admitted`: it was admitted
    /// once). False, a refusal counted and the permit still suspended, if
    /// they are not free. On a permit that is not suspended, the same as
    /// [`Permit::try_grow`] by what it holds less than `bytes`.
    pub fn try_resume(&self, bytes: usize) -> bool {
        let extra = bytes.saturating_sub(self.bytes());
        if extra > 0 && !self.try_grow(extra) {
            return false;
        }
        self.unsuspend();
        true
    }

    /// Like [`Permit::try_resume`], waiting (in FIFO order, counted in
    /// `waiting`) until the bytes fit. It waits holding nothing (what a
    /// suspended permit holds), so waiters cannot deadlock each other.
    /// Fails with [`Error::OutOfMemory`] at once if `bytes` exceeds the
    /// whole budget. Dropping the future gives up its place in the queue;
    /// the permit stays suspended.
    pub async fn resume(&self, bytes: usize) -> Result<(), Error> {
        let extra = bytes.saturating_sub(self.bytes());
        if extra > 0 {
            let more = self.shared.budget.reserve(extra).await?;
            // `more` is fresh and alone: its bytes become this permit's,
            // and it drops holding none.
            let s = &more.shared;
            let (charged, granules) = (
                s.charged.swap(0, Ordering::Relaxed),
                s.granules.swap(0, Ordering::Relaxed),
            );
            self.shared.charged.fetch_add(charged, Ordering::Relaxed);
            self.shared.granules.fetch_add(granules, Ordering::Relaxed);
        }
        self.unsuspend();
        Ok(())
    }

    /// Ends a suspension (if any): a client counts in `clients` again.
    fn unsuspend(&self) {
        if self.shared.suspended.swap(false, Ordering::Relaxed)
            && self.shared.client.load(Ordering::Relaxed)
        {
            let i = &self.shared.budget.inner;
            let now = i.clients.fetch_add(1, Ordering::Relaxed) + 1;
            raise_peak(&i.peak_clients, now);
        }
    }

    /// Like [`Permit::try_grow`], without counting a refusal (for callers
    /// that will wait instead). Used by the tower layer.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn try_grow_quiet(&self, extra: usize) -> bool {
        match self.shared.budget.inner.try_take(extra) {
            Some(granules) => {
                self.shared.charged.fetch_add(extra, Ordering::Relaxed);
                self.shared
                    .granules
                    .fetch_add(granules as usize, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether the bytes were granted after waiting in the queue (in
    /// [`Budget::acquire`], or as a reservation that waited and was then
    /// admitted: the tower layer's wait mode). A server can check, before
    /// it runs a request that waited, that its client is still there.
    pub fn waited(&self) -> bool {
        self.shared.waited
    }

    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.shared.charged.load(Ordering::Relaxed)
    }

    /// The budget the bytes came from.
    pub fn budget(&self) -> &Budget {
        &self.shared.budget
    }

    /// Takes `extra` more bytes if they are free now; `false` (and a
    /// refusal counted) if not. Never waits.
    pub fn try_grow(&self, extra: usize) -> bool {
        let grown = self.try_grow_quiet(extra);
        if !grown {
            self.shared
                .budget
                .inner
                .refused
                .fetch_add(1, Ordering::Relaxed);
        }
        grown
    }

    /// Gives back what this permit holds past `bytes` (nothing if it holds
    /// no more): the bytes return to the budget at once, to the waiters
    /// first. For a charge taken ahead of use that turns out not to be
    /// used yet: a request body declared large that arrives slowly holds
    /// what has arrived, and grows again with [`Permit::try_grow`].
    pub fn shrink_to(&self, bytes: usize) {
        let charged = self.bytes();
        if bytes >= charged {
            return;
        }
        let inner = &self.shared.budget.inner;
        // The granules that cover `bytes` (fewer than those held: `bytes`
        // is less than the charge, itself within the budget).
        let keep = inner.granules(bytes).map_or(0, |g| g as usize);
        let held = self.shared.granules.load(Ordering::Relaxed);
        let give = held.saturating_sub(keep);
        self.shared
            .charged
            .fetch_sub(charged - bytes, Ordering::Relaxed);
        self.shared.granules.fetch_sub(give, Ordering::Relaxed);
        inner.release(charged - bytes, give);
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
        if *self.client.get_mut() && !*self.suspended.get_mut() {
            inner.clients.fetch_sub(1, Ordering::Relaxed);
            let used = *self.used.get_mut();
            if used > 0 && inner.measured.load(Ordering::Relaxed) {
                inner.estimator.record(used);
            }
        }
        inner.release(*self.charged.get_mut(), *self.granules.get_mut());
    }
}

type SemaphoreWait =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send + Sync>>;

/// The future of [`Budget::acquire`]: resolves to a [`Permit`] once the
/// bytes fit.
#[must_use = "futures do nothing unless polled"]
pub struct Acquire {
    budget: Budget,
    bytes: usize,
    reserve: bool,
    /// The place in the semaphore's queue, once the bytes were not free at
    /// the first poll (boxed: tokio's future borrows nothing but is not
    /// nameable).
    wait: Option<SemaphoreWait>,
    /// The caller waited already (for a reservation it gave back to wait
    /// for more): the permit counts as waited for even if it is granted
    /// at once.
    waited_before: bool,
}

impl Acquire {
    pub(crate) fn new(budget: Budget, bytes: usize, reserve: bool) -> Acquire {
        Acquire {
            budget,
            bytes,
            reserve,
            wait: None,
            waited_before: false,
        }
    }

    /// Marks the caller as having waited already (see `waited_before`).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn after_waiting(mut self, waited: bool) -> Acquire {
        self.waited_before = waited;
        self
    }

    /// The bytes this future waits for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn permit(&self, granules: u32, waited: bool) -> Permit {
        Permit::new(
            self.budget.clone(),
            self.bytes,
            granules,
            !self.reserve,
            waited || self.waited_before,
        )
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let inner = &this.budget.inner;
        if this.wait.is_none() {
            let granules = match inner.granules(this.bytes) {
                Some(g) if this.bytes <= inner.total => g,
                _ => {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    let in_use = inner.in_use.load(Ordering::Relaxed);
                    return Poll::Ready(Err(Error::OutOfMemory {
                        requested: this.bytes,
                        limit: inner.total,
                        in_use,
                        committed: in_use,
                        refused_by: frostheap::RefusedBy::Budget,
                    }));
                }
            };
            if let Some(granules) = inner.try_take(this.bytes) {
                return Poll::Ready(Ok(this.permit(granules, false)));
            }
            inner.waiting.fetch_add(1, Ordering::Relaxed);
            this.wait = Some(Box::pin(
                inner.semaphore.clone().acquire_many_owned(granules),
            ));
        }
        let wait = this.wait.as_mut().expect("queued");
        match wait.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.wait = None;
                inner.waiting.fetch_sub(1, Ordering::Relaxed);
                let permit = result.expect("a budget's semaphore is never closed");
                let granules = permit.num_permits() as u32;
                permit.forget();
                inner.charge(this.bytes);
                Poll::Ready(Ok(this.permit(granules, true)))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // tokio's future gives back what was set aside for it; only the
        // count is ours.
        if self.wait.take().is_some() {
            self.budget.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("bytes", &self.bytes)
            .field("queued", &self.wait.is_some())
            .finish()
    }
}
