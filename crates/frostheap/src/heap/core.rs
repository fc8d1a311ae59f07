//! The heap proper: [`HeapCore`], its layout, and the owner's fast paths.
//!
//! **Algorithm.** Small requests (up to 128 KiB) are served from spans of
//! same-size blocks, one queue of spans per size class ([`super::queue`]),
//! in the style of mimalloc's free-list sharding: each span has its own
//! free list, so allocation pops from the current span and freeing pushes
//! onto the span the pointer belongs to (found with one shift in the page
//! table, [`super::page`]). Large requests take whole spans
//! ([`super::large`]) from the span allocator ([`super::span`]), which
//! commits the region's prefix on demand and gives memory back with
//! hysteresis.
//!
//! **Threads.** A heap has an *owner* thread (the one that built it; for
//! the main heap, the thread of the first allocation: `main`). The owner's
//! allocations and frees touch only plain fields: no atomic read-modify-
//! write, no lock. Other threads allocate from a second class state behind
//! a lock (the *shared* state), and free the owner's blocks through the
//! remote-free bitmap ([`super::remote`]), which the owner collects when a
//! span runs dry.
//!
//! **Accounting** ([`super::stats`]): `in_use` counts usable bytes (the
//! block or span size), which is what the limit is about; the owner keeps
//! its bytes in one signed word updated with plain loads and stores, and
//! frees of owner blocks by other threads are counted apart and taken into
//! account when reporting.
//!
//! This file holds the fields, construction, the allocation and free fast
//! paths with the slow path they fall back to, the O(1) queries the fault
//! handler and the C ABI use, and sealing.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::class::{class_for, class_of, N_CLASSES};
use super::page::{
    Block, Kind, PageMeta, EMPTY, FULL, GENERATION, NONE, OWNER_LOCAL, OWNER_SEALED, OWNER_SHARED,
    PENDING,
};
use super::queue::ClassState;
use super::remote::REMOTE_WORDS;
use super::span::SpanAllocator;
use crate::os::{self, OsError};
use crate::region::{round_up, Region, RegionConfig, PAGE_SHIFT, PAGE_SIZE};
use crate::sync::{thread_token, RawLock};

/// Where the page table starts in its mapping. Every span starts 64 KiB
/// aligned, so its first block has the same low 12 address bits as a
/// 4 KiB-aligned meta; with the table itself page-aligned, the span at
/// page 0 (the heap's first, usually hottest, small span) would have its
/// meta there too, and the CPU's store-to-load forwarding, which compares
/// only those bits first, stalls loads of the block behind stores to the
/// meta ("4K aliasing": +0.6 ns on every alloc+free pair of that span).
/// Skewing the table by an odd number of lines moves that coincidence to
/// spans at page 31 mod 64.
pub(super) const META_SKEW: usize = 33 * 64;

/// How a heap is laid out and named.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreConfig {
    pub min: usize,
    pub max: usize,
    pub huge_pages: bool,
}

/// One heap: region, page table, class states, span allocator.
///
/// `repr(C)`, laid out by who touches what: first the line every thread's
/// free reads and nobody writes after construction (`base`, `metas`,
/// `owner`, `remote_bits`, `sealed`); then, from the next cache line, the
/// owner's class state (its counters and current spans first), which the
/// fast paths address with one-byte displacements; then, on lines of their
/// own, the fields other threads write ([`OtherThreads`]). The owner's
/// counters are kept off the line other threads read for every free: there,
/// each owner update would take that line away from them (remote frees
/// took 2.5× as long in the allocator benchmark).
#[repr(C)]
pub(crate) struct HeapCore {
    /// `region.base()` as an integer (hot).
    pub(super) base: usize,
    pub(super) metas: *mut PageMeta,
    /// Thread token of the owner (see [`thread_token`]).
    pub(super) owner: AtomicUsize,
    /// The remote-free bitmap: [`REMOTE_WORDS`] words per page, bit `g` of
    /// the region's 16-byte granules set while the block starting there is
    /// freed by another thread and not yet collected. Same mapping as
    /// `metas`, after them.
    pub(super) remote_bits: *const AtomicU64,
    /// Sealed for good: allocation fails and frees are ignored. Checked on
    /// slow paths only; `seal` diverts every fast path into them.
    pub(super) sealed: core::sync::atomic::AtomicBool,
    pub(super) local: ClassState,
    pub(super) others: OtherThreads,
    pub(super) region: Region,
    /// Length of the side-table mapping (page table and bitmap).
    pub(super) table_bytes: usize,
    /// Offset of the bitmap in the side-table mapping.
    pub(super) bits_offset: usize,
    /// The hard cap as configured.
    pub(super) limit: usize,
    pub(super) shared_lock: RawLock,
    pub(super) shared: ClassState,
    pub(super) spans: SpanAllocator,
}

