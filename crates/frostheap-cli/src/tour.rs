//! `frostheap tour`: the guided demonstration. Each chapter runs real code
//! and prints what happened; nothing is simulated.
//!
//! The `frostheap` binary installs `frostheap::Global`, so everything the
//! tour builds on the main thread lives in the main heap — the heap the
//! runtime freezes during parallel phases.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use frostheap::{Bytes, Error, Heap, Runtime};
use frostheap_budget::Budget;

use crate::out::outln;

pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    outln!("frostheap tour");
    outln!("==============\n");
    chapter_limits()?;
    chapter_freeze()?;
    chapter_map()?;
    chapter_budget()?;
    chapter_run();
    outln!("End of the tour. `frostheap info` shows what this machine offers.");
    Ok(())
}

fn print_stats(heap: &Heap) {
    let s = heap.stats();
    outln!(
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
    outln!("1. A heap with hard limits");
    outln!("   One reserved address range: min committed up front, max a hard cap (-Xms/-Xmx for Rust).\n");
    let heap = Heap::builder()
        .name("index")
        .min(4 << 20)
        .max(64 << 20)
        .build()?;
    outln!("   built: min 4 MiB, max 64 MiB");
    print_stats(&heap);

    let mut index: allocator_api2::vec::Vec<u64, Heap> =
        allocator_api2::vec::Vec::new_in(heap.clone());
    index.extend(0..1_000_000u64);
    outln!(
        "\n   filled a Vec<u64, Heap> with 1,000,000 entries ({}):",
        Bytes(index.len() * 8)
    );
    print_stats(&heap);
    outln!(
        "   heap.owns(index.as_ptr()) = {}   (an O(1) range check)",
        heap.owns(index.as_ptr())
    );

    let big = Layout::from_size_align(80 << 20, 8)?;
    match heap.try_alloc(big) {
        Ok(_) => return Err("an 80 MiB allocation fit in a 64 MiB heap".into()),
        Err(e) => outln!("\n   asked for 80 MiB more:\n    -> Err: {e}"),
    }
    let ok = heap.try_alloc(Layout::from_size_align(1 << 20, 8)?)?;
    outln!("   the heap stays usable: a 1 MiB allocation right after succeeds");
    // SAFETY: `ok` was just allocated by `heap` and is not used again.
    unsafe { heap.dealloc(ok) };
    drop(index);
    outln!("\n   after freeing everything (memory goes back to the OS above min):");
    print_stats(&heap);
    outln!();
    Ok(())
}

fn checksum(data: &[AtomicU64]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |acc, x| {
        (acc ^ x.load(Ordering::Relaxed)).wrapping_mul(0x100_0000_01b3)
    })
}

