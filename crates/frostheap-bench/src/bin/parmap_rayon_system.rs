//! A `parmap` baseline: rayon's `par_iter().map().collect()` with the
//! system allocator (glibc). Run by `parmap` as a child process; see
//! `src/parmap/work.rs` for the protocol.

// The driver's own items (the budget) are unused here.
#[allow(dead_code)]
#[path = "../parmap/work.rs"]
mod work;

use rayon::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some("child"),
        "run by `parmap`: parmap_rayon_system child <case> <runs>"
    );
    work::child_main(&args[1..], &|items, f| {
        items.par_iter().map(f).collect::<Vec<u64>>()
    });
}
