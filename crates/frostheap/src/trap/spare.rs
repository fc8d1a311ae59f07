//! Spare stacks for the fault handlers, on a thread whose alternate signal
//! stack leaves them too little room.
//!
//! The handlers run on the faulting thread's alternate signal stack.
//! Runtime workers have frostheap's own (64 KiB at least), but any thread
//! can fault into them: a bystander storing into a frozen heap, std's
//! threads overflowing their stack. std gives each of its threads an
//! alternate stack of `SIGSTKSZ` (8 KiB), and the kernel's signal frame
//! takes a part of it that grows with the CPU's register state: some
//! 3.5 KiB with AVX-512. On such a CPU (an AMD EPYC) a debug build's
//! handler, which decodes and performs a bystander's store with frames
//! of up to 2 KiB each, ran past the end of std's stack and the process
//! died of SIGSEGV (the `it` suite's debug run, CI on 2026-12-07).
//!
//! So a handler that finds less than [`NEED`] below it on the alternate
//! stack moves to a spare stack: one of [`SPARES`], mapped when the
//! handlers are installed and claimed with one compare-exchange. On it,
//! the thread's alternate stack is first set to the spare's lower part,
//! so that a signal arriving meanwhile (delivered on the alternate stack,
//! which the thread no longer runs on) does not overwrite the frame the
//! kernel wrote on the thread's own; it is set back before the handler
//! returns. With every spare taken, the handler runs where it is.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::os::{self, OsError, SigAction};

/// Spare stacks (at most this many threads in a handler with too little
/// room at once; any more run where they are).
const SPARES: usize = 8;
/// Where the handler runs on a spare.
const HANDLER_PART: usize = 96 << 10;
/// The spare's lower part: the thread's alternate stack while the handler
/// runs on the upper part.
const ALT_PART: usize = 32 << 10;
/// Room on the alternate stack under which a handler moves.
const NEED: usize = 32 << 10;

/// The spares' mapping (0 until [`reserve`]); each spare is a guard page,
/// [`ALT_PART`], then [`HANDLER_PART`].
static BASE: AtomicUsize = AtomicUsize::new(0);
static TAKEN: [AtomicBool; SPARES] = [const { AtomicBool::new(false) }; SPARES];

fn stride() -> usize {
    os::page_size() + ALT_PART + HANDLER_PART
}

/// Maps the spares (once, as the handlers are installed): address space
/// only, until a handler uses one.
pub(super) fn reserve() -> Result<(), OsError> {
    if BASE.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    let base = os::map_table(SPARES * stride())? as usize;
    for i in 0..SPARES {
        // SAFETY: the first page of each spare, inside our fresh mapping,
        // becomes its guard page.
        unsafe {
            os::protect(
                (base + i * stride()) as *mut u8,
                os::page_size(),
                os::Access::None,
            )?
        };
    }
    BASE.store(base, Ordering::Release);
    Ok(())
}

/// What the trampoline on a spare runs.
struct Call {
    body: SigAction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
    /// The spare's lower part, as an alternate stack.
    alt: libc::stack_t,
}

/// Runs `body(sig, info, ctx)` on a spare stack when the handler's
/// alternate stack leaves less than [`NEED`] below the caller; returns
/// false, having run nothing, when it does not (or the caller runs on
/// another stack, or every spare is taken).
///
/// # Safety
/// 1. Called by a signal handler, with the kernel's arguments; `body` is
///    that handler's body, which does not unwind.
#[inline(always)]
pub(super) unsafe fn run_if_short(
    body: SigAction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) -> bool {
    let here = &sig as *const libc::c_int as usize;
    // SAFETY: by (1), ctx is the kernel's ucontext, which holds the
    // thread's alternate stack as it was when the signal came.
    let (alt, alt_len) = unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        ((*uc).uc_stack.ss_sp as usize, (*uc).uc_stack.ss_size)
    };
    let room = here.wrapping_sub(alt);
    if alt_len == 0 || room >= alt_len || room >= NEED {
        return false;
    }
    // SAFETY: forwarded (1).
    unsafe { run_on_spare(body, sig, info, ctx) }
}

#[cold]
#[inline(never)]
unsafe fn run_on_spare(
    body: SigAction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) -> bool {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return false;
    }
    let Some(i) = TAKEN.iter().position(|t| {
        t.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) else {
        return false;
    };
    let spare = base + i * stride();
    let alt_base = spare + os::page_size();
    let mut call = Call {
        body,
        sig,
        info,
        ctx,
        alt: libc::stack_t {
            ss_sp: alt_base as *mut libc::c_void,
            ss_flags: 0,
            ss_size: ALT_PART,
        },
    };
    let top = (spare + stride()) as *mut u8;
    // SAFETY: the spare is ours until released below; its top is page-
    // (so 16-byte) aligned; `trampoline` does not unwind (it runs the
    // handler's body, which does not, by (1) of run_if_short).
    unsafe { os::call_on_stack(top, trampoline, (&mut call as *mut Call).cast()) };
    TAKEN[i].store(false, Ordering::Release);
    true
}

/// On the spare: the thread's alternate stack moves to the spare's lower
/// part for the body, and comes back.
unsafe extern "C" fn trampoline(arg: *mut libc::c_void) {
    // SAFETY: `arg` is the `Call` run_on_spare made, alive until we return.
    let call = unsafe { &*arg.cast::<Call>() };
    // Off the old alternate stack now, so it may be changed. Should it
    // fail, the body runs all the same (a signal arriving meanwhile would
    // be delivered over the frame, as without a spare it could not be).
    let old = os::swap_alt_stack(&call.alt).ok();
    // SAFETY: the kernel's arguments, forwarded by run_on_spare.
    unsafe { (call.body)(call.sig, call.info, call.ctx) };
    if let Some(old) = old {
        let _ = os::swap_alt_stack(&old);
    }
}
