//! Freezing beyond the violation matrix: choosing a backend, threads that
//! are not workers, writes the kernel makes, sealed heaps, configuration
//! from the environment, and — in child processes — the cap on parked
//! threads, the abort policy, and faults that are none of frostheap's
//! business (stack overflow, wild writes), which must behave exactly as
//! without frostheap.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allocator_api2::vec::Vec as HeapVec;
use frostheap::trap::{Access, Backend};
use frostheap::{Error, Heap, OnViolation, Protect, Runtime};

use crate::check::{describe, run_example};
use crate::violations::backend_name;

fn guarded_heap(name: &'static str) -> Heap {
    Heap::builder()
        .name(name)
        .max(64 << 20)
        .build()
        .expect("a 64 MiB heap")
}

fn runtime(heap: &Heap, protect: Protect, policy: OnViolation) -> Runtime {
    Runtime::builder()
        .workers(2)
        .guard(heap)
        .guard_main_heap(false)
        .protect(protect)
        .on_violation(policy)
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------
// Backends.

test!(auto_resolves_to_a_backend_this_machine_has);
fn auto_resolves_to_a_backend_this_machine_has() {
    let heap = guarded_heap("auto");
    let rt = runtime(&heap, Protect::Auto, OnViolation::Cancel);
    if frostheap::trap::pkeys_available() {
        assert!(
            matches!(rt.backend(), Backend::Pkey(k) if k > 0),
            "{:?}",
            rt.backend()
        );
    } else {
        eprintln!("NOTE: no protection keys here, so auto must resolve to mprotect");
        assert_eq!(rt.backend(), Backend::Mprotect);
    }
    assert_eq!(rt.stats().backend, backend_name(Protect::Auto));
}

test!(pkey_without_protection_keys_is_an_invalid_config_that_says_what_to_use);
fn pkey_without_protection_keys_is_an_invalid_config_that_says_what_to_use() {
    let heap = guarded_heap("pkey-request");
    let built = Runtime::builder()
        .workers(1)
        .guard(&heap)
        .guard_main_heap(false)
        .protect(Protect::Pkey)
        .build();
    if frostheap::trap::pkeys_available() {
        eprintln!("NOTE: this machine has protection keys: checking that pkey is granted instead");
        let rt = built.expect("pkey is available");
        assert!(matches!(rt.backend(), Backend::Pkey(_)));
        return;
    }
    let err = match built {
        Err(e) => e,
        Ok(rt) => panic!("pkey granted without protection keys: {:?}", rt.backend()),
    };
    let text = err.to_string();
    match &err {
        Error::InvalidConfig {
            name,
            value,
            expected,
        } => {
            assert_eq!(*name, "protect");
            assert_eq!(value, "pkey");
            assert!(
                expected.contains("protection keys are unavailable"),
                "{text}"
            );
            assert!(
                expected.contains("pkey_alloc"),
                "names the failed call: {text}"
            );
            assert!(
                expected.contains("auto or mprotect"),
                "says what to use: {text}"
            );
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(text.starts_with("invalid protect=\"pkey\""), "{text}");
}

test!(off_lets_writes_through_unreported);
fn off_lets_writes_through_unreported() {
    let heap = guarded_heap("off");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..64u64);
    let at = data.as_mut_ptr() as usize + 8 * 10;
    let rt = runtime(&heap, Protect::Off, OnViolation::Cancel);
    assert_eq!(rt.backend(), Backend::Off);
    rt.for_each(0..4usize, |i| {
        if i == 2 {
            // SAFETY: at points into the live vector; with protection off
            // the store is allowed.
            unsafe { (at as *mut u64).write_volatile(1234) };
        }
    })
    .expect("nothing is frozen");
    assert_eq!(data[10], 1234);
    assert_eq!(rt.stats().violations, 0);
}

// ---------------------------------------------------------------------------
// Threads that are not workers.

test!(non_worker_thread_waits_for_the_thaw_and_its_write_lands);
/// A plain std thread writes the guarded heap while a phase is running:
/// under mprotect it waits in the fault handler until the thaw, and then
/// its store lands — it is never reported and never lost.
fn non_worker_thread_waits_for_the_thaw_and_its_write_lands() {
    let protect = Protect::Mprotect;
    let heap = guarded_heap("bystander");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..1024u64);
    let at = data.as_mut_ptr() as usize + 8 * 500;
    let rt = runtime(&heap, protect, OnViolation::Cancel);
    let epoch = Instant::now();
    let about_to_write = Arc::new(AtomicBool::new(false));
    let task_end_ns = Arc::new(AtomicU64::new(0));
    let writer = {
        let about_to_write = about_to_write.clone();
        std::thread::spawn(move || {
            // Wait until a phase is running (the task says so).
            while !about_to_write.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            // SAFETY: at points into the live vector; the thread is not a
            // worker, so a frozen heap makes it wait, not fail.
            unsafe { (at as *mut u64).write_volatile(0xB0B) };
            epoch.elapsed().as_nanos() as u64
        })
    };
    rt.for_each(0..1usize, |_| {
        about_to_write.store(true, Ordering::Release);
        // The writer is free to run now and hits the frozen page.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: reading the frozen vector is allowed.
        let seen = unsafe { (at as *const u64).read_volatile() };
        assert_eq!(seen, 500, "the bystander's store landed during the phase");
        task_end_ns.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
    })
    .expect("the phase itself has no violation");
    let write_done_ns = writer.join().expect("the writer thread survives");
    assert!(
        write_done_ns >= task_end_ns.load(Ordering::Acquire),
        "the write finished ({write_done_ns} ns) before the phase ended ({} ns)",
        task_end_ns.load(Ordering::Acquire)
    );
    assert_eq!(data[500], 0xB0B, "the write was lost");
    assert_eq!(rt.stats().violations, 0, "a bystander is never a violator");
    assert_eq!(rt.stats().parked_workers, 0);
}

// ---------------------------------------------------------------------------
// Kernel writes.

fn kernel_write_case(protect: Protect) {
    let heap = guarded_heap("kernel");
    let mut buf: HeapVec<u8, Heap> = HeapVec::new_in(heap.clone());
    buf.resize(4096, 0xEE);
    let buf_addr = buf.as_mut_ptr() as usize;
    let rt = runtime(&heap, protect, OnViolation::Cancel);
    let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
    let seen_by_task: std::sync::Mutex<Option<(Access, usize)>> = std::sync::Mutex::new(None);
    let err = rt
        .for_each(0..4usize, |i| {
            if i == 1 {
                // SAFETY: buf_addr is the live 4096-byte buffer; `read`
                // writes it only through the kernel (which fails).
                let dst = unsafe { core::slice::from_raw_parts_mut(buf_addr as *mut u8, 4096) };
                match frostheap::io::read(&zero, dst) {
                    Err(Error::Violation(v)) => {
                        *seen_by_task.lock().unwrap() = Some((v.access(), v.address()))
                    }
                    other => panic!("read into frozen memory returned {other:?}"),
                }
            }
        })
        .expect_err("the map reports the kernel write");
    let (access, addr) = seen_by_task
        .lock()
        .unwrap()
        .expect("the task got an error back");
    assert_eq!(access, Access::KernelWrite);
    assert!((buf_addr..buf_addr + 4096).contains(&addr));
    let v = err.violation().expect("Error::Violation");
    assert_eq!(v.access(), Access::KernelWrite, "{v}");
    assert!((buf_addr..buf_addr + 4096).contains(&v.address()), "{v}");
    assert_eq!(v.offset(), v.address() - heap.base() as usize);
    assert_eq!(v.item_index(), Some(1), "{v}");
    assert_eq!(v.heap_name(), "kernel");
    assert!(v.to_string().contains("kernel write"), "{v}");
    assert!(
        buf.iter().all(|&b| b == 0xEE),
        "the kernel wrote frozen memory"
    );
    assert_eq!(
        rt.stats().parked_workers,
        0,
        "the task got an error, not parked"
    );
    // Outside a phase the same read works, and the next phase is normal.
    let n = frostheap::io::read(&zero, &mut buf).expect("a thawed buffer");
    assert_eq!(n, 4096);
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(
        rt.map(0..4u32, |x| x + 1).expect("next phase"),
        vec![1, 2, 3, 4]
    );
}

test!(kernel_write_mprotect);
fn kernel_write_mprotect() {
    kernel_write_case(Protect::Mprotect);
}

test!(kernel_write_pkey, needs: [Pkey]);
fn kernel_write_pkey() {
    kernel_write_case(Protect::Pkey);
}

// ---------------------------------------------------------------------------
// Sealed heaps.

test!(sealed_heap_is_readable_refuses_allocation_and_reports_task_writes, needs: [Mseal]);
fn sealed_heap_is_readable_refuses_allocation_and_reports_task_writes() {
    let heap = Heap::builder()
        .name("sealed")
        .max(16 << 20)
        .build()
        .expect("heap");
    let mut data: HeapVec<u64, Heap> = HeapVec::with_capacity_in(256, heap.clone());
    data.extend((0..256u64).map(|i| i * i));
    // A few freed blocks, so a refused allocation cannot be explained by
    // an empty free list.
    for _ in 0..4 {
        let b = heap
            .try_alloc(core::alloc::Layout::from_size_align(48, 8).unwrap())
            .expect("alloc");
        // SAFETY: b was just allocated by this heap.
        unsafe { heap.dealloc(b) };
    }
    heap.seal().expect("mseal works on this kernel");
    assert!(heap.is_sealed());
    assert_eq!(data[17], 289, "sealed data is readable");
    for size in [48usize, 4096, 1 << 20] {
        match heap.try_alloc(core::alloc::Layout::from_size_align(size, 8).unwrap()) {
            Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, size),
            other => panic!("allocating {size} bytes from a sealed heap: {other:?}"),
        }
    }
    let at = data.as_ptr() as usize + 8 * 17;
    // A runtime that does not even guard the heap: sealed memory is
    // read-only to everyone, and a task's write is still a violation.
    let rt = Runtime::builder()
        .workers(2)
        .guard_main_heap(false)
        .protect(Protect::Mprotect)
        .build()
        .expect("runtime");
    let err = rt
        .for_each(0..3usize, |i| {
            if i == 2 {
                // SAFETY: at points into the live vector; the store is the
                // violation under test.
                unsafe { (at as *mut u64).write_volatile(1) };
            }
        })
        .expect_err("a write to a sealed heap is a violation");
    let v = err.violation().expect("Error::Violation");
    assert_eq!(v.address(), at, "{v}");
    assert_eq!(v.heap_name(), "sealed", "{v}");
    assert_eq!(v.offset(), at - heap.base() as usize);
    assert_eq!(v.item_index(), Some(2));
    assert_eq!(data[17], 289, "the store did not happen");
    assert_eq!(rt.map(0..2u8, |x| x).expect("next phase"), vec![0, 1]);
}

