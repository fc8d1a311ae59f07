//! Remote frees: a block freed by a thread other than its heap's owner.
//!
//! The freer sets the block's bit in the heap's *remote-free bitmap* (one
//! bit per 16 bytes of the region, in the side table after the page
//! table), and, if that made the bitmap word non-zero, the word's bit in
//! its page's summary (`PageMeta::remote`); the owner collects both when
//! the span runs dry. A remote free writes neither the block nor the
//! span's hot meta line: the owner keeps the block's cache line, and the
//! freer's cost is one atomic OR (plus, for the first block of a 1 KiB
//! stretch, one on the summary word). An intrusive list, which every
//! remote free wrote into the block and the owner then walked, cost two
//! cross-core cache-line transfers per block.
//!
//! **Counting.** A remote free touches no counter: the owner counts the
//! blocks it collects as frees (`HeapCore::collect_remote`), and until
//! then they are the set bits of the bitmap, which statistics read
//! ([`Remote::uncollected`]). Two shared counters that every remote free
//! added to (bytes and count) were two more atomic read-modify-writes per
//! free on a line all freers of the heap wrote: the C producer/consumer
//! case of the `threads` benchmark ran 4.9× the best other allocator's
//! time with them.
//!
//! A span that ran dry and left its queue is marked `FULL`; the first
//! remote free into it pushes it on the heap's *pending* stack so the
//! owner finds it again — without that, memory freed remotely into full
//! spans would never be reused. A freer reads the span's meta before its
//! free is visible and acts on `FULL` only for the span's generation, so a
//! freer delayed after publishing never touches the span's next
//! incarnation. A `fork` child completes the remote frees the fork cut in
//! half ([`Remote::repair_after_fork`]).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::page::{
    invalid_free, owner_local, Block, Kind, PageMeta, PageTable, FULL, GENERATION, GRANULE_SHIFT,
    NONE, PENDING, REMOTE_WORDS,
};
use super::process;
use crate::region::PAGE_SHIFT;
use crate::sync::chaos;
/// `state` of a FULL span on (or on its way to) the pending stack.
const PENDING_FULL: u32 = FULL | PENDING;

/// The fields of a heap that threads other than the owner write on their
/// fast paths, on cache lines of their own.
#[repr(C, align(64))]
pub(super) struct OtherThreads {
    /// Bytes and count of the owner's blocks freed by other threads and
    /// counted outside the owner's counters (atomic adds, which only grow):
    /// its large blocks (and the bytes of in-place shrinks of them), and
    /// the small blocks of spans another thread retired for it
    /// (`HeapCore::retire_spans_freed_whole`, inside a
    /// [`OtherThreads::foreign_update`]). Other small blocks freed by
    /// other threads are counted by the owner as it collects them: see the
    /// module documentation.
    pub(super) foreign_freed_bytes: AtomicUsize,
    pub(super) foreign_freed_count: AtomicUsize,
    /// Odd while a thread that is not the owner moves a span's remote
    /// frees from the bitmap into the foreign counters above (a sequence
    /// lock, written under the span lock, so by one thread at a time):
    /// statistics readers, which count both, retry meanwhile
    /// ([`OtherThreads::read_consistent`]).
    pub(super) foreign_seq: AtomicUsize,
    /// Whether any thread has begun a remote free of a small block (the
    /// `fork` repair has nothing to do otherwise). Set once, read by every
    /// remote free: after the first, the line stays shared.
    pub(super) remote_began: AtomicBool,
    /// Stack of FULL spans that received remote frees (page indices).
    pub(super) pending: AtomicU32,
    /// Whether the heap's thread gave it up (`HeapCore::abandon`) and no
    /// thread adopted it since: the spans remote frees bring back then
    /// wait for an adopter, unless the process collects them
    /// ([`process::brought_back_while_abandoned`]).
    pub(super) abandoned: AtomicBool,
    /// Whether a remote free brought a span back while the heap was
    /// abandoned, since the process last collected it
    /// (`HeapCore::take_brought_back`).
    pub(super) brought_back: AtomicBool,
    pub(super) refused: AtomicU64,
    /// Bytes charged to this heap from outside it (the C ABI charges other
    /// threads' system allocations here): counted against the limit.
    pub(super) external: AtomicUsize,
}

impl OtherThreads {
    pub(super) const fn new() -> OtherThreads {
        OtherThreads {
            foreign_freed_bytes: AtomicUsize::new(0),
            foreign_freed_count: AtomicUsize::new(0),
            foreign_seq: AtomicUsize::new(0),
            remote_began: AtomicBool::new(false),
            pending: AtomicU32::new(NONE),
            abandoned: AtomicBool::new(false),
            brought_back: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            external: AtomicUsize::new(0),
        }
    }

