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
//! **One ticket per connection.** A connection enters once, when it is
//! accepted, and keeps its [`Ticket`] until it closes: its request being
//! admitted gives the place back ([`Ticket::leave`]), and the idle wait
//! after a keep-alive response takes one again ([`Ticket::wait_again`]).
//! Both are a compare-and-swap on the ticket's state and an increment or
//! decrement of the count of waiters — no lock and no allocation; only a
//! newcomer (to add its entry) and a full gate (to choose whom to evict)
//! take the gate's lock. The "oldest" waiter is the one that started
//! waiting first (a connection waiting again is as young as its idle
//! wait). Entering and leaving a locked queue on every keep-alive request
//! instead cost about 370 instructions, two lock round trips and an
//! allocation per request (callgrind, `frostheap serve` on one thread).
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

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
    /// The origin of the entries' `since`.
    epoch: Instant,
    /// One entry per ticket alive, in no particular order, plus entries of
    /// dropped tickets (`Gone`) not yet swept out. Only a newcomer (to push
    /// its entry) and an eviction (to choose a victim) take the lock.
    queue: Mutex<Vec<Arc<Entry>>>,
    /// Entries in a waiting state (`Head`, `Ready`, `Idle`): at most
    /// `capacity`. A place is taken by a lock-free increment below the
    /// capacity, or handed over by an evicted entry; it is given back by
    /// the decrement of the transition that leaves the waiting states.
    live: AtomicUsize,
    /// `Gone` entries still in `queue`.
    gone: AtomicUsize,
    peak: AtomicUsize,
    admitted: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

/// An entry's state (`Entry::state`). The first three are the waiting
/// states, counted in `live`.
const HEAD: u8 = Waiting::Head as u8;
const READY: u8 = Waiting::Ready as u8;
const IDLE: u8 = Waiting::Idle as u8;
/// The connection has an admitted request: it holds its ticket but no
/// place.
const AWAY: u8 = 3;
/// Told to go; its place went to the newcomer that evicted it.
const EVICTED: u8 = 4;
/// The ticket dropped.
const GONE: u8 = 5;

fn waiting(state: u8) -> bool {
    state <= IDLE
}

struct Entry {
    /// When the entry last started waiting: nanoseconds after the gate's
    /// epoch.
    since: AtomicU64,
    state: AtomicU8,
    notify: Arc<Notify>,
}

