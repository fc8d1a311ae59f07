//! Thread heaps and the one process limit under `frostheap::Global`, run
//! as a child process by the integration tests (tests/it/global_mode.rs).
//! Each mode checks itself, prints `ok` lines, and exits non-zero (a
//! panic) on any failure.
//!
//! - `limit` (run with `FROSTHEAP_MAX=128M`): the main thread, a spawned
//!   thread, four worker threads fed jobs over a channel (the shape of
//!   tokio's or any server's pool) and runtime tasks each fill memory
//!   until the allocator refuses; every one of them is refused near the
//!   one shared cap (never far past it), and after everything is freed
//!   each can allocate again.
//! - `churn`: 10,000 short-lived threads, each allocating a little,
//!   keeping some blocks alive past its exit and freeing blocks other
//!   threads made; the heaps of exited threads are adopted (a handful of
//!   heaps in all), every block is freed exactly once, and the bytes in
//!   use and committed come back down.
//! - `oom`: one allocation past the limit that Rust cannot handle: the
//!   process prints frostheap's line and then std's, and aborts.
//!
//! Run: `FROSTHEAP_MAX=128M cargo run --release -p frostheap --example global_threads -- limit`.

use std::collections::TryReserveError;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const MIB: usize = 1 << 20;

/// Allocates 1 MiB blocks until the allocator refuses; returns them.
fn fill() -> Vec<Vec<u8>> {
    let mut held = Vec::new();
    if held.try_reserve(4096).is_err() {
        return held;
    }
    loop {
        let mut v: Vec<u8> = Vec::new();
        match v.try_reserve_exact(MIB) {
            Ok(()) => {
                v.resize(MIB, 1);
                if held.len() == held.capacity() {
                    return held; // bookkeeping full: far past any cap here
                }
                held.push(v);
            }
            Err(_) => return held,
        }
    }
}

/// A request far past the cap is refused with an error, not a crash.
fn big_request_is_refused() -> Result<(), TryReserveError> {
    let mut v: Vec<u8> = Vec::new();
    // black_box: an allocation nobody uses may be elided, and its success
    // assumed.
    let r = std::hint::black_box(v.try_reserve_exact(512 * MIB));
    std::hint::black_box(&mut v);
    match r {
        Ok(()) => panic!("512 MiB granted under a 128 MiB cap"),
        Err(_) => Ok(()),
    }
}

fn limit_mode() {
    let limit = frostheap::stats().limit;
    assert_eq!(limit, 128 * MIB, "FROSTHEAP_MAX=128M expected");
    let report = |who: &str, got: usize| {
        let s = frostheap::stats();
        println!(
            "{who}: refused after {got} MiB (committed now {} KiB: main {}, threads {}, context {})",
            s.committed >> 10,
            s.committed_for(frostheap::heap::process::Kind::Main) >> 10,
            s.committed_for(frostheap::heap::process::Kind::Thread) >> 10,
            s.committed_for(frostheap::heap::process::Kind::Context) >> 10,
        );
        assert!(
            got * MIB <= limit,
            "{who} got {got} MiB under a 128 MiB cap"
        );
        assert!(got >= 16, "{who} refused after only {got} MiB");
    };

    // The main thread.
    big_request_is_refused().unwrap();
    let held = fill();
    report("main", held.len());
    drop(held);

    // A spawned thread, while the main thread holds 48 MiB: the cap is
    // shared, so the thread gets at most what is left.
    let main_part: Vec<Vec<u8>> = (0..48).map(|_| vec![2u8; MIB]).collect();
    let got = thread::spawn(|| {
        big_request_is_refused().unwrap();
        fill().len()
    })
    .join()
    .unwrap();
    report("spawned thread", got);
    assert!(
        got + 48 <= 128,
        "the thread got {got} MiB while main held 48 of 128"
    );
    drop(main_part);

    // A pool of worker threads fed over a channel: each job fills, reports,
    // frees. Jobs run one after another on whichever worker is free.
    let (jobs, rx) = mpsc::channel::<mpsc::Sender<usize>>();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || loop {
                let job = rx.lock().unwrap().recv();
                match job {
                    Ok(reply) => {
                        big_request_is_refused().unwrap();
                        // Freed before the reply, so the next job has room.
                        let got = fill().len();
                        reply.send(got).unwrap();
                    }
                    Err(_) => return,
                }
            })
        })
        .collect();
    for _ in 0..8 {
        let (tx, answer) = mpsc::channel();
        jobs.send(tx).unwrap();
        report("pool worker", answer.recv().unwrap());
    }
    drop(jobs);
    for w in workers {
        w.join().unwrap();
    }

    // Runtime tasks: their context heaps count against the same cap.
    let rt = frostheap::Runtime::builder().workers(2).build().unwrap();
    let got = rt
        .map(0..2u32, |_| {
            let mut v: Vec<u8> = Vec::new();
            let big = std::hint::black_box(v.try_reserve_exact(512 * MIB)).is_ok();
            std::hint::black_box(&mut v);
            let held = fill();
            (big, held.len())
        })
        .unwrap();
    for (big, n) in &got {
        assert!(!big, "a runtime task was granted 512 MiB under 128 MiB");
        println!("runtime task: refused after {n} MiB");
    }
    let total: usize = got.iter().map(|(_, n)| n).sum();
    assert!(
        total * MIB <= limit,
        "runtime tasks together got {total} MiB under a 128 MiB cap"
    );
    drop(rt);

    // Everything freed: every kind of thread can allocate again.
    let again: Vec<u8> = vec![3u8; 64 * MIB];
    assert_eq!(again.len(), 64 * MIB);
    drop(again);
    let again = thread::spawn(|| vec![4u8; 64 * MIB].len()).join().unwrap();
    assert_eq!(again, 64 * MIB);
    let s = frostheap::stats();
    println!(
        "stats: committed={} peak={} refused={} thread_heaps={} in_use={}",
        s.committed,
        s.peak_committed,
        s.refused,
        s.thread_heaps,
        s.in_use()
    );
    assert!(s.peak_committed <= limit, "{s:?}");
    assert!(s.refused > 0, "{s:?}");
    println!("global_threads limit: ok");
}

