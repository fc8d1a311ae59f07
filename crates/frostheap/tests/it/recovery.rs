//! Recovery after violations (issue 13): a violation never hangs, never
//! leaks, never lies.
//!
//! Most cases are global-mode programs (`tests/fixtures/recovery.rs`,
//! one scenario per run) run as child processes within a time limit, so a hang
//! is a failure with the child's output, not a stuck test run: threads that
//! tasks start, a bystander thread's store during a phase, violations made
//! while holding a lock or stdout's lock, phases past the parked-thread and
//! slot limits, thousands of runtimes and of violations (threads and RSS
//! counted), and large results whose memory must come back. In this
//! process: the report's backtrace names the user's frames, and a property
//! test that a phase returns `Ok` only if every task ran.

use std::process::Output;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use allocator_api2::vec::Vec as HeapVec;
use frostheap::{Error, Heap, Runtime};
use proptest::prelude::*;

use crate::check::{describe, run_example, run_fixture};

/// Runs scenario `args` of the `recovery` fixture with `env`, within the
/// child time limit (`check::output_within`).
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_fixture("recovery", args, env)
}

/// Runs a scenario and checks it passed its own checks.
#[track_caller]
fn scenario(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = run(args, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("recovery {}: ok", args[0])),
        "recovery {args:?} with {env:?}\n{}",
        describe(&out)
    );
    out
}

const MPROTECT: (&str, &str) = ("FROSTHEAP_PROTECT", "mprotect");
const PKEY: (&str, &str) = ("FROSTHEAP_PROTECT", "pkey");
const CANCEL: (&str, &str) = ("FROSTHEAP_ON_VIOLATION", "cancel");
const AUDIT: (&str, &str) = ("FROSTHEAP_ON_VIOLATION", "audit");

// ---------------------------------------------------------------------------
// Threads that tasks start (case 4), bystanders.

test!(a_signal_handler_that_stores_into_the_main_heap_during_stepped_violations_mprotect);
/// Regression (a user's trial on a CPU with protection keys): a signal
/// whose handler stores into the main heap, delivered inside a violating
/// store's single step, killed the process with SIGTRAP (both backends).
/// The fixture's `signals` scenario: a `SIGPROF` handler on a 1 ms CPU
/// timer, 200 phases and 200 handler runs at least, every phase `Err`
/// with its stores undone.
fn a_signal_handler_that_stores_into_the_main_heap_during_stepped_violations_mprotect() {
    scenario(&["signals", "200"], &[MPROTECT]);
}

test!(a_signal_handler_that_stores_into_the_main_heap_during_stepped_violations_pkey, needs: [Pkey]);
fn a_signal_handler_that_stores_into_the_main_heap_during_stepped_violations_pkey() {
    scenario(&["signals", "200"], &[PKEY]);
}

test!(a_violating_store_of_a_handler_on_the_alternate_signal_stack_is_undone_mprotect);
/// Regression (CI's emulated guest): a violating store made by a signal
/// handler running on the alternate stack killed the worker (the report's
/// stack copy read across the thread stack's guard page). The fixture's
/// `onstack` scenario: an `SA_ONSTACK` handler raised on the workers, 200
/// phases, each `Err` with the store undone.
fn a_violating_store_of_a_handler_on_the_alternate_signal_stack_is_undone_mprotect() {
    scenario(&["onstack", "200"], &[MPROTECT]);
}

test!(a_violating_store_of_a_handler_on_the_alternate_signal_stack_is_undone_pkey, needs: [Pkey]);
fn a_violating_store_of_a_handler_on_the_alternate_signal_stack_is_undone_pkey() {
    scenario(&["onstack", "200"], &[PKEY]);
}

test!(thread_spawn_scope_and_a_pool_made_in_a_task_return_mprotect);
/// Regression (case 4): `thread::spawn(..).join()` inside a task hung for
/// good on `mprotect`: the new thread's start-up writes std's thread
/// bookkeeping, which main allocated, so the thread waited for the thaw
/// while the task waited for the thread. Also `thread::scope` and a pool
/// of threads made lazily by a task (as rayon's global pool is).
fn thread_spawn_scope_and_a_pool_made_in_a_task_return_mprotect() {
    scenario(&["threads"], &[MPROTECT]);
}

test!(thread_spawn_scope_and_a_pool_made_in_a_task_return_pkey, needs: [Pkey]);
fn thread_spawn_scope_and_a_pool_made_in_a_task_return_pkey() {
    scenario(&["threads"], &[PKEY]);
}

/// Runs examples/recovery_rayon.rs (a real rayon pool, a dev-dependency,
/// so an example rather than a fixture) with `env`.
fn rayon_example(env: &[(&str, &str)]) {
    let out = run_example("recovery_rayon", &[], env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("recovery_rayon: ok"),
        "recovery_rayon with {env:?}\n{}",
        describe(&out)
    );
}

test!(a_rayon_pool_first_used_inside_a_task_works_mprotect);
/// Regression (case 4): rayon's global pool, built lazily by the first
/// task that uses it, hung the phase on `mprotect` (its threads' start-up
/// stores into the main heap waited for the thaw). Three phases use it,
/// a fourth violates while using it (caught, undone), and it keeps working.
fn a_rayon_pool_first_used_inside_a_task_works_mprotect() {
    rayon_example(&[MPROTECT]);
}

test!(a_rayon_pool_first_used_inside_a_task_works_mprotect_cancel);
fn a_rayon_pool_first_used_inside_a_task_works_mprotect_cancel() {
    rayon_example(&[MPROTECT, CANCEL]);
}

test!(a_rayon_pool_first_used_inside_a_task_works_pkey, needs: [Pkey]);
fn a_rayon_pool_first_used_inside_a_task_works_pkey() {
    rayon_example(&[PKEY]);
}

test!(a_bystander_threads_store_lands_and_is_not_undone_mprotect);
/// A thread that a task starts is no worker: its store into the main heap
/// during the phase lands, is not undone by a rollback of another task's
/// violation on the same page, and does not block the phase.
fn a_bystander_threads_store_lands_and_is_not_undone_mprotect() {
    scenario(&["bystander"], &[MPROTECT]);
}

test!(a_bystander_threads_store_lands_and_is_not_undone_pkey, needs: [Pkey]);
fn a_bystander_threads_store_lands_and_is_not_undone_pkey() {
    scenario(&["bystander"], &[PKEY]);
}

// ---------------------------------------------------------------------------
// Locks (cases 5 and 6).

test!(a_violation_while_holding_a_static_lock_is_an_err_and_the_lock_comes_back);
/// Regression (case 5): a task that violated while holding a `static
/// Mutex<Vec<String>>` was parked with the lock held; the other tasks
/// blocked on it and the phase never ended, silently.
fn a_violation_while_holding_a_static_lock_is_an_err_and_the_lock_comes_back() {
    scenario(&["lock-static"], &[MPROTECT]);
}

test!(a_violation_while_holding_a_static_lock_is_an_err_pkey, needs: [Pkey]);
fn a_violation_while_holding_a_static_lock_is_an_err_pkey() {
    scenario(&["lock-static"], &[PKEY]);
}

test!(a_violation_while_holding_a_lock_on_mains_stack_is_an_err);
/// Regression (case 5): the same with a `Mutex` on main's stack over a
/// `Vec` in the main heap.
fn a_violation_while_holding_a_lock_on_mains_stack_is_an_err() {
    scenario(&["lock-stack"], &[MPROTECT]);
}

test!(a_violation_while_holding_a_lock_on_mains_stack_is_an_err_pkey, needs: [Pkey]);
fn a_violation_while_holding_a_lock_on_mains_stack_is_an_err_pkey() {
    scenario(&["lock-stack"], &[PKEY]);
}

test!(a_violation_inside_display_under_println_leaves_stdout_usable);
/// Regression (case 6): a violation inside `Display::fmt` called by
/// `println!` (a lazily filled cache in the main heap) left stdout's lock
/// held by the parked thread, and main's next `println!` blocked forever.
fn a_violation_inside_display_under_println_leaves_stdout_usable() {
    let out = scenario(&["println"], &[MPROTECT]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("main after the phase: lazily made"),
        "{}",
        describe(&out)
    );
}

test!(a_violation_inside_display_under_println_leaves_stdout_usable_pkey, needs: [Pkey]);
fn a_violation_inside_display_under_println_leaves_stdout_usable_pkey() {
    let out = scenario(&["println"], &[PKEY]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("main after the phase: lazily made"),
        "{}",
        describe(&out)
    );
}

test!(cancel_a_task_blocked_on_a_lock_the_cancelled_task_holds_ends_in_err);
/// Regression (case 5 under `cancel`): the report is printed when the
/// violation happens, and a phase that makes no progress after it ends
/// with `Err(Violation)` and a note that the remaining tasks are most
/// likely blocked on a lock the cancelled task holds; a later phase whose
/// tasks wait for that lock ends with `Err(Incomplete)`, not never.
fn cancel_a_task_blocked_on_a_lock_the_cancelled_task_holds_ends_in_err() {
    cancel_blocked_on_a_lock(MPROTECT);
}

/// Runs the `lock-stack` scenario under `cancel` with `backend` and checks
/// the report came when the violation happened and the error says why.
fn cancel_blocked_on_a_lock(backend: (&str, &str)) {
    let out = scenario(&["lock-stack"], &[backend, CANCEL]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("==frostheap== VIOLATION"),
        "the report is printed when the violation happens\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains("made no progress"),
        "the abandonment is said when it happens\n{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("blocked on a lock the cancelled task holds"),
        "the error says why\n{}",
        describe(&out)
    );
    // The later phase whose tasks wait for the lock the parked task keeps
    // (it used to wait forever).
    assert!(
        stderr.contains("while workers parked by earlier violations keep the locks"),
        "the later phase's abandonment is said when it happens\n{}",
        describe(&out)
    );
    assert!(
        stdout.contains("later phase:") && stdout.contains("recovery lock-stack: ok"),
        "{}",
        describe(&out)
    );
}

test!(cancel_a_task_blocked_on_a_lock_the_cancelled_task_holds_ends_in_err_pkey, needs: [Pkey]);
fn cancel_a_task_blocked_on_a_lock_the_cancelled_task_holds_ends_in_err_pkey() {
    cancel_blocked_on_a_lock(PKEY);
}

// ---------------------------------------------------------------------------
// Limits, leaks and soaks (cases 1, 2, 3, 7).

test!(a_phase_never_returns_ok_unless_every_task_ran_past_the_parked_limit);
/// Regression (case 1): under `cancel`, once worker slots ran out no
/// parked worker could be replaced; with every worker parked a violating
/// phase returned `Ok`, and the next `map` returned `Ok` with results no
/// task made. 1100 violating phases, each followed by a clean one.
fn a_phase_never_returns_ok_unless_every_task_ran_past_the_parked_limit() {
    scenario(&["exhausted", "1100"], &[MPROTECT, CANCEL]);
}

