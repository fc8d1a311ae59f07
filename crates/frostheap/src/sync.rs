//! The concurrency shim: the lock and atomics the allocator uses.
//!
//! `RawLock` is a test-and-test-and-set lock that never allocates, can live
//! in a `static`, and (unlike `std::sync::Mutex`) can be taken and released
//! from `fork` handlers: the C ABI locks every heap before `fork` and
//! releases the locks in both parent and child.

#[cfg(debug_assertions)]
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::{AtomicBool, Ordering};

/// `debug_assert!` for code that may run inside the allocator: a broken
/// check writes its message to stderr with one `write` and aborts, where
/// `debug_assert!` panics, and a panic allocates (std takes a block before
/// it prints when `RUST_BACKTRACE` is set): under a heap's lock that
/// allocation waited for the lock its own thread held, and the debug build
/// hung without a word instead of failing. The message's arguments are
/// formatted into a buffer on the stack. Like `debug_assert!`, the
/// condition is not evaluated in release builds.
macro_rules! invariant {
    ($cond:expr $(,)?) => {
        $crate::sync::invariant!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {
        if cfg!(debug_assertions) && !$cond {
            $crate::sync::invariant_broken(file!(), line!(), format_args!($($arg)+));
        }
    };
}
pub(crate) use invariant;

/// [`invariant!`] for two values that must be equal (`debug_assert_eq!`),
/// naming both.
macro_rules! invariant_eq {
    ($a:expr, $b:expr, $($arg:tt)+) => {
        if cfg!(debug_assertions) {
            match (&$a, &$b) {
                (a, b) => {
                    if !(*a == *b) {
                        $crate::sync::invariant_broken(
                            file!(),
                            line!(),
                            format_args!("{} ({:?} != {:?})", format_args!($($arg)+), a, b),
                        );
                    }
                }
            }
        }
    };
}
pub(crate) use invariant_eq;

/// What a broken [`invariant!`] does: its place and message on stderr,
/// formatted without allocating (cut at 480 bytes), then `abort`.
#[cold]
#[inline(never)]
pub(crate) fn invariant_broken(file: &str, line: u32, msg: core::fmt::Arguments<'_>) -> ! {
    struct Cut<'a> {
        buf: &'a mut [u8],
        len: usize,
    }
    impl core::fmt::Write for Cut<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut buf = [0u8; 480];
    let mut out = Cut {
        buf: &mut buf,
        len: 0,
    };
    let _ = core::fmt::write(
        &mut out,
        format_args!("frostheap (debug check) at {file}:{line}: {msg}\n"),
    );
    let len = out.len;
    crate::os::write_stderr(&buf[..len]);
    std::process::abort()
}

/// A small non-allocating lock for slow paths (span allocation, the shared
/// class state). Contention is rare by design: owner threads take the fast
/// path without it.
///
/// Debug builds remember the holder's `thread_token`, and a thread that
/// waits for a lock it holds itself stops the process with a message: an
/// allocation from inside the allocator (a panic under a heap's lock
/// allocates) spun for good, silently, before.
pub struct RawLock {
    locked: AtomicBool,
    #[cfg(debug_assertions)]
    holder: AtomicUsize,
}

impl RawLock {
    /// An unlocked lock.
    pub const fn new() -> RawLock {
        RawLock {
            locked: AtomicBool::new(false),
            #[cfg(debug_assertions)]
            holder: AtomicUsize::new(0),
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
        self.taken();
        LockGuard { lock: self }
    }

    /// Debug builds: notes the calling thread as the holder.
    #[inline(always)]
    fn taken(&self) {
        #[cfg(debug_assertions)]
        self.holder.store(thread_token(), Ordering::Relaxed);
    }

    /// Releases the lock (debug builds: forgets the holder first).
    #[inline(always)]
    fn release(&self) {
        #[cfg(debug_assertions)]
        self.holder.store(0, Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
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
                    #[cfg(debug_assertions)]
                    if self.holder.load(Ordering::Relaxed) == thread_token() {
                        invariant_broken(
                            file!(),
                            line!(),
                            format_args!(
                                "a thread waits for a lock it holds itself (an allocation \
                                 from inside the allocator: a panic under a heap's lock?)"
                            ),
                        );
                    }
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
            .map(|_| {
                self.taken();
                LockGuard { lock: self }
            })
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
        self.release();
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
        self.lock.release();
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

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::RawLock;

    /// Runs `f` in a forked child whose stderr is a pipe: its exit status
    /// (as `waitpid` gives it) and what it wrote to stderr.
    fn in_child(f: fn()) -> (i32, String) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only runs `f` (which takes locks, writes and
        // aborts: nothing another thread of this test process could hold)
        // and never returns.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: fds[1] is the pipe's open write end.
            unsafe { libc::dup2(fds[1], 2) };
            f();
            // SAFETY: leaves the child without running the parent's exit
            // handlers.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: our write end, not used here.
        unsafe { libc::close(fds[1]) };
        // A child that hangs (a lock that spins for good, as before the
        // check) is killed after 20 s, and the test fails on its status.
        let watchdog = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(20) {
                // SAFETY: kill with signal 0 only checks the pid.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // SAFETY: our own child, not reaped yet (the reader below
            // waits for its stderr to close first).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reading into a valid buffer from our read end.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: our own child; fds[0] is ours.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
            libc::close(fds[0]);
        }
        watchdog.join().unwrap();
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn a_thread_waiting_for_a_lock_it_holds_stops_with_a_message_in_debug_builds() {
        let (status, err) = in_child(|| {
            static L: RawLock = RawLock::new();
            let _held = L.lock();
            let _again = L.lock();
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
            "status {status:#x}, stderr {err:?}"
        );
        assert!(
            err.contains("frostheap (debug check)")
                && err.contains("waits for a lock it holds itself"),
            "{err:?}"
        );
    }

    #[test]
    fn a_broken_invariant_names_its_place_and_values_without_a_panic() {
        let (status, err) = in_child(|| {
            let (a, b) = (3usize, 4usize);
            crate::sync::invariant_eq!(a + 1, b + 1, "class {a} against {b}");
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
            "status {status:#x}, stderr {err:?}"
        );
        assert!(
            err.contains("src/sync.rs:") && err.contains("class 3 against 4 (4 != 5)"),
            "{err:?}"
        );
        // A held lock is free again once its holder lets go, and another
        // thread then takes it (the holder mark follows the lock).
        static M: RawLock = RawLock::new();
        drop(M.lock());
        std::thread::spawn(|| drop(M.lock())).join().unwrap();
        assert!(M.try_lock().is_some());
    }
}
