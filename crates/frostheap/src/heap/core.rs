//! The allocator proper: one [`HeapCore`] per heap.
//!
//! **Algorithm.** Small requests (up to 128 KiB) are served from spans of
//! same-size blocks, one queue of spans per size class, in the style of
//! mimalloc's free-list sharding: each span has its own free list, so
//! allocation pops from the current span and freeing pushes onto the span
//! the pointer belongs to (found with one shift). Fresh spans are carved
//! lazily (`extend`), 32 blocks at a time.
//!
//! **Threads.** A heap has an *owner* thread (the one that built it; for
//! the main heap, the thread of the first allocation: `main`). The owner's
//! allocations and frees touch only plain fields: no atomic read-modify-
//! write, no lock. Other threads allocate from a second class state behind
//! a lock ("shared"), and free owner blocks by setting the block's bit in
//! the heap's *remote-free bitmap* (one bit per 16 bytes of the region, in
//! a side table), which the owner collects when the span runs dry. A
//! remote free writes neither the block nor the span's hot meta line: the
//! owner keeps the block's cache line, and the freer's cost is one atomic
//! OR (plus, for the first block of a 1 KiB stretch, one on the page's
//! summary word). An intrusive list, which every remote free wrote into
//! the block and the owner then walked, cost two cross-core cache-line
//! transfers per block. A span that ran dry and left its queue is marked
//! `FULL`; the first remote free into it pushes it on the heap's `pending`
//! stack so the owner finds it again — without that, memory freed remotely
//! into full spans would never be reused.
//!
//! **Large** requests take whole spans from the span allocator
//! ([`super::page`]), which commits the region's prefix on demand and gives
//! memory back with hysteresis, in the spirit of the JVM's
//! `MaxHeapFreeRatio`: free memory is returned only when it clearly
//! outweighs what is live. The free top of the region is decommitted when
//! it is at least 8 MiB *and* more than twice everything live below it
//! (free > 2/3 of committed; the JVM's default is 70%), keeping
//! max(2 MiB, live/2) as headroom; free spans elsewhere are purged
//! (`MADV_DONTNEED`) once free resident memory passes max(32 MiB, 2 × live),
//! down to half that. A program
//! that frees everything gets its memory back; one that frees and reuses a
//! large buffer every round (a result vector, a batch) keeps it resident
//! instead of zero-filling it again each time.
//!
//! **Accounting.** `in_use` counts usable bytes (the block or span size),
//! which is what the limit is about. The owner's counters are relaxed
//! atomics written with plain loads and stores; frees by other threads of
//! owner blocks are counted in `foreign_*` and subtracted when reporting.

use core::alloc::Layout;
use core::cell::Cell;
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicIsize, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::class::{class_for, class_of, span_pages, CLASS_SIZE, N_CLASSES};
use super::page::{
    bin_of, Block, Kind, PageMeta, Spans, CURRENT_USED, DIRTY, EMPTY, FULL, GENERATION,
    GENERATION_STEP, IN_QUEUE, NONE, OWNER_LOCAL, OWNER_SEALED, OWNER_SHARED, PENDING,
};
use crate::os::{self, OsError};
use crate::region::{round_up, Region, RegionConfig, PAGE_SHIFT, PAGE_SIZE};
use crate::sync::{thread_token, RawLock};

/// Decommit the region's top once at least this much, and more than twice
/// what is live below it, is free there.
const SHRINK_AT: usize = 8 << 20;
/// ... keeping max(this, live / 2) committed above the last live span.
const KEEP_ON_TOP: usize = 2 << 20;
/// Purge free spans once free resident memory passes max(this, 2 × live).
const PURGE_RETAIN: usize = 32 << 20;
/// Where the page table starts in its mapping. Every span starts 64 KiB
/// aligned, so its first block has the same low 12 address bits as a
/// 4 KiB-aligned meta; with the table itself page-aligned, the span at
/// page 0 (the heap's first, usually hottest, small span) would have its
/// meta there too, and the CPU's store-to-load forwarding, which compares
/// only those bits first, stalls loads of the block behind stores to the
/// meta ("4K aliasing": +0.6 ns on every alloc+free pair of that span).
/// Skewing the table by an odd number of lines moves that coincidence to
/// spans at page 31 mod 64.
const META_SKEW: usize = 33 * 64;
/// `state` of a FULL span on (or on its way to) the pending stack.
const PENDING_FULL: u32 = FULL | PENDING;
/// Blocks linked per lazy extension of a fresh span.
const EXTEND_BATCH: u32 = 32;
/// Bytes of region one remote-free bitmap bit stands for (every block
/// starts on such a boundary).
const GRANULE_SHIFT: usize = 4;
/// Remote-free bitmap words per page: one summary bit each.
const REMOTE_WORDS: usize = PAGE_SIZE >> (GRANULE_SHIFT + 6);
const _: () = assert!(REMOTE_WORDS == 64, "a page's summary is one u64");

/// The allocation statistics of one class state.
///
/// The owner's state keeps its bytes as one signed word, `slack`: the
/// peak (plus the foreign frees it has taken into account) minus its net
/// bytes. An allocation subtracts its size, a free adds it back; a
/// negative slack means the owner's live bytes passed the peak, which the
/// slow path then raises. One read-modify-write per operation and no
/// separate peak test: alloc+free pairs measured 0.3–0.4 ns faster than
/// with separate allocated and freed byte counters and a peak compare
/// (four interleaved A/B runs, 16 B–4 KiB). `peak`, `foreign_seen` and
/// `slack` move together only on slow paths, under the sequence counter
/// `seq`, so readers ([`HeapCore::stats`]) see them consistent.
///
/// The shared state (any thread, under the shared lock; read by others
/// without it) keeps monotonic `alloc_bytes` / `freed_bytes` updated with
/// atomic adds instead. Counts are separate monotonic counters in both;
/// writers store `freed_count` with Release after the allocation it frees
/// was counted, and readers load it first with Acquire, so a reader never
/// sees more frees than allocations.
#[repr(C)]
struct Counters {
    /// Owner's state: the highest live bytes seen (net bytes less the
    /// foreign frees taken into account at the time); shared state: the
    /// highest `alloc_bytes - freed_bytes` seen.
    peak: AtomicUsize,
    /// Owner's state: `peak + foreign_seen - net bytes`.
    slack: AtomicIsize,
    /// Owner's state: its last reading of the heap's foreign freed bytes.
    foreign_seen: AtomicUsize,
    /// Allocations ever made through this state.
    total: AtomicU64,
    /// Shared state: usable bytes allocated, plus in-place growths.
    alloc_bytes: AtomicUsize,
    /// Frees made through this state (`total - freed_count` are live).
    freed_count: AtomicU64,
    /// Shared state: usable bytes freed, plus in-place shrinks.
    freed_bytes: AtomicUsize,
    /// Owner's state: odd while the owner moves `peak`, `foreign_seen` and
    /// `slack` together.
    seq: AtomicUsize,
}

// The words every owner operation writes (`slack`, `total`, `freed_count`)
// sit at 8 mod 16 from a line start (ClassState is line-aligned), so their
// low 12 address bits never equal those of a block's first word (blocks
// start 16-aligned), which the fast paths load right after these stores:
// the CPU would otherwise stall the load as possibly aliased ("4K
// aliasing"). A build whose 64 B pair loop hit such a block ran it 12%
// slower than the other sizes.
const _: () = {
    assert!(core::mem::offset_of!(Counters, slack) % 16 == 8);
    assert!(core::mem::offset_of!(Counters, total) % 16 == 8);
    assert!(core::mem::offset_of!(Counters, freed_count) % 16 == 8);
    assert!(core::mem::offset_of!(ClassState, counters) == 0);
};

impl Counters {
    const fn new() -> Counters {
        Counters {
            slack: AtomicIsize::new(0),
            total: AtomicU64::new(0),
            freed_count: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            foreign_seen: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
            alloc_bytes: AtomicUsize::new(0),
            freed_bytes: AtomicUsize::new(0),
        }
    }

    /// Owner only: runs `f`, which moves `peak`, `foreign_seen` and
    /// `slack`, with `seq` odd (a sequence lock: readers retry). `f` stores
    /// `slack` first, so that an update cut short (a `fork` in the middle,
    /// see [`Counters::after_fork`], or a reader that gave up waiting)
    /// leaves the owner's live bytes understated, never overstated.
    #[cold]
    fn owner_update(&self, f: impl FnOnce()) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        f();
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// In a `fork` child: an update the fork cut in half stays as it is
    /// (understating, see [`Counters::owner_update`]), and the sequence
    /// counter becomes even again, or every reader would wait on it and
    /// the next update would invert it.
    fn after_fork(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(seq & 1), Ordering::Relaxed);
    }

    /// The owner's state's `(peak, slack, foreign_seen)`, read together.
    /// Spins, then yields, while an update is in progress; after 100
    /// yields (the owner stopped mid-update, or a signal handler on its
    /// thread interrupted one) it takes the last reading, which an update
    /// in progress can only make understate the live bytes.
    fn owner_snapshot(&self) -> (usize, isize, usize) {
        let mut last = (0, 0, 0);
        for attempt in 0..200 {
            let seq = self.seq.load(Ordering::Acquire);
            last = (
                self.peak.load(Ordering::Relaxed),
                self.slack.load(Ordering::Relaxed),
                self.foreign_seen.load(Ordering::Relaxed),
            );
            core::sync::atomic::fence(Ordering::Acquire);
            if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
                break;
            }
            if attempt < 100 {
                core::hint::spin_loop();
            } else {
                crate::os::yield_now();
            }
        }
        last
    }
}

/// One set of class queues: the owner's (`local`) or the locked one.
/// `repr(C)`, fast-path fields first, from a cache line of its own (see
/// [`HeapCore`]).
#[repr(C, align(64))]
pub(crate) struct ClassState {
    counters: Counters,
    /// Head span of each class queue, or the empty meta.
    current: [Cell<*const PageMeta>; N_CLASSES],
    /// Queue heads and tails (page indices).
    head: [Cell<u32>; N_CLASSES],
    tail: [Cell<u32>; N_CLASSES],
    /// [`OWNER_LOCAL`] or [`OWNER_SHARED`].
    kind: u8,
}

