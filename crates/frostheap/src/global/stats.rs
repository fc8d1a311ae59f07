//! Process-wide statistics ([`stats`]) and the line an out-of-memory
//! prints in global mode.
//!
//! The committed bytes come from the process counters
//! ([`crate::heap::process`], updated at commits); the bytes in use are the
//! sum of every arena heap's own exact statistics, read one heap at a
//! time, so with threads running they are a sum of snapshots, not one
//! snapshot, and of the context heaps' chunks that hold a live block
//! (their committed bytes less the free chunks they keep: a bump arena
//! reuses a chunk only once it is empty, so such a chunk is in use
//! whole).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::heaps;
use crate::heap::process::{self, Kind, N_KINDS};
use crate::heap::Refusal;

/// Memory of the whole process as frostheap counts it: what
/// `FROSTHEAP_MAX` bounds, in total and per kind of heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// The process limit: `FROSTHEAP_MAX`, or when it is unset its
    /// default (physical memory; in a memory cgroup, three quarters of its
    /// limit, and under `ulimit -v` the largest power of two within a
    /// quarter of it, if either is less: the README's table); `usize::MAX`
    /// before the global allocator (or the C ABI) has started, and in a
    /// program that uses neither.
    pub limit: usize,
    /// Bytes committed now, all kinds together: what the limit bounds.
    /// What of a heap's committed range holds no memory (free spans purged,
    /// growth no span has used yet, the part of small spans not carved
    /// yet) is not counted until it is used (see [`crate::Stats::purged`]).
    pub committed: usize,
    /// The highest `committed` seen.
    pub peak_committed: usize,
    /// Allocations refused because of the limit: one per refused
    /// allocation (or `mmap`), whichever heap refused it — the main heap,
    /// a thread heap, a task's context heap and then its worker's heap
    /// (one, not two) — a request larger than the limit included, however
    /// many ways around the limit were tried before (a heap's own free
    /// memory, the other heaps'). A heap built with a `max` below the
    /// limit that refuses at its own cap is not counted here (it is in
    /// that heap's [`crate::Stats::refused`]).
    pub refused: u64,
    /// Usable bytes of live allocations in the main heap.
    pub main_in_use: usize,
    /// Usable bytes of live allocations in all thread heaps.
    pub threads_in_use: usize,
    /// Bytes of the runtime workers' context heaps in use: the chunks that
    /// hold a live block, and each worker's current chunk, whole (a bump
    /// arena reuses a chunk only once every block in it is freed); what
    /// they have committed less the free chunks they keep for reuse. The
    /// results a task returns live there until main drops them, and so do
    /// the values a rolled-back phase keeps (`RuntimeStats::values_kept`)
    /// with the chunks they hold.
    pub context_in_use: usize,
    /// Thread heaps built (each serves one thread at a time).
    pub thread_heaps: usize,
    /// Thread heaps whose thread exited, waiting for adoption.
    pub abandoned_heaps: usize,
    /// In a `fork` child: the heaps of the parent's other threads (the
    /// main heap among them when a thread other than the main one forked),
    /// which no thread owns or adopts (their owners may have been in the
    /// middle of an allocation when the process forked). Their blocks can be
    /// freed, and their free memory goes back as the process grows, at a
    /// trim, or at the limit; their partly used spans stay.
    pub orphaned_heaps: usize,
    /// Bytes of free memory those heaps keep charged (and resident) for
    /// the threads that adopt them, instead of purging it as their threads
    /// exited or as other threads freed their blocks: 32 MiB in all at
    /// most (an eighth of `committed` if more; an eighth of `limit` at
    /// most), 1 MiB or more a heap. Given back as the process grows past
    /// it, at the limit, and by [`crate::trim`]. As counted when the heaps
    /// were given up or last collected: blocks freed into them since count
    /// at the next collection, and the limit's reclaimer may take some of
    /// it without counting it down.
    pub kept_for_next_threads: usize,
    /// Bytes committed per kind, indexed by [`Kind`] as `usize`.
    pub committed_by_kind: [usize; N_KINDS],
}

impl ProcessStats {
    /// Bytes committed for `kind`.
    pub fn committed_for(&self, kind: Kind) -> usize {
        self.committed_by_kind[kind as usize]
    }

    /// Bytes in use: live allocations in the main heap and thread heaps,
    /// and the context heaps' chunks that hold live blocks
    /// ([`ProcessStats::context_in_use`]). Until 2026-12-06 the context
    /// heaps were left out, and an out-of-memory line whose memory was
    /// held there (the values of rolled-back phases) said "656144 in use"
    /// beside 67051520 committed under a 64 MiB limit.
    pub fn in_use(&self) -> usize {
        self.main_in_use + self.threads_in_use + self.context_in_use
    }
}