test!(a_phase_never_returns_ok_unless_every_task_ran_default_policy);
fn a_phase_never_returns_ok_unless_every_task_ran_default_policy() {
    scenario(&["exhausted", "1100"], &[MPROTECT]);
}

test!(three_thousand_runtimes_give_back_their_threads_slots_and_memory);
/// Regression (case 2): dropping a runtime leaked its context slots (build
/// failed after about 1000 runtimes with "at most 1024 context heaps
/// alive at once") and about 29 KB of RSS. 3000 runtimes built, used and
/// dropped: threads back to the baseline exactly, RSS within 16 MiB.
fn three_thousand_runtimes_give_back_their_threads_slots_and_memory() {
    scenario(&["runtimes", "3000"], &[MPROTECT]);
}

test!(five_thousand_violations_under_rollback);
/// 5000 violations in one runtime under the default policy: every call
/// `Err`, the data intact, no thread left behind, RSS within 32 MiB.
fn five_thousand_violations_under_rollback() {
    scenario(&["violations", "5000", "0"], &[MPROTECT]);
}

test!(five_thousand_violations_under_rollback_pkey, needs: [Pkey]);
fn five_thousand_violations_under_rollback_pkey() {
    scenario(&["violations", "5000", "0"], &[PKEY]);
}

test!(five_thousand_violations_under_cancel_stay_within_max_parked);
/// Regression (case 3): each violation under `cancel` left a thread and a
/// slot behind for good, and slots ran out before `max_parked` could
/// trigger. 5000 violations with `max_parked(100)`: every call `Err`
/// (past the cap a clear error, never `Ok`), threads ≤ workers + 100.
fn five_thousand_violations_under_cancel_stay_within_max_parked() {
    scenario(&["violations", "5000", "100"], &[MPROTECT, CANCEL]);
}

test!(five_thousand_violations_under_audit);
/// Audit lets every store through and logs it: 5000 calls return `Ok`,
/// no thread is left behind, RSS stays bounded.
fn five_thousand_violations_under_audit() {
    scenario(&["violations", "5000", "0"], &[MPROTECT, AUDIT]);
}

test!(dropped_large_results_give_their_context_memory_back);
/// Regression (case 7): three rounds of 2 × 100 MB results, all dropped,
/// kept 600 MB of context memory committed (RSS 418 MB) until the runtime
/// was dropped. After each round's next phase, context memory is back
/// within 32 MiB and RSS within 64 MiB of the start.
fn dropped_large_results_give_their_context_memory_back() {
    scenario(&["large-results"], &[MPROTECT]);
}

// ---------------------------------------------------------------------------
// The rollback policy's side of runtime.rs's cancel tests.

test!(a_write_to_a_guarded_heap_is_undone_and_no_worker_is_parked);
/// Under `rollback` (the default) a task's store into a guarded heap is
/// let through, undone at the thaw and reported; the task runs to its end,
/// no thread is parked, and the next phases run on the same workers.
fn a_write_to_a_guarded_heap_is_undone_and_no_worker_is_parked() {
    let heap = Heap::builder()
        .name("rt-rollback")
        .max(64 << 20)
        .build()
        .unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..1000).map(AtomicU64::new));
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    // Workers are named by id; a replacement would get id 2 or more.
    let names = |rt: &Runtime| {
        rt.map(0..64usize, |_| std::thread::current().name().map(str::to_string))
            .unwrap()
            .into_iter()
            .all(|n| matches!(n.as_deref(), Some("frostheap-worker-0" | "frostheap-worker-1")))
    };
    assert!(names(&rt));
    let finished = AtomicUsize::new(0);
    let r = rt.map(0..64usize, |i| {
        if i == 37 {
            data[3].fetch_add(100, Ordering::Relaxed);
            data[4].store(7, Ordering::Relaxed);
            finished.fetch_add(1, Ordering::SeqCst);
        }
        i
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert_eq!(v.heap_name(), "rt-rollback");
    assert_eq!(v.item_index(), Some(37));
    assert_eq!(v.address(), &data[3] as *const AtomicU64 as usize);
    assert_eq!(v.policy(), frostheap::OnViolation::Rollback);
    assert_eq!(v.stores_undone(), 2, "{v}");
    assert_eq!(v.other_stores(), [(&data[4] as *const AtomicU64 as usize, Some(37))]);
    assert_eq!(finished.load(Ordering::SeqCst), 1, "the task ran to its end");
    assert_eq!(data[3].load(Ordering::Relaxed), 3, "undone");
    assert_eq!(data[4].load(Ordering::Relaxed), 4, "undone");
    assert!(v.to_string().contains("2 stores undone"), "{v}");
    let s = rt.stats();
    assert_eq!((s.violations, s.parked_workers), (2, 0));
    assert!(names(&rt), "the same workers go on (none was replaced)");
}

test!(a_thousand_violating_stores_of_one_task_are_all_counted);
/// One task makes 1,000 violating stores (one word every 16 bytes): the
/// report counts all of them, lists the worker's first 256 (the first
/// among them, then 255 others), and the runtime's statistics count 1,000.
/// Before, the report said "also 255 other violating stores" and the
/// statistics 256: the workers' record ring kept the last 256 and the rest
/// went uncounted.
fn a_thousand_violating_stores_of_one_task_are_all_counted() {
    let heap = Heap::builder().name("rt-many").max(64 << 20).build().unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..2000).map(AtomicU64::new));
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    let r = rt.map(0..4usize, |i| {
        if i == 1 {
            for k in 0..1000 {
                data[2 * k].store(7, Ordering::Relaxed);
            }
        }
        i
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert_eq!(v.address(), &data[0] as *const AtomicU64 as usize, "the first store first");
    assert_eq!(v.violating_stores(), 1000, "{v}");
    assert_eq!(v.other_stores().len(), 255, "{v}");
    assert_eq!(v.other_stores()[0].0, &data[2] as *const AtomicU64 as usize);
    assert_eq!(v.stores_undone(), 1000, "{v}");
    assert_eq!(v.tasks_cancelled(), 0, "{v}");
    let text = v.to_string();
    assert!(text.contains("also     999 other violating stores"), "{text}");
    assert!(text.contains("... and 983 more (255 listed in other_stores()"), "{text}");
    assert!(data.iter().enumerate().all(|(k, x)| x.load(Ordering::Relaxed) == k as u64), "undone");
    assert_eq!(rt.stats().violations, 1000);
}

test!(the_audit_policy_counts_every_store_and_its_log_can_be_taken);
/// Under `audit`, one task's 1,000 violating stores land and the call
/// returns `Ok`; the runtime counts 1,000 violations (it counted 256) and
/// logs the first 256; `take_audit_log` hands the log over and leaves it
/// empty, so a long-running program under audit does not grow without
/// bound.
fn the_audit_policy_counts_every_store_and_its_log_can_be_taken() {
    let heap = Heap::builder().name("rt-audit").max(64 << 20).build().unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..2000).map(AtomicU64::new));
    let rt = Runtime::builder()
        .workers(2)
        .guard(&heap)
        .on_violation(frostheap::OnViolation::Audit)
        .build()
        .unwrap();
    for round in 1..=2u64 {
        let r = rt.map(0..4usize, |i| {
            if i == 2 {
                for k in 0..1000 {
                    data[2 * k].store(round, Ordering::Relaxed);
                }
            }
            i
        });
        assert_eq!(r.unwrap(), [0, 1, 2, 3]);
        assert_eq!(data[1998].load(Ordering::Relaxed), round, "the stores landed");
        assert_eq!(rt.stats().violations, 1000 * round);
        assert_eq!(rt.audit_log().len(), 256);
        let log = rt.take_audit_log();
        assert_eq!(log.len(), 256);
        assert_eq!(log[0].address(), &data[0] as *const AtomicU64 as usize);
        assert!(rt.audit_log().is_empty() && rt.take_audit_log().is_empty());
    }
}

test!(a_task_that_fills_its_undo_log_under_a_lock_leaves_the_lock_free_mprotect);
/// The fixture's `log-full` scenario (a user's trial, which hung for good
/// in 3 runs of 3): each of 2 tasks a phase makes 40,000 violating stores
/// into a main-heap `Vec` while it holds the `Mutex` over it, past its
/// worker's undo log; 2 phases (each some 80,000 faults: CI's emulated
/// guest runs them too), every one `Err` with its stores kept, the lock
/// free for main after each, no worker parked, the threads flat.
fn a_task_that_fills_its_undo_log_under_a_lock_leaves_the_lock_free_mprotect() {
    scenario(&["log-full", "2"], &[MPROTECT]);
}

test!(a_task_that_fills_its_undo_log_under_a_lock_leaves_the_lock_free_pkey, needs: [Pkey]);
fn a_task_that_fills_its_undo_log_under_a_lock_leaves_the_lock_free_pkey() {
    scenario(&["log-full", "2"], &[PKEY]);
}

