//! Unit tests of a heap as a whole (`HeapCore` and its parts together):
//! class queues, remote frees and their repair after `fork`, statistics
//! read during updates, the side table opening as the region grows, and
//! the charge of purged free spans.

use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::Ordering;

use super::class::{class_of, span_pages, CLASS_SIZE};
use super::core::{CoreConfig, HeapCore, BEFORE_GIVE_BACK_HELD};
use super::page::{
    owner_local, Kind, PageMeta, CURRENT_USED, EMPTY, FULL, GENERATION, GRANULE_SHIFT, IN_QUEUE,
    NONE, OWNER_CACHED, OWNER_LOCAL, OWNER_SHARED, PENDING, REMOTE_WORDS,
};
use super::process::Kind as ChargeKind;
use crate::region::{Huge, PAGE_SHIFT, PAGE_SIZE};

/// A heap of `max` bytes, nothing pre-committed, no huge pages.
fn heap_of(max: usize) -> HeapCore {
    HeapCore::new(CoreConfig {
        min: 0,
        max,
        huge_pages: Huge::Off,
        kind: ChargeKind::Explicit,
    })
    .expect("a heap reservation")
}

/// The size class of the span holding `p`, a block of `core`.
fn class_at(core: &HeapCore, p: *mut u8) -> usize {
    let m = core.meta((p as usize - core.pages.base) >> PAGE_SHIFT);
    m.class.get() as usize
}

/// What a small span headed by `m` is charged: its pages, less those left
/// to its carving (`offset`) that the carving has not reached (in the
/// steps of `carved_charge`).
fn small_span_charge(m: &PageMeta) -> usize {
    let (pages, lazy) = (m.span_pages.get() as usize, m.offset.get() as usize);
    let carved = m.extend.get() as usize * m.block_size.get() as usize;
    (pages - lazy) * PAGE_SIZE + super::span::carved_charge(carved, lazy)
}

/// Bytes of the heap's committed range that are resident (`mincore`).
fn resident(core: &HeapCore) -> usize {
    resident_in(core.pages.base as *mut u8, core.region().committed()) * crate::os::page_size()
}

/// Resident pages of the mapped range `[p, p + len)`, `len` a multiple
/// of the OS page (`mincore`).
fn resident_in(p: *mut u8, len: usize) -> usize {
    let mut v = vec![0u8; len / crate::os::page_size()];
    // SAFETY: a mapped range of `len` bytes; a byte per page.
    unsafe { crate::os::resident_pages(p, len, &mut v) }.expect("mincore")
}

/// Checks the charge bookkeeping of the span allocator (see span.rs's
/// "What is charged"): every free span's uncharged count is at most its
/// pages above the region's minimum, every small span taken with pages
/// left to its carving has charged them up to the OS page its carving
/// reached, the heap's charge is its committed range less the pages and
/// bytes not charged, and it is never less than what of the range is
/// resident. Call when no allocation is in flight.
fn check_charge(core: &HeapCore) {
    let committed = core.region().committed();
    let min_pages = core.region().min_committed() >> PAGE_SHIFT;
    let mut uncharged = 0;
    for (idx, m, pages) in core.pages.spans_in_order(committed >> PAGE_SHIFT) {
        let above_min = pages - min_pages.saturating_sub(idx).min(pages);
        match m.kind() {
            Kind::FreeSpan => {
                let u = m.offset.get() as usize;
                assert!(
                    u <= above_min,
                    "free span {idx}: {u} of {pages} pages uncharged, {above_min} above the minimum"
                );
                uncharged += u * PAGE_SIZE;
            }
            Kind::Small => {
                let lazy = m.offset.get() as usize;
                assert!(
                    lazy <= above_min,
                    "small span {idx}: {lazy} of {pages} pages left to its carving, {above_min} above the minimum"
                );
                uncharged += pages * PAGE_SIZE - small_span_charge(m);
            }
            _ => {}
        }
    }
    let s = core.stats();
    assert_eq!(
        s.committed,
        committed - uncharged,
        "charged = committed range − pages and bytes not charged: {s:?}"
    );
    let resident = resident(core);
    assert!(
        s.committed >= resident,
        "{resident} bytes resident, {} charged: {s:?}",
        s.committed
    );
    assert_eq!(s.committed + s.purged, committed, "{s:?}");
}

mod queue {
    use super::*;

    /// The current span's count runs down from CURRENT_USED with every
    /// free; if it ever reached zero (2^31 frees into one current span),
    /// the slow path must leave the span in place, not retire it.
    #[test]
    fn a_current_span_counted_down_to_zero_stays_current() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(48, 8).unwrap();
        let p = core.alloc(layout);
        let q = core.alloc(layout);
        let idx = (p as usize - core.pages.base) >> PAGE_SHIFT;
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

    /// A thread giving up a heap that has grown large retires the current
    /// spans that hold no live block (their `used` is not kept, so the
    /// free list is counted), and leaves alone one that holds a live
    /// block, its contents intact; a trim leaves the current spans alone,
    /// and so does the exit of a thread whose heap stayed small. One class
    /// emptied by the owner's frees, one whose last block another thread
    /// freed (a remote bit, collected first), one with a block still
    /// live.
    #[test]
    fn a_current_span_left_empty_is_retired_and_one_with_a_live_block_kept() {
        use crate::heap::own_cache::OWN_CACHE_FROM;
        let core = heap_of(1 << 30);
        let l = |size| Layout::from_size_align(size, 16).unwrap();
        let class_at = |p: *mut u8| class_at(&core, p);
        // A small heap's exit keeps its current spans.
        let p = core.alloc(l(64));
        let c64 = class_at(p);
        let small_span = core.local.current[c64].get();
        // SAFETY: live, freed once; then the owner gives the heap up and
        // adopts it again.
        unsafe {
            core.free(p);
            core.abandon(&mut |_| 0);
            core.set_owner();
        }
        assert!(!core.local.fine.get());
        assert!(ptr::eq(core.local.current[c64].get(), small_span));
        // Grown past OWN_CACHE_FROM with 8 KiB blocks, all freed.
        let mut filler = Vec::new();
        while core.charged() < OWN_CACHE_FROM + (1 << 20) {
            filler.push(core.alloc(l(8192)));
        }
        for p in filler {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        assert!(core.local.fine.get());
        let small: Vec<*mut u8> = (0..100).map(|_| core.alloc(l(64))).collect();
        let mid: Vec<*mut u8> = (0..10).map(|_| core.alloc(l(1024))).collect();
        let big: Vec<*mut u8> = (0..10).map(|_| core.alloc(l(4096))).collect();
        assert!(small.iter().chain(&mid).chain(&big).all(|p| !p.is_null()));
        let (cs, cm, cb) = (class_at(small[0]), class_at(mid[0]), class_at(big[0]));
        let kept = mid[3];
        // SAFETY: a live 1 KiB block.
        unsafe { ptr::write_bytes(kept, 0x5A, 1024) };
        for &p in small
            .iter()
            .chain(&big[1..])
            .chain(mid.iter().filter(|&&p| p != kept))
        {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        let last = big[0] as usize;
        std::thread::scope(|sc| {
            // SAFETY: live, freed once, by a thread that is not the owner.
            sc.spawn(|| unsafe { core.free(last as *mut u8) });
        });
        assert_eq!(core.stats().in_use, 1024);
        let mid_span = core.local.current[cm].get();
        let emptied = [cs, cb].map(|c| core.local.current[c].get());
        // SAFETY: the owner, no phase.
        unsafe { core.give_back(true) };
        assert_eq!([cs, cb].map(|c| core.local.current[c].get()), emptied);
        // SAFETY: the owner gives the heap up, and adopts it again.
        unsafe {
            core.abandon(&mut |_| 0);
            core.set_owner();
        }
        for c in [cs, cb] {
            assert!(
                ptr::eq(core.local.current[c].get(), &EMPTY.0),
                "class {c}: an empty current span kept"
            );
            assert_eq!(core.local.head[c].get(), NONE);
        }
        assert!(ptr::eq(core.local.current[cm].get(), mid_span));
        // SAFETY: still live.
        let bytes = unsafe { core::slice::from_raw_parts(kept, 1024) };
        assert!(bytes.iter().all(|&b| b == 0x5A), "the live block changed");
        // Only the kept span is charged: its pages, or (taken uncharged)
        // the OS pages its carving reached.
        let s = core.stats();
        // SAFETY: the class's current span, live.
        let kept_charge = small_span_charge(unsafe { &*mid_span });
        assert!(kept_charge <= span_pages(cm) * PAGE_SIZE);
        assert_eq!(s.committed, kept_charge, "{s:?}");
        check_charge(&core);
        // The emptied classes make new spans, and the kept span goes on.
        let again = [core.alloc(l(64)), core.alloc(l(4096)), core.alloc(l(1024))];
        assert_eq!(class_at(again[2]), cm);
        assert_eq!(core.stats().in_use, 1024 + 64 + 4096 + 1024);
        for p in again.into_iter().chain([kept]) {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        // A thread's exit leaves nothing committed.
        // SAFETY: the owner; nobody uses the heap afterwards.
        unsafe { core.abandon(&mut |_| 0) };
        let s = core.stats();
        assert_eq!((s.in_use, s.committed), (0, 0), "{s:?}");
        check_charge(&core);
    }
}

mod remote {
    use super::*;
    use crate::heap::class::{class_of, span_pages};

    /// The owner collects another thread's frees whole and hands them out
    /// in ascending address order, before any fresh block: two of every
    /// three blocks of a fully carved span, freed from the top down, for a
    /// class with many blocks to a bitmap word (48 B) and one whose span
    /// has two pages (4 KiB).
    #[test]
    fn collected_remote_frees_come_back_in_ascending_order() {
        let core = heap_of(64 << 20);
        for size in [48, 4096] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            let first = core.alloc(layout);
            let m = core.meta((first as usize - core.pages.base) >> PAGE_SHIFT);
            let capacity = m.capacity.get() as usize;
            let mut blocks = vec![first as usize];
            blocks.extend((1..capacity).map(|_| core.alloc(layout) as usize));
            assert!(
                blocks.windows(2).all(|w| w[0] < w[1]),
                "not carved in order"
            );
            let (freed, kept): (Vec<usize>, Vec<usize>) = blocks
                .iter()
                .partition(|&&p| (p - blocks[0]) / size % 3 != 1);
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    for &p in freed.iter().rev() {
                        // SAFETY: a live block of this heap, freed once, by
                        // a thread that is not the owner.
                        unsafe { core.free(p as *mut u8) };
                    }
                });
            });
            let again: Vec<usize> = (0..freed.len())
                .map(|_| core.alloc(layout) as usize)
                .collect();
            assert_eq!(
                again, freed,
                "{size} B: not the blocks freed, in ascending order"
            );
            for p in again.into_iter().chain(kept) {
                // SAFETY: live blocks of the heap, freed once by the owner.
                unsafe { core.free(p as *mut u8) };
            }
        }
        assert_eq!(core.stats().in_use, 0);
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
        let layout = Layout::from_size_align(4096, 8).unwrap(); // 32 a span
        let first = core.alloc(layout);
        let s = (first as usize - core.pages.base) >> PAGE_SHIFT;
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
                core.remote()
                    .publish(blocks[8] as *mut u8)
                    .map(|(_, _, generation)| generation)
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
        // (A class whose spans do not fit in the retired one's pages.)
        let (other_size, again_size) = (6_000, 8_000);
        for size in [other_size, again_size] {
            assert!(
                span_pages(class_of(size).unwrap()) > span_pages(class_of(4096).unwrap()),
                "a {size} B span fits in a 4 KiB one's pages"
            );
        }
        let other = core.alloc(Layout::from_size_align(other_size, 8).unwrap());
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
            sc.spawn(|| {
                core.remote()
                    .bring_back_if_full(core.meta(s), s, old_generation)
            });
        });
        assert_eq!(
            m.state.load(Ordering::SeqCst) & !GENERATION,
            FULL,
            "the delayed freer acted on the new incarnation"
        );
        assert_eq!(core.others.pending.load(Ordering::SeqCst), NONE);
        assert_ne!(m.state.load(Ordering::SeqCst) & GENERATION, old_generation);
        // The owner's next refill finds nothing to bring back.
        let again = core.alloc(Layout::from_size_align(again_size, 8).unwrap());
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
        let mut live_found = 0;
        for (idx, m, pages) in core
            .pages
            .spans_in_order(core.region().committed() >> PAGE_SHIFT)
        {
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
                            core.remote().word(w).load(Ordering::SeqCst),
                            0,
                            "bits on page {p}"
                        );
                    }
                }
                continue;
            }
            let (size, start) = (m.block_size.get() as usize, core.pages.page_addr(idx));
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
                    let mut bits = core.remote().word(word).load(Ordering::SeqCst);
                    assert!(
                        bits == 0 || summary & (1 << w) != 0,
                        "word {word} without summary"
                    );
                    while bits != 0 {
                        let g = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let a = core.pages.base + ((word << 6 | g) << GRANULE_SHIFT);
                        assert!(in_span(a), "bitmap block 0x{a:x} not a block of span {idx}");
                        assert!(!live.contains(&a), "live block 0x{a:x} in the bitmap");
                        assert!(seen.insert(a), "block 0x{a:x} twice (bitmap)");
                        in_bitmap += 1;
                    }
                }
            }
            let mut in_cache = 0;
            for (c, b) in core.own.blocks() {
                let a = b as usize;
                if in_span(a) {
                    assert_eq!(
                        c,
                        m.class.get() as usize,
                        "cached block 0x{a:x} of another class"
                    );
                    assert!(
                        !live.contains(&a),
                        "live block 0x{a:x} in the owner's cache"
                    );
                    assert!(seen.insert(a), "block 0x{a:x} twice (cache)");
                    in_cache += 1;
                }
            }
            let st = if owner_local(m.owner.get()) {
                &core.local
            } else {
                &core.shared
            };
            if !ptr::eq(st.current[m.class.get() as usize].get(), m) {
                assert_eq!(m.used.get(), m.extend.get() - on_list, "used of span {idx}");
            }
            let n_live = live.iter().filter(|&&a| in_span(a)).count() as u32;
            live_found += n_live as usize;
            assert_eq!(
                n_live + on_list + in_bitmap + in_cache,
                m.extend.get(),
                "blocks lost in span {idx}"
            );
        }
        assert_eq!(live_found, live.len(), "live blocks outside small spans");
        check_charge(core);
    }

    /// The owner allocates blocks of 16 B to 128 KiB (spans of 1 to 16
    /// pages), frees some itself, keeps some and hands some to another
    /// thread that frees them; every ten rounds, with no free in flight,
    /// every block is accounted for exactly once.
    #[test]
    fn remote_frees_keep_every_block_accounted_for() {
        remote_frees_accounted_for(false);
    }

    /// The same, while a third thread retires the spans the freer freed
    /// whole, as the process limit's reclaimer and a trim do for an owner
    /// that does not collect them (`HeapCore::retire_spans_freed_whole`):
    /// it races with the owner's own collection and frees.
    #[test]
    fn remote_frees_keep_every_block_accounted_for_while_spans_freed_whole_are_retired() {
        remote_frees_accounted_for(true);
    }

    fn remote_frees_accounted_for(retiring: bool) {
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
        let finished = core::sync::atomic::AtomicBool::new(false);
        // Held by the retirer as it retires, and by the checks: a span it
        // is retiring is neither FULL nor free yet.
        let checking = std::sync::Mutex::new(());
        /// Stops the retirer however the scope ends: a failed check would
        /// otherwise leave it running, and the scope waiting for it.
        struct Finish<'a>(&'a core::sync::atomic::AtomicBool);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let retired = std::thread::scope(|sc| {
            let finish = Finish(&finished);
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
            let retirer = sc.spawn(|| {
                let mut retired = 0;
                let mut turn = 0u32;
                while retiring && !finished.load(Ordering::Relaxed) {
                    turn += 1;
                    retired += {
                        let _checks_wait = checking.lock().unwrap_or_else(|e| e.into_inner());
                        core.retire_spans_freed_whole(turn.is_multiple_of(2), false)
                            .0
                    };
                    std::thread::yield_now();
                }
                retired
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
                    let _retirer_waits = checking.lock().unwrap_or_else(|e| e.into_inner());
                    check_blocks(&core, &live);
                }
            }
            live.clear();
            tx.send(std::mem::take(&mut held)).unwrap();
            tx.send(Vec::new()).unwrap();
            done_rx.recv().unwrap();
            drop(finish);
            let retired = retirer.join().unwrap();
            check_blocks(&core, &live);
            retired
        });
        if retiring {
            eprintln!("spans retired for the owner: {retired}");
        }
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }

    /// A thread that allocated blocks of several classes, all of whose
    /// blocks but one another thread freed, and that allocates no more:
    /// its FULL spans wait on the pending stack. Another thread retires
    /// those freed whole for it, counting their blocks as freed by other
    /// threads; the span with a live block stays pending, and the owner
    /// takes it back as usual, and allocates again from what was retired.
    #[test]
    fn spans_other_threads_freed_whole_are_retired_for_an_owner_that_does_not_allocate() {
        let core = heap_of(256 << 20);
        let sizes = [1024usize, 40_000, 100_000];
        let blocks: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&size| {
                let layout = Layout::from_size_align(size, 16).unwrap();
                (0..400).map(|_| core.alloc(layout) as usize).collect()
            })
            .collect();
        assert!(blocks.iter().flatten().all(|&b| b != 0));
        let kept = blocks[0][0];
        let before = core.stats();
        let free_before = core.free_span_bytes();
        let (retired, from_owner, during) = std::thread::scope(|sc| {
            sc.spawn(|| {
                for &b in blocks.iter().flatten().filter(|&&b| b != kept) {
                    // SAFETY: live blocks of this heap, freed once each.
                    unsafe { core.free(b as *mut u8) };
                }
            })
            .join()
            .unwrap();
            let from_owner = core.retire_spans_freed_whole(true, false).0;
            let during = core.stats();
            let retired = sc
                .spawn(|| core.retire_spans_freed_whole(true, false).0)
                .join()
                .unwrap();
            (retired, from_owner, during)
        });
        assert_eq!(from_owner, 0, "the owner collects its own");
        // Every FULL span but the one holding `kept`, and but each class's
        // current span (which is in its queue, not FULL).
        let spans: usize = sizes
            .iter()
            .map(|&size| {
                let c = class_of(size).unwrap();
                400usize.div_ceil(span_pages(c) * PAGE_SIZE / CLASS_SIZE[c] as usize)
            })
            .sum();
        assert!(
            retired >= spans - 3 - 1 && retired < spans,
            "retired {retired} of {spans} spans"
        );
        let after = core.stats();
        assert_eq!(during.in_use, after.in_use, "moved, not counted twice");
        assert_eq!(
            (after.allocations, after.total_allocations),
            (1, before.total_allocations)
        );
        let kept_size = CLASS_SIZE[class_of(1024).unwrap()] as usize;
        assert_eq!(after.in_use, kept_size, "{after:?}");
        assert!(
            core.free_span_bytes() >= free_before + retired * PAGE_SIZE,
            "the retired spans are free spans"
        );
        let mut live = std::collections::HashSet::new();
        live.insert(kept);
        check_blocks(&core, &live);
        // The owner goes on: its last span comes back from the pending
        // stack, and the retired pages serve new spans.
        // SAFETY: the owner frees its last live block, once.
        unsafe { core.free(kept as *mut u8) };
        for &size in &sizes {
            let layout = Layout::from_size_align(size, 16).unwrap();
            let again: Vec<usize> = (0..400).map(|_| core.alloc(layout) as usize).collect();
            assert!(again.iter().all(|&b| b != 0));
            for b in again {
                // SAFETY: the owner's live blocks, freed once each.
                unsafe { core.free(b as *mut u8) };
            }
        }
        check_blocks(&core, &std::collections::HashSet::new());
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }

    /// Statistics read while another thread retires spans freed whole for
    /// their owner see each span's blocks once, either as remote frees
    /// (bits) or as frees by other threads (the foreign counters): with
    /// nothing else moving, every reading is exact.
    #[test]
    fn statistics_read_while_spans_freed_whole_are_retired_stay_exact() {
        let core = heap_of(1 << 30);
        let layout = Layout::from_size_align(4096, 16).unwrap();
        let blocks: Vec<usize> = (0..60_000).map(|_| core.alloc(layout) as usize).collect();
        assert!(blocks.iter().all(|&b| b != 0));
        let kept = core.alloc(layout) as usize;
        let done = core::sync::atomic::AtomicBool::new(false);
        let (retired, readings) = std::thread::scope(|sc| {
            sc.spawn(|| {
                for &b in &blocks {
                    // SAFETY: live blocks of this heap, freed once each.
                    unsafe { core.free(b as *mut u8) };
                }
            })
            .join()
            .unwrap();
            let expected = core.stats();
            assert_eq!(expected.allocations, 1, "{expected:?}");
            let (core, done) = (&core, &done);
            let reader = sc.spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) || n == 0 {
                    let s = core.stats();
                    assert_eq!(
                        (s.in_use, s.allocations),
                        (expected.in_use, 1),
                        "reading {n}: {s:?}"
                    );
                    n += 1;
                }
                n
            });
            let retired = sc
                .spawn(|| core.retire_spans_freed_whole(true, false).0)
                .join()
                .unwrap();
            done.store(true, Ordering::Relaxed);
            (retired, reader.join().unwrap())
        });
        // All FULL spans but the one holding `kept` (32 blocks a span).
        assert!(retired >= 60_000 / 32 - 1, "retired {retired}");
        assert!(readings > 0);
        let s = core.stats();
        assert_eq!(
            (s.in_use, s.allocations),
            (CLASS_SIZE[class_of(4096).unwrap()] as usize, 1)
        );
        // SAFETY: the owner frees its last block, once.
        unsafe { core.free(kept as *mut u8) };
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
            let idx = (first - core.pages.base) >> PAGE_SHIFT;
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
        core.others.remote_began.store(true, Ordering::SeqCst);
        let granule = (p - core.pages.base) >> GRANULE_SHIFT;
        core.remote()
            .word(granule >> 6)
            .fetch_or(1 << (granule & 63), Ordering::SeqCst);
        // Span b: a freer announced block 5 and marked the span PENDING,
        // then the fork came before it pushed the span.
        let q = b_blocks[5];
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let m = core.meta(b);
                let (_, _, generation) = core.remote().publish(q as *mut u8).unwrap();
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
        assert!(!core.remote().has_remote(a, ma), "the bit was announced");
        assert_eq!(core.others.pending.load(Ordering::SeqCst), NONE);
        // SAFETY: no other thread uses the heap now.
        unsafe { core.repair_remote_frees_after_fork() };
        assert!(
            core.remote().has_remote(a, ma),
            "the word was not announced"
        );
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

