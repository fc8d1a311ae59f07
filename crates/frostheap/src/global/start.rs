//! The main heap's start-up: the static slot it lives in, built at the
//! process's first allocation without allocating, and the thread that
//! owns it.
//!
//! The thread that makes the first allocation — `main`, since std
//! allocates while setting up the main thread — wins the race to
//! `INITIALIZING`, reads the environment (a bad value prints one line and
//! exits with status 2 before `main` runs), reserves the heap and
//! publishes it with `READY`. The slot keeps the heap's base and length
//! beside it, so that routing a free is two compares.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::borrow::Cow;

use crate::config;
use crate::heap::core::CoreConfig;
use crate::heap::{Heap, HeapInner};
use crate::os;
use crate::sync::thread_token;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
pub(super) const READY: u8 = 2;

/// `repr(C)`: the heap first, so that the fast paths address its hot
/// fields (see `HeapCore`) with one-byte displacements from the slot's
/// address; the routing words, which every thread reads, after it on a
/// line of their own.
#[repr(C)]
pub(super) struct MainSlot {
    inner: UnsafeCell<MaybeUninit<HeapInner>>,
    /// The main heap's region, for routing frees with two compares.
    pub(super) base: AtomicUsize,
    pub(super) len: AtomicUsize,
    /// Thread token of the main thread (0 before initialisation).
    pub(super) owner: AtomicUsize,
    pub(super) state: AtomicU8,
}

// SAFETY: `inner` is written once, by the initialising thread, before
// `state` becomes READY (Release); it is read only after READY is seen
// (Acquire), or by the owner, which wrote it.
unsafe impl Sync for MainSlot {}

pub(super) static MAIN: MainSlot = MainSlot {
    state: AtomicU8::new(UNINIT),
    owner: AtomicUsize::new(0),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    inner: UnsafeCell::new(MaybeUninit::uninit()),
};

#[inline]
pub(super) fn main_inner() -> &'static HeapInner {
    // SAFETY: only called after READY was observed or by the owner, which
    // initialised it (see MainSlot).
    unsafe { (*MAIN.inner.get()).assume_init_ref() }
}

/// The main heap, if `Global` is the global allocator and has started.
pub fn main_heap() -> Option<Heap> {
    (MAIN.state.load(Ordering::Acquire) == READY).then(|| Heap::from_static(main_inner()))
}

/// What `FROSTHEAP_HUGE_PAGES=auto` means for the main heap: on for Rust
/// programs (a freeze of a huge-page heap is one cheap `mprotect`), off for
/// the C ABI, which never freezes. Measured: Python under LD_PRELOAD ran
/// 1.18× glibc's time with huge pages advised (first-touch compaction and
/// zeroing of 2 MiB pages) and 0.93× without.
pub(super) static AUTO_HUGE_PAGES: AtomicBool = AtomicBool::new(true);

#[cold]
#[inline(never)]
pub(super) fn init() {
    if MAIN
        .state
        .compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return; // another thread is initialising or has: we are not main
    }
    let cfg = match config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let mut buf = [0u8; 512];
            os::write_stderr(e.render(&mut buf));
            os::exit_now(2);
        }
    };
    let core = CoreConfig {
        min: cfg.min,
        max: cfg.max,
        huge_pages: match cfg.huge_pages {
            config::HugePages::Auto => {
                AUTO_HUGE_PAGES.load(Ordering::Relaxed) && cfg.huge_pages.enabled()
            }
            other => other.enabled(),
        },
    };
    let inner = match HeapInner::new(Cow::Borrowed("main"), core) {
        Ok(i) => i,
        Err(e) => {
            let mut buf = [0u8; 256];
            let line = crate::fmt_buf::Buf::new(&mut buf)
                .str("frostheap: cannot reserve the main heap (FROSTHEAP_MAX=")
                .dec(cfg.max as u64)
                .str(" bytes): ")
                .str(e.call)
                .str(" errno ")
                .dec(e.errno as u64)
                .str("\n")
                .finish();
            os::write_stderr(line);
            os::exit_now(2);
        }
    };
    // SAFETY: state is INITIALIZING and we won the race: nobody else reads
    // or writes `inner` until READY.
    let slot = unsafe { &mut *MAIN.inner.get() };
    let inner = slot.write(inner);
    inner.register();
    let region = inner.core.region();
    MAIN.base.store(region.base() as usize, Ordering::Relaxed);
    MAIN.len.store(region.reserved(), Ordering::Relaxed);
    MAIN.owner.store(thread_token(), Ordering::Relaxed);
    if cfg.track_allocs {
        crate::track::enable();
    }
    MAIN.state.store(READY, Ordering::Release);
}

/// Whether `p` lies in the main heap's reservation (false before start-up).
#[inline]
pub(super) fn main_owns(p: *mut u8) -> bool {
    (p as usize).wrapping_sub(MAIN.base.load(Ordering::Relaxed)) < MAIN.len.load(Ordering::Relaxed)
}

/// Whether the calling thread owns the main heap, starting the heap if
/// no thread has yet.
#[inline]
pub(super) fn on_main_thread() -> bool {
    let owner = MAIN.owner.load(Ordering::Relaxed);
    if owner != 0 {
        return owner == thread_token();
    }
    init();
    MAIN.owner.load(Ordering::Relaxed) == thread_token()
}

/// `Owner::Main` with the offset when `p` lies in the main heap's
/// reservation, `Owner::System` otherwise (two compares, for the free
/// fast path; [`super::route::owner_of`] goes on to the context heaps).
#[inline(always)]
pub(super) fn main_offset(p: *mut u8) -> super::route::Owner {
    let offset = (p as usize).wrapping_sub(MAIN.base.load(Ordering::Relaxed));
    if offset < MAIN.len.load(Ordering::Relaxed) {
        super::route::Owner::Main { offset }
    } else {
        super::route::Owner::System
    }
}
