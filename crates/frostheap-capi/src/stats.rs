//! `FROSTHEAP_STATS=1`: the main heap's statistics, then the process's
//! (every thread heap, mappings, the limit), on standard error when the
//! process exits. `0`, empty or unset: nothing; any other value stops the
//! process at start-up with one line, as a bad value of any other
//! `FROSTHEAP_*` variable does (frostheap's `config` reads it with them).
//!
//! The printer is a `.fini_array` entry of the library, which ld.so runs
//! at `exit` after the program's `atexit` handlers and destructors (a
//! preloaded library is finalised after the objects that depend on it). It
//! formats into a stack buffer and writes with `write(2)`: no allocation,
//! so it works while libc is being torn down.

use core::sync::atomic::{AtomicBool, Ordering};

use frostheap::__private::fmt_buf::Buf;
use frostheap::__private::os;
use frostheap::__private::raw::{self, refusal_room, Local, RefusedBy};

#[used]
#[link_section = ".fini_array"]
static PRINT_AT_EXIT: extern "C" fn() = print_at_exit;

/// Prints when the configuration the process started with says
/// `FROSTHEAP_STATS=1` (read and checked with the other variables: a bad
/// value stopped the process at start-up).
extern "C" fn print_at_exit() {
    if matches!(frostheap::__private::from_env_once(), Ok(c) if c.stats) {
        print();
    }
}

/// Whether [`report_first_refusal`] has printed its line for a request
/// that fits under the limit.
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Whether it has printed its line for a request larger than the limit
/// itself.
static REPORTED_OVERSIZE: AtomicBool = AtomicBool::new(false);

/// The first allocation the heaps refuse (past the limit, most often), in
/// one line on standard error, with the limit and what is committed. A C
/// program that does not check what `malloc` returns crashes on the null
/// pointer (node, for one, under a 200 MiB limit: a segmentation fault
/// in V8's garbage collector), and without this line nothing would say
/// why. Later refusals are counted, not printed (`FROSTHEAP_STATS=1`,
/// `malloc_stats`, `mallinfo2`). Called with no lock held; formats into a
/// stack buffer.
///
/// A request larger than the limit itself (`malloc(SIZE_MAX / 2)`, which
/// programs make to probe or guard against an overflow, or a single
/// request the limit could never hold) gets a line of its own, also once,
/// and does not use up this one: a program that probed first was silent
/// when the limit later refused it with memory committed, the refusal a
/// program (or its user, raising the limit) can do something about.
///
/// `heap`: the calling thread's heap when it is what refused, whose
/// recorded cause the line gives (its range, or the kernel, rather than the
/// limit; and under the limit, the span it needed where the request's own
/// pages would have fit). `None` for a mapping or a block of glibc's,
/// which only the limit refuses.
pub(crate) fn report_first_refusal(requested: usize, heap: Option<Local>) {
    if requested > raw::limit() {
        report_oversize(requested);
        return;
    }
    if REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let why = heap.map_or(RefusedBy::Unknown, |h| h.last_refusal());
    let p = frostheap::stats();
    let mut buf = [0u8; 512];
    let b = Buf::new(&mut buf).str("frostheap: refused an allocation of ");
    let b = human(b, requested as u64).str(": ");
    let b = match why {
        RefusedBy::Range { range } => human(b.str("its heap's range of "), range as u64).str(
            " has no free run that large (the blocks it holds pin it), though it fits under \
                 the process limit; ",
        ),
        RefusedBy::System => b.str(
            "the kernel refused to commit memory (see ulimit -v, vm.overcommit_memory, \
             vm.max_map_count); ",
        ),
        RefusedBy::Limit { .. } | RefusedBy::Unknown => b,
    };
    let b = human(
        b.str("the process limit (FROSTHEAP_MAX) is "),
        p.limit as u64,
    )
    .str(", ");
    let b = human(b, p.committed as u64).str(" committed");
    // A heap charges whole spans of its pages, against the limit in whole
    // pages: under a small limit the request's own pages may fit beside
    // what is committed while the span does not. Said then, when the
    // numbers alone would not explain the refusal.
    let (heap_limit, room_for_request) = refusal_room(requested, &p);
    let b = match why {
        RefusedBy::Limit { need } => {
            let b = if room_for_request && need > 0 {
                human(b.str(", and its heap needed "), need as u64).str(" more for it")
            } else {
                b
            };
            if heap_limit == p.limit {
                b
            } else {
                human(b.str(" (the limit holds "), heap_limit as u64).str(" in whole heap pages)")
            }
        }
        _ => b,
    };
    let b = b.str("; the call fails with ENOMEM (later refusals are counted, not printed)\n");
    os::write_stderr(b.finish());
}

