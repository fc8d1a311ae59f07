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
//! default is 70%), keeping max(2 MiB, live/2) as headroom; free spans
//! elsewhere are purged (`MADV_DONTNEED`) once free resident memory passes
//! max(32 MiB, 2 × live), down to half that. A program that frees
//! everything gets its memory back; one that frees and reuses a large
//! buffer every round (a result vector, a batch) keeps it resident instead
//! of zero-filling it again each time.

use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::Ordering;

use core::sync::atomic::AtomicUsize;

use super::page::{Kind, PageMeta, PageTable, DIRTY, META_SKEW, NONE, REMOTE_WORDS};
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
const PURGE_RETAIN: usize = 32 << 20;

/// Number of free-span bins.
const N_BINS: usize = 44;

/// The bin for a free span of `n` pages.
#[inline]
fn bin_of(n: usize) -> usize {
    debug_assert!(n > 0, "bin_of(0)");
    if n <= 16 {
        n - 1
    } else {
        let log = (usize::BITS - 1 - n.leading_zeros()) as usize;
        (16 + log - 4).min(N_BINS - 1)
    }
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
    /// The side-table mapping: `META_SKEW` bytes, the metas, the bitmap
    /// from `bits_offset`; `table_bytes` long.
    table: *mut u8,
    table_bytes: usize,
    bits_offset: usize,
    /// The heap's own cap (`max`).
    limit: usize,
    /// What the region's commits are charged as against the process limit.
    kind: process::Kind,
}

