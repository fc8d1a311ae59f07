//! The batch engine: one batch of items run as one phase.
//!
//! **Claims.** The batch is cut into chunks of [`chunk_len`] items (about 32
//! per worker, at most [`MAX_CHUNK`]). Workers claim runs of chunks from an
//! atomic cursor, guided: a worker takes 1 / (2 × workers) of the chunks
//! left, at least one, so it starts on a long contiguous run and the tail
//! is split finely for balance (fixed 4096-item claims made a 10 M-item map
//! of a cheap function 6% slower). A worker runs a chunk's items in one
//! unwinding scope and publishes how many it took once, in the chunk's
//! progress word; the only per-item store is the worker's current item
//! index, which violation reports need.
//!
//! **Budget.** Under a memory budget, in a batch of more than one item
//! per worker (the first batch has one item per worker and runs whole,
//! since every worker must run an item to make progress), a worker claims
//! one chunk at a time,
//! adds the bytes its items allocated to the batch's sum when the chunk
//! ends, and no chunk is claimed once that sum has reached the budget: the
//! batch then ends early, its chunks `[0, cursor)` all run, and the driver
//! starts the next batch at the first item not run, sized from the new
//! per-item measure. A batch sized from cheap items that meets dear ones
//! therefore overshoots the budget by at most the chunks running when the
//! sum crossed it: one chunk per worker, a chunk being 1/32 of a worker's
//! share of the batch (and at most [`MAX_CHUNK`] items). Claims of one
//! chunk cost a budgeted 10 M-item map of a cheap function nothing
//! measurable beside the per-item measuring it already pays.
//!
//! **Items.** A chunk's items reach the pipeline as a std iterator over
//! `source.take(i)`, and the terminal drives the chain with one internal
//! iteration ([`run_span`]), so a map, a filter-and-sum or a fold compiles
//! to one loop per chunk. The terminal keeps state per claim and publishes
//! it when the claim ends (`terminal.rs`).
//!
//! **Recovery.** When the phase ends with an error (the first violation,
//! else the first panic), or a terminal stopped early (`any`, `find_any`,
//! `try_for_each`: a worker checks [`Terminal::stopped_at`] before each
//! chunk, and the terminal checks each item),
//! [`BatchJob::discard`] rebuilds from the progress words and the items of
//! parked workers which results were written (dropped after an error) and
//! which items were never taken (dropped), so every item and every result
//! is dropped exactly once. How the phase reports violations reaches this
//! file through [`PhaseResult`] alone.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::phase::PhaseResult;
use super::pipe::Pipe;
use super::pool::{panic_message, Runtime};
use super::source::ParSource;
use super::terminal::Terminal;
use super::worker::WorkerEnv;
use crate::error::Error;
use crate::guard;

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

/// Chunks of a batch of `n` items.
pub(super) fn n_chunks(n: usize, workers: usize) -> usize {
    n.div_ceil(chunk_len(n, workers))
}

/// Bytes of the zeroed progress buffer a batch of `n` items needs: one
/// `u32` per chunk.
pub(super) fn progress_bytes(n: usize, workers: usize) -> usize {
    n_chunks(n, workers) * core::mem::size_of::<u32>()
}

/// Runs the items `range` of `src` through `pipe` into `term`.
///
/// A function of its own, not inlined, so that everything the loop reads
/// arrives as arguments: the compiler keeps them in registers across the
/// calls of the user's functions and hoists their loads out of the loop.
/// Inlined into the claim loop, each would be reloaded through a reference
/// on every item, which costs a cheap function a large share of its time.
/// The range is a local, so its cursor stays in a register too. Returns
/// the index after the last item taken (a terminal may stop early); when a
/// task unwinds, the worker's current item says how far it got.
///
/// # Safety
/// 1. The items `range` of `src` are this caller's to take, and whatever
///    `term` writes for them is this caller's to write.
#[inline(never)]
unsafe fn run_span<S, P, T>(
    src: &S,
    pipe: &P,
    term: &T,
    env: &WorkerEnv<'_>,
    pipe_state: &mut P::State,
    term_state: &mut T::State,
    mut range: Range<usize>,
) -> usize
where
    S: ParSource,
    P: Pipe<S::Item>,
    T: Terminal<P::Out>,
{
    let first = range.start;
    let items = range.by_ref().map(|i| {
        guard::set_current_item(i);
        // SAFETY: by (1), item i is ours to take, once (the range moves
        // past it).
        unsafe { src.take(i) }
    });
    term.consume(term_state, first, pipe.apply(env, pipe_state, items));
    range.start
}

