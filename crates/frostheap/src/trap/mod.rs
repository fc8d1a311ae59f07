//! Freezing guarded heaps and catching the writes that hit them.
//!
//! **Backends** ([`Protect`]). `pkey`: each guarded region is tagged with
//! one protection key once, while still `PROT_NONE`; a freeze is a write to
//! each worker's PKRU register denying writes to that key (main keeps
//! access). `mprotect`: one `mprotect(PROT_READ)` over each guarded heap's
//! committed prefix, on huge pages where available. `off`: no protection.
//! `auto` picks `pkey` where the CPU and kernel have protection keys and
//! `mprotect` elsewhere.
//!
//! **Guard table.** A fixed array of guarded ranges the fault handler reads
//! lock-free: start, frozen end, frozen flag, sealed flag, heap pointer.
//!
//! **Workers.** Each runtime worker registers a [`WorkerSlot`] in a
//! `const` thread-local (a plain `%fs`-relative load: safe to read in a
//! signal handler). The handler claims a fault only when the address is in
//! a guarded range, `si_code` is `SEGV_ACCERR` or `SEGV_PKUERR`, and the
//! thread is a registered worker; other threads that write during an
//! `mprotect` freeze wait for the thaw, threads that lack the key get it.
//!
//! Neither backend is a security boundary: writes through `/proc/self/mem`
//! or `ptrace` succeed against both. frostheap catches mistakes, not
//! attackers.

// Not called by the handler yet (see undo.rs).
#[allow(dead_code)]
pub(crate) mod backtrace;
pub(crate) mod handler;
mod report;
pub(crate) mod undo;

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

pub use report::{Access, Violation};

use crate::heap::HeapInner;
use crate::os::{self, OsError};
use crate::Error;

/// How guarded heaps are protected during a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protect {
    /// `pkey` where available, else `mprotect`.
    #[default]
    Auto,
    /// Memory protection keys: a register write per worker, any size.
    Pkey,
    /// `mprotect` of each guarded heap's committed range.
    Mprotect,
    /// No protection: violations go unnoticed.
    Off,
}

impl Protect {
    /// Parses `auto`, `pkey`, `mprotect` or `off`.
    pub fn parse(s: &str) -> Option<Protect> {
        match s {
            "auto" => Some(Protect::Auto),
            "pkey" => Some(Protect::Pkey),
            "mprotect" => Some(Protect::Mprotect),
            "off" => Some(Protect::Off),
            _ => None,
        }
    }
}

/// What happens to a task that writes a frozen heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnViolation {
    /// Park the task's thread for good, report `Error::Violation`, start a
    /// replacement worker. The store never happens.
    #[default]
    Cancel,
    /// Write a full report to stderr and die with the original signal.
    Abort,
    /// Let the write land and record it; the phase goes on.
    Audit,
}

impl OnViolation {
    /// Parses `cancel`, `abort` or `audit`.
    pub fn parse(s: &str) -> Option<OnViolation> {
        match s {
            "cancel" => Some(OnViolation::Cancel),
            "abort" => Some(OnViolation::Abort),
            "audit" => Some(OnViolation::Audit),
            _ => None,
        }
    }
}

/// The backend actually in force (after resolving `Auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Protection key `key`.
    Pkey(u32),
    /// `mprotect`.
    Mprotect,
    /// Nothing.
    Off,
}

impl Backend {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pkey(_) => "pkey",
            Backend::Mprotect => "mprotect",
            Backend::Off => "off",
        }
    }
}

// ---------------------------------------------------------------------------
// Process-wide state the handler reads.

/// The process's protection key (0 = none allocated yet / unavailable).
static PKEY: AtomicU32 = AtomicU32::new(0);
static PKEY_PROBED: Once = Once::new();
static PKEY_ERROR: AtomicU32 = AtomicU32::new(0);

/// The protection key, allocating it on first use; `Err` if the CPU or
/// kernel has none.
pub fn pkey() -> Result<u32, OsError> {
    PKEY_PROBED.call_once(|| match os::pkey_alloc() {
        Ok(k) => PKEY.store(k, Ordering::Release),
        Err(e) => PKEY_ERROR.store(e.errno as u32, Ordering::Release),
    });
    match PKEY.load(Ordering::Acquire) {
        0 => Err(OsError {
            call: "pkey_alloc",
            errno: PKEY_ERROR.load(Ordering::Acquire) as i32,
        }),
        k => Ok(k),
    }
}

/// Whether this machine has protection keys.
pub fn pkeys_available() -> bool {
    pkey().is_ok()
}

