//! The connection gate: connections that have no admitted request — still
//! sending their headers, idle between keep-alive requests — counted apart
//! from the clients a [`Budget`](crate::Budget) admits, with a small budget
//! of their own.
//!
//! A server charges a client's memory when its request is admitted. Before
//! that, a connection costs its buffers and its task but no client place;
//! if nothing bounded such connections, 2,000 clients sending one header
//! byte a second would hold the server's memory (and, had they held client
//! places, all of its capacity), and a burst of 2,560 clients would each
//! hold a parser's buffers before the budget could refuse them. The gate
//! holds at most `capacity` of them. When it is full:
//!
//! - a newcomer whose request head has all arrived ([`Waiting::Ready`])
//!   takes the place of the oldest waiter still sending its head
//!   ([`Waiting::Head`]), however young: that one is slower, a
//!   slow-header attacker most likely; failing that, of the oldest idle
//!   keep-alive connection ([`Waiting::Idle`]) that has waited `grace`;
//! - any other newcomer takes the place of the oldest waiter that is not
//!   ready if it has waited `grace` (a client that sends its request at
//!   once spends microseconds here);
//! - otherwise (a burst of ready newcomers) the newcomer is refused.
//!
//! Ready waiters are never evicted: they are about to be served. An idle
//! keep-alive connection is evicted only after `grace`, because its client
//! may be sending its next request just as the server closes it (the race
//! every keep-alive timeout has): a young one is likelier to be in use.
//!
//! The server should tell every connection it drops why (a 503 with
//! `Retry-After`), which is its business, not the gate's.
//!
//! This is Envoy's overload action "reduce timeouts" taken to its end: the
//! longer the gate is full, the shorter the wait it allows. Timeouts (for
//! headers, idle keep-alive) still bound every connection on their own.
//! What the gate cannot do is tell a client apart from an attacker who
//! reconnects as fast as it is dropped: that needs per-source limits in
//! front of the server.
//!
//! ```
//! use std::time::Duration;
//! use frostheap_budget::gate::{ConnectionGate, Entered, Waiting};
//! let gate = ConnectionGate::new(2, Duration::ZERO);
//! let gate = ConnectionGate::new(2, Duration::from_secs(1));
//! let slow = gate.enter(Waiting::Head).ticket().unwrap();
//! let _served = gate.enter(Waiting::Ready).ticket().unwrap();
//! // Full: a newcomer whose request has arrived takes the slow one's place,
//! // and the slow one is told to go.
//! let Entered::Evicting(_c) = gate.enter(Waiting::Ready) else { panic!() };
//! assert!(slow.is_evicted());
//! // Full of ready connections: refused.
//! assert!(matches!(gate.enter(Waiting::Ready), Entered::Refused));
//! assert_eq!((gate.stats().evicted, gate.stats().refused), (1, 1));
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A bounded set of waiting connections; cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct ConnectionGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    capacity: usize,
    grace: Duration,
    /// Entries in arrival order; entries whose ticket dropped are removed
    /// lazily (`gone`). Invariant: the entries not gone number `live`.
    queue: Mutex<VecDeque<Arc<Entry>>>,
    live: AtomicUsize,
    peak: AtomicUsize,
    admitted: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

struct Entry {
    since: Instant,
    /// A `Waiting`, as its discriminant.
    kind: AtomicU8,
    /// Set by the ticket's drop or by eviction, under the queue lock; the
    /// one that sets it first takes the entry out of `live`.
    gone: AtomicBool,
    evicted: AtomicBool,
    notify: Arc<Notify>,
}

/// Why a connection waits at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Waiting {
    /// Its request head has not all arrived.
    Head,
    /// Its request head has arrived; it waits to be admitted or refused.
    Ready,
    /// A kept-alive connection between two requests.
    Idle,
}

/// What [`ConnectionGate::enter`] decided.
#[must_use]
pub enum Entered {
    /// A place was free.
    Admitted(Ticket),
    /// The gate was full: the oldest waiter is told to go
    /// ([`Ticket::evicted`]) and the newcomer has its place.
    Evicting(Ticket),
    /// The gate was full of connections younger than the grace period.
    Refused,
}

