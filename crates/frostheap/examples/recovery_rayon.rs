//! A rayon pool first used inside a frostheap task, in global mode
//! (issue 13, case 4): rayon builds its global pool lazily, so the first
//! task that calls `par_iter` starts its threads from inside a phase. Those
//! threads are no workers of the phase: their start-up writes std's thread
//! bookkeeping, which main allocated (the main heap, frozen), and their
//! stores must land — not wait for a thaw that waits for them, and not be
//! undone. Later phases use the same pool; a violation in a phase that
//! uses it is still caught and undone, and the pool keeps working.
//!
//! Run: `cargo run --release -p frostheap --example recovery_rayon`
//! (with `FROSTHEAP_PROTECT=mprotect|pkey`); tests/it/recovery.rs runs it
//! as a child process within a time limit. Checks itself with `assert!`
//! and prints `recovery_rayon: ok`.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    assert!(frostheap::main_heap().is_some(), "Global is installed");
    let rt = frostheap::Runtime::builder()
        .workers(2)
        .build()
        .expect("the runtime starts");
    // The pool does not exist yet: the first task to use it builds it.
    for round in 0..3u64 {
        let sums = rt
            .map(0..4u64, |i| {
                (0..1000u64)
                    .into_par_iter()
                    .map(|x| x * i + round)
                    .sum::<u64>()
            })
            .expect("a rayon pool used inside tasks");
        let want: Vec<u64> = (0..4u64)
            .map(|i| (0..1000u64).map(|x| x * i + round).sum())
            .collect();
        assert_eq!(sums, want, "round {round}");
    }
    // A violation in a phase whose tasks use the pool: caught and undone
    // (the default policy), and the pool keeps working afterwards.
    let target = Box::new(AtomicU64::new(5));
    let r = rt.map(0..4u64, |i| {
        let s: u64 = (0..100u64).into_par_iter().sum();
        if i == 1 {
            target.fetch_add(1, Ordering::SeqCst);
        }
        s + i
    });
    let e = r.expect_err("a store into the main heap is a violation");
    assert!(e.violation().is_some(), "{e}");
    if std::env::var("FROSTHEAP_ON_VIOLATION").as_deref() != Ok("audit") {
        assert_eq!(target.load(Ordering::SeqCst), 5, "the store was undone");
    }
    let after = rt
        .map(0..2u64, |i| {
            (0..10u64).into_par_iter().map(|x| x + i).sum::<u64>()
        })
        .expect("the pool works after the violation");
    assert_eq!(after, [45, 55]);
    // And from main, between phases.
    let v: Vec<u64> = (0..100u64).into_par_iter().map(|x| x * 2).collect();
    assert_eq!(v[99], 198);
    println!("recovery_rayon: ok");
}
