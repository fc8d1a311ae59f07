//! [`Runtime`]: the pool of workers, its statistics, and the helpers every
//! parallel call shares (reserving result slots, the up-front check of
//! data lent for mutation, batch sizing). Built by `builder.rs`; the phase
//! protocol is `phase.rs`, the entry points `map.rs` and `call.rs`.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::scratch::Scratch;
use super::worker::{self, ControlBlock, Worker};
use crate::context::ContextHeap;
use crate::error::Error;
use crate::global::unguarded;
use crate::guard;
use crate::heap::Heap;
use crate::os;
use crate::trap::{Backend, Guarded, Violation};

/// Result vectors of at least this many bytes live in the main heap (in
/// global mode) with their pages exempted from the freeze.
pub const RESULTS_IN_HEAP_MIN: usize = 256 << 10;

/// Default cap on threads parked by the cancel policy (each costs ≈ 40 KB,
/// 6 mappings and a context slot for good, plus what its task had
/// allocated from its context heap, which stays committed and counted
/// against the limit: its locals live on its stopped stack); past it the
/// runtime refuses its phases with `Error::Incomplete`.
pub const DEFAULT_MAX_PARKED: usize = 64;

/// Items per worker in a batch of `par_bridge` / `map_iter` when the
/// runtime has no memory budget ([`Runtime::next_bridge_batch_len`]): the
/// items main pulls before the workers start on them, and so what a
/// bridged call holds at once, with [`bridge_buffer_bytes`].
///
/// A batch is a phase: the guarded heaps frozen and thawed, the workers
/// woken, the items pulled first on main. Over the lines of a 100 MB file
/// (2.5 M items, 2 workers, `frostheap-bench`'s `bridge`), 1,024 to 16,384
/// items per worker ran in the same time within the noise, peaking at 7 to
/// 9 MB resident; 65,536 peaked at 16 MB, and were no faster.
pub(crate) const BRIDGE_ITEMS_PER_WORKER: usize = 4096;

/// Without a memory budget, the most bytes a batch of `par_bridge` holds
/// in pulled items (their own size in the scratch buffer), and the most
/// the process may commit while main makes them (what they own: `pull` in
/// `drive.rs`): 1/1024 of the process limit, between 1 MiB and 16 MiB
/// (16 MiB from a 16 GiB limit up).
pub(super) fn bridge_buffer_bytes() -> usize {
    (crate::heap::process::limit() / 1024).clamp(1 << 20, 16 << 20)
}

/// Statistics of a runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Phases run.
    pub phases: u64,
    /// Items (or scope tasks) run.
    pub items: u64,
    /// The largest memory one item consumed, measured exactly from its
    /// context heap's bump counter. Maps with a memory budget measure
    /// every item (the batch sizes depend on it); maps without one measure
    /// per chunk of items (about 1/32 of a worker's share, at most 4096)
    /// and report the largest chunk mean, which keeps two counter reads
    /// off every task.
    pub bytes_per_item: usize,
    /// Mean bytes consumed per item.
    pub mean_bytes_per_item: usize,
    /// Batch sizes chosen by `map`, in order (the last 64).
    pub batch_sizes: Vec<usize>,
    /// The most bytes the items of one phase consumed together.
    pub peak_phase_bytes: usize,
    /// Items larger than the memory budget (each ran alone, but those of a
    /// call's first batch, one per worker, which run together).
    pub oversized_items: u64,
    /// Violations reported: one per violating store a report was made
    /// for, whatever the policy. Under rollback, each store the call's
    /// error lists (the first and [`Violation::other_stores`]); under
    /// cancel, the one store each violator was parked at (which never
    /// lands: one per cancelled task); under audit, each record added to
    /// [`Runtime::audit_log`]; under any policy, each kernel write into a
    /// guarded heap found by [`crate::io::read`].
    ///
    /// [`Violation::other_stores`]: crate::Violation::other_stores
    pub violations: u64,
    /// Worker threads parked by the cancel policy (replaced).
    pub parked_workers: u64,
    /// Times a worker skipped a phase: it had not started the phase when
    /// another worker had run out of chunks to claim, so the phase ended
    /// without waiting for it (the scheduler had not run it yet; see
    /// docs/design.md, "The phase protocol").
    pub skipped_workers: u64,
    /// The memory budget, if any.
    pub memory_budget: Option<usize>,
    /// Worker threads.
    pub workers: usize,
    /// The protection backend in force.
    pub backend: &'static str,
    /// Bytes committed now by the context heaps of the current workers
    /// (read when the snapshot is taken).
    pub context_committed: usize,
    /// Phases whose violating stores the rollback policy undid. The values
    /// such a phase's tasks made are never dropped, as one may rest on a
    /// store that was undone (docs/rollback.md, "Known limits"); what held
    /// them (result slots, the buffers of `collect`'s pieces) is freed.
    pub rolled_back_phases: u64,
    /// Values of those phases kept, never dropped, because their type
    /// needs drop (results, partials of reductions, a kept error or found
    /// item): exactly one per value, whatever it owns. What each owns (a
    /// `String`'s buffer, most often in its worker's context heap, where
    /// it keeps its chunk from being reused) stays allocated for the life
    /// of the process. Values that need no drop own nothing and are not
    /// counted: nothing of them is kept.
    pub values_kept: u64,
    /// Bytes of the current workers' context heaps kept below the floors
    /// of pinned chunks (read when the snapshot is taken): after a phase
    /// that kept values, each worker leaves the bytes its chunk had used
    /// where they are (the values may own blocks among them) and reuses
    /// the rest of the chunk. The kept values' blocks with the holes
    /// between them; chunks such a phase filled are kept whole besides,
    /// counted in `context_committed` only.
    pub context_pinned: usize,
}

