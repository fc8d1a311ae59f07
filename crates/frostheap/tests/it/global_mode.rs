//! `frostheap::Global`, tested through fixture programs (tests/fixtures/) that install it,
//! run as child processes (a test binary cannot usefully swap its own
//! global allocator): routing by thread and by address, limits from the
//! environment, start-up errors, and the allocation-failure path.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use crate::check::{
    assert_succeeded_saying, describe, fixture, output_within, printed_number, run_fixture,
    MemoryCgroup, MIB,
};

test!(routing_main_heap_other_threads_and_remote_frees);
fn routing_main_heap_other_threads_and_remote_frees() {
    let out = run_fixture("global_routing", &[], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("global_routing: ok"),
        "{}",
        describe(&out)
    );
}

test!(limits_come_from_the_environment);
fn limits_come_from_the_environment() {
    let out = run_fixture(
        "global_routing",
        &[],
        &[("FROSTHEAP_MAX", "1.5GiB"), ("FROSTHEAP_MIN", "32M")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("limit={} ", 3 << 29)),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("min_committed_ok=true"),
        "{}",
        describe(&out)
    );

    let out = run_fixture(
        "global_alloc",
        &["32M"],
        &[("FROSTHEAP_MAX", "64M"), ("FROSTHEAP_HUGE_PAGES", "off")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("limit={}", 64 * MIB)),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains(&format!("allocated={}", 32 * MIB)),
        "{}",
        describe(&out)
    );
}

test!(a_vec_of_60_percent_of_the_limit_grows_to_70_on_the_main_heap_and_a_thread_heap);
/// `Vec::reserve_exact` of a vector of 60% of `FROSTHEAP_MAX` to 70%, a
/// second vector made after it, on the main heap (on base pages:
/// `FROSTHEAP_HUGE_PAGES=off`; laid out for huge pages it is copied,
/// docs/limit.md) and on a thread's heap (always on base pages): the
/// vector's pages move and only its growth is charged, where copying it
/// needed 130% of the limit and aborted. What is committed is what is in
/// use, within a few MiB of start-up's own.
fn a_vec_of_60_percent_of_the_limit_grows_to_70_on_the_main_heap_and_a_thread_heap() {
    for (thread, huge) in [("main", "off"), ("thread", "auto")] {
        let out = run_fixture(
            "global_alloc",
            &["grow", "153M", "179M", thread],
            &[("FROSTHEAP_MAX", "256M"), ("FROSTHEAP_HUGE_PAGES", huge)],
        );
        assert!(out.status.success(), "{thread}: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("moved=true"), "{thread}: {}", describe(&out));
        let (committed, in_use) = (
            printed_number(&out, "committed="),
            printed_number(&out, "in_use="),
        );
        assert!(
            in_use >= 179 * MIB as u64 && committed < in_use + 4 * MIB as u64,
            "{thread}: {}",
            describe(&out)
        );
    }
}

test!(a_vec_of_60_percent_of_the_limit_another_thread_made_grows_to_70);
/// `Vec::reserve_exact` of a vector of 60% of `FROSTHEAP_MAX` to 70% by
/// another thread than the one that made it: by the main thread after its
/// maker exited (the main heap on base pages, `FROSTHEAP_HUGE_PAGES=off`),
/// and by a thread while its maker runs. The vector's pages move into the
/// grower's heap and only its growth is charged, where a copy into that
/// heap needed 130% of the limit and aborted; the bytes in use are in the
/// grower's heap alone, the maker's holding none of them.
fn a_vec_of_60_percent_of_the_limit_another_thread_made_grows_to_70() {
    for (grower, maker) in [("main", "exited"), ("thread", "running")] {
        let out = run_fixture(
            "global_alloc",
            &["cross", "153M", "179M", grower, maker],
            &[("FROSTHEAP_MAX", "256M"), ("FROSTHEAP_HUGE_PAGES", "off")],
        );
        assert!(out.status.success(), "{grower}, {maker}: {}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("moved=true"), "{grower}, {maker}: {}", describe(&out));
        let (committed, main, threads) = (
            printed_number(&out, "committed="),
            printed_number(&out, "main_in_use="),
            printed_number(&out, "threads_in_use="),
        );
        let (held, other) = if grower == "main" {
            (main, threads)
        } else {
            (threads, main)
        };
        let mib = MIB as u64;
        assert!(
            held >= 179 * mib && held < 180 * mib && other < mib,
            "{grower}, {maker}: {}",
            describe(&out)
        );
        assert!(
            committed < main + threads + 4 * mib,
            "{grower}, {maker}: {}",
            describe(&out)
        );
    }
}

/// A bad value stops start-up: status 2, one stderr line naming the
/// variable, the value and what is accepted, and `main` never runs.
fn assert_startup_error(env: &[(&str, &str)], var: &str, value: &str, accepted: &str) {
    let out = run_fixture("global_alloc", &["1M"], env);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        out.stdout.is_empty(),
        "main ran despite a bad configuration: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "not one line: {}",
        describe(&out)
    );
    assert!(stderr.ends_with('\n'));
    let line = stderr.trim_end();
    assert!(line.contains(var), "line does not name {var}: {line}");
    assert!(
        line.contains(&format!("\"{value}\"")),
        "line does not quote {value}: {line}"
    );
    assert!(
        line.contains(accepted),
        "line does not say what is accepted ({accepted}): {line}"
    );
}

test!(malformed_max_stops_startup);
fn malformed_max_stops_startup() {
    assert_startup_error(
        &[("FROSTHEAP_MAX", "12Q")],
        "FROSTHEAP_MAX",
        "12Q",
        "e.g. 64M, 1G",
    );
}

test!(malformed_min_stops_startup);
fn malformed_min_stops_startup() {
    assert_startup_error(
        &[("FROSTHEAP_MIN", "lots")],
        "FROSTHEAP_MIN",
        "lots",
        "e.g. 64M, 1G",
    );
}

test!(unknown_huge_pages_policy_stops_startup);
fn unknown_huge_pages_policy_stops_startup() {
    assert_startup_error(
        &[("FROSTHEAP_HUGE_PAGES", "maybe")],
        "FROSTHEAP_HUGE_PAGES",
        "maybe",
        "auto, on or off",
    );
}

test!(min_above_max_stops_startup);
fn min_above_max_stops_startup() {
    assert_startup_error(
        &[("FROSTHEAP_MIN", "128M"), ("FROSTHEAP_MAX", "64M")],
        "FROSTHEAP_MIN",
        "128M",
        "no larger than FROSTHEAP_MAX",
    );
}

test!(max_below_one_page_stops_startup);
fn max_below_one_page_stops_startup() {
    assert_startup_error(
        &[("FROSTHEAP_MAX", "4K")],
        "FROSTHEAP_MAX",
        "4K",
        "at least 128K",
    );
}

test!(max_larger_than_the_address_space_stops_startup_naming_it);
/// `FROSTHEAP_MAX=1000T`, more than the address space can reserve, stops
/// start-up with one line naming the variable, its value and the most this
/// process can reserve (it printed "cannot reserve the main heap ...: mmap
/// errno 12").
fn max_larger_than_the_address_space_stops_startup_naming_it() {
    assert_startup_error(
        &[("FROSTHEAP_MAX", "1000T")],
        "FROSTHEAP_MAX",
        "1000T",
        "expected a size this process's address space can reserve, at most ",
    );
}

test!(min_equal_to_max_starts_whatever_the_size);
/// `FROSTHEAP_MIN` equal to `FROSTHEAP_MAX` at sizes that are not multiples
/// of 64 KiB starts, and the main heap commits the limit less an eighth
/// (`config::main_precommit`: the rest is for other threads' heaps and
/// mappings; until 2026-12-06 it committed the whole limit rounded down
/// to 64 KiB, and they got nothing): the minimum was rounded up past the
/// limit, whose first charge then refused it, and start-up failed naming
/// `FROSTHEAP_MAX` as a system call.
fn min_equal_to_max_starts_whatever_the_size() {
    for size in ["100000K", "100000001"] {
        let out = run_fixture(
            "global_alloc",
            &["64K"],
            &[("FROSTHEAP_MAX", size), ("FROSTHEAP_MIN", size)],
        );
        assert!(out.status.success(), "{size}: {}", describe(&out));
        let bytes = frostheap::parse_size(size).unwrap();
        let committed = printed_number(&out, "committed=");
        assert!(
            printed_number(&out, "limit=") == bytes as u64
                && committed >= frostheap::__private::main_precommit(bytes, bytes) as u64
                && committed <= bytes as u64,
            "{size}: {}",
            describe(&out)
        );
    }
}

test!(allocation_past_max_takes_the_alloc_error_path);
/// Past `FROSTHEAP_MAX`, `GlobalAlloc` returns null and Rust's
/// allocation-failure path reports and aborts.
fn allocation_past_max_takes_the_alloc_error_path() {
    let out = run_fixture("global_alloc", &["100M"], &[("FROSTHEAP_MAX", "64M")]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("memory allocation of {} bytes failed", 100 * MIB)),
        "{}",
        describe(&out)
    );
    // main ran up to the allocation.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("limit={}", 64 * MIB)),
        "{}",
        describe(&out)
    );
}

