//! The owner's cache of its own freed small blocks, as pointers.
//!
//! A block the owner frees goes, while its class has room here, into an
//! array of pointers instead of onto its span's free list, and the owner's
//! next allocation of that class takes it back from there. Neither the
//! free nor the allocation touches the block: a free list in the blocks
//! writes the freed block's first word and reads the next block's, two
//! cache lines (and, in a heap larger than the TLB covers, two page walks)
//! that a program which has not touched the block lately waits for. Where
//! the live data is large and the blocks are chosen at random (the
//! `working-set` case of the `threads` benchmark: 50 MiB a thread), that
//! was the difference between frostheap and jemalloc, whose thread cache
//! is such an array.
//!
//! **Which heaps.** Only a heap that is charged [`OWN_CACHE_FROM`]
//! (8 MiB) turns its cache on, and only the spans it makes from then on
//! send their owner's frees there: they are marked [`OWNER_CACHED`]
//! instead of [`OWNER_LOCAL`] (`super::page`), which the free's fast path
//! tells apart by the compare it makes anyway, so a smaller heap frees and
//! allocates with the same instructions as before the cache. (The spans
//! made before stay as they were: other threads may read their meta.) An
//! allocation takes the current span's free list first (the blocks carved
//! last), then the cache, then the slow path, which carves more only when
//! both are empty.
//!
//! **Counting.** A cached block is free in the heap's statistics (the free
//! counts it, as any free) and still handed out in its span's `used`
//! count: the span cannot be retired while the cache holds one of its
//! blocks, and the allocation that takes it back counts nothing in the
//! span. `HeapCore::flush_own_cache` gives every cached block back to its
//! span: a trim ([`crate::trim`], [`crate::Heap::trim`] by the owner, the
//! C ABI's `malloc_trim`), a thread giving its heap up at exit, sealing
//! (which also turns the cache off), and an allocation that a limit
//! refused, which then tries once more. A class that borrows a block of
//! the next classes (`HeapCore::borrow`) takes their cached blocks first.
//!
//! **Bounds.** Classes up to 4 KiB ([`OWN_CLASSES`]), [`OWN_CAP`] blocks
//! each: at most 700 KiB of blocks held out of their spans per heap (of 8
//! MiB or more), and 4.5 KiB of pointers ([`OwnSlots`]), of which a heap
//! that uses few classes makes resident one page. The pointers lie in the
//! heap's side table, opened when the cache turns on, not in the heap
//! itself: a heap that never turns it on (every thread heap under 8 MiB)
//! keeps 72 bytes of it instead of 4.6 KiB, which took a page of every
//! thread's heap slot. Another heap's cache cannot be emptied
//! from outside:
//! a heap at the process limit gets back the blocks of its own cache, not
//! those other threads hold.
//!
//! Only the owner thread touches the cache (plain `Cell`s). In a `fork`
//! child, the cache of a heap whose owner is not there is forgotten (a
//! push may have been cut in half): its blocks stay counted in their
//! spans, free in the statistics.

use core::cell::Cell;
use core::ptr::{self, NonNull};

use super::class::N_CLASSES;
#[cfg(doc)]
use super::page::{OWNER_CACHED, OWNER_LOCAL};

/// Bytes a heap has committed when its frees start to go to the cache
/// ([`OwnCache::enable`], at a new small span): past what a TLB covers
/// (2,048 entries of 4 KiB), where a block the program has not touched
/// lately costs a page walk and a cache miss to link or unlink. Below it
/// the blocks are in the caches, a free list costs nothing more, and a
/// second source of blocks would only add a branch that a heap of a few
/// blocks per class mispredicts (the `threads` benchmark's `local` case,
/// 64 live blocks a thread, took 1.27× as long with a cache on in every
/// heap).
pub(crate) const OWN_CACHE_FROM: usize = 8 << 20;

/// Classes that have a cache: those up to 4 KiB (classes 0..=35).
pub(crate) const OWN_CLASSES: usize = 36;
/// Blocks cached per class at most.
pub(crate) const OWN_CAP: usize = 16;

/// The cached blocks' pointers: per class, a stack of [`OWN_CAP`].
pub(crate) type OwnSlots = [[Cell<*mut u8>; OWN_CAP]; OWN_CLASSES];

/// The owner's cached blocks: per class, a stack of pointers.
#[repr(C)]
pub(crate) struct OwnCache {
    /// The classes below this one cache their frees: [`OWN_CLASSES`] once
    /// the heap is large ([`OwnCache::enable`]), 0 before.
    classes: Cell<u8>,
    /// Blocks cached per class (0 for the classes without a cache, so
    /// that a pop needs no test of the class). With `classes`, on the
    /// line a small heap's pops and pushes read (and return at).
    len: [Cell<u8>; N_CLASSES],
    /// The stacks, in the heap's side table: null until the cache first
    /// turns on ([`OwnCache::enable`]), then fixed.
    slots: Cell<*const OwnSlots>,
}