    /// Charges `bytes` of memory held outside the heap against its limit
    /// `cap` (with `committed` bytes committed) and the process limit;
    /// false (and nothing charged) if either would be passed.
    pub(super) fn charge_external(&self, bytes: usize, committed: usize, cap: usize) -> bool {
        let mut cur = self.external.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(bytes) {
                Some(n) if n.saturating_add(committed) <= cap => n,
                _ => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            match self.external.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if process::charge(process::Kind::External, bytes) {
                        return true;
                    }
                    self.external.fetch_sub(bytes, Ordering::Relaxed);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Runs `f`, which moves remote frees from the bitmap into the foreign
    /// counters, with `foreign_seq` odd. The caller holds the heap's span
    /// lock, which keeps other such writers out (a large block freed by
    /// another thread adds to the counters without it, and moves nothing).
    pub(super) fn foreign_update(&self, f: impl FnOnce()) {
        let seq = self.foreign_seq.load(Ordering::Relaxed);
        self.foreign_seq
            .store(seq.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        f();
        self.foreign_seq
            .store(seq.wrapping_add(2), Ordering::Release);
    }

    /// `read()` taken while no [`OtherThreads::foreign_update`] runs, so that
    /// it sees the blocks moved in the bitmap or in the counters, not in
    /// both or neither. Spins, then yields; after 1,000 yields (a signal
    /// handler reading statistics on the thread that is in the middle of
    /// an update, which cannot finish until it returns) it takes the last
    /// reading.
    pub(super) fn read_consistent<R>(&self, mut read: impl FnMut() -> R) -> R {
        let mut attempt = 0;
        loop {
            let seq = self.foreign_seq.load(Ordering::Acquire);
            let r = read();
            core::sync::atomic::fence(Ordering::Acquire);
            if (seq & 1 == 0 && self.foreign_seq.load(Ordering::Relaxed) == seq) || attempt == 1100
            {
                return r;
            }
            attempt += 1;
            if attempt < 100 {
                core::hint::spin_loop();
            } else {
                crate::os::yield_now();
            }
        }
    }

    /// Releases bytes charged with [`OtherThreads::charge_external`].
    pub(super) fn release_external(&self, bytes: usize) {
        process::release(process::Kind::External, bytes);
        let prev = self.external.fetch_sub(bytes, Ordering::Relaxed);
        crate::sync::invariant!(prev >= bytes, "released more external bytes than charged");
    }
}

/// A heap's remote-free machinery: its page table, its bitmap (one bit per
/// 16-byte granule of the region, [`REMOTE_WORDS`] words per page, in the
/// side table after the metas) and the fields other threads write. A view
/// the heap hands out; it holds nothing of its own.
pub(super) struct Remote<'a> {
    pub(super) pages: PageTable,
    pub(super) bits: *const AtomicU64,
    pub(super) others: &'a OtherThreads,
}

impl Remote<'_> {
    /// The remote-free bitmap word `w` (counted from the region's start).
    #[inline]
    pub(super) fn word(&self, w: usize) -> &AtomicU64 {
        crate::sync::invariant!(
            w < (self.pages.len >> PAGE_SHIFT) * REMOTE_WORDS,
            "bitmap word {w} outside the heap"
        );
        // SAFETY: w is inside the bitmap, which lives as long as self.
        unsafe { &*self.bits.add(w) }
    }

    /// Whether any page of the small span headed by `m` (page `idx`) has
    /// remote frees not yet collected.
    pub(super) fn has_remote(&self, idx: usize, m: &PageMeta) -> bool {
        (idx..idx + m.span_pages.get() as usize)
            .any(|page| self.pages.meta(page).remote.load(Ordering::SeqCst) != 0)
    }

    /// Takes the whole pending stack (the top page index, or [`NONE`]).
    pub(super) fn take_pending(&self) -> u32 {
        self.others.pending.swap(NONE, Ordering::Acquire)
    }

    /// Whether every block of the FULL small span headed by `m` (page
    /// `idx`), off the pending stack, was freed by other threads and
    /// announced: the words its pages' summaries name hold as many bits as
    /// the span has blocks. Reads, and takes nothing. A free in flight (its
    /// bit set, its word's summary bit not yet) is not counted, so its span
    /// is not whole yet; a span that is whole has no live block, so no
    /// thread frees into it any more, and its owner allocates from no FULL
    /// span: the caller may retire it ([`Remote::forget`]).
    pub(super) fn freed_whole(&self, m: &PageMeta, idx: usize) -> bool {
        let n: usize = (idx..idx + m.span_pages.get() as usize)
            .map(|page| self.announced(page, self.pages.meta(page).remote.load(Ordering::Acquire)))
            .sum();
        n == m.capacity.get() as usize
    }

    /// The remote frees in the words of page `page` that `summary` (its
    /// summary, as read) names.
    fn announced(&self, page: usize, mut summary: u64) -> usize {
        let mut n = 0;
        while summary != 0 {
            let w = summary.trailing_zeros() as usize;
            summary &= summary - 1;
            n += self
                .word(page * REMOTE_WORDS + w)
                .load(Ordering::Acquire)
                .count_ones() as usize;
        }
        n
    }

    /// Clears the remote frees of a span found [`Remote::freed_whole`]:
    /// its pages' summaries and the words they name. Writes nothing into
    /// the blocks: the span's pages become a free span as they are, with
    /// no free list to build.
    pub(super) fn forget(&self, m: &PageMeta, idx: usize) {
        for page in idx..idx + m.span_pages.get() as usize {
            let mut summary = self.pages.meta(page).remote.swap(0, Ordering::Acquire);
            while summary != 0 {
                let w = summary.trailing_zeros() as usize;
                summary &= summary - 1;
                self.word(page * REMOTE_WORDS + w)
                    .store(0, Ordering::Relaxed);
            }
        }
    }

    /// Puts back on the pending stack the chain of spans from `first` to
    /// `last` (linked by `pending_next`), taken off it and left as they
    /// were (FULL and PENDING). SeqCst: see its caller,
    /// `HeapCore::retire_spans_freed_whole`.
    pub(super) fn put_back_pending(&self, first: u32, last: &PageMeta) {
        let mut top = self.others.pending.load(Ordering::Relaxed);
        loop {
            last.pending_next.store(top, Ordering::Relaxed);
            match self.others.pending.compare_exchange_weak(
                top,
                first,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(t) => top = t,
            }
        }
    }

    /// Moves the remote frees of the small span headed by `m` (page `idx`)
    /// onto its free list; returns how many. `account`: the span is not its
    /// queue's current one, so its `used` count is kept and drops by that
    /// many.
    ///
    /// Each page's summary is taken first, then the words it names: a freer
    /// that sets a bit in a word the owner has already taken finds the word
    /// zero and sets the summary bit again, so no bit is left unannounced.
    pub(super) fn collect(&self, m: &PageMeta, idx: usize, account: bool) -> u32 {
        let mut n = 0;
        let mut list = m.free.get();
        // Pages and words from the top down, each word's blocks chained
        // ahead of the list: the list hands out ascending addresses.
        for page in (idx..idx + m.span_pages.get() as usize).rev() {
            let mut summary = self.pages.meta(page).remote.swap(0, Ordering::Acquire);
            while summary != 0 {
                let w = 63 - summary.leading_zeros() as usize;
                summary &= !(1 << w);
                let word = page * REMOTE_WORDS + w;
                chaos();
                let mut bits = self.word(word).swap(0, Ordering::Acquire);
                if bits == 0 {
                    continue;
                }
                // The word's blocks in ascending order, chained ahead of
                // the list (the words are taken from the top down). A
                // lowest-bit walk: the step carried from block to block is
                // one `bits & (bits - 1)`, and the stores are independent
                // (a highest-bit walk pushing each block on the front
                // carried a bit scan and a rotate from block to block: the
                // C producer/consumer pair on one CPU, whose producer gets
                // every block back this way, went from 17.5 to 15.7 ns per
                // block, medians of seven alternating runs).
                let base = self.pages.base + ((word << 6) << GRANULE_SHIFT);
                let block_at = |g: u32| {
                    let b = (base + ((g as usize) << GRANULE_SHIFT)) as *mut Block;
                    // A bit that is not a carved block of this span (a
                    // stale bit of the pages' earlier life, or a free of an
                    // address inside a block) would hand a block out twice.
                    #[cfg(debug_assertions)]
                    {
                        let into = b as usize - self.pages.page_addr(idx);
                        let size = m.block_size.get() as usize;
                        if !into.is_multiple_of(size) || into / size >= m.extend.get() as usize {
                            super::page::debug_invariant_broken(
                                "a remote-free bit names no carved block",
                                b.cast(),
                                Some(("block size", size)),
                            );
                        }
                    }
                    b
                };
                // The blocks are counted in the walk: without the
                // `popcnt` instruction (not in the x86-64 baseline) a
                // `count_ones` is 17 instructions a word, about six blocks.
                let first = block_at(bits.trailing_zeros());
                let mut last = first;
                bits &= bits - 1;
                n += 1;
                while bits != 0 {
                    let b = block_at(bits.trailing_zeros());
                    bits &= bits - 1;
                    n += 1;
                    // SAFETY: the bit was set by a thread that gave up the
                    // live block starting there (the Acquire swap orders
                    // its use of the block before this write); the block
                    // is ours again and on no list.
                    unsafe { (*last).next = b };
                    last = b;
                }
                // SAFETY: as above, for the word's last block.
                unsafe { (*last).next = list };
                list = first;
            }
        }
        m.free.set(list);
        if account {
            crate::sync::invariant!(
                m.used.get() >= n,
                "collected more remote frees than blocks in use"
            );
            m.used.set(m.used.get() - n);
        }
        n
    }

    /// The remote frees not collected yet in the first `top` pages: their
    /// bytes and their count, from the set bits of the bitmap (the words
    /// each page's summary names) and the block size of their spans. Reads
    /// one summary word per page (the metas' line), and the words of pages
    /// that have any. A free in flight (bit set, summary not yet) is not
    /// seen: it has not happened yet for the reader. The caller keeps the
    /// owner from collecting meanwhile or retries (the owner's sequence
    /// counter), since a collection moves blocks from the bitmap to the
    /// owner's counters.
    pub(super) fn uncollected(&self, top: usize) -> (usize, usize) {
        let (mut bytes, mut count) = (0, 0);
        for page in 0..top {
            let summary = self.pages.meta(page).remote.load(Ordering::Acquire);
            if summary == 0 {
                continue;
            }
            // Bits only exist in small spans, whose geometry stays put
            // until the bits are collected.
            let (_, head) = self.pages.head_of(page);
            if head.kind() != Kind::Small {
                continue;
            }
            let n = self.announced(page, summary);
            count += n;
            bytes += n * head.block_size.get() as usize;
        }
        (bytes, count)
    }

    /// A free by a thread other than the owner of a block of one of the
    /// owner's small spans: sets the block's bit in the remote-free bitmap,
    /// announces the word in its page's summary if the word was empty, and
    /// brings the span back to the owner if it is FULL. Most frees (those
    /// into a word that already had a bit) touch the bitmap alone, not the
    /// span's meta line, which its owner writes on every allocation.
    pub(super) fn free(&self, p: *mut u8) {
        // A runtime worker inside a phase must not write a guarded heap:
        // its frees are queued and applied at the thaw.
        if crate::guard::defer_free(p) {
            return;
        }
        if let Some((head, m, generation)) = self.publish(p) {
            self.bring_back_if_full(m, head, generation);
        }
    }

    /// The first half of [`Remote::free`]: sets the block's bit and, if
    /// that made the word non-zero, the word's summary bit. Returns the
    /// span's head page, its meta and its generation in that case: this
    /// freer must then look for FULL ([`Remote::bring_back_if_full`]). A
    /// freer that found the word non-zero needs not: the one that made it
    /// so looks after setting the summary, and the owner takes both bits
    /// with the word.
    pub(super) fn publish(&self, p: *mut u8) -> Option<(usize, &PageMeta, u32)> {
        if p as usize & ((1 << GRANULE_SHIFT) - 1) != 0 {
            invalid_free(p);
        }
        let granule = (p as usize - self.pages.base) >> GRANULE_SHIFT;
        self.publish_bits(granule >> 6, 1u64 << (granule & 63))
    }

    /// [`Remote::publish`] of several blocks of one bitmap word at once:
    /// `bits` of word `word`, all in one small span of the owner's.
    pub(super) fn publish_bits(&self, word: usize, bits: u64) -> Option<(usize, &PageMeta, u32)> {
        if !self.others.remote_began.load(Ordering::Relaxed) {
            self.others.remote_began.store(true, Ordering::Relaxed);
        }
        // Release: the owner's Acquire swap of the word orders our last use
        // of the blocks before their reuse.
        let old = self.word(word).fetch_or(bits, Ordering::Release);
        chaos();
        if old & bits != 0 {
            // Freed twice without being collected: report the first such
            // block (its address is its granule's).
            let g = (old & bits).trailing_zeros() as usize;
            invalid_free((self.pages.base + ((word << 6 | g) << GRANULE_SHIFT)) as *mut u8);
        }
        if old != 0 {
            return None;
        }
        // This freer made the word non-zero, so the owner cannot see these
        // blocks until it sets the word's summary bit below: the owner
        // finds words only through summaries (`collect`). Until then the
        // blocks count as live in the span (`used`), the span cannot be
        // retired, and its meta says what it said while they were handed
        // out; what the freer needs from it is read now. Once the summary
        // bit is visible the owner may collect the frees, retire the span
        // and hand its pages out again.
        let page = word / REMOTE_WORDS;
        let (head, m) = self.pages.head_of(page);
        let generation = m.state.load(Ordering::Relaxed) & GENERATION;
        // SeqCst, with the `state` load in bring_back_if_full and the
        // owner's store of FULL and look at the summaries
        // (alloc_small_slow): the owner stores FULL and then looks for
        // remote frees, the freer announces its free and then looks for
        // FULL, and one of them sees the other.
        self.pages
            .meta(page)
            .remote
            .fetch_or(1 << (word % REMOTE_WORDS), Ordering::SeqCst);
        chaos();
        Some((head, m, generation))
    }

    /// Remote frees of `blocks`, live small blocks of this heap sorted by
    /// address, by a thread that is not the owner: the blocks of one bitmap
    /// word are published together (one atomic OR for the word, one for
    /// its summary if it was empty, one look for FULL), where freeing them
    /// one by one costs that per block. Anything that is not a block of an
    /// owner's small span, or not 16-aligned, takes [`HeapCore`]'s own free
    /// path (and its checks).
    ///
    /// # Safety
    /// 1. Every block is a live block of this heap (or, for the checks, an
    ///    address inside it), freed once, and the caller is not the owner.
    ///
    /// [`HeapCore`]: super::core::HeapCore
    pub(super) unsafe fn free_sorted(&self, blocks: &[*mut u8], mut free_one: impl FnMut(*mut u8)) {
        let base = self.pages.base;
        let mut i = 0;
        while i < blocks.len() {
            let p = blocks[i];
            if self
                .pages
                .small_class((p as usize - base) >> PAGE_SHIFT)
                .is_none()
                || p as usize & ((1 << GRANULE_SHIFT) - 1) != 0
            {
                free_one(p);
                i += 1;
                continue;
            }
            let word = (p as usize - base) >> (GRANULE_SHIFT + 6);
            let mut bits = 0u64;
            let mut j = i;
            while j < blocks.len()
                && (blocks[j] as usize).wrapping_sub(base) >> (GRANULE_SHIFT + 6) == word
                && blocks[j] as usize & ((1 << GRANULE_SHIFT) - 1) == 0
            {
                let bit = 1u64 << (((blocks[j] as usize - base) >> GRANULE_SHIFT) & 63);
                if bits & bit != 0 {
                    invalid_free(blocks[j]); // the same block twice
                }
                bits |= bit;
                j += 1;
            }
            if let Some((head, m, generation)) = self.publish_bits(word, bits) {
                self.bring_back_if_full(m, head, generation);
            }
            i = j;
        }
    }

    /// The second half of [`Remote::free`], by a freer that
    /// announced a word of the span headed by `m` (page `idx`) while the
    /// span was of generation `generation`: if the span is FULL, puts it on
    /// the pending stack for the owner.
    pub(super) fn bring_back_if_full(&self, m: &PageMeta, idx: usize, generation: u32) {
        // The span may be another incarnation by now: act only on FULL of
        // the generation the block belonged to. A span that is PENDING is
        // retired only after collect_pending takes it off the stack, so
        // the meta stays ours until the push below is done.
        if m.state.load(Ordering::SeqCst) == generation | FULL
            && {
                chaos();
                true
            }
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
                chaos();
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
            if self.others.abandoned.load(Ordering::Relaxed) {
                self.others.brought_back.store(true, Ordering::Relaxed);
                process::brought_back_while_abandoned(1);
            }
        }
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
    pub(super) unsafe fn repair_after_fork(&self, top: usize) {
        if !self.others.remote_began.load(Ordering::Relaxed) {
            return; // no remote free ever began (single-threaded programs)
        }
        // Whether span `idx` is on the pending stack (it allocates nothing:
        // this runs inside `fork`).
        let on_stack = |idx: u32| {
            let mut at = self.others.pending.load(Ordering::Relaxed);
            while at != NONE && at != idx {
                at = self
                    .pages
                    .meta(at as usize)
                    .pending_next
                    .load(Ordering::Relaxed);
            }
            at == idx
        };
        for (idx, m, pages) in self.pages.spans_in_order(top) {
            if m.kind() == Kind::Small && owner_local(m.owner.get()) {
                for page in idx..idx + pages {
                    for w in 0..REMOTE_WORDS {
                        if self.word(page * REMOTE_WORDS + w).load(Ordering::Relaxed) != 0 {
                            self.pages
                                .meta(page)
                                .remote
                                .fetch_or(1 << w, Ordering::Relaxed);
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
}