fn libc_sigabrt() -> i32 {
    6
}

test!(remote_double_free_stops_the_process_with_a_report);
fn remote_double_free_stops_the_process_with_a_report() {
    double_free_is_reported(&["remote-double-free"]);
}

test!(thread_heap_double_free_through_the_cache_stops_the_process);
fn thread_heap_double_free_through_the_cache_stops_the_process() {
    double_free_is_reported(&["thread-double-free"]);
}

test!(thread_heap_double_free_through_the_batch_stops_the_process);
fn thread_heap_double_free_through_the_batch_stops_the_process() {
    double_free_is_reported(&["batch-double-free"]);
}

/// Runs `global_routing args`, which prints the pointer it frees twice:
/// the process must stop with SIGABRT and a report naming it.
fn double_free_is_reported(args: &[&str]) {
    let out = run_fixture("global_routing", args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = stdout
        .strip_prefix("freeing 0x")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pointer printed\n{}", describe(&out)));
    assert_eq!(
        out.status.signal(),
        Some(6),
        "SIGABRT expected\n{}",
        describe(&out)
    );
    assert!(
        !stdout.contains("survived"),
        "the double free went unnoticed\n{}",
        describe(&out)
    );
    assert!(
        stderr.contains(&format!(
            "free of an invalid or already freed pointer 0x{p}"
        )),
        "{}",
        describe(&out)
    );
}

test!(a_thread_reuses_the_blocks_of_other_threads_it_frees);
fn a_thread_reuses_the_blocks_of_other_threads_it_frees() {
    let out = run_fixture("global_routing", &["remote-cache"], &[]);
    assert_succeeded_saying(&out, "remote cache: ok");
}

test!(a_thread_publishes_the_blocks_of_other_threads_it_frees_a_word_at_a_time);
fn a_thread_publishes_the_blocks_of_other_threads_it_frees_a_word_at_a_time() {
    let out = run_fixture("global_routing", &["remote-batch"], &[]);
    assert_succeeded_saying(&out, "remote batch: ok");
}

test!(an_over_aligned_block_freed_by_another_thread_comes_back_once);
fn an_over_aligned_block_freed_by_another_thread_comes_back_once() {
    let out = run_fixture("global_routing", &["remote-aligned"], &[]);
    assert_succeeded_saying(&out, "remote aligned: ok");
}

test!(a_large_thread_heap_caches_its_frees_and_gives_everything_back);
/// A thread heap past 8 MiB (its own frees in the owner's cache):
/// 200,000 blocks replaced at random and checked, an eighth of them freed
/// by another thread, a trim halfway; once both threads have exited,
/// their heaps keep at most 512 KiB committed.
fn a_large_thread_heap_caches_its_frees_and_gives_everything_back() {
    let out = run_fixture("global_routing", &["own-cache"], &[]);
    assert_succeeded_saying(&out, "own cache: ok");
}

test!(a_thread_with_the_smallest_stack_gets_its_heap);
/// A thread's first allocation builds its heap in its slot, not on the
/// thread's stack: threads of `PTHREAD_STACK_MIN` allocate.
fn a_thread_with_the_smallest_stack_gets_its_heap() {
    let out = run_fixture("global_threads", &["small-stack"], &[]);
    assert_succeeded_saying(&out, "global_threads small-stack: ok");
}

test!(one_limit_bounds_every_kind_of_thread);
/// `FROSTHEAP_MAX=128M` bounds the main thread, a spawned thread, a pool
/// of worker threads and runtime tasks together: each is refused near the
/// shared cap and can allocate again once memory is freed.
fn one_limit_bounds_every_kind_of_thread() {
    let out = run_fixture("global_threads", &["limit"], &[("FROSTHEAP_MAX", "128M")]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for who in ["main:", "spawned thread:", "pool worker:", "runtime task:"] {
        assert!(stdout.contains(who), "no line for {who}\n{}", describe(&out));
    }
    assert!(
        stdout.contains("global_threads limit: ok"),
        "{}",
        describe(&out)
    );
    // A task refused past the cap gets frostheap's line too, naming the
    // context heap (it got std's message alone before).
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("frostheap: out of memory: the context heap cannot allocate"),
        "{}",
        describe(&out)
    );
}

test!(every_allocation_the_limit_refuses_counts_once_whichever_heap_refused_it);
/// `stats().refused` is one per allocation the process limit refused,
/// whichever heap refused it. The main heap filled to `FROSTHEAP_MAX=64M`
/// five times counted none (its cap, the limit, refused before the
/// process's counters were asked), nor did a request larger than the
/// limit on any thread; a task filling memory counted each refused chunk
/// of its context heap and its worker heap's refusal besides (5 for one
/// allocation).
fn every_allocation_the_limit_refuses_counts_once_whichever_heap_refused_it() {
    let out = run_fixture(
        "global_threads",
        &["refusals-counted"],
        &[("FROSTHEAP_MAX", "64M")],
    );
    assert_succeeded_saying(&out, "global_threads refusals-counted: ok");
}

test!(a_refused_alignment_is_named_as_the_cause);
/// 16 bytes aligned to 1 GiB under `FROSTHEAP_MAX=64M`, on the main thread
/// and a spawned one: the heaps' ranges cannot hold the alignment's slack,
/// and each refusal line says so (it said "FROSTHEAP_MAX is 67108864
/// bytes", blaming the limit for 16 bytes with nothing committed).
fn a_refused_alignment_is_named_as_the_cause() {
    let out = run_fixture("global_threads", &["big-align"], &[("FROSTHEAP_MAX", "64M")]);
    assert_succeeded_saying(&out, "global_threads big-align: ok");
    for heap in ["main", "thread"] {
        let line = refusal_line(&out, heap);
        assert!(
            line.contains("cannot hold it with the slack its alignment needs"),
            "{line}"
        );
    }
}

/// The first refusal line of the `heap` kind of heap in `out`'s stderr.
fn refusal_line(out: &std::process::Output, heap: &str) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with(&format!("frostheap: out of memory: the {heap} heap")))
        .unwrap_or_else(|| panic!("no refusal line for the {heap} heap\n{}", describe(out)))
        .to_string()
}

