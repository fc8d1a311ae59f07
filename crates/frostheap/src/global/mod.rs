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
//!
//! | module | what |
//! |---|---|
//! | [`start`] | the main heap's static slot and its start-up |
//! | [`route`] | each thread's route, each block's owner, `unguarded`, [`Shared`] |
//! | [`raw`] | the main heap with C semantics, for the C ABI (`frostheap-capi`) |
//! | this file | [`Global`]: one `match` over route × owner per call |

use core::alloc::{GlobalAlloc, Layout};
use std::alloc::System;

use crate::context;
use crate::heap::class::class_for;

pub mod raw;
mod route;
mod start;

use route::{context_alloc, owner_of, route, Owner, Route, CONTEXT, ROUTE};
pub(crate) use route::{on_main_route, set_context};
pub use route::{unguarded, Shared};
pub use start::main_heap;
use start::main_inner;

/// The global allocator. Install it with
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: frostheap::Global = frostheap::Global;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

// SAFETY: main-heap blocks come from HeapCore and context blocks from
// ContextHeap, which return memory valid for the layout or null;
// everything else is delegated to `System`. Frees and reallocs are routed
// by address to the allocator that made the block.
unsafe impl GlobalAlloc for Global {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // The main thread's small allocation, inlined: the route byte, the
        // class, a pop from the current span. Everything else (a refill,
        // large blocks, tracking, other routes) is one call away, so this
        // path needs no stack frame.
        // (With allocation tracking on, the main thread's route is never
        // cached as Main, so tracked allocations take `alloc_routed`.)
        if ROUTE.with(|r| r.get()) == Route::Main {
            if let Some(c) = class_for(layout.size(), layout.align()) {
                // SAFETY: the Main route is set only on the main heap's
                // owner thread.
                if let Some(p) = unsafe { main_inner().core.try_alloc_small_as_owner(c) } {
                    return p.as_ptr();
                }
            }
        }
        // SAFETY: forwarded (GlobalAlloc contract).
        unsafe { self.alloc_routed(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match route() {
            Route::Main => main_inner().core.alloc_zeroed(layout),
            Route::Context => context_alloc(layout, true),
            // SAFETY: GlobalAlloc contract, forwarded.
            _ => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Owner::Main { offset } = start::main_offset(ptr) {
            // SAFETY: ptr is a live main-heap block (GlobalAlloc contract),
            // `offset` bytes into its region (the main heap's region starts
            // at MAIN.base). A worker inside a phase has the free deferred
            // by the core.
            unsafe { main_inner().core.free_at(ptr, offset) }
        } else {
            // SAFETY: forwarded (GlobalAlloc contract); not a main-heap block.
            unsafe { self.dealloc_elsewhere(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let owner = owner_of(ptr);
        match (route(), owner) {
            // SAFETY: ptr is a live main-heap block allocated with layout,
            // and the Main route is set only on the main heap's owner.
            (Route::Main, Owner::Main { .. }) => unsafe {
                main_inner().core.realloc(ptr, layout, new_size)
            },
            // A context block keeps its bytes until its chunk empties, so
            // shrinking is free: keep the block (no copy, no write).
            (_, Owner::Context) if new_size <= layout.size() => ptr,
            // SAFETY: forwarded (GlobalAlloc contract); ptr is a context
            // block.
            (Route::Context, Owner::Context) => unsafe {
                self.realloc_in_context(ptr, layout, new_size)
            },
            // SAFETY: a System block resized by a System-routed thread.
            (Route::System | Route::Unknown, Owner::System) => unsafe {
                System.realloc(ptr, layout, new_size)
            },
            // SAFETY: forwarded (GlobalAlloc contract).
            _ => unsafe { self.move_block(ptr, owner, layout, new_size) },
        }
    }
}

impl Global {
    /// `realloc` of a context block to a larger size by a worker routed to
    /// its context: in place when it is the context's latest block,
    /// otherwise moved within the context.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::realloc` contract, `ptr` is a context block and
    ///    `new_size > layout.size()`.
    unsafe fn realloc_in_context(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ctx = CONTEXT.with(|c| c.get());
        // SAFETY: our own context (see context_alloc).
        let Some(ctx) = (unsafe { ctx.as_ref() }) else {
            // SAFETY: forwarded (1).
            return unsafe { self.move_block(ptr, Owner::Context, layout, new_size) };
        };
        // SAFETY: we are the owner and ptr is a live block of layout.size()
        // bytes if it lies in our slot (checked by grow_in_place through
        // the cursor equality).
        if unsafe { ctx.grow_in_place(ptr, layout.size(), new_size) } {
            return ptr;
        }
        // SAFETY: new_size with layout's align is a valid layout (the
        // GlobalAlloc::realloc contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let q = context_alloc(new_layout, false);
        if !q.is_null() {
            // SAFETY: both live and distinct (q is fresh, of new_size >
            // layout.size() bytes); then the old context block is freed.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, q, layout.size());
                context::free(ptr);
            }
        }
        q
    }

    /// Moves a block made by `owner` to wherever the calling thread
    /// allocates now.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::realloc` contract, and `owner == owner_of(ptr)`.
    #[inline(never)]
    unsafe fn move_block(
        &self,
        ptr: *mut u8,
        owner: Owner,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: new_size with layout's align is a valid layout (the
        // GlobalAlloc::realloc contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: GlobalAlloc contract.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both live and distinct; then the old block goes back
            // to its owner (1).
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                free_by_owner(ptr, owner, layout);
            }
        }
        q
    }

    /// Frees a block that is not the main heap's: a context block or
    /// system memory. Out of line, so that `dealloc` is the main heap's
    /// free alone and inlines like `alloc`.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::dealloc` contract, and `ptr` is not in the main
    ///    heap.
    #[inline(never)]
    unsafe fn dealloc_elsewhere(&self, ptr: *mut u8, layout: Layout) {
        if context::owns(ptr as usize) {
            // SAFETY: a live context block.
            unsafe { context::free(ptr) }
        } else {
            // SAFETY: not ours, so System made it.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Every allocation but the main thread's inlined fast path.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::alloc` contract.
    #[inline(never)]
    unsafe fn alloc_routed(&self, layout: Layout) -> *mut u8 {
        match route() {
            Route::Main => {
                // SAFETY: the Main route is set only on the main heap's owner.
                let p = unsafe { main_inner().core.alloc_as_owner(layout) };
                if crate::track::enabled() && !p.is_null() {
                    crate::track::record(p as usize);
                }
                p
            }
            Route::Context => context_alloc(layout, false),
            // SAFETY: GlobalAlloc contract, forwarded.
            _ => unsafe { System.alloc(layout) },
        }
    }
}

/// Frees `ptr` to the allocator `owner` names.
///
/// # Safety
/// 1. The `GlobalAlloc::dealloc` contract, and `owner == owner_of(ptr)`.
#[inline]
unsafe fn free_by_owner(ptr: *mut u8, owner: Owner, layout: Layout) {
    match owner {
        // SAFETY: (1): a live main-heap block `offset` bytes into the main
        // heap's region. A worker inside a phase has the free deferred by
        // the core.
        Owner::Main { offset } => unsafe { main_inner().core.free_at(ptr, offset) },
        // SAFETY: (1): a live context block.
        Owner::Context => unsafe { context::free(ptr) },
        // SAFETY: (1): not ours, so System made it.
        Owner::System => unsafe { System.dealloc(ptr, layout) },
    }
}
