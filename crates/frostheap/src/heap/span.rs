//! The span allocator: runs of pages for small spans and large blocks,
//! and the region's committed prefix.
//!
//! A *span* is a run of 64 KiB pages: free, a small-object span (blocks of
//! one size class), or a large allocation. Free spans live in 44
//! segregated bins (exact for 1..=16 pages, then one per power of two)
//! with a bitmap of non-empty bins, and coalesce with their neighbours
//! through boundary tags in the page table (the head page records the
//! length, the tail page points at the head) — Doug Lea's layout, kept
//! outside the user's memory.
//!
//! [`SpanAllocator`] owns the span lock, the bins and the region; every
//! operation on them goes through [`Locked`], which exists only while the
//! lock is held, so "the caller holds the span lock" is a type, not a
//! comment. The region's committed prefix only changes here, under the
//! same lock.
//!
//! **Giving memory back** follows the JVM's `MaxHeapFreeRatio`: free
//! memory is returned only when it clearly outweighs what is live. The free
//! top of the region is decommitted when it is at least 8 MiB *and* more
//! than twice everything live below it (free > 2/3 of committed; the JVM's
//! default is 70%), keeping max(2 MiB, live/2) as headroom, unless the
//! range grew again since the last such decommit (then the top stays
//! within the purge bound: [`Locked::top_shrink_due`]); free spans
//! elsewhere are purged (`MADV_DONTNEED`) once free resident memory passes
//! max(32 MiB, 2 × live), down to half that. A program that frees
//! everything gets its memory back; one that frees and reuses a large
//! buffer every round (a result vector, a batch) keeps it resident instead
//! of zero-filling it again each time.
//!
//! **What is charged.** Memory is charged against the heap's own cap
//! (`max`, less [`crate::Heap::charge_external`]'s bytes) and the process
//! limit ([`super::process`]) when a span first uses it, and released when
//! it stops holding memory: the free top when it is decommitted, and a
//! free span anywhere when it is purged. Pages the region commits as it
//! grows, and a purged span, keep their place in the committed range (the
//! range stays one prefix, which a freeze protects with one call) but hold
//! no memory, so they are *uncharged*; the part of them taken — for a
//! large block or an in-place growth — is charged first, whole. A small
//! span taken from a free span none of whose pages is charged is charged
//! as its blocks are carved, in power-of-two steps from an OS page up to
//! its size ([`carved_charge`], [`Locked::alloc_small`],
//! [`Locked::charge_carved`]; the span's `offset` says how many of its
//! pages were taken so): a thread that holds a few blocks in each of
//! twenty classes is charged for the twenty OS pages they lie in, not for
//! twenty 64 KiB pages (and, before, for its region's first 1 MiB step).
//! Every other live span is charged whole. `charged` is what
//! [`super::Stats::committed`] reports; the committed range less `charged`
//! ([`super::Stats::purged`]) holds no memory. The
//! heap's pre-committed minimum (`min`, `FROSTHEAP_MIN`) stays charged
//! even when purged, as the top never shrinks below it. In a region laid
//! out for huge pages, where one touch may make 2 MiB resident, small
//! spans are charged whole too.
//!
//! Each free span's head counts how many of its pages are uncharged — a
//! count, not which ones. One rule keeps it honest (never more uncharged
//! pages than pages that hold no memory and lie above the minimum):
//! coalescing adds the counts, and a part cut off a free span — taken for
//! use, or decommitted at the top — takes as much of the count as it has
//! pages, the rest staying with what is left. So a part taken for use is
//! charged min(count, its pages), and a decommit releases only the pages
//! still charged (nothing is released twice). The count can understate (a
//! purged span merged with a dirty neighbour, then cut), which
//! over-charges until that span's next purge, which sets the count to the
//! whole span again. A retired small span that was charged as it was
//! carved gives back uncharged the pages its carving never reached, and
//! the rest of the last page it reached is charged then, so that its free
//! span, like any, counts whole pages; past the cap or the limit that last
//! page is purged instead and goes back uncharged too (a free is never
//! refused; only if the kernel refuses the purge is the rest, less than a
//! page, charged over the limit: [`Locked::free_small`]).
//!
//! **When a charge is refused** — by the heap's cap or the process limit —
//! a reuse first takes another free span that needs no charge if one fits;
//! then (for a growth too) the heap gives back its own free memory
//! ([`Locked::release_free`]: dirty free spans purged, every free page
//! above the minimum uncharged; clean pages were not touched since they
//! were committed or purged, so uncharging them needs no call), then asks the reclaimer for the other heaps' (their
//! free tops decommitted, their free spans released the same way), trying
//! once more after each step: the path a growth takes. If that still
//! fails the allocation fails (`OutOfMemory`, counted in the heap's
//! `refused`). Purging does not start earlier as the process nears its
//! limit: below the limit a resident free span refuses nobody, and at the
//! limit every free page a heap holds is given back before anything is
//! refused, except those of heaps whose span lock is busy at that moment.
//! A refused carving of a small span gives the owner's cached blocks back
//! to their spans, then turns to the class's other spans, which may hold
//! blocks freed since they ran dry, before the allocation is refused
//! (`HeapCore::alloc_small_slow`).

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::Ordering;

use core::sync::atomic::{AtomicU8, AtomicUsize};

use super::own_cache::OwnSlots;
use super::page::{Kind, PageMeta, PageTable, CLASSES_END, DIRTY, META_SKEW, NONE, REMOTE_WORDS};
use super::process;
use crate::os::{self, OsError};
use crate::region::{round_up, Region, PAGE_SHIFT, PAGE_SIZE};
use crate::sync::{LockGuard, RawLock};

/// Decommit the region's top once at least this much, and more than twice
/// what is live below it, is free there.
const SHRINK_AT: usize = 8 << 20;
/// ... keeping max(this, live / 2) committed above the last live span.
const KEEP_ON_TOP: usize = 2 << 20;
/// Purge free spans once free resident memory passes max(this, 2 × live).
pub(super) const PURGE_RETAIN: usize = 32 << 20;
/// ... but, once the heap has taken clean pages again since the last purge
/// (faulting memory in, a sign that purge was wasted), no sooner than this
/// after it, unless it passes twice that or the process is within twice
/// that of its limit (a purge put off is done at the heap's next check
/// past this time, its next span freed; a trim or a refused charge gives
/// it all back at once): a program that frees a batch and
/// makes it again, round after round (a garbage collector's), reuses what
/// it freed instead of faulting it in again each round
/// ([`Locked::maybe_purge`]).
const PURGE_SPACING_NS: u64 = 100_000_000;
/// How long after a purge (or a decommit of the free top) the memory that
/// went back and was taken again keeps what is free resident
/// ([`Locked::purge_excess`], [`Locked::top_shrink_due`]): within twice
/// that much, nothing goes back until this has passed, and then at the
/// heap's next check (its next span freed). A program whose live memory
/// falls to nothing and comes back, again and again, faults its memory in
/// once a second at most; one that stops doing so gets its free memory
/// back a second later. (Half a minute in the unit tests, whose rounds
/// run for seconds in an emulated guest.)
pub(super) const WASTE_WINDOW_NS: u64 = if cfg!(test) {
    30_000_000_000
} else {
    1_000_000_000
};

/// Free memory above [`PURGE_RETAIN`] that stayed free this long — no
/// allocation took it, however much is live — is purged at the heap's
/// next span freed or taken after that ([`Locked::maybe_decay`]): the
/// thresholds above keep up to twice what is live resident and free, for
/// as long as the program runs. (Half a minute in the unit tests, as
/// [`WASTE_WINDOW_NS`].)
pub(super) const DECAY_NS: u64 = if cfg!(test) {
    30_000_000_000
} else {
    1_000_000_000
};

/// Monotonic nanoseconds as the decay's clocks keep them (a heap's window,
/// `process`'s time of the last exit that kept memory): milliseconds,
/// wrapping after 49 days, never 0 (0: none), so that each fits 32 bits.
#[inline]
pub(super) fn decay_clock(ns: u64) -> u32 {
    ((ns / 1_000_000) as u32).max(1)
}

/// Whether [`DECAY_NS`] has passed from `from` to `now` (both
/// [`decay_clock`] readings).
#[inline]
pub(super) fn decay_window_ended(from: u32, now: u32) -> bool {
    u64::from(now.wrapping_sub(from)) * 1_000_000 >= DECAY_NS
}

/// A heap whose thread exits with less free memory resident than this
/// purges it all ([`Locked::give_back_but_warm`]): a few spans, a few
/// calls, and what the next thread faults in again is little. Kept, it
/// was resident still where nothing needed it: in `larson`'s second
/// round, whose threads adopt the first round's heaps and find their
/// blocks in what the main thread freed into them, the C program's peak
/// was 6% higher.
pub(crate) const WARM_FROM: usize = 1 << 20;

/// What a small span retired gives back at once ([`Locked::free_small`]).
#[derive(Clone, Copy)]
pub(super) enum Retire {
    /// What the heap's thresholds say: its free top decommitted past
    /// [`SHRINK_AT`], its free spans purged past [`PURGE_RETAIN`].
    AsUsual,
    /// Its carved pages purged at once if it was taken uncharged: a heap
    /// giving back everything it holds free.
    Purged,
    /// Nothing: a heap giving back what it holds free but what it may keep
    /// for its next thread, which [`Locked::give_back_but_warm`] decides
    /// once every span is retired (a worker's 48 MiB of results, freed into
    /// its heap after it exited, went back as the thresholds said, 2 MiB
    /// kept on top, and the next worker committed the rest again).
    Kept,
}

/// Number of free-span bins.
const N_BINS: usize = 44;

/// How much free memory a heap takes back into use, in pages, between two
/// runs of the reuse hook ([`process::reused`]): 4 MiB, a step of growth.
const REUSE_STEP_PAGES: usize = (4 << 20) / PAGE_SIZE;

/// The bin for a free span of `n` pages.
#[inline]
fn bin_of(n: usize) -> usize {
    crate::sync::invariant!(n > 0, "bin_of(0)");
    if n <= 16 {
        n - 1
    } else {
        let log = (usize::BITS - 1 - n.leading_zeros()) as usize;
        (16 + log - 4).min(N_BINS - 1)
    }
}

/// A count of pages as the [`Spans`] keep it: saturating at `u16::MAX`.
fn pages16(pages: usize) -> u16 {
    pages.min(u16::MAX as usize) as u16
}

/// The free-span bins.
struct Spans {
    /// Head page of each bin's list.
    bins: [u32; N_BINS],
    /// Bit `b` set iff `bins[b] != NONE`.
    nonempty: u64,
    /// Pages of free spans that may be resident (not yet purged).
    dirty_pages: usize,
    /// Pages of all free spans.
    free_pages: usize,
    /// When the heap last gave free memory back by its thresholds: the
    /// last purge of [`Locked::maybe_purge`], or decommit of the free top
    /// ([`Locked::top_shrink_due`]) (monotonic ns).
    gave_back_at: u64,
    /// Dirty pages (free memory the heap kept resident) taken since the
    /// reuse hook last ran ([`process::reused`]).
    reused_pages: usize,
    /// Pages of clean spans (purged, or never touched) taken since that
    /// purge (at least 1 once the region grew: some were), and pages that
    /// purge purged ...
    clean_taken_pages: u16,
    purged_pages: u16,
    /// ... pages that decommit of the free top gave back (0: none yet),
    /// and pages the region grew by since. (Page counts of 64 KiB,
    /// saturating at 4 GiB: the heap's whole state lies in a static slot,
    /// which its size bounds.)
    shrunk_pages: u16,
    regrown_pages: u16,
    /// When the current decay window began (monotonic ms, wrapping after
    /// 49 days; 0: none, what is free and resident is within
    /// [`PURGE_RETAIN`]), and the fewest dirty pages free since: what of
    /// them is above the retained part stayed free the whole window
    /// ([`Locked::maybe_decay`]). (32 bits each: as the counts above.)
    decay_from: u32,
    decay_low: u32,
}