/// [`report_first_refusal`] of a request larger than the limit: its own
/// line, the first time.
fn report_oversize(requested: usize) {
    if REPORTED_OVERSIZE.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut buf = [0u8; 320];
    let b = Buf::new(&mut buf).str("frostheap: refused an allocation of ");
    let b = human(b, requested as u64).str(": larger than the process limit (FROSTHEAP_MAX) of ");
    let b = human(b, raw::limit() as u64).str(
        " itself; the call fails with ENOMEM (later such requests are counted, not printed; \
         the first refusal of one that fits under the limit has its own line)\n",
    );
    os::write_stderr(b.finish());
}

/// Prints the two lines: the main heap's, then the process's (at exit, and
/// for `malloc_stats`).
pub(crate) fn print() {
    let Some(heap) = frostheap::main_heap() else {
        return;
    };
    let s = heap.stats();
    let mut buf = [0u8; 512];
    let b = Buf::new(&mut buf).str("frostheap: main heap: in use ");
    let b = human(b, s.in_use as u64).str(", peak ");
    let b = human(b, s.peak as u64).str(", committed ");
    let b = human(b, s.committed as u64).str(", threads without a heap (glibc) ");
    let b = human(b, s.external as u64).str(", limit ");
    let b = human(b, s.limit as u64)
        .str("; ")
        .dec(s.allocations as u64)
        .str(" live allocations, ")
        .dec(s.total_allocations)
        .str(" in total, ")
        .dec(s.refused)
        .str(" refused\n");
    os::write_stderr(b.finish());
    let p = frostheap::stats();
    let mut buf = [0u8; 512];
    let b = Buf::new(&mut buf).str("frostheap: process: committed ");
    let b = human(b, p.committed as u64).str(" (peak ");
    let b = human(b, p.peak_committed as u64).str("), thread heaps in use ");
    let b = human(b, p.threads_in_use as u64).str(", mapped ");
    let kind = frostheap::Kind::Mapped;
    let b = human(b, p.committed_for(kind) as u64).str(", limit ");
    let b = human(b, p.limit as u64)
        .str("; ")
        .dec(p.thread_heaps as u64)
        .str(" thread heaps (")
        .dec(p.abandoned_heaps as u64)
        .str(" to adopt, keeping ");
    let b = human(b, p.kept_for_next_threads as u64)
        .str(" for them), ")
        .dec(p.refused)
        .str(" refused\n");
    os::write_stderr(b.finish());
}

/// Appends `n` bytes as `12.3 MiB` (binary units, one decimal).
fn human(b: Buf<'_>, n: u64) -> Buf<'_> {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut scaled = n;
    while scaled >= 1024 * 10 && unit + 1 < UNITS.len() {
        scaled >>= 10;
        unit += 1;
    }
    if unit == 0 && n < 1024 {
        return b.dec(n).str(" B");
    }
    // Recompute with one decimal from the exact value.
    let unit = if unit == 0 { 1 } else { unit };
    let div = 1u64 << (10 * unit);
    let tenths = (n as u128 * 10 / div as u128) as u64;
    b.dec(tenths / 10)
        .str(".")
        .dec(tenths % 10)
        .str(" ")
        .str(UNITS[unit])
}