test!(a_refused_charge_hands_the_threads_held_blocks_back_first);
/// After 16 threads freed and grew each other's blocks at the limit and
/// exited, and the main thread freed what was left, the largest block the
/// main thread is granted is within 2 MiB of what it is granted after a
/// trim: blocks of the exited threads' heaps held in its remote cache,
/// which kept their spans committed, are handed back before a charge is
/// refused (47–52 MiB before, 53–58 after a trim).
fn a_refused_charge_hands_the_threads_held_blocks_back_first() {
    let out = run_fixture("global_threads", &["hand-back"], &[("FROSTHEAP_MAX", "64M")]);
    assert_succeeded_saying(&out, "global_threads hand-back: ok");
}

test!(system_memory_that_global_takes_counts_against_the_limit);
/// What `Global` takes from the system allocator — inside `unguarded`, for
/// `Shared` values — counts against `FROSTHEAP_MAX` as external memory,
/// charged as it is made, grown and shrunk, and released as it is freed:
/// 512 MiB inside `unguarded` were granted under a 64 MiB limit, and
/// 8,192 `Shared` values of 64 KiB too (a user's trial, 2026-12-07).
fn system_memory_that_global_takes_counts_against_the_limit() {
    let out = run_fixture("global_threads", &["system"], &[("FROSTHEAP_MAX", "64M")]);
    assert_succeeded_saying(&out, "global_threads system: ok");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frostheap: out of memory: the system heap cannot allocate 536870912 bytes"),
        "{}",
        describe(&out)
    );
}