/// The span allocator of one heap: the span lock and what it protects —
/// the free-span bins, the region (its committed length only changes
/// here), how far the side table is open, and the page-table fields
/// written "under the span lock" (see [`PageMeta`]). It owns the region and
/// the side-table mapping, and gives both back when dropped.
pub(crate) struct SpanAllocator {
    lock: RawLock,
    spans: UnsafeCell<Spans>,
    /// Pages whose page-table entries and bitmap words are writable: the
    /// side table is mapped read-only (zeros: `Kind::Unused`, no remote
    /// frees) and opened as the region's committed prefix grows, so it is
    /// charged in proportion to committed memory, not to `max`.
    tables_open: Cell<usize>,
    region: Region,
    /// The side-table mapping, `table_bytes` long: the class map growing
    /// down from `CLASSES_END` of the OS page that holds the metas' start
    /// (`metas_offset`, at `META_SKEW` of that page), then the metas, then
    /// the bitmap from `bits_offset`, then the owner's cache's stacks
    /// from `own_offset` (an OS page boundary) to the end.
    table: *mut u8,
    table_bytes: usize,
    metas_offset: usize,
    bits_offset: usize,
    own_offset: usize,
    /// The heap's own cap (`max`).
    limit: usize,
    /// What the region's commits are charged as against the process limit.
    kind: process::Kind,
    /// Bytes charged for the region: the committed range less what of it
    /// is uncharged — free pages, and the part of small spans their
    /// carving has not reached (see the module doc). Written under the
    /// span lock; read by statistics without it.
    charged: AtomicUsize,
    /// What refused a commit since [`SpanAllocator::take_refusal`] last
    /// looked (a [`Refusal`], the most telling kept): the heap counts a
    /// refusal in the process's statistics (the process limit's), and
    /// records its cause ([`SpanAllocator::last_refusal`]), only when the
    /// allocation fails in the end (it may go on to give back what its
    /// owner holds, and succeed).
    refused: AtomicU8,
    /// The bytes the commit `refused` names asked for: the charge the cap
    /// or the limit refused, the range the reservation had no room for
    /// (0 when unknown).
    refused_need: AtomicUsize,
    /// The cause of the heap's last refused allocation
    /// ([`SpanAllocator::refused_for_good`]), for the line that reports it,
    /// and the bytes its commit asked for.
    last_refusal: AtomicU8,
    last_need: AtomicUsize,
}

/// What refused a heap's commit, least telling first: an allocation that
/// met several causes on its way is reported by the last of them in this
/// order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub(crate) enum Refusal {
    /// Nothing refused (a heap sealed at a `fork`, or none yet).
    None = 0,
    /// The heap's own cap (`max`), below the process limit: an explicit
    /// heap built with a smaller `max` (noted, so that `Heap::try_alloc`'s
    /// error tells it from the process limit's). The least telling cause:
    /// any other met on the way says more (a cap of the global
    /// allocator's heaps below the limit, which was noted as nothing,
    /// still leaves them to name the cause).
    Cap = 1,
    /// The kernel refused to commit pages of the range (`mprotect` or
    /// `mmap` failed: the overcommit policy, `vm.max_map_count`).
    System = 2,
    /// The heap's range has no free run of the pages asked for, though
    /// they fit under its cap: the blocks it holds pin the range.
    Range = 3,
    /// The process limit, or a heap cap that is the limit
    /// ([`SpanAllocator::cap_is_process_limit`]).
    Limit = 4,
}

impl Refusal {
    fn from_u8(v: u8) -> Refusal {
        match v {
            1 => Refusal::Cap,
            2 => Refusal::System,
            3 => Refusal::Range,
            4 => Refusal::Limit,
            _ => Refusal::None,
        }
    }
}

impl SpanAllocator {
    /// The span allocator of a heap on `region`, whose side table is the
    /// `table_bytes` at `table` (the metas from `metas_offset`, the class
    /// map below them, the bitmap from `bits_offset`, the owner's cache's
    /// stacks from `own_offset`); no free span yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        region: Region,
        table: *mut u8,
        table_bytes: usize,
        metas_offset: usize,
        bits_offset: usize,
        own_offset: usize,
        limit: usize,
        kind: process::Kind,
    ) -> SpanAllocator {
        SpanAllocator {
            lock: RawLock::new(),
            spans: UnsafeCell::new(Spans {
                bins: [NONE; N_BINS],
                nonempty: 0,
                dirty_pages: 0,
                free_pages: 0,
                gave_back_at: 0,
                clean_taken_pages: 0,
                purged_pages: 0,
                reused_pages: 0,
                shrunk_pages: 0,
                regrown_pages: 0,
                decay_from: 0,
                decay_low: 0,
            }),
            tables_open: Cell::new(0),
            table,
            table_bytes,
            metas_offset,
            bits_offset,
            own_offset,
            limit,
            kind,
            // The pre-committed minimum, charged by the caller.
            charged: AtomicUsize::new(region.committed()),
            refused: AtomicU8::new(Refusal::None as u8),
            refused_need: AtomicUsize::new(0),
            last_refusal: AtomicU8::new(Refusal::None as u8),
            last_need: AtomicUsize::new(0),
            region,
        }
    }

    /// What refused a commit since the last call ([`Refusal::None`] if
    /// nothing did); clears it.
    pub(super) fn take_refusal(&self) -> Refusal {
        // A load first: the common case (nothing refused) writes nothing.
        if self.refused.load(Ordering::Relaxed) == Refusal::None as u8 {
            return Refusal::None;
        }
        Refusal::from_u8(self.refused.swap(Refusal::None as u8, Ordering::Relaxed))
    }

    /// Notes what refused a commit, `why`, and the bytes it asked for,
    /// `need` (0 if unknown), unless something more telling did since the
    /// last [`SpanAllocator::take_refusal`] (a later commit refused for the
    /// same cause replaces the earlier one's bytes). The span lock's
    /// holder, or the owner on a path that refuses before taking it (a
    /// request larger than the reservation): a load and a store, not a
    /// read-modify-write, as the two at once can only cost the line its
    /// most telling cause.
    // A call, not inlined, laid with the rare code (layout.ld): the
    // growth paths that call it run in every process.
    #[inline(never)]
    pub(super) fn note_refusal(&self, why: Refusal, need: usize) {
        if self.refused.load(Ordering::Relaxed) <= why as u8 {
            self.refused.store(why as u8, Ordering::Relaxed);
            self.refused_need.store(need, Ordering::Relaxed);
        }
    }

    /// The allocation under way is refused in the end: what refused its
    /// commits ([`SpanAllocator::take_refusal`]) becomes the cause of the
    /// heap's last refusal ([`SpanAllocator::last_refusal`]), and is
    /// returned.
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(super) fn refused_for_good(&self) -> Refusal {
        let need = self.refused_need.load(Ordering::Relaxed);
        let why = self.take_refusal();
        let need = if why == Refusal::None { 0 } else { need };
        self.last_refusal.store(why as u8, Ordering::Relaxed);
        self.last_need.store(need, Ordering::Relaxed);
        why
    }

    /// What refused the heap's last refused allocation (its last commit
    /// refused on the way).
    pub(super) fn last_refusal(&self) -> Refusal {
        Refusal::from_u8(self.last_refusal.load(Ordering::Relaxed))
    }

    /// The bytes the last refused allocation's refused commit asked for
    /// (see [`SpanAllocator::last_refusal`]; 0 when unknown).
    pub(super) fn last_refusal_need(&self) -> usize {
        self.last_need.load(Ordering::Relaxed)
    }

    /// Whether the heap's cap is the process limit (to the page): a heap
    /// whose `max` is the limit, as the main and thread heaps of global
    /// mode are. A charge such a cap refuses, the process could not have
    /// taken either, so it counts as the process limit's refusal
    /// ([`Locked::cap_refused`]); a cap below the limit (a heap built
    /// with a smaller `max`) refuses on its own account.
    pub(super) fn cap_is_process_limit(&self) -> bool {
        let cap = self.limit.min(self.region.reserved()) & !(PAGE_SIZE - 1);
        cap >= process::limit() & !(PAGE_SIZE - 1)
    }

    /// The heap's cap refused `need` bytes (0 if unknown): noted as the
    /// process limit's refusal when the cap is the limit
    /// ([`SpanAllocator::cap_is_process_limit`]), for the heap to count it
    /// in the process's statistics if the allocation fails in the end; as
    /// the cap's own otherwise. A main heap refused at `FROSTHEAP_MAX` is
    /// refused by its own cap, the limit, before the process's counters
    /// are asked; it counted no process refusal.
    pub(super) fn cap_refused(&self, need: usize) {
        if self.cap_is_process_limit() {
            self.note_refusal(Refusal::Limit, need);
        } else {
            self.note_refusal(Refusal::Cap, need);
        }
    }

    /// Opens the owner's cache's stacks at the side table's end (its own
    /// pages: `own_offset` to `table_bytes`); `None` if the kernel refuses.
    /// Called by the owner, once, as its cache first turns on.
    pub(super) fn open_own_slots(&self) -> Option<core::ptr::NonNull<OwnSlots>> {
        let at = self.table.wrapping_add(self.own_offset);
        // SAFETY: [own_offset, table_bytes) is page-aligned, non-empty and
        // inside the side-table mapping, and holds nothing else; opening
        // takes no access away.
        unsafe {
            os::protect(
                at,
                self.table_bytes - self.own_offset,
                os::Access::ReadWrite,
            )
        }
        .ok()?;
        core::ptr::NonNull::new(at.cast::<OwnSlots>())
    }

    /// The span lock itself, for `fork` handlers.
    pub(super) fn raw_lock(&self) -> &RawLock {
        &self.lock
    }

    /// The region.
    #[inline]
    pub(super) fn region(&self) -> &Region {
        &self.region
    }

    /// The heap's own cap (`max`).
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Takes the span lock: the allocator for a heap whose page table is
    /// `pages` and whose external charges are `external`.
    pub(super) fn lock<'a>(&'a self, pages: PageTable, external: &'a AtomicUsize) -> Locked<'a> {
        let guard = self.lock.lock();
        self.locked(pages, external, guard)
    }

    /// [`SpanAllocator::lock`] if the span lock is free at once.
    pub(super) fn try_lock<'a>(
        &'a self,
        pages: PageTable,
        external: &'a AtomicUsize,
    ) -> Option<Locked<'a>> {
        let guard = self.lock.try_lock()?;
        Some(self.locked(pages, external, guard))
    }

    fn locked<'a>(
        &'a self,
        pages: PageTable,
        external: &'a AtomicUsize,
        guard: LockGuard<'a>,
    ) -> Locked<'a> {
        Locked {
            pages,
            alloc: self,
            // SAFETY: the span lock, held until `guard` drops with the
            // `Locked`, owns `spans`: no other reference to it exists.
            spans: unsafe { &mut *self.spans.get() },
            external,
            _guard: guard,
        }
    }

    /// Bytes charged for the region (the committed range less its
    /// uncharged pages and bytes).
    pub(super) fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Gives back every free page of the heap if the span lock is free
    /// (another heap needs room under the process limit): the free top
    /// decommitted, the other free spans released
    /// ([`Locked::give_back_all`]). Returns the bytes no longer charged.
    pub(super) fn try_give_back(&self, pages: PageTable, external: &AtomicUsize) -> usize {
        let Some(guard) = self.lock.try_lock() else {
            return 0;
        };
        self.give_back_all_locked(pages, external, guard)
    }

    /// [`SpanAllocator::try_give_back`], waiting for the span lock: a trim
    /// the program asked for. Returns the bytes no longer charged.
    pub(super) fn give_back(&self, pages: PageTable, external: &AtomicUsize) -> usize {
        let guard = self.lock.lock();
        self.give_back_all_locked(pages, external, guard)
    }

    /// [`Locked::give_back_all`] under `guard`, the span lock; returns the
    /// bytes no longer charged.
    fn give_back_all_locked(
        &self,
        pages: PageTable,
        external: &AtomicUsize,
        guard: LockGuard<'_>,
    ) -> usize {
        let before = self.charged();
        let mut spans = self.locked(pages, external, guard);
        spans.give_back_all();
        // Under the lock: the owner may commit as soon as it is released.
        let after = self.charged();
        drop(spans);
        before.saturating_sub(after)
    }

    /// Bytes of free spans (committed, not in use by any block's span).
    pub(super) fn free_bytes(&self) -> usize {
        let _g = self.lock.lock();
        // SAFETY: we hold the span lock, which owns `spans`.
        unsafe { (*self.spans.get()).free_pages * PAGE_SIZE }
    }

    /// Runs `f(committed)` under the span lock (the committed length
    /// cannot change meanwhile).
    pub(super) fn commit_lock_and<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _g = self.lock.lock();
        f(self.region.committed())
    }

    /// Freeze, step 1: mark the region frozen so pages committed from now
    /// on are committed read-only.
    pub(super) fn freeze_mark(&self) {
        let _g = self.lock.lock();
        self.region.mark_frozen(true);
    }

    /// Thaw, step 2: clear the mark, and open pages committed since step 1
    /// (`thawed`).
    pub(super) fn thaw_unmark(&self, thawed: usize) -> Result<(), OsError> {
        let _g = self.lock.lock();
        self.region.mark_frozen(false);
        self.region
            .protect_range(thawed, self.region.committed(), false)
    }

    /// Freezes (mprotect read-only) or thaws the committed prefix; returns
    /// the length protected.
    pub(super) fn set_frozen(&self, frozen: bool) -> Result<usize, OsError> {
        let _g = self.lock.lock();
        self.region.set_frozen(frozen)
    }
}