test!(a_task_whose_undo_log_fills_runs_to_its_end_and_the_phase_keeps_its_stores);
/// Under `rollback`, a task that makes more violating stores than its
/// worker's undo log holds (40,000, one every 16 bytes, each changing a byte or two: 32,768 fit) runs
/// to its end, and the phase keeps every store, as audit would: `Err`
/// with `stores_kept`, the report says why, and no worker is parked.
/// Until 2026-12-06 the task was cancelled at the store that did not fit
/// and its thread parked, keeping any lock it held (a user's trial: main
/// then blocked on that lock for good), and the stores before it undone.
fn a_task_whose_undo_log_fills_runs_to_its_end_and_the_phase_keeps_its_stores() {
    let heap = Heap::builder().name("rt-full").max(64 << 20).build().unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..80_000).map(AtomicU64::new));
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    let finished = AtomicUsize::new(0);
    let r = rt.map(0..2usize, |i| {
        if i == 0 {
            for k in 0..40_000 {
                data[2 * k].store(1, Ordering::Relaxed);
            }
            finished.fetch_add(1, Ordering::SeqCst);
        }
        i
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert_eq!(finished.load(Ordering::SeqCst), 1, "the task ran to its end");
    assert_eq!(v.tasks_cancelled(), 0, "{v}");
    assert!(v.stores_kept(), "{v}");
    assert_eq!(v.stores_undone(), 0, "{v}");
    assert_eq!(v.violating_stores(), 40_000, "{v}");
    let text = v.to_string();
    assert!(text.contains("a worker's undo log filled"), "{text}");
    assert!(!text.contains("rollback "), "nothing was undone: {text}");
    let kept = |k: usize, x: u64| x == if k.is_multiple_of(2) && k < 80_000 { 1 } else { k as u64 };
    assert!(data.iter().enumerate().all(|(k, x)| kept(k, x.load(Ordering::Relaxed))), "kept");
    assert_eq!(rt.stats().parked_workers, 0);
    // The next phase logs and undoes again.
    let r = rt.map(0..2usize, |i| {
        data[1].store(99, Ordering::Relaxed);
        i
    });
    let v = match r {
        Err(Error::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert!(!v.stores_kept() && v.stores_undone() == 2, "{v}");
    assert_eq!(data[1].load(Ordering::Relaxed), 1, "undone");
}

test!(rollback_drops_every_item_once_and_leaks_the_results);
/// Under `rollback` the violating task runs to its end, so it consumes its
/// item like every other task: after the error every item is dropped
/// exactly once (none is kept by a parked task, as under `cancel`). The
/// results are never dropped: one may rest on a store that was undone
/// (`arc_results_of_a_rolled_back_phase_are_leaked_not_dropped`).
fn rollback_drops_every_item_once_and_leaks_the_results() {
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
    let heap = Heap::builder().name("drops-rb").max(16 << 20).build().unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..64).map(AtomicU64::new));
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    let n = 5000;
    let items: Vec<Item> = (0..n).map(Item).collect();
    let made = frostheap::Shared::new(AtomicUsize::new(0));
    let r = rt.map(items, |item| {
        if item.0 == 1234 {
            data[1].fetch_add(1, Ordering::Relaxed);
        }
        made.fetch_add(1, Ordering::Relaxed);
        Res
    });
    let e = r.err().expect("a violation");
    assert_eq!(e.violation().map(|v| v.item_index()), Some(Some(1234)));
    assert_eq!(DROPPED.load(Ordering::Relaxed), n, "every item dropped once");
    assert!(made.load(Ordering::Relaxed) > 0);
    assert_eq!(RESULTS.load(Ordering::Relaxed), 0, "no result of the phase dropped");
    assert_eq!(data[1].load(Ordering::Relaxed), 1, "undone");
}

test!(arc_results_of_a_rolled_back_phase_are_leaked_not_dropped);
/// Regression (a user's trial, safe code): tasks returning `Arc`s cloned
/// from a frozen index under rollback. The clones' count increments were
/// undone, and the results dropped after that took the counts below their
/// holders: the index's values were freed under it (SIGSEGV). The
/// fixture's `arc-results`: 50 such phases, every count and value intact.
fn arc_results_of_a_rolled_back_phase_are_leaked_not_dropped() {
    scenario(&["arc-results"], &[MPROTECT]);
}

test!(arc_results_of_a_rolled_back_phase_are_leaked_not_dropped_pkey, needs: [Pkey]);
fn arc_results_of_a_rolled_back_phase_are_leaked_not_dropped_pkey() {
    scenario(&["arc-results"], &[PKEY]);
}

test!(rolled_back_phases_of_plain_results_keep_no_memory_mprotect);
/// Regression (a user's port of rayon programs, 0.93 GB after 1,000
/// phases): every rolled-back phase leaked what its tasks made, the
/// runtime's own buffers included, and the context chunks those lay in
/// were never reused. The fixture's `rolled-back-plain`: 1,000 phases
/// collecting 10,000 `u64`s through `filter`, every other one violating
/// the main heap; committed, context and resident memory flat after the
/// first 100 (main: 104 MiB more committed, 90 MiB more resident).
fn rolled_back_phases_of_plain_results_keep_no_memory_mprotect() {
    scenario(&["rolled-back-plain", "1000"], &[MPROTECT]);
}

test!(rolled_back_phases_of_plain_results_keep_no_memory_pkey, needs: [Pkey]);
fn rolled_back_phases_of_plain_results_keep_no_memory_pkey() {
    scenario(&["rolled-back-plain", "1000"], &[PKEY]);
}

test!(rolled_back_phases_count_exactly_the_values_they_keep_mprotect);
/// Results that need drop are still kept after a rollback (one may rest
/// on a store that was undone), and now counted: the fixture's
/// `rolled-back-strings`, `String` results through `map` (slots) and
/// `filter_map` (pieces), every other phase violating; `values_kept`
/// is exactly their number, in the runtime's statistics and in each
/// violation, and `frostheap::stats()` counts their context memory in
/// use.
fn rolled_back_phases_count_exactly_the_values_they_keep_mprotect() {
    scenario(&["rolled-back-strings", "400"], &[MPROTECT]);
}

test!(rolled_back_phases_count_exactly_the_values_they_keep_pkey, needs: [Pkey]);
fn rolled_back_phases_count_exactly_the_values_they_keep_pkey() {
    scenario(&["rolled-back-strings", "400"], &[PKEY]);
}

test!(the_out_of_memory_line_counts_what_rolled_back_phases_keep_in_use);
/// Regression: the out-of-memory line's "in use" summed the main and
/// thread heaps only, so a process whose memory the values of rolled-back
/// phases held in context heaps said "67051520 committed, 656144 in
/// use" under a 64 MiB limit (it fails on main: no context part, and
/// requested + in use falls 64 MiB short). The fixture's `oom-after-rollbacks` under a 64 MiB limit:
/// the line says how much of what is in use lies in context heaps' chunks,
/// and the figures add up: what was asked plus what is in use reaches
/// the limit, but for the free chunks the context heaps keep (two of
/// 1 MiB per worker) and the free memory of the main heap.
fn the_out_of_memory_line_counts_what_rolled_back_phases_keep_in_use() {
    let limit: u64 = 64 << 20;
    let out = run(&["oom-after-rollbacks"], &[("FROSTHEAP_MAX", "64M")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Two workers may be refused at once: the line can follow another
    // thread's unfinished "memory allocation of " on the same line.
    let line = stderr
        .lines()
        .find_map(|l| l.find("frostheap: out of memory:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no out-of-memory line\n{}", describe(&out)));
    // "... cannot allocate N bytes: FROSTHEAP_MAX is L bytes...; the
    // process has C committed, U in use (K of it in context heaps' chunks)"
    let number_after = |text: &str| -> u64 {
        let at = line
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} not in {line}"))
            + text.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number after {text:?} in {line}"))
    };
    let requested = number_after("cannot allocate ");
    assert_eq!(number_after("FROSTHEAP_MAX is "), limit, "{line}");
    let committed = number_after("the process has ");
    let in_use = number_after("committed, ");
    let in_context = number_after(" in use (");
    println!("{line}");
    // Two workers refused at once: the one whose line is written may
    // count the other's refusal too (CI's guest, 2026-12-07).
    let counted = line
        .strip_suffix(" more refused since the last such line)")
        .and_then(|l| l.rsplit_once(" ("))
        .filter(|(_, n)| n.parse::<u64>().is_ok())
        .map_or(line, |(l, _)| l);
    assert!(
        counted.ends_with(" of it in context heaps' chunks)"),
        "{line}"
    );
    assert!(in_context <= in_use && in_use <= committed && committed <= limit, "{line}");
    assert!(
        in_context >= limit / 2,
        "the kept results lie in context heaps: {line}"
    );
    let slack = 4 << 20;
    assert!(
        requested + in_use + slack >= limit,
        "requested {requested} + in use {in_use} falls {} short of the limit {limit}: {line}",
        limit - requested - in_use
    );
}

test!(rolled_back_values_are_counted_by_every_terminal_that_keeps_them);
/// Each terminal's kept values after a rollback, counted when their type
/// needs drop: a reduction's partials, the item `find_any` kept, the
/// error `try_for_each` kept, `collect`'s pieces; none for plain values
/// (they own nothing, and what held them is freed).
fn rolled_back_values_are_counted_by_every_terminal_that_keeps_them() {
    let heap = Heap::builder().name("kept").max(16 << 20).build().unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..8).map(AtomicU64::new));
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    let violate = |i: u64| {
        if i == 7 {
            data[1].fetch_add(1, Ordering::Relaxed);
        }
    };
    let kept = |r: Error| r.violation().expect("a violation").values_kept();
    let before = rt.stats().values_kept;
    let partials = rt
        .par(0..1000u64)
        .map(|i| {
            violate(i);
            i.to_string()
        })
        .reduce(String::new, |a, b| a + &b)
        .unwrap_err();
    let partials = kept(partials);
    assert!(partials >= 1, "at least the whole batch's partial");
    let found = rt
        .par(0..1000u64)
        .map(|i| {
            violate(i);
            i.to_string()
        })
        .find_any(|s| s == "7")
        .unwrap_err();
    assert_eq!(kept(found), 1, "the item found");
    let failed = rt
        .par(0..1000u64)
        .try_for_each(|i| {
            violate(i);
            if i == 7 {
                Err(i.to_string())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(kept(failed), 1, "the error of item 7");
    let pieces = rt
        .par(0..1000u64)
        .filter_map(|i| {
            violate(i);
            (i % 10 == 0).then(|| i.to_string())
        })
        .collect::<Vec<String>>()
        .unwrap_err();
    assert_eq!(kept(pieces), 100, "every item the pieces hold");
    let plain = rt
        .par(0..1000u64)
        .filter(|&i| {
            violate(i);
            i % 10 == 0
        })
        .collect::<Vec<u64>>()
        .unwrap_err();
    assert_eq!(kept(plain), 0, "plain items keep nothing");
    let plain_sum = rt
        .par(0..1000u64)
        .map(|i| {
            violate(i);
            i
        })
        .sum::<u64>()
        .unwrap_err();
    assert_eq!(kept(plain_sum), 0);
    let s = rt.stats();
    assert_eq!(s.rolled_back_phases, 6, "{s:?}");
    assert!(s.values_kept - before >= (partials + 1 + 100) as u64, "{s:?}");
    assert_eq!(data[1].load(Ordering::Relaxed), 1, "undone");
}

test!(for_each_mut_over_values_that_own_memory_keeps_the_stores);
/// Regression (a user's trial, safe code): `for_each_mut` over `Vec`s
/// whose buffers main allocated, each task pushing a `Box`: the element's
/// store was undone and the length's kept, and dropping the `Vec`s freed
/// garbage (then blocks were handed out twice). The fixture's
/// `mut-owners`: the stores are kept and reported, every `Vec` whole;
/// over plain numbers a violating store is still undone.
fn for_each_mut_over_values_that_own_memory_keeps_the_stores() {
    scenario(&["mut-owners"], &[MPROTECT]);
}

test!(for_each_mut_over_values_that_own_memory_keeps_the_stores_pkey, needs: [Pkey]);
fn for_each_mut_over_values_that_own_memory_keeps_the_stores_pkey() {
    scenario(&["mut-owners"], &[PKEY]);
}

test!(global_main_heap_violations_are_rolled_back);
/// Global mode under the default policy: stores into the main heap are
/// undone, reported, and park nothing (runtime.rs's
/// `global_main_heap_is_guarded_during_phases` is the `cancel` side).
fn global_main_heap_violations_are_rolled_back() {
    scenario(&["rolled-back"], &[MPROTECT]);
}

test!(global_main_heap_violations_are_rolled_back_pkey, needs: [Pkey]);
fn global_main_heap_violations_are_rolled_back_pkey() {
    scenario(&["rolled-back"], &[PKEY]);
}

// ---------------------------------------------------------------------------
// The mprotect backend's single-step window (a known limit).

test!(two_runtimes_guarding_the_main_heap_run_overlapping_phases_exactly_mprotect);
/// Regression: two runtimes guarding the main heap, driven by two threads,
/// with phases that overlap (one runtime's whole phase, freeze to thaw,
/// inside the other's): on `mprotect` the inner thaw opened the main heap
/// under the outer phase, whose violating store then landed unseen (`Ok`,
/// the store kept), or crashed the process at the next write (SIGSEGV in 4
/// of 4 runs of a user's trial). Every violation must be reported and
/// undone, and the drivers' own stores, made during the other's phase,
/// kept (`two-runtimes` in tests/fixtures/recovery.rs).
fn two_runtimes_guarding_the_main_heap_run_overlapping_phases_exactly_mprotect() {
    scenario(&["two-runtimes", "40"], &[MPROTECT]);
}

test!(two_runtimes_guarding_the_main_heap_run_overlapping_phases_exactly_pkey, needs: [Pkey]);
fn two_runtimes_guarding_the_main_heap_run_overlapping_phases_exactly_pkey() {
    scenario(&["two-runtimes", "40"], &[PKEY]);
}

test!(stacked_violations_of_two_overlapping_runtimes_are_both_undone_pkey, needs: [Pkey]);
/// Regression: two runtimes' overlapping phases violate the same word, the
/// outer phase's store on top of the inner's, and the inner phase replays
/// its log first: its compare-exchange found the outer store, and the outer
/// replay then restored the inner store's value for good (on pkey, a word
/// left changed in 6 of 10 runs of a user's trial). A replay now leaves
/// such bytes to the replays of the phases still in flight
/// (`two-runtimes-stacked` in tests/fixtures/recovery.rs).
fn stacked_violations_of_two_overlapping_runtimes_are_both_undone_pkey() {
    scenario(&["two-runtimes-stacked", "40"], &[PKEY]);
}

test!(stacked_violations_of_two_overlapping_runtimes_are_both_undone_mprotect);
fn stacked_violations_of_two_overlapping_runtimes_are_both_undone_mprotect() {
    scenario(&["two-runtimes-stacked", "40"], &[MPROTECT]);
}

test!(a_bystanders_stores_on_mprotect_open_no_page_for_a_violating_store_to_slip_through);
/// Regression (a user's trial, docs/rollback.md "Known limits"): on
/// `mprotect` a bystander's store into a frozen page, and a worker's
/// violating store under rollback, were single-stepped with the page open
/// to every thread for one instruction. A worker's violating store made
/// inside a bystander's step faulted for nobody and survived the phase
/// unreported (900 to 1,499 of 3,000 phases `Ok` with the store kept), and
/// a bystander's store inside a worker's step was undone with its diff.
/// Both stores are plain moves, which the handler now performs itself
/// without opening the page. The fixture's `counter` scenario (global
/// mode, the main heap on huge pages): a plain thread increments a word
/// without pause while each phase's task stores to another word of the
/// same page; every phase `Err` with the store undone, no increment lost.
fn a_bystanders_stores_on_mprotect_open_no_page_for_a_violating_store_to_slip_through() {
    let out = scenario(&["counter", "400"], &[MPROTECT]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

test!(a_bystander_storing_across_thousands_of_mprotect_phases_is_never_taken_for_a_crash);
/// Regression: a bystander's store that faulted in one phase and was
/// judged after its thaw retried (its heap no longer frozen); faulting
/// again in the next phase and judged while that phase's thaw had cleared
/// the heap's mark but not yet bumped the thaw epoch, it was taken for a
/// real crash: the handler restored SIGSEGV's default action, and the
/// next fault of any thread killed the process (3 of 70 runs of `counter
/// 3000` on a loaded machine). The epoch is now bumped, and read with the
/// marks, under the step lock. The fixture's `counter` scenario with two
/// threads that spin beside it, so that the bystander is preempted
/// anywhere (inside the handler too), for 1,500 phases: the child ends
/// with every phase `Err`, its store undone, no increment lost.
fn a_bystander_storing_across_thousands_of_mprotect_phases_is_never_taken_for_a_crash() {
    let out = scenario(&["counter", "1500", "hogs"], &[MPROTECT]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

test!(a_bystanders_atomics_on_mprotect_open_no_page_for_a_violating_read_modify_write);
/// Regression (docs/rollback.md, "Known limits"): the `counter` trial with
/// atomic read-modify-writes on both sides, the common case in real
/// programs (`Arc` counts, `Mutex`, atomics). A plain thread counts in
/// words of a main-heap page with `fetch_add` (`lock xadd`), an unused
/// `fetch_add` (`lock inc`), `compare_exchange` (`lock cmpxchg`), `swap`
/// (`xchg`) and `fetch_or` (a `lock cmpxchg` loop) while each phase's
/// task makes `lock inc`, `lock add` and `xchg` violations on other words
/// of that page (the fixture's `atomics`, 400 phases). Each of them was
/// stepped with the page open to every thread: on main 95 to 115 of 400
/// phases returned `Ok` with a violating store kept, and in 2 runs of 3
/// the workers' diffs undid 25,143 and 31,949 of the bystander's counts.
/// Now they are performed without opening the page: every phase `Err`,
/// every violating word back at 0, every atomic of the bystander returns
/// the value it expects and no count is lost. Also the regression of the
/// freeze's order (trap/freeze.rs): a store of the last phase performed
/// while the next freeze had marked the heap but not yet protected it
/// lost the second bystander's counts in the shared word (15 runs of 20
/// on an AMD EPYC VM, CI on 2026-12-07).
fn a_bystanders_atomics_on_mprotect_open_no_page_for_a_violating_read_modify_write() {
    let out = scenario(&["atomics", "400"], &[MPROTECT]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

test!(a_bystanders_copies_on_mprotect_open_no_page_for_a_violating_copy);
/// Regression (docs/rollback.md, "Known limits"): the `counter` trial with
/// libc's `memcpy` on both sides (the fixture's `copies`, 300 phases):
/// glibc copies with AVX or AVX-512 moves below its `rep movsb` threshold
/// where the CPU has them, which the handler stepped until 2026-12-07,
/// opening the page to every thread. Every phase `Err` with the task's
/// copy undone, and no copy of the bystander found changed.
fn a_bystanders_copies_on_mprotect_open_no_page_for_a_violating_copy() {
    let out = scenario(&["copies", "300"], &[MPROTECT]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

test!(a_bystanders_atomics_on_pkey_let_no_violating_store_through, needs: [Pkey]);
fn a_bystanders_atomics_on_pkey_let_no_violating_store_through() {
    scenario(&["atomics", "400"], &[PKEY]);
}

test!(a_child_after_fork_performs_stores_in_its_own_memory_mprotect);
/// The handler performs stores on `mprotect` through a `/proc/self/mem`
/// descriptor, which a child after `fork` inherits and which there still
/// refers to the parent's memory: a bystander's store and a violation in
/// a child with a runtime of its own, then in the parent, each landing
/// (or undone) in its own process only (the fixture's `fork-stores`).
fn a_child_after_fork_performs_stores_in_its_own_memory_mprotect() {
    scenario(&["fork-stores"], &[MPROTECT]);
}

test!(a_child_after_fork_performs_stores_in_its_own_memory_pkey, needs: [Pkey]);
fn a_child_after_fork_performs_stores_in_its_own_memory_pkey() {
    scenario(&["fork-stores"], &[PKEY]);
}

test!(a_bystanders_stores_on_pkey_let_no_violating_store_through, needs: [Pkey]);
fn a_bystanders_stores_on_pkey_let_no_violating_store_through() {
    scenario(&["counter", "400"], &[PKEY]);
}

/// A heap named `name` and the address of a live block of `len` bytes in
/// it, aligned to a page: the frozen pages of the `mprotect` store tests.
fn heap_with_block(name: &'static str, len: usize) -> (Heap, usize) {
    let heap = Heap::builder().name(name).max(16 << 20).build().unwrap();
    let block = heap
        .try_alloc(std::alloc::Layout::from_size_align(len, 4096).unwrap())
        .unwrap()
        .as_ptr() as usize;
    (heap, block)
}

/// A runtime of two workers guarding `heap` alone, on `mprotect`; the
/// caller sets a policy if it needs one and builds it.
fn on_mprotect(heap: &Heap) -> frostheap::RuntimeBuilder {
    Runtime::builder()
        .workers(2)
        .guard(heap)
        .guard_main_heap(false)
        .protect(frostheap::Protect::Mprotect)
}

/// Runs `run` on the calling worker or, as a bystander, on a thread it
/// starts (no worker: its stores into frozen heaps are legal) and joins.
fn as_worker_or_bystander(bystander: bool, run: impl FnOnce() + Send) {
    if bystander {
        std::thread::scope(|s| {
            s.spawn(run);
        });
    } else {
        run();
    }
}

/// Phases of the step window's test: a worker violates the first half of
/// a page with `violate` again and again while a bystander thread writes
/// each word of the second half once, until `stop(windows, phases)`.
/// Checks that every word holds its original value or one a thread stored
/// there, and returns (bystander stores undone, violating stores that
/// survived, phases).
fn step_window(
    violate: fn(*mut u64),
    stop: impl Fn(usize, usize) -> bool,
) -> (usize, usize, usize) {
    step_window_in(&ONE_PAGE, violate, stop)
}

/// Where [`step_window_in`] has each thread store, in words of a block of
/// `pages` pages: the worker calls `violate` with each word of `at` in
/// turn, and its stores reach the words of `reach`; the bystander writes
/// each word of `bystander` outside `reach` once.
struct WindowLayout {
    pages: usize,
    at: core::ops::Range<usize>,
    reach: core::ops::Range<usize>,
    bystander: core::ops::Range<usize>,
}

/// The step window's test: one page, the worker in its first half.
const ONE_PAGE: WindowLayout = WindowLayout {
    pages: 1,
    at: 0..256,
    reach: 0..256,
    bystander: 0..512,
};

/// [`step_window`] on the block `layout` describes.
fn step_window_in(
    layout: &WindowLayout,
    violate: fn(*mut u64),
    stop: impl Fn(usize, usize) -> bool,
) -> (usize, usize, usize) {
    let words = layout.pages * 512;
    let (heap, page) = heap_with_block("window", 4096 * layout.pages);
    let word = |k: usize| page + 8 * k;
    let original = |k: usize| 0x5EED_0000_0000 + k as u64;
    let bystanders = || {
        layout
            .bystander
            .clone()
            .filter(|k| !layout.reach.contains(k))
    };
    let rt = on_mprotect(&heap)
        .on_violation(frostheap::OnViolation::Rollback)
        .build()
        .unwrap();
    let mut windows = 0usize;
    let mut survived = 0usize;
    let mut phases = 0usize;
    while !stop(windows, phases) {
        phases += 1;
        for k in 0..words {
            // SAFETY: `page` is a live block of `words` words; no phase runs.
            unsafe { (word(k) as *mut u64).write(original(k)) };
        }
        let go = AtomicUsize::new(0);
        let r = std::thread::scope(|s| {
            // The bystander: no worker, so its stores are legal.
            s.spawn(|| {
                while go.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                for k in bystanders() {
                    // SAFETY: inside the live block; a legal store.
                    unsafe { (word(k) as *mut u64).write_volatile(!original(k)) };
                }
                go.store(2, Ordering::Release);
            });
            rt.map(0..2usize, |i| {
                if i == 0 {
                    go.store(1, Ordering::Release);
                    let mut j = 0;
                    while go.load(Ordering::Acquire) != 2 {
                        // The violation under test.
                        violate(word(layout.at.start + j % layout.at.len()) as *mut u64);
                        j += 1;
                    }
                }
                i
            })
        });
        let e = r.expect_err("the worker's stores are violations");
        assert!(e.violation().is_some_and(|v| v.stores_undone() >= 1), "{e}");
        for k in layout.reach.clone() {
            // SAFETY: reading the live block.
            let v = unsafe { (word(k) as *const u64).read() };
            assert!(
                v == original(k) || v == u64::MAX,
                "phase {phases}: word {k} holds {v:#x}, neither the original nor the violator's"
            );
            survived += usize::from(v == u64::MAX);
        }
        for k in bystanders() {
            // SAFETY: reading the live block.
            let v = unsafe { (word(k) as *const u64).read() };
            assert!(
                v == !original(k) || v == original(k),
                "phase {phases}: word {k} holds {v:#x}, neither the original nor the bystander's"
            );
            windows += usize::from(v == original(k));
        }
    }
    (windows, survived, phases)
}

/// [`step_window`] with `violate` as the worker's store, for a store the
/// handler performs: in 150 phases no bystander store is undone and no
/// violating store survives.
fn no_step_window_in_150_phases(violate: fn(*mut u64)) {
    no_step_window_in_150_phases_in(&ONE_PAGE, violate);
}

/// [`no_step_window_in_150_phases`] on the block `layout` describes.
fn no_step_window_in_150_phases_in(layout: &WindowLayout, violate: fn(*mut u64)) {
    let (windows, survived, phases) = step_window_in(layout, violate, |_, p| p >= 150);
    println!("{phases} phases: {windows} bystander store(s) undone, {survived} violating survived");
    assert_eq!(
        (windows, survived),
        (0, 0),
        "bystander stores undone and violating stores kept in {phases} phases"
    );
}

test!(mprotect_stores_a_bystander_makes_land_exactly_as_the_instructions_write_them);
/// The stores the handler performs on `mprotect` (trap/decode.rs,
/// trap/emulate.rs) write what the instruction would: a thread started by
/// a task (a bystander) makes one store of each kind into a frozen page,
/// in one `asm!` block (so a wrong instruction length would run the next
/// one from its middle): a high-byte register, 16-, 32- and 64-bit
/// immediates (sign-extended), `movnti`, SSE stores from `xmm0`
/// (`movups`, `movhps`, `movd`, `movdqa`), and a REX byte register with a
/// scaled index. Every byte after the phase is the one stored, and no
/// other changed.
fn mprotect_stores_a_bystander_makes_land_exactly_as_the_instructions_write_them() {
    use core::arch::x86_64::__m128i;
    let (heap, page) = heap_with_block("moves", 4096);
    // SAFETY: the live 4096-byte block; no phase runs.
    unsafe { std::ptr::write_bytes(page as *mut u8, 0x5A, 4096) };
    let rt = on_mprotect(&heap).build().unwrap();
    let x: [u8; 16] = core::array::from_fn(|i| 0xA0 + i as u8);
    let r = rt.map(0..2usize, |i| {
        if i == 0 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: an unaligned load of 16 bytes from an array.
                    let xmm: __m128i = unsafe { core::mem::transmute(x) };
                    // SAFETY: every store lies in the first 96 bytes of the
                    // live, 16-aligned block; legal stores by no worker.
                    unsafe {
                        core::arch::asm!(
                            "mov byte ptr [rdi], ah",
                            "mov word ptr [rdi + 2], 0xBEEF",
                            "mov dword ptr [rdi + 4], -2",
                            "mov qword ptr [rdi + 8], -3",
                            "movnti qword ptr [rdi + 16], rax",
                            "movups xmmword ptr [rdi + 24], xmm0",
                            "movhps qword ptr [rdi + 40], xmm0",
                            "movd dword ptr [rdi + 48], xmm0",
                            "mov byte ptr [rdi + rcx * 4 + 52], sil",
                            "movdqa xmmword ptr [rdi + 64], xmm0",
                            in("rdi") page,
                            in("rax") 0x1234u64,
                            in("rcx") 1u64,
                            in("rsi") 0x77u64,
                            in("xmm0") xmm,
                            options(nostack),
                        );
                    }
                });
            });
        }
        i
    });
    assert_eq!(r.expect("a bystander's stores are no violation"), [0, 1]);
    let mut want = [0x5Au8; 96];
    want[0] = 0x12;
    want[2..4].copy_from_slice(&0xBEEFu16.to_le_bytes());
    want[4..8].copy_from_slice(&(-2i32).to_le_bytes());
    want[8..16].copy_from_slice(&(-3i64).to_le_bytes());
    want[16..24].copy_from_slice(&0x1234u64.to_le_bytes());
    want[24..40].copy_from_slice(&x);
    want[40..48].copy_from_slice(&x[8..]);
    want[48..52].copy_from_slice(&x[..4]);
    want[56] = 0x77;
    want[64..80].copy_from_slice(&x);
    // SAFETY: reading the live block, thawed.
    let got = unsafe { std::slice::from_raw_parts(page as *const u8, 96) };
    assert_eq!(got, want);
    // SAFETY: as above.
    let rest = unsafe { std::slice::from_raw_parts((page + 96) as *const u8, 4096 - 96) };
    assert!(rest.iter().all(|&b| b == 0x5A), "a byte past the stores changed");
}

test!(mprotect_string_stores_of_a_bystander_and_a_violator_land_page_by_page_exactly);
/// String stores (`rep movs`, `rep stos`: glibc's `memcpy` and `memset`
/// from a few KiB up) into a frozen page are performed by the handler a
/// page at a time (trap/string.rs). Stepped, they trapped after every
/// iteration, a fault per byte: a bystander's copy of 100 KiB into a
/// frozen heap took seconds. A bystander copies 12,345 bytes across four
/// pages with `rep movsb`, fills two pages and a word with `rep stosq`
/// and one word with a plain `movsq`, from an unaligned start; every byte
/// after the phase is the one the instructions wrote, and no other
/// changed. Then a worker's `rep stosb` across two pages of the same heap,
/// a violation under rollback: `Err`, and every byte back.
fn mprotect_string_stores_of_a_bystander_and_a_violator_land_page_by_page_exactly() {
    const LEN: usize = 8 * 4096;
    let (heap, base) = heap_with_block("strings", LEN);
    let original = |i: usize| (i * 7 + 3) as u8;
    // SAFETY: the live block of LEN bytes; no phase runs.
    let block = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, LEN) };
    for (i, b) in block.iter_mut().enumerate() {
        *b = original(i);
    }
    let rt = on_mprotect(&heap).build().unwrap();
    let src: Vec<u8> = (0..12_345usize).map(|i| (i % 251) as u8 ^ 0xC3).collect();
    let (copy_at, fill_at, one_at) = (base + 3, base + 5 * 4096 - 8, base + 7 * 4096 + 64);
    let fill = 0x1122_3344_5566_7788u64;
    let r = rt.map(0..2usize, |i| {
        if i == 0 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: every destination lies inside the live block
                    // (copy: [3, 12,348); fill: two pages and a word from
                    // 5 pages less 8 bytes; one word at 7 pages + 64), the
                    // source inside `src` and the block's last word; legal
                    // stores by no worker, the direction flag clear (the
                    // ABI's state at any call).
                    unsafe {
                        core::arch::asm!(
                            "rep movsb",
                            inout("rdi") copy_at => _,
                            inout("rsi") src.as_ptr() => _,
                            inout("rcx") src.len() => _,
                            options(nostack, preserves_flags),
                        );
                        core::arch::asm!(
                            "rep stosq",
                            inout("rdi") fill_at => _,
                            inout("rcx") 2 * 512 + 1 => _,
                            in("rax") fill,
                            options(nostack, preserves_flags),
                        );
                        core::arch::asm!(
                            "movsq",
                            inout("rdi") one_at => _,
                            inout("rsi") &fill as *const u64 => _,
                            options(nostack, preserves_flags),
                        );
                    }
                });
            });
        }
        i
    });
    assert_eq!(r.expect("a bystander's stores are no violation"), [0, 1]);
    let mut want: Vec<u8> = (0..LEN).map(original).collect();
    want[3..3 + src.len()].copy_from_slice(&src);
    let f = fill_at - base;
    for k in 0..(2 * 512 + 1) {
        want[f + 8 * k..f + 8 * k + 8].copy_from_slice(&fill.to_le_bytes());
    }
    let o = one_at - base;
    want[o..o + 8].copy_from_slice(&fill.to_le_bytes());
    // SAFETY: reading the live block, thawed.
    let got = unsafe { std::slice::from_raw_parts(base as *const u8, LEN) };
    let first_wrong = got.iter().zip(&want).position(|(g, w)| g != w);
    assert_eq!(first_wrong, None, "the block differs from the stores");
    // A worker's string store across two pages: a violation, undone.
    let before = got.to_vec();
    let r = rt.map(0..2usize, |i| {
        if i == 0 {
            // SAFETY: [base + 4000, base + 4000 + 6000) lies in the live
            // block; the violation under test.
            unsafe {
                core::arch::asm!(
                    "rep stosb",
                    inout("rdi") base + 4000 => _,
                    inout("rcx") 6000usize => _,
                    in("al") 0xEEu8,
                    options(nostack, preserves_flags),
                );
            }
        }
        i
    });
    let e = r.expect_err("a worker's string store is a violation");
    assert!(e.violation().is_some_and(|v| v.stores_undone() >= 1), "{e}");
    // SAFETY: reading the live block, thawed and restored.
    let after = unsafe { std::slice::from_raw_parts(base as *const u8, LEN) };
    assert!(after == &before[..], "the violating string store was not undone whole");
}

