//! The runtime in global mode: `frostheap::Global` is the global
//! allocator, so the main thread allocates in the main heap (frozen during
//! phases) and every allocation a task makes goes to its worker's context
//! heap.
//!
//! Run: `cargo run -p frostheap --example runtime_global -- <scenario>`
//! with one of `basics`, `escape`, `violation`, `deferred`, `oversized`,
//! `phases`, `mutation`, `reductions`, `global-runtime`. The integration tests (tests/it/runtime.rs) run each scenario
//! as a child process; a scenario checks itself with `assert!` (a failure
//! exits non-zero) and prints `runtime_global <scenario>: ok`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use frostheap::{Error, Runtime, Shared};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const MIB: usize = 1 << 20;
const WORKERS: usize = 2;

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    assert!(
        frostheap::main_heap().is_some(),
        "Global is the global allocator"
    );
    match scenario.as_str() {
        "basics" => basics(),
        "escape" => escape(),
        "violation" => violation(),
        "deferred" => deferred(),
        "oversized" => oversized(),
        "phases" => phases(),
        "mutation" => mutation(),
        "reductions" => reductions(),
        "global-runtime" => global_runtime(),
        other => {
            eprintln!(
                "unknown scenario {other:?}: basics, escape, violation, deferred, oversized, phases, \
                 mutation, reductions, global-runtime"
            );
            std::process::exit(2);
        }
    }
    println!("runtime_global {scenario}: ok");
}

fn runtime(budget: Option<usize>) -> Runtime {
    let mut b = Runtime::builder().workers(WORKERS);
    if let Some(bytes) = budget {
        b = b.memory_budget(bytes);
    }
    b.build().expect("the runtime starts")
}

/// `println!`, `thread::current()`, a channel made in `unguarded`, and
/// `Shared` atomics inside tasks.
fn basics() {
    println!("main prints first");
    let rt = runtime(None);
    let heap = frostheap::main_heap().unwrap();
    assert!(rt.guarded().contains(&heap), "the main heap is guarded");
    let (tx, rx) = frostheap::unguarded(mpsc::channel::<(u64, String)>);
    let count = Shared::new(AtomicUsize::new(0));
    let names = rt
        .map(0..8u64, |i| {
            println!("task {i} on {:?}", std::thread::current().name());
            count.fetch_add(1, Ordering::Relaxed);
            tx.send((i, format!("item-{i}"))).unwrap();
            std::thread::current().name().map(str::to_string)
        })
        .expect("tasks that print, name threads, send and count");
    assert_eq!(count.load(Ordering::Relaxed), 8);
    for n in &names {
        let n = n.as_deref().expect("worker threads are named");
        assert!(n.starts_with("frostheap-worker-"), "{n}");
    }
    drop(tx);
    let mut got: Vec<(u64, String)> = rx.iter().collect();
    got.sort();
    assert_eq!(
        got,
        (0..8u64)
            .map(|i| (i, format!("item-{i}")))
            .collect::<Vec<_>>()
    );
    assert_eq!(rt.stats().violations, 0);
}