mod stats {
    use super::*;

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

    /// Blocks freed by another thread count as freed at once, while their
    /// bits wait in the bitmap, and stay counted exactly once when the
    /// owner collects them into its own counters.
    #[test]
    fn remote_frees_count_before_and_after_the_owner_collects_them() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(48, 8).unwrap();
        let blocks: Vec<usize> = (0..100).map(|_| core.alloc(layout) as usize).collect();
        let idx = (blocks[0] - core.pages.base) >> PAGE_SHIFT;
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for &b in &blocks[..40] {
                    // SAFETY: live blocks of this heap, freed once each.
                    unsafe { core.free(b as *mut u8) };
                }
            });
        });
        let m = core.meta(idx);
        assert!(core.remote().has_remote(idx, m), "the frees are bits");
        let before = core.stats();
        assert_eq!(
            (before.in_use, before.allocations, before.total_allocations),
            (60 * 48, 60, 100),
            "{before:?}"
        );
        assert_eq!(core.collect_remote(m, idx, false), 40);
        assert!(!core.remote().has_remote(idx, m), "collected");
        assert_eq!(core.stats(), before, "moved, not counted twice");
        // SAFETY: the owner frees the rest, once each.
        unsafe {
            for &b in &blocks[40..] {
                core.free(b as *mut u8);
            }
        }
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }

    /// A reader takes statistics while the owner allocates and collects
    /// and another thread frees: at most `WINDOW` blocks are live (plus
    /// the two in hand), and every reading says so, give or take the
    /// allocations made while it read (a reading is not one instant: it
    /// takes the freed side first, so it may count blocks allocated and
    /// freed meanwhile as live, never the other way). A reading that
    /// missed a collection (bits gone from the bitmap, not yet in the
    /// counters) would count blocks freed before it began as live.
    #[test]
    fn statistics_read_during_collections_stay_within_the_live_blocks() {
        const WINDOW: usize = 64;
        const BLOCKS: usize = 200_000;
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(64, 8).unwrap();
        let done = core::sync::atomic::AtomicBool::new(false);
        // The owner starts once the reader has read once: on a loaded
        // machine the reader was not scheduled before the owner finished,
        // and read nothing.
        let reading = core::sync::atomic::AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::sync_channel::<usize>(WINDOW - 2);
        let core = &core;
        let readings = std::thread::scope(|sc| {
            sc.spawn(move || {
                for b in rx {
                    // SAFETY: live blocks of this heap, freed once each.
                    unsafe { core.free(b as *mut u8) };
                }
            });
            let reader = sc.spawn(|| {
                let mut n = 0u64;
                let mut before = core.stats().total_allocations;
                while !done.load(Ordering::Relaxed) {
                    let s = core.stats();
                    let live = WINDOW + 2 + (s.total_allocations - before) as usize;
                    assert!(
                        s.in_use <= live * 64 && s.allocations <= live,
                        "reading {n}: at most {live} live: {s:?}"
                    );
                    before = s.total_allocations;
                    n += 1;
                    reading.store(true, Ordering::Relaxed);
                }
                n
            });
            while !reading.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            for _ in 0..BLOCKS {
                let p = core.alloc(layout);
                assert!(!p.is_null());
                tx.send(p as usize).unwrap();
            }
            drop(tx);
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap()
        });
        assert!(readings > 0);
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
        assert_eq!(s.total_allocations, BLOCKS as u64);
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
}

mod span {
    use super::*;
    use crate::heap::page::{BITS_SKEW, CLASSES_END};

    /// The permissions (`rw-p`, `r--p`, ...) of the mapping holding `addr`.
    pub(super) fn perms_at(addr: usize) -> String {
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
        let n_pages = core.region().reserved() >> PAGE_SHIFT;
        let meta_of =
            |idx: usize| core.pages.metas as usize + idx * core::mem::size_of::<PageMeta>();
        let bits_of = |idx: usize| core.remote_bits as usize + idx * REMOTE_WORDS * 8;
        let class_of = |idx: usize| core.pages.classes as usize - idx;
        // Nothing committed: the whole 64 GiB worth of side table (8.5 MiB
        // of page table and bitmap per GiB) is mapped read-only.
        for addr in [
            meta_of(0),
            bits_of(0),
            class_of(0),
            meta_of(n_pages - 1),
            bits_of(n_pages - 1),
            class_of(n_pages - 1),
        ] {
            assert_eq!(perms_at(addr), "r--p", "0x{addr:x} before any allocation");
        }
        assert_eq!(core.meta(n_pages - 1).kind(), Kind::Unused);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        assert!(!p.is_null());
        let committed = core.region().committed() >> PAGE_SHIFT;
        assert!(committed > 0 && committed < n_pages / 2);
        for addr in [
            meta_of(0),
            bits_of(0),
            class_of(0),
            meta_of(committed - 1),
            bits_of(committed - 1),
            class_of(committed - 1),
        ] {
            assert_eq!(perms_at(addr), "rw-p", "0x{addr:x} of a committed page");
        }
        // The class bytes of a heap's first 2,048 pages share the OS page
        // of its first metas, on lines of their own: the map opened no
        // page of its own (the byte of page 2,048 lies on the page below).
        let ps = crate::os::page_size();
        assert!(n_pages > CLASSES_END);
        assert_eq!(class_of(0) / ps, meta_of(0) / ps);
        assert_eq!(class_of(CLASSES_END - 1) / ps, meta_of(0) / ps);
        assert!(
            class_of(0) / 64 + 1 < meta_of(0) / 64,
            "a line between them"
        );
        assert_eq!(class_of(CLASSES_END) / ps + 1, meta_of(0) / ps);
        assert_eq!(perms_at(class_of(CLASSES_END)), "r--p");
        // The bitmap starts one line into an OS page of its own: the first
        // words of pages 0-15 on two OS pages.
        assert_eq!(bits_of(0) % ps, BITS_SKEW);
        assert_eq!(bits_of(15) / ps, bits_of(0) / ps + 1);
        for addr in [
            meta_of(n_pages / 2),
            meta_of(n_pages - 1),
            bits_of(n_pages / 2),
            bits_of(n_pages - 1),
            class_of(n_pages - 1),
        ] {
            assert_eq!(perms_at(addr), "r--p", "0x{addr:x} of an uncommitted page");
        }
        // SAFETY: p is a live block of this heap.
        unsafe { core.free(p) };
    }
}