/// One batch as the workers run it: the claim cursor, the per-batch
/// tallies, and everything the claim loop reads.
struct BatchJob<'a, S, P, T> {
    src: &'a S,
    pipe: &'a P,
    term: &'a T,
    /// One word per chunk: items taken, plus [`CONSUMED`].
    progress: &'a [AtomicU32],
    /// The batch is items `[base, base + n)` of the source.
    base: usize,
    n: usize,
    chunk: usize,
    n_chunks: usize,
    workers: usize,
    budget: usize,
    /// Batches are sized from exact per-item bytes, so a budgeted call
    /// measures every item (two counter reads around each task); other
    /// calls measure per chunk.
    per_item_bytes: bool,
    /// Claims one chunk at a time and none once `sum_bytes >= budget`: a
    /// budgeted batch of more than one item per worker (the first batch,
    /// one item per worker, runs whole: each worker must run an item).
    stop_at_budget: bool,
    cursor: AtomicUsize,
    cancel: AtomicBool,
    /// The first panic: its item index (if a task's) and message.
    panic: Mutex<Option<(Option<usize>, String)>>,
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

impl<S, P, T> BatchJob<'_, S, P, T>
where
    S: ParSource,
    P: Pipe<S::Item>,
    T: Terminal<P::Out>,
{
    /// Whether no further chunk need be claimed: the batch was cancelled,
    /// or the terminal's outcome is decided. (A terminal that stops at an
    /// item, `try_for_each`, still needs the items before it; they all lie
    /// in chunks already claimed, since the cursor only moves forward.)
    fn halted(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.term.stopped()
    }

    /// Whether the items from input index `first` on need not run.
    fn halted_at(&self, first: usize) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.term.stopped_at(first)
    }

    /// The claim loop of one worker: claim a run of chunks, run them, end
    /// the claim, until none is left or the batch is cancelled or decided.
    fn work(&self, env: &WorkerEnv<'_>) {
        loop {
            if self.halted() {
                return;
            }
            let Some(claim) = self.claim() else {
                return;
            };
            let mut tally = ClaimTally::default();
            let mut pipe_state = self.pipe.begin();
            let mut term_state = self.term.begin();
            let mut whole = true;
            let mut halted = false;
            for unit in claim.clone() {
                if self.halted_at(self.base + unit * self.chunk) {
                    (whole, halted) = (false, true);
                    break;
                }
                if !self.run_unit(unit, env, &mut pipe_state, &mut term_state, &mut tally) {
                    whole = false;
                    break;
                }
            }
            guard::set_current_item(usize::MAX);
            // A terminal that stopped may need the partial of a claim it
            // cut short (`try_reduce`: the first failure may be in it); a
            // cancelled batch's results are discarded.
            let ends_halted =
                T::ENDS_HALTED_CLAIMS && halted && !self.cancel.load(Ordering::Relaxed);
            if whole || ends_halted {
                self.end_claim(claim, env, pipe_state, term_state);
            }
            self.max_item.fetch_max(tally.max_item, Ordering::Relaxed);
            self.sum_bytes.fetch_add(tally.sum_bytes, Ordering::Relaxed);
            if tally.oversized > 0 {
                self.oversized.fetch_add(tally.oversized, Ordering::Relaxed);
            }
        }
    }

    /// Claims the next run of chunks (guided; one chunk under a budget, see
    /// the file's notes), or `None` when every chunk is taken or the
    /// budgeted batch has used its budget.
    fn claim(&self) -> Option<Range<usize>> {
        if self.stop_at_budget && self.sum_bytes.load(Ordering::Relaxed) >= self.budget {
            // The batch has used its budget: it ends with the chunks
            // claimed so far (see the file's notes).
            return None;
        }
        let mut first = self.cursor.load(Ordering::Relaxed);
        loop {
            if first >= self.n_chunks {
                return None;
            }
            let k = if self.stop_at_budget {
                1
            } else {
                ((self.n_chunks - first) / (2 * self.workers)).max(1)
            };
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

    /// Runs chunk `unit` in one unwinding scope and publishes how many
    /// items it took; false if a task panicked.
    fn run_unit(
        &self,
        unit: usize,
        env: &WorkerEnv<'_>,
        pipe_state: &mut P::State,
        term_state: &mut T::State,
        tally: &mut ClaimTally,
    ) -> bool {
        let start = self.base + unit * self.chunk;
        let end = (start + self.chunk).min(self.base + self.n);
        let before = env.ctx.allocated();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the chunk was claimed by this worker alone through
            // the cursor, so its items and their slots are ours.
            unsafe { self.run_items(env, start..end, pipe_state, term_state) }
        }));
        let chunk_sum = env.ctx.allocated() - before;
        tally.sum_bytes += chunk_sum;
        match run {
            Ok((next, max_item, oversized)) => {
                let taken = next - start;
                self.progress[unit].store(taken as u32, Ordering::Release);
                // Without a budget, items are measured per chunk.
                tally.max_item = tally.max_item.max(if self.per_item_bytes {
                    max_item
                } else {
                    chunk_sum.div_ceil(taken.max(1))
                });
                tally.oversized += oversized;
                true
            }
            Err(payload) => {
                // The task of the worker's current item unwound with its
                // item: the items before it are done, it is consumed. A
                // current item outside the chunk (left by an earlier
                // chunk) means the panic came before the first take.
                let current = guard::current_item();
                let (word, item) = if (start..end).contains(&current) {
                    ((current - start) as u32 | CONSUMED, Some(current))
                } else {
                    (0, None)
                };
                self.progress[unit].store(word, Ordering::Release);
                self.record_panic(item, &*payload);
                false
            }
        }
    }

    /// Runs the items of `range`; a budgeted batch measures each item and
    /// stops early when the batch is cancelled. Returns the index after the
    /// last item taken, the largest bytes one item consumed and the items
    /// over the budget (measured per item only).
    ///
    /// # Safety
    /// 1. The items of `range` are this caller's to take, and their slots
    ///    are writable.
    unsafe fn run_items(
        &self,
        env: &WorkerEnv<'_>,
        range: Range<usize>,
        pipe_state: &mut P::State,
        term_state: &mut T::State,
    ) -> (usize, usize, usize) {
        if !self.per_item_bytes {
            // SAFETY: forwarded (1).
            let next = unsafe {
                run_span(
                    self.src, self.pipe, self.term, env, pipe_state, term_state, range,
                )
            };
            return (next, 0, 0);
        }
        let (mut max_item, mut oversized) = (0usize, 0usize);
        let mut next = range.start;
        while next < range.end {
            let before = env.ctx.allocated();
            // SAFETY: forwarded (1), one item at a time.
            let after = unsafe {
                run_span(
                    self.src,
                    self.pipe,
                    self.term,
                    env,
                    pipe_state,
                    term_state,
                    next..next + 1,
                )
            };
            let stopped = after == next;
            next = after;
            let used = env.ctx.allocated() - before;
            max_item = max_item.max(used);
            oversized += usize::from(used > self.budget);
            if stopped || self.halted_at(next) {
                break;
            }
        }
        (next, max_item, oversized)
    }

    /// Ends a claim whose chunks all ran (or that the terminal stopped,
    /// for one that asks, [`Terminal::ENDS_HALTED_CLAIMS`]): stages that
    /// hold state over the claim (`fold`) emit it, and the terminal
    /// publishes its partial
    /// (reductions combine with their neighbours here, on the worker).
    fn end_claim(
        &self,
        claim: Range<usize>,
        env: &WorkerEnv<'_>,
        pipe_state: P::State,
        term_state: T::State,
    ) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut term_state = term_state;
            self.term.consume(
                &mut term_state,
                usize::MAX,
                self.pipe.finish(env, pipe_state),
            );
            self.term.end_claim(claim, term_state);
        }));
        if let Err(payload) = run {
            self.record_panic(None, &*payload);
        }
    }

    /// Keeps the first panic and cancels the batch.
    fn record_panic(&self, item: Option<usize>, payload: &(dyn std::any::Any + Send)) {
        let msg = panic_message(payload);
        let mut p = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some((item, msg));
        }
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Chunks claimed: those the batch ran (all of them, unless a budgeted
    /// batch stopped claiming at its budget), once the phase is over.
    fn claimed_chunks(&self) -> usize {
        self.cursor.load(Ordering::Relaxed).min(self.n_chunks)
    }

    /// Items the batch ran when it ended without an error: its claimed
    /// chunks, a prefix of the batch.
    fn ran_items(&self) -> usize {
        (self.claimed_chunks() * self.chunk).min(self.n)
    }

    /// Whether the phase ended without running what it had to: every chunk
    /// (or, for a batch that reached its budget, every chunk it claimed)
    /// to its end or to a panic. With no error and no early stop, the call
    /// must not return `Ok` then. (A batch stops claiming only once its
    /// sum reached the budget, which takes a chunk run: a phase no worker
    /// started is unfinished, never an `Ok` of no items.)
    fn unfinished(&self) -> bool {
        let claimed = self.claimed_chunks();
        let at_budget =
            self.stop_at_budget && self.sum_bytes.load(Ordering::Relaxed) >= self.budget;
        if claimed < self.n_chunks && !at_budget {
            return true;
        }
        self.progress[..claimed].iter().enumerate().any(|(k, p)| {
            let lo = self.base + k * self.chunk;
            let hi = (lo + self.chunk).min(self.base + self.n);
            p.load(Ordering::Acquire) as usize != hi - lo
        })
    }

    /// After a phase that failed or stopped early: drops the results
    /// written (after an error, for terminals that write slots; never
    /// after stores were undone, see [`Runtime::run_batch`]) and every
    /// item never taken, each exactly once. Returns how many written
    /// results it kept undropped after stores were undone, counting only
    /// values that need drop (the slots' memory is the caller's, freed
    /// with it).
    ///
    /// A parked worker never published its chunk: the item it was running
    /// lives on that parked thread's stack now (never dropped twice), and
    /// the items before it in the chunk are done.
    ///
    /// # Safety
    /// 1. The phase is over; `parked_items` are the items whose tasks were
    ///    running on workers parked in it; after an error, no one else owns
    ///    the written slots.
    unsafe fn discard(&self, parked_items: &[usize], failed: bool, rolled_back: bool) -> usize {
        let drop_items = core::mem::needs_drop::<S::Item>();
        let drop_results = failed && !rolled_back && T::SLOTS;
        let count_kept = failed && rolled_back && T::SLOTS && T::SLOT_VALUES_NEED_DROP;
        let mut kept = 0;
        if !drop_items && !drop_results && !count_kept {
            return kept;
        }
        for (k, p) in self.progress.iter().enumerate() {
            let lo = self.base + k * self.chunk;
            let hi = (lo + self.chunk).min(self.base + self.n);
            let (done, consumed) = match parked_items.iter().find(|&&it| it >= lo && it < hi) {
                Some(&it) => (it - lo, true),
                None => {
                    let v = p.load(Ordering::Acquire);
                    ((v & !CONSUMED) as usize, v & CONSUMED != 0)
                }
            };
            if drop_results {
                let first = lo - self.base;
                // SAFETY: the results of the chunk's first `done` items
                // were written and, by (1), nothing else owns them.
                unsafe { self.term.drop_results(first..first + done) };
            }
            if count_kept {
                kept += done;
            }
            if drop_items {
                // SAFETY: these items were never taken: their chunk was
                // not claimed, or its worker stopped before them.
                unsafe { self.src.drop_untaken(lo + done + usize::from(consumed)..hi) };
            }
        }
        kept
    }
}