/// Strings, Vecs and HashMaps built in tasks escape: they live in context
/// heaps, and stay valid after the map, after later phases, and after
/// main has grown other data.
fn escape() {
    let rt = runtime(None);
    let built = rt
        .map(0..500usize, |i| {
            let s = format!("value number {i}");
            let v: Vec<usize> = (0..i % 50).collect();
            let m: HashMap<usize, String> = (0..i % 7).map(|k| (k, k.to_string())).collect();
            (s, v, m)
        })
        .unwrap();
    for (s, v, _) in &built {
        assert!(frostheap::context::owns(s.as_ptr() as usize));
        if !v.is_empty() {
            assert!(frostheap::context::owns(v.as_ptr() as usize));
        }
    }
    let committed_after_first = rt.stats().context_committed;
    // Later phases allocate and free plenty in the same context heaps.
    for round in 0..300usize {
        let sums = rt
            .map(0..16usize, |i| {
                let junk: Vec<u64> = (0..4096).map(|k| (k ^ i) as u64).collect();
                let text: String = (0..64).map(|_| 'x').collect();
                junk.iter().sum::<u64>() + text.len() as u64
            })
            .unwrap();
        assert_eq!(sums.len(), 16, "round {round}");
    }
    // Main grows and frees its own data in between.
    let mut main_data: Vec<String> = Vec::new();
    for i in 0..10_000 {
        main_data.push(i.to_string());
    }
    assert!(frostheap::main_heap().unwrap().owns(main_data.as_ptr()));
    for (i, (s, v, m)) in built.iter().enumerate() {
        assert_eq!(s, &format!("value number {i}"));
        assert_eq!(v, &(0..i % 50).collect::<Vec<_>>());
        assert_eq!(m.len(), i % 7);
        for k in 0..i % 7 {
            assert_eq!(m[&k], k.to_string());
        }
    }
    // Main may also mutate (and grow) an escaped result after the map.
    let mut built = built;
    built[3].0.push_str(" and more");
    assert_eq!(built[3].0, "value number 3 and more");
    // Context memory stayed bounded while the results were alive, and
    // after dropping them the chunks are reusable.
    let s = rt.stats();
    assert!(
        s.context_committed <= committed_after_first + WORKERS * 3 * frostheap::context::CHUNK_SIZE,
        "{committed_after_first} -> {}",
        s.context_committed
    );
    drop(built);
    for _ in 0..50 {
        rt.map(0..16usize, |i| vec![i as u8; 64 << 10].len())
            .unwrap();
    }
    assert!(
        rt.stats().context_committed
            <= s.context_committed + WORKERS * frostheap::context::CHUNK_SIZE
    );
}

/// A task that writes main-heap data is cancelled; the data is intact and
/// the runtime goes on with a replacement worker.
fn violation() {
    let data: Vec<AtomicUsize> = (0..1000).map(AtomicUsize::new).collect();
    let heap = frostheap::main_heap().unwrap();
    assert!(heap.owns(data.as_ptr()));
    let rt = runtime(None);
    // Reading is fine.
    let read = rt
        .map(0..100usize, |i| data[i].load(Ordering::Relaxed))
        .unwrap();
    assert_eq!(read, (0..100).collect::<Vec<_>>());
    let r = rt.map(0..50usize, |i| {
        if i == 21 {
            data[9].store(0, Ordering::Relaxed);
        }
        i
    });
    match r {
        Err(Error::Violation(v)) => {
            assert_eq!(v.heap_name(), "main");
            assert_eq!(v.item_index(), Some(21));
            assert_eq!(v.address(), &data[9] as *const AtomicUsize as usize);
            println!("{v}");
        }
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(
        data[9].load(Ordering::Relaxed),
        9,
        "the store did not happen"
    );
    let s = rt.stats();
    assert_eq!((s.violations, s.parked_workers), (1, 1), "{s:?}");
    // A second violation in a later phase is caught the same way.
    let r = rt.map(0..4usize, |i| {
        if i == 2 {
            data[0].fetch_add(1, Ordering::Relaxed);
        }
        i
    });
    assert!(matches!(r, Err(Error::Violation(_))), "{r:?}");
    assert_eq!(data[0].load(Ordering::Relaxed), 0);
    assert_eq!(rt.stats().parked_workers, 2);
    // Usable afterwards, on fresh workers.
    let out = rt.map(0..1000u64, |x| x * 3).unwrap();
    assert_eq!(out, (0..1000u64).map(|x| x * 3).collect::<Vec<_>>());
    data[9].store(10, Ordering::Relaxed);
    assert_eq!(
        data[9].load(Ordering::Relaxed),
        10,
        "main writes after thaw"
    );
}

/// Items moved into tasks own main-heap memory and are dropped there: the
/// frees are deferred to the thaw (nothing is written to the frozen heap)
/// and the main heap's `in_use` returns to its starting value.
fn deferred() {
    let heap = frostheap::main_heap().unwrap();
    for budget in [None, Some(MIB)] {
        let rt = runtime(budget);
        // Warm up: lazily made state of the runtime and of std.
        rt.map(vec![String::from("warm")], |s| s.len()).unwrap();
        let start = heap.stats().in_use;
        let items: Vec<String> = (0..20_000).map(|i| "x".repeat(1 + i % 300)).collect();
        let big: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 2 * MIB]).collect();
        assert!(heap.owns(items[0].as_ptr()) && heap.owns(big[0].as_ptr()));
        assert!(heap.stats().in_use > start + 16 * MIB);
        let lens = rt
            .map(items, |s| {
                let n = s.len();
                drop(s); // a free of main-heap memory inside a task
                n
            })
            .expect("dropping main-heap items in tasks is not a violation");
        assert_eq!(
            lens.iter().sum::<usize>(),
            (0..20_000).map(|i| 1 + i % 300).sum()
        );
        let sums = rt
            .map(big, |v| v.iter().map(|&b| b as usize).sum::<usize>())
            .unwrap();
        assert_eq!(sums[7], 7 * 2 * MIB);
        drop(lens);
        drop(sums);
        assert_eq!(rt.stats().violations, 0);
        let now = heap.stats().in_use;
        assert_eq!(
            now, start,
            "main heap in_use {start} -> {now} (budget {budget:?})"
        );
    }
}

