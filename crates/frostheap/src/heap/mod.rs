//! Heaps: [`Heap`], a cheap cloneable handle to a size-classed allocator
//! inside one reserved region with a hard `max`.
//!
//! ```
//! use allocator_api2::vec::Vec;
//! let heap = frostheap::Heap::builder().name("index").max(64 << 20).build()?;
//! let mut v = Vec::new_in(heap.clone());
//! v.extend_from_slice(&[1u64, 2, 3]);
//! assert!(heap.owns(v.as_ptr()));
//! assert!(heap.stats().in_use >= 24);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! The allocator, one file per job:
//!
//! | module | what |
//! |---|---|
//! | [`core`] | `HeapCore`: fields, construction, the fast paths and the slow paths they fall back to, large blocks, thread hand-over |
//! | [`control`] | statistics, external charges, queries, freezing, sealing, fork repair |
//! | [`queue`] | class queues of spans and the current span of each class |
//! | [`remote`] | frees by other threads: the remote-free bitmap, the pending stack, fork repair |
//! | [`remote_cache`] | a thread's cache of other thread heaps' blocks it freed, reused before they go back |
//! | [`stats`] | exact statistics: the counters and [`Stats`] |
//! | [`span`] | the span allocator: free-span bins, commit, giving memory back |
//! | [`large`] | the layout of large blocks, their growth and shrink in place |
//! | [`realloc`] | reallocation, in place whenever the block still fits |
//! | [`page`] | the page table (`PageMeta`, one per 64 KiB page) |
//! | [`process`] | the process-wide limit, counted at commits |
//! | [`class`] | the 56 size classes (eight of them a large heap's only) |

pub(crate) mod class;
mod control;
pub(crate) mod core;
mod large;
pub(crate) mod own_cache;
pub(crate) mod page;
pub mod process;
mod queue;
mod realloc;
mod remote;
pub(crate) mod remote_batch;
pub(crate) mod remote_cache;
mod span;
mod stats;
#[cfg(test)]
mod tests;

use ::core::alloc::Layout;
use ::core::fmt;
use ::core::mem::MaybeUninit;
use ::core::ptr::NonNull;
use std::borrow::Cow;
use std::sync::Arc;

use allocator_api2::alloc::{AllocError, Allocator};

use self::class::class_for;
pub(crate) use self::core::InitError;
use self::core::{CoreConfig, HeapCore};
pub(crate) use self::span::Refusal;
pub use self::stats::Stats;
use crate::config::HugePages;
use crate::error::{Error, RefusedBy};
use crate::guard;
use crate::region::{Huge, PAGE_SIZE};

/// A heap and its name, registered in the guard table while alive.
/// (`repr(C)`: the core, whose hot fields lead, first.)
#[repr(C)]
pub(crate) struct HeapInner {
    pub(crate) core: HeapCore,
    /// Other thread heaps' blocks this heap's thread freed, kept for its
    /// own allocations (global mode only; see [`remote_cache`]).
    pub(crate) remote_cache: remote_cache::RemoteCache,
    /// Remote frees of other thread heaps' blocks this heap's thread made,
    /// a bitmap word at a time (global mode only; see [`remote_batch`]).
    pub(crate) remote_batch: remote_batch::RemoteBatch,
    pub(crate) name: Cow<'static, str>,
    /// The heap's entry in the guard table (`None` until registered).
    entry: Option<&'static guard::Entry>,
}

impl HeapInner {
    /// A heap of its own region (an explicit heap), built in place in its
    /// `Arc`: never on the stack, where a heap (3.5 KiB) and the copies a
    /// debug build makes of it took more than a thread of
    /// `PTHREAD_STACK_MIN` has.
    pub(crate) fn new_shared(
        name: Cow<'static, str>,
        config: CoreConfig,
    ) -> Result<Arc<HeapInner>, InitError> {
        let mut arc = Arc::<HeapInner>::new_uninit();
        let dst = Arc::get_mut(&mut arc).expect("a fresh Arc is unique");
        // SAFETY: no reservation given: the region makes its own.
        unsafe { Self::init_at(dst, name, None, config)? };
        // SAFETY: init_at returned Ok: it wrote the whole heap.
        Ok(unsafe { arc.assume_init() })
    }