/// The process's memory: the limit, committed bytes in total and per kind
/// (main heap, thread heaps, context heaps, explicit heaps, the C ABI's
/// mappings, external charges) and the bytes in use in the main and
/// thread heaps and the context heaps' chunks. Each heap keeps its own statistics as well
/// ([`crate::Heap::stats`]).
///
/// ```
/// let s = frostheap::stats();
/// assert!(s.committed <= s.limit);
/// ```
pub fn stats() -> ProcessStats {
    let (limit, committed, peak_committed, refused, committed_by_kind) = process::counters();
    let mut s = ProcessStats {
        limit,
        committed,
        peak_committed,
        refused,
        committed_by_kind,
        ..ProcessStats::default()
    };
    // Blocks held in threads' caches of other thread heaps' blocks
    // (heap::remote_cache), or freed and not yet published to their heap
    // (heap::remote_batch), are live in their own heap's statistics, and
    // not in use: only thread heaps' blocks are held.
    let mut cached = 0;
    for (idx, h, _) in heaps::built() {
        let in_use = h.core.stats().in_use;
        cached += h.remote_cache.bytes() + h.remote_batch.bytes();
        if idx == 0 {
            s.main_in_use = in_use;
        } else {
            s.threads_in_use += in_use;
        }
    }
    s.threads_in_use = s.threads_in_use.saturating_sub(cached);
    s.context_in_use = s.committed_by_kind[Kind::Context as usize]
        .saturating_sub(crate::context::kept_free_bytes());
    (s.thread_heaps, s.abandoned_heaps, s.orphaned_heaps) = heaps::counts();
    s.kept_for_next_threads = heaps::kept_for_next_threads();
    s
}

/// Prints one line naming frostheap, the calling thread's heap, the limit
/// and the numbers, when a heap refused an allocation of `requested`
/// bytes in global mode (std's "memory allocation of N bytes failed"
/// follows if the program does not handle the failure). Allocates
/// nothing: it runs inside the allocator.
#[cold]
#[inline(never)]
pub(super) fn out_of_memory_line(requested: usize) {
    let own = super::route::own_heap();
    if own.is_some_and(|h| h.core.shrinking()) {
        return; // a shrink that keeps its block
    }
    let main = super::start::main_inner();
    let heap = match own {
        Some(h) if core::ptr::eq(h, main) => "main",
        Some(_) => "thread",
        None => "main (shared path)",
    };
    let core = &own.unwrap_or(main).core;
    out_of_memory_line_of(
        heap,
        requested,
        core.last_refusal(),
        core.last_refusal_need(),
    );
}

/// The line for a refusal by a task's [`crate::Arena`] (its worker's
/// context heap alone: an arena has no other heap to try), which printed
/// nothing: a task's `Vec` in its arena that the limit refused got std's
/// "memory allocation of N bytes failed" alone, and the line that then
/// came was for an allocation std made while printing a backtrace.
/// `by_limit`: the process limit refused a chunk (else the slot was
/// exhausted, or the alignment is beyond a chunk). Allocates nothing.
#[cold]
#[inline(never)]
pub(crate) fn arena_refusal_line(requested: usize, by_limit: bool) {
    let why = if by_limit {
        Refusal::Limit
    } else {
        Refusal::None
    };
    out_of_memory_line_of("context", requested, why, 0);
}

/// The refusal lines of one kind of heap (main, thread, context, the
/// main heap's shared path): when the last was printed, in nanoseconds of
/// `CLOCK_MONOTONIC` (0 before the first), and how many refusals went
/// unprinted since.
struct LineRate {
    last_ns: AtomicU64,
    unprinted: AtomicU64,
    /// A line of this kind is being written now.
    writing: AtomicBool,
}

static LINE_RATES: [LineRate; 4] = [const {
    LineRate {
        last_ns: AtomicU64::new(0),
        unprinted: AtomicU64::new(0),
        writing: AtomicBool::new(false),
    }
}; 4];

/// At most one refusal line a second for each kind of heap: a program
/// that asks for memory it can do without (`try_reserve`, a cache sized
/// by what it gets) printed a line for every refusal, 13,805 in one run.
const LINE_INTERVAL_NS: u64 = 1_000_000_000;

/// For a refusal's line: the limit in whole heap pages (what a heap's cap
/// holds of it), and whether the request's own pages fit beside what is
/// committed under it. When they do, yet the limit refused, the heap
/// needed more than the request (a whole span of a new size class, under
/// a tiny limit), and the line says how much.
pub fn refusal_room(requested: usize, s: &ProcessStats) -> (usize, bool) {
    let page = crate::region::PAGE_SIZE;
    let heap_limit = s.limit & !(page - 1);
    let fits = requested
        .checked_next_multiple_of(page)
        .and_then(|pages| s.committed.checked_add(pages))
        .is_some_and(|end| end <= heap_limit);
    (heap_limit, fits)
}

