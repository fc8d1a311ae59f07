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
//! runtime allocates its shared state, item and result slots inside
//! [`crate::unguarded`].
//!
//! **Memory-aware batching.** With a memory budget, `map` pulls its input
//! in batches: the first batch has one item per worker; every later batch
//! has `budget / bytes_per_item` items, where `bytes_per_item` is the
//! largest exact per-item consumption measured so far in this `map` from
//! the context heaps' bump counters (each `map` measures its own items).
//! An item larger than the budget runs alone.

mod worker;

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::context::{self, ContextHeap};
use crate::global::unguarded;
use crate::heap::Heap;
use crate::os;
use crate::region;
use crate::trap::{self, Access, Backend, GuardSlot, OnViolation, Protect, Violation, AUDIT_RING};
use crate::Error;
use worker::{Worker, WorkerEnv};

/// Result vectors of at least this many bytes live in the main heap (in
/// global mode) with their pages exempted from the freeze.
pub const RESULTS_IN_HEAP_MIN: usize = 256 << 10;

/// Default cap on threads parked by the cancel policy; past it the process
/// stops with a message (each costs ≈ 40 KB and 6 mappings).
pub const DEFAULT_MAX_PARKED: usize = 1024;

/// A job as workers see it.
pub(crate) struct JobRef<'a>(&'a (dyn Fn(&WorkerEnv<'_>) + Sync));

/// State shared by main and the workers (system memory, never moves).
pub(crate) struct Shared {
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

/// Builds a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    workers: Option<usize>,
    guards: Vec<Heap>,
    guard_main: bool,
    protect: Option<Protect>,
    on_violation: Option<OnViolation>,
    memory_budget: Option<usize>,
    max_parked: usize,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            workers: None,
            guards: Vec::new(),
            guard_main: true,
            protect: None,
            on_violation: None,
            memory_budget: None,
            max_parked: DEFAULT_MAX_PARKED,
        }
    }
}

impl RuntimeBuilder {
    /// Number of worker threads (default: available parallelism).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Freezes `heap` during phases.
    pub fn guard(mut self, heap: &Heap) -> Self {
        self.guards.push(heap.clone());
        self
    }

    /// Whether to guard the main heap when `Global` is the global
    /// allocator (default: yes).
    pub fn guard_main_heap(mut self, yes: bool) -> Self {
        self.guard_main = yes;
        self
    }

    /// The protection backend (default: `FROSTHEAP_PROTECT`, else `auto`).
    pub fn protect(mut self, protect: Protect) -> Self {
        self.protect = Some(protect);
        self
    }

    /// The violation policy (default: `FROSTHEAP_ON_VIOLATION`, else
    /// `cancel`).
    pub fn on_violation(mut self, policy: OnViolation) -> Self {
        self.on_violation = Some(policy);
        self
    }

