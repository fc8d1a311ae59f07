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
use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::alloc::System;
use std::borrow::Cow;

use crate::config;
use crate::context::{self, ContextHeap};
use crate::heap::class::class_for;
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

/// `repr(C)`: the heap first, so that the fast paths address its hot
/// fields (see `HeapCore`) with one-byte displacements from the slot's
/// address; the routing words, which every thread reads, after it on a
/// line of their own.
#[repr(C)]
struct MainSlot {
    inner: UnsafeCell<MaybeUninit<HeapInner>>,
    /// The main heap's region, for routing frees with two compares.
    base: AtomicUsize,
    len: AtomicUsize,
    /// Thread token of the main thread (0 before initialisation).
    owner: AtomicUsize,
    state: AtomicU8,
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

/// What `FROSTHEAP_HUGE_PAGES=auto` means for the main heap: on for Rust
/// programs (a freeze of a huge-page heap is one cheap `mprotect`), off for
/// the C ABI, which never freezes. Measured: Python under LD_PRELOAD ran
/// 1.18× glibc's time with huge pages advised (first-touch compaction and
/// zeroing of 2 MiB pages) and 0.93× without.
static AUTO_HUGE_PAGES: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

#[cold]
#[inline(never)]
fn init() {
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

#[inline]
fn main_owns(p: *mut u8) -> bool {
    (p as usize).wrapping_sub(MAIN.base.load(Ordering::Relaxed)) < MAIN.len.load(Ordering::Relaxed)
}

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
    static ROUTE: Cell<Route> = const { Cell::new(Route::Unknown) };
    static CONTEXT: Cell<*const ContextHeap> = const { Cell::new(core::ptr::null()) };
}

/// The calling thread's route.
#[inline]
fn route() -> Route {
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
fn store_route(r: Route) {
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

#[inline]
fn on_main_thread() -> bool {
    let owner = MAIN.owner.load(Ordering::Relaxed);
    if owner != 0 {
        return owner == thread_token();
    }
    init();
    MAIN.owner.load(Ordering::Relaxed) == thread_token()
}

/// A worker's allocation: bump allocation in its context heap (the hot
/// path of allocation-heavy tasks, so inlined into `alloc`).
#[inline]
fn context_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
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
        let offset = (ptr as usize).wrapping_sub(MAIN.base.load(Ordering::Relaxed));
        if offset < MAIN.len.load(Ordering::Relaxed) {
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
        let r = route();
        if r == Route::Main && main_owns(ptr) {
            // SAFETY: ptr is a live main-heap block allocated with layout,
            // and we are its owner.
            return unsafe { main_inner().core.realloc(ptr, layout, new_size) };
        }
        if context::owns(ptr as usize) {
            // A context block keeps its bytes until its chunk empties, so
            // shrinking is free: keep the block (no copy, no write).
            if new_size <= layout.size() {
                return ptr;
            }
            if r == Route::Context {
                let ctx = CONTEXT.with(|c| c.get());
                // SAFETY: our own context (see context_alloc); grow in
                // place only applies to our latest block.
                if let Some(ctx) = unsafe { ctx.as_ref() } {
                    // SAFETY: we are the owner and ptr is a live block of
                    // layout.size() bytes if it lies in our slot (checked
                    // by grow_in_place through the cursor equality).
                    if unsafe { ctx.grow_in_place(ptr, layout.size(), new_size) } {
                        return ptr;
                    }
                    // Move it within the context: no second routing.
                    // SAFETY: new_size with layout's align is a valid
                    // layout (the GlobalAlloc::realloc contract).
                    let new_layout =
                        unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                    let q = context_alloc(new_layout, false);
                    if !q.is_null() {
                        // SAFETY: both live and distinct (q is fresh, of
                        // new_size > layout.size() bytes); then free the
                        // old context block.
                        unsafe {
                            core::ptr::copy_nonoverlapping(ptr, q, layout.size());
                            context::free(ptr);
                        }
                    }
                    return q;
                }
            }
        }
        if !main_owns(ptr)
            && !context::owns(ptr as usize)
            && r != Route::Context
            && r != Route::Main
        {
            // SAFETY: a System block resized by a System-routed thread.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Move the block to wherever this thread allocates now.
        // SAFETY: new_size with layout's align is a valid layout (the
        // GlobalAlloc::realloc contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: GlobalAlloc contract.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both live and distinct; then free the old block.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        q
    }
}

impl Global {
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

/// The main heap as the C ABI (`frostheap-capi`) needs it: C semantics
/// (no layout on free), explicit routing, and `fork` handlers.
pub mod raw {
    use super::*;

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
        super::on_main_thread()
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
        if !super::on_main_thread() {
            // SAFETY: in the child no other thread exists, so nobody else
            // can be on the owner path.
            unsafe { main_inner().core.set_owner() };
            MAIN.owner.store(thread_token(), Ordering::Relaxed);
        }
    }
}