    /// A heap on `[base, base + len)`, a slot of the global allocator's
    /// arena, built in its slot's storage (`dst`): the heap is never on the
    /// stack (see `HeapCore::init_at`). On `Err`, `dst` is left unwritten.
    ///
    /// # Safety
    /// 1. As for `HeapCore::init_at`'s reservation.
    pub(crate) unsafe fn init_in<'a>(
        dst: &'a mut MaybeUninit<HeapInner>,
        name: Cow<'static, str>,
        base: *mut u8,
        len: usize,
        config: CoreConfig,
    ) -> Result<&'a mut HeapInner, InitError> {
        // SAFETY: forwarded (1).
        unsafe { Self::init_at(dst, name, Some((base, len)), config) }
    }

    /// Builds a heap at `dst`, field by field: in a reservation of the
    /// caller's (`at`), or in a region of its own. On `Err`, `dst` is left
    /// unwritten.
    ///
    /// # Safety
    /// 1. As for `HeapCore::init_at`.
    unsafe fn init_at<'a>(
        dst: &'a mut MaybeUninit<HeapInner>,
        name: Cow<'static, str>,
        at: Option<(*mut u8, usize)>,
        config: CoreConfig,
    ) -> Result<&'a mut HeapInner, InitError> {
        let p = dst.as_mut_ptr();
        // SAFETY: forwarded (1); `p` is valid for writes (a `&mut`).
        unsafe { HeapCore::init_at(&raw mut (*p).core, at, config)? };
        // SAFETY: the core is written; the other fields are written here,
        // once each, so the whole heap is.
        unsafe {
            (&raw mut (*p).remote_cache).write(remote_cache::RemoteCache::new());
            (&raw mut (*p).remote_batch).write(remote_batch::RemoteBatch::new());
            (&raw mut (*p).name).write(name);
            (&raw mut (*p).entry).write(None);
        }
        // Every field of HeapInner, to be written above: stops compiling
        // when a field is added.
        const _: fn(&HeapInner) = |HeapInner {
                                       core: _,
                                       remote_cache: _,
                                       remote_batch: _,
                                       name: _,
                                       entry: _,
                                   }| {};
        // SAFETY: every field is written.
        Ok(unsafe { dst.assume_init_mut() })
    }

    /// Takes `p`, a small block of `other` (another thread heap, never the
    /// main heap) that this heap's thread frees: into this heap's remote
    /// cache for its own next allocation of the class, or, the class full,
    /// into its remote batch, gathered with its neighbours for `other`.
    /// False, and nothing done, if `p` is not in a small span or its class
    /// is too large for either (the caller frees it to its heap).
    ///
    /// The path every free of another thread's block takes (the C ABI's
    /// `free`, `Global::dealloc`): inlined into each, so that a consumer
    /// freeing a producer's blocks runs one function with no frame to
    /// speak of.
    ///
    /// # Safety
    /// 1. The calling thread owns this heap (its cache and batch) and is
    ///    not a runtime worker inside a phase; `other` is another thread
    ///    heap than this one, not the main heap, in static storage; `p` is
    ///    a live block of `other`, aligned to 16, freed by the caller once.
    #[inline(always)]
    pub(crate) unsafe fn take_remote_free(&self, other: &HeapInner, p: *mut u8) -> bool {
        crate::sync::invariant!(
            !::core::ptr::eq(self, other),
            "a remote free of our own block"
        );
        // The block's class from its heap's class map, not from a size or
        // layout: a heap may have lent a block of a larger class
        // (HeapCore::borrow), and realloc keeps a block in place while it
        // fits; the cache counts the class's size.
        // SAFETY: (1): a live block of `other`.
        let Some(c) = (unsafe { other.core.small_class_of(p) }) else {
            return false;
        };
        #[cfg(debug_assertions)]
        other.core.debug_check_small_block(p, Some(c));
        crate::sync::chaos();
        // SAFETY: (1): this thread owns the cache; p is a live small block
        // of class c of another thread heap, aligned to 16, which the
        // caller gives up.
        if unsafe { self.remote_cache.push(c, p) } {
            return true;
        }
        // SAFETY: as above; `other` is not ours and lives in static storage.
        unsafe { self.remote_batch.free(&other.core, c, p) }
    }

    /// Takes `p` into this heap's remote batch if the batch holds its
    /// bitmap word: the first step of every free of a block that is not
    /// this heap's, from the address alone (see [`remote_batch`]). False,
    /// and nothing done, otherwise (the caller goes on to
    /// [`HeapInner::take_remote_free`] or frees the block elsewhere).
    ///
    /// # Safety
    /// 1. The calling thread owns this heap (its batch) and is not a
    ///    runtime worker inside a phase; `p` is null or a live block that
    ///    is not one of this heap's, freed by the caller once.
    #[inline(always)]
    pub(crate) unsafe fn take_held_remote_free(&self, p: *mut u8) -> bool {
        // SAFETY: forwarded (1).
        unsafe { self.remote_batch.free_held(p) }
    }

    /// Registers the heap's region in the guard table; false if the table
    /// is full. Call once the inner value is at its final address.
    pub(crate) fn register(&mut self) -> bool {
        let owner = self as *const HeapInner as *const ();
        let core = &self.core;
        // Under the span lock: the committed prefix the entry starts with
        // is the one the region goes on publishing from.
        self.entry = core.commit_lock_and(|committed| {
            let r = core.region();
            let start = r.base() as usize;
            let entry = guard::register(start, start + r.reserved(), committed, owner)?;
            r.mirror_committed(Some(entry.committed_cell()));
            Some(entry)
        });
        self.entry.is_some()
    }

    /// The heap's entry in the guard table.
    pub(crate) fn entry(&self) -> Option<&'static guard::Entry> {
        self.entry
    }

    /// Whether a phase has the heap frozen now.
    pub(crate) fn frozen_now(&self) -> bool {
        self.entry.is_some_and(|e| e.is_frozen())
    }

    /// The heap registered in `entry`: the typed view of the guard table's
    /// opaque owner pointer, which only this module stores.
    ///
    /// # Safety
    /// 1. The heap registered in `entry` stays alive while the returned
    ///    reference is used.
    pub(crate) unsafe fn of_entry<'a>(entry: &guard::Entry) -> Option<&'a HeapInner> {
        // SAFETY: `register` stores a pointer to a HeapInner at its final
        // address, and `drop` releases the entry before the heap goes; by
        // (1) it is still alive.
        unsafe { entry.owner().cast::<HeapInner>().as_ref() }
    }
}

