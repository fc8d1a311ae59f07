//! The fault handlers (SIGSEGV and, for single-stepping a store, SIGTRAP).
//!
//! Boring on purpose: they run on an alternate stack (or, where it leaves
//! them too little room, on a spare: `spare.rs`), call only
//! async-signal-safe functions (`write`, `futex`, `mprotect`, `sigaction`,
//! `rt_sigprocmask`; `getpid`, `pread` and `pwrite` to perform a store),
//! never allocate, read only lock-free tables (the
//! guard table and the worker's `const` thread-local state), and chain to
//! the handler that was installed before them (std's stack-overflow
//! detector) for every fault that is not theirs. The only waits are two
//! futex words whose holders run one instruction and its trap, or a
//! thaw's or a replay's few stores, before they let go: the rollback
//! steps' gate (`guard::undo`), then the `mprotect` step lock (`step.rs`),
//! always in that order; a stepping path blocks the asynchronous signals
//! first, so no handler of the program runs inside a step.
//!
//! [`judge`] decides, from the fault alone, what a SIGSEGV is:
//! - not at an address of a guarded heap, or neither `SEGV_ACCERR`
//!   (mprotect) nor `SEGV_PKUERR` (pkey): **not ours**, chained;
//! - a key fault on a **read**: never a violation (frozen memory stays
//!   readable). The reader runs with a PKRU that denies the key — every
//!   signal handler does (the kernel's default), and so does a thread that
//!   predates the key — so read access is **granted** in the saved PKRU
//!   (for a worker in a phase: read only) and the read retries;
//! - a write by a worker inside a phase to a frozen or sealed heap (or any
//!   key fault on a write, since every guarded heap carries the key the
//!   worker's PKRU denies): a **violation**, which the policy handles
//!   (park, abort, or let the store through: on `mprotect` performed by
//!   the handler when it decodes it, `emulate.rs`, else with a single
//!   step);
//! - a key fault on a write by any other thread: write access is
//!   **granted** (main and other threads keep it during phases);
//! - a write by any other thread during an `mprotect` freeze: the store
//!   is **performed** under the step lock when it is a plain move or a
//!   read-modify-write the handler decodes (`emulate.rs`: no page is
//!   opened, so no worker's violating store slips through one; the lock
//!   makes a read-modify-write atomic), else **stepped through** (its
//!   page opened for one instruction under the step lock), so the thread
//!   never waits for a phase that may wait for it; no asynchronous signal
//!   runs its handler inside a step (`step.rs`);
//! - an `mprotect` fault on a read (past the committed prefix), or a write
//!   to a sealed heap by a thread that is no worker: a real crash, chained.

use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::abandon::park_forever;
use super::frame::{is_step_trap, Fault, Frame, SEGV_ACCERR, SEGV_PKUERR};
use super::freeze::{MPROTECT_FROZEN, THAW_EPOCH};
use super::step::{step_lock, step_unlock};
use super::{emulate, report, spare, step, OnViolation, PKEY};
use crate::guard::{self, WorkerState};
use crate::os::{self, OsError};

