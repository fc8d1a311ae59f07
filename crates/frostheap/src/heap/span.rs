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
//! [`SpanAllocator`] owns the span lock and the bins; every operation on
//! them goes through [`Locked`], which exists only while the lock is held,
//! so "the caller holds the span lock" is a type, not a comment. The
//! region's committed prefix only changes here, under the same lock.
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

use super::core::{HeapCore, META_SKEW};
use super::page::{Kind, PageMeta, DIRTY, NONE};
use super::remote::REMOTE_WORDS;
use crate::os::{self, OsError};
use crate::region::{round_up, PAGE_SHIFT, PAGE_SIZE};
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

/// The span lock and what it protects: the free-span bins, how far the
/// side tables are open, and (by convention of every caller) the region's
/// committed length and the page-table fields written "under the span
/// lock" (see [`PageMeta`]).
pub(crate) struct SpanAllocator {
    lock: RawLock,
    spans: UnsafeCell<Spans>,
    /// Pages whose page-table entries and bitmap words are writable: the
    /// side table is mapped read-only (zeros: `Kind::Unused`, no remote
    /// frees) and opened as the region's committed prefix grows, so it is
    /// charged in proportion to committed memory, not to `max`.
    tables_open: Cell<usize>,
}

impl SpanAllocator {
    /// No free spans, no table open.
    pub(super) const fn new() -> SpanAllocator {
        SpanAllocator {
            lock: RawLock::new(),
            spans: UnsafeCell::new(Spans {
                bins: [NONE; N_BINS],
                nonempty: 0,
                dirty_pages: 0,
                free_pages: 0,
            }),
            tables_open: Cell::new(0),
        }
    }

    /// The span lock itself, for `fork` handlers.
    pub(super) fn raw_lock(&self) -> &RawLock {
        &self.lock
    }
}

/// The span allocator of `heap` with its lock held.
pub(super) struct Locked<'a> {
    heap: &'a HeapCore,
    spans: &'a mut Spans,
    tables_open: &'a Cell<usize>,
    _guard: LockGuard<'a>,
}