/// The read-modify-writes of [`rmw_forms`], one per line: each runs with
/// its flags preset (all six arithmetic flags set or clear), and after it
/// the flags and rax, rcx, rdx, r8..r11 are saved in `out`'s next 8 words.
const RMW_FORMS: usize = 32;

/// The words of the page [`rmw_forms`] starts from.
fn rmw_page_start() -> [u64; 40] {
    let mut w = [0u64; 40];
    let init: [(usize, u64); 33] = [
        (0, u64::MAX),
        (1, 1),
        (2, 1),
        (3, 0x01),
        (4, 0x7FFF_FFFF_FFFF_FFFF),
        (5, 0),
        (6, 0xFF),
        (7, 0x8000_0000_0000_0000),
        (8, 3),
        (9, 0xF0F0),
        (10, 0x10),
        (11, 0x5555_5555_5555_5555),
        (12, 0),
        (13, 0x1234_5677),
        (14, 0xFFFF_FFFF_F000_0000),
        (15, 0xDEAD_BEEF),
        (16, 0x42),
        (17, 0x1357),
        (18, 0x9999_9999_0000_0008),
        (19, 0x56),
        (20, 1),
        (21, 0x0F0F_0F0F),
        (22, 0x8000),
        (23, 0),
        (24, 0),
        (25, 0x20),
        (26, 0),
        (27, 0x7E57),
        (28, 0xAAAA),
        (29, 0xBBBB),
        (30, 5),
        (31, 6),
        (33, 0x7FFF_FFF8_0000_0000),
    ];
    for (k, v) in init {
        w[k] = v;
    }
    w[34] = 7;
    w[35] = 0x80;
    w[36] = 0x1234;
    w
}