/// The fields of a [`HeapCore`] that threads other than the owner write
/// on their fast paths, on cache lines of their own.
#[repr(C, align(64))]
pub(super) struct OtherThreads {
    /// Bytes and count of owner blocks freed by other threads.
    pub(super) freed_bytes: AtomicUsize,
    pub(super) freed_count: AtomicUsize,
    /// Stack of FULL spans that received remote frees (page indices).
    pub(super) pending: AtomicU32,
    pub(super) refused: AtomicU64,
    /// Bytes charged to this heap from outside it (the C ABI charges other
    /// threads' system allocations here): counted against the limit.
    pub(super) external: AtomicUsize,
}

// SAFETY: the fields behind Cells obey the discipline documented on
// `PageMeta` and `ClassState`: `local` is touched only by the owner thread,
// `shared` only under `shared_lock`, the span allocator's state only under
// its lock; all cross-thread communication goes through atomics.
unsafe impl Sync for HeapCore {}
// SAFETY: as above; the raw pointers point into mappings the core owns.
unsafe impl Send for HeapCore {}

impl HeapCore {
    /// Reserves the region and page table. The calling thread becomes the
    /// owner.
    pub(crate) fn new(config: CoreConfig) -> Result<HeapCore, OsError> {
        let region = Region::new_unchecked_config(RegionConfig {
            min: config.min,
            max: config.max,
            huge_pages: config.huge_pages,
        })?;
        let n_pages = region.reserved() >> PAGE_SHIFT;
        let meta_end = n_pages * core::mem::size_of::<PageMeta>() + META_SKEW;
        let table_bytes = round_up(meta_end + n_pages * REMOTE_WORDS * 8, os::page_size());
        let table = os::map_table_closed(table_bytes)?;
        // SAFETY: the mapping has META_SKEW spare bytes before the page
        // table and the bitmap's n_pages * REMOTE_WORDS words after it
        // (meta_end is a multiple of 64, so the words are aligned).
        let (metas, remote_bits) = unsafe {
            (
                table.add(META_SKEW).cast::<PageMeta>(),
                table.add(meta_end).cast::<AtomicU64>().cast_const(),
            )
        };
        let core = HeapCore {
            base: region.base() as usize,
            region,
            metas,
            remote_bits,
            table_bytes,
            bits_offset: meta_end,
            limit: config.max,
            owner: AtomicUsize::new(thread_token()),
            local: ClassState::new(OWNER_LOCAL),
            shared_lock: RawLock::new(),
            shared: ClassState::new(OWNER_SHARED),
            spans: SpanAllocator::new(),
            others: OtherThreads {
                freed_bytes: AtomicUsize::new(0),
                freed_count: AtomicUsize::new(0),
                pending: AtomicU32::new(NONE),
                refused: AtomicU64::new(0),
                external: AtomicUsize::new(0),
            },
            sealed: core::sync::atomic::AtomicBool::new(false),
        };
        // The pre-committed minimum becomes one free span.
        let pages = core.region.committed() >> PAGE_SHIFT;
        if pages > 0 {
            let mut spans = core.lock_spans();
            spans.open_tables(pages)?;
            // SAFETY: the pages are committed, free and in no span.
            unsafe { spans.insert(0, pages, false) };
        }
        Ok(core)
    }

    /// The region.
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Whether `addr` is inside this heap's reservation.
    #[inline]
    pub(crate) fn owns(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.region.reserved()
    }

    /// Whether the calling thread is the owner.
    #[inline]
    pub(crate) fn is_owner(&self) -> bool {
        thread_token() == self.owner.load(Ordering::Relaxed)
    }

