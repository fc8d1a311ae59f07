//! What the fault handler and the runtime share about one worker thread:
//! its [`WorkerState`], found through a `const` thread-local (a plain
//! `%fs`-relative load, safe to read in a signal handler), and the index
//! of the item it runs.
//!
//! A worker's state lives in system memory, never moves, and is leaked if
//! its thread is parked. The handler writes only plain atomics here; the
//! runtime reads them after the phase.
//!
//! Also here: the worker's **deferred frees**. A task that frees guarded
//! memory must not write the frozen heap, so the heap's free path asks
//! [`defer_free`] first, which queues the address in the worker's own
//! list; the runtime applies the list at the thaw.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::OnViolation;
use crate::os::{self, OsError};

/// A store into frozen memory as the handler (or `io`) records it: plain
/// numbers only, turned into a report on the main thread.
#[derive(Default)]
pub(crate) struct ViolationRecord {
    pub addr: AtomicUsize,
    pub ip: AtomicUsize,
    pub tid: AtomicU32,
    /// `si_code` of the fault.
    pub code: AtomicU32,
    pub item: AtomicUsize,
    /// 0: empty; 1: written (stored last, Release).
    pub state: AtomicU32,
}

/// One store let through by the audit policy.
#[derive(Default)]
pub(crate) struct AuditRecord {
    pub addr: AtomicUsize,
    pub ip: AtomicUsize,
    /// Stored last (Release).
    pub item: AtomicUsize,
    pub tid: AtomicU32,
}

/// Audit and rollback records kept per worker per phase: the first this
/// many; later ones are counted (`audit_count`) but not recorded, so a
/// report lists the first stores of each task and counts every one.
pub(crate) const AUDIT_RECORDS: usize = 256;

/// What the handler and the runtime share about one worker thread.
pub(crate) struct WorkerState {
    /// Inside a phase: the guarded heaps are frozen for this worker.
    pub in_phase: AtomicBool,
    /// The policy in force ([`OnViolation`] as `u32`).
    pub policy: AtomicU32,
    /// The cancel policy's record: the store that parked this worker.
    pub record: ViolationRecord,
    /// A kernel write into frozen memory found by the `io` helpers (the
    /// task got an error back; nothing is parked).
    pub kernel: ViolationRecord,
    /// The audit and rollback policies' records (the first
    /// [`AUDIT_RECORDS`] of a phase), and how many violating stores there
    /// were since the runtime last read them.
    pub audit: [AuditRecord; AUDIT_RECORDS],
    pub audit_count: AtomicU64,
    /// A single step in progress (`trap::step`): the page opened for one
    /// store (mprotect; 0: none) ...
    pub step_page: AtomicUsize,
    /// ... and a second page, when the same instruction faulted again on
    /// the next frozen page (a store crossing a page boundary) ...
    pub step_page2: AtomicUsize,
    /// ... or the key whose write access the saved PKRU grants for it
    /// (pkey; 0: none).
    pub step_key: AtomicU32,
    /// Where the runtime listens for events (task done, violation).
    pub events: AtomicPtr<AtomicU32>,
    /// Count of parked workers of the runtime (bumped by the handler).
    pub parked: AtomicPtr<AtomicU32>,
    /// Parked for good by the handler.
    pub is_parked: AtomicBool,
    /// The park word (never changes, so the futex wait never returns).
    pub park_word: AtomicU32,
    /// Frees of guarded memory made during the phase.
    pub deferred: DeferList,
    /// 1 once the worker thread has finished starting (a futex word).
    pub started: AtomicU32,
    /// The rollback policy's undo log (`guard::undo`).
    pub undo: super::UndoLog,
    /// A copy of the stack at the worker's first violation of a phase,
    /// for the report's backtrace (`guard::stack`).
    pub stack: super::StackCopy,
    /// The worker thread's kernel id (0 until it has started).
    pub tid: AtomicU32,
    /// Where the worker is in a phase's job: [`JOB_IDLE`], [`JOB_RUNNING`],
    /// [`JOB_ABANDONED`] or [`JOB_PARKED`] (see [`WorkerState::abandon`]).
    pub job: AtomicU32,
    /// Parked because main abandoned its task (no progress after a
    /// violation), not because of a violation of its own.
    pub abandoned: AtomicBool,
}