/// Frees `addr` into whichever registered heap holds it: the deferred
/// frees a worker made during a phase, applied at the thaw.
///
/// # Safety
/// 1. `addr` is a live block of a live registered heap, freed once.
pub(crate) unsafe fn free_deferred(addr: usize) {
    // SAFETY: by (1) the heap holding addr is alive.
    if let Some(h) = guard::entry_of(addr).and_then(|e| unsafe { HeapInner::of_entry(e) }) {
        // SAFETY: by (1).
        unsafe { h.core.free(addr as *mut u8) };
    }
}

impl Drop for HeapInner {
    fn drop(&mut self) {
        // Before the region is unmapped (a field, dropped after this), so
        // no lookup finds the entry of a heap that is gone.
        if let Some(entry) = self.entry.take() {
            self.core.region().mirror_committed(None);
            guard::unregister(entry);
        }
    }
}

#[derive(Clone)]
enum Handle {
    Shared(Arc<HeapInner>),
    Static(&'static HeapInner),
}

/// A heap: a cheap, cloneable handle (`Arc`-like) to an allocator living
/// in one reserved address range.
///
/// The thread that builds a heap is its *owner*: its allocations and frees
/// take a fast path with no atomic read-modify-write and no lock. Any other
/// thread may allocate (through a locked path) and free (through a
/// lock-free remote-free bitmap, which the owner collects) as well.
#[derive(Clone)]
pub struct Heap {
    handle: Handle,
}

impl Heap {
    /// Starts building a heap.
    ///
    /// At most 255 explicit heaps may be alive at once: every heap holds
    /// an entry of the process's guard table, which has 256, and the main
    /// heap holds one of them. [`HeapBuilder::build`] refuses the next
    /// with [`Error::InvalidConfig`] naming `heap`; dropping a heap (its
    /// last clone) frees its entry.
    pub fn builder() -> HeapBuilder {
        HeapBuilder::default()
    }

    pub(crate) fn from_static(inner: &'static HeapInner) -> Heap {
        Heap {
            handle: Handle::Static(inner),
        }
    }

    #[inline]
    pub(crate) fn inner(&self) -> &HeapInner {
        match &self.handle {
            Handle::Shared(a) => a,
            Handle::Static(s) => s,
        }
    }

    #[inline]
    fn core(&self) -> &HeapCore {
        &self.inner().core
    }

    /// The heap's name (for reports).
    pub fn name(&self) -> &str {
        &self.inner().name
    }

    /// A snapshot of the heap's statistics.
    pub fn stats(&self) -> Stats {
        self.core().stats()
    }

    /// The hard cap in bytes (`max`).
    pub fn limit(&self) -> usize {
        self.stats().limit
    }

    /// First address of the heap's region.
    pub fn base(&self) -> *const u8 {
        self.core().region().base()
    }