impl HeapCore {
    /// Takes the span lock.
    pub(super) fn lock_spans(&self) -> Locked<'_> {
        let guard = self.spans.lock.lock();
        Locked {
            heap: self,
            // SAFETY: the span lock, held until the guard drops with the
            // `Locked`, owns `spans`: no other reference to it exists.
            spans: unsafe { &mut *self.spans.spans.get() },
            tables_open: &self.spans.tables_open,
            _guard: guard,
        }
    }

    /// Bytes of free spans (committed, not in use by any block's span).
    pub(crate) fn free_span_bytes(&self) -> usize {
        self.lock_spans().spans.free_pages * PAGE_SIZE
    }

    /// Runs `f(committed)` under the span lock (the committed length
    /// cannot change meanwhile).
    pub(crate) fn commit_lock_and<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _spans = self.lock_spans();
        f(self.region().committed())
    }

    /// Freeze, step 1 (writes this core): mark the region frozen so pages
    /// committed from now on are committed read-only.
    pub(crate) fn freeze_mark(&self) {
        let _spans = self.lock_spans();
        self.region().mark_frozen(true);
    }

    /// Freeze step 2 / thaw step 1: `mprotect` the committed prefix. Writes
    /// nothing in this core, so it works even when the core itself lives in
    /// a heap that is frozen. Returns the length protected.
    pub(crate) fn protect_committed(&self, frozen: bool) -> Result<usize, OsError> {
        self.region().protect_prefix(frozen)
    }

    /// Thaw, step 2 (writes this core, so after every heap is writable):
    /// clear the mark, and open pages committed since step 1 (`thawed`).
    pub(crate) fn thaw_unmark(&self, thawed: usize) -> Result<(), OsError> {
        let _spans = self.lock_spans();
        self.region().mark_frozen(false);
        self.region()
            .protect_range(thawed, self.region().committed(), false)
    }

    /// Freezes (mprotect read-only) or thaws the committed prefix; returns
    /// the length protected.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<usize, OsError> {
        let _spans = self.lock_spans();
        self.region().set_frozen(frozen)
    }
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
                let m = self.heap.meta(idx as usize);
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
        let heap = self.heap;
        let region = heap.region();
        let committed = region.committed();
        let top = committed >> PAGE_SHIFT;
        // A free span touching the top counts towards the request.
        let mut top_free = 0;
        if top > 0 {
            let last = heap.meta(top - 1);
            top_free = match last.kind() {
                Kind::FreeTail => heap.meta(last.head.get() as usize).span_pages.get() as usize,
                Kind::FreeSpan => last.span_pages.get() as usize,
                _ => 0,
            };
        }
        let cap = heap.limit.min(region.reserved()) & !(PAGE_SIZE - 1);
        let want = committed + (pages - top_free.min(pages)) * PAGE_SIZE;
        if want.saturating_add(heap.others.external.load(Ordering::Relaxed)) > cap {
            return false;
        }
        let chunk = if region.huge_pages() {
            crate::os::HUGE_PAGE_SIZE
        } else {
            1 << 20
        };
        let chunk = chunk.max(round_up(committed / 8, chunk));
        let target = round_up(want, chunk).min(cap);
        if self.open_tables(target >> PAGE_SHIFT).is_err() || region.grow_to(target).is_err() {
            return false;
        }
        // SAFETY: the new pages are committed, free and in no span.
        unsafe { self.free_clean(top, (target - committed) >> PAGE_SHIFT) };
        true
    }

    /// Makes the page-table entries and bitmap words of pages `0..pages`
    /// writable (they only ever open: a shrunk region keeps them).
    pub(super) fn open_tables(&mut self, pages: usize) -> Result<(), OsError> {
        let open = self.tables_open.get();
        if pages <= open {
            return Ok(());
        }
        let heap = self.heap;
        let ps = os::page_size();
        let table = heap.metas.cast::<u8>().wrapping_sub(META_SKEW);
        let meta = core::mem::size_of::<PageMeta>();
        for (first, each) in [(META_SKEW, meta), (heap.bits_offset, REMOTE_WORDS * 8)] {
            let start = (first + open * each) & !(ps - 1);
            let end = round_up(first + pages * each, ps).min(heap.table_bytes);
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
    ///
    /// # Safety
    /// 1. The pages are committed, hold no live block, and are in no span.
    pub(super) unsafe fn insert(&mut self, idx: usize, pages: usize, dirty: bool) {
        let heap = self.heap;
        let m = heap.meta(idx);
        m.set_kind(Kind::FreeSpan);
        m.span_pages.set(pages as u32);
        m.flags.set(if dirty { DIRTY } else { 0 });
        if pages > 1 {
            let t = heap.meta(idx + pages - 1);
            t.set_kind(Kind::FreeTail);
            t.head.set(idx as u32);
        }
        let spans = &mut *self.spans;
        let b = bin_of(pages);
        let first = spans.bins[b];
        m.prev.set(NONE);
        m.next.set(first);
        if first != NONE {
            heap.meta(first as usize).prev.set(idx as u32);
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
        let heap = self.heap;
        let spans = &mut *self.spans;
        let m = heap.meta(idx);
        let pages = m.span_pages.get() as usize;
        let b = bin_of(pages);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            spans.bins[b] = next;
            if next == NONE {
                spans.nonempty &= !(1 << b);
            }
        } else {
            heap.meta(prev as usize).next.set(next);
        }
        if next != NONE {
            heap.meta(next as usize).prev.set(prev);
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
        let heap = self.heap;
        let region = heap.region();
        let mut start = idx;
        let mut n = pages;
        let mut dirty = dirty;
        if start > 0 {
            let left = heap.meta(start - 1);
            let head = match left.kind() {
                Kind::FreeTail => Some(left.head.get() as usize),
                Kind::FreeSpan => Some(start - 1),
                _ => None,
            };
            if let Some(h) = head {
                let hm = heap.meta(h);
                dirty |= hm.flags.get() & DIRTY != 0;
                n += hm.span_pages.get() as usize;
                // SAFETY: h heads a free span, which is in its bin.
                unsafe { self.remove(h) };
                start = h;
            }
        }
        let top = region.committed() >> PAGE_SHIFT;
        let right = idx + pages;
        if right < top && heap.meta(right).kind() == Kind::FreeSpan {
            let rm = heap.meta(right);
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
                // SAFETY: we hold the span lock; [keep_end, top) is part of
                // a free span, so nothing live is there.
                if unsafe { region.shrink_to(keep_end << PAGE_SHIFT) }.is_ok() {
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
        let heap = self.heap;
        let spans = &mut *self.spans;
        let committed_pages = heap.region().committed() >> PAGE_SHIFT;
        let live = committed_pages.saturating_sub(spans.free_pages) * PAGE_SIZE;
        let retain = PURGE_RETAIN.max(2 * live);
        if spans.dirty_pages * PAGE_SIZE <= retain {
            return;
        }
        let target = retain / 2;
        for bin in (0..N_BINS).rev() {
            let mut idx = spans.bins[bin];
            while idx != NONE {
                let m = heap.meta(idx as usize);
                let n = m.span_pages.get() as usize;
                if m.flags.get() & DIRTY != 0 {
                    let start = heap.page_addr(idx as usize) as *mut u8;
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

    /// Takes `need` pages starting at `idx` if they are free (or can be
    /// committed at the top).
    pub(super) fn take_following(&mut self, idx: usize, need: usize) -> bool {
        let heap = self.heap;
        let top = heap.region().committed() >> PAGE_SHIFT;
        if idx == top && !self.grow(need) {
            return false;
        }
        if idx >= heap.region().committed() >> PAGE_SHIFT {
            return false;
        }
        let m = heap.meta(idx);
        if m.kind() != Kind::FreeSpan {
            return false;
        }
        let n = m.span_pages.get() as usize;
        if n < need {
            // The free span may end at the top: grow and retry once.
            if idx + n == heap.region().committed() >> PAGE_SHIFT && self.grow(need) {
                let m = heap.meta(idx);
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

#[cfg(test)]
mod tests {
    use super::super::core::tests::heap_of;
    use super::*;
    use core::alloc::Layout;

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