struct Prev(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written once inside `install` before the handler that reads it
// is installed; read-only afterwards.
unsafe impl Sync for Prev {}

static PREV_SEGV: Prev = Prev(UnsafeCell::new(MaybeUninit::zeroed()));
static PREV_TRAP: Prev = Prev(UnsafeCell::new(MaybeUninit::zeroed()));
static INSTALL: OnceLock<Result<(), OsError>> = OnceLock::new();

/// Installs the handlers once per process, after std's.
///
/// The previous action is read and saved *before* ours is installed, so a
/// fault in another thread at any moment finds a valid action to chain to.
pub(crate) fn install() -> Result<(), OsError> {
    *INSTALL.get_or_init(|| {
        spare::reserve()?;
        for (sig, prev, handler) in [
            (libc::SIGSEGV, &PREV_SEGV, on_segv as os::SigAction),
            (libc::SIGTRAP, &PREV_TRAP, on_trap as os::SigAction),
        ] {
            let old = os::current_handler(sig)?;
            // SAFETY: our handler for `sig` is not installed yet, so nothing
            // reads `prev` concurrently; it is written once.
            unsafe { (*prev.0.get()).write(old) };
            // SAFETY: the handler is async-signal-safe and chains to `prev`.
            unsafe { os::install_handler(sig, handler)? };
        }
        super::abandon::install()
    })
}

thread_local! {
    /// The last fault this thread retried after finding its heap thawed:
    /// (address, thaw epoch). The same pair twice means a real fault.
    static LAST_RETRY: Cell<(usize, u32)> = const { Cell::new((0, u32::MAX)) };
    /// The pages (at most two: a store crossing into the next frozen page)
    /// this thread, no worker of a phase, has open for one stepped store.
    static BYSTANDER_STEP: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// What a SIGSEGV is (see the module comment).
enum Verdict {
    /// Return: the faulting instruction runs again (access was granted,
    /// or the heap has been thawed), or the one after it (the handler
    /// performed the store and moved the frame past it).
    Retry,
    /// A worker's write to a frozen heap.
    Violation(&'static WorkerState),
    /// Someone else's fault: chain to the previous handler.
    NotOurs,
}

unsafe extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel's arguments; `segv` does not unwind.
    if !unsafe { spare::run_if_short(segv, sig, info, ctx) } {
        // SAFETY: the kernel's arguments.
        unsafe { segv(sig, info, ctx) }
    }
}

/// The SIGSEGV handler's body, on the alternate stack or a spare
/// (`spare.rs`).
///
/// # Safety
/// 1. The kernel's arguments for a SIGSEGV.
unsafe extern "C" fn segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: ctx is the ucontext the kernel passed to this handler.
    let mut frame = unsafe { Frame::new(ctx) };
    // SAFETY: info is the kernel's siginfo for this SIGSEGV.
    let fault = unsafe { frame.fault(info) };
    match judge(&fault, &mut frame) {
        Verdict::Retry => {}
        Verdict::Violation(w) => violation(w, &fault, &mut frame),
        // SAFETY: forwarding the kernel's arguments to the previous handler.
        Verdict::NotOurs => unsafe { chain(&PREV_SEGV, sig, info, ctx) },
    }
}

/// Decides what `fault` is; grants key access in `frame` when that is
/// the answer.
fn judge(fault: &Fault, frame: &mut Frame) -> Verdict {
    if fault.code != SEGV_ACCERR && fault.code != SEGV_PKUERR {
        return Verdict::NotOurs;
    }
    let Some(entry) = guard::entry_of(fault.addr) else {
        return Verdict::NotOurs;
    };
    if !entry.is_committed(fault.addr) {
        // Above the heap's committed prefix: the reserved rest of its
        // range (`PROT_NONE`), no memory of the heap. A store there is the
        // program's fault, frozen or not, as it is outside a phase; until
        // 2026-12-07 a bystander's was performed (the kernel's forced write
        // through /proc/self/mem lands in a `PROT_NONE` page too) or
        // stepped (its page opened), and a worker's judged a violation:
        // the store landed in a page nobody had committed or charged,
        // which the heap takes for zeroes when it commits it.
        return Verdict::NotOurs;
    }
    let worker = guard::current_worker().filter(|w| w.in_phase.load(Ordering::Acquire));
    if fault.code == SEGV_PKUERR {
        let key = PKEY.load(Ordering::Relaxed);
        let access = match (fault.write, worker) {
            (true, Some(w)) => return Verdict::Violation(w),
            (false, Some(_)) => os::Access::Read,
            (_, None) => os::Access::ReadWrite,
        };
        return if frame.set_key_access(key, access) {
            Verdict::Retry
        } else {
            Verdict::NotOurs
        };
    }
    if !fault.write {
        // Frozen pages stay readable: an mprotect fault on a read is an
        // out-of-bounds read into the uncommitted part of a region.
        return Verdict::NotOurs;
    }
    let (frozen, sealed) = (entry.is_frozen(), entry.is_sealed());
    if let Some(w) = worker {
        if frozen || sealed {
            return Verdict::Violation(w);
        }
    }
    if sealed {
        return Verdict::NotOurs;
    }
    if frozen && MPROTECT_FROZEN.load(Ordering::Acquire) > 0 {
        // Not a worker of a phase: its store is legal. Waiting for the
        // thaw could wait forever (a task may be waiting for this thread),
        // so the store is stepped through: its page opened for one
        // instruction under the step lock, which the thaw takes too.
        // No signal may run its handler inside the step (step.rs).
        step::hold_now();
        step_lock();
        if entry.is_frozen() {
            // A store decoded here is performed for the thread, its page
            // never opened (emulate.rs): no worker's store can slip
            // through an open page meanwhile. Not inside this thread's own
            // step (a second fault of a stepped instruction).
            if BYSTANDER_STEP.with(|c| c.get()) == (0, 0) {
                if let Some(store) = emulate::plan(fault.addr, frame) {
                    if store.perform(frame) {
                        step_unlock();
                        // Past the instruction: it does not run again.
                        return Verdict::Retry;
                    }
                }
            }
            let page = fault.addr & !(os::page_size() - 1);
            // SAFETY: the page is inside a committed, frozen guarded heap;
            // it is protected again at the trap, under the same lock.
            if unsafe { os::protect(page as *mut u8, os::page_size(), os::Access::ReadWrite) }
                .is_ok()
            {
                BYSTANDER_STEP.with(|c| {
                    let (first, _) = c.get();
                    c.set(if first == 0 { (page, 0) } else { (first, page) });
                });
                step::arm(frame);
                return Verdict::Retry;
            }
        }
        step_unlock();
        return Verdict::Retry;
    }
    // Not frozen now: a thaw opened the page since the fault (retry), or
    // the page is protected for a reason of the program's own (a real
    // crash). Told apart by the thaw epoch, read with the marks under the
    // step lock, which an `mprotect` thaw holds while it opens its heaps,
    // clears their marks and bumps the epoch: a second fault at the same
    // address in the same epoch, the heap still not frozen, cannot be a
    // phase's (a freeze that protected the page since would have marked
    // the heap first, and only a thaw, which bumps the epoch, unmarks
    // it). Until 2026-12-06 the epoch was read without the lock, after
    // the marks, and bumped after the lock was let go: a bystander's
    // store that retried after one phase's thaw read the marks cleared by
    // the next phase's thaw and the epoch not yet bumped, was taken for a
    // crash, and SIGSEGV's default action killed the process at the next
    // fault of any thread (3 runs in 70 of `recovery counter 3000` on
    // mprotect under load).
    let (frozen_now, epoch) = step::under_step_lock(|| {
        let frozen = guard::entry_of(fault.addr).is_some_and(|e| e.is_frozen())
            && MPROTECT_FROZEN.load(Ordering::Acquire) > 0;
        (frozen, THAW_EPOCH.load(Ordering::Acquire))
    });
    if frozen_now {
        // Frozen again since: the store faults again and is judged so.
        return Verdict::Retry;
    }
    if LAST_RETRY.with(|c| c.replace((fault.addr, epoch))) != (fault.addr, epoch) {
        return Verdict::Retry;
    }
    Verdict::NotOurs
}

/// Whether the heap holding `addr` is still frozen (checked under the
/// step lock: the thaw lowers its count under that lock, after it opened
/// the pages; its `mprotect` count goes down before, while they are still
/// protected) or sealed (no thaw ever opens it, and a store that retried
/// would fault again for ever).
fn still_protected(addr: usize) -> bool {
    guard::entry_of(addr).is_some_and(|e| e.is_frozen() || e.is_sealed())
}

/// Handles a worker's write to a frozen heap according to its policy.
fn violation(w: &WorkerState, fault: &Fault, frame: &mut Frame) {
    // The handler runs on the faulting worker: its own current item.
    let item = guard::current_item();
    match w.policy() {
        OnViolation::Audit => {
            // No signal may run its handler inside the step (step.rs).
            step::hold_now();
            let key = PKEY.load(Ordering::Relaxed);
            if fault.code != SEGV_PKUERR {
                // Under the step lock, as every other `mprotect` step: a
                // thaw must not open the heap while the page is open (the
                // trap would protect it again after), and one that ran
                // while this store waited leaves it to retry.
                step_lock();
                if !still_protected(fault.addr) {
                    step_unlock();
                    return;
                }
                // Performed without opening the page (emulate.rs).
                if !w.undo.is_pending() && w.step_page.load(Ordering::Relaxed) == 0 {
                    if let Some(store) = emulate::plan(fault.addr, frame) {
                        if store.perform(frame) {
                            step_unlock();
                            record(w, fault, item);
                            return;
                        }
                    }
                }
            }
            if step::open(w, fault.addr, fault.code, key, frame) {
                record(w, fault, item);
            } else {
                step_unlock();
                // The store cannot be let through alone: cancel the task.
                park(w, fault, item)
            }
        }
        OnViolation::Abort => {
            let mut buf = [0u8; 1024];
            os::write_stderr(report::render_raw(
                &mut buf,
                fault.addr,
                fault.ip,
                os::gettid(),
                item,
                fault.code,
                "policy abort: dying with SIGSEGV",
            ));
            os::reset_to_default(libc::SIGSEGV);
            // Returning re-executes the store, which now kills the process
            // with SIGSEGV (and a core dump where enabled).
        }
        OnViolation::Cancel => {
            capture_stack(w, fault, frame);
            park(w, fault, item)
        }
        OnViolation::Rollback => rollback(w, fault, frame, item),
    }
}

/// The bytes a store faulting at `addr` may change, which the rollback
/// policy saves before letting it through: on `mprotect` the whole page
/// (only that page is opened, but for every thread, so the diff after the
/// step catches any store that went through it); with a key, the 128 bytes
/// around the address (x86 stores write at most 64 bytes from their start,
/// and the opening is for this thread alone), within its page and the next
/// one unless that is exempt, outside the heap or above its committed range.
fn window(addr: usize, pkey: bool) -> (usize, usize) {
    let page = os::page_size();
    let page_lo = addr & !(page - 1);
    if !pkey {
        return (page_lo, page);
    }
    let lo = addr.saturating_sub(63).max(page_lo);
    let mut hi = addr + 64;
    let next = page_lo + page;
    if hi > next {
        let entry = guard::entry_of(addr);
        let same_heap = guard::entry_of(next)
            .zip(entry)
            .is_some_and(|(a, b)| core::ptr::eq(a, b));
        // The next page may lie above the heap's committed range
        // (`PROT_NONE`): a store to a block's last bytes at the range's end
        // had the copy read it, and the process died of SIGSEGV here.
        let committed = entry.is_some_and(|e| e.is_committed(next));
        if !same_heap || !committed || super::freeze::exempt(next) {
            hi = next;
        }
    }
    (lo, hi - lo)
}

/// The rollback policy: save what the store may overwrite, let it through
/// for one instruction (the trap then records what changed), and let the
/// task run on. A store the worker's log has no room for is let through
/// all the same, and the log marked overflowed: the runtime then keeps
/// every store of the phase, as under audit, rather than undo part of
/// them. Until 2026-12-06 such a task was cancelled, its thread parked
/// holding its locks: a task that filled its log under a `Mutex` left
/// main blocked on that lock for good (a user's trial), and two threads a
/// phase were lost until the runtime had none left.
fn rollback(w: &WorkerState, fault: &Fault, frame: &mut Frame, item: usize) {
    // No signal may run its handler between here and the step's trap: its
    // own store would step over this one's state (step.rs).
    step::hold_now();
    let pkey = fault.code == SEGV_PKUERR;
    let key = PKEY.load(Ordering::Relaxed);
    // One rollback step at a time in the process, the gate before the step
    // lock (guard::undo).
    w.undo.enter_gate();
    if pkey {
        // The handler runs with every key but 0 closed: open ours for
        // reading, to copy the window (the interrupted code's PKRU comes
        // back from the frame on return).
        super::set_key_access(key, os::Access::Read);
    } else {
        step_lock();
        if !w.undo.is_pending() && !still_protected(fault.addr) {
            // A thaw ran while this store waited (another runtime's phase
            // froze the heap): nothing is frozen here now, so the store
            // retries and lands. Stepped, its trap would protect the page
            // again in a heap no phase freezes, and the next store to it
            // would be taken for a crash.
            w.undo.abandon_pending();
            step_unlock();
            return;
        }
    }
    // The copy is taken at the worker's first violating store of the
    // phase (it refuses while one is held: the runtime releases it as it
    // reads the records), which is the record the report gives the
    // backtrace.
    capture_stack(w, fault, frame);
    // A second fault of the instruction being stepped (its store crosses
    // into the next frozen page) is the same store: one record.
    let nested = w.undo.is_pending();
    if !pkey && !nested && w.step_page.load(Ordering::Relaxed) == 0 {
        // Performed without opening the page (emulate.rs): the window is
        // exactly the bytes the store writes, saved before it, recorded
        // after it, as a step's diff would be; no other thread's store
        // can land inside it (the page stays read-only, and the bytes
        // change under the step lock and the gate only).
        if let Some(store) = emulate::plan(fault.addr, frame) {
            // SAFETY: the store's bytes lie in the committed part of the
            // faulting guarded heap (`emulate::plan`: in the faulting page,
            // or a plain move across two), readable now (frozen pages are
            // read-only) and mapped until the thaw.
            let saved = unsafe { w.undo.begin(store.addr, store.width) }
                == crate::guard::undo::Begin::Saved;
            if !saved {
                // No room: performed all the same, and the phase keeps
                // its stores (below).
                log_full(w);
            }
            if store.perform(frame) {
                if saved {
                    // SAFETY: as for `begin` above.
                    unsafe { w.undo.finish() };
                }
                step_unlock();
                record(w, fault, item);
                return;
            }
            // Refused: nothing written. Stepped below, under the same gate.
            if saved {
                w.undo.drop_pending();
            }
        }
    }
    let (lo, len) = window(fault.addr, pkey);
    // SAFETY: the window lies in a committed guarded heap, readable now
    // (frozen pages are read-only; the key is open for reading above), and
    // stays mapped until the thaw (no heap shrinks during a phase).
    if unsafe { w.undo.begin(lo, len) } == crate::guard::undo::Begin::Full {
        // The step lock, under `mprotect`, goes with the step as the
        // audit policy's does.
        log_full(w);
    }
    if !step::open(w, fault.addr, fault.code, key, frame) {
        // Never let through: the park's record is its only one. The window
        // begun above is dropped now, and with it the pkey steps' gate
        // (guard::undo), which other workers' steps wait for inside this
        // handler, where the abandon signal cannot reach them (step.rs).
        w.undo.abandon_pending();
        step_unlock();
        park(w, fault, item);
    }
    if !nested {
        record(w, fault, item);
    }
}

/// A store of `w` found no room in its undo log: nothing of its
/// instruction is saved (a window its first fault began is dropped), the
/// gate goes (the store needs none: the phase keeps its stores, as under
/// audit), and the log is marked overflowed, said on stderr the first time
/// in the phase.
fn log_full(w: &WorkerState) {
    w.undo.abandon_pending();
    if w.undo.overflow() {
        os::write_stderr(
            b"frostheap: the undo log of a worker is full: the phase keeps its violating stores (as under audit)\n",
        );
    }
}

/// Copies the worker's stack for the report's backtrace, unless the
/// faulting store ran on the alternate signal stack (a handler of the
/// program there, installed with `SA_ONSTACK` or delivered inside this
/// handler before it held the signals back): the report then has the
/// store's address and instruction, and no backtrace. Until 2026-12-06
/// that stack was copied too, from the alternate stack up to the thread's
/// stack top, and where the alternate stack lay right under the thread's
/// stack the copy faulted on the guard page between them: std reported
/// the worker's stack overflowed, and aborted (CI's emulated guest).
fn capture_stack(w: &WorkerState, fault: &Fault, frame: &Frame) {
    if let Some((sp, bp)) = frame.own_stack_regs() {
        // SAFETY: this handler runs on the worker whose stack copy this
        // is, interrupted on its own stack: [sp, top) is intact while it
        // is stopped here.
        unsafe { w.stack.capture(fault.ip, sp, bp) };
    }
}

/// Counts a violating store let through (audit, rollback), and records
/// it if it is one of the phase's first
/// [`AUDIT_RECORDS`](crate::guard::AUDIT_RECORDS) of this worker:
/// the later ones are counted only (a task that made 1,000 stores was
/// reported as 256, the ring's last, and counted so).
fn record(w: &WorkerState, fault: &Fault, item: usize) {
    let n = w.audit_count.fetch_add(1, Ordering::Relaxed) as usize;
    if let Some(rec) = w.audit.get(n) {
        rec.addr.store(fault.addr, Ordering::Relaxed);
        rec.ip.store(fault.ip, Ordering::Relaxed);
        rec.tid.store(os::gettid(), Ordering::Relaxed);
        rec.item.store(item, Ordering::Release);
    }
}

/// The cancel policy: writes the report (the phase may never end if a
/// task waits for a lock this one holds, so the user sees it now),
/// publishes the record, tells the runtime, and parks the thread for good.
/// No Rust frame is unwound or skipped, and the store never happens.
fn park(w: &WorkerState, fault: &Fault, item: usize) -> ! {
    let mut buf = [0u8; 1024];
    os::write_stderr(report::render_raw(
        &mut buf,
        fault.addr,
        fault.ip,
        os::gettid(),
        item,
        fault.code,
        "policy cancel: this task's thread is parked for good and the store did not happen; \
         locks the task holds stay held (the phase ends with Err(Violation))",
    ));
    let r = &w.record;
    r.addr.store(fault.addr, Ordering::Relaxed);
    r.ip.store(fault.ip, Ordering::Relaxed);
    r.tid.store(os::gettid(), Ordering::Relaxed);
    r.code.store(fault.code as u32, Ordering::Relaxed);
    r.item.store(item, Ordering::Relaxed);
    r.state.store(1, Ordering::Release);
    park_forever(w)
}

unsafe extern "C" fn on_trap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel's arguments; `trap` does not unwind.
    if !unsafe { spare::run_if_short(trap, sig, info, ctx) } {
        // SAFETY: the kernel's arguments.
        unsafe { trap(sig, info, ctx) }
    }
}

