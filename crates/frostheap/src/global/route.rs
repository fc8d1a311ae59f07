//! Routing: where the calling thread's allocations go (its [`Route`]) and
//! who owns a block (its [`Owner`], by address).
//!
//! The route is a thread-local byte: every thread allocates from its own
//! heap (the main thread's is the main heap; see [`super::heaps`]), a
//! runtime worker inside a phase from its context heap, any thread inside
//! [`unguarded`] from the system allocator. A block's owner is found from
//! its address alone: a heap of the arena (one compare, then a shift), the
//! context heaps' reservation, or system memory. `Global` matches on the
//! pair once per call.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::System;

use super::heaps;
use super::start::{main_inner, on_main_thread, C_ABI, MAIN, READY};
use crate::context::{self, ContextHeap};
use crate::heap::HeapInner;

/// Where the calling thread's allocations go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Route {
    /// Not decided yet (first allocation of this thread).
    Unknown = 0,
    /// The thread's own heap (the main heap for the main thread).
    Heap = 1,
    /// The system allocator (`unguarded` scopes, a thread whose heap is
    /// being attached or that has exited).
    System = 2,
    /// The worker's context heap (runtime workers inside a phase).
    Context = 3,
    /// The main heap's locked shared path: every arena slot is taken.
    Shared = 4,
}

thread_local! {
    pub(super) static ROUTE: Cell<Route> = const { Cell::new(Route::Unknown) };
    /// The thread's heap while its route is `Heap` and allocation tracking
    /// is off (null otherwise): the one word `Global::alloc`'s inlined fast
    /// path reads.
    pub(super) static FAST_HEAP: Cell<*const HeapInner> = const { Cell::new(core::ptr::null()) };
    /// The thread's heap once attached, whatever its route.
    pub(super) static MINE: Cell<*const HeapInner> = const { Cell::new(core::ptr::null()) };
    pub(super) static CONTEXT: Cell<*const ContextHeap> = const { Cell::new(core::ptr::null()) };
}

/// The thread-specific data key whose destructor gives a thread's heap up
/// when the thread exits ([`give_up_at_exit`]; 0: not made yet, else the
/// key plus one). Its value in a thread is the thread's arena slot plus
/// one. A key, not a std thread-local with `Drop`: std registers those
/// with `__cxa_thread_atexit_impl`, which allocates a list entry in every
/// thread (a span of one more size class there), and their registration
/// is std's code, which every process then maps. Unlike those, a key's
/// destructor does not keep a dynamic library loaded: a library whose
/// global allocator this is must not be unloaded (nor could it be, with
/// blocks of its heaps live); the C library is linked `-z nodelete`.
static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);

/// The exit key, made at the first thread heap's attach; `None` if the
/// system has no key left (the thread then gets no heap).
fn exit_key() -> Option<u32> {
    let k = EXIT_KEY.load(Ordering::Acquire);
    if k != 0 {
        return Some((k - 1) as u32);
    }
    let key = crate::os::thread_key(give_up_at_exit).ok()?;
    match EXIT_KEY.compare_exchange(0, key as usize + 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(key),
        Err(won) => {
            // Another thread made one first: no thread has set ours.
            crate::os::delete_thread_key(key);
            Some((won - 1) as u32)
        }
    }
}

/// Runs when a thread that attached a heap exits, with its arena slot
/// plus one: abandons the heap, for another thread to adopt.
///
/// # Safety
/// 1. Called by glibc as the exit key's destructor, on the exiting thread,
///    with the value `decide` set for it there: the thread owns the heap
///    of that slot.
unsafe extern "C" fn give_up_at_exit(slot: *mut libc::c_void) {
    let idx = slot as usize - 1;
    // Whatever this thread still allocates (later destructors) goes to
    // the system; its frees are routed by address as always.
    ROUTE.with(|r| r.set(Route::System));
    FAST_HEAP.with(|h| h.set(core::ptr::null()));
    MINE.with(|h| h.set(core::ptr::null()));
    let hook = EXIT_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: EXIT_HOOK holds 0 or a `fn()` stored by set_exit_hook.
        let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
        hook();
    }
    // SAFETY: (1): this thread owns slot idx and, its route now System and
    // its other copies of the heap cleared, never uses the owner path
    // again.
    unsafe { heaps::detach(idx) };
}

