//! A `parmap` baseline: rayon's `par_iter().map().collect()` with mimalloc
//! as the global allocator. Run by `parmap` as a child process; see
//! `frostheap_bench::parmap` for the protocol.

use rayon::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    frostheap_bench::parmap::baseline_main(&|items, f| items.par_iter().map(f).collect());
}
