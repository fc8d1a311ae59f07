//! The violation matrix: for each backend (mprotect; pkey where the CPU
//! has protection keys) and each policy (rollback, cancel, audit), one parallel task
//! writes a guarded heap in one of twelve ways — a plain store, 16-, 32-
//! and 64-byte SIMD stores, atomic `fetch_add` and `compare_exchange`,
//! `ptr::copy_nonoverlapping`, `ptr::write_bytes`, `libc::memcpy`,
//! `libc::memset`, a store made by a C function through FFI, and a store
//! through a raw pointer cast from `&T`.
//!
//! Each case checks: the reports (cancel: exactly one
//! `Err(Error::Violation)`; rollback: one `Err` listing every faulting
//! store, each undone; audit: one record per faulting store, exactly one
//! for a single store) carry the right address, offset, heap name,
//! containing allocation, item index, access, backend and policy; the
//! guarded data is bit-for-bit unchanged (cancel, rollback: the checksum of
//! the whole heap's committed memory too) or changed exactly as written
//! (audit); and the next phase runs normally.
//!
//! The test binary does not install `frostheap::Global`, so the guarded
//! heap is an explicit [`Heap`] handed to the runtime, holding an
//! `allocator_api2` vector.

use core::sync::atomic::{AtomicU64, Ordering};

use allocator_api2::vec::Vec as HeapVec;
use frostheap::Access;
use frostheap::{Error, Heap, OnViolation, Protect, Runtime, Violation};

/// Words of guarded data (64 KiB).
const N_WORDS: usize = 8192;
/// The word the violating task writes (8 KiB into the data).
const TARGET_WORD: usize = 1024;
/// Bytes written by the bulk kinds (memcpy, memset and friends).
const BULK_LEN: usize = 256;
/// Items per phase, and the one whose task writes.
const ITEMS: usize = 8;
const VIOLATOR: usize = 5;
/// What single-word stores write.
const STORE_VALUE: u64 = 0xDEAD_BEEF_F00D_CAFE;
/// What the memset kinds write.
const FILL_BYTE: u8 = 0x5A;

#[link(name = "frostheap_test_violator", kind = "static")]
extern "C" {
    /// `*(volatile uint64_t *)p = value;` in C (tests/c/violator.c).
    fn frostheap_test_c_store(p: *mut u64, value: u64);
}

/// The source bytes of copies and SIMD stores (outside any guarded heap).
fn pattern(i: usize) -> u8 {
    (0xA5 ^ (i * 7)) as u8
}

/// The initial value of data word `i`.
fn word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0123_4567_89AB_CDEF
}

/// How a task writes the guarded heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `write_volatile` of a `u64` through a `*mut u64`.
    Store,
    /// `_mm_storeu_si128`.
    Simd16,
    /// `_mm256_storeu_si256` (AVX2).
    Simd32,
    /// `_mm512_storeu_si512` (AVX-512F).
    Simd64,
    /// `AtomicU64::fetch_add` through a `&AtomicU64`.
    FetchAdd,
    /// `AtomicU64::compare_exchange` through a `&AtomicU64`.
    CompareExchange,
    /// `ptr::copy_nonoverlapping` of `BULK_LEN` bytes.
    CopyNonoverlapping,
    /// `ptr::write_bytes` of `BULK_LEN` bytes.
    WriteBytes,
    /// `libc::memcpy` of `BULK_LEN` bytes.
    LibcMemcpy,
    /// `libc::memset` of `BULK_LEN` bytes.
    LibcMemset,
    /// A store made by C code called through FFI.
    CStore,
    /// A store through `&x as *const u64 as *mut u64`.
    RefCast,
}

impl Kind {
    /// Bytes the write covers, starting at the target.
    fn len(self) -> usize {
        match self {
            Kind::Store | Kind::FetchAdd | Kind::CompareExchange | Kind::CStore | Kind::RefCast => {
                8
            }
            Kind::Simd16 => 16,
            Kind::Simd32 => 32,
            Kind::Simd64 => 64,
            Kind::CopyNonoverlapping | Kind::WriteBytes | Kind::LibcMemcpy | Kind::LibcMemset => {
                BULK_LEN
            }
        }
    }