/// With a budget, an item larger than the budget runs alone, and the
/// stats say so; the allocations are the tasks' own (global mode).
fn oversized() {
    let budget = MIB;
    let rt = runtime(Some(budget));
    let out = rt
        .map(vec![8 * MIB], |n| {
            let v = vec![1u8; n];
            v.iter().map(|&b| b as usize).sum::<usize>()
        })
        .unwrap();
    assert_eq!(out, vec![8 * MIB]);
    let s = rt.stats();
    assert_eq!(s.oversized_items, 1, "{s:?}");
    assert_eq!(s.batch_sizes, vec![1], "{s:?}");
    assert!(s.bytes_per_item >= 8 * MIB, "{s:?}");

    // Small items, then one large: the large one is measured and counted,
    // and the batches after it hold one item.
    let rt = runtime(Some(budget));
    let sizes: Vec<usize> = (0..40)
        .map(|i| if i == 10 { 3 * MIB } else { 4096 })
        .collect();
    let out = rt
        .map(sizes.clone(), |n| {
            String::from_utf8(vec![b'a'; n]).unwrap().len()
        })
        .unwrap();
    assert_eq!(out, sizes);
    let s = rt.stats();
    assert_eq!(s.oversized_items, 1, "{s:?}");
    let pos = s
        .batch_sizes
        .iter()
        .scan(0, |acc, &b| {
            *acc += b;
            Some(*acc)
        })
        .position(|end| end > 10)
        .unwrap();
    assert!(
        s.batch_sizes[pos + 1..].iter().all(|&b| b == 1),
        "after the large item: {s:?}"
    );
    assert_eq!(s.batch_sizes.iter().sum::<usize>(), 40);
}

/// RSS in bytes from /proc/self/statm.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// 10,000 phases in a row: main heap, context heaps and RSS do not grow
/// after a warm-up.
fn phases() {
    let heap = frostheap::main_heap().unwrap();
    let rt = runtime(None);
    let table: Vec<u64> = (0..4096).collect();
    let phase = |round: usize| {
        let out = rt
            .map(0..4usize, |i| {
                let v: Vec<u64> = table.iter().map(|&x| x ^ i as u64).collect();
                let s = format!("{round}-{i}");
                v.iter().sum::<u64>() + s.len() as u64
            })
            .unwrap();
        assert_eq!(out.len(), 4);
    };
    for round in 0..1000 {
        phase(round);
    }
    let main_before = heap.stats();
    let ctx_before = rt.stats().context_committed;
    let rss_before = rss();
    for round in 0..10_000 {
        phase(round);
    }
    let main_after = heap.stats();
    let s = rt.stats();
    let rss_after = rss();
    assert!(s.phases >= 11_000);
    assert!(
        main_after.committed <= main_before.committed,
        "main heap committed {} -> {}",
        main_before.committed,
        main_after.committed
    );
    assert_eq!(main_after.in_use, main_before.in_use);
    assert!(
        s.context_committed <= ctx_before + WORKERS * frostheap::context::CHUNK_SIZE,
        "context heaps {ctx_before} -> {}",
        s.context_committed
    );
    assert!(
        rss_after <= rss_before + 4 * MIB,
        "RSS {rss_before} -> {rss_after}"
    );
    println!(
        "phases={} main_committed={} context_committed={} rss_before={rss_before} rss_after={rss_after}",
        s.phases, main_after.committed, s.context_committed
    );
}