/// Runs 32 read-modify-writes on `page` (16-aligned, 320 bytes), saving
/// the flags and registers after each in `out`: every form the handler
/// performs on `mprotect` (lock xadd at 8/16/32/64 bits and into `ah`;
/// inc, dec, add, sub, and, or, xor, adc, sbb to memory from registers
/// and 8-bit, 16-bit and 32-bit immediates, locked and not; xchg; lock
/// cmpxchg succeeding and failing; neg, not; lock bts with a register
/// offset past its word, btr with an immediate, btc with a negative
/// offset; cmpxchg16b succeeding and failing; a scaled index).
///
/// # Safety
/// 1. `page` is valid for reads and writes of 320 bytes, 16-aligned;
///    `out` for writes of `8 * RMW_FORMS` words.
#[inline(never)]
unsafe fn rmw_forms(page: *mut u8, out: *mut u64) {
    // SAFETY: by (1); every form reads and writes the page's first 320
    // bytes only (the bit offsets included), the captures `out`; rbx is
    // pushed and popped around its use, flags left with DF clear.
    unsafe {
        core::arch::asm!(
            "xor eax, eax\n xor ecx, ecx\n xor edx, edx\n xor r8d, r8d\n xor r9d, r9d\n xor r10d, r10d\n xor r11d, r11d",
            "push 0x0\n popfq\n mov rax, 1\n lock xadd qword ptr [rdi], rax",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n mov rcx, 0xFFFFFFFF7FFFFFFF\n lock xadd dword ptr [rdi + 8], ecx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rdx, 0x1234567890ABFFFF\n lock xadd word ptr [rdi + 16], dx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rax, 0x1111111111117F22\n lock xadd byte ptr [rdi + 24], ah",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x1\n popfq\n lock inc qword ptr [rdi + 32]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n lock dec dword ptr [rdi + 40]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n inc byte ptr [rdi + 48]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov r8, 0x8000000000000000\n lock add qword ptr [rdi + 56], r8",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n lock sub dword ptr [rdi + 64], 5",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n lock and word ptr [rdi + 72], 0x0FF0",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n lock or byte ptr [rdi + 80], 0x81",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n lock xor qword ptr [rdi + 88], -2",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x1\n popfq\n mov r9, -1\n adc qword ptr [rdi + 96], r9",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x1\n popfq\n mov r10, 0x12345678\n sbb dword ptr [rdi + 104], r10d",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n add qword ptr [rdi + 112], 0x12345678",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n mov r11, 0x0123456789ABCDEF\n xchg qword ptr [rdi + 120], r11",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rcx, 0xAAAAAAAAAAAAAA55\n xchg byte ptr [rdi + 128], cl",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rax, qword ptr [rdi + 136]\n mov rcx, 0x5555\n lock cmpxchg qword ptr [rdi + 136], rcx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n mov rax, 0xFFFFFFFF00000000\n mov rcx, 0x77\n lock cmpxchg dword ptr [rdi + 144], ecx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rax, 0x1234\n mov rcx, 0x99\n lock cmpxchg byte ptr [rdi + 152], cl",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n neg qword ptr [rdi + 160]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n lock not dword ptr [rdi + 168]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n lock neg word ptr [rdi + 176]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rax, 67\n lock bts qword ptr [rdi + 184], rax",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n lock btr dword ptr [rdi + 200], 5",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rcx, -1\n lock btc word ptr [rdi + 208], cx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n mov rax, qword ptr [rdi + 224]\n mov rdx, qword ptr [rdi + 232]\n push rbx\n mov rbx, 0x1111\n mov rcx, 0x2222\n lock cmpxchg16b xmmword ptr [rdi + 224]\n pop rbx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rax, 1\n mov rdx, 2\n push rbx\n mov rbx, 3\n mov rcx, 4\n lock cmpxchg16b xmmword ptr [rdi + 240]\n pop rbx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov rcx, 3\n mov edx, 0x10\n lock add dword ptr [rdi + rcx * 4 + 256], edx",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov r8, 0x8877665544332211\n lock xadd qword ptr [rdi + 272], r8",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x8d5\n popfq\n lock dec byte ptr [rdi + 280]",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            "push 0x0\n popfq\n mov r9, 0x8000\n lock sub word ptr [rdi + 288], r9w",
            "pushfq\n pop qword ptr [rsi]\n mov [rsi + 8], rax\n mov [rsi + 16], rcx\n mov [rsi + 24], rdx\n mov [rsi + 32], r8\n mov [rsi + 40], r9\n mov [rsi + 48], r10\n mov [rsi + 56], r11\n add rsi, 64",
            inout("rdi") page => _,
            inout("rsi") out => _,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
}

/// The flags and registers [`rmw_forms`] saved, form by form, with the
/// arithmetic flags alone (CF, PF, AF, ZF, SF, OF) of each RFLAGS.
fn rmw_results(out: &[u64]) -> Vec<[u64; 8]> {
    out.chunks(8)
        .map(|c| {
            let mut r: [u64; 8] = c.try_into().unwrap();
            r[0] &= 0x8D5;
            r
        })
        .collect()
}

test!(mprotect_read_modify_writes_land_exactly_as_the_instructions_compute_them);
/// The read-modify-writes the handler performs on `mprotect`
/// (trap/rmw.rs) leave memory, registers and flags as the instruction
/// does: [`rmw_forms`]' 32 forms run on a frozen page by a thread a task
/// starts (a bystander: they land), by a worker under `audit` (they land)
/// and under `rollback` (undone, the phase `Err`), against the same forms
/// run on an ordinary page. Memory must equal the ordinary page's
/// (rollback: the page as it was), and every saved register and
/// arithmetic flag the ordinary run's, form by form.
fn mprotect_read_modify_writes_land_exactly_as_the_instructions_compute_them() {
    #[repr(C, align(4096))]
    struct Page([u64; 512]);
    let start = rmw_page_start();
    let mut reference = Box::new(Page([0; 512]));
    reference.0[..40].copy_from_slice(&start);
    let mut want_out = vec![0u64; 8 * RMW_FORMS];
    // SAFETY: a 4096-byte aligned page of ours, an output of the size.
    unsafe { rmw_forms(reference.0.as_mut_ptr().cast(), want_out.as_mut_ptr()) };
    let want = rmw_results(&want_out);
    assert_ne!(reference.0[..40], start, "the forms change the page");

    let (heap, page) = heap_with_block("rmw", 4096);
    for (who, policy) in [
        ("a bystander", frostheap::OnViolation::Rollback),
        ("a worker under audit", frostheap::OnViolation::Audit),
        ("a worker under rollback", frostheap::OnViolation::Rollback),
    ] {
        // SAFETY: the live 4096-byte block; no phase runs.
        let words = unsafe { std::slice::from_raw_parts_mut(page as *mut u64, 512) };
        words.fill(0x5A5A_5A5A_5A5A_5A5A);
        words[..40].copy_from_slice(&start);
        let rt = on_mprotect(&heap).on_violation(policy).build().unwrap();
        let bystander = who == "a bystander";
        let got_out = std::sync::Mutex::new(vec![0u64; 8 * RMW_FORMS]);
        let r = rt.map(0..2usize, |i| {
            if i == 0 {
                let run = || {
                    let mut out = [0u64; 8 * RMW_FORMS];
                    // SAFETY: the live, 4096-aligned block; `out` is ours.
                    unsafe { rmw_forms(page as *mut u8, out.as_mut_ptr()) };
                    got_out.lock().unwrap().copy_from_slice(&out);
                };
                as_worker_or_bystander(bystander, run);
            }
            i
        });
        let got = rmw_results(&got_out.lock().unwrap());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, w,
                "{who}: form {k}: flags and rax, rcx, rdx, r8..r11 differ from the instruction's"
            );
        }
        // SAFETY: reading the live block, thawed.
        let words = unsafe { std::slice::from_raw_parts(page as *const u64, 512) };
        match policy {
            frostheap::OnViolation::Rollback if !bystander => {
                let e = r.expect_err("the worker's stores are violations");
                let v = e.violation().expect("a violation");
                assert!(v.stores_undone() >= 1, "{e}");
                assert_eq!(words[..40], start, "{who}: every store undone");
            }
            _ => {
                assert_eq!(r.expect("no violation, or audit's Ok"), [0, 1]);
                assert_eq!(words[..40], reference.0[..40], "{who}: memory as the instructions left it");
            }
        }
        assert!(
            words[40..].iter().all(|&w| w == 0x5A5A_5A5A_5A5A_5A5A),
            "{who}: a word past the forms changed"
        );
    }
}

