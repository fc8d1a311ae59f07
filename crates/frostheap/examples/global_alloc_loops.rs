//! A fixed allocation workload for instruction counts: the allocator
//! benchmark's pair and churn loops on `frostheap::Global` (the main
//! thread's owner fast path) and on an explicit `Heap`, plus 64-byte blocks
//! freed by a second thread, each in a function of its own so that
//! `callgrind` reports them separately. Deterministic (fixed seed, fixed
//! counts), so two builds compare by instructions, not by seconds, on a
//! machine others are using.
//!
//! ```text
//! cargo build --release -p frostheap --example global_alloc_loops
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/global_alloc_loops
//! callgrind_annotate --inclusive=yes cg.out | grep global_alloc_loops::
//! ```
//!
//! Each loop function's inclusive count divided by its operation count
//! (printed) is the instructions per alloc+free pair or churn step.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

use allocator_api2::alloc::Allocator;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const PAIRS: usize = 100_000;
const STEPS: usize = 100_000;
const REMOTE: usize = 100_000;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// SplitMix64: reproducible sizes and slots.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `k` live blocks of 16..=1024 bytes; each step replaces a random one.
fn churn_steps(k: usize) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut rng = SplitMix(0x5eed_0000 + k as u64);
    let size = |rng: &mut SplitMix| 16 + (rng.next() % 1009) as usize;
    let initial = (0..k).map(|_| size(&mut rng)).collect();
    let steps = (0..STEPS)
        .map(|_| ((rng.next() % k as u64) as usize, size(&mut rng)))
        .collect();
    (initial, steps)
}

#[inline(never)]
fn pairs_global(l: Layout) {
    for _ in 0..PAIRS {
        // SAFETY: non-zero size; the block is freed with its layout.
        unsafe {
            let p = black_box(GLOBAL.alloc(l));
            assert!(!p.is_null());
            GLOBAL.dealloc(p, l);
        }
    }
}

#[inline(never)]
fn pairs_heap(h: &frostheap::Heap, l: Layout) {
    for _ in 0..PAIRS {
        let p = black_box(h.allocate(l).expect("allocation")).cast::<u8>();
        // SAFETY: p was just allocated by h with l.
        unsafe { h.deallocate(p, l) };
    }
}

#[inline(never)]
fn churn_global(initial: &[usize], steps: &[(usize, usize)]) {
    // SAFETY: every slot holds a live block of the size recorded with it.
    unsafe {
        let mut slots: Vec<(*mut u8, usize)> = initial
            .iter()
            .map(|&s| (GLOBAL.alloc(layout(s)), s))
            .collect();
        for &(i, size) in steps {
            let slot = &mut slots[i];
            GLOBAL.dealloc(slot.0, layout(slot.1));
            *slot = (black_box(GLOBAL.alloc(layout(size))), size);
        }
        for (p, s) in slots {
            GLOBAL.dealloc(p, layout(s));
        }
    }
}

#[inline(never)]
fn churn_heap(h: &frostheap::Heap, initial: &[usize], steps: &[(usize, usize)]) {
    let alloc = |s: usize| h.allocate(layout(s)).expect("allocation").cast::<u8>();
    let mut slots: Vec<_> = initial.iter().map(|&s| (alloc(s), s)).collect();
    for &(i, size) in steps {
        let slot = &mut slots[i];
        // SAFETY: the slot holds a live block of h with this layout.
        unsafe { h.deallocate(slot.0, layout(slot.1)) };
        *slot = (black_box(alloc(size)), size);
    }
    for (p, s) in slots {
        // SAFETY: as above.
        unsafe { h.deallocate(p, layout(s)) };
    }
}

#[inline(never)]
fn remote_free_global(blocks: Vec<usize>) {
    for p in blocks {
        // SAFETY: a live 64-byte Global block handed over by the main thread.
        unsafe { GLOBAL.dealloc(p as *mut u8, layout(64)) };
    }
}

#[inline(never)]
fn remote_alloc_global() -> Vec<usize> {
    // SAFETY: non-zero size.
    (0..REMOTE)
        .map(|_| unsafe { GLOBAL.alloc(layout(64)) } as usize)
        .collect()
}

fn main() {
    let heap = frostheap::Heap::builder()
        .name("loops")
        .max(1 << 30)
        .build()
        .expect("heap");
    for size in [16, 64, 256, 1024, 4096] {
        pairs_global(layout(size));
        pairs_heap(&heap, layout(size));
    }
    for k in [25, 100, 400, 1600] {
        let (initial, steps) = churn_steps(k);
        churn_global(&initial, &steps);
        churn_heap(&heap, &initial, &steps);
    }
    for _ in 0..3 {
        let blocks = remote_alloc_global();
        std::thread::spawn(move || remote_free_global(blocks))
            .join()
            .expect("freer");
    }
    println!(
        "pairs: 5 sizes x {PAIRS} per function; churn: 4 live-set sizes x {STEPS} steps; \
         remote: 3 x {REMOTE} blocks"
    );
}