    /// Sizes `map` batches so the memory of in-flight items stays within
    /// `bytes`.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Parked threads tolerated before the process stops (default 1024).
    pub fn max_parked(mut self, n: usize) -> Self {
        self.max_parked = n;
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Runtime, Error> {
        let env = crate::config::from_env().map_err(|e| Error::InvalidConfig {
            name: e.var,
            value: String::from_utf8_lossy(e.value).into_owned(),
            expected: e.expected.to_string(),
        })?;
        let workers = match self.workers {
            Some(0) => return Err(Error::invalid("workers", 0, "at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        if self.memory_budget == Some(0) {
            return Err(Error::invalid(
                "memory_budget",
                0,
                "a budget of at least 1 byte",
            ));
        }
        if env.track_allocs {
            // Global mode turned tracking on at the first allocation; for
            // explicit heaps it starts here (blocks allocated earlier have
            // no recorded site).
            crate::track::enable();
        }
        let protect = self.protect.unwrap_or(env.protect);
        let policy = self.on_violation.unwrap_or(env.on_violation);
        let backend = trap::resolve(protect)?;
        if backend != Backend::Off {
            trap::install()?;
        }
        unguarded(|| {
            let mut heaps = self.guards;
            if self.guard_main {
                if let Some(main) = crate::main_heap() {
                    if !heaps.contains(&main) {
                        heaps.push(main);
                    }
                }
            }
            let mut guards = Vec::with_capacity(heaps.len());
            if backend != Backend::Off {
                for h in &heaps {
                    guards.push(trap::guard(h.inner(), backend)?);
                }
            }
            let shared: &'static Shared = Box::leak(Box::new(Shared {
                backend,
                policy,
                epoch: AtomicU32::new(0),
                job: AtomicPtr::new(core::ptr::null_mut()),
                remaining: AtomicU32::new(0),
                events: AtomicU32::new(0),
                parked: AtomicU32::new(0),
                shutdown: AtomicBool::new(false),
            }));
            let rt = Runtime {
                shared,
                heaps,
                guards,
                workers: Mutex::new(Vec::with_capacity(workers)),
                n_workers: workers,
                memory_budget: self.memory_budget,
                max_parked: self.max_parked,
                next_worker_id: AtomicUsize::new(0),
                stats: Mutex::new(RuntimeStats {
                    memory_budget: self.memory_budget,
                    workers,
                    backend: backend.name(),
                    ..RuntimeStats::default()
                }),
                audit_log: Mutex::new(Vec::new()),
                bytes_total: AtomicUsize::new(0),
                in_phase: AtomicBool::new(false),
                phase_lock: Mutex::new(()),
                scratch: Mutex::new(Scratch::default()),
                missing_workers: AtomicUsize::new(0),
            };
            for _ in 0..workers {
                rt.add_worker()?;
            }
            Ok(rt)
        })
    }
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
    shared: &'static Shared,
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
fn progress_bytes(n: usize, workers: usize) -> usize {
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
/// calls of `f` and hoists the loads of `src` and `f` out of the loop
/// (inlined into the job closure, each was reloaded from the stack through
/// a captured reference on every item: a 10 M-item map of a cheap function
/// ran 1.2× slower per item than rayon's loop).
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
        trap::set_current_item(idx);
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
unsafe trait Source: Sync {
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
struct OwnedItems<T>(*mut T);

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
struct BorrowedItems<'a, T>(&'a [T]);

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

/// Outcome of one phase.
struct PhaseResult {
    violations: Vec<Violation>,
    /// Items whose tasks were running on workers parked in this phase.
    parked_items: Vec<usize>,
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
        self.shared.backend
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
        let w = unguarded(|| worker::spawn(self.shared, id, format!("frostheap-worker-{id}")))?;
        unguarded(|| self.lock_workers().push(w));
        Ok(())
    }

    /// Maps `f` over `items` in parallel; results in input order.
    ///
    /// `items` is any `IntoIterator` of `Send` items — a `Vec` (items moved
    /// into tasks), a slice by reference (`&T` items), a range, a
    /// streaming iterator. The first panic or violation becomes the error;
    /// the other tasks finish or are skipped, and the runtime stays usable.
    ///
    /// Main pulls the items out of the iterator (into a buffer of the
    /// runtime's) before the workers start on them: a serial step, cheap
    /// next to real work but visible on millions of tiny items. For a
    /// slice, [`Runtime::map_slice`] skips it.
    pub fn map<I, F, R>(&self, items: I, f: F) -> Result<Vec<R>, Error>
    where
        I: IntoIterator,
        I::Item: Send,
        F: Fn(I::Item) -> R + Sync,
        R: Send,
    {
        self.map_with(items, |_, x| f(x))
    }

    /// [`Runtime::map`] whose closure also receives the [`TaskContext`]
    /// (item index, worker, and the arena allocator).
    pub fn map_with<I, F, R>(&self, items: I, f: F) -> Result<Vec<R>, Error>
    where
        I: IntoIterator,
        I::Item: Send,
        F: Fn(&TaskContext<'_>, I::Item) -> R + Sync,
        R: Send,
    {
        assert!(
            trap::current_worker().is_null(),
            "frostheap: Runtime::map called from inside a parallel task; nested phases are not supported"
        );
        // One phase at a time per runtime; other threads wait their turn.
        let _turn = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut iter = items.into_iter();
        let mut out: Vec<R> = unguarded(Vec::new);
        let mut base = 0usize;
        let mut first = true;
        // The largest bytes one item of *this* map consumed: batches are
        // sized from the items of this map, not from earlier maps.
        let mut per_item = 0usize;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let batch_len = self.next_batch_len(first, per_item);
            first = false;
            // Pull the batch into the runtime's scratch buffer (system
            // memory, kept across maps: a 10 M-item map does not fault in
            // 80 MB of fresh pages every time). Items are produced inside
            // `unguarded`, so memory they own is not frozen and tasks may
            // write it.
            let n = unguarded(|| {
                let hint = iter.size_hint().0.min(batch_len);
                let mut cap = scratch.items.reserve::<I::Item>(hint.max(64));
                let mut n = 0usize;
                loop {
                    // A tight inner loop over the room known to be there (no
                    // capacity check per item, so copies of plain items
                    // vectorise), then grow if the iterator has more.
                    let room = cap.min(batch_len) - n;
                    let dst = scratch.items.ptr::<I::Item>();
                    // Internal iteration (`for_each`): adapters and slice
                    // iterators drive it with their own tight loops.
                    let mut filled = 0usize;
                    iter.by_ref().take(room).for_each(|x| {
                        // SAFETY: n + filled < cap, inside the scratch
                        // buffer, which is aligned for any T of alignment up
                        // to a page.
                        unsafe { dst.add(n + filled).write(x) };
                        filled += 1;
                    });
                    n += filled;
                    if filled < room || n == batch_len {
                        break n;
                    }
                    cap = scratch.items.grow::<I::Item>(n, n * 2);
                }
            });
            if n == 0 {
                break;
            }
            self.record_batch(n);
            self.reserve_results(&mut out, n);
            let progress = scratch
                .state
                .zeroed_bytes(progress_bytes(n, self.n_workers));
            let items = OwnedItems(scratch.items.ptr::<I::Item>());
            // SAFETY: `items` holds n initialised items that run_batch takes
            // ownership of; `progress` is zeroed and large enough for n
            // items; both stay valid and unaliased until run_batch returns
            // (we hold the scratch lock).
            let result =
                unsafe { self.run_batch(&items, progress, n, base, &f, &mut out, &mut per_item) };
            base += n;
            result?;
            if batch_len == usize::MAX {
                break;
            }
        }
        Ok(out)
    }

    /// Maps `f` over the elements of a slice, by reference, in parallel;
    /// results in input order.
    ///
    /// The same as `map(items, f)` on the slice, without its one serial
    /// step: [`Runtime::map`] takes any iterator, so main first collects
    /// the items (here, one reference per element) into a buffer before
    /// the workers start. A slice is indexed directly, so the workers
    /// start at once and main only waits, as with rayon's `par_iter` on a
    /// slice. On a 10 M-element map of a cheap function this is most of
    /// the difference between the two (`parmap` benchmark, case (a)).
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let input: Vec<u64> = (0..1000).collect();
    /// let squares = rt.map_slice(&input, |x| x * x)?;
    /// assert_eq!(squares[999], 999 * 999);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn map_slice<'a, T, F, R>(&self, items: &'a [T], f: F) -> Result<Vec<R>, Error>
    where
        T: Sync,
        F: Fn(&'a T) -> R + Sync,
        R: Send,
    {
        self.map_slice_with(items, |_, x| f(x))
    }

    /// [`Runtime::map_slice`] whose closure also receives the
    /// [`TaskContext`]. With a memory budget the slice is run in batches
    /// sized as [`Runtime::map`] sizes them.
    pub fn map_slice_with<'a, T, F, R>(&self, items: &'a [T], f: F) -> Result<Vec<R>, Error>
    where
        T: Sync,
        F: Fn(&TaskContext<'_>, &'a T) -> R + Sync,
        R: Send,
    {
        assert!(
            trap::current_worker().is_null(),
            "frostheap: Runtime::map_slice called from inside a parallel task; nested phases are not supported"
        );
        let _turn = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<R> = unguarded(Vec::new);
        let mut base = 0usize;
        let mut per_item = 0usize;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        while base < items.len() {
            let n = self
                .next_batch_len(base == 0, per_item)
                .min(items.len() - base);
            self.record_batch(n);
            self.reserve_results(&mut out, n);
            let progress = scratch
                .state
                .zeroed_bytes(progress_bytes(n, self.n_workers));
            let batch = BorrowedItems(&items[base..base + n]);
            // SAFETY: `batch` has n items; `progress` is zeroed and large
            // enough for n items and stays ours until run_batch returns.
            let result =
                unsafe { self.run_batch(&batch, progress, n, base, &f, &mut out, &mut per_item) };
            base += n;
            result?;
        }
        Ok(out)
    }

    /// Runs `f` on every item in parallel.
    pub fn for_each<I, F>(&self, items: I, f: F) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Send,
        F: Fn(I::Item) + Sync,
    {
        self.map(items, f).map(|_| ())
    }

    /// Runs heterogeneous tasks in one phase: `scope.spawn(task)` for each.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let total = frostheap::Shared::new(AtomicU64::new(0));
    /// rt.scope(|s| {
    ///     s.spawn(|| { total.fetch_add(1, Ordering::Relaxed); });
    ///     s.spawn(|| { total.fetch_add(41, Ordering::Relaxed); });
    /// })?;
    /// assert_eq!(total.load(Ordering::Relaxed), 42);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn scope<'s, F>(&self, build: F) -> Result<(), Error>
    where
        F: FnOnce(&mut Scope<'s>),
    {
        let mut scope = Scope {
            tasks: unguarded(Vec::new),
        };
        build(&mut scope);
        let tasks = scope.tasks;
        self.map(tasks, |task| task()).map(|_| ())
    }

    /// Runs two closures in parallel and returns both results.
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> Result<(RA, RB), Error>
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        enum Either<A, B> {
            A(A),
            B(B),
        }
        let tasks = unguarded(|| vec![Either::A(a), Either::B(b)]);
        let mut out = self.map(tasks, |t| match t {
            Either::A(a) => Either::A(a()),
            Either::B(b) => Either::B(b()),
        })?;
        let (Some(Either::B(rb)), Some(Either::A(ra))) = (out.pop(), out.pop()) else {
            unreachable!("join: map returns results in input order")
        };
        Ok((ra, rb))
    }

    fn next_batch_len(&self, first: bool, per_item: usize) -> usize {
        let Some(budget) = self.memory_budget else {
            return usize::MAX;
        };
        if first {
            return self.n_workers;
        }
        (budget / per_item.max(1)).max(1)
    }

    fn record_batch(&self, n: usize) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        unguarded(|| {
            if s.batch_sizes.len() == 64 {
                s.batch_sizes.remove(0);
            }
            s.batch_sizes.push(n);
        });
    }