impl ClassState {
    fn new(kind: u8) -> ClassState {
        ClassState {
            current: core::array::from_fn(|_| Cell::new(&EMPTY.0 as *const PageMeta)),
            head: core::array::from_fn(|_| Cell::new(NONE)),
            tail: core::array::from_fn(|_| Cell::new(NONE)),
            counters: Counters::new(),
            kind,
        }
    }

    /// Counts an allocation of `size` usable bytes.
    #[inline]
    fn on_alloc(&self, size: usize) {
        if self.kind == OWNER_LOCAL {
            self.on_alloc_as::<true>(size)
        } else {
            self.on_alloc_as::<false>(size)
        }
    }

    /// [`ClassState::on_alloc`] for a caller that knows statically which
    /// state this is (`LOCAL` iff `self.kind == OWNER_LOCAL`), so the fast
    /// paths carry no branch on `kind`.
    #[inline(always)]
    fn on_alloc_as<const LOCAL: bool>(&self, size: usize) {
        debug_assert_eq!(
            LOCAL,
            self.kind == OWNER_LOCAL,
            "on_alloc_as with the wrong state"
        );
        let c = &self.counters;
        if LOCAL {
            if self.count_local_alloc(size) {
                self.raise_peak();
            }
        } else {
            let allocated = c.alloc_bytes.fetch_add(size, Ordering::Relaxed) + size;
            c.total.fetch_add(1, Ordering::Relaxed);
            let net = allocated.saturating_sub(c.freed_bytes.load(Ordering::Acquire));
            c.peak.fetch_max(net, Ordering::Relaxed);
        }
    }

    /// The owner's counting of an allocation of `size` usable bytes (only
    /// the owner writes these: plain load + store). Returns whether the
    /// owner's live bytes passed the peak: the caller then raises it (a
    /// plain call, or a tail call on the leaf fast path).
    #[inline(always)]
    fn count_local_alloc(&self, size: usize) -> bool {
        let c = &self.counters;
        let slack = c.slack.load(Ordering::Relaxed).wrapping_sub(size as isize);
        c.slack.store(slack, Ordering::Relaxed);
        c.total
            .store(c.total.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        slack < 0
    }

    /// Pops a block of class `c` from this state's current span, with its
    /// size; `None` when that free list is empty. The caller owns the state
    /// (the owner thread, or the holder of the shared lock) and counts the
    /// allocation.
    #[inline(always)]
    fn pop_current(&self, c: usize) -> Option<(NonNull<u8>, usize)> {
        debug_assert!(c < N_CLASSES, "class out of range");
        // SAFETY: `current` always points at a live meta or at EMPTY (whose
        // free list is null); c < N_CLASSES.
        let m = unsafe { &*self.current.get_unchecked(c).get() };
        let b = NonNull::new(m.free.get())?;
        // SAFETY: b is a free block of this span; its first word is the link
        // written when it was freed or carved. (No `used` count: the current
        // span's is not kept, see PageMeta::used.)
        m.free.set(unsafe { b.as_ref() }.next);
        // A span in class c's queue has block_size == CLASS_SIZE[c];
        // reading it from the meta's line saves a table load.
        debug_assert_eq!(
            m.block_size.get(),
            CLASS_SIZE[c],
            "span in the wrong class queue"
        );
        Some((b.cast(), m.block_size.get() as usize))
    }

    /// The owner's slack went below zero: its live bytes passed the peak
    /// by that much, which becomes the new peak (slack zero).
    #[cold]
    #[inline(never)]
    fn raise_peak(&self) {
        debug_assert_eq!(self.kind, OWNER_LOCAL, "raise_peak on the shared state");
        let c = &self.counters;
        let slack = c.slack.load(Ordering::Relaxed);
        if slack < 0 {
            c.owner_update(|| {
                c.slack.store(0, Ordering::Relaxed);
                c.peak.store(
                    c.peak.load(Ordering::Relaxed) + slack.unsigned_abs(),
                    Ordering::Relaxed,
                );
            });
        }
    }

    /// [`ClassState::raise_peak`], then `p` (a tail call for fast paths).
    #[cold]
    #[inline(never)]
    fn raise_peak_returning(&self, p: NonNull<u8>) -> NonNull<u8> {
        self.raise_peak();
        p
    }

    /// The owner read the heap's foreign freed bytes anew (they only grow):
    /// its live bytes are that much lower than its net bytes from now on,
    /// so its slack to the peak grows by the difference.
    fn set_foreign_seen(&self, foreign: usize) {
        debug_assert_eq!(
            self.kind, OWNER_LOCAL,
            "set_foreign_seen on the shared state"
        );
        let c = &self.counters;
        let seen = c.foreign_seen.load(Ordering::Relaxed);
        if foreign > seen {
            c.owner_update(|| {
                c.slack.store(
                    c.slack
                        .load(Ordering::Relaxed)
                        .wrapping_add((foreign - seen) as isize),
                    Ordering::Relaxed,
                );
                c.foreign_seen.store(foreign, Ordering::Relaxed);
            });
        }
    }

    /// Counts a free of `size` usable bytes.
    #[inline]
    fn on_free(&self, size: usize) {
        if self.kind == OWNER_LOCAL {
            self.on_free_as::<true>(size)
        } else {
            self.on_free_as::<false>(size)
        }
    }

    /// [`ClassState::on_free`] for a caller that knows which state this is.
    #[inline(always)]
    fn on_free_as<const LOCAL: bool>(&self, size: usize) {
        debug_assert_eq!(
            LOCAL,
            self.kind == OWNER_LOCAL,
            "on_free_as with the wrong state"
        );
        let c = &self.counters;
        if LOCAL {
            c.slack.store(
                c.slack.load(Ordering::Relaxed).wrapping_add(size as isize),
                Ordering::Relaxed,
            );
            c.freed_count
                .store(c.freed_count.load(Ordering::Relaxed) + 1, Ordering::Release);
        } else {
            c.freed_bytes.fetch_add(size, Ordering::Release);
            c.freed_count.fetch_add(1, Ordering::Release);
        }
    }

    /// Counts a change in a live block's usable size (large realloc).
    fn on_resize(&self, old: usize, new: usize) {
        let c = &self.counters;
        if self.kind == OWNER_LOCAL {
            let slack = c
                .slack
                .load(Ordering::Relaxed)
                .wrapping_sub(new as isize)
                .wrapping_add(old as isize);
            c.slack.store(slack, Ordering::Relaxed);
            if slack < 0 {
                self.raise_peak();
            }
        } else if new >= old {
            let allocated = c.alloc_bytes.fetch_add(new - old, Ordering::Relaxed) + (new - old);
            c.peak.fetch_max(
                allocated.saturating_sub(c.freed_bytes.load(Ordering::Acquire)),
                Ordering::Relaxed,
            );
        } else {
            c.freed_bytes.fetch_add(old - new, Ordering::Release);
        }
    }
}

/// Statistics of one heap. `in_use <= committed <= reserved`, and
/// `committed <= limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of address space reserved.
    pub reserved: usize,
    /// Bytes committed (readable and writable).
    pub committed: usize,
    /// Usable bytes of live allocations.
    pub in_use: usize,
    /// The highest `in_use` seen. Exact for single-threaded use. Frees by
    /// other threads are taken into account when the owner next collects
    /// them, so it may overstate by those; allocations by other threads
    /// keep a peak of their own, and the value is the larger of the two
    /// peaks and the current `in_use`, so it may understate a high that
    /// both reached together.
    pub peak: usize,
    /// The hard cap (`max`).
    pub limit: usize,
    /// Live allocations.
    pub allocations: usize,
    /// Allocations ever made.
    pub total_allocations: u64,
    /// Allocations refused because of the limit.
    pub refused: u64,
    /// Bytes held outside the heap but charged against its limit
    /// (see [`crate::Heap::charge_external`]); not part of `in_use`.
    pub external: usize,
}

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
/// own, the fields other threads write ([`OtherThreads`]). With the owner's
/// counters on the line other threads read for every free, remote frees
/// took 2.5× as long.
#[repr(C)]
pub(crate) struct HeapCore {
    /// `region.base()` as an integer (hot).
    base: usize,
    metas: *mut PageMeta,
    /// Thread token of the owner (see [`thread_token`]).
    owner: AtomicUsize,
    /// The remote-free bitmap: [`REMOTE_WORDS`] words per page, bit `g` of
    /// the region's 16-byte granules set while the block starting there is
    /// freed by another thread and not yet collected. Same mapping as
    /// `metas`, after them.
    remote_bits: *const AtomicU64,
    /// Sealed for good: allocation fails and frees are ignored. Checked on
    /// slow paths only; `seal` diverts every fast path into them.
    sealed: core::sync::atomic::AtomicBool,
    local: ClassState,
    others: OtherThreads,
    region: Region,
    /// Length of the side-table mapping (page table and bitmap).
    table_bytes: usize,
    /// Offset of the bitmap in the side-table mapping.
    bits_offset: usize,
    /// Pages whose page-table entries and bitmap words are writable (span
    /// lock): the side table is mapped read-only (zeros: `Kind::Unused`, no
    /// remote frees) and opened as the region's committed prefix grows, so
    /// it is charged in proportion to committed memory, not to `max`.
    tables_open: Cell<usize>,
    /// The hard cap as configured.
    limit: usize,
    shared_lock: RawLock,
    shared: ClassState,
    span_lock: RawLock,
    spans: UnsafeCell<Spans>,
}

/// The fields of a [`HeapCore`] that threads other than the owner write
/// on their fast paths, on cache lines of their own.
#[repr(C, align(64))]
struct OtherThreads {
    /// Bytes and count of owner blocks freed by other threads.
    freed_bytes: AtomicUsize,
    freed_count: AtomicUsize,
    /// Stack of FULL spans that received remote frees (page indices).
    pending: AtomicU32,
    refused: AtomicU64,
    /// Bytes charged to this heap from outside it (the C ABI charges other
    /// threads' system allocations here): counted against the limit.
    external: AtomicUsize,
}

