//! The runtime: workers, phases, `map` / `for_each` / `scope`.
//!
//! **The phase protocol** (DESIGN.md): main calls `map`; the runtime
//! applies deferred frees, freezes every guarded heap, publishes the job
//! and wakes the workers (a futex on the phase epoch); workers claim items
//! in chunks from an atomic cursor and run them with their context heap as
//! the allocation target; when every worker has reported (or been parked
//! by the fault handler), main thaws, applies the frees the tasks made of
//! guarded memory, turns violation records into reports, replaces parked
//! workers, and returns results in input order or the first error.
//!
//! Everything a task legitimately writes lives outside guarded heaps: the
//! runtime allocates its control block, item and result slots inside
//! [`crate::unguarded`].
//!
//! **Memory-aware batching.** With a memory budget, `map` pulls its input
//! in batches: the first batch has one item per worker; every later batch
//! has `budget / bytes_per_item` items, where `bytes_per_item` is the
//! largest exact per-item consumption measured so far in this `map` from
//! the context heaps' bump counters (each `map` measures its own items).
//! An item larger than the budget runs alone.
//!
//! **Files**, top down: `builder` (configuration and start-up), `default`
//! (the process-wide runtime), `map` (the entry points main calls), `call`
//! (a parallel call: adapters and terminal operations), `source` (inputs
//! the workers index), `pipe` (adapters), `terminal` (collect, reduce,
//! any), `sort`, `drive` (batch after batch), `batch` (one batch as one
//! phase: the claim loop and the recovery after an error), `phase` (freeze,
//! run, thaw, violation records), `scratch` (buffers kept across calls),
//! `worker` (the threads).

mod batch;
mod builder;
mod call;
mod default;
mod drive;
mod map;
mod phase;
mod pipe;
mod scratch;
mod sort;
mod source;
mod terminal;
mod worker;

/// The sealed-trait pattern: public traits of the parallel API that only
/// this crate implements.
mod sealed {
    pub trait Sealed {}
}

/// The parallel API's types: what [`Runtime::par`] accepts and returns.
///
/// | input | items |
/// |---|---|
/// | `&[T]`, `&Vec<T>`, `&[T; N]`, `slice.iter()` | `&T` |
/// | `Vec<T>` | `T`, moved into the tasks |
/// | `&mut [T]`, `&mut Vec<T>`, `slice.iter_mut()` | `&mut T` (data must be writable: [`Runtime::for_each_mut`]) |
/// | `a..b`, `a..=b` over the integer types | the integers |
/// | `slice.chunks(k)`, `slice.chunks_exact(k)`, [`par::chunks`] | `&[T]` |
/// | [`par::chunks_mut`]`(slice, k)` | `&mut [T]` |
/// | [`Runtime::par_bridge`]`(any iterator)` | its items, pulled on main first |
///
/// Adapters ([`par::Par`]'s methods): `map`, `map_with_context`, `filter`,
/// `filter_map`, `flat_map_iter`, `inspect`, `fold`. Terminal operations:
/// `for_each`, `collect` (into `Vec`, in input order), `count`, `sum`,
/// `product`, `reduce`, `reduce_with`, `min`/`max`(`_by`, `_by_key`),
/// `any`, `all`. Sorts: [`Runtime::sort_unstable`] and
/// [`Runtime::sort`] with their `_by` and `_by_key` forms.
pub mod par {
    pub use super::call::{FromPar, Par};
    pub use super::drive::{Bridge, Drive, Indexed};
    pub use super::pipe::{
        Filter, FilterMap, FlatMapIter, Fold, Identity, Inspect, Map, MapWithContext, Pipe,
    };
    pub use super::source::{
        chunks, chunks_mut, ChunksMut, ChunksRef, IntoParSource, ParSource, RangeItems, SliceMut,
        SliceRef, VecItems,
    };
}

pub use default::{global_runtime, try_global_runtime};

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use allocator_api2::alloc::{AllocError, Allocator};

pub use builder::RuntimeBuilder;
pub use map::Scope;

use crate::context::{self, ContextHeap};
use crate::global::unguarded;
use crate::heap::Heap;
use crate::os;
use crate::region;
use crate::trap::{self, Backend, GuardSlot, OnViolation, Violation};
use crate::Error;
use scratch::Scratch;
use worker::{Worker, WorkerEnv};

/// Result vectors of at least this many bytes live in the main heap (in
/// global mode) with their pages exempted from the freeze.
pub const RESULTS_IN_HEAP_MIN: usize = 256 << 10;

/// Default cap on threads parked by the cancel policy; past it the process
/// stops with a message (each costs ≈ 40 KB and 6 mappings).
pub const DEFAULT_MAX_PARKED: usize = 1024;

