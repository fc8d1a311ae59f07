//! Allocation-site tracking (`FROSTHEAP_TRACK_ALLOCS=1`) for every way a
//! block is made under `frostheap::Global`: `alloc` (`Box::new`),
//! `alloc_zeroed` (`vec![0; n]`) and `realloc` (a `Vec` grown by `push`).
//! Prints, for each, the allocation site recorded for the block's address;
//! the integration tests (tests/it/global_mode.rs) check that each names
//! the function that made the block.
//!
//! Run: `FROSTHEAP_TRACK_ALLOCS=1 cargo run --release -p frostheap --example global_track`.

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

#[inline(never)]
fn made_by_alloc() -> Box<[u64; 4]> {
    Box::new([1, 2, 3, 4])
}

#[inline(never)]
fn made_by_alloc_zeroed() -> Vec<u8> {
    vec![0u8; 3000]
}

#[inline(never)]
fn made_by_realloc(v: &mut Vec<u64>) {
    for i in 0..5000 {
        v.push(i);
    }
}

fn print_site(what: &str, addr: usize) {
    let site = frostheap::track::allocation_site(addr);
    println!("{what}: {}", site.join(" <- "));
}

fn main() {
    let a = made_by_alloc();
    print_site("alloc", &*a as *const [u64; 4] as usize);
    let z = made_by_alloc_zeroed();
    print_site("alloc_zeroed", z.as_ptr() as usize);
    // A block freed first, so the grown Vec may land where another block
    // was made (its stale site must not be reported).
    drop(vec![7u64; 6000]);
    let mut v: Vec<u64> = Vec::with_capacity(4);
    made_by_realloc(&mut v);
    print_site("realloc", v.as_ptr() as usize);
}