test!(a_block_that_fits_under_the_limit_is_granted_above_a_block_that_pins_the_range);
/// A heap's range is twice its cap: 30 MiB made, a small block kept after
/// them, the 30 MiB freed, then 100 MiB under `FROSTHEAP_MAX=128M`, on the
/// main heap and on a thread heap. With ranges of the cap alone it was
/// refused with 0.4 MB committed.
fn a_block_that_fits_under_the_limit_is_granted_above_a_block_that_pins_the_range() {
    let out = run_fixture(
        "global_threads",
        &["pinned-range"],
        &[("FROSTHEAP_MAX", "128M")],
    );
    assert_succeeded_saying(&out, "global_threads pinned-range: ok");
}

test!(a_request_no_free_run_of_its_heaps_range_holds_is_reported_as_such);
/// Under `FROSTHEAP_MAX=110M`, blocks of 90, 91, 92 MiB each freed after
/// a block kept above it, on the main thread and on a spawned one: the
/// heap's range has no free run for the next one though the process has
/// a few MiB committed. The refusal line names the range as the cause
/// (before, it read as the limit's: "FROSTHEAP_MAX is 104857600 bytes;
/// the process has 2359296 committed"), and the request is granted once
/// the kept blocks are freed.
fn a_request_no_free_run_of_its_heaps_range_holds_is_reported_as_such() {
    assert_range_refusals("range-refused");
}

test!(a_range_refusal_is_named_as_such_with_free_memory_still_charged);
/// The same blocks of 90, 91, 92 MiB with no trim between them, on the
/// default huge pages: the heap keeps some 7 MiB of free memory charged
/// (a region laid out for huge pages charges free spans until they are
/// purged), and the request no free run of the range holds was reported
/// as the limit's ("FROSTHEAP_MAX is 104857600 bytes; the process has
/// 9371648 committed"): the range was checked against the cap before that
/// free memory went back. It names the range now.
fn a_range_refusal_is_named_as_such_with_free_memory_still_charged() {
    assert_range_refusals("range-refused-untrimmed");
}

/// Runs `global_threads MODE` under `FROSTHEAP_MAX=110M` and checks that
/// the main heap's and a thread heap's refusal lines name the range, not
/// the limit, as the cause. (Under 100M, the main thread's round ran with
/// its heap charged to the limit's last page, and since the program's
/// first kilobyte from the system allocator counts too (2026-12-07) its
/// small blocks went into the 90 MiB the first block left free, and the
/// range held a free run for every block until the limit refused one.)
fn assert_range_refusals(mode: &str) {
    let out = run_fixture("global_threads", &[mode], &[("FROSTHEAP_MAX", "110M")]);
    assert_succeeded_saying(&out, "global_threads range-refused: ok");
    for heap in ["main", "thread"] {
        let line = refusal_line(&out, heap);
        assert!(
            line.contains("has no free run that large")
                && line.contains("though it fits under FROSTHEAP_MAX (115343360 bytes)"),
            "{line}"
        );
    }
}

test!(max_below_two_heap_pages_stops_startup_and_two_run_a_program);
/// `FROSTHEAP_MAX=64K`, documented as the minimum, was accepted, and every
/// program with `Global` aborted before `main` ("memory allocation of 544
/// bytes failed": each size class takes a 64 KiB page, and Rust's
/// start-up uses two). It stops start-up now with the line naming the
/// real minimum, at which a program runs.
fn max_below_two_heap_pages_stops_startup_and_two_run_a_program() {
    assert_startup_error(
        &[("FROSTHEAP_MAX", "64K")],
        "FROSTHEAP_MAX",
        "64K",
        "at least 128K (two heap pages",
    );
    let out = run_fixture("global_hello", &[], &[("FROSTHEAP_MAX", "128K")]);
    assert_succeeded_saying(&out, &format!("hello limit={}", 128 << 10));
}

test!(a_small_limit_lays_the_main_heap_out_on_base_pages);
/// Under a limit below 64 MiB the main heap is laid out on base pages
/// whatever `FROSTHEAP_HUGE_PAGES=auto` finds: laid out for huge pages it
/// charged the whole of a small limit at its first growth, a 64 KiB page
/// to each size class. Under 128K a program that used a third class
/// aborted (a 24-byte `String` refused, 656 bytes in use); under 512K a
/// thread's first 64 KiB was refused.
fn a_small_limit_lays_the_main_heap_out_on_base_pages() {
    let out = run_fixture("global_hello", &["classes"], &[("FROSTHEAP_MAX", "128K")]);
    assert_succeeded_saying(&out, "classes ok: 10 blocks");
    let out = run_fixture("global_hello", &["thread"], &[("FROSTHEAP_MAX", "512K")]);
    assert_succeeded_saying(&out, "thread ok: true");
}

