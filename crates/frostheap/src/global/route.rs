//! Routing: where the calling thread's allocations go (its [`Route`]) and
//! who owns a block (its [`Owner`], by address).
//!
//! The route is a thread-local byte: the main thread allocates from the
//! main heap, a runtime worker inside a phase from its context heap, every
//! other thread (and any thread inside [`unguarded`]) from the system
//! allocator. A block's owner is found from its address alone: the main
//! heap's reservation (two compares against the start-up slot), the
//! context heaps' reservation, or system memory. `Global` matches on the
//! pair once per call.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::sync::atomic::Ordering;
use std::alloc::System;

use super::start::{main_offset, on_main_thread, MAIN, READY};
use crate::context::{self, ContextHeap};

/// Where the calling thread's allocations go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Route {
    /// Not decided yet (first allocation of this thread).
    Unknown = 0,
    /// The main heap (the main thread).
    Main = 1,
    /// The system allocator (other threads, `unguarded` scopes).
    System = 2,
    /// The worker's context heap (runtime workers inside a phase).
    Context = 3,
}

thread_local! {
    pub(super) static ROUTE: Cell<Route> = const { Cell::new(Route::Unknown) };
    pub(super) static CONTEXT: Cell<*const ContextHeap> = const { Cell::new(core::ptr::null()) };
}

/// The calling thread's route.
#[inline]
pub(super) fn route() -> Route {
    let r = ROUTE.with(|r| r.get());
    if r != Route::Unknown {
        return r;
    }
    let r = if on_main_thread() {
        Route::Main
    } else {
        Route::System
    };
    cache_route(r);
    r
}

/// Runs before `main` (an `.init_array` constructor): creates std's stdout
/// (its line buffer) in system memory, so that `println!` inside parallel
/// tasks writes outside every guarded heap even if main printed first.
extern "C" fn stdout_in_system_memory() {
    ROUTE.with(|c| c.set(Route::System));
    let _ = std::io::stdout();
    ROUTE.with(|c| c.set(Route::Unknown));
}

#[used]
#[link_section = ".init_array"]
static STDOUT_CTOR: extern "C" fn() = stdout_in_system_memory;

/// Whether the calling thread's allocations go to the main heap now (the
/// main thread, outside `unguarded`).
pub(crate) fn on_main_route() -> bool {
    route() == Route::Main
}

/// Sets the calling thread's route, returning the previous one.
pub(crate) fn set_route(r: Route) -> Route {
    let prev = route();
    store_route(r);
    prev
}

/// Stores `r` as the calling thread's route, except that Main is never
/// stored while allocation tracking is on: `Global::alloc`'s inlined fast
/// path applies to a stored Main route only, and tracked allocations must
/// take the path that records them (`route` then recomputes Main).
pub(super) fn store_route(r: Route) {
    let r = if r == Route::Main && crate::track::enabled() {
        Route::Unknown
    } else {
        r
    };
    ROUTE.with(|c| c.set(r));
}

/// Caches the route `route` computed, once the main heap exists
/// (allocations made while it is being set up go to the system without
/// deciding anything).
fn cache_route(r: Route) {
    if MAIN.state.load(Ordering::Acquire) == READY {
        store_route(r);
    }
}

/// Makes a worker's allocations go to `ctx` (null: back to the system).
pub(crate) fn set_context(ctx: *const ContextHeap) {
    CONTEXT.with(|c| c.set(ctx));
    set_route(if ctx.is_null() {
        Route::System
    } else {
        Route::Context
    });
}

/// Runs `f` with the calling thread's allocations going to system memory:
/// outside every guarded heap, so parallel tasks may write them. The
/// runtime builds its queues and result slots this way; use it for state
/// you mean to share with tasks (channels, buffers), or use [`Shared`].
pub fn unguarded<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Route);
    impl Drop for Restore {
        fn drop(&mut self) {
            store_route(self.0);
        }
    }
    let _restore = Restore(set_route(Route::System));
    f()
}

/// A value in system memory, outside guarded heaps: parallel tasks may
/// write it (atomics, locks, channels) while the main heap is frozen.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let done = frostheap::Shared::new(AtomicUsize::new(0));
/// done.fetch_add(1, Ordering::Relaxed);
/// assert_eq!(done.load(Ordering::Relaxed), 1);
/// ```
pub struct Shared<T>(Box<T>);

impl<T> Shared<T> {
    /// Moves `value` into system memory.
    pub fn new(value: T) -> Shared<T> {
        Shared(unguarded(|| Box::new(value)))
    }

    /// Moves the value back out.
    pub fn into_inner(self) -> T {
        *self.0
    }
}

impl<T> core::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> core::ops::DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker's allocation: bump allocation in its context heap (the hot
/// path of allocation-heavy tasks, so inlined into `alloc`).
#[inline]
pub(super) fn context_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    let ctx = CONTEXT.with(|c| c.get());
    // SAFETY: a worker's context pointer is set by its own thread and the
    // context outlives the phase; only this (owner) thread allocates.
    if let Some(ctx) = unsafe { ctx.as_ref() } {
        // SAFETY: we are the owning worker.
        let p = unsafe { ctx.alloc(layout.size(), layout.align()) };
        if !p.is_null() {
            if zeroed {
                // SAFETY: p has layout.size() writable bytes. Reused chunks
                // are not zeroed.
                unsafe { core::ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
    }
    context_fallback(layout, zeroed)
}

/// Slot exhausted (or no context): system memory.
#[cold]
#[inline(never)]
fn context_fallback(layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: GlobalAlloc contract, forwarded.
    unsafe {
        if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    }
}

/// Who made a block, by its address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Owner {
    /// The main heap; `offset` bytes into its region.
    Main { offset: usize },
    /// A context heap.
    Context,
    /// The system allocator (anything outside frostheap's reservations).
    System,
}

/// The owner of the block at `p`: two compares for the main heap, then
/// the context heaps' reservation.
#[inline]
pub(super) fn owner_of(p: *mut u8) -> Owner {
    match main_offset(p) {
        Owner::System if context::owns(p as usize) => Owner::Context,
        owner => owner,
    }
}
