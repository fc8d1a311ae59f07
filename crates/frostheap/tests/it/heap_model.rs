//! Property tests: random sequences of alloc / realloc / free through both
//! of `Heap`'s interfaces, checked op by op against the model in
//! [`crate::ops`] (contents byte for byte, stats exactly).

use std::alloc::Layout;

use proptest::collection::vec;
use proptest::prelude::*;

use crate::check::roomy_heap;
use crate::ops::{Api, Op, Replayer, MAX_ALIGN_SHIFT, MAX_SIZE};

/// Sizes 0..=1 MiB, skewed towards small blocks but covering every size
/// class boundary region and large blocks.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..=256,
        3 => 257usize..=4096,
        2 => 4097usize..=(128 << 10),
        1 => (128usize << 10) + 1..=MAX_SIZE,
    ]
}

fn api() -> impl Strategy<Value = Api> {
    prop_oneof![Just(Api::Heap), Just(Api::Allocator)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (size(), 0..=MAX_ALIGN_SHIFT, any::<bool>(), api())
            .prop_map(|(size, align_shift, zeroed, api)| Op::Alloc { size, align_shift, zeroed, api }),
        2 => (any::<usize>(), size(), 0..=MAX_ALIGN_SHIFT, any::<bool>(), api())
            .prop_map(|(pick, size, align_shift, zeroed, api)| Op::Realloc { pick, size, align_shift, zeroed, api }),
        3 => (any::<usize>(), api()).prop_map(|(pick, api)| Op::Free { pick, api }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(pick, at)| Op::Probe { pick, at }),
    ]
}

test!(random_op_sequences_match_the_model);
proptest! {
    // Bounded so the suite stays fast in debug builds; raise with a local
    // edit when hunting (the fuzz target covers the long runs).
    #![proptest_config(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() })]

    fn random_op_sequences_match_the_model(ops in vec(op(), 1..200)) {
        let heap = roomy_heap("model");
        Replayer::new(&heap).run(&ops);
    }
}

test!(realloc_across_small_and_large_keeps_contents_and_stats);
/// Realloc across every kind boundary keeps the prefix: small -> small
/// (in place and moved), small -> large, large -> large (grow and shrink in
/// place), large -> small, with the stats exact at each step.
fn realloc_across_small_and_large_keeps_contents_and_stats() {
    let heap = roomy_heap("realloc");
    let mut r = Replayer::new(&heap);
    r.apply(&Op::Alloc {
        size: 100,
        align_shift: 3,
        zeroed: false,
        api: Api::Heap,
    });
    for (size, api) in [
        (90, Api::Heap),
        (1000, Api::Heap),
        (40_000, Api::Allocator),
        (300_000, Api::Heap),
        (900_000, Api::Heap),
        (200_000, Api::Allocator),
        (MAX_SIZE, Api::Allocator),
        (5000, Api::Heap),
        (0, Api::Heap),
        (17, Api::Allocator),
    ] {
        r.apply(&Op::Realloc {
            pick: 0,
            size,
            align_shift: 4,
            zeroed: true,
            api,
        });
    }
    r.finish();
}