/// What a thread calls when it gives its heap up, before anyone may adopt
/// the heap ([`set_exit_hook`]; 0: nothing), as a `fn()` address.
static EXIT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Registers the exit hook (the C ABI clears its thread-local copy of the
/// thread's heap there).
pub(super) fn set_exit_hook(hook: fn()) {
    EXIT_HOOK.store(hook as usize, Ordering::Release);
}

/// The calling thread's heap if it allocates from it now: its route is
/// the heap (not a context inside a phase, not the system), and it has
/// one.
pub(super) fn heap_on_owner_path() -> Option<&'static HeapInner> {
    if ROUTE.with(|r| r.get()) != Route::Heap {
        return None;
    }
    // SAFETY: MINE holds null or a heap in static storage.
    unsafe { MINE.with(|h| h.get()).as_ref() }
}

/// The calling thread's heap unless the thread is a runtime worker inside
/// a phase (its route the context): a thread that may give the other
/// heaps' blocks it holds back to them (a worker's would write frozen
/// heaps).
pub(super) fn heap_outside_phase() -> Option<&'static HeapInner> {
    if ROUTE.with(|r| r.get()) == Route::Context {
        return None;
    }
    // SAFETY: MINE holds null or a heap in static storage.
    unsafe { MINE.with(|h| h.get()).as_ref() }
}

/// The calling thread's route.
#[inline]
pub(super) fn route() -> Route {
    let r = ROUTE.with(|r| r.get());
    if r != Route::Unknown {
        return r;
    }
    decide()
}

/// The calling thread's heap (attaching one if it has none yet), or
/// `None` when it cannot have one (every slot taken, the main heap not
/// started, the thread exiting).
#[inline]
pub(super) fn own_heap() -> Option<&'static HeapInner> {
    let h = MINE.with(|h| h.get());
    // SAFETY: MINE holds null or a heap in static storage.
    if let Some(h) = unsafe { h.as_ref() } {
        return Some(h);
    }
    if on_main_thread() && MAIN.state.load(Ordering::Acquire) == READY {
        // The main thread's heap, whatever its route says (the C ABI's
        // callers have no routes: an `.init_array` constructor that runs
        // with the System route still allocates C memory).
        MINE.with(|m| m.set(main_inner()));
        return Some(main_inner());
    }
    if ROUTE.with(|r| r.get()) == Route::Unknown {
        decide();
    }
    // SAFETY: as above.
    unsafe { MINE.with(|h| h.get()).as_ref() }
}

/// The first allocation of a thread: the main heap for the main thread,
/// a heap of its own for any other (`Shared` when none is left).
#[cold]
#[inline(never)]
fn decide() -> Route {
    if !MINE.with(|h| h.get()).is_null() {
        store_route(Route::Heap); // back from a context or `unguarded`
        return Route::Heap;
    }
    if on_main_thread() {
        if MAIN.state.load(Ordering::Acquire) != READY {
            return Route::System; // the main heap is being built
        }
        MINE.with(|h| h.set(main_inner()));
        store_route(Route::Heap);
        return Route::Heap;
    }
    if MAIN.state.load(Ordering::Acquire) != READY {
        return Route::System; // before start-up: decide nothing yet
    }
    // Allocations made while the heap is attached go to the system.
    ROUTE.with(|r| r.set(Route::System));
    // No key, no heap: a heap the thread could not give up at exit would
    // never be adopted.
    let attached = exit_key().and_then(|key| {
        let (idx, h) = heaps::attach()?;
        // glibc sets keys below 32 without allocating; a later key may need
        // a block of glibc's, and without one the heap goes straight back.
        if crate::os::set_thread_value(key, idx + 1).is_err() {
            // SAFETY: attached just now by this thread, which never uses
            // it (MINE and the route are not set).
            unsafe { heaps::detach(idx) };
            return None;
        }
        Some(h)
    });
    match attached {
        Some(h) => {
            MINE.with(|m| m.set(h));
            store_route(Route::Heap);
            Route::Heap
        }
        None => {
            store_route(Route::Shared);
            Route::Shared
        }
    }
}

