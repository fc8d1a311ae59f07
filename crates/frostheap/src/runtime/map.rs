//! The entry points main calls: [`Runtime::par`] and [`Runtime::par_bridge`]
//! (a parallel call with adapters), and the shorthands `map`, `map_with`,
//! `map_iter`, `for_each`, `for_each_mut`, `scope`, `join`.
//!
//! `par`, `map` and `for_each` accept what the workers can index directly
//! (slices, `Vec<T>`, `&mut [T]`, ranges, chunked views: see
//! [`par`](super::par)); main only waits while they run. An arbitrary iterator
//! goes through `par_bridge` or `map_iter`, which pull its items on main
//! first — the one serial step, named so that it is never taken by
//! accident.

use super::call::Par;
use super::drive::{Bridge, Indexed};
use super::pipe::Identity;
use super::pool::Runtime;
use super::source::IntoParSource;
use super::task::TaskContext;
use crate::error::Error;
use crate::global::unguarded;

impl Runtime {
    /// A parallel call over `items`, which the workers index directly:
    /// slices and `&Vec<T>` (`&T` items), `Vec<T>` (items moved into the
    /// tasks), `&mut [T]` and `slice.iter_mut()` (`&mut T` items, see
    /// [`Runtime::for_each_mut`]), integer ranges, `slice.chunks(k)` and
    /// [`chunks_mut`](super::par::chunks_mut). Add adapters (`map`, `filter`, `fold`,
    /// ...) and end with a terminal operation (`collect`, `sum`,
    /// `for_each`, ...), which runs the phase.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let words = vec!["frozen", "heap", "", "phase"];
    /// let total: usize = rt.par(&words).filter(|w| !w.is_empty()).map(|w| w.len()).sum()?;
    /// assert_eq!(total, 15);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn par<I: IntoParSource>(
        &self,
        items: I,
    ) -> Par<'_, Indexed<I::Source>, Identity<I::Item>> {
        Par::new(self, Indexed(items.into_par_source()))
    }

    /// A parallel call over an arbitrary iterator: main pulls its items
    /// into a buffer of the runtime's before the workers start on them (a
    /// serial step, cheap next to real work but visible on millions of tiny
    /// items), one batch at a time. It streams, as rayon's `par_bridge`
    /// does: under a memory budget batches are sized from it; without
    /// one a batch holds at most 4,096 items per worker; and either way it
    /// stops being pulled once its items took 16 MiB (1/1024 of the
    /// process limit below 16 GiB, or the budget if less), so memory is
    /// bounded by the items in flight, not by the input's size. Items are made inside [`unguarded`], so tasks may
    /// change what they own.
    /// Prefer [`Runtime::par`] for anything it accepts.
    ///
    /// The iterator runs on main, so a panic in it is main's: it unwinds
    /// out of the call (it is not a task's [`Error::TaskPanicked`]), after
    /// the items it made and no task took are dropped, once each; the
    /// runtime stays usable.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let lines = "a\nbb\nccc";
    /// let lens: Vec<usize> = rt.par_bridge(lines.lines()).map(|l| l.len()).collect()?;
    /// assert_eq!(lens, [1, 2, 3]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn par_bridge<I>(&self, items: I) -> Par<'_, Bridge<I::IntoIter>, Identity<I::Item>>
    where
        I: IntoIterator,
        I::Item: Send,
    {
        Par::new(self, Bridge(items.into_iter()))
    }

    /// Maps `f` over `items` in parallel; results in input order:
    /// `rt.par(items).map(f).collect()`.
    ///
    /// The first panic or violation becomes the error; the other tasks
    /// finish or are skipped, and the runtime stays usable.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let squares = rt.map(0..100u64, |x| x * x)?;
    /// assert_eq!(squares[7], 49);
    /// let lens = rt.map(vec![String::from("ab"), String::from("c")], |s| s.len())?;
    /// assert_eq!(lens, [2, 1]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn map<I, F, R>(&self, items: I, f: F) -> Result<Vec<R>, Error>
    where
        I: IntoParSource,
        F: Fn(I::Item) -> R + Sync,
        R: Send,
    {
        self.par(items).map(f).collect()
    }

    /// [`Runtime::map`] whose closure also receives the [`TaskContext`]
    /// (item index, worker, and the arena allocator).
    pub fn map_with<I, F, R>(&self, items: I, f: F) -> Result<Vec<R>, Error>
    where
        I: IntoParSource,
        F: Fn(&TaskContext<'_>, I::Item) -> R + Sync,
        R: Send,
    {
        self.par(items).map_with_context(f).collect()
    }

    /// [`Runtime::map`] over an arbitrary iterator:
    /// `rt.par_bridge(items).map(f).collect()`, with its serial step (see
    /// [`Runtime::par_bridge`]).
    pub fn map_iter<I, F, R>(&self, items: I, f: F) -> Result<Vec<R>, Error>
    where
        I: IntoIterator,
        I::Item: Send,
        F: Fn(I::Item) -> R + Sync,
        R: Send,
    {
        self.par_bridge(items).map(f).collect()
    }

    /// [`Runtime::map`] over a slice; the same as `map(items, f)`, kept
    /// from when `map` took a slower path for slices.
    pub fn map_slice<'a, T, F, R>(&self, items: &'a [T], f: F) -> Result<Vec<R>, Error>
    where
        T: Sync,
        F: Fn(&'a T) -> R + Sync,
        R: Send,
    {
        self.map(items, f)
    }

    /// [`Runtime::map_with`] over a slice; the same as `map_with(items, f)`.
    pub fn map_slice_with<'a, T, F, R>(&self, items: &'a [T], f: F) -> Result<Vec<R>, Error>
    where
        T: Sync,
        F: Fn(&TaskContext<'_>, &'a T) -> R + Sync,
        R: Send,
    {
        self.map_with(items, f)
    }

    /// Runs `f` on every item in parallel: `rt.par(items).for_each(f)`.
    pub fn for_each<I, F>(&self, items: I, f: F) -> Result<(), Error>
    where
        I: IntoParSource,
        F: Fn(I::Item) + Sync,
    {
        self.par(items).for_each(f)
    }

    /// Runs `f` on every element of `data`, which tasks may change (rayon's
    /// `par_iter_mut().for_each(f)`).
    ///
    /// Tasks can change only memory that is not frozen, so `data` must not
    /// live in a guarded heap: build it inside [`unguarded`] (and
    /// grow it there too: a `Vec` that main grows outside it moves into
    /// the main heap), or allocate it from a `Heap` not passed to `guard`
    /// (a [`Shared`](crate::global::Shared) holds a value outside, an
    /// array say, but not what it owns: a `Vec`'s buffer stays where it
    /// was made). A `Vec` collected from a call in global mode lies in the
    /// main heap when it is large, or made through `filter` and the like
    /// (`docs/coming-from-rayon.md`); make the call inside `unguarded` for
    /// a result tasks may change. This is checked before the phase starts,
    /// in O(1): data in a guarded heap fails with [`Error::NotWritable`], naming the heap,
    /// and nothing is changed. (Without `frostheap::Global`, a `Vec` lives
    /// in system memory and is writable as it is.)
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let mut v = frostheap::unguarded(|| vec![1u64; 10_000]);
    /// rt.for_each_mut(&mut v, |x| *x *= 3)?;
    /// assert!(v.iter().all(|&x| x == 3));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn for_each_mut<T, F>(&self, data: &mut [T], f: F) -> Result<(), Error>
    where
        T: Send,
        F: Fn(&mut T) + Sync,
    {
        self.par(data).for_each(f)
    }

    /// Runs heterogeneous tasks in one phase: `scope.spawn(task)` for each.
    ///
    /// `build` runs first, on main, and only collects the tasks; they run
    /// after it returns, so it must not wait for them (a `recv` on a
    /// channel a task sends on blocks for good). A task takes no scope: it
    /// cannot spawn tasks, nor make any parallel call (phases do not nest).
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
        self.for_each(tasks, |task| task())
    }

    /// Runs two closures in parallel and returns both results. Like every
    /// parallel call, not from inside a task: a recursive `join` fails
    /// with [`Error::TaskPanicked`].
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