/// Data tasks change: refused up front in the main heap (naming it, no
/// phase run), accepted when built (and grown) inside `unguarded`; sorts
/// likewise.
fn mutation() {
    let rt = runtime(None);
    let main = frostheap::main_heap().unwrap();
    let mut in_main: Vec<u64> = (0..100_000).collect();
    assert!(main.owns(in_main.as_ptr()));
    let phases = rt.stats().phases;
    match rt.for_each_mut(&mut in_main, |x| *x += 1) {
        Err(Error::NotWritable { heap, .. }) => assert_eq!(heap, "main"),
        other => panic!("expected NotWritable, got {other:?}"),
    }
    let msg = rt.sort_unstable(&mut in_main).unwrap_err().to_string();
    assert!(
        msg.contains("\"main\"") && msg.contains("frostheap::unguarded"),
        "{msg}"
    );
    assert_eq!(rt.stats().phases, phases, "a refused call ran a phase");
    assert!(in_main.iter().copied().eq(0..100_000), "nothing changed");

    let mut free: Vec<u64> = frostheap::unguarded(|| (0..100_000u64).rev().collect());
    assert!(!main.owns(free.as_ptr()));
    rt.for_each_mut(&mut free, |x| *x *= 2).unwrap();
    rt.sort_unstable(&mut free).unwrap();
    assert!(free.iter().copied().eq((0..100_000u64).map(|x| x * 2)));
    // Grown inside `unguarded`, it stays outside the main heap; grown
    // outside, it would move into it and be refused.
    frostheap::unguarded(|| free.extend(0..1_000_000u64));
    assert!(
        !main.owns(free.as_ptr()),
        "grown inside unguarded, the Vec stays unguarded"
    );
    rt.sort(&mut free).unwrap();
    assert!(free.windows(2).all(|w| w[0] <= w[1]));
    rt.par(frostheap::par::chunks_mut(&mut free, 4096))
        .for_each(|c| c.reverse())
        .unwrap();
    // A Shared value is writable too.
    let mut counts = frostheap::Shared::new([0u32; 64]);
    rt.for_each_mut(&mut counts[..], |c| *c += 1).unwrap();
    assert!(counts.iter().all(|&c| c == 1));
    // Reading main-heap data is fine.
    assert_eq!(
        rt.par(&in_main).sum::<u64>().unwrap(),
        (0..100_000u64).sum::<u64>()
    );
}

/// Reductions whose partials allocate (in the workers' context heaps),
/// combined in input order on the workers; a filtered collect; results
/// that escape and stay valid.
fn reductions() {
    let rt = runtime(None);
    let words: Vec<String> = (0..50_000).map(|i| format!("w{i}")).collect();
    let joined = rt
        .par(&words)
        .fold(String::new, |mut s, w| {
            s.push_str(w);
            s
        })
        .reduce(String::new, |a, b| a + &b)
        .unwrap();
    assert_eq!(joined, words.concat());
    let by_len: HashMap<usize, usize> = rt
        .par(&words)
        .fold(HashMap::new, |mut m, w| {
            *m.entry(w.len()).or_insert(0) += 1;
            m
        })
        .reduce(HashMap::new, |mut a, b| {
            for (k, v) in b {
                *a.entry(k).or_insert(0) += v;
            }
            a
        })
        .unwrap();
    assert_eq!(by_len.values().sum::<usize>(), words.len());
    let long: Vec<String> = rt
        .par(&words)
        .filter(|w| w.len() == 6)
        .map(|w| w.to_uppercase())
        .collect()
        .unwrap();
    assert_eq!(long.len(), 40_000);
    assert!(long
        .windows(2)
        .all(|p| p[0] < p[1] || p[0].len() != p[1].len()));
    let total: usize = rt.par(&long).map(|w| w.len()).sum().unwrap();
    assert_eq!(total, 6 * 40_000);
    let s = rt.stats();
    assert!(
        s.context_committed > 0,
        "partials were made in context heaps: {s:?}"
    );
}

/// `frostheap::global_runtime()`, configured from `FROSTHEAP_WORKERS` (a
/// bad value stops the process with one line, exit status 2).
fn global_runtime() {
    let rt = frostheap::global_runtime();
    assert!(std::ptr::eq(rt, frostheap::global_runtime()), "built once");
    println!("global runtime workers={}", rt.workers());
    assert_eq!(rt.map(0..1000u64, |x| x + 1).unwrap().len(), 1000);
    let main = frostheap::main_heap().unwrap();
    assert!(
        rt.guarded().contains(&main),
        "the global runtime guards the main heap"
    );
}
