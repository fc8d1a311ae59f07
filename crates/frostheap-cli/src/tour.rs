//! `frostheap tour`: the guided demonstration. Each later capability adds
//! a chapter; each chapter runs real code and prints what happened.

use std::alloc::Layout;

use frostheap::{Bytes, Heap};

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("frostheap tour\n==============\n");
    chapter_limits()?;
    Ok(())
}

fn print_stats(heap: &Heap) {
    let s = heap.stats();
    println!(
        "    {:<8} reserved {:>9}  committed {:>9}  in use {:>9}  peak {:>9}  limit {:>9}  live allocations {}",
        heap.name(),
        Bytes(s.reserved).to_string(),
        Bytes(s.committed).to_string(),
        Bytes(s.in_use).to_string(),
        Bytes(s.peak).to_string(),
        Bytes(s.limit).to_string(),
        s.allocations
    );
}

/// A heap with a hard cap: allocation past it is refused with the numbers,
/// and the heap goes on working.
fn chapter_limits() -> Result<(), Box<dyn std::error::Error>> {
    println!("1. A heap with hard limits");
    println!("   One reserved address range (min committed up front, max is a hard cap).\n");
    let heap = Heap::builder()
        .name("index")
        .min(4 << 20)
        .max(64 << 20)
        .build()?;
    println!("   built: min 4 MiB, max 64 MiB");
    print_stats(&heap);

    let mut index: allocator_api2::vec::Vec<u64, Heap> =
        allocator_api2::vec::Vec::new_in(heap.clone());
    index.extend(0..1_000_000u64);
    println!(
        "\n   filled a Vec<u64, Heap> with 1,000,000 entries ({}):",
        Bytes(index.len() * 8)
    );
    print_stats(&heap);
    println!(
        "   heap.owns(index.as_ptr()) = {}",
        heap.owns(index.as_ptr())
    );

    let big = Layout::from_size_align(80 << 20, 8)?;
    match heap.try_alloc(big) {
        Ok(_) => return Err("an 80 MiB allocation fit in a 64 MiB heap".into()),
        Err(e) => println!("\n   asked for 80 MiB more:\n    -> Err: {e}"),
    }
    let ok = heap.try_alloc(Layout::from_size_align(1 << 20, 8)?)?;
    println!("   the heap stays usable: a 1 MiB allocation right after succeeds");
    // SAFETY: `ok` was just allocated by `heap` and is not used again.
    unsafe { heap.dealloc(ok) };
    drop(index);
    println!("\n   after freeing everything:");
    print_stats(&heap);
    println!();
    Ok(())
}
