//! Worker threads.
//!
//! A worker is a std thread spawned inside `unguarded` (so its `Thread`
//! handle, name and channels live in system memory) that owns an
//! alternate signal stack of at least 64 KiB, a [`WorkerState`] the fault
//! handler reads, and a context heap. It sleeps on the runtime's phase
//! epoch (a futex), runs the published job when the epoch moves, and
//! reports completion through the runtime's event word.
//!
//! **The start gate.** A worker enters a phase through the phase's gate
//! word ([`ControlBlock::gate`]): the phase's epoch, a closed bit, and the
//! count of its workers that have not started it. A worker takes one off
//! the count before it touches anything of the phase (the job, its
//! protection-key access, its phase marks); a worker that has run a job
//! whose claims are dynamic ([`JobRef::skippable`]) closes the gate when
//! it is done, and counts every worker still waiting as finished in
//! `remaining`: any of them would have found no chunk left to claim. A
//! worker that finds the gate closed (or a later phase's gate) skips the
//! phase. So a phase no longer waits for a worker the scheduler has not
//! run yet once the others have drained it: under CPU oversubscription
//! (two `yes` hogs on two CPUs) a worker woken but not yet run held every
//! phase for a time slice of the hogs' (`frostheap-bench`'s `phases`).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::context::ContextHeap;
use crate::guard::{self, WorkerState};
use crate::trap::{self, Backend, OnViolation};
use crate::{global, os};

/// A job as workers see it.
pub(crate) struct JobRef<'a> {
    pub(crate) run: &'a (dyn Fn(&WorkerEnv<'_>) + Sync),
    /// The job's work is claimed dynamically: once one worker has returned
    /// from `run`, a worker that calls it afterwards finds nothing to do
    /// and returns at once, touching nothing (the batch engine's claim
    /// loop: its cursor, budget sum and cancel flag only move forward).
    /// Workers that have not started such a job when one worker finished
    /// it are skipped (see the file's notes). A job that must run on
    /// every worker is not skippable, and its phase waits for all.
    pub(crate) skippable: bool,
}

/// In [`ControlBlock::gate`]: the phase's gate is closed; the workers
/// still waiting were counted as finished and skip the phase.
const GATE_CLOSED: u64 = 1 << 31;
/// In [`ControlBlock::gate`]: the workers that have not started the phase.
const GATE_WAITING: u64 = GATE_CLOSED - 1;

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
    /// Workers of the phase that have neither finished nor been skipped
    /// (parked ones never finish; main counts them apart).
    pub remaining: AtomicU32,
    /// The phase's start gate: `epoch << 32 | GATE_CLOSED? | waiting`,
    /// `waiting` the workers that have not started the phase. Written by
    /// main before the epoch moves ([`ControlBlock::open_gate`]); a worker
    /// takes one off `waiting` to start ([`ControlBlock::enter`]); a worker
    /// that finished a skippable job closes it ([`ControlBlock::close`]).
    /// A worker starts a phase only through it, so `remaining` counts each
    /// worker exactly once: as finished by itself, or as skipped by the
    /// worker that closed the gate.
    pub gate: AtomicU64,
    /// Worker starts skipped, over every phase (the closers add them up).
    pub skipped: AtomicU64,
    /// A test hook ([`hold_worker_start`]): worker index + 1 of a worker
    /// that must not start phases (0: none).
    pub held: AtomicU32,
    pub events: AtomicU32,
    pub parked: AtomicU32,
    pub shutdown: AtomicBool,
    /// Advanced by main after a phase whose stores the rollback policy
    /// undid kept values its tasks made: each worker pins its current
    /// context chunk below its cursor before its next job
    /// (`ContextHeap::pin_current`), where those values may own blocks.
    pub pin_epoch: AtomicU32,
}

impl ControlBlock {
    /// Main, before the epoch moves to `epoch`: the phase's `workers` are
    /// waiting to start it.
    pub(crate) fn open_gate(&self, epoch: u32, workers: u32) {
        debug_assert!(
            u64::from(workers) <= GATE_WAITING,
            "a phase's workers fit the gate's count"
        );
        self.gate.store(
            u64::from(epoch) << 32 | u64::from(workers),
            Ordering::Release,
        );
    }