test!(many_threads_are_charged_for_the_pages_their_blocks_reach);
/// 400 threads at once under `FROSTHEAP_MAX=64M`, each holding a block in
/// 16 size classes (a thread per connection): none is refused, and the
/// process is charged less than 128 KiB a thread. Each thread heap's
/// first commit step counted whole before (1 MiB), and the 64th thread
/// was refused, at 64 MiB charged with 0.7 MiB in use.
fn many_threads_are_charged_for_the_pages_their_blocks_reach() {
    let out = run_fixture("global_threads", &["many"], &[("FROSTHEAP_MAX", "64M")]);
    assert_succeeded_saying(&out, "global_threads many: ok");
}

test!(threads_replaced_in_generations_leave_the_limit_to_whoever_needs_it);
/// 200 threads at once in nine generations under `FROSTHEAP_MAX=20M`,
/// each thread adopting a heap of the last generation and using other size
/// classes than its last thread: none is refused (every heap kept the
/// empty spans of every generation's classes, and the third was refused);
/// then the main thread takes nearly all of the limit in 1 MiB blocks
/// (the spans kept in the exited threads' heaps stayed charged: under 48M
/// it got 28 MiB).
fn threads_replaced_in_generations_leave_the_limit_to_whoever_needs_it() {
    let out = run_fixture("global_threads", &["generations"], &[("FROSTHEAP_MAX", "20M")]);
    assert_succeeded_saying(&out, "global_threads generations: ok");
}

test!(in_a_memory_cgroup_the_default_limit_is_three_quarters_of_its_limit, needs: [MemoryCgroup]);
/// With `FROSTHEAP_MAX` unset, a process in a memory cgroup of 256 MiB (a
/// container's `--memory`) gets a limit of 192 MiB: the main thread and a
/// spawned thread filling memory are refused with an error there. With
/// physical memory as the default (24 GiB here) the kernel's OOM killer
/// ended the process at the cgroup's limit (SIGKILL). `FROSTHEAP_MAX=50%`
/// is half the cgroup's limit.
fn in_a_memory_cgroup_the_default_limit_is_three_quarters_of_its_limit() {
    let limit: usize = 256 << 20;
    let cgroup = MemoryCgroup::new(limit as u64).expect("the need was probed");
    for (max, expected) in [(None, limit / 4 * 3), (Some("50%"), limit / 2)] {
        let mut cmd = Command::new(fixture("global_threads"));
        cmd.args(["cgroup", &expected.to_string()]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FROSTHEAP_") {
                cmd.env_remove(k);
            }
        }
        if let Some(max) = max {
            cmd.env("FROSTHEAP_MAX", max);
        }
        let what = format!("global_threads cgroup in a 256 MiB cgroup, FROSTHEAP_MAX={max:?}");
        let out = output_within(cgroup.run_in(&mut cmd), &what);
        assert_succeeded_saying(&out, "global_threads cgroup: ok");
    }
}

test!(free_spans_below_a_pinned_top_stop_counting_against_the_limit);
/// `FROSTHEAP_MAX=128M`: 80 MiB freed below a block that stays on top of
/// the main heap are purged and uncharged, so another thread gets 96 MiB it
/// was refused while they were live; the main heap's reuse of them is
/// charged again, and a reuse past the limit fails cleanly (an error, one
/// refusal) until the other thread frees its memory.
fn free_spans_below_a_pinned_top_stop_counting_against_the_limit() {
    let out = run_fixture("global_threads", &["purge"], &[("FROSTHEAP_MAX", "128M")]);
    assert_succeeded_saying(&out, "global_threads purge: ok");
}

test!(ten_thousand_short_lived_threads_reuse_their_heaps);
/// 10,000 threads, each allocating, keeping blocks past its exit and
/// freeing other threads' blocks: heaps are adopted, nothing is lost, and
/// in-use and committed bytes come back down.
fn ten_thousand_short_lived_threads_reuse_their_heaps() {
    let out = run_fixture("global_threads", &["churn"], &[]);
    assert_succeeded_saying(&out, "global_threads churn: ok");
}

test!(a_new_thread_adopts_the_heap_with_memory_to_reuse);
/// A producer's blocks, freed after it exited, leave 8 MiB in its heap;
/// a thread that exits after it leaves an empty heap. The next thread
/// that allocates 8 MiB adopts the producer's heap and commits nothing
/// more (adopting the last abandoned heap, it committed 8 MiB more).
fn a_new_thread_adopts_the_heap_with_memory_to_reuse() {
    let out = run_fixture("global_threads", &["adopt"], &[]);
    assert_succeeded_saying(&out, "global_threads adopt: ok");
}

test!(trim_gives_back_what_the_main_thread_and_a_thread_freed);
/// `frostheap::trim` after 20 MB of blocks were freed, on the main thread
/// and on a thread whose blocks the main thread freed (its trim brings
/// back its spans that filled up and then emptied): the committed bytes
/// drop by at least half of them at the trim, and a second trim finds
/// nothing left.
fn trim_gives_back_what_the_main_thread_and_a_thread_freed() {
    let out = run_fixture("global_threads", &["trim"], &[]);
    assert_succeeded_saying(&out, "global_threads trim: ok");
}

