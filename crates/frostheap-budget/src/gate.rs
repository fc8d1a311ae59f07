//! The connection gate: at most [`Budget::clients`] connections are open
//! at once, so that every open connection's next request finds its
//! per-client bytes (no connection holds bytes while all the rest wait:
//! the hold-and-wait of a two-level budget).
//!
//! A count against a capacity that follows the budget's estimate, with a
//! `Notify` for callers that wait: not a byte semaphore, because the limit
//! moves with the measured per-client cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::Budget;

/// Admits connections up to the budget's client capacity.
#[derive(Clone)]
pub struct ConnectionGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    budget: Budget,
    /// Connections holding a slot. Invariant: `open <= budget.clients()`
    /// when a slot is taken.
    open: AtomicUsize,
    /// Signalled when a connection gives its slot back.
    freed: Notify,
    /// Callers waiting for a slot.
    waiting: AtomicUsize,
}

impl ConnectionGate {
    /// A gate for connections of `budget`'s clients.
    pub fn new(budget: Budget) -> ConnectionGate {
        ConnectionGate {
            inner: Arc::new(GateInner {
                budget,
                open: AtomicUsize::new(0),
                freed: Notify::new(),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Takes a slot now, or `None` when `budget.clients()` are open.
    pub fn try_take(&self) -> Option<Slot> {
        let cap = self.inner.budget.clients();
        let mut open = self.inner.open.load(Ordering::Relaxed);
        while open < cap {
            match self.inner.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Slot {
                        gate: self.inner.clone(),
                    })
                }
                Err(now) => open = now,
            }
        }
        None
    }

    /// Takes a slot, waiting until one is given back.
    pub async fn take(&self) -> Slot {
        loop {
            let freed = self.inner.freed.notified();
            if let Some(slot) = self.try_take() {
                return slot;
            }
            self.inner.waiting.fetch_add(1, Ordering::Relaxed);
            freed.await;
            self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }
}

/// A connection's place; given back on drop.
pub struct Slot {
    gate: Arc<GateInner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        self.gate.freed.notify_one();
    }
}