    /// Whether `ptr` points into this heap's region. O(1): two compares.
    #[inline]
    pub fn owns<T: ?Sized>(&self, ptr: *const T) -> bool {
        self.core().owns(ptr as *const u8 as usize)
    }

    /// The allocation containing `addr`, as (base address, usable size),
    /// in O(1) from the page table. `None` outside any block's geometry.
    /// The answer describes the block slot; it does not say whether the
    /// slot is currently allocated.
    pub fn allocation_containing(&self, addr: usize) -> Option<(usize, usize)> {
        self.core().allocation_containing(addr)
    }

    /// Allocates memory for `layout`, or reports why it cannot
    /// ([`Error::OutOfMemory`], whose `refused_by` says what refused).
    pub fn try_alloc(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let p = NonNull::new(self.core().alloc(layout)).ok_or_else(|| self.refused(layout))?;
        if crate::track::enabled() {
            crate::track::record(p.as_ptr() as usize);
        }
        Ok(p)
    }

    /// Like [`Heap::try_alloc`], with the memory zeroed.
    pub fn try_alloc_zeroed(&self, layout: Layout) -> Result<NonNull<u8>, Error> {
        let p =
            NonNull::new(self.core().alloc_zeroed(layout)).ok_or_else(|| self.refused(layout))?;
        track_new(p.as_ptr(), ::core::ptr::null_mut());
        Ok(p)
    }

    /// Frees memory from [`Heap::try_alloc`]. A no-op on a sealed heap.
    ///
    /// # Safety
    /// 1. `ptr` was allocated by this heap and not freed since.
    pub unsafe fn dealloc(&self, ptr: NonNull<u8>) {
        // SAFETY: forwarded (1).
        unsafe { self.core().free(ptr.as_ptr()) }
    }

    /// Makes the heap permanently read-only: its committed memory is
    /// protected with `mprotect(PROT_READ)` and the whole reservation is
    /// sealed with `mseal(2)`, so no thread — and no later `mprotect` — can
    /// make it writable again for the life of the process.
    ///
    /// Afterwards allocation fails with [`Error::OutOfMemory`] whose
    /// `refused_by` is [`RefusedBy::Sealed`] (its message says the heap is
    /// sealed: neither a larger limit nor freeing memory helps), frees are
    /// no-ops (the memory is never reused), and a write by any thread is a
    /// crash (or, by a runtime task, a violation report). Hardening for
    /// data that must never change after start-up.
    ///
    /// Call it from the heap's owner thread, while no other thread
    /// allocates from the heap.
    pub fn seal(&self) -> Result<(), Error> {
        let inner = self.inner();
        if !inner.core.is_owner() {
            return Err(Error::invalid(
                "seal",
                inner.name.as_ref(),
                "a call from the heap's owner thread (the one that built it, or adopted it)",
            ));
        }
        crate::os::mseal_available().map_err(|source| Error::Os {
            context: "sealing a heap: this kernel lacks mseal(2), which Linux 6.10 added",
            source,
        })?;
        inner.core.seal_allocation();
        inner.core.set_frozen(true).map_err(|source| Error::Os {
            context: "protecting a heap before sealing it",
            source,
        })?;
        if let Some(entry) = inner.entry {
            entry.mark_sealed();
        }
        // The guard table keeps a pointer to this heap for reports, and the
        // sealed range can never be unmapped: keep the heap alive for the
        // life of the process so that pointer never dangles.
        ::core::mem::forget(self.clone());
        let r = inner.core.region();
        // SAFETY: the reservation is ours; after this the heap never changes
        // its protection or unmaps it (Region::drop's munmap fails with
        // EPERM and the range is simply kept).
        unsafe { crate::os::seal(r.base(), r.reserved()) }.map_err(|source| Error::Os {
            context: "sealing a heap with mseal",
            source,
        })
    }

    /// Freezes (`true`) or thaws (`false`) this heap the way a phase of an
    /// `mprotect` runtime does — mark, then one `mprotect` of the committed
    /// prefix; thaw in the mirror order — without running a phase. For the
    /// freeze benchmark (crates/frostheap-bench, `freeze`) only: nothing
    /// else may write the heap while it is frozen this way. Returns the
    /// length protected.
    #[doc(hidden)]
    pub fn bench_freeze(&self, frozen: bool) -> Result<usize, Error> {
        let core = self.core();
        let to_error = |source| Error::Os {
            context: "freezing or thawing a heap (benchmark hook)",
            source,
        };
        if frozen {
            core.freeze_mark();
            core.protect_committed(true).map_err(to_error)
        } else {
            let len = core.protect_committed(false).map_err(to_error)?;
            core.thaw_unmark(len).map_err(to_error)?;
            Ok(len)
        }
    }

