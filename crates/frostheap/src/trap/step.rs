//! Letting one faulting store through: open write access for that store,
//! run exactly one instruction (the trap flag), close access again.
//!
//! The audit policy uses it to log a violating store and let it land;
//! anything that must see or undo a store (a rollback log copies the bytes
//! first) opens the step the same way. With protection keys the opening
//! is the PKRU saved in the signal frame, so it holds for the faulting
//! thread alone. With `mprotect` it is the page itself, open to every
//! thread for that one instruction: another worker's store to the same
//! page in that window lands unseen (a documented limit), which is why a
//! store the handler can decode (a plain move or a read-modify-write) is
//! performed instead (`emulate.rs`) and only the others come here.
//!
//! Both halves run inside signal handlers (SIGSEGV opens, SIGTRAP closes)
//! and touch only the worker's own state and the frame. On `mprotect`,
//! steps that must not overlap (rollback's, and those of threads that are
//! no workers) hold the [`step_lock`], which the thaw takes too.
//!
//! **No signal inside a step.** A step is one per thread: its state (the
//! open page or key, the rollback window being recorded) lives in the
//! thread's worker state from the SIGSEGV that opens it to the SIGTRAP
//! that closes it. An asynchronous signal delivered in between (on the
//! return from the SIGSEGV handler, before the store) ran the program's
//! handler with the trap flag saved; a store of that handler into a
//! guarded heap then opened and closed a step of its own over the first
//! one's state, and the first one's trap found nothing armed, was passed
//! on as not ours, and killed the process with SIGTRAP (a user's trial, a
//! SIGPROF handler on a 1 ms timer storing into a `Box` while two tasks
//! made violating stores: 10 runs of 10 killed, 3 of them after a phase
//! whose `Err` left a store not undone). So the paths that step block the
//! asynchronous signals for the rest of their handler ([`hold_now`]) and
//! in the frame the stepped instruction resumes with ([`arm`], which sets
//! the trap flag too); the trap puts the interrupted code's mask back
//! ([`disarm`]),
//! and a pending signal is delivered then, one instruction late.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

use super::frame::{Frame, SEGV_PKUERR};
use crate::guard::WorkerState;
use crate::os;

/// Bit of signal `sig` in the kernel's 64-bit signal set.
const fn sig_bit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// Signals a step never holds back: the synchronous ones a store raises
/// (its second fault, when it crosses into the next frozen page; SIGBUS),
/// the step's own trap, and glibc's two internal signals (32, thread
/// cancellation, and 33, `setuid` across threads, whose sender waits for
/// every thread to answer: a worker parked for good inside this handler
/// must still answer it). Every other signal is held back.
const HELD: u64 = !(SYNCHRONOUS | sig_bit(32) | sig_bit(33));

/// The synchronous signals a store or its step raises.
const SYNCHRONOUS: u64 = sig_bit(libc::SIGSEGV)
    | sig_bit(libc::SIGBUS)
    | sig_bit(libc::SIGILL)
    | sig_bit(libc::SIGFPE)
    | sig_bit(libc::SIGTRAP);

