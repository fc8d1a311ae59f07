//! The entry points main calls: `map`, `map_with`, `map_slice`,
//! `for_each`, `scope`, `join`.
//!
//! Each takes the runtime's phase lock (one phase at a time), cuts its input
//! into batches (one batch without a memory budget; with one, the first
//! batch has one item per worker and later ones `budget / bytes_per_item`
//! items, from the largest per-item consumption measured so far in this
//! call), reserves the result slots, and hands each batch to
//! [`Runtime::run_batch`](super::batch).
//!
//! `map` over an iterator pulls each batch into the runtime's scratch
//! buffer on main before the workers start; `map_slice` indexes the slice
//! directly and has no such serial step.

use super::batch::{progress_bytes, BorrowedItems, OwnedItems};
use super::{Runtime, TaskContext, RESULTS_IN_HEAP_MIN};
use crate::global::unguarded;
use crate::guard;
use crate::Error;

impl Runtime {
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
            guard::current_worker().is_none(),
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
            guard::current_worker().is_none(),
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
