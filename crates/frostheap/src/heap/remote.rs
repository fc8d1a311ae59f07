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
//! A span that ran dry and left its queue is marked `FULL`; the first
//! remote free into it pushes it on the heap's *pending* stack so the
//! owner finds it again — without that, memory freed remotely into full
//! spans would never be reused. A freer reads the span's meta before its
//! free is visible and acts on `FULL` only for the span's generation, so a
//! freer delayed after publishing never touches the span's next
//! incarnation. A `fork` child completes the remote frees the fork cut in
//! half ([`HeapCore::repair_remote_frees_after_fork`]).

use core::sync::atomic::{AtomicU64, Ordering};

use super::core::{invalid_free, HeapCore};
use super::page::{Block, Kind, PageMeta, FULL, GENERATION, NONE, OWNER_LOCAL, PENDING};
use crate::region::{PAGE_SHIFT, PAGE_SIZE};

/// Bytes of region one remote-free bitmap bit stands for (every block
/// starts on such a boundary).
pub(super) const GRANULE_SHIFT: usize = 4;
/// Remote-free bitmap words per page: one summary bit each.
pub(super) const REMOTE_WORDS: usize = PAGE_SIZE >> (GRANULE_SHIFT + 6);
const _: () = assert!(REMOTE_WORDS == 64, "a page's summary is one u64");
/// `state` of a FULL span on (or on its way to) the pending stack.
const PENDING_FULL: u32 = FULL | PENDING;

impl HeapCore {
    /// The remote-free bitmap word `w` (counted from the region's start).
    #[inline]
    pub(super) fn remote_word(&self, w: usize) -> &AtomicU64 {
        debug_assert!(
            w < (self.region.reserved() >> PAGE_SHIFT) * REMOTE_WORDS,
            "bitmap word {w} outside the heap"
        );
        // SAFETY: w is inside the bitmap, which lives as long as self.
        unsafe { &*self.remote_bits.add(w) }
    }

    /// Whether any page of the small span headed by `m` (page `idx`) has
    /// remote frees not yet collected.
    pub(super) fn has_remote(&self, idx: usize, m: &PageMeta) -> bool {
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
    pub(super) fn collect_remote(&self, m: &PageMeta, idx: usize, account: bool) -> u32 {
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
    pub(super) fn collect_pending(&self) -> bool {
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

    /// A free by a thread other than the owner of a block of the owner's
    /// small span headed by `m` (page `idx`): sets the block's bit in the
    /// remote-free bitmap, announces the word in its page's summary if the
    /// word was empty, and brings the span back to the owner if it is FULL.
    pub(super) fn free_remote(&self, m: &PageMeta, idx: usize, p: *mut u8) {
        // A runtime worker inside a phase must not write a guarded heap:
        // its frees are queued and applied at the thaw.
        if crate::guard::defer_free(p) {
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
    pub(super) fn publish_remote_free(&self, m: &PageMeta, p: *mut u8) -> Option<u32> {
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
    pub(super) fn bring_back_if_full(&self, m: &PageMeta, idx: usize, generation: u32) {
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

    /// The committed pages as spans, in address order: `(head page, its
    /// meta, pages)` for small, large and free spans; pages in no span one
    /// at a time. Allocates nothing (the fork repair uses it). The caller
    /// keeps the spans still (the span lock, or the only thread).
    pub(super) fn spans_in_order(&self) -> impl Iterator<Item = (usize, &PageMeta, usize)> + '_ {
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
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::heap_of;
    use super::super::page::{IN_QUEUE, OWNER_SHARED};
    use super::*;
    use core::alloc::Layout;
    use core::ptr;

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
}