/// A pool of workers that run parallel phases over frozen heaps.
///
/// ```
/// let rt = frostheap::Runtime::builder().workers(2).build()?;
/// let squares = rt.map(0..100u64, |x| x * x)?;
/// assert_eq!(squares[7], 49);
/// # Ok::<(), frostheap::Error>(())
/// ```
pub struct Runtime {
    pub(super) control: &'static ControlBlock,
    pub(super) heaps: Vec<Heap>,
    pub(super) guards: Vec<Guarded>,
    /// Main thread only (a Mutex so `&self` methods can replace workers).
    pub(super) workers: Mutex<Vec<Worker>>,
    pub(super) n_workers: usize,
    pub(super) memory_budget: Option<usize>,
    pub(super) max_parked: usize,
    /// After a violation parked a worker: how long the phase may make no
    /// progress before its remaining workers are abandoned.
    pub(super) no_progress_timeout: core::time::Duration,
    pub(super) next_worker_id: AtomicUsize,
    pub(super) stats: Mutex<RuntimeStats>,
    pub(super) audit_log: Mutex<Vec<Violation>>,
    pub(super) bytes_total: AtomicUsize,
    pub(super) in_phase: AtomicBool,
    /// Serialises maps from different threads (one phase at a time).
    pub(super) phase_lock: Mutex<()>,
    /// Batch buffers kept across maps.
    pub(super) scratch: Mutex<Scratch>,
    /// Workers parked since the last phase, replaced when the next starts.
    pub(super) missing_workers: AtomicUsize,
}

impl Runtime {
    /// A snapshot of the statistics.
    pub fn stats(&self) -> RuntimeStats {
        let (mut context_committed, mut context_pinned) = (0, 0);
        for w in self.lock_workers().iter() {
            // SAFETY: a listed worker's context heap lives until its
            // thread exits, which happens only in `Runtime::drop` (see
            // `Worker::ctx_addr`); `committed` and `pinned` read atomics.
            let ctx = unsafe { &*(w.ctx_addr as *const ContextHeap) };
            context_committed += ctx.committed();
            context_pinned += ctx.pinned().1;
        }
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.context_committed = context_committed;
        s.skipped_workers = self.control.skipped.load(Ordering::Relaxed);
        s.context_pinned = context_pinned;
        s
    }

