//! Allocates `BYTES` (first argument, a size such as `32M`) on the main
//! thread under `frostheap::Global`, touches every page, and prints the
//! main heap's limit. With `FROSTHEAP_MAX` below `BYTES` the allocation
//! fails the Rust way: `memory allocation of N bytes failed`, then abort.
//!
//! Run: `FROSTHEAP_MAX=64M cargo run -p frostheap --example global_alloc -- 100M`.

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "1M".into());
    let bytes = frostheap::parse_size(&arg).unwrap_or_else(|_| panic!("not a size: {arg}"));
    let heap = frostheap::main_heap().expect("Global is the global allocator");
    println!("limit={}", heap.limit());
    let mut v: Vec<u8> = Vec::with_capacity(bytes);
    v.resize(bytes, 1);
    assert!(heap.owns(v.as_ptr()));
    assert!(heap.stats().in_use >= bytes);
    println!("allocated={} in_use={}", v.len(), heap.stats().in_use);
}
