//! What the rest of the crate asks of a heap besides allocating and
//! freeing: statistics, external charges, the O(1) queries reports use,
//! commit and protection for freezes, sealing, the repair of a `fork`
//! child, giving memory back, and retiring for a running owner the spans
//! other threads freed whole. Each is a short composition of the heap's
//! parts.

use core::sync::atomic::Ordering;

use super::class::N_CLASSES;
use super::core::HeapCore;
use super::page::{Kind, EMPTY, GENERATION, NONE, OWNER_CACHED, OWNER_LOCAL, OWNER_SEALED};
use super::span::{Locked, Retire};
use super::stats::{self, Stats};
use crate::os::OsError;
use crate::region::PAGE_SHIFT;
use crate::sync::RawLock;

impl HeapCore {
    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> Stats {
        let remote = self.remote();
        let (in_use, peak, allocations, total_allocations) = self.others.read_consistent(|| {
            stats::read(
                &self.local.counters,
                &self.shared.counters,
                &self.others.foreign_freed_bytes,
                &self.others.foreign_freed_count,
                || remote.uncollected(self.region().committed() >> PAGE_SHIFT),
            )
        });
        let charged = self.spans.charged();
        Stats {
            reserved: self.region().reserved(),
            committed: charged,
            purged: self.region().committed().saturating_sub(charged),
            in_use,
            peak,
            limit: self.spans.limit(),
            allocations,
            total_allocations,
            refused: self.others.refused.load(Ordering::Relaxed),
            external: self.others.external.load(Ordering::Relaxed),
            huge_pages: self.region().huge_pages(),
            collapse_errno: self.region().collapse_errno(),
        }
    }

    /// Bytes charged (statistics' `committed`): the memory the heap's
    /// spans use and its free spans hold, read without the span lock.
    pub(crate) fn charged(&self) -> usize {
        self.spans.charged()
    }

    /// Switches a region laid out for huge pages later (the main heap's)
    /// to huge pages now: see [`crate::region::Region::switch_to_huge_pages`].
    /// For a heap about to be guarded with the `mprotect` backend, while
    /// it is not frozen.
    pub(crate) fn switch_to_huge_pages(&self) {
        self.spans
            .commit_lock_and(|_| self.region().switch_to_huge_pages())
    }

    /// Charges `bytes` of memory held outside the heap against its limit
    /// (and the process limit); false (and nothing charged) if committed +
    /// external would pass it.
    pub(crate) fn charge_external(&self, bytes: usize) -> bool {
        self.others
            .charge_external(bytes, self.spans.charged(), self.spans.limit())
    }

    /// Releases bytes charged with [`HeapCore::charge_external`].
    pub(crate) fn release_external(&self, bytes: usize) {
        self.others.release_external(bytes)
    }

    /// Bytes of free spans (in the committed range, not in use by any
    /// block's span; purged ones included).
    pub(crate) fn free_span_bytes(&self) -> usize {
        self.spans.free_bytes()
    }

