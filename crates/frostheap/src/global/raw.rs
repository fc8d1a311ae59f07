//! The heaps as the C ABI (`frostheap-capi`) needs them: C semantics (no
//! layout on free), each thread's own heap as a [`Local`] the library can
//! keep in a thread-local of its own (a raw pointer, [`Local::as_raw`]),
//! told when the thread gives it up ([`on_thread_exit`]), and `fork`
//! handlers. (A Rust thread-local in a shared library is reached through
//! `__tls_get_addr`; the library keeps the word in initial-exec TLS.)

use core::alloc::Layout;
use core::sync::atomic::Ordering;

use super::heaps;
use super::start::{main_inner, AUTO_HUGE_PAGES, C_ABI, MAIN, READY};
use crate::heap::class::class_of_lookup;
use crate::heap::{Heap, HeapInner};

/// Default alignment of `malloc` (glibc's `MALLOC_ALIGNMENT`).
pub const MALLOC_ALIGN: usize = 16;

/// Whether the calling thread is the main heap's owner (initialising
/// the main heap on the first call, with the C ABI's defaults: see
/// `AUTO_HUGE_PAGES`).
#[inline]
pub fn on_main_thread() -> bool {
    if MAIN.state.load(Ordering::Relaxed) != READY {
        serving_c();
    }
    super::start::on_main_thread()
}

/// Declares, before anything allocates, that frostheap serves the C ABI in
/// this process: what the entry points below do at their first call
/// (the C ABI's defaults), and frostheap's constructor for Rust programs
/// (std's stdout in system memory) does nothing. The C library calls it
/// from a constructor that runs before that one.
#[inline]
pub fn serving_c() {
    AUTO_HUGE_PAGES.store(false, Ordering::Relaxed);
    C_ABI.store(true, Ordering::Relaxed);
}

/// The calling thread's own heap (the main heap for the main thread). Only
/// that thread may use it, and only until it exits. A pointer in a
/// register (transparent), so that the C ABI's own `extern "C"` helpers
/// can take it.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Local(&'static HeapInner);

/// The calling thread's heap: the main heap is started on the process's
/// first call (with the C ABI's defaults), and any other thread attaches a
/// heap at its first. `None` while the thread cannot have one (its heap is
/// being attached, it is exiting, or every slot is taken).
#[inline(never)]
pub fn local() -> Option<Local> {
    if MAIN.state.load(Ordering::Relaxed) != READY {
        serving_c();
        super::start::on_main_thread();
    }
    super::route::own_heap().map(Local)
}

/// Registers `hook`, which a thread that got a heap from [`local`] calls
/// when it gives the heap up at exit (from a pthread key's destructor,
/// before the heap can be adopted by another thread): the C ABI clears its
/// own thread-local copy of the [`Local`] there. Allocations the thread
/// makes afterwards find no heap ([`local`] returns `None`).
pub fn on_thread_exit(hook: fn()) {
    super::route::set_exit_hook(hook);
}

impl Local {
    /// The heap as a raw pointer, for a thread-local of the caller's.
    #[inline(always)]
    pub fn as_raw(self) -> *const core::ffi::c_void {
        (self.0 as *const HeapInner).cast()
    }

    /// The `Local` whose [`Local::as_raw`] is `p`; `None` for null.
    ///
    /// # Safety
    /// 1. `p` is null, or [`Local::as_raw`] of a `Local` obtained on the
    ///    calling thread, which has not given its heap up since (see
    ///    [`on_thread_exit`]).
    #[inline(always)]
    pub unsafe fn from_raw(p: *const core::ffi::c_void) -> Option<Local> {
        // SAFETY: (1): null or a heap in static storage.
        unsafe { p.cast::<HeapInner>().as_ref() }.map(Local)
    }

