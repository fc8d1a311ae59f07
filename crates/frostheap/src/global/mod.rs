//! `frostheap::Global`: the global allocator.
//!
//! The thread that makes the process's first allocation — `main`, since
//! std allocates while setting up the main thread — owns the **main heap**;
//! every other thread gets a **thread heap** of its own at its first
//! allocation ([`heaps`]), with the same fast paths. All of them live in
//! one reservation and share one limit, `FROSTHEAP_MAX`, counted where
//! memory is committed ([`crate::heap::process`]); `FROSTHEAP_MIN` is
//! committed for the main heap up front. Every free and realloc is routed
//! by address: a block goes back to the heap that made it whoever frees it
//! (a remote free when another thread does), a context block to its
//! context, anything else to the system allocator.
//!
//! The environment is read at the first allocation, without allocating; a
//! bad value prints one line and exits with status 2 before `main` runs.
//!
//! | module | what |
//! |---|---|
//! | [`start`](mod@start) | the main heap's start-up |
//! | [`heaps`] | the arena, thread heaps, adoption after a thread exits |
//! | [`route`](mod@route) | each thread's route, each block's owner, `unguarded`, [`Shared`] |
//! | [`raw`] | the main heap with C semantics, for the C ABI (`frostheap-capi`) |
//! | this file | [`Global`]: one `match` over route × owner per call |

use core::alloc::{GlobalAlloc, Layout};

use crate::context;
use crate::heap::class::class_for;
use crate::heap::HeapInner;

mod heaps;
pub mod raw;
mod route;
mod start;
mod stats;

pub use heaps::probe_reservation;
use route::{
    context_alloc, own_heap, owner_of, route, system_alloc, system_dealloc, system_realloc, Owner,
    Route, CONTEXT, FAST_HEAP, ROUTE,
};
pub(crate) use route::{on_main_route, set_context};
pub use route::{unguarded, Shared};
pub use start::main_heap;
use start::main_inner;
pub(crate) use start::start;
pub(crate) use stats::arena_refusal_line;
pub use stats::{stats, ProcessStats};

/// Gives the free memory of every heap of the arena (the main heap and
/// the thread heaps) back to the system, as glibc's `malloc_trim`,
/// mimalloc's `mi_collect(true)` or jemalloc's `arena.<i>.purge` do, and
/// returns the bytes no longer charged against `FROSTHEAP_MAX`.
///
/// Each heap already gives back on its own once its free memory clearly
/// outweighs what is live (see `docs/limit.md`), and all of it before the
/// limit refuses an allocation; `trim` is for a program that has just
/// dropped a large structure and wants its resident memory down now
/// rather than when it next grows. What comes back is every free span: the
/// free top of each heap's range is decommitted (down to its minimum,
/// `FROSTHEAP_MIN` for the main heap) and the free spans below it are
/// purged (`MADV_DONTNEED`). Memory inside spans that still hold a live
/// block stays. The calling thread first hands back the other threads'
/// blocks it keeps for reuse, and brings back those of its own spans
/// that filled up and were then freed by other threads; such blocks of
/// another thread's heap go back when that thread next allocates or
/// exits. The free chunks each runtime worker keeps for its next tasks
/// (two at most) are purged too. An explicit heap is trimmed with
/// [`crate::Heap::trim`].
///
/// Safe anywhere: a heap that a phase has frozen now is left as it is
/// (trim after the phase). It takes each heap's span lock in turn,
/// waiting for it, and passes over every heap's free spans: a call for
/// after a large release, not for every iteration.
///
/// ```
/// let released = frostheap::trim();
/// assert!(frostheap::stats().committed <= frostheap::stats().limit);
/// # let _ = released;
/// ```
pub fn trim() -> usize {
    // SAFETY: the calling thread's own heap, only while it allocates from
    // it.
    let heaps = unsafe { heaps::trim(route::heap_on_owner_path()) };
    heaps + crate::context::reclaim_kept()
}

/// The global allocator. Install it with
///
/// ```ignore
/// #[global_allocator]
/// static GLOBAL: frostheap::Global = frostheap::Global;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

