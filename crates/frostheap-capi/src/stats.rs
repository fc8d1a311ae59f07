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

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use frostheap::__private::fmt_buf::Buf;
use frostheap::__private::os;
use frostheap::__private::raw::{self, refusal_room, Local, RefusedBy};

#[used]
#[link_section = ".fini_array"]
static PRINT_AT_EXIT: extern "C" fn() = print_at_exit;

/// Prints when the configuration the process started with says
/// `FROSTHEAP_STATS=1` (read and checked with the other variables: a bad
/// value stopped the process at start-up), to standard error as the
/// process started ([`keep_stderr`]).
extern "C" fn print_at_exit() {
    if matches!(frostheap::__private::from_env_once(), Ok(c) if c.stats) {
        print(kept_stderr());
    }
}

/// A copy of standard error made at start-up under `FROSTHEAP_STATS=1`,
/// and the file it was (device and inode), or -1.
static KEPT_STDERR: AtomicI32 = AtomicI32::new(-1);
static KEPT_FILE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The lowest descriptor the copy may take: above those a program opens
/// itself (its next `open` still gets the lowest free one, 3 most often).
const KEPT_FD_FROM: i32 = 200;

/// Under `FROSTHEAP_STATS=1`, copies standard error to a descriptor of
/// its own (close-on-exec) for the statistics at exit. Programs close
/// standard error before they exit — coreutils' `close_stdout` does, to
/// report a failed write — and `frostheap run --stats -- ls` printed
/// nothing (the line's `write` failed with `EBADF`). Called from the
/// library's first constructor; raw system calls, as everywhere here.
pub(crate) fn keep_stderr() {
    if !matches!(frostheap::__private::from_env_once(), Ok(c) if c.stats) {
        return;
    }
    // SAFETY: F_DUPFD_CLOEXEC takes a descriptor and a lowest number.
    let fd = unsafe { libc::syscall(libc::SYS_fcntl, 2, libc::F_DUPFD_CLOEXEC, KEPT_FD_FROM) };
    let Ok(fd) = i32::try_from(fd) else {
        return; // no standard error, or no descriptor that high: fd 2 it is
    };
    if let Some((dev, ino)) = file_of(fd) {
        KEPT_FILE[0].store(dev, Ordering::Relaxed);
        KEPT_FILE[1].store(ino, Ordering::Relaxed);
        KEPT_STDERR.store(fd, Ordering::Relaxed);
    }
}

/// The device and inode of what `fd` is open on.
fn file_of(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: fstat writes the struct it is given; a zeroed stat is valid.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a valid pointer to that struct.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// The kept copy of standard error when it is still the file standard
/// error was at start-up (a program may have closed it, and the number
/// been given to another of its files), else 2.
fn kept_stderr() -> i32 {
    let fd = KEPT_STDERR.load(Ordering::Relaxed);
    let kept = (
        KEPT_FILE[0].load(Ordering::Relaxed),
        KEPT_FILE[1].load(Ordering::Relaxed),
    );
    if fd >= 0 && file_of(fd) == Some(kept) {
        fd
    } else {
        2
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
        RefusedBy::Range { range, need } if need > range => {
            let b = human(b.str("its heap's range of "), range as u64)
                .str(" cannot hold it with the slack its alignment needs (");
            human(b, need as u64).str(" in all), whatever the limit; ")
        }
        RefusedBy::Range { range, .. } => human(b.str("its heap's range of "), range as u64).str(
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

/// Prints the two lines to `fd`: the main heap's, then the process's (at
/// exit, and for `malloc_stats` on standard error).
pub(crate) fn print(fd: i32) {
    match frostheap::main_heap() {
        Some(heap) => print_main(fd, heap.stats()),
        // A program that never called `malloc` (`/bin/true`): the lines
        // asked for say so, where they were missing.
        None => os::write_fd(
            fd,
            b"frostheap: main heap: none (the program made no allocation)\n",
        ),
    }
    print_process(fd);
}

/// The main heap's line.
fn print_main(fd: i32, s: frostheap::Stats) {
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
    os::write_fd(fd, b.finish());
}

/// The process's line: every heap, the mappings, the limit.
fn print_process(fd: i32) {
    let p = frostheap::stats();
    let mut buf = [0u8; 512];
    let b = Buf::new(&mut buf).str("frostheap: process: committed ");
    let b = human(b, p.committed as u64).str(" (peak ");
    let b = human(b, p.peak_committed as u64).str("), thread heaps in use ");
    let b = human(b, p.threads_in_use as u64).str(", mapped ");
    let kind = frostheap::Kind::Mapped;
    let b = human(b, p.committed_for(kind) as u64).str(", limit ");
    // Before any heap, the limit is not yet set: the configured one.
    let limit = match frostheap::__private::from_env_once() {
        Ok(c) if p.limit == usize::MAX => c.max,
        _ => p.limit,
    };
    let b = human(b, limit as u64)
        .str("; ")
        .dec(p.thread_heaps as u64)
        .str(" thread heaps (")
        .dec(p.abandoned_heaps as u64)
        .str(" to adopt, keeping ");
    let b = human(b, p.kept_for_next_threads as u64)
        .str(" for them), ")
        .dec(p.refused)
        .str(" refused\n");
    os::write_fd(fd, b.finish());
}

/// Appends `n` bytes as frostheap's Rust side shows sizes (`64 MiB`,
/// `12.3 MiB`: [`Buf::size`]).
fn human(b: Buf<'_>, n: u64) -> Buf<'_> {
    b.size(n as usize)
}