/// Runs before `main` (an `.init_array` constructor): creates std's stdout
/// (its line buffer) in system memory, so that `println!` inside parallel
/// tasks writes outside every guarded heap even if main printed first.
///
/// Not in the C library ([`super::raw::serving_c`] ran first): a C program
/// never prints through the library's Rust stdout, and creating it would
/// only map std's I/O code and glibc's `malloc` into the process (100 KiB
/// of the library's text stayed unmapped without it, measured with
/// `/proc/self/pagemap`).
extern "C" fn stdout_in_system_memory() {
    if C_ABI.load(Ordering::Relaxed) {
        return;
    }
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
    route() == Route::Heap && core::ptr::eq(MINE.with(|h| h.get()), main_inner())
}

/// Sets the calling thread's route, returning the previous one.
pub(crate) fn set_route(r: Route) -> Route {
    let prev = route();
    store_route(r);
    prev
}

/// Stores `r` as the calling thread's route, and the fast path's heap
/// word with it: the thread's heap when the route is `Heap`, except while
/// allocation tracking is on (tracked allocations must take the path that
/// records them).
pub(super) fn store_route(r: Route) {
    ROUTE.with(|c| c.set(r));
    let fast = if r == Route::Heap && !crate::track::enabled() {
        MINE.with(|h| h.get())
    } else {
        core::ptr::null()
    };
    FAST_HEAP.with(|h| h.set(fast));
}

/// Makes a worker's allocations go to `ctx` (null: back to the worker's
/// own heap, attached at its next allocation if it has none).
pub(crate) fn set_context(ctx: *const ContextHeap) {
    CONTEXT.with(|c| c.set(ctx));
    store_route(if ctx.is_null() {
        Route::Unknown
    } else {
        Route::Context
    });
}

/// Charges `bytes` that `Global` takes from the system allocator (a
/// thread inside [`unguarded`], a [`Shared`] value, a thread whose heap is
/// being attached or was given up at its exit, or with no heap to be had,
/// and any allocation before start-up) against the process limit, as
/// external memory (`Kind::External`, where the C ABI charges the glibc
/// blocks of threads without a heap), the heaps' free memory given back
/// first if it is refused ([`process::charge`](crate::heap::process::charge));
/// false (a refusal counted, its line printed) when it still is. Until
/// 2026-12-07 these bytes were counted nowhere: 512 MiB made inside
/// `unguarded` under `FROSTHEAP_MAX=64M` were granted, and
/// `frostheap::stats()` showed 2 MiB committed (a user's trial). The bytes
/// are the request's, without the system allocator's own overhead.
fn charge_system(bytes: usize) -> bool {
    if crate::heap::process::charge(crate::heap::process::Kind::External, bytes) {
        return true;
    }
    super::stats::out_of_memory_line_of("system", bytes, crate::heap::Refusal::Limit, 0);
    false
}

/// Releases bytes charged with [`charge_system`].
fn release_system(bytes: usize) {
    crate::heap::process::release(crate::heap::process::Kind::External, bytes);
}

/// A block of the system allocator for `Global`, charged
/// ([`charge_system`]); null past the limit.
///
/// # Safety
/// 1. The `GlobalAlloc::alloc` contract.
#[cold]
#[inline(never)]
pub(super) unsafe fn system_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    if !charge_system(layout.size()) {
        return core::ptr::null_mut();
    }
    // SAFETY: forwarded (1).
    let p = unsafe {
        if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        }
    };
    if p.is_null() {
        release_system(layout.size());
    }
    p
}

