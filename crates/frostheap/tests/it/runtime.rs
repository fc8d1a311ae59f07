//! The runtime (issue 4): `map` / `for_each` / `scope` / `join` against
//! their sequential meaning, panics, violations, memory-aware batching and
//! context heaps.
//!
//! This binary does not install `frostheap::Global`, so the tests here use
//! the explicit mode: guarded heaps are handed to the runtime with
//! `guard(&heap)`, and tasks allocate in their context heap through
//! `ctx.arena()`. The global mode (main heap frozen, every task allocation
//! in a context heap, deferred frees, `println!` inside tasks) is checked
//! by the fixture `runtime_global`, run as a child process per scenario.

use std::alloc::Layout;
use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use allocator_api2::vec::Vec as AVec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use frostheap::{Error, Heap, Runtime, Shared};

use crate::check::{describe, run_fixture, MIB};

const WORKERS: usize = 2;

fn runtime(budget: Option<usize>) -> Runtime {
    let mut b = Runtime::builder().workers(WORKERS);
    if let Some(bytes) = budget {
        b = b.memory_budget(bytes);
    }
    b.build().expect("a 2-worker runtime starts")
}

/// The function every map test applies: a few dozen integer operations.
fn mix(x: u64) -> u64 {
    let mut h = x ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..4 {
        h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    h
}

// ---------------------------------------------------------------- map = sequential map

/// One runtime per budget, shared by every proptest case (building a
/// runtime spawns threads).
struct Runtimes {
    none: Runtime,
    small: Runtime,
    large: Runtime,
}

impl Runtimes {
    fn pick(&self, which: u8) -> &Runtime {
        match which % 3 {
            0 => &self.none,
            1 => &self.small,
            _ => &self.large,
        }
    }
}

test!(map_equals_the_sequential_map_for_vecs_slices_and_streams);
fn map_equals_the_sequential_map_for_vecs_slices_and_streams() {
    let rts = Runtimes {
        none: runtime(None),
        small: runtime(Some(256)),
        large: runtime(Some(64 << 10)),
    };
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(any::<u64>(), 0..3000),
        any::<u8>(),
    );
    runner
        .run(&strategy, |(input, which)| {
            let rt = rts.pick(which);
            let expected: Vec<u64> = input.iter().map(|&x| mix(x)).collect();

            // A Vec: items moved into tasks.
            let got = rt.map(input.clone(), mix).expect("map over a Vec");
            prop_assert_eq!(&got, &expected);

            // A slice by reference.
            let got = rt.map(&input, |x: &u64| mix(*x)).expect("map over &[u64]");
            prop_assert_eq!(&got, &expected);

            // The same slice, indexed directly by the workers.
            let got = rt.map_slice(&input, |x| mix(*x)).expect("map_slice");
            prop_assert_eq!(&got, &expected);
            let got = rt
                .map_slice_with(&input, |ctx, x| {
                    (ctx.item_index().expect("map items have an index"), mix(*x))
                })
                .expect("map_slice_with");
            prop_assert!(got.iter().enumerate().all(|(i, &(k, _))| i == k));
            prop_assert!(got.iter().map(|&(_, v)| v).eq(expected.iter().copied()));

            // A streaming iterator (no length known up front).
            let mut i = 0;
            let stream = std::iter::from_fn(|| {
                let x = input.get(i).copied();
                i += 1;
                x
            });
            let got = rt.map_iter(stream, mix).expect("map_iter over iter::from_fn");
            prop_assert_eq!(&got, &expected);

            // A mapped range, each task allocating `x % 200` bytes in its
            // arena so batches are sized from real measurements.
            let n = input.len() as u64;
            let got: Vec<u64> = rt
                .par_bridge((0..n).map(|k| input[k as usize]))
                .map_with_context(|ctx, x| {
                    let mut v = AVec::with_capacity_in((x % 200) as usize, ctx.arena());
                    v.extend((0..x % 200).map(|b| b as u8));
                    mix(x) ^ v.iter().map(|&b| b as u64).sum::<u64>()
                })
                .collect()
                .expect("map_with_context over a mapped range");
            let expected_arena: Vec<u64> = input
                .iter()
                .map(|&x| mix(x) ^ (0..x % 200).map(|b| (b as u8) as u64).sum::<u64>())
                .collect();
            prop_assert_eq!(&got, &expected_arena);

            // for_each visits every item exactly once.
            let visits = Shared::new(
                (0..input.len())
                    .map(|_| AtomicUsize::new(0))
                    .collect::<Vec<_>>(),
            );
            rt.for_each(0..input.len(), |i| {
                visits[i].fetch_add(1, Ordering::Relaxed);
            })
            .expect("for_each");
            prop_assert!(visits.iter().all(|v| v.load(Ordering::Relaxed) == 1));
            Ok(())
        })
        .unwrap();
    // The budgeted runtimes really did batch.
    let small = rts.small.stats();
    assert!(
        small.batch_sizes.iter().any(|&b| b < 3000 && b > 0),
        "budget 256 never batched: {small:?}"
    );
}

// ---------------------------------------------------------------- empty input, scope, join

test!(stats_violations_counts_one_per_violating_store_reported_under_every_policy);
/// `RuntimeStats::violations` is one per violating store a report was made
/// for, under rollback, cancel and audit alike. One task stores twice into
/// a guarded heap: rollback lists (and counts) both stores, cancel parks
/// the task at the first (one), audit logs both (it counted none while
/// `audit_log()` grew).
fn stats_violations_counts_one_per_violating_store_reported_under_every_policy() {
    use frostheap::OnViolation;
    for policy in [
        OnViolation::Rollback,
        OnViolation::Cancel,
        OnViolation::Audit,
    ] {
        let heap = Heap::builder()
            .name("counted")
            .max(64 * MIB)
            .build()
            .unwrap();
        let mut data = AVec::new_in(heap.clone());
        // Two words a page apart: two stores, each its own fault.
        data.extend((0..1024).map(AtomicU64::new));
        let rt = Runtime::builder()
            .workers(2)
            .guard(&heap)
            .guard_main_heap(false)
            .on_violation(policy)
            .build()
            .unwrap();
        let r = rt.map(0..16usize, |i| {
            if i == 5 {
                data[3].store(11, Ordering::Relaxed);
                data[3 + 512].store(12, Ordering::Relaxed);
            }
            i
        });
        let s = rt.stats();
        let (reported, expected) = match (policy, r) {
            (OnViolation::Rollback, Err(Error::Violation(v))) => (1 + v.other_stores().len(), 2),
            (OnViolation::Cancel, Err(Error::Violation(_))) => (s.parked_workers as usize, 1),
            (OnViolation::Audit, Ok(_)) => (rt.audit_log().len(), 2),
            (_, other) => panic!("{policy:?}: unexpected {other:?}"),
        };
        assert_eq!(reported, expected, "{policy:?}: reports {s:?}");
        assert_eq!(
            s.violations, expected as u64,
            "{policy:?}: RuntimeStats::violations {s:?}"
        );
        // A phase without a violation adds none.
        rt.map(0..16usize, |i| i).unwrap();
        assert_eq!(rt.stats().violations, expected as u64, "{policy:?}");
    }
}