    /// Whether [`Heap::seal`] was called.
    #[inline]
    pub fn is_sealed(&self) -> bool {
        self.core().is_sealed()
    }

    /// Resizes a block to `new_size` bytes, in place when possible.
    ///
    /// # Safety
    /// 1. `ptr` was allocated by this heap with `old` and not freed since.
    pub unsafe fn try_realloc(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, Error> {
        // SAFETY: forwarded (1).
        let p = unsafe { self.core().realloc(ptr.as_ptr(), old, new_size) };
        track_new(p, ptr.as_ptr());
        NonNull::new(p).ok_or_else(|| {
            // The block keeps its alignment; a size that overflows a
            // layout was refused for its size alone.
            match Layout::from_size_align(new_size, old.align()) {
                Ok(new) => self.refused(new),
                Err(_) => self.oom(new_size, RefusedBy::HeapMax),
            }
        })
    }

    /// Usable size of a live block (at least the size it was asked with).
    ///
    /// # Safety
    /// 1. `ptr` is a live block of this heap.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: forwarded (1).
        unsafe { self.core().usable_size(ptr.as_ptr()) }
    }

    /// The usable size a request for `layout` gets (what `in_use` counts),
    /// at least. A request of 1 KiB to 128 KiB aligned to at most 16 bytes
    /// may get a free block of one of the next two size classes instead,
    /// at most half as large again, when its own class has no free block
    /// and has carved 8 or more of its current span (at most 1,024 times
    /// in a row): a heap uses memory it holds before it carves more
    /// ([`Heap::usable_size`] says which, and `in_use` counts the block's
    /// own size). A request that finds a free block of its own class gets
    /// this size. In a heap that has committed less than 8 MiB, a request
    /// of one of the eight classes between 1 KiB and 4 KiB that only larger
    /// heaps have (1152, 1408, ..., 3840 bytes) gets a block of the next
    /// class, at most an eighth larger. A reallocation to more than 32 KiB
    /// (aligned to at most 64 KiB) gives whole 64 KiB pages instead: a block
    /// that can grow and shrink where it is.
    pub fn block_size(layout: Layout) -> usize {
        match class::class_for(layout.size(), layout.align()) {
            Some(c) => class::CLASS_SIZE[c] as usize,
            None => {
                let extra = layout.align().saturating_sub(PAGE_SIZE);
                let pages = (layout.size().max(1) + extra).div_ceil(PAGE_SIZE);
                // Large blocks are page-aligned; an over-aligned one starts
                // at an offset into its span that depends on its address, so
                // only an upper bound is known in advance.
                pages * PAGE_SIZE
            }
        }
    }

    /// Charges `bytes` held elsewhere (another allocator, a cache) against
    /// this heap's limit: afterwards `committed + external <= limit` still
    /// holds for every allocation. Fails with [`Error::OutOfMemory`] and
    /// charges nothing if the bytes do not fit.
    pub fn charge_external(&self, bytes: usize) -> Result<(), Error> {
        if self.core().charge_external(bytes) {
            return Ok(());
        }
        // Not an allocation: the heap recorded no cause. Its cap refused
        // when the bytes do not fit beside what it holds; the process
        // limit otherwise.
        let s = self.stats();
        let fits = s.committed.saturating_add(s.external).saturating_add(bytes) <= s.limit;
        Err(self.oom(
            bytes,
            if fits {
                RefusedBy::ProcessLimit
            } else {
                RefusedBy::HeapMax
            },
        ))
    }

    /// Releases bytes charged with [`Heap::charge_external`].
    pub fn release_external(&self, bytes: usize) {
        self.core().release_external(bytes)
    }

    /// Gives this heap's free memory back to the system and returns the
    /// bytes no longer charged (against the heap's `max` and the process
    /// limit): the free top of its range is decommitted, down to its
    /// `min`, and the free spans below it are purged (`MADV_DONTNEED`).
    /// Memory inside spans that still hold a live block stays, and so do
    /// spans whose last blocks other threads freed after the span filled
    /// up, until the owner's next allocation brings them back. A heap that
    /// a phase has frozen now is left as it is (0). For every heap of the
    /// global allocator at once, see [`crate::trim`].
    ///
    /// ```
    /// use std::alloc::Layout;
    /// let heap = frostheap::Heap::builder().max(64 << 20).build().unwrap();
    /// // 4 MiB: below what the heap gives back by itself when freed.
    /// let layout = Layout::from_size_align(256 << 10, 16).unwrap();
    /// let blocks: Vec<_> = (0..16).map(|_| heap.try_alloc(layout).unwrap()).collect();
    /// for b in blocks {
    ///     // SAFETY: allocated above from this heap, freed once.
    ///     unsafe { heap.dealloc(b) };
    /// }
    /// assert!(heap.stats().committed >= 4 << 20);
    /// assert!(heap.trim() >= 4 << 20);
    /// assert_eq!(heap.stats().committed, 0);
    /// ```
    pub fn trim(&self) -> usize {
        if self.inner().frozen_now() {
            return 0;
        }
        let core = self.core();
        if core.is_owner() {
            // SAFETY: the owner, on its owner path (not frozen: above).
            unsafe { core.flush_own_cache() };
        }
        // SAFETY: no collection, so no ownership needed.
        unsafe { core.give_back(false) }
    }