    /// Runs one batch as one phase.
    ///
    /// Workers claim runs of chunks from an atomic cursor (guided: a share
    /// of what is left). The only
    /// per-item bookkeeping is the store of the item index into the
    /// worker's slot (which violation reports and parked-item accounting
    /// need); completion is published once per chunk into `progress`, so
    /// the error path can still tell, for every item, whether its result
    /// was written, its item consumed, or neither.
    ///
    /// # Safety
    /// 1. `src` has `n` items, which this call takes (ownership of owned
    ///    items passes to it); `progress` points to at least
    ///    [`progress_bytes`]`(n, self.n_workers)` zeroed bytes, aligned
    ///    for `AtomicU32`; both stay valid until it returns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_batch<S, R, F>(
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
        // Results are written straight into `out`'s spare capacity (the
        // caller reserved `n` slots): no second buffer and no copy.
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
        let cursor = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        let panic: Mutex<Option<(usize, String)>> = Mutex::new(None);
        let max_item = AtomicUsize::new(0);
        let sum_bytes = AtomicUsize::new(0);
        let oversized = AtomicUsize::new(0);
        let budget = self.memory_budget.unwrap_or(usize::MAX);
        // Batches are sized from exact per-item bytes, so a budgeted map
        // measures every item (two counter reads around each task); other
        // maps measure per chunk, and stop at chunk ends after a panic.
        let per_item_bytes = self.memory_budget.is_some();