mod class_map {
    use super::*;
    use crate::heap::class::{class_of, span_pages};

    /// Every committed page's class-map entry agrees with its span's meta:
    /// the class of an owner's small span, nothing for any other page.
    fn check_class_map(core: &HeapCore) {
        let top = core.region().committed() >> PAGE_SHIFT;
        for (head, m, pages) in core.pages.spans_in_order(top) {
            let want = (m.kind() == Kind::Small && owner_local(m.owner.get()))
                .then(|| m.class.get() as usize);
            for idx in head..head + pages {
                assert_eq!(
                    core.pages.small_class(idx),
                    want,
                    "page {idx} of the span at {head} ({:?}, owner {})",
                    m.kind(),
                    m.owner.get()
                );
            }
        }
    }

    /// The class map follows a span through its life: made by the owner
    /// (every page of a multi-page span), retired, its pages taken by
    /// another thread's shared state or a large block, and sealed. A C
    /// `free` on another thread reads it to keep a block for that thread's
    /// own allocations, so a stale entry would hand out a block of the
    /// wrong class or of a span the owner no longer has.
    #[test]
    fn the_class_map_names_exactly_the_owners_small_spans() {
        let core = heap_of(256 << 20);
        let sizes = [16usize, 100, 4096, 20_000, 100_000];
        assert!(
            sizes.iter().any(|&s| span_pages(class_of(s).unwrap()) > 1),
            "no multi-page small span among the sizes"
        );
        let mut owned: Vec<(*mut u8, usize)> = Vec::new();
        for &size in &sizes {
            let layout = Layout::from_size_align(size, 16).unwrap();
            let c = class_of(size).unwrap();
            // Fill more than one span of the class.
            let per_span = span_pages(c) * PAGE_SIZE / size;
            for _ in 0..per_span + 2 {
                let p = core.alloc(layout);
                assert!(!p.is_null());
                // SAFETY: p is a live block of this heap.
                assert_eq!(unsafe { core.small_class_of(p) }, Some(c), "{size} B block");
                owned.push((p, size));
            }
        }
        let large = core.alloc(Layout::from_size_align(300_000, 16).unwrap());
        // SAFETY: a live block of this heap.
        assert_eq!(unsafe { core.small_class_of(large) }, None, "large block");
        let shared = std::thread::scope(|sc| {
            sc.spawn(|| core.alloc(Layout::from_size_align(100, 16).unwrap()) as usize)
                .join()
                .unwrap()
        }) as *mut u8;
        // SAFETY: a live block of this heap.
        let class = unsafe { core.small_class_of(shared) };
        assert_eq!(class, None, "shared-path block");
        check_class_map(&core);

        // The 4 KiB spans' blocks all go: the full ones retire.
        let (gone, kept): (Vec<_>, Vec<_>) = owned.into_iter().partition(|&(_, s)| s == 4096);
        let retired = gone[0].0;
        for (p, _) in gone {
            // SAFETY: live blocks of this heap, freed once.
            unsafe { core.free(p) };
        }
        let retired_page = (retired as usize - core.pages.base) >> PAGE_SHIFT;
        assert_ne!(
            core.meta(retired_page).kind(),
            Kind::Small,
            "span not retired"
        );
        check_class_map(&core);
        // Another thread's allocations and a large block take free pages,
        // the retired span's among them.
        let reused = std::thread::scope(|sc| {
            sc.spawn(|| {
                (0..64)
                    .map(|_| core.alloc(Layout::from_size_align(4096, 16).unwrap()) as usize)
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap()
        });
        let large2 = core.alloc(Layout::from_size_align(200_000, 16).unwrap());
        check_class_map(&core);
        for p in reused
            .into_iter()
            .map(|p| p as *mut u8)
            .chain([large, large2, shared])
        {
            // SAFETY: live blocks of this heap, freed once.
            unsafe { core.free(p) };
        }
        check_class_map(&core);
        // Sealed with the other classes' blocks still live: no span is an
        // owner's any more.
        core.seal_allocation();
        let top = core.region().committed() >> PAGE_SHIFT;
        assert!((0..top).all(|idx| core.pages.small_class(idx).is_none()));
        for (p, size) in kept {
            // SAFETY: a block of this heap, live until the seal.
            assert_eq!(unsafe { core.small_class_of(p) }, None, "{size} B block");
        }
    }
}

mod charge {
    use super::*;

    const MIB: usize = 1 << 20;

    /// One block in each of 24 classes up to 2 KiB, as a thread that
    /// allocates a little does: each span, taken from pages never touched,
    /// is charged for the OS pages its carving reached, not its 64 KiB
    /// pages; a span carved to its end is charged whole; spans retired
    /// and taken again keep the books (`check_charge`).
    #[test]
    fn a_small_span_is_charged_for_the_os_pages_its_carving_reached() {
        let core = heap_of(1 << 30);
        let sizes = [
            16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
            896, 1024, 1280, 1536, 1792, 2048,
        ];
        let few: Vec<*mut u8> = sizes.iter().map(|&n| block(&core, n)).collect();
        let s = core.stats();
        assert!(
            s.committed <= (sizes.len() * 8) << 10,
            "{} bytes charged for {} blocks of {} classes: {s:?}",
            s.committed,
            few.len(),
            sizes.len()
        );
        assert!(s.committed > 0 && s.purged > 0, "{s:?}");
        check_charge(&core);
        // A 64 B span carved to its end is charged whole.
        let layout = Layout::from_size_align(64, 8).unwrap();
        let span_of = |p: *mut u8| (p as usize - core.pages.base) >> PAGE_SHIFT;
        let first_span = span_of(few[3]);
        let mut more = Vec::new();
        while span_of(*more.last().unwrap_or(&few[3])) == first_span {
            more.push(core.alloc(layout));
        }
        assert_eq!(small_span_charge(core.meta(first_span)), PAGE_SIZE);
        check_charge(&core);
        // Everything freed, the empty spans retired (the owner gives the
        // heap up and adopts it again), taken again.
        for p in few.into_iter().chain(more) {
            free(&core, p);
        }
        // SAFETY: the owner gives the heap up, and adopts it again.
        unsafe {
            core.abandon(&mut |_| 0);
            core.set_owner();
        }
        check_charge(&core);
        let again: Vec<*mut u8> = sizes.iter().map(|&n| block(&core, n)).collect();
        check_charge(&core);
        for p in again {
            free(&core, p);
        }
        check_charge(&core);
        assert_eq!(core.stats().in_use, 0);
    }

    /// A large block freed after it was written (resident) merges with the
    /// clean growth above it into one free span whose count says how many
    /// of its pages hold no memory, not which: small spans taken from it
    /// are charged whole, not as they are carved, so the charge never
    /// falls below what is resident (`check_charge`, with `mincore`),
    /// whichever pages the new spans land on and however far they are
    /// carved. (Taken lazily from its front, the first spans were charged
    /// 4 KiB for 64 KiB resident.)
    #[test]
    fn small_spans_from_a_free_span_partly_resident_are_charged_whole() {
        let core = heap_of(1 << 30);
        let large = block(&core, 8 * PAGE_SIZE);
        check_charge(&core);
        free(&core, large);
        let m = core.meta((large as usize - core.pages.base) >> PAGE_SHIFT);
        assert_eq!(m.kind(), Kind::FreeSpan);
        let (n, u) = (m.span_pages.get() as usize, m.offset.get() as usize);
        assert!(
            u > 0 && u < n,
            "not a free span partly resident: {n} pages, {u} uncharged"
        );
        check_charge(&core);
        let sizes = [
            16, 32, 48, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640,
        ];
        let mut live = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            // Carve each class's span to a different depth, up to whole.
            let n = (PAGE_SIZE / size) * (i + 1) / sizes.len();
            live.extend((0..n.max(1)).map(|_| block(&core, size)));
            check_charge(&core);
        }
        for p in live {
            free(&core, p);
        }
        check_charge(&core);
        assert_eq!(core.stats().in_use, 0);
    }

    /// Under the heap's cap, a carving of the current span that cannot be
    /// charged moves on to the class's other spans, which hold blocks
    /// freed since they ran dry, before the allocation is refused.
    #[test]
    fn a_refused_carving_takes_free_blocks_of_the_class_before_it_refuses() {
        let core = heap_of(64 * MIB);
        let l64 = Layout::from_size_align(64, 8).unwrap();
        let span_of = |p: *mut u8| (p as usize - core.pages.base) >> PAGE_SHIFT;
        // Span a carved to its end (dry), then 64 blocks (4 KiB) of span b,
        // taken uncharged: its next carving needs a charge.
        let a: Vec<*mut u8> = (0..PAGE_SIZE / 64).map(|_| core.alloc(l64)).collect();
        let b: Vec<*mut u8> = (0..64).map(|_| core.alloc(l64)).collect();
        let (sa, sb) = (span_of(a[0]), span_of(b[0]));
        assert!(a.iter().all(|&p| span_of(p) == sa) && b.iter().all(|&p| span_of(p) == sb));
        assert_eq!(
            core.meta(sb).offset.get() as usize,
            span_pages(class_of(64).unwrap())
        );
        assert_eq!(small_span_charge(core.meta(sb)), 4096);
        // Eight of a's blocks freed: a waits behind b in the class's queue.
        for &p in &a[..8] {
            free(&core, p);
        }
        // No room left under the cap.
        let s = core.stats();
        assert!(core.charge_external(s.limit - s.committed));
        // b's carving is refused; a's freed blocks are handed out.
        let again: Vec<*mut u8> = (0..8).map(|_| core.alloc(l64)).collect();
        assert!(
            again.iter().all(|&p| !p.is_null() && span_of(p) == sa),
            "{again:?}"
        );
        assert_eq!(core.stats().refused, 0);
        check_charge(&core);
        // Nothing free left in the class: refused, counted once.
        assert!(core.alloc(l64).is_null());
        assert_eq!(core.stats().refused, 1);
        check_charge(&core);
        // Room again: b carves on.
        core.release_external(s.limit - s.committed);
        let more = core.alloc(l64);
        assert_eq!(span_of(more), sb);
        check_charge(&core);
        for p in a[8..].iter().chain(&b).chain(&again).chain([&more]) {
            free(&core, *p);
        }
        check_charge(&core);
        assert_eq!(core.stats().in_use, 0);
    }

    /// A small heap given up keeps for its next thread the empty spans of
    /// the classes its last thread used, and only those: a class the next
    /// thread does not use is retired (purged, uncharged) when that thread
    /// leaves in turn. Threads replaced in generations, each using other
    /// classes, otherwise made every heap keep every generation's.
    #[test]
    fn a_heap_given_up_keeps_the_empty_spans_its_last_thread_used() {
        let core = heap_of(1 << 30);
        let l = |size| Layout::from_size_align(size, 16).unwrap();
        let class_at = |p: *mut u8| class_at(&core, p);
        let current = |c: usize| core.local.current[c].get();
        // The first thread uses 64 B and 256 B blocks, and leaves.
        let (a, b) = (core.alloc(l(64)), core.alloc(l(256)));
        let (ca, cb) = (class_at(a), class_at(b));
        let (span_a, span_b) = (current(ca), current(cb));
        // SAFETY: live, freed once; the owner gives the heap up, and a
        // "next thread" (this one) adopts it.
        unsafe {
            core.free(a);
            core.free(b);
            core.abandon(&mut |_| 0);
            core.set_owner();
        }
        assert!(!core.local.fine.get(), "the heap stays small");
        assert!(ptr::eq(current(ca), span_a) && ptr::eq(current(cb), span_b));
        // The second uses 64 B blocks only.
        let a = core.alloc(l(64));
        assert_eq!(class_at(a), ca);
        // SAFETY: as above.
        unsafe {
            core.free(a);
            core.abandon(&mut |_| 0);
            core.set_owner();
        }
        assert!(ptr::eq(current(ca), span_a), "the class it used is kept");
        assert!(
            ptr::eq(current(cb), &EMPTY.0),
            "a class its thread did not use is kept"
        );
        assert_eq!(core.local.head[cb].get(), NONE);
        // Only the kept span is charged (what its carving reached).
        // SAFETY: the class's current span, live.
        let kept = small_span_charge(unsafe { &*span_a });
        assert_eq!(core.stats().committed, kept);
        check_charge(&core);
        // The third uses none: nothing is kept.
        // SAFETY: the owner gives the heap up.
        unsafe { core.abandon(&mut |_| 0) };
        assert!(ptr::eq(current(ca), &EMPTY.0));
        let s = core.stats();
        assert_eq!((s.in_use, s.committed), (0, 0), "{s:?}");
        check_charge(&core);
        // SAFETY: adopted again: the classes make spans anew.
        unsafe { core.set_owner() };
        let again = [core.alloc(l(64)), core.alloc(l(256))];
        assert!(again.iter().all(|p| !p.is_null()));
        for p in again {
            free(&core, p);
        }
        check_charge(&core);
    }

    /// Written blocks of each of `mib` MiB, each followed by a live block
    /// of a page so that their free spans stay apart, then freed: dirty
    /// free spans of those sizes. Returns the live blocks.
    fn free_spans_apart(core: &HeapCore, mib: &[usize]) -> Vec<*mut u8> {
        let mut live = Vec::new();
        let freed: Vec<*mut u8> = mib
            .iter()
            .map(|&m| {
                let p = block(core, m << 20);
                live.push(block(core, PAGE_SIZE));
                p
            })
            .collect();
        for p in freed {
            free(core, p);
        }
        live
    }

    /// A heap given up is told what its resident free spans hold, keeps
    /// them up to what it is allowed, charged, and purges the rest, the
    /// largest spans first, the top part of one larger than what is left
    /// to purge; allowed 0, or holding less than `WARM_FROM`, it keeps
    /// nothing.
    #[test]
    fn a_heap_given_up_keeps_resident_free_spans_up_to_what_it_may() {
        let core = heap_of(1 << 30);
        let live = free_spans_apart(&core, &[1, 2, 3]);
        let before = core.stats();
        let resident_before = resident(&core);
        let mut told = 0;
        // SAFETY: the owner gives the heap up, then adopts it again.
        let kept = unsafe {
            core.abandon(&mut |held| {
                told = held;
                (2 << 20) + (512 << 10)
            })
        };
        // Told the 6 MiB its free spans hold; allowed 2.5 MiB, it purges
        // the 3 MiB span whole, then the top 512 KiB of the 2 MiB one.
        assert_eq!(told, 6 << 20);
        assert_eq!(kept, (2 << 20) + (512 << 10));
        let gone = (3 << 20) + (512 << 10);
        let after = core.stats();
        assert_eq!(after.committed, before.committed - gone, "{after:?}");
        assert_eq!(resident(&core), resident_before - gone);
        check_charge(&core);
        // SAFETY: as above.
        unsafe { core.set_owner() };
        // SAFETY: as above: with nothing to keep, every free span goes.
        let kept = unsafe { core.abandon(&mut |_| 0) };
        assert_eq!(kept, 0);
        let s = core.stats();
        assert_eq!(s.committed, live.len() * PAGE_SIZE, "{s:?}");
        assert_eq!(resident(&core), live.len() * PAGE_SIZE);
        check_charge(&core);
        // SAFETY: as above.
        unsafe { core.set_owner() };
        for p in live {
            free(&core, p);
        }
        check_charge(&core);
        // Less than WARM_FROM resident and free: purged whatever it may
        // keep.
        let small = heap_of(1 << 30);
        let held = block(&small, PAGE_SIZE);
        free(&small, block(&small, 512 << 10));
        let held_too = block(&small, PAGE_SIZE);
        // SAFETY: as above.
        assert_eq!(unsafe { small.abandon(&mut |held| held) }, 0);
        assert_eq!(resident(&small), 2 * PAGE_SIZE);
        check_charge(&small);
        // SAFETY: as above.
        unsafe { small.set_owner() };
        free(&small, held);
        free(&small, held_too);
    }

    /// Allowed an amount that is not whole pages, falling just above what
    /// the smaller free spans hold, a heap given up purges the larger span
    /// whole rather than asking for a cut of all its pages (which the span
    /// allocator cannot make: the allocator panicked there).
    #[test]
    fn a_heap_given_up_with_an_allowance_of_odd_bytes_keeps_its_charge_right() {
        let core = heap_of(1 << 30);
        let live = free_spans_apart(&core, &[4, 2]);
        let allowed = (2 << 20) + 100;
        // SAFETY: the owner gives the heap up, then adopts it again.
        let kept = unsafe { core.abandon(&mut |_| allowed) };
        assert!(kept <= allowed, "kept {kept} of {allowed}");
        assert!(kept >= 2 << 20, "kept {kept}: the 2 MiB span fits");
        check_charge(&core);
        // SAFETY: as above.
        unsafe { core.set_owner() };
        for p in live {
            free(&core, p);
        }
        check_charge(&core);
    }

    /// A free span whose uncharged pages are its top (a written block
    /// merged with the untouched growth above it), cut for what a heap
    /// given up may keep: the part purged takes the count first, so that
    /// what stays is charged for all it may hold (given to the part kept,
    /// the heap was charged 1.06 MiB with 1.94 MiB resident).
    #[test]
    fn a_free_span_cut_for_what_a_heap_keeps_stays_charged_for_what_it_holds() {
        let core = heap_of(1 << 30);
        let pin = block(&core, PAGE_SIZE);
        let x = block(&core, (2 << 20) + PAGE_SIZE);
        free(&core, x);
        let (_, uncounted) = free_span_at(&core, x as usize);
        assert!(
            uncounted > 0,
            "the free span has no untouched growth above it"
        );
        check_charge(&core);
        // SAFETY: the owner gives the heap up, then adopts it again.
        let kept = unsafe { core.abandon(&mut |_| 1 << 20) };
        assert!(kept <= 1 << 20, "kept {kept}");
        assert!(
            core.stats().committed >= resident(&core),
            "{:?}, {} resident",
            core.stats(),
            resident(&core)
        );
        check_charge(&core);
        // SAFETY: as above.
        unsafe { core.set_owner() };
        free(&core, pin);
        check_charge(&core);
    }

    /// At the heap's cap, a shrink that would move (to a smaller class)
    /// and cannot keeps its block: a program giving memory back at the
    /// limit (`shrink_to_fit`) aborted with "memory allocation of 100
    /// bytes failed".
    #[test]
    fn at_the_cap_a_shrink_that_cannot_move_keeps_its_block() {
        let core = heap_of(64 * MIB);
        let l = |size| Layout::from_size_align(size, 16).unwrap();
        let big = core.alloc(l(MIB));
        assert!(!big.is_null());
        // SAFETY: a live block of 1 MiB.
        unsafe { big.write_bytes(7, MIB) };
        // The rest of the cap taken outside the heap.
        let s = core.stats();
        let room = s.limit - s.committed;
        assert!(core.charge_external(room));
        // 100 bytes would move to a small class, whose span the cap
        // refuses: the block stays, holding the first 100 bytes.
        // SAFETY: big is live, allocated with l(MIB).
        let q = unsafe { core.realloc(big, l(MIB), 100) };
        assert_eq!(q, big, "a shrink refused at the cap: {:?}", core.stats());
        // SAFETY: q holds at least 100 bytes.
        assert!(unsafe { core::slice::from_raw_parts(q, 100) }
            .iter()
            .all(|&b| b == 7));
        // The shrink succeeded: no refusal counted (one was).
        assert_eq!(core.stats().refused, 0, "a kept shrink counted as refused");
        // A growth past the cap is still refused, and counted, the block
        // untouched.
        // SAFETY: q is live, now of l(100).
        let r = unsafe { core.realloc(q, l(100), 2 * MIB) };
        assert!(r.is_null());
        assert_eq!(core.stats().refused, 1);
        core.release_external(room);
        free(&core, q);
        assert_eq!(core.stats().in_use, 0);
        check_charge(&core);
    }

    /// At the heap's cap, what the owner holds and does not use goes back
    /// before an allocation is refused: the empty current spans of classes
    /// it used before (a small block of another class, then a large block,
    /// take their room); and a refusal that follows is counted once.
    #[test]
    fn at_the_cap_the_owners_empty_spans_go_back_before_a_refusal() {
        let core = heap_of(64 * MIB);
        let l = |size| Layout::from_size_align(size, 16).unwrap();
        // One block in each of 24 sizes (17 classes), freed: empty current
        // spans, each charged for the OS page its carving reached.
        let sizes: Vec<usize> = (0..24).map(|i| 16 + 80 * i).collect();
        let held: Vec<*mut u8> = sizes.iter().map(|&n| block(&core, n)).collect();
        for &p in &held {
            free(&core, p);
        }
        let kept = core.stats().committed;
        assert!(
            kept >= 16 * 4096,
            "{kept} bytes charged for the empty spans"
        );
        // The rest of the cap taken outside the heap.
        let s = core.stats();
        let room = s.limit - s.committed;
        assert!(core.charge_external(room));
        // A class never used: its span's first carving takes the room the
        // empty spans give back.
        let p = core.alloc(l(3000));
        assert!(
            !p.is_null(),
            "refused with {kept} bytes of empty spans: {:?}",
            core.stats()
        );
        assert_eq!(core.stats().refused, 0);
        check_charge(&core);
        free(&core, p);
        // Again, for a large block of 64 KiB.
        let held: Vec<*mut u8> = sizes.iter().map(|&n| core.alloc(l(n))).collect();
        assert!(held.iter().all(|p| !p.is_null()), "{:?}", core.stats());
        for &p in &held {
            free(&core, p);
        }
        core.release_external(room);
        let s = core.stats();
        let room = s.limit - s.committed;
        assert!(core.charge_external(room));
        let big = core.alloc(l(64 << 10));
        assert!(!big.is_null(), "{:?}", core.stats());
        assert_eq!(core.stats().refused, 0);
        check_charge(&core);
        // Nothing left to give back: refused, counted once.
        assert!(core.alloc(l(256 << 10)).is_null());
        assert_eq!(core.stats().refused, 1);
        free(&core, big);
        core.release_external(room);
        check_charge(&core);
    }

    /// At the cap, an owner whose pending stack another thread holds (a
    /// retirement of spans freed whole, under the span lock: the limit's
    /// reclaimer of another thread) as it gives back what it holds waits
    /// for it: the spans put back serve the allocation, which is not
    /// refused.
    #[test]
    fn at_the_cap_the_owner_waits_for_a_retirement_in_progress_before_a_refusal() {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Barrier};
        let core = heap_of(64 * MIB);
        let layout = Layout::from_size_align(1024, 16).unwrap();
        let c = class_of(1024).unwrap();
        // Three spans filled exactly, and one block of a fourth, current.
        let per_span = span_pages(c) * PAGE_SIZE / CLASS_SIZE[c] as usize;
        let blocks: Vec<usize> = (0..3 * per_span + 1)
            .map(|_| core.alloc(layout) as usize)
            .collect();
        assert!(blocks.iter().all(|&b| b != 0));
        let s = core.stats();
        let room = s.limit - s.committed;
        assert!(core.charge_external(room));
        // The owner allocates until its current span's carving is refused
        // a page. As it starts giving back what it holds (nothing: its
        // current span has a live block), another thread frees all but
        // one block of each full span (they wait on the pending stack,
        // with free blocks, not freed whole), then takes the stack under
        // the span lock, as a retirer does, and puts it back a while later.
        let take = Arc::new(Barrier::new(2));
        let taken = Arc::new(Barrier::new(2));
        let fired = Arc::new(AtomicBool::new(false));
        let (t1, t2, f) = (take.clone(), taken.clone(), fired.clone());
        BEFORE_GIVE_BACK_HELD.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                f.store(true, Ordering::Relaxed);
                t1.wait();
                t2.wait();
            }))
        });
        let got: Vec<*mut u8> = std::thread::scope(|sc| {
            sc.spawn(|| {
                take.wait();
                for (i, &b) in blocks[..3 * per_span].iter().enumerate() {
                    if i % per_span != 0 {
                        // SAFETY: live blocks of this heap, freed once each.
                        unsafe { core.free(b as *mut u8) };
                    }
                }
                let spans = core.lock_spans();
                let first = core.remote().take_pending();
                taken.wait();
                std::thread::sleep(std::time::Duration::from_millis(100));
                if first != NONE {
                    let mut last = first;
                    loop {
                        let m = core.meta(last as usize);
                        match m.pending_next.load(Ordering::Relaxed) {
                            NONE => break,
                            next => last = next,
                        }
                    }
                    core.remote()
                        .put_back_pending(first, core.meta(last as usize));
                }
                drop(spans);
            });
            let got = (0..per_span).map(|_| core.alloc(layout)).collect();
            if !fired.load(Ordering::Relaxed) {
                // Let the other thread finish (the assertion below fails).
                take.wait();
                taken.wait();
            }
            got
        });
        BEFORE_GIVE_BACK_HELD.with(|h| *h.borrow_mut() = None);
        assert!(fired.load(Ordering::Relaxed), "no refused carving");
        let refused = got.iter().filter(|p| p.is_null()).count();
        assert_eq!(
            refused,
            0,
            "refused while the stack was held: {:?}",
            core.stats()
        );
        assert_eq!(core.stats().refused, 0);
        for p in got {
            free(&core, p);
        }
        for (i, &b) in blocks.iter().enumerate() {
            if i % per_span == 0 || i == 3 * per_span {
                free(&core, b as *mut u8);
            }
        }
        core.release_external(room);
        check_charge(&core);
        assert_eq!(core.stats().in_use, 0, "{:?}", core.stats());
    }

    /// A block of `bytes` from `core`, written (resident).
    fn block(core: &HeapCore, bytes: usize) -> *mut u8 {
        let p = core.alloc(Layout::from_size_align(bytes, 8).unwrap());
        assert!(!p.is_null(), "{bytes} bytes refused: {:?}", core.stats());
        // SAFETY: p holds `bytes` writable bytes.
        unsafe { ptr::write_bytes(p, 0xa5, bytes) };
        p
    }

    fn free(core: &HeapCore, p: *mut u8) {
        // SAFETY: every block these tests free is live and freed once.
        unsafe { core.free(p) }
    }

    /// The free span headed by the page holding `addr`: (pages, uncharged).
    fn free_span_at(core: &HeapCore, addr: usize) -> (usize, usize) {
        let m = core.meta((addr - core.pages.base) >> PAGE_SHIFT);
        assert_eq!(m.kind(), Kind::FreeSpan, "no free span at 0x{addr:x}");
        (m.span_pages.get() as usize, m.offset.get() as usize)
    }

    /// Large blocks aligned beyond a page take their own pages only, cut
    /// at an aligned page out of a free span, the slack before and after
    /// them left free (and uncharged where it holds nothing). A user's
    /// trial: 2 MiB blocks at 2 MiB took twice their size, so 65 of them
    /// filled a 256 MiB limit, and 4 KiB blocks at 4 MiB were charged 4
    /// MiB each.
    #[test]
    fn aligned_large_blocks_take_only_their_own_pages() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(2 << 20, 2 << 20).unwrap();
        let mut got = Vec::new();
        loop {
            let p = core.alloc(layout);
            if p.is_null() {
                break;
            }
            assert_eq!(p as usize % (2 << 20), 0, "aligned");
            // SAFETY: p holds 2 MiB writable bytes.
            unsafe { ptr::write_bytes(p, 0x5a, 2 << 20) };
            got.push(p);
            check_charge(&core);
        }
        let s = core.stats();
        assert!(
            got.len() >= 31,
            "{} blocks of 2 MiB under 64 MiB: {s:?}",
            got.len()
        );
        assert!(s.committed <= (got.len() << 21) + 2 * PAGE_SIZE, "{s:?}");
        for p in got {
            free(&core, p);
        }
        check_charge(&core);

        let core = heap_of(64 << 20);
        let small = Layout::from_size_align(4096, 1 << 20).unwrap();
        let got: Vec<*mut u8> = (0..16)
            .map(|_| {
                let p = core.alloc(small);
                assert!(!p.is_null(), "{:?}", core.stats());
                assert_eq!(p as usize % (1 << 20), 0, "aligned");
                // SAFETY: p holds 4096 writable bytes.
                unsafe { ptr::write_bytes(p, 0x5a, 4096) };
                p
            })
            .collect();
        let s = core.stats();
        assert!(
            s.committed <= 16 * PAGE_SIZE,
            "a page each, not the alignment: {s:?}"
        );
        check_charge(&core);
        for p in got {
            free(&core, p);
        }
        check_charge(&core);
        assert_eq!(core.stats().in_use, 0);
    }

    /// A run cut out of the middle of a free span whose count says some
    /// of its pages hold no memory, not which (a dirty span merged with a
    /// purged one): the span is purged first, so that the part left before
    /// the run is not counted as holding nothing while its pages are
    /// resident (a review's find: up to the alignment's pages resident and
    /// uncounted against the limit).
    #[test]
    fn an_aligned_run_cut_from_a_partly_charged_span_leaves_no_resident_page_uncharged() {
        const ALIGN: usize = 1 << 20;
        let core = heap_of(64 << 20);
        let per = ALIGN / PAGE_SIZE;
        let base_page = core.pages.base / PAGE_SIZE;
        // The first aligned page at least 9 pages into the range: 8 pages
        // of a dirty block end there, 64 purged ones start there.
        let a1 = (base_page + 9).div_ceil(per) * per - base_page;
        let pin0 = block(&core, (a1 - 8) * PAGE_SIZE);
        let x = block(&core, 8 * PAGE_SIZE);
        let y = block(&core, 64 * PAGE_SIZE);
        let _pin1 = block(&core, PAGE_SIZE);
        assert_eq!(x as usize, core.pages.base + (a1 - 8) * PAGE_SIZE);
        free(&core, y);
        core.lock_spans().release_free(); // y purged, uncharged
        free(&core, x); // dirty, charged, merged with y
        assert_eq!(free_span_at(&core, x as usize), (72, 64));
        check_charge(&core);
        let p = core.alloc(Layout::from_size_align(4096, ALIGN).unwrap());
        assert_eq!(p as usize, y as usize, "the first aligned page of the span");
        let m = core.meta(a1 - 8);
        assert_eq!(m.kind(), Kind::FreeSpan);
        assert_eq!(m.span_pages.get(), 8);
        assert!(
            m.flags.get() & super::super::page::DIRTY == 0 && m.offset.get() == 8,
            "x's pages purged before they are counted as holding nothing"
        );
        check_charge(&core);
        for q in [p, pin0] {
            free(&core, q);
        }
        check_charge(&core);
    }

    /// A long-lived block on top of 96 MiB that is then freed: the purge
    /// of the free spans below it uncharges them (the heap's charge drops
    /// while its committed range stays), reusing them charges exactly the
    /// pages taken, and the decommit of the top, once the pin goes,
    /// releases only what was still charged.
    #[test]
    fn free_spans_purged_below_a_pinned_top_are_uncharged_and_charged_again() {
        let core = heap_of(1 << 30);
        let blocks: Vec<*mut u8> = (0..96).map(|_| block(&core, MIB)).collect();
        let pin = block(&core, MIB);
        // The growth not yet used is committed and not charged: less than
        // one step of growth (an eighth of the range, 1 MiB at least).
        let full = core.stats();
        let range = full.committed + full.purged;
        assert!(
            full.committed >= 97 * MIB && full.purged <= range / 8 + MIB,
            "{full:?}"
        );
        for &p in &blocks {
            free(&core, p);
        }
        check_charge(&core);
        let freed = core.stats();
        // Past max(32 MiB, 2 × live) of free resident memory the free
        // spans are purged: here the one span they merged into, whole.
        assert_eq!(freed.purged, full.purged + 96 * MIB, "{freed:?}");
        assert_eq!(freed.committed, full.committed - 96 * MIB, "{freed:?}");
        assert_eq!(free_span_at(&core, blocks[0] as usize), (1536, 1536));

        // 40 MiB reused from the purged span (the only one that fits),
        // charged again: exactly 40 MiB.
        let reused = block(&core, 40 * MIB);
        assert_eq!(reused, blocks[0], "not taken from the purged span");
        let s = core.stats();
        assert_eq!(s.committed, freed.committed + 40 * MIB, "{s:?}");
        assert_eq!(s.purged, freed.purged - 40 * MIB, "{s:?}");
        assert_eq!(
            free_span_at(&core, blocks[0] as usize + 40 * MIB),
            (896, 896)
        );
        check_charge(&core);

        // Everything freed: the free top (purged pages included) is
        // decommitted down to its headroom, nothing released twice.
        free(&core, reused);
        check_charge(&core);
        free(&core, pin);
        check_charge(&core);
        let end = core.stats();
        assert_eq!(end.in_use, 0, "{end:?}");
        assert!(end.committed + end.purged <= 2 * MIB, "{end:?}");
    }

    /// A block of 8 MiB made, written and freed round after round (a
    /// user's trial: 769,000 page faults in 250 rounds, where glibc had
    /// 8,300): the first free decommits the free top; once the region grew
    /// again for the next round's block, the top stays committed and
    /// charged, and the later rounds take it without the region growing;
    /// a free top past the purge bound (32 MiB with little live) still
    /// goes, and so does everything at a trim.
    #[test]
    fn a_large_block_made_and_freed_round_after_round_keeps_the_top_after_its_first_decommit() {
        let core = heap_of(1 << 30);
        let range = |c: &HeapCore| {
            let s = c.stats();
            s.committed + s.purged
        };
        let live = block(&core, 4096);
        let first = block(&core, 8 * MIB);
        free(&core, first);
        assert!(
            range(&core) < 4 * MIB,
            "the first free top stays: {:?}",
            core.stats()
        );
        let again = block(&core, 8 * MIB);
        free(&core, again);
        let kept = range(&core);
        assert!(kept >= 8 * MIB, "the top went again: {:?}", core.stats());
        assert!(core.stats().committed >= 8 * MIB, "kept, still charged");
        for _ in 0..20 {
            let p = block(&core, 8 * MIB);
            assert_eq!(p, again, "not taken from the free top");
            free(&core, p);
            assert_eq!(range(&core), kept, "the region grew or shrank");
        }
        check_charge(&core);
        let big = block(&core, 48 * MIB);
        free(&core, big);
        assert!(
            range(&core) < 4 * MIB,
            "48 MiB free on top stays: {:?}",
            core.stats()
        );
        let p = block(&core, 8 * MIB);
        free(&core, p);
        assert!(range(&core) >= 8 * MIB);
        // SAFETY: the owner, on its owner path.
        unsafe { core.give_back(true) };
        assert!(
            range(&core) < 4 * MIB,
            "a trim keeps the top: {:?}",
            core.stats()
        );
        free(&core, live);
        check_charge(&core);
    }

    /// Runs `round` (which reports whether what it checks held) until it
    /// holds, up to three times: a round that took most of the window in
    /// which a heap keeps what it took back (`WASTE_WINDOW_NS`: 30 s in
    /// the unit tests, a second otherwise) is run again, as its heap's
    /// memory may rightly have gone back once that window passed.
    fn within_the_waste_window(mut round: impl FnMut() -> Result<(), String>) {
        let window = std::time::Duration::from_nanos(crate::heap::span::WASTE_WINDOW_NS);
        let mut last = String::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            match round() {
                Ok(()) => return,
                Err(e) if t.elapsed() >= window * 9 / 10 => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("three rounds each took most of {window:?}; the last: {last}");
    }

    /// A heap whose live memory falls to nothing and comes back: its free
    /// top, decommitted the first time and grown back into, stays the
    /// second time (within twice what the growth took back), where the
    /// bounds on live memory alone (32 MiB, twice what is live) would
    /// decommit 40 MiB again. A thread making 1 MiB blocks that another
    /// freed, 64 in flight, had the heap emptied whenever the maker waited
    /// for its CPU: 890 decommits and 45,000 faults for 40,000 blocks.
    #[test]
    fn a_free_top_grown_back_into_stays_when_the_heap_empties_again() {
        within_the_waste_window(|| {
            let core = heap_of(1 << 30);
            let range = |c: &HeapCore| {
                let s = c.stats();
                s.committed + s.purged
            };
            let live = block(&core, 4096);
            let fill = |core: &HeapCore| (0..40).map(|_| block(core, MIB)).collect::<Vec<_>>();
            for p in fill(&core) {
                free(&core, p);
            }
            if range(&core) >= 8 * MIB {
                return Err(format!("the first free top stays: {:?}", core.stats()));
            }
            let again = fill(&core);
            for p in again {
                free(&core, p);
            }
            let kept = range(&core);
            free(&core, live);
            check_charge(&core);
            if kept < 40 * MIB {
                return Err(format!("the top went again: {} MiB left", kept / MIB));
            }
            Ok(())
        });
    }

    /// The same for free spans below the top: 80 MiB freed under a live
    /// block is purged the first time (past max(32 MiB, twice what is
    /// live)), taken again, and kept the second time, past twice that
    /// threshold, within twice what was taken back.
    #[test]
    fn free_spans_purged_and_taken_again_stay_when_freed_again() {
        within_the_waste_window(|| {
            let core = heap_of(1 << 30);
            let fill = |core: &HeapCore| (0..80).map(|_| block(core, MIB)).collect::<Vec<_>>();
            let first = fill(&core);
            let pin = block(&core, MIB);
            for p in first {
                free(&core, p);
            }
            if core.stats().purged < 32 * MIB {
                return Err(format!("nothing purged the first time: {:?}", core.stats()));
            }
            let again = fill(&core);
            for p in again {
                free(&core, p);
            }
            let purged = core.stats().purged;
            free(&core, pin);
            check_charge(&core);
            if purged > 0 {
                return Err(format!("{} MiB purged the second time", purged / MIB));
            }
            Ok(())
        });
    }

    /// Free memory within the thresholds (64 MiB free under 40 MiB live:
    /// up to twice what is live stays resident) goes back once it stayed
    /// free for `DECAY_NS`, down to `PURGE_RETAIN`; what the program took
    /// again meanwhile does not count as unused, and the next window
    /// starts after each check past the last. Before the decay, a program
    /// that dropped a 600 MB spike with 300 MB live kept 900 MB resident
    /// for as long as it ran.
    #[test]
    fn free_memory_that_stays_unused_for_the_decay_time_goes_back() {
        use crate::heap::span::{DECAY_NS, PURGE_RETAIN};
        let core = heap_of(1 << 30);
        let fill = |core: &HeapCore, n: usize| (0..n).map(|_| block(core, MIB)).collect::<Vec<_>>();
        let dirty = || core.lock_spans().dirty_bytes();
        // What a decay at `at` purges.
        let decay = |at: u64| {
            let before = dirty();
            core.lock_spans().decay(at);
            before - dirty()
        };
        let spike = fill(&core, 64);
        let live = fill(&core, 40);
        let base = core.stats().purged;
        for p in spike {
            free(&core, p);
        }
        // Taken again and freed: the window that began as 32 MiB was
        // passed, on the way up, ended when 48 MiB was taken and began
        // again on the way up, at 33 MiB: of the 64 MiB free now, 1 MiB
        // above the retained 32 was free all along.
        let again = fill(&core, 48);
        for p in again {
            free(&core, p);
        }
        let t = crate::os::monotonic_ns();
        let held = dirty();
        assert!(
            held >= 64 * MIB && core.stats().purged <= base,
            "purged by the thresholds: {} MiB free and resident",
            held / MIB
        );
        let first = decay(t + DECAY_NS);
        assert!(
            first > 0 && first <= 2 * MIB,
            "{} MiB went, of which 48 MiB was taken again in the window",
            first / MIB
        );
        // The next window: what is free stays free; all but 32 MiB goes,
        // cut out of the free spans that hold it, not one whole span more.
        assert_eq!(decay(t + DECAY_NS + DECAY_NS / 2), 0, "half a window");
        assert_eq!(decay(t + 2 * DECAY_NS), held - first - PURGE_RETAIN);
        assert_eq!(dirty(), PURGE_RETAIN);
        assert_eq!(decay(t + 3 * DECAY_NS), 0, "purged again");
        check_charge(&core);
        for p in live {
            free(&core, p);
        }
        check_charge(&core);
    }

    /// A private anonymous mapping of `len` bytes, with `touched(page)`
    /// of its pages written (resident, not zero); unmapped by the caller.
    /// Without huge pages: where the kernel backs anonymous memory with
    /// them (`transparent_hugepage` set to `always`, as in CI's guest),
    /// one touch makes 2 MiB resident, and every page of a sparse mapping
    /// was resident before anything was zeroed.
    fn mapping_with(len: usize, touched: impl Fn(usize) -> bool) -> *mut u8 {
        // SAFETY: a fresh private anonymous mapping, ours alone.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping just made; advice changes no contents.
        let r = unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
        let ps = crate::os::page_size();
        for i in (0..len / ps).filter(|&i| touched(i)) {
            // SAFETY: inside the mapping.
            unsafe { p.cast::<u8>().add(i * ps + 7).write(0xa5) };
        }
        p.cast()
    }

    /// A large block's dirty pages are zeroed by what costs least
    /// (`zero_large`): mostly not resident (a free top kept by its heap,
    /// which the program had touched in a few pages), purged, so that the
    /// rest stays unfaulted; mostly resident (a buffer used whole, round
    /// after round), written, so that nothing faults in again. Every byte
    /// reads zero both ways, those of an unaligned start and end too.
    #[test]
    fn a_large_blocks_dirty_pages_are_purged_or_written_as_they_are_resident() {
        let len = 24 * MIB;
        let ps = crate::os::page_size();
        for (sparse, touched) in [(true, 7usize), (false, 1)] {
            let p = mapping_with(len, |i| i % touched == 0);
            let before = resident_in(p, len);
            // An unaligned block inside the mapping, as a large block may be.
            // SAFETY: inside the mapping, nothing live in it.
            unsafe { crate::heap::core::zero_large(p.add(48), len - 96) };
            let after = resident_in(p, len);
            if sparse {
                assert!(
                    after < before / 4,
                    "sparse: {before} pages resident, then {after}"
                );
            } else {
                assert_eq!(after, len / ps, "dense: pages purged");
            }
            // SAFETY: the mapping's bytes, readable.
            let bytes = unsafe { core::slice::from_raw_parts(p.add(48), len - 96) };
            assert!(
                bytes.iter().all(|&b| b == 0),
                "a byte not zeroed (sparse: {sparse})"
            );
            // SAFETY: the mapping made above, unmapped once.
            unsafe { libc::munmap(p.cast(), len) };
        }
    }

    /// A zeroed block whose run extends the dirty free span at the top is
    /// written with zeros over that span's pages alone: the pages the
    /// growth commits read as zero (never touched, or decommitted). Before,
    /// the whole block was written, each of its pages faulted in: `calloc`
    /// of 256 MiB after a free of the same (its top decommitted down to a
    /// dirty first 2 MiB) took 150 ms a call and made it all resident,
    /// where glibc's fresh mapping takes nothing. Every byte reads zero,
    /// those the free span's old block wrote included.
    #[test]
    fn a_zeroed_block_that_extends_the_top_writes_only_the_dirty_free_span() {
        let core = heap_of(1 << 30);
        let live = block(&core, 4096);
        // As in the test above: the second free of 8 MiB keeps its top,
        // dirty (written with 0xa5 by `block`).
        let first = block(&core, 8 * MIB);
        free(&core, first);
        let dirty = block(&core, 8 * MIB);
        free(&core, dirty);
        let before = resident(&core);
        let len = 96 * MIB;
        let z = core.alloc_zeroed(Layout::from_size_align(len, 8).unwrap());
        assert_eq!(z, dirty, "not the free top extended");
        let grown = resident(&core).saturating_sub(before);
        assert!(
            grown < 2 * MIB,
            "{} KiB of the 88 MiB committed for the block made resident",
            grown >> 10
        );
        // SAFETY: z holds `len` readable bytes.
        let words = unsafe { core::slice::from_raw_parts(z.cast::<u64>(), len / 8) };
        assert!(
            words.iter().all(|&w| w == 0),
            "a byte of the block is not zero"
        );
        free(&core, z);
        free(&core, live);
        check_charge(&core);
    }

    /// A purged span merged with a dirty neighbour keeps its count; a part
    /// cut from the front is charged for as many pages as it takes, and
    /// what is left keeps the rest of the count.
    #[test]
    fn a_purged_span_merged_with_a_dirty_one_charges_what_is_cut_from_it() {
        let core = heap_of(1 << 30);
        // 64 MiB live: the purge threshold is 2 × live, so nothing below
        // is purged on its own.
        let live = block(&core, 64 * MIB);
        let x = block(&core, 40 * MIB);
        let y = block(&core, 8 * MIB);
        let pin = block(&core, MIB);
        let fresh = core.stats().purged; // the growth above the pin
        free(&core, x);
        let dirty = core.stats();
        assert_eq!(dirty.purged, fresh, "{dirty:?}");
        // The refusal path's first step, run by hand: x purged, and the
        // clean free top above the pin uncharged.
        let released = core.lock_spans().release_free();
        let purged = core.stats();
        assert!(released >= 40 * MIB, "{released}");
        assert_eq!(purged.committed, dirty.committed - released, "{purged:?}");
        assert_eq!(free_span_at(&core, x as usize), (640, 640));
        check_charge(&core);
        // y joins x's span: its pages stay charged.
        free(&core, y);
        assert_eq!(free_span_at(&core, x as usize), (768, 640));
        assert_eq!(core.stats().committed, purged.committed);
        check_charge(&core);
        // 8 MiB from the front: 128 pages charged; 512 uncharged left.
        let z = block(&core, 8 * MIB);
        assert_eq!(z, x);
        assert_eq!(core.stats().committed, purged.committed + 8 * MIB);
        assert_eq!(free_span_at(&core, x as usize + 8 * MIB), (640, 512));
        check_charge(&core);
        for p in [z, live, pin] {
            free(&core, p);
            check_charge(&core);
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// Under the heap's own cap: a reuse whose charge does not fit takes a
    /// span that needs none when one fits; otherwise the allocation is
    /// refused as a refused growth is (counted once, nothing charged), and
    /// succeeds, charged, once there is room.
    #[test]
    fn a_reuse_past_the_heaps_cap_is_refused_unless_a_charged_span_fits() {
        let core = heap_of(64 * MIB);
        let pages = |n: usize| Layout::from_size_align(n * PAGE_SIZE, 8).unwrap();
        let a = block(&core, 20 * PAGE_SIZE); // bin of 16..31 pages
        let _s1 = block(&core, 4 * PAGE_SIZE);
        let b = block(&core, 36 * PAGE_SIZE); // bin of 32..63 pages
        let _pin = block(&core, 4 * PAGE_SIZE);
        free(&core, a);
        core.lock_spans().release_free(); // a purged, uncharged
        free(&core, b); // dirty, charged
        assert_eq!(free_span_at(&core, a as usize), (20, 20));
        assert_eq!(free_span_at(&core, b as usize), (36, 0));
        check_charge(&core);
        // No room left under the cap.
        let s = core.stats();
        let room = s.limit - s.committed;
        assert!(core.charge_external(room));

        // 20 pages: a's span comes first but needs a charge; b's does not.
        let c = core.alloc(pages(20));
        assert_eq!(c, b, "not served from the charged span");
        assert_eq!(
            (core.stats().committed, core.stats().refused),
            (s.committed, 0)
        );
        check_charge(&core);

        // 20 pages again: only a's span fits (b's rest is 16 pages), and
        // its charge does not fit even after the heap gave back its own
        // free memory: refused, counted once, nothing charged.
        let d = core.alloc(pages(20));
        assert!(d.is_null(), "20 pages past the cap");
        let after = core.stats();
        assert_eq!(after.refused, 1, "{after:?}");
        assert!(after.committed <= s.committed, "{after:?}");
        assert_eq!(free_span_at(&core, a as usize), (20, 20));
        check_charge(&core);

        // Room again: a's span is reused and charged.
        core.release_external(room);
        let e = core.alloc(pages(20));
        assert_eq!(e, a);
        assert_eq!(core.stats().committed, after.committed + 20 * PAGE_SIZE);
        check_charge(&core);
        for p in [c, e] {
            free(&core, p);
        }
        check_charge(&core);
    }
}

mod remote_cache {
    use super::*;
    use crate::heap::class::{CLASS_SIZE, N_CLASSES};
    use crate::heap::remote_cache::{RemoteCache, CAP, CAP_BYTES};

    /// Blocks come back last in, first out, per class; a class takes no
    /// more than its cap (the caller then frees to the heap); the bytes
    /// held follow the classes' sizes; a drain hands every block back once.
    #[test]
    fn the_cache_is_lifo_per_class_bounded_and_drains_everything() {
        let core = heap_of(64 << 20);
        let cache = RemoteCache::new();
        let c = crate::heap::class::class_of(96).unwrap();
        let layout = Layout::from_size_align(96, 16).unwrap();
        let blocks: Vec<*mut u8> = (0..CAP as usize + 5).map(|_| core.alloc(layout)).collect();
        let cap = (CAP_BYTES / CLASS_SIZE[c]).min(CAP) as usize;
        let mut taken = 0;
        for &b in &blocks {
            // SAFETY: live 16-aligned blocks of class c, given up once.
            if unsafe { cache.push(c, b) } {
                taken += 1;
            } else {
                // SAFETY: refused: still the caller's, freed to its heap.
                unsafe { core.free(b) };
            }
        }
        assert_eq!(
            taken, cap,
            "class {c} of {} bytes took {taken}",
            CLASS_SIZE[c]
        );
        assert_eq!(cache.bytes(), cap * CLASS_SIZE[c] as usize);
        // SAFETY: we own the cache.
        let first = unsafe { cache.pop(c) }.expect("a cached block").as_ptr();
        assert_eq!(first, blocks[cap - 1], "not last in, first out");
        assert!(
            // SAFETY: as above.
            unsafe { cache.pop(c + 1) }.is_none(),
            "another class handed out"
        );
        // SAFETY: first is ours again; given back to the cache.
        assert!(unsafe { cache.push(c, first) });
        let mut drained = Vec::new();
        // SAFETY: we own the cache; every block goes back to its heap.
        unsafe { cache.drain(|blocks| drained.extend_from_slice(blocks)) };
        drained.sort();
        let mut want = blocks[..cap].to_vec();
        want.sort();
        assert_eq!(drained, want, "the drain lost or repeated blocks");
        assert_eq!(cache.bytes(), 0);
        // SAFETY: as above: empty now.
        assert!(unsafe { cache.pop(c) }.is_none());
        for p in drained {
            // SAFETY: live blocks of the heap, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// What one thread can hold of other heaps' memory at most: every
    /// class filled until it refuses.
    #[test]
    fn a_full_cache_holds_at_most_338_kib() {
        let core = heap_of(64 << 20);
        let cache = RemoteCache::new();
        let mut refused = Vec::new();
        for (c, &size) in CLASS_SIZE.iter().enumerate() {
            let layout = Layout::from_size_align(size as usize, 16).unwrap();
            for _ in 0..=CAP {
                let b = core.alloc(layout);
                assert!(!b.is_null());
                // SAFETY: a live 16-aligned block of class c, given up once.
                if !unsafe { cache.push(c, b) } {
                    refused.push(b);
                    break;
                }
            }
        }
        assert_eq!(
            refused.len(),
            N_CLASSES,
            "a class took more than CAP blocks"
        );
        assert_eq!(
            cache.bytes(),
            345_984,
            "a full cache holds {} bytes",
            cache.bytes()
        );
        assert!(CLASS_SIZE.iter().filter(|&&s| s > CAP_BYTES / 2).count() > 0);
        // SAFETY: we own the cache; every block goes back to its heap.
        unsafe { cache.drain(|blocks| refused.extend_from_slice(blocks)) };
        for p in refused {
            // SAFETY: live blocks of the heap, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// With enough thread heaps live, a class the thread allocates from
    /// (its first pop since the count crossed the line) takes up to its
    /// deep cap; below the line, and for a class the thread only frees
    /// into, the shallow cap holds; the deeper classes add at most
    /// `DEEP_EXTRA` bytes; the drain makes every class shallow again. With
    /// two or three heaps, a pop from a full class makes it medium on a
    /// thread that may run on several CPUs, and on no other.
    #[test]
    fn classes_the_thread_allocates_from_deepen_with_many_heaps() {
        use crate::heap::remote_cache::{
            live_heaps, set_live_heaps, DEEP, DEEP_CAP, DEEP_CAP_BYTES, DEEP_EXTRA,
            DEEP_FROM_HEAPS, MEDIUM, MEDIUM_CAP, MEDIUM_CAP_BYTES, MEDIUM_FROM_HEAPS, SHALLOW,
        };
        let core = heap_of(256 << 20);
        let cache = RemoteCache::new();
        let before = live_heaps();
        let block = |c: usize| {
            let b = core.alloc(Layout::from_size_align(CLASS_SIZE[c] as usize, 16).unwrap());
            assert!(!b.is_null());
            b
        };
        // Pushes blocks of class c until the cache refuses one (freed to
        // the heap); returns how many it took.
        let fill = |c: usize| {
            let mut taken = 0;
            loop {
                let b = block(c);
                // SAFETY: a live 16-aligned block of class c, given up once.
                if !unsafe { cache.push(c, b) } {
                    // SAFETY: refused: still ours.
                    unsafe { core.free(b) };
                    return taken;
                }
                taken += 1;
            }
        };
        let shallow = |c: usize| (CAP_BYTES / CLASS_SIZE[c]).min(CAP);
        let medium = |c: usize| (MEDIUM_CAP_BYTES / CLASS_SIZE[c]).min(MEDIUM_CAP);
        let deep = |c: usize| (DEEP_CAP_BYTES / CLASS_SIZE[c]).min(DEEP_CAP);
        let a = crate::heap::class::class_of(96).unwrap();
        let b = crate::heap::class::class_of(48).unwrap();
        assert!(shallow(a) < medium(a) && medium(a) < deep(a));

        // Below the line: a pop from a class that is not full leaves it
        // shallow.
        set_live_heaps(DEEP_FROM_HEAPS - 1);
        let q = block(a);
        // SAFETY: a live 16-aligned block of class a, given up once.
        assert!(unsafe { cache.push(a, q) });
        // SAFETY: we own the cache.
        let p = unsafe { cache.pop(a) }.expect("a cached block").as_ptr();
        assert_eq!(p, q);
        assert_eq!(cache.level(a), SHALLOW);
        // SAFETY: p is ours again.
        assert!(unsafe { cache.push(a, p) });
        assert_eq!(fill(a) + 1, shallow(a), "a shallow class's bound");

        // On the line: the next pop deepens the class it pops from.
        set_live_heaps(DEEP_FROM_HEAPS);
        // SAFETY: as above.
        let p = unsafe { cache.pop(a) }.expect("a cached block").as_ptr();
        assert_eq!(
            cache.level(a),
            DEEP,
            "a class popped from with enough heaps did not go deep"
        );
        assert_eq!(cache.cap(a), deep(a));
        // SAFETY: as above.
        assert!(unsafe { cache.push(a, p) });
        assert_eq!(fill(a) + shallow(a), deep(a), "a deep class's bound");
        // A class only freed into stays shallow.
        assert_eq!(fill(b), shallow(b));
        assert_eq!(cache.level(b), SHALLOW);

        // Every cached class popped from once: the deeper ones add at most
        // DEEP_EXTRA bytes, and the budget runs out before every class
        // is deep (those it leaves room for go medium).
        for c in 0..N_CLASSES {
            if c == a || cache.cap(c) == 0 {
                continue;
            }
            let p = block(c);
            // SAFETY: as above.
            if unsafe { cache.push(c, p) } {
                // SAFETY: we own the cache.
                let q = unsafe { cache.pop(c) }
                    .expect("the block just cached")
                    .as_ptr();
                assert_eq!(q, p);
                // SAFETY: ours again, freed once.
                unsafe { core.free(q) };
            } else {
                // SAFETY: refused: still ours.
                unsafe { core.free(p) };
            }
        }
        let extra: usize = (0..N_CLASSES)
            .filter(|&c| cache.cap(c) > 0)
            .map(|c| {
                let more = match cache.level(c) {
                    DEEP => deep(c) - shallow(c),
                    MEDIUM => medium(c) - shallow(c),
                    _ => 0,
                };
                assert_eq!(cache.cap(c), shallow(c) + more, "class {c}'s cap");
                more as usize * CLASS_SIZE[c] as usize
            })
            .sum();
        assert!(extra <= DEEP_EXTRA, "deeper classes add {extra} bytes");
        assert!(
            (0..N_CLASSES).any(|c| cache.cap(c) > 0 && c != b && cache.level(c) != DEEP),
            "every class popped from went deep: the budget bound nothing"
        );

        // The drain: every block back once, every class shallow.
        let mut drained = Vec::new();
        // SAFETY: we own the cache; every block goes back to its heap.
        unsafe { cache.drain(|blocks| drained.extend_from_slice(blocks)) };
        assert_eq!(cache.bytes(), 0);
        assert!((0..N_CLASSES).all(|c| cache.level(c) == SHALLOW));
        assert_eq!(cache.cap(a), shallow(a));

        // Medium. One heap: a pop from the full class leaves it shallow.
        set_live_heaps(MEDIUM_FROM_HEAPS - 1);
        assert_eq!(fill(a), shallow(a));
        // SAFETY: we own the cache.
        let p = unsafe { cache.pop(a) }.expect("a cached block").as_ptr();
        assert_eq!(cache.level(a), SHALLOW, "medium with one heap");
        // SAFETY: p is ours again.
        assert!(unsafe { cache.push(a, p) });
        // Two heaps, a class that is not full: shallow.
        set_live_heaps(MEDIUM_FROM_HEAPS);
        let q = block(b);
        // SAFETY: a live 16-aligned block of class b, given up once.
        assert!(unsafe { cache.push(b, q) });
        // SAFETY: we own the cache.
        let p = unsafe { cache.pop(b) }.expect("a cached block").as_ptr();
        assert_eq!(cache.level(b), SHALLOW, "medium from a pop that found room");
        // SAFETY: p is ours again.
        assert!(unsafe { cache.push(b, p) });
        // Two heaps, the full class, on a thread pinned to one CPU (two
        // threads sharing a CPU took 1.33x the time in larson with caps
        // this large): shallow.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: an all-zero cpu_set_t is an empty set; the calls
                // read and write one set of that size.
                unsafe {
                    let mut set: libc::cpu_set_t = core::mem::zeroed();
                    let size = core::mem::size_of::<libc::cpu_set_t>();
                    assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
                    let cpu = (0..libc::CPU_SETSIZE as usize)
                        .find(|&i| libc::CPU_ISSET(i, &set))
                        .expect("a CPU in the mask");
                    libc::CPU_ZERO(&mut set);
                    libc::CPU_SET(cpu, &mut set);
                    assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
                }
                assert_eq!(crate::os::thread_cpus(), 1);
                // SAFETY: this thread uses the cache alone meanwhile.
                let p = unsafe { cache.pop(a) }.expect("a cached block").as_ptr();
                assert_eq!(cache.level(a), SHALLOW, "medium on one CPU");
                // SAFETY: p is the cache's to take again.
                assert!(unsafe { cache.push(a, p) });
            });
        });
        // Two heaps, the full class, on this thread: medium if it may run
        // on several CPUs. (The count again: a cache counts its thread's
        // CPUs once per epoch, and the pinned thread used this one.)
        set_live_heaps(MEDIUM_FROM_HEAPS);
        if crate::os::thread_cpus() > 1 {
            // SAFETY: we own the cache.
            let p = unsafe { cache.pop(a) }.expect("a cached block").as_ptr();
            assert_eq!(cache.level(a), MEDIUM, "a full class popped stayed shallow");
            assert_eq!(cache.cap(a), medium(a));
            // SAFETY: p is ours again.
            assert!(unsafe { cache.push(a, p) });
            assert_eq!(fill(a), medium(a) - shallow(a), "a medium class's bound");
        } else {
            eprintln!(
                "SKIPPED (one CPU on this machine): a full class popped on a thread \
                 that may run on several CPUs goes medium"
            );
        }
        // SAFETY: we own the cache; every block goes back to its heap.
        unsafe { cache.drain(|blocks| drained.extend_from_slice(blocks)) };
        assert!((0..N_CLASSES).all(|c| cache.level(c) == SHALLOW));
        assert_eq!(cache.bytes(), 0);
        let n = drained.len();
        drained.sort();
        drained.dedup();
        assert_eq!(drained.len(), n, "the drain repeated a block");
        for p in drained {
            // SAFETY: live blocks of the heap, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
        set_live_heaps(before);
    }

    /// Blocks freed by another thread in one sorted batch (a word of the
    /// bitmap at a time) are all counted free, and the owner allocates
    /// every one of them again; a large block in the batch takes its own
    /// path.
    #[test]
    fn a_sorted_batch_of_remote_frees_is_collected_whole() {
        let core = heap_of(64 << 20);
        let small = Layout::from_size_align(48, 16).unwrap();
        let mut blocks: Vec<usize> = (0..500).map(|_| core.alloc(small) as usize).collect();
        let large = core.alloc(Layout::from_size_align(300 << 10, 16).unwrap());
        blocks.push(large as usize);
        let in_use = core.stats().in_use;
        assert!(in_use >= 500 * 48 + (300 << 10));
        let mut batch = blocks.clone();
        batch.sort_unstable();
        std::thread::scope(|s| {
            s.spawn(|| {
                let ptrs: Vec<*mut u8> = batch.iter().map(|&p| p as *mut u8).collect();
                // SAFETY: live blocks of the heap, sorted, freed once, by a
                // thread that is not the owner.
                unsafe { core.free_remote_sorted(&ptrs) };
            });
        });
        assert_eq!(core.stats().in_use, 0, "the batch is not counted free");
        let set: std::collections::HashSet<usize> = blocks[..500].iter().copied().collect();
        let again: Vec<*mut u8> = (0..2000).map(|_| core.alloc(small)).collect();
        let back = again
            .iter()
            .filter(|&&p| set.contains(&(p as usize)))
            .count();
        assert_eq!(back, 500, "the owner got {back} of the 500 blocks back");
        for p in again {
            // SAFETY: live blocks, freed once by the owner.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
    }
}

mod span_handout {
    use super::*;

    /// Regression (the double hand-out `preload::cross_thread_frees` and
    /// `ci/chaos.sh` caught): a span taken from the span allocator must
    /// not read as free once the span lock is released, whatever its
    /// caller still has to write into its metas. `alloc_large` released
    /// the lock before laying the block out, and the span's last page
    /// still said `FreeTail` (head: the span) from its free life: a thread
    /// freeing the span after it, in that window, merged the new block
    /// into its free span, and the block's pages were handed out again.
    #[test]
    fn a_taken_span_never_reads_as_free_to_its_neighbours() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(150 << 10, 16).unwrap(); // 3 pages
        let [a, b, c] = [0; 3].map(|_| core.alloc(layout));
        let page = |p: *mut u8| (p as usize - core.pages.base) >> PAGE_SHIFT;
        assert_eq!(
            (page(b), page(c)),
            (page(a) + 3, page(a) + 6),
            "laid out in a row"
        );
        // SAFETY: a live block, freed once: [b, b + 3) becomes a free span
        // whose last page is its FreeTail.
        unsafe { core.free(b) };
        // Take it as a 3-page span and lay nothing out yet: the lock is
        // released, as between the span allocator and `large::place`.
        let (idx, _) = core.lock_spans().alloc(3).expect("the free span fits");
        assert_eq!(idx, page(b));
        for i in idx..idx + 3 {
            let k = core.meta(i).kind();
            assert!(
                k != Kind::FreeSpan && k != Kind::FreeTail,
                "page {i} of a taken span reads as {k:?}"
            );
        }
        // The neighbour after it is freed meanwhile: it must not take the
        // taken pages into its free span.
        // SAFETY: a live block, freed once.
        unsafe { core.free(c) };
        assert_eq!(
            core.meta(page(c)).kind(),
            Kind::FreeSpan,
            "c's pages are free"
        );
        assert_ne!(
            core.meta(idx).kind(),
            Kind::FreeSpan,
            "the taken span was merged"
        );
        // A 6-page request cannot get the taken pages either.
        let big = core.alloc(Layout::from_size_align(6 * PAGE_SIZE - 4096, 16).unwrap());
        let bp = page(big);
        assert!(
            bp + 6 <= idx || bp >= idx + 3,
            "a 6-page block at page {bp} overlaps the taken span at {idx}"
        );
        // Lay the span out now (what alloc_large does) and free everything.
        let (addr, _) = super::super::large::place(&core.pages, idx, 3, 16, OWNER_LOCAL);
        // SAFETY: live blocks, each freed once (the placed one is counted
        // as the owner's: account for it first).
        unsafe {
            core.free(a);
            core.free(big);
        }
        core.local.on_alloc(3 * PAGE_SIZE);
        // SAFETY: the placed block is live and freed once.
        unsafe { core.free(addr as *mut u8) };
        assert_eq!(core.stats().in_use, 0);
        check_charge(&core);
    }
}

mod remote_batch {
    use super::*;
    use crate::heap::remote_batch::{RemoteBatch, BATCHED};

    /// Another thread's frees of 64-byte blocks (16 to a bitmap word) reach
    /// the owner a word at a time: held while they fall in one word, that
    /// word published when a free falls in another; the bytes held follow;
    /// classes above 512 B are refused (the caller frees them itself).
    /// The class of 64-byte blocks, 48 of them allocated from `core`'s
    /// fresh span (carved in ascending order, 16 to a 1 KiB bitmap word),
    /// and those of them in the first one's word.
    fn blocks_of_64(core: &HeapCore) -> (usize, Vec<usize>, Vec<usize>) {
        let layout = Layout::from_size_align(64, 16).unwrap();
        let c = crate::heap::class::class_of(64).unwrap();
        let blocks: Vec<usize> = (0..48).map(|_| core.alloc(layout) as usize).collect();
        assert!(blocks.windows(2).all(|w| w[0] < w[1]), "not ascending");
        let word = |p: usize| (p - core.base()) >> 10;
        let first = blocks
            .iter()
            .copied()
            .filter(|&p| word(p) == word(blocks[0]))
            .collect();
        (c, blocks, first)
    }

    #[test]
    fn frees_are_held_per_word_and_published_when_the_word_changes() {
        let core = heap_of(64 << 20);
        let (c, blocks, first) = blocks_of_64(&core);
        let word = |p: usize| (p - core.base()) >> 10;
        assert!(first.len() >= 2, "one block in the first word");
        let live = core.stats().in_use;
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let batch = RemoteBatch::new();
                for &p in &first {
                    // SAFETY: a live 16-aligned block of core's small span
                    // of class c, freed once, by a thread that is not the
                    // owner; core outlives the batch's use.
                    assert!(unsafe { batch.free(&core, c, p as *mut u8) });
                }
                assert_eq!(batch.blocks() as usize, first.len());
                assert_eq!(batch.bytes(), first.len() * 64);
                assert_eq!(
                    core.stats().in_use,
                    live,
                    "blocks of a word still held reached the heap"
                );
                let next = blocks[first.len()];
                assert_ne!(word(next), word(blocks[0]));
                // SAFETY: as above.
                assert!(unsafe { batch.free(&core, c, next as *mut u8) });
                assert_eq!(batch.blocks(), 1, "the first word was not published");
                assert_eq!(batch.bytes(), 64);
                assert_eq!(core.stats().in_use, live - first.len() * 64);
                // A class above 512 B is not gathered.
                let big = BATCHED;
                assert!(crate::heap::class::CLASS_SIZE[big] > 512);
                // SAFETY: refused before anything is read: the block is not
                // of that class, and stays live.
                assert!(!unsafe { batch.free(&core, big, blocks[47] as *mut u8) });
                // SAFETY: as above.
                unsafe { batch.publish_all() };
                assert_eq!(batch.blocks(), 0);
                assert_eq!(batch.bytes(), 0);
            });
        });
        assert_eq!(core.stats().in_use, live - (first.len() + 1) * 64);
        for &p in &blocks[first.len() + 1..] {
            // SAFETY: live blocks of the heap, freed once.
            unsafe { core.free(p as *mut u8) };
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// The free found from its address alone (`free_held`, which every
    /// remote free tries first): it takes a block of a word held, and
    /// nothing else: not a block of a word no longer held though its hint
    /// still names the class, not a block of a word never held, not null.
    #[test]
    fn a_free_is_found_by_address_only_in_a_word_held() {
        let core = heap_of(64 << 20);
        let (c, blocks, first) = blocks_of_64(&core);
        assert!(
            first.len() >= 3,
            "fewer than three blocks in the first word"
        );
        let next = blocks[first.len()];
        let live = core.stats().in_use;
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let batch = RemoteBatch::new();
                let held = |p: usize| {
                    // SAFETY: null, or a live 16-aligned block of core's
                    // small span of class c, freed once (each block below
                    // is freed by one call that takes it), by a thread that
                    // is not the owner; core outlives the batch's use.
                    unsafe { batch.free_held(p as *mut u8) }
                };
                let free = |p: usize| {
                    // SAFETY: as above.
                    unsafe { batch.free(&core, c, p as *mut u8) }
                };
                assert!(!held(blocks[0]), "nothing held yet");
                assert!(!held(0));
                assert!(free(first[0]));
                assert!(held(first[1]), "a block of the word held");
                assert_eq!(batch.blocks(), 2);
                assert!(!held(next), "a word not held");
                assert_eq!(batch.blocks(), 2, "a refused free changed the batch");
                // The class moves on to `next`'s word: the first is
                // published, and its hint, still naming the class, finds
                // another key there.
                assert!(free(next));
                assert_eq!(batch.blocks(), 1);
                assert!(!held(first[2]), "a stale hint took a block");
                assert_eq!(batch.blocks(), 1, "a refused free changed the batch");
                assert!(free(first[2]));
                // SAFETY: this thread owns the batch.
                unsafe { batch.publish_all() };
                assert_eq!(batch.blocks(), 0);
            });
        });
        assert_eq!(core.stats().in_use, live - 4 * 64);
        for &p in blocks
            .iter()
            .filter(|&&p| ![first[0], first[1], first[2], next].contains(&p))
        {
            // SAFETY: live blocks of the heap, freed once.
            unsafe { core.free(p as *mut u8) };
        }
        assert_eq!(core.stats().in_use, 0);
    }
}