    /// Frees `p` if it is a block of this heap (the caller's own): one
    /// compare against the heap's region, then the owner's free. False,
    /// and nothing done, for any other pointer (null included).
    ///
    /// # Safety
    /// 1. As [`Local::malloc`], and `p` is null or a live block of any
    ///    allocator.
    #[inline(always)]
    pub unsafe fn free_own(self, p: *mut u8) -> bool {
        let core = &self.0.core;
        let offset = (p as usize).wrapping_sub(core.base());
        if !core.owns(p as usize) {
            return false;
        }
        // SAFETY: (1): p lies in this heap, so it is a live block of it,
        // `offset` bytes into its region, and we are its owner.
        unsafe { core.free_at_as_owner(p, offset) };
        true
    }

    /// C `malloc`: `size` bytes aligned to [`MALLOC_ALIGN`]; null past the
    /// limit.
    ///
    /// # Safety
    /// 1. Called on the thread the `Local` was obtained on.
    #[inline(always)]
    pub unsafe fn malloc(self, size: usize) -> *mut u8 {
        // SAFETY: forwarded (1): that thread owns the heap and its cache.
        unsafe { self.alloc_c::<false>(size) }
    }

    /// [`Local::malloc`] of the block a `realloc` of another heap's block
    /// moves to: for a shrink (`shrink`), should it fail, the caller keeps
    /// the old block, and no refusal is counted.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`].
    #[inline]
    pub unsafe fn malloc_for_move(self, shrink: bool, size: usize) -> *mut u8 {
        // SAFETY: forwarded (1).
        self.0
            .core
            .alloc_for_move(shrink, || unsafe { self.alloc_c::<false>(size) })
    }

    /// [`Local::malloc`] and [`Local::calloc`]: the current span's pop;
    /// when it is dry, other thread heaps' blocks this thread freed (see
    /// `heap::remote_cache`; looked at after the pop, so that a thread that
    /// frees no other thread's blocks pays nothing); then the refill.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`].
    #[inline(always)]
    unsafe fn alloc_c<const ZERO: bool>(self, size: usize) -> *mut u8 {
        let core = &self.0.core;
        if let Some(c) = class_of_lookup(size) {
            // SAFETY: (1): that thread owns the heap and its cache.
            let p = unsafe {
                match core.try_alloc_small_as_owner(c) {
                    Some(p) => Some(p),
                    None => self.0.remote_cache.pop(c),
                }
            };
            if let Some(p) = p {
                #[cfg(debug_assertions)]
                if let Some((heap, _)) = heaps::heap_of(p.as_ptr()) {
                    if !core::ptr::eq(heap, self.0) {
                        // A block of another heap, from the remote cache.
                        heap.core.debug_check_small_block(p.as_ptr(), Some(c));
                    }
                }
                if ZERO {
                    // SAFETY: the block has at least CLASS_SIZE[c] >= size
                    // bytes.
                    unsafe { core::ptr::write_bytes(p.as_ptr(), 0, size) };
                }
                return p.as_ptr();
            }
        }
        // SAFETY: (1).
        unsafe { core.alloc_c_slow::<ZERO>(size) }
    }

    /// C `calloc`: like [`Local::malloc`], zeroed.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`].
    #[inline(always)]
    pub unsafe fn calloc(self, size: usize) -> *mut u8 {
        // SAFETY: forwarded (1).
        unsafe { self.alloc_c::<true>(size) }
    }

    /// C `free` of a block that is not of this thread's own heap. Another
    /// thread heap's small block is kept in this thread's cache for its
    /// next allocation of that class, or, the class full, gathered with
    /// its neighbours for its heap (`heap::remote_batch`; never a main-heap
    /// block: a runtime may freeze the main heap); any other arena block
    /// goes back to its heap. False (nothing done) if `p` is not in the
    /// arena.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`]; `p` is null or a live block returned by the
    ///    C ABI, freed once.
    #[inline(always)]
    pub unsafe fn free_other(self, p: *mut u8) -> bool {
        // Only an address aligned to 16 can start a small block: any other
        // goes the long way (free_at), past the cache and the batch.
        let aligned = (p as usize) & (MALLOC_ALIGN - 1) == 0;
        // SAFETY: (1): this thread owns the heap; p is null or a live block
        // not of our heap (free_own took those).
        if aligned && unsafe { self.0.take_held_remote_free(p) } {
            return true;
        }
        let Some((heap, offset)) = heaps::heap_of(p) else {
            return false;
        };
        crate::sync::invariant!(!core::ptr::eq(heap, self.0), "free_other of our own block");
        if aligned && !core::ptr::eq(heap, main_inner()) {
            // SAFETY: (1): this thread owns the heap; p is a live block of
            // `heap`, another thread heap than ours (free_own took ours)
            // and not the main heap, aligned to 16.
            if unsafe { self.0.take_remote_free(heap, p) } {
                return true;
            }
        }
        // SAFETY: (1): a live block of `heap`, `offset` bytes into it.
        unsafe { free_at_cold(heap, p, offset) };
        true
    }