impl Drop for SpanAllocator {
    fn drop(&mut self) {
        process::release(self.kind, self.charged());
        // SAFETY: the side table was mapped for this heap with this length
        // and nothing refers to it once the heap is dropped. The region
        // gives its own range back.
        unsafe { os::unmap(self.table, self.table_bytes) };
    }
}

/// A span allocator with its lock held, for a heap whose page table is
/// `pages`.
pub(super) struct Locked<'a> {
    pages: PageTable,
    alloc: &'a SpanAllocator,
    spans: &'a mut Spans,
    external: &'a AtomicUsize,
    _guard: LockGuard<'a>,
}

/// What [`Locked::find`] found.
enum Fit {
    /// The first page of a run taken, and whether it is known zero.
    Taken(usize, bool),
    /// No free span is long enough.
    NoSpan,
    /// Spans are long enough, but the charge the one chosen needed was
    /// refused even after everything was given back.
    Refused,
}

/// Uncharged pages of the free span headed by `m` (see the module doc).
#[inline]
fn uncharged(m: &PageMeta) -> usize {
    m.offset.get() as usize
}

/// What a small span that took `lazy` pages uncharged
/// ([`Locked::alloc_small`]) has charged for them once `carved` bytes
/// from its start are carved: the OS pages the carving reached, rounded up
/// to a power of two (4, 8, 16, 32 KiB, …: a 64 KiB span carved to its end
/// is charged five times, not sixteen, and never for more than twice what
/// it reached), and at most the `lazy` pages.
pub(super) fn carved_charge(carved: usize, lazy: usize) -> usize {
    if carved == 0 {
        return 0;
    }
    round_up(carved, os::page_size())
        .next_power_of_two()
        .min(lazy * PAGE_SIZE)
}