test!(empty_input_returns_empty_without_a_phase);
fn empty_input_returns_empty_without_a_phase() {
    for budget in [None, Some(1024)] {
        let rt = runtime(budget);
        let before = rt.stats().phases;
        let out: Vec<u64> = rt.map(Vec::<u64>::new(), mix).unwrap();
        assert!(out.is_empty());
        let out: Vec<u64> = rt.map(&[] as &[u64], |x| *x).unwrap();
        assert!(out.is_empty());
        rt.par_bridge(std::iter::empty::<u8>())
            .for_each(|_| panic!("no item"))
            .unwrap();
        rt.for_each(0..0u32, |_| panic!("no item")).unwrap();
        assert_eq!(rt.par(&[] as &[u64]).map(|x| *x).sum::<u64>().unwrap(), 0);
        assert_eq!(
            rt.stats().phases,
            before,
            "an empty map ran a phase (budget {budget:?})"
        );
    }
}

test!(scope_runs_heterogeneous_tasks_and_join_returns_both);
fn scope_runs_heterogeneous_tasks_and_join_returns_both() {
    let rt = runtime(None);
    let sum = Shared::new(AtomicU64::new(0));
    let words = Shared::new(Mutex::new(Vec::<String>::new()));
    let data: Vec<u64> = (1..=100).collect();
    rt.scope(|s| {
        s.spawn(|| {
            sum.fetch_add(data.iter().sum::<u64>(), Ordering::Relaxed);
        });
        s.spawn(|| words.lock().unwrap().push("second".to_string()));
        for k in 0..10u64 {
            let sum = &sum;
            s.spawn(move || {
                sum.fetch_add(k, Ordering::Relaxed);
            });
        }
    })
    .unwrap();
    assert_eq!(sum.load(Ordering::Relaxed), 5050 + 45);
    assert_eq!(*words.lock().unwrap(), vec!["second".to_string()]);

    let (a, b) = rt
        .join(|| data.iter().map(|&x| mix(x)).max(), || "right".len())
        .unwrap();
    assert_eq!(a, data.iter().map(|&x| mix(x)).max());
    assert_eq!(b, 5);

    // A panicking scope task is an error and the runtime goes on.
    let r = rt.scope(|s| {
        s.spawn(|| panic!("scope task fails"));
    });
    match r {
        Err(Error::TaskPanicked { message, .. }) => assert_eq!(message, "scope task fails"),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    assert_eq!(rt.map(0..3u64, |x| x + 1).unwrap(), vec![1, 2, 3]);
}

// ---------------------------------------------------------------- panics

static ITEMS_MADE: AtomicUsize = AtomicUsize::new(0);
static ITEMS_DROPPED: AtomicUsize = AtomicUsize::new(0);
static RESULTS_MADE: AtomicUsize = AtomicUsize::new(0);
static RESULTS_DROPPED: AtomicUsize = AtomicUsize::new(0);
/// The panic tests share the counters above: one at a time.
static PANIC_TESTS: Mutex<()> = Mutex::new(());

struct Item(usize);
impl Item {
    fn new(i: usize) -> Item {
        ITEMS_MADE.fetch_add(1, Ordering::Relaxed);
        Item(i)
    }
}
impl Drop for Item {
    fn drop(&mut self) {
        ITEMS_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

struct Out(#[allow(dead_code)] usize);
impl Out {
    fn new(i: usize) -> Out {
        RESULTS_MADE.fetch_add(1, Ordering::Relaxed);
        Out(i)
    }
}
impl Drop for Out {
    fn drop(&mut self) {
        RESULTS_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

fn reset_counters() {
    for c in [&ITEMS_MADE, &ITEMS_DROPPED, &RESULTS_MADE, &RESULTS_DROPPED] {
        c.store(0, Ordering::Relaxed);
    }
}

/// `r` is the error of the task of item `bad`, which panicked with
/// `message`.
fn assert_panicked<T>(r: Result<Vec<T>, Error>, bad: usize, message: &str) {
    match r {
        Err(Error::TaskPanicked {
            item_index,
            message: m,
        }) => {
            assert_eq!(item_index, Some(bad));
            assert_eq!(m, message);
        }
        Err(e) => panic!("expected TaskPanicked, got {e}"),
        Ok(v) => panic!("expected TaskPanicked, got {} results", v.len()),
    }
}

/// Every result made before an error was dropped: none leaked.
fn assert_results_dropped() {
    assert_eq!(
        RESULTS_DROPPED.load(Ordering::Relaxed),
        RESULTS_MADE.load(Ordering::Relaxed)
    );
}

fn check_panic_of(rt: &Runtime, n: usize, bad: usize, streaming: bool) {
    reset_counters();
    let ran = Shared::new(AtomicUsize::new(0));
    let task = |it: Item| {
        ran.fetch_add(1, Ordering::Relaxed);
        if it.0 == bad {
            panic!("item {} is bad", it.0);
        }
        Out::new(it.0)
    };
    let r = if streaming {
        rt.map_iter((0..n).map(Item::new), task)
    } else {
        let items: Vec<Item> = (0..n).map(Item::new).collect();
        rt.map(items, task)
    };
    assert_panicked(r, bad, &format!("item {bad} is bad"));
    let made = ITEMS_MADE.load(Ordering::Relaxed);
    assert!(made <= n && made > bad, "made {made} of {n} items");
    // Every item made was dropped exactly once: by its task, or by the
    // runtime when it was skipped, or with the rest of the iterator.
    assert_eq!(ITEMS_DROPPED.load(Ordering::Relaxed), made);
    assert!(ran.load(Ordering::Relaxed) <= made);
    assert_results_dropped();
    // The runtime is usable afterwards.
    let again = rt.map(0..1000u64, mix).unwrap();
    assert_eq!(again, (0..1000u64).map(mix).collect::<Vec<_>>());
}

test!(a_panicking_task_is_reported_with_its_index_and_the_rest_is_dropped);
fn a_panicking_task_is_reported_with_its_index_and_the_rest_is_dropped() {
    let _one = PANIC_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime(None);
    check_panic_of(&rt, 2000, 777, false);
    check_panic_of(&rt, 2000, 0, false);
    check_panic_of(&rt, 2000, 1999, true);
    check_panic_of(&rt, 1, 0, false);
    // With a budget the input is pulled in batches: later batches are
    // never pulled out of the iterator once one fails.
    let rt = runtime(Some(100));
    check_panic_of(&rt, 2000, 333, true);
    check_panic_of(&rt, 2000, 1, false);
    assert_eq!(rt.stats().violations, 0);
}

test!(concurrent_panics_each_consume_their_own_item_once);
/// Several tasks panic, on both workers at once: the error names one of
/// them, and every item is still dropped exactly once (each panicking
/// task consumed its own item) and every result made is dropped.
fn concurrent_panics_each_consume_their_own_item_once() {
    let _one = PANIC_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for budget in [None, Some(64)] {
        let rt = runtime(budget);
        for round in 0..20 {
            reset_counters();
            let n = 3000;
            let items: Vec<Item> = (0..n).map(Item::new).collect();
            let r = rt.map(items, |it: Item| {
                if it.0 % 97 == round % 7 {
                    panic!("item {} is bad", it.0);
                }
                Out::new(it.0)
            });
            match r {
                Err(Error::TaskPanicked {
                    item_index: Some(i),
                    ..
                }) => assert_eq!(i % 97, round % 7),
                other => panic!("expected TaskPanicked, got {:?}", other.map(|v| v.len())),
            }
            assert_eq!(ITEMS_MADE.load(Ordering::Relaxed), n);
            assert_eq!(ITEMS_DROPPED.load(Ordering::Relaxed), n, "round {round}");
            assert_results_dropped();
        }
    }
}

test!(a_panic_in_map_slice_drops_the_results_made);
/// `map_slice`: a panic is reported with its index, the results made
/// before it are dropped, and the borrowed items are untouched.
fn a_panic_in_map_slice_drops_the_results_made() {
    let _one = PANIC_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for budget in [None, Some(64)] {
        let rt = runtime(budget);
        for bad in [0usize, 1, 777, 4999] {
            reset_counters();
            let input: Vec<usize> = (0..5000).collect();
            let r = rt.map_slice(&input, |&x| {
                if x == bad {
                    panic!("element {x} is bad");
                }
                Out::new(x)
            });
            assert_panicked(r, bad, &format!("element {bad} is bad"));
            assert_results_dropped();
            assert_eq!(input, (0..5000).collect::<Vec<_>>());
            assert_eq!(rt.map_slice(&input, |&x| x + 1).unwrap()[4999], 5000);
        }
    }
}

test!(a_panic_with_a_non_string_payload_is_reported);
fn a_panic_with_a_non_string_payload_is_reported() {
    let rt = runtime(None);
    let r = rt.map(0..10usize, |i| {
        if i == 4 {
            std::panic::panic_any(42u32);
        }
        i
    });
    match r {
        Err(Error::TaskPanicked {
            item_index: Some(4),
            message,
        }) => assert!(message.contains("not a string"), "{message}"),
        other => panic!("expected TaskPanicked at 4, got {other:?}"),
    }
}

// ---------------------------------------------------------------- violations (explicit heap)

/// Runs `f` with a deadline (a guard against hangs, not a timing test).
fn spin_until(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > Duration::from_secs(20) {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

test!(a_tokio_runtime_built_unguarded_runs_through_phases);
/// examples/tokio_beside_phases.rs: tokio built inside `unguarded`, a
/// timer task and a feeder thread waking its I/O driver, 1,000 phases from
/// `block_in_place`; tokio loses no worker and still answers. Built on the
/// main thread instead (the example's `--plain`), its `epoll_wait` into the
/// frozen main heap failed with `EFAULT` under `mprotect`, a worker
/// panicked and the process hung.
fn a_tokio_runtime_built_unguarded_runs_through_phases() {
    let out = crate::check::run_example("tokio_beside_phases", &[], &[]);
    crate::check::assert_succeeded_saying(&out, "tokio_beside_phases: ok");
}

test!(a_heap_given_to_guard_twice_is_guarded_once);
/// `guard(&h).guard(&h)` lists `h` once (it used to be listed, and frozen
/// and thawed, twice).
fn a_heap_given_to_guard_twice_is_guarded_once() {
    let heap = Heap::builder().name("rt-twice").max(MIB).build().unwrap();
    let rt = Runtime::builder()
        .workers(1)
        .guard(&heap)
        .guard(&heap.clone())
        .guard_main_heap(false)
        .build()
        .unwrap();
    assert_eq!(rt.guarded().len(), 1, "{:?}", rt.guarded());
    assert_eq!(rt.map(0..4u32, |i| i * 2).unwrap(), vec![0, 2, 4, 6]);
}

test!(a_write_to_a_guarded_heap_is_a_violation_and_the_worker_is_replaced);
/// Under `cancel` (the rollback policy's equivalent is
/// `recovery::a_write_to_a_guarded_heap_is_undone_and_no_worker_is_parked`).
fn a_write_to_a_guarded_heap_is_a_violation_and_the_worker_is_replaced() {
    let heap = Heap::builder()
        .name("rt-guarded")
        .max(64 * MIB)
        .build()
        .unwrap();
    let mut data = AVec::new_in(heap.clone());
    data.extend((0..1000).map(AtomicU64::new));
    let rt = Runtime::builder()
        .workers(WORKERS)
        .guard(&heap)
        .on_violation(frostheap::OnViolation::Cancel)
        .build()
        .unwrap();
    assert!(rt.guarded().contains(&heap));

    // Reading the guarded heap is fine.
    let sums = rt
        .map(0..100usize, |i| data[i].load(Ordering::Relaxed))
        .unwrap();
    assert_eq!(sums, (0..100u64).collect::<Vec<_>>());

    let r = rt.map(0..64usize, |i| {
        if i == 37 {
            data[3].fetch_add(1, Ordering::Relaxed);
        }
        i
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert_eq!(v.heap_name(), "rt-guarded");
    assert_eq!(v.item_index(), Some(37));
    assert_eq!(v.address(), &data[3] as *const AtomicU64 as usize);
    assert_eq!(
        data[3].load(Ordering::Relaxed),
        3,
        "the store must not happen"
    );
    let s = rt.stats();
    assert_eq!(s.violations, 1);
    assert_eq!(s.parked_workers, 1);

    // The runtime is usable, and the next phase runs on `workers()`
    // distinct threads (the parked one replaced).
    let out = rt.map(0..1000u64, mix).unwrap();
    assert_eq!(out, (0..1000u64).map(mix).collect::<Vec<_>>());
    let arrived = Shared::new(AtomicUsize::new(0));
    let ids = rt
        .map_with(0..WORKERS, |ctx, _| {
            arrived.fetch_add(1, Ordering::SeqCst);
            // Hold the item until every worker holds one (or give up).
            spin_until(|| arrived.load(Ordering::SeqCst) >= WORKERS);
            (
                ctx.worker(),
                std::thread::current().name().map(str::to_string),
            )
        })
        .unwrap();
    let distinct: HashSet<usize> = ids.iter().map(|(w, _)| *w).collect();
    assert_eq!(distinct.len(), rt.workers(), "workers seen: {ids:?}");
    assert!(
        ids.iter().all(|(_, n)| n
            .as_deref()
            .is_some_and(|n| n.starts_with("frostheap-worker-"))),
        "{ids:?}"
    );
    assert!(
        !distinct.contains(&v_worker(&v)),
        "the parked worker ran again: {ids:?}, violation on {:?}",
        v.thread_name()
    );
    // The main context may write the heap again after the thaw.
    data[3].fetch_add(1, Ordering::Relaxed);
    data.push(AtomicU64::new(7));
    assert_eq!(data[3].load(Ordering::Relaxed), 4);
}

/// The worker index in a violation's thread name ("frostheap-worker-N").
fn v_worker(v: &frostheap::Violation) -> usize {
    v.thread_name()
        .and_then(|n| n.strip_prefix("frostheap-worker-"))
        .and_then(|n| n.parse().ok())
        .expect("a violation names its worker thread")
}

test!(frees_of_guarded_memory_in_tasks_are_deferred_to_the_thaw);
/// Items moved into tasks that own guarded memory: their frees are
/// deferred to the thaw (a free into a frozen heap would be a write), and
/// the heap's `in_use` returns to its starting value.
fn frees_of_guarded_memory_in_tasks_are_deferred_to_the_thaw() {
    let heap = Heap::builder()
        .name("rt-deferred")
        .max(256 * MIB)
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .workers(WORKERS)
        .guard(&heap)
        .memory_budget(8 * MIB)
        .build()
        .unwrap();
    let start = heap.stats().in_use;
    let mut items = Vec::new();
    for i in 0..2000usize {
        // Small blocks and, every 100th item, a large one.
        let len = if i % 100 == 0 {
            300 << 10
        } else {
            24 + i % 200
        };
        let mut v = AVec::with_capacity_in(len, heap.clone());
        v.resize(len, (i % 251) as u8);
        items.push(v);
    }
    assert!(heap.stats().in_use > start + 2000 * 24);
    let lens = rt
        .map(items, |v| {
            assert!(v.iter().all(|&b| b == v[0]));
            v.len()
        })
        .unwrap();
    assert_eq!(lens.len(), 2000);
    assert_eq!(rt.stats().violations, 0);
    assert_eq!(heap.stats().in_use, start, "{:?}", heap.stats());
}

// ---------------------------------------------------------------- budgets and arenas

/// Bytes a task consumes in its arena when it asks for `k` bytes.
const K: usize = 64 << 10;

test!(batches_are_sized_from_the_measured_bytes_per_item);
fn batches_are_sized_from_the_measured_bytes_per_item() {
    let budget = 16 * K;
    let rt = runtime(Some(budget));
    let n = 200;
    let out = rt
        .map_with(0..n, |ctx, i| {
            let mut v = AVec::<u8, _>::with_capacity_in(K, ctx.arena());
            v.resize(K, i as u8);
            v.iter().map(|&b| b as usize).sum::<usize>()
        })
        .unwrap();
    assert_eq!(
        out,
        (0..n).map(|i| (i as u8) as usize * K).collect::<Vec<_>>()
    );
    let s = rt.stats();
    // Exact bump counts: at least K, at most K plus alignment.
    assert!(s.bytes_per_item >= K && s.bytes_per_item <= K + 64, "{s:?}");
    assert!(s.mean_bytes_per_item >= K && s.mean_bytes_per_item <= K + 64);
    // First batch: one item per worker; then budget / bytes_per_item,
    // reached by doubling (2, 4, 8, then 15).
    assert_eq!(s.batch_sizes[0], WORKERS, "{s:?}");
    let per_batch = budget / s.bytes_per_item;
    assert!((15..=16).contains(&per_batch));
    assert_eq!(s.batch_sizes[1..3], [2 * WORKERS, 4 * WORKERS], "{s:?}");
    let (last, middle) = s.batch_sizes[3..].split_last().unwrap();
    assert!(middle.iter().all(|&b| b == per_batch), "{s:?}");
    assert!(*last <= per_batch && *last >= 1);
    assert_eq!(s.batch_sizes.iter().sum::<usize>(), n);
    // The items of one phase never held more than the budget (the first
    // batch holds one item per worker).
    assert!(
        s.peak_phase_bytes <= budget.max(WORKERS * s.bytes_per_item),
        "{s:?}"
    );
    assert!(s.peak_phase_bytes >= per_batch * K);
    assert_eq!(s.oversized_items, 0);
    assert_eq!(s.items, n as u64);
}

test!(an_item_larger_than_the_budget_runs_alone);
fn an_item_larger_than_the_budget_runs_alone() {
    let budget = 256 << 10;
    let rt = runtime(Some(budget));
    // One item, larger than the budget.
    let big = 3 * MIB;
    let out = rt
        .map_with(vec![big], |ctx, n| {
            let mut v = AVec::<u8, _>::with_capacity_in(n, ctx.arena());
            v.resize(n, 1);
            v.len()
        })
        .unwrap();
    assert_eq!(out, vec![big]);
    let s = rt.stats();
    assert_eq!(s.oversized_items, 1, "{s:?}");
    assert_eq!(s.batch_sizes, vec![1], "{s:?}");
    assert!(s.bytes_per_item >= big, "{s:?}");

    // Many such items: after the first batch (one per worker, sizes not
    // yet known) every batch holds one item.
    let rt = runtime(Some(budget));
    let out = rt
        .map_with(vec![big; 6], |ctx, n| {
            let v = AVec::<u8, _>::with_capacity_in(n, ctx.arena());
            v.capacity()
        })
        .unwrap();
    assert_eq!(out, vec![big; 6]);
    let s = rt.stats();
    assert_eq!(s.oversized_items, 6, "{s:?}");
    assert_eq!(s.batch_sizes, vec![WORKERS, 1, 1, 1, 1], "{s:?}");

    // A later map on the same runtime sizes its batches from its own
    // items, not from the large ones before.
    let out = rt
        .map_with(0..100usize, |ctx, i| {
            let v = AVec::<u8, _>::with_capacity_in(1024, ctx.arena());
            v.capacity() + i
        })
        .unwrap();
    assert_eq!(out[99], 1024 + 99);
    let s = rt.stats();
    let tail = &s.batch_sizes[5..];
    assert_eq!(tail[0], WORKERS, "{s:?}");
    // Cheap items: each batch twice the one before, up to the end.
    assert_eq!(tail, [2, 4, 8, 16, 32, 38], "batches of the small map: {tail:?}");
}

/// Items `0..400`: the first 300 allocate 16 bytes in the context heap,
/// the last 100 allocate `MIB` each, kept in the result.
fn cheap_then_dear(ctx: &frostheap::TaskContext<'_>, i: usize) -> usize {
    let len = if i < 300 { 16 } else { MIB };
    let mut v = AVec::<u8, _>::with_capacity_in(len, ctx.arena());
    v.resize(len, i as u8);
    v.iter().map(|&b| b as usize).sum::<usize>() / len + i
}

test!(a_rise_in_item_cost_overshoots_the_budget_by_a_chunk_per_worker_at_most);
/// A user's trial: with `memory_budget(8 MiB)`, 300 items of 16 bytes then
/// 100 of 1 MiB ran as batches `[2, 398]`, the second sized from the first
/// two items, and its phase took 100 MiB, 12.5 times the budget. Batches
/// now grow at most twofold, and a batch claims no more chunks once its
/// items reached the budget, so the dear items run at most a chunk per
/// worker past it; the next batches are sized from them. The same through
/// the bridge, whose batches keep the items a stopped batch left, and
/// through a reduction, whose partials cover the prefix a batch ran.
fn a_rise_in_item_cost_overshoots_the_budget_by_a_chunk_per_worker_at_most() {
    let budget = 8 * MIB;
    let want: Vec<usize> = (0..400usize).map(|i| (i as u8) as usize + i).collect();
    let check = |rt: &Runtime, what: &str| {
        let s = rt.stats();
        assert_eq!(s.items, 400, "{what}: {s:?}");
        assert_eq!(s.batch_sizes.iter().sum::<usize>(), 400, "{what}: {s:?}");
        for pair in s.batch_sizes.windows(2) {
            assert!(pair[1] <= 2 * pair[0], "{what}: batches grew past twofold: {s:?}");
        }
        // The batch that met the dear items: its chunks are at most 1/32
        // of a worker's share of a batch of at most 256 items (4 items),
        // one per worker past the budget, each item just over 1 MiB.
        assert!(
            s.peak_phase_bytes <= budget + WORKERS * 4 * (MIB + 4096),
            "{what}: a phase took {} bytes under a budget of {budget}: {s:?}",
            s.peak_phase_bytes
        );
    };
    let rt = runtime(Some(budget));
    assert_eq!(rt.map_with(0..400usize, cheap_then_dear).unwrap(), want);
    check(&rt, "map_with");

    let rt = runtime(Some(budget));
    let got: Vec<usize> = rt
        .par_bridge(0..400usize)
        .map_with_context(cheap_then_dear)
        .collect()
        .unwrap();
    assert_eq!(got, want);
    check(&rt, "par_bridge");

    let rt = runtime(Some(budget));
    let sum: usize = rt
        .par(0..400usize)
        .map_with_context(cheap_then_dear)
        .sum()
        .unwrap();
    assert_eq!(sum, want.iter().sum::<usize>());
    check(&rt, "sum");

    let rt = runtime(Some(budget));
    let odd: Vec<usize> = rt
        .par(0..400usize)
        .map_with_context(cheap_then_dear)
        .filter(|x| x % 2 == 1)
        .collect()
        .unwrap();
    assert_eq!(odd, want.iter().copied().filter(|x| x % 2 == 1).collect::<Vec<_>>());
    check(&rt, "filter + collect");
}

test!(context_chunks_are_reused_and_escaping_blocks_stay_valid);
/// Results allocated in a context heap escape their task: they stay valid
/// after the map and after many later phases (their chunk is kept), while
/// chunks whose blocks were all freed are reused, so the context heaps'
/// committed memory stays bounded.
fn context_chunks_are_reused_and_escaping_blocks_stay_valid() {
    let rt = runtime(None);
    // Escaping blocks: raw arena blocks handed back as addresses.
    let kept = rt
        .map_with(0..64usize, |ctx, i| {
            let layout = Layout::from_size_align(256, 8).unwrap();
            let block = allocator_api2::alloc::Allocator::allocate(&ctx.arena(), layout)
                .expect("arena block");
            let p = block.as_ptr() as *mut u8;
            // SAFETY: a fresh 256-byte block of this arena.
            unsafe { core::ptr::write_bytes(p, i as u8, 256) };
            p as usize
        })
        .unwrap();
    for &p in &kept {
        assert!(frostheap::__private::context::owns(p));
    }
    let after_first = rt.stats().context_committed;
    assert!(after_first > 0);
    // Many phases, each allocating and freeing far more than a chunk.
    for round in 0..200u64 {
        let out = rt
            .map_with(0..8u64, |ctx, x| {
                let mut v = AVec::<u64, _>::with_capacity_in(16 << 10, ctx.arena());
                v.extend((0..16 << 10).map(|k| k ^ x));
                v.iter().fold(0u64, |a, &b| a.wrapping_add(b))
            })
            .unwrap();
        assert_eq!(out.len(), 8, "round {round}");
    }
    let s = rt.stats();
    // 200 × 8 × 128 KiB = 200 MiB allocated in total; committed stays at a
    // few 4 MiB chunks per worker.
    assert!(
        s.context_committed
            <= after_first + WORKERS * 3 * frostheap::__private::context::CHUNK_SIZE,
        "context heaps grew: {} -> {} ({s:?})",
        after_first,
        s.context_committed
    );
    // The escaped blocks are intact.
    for (i, &p) in kept.iter().enumerate() {
        // SAFETY: each block is live (never freed) and 256 bytes long.
        let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, 256) };
        assert!(bytes.iter().all(|&b| b == i as u8), "block {i} changed");
    }
    for &p in &kept {
        // SAFETY: live context blocks, freed once.
        unsafe { frostheap::__private::context::free(p as *mut u8) };
    }
}

test!(a_chunk_emptied_by_its_owner_starts_over);
/// A task that frees everything it allocated leaves its worker's current
/// chunk empty, and the chunk starts over: the next task's first block is
/// at the same address (cache-hot memory), however many tasks run. A block
/// that escapes keeps the chunk from starting over, so it stays intact.
fn a_chunk_emptied_by_its_owner_starts_over() {
    let rt = runtime(None);
    let layout = Layout::from_size_align(1000, 8).unwrap();
    let first_blocks = rt
        .map_with(0..5000u64, |ctx, x| {
            let mut v = AVec::<u64, _>::with_capacity_in(100, ctx.arena());
            v.extend((0..100).map(|k| k * x));
            let b = allocator_api2::alloc::Allocator::allocate(&ctx.arena(), layout).unwrap();
            let addr = v.as_ptr() as usize;
            // SAFETY: b is a live block of this arena, freed once.
            unsafe { allocator_api2::alloc::Allocator::deallocate(&ctx.arena(), b.cast(), layout) };
            assert_eq!(v.iter().sum::<u64>(), 4950 * x);
            addr
        })
        .unwrap();
    let distinct: HashSet<usize> = first_blocks.iter().copied().collect();
    assert!(
        distinct.len() <= 2 * WORKERS,
        "{} distinct first-block addresses over 5000 tasks",
        distinct.len()
    );
    // An escaping block: later tasks allocate past it, never over it.
    let kept = rt
        .map_with(0..1usize, |ctx, _| {
            let mut v = AVec::<u8, _>::with_capacity_in(64, ctx.arena());
            v.extend(std::iter::repeat_n(0xAB, 64));
            let p = v.as_ptr() as usize;
            core::mem::forget(v);
            p
        })
        .unwrap()[0];
    rt.map_with(0..5000u64, |ctx, x| {
        let mut v = AVec::<u8, _>::with_capacity_in(64, ctx.arena());
        v.extend(std::iter::repeat_n(x as u8, 64));
        v.len()
    })
    .unwrap();
    // SAFETY: the escaped block is live (forgotten, never freed), 64 bytes.
    let bytes = unsafe { core::slice::from_raw_parts(kept as *const u8, 64) };
    assert!(
        bytes.iter().all(|&b| b == 0xAB),
        "the escaped block was overwritten"
    );
    // SAFETY: a live context block, freed once.
    unsafe { frostheap::__private::context::free(kept as *mut u8) };
}

test!(ten_thousand_phases_do_not_grow_committed_memory);
/// 10,000 phases in a row: neither the guarded heap nor the context heaps
/// commit more memory than after a warm-up.
fn ten_thousand_phases_do_not_grow_committed_memory() {
    let heap = Heap::builder()
        .name("rt-phases")
        .max(64 * MIB)
        .build()
        .unwrap();
    let mut data = AVec::new_in(heap.clone());
    data.extend(0..10_000u64);
    let rt = Runtime::builder()
        .workers(WORKERS)
        .guard(&heap)
        .build()
        .unwrap();
    let phase = |round: u64| {
        let out = rt
            .map_with(0..4u64, |ctx, x| {
                let mut v = AVec::<u64, _>::with_capacity_in(512, ctx.arena());
                v.extend((0..512).map(|k| data[k as usize] ^ x));
                v.iter().sum::<u64>()
            })
            .unwrap();
        assert_eq!(out.len(), 4, "round {round}");
        assert_eq!(out[0], (0..512).sum::<u64>());
    };
    for round in 0..1000 {
        phase(round);
    }
    let heap_before = heap.stats();
    let ctx_before = rt.stats().context_committed;
    for round in 0..10_000 {
        phase(round);
    }
    let heap_after = heap.stats();
    let s = rt.stats();
    assert!(s.phases >= 11_000);
    assert_eq!(heap_after.committed, heap_before.committed);
    assert_eq!(heap_after.in_use, heap_before.in_use);
    assert!(
        s.context_committed <= ctx_before + WORKERS * frostheap::__private::context::CHUNK_SIZE,
        "context heaps grew over 10,000 phases: {ctx_before} -> {} bytes",
        s.context_committed
    );
}

// ---------------------------------------------------------------- skipped workers

test!(a_worker_that_has_not_started_is_skipped_and_runs_a_later_phase);
/// A worker held back from starting phases (the test hook stands in for
/// one the scheduler has not run) is skipped once the other worker has
/// claimed every chunk: 2,000 phases end without it, each sum exact, and
/// it runs none of their tasks, each counted as a skipped start; released,
/// it runs a task of the next phase (two tasks that each wait for the
/// other). On main, a phase waited for every worker: the first would have
/// waited for the watchdog's release, 30 s on.
fn a_worker_that_has_not_started_is_skipped_and_runs_a_later_phase() {
    use frostheap::__private::runtime::hold_worker_start;
    use std::sync::atomic::AtomicBool;
    const PHASES: u64 = 2000;
    let rt = runtime(None);
    let per_worker = [AtomicU64::new(0), AtomicU64::new(0)];
    let (done, timed_out) = (AtomicBool::new(false), AtomicBool::new(false));
    let skipped_before = rt.stats().skipped_workers;
    hold_worker_start(&rt, Some(1));
    std::thread::scope(|s| {
        // A guard against a hang, not a timing test.
        s.spawn(|| {
            let start = Instant::now();
            while !done.load(Ordering::Acquire) {
                if start.elapsed() > Duration::from_secs(30) {
                    timed_out.store(true, Ordering::Release);
                    hold_worker_start(&rt, None);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        for round in 0..PHASES {
            let sum: u64 = rt
                .par(0..1000u64)
                .map_with_context(|t, x| {
                    per_worker[t.worker()].fetch_add(1, Ordering::Relaxed);
                    mix(x ^ round) >> 16
                })
                .sum()
                .unwrap();
            let expected: u64 = (0..1000u64).map(|x| mix(x ^ round) >> 16).sum();
            assert_eq!(sum, expected, "round {round}");
        }
        done.store(true, Ordering::Release);
    });
    assert!(
        !timed_out.load(Ordering::Acquire),
        "the phases waited for the held worker"
    );
    assert_eq!(per_worker[0].load(Ordering::Relaxed), PHASES * 1000);
    assert_eq!(per_worker[1].load(Ordering::Relaxed), 0, "the held worker ran tasks");
    assert_eq!(rt.stats().skipped_workers - skipped_before, PHASES);

    // Released, it starts the next phase: each of two tasks waits for the
    // other, and the first worker claims one chunk of the two.
    hold_worker_start(&rt, None);
    let arrived = AtomicUsize::new(0);
    let workers: Vec<usize> = rt
        .par(0..2u64)
        .map_with_context(|t, _| {
            arrived.fetch_add(1, Ordering::AcqRel);
            let start = Instant::now();
            while arrived.load(Ordering::Acquire) < 2 && start.elapsed() < Duration::from_secs(20) {
                std::hint::spin_loop();
            }
            t.worker()
        })
        .collect()
        .unwrap();
    let mut sorted = workers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [0, 1], "the two tasks ran on workers {workers:?}");
    assert_eq!(rt.stats().parked_workers, 0);
}

test!(thousands_of_small_calls_beside_cpu_hogs_are_exact_and_keep_the_thread_count);
/// The user's trial, oversubscribed: 3,000 small sums while two threads
/// spin on the two CPUs, each exact, no worker parked, as many threads
/// after as before (fixture scenario `oversubscribed`, in a child process
/// with a time limit). On main each such phase waited for a worker the
/// scheduler had not run (4 to 11 ms a phase beside two `yes`).
fn thousands_of_small_calls_beside_cpu_hogs_are_exact_and_keep_the_thread_count() {
    global_scenario("oversubscribed");
}

// ---------------------------------------------------------------- global mode (child processes)

fn global_scenario(name: &str) {
    global_scenario_with(name, &[]);
}

/// [`global_scenario`] with `env` set for the child.
fn global_scenario_with(name: &str, env: &[(&str, &str)]) {
    let out = run_fixture("runtime_global", &[name], env);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("runtime_global {name}: ok")),
        "{}",
        describe(&out)
    );
}

test!(global_context_memory_a_task_freed_is_not_charged_after_it);
fn global_context_memory_a_task_freed_is_not_charged_after_it() {
    global_scenario_with("context-charge", &[("FROSTHEAP_MAX", "64M")]);
}

test!(the_free_chunks_workers_keep_go_back_before_the_limit_refuses);
/// Under `FROSTHEAP_MAX=64M`, eight workers that each keep two free
/// context chunks (1 MiB) for their next tasks: main gets all the limit
/// leaves counting them free, and `trim` purges them (the fixture's
/// `kept-chunks`).
fn the_free_chunks_workers_keep_go_back_before_the_limit_refuses() {
    global_scenario_with("kept-chunks", &[("FROSTHEAP_MAX", "64M")]);
}

test!(purging_kept_chunks_beside_tasks_and_retiring_workers_loses_no_byte);
/// A thread trims in a loop beside 200 phases of tasks that fill and check
/// blocks of a chunk or more, through ten runtimes whose workers retire
/// their heaps as the purge may hold them, each runtime's last results
/// freed from main during the next one's phases (the fixture's
/// `kept-chunks-race`).
fn purging_kept_chunks_beside_tasks_and_retiring_workers_loses_no_byte() {
    global_scenario_with("kept-chunks-race", &[("FROSTHEAP_MAX", "16M")]);
}

test!(the_heaps_of_exited_workers_keep_no_free_chunk_while_their_results_live);
/// Regression: a worker that exited with its tasks' results alive in main
/// left a retired context heap that kept up to two free chunks resident
/// and charged until the last result was freed, and the limit's
/// reclaimer skipped it: under `FROSTHEAP_MAX=64M` a runtime of eight
/// workers dropped with 64 results of 200 KiB alive kept 4 MiB of the
/// limit (two chunks in each heap that held results), and freeing 56 of
/// the results kept 4 MiB more. Now a retired heap purges them, and the
/// chunks freeing results empties, and hands its slot back with the last
/// result (the fixture's `kept-chunks-retired`).
fn the_heaps_of_exited_workers_keep_no_free_chunk_while_their_results_live() {
    global_scenario_with("kept-chunks-retired", &[("FROSTHEAP_MAX", "64M")]);
}

test!(a_global_program_under_a_20m_limit_runs_hundreds_of_phases_with_context_arenas);
/// A user's trial under `FROSTHEAP_MAX=20M`: 300 rounds of `collect`,
/// `map_with_context` with arena vectors, `sort_unstable`, `join` and a
/// thread, with some 3 MB live. With 4 MiB context chunks the two workers'
/// chunks took 16 MiB of the limit and the program aborted in a context
/// heap (6 runs of 6 before); chunks are now a 64th of the limit or less
/// (256 KiB here).
fn a_global_program_under_a_20m_limit_runs_hundreds_of_phases_with_context_arenas() {
    let out = run_fixture("runtime_global", &["small-limit"], &[("FROSTHEAP_MAX", "20M")]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("runtime_global small-limit: ok"), "{}", describe(&out));
    assert!(stdout.contains(" refused=0"), "{}", describe(&out));
    assert!(stdout.contains(&format!("chunk={} ", 256 << 10)), "{}", describe(&out));
    assert_eq!(frostheap::__private::context::chunk_shift_for(20 << 20), 18);
    assert_eq!(frostheap::__private::context::chunk_shift_for(256 << 20), 22);
    assert_eq!(frostheap::__private::context::chunk_shift_for(usize::MAX), 22);
    assert_eq!(frostheap::__private::context::chunk_shift_for(1 << 20), 16);
}

test!(a_task_arena_gets_the_free_memory_main_keeps_under_a_small_limit);
/// Under `FROSTHEAP_MAX=20M`, with 12 MB of main's blocks freed (and kept
/// charged, below main's purge threshold), a task's 10 MiB arena vector,
/// 20 times: the context heap's refused chunks now have the reclaimer
/// give main's free spans back first (they were refused at once, and the
/// task aborted).
fn a_task_arena_gets_the_free_memory_main_keeps_under_a_small_limit() {
    global_scenario_with("arena-after-free", &[("FROSTHEAP_MAX", "20M")]);
}

test!(a_refusal_on_every_path_prints_frostheaps_line_before_stds);
/// A refusal past `FROSTHEAP_MAX` in the main heap, a spawned thread's
/// heap, a task's allocation (its context heap, then its worker's heap)
/// and a task's `Arena` (its context heap alone): each prints frostheap's
/// line naming the heap before std's "memory allocation of N bytes
/// failed". The arena printed none (the line that came was for an
/// allocation made while std printed a backtrace).
fn a_refusal_on_every_path_prints_frostheaps_line_before_stds() {
    let n = (20 << 20) + (1 << 20);
    for (scenario, heap) in [
        ("oom-main", "main"),
        ("oom-thread", "thread"),
        ("oom-task", "context"),
        ("oom-arena", "context"),
    ] {
        let out = run_fixture("runtime_global", &[scenario], &[("FROSTHEAP_MAX", "20M")]);
        assert_eq!(out.status.signal(), Some(6), "{scenario}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours = stderr
            .lines()
            .position(|l| {
                l.starts_with(&format!("frostheap: out of memory: the {heap} heap cannot allocate {n} bytes"))
            })
            .unwrap_or_else(|| panic!("{scenario}: no frostheap line\n{}", describe(&out)));
        let std_line = stderr
            .lines()
            .position(|l| l.contains(&format!("memory allocation of {n} bytes failed")))
            .unwrap_or_else(|| panic!("{scenario}: no line from std\n{}", describe(&out)));
        assert!(ours < std_line, "{scenario}: frostheap's line must come first\n{stderr}");
    }
}

test!(a_panic_whose_backtrace_the_limit_refuses_aborts_instead_of_hanging);
/// A panic at `FROSTHEAP_MAX` with `RUST_BACKTRACE=1`: std's report reads
/// the debug information, the limit refuses it, and std's report of the
/// refusal waited for ever on the backtrace lock its panic report holds.
/// Now frostheap's line says the thread is panicking and the process
/// aborts (SIGABRT), with the panic's message printed before.
fn a_panic_whose_backtrace_the_limit_refuses_aborts_instead_of_hanging() {
    let out = run_fixture(
        "runtime_global",
        &["panic-at-limit"],
        &[("FROSTHEAP_MAX", "24M"), ("RUST_BACKTRACE", "1")],
    );
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr
        .find("the limit reached")
        .unwrap_or_else(|| panic!("no panic message\n{}", describe(&out)));
    let ours = stderr
        .find("the thread is panicking, so the process aborts now")
        .unwrap_or_else(|| panic!("no line from frostheap\n{}", describe(&out)));
    assert!(message < ours, "{}", describe(&out));
}

test!(global_tasks_print_name_threads_send_on_channels_and_count_shared);
fn global_tasks_print_name_threads_send_on_channels_and_count_shared() {
    global_scenario("basics");
    // The tasks' own lines reached stdout.
    let out = run_fixture("runtime_global", &["basics"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("task ")).count(),
        8,
        "{}",
        describe(&out)
    );
}

test!(global_results_escape_and_stay_valid_across_later_phases);
fn global_results_escape_and_stay_valid_across_later_phases() {
    global_scenario("escape");
}

test!(global_main_heap_is_guarded_during_phases);
/// Under `cancel` (the fixture counts parked workers); the rollback
/// policy's equivalent is `recovery::global_main_heap_violations_are_rolled_back`.
fn global_main_heap_is_guarded_during_phases() {
    let out = run_fixture(
        "runtime_global",
        &["violation"],
        &[("FROSTHEAP_ON_VIOLATION", "cancel")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("runtime_global violation: ok"),
        "{}",
        describe(&out)
    );
}

test!(global_frees_of_main_heap_items_are_deferred);
fn global_frees_of_main_heap_items_are_deferred() {
    global_scenario("deferred");
}

test!(global_an_item_larger_than_the_budget_runs_alone);
fn global_an_item_larger_than_the_budget_runs_alone() {
    global_scenario("oversized");
}

test!(global_ten_thousand_phases_do_not_grow_memory);
fn global_ten_thousand_phases_do_not_grow_memory() {
    global_scenario("phases");
}

test!(nested_guards_and_results_in_the_main_heap);
/// Regression (global mode): a heap built on main lives in the main heap,
/// the runtime itself is boxed there, and large result vectors live there
/// with their pages exempted from the freeze; freezing, thawing and the
/// exemption never write frozen memory, and other main-heap data stays
/// frozen while results are written.
fn nested_guards_and_results_in_the_main_heap() {
    let out = crate::check::run_fixture("nested_guards", &[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nested_guards failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nested guards: ok"), "{stdout}");
}

test!(a_violation_drops_every_item_but_the_parked_one);
/// Under `cancel` (the rollback policy's equivalent is
/// `recovery::rollback_drops_every_item_and_result_once`): after a violation, every item is dropped exactly once — except the one
/// the parked task holds, which is never dropped (its copy lives on the
/// parked thread's stack; dropping ours could free what the task already
/// moved out) — and every result made before the error is dropped.
fn a_violation_drops_every_item_but_the_parked_one() {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static RESULTS: AtomicUsize = AtomicUsize::new(0);
    struct Item(usize);
    impl Drop for Item {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    struct Res;
    impl Drop for Res {
        fn drop(&mut self) {
            RESULTS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let heap = Heap::builder().name("drops").max(16 * MIB).build().unwrap();
    let mut data = AVec::new_in(heap.clone());
    data.extend((0..64).map(AtomicU64::new));
    let rt = Runtime::builder()
        .workers(WORKERS)
        .guard(&heap)
        .on_violation(frostheap::OnViolation::Cancel)
        .build()
        .unwrap();
    let n = 5000;
    let items: Vec<Item> = (0..n)
        .map(|i| {
            MADE.fetch_add(1, Ordering::Relaxed);
            Item(i)
        })
        .collect();
    let made_results = Shared::new(AtomicUsize::new(0));
    let r = rt.map(items, |item| {
        if item.0 == 1234 {
            data[1].fetch_add(1, Ordering::Relaxed);
        }
        made_results.fetch_add(1, Ordering::Relaxed);
        Res
    });
    let e = r.err().expect("a violation");
    assert_eq!(e.violation().map(|v| v.item_index()), Some(Some(1234)));
    assert_eq!(MADE.load(Ordering::Relaxed), n);
    assert_eq!(
        DROPPED.load(Ordering::Relaxed),
        n - 1,
        "every item but the parked task's is dropped once"
    );
    assert_eq!(
        RESULTS.load(Ordering::Relaxed),
        made_results.load(Ordering::Relaxed),
        "every result made is dropped"
    );
    assert_eq!(data[1].load(Ordering::Relaxed), 1);
}

test!(map_slice_over_a_guarded_slice_catches_a_write_through_a_shared_reference);
/// `map_slice` over a slice that lives in a guarded heap: reading the
/// elements is fine; a task that writes one through a shared reference
/// (interior mutability) is a violation naming that element and item, the
/// write does not happen, and every result made is dropped.
fn map_slice_over_a_guarded_slice_catches_a_write_through_a_shared_reference() {
    static RESULTS: AtomicUsize = AtomicUsize::new(0);
    struct Res;
    impl Drop for Res {
        fn drop(&mut self) {
            RESULTS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let heap = Heap::builder()
        .name("slice-guarded")
        .max(16 * MIB)
        .build()
        .unwrap();
    let mut data = AVec::new_in(heap.clone());
    data.extend((0..20_000u64).map(AtomicU64::new));
    let rt = Runtime::builder()
        .workers(WORKERS)
        .guard(&heap)
        .build()
        .unwrap();
    let sum: u64 = rt
        .map_slice(&data, |a| a.load(Ordering::Relaxed))
        .unwrap()
        .iter()
        .sum();
    assert_eq!(sum, (0..20_000u64).sum::<u64>());

    let made = Shared::new(AtomicUsize::new(0));
    let r = rt.map_slice_with(&data, |ctx, a| {
        if ctx.item_index() == Some(12_345) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        made.fetch_add(1, Ordering::Relaxed);
        Res
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {:?}", other.map(|v| v.len())),
    };
    assert_eq!(v.item_index(), Some(12_345));
    assert_eq!(v.address(), &data[12_345] as *const AtomicU64 as usize);
    assert_eq!(v.heap_name(), "slice-guarded");
    assert_eq!(
        data[12_345].load(Ordering::Relaxed),
        12_345,
        "the store must not happen"
    );
    // Under rollback a phase whose stores were undone leaks its results
    // (one may rest on an undone store); under cancel the store never
    // happened, and every result made is dropped.
    let dropped = if rt.on_violation() == frostheap::OnViolation::Rollback {
        0
    } else {
        made.load(Ordering::Relaxed)
    };
    assert_eq!(RESULTS.load(Ordering::Relaxed), dropped, "results dropped");
    // The runtime goes on, over the same slice.
    assert_eq!(
        rt.map_slice(&data, |a| a.load(Ordering::Relaxed)).unwrap()[12_345],
        12_345
    );
}