/// Resolves a requested backend against the machine.
pub fn resolve(protect: Protect) -> Result<Backend, Error> {
    match protect {
        Protect::Off => Ok(Backend::Off),
        Protect::Mprotect => Ok(Backend::Mprotect),
        Protect::Auto => Ok(pkey().map(Backend::Pkey).unwrap_or(Backend::Mprotect)),
        Protect::Pkey => pkey().map(Backend::Pkey).map_err(|e| {
            Error::invalid(
                "protect",
                "pkey",
                format!(
                    "a backend this machine supports: protection keys are unavailable here ({e}); use auto or mprotect"
                ),
            )
        }),
    }
}

/// One guarded heap as the handler sees it.
pub(crate) struct GuardSlot {
    /// Region start; 0 when the slot is free.
    pub start: AtomicUsize,
    /// End of the reservation.
    pub end: AtomicUsize,
    /// End of the committed prefix protected by the current freeze.
    pub frozen_end: AtomicUsize,
    /// Frozen now.
    pub frozen: AtomicBool,
    /// Sealed for good (never thawed).
    pub sealed: AtomicBool,
    /// Tagged with the protection key.
    pub tagged: AtomicBool,
    /// The heap (for names and block geometry in reports).
    pub heap: AtomicPtr<HeapInner>,
    /// How many runtimes guard this heap.
    pub users: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_GUARD: GuardSlot = GuardSlot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    frozen_end: AtomicUsize::new(0),
    frozen: AtomicBool::new(false),
    sealed: AtomicBool::new(false),
    tagged: AtomicBool::new(false),
    heap: AtomicPtr::new(core::ptr::null_mut()),
    users: AtomicU32::new(0),
};

/// Maximum number of guarded heaps at once.
pub const MAX_GUARDED: usize = 64;
pub(crate) static GUARDS: [GuardSlot; MAX_GUARDED] = [EMPTY_GUARD; MAX_GUARDED];

/// Bumped at every thaw; threads waiting in the handler sleep on it.
pub(crate) static THAW_EPOCH: AtomicU32 = AtomicU32::new(0);
/// Number of heaps frozen with mprotect right now.
pub(crate) static MPROTECT_FROZEN: AtomicU32 = AtomicU32::new(0);

/// The guard slot containing `addr`, if any. Lock-free.
pub(crate) fn guard_of(addr: usize) -> Option<&'static GuardSlot> {
    GUARDS.iter().find(|g| {
        let start = g.start.load(Ordering::Acquire);
        start != 0 && addr >= start && addr < g.end.load(Ordering::Relaxed)
    })
}

/// Registers `heap` as guarded (idempotent); returns its slot.
pub(crate) fn guard(heap: &HeapInner, backend: Backend) -> Result<&'static GuardSlot, Error> {
    let region = heap.core.region();
    let start = region.base() as usize;
    let slot = match guard_of(start) {
        Some(s) => s,
        None => {
            let free = GUARDS
                .iter()
                .find(|g| {
                    g.end
                        .compare_exchange(
                            0,
                            start + region.reserved(),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                })
                .ok_or_else(|| {
                    Error::invalid(
                        "guard",
                        heap.name.as_ref(),
                        format!("at most {MAX_GUARDED} guarded heaps"),
                    )
                })?;
            free.heap.store(
                heap as *const HeapInner as *mut HeapInner,
                Ordering::Relaxed,
            );
            free.start.store(start, Ordering::Release);
            free
        }
    };
    slot.users.fetch_add(1, Ordering::AcqRel);
    if let Backend::Pkey(key) = backend {
        if !slot.tagged.swap(true, Ordering::AcqRel) {
            // Tag the whole reservation: committed pages keep read/write,
            // the rest stays PROT_NONE. mprotect later keeps the key.
            let committed = heap.core.commit_lock_and(|committed| {
                // SAFETY: both ranges lie inside the heap's reservation.
                unsafe {
                    if committed > 0 {
                        os::pkey_tag(region.base(), committed, key, os::Access::ReadWrite)?;
                    }
                    if region.reserved() > committed {
                        os::pkey_tag(
                            region.base().add(committed),
                            region.reserved() - committed,
                            key,
                            os::Access::None,
                        )?;
                    }
                }
                Ok::<usize, OsError>(committed)
            });
            committed.map_err(|source| Error::Os {
                context: "tagging a guarded heap with a protection key",
                source,
            })?;
        }
    }
    Ok(slot)
}