test!(mprotect_step_window_undoes_a_bystanders_store_made_inside_it_and_nothing_else);
/// The known limit of rollback on `mprotect` that remains
/// (docs/rollback.md): a violating store the handler cannot perform itself
/// (here an MMX `movq`: MMX stores are not decoded) is let through by
/// opening its page for one instruction, to every thread. A thread that
/// is no worker and stores to that page in that instant does not fault;
/// its store lands inside the step's window, is taken for part of the
/// violation, and is undone.
///
/// A worker stores words of the first half of a page again and again while
/// a bystander thread writes each word of the second half once. Outside
/// the windows the bystander's stores fault and are performed by the
/// handler and stay. The test shows the window (phases run until some
/// bystander store has been undone: at most 400 phases, each a few
/// milliseconds), and that in every phase every word holds either its
/// original value or the value a thread stored there, every bystander
/// store that is not undone intact, and every violating store undone: the
/// bystander's stores (plain moves) never open the page, so no violating
/// store gets through one of their steps (until 2026-12-06 the window's
/// other side, seen under QEMU/TCG). Until read-modify-writes and string
/// stores were performed too, the violating store here was an `xchg`
/// (`AtomicU64::swap`), then a `rep stosq`, then an AVX `vmovq`; none
/// opens the page now.
fn mprotect_step_window_undoes_a_bystanders_store_made_inside_it_and_nothing_else() {
    fn mmx_store(p: *mut u64) {
        // SAFETY: `p` is a word of the live block: one 8-byte store there,
        // from mm0 (every x86_64 CPU has MMX); `emms` leaves the x87 state
        // as the ABI wants it.
        unsafe {
            core::arch::asm!(
                "movq mm0, rax",
                "movq qword ptr [rdi], mm0",
                "emms",
                in("rdi") p,
                in("rax") u64::MAX,
                out("mm0") _,
                options(nostack),
            );
        }
    }
    let (windows, survived, phases) = step_window(mmx_store, |w, p| w > 0 || p >= 400);
    println!(
        "the step window undid {windows} bystander store(s) in {phases} phase(s); \
         {survived} violating store(s) survived"
    );
    assert!(
        windows > 0,
        "no bystander store fell inside a step's window in {phases} phases"
    );
    assert_eq!(survived, 0, "a violating store survived its phase");
}