test!(a_waiting_workers_results_freed_by_the_main_thread_serve_it_under_the_limit);
/// A pool's worker makes 40 MiB of results a round and waits, alive, for
/// the next job while the main thread drops them and makes 40 MiB of its
/// own, ten rounds under `FROSTHEAP_MAX=64M`. The worker's spans, freed
/// whole by the main thread, waited for a collection that only the
/// worker's next allocation made: the main thread was refused at 16 MiB in
/// use. The limit's reclaimer now retires them for the worker, and a trim
/// while the worker waits gives them back. With no limit, the process
/// grows by little more than one 40 MiB (it held both: 84 MiB): each
/// thread pauses 20 ms halfway through its 40 MiB, and the other, which
/// has then made no allocation for more than 10 ms, gives its free memory
/// back as the process grows (the fixture's comment says why both pause).
fn a_waiting_workers_results_freed_by_the_main_thread_serve_it_under_the_limit() {
    let out = run_fixture("global_threads", &["idle-worker"], &[]);
    assert_succeeded_saying(&out, "intact=true");
    let most = printed_number(&out, "most=") as usize;
    assert!(
        most <= 56 * MIB,
        "the process committed {most} bytes with the main thread's 40 MiB made: the waiting \
         worker's freed results were not given back as it grew\n{}",
        describe(&out)
    );
    let out = run_fixture(
        "global_threads",
        &["idle-worker"],
        &[("FROSTHEAP_MAX", "64M")],
    );
    assert_succeeded_saying(&out, "intact=true");
    let refused = printed_number(&out, "refused=");
    assert_eq!(refused, 0, "allocations refused\n{}", describe(&out));
    let before = printed_number(&out, "before_trim=") as usize;
    let after = printed_number(&out, "after_trim=") as usize;
    assert!(
        before >= 32 * MIB && after <= 2 * MIB,
        "the waiting worker's heap charged {before} bytes before the trim and {after} after\n{}",
        describe(&out)
    );
}

test!(a_waiting_thread_gives_its_free_memory_back_as_the_process_grows);
/// A worker frees its own 24 MiB and waits, alive: its heap keeps free
/// memory resident for its next blocks (up to 32 MiB, or twice what is
/// live), which a thread that waits holds for nothing. Once the worker
/// has made no allocation for 10 ms, the process's next step of growth,
/// or another heap's taking 4 MiB of its own free memory back into use
/// (the busy thread's, here), has its heap give its free memory back: 24
/// MiB stayed committed while the main thread made 48 MiB. A thread that
/// keeps making and freeing 4 MiB meanwhile keeps its free memory: it
/// faults nothing in again
/// (judged over the rounds that no wait of 9 ms without an allocation
/// reached: off its CPU that long, it looks to the hook like a thread
/// that waits).
fn a_waiting_thread_gives_its_free_memory_back_as_the_process_grows() {
    // The busy thread's rounds are judged only where it went less than
    // 9 ms without an allocation (the fixture's comment): on a machine so
    // loaded that no round qualifies, the run is repeated, up to 4 times.
    let mut tries = 0;
    let (out, busy) = loop {
        tries += 1;
        let out = run_fixture("global_threads", &["idle-free"], &[]);
        assert_succeeded_saying(&out, "intact=true");
        let busy = (
            printed_number(&out, "busy_faults="),
            printed_number(&out, "busy_rounds="),
            printed_number(&out, "busy_all_rounds="),
        );
        if busy.1 > 0 || tries == 4 {
            break (out, busy);
        }
    };
    let made = printed_number(&out, "made=") as usize;
    let after = printed_number(&out, "after_growth=") as usize;
    // The busy thread's 4 MiB and its heap's own pages.
    assert!(
        made >= 24 * MIB && after <= 6 * MIB,
        "the thread heaps charged {made} bytes with the waiting worker's blocks made, and \
         {after} after the main thread grew\n{}",
        describe(&out)
    );
    assert!(
        busy.1 > 0,
        "in {tries} runs, none of the busy thread's rounds ran without a gap of 9 ms or more \
         (the machine too loaded to judge)\n{}",
        describe(&out)
    );
    // A purge of its free memory would fault 1,024 pages in again.
    assert!(
        busy.0 < 512,
        "the busy thread faulted {} pages in {} rounds (of {}) of reusing its 4 MiB with no gap \
         of 9 ms, while the process grew: its free memory was given back\n{}",
        busy.0,
        busy.1,
        busy.2,
        describe(&out)
    );
}

test!(fork_in_a_threaded_global_program_leaves_a_working_child);
/// `fork` while another thread allocates and frees the main thread's
/// blocks: every child can allocate (no heap lock was copied held), finds
/// the other thread's heap left without an owner (never adopted: its owner
/// may have been mid-allocation), frees a block of it, and exits within
/// its time.
fn fork_in_a_threaded_global_program_leaves_a_working_child() {
    let out = run_fixture("global_threads", &["fork"], &[]);
    assert_succeeded_saying(&out, "global_threads fork: ok");
}

test!(fork_by_a_thread_other_than_the_main_one_orphans_the_main_heap);
/// `fork` from a thread of its own while the main thread allocates: the
/// child's only thread is not the main one, so the main heap is left
/// without an owner too (the main thread may have been in the middle of
/// an allocation); the child frees blocks of both orphaned heaps,
/// allocates on a heap of its own, and starts a thread.
fn fork_by_a_thread_other_than_the_main_one_orphans_the_main_heap() {
    let out = run_fixture("global_threads", &["fork-from-thread"], &[]);
    assert_succeeded_saying(&out, "global_threads fork-from-thread: ok");
}