    /// Runs `f(committed)` under the span lock (the committed length
    /// cannot change meanwhile).
    pub(crate) fn commit_lock_and<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        self.spans.commit_lock_and(f)
    }

    /// Freeze, step 1 (writes this core): mark the region frozen so pages
    /// committed from now on are committed read-only.
    pub(crate) fn freeze_mark(&self) {
        self.spans.freeze_mark()
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
        self.spans.thaw_unmark(thawed)
    }

    /// Freezes (mprotect read-only) or thaws the committed prefix; returns
    /// the length protected.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<usize, OsError> {
        self.spans.set_frozen(frozen)
    }

    /// Gives back every free page of the heap if the span lock is free
    /// (another heap needs room under the process limit): the free top
    /// decommitted, free spans below it purged and uncharged. Returns the
    /// bytes no longer charged.
    pub(crate) fn try_give_back(&self) -> usize {
        self.spans.try_give_back(self.pages, &self.others.external)
    }

    /// The span on top of the heap's pending stack ([`NONE`]: empty), read
    /// without synchronisation: whether other threads freed into spans the
    /// owner filled.
    #[inline]
    pub(crate) fn pending_top(&self) -> u32 {
        self.others.pending.load(Ordering::Relaxed)
    }

    /// The allocations ever made from the heap, by its owner or by other
    /// threads through its shared state (read without synchronisation:
    /// for a look at whether any was made since the last look).
    #[inline]
    pub(crate) fn allocations(&self) -> u64 {
        self.local.counters.total.load(Ordering::Relaxed)
            + self.shared.counters.total.load(Ordering::Relaxed)
    }

    /// Retires, for an owner that does not collect them, the spans of the
    /// heap whose every block other threads freed: FULL spans on the
    /// pending stack ([`Remote::freed_whole`](super::remote::Remote::freed_whole)).
    /// The owner collects such spans only when a class of its runs dry, so
    /// those of a thread that runs but does not allocate — a pool's worker
    /// waiting for work after its results were freed elsewhere, a producer
    /// done producing — stayed committed and charged as long as it waited:
    /// a worker's 40 MiB of results, freed by the main thread, left the
    /// main thread refused at 16 MiB in use under a 64 MiB limit. Their
    /// blocks are counted as frees by other threads (the foreign counters,
    /// as for large blocks), and their pages join the heap's free spans.
    /// Spans with a live block go back on the stack as they were. With
    /// `give_back`, every free page of the heap then goes back too (its
    /// free top decommitted, its free spans purged and uncharged), under
    /// the same hold of the span lock, so that the owner cannot take the
    /// pages retired before the caller's charge is tried again.
    ///
    /// Waits for the span lock with `wait`, or does nothing if it is busy.
    /// Retires nothing in the calling thread's own heap (its collection is
    /// its own), a sealed heap, or one that a freeze with the `mprotect`
    /// backend marked (checked under the span lock, which that freeze
    /// takes to mark it; the caller leaves alone a heap a phase froze,
    /// [`HeapInner::frozen_now`](super::HeapInner::frozen_now), as the
    /// `pkey` backend marks nothing here). Returns the spans retired and
    /// the bytes no longer charged.
    ///
    /// Safe against the owner: the stack is taken whole, as the owner takes
    /// it, so each span is the owner's or ours; a span whose every block
    /// was freed by other threads has none the owner can free, and the
    /// owner allocates from no FULL span.
    #[inline(never)] // laid with the rare code (layout.ld)
    pub(crate) fn retire_spans_freed_whole(&self, wait: bool, give_back: bool) -> (usize, usize) {
        // (A racy peek: a span pushed meanwhile waits for the next call.)
        let retire = !self.is_owner() && self.others.pending.load(Ordering::Relaxed) != NONE;
        if !retire && !give_back {
            return (0, 0);
        }
        let spans = if wait {
            Some(self.lock_spans())
        } else {
            self.spans.try_lock(self.pages, &self.others.external)
        };
        let Some(mut spans) = spans else {
            return (0, 0);
        };
        let before = self.charged();
        let retired = if retire && !self.is_sealed() && !self.region().is_marked_frozen() {
            self.retire_freed_whole_in(&mut spans)
        } else {
            0
        };
        if give_back {
            spans.give_back_all();
        }
        // Under the lock: the owner may commit as soon as it is released.
        let after = self.charged();
        drop(spans);
        (retired, before.saturating_sub(after))
    }

    /// [`HeapCore::retire_spans_freed_whole`]'s retirement, under `spans`,
    /// the heap's span lock held.
    fn retire_freed_whole_in(&self, spans: &mut Locked<'_>) -> usize {
        let remote = self.remote();
        let mut idx = remote.take_pending();
        // The spans kept, chained in the order they were found.
        let (mut first, mut last) = (NONE, NONE);
        let mut retired = 0;
        while idx != NONE {
            let m = self.meta(idx as usize);
            let next = m.pending_next.load(Ordering::Relaxed);
            let local = matches!(m.owner.get(), OWNER_LOCAL | OWNER_CACHED);
            if local && remote.freed_whole(m, idx as usize) {
                let n = m.capacity.get() as usize;
                self.others.foreign_update(|| {
                    remote.forget(m, idx as usize);
                    self.others
                        .foreign_freed_bytes
                        .fetch_add(n * m.block_size.get() as usize, Ordering::Relaxed);
                    self.others
                        .foreign_freed_count
                        .fetch_add(n, Ordering::Relaxed);
                });
                // Off the stack, as the owner's collection leaves it, and
                // with no live block (FULL: every block was handed out).
                let generation = m.state.load(Ordering::Relaxed) & GENERATION;
                m.state.store(generation, Ordering::SeqCst);
                m.used.set(0);
                self.retire_span_in(spans, idx as usize, Retire::Kept);
                retired += 1;
            } else {
                if last == NONE {
                    first = idx;
                } else {
                    self.meta(last as usize)
                        .pending_next
                        .store(idx, Ordering::Relaxed);
                }
                last = idx;
            }
            idx = next;
        }
        if first != NONE {
            remote.put_back_pending(first, self.meta(last as usize));
            // Its thread may be giving the heap up, having found the stack
            // empty: then the spans put back are brought back into an
            // abandoned heap, for the frees' hook to find
            // (`HeapCore::take_brought_back`). SeqCst, with the push above
            // and with `HeapCore::abandon`'s store of `abandoned` and look
            // at the stack after it: one of the two sees the other.
            if self.others.abandoned.load(Ordering::SeqCst) {
                self.others.brought_back.store(true, Ordering::Relaxed);
            }
        }
        retired
    }

    /// Gives back every free page of the heap, waiting for the span lock
    /// (a trim the program asked for: [`Heap::trim`](crate::Heap::trim),
    /// `frostheap::trim`, the C ABI's `malloc_trim`): the free top
    /// decommitted, the free spans below it purged and uncharged. With
    /// `collect`, first the owner's cache goes back to its spans, and the
    /// spans that received frees from other threads (those that filled up
    /// first, and those waiting in their queues) collect them, so that one
    /// all of whose blocks are free becomes a free span too. Returns the
    /// bytes no longer charged.
    ///
    /// # Safety
    /// 1. With `collect`, the calling thread owns the heap, on its owner
    ///    path (the heap is not frozen for it: not a runtime worker or the
    ///    main thread inside a phase).
    pub(crate) unsafe fn give_back(&self, collect: bool) -> usize {
        if !collect {
            return self.spans.give_back(self.pages, &self.others.external);
        }
        crate::sync::invariant!(self.is_owner(), "a collection by another thread");
        let before = self.charged();
        // SAFETY: (1).
        unsafe { self.flush_own_cache() };
        self.collect_pending();
        self.collect_queued(false);
        self.spans.give_back(self.pages, &self.others.external);
        // The spans retired by the collection may have given their pages
        // back already (the span allocator's hysteresis, when one joins
        // the free top): what this call released is the drop in the
        // charge, which only the owner raises.
        before.saturating_sub(self.charged())
    }

    /// In a `fork` child, before anything else uses the heap: completes an
    /// owner update of the counters and the remote frees that `fork` cut
    /// in half (see `Remote::repair_after_fork`).
    ///
    /// # Safety
    /// 1. The calling thread is the only thread of the process (a `fork`
    ///    child), and no remote free is in progress on it.
    pub(crate) unsafe fn repair_remote_frees_after_fork(&self) {
        self.local.counters.after_fork();
        // SAFETY: forwarded (1).
        unsafe {
            self.remote()
                .repair_after_fork(self.region().committed() >> PAGE_SHIFT)
        };
    }

    /// Usable size of a live block.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap.
    pub(crate) unsafe fn usable_size(&self, p: *mut u8) -> usize {
        self.pages.usable_size(p as usize)
    }

    /// The class of the owner's small block at `p`, or `None` for a large
    /// block or a block of the shared path: one read of the class map,
    /// which leaves the span's meta line to its owner (see
    /// [`super::page::PageTable::classes`]).
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap.
    #[inline]
    pub(crate) unsafe fn small_class_of(&self, p: *mut u8) -> Option<usize> {
        self.pages
            .small_class((p as usize - self.pages.base) >> crate::region::PAGE_SHIFT)
    }

    /// The block containing `addr`: its base and size, in O(1). Reads the
    /// page table only, so the fault handler may call it.
    pub(crate) fn allocation_containing(&self, addr: usize) -> Option<(usize, usize)> {
        self.pages
            .allocation_containing(addr, self.region().committed())
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
        // SAFETY: the precondition: the owner, nobody else allocating.
        unsafe { self.give_up_own_cache() };
        self.sealed.store(true, Ordering::Release);
        let _s = self.shared_lock.lock();
        let _spans = self.lock_spans();
        for c in 0..N_CLASSES {
            self.local.set_current(c, &EMPTY.0);
            self.shared.set_current(c, &EMPTY.0);
        }
        for idx in 0..self.region().committed() >> PAGE_SHIFT {
            let m = self.meta(idx);
            if m.kind() == Kind::Small {
                m.owner.set(OWNER_SEALED);
                self.pages
                    .set_small_class(idx, m.span_pages.get() as usize, None);
            }
        }
    }
    /// Locks used by the heap, for `fork` handlers (C ABI).
    pub(crate) fn locks(&self) -> [&RawLock; 2] {
        [&self.shared_lock, self.spans.raw_lock()]
    }
}