// SAFETY: heap blocks come from HeapCore and context blocks from
// ContextHeap, which return memory valid for the layout or null;
// everything else is delegated to `System`. Frees and reallocs are routed
// by address to the allocator that made the block.
unsafe impl GlobalAlloc for Global {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // A thread's small allocation from its own heap, inlined: the heap
        // word, the class, a pop from the current span. Everything else (a
        // refill, large blocks, tracking, other routes) is one call away,
        // so this path needs no stack frame. (With allocation tracking on,
        // the heap word stays null, so tracked allocations take
        // `alloc_routed`.)
        let h = FAST_HEAP.with(|h| h.get());
        if !h.is_null() {
            if let Some(c) = class_for(layout.size(), layout.align()) {
                // SAFETY: the heap word is set only on the heap's owner
                // thread, to a heap in static storage.
                if let Some(p) = unsafe { (*h).core.try_alloc_small_as_owner(c) } {
                    return p.as_ptr();
                }
                // The current span is dry: other threads' blocks this
                // thread freed come next (see heap::remote_cache), before
                // the refill. Looked at after the pop, so that a thread
                // that frees no other thread's blocks pays nothing on its
                // fast path. They are aligned to 16 only.
                if layout.align() <= 16 {
                    // SAFETY: as above; the owner owns the heap's cache.
                    if let Some(p) = unsafe { (*h).remote_cache.pop(c) } {
                        return p.as_ptr();
                    }
                }
            }
        }
        // SAFETY: forwarded (GlobalAlloc contract).
        unsafe { self.alloc_routed(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // The thread's own heap straight from its heap word, as `alloc`
        // takes it (non-null only on the heap route with tracking off),
        // not through `route` and `own_heap`, which read a thread-local
        // each: zeroed blocks of 16 B – 1 KiB took 1.07–1.10× the time of
        // the library before thread heaps that way, 1.01–1.05× this way
        // (`global_path`'s `churn0`).
        let h = FAST_HEAP.with(|h| h.get());
        if !h.is_null() {
            // SAFETY: the heap word is set only on the heap's owner thread,
            // to a heap in static storage.
            let p = unsafe { (*h).core.alloc_zeroed(layout) };
            return after_heap_alloc(p, layout.size());
        }
        let p = match route() {
            Route::Heap => match own_heap() {
                Some(h) => h.core.alloc_zeroed(layout),
                // SAFETY: GlobalAlloc contract, forwarded.
                None => return unsafe { system_alloc(layout, true) },
            },
            Route::Shared => main_inner().core.alloc_zeroed(layout),
            Route::Context => return context_alloc(layout, true),
            // SAFETY: GlobalAlloc contract, forwarded.
            _ => return unsafe { system_alloc(layout, true) },
        };
        after_heap_alloc(p, layout.size())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // A block of the thread's own heap, inlined: the heap word, one
        // compare against the heap's region, a push on the span's list;
        // then another heap's block whose bitmap word the thread holds.
        let h = FAST_HEAP.with(|h| h.get());
        if !h.is_null() {
            // SAFETY: the heap word names the calling thread's own heap,
            // in static storage.
            let core = unsafe { &(*h).core };
            let offset = (ptr as usize).wrapping_sub(core.base());
            if core.owns(ptr as usize) {
                // SAFETY: ptr is a live block of our own heap (GlobalAlloc
                // contract), `offset` bytes into its region.
                unsafe { core.free_at_as_owner(ptr, offset) };
                return;
            }
            // Another thread heap's block whose bitmap word this thread
            // holds (a consumer's free, most often), inlined too. Whatever
            // its alignment: a block of a small span starts where one of
            // the span's blocks does (`class_for` gives an over-aligned
            // layout a class whose size is a multiple of the alignment).
            // SAFETY: h is the calling thread's heap, in static storage
            // (above), and the thread is no runtime worker inside a phase
            // (the heap word is null unless the route is `Heap`); ptr is a
            // live block, not of h (GlobalAlloc contract).
            if unsafe { (*h).take_held_remote_free(ptr) } {
                return;
            }
            // SAFETY: h is the calling thread's heap, in static storage
            // (above); forwarded (GlobalAlloc contract).
            return unsafe { self.dealloc_elsewhere(&*h, ptr, layout) };
        }
        // SAFETY: forwarded (GlobalAlloc contract).
        unsafe { self.dealloc_rest(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let owner = owner_of(ptr);
        match (route(), owner) {
            (Route::Heap, Owner::Heap { heap, .. }) if heap.core.is_owner() => {
                // SAFETY: ptr is a live block of our own heap, allocated
                // with layout.
                let q = unsafe { heap.core.realloc(ptr, layout, new_size) };
                if q != ptr {
                    return after_heap_alloc(q, new_size);
                }
                q
            }
            // A context block keeps its bytes until its chunk empties, so
            // shrinking is free: keep the block (no copy, no write).
            (_, Owner::Context) if new_size <= layout.size() => ptr,
            (Route::Context, Owner::Context) => {
                // SAFETY: forwarded (GlobalAlloc contract); ptr is a
                // context block and new_size > layout.size().
                unsafe { self.realloc_in_context(ptr, layout, new_size) }
            }
            // SAFETY: a System block (made by `Global`, charged) resized
            // by a System-routed thread.
            (Route::System | Route::Unknown, Owner::System) => unsafe {
                system_realloc(ptr, layout, new_size)
            },
            // SAFETY: forwarded (GlobalAlloc contract).
            _ => unsafe { self.move_block(ptr, owner, layout, new_size) },
        }
    }
}

/// What every allocation from a heap goes through once it is made, out of
/// the inlined fast path: the allocation site when tracking is on, and the
/// one line naming frostheap's limit when the heap refused.
#[inline]
fn after_heap_alloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        stats::out_of_memory_line(size);
    } else if crate::track::enabled() {
        crate::track::record(p as usize);
    }
    p
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
        if let Owner::Heap { heap, .. } = owner {
            if new_size > layout.size() && layout.align() <= crate::region::PAGE_SIZE {
                // SAFETY: forwarded (1): a block of another heap than the
                // thread's own.
                let q = unsafe { move_in(heap, ptr, new_size) };
                if !q.is_null() {
                    return after_heap_alloc(q, new_size);
                }
            }
        }
        // SAFETY: new_size with layout's align is a valid layout (the
        // GlobalAlloc::realloc contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: GlobalAlloc contract.
        let alloc = || unsafe { self.alloc(new_layout) };
        let q = match route::own_heap() {
            // A shrink's refusal is none (it keeps its block): neither
            // counted nor printed (`stats::out_of_memory_line`), on the
            // thread heap's path; a runtime task's context heap still
            // counts and reports its refused chunk.
            Some(h) => h.core.alloc_for_move(new_size <= layout.size(), alloc),
            None => alloc(),
        };
        if q.is_null() {
            // A shrink that could not move keeps its block (it holds the
            // new size, aligned as before): past the limit, a program
            // giving memory back must not be refused.
            return if new_size <= layout.size() { ptr } else { q };
        }
        // SAFETY: both live and distinct; then the old block goes back to
        // its owner (1).
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
            free_by_owner(ptr, owner, layout);
        }
        q
    }

    /// Frees a block that is not the calling thread's own: another heap's
    /// (a remote free), a context block or system memory. Out of line, so
    /// that `dealloc` is the own heap's free alone and inlines like
    /// `alloc`. Another thread heap's small block, freed on a thread with a
    /// heap of its own outside phases, is kept for this thread's next
    /// allocation of its class or gathered for its heap
    /// (`HeapInner::take_remote_free`), with nothing else in the function;
    /// the rest is [`Global::dealloc_rest`]'s. A consumer's free into a
    /// bitmap word it holds (most of its frees) never comes here: `dealloc`
    /// takes it inline. `h`, the thread's heap, comes from `dealloc`, which
    /// has read the heap word.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::dealloc` contract; `h` is the calling thread's
    ///    heap, and `ptr` is not one of its blocks.
    #[inline(never)]
    unsafe fn dealloc_elsewhere(&self, h: &'static HeapInner, ptr: *mut u8, layout: Layout) {
        if layout.align() <= 16 {
            if let Some((heap, _)) = heaps::heap_of(ptr) {
                // Not the main heap: a runtime may freeze it.
                if !core::ptr::eq(heap, main_inner()) {
                    // SAFETY: h is the calling thread's own heap, in static
                    // storage; ptr is a live block of `heap` (GlobalAlloc
                    // contract), another thread heap (our own takes
                    // `dealloc`'s inlined path); every small block is
                    // aligned to 16.
                    if unsafe { h.take_remote_free(heap, ptr) } {
                        return;
                    }
                }
            }
        }
        // SAFETY: forwarded (1).
        unsafe { self.dealloc_rest(ptr, layout) }
    }

    /// [`Global::dealloc_elsewhere`] of anything its path did not take.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::dealloc` contract.
    #[inline(never)]
    unsafe fn dealloc_rest(&self, ptr: *mut u8, layout: Layout) {
        let owner = owner_of(ptr);
        if let Owner::Heap { heap, offset } = owner {
            if FAST_HEAP.with(|h| h.get()).is_null() && ROUTE.with(|r| r.get()) == Route::Unknown {
                // The thread's first call is a free of another thread's
                // block (a consumer): it gets its heap now, as its first
                // allocation would give it, so that its frees take the
                // cache and the batch. The heap it gets may be the block's
                // own (adopted from the thread that made it, which has
                // exited): then this is a free of its own.
                route();
                let h = FAST_HEAP.with(|h| h.get());
                if core::ptr::eq(h, heap) {
                    // SAFETY: ptr is a live block of our own heap now
                    // (GlobalAlloc contract), `offset` bytes into it.
                    unsafe { heap.core.free_at_as_owner(ptr, offset) };
                    return;
                }
                if !h.is_null() && layout.align() <= 16 && !core::ptr::eq(heap, main_inner()) {
                    // SAFETY: as in `dealloc_elsewhere`, with h now the
                    // thread's heap.
                    if unsafe { (*h).take_remote_free(heap, ptr) } {
                        return;
                    }
                }
            }
        }
        // SAFETY: forwarded (1); owner_of names the block's allocator.
        unsafe { free_by_owner(ptr, owner, layout) }
    }

    /// Every allocation but the main thread's inlined fast path.
    ///
    /// # Safety
    /// 1. The `GlobalAlloc::alloc` contract.
    #[inline(never)]
    unsafe fn alloc_routed(&self, layout: Layout) -> *mut u8 {
        let p = match route() {
            Route::Heap => match own_heap() {
                // SAFETY: own_heap is the calling thread's: it owns it.
                Some(h) => unsafe { h.core.alloc_as_owner(layout) },
                // SAFETY: GlobalAlloc contract, forwarded.
                None => return unsafe { system_alloc(layout, false) },
            },
            Route::Shared => main_inner().core.alloc(layout),
            Route::Context => return context_alloc(layout, false),
            // SAFETY: GlobalAlloc contract, forwarded.
            _ => return unsafe { system_alloc(layout, false) },
        };
        after_heap_alloc(p, layout.size())
    }
}