    /// Whether the write is one machine store (so it faults exactly once,
    /// at the target address itself).
    fn single_store(self) -> bool {
        self.len() <= 64
    }

    /// The bytes `[target, target + len)` hold after the write, given what
    /// they held before.
    fn expected(self, old: &[u8]) -> Vec<u8> {
        assert_eq!(old.len(), self.len());
        match self {
            Kind::Store | Kind::CompareExchange | Kind::CStore | Kind::RefCast => {
                STORE_VALUE.to_le_bytes().to_vec()
            }
            Kind::FetchAdd => {
                let v = u64::from_le_bytes(old.try_into().expect("8 bytes"));
                v.wrapping_add(1).to_le_bytes().to_vec()
            }
            Kind::WriteBytes | Kind::LibcMemset => vec![FILL_BYTE; self.len()],
            Kind::Simd16
            | Kind::Simd32
            | Kind::Simd64
            | Kind::CopyNonoverlapping
            | Kind::LibcMemcpy => (0..self.len()).map(pattern).collect(),
        }
    }

    /// Performs the write at `target`.
    ///
    /// # Safety
    /// 1. `target` is valid for reads and writes of `self.len()` bytes and
    ///    8-byte aligned (it is, outside a phase; inside one the write is
    ///    the violation under test).
    unsafe fn perform(self, target: *mut u8) {
        let src: [u8; BULK_LEN] = core::array::from_fn(pattern);
        let src = std::hint::black_box(src);
        // SAFETY: by (1) for every arm; the SIMD arms run only where the
        // CPU has the feature (their tests declare the need: `matrix!`).
        unsafe {
            match self {
                Kind::Store => target.cast::<u64>().write_volatile(STORE_VALUE),
                Kind::Simd16 => simd::store16(target, &src),
                Kind::Simd32 => simd::store32(target, &src),
                Kind::Simd64 => simd::store64(target, &src),
                Kind::FetchAdd => {
                    let a: &AtomicU64 = &*target.cast::<AtomicU64>();
                    a.fetch_add(1, Ordering::SeqCst);
                }
                Kind::CompareExchange => {
                    let a: &AtomicU64 = &*target.cast::<AtomicU64>();
                    let current = a.load(Ordering::SeqCst);
                    let _ = a.compare_exchange(
                        current,
                        STORE_VALUE,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
                Kind::CopyNonoverlapping => {
                    core::ptr::copy_nonoverlapping(src.as_ptr(), target, BULK_LEN)
                }
                Kind::WriteBytes => core::ptr::write_bytes(target, FILL_BYTE, BULK_LEN),
                Kind::LibcMemcpy => {
                    libc::memcpy(target.cast(), src.as_ptr().cast(), BULK_LEN);
                }
                Kind::LibcMemset => {
                    libc::memset(target.cast(), FILL_BYTE as i32, BULK_LEN);
                }
                Kind::CStore => frostheap_test_c_store(target.cast(), STORE_VALUE),
                Kind::RefCast => {
                    let shared: &u64 = &*target.cast::<u64>();
                    (shared as *const u64 as *mut u64).write_volatile(STORE_VALUE);
                }
            }
        }
    }
}

/// SIMD stores. The vector is loaded with the `core::arch` intrinsic, and
/// the store is one instruction written in `asm!`: the store intrinsics
/// (`_mm_storeu_si128` and friends) are `write_unaligned` underneath, which
/// a debug build compiles to several 8-byte stores — one audit record each —
/// while a release build emits the single vector store the case is about.
mod simd {
    use core::arch::asm;
    use core::arch::x86_64::*;

    /// # Safety
    /// 1. `dst` is valid for writes of 16 bytes.
    pub unsafe fn store16(dst: *mut u8, src: &[u8]) {
        assert!(src.len() >= 16);
        // SAFETY: SSE2 is part of x86_64; src has 16 bytes; dst by (1).
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().cast());
            asm!("movdqu xmmword ptr [{dst}], {v}", dst = in(reg) dst, v = in(xmm_reg) v, options(nostack, preserves_flags));
        }
    }

