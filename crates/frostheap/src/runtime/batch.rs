//! The batch engine: one batch of items run as one phase.
//!
//! **Claims.** The batch is cut into chunks of [`chunk_len`] items (about 32
//! per worker, at most [`MAX_CHUNK`]). Workers claim runs of chunks from an
//! atomic cursor, guided: a worker takes 1 / (2 × workers) of the chunks
//! left, at least one, so it starts on a long contiguous run and the tail
//! is split finely for balance (fixed 4096-item claims made a 10 M-item map
//! of a cheap function 6% slower). A worker runs a chunk's items in one
//! unwinding scope and publishes the chunk's completion once, in the
//! chunk's progress word; the only per-item store is the worker's current
//! item index, which violation reports need.
//!
//! **Recovery.** When the phase ends with an error (the first violation,
//! else the first panic), [`BatchJob::discard_partial`] rebuilds from the
//! progress words and the items of parked workers which results were
//! written (dropped) and which items were never taken (dropped), so every
//! item and every result is dropped exactly once. How the phase reports
//! violations reaches this file through [`PhaseResult`] alone.
//!
//! Results are written straight into the caller's `Vec`'s spare capacity:
//! no second buffer and no copy.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::phase::PhaseResult;
use super::worker::WorkerEnv;
use super::{panic_message, Runtime, TaskContext};
use crate::context::ContextHeap;
use crate::guard;
use crate::Error;

/// Items per chunk claimed from a batch's cursor: about 32 chunks per
/// worker, at most [`MAX_CHUNK`].
fn chunk_len(n: usize, workers: usize) -> usize {
    (n / (workers.max(1) * 32)).clamp(1, MAX_CHUNK)
}

/// The largest chunk (it must fit below [`CONSUMED`]).
const MAX_CHUNK: usize = 4096;

/// In a chunk's progress word: the item after the done ones was consumed
/// by its task (which panicked), so it must not be dropped again.
const CONSUMED: u32 = 1 << 31;

/// Bytes of the zeroed progress buffer a batch of `n` items needs: one
/// `u32` per chunk.
pub(super) fn progress_bytes(n: usize, workers: usize) -> usize {
    n.div_ceil(chunk_len(n, workers)) * core::mem::size_of::<u32>()
}

/// A claimed range of a batch, as [`run_chunk`] sees it.
struct Chunk<'a> {
    ctx: &'a ContextHeap,
    worker: usize,
    base: usize,
    start: usize,
    end: usize,
}