    /// Allocates `layout`; null past the limit.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`].
    #[inline]
    pub unsafe fn alloc(self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded (1).
        unsafe { self.0.core.alloc_as_owner(layout) }
    }

    /// Whether `p` is in this heap (and not another heap of the arena).
    #[inline]
    pub fn holds(self, p: *const u8) -> bool {
        self.0.core.owns(p as usize)
    }

    /// C `realloc` of `p`, a block of another heap of the arena (another
    /// thread's, running or exited, or the main heap), to `new_size` bytes
    /// by moving its pages into this heap, when it is a large block of 1
    /// MiB or more that grows past its pages: the growth alone is charged
    /// against the limit, nothing is copied, and the block is this heap's
    /// from then on (`HeapCore::move_large_in`). Null, with nothing done,
    /// when the block must be copied instead (any other block, or a case
    /// `docs/limit.md` lists).
    ///
    /// # Safety
    /// 1. As [`Local::malloc`], and `p` is a live block of the arena, not
    ///    of this heap, that no other thread uses meanwhile.
    #[inline(never)]
    pub unsafe fn realloc_moved_in(self, p: *mut u8, new_size: usize) -> *mut u8 {
        match heaps::heap_of(p) {
            // SAFETY: (1): this thread owns the heap (the C ABI runs no
            // phases); p is a live block of `heap`, the caller's.
            Some((heap, _)) if !core::ptr::eq(heap, self.0) => unsafe {
                self.0.core.move_large_in(&heap.core, p, new_size)
            },
            _ => core::ptr::null_mut(),
        }
    }

    /// C `realloc` of a block of this heap to `new_size > 0` bytes aligned
    /// to [`MALLOC_ALIGN`]; null (and `p` untouched) past the limit.
    ///
    /// # Safety
    /// 1. As [`Local::malloc`], and `p` is a live block of this heap
    ///    ([`Local::holds`]).
    #[inline]
    pub unsafe fn realloc_c(self, p: *mut u8, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded (1).
        unsafe { self.0.core.realloc_c_as_owner(p, new_size) }
    }
}

/// [`Local::free_other`] of a block that neither the remote cache nor the
/// remote batch takes (a main-heap block, a large one, a class above 512 B
/// with the cache full): out of line, so that the path of those that do
/// needs no stack frame. `extern "C"`, so that the C ABI's `extern "C"`
/// `free` calls it in a tail call: a call from one to a function that
/// might unwind is wrapped in an abort on unwinding, and an unwinding
/// `free` aborts either way.
///
/// # Safety
/// 1. `p` is a live block of `heap`, `offset` bytes into it, freed once.
#[cold]
#[inline(never)]
unsafe extern "C" fn free_at_cold(heap: &HeapInner, p: *mut u8, offset: usize) {
    // SAFETY: forwarded (1).
    unsafe { heap.core.free_at(p, offset) };
}

/// Whether `p` points into a thread heap: a heap of the arena other than
/// the main heap.
#[inline]
pub fn in_thread_heap(p: *const u8) -> bool {
    heaps::heap_of(p as *mut u8).is_some_and(|(h, _)| !core::ptr::eq(h, main_inner()))
}