fn show(result: Result<Vec<u64>, Error>) -> Result<(), Box<dyn std::error::Error>> {
    match result {
        Err(Error::Violation(v)) => {
            for line in v.to_string().lines() {
                outln!("     {line}");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
        Ok(_) => Err("a write to frozen memory went unnoticed".into()),
    }
}

/// The main heap is frozen while tasks run; writes to it are caught by the
/// MMU, reported precisely, and the data stays intact.
fn chapter_freeze() -> Result<(), Box<dyn std::error::Error>> {
    outln!("2. Frozen during parallel phases");
    let main = frostheap::main_heap().ok_or("the frostheap binary runs on frostheap::Global")?;
    let data: Vec<AtomicU64> = (0..100_000).map(AtomicU64::new).collect();
    outln!(
        "   100,000 AtomicU64 built on the main thread: in the main heap? {}",
        main.owns(data.as_ptr())
    );
    let rt = Runtime::builder().workers(2).build()?;
    outln!(
        "   runtime: {} workers, guarding the main heap, backend {} ({}), policy {}",
        rt.workers(),
        rt.backend().name(),
        if frostheap::__private::pkeys_available() {
            "protection keys: one register write per worker"
        } else {
            "no protection keys on this CPU: one mprotect over the committed range"
        },
        rt.on_violation().name()
    );
    let before = checksum(&data);

    let sums = rt.map(0..4u64, |q| {
        let chunk = data.len() / 4;
        data[q as usize * chunk..(q as usize + 1) * chunk]
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .sum::<u64>()
    })?;
    outln!(
        "   reading is free: 4 tasks summed the quarters -> {:?}",
        sums
    );

    outln!("\n   a) a task writes through an atomic (interior mutability, no `unsafe`):");
    show(rt.map(0..8u64, |i| {
        if i == 3 {
            data[42].fetch_add(1, Ordering::Relaxed);
        }
        i
    }))?;

    outln!("\n   b) a task writes through a raw pointer cast from a shared reference:");
    show(rt.map(0..8u64, |i| {
        if i == 6 {
            let p = &data[7] as *const AtomicU64 as *mut u64;
            // SAFETY: deliberately wrong — this is the bug frostheap catches:
            // the store is undone at the thaw (rollback) or never happens
            // (cancel).
            unsafe { p.write_volatile(7) };
        }
        i
    }))?;

    outln!("\n   c) a task calls a C function (memset) on the shared data:");
    show(rt.map(0..8u64, |i| {
        if i == 1 {
            // SAFETY: deliberately wrong, as above: C code writing memory the
            // task only has a shared reference to.
            unsafe { libc::memset(data.as_ptr().add(1000) as *mut libc::c_void, 0xff, 64) };
        }
        i
    }))?;

    let after = checksum(&data);
    outln!(
        "\n   checksum before {before:#018x}, after {after:#018x}: {}",
        if before == after {
            "the data is intact"
        } else {
            "CHANGED"
        }
    );
    let again = rt.map(0..4u64, |i| i * 10)?;
    let s = rt.stats();
    outln!(
        "   the program carries on: next phase -> {again:?}; {} violating stores reported, {} parked workers replaced",
        s.violations, s.parked_workers
    );
    outln!();
    Ok(())
}

/// A parallel map with arena allocation and a memory budget, and a task that
/// tries to append to shared data.
fn chapter_map() -> Result<(), Box<dyn std::error::Error>> {
    outln!("3. A parallel map: arenas, a memory budget, and a task that appends to shared data");
    let words: Vec<String> = (0..20_000).map(|i| format!("word-{i:05}")).collect();
    // Boxed: the Mutex (its lock word) and the Vec's header live in the
    // main heap, like any shared state main builds.
    let seen: Box<Mutex<Vec<String>>> = Box::new(Mutex::new(Vec::with_capacity(16)));
    let rt = Runtime::builder()
        .workers(2)
        .memory_budget(8 << 20)
        .build()?;
    outln!("   main built 20,000 strings in the main heap; the runtime has a budget of 8 MiB");

    let lens = rt.map_slice(&words, |w| {
        // Every allocation here goes to the worker's context heap (a bump
        // arena): a String, a Vec, a HashMap per item.
        let upper = w.to_uppercase();
        let letters: Vec<char> = upper.chars().rev().collect();
        let mut counts = std::collections::HashMap::new();
        for c in &letters {
            *counts.entry(*c).or_insert(0u32) += 1;
        }
        counts.len() as u64 + letters.len() as u64
    })?;
    let s = rt.stats();
    outln!(
        "   mapped 20,000 items -> {} results, first {:?}",
        lens.len(),
        &lens[..4]
    );
    outln!(
        "   measured exactly from the arenas: {} per item (max), batches sized to the budget: {:?}",
        Bytes(s.bytes_per_item),
        &s.batch_sizes[..s.batch_sizes.len().min(6)]
    );
    outln!(
        "   peak bytes of one phase: {} (budget {})",
        Bytes(s.peak_phase_bytes),
        Bytes(8 << 20)
    );

    let main = frostheap::main_heap().ok_or("no main heap")?;
    let in_use = main.stats().in_use;
    let owned: Vec<String> = words.iter().take(1000).cloned().collect();
    let n = rt.map(owned, |w| w.len())?.len();
    outln!(
        "   moved 1,000 main-heap Strings into tasks and dropped them there: frees deferred to the thaw;\n   main heap in use before cloning {} -> after {n} tasks {}",
        Bytes(in_use),
        Bytes(main.stats().in_use)
    );

    outln!("\n   a task appends to the shared Vec behind a Mutex (the lock itself lives in the frozen heap):");
    let r = rt.map(&words[..100], |w| {
        if w == "word-00042" {
            seen.lock().unwrap().push(w.clone());
        }
        w.len() as u64
    });
    show(r)?;
    outln!(
        "   shared Vec after the phase: {} entries (the append never happened)",
        seen.lock().unwrap().len()
    );
    let ok = rt.map(0..3u64, |i| i + 1)?;
    outln!("   and the runtime goes on: {ok:?}\n");
    Ok(())
}

/// Memory as capacity: how many clients fit, instead of a guessed maximum.
fn chapter_budget() -> Result<(), Box<dyn std::error::Error>> {
    outln!("4. A memory budget becomes capacity");
    let budget = Budget::new(256 << 20);
    outln!(
        "   256 MiB at ≈128 KiB per client: capacity {} clients",
        budget.capacity(128 << 10)
    );
    let mut permits = Vec::new();
    while let Some(p) = budget.try_acquire(100 << 20) {
        permits.push(p);
    }
    outln!(
        "   admission by bytes: {} requests of 100 MiB admitted, the next is refused ({} available)",
        permits.len(),
        Bytes(budget.available())
    );
    drop(permits);
    outln!(
        "   permits return their bytes when dropped: {} available again",
        Bytes(budget.available())
    );
    outln!("   `frostheap serve --max-memory 256M` derives its client capacity the same way.\n");
    Ok(())
}

fn chapter_run() {
    outln!("5. Any program on a frostheap heap");
    outln!("   Python has no -Xmx. With the LD_PRELOAD library it gets one:");
    outln!("     cargo build --release -p frostheap-capi");
    outln!(
        "     target/release/frostheap run --max-memory 256M -- python3 -c \"bytearray(10**9)\""
    );
    outln!("   raises MemoryError instead of being killed.\n");
}