    /// # Safety
    /// 1. `dst` is valid for writes of 32 bytes.
    /// 2. The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn store32(dst: *mut u8, src: &[u8]) {
        assert!(src.len() >= 32);
        // SAFETY: src has 32 bytes; dst by (1); the feature by (2).
        unsafe {
            let v = _mm256_loadu_si256(src.as_ptr().cast());
            asm!("vmovdqu ymmword ptr [{dst}], {v}", dst = in(reg) dst, v = in(ymm_reg) v, options(nostack, preserves_flags));
        }
    }

    /// # Safety
    /// 1. `dst` is valid for writes of 64 bytes.
    /// 2. The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store64(dst: *mut u8, src: &[u8]) {
        assert!(src.len() >= 64);
        // SAFETY: src has 64 bytes; dst by (1); the feature by (2).
        unsafe {
            let v = _mm512_loadu_si512(src.as_ptr().cast());
            asm!("vmovdqu64 zmmword ptr [{dst}], {v}", dst = in(reg) dst, v = in(zmm_reg) v, options(nostack, preserves_flags));
        }
    }
}

/// A snapshot of the guarded data's bytes.
fn snapshot(base: usize) -> Vec<u8> {
    // SAFETY: base is the start of the live N_WORDS-word vector; reading
    // it is allowed at any time.
    unsafe { core::slice::from_raw_parts(base as *const u8, N_WORDS * 8) }.to_vec()
}

/// FNV-1a over the data: the "checksum" the issue speaks of.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The backend name a runtime built with `protect` reports.
pub fn backend_name(protect: Protect) -> &'static str {
    match protect {
        Protect::Pkey => "pkey",
        Protect::Mprotect => "mprotect",
        Protect::Off => "off",
        Protect::Auto if frostheap::__private::pkeys_available() => "pkey",
        Protect::Auto => "mprotect",
    }
}

/// The checks every report must pass.
fn check_report(
    v: &Violation,
    heap: &Heap,
    data_base: usize,
    target: usize,
    kind: Kind,
    protect: Protect,
    policy: OnViolation,
) {
    let addr = v.address();
    assert!(
        (target..target + kind.len()).contains(&addr),
        "{kind:?}: address {addr:#x} outside the written range {target:#x}+{}\n{v}",
        kind.len()
    );
    if kind.single_store() {
        assert_eq!(
            addr, target,
            "{kind:?}: a single store faults at its first byte\n{v}"
        );
    }
    assert_eq!(
        v.offset(),
        addr - heap.base() as usize,
        "{kind:?}: offset\n{v}"
    );
    assert_eq!(v.heap_name(), "matrix", "{kind:?}: heap name\n{v}");
    let (block, size) = v
        .allocation()
        .unwrap_or_else(|| panic!("{kind:?}: no containing allocation\n{v}"));
    assert!(
        block <= addr && addr < block + size,
        "{kind:?}: block {block:#x}+{size} does not contain {addr:#x}"
    );
    assert_eq!(block, data_base, "{kind:?}: the block is the vector's\n{v}");
    assert!(size >= N_WORDS * 8, "{kind:?}: block size {size}");
    assert_eq!(v.item_index(), Some(VIOLATOR), "{kind:?}: item index\n{v}");
    assert_eq!(v.access(), Access::Write, "{kind:?}: access");
    assert_eq!(
        v.backend().name(),
        backend_name(protect),
        "{kind:?}: backend"
    );
    assert_eq!(v.policy(), policy, "{kind:?}: policy");
    assert_ne!(v.instruction(), 0, "{kind:?}: no instruction pointer");
    assert!(
        v.thread_name()
            .is_some_and(|n| n.starts_with("frostheap-worker-")),
        "{kind:?}: thread name {:?}",
        v.thread_name()
    );
}