/// The error a batch returns: the first violation, else the first panic.
fn batch_error(phase: &PhaseResult, panic: Option<(Option<usize>, String)>) -> Option<Error> {
    if let Some(e) = &phase.refused {
        return Some(e.clone());
    }
    if let Some(v) = phase.violations.first() {
        return Some(Error::Violation(Box::new(v.clone())));
    }
    if let Some(e) = &phase.stalled {
        return Some(e.clone());
    }
    panic.map(|(item_index, message)| Error::TaskPanicked {
        item_index,
        message,
    })
}

impl Runtime {
    /// Runs items `[base, base + n)` of `src` through `pipe` into `term`
    /// as one phase; returns how many it ran, `[base, base + ran)`: all
    /// `n`, unless a budgeted batch reached its budget first (the items
    /// after them are untouched, for the next batch). On an error, or
    /// when the terminal stopped early, everything the batch made and
    /// every item of it not taken are dropped, unless the rollback policy
    /// undid stores of the phase: then the values its tasks made are
    /// never dropped (a leak, which is safe), the terminal's partials of
    /// the batch included ([`Terminal::leak_batch`]). A task's value may
    /// rest on a store that was undone — an `Arc` cloned from guarded
    /// data, whose count increment the undo took back; a `String` moved
    /// out of guarded data with `mem::take`, whose take the undo took
    /// back, so the guarded data owns its buffer again — and dropping it
    /// would act on the heap as it was not (that `Arc`'s count would fall
    /// below its holders, and its value be freed while the guarded data
    /// still points at it). What holds the values is freed all the same:
    /// the slots (the caller's `Vec`) and the terminal's buffers, whose
    /// bytes are forgotten in place, never read again; a value that needs
    /// no drop owns nothing, so nothing of it is kept. Those that need
    /// drop are counted (`RuntimeStats::values_kept`, the violation's
    /// `values_kept`). Then the terminal finishes the batch
    /// ([`Terminal::finish_batch`]) and the batch's size is recorded.
    ///
    /// # Safety
    /// 1. The items `[base, base + n)` of `src` were never taken, and this
    ///    call takes them (ownership of owned items passes to it);
    ///    `progress` points to at least [`progress_bytes`]`(n,
    ///    self.n_workers)` zeroed bytes, aligned for `AtomicU32`, valid
    ///    until it returns; `term.prepare_batch` was called for this batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_batch<S, P, T>(
        &self,
        src: &S,
        base: usize,
        n: usize,
        progress: *mut u8,
        pipe: &P,
        term: &mut T,
        per_item: &mut usize,
    ) -> Result<usize, Error>
    where
        S: ParSource,
        P: Pipe<S::Item>,
        T: Terminal<P::Out>,
    {
        let chunk = chunk_len(n, self.n_workers);
        let n_chunks = n.div_ceil(chunk);
        // SAFETY: by (1), at least n_chunks zeroed u32 slots (progress_bytes
        // counts them the same way), suitably aligned; AtomicU32 has u32's
        // layout.
        let progress: &[AtomicU32] =
            unsafe { core::slice::from_raw_parts(progress.cast::<AtomicU32>(), n_chunks) };
        let job = BatchJob {
            src,
            pipe,
            term: &*term,
            progress,
            base,
            n,
            chunk,
            n_chunks,
            workers: self.n_workers.max(1),
            budget: self.memory_budget.unwrap_or(usize::MAX),
            per_item_bytes: self.memory_budget.is_some(),
            stop_at_budget: self.memory_budget.is_some() && n > self.n_workers,
            cursor: AtomicUsize::new(0),
            cancel: AtomicBool::new(false),
            panic: Mutex::new(None),
            max_item: AtomicUsize::new(0),
            sum_bytes: AtomicUsize::new(0),
            oversized: AtomicUsize::new(0),
        };
        // Result slots are written by workers: exempt them from the freeze
        // when they live in a guarded heap (see reserve_results).
        let window = term
            .slot_window()
            .and_then(|(ptr, len)| self.results_window(ptr, len));
        // The claim loop is dynamic: once a worker has left it, every chunk
        // is claimed (or the batch is cancelled, decided, or at its
        // budget, which only move forward), so a worker that has not
        // started by then may skip the phase.
        let phase = self.run_phase(
            &|env: &WorkerEnv<'_>| job.work(env),
            true,
            window,
            S::LENDS_OWNERS,
        );
        let rolled_back = phase.undone > 0;

        let panic = core::mem::take(&mut *job.panic.lock().unwrap_or_else(|e| e.into_inner()));
        let mut error = batch_error(&phase, panic);
        if error.is_none() && !term.stopped() && job.unfinished() {
            // A phase returns Ok only when every task ran to its end.
            error = Some(Error::Incomplete {
                reason: format!(
                    "the phase ended before every task ran (it had {} of the runtime's {} workers); \
                     its results are discarded",
                    phase.workers, self.n_workers
                ),
            });
        }
        let ran = if error.is_none() { job.ran_items() } else { n };
        self.record_batch_bytes(&job, ran, per_item);
        let mut kept = 0;
        if error.is_some() || term.stopped() {
            // SAFETY: the phase is over, its parked items are listed, and
            // after an error the caller does not take the slots.
            kept += unsafe { job.discard(&phase.parked_items, error.is_some(), rolled_back) };
        }
        drop(job);
        if rolled_back {
            kept += term.leak_batch();
            if kept > 0 {
                // The kept values may own blocks in the workers' current
                // chunks: each pins its own before its next job.
                self.control.pin_epoch.fetch_add(1, Ordering::Release);
            }
            self.record_kept(kept);
            if let Some(Error::Violation(v)) = &mut error {
                v.values_kept = kept;
            }
        }
        term.finish_batch(error.is_none().then_some(ran));
        self.record_batch(ran);
        match error {
            None => Ok(ran),
            Some(e) => Err(e),
        }
    }

    /// Counts a rolled-back batch and the values of it kept undropped.
    fn record_kept(&self, kept: usize) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.rolled_back_phases += 1;
        s.values_kept += kept as u64;
    }

    /// Adds a finished batch's item count (`ran`) and measured bytes to
    /// the statistics, and raises `per_item` (the call's largest item so
    /// far).
    fn record_batch_bytes<S, P, T>(
        &self,
        job: &BatchJob<'_, S, P, T>,
        ran: usize,
        per_item: &mut usize,
    ) {
        let max_item = job.max_item.load(Ordering::Relaxed);
        let sum = job.sum_bytes.load(Ordering::Relaxed);
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.items += ran as u64;
        *per_item = (*per_item).max(max_item);
        s.bytes_per_item = s.bytes_per_item.max(max_item);
        let total = self.bytes_total.fetch_add(sum, Ordering::Relaxed) + sum;
        s.mean_bytes_per_item = total / (s.items.max(1) as usize);
        s.peak_phase_bytes = s.peak_phase_bytes.max(sum);
        s.oversized_items += job.oversized.load(Ordering::Relaxed) as u64;
    }
}