impl OwnCache {
    /// Writes an empty cache at `dst` (in place: see `HeapCore::init_at`).
    ///
    /// # Safety
    /// 1. `dst` is valid for a write of an `OwnCache`.
    pub(super) unsafe fn init(dst: *mut OwnCache) {
        // SAFETY: (1); an all-zero OwnCache is empty and off (lengths 0,
        // no stacks yet), and Cell<u8> / Cell<*const _> are valid at zero.
        unsafe { ptr::write_bytes(dst, 0, 1) };
    }

    /// The last block cached for class `c`, taken out of the cache.
    #[inline(always)]
    pub(super) fn pop(&self, c: usize) -> Option<NonNull<u8>> {
        crate::sync::invariant!(c < N_CLASSES, "class out of range");
        // SAFETY: c < N_CLASSES.
        let len = unsafe { self.len.get_unchecked(c) };
        let n = len.get() as usize;
        if n == 0 {
            return None;
        }
        let n = n - 1;
        len.set(n as u8);
        // SAFETY: a length is above 0 only after a push, which the stacks
        // being set allowed (they stay set), only for c < OWN_CLASSES,
        // and n < OWN_CAP.
        let p = unsafe { (*self.slots.get()).get_unchecked(c).get_unchecked(n) }.get();
        crate::sync::invariant!(!p.is_null(), "a null block in the owner's cache");
        // SAFETY: the slots below len hold blocks (never null).
        Some(unsafe { NonNull::new_unchecked(p) })
    }

    /// Caches `p`, a block of class `c` the owner frees; false (nothing
    /// done) when the class has no cache or no room.
    #[inline(always)]
    pub(super) fn push(&self, c: usize, p: *mut u8) -> bool {
        if c >= self.classes.get() as usize {
            return false;
        }
        crate::sync::invariant!(c < OWN_CLASSES, "a class past the cache's");
        // SAFETY: c < OWN_CLASSES <= N_CLASSES.
        let len = unsafe { self.len.get_unchecked(c) };
        let n = len.get() as usize;
        if n == OWN_CAP {
            return false;
        }
        // SAFETY: classes is above 0 only once the stacks are set
        // (`enable`), c < OWN_CLASSES, n < OWN_CAP.
        unsafe { (*self.slots.get()).get_unchecked(c).get_unchecked(n) }.set(p);
        len.set(n as u8 + 1);
        true
    }

    /// Whether frees go to the cache.
    #[inline]
    pub(super) fn enabled(&self) -> bool {
        self.classes.get() != 0
    }

    /// From now on frees of the classes up to 4 KiB go to the cache. Its
    /// stacks are set the first time, from `open`; if that gives none, the
    /// cache stays off.
    ///
    /// # Safety
    /// 1. What `open` returns is writable, zero-initialised or not (only
    ///    what a push wrote is read), and outlives the cache.
    pub(super) unsafe fn enable(&self, open: impl FnOnce() -> Option<NonNull<OwnSlots>>) {
        if self.slots.get().is_null() {
            match open() {
                Some(slots) => self.slots.set(slots.as_ptr()),
                None => return,
            }
        }
        self.classes.set(OWN_CLASSES as u8);
    }

    /// From now on no free goes to the cache (what it holds stays).
    pub(super) fn disable(&self) {
        self.classes.set(0);
    }

    /// Takes every cached block out, class by class, to `f`.
    pub(super) fn drain(&self, mut f: impl FnMut(*mut u8)) {
        for c in 0..OWN_CLASSES {
            while let Some(p) = self.pop(c) {
                f(p.as_ptr());
            }
        }
    }

    /// Forgets every cached block (they stay handed out in their spans):
    /// for a heap whose owner vanished in a `fork` child, whose cache may
    /// have been cut in the middle of a push.
    pub(super) fn forget(&self) {
        for len in &self.len {
            len.set(0);
        }
    }

    /// Every cached block, with its class (the tests' accounting).
    #[cfg(test)]
    pub(super) fn blocks(&self) -> Vec<(usize, *mut u8)> {
        (0..OWN_CLASSES)
            .flat_map(|c| {
                // SAFETY: a class holds blocks only once the stacks are set.
                (0..self.len[c].get() as usize)
                    .map(move |i| (c, unsafe { &*self.slots.get() }[c][i].get()))
            })
            .collect()
    }

    /// Where the stacks are (null before they are set; the tests').
    #[cfg(test)]
    pub(super) fn slots_at(&self) -> *const OwnSlots {
        self.slots.get()
    }

    /// Blocks cached.
    pub(super) fn cached_blocks(&self) -> usize {
        self.len.iter().map(|l| l.get() as usize).sum()
    }
}