/// One cell of the matrix.
pub fn run_case(protect: Protect, policy: OnViolation, kind: Kind) {
    let what = format!("{protect:?} x {policy:?} x {kind:?}");
    let heap = Heap::builder()
        .name("matrix")
        .max(64 << 20)
        .build()
        .expect("a 64 MiB heap");
    let mut data: HeapVec<u64, Heap> = HeapVec::with_capacity_in(N_WORDS, heap.clone());
    data.extend((0..N_WORDS).map(word));
    let data_base = data.as_mut_ptr() as usize;
    let target = data_base + TARGET_WORD * 8;
    let before = snapshot(data_base);
    // The whole heap: everything it has committed, not only the vector.
    let whole = |heap: &Heap| {
        let s = heap.stats();
        let len = s.committed + s.purged;
        // SAFETY: the heap's committed range is mapped and readable.
        unsafe { core::slice::from_raw_parts(heap.base(), len) }.to_vec()
    };
    let heap_before = whole(&heap);

    let rt = Runtime::builder()
        .workers(2)
        .guard(&heap)
        .guard_main_heap(false)
        .protect(protect)
        .on_violation(policy)
        .build()
        .expect("runtime");
    assert_eq!(rt.backend().name(), backend_name(protect));

    let out = rt.map(0..ITEMS, |i| {
        if i == VIOLATOR {
            // SAFETY: target is inside the live vector, 8-byte aligned,
            // with room for kind.len() bytes; the write is the violation
            // under test.
            unsafe { kind.perform(target as *mut u8) };
        }
        i * 3
    });
    let after = snapshot(data_base);
    let mut expected = before.clone();
    let range = TARGET_WORD * 8..TARGET_WORD * 8 + kind.len();
    match policy {
        OnViolation::Cancel => {
            let v = match out {
                Err(Error::Violation(v)) => v,
                Err(e) => panic!("{what}: expected a violation, got {e}"),
                Ok(r) => panic!("{what}: the write went unnoticed ({r:?})"),
            };
            check_report(&v, &heap, data_base, target, kind, protect, policy);
            let s = rt.stats();
            assert_eq!(s.violations, 1, "{what}: exactly one report");
            assert_eq!(s.parked_workers, 1, "{what}: the violator is parked");
            assert!(rt.audit_log().is_empty(), "{what}: no audit records");
        }
        OnViolation::Audit => {
            let results =
                out.unwrap_or_else(|e| panic!("{what}: audit lets the phase finish: {e}"));
            assert_eq!(results, (0..ITEMS).map(|i| i * 3).collect::<Vec<_>>());
            expected[range.clone()].copy_from_slice(&kind.expected(&before[range.clone()]));
            let log = rt.audit_log();
            if kind.single_store() {
                assert_eq!(
                    log.len(),
                    1,
                    "{what}: one store, one record: {:#x?}",
                    log.iter()
                        .map(|v| (v.address(), v.instruction(), v.function(), v.location()))
                        .collect::<Vec<_>>()
                );
            } else {
                assert!(
                    !log.is_empty() && log.len() <= kind.len(),
                    "{what}: {} records for {} bytes",
                    log.len(),
                    kind.len()
                );
            }
            for v in &log {
                check_report(v, &heap, data_base, target, kind, protect, policy);
            }
            let s = rt.stats();
            assert_eq!(s.parked_workers, 0, "{what}: audit parks nobody");
            assert_eq!(s.violations as usize, log.len(), "{what}: every record counted");
        }
        OnViolation::Rollback => {
            let v = match out {
                Err(Error::Violation(v)) => v,
                Err(e) => panic!("{what}: expected a violation, got {e}"),
                Ok(r) => panic!("{what}: the write went unnoticed ({r:?})"),
            };
            check_report(&v, &heap, data_base, target, kind, protect, policy);
            let s = rt.stats();
            let stores = 1 + v.other_stores().len();
            if kind.single_store() {
                assert_eq!(stores, 1, "{what}: one store, one report: {v}");
            } else {
                assert!(stores <= kind.len(), "{what}: {stores} stores for {} bytes", kind.len());
            }
            assert_eq!(v.stores_undone(), stores, "{what}: every store undone: {v}");
            assert_eq!(s.violations as usize, stores, "{what}: every store reported");
            assert_eq!(s.parked_workers, 0, "{what}: rollback parks nobody");
            assert!(rt.audit_log().is_empty(), "{what}: no audit records");
        }
        OnViolation::Abort => unreachable!("abort is checked in a child process"),
    }
    assert_eq!(
        checksum(&after),
        checksum(&expected),
        "{what}: the guarded data is not as expected"
    );
    assert!(after == expected, "{what}: bytes differ");
    if policy != OnViolation::Audit {
        // Nothing else in the guarded heap changed either.
        let heap_after = whole(&heap);
        assert_eq!(
            (heap_after.len(), checksum(&heap_after)),
            (heap_before.len(), checksum(&heap_before)),
            "{what}: the guarded heap's checksum changed"
        );
    }

    // The next phase runs normally: every task reads the (still frozen)
    // data, and the results match a sum made by main.
    let before_next = rt.stats().violations;
    let sums = rt
        .map(0..ITEMS, |i| {
            // SAFETY: reading the live vector is allowed while it is frozen.
            let words = unsafe { core::slice::from_raw_parts(data_base as *const u64, N_WORDS) };
            words
                .iter()
                .skip(i)
                .step_by(ITEMS)
                .fold(0u64, |a, &w| a.wrapping_add(w))
        })
        .unwrap_or_else(|e| panic!("{what}: the next phase failed: {e}"));
    for (i, s) in sums.iter().enumerate() {
        let want = data
            .iter()
            .skip(i)
            .step_by(ITEMS)
            .fold(0u64, |a, &w| a.wrapping_add(w));
        assert_eq!(*s, want, "{what}: next phase, item {i}");
    }
    // And main writes the thawed heap again.
    data[TARGET_WORD] = 7;
    assert_eq!(data[TARGET_WORD], 7);
    let expected_violations = match policy {
        OnViolation::Cancel => 1,
        OnViolation::Rollback | OnViolation::Audit => before_next,
        OnViolation::Abort => unreachable!("abort is checked in a child process"),
    };
    assert_eq!(
        rt.stats().violations,
        expected_violations,
        "{what}: next phase reported something"
    );
}