/// [`out_of_memory_line`] naming the heap that refused (`"context"`: a
/// runtime task's allocation, refused by its context heap and then by its
/// worker's own heap) and what refused it, `why`: the limit's numbers, or
/// the heap's range when no free run of it holds the request though it
/// fits under the limit (the blocks the heap holds pin its range), or the
/// kernel; with the limit, `need`, the bytes the heap's refused charge
/// asked for, when the request's own pages would have fit (a whole span:
/// under a tiny limit the line would otherwise show room the heap could
/// not use). The first refusal of each kind of heap prints its
/// line; later ones print at most one line a second, saying how many went
/// unprinted since the last (all of them are counted in the heaps'
/// `refused`, and those the process limit refused in [`stats`]'s).
pub(super) fn out_of_memory_line_of(heap: &str, requested: usize, why: Refusal, need: usize) {
    // A refusal inside a panic: std's report of it waits for the backtrace
    // lock, which std's panic report holds while it prints (and while it
    // reads the debug information, which allocates: the refusal's usual
    // cause here). With RUST_BACKTRACE=1 a program that panicked near
    // FROSTHEAP_MAX hung for good. std would abort after its report; the
    // line says so and the process aborts now.
    if std::thread::panicking() {
        line(heap, requested, why, need, 0, true);
        std::process::abort();
    }
    let rate = &LINE_RATES[match heap {
        "main" => 0,
        "thread" => 1,
        "context" => 2,
        _ => 3,
    }];
    let now = crate::os::monotonic_ns().max(1);
    let last = rate.last_ns.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < LINE_INTERVAL_NS
        || rate
            .last_ns
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        rate.unprinted.fetch_add(1, Ordering::Relaxed);
        // A line another thread is writing is let finish first: this
        // refusal may end the process (std's abort), and two workers
        // refused at once lost the line that way (CI, 2026-12-06: std's
        // "memory allocation of 65536 bytes failed" alone). Bounded: a
        // line is one write(2).
        let mut spins = 0u32;
        while rate.writing.load(Ordering::Acquire) && spins < 100_000 {
            crate::os::yield_now();
            spins += 1;
        }
        return;
    }
    rate.writing.store(true, Ordering::Release);
    let unprinted = rate.unprinted.swap(0, Ordering::Relaxed);
    line(heap, requested, why, need, unprinted, false);
    rate.writing.store(false, Ordering::Release);
}

/// Writes the refusal line of [`out_of_memory_line_of`]; `unprinted`
/// refusals went unprinted since the last; `panicking`: the thread is
/// panicking and the process aborts next.
fn line(heap: &str, requested: usize, why: Refusal, need: usize, unprinted: u64, panicking: bool) {
    let s = stats();
    let mut buf = [0u8; 768];
    let b = crate::fmt_buf::Buf::new(&mut buf)
        .str("frostheap: out of memory: the ")
        .str(heap)
        .str(" heap cannot allocate ")
        .dec(requested as u64)
        .str(" bytes: ");
    let limit = s.limit as u64;
    let (heap_limit, room_for_request) = refusal_room(requested, &s);
    let b = match why {
        Refusal::Range if need > heaps::slot_len() => b
            .str("its range of ")
            .dec(heaps::slot_len() as u64)
            .str(" bytes cannot hold it with the slack its alignment needs (")
            .dec(need as u64)
            .str(" bytes in all), whatever FROSTHEAP_MAX (")
            .dec(limit)
            .str(" bytes)"),
        Refusal::Range => b
            .str("its range of ")
            .dec(heaps::slot_len() as u64)
            .str(" bytes has no free run that large (the blocks it holds pin it), though it fits under FROSTHEAP_MAX (")
            .dec(limit)
            .str(" bytes)"),
        Refusal::System => b
            .str("the kernel refused to commit memory (see ulimit -v, vm.overcommit_memory, vm.max_map_count); FROSTHEAP_MAX is ")
            .dec(limit)
            .str(" bytes"),
        Refusal::Limit => {
            let b = b.str("FROSTHEAP_MAX is ").dec(limit).str(" bytes");
            let b = if room_for_request && need > 0 {
                b.str(" and the heap needed ")
                    .dec(need as u64)
                    .str(" more for it")
            } else {
                b
            };
            if heap_limit == s.limit {
                b
            } else {
                b.str(" (the limit holds ")
                    .dec(heap_limit as u64)
                    .str(" in whole heap pages)")
            }
        }
        // A heap of the global allocator whose cap is below the limit (a
        // range smaller than FROSTHEAP_MAX) is refused as by the limit.
        Refusal::Cap | Refusal::None => b.str("FROSTHEAP_MAX is ").dec(limit).str(" bytes"),
    };
    let b = b
        .str("; the process has ")
        .dec(s.committed as u64)
        .str(" committed, ")
        .dec(s.in_use() as u64)
        .str(" in use");
    // Where the runtime's results (and the values rolled-back phases keep)
    // live: said apart, so the line points at them.
    let b = if s.context_in_use > 0 {
        b.str(" (")
            .dec(s.context_in_use as u64)
            .str(" of it in context heaps' chunks)")
    } else {
        b
    };
    let b = if unprinted > 0 {
        b.str(" (")
            .dec(unprinted)
            .str(" more refused since the last such line)")
    } else {
        b
    };
    let b = if panicking {
        b.str("; the thread is panicking, so the process aborts now (std's report of the refusal would wait for ever on the backtrace lock its panic report holds)")
    } else {
        b
    };
    crate::os::write_stderr(b.str("\n").finish());
}