    /// Bytes of the committed range held by no block's span (free pages
    /// the heap keeps, purged ones included).
    pub fn free_bytes(&self) -> usize {
        self.core().free_span_bytes()
    }

    /// Makes the calling thread this heap's owner (its fast path moves
    /// here).
    ///
    /// # Safety
    /// 1. No other thread uses the heap's owner path concurrently: the
    ///    previous owner has stopped allocating from it, and its last
    ///    operations happen-before this call (for example, it sent the
    ///    handle over a channel and then stopped using the heap).
    pub unsafe fn adopt(&self) {
        // SAFETY: forwarded (1).
        unsafe { self.core().set_owner() }
    }

    /// The error for an allocation of `layout` the heap just refused:
    /// sealed, or what its allocator recorded as the cause
    /// ([`HeapCore::last_refusal`]), with the bytes the layout needed
    /// (an alignment above a heap page needs its slack too).
    #[cold]
    fn refused(&self, layout: Layout) -> Error {
        let core = self.core();
        let by = if core.is_sealed() {
            RefusedBy::Sealed
        } else {
            match core.last_refusal() {
                Refusal::Limit => RefusedBy::ProcessLimit,
                Refusal::Range => RefusedBy::Range,
                Refusal::System => RefusedBy::System,
                // The heap's cap, or no cause recorded: the heap's
                // numbers, which its max bounds.
                Refusal::Cap | Refusal::None => RefusedBy::HeapMax,
            }
        };
        // A block aligned beyond a page takes only its own pages, at an
        // aligned page (`Locked::alloc_aligned`): its size is what it asked.
        self.oom(layout.size(), by)
    }

    /// The error for `requested` bytes refused by `by`: with the process's
    /// numbers when the process limit refused (the limit, and what every
    /// heap has committed against it, as [`refused_build`] reports it),
    /// the heap's otherwise. Until 2026-12-06 the process limit was paired
    /// with the heap's bytes in use ("50 MiB requested, 0 B in use, limit
    /// 128 MiB", refused with 100 MiB committed in another heap).
    fn oom(&self, requested: usize, by: RefusedBy) -> Error {
        if by == RefusedBy::ProcessLimit {
            let committed = process::committed();
            return Error::OutOfMemory {
                requested,
                limit: process::limit(),
                in_use: committed,
                committed,
                refused_by: by,
            };
        }
        let s = self.stats();
        Error::OutOfMemory {
            requested,
            limit: s.limit,
            in_use: s.in_use,
            committed: s.committed,
            refused_by: by,
        }
    }
}

impl fmt::Debug for Heap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heap")
            .field("name", &self.name())
            .field("base", &self.base())
            .field("stats", &self.stats())
            .finish()
    }
}

impl PartialEq for Heap {
    fn eq(&self, other: &Heap) -> bool {
        ::core::ptr::eq(self.inner(), other.inner())
    }
}
impl Eq for Heap {}

