//! Worker threads.
//!
//! A worker is a std thread spawned inside `unguarded` (so its `Thread`
//! handle, name and channels live in system memory) that owns an
//! alternate signal stack of at least 64 KiB, a [`WorkerState`] the fault
//! handler reads, and a context heap. It sleeps on the runtime's phase
//! epoch (a futex), runs the published job when the epoch moves, and
//! reports completion through the runtime's event word.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::thread::JoinHandle;

use crate::context::ContextHeap;
use crate::guard::{self, WorkerState};
use crate::trap::{self, Backend, OnViolation};
use crate::{global, os};

/// A job as workers see it.
pub(crate) struct JobRef<'a>(pub(crate) &'a (dyn Fn(&WorkerEnv<'_>) + Sync));

/// The runtime's control block: what main and the workers share (system
/// memory, never moves, leaked so workers may hold it for `'static`).
pub(crate) struct ControlBlock {
    pub backend: Backend,
    /// Whether this runtime guards any heap. On `pkey`, its workers lose
    /// write access to the key during its phases only if it does: a
    /// runtime that guards nothing denies nothing, even while another
    /// runtime's heaps carry the process's key.
    pub guards_any: bool,
    pub policy: OnViolation,
    pub epoch: AtomicU32,
    pub job: AtomicPtr<JobRef<'static>>,
    pub remaining: AtomicU32,
    pub events: AtomicU32,
    pub parked: AtomicU32,
    pub shutdown: AtomicBool,
}

/// What the runtime keeps of a worker.
pub(crate) struct Worker {
    pub slot: &'static WorkerState,
    pub thread: Option<JoinHandle<()>>,
    pub reported: bool,
    /// Address of the worker's context heap (retired by the thread when it
    /// exits: at `Runtime::drop`, or never for a parked worker; its
    /// bookkeeping lives as long as the process, so reading its counters
    /// is always sound). An address, so `Worker` stays `Send`.
    pub ctx_addr: usize,
}

impl Worker {
    /// Joins the worker's thread (the runtime has told it to stop) and
    /// frees its state. A parked worker has no thread handle (it was
    /// forgotten): its state stays, the stopped thread still refers to it.
    pub(crate) fn join_and_release(mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        if t.join().is_ok() {
            // SAFETY: `slot` was leaked from a Box by `spawn`; its thread
            // has exited, and the runtime (the only other holder) is
            // letting this worker go.
            drop(unsafe { Box::from_raw(self.slot as *const WorkerState as *mut WorkerState) });
        }
    }
}

/// What a task sees of its worker.
pub struct WorkerEnv<'a> {
    pub index: usize,
    pub ctx: &'a ContextHeap,
}

pub(crate) fn spawn(
    rt: &'static ControlBlock,
    index: usize,
    name: String,
) -> Result<Worker, crate::error::Error> {
    let slot: &'static WorkerState = Box::leak(Box::new(WorkerState::new(rt.policy)));
    slot.deferred
        .prepare()
        .map_err(|source| crate::error::Error::Os {
            context: "mapping a deferred-free list",
            source,
        })?;
    if rt.policy == OnViolation::Rollback {
        slot.undo
            .prepare()
            .map_err(|source| crate::error::Error::Os {
                context: "mapping an undo log",
                source,
            })?;
    }
    slot.stack
        .prepare()
        .map_err(|source| crate::error::Error::Os {
            context: "mapping a stack copy area",
            source,
        })?;
    slot.events
        .store(&rt.events as *const _ as *mut _, Ordering::Release);
    slot.parked
        .store(&rt.parked as *const _ as *mut _, Ordering::Release);
    let start_epoch = rt.epoch.load(Ordering::Acquire);
    let ctx = ContextHeap::new()?;
    let ctx_addr = ctx as *const ContextHeap as usize;
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || run(rt, index, slot, ctx, start_epoch))
        .map_err(|e| {
            // No thread took the heap: give its slot back.
            ctx.retire();
            crate::error::Error::Os {
                context: "spawning a worker thread",
                source: os::OsError {
                    call: "pthread_create",
                    errno: e.raw_os_error().unwrap_or(0),
                },
            }
        })?;
    // Wait until the thread has finished starting: std's thread start-up
    // writes shared bookkeeping (its thread-info map) that may live in a
    // guarded heap, so no phase may begin before it is done.
    while slot.started.load(Ordering::Acquire) == 0 {
        os::futex_wait(&slot.started, 0, None);
    }
    Ok(Worker {
        slot,
        thread: Some(thread),
        reported: false,
        ctx_addr,
    })
}

fn run(
    rt: &'static ControlBlock,
    index: usize,
    slot: &'static WorkerState,
    ctx: &'static ContextHeap,
    mut seen: u32,
) {
    // The handler must never run on a small stack: AVX-512 state alone
    // takes several KiB of the signal frame.
    let _alt = os::AltStack::install(trap::alt_stack_size());
    // Stack copies for backtraces end here: frames above this one are the
    // thread's start-up, never the user's.
    let top_marker = 0u64;
    slot.stack
        .set_top(core::hint::black_box(&top_marker) as *const u64 as usize);
    slot.tid.store(os::gettid(), Ordering::Release);
    guard::set_current_worker(Some(slot));
    ctx.set_owner();
    global::set_context(core::ptr::null());
    slot.started.store(1, Ordering::Release);
    os::futex_wake(&slot.started, 1);
    loop {
        os::wait_while_eq(&rt.epoch, seen);
        seen = rt.epoch.load(Ordering::Acquire);
        if rt.shutdown.load(Ordering::Acquire) {
            break;
        }
        let job = rt.job.load(Ordering::Acquire);
        if !job.is_null() {
            // Pass the wake-up on: each worker that starts wakes two more (see
            // Runtime::run_phase).
            os::futex_wake(&rt.epoch, 2);
            slot.begin_job();
            slot.in_phase.store(true, Ordering::Release);
            if let Backend::Pkey(key) = rt.backend {
                // Reads allowed, writes denied (or, in a runtime that
                // guards nothing, both allowed), for this thread only: set
                // both bits explicitly (a thread spawned by one that never
                // had the key would otherwise inherit access-disable too).
                let during = if rt.guards_any {
                    os::Access::Read
                } else {
                    os::Access::ReadWrite
                };
                trap::set_key_access(key, during);
            }
            global::set_context(ctx);
            // SAFETY: main keeps the job alive until every worker has
            // reported the end of this phase (see Runtime::run_phase).
            let job: &JobRef = unsafe { &*job };
            (job.0)(&WorkerEnv { index, ctx });
            global::set_context(core::ptr::null());
            if let Backend::Pkey(key) = rt.backend {
                trap::set_key_access(key, os::Access::ReadWrite);
            }
            slot.in_phase.store(false, Ordering::Release);
            if !slot.end_job() {
                // Main gave up on this job (no progress after a violation,
                // runtime::recovery) and counts this worker as parked.
                trap::abandon::park_abandoned(slot);
            }
        }
        rt.remaining.fetch_sub(1, Ordering::AcqRel);
        rt.events.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&rt.events, i32::MAX);
    }
    guard::set_current_worker(None);
    ctx.retire();
}