/// Drops one runtime's guard on `slot`; frees the slot when unused.
pub(crate) fn unguard(slot: &GuardSlot) {
    if slot.users.fetch_sub(1, Ordering::AcqRel) == 1
        && !slot.sealed.load(Ordering::Acquire)
        && !slot.tagged.load(Ordering::Acquire)
    {
        slot.start.store(0, Ordering::Release);
        slot.heap.store(core::ptr::null_mut(), Ordering::Relaxed);
        slot.end.store(0, Ordering::Release);
    }
}

/// Marks a heap sealed in the guard table (so a write to it is never
/// mistaken for a thawed-race retry).
pub(crate) fn mark_sealed(heap: &HeapInner) -> Result<(), Error> {
    let slot = guard(heap, Backend::Off)?;
    slot.sealed.store(true, Ordering::Release);
    slot.frozen_end
        .store(slot.end.load(Ordering::Relaxed), Ordering::Release);
    Ok(())
}

// ---------------------------------------------------------------------------
// Workers.

/// A violation as the handler records it: plain numbers only.
#[derive(Default)]
pub(crate) struct RawRecord {
    pub addr: AtomicUsize,
    pub ip: AtomicUsize,
    pub tid: AtomicU32,
    pub code: AtomicU32,
    pub item: AtomicUsize,
    /// 0: empty; 1: written.
    pub state: AtomicU32,
}

/// What the handler and the runtime share about one worker thread. Lives
/// in system memory, never moves, and is leaked if its thread is parked.
pub(crate) struct WorkerSlot {
    /// Inside a phase (the guarded heaps are frozen for this worker).
    pub in_phase: AtomicBool,
    /// The cancel-policy record.
    pub record: RawRecord,
    /// Audit: the page the worker may write until its next trap (0: none).
    pub audit_page: AtomicUsize,
    /// Audit: the key whose write-disable bit to restore (pkey backend).
    pub audit_pkey: AtomicU32,
    /// Audit records written by this worker (ring of `AUDIT_RING`).
    pub audit: [RawRecordPlain; AUDIT_RING],
    pub audit_count: AtomicU64,
    /// Where the runtime listens for events (task done, violation).
    pub events: AtomicPtr<AtomicU32>,
    /// Count of parked workers of the runtime (bumped by the handler).
    pub parked: AtomicPtr<AtomicU32>,
    /// The policy in force.
    pub policy: AtomicU32,
    /// Parked forever by the handler.
    pub is_parked: AtomicBool,
    /// The park word (never changes, so the futex wait never returns).
    pub park_word: AtomicU32,
    /// Deferred frees of guarded memory made during the phase.
    pub deferred: DeferList,
    /// 1 once the worker thread has finished starting (a futex word).
    pub started: AtomicU32,
    /// A kernel write into frozen memory found by [`crate::io`] helpers
    /// (not parked: the task got an error back).
    pub kernel: RawRecord,
}

/// Audit records kept per worker per phase (older ones are counted but
/// dropped).
pub const AUDIT_RING: usize = 256;

/// An audit record.
#[derive(Default)]
pub(crate) struct RawRecordPlain {
    pub addr: AtomicUsize,
    pub ip: AtomicUsize,
    pub item: AtomicUsize,
    pub tid: AtomicU32,
}

impl WorkerSlot {
    pub(crate) fn new(policy: OnViolation) -> WorkerSlot {
        WorkerSlot {
            in_phase: AtomicBool::new(false),
            record: RawRecord::default(),
            audit_page: AtomicUsize::new(0),
            audit_pkey: AtomicU32::new(0),
            audit: core::array::from_fn(|_| RawRecordPlain::default()),
            audit_count: AtomicU64::new(0),
            events: AtomicPtr::new(core::ptr::null_mut()),
            parked: AtomicPtr::new(core::ptr::null_mut()),
            policy: AtomicU32::new(policy as u32),
            is_parked: AtomicBool::new(false),
            park_word: AtomicU32::new(0),
            deferred: DeferList::new(),
            started: AtomicU32::new(0),
            kernel: RawRecord::default(),
        }
    }
}

thread_local! {
    /// The calling thread's worker slot (null on non-worker threads).
    static WORKER: Cell<*const WorkerSlot> = const { Cell::new(core::ptr::null()) };
    /// Index of the item the calling worker is running (`usize::MAX` if
    /// none). A thread-local rather than a slot field: it is stored before
    /// every task and read only on the worker's own thread (by the fault
    /// handler, the I/O helpers and the runtime's panic path), and a
    /// thread-local store needs no register to hold the slot's address,
    /// which a tight map loop would otherwise reload from the stack on
    /// every item.
    static CURRENT_ITEM: AtomicUsize = const { AtomicUsize::new(usize::MAX) };
}

