//! Recovery after violations in long-running programs (issue 13), in global
//! mode: `frostheap::Global` is the global allocator, so everything main
//! builds lives in the main heap, frozen during phases.
//!
//! Run: `cargo run --release -p frostheap --example recovery -- <scenario>`
//! (tests/it/recovery.rs runs every scenario as a child process within a
//! time limit, so a hang is a failure). Each scenario checks itself with
//! `assert!` (a failure exits non-zero) and prints
//! `recovery <scenario>: ok`. The policy and backend come from the
//! environment (`FROSTHEAP_ON_VIOLATION`, `FROSTHEAP_PROTECT`); the
//! scenarios that need a specific policy say so.
//!
//! | scenario | what must hold |
//! |---|---|
//! | `threads` | `thread::spawn(..).join()`, `thread::scope` and a pool of threads first made inside a task all return |
//! | `bystander` | a thread a task starts writes the main heap: its store lands, is not undone, and does not block the phase |
//! | `lock-static` | a task violates while holding a `static Mutex<Vec<String>>`: `Err`, and the lock is free afterwards |
//! | `lock-stack` | the same with a `Mutex` on main's stack over a main-heap `Vec` |
//! | `println` | a violation inside `Display` called by `println!`: main prints afterwards |
//! | `exhausted <n>` | `n` violating phases, each followed by a clean one: never `Ok` unless every task ran |
//! | `runtimes <n>` | `n` runtimes built, used and dropped: threads and RSS back to the baseline |
//! | `violations <n> <max_parked>` | `n` violations in one runtime: every call `Err` (audit: `Ok`), threads and RSS bounded |
//! | `large-results` | 2 × 100 MB results dropped, three times: context memory goes back between phases |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

use frostheap::{Error, OnViolation, Runtime};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const MIB: usize = 1 << 20;
const WORKERS: usize = 2;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be a number: {args:?}"))
    };
    assert!(frostheap::main_heap().is_some(), "Global is installed");
    let scenario = args.first().map(String::as_str).unwrap_or_default();
    match scenario {
        "threads" => threads(),
        "bystander" => bystander(),
        "lock-static" => lock_static(),
        "lock-stack" => lock_stack(),
        "println" => println_in_display(),
        "exhausted" => exhausted(arg(1)),
        "runtimes" => runtimes(arg(1)),
        "violations" => violations(arg(1), arg(2)),
        "large-results" => large_results(),
        other => {
            eprintln!(
                "unknown scenario {other:?}: threads, bystander, lock-static, lock-stack, println, \
                 exhausted <n>, runtimes <n>, violations <n> <max_parked>, large-results"
            );
            std::process::exit(2);
        }
    }
    println!("recovery {scenario}: ok");
}

fn runtime() -> Runtime {
    Runtime::builder()
        .workers(WORKERS)
        .build()
        .expect("the runtime starts")
}

/// A field of `/proc/self/status`, in its own unit (kB for memory).
fn status(field: &str) -> usize {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn threads_now() -> usize {
    status("Threads")
}

fn rss_kib() -> usize {
    status("VmRSS")
}

/// Writes the main heap from a task: `*target += 1` through an atomic.
#[inline(never)]
fn violate(target: &AtomicU64) {
    target.fetch_add(1, Ordering::SeqCst);
}

/// Threads that tasks start: spawned and joined, scoped, and a pool made
/// lazily by the first task that needs it and used across phases.
fn threads() {
    let rt = runtime();
    let spawned = rt
        .map(0..4u64, |i| {
            std::thread::spawn(move || i * 2).join().unwrap()
        })
        .expect("thread::spawn + join inside tasks");
    assert_eq!(spawned, [0, 2, 4, 6]);
    let scoped = rt
        .map(0..4u64, |i| {
            let mut out = 0;
            std::thread::scope(|s| {
                s.spawn(|| out = i + 1);
            });
            out
        })
        .expect("thread::scope inside tasks");
    assert_eq!(scoped, [1, 2, 3, 4]);
    for round in 0..3u64 {
        let pooled = rt
            .map(0..8u64, |i| pool().run(move || i * i + round))
            .expect("a pool made inside a task");
        assert_eq!(pooled, (0..8).map(|i| i * i + round).collect::<Vec<_>>());
    }
}

/// A fixed pool of threads made on first use, as rayon's global pool is:
/// the first task that needs it builds it, and later tasks and phases use
/// it.
struct Pool {
    jobs: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for k in 0..2 {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pool-{k}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .unwrap();
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    })
}

impl Pool {
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.lock().unwrap().send(job).unwrap();
        rx.recv().unwrap()
    }
}

