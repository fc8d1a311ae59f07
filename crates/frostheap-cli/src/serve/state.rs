//! What every connection and handler of `frostheap serve` shares: the
//! budget and the gate, the timeouts, the counters `/stats` reports, and
//! the shutdown signal. The bottom of the serve module: it imports none of
//! its siblings but `slow.rs` (the slow-body pool), which imports none.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use frostheap_budget::gate::ConnectionGate;
use frostheap_budget::Budget;
use tokio::sync::{watch, Notify};

use super::slow::SlowBodies;

/// What one connection costs without a request: hyper's read buffer
/// (capped at 16 KiB), its write buffer and headers, the connection task
/// and the socket wrappers. The peak-RSS runs of `frostheap-load` bound it
/// from above (budget + 10.3–10.5 MiB with 2,560 clients on a lightly
/// loaded machine, + 20–21 MiB at load average 30; see `frostheap-load`'s
/// `wrk.rs` for wrk's figures).
pub(super) const CONNECTION_BYTES: usize = 24 << 10;

/// Fixed bytes per request on top of its body: the parsed head (`HeaderMap`,
/// URI), the request's future and its response head.
pub(super) const REQUEST_BYTES: usize = 4 << 10;

/// The least a request is charged ([`request_cost`](super::endpoints::request_cost)
/// without a body): its connection's buffers and its head. A per-client
/// cost below it would show a capacity the budget never admits (`--per-client
/// 1K` on 1 MiB showed 1,024 clients; 36 were admitted).
pub(super) const MIN_CHARGE: usize = CONNECTION_BYTES + REQUEST_BYTES;

/// The timeouts a connection must meet (see `clock.rs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) body: Duration,
    /// How long a body may take to arrive holding its client place (the
    /// charge its head declared); past it, a body still arriving leaves
    /// the place for the slow-body pool (`slow.rs`).
    pub(super) body_grace: Duration,
    /// Bytes per second a body must keep up after `body`; 0: none.
    pub(super) body_min_rate: u64,
    /// The longest a whole body may take, however fast it keeps coming
    /// (at least `body`).
    pub(super) body_max: Duration,
    pub(super) idle: Duration,
    /// How long a response may wait for the client to take any of it.
    pub(super) send: Duration,
}

/// Everything the connections and handlers share.
pub(super) struct State {
    pub(super) budget: Option<Budget>,
    /// The memory the server stays within (`memory_bound` in mod.rs; none
    /// without a budget).
    pub(super) memory_bound: Option<usize>,
    /// Connections without an admitted request (with a budget).
    pub(super) gate: Option<ConnectionGate>,
    /// Requests whose body is still arriving past the grace, apart from
    /// the budget's clients (with a budget).
    pub(super) slow: Option<SlowBodies>,
    /// Signalled when a request is refused or queued for want of a client
    /// place: the bodies still arriving have their grace cut short
    /// (`endpoints.rs`'s `read_body`).
    pub(super) pressure: Notify,
    pub(super) max_body: usize,
    /// `--overload wait`: requests wait for memory (with a budget).
    pub(super) waits: bool,
    pub(super) timeouts: Timeouts,
    /// Requests other than the monitoring endpoints': those routed to an
    /// endpoint behind the layer (shed ones included) and those refused
    /// from their head before it (404, 413 past `--max-body`).
    pub(super) requests: AtomicU64,
    /// Requests answered 2xx by a handler whose answer was written to the
    /// socket whole.
    pub(super) completed: AtomicU64,
    /// Requests answered 2xx by a handler whose answer was not written
    /// whole: the connection ended first (the client gone, a reset, the
    /// send timeout).
    pub(super) undelivered: AtomicU64,
    /// Requests that waited for memory and were dropped, while waiting or
    /// at their turn, because their client had closed the connection.
    pub(super) abandoned: AtomicU64,
    /// Connections refused by a full gate (answered 503).
    pub(super) shed_connections: AtomicU64,
    pub(super) timeouts_header: AtomicU64,
    pub(super) timeouts_body: AtomicU64,
    pub(super) timeouts_idle: AtomicU64,
    pub(super) timeouts_send: AtomicU64,
    /// Connections on probation now (found the gate full).
    pub(super) probation: AtomicUsize,
    /// Monitoring answers being written outside a full gate now (see
    /// `conn.rs`, at most `MAX_OUTSIDE_GATE`).
    pub(super) outside_gate: AtomicUsize,
    /// Lingering closes under way now.
    pub(super) lingering: AtomicUsize,
    /// Lingering closes cut short (by their time or byte bound, or because
    /// too many were under way).
    pub(super) linger_cut: AtomicU64,
    /// The idle spells' trims (see `give_back_when_idle`), shared with the
    /// worker threads' park hook.
    pub(super) idle: Arc<IdleTrims>,
    /// Open connections (accepted, not yet closed).
    pub(super) connections: AtomicUsize,
    /// Signalled when `connections` drops to zero.
    pub(super) all_closed: Notify,
    /// False once a shutdown has begun.
    pub(super) ready: AtomicBool,
    /// Set to true to make every connection finish.
    pub(super) shutdown: watch::Sender<bool>,
}