    /// Makes the calling thread the owner.
    ///
    /// # Safety
    /// 1. The previous owner never uses the heap again without another
    ///    `set_owner` handing it back, with a happens-before edge between
    ///    the two (the owner's plain fields move with it).
    pub(crate) unsafe fn set_owner(&self) {
        self.owner.store(thread_token(), Ordering::Release);
    }

    #[inline]
    pub(super) fn meta(&self, idx: usize) -> &PageMeta {
        debug_assert!(
            idx < self.region.reserved() >> PAGE_SHIFT,
            "page {idx} outside the heap"
        );
        // SAFETY: idx is inside the page table, which lives as long as self.
        unsafe { &*self.metas.add(idx) }
    }

    #[inline]
    pub(super) fn idx_of(&self, m: &PageMeta) -> usize {
        (m as *const PageMeta as usize - self.metas as usize) / core::mem::size_of::<PageMeta>()
    }

    #[inline]
    pub(super) fn page_addr(&self, idx: usize) -> usize {
        self.base + (idx << PAGE_SHIFT)
    }

    // -----------------------------------------------------------------
    // Allocation.

    /// Allocates; null when the limit would be exceeded.
    #[inline(always)]
    pub(crate) fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = class_for(layout.size(), layout.align()) {
            if self.is_owner() {
                return self.alloc_small::<true>(c);
            }
            return self.alloc_shared(c);
        }
        self.alloc_large(layout).0
    }

    /// A small allocation by a thread other than the owner, under the
    /// shared lock (kept out of line so the owner's path stays small).
    #[inline(never)]
    pub(super) fn alloc_shared(&self, c: usize) -> *mut u8 {
        let _g = self.shared_lock.lock();
        self.alloc_small::<false>(c)
    }

    /// [`HeapCore::alloc`] for a caller that knows it is the owner.
    ///
    /// # Safety
    /// 1. The calling thread is the owner ([`HeapCore::is_owner`]).
    #[inline(always)]
    pub(crate) unsafe fn alloc_as_owner(&self, layout: Layout) -> *mut u8 {
        debug_assert!(self.is_owner(), "alloc_as_owner called by another thread");
        if let Some(c) = class_for(layout.size(), layout.align()) {
            return self.alloc_small::<true>(c);
        }
        self.alloc_large(layout).0
    }

    /// The owner's fast path alone: a block of class `c` from the current
    /// span's free list, or null when that list is empty (the caller then
    /// takes the full path). Nothing here calls out of line except the
    /// rare peak raise, so a caller that inlines it stays a leaf function
    /// on its hot path (no register saves).
    ///
    /// # Safety
    /// 1. The calling thread is the owner ([`HeapCore::is_owner`]).
    #[inline(always)]
    pub(crate) unsafe fn try_alloc_small_as_owner(&self, c: usize) -> Option<NonNull<u8>> {
        debug_assert!(
            self.is_owner(),
            "try_alloc_small_as_owner called by another thread"
        );
        let (b, size) = self.local.pop_current(c)?;
        // The rare peak raise as a tail call, so this path saves no
        // register around it.
        if self.local.count_local_alloc(size) {
            return Some(self.local.raise_peak_returning(b));
        }
        Some(b)
    }

    /// C `malloc` (`ZERO = false`) and `calloc` (`ZERO = true`) for a
    /// caller that knows it is the owner: `size` bytes aligned to 16, null
    /// when the limit would be exceeded. The small path skips the layout
    /// checks and the alignment branch of [`HeapCore::alloc_as_owner`]
    /// (every class size is a multiple of 16 and spans start 64 KiB
    /// aligned): with them, `malloc` through the C ABI ran 67 instructions
    /// a call in the preload benchmark's C loop, mimalloc's 19.
    ///
    /// # Safety
    /// 1. The calling thread is the owner ([`HeapCore::is_owner`]).
    #[inline(always)]
    pub(crate) unsafe fn alloc_c_as_owner<const ZERO: bool>(&self, size: usize) -> *mut u8 {
        debug_assert!(self.is_owner(), "alloc_c_as_owner called by another thread");
        if let Some(c) = class_of(size) {
            let p = self.alloc_small::<true>(c);
            if ZERO && !p.is_null() {
                // SAFETY: p points to a block of CLASS_SIZE[c] >= size bytes.
                unsafe { ptr::write_bytes(p, 0, size) };
            }
            return p;
        }
        self.alloc_c_large::<ZERO>(size)
    }

    /// The large path of [`HeapCore::alloc_c_as_owner`].
    #[cold]
    #[inline(never)]
    pub(super) fn alloc_c_large<const ZERO: bool>(&self, size: usize) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(size, 16) else {
            return ptr::null_mut();
        };
        if ZERO {
            self.alloc_zeroed(layout)
        } else {
            self.alloc_large(layout).0
        }
    }

    /// Allocates zeroed memory; null when the limit would be exceeded.
    pub(crate) fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_for(layout.size(), layout.align()).is_some() {
            let p = self.alloc(layout);
            if !p.is_null() {
                // SAFETY: p points to at least layout.size() writable bytes.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        let (p, zeroed) = self.alloc_large(layout);
        if !p.is_null() && !zeroed {
            // SAFETY: as above.
            unsafe { ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    /// The small-object fast path: pop the current span's free list.
    /// `LOCAL`: the caller is the owner (the local state); otherwise it
    /// holds the shared lock (the shared state).
    #[inline(always)]
    pub(super) fn alloc_small<const LOCAL: bool>(&self, c: usize) -> *mut u8 {
        if LOCAL {
            // SAFETY: LOCAL callers are the owner.
            if let Some(p) = unsafe { self.try_alloc_small_as_owner(c) } {
                return p.as_ptr();
            }
            return self.alloc_small_slow(&self.local, c);
        }
        if let Some((b, size)) = self.shared.pop_current(c) {
            self.shared.on_alloc_as::<false>(size);
            return b.as_ptr();
        }
        self.alloc_small_slow(&self.shared, c)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn alloc_small_slow(&self, st: &ClassState, c: usize) -> *mut u8 {
        if self.is_sealed() {
            return ptr::null_mut();
        }
        loop {
            if let Some((b, size)) = st.pop_current(c) {
                st.on_alloc(size);
                return b.as_ptr();
            }
            let cur = st.current[c].get();
            if !ptr::eq(cur, &EMPTY.0) {
                // SAFETY: cur is a live meta of a span in this queue.
                let m = unsafe { &*cur };
                let idx = self.idx_of(m);
                if m.extend.get() < m.capacity.get() {
                    self.extend_free(m, idx);
                    continue;
                }
                // (Only the owner's spans receive remote frees.)
                if st.kind == OWNER_LOCAL && self.collect_remote(m, idx, false) > 0 {
                    continue;
                }
                // Dry: leave the queue until a free brings it back. Every
                // block is carved and none is on a list, so all are in use:
                // the count the span did not keep while current is exact.
                m.used.set(m.capacity.get());
                self.queue_unlink(st, c, idx);
                // Only the state's owner moves it away from "not FULL".
                let generation = m.state.load(Ordering::Relaxed) & GENERATION;
                if st.kind == OWNER_LOCAL {
                    m.state.store(generation | FULL, Ordering::SeqCst);
                    if self.has_remote(idx, m)
                        && m.state
                            .compare_exchange(
                                generation | FULL,
                                generation,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                    {
                        // A remote free raced with us and did not see FULL.
                        self.collect_remote(m, idx, true);
                        self.queue_push_back(st, c, idx);
                    }
                } else {
                    m.state.store(generation | FULL, Ordering::Relaxed);
                }
                continue;
            }
            if st.kind == OWNER_LOCAL {
                st.set_foreign_seen(self.others.freed_bytes.load(Ordering::Relaxed));
                if self.collect_pending() && !ptr::eq(st.current[c].get(), &EMPTY.0) {
                    continue;
                }
            }
            match self.new_small_span(st, c) {
                Some(idx) => self.queue_push_back(st, c, idx),
                None => return ptr::null_mut(),
            }
        }
    }

    // -----------------------------------------------------------------
    // Freeing.

    /// Frees a block of this heap.
    ///
    /// # Safety
    /// 1. `p` was returned by this heap's allocation functions and has not
    ///    been freed since.
    #[inline(always)]
    pub(crate) unsafe fn free(&self, p: *mut u8) {
        // SAFETY: forwarded (1); p lies in the region.
        unsafe { self.free_at(p, p as usize - self.base) }
    }

    /// [`HeapCore::free`] for a caller that has already computed
    /// `offset = p - base` (the global allocator's ownership test does).
    ///
    /// # Safety
    /// 1. As for [`HeapCore::free`], and `offset == p as usize - base`.
    #[inline(always)]
    pub(crate) unsafe fn free_at(&self, p: *mut u8, offset: usize) {
        let idx = offset >> PAGE_SHIFT;
        let m = self.meta(idx);
        // `kind` and `owner` are adjacent bytes: one 16-bit compare.
        let kind_owner = u16::from_le_bytes([m.kind.get(), m.owner.get()]);
        if kind_owner == u16::from_le_bytes([Kind::Small as u8, OWNER_LOCAL]) && self.is_owner() {
            // SAFETY: by (1) p is a live block of this span; we are the
            // owner, who owns the local state.
            unsafe { self.push_free::<true>(&self.local, m, idx, p) };
            return;
        }
        // SAFETY: forwarded precondition (1).
        unsafe { self.free_slow(idx, p) }
    }

    #[cold]
    #[inline(never)]
    pub(super) unsafe fn free_slow(&self, idx: usize, p: *mut u8) {
        if self.is_sealed() {
            return; // nothing may be written in a sealed heap
        }
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        match m.kind() {
            Kind::Small if m.owner.get() == OWNER_SHARED => {
                let _g = self.shared_lock.lock();
                // SAFETY: p is a live block of this shared span; we hold
                // the shared lock, which owns the shared state.
                unsafe { self.push_free::<false>(&self.shared, m, head, p) };
            }
            Kind::Small if self.is_owner() => {
                // A block in a later page of a multi-page span.
                // SAFETY: as in `free`.
                unsafe { self.push_free::<true>(&self.local, m, head, p) };
            }
            Kind::Small => self.free_remote(m, head, p),
            Kind::Large => self.free_large(m, head),
            _ => invalid_free(p),
        }
    }

    /// Pushes `p` on the free list of the small span headed by `m` (page
    /// `idx`) and counts the free in `st` (`LOCAL` iff `st` is the owner's
    /// state); a span that is not its queue's current one also counts the
    /// block out of `used`, and goes to [`HeapCore::after_local_free`] when
    /// that emptied it or it is FULL/PENDING.
    ///
    /// # Safety
    /// 1. `p` is a live block of that span, and the caller owns `st` (is
    ///    the owner thread for the local state, holds the shared lock for
    ///    the shared one).
    #[inline(always)]
    pub(super) unsafe fn push_free<const LOCAL: bool>(
        &self,
        st: &ClassState,
        m: &PageMeta,
        idx: usize,
        p: *mut u8,
    ) {
        let b = p.cast::<Block>();
        // SAFETY: by (1) p is a live block; it becomes free, and its first
        // word the free-list link.
        unsafe { (*b).next = m.free.get() };
        m.free.set(b);
        st.on_free_as::<LOCAL>(m.block_size.get() as usize);
        // The current span keeps no `used` count (PageMeta::used): it
        // counts down from CURRENT_USED, so this needs no branch on
        // "current or not", which a program freeing blocks of many spans at
        // random mispredicts half the time (twice the cost of a free in the
        // 1600-block churn benchmark), and no test of a flag.
        let used = m.used.get().wrapping_sub(1);
        m.used.set(used);
        // Only the owner of `st` moves `state` away from 0, so a relaxed 0
        // read here is exact.
        if (used == 0) | (m.state.load(Ordering::Relaxed) & !GENERATION != 0) {
            self.after_local_free(st, m, idx);
        }
    }

    /// After an owner free that emptied the span or hit a FULL span.
    pub(super) fn after_local_free(&self, st: &ClassState, m: &PageMeta, idx: usize) {
        let c = m.class.get() as usize;
        let state = m.state.load(Ordering::SeqCst);
        if state & PENDING != 0 {
            // On the pending stack: collect_pending will relink it.
            return;
        }
        if state & FULL != 0 {
            if m.state
                .compare_exchange(
                    state,
                    state & GENERATION,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err()
            {
                return; // a remote freer pushed it on the pending stack
            }
            self.queue_push_back(st, c, idx);
        }
        if m.used.get() == 0 && !ptr::eq(st.current[c].get(), m) {
            self.queue_unlink(st, c, idx);
            self.retire_span(idx);
        }
    }

    // -----------------------------------------------------------------
    // Queries.

    /// Usable size of a live block.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap.
    pub(crate) unsafe fn usable_size(&self, p: *mut u8) -> usize {
        let idx = (p as usize - self.base) >> PAGE_SHIFT;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            m = self.meta(m.head.get() as usize);
        }
        match m.kind() {
            Kind::Small => m.block_size.get() as usize,
            Kind::Large => m.span_pages.get() as usize * PAGE_SIZE - m.offset.get() as usize,
            _ => 0,
        }
    }

    /// The block containing `addr`: its base and size, in O(1). Reads the
    /// page table only, so the fault handler may call it.
    pub(crate) fn allocation_containing(&self, addr: usize) -> Option<(usize, usize)> {
        if !self.owns(addr) || addr >= self.base + self.region.committed() {
            return None;
        }
        let idx = (addr - self.base) >> PAGE_SHIFT;
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        let start = self.page_addr(head);
        match m.kind() {
            Kind::Small => {
                let size = m.block_size.get() as usize;
                let i = (addr - start) / size;
                if i >= m.capacity.get() as usize {
                    return None;
                }
                Some((start + i * size, size))
            }
            Kind::Large => {
                let base = start + m.offset.get() as usize;
                let end = start + m.span_pages.get() as usize * PAGE_SIZE;
                (addr >= base && addr < end).then_some((base, end - base))
            }
            _ => None,
        }
    }

    /// Whether [`HeapCore::seal_allocation`] ran.
    #[inline]
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Stops all allocation and freeing, for a heap about to be sealed
    /// read-only: raises the flag the slow paths check, and diverts every
    /// fast path into them (empty class queues; small spans marked
    /// `OWNER_SEALED`, which the free fast path does not accept). The fast
    /// paths themselves carry no extra check.
    ///
    /// Precondition: called by the owner thread, with no other thread
    /// allocating from the heap meanwhile.
    pub(crate) fn seal_allocation(&self) {
        self.sealed.store(true, Ordering::Release);
        let _s = self.shared_lock.lock();
        let _spans = self.lock_spans();
        for c in 0..N_CLASSES {
            Self::set_current(&self.local, c, &EMPTY.0);
            Self::set_current(&self.shared, c, &EMPTY.0);
        }
        for idx in 0..self.region.committed() >> PAGE_SHIFT {
            let m = self.meta(idx);
            if m.kind() == Kind::Small {
                m.owner.set(OWNER_SEALED);
            }
        }
    }

    /// Locks used by the heap, for `fork` handlers (C ABI).
    pub(crate) fn locks(&self) -> [&RawLock; 2] {
        [&self.shared_lock, self.spans.raw_lock()]
    }
}

impl Drop for HeapCore {
    fn drop(&mut self) {
        // SAFETY: the side table was mapped in `new` with this length and
        // nothing refers to it once the core is dropped. The region unmaps
        // itself.
        unsafe { os::unmap(self.metas.cast::<u8>().sub(META_SKEW), self.table_bytes) };
    }
}

#[cold]
pub(super) fn invalid_free(p: *mut u8) -> ! {
    let mut buf = [0u8; 96];
    let msg = crate::fmt_buf::Buf::new(&mut buf)
        .str("frostheap: free of an invalid or already freed pointer 0x")
        .hex(p as usize)
        .str("\n")
        .finish();
    os::write_stderr(msg);
    std::process::abort();
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A heap of `max` bytes, nothing pre-committed, no huge pages.
    pub(crate) fn heap_of(max: usize) -> HeapCore {
        HeapCore::new(CoreConfig {
            min: 0,
            max,
            huge_pages: false,
        })
        .expect("a heap reservation")
    }
}