/// One test per cell: `<backend>_<policy>::<kind>`, each declaring what
/// the machine needs for it (the backend's, plus the SIMD width's).
macro_rules! matrix {
    ($module:ident, $protect:expr, $policy:expr, needs: [$($need:ident),*]) => {
        mod $module {
            use super::{run_case, Kind};
            use frostheap::{OnViolation, Protect};

            const PROTECT: Protect = $protect;
            const POLICY: OnViolation = $policy;

            test!(plain_store, needs: [$($need,)*]);
            fn plain_store() {
                run_case(PROTECT, POLICY, Kind::Store);
            }
            test!(simd_store_16_bytes, needs: [$($need,)*]);
            fn simd_store_16_bytes() {
                run_case(PROTECT, POLICY, Kind::Simd16);
            }
            test!(simd_store_32_bytes, needs: [$($need,)* Avx2]);
            fn simd_store_32_bytes() {
                run_case(PROTECT, POLICY, Kind::Simd32);
            }
            test!(simd_store_64_bytes, needs: [$($need,)* Avx512f]);
            fn simd_store_64_bytes() {
                run_case(PROTECT, POLICY, Kind::Simd64);
            }
            test!(atomic_fetch_add, needs: [$($need,)*]);
            fn atomic_fetch_add() {
                run_case(PROTECT, POLICY, Kind::FetchAdd);
            }
            test!(atomic_compare_exchange, needs: [$($need,)*]);
            fn atomic_compare_exchange() {
                run_case(PROTECT, POLICY, Kind::CompareExchange);
            }
            test!(copy_nonoverlapping, needs: [$($need,)*]);
            fn copy_nonoverlapping() {
                run_case(PROTECT, POLICY, Kind::CopyNonoverlapping);
            }
            test!(write_bytes, needs: [$($need,)*]);
            fn write_bytes() {
                run_case(PROTECT, POLICY, Kind::WriteBytes);
            }
            test!(libc_memcpy, needs: [$($need,)*]);
            fn libc_memcpy() {
                run_case(PROTECT, POLICY, Kind::LibcMemcpy);
            }
            test!(libc_memset, needs: [$($need,)*]);
            fn libc_memset() {
                run_case(PROTECT, POLICY, Kind::LibcMemset);
            }
            test!(c_function_through_ffi, needs: [$($need,)*]);
            fn c_function_through_ffi() {
                run_case(PROTECT, POLICY, Kind::CStore);
            }
            test!(raw_pointer_cast_from_shared_ref, needs: [$($need,)*]);
            fn raw_pointer_cast_from_shared_ref() {
                run_case(PROTECT, POLICY, Kind::RefCast);
            }
        }
    };
}