// SAFETY: blocks come from `HeapCore::alloc`, which returns memory valid for
// the layout until freed; `deallocate` frees only what `allocate` returned;
// clones of a Heap refer to the same allocator, so memory from one clone can
// be freed through another.
unsafe impl Allocator for Heap {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // The owner's small allocation, inlined as a leaf: a pop from the
        // current span. Refills, large blocks, other threads and tracked
        // allocations take `allocate_slow`.
        let core = self.core();
        if let Some(c) = class_for(layout.size(), layout.align()) {
            if core.is_owner() && !crate::track::enabled() {
                // SAFETY: we are the owner.
                if let Some(p) = unsafe { core.try_alloc_small_as_owner(c) } {
                    return Ok(NonNull::slice_from_raw_parts(p, layout.size()));
                }
            }
        }
        self.allocate_slow(layout)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = NonNull::new(self.core().alloc_zeroed(layout)).ok_or(AllocError)?;
        track_new(p.as_ptr(), ::core::ptr::null_mut());
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: the Allocator contract: ptr is currently allocated by us.
        unsafe { self.core().free(ptr.as_ptr()) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the Allocator contract (ptr allocated with `old`).
        unsafe { self.resize(ptr, old, new) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the Allocator contract.
        let p = unsafe { self.resize(ptr, old, new)? };
        // SAFETY: the new block has new.size() bytes, the first old.size()
        // of which were copied; the rest must be zeroed.
        unsafe {
            p.cast::<u8>()
                .as_ptr()
                .add(old.size())
                .write_bytes(0, new.size() - old.size())
        };
        Ok(p)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the Allocator contract.
        unsafe { self.resize(ptr, old, new) }
    }
}

impl Heap {
    /// Every allocation but the owner's inlined fast path.
    #[inline(never)]
    fn allocate_slow(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = NonNull::new(self.core().alloc(layout)).ok_or(AllocError)?;
        if crate::track::enabled() {
            crate::track::record(p.as_ptr() as usize);
        }
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let p = if new.align() <= old.align() {
            // SAFETY: the caller's Allocator contract.
            unsafe { self.core().realloc(ptr.as_ptr(), old, new.size()) }
        } else {
            let q = self.core().alloc(new);
            if !q.is_null() {
                // SAFETY: both live; copy the common prefix, then free.
                unsafe {
                    ::core::ptr::copy_nonoverlapping(ptr.as_ptr(), q, old.size().min(new.size()));
                    self.core().free(ptr.as_ptr());
                }
            }
            q
        };
        track_new(p, ptr.as_ptr());
        let p = NonNull::new(p).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, new.size()))
    }
}

/// Records the allocation site of a block made by a zeroed allocation or a
/// reallocation (`old`: the block it replaces, null for none) when tracking
/// is on: a block that moved has a new site, one resized in place keeps
/// the site it was made at.
#[inline]
fn track_new(p: *mut u8, old: *mut u8) {
    if !p.is_null() && p != old && crate::track::enabled() {
        crate::track::record(p as usize);
    }
}

/// Builds a [`Heap`].
#[derive(Clone, Debug)]
pub struct HeapBuilder {
    name: Cow<'static, str>,
    min: usize,
    max: Option<usize>,
    huge_pages: HugePages,
}

impl Default for HeapBuilder {
    fn default() -> Self {
        HeapBuilder {
            name: Cow::Borrowed("heap"),
            min: 0,
            max: None,
            huge_pages: HugePages::Auto,
        }
    }
}

impl HeapBuilder {
    /// The name reports use.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Bytes committed up front (default 0), rounded up to 64 KiB but
    /// never past `max` rounded down to 64 KiB (the cap): `min == max`
    /// commits the whole cap.
    pub fn min(mut self, bytes: usize) -> Self {
        self.min = bytes;
        self
    }

    /// The hard cap: the size of the reservation (default: the default of
    /// `FROSTHEAP_MAX`, physical memory or less in a cgroup with a memory
    /// limit or under an address-space limit: see
    /// [`crate::config::default_max`]).
    /// Committed memory never exceeds `max` rounded down to 64 KiB. At
    /// most what the address space can reserve (64 TiB or less on x86-64
    /// with 47-bit addresses): a larger `max` is refused by
    /// [`HeapBuilder::build`], which names the largest it could reserve.
    pub fn max(mut self, bytes: usize) -> Self {
        self.max = Some(bytes);
        self
    }

    /// Huge-page policy (default [`HugePages::Auto`]).
    pub fn huge_pages(mut self, policy: HugePages) -> Self {
        self.huge_pages = policy;
        self
    }

