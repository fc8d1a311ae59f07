//! The fault handlers (SIGSEGV and, for audit single-stepping, SIGTRAP).
//!
//! Boring on purpose: they run on an alternate stack, call only
//! async-signal-safe functions (`write`, `futex`, `mprotect`, `sigaction`),
//! never allocate, never lock, read only lock-free tables (the guard table
//! and the worker's `const` thread-local slot), and chain to the handler
//! that was installed before them (std's stack-overflow detector) for
//! every fault that is not theirs.
//!
//! What is "ours": an `SEGV_ACCERR` (mprotect) or `SEGV_PKUERR` (pkey)
//! fault at an address inside a guarded heap. Then:
//! - a worker inside a phase committed a **violation**: the policy decides
//!   (park, abort, or audit by single-stepping the store);
//! - any other thread that writes during an `mprotect` freeze **waits** on
//!   a futex until the thaw, then returns so the store re-executes;
//! - any other thread that lacks access to the key (it existed before the
//!   key was allocated) is **granted** access in its saved PKRU.

use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::Ordering;
use std::sync::OnceLock;

use super::{
    current_worker, guard_of, report, OnViolation, WorkerSlot, MPROTECT_FROZEN, PKEY, THAW_EPOCH,
};
use crate::os::{self, OsError};

const SEGV_ACCERR: i32 = 2;
const SEGV_PKUERR: i32 = 4;
const TRAP_TRACE: i32 = 2;
const EFLAGS_TF: i64 = 0x100;

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
        Ok(())
    })
}

thread_local! {
    /// The last fault this thread retried after finding its heap thawed:
    /// (address, thaw epoch). The same pair twice means a real fault.
    static LAST_RETRY: Cell<(usize, u32)> = const { Cell::new((0, u32::MAX)) };
}

unsafe extern "C" fn on_segv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // A read that faults with SEGV_ACCERR cannot be ours: frozen pages stay
    // readable, so it is an out-of-bounds read into the uncommitted part of
    // a region (or anywhere else) — a real crash, for the previous handler.
    // (Key faults on reads are ours: a thread lacking the key entirely.)
    let ours = code == SEGV_PKUERR || (code == SEGV_ACCERR && is_write(ctx));
    if ours {
        if let Some(g) = guard_of(addr) {
            let w = current_worker();
            // SAFETY: a registered worker slot outlives its thread.
            let worker = unsafe { w.as_ref() }.filter(|w| w.in_phase.load(Ordering::Acquire));
            let frozen = g.frozen.load(Ordering::Acquire);
            if let Some(w) = worker {
                // A key fault from a worker in a phase is a violation even if
                // this heap's own runtime is idle: every guarded heap carries
                // the one key the worker's PKRU denies.
                if frozen || g.sealed.load(Ordering::Acquire) || code == SEGV_PKUERR {
                    // SAFETY: ctx is the ucontext the kernel passed.
                    unsafe { violation(w, addr, code, ctx) };
                    return;
                }
            }
            if code == SEGV_PKUERR && worker.is_none() {
                // A thread without access to the key (it predates the key):
                // open the key in the PKRU the kernel restores on return.
                // SAFETY: ctx is our ucontext; the XSAVE area follows it.
                if unsafe { set_saved_pkru_write(ctx, PKEY.load(Ordering::Relaxed), true) } {
                    return;
                }
            }
            if code == SEGV_ACCERR && !g.sealed.load(Ordering::Acquire) {
                let epoch = THAW_EPOCH.load(Ordering::Acquire);
                if frozen && MPROTECT_FROZEN.load(Ordering::Acquire) > 0 {
                    // Not a worker: wait for the thaw, then the store retries.
                    while THAW_EPOCH.load(Ordering::Acquire) == epoch {
                        os::futex_wait(&THAW_EPOCH, epoch, None);
                    }
                    return;
                }
                // Thawed between the fault and now: retry once per epoch.
                let last = LAST_RETRY.with(|c| c.get());
                if last != (addr, epoch) {
                    LAST_RETRY.with(|c| c.set((addr, epoch)));
                    return;
                }
            }
        }
    }
    // SAFETY: forwarding the kernel's arguments to the previous handler.
    unsafe { chain(&PREV_SEGV, sig, info, ctx) }
}

/// Whether the faulting access was a write: bit 1 of the x86 page-fault
/// error code the kernel saves in the signal frame.
fn is_write(ctx: *mut libc::c_void) -> bool {
    // SAFETY: ctx is the ucontext_t the kernel passed for this signal.
    let uc = unsafe { &*(ctx as *const libc::ucontext_t) };
    uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
}

