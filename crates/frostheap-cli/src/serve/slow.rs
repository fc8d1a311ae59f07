//! The slow-body pool: requests whose body is still arriving
//! `--body-grace` (1 s) after their head, kept apart from the clients the
//! budget admits, in memory of their own (`--slow-memory`).
//!
//! A request is admitted from its head and charged what its head declares
//! (`endpoints.rs`'s `request_cost`, at least the per-client cost: a
//! client place). A body that keeps arriving past the grace gives all of
//! that back ([`Permit::suspend`]): it holds no client place while it
//! trickles in, only what it has sent — its connection and head
//! (`MIN_CHARGE`) and its body's buffer — charged here, growing with
//! what comes. Once its body is whole it takes its place again (the
//! bytes its head was admitted with, or more if its buffer grew past
//! them) before its handler runs: at once or 503 in `--overload shed`, in
//! the queue in `--overload wait`, where it waits holding no client place
//! (its bytes here stay charged: they are the body it sent). A body the
//! pool cannot hold, when it turns slow or as it grows, is answered 503
//! ("too many request bodies arriving slowly") and its connection closed
//! (a lingering close): slow senders compete with each other for this
//! memory, never with prompt clients for theirs. The body's deadlines
//! still hold (`--body-timeout`, `--body-min-rate`, `--body-max-time`):
//! a slow body stays here a minute at most by default.
//!
//! Until 2026-12-06 a body past the grace kept its client place (the
//! per-client cost, at least) until it ended, for up to `--body-max-time`:
//! 16 senders trickling a byte every 100 ms into a server of 8 client
//! places held all of them, and of 200 prompt requests made meanwhile all
//! 200 got 503. The pool is memory outside `--max-memory`, counted in the
//! memory bound like the gate's connections: by default a sixteenth of
//! the budget, and at least what one body of `--max-body` needs while its
//! buffer doubles (twice `--max-body`, and its connection).
//!
//! **Under pressure.** A slow sender holds a place for the grace before it
//! moves here, so slow senders that keep coming — a new one as another is
//! refused — could still hold every place: 16 new ones a second took the
//! places of 196 of 200 prompt requests made 10 ms apart. So while the
//! server refuses (`shed`) or queues (`wait`) a request for want of a
//! place, the bodies still arriving have their grace cut to a tenth (100
//! ms by default; `endpoints.rs`'s `PRESSED_GRACE_DIVISOR`): then 3 of the
//! 200 got 503. Senders that come faster still (80 a second: 118 of 200)
//! need what the gate needs against an attacker who reconnects as fast as
//! they are dropped: per-source limits in front of the server
//! (`bench/slow-senders.py` for all these figures, 2026-12-06).
//!
//! The gate (`conn.rs`) bounds connections by count, at 24 KiB each, and
//! makes room by evicting its oldest waiters; a slow body holds up to
//! `--max-body`, so the pool is bounded by bytes, and it evicts no one: a
//! body that has kept the minimum rate keeps arriving, and a newcomer
//! that finds the pool full is the one refused.
//!
//! The bottom of the serve module with `state.rs`, which holds the pool:
//! it imports none of its siblings.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use frostheap_budget::{Budget, PerClient, Permit};

/// The pool: its memory (`--slow-memory`, as a [`Budget`] whose permits
/// are reservations, never clients) and its counts.
pub(super) struct SlowBodies {
    budget: Budget,
    /// Requests in the pool now, and the most at once.
    now: AtomicUsize,
    peak: AtomicUsize,
    /// Requests that entered it, and those answered 503 because it could
    /// not hold them.
    entered: AtomicU64,
    shed: AtomicU64,
}

/// The pool's numbers (`slow_*` in `/stats`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SlowStats {
    pub(super) bodies: usize,
    pub(super) peak_bodies: usize,
    pub(super) entered: u64,
    pub(super) shed: u64,
    pub(super) in_use: usize,
    pub(super) memory: usize,
}

impl SlowBodies {
    /// A pool of `bytes`, at least `least` (what one slow request holds
    /// with no body yet: [`MIN_CHARGE`], checked at start).
    ///
    /// [`MIN_CHARGE`]: super::state::MIN_CHARGE
    pub(super) fn new(bytes: usize, least: usize) -> SlowBodies {
        let budget = Budget::with_per_client(bytes, PerClient::Declared(least))
            .expect("--slow-memory is checked at start to hold one request");
        SlowBodies {
            budget,
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            entered: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        }
    }

    /// A place for a request whose body turned slow, holding `held` bytes
    /// (its least charge and its buffer so far); `None`, counted as shed,
    /// if the pool cannot hold them now.
    pub(super) fn enter(&self, held: usize) -> Option<SlowBody<'_>> {
        let Some(permit) = self.budget.try_reserve(held) else {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.entered.fetch_add(1, Ordering::Relaxed);
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Some(SlowBody { pool: self, permit })
    }

    pub(super) fn stats(&self) -> SlowStats {
        let b = self.budget.stats();
        SlowStats {
            bodies: self.now.load(Ordering::Relaxed),
            peak_bodies: self.peak.load(Ordering::Relaxed),
            entered: self.entered.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            in_use: b.in_use,
            memory: b.budget,
        }
    }
}

/// A request's place in the pool: the bytes its slow body holds, given
/// back when it drops.
pub(super) struct SlowBody<'p> {
    pool: &'p SlowBodies,
    permit: Permit,
}

impl SlowBody<'_> {
    /// Makes the place hold `held` bytes (it grows before the buffer
    /// does); false, counted as shed, if the pool cannot hold them now.
    pub(super) fn cover(&self, held: usize) -> bool {
        let more = held.saturating_sub(self.permit.bytes());
        if more == 0 || self.permit.try_grow(more) {
            return true;
        }
        self.pool.shed.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl Drop for SlowBody<'_> {
    fn drop(&mut self) {
        self.pool.now.fetch_sub(1, Ordering::Relaxed);
    }
}