/// Grows `ptr`, a large block of `heap`, another heap than the calling
/// thread's own (another thread's, or the main heap), by moving its pages
/// into the thread's heap (`HeapCore::move_large_in`): the growth alone is
/// charged against the limit, and the block changes heap. Only on the
/// heap route (never for a runtime worker, whose allocations go to its
/// context); null when the block must be copied instead.
///
/// # Safety
/// 1. The `GlobalAlloc::realloc` contract, and `ptr` is a live block of
///    `heap`, not of the calling thread's own heap.
#[cold]
unsafe fn move_in(heap: &'static HeapInner, ptr: *mut u8, new_size: usize) -> *mut u8 {
    if route() != Route::Heap {
        return core::ptr::null_mut();
    }
    match own_heap() {
        // SAFETY: h is the calling thread's heap, on the heap route (no
        // worker inside a phase); by (1) ptr is a live block of `heap`,
        // the caller's.
        Some(h) if !core::ptr::eq(h, heap) => unsafe {
            h.core.move_large_in(&heap.core, ptr, new_size)
        },
        _ => core::ptr::null_mut(),
    }
}

/// Frees `ptr` to the allocator `owner` names.
///
/// # Safety
/// 1. The `GlobalAlloc::dealloc` contract, and `owner == owner_of(ptr)`.
#[inline]
unsafe fn free_by_owner(ptr: *mut u8, owner: Owner, layout: Layout) {
    match owner {
        // SAFETY: (1): a live block of `heap`, `offset` bytes into its
        // region. A worker inside a phase has the free deferred by
        // the core.
        Owner::Heap { heap, offset } => unsafe { heap.core.free_at(ptr, offset) },
        // SAFETY: (1): a live context block.
        Owner::Context => unsafe { context::free(ptr) },
        // SAFETY: (1): not ours, so `Global` made it on the system
        // allocator, charged.
        Owner::System => unsafe { system_dealloc(ptr, layout) },
    }
}