test!(out_of_memory_in_global_mode_names_frostheap_and_the_limit);
/// An allocation Rust cannot handle past `FROSTHEAP_MAX`: one line from
/// frostheap naming the heap, the variable and the numbers, then std's
/// message, then SIGABRT.
fn out_of_memory_in_global_mode_names_frostheap_and_the_limit() {
    let out = run_fixture("global_threads", &["oom"], &[("FROSTHEAP_MAX", "64M")]);
    assert_eq!(out.status.signal(), Some(6), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours = stderr
        .lines()
        .position(|l| l.starts_with("frostheap: out of memory: the main heap"))
        .unwrap_or_else(|| panic!("no frostheap line\n{}", describe(&out)));
    let line = stderr.lines().nth(ours).unwrap();
    assert!(line.contains("FROSTHEAP_MAX is 67108864 bytes"), "{line}");
    assert!(line.contains(&format!("allocate {} bytes", 65 * MIB)), "{line}");
    let std_line = stderr
        .lines()
        .position(|l| l.contains("memory allocation of"))
        .unwrap_or_else(|| panic!("no line from std\n{}", describe(&out)));
    assert!(ours < std_line, "frostheap's line must come first\n{stderr}");
}

test!(a_refusal_under_a_tiny_limit_says_what_the_heap_needed);
/// Under `FROSTHEAP_MAX=256K` a program of a few KiB is refused a small
/// block: the new size class needs a span of its own, which does not fit
/// beside what is committed though the block would. The line says how
/// much the heap needed; it used to give only the limit and the committed
/// bytes, which did not explain the refusal. (Huge pages off: where they
/// are on, a heap's first commits are larger, and the limit is met with
/// everything committed, which the numbers alone explain.)
fn a_refusal_under_a_tiny_limit_says_what_the_heap_needed() {
    const LIMIT: u64 = 256 << 10;
    let out = run_fixture(
        "global_threads",
        &["tiny-limit"],
        &[("FROSTHEAP_MAX", "256K"), ("FROSTHEAP_HUGE_PAGES", "off")],
    );
    assert_eq!(out.status.signal(), Some(6), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("frostheap: out of memory: the main heap cannot allocate "))
        .unwrap_or_else(|| panic!("no frostheap line\n{}", describe(&out)));
    assert!(
        line.contains("FROSTHEAP_MAX is 262144 bytes and the heap needed "),
        "{line}"
    );
    // The numbers bear it out: the request fit, the heap's need did not.
    let number_after = |key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key:?} in {line}")) + key.len()..];
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())]
            .parse()
            .unwrap_or_else(|e| panic!("{key:?} in {line}: {e}"))
    };
    let requested = number_after("cannot allocate ");
    let needed = number_after("the heap needed ");
    let committed = number_after("the process has ");
    assert!(committed + requested <= LIMIT, "{line}");
    assert!(committed + needed > LIMIT, "{line}");
}