test!(a_buffer_past_32_kib_grows_and_shrinks_in_its_pages);
/// A buffer reallocated to more than 32 KiB is made of whole pages, so
/// that it grows into the pages after it and shrinks by giving its tail
/// back, without a copy: grown by doubling from 4 KiB to 4 MiB it moves
/// four times (4 → 8 → 16 → 32 KiB within the classes, and once into its
/// pages at 64 KiB; before, twice more, at 128 and 256 KiB), shrunk to
/// 40,000 bytes it stays (it was copied into a class), grows back in
/// place, and moves only when shrunk to a class's size of 32 KiB or less.
/// Contents follow every step and in use counts the pages exactly.
fn a_buffer_past_32_kib_grows_and_shrinks_in_its_pages() {
    let heap = roomy_heap("buffer");
    let page = 64 << 10;
    let layout = |size: usize| Layout::from_size_align(size, 8).unwrap();
    let fill = |p: std::ptr::NonNull<u8>, from: usize, to: usize| {
        for i in from..to {
            // SAFETY: the block holds `to` bytes.
            unsafe { p.as_ptr().add(i).write((i % 251) as u8) };
        }
    };
    let check = |p: std::ptr::NonNull<u8>, len: usize, what: &str| {
        for i in 0..len {
            // SAFETY: the block holds `len` bytes.
            let b = unsafe { p.as_ptr().add(i).read() };
            assert_eq!(b, (i % 251) as u8, "{what}: byte {i}");
        }
    };
    let mut size = 4096;
    let mut p = heap.try_alloc(layout(size)).unwrap();
    fill(p, 0, size);
    let mut moves = Vec::new();
    while size < 4 << 20 {
        let new = size * 2;
        // SAFETY: p is live, allocated with layout(size).
        let q = unsafe { heap.try_realloc(p, layout(size), new) }.unwrap();
        check(q, size, &format!("grown to {new}"));
        fill(q, size, new);
        if q != p {
            moves.push(new);
        }
        (p, size) = (q, new);
    }
    assert_eq!(moves, [8192, 16384, 32768, 65536], "the growths that moved");
    // SAFETY: p is live.
    assert_eq!(unsafe { heap.usable_size(p) }, 4 << 20);
    assert_eq!(heap.stats().in_use, 4 << 20);
    for (new, stays, usable) in [
        (40_000, true, page),
        (1 << 20, true, 1 << 20),
        (100_000, true, 2 * page),
        (32 << 10, false, 32 << 10),
        (33 << 10, false, page),
    ] {
        // SAFETY: p is live, allocated with layout(size).
        let q = unsafe { heap.try_realloc(p, layout(size), new) }.unwrap();
        check(q, size.min(new), &format!("resized to {new}"));
        fill(q, 0, new);
        assert_eq!(q == p, stays, "{size} -> {new}: stayed {}", q == p);
        // SAFETY: q is live.
        assert_eq!(unsafe { heap.usable_size(q) }, usable, "{size} -> {new}");
        assert_eq!(heap.stats().in_use, usable, "{size} -> {new}");
        (p, size) = (q, new);
    }
    // SAFETY: p is live.
    unsafe { heap.dealloc(p) };
    assert_eq!(heap.stats().in_use, 0);
}

test!(zero_size_allocations_are_distinct_blocks);
/// Zero-size requests get a real, distinct, aligned block.
fn zero_size_allocations_are_distinct_blocks() {
    let heap = roomy_heap("zero");
    let mut r = Replayer::new(&heap);
    for align_shift in 0..=MAX_ALIGN_SHIFT {
        for api in [Api::Heap, Api::Allocator] {
            r.apply(&Op::Alloc {
                size: 0,
                align_shift,
                zeroed: false,
                api,
            });
        }
    }
    assert_eq!(r.live(), 2 * (MAX_ALIGN_SHIFT as usize + 1));
    r.finish();
}

test!(block_size_predicts_usable_size);
/// `block_size` is what `usable_size` reports, for every alignment the
/// model uses and sizes around each class and page boundary (in this heap
/// under 8 MiB, the next class's for the classes only larger heaps have:
/// [`crate::ops::small_heap_block`]).
fn block_size_predicts_usable_size() {
    let heap = roomy_heap("block_size");
    let mut sizes: Vec<usize> = (0..=1024).step_by(7).collect();
    for k in 10..=20 {
        for d in [-1isize, 0, 1] {
            sizes.push(((1usize << k) as isize + d) as usize);
        }
    }
    sizes.extend([
        (128 << 10) - 1,
        128 << 10,
        (128 << 10) + 1,
        3 << 16,
        (3 << 16) + 1,
    ]);
    for &size in &sizes {
        for shift in 0..=MAX_ALIGN_SHIFT {
            let layout = Layout::from_size_align(size, 1 << shift).unwrap();
            let p = heap.try_alloc(layout).unwrap();
            // SAFETY: p is live.
            let usable = unsafe { heap.usable_size(p) };
            let block = frostheap::Heap::block_size(layout);
            assert_eq!(usable, crate::ops::small_heap_block(block), "{layout:?}");
            assert!(usable <= block * 9 / 8, "{layout:?}");
            assert_eq!(heap.stats().in_use, usable, "{layout:?}");
            // SAFETY: p is live and from this heap.
            unsafe { heap.dealloc(p) };
        }
    }
    assert_eq!(heap.stats().in_use, 0);
}