test!(sealed_heap_write_from_main_kills_the_process, needs: [Mseal]);
fn sealed_heap_write_from_main_kills_the_process() {
    let out = run_example("freeze_child", &["seal-write"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sealed, data[7]=49"), "{}", describe(&out));
    assert!(!stdout.contains("survived"), "{}", describe(&out));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------
// Configuration from the environment.

/// Runs `freeze_env` (no `Global`: `Runtime::builder().build()` reads the
/// environment) with one variable set.
fn env_case(var: &str, value: &str) -> std::process::Output {
    run_example("freeze_env", &[], &[(var, value)])
}

test!(bad_protect_value_is_an_invalid_config_naming_the_variable);
fn bad_protect_value_is_an_invalid_config_naming_the_variable() {
    let out = env_case("FROSTHEAP_PROTECT", "sometimes");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("InvalidConfig name=FROSTHEAP_PROTECT value=sometimes"),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FROSTHEAP_PROTECT"), "{}", describe(&out));
    assert!(stderr.contains("\"sometimes\""), "{}", describe(&out));
    for accepted in ["auto", "pkey", "mprotect", "off"] {
        assert!(stderr.contains(accepted), "{}", describe(&out));
    }
}

test!(bad_on_violation_value_is_an_invalid_config_naming_the_variable);
fn bad_on_violation_value_is_an_invalid_config_naming_the_variable() {
    let out = env_case("FROSTHEAP_ON_VIOLATION", "explode");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("InvalidConfig name=FROSTHEAP_ON_VIOLATION value=explode"),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"explode\""), "{}", describe(&out));
    for accepted in ["cancel", "abort", "audit"] {
        assert!(stderr.contains(accepted), "{}", describe(&out));
    }
}

test!(good_environment_values_are_obeyed);
fn good_environment_values_are_obeyed() {
    let out = run_example(
        "freeze_env",
        &[],
        &[
            ("FROSTHEAP_PROTECT", "mprotect"),
            ("FROSTHEAP_ON_VIOLATION", "audit"),
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok backend=mprotect audited=1"),
        "{}",
        describe(&out)
    );
    let out = env_case("FROSTHEAP_PROTECT", "off");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok backend=off audited=0"),
        "{}",
        describe(&out)
    );
}

test!(bad_protect_value_stops_a_global_mode_program_at_startup);
fn bad_protect_value_stops_a_global_mode_program_at_startup() {
    let out = run_example(
        "freeze_child",
        &["cap", "1"],
        &[("FROSTHEAP_PROTECT", "yes")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "main ran: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", describe(&out));
    assert!(stderr.contains("FROSTHEAP_PROTECT"), "{}", describe(&out));
    assert!(stderr.contains("\"yes\""), "{}", describe(&out));
}

// ---------------------------------------------------------------------------
// Child processes: the cap, the abort policy, faults that are not ours.

test!(thousand_violations_all_reported_then_the_cap_stops_the_process);
/// 1000 violations in a row under cancel, each reported (the child checks
/// address, item and data before printing `reported k`); the 1001st
/// exceeds `max_parked(1000)` and stops the process with a clear message.
fn thousand_violations_all_reported_then_the_cap_stops_the_process() {
    let out = run_example("freeze_child", &["cap", "1000"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reported: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("reported "))
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(
        reported,
        (1..=1000).collect::<Vec<u64>>(),
        "every violation up to the cap is reported, in order\n{}",
        describe(&out)
    );
    assert!(!stdout.contains("wrong"), "{}", describe(&out));
    assert!(!stdout.contains("survived"), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frostheap: 1001 worker threads are parked after violations (the cap is 1000); stopping the process"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("max_parked"),
        "says what to do: {}",
        describe(&out)
    );
    assert!(!out.status.success());
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        describe(&out)
    );
}

test!(abort_policy_writes_the_report_and_dies_with_sigsegv);
fn abort_policy_writes_the_report_and_dies_with_sigsegv() {
    let out = run_example("freeze_child", &["abort"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let target = stdout
        .lines()
        .find_map(|l| l.strip_prefix("target "))
        .unwrap_or_else(|| panic!("no target line\n{}", describe(&out)))
        .to_string();
    assert!(!stdout.contains("survived"), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "==frostheap== VIOLATION: write to a frozen heap at {target}"
        )),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("in heap \"main\""), "{}", describe(&out));
    assert!(stderr.contains("task item #3"), "{}", describe(&out));
    assert!(
        stderr.contains("policy abort: dying with SIGSEGV"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{}",
        describe(&out)
    );
}

/// Runs `freeze_child <mode> runtime` and `freeze_child <mode> plain`
/// (the same program without a runtime, so without frostheap's handler)
/// and checks both die the same way.
fn same_with_and_without(mode: &str, signal: i32, stderr_needles: &[&str]) {
    for with in ["runtime", "plain"] {
        let out = run_example("freeze_child", &[mode, with], &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("{mode} {with}: start")),
            "{}",
            describe(&out)
        );
        assert!(!stdout.contains("survived"), "{}", describe(&out));
        assert_eq!(
            out.status.signal(),
            Some(signal),
            "{mode} {with}\n{}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in stderr_needles {
            assert!(stderr.contains(needle), "{mode} {with}\n{}", describe(&out));
        }
        assert!(
            !stderr.contains("==frostheap=="),
            "{mode} {with}\n{}",
            describe(&out)
        );
    }
}

test!(stack_overflow_in_a_thread_is_still_rusts_message_and_sigabrt);
fn stack_overflow_in_a_thread_is_still_rusts_message_and_sigabrt() {
    same_with_and_without(
        "overflow-thread",
        libc::SIGABRT,
        &["thread 'deep'", "has overflowed its stack"],
    );
}

test!(stack_overflow_in_main_is_still_rusts_message_and_sigabrt);
fn stack_overflow_in_main_is_still_rusts_message_and_sigabrt() {
    same_with_and_without(
        "overflow-main",
        libc::SIGABRT,
        &["thread 'main'", "has overflowed its stack"],
    );
}

test!(stack_overflow_inside_a_task_is_still_rusts_message_and_sigabrt);
fn stack_overflow_inside_a_task_is_still_rusts_message_and_sigabrt() {
    let out = run_example("freeze_child", &["overflow-task", "runtime"], &[]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("thread 'frostheap-worker-") && stderr.contains("has overflowed its stack"),
        "{}",
        describe(&out)
    );
}

test!(null_pointer_write_still_crashes_with_sigsegv);
fn null_pointer_write_still_crashes_with_sigsegv() {
    same_with_and_without("null-write", libc::SIGSEGV, &[]);
}

test!(write_to_a_prot_none_page_outside_any_heap_still_crashes_with_sigsegv);
fn write_to_a_prot_none_page_outside_any_heap_still_crashes_with_sigsegv() {
    same_with_and_without("protnone-write", libc::SIGSEGV, &[]);
}

test!(null_pointer_write_inside_a_task_still_crashes_with_sigsegv);
fn null_pointer_write_inside_a_task_still_crashes_with_sigsegv() {
    let out = run_example("freeze_child", &["null-write-task", "runtime"], &[]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{}",
        describe(&out)
    );
}

test!(frees_after_seal_are_no_ops_on_every_path, needs: [Mseal]);
/// Regression: after `seal`, frees are no-ops on every path — the owner's
/// fast path (a `Vec` dropped on the sealed heap), another thread's remote
/// path, and large blocks — and allocation fails on every size class,
/// while the data stays readable. (`seal` diverts the fast paths instead
/// of checking a flag on them.)
fn frees_after_seal_are_no_ops_on_every_path() {
    use std::alloc::Layout;
    let heap = frostheap::Heap::builder()
        .name("sealed-frees")
        .max(64 << 20)
        .build()
        .unwrap();
    let mut small = allocator_api2::vec::Vec::new_in(heap.clone());
    small.extend(0..100u32);
    let mut large = allocator_api2::vec::Vec::new_in(heap.clone());
    large.extend(0..100_000u64);
    let other = heap
        .try_alloc(Layout::from_size_align(48, 8).unwrap())
        .unwrap();
    let before = heap.stats();
    heap.seal().expect("mseal works on this kernel");
    assert!(heap.is_sealed());
    assert_eq!(small[42], 42);
    assert_eq!(large[99_999], 99_999);
    for size in [16, 48, 1000, 4096, 100 << 10, 1 << 20] {
        let e = heap
            .try_alloc(Layout::from_size_align(size, 8).unwrap())
            .unwrap_err();
        assert!(
            matches!(e, frostheap::Error::OutOfMemory { .. }),
            "size {size}: {e}"
        );
    }
    drop(small); // the owner's fast path
    drop(large); // a large block
    let h = heap.clone();
    let addr = other.as_ptr() as usize;
    std::thread::spawn(move || {
        // SAFETY: `other` was allocated by `h` and is freed once, here.
        unsafe { h.dealloc(std::ptr::NonNull::new(addr as *mut u8).unwrap()) }
    })
    .join()
    .expect("a remote free on a sealed heap is a no-op, not a crash");
    let after = heap.stats();
    assert_eq!(
        after.in_use, before.in_use,
        "nothing is freed (or written) in a sealed heap"
    );
}

test!(an_out_of_bounds_read_in_a_task_is_a_crash_not_a_violation);
/// A task that *reads* past the committed part of a frozen heap (its
/// PROT_NONE tail) crashes like any out-of-bounds read: the handler claims
/// only writes (the page-fault error code says which), so no violation is
/// reported and the previous handler's SIGSEGV stands.
fn an_out_of_bounds_read_in_a_task_is_a_crash_not_a_violation() {
    same_with_and_without("oob-read", libc::SIGSEGV, &[]);
}

test!(track_allocs_names_where_the_violated_block_was_allocated);
/// `FROSTHEAP_TRACK_ALLOCS=1`: the report says where the violated block was
/// allocated (the example's `build_data`); without it, no site is shown.
fn track_allocs_names_where_the_violated_block_was_allocated() {
    let out = run_example("violation", &[], &[("FROSTHEAP_TRACK_ALLOCS", "1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout.contains("violation example: ok"),
        "{}",
        describe(&out)
    );
    let site = stdout
        .split("allocated at:")
        .nth(1)
        .unwrap_or_else(|| panic!("no allocation site:\n{stdout}"));
    let first = site.lines().nth(1).unwrap_or("");
    assert!(
        first.contains("build_data"),
        "the first site frame is the program's own: {first}\n{stdout}"
    );

    let plain = run_example("violation", &[], &[]);
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.status.success(), "{}", describe(&plain));
    assert!(!stdout.contains("allocated at:"), "{stdout}");
}