thread_local! {
    /// The signal mask the interrupted code had when this thread's step
    /// began to hold signals back, restored at the step's trap.
    static HELD_FROM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Blocks the asynchronous signals for the rest of the calling handler:
/// called first by every path that may open a step, before it changes any
/// step state. (A signal that came before this ran its handler to the end,
/// any step of its own included, before this handler went on.)
pub(crate) fn hold_now() {
    os::block_signals(HELD);
}

/// The asynchronous signals blocked on the calling thread while this
/// lives (outside the handlers: the thaw, which holds the step lock, a
/// lock a handler's own store on this thread would take again, re-entrant,
/// and its step's trap let go in the middle of the thaw).
pub(crate) struct SignalsHeld(u64);

impl SignalsHeld {
    pub(crate) fn new() -> SignalsHeld {
        SignalsHeld(os::block_signals(HELD))
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        os::set_signal_mask(self.0);
    }
}

/// Arms the step in `frame`: the trap flag, and the asynchronous signals
/// blocked for the instruction about to be stepped, remembering the mask
/// to restore at its trap. A second fault of the same instruction finds
/// the signals held already.
pub(crate) fn arm(frame: &mut Frame) {
    frame.set_single_step(true);
    if HELD_FROM.with(|c| c.get()).is_none() {
        let mask = frame.signal_mask();
        HELD_FROM.with(|c| c.set(Some(mask)));
        // The synchronous signals open even if the interrupted code had
        // them blocked: a step's trap that finds SIGTRAP blocked is sent
        // to its default action, which kills.
        frame.set_signal_mask((mask | HELD) & !SYNCHRONOUS);
    }
}

/// At the trap that ends a step: the interrupted code resumes without the
/// trap flag and with the mask it had before the step.
pub(crate) fn disarm(frame: &mut Frame) {
    frame.set_single_step(false);
    if let Some(mask) = HELD_FROM.with(|c| c.take()) {
        frame.set_signal_mask(mask);
    }
}

/// Opens write access for the store that faulted at `addr` (with
/// `si_code` `code`) and arms the trap flag, recording in `w` what
/// [`close`] must undo. False if access could not be opened (the store
/// then faults again).
pub(crate) fn open(w: &WorkerState, addr: usize, code: i32, key: u32, frame: &mut Frame) -> bool {
    let opened = if code == SEGV_PKUERR {
        let ok = frame.set_key_access(key, os::Access::ReadWrite);
        if ok {
            w.step_key.store(key, Ordering::Relaxed);
        }
        ok
    } else {
        let page = addr & !(os::page_size() - 1);
        // SAFETY: the page is inside a committed guarded heap (the fault
        // was an access error on it); it is made writable for one store
        // and protected again by `close`, before the worker's task goes on.
        let ok =
            unsafe { os::protect(page as *mut u8, os::page_size(), os::Access::ReadWrite) }.is_ok();
        if ok {
            // A second fault of the same instruction (the store crosses
            // into the next frozen page) keeps the first page open too:
            // both close together at the trap.
            if w.step_page.load(Ordering::Relaxed) == 0 {
                w.step_page.store(page, Ordering::Relaxed);
            } else {
                w.step_page2.store(page, Ordering::Relaxed);
            }
        }
        ok
    };
    if opened {
        arm(frame);
    }
    opened
}

/// Closes the step [`open`] armed on this worker, at a trap that ends a
/// single step ([`super::frame::is_step_trap`]): protects the page again
/// or restores the key's write-disable bit, and clears the trap flag.
/// False if no step is armed: the trap is not ours.
pub(crate) fn close(w: &WorkerState, frame: &mut Frame) -> bool {
    let page = w.step_page.swap(0, Ordering::Relaxed);
    let page2 = w.step_page2.swap(0, Ordering::Relaxed);
    let key = w.step_key.swap(0, Ordering::Relaxed);
    if page == 0 && key == 0 {
        return false;
    }
    for p in [page, page2] {
        if p != 0 {
            // SAFETY: the page was opened by `open` and is still inside the
            // frozen heap: main cannot thaw while this worker is in its task.
            let _ = unsafe { os::protect(p as *mut u8, os::page_size(), os::Access::Read) };
        }
    }
    if key != 0 {
        frame.set_key_access(key, os::Access::Read);
    }
    disarm(frame);
    true
}

/// The `mprotect` backend's step lock: the tid of the thread whose step
/// has a page open, 0 when none. One step at a time, so no snapshot is
/// taken while another step's page is open, and a store another thread
/// makes through an open page lands in that step's diff (docs/rollback.md).
/// Re-entrant: a store crossing into a second frozen page faults again
/// inside its own step.
static STEP_LOCK: AtomicU32 = AtomicU32::new(0);

/// Takes the step lock (a futex wait inside the handler: the holder only
/// runs one instruction and its trap before it lets go).
pub(crate) fn step_lock() {
    let me = os::gettid();
    loop {
        match STEP_LOCK.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return,
            Err(holder) if holder == me => return,
            Err(holder) => os::futex_wait(&STEP_LOCK, holder, None),
        }
    }
}

/// The step lock's address, the futex a thread waiting for another's step
/// sleeps on (integration tests: a bystander seen in `futex` there is
/// waiting for another step, not for the thaw).
pub fn step_lock_address() -> usize {
    &STEP_LOCK as *const AtomicU32 as usize
}

/// Runs `f` holding the step lock, with the asynchronous signals held
/// (a handler's store on this thread would take the lock again), and lets
/// the lock go after unless the calling thread held it already (inside
/// its own step).
pub(crate) fn under_step_lock<R>(f: impl FnOnce() -> R) -> R {
    let held_before = STEP_LOCK.load(Ordering::Relaxed) == os::gettid();
    let _signals = SignalsHeld::new();
    step_lock();
    let r = f();
    if !held_before {
        step_unlock();
    }
    r
}

/// Lets the step lock go if the calling thread holds it.
pub(crate) fn step_unlock() {
    if STEP_LOCK
        .compare_exchange(os::gettid(), 0, Ordering::Release, Ordering::Relaxed)
        .is_ok()
    {
        os::futex_wake(&STEP_LOCK, i32::MAX);
    }
}
