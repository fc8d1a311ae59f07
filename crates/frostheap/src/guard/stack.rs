//! A worker's stack copy: what the fault handler saves of the violating
//! thread's stack so that main can unwind it after the phase
//! (`trap::backtrace`, which explains why a copy).
//!
//! [`StackCopy::capture`] runs in the handler: one `memcpy` of the
//! interrupted stack, from the stack pointer up to the worker's top (an
//! address in its outermost frame that matters, recorded at start), at
//! most [`STACK_COPY_BYTES`], plus the registers unwinding starts from,
//! into an area mapped before the worker's first phase. It keeps the first
//! copy until main takes it ([`StackCopy::take`]).

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::os::{self, OsError};

/// The most stack one copy holds.
pub(crate) const STACK_COPY_BYTES: usize = 64 << 10;

/// One worker's stack copy: taken by its fault handler, read by main
/// after the phase (the worker's end-of-phase signal orders the two).
pub(crate) struct StackCopy {
    /// A mapping of [`STACK_COPY_BYTES`] (0 until prepared).
    buf: AtomicUsize,
    /// The highest address a copy may read: set by the worker at start
    /// (an address in its outermost frame), 0 while unknown.
    top: AtomicUsize,
    len: AtomicUsize,
    ip: AtomicUsize,
    sp: AtomicUsize,
    bp: AtomicUsize,
    /// 1 while a copy is held (the handler takes none then).
    held: AtomicU32,
}

impl Default for StackCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl StackCopy {
    /// No mapping, no copy.
    pub(crate) const fn new() -> StackCopy {
        StackCopy {
            buf: AtomicUsize::new(0),
            top: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            ip: AtomicUsize::new(0),
            sp: AtomicUsize::new(0),
            bp: AtomicUsize::new(0),
            held: AtomicU32::new(0),
        }
    }

    /// Maps the copy area (outside any phase; idempotent).
    pub(crate) fn prepare(&self) -> Result<(), OsError> {
        if self.buf.load(Ordering::Acquire) == 0 {
            let p = os::map_table(STACK_COPY_BYTES)?;
            self.buf.store(p as usize, Ordering::Release);
        }
        Ok(())
    }

    /// Records the top of the calling thread's stack that copies may read:
    /// an address inside its outermost frame that matters (the worker's
    /// loop). Frames above it are never copied.
    pub(crate) fn set_top(&self, top: usize) {
        self.top.store(top, Ordering::Release);
    }

    /// Copies the stack of the interrupted code (`ip`, `sp`, `bp` from the
    /// signal frame), unless a copy is held already. Async-signal-safe.
    ///
    /// # Safety
    /// 1. Called in a signal handler of the thread whose stack this area
    ///    describes (its stack `[sp, top)` is mapped and not running).
    pub(crate) unsafe fn capture(&self, ip: usize, sp: usize, bp: usize) -> bool {
        let (buf, top) = (
            self.buf.load(Ordering::Relaxed),
            self.top.load(Ordering::Relaxed),
        );
        if buf == 0 || top <= sp || self.held.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let len = (top - sp).min(STACK_COPY_BYTES);
        // SAFETY: by (1), [sp, sp + len) lies in the thread's own stack below
        // its top; the buffer holds STACK_COPY_BYTES >= len.
        unsafe { core::ptr::copy_nonoverlapping(sp as *const u8, buf as *mut u8, len) };
        self.len.store(len, Ordering::Relaxed);
        self.ip.store(ip, Ordering::Relaxed);
        self.sp.store(sp, Ordering::Relaxed);
        self.bp.store(bp, Ordering::Relaxed);
        self.held.store(1, Ordering::Release);
        true
    }

    /// Hands the copy held, if any, to `f` as (ip, sp, bp, stack bytes),
    /// then lets the handler take the next. Main thread, after the phase.
    pub(crate) fn take<R>(&self, f: impl FnOnce(usize, usize, usize, &[u8]) -> R) -> Option<R> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        let buf = self.buf.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        // SAFETY: the handler filled `len` bytes of our mapping and set
        // `held` after (Release, read above with Acquire); nothing writes
        // it until `held` is cleared below.
        let stack = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
        let r = f(
            self.ip.load(Ordering::Relaxed),
            self.sp.load(Ordering::Relaxed),
            self.bp.load(Ordering::Relaxed),
            stack,
        );
        self.held.store(0, Ordering::Release);
        Some(r)
    }
}

impl Drop for StackCopy {
    fn drop(&mut self) {
        let buf = self.buf.load(Ordering::Acquire);
        if buf != 0 {
            // SAFETY: mapped by prepare with this length; unused now.
            unsafe { os::unmap(buf as *mut u8, STACK_COPY_BYTES) };
        }
    }
}
