//! Freezing beyond the violation matrix: choosing a backend, threads that
//! are not workers, writes the kernel makes, sealed heaps, configuration
//! from the environment, and — in child processes — the cap on parked
//! threads, the abort policy, and faults that are none of frostheap's
//! business (stack overflow, wild writes), which must behave exactly as
//! without frostheap.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use allocator_api2::vec::Vec as HeapVec;
use frostheap::{Access, Backend};
use frostheap::{Error, Heap, OnViolation, Protect, Runtime};

use crate::check::{describe, run_fixture};
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
    if frostheap::__private::pkeys_available() {
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
    if frostheap::__private::pkeys_available() {
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

test!(non_worker_thread_store_lands_during_the_phase_and_is_never_undone);
/// A plain std thread writes the guarded heap while a phase is running.
/// Under mprotect its store is stepped through the fault handler (the page
/// opened for that one instruction): it lands during the phase, is never
/// reported, and is not undone by the rollback of a task's violation on
/// the same page. It used to wait in the handler until the thaw, which
/// hung for good when a task waited for that thread (`thread::spawn(..)
/// .join()` in a task, issue 13 case 4).
///
/// First phase: the task waits until the bystander's store has landed, or
/// until the bystander is seen blocked in `futex` (its
/// `/proc/self/task/<tid>/syscall` line) on anything but the step lock,
/// which is the failure: no sleep decides anything. A wait on the step
/// lock is another thread's step in progress (another test's, when tests
/// run side by side: seen once in the emulated guest's shuffled run), and
/// the step lock's holder lets go after one instruction. Second phase:
/// the same store next to a violating task on the same page.
fn non_worker_thread_store_lands_during_the_phase_and_is_never_undone() {
    let protect = Protect::Mprotect;
    let heap = guarded_heap("bystander");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..1024u64);
    let at = data.as_mut_ptr() as usize + 8 * 500;
    let rt = runtime(&heap, protect, OnViolation::Rollback);
    let writer_tid = Arc::new(AtomicU32::new(0));
    let go = Arc::new(AtomicU32::new(0));
    let wrote = Arc::new(AtomicU32::new(0));
    let writer = {
        let (writer_tid, go, wrote) = (writer_tid.clone(), go.clone(), wrote.clone());
        std::thread::spawn(move || {
            writer_tid.store(gettid(), Ordering::Release);
            for round in 1..=2u32 {
                // Wait until a phase is running (a task says so).
                while go.load(Ordering::Acquire) < round {
                    std::thread::yield_now();
                }
                // SAFETY: at points into the live vector; the thread is not
                // a worker, so its store is legal during a phase.
                unsafe { (at as *mut u64).write_volatile(0xB0B0 + round as u64) };
                wrote.store(round, Ordering::Release);
            }
        })
    };
    while writer_tid.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let tid = writer_tid.load(Ordering::Acquire);
    let step_lock = frostheap::__private::step_lock_address();
    // What the task saw: (the writer was blocked in futex, the value read
    // during the phase once its store was done).
    let seen = std::sync::Mutex::new(None);
    rt.for_each(0..1usize, |_| {
        go.store(1, Ordering::Release);
        let blocked = loop {
            if wrote.load(Ordering::Acquire) == 1 {
                break false;
            }
            if futex_waited_on(tid).is_some_and(|at| at != step_lock) {
                break true;
            }
            std::thread::yield_now();
        };
        // SAFETY: reading the frozen vector is allowed.
        let value = unsafe { (at as *const u64).read_volatile() };
        *seen.lock().unwrap() = Some((blocked, value));
    })
    .expect("a bystander's store is no violation");
    let (blocked, value) = seen.into_inner().unwrap().expect("the task ran");
    assert!(
        !blocked,
        "the bystander waited for the thaw instead of storing during the phase"
    );
    assert_eq!(value, 0xB0B1, "the store landed during the phase");
    assert_eq!(data[500], 0xB0B1);
    assert_eq!(rt.stats().violations, 0, "a bystander is never a violator");

    // Second phase: item 1 violates on the same page (word 501) and waits
    // for the bystander's store; the rollback undoes the violation only.
    let victim = &data[501] as *const u64 as usize;
    let r = rt.for_each(0..2usize, |i| {
        if i == 1 {
            // SAFETY: victim points into the live vector; the store is the
            // violation under test.
            unsafe { (victim as *mut u64).write_volatile(u64::MAX) };
            go.store(2, Ordering::Release);
            while wrote.load(Ordering::Acquire) < 2 {
                std::thread::yield_now();
            }
        }
    });
    let v = r.expect_err("the task's store is a violation");
    let v = v.violation().expect("a violation");
    assert_eq!((v.address(), v.item_index()), (victim, Some(1)));
    assert!(v.other_stores().is_empty(), "the bystander is not reported");
    assert_eq!(v.stores_undone(), 1);
    writer.join().expect("the writer thread survives");
    assert_eq!(data[500], 0xB0B2, "the bystander's store stays");
    assert_eq!(data[501], 501, "the violation is undone");
    assert_eq!(rt.stats().parked_workers, 0);
}

/// The calling thread's kernel id.
fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The address thread `tid` of this process waits on, if it is blocked in
/// `futex(2)`: `/proc/self/task/<tid>/syscall` holds the number of the call
/// a blocked thread is in, then its arguments in hexadecimal (for `futex`,
/// the address first).
fn futex_waited_on(tid: u32) -> Option<usize> {
    let path = format!("/proc/self/task/{tid}/syscall");
    let line = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut fields = line.split_whitespace();
    if fields.next() != Some(&libc::SYS_futex.to_string()) {
        return None;
    }
    let at = fields.next().unwrap_or_else(|| panic!("{path}: no arguments in {line:?}"));
    let hex = at.trim_start_matches("0x");
    Some(usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{path}: {at} is no address")))
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
// A large block moved by its growth.

/// A guarded heap's large block that grew by moving its pages (the pages
/// after it taken: `realloc` moves them with `mremap` to a free run of
/// the heap's range) is frozen where it went, the part it grew by too: a
/// task's write to either is a violation, undone at the thaw, and the
/// block holds what it held. The moved mapping keeps its own protection
/// and protection key; this checks that they are the heap's (a move
/// that left the heap's pages unguarded would let the writes through).
/// The room the block left is guarded too.
fn a_moved_block_stays_guarded(protect: Protect) {
    let heap = Heap::builder()
        .name("moved")
        .max(64 << 20)
        .huge_pages(frostheap::HugePages::Off)
        .build()
        .expect("a 64 MiB heap on base pages");
    let rt = runtime(&heap, protect, OnViolation::Rollback);
    let mib = 1 << 20;
    let old = std::alloc::Layout::from_size_align(2 * mib, 16).unwrap();
    let p = heap.try_alloc(old).unwrap();
    let pin = heap.try_alloc(std::alloc::Layout::from_size_align(mib, 16).unwrap()).unwrap();
    // SAFETY: p holds 2 MiB.
    unsafe { p.as_ptr().write_bytes(0x5A, 2 * mib) };
    // SAFETY: p is live, allocated with `old`.
    let q = unsafe { heap.try_realloc(p, old, 3 * mib) }.expect("the growth");
    assert_ne!(q, p, "the pin keeps the block from growing in place: it moved");
    // SAFETY: q holds 3 MiB.
    unsafe { q.as_ptr().add(2 * mib).write_bytes(0x5A, mib) };
    let (q_addr, p_addr) = (q.as_ptr() as usize, p.as_ptr() as usize);
    // The room the block left, taken again.
    let again = heap.try_alloc(std::alloc::Layout::from_size_align(mib, 16).unwrap()).unwrap();
    assert!(
        (p_addr..p_addr + 2 * mib).contains(&(again.as_ptr() as usize)),
        "the next block takes the room the moved one left"
    );
    // SAFETY: `again` holds 1 MiB.
    unsafe { again.as_ptr().write_bytes(0x5A, mib) };
    let again_addr = again.as_ptr() as usize;
    let targets = [q_addr, q_addr + 3 * mib / 2, q_addr + 3 * mib - 64, again_addr];
    let err = rt
        .for_each(0..targets.len(), |i| {
            // SAFETY: each target is a byte of a live block; the write
            // is the violation under test.
            unsafe { core::ptr::write_volatile(targets[i] as *mut u8, 0xEE) };
        })
        .expect_err("every write to the frozen heap is a violation");
    let v = err.violation().expect("Error::Violation");
    assert_eq!(v.stores_undone(), targets.len(), "{v}");
    // SAFETY: the blocks are live and thawed.
    unsafe {
        let all = |at: usize, len: usize| {
            core::slice::from_raw_parts(at as *const u8, len).iter().all(|&b| b == 0x5A)
        };
        assert!(all(q_addr, 3 * mib), "the moved block holds what it held");
        assert!(all(again_addr, mib));
        heap.dealloc(again);
        heap.dealloc(q);
        heap.dealloc(pin);
    }
    assert_eq!(heap.stats().in_use, 0);
}

test!(a_moved_block_stays_guarded_mprotect);
fn a_moved_block_stays_guarded_mprotect() {
    a_moved_block_stays_guarded(Protect::Mprotect);
}

test!(a_moved_block_stays_guarded_pkey, needs: [Pkey]);
fn a_moved_block_stays_guarded_pkey() {
    a_moved_block_stays_guarded(Protect::Pkey);
}

/// A store to the last bytes of a heap's committed range: with a key the
/// handler saves the 64 bytes on either side of it, and read past the
/// range into the page above, uncommitted (`PROT_NONE`), inside the
/// handler: the process died of SIGSEGV.
fn a_store_at_the_end_of_the_committed_range_is_undone(protect: Protect) {
    let heap = Heap::builder()
        .name("end")
        .max(64 << 20)
        .huge_pages(frostheap::HugePages::Off)
        .build()
        .expect("a 64 MiB heap on base pages");
    let rt = runtime(&heap, protect, OnViolation::Rollback);
    let mib = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(mib, 16).unwrap();
    let p = heap.try_alloc(layout).unwrap();
    // The premise: the block is the heap's whole first growth, so its
    // last byte is the committed range's.
    assert_eq!(heap.stats().committed, mib, "{:?}", heap.stats());
    // SAFETY: p holds 1 MiB.
    unsafe { p.as_ptr().write_bytes(0x5A, mib) };
    let last = p.as_ptr() as usize + mib - 1;
    for _ in 0..3 {
        let err = rt
            .for_each(0..1, |_| {
                // SAFETY: the block's last byte; the write is the violation.
                unsafe { core::ptr::write_volatile(last as *mut u8, 0xEE) };
            })
            .expect_err("the write to the frozen heap is a violation");
        let v = err.violation().expect("Error::Violation");
        assert_eq!((v.address(), v.stores_undone()), (last, 1), "{v}");
        // SAFETY: p is live and thawed.
        assert_eq!(unsafe { *(last as *const u8) }, 0x5A, "the store was undone");
    }
    // SAFETY: p is live, allocated with `layout`.
    unsafe { heap.dealloc(p) };
}

test!(a_store_at_the_end_of_the_committed_range_is_undone_mprotect);
fn a_store_at_the_end_of_the_committed_range_is_undone_mprotect() {
    a_store_at_the_end_of_the_committed_range_is_undone(Protect::Mprotect);
}

test!(a_store_at_the_end_of_the_committed_range_is_undone_pkey, needs: [Pkey]);
fn a_store_at_the_end_of_the_committed_range_is_undone_pkey() {
    a_store_at_the_end_of_the_committed_range_is_undone(Protect::Pkey);
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
    // Refused as sealed: the message read "48 B requested, ... in use,
    // limit 16 MiB; raise max (FROSTHEAP_MAX) or free memory first",
    // neither of which can help.
    for size in [48usize, 4096, 1 << 20] {
        match heap.try_alloc(core::alloc::Layout::from_size_align(size, 8).unwrap()) {
            Err(
                ref e @ Error::OutOfMemory {
                    requested,
                    refused_by,
                    ..
                },
            ) => {
                assert_eq!(
                    (requested, refused_by),
                    (size, frostheap::RefusedBy::Sealed)
                );
                let msg = e.to_string();
                assert!(
                    msg.contains("from a sealed heap")
                        && msg.contains("allocates nothing more")
                        && !msg.contains("raise"),
                    "{msg}"
                );
            }
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

test!(a_bystander_with_a_small_signal_stack_stores_into_a_frozen_heap);
/// A thread whose alternate signal stack holds the kernel's frame and 1.5
/// KiB more stores into the frozen main heap during an `mprotect` phase:
/// a move the handler performs and a shift it steps through. Both land,
/// and the process lives: the handlers move to a spare stack when theirs
/// is short (a debug build's overflowed std's 8 KiB stack on a CPU with
/// AVX-512, and the `it` binary died of SIGSEGV).
fn a_bystander_with_a_small_signal_stack_stores_into_a_frozen_heap() {
    let out = run_fixture("freeze_child", &["bystander-small-stack"], &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stored 0xb0b0 0x30"), "{}", describe(&out));
}

test!(sealed_heap_write_from_main_kills_the_process, needs: [Mseal]);
fn sealed_heap_write_from_main_kills_the_process() {
    let out = run_fixture("freeze_child", &["seal-write"], &[]);
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

/// Runs `freeze_env` (no `Global`: `Heap::builder().build()`, the first
/// build, reads the environment) with one variable set.
fn env_case(var: &str, value: &str) -> std::process::Output {
    run_fixture("freeze_env", &[], &[(var, value)])
}

test!(bad_protect_value_is_an_invalid_config_naming_the_variable);
fn bad_protect_value_is_an_invalid_config_naming_the_variable() {
    let out = env_case("FROSTHEAP_PROTECT", "sometimes");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("InvalidConfig name=FROSTHEAP_PROTECT value=sometimes runtime_same=true"),
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
        stdout.contains("InvalidConfig name=FROSTHEAP_ON_VIOLATION value=explode runtime_same=true"),
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
    let out = run_fixture(
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
    let out = run_fixture(
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

test!(thousand_violations_all_reported_then_the_cap_refuses_every_call);
/// 1000 violations in a row under cancel, each reported (the child checks
/// address, item and data before printing `reported k`); then
/// `max_parked(1000)` threads are parked, and every later call is refused
/// with `Error::Incomplete` naming `max_parked` — never `Ok`, and the
/// process goes on (it used to stop with SIGABRT).
fn thousand_violations_all_reported_then_the_cap_refuses_every_call() {
    let out = run_fixture("freeze_child", &["cap", "1000"], &[]);
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
    let refused: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("refused ")?.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(
        refused,
        (1001..=1005).collect::<Vec<u64>>(),
        "every call past the cap is refused\n{}",
        describe(&out)
    );
    assert!(!stdout.contains("wrong"), "{}", describe(&out));
    assert!(out.status.success(), "{}", describe(&out));
}

test!(abort_policy_writes_the_report_and_dies_with_sigsegv);
fn abort_policy_writes_the_report_and_dies_with_sigsegv() {
    let out = run_fixture("freeze_child", &["abort"], &[]);
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
    crashes_alike(mode, signal, stderr_needles, &[], &[]);
}

/// [`same_with_and_without`] with `env` set for both runs, and `forbidden`
/// words that neither run may print (where the scenario prints one past
/// the point where it should have died).
fn crashes_alike(
    mode: &str,
    signal: i32,
    stderr_needles: &[&str],
    env: &[(&str, &str)],
    forbidden: &[&str],
) {
    for with in ["runtime", "plain"] {
        let out = run_fixture("freeze_child", &[mode, with], env);
        let what = format!("{mode} {with} {env:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("{mode} {with}: start")),
            "{what}\n{}",
            describe(&out)
        );
        for word in forbidden.iter().chain(&["survived"]) {
            assert!(!stdout.contains(word), "{what}: {word}\n{}", describe(&out));
        }
        assert_eq!(
            out.status.signal(),
            Some(signal),
            "{what}\n{}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in stderr_needles {
            assert!(stderr.contains(needle), "{what}\n{}", describe(&out));
        }
        assert!(!stderr.contains("==frostheap=="), "{what}\n{}", describe(&out));
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
    let out = run_fixture("freeze_child", &["overflow-task", "runtime"], &[]);
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
    let out = run_fixture("freeze_child", &["null-write-task", "runtime"], &[]);
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

test!(an_out_of_bounds_store_during_a_phase_is_a_crash_on_mprotect);
/// Regression: a store past the committed part of a frozen heap (into the
/// `PROT_NONE` rest of its range) is the program's crash at that store, as
/// without a phase, whether a task or another thread makes it. On
/// `mprotect` a bystander's was performed (the kernel's forced write lands
/// in a `PROT_NONE` page too) and a task's judged a violation: the store
/// landed (`stored` printed) in a page no one had committed, which the
/// heap takes for zeroes when it commits it.
fn an_out_of_bounds_store_during_a_phase_is_a_crash_on_mprotect() {
    oob_store_crashes("mprotect");
}

test!(an_out_of_bounds_store_during_a_phase_is_a_crash_on_pkey, needs: [Pkey]);
/// The same with protection keys: the rest of the range carries the
/// heap's key, so the fault says `SEGV_PKUERR` there too.
fn an_out_of_bounds_store_during_a_phase_is_a_crash_on_pkey() {
    oob_store_crashes("pkey");
}

/// Both stores of [`an_out_of_bounds_store_during_a_phase_is_a_crash_on_mprotect`]
/// with a runtime of `backend`, each against the same store without one
/// ([`crashes_alike`]; `stored` is printed if the store landed); the
/// task's under the default policy (rollback) and under audit.
fn oob_store_crashes(backend: &str) {
    for (mode, policy) in [
        ("oob-write-task", "rollback"),
        ("oob-write-task", "audit"),
        ("oob-write-bystander", "rollback"),
    ] {
        crashes_alike(
            mode,
            libc::SIGSEGV,
            &[],
            &[
                ("FROSTHEAP_PROTECT", backend),
                ("FROSTHEAP_ON_VIOLATION", policy),
            ],
            &["stored"],
        );
    }
}

test!(track_allocs_names_where_the_violated_block_was_allocated);
/// `FROSTHEAP_TRACK_ALLOCS=1`: the report says where the violated block was
/// allocated (the fixture's `build_data`); without it, no site is shown.
fn track_allocs_names_where_the_violated_block_was_allocated() {
    let out = run_fixture("violation", &[], &[("FROSTHEAP_TRACK_ALLOCS", "1")]);
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

    let plain = run_fixture("violation", &[], &[]);
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.status.success(), "{}", describe(&plain));
    assert!(!stdout.contains("allocated at:"), "{stdout}");
}

// ---------------------------------------------------------------------------
// Signal handlers on workers.

/// The guarded words a SIGUSR1 handler sums, and what it found.
static SIGNAL_DATA: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_LEN: AtomicUsize = AtomicUsize::new(0);
static SIGNAL_SUM: AtomicU64 = AtomicU64::new(0);
static SIGNAL_CALLS: AtomicUsize = AtomicUsize::new(0);
/// One signal test at a time: they share the handler's statics.
static SIGNAL_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A user's SIGUSR1 handler that reads guarded data (async-signal-safe:
/// plain loads and atomics).
extern "C" fn sum_guarded_words(_: libc::c_int) {
    let (base, len) = (
        SIGNAL_DATA.load(Ordering::Acquire),
        SIGNAL_LEN.load(Ordering::Acquire),
    );
    let mut sum = 0u64;
    for i in 0..len {
        // SAFETY: base..base+len words are the live guarded vector, which
        // the test keeps alive while signals are sent.
        sum = sum.wrapping_add(unsafe { ((base as *const u64).add(i)).read_volatile() });
    }
    SIGNAL_SUM.store(sum, Ordering::Release);
    SIGNAL_CALLS.fetch_add(1, Ordering::AcqRel);
}

/// Regression (pkey): a signal handler runs with the kernel's default
/// PKRU, which denies the key, so a user's handler that reads guarded data
/// on a worker inside a phase faulted with `SEGV_PKUERR` and was reported
/// as a violation (its worker parked inside the handler). A read is never
/// a violation: the handler reads the data, as under mprotect, and the
/// phase succeeds.
fn user_signal_handler_on_a_worker_reads_guarded_data(protect: Protect) {
    let _one_at_a_time = SIGNAL_TEST.lock().unwrap_or_else(|e| e.into_inner());
    let heap = guarded_heap("signalled");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend((0..4096u64).map(|i| i * 3 + 1));
    let want: u64 = data.iter().sum();
    SIGNAL_DATA.store(data.as_ptr() as usize, Ordering::Release);
    SIGNAL_LEN.store(data.len(), Ordering::Release);
    SIGNAL_CALLS.store(0, Ordering::Release);
    // SAFETY: a plain handler that only reads memory and atomics.
    let previous = unsafe {
        libc::signal(
            libc::SIGUSR1,
            sum_guarded_words as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    assert_ne!(previous, libc::SIG_ERR);
    let rt = runtime(&heap, protect, OnViolation::Cancel);
    let out = rt.map(0..4usize, |i| {
        if i == 2 {
            SIGNAL_SUM.store(0, Ordering::Release);
            // SAFETY: sending SIGUSR1 to this worker thread, whose handler
            // is installed above; it runs before pthread_kill returns.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
            assert_eq!(rc, 0);
            SIGNAL_SUM.load(Ordering::Acquire)
        } else {
            i as u64
        }
    });
    // SAFETY: restoring the previous disposition.
    unsafe { libc::signal(libc::SIGUSR1, previous) };
    let sums = match out {
        Ok(sums) => sums,
        Err(e) => panic!("{protect:?}: a signal handler's read was reported: {e}"),
    };
    assert_eq!(SIGNAL_CALLS.load(Ordering::Acquire), 1, "{protect:?}");
    assert_eq!(
        sums[2], want,
        "{protect:?}: the handler read the guarded data"
    );
    assert_eq!(rt.stats().violations, 0, "{protect:?}");
    assert_eq!(rt.stats().parked_workers, 0, "{protect:?}");
    // The handler's read access ended with the handler: a write by the
    // next task is still a violation.
    let at = &data[7] as *const u64 as usize;
    let err = rt
        .for_each(0..2usize, |i| {
            if i == 1 {
                // SAFETY: at points into the live vector; the store is the
                // violation under test.
                unsafe { (at as *mut u64).write_volatile(0) };
            }
        })
        .expect_err("a write after the signal is still a violation");
    assert_eq!(err.violation().expect("a violation").address(), at);
    assert_eq!(data[7], 22, "the store did not happen");
}

test!(user_signal_handler_on_a_worker_reads_guarded_data_mprotect);
fn user_signal_handler_on_a_worker_reads_guarded_data_mprotect() {
    user_signal_handler_on_a_worker_reads_guarded_data(Protect::Mprotect);
}

test!(user_signal_handler_on_a_worker_reads_guarded_data_pkey, needs: [Pkey]);
fn user_signal_handler_on_a_worker_reads_guarded_data_pkey() {
    user_signal_handler_on_a_worker_reads_guarded_data(Protect::Pkey);
}

// ---------------------------------------------------------------------------
// Huge pages.

/// The values of field `field` in `smaps` (the text of a
/// `/proc/<pid>/smaps`), one per mapping that overlaps `[start, end)`.
fn smaps_field(smaps: &str, start: usize, end: usize, field: &str) -> Vec<usize> {
    let mut values = Vec::new();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let lo = usize::from_str_radix(lo, 16).expect("a mapping's start");
            let hi = usize::from_str_radix(hi, 16).expect("a mapping's end");
            inside = lo < end && start < hi;
        } else if inside && first.strip_suffix(':') == Some(field) {
            values.push(line.split_whitespace().nth(1).unwrap().parse().unwrap());
        }
    }
    values
}

/// This process's `/proc/self/smaps`.
fn own_smaps() -> String {
    std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps")
}

/// Checks that the touched `TOUCHED_MIB` of `[start, end)` are resident
/// and that none of it is a huge page.
fn assert_no_huge_pages(smaps: &str, start: usize, end: usize, what: &str) {
    let rss_kb = smaps_field(smaps, start, end, "Rss");
    assert!(!rss_kb.is_empty(), "{what}: no mapping of the region in smaps");
    let rss: usize = rss_kb.iter().sum();
    assert!(
        rss >= TOUCHED_MIB << 10,
        "{what}: the touched block is resident ({rss} kB in {} mappings)",
        rss_kb.len()
    );
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_default();
    let huge: usize = smaps_field(smaps, start, end, "AnonHugePages").iter().sum();
    assert_eq!(
        huge,
        0,
        "{what}, THP {}: {huge} kB of huge pages in the region",
        thp.trim()
    );
}

/// MiB the huge-page tests write.
const TOUCHED_MIB: usize = 32;

test!(huge_pages_off_means_no_huge_pages_even_where_thp_is_always);
/// Regression: `HugePages::Off` got huge pages where THP is `always`
/// system-wide (88–96% of the "4 KiB" benchmark column in the pkey
/// guest). Off means `MADV_NOHUGEPAGE`: not one huge page in the region.
fn huge_pages_off_means_no_huge_pages_even_where_thp_is_always() {
    let heap = Heap::builder()
        .name("small-pages")
        .max(256 << 20)
        .huge_pages(frostheap::HugePages::Off)
        .build()
        .expect("heap");
    let touched = TOUCHED_MIB << 20;
    let block = heap
        .try_alloc(std::alloc::Layout::from_size_align(touched, 1 << 21).unwrap())
        .expect("32 MiB");
    // SAFETY: a fresh block of `touched` bytes.
    unsafe { core::ptr::write_bytes(block.as_ptr(), 0x5A, touched) };
    let start = heap.base() as usize;
    let end = start + heap.stats().reserved;
    assert_no_huge_pages(&own_smaps(), start, end, "HugePages::Off");
    // SAFETY: allocated above, freed once.
    unsafe { heap.dealloc(block) };
}

test!(huge_pages_off_holds_for_the_main_heap_of_a_global_mode_program);
/// The same for `FROSTHEAP_HUGE_PAGES=off` and the main heap, which is
/// carved from the process's one reservation (the child writes 32 MiB in
/// it and prints the heap's range and its smaps).
fn huge_pages_off_holds_for_the_main_heap_of_a_global_mode_program() {
    let out = run_fixture(
        "freeze_child",
        &["huge-pages"],
        &[("FROSTHEAP_HUGE_PAGES", "off")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (range, smaps) = stdout
        .split_once('\n')
        .unwrap_or_else(|| panic!("no output\n{}", describe(&out)));
    let bounds: Vec<usize> = range
        .strip_prefix("main heap ")
        .unwrap_or_else(|| panic!("no range line\n{}", describe(&out)))
        .split(' ')
        .map(|n| usize::from_str_radix(n.trim_start_matches("0x"), 16).expect("an address"))
        .collect();
    assert_no_huge_pages(smaps, bounds[0], bounds[1], "FROSTHEAP_HUGE_PAGES=off");
}

/// The `VmFlags` of each mapping in `smaps` that overlaps `[start, end)`.
fn smaps_flags(smaps: &str, start: usize, end: usize) -> Vec<String> {
    let mut flags = Vec::new();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let lo = usize::from_str_radix(lo, 16).expect("a mapping's start");
            let hi = usize::from_str_radix(hi, 16).expect("a mapping's end");
            inside = lo < end && start < hi;
        } else if inside && first == "VmFlags:" {
            flags.push(line["VmFlags:".len()..].trim().to_string());
        }
    }
    flags
}

/// The main heap as the `huge-switch` fixture saw it at one moment.
struct MainHeapView {
    /// `Stats::huge_pages`.
    huge_pages: bool,
    /// `Stats::collapse_errno`.
    collapse_errno: i32,
    /// kB of huge pages in the heap's range.
    anon_huge_kb: usize,
    /// The `VmFlags` of each mapping of the range.
    flags: Vec<String>,
}

impl MainHeapView {
    /// Whether every mapping of the range is advised `MADV_HUGEPAGE`.
    fn advised_huge(&self) -> bool {
        !self.flags.is_empty()
            && self
                .flags
                .iter()
                .all(|f| f.split_whitespace().any(|w| w == "hg"))
    }

    /// Whether no mapping of the range is.
    fn advised_base(&self) -> bool {
        !self.flags.is_empty()
            && self
                .flags
                .iter()
                .all(|f| !f.split_whitespace().any(|w| w == "hg"))
    }
}

/// Runs the `huge-switch` fixture with `backend` under `env`: the main
/// heap before a runtime guards it and (unless `backend` is `none`) after
/// one has, with a phase run.
fn main_heap_views(backend: &str, env: &[(&str, &str)]) -> Vec<MainHeapView> {
    let out = run_fixture("freeze_child", &["huge-switch", backend], env);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut parts = stdout.split("--- ");
    let bounds: Vec<usize> = parts
        .next()
        .and_then(|l| l.trim().strip_prefix("main heap "))
        .unwrap_or_else(|| panic!("no range line\n{}", describe(&out)))
        .split(' ')
        .map(|n| usize::from_str_radix(n.trim_start_matches("0x"), 16).expect("an address"))
        .collect();
    let (start, end) = (bounds[0], bounds[1]);
    parts
        .map(|part| {
            let mut lines = part.splitn(3, '\n');
            let _when = lines.next();
            let stats: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
            let smaps = lines.next().unwrap_or("");
            match stats[..] {
                ["huge_pages", huge, "collapse_errno", errno] => MainHeapView {
                    huge_pages: huge == "true",
                    collapse_errno: errno.parse().expect("an errno"),
                    anon_huge_kb: smaps_field(smaps, start, end, "AnonHugePages").iter().sum(),
                    flags: smaps_flags(smaps, start, end),
                },
                _ => panic!("no stats line\n{}", describe(&out)),
            }
        })
        .collect()
}

test!(main_heap_moves_to_huge_pages_at_its_first_mprotect_guard, needs: [Thp]);
/// `FROSTHEAP_HUGE_PAGES=auto` in a Rust program: the main heap is on
/// base pages (no huge page, no `MADV_HUGEPAGE`) until a runtime guards it
/// with the `mprotect` backend; then the whole region is advised
/// `MADV_HUGEPAGE` and the 8 MiB written before are collapsed into huge
/// pages, where the kernel has `MADV_COLLAPSE` and agrees.
fn main_heap_moves_to_huge_pages_at_its_first_mprotect_guard() {
    let views = main_heap_views("mprotect", &[]);
    let [before, after] = &views[..] else {
        panic!("two views of the main heap, not {}", views.len())
    };
    assert!(!before.huge_pages, "no huge pages before a guard");
    assert!(before.advised_base(), "before: {:?}", before.flags);
    assert_eq!(before.anon_huge_kb, 0, "before a guard: huge pages");
    assert!(after.huge_pages, "Stats::huge_pages after the guard");
    assert!(after.advised_huge(), "after: {:?}", after.flags);
    if after.collapse_errno != 0 {
        // The kernel's refusal is reported, the guard is not failed; what
        // it left on base pages cannot be checked.
        eprintln!(
            "main_heap_moves_to_huge_pages_at_its_first_mprotect_guard: NOT CHECKED: the 8 MiB \
             collapsed into huge pages: MADV_COLLAPSE refused, errno {} (AnonHugePages {} kB)",
            after.collapse_errno, after.anon_huge_kb
        );
        return;
    }
    // The 8 MiB block covers at least three whole 2 MiB ranges.
    assert!(
        after.anon_huge_kb >= 6 << 10,
        "collapsed: {} kB of huge pages",
        after.anon_huge_kb
    );
}

test!(main_heap_stays_on_base_pages_under_the_pkey_backend, needs: [Pkey, Thp]);
/// Under `pkey` a freeze is one register write whatever the page size:
/// guarding the main heap and running a phase leave it on base pages.
fn main_heap_stays_on_base_pages_under_the_pkey_backend() {
    let views = main_heap_views("pkey", &[]);
    let [before, after] = &views[..] else {
        panic!("two views of the main heap, not {}", views.len())
    };
    for (when, v) in [("before", before), ("after", after)] {
        assert!(!v.huge_pages, "{when}: Stats::huge_pages");
        assert!(v.advised_base(), "{when}: {:?}", v.flags);
        assert_eq!(v.anon_huge_kb, 0, "{when}: huge pages");
        assert_eq!(v.collapse_errno, 0, "{when}: no collapse tried");
    }
}

test!(main_heap_huge_pages_on_and_off_are_kept_from_the_start, needs: [Thp]);
/// `FROSTHEAP_HUGE_PAGES=on`: huge pages from the first byte, as before
/// the switch existed; `off`: never, not even after an `mprotect` guard.
fn main_heap_huge_pages_on_and_off_are_kept_from_the_start() {
    let on = main_heap_views("none", &[("FROSTHEAP_HUGE_PAGES", "on")]);
    assert!(on[0].huge_pages, "on: Stats::huge_pages");
    assert!(on[0].advised_huge(), "on: {:?}", on[0].flags);
    let off = main_heap_views("mprotect", &[("FROSTHEAP_HUGE_PAGES", "off")]);
    for (when, v) in ["before", "after"].into_iter().zip(&off) {
        assert!(!v.huge_pages, "off, {when}: Stats::huge_pages");
        assert!(v.advised_base(), "off, {when}: {:?}", v.flags);
        assert_eq!(v.anon_huge_kb, 0, "off, {when}: huge pages");
    }
}

// ---------------------------------------------------------------------------
// Guard entries live exactly as long as their heap.

/// The protection keys `/proc/self/smaps` shows for the mappings that
/// overlap `[start, end)` (empty where the kernel shows none).
fn protection_keys(start: usize, end: usize) -> Vec<usize> {
    smaps_field(&own_smaps(), start, end, "ProtectionKey")
}

/// A runtime of one worker guarding `heap`.
fn one_worker_runtime(heap: &Heap, protect: Protect, policy: OnViolation) -> Runtime {
    Runtime::builder()
        .workers(1)
        .guard(heap)
        .guard_main_heap(false)
        .protect(protect)
        .on_violation(policy)
        .build()
        .expect("runtime")
}

/// Has a task of `rt` write `at` and returns the address reported, if any.
fn caught_write(rt: &Runtime, policy: OnViolation, at: usize) -> Option<usize> {
    let out = rt.for_each(0..2usize, |i| {
        if i == 1 {
            // SAFETY: at points into a live guarded vector; the store is
            // the violation under test.
            unsafe { (at as *mut u64).write_volatile(u64::MAX) };
        }
    });
    match policy {
        OnViolation::Cancel => out.err().and_then(|e| e.violation().map(|v| v.address())),
        _ => rt.audit_log().last().map(|v| v.address()),
    }
}

/// Checks that the pages of `heap` carry protection key `key` (`rt`'s,
/// when it uses pkeys).
fn assert_pages_carry(heap: &Heap, key: u32, what: &str) {
    let key = key as usize;
    let base = heap.base() as usize;
    let keys = protection_keys(base, base + heap.stats().reserved);
    assert!(
        !keys.is_empty() && keys.iter().all(|&k| k == key),
        "{what}: the heap's pages should carry key {key}: {keys:?}"
    );
}

/// One guarded heap's life: build it, guard it, have a task write it,
/// check the write was caught at its address, drop everything. Returns
/// the heap's base.
fn one_guarded_life(protect: Protect, policy: OnViolation, round: usize) -> usize {
    let heap = guarded_heap("short-lived");
    let base = heap.base() as usize;
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..512u64);
    let at = &data[100 + round % 300] as *const u64 as usize;
    let rt = one_worker_runtime(&heap, protect, policy);
    assert_eq!(
        caught_write(&rt, policy, at),
        Some(at),
        "round {round}: the write at {at:#x} (heap {base:#x}) went unnoticed"
    );
    if let Backend::Pkey(key) = rt.backend() {
        assert_pages_carry(&heap, key, &format!("round {round}, guarded"));
    }
    drop(rt);
    drop(data);
    drop(heap);
    base
}

/// Regression (pkey): a heap's guard state outlived the heap, so a new
/// heap at the same address found the old entry "tagged", was never
/// tagged itself, and tasks wrote it unnoticed. Each life here starts on
/// a clean entry; the pages carry the key exactly while a runtime guards
/// the heap.
fn a_heap_at_a_reused_address_is_guarded_afresh(protect: Protect) {
    let mut bases = Vec::new();
    for round in 0..8 {
        bases.push(one_guarded_life(protect, OnViolation::Cancel, round));
    }
    bases.sort_unstable();
    bases.dedup();
    if bases.len() == 8 {
        eprintln!("NOTE: no address was reused in 8 lives (the checks above still ran)");
    }
}

test!(a_heap_at_a_reused_address_is_guarded_afresh_mprotect);
fn a_heap_at_a_reused_address_is_guarded_afresh_mprotect() {
    a_heap_at_a_reused_address_is_guarded_afresh(Protect::Mprotect);
}

test!(a_heap_at_a_reused_address_is_guarded_afresh_pkey, needs: [Pkey]);
fn a_heap_at_a_reused_address_is_guarded_afresh_pkey() {
    a_heap_at_a_reused_address_is_guarded_afresh(Protect::Pkey);
}

/// Regression (pkey): the guard entries of dropped heaps were never freed,
/// so a process ran out of them after 64 guarded heaps. Many more heaps
/// than the table holds, each guarded, written and dropped: every write is
/// caught (audit: no thread is parked per round).
fn guard_entries_never_run_out(protect: Protect) {
    for round in 0..300 {
        one_guarded_life(protect, OnViolation::Audit, round);
    }
}

test!(a_heap_carries_the_key_only_while_guarded, needs: [Pkey]);
/// The key is on a heap's pages exactly while a runtime guards it: a heap
/// no runtime guards is written freely by any runtime's workers, as under
/// mprotect, and a heap guarded again is tagged again.
fn a_heap_carries_the_key_only_while_guarded() {
    let heap = guarded_heap("tagged-while-guarded");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..512u64);
    let at = &data[9] as *const u64 as usize;
    let rt = one_worker_runtime(&heap, Protect::Pkey, OnViolation::Cancel);
    let Backend::Pkey(key) = rt.backend() else {
        panic!("pkey backend");
    };
    assert_pages_carry(&heap, key, "guarded");
    drop(rt);
    assert_pages_carry(&heap, 0, "no longer guarded");
    // A pkey runtime that does not guard the heap: its workers write it.
    let other = guarded_heap("other");
    let bystander = one_worker_runtime(&other, Protect::Pkey, OnViolation::Cancel);
    assert_eq!(caught_write(&bystander, OnViolation::Cancel, at), None);
    assert_eq!(data[9], u64::MAX, "an unguarded heap is written");
    data[9] = 9;
    let rt = one_worker_runtime(&heap, Protect::Pkey, OnViolation::Cancel);
    assert_pages_carry(&heap, key, "guarded again");
    assert_eq!(caught_write(&rt, OnViolation::Cancel, at), Some(at));
    assert_eq!(data[9], 9, "the store did not happen");
}

test!(guard_entries_never_run_out_mprotect);
fn guard_entries_never_run_out_mprotect() {
    guard_entries_never_run_out(Protect::Mprotect);
}

test!(guard_entries_never_run_out_pkey, needs: [Pkey]);
fn guard_entries_never_run_out_pkey() {
    guard_entries_never_run_out(Protect::Pkey);
}

test!(seal_without_mseal_is_refused_before_anything_changes);
/// Where the kernel lacks `mseal(2)` (before Linux 6.10), `seal` fails
/// with an error that says so and leaves the heap as it was: allocating,
/// freeing and writable. Where it has it, the heap is sealed (the sealed
/// tests above check the rest).
fn seal_without_mseal_is_refused_before_anything_changes() {
    let heap = guarded_heap("maybe-sealed");
    let mut data: HeapVec<u64, Heap> = HeapVec::new_in(heap.clone());
    data.extend(0..64u64);
    match heap.seal() {
        Ok(()) => assert!(heap.is_sealed()),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("mseal"), "{text}");
            assert!(text.contains("6.10"), "says which kernel has it: {text}");
            assert!(!heap.is_sealed());
            data[5] = 55;
            data.extend(64..100_000u64);
            assert_eq!((data[5], data[99_999]), (55, 99_999));
            let rt = runtime(&heap, Protect::Mprotect, OnViolation::Cancel);
            let at = &data[9] as *const u64 as usize;
            let err = rt
                .for_each(0..2usize, |i| {
                    if i == 1 {
                        // SAFETY: at points into the live vector; the store
                        // is the violation under test.
                        unsafe { (at as *mut u64).write_volatile(0) };
                    }
                })
                .expect_err("the heap is guarded as usual");
            assert_eq!(err.violation().expect("a violation").address(), at);
        }
    }
}