/// A thread started by a task writes the main heap (it is no worker: its
/// store is legal), while the phase is running; then the same next to a
/// task's violation on the same page.
fn bystander() {
    let rt = runtime();
    let words: Vec<AtomicU64> = (0..512).map(AtomicU64::new).collect();
    let r = rt.map(0..4usize, |i| {
        if i == 1 {
            std::thread::scope(|s| {
                s.spawn(|| words[10].store(1000, Ordering::SeqCst));
            });
        }
        i
    });
    assert_eq!(r.expect("a thread's store is no violation"), [0, 1, 2, 3]);
    assert_eq!(words[10].load(Ordering::SeqCst), 1000, "the store landed");
    assert_eq!(rt.stats().violations, 0);
    // A violation by one task, a bystander's store by a thread another
    // task started, on the same page: the first is undone, the second
    // stays.
    let policy = policy_in_force();
    let r = rt.map(0..4usize, |i| {
        match i {
            1 => std::thread::scope(|s| {
                s.spawn(|| words[20].store(2000, Ordering::SeqCst));
            }),
            2 => violate(&words[30]),
            _ => {}
        }
        i
    });
    let e = r.expect_err("the task's store is a violation");
    let v = e.violation().expect("a violation");
    assert_eq!(v.address(), &words[30] as *const AtomicU64 as usize);
    assert_eq!(
        words[20].load(Ordering::SeqCst),
        2000,
        "the bystander's store stays"
    );
    if policy != OnViolation::Audit {
        assert_eq!(
            words[30].load(Ordering::SeqCst),
            30,
            "the violation left no trace"
        );
    }
}

fn policy_in_force() -> OnViolation {
    match std::env::var("FROSTHEAP_ON_VIOLATION").as_deref() {
        Ok("audit") => OnViolation::Audit,
        Ok("cancel") => OnViolation::Cancel,
        _ => OnViolation::default(),
    }
}

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A task pushes onto a static `Mutex<Vec<String>>` whose buffer main
/// allocated (so it lies in the main heap): the push is a violation made
/// while the lock is held. The phase must end with `Err`, and the lock
/// must be free afterwards for main and for the next phase.
fn lock_static() {
    LOG.lock().unwrap().reserve(64);
    LOG.lock().unwrap().push("main".to_string());
    let rt = runtime();
    let r = rt.map(0..8usize, |i| {
        LOG.lock().unwrap().push(format!("task {i}"));
        i
    });
    let e = r.expect_err("a push onto a main-heap Vec is a violation");
    assert!(e.violation().is_some(), "{e}");
    println!("{e}");
    // Main takes the lock: it is not held by a cancelled task.
    let len = LOG.lock().unwrap_or_else(|p| p.into_inner()).len();
    assert!(len >= 1, "{len}");
    let r = rt.map(0..4usize, |i| i + 1);
    assert_eq!(r.expect("the next phase runs"), [1, 2, 3, 4]);
}

/// The same with a `Mutex` on main's stack over a `Vec<u64>` in the main
/// heap: the tasks that wait for the lock must not wait forever.
fn lock_stack() {
    let mut v: Vec<u64> = Vec::with_capacity(64);
    v.push(7);
    let data = Mutex::new(v);
    let rt = runtime();
    let r = rt.map(0..8u64, |i| {
        data.lock().unwrap().push(i);
        i
    });
    let e = r.expect_err("a push into a main-heap buffer is a violation");
    assert!(e.violation().is_some(), "{e}");
    let first = data.lock().unwrap_or_else(|p| p.into_inner())[0];
    assert_eq!(first, 7, "the first element was never written by a task");
    let r = rt.map(0..4u64, |i| i * 3);
    assert_eq!(r.expect("the next phase runs"), [0, 3, 6, 9]);
}

/// A value whose `Display` fills a cache on first use; the cache lives in
/// the main heap, so filling it from a task is a violation, made while
/// `println!` holds stdout's lock.
struct Lazy {
    cache: OnceLock<String>,
}

impl fmt::Display for Lazy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.cache.get_or_init(|| "lazily made".to_string());
        f.write_str(s)
    }
}

fn println_in_display() {
    let lazy = Box::new(Lazy {
        cache: OnceLock::new(),
    });
    let rt = runtime();
    let r = rt.map(0..4usize, |i| {
        println!("task {i}: {lazy}");
        i
    });
    let e = r.expect_err("filling a main-heap cache is a violation");
    assert!(e.violation().is_some(), "{e}");
    // Main prints: stdout's lock is free.
    println!("main after the phase: {lazy}");
    let r = rt.map(0..2usize, |i| {
        println!("task {i} of the next phase");
        i
    });
    assert_eq!(r.expect("the next phase runs"), [0, 1]);
}