impl Entered {
    /// The ticket, if the connection may wait.
    pub fn ticket(self) -> Option<Ticket> {
        match self {
            Entered::Admitted(t) | Entered::Evicting(t) => Some(t),
            Entered::Refused => None,
        }
    }
}

/// The gate's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateStats {
    /// The most connections that may wait at once.
    pub capacity: usize,
    /// Connections waiting now.
    pub waiting: usize,
    /// The most that waited at once.
    pub peak: usize,
    /// Tickets ever given.
    pub admitted: u64,
    /// Waiters told to go to make room for a newcomer.
    pub evicted: u64,
    /// Newcomers refused because the gate was full of young waiters.
    pub refused: u64,
}

impl ConnectionGate {
    /// A gate for at most `capacity` waiting connections (at least 1);
    /// past it, a waiter older than `grace` makes room for a newcomer.
    pub fn new(capacity: usize, grace: Duration) -> ConnectionGate {
        ConnectionGate {
            inner: Arc::new(GateInner {
                capacity: capacity.max(1),
                grace,
                queue: Mutex::new(VecDeque::new()),
                live: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                admitted: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A place for a connection that starts (or goes back to) waiting.
    pub fn enter(&self, kind: Waiting) -> Entered {
        self.enter_notifying(kind, Arc::new(Notify::new()))
    }

    /// Like [`ConnectionGate::enter`], with the `Notify` an eviction
    /// signals (`notify_one`): a connection that waits at the gate several
    /// times (between keep-alive requests) can listen on one.
    ///
    /// A full gate makes room as the [module documentation](self) says.
    pub fn enter_notifying(&self, kind: Waiting, notify: Arc<Notify>) -> Entered {
        let g = &self.inner;
        let now = Instant::now();
        let mut queue = g.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicting = false;
        if g.live.load(Ordering::Relaxed) >= g.capacity {
            while queue
                .front()
                .is_some_and(|e| e.gone.load(Ordering::Relaxed))
            {
                queue.pop_front();
            }
            let waited = |e: &Entry| now.duration_since(e.since) >= g.grace;
            let live = |e: &Entry, k: Waiting| {
                !e.gone.load(Ordering::Relaxed) && e.kind.load(Ordering::Relaxed) == k as u8
            };
            let victim = match kind {
                Waiting::Ready => queue
                    .iter()
                    .position(|e| live(e, Waiting::Head))
                    .or_else(|| {
                        queue
                            .iter()
                            .position(|e| live(e, Waiting::Idle) && waited(e))
                    }),
                Waiting::Head | Waiting::Idle => queue
                    .iter()
                    .position(|e| (live(e, Waiting::Head) || live(e, Waiting::Idle)) && waited(e)),
            };
            let Some(victim) = victim else {
                g.refused.fetch_add(1, Ordering::Relaxed);
                return Entered::Refused;
            };
            let oldest = queue.remove(victim).expect("found");
            oldest.gone.store(true, Ordering::Relaxed);
            oldest.evicted.store(true, Ordering::Release);
            oldest.notify.notify_one();
            g.live.fetch_sub(1, Ordering::Relaxed);
            g.evicted.fetch_add(1, Ordering::Relaxed);
            evicting = true;
        }
        // Entries of dropped tickets in the middle of the queue: drop them
        // once they outnumber the live ones.
        if queue.len() > 2 * g.capacity + 64 {
            queue.retain(|e| !e.gone.load(Ordering::Relaxed));
        }
        let entry = Arc::new(Entry {
            since: now,
            kind: AtomicU8::new(kind as u8),
            gone: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            notify,
        });
        queue.push_back(entry.clone());
        let live = g.live.fetch_add(1, Ordering::Relaxed) + 1;
        drop(queue);
        crate::budget::raise_peak(&g.peak, live);
        g.admitted.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket {
            gate: self.inner.clone(),
            entry,
        };
        if evicting {
            Entered::Evicting(ticket)
        } else {
            Entered::Admitted(ticket)
        }
    }

    /// The gate's numbers now.
    pub fn stats(&self) -> GateStats {
        let g = &self.inner;
        GateStats {
            capacity: g.capacity,
            waiting: g.live.load(Ordering::Relaxed),
            peak: g.peak.load(Ordering::Relaxed),
            admitted: g.admitted.load(Ordering::Relaxed),
            evicted: g.evicted.load(Ordering::Relaxed),
            refused: g.refused.load(Ordering::Relaxed),
        }
    }
}

/// A waiting connection's place; given back on drop.
pub struct Ticket {
    gate: Arc<GateInner>,
    entry: Arc<Entry>,
}

impl Ticket {
    /// Whether the gate told this connection to go.
    pub fn is_evicted(&self) -> bool {
        self.entry.evicted.load(Ordering::Acquire)
    }

    /// Resolves when the gate tells this connection to go (never, if it is
    /// not evicted). Cancel-safe.
    pub async fn evicted(&self) {
        loop {
            let notified = self.entry.notify.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection's request head as arrived: it is no longer
    /// evicted to make room.
    pub fn set_ready(&self) {
        self.entry
            .kind
            .store(Waiting::Ready as u8, Ordering::Relaxed);
    }

    /// How long this connection has waited.
    pub fn waited(&self) -> Duration {
        self.entry.since.elapsed()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Under the lock, so that an eviction and this drop do not both
        // take the entry out of `live`.
        let _queue = self.gate.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !self.entry.gone.swap(true, Ordering::Relaxed) {
            self.gate.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_refuses_while_its_waiters_are_young_and_evicts_the_oldest_after() {
        let gate = ConnectionGate::new(2, Duration::from_millis(50));
        let a = gate.enter(Waiting::Head).ticket().unwrap();
        let b = gate.enter(Waiting::Head).ticket().unwrap();
        assert!(matches!(gate.enter(Waiting::Head), Entered::Refused));
        std::thread::sleep(Duration::from_millis(60));
        let Entered::Evicting(c) = gate.enter(Waiting::Head) else {
            panic!("the oldest waiter should make room")
        };
        assert!(a.is_evicted() && !b.is_evicted() && !c.is_evicted());
        let s = gate.stats();
        assert_eq!(
            (s.waiting, s.peak, s.evicted, s.refused, s.admitted),
            (2, 2, 1, 1, 3)
        );
        drop(a); // evicted: already out of the count
        assert_eq!(gate.stats().waiting, 2);
        drop(b);
        assert_eq!(gate.stats().waiting, 1);
        assert!(matches!(gate.enter(Waiting::Head), Entered::Admitted(_)));
        drop(c);
        assert_eq!(gate.stats().waiting, 0);
    }

    #[test]
    fn a_ready_newcomer_evicts_the_oldest_slow_waiter_and_never_a_ready_one() {
        let gate = ConnectionGate::new(3, Duration::from_secs(60));
        let ready = gate.enter(Waiting::Ready).ticket().unwrap();
        let slow = gate.enter(Waiting::Head).ticket().unwrap();
        let later = gate.enter(Waiting::Head).ticket().unwrap();
        assert!(
            matches!(gate.enter(Waiting::Head), Entered::Refused),
            "within grace"
        );
        let Entered::Evicting(_n) = gate.enter(Waiting::Ready) else {
            panic!("a ready newcomer makes room")
        };
        assert!(!ready.is_evicted() && slow.is_evicted() && !later.is_evicted());
        later.set_ready();
        assert!(
            matches!(gate.enter(Waiting::Ready), Entered::Refused),
            "all ready"
        );
    }

    #[test]
    fn dropped_tickets_do_not_pile_up() {
        let gate = ConnectionGate::new(4, Duration::ZERO);
        let keep = gate.enter(Waiting::Head).ticket().unwrap();
        for _ in 0..10_000 {
            drop(gate.enter(Waiting::Head).ticket().unwrap());
        }
        assert!(gate.inner.queue.lock().unwrap().len() <= 2 * 4 + 65);
        assert_eq!(gate.stats().waiting, 1);
        assert!(!keep.is_evicted());
    }

    #[test]
    fn eviction_wakes_the_waiter() {
        let gate = ConnectionGate::new(1, Duration::ZERO);
        let a = gate.enter(Waiting::Head).ticket().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _b = gate.enter(Waiting::Head).ticket().unwrap();
        rt.block_on(a.evicted());
        assert!(a.is_evicted());
    }
}