/// Handles a worker's write to a frozen heap according to its policy.
///
/// # Safety
/// 1. `ctx` is the `ucontext_t` of the current signal.
unsafe fn violation(w: &WorkerSlot, addr: usize, code: i32, ctx: *mut libc::c_void) {
    // SAFETY: by (1).
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let ip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
    // The handler runs on the faulting worker: its own current item.
    let item = super::current_item();
    match w.policy.load(Ordering::Relaxed) {
        p if p == OnViolation::Audit as u32 => {
            let n = w.audit_count.fetch_add(1, Ordering::Relaxed);
            let rec = &w.audit[(n as usize) % super::AUDIT_RING];
            rec.addr.store(addr, Ordering::Relaxed);
            rec.ip.store(ip, Ordering::Relaxed);
            rec.tid.store(os::gettid(), Ordering::Relaxed);
            rec.item.store(item, Ordering::Release);
            if code == SEGV_PKUERR {
                let key = PKEY.load(Ordering::Relaxed);
                // SAFETY: by (1).
                if unsafe { set_saved_pkru_write(ctx, key, true) } {
                    w.audit_pkey.store(key, Ordering::Relaxed);
                }
            } else {
                let page = addr & !(os::page_size() - 1);
                // SAFETY: the page is inside a committed guarded heap; it is
                // made writable for the single store and protected again
                // by the SIGTRAP handler.
                if unsafe { os::protect(page as *mut u8, os::page_size(), os::Access::ReadWrite) }
                    .is_ok()
                {
                    w.audit_page.store(page, Ordering::Relaxed);
                }
            }
            uc.uc_mcontext.gregs[libc::REG_EFL as usize] |= EFLAGS_TF;
        }
        p if p == OnViolation::Abort as u32 => {
            let mut buf = [0u8; 1024];
            os::write_stderr(report::render_raw(
                &mut buf,
                addr,
                ip,
                os::gettid(),
                item,
                code,
            ));
            os::reset_to_default(libc::SIGSEGV);
            // Returning re-executes the store, which now kills the process
            // with SIGSEGV (and a core dump where enabled).
        }
        _ => {
            let r = &w.record;
            r.addr.store(addr, Ordering::Relaxed);
            r.ip.store(ip, Ordering::Relaxed);
            r.tid.store(os::gettid(), Ordering::Relaxed);
            r.code.store(code as u32, Ordering::Relaxed);
            r.item.store(item, Ordering::Relaxed);
            r.state.store(1, Ordering::Release);
            w.is_parked.store(true, Ordering::Release);
            let parked = w.parked.load(Ordering::Acquire);
            // SAFETY: the runtime's counters outlive its workers' slots.
            if let Some(parked) = unsafe { parked.as_ref() } {
                parked.fetch_add(1, Ordering::AcqRel);
            }
            let events = w.events.load(Ordering::Acquire);
            // SAFETY: as above.
            if let Some(events) = unsafe { events.as_ref() } {
                events.fetch_add(1, Ordering::AcqRel);
                os::futex_wake(events, i32::MAX);
            }
            // Park for good: no Rust frame is unwound or skipped, and the
            // store never happens.
            loop {
                os::futex_wait(&w.park_word, 0, None);
            }
        }
    }
}

unsafe extern "C" fn on_trap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    // SAFETY: a registered worker slot outlives its thread.
    if let Some(w) = unsafe { current_worker().as_ref() } {
        let page = w.audit_page.swap(0, Ordering::Relaxed);
        let key = w.audit_pkey.swap(0, Ordering::Relaxed);
        if code == TRAP_TRACE && (page != 0 || key != 0) {
            if page != 0 {
                // SAFETY: the page was made writable by `violation` and is
                // still inside the frozen heap (main cannot thaw while this
                // worker is inside its task).
                let _ = unsafe { os::protect(page as *mut u8, os::page_size(), os::Access::Read) };
            }
            if key != 0 {
                // SAFETY: ctx is our ucontext.
                unsafe { set_saved_pkru_write(ctx, key, false) };
            }
            // SAFETY: ctx is our ucontext.
            let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
            uc.uc_mcontext.gregs[libc::REG_EFL as usize] &= !EFLAGS_TF;
            return;
        }
    }
    // SAFETY: forwarding the kernel's arguments.
    unsafe { chain(&PREV_TRAP, sig, info, ctx) }
}

/// Edits the PKRU value saved in the signal frame: allow (`allow = true`)
/// or deny writes to `key`. Returns false if the frame has no XSAVE area.
///
/// # Safety
/// 1. `ctx` is the `ucontext_t` of the current signal.
unsafe fn set_saved_pkru_write(ctx: *mut libc::c_void, key: u32, allow: bool) -> bool {
    let Some(off) = os::xsave_pkru_offset() else {
        return false;
    };
    // SAFETY: by (1).
    let uc = unsafe { &mut *(ctx as *mut libc::ucontext_t) };
    let fp = uc.uc_mcontext.fpregs as *mut u8;
    if fp.is_null() || key == 0 {
        return false;
    }
    // SAFETY: on x86_64 Linux the signal frame's fpregs point at an XSAVE
    // area whose header (XSTATE_BV at +512) and PKRU component (at the
    // CPUID-reported offset) the kernel restores on sigreturn.
    unsafe {
        let xstate_bv = fp.add(512) as *mut u64;
        xstate_bv.write_unaligned(xstate_bv.read_unaligned() | (1 << 9));
        let pkru = fp.add(off) as *mut u32;
        let mut v = pkru.read_unaligned();
        let ad = 1u32 << (2 * key);
        let wd = 1u32 << (2 * key + 1);
        if allow {
            v &= !(ad | wd);
        } else {
            v |= wd;
        }
        pkru.write_unaligned(v);
    }
    true
}

/// Calls the previously installed action for a signal that is not ours.
///
/// # Safety
/// 1. The arguments are the kernel's for the current signal.
unsafe fn chain(prev: &Prev, sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: written during install, before our handler could run.
    let prev = unsafe { (*prev.0.get()).assume_init_ref() };
    let h = prev.sa_sigaction;
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