mod own_cache {
    use super::*;
    use crate::heap::own_cache::{OWN_CACHE_FROM, OWN_CAP};

    const KIB: Layout = match Layout::from_size_align(1024, 16) {
        Ok(l) => l,
        Err(_) => panic!(),
    };

    /// Allocates 1 KiB blocks until the heap has committed `bytes`.
    fn fill(core: &HeapCore, bytes: usize) -> Vec<*mut u8> {
        let mut blocks = Vec::new();
        while core.charged() < bytes {
            let p = core.alloc(KIB);
            assert!(!p.is_null(), "allocation {} refused", blocks.len());
            blocks.push(p);
        }
        blocks
    }

    /// The owner's cache's stacks are not part of a heap (a thread heap's
    /// slot in static storage, which a small heap writes whole at start):
    /// the whole heap is smaller than the stacks alone.
    #[test]
    fn a_heap_keeps_the_stacks_of_its_cache_outside() {
        let heap = core::mem::size_of::<crate::heap::HeapInner>();
        let stacks = core::mem::size_of::<crate::heap::own_cache::OwnSlots>();
        assert!(
            heap < stacks,
            "a heap of {heap} bytes, its cache's stacks {stacks}"
        );
    }

    /// A heap below OWN_CACHE_FROM frees onto its spans' lists; past it,
    /// spans made from then on are OWNER_CACHED, and the owner's free of
    /// their blocks touches neither the block nor the span, and the next
    /// allocation of the class takes the same block back, counted
    /// exactly.
    #[test]
    fn frees_of_a_large_heap_leave_the_block_untouched() {
        let core = heap_of(1 << 30);
        let small = fill(&core, OWN_CACHE_FROM / 2);
        assert!(!core.own.enabled(), "the cache is on in a heap of 4 MiB");
        assert!(
            core.own.slots_at().is_null(),
            "the cache's stacks set in a heap of 4 MiB"
        );
        let m = core.meta((small[0] as usize - core.pages.base) >> PAGE_SHIFT);
        assert_eq!(m.owner.get(), OWNER_LOCAL);
        let mut blocks = fill(&core, OWN_CACHE_FROM + (1 << 20));
        assert!(
            core.own.enabled(),
            "the cache is off at {} bytes",
            core.charged()
        );
        // The stacks lie in the side table, opened now, not in the heap.
        let stacks = core.own.slots_at() as usize;
        let heap = &core as *const HeapCore as usize;
        assert!(stacks != 0 && !(heap..heap + core::mem::size_of::<HeapCore>()).contains(&stacks));
        assert_eq!(super::span::perms_at(stacks), "rw-p");
        blocks.extend(small);
        let p = *blocks
            .iter()
            .rev()
            .find(|&&p| {
                let m = core.meta((p as usize - core.pages.base) >> PAGE_SHIFT);
                m.owner.get() == OWNER_CACHED
            })
            .expect("a block of a cached span");
        // SAFETY: a live 1 KiB block.
        unsafe { ptr::write_bytes(p, 0xA5, 1024) };
        let (before, used) = (core.stats(), {
            let m = core.meta((p as usize - core.pages.base) >> PAGE_SHIFT);
            m.used.get()
        });
        // SAFETY: live, freed once.
        unsafe { core.free(p) };
        // SAFETY: the block is free but mapped; reading it is what the test is
        // about (nothing wrote it).
        let first = unsafe { p.cast::<u64>().read() };
        assert_eq!(first, 0xA5A5_A5A5_A5A5_A5A5, "the free wrote the block");
        let m = core.meta((p as usize - core.pages.base) >> PAGE_SHIFT);
        assert_eq!(
            m.used.get(),
            used,
            "the free counted the block out of its span"
        );
        assert_eq!(core.own.cached_blocks(), 1);
        let after = core.stats();
        assert_eq!(after.in_use, before.in_use - 1024, "{after:?}");
        assert_eq!(after.allocations, before.allocations - 1);
        // A 1 KiB request takes it back, from the cache, once the current
        // span's list (the blocks carved last: 4 KiB at a time) is empty.
        let mut taken = Vec::new();
        while taken.last() != Some(&p) {
            assert!(taken.len() < 4, "the cached block was not handed out again");
            taken.push(core.alloc(KIB));
        }
        assert_eq!(core.own.cached_blocks(), 0);
        assert_eq!(
            core.stats().in_use,
            before.in_use + (taken.len() - 1) * 1024
        );
        for b in blocks
            .into_iter()
            .chain(taken.into_iter().filter(|&q| q != p))
        {
            // SAFETY: live, freed once.
            unsafe { core.free(b) };
        }
        assert_eq!(core.stats().in_use, 0);
        assert!(core.own.cached_blocks() <= OWN_CAP);
    }

