//! I/O helpers that know about frozen heaps.
//!
//! The kernel does not apply protection keys to its own accesses, and a
//! `read(2)` into an `mprotect`-frozen buffer fails with `EFAULT` instead
//! of raising a signal — so the fault handler never sees writes the kernel
//! makes on a task's behalf. These helpers turn that `EFAULT` (or, for
//! pkeys, a destination inside a frozen heap, checked before the call)
//! into a violation: the task gets `Err(Error::Violation(..))` back, and
//! the phase reports it like any other violation.

use core::sync::atomic::Ordering;
use std::os::fd::AsRawFd;

use crate::trap::{self, Access, Backend, Violation};
use crate::Error;

/// Reads from `fd` into `buf` with `read(2)`, reporting a destination in a
/// frozen heap as a violation ([`Access::KernelWrite`]).
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> Result<usize, Error> {
    let addr = buf.as_mut_ptr() as usize;
    let pkey_frozen =
        trap::pkeys_available() && in_phase() && trap::frozen_in(addr, buf.len()).is_some();
    let result = if pkey_frozen {
        Err(crate::os::OsError {
            call: "read",
            errno: libc::EFAULT,
        })
    } else {
        crate::os::read(fd.as_raw_fd(), buf)
    };
    match result {
        Ok(n) => Ok(n),
        Err(e) if e.errno == libc::EFAULT => match trap::frozen_in(addr, buf.len()) {
            Some(at) => Err(kernel_violation(at)),
            None => Err(Error::Os {
                context: "read(2)",
                source: e,
            }),
        },
        Err(source) => Err(Error::Os {
            context: "read(2)",
            source,
        }),
    }
}

fn in_phase() -> bool {
    let w = trap::current_worker();
    // SAFETY: a registered worker slot outlives its thread.
    unsafe { w.as_ref() }.is_some_and(|w| w.in_phase.load(Ordering::Acquire))
}

fn kernel_violation(addr: usize) -> Error {
    let w = trap::current_worker();
    let tid = crate::os::gettid();
    // SAFETY: as above.
    let (item, policy, backend) = match unsafe { w.as_ref() } {
        Some(w) => {
            let item = trap::current_item();
            let r = &w.kernel;
            r.addr.store(addr, Ordering::Relaxed);
            r.tid.store(tid, Ordering::Relaxed);
            r.item.store(item, Ordering::Relaxed);
            r.state.store(1, Ordering::Release);
            let policy = match w.policy.load(Ordering::Relaxed) {
                p if p == trap::OnViolation::Audit as u32 => trap::OnViolation::Audit,
                p if p == trap::OnViolation::Abort as u32 => trap::OnViolation::Abort,
                _ => trap::OnViolation::Cancel,
            };
            (
                item,
                policy,
                if trap::pkeys_available() {
                    Backend::Pkey(trap::pkey().unwrap_or(0))
                } else {
                    Backend::Mprotect
                },
            )
        }
        None => (usize::MAX, trap::OnViolation::Cancel, Backend::Mprotect),
    };
    let name = std::thread::current().name().map(str::to_string);
    Error::Violation(Box::new(Violation::from_raw(
        addr,
        0,
        tid,
        name,
        item,
        Access::KernelWrite,
        backend,
        policy,
    )))
}