/// Frees a block [`system_alloc`] made, releasing its charge.
///
/// # Safety
/// 1. The `GlobalAlloc::dealloc` contract, for a block of the system
///    allocator (made by `Global`, charged).
pub(super) unsafe fn system_dealloc(ptr: *mut u8, layout: Layout) {
    // SAFETY: forwarded (1).
    unsafe { System.dealloc(ptr, layout) };
    release_system(layout.size());
}

/// Resizes a block [`system_alloc`] made where the system allocator
/// resizes it, its charge following: a growth charged first (null and
/// the block untouched past the limit), a shrink released once made.
///
/// # Safety
/// 1. The `GlobalAlloc::realloc` contract, for a block of the system
///    allocator (made by `Global`, charged).
pub(super) unsafe fn system_realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
    let old = layout.size();
    if new_size > old && !charge_system(new_size - old) {
        return core::ptr::null_mut();
    }
    // SAFETY: forwarded (1).
    let q = unsafe { System.realloc(ptr, layout, new_size) };
    if q.is_null() {
        if new_size > old {
            release_system(new_size - old);
        }
    } else if new_size < old {
        release_system(old - new_size);
    }
    q
}

/// Runs `f` with the calling thread's allocations going to system memory:
/// outside every guarded heap, so parallel tasks may write them. The
/// runtime builds its queues and result slots this way; use it for state
/// you mean to share with tasks (channels, buffers), or use [`Shared`].
/// What they take counts against `FROSTHEAP_MAX` as external memory, and
/// past it an allocation fails as any other does.
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
/// write it (atomics, locks) while the main heap is frozen.
///
/// Only the `T` itself is moved there, not what it owns: a `Vec` made
/// (or grown) in main keeps its buffer in the main heap, and a channel
/// made in main keeps its state there, so tasks that push to the one or
/// send on the other write frozen memory. Build such values inside
/// [`unguarded`] (`Shared::new(Mutex::new(unguarded(|| Vec::with_capacity(n))))`,
/// `unguarded(std::sync::mpsc::channel)`).
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
        // The worker's own heap is tried next and counts a refusal of its
        // own: a refused chunk is not counted a second time.
        // SAFETY: we are the owning worker.
        unsafe { ctx.take_limit_refused() };
    }
    context_fallback(layout, zeroed)
}

/// Context slot exhausted or refused by the process limit (or no
/// context): the worker's own heap, which counts against the limit too,
/// and returns null past it.
#[cold]
#[inline(never)]
fn context_fallback(layout: Layout, zeroed: bool) -> *mut u8 {
    let Some(h) = own_heap() else {
        // SAFETY: GlobalAlloc contract, forwarded (no heap to be had).
        return unsafe { system_alloc(layout, zeroed) };
    };
    let p = if zeroed {
        h.core.alloc_zeroed(layout)
    } else {
        h.core.alloc(layout)
    };
    if p.is_null() {
        // The line a refusal on any other path prints (a task that ran out
        // of memory got std's message alone).
        super::stats::out_of_memory_line_of(
            "context",
            layout.size(),
            h.core.last_refusal(),
            h.core.last_refusal_need(),
        );
    }
    p
}

/// Who made a block, by its address.
#[derive(Clone, Copy)]
pub(super) enum Owner {
    /// A heap of the arena; `offset` bytes into its region.
    Heap {
        heap: &'static HeapInner,
        offset: usize,
    },
    /// A context heap.
    Context,
    /// The system allocator (anything outside frostheap's reservations).
    System,
}

/// The owner of the block at `p`: one compare and a shift for the arena's
/// heaps, then the context heaps' reservation.
#[inline]
pub(super) fn owner_of(p: *mut u8) -> Owner {
    match heaps::heap_of(p) {
        Some((heap, offset)) => Owner::Heap { heap, offset },
        None if context::owns(p as usize) => Owner::Context,
        None => Owner::System,
    }
}