test!(mprotect_plain_stores_of_a_bystander_and_a_violator_on_one_page_are_exact);
/// Regression (docs/rollback.md, the `mprotect` step window): the same as
/// the step window's test with plain stores on both sides (`mov`), which
/// the handler performs without opening the page: in 150 phases no
/// bystander store is undone and no violating store survives. Until
/// 2026-12-06 both sides opened the page for one instruction, and within
/// 150 phases some bystander store was undone inside a worker's step.
fn mprotect_plain_stores_of_a_bystander_and_a_violator_on_one_page_are_exact() {
    fn store(p: *mut u64) {
        // SAFETY: `p` is a word of the live block.
        unsafe { p.write_volatile(u64::MAX) };
    }
    no_step_window_in_150_phases(store);
}

test!(mprotect_avx_stores_of_a_bystander_and_a_violator_on_one_page_are_exact, needs: [Avx2]);
/// Regression (docs/rollback.md, the `mprotect` step window): the step
/// window's test with an AVX store (`vmovq` from xmm0, VEX-encoded) as the
/// violation, which the handler now performs without opening the page: in
/// 150 phases no bystander store is undone and no violating store
/// survives. Until 2026-12-07 VEX stores were stepped, and this was the
/// window test's violation (some bystander store undone within 400
/// phases).
fn mprotect_avx_stores_of_a_bystander_and_a_violator_on_one_page_are_exact() {
    fn vex_store(p: *mut u64) {
        // SAFETY: `p` is a word of the live block: one 8-byte store there,
        // from xmm0 (the test runs where the CPU has AVX).
        unsafe {
            core::arch::asm!(
                "vmovq xmm0, rax",
                "vmovq qword ptr [rdi], xmm0",
                in("rdi") p,
                in("rax") u64::MAX,
                out("xmm0") _,
                options(nostack),
            );
        }
    }
    no_step_window_in_150_phases(vex_store);
}

test!(mprotect_extracts_of_a_bystander_and_a_violator_on_one_page_are_exact, needs: [Avx2]);
/// The same with an element extract as the violation (`pextrq [rdi],
/// xmm0, 1`, SSE4.1: the upper quadword of xmm0), which the handler
/// performs too: no window in 150 phases.
fn mprotect_extracts_of_a_bystander_and_a_violator_on_one_page_are_exact() {
    fn extract(p: *mut u64) {
        // SAFETY: `p` is a word of the live block: one 8-byte store there,
        // from xmm0's upper half (the test runs where the CPU has AVX2,
        // and so SSE4.1).
        unsafe {
            core::arch::asm!(
                "pinsrq xmm0, rax, 1",
                "pextrq qword ptr [rdi], xmm0, 1",
                in("rdi") p,
                in("rax") u64::MAX,
                out("xmm0") _,
                options(nostack),
            );
        }
    }
    no_step_window_in_150_phases(extract);
}

test!(mprotect_a_store_across_two_frozen_pages_opens_no_window);
/// The step window's test on two pages, with a 16-byte `movups` across
/// their boundary as the violation (the last word of the first page and
/// the first of the second), the bystander writing the 254 words around
/// them in both: the handler performs a plain move across two pages of one
/// frozen heap as one write, so in 150 phases no bystander store is
/// undone and no violating store survives. Until 2026-12-07 such a store
/// was stepped, opening both pages to every thread (a bystander's store
/// to the first page inside the step undone with the violation's diff):
/// glibc's `memcpy` and `memset` make such stores at a buffer's unaligned
/// head and tail.
fn mprotect_a_store_across_two_frozen_pages_opens_no_window() {
    fn across(p: *mut u64) {
        // SAFETY: `p` is the last word of the block's first page and the
        // word after it is the first of its second: one 16-byte store
        // across the two, of all ones.
        unsafe {
            core::arch::asm!(
                "pcmpeqd xmm0, xmm0",
                "movups xmmword ptr [rdi], xmm0",
                in("rdi") p,
                out("xmm0") _,
                options(nostack),
            );
        }
    }
    const ACROSS: WindowLayout = WindowLayout {
        pages: 2,
        at: 511..512,
        reach: 511..513,
        bystander: 384..640,
    };
    no_step_window_in_150_phases_in(&ACROSS, across);
}

test!(mprotect_avx512_masked_stores_of_a_bystander_and_a_violator_on_one_page_are_exact, needs: [Avx512bw]);
/// The same with an AVX-512 store under an opmask as the violation
/// (`vmovdqu8 [rdi]{k1}, zmm16` with the mask selecting 8 of its 64
/// bytes, as glibc's `memset` ends a buffer on such CPUs): performed, so
/// no window in 150 phases; a mask ignored would write the next seven
/// words too, the bystander's half among them.
fn mprotect_avx512_masked_stores_of_a_bystander_and_a_violator_on_one_page_are_exact() {
    fn evex_store(p: *mut u64) {
        // SAFETY: `p` is a word of the live block, and the mask selects
        // its 8 bytes alone (the rest neither written nor read); the test
        // runs where the CPU has AVX-512F, BW and VL. The registers used
        // are caller-saved, which `clobber_abi` declares.
        unsafe {
            core::arch::asm!(
                "vpternlogd zmm16, zmm16, zmm16, 0xFF",
                "mov eax, 0xFF",
                "kmovq k1, rax",
                "vmovdqu8 zmmword ptr [rdi]{{k1}}, zmm16",
                in("rdi") p,
                clobber_abi("C"),
                options(nostack),
            );
        }
    }
    no_step_window_in_150_phases(evex_store);
}

