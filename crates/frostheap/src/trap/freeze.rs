//! The freeze protocol: [`Freeze::new`] freezes a runtime's guarded heaps
//! for one phase, and dropping the [`Freeze`] thaws them.
//!
//! The fault handler's invariants are enforced here, next to it:
//! - **Mark every heap before protecting any** (mprotect). A guarded
//!   heap's own bookkeeping may live in another guarded heap (a `Heap`
//!   built on main lives in the main heap), so every core is written (its
//!   region marked frozen, so pages committed meanwhile are committed
//!   read-only) before the first page is protected; on thaw every heap is
//!   opened before any mark is cleared.
//! - **Guard flags up before the first `mprotect`, down after the last.**
//!   A thread that is no worker and writes a heap while it is protected
//!   always finds the heap's entry frozen and [`MPROTECT_FROZEN`] non-zero,
//!   so it waits on [`THAW_EPOCH`] in the handler; the thaw bumps the epoch
//!   after the flags are down and wakes it, and its store retries.
//! - **Nothing here allocates or writes memory a frozen heap holds**:
//!   everything is read from the runtime's system-memory state, and the
//!   lengths thawed are kept on the stack.
//!
//! With protection keys the pages keep their key for the runtime's life
//! ([`super::Guarded`]); the freeze is each worker's PKRU (set by the
//! worker at the start of its phase) plus the entries' frozen flags, which
//! tell the handler and the `io` helpers what is frozen now.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::{Backend, Guarded};
use crate::guard;
use crate::os;

/// Bumped at every thaw; threads waiting in the handler sleep on it.
pub(super) static THAW_EPOCH: AtomicU32 = AtomicU32::new(0);
/// Heaps frozen with `mprotect` right now (by any runtime).
pub(super) static MPROTECT_FROZEN: AtomicU32 = AtomicU32::new(0);

/// The pages exempted from the current freeze (the result slots): first
/// address and length, 0 when none. The rollback policy never saves or
/// undoes bytes there (`handler`).
pub(super) static EXEMPT_START: AtomicUsize = AtomicUsize::new(0);
pub(super) static EXEMPT_LEN: AtomicUsize = AtomicUsize::new(0);

/// Whether `addr` lies in the pages exempted from the current freeze.
pub(super) fn exempt(addr: usize) -> bool {
    addr.wrapping_sub(EXEMPT_START.load(Ordering::Acquire)) < EXEMPT_LEN.load(Ordering::Acquire)
}

/// The guarded heaps of one runtime, frozen until this value is dropped.
pub(crate) struct Freeze<'a> {
    guarded: &'a [Guarded],
    backend: Backend,
    window: Option<(usize, usize)>,
}

impl<'a> Freeze<'a> {
    /// Freezes every heap of `guarded` with `backend`, except the pages
    /// `window` (address, length), which stay writable for the phase.
    ///
    /// Precondition: the caller is the runtime's main thread, between
    /// phases; `window` lies inside one block of a guarded heap, on pages
    /// of its own. Stops the process if the kernel refuses a protection
    /// change (nothing could be trusted after a half-done freeze).
    pub(crate) fn new(
        guarded: &'a [Guarded],
        backend: Backend,
        window: Option<(usize, usize)>,
    ) -> Freeze<'a> {
        if guarded.len() > guard::CAPACITY {
            fatal(b"frostheap: more guarded heaps than the guard table holds\n");
        }
        let mprotect = backend == Backend::Mprotect;
        if mprotect {
            for g in guarded {
                g.heap().inner().core.freeze_mark();
            }
        }
        for g in guarded {
            g.entry().set_frozen(true);
            if mprotect {
                MPROTECT_FROZEN.fetch_add(1, Ordering::AcqRel);
            }
        }
        if mprotect {
            for g in guarded {
                if g.heap().inner().core.protect_committed(true).is_err() {
                    fatal(b"frostheap: mprotect failed while freezing a guarded heap\n");
                }
            }
        }
        if let Some((lo, len)) = window {
            // SAFETY: the window is the result slots' own pages, inside one
            // block of a guarded heap (the precondition).
            let r = unsafe {
                match backend {
                    Backend::Mprotect => os::protect(lo as *mut u8, len, os::Access::ReadWrite),
                    Backend::Pkey(_) => os::pkey_tag(lo as *mut u8, len, 0, os::Access::ReadWrite),
                    Backend::Off => Ok(()),
                }
            };
            if r.is_err() {
                fatal(b"frostheap: cannot exempt the result slots from the freeze\n");
            }
            EXEMPT_START.store(lo, Ordering::Release);
            EXEMPT_LEN.store(len, Ordering::Release);
        }
        Freeze {
            guarded,
            backend,
            window,
        }
    }
}

impl Drop for Freeze<'_> {
    /// Thaws, mirroring the freeze: open every heap (no writes), then
    /// clear the marks, and only then lower the guard flags (a thread that
    /// faulted while frozen is still waiting; one that faults now cannot,
    /// the pages are writable) and wake the waiters.
    fn drop(&mut self) {
        let mprotect = self.backend == Backend::Mprotect;
        // No thread may have a page open for a stepped store while the
        // heaps are opened: its trap would protect the page again after.
        if mprotect {
            super::step::step_lock();
        }
        if mprotect {
            let mut thawed = [0usize; guard::CAPACITY];
            for (len, g) in thawed.iter_mut().zip(self.guarded) {
                match g.heap().inner().core.protect_committed(false) {
                    Ok(n) => *len = n,
                    Err(_) => fatal(b"frostheap: mprotect failed while thawing a guarded heap\n"),
                }
            }
            for (len, g) in thawed.iter().zip(self.guarded) {
                if g.heap().inner().core.thaw_unmark(*len).is_err() {
                    fatal(b"frostheap: mprotect failed while thawing a guarded heap\n");
                }
            }
        }
        EXEMPT_LEN.store(0, Ordering::Release);
        if let (Some((lo, len)), Backend::Pkey(key)) = (self.window, self.backend) {
            // SAFETY: as when exempting: the result slots' own pages.
            if unsafe { os::pkey_tag(lo as *mut u8, len, key, os::Access::ReadWrite) }.is_err() {
                fatal(b"frostheap: cannot re-tag the result slots after the phase\n");
            }
        }
        for g in self.guarded {
            g.entry().set_frozen(false);
            if mprotect {
                MPROTECT_FROZEN.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if mprotect {
            super::step::step_unlock();
        }
        THAW_EPOCH.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&THAW_EPOCH, i32::MAX);
    }
}

/// Stops the process with a message, without allocating (a heap may be
/// frozen, where formatting a panic message could not run).
fn fatal(msg: &[u8]) -> ! {
    os::write_stderr(msg);
    std::process::abort()
}