    /// A heap below OWN_CACHE_FROM serves a fine-only class (1152 B) from
    /// the next class's spans (1280 B blocks, counted at that size); past
    /// it, the class gets spans of its own, while the blocks handed out
    /// before stay in theirs and go back there, and the statistics stay
    /// exact throughout.
    #[test]
    fn a_large_heap_splits_the_fine_classes() {
        use crate::heap::class::is_fine_only;
        let core = heap_of(1 << 30);
        let fine = Layout::from_size_align(1100, 16).unwrap();
        let c = class_of(1100).unwrap();
        assert!(is_fine_only(c) && CLASS_SIZE[c] == 1152);
        let usable = |p: *mut u8| {
            // SAFETY: a live block of this heap.
            unsafe { core.usable_size(p) }
        };
        let early: Vec<*mut u8> = (0..100).map(|_| core.alloc(fine)).collect();
        assert!(early.iter().all(|&p| !p.is_null() && usable(p) == 1280));
        assert!(ptr::eq(
            core.local.current[c].get(),
            core.local.current[c + 1].get()
        ));
        assert_eq!(core.local.head[c].get(), NONE);
        assert_eq!(core.stats().in_use, 100 * 1280);
        let filler = fill(&core, OWN_CACHE_FROM + (1 << 20));
        assert!(core.own.enabled() && core.local.fine.get());
        let late: Vec<*mut u8> = (0..100).map(|_| core.alloc(fine)).collect();
        assert!(late.iter().all(|&p| !p.is_null() && usable(p) == 1152));
        // (A few 1 KiB requests may have borrowed a larger block.)
        let filled: usize = filler.iter().map(|&p| usable(p)).sum();
        assert_eq!(core.stats().in_use, filled + 100 * 1280 + 100 * 1152);
        // SAFETY: live blocks, written within their usable sizes.
        unsafe {
            for (i, &p) in early.iter().chain(&late).enumerate() {
                ptr::write_bytes(p, i as u8, 1100);
            }
        }
        for (i, &p) in early.iter().chain(&late).enumerate() {
            // SAFETY: live; read within the bytes written.
            let bytes = unsafe { core::slice::from_raw_parts(p, 1100) };
            assert!(bytes.iter().all(|&b| b == i as u8), "block {i} changed");
        }
        // A 1280 B request still takes the early blocks' class.
        let coarse = core.alloc(Layout::from_size_align(1200, 16).unwrap());
        assert_eq!(usable(coarse), 1280);
        for p in early.into_iter().chain(late).chain(filler).chain([coarse]) {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
        // SAFETY: the owner, no phase.
        unsafe { core.give_back(true) };
        check_charge(&core);
    }

    /// Each class caches at most OWN_CAP blocks; the rest go onto their
    /// spans' lists, and a trim by the owner gives the cached ones back,
    /// so that a heap whose blocks are all free gives all its memory
    /// back.
    #[test]
    fn a_trim_gives_the_cached_blocks_back() {
        let core = heap_of(1 << 30);
        let blocks = fill(&core, OWN_CACHE_FROM + (2 << 20));
        assert!(core.own.enabled());
        for &b in blocks.iter().rev() {
            // SAFETY: live, freed once.
            unsafe { core.free(b) };
        }
        assert_eq!(core.own.cached_blocks(), OWN_CAP, "one class, full");
        assert_eq!(core.stats().in_use, 0);
        // SAFETY: the owner, no phase.
        unsafe { core.give_back(true) };
        assert_eq!(core.own.cached_blocks(), 0);
        let s = core.stats();
        assert!(
            s.committed <= 2 * PAGE_SIZE,
            "spans kept by cached blocks: {s:?}"
        );
        check_charge(&core);
        // The cache comes back on as the heap grows again.
        let again = fill(&core, OWN_CACHE_FROM + (1 << 20));
        assert!(core.own.enabled());
        for b in again {
            // SAFETY: live, freed once.
            unsafe { core.free(b) };
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// At its limit, a heap whose spans are kept by the blocks of the
    /// owner's cache gives them back and allocates once more, where it
    /// would otherwise refuse.
    #[test]
    fn the_cache_gives_way_at_the_limit() {
        let max = OWN_CACHE_FROM + (1 << 20);
        let core = heap_of(max);
        let mut blocks = Vec::new();
        loop {
            let p = core.alloc(KIB);
            if p.is_null() {
                break;
            }
            blocks.push(p);
        }
        assert!(core.own.enabled());
        // Every span is full and out of its queue. Span B's first 16
        // blocks go to the cache (B stays out); span A's blocks then go
        // onto A's list (the cache is full), and A becomes the current
        // span; B's other blocks bring B back behind it, with 16 blocks
        // still counted in it: a span all of whose blocks are free, kept
        // by the cache.
        let per_span = PAGE_SIZE / 1024;
        let n = blocks.len();
        let (a, b) = (
            &blocks[n - 2 * per_span..n - per_span],
            &blocks[n - per_span..],
        );
        let mb = core.meta((b[0] as usize - core.pages.base) >> PAGE_SHIFT);
        assert_eq!(mb.owner.get(), OWNER_CACHED);
        for &p in b[..OWN_CAP].iter().chain(a).chain(&b[OWN_CAP..]) {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.own.cached_blocks(), OWN_CAP);
        assert_eq!(mb.used.get(), OWN_CAP as u32, "span B kept by the cache");
        // A class with no span yet needs a new one.
        let big = Layout::from_size_align(2000, 16).unwrap();
        let p = core.alloc(big);
        assert!(
            !p.is_null(),
            "refused at the limit with a span kept by the cache"
        );
        assert_eq!(core.own.cached_blocks(), 0);
        // SAFETY: live, freed once.
        unsafe { core.free(p) };
        for &p in &blocks[..n - 2 * per_span] {
            // SAFETY: live, freed once.
            unsafe { core.free(p) };
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// A heap given up by its owner holds nothing in the cache, and a
    /// sealed one neither.
    #[test]
    fn abandon_and_seal_empty_the_cache() {
        let core = heap_of(1 << 30);
        let blocks = fill(&core, OWN_CACHE_FROM + (1 << 20));
        for &b in &blocks[blocks.len() - 4..] {
            // SAFETY: live, freed once.
            unsafe { core.free(b) };
        }
        assert_eq!(core.own.cached_blocks(), 4);
        // SAFETY: the owner; adopted again right after.
        unsafe { core.abandon(&mut |_| 0) };
        assert_eq!(core.own.cached_blocks(), 0);
        // SAFETY: nobody else uses the heap.
        unsafe { core.set_owner() };
        for &b in &blocks[blocks.len() - 8..blocks.len() - 4] {
            // SAFETY: live, freed once.
            unsafe { core.free(b) };
        }
        assert_eq!(
            core.own.cached_blocks(),
            4,
            "the cache stays on after adoption"
        );
        core.seal_allocation();
        assert_eq!(core.own.cached_blocks(), 0);
        assert!(!core.own.enabled());
    }
}
