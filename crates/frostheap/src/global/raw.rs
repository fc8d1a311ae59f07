//! The main heap as the C ABI (`frostheap-capi`) needs it: C semantics
//! (no layout on free), explicit routing, and `fork` handlers.

use core::alloc::Layout;
use core::sync::atomic::Ordering;

use super::start::{main_inner, main_owns, AUTO_HUGE_PAGES, MAIN, READY};
use crate::heap::Heap;
use crate::sync::thread_token;

/// Default alignment of `malloc` (glibc's `MALLOC_ALIGNMENT`).
pub const MALLOC_ALIGN: usize = 16;

/// Whether the calling thread is the main heap's owner (initialising
/// the main heap on the first call, with the C ABI's defaults: see
/// `AUTO_HUGE_PAGES`).
#[inline]
pub fn on_main_thread() -> bool {
    if MAIN.state.load(Ordering::Relaxed) != READY {
        AUTO_HUGE_PAGES.store(false, Ordering::Relaxed);
    }
    super::start::on_main_thread()
}

/// Whether the calling thread is the main heap's owner, without
/// initialising anything: false before the first allocation (call
/// [`on_main_thread`] then). One load and one compare, for fast paths.
#[inline(always)]
pub fn is_main_thread() -> bool {
    // Thread tokens are never 0, so an unset owner matches nobody.
    MAIN.owner.load(Ordering::Relaxed) == thread_token()
}

/// C `malloc` on the main heap: `size` bytes aligned to
/// [`MALLOC_ALIGN`]; null past the limit.
///
/// # Safety
/// 1. The caller is the main thread ([`is_main_thread`] or
///    [`on_main_thread`] returned true).
#[inline(always)]
pub unsafe fn malloc(size: usize) -> *mut u8 {
    // SAFETY: forwarded (1).
    unsafe { main_inner().core.alloc_c_as_owner::<false>(size) }
}

/// C `calloc` on the main heap: like [`malloc`], zeroed.
///
/// # Safety
/// 1. As [`malloc`].
#[inline(always)]
pub unsafe fn calloc(size: usize) -> *mut u8 {
    // SAFETY: forwarded (1).
    unsafe { main_inner().core.alloc_c_as_owner::<true>(size) }
}

/// Whether `p` points into the main heap.
#[inline]
pub fn owns(p: *const u8) -> bool {
    main_owns(p as *mut u8)
}

/// The main heap handle (initialising it if needed).
pub fn heap() -> Heap {
    self::on_main_thread();
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

/// C `realloc` of a main-heap block on the main thread, to
/// `new_size > 0` bytes aligned to [`MALLOC_ALIGN`]; null (and `p`
/// untouched) past the limit.
///
/// # Safety
/// 1. `p` is a live main-heap block and the caller is the main thread.
#[inline]
pub unsafe fn realloc_c(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded (1).
    unsafe { main_inner().core.realloc_c_as_owner(p, new_size) }
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
    if MAIN.state.load(Ordering::Acquire) != READY {
        return;
    }
    // SAFETY: in the child this is the only thread, and it is in the
    // fork handler, not in a free.
    unsafe { main_inner().core.repair_remote_frees_after_fork() };
    if !super::start::on_main_thread() {
        // SAFETY: in the child no other thread exists, so nobody else
        // can be on the owner path.
        unsafe { main_inner().core.set_owner() };
        MAIN.owner.store(thread_token(), Ordering::Relaxed);
    }
}