test!(a_class_uses_its_neighbours_free_blocks_before_carving_more);
/// A class whose current span has no free block takes free blocks of the
/// next classes (at most half as large again) once it has carved 8 of its
/// own, instead of making more memory resident; the lent blocks are
/// counted at their own size and go back to their own class. A block
/// allocated and freed in turn, and a request aligned past 16, never
/// borrow; a class that would borrow the same block back and forth stops
/// after at most 1,024 times.
fn a_class_uses_its_neighbours_free_blocks_before_carving_more() {
    let heap = roomy_heap("borrow");
    let usable = |p: std::ptr::NonNull<u8>| unsafe { heap.usable_size(p) };
    let big = Layout::from_size_align(5000, 8).unwrap(); // class 5120
    let small = Layout::from_size_align(4000, 8).unwrap(); // class 4096
    assert_eq!(frostheap::Heap::block_size(big), 5120);
    assert_eq!(frostheap::Heap::block_size(small), 4096);
    // 32 free blocks of 5120 on that class's current span.
    let bigs: Vec<_> = (0..32).map(|_| heap.try_alloc(big).unwrap()).collect();
    for &p in &bigs {
        // SAFETY: live blocks of this heap, freed once.
        unsafe { heap.dealloc(p) };
    }
    let committed = heap.stats().committed;
    // Allocated and freed in turn, 4000 bytes always get their own class.
    for _ in 0..100 {
        let p = heap.try_alloc(small).unwrap();
        assert_eq!(usable(p), 4096);
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    // Held: 8 carved of their own class (one was carved by the loop above),
    // then the 5120-byte blocks, then their own class again.
    let held: Vec<_> = (0..50).map(|_| heap.try_alloc(small).unwrap()).collect();
    let sizes: Vec<usize> = held.iter().map(|&p| usable(p)).collect();
    let lent = sizes.iter().filter(|&&s| s == 5120).count();
    assert!(sizes[..8].iter().all(|&s| s == 4096), "{sizes:?}");
    assert_eq!(lent, 32, "{sizes:?}");
    assert!(sizes[40..].iter().all(|&s| s == 4096), "{sizes:?}");
    assert!(sizes.iter().all(|&s| s == 4096 || s == 5120), "{sizes:?}");
    let s = heap.stats();
    assert_eq!(s.in_use, 32 * 5120 + 18 * 4096, "{s:?}");
    assert_eq!(s.allocations, 50, "{s:?}");
    // 18 blocks of 4096 carved: at most the 4096 class's span (32 blocks,
    // 128 KiB) was committed for them, nothing for the 32 lent ones.
    assert!(s.committed <= committed + (128 << 10), "{s:?}, {committed} before");
    // A request aligned to 4096 (class 4096, whose blocks are 4096-aligned)
    // never gets a 5120-byte block, which is not.
    for &p in &held {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    let aligned = Layout::from_size_align(4000, 4096).unwrap();
    let more: Vec<_> = (0..60).map(|_| heap.try_alloc(aligned).unwrap()).collect();
    for &p in &more {
        assert_eq!(p.as_ptr() as usize % 4096, 0);
        assert_eq!(usable(p), 4096);
    }
    for &p in &more {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    // Back and forth: with its own blocks all live and free blocks of 5120
    // waiting, a class that allocates and frees in turn borrows the same
    // block again and again, each time on the slow path; after at most
    // 1,024 borrows in a row it carves a block of its own, which every
    // later pair takes from its own free list.
    let own: Vec<_> = (0..40).map(|_| heap.try_alloc(small).unwrap()).collect();
    let spare: Vec<_> = (0..4).map(|_| heap.try_alloc(big).unwrap()).collect();
    for &p in &spare {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    let mut lent_pairs = 0;
    for _ in 0..1100 {
        let p = heap.try_alloc(small).unwrap();
        if usable(p) == 5120 {
            lent_pairs += 1;
        }
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    assert!(
        (1..=1024).contains(&lent_pairs),
        "{lent_pairs} of 1100 pairs took a lent block"
    );
    for _ in 0..100 {
        let p = heap.try_alloc(small).unwrap();
        assert_eq!(usable(p), 4096, "a pair after the run");
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    for &p in &own {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    // The lent blocks went back to their own class: 32 requests of 5000
    // reuse them.
    let before = heap.stats().committed;
    let again: Vec<_> = (0..32).map(|_| heap.try_alloc(big).unwrap()).collect();
    let mut got: Vec<usize> = again.iter().map(|p| p.as_ptr() as usize).collect();
    let mut first: Vec<usize> = bigs.iter().map(|p| p.as_ptr() as usize).collect();
    got.sort_unstable();
    first.sort_unstable();
    assert_eq!(got, first);
    assert_eq!(heap.stats().committed, before);
    for &p in &again {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    assert_eq!(heap.stats().in_use, 0);
}

test!(a_class_takes_its_own_queued_free_blocks_before_a_neighbours);
/// A class whose current span has run dry while another span of it holds
/// free blocks (so is queued) takes those, not a larger class's free
/// blocks: lending is for a class with nothing of its own waiting. Once
/// its own are used up and its queue holds only the current span, it
/// lends again.
fn a_class_takes_its_own_queued_free_blocks_before_a_neighbours() {
    let heap = roomy_heap("borrow-queue");
    let usable = |p: std::ptr::NonNull<u8>| unsafe { heap.usable_size(p) };
    let big = Layout::from_size_align(5000, 8).unwrap(); // class 5120
    let small = Layout::from_size_align(4000, 8).unwrap(); // class 4096, 32 a span
    // Two spans of 4096, every block live: the first ran dry and left the
    // queue, the second is current and dry too.
    let smalls: Vec<_> = (0..64).map(|_| heap.try_alloc(small).unwrap()).collect();
    // Free blocks of 5120 waiting on that class's current span.
    let bigs: Vec<_> = (0..8).map(|_| heap.try_alloc(big).unwrap()).collect();
    for &p in &bigs {
        // SAFETY: live blocks of this heap, freed once.
        unsafe { heap.dealloc(p) };
    }
    // Four blocks of the first span freed: it is queued behind the current.
    let mut freed: Vec<usize> = smalls[..4].iter().map(|p| p.as_ptr() as usize).collect();
    for &p in &smalls[..4] {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    let again: Vec<_> = (0..4).map(|_| heap.try_alloc(small).unwrap()).collect();
    let sizes: Vec<usize> = again.iter().map(|&p| usable(p)).collect();
    assert_eq!(sizes, [4096; 4], "the class's own queued blocks come first");
    let mut got: Vec<usize> = again.iter().map(|p| p.as_ptr() as usize).collect();
    got.sort_unstable();
    freed.sort_unstable();
    assert_eq!(got, freed, "the four blocks just freed are reused");
    // Nothing of its own waits now: the next request takes a lent block.
    let lent = heap.try_alloc(small).unwrap();
    assert_eq!(usable(lent), 5120, "lending at the end of the queue");
    let s = heap.stats();
    assert_eq!(s.in_use, 64 * 4096 + 5120, "{s:?}");
    for p in smalls[4..].iter().chain(&again).chain([&lent]) {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(*p) };
    }
    assert_eq!(heap.stats().in_use, 0);
}

test!(alignments_up_to_one_mebibyte);
/// Alignments past 4096 (where the model's exact accounting stops):
/// blocks are aligned, hold their size, `block_size` bounds their usable
/// size from above, and resizing keeps the alignment and the contents.
fn alignments_up_to_one_mebibyte() {
    use crate::ops::{fill, verify};
    let heap = roomy_heap("aligned");
    for shift in 13..=20 {
        let align = 1usize << shift;
        for size in [0, 1, 100, 5000, 70_000, 300_000] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = heap.try_alloc(layout).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0, "{layout:?}");
            // SAFETY: p is live.
            let usable = unsafe { heap.usable_size(p) };
            assert!(
                usable >= size && usable <= frostheap::Heap::block_size(layout),
                "{layout:?}: usable {usable}"
            );
            assert_eq!(heap.stats().in_use, usable, "{layout:?}");
            assert_eq!(
                heap.allocation_containing(p.as_ptr() as usize),
                Some((p.as_ptr() as usize, usable))
            );
            // SAFETY: p holds `size` bytes; it is live and from this heap.
            unsafe {
                fill(p, size, shift as u8);
                let q = heap.try_realloc(p, layout, size * 3 + 1).unwrap();
                assert_eq!(q.as_ptr() as usize % align, 0, "{layout:?} after realloc");
                verify(q, size, shift as u8, "over-aligned realloc");
                heap.dealloc(q);
            }
            assert_eq!(heap.stats().in_use, 0, "{layout:?}");
        }
    }
}

/// One thread's part of a round of [`several_owners_with_remote_frees_match_the_model`]:
/// blocks to allocate (sizes), and picks among its live blocks to free
/// itself or to hand to the next thread, which frees them (remote frees).
#[derive(Clone, Debug)]
struct Turn {
    allocs: Vec<usize>,
    frees: Vec<usize>,
    hand_offs: Vec<usize>,
}

fn turn() -> impl Strategy<Value = Turn> {
    (
        vec(size(), 0..12),
        vec(any::<usize>(), 0..6),
        vec(any::<usize>(), 0..6),
    )
        .prop_map(|(allocs, frees, hand_offs)| Turn {
            allocs,
            frees,
            hand_offs,
        })
}

/// A live block in the multi-owner model: its address, size, fill byte and
/// the heap it came from.
#[derive(Clone, Copy, Debug)]
struct Live {
    addr: usize,
    size: usize,
    /// Its usable size, what its heap counts.
    usable: usize,
    tag: u8,
    heap: usize,
}

const OWNERS: usize = 3;

test!(several_owners_with_remote_frees_match_the_model);
proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Three threads, each the owner of its own heap, allocate, free their
    /// own blocks and hand blocks to the next thread, which frees them (a
    /// remote free into the owner's heap), all at once in each round.
    /// Between rounds every block's contents and every heap's statistics
    /// (bytes in use, live allocations) match the model exactly.
    fn several_owners_with_remote_frees_match_the_model(
        rounds in vec(vec(turn(), OWNERS..=OWNERS), 1..12)
    ) {
        use std::sync::{Arc, Barrier, Mutex};
        let heaps: Vec<frostheap::Heap> = (0..OWNERS)
            .map(|i| {
                std::thread::spawn(move || {
                    frostheap::Heap::builder()
                        .name(format!("owner{i}"))
                        .max(1 << 30)
                        .build()
                        .unwrap()
                })
                .join()
                .unwrap()
            })
            .collect();
        // The heaps were built on threads that exited: each worker adopts
        // its heap before using it.
        let held: Vec<Mutex<Vec<Live>>> = (0..OWNERS).map(|_| Mutex::new(Vec::new())).collect();
        let inbox: Vec<Mutex<Vec<Live>>> = (0..OWNERS).map(|_| Mutex::new(Vec::new())).collect();
        let barrier = Arc::new(Barrier::new(OWNERS));
        let rounds = &rounds;
        std::thread::scope(|s| {
            for t in 0..OWNERS {
                let (heaps, held, inbox, barrier) = (&heaps, &held, &inbox, barrier.clone());
                s.spawn(move || {
                    let heap = &heaps[t];
                    // SAFETY: the thread that built the heap exited and was
                    // joined before this one started.
                    unsafe { heap.adopt() };
                    let mut tag = t as u8;
                    for (r, round) in rounds.iter().enumerate() {
                        let turn = &round[t];
                        let mut mine = held[t].lock().unwrap();
                        // Remote frees of what the previous thread handed over.
                        for b in inbox[t].lock().unwrap().drain(..) {
                            // SAFETY: a live block of heap b.heap, handed to
                            // this thread alone.
                            unsafe {
                                crate::ops::verify(
                                    std::ptr::NonNull::new(b.addr as *mut u8).unwrap(),
                                    b.size,
                                    b.tag,
                                    "handed-over block",
                                );
                                heaps[b.heap].dealloc(std::ptr::NonNull::new(b.addr as *mut u8).unwrap());
                            }
                        }
                        for &size in &turn.allocs {
                            let p = heap.try_alloc(Layout::from_size_align(size, 8).unwrap()).unwrap();
                            tag = tag.wrapping_add(1);
                            // SAFETY: p holds size bytes.
                            unsafe { crate::ops::fill(p, size, tag) };
                            let usable = crate::ops::usable_sizes(Layout::from_size_align(size, 8).unwrap());
                            // SAFETY: p is live.
                            let got = unsafe { heap.usable_size(p) };
                            assert!(usable.contains(&got), "{got} bytes for {size}, expected one of {usable:?}");
                            mine.push(Live { addr: p.as_ptr() as usize, size, usable: got, tag, heap: t });
                        }
                        for &pick in &turn.frees {
                            if mine.is_empty() {
                                break;
                            }
                            let i = pick % mine.len();
                            let b = mine.swap_remove(i);
                            // SAFETY: a live block of this heap.
                            unsafe { heap.dealloc(std::ptr::NonNull::new(b.addr as *mut u8).unwrap()) };
                        }
                        let next = (t + 1) % OWNERS;
                        for &pick in &turn.hand_offs {
                            if mine.is_empty() {
                                break;
                            }
                            let i = pick % mine.len();
                            let b = mine.swap_remove(i);
                            inbox[next].lock().unwrap().push(b);
                        }
                        drop(mine);
                        barrier.wait();
                        // Every thread checks its own heap against the model
                        // while no free is in flight.
                        if t == 0 {
                            for (h, heap) in heaps.iter().enumerate() {
                                let live: Vec<Live> = held.iter().chain(inbox.iter())
                                    .flat_map(|m| m.lock().unwrap().clone())
                                    .filter(|b| b.heap == h)
                                    .collect();
                                let s = heap.stats();
                                let want: usize = live.iter()
                                    .map(|b| b.usable)
                                    .sum();
                                assert_eq!(s.in_use, want, "round {r}, heap {h}: {s:?}");
                                assert_eq!(s.allocations, live.len(), "round {r}, heap {h}: {s:?}");
                            }
                        }
                        barrier.wait();
                    }
                });
            }
        });
        // Whatever is left is freed by this thread (remote frees into every
        // heap), and every heap ends empty.
        for b in held.iter().chain(inbox.iter()).flat_map(|m| m.lock().unwrap().drain(..).collect::<Vec<_>>()) {
            // SAFETY: live blocks of their heaps, freed once.
            unsafe { heaps[b.heap].dealloc(std::ptr::NonNull::new(b.addr as *mut u8).unwrap()) };
        }
        for heap in &heaps {
            prop_assert_eq!(heap.stats().in_use, 0);
            prop_assert_eq!(heap.stats().allocations, 0);
        }
    }
}