/// Records the item the calling worker is about to run.
#[inline(always)]
pub(crate) fn set_current_item(index: usize) {
    CURRENT_ITEM.with(|c| c.store(index, Ordering::Relaxed));
}

/// The item the calling worker is running (`usize::MAX` if none).
/// Async-signal-safe.
#[inline]
pub(crate) fn current_item() -> usize {
    CURRENT_ITEM.with(|c| c.load(Ordering::Relaxed))
}

/// The calling thread's worker slot, if it is a runtime worker.
#[inline]
pub(crate) fn current_worker() -> *const WorkerSlot {
    WORKER.with(|w| w.get())
}

/// Registers the calling thread as a worker.
pub(crate) fn set_current_worker(slot: *const WorkerSlot) {
    WORKER.with(|w| w.set(slot));
}

/// Queues a free of guarded memory made by a worker during a phase; false
/// if the caller is not such a worker (free normally).
#[inline]
pub(crate) fn defer_free(p: *mut u8) -> bool {
    let w = current_worker();
    if w.is_null() {
        return false;
    }
    // SAFETY: a registered slot outlives its thread.
    let w = unsafe { &*w };
    if !w.in_phase.load(Ordering::Relaxed) {
        return false;
    }
    w.deferred.push(p as usize)
}

/// A worker's queue of deferred frees: a fixed `MAP_NORESERVE` array, so
/// pushing never allocates (it may run inside the global allocator).
pub(crate) struct DeferList {
    buf: AtomicPtr<usize>,
    len: AtomicUsize,
}

/// Capacity of a deferred-free list (virtual; pages are touched on use).
const DEFER_CAP: usize = 1 << 22;

impl DeferList {
    fn new() -> DeferList {
        DeferList {
            buf: AtomicPtr::new(core::ptr::null_mut()),
            len: AtomicUsize::new(0),
        }
    }

    /// Maps the array (outside any phase).
    pub(crate) fn prepare(&self) -> Result<(), OsError> {
        if self.buf.load(Ordering::Acquire).is_null() {
            let p = os::map_table(DEFER_CAP * core::mem::size_of::<usize>())?;
            self.buf.store(p.cast(), Ordering::Release);
        }
        Ok(())
    }

    /// Appends (owner thread only); false when full or unmapped.
    fn push(&self, addr: usize) -> bool {
        let buf = self.buf.load(Ordering::Acquire);
        let len = self.len.load(Ordering::Relaxed);
        if buf.is_null() || len == DEFER_CAP {
            return false;
        }
        // SAFETY: len < DEFER_CAP, inside the mapping; only the owning
        // worker writes during a phase.
        unsafe { buf.add(len).write(addr) };
        self.len.store(len + 1, Ordering::Release);
        true
    }

    /// Takes every queued address (main thread, after the phase).
    pub(crate) fn drain(&self, mut f: impl FnMut(usize)) {
        let buf = self.buf.load(Ordering::Acquire);
        let len = self.len.swap(0, Ordering::AcqRel);
        for i in 0..len {
            // SAFETY: entries [0, len) were written by push before the
            // worker signalled the end of its phase.
            f(unsafe { buf.add(i).read() });
        }
    }
}

impl Drop for DeferList {
    fn drop(&mut self) {
        let buf = self.buf.load(Ordering::Acquire);
        if !buf.is_null() {
            // SAFETY: mapped by prepare with this length; nothing else
            // refers to it once the list is dropped.
            unsafe { os::unmap(buf.cast(), DEFER_CAP * core::mem::size_of::<usize>()) };
        }
    }
}

/// Whether `[addr, addr + len)` touches a heap that is frozen now.
pub(crate) fn frozen_in(addr: usize, len: usize) -> Option<usize> {
    let page = os::page_size();
    let mut a = addr & !(page - 1);
    while a < addr + len.max(1) {
        if let Some(g) = guard_of(a) {
            if g.frozen.load(Ordering::Acquire) || g.sealed.load(Ordering::Acquire) {
                return Some(a.max(addr));
            }
        }
        a += page;
    }
    None
}

/// Installs the fault handlers (once per process).
pub fn install() -> Result<(), Error> {
    handler::install().map_err(|source| Error::Os {
        context: "installing the fault handler",
        source,
    })
}

/// Size of a worker's alternate signal stack: at least 64 KiB.
pub(crate) fn alt_stack_size() -> usize {
    (os::min_signal_stack() * 4).max(64 << 10)
}