impl Locked<'_> {
    /// Takes a run of `pages` free pages, committing more if needed, and
    /// charges what it takes that was not charged. Returns the first page
    /// and how many of the run's first pages may hold anything but zeros
    /// (0: the run is known zero; the pages after those are); `None` when
    /// the heap's cap or the process limit refuses.
    ///
    /// A run the growth makes out of the dirty free span at the top and
    /// the pages committed for it is dirty in that span's pages alone: the
    /// pages above the committed range read as zero (never touched, or
    /// decommitted with their contents dropped). A block of 256 MiB freed
    /// (its top decommitted down to a dirty first 2 MiB) and taken again
    /// by `calloc` was zeroed whole, every page faulted in to be written
    /// with zeros: 150 ms a call where glibc's fresh mapping takes none.
    pub(super) fn alloc(&mut self, pages: usize) -> Option<(usize, usize)> {
        let run = self.alloc_run(pages);
        if run.is_some() {
            // A program that frees no span for a while still allocates.
            self.maybe_decay();
        }
        run
    }

    /// [`Locked::alloc`] but for the decay's check.
    #[inline(always)]
    fn alloc_run(&mut self, pages: usize) -> Option<(usize, usize)> {
        match self.find(pages) {
            Fit::Taken(idx, zero) => return Some((idx, if zero { 0 } else { pages })),
            Fit::Refused => return None,
            Fit::NoSpan => {}
        }
        let top_dirty = self.dirty_top_span();
        if !self.grow(pages) {
            return None;
        }
        match self.find(pages) {
            Fit::Taken(idx, true) => Some((idx, 0)),
            Fit::Taken(idx, false) => Some((
                idx,
                match top_dirty {
                    // No free span held the run before the growth, so the
                    // one that holds it now is the top span it extended.
                    Some((head, n)) if head == idx => n.min(pages),
                    _ => pages,
                },
            )),
            Fit::NoSpan | Fit::Refused => None,
        }
    }

    /// The free span that ends at the top of the committed range, if it is
    /// dirty: its head and pages. Laid with the rare code (layout.ld): a
    /// large block's growth of the range.
    #[inline(never)]
    fn dirty_top_span(&self) -> Option<(usize, usize)> {
        let head = self.top_free_head(self.alloc.region.committed() >> PAGE_SHIFT)?;
        let m = self.pages.meta(head);
        (m.flags.get() & DIRTY != 0).then(|| (head, m.span_pages.get() as usize))
    }

    /// The head page of the free span whose last page is the last of the
    /// `top` pages committed, if there is one.
    #[inline]
    fn top_free_head(&self, top: usize) -> Option<usize> {
        let last = self.pages.meta(top.checked_sub(1)?);
        match last.kind() {
            Kind::FreeTail => Some(last.head.get() as usize),
            Kind::FreeSpan => Some(top - 1),
            _ => None,
        }
    }

    /// [`Locked::alloc`] of a run of `pages` pages whose first page's
    /// address is a multiple of `align` (a power of two above a page):
    /// the run is cut out of a free span that holds it (the parts before
    /// and after it stay free), so that only its own pages are taken and
    /// charged. A large block aligned beyond a page used to take `size +
    /// align - 64 KiB` and hold the slack: `posix_memalign` of 4 KiB at 4
    /// MiB charged 4 MiB a block (64 of them filled a 256 MiB limit with
    /// 2 MiB resident), and 2 MiB blocks at 2 MiB took twice their size.
    /// Returns the run's first page and whether it is known zero.
    #[inline(never)] // laid with the rare code (layout.ld): no process's start runs it
    pub(super) fn alloc_aligned(&mut self, pages: usize, align: usize) -> Option<(usize, bool)> {
        let fit = match self.aligned_fit(pages, align) {
            Some(fit) => fit,
            None => {
                // Room for the run wherever the growth's alignment falls.
                let slack = align / PAGE_SIZE - 1;
                if !self.grow(pages.checked_add(slack)?) {
                    return None;
                }
                self.aligned_fit(pages, align)?
            }
        };
        let (idx, at) = fit;
        // A count says how many pages hold no memory, not which (the
        // module doc), and a cut out of the middle must know which: a dirty
        // span with some of its pages uncharged is purged first, so that
        // every page of it above the minimum holds none.
        let m = self.pages.meta(idx);
        let u = uncharged(m);
        if m.flags.get() & DIRTY != 0 && u > 0 && u < m.span_pages.get() as usize {
            self.purge_span(idx);
        }
        let need = |l: &Self| l.inside_counts(idx, at, pages).1 * PAGE_SIZE;
        let bytes = need(self);
        if bytes > 0 && !self.try_charge(bytes) && !self.give_back_and_charge(need) {
            return None;
        }
        // SAFETY: idx heads a free span holding [at, at + pages) (giving
        // back purges and uncharges spans, it does not move them).
        Some((at, unsafe { self.take_inside(idx, at, pages) }))
    }

    /// The first free span, in bin order, holding a run of `pages` pages
    /// that starts at an address aligned to `align`: its head and the
    /// run's first page.
    #[inline(never)]
    fn aligned_fit(&self, pages: usize, align: usize) -> Option<(usize, usize)> {
        self.first_span(pages, |i, m| {
            let addr = self.pages.page_addr(i);
            let at = i + (round_up(addr, align) - addr) / PAGE_SIZE;
            (at + pages <= i + m.span_pages.get() as usize).then_some((i, at))
        })
    }

    /// Takes `[at, at + pages)` out of the free span headed at `idx`, its
    /// charge already made; the parts before and after it stay free, each
    /// dirty as the span was. Returns whether the run is known zero.
    ///
    /// # Safety
    /// 1. `idx` heads a free span, in its bin, that holds `[at, at + pages)`.
    #[inline(never)]
    unsafe fn take_inside(&mut self, idx: usize, at: usize, pages: usize) -> bool {
        let m = self.pages.meta(idx);
        let n = m.span_pages.get() as usize;
        let dirty = m.flags.get() & DIRTY != 0;
        let (ub, _, ua) = self.inside_counts(idx, at, pages);
        let (before, after) = (at - idx, idx + n - at - pages);
        // SAFETY: (1); the parts before and after the run are free,
        // committed and out of every bin once the span is removed.
        unsafe {
            self.remove(idx);
            if before > 0 {
                self.insert(idx, before, dirty, ub);
            }
            if after > 0 {
                self.insert(at + pages, after, dirty, ua);
            }
        }
        // As in `take`: nothing of the run may read as free once the lock
        // is released, before its caller lays it out.
        self.pages.meta(at).set_kind(Kind::Unused);
        if pages > 1 {
            self.pages.meta(at + pages - 1).set_kind(Kind::Unused);
        }
        self.took(dirty, pages);
        !dirty
    }

    /// The uncharged pages of the three parts [`Locked::take_inside`] cuts
    /// the free span headed at `idx` into — before the run at `at`, the
    /// run, after it — by position: the pages above the region's minimum,
    /// where the span's count says all of them hold no memory (a clean
    /// span, whose count is its pages above the minimum, or one uncharged
    /// whole), none where it says none does. A dirty span with only some
    /// pages uncharged, which `alloc_aligned` purges first, keeps its
    /// count in that order: the run, then before, then after (as a cut
    /// from the front gives it, see the module doc), should its purge have
    /// failed.
    #[inline(never)]
    fn inside_counts(&self, idx: usize, at: usize, pages: usize) -> (usize, usize, usize) {
        let m = self.pages.meta(idx);
        let n = m.span_pages.get() as usize;
        let u = uncharged(m);
        let min_pages = self.alloc.region.min_committed() >> PAGE_SHIFT;
        let above = |from: usize, len: usize| len - min_pages.saturating_sub(from).min(len);
        let (before, after) = (at - idx, idx + n - at - pages);
        if u == above(idx, n) {
            return (
                above(idx, before),
                above(at, pages),
                above(at + pages, after),
            );
        }
        let run = u.min(pages);
        let ub = (u - run).min(before);
        (ub, run, (u - run - ub).min(after))
    }

    /// Takes a run of `pages` free pages for a small span, committing more
    /// if needed. Taken from a free span whose pages are all uncharged
    /// (the region's growth, a span purged whole), none of them is charged
    /// now: the span charges them as its blocks are carved
    /// ([`Locked::charge_carved`], in the steps of [`carved_charge`]), so
    /// that a span of which a thread uses three blocks counts the OS page
    /// they lie in, not its 64 KiB pages. From any other free span (a
    /// count says how many of its pages hold no memory, not which) the
    /// run is charged as [`Locked::alloc`] charges it; so is every run in
    /// a region laid out for huge pages, where one touch may make 2 MiB
    /// resident. Returns the first page and how many pages are left to the
    /// carving (all or none); `None` when the heap's cap or the process
    /// limit refuses, the reservation is full or the kernel refuses the
    /// commit.
    pub(super) fn alloc_small(&mut self, pages: usize) -> Option<(usize, usize)> {
        if !self.alloc.region.huge_layout() {
            // One search, and one more only after a growth.
            let fit = match self.first_fit(pages, false) {
                Some(idx) => Some(idx),
                None if self.grow(pages) => Some(self.first_fit(pages, false)?),
                None => None,
            };
            if let Some(idx) = fit {
                let m = self.pages.meta(idx);
                if uncharged(m) == m.span_pages.get() as usize {
                    // SAFETY: idx heads a free span of at least `pages`
                    // pages, in its bin, none of which holds memory or lies
                    // below the minimum (the count's rule): the carving
                    // charges them.
                    unsafe { self.take(idx, pages) };
                    return Some((idx, pages));
                }
            }
        }
        self.alloc(pages).map(|(idx, _)| (idx, 0))
    }

    /// Charges `bytes` that a small span's carving reaches into the pages
    /// [`Locked::alloc_small`] left to it, giving back free memory if the
    /// heap's cap or the process limit refuses; false (nothing charged,
    /// the refusal counted) when that fails too.
    pub(super) fn charge_carved(&mut self, bytes: usize) -> bool {
        self.try_charge(bytes) || self.give_back_and_charge(|_| bytes)
    }

    /// Frees the `pages` pages of a retired small span that
    /// [`Locked::alloc_small`] took with `lazy` pages left to its carving
    /// (all or none), of which `carved` bytes (from the span's start) were
    /// carved: the pages past the last one carved into were never touched,
    /// and go back uncharged. A free span counts whole pages, so the rest
    /// of the last page carved into (less than a page) is charged now, or,
    /// past the heap's cap or the process limit, that page is purged and
    /// goes back uncharged too (a free is never refused); what the
    /// carving charged ahead past that page ([`carved_charge`]) is
    /// released. With [`Retire::Purged`] (a heap giving back what it
    /// holds: a thread leaving it, a refusal), the pages carved into are
    /// purged instead, and the whole span goes back uncharged, to be taken
    /// as it was; with [`Retire::Kept`], the heap's thresholds for giving
    /// back its free top and purging its free spans are not looked at.
    ///
    /// # Safety
    /// 1. As for [`Locked::free`]; `lazy` and `carved` are the span's.
    pub(super) unsafe fn free_small(
        &mut self,
        idx: usize,
        pages: usize,
        lazy: usize,
        carved: usize,
        how: Retire,
    ) {
        let mut charged_lazily = carved_charge(carved, lazy);
        let touched = carved.div_ceil(PAGE_SIZE).min(lazy);
        if matches!(how, Retire::Purged) && lazy == pages && touched > 0 {
            let start = self.pages.page_addr(idx) as *mut u8;
            // SAFETY: the span is retired: nothing live is in its pages.
            if unsafe { os::purge(start, touched * PAGE_SIZE) }.is_ok() {
                self.release(charged_lazily);
                // SAFETY: forwarded (1); every page holds no memory now
                // and, taken uncharged, lies above the region's minimum.
                return unsafe { self.free_with(idx, pages, false, true, pages) };
            }
        }
        let mut clean = lazy - touched;
        let mut counted = touched * PAGE_SIZE;
        if counted > charged_lazily {
            let top_up = counted - charged_lazily;
            crate::sync::invariant!(top_up < PAGE_SIZE, "topping up {top_up} bytes");
            if self.try_charge(top_up) {
                charged_lazily = counted;
            } else {
                // At the cap or the limit: the last page carved into is
                // purged instead, and goes back uncharged with those past
                // it. Should the kernel refuse the purge, the rest of the
                // page is counted past the limit rather than not at all.
                let last = self.pages.page_addr(idx + touched - 1) as *mut u8;
                // SAFETY: the span is retired: nothing live is in its pages.
                if unsafe { os::purge(last, PAGE_SIZE) }.is_ok() {
                    clean += 1;
                    counted -= PAGE_SIZE;
                } else {
                    self.add_charged(top_up);
                    process::charge_over(self.alloc.kind, top_up);
                    charged_lazily = counted;
                }
            }
        }
        self.release(charged_lazily - counted);
        let give_back = !matches!(how, Retire::Kept);
        // SAFETY: forwarded (1); the `clean` pages past the carving hold no
        // memory and, taken uncharged, lie above the region's minimum.
        unsafe { self.free_with(idx, pages, true, give_back, clean) }
    }

    /// The first free span of at least `pages` pages, in bin order (with
    /// `charged_only`, the first whose pages are all charged).
    fn first_fit(&self, pages: usize, charged_only: bool) -> Option<usize> {
        self.first_span(pages, |idx, m| {
            (m.span_pages.get() as usize >= pages && (!charged_only || uncharged(m) == 0))
                .then_some(idx)
        })
    }

    /// The first `Some` that `take` gives for a free span (its head and
    /// meta), in bin order from the bin of `pages` up.
    #[inline(always)]
    fn first_span<R>(
        &self,
        pages: usize,
        mut take: impl FnMut(usize, &PageMeta) -> Option<R>,
    ) -> Option<R> {
        let b = bin_of(pages);
        let mut mask = self.spans.nonempty & !((1u64 << b) - 1);
        while mask != 0 {
            let bin = mask.trailing_zeros() as usize;
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                let m = self.pages.meta(idx as usize);
                if let Some(r) = take(idx as usize, m) {
                    return Some(r);
                }
                idx = m.next.get();
            }
            mask &= mask - 1;
        }
        None
    }

    /// Bytes to charge for taking the first `pages` pages of the free span
    /// headed at `idx`.
    fn charge_to_take(&self, idx: usize, pages: usize) -> usize {
        uncharged(self.pages.meta(idx)).min(pages) * PAGE_SIZE
    }

    /// Takes the first `pages` pages of the free span headed at `idx`, its
    /// charge already made; returns whether they are known zero.
    ///
    /// # Safety
    /// 1. `idx` heads a free span of at least `pages` pages, in its bin.
    unsafe fn take(&mut self, idx: usize, pages: usize) -> bool {
        let m = self.pages.meta(idx);
        let n = m.span_pages.get() as usize;
        let dirty = m.flags.get() & DIRTY != 0;
        let u = uncharged(m);
        // SAFETY: (1); the tail beyond `pages` is free and committed.
        unsafe {
            self.remove(idx);
            if n > pages {
                // The part taken takes the count first (see the module doc).
                self.insert(idx + pages, n - pages, dirty, u - u.min(pages));
            }
        }
        // Its last page may still say FreeTail, from this free span or an
        // older one merged into it: a span freed right after it would read
        // that as a free neighbour and take the pages back (`free_with`
        // looks at the page before the span it frees, `trim` at the top's
        // last page). Nothing of the taken span may read as free once the
        // lock is released, before its caller lays it out.
        if pages > 1 {
            self.pages.meta(idx + pages - 1).set_kind(Kind::Unused);
        }
        self.took(dirty, pages);
        if dirty {
            self.spans.reused_pages += pages;
            if self.spans.reused_pages >= REUSE_STEP_PAGES {
                self.spans.reused_pages = 0;
                process::reused();
            }
        }
        !dirty
    }

    /// Notes a run of `pages` taken, `dirty` or clean
    /// ([`Locked::purge_excess`]).
    #[inline]
    fn took(&mut self, dirty: bool, pages: usize) {
        if !dirty {
            self.spans.clean_taken_pages =
                self.spans.clean_taken_pages.saturating_add(pages16(pages));
        } else {
            let left = u32::try_from(self.spans.dirty_pages).unwrap_or(u32::MAX);
            self.spans.decay_low = self.spans.decay_low.min(left);
        }
    }

    fn find(&mut self, pages: usize) -> Fit {
        let Some(idx) = self.first_fit(pages, false) else {
            return Fit::NoSpan;
        };
        let need = self.charge_to_take(idx, pages);
        if need > 0 && !self.try_charge(need) {
            // Refused: a span that needs no charge, if one fits; else give
            // back what can be and charge again (the path of a growth).
            if let Some(other) = self.first_fit(pages, true) {
                // SAFETY: other heads a free span of at least `pages` pages.
                return Fit::Taken(other, unsafe { self.take(other, pages) });
            }
            if !self.give_back_and_charge(|l| l.charge_to_take(idx, pages)) {
                return Fit::Refused;
            }
        }
        // SAFETY: idx heads a free span of at least `pages` pages (giving
        // back purges and uncharges spans, it does not move them).
        Fit::Taken(idx, unsafe { self.take(idx, pages) })
    }

    /// The heap's cap on charged bytes: `max` rounded down to a page (and
    /// the reservation).
    fn cap(&self) -> usize {
        self.alloc.limit.min(self.alloc.region.reserved()) & !(PAGE_SIZE - 1)
    }

    /// The heap's cap refused a charge of `need` bytes
    /// ([`SpanAllocator::cap_refused`]).
    fn cap_refused(&self, need: usize) {
        self.alloc.cap_refused(need);
    }

    /// Whether `bytes` more fit under the heap's cap, with its external
    /// charges.
    fn fits(&self, bytes: usize) -> bool {
        self.alloc
            .charged()
            .saturating_add(self.external.load(Ordering::Relaxed))
            .saturating_add(bytes)
            <= self.cap()
    }

    /// Records `bytes` charged to the process for this heap.
    fn add_charged(&mut self, bytes: usize) {
        let c = &self.alloc.charged;
        c.store(c.load(Ordering::Relaxed) + bytes, Ordering::Relaxed);
    }

    /// Releases `bytes` of this heap's charge (decommitted or purged).
    fn release(&mut self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let c = &self.alloc.charged;
        let cur = c.load(Ordering::Relaxed);
        crate::sync::invariant!(cur >= bytes, "released {bytes} of {cur} charged bytes");
        c.store(cur - bytes, Ordering::Relaxed);
        process::release(self.alloc.kind, bytes);
    }

    /// Charges `bytes` if the heap's cap and the process limit both take
    /// them; nothing charged otherwise (and no refusal noted: the caller
    /// goes on to [`Locked::give_back_and_charge`], which notes one if
    /// that fails too).
    fn try_charge(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        if !self.fits(bytes) || !process::charge_quiet(self.alloc.kind, bytes) {
            return false;
        }
        self.add_charged(bytes);
        true
    }

    /// After a refused [`Locked::try_charge`]: gives back this heap's free
    /// memory ([`Locked::release_free`]), then, for the process limit,
    /// other heaps' (the reclaimer), charging `need(self)` bytes — computed
    /// after the first step, which may have uncharged the very pages being
    /// taken — once more after each. False (nothing charged) when both
    /// fail; a failure by the process limit (not the heap's own cap) is
    /// then noted, for the heap to count one refused allocation if it
    /// fails in the end ([`SpanAllocator::take_refusal`]).
    fn give_back_and_charge(&mut self, need: impl Fn(&Self) -> usize) -> bool {
        let released = self.release_free();
        let bytes = need(self);
        if bytes == 0 {
            return true;
        }
        if !self.fits(bytes) {
            self.cap_refused(bytes);
            return false; // the heap's own cap: other heaps cannot help
        }
        let kind = self.alloc.kind;
        if (released > 0 && process::charge_quiet(kind, bytes))
            || process::reclaim_and_charge(kind, bytes)
        {
            self.add_charged(bytes);
            return true;
        }
        self.alloc.note_refusal(Refusal::Limit, bytes);
        false
    }

    /// Commits enough to hold a span of `pages` at the top of the region.
    #[inline(always)]
    fn grow(&mut self, pages: usize) -> bool {
        self.grow_for(pages, 0)
    }

    /// [`Locked::grow`] for a caller that gives back `credit` charged
    /// bytes once it has the span (a large block moving,
    /// [`Locked::move_run`]): what the range's growth must fit under the
    /// heap's cap is the span less that.
    fn grow_for(&mut self, pages: usize, credit: usize) -> bool {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let committed = region.committed();
        let top = committed >> PAGE_SHIFT;
        // A free span touching the top counts towards the request.
        let top_free = self
            .top_free_head(top)
            .map_or(0, |head| pt.meta(head).span_pages.get() as usize);
        // The reservation bounds the committed range; the heap's cap bounds
        // what is charged (purged pages inside the range are not).
        let end = region.reserved() & !(PAGE_SIZE - 1);
        let want = committed + (pages - top_free.min(pages)) * PAGE_SIZE;
        if want > end {
            // The reservation is full; when the request does not fit
            // under the cap either, once the heap's own free memory is
            // given back, the cap refused it. Given back first: in a
            // region laid out for huge pages a free span stays charged
            // until it is purged, and 7 MiB of them, kept after a 91 MiB
            // block was freed, had a 92 MiB request under
            // `FROSTHEAP_MAX=100M` that no free run of the range held
            // reported as the limit's refusal, with 2 MiB in use.
            let charge = (pages * PAGE_SIZE).saturating_sub(credit);
            if !self.fits(charge) {
                self.release_free();
            }
            if self.fits(charge) {
                a.note_refusal(Refusal::Range, pages * PAGE_SIZE);
            } else {
                self.cap_refused(charge);
            }
            return false;
        }
        let chunk = if region.huge_layout() {
            crate::os::HUGE_PAGE_SIZE
        } else {
            1 << 20
        };
        let chunk = chunk.max(round_up(committed / 8, chunk));
        let room = self
            .cap()
            .saturating_sub(a.charged() + self.external.load(Ordering::Relaxed))
            & !(PAGE_SIZE - 1);
        let target = round_up(want, chunk).min(end).min(committed + room);
        if region.huge_layout() {
            // A region laid out for huge pages: a touch of one span may
            // make its whole 2 MiB resident (and a switch to huge pages
            // collapses the committed range), so the whole growth is
            // charged now, as the region commits it.
            let target = if target >= want && process::charge_quiet(a.kind, target - committed) {
                self.add_charged(target - committed);
                target
            } else if self.try_charge(want - committed)
                || self.give_back_and_charge(|_| want - committed)
            {
                want
            } else {
                return false;
            };
            if self.open_tables(target >> PAGE_SHIFT).is_err() || region.grow_to(target).is_err() {
                self.release(target - committed);
                a.note_refusal(Refusal::System, 0);
                return false;
            }
            self.note_growth((target - committed) >> PAGE_SHIFT);
            // SAFETY: the new pages are committed, free, in no span, and
            // charged.
            unsafe { self.free_with(top, (target - committed) >> PAGE_SHIFT, false, false, 0) };
            return true;
        }
        // Nothing is charged here: the new pages hold no memory until a
        // span takes them, which charges them (a small span as its blocks
        // are carved). What was asked must fit under the heap's cap, with
        // the heap's own free memory given back if need be, before
        // anything is committed for it; the process limit is met at the
        // take.
        let asked = (want - committed).saturating_sub(credit);
        if !self.fits(asked) {
            self.release_free();
            if !self.fits(asked) {
                self.cap_refused(asked);
                return false;
            }
        }
        let target = target.max(want);
        if self.open_tables(target >> PAGE_SHIFT).is_err() || region.grow_to(target).is_err() {
            a.note_refusal(Refusal::System, 0);
            return false;
        }
        self.note_growth((target - committed) >> PAGE_SHIFT);
        // SAFETY: the new pages are committed, free, in no span, and were
        // never touched: none holds memory, all lie above the minimum.
        unsafe { self.free_clean(top, (target - committed) >> PAGE_SHIFT) };
        true
    }

    /// Makes the page-table entries, bitmap words and class-map bytes of
    /// pages `0..pages` writable (they only ever open: a shrunk region
    /// keeps them).
    pub(super) fn open_tables(&mut self, pages: usize) -> Result<(), OsError> {
        let open = self.alloc.tables_open.get();
        if pages <= open {
            return Ok(());
        }
        let a = self.alloc;
        let ps = os::page_size();
        let table = a.table;
        let meta = core::mem::size_of::<PageMeta>();
        // The class map grows down from `classes_end`, on the metas' first
        // OS page (`first`), which the first call opens with the metas:
        // only the map's bytes below it (pages past the 2,048th) open on
        // their own.
        let first = a.metas_offset - META_SKEW;
        let classes_end = first + CLASSES_END;
        // The OS pages holding [lo, hi), up to `limit`.
        let os_pages =
            |lo: usize, hi: usize, limit: usize| (lo & !(ps - 1), round_up(hi, ps).min(limit));
        let bits = REMOTE_WORDS * 8;
        for (start, end) in [
            os_pages(
                a.metas_offset + open * meta,
                a.metas_offset + pages * meta,
                a.table_bytes,
            ),
            os_pages(
                a.bits_offset + open * bits,
                a.bits_offset + pages * bits,
                a.table_bytes,
            ),
            os_pages(classes_end - pages, classes_end - open, first),
        ] {
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
        self.alloc.tables_open.set(pages);
        Ok(())
    }

    /// Adds a free run `[idx, idx + pages)` to its bin (no coalescing), of
    /// which `uncharged` pages are not charged.
    ///
    /// # Safety
    /// 1. The pages are committed, hold no live block, and are in no span;
    ///    `uncharged <= pages`, and as many of them hold no memory and lie
    ///    above the region's minimum.
    pub(super) unsafe fn insert(
        &mut self,
        idx: usize,
        pages: usize,
        dirty: bool,
        uncharged: usize,
    ) {
        crate::sync::invariant!(uncharged <= pages, "{uncharged} of {pages} pages uncharged");
        let pt = self.pages;
        let m = pt.meta(idx);
        m.set_kind(Kind::FreeSpan);
        m.span_pages.set(pages as u32);
        m.flags.set(if dirty { DIRTY } else { 0 });
        m.offset.set(uncharged as u32);
        if pages > 1 {
            let t = pt.meta(idx + pages - 1);
            t.set_kind(Kind::FreeTail);
            t.head.set(idx as u32);
        }
        let spans = &mut *self.spans;
        let b = bin_of(pages);
        let first = spans.bins[b];
        m.prev.set(NONE);
        m.next.set(first);
        if first != NONE {
            pt.meta(first as usize).prev.set(idx as u32);
        }
        spans.bins[b] = idx as u32;
        spans.nonempty |= 1 << b;
        spans.free_pages += pages;
        if dirty {
            spans.dirty_pages += pages;
        }
    }

    /// Removes the free span headed at `idx` from its bin.
    ///
    /// # Safety
    /// 1. `idx` heads a free span that is in its bin.
    unsafe fn remove(&mut self, idx: usize) {
        let pt = self.pages;
        let spans = &mut *self.spans;
        let m = pt.meta(idx);
        let pages = m.span_pages.get() as usize;
        let b = bin_of(pages);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            spans.bins[b] = next;
            if next == NONE {
                spans.nonempty &= !(1 << b);
            }
        } else {
            pt.meta(prev as usize).next.set(next);
        }
        if next != NONE {
            pt.meta(next as usize).prev.set(prev);
        }
        spans.free_pages -= pages;
        if m.flags.get() & DIRTY != 0 {
            spans.dirty_pages -= pages;
        }
        m.set_kind(Kind::Unused);
    }

    /// Frees a span that held data, then gives memory back if due.
    ///
    /// # Safety
    /// 1. `[idx, idx + pages)` is committed, holds no live block, and is in
    ///    no span (its span was retired or cut off by the caller).
    pub(super) unsafe fn free(&mut self, idx: usize, pages: usize) {
        // SAFETY: forwarded (1); every page is charged.
        unsafe { self.free_with(idx, pages, true, true, 0) }
    }

    /// [`Locked::free`] giving nothing back: a large block freed into an
    /// abandoned heap, whose free memory the process collects
    /// ([`process::brought_back_while_abandoned`]) and keeps what the heaps
    /// may keep for their next threads of.
    ///
    /// # Safety
    /// 1. As for [`Locked::free`].
    pub(super) unsafe fn free_kept(&mut self, idx: usize, pages: usize) {
        // SAFETY: forwarded (1); every page is charged.
        unsafe { self.free_with(idx, pages, true, false, 0) }
    }

    /// Adds freshly committed pages, uncharged: never gives anything
    /// back (that would undo the growth that is about to be used).
    ///
    /// # Safety
    /// 1. As for [`Locked::free`], and the pages were never touched since
    ///    their commit, above the region's minimum.
    unsafe fn free_clean(&mut self, idx: usize, pages: usize) {
        // SAFETY: forwarded (1): none of the pages holds memory.
        unsafe { self.free_with(idx, pages, false, false, pages) }
    }

    /// Decommits the region's top down to `keep_end` pages (never below
    /// its minimum), the free span `[start, top)` with `uncharged`
    /// uncharged pages ending there, out of its bin; releases the pages
    /// that were charged. Returns the pages and uncharged count left of
    /// the span.
    ///
    /// # Safety
    /// 1. `[start, top)` is committed, out of every bin, holds no live block,
    ///    and `keep_end <= top`.
    unsafe fn shrink_top(
        &mut self,
        start: usize,
        keep_end: usize,
        uncharged: usize,
    ) -> (usize, usize) {
        let region = &self.alloc.region;
        let before = region.committed() >> PAGE_SHIFT;
        // SAFETY: (1): nothing live at or above keep_end.
        let decommitted = unsafe { region.shrink_to(keep_end << PAGE_SHIFT) }.is_ok();
        // On an error the region has published the shorter length all the
        // same (the pages may still hold memory: their charge is kept).
        let after = region.committed() >> PAGE_SHIFT;
        // The part decommitted takes the count first (see the module doc).
        let gone = before - after;
        let gone_uncharged = uncharged.min(gone);
        if decommitted {
            self.release((gone - gone_uncharged) * PAGE_SIZE);
        }
        (after.saturating_sub(start), uncharged - gone_uncharged)
    }

    /// Frees `[idx, idx + pages)`, of which `uncounted` pages are not
    /// charged, coalescing with free neighbours, then gives memory back to
    /// the OS if the hysteresis thresholds are passed.
    ///
    /// # Safety
    /// 1. As for [`Locked::free`]; `uncounted <= pages`, and as many of the
    ///    pages hold no memory and lie above the region's minimum.
    unsafe fn free_with(
        &mut self,
        idx: usize,
        pages: usize,
        dirty: bool,
        give_back: bool,
        uncounted: usize,
    ) {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let mut start = idx;
        let mut n = pages;
        let mut dirty = dirty;
        // The counts of the freed run and its neighbours add up.
        let mut u = uncounted;
        if start > 0 {
            let left = pt.meta(start - 1);
            let head = match left.kind() {
                Kind::FreeTail => Some(left.head.get() as usize),
                Kind::FreeSpan => Some(start - 1),
                _ => None,
            };
            if let Some(h) = head {
                let hm = pt.meta(h);
                dirty |= hm.flags.get() & DIRTY != 0;
                n += hm.span_pages.get() as usize;
                u += uncharged(hm);
                // SAFETY: h heads a free span, which is in its bin.
                unsafe { self.remove(h) };
                start = h;
            }
        }
        let top = region.committed() >> PAGE_SHIFT;
        let right = idx + pages;
        if right < top && pt.meta(right).kind() == Kind::FreeSpan {
            let rm = pt.meta(right);
            dirty |= rm.flags.get() & DIRTY != 0;
            n += rm.span_pages.get() as usize;
            u += uncharged(rm);
            // SAFETY: as above.
            unsafe { self.remove(right) };
        }
        // Give the top back to the OS when enough of it is free.
        // "Live" here is everything committed below the free top that is not
        // itself a free span.
        let live_pages = start.saturating_sub(self.spans.free_pages);
        if give_back
            && start + n == top
            && n * PAGE_SIZE >= SHRINK_AT
            && n > 2 * live_pages
            && region.committed() > region.min_committed()
            && self.top_shrink_due(n, live_pages)
        {
            let keep = (KEEP_ON_TOP >> PAGE_SHIFT).max(live_pages / 2);
            let keep_end = (start + keep).max(region.min_committed() >> PAGE_SHIFT);
            if keep_end < top {
                // SAFETY: we hold the span lock; [start, top) is the free
                // span just taken out of the bins, nothing live is there.
                (n, u) = unsafe { self.shrink_top(start, keep_end, u) };
                self.spans.shrunk_pages = pages16(top - keep_end).max(1);
            }
        }
        if n > 0 {
            // SAFETY: [start, start + n) is the freed run and its free
            // neighbours, taken out of their bins; by (1) nothing is live;
            // `u` is what their counts leave.
            unsafe { self.insert(start, n, dirty, u) };
        }
        if give_back {
            self.maybe_purge();
            self.maybe_decay();
        }
    }

    /// The region grew: clean pages are about to be taken, which counts
    /// against the last purge and the last decommit of the top as a sign
    /// that they were wasted ([`Locked::maybe_purge`],
    /// [`Locked::top_shrink_due`]); a free span merged with the growth is
    /// taken as one dirty span, which `take` does not count as clean.
    #[inline]
    fn note_growth(&mut self, pages: usize) {
        self.spans.regrown_pages = self.spans.regrown_pages.saturating_add(pages16(pages));
        self.spans.clean_taken_pages = self.spans.clean_taken_pages.max(1);
    }

    /// Whether a free top of `pages` pages past the thresholds, with
    /// `live_pages` below it, is decommitted now. Once the region grew
    /// again after such a decommit (the memory given back was faulted in
    /// again), the top stays while it is within [`Locked::maybe_purge`]'s
    /// bound on free resident memory (max(32 MiB, 2 × live)), or within
    /// twice what of the last decommit the region grew back into, and the
    /// process is not within twice its size of the limit: it is then free
    /// memory like any other, which that bound, a trim or a refused charge
    /// give back. The second bound holds for [`WASTE_WINDOW_NS`] after the
    /// decommit, for a program whose live memory falls to nothing now and
    /// then and comes back: a thread making 1 MiB blocks that another
    /// frees, 64 in flight, had the freeing thread empty the heap while the
    /// maker waited for its CPU, the top (64 MiB, over 32 and over twice
    /// the nothing left live) decommitted, and made again: 890 decommits
    /// and 45,000 faults for 40,000 blocks, 0.13-0.18 s against glibc's
    /// 0.01 (which raises its trim threshold once a large block is freed).
    /// A block of 48 MiB made once after a decommit of 6 MiB, and freed,
    /// still goes.
    ///
    /// A program that makes a block of 8 MiB, touches it and
    /// frees it, round after round, had the top decommitted and faulted in
    /// again every round: 769,000 faults and 1.0–1.7 s for 250 rounds,
    /// against glibc's 8,300 faults and 0.01–0.03 s (a user's trial
    /// program under the C ABI; glibc raises its own trim threshold
    /// the same way once a large block is freed). The first large top
    /// freed still goes at once. Laid with the rare code (layout.ld).
    #[inline(never)]
    fn top_shrink_due(&mut self, pages: usize, live_pages: usize) -> bool {
        let bytes = pages * PAGE_SIZE;
        let now = os::monotonic_ns();
        let regrown = if now.saturating_sub(self.spans.gave_back_at) < WASTE_WINDOW_NS {
            self.spans.regrown_pages.min(self.spans.shrunk_pages) as usize * PAGE_SIZE
        } else {
            0
        };
        if self.spans.shrunk_pages != 0
            && self.spans.regrown_pages > 0
            && bytes
                <= PURGE_RETAIN
                    .max(2 * live_pages * PAGE_SIZE)
                    .max(2 * regrown)
            && process::far_from_limit(bytes)
        {
            return false;
        }
        self.spans.gave_back_at = now;
        self.spans.regrown_pages = 0;
        true
    }

    /// Purges the free span headed at `idx` if dirty, and uncharges its
    /// pages above the region's minimum; returns the bytes uncharged (0
    /// when the purge failed).
    fn purge_span(&mut self, idx: usize) -> usize {
        let (pt, a) = (self.pages, self.alloc);
        let m = pt.meta(idx);
        let n = m.span_pages.get() as usize;
        if m.flags.get() & DIRTY != 0 {
            let start = pt.page_addr(idx) as *mut u8;
            // SAFETY: the span is free and committed: nothing live is in it.
            if unsafe { os::purge(start, n * PAGE_SIZE) }.is_err() {
                return 0;
            }
            m.flags.set(m.flags.get() & !DIRTY);
            self.spans.dirty_pages -= n;
        }
        // Clean pages hold no memory: never touched since their commit or
        // their last purge.
        let min_pages = a.region.min_committed() >> PAGE_SHIFT;
        let above_min = n - min_pages.saturating_sub(idx).min(n);
        let before = uncharged(m);
        if above_min <= before {
            return 0;
        }
        m.offset.set(above_min as u32);
        self.release((above_min - before) * PAGE_SIZE);
        (above_min - before) * PAGE_SIZE
    }

    /// Purges free spans (largest first) once too much free memory is
    /// resident, down to half the threshold; what is purged is uncharged.
    /// Once clean pages were taken again since the last purge, within
    /// [`PURGE_SPACING_NS`] of it only past twice the threshold or near the
    /// process limit. (Without that spacing a program that makes 1,000
    /// blocks of 1–65 KiB and frees them all, round after round, had 17 MB
    /// purged and faulted in again each round: 3.88× glibc's time, 2.3×
    /// jemalloc's; with it, 0.81× glibc's, at a peak 15% higher:
    /// `preload --only batch`, README.)
    #[inline]
    fn maybe_purge(&mut self) {
        let committed_pages = self.alloc.region.committed() >> PAGE_SHIFT;
        let live = committed_pages.saturating_sub(self.spans.free_pages) * PAGE_SIZE;
        let retain = PURGE_RETAIN.max(2 * live);
        let dirty = self.spans.dirty_pages * PAGE_SIZE;
        if dirty > retain {
            self.purge_excess(dirty, retain);
        }
    }

    /// Purges what of the free memory above [`PURGE_RETAIN`] stayed free
    /// for [`DECAY_NS`]: the fewest dirty pages free at any time in the
    /// window, less the retained part ([`Locked::purge_unused`]). A window
    /// starts once more than [`PURGE_RETAIN`] is free and resident, and
    /// again after each check past its end; it ends early when that falls
    /// back within it. Called after a span is freed or taken.
    #[inline]
    fn maybe_decay(&mut self) {
        process::unadopted_check();
        if self.spans.dirty_pages * PAGE_SIZE <= PURGE_RETAIN {
            self.spans.decay_from = 0;
        } else {
            self.decay(os::monotonic_ns());
        }
    }

    /// Bytes of free spans that may be resident (not purged).
    #[cfg(test)]
    pub(super) fn dirty_bytes(&self) -> usize {
        self.spans.dirty_pages * PAGE_SIZE
    }

    /// [`Locked::maybe_decay`] with more than [`PURGE_RETAIN`] free and
    /// resident, at `now` (laid with the rare code: layout.ld).
    #[inline(never)]
    pub(super) fn decay(&mut self, now: u64) {
        let dirty = self.spans.dirty_pages;
        let low = (self.spans.decay_low as usize).min(dirty);
        let now_ms = decay_clock(now);
        if self.spans.decay_from == 0 {
            self.spans.decay_from = now_ms;
            self.spans.decay_low = u32::try_from(dirty).unwrap_or(u32::MAX);
            return;
        }
        if !decay_window_ended(self.spans.decay_from, now_ms) {
            return;
        }
        let unused = low.saturating_sub(PURGE_RETAIN >> PAGE_SHIFT);
        if unused > 0 {
            // As a purge by the thresholds: a program that takes it again
            // within the waste window keeps what it frees next.
            self.spans.gave_back_at = now;
            self.spans.clean_taken_pages = 0;
            self.purge_unused(unused);
            self.spans.purged_pages = pages16(dirty - self.spans.dirty_pages);
        }
        self.spans.decay_from = now_ms;
        self.spans.decay_low = u32::try_from(self.spans.dirty_pages).unwrap_or(u32::MAX);
    }

    /// Purges `pages` dirty free pages, from the largest free spans first;
    /// of the last span, only its end ([`Locked::purge_top_part`]): a span
    /// purges whole, and a free span of 64 MiB of which 1 MiB stayed
    /// unused must keep the rest (its pages were taken and freed again in
    /// the window; taking them again would fault them in).
    fn purge_unused(&mut self, pages: usize) {
        let pt = self.pages;
        let mut left = pages;
        for bin in (0..N_BINS).rev() {
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                let m = pt.meta(idx as usize);
                let next = m.next.get();
                let n = m.span_pages.get() as usize;
                if m.flags.get() & DIRTY != 0 {
                    if n > left {
                        // The span is cut in two (the lists change): done.
                        self.purge_top_part(idx as usize, left);
                        return;
                    }
                    self.purge_span(idx as usize);
                    // (Still dirty: the kernel refused the purge.)
                    if m.flags.get() & DIRTY == 0 {
                        left -= n;
                        if left == 0 {
                            return;
                        }
                    }
                }
                idx = next;
            }
        }
    }

    /// [`Locked::maybe_purge`] past its threshold `retain`, with `dirty`
    /// bytes of free memory resident (laid with the rare code: layout.ld).
    #[inline(never)]
    fn purge_excess(&mut self, dirty: usize, retain: usize) {
        let now = os::monotonic_ns();
        // Near the process limit, at once: charges that never ask the
        // heaps for memory back (mappings, glibc's blocks, context chunks)
        // would be refused meanwhile.
        if self.spans.clean_taken_pages > 0
            && dirty <= 2 * retain
            && now.saturating_sub(self.spans.gave_back_at) < PURGE_SPACING_NS
            && process::far_from_limit(retain)
        {
            return;
        }
        // Nor, for a second after it, while what is resident is within
        // twice what of the last purge was taken again since (as the free
        // top after a decommit, `top_shrink_due`): a program whose live
        // memory falls to nothing now and then (a thread freeing another's
        // blocks of 1 MiB while their maker waits for its CPU) had 35-75
        // MiB purged 800 times for 40,000 blocks and took them again.
        let wasted = self.spans.clean_taken_pages.min(self.spans.purged_pages) as usize * PAGE_SIZE;
        if dirty <= 2 * wasted
            && now.saturating_sub(self.spans.gave_back_at) < WASTE_WINDOW_NS
            && process::far_from_limit(dirty)
        {
            return;
        }
        self.spans.gave_back_at = now;
        self.spans.clean_taken_pages = 0;
        let before = self.spans.dirty_pages;
        self.purge_down_to(retain / 2);
        self.spans.purged_pages = pages16(before - self.spans.dirty_pages);
    }

    /// Purges free spans, largest first, until at most `target` bytes of
    /// dirty free memory are left. Inlined into its one caller, laid with
    /// the rare code.
    #[inline(always)]
    fn purge_down_to(&mut self, target: usize) {
        let pt = self.pages;
        for bin in (0..N_BINS).rev() {
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                let m = pt.meta(idx as usize);
                if m.flags.get() & DIRTY != 0 {
                    self.purge_span(idx as usize);
                    if self.spans.dirty_pages * PAGE_SIZE <= target {
                        return;
                    }
                }
                idx = m.next.get();
            }
        }
    }

    /// Gives back every free span's memory without decommitting anything:
    /// dirty spans purged, every free page above the region's minimum
    /// uncharged. The refusal path's first step, and the reclaimer's (with
    /// [`Locked::trim`]). Returns the bytes uncharged.
    pub(super) fn release_free(&mut self) -> usize {
        let pt = self.pages;
        let mut released = 0;
        let mut mask = self.spans.nonempty;
        while mask != 0 {
            let bin = mask.trailing_zeros() as usize;
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                released += self.purge_span(idx as usize);
                idx = pt.meta(idx as usize).next.get();
            }
            mask &= mask - 1;
        }
        released
    }

    /// What a heap whose thread exits gives back when it may keep some of
    /// its free memory for the thread that adopts it: `warm(held)`, told
    /// what its dirty free spans hold (their charged pages at most: one
    /// freed block merged with the untouched growth above it is dirty
    /// whole; 0 if less than [`WARM_FROM`]), says how much of it may stay.
    /// Every clean free span is uncharged, and dirty ones purged, those of
    /// the larger bins first, until what is left fits. With 0 everything
    /// goes, as [`Locked::give_back_all`] does (the free top decommitted
    /// too; otherwise the top is purged, uncharged, not decommitted).
    /// Returns what the dirty free spans kept hold.
    ///
    /// Purging is one `madvise` per free span, each a TLB shootdown on
    /// every CPU the process runs on, and the adopter faults the pages in
    /// anew: threads of 64 blocks of 16 B – 256 KiB that a consumer frees,
    /// 16 at a time, spent two thirds of their time there.
    pub(super) fn give_back_but_warm(&mut self, warm: &mut dyn FnMut(usize) -> usize) -> usize {
        let pt = self.pages;
        let held = |m: &PageMeta| {
            if m.flags.get() & DIRTY == 0 {
                0
            } else {
                (m.span_pages.get() as usize - uncharged(m)) * PAGE_SIZE
            }
        };
        let mut kept = 0;
        let mut mask = self.spans.nonempty;
        while mask != 0 {
            let mut idx = self.spans.bins[mask.trailing_zeros() as usize];
            while idx != NONE {
                let m = pt.meta(idx as usize);
                kept += held(m);
                idx = m.next.get();
            }
            mask &= mask - 1;
        }
        let warm = warm(if kept < WARM_FROM { 0 } else { kept });
        if warm == 0 {
            self.give_back_all();
            return 0;
        }
        for bin in (0..N_BINS).rev() {
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                let m = pt.meta(idx as usize);
                let next = m.next.get();
                if held(m) == 0 {
                    self.purge_span(idx as usize); // clean: uncharged only
                }
                // A span larger than the excess (the free memory of a heap
                // is often one span) loses top parts until what is left
                // fits; each releases what the part cut off holds, which
                // may be less than its pages (see purge_top_part).
                while kept > warm && held(pt.meta(idx as usize)) > 0 {
                    let m = pt.meta(idx as usize);
                    let h = held(m);
                    let excess = (kept - warm).div_ceil(PAGE_SIZE);
                    if h <= kept - warm || excess >= m.span_pages.get() as usize {
                        kept -= h.min(kept);
                        self.purge_span(idx as usize);
                        break;
                    }
                    kept -= self.purge_top_part(idx as usize, excess).min(kept);
                }
                idx = next;
            }
        }
        kept
    }

    /// Purges the last `pages` pages of the dirty free span headed at
    /// `idx` (fewer than it has): the span is cut in two, and the part cut
    /// off takes the uncharged count first (as far as its pages above the
    /// region's minimum go), as a part taken does (see the module doc): a
    /// count says how many pages hold no memory, not which, so what stays
    /// counts as charged all it may hold. Returns what the part purged
    /// held charged, which its purge releases: its pages less its count.
    fn purge_top_part(&mut self, idx: usize, pages: usize) -> usize {
        let m = self.pages.meta(idx);
        let n = m.span_pages.get() as usize;
        crate::sync::invariant!(pages < n && m.flags.get() & DIRTY != 0);
        let u = uncharged(m);
        let min_pages = self.alloc.region.min_committed() >> PAGE_SHIFT;
        let first = n - pages;
        let top_above_min = pages - min_pages.saturating_sub(idx + first).min(pages);
        let u_top = u.min(top_above_min);
        // SAFETY: idx heads a free span, in its bin; the two parts are
        // free, committed and dirty, their counts adding up to its count
        // (the first part's no more than its pages above the minimum: u is
        // no more than the whole span's).
        unsafe {
            self.remove(idx);
            self.insert(idx, first, true, u - u_top);
            self.insert(idx + first, pages, true, u_top);
        }
        self.purge_span(idx + first);
        (pages - u_top) * PAGE_SIZE
    }

    /// Decommits the free top and releases every other free span
    /// ([`Locked::release_free`]): the heap's thread has exited, or another
    /// heap's charge was refused.
    pub(super) fn give_back_all(&mut self) {
        self.trim();
        self.release_free();
    }

    /// Decommits the whole free span at the top of the region (down to the
    /// region's minimum), whatever the hysteresis would keep.
    fn trim(&mut self) {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let top = region.committed() >> PAGE_SHIFT;
        let Some(head) = self.top_free_head(top) else {
            return;
        };
        let hm = pt.meta(head);
        let keep_end = head.max(region.min_committed() >> PAGE_SHIFT);
        if head + hm.span_pages.get() as usize != top || keep_end >= top {
            return;
        }
        let dirty = hm.flags.get() & DIRTY != 0;
        let u = uncharged(hm);
        // SAFETY: head heads the free span at the top, which is in its bin.
        unsafe { self.remove(head) };
        // SAFETY: we hold the span lock; [head, top) was that free span.
        let (left, u) = unsafe { self.shrink_top(head, keep_end, u) };
        if left > 0 {
            // SAFETY: what is left of the free span: committed, nothing
            // live, with what its count leaves.
            unsafe { self.insert(head, left, dirty, u) };
        }
    }

    /// Takes `need` pages starting at `idx` if they are free (or can be
    /// committed at the top), charging what was not charged; false when
    /// they are not free or the charge is refused.
    pub(super) fn take_following(&mut self, idx: usize, need: usize) -> bool {
        let (pt, a) = (self.pages, self.alloc);
        let top = a.region.committed() >> PAGE_SHIFT;
        if idx == top && !self.grow(need) {
            return false;
        }
        if idx >= a.region.committed() >> PAGE_SHIFT {
            return false;
        }
        let m = pt.meta(idx);
        if m.kind() != Kind::FreeSpan {
            return false;
        }
        let n = m.span_pages.get() as usize;
        if n < need {
            // The free span may end at the top: grow and retry once.
            if idx + n == a.region.committed() >> PAGE_SHIFT && self.grow(need) {
                let m = pt.meta(idx);
                if m.kind() == Kind::FreeSpan && m.span_pages.get() as usize >= need {
                    return self.take_following(idx, need);
                }
            }
            return false;
        }
        let charge = self.charge_to_take(idx, need);
        if charge > 0
            && !self.try_charge(charge)
            && !self.give_back_and_charge(|l| l.charge_to_take(idx, need))
        {
            return false;
        }
        // SAFETY: idx heads a free span of at least `need` pages, in its
        // bin; its charge is made.
        unsafe { self.take(idx, need) };
        true
    }

    /// Moves the `n` pages of the large block at `src` (a block with no
    /// offset into its span) to the start of a free run of `new_n > n`
    /// pages, found in the bins or at the top of the range, whose last
    /// `new_n - n` pages are its growth: the pages themselves move
    /// ([`os::move_pages`]), nothing is copied, and `src`'s pages go back
    /// as a free span that holds no memory. Returns the run's first page,
    /// taken and charged, for the caller to lay the block out in before
    /// it releases the lock; `None` when the block must be copied instead
    /// (a region laid out for huge pages, or marked frozen; no run; the
    /// charge refused; the kernel refused the first part of the move).
    ///
    /// What is charged is the difference alone, before the move: the
    /// run's uncharged pages (as [`Locked::take`] counts them) less the
    /// block's pages that will hold no memory (those above the region's
    /// minimum), so a block that grows needs its growth under the limit,
    /// not its old size and its new one together. A difference below zero
    /// is released after the move.
    ///
    /// Only in a region laid out for base pages: in one laid out for huge
    /// pages, the range's growth is charged whole as it is committed (one
    /// touch may make 2 MiB resident), which for a block at the top would
    /// still need both sizes, and the kernel moves a huge page whole only
    /// when both ends are 2 MiB-aligned: it splits it otherwise, undoing
    /// what a freeze on huge pages relies on. Never in a frozen region: a
    /// move writes its memory without a fault.
    ///
    /// Should the kernel refuse a later part of the move (a mapping split
    /// by the program's own `mprotect` within the block), the rest is
    /// copied a heap page at a time, each page of the source purged once
    /// copied: at most one page more is resident than is charged, for the
    /// time of one copy.
    ///
    /// # Safety
    /// 1. `[src, src + n)` is a live large block's span, with no offset,
    ///    whose contents the caller owns (no other thread reads or writes
    ///    it meanwhile).
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(super) unsafe fn move_run(&mut self, src: usize, n: usize, new_n: usize) -> Option<usize> {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        if region.huge_layout() || region.is_marked_frozen() || new_n <= n {
            return None;
        }
        // The block's pages that stop holding memory, and stop being
        // charged: those above the region's minimum, which is always
        // charged.
        let min_pages = region.min_committed() >> PAGE_SHIFT;
        let freed = n - min_pages.saturating_sub(src).min(n);
        let credit = freed * PAGE_SIZE;
        let (dest, run_uncharged, charged) = self.move_target(new_n, credit, None)?;
        let (from, to) = (pt.page_addr(src) as *mut u8, pt.page_addr(dest) as *mut u8);
        // SAFETY: by (1) the source is the block's, owned by the caller;
        // the destination is the start of a free span (nothing lives
        // there), disjoint from the live block; both are heap pages of
        // the committed range, one private anonymous mapping's.
        let moved = unsafe { move_or_copy(from, to, n, min_pages.saturating_sub(src)) };
        let Some((unpurged, dirty)) = moved else {
            self.release(charged);
            return None;
        };
        // SAFETY: dest heads a free span of at least new_n pages, in its
        // bin (giving back purges and uncharges spans, it does not move
        // them); its charge is made.
        unsafe { self.take(dest, new_n) };
        // Pages whose purge failed hold memory: charged (a move is never
        // undone past its first part), and counted so.
        let uncounted = freed - unpurged;
        if unpurged > 0 {
            self.add_charged(unpurged * PAGE_SIZE);
            process::charge_over(a.kind, unpurged * PAGE_SIZE);
        }
        self.release(credit.saturating_sub(run_uncharged));
        // SAFETY: the block's old span is in no span now and holds no live
        // block; its pages hold no memory but those whose purge failed
        // (clean unless some do), and `uncounted` of the others lie above
        // the minimum.
        unsafe { self.free_with(src, n, dirty, true, uncounted) };
        Some(dest)
    }

    /// The destination of a large block's move ([`Locked::move_run`],
    /// [`Locked::move_in`]): the first free run of `new_n` pages, found in
    /// the bins or made at the top of the range, charged with what it
    /// needs beyond `credit` (the bytes of the block's old pages that stop
    /// holding memory), giving back free memory first if the limit asks.
    /// Returns the run's first page, the run's uncharged bytes (as
    /// [`Locked::take`] counts them, after any give-back: they may be
    /// fewer than the block's) and what was charged, which the caller
    /// releases if the move fails; `None` when there is no run or the
    /// charge is refused (nothing charged).
    ///
    /// `from` is the block's heap when it is another's (locked by the
    /// caller, so the reclaimer, which skips a busy heap, would leave its
    /// free memory alone): its free spans are purged before the charge is
    /// refused. A block shrunk in its heap and grown by another thread
    /// left the part it gave up free in its own heap, and the move was
    /// refused for want of just those bytes (a 200 MiB block shrunk to 100
    /// and grown to 160 by another thread under a 256 MiB limit: `NULL`,
    /// where the same growth by its own thread went through).
    ///
    /// Inlined into both (laid with the rare code, layout.ld): a function
    /// of its own would land with the code every process runs.
    #[inline(always)]
    fn move_target(
        &mut self,
        new_n: usize,
        credit: usize,
        from: Option<&mut Locked<'_>>,
    ) -> Option<(usize, usize, usize)> {
        let dest = match self.first_fit(new_n, false) {
            Some(dest) => dest,
            None if self.grow_for(new_n, credit) => self.first_fit(new_n, false)?,
            None => return None,
        };
        let need = |l: &Self| l.charge_to_take(dest, new_n).saturating_sub(credit);
        let charged = need(self);
        if charged > 0 && !self.try_charge(charged) {
            let theirs = from.map_or(0, |f| f.release_free());
            let charged = theirs > 0 && self.try_charge(need(self));
            if !charged && !self.give_back_and_charge(need) {
                return None;
            }
        }
        let run_uncharged = self.charge_to_take(dest, new_n);
        Some((dest, run_uncharged, run_uncharged.saturating_sub(credit)))
    }

    /// [`Locked::move_run`] across heaps: moves the `n` pages of the large
    /// block at `src` of the heap `from` (locked too) to the start of a
    /// free run of `new_n > n` pages of this heap, found in the bins or at
    /// the top of the range, whose last `new_n - n` pages are its growth.
    /// The block changes heap: its pages move ([`os::move_pages`]), its
    /// old span goes back to `from` as a free span that holds no memory,
    /// uncharged there, and the run is taken and charged here. Returns the
    /// run's first page, for the caller to lay the block out in before it
    /// releases the locks; `None` when the block must be copied instead
    /// (either region laid out for huge pages or marked frozen, no run,
    /// the charge refused, the kernel refused the first part of the move).
    ///
    /// What the process is charged is the difference alone, before the
    /// move, as in [`Locked::move_run`]: the run's uncharged pages less the
    /// block's pages that will hold no memory in `from` (those above its
    /// minimum). Each heap's own charge ends exact: this one's rises by
    /// the run's uncharged pages, `from`'s falls by the block's pages that
    /// stop holding memory, and the part of one that offsets the other
    /// passes from `from`'s kind to this heap's in the process's counts
    /// ([`process::transfer`]) without being charged twice.
    ///
    /// # Safety
    /// 1. `[src, src + n)` is a live large block's span of `from`'s heap,
    ///    with no offset, whose contents the caller owns (no other thread
    ///    reads or writes it meanwhile); `from` is another heap's span
    ///    allocator than this one, both of the same reservation (one
    ///    private anonymous mapping).
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(super) unsafe fn move_in(
        &mut self,
        from: &mut Locked<'_>,
        src: usize,
        n: usize,
        new_n: usize,
    ) -> Option<usize> {
        let (pt, a) = (self.pages, self.alloc);
        let (from_region, region) = (&from.alloc.region, &a.region);
        if new_n <= n
            || region.huge_layout()
            || from_region.huge_layout()
            || region.is_marked_frozen()
            || from_region.is_marked_frozen()
        {
            return None;
        }
        // The block's pages that stop holding memory in `from`: those
        // above its minimum, which is always charged.
        let min_pages = from_region.min_committed() >> PAGE_SHIFT;
        let kept = min_pages.saturating_sub(src).min(n);
        let credit = (n - kept) * PAGE_SIZE;
        let (dest, run_uncharged, charged) = self.move_target(new_n, credit, Some(&mut *from))?;
        let (src_at, to) = (
            from.pages.page_addr(src) as *mut u8,
            pt.page_addr(dest) as *mut u8,
        );
        // SAFETY: by (1) the source is the block's, owned by the caller;
        // the destination is the start of a free span of this heap
        // (nothing lives there), in another heap's range than the block;
        // both are heap pages of committed ranges of one reservation.
        let moved = unsafe { move_or_copy(src_at, to, n, kept) };
        let Some((unpurged, dirty)) = moved else {
            self.release(charged);
            return None;
        };
        // SAFETY: dest heads a free span of at least new_n pages, in its
        // bin (giving back purges and uncharges spans, it does not move
        // them); its charge is made.
        unsafe { self.take(dest, new_n) };
        // The part of the run's charge that the block's old pages cover:
        // this heap's now, charged to the process once already (as
        // `from`'s).
        let covered = run_uncharged - charged;
        self.add_charged(covered);
        process::transfer(from.alloc.kind, a.kind, covered);
        // `from` stops counting the pages that hold no memory; of those,
        // what the run did not take over goes back to the process. Pages
        // whose purge failed hold memory: `from` keeps them charged.
        let uncounted = n - kept - unpurged;
        from.hand_over(credit);
        if credit > covered {
            process::release(from.alloc.kind, credit - covered);
        }
        if unpurged > 0 {
            from.add_charged(unpurged * PAGE_SIZE);
            process::charge_over(from.alloc.kind, unpurged * PAGE_SIZE);
        }
        // SAFETY: the block's old span is in no span now and holds no live
        // block; its pages hold no memory but those whose purge failed
        // (clean unless some do), and `uncounted` of the others lie above
        // `from`'s minimum.
        unsafe { from.free_with(src, n, dirty, true, uncounted) };
        Some(dest)
    }

    /// Takes `bytes` off this heap's charge without releasing them from
    /// the process: another heap has taken them over
    /// ([`Locked::move_in`]).
    fn hand_over(&mut self, bytes: usize) {
        let c = &self.alloc.charged;
        let cur = c.load(Ordering::Relaxed);
        crate::sync::invariant!(cur >= bytes, "handed over {bytes} of {cur} charged bytes");
        c.store(cur - bytes, Ordering::Relaxed);
    }
}