fn churn_mode() {
    const THREADS: usize = 10_000;
    const BATCH: usize = 100;
    let before = frostheap::stats();
    // Blocks made by exited threads, freed by main later.
    let mut kept: Vec<Box<[u64]>> = Vec::new();
    // Blocks main makes and hands to the next batch to free.
    let mut handed: Vec<Box<[u64]>> = (0..BATCH)
        .map(|i| vec![i as u64; 8].into_boxed_slice())
        .collect();
    for round in 0..THREADS / BATCH {
        let (tx, rx) = mpsc::channel();
        let handles: Vec<_> = handed
            .drain(..)
            .enumerate()
            .map(|(i, from_main)| {
                let tx = tx.clone();
                thread::spawn(move || {
                    assert_eq!(from_main[0], i as u64, "a block from main was corrupted");
                    drop(from_main); // a remote free into the main heap
                    let mine: Vec<Box<[u64]>> = (0..16)
                        .map(|k| vec![(round * BATCH + i + k) as u64; 4 + k].into_boxed_slice())
                        .collect();
                    let keep = mine.into_iter().step_by(4).collect::<Vec<_>>();
                    tx.send(keep).unwrap(); // outlive this thread
                })
            })
            .collect();
        drop(tx);
        for h in handles {
            h.join().unwrap();
        }
        for keep in rx {
            kept.extend(keep);
        }
        // Free half of what exited threads left, from main (remote frees
        // into abandoned heaps).
        let half = kept.len() / 2;
        for b in kept.drain(..half) {
            assert!(b.iter().all(|&x| x == b[0]), "a kept block was corrupted");
        }
        handed = (0..BATCH)
            .map(|i| vec![i as u64; 8].into_boxed_slice())
            .collect();
    }
    drop(kept);
    drop(handed);
    let after = frostheap::stats();
    println!(
        "churn: {THREADS} threads, thread_heaps={} abandoned={} committed {} -> {} in_use {} -> {}",
        after.thread_heaps,
        after.abandoned_heaps,
        before.committed,
        after.committed,
        before.in_use(),
        after.in_use()
    );
    assert!(
        after.thread_heaps <= 4 * BATCH,
        "{} heaps for {BATCH} threads alive at once",
        after.thread_heaps
    );
    // Every block the churn made is freed; what is left in use is main's
    // own bookkeeping (a few KiB).
    assert!(
        after.in_use() <= before.in_use() + 64 * 1024,
        "in use grew from {} to {}",
        before.in_use(),
        after.in_use()
    );
    assert!(
        after.committed <= before.committed + after.thread_heaps * 2 * MIB + 8 * MIB,
        "committed grew from {} to {} with {} heaps",
        before.committed,
        after.committed,
        after.thread_heaps
    );
    println!("global_threads churn: ok");
}

fn oom_mode() {
    let s = frostheap::stats();
    println!("limit={}", s.limit);
    let v: Vec<u8> = vec![1u8; s.limit + MIB];
    println!("survived {}", v.len());
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("limit") => limit_mode(),
        Some("churn") => churn_mode(),
        Some("oom") => oom_mode(),
        other => panic!("usage: global_threads limit|churn|oom (got {other:?})"),
    }
}