    /// A worker that saw the phase epoch `seen` starts that phase: `Some`
    /// of the workers still waiting after it, or `None` when the phase is
    /// not `seen`'s any more or its gate was closed (the worker was
    /// counted as finished and must not touch the phase).
    fn enter(&self, seen: u32) -> Option<u32> {
        let mut g = self.gate.load(Ordering::Acquire);
        loop {
            if (g >> 32) as u32 != seen || g & GATE_CLOSED != 0 {
                return None;
            }
            debug_assert!(
                g & GATE_WAITING > 0,
                "an open gate counts every worker that has not started its phase"
            );
            match self
                .gate
                .compare_exchange_weak(g, g - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((g & GATE_WAITING) as u32 - 1),
                Err(now) => g = now,
            }
        }
    }

    /// A worker that has run phase `seen`'s skippable job to its end
    /// closes the gate: returns how many workers were still waiting, now
    /// skipped (0 if none, or if another worker closed it first).
    fn close(&self, seen: u32) -> u32 {
        let mut g = self.gate.load(Ordering::Acquire);
        loop {
            if (g >> 32) as u32 != seen || g & GATE_CLOSED != 0 || g & GATE_WAITING == 0 {
                return 0;
            }
            match self.gate.compare_exchange_weak(
                g,
                (g & !GATE_WAITING) | GATE_CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (g & GATE_WAITING) as u32,
                Err(now) => g = now,
            }
        }
    }
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

/// Test hook: worker `index` of the runtime whose control block is `rt`
/// stops starting phases until released (`None`), as a worker the
/// scheduler does not run would (`__private::runtime`). A worker held
/// when the epoch moves passes its wake-up on, so that the phase does not
/// wait for it, then waits for the release; released, it goes through the
/// gate of the phase it woke for (if still open), or of the next.
pub(crate) fn hold_worker_start(rt: &ControlBlock, index: Option<usize>) {
    rt.held
        .store(index.map_or(0, |i| i as u32 + 1), Ordering::Release);
    if index.is_none() {
        os::futex_wake(&rt.held, i32::MAX);
    }
}

/// Worker `index`, held by [`hold_worker_start`]: hands its wake-up to
/// another worker and waits for the release (or the runtime's shutdown).
#[cold]
fn hold(rt: &ControlBlock, index: usize) {
    os::futex_wake(&rt.epoch, 1);
    let me = index as u32 + 1;
    while rt.held.load(Ordering::Acquire) == me && !rt.shutdown.load(Ordering::Acquire) {
        os::futex_wait(&rt.held, me, Some(10_000_000));
    }
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
    let mut pins_seen = rt.pin_epoch.load(Ordering::Acquire);
    loop {
        os::wait_while_eq(&rt.epoch, seen);
        seen = rt.epoch.load(Ordering::Acquire);
        if rt.shutdown.load(Ordering::Acquire) {
            break;
        }
        if rt.held.load(Ordering::Relaxed) == index as u32 + 1 {
            hold(rt, index);
        }
        // Through the gate, or not at all: a skipped worker was counted as
        // finished, and the phase (its job, main's stack) may be gone.
        let Some(waiting) = rt.enter(seen) else {
            continue;
        };
        let job = rt.job.load(Ordering::Acquire);
        let mut skipped = 0;
        if !job.is_null() {
            // Pass the wake-up on: each worker that starts wakes two more
            // (see Runtime::run_phase), while any are still waiting.
            if waiting > 0 {
                os::futex_wake(&rt.epoch, 2);
            }
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
            // Before the job's first allocation: the values a rolled-back
            // phase kept stay where they are, and the current chunk starts
            // over if main freed every block in it since the last job.
            let pins = rt.pin_epoch.load(Ordering::Acquire);
            // SAFETY: this thread owns `ctx` (set_owner above).
            unsafe {
                if pins != pins_seen {
                    pins_seen = pins;
                    ctx.pin_current();
                }
                ctx.reuse_current_if_freed();
            }
            global::set_context(ctx);
            // SAFETY: main keeps the job alive until every worker has
            // reported the end of this phase or been skipped (see
            // Runtime::run_phase); this one started it, so it counts in
            // `remaining` until the decrement below.
            let job: &JobRef = unsafe { &*job };
            (job.run)(&WorkerEnv { index, ctx });
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
            if job.skippable {
                // Every chunk is claimed: the workers that have not
                // started would find none. They skip the phase.
                skipped = rt.close(seen);
                if skipped > 0 {
                    rt.skipped.fetch_add(u64::from(skipped), Ordering::Relaxed);
                }
            }
        }
        rt.remaining.fetch_sub(1 + skipped, Ordering::AcqRel);
        rt.events.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&rt.events, i32::MAX);
    }
    guard::set_current_worker(None);
    ctx.retire();
}
