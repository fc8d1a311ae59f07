//! A child of the `threads` benchmark: its workloads on frostheap as the
//! global allocator (see `frostheap_bench::threads`).

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    frostheap_bench::threads::child_main();
}
