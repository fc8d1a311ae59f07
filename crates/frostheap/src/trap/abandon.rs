//! Abandoning a task that can never finish: the worker is stopped for
//! good, like a cancelled violator, so that the phase can end.
//!
//! Under `cancel` a violating task's thread is parked with every lock it
//! holds. Another task that waits for one of those locks waits forever,
//! and so would the phase. When the runtime sees no progress for its
//! timeout after such a violation (`runtime::recovery`), it abandons the
//! workers still in the phase: [`abandon`] marks the worker's job
//! abandoned and sends it [`SIGNAL`]; the worker's handler ([`on_signal`])
//! parks the thread inside the handler, exactly where the signal found it
//! (most likely inside the `futex` wait of the lock). No Rust frame is
//! unwound or skipped and the task never runs again, so nothing it borrowed
//! from the phase (the job, the items, main's stack) is touched after the
//! phase returns. A worker that finishes its job before the signal arrives
//! parks at the job's end instead ([`park_abandoned`]). [`park_forever`],
//! which stops a thread for good, is also the cancel policy's (`handler`).
//!
//! The signal is `SIGURG`: its default action is to ignore it, and programs
//! rarely use it (it reports out-of-band socket data); the Go runtime
//! chose it for preemption for the same reasons. The handler claims only a
//! `tgkill` from this process to a worker whose job is abandoned, and
//! hands anything else to the action installed before it.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::Ordering;

use crate::guard::{self, WorkerState};
use crate::os::{self, OsError};

/// The signal that stops an abandoned worker.
pub(crate) const SIGNAL: libc::c_int = libc::SIGURG;

/// `si_code` of a signal sent with `tgkill`.
const SI_TKILL: i32 = -6;

struct Prev(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written once inside `install` before the handler that reads it
// is installed; read-only afterwards.
unsafe impl Sync for Prev {}

static PREV: Prev = Prev(UnsafeCell::new(MaybeUninit::zeroed()));

/// Installs the handler (once per process, from `handler::install`, which
/// serialises it): the previous action is saved before ours goes in.
pub(super) fn install() -> Result<(), OsError> {
    let old = os::current_handler(SIGNAL)?;
    // SAFETY: our handler is not installed yet, so nothing reads PREV
    // concurrently; it is written once (install runs once per process).
    unsafe { (*PREV.0.get()).write(old) };
    // SAFETY: the handler is async-signal-safe and chains to PREV.
    unsafe { os::install_handler(SIGNAL, on_signal)? };
    Ok(())
}

/// Abandons the job worker `w` runs (main thread): true if it was running
/// one, in which case the worker parks for good and counts as parked.
/// `tid` is the worker's thread.
pub(crate) fn abandon(w: &WorkerState, tid: u32) -> bool {
    if !w.abandon() {
        return false;
    }
    w.abandoned.store(true, Ordering::Release);
    nudge(tid);
    true
}

/// Sends the abandon signal to worker thread `tid` again (its job was
/// abandoned, but it has not parked yet: the first signal may have come
/// while it was blocked).
pub(crate) fn nudge(tid: u32) {
    // A worker thread of this process never exits while a phase runs, so
    // the tid is still its.
    let _ = os::tgkill(tid, SIGNAL);
}

/// Called by a worker at the end of its job when [`WorkerState::end_job`]
/// found it abandoned: parks the calling thread for good.
pub(crate) fn park_abandoned(w: &WorkerState) -> ! {
    if w.claim_abandoned_park() {
        // Between tasks: no item of the phase is held.
        w.record.item.store(usize::MAX, Ordering::Relaxed);
        park_forever(w)
    }
    // The handler claimed it first; it never returns, so this is
    // unreachable in practice, but the thread must not go on either way.
    loop {
        os::futex_wait(&w.park_word, 0, None);
    }
}

unsafe extern "C" fn on_signal(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo; si_pid is set for a
    // signal sent with tgkill (SI_TKILL).
    let (code, pid) = unsafe { ((*info).si_code, (*info).si_pid()) };
    if code == SI_TKILL && pid == os::getpid() {
        if let Some(w) = guard::current_worker() {
            if w.claim_abandoned_park() {
                // The item its task was running stays with the stopped
                // stack: the runtime must never drop it.
                w.record
                    .item
                    .store(guard::current_item(), Ordering::Relaxed);
                park_forever(w);
            }
            // Ours, but the job already ended (or is parking): ignore.
            return;
        }
    }
    // SAFETY: written during install, before our handler could run.
    let prev = unsafe { (*PREV.0.get()).assume_init_ref() };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SIGURG's default action is to ignore it.
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler expects exactly these arguments.
        let f: os::SigAction = unsafe { core::mem::transmute::<usize, os::SigAction>(h) };
        // SAFETY: forwarding the kernel's arguments for this signal.
        unsafe { f(sig, info, ctx) };
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) =
            unsafe { core::mem::transmute::<usize, extern "C" fn(libc::c_int)>(h) };
        f(sig);
    }
}

/// Marks `w` parked, tells its runtime (the parked count, then an event),
/// and stops the calling thread (`w`'s own) for good: a futex wait on a
/// word that never changes. Async-signal-safe.
pub(super) fn park_forever(w: &WorkerState) -> ! {
    // A worker parked here is never abandoned later (its job is over).
    w.job.store(guard::JOB_PARKED, Ordering::Release);
    w.is_parked.store(true, Ordering::Release);
    let parked = w.parked.load(Ordering::Acquire);
    // SAFETY: the runtime's counters outlive its workers' states (a
    // runtime with parked workers leaks its control block).
    if let Some(parked) = unsafe { parked.as_ref() } {
        parked.fetch_add(1, Ordering::AcqRel);
    }
    let events = w.events.load(Ordering::Acquire);
    // SAFETY: as above.
    if let Some(events) = unsafe { events.as_ref() } {
        events.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(events, i32::MAX);
    }
    loop {
        os::futex_wait(&w.park_word, 0, None);
    }
}