    /// Reserves the region. The calling thread becomes the heap's owner.
    ///
    /// The first heap or runtime built in a process without the global
    /// allocator starts frostheap there as `Global` does at its first
    /// allocation: it reads the `FROSTHEAP_*` environment, once, and the
    /// process limit (`FROSTHEAP_MAX`) bounds this heap's commits with
    /// every other heap's from then on, whichever is built first. A bad
    /// value is refused here as `Runtime::build` refuses it
    /// ([`Error::InvalidConfig`] naming the variable). Starting reserves
    /// the arena's address space for `FROSTHEAP_MAX` (under `ulimit -v`, at
    /// most half of it) and commits `FROSTHEAP_MIN`; an arena that cannot
    /// be reserved is refused here too, as by `Runtime::build`: a
    /// `FROSTHEAP_MAX` the address space cannot hold with
    /// [`Error::InvalidConfig`] naming it and the most it can reserve, a
    /// refusal of the default with [`Error::Os`]. Nothing is started then,
    /// and the next build tries again. (At `Global`'s first allocation,
    /// which cannot return it, the same refusal stops the process with
    /// one line and status 2.)
    ///
    /// Refused with [`Error::InvalidConfig`] naming `max` when `max` is
    /// less than a page or more than the address space can reserve (the
    /// error says how much can), naming `min` when `min` is more than
    /// `max` or than the process limit; with [`Error::OutOfMemory`] when
    /// `min` fits under the process limit but not beside what the process
    /// has committed now.
    pub fn build(self) -> Result<Heap, Error> {
        crate::global::start()?;
        let max = self.max.unwrap_or_else(crate::config::default_max_here);
        if max < PAGE_SIZE {
            // `{:#}`: a max just below the bound shows its exact bytes
            // (not "64.0 KiB" beside "at least 64 KiB").
            return Err(Error::invalid(
                "max",
                format_args!("{:#}", crate::size::Bytes(max)),
                format!(
                    "at least {:#} (one heap page)",
                    crate::size::Bytes(PAGE_SIZE)
                ),
            ));
        }
        if self.min > max {
            return Err(Error::invalid(
                "min",
                format_args!("{:#}", crate::size::Bytes(self.min)),
                format!("at most max ({:#})", crate::size::Bytes(max)),
            ));
        }
        let huge_pages = if self.huge_pages.enabled_for(max) {
            Huge::On
        } else {
            Huge::Off
        };
        let config = CoreConfig {
            min: self.min,
            max,
            huge_pages,
            kind: process::Kind::Explicit,
        };
        let min = self.min;
        let mut arc = HeapInner::new_shared(self.name, config)
            .map_err(|e| refused_build(e, min, max, huge_pages))?;
        if !Arc::get_mut(&mut arc)
            .expect("fresh Arc is unique")
            .register()
        {
            return Err(Error::invalid(
                "heap",
                arc.name.as_ref(),
                format!(
                    "room in the guard table: at most {} explicit heaps may be alive at once (its {} entries, one of which the main heap holds)",
                    guard::CAPACITY - 1,
                    guard::CAPACITY
                ),
            ));
        }
        Ok(Heap {
            handle: Handle::Shared(arc),
        })
    }
}

/// The error of a heap [`HeapBuilder::build`] could not build, with its
/// `min`, `max` and layout.
#[cold]
fn refused_build(e: InitError, min: usize, max: usize, huge: Huge) -> Error {
    match e {
        // A minimum above the process limit can never be committed, in any
        // state of the process: a configuration error, as `min > max` is,
        // naming `min`.
        InitError::Limit {
            requested, limit, ..
        } if requested > limit => Error::invalid(
            "min",
            format_args!("{:#}", crate::size::Bytes(min)),
            format!(
                "at most the process limit, {:#} (FROSTHEAP_MAX, or its default when unset), which every heap's committed memory counts against",
                crate::size::Bytes(limit)
            ),
        ),
        // It fits under the limit but not beside what the process holds
        // now: what an allocation the process limit refuses reports (see
        // `Heap::oom`), since freeing memory elsewhere makes it fit;
        // `in_use` is the process's committed memory, the heap has none.
        InitError::Limit {
            requested,
            limit,
            committed,
        } => Error::OutOfMemory {
            requested,
            limit,
            in_use: committed,
            committed,
            refused_by: RefusedBy::ProcessLimit,
        },
        InitError::Reserve(source) if source.errno == libc::ENOMEM => {
            let largest = self::core::largest_reservable(max, huge);
            let most = if largest > 0 {
                format!(
                    "at most {} here, the largest power of two it reserves now",
                    crate::size::Bytes(largest)
                )
            } else {
                "and it cannot reserve even one heap page now".to_string()
            };
            Error::invalid(
                "max",
                format_args!("{max} bytes"),
                format!(
                    "a size this process's address space can reserve (the heap's range is max rounded up to {}, and its page table is sized by it), {most} ({source})",
                    crate::size::Bytes(match huge {
                        Huge::Off => PAGE_SIZE,
                        Huge::On | Huge::Later => crate::os::HUGE_PAGE_SIZE,
                    })
                ),
            )
        }
        InitError::Reserve(source) => Error::Os {
            context: "reserving a heap region",
            source,
        },
        InitError::Os(source) => Error::Os {
            context: "committing a new heap's minimum",
            source,
        },
    }
}