/// Runs `forms` (stores into the two 4096-byte pages it is given, from the
/// 128 bytes of `VECTOR_SOURCE`) on ordinary pages and on frozen pages of
/// a guarded heap on `mprotect`: by a thread a task starts (a bystander:
/// they land), by a worker under audit (they land) and by one under
/// rollback (undone, the phase `Err`). Every byte of the frozen pages must
/// equal the ordinary pages' (rollback: the pages as they were); the forms
/// must change more than `min_changed` bytes.
fn forms_land_exactly(min_changed: usize, forms: unsafe fn(*mut u8, *const u8)) {
    const LEN: usize = 8192;
    #[repr(C, align(4096))]
    struct Pages([u8; LEN]);
    const VECTOR_SOURCE: [u8; 128] = {
        let mut b = [0u8; 128];
        let mut i = 0;
        while i < 128 {
            b[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
            i += 1;
        }
        b
    };
    let mut reference = Box::new(Pages([0x5A; LEN]));
    // SAFETY: two 4096-aligned pages of ours and 128 readable bytes.
    unsafe { forms(reference.0.as_mut_ptr(), VECTOR_SOURCE.as_ptr()) };
    let changed = reference.0.iter().filter(|&&b| b != 0x5A).count();
    assert!(changed > min_changed, "the forms change the pages ({changed} bytes)");

    let (heap, page) = heap_with_block("vectors", LEN);
    for (who, policy) in [
        ("a bystander", frostheap::OnViolation::Rollback),
        ("a worker under audit", frostheap::OnViolation::Audit),
        ("a worker under rollback", frostheap::OnViolation::Rollback),
    ] {
        // SAFETY: the live block of two pages; no phase runs.
        unsafe { std::ptr::write_bytes(page as *mut u8, 0x5A, LEN) };
        let rt = on_mprotect(&heap).on_violation(policy).build().unwrap();
        let bystander = who == "a bystander";
        let r = rt.map(0..2usize, |i| {
            if i == 0 {
                // SAFETY: the live, 4096-aligned block and the source.
                let run = || unsafe { forms(page as *mut u8, VECTOR_SOURCE.as_ptr()) };
                as_worker_or_bystander(bystander, run);
            }
            i
        });
        // SAFETY: reading the live block, thawed.
        let got = unsafe { std::slice::from_raw_parts(page as *const u8, LEN) };
        let want: &[u8] = match policy {
            frostheap::OnViolation::Rollback if !bystander => {
                let e = r.expect_err("the worker's stores are violations");
                assert!(e.violation().is_some_and(|v| v.stores_undone() >= 1), "{e}");
                &[0x5A; LEN]
            }
            _ => {
                assert_eq!(r.expect("no violation, or audit's Ok"), [0, 1]);
                &reference.0
            }
        };
        let wrong: Vec<usize> = (0..LEN).filter(|&b| got[b] != want[b]).collect();
        assert!(
            wrong.is_empty(),
            "{who}: {} byte(s) differ from the instructions' (first at {:?}: {:#04x}, want {:#04x})",
            wrong.len(),
            wrong.first(),
            wrong.first().map_or(0, |&b| got[b]),
            wrong.first().map_or(0, |&b| want[b]),
        );
    }
}

/// [`forms_land_exactly`] for the vector forms, which write the first page.
fn vector_forms_land_exactly(forms: unsafe fn(*mut u8, *const u8)) {
    forms_land_exactly(200, forms);
}

test!(mprotect_stores_across_two_frozen_pages_land_exactly);
/// Stores across the boundary of two frozen pages of one heap, by a
/// bystander and by workers under audit and rollback ([`forms_land_exactly`]):
/// the plain moves the handler performs as one write of both parts
/// (`mov` of 2, 4 and 8 bytes, `movups`, `movdqu`, `movnti`, at several
/// offsets across the boundary) and a read-modify-write it steps (`add`:
/// a split one, which the kernel could write in part), each byte as the
/// instructions write it.
fn mprotect_stores_across_two_frozen_pages_land_exactly() {
    forms_land_exactly(30, across_forms);
}

/// The forms of [`mprotect_stores_across_two_frozen_pages_land_exactly`].
///
/// # Safety
/// `pages` is 8192 writable bytes aligned to 4096, `src` has 128 readable
/// bytes.
unsafe fn across_forms(pages: *mut u8, src: *const u8) {
    // SAFETY: every store lies in the two pages, across their boundary
    // at 4096; the registers are caller-saved (`clobber_abi`).
    unsafe {
        core::arch::asm!(
            "movups xmm0, xmmword ptr [rsi]",
            "movups xmm1, xmmword ptr [rsi + 16]",
            "mov rax, qword ptr [rsi + 32]",
            "movups xmmword ptr [rdi + 4083], xmm0",
            "movdqu xmmword ptr [rdi + 4090], xmm1",
            "mov qword ptr [rdi + 4093], rax",
            "mov dword ptr [rdi + 4094], 0x7BCDEF01",
            "mov word ptr [rdi + 4095], ax",
            "movnti qword ptr [rdi + 4091], rax",
            "add qword ptr [rdi + 4092], rax",
            "movups xmmword ptr [rdi + 4100], xmm0",
            in("rdi") pages,
            in("rsi") src,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// AVX stores of every VEX form the handler performs (trap/decode.rs):
/// 16 and 32 bytes, aligned and not, scalar and half-register ones, a
/// three-byte VEX (base r8), a scaled index, element and lane extracts
/// (SSE4.1 and VEX), 32 bytes ending the first page and 32 across the
/// boundary of the two.
///
/// # Safety
/// `page` is 8192 writable bytes aligned to 4096, `src` has 128 readable
/// bytes, and the CPU has AVX.
unsafe fn vex_forms(page: *mut u8, src: *const u8) {
    // SAFETY: every store lies inside the two pages; the aligned ones are
    // aligned; the registers are caller-saved (`clobber_abi`).
    unsafe {
        core::arch::asm!(
            "vmovdqu ymm0, ymmword ptr [rsi]",
            "vmovdqu ymm9, ymmword ptr [rsi + 32]",
            "vmovups xmmword ptr [rdi], xmm0",
            "vmovups ymmword ptr [rdi + 16], ymm9",
            "vmovupd ymmword ptr [rdi + rcx * 8 + 48], ymm0",
            "vmovss dword ptr [rdi + 96], xmm9",
            "vmovsd qword ptr [rdi + 100], xmm0",
            "vmovaps ymmword ptr [rdi + 128], ymm9",
            "vmovntdq ymmword ptr [rdi + 160], ymm0",
            "vmovdqa xmmword ptr [rdi + 192], xmm9",
            "vmovdqu ymmword ptr [rdi + 209], ymm9",
            "vmovq qword ptr [rdi + 241], xmm0",
            "vmovd dword ptr [rdi + 249], xmm9",
            "vmovhps qword ptr [rdi + 253], xmm0",
            "vmovlpd qword ptr [rdi + 261], xmm9",
            "vmovdqu ymmword ptr [r8 + 300], ymm0",
            "pextrb byte ptr [rdi + 340], xmm9, 13",
            "pextrw word ptr [rdi + 342], xmm0, 5",
            "pextrd dword ptr [rdi + 345], xmm9, 2",
            "pextrq qword ptr [rdi + 350], xmm0, 1",
            "extractps dword ptr [rdi + 360], xmm9, 3",
            "vextractf128 xmmword ptr [rdi + 370], ymm9, 1",
            "vextracti128 xmmword ptr [rdi + 390], ymm0, 1",
            "vpextrb byte ptr [rdi + 410], xmm0, 9",
            "vpextrq qword ptr [rdi + 412], xmm9, 1",
            "vmovdqu ymmword ptr [rdi + 4064], ymm9",
            "vmovdqu ymmword ptr [rdi + 4085], ymm0",
            "sfence",
            "vzeroupper",
            in("rdi") page,
            in("rsi") src,
            in("rcx") 1u64,
            in("r8") page,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// AVX-512 stores of the EVEX forms the handler performs: ZMM, YMM and
/// XMM 16..31, the compressed displacement, opmasks by byte, word, dword
/// and qword (one of them empty: no store, no fault), masked scalars, a
/// non-temporal store, lane and element extracts (masked too), a masked
/// store whose unmasked bytes would run past the first page's end, and
/// stores across the boundary of the two pages (masked and not).
///
/// # Safety
/// `page` is 8192 writable bytes aligned to 4096, `src` has 128 readable
/// bytes, and the CPU has AVX-512F, BW and VL.
unsafe fn evex_forms(page: *mut u8, src: *const u8) {
    // SAFETY: every store lies inside the two pages; the aligned ones are
    // aligned; the registers are caller-saved (`clobber_abi`).
    unsafe {
        core::arch::asm!(
            "vmovdqu64 zmm16, zmmword ptr [rsi]",
            "vmovdqu64 zmm31, zmmword ptr [rsi + 64]",
            "mov rax, 0x00FF0F0FF0F0AA55",
            "kmovq k1, rax",
            "mov eax, 0xA5C3",
            "kmovd k2, eax",
            "mov eax, 0x8001",
            "kmovw k3, eax",
            "mov eax, 0x5A",
            "kmovw k4, eax",
            "kxorw k5, k5, k5",
            "mov eax, 0xFFFF",
            "kmovq k6, rax",
            "vmovdqu64 zmmword ptr [rdi], zmm16",
            "vmovdqu64 ymmword ptr [rdi + 64], ymm31",
            "vmovups xmmword ptr [rdi + 96], xmm16",
            "vmovdqu8 zmmword ptr [rdi + 128]{{k1}}, zmm31",
            "vmovdqu16 ymmword ptr [rdi + 192]{{k2}}, ymm16",
            "vmovdqu32 zmmword ptr [rdi + 256]{{k3}}, zmm31",
            "vmovapd zmmword ptr [rdi + 320]{{k4}}, zmm16",
            "vmovss dword ptr [rdi + 400]{{k1}}, xmm16",
            "vmovsd qword ptr [rdi + 408]{{k5}}, xmm31",
            "vmovq qword ptr [rdi + 420], xmm16",
            "vmovntdq zmmword ptr [rdi + 448], zmm31",
            "vmovdqu64 zmmword ptr [r8 + 512], zmm16",
            "vextractf32x4 xmmword ptr [rdi + 576]{{k1}}, zmm16, 3",
            "vextracti64x4 ymmword ptr [rdi + 640], zmm31, 1",
            "vextracti32x4 xmmword ptr [rdi + 704]{{k3}}, ymm31, 1",
            "vpextrq qword ptr [rdi + 730], xmm16, 1",
            "vpextrb byte ptr [rdi + 740], xmm31, 15",
            "vmovdqu8 zmmword ptr [rdi + 4080]{{k6}}, zmm31",
            "vmovdqu64 zmmword ptr [rdi + 4060], zmm16",
            "vmovdqu8 zmmword ptr [rdi + 4070]{{k1}}, zmm31",
            "sfence",
            "vzeroupper",
            in("rdi") page,
            in("rsi") src,
            in("r8") page,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

test!(mprotect_avx_stores_land_exactly_as_the_instructions_write_them, needs: [Avx2]);
/// The VEX stores the handler performs on `mprotect` (trap/decode.rs,
/// trap/emulate.rs) write what the instructions would, for a bystander,
/// a worker under audit and one under rollback ([`vex_forms`],
/// [`vector_forms_land_exactly`]).
fn mprotect_avx_stores_land_exactly_as_the_instructions_write_them() {
    vector_forms_land_exactly(vex_forms);
}

test!(mprotect_avx512_stores_land_exactly_as_the_instructions_write_them, needs: [Avx512bw]);
/// The same for the EVEX stores ([`evex_forms`]): masked bytes keep what
/// they held, and a mask that keeps a store inside the page makes it one
/// the handler performs.
fn mprotect_avx512_stores_land_exactly_as_the_instructions_write_them() {
    vector_forms_land_exactly(evex_forms);
}

// ---------------------------------------------------------------------------
// Reports (case 9), in this process.

/// Overwrites `dst` with a library call (`memcpy` in libc), so the faulting
/// instruction is not in this crate: only a backtrace names this function.
#[inline(never)]
fn overwrite_the_guarded_block_with_memcpy(dst: *mut u8, src: &[u8]) {
    let len = std::hint::black_box(src.len());
    // SAFETY: `dst` is valid for `len` bytes (a guarded block of that
    // size); the write is the violation under test.
    unsafe { libc::memcpy(dst.cast(), src.as_ptr().cast(), len) };
}

test!(a_violation_inside_a_library_call_reports_the_callers_frames);
/// Regression (case 9): a violation inside std or a C library named only
/// the faulting frame (`memcpy`, `atomic_compare_exchange`), never the
/// user's code that called it. The report now carries a short backtrace
/// of the violating thread, symbolised outside the handler.
fn a_violation_inside_a_library_call_reports_the_callers_frames() {
    let heap = Heap::builder()
        .name("backtrace")
        .max(64 << 20)
        .build()
        .unwrap();
    let mut data: HeapVec<u8, Heap> = HeapVec::new_in(heap.clone());
    data.resize(8192, 0x11);
    let rt = Runtime::builder().workers(2).guard(&heap).build().unwrap();
    let dst = data.as_ptr() as usize;
    let src = vec![0x22u8; 4096];
    let r = rt.map(0..4usize, |i| {
        if i == 1 {
            overwrite_the_guarded_block_with_memcpy(dst as *mut u8, &src);
        }
        i
    });
    let e = r.expect_err("a memcpy into a guarded heap is a violation");
    let report = e.to_string();
    assert!(
        report.contains("overwrite_the_guarded_block_with_memcpy"),
        "the report names the user's function that called memcpy:\n{report}"
    );
    assert!(
        !report.contains("core::iter::"),
        "std's iterator frames between the task and the runtime are left out:\n{report}"
    );
    assert!(data.iter().all(|&b| b == 0x11), "the guarded data is intact");
}

// ---------------------------------------------------------------------------
// A phase returns Ok only if every task ran.

/// Phases of random shape with some tasks writing the guarded heap or
/// panicking: `Ok` only when no task did either, and then with every task
/// run exactly once and every result right.
fn a_phase_returns_ok_only_if_every_task_ran(
    workers: usize,
    n: usize,
    violators: Vec<usize>,
    panickers: Vec<usize>,
) {
    let heap = Heap::builder()
        .name("property")
        .max(16 << 20)
        .build()
        .unwrap();
    let mut data: HeapVec<AtomicU64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..64).map(AtomicU64::new));
    let rt = Runtime::builder()
        .workers(workers)
        .guard(&heap)
        .build()
        .unwrap();
    for round in 0..3 {
        let ran = AtomicUsize::new(0);
        let r = rt.map(0..n, |i| {
            ran.fetch_add(1, Ordering::SeqCst);
            if violators.contains(&i) {
                data[i % 64].fetch_add(1, Ordering::SeqCst);
            }
            if panickers.contains(&i) {
                panic!("task {i} panics");
            }
            i * 3 + round
        });
        let bad = violators.iter().chain(&panickers).any(|&i| i < n);
        match r {
            Ok(v) => {
                assert!(!bad, "round {round}: Ok although a task violated or panicked");
                assert_eq!(ran.load(Ordering::SeqCst), n, "every task ran once");
                assert_eq!(v, (0..n).map(|i| i * 3 + round).collect::<Vec<_>>());
            }
            Err(Error::Violation(_)) => assert!(violators.iter().any(|&i| i < n)),
            Err(Error::TaskPanicked { .. }) => assert!(panickers.iter().any(|&i| i < n)),
            Err(e) => panic!("round {round}: unexpected error {e}"),
        }
        for (k, w) in data.iter().enumerate() {
            assert_eq!(w.load(Ordering::SeqCst), k as u64, "word {k} left a trace");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    fn phase_ok_only_if_every_task_ran(
        workers in 1usize..4,
        n in 0usize..200,
        violators in proptest::collection::vec(0usize..200, 0..2),
        panickers in proptest::collection::vec(0usize..200, 0..2),
    ) {
        a_phase_returns_ok_only_if_every_task_ran(workers, n, violators, panickers);
    }
}
test!(phase_ok_only_if_every_task_ran);
