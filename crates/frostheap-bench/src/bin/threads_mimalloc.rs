//! A child of the `threads` benchmark: its workloads on mimalloc as the
//! global allocator (see `frostheap_bench::threads`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    frostheap_bench::threads::child_main();
}