/// The SIGTRAP handler's body, on the alternate stack or a spare
/// (`spare.rs`).
///
/// # Safety
/// 1. The kernel's arguments for a SIGTRAP.
unsafe extern "C" fn trap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    // SAFETY: ctx is the ucontext the kernel passed to this handler.
    let mut frame = unsafe { Frame::new(ctx) };
    let step_end = is_step_trap(code, &frame);
    if step_end {
        let (first, second) = BYSTANDER_STEP.with(|c| c.replace((0, 0)));
        if first != 0 {
            for p in [first, second] {
                if p != 0 {
                    // SAFETY: opened by `judge` for this step; still frozen
                    // (the thaw waits for the step lock we hold).
                    let _ = unsafe { os::protect(p as *mut u8, os::page_size(), os::Access::Read) };
                }
            }
            step::disarm(&mut frame);
            step_unlock();
            return;
        }
    }
    if let Some(w) = guard::current_worker() {
        if step_end && step::close(w, &mut frame) {
            if w.undo.is_pending() {
                // Rollback: access is closed again; record what the step
                // changed. (With a key, open it for reading here first:
                // this handler, too, runs with every key but 0 closed.)
                super::set_key_access(PKEY.load(Ordering::Relaxed), os::Access::Read);
                // SAFETY: the windows begun by `rollback` are still mapped
                // and readable.
                unsafe { w.undo.finish() };
            }
            // Rollback's and audit's `mprotect` steps hold the lock (a
            // no-op for a step that does not).
            step_unlock();
            return;
        }
    }
    // SAFETY: forwarding the kernel's arguments.
    unsafe { chain(&PREV_TRAP, sig, info, ctx) }
}

/// Calls the previously installed action for a signal that is not ours.
///
/// # Safety
/// 1. The arguments are the kernel's for the current signal.
unsafe fn chain(prev: &Prev, sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: written during install, before our handler could run.
    let prev = unsafe { (*prev.0.get()).assume_init_ref() };
    let h = prev.sa_sigaction;
    // The kernel runs a handler with every protection key but 0 closed:
    // the previous handler (std's, which reads its threads' guard pages
    // from a map the main heap holds) would fault on our key's pages
    // inside itself. Open ours, as the thread has it outside phases; the
    // interrupted code's own rights come back from the frame on return.
    super::set_key_access(super::PKEY.load(Ordering::Relaxed), os::Access::ReadWrite);
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // Restore the default and return: the fault repeats and the
        // default action (terminate, core dump) takes place.
        os::reset_to_default(sig);
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler expects exactly these arguments.
        let f: os::SigAction = unsafe { core::mem::transmute::<usize, os::SigAction>(h) };
        // SAFETY: by (1).
        unsafe { f(sig, info, ctx) };
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) =
            unsafe { core::mem::transmute::<usize, extern "C" fn(libc::c_int)>(h) };
        f(sig);
    }
}