/// Runs the items of a chunk (the loop of a map without a memory budget).
///
/// A function of its own, not inlined, so that everything the loop reads
/// arrives as arguments: the compiler keeps them in registers across the
/// calls of `f` and hoists the loads of `src` and `f` out of the loop.
/// Inlined into the claim loop, each would be reloaded through a reference
/// on every item, which costs a cheap function a large share of its time.
///
/// # Safety
/// 1. The items `[start, end)` of `src` are this caller's to take, and
///    `results.add(i)` is writable for each of those `i`.
#[inline(never)]
unsafe fn run_chunk<S, R, F>(c: &Chunk<'_>, src: &S, f: &F, results: *mut R)
where
    S: Source,
    F: Fn(&TaskContext<'_>, S::Item) -> R,
{
    // Pointers that advance with the index, so the loop carries six values
    // (the function, the slot, two pointers, the index and its end) and
    // keeps them all in registers across the calls of `f`.
    let mut item = src.slots().wrapping_add(c.start);
    let mut out = results.wrapping_add(c.start);
    for idx in c.base + c.start..c.base + c.end {
        guard::set_current_item(idx);
        let tc = TaskContext {
            ctx: c.ctx,
            item_index: Some(idx),
            worker: c.worker,
        };
        // SAFETY: by (1), the item at `item` (index idx - base) is ours to
        // take and `out` is its writable result slot.
        unsafe { out.write(f(&tc, S::take_slot(item))) };
        item = item.wrapping_add(1);
        out = out.wrapping_add(1);
    }
}

/// Where the items of one batch come from.
///
/// # Safety
/// Implementors: for `i` below the batch length, `take(i)` returns item
/// `i` and `drop_untaken(i)` disposes of an item that was never taken;
/// both may be called from any worker thread (hence `Sync`).
pub(super) unsafe trait Source: Sync {
    type Item;
    /// What the batch holds per item, contiguously from [`Source::slots`].
    type Slot;
    /// The first item's slot.
    fn slots(&self) -> *mut Self::Slot;
    /// The item in slot `p`.
    ///
    /// # Safety
    /// 1. `p` is the slot of an item below the batch length, taken at most
    ///    once and never also passed to `drop_untaken`.
    unsafe fn take_slot(p: *mut Self::Slot) -> Self::Item;
    /// Item `i`.
    ///
    /// # Safety
    /// 1. As for `take_slot`, for the slot of item `i`.
    unsafe fn take(&self, i: usize) -> Self::Item {
        // SAFETY: forwarded (1).
        unsafe { Self::take_slot(self.slots().wrapping_add(i)) }
    }
    /// Drops item `i`, which was never taken.
    ///
    /// # Safety
    /// 1. As for `take`.
    unsafe fn drop_untaken(&self, i: usize);
}

/// Items the batch owns, collected from an iterator into scratch memory.
pub(super) struct OwnedItems<T>(pub(super) *mut T);

// SAFETY: each index is read (moved out) by exactly one worker, and the
// items are Send.
unsafe impl<T: Send> Sync for OwnedItems<T> {}

// SAFETY: the pointer covers the batch's initialised items (map_with);
// each is read or dropped once, as the trait requires of callers.
unsafe impl<T: Send> Source for OwnedItems<T> {
    type Item = T;
    type Slot = T;
    fn slots(&self) -> *mut T {
        self.0
    }
    unsafe fn take_slot(p: *mut T) -> T {
        // SAFETY: by (1), the item is initialised and not yet moved out.
        unsafe { p.read() }
    }
    unsafe fn drop_untaken(&self, i: usize) {
        // SAFETY: as in take.
        unsafe { core::ptr::drop_in_place(self.0.add(i)) }
    }
}

/// Items borrowed from a slice ([`Runtime::map_slice`]).
pub(super) struct BorrowedItems<'a, T>(pub(super) &'a [T]);

// SAFETY: take hands out shared references into the slice (T: Sync);
// nothing is owned, so nothing is dropped.
unsafe impl<'a, T: Sync> Source for BorrowedItems<'a, T> {
    type Item = &'a T;
    type Slot = T;
    fn slots(&self) -> *mut T {
        // Never written through: items are handed out as `&T`.
        self.0.as_ptr().cast_mut()
    }
    unsafe fn take_slot(p: *mut T) -> &'a T {
        // SAFETY: by (1), p points at an element of the slice, borrowed
        // for 'a.
        unsafe { &*p }
    }
    unsafe fn drop_untaken(&self, _i: usize) {}
}

/// The result slots of a batch: `out`'s spare capacity.
struct SyncPtr<T>(*mut T);

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// Slot `i` (a method, so closures capture the wrapper).
    fn get(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}
// SAFETY: each index is written by exactly one worker (claimed through the
// atomic cursor) and read by main only after the phase.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// One batch as the workers run it: the claim cursor, the per-batch
/// tallies, and everything the claim loop reads (copies and references,
/// one pointer away from the worker).
struct BatchJob<'a, S, F, R> {
    src: &'a S,
    f: &'a F,
    results: SyncPtr<R>,
    /// One word per chunk: items done, plus [`CONSUMED`].
    progress: &'a [AtomicU32],
    n: usize,
    base: usize,
    chunk: usize,
    n_chunks: usize,
    workers: usize,
    budget: usize,
    /// Batches are sized from exact per-item bytes, so a budgeted map
    /// measures every item (two counter reads around each task); other
    /// maps measure per chunk.
    per_item_bytes: bool,
    cursor: AtomicUsize,
    cancel: AtomicBool,
    /// The first panic: its item index and message.
    panic: Mutex<Option<(usize, String)>>,
    max_item: AtomicUsize,
    sum_bytes: AtomicUsize,
    oversized: AtomicUsize,
}