// SAFETY: the fields behind Cells obey the discipline documented on
// `PageMeta` and `ClassState`: `local` is touched only by the owner thread,
// `shared` only under `shared_lock`, `spans` and `tables_open` only under
// `span_lock`; all cross-thread communication goes through atomics.
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
            tables_open: Cell::new(0),
            limit: config.max,
            owner: AtomicUsize::new(thread_token()),
            local: ClassState::new(OWNER_LOCAL),
            shared_lock: RawLock::new(),
            shared: ClassState::new(OWNER_SHARED),
            span_lock: RawLock::new(),
            spans: UnsafeCell::new(Spans::new()),
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
            let _g = core.span_lock.lock();
            // SAFETY: we hold the span lock.
            unsafe { core.open_tables(pages)? };
            // SAFETY: we hold the span lock; the pages are committed and free.
            unsafe { core.span_insert(0, pages, false) };
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
    fn meta(&self, idx: usize) -> &PageMeta {
        debug_assert!(
            idx < self.region.reserved() >> PAGE_SHIFT,
            "page {idx} outside the heap"
        );
        // SAFETY: idx is inside the page table, which lives as long as self.
        unsafe { &*self.metas.add(idx) }
    }

    #[inline]
    fn idx_of(&self, m: &PageMeta) -> usize {
        (m as *const PageMeta as usize - self.metas as usize) / core::mem::size_of::<PageMeta>()
    }

    #[inline]
    fn page_addr(&self, idx: usize) -> usize {
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
    fn alloc_shared(&self, c: usize) -> *mut u8 {
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
    fn alloc_c_large<const ZERO: bool>(&self, size: usize) -> *mut u8 {
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
    fn alloc_small<const LOCAL: bool>(&self, c: usize) -> *mut u8 {
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
    fn alloc_small_slow(&self, st: &ClassState, c: usize) -> *mut u8 {
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

    /// Links the next batch of never-used blocks into the free list.
    fn extend_free(&self, m: &PageMeta, idx: usize) {
        let size = m.block_size.get() as usize;
        let first = m.extend.get();
        let n = (m.capacity.get() - first).min(EXTEND_BATCH);
        let start = self.page_addr(idx) + first as usize * size;
        let mut next = m.free.get();
        // Link backwards so the list hands out ascending addresses.
        for i in (0..n as usize).rev() {
            let b = (start + i * size) as *mut Block;
            // SAFETY: b is a never-used block inside this committed span.
            unsafe { (*b).next = next };
            next = b;
        }
        m.free.set(next);
        m.extend.set(first + n);
    }

    /// The remote-free bitmap word `w` (counted from the region's start).
    #[inline]
    fn remote_word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(
            w < (self.region.reserved() >> PAGE_SHIFT) * REMOTE_WORDS,
            "bitmap word {w} outside the heap"
        );
        // SAFETY: w is inside the bitmap, which lives as long as self.
        unsafe { &*self.remote_bits.add(w) }
    }

    /// Whether any page of the small span headed by `m` (page `idx`) has
    /// remote frees not yet collected.
    fn has_remote(&self, idx: usize, m: &PageMeta) -> bool {
        (idx..idx + m.span_pages.get() as usize)
            .any(|page| self.meta(page).remote.load(Ordering::SeqCst) != 0)
    }

    /// Moves the remote frees of the small span headed by `m` (page `idx`)
    /// onto its free list; returns how many. `account`: the span is not its
    /// queue's current one, so its `used` count is kept and drops by that
    /// many.
    ///
    /// Each page's summary is taken first, then the words it names: a freer
    /// that sets a bit in a word the owner has already taken finds the word
    /// zero and sets the summary bit again, so no bit is left unannounced.
    fn collect_remote(&self, m: &PageMeta, idx: usize, account: bool) -> u32 {
        let mut n = 0;
        let mut list = m.free.get();
        // Pages, words and bits from the top down, each pushed on the
        // front: the list hands out ascending addresses.
        for page in (idx..idx + m.span_pages.get() as usize).rev() {
            let mut summary = self.meta(page).remote.swap(0, Ordering::Acquire);
            while summary != 0 {
                let w = 63 - summary.leading_zeros() as usize;
                summary &= !(1 << w);
                let word = page * REMOTE_WORDS + w;
                let mut bits = self.remote_word(word).swap(0, Ordering::Acquire);
                n += bits.count_ones();
                while bits != 0 {
                    let g = 63 - bits.leading_zeros() as usize;
                    bits &= !(1 << g);
                    let b = (self.base + ((word << 6 | g) << GRANULE_SHIFT)) as *mut Block;
                    // SAFETY: the bit was set by a thread that gave up the
                    // live block starting there (the Acquire swap orders its
                    // use of the block before this write); the block is ours
                    // again and on no list.
                    unsafe { (*b).next = list };
                    list = b;
                }
            }
        }
        m.free.set(list);
        if account {
            debug_assert!(
                m.used.get() >= n,
                "collected more remote frees than blocks in use"
            );
            m.used.set(m.used.get() - n);
        }
        n
    }

    /// Brings back spans that received remote frees while FULL.
    fn collect_pending(&self) -> bool {
        let mut idx = self.others.pending.swap(NONE, Ordering::Acquire);
        let mut any = false;
        while idx != NONE {
            let m = self.meta(idx as usize);
            let next = m.pending_next.load(Ordering::Relaxed);
            // PENDING: no freer writes the state until this store.
            let generation = m.state.load(Ordering::Relaxed) & GENERATION;
            m.state.store(generation, Ordering::SeqCst);
            self.collect_remote(m, idx as usize, true);
            let c = m.class.get() as usize;
            if m.used.get() == 0 {
                self.retire_span(idx as usize);
            } else {
                self.queue_push_back(&self.local, c, idx as usize);
                any = true;
            }
            idx = next;
        }
        any
    }

    fn new_small_span(&self, st: &ClassState, c: usize) -> Option<usize> {
        let pages = span_pages(c);
        let _g = self.span_lock.lock();
        // SAFETY: we hold the span lock.
        let (idx, _) = match unsafe { self.span_alloc(pages) } {
            Some(s) => s,
            None => {
                self.others.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let m = self.meta(idx);
        let size = CLASS_SIZE[c];
        m.set_kind(Kind::Small);
        m.class.set(c as u8);
        m.owner.set(st.kind);
        m.block_size.set(size);
        m.capacity.set(((pages * PAGE_SIZE) / size as usize) as u32);
        m.extend.set(0);
        m.used.set(0);
        m.free.set(ptr::null_mut());
        m.span_pages.set(pages as u32);
        m.flags.set(0);
        // Every bit of a span's pages is collected before the span can be
        // retired (`used` counts uncollected remote frees), so a new span
        // starts with none.
        debug_assert!(!self.has_remote(idx, m), "new span with remote frees");
        // A new incarnation: a delayed freer of the span's previous one
        // (see free_remote) finds another generation and leaves it alone.
        let generation = m.state.load(Ordering::Relaxed) & GENERATION;
        m.state
            .store(generation.wrapping_add(GENERATION_STEP), Ordering::Relaxed);
        self.mark_cont(idx, pages);
        Some(idx)
    }

    fn mark_cont(&self, idx: usize, pages: usize) {
        for i in idx + 1..idx + pages {
            let m = self.meta(i);
            m.set_kind(Kind::Cont);
            m.head.set(idx as u32);
        }
    }

    /// Allocates a large block; returns it and whether it is known zeroed.
    fn alloc_large(&self, layout: Layout) -> (*mut u8, bool) {
        if self.is_sealed() {
            return (ptr::null_mut(), false);
        }
        let align = layout.align();
        let extra = align.saturating_sub(PAGE_SIZE);
        let bytes = match layout.size().max(1).checked_add(extra) {
            Some(b) if b <= self.region.reserved() => b,
            _ => {
                self.others.refused.fetch_add(1, Ordering::Relaxed);
                return (ptr::null_mut(), false);
            }
        };
        let pages = bytes.div_ceil(PAGE_SIZE);
        let owner = self.is_owner();
        let (idx, zeroed) = {
            let _g = self.span_lock.lock();
            // SAFETY: we hold the span lock.
            match unsafe { self.span_alloc(pages) } {
                Some(s) => s,
                None => {
                    self.others.refused.fetch_add(1, Ordering::Relaxed);
                    return (ptr::null_mut(), false);
                }
            }
        };
        let start = self.page_addr(idx);
        let aligned = round_up(start, align.max(PAGE_SIZE));
        let offset = aligned - start;
        let m = self.meta(idx);
        m.set_kind(Kind::Large);
        m.span_pages.set(pages as u32);
        m.offset.set(offset as u32);
        m.owner.set(if owner { OWNER_LOCAL } else { OWNER_SHARED });
        m.block_size.set(0);
        self.mark_cont(idx, pages);
        let usable = pages * PAGE_SIZE - offset;
        if owner {
            self.local.on_alloc(usable);
        } else {
            self.shared.on_alloc(usable);
        }
        (aligned as *mut u8, zeroed)
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
    unsafe fn free_slow(&self, idx: usize, p: *mut u8) {
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
    unsafe fn push_free<const LOCAL: bool>(
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
        // "current or not" (a program freeing blocks of many spans at
        // random would mispredict it half the time: it doubled the cost of
        // a free in the 1600-block churn benchmark) and no test of a flag.
        let used = m.used.get().wrapping_sub(1);
        m.used.set(used);
        // Only the owner of `st` moves `state` away from 0, so a relaxed 0
        // read here is exact.
        if (used == 0) | (m.state.load(Ordering::Relaxed) & !GENERATION != 0) {
            self.after_local_free(st, m, idx);
        }
    }

    /// After an owner free that emptied the span or hit a FULL span.
    fn after_local_free(&self, st: &ClassState, m: &PageMeta, idx: usize) {
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

    /// A free by a thread other than the owner of a block of the owner's
    /// small span headed by `m` (page `idx`): sets the block's bit in the
    /// remote-free bitmap, announces the word in its page's summary if the
    /// word was empty, and brings the span back to the owner if it is FULL.
    fn free_remote(&self, m: &PageMeta, idx: usize, p: *mut u8) {
        // A runtime worker inside a phase must not write a guarded heap:
        // its frees are queued and applied at the thaw.
        if crate::trap::defer_free(p) {
            return;
        }
        if let Some(generation) = self.publish_remote_free(m, p) {
            self.bring_back_if_full(m, idx, generation);
        }
    }

    /// The first half of [`HeapCore::free_remote`]: counts the free, sets
    /// the block's bit and, if that made the word non-zero, the word's
    /// summary bit. Returns the span's generation in that case: this freer
    /// must then look for FULL ([`HeapCore::bring_back_if_full`]). A freer
    /// that found the word non-zero needs not: the one that made it so
    /// looks after setting the summary, and the owner takes both bits with
    /// the word.
    fn publish_remote_free(&self, m: &PageMeta, p: *mut u8) -> Option<u32> {
        if p as usize & ((1 << GRANULE_SHIFT) - 1) != 0 {
            invalid_free(p);
        }
        // Everything read from the span's meta is read now, while the block
        // is live: once the summary bit is visible the owner may collect
        // the free, retire the span and hand its pages out again.
        let size = m.block_size.get() as usize;
        let generation = m.state.load(Ordering::Relaxed) & GENERATION;
        self.others.freed_bytes.fetch_add(size, Ordering::Relaxed);
        self.others.freed_count.fetch_add(1, Ordering::Relaxed);
        let granule = (p as usize - self.base) >> GRANULE_SHIFT;
        let (word, bit) = (granule >> 6, 1u64 << (granule & 63));
        // Release: the owner's Acquire swap of the word orders our last use
        // of the block before its reuse.
        let old = self.remote_word(word).fetch_or(bit, Ordering::Release);
        if old & bit != 0 {
            invalid_free(p); // freed twice without being collected
        }
        if old != 0 {
            return None;
        }
        // SeqCst, with the `state` load in bring_back_if_full and the
        // owner's store of FULL and look at the summaries
        // (alloc_small_slow): the owner stores FULL and then looks for
        // remote frees, the freer announces its free and then looks for
        // FULL, and one of them sees the other.
        self.meta(word / REMOTE_WORDS)
            .remote
            .fetch_or(1 << (word % REMOTE_WORDS), Ordering::SeqCst);
        Some(generation)
    }

    /// The second half of [`HeapCore::free_remote`], by a freer that
    /// announced a word of the span headed by `m` (page `idx`) while the
    /// span was of generation `generation`: if the span is FULL, puts it on
    /// the pending stack for the owner.
    fn bring_back_if_full(&self, m: &PageMeta, idx: usize, generation: u32) {
        // The span may be another incarnation by now: act only on FULL of
        // the generation the block belonged to. A span that is PENDING is
        // retired only after collect_pending takes it off the stack, so
        // the meta stays ours until the push below is done.
        if m.state.load(Ordering::SeqCst) == generation | FULL
            && m.state
                .compare_exchange(
                    generation | FULL,
                    generation | FULL | PENDING,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let mut top = self.others.pending.load(Ordering::Relaxed);
            loop {
                m.pending_next.store(top, Ordering::Relaxed);
                match self.others.pending.compare_exchange_weak(
                    top,
                    idx as u32,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(t) => top = t,
                }
            }
        }
    }

    fn free_large(&self, m: &PageMeta, idx: usize) {
        if !self.is_owner()
            && crate::trap::defer_free((self.page_addr(idx) + m.offset.get() as usize) as *mut u8)
        {
            return;
        }
        let pages = m.span_pages.get() as usize;
        let usable = pages * PAGE_SIZE - m.offset.get() as usize;
        self.account_large_free(m, usable);
        let _g = self.span_lock.lock();
        // SAFETY: we hold the span lock and the span is no longer in use.
        unsafe { self.span_free(idx, pages) };
    }

    fn account_large_free(&self, m: &PageMeta, usable: usize) {
        if m.owner.get() == OWNER_SHARED {
            self.shared.on_free(usable);
        } else if self.is_owner() {
            self.local.on_free(usable);
        } else {
            self.others.freed_bytes.fetch_add(usable, Ordering::Relaxed);
            self.others.freed_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns an empty small span to the span allocator.
    fn retire_span(&self, idx: usize) {
        let m = self.meta(idx);
        debug_assert!(m.used.get() == 0, "retiring a span with live blocks");
        let pages = m.span_pages.get() as usize;
        let _g = self.span_lock.lock();
        // SAFETY: we hold the span lock; the span has no live block.
        unsafe { self.span_free(idx, pages) };
    }

    // -----------------------------------------------------------------
    // Reallocation.

    /// Resizes a block, in place when it can.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap allocated with `old`'s alignment
    ///    and a size of at least `old.size()`.
    pub(crate) unsafe fn realloc(&self, p: *mut u8, old: Layout, new_size: usize) -> *mut u8 {
        if self.is_sealed() {
            return ptr::null_mut();
        }
        let align = old.align();
        let idx = (p as usize - self.base) >> PAGE_SHIFT;
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        match (m.kind(), class_for(new_size, align)) {
            (Kind::Small, Some(_)) => {
                let cur = m.block_size.get() as usize;
                if new_size <= cur && (new_size >= cur / 2 || cur <= 64) {
                    return p;
                }
            }
            (Kind::Large, None)
                if align <= PAGE_SIZE && self.resize_large_in_place(m, head, new_size) =>
            {
                return p;
            }
            _ => {}
        }
        // SAFETY: new_size is non-zero or a valid zero-size layout; align is
        // a power of two taken from a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let q = self.alloc(new_layout);
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.size().min(new_size));
                self.free(p);
            }
        }
        q
    }

    /// C `realloc` of a live block by the owner, to `new_size > 0` bytes
    /// aligned to 16: in place when the block still fits (or, for a large
    /// one, can grow or shrink where it is), otherwise moved, copying the
    /// old usable size (C does not tell the old request). One page-table
    /// lookup, where `usable_size` followed by [`HeapCore::realloc`] made
    /// two; null (and `p` untouched) past the limit.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap, and the calling thread is the
    ///    owner.
    pub(crate) unsafe fn realloc_c_as_owner(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        let idx = (p as usize - self.base) >> PAGE_SHIFT;
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        let old_size = match m.kind() {
            Kind::Small => {
                let cur = m.block_size.get() as usize;
                if new_size <= cur && (new_size >= cur / 2 || cur <= 64) {
                    return p;
                }
                cur
            }
            Kind::Large => {
                if class_of(new_size).is_none() && self.resize_large_in_place(m, head, new_size) {
                    return p;
                }
                m.span_pages.get() as usize * PAGE_SIZE - m.offset.get() as usize
            }
            _ => invalid_free(p),
        };
        // SAFETY: (1): we are the owner.
        let q = unsafe { self.alloc_c_as_owner::<false>(new_size) };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; p has old_size
            // usable bytes and q at least new_size; then p is freed once.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
                self.free(p);
            }
        }
        q
    }

    fn resize_large_in_place(&self, m: &PageMeta, idx: usize, new_size: usize) -> bool {
        let pages = m.span_pages.get() as usize;
        // The block starts `offset` bytes into its span (non-zero only for
        // alignments above a page, which C `realloc` does not know about).
        let new_pages = (m.offset.get() as usize + new_size.max(1)).div_ceil(PAGE_SIZE);
        if new_pages == pages {
            return true;
        }
        let _g = self.span_lock.lock();
        if new_pages < pages {
            m.span_pages.set(new_pages as u32);
            // SAFETY: we hold the span lock; the tail pages are past the
            // shrunk block and hold nothing live.
            unsafe { self.span_free(idx + new_pages, pages - new_pages) };
        } else {
            let need = new_pages - pages;
            // SAFETY: we hold the span lock.
            if !unsafe { self.take_following(idx + pages, need) } {
                return false;
            }
            m.span_pages.set(new_pages as u32);
            for i in idx + pages..idx + new_pages {
                let c = self.meta(i);
                c.set_kind(Kind::Cont);
                c.head.set(idx as u32);
            }
        }
        let (old_usable, new_usable) = (pages * PAGE_SIZE, new_pages * PAGE_SIZE);
        if m.owner.get() == OWNER_SHARED {
            self.shared.on_resize(old_usable, new_usable);
        } else if self.is_owner() {
            self.local.on_resize(old_usable, new_usable);
        } else if new_usable < old_usable {
            self.others
                .freed_bytes
                .fetch_add(old_usable - new_usable, Ordering::Relaxed);
        } else {
            // A growth by a foreign thread of an owner block: count it as
            // shared so the owner's plain counters stay untouched.
            self.shared.on_resize(0, new_usable - old_usable);
        }
        true
    }

    // -----------------------------------------------------------------
    // The span allocator. Every function below requires the span lock.

    #[allow(clippy::mut_from_ref)]
    unsafe fn spans(&self) -> &mut Spans {
        // SAFETY: callers hold the span lock, which owns `spans`.
        unsafe { &mut *self.spans.get() }
    }

    /// Takes a run of `pages` free pages, committing more if needed.
    /// Returns the first page and whether its contents are known zero.
    unsafe fn span_alloc(&self, pages: usize) -> Option<(usize, bool)> {
        // SAFETY: the caller holds the span lock.
        if let Some(found) = unsafe { self.span_find(pages) } {
            return Some(found);
        }
        // SAFETY: as above.
        unsafe {
            if !self.grow(pages) {
                return None;
            }
            self.span_find(pages)
        }
    }

    unsafe fn span_find(&self, pages: usize) -> Option<(usize, bool)> {
        // SAFETY: the caller holds the span lock.
        let spans = unsafe { self.spans() };
        let b = bin_of(pages);
        let mut mask = spans.nonempty & !((1u64 << b) - 1);
        while mask != 0 {
            let bin = mask.trailing_zeros() as usize;
            let mut idx = spans.bins[bin];
            while idx != NONE {
                let m = self.meta(idx as usize);
                let n = m.span_pages.get() as usize;
                if n >= pages {
                    let dirty = m.flags.get() & DIRTY != 0;
                    // SAFETY: we hold the span lock; idx heads a free span.
                    unsafe {
                        self.span_remove(idx as usize);
                        if n > pages {
                            self.span_insert(idx as usize + pages, n - pages, dirty);
                        }
                    }
                    return Some((idx as usize, !dirty));
                }
                idx = m.next.get();
            }
            mask &= mask - 1;
        }
        None
    }

    /// Commits enough to hold a span of `pages` at the top of the region.
    unsafe fn grow(&self, pages: usize) -> bool {
        let committed = self.region.committed();
        let top = committed >> PAGE_SHIFT;
        // A free span touching the top counts towards the request.
        let mut top_free = 0;
        if top > 0 {
            let last = self.meta(top - 1);
            top_free = match last.kind() {
                Kind::FreeTail => self.meta(last.head.get() as usize).span_pages.get() as usize,
                Kind::FreeSpan => last.span_pages.get() as usize,
                _ => 0,
            };
        }
        let cap = self.limit.min(self.region.reserved()) & !(PAGE_SIZE - 1);
        let want = committed + (pages - top_free.min(pages)) * PAGE_SIZE;
        if want.saturating_add(self.others.external.load(Ordering::Relaxed)) > cap {
            return false;
        }
        let chunk = if self.region.huge_pages() {
            crate::os::HUGE_PAGE_SIZE
        } else {
            1 << 20
        };
        let chunk = chunk.max(round_up(committed / 8, chunk));
        let target = round_up(want, chunk).min(cap);
        // SAFETY: the caller holds the span lock.
        if unsafe { self.open_tables(target >> PAGE_SHIFT) }.is_err()
            || self.region.grow_to(target).is_err()
        {
            return false;
        }
        // SAFETY: the new pages are committed, free and ours.
        unsafe { self.span_free_clean(top, (target - committed) >> PAGE_SHIFT) };
        true
    }

    /// Makes the page-table entries and bitmap words of pages `0..pages`
    /// writable (they only ever open: a shrunk region keeps them).
    ///
    /// # Safety
    /// 1. The caller holds the span lock.
    unsafe fn open_tables(&self, pages: usize) -> Result<(), OsError> {
        let open = self.tables_open.get();
        if pages <= open {
            return Ok(());
        }
        let ps = os::page_size();
        let table = self.metas.cast::<u8>().wrapping_sub(META_SKEW);
        let meta = core::mem::size_of::<PageMeta>();
        for (first, each) in [(META_SKEW, meta), (self.bits_offset, REMOTE_WORDS * 8)] {
            let start = (first + open * each) & !(ps - 1);
            let end = round_up(first + pages * each, ps).min(self.table_bytes);
            if end > start {
                // SAFETY: [start, end) is page-aligned, non-empty and inside
                // the side-table mapping; opening takes no access away.
                unsafe {
                    os::protect(
                        table.wrapping_add(start),
                        end - start,
                        os::Access::ReadWrite,
                    )?
                };
            }
        }
        self.tables_open.set(pages);
        Ok(())
    }

    /// Adds a free run `[idx, idx + pages)` to its bin (no coalescing).
    unsafe fn span_insert(&self, idx: usize, pages: usize, dirty: bool) {
        // SAFETY: the caller holds the span lock.
        let spans = unsafe { self.spans() };
        let m = self.meta(idx);
        m.set_kind(Kind::FreeSpan);
        m.span_pages.set(pages as u32);
        m.flags.set(if dirty { DIRTY } else { 0 });
        if pages > 1 {
            let t = self.meta(idx + pages - 1);
            t.set_kind(Kind::FreeTail);
            t.head.set(idx as u32);
        }
        let b = bin_of(pages);
        let first = spans.bins[b];
        m.prev.set(NONE);
        m.next.set(first);
        if first != NONE {
            self.meta(first as usize).prev.set(idx as u32);
        }
        spans.bins[b] = idx as u32;
        spans.nonempty |= 1 << b;
        spans.free_pages += pages;
        if dirty {
            spans.dirty_pages += pages;
        }
    }

    /// Removes the free span headed at `idx` from its bin.
    unsafe fn span_remove(&self, idx: usize) {
        // SAFETY: the caller holds the span lock.
        let spans = unsafe { self.spans() };
        let m = self.meta(idx);
        let pages = m.span_pages.get() as usize;
        let b = bin_of(pages);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            spans.bins[b] = next;
            if next == NONE {
                spans.nonempty &= !(1 << b);
            }
        } else {
            self.meta(prev as usize).next.set(next);
        }
        if next != NONE {
            self.meta(next as usize).prev.set(prev);
        }
        spans.free_pages -= pages;
        if m.flags.get() & DIRTY != 0 {
            spans.dirty_pages -= pages;
        }
        m.set_kind(Kind::Unused);
    }

    /// Frees a span that held data, then gives memory back if due.
    unsafe fn span_free(&self, idx: usize, pages: usize) {
        // SAFETY: forwarded.
        unsafe { self.span_free_with(idx, pages, true, true) }
    }

    /// Adds freshly committed pages: never gives anything back (that would
    /// undo the growth that is about to be used).
    unsafe fn span_free_clean(&self, idx: usize, pages: usize) {
        // SAFETY: forwarded.
        unsafe { self.span_free_with(idx, pages, false, false) }
    }

    /// Frees `[idx, idx + pages)`, coalescing with free neighbours, then
    /// gives memory back to the OS if the hysteresis thresholds are passed.
    unsafe fn span_free_with(&self, idx: usize, pages: usize, dirty: bool, give_back: bool) {
        let mut start = idx;
        let mut n = pages;
        let mut dirty = dirty;
        if start > 0 {
            let left = self.meta(start - 1);
            let head = match left.kind() {
                Kind::FreeTail => Some(left.head.get() as usize),
                Kind::FreeSpan => Some(start - 1),
                _ => None,
            };
            if let Some(h) = head {
                let hm = self.meta(h);
                dirty |= hm.flags.get() & DIRTY != 0;
                n += hm.span_pages.get() as usize;
                // SAFETY: the caller holds the span lock.
                unsafe { self.span_remove(h) };
                start = h;
            }
        }
        let top = self.region.committed() >> PAGE_SHIFT;
        let right = idx + pages;
        if right < top && self.meta(right).kind() == Kind::FreeSpan {
            let rm = self.meta(right);
            dirty |= rm.flags.get() & DIRTY != 0;
            n += rm.span_pages.get() as usize;
            // SAFETY: as above.
            unsafe { self.span_remove(right) };
        }
        // Give the top back to the OS when enough of it is free.
        // "Live" here is everything committed below the free top that is not
        // itself a free span.
        // SAFETY: the caller holds the span lock.
        let free_below = unsafe { self.spans() }.free_pages;
        let live_pages = start.saturating_sub(free_below);
        if give_back
            && start + n == top
            && n * PAGE_SIZE >= SHRINK_AT
            && n > 2 * live_pages
            && self.region.committed() > self.region.min_committed()
        {
            let keep = (KEEP_ON_TOP >> PAGE_SHIFT).max(live_pages / 2);
            let keep_end = (start + keep).max(self.region.min_committed() >> PAGE_SHIFT);
            if keep_end < top {
                // SAFETY: the caller holds the span lock; [keep_end, top) is
                // part of a free span, so nothing live is there.
                if unsafe { self.region.shrink_to(keep_end << PAGE_SHIFT) }.is_ok() {
                    n = keep_end.saturating_sub(start);
                }
            }
        }
        if n > 0 {
            // SAFETY: as above.
            unsafe { self.span_insert(start, n, dirty) };
        }
        if give_back {
            // SAFETY: as above.
            unsafe { self.maybe_purge() };
        }
    }

    /// Purges free spans (largest first) once too much free memory is
    /// resident, down to half the threshold.
    unsafe fn maybe_purge(&self) {
        // SAFETY: the caller holds the span lock.
        let spans = unsafe { self.spans() };
        let committed_pages = self.region.committed() >> PAGE_SHIFT;
        let live = committed_pages.saturating_sub(spans.free_pages) * PAGE_SIZE;
        let retain = PURGE_RETAIN.max(2 * live);
        if spans.dirty_pages * PAGE_SIZE <= retain {
            return;
        }
        let target = retain / 2;
        for bin in (0..spans.bins.len()).rev() {
            let mut idx = spans.bins[bin];
            while idx != NONE {
                let m = self.meta(idx as usize);
                let n = m.span_pages.get() as usize;
                if m.flags.get() & DIRTY != 0 {
                    // SAFETY: the span is free and committed.
                    if unsafe { os::purge(self.page_addr(idx as usize) as *mut u8, n * PAGE_SIZE) }
                        .is_ok()
                    {
                        m.flags.set(m.flags.get() & !DIRTY);
                        spans.dirty_pages -= n;
                        if spans.dirty_pages * PAGE_SIZE <= target {
                            return;
                        }
                    }
                }
                idx = m.next.get();
            }
        }
    }

    /// Takes `need` pages starting at `idx` if they are free (or can be
    /// committed at the top).
    unsafe fn take_following(&self, idx: usize, need: usize) -> bool {
        let top = self.region.committed() >> PAGE_SHIFT;
        if idx == top {
            // SAFETY: the caller holds the span lock.
            if !unsafe { self.grow(need) } {
                return false;
            }
        }
        if idx >= self.region.committed() >> PAGE_SHIFT {
            return false;
        }
        let m = self.meta(idx);
        if m.kind() != Kind::FreeSpan {
            return false;
        }
        let n = m.span_pages.get() as usize;
        if n < need {
            // The free span may end at the top: grow and retry once.
            if idx + n == self.region.committed() >> PAGE_SHIFT {
                // SAFETY: as above.
                if unsafe { self.grow(need) } {
                    let m = self.meta(idx);
                    if m.kind() == Kind::FreeSpan && m.span_pages.get() as usize >= need {
                        // SAFETY: as above.
                        return unsafe { self.take_following(idx, need) };
                    }
                }
            }
            return false;
        }
        let dirty = m.flags.get() & DIRTY != 0;
        // SAFETY: as above.
        unsafe {
            self.span_remove(idx);
            if n > need {
                self.span_insert(idx + need, n - need, dirty);
            }
        }
        true
    }

    // -----------------------------------------------------------------
    // Class queues (doubly linked through page indices).

    fn queue_push_back(&self, st: &ClassState, c: usize, idx: usize) {
        let m = self.meta(idx);
        if m.flags.get() & IN_QUEUE != 0 {
            return;
        }
        m.flags.set(m.flags.get() | IN_QUEUE);
        let tail = st.tail[c].get();
        m.prev.set(tail);
        m.next.set(NONE);
        if tail == NONE {
            st.head[c].set(idx as u32);
            Self::set_current(st, c, m);
        } else {
            self.meta(tail as usize).next.set(idx as u32);
        }
        st.tail[c].set(idx as u32);
    }

    /// Makes `new` class `c`'s current span in `st`, its `used` count
    /// [`CURRENT_USED`] (the empty meta is never written). The span it
    /// replaces is dry, its count already exact, or the heap is being
    /// sealed.
    fn set_current(st: &ClassState, c: usize, new: *const PageMeta) {
        if !ptr::eq(new, &EMPTY.0) {
            // SAFETY: a non-empty current is a live meta of this heap.
            unsafe { &*new }.used.set(CURRENT_USED);
        }
        st.current[c].set(new);
    }

    fn queue_unlink(&self, st: &ClassState, c: usize, idx: usize) {
        let m = self.meta(idx);
        // The current span leaves only when dry, its `used` count then set
        // exact by the caller (PageMeta::used).
        debug_assert!(
            !ptr::eq(st.current[c].get(), m)
                || (m.free.get().is_null()
                    && m.extend.get() == m.capacity.get()
                    && m.used.get() == m.capacity.get()),
            "current span unlinked before it ran dry"
        );
        if m.flags.get() & IN_QUEUE == 0 {
            return;
        }
        m.flags.set(m.flags.get() & !IN_QUEUE);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            st.head[c].set(next);
            let cur: *const PageMeta = if next == NONE {
                &EMPTY.0
            } else {
                self.meta(next as usize)
            };
            Self::set_current(st, c, cur);
        } else {
            self.meta(prev as usize).next.set(next);
        }
        if next == NONE {
            st.tail[c].set(prev);
        } else {
            self.meta(next as usize).prev.set(prev);
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

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> Stats {
        let l = &self.local.counters;
        let s = &self.shared.counters;
        let foreign = self.others.freed_bytes.load(Ordering::Relaxed);
        // Freed sides first (Acquire), so each allocated side read after
        // them covers at least what they count as freed.
        let s_freed = s.freed_bytes.load(Ordering::Acquire);
        let (l_frees, s_frees) = (
            l.freed_count.load(Ordering::Acquire),
            s.freed_count.load(Ordering::Acquire),
        );
        let (l_peak, slack, seen) = l.owner_snapshot();
        // Signed and wide: the owner's live bytes (peak - slack) less the
        // foreign frees it has not taken into account yet, plus the shared
        // state's net, which may be negative (another thread grew an
        // owner block in place, counted as shared, and the owner freed it).
        let live = (l_peak as i128 - slack as i128) - (foreign as i128 - seen as i128)
            + (s.alloc_bytes.load(Ordering::Relaxed) as i128 - s_freed as i128);
        let in_use = live.clamp(0, usize::MAX as i128) as usize;
        let net_count = l.total.load(Ordering::Relaxed).saturating_sub(l_frees)
            + s.total.load(Ordering::Relaxed).saturating_sub(s_frees);
        let allocations =
            (net_count as usize).saturating_sub(self.others.freed_count.load(Ordering::Relaxed));
        let peak = l_peak.max(s.peak.load(Ordering::Relaxed)).max(in_use);
        Stats {
            reserved: self.region.reserved(),
            committed: self.region.committed(),
            in_use,
            peak,
            limit: self.limit,
            allocations,
            total_allocations: l.total.load(Ordering::Relaxed) + s.total.load(Ordering::Relaxed),
            refused: self.others.refused.load(Ordering::Relaxed),
            external: self.others.external.load(Ordering::Relaxed),
        }
    }

    /// Charges `bytes` of memory held outside the heap against its limit;
    /// false (and nothing charged) if committed + external would pass it.
    pub(crate) fn charge_external(&self, bytes: usize) -> bool {
        let cap = self.limit;
        let mut cur = self.others.external.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(bytes) {
                Some(n) if n.saturating_add(self.region.committed()) <= cap => n,
                _ => {
                    self.others.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            match self.others.external.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Releases bytes charged with [`HeapCore::charge_external`].
    pub(crate) fn release_external(&self, bytes: usize) {
        let prev = self.others.external.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(prev >= bytes, "released more external bytes than charged");
    }

    /// Bytes of free spans (committed, not in use by any block's span).
    pub(crate) fn free_span_bytes(&self) -> usize {
        let _g = self.span_lock.lock();
        // SAFETY: we hold the span lock.
        unsafe { self.spans() }.free_pages * PAGE_SIZE
    }

    /// Runs `f(committed)` under the span lock (the committed length
    /// cannot change meanwhile).
    pub(crate) fn commit_lock_and<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _g = self.span_lock.lock();
        f(self.region.committed())
    }

    /// Freeze, step 1 (writes this core): mark the region frozen so pages
    /// committed from now on are committed read-only.
    pub(crate) fn freeze_mark(&self) {
        let _g = self.span_lock.lock();
        self.region.mark_frozen(true);
    }

    /// Freeze step 2 / thaw step 1: `mprotect` the committed prefix. Writes
    /// nothing in this core, so it works even when the core itself lives in
    /// a heap that is frozen. Returns the length protected.
    pub(crate) fn protect_committed(&self, frozen: bool) -> Result<usize, OsError> {
        self.region.protect_prefix(frozen)
    }

    /// Thaw, step 2 (writes this core, so after every heap is writable):
    /// clear the mark, and open pages committed since step 1 (`thawed`).
    pub(crate) fn thaw_unmark(&self, thawed: usize) -> Result<(), OsError> {
        let _g = self.span_lock.lock();
        self.region.mark_frozen(false);
        self.region
            .protect_range(thawed, self.region.committed(), false)
    }

    /// Freezes (mprotect read-only) or thaws the committed prefix; returns
    /// the length protected.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<usize, OsError> {
        let _g = self.span_lock.lock();
        self.region.set_frozen(frozen)
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
        let _g = self.span_lock.lock();
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

    /// The committed pages as spans, in address order: `(head page, its
    /// meta, pages)` for small, large and free spans; pages in no span one
    /// at a time. Allocates nothing (the fork repair uses it). The caller
    /// keeps the spans still (the span lock, or the only thread).
    fn spans_in_order(&self) -> impl Iterator<Item = (usize, &PageMeta, usize)> + '_ {
        let top = self.region.committed() >> PAGE_SHIFT;
        let mut idx = 0;
        core::iter::from_fn(move || {
            (idx < top).then(|| {
                let m = self.meta(idx);
                let pages = match m.kind() {
                    Kind::Small | Kind::Large | Kind::FreeSpan => m.span_pages.get() as usize,
                    _ => 1,
                };
                let head = idx;
                idx += pages;
                (head, m, pages)
            })
        })
    }

    /// In a `fork` child, before anything else uses the heap: completes the
    /// remote frees that `fork` cut in half. A parent thread that had set a
    /// block's bit but not yet its word's summary bit, or not yet looked
    /// for FULL, does not exist in the child; without this, that word's
    /// blocks (and every later remote free into it, which finds the word
    /// non-zero) would never be collected, and a FULL span would never come
    /// back. Reads the page table and the bitmap of the small spans once.
    ///
    /// # Safety
    /// 1. The calling thread is the only thread of the process (a `fork`
    ///    child), and no remote free is in progress on it.
    pub(crate) unsafe fn repair_remote_frees_after_fork(&self) {
        self.local.counters.after_fork();
        if self.others.freed_count.load(Ordering::Relaxed) == 0 {
            return; // no remote free ever began (single-threaded programs)
        }
        // Whether span `idx` is on the pending stack (it allocates nothing:
        // this runs inside `fork`).
        let on_stack = |idx: u32| {
            let mut at = self.others.pending.load(Ordering::Relaxed);
            while at != NONE && at != idx {
                at = self.meta(at as usize).pending_next.load(Ordering::Relaxed);
            }
            at == idx
        };
        for (idx, m, pages) in self.spans_in_order() {
            if m.kind() == Kind::Small && m.owner.get() == OWNER_LOCAL {
                for page in idx..idx + pages {
                    for w in 0..REMOTE_WORDS {
                        if self
                            .remote_word(page * REMOTE_WORDS + w)
                            .load(Ordering::Relaxed)
                            != 0
                        {
                            self.meta(page).remote.fetch_or(1 << w, Ordering::Relaxed);
                        }
                    }
                }
                let state = m.state.load(Ordering::Relaxed);
                let stranded = match state & !GENERATION {
                    FULL => self.has_remote(idx, m),
                    PENDING_FULL => !on_stack(idx as u32),
                    _ => false,
                };
                if stranded {
                    m.state.store(state | PENDING, Ordering::Relaxed);
                    m.pending_next.store(
                        self.others.pending.load(Ordering::Relaxed),
                        Ordering::Relaxed,
                    );
                    self.others.pending.store(idx as u32, Ordering::Release);
                }
            }
        }
    }

    /// Locks used by the heap, for `fork` handlers (C ABI).
    pub(crate) fn locks(&self) -> [&RawLock; 2] {
        [&self.shared_lock, &self.span_lock]
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
fn invalid_free(p: *mut u8) -> ! {
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
mod tests {
    use super::*;

    /// A heap of `max` bytes, nothing pre-committed, no huge pages.
    fn heap_of(max: usize) -> HeapCore {
        HeapCore::new(CoreConfig {
            min: 0,
            max,
            huge_pages: false,
        })
        .expect("a heap reservation")
    }

    /// The permissions (`rw-p`, `r--p`, ...) of the mapping holding `addr`.
    fn perms_at(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let range = fields.next().expect("range");
            let (lo, hi) = range.split_once('-').expect("lo-hi");
            let lo = usize::from_str_radix(lo, 16).expect("hex");
            let hi = usize::from_str_radix(hi, 16).expect("hex");
            if (lo..hi).contains(&addr) {
                return fields.next().expect("perms").to_string();
            }
        }
        panic!("0x{addr:x} is not mapped");
    }

    /// The current span's count runs down from CURRENT_USED with every
    /// free; if it ever reached zero (2^31 frees into one current span),
    /// the slow path must leave the span in place, not retire it.
    #[test]
    fn a_current_span_counted_down_to_zero_stays_current() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(48, 8).unwrap();
        let p = core.alloc(layout);
        let q = core.alloc(layout);
        let idx = (p as usize - core.base) >> PAGE_SHIFT;
        let m = core.meta(idx);
        let c = m.class.get() as usize;
        assert!(ptr::eq(core.local.current[c].get(), m));
        assert_eq!(m.used.get(), CURRENT_USED);
        // Two frees left before the count wraps to zero.
        m.used.set(2);
        // SAFETY: p and q are live blocks of this heap, freed once each.
        unsafe {
            core.free(p);
            core.free(q);
        }
        assert_eq!(m.used.get(), 0);
        assert!(
            ptr::eq(core.local.current[c].get(), m),
            "span left its queue"
        );
        assert_eq!(m.kind(), Kind::Small, "current span retired");
        assert_eq!(core.stats().in_use, 0);
        // The span goes on serving its blocks (last freed first).
        assert_eq!(core.alloc(layout), q);
        assert_eq!(core.alloc(layout), p);
        assert_eq!(
            m.used.get(),
            0,
            "allocations from the current span do not count"
        );
    }

    /// A remote freer delayed between publishing its free and looking for
    /// FULL must not act on the span's next incarnation. Here: the owner
    /// collects the free, retires the span, another thread's shared state
    /// takes the pages as a new span and fills it (FULL); the delayed freer
    /// then resumes. It must leave the new span alone: pushed on the
    /// owner's pending stack, the shared span would be linked into the
    /// owner's queue and popped without the shared lock.
    #[test]
    fn a_delayed_remote_freer_leaves_the_next_incarnation_alone() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(4096, 8).unwrap(); // 16 a span
        let first = core.alloc(layout);
        let s = (first as usize - core.base) >> PAGE_SHIFT;
        let m = core.meta(s);
        let capacity = m.capacity.get() as usize;
        let mut blocks = vec![first as usize];
        blocks.extend((1..capacity).map(|_| core.alloc(layout) as usize));
        // One more: the span goes dry and is FULL.
        let extra = core.alloc(layout);
        assert_eq!(m.state.load(Ordering::SeqCst) & !GENERATION, FULL);
        let old_generation = m.state.load(Ordering::SeqCst) & GENERATION;
        // Another thread frees one block (pushing the span on the pending
        // stack), and publishes the free of a second, then stalls before it
        // looks for FULL.
        let stalled = std::thread::scope(|sc| {
            sc.spawn(|| {
                // SAFETY: a live block of this heap, freed once.
                unsafe { core.free(blocks[0] as *mut u8) };
                core.publish_remote_free(core.meta(s), blocks[8] as *mut u8)
            })
            .join()
            .unwrap()
        });
        assert_eq!(m.state.load(Ordering::SeqCst) & !GENERATION, FULL | PENDING);
        assert_eq!(
            stalled,
            Some(old_generation),
            "the stalled freer made its word non-zero"
        );
        // The owner frees the rest; its next refill collects the pending
        // span, finds it empty and retires it.
        for &p in blocks.iter().filter(|&&p| p != blocks[0] && p != blocks[8]) {
            // SAFETY: live blocks of this heap, freed once.
            unsafe { core.free(p as *mut u8) };
        }
        let other = core.alloc(Layout::from_size_align(9000, 8).unwrap());
        assert_eq!(m.kind(), Kind::FreeSpan, "the empty span was not retired");
        // Another thread's allocations (the shared state) take the pages
        // for a new span of the same class and fill it.
        let shared: Vec<usize> = std::thread::scope(|sc| {
            sc.spawn(|| {
                (0..=capacity)
                    .map(|_| core.alloc(layout) as usize)
                    .collect()
            })
            .join()
            .unwrap()
        });
        assert_eq!(m.owner.get(), OWNER_SHARED, "the pages were not reused");
        assert_eq!(m.state.load(Ordering::SeqCst) & !GENERATION, FULL);
        // The stalled freer resumes: the span is FULL, but of another
        // generation.
        std::thread::scope(|sc| {
            sc.spawn(|| core.bring_back_if_full(core.meta(s), s, old_generation));
        });
        assert_eq!(
            m.state.load(Ordering::SeqCst) & !GENERATION,
            FULL,
            "the delayed freer acted on the new incarnation"
        );
        assert_eq!(core.others.pending.load(Ordering::SeqCst), NONE);
        assert_ne!(m.state.load(Ordering::SeqCst) & GENERATION, old_generation);
        // The owner's next refill finds nothing to bring back.
        let again = core.alloc(Layout::from_size_align(20_000, 8).unwrap());
        let c = m.class.get() as usize;
        assert!(
            core.local.head[c].get() as usize != s && core.local.tail[c].get() as usize != s,
            "a shared span in the owner's queue"
        );
        // SAFETY: live blocks of this heap, freed once each (the shared
        // blocks by another thread, the state that made them).
        unsafe {
            for p in [extra, other, again] {
                core.free(p);
            }
        }
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for &p in &shared {
                    // SAFETY: as above.
                    unsafe { core.free(p as *mut u8) };
                }
            });
        });
        assert_eq!(core.stats().in_use, 0, "{:?}", core.stats());
    }

    /// Checks every small span of `core` against `live` (the blocks the
    /// test holds): each carved block is exactly one of live, on the free
    /// list, or in the remote-free bitmap; every non-zero bitmap word has
    /// its summary bit; pages outside small spans have no bits; `used` is
    /// exact for spans that are not current. Call when no free is in
    /// flight.
    fn check_blocks(core: &HeapCore, live: &std::collections::HashSet<usize>) {
        let mut seen = std::collections::HashSet::new();
        for (idx, m, pages) in core.spans_in_order() {
            let words = |p: usize| (0..REMOTE_WORDS).map(move |w| (w, p * REMOTE_WORDS + w));
            if m.kind() != Kind::Small {
                for p in idx..idx + pages {
                    assert_eq!(
                        core.meta(p).remote.load(Ordering::SeqCst),
                        0,
                        "summary on page {p}"
                    );
                    for (_, w) in words(p) {
                        assert_eq!(
                            core.remote_word(w).load(Ordering::SeqCst),
                            0,
                            "bits on page {p}"
                        );
                    }
                }
                continue;
            }
            let (size, start) = (m.block_size.get() as usize, core.page_addr(idx));
            let in_span = |a: usize| {
                a >= start && a < start + pages * PAGE_SIZE && (a - start).is_multiple_of(size)
            };
            let mut on_list = 0;
            let mut b = m.free.get();
            while !b.is_null() {
                let a = b as usize;
                assert!(in_span(a), "free-list block 0x{a:x} outside span {idx}");
                assert!(!live.contains(&a), "live block 0x{a:x} on a free list");
                assert!(seen.insert(a), "block 0x{a:x} twice");
                on_list += 1;
                // SAFETY: a free block; its first word is the link.
                b = unsafe { (*b).next };
            }
            let mut in_bitmap = 0;
            for p in idx..idx + pages {
                let summary = core.meta(p).remote.load(Ordering::SeqCst);
                for (w, word) in words(p) {
                    let mut bits = core.remote_word(word).load(Ordering::SeqCst);
                    assert!(
                        bits == 0 || summary & (1 << w) != 0,
                        "word {word} without summary"
                    );
                    while bits != 0 {
                        let g = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let a = core.base + ((word << 6 | g) << GRANULE_SHIFT);
                        assert!(in_span(a), "bitmap block 0x{a:x} not a block of span {idx}");
                        assert!(!live.contains(&a), "live block 0x{a:x} in the bitmap");
                        assert!(seen.insert(a), "block 0x{a:x} twice (bitmap)");
                        in_bitmap += 1;
                    }
                }
            }
            let st = if m.owner.get() == OWNER_LOCAL {
                &core.local
            } else {
                &core.shared
            };
            if !ptr::eq(st.current[m.class.get() as usize].get(), m) {
                assert_eq!(m.used.get(), m.extend.get() - on_list, "used of span {idx}");
            }
            let n_live = live.iter().filter(|&&a| in_span(a)).count() as u32;
            assert_eq!(
                n_live + on_list + in_bitmap,
                m.extend.get(),
                "blocks lost in span {idx}"
            );
        }
    }

    /// The owner allocates blocks of 16 B to 128 KiB (spans of 1 to 16
    /// pages), frees some itself, keeps some and hands some to another
    /// thread that frees them; every ten rounds, with no free in flight,
    /// every block is accounted for exactly once.
    #[test]
    fn remote_frees_keep_every_block_accounted_for() {
        let core = heap_of(1 << 30);
        let sizes = [
            16, 48, 256, 3000, 9000, 17_000, 40_000, 70_000, 100_000, 131_072,
        ];
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut live = std::collections::HashSet::new();
        let mut held = Vec::new();
        let free = |p: usize| {
            // SAFETY: every block the test frees is live and freed once.
            unsafe { core.free(p as *mut u8) }
        };
        std::thread::scope(|sc| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<usize>>(4);
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            sc.spawn(move || {
                for batch in rx {
                    if batch.is_empty() {
                        done_tx.send(()).unwrap();
                    }
                    batch.into_iter().for_each(free);
                }
            });
            for round in 0..150 {
                let mut batch = Vec::new();
                for _ in 0..200 {
                    let r = next();
                    let size = sizes[(r % sizes.len() as u64) as usize];
                    let p = core.alloc(Layout::from_size_align(size, 8).unwrap()) as usize;
                    assert_ne!(p, 0);
                    match (r >> 8) % 4 {
                        0 => batch.push(p),
                        1 => free(p),
                        _ => {
                            live.insert(p);
                            held.push(p);
                        }
                    }
                    if ((r >> 12) % 3 == 0 || held.len() > 1500) && !held.is_empty() {
                        let q = held.swap_remove((r >> 20) as usize % held.len());
                        live.remove(&q);
                        if (r >> 30) % 2 == 0 {
                            batch.push(q)
                        } else {
                            free(q)
                        }
                    }
                }
                tx.send(batch).unwrap();
                if round % 10 == 9 {
                    tx.send(Vec::new()).unwrap();
                    done_rx.recv().unwrap();
                    check_blocks(&core, &live);
                }
            }
            live.clear();
            tx.send(std::mem::take(&mut held)).unwrap();
            tx.send(Vec::new()).unwrap();
            done_rx.recv().unwrap();
            check_blocks(&core, &live);
        });
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }

    /// What `fork` can leave behind in the child, repaired: a remote free
    /// whose bit is set but whose word was never announced in the summary
    /// (span FULL, so the freer had not pushed it yet either), and a span
    /// marked PENDING that never reached the pending stack.
    #[test]
    fn remote_frees_cut_by_fork_are_completed_in_the_child() {
        let core = heap_of(64 << 20);
        let fill = |size: usize| {
            let layout = Layout::from_size_align(size, 8).unwrap();
            let first = core.alloc(layout) as usize;
            let idx = (first - core.base) >> PAGE_SHIFT;
            let mut blocks = vec![first];
            let n = core.meta(idx).capacity.get() as usize;
            blocks.extend((1..n).map(|_| core.alloc(layout) as usize));
            // One more: the span goes dry, FULL.
            blocks.push(core.alloc(layout) as usize);
            assert_eq!(
                core.meta(idx).state.load(Ordering::SeqCst) & !GENERATION,
                FULL
            );
            (idx, blocks)
        };
        let (a, a_blocks) = fill(4096);
        let (b, b_blocks) = fill(2048);
        // Span a: a freer set block 3's bit, then the fork came.
        let p = a_blocks[3];
        let (ma, mb) = (core.meta(a), core.meta(b));
        core.others.freed_bytes.fetch_add(4096, Ordering::SeqCst);
        core.others.freed_count.fetch_add(1, Ordering::SeqCst);
        let granule = (p - core.base) >> GRANULE_SHIFT;
        core.remote_word(granule >> 6)
            .fetch_or(1 << (granule & 63), Ordering::SeqCst);
        // Span b: a freer announced block 5 and marked the span PENDING,
        // then the fork came before it pushed the span.
        let q = b_blocks[5];
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let m = core.meta(b);
                let generation = core.publish_remote_free(m, q as *mut u8).unwrap();
                m.state
                    .compare_exchange(
                        generation | FULL,
                        generation | FULL | PENDING,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .unwrap();
            });
        });
        assert!(!core.has_remote(a, ma), "the bit was announced");
        assert_eq!(core.others.pending.load(Ordering::SeqCst), NONE);
        // SAFETY: no other thread uses the heap now.
        unsafe { core.repair_remote_frees_after_fork() };
        assert!(core.has_remote(a, ma), "the word was not announced");
        assert_eq!(
            ma.state.load(Ordering::SeqCst) & !GENERATION,
            FULL | PENDING
        );
        assert_eq!(
            mb.state.load(Ordering::SeqCst) & !GENERATION,
            FULL | PENDING
        );
        let pending_stack = || {
            let mut stack = vec![];
            let mut at = core.others.pending.load(Ordering::SeqCst);
            while at != NONE {
                stack.push(at as usize);
                at = core.meta(at as usize).pending_next.load(Ordering::SeqCst);
            }
            stack.sort();
            stack
        };
        assert_eq!(
            pending_stack(),
            [a.min(b), a.max(b)],
            "both spans on the stack once"
        );
        // A second repair changes nothing.
        // SAFETY: as above.
        unsafe { core.repair_remote_frees_after_fork() };
        assert_eq!(pending_stack(), [a.min(b), a.max(b)], "a span pushed twice");
        // The owner's next refill brings both back to their queues, each
        // with its remotely freed block on its free list.
        let fresh = core.alloc(Layout::from_size_align(9000, 8).unwrap());
        for (m, block) in [(ma, p), (mb, q)] {
            assert_eq!(m.state.load(Ordering::SeqCst) & !GENERATION, 0);
            assert_ne!(m.flags.get() & IN_QUEUE, 0, "span not back in its queue");
            assert_eq!(m.free.get() as usize, block, "freed block not collected");
        }
        let s = core.stats();
        assert_eq!(s.allocations, a_blocks.len() + b_blocks.len() - 1, "{s:?}");
        // SAFETY: live blocks of this heap, freed once each.
        unsafe {
            for &x in a_blocks.iter().chain(&b_blocks) {
                if x != p && x != q {
                    core.free(x as *mut u8);
                }
            }
            core.free(fresh);
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// A reader of the statistics must not wait for ever on an owner
    /// update that never finishes (a signal handler calling `stats` on the
    /// owner's thread in the middle of one), and must read the owner's
    /// bytes exactly otherwise.
    #[test]
    fn stats_return_during_an_owner_update() {
        let core = heap_of(64 << 20);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        let q = core.alloc(Layout::from_size_align(3000, 8).unwrap());
        let exact = core.stats();
        assert_eq!((exact.in_use, exact.peak), (112 + 3072, 112 + 3072));
        // SAFETY: q is a live block of this heap.
        unsafe { core.free(q) };
        assert_eq!((core.stats().in_use, core.stats().peak), (112, 112 + 3072));
        let c = &core.local.counters;
        let seq = c.seq.load(Ordering::Relaxed);
        c.seq.store(seq + 1, Ordering::Relaxed); // an update "in progress"
        let during = core.stats();
        assert_eq!(during.in_use, 112, "the owner's values did not move");
        c.seq.store(seq + 2, Ordering::Relaxed);
        // SAFETY: p is a live block of this heap.
        unsafe { core.free(p) };
        assert_eq!(core.stats().in_use, 0);
    }

    /// A fork in the middle of an owner update leaves the sequence counter
    /// odd in the child; the child's repair makes it even, so readers do
    /// not wait on it and later updates keep the lock's sense. The cut
    /// update's bytes stay understated, never overstated.
    #[test]
    fn a_fork_child_repairs_a_cut_owner_update() {
        let core = heap_of(64 << 20);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        let q = core.alloc(Layout::from_size_align(3000, 8).unwrap());
        assert_eq!(core.stats().in_use, 112 + 3072);
        // Replay q's peak raise cut by a fork after its first store
        // (slack = 0) and before its second (peak += 3072).
        let c = &core.local.counters;
        let seq = c.seq.load(Ordering::Relaxed);
        c.seq.store(seq + 1, Ordering::Relaxed);
        c.peak.store(112, Ordering::Relaxed);
        assert_eq!(core.stats().in_use, 112, "a cut update understates");
        // SAFETY: this thread is the only one using the heap.
        unsafe { core.repair_remote_frees_after_fork() };
        assert_eq!(
            c.seq.load(Ordering::Relaxed) & 1,
            0,
            "sequence counter still odd"
        );
        // Later updates run as usual and are read whole.
        let r = core.alloc(Layout::from_size_align(20_000, 8).unwrap());
        assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 0);
        let s = core.stats();
        assert_eq!((s.in_use, s.peak), (112 + 20_480, 112 + 20_480), "{s:?}");
        // SAFETY: live blocks of this heap, freed once each.
        unsafe {
            for b in [p, q, r] {
                core.free(b);
            }
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// Another thread grows the owner's large block in place (counted in
    /// the shared state), then the owner frees it (counted in its own):
    /// the two states' nets are summed signed, so nothing stays in use.
    #[test]
    fn a_block_grown_by_another_thread_and_freed_by_the_owner_leaves_nothing() {
        let core = heap_of(64 << 20);
        let old = Layout::from_size_align(200_000, 8).unwrap();
        let p = core.alloc(old) as usize;
        let grown = std::thread::scope(|sc| {
            sc.spawn(|| {
                // SAFETY: p is a live block of `old`'s layout.
                unsafe { core.realloc(p as *mut u8, old, 900_000) as usize }
            })
            .join()
            .unwrap()
        });
        assert_eq!(grown, p, "grown in place");
        assert!(core.stats().in_use >= 900_000);
        // SAFETY: the live (grown) block.
        unsafe { core.free(p as *mut u8) };
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }

    #[test]
    fn side_tables_open_as_the_region_grows() {
        let core = heap_of(64 << 30);
        let n_pages = core.region.reserved() >> PAGE_SHIFT;
        let meta_of = |idx: usize| core.metas as usize + idx * core::mem::size_of::<PageMeta>();
        let bits_of = |idx: usize| core.remote_bits as usize + idx * REMOTE_WORDS * 8;
        // Nothing committed: the whole 64 GiB worth of side table (8.5 MiB
        // of page table and bitmap per GiB) is mapped read-only.
        for addr in [
            meta_of(0),
            bits_of(0),
            meta_of(n_pages - 1),
            bits_of(n_pages - 1),
        ] {
            assert_eq!(perms_at(addr), "r--p", "0x{addr:x} before any allocation");
        }
        assert_eq!(core.meta(n_pages - 1).kind(), Kind::Unused);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        assert!(!p.is_null());
        let committed = core.region.committed() >> PAGE_SHIFT;
        assert!(committed > 0 && committed < n_pages / 2);
        for addr in [
            meta_of(0),
            bits_of(0),
            meta_of(committed - 1),
            bits_of(committed - 1),
        ] {
            assert_eq!(perms_at(addr), "rw-p", "0x{addr:x} of a committed page");
        }
        // (The page table's last page shares a page with the bitmap's
        // first words, so look further in.)
        for addr in [
            meta_of(n_pages / 2),
            bits_of(n_pages / 2),
            bits_of(n_pages - 1),
        ] {
            assert_eq!(perms_at(addr), "r--p", "0x{addr:x} of an uncommitted page");
        }
        // SAFETY: p is a live block of this heap.
        unsafe { core.free(p) };
    }
}