/// Why a connection waits at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Waiting {
    /// Its request head has not all arrived.
    Head = 0,
    /// Its request head has arrived; it waits to be admitted or refused.
    Ready = 1,
    /// A kept-alive connection between two requests.
    Idle = 2,
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
    /// Places ever given: tickets, and tickets waiting again
    /// ([`Ticket::wait_again`]).
    pub admitted: u64,
    /// Waiters told to go to make room for a newcomer.
    pub evicted: u64,
    /// Newcomers (and connections asking to wait again) refused because
    /// the gate was full of young waiters.
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
                epoch: Instant::now(),
                queue: Mutex::new(Vec::new()),
                live: AtomicUsize::new(0),
                gone: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                admitted: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A place for a connection that starts waiting.
    pub fn enter(&self, kind: Waiting) -> Entered {
        self.enter_notifying(kind, Arc::new(Notify::new()))
    }

    /// Like [`ConnectionGate::enter`], with the `Notify` an eviction
    /// signals (`notify_one`), so that the connection can listen on one it
    /// already has.
    ///
    /// A full gate makes room as the [module documentation](self) says.
    pub fn enter_notifying(&self, kind: Waiting, notify: Arc<Notify>) -> Entered {
        let g = &self.inner;
        let now = g.now();
        let entry = Arc::new(Entry {
            since: AtomicU64::new(now),
            state: AtomicU8::new(kind as u8),
            notify,
        });
        let mut queue = g.lock();
        let evicting = if g.take_place() {
            false
        } else if g.evict(&queue, kind, now) {
            true
        } else {
            g.refused.fetch_add(1, Ordering::Relaxed);
            return Entered::Refused;
        };
        g.sweep(&mut queue);
        queue.push(entry.clone());
        drop(queue);
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

impl GateInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Takes a free place, if there is one (no lock).
    fn take_place(&self) -> bool {
        let taken = self
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l < self.capacity).then_some(l + 1)
            });
        match taken {
            Ok(before) => {
                crate::budget::raise_peak(&self.peak, before + 1);
                true
            }
            Err(_) => false,
        }
    }

    /// Evicts a waiter to make room for a newcomer of `kind` (the rules of
    /// the module documentation); its place passes to the newcomer (`live`
    /// does not change). False if no waiter may be evicted. Called with
    /// the queue locked.
    fn evict(&self, queue: &[Arc<Entry>], kind: Waiting, now: u64) -> bool {
        let grace = self.grace.as_nanos().min(u64::MAX as u128) as u64;
        let waited = |e: &Entry| now.saturating_sub(e.since.load(Ordering::Relaxed)) >= grace;
        // The oldest entry in `states` (that has waited `grace`, if `aged`).
        let oldest = |states: &[u8], aged: bool| {
            queue
                .iter()
                .filter(|e| states.contains(&e.state.load(Ordering::Relaxed)))
                .filter(|e| !aged || waited(e))
                .min_by_key(|e| e.since.load(Ordering::Relaxed))
        };
        loop {
            let victim = match kind {
                Waiting::Ready => oldest(&[HEAD], false)
                    .map(|e| (e, HEAD))
                    .or_else(|| oldest(&[IDLE], true).map(|e| (e, IDLE))),
                Waiting::Head | Waiting::Idle => {
                    oldest(&[HEAD, IDLE], true).map(|e| (e, e.state.load(Ordering::Relaxed)))
                }
            };
            let Some((victim, state)) = victim else {
                return false;
            };
            // The victim's connection may have moved on meanwhile (its head
            // arrived, its request was admitted): then look again.
            if waiting(state)
                && victim
                    .state
                    .compare_exchange(state, EVICTED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                victim.notify.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
    }

    /// Drops the entries of dropped tickets once they are half the queue
    /// (so the queue holds at most twice the tickets alive, plus 64).
    fn sweep(&self, queue: &mut Vec<Arc<Entry>>) {
        let gone = self.gone.load(Ordering::Relaxed);
        if gone > 32 && 2 * gone > queue.len() {
            let before = queue.len();
            queue.retain(|e| e.state.load(Ordering::Relaxed) != GONE);
            self.gone.fetch_sub(before - queue.len(), Ordering::Relaxed);
        }
    }
}

/// A connection's place at the gate, kept for the connection's life: it
/// leaves the waiting connections when its request is admitted
/// ([`Ticket::leave`]) and joins them again between keep-alive requests
/// ([`Ticket::wait_again`]). Given back on drop.
pub struct Ticket {
    gate: Arc<GateInner>,
    entry: Arc<Entry>,
}

impl Ticket {
    /// Whether the gate told this connection to go.
    pub fn is_evicted(&self) -> bool {
        self.entry.state.load(Ordering::Acquire) == EVICTED
    }

    /// Whether the connection holds a place now (it waits: its head is
    /// arriving, or it is idle, or ready and not yet admitted).
    pub fn is_waiting(&self) -> bool {
        waiting(self.entry.state.load(Ordering::Relaxed))
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
    /// evicted to make room. No effect unless it waits.
    pub fn set_ready(&self) {
        let state = &self.entry.state;
        let mut now = state.load(Ordering::Relaxed);
        while now == HEAD || now == IDLE {
            match state.compare_exchange_weak(now, READY, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => now = actual,
            }
        }
    }

    /// The connection's request was admitted (the budget charges it now):
    /// its place goes back, without taking the gate's lock. No effect
    /// unless it waits.
    pub fn leave(&self) {
        if self.settle(AWAY) {
            self.gate.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The connection waits again as `kind` (between keep-alive requests):
    /// true if it has a place — a free one, taken without the gate's lock,
    /// or, with the gate full, one a waiter is evicted for (the rules of
    /// the [module documentation](self)) — false if the gate is full of
    /// younger waiters or the connection was evicted (it should close).
    /// A connection that still waits changes its kind and its age.
    pub fn wait_again(&self, kind: Waiting) -> bool {
        let g = &self.gate;
        let e = &self.entry;
        let state = e.state.load(Ordering::Acquire);
        if waiting(state) {
            e.since.store(g.now(), Ordering::Relaxed);
            return e
                .state
                .compare_exchange(state, kind as u8, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        }
        if state != AWAY {
            return false;
        }
        let now = g.now();
        let placed = g.take_place() || {
            let queue = g.lock();
            g.evict(&queue, kind, now)
        };
        if !placed {
            g.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        e.since.store(now, Ordering::Relaxed);
        // Only this ticket's owner moves an entry out of AWAY.
        e.state.store(kind as u8, Ordering::Release);
        g.admitted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How long this connection has waited (since it last started to).
    pub fn waited(&self) -> Duration {
        let since = Duration::from_nanos(self.entry.since.load(Ordering::Relaxed));
        self.gate.epoch.elapsed().saturating_sub(since)
    }

    /// Moves the entry from a waiting state to `to`; true if it was
    /// waiting (its place is then the caller's to give back).
    fn settle(&self, to: u8) -> bool {
        let state = &self.entry.state;
        let mut now = state.load(Ordering::Relaxed);
        while waiting(now) {
            match state.compare_exchange_weak(now, to, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
        false
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Counted before the state says so: a sweep subtracts only entries
        // it finds `GONE`, so the count never falls below their number.
        self.gate.gone.fetch_add(1, Ordering::Relaxed);
        if self.settle(GONE) {
            self.gate.live.fetch_sub(1, Ordering::Relaxed);
        } else {
            // Away or evicted: no place held, and no one else moves it.
            self.entry.state.store(GONE, Ordering::Release);
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
        let len = gate.inner.queue.lock().unwrap().len();
        assert!(len <= 2 + 33, "{len} entries for one ticket alive");
        assert_eq!(gate.stats().waiting, 1);
        assert!(!keep.is_evicted());
    }

    #[test]
    fn a_ticket_leaves_when_admitted_and_waits_again_between_requests() {
        let gate = ConnectionGate::new(2, Duration::from_secs(60));
        let a = gate.enter(Waiting::Head).ticket().unwrap();
        let b = gate.enter(Waiting::Head).ticket().unwrap();
        a.set_ready();
        a.leave();
        assert!(!a.is_waiting());
        assert_eq!(
            gate.stats().waiting,
            1,
            "an admitted request holds no place"
        );
        // Its place is free for a newcomer...
        let c = gate.enter(Waiting::Ready).ticket().unwrap();
        // ...so the idle wait after its response finds the gate full of
        // young waiters: refused (the connection closes after its answer).
        assert!(!a.wait_again(Waiting::Idle));
        assert!(!a.is_waiting() && !a.is_evicted());
        c.leave();
        assert!(a.wait_again(Waiting::Idle));
        assert!(a.is_waiting());
        let s = gate.stats();
        assert_eq!((s.waiting, s.admitted, s.refused), (2, 4, 1));
        // Leaving twice gives back one place; an idle wait again only ages.
        a.leave();
        a.leave();
        assert_eq!(gate.stats().waiting, 1);
        assert!(b.wait_again(Waiting::Idle));
        assert_eq!(gate.stats().waiting, 1);
        drop((a, b, c));
        assert_eq!(gate.stats().waiting, 0);
    }

    #[test]
    fn a_full_gate_evicts_for_a_connection_waiting_again_and_an_evicted_one_stays_out() {
        let gate = ConnectionGate::new(1, Duration::ZERO);
        let a = gate.enter(Waiting::Ready).ticket().unwrap();
        a.leave();
        let idle = gate.enter(Waiting::Idle).ticket().unwrap();
        // Full; the idle waiter has waited the (zero) grace: it makes room.
        assert!(a.wait_again(Waiting::Idle));
        assert!(idle.is_evicted() && !idle.is_waiting());
        // An evicted connection neither waits again nor gives a place back.
        assert!(!idle.wait_again(Waiting::Idle));
        idle.set_ready();
        idle.leave();
        assert_eq!(gate.stats().waiting, 1);
        drop(idle);
        assert_eq!(gate.stats().waiting, 1);
        let s = gate.stats();
        assert_eq!((s.evicted, s.peak), (1, 1));
    }

    #[test]
    fn places_add_up_when_threads_enter_leave_wait_again_and_evict_at_once() {
        const CAPACITY: usize = 8;
        let gate = ConnectionGate::new(CAPACITY, Duration::ZERO);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    // A small xorshift: each thread its own sequence.
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                    let mut held: Vec<Ticket> = Vec::new();
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        match x % 6 {
                            0 | 1 => {
                                let kind = [Waiting::Head, Waiting::Ready, Waiting::Idle]
                                    [(x >> 8) as usize % 3];
                                held.extend(gate.enter(kind).ticket());
                            }
                            2 if !held.is_empty() => {
                                held[(x >> 8) as usize % held.len()].leave();
                            }
                            3 if !held.is_empty() => {
                                held[(x >> 8) as usize % held.len()].wait_again(Waiting::Idle);
                            }
                            4 if !held.is_empty() => {
                                held.swap_remove((x >> 8) as usize % held.len());
                            }
                            _ => {}
                        }
                        assert!(gate.stats().waiting <= CAPACITY);
                    }
                    held
                })
            })
            .collect();
        let held: Vec<Ticket> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let waiting = held.iter().filter(|t| t.is_waiting()).count();
        assert_eq!(gate.stats().waiting, waiting, "the count is the waiters");
        assert!(gate.stats().evicted > 0, "the gate was full at times");
        drop(held);
        assert_eq!(gate.stats().waiting, 0);
        let gone = gate.inner.gone.load(Ordering::Relaxed);
        let entries = gate.inner.queue.lock().unwrap().len();
        assert_eq!(gone, entries, "every entry left is a dropped ticket's");
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
