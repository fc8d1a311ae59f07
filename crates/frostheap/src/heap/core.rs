//! The heap proper: [`HeapCore`], its layout, and the owner's fast paths.
//!
//! **Algorithm.** Small requests (up to 128 KiB) are served from spans of
//! same-size blocks, one queue of spans per size class ([`super::queue`]),
//! in the style of mimalloc's free-list sharding: each span has its own
//! free list, so allocation pops from the current span and freeing pushes
//! onto the span the pointer belongs to (found with one shift in the page
//! table, [`super::page`]). In a heap past 8 MiB, the owner's frees of
//! blocks up to 4 KiB go to an array of pointers per class instead
//! ([`super::own_cache`]), which its allocations take them back from
//! without touching the blocks. Large requests take whole spans
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
//! its bytes in one signed word updated with plain loads and stores. A
//! small block freed by another thread is counted by the owner when it
//! collects it (until then it is a bit in the remote-free bitmap, which
//! statistics read), so a remote free touches no counter; large blocks
//! freed by other threads are counted apart.
//!
//! This file composes the parts — class states ([`super::queue`]), the
//! remote-free machinery ([`super::remote`]), counters ([`super::stats`]),
//! the span allocator ([`super::span`]), large-block layout
//! ([`super::large`]) — and orchestrates them: the allocation and free fast
//! paths with the slow paths they fall back to, reallocation, statistics,
//! sealing and thread hand-over. The parts know nothing of `HeapCore`.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::class::{class_for, class_of, class_of_lookup, span_pages, CLASS_SIZE, N_CLASSES};
use super::large;
use super::own_cache::{OwnCache, OwnSlots, OWN_CACHE_FROM};
#[cfg(debug_assertions)]
use super::page::{debug_invariant_broken, owner_local};
use super::page::{
    invalid_free, large_usable, Block, Kind, PageMeta, PageTable, BITS_SKEW, CLASSES_END,
    CURRENT_USED, EMPTY, FULL, GENERATION, META_SKEW, NONE, OWNER_CACHED, OWNER_LOCAL,
    OWNER_SHARED, PENDING, REMOTE_WORDS,
};
use super::process::{self, Kind as ChargeKind};
use super::queue::ClassState;
use super::remote::{OtherThreads, Remote};
pub(crate) use super::span::WARM_FROM;
use super::span::{carved_charge, Locked, Refusal, Retire, SpanAllocator};
use crate::os::{self, OsError};
use crate::region::{
    committed_min, round_up, Huge, NewRegionError, Region, RegionConfig, PAGE_SHIFT, PAGE_SIZE,
};
use crate::sync::{chaos, thread_token, RawLock};

/// The smallest large block whose growth moves its pages rather than
/// copying them ([`HeapCore::move_large`]): 1 MiB. Below it a copy costs
/// little and needs little room beside the block, and each move is a
/// system call that may leave the range's mapping split where the block
/// was and where it went.
pub(super) const MOVE_FROM: usize = 1 << 20;

/// Blocks a class carves in its current span before it may take free
/// blocks of the next classes ([`HeapCore::borrow`]).
const BORROW_AFTER: u32 = 8;

/// Blocks a class takes from the next classes in a row, without carving
/// one of its own ([`HeapCore::borrow`]); then it carves.
const BORROW_RUN: u16 = 1024;

/// The smallest class that takes free blocks of the next classes
/// ([`HeapCore::borrow`]). Below it a page holds many blocks, so the
/// classes' peaks cost little memory (the simulation named there gives
/// the same figure with or without them), and threads that pass small
/// blocks to one another (a producer whose class is dry until the
/// consumer's frees come back) would borrow on most refills.
const BORROW_MIN: u32 = 1024;

/// Why [`HeapCore::init_at`] built no heap.
#[derive(Clone, Copy, Debug)]
pub(crate) enum InitError {
    /// The process limit refused the charge for the heap's committed
    /// minimum: `requested` bytes, with the process's `limit` and what it
    /// had `committed` then. Not an `OsError`: no system call failed (it
    /// was one named `FROSTHEAP_MAX`, printed as "FROSTHEAP_MAX failed:
    /// errno 12").
    Limit {
        /// The minimum, as the region commits it.
        requested: usize,
        /// The process limit.
        limit: usize,
        /// What the process had committed.
        committed: usize,
    },
    /// The address space refused the heap's range or its page table, both
    /// sized by `max` (an explicit heap's own reservation).
    Reserve(OsError),
    /// Another system call failed: the commit of the minimum, or of the
    /// page table's entries for it.
    Os(OsError),
}

impl From<OsError> for InitError {
    fn from(e: OsError) -> InitError {
        InitError::Os(e)
    }
}

/// Where the parts of a heap's side table lie, for a range of `n_pages`
/// heap pages (`ps`: the OS page size): the class map grows down from
/// `first + CLASSES_END`, the metas start at `meta_start`, the remote-free
/// bitmap at `bits_start`, the owner's cache's stacks at `own_start`;
/// `bytes` in all.
struct TableLayout {
    first: usize,
    meta_start: usize,
    bits_start: usize,
    own_start: usize,
    bytes: usize,
}

impl TableLayout {
    fn of(n_pages: usize, ps: usize) -> TableLayout {
        // The class map grows down from CLASSES_END of the metas' first OS
        // page (`first`, with room below for the whole map); the metas
        // start at META_SKEW of it, and the bitmap one line into the OS
        // page after theirs (BITS_SKEW): a small heap's blocks lie near
        // their spans' starts, so its first 16 pages' words take two OS
        // pages of bitmap, not the three they took at META_SKEW's offset.
        let first = round_up(n_pages.saturating_sub(CLASSES_END), ps);
        let meta_start = first + META_SKEW;
        let bits_start =
            round_up(meta_start + n_pages * core::mem::size_of::<PageMeta>(), ps) + BITS_SKEW;
        // Then, from an OS page of their own, the owner's cache's stacks,
        // opened if the cache turns on (heap::own_cache).
        let own_start = round_up(bits_start + n_pages * REMOTE_WORDS * 8, ps);
        let bytes = own_start + round_up(core::mem::size_of::<OwnSlots>(), ps);
        TableLayout {
            first,
            meta_start,
            bits_start,
            own_start,
            bytes,
        }
    }
}