/// Whether `p` points into one of the heaps (any thread's): one compare.
#[inline(always)]
pub fn owns(p: *const u8) -> bool {
    heaps::arena_owns(p)
}

/// The main heap handle (initialising it if needed).
pub fn heap() -> Heap {
    self::on_main_thread();
    while MAIN.state.load(Ordering::Acquire) != READY {
        crate::os::yield_now();
    }
    Heap::from_static(main_inner())
}

/// Frees a heap block, from any thread (a remote free when the block's
/// heap is another thread's).
///
/// # Safety
/// 1. `p` is a live heap block ([`owns`] is true).
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    if let Some((heap, offset)) = heaps::heap_of(p) {
        // SAFETY: forwarded (1); `offset` is p's offset in that heap.
        unsafe { heap.core.free_at(p, offset) }
    }
}

/// Usable size of a heap block.
///
/// # Safety
/// 1. `p` is a live heap block.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    match heaps::heap_of(p) {
        // SAFETY: forwarded (1).
        Some((heap, _)) => unsafe { heap.core.usable_size(p) },
        None => 0,
    }
}

/// C `malloc_trim`: [`crate::trim`] for the C ABI, with `local` the
/// calling thread's heap as the C ABI routes it (`None` for a thread
/// without one, or inside a phase). Returns the bytes no longer charged.
///
/// # Safety
/// 1. `local` is `None`, or was obtained on the calling thread (as for
///    [`Local::malloc`]).
pub unsafe fn trim(local: Option<Local>) -> usize {
    // SAFETY: (1): the calling thread's heap, on its owner path.
    unsafe { heaps::trim(local.map(|l| l.0)) }
}

/// Charges `bytes` of memory the program maps itself (anonymous `mmap`)
/// against the process limit; false when that would pass it even after
/// the heaps gave back the free memory they hold
/// (`heap::process::charge`).
pub fn charge_mapped(bytes: usize) -> bool {
    crate::heap::process::charge(crate::heap::process::Kind::Mapped, bytes)
}

/// The process limit in bytes (`FROSTHEAP_MAX`; `usize::MAX` before the
/// library started): one load.
pub fn limit() -> usize {
    crate::heap::process::limit()
}

/// Releases bytes charged with [`charge_mapped`].
pub fn release_mapped(bytes: usize) {
    crate::heap::process::release(crate::heap::process::Kind::Mapped, bytes)
}

pub use super::stats::refusal_room;

/// What refused a heap's last refused allocation ([`Local::last_refusal`]),
/// for the C ABI's refusal line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedBy {
    /// The process limit.
    Limit {
        /// The bytes the heap's charge asked for (a whole span of pages;
        /// 0 when unknown).
        need: usize,
    },
    /// The heap's range had no free run that large, though it fit under
    /// the limit: the blocks the heap holds pin it; or, when `need` is
    /// more than `range`, the range cannot hold the request with the slack
    /// its alignment needs, whatever the limit.
    Range {
        /// The range's length in bytes.
        range: usize,
        /// The run the request needed, in bytes (its alignment's slack
        /// included; 0 when unknown).
        need: usize,
    },
    /// The kernel refused to commit pages.
    System,
    /// Nothing known (the heap refused nothing, or it is sealed).
    Unknown,
}

impl Local {
    /// What refused this heap's last refused allocation (rare code: laid
    /// with it in the C ABI's `layout.ld`).
    #[inline(never)]
    pub fn last_refusal(self) -> RefusedBy {
        use crate::heap::Refusal;
        match self.0.core.last_refusal() {
            Refusal::Limit => RefusedBy::Limit {
                need: self.0.core.last_refusal_need(),
            },
            Refusal::Range => RefusedBy::Range {
                range: heaps::slot_len(),
                need: self.0.core.last_refusal_need(),
            },
            Refusal::System => RefusedBy::System,
            Refusal::Cap | Refusal::None => RefusedBy::Unknown,
        }
    }
}

pub use super::start::{fork_child_adopt, fork_prepare, fork_release};