/// What a worker tallies over one claim, published once at its end: no
/// contended read-modify-write per chunk or item.
#[derive(Default)]
struct ClaimTally {
    max_item: usize,
    sum_bytes: usize,
    oversized: usize,
}

/// How far a chunk's items ran without a panic.
struct ChunkRun {
    /// Items `[start, done)` have their results written.
    done: usize,
    /// The largest bytes one item consumed (measured per item only).
    max_item: usize,
    /// Items that consumed more than the budget.
    oversized: usize,
}

impl<S, F, R> BatchJob<'_, S, F, R>
where
    S: Source,
    R: Send,
    F: Fn(&TaskContext<'_>, S::Item) -> R + Sync,
{
    /// The claim loop of one worker: claim a run of chunks, run them, until
    /// none is left or the batch is cancelled.
    fn work(&self, env: &WorkerEnv<'_>) {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return;
            }
            let Some(claim) = self.claim() else {
                return;
            };
            let mut tally = ClaimTally::default();
            for unit in claim {
                if self.cancel.load(Ordering::Relaxed) {
                    break;
                }
                self.run_unit(unit, env, &mut tally);
            }
            guard::set_current_item(usize::MAX);
            self.max_item.fetch_max(tally.max_item, Ordering::Relaxed);
            self.sum_bytes.fetch_add(tally.sum_bytes, Ordering::Relaxed);
            if tally.oversized > 0 {
                self.oversized.fetch_add(tally.oversized, Ordering::Relaxed);
            }
        }
    }

    /// Claims the next run of chunks (guided, see the file's notes), or
    /// `None` when every chunk is taken.
    fn claim(&self) -> Option<core::ops::Range<usize>> {
        let mut first = self.cursor.load(Ordering::Relaxed);
        loop {
            if first >= self.n_chunks {
                return None;
            }
            let k = ((self.n_chunks - first) / (2 * self.workers)).max(1);
            match self.cursor.compare_exchange_weak(
                first,
                first + k,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(first..first + k),
                Err(now) => first = now,
            }
        }
    }

    /// Runs chunk `unit` in one unwinding scope and publishes how far it
    /// got. A panic ends the chunk, and the worker's slot says which item
    /// it was (its current item is stored before each task).
    fn run_unit(&self, unit: usize, env: &WorkerEnv<'_>, tally: &mut ClaimTally) {
        let start = unit * self.chunk;
        let end = (start + self.chunk).min(self.n);
        let chunk_before = env.ctx.allocated();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: [start, end) lies in a chunk this worker claimed alone
            // through the cursor (each item is taken once), and its result
            // slots lie in the reserved spare capacity.
            unsafe { self.run_items(env, start, end) }
        }));
        let chunk_sum = env.ctx.allocated() - chunk_before;
        tally.sum_bytes += chunk_sum;
        match run {
            Ok(ran) => {
                // Results [start, done) are written.
                self.progress[unit].store((ran.done - start) as u32, Ordering::Release);
                // Without a budget, items are measured per chunk.
                tally.max_item = tally.max_item.max(if self.per_item_bytes {
                    ran.max_item
                } else {
                    chunk_sum.div_ceil(ran.done - start)
                });
                tally.oversized += ran.oversized;
            }
            Err(payload) => {
                // The task of the item in the slot unwound with its item:
                // results before it are written, it is consumed.
                let i = guard::current_item() - self.base;
                self.progress[unit].store((i - start) as u32 | CONSUMED, Ordering::Release);
                let msg = panic_message(&*payload);
                let mut p = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                if p.is_none() {
                    *p = Some((self.base + i, msg));
                }
                self.cancel.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Runs items `[start, end)`; a budgeted batch measures each item and
    /// stops early when the batch is cancelled.
    ///
    /// # Safety
    /// 1. The items `[start, end)` are this caller's to take, and their
    ///    result slots are writable.
    unsafe fn run_items(&self, env: &WorkerEnv<'_>, start: usize, end: usize) -> ChunkRun {
        let (ctx, worker) = (env.ctx, env.index);
        if !self.per_item_bytes {
            let c = Chunk {
                ctx,
                worker,
                base: self.base,
                start,
                end,
            };
            // SAFETY: forwarded (1).
            unsafe { run_chunk(&c, self.src, self.f, self.results.0) };
            return ChunkRun {
                done: end,
                max_item: 0,
                oversized: 0,
            };
        }
        let (mut max_item, mut oversized) = (0usize, 0usize);
        for i in start..end {
            guard::set_current_item(self.base + i);
            let tc = TaskContext {
                ctx,
                item_index: Some(self.base + i),
                worker,
            };
            let before = ctx.allocated();
            // SAFETY: forwarded (1).
            let r = (self.f)(&tc, unsafe { self.src.take(i) });
            let used = ctx.allocated() - before;
            max_item = max_item.max(used);
            oversized += usize::from(used > self.budget);
            // SAFETY: forwarded (1).
            unsafe { self.results.get(i).write(r) };
            if self.cancel.load(Ordering::Relaxed) {
                return ChunkRun {
                    done: i + 1,
                    max_item,
                    oversized,
                };
            }
        }
        ChunkRun {
            done: end,
            max_item,
            oversized,
        }
    }

    /// Items whose chunk did not publish its completion, if any (after the
    /// phase).
    fn not_done(&self) -> Option<usize> {
        let missing: usize = self
            .progress
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let len = ((k + 1) * self.chunk).min(self.n) - k * self.chunk;
                len - (p.load(Ordering::Acquire) as usize).min(len)
            })
            .sum();
        (missing > 0).then_some(missing)
    }

    /// After a failed phase: drops every result that was written and every
    /// item that was never taken, each exactly once.
    ///
    /// A parked worker never published its chunk: the item it was running
    /// lives on that parked thread's stack now (never dropped twice), and
    /// the items before it in the chunk are done.
    ///
    /// # Safety
    /// 1. The phase is over; `parked_items` are the items whose tasks were
    ///    running on workers parked in it; the caller's `Vec` does not own
    ///    the result slots (its length was not advanced).
    unsafe fn discard_partial(&self, parked_items: &[usize]) {
        let (base, chunk, n) = (self.base, self.chunk, self.n);
        for (k, p) in self.progress.iter().enumerate() {
            let (lo, hi) = (k * chunk, ((k + 1) * chunk).min(n));
            let (done, consumed) = match parked_items
                .iter()
                .find(|&&it| it >= base + lo && it < base + hi)
            {
                Some(&it) => (it - base - lo, true),
                None => {
                    let v = p.load(Ordering::Acquire);
                    ((v & !CONSUMED) as usize, v & CONSUMED != 0)
                }
            };
            for i in lo..lo + done {
                // SAFETY: results [lo, lo + done) of this chunk were
                // written, and by (1) nothing else owns them.
                unsafe { core::ptr::drop_in_place(self.results.get(i)) };
            }
            for i in lo + done + usize::from(consumed)..hi {
                // SAFETY: these items were never taken: their chunk was
                // not claimed, or its worker stopped before them.
                unsafe { self.src.drop_untaken(i) };
            }
        }
    }
}