impl SpanAllocator {
    /// The span allocator of a heap on `region`, whose side table is the
    /// `table_bytes` at `table` (the bitmap from `bits_offset`); no free
    /// span yet.
    pub(super) fn new(
        region: Region,
        table: *mut u8,
        table_bytes: usize,
        bits_offset: usize,
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
            }),
            tables_open: Cell::new(0),
            region,
            table,
            table_bytes,
            bits_offset,
            limit,
            kind,
        }
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

    /// Gives back the free top of the region if the span lock is free
    /// (another heap needs room under the process limit); returns the
    /// bytes decommitted.
    pub(super) fn try_trim(&self, pages: PageTable, external: &AtomicUsize) -> usize {
        let Some(guard) = self.lock.try_lock() else {
            return 0;
        };
        let before = self.region.committed();
        self.locked(pages, external, guard).trim();
        before - self.region.committed()
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
        process::release(self.kind, self.region.committed());
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

impl Locked<'_> {
    /// Takes a run of `pages` free pages, committing more if needed.
    /// Returns the first page and whether its contents are known zero.
    pub(super) fn alloc(&mut self, pages: usize) -> Option<(usize, bool)> {
        if let Some(found) = self.find(pages) {
            return Some(found);
        }
        if !self.grow(pages) {
            return None;
        }
        self.find(pages)
    }

    fn find(&mut self, pages: usize) -> Option<(usize, bool)> {
        let b = bin_of(pages);
        let mut mask = self.spans.nonempty & !((1u64 << b) - 1);
        while mask != 0 {
            let bin = mask.trailing_zeros() as usize;
            let mut idx = self.spans.bins[bin];
            while idx != NONE {
                let m = self.pages.meta(idx as usize);
                let n = m.span_pages.get() as usize;
                if n >= pages {
                    let dirty = m.flags.get() & DIRTY != 0;
                    // SAFETY: idx heads a free span in a bin; its tail
                    // beyond `pages` is free and committed.
                    unsafe {
                        self.remove(idx as usize);
                        if n > pages {
                            self.insert(idx as usize + pages, n - pages, dirty);
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
    fn grow(&mut self, pages: usize) -> bool {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let committed = region.committed();
        let top = committed >> PAGE_SHIFT;
        // A free span touching the top counts towards the request.
        let mut top_free = 0;
        if top > 0 {
            let last = pt.meta(top - 1);
            top_free = match last.kind() {
                Kind::FreeTail => pt.meta(last.head.get() as usize).span_pages.get() as usize,
                Kind::FreeSpan => last.span_pages.get() as usize,
                _ => 0,
            };
        }
        let cap = a.limit.min(region.reserved()) & !(PAGE_SIZE - 1);
        let want = committed + (pages - top_free.min(pages)) * PAGE_SIZE;
        if want.saturating_add(self.external.load(Ordering::Relaxed)) > cap {
            return false;
        }
        let chunk = if region.huge_layout() {
            crate::os::HUGE_PAGE_SIZE
        } else {
            1 << 20
        };
        let chunk = chunk.max(round_up(committed / 8, chunk));
        let target = round_up(want, chunk).min(cap);
        // The process limit, counted at commits: the whole growth, or a
        // growth to just what was asked when the chunk does not fit.
        let target = if process::charge(a.kind, target - committed) {
            target
        } else {
            let exact = round_up(want, PAGE_SIZE);
            if !process::charge_or_reclaim(a.kind, exact - committed) {
                return false;
            }
            exact
        };
        if self.open_tables(target >> PAGE_SHIFT).is_err() || region.grow_to(target).is_err() {
            process::release(a.kind, target - committed);
            return false;
        }
        // SAFETY: the new pages are committed, free and in no span.
        unsafe { self.free_clean(top, (target - committed) >> PAGE_SHIFT) };
        true
    }

    /// Makes the page-table entries and bitmap words of pages `0..pages`
    /// writable (they only ever open: a shrunk region keeps them).
    pub(super) fn open_tables(&mut self, pages: usize) -> Result<(), OsError> {
        let open = self.alloc.tables_open.get();
        if pages <= open {
            return Ok(());
        }
        let a = self.alloc;
        let ps = os::page_size();
        let table = a.table;
        let meta = core::mem::size_of::<PageMeta>();
        for (first, each) in [(META_SKEW, meta), (a.bits_offset, REMOTE_WORDS * 8)] {
            let start = (first + open * each) & !(ps - 1);
            let end = round_up(first + pages * each, ps).min(a.table_bytes);
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

    /// Adds a free run `[idx, idx + pages)` to its bin (no coalescing).
    ///
    /// # Safety
    /// 1. The pages are committed, hold no live block, and are in no span.
    pub(super) unsafe fn insert(&mut self, idx: usize, pages: usize, dirty: bool) {
        let pt = self.pages;
        let m = pt.meta(idx);
        m.set_kind(Kind::FreeSpan);
        m.span_pages.set(pages as u32);
        m.flags.set(if dirty { DIRTY } else { 0 });
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
        // SAFETY: forwarded (1).
        unsafe { self.free_with(idx, pages, true, true) }
    }

    /// Adds freshly committed pages: never gives anything back (that would
    /// undo the growth that is about to be used).
    ///
    /// # Safety
    /// 1. As for [`Locked::free`].
    unsafe fn free_clean(&mut self, idx: usize, pages: usize) {
        // SAFETY: forwarded (1).
        unsafe { self.free_with(idx, pages, false, false) }
    }

    /// Frees `[idx, idx + pages)`, coalescing with free neighbours, then
    /// gives memory back to the OS if the hysteresis thresholds are passed.
    ///
    /// # Safety
    /// 1. As for [`Locked::free`].
    unsafe fn free_with(&mut self, idx: usize, pages: usize, dirty: bool, give_back: bool) {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let mut start = idx;
        let mut n = pages;
        let mut dirty = dirty;
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
        {
            let keep = (KEEP_ON_TOP >> PAGE_SHIFT).max(live_pages / 2);
            let keep_end = (start + keep).max(region.min_committed() >> PAGE_SHIFT);
            if keep_end < top {
                let before = region.committed();
                // SAFETY: we hold the span lock; [keep_end, top) is part of
                // a free span, so nothing live is there.
                if unsafe { region.shrink_to(keep_end << PAGE_SHIFT) }.is_ok() {
                    process::release(a.kind, before - region.committed());
                    n = keep_end.saturating_sub(start);
                }
            }
        }
        if n > 0 {
            // SAFETY: [start, start + n) is the freed run and its free
            // neighbours, taken out of their bins; by (1) nothing is live.
            unsafe { self.insert(start, n, dirty) };
        }
        if give_back {
            self.maybe_purge();
        }
    }

    /// Purges free spans (largest first) once too much free memory is
    /// resident, down to half the threshold.
    fn maybe_purge(&mut self) {
        let (pt, a) = (self.pages, self.alloc);
        let spans = &mut *self.spans;
        let committed_pages = a.region.committed() >> PAGE_SHIFT;
        let live = committed_pages.saturating_sub(spans.free_pages) * PAGE_SIZE;
        let retain = PURGE_RETAIN.max(2 * live);
        if spans.dirty_pages * PAGE_SIZE <= retain {
            return;
        }
        let target = retain / 2;
        for bin in (0..N_BINS).rev() {
            let mut idx = spans.bins[bin];
            while idx != NONE {
                let m = pt.meta(idx as usize);
                let n = m.span_pages.get() as usize;
                if m.flags.get() & DIRTY != 0 {
                    let start = pt.page_addr(idx as usize) as *mut u8;
                    // SAFETY: the span is free and committed: nothing live
                    // is in it.
                    if unsafe { os::purge(start, n * PAGE_SIZE) }.is_ok() {
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

    /// Decommits the whole free span at the top of the region (down to the
    /// region's minimum), whatever the hysteresis would keep: the heap's
    /// thread has exited.
    pub(super) fn trim(&mut self) {
        let (pt, a) = (self.pages, self.alloc);
        let region = &a.region;
        let top = region.committed() >> PAGE_SHIFT;
        if top == 0 {
            return;
        }
        let last = pt.meta(top - 1);
        let head = match last.kind() {
            Kind::FreeTail => last.head.get() as usize,
            Kind::FreeSpan => top - 1,
            _ => return,
        };
        let hm = pt.meta(head);
        let keep_end = head.max(region.min_committed() >> PAGE_SHIFT);
        if head + hm.span_pages.get() as usize != top || keep_end >= top {
            return;
        }
        let dirty = hm.flags.get() & DIRTY != 0;
        // SAFETY: head heads the free span at the top, which is in its bin.
        unsafe { self.remove(head) };
        let before = region.committed();
        // SAFETY: we hold the span lock; [keep_end, top) was a free span.
        if unsafe { region.shrink_to(keep_end << PAGE_SHIFT) }.is_ok() {
            process::release(a.kind, before - region.committed());
        }
        let left = (region.committed() >> PAGE_SHIFT).saturating_sub(head);
        if left > 0 {
            // SAFETY: what is left of the free span: committed, nothing live.
            unsafe { self.insert(head, left, dirty) };
        }
    }

    /// Takes `need` pages starting at `idx` if they are free (or can be
    /// committed at the top).
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
        let dirty = m.flags.get() & DIRTY != 0;
        // SAFETY: idx heads a free span in its bin; its part beyond `need`
        // is free and committed.
        unsafe {
            self.remove(idx);
            if n > need {
                self.insert(idx + need, n - need, dirty);
            }
        }
        true
    }
}