/// `n` violating phases, each followed by a clean one. A phase whose task
/// wrote frozen memory never returns `Ok`; a clean phase returns `Ok` only
/// with every result right (every task ran).
fn exhausted(n: usize) {
    let rt = runtime();
    let target: Box<AtomicU64> = Box::new(AtomicU64::new(0));
    let mut clean_ok = 0usize;
    for k in 0..n {
        let r = rt.map(0..4usize, |i| {
            if i == 3 {
                violate(&target);
            }
            i
        });
        assert!(
            r.is_err(),
            "violating phase {k} returned Ok({:?})",
            r.unwrap()
        );
        match rt.map(0..8u64, |x| x * 10 + 7) {
            Ok(v) => {
                assert_eq!(
                    v,
                    (0..8u64).map(|x| x * 10 + 7).collect::<Vec<_>>(),
                    "clean phase {k} returned Ok with results no task made"
                );
                clean_ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                if k == n - 1 {
                    println!("clean phase {k}: {msg}");
                }
            }
        }
    }
    assert_eq!(
        target.load(Ordering::SeqCst),
        0,
        "no violating store survived"
    );
    assert!(clean_ok > 0, "some clean phase ran");
}

/// `n` runtimes built, used and dropped. Threads must come back to the
/// baseline exactly, RSS to within 16 MiB of it (the baseline is taken
/// after 50 runtimes, when lazily made buffers exist).
fn runtimes(n: usize) {
    let mut baseline = None;
    for k in 0..n {
        let rt = Runtime::builder()
            .workers(WORKERS)
            .build()
            .unwrap_or_else(|e| panic!("runtime {k}: {e}"));
        let out = rt.map(0..64u64, |x| vec![x; 16]).unwrap();
        assert_eq!(out[63][15], 63);
        drop(out);
        drop(rt);
        if k == 49 {
            baseline = Some((threads_now(), rss_kib()));
        }
    }
    let (threads0, rss0) = baseline.expect("at least 50 runtimes");
    let (threads1, rss1) = (threads_now(), rss_kib());
    println!("threads {threads0} -> {threads1}, RSS {rss0} -> {rss1} kB");
    assert_eq!(threads1, threads0, "threads back to the baseline");
    assert!(
        rss1 <= rss0 + 16 * 1024,
        "RSS {rss0} -> {rss1} kB after {n} runtimes"
    );
}

/// `n` violations in one runtime under the policy in force. Every call
/// returns `Err` (audit: `Ok`, with the store logged), the data is intact
/// (audit: written), threads stay within workers + `max_parked`, and RSS
/// within 32 MiB of its value after the first 100.
fn violations(n: usize, max_parked: usize) {
    let policy = policy_in_force();
    let rt = Runtime::builder()
        .workers(WORKERS)
        .max_parked(max_parked)
        .build()
        .unwrap();
    let target: Box<AtomicU64> = Box::new(AtomicU64::new(0));
    let threads0 = threads_now();
    let mut rss0 = 0;
    let mut errors = 0usize;
    for k in 0..n {
        let r = rt.map(0..4usize, |i| {
            if i == 2 {
                violate(&target);
            }
            i
        });
        match (policy, r) {
            (OnViolation::Audit, Ok(v)) => assert_eq!(v, [0, 1, 2, 3]),
            (OnViolation::Audit, Err(e)) => panic!("audit returned {e}"),
            (_, Ok(v)) => panic!("violation {k} returned Ok({v:?})"),
            (_, Err(e)) => {
                errors += 1;
                if let Error::Violation(v) = &e {
                    assert_eq!(v.address(), &*target as *const AtomicU64 as usize);
                }
            }
        }
        let written = target.load(Ordering::SeqCst);
        match policy {
            OnViolation::Audit => assert_eq!(written, k as u64 + 1),
            _ => assert_eq!(written, 0, "violation {k} left a trace"),
        }
        let threads = threads_now();
        assert!(
            threads <= threads0 + max_parked,
            "{threads} threads after {k} violations (workers {WORKERS}, max_parked {max_parked}, {threads0} at the start)"
        );
        if k == 99 {
            rss0 = rss_kib();
        }
    }
    let rss1 = rss_kib();
    println!(
        "{n} violations: {errors} errors, threads {threads0} -> {}, RSS {rss0} -> {rss1} kB",
        threads_now()
    );
    assert!(rss1 <= rss0 + 32 * 1024, "RSS {rss0} -> {rss1} kB");
}

/// Three rounds of two 100 MB results, dropped after each round: the
/// context memory they used is given back by the next phase.
fn large_results() {
    let rt = runtime();
    let rss0 = rss_kib();
    let committed0 = rt.stats().context_committed;
    for round in 0..3 {
        let big = rt.map(0..2usize, |i| vec![i as u8 + 1; 100 * MIB]).unwrap();
        assert_eq!(big[1][100 * MIB - 1], 2);
        drop(big);
        let small = rt.map(0..4usize, |i| i).unwrap();
        assert_eq!(small, [0, 1, 2, 3]);
        let committed = rt.stats().context_committed;
        let rss = rss_kib();
        println!("round {round}: context committed {committed} bytes, RSS {rss} kB");
        assert!(
            committed <= committed0 + 32 * MIB,
            "round {round}: {committed} bytes of context memory committed after the results were dropped ({committed0} before)"
        );
        assert!(
            rss <= rss0 + 64 * 1024,
            "round {round}: RSS {rss0} -> {rss} kB after the results were dropped"
        );
    }
}