/// Not running a job.
pub(crate) const JOB_IDLE: u32 = 0;
/// Running the job of a phase.
pub(crate) const JOB_RUNNING: u32 = 1;
/// Main gave up on the job: the worker must park at its next chance.
pub(crate) const JOB_ABANDONED: u32 = 2;
/// Parked for good after being abandoned.
pub(crate) const JOB_PARKED: u32 = 3;

impl WorkerState {
    pub(crate) fn new(policy: OnViolation) -> WorkerState {
        WorkerState {
            in_phase: AtomicBool::new(false),
            policy: AtomicU32::new(policy as u32),
            record: ViolationRecord::default(),
            kernel: ViolationRecord::default(),
            audit: core::array::from_fn(|_| AuditRecord::default()),
            audit_count: AtomicU64::new(0),
            step_page: AtomicUsize::new(0),
            step_page2: AtomicUsize::new(0),
            step_key: AtomicU32::new(0),
            events: AtomicPtr::new(core::ptr::null_mut()),
            parked: AtomicPtr::new(core::ptr::null_mut()),
            is_parked: AtomicBool::new(false),
            park_word: AtomicU32::new(0),
            deferred: DeferList::new(),
            started: AtomicU32::new(0),
            undo: super::UndoLog::new(),
            stack: super::StackCopy::new(),
            tid: AtomicU32::new(0),
            job: AtomicU32::new(JOB_IDLE),
            abandoned: AtomicBool::new(false),
        }
    }

    /// The worker starts the job of a phase.
    pub(crate) fn begin_job(&self) {
        self.job.store(JOB_RUNNING, Ordering::Release);
    }

    /// The worker ends the job of a phase; false if main abandoned it
    /// meanwhile, and the worker must then park for good (main counts it
    /// as parked, not as finished).
    pub(crate) fn end_job(&self) -> bool {
        self.job
            .compare_exchange(JOB_RUNNING, JOB_IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Main gives up on the job this worker runs (it made no progress
    /// after a violation): true if the worker was running one, which it
    /// will never finish now. The worker parks in the abandon signal's
    /// handler, or at the job's end if it gets there first.
    pub(crate) fn abandon(&self) -> bool {
        self.job
            .compare_exchange(
                JOB_RUNNING,
                JOB_ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The worker's own thread claims the parking of an abandoned job:
    /// true exactly once per abandonment (the signal handler and the job's
    /// end may both try). Async-signal-safe.
    pub(crate) fn claim_abandoned_park(&self) -> bool {
        self.job
            .compare_exchange(
                JOB_ABANDONED,
                JOB_PARKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> OnViolation {
        OnViolation::from_u32(self.policy.load(Ordering::Relaxed))
    }
}

thread_local! {
    /// The calling thread's worker state (null on non-worker threads).
    static WORKER: Cell<*const WorkerState> = const { Cell::new(core::ptr::null()) };
    /// Index of the item the calling worker is running (`usize::MAX` if
    /// none). A thread-local rather than a field of the state: it is
    /// stored before every task and read only on the worker's own thread
    /// (by the fault handler, the I/O helpers and the runtime's panic
    /// path), and a thread-local store needs no register to hold the
    /// state's address, which a tight map loop would otherwise reload from
    /// the stack on every item.
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

/// The calling thread's worker state, if it is a runtime worker.
/// Async-signal-safe.
#[inline]
pub(crate) fn current_worker() -> Option<&'static WorkerState> {
    let w = WORKER.with(|w| w.get());
    // SAFETY: only `set_current_worker` stores here, and only references
    // that live for the rest of the process (or null).
    unsafe { w.as_ref() }
}

/// Registers (or, with `None`, unregisters) the calling thread as a
/// worker with state `state`.
pub(crate) fn set_current_worker(state: Option<&'static WorkerState>) {
    WORKER.with(|w| w.set(state.map_or(core::ptr::null(), |s| s as *const WorkerState)));
}

/// Queues a free of guarded memory made by a worker during a phase; false
/// if the caller is not such a worker (free normally).
#[inline]
pub(crate) fn defer_free(p: *mut u8) -> bool {
    match current_worker() {
        Some(w) if w.in_phase.load(Ordering::Relaxed) => w.deferred.push(p as usize),
        _ => false,
    }
}

/// A worker's queue of deferred frees: a fixed `MAP_NORESERVE` array, so
/// pushing never allocates (it runs inside the global allocator).
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