test!(refusals_a_program_handles_print_one_line_a_second_and_are_all_counted);
/// A program that asks for memory it can do without (`try_reserve`) got
/// one line for every refusal: 10,000 refusals now print the first line
/// and at most one more a second, every refusal is counted, and the
/// refusal that aborts, more than a second later, still gets its line,
/// saying how many went unprinted.
fn refusals_a_program_handles_print_one_line_a_second_and_are_all_counted() {
    let out = run_fixture(
        "global_threads",
        &["oom-after-refusals"],
        &[("FROSTHEAP_MAX", "64M")],
    );
    assert_eq!(out.status.signal(), Some(6), "{}", describe(&out));
    let loop_secs = printed_number(&out, "loop_secs=");
    assert!(
        printed_number(&out, "refused=") >= 10_000,
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("frostheap: out of memory: the main heap"))
        .collect();
    // The first refusal, at most one a second of the loop, and the last.
    assert!(
        ours.len() >= 2 && ours.len() as u64 <= loop_secs + 3,
        "{} lines for 10,001 refusals in {loop_secs} s\n{stderr}",
        ours.len()
    );
    // Every refusal is a line or counted in the next line.
    let unprinted: u64 = ours
        .iter()
        .filter_map(|l| l.split(" (").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(unprinted + ours.len() as u64, 10_001, "{stderr}");
    let last = ours.last().expect("two lines at least");
    assert!(
        last.contains(&format!("allocate {} bytes", 65 * MIB))
            && last.contains("more refused since the last such line"),
        "{last}"
    );
}

test!(heaps_of_exited_threads_give_back_what_was_freed_into_them);
/// Blocks that threads made and the main thread freed after they exited
/// stayed committed in the threads' abandoned heaps until one was adopted,
/// a trim, or the limit: the process grew past them (32 MiB of them, with
/// the main thread's 24 MiB on top). The frees themselves now have those
/// heaps give back what they hold free beyond what they keep for the next
/// threads (32 MiB of the 64 here), every 64 spans they bring back; the
/// rest goes as the process grows.
fn heaps_of_exited_threads_give_back_what_was_freed_into_them() {
    let out = run_fixture("global_threads", &["abandoned-growth"], &[]);
    assert_succeeded_saying(&out, "intact=true");
    assert!(printed_number(&out, "abandoned=") >= 1, "{}", describe(&out));
    let made = printed_number(&out, "threads_made=") as usize;
    let before = printed_number(&out, "threads_before=") as usize;
    let after = printed_number(&out, "threads_after=") as usize;
    assert!(made >= 56 * MIB, "the threads' blocks were not charged: {made}");
    // What they keep (32 MiB), and the spans freed since the last
    // collection (up to 64).
    assert!(
        before <= 40 * MIB,
        "the exited threads' heaps still charge {before} bytes (of {made}) once their blocks \
         were freed"
    );
    assert!(
        after <= 2 * MIB,
        "the exited threads' heaps still charge {after} bytes (of {made}) after the main \
         thread grew by 24 MiB"
    );
}

test!(exited_threads_keep_a_bounded_amount_of_free_memory_for_the_next_ones);
/// A thread heap's free memory was all purged at its thread's exit, one
/// `madvise` (and TLB shootdown) per free span, and faulted in again by
/// the thread that adopted it: threads started and joined in turn spent
/// two thirds of their time there. The heaps of exited threads now keep
/// some of it resident for the next threads, bounded in all (32 MiB, or an
/// eighth of what the process has committed; an eighth of the limit at
/// most), and give it back as the process grows past it.
fn exited_threads_keep_a_bounded_amount_of_free_memory_for_the_next_ones() {
    let out = run_fixture("global_threads", &["warm-exits"], &[]);
    assert_succeeded_saying(&out, "intact=true");
    let kept = printed_number(&out, "kept=") as usize;
    let next_grew = printed_number(&out, "next_grew=") as usize;
    let after = printed_number(&out, "after_growth=") as usize;
    // Sixteen threads' 96 MiB freed: at least one heap's 6 MiB kept, and
    // no more than the bound (with the threads' small spans).
    assert!(
        (6 * MIB..=34 * MIB).contains(&kept),
        "the exited threads' heaps charge {kept} bytes, expected 6 to 34 MiB\n{}",
        describe(&out)
    );
    assert!(
        next_grew <= 2 * MIB,
        "the next thread's 6 MiB grew the process by {next_grew} bytes: it did not reuse \
         what an exited thread kept\n{}",
        describe(&out)
    );
    assert!(
        after <= 2 * MIB,
        "the exited threads' heaps still charge {after} bytes after the main thread grew past \
         them\n{}",
        describe(&out)
    );
    // Under a limit of 128 MiB, an eighth of it: 16 MiB (two heaps' 6).
    let out = run_fixture(
        "global_threads",
        &["warm-exits"],
        &[("FROSTHEAP_MAX", "128M")],
    );
    assert_succeeded_saying(&out, "intact=true");
    let kept = printed_number(&out, "kept=") as usize;
    assert!(
        (6 * MIB..=18 * MIB).contains(&kept),
        "under a 128 MiB limit the exited threads' heaps charge {kept} bytes, expected 6 to 18 \
         MiB\n{}",
        describe(&out)
    );
}

test!(a_workers_results_freed_after_it_exited_are_kept_within_the_bound_for_the_next_one);
/// A worker's results, freed after it exited, stayed in its heap until
/// the next worker adopted it, however large. They are given back now as
/// they are freed, beyond what the heaps of exited threads keep for the
/// next threads (32 MiB in all here), and the next worker reuses what is
/// kept: given back span by span, it committed all 48 MiB again.
fn a_workers_results_freed_after_it_exited_are_kept_within_the_bound_for_the_next_one() {
    let out = run_fixture("global_threads", &["results-reused"], &[]);
    assert_succeeded_saying(&out, "intact=true");
    let live = printed_number(&out, "live=") as usize;
    let after_drop = printed_number(&out, "after_drop=") as usize;
    let next_grew = printed_number(&out, "next_grew=") as usize;
    assert!(live >= 48 * MIB, "the worker's blocks were not charged: {live}");
    // The bound, with the spans freed since the last collection (up to 64).
    assert!(
        (24 * MIB..=38 * MIB).contains(&after_drop),
        "the exited worker's heap charges {after_drop} bytes once its 48 MiB were freed, \
         expected the 32 MiB kept and up to 4 MiB not yet collected\n{}",
        describe(&out)
    );
    assert!(
        next_grew <= 20 * MIB,
        "the next worker's 48 MiB grew the process by {next_grew} bytes: it did not reuse \
         what was kept\n{}",
        describe(&out)
    );
}

test!(a_shrink_kept_at_the_limit_is_not_counted_as_refused);
/// At the limit, a shrink of another thread's block that cannot move to
/// the caller's heap keeps its block and succeeds; it counted one refusal
/// in the main heap and one in the process, as a failed call does.
fn a_shrink_kept_at_the_limit_is_not_counted_as_refused() {
    let out = run_fixture(
        "global_threads",
        &["shrink-at-limit"],
        &[("FROSTHEAP_MAX", "64M")],
    );
    assert_succeeded_saying(&out, "intact=true len=100 refused_by_shrink=0 0 ");
}

test!(allocation_sites_are_tracked_for_alloc_zeroed_and_realloc);
/// With `FROSTHEAP_TRACK_ALLOCS=1`, the site recorded for a block names
/// the function that made it, whether by `alloc`, `alloc_zeroed` or a
/// `realloc` that moved it (never the site of a block that was there
/// before).
fn allocation_sites_are_tracked_for_alloc_zeroed_and_realloc() {
    let out = run_fixture("global_track", &[], &[("FROSTHEAP_TRACK_ALLOCS", "1")]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (what, function) in [
        ("alloc:", "made_by_alloc"),
        ("alloc_zeroed:", "made_by_alloc_zeroed"),
        ("realloc:", "made_by_realloc"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line\n{}", describe(&out)));
        assert!(
            line.contains(function),
            "the site of the {what} block does not name {function}: {line}"
        );
    }
}