/// The trims of idle spells. `frostheap::trim` gives back every heap's
/// free spans, but the blocks a thread keeps for reuse (its own freed
/// blocks, the other heaps' blocks it holds or has batched for their
/// owners), and the spans they pin, only on that thread: so each worker
/// thread trims its own heap, from
/// the runtime's park hook, the first time it parks after the idle monitor
/// asked.
#[derive(Default)]
pub(super) struct IdleTrims {
    /// Bumped by the monitor for each idle spell: the spells so far
    /// (`idle_trims` in `/stats`).
    pub(super) asked: AtomicU64,
    /// Worker threads that trimmed for the spell `asked` names: the
    /// monitor wakes the workers again while it is short of all of them.
    pub(super) this_spell: AtomicU64,
    /// Worker threads' trims, and the bytes they gave back.
    pub(super) threads: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Trims under load (the heaps kept more than `FREE_KEPT` free), and
    /// the bytes they gave back.
    pub(super) load_trims: AtomicU64,
    pub(super) load_trimmed: AtomicU64,
    /// One trim at a time: a trim gives back the other heaps' free spans
    /// too, and two at once would each count what the other gave back.
    one_at_a_time: std::sync::Mutex<()>,
}

thread_local! {
    /// The last idle spell this worker thread trimmed for.
    static TRIMMED_FOR: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

impl IdleTrims {
    /// Opens a new idle spell: every worker thread trims at its next park.
    pub(super) fn ask(&self) {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        self.this_spell.store(0, Ordering::Release);
        self.asked.fetch_add(1, Ordering::AcqRel);
    }

    /// Trims now, from the monitor's task (under load: `give_back_under_load`
    /// in mod.rs): every heap's free spans, and the blocks this worker
    /// thread keeps.
    pub(super) fn trim_under_load(&self) {
        let bytes = {
            let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
            frostheap::trim()
        };
        self.load_trims.fetch_add(1, Ordering::Relaxed);
        self.load_trimmed.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Run by each worker thread as it parks (no task to run): trims its
    /// heap once per idle spell. Otherwise one load and a thread-local
    /// read.
    pub(super) fn trim_if_asked(&self) {
        let asked = self.asked.load(Ordering::Acquire);
        if asked == TRIMMED_FOR.get() {
            return;
        }
        TRIMMED_FOR.set(asked);
        let bytes = {
            let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
            let bytes = frostheap::trim();
            if self.asked.load(Ordering::Acquire) == asked {
                self.this_spell.fetch_add(1, Ordering::AcqRel);
            }
            bytes
        };
        self.threads.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}
