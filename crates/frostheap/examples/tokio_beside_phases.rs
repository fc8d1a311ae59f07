//! A tokio runtime beside frostheap's parallel phases, in global mode, as
//! a server that runs a parallel computation per request would have it.
//!
//! Under the `mprotect` backend a phase freezes the main heap for every
//! thread, and a system call that writes frozen memory fails with `EFAULT`
//! (the kernel writes for it; no fault reaches the handler). A tokio
//! runtime built on the main thread has its I/O driver's event buffer in
//! the main heap (the driver tokio's `net`, `signal` or `process`
//! features bring): during a phase its `epoll_wait` failed, a tokio worker
//! panicked ("unexpected error when polling the I/O driver: Bad address")
//! and the process hung (a user's trial, 5 runs of 5; `--plain` here). Built inside
//! `frostheap::unguarded`, its buffers are system memory, outside every
//! guarded heap, and it runs through the phases.
//!
//! Run: `cargo run --release -p frostheap --example tokio_beside_phases`
//! (`-- --plain` builds tokio and its timer task on the main thread
//! instead, and shows the failure); tests/it/runtime.rs runs it as a child
//! process within a time limit. Checks itself with `assert!` and prints
//! `tokio_beside_phases: ok`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const PHASES: u64 = 1000;

fn main() {
    assert!(frostheap::main_heap().is_some(), "Global is installed");
    let plain = std::env::args().any(|a| a == "--plain");
    let fh = frostheap::Runtime::builder()
        .workers(2)
        .build()
        .expect("the runtime starts");
    let build = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio starts")
    };
    let tokio_rt = if plain {
        build()
    } else {
        frostheap::unguarded(build)
    };
    // Counters tokio's threads write during phases: system memory too (in
    // the main heap each store would be a bystander's, stepped through).
    let ticks = frostheap::unguarded(|| Arc::new(AtomicU64::new(0)));
    // A timer task keeps tokio's driver polling all through the phases.
    // Spawned unguarded too: a task the main thread spawns is main-heap
    // memory that tokio's threads write during phases (each store a
    // bystander's, stepped through one fault at a time under `mprotect`).
    let timer = {
        let ticks = ticks.clone();
        let spawn = || {
            tokio_rt.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(1));
                loop {
                    every.tick().await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        if plain {
            spawn()
        } else {
            frostheap::unguarded(spawn)
        }
    };
    // A thread outside both runtimes hands tokio work every 100 µs, as a
    // server's acceptor or a channel from another library would: each
    // spawn wakes a tokio worker parked in `epoll_wait`, and the kernel
    // writes the wake-up into the driver's event buffer, during phases too.
    let done = frostheap::unguarded(|| Arc::new(AtomicBool::new(false)));
    let handed = frostheap::unguarded(|| Arc::new(AtomicU64::new(0)));
    let feeder = {
        let (done, handed, handle) = (done.clone(), handed.clone(), tokio_rt.handle().clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let handed = handed.clone();
                handle.spawn(async move {
                    handed.fetch_add(1, Ordering::Relaxed);
                });
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    tokio_rt.block_on(async {
        for phase in 0..PHASES {
            let doubled = tokio::task::block_in_place(|| {
                fh.map(0..10_000u64, |x| x * 2)
                    .expect("a phase with no violation")
            });
            assert_eq!(doubled[9_999], 19_998, "phase {phase}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    done.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder thread");
    let seen = ticks.load(Ordering::Relaxed);
    assert!(seen > 0, "the timer task never ran");
    let fed = handed.load(Ordering::Relaxed);
    assert!(fed > 0, "no task handed to tokio ran");
    // tokio still answers: no worker was lost to an EFAULT.
    let answer = tokio_rt.block_on(async { tokio::spawn(async { 6 * 7 }).await });
    assert_eq!(answer.expect("tokio's task completes"), 42);
    timer.abort();
    println!(
        "tokio_beside_phases: ok ({PHASES} phases, {seen} timer ticks, {fed} tasks handed in)"
    );
}
