//! `frostheap::Global`: the global allocator.
//!
//! The thread that makes the process's first allocation — `main`, since
//! std allocates while setting up the main thread — owns the **main heap**;
//! its allocations go there, under the limits of `FROSTHEAP_MIN` /
//! `FROSTHEAP_MAX`. Other threads allocate from the system allocator. Every
//! free and realloc is routed by address: a main-heap block goes back to the
//! main heap whoever frees it (a remote free when another thread does), and
//! anything else to the system allocator.
//!
//! The environment is read at the first allocation, without allocating; a
//! bad value prints one line and exits with status 2 before `main` runs.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::alloc::System;
use std::borrow::Cow;

use crate::config;
use crate::heap::core::CoreConfig;
use crate::heap::{Heap, HeapInner};
use crate::os;
use crate::sync::thread_token;

/// The global allocator. Install it with
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: frostheap::Global = frostheap::Global;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

struct MainSlot {
    state: AtomicU8,
    /// Thread token of the main thread (0 before initialisation).
    owner: AtomicUsize,
    /// The main heap's region, for routing frees with two compares.
    base: AtomicUsize,
    len: AtomicUsize,
    inner: UnsafeCell<MaybeUninit<HeapInner>>,
}

// SAFETY: `inner` is written once, by the initialising thread, before
// `state` becomes READY (Release); it is read only after READY is seen
// (Acquire), or by the owner, which wrote it.
unsafe impl Sync for MainSlot {}

static MAIN: MainSlot = MainSlot {
    state: AtomicU8::new(UNINIT),
    owner: AtomicUsize::new(0),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    inner: UnsafeCell::new(MaybeUninit::uninit()),
};

#[inline]
fn main_inner() -> &'static HeapInner {
    // SAFETY: only called after READY was observed or by the owner, which
    // initialised it (see MainSlot).
    unsafe { (*MAIN.inner.get()).assume_init_ref() }
}

/// The main heap, if `Global` is the global allocator and has started.
pub fn main_heap() -> Option<Heap> {
    (MAIN.state.load(Ordering::Acquire) == READY).then(|| Heap::from_static(main_inner()))
}

#[cold]
#[inline(never)]
fn init() {
    if MAIN.state.compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Relaxed).is_err() {
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
    let core = CoreConfig { min: cfg.min, max: cfg.max, huge_pages: cfg.huge_pages.enabled() };
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
    MAIN.state.store(READY, Ordering::Release);
}

#[inline]
fn main_owns(p: *mut u8) -> bool {
    (p as usize).wrapping_sub(MAIN.base.load(Ordering::Relaxed)) < MAIN.len.load(Ordering::Relaxed)
}

#[inline]
fn on_main_thread() -> bool {
    let owner = MAIN.owner.load(Ordering::Relaxed);
    if owner != 0 {
        return owner == thread_token();
    }
    init();
    MAIN.owner.load(Ordering::Relaxed) == thread_token()
}

// SAFETY: main-heap blocks come from HeapCore, which returns memory valid
// for the layout or null; everything else is delegated to `System`. Frees
// and reallocs are routed by address to the allocator that made the block.
unsafe impl GlobalAlloc for Global {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_main_thread() {
            // SAFETY: on_main_thread() means we are the main heap's owner.
            return unsafe { main_inner().core.alloc_as_owner(layout) };
        }
        // SAFETY: GlobalAlloc contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_main_thread() {
            return main_inner().core.alloc_zeroed(layout);
        }
        // SAFETY: GlobalAlloc contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if main_owns(ptr) {
            // SAFETY: ptr is a live main-heap block (GlobalAlloc contract).
            unsafe { main_inner().core.free(ptr) }
        } else {
            // SAFETY: not ours, so System made it.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if main_owns(ptr) {
            let core = &main_inner().core;
            if core.is_owner() {
                // SAFETY: ptr is a live main-heap block allocated with layout.
                return unsafe { core.realloc(ptr, layout, new_size) };
            }
            // Another thread resizes a main-heap block: move it to System.
            // SAFETY: new_size with layout's align is a valid layout (the
            // GlobalAlloc::realloc contract).
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: GlobalAlloc contract.
            let q = unsafe { System.alloc(new_layout) };
            if !q.is_null() {
                // SAFETY: both live and distinct; then free the old block.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                    core.free(ptr);
                }
            }
            return q;
        }
        // SAFETY: a System block (GlobalAlloc contract).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The main heap as the C ABI (`frostheap-capi`) needs it: C semantics