    /// Violations recorded under the audit policy (all phases since the
    /// runtime was built or [`Runtime::take_audit_log`] last took them):
    /// each worker's first 256 stores of a phase; `RuntimeStats::violations`
    /// counts every one.
    pub fn audit_log(&self) -> Vec<Violation> {
        self.audit_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the audit log ([`Runtime::audit_log`]), leaving it empty: a
    /// long-running program under the audit policy drains it as it reads
    /// it, where the log would otherwise grow with every violating store
    /// (about 0.5 KiB each: 46 MiB over 91,785 stores in a user's trial).
    pub fn take_audit_log(&self) -> Vec<Violation> {
        core::mem::take(&mut *self.audit_log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The protection backend in force.
    pub fn backend(&self) -> Backend {
        self.control.backend
    }

    /// The violation policy in force (the builder's, else
    /// `FROSTHEAP_ON_VIOLATION`, else `rollback`).
    pub fn on_violation(&self) -> crate::config::OnViolation {
        self.control.policy
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.n_workers
    }

    /// The guarded heaps.
    pub fn guarded(&self) -> &[Heap] {
        &self.heaps
    }

    pub(super) fn lock_workers(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add_worker(&self) -> Result<(), Error> {
        let id = self.next_worker_id.fetch_add(1, Ordering::Relaxed);
        let w = unguarded(|| worker::spawn(self.control, id, format!("frostheap-worker-{id}")))?;
        unguarded(|| self.lock_workers().push(w));
        Ok(())
    }

    /// Test hook (`__private::runtime::hold_worker_start`): worker `index`
    /// of this runtime starts no phase until `None` releases it.
    pub(crate) fn hold_worker_start(&self, index: Option<usize>) {
        worker::hold_worker_start(self.control, index);
    }

    /// Refuses calls from inside a task: phases do not nest.
    pub(super) fn enter_call(&self) {
        assert!(
            guard::current_worker().is_none(),
            "frostheap: a parallel call from inside a parallel task; nested phases are not supported"
        );
    }

    /// Fails when `[address, address + bytes)`, lent to tasks for
    /// mutation, lies in a heap this runtime freezes: O(1) per guarded
    /// heap, before any phase starts.
    pub(super) fn check_writable(&self, address: usize, bytes: usize) -> Result<(), Error> {
        if bytes == 0 || self.control.backend == Backend::Off {
            return Ok(());
        }
        let last = address + bytes - 1;
        match self
            .heaps
            .iter()
            .find(|h| h.owns(address as *const u8) || h.owns(last as *const u8))
        {
            Some(h) => Err(Error::NotWritable {
                heap: h.name().to_string(),
                address,
                bytes,
            }),
            None => Ok(()),
        }
    }

    /// Items in the next batch of a [`Bridge`](super::drive::Bridge) call:
    /// [`Runtime::next_batch_len`]'s, and without a memory budget at most
    /// [`BRIDGE_ITEMS_PER_WORKER`] items per worker and
    /// [`bridge_buffer_bytes`] of pulled items (`item_size` bytes each, at
    /// least one per worker), so that a bridged call streams as rayon's
    /// `par_bridge` does.
    ///
    /// Without that bound the whole iterator was pulled first, into one
    /// batch: the user's `par_bridge(BufReader::new(file).lines())` over a
    /// 100 MB file peaked at 201.6 MiB resident and kept 201.3 MiB after
    /// the call, the runtime alive (rayon: 3.0 MiB), in 1.34× rayon's time;
    /// now 7.3 MiB both, in 1.09× (`frostheap-bench`'s `bridge`, medians of
    /// 11 alternating rounds, per-round ratios). The pulled items and what
    /// they own are the memory a bridged call holds; bounding them bounds
    /// it, and the allocator reuses what one batch's items freed for the
    /// next's. A batch is a phase (a freeze and a thaw of the guarded
    /// heaps, a wake of the workers), so it is no smaller than it must be:
    /// see the constant for the measured trade-off.
    pub(super) fn next_bridge_batch_len(
        &self,
        prev: usize,
        per_item: usize,
        item_size: usize,
    ) -> usize {
        let n = self.next_batch_len(prev, per_item);
        if self.memory_budget.is_some() {
            return n;
        }
        let items = BRIDGE_ITEMS_PER_WORKER.saturating_mul(self.n_workers);
        let by_bytes = bridge_buffer_bytes() / item_size.max(1);
        n.min(items.min(by_bytes).max(self.n_workers))
    }

    /// Items in the next batch of a call (`usize::MAX`: all of them), after
    /// a batch that ran `prev` items (0: this is the first batch), with
    /// `per_item` the most one item of the call was measured to allocate.
    ///
    /// The first batch has one item per worker; later ones `budget /
    /// per_item` items, but at most twice as many as the batch before ran
    /// (as TCP's slow start grows its window). Without that bound, the
    /// second batch was sized from the first two items alone: with 300
    /// cheap items (16 B) before 100 of 1 MiB, an 8 MiB budget gave
    /// batches `[2, 398]` and a 100 MiB phase. Doubling keeps each batch,
    /// and so its chunks, within twice the one measured before it; what
    /// stops a batch whose items turn out dearer is the batch itself
    /// (`batch.rs`: it claims no more chunks past the budget).
    pub(super) fn next_batch_len(&self, prev: usize, per_item: usize) -> usize {
        let Some(budget) = self.memory_budget else {
            return usize::MAX;
        };
        if prev == 0 {
            return self.n_workers;
        }
        (budget / per_item.max(1)).clamp(1, prev.saturating_mul(2))
    }

    pub(super) fn record_batch(&self, n: usize) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        unguarded(|| {
            if s.batch_sizes.len() == 64 {
                s.batch_sizes.remove(0);
            }
            s.batch_sizes.push(n);
        });
    }

    /// Makes room for `n` more results. Large result vectors (at least
    /// [`RESULTS_IN_HEAP_MIN`] bytes) in global mode live in the main heap,
    /// like anything else main owns: its freed spans are reused without
    /// page faults, where fresh system memory would fault in every page on
    /// every map. Their pages are exempted from the freeze during the phase
    /// ([`Runtime::results_window`]). Smaller ones live in system memory.
    pub(super) fn reserve_results<R>(&self, out: &mut Vec<R>, n: usize) {
        let bytes = (out.len() + n).saturating_mul(core::mem::size_of::<R>());
        let main_guarded = crate::global::main_heap().is_some_and(|m| self.heaps.contains(&m));
        if bytes >= RESULTS_IN_HEAP_MIN && main_guarded && crate::global::on_main_route() {
            out.reserve(n);
        } else {
            unguarded(|| out.reserve(n));
        }
    }

    /// The pages of `[ptr, ptr + len)` if they lie in a guarded heap; they
    /// must fall inside one block whose pages belong to it alone, so
    /// exempting them from the freeze exposes nothing else.
    pub(super) fn results_window(&self, ptr: usize, len: usize) -> Option<(usize, usize)> {
        if len == 0 {
            return None;
        }
        let page = os::page_size();
        let heap = self.heaps.iter().find(|h| h.owns(ptr as *const u8))?;
        let (base, size) = heap.allocation_containing(ptr)?;
        let lo = ptr & !(page - 1);
        let hi = (ptr + len + page - 1) & !(page - 1);
        if lo >= base && hi <= base + size && base % page == 0 {
            Some((lo, hi - lo))
        } else {
            fatal(b"frostheap: result slots in a guarded heap share pages with other data\n")
        }
    }
}

impl Drop for Runtime {
    /// Stops and joins the workers, then gives back what they held: each
    /// worker's state (its mappings: deferred frees, undo log, stack copy)
    /// and, when no worker of this runtime was ever parked, the control
    /// block (a parked thread keeps pointers to both for good). A worker's
    /// context heap is retired by its thread as it exits (`context`).
    fn drop(&mut self) {
        let ctl = self.control;
        ctl.shutdown.store(true, Ordering::Release);
        os::futex_wake(&ctl.held, i32::MAX);
        ctl.epoch.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&ctl.epoch, i32::MAX);
        let workers = core::mem::take(&mut *self.lock_workers());
        for w in workers {
            w.join_and_release();
        }
        if ctl.parked.load(Ordering::Acquire) == 0 {
            // SAFETY: the block was leaked from a Box by the builder; every
            // worker that could refer to it has been joined, none is parked
            // (a parked worker is forgotten, never joined, and counted in
            // `parked`), and the runtime is being dropped.
            drop(unsafe { Box::from_raw(ctl as *const ControlBlock as *mut ControlBlock) });
        }
    }
}

/// Stops the process with a message, without allocating (used while a
/// heap may be frozen, where formatting a panic message could not).
pub(super) fn fatal(msg: &[u8]) -> ! {
    os::write_stderr(msg);
    std::process::abort()
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}