matrix!(mprotect_cancel, Protect::Mprotect, OnViolation::Cancel, needs: []);
matrix!(mprotect_audit, Protect::Mprotect, OnViolation::Audit, needs: []);
matrix!(pkey_cancel, Protect::Pkey, OnViolation::Cancel, needs: [Pkey]);
matrix!(pkey_audit, Protect::Pkey, OnViolation::Audit, needs: [Pkey]);
matrix!(mprotect_rollback, Protect::Mprotect, OnViolation::Rollback, needs: []);
matrix!(pkey_rollback, Protect::Pkey, OnViolation::Rollback, needs: [Pkey]);

/// A plain store through a raw pointer, in a function of its own so the
/// report's function name and line are known.
#[inline(never)]
fn store_through(p: *mut u64) {
    // SAFETY: p points into the live guarded vector (the store is the
    // violation under test).
    unsafe { *p = 7 }; // the store: its line is looked up by this comment
}

/// The line of the store in [`store_through`], found in this file's text.
fn store_line() -> u32 {
    let marker = concat!("// the store: ", "its line");
    let idx = include_str!("violations.rs")
        .lines()
        .position(|l| l.contains(marker))
        .expect("the marked store");
    idx as u32 + 1
}

test!(report_reads_like_a_sanitizer_with_function_and_line);
fn report_reads_like_a_sanitizer_with_function_and_line() {
    let heap = Heap::builder()
        .name("display-heap")
        .max(16 << 20)
        .build()
        .expect("heap");
    let mut data: HeapVec<u64, Heap> = HeapVec::with_capacity_in(512, heap.clone());
    data.extend(0..512u64);
    let target = data.as_mut_ptr() as usize + 100 * 8;
    let rt = Runtime::builder()
        .workers(2)
        .guard(&heap)
        .guard_main_heap(false)
        .protect(Protect::Auto)
        .on_violation(OnViolation::Cancel)
        .build()
        .expect("runtime");
    let err = rt
        .map(0..6usize, |i| {
            if i == 3 {
                store_through(target as *mut u64);
            }
            i
        })
        .expect_err("the store is a violation");
    let v = err.violation().expect("Error::Violation");
    let text = err.to_string();
    assert_eq!(text, v.to_string());
    assert!(text.starts_with("==frostheap== VIOLATION"), "{text}");
    assert!(text.contains("\"display-heap\""), "heap name: {text}");
    assert!(
        text.contains(&format!("{:#x}", v.address())),
        "address: {text}"
    );
    assert!(
        text.contains(&format!("heap \"display-heap\" + {:#x}", v.offset())),
        "offset: {text}"
    );
    assert_eq!(v.offset(), target - heap.base() as usize);
    assert!(text.contains("task item #3"), "item: {text}");
    assert!(text.contains("the task was cancelled"), "policy: {text}");
    let (file, line) = v
        .location()
        .unwrap_or_else(|| panic!("tests are built with debug info: a file:line\n{text}"));
    assert!(
        file.ends_with("tests/it/violations.rs"),
        "the store's file is this test's: {file}\n{text}"
    );
    assert_eq!(line, store_line(), "the store's line\n{text}");
    let function = v.function().expect("a function name");
    assert!(function.contains("store_through"), "function: {function}");
    assert!(
        text.contains(&format!("{file}:{line}")),
        "file:line: {text}"
    );
    assert!(text.contains(function), "function in the text: {text}");
    assert_eq!(data[100], 100, "the store did not happen");
}
