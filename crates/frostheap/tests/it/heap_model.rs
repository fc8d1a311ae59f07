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
/// model uses and sizes around each class and page boundary.
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
            assert_eq!(usable, frostheap::Heap::block_size(layout), "{layout:?}");
            assert_eq!(heap.stats().in_use, usable, "{layout:?}");
            // SAFETY: p is live and from this heap.
            unsafe { heap.dealloc(p) };
        }
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