/// A job as workers see it.
pub(crate) struct JobRef<'a>(&'a (dyn Fn(&WorkerEnv<'_>) + Sync));

/// The runtime's control block: what main and the workers share (system
/// memory, never moves, leaked so workers may hold it for `'static`).
pub(crate) struct ControlBlock {
    pub backend: Backend,
    pub policy: OnViolation,
    pub epoch: AtomicU32,
    pub job: AtomicPtr<JobRef<'static>>,
    pub remaining: AtomicU32,
    pub events: AtomicU32,
    pub parked: AtomicU32,
    pub shutdown: AtomicBool,
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
    /// Items larger than the memory budget (each ran alone).
    pub oversized_items: u64,
    /// Violations reported.
    pub violations: u64,
    /// Worker threads parked by the cancel policy (replaced).
    pub parked_workers: u64,
    /// The memory budget, if any.
    pub memory_budget: Option<usize>,
    /// Worker threads.
    pub workers: usize,
    /// The protection backend in force.
    pub backend: &'static str,
    /// Bytes committed now by the context heaps of the current workers
    /// (read when the snapshot is taken).
    pub context_committed: usize,
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
    control: &'static ControlBlock,
    heaps: Vec<Heap>,
    guards: Vec<&'static GuardSlot>,
    /// Main thread only (a Mutex so `&self` methods can replace workers).
    workers: Mutex<Vec<Worker>>,
    n_workers: usize,
    memory_budget: Option<usize>,
    max_parked: usize,
    next_worker_id: AtomicUsize,
    stats: Mutex<RuntimeStats>,
    audit_log: Mutex<Vec<Violation>>,
    bytes_total: AtomicUsize,
    in_phase: AtomicBool,
    /// Serialises maps from different threads (one phase at a time).
    phase_lock: Mutex<()>,
    /// Batch buffers kept across maps.
    scratch: Mutex<Scratch>,
    /// Workers parked since the last phase, replaced when the next starts.
    missing_workers: AtomicUsize,
}

/// A task's view of its worker: the item index and the context arena.
pub struct TaskContext<'a> {
    ctx: &'a ContextHeap,
    item_index: Option<usize>,
    worker: usize,
}

impl<'a> TaskContext<'a> {
    /// The worker's arena, as an allocator: bump allocation in the
    /// worker's context heap, freed from any thread.
    pub fn arena(&self) -> Arena<'a> {
        Arena { ctx: self.ctx }
    }
    /// Index of the input item (for `map` / `for_each`).
    pub fn item_index(&self) -> Option<usize> {
        self.item_index
    }
    /// Index of the worker running the task.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

/// A worker's context heap as an [`Allocator`]. Allocate only from the
/// task that received it; free from anywhere.
#[derive(Clone, Copy)]
pub struct Arena<'a> {
    ctx: &'a ContextHeap,
}

// SAFETY: blocks come from the context heap's bump allocator (valid for
// the layout until freed); deallocate routes to the owning chunk. Arena is
// !Send (it holds a reference to a !Sync-by-use owner API), so allocation
// happens on the owning worker only.
unsafe impl Allocator for Arena<'_> {
    fn allocate(
        &self,
        layout: core::alloc::Layout,
    ) -> Result<core::ptr::NonNull<[u8]>, AllocError> {
        // SAFETY: an Arena is handed only to tasks running on the owning
        // worker, and it is not Send.
        let p = unsafe { self.ctx.alloc(layout.size(), layout.align()) };
        let p = core::ptr::NonNull::new(p).ok_or(AllocError)?;
        Ok(core::ptr::NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, _layout: core::alloc::Layout) {
        // SAFETY: the Allocator contract: ptr is a live block of a context.
        unsafe { context::free(ptr.as_ptr()) }
    }
}

impl Runtime {
    /// Starts building a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> RuntimeStats {
        let context_committed = self
            .lock_workers()
            .iter()
            .map(|w| {
                // SAFETY: a listed worker's context heap lives until its
                // thread exits, which happens only in `Runtime::drop` (see
                // `Worker::ctx_addr`); `committed` reads an atomic.
                unsafe { (*(w.ctx_addr as *const ContextHeap)).committed() }
            })
            .sum();
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.context_committed = context_committed;
        s
    }

    /// Violations recorded under the audit policy (all phases so far).
    pub fn audit_log(&self) -> Vec<Violation> {
        self.audit_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The protection backend in force.
    pub fn backend(&self) -> Backend {
        self.control.backend
    }

    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.n_workers
    }

    /// The guarded heaps.
    pub fn guarded(&self) -> &[Heap] {
        &self.heaps
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_worker(&self) -> Result<(), Error> {
        let id = self.next_worker_id.fetch_add(1, Ordering::Relaxed);
        let w = unguarded(|| worker::spawn(self.control, id, format!("frostheap-worker-{id}")))?;
        unguarded(|| self.lock_workers().push(w));
        Ok(())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let ctl = self.control;
        ctl.shutdown.store(true, Ordering::Release);
        ctl.epoch.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&ctl.epoch, i32::MAX);
        for w in self.lock_workers().iter_mut() {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        for g in &self.guards {
            trap::unguard(g);
        }
    }
}

/// Stops the process with a message, without allocating (used while a
/// heap may be frozen, where formatting a panic message could not).
fn fatal(msg: &[u8]) -> ! {
    os::write_stderr(msg);
    std::process::abort()
}

/// Frees `p` through whichever allocator owns it (deferred frees).
fn free_anywhere(p: usize) {
    if let Some(r) = region::lookup(p) {
        if r.kind == region::RegionKind::Heap {
            // SAFETY: registered heap regions point at their live HeapInner;
            // p was a live block freed by a task (deferred).
            unsafe {
                (*(r.owner as *const crate::heap::HeapInner))
                    .core
                    .free(p as *mut u8)
            };
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}