/// (no layout on free), explicit routing, and `fork` handlers.
pub mod raw {
    use super::*;

    /// Default alignment of `malloc` (glibc's `MALLOC_ALIGNMENT`).
    pub const MALLOC_ALIGN: usize = 16;

    /// Whether the calling thread is the main heap's owner (initialising
    /// the main heap on the first call).
    #[inline]
    pub fn on_main_thread() -> bool {
        super::on_main_thread()
    }

    /// Whether `p` points into the main heap.
    #[inline]
    pub fn owns(p: *const u8) -> bool {
        main_owns(p as *mut u8)
    }

    /// The main heap handle (initialising it if needed).
    pub fn heap() -> Heap {
        on_main_thread();
        while MAIN.state.load(Ordering::Acquire) != READY {
            std::thread::yield_now();
        }
        Heap::from_static(main_inner())
    }

    /// Allocates from the main heap; null past the limit.
    ///
    /// # Safety
    /// 1. The caller is the main thread ([`on_main_thread`] returned true).
    #[inline]
    pub unsafe fn alloc(layout: Layout) -> *mut u8 {
        // SAFETY: forwarded (1).
        unsafe { main_inner().core.alloc_as_owner(layout) }
    }

    /// Allocates zeroed memory from the main heap; null past the limit.
    ///
    /// # Safety
    /// 1. The main heap is initialised ([`on_main_thread`] was called).
    pub unsafe fn alloc_zeroed(layout: Layout) -> *mut u8 {
        main_inner().core.alloc_zeroed(layout)
    }

    /// Frees a main-heap block, from any thread.
    ///
    /// # Safety
    /// 1. `p` is a live main-heap block ([`owns`] is true).
    #[inline]
    pub unsafe fn free(p: *mut u8) {
        // SAFETY: forwarded (1).
        unsafe { main_inner().core.free(p) }
    }

    /// Usable size of a main-heap block.
    ///
    /// # Safety
    /// 1. `p` is a live main-heap block.
    pub unsafe fn usable_size(p: *mut u8) -> usize {
        // SAFETY: forwarded (1).
        unsafe { main_inner().core.usable_size(p) }
    }

    /// Resizes a main-heap block on the main thread.
    ///
    /// # Safety
    /// 1. `p` is a live main-heap block allocated with alignment `align`,
    ///    and the caller is the main thread.
    pub unsafe fn realloc(p: *mut u8, align: usize, new_size: usize) -> *mut u8 {
        let core = &main_inner().core;
        // SAFETY: by (1) p is live; its usable size is at least what was
        // asked, so copying that many bytes stays inside the block.
        unsafe {
            let old = Layout::from_size_align_unchecked(core.usable_size(p), align);
            core.realloc(p, old, new_size)
        }
    }

    /// `pthread_atfork` prepare handler: takes the main heap's locks.
    pub fn fork_prepare() {
        if MAIN.state.load(Ordering::Acquire) == READY {
            for l in main_inner().core.locks() {
                l.lock_raw();
            }
        }
    }

    /// `pthread_atfork` parent and child handler: releases the locks.
    pub fn fork_release() {
        if MAIN.state.load(Ordering::Acquire) == READY {
            for l in main_inner().core.locks().iter().rev() {
                // SAFETY: fork_prepare took these locks in this thread
                // (the child's only thread is a copy of it).
                unsafe { l.unlock_raw() };
            }
        }
    }

    /// In a `fork` child: the forking thread is the child's only thread;
    /// if it was not the main heap's owner, it becomes the owner now (the
    /// old owner does not exist in the child).
    pub fn fork_child_adopt() {
        if MAIN.state.load(Ordering::Acquire) == READY && !super::on_main_thread() {
            // SAFETY: in the child no other thread exists, so nobody else
            // can be on the owner path.
            unsafe { main_inner().core.set_owner() };
            MAIN.owner.store(thread_token(), Ordering::Relaxed);
        }
    }
}
