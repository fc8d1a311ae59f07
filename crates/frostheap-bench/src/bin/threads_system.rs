//! A child of the `threads` benchmark: its workloads on system as the
//! global allocator (see `frostheap_bench::threads`).

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() {
    frostheap_bench::threads::child_main();
}