/// Moves the `n` heap pages at `from` to `to` ([`os::move_pages`]), for a
/// large block's move ([`Locked::move_run`], [`Locked::move_in`]). Should
/// the kernel refuse a part after the first (a mapping split by the
/// program's own `mprotect` within the block), the rest is copied a heap
/// page at a time, each page of the source purged once copied: at most
/// one page more is resident than is charged, for the time of one copy.
/// Returns `None` when nothing moved (nothing written), else how many of
/// the source's pages from page `counted_from` on hold memory still (their
/// purge failed), and whether any page does.
///
/// # Safety
/// 1. `[from, from + n pages)` is a live block's, owned by the caller, and
///    nothing refers to its contents at those addresses once this returns
///    `Some`; `[to, to + n pages)` is the start of a free span (nothing
///    lives there), disjoint from it; both are heap pages of committed
///    ranges of one private anonymous mapping.
unsafe fn move_or_copy(
    from: *mut u8,
    to: *mut u8,
    n: usize,
    counted_from: usize,
) -> Option<(usize, bool)> {
    let len = n * PAGE_SIZE;
    let (mut unpurged, mut dirty) = (0, false);
    // SAFETY: (1).
    if let Err((moved, _)) = unsafe { os::move_pages(from, len, to, PAGE_SIZE) } {
        if moved == 0 {
            return None;
        }
        for at in (moved..len).step_by(PAGE_SIZE) {
            // SAFETY: a heap page of the block not moved and the same page
            // of the run: distinct, committed, the first the caller's, the
            // second free (1); the source page is copied and then holds
            // nothing live.
            unsafe {
                core::ptr::copy_nonoverlapping(from.add(at), to.add(at), PAGE_SIZE);
                if os::purge(from.add(at), PAGE_SIZE).is_err() {
                    dirty = true;
                    unpurged += usize::from(at / PAGE_SIZE >= counted_from);
                }
            }
        }
    }
    Some((unpurged, dirty))
}
