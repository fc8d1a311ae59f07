//! Child-process scenarios for the freeze tests (tests/it/freeze.rs), with
//! `frostheap::Global` installed so the main heap is guarded:
//!
//! - `cap N`: violations in a row under cancel with `max_parked(N)`, each
//!   checked and printed as `reported k`, until the cap stops the process;
//! - `abort`: one violation under the abort policy;
//! - `seal-write`: main writes a sealed heap;
//! - `overflow-thread|overflow-main|overflow-task`, `null-write`,
//!   `protnone-write`, `null-write-task`, each followed by `runtime` (a
//!   runtime is built and has run a phase, so frostheap's fault handler is
//!   installed) or `plain` (no runtime): faults that are not frostheap's.
//!
//! Every scenario prints `survived` if it gets past the point where the
//! process should have died.

use std::sync::atomic::{AtomicU64, Ordering};

use frostheap::{Error, OnViolation, Runtime};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let with = args.get(1).map(String::as_str).unwrap_or("runtime");
    match mode {
        "cap" => cap(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)),
        "abort" => abort(),
        "seal-write" => seal_write(),
        _ => unrelated_fault(mode, with == "runtime"),
    }
    println!("survived");
}

fn cap(max_parked: usize) {
    let data: Vec<u64> = (0..100).collect();
    let rt = Runtime::builder()
        .workers(2)
        .on_violation(OnViolation::Cancel)
        .max_parked(max_parked)
        .build()
        .expect("runtime");
    for k in 1..=max_parked as u64 + 5 {
        let at = &data[(k % 100) as usize] as *const u64 as usize;
        let out = rt.map(0..4usize, |i| {
            if i == 2 {
                // SAFETY: `at` points into the live vector; the store is
                // the violation under test (the task is cancelled).
                unsafe { (at as *mut u64).write_volatile(u64::MAX) };
            }
            i
        });
        match out {
            Err(Error::Violation(v))
                if v.address() == at
                    && v.item_index() == Some(2)
                    && v.heap_name() == "main"
                    && data.iter().copied().eq(0..100) =>
            {
                println!("reported {k}")
            }
            Err(e) => {
                println!("wrong report {k}: {e}");
                std::process::exit(3);
            }
            Ok(_) => {
                println!("wrong: violation {k} went unnoticed");
                std::process::exit(3);
            }
        }
    }
}

fn abort() {
    let data: Vec<u64> = (0..100).collect();
    let rt = Runtime::builder()
        .workers(2)
        .on_violation(OnViolation::Abort)
        .build()
        .expect("runtime");
    let at = &data[42] as *const u64 as usize;
    println!("target {at:#x}");
    let _ = rt.map(0..6usize, |i| {
        if i == 3 {
            // SAFETY: `at` points into the live vector; the store is the
            // violation under test (the process dies).
            unsafe { (at as *mut u64).write_volatile(0) };
        }
        i
    });
}

fn seal_write() {
    let heap = frostheap::Heap::builder()
        .name("sealed")
        .max(16 << 20)
        .build()
        .expect("heap");
    let mut v = allocator_api2::vec::Vec::new_in(heap.clone());
    v.extend((0..64u64).map(|i| i * i));
    heap.seal().expect("seal");
    println!("sealed, data[7]={}", v[7]);
    let at = &v[7] as *const u64 as *mut u64;
    // SAFETY: `at` points into the live vector; the store is the write to
    // sealed memory under test (the process dies).
    unsafe { at.write_volatile(0) };
}

/// Recurses until the stack overflows.
fn deep(n: u64) -> u64 {
    let buf = [n; 64];
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    deep(n + 1).wrapping_add(std::hint::black_box(&buf)[7])
}

/// An address in the never-mapped first page, as a null struct pointer's
/// field would be (a literal null would trip the debug-mode null check
/// before the store is even attempted).
fn null_field() -> *mut u64 {
    std::hint::black_box(16usize) as *mut u64
}

fn unrelated_fault(mode: &str, with_runtime: bool) {
    let with = if with_runtime { "runtime" } else { "plain" };
    let rt = with_runtime.then(|| {
        let rt = Runtime::builder().workers(2).build().expect("runtime");
        let total = frostheap::Shared::new(AtomicU64::new(0));
        rt.for_each(0..8u64, |i| {
            total.fetch_add(i, Ordering::Relaxed);
        })
        .expect("a phase");
        assert_eq!(total.load(Ordering::Relaxed), 28);
        rt
    });
    println!("{mode} {with}: start");
    match mode {
        "overflow-thread" => {
            let t = std::thread::Builder::new()
                .name("deep".into())
                .spawn(|| deep(0))
                .expect("spawn");
            println!("joined {:?}", t.join().is_ok());
        }
        "overflow-main" => println!("{}", deep(0)),
        "overflow-task" => {
            let rt = rt.as_ref().expect("a runtime");
            let _ = rt.map(0..2u64, |i| if i == 1 { deep(0) } else { i });
        }
        "null-write" => {
            // SAFETY: none: the store is the crash under test.
            unsafe { null_field().write_volatile(1) };
        }
        "null-write-task" => {
            let rt = rt.as_ref().expect("a runtime");
            let _ = rt.for_each(0..2u64, |i| {
                if i == 1 {
                    // SAFETY: none: the store is the crash under test.
                    unsafe { null_field().write_volatile(1) };
                }
            });
        }
        "oob-read" => {
            // A read past the committed part of the main heap (PROT_NONE):
            // a real crash, never a violation, with or without a phase.
            let heap = frostheap::main_heap().expect("Global is installed");
            let addr = heap.base() as usize + heap.stats().reserved - 64;
            let read = move || {
                // SAFETY: none: the read is the crash under test.
                unsafe { (addr as *const u64).read_volatile() }
            };
            match rt.as_ref() {
                Some(rt) => {
                    let _ = rt.map(0..2u64, |i| if i == 1 { read() } else { i });
                }
                None => println!("{}", read()),
            }
        }
        "protnone-write" => {
            // SAFETY: a fresh anonymous PROT_NONE mapping; the store into
            // it is the crash under test.
            unsafe {
                let p = libc::mmap(
                    core::ptr::null_mut(),
                    4096,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                (p as *mut u64).write_volatile(1);
            }
        }
        other => {
            println!("unknown mode {other:?}");
            std::process::exit(64);
        }
    }
    drop(rt);
}