/// After the address space refused a heap of its own of `max` bytes
/// ([`InitError::Reserve`]): the largest power of two below `max` whose
/// range (laid out as `huge` says) and page table the address space
/// grants now, or 0 when not even one heap page's does. Each size tried is
/// reserved and unmapped at once; for the error that refuses `max`.
#[cold]
pub(crate) fn largest_reservable(max: usize, huge: Huge) -> usize {
    let align = match huge {
        Huge::Off => PAGE_SIZE,
        Huge::On | Huge::Later => os::HUGE_PAGE_SIZE,
    };
    crate::region::largest_granted(max, PAGE_SIZE, |size| {
        let len = round_up(size, align);
        let table = TableLayout::of(size >> PAGE_SHIFT, os::page_size()).bytes;
        let Ok(base) = os::reserve(len, align) else {
            return false;
        };
        let fits = os::map_table_closed(table).map(|t| {
            // SAFETY: mapped just above, and nothing refers to it.
            unsafe { os::unmap(t, table) }
        });
        // SAFETY: reserved just above, and nothing refers to it.
        unsafe { os::unmap(base, len) };
        fits.is_ok()
    })
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreConfig {
    pub min: usize,
    pub max: usize,
    pub huge_pages: Huge,
    /// What its commits are charged as against the process limit.
    pub kind: ChargeKind,
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
    /// The region's base and length and the page table (hot: every free
    /// reads them).
    pub(super) pages: PageTable,
    /// Thread token of the owner (see [`thread_token`]); 0 while no thread
    /// owns the heap.
    pub(super) owner: AtomicUsize,
    /// The remote-free bitmap (see [`Remote`]), in the side table after the
    /// metas.
    pub(super) remote_bits: *const AtomicU64,
    /// Sealed for good: allocation fails and frees are ignored. Checked on
    /// slow paths only; `seal` diverts every fast path into them.
    pub(super) sealed: core::sync::atomic::AtomicBool,
    pub(super) local: ClassState,
    /// The owner's cache of its own freed blocks ([`super::own_cache`]).
    pub(super) own: OwnCache,
    pub(super) others: OtherThreads,
    pub(super) shared_lock: RawLock,
    pub(super) shared: ClassState,
    pub(super) spans: SpanAllocator,
}

/// The owner token of a heap that a `fork` left without an owner
/// ([`HeapCore::orphan_after_fork`]): no thread has it (a thread's token is
/// the address of its control block, aligned).
pub(crate) const ORPHAN: usize = 1;

#[cfg(test)]
std::thread_local! {
    /// Tests: called once, in this thread, as [`HeapCore::give_back_held`]
    /// next starts.
    pub(super) static BEFORE_GIVE_BACK_HELD: core::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { core::cell::RefCell::new(None) };
}

// SAFETY: the fields behind Cells obey the discipline documented on
// `PageMeta` and `ClassState`: `local` is touched only by the owner thread,
// `shared` only under `shared_lock`, the span allocator's state only under
// its lock; all cross-thread communication goes through atomics.
unsafe impl Sync for HeapCore {}
// SAFETY: as above; the raw pointers point into mappings the core owns.
unsafe impl Send for HeapCore {}

/// Zeroes the first `dirty` bytes of a zeroed large block (past them it is
/// known zero). Up to [`ZERO_BY_PURGE`] bytes they are written; past that,
/// their whole OS pages are looked at 4 MiB at a time (`mincore`): where
/// most are resident they are written (no fault: a block taken again from
/// the free memory its heap kept, and used whole, as a program that
/// `calloc`s and fills a 16 MiB buffer round after round does), and where
/// most are not they are purged (`MADV_DONTNEED`), which zeroes the few
/// that are and leaves the rest unfaulted. A block of 256 MiB taken again
/// from a free top its heap kept, which the program had touched in two
/// pages, was written whole at every `calloc`, all of it faulted in (150
/// ms a call, or 12 ms once resident, where glibc's fresh mapping takes
/// none; mimalloc still does it), and purging all of it instead made the
/// 16 MiB buffers fault in again every round (12 times glibc's time, as
/// jemalloc takes).
///
/// Laid with the rare code (layout.ld): no process's start runs it.
///
/// # Safety
/// 1. `[p, p + dirty)` lies in a block of a heap's private anonymous
///    mapping, writable, with nothing live in it.
#[inline(never)]
pub(super) unsafe fn zero_large(p: *mut u8, dirty: usize) {
    if dirty < ZERO_BY_PURGE {
        // SAFETY: (1).
        unsafe { ptr::write_bytes(p, 0, dirty) };
        return;
    }
    let page = os::page_size();
    let start = (p as usize).next_multiple_of(page);
    let end = (p as usize + dirty) & !(page - 1);
    // SAFETY: (1): the parts before and after the block's whole pages.
    unsafe {
        ptr::write_bytes(p, 0, start - p as usize);
        ptr::write_bytes(end as *mut u8, 0, p as usize + dirty - end);
    }
    let mut vec = [0u8; ZERO_LOOK_PAGES];
    let mut at = start;
    while at < end {
        let len = (end - at).min(ZERO_LOOK_PAGES * page);
        let pages = len / page;
        let chunk = at as *mut u8;
        // SAFETY: (1): whole pages of the block, mapped; `vec` has a byte
        // for each.
        let resident = unsafe { os::resident_pages(chunk, len, &mut vec[..pages]) };
        // SAFETY: (1): nothing live in them.
        let purged =
            matches!(resident, Ok(n) if 2 * n < pages) && unsafe { os::purge(chunk, len) }.is_ok();
        if !purged {
            // SAFETY: (1).
            unsafe { ptr::write_bytes(chunk, 0, len) };
        }
        at += len;
    }
}

/// Bytes of a zeroed large block's dirty part from which [`zero_large`]
/// looks at which of its pages are resident (jemalloc's threshold for the
/// blocks it gives back at once).
const ZERO_BY_PURGE: usize = 8 << 20;

/// Pages [`zero_large`] looks at with one `mincore` (4 MiB of 4 KiB
/// pages: its answer lies on the allocating thread's stack).
const ZERO_LOOK_PAGES: usize = 1024;

impl HeapCore {
    /// Reserves the region and page table. The calling thread becomes the
    /// owner.
    #[cfg(test)]
    pub(crate) fn new(config: CoreConfig) -> Result<HeapCore, InitError> {
        let mut core = core::mem::MaybeUninit::<HeapCore>::uninit();
        // SAFETY: no reservation given: the region makes its own; `core`
        // is writable.
        unsafe { Self::init_at(core.as_mut_ptr(), None, config)? };
        // SAFETY: init_at returned Ok: it wrote the whole core.
        Ok(unsafe { core.assume_init() })
    }

    /// Builds a core at `dst`, field by field (every field is named in the
    /// pattern below it, which stops compiling when a field is added), its
    /// class states written there directly:
    /// a core built on the stack and moved took a thread's first
    /// allocation three stack pages deep (its caller's frame held two
    /// more copies), 12 KiB of resident memory per thread. On `Err`,
    /// `dst` is left unwritten (what was written is dropped).
    ///
    /// `at`: `(base, len)` of `[base, base + len)`, a slot of a larger
    /// reservation (the global allocator's heaps; `len` at least
    /// `config.max`), or `None` for a region of the core's own.
    ///
    /// # Safety
    /// 1. `at` is `None`, or (base, len) as for [`Region::in_reservation`], and the
    ///    core is never dropped while blocks of it are live.
    /// 2. `dst` is valid for a write of a `HeapCore`.
    pub(super) unsafe fn init_at(
        dst: *mut HeapCore,
        at: Option<(*mut u8, usize)>,
        config: CoreConfig,
    ) -> Result<(), InitError> {
        let rc = RegionConfig {
            min: config.min,
            max: config.max,
            huge_pages: config.huge_pages,
        };
        // The pre-committed minimum counts against the process limit
        // (what the region commits for it: never past the cap).
        let min = committed_min(config.min, config.max);
        if !process::charge(config.kind, min) {
            return Err(InitError::Limit {
                requested: min,
                limit: process::limit(),
                committed: process::committed(),
            });
        }
        let region = match at {
            Some((base, len)) => {
                // SAFETY: (1).
                unsafe { Region::in_reservation(base, len, rc) }.map_err(InitError::Os)
            }
            None => Region::new_own(rc).map_err(|e| match e {
                NewRegionError::Reserve(e) => InitError::Reserve(e),
                NewRegionError::Commit(e) => InitError::Os(e),
            }),
        };
        let region = match region {
            Ok(r) => r,
            Err(e) => {
                process::release(config.kind, min);
                return Err(e);
            }
        };
        let n_pages = region.reserved() >> PAGE_SHIFT;
        let TableLayout {
            first,
            meta_start,
            bits_start,
            own_start,
            bytes: table_bytes,
        } = TableLayout::of(n_pages, os::page_size());
        let table = match os::map_table_closed(table_bytes) {
            Ok(t) => t,
            Err(e) => {
                process::release(config.kind, min);
                // Sized by the range (a PageMeta and REMOTE_WORDS words
                // per 64 KiB page of it): refused for the same reason,
                // the size of `max`.
                return Err(InitError::Reserve(e));
            }
        };
        // SAFETY: the mapping has the class map's n_pages bytes below
        // `first + CLASSES_END` (first >= n_pages - CLASSES_END), the page
        // table's n_pages metas from meta_start, and the bitmap's n_pages *
        // REMOTE_WORDS words from bits_start (a multiple of 64, so the
        // words are aligned).
        let (metas, remote_bits, classes) = unsafe {
            (
                table.add(meta_start).cast::<PageMeta>(),
                table.add(bits_start).cast::<AtomicU64>().cast_const(),
                table
                    .add(first + CLASSES_END - 1)
                    .cast::<AtomicU8>()
                    .cast_const(),
            )
        };
        let pages = PageTable {
            base: region.base() as usize,
            metas,
            len: region.reserved(),
            classes,
        };
        // SAFETY: (2); each field is written once, through its own
        // place, and the whole core is written once these return.
        unsafe {
            (&raw mut (*dst).pages).write(pages);
            (&raw mut (*dst).owner).write(AtomicUsize::new(thread_token()));
            (&raw mut (*dst).remote_bits).write(remote_bits);
            (&raw mut (*dst).sealed).write(core::sync::atomic::AtomicBool::new(false));
            ClassState::init(&raw mut (*dst).local, OWNER_LOCAL);
            OwnCache::init(&raw mut (*dst).own);
            (&raw mut (*dst).others).write(OtherThreads::new());
            (&raw mut (*dst).shared_lock).write(RawLock::new());
            ClassState::init(&raw mut (*dst).shared, OWNER_SHARED);
            (&raw mut (*dst).spans).write(SpanAllocator::new(
                region,
                table,
                table_bytes,
                meta_start,
                bits_start,
                own_start,
                config.max,
                config.kind,
            ));
        }
        // Every field of HeapCore, to be written above.
        const _: fn(&HeapCore) = |HeapCore {
                                      pages: _,
                                      owner: _,
                                      remote_bits: _,
                                      sealed: _,
                                      local: _,
                                      own: _,
                                      others: _,
                                      shared_lock: _,
                                      shared: _,
                                      spans: _,
                                  }| {};
        // SAFETY: written in full above.
        let core = unsafe { &*dst };
        // The pre-committed minimum becomes one free span.
        let committed = core.region().committed() >> PAGE_SHIFT;
        if committed > 0 {
            let mut spans = core.lock_spans();
            if let Err(e) = spans.open_tables(committed) {
                drop(spans);
                // SAFETY: written in full above and not used again: the
                // caller sees `dst` unwritten.
                unsafe { core::ptr::drop_in_place(dst) };
                return Err(InitError::Os(e));
            }
            // SAFETY: the pages are committed, free and in no span.
            unsafe { spans.insert(0, committed, false, 0) };
        }
        Ok(())
    }

    /// The region.
    pub(crate) fn region(&self) -> &Region {
        self.spans.region()
    }

    /// The span allocator, locked.
    #[inline]
    pub(super) fn lock_spans(&self) -> Locked<'_> {
        self.spans.lock(self.pages, &self.others.external)
    }

    /// The remote-free machinery.
    #[inline(always)]
    pub(super) fn remote(&self) -> Remote<'_> {
        Remote {
            pages: self.pages,
            bits: self.remote_bits,
            others: &self.others,
        }
    }

    /// Whether `addr` is inside this heap's reservation.
    #[inline]
    pub(crate) fn owns(&self, addr: usize) -> bool {
        self.pages.contains(addr)
    }

    /// Whether the calling thread is the owner.
    #[inline]
    pub(crate) fn is_owner(&self) -> bool {
        thread_token() == self.owner.load(Ordering::Relaxed)
    }

    /// The owner thread gives the heap up (it is exiting): spans that
    /// received remote frees are collected, its free memory given back
    /// (released from the process limit) but for what `warm` allows of its
    /// resident free spans, kept for the thread that adopts it
    /// ([`Locked::give_back_but_warm`]; with none allowed the free top of
    /// the region is decommitted and the free spans below it purged), and
    /// from
    /// now on every free into the heap, by any thread, is a remote free,
    /// until a thread adopts the heap with [`HeapCore::set_owner`]. Returns
    /// the bytes kept.
    ///
    /// [`Locked::give_back_but_warm`]: super::span::Locked::give_back_but_warm
    ///
    /// # Safety
    /// 1. The calling thread is the owner and never uses the owner path
    ///    again (without adopting the heap anew).
    pub(crate) unsafe fn abandon(&self, warm: &mut dyn FnMut(usize) -> usize) -> usize {
        crate::sync::invariant!(self.is_owner(), "abandon by another thread");
        // SAFETY: (1).
        unsafe { self.flush_own_cache() };
        self.collect_pending();
        // A heap that has grown past OWN_CACHE_FROM (its classes split)
        // gives back its empty current spans too: an exited thread's heap
        // of 50 MiB kept about 2 MiB in them (`working-set` in Rust). A
        // smaller heap keeps them for the thread that adopts it: threads
        // that each allocate a little (`spawn`) otherwise made those spans
        // again, their pages faulted in anew, in every generation (Rust
        // `spawn` took 1.18× as long, p10–p90 1.08–1.24, in 21 alternating
        // runs) — those its thread used, that is
        // (`retire_unused_current`, whose few spans go back purged). The
        // spans retired here are purged with the rest of the heap's free
        // memory below, after they coalesce: purged one by one as they
        // were retired, a heap of 50 MiB made hundreds of `madvise` calls
        // (and as many TLB shootdowns) at its thread's exit, and
        // `working-set` took 1.04-1.05x as long.
        self.collect_queued(self.local.fine.get());
        if !self.local.fine.get() {
            self.retire_unused_current(&mut |idx| {
                self.retire_span_in(&mut self.lock_spans(), idx, Retire::Purged)
            });
        }
        chaos();
        let kept = self.lock_spans().give_back_but_warm(warm);
        chaos();
        // SeqCst, then a look at the stack: spans that another thread took
        // off it before our collection and puts back now
        // (`retire_spans_freed_whole`) are brought back into an abandoned
        // heap, marked here or by that thread.
        self.others.abandoned.store(true, Ordering::SeqCst);
        if self.others.pending.load(Ordering::SeqCst) != NONE {
            self.others.brought_back.store(true, Ordering::Relaxed);
        }
        self.owner.store(0, Ordering::Release);
        kept
    }

    /// Of a small heap given up, keeps an empty current span for the next
    /// thread only if the thread leaving used it: one no block was freed
    /// into since it became current, or since the last thread left it
    /// (which set its count to [`CURRENT_USED`] again, see
    /// [`PageMeta::used`]: every free counts it down), was not, and is
    /// retired. So what a heap keeps for its next thread is at most the
    /// classes its last thread used: threads replaced in generations, each
    /// using other size classes than the last (a thread per connection
    /// whose requests differ), made every heap keep the empty spans of
    /// every generation's classes (1,000 threads each holding 32 blocks of
    /// 16 B – 6.8 KiB, in seven rotating sets of sizes: 360 MiB charged,
    /// 266 MB resident, where one generation holds 94 MiB).
    ///
    /// The owner only, giving the heap up.
    #[inline(never)] // one copy for its callers: the code a thread's exit runs fits one window
    fn retire_unused_current(&self, retire: &mut dyn FnMut(usize)) {
        let st = &self.local;
        for c in 0..N_CLASSES {
            let idx = st.head[c].get();
            if idx == NONE {
                continue; // no queue (a fine-only class not split: none)
            }
            let m = self.meta(idx as usize);
            if !ptr::eq(st.current[c].get(), m) {
                continue;
            }
            // A free into it since the mark (by this thread, or by another
            // collected now): used, and kept, its count back at the mark
            // (a current span's count means nothing but that). Only a span
            // not freed into is walked: walking every class's free list at
            // every exit made threads that each allocate a little (`spawn`
            // in C) take 1.07x as long (20 alternating rounds, 0.86–1.15).
            if m.used.get() == CURRENT_USED {
                self.collect_remote(m, idx as usize, true);
            }
            if m.used.get() != CURRENT_USED {
                m.used.set(CURRENT_USED);
            } else if Self::current_is_empty(m) {
                // Exact now; `unlink` makes the next span current.
                m.used.set(0);
                st.unlink(&self.pages, c, idx as usize);
                retire(idx as usize);
            }
        }
    }

    /// Runs `alloc`, the allocation of the block a `realloc` moves to.
    /// For a shrink (`shrink`: to a smaller class), a failure is none: the
    /// shrink keeps its block, which holds the new size, so on the owner's
    /// path it counts no refusal, in the heap or the process (a kept shrink
    /// counted one, and in Rust printed the refusal line for a call that
    /// succeeded). A growth, or any other path, counts as before.
    pub(crate) fn alloc_for_move(&self, shrink: bool, alloc: impl FnOnce() -> *mut u8) -> *mut u8 {
        if !shrink || !self.is_owner() {
            return alloc();
        }
        self.local.shrinking.set(true);
        let q = alloc();
        self.local.shrinking.set(false);
        q
    }

    /// Whether the owner is allocating for a shrink
    /// ([`HeapCore::alloc_for_move`]), false on any other thread.
    pub(crate) fn shrinking(&self) -> bool {
        self.is_owner() && self.local.shrinking.get()
    }

    /// Counts an allocation refused in the end: in the heap's `refused`,
    /// and in the process's when the process limit (not the heap's cap)
    /// refused a commit on the way; what refused is recorded for the line
    /// that reports it ([`HeapCore::last_refusal`]).
    fn refuse(&self) {
        if self.shrinking() {
            // A shrink that keeps its block: not refused (see
            // `alloc_for_move`).
            self.spans.take_refusal();
            return;
        }
        self.others.refused.fetch_add(1, Ordering::Relaxed);
        if self.spans.refused_for_good() == Refusal::Limit {
            process::count_refusal();
        }
    }

    /// What refused the heap's last refused allocation: the process limit,
    /// the heap's own cap, the heap's range, the kernel, or nothing known
    /// ([`Refusal::None`]: none refused yet, or the heap is sealed).
    pub(crate) fn last_refusal(&self) -> Refusal {
        self.spans.last_refusal()
    }

    /// The bytes the commit that refused the heap's last refused
    /// allocation asked for (0 when unknown): the charge, for the process
    /// limit; the run of pages, for the range.
    pub(crate) fn last_refusal_need(&self) -> usize {
        self.spans.last_refusal_need()
    }

    /// Past the heap's cap or the process limit, on the owner's path: what
    /// the owner holds that is not in use goes back to the span allocator
    /// before an allocation is refused — the blocks its cache holds to
    /// their spans, the other heaps' blocks the thread holds to those heaps
    /// ([`process::hand_back_held`]), the remote frees its spans received
    /// collected, and
    /// every span that leaves empty retired, the current ones too, which a
    /// thread keeps for its next blocks and a heap it adopted kept for it
    /// ([`HeapCore::abandon`]). Returns whether anything went back (a
    /// cache flushed, a span retired); the callers try once more either
    /// way, as the collection may also have brought blocks back.
    ///
    /// A thread that adopts a heap may never use the classes its last
    /// thread used: threads replaced in generations, each using other size
    /// classes, each kept the last generation's empty spans charged beside
    /// its own, and 1,000 of them holding 94 MiB were refused under
    /// `FROSTHEAP_MAX=160M` in their second generation.
    ///
    /// # Safety
    /// 1. The calling thread is the owner, on its owner path.
    unsafe fn give_back_held(&self) -> bool {
        #[cfg(test)]
        if let Some(hook) = BEFORE_GIVE_BACK_HELD.with(|hook| hook.borrow_mut().take()) {
            hook();
        }
        let flushed = self.own.cached_blocks() > 0;
        if flushed {
            // SAFETY: (1).
            unsafe { self.flush_own_cache() };
        }
        // The other heaps' blocks the thread holds, back to them: the spans
        // they empty there go back at the charge's next try (the
        // reclaimer), as at a trim.
        let handed = process::hand_back_held();
        let mut retired = 0usize;
        let mut retire = |idx| {
            retired += 1;
            self.retire_span_in(&mut self.lock_spans(), idx, Retire::Purged);
        };
        // The stack taken under the span lock: a thread retiring spans
        // freed whole holds that lock with the whole stack taken
        // (`retire_spans_freed_whole`, the limit's reclaimer of another
        // thread), and the spans it puts back, whose free blocks would
        // serve this allocation, would otherwise wait for the owner's
        // next collection, after a refusal.
        let top = {
            let _spans = self.lock_spans();
            self.remote().take_pending()
        };
        self.collect_taken_with(top, &mut retire);
        self.collect_queued_with(true, &mut retire);
        flushed || handed || retired > 0
    }

    /// Gives back what an abandoned heap keeps for the thread that adopts
    /// it: the empty current spans a small heap keeps ([`HeapCore::abandon`])
    /// and the spans emptied since by other threads' frees are retired,
    /// then every free page is given back (the free top decommitted, the
    /// free spans purged and uncharged), the free spans its last thread
    /// left resident for the next among them, but for what `warm` allows
    /// (below).
    /// Returns the bytes no longer
    /// charged; `None`, nothing done, when the span lock is busy and `wait`
    /// is false (the process limit's reclaimer, which holds another heap's
    /// span lock and must not wait for this one).
    ///
    /// So the memory of threads that have exited serves the threads left
    /// (the main thread, once a pool has shrunk), as their heaps' free
    /// spans always did: a small heap's kept spans counted against the
    /// limit until another thread adopted it ([`HeapCore::give_back_held`]
    /// is the owner's side of the same).
    ///
    /// With `kept` false (the process's growth hook), the empty current
    /// spans kept for the next thread stay: threads that each allocate a
    /// little, started while the process grows, would fault them in anew.
    /// With `warm`, resident free spans stay too, as much as it allows
    /// ([`Locked::give_back_but_warm`]): what the heap kept for its next
    /// thread when it was given up, and what was freed into it since. The
    /// second figure returned is what stays.
    ///
    /// [`Locked::give_back_but_warm`]: super::span::Locked::give_back_but_warm
    ///
    /// # Safety
    /// 1. The heap is abandoned (its owner gave it up with
    ///    [`HeapCore::abandon`]) and no thread adopts it until this returns.
    pub(crate) unsafe fn release_kept(
        &self,
        wait: bool,
        kept: bool,
        warm: Option<&mut dyn FnMut(usize) -> usize>,
    ) -> Option<(usize, usize)> {
        crate::sync::invariant_eq!(self.owner_token(), 0, "releasing an owned heap");
        let spans = if wait {
            Some(self.lock_spans())
        } else {
            self.spans.try_lock(self.pages, &self.others.external)
        };
        let mut spans = spans?;
        let before = self.charged();
        // (1): no owner, and none until we return: the owner's state is
        // ours meanwhile, as it is an adopter's (the abandoned stack's lock
        // orders us after the last owner's `abandon` and before the next
        // owner's adoption). Other threads' frees into the heap are remote
        // frees, which the collection below is the owner's side of.
        // Spans retired to be kept are not purged one by one as they go:
        // the free memory they join is purged as a whole below, beyond
        // what is kept (a worker's 32 MiB of results, freed into its heap
        // before the next worker adopted it, went span by span, and the
        // next worker faulted them in again).
        let how = if warm.is_some() {
            Retire::Kept
        } else {
            Retire::Purged
        };
        self.collect_pending_with(&mut |idx| self.retire_span_in(&mut spans, idx, how));
        self.collect_queued_with(kept, &mut |idx| self.retire_span_in(&mut spans, idx, how));
        let still = match warm {
            Some(w) => spans.give_back_but_warm(w),
            None => {
                spans.give_back_all();
                0
            }
        };
        drop(spans);
        Some((before.saturating_sub(self.charged()), still))
    }

    /// Whether a remote free brought a full span of the heap back while it
    /// was abandoned since the last call (which clears it).
    pub(crate) fn take_brought_back(&self) -> bool {
        self.others.brought_back.load(Ordering::Relaxed)
            && self.others.brought_back.swap(false, Ordering::Relaxed)
    }

    /// Sets again what [`HeapCore::take_brought_back`] took, for a heap
    /// whose span lock was busy: its spans wait for the next run.
    pub(crate) fn restore_brought_back(&self) {
        self.others.brought_back.store(true, Ordering::Relaxed);
    }

    /// First address of the region, as an integer.
    #[inline(always)]
    pub(crate) fn base(&self) -> usize {
        self.pages.base
    }

    /// The owner's thread token (0: abandoned).
    #[inline]
    pub(crate) fn owner_token(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    /// Makes the calling thread the owner.
    ///
    /// # Safety
    /// 1. The previous owner never uses the heap again without another
    ///    `set_owner` handing it back, with a happens-before edge between
    ///    the two (the owner's plain fields move with it).
    pub(crate) unsafe fn set_owner(&self) {
        // A `fork` child's heap whose owner (not the forking thread) was
        // inside `alloc_for_move` would keep the flag, and hide every
        // refusal of the heap's next owner.
        self.local.shrinking.set(false);
        self.others.abandoned.store(false, Ordering::Relaxed);
        self.owner.store(thread_token(), Ordering::Release);
    }

    #[inline]
    pub(super) fn meta(&self, idx: usize) -> &PageMeta {
        self.pages.meta(idx)
    }

    // -----------------------------------------------------------------
    // Allocation.

    /// Allocates; null when the limit would be exceeded.
    #[inline(always)]
    pub(crate) fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(c) = class_for(layout.size(), layout.align()) {
            if self.is_owner() {
                return self.alloc_small::<true>(c, layout.align() <= 16);
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
        self.alloc_small::<false>(c, false)
    }

    /// [`HeapCore::alloc`] for a caller that knows it is the owner.
    ///
    /// # Safety
    /// 1. The calling thread is the owner ([`HeapCore::is_owner`]).
    #[inline(always)]
    pub(crate) unsafe fn alloc_as_owner(&self, layout: Layout) -> *mut u8 {
        crate::sync::invariant!(self.is_owner(), "alloc_as_owner called by another thread");
        if let Some(c) = class_for(layout.size(), layout.align()) {
            return self.alloc_small::<true>(c, layout.align() <= 16);
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
        crate::sync::invariant!(
            self.is_owner(),
            "try_alloc_small_as_owner called by another thread"
        );
        // The current span's free list first: with the owner's cache off
        // (a heap below OWN_CACHE_FROM) this is the whole path, as if
        // there were no cache; with it on, the list holds the blocks
        // carved last, and the cache what the owner freed since.
        let Some((b, size)) = self.local.pop_current(c) else {
            return self.try_alloc_cached(c);
        };
        // The rare peak raise as a tail call, so this path saves no
        // register around it.
        if self.local.count_local_alloc(size) {
            return Some(self.local.raise_peak_returning(b));
        }
        Some(b)
    }

    /// [`HeapCore::try_alloc_small_as_owner`] past an empty free list: a
    /// block of the owner's cache (none unless the heap is past
    /// [`OWN_CACHE_FROM`]), counted at its class's size. Inline: out of
    /// line, the call made `__rust_alloc` save three registers on every
    /// allocation.
    #[inline(always)]
    fn try_alloc_cached(&self, c: usize) -> Option<NonNull<u8>> {
        let b = self.own.pop(c)?;
        // SAFETY: only classes below OWN_CLASSES <= N_CLASSES cache blocks.
        let size = *unsafe { CLASS_SIZE.get_unchecked(c) } as usize;
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
    ///
    /// The inlined part is the pop for sizes up to 4 KiB alone, straight
    /// line with one way out (a call to [`HeapCore::alloc_c_slow`]): with
    /// the larger classes' computed lookup and the refill joining it,
    /// the compiler laid it out with two more instructions per call.
    #[inline(always)]
    pub(crate) unsafe fn alloc_c_as_owner<const ZERO: bool>(&self, size: usize) -> *mut u8 {
        crate::sync::invariant!(self.is_owner(), "alloc_c_as_owner called by another thread");
        if let Some(c) = class_of_lookup(size) {
            // SAFETY: (1).
            if let Some(p) = unsafe { self.try_alloc_small_as_owner(c) } {
                if ZERO {
                    // SAFETY: p points to a block of CLASS_SIZE[c] >= size
                    // bytes.
                    unsafe { ptr::write_bytes(p.as_ptr(), 0, size) };
                }
                return p.as_ptr();
            }
        }
        // SAFETY: (1).
        unsafe { self.alloc_c_slow::<ZERO>(size) }
    }

    /// [`HeapCore::alloc_c_as_owner`] past its inlined pop: a refill, a
    /// class above 4 KiB, or a large block.
    ///
    /// # Safety
    /// 1. The calling thread is the owner ([`HeapCore::is_owner`]).
    #[inline(never)]
    pub(crate) unsafe fn alloc_c_slow<const ZERO: bool>(&self, size: usize) -> *mut u8 {
        if let Some(c) = class_of(size) {
            let p = self.alloc_small::<true>(c, true);
            if ZERO && !p.is_null() {
                // SAFETY: p points to a block of CLASS_SIZE[c] >= size bytes.
                unsafe { ptr::write_bytes(p, 0, size) };
            }
            return p;
        }
        self.alloc_c_large::<ZERO>(size)
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
        let (p, dirty) = self.alloc_large(layout);
        if !p.is_null() {
            // SAFETY: p holds layout.size() writable bytes, nothing live
            // in them yet; `dirty` is cut to them.
            unsafe { zero_large(p, dirty.min(layout.size())) };
        }
        p
    }

    /// The small-object fast path: pop the current span's free list.
    /// `LOCAL`: the caller is the owner (the local state); otherwise it
    /// holds the shared lock (the shared state). `any_block`: the request
    /// needs no more than 16-byte alignment, so a block of a larger class
    /// serves it as well (see [`HeapCore::borrow`]).
    #[inline(always)]
    pub(super) fn alloc_small<const LOCAL: bool>(&self, c: usize, any_block: bool) -> *mut u8 {
        if LOCAL {
            // SAFETY: LOCAL callers are the owner.
            if let Some(p) = unsafe { self.try_alloc_small_as_owner(c) } {
                return p.as_ptr();
            }
            return self.alloc_small_slow(&self.local, c, any_block);
        }
        if let Some((b, size)) = self.shared.pop_current(c) {
            self.shared.on_alloc_as::<false>(size);
            return b.as_ptr();
        }
        self.alloc_small_slow(&self.shared, c, false)
    }

    #[cold]
    #[inline(never)]
    pub(super) fn alloc_small_slow(&self, st: &ClassState, c: usize, any_block: bool) -> *mut u8 {
        if self.is_sealed() {
            return ptr::null_mut();
        }
        // A refusal noted before this call, by an allocation that then
        // succeeded another way (another span's blocks), is not this one's.
        self.spans.take_refusal();
        // The first span moved behind the others after a refused carving
        // (see below): met again as current, every span was tried.
        let mut first_rotated = None;
        // Whether what the owner holds went back after a refusal: once per
        // call (a span it retires empty may be taken again, uncarved).
        let mut gave_back = false;
        // A fine-only class of a heap not split yet takes the next class's
        // blocks, from that class's queue.
        let c = st.serving(c);
        loop {
            if let Some((b, size)) = st.pop_current(c) {
                st.on_alloc(size);
                return b.as_ptr();
            }
            let cur = st.current[c].get();
            if !ptr::eq(cur, &EMPTY.0) {
                // SAFETY: cur is a live meta of a span in this queue.
                let m = unsafe { &*cur };
                let idx = self.pages.idx_of(m);
                // Blocks other threads gave back are reused before fresh
                // ones are carved, which would make more pages resident.
                // (Only the owner's spans receive remote frees.)
                // (Counted down from the mark: a span whose blocks come
                // back from other threads is one its thread used, and is
                // kept when the thread leaves: `retire_unused_current`.)
                if st.kind == OWNER_LOCAL && self.collect_remote(m, idx, true) > 0 {
                    continue;
                }
                // Then a free block of a slightly larger class, before
                // carving more of this one's, when no other span of the
                // class has free blocks waiting in its queue.
                if any_block
                    && st.kind == OWNER_LOCAL
                    && m.next.get() == NONE
                    && m.extend.get() >= BORROW_AFTER
                    && m.block_size.get() >= BORROW_MIN
                {
                    if let Some(p) = self.borrow(st, c) {
                        return p;
                    }
                }
                if m.extend.get() < m.capacity.get() {
                    if !self.charge_extension(m) {
                        // Past the cap or the limit, with no free block
                        // here: what the owner holds goes back once
                        // (`give_back_held`: its cache's blocks, its empty
                        // spans); then the class's other spans, which may
                        // hold blocks freed since they ran dry, are tried
                        // in turn; then the allocation is refused.
                        if st.kind == OWNER_LOCAL && !gave_back {
                            gave_back = true;
                            // SAFETY: the local state's caller is the owner.
                            unsafe { self.give_back_held() };
                            // Tried again whatever it says went back: its
                            // collection may have put blocks on this very
                            // span (remote frees since the one above). A
                            // refusal noted is not this allocation's
                            // unless it recurs.
                            self.spans.take_refusal();
                            continue;
                        }
                        if m.next.get() != NONE && first_rotated != Some(idx) {
                            first_rotated.get_or_insert(idx);
                            st.rotate(&self.pages, c, idx);
                            continue;
                        }
                        self.refuse();
                        return ptr::null_mut();
                    }
                    ClassState::extend_free(&self.pages, m, idx);
                    st.borrowed[c].set(0);
                    continue;
                }
                // Dry: leave the queue until a free brings it back. Every
                // block is carved and none is on a list, so all are in use:
                // the count the span did not keep while current is exact.
                m.used.set(m.capacity.get());
                st.unlink(&self.pages, c, idx);
                // Only the state's owner moves it away from "not FULL".
                let generation = m.state.load(Ordering::Relaxed) & GENERATION;
                if st.kind == OWNER_LOCAL {
                    m.state.store(generation | FULL, Ordering::SeqCst);
                    chaos();
                    if self.remote().has_remote(idx, m)
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
                        st.push_back(&self.pages, c, idx);
                    }
                } else {
                    m.state.store(generation | FULL, Ordering::Relaxed);
                }
                continue;
            }
            if st.kind == OWNER_LOCAL {
                st.set_foreign_seen(self.others.foreign_freed_bytes.load(Ordering::Relaxed));
                if self.collect_pending() && !ptr::eq(st.current[c].get(), &EMPTY.0) {
                    continue;
                }
            }
            match self.new_small_span(st, c) {
                Some(idx) => st.push_back(&self.pages, c, idx),
                // Past a limit: what the owner holds goes back, and once
                // more.
                None if st.kind == OWNER_LOCAL && !gave_back => {
                    gave_back = true;
                    // SAFETY: the local state's caller is the owner.
                    unsafe { self.give_back_held() };
                    // As above: tried again.
                    self.spans.take_refusal();
                }
                None => {
                    self.refuse();
                    return ptr::null_mut();
                }
            }
        }
    }

    /// A free block of class `c + 1` or `c + 2`, at most half as large
    /// again as a block of class `c`, from those classes' current spans,
    /// for a request of class `c` whose current span has no free block;
    /// `None` if neither has one.
    ///
    /// Each class keeps resident the most blocks it ever had live at once,
    /// and classes peak at different times: a thread whose live blocks are
    /// spread over many classes holds the sum of their peaks, where
    /// glibc's one coalescing arena holds the peak of the sum. A class
    /// that takes its neighbours' free blocks before carving more of its
    /// own keeps fewer pages resident. In a simulation of the `threads`
    /// benchmark's `local` case (64 live blocks of 16 B – 4 KiB at
    /// random; `python3 crates/frostheap-bench/sim/class_peaks.py 400000`),
    /// the class pages per thread go from 496 to 368 KiB, for a peak of
    /// 172 KiB live; 2.4% of allocations borrow.
    ///
    /// **Only at the end of the class's queue.** A class whose current
    /// span has run dry with other spans of it waiting in its queue (each
    /// holding blocks freed since it ran dry) takes those first: what
    /// lending saves is memory not yet resident, and those blocks are. A
    /// heap at the scale of a real program's has many spans per class,
    /// and every block freed into one of them queues it; lending there
    /// only wastes the lent blocks' extra bytes and empties the
    /// neighbours' current spans sooner. In the `threads` benchmark's
    /// `working-set` case in C (25,000 live blocks of 16 B – 4 KiB per
    /// thread, replaced at random; six alternating runs of each), lending
    /// whenever the current span ran dry took 7% of the allocations, sent
    /// a quarter more of them down this slow path, and peaked at
    /// 122.5–122.8 MB; lending only at the end of the queue lends 0.4%,
    /// peaks at 119.0–119.2 MB (117.3 MB with no lending at all), and
    /// takes about a tenth less time. `local`, whose classes have one span
    /// each, lends as before (the same peak, 2,628–2,632 KiB).
    ///
    /// Only the owner borrows, only for classes of [`BORROW_MIN`] and
    /// more, only for requests aligned to at most 16 (a larger class's
    /// blocks may be less aligned than the class's), and only once the
    /// class has carved [`BORROW_AFTER`] blocks of its current span: a
    /// class used a block at a time (an allocation and a free in a loop)
    /// would otherwise take a neighbour's block on every allocation, each
    /// one through this slow path, since the block goes back to its own
    /// class when freed. The block stays its own class's: it is counted,
    /// freed and reported (`malloc_usable_size`) at its real size, from
    /// its span's meta.
    ///
    /// **Back and forth.** A lent block goes back to its own class when it
    /// is freed, so a class whose own blocks are all live and which then
    /// allocates and frees a block in turn would borrow the same block
    /// again on every allocation, each through this slow path (4 KiB pairs
    /// took about twice as long: `frostheap-bench --bin borrow_loop`). A
    /// class therefore borrows at most [`BORROW_RUN`] times in a row and
    /// then carves a block of its own, which the next pair finds on its
    /// own free list: such a loop costs at most 1,024 slow allocations
    /// once. The simulation keeps most of the gain with that cap (368 KiB
    /// against 352 without it; over 2 million steps, 396 against 372),
    /// where a cap of 32 would keep little of it (420 KiB): without a cap,
    /// the classes that borrow in `local` take 170 blocks for every block
    /// they carve.
    #[inline(never)]
    fn borrow(&self, st: &ClassState, c: usize) -> Option<*mut u8> {
        let run = st.borrowed[c].get();
        if run >= BORROW_RUN {
            return None;
        }
        let limit = CLASS_SIZE[c] as usize * 3 / 2;
        // The next two classes that have spans of their own (a fine-only
        // class not split yet has none).
        let next = (c + 1..N_CLASSES).filter(|&n| st.serving(n) == n).take(2);
        for n in next {
            let size = CLASS_SIZE[n];
            if size as usize > limit {
                break;
            }
            // The class's cached blocks first (only the owner borrows:
            // the cache is its own), then its current span's.
            let cached = self.own.pop(n).map(|b| (b, size as usize));
            if let Some((b, size)) = cached.or_else(|| st.pop_current(n)) {
                st.on_alloc(size);
                st.borrowed[c].set(run + 1);
                return Some(b.as_ptr());
            }
        }
        None
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
        unsafe { self.free_at(p, p as usize - self.pages.base) }
    }

    /// [`HeapCore::free`] for a caller that has already computed
    /// `offset = p - base` (the global allocator's ownership test does).
    ///
    /// # Safety
    /// 1. As for [`HeapCore::free`], and `offset == p as usize - base`.
    #[inline(always)]
    pub(crate) unsafe fn free_at(&self, p: *mut u8, offset: usize) {
        if self.is_owner() {
            // SAFETY: forwarded (1); we are the owner.
            return unsafe { self.free_at_as_owner(p, offset) };
        }
        chaos();
        let idx = offset >> PAGE_SHIFT;
        if self.pages.small_class(idx).is_some() {
            // A block of one of the owner's small spans: a remote free,
            // decided from the class map without reading the span's meta
            // line, which the owner writes on every allocation.
            #[cfg(debug_assertions)]
            self.debug_check_small_block(p, None);
            return self.remote().free(p);
        }
        // SAFETY: forwarded precondition (1).
        unsafe { self.free_slow(idx, p) }
    }

    /// [`HeapCore::free_at`] for a caller that knows it is the owner (the
    /// global allocator, for a block of the calling thread's own heap).
    ///
    /// # Safety
    /// 1. As for [`HeapCore::free_at`], and the calling thread is the owner.
    #[inline(always)]
    pub(crate) unsafe fn free_at_as_owner(&self, p: *mut u8, offset: usize) {
        crate::sync::invariant!(self.is_owner(), "free_at_as_owner by another thread");
        let idx = offset >> PAGE_SHIFT;
        let m = self.meta(idx);
        let kind_owner = u16::from_le_bytes([m.kind.get(), m.owner.get()]);
        if kind_owner == u16::from_le_bytes([Kind::Small as u8, OWNER_LOCAL]) {
            // SAFETY: by (1) p is a live block of this span; we are the
            // owner, who owns the local state.
            unsafe { self.push_free::<true>(&self.local, m, idx, p) };
            return;
        }
        if kind_owner == u16::from_le_bytes([Kind::Small as u8, OWNER_CACHED]) {
            // SAFETY: as above.
            return unsafe { self.free_own_cached(m, idx, p) };
        }
        // A block in a later page of a multi-page span (the classes above
        // 2 KiB take two pages: a quarter of their blocks and more lie past
        // the first): the head's meta, still on the fast path. The cold
        // path took 7% of a profile of the `working-set` case of the
        // `threads` benchmark, whose sizes run to 4 KiB; this path
        // executes about 8 instructions fewer per replacement there.
        if m.kind.get() == Kind::Cont as u8 {
            let head = m.head.get() as usize;
            let hm = self.meta(head);
            let kind_owner = u16::from_le_bytes([hm.kind.get(), hm.owner.get()]);
            if kind_owner == u16::from_le_bytes([Kind::Small as u8, OWNER_LOCAL]) {
                // SAFETY: as above: p is a live block of the span headed
                // by `hm`.
                unsafe { self.push_free::<true>(&self.local, hm, head, p) };
                return;
            }
            if kind_owner == u16::from_le_bytes([Kind::Small as u8, OWNER_CACHED]) {
                // SAFETY: as above.
                return unsafe { self.free_own_cached(hm, head, p) };
            }
        }
        // SAFETY: forwarded precondition (1).
        unsafe { self.free_slow(idx, p) }
    }

    /// Frees `blocks`, live blocks of this heap sorted by address, for a
    /// thread that is not the owner: the small ones a bitmap word at a
    /// time ([`Remote::free_sorted`]), anything else one by one.
    ///
    /// # Safety
    /// 1. Every block is a live block of this heap, freed once; the caller
    ///    is not the owner and not a runtime worker inside a phase.
    pub(crate) unsafe fn free_remote_sorted(&self, blocks: &[*mut u8]) {
        crate::sync::invariant!(blocks.is_sorted(), "free_remote_sorted of unsorted blocks");
        // SAFETY: forwarded (1).
        unsafe { self.remote().free_sorted(blocks, |p| self.free(p)) }
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
                unsafe { self.free_own_small(m, head, p) };
            }
            Kind::Small => self.remote().free(p),
            Kind::Large => self.free_large(m, head),
            _ => invalid_free(p),
        }
    }

    /// The owner's free of `p`, a block of its small span headed by `m`
    /// (page `idx`): into the owner's cache ([`super::own_cache`]) if the
    /// span is one of [`OWNER_CACHED`] and its class has room there, which
    /// touches neither the block nor the span; else onto the span's free
    /// list ([`HeapCore::push_free`]).
    ///
    /// # Safety
    /// 1. `p` is a live block of that span, a span of the local state, and
    ///    the calling thread is the owner.
    #[inline(always)]
    pub(super) unsafe fn free_own_small(&self, m: &PageMeta, idx: usize, p: *mut u8) {
        if m.owner.get() == OWNER_CACHED {
            // SAFETY: forwarded (1).
            return unsafe { self.free_own_cached(m, idx, p) };
        }
        // SAFETY: forwarded (1).
        unsafe { self.push_free::<true>(&self.local, m, idx, p) };
    }

    /// [`HeapCore::free_own_small`] for a span of [`OWNER_CACHED`]: out of
    /// line, so that the free inlined into a caller's loop (an explicit
    /// heap's `deallocate`) is, for the spans of a heap whose cache is
    /// off, the same instructions as before there was a cache (with the
    /// cache's test and push inline, the `alloc` benchmark's `Heap` rows
    /// took 2-6% longer, from the registers they took in the loop). A
    /// heap with the cache on is large, and its frees wait for memory,
    /// not for a call. `#[cold]`: the compiler tested for this span kind
    /// before the local one otherwise (the `Heap` pair rows 2.5% longer,
    /// `Global`'s 13%).
    ///
    /// # Safety
    /// 1. As for [`HeapCore::free_own_small`], and the span is one of
    ///    [`OWNER_CACHED`].
    #[cold]
    #[inline(never)]
    unsafe fn free_own_cached(&self, m: &PageMeta, idx: usize, p: *mut u8) {
        if self.own.push(m.class.get() as usize, p) {
            self.local.on_free_as::<true>(m.block_size.get() as usize);
            return;
        }
        // SAFETY: forwarded (1).
        unsafe { self.push_free::<true>(&self.local, m, idx, p) };
    }

    /// Gives every block of the owner's cache back to its span (counted
    /// free already): a trim, a thread giving its heap up, sealing, an
    /// allocation the limit refused.
    ///
    /// # Safety
    /// 1. The calling thread is the owner, on its owner path.
    #[inline(always)]
    pub(crate) unsafe fn flush_own_cache(&self) {
        if self.own.cached_blocks() > 0 {
            // SAFETY: (1).
            unsafe { self.flush_own_cache_now() };
        }
    }

    /// [`HeapCore::flush_own_cache`] of a cache that holds blocks: out of
    /// line and cold, so that a thread's exit (which flushes) runs none of
    /// it unless its heap grew past [`OWN_CACHE_FROM`].
    ///
    /// # Safety
    /// 1. As for [`HeapCore::flush_own_cache`].
    #[cold]
    #[inline(never)]
    unsafe fn flush_own_cache_now(&self) {
        crate::sync::invariant!(self.is_owner(), "flush_own_cache by another thread");
        self.own.drain(|p| {
            let (idx, m) = self
                .pages
                .head_of((p as usize - self.pages.base) >> PAGE_SHIFT);
            crate::sync::invariant!(
                m.kind() == Kind::Small && m.owner.get() == OWNER_CACHED,
                "a cached block outside the owner's cached spans"
            );
            // SAFETY: a cached block is handed out in its span (used
            // counts it) and free for the program: it goes back to its
            // span's free list as the owner's free would take it, without
            // a second count in the statistics. (1): we own the state.
            unsafe { self.link_free(&self.local, m, idx, p) };
        });
    }

    /// Stops caching the owner's frees for good and gives back what the
    /// cache holds (sealing).
    ///
    /// # Safety
    /// 1. The calling thread is the owner, on its owner path.
    pub(crate) unsafe fn give_up_own_cache(&self) {
        self.own.disable();
        // SAFETY: (1).
        unsafe { self.flush_own_cache() };
    }

    /// In a `fork` child, for a heap whose owner does not exist there:
    /// no thread owns it from now on, and none ever will. Its owner may
    /// have been anywhere in its lock-free paths when the process forked
    /// (a block half pushed on a span's free list, a span half moved
    /// between its class queues), so nothing may read the owner's state
    /// again: giving it up, as a thread that exits does, retired a span
    /// twice, and the child spun for good in a free-span bin turned into a
    /// ring. Other threads free its blocks as remote frees; what is shared
    /// (the span allocator, the pending stack, the bitmaps) stays
    /// consistent, as `fork` took the heap's locks, and goes back as for a
    /// thread that waits ([`HeapCore::retire_spans_freed_whole`], the
    /// process's growth hook, trims and the limit's reclaimer).
    ///
    /// # Safety
    /// 1. The calling thread is the only thread of the process (a `fork`
    ///    child), and the heap's owner is not the calling thread.
    pub(crate) unsafe fn orphan_after_fork(&self) {
        self.others.abandoned.store(false, Ordering::Relaxed);
        self.owner.store(ORPHAN, Ordering::Release);
    }

    /// Whether a `fork` left this heap without an owner for good
    /// ([`HeapCore::orphan_after_fork`]).
    pub(crate) fn is_orphan(&self) -> bool {
        self.owner_token() == ORPHAN
    }

    /// In a `fork` child, for a heap whose owner does not exist there:
    /// forgets the owner's cache, which `fork` may have cut in the middle
    /// of a push (its blocks stay handed out in their spans, and free in
    /// the statistics).
    ///
    /// # Safety
    /// 1. The calling thread is the only thread of the process.
    pub(crate) unsafe fn forget_own_cache_after_fork(&self) {
        self.own.disable();
        self.own.forget();
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
        st.on_free_as::<LOCAL>(m.block_size.get() as usize);
        // SAFETY: forwarded (1).
        unsafe { self.link_free(st, m, idx, p) };
    }

    /// [`HeapCore::push_free`] past the counting: the block onto the
    /// span's free list, out of its `used` count.
    ///
    /// # Safety
    /// 1. As for [`HeapCore::push_free`].
    #[inline(always)]
    unsafe fn link_free(&self, st: &ClassState, m: &PageMeta, idx: usize, p: *mut u8) {
        let b = p.cast::<Block>();
        // SAFETY: by (1) p is a live block; it becomes free, and its first
        // word the free-list link.
        unsafe { (*b).next = m.free.get() };
        m.free.set(b);
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
            chaos();
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
            st.push_back(&self.pages, c, idx);
        }
        if m.used.get() == 0 && !ptr::eq(st.current[c].get(), m) {
            st.unlink(&self.pages, c, idx);
            self.retire_span(idx);
        }
    }

    /// Debug builds: stops the process with a report unless `p` is the
    /// first byte of a block of one of the owner's small spans (of class
    /// `c`, if given), and the class map and the span's meta agree on it.
    /// The remote paths trust the class map alone, and the remote cache
    /// hands blocks out on another thread's word; this is where a stale
    /// entry or a block handed out twice shows first. Reads only fields
    /// fixed while a block of the span is live.
    #[cfg(debug_assertions)]
    pub(crate) fn debug_check_small_block(&self, p: *mut u8, c: Option<usize>) {
        let Some(offset) = (p as usize)
            .checked_sub(self.pages.base)
            .filter(|&o| o < self.pages.len)
        else {
            debug_invariant_broken("a block outside its heap", p, None);
        };
        let idx = offset >> PAGE_SHIFT;
        let Some(mapped) = self.pages.small_class(idx) else {
            debug_invariant_broken("the class map names no small span", p, None);
        };
        if c.is_some_and(|c| c != mapped) {
            debug_invariant_broken(
                "the class map disagrees with the caller's class",
                p,
                Some(("map's class", mapped)),
            );
        }
        let (head, m) = self.pages.head_of(idx);
        if m.kind() != Kind::Small || !owner_local(m.owner.get()) {
            debug_invariant_broken(
                "the class map names a span that is not the owner's small span",
                p,
                Some(("map's class", mapped)),
            );
        }
        if m.class.get() as usize != mapped {
            debug_invariant_broken(
                "the class map and the span's meta disagree",
                p,
                Some(("meta's class", m.class.get() as usize)),
            );
        }
        let into = p as usize - self.pages.page_addr(head);
        let size = m.block_size.get() as usize;
        if !into.is_multiple_of(size) || into / size >= m.capacity.get() as usize {
            debug_invariant_broken(
                "not a block boundary of its span",
                p,
                Some(("block size", size)),
            );
        }
    }

    // -----------------------------------------------------------------
    // Queries.

    /// Whether [`HeapCore::seal_allocation`] ran.
    #[inline]
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Moves the remote frees of the owner's small span headed by `m` (page
    /// `idx`) onto its free list and counts them as the owner's frees;
    /// returns how many (see [`Remote::collect`] for `account`). The bits
    /// leave the bitmap and enter the counters inside one owner update
    /// (its sequence counter odd), so a statistics reader, which counts the
    /// bitmap's bits as freed, sees the blocks in one place or the other,
    /// never in both or neither.
    pub(super) fn collect_remote(&self, m: &PageMeta, idx: usize, account: bool) -> u32 {
        if !self.remote().has_remote(idx, m) {
            return 0;
        }
        let mut n = 0;
        self.local.counters.owner_update(|| {
            n = self.remote().collect(m, idx, account);
            self.local.count_collected(n, m.block_size.get() as usize);
        });
        n
    }

    /// Remote frees of the blocks named by `bits` of bitmap word `word`,
    /// all live blocks of one of the owner's small spans, by a thread that
    /// is not the owner and not a runtime worker inside a phase (see
    /// [`super::remote_batch`]): one atomic OR for the word, one for its
    /// summary if it was empty, one look for FULL. A bit already set is a
    /// double free, reported.
    pub(crate) fn publish_remote(&self, word: usize, bits: u64) {
        let remote = self.remote();
        if let Some((head, m, generation)) = remote.publish_bits(word, bits) {
            remote.bring_back_if_full(m, head, generation);
        }
    }

    /// Brings back spans that received remote frees while FULL.
    pub(super) fn collect_pending(&self) -> bool {
        self.collect_pending_with(&mut |idx| self.retire_span(idx))
    }

    /// [`HeapCore::collect_pending`], `retire` returning the spans it
    /// leaves empty.
    #[inline]
    fn collect_pending_with(&self, retire: &mut dyn FnMut(usize)) -> bool {
        self.collect_taken_with(self.remote().take_pending(), retire)
    }

    /// [`HeapCore::collect_pending_with`] of the stack taken, `idx` its top.
    #[inline(never)] // one copy for its callers: the code a thread's exit runs fits one window
    fn collect_taken_with(&self, mut idx: u32, retire: &mut dyn FnMut(usize)) -> bool {
        chaos();
        let mut any = false;
        while idx != NONE {
            let m = self.meta(idx as usize);
            let next = m.pending_next.load(Ordering::Relaxed);
            // PENDING: no freer writes the state until this store.
            let generation = m.state.load(Ordering::Relaxed) & GENERATION;
            m.state.store(generation, Ordering::SeqCst);
            chaos();
            self.collect_remote(m, idx as usize, true);
            let c = m.class.get() as usize;
            if m.used.get() == 0 {
                retire(idx as usize);
            } else {
                self.local.push_back(&self.pages, c, idx as usize);
                any = true;
            }
            idx = next;
        }
        any
    }

    /// Collects the remote frees of every span in the owner's class queues
    /// but the current ones, and retires the spans that leaves empty; with
    /// `current_too` (a thread giving its heap up), the current spans too
    /// (whose `used` is not kept: [`HeapCore::current_is_empty`] counts
    /// their free lists). A trim leaves the current spans alone: they are
    /// where the class's next allocation goes, and a program that
    /// allocates and frees a block between two trims would otherwise
    /// commit a span and give it back at each trim. A span collects its
    /// remote frees only when it is current and dry (or
    /// when it filled up first: [`HeapCore::collect_pending`]), so a span
    /// whose last blocks other threads freed while it waited in its queue
    /// stayed a small span, committed, until the owner came back to it; in
    /// a heap given up by its thread, until another thread adopted it.
    /// (`global_routing own-cache`: a 40 MiB thread heap, an eighth of
    /// whose blocks another thread freed, kept 12 MiB committed with
    /// nothing in use after its thread exited, and after a trim.)
    ///
    /// The owner only (a trim, a thread giving its heap up).
    pub(super) fn collect_queued(&self, current_too: bool) {
        self.collect_queued_with(current_too, &mut |idx| self.retire_span(idx));
    }

    /// [`HeapCore::collect_queued`], `retire` returning the spans it
    /// leaves empty.
    #[inline(never)] // one copy for its callers: the code a thread's exit runs fits one window
    fn collect_queued_with(&self, current_too: bool, retire: &mut dyn FnMut(usize)) {
        let st = &self.local;
        for c in 0..N_CLASSES {
            let mut idx = st.head[c].get();
            while idx != NONE {
                let m = self.meta(idx as usize);
                let next = m.next.get();
                let current = ptr::eq(st.current[c].get(), m);
                if current && !current_too {
                    idx = next;
                    continue;
                }
                self.collect_remote(m, idx as usize, true);
                let empty = if current {
                    let empty = Self::current_is_empty(m);
                    if empty {
                        // Exact now; `unlink` makes the next span current.
                        m.used.set(0);
                    }
                    empty
                } else {
                    m.used.get() == 0
                };
                if empty {
                    st.unlink(&self.pages, c, idx as usize);
                    retire(idx as usize);
                }
                idx = next;
            }
        }
    }

    /// Whether a current span has no live block: every block carved is on
    /// its free list. Its `used` is not kept (see [`PageMeta::used`]), so
    /// this walks the list; the caller has put the owner's cache back and
    /// collected the span's remote frees first. A block another thread
    /// holds (in its remote cache, or lent to another class) is on no list
    /// and counts as live. Written when an exited thread's heap was found
    /// keeping about 2 MiB in its current spans with nothing in use
    /// (`working-set` in Rust, whose next threads start before the
    /// previous ones have given their heaps up).
    fn current_is_empty(m: &PageMeta) -> bool {
        let carved = m.extend.get();
        let mut n = 0u32;
        let mut b = m.free.get();
        while !b.is_null() && n < carved {
            n += 1;
            // SAFETY: b is a free block of the span (the owner's list), its
            // first word the link written when it was freed or carved.
            b = unsafe { (*b).next };
        }
        b.is_null() && n == carved
    }

    /// A fresh small span of class `c` for state `st`, or `None` past the
    /// limit (the caller counts the refusal if it gives up).
    pub(super) fn new_small_span(&self, st: &ClassState, c: usize) -> Option<usize> {
        let n_pages = span_pages(c);
        let mut spans = self.lock_spans();
        let (idx, lazy) = spans.alloc_small(n_pages)?;
        // Every bit of a span's pages is collected before the span can be
        // retired (`used` counts uncollected remote frees), so a new span
        // starts with none.
        crate::sync::invariant!(
            !self.remote().has_remote(idx, self.meta(idx)),
            "new span with remote frees"
        );
        st.init_span(&self.pages, idx, n_pages, c);
        // The pages its carving charges (under the span lock, as `offset`
        // is written; see PageMeta).
        self.meta(idx).offset.set(lazy as u32);
        if st.kind == OWNER_LOCAL {
            if !self.own.enabled() && self.charged() >= OWN_CACHE_FROM {
                // The cache's stacks, in the side table, are opened the
                // first time (should that fail, the cache stays off and
                // the next span tries again).
                // SAFETY: the side table's stacks are writable once opened
                // and live as long as the heap.
                unsafe { self.own.enable(|| self.spans.open_own_slots()) };
                // A large heap: finer classes waste less (heap::class).
                st.split_fine_classes();
            }
            // The owner's frees into a span made from now on go to the
            // owner's cache (the spans made before stay as they are: other
            // threads may read their meta).
            if self.own.enabled() {
                self.meta(idx).owner.set(OWNER_CACHED);
            }
        }
        Some(idx)
    }

    /// Charges what the span `m`'s next carving ([`ClassState::extend_free`])
    /// reaches into of the pages it took uncharged
    /// ([`super::span::Locked::alloc_small`]), in the steps of
    /// [`carved_charge`], up to its `offset` pages' worth. False, nothing
    /// charged, when the heap's cap or the process limit refuses.
    fn charge_extension(&self, m: &PageMeta) -> bool {
        let lazy = m.offset.get() as usize;
        if lazy == 0 {
            return true;
        }
        let (from, to) = ClassState::extension(m);
        let bytes = carved_charge(to, lazy) - carved_charge(from, lazy);
        bytes == 0 || self.lock_spans().charge_carved(bytes)
    }

    /// Returns an empty small span to the span allocator.
    pub(super) fn retire_span(&self, idx: usize) {
        self.retire_span_in(&mut self.lock_spans(), idx, Retire::AsUsual);
    }

    /// [`HeapCore::retire_span`] under `spans`, this heap's span lock held,
    /// giving back what `how` says ([`Locked::free_small`]).
    pub(super) fn retire_span_in(&self, spans: &mut Locked<'_>, idx: usize, how: Retire) {
        let m = self.meta(idx);
        crate::sync::invariant!(m.used.get() == 0, "retiring a span with live blocks");
        let n_pages = m.span_pages.get() as usize;
        let lazy = m.offset.get() as usize;
        let carved = m.extend.get() as usize * m.block_size.get() as usize;
        self.pages.set_small_class(idx, n_pages, None);
        // SAFETY: the span has no live block, and leaves its queue's
        // bookkeeping with this call (its pages become a free span);
        // `lazy` and `carved` are its own.
        unsafe { spans.free_small(idx, n_pages, lazy, carved, how) };
    }

    // -----------------------------------------------------------------
    // Large blocks.

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

    /// Allocates a large block; returns it and how many of its first bytes
    /// may hold anything but zeros (the rest is known zero).
    pub(super) fn alloc_large(&self, layout: Layout) -> (*mut u8, usize) {
        if self.is_sealed() {
            return (ptr::null_mut(), 0);
        }
        // As in alloc_small_slow: an earlier refusal is not this one's.
        self.spans.take_refusal();
        let Some(n_pages) = large::pages_for(layout, self.pages.len) else {
            if layout.size() <= self.pages.len {
                // The size fits the reservation, its alignment's slack does
                // not: the heap's range refuses it, whatever the limit (a
                // 16-byte block aligned to 1 GiB under a 64 MiB limit, whose
                // heaps' ranges are 128 MiB, was reported as the limit's
                // with nothing committed). `need`: the size and the slack.
                let need = layout
                    .size()
                    .saturating_add(layout.align().saturating_sub(PAGE_SIZE));
                self.spans.note_refusal(Refusal::Range, need);
            } else {
                // Larger than the reservation, which is at least the cap:
                // the cap's refusal, the process limit's when the cap is
                // the limit (a request larger than FROSTHEAP_MAX in global
                // mode).
                self.spans.cap_refused(0);
            }
            self.refuse();
            return (ptr::null_mut(), 0);
        };
        let owner = self.is_owner();
        let mut r = self.alloc_large_pages(layout, n_pages, owner);
        // Past a limit: what the owner holds goes back, and once more (a
        // refusal noted is not this allocation's unless it recurs).
        // SAFETY: the owner, on its owner path (allocating).
        if r.0.is_null() && owner && unsafe { self.give_back_held() } {
            self.spans.take_refusal();
            r = self.alloc_large_pages(layout, n_pages, owner);
        }
        if r.0.is_null() {
            self.refuse();
        }
        r
    }

    /// [`HeapCore::alloc_large`] of `n_pages`, once; null past a limit,
    /// not counted.
    fn alloc_large_pages(&self, layout: Layout, n_pages: usize, owner: bool) -> (*mut u8, usize) {
        let state = if owner { OWNER_LOCAL } else { OWNER_SHARED };
        // The block is laid out under the span lock, as a small span is
        // (`new_small_span`): until its metas say Large and Cont, a thread
        // freeing a neighbouring span must not find them in any state of
        // their free life.
        let mut spans = self.lock_spans();
        let taken = if layout.align() > PAGE_SIZE {
            spans
                .alloc_aligned(n_pages, layout.align())
                .map(|(idx, zero)| (idx, if zero { 0 } else { n_pages }))
        } else {
            spans.alloc(n_pages)
        };
        let Some((idx, dirty_pages)) = taken else {
            return (ptr::null_mut(), 0);
        };
        chaos();
        let (addr, usable) = large::place(&self.pages, idx, n_pages, layout.align(), state);
        drop(spans);
        if owner {
            self.local.on_alloc(usable);
        } else {
            self.shared.on_alloc(usable);
        }
        // The dirty pages' end, less the block's offset into its run.
        let dirty_end = self.pages.page_addr(idx) + dirty_pages * PAGE_SIZE;
        (addr as *mut u8, dirty_end.saturating_sub(addr))
    }

    /// Frees the large block whose span `m` heads (page `idx`).
    pub(super) fn free_large(&self, m: &PageMeta, idx: usize) {
        if !self.is_owner()
            && crate::guard::defer_free(
                (self.pages.page_addr(idx) + m.offset.get() as usize) as *mut u8,
            )
        {
            return;
        }
        let n_pages = m.span_pages.get() as usize;
        let usable = large_usable(m);
        if m.owner.get() == OWNER_SHARED {
            self.shared.on_free(usable);
        } else if self.is_owner() {
            self.local.on_free(usable);
        } else {
            self.others
                .foreign_freed_bytes
                .fetch_add(usable, Ordering::Relaxed);
            self.others
                .foreign_freed_count
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.others.abandoned.load(Ordering::Relaxed) {
            // Into a heap whose thread exited (a worker's results, the
            // vector that held them): kept, and counted like the spans
            // frees bring back, so that the process gives back what the
            // heaps may not keep. Given back at once as a live heap's
            // thresholds say, a worker's 48 MiB freed after it exited
            // went back but 2 MiB as the vector that held them went, and
            // the next worker committed it all again.
            // SAFETY: as below.
            unsafe { self.lock_spans().free_kept(idx, n_pages) };
            self.others.brought_back.store(true, Ordering::Relaxed);
            process::brought_back_while_abandoned(n_pages);
            return;
        }
        // SAFETY: the span's block is freed: nothing in it is live.
        unsafe { self.lock_spans().free(idx, n_pages) };
    }

    /// Grows or shrinks the large block whose span `m` heads (page `idx`)
    /// in place to `new_size` bytes, counting the change; false when it
    /// cannot grow where it is.
    pub(super) fn resize_large_in_place(&self, m: &PageMeta, idx: usize, new_size: usize) -> bool {
        let n_pages = (m.offset.get() as usize + new_size.max(1)).div_ceil(PAGE_SIZE);
        if n_pages == m.span_pages.get() as usize {
            return true;
        }
        let mut spans = self.lock_spans();
        let Some((old, new)) = large::resize_in_place(&mut spans, &self.pages, m, idx, new_size)
        else {
            // Not a refused allocation (the block moves instead, or the
            // caller's allocation fails and counts itself).
            self.spans.take_refusal();
            return false;
        };
        self.count_large_resize(m.owner.get(), old, new);
        true
    }

    /// Counts a large block allocated by the state `owner` whose usable
    /// size went from `old` to `new` bytes, in place or moved.
    #[inline]
    fn count_large_resize(&self, owner: u8, old: usize, new: usize) {
        if owner == OWNER_SHARED {
            self.shared.on_resize(old, new);
        } else if self.is_owner() {
            self.local.on_resize(old, new);
        } else if new < old {
            self.others
                .foreign_freed_bytes
                .fetch_add(old - new, Ordering::Relaxed);
        } else {
            // A growth by a foreign thread of an owner block: count it as
            // shared so the owner's plain counters stay untouched.
            self.shared.on_resize(0, new - old);
        }
    }

    /// Grows the large block whose span `m` heads (page `idx`), which
    /// cannot grow where it is, to `new_size` bytes by moving its pages
    /// to a free run of the heap's range ([`Locked::move_run`]) instead
    /// of copying them into a new block: the growth alone is charged, so a
    /// block of 60% of the limit grows to 70% (copied, it needed 130%),
    /// and its pages are not copied. Returns the block's new address
    /// (its contents up to its old size kept, its usable size counted as
    /// a resize), or null when it must be copied: a block of less than
    /// [`MOVE_FROM`] bytes, aligned past a heap page, in a heap a phase
    /// froze, or one that [`Locked::move_run`] does not move.
    ///
    /// # Safety
    /// 1. The block is live and the caller's: no other thread reads or
    ///    writes it meanwhile.
    #[cold]
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(super) unsafe fn move_large(&self, m: &PageMeta, idx: usize, new_size: usize) -> *mut u8 {
        let n = m.span_pages.get() as usize;
        let new_n = new_size.div_ceil(PAGE_SIZE);
        // A phase's freeze (by either backend) marks the heap's guard
        // entry before its workers run; a move would write the frozen
        // memory past the fault that makes a write a violation.
        if n * PAGE_SIZE < MOVE_FROM
            || m.offset.get() != 0
            || new_n <= n
            || crate::guard::entry_of(self.pages.base).is_some_and(|e| e.is_frozen())
        {
            return ptr::null_mut();
        }
        let owner = m.owner.get();
        let mut spans = self.lock_spans();
        // SAFETY: (1): the block's span, with no offset, is the caller's.
        let Some(dest) = (unsafe { spans.move_run(idx, n, new_n) }) else {
            // Not a refused allocation: the block is copied instead, and
            // that allocation counts itself.
            self.spans.take_refusal();
            return ptr::null_mut();
        };
        // Laid out before the lock is released, as a new block is.
        let (addr, _) = large::place(&self.pages, dest, new_n, PAGE_SIZE, owner);
        drop(spans);
        self.count_large_resize(owner, n * PAGE_SIZE, new_n * PAGE_SIZE);
        addr as *mut u8
    }

    /// Grows `p`, a large block of `from`, another heap of the same
    /// reservation (another thread's heap of the arena, running, exited
    /// or adopted since), to `new_size` bytes by moving its pages into
    /// this heap, the calling thread's own ([`Locked::move_in`]), instead
    /// of copying them into a new block and freeing it remotely: the
    /// growth alone is charged, and the block changes heap. `from` counts
    /// it freed by another thread (as a large block's remote free) and
    /// this heap allocated by its owner, so both heaps' statistics stay
    /// exact. Returns the block's new address (its contents up to its old
    /// size kept), or null when it must be copied: a block of less than
    /// [`MOVE_FROM`] bytes, aligned past a heap page, or not growing past
    /// its pages; either heap sealed, frozen by a phase, tagged with a
    /// protection key (a moved mapping keeps its key), laid out for huge
    /// pages; or one that [`Locked::move_in`] does not move.
    ///
    /// Both span locks are held for the move, taken in address order
    /// (the order `fork`'s handler takes them in, slot by slot), so that
    /// neither heap's freeze or key tagging, which take its span lock,
    /// starts meanwhile; `from`'s is the lock a remote free of a large
    /// block takes ([`HeapCore::free_large`]).
    ///
    /// # Safety
    /// 1. The calling thread is this heap's owner, and not a runtime worker
    ///    inside a phase.
    /// 2. `p` is a live block of `from`, the caller's: no other thread
    ///    reads, writes or frees it meanwhile.
    #[cold]
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(crate) unsafe fn move_large_in(
        &self,
        from: &HeapCore,
        p: *mut u8,
        new_size: usize,
    ) -> *mut u8 {
        crate::sync::invariant!(self.is_owner(), "move_large_in by another thread");
        if ptr::eq(self, from) || self.is_sealed() || from.is_sealed() {
            return ptr::null_mut();
        }
        let (idx, m) = from
            .pages
            .head_of((p as usize - from.pages.base) >> PAGE_SHIFT);
        let n = m.span_pages.get() as usize;
        let new_n = new_size.div_ceil(PAGE_SIZE);
        if m.kind() != Kind::Large || n * PAGE_SIZE < MOVE_FROM || m.offset.get() != 0 || new_n <= n
        {
            return ptr::null_mut();
        }
        let unguarded = |base: usize| {
            crate::guard::entry_of(base).is_none_or(|e| !e.is_frozen() && e.key() == 0)
        };
        let (mut mine, mut theirs) = if self.pages.base < from.pages.base {
            let mine = self.lock_spans();
            (mine, from.lock_spans())
        } else {
            let theirs = from.lock_spans();
            (self.lock_spans(), theirs)
        };
        // Under both span locks: a runtime's key tagging and a freeze's
        // mark take them.
        if !unguarded(self.pages.base) || !unguarded(from.pages.base) {
            return ptr::null_mut();
        }
        let owner = m.owner.get();
        // SAFETY: (2): the block's span, with no offset, is the caller's,
        // in another heap of the arena.
        let Some(dest) = (unsafe { mine.move_in(&mut theirs, idx, n, new_n) }) else {
            drop((mine, theirs));
            // Not a refused allocation: the block is copied instead, and
            // that allocation counts itself.
            self.spans.take_refusal();
            return ptr::null_mut();
        };
        // Laid out before the lock is released, as a new block is.
        let (addr, usable) = large::place(&self.pages, dest, new_n, PAGE_SIZE, OWNER_LOCAL);
        drop((mine, theirs));
        // (1): the owner counts its own allocation.
        self.local.on_alloc(usable);
        if owner == OWNER_SHARED {
            from.shared.on_free(n * PAGE_SIZE);
        } else {
            from.others
                .foreign_freed_bytes
                .fetch_add(n * PAGE_SIZE, Ordering::Relaxed);
            from.others
                .foreign_freed_count
                .fetch_add(1, Ordering::Relaxed);
        }
        addr as *mut u8
    }
}
