//! `borrow_loop`: what a loop that borrows the same block back and forth
//! costs, and what the same loop costs once the class has carved a block
//! of its own (`HeapCore::borrow` and its cap on a run).
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin borrow_loop
//! ```
//!
//! A heap holds 100 blocks of 4,000 bytes (class 4096) and, each round,
//! frees 8 blocks of 5,000 bytes (class 5120) and takes every free block
//! of class 4096, so that the class's next allocation borrows. Then 512
//! alloc/free pairs of 4,000 bytes each take the same 5,120-byte block
//! (checked), through the allocation's slow path; then, past the cap on a
//! run (1,024 borrows in a row), 512 pairs on a block of the class's own,
//! through the fast path. Every pair also reads its block's usable size
//! and writes its first byte. Prints the best round of 200 for each: ns
//! per pair.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::time::Instant;

use frostheap::Heap;

const PAIRS: usize = 512;

/// Times `PAIRS` pairs of `layout` on `heap`; returns ns per pair and the
/// usable size every pair got (panics if they differ).
fn pairs(heap: &Heap, layout: Layout) -> (f64, usize) {
    let mut size = None;
    let t = Instant::now();
    for _ in 0..PAIRS {
        let p = heap.try_alloc(layout).expect("a 4,000-byte block");
        // SAFETY: p is a live block of this heap, freed once below.
        let usable = unsafe { heap.usable_size(p) };
        assert_eq!(
            *size.get_or_insert(usable),
            usable,
            "pairs got blocks of two sizes"
        );
        // SAFETY: as above; p holds at least one byte.
        unsafe {
            std::ptr::write_volatile(p.as_ptr(), 1);
            heap.dealloc(p);
        }
    }
    (
        t.elapsed().as_nanos() as f64 / PAIRS as f64,
        size.unwrap_or(0),
    )
}

/// What `--help` prints.
const USAGE: &str = "usage: borrow_loop\n\nWhat a loop that borrows the same block back and forth costs (class 4096 taking\nclass 5120's block), against the same loop on a block of the class's own: the\nbest of 200 rounds of 512 alloc/free pairs each, in ns per pair. Takes no arguments.";

/// The benchmark takes no arguments: `--help` (or `-h`) prints [`USAGE`]
/// and exits 0, anything else is refused with status 2, so that neither
/// runs the benchmark by surprise.
fn check_args() {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        eprintln!("borrow_loop: unexpected argument {arg:?}: it takes none (--help for usage)");
        std::process::exit(2);
    }
}

fn main() {
    check_args();
    let heap = Heap::builder()
        .name("borrow_loop")
        .max(1 << 30)
        .build()
        .expect("a 1 GiB heap");
    let small = Layout::from_size_align(4000, 8).expect("layout");
    let big = Layout::from_size_align(5000, 8).expect("layout");
    let live: Vec<NonNull<u8>> = (0..100)
        .map(|_| heap.try_alloc(small).expect("block"))
        .collect();
    let (mut lent, mut own) = (f64::MAX, f64::MAX);
    for _ in 0..200 {
        let spare: Vec<NonNull<u8>> = (0..8)
            .map(|_| heap.try_alloc(big).expect("block"))
            .collect();
        for &p in &spare {
            // SAFETY: live blocks of this heap, freed once.
            unsafe { heap.dealloc(p) };
        }
        // Take the class's own free blocks until an allocation borrows.
        let mut held = Vec::new();
        loop {
            let p = heap.try_alloc(small).expect("block");
            // SAFETY: p is live.
            if unsafe { heap.usable_size(p) } != 4096 {
                // SAFETY: live, freed once.
                unsafe { heap.dealloc(p) };
                break;
            }
            held.push(p);
            assert!(held.len() < 100_000, "the class never borrowed");
        }
        let (ns, size) = pairs(&heap, small);
        assert_eq!(size, 5120, "the loop did not borrow");
        lent = lent.min(ns);
        // Past the cap on a run, the class carves a block of its own.
        for _ in 0..3 * PAIRS {
            let p = heap.try_alloc(small).expect("block");
            // SAFETY: live, freed once.
            unsafe { heap.dealloc(p) };
        }
        let (ns, size) = pairs(&heap, small);
        assert_eq!(size, 4096, "the loop still borrows past the cap");
        own = own.min(ns);
        for p in held {
            // SAFETY: live, freed once.
            unsafe { heap.dealloc(p) };
        }
    }
    for p in live {
        // SAFETY: live, freed once.
        unsafe { heap.dealloc(p) };
    }
    println!(
        "best of 200 rounds of {PAIRS} pairs: {lent:.1} ns per pair borrowing the same block back and forth, \
         {own:.1} ns once the class has carved its own ({:.2}x)",
        lent / own
    );
}