        // The job captures everything by value (references and copies),
        // so the per-item loop reads each through one pointer, not two.
        let (cursor, cancel, panic_slot) = (&cursor, &cancel, &panic);
        let (max_item, sum_bytes, oversized) = (&max_item, &sum_bytes, &oversized);
        let job_results = results;
        let workers = self.n_workers.max(1);
        let job = move |env: &WorkerEnv<'_>| loop {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            // Guided claims, in chunks: a worker takes a share of what is
            // left (1 / (2 × workers) of the remaining chunks, at least
            // one), so it starts on a long contiguous run and the tail is
            // split finely for balance. Claiming fixed 4096-item chunks in
            // turn made a 10 M-item map of a cheap function run 6% slower.
            let mut first = cursor.load(Ordering::Relaxed);
            let claimed = loop {
                if first >= n_chunks {
                    return;
                }
                let k = ((n_chunks - first) / (2 * workers)).max(1);
                match cursor.compare_exchange_weak(
                    first,
                    first + k,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break k,
                    Err(now) => first = now,
                }
            };
            // Tallies of the claim, published once: no contended
            // read-modify-write per chunk or item.
            let (mut claim_max, mut claim_sum, mut claim_oversized) = (0usize, 0usize, 0usize);
            // Indexing by `unit` is the point: the chunk's items, result
            // slots and progress word share it.
            #[allow(clippy::needless_range_loop)]
            for unit in first..first + claimed {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let start = unit * chunk;
                let end = (start + chunk).min(n);
                let chunk_before = env.ctx.allocated();
                let (ctx, worker) = (env.ctx, env.index);
                // One task per item, in one unwinding scope per chunk: a
                // panic ends the chunk, and the worker's slot says which
                // item it was (its current item is stored before each task, for
                // violation reports and parked-item accounting too).
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let (mut chunk_max, mut chunk_oversized) = (0usize, 0usize);
                    if !per_item_bytes {
                        let c = Chunk {
                            ctx,
                            worker,
                            base,
                            start,
                            end,
                        };
                        // SAFETY: [start, end) was claimed by this worker
                        // alone through the cursor (each item taken once),
                        // and its result slots lie in the reserved spare
                        // capacity.
                        unsafe { run_chunk(&c, src, f, job_results.0) };
                        return (end, 0, 0);
                    }
                    for i in start..end {
                        trap::set_current_item(base + i);
                        let tc = TaskContext {
                            ctx,
                            item_index: Some(base + i),
                            worker,
                        };
                        let before = ctx.allocated();
                        // SAFETY: as above.
                        let r = f(&tc, unsafe { src.take(i) });
                        let used = ctx.allocated() - before;
                        chunk_max = chunk_max.max(used);
                        chunk_oversized += usize::from(used > budget);
                        // SAFETY: as above.
                        unsafe { job_results.get(i).write(r) };
                        if cancel.load(Ordering::Relaxed) {
                            return (i + 1, chunk_max, chunk_oversized);
                        }
                    }
                    (end, chunk_max, chunk_oversized)
                }));
                let chunk_sum = env.ctx.allocated() - chunk_before;
                claim_sum += chunk_sum;
                match run {
                    Ok((done, max, over)) => {
                        // Results [start, done) are written.
                        progress[unit].store((done - start) as u32, Ordering::Release);
                        // Without a budget, items are measured per chunk.
                        claim_max = claim_max.max(if per_item_bytes {
                            max
                        } else {
                            chunk_sum.div_ceil(done - start)
                        });
                        claim_oversized += over;
                    }
                    Err(payload) => {
                        // The task of the item in the slot unwound with its
                        // item: results before it are written, it is
                        // consumed.
                        let i = trap::current_item() - base;
                        progress[unit].store((i - start) as u32 | CONSUMED, Ordering::Release);
                        let msg = panic_message(&*payload);
                        let mut p = panic_slot.lock().unwrap_or_else(|e| e.into_inner());
                        if p.is_none() {
                            *p = Some((base + i, msg));
                        }
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
            trap::set_current_item(usize::MAX);
            max_item.fetch_max(claim_max, Ordering::Relaxed);
            sum_bytes.fetch_add(claim_sum, Ordering::Relaxed);
            if claim_oversized > 0 {
                oversized.fetch_add(claim_oversized, Ordering::Relaxed);
            }
        };
        // The result slots are written by workers: exempt them from the
        // freeze when they live in a guarded heap (see reserve_results).
        let window = self.results_window(results.get(0) as usize, n * core::mem::size_of::<R>());
        let phase = self.run_phase(&job, window);

        // Collect: results in order, or drop what was made and report.
        let mut error = phase
            .violations
            .first()
            .cloned()
            .map(|v| Error::Violation(Box::new(v)));
        if error.is_none() {
            if let Some((i, message)) = panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
                error = Some(Error::TaskPanicked {
                    item_index: Some(i),
                    message,
                });
            }
        }
        {
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.items += n as u64;
            *per_item = (*per_item).max(max_item.load(Ordering::Relaxed));
            s.bytes_per_item = s.bytes_per_item.max(max_item.load(Ordering::Relaxed));
            let total = self
                .bytes_total
                .fetch_add(sum_bytes.load(Ordering::Relaxed), Ordering::Relaxed)
                + sum_bytes.load(Ordering::Relaxed);
            s.mean_bytes_per_item = total / (s.items.max(1) as usize);
            s.peak_phase_bytes = s.peak_phase_bytes.max(sum_bytes.load(Ordering::Relaxed));
            s.oversized_items += oversized.load(Ordering::Relaxed) as u64;
        }
        if error.is_none() {
            // SAFETY: no error means every chunk ran to its end: slots
            // [len, len + n) are initialised.
            unsafe { out.set_len(out.len() + n) };
            return Ok(());
        }
        for (k, p) in progress.iter().enumerate() {
            let (lo, hi) = (k * chunk, ((k + 1) * chunk).min(n));
            // A parked worker never published its chunk: the item it was
            // running lives on that parked thread's stack now (never
            // dropped twice), and the items before it in the chunk are done.
            let (done, consumed) = match phase
                .parked_items
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
                // written, and `out` does not own them (its length was not
                // advanced).
                unsafe { core::ptr::drop_in_place(results.get(i)) };
            }
            for i in lo + done + usize::from(consumed)..hi {
                // SAFETY: these items were never taken: their chunk was
                // not claimed, or its worker stopped before them.
                unsafe { src.drop_untaken(i) };
            }
        }
        Err(error.expect("checked above"))
    }

    /// Makes room for `n` more results. Large result vectors (at least
    /// [`RESULTS_IN_HEAP_MIN`] bytes) in global mode live in the main heap,
    /// like anything else main owns: its freed spans are reused without
    /// page faults, where fresh system memory would fault in every page on
    /// every map. Their pages are exempted from the freeze during the phase
    /// ([`Runtime::results_window`]). Smaller ones live in system memory.
    fn reserve_results<R>(&self, out: &mut Vec<R>, n: usize) {
        let bytes = (out.len() + n).saturating_mul(core::mem::size_of::<R>());
        let main_guarded = crate::main_heap().is_some_and(|m| self.heaps.contains(&m));
        if bytes >= RESULTS_IN_HEAP_MIN && main_guarded && crate::global::on_main_route() {
            out.reserve(n);
        } else {
            unguarded(|| out.reserve(n));
        }
    }

    /// The pages of `[ptr, ptr + len)` if they lie in a guarded heap; they
    /// must fall inside one block whose pages belong to it alone, so
    /// exempting them from the freeze exposes nothing else.
    fn results_window(&self, ptr: usize, len: usize) -> Option<(usize, usize)> {
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

    /// The phase protocol around one job.
    fn run_phase(
        &self,
        job: &(dyn Fn(&WorkerEnv<'_>) + Sync),
        window: Option<(usize, usize)>,
    ) -> PhaseResult {
        assert!(
            !self.in_phase.swap(true, Ordering::AcqRel),
            "frostheap: a phase was started from inside a phase (nested map/scope on the same runtime)"
        );
        // Replace workers parked by earlier violations (before the freeze:
        // spawning a thread writes memory that may be guarded).
        for _ in 0..self.missing_workers.swap(0, Ordering::AcqRel) {
            if let Err(e) = self.add_worker() {
                os::write_stderr(
                    format!("frostheap: cannot start a replacement worker: {e}\n").as_bytes(),
                );
            }
        }
        let sh = self.shared;
        let mprotect = sh.backend == Backend::Mprotect;
        // Everything main needs from `self` is read before the freeze: the
        // Runtime value itself may live in a guarded heap, and main must
        // not write frozen memory (it would wait for its own thaw).
        let parked_before = sh.parked.load(Ordering::Acquire);
        let active = self.lock_workers().len() as u32;
        // Freeze. Order matters twice over:
        // - a guarded heap's own bookkeeping may live in another guarded
        //   heap (a Heap built on main lives in the main heap), so every
        //   core is written (marked) before any heap is protected;
        // - the guard flags are raised before the first mprotect, so a
        //   bystander thread that faults on a freshly protected page always
        //   finds its heap marked frozen and waits for the thaw.
        if mprotect {
            for h in &self.heaps {
                h.inner().core.freeze_mark();
            }
        }
        for g in &self.guards {
            g.frozen_end
                .store(g.end.load(Ordering::Relaxed), Ordering::Release);
            g.frozen.store(true, Ordering::Release);
            if mprotect {
                trap::MPROTECT_FROZEN.fetch_add(1, Ordering::AcqRel);
            }
        }
        if mprotect {
            for (g, h) in self.guards.iter().zip(&self.heaps) {
                match h.inner().core.protect_committed(true) {
                    Ok(len) => g
                        .frozen_end
                        .store(g.start.load(Ordering::Relaxed) + len, Ordering::Release),
                    Err(_) => fatal(b"frostheap: mprotect failed while freezing a guarded heap\n"),
                }
            }
        }
        if let Some((lo, len)) = window {
            // SAFETY: the window is the result slots' own pages, inside one
            // block of a guarded heap (checked by results_window).
            let r = unsafe {
                match sh.backend {
                    Backend::Mprotect => os::protect(lo as *mut u8, len, os::Access::ReadWrite),
                    Backend::Pkey(_) => os::pkey_tag(lo as *mut u8, len, 0, os::Access::ReadWrite),
                    Backend::Off => Ok(()),
                }
            };
            if r.is_err() {
                fatal(b"frostheap: cannot exempt the result slots from the freeze\n");
            }
        }
        let job_ref = JobRef(job);
        sh.remaining.store(active, Ordering::Release);
        // SAFETY (lifetime): job_ref outlives the phase: we wait below
        // until every worker has finished or been parked.
        sh.job.store(
            &job_ref as *const JobRef<'_> as *mut JobRef<'static>,
            Ordering::Release,
        );
        sh.epoch.fetch_add(1, Ordering::AcqRel);
        // Wake one sleeping worker; each worker that starts the phase wakes
        // two more (a tree). Waking them all from here let the scheduler
        // queue them on the same idle CPU (it saw that CPU idle for each
        // wakee in turn), where they shared it until the balancer split
        // them: on 2 CPUs, half of the 10 M-item maps ran 10-70% slower.
        os::futex_wake(&sh.epoch, 1);
        loop {
            let ev = sh.events.load(Ordering::Acquire);
            let newly_parked = sh.parked.load(Ordering::Acquire) - parked_before;
            if sh.remaining.load(Ordering::Acquire) <= newly_parked {
                break;
            }
            os::wait_while_eq(&sh.events, ev);
        }
        sh.job.store(core::ptr::null_mut(), Ordering::Release);
        // Thaw, mirroring the freeze: open every heap (no writes), then
        // clear the marks, and only then lower the guard flags (a bystander
        // that faulted while frozen is still waiting; one that faults now
        // cannot, the pages are writable). Nothing here allocates.
        let mut thawed = [0usize; trap::MAX_GUARDED];
        if mprotect {
            for (i, h) in self.heaps.iter().enumerate() {
                match h.inner().core.protect_committed(false) {
                    Ok(len) => thawed[i] = len,
                    Err(_) => fatal(b"frostheap: mprotect failed while thawing a guarded heap\n"),
                }
            }
            for (i, h) in self.heaps.iter().enumerate() {
                if h.inner().core.thaw_unmark(thawed[i]).is_err() {
                    fatal(b"frostheap: mprotect failed while thawing a guarded heap\n");
                }
            }
        }
        if let (Some((lo, len)), Backend::Pkey(key)) = (window, sh.backend) {
            // SAFETY: as when exempting: the result slots' own pages.
            if unsafe { os::pkey_tag(lo as *mut u8, len, key, os::Access::ReadWrite) }.is_err() {
                fatal(b"frostheap: cannot re-tag the result slots after the phase\n");
            }
        }
        for g in &self.guards {
            g.frozen.store(false, Ordering::Release);
            if mprotect {
                trap::MPROTECT_FROZEN.fetch_sub(1, Ordering::AcqRel);
            }
        }
        trap::THAW_EPOCH.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&trap::THAW_EPOCH, i32::MAX);
        self.in_phase.store(false, Ordering::Release);
        // Deferred frees, now that the heaps are writable again.
        for w in self.lock_workers().iter() {
            w.slot.deferred.drain(free_anywhere);
        }
        let result = self.collect_violations();
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.phases += 1;
        s.violations += result.violations.len() as u64;
        result
    }

    fn collect_violations(&self) -> PhaseResult {
        let (backend, policy) = (self.shared.backend, self.shared.policy);
        // One report from one record of worker `w`.
        let report = |w: &Worker, addr: usize, ip: usize, tid: u32, item: usize, access: Access| {
            let name = w
                .thread
                .as_ref()
                .and_then(|t| t.thread().name().map(str::to_string));
            Violation::from_raw(addr, ip, tid, name, item, access, backend, policy)
        };
        let mut violations = Vec::new();
        let mut parked_items = Vec::new();
        let mut workers = self.lock_workers();
        for w in workers.iter() {
            // Audit records: the worker's ring since the last phase.
            let count = w.slot.audit_count.swap(0, Ordering::AcqRel) as usize;
            for rec in w.slot.audit.iter().take(count.min(AUDIT_RING)) {
                let v = report(
                    w,
                    rec.addr.load(Ordering::Relaxed),
                    rec.ip.load(Ordering::Relaxed),
                    rec.tid.load(Ordering::Relaxed),
                    rec.item.load(Ordering::Relaxed),
                    Access::Write,
                );
                self.audit_log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(v);
            }
            // A kernel write found by the io helpers (the task got an error).
            let r = &w.slot.kernel;
            if r.state.swap(0, Ordering::AcqRel) == 1 {
                let (addr, tid, item) = (
                    r.addr.load(Ordering::Relaxed),
                    r.tid.load(Ordering::Relaxed),
                    r.item.load(Ordering::Relaxed),
                );
                violations.push(report(w, addr, 0, tid, item, Access::KernelWrite));
            }
        }
        // Cancel records: parked workers not yet reported.
        let mut replaced = 0;
        for w in workers.iter_mut() {
            if w.reported || !w.slot.is_parked.load(Ordering::Acquire) {
                continue;
            }
            w.reported = true;
            replaced += 1;
            let r = &w.slot.record;
            let item = r.item.load(Ordering::Relaxed);
            parked_items.push(item);
            let (addr, ip, tid) = (
                r.addr.load(Ordering::Relaxed),
                r.ip.load(Ordering::Relaxed),
                r.tid.load(Ordering::Relaxed),
            );
            violations.push(report(w, addr, ip, tid, item, Access::Write));
            // The parked thread never finishes: forget its handle.
            if let Some(t) = w.thread.take() {
                core::mem::forget(t);
            }
        }
        if replaced > 0 {
            workers.retain(|w| !w.reported);
            drop(workers);
            let parked = self.shared.parked.load(Ordering::Acquire) as usize;
            if parked > self.max_parked {
                let msg = format!(
                    "frostheap: {parked} worker threads are parked after violations (the cap is {}); stopping the process. \
                     Fix the tasks that write frozen memory, or raise Runtime::builder().max_parked(..).\n",
                    self.max_parked
                );
                os::write_stderr(msg.as_bytes());
                std::process::abort();
            }
            // Replacements start at the next phase, not here: the caller
            // gets the error as soon as the phase is over.
            self.missing_workers.fetch_add(replaced, Ordering::AcqRel);
            let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.parked_workers += replaced as u64;
        }
        PhaseResult {
            violations,
            parked_items,
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let sh = self.shared;
        sh.shutdown.store(true, Ordering::Release);
        sh.epoch.fetch_add(1, Ordering::AcqRel);
        os::futex_wake(&sh.epoch, i32::MAX);
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

/// A buffer in system memory that a runtime keeps across maps: mapped
/// directly (page-aligned, huge-page advised), grown by doubling, never
/// shrunk until the runtime is dropped. Holding the runtime's scratch lock
/// gives exclusive use.
#[derive(Default)]
struct ScratchBuf {
    ptr: usize,
    bytes: usize,
}

impl ScratchBuf {
    /// The buffer as `*mut T` (page-aligned: fits any `T` aligned to at
    /// most a page).
    fn ptr<T>(&self) -> *mut T {
        debug_assert!(
            core::mem::align_of::<T>() <= os::page_size(),
            "scratch item over-aligned"
        );
        if core::mem::size_of::<T>() == 0 {
            return core::ptr::NonNull::dangling().as_ptr();
        }
        self.ptr as *mut T
    }

    /// Makes room for `items` values of `T`; returns the capacity in items.
    fn reserve<T>(&mut self, items: usize) -> usize {
        let size = core::mem::size_of::<T>();
        if size == 0 {
            return usize::MAX;
        }
        let need = items.saturating_mul(size);
        if need > self.bytes {
            self.remap(need, 0);
        }
        self.bytes / size
    }

    /// Grows to hold `items` values of `T`, keeping the first `keep`.
    fn grow<T>(&mut self, keep: usize, items: usize) -> usize {
        let size = core::mem::size_of::<T>();
        if size == 0 {
            return usize::MAX;
        }
        self.remap(items.max(64).saturating_mul(size), keep * size);
        self.bytes / size
    }

    /// `n` zeroed bytes.
    fn zeroed_bytes(&mut self, n: usize) -> *mut u8 {
        if n > self.bytes {
            self.remap(n, 0);
        }
        // SAFETY: n <= bytes, inside our mapping.
        unsafe { core::ptr::write_bytes(self.ptr as *mut u8, 0, n) };
        self.ptr as *mut u8
    }

    fn remap(&mut self, need: usize, keep: usize) {
        let bytes = crate::region::round_up(need.max(1 << 16), 1 << 21);
        let new = match os::map_table(bytes) {
            Ok(p) => p,
            Err(_) => fatal(
                b"frostheap: cannot map the runtime's scratch buffer (out of address space)\n",
            ),
        };
        // SAFETY: a fresh mapping of `bytes`; THP advice is a hint.
        let _ = unsafe { os::advise_huge_pages(new, bytes) };
        if self.ptr != 0 {
            // SAFETY: `keep` bytes are initialised in the old buffer and fit
            // in the new one (need >= keep); the old mapping is ours.
            unsafe {
                core::ptr::copy_nonoverlapping(self.ptr as *const u8, new, keep.min(bytes));
                os::unmap(self.ptr as *mut u8, self.bytes);
            }
        }
        self.ptr = new as usize;
        self.bytes = bytes;
    }
}

impl Drop for ScratchBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: mapped by remap with this length; nothing uses it now.
            unsafe { os::unmap(self.ptr as *mut u8, self.bytes) };
        }
    }
}

/// The runtime's scratch buffers: batch items and per-item states.
#[derive(Default)]
struct Scratch {
    items: ScratchBuf,
    state: ScratchBuf,
}

/// Heterogeneous tasks for [`Runtime::scope`].
pub struct Scope<'s> {
    tasks: Vec<Box<dyn FnOnce() + Send + 's>>,
}

impl<'s> Scope<'s> {
    /// Adds a task to the phase.
    pub fn spawn<F: FnOnce() + Send + 's>(&mut self, task: F) {
        let b: Box<dyn FnOnce() + Send + 's> = unguarded(|| Box::new(task));
        unguarded(|| self.tasks.push(b));
    }
}
