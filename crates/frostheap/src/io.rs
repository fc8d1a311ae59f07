//! I/O helpers that know about frozen heaps.
//!
//! A `read(2)` into a frozen buffer fails with `EFAULT` instead of raising
//! a signal (under `mprotect`, and under protection keys, whose denial the
//! kernel's copies obey on the calling thread; writes through pinned pages
//! pass the keys) — so the fault handler never sees writes the kernel
//! makes on a task's behalf. These helpers turn that `EFAULT` (or, for
//! pkeys, a destination inside a frozen heap, checked before the call)
//! into a violation: the task gets `Err(Error::Violation(..))` back, and
//! the phase reports it like any other violation.

use core::sync::atomic::Ordering;
use std::os::fd::AsRawFd;

use crate::config::OnViolation;
use crate::error::Error;
use crate::guard;
use crate::trap::{Access, Backend, Violation};

/// Reads from `fd` into `buf` with `read(2)`, reporting a destination in a
/// frozen heap as a violation ([`Access::KernelWrite`]).
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> Result<usize, Error> {
    let (addr, len) = (buf.as_mut_ptr() as usize, buf.len());
    let frozen =
        || guard::frozen_in(addr, len).map(|at| (at, guard::entry_of(at).map_or(0, |e| e.key())));
    // A worker's read into a frozen heap that carries a key is refused
    // before the call: the kernel's copy would fail with EFAULT after
    // part of it may have landed (its denial is per page), and paths
    // through pinned pages ignore the key.
    if in_phase() {
        if let Some((at, key @ 1..)) = frozen() {
            return Err(kernel_violation(at, key));
        }
    }
    match crate::os::read(fd.as_raw_fd(), buf) {
        Ok(n) => Ok(n),
        Err(e) if e.errno == libc::EFAULT => match frozen() {
            Some((at, key)) => Err(kernel_violation(at, key)),
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
    guard::current_worker().is_some_and(|w| w.in_phase.load(Ordering::Acquire))
}

/// Records (on a worker) and reports a kernel write at `addr`, in a heap
/// whose pages carry protection key `key` (0: frozen by mprotect).
fn kernel_violation(addr: usize, key: u32) -> Error {
    let tid = crate::os::gettid();
    let item = guard::current_item();
    let policy = match guard::current_worker() {
        Some(w) => {
            let r = &w.kernel;
            r.addr.store(addr, Ordering::Relaxed);
            r.tid.store(tid, Ordering::Relaxed);
            r.item.store(item, Ordering::Relaxed);
            r.state.store(1, Ordering::Release);
            w.policy()
        }
        None => OnViolation::Cancel,
    };
    let backend = match key {
        0 => Backend::Mprotect,
        key => Backend::Pkey(key),
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
