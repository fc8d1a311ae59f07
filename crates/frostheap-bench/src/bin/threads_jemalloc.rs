//! A child of the `threads` benchmark: its workloads on jemalloc as the
//! global allocator (see `frostheap_bench::threads`).

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    frostheap_bench::threads::child_main();
}