/// The error a batch returns: the first violation, else the first panic.
fn batch_error(phase: &PhaseResult, panic: Option<(usize, String)>) -> Option<Error> {
    if let Some(e) = &phase.refused {
        return Some(e.clone());
    }
    if let Some(v) = phase.violations.first() {
        return Some(Error::Violation(Box::new(v.clone())));
    }
    panic.map(|(i, message)| Error::TaskPanicked {
        item_index: Some(i),
        message,
    })
}

impl Runtime {
    /// Runs one batch as one phase: results in `out`'s spare capacity, or
    /// the batch's error with everything it made dropped.
    ///
    /// # Safety
    /// 1. `src` has `n` items, which this call takes (ownership of owned
    ///    items passes to it); `progress` points to at least
    ///    [`progress_bytes`]`(n, self.n_workers)` zeroed bytes, aligned
    ///    for `AtomicU32`; both stay valid until it returns.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_batch<S, R, F>(
        &self,
        src: &S,
        progress: *mut u8,
        n: usize,
        base: usize,
        f: &F,
        out: &mut Vec<R>,
        per_item: &mut usize,
    ) -> Result<(), Error>
    where
        S: Source,
        R: Send,
        F: Fn(&TaskContext<'_>, S::Item) -> R + Sync,
    {
        debug_assert!(
            out.capacity() - out.len() >= n,
            "the caller reserves n result slots"
        );
        // SAFETY: `out.len() + n <= out.capacity()` (reserved by the
        // caller), so the slots lie inside the allocation.
        let results = SyncPtr(unsafe { out.as_mut_ptr().add(out.len()) });
        let chunk = chunk_len(n, self.n_workers);
        let n_chunks = n.div_ceil(chunk);
        // SAFETY: by (1), at least n_chunks zeroed u32 slots (progress_bytes
        // counts them the same way), suitably aligned; AtomicU32 has u32's
        // layout.
        let progress: &[AtomicU32] =
            unsafe { core::slice::from_raw_parts(progress.cast::<AtomicU32>(), n_chunks) };
        let job = BatchJob {
            src,
            f,
            results,
            progress,
            n,
            base,
            chunk,
            n_chunks,
            workers: self.n_workers.max(1),
            budget: self.memory_budget.unwrap_or(usize::MAX),
            per_item_bytes: self.memory_budget.is_some(),
            cursor: AtomicUsize::new(0),
            cancel: AtomicBool::new(false),
            panic: Mutex::new(None),
            max_item: AtomicUsize::new(0),
            sum_bytes: AtomicUsize::new(0),
            oversized: AtomicUsize::new(0),
        };
        // The result slots are written by workers: exempt them from the
        // freeze when they live in a guarded heap (see reserve_results).
        let window = self.results_window(results.get(0) as usize, n * core::mem::size_of::<R>());
        let phase = self.run_phase(&|env: &WorkerEnv<'_>| job.work(env), window);

        let panic = core::mem::take(&mut *job.panic.lock().unwrap_or_else(|e| e.into_inner()));
        let mut error = batch_error(&phase, panic);
        if error.is_none() {
            // A phase returns Ok only when every task ran to completion
            // (every chunk's progress word full); anything else is a bug
            // of the runtime, reported as an error rather than as results
            // no task made.
            if let Some(missing) = job.not_done() {
                error = Some(Error::Incomplete {
                    reason: format!(
                        "{missing} of {n} tasks did not run although no task failed (a frostheap bug: please report it)"
                    ),
                });
            }
        }
        self.record_batch_bytes(&job, per_item);
        let Some(error) = error else {
            // SAFETY: no error means every chunk ran to its end: slots
            // [len, len + n) are initialised.
            unsafe { out.set_len(out.len() + n) };
            return Ok(());
        };
        // SAFETY: the phase is over, its parked items are listed, and
        // `out`'s length was not advanced.
        unsafe { job.discard_partial(&phase.parked_items) };
        Err(error)
    }

    /// Adds a finished batch's item count and measured bytes to the
    /// statistics, and raises `per_item` (the map's largest item so far).
    fn record_batch_bytes<S, F, R>(&self, job: &BatchJob<'_, S, F, R>, per_item: &mut usize) {
        let max_item = job.max_item.load(Ordering::Relaxed);
        let sum = job.sum_bytes.load(Ordering::Relaxed);
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.items += job.n as u64;
        *per_item = (*per_item).max(max_item);
        s.bytes_per_item = s.bytes_per_item.max(max_item);
        let total = self.bytes_total.fetch_add(sum, Ordering::Relaxed) + sum;
        s.mean_bytes_per_item = total / (s.items.max(1) as usize);
        s.peak_phase_bytes = s.peak_phase_bytes.max(sum);
        s.oversized_items += job.oversized.load(Ordering::Relaxed) as u64;
    }
}
