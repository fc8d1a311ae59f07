//! The concurrency shim: the lock and atomics the allocator uses.
//!
//! `RawLock` is a test-and-test-and-set lock that never allocates, can live
//! in a `static`, and (unlike `std::sync::Mutex`) can be taken and released
//! from `fork` handlers: the C ABI locks every heap before `fork` and
//! releases the locks in both parent and child.

use core::sync::atomic::{AtomicBool, Ordering};

/// A small non-allocating lock for slow paths (span allocation, the shared
/// class state). Contention is rare by design: owner threads take the fast
/// path without it.
pub struct RawLock {
    locked: AtomicBool,
}

impl RawLock {
    /// An unlocked lock.
    pub const fn new() -> RawLock {
        RawLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Takes the lock, spinning briefly and then yielding the CPU.
    #[inline]
    pub fn lock(&self) -> LockGuard<'_> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        LockGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if spins < 64 {
                    core::hint::spin_loop();
                    spins += 1;
                } else {
                    // Not std's yield_now: in the C library that is a
                    // function of std's, far from frostheap's code, whose
                    // first call maps 64 KiB more of the library.
                    crate::os::yield_now();
                }
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Takes the lock if it is free, without waiting.
    #[inline]
    pub fn try_lock(&self) -> Option<LockGuard<'_>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| LockGuard { lock: self })
    }

    /// Takes the lock without a guard (for `fork` handlers).
    pub fn lock_raw(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`RawLock::lock_raw`].
    ///
    /// # Safety
    /// 1. The lock is held by this thread (or, in a `fork` child, was held by
    ///    the thread that forked) and no guard for it exists.
    pub unsafe fn unlock_raw(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

impl Default for RawLock {
    fn default() -> Self {
        Self::new()
    }
}

/// Releases the lock when dropped.
pub struct LockGuard<'a> {
    lock: &'a RawLock,
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// A per-thread token: the address of a thread-local byte. Unique among
/// live threads, free to read (one TLS-relative address computation), and
/// never allocates (a `const` thread-local with no destructor).
///
/// On x86_64 Linux this is the thread pointer itself (`%fs:0`, the TCB's
/// self-pointer): one load, even inside a shared library where a
/// thread-local would go through `__tls_get_addr`.
#[inline]
pub fn thread_token() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let tp: usize;
        // SAFETY: on x86_64 Linux, %fs points at the thread control block,
        // whose first word is a pointer to itself (the TLS ABI); reading it
        // has no side effects. `pure, nomem`: the TCB is not memory Rust
        // code can write, and for the thread running a function the value
        // never changes during that call, so the compiler may reuse it.
        unsafe {
            core::arch::asm!("mov {}, fs:0", out(reg) tp, options(pure, nomem, nostack, preserves_flags))
        };
        tp
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        thread_local! {
            static TOKEN: u8 = const { 0 };
        }
        TOKEN.with(|t| t as *const u8 as usize)
    }
}

/// A race-widening point: in a build with `RUSTFLAGS="--cfg
/// frostheap_chaos"`, yields the CPU about one time in eight (by the
/// time-stamp counter: no state, no allocation), so that the windows
/// between the steps of the cross-thread protocols (remote frees and
/// their collection, FULL and PENDING spans, heaps abandoned and adopted)
/// open thousands of times more often than on an idle machine. Nothing in
/// any other build. `ci/chaos.sh` runs the thread stress programs on
/// such a build.
#[inline(always)]
pub(crate) fn chaos() {
    #[cfg(frostheap_chaos)]
    {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: rdtsc has no preconditions.
        let t = unsafe { core::arch::x86_64::_rdtsc() };
        #[cfg(not(target_arch = "x86_64"))]
        let t = thread_token() as u64;
        if (t >> 4) & 7 == 0 {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }
}
