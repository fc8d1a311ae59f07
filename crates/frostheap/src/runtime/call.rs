//! [`Par`]: a parallel call under construction — an input, a chain of
//! adapters with rayon's names and meaning, and a terminal operation that
//! runs the phase and returns `Result`.
//!
//! ```
//! let rt = frostheap::Runtime::builder().workers(2).build()?;
//! let v: Vec<u64> = (0..10_000).collect();
//! let evens: u64 = rt.par(&v).filter(|x| *x % 2 == 0).map(|x| x * 3).sum()?;
//! assert_eq!(evens, 3 * (0..10_000u64).filter(|x| x % 2 == 0).sum::<u64>());
//! let squares: Vec<u64> = rt.par(0..5u64).map(|x| x * x).collect()?;
//! assert_eq!(squares, [0, 1, 4, 9, 16]);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! Adapters are lazy; nothing runs until the terminal operation. Order is
//! kept: `collect` returns items in input order, and reductions combine
//! partials of consecutive ranges in order, so `reduce`'s `op` need only
//! be associative. The first panic or violation of a task becomes the
//! call's `Err`; the heaps are thawed and the runtime stays usable.

use core::cmp::Ordering;
use core::marker::PhantomData;

use super::drive::{Call, Drive, Indexed};
use super::pipe::{
    CloneOf, Enumerate, Filter, FilterMap, FlatMapIter, Fold, Identity, InitFn, Inspect, Map,
    MapInit, MapWith, MapWithContext, OneToOne, Pipe,
};
use super::pool::Runtime;
use super::source::{IntoParSource, ParSource, Skip, Take, Zip};
use super::task::TaskContext;
use super::terminal::{
    Any, CountOp, Extreme, FindAny, ForEach, PieceCollect, ProductOp, Reduce, ReduceOp,
    SlotCollect, SumOp, TryForEach, TryReduce,
};
use crate::error::Error;

/// A parallel call under construction: made by
/// [`Runtime::par`](super::Runtime::par) or
/// [`Runtime::par_bridge`](super::Runtime::par_bridge), extended by
/// adapters, run by a terminal operation.
#[must_use = "a parallel call runs only when a terminal operation (collect, for_each, sum, ...) is called"]
pub struct Par<'rt, D, P> {
    rt: &'rt Runtime,
    input: D,
    pipe: P,
}

impl<'rt, D: Drive> Par<'rt, D, Identity<D::Item>> {
    pub(crate) fn new(rt: &'rt Runtime, input: D) -> Self {
        Par {
            rt,
            input,
            pipe: Identity::new(),
        }
    }
}

impl<'rt, S: ParSource> Par<'rt, Indexed<S>, Identity<S::Item>> {
    /// Pairs the items with those of `other` item by item: item `i` is
    /// `(item i, other's item i)`, and there are as many as the shorter
    /// input has — rayon's `IndexedParallelIterator::zip`
    /// (`a.par_iter().zip(b.par_iter_mut())` is `rt.par(&a).zip(&mut
    /// b)`). `other` is anything [`Runtime::par`] indexes directly
    /// (slices, `&mut` slices, `Vec`s by value, ranges, chunked views, or
    /// another zip): both sides are indexed inputs, so `zip` comes before
    /// the other adapters (`map` the pairs after it) and is not there
    /// after [`par_bridge`](super::Runtime::par_bridge).
    ///
    /// The longer input's items past the shorter one's length are never
    /// run: owned ones (a `Vec`'s) are dropped when the call starts, on
    /// the calling thread, as rayon drops them. A `&mut` side must be
    /// writable, as for [`Runtime::for_each_mut`](super::Runtime::for_each_mut):
    /// both sides are checked before the phase, and the call fails with
    /// [`Error::NotWritable`] naming the heap otherwise. The pairs are
    /// one item per input item, so [`enumerate`](Par::enumerate) and
    /// [`position_any`](Par::position_any) work after `zip`, and `collect`
    /// writes into place.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let (a, b) = (vec![1u64, 2, 3, 4], vec![10u64, 20, 30]);
    /// let dot: u64 = rt.par(&a).zip(&b).map(|(x, y)| x * y).sum()?;
    /// assert_eq!(dot, 10 + 40 + 90);
    /// let mut c = vec![0u64; 4];
    /// rt.par(&a).zip(&mut c).for_each(|(x, out)| *out = x * x)?;
    /// assert_eq!(c, [1, 4, 9, 16]);
    /// // One item per input item: enumerate after zip, as in rayon.
    /// let e: Vec<(usize, (u64, &u64))> = rt.par(0..3u64).zip(&b).enumerate().collect()?;
    /// assert_eq!(e, [(0, (0, &10)), (1, (1, &20)), (2, (2, &30))]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    ///
    /// After an adapter there is no `zip`: zip the inputs first.
    ///
    /// ```compile_fail
    /// let rt = frostheap::Runtime::builder().workers(2).build().unwrap();
    /// let b = vec![1u32; 10];
    /// let _ = rt.par(0..10u32).map(|x| x + 1).zip(&b);
    /// ```
    // The type spells what the call is (the two sources zipped, no stage
    // yet), as every adapter's does; an alias would hide it in the docs.
    #[allow(clippy::type_complexity)]
    pub fn zip<B: IntoParSource>(
        self,
        other: B,
    ) -> Par<'rt, Indexed<Zip<S, B::Source>>, Identity<(S::Item, B::Item)>> {
        Par::new(
            self.rt,
            Indexed(Zip::new(self.input.0, other.into_par_source())),
        )
    }

    /// The first `n` items (all of them if there are fewer): rayon's
    /// `take`. The items after them are never run: owned ones are dropped
    /// when the call starts, on the calling thread. As [`zip`](Par::zip),
    /// it comes before the other adapters; the items keep their places,
    /// so `enumerate` after it counts from 0.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let v: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    /// let head: Vec<String> = rt.par(v).skip(2).take(3).collect()?;
    /// assert_eq!(head, ["2", "3", "4"]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn take(self, n: usize) -> Par<'rt, Indexed<Take<S>>, Identity<S::Item>> {
        Par::new(self.rt, Indexed(Take::new(self.input.0, n)))
    }

    /// All items but the first `n` (none if there are no more): rayon's
    /// `skip`. The skipped items are never run: owned ones are dropped
    /// when the call starts, on the calling thread. As [`zip`](Par::zip),
    /// it comes before the other adapters; item `i` is the input's item
    /// `n + i`, so `enumerate` after it counts from 0, as rayon's does,
    /// and so do the item indices of a panic or a violation
    /// ([`Error::TaskPanicked`]'s `item_index`).
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let tail: Vec<(usize, u32)> = rt.par(10..15u32).skip(3).enumerate().collect()?;
    /// assert_eq!(tail, [(0, 13), (1, 14)]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn skip(self, n: usize) -> Par<'rt, Indexed<Skip<S>>, Identity<S::Item>> {
        Par::new(self.rt, Indexed(Skip::new(self.input.0, n)))
    }
}

impl<'rt, D, P> Par<'rt, D, P>
where
    D: Drive,
    P: Pipe<D::Item>,
{
    /// The same call with its pipeline extended by `stage`.
    fn with<Q: Pipe<D::Item>>(self, stage: impl FnOnce(P) -> Q) -> Par<'rt, D, Q> {
        Par {
            rt: self.rt,
            input: self.input,
            pipe: stage(self.pipe),
        }
    }

    // ------------------------------------------------------------ adapters

    /// Each item becomes `f(item)`.
    pub fn map<F, R>(self, f: F) -> Par<'rt, D, Map<P, F>>
    where
        F: Fn(P::Out) -> R + Sync,
    {
        self.with(|p| Map::new(p, f))
    }

    /// Each item becomes `f(&task, item)`; [`TaskContext`] gives the item's
    /// input index, the worker, and the worker's arena allocator.
    pub fn map_with_context<F, R>(self, f: F) -> Par<'rt, D, MapWithContext<P, F>>
    where
        F: Fn(&TaskContext<'_>, P::Out) -> R + Sync,
    {
        self.with(|p| MapWithContext::new(p, f))
    }

    /// Each item becomes `f(&mut state, item)`, where `state` is
    /// `init()`: rayon's `map_init`, for a scratch buffer, a random number
    /// generator or a connection that items reuse instead of making one
    /// each.
    ///
    /// **How often `init` runs**: once per claim — a run of consecutive
    /// chunks one worker took from the call's input (a few dozen per
    /// phase, as many as `fold`'s partials), lazily at the claim's first
    /// item, so at most once per chunk and never for a claim that ran no
    /// item. Under a memory budget a claim is one chunk and each batch is
    /// a phase, so it runs more often (still at most once per chunk);
    /// rayon's runs once per split, also a number that depends on
    /// scheduling. Never rely on a count, only on a state being used by
    /// one item at a time.
    ///
    /// **Where the state lives**: `init` runs on the worker, inside the
    /// task, so what it allocates comes from the worker's context heap
    /// (a bump allocation, with `frostheap::Global`); the state is dropped
    /// on the worker when the claim ends (or when the call fails). State
    /// that `init` merely borrows from the caller lives where it was
    /// made: in the main heap it is frozen during the phase, so `init`
    /// and `f` may read it but a write is a violation (the call's
    /// `Err(Error::Violation(..))`). What `init` allocates counts, under a
    /// budget, towards the first item that needed it.
    ///
    /// A panic in `init` or `f` ends the call with
    /// [`Error::TaskPanicked`], whose `item_index` is the item being run
    /// (for `init`, the claim's first item).
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let words = ["frozen", "heap", "phase"];
    /// // One buffer per claim, reused by its items.
    /// let upper: Vec<String> = rt
    ///     .par(&words)
    ///     .map_init(String::new, |buf, w| {
    ///         buf.clear();
    ///         buf.extend(w.chars().map(|c| c.to_ascii_uppercase()));
    ///         buf.clone()
    ///     })
    ///     .collect()?;
    /// assert_eq!(upper, ["FROZEN", "HEAP", "PHASE"]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn map_init<INIT, T, F, R>(
        self,
        init: INIT,
        f: F,
    ) -> Par<'rt, D, MapInit<P, InitFn<INIT>, F>>
    where
        INIT: Fn() -> T + Sync,
        F: Fn(&mut T, P::Out) -> R + Sync,
    {
        self.with(|p| MapInit::new(p, InitFn::new(init), f))
    }

    /// Each item becomes `f(&mut state, item)`, where `state` is a clone
    /// of `value`: rayon's `map_with`. [`map_init`](Par::map_init) with
    /// `value.clone()` as its `init`, cloned as often (once per claim) and
    /// on the worker, so the clone's allocations come from the worker's
    /// context heap and are dropped when the claim ends. `value` itself
    /// is never passed to `f`; it is dropped on the calling thread when
    /// the call ends.
    ///
    /// A clone that writes memory it shares with `value` writes it on the
    /// worker: a `Sender` or an `Arc` made in the main heap (with
    /// `frostheap::Global`) has its count there, frozen during the phase,
    /// and its clone is a violation. Make such a value inside
    /// [`unguarded`](crate::unguarded) (a channel made there sends
    /// freely: docs/coming-from-rayon.md), or pass a reference.
    ///
    /// (Not the shorthand [`Runtime::map_with`](super::Runtime::map_with),
    /// which passes a [`TaskContext`]: [`map_with_context`](Par::map_with_context).)
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let out: Vec<usize> = rt
    ///     .par(0..100usize)
    ///     .map_with(Vec::<usize>::new(), |seen, x| {
    ///         seen.push(x);
    ///         x * 2
    ///     })
    ///     .collect()?;
    /// assert_eq!(out[99], 198);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn map_with<T, F, R>(self, value: T, f: F) -> Par<'rt, D, MapWith<P, T, F>>
    where
        T: Send + Clone,
        F: Fn(&mut T, P::Out) -> R + Sync,
    {
        self.with(|p| MapInit::new(p, CloneOf::new(value), f))
    }

    /// The items for which `predicate` is true.
    pub fn filter<F>(self, predicate: F) -> Par<'rt, D, Filter<P, F>>
    where
        F: Fn(&P::Out) -> bool + Sync,
    {
        self.with(|p| Filter::new(p, predicate))
    }

    /// The `Some` values of `f(item)`.
    pub fn filter_map<F, R>(self, f: F) -> Par<'rt, D, FilterMap<P, F>>
    where
        F: Fn(P::Out) -> Option<R> + Sync,
    {
        self.with(|p| FilterMap::new(p, f))
    }

    /// The items of each `f(item)`, in order; each inner iterator runs
    /// serially inside its task (rayon's `flat_map_iter`).
    pub fn flat_map_iter<F, U>(self, f: F) -> Par<'rt, D, FlatMapIter<P, F>>
    where
        F: Fn(P::Out) -> U + Sync,
        U: IntoIterator,
    {
        self.with(|p| FlatMapIter::new(p, f))
    }

    /// Calls `f(&item)` and passes the item on.
    pub fn inspect<F>(self, f: F) -> Par<'rt, D, Inspect<P, F>>
    where
        F: Fn(&P::Out) + Sync,
    {
        self.with(|p| Inspect::new(p, f))
    }

    /// Each item paired with its index: its position among the items,
    /// which is its index in the input (a slice's, a `Vec`'s, a range's
    /// or chunked view's, or the iterator's for
    /// [`par_bridge`](super::Runtime::par_bridge)), since the adapters
    /// before it keep one item per input item ([`OneToOne`]: `map`,
    /// `map_with_context`, `map_init`, `map_with`, `inspect`; and `zip`,
    /// `skip` and `take` before them). After `filter`, `filter_map`,
    /// `flat_map_iter` or `fold` an item's position is known only once
    /// the items before it ran, so there, as in rayon, it does not compile:
    /// enumerate first.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let v = vec![10u64, 11, 12, 13];
    /// let odd: Vec<(usize, u64)> = rt.par(&v).map(|x| x + 1).enumerate().filter(|(_, x)| x % 2 == 1).collect()?;
    /// assert_eq!(odd, [(0, 11), (2, 13)]);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    ///
    /// ```compile_fail
    /// let rt = frostheap::Runtime::builder().workers(2).build().unwrap();
    /// // error: `enumerate` and `position_any` need a pipeline that keeps
    /// // one item per input item, in order
    /// let _ = rt.par(0..10u32).filter(|x| x % 2 == 0).enumerate();
    /// ```
    pub fn enumerate(self) -> Par<'rt, D, Enumerate<P>>
    where
        P: OneToOne<D::Item>,
    {
        // The marker and the constant say the same of a pipeline.
        const { assert!(P::ONE_TO_ONE, "a OneToOne pipeline is ONE_TO_ONE") };
        self.with(Enumerate::new)
    }

    /// Folds runs of consecutive items into partial values: each worker
    /// starts a run from `identity()` and folds its items in with `f`; the
    /// partials (one per run of chunks a worker claimed, a few dozen per
    /// phase) are the new items, in input order. As in rayon, follow it
    /// with `reduce`, `sum` or `collect` to combine them.
    pub fn fold<ID, F, A>(self, identity: ID, f: F) -> Par<'rt, D, Fold<P, ID, F>>
    where
        ID: Fn() -> A + Sync,
        F: Fn(A, P::Out) -> A + Sync,
        A: Send,
    {
        self.with(|p| Fold::new(p, identity, f))
    }

    // ------------------------------------------------------------ terminals

    /// Runs the call into `term`.
    fn run<T: super::terminal::Terminal<P::Out>>(self, term: &mut T) -> Result<(), Error> {
        let Par { rt, input, pipe } = self;
        input.drive(rt, Call { pipe: &pipe, term })
    }

    /// Runs `f` on every item.
    pub fn for_each<F>(self, f: F) -> Result<(), Error>
    where
        F: Fn(P::Out) + Sync,
    {
        self.run(&mut ForEach(f))
    }

    /// Runs `f(&mut state, item)` on every item, where `state` is a clone
    /// of `value` made once per claim on the worker: rayon's
    /// `for_each_with`, here [`map_with`](Par::map_with)`(value,
    /// f).for_each(..)` (see there for how often it clones, where the
    /// clones live, and a `Sender` made in the main heap). `value` itself
    /// is dropped on the calling thread when the call ends.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// // A channel made inside `unguarded`, so tasks may send on it.
    /// let (tx, rx) = frostheap::unguarded(std::sync::mpsc::channel);
    /// rt.par(0..100u64).for_each_with(tx, |tx, x| tx.send(x * x).unwrap())?;
    /// let mut got: Vec<u64> = rx.iter().collect();
    /// got.sort_unstable();
    /// assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn for_each_with<T, F>(self, value: T, f: F) -> Result<(), Error>
    where
        T: Send + Clone,
        F: Fn(&mut T, P::Out) + Sync,
    {
        self.map_with(value, f).for_each(|()| ())
    }

    /// Runs `f` on every item until one returns `Err`; the call returns
    /// `Ok(Err(e))` with the error of the **first failing item in input
    /// order** — what a serial `try_for_each` over the items returns —
    /// and `Ok(Ok(()))` when every item succeeded.
    ///
    /// It stops early: once an item has failed, no item after it runs
    /// (the items after it that were running end at their next item, the
    /// chunks after it are never started, and their items are dropped,
    /// never run); the items before it still run, since one of them may
    /// fail too and come first. rayon's `try_for_each` returns the error
    /// of whichever failing item it meets, which varies from run to run;
    /// this one is always the same. Of the items that `filter` or
    /// `flat_map_iter` make from one input item, the first failing one
    /// counts; the partials of `fold` come in input order too.
    ///
    /// The outer `Result` is the runtime's own, as for every terminal: a
    /// task that panics or writes frozen memory ends the call with
    /// `Err(Error::TaskPanicked { .. })` or `Err(Error::Violation(..))`,
    /// even when another item failed before it in input order.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let lines = ["1", "2", "x", "4", "y"];
    /// let parsed = rt.par(&lines).try_for_each(|s| s.parse::<u32>().map(drop))?;
    /// // The first error in input order: "x", never "y".
    /// assert_eq!(parsed, Err("x".parse::<u32>().unwrap_err()));
    /// assert_eq!(rt.par(0..1000u32).try_for_each(|x| if x < 1000 { Ok(()) } else { Err(x) })?, Ok(()));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn try_for_each<F, E>(self, f: F) -> Result<Result<(), E>, Error>
    where
        F: Fn(P::Out) -> Result<(), E> + Sync,
        E: Send,
    {
        let mut term = TryForEach::new(f);
        self.run(&mut term)?;
        Ok(term.into_result())
    }

    /// The items, in input order, in a collection: `Vec<T>` (written
    /// straight into place when every adapter is one-to-one), or
    /// `Result<Vec<T>, E>` from items `Result<T, E>` (the first `Err` in
    /// input order).
    pub fn collect<C>(self) -> Result<C, Error>
    where
        C: FromPar<P::Out>,
    {
        C::from_par(self)
    }

    /// The items in input order (what `collect::<Vec<_>>()` returns).
    fn collect_vec(self) -> Result<Vec<P::Out>, Error>
    where
        P::Out: Send,
    {
        if P::ONE_TO_ONE {
            let mut term = SlotCollect::new();
            self.run(&mut term)?;
            Ok(term.out)
        } else {
            let mut term = PieceCollect::new();
            self.run(&mut term)?;
            Ok(term.into_vec())
        }
    }

    /// Number of items.
    pub fn count(self) -> Result<usize, Error> {
        let mut term = Reduce::new(CountOp);
        self.run(&mut term)?;
        Ok(term.into_result().unwrap_or(0))
    }

    /// The sum of the items (std's `Sum`, per run of items, then over the
    /// partials).
    pub fn sum<S>(self) -> Result<S, Error>
    where
        S: core::iter::Sum<P::Out> + core::iter::Sum<S> + Send,
    {
        let mut term = Reduce::new(SumOp(PhantomData));
        self.run(&mut term)?;
        Ok(term
            .into_result()
            .unwrap_or_else(|| core::iter::empty::<S>().sum()))
    }

    /// The product of the items.
    pub fn product<S>(self) -> Result<S, Error>
    where
        S: core::iter::Product<P::Out> + core::iter::Product<S> + Send,
    {
        let mut term = Reduce::new(ProductOp(PhantomData));
        self.run(&mut term)?;
        Ok(term
            .into_result()
            .unwrap_or_else(|| core::iter::empty::<S>().product()))
    }

    /// The items combined with `op`, which must be associative; `identity`
    /// must be its neutral element and is what an empty input returns.
    pub fn reduce<ID, OP>(self, identity: ID, op: OP) -> Result<P::Out, Error>
    where
        ID: Fn() -> P::Out + Sync,
        OP: Fn(P::Out, P::Out) -> P::Out + Sync,
        P::Out: Send,
    {
        Ok(self.reduce_with(op)?.unwrap_or_else(identity))
    }

    /// The items combined with the associative `op`; `None` for no item.
    pub fn reduce_with<OP>(self, op: OP) -> Result<Option<P::Out>, Error>
    where
        OP: Fn(P::Out, P::Out) -> P::Out + Sync,
        P::Out: Send,
    {
        let mut term = Reduce::new(ReduceOp(op));
        self.run(&mut term)?;
        Ok(term.into_result())
    }

    /// The `Ok` values of items `Result<T, E>` combined with the
    /// associative `op`, which may fail too: `Ok(Ok(v))` when every item and
    /// every combination succeeded (`Ok(Ok(identity()))` for no item), or
    /// `Ok(Err(e))` with the error of the first failure in input order —
    /// rayon's `try_reduce` for `Result`, whose error is whichever failure
    /// it met, varying from run to run; this one is that of the first
    /// failing item, as [`try_for_each`](Par::try_for_each) gives it.
    ///
    /// It stops early as `try_for_each` does: once an item (or the
    /// combination of an item into the partial of its worker's run) has
    /// failed, no item after it runs, and the items before it still run,
    /// as one of them may fail first. `op` also combines the partials of
    /// the workers' runs: an error there ends the call with it (then the
    /// first failure of those two partials' items, if any, comes first)
    /// but does not stop the other runs.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let sum = rt.par(1..=100u64).map(Ok::<u64, String>).try_reduce(|| 0, |a, b| Ok(a + b))?;
    /// assert_eq!(sum, Ok(5050));
    /// let lines = ["1", "2", "x", "4", "y"];
    /// let total = rt
    ///     .par(&lines)
    ///     .map(|s| s.parse::<u32>())
    ///     .try_reduce(|| 0, |a, b| Ok(a + b))?;
    /// // The first error in input order: "x", never "y".
    /// assert_eq!(total, Err("x".parse::<u32>().unwrap_err()));
    /// // `op` fails too: a checked sum that overflows.
    /// let overflow = rt
    ///     .par(0..100u8)
    ///     .map(Ok::<u8, &str>)
    ///     .try_reduce(|| 0, |a, b| a.checked_add(b).ok_or("overflow"))?;
    /// assert_eq!(overflow, Err("overflow"));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn try_reduce<T, E, ID, OP>(self, identity: ID, op: OP) -> Result<Result<T, E>, Error>
    where
        P: Pipe<D::Item, Out = Result<T, E>>,
        ID: Fn() -> T + Sync,
        OP: Fn(T, T) -> Result<T, E> + Sync,
        T: Send,
        E: Send,
    {
        Ok(self.try_reduce_with(op)?.unwrap_or_else(|| Ok(identity())))
    }

    /// [`try_reduce`](Par::try_reduce) with no identity: `Ok(None)` for
    /// no item.
    pub fn try_reduce_with<T, E, OP>(self, op: OP) -> Result<Option<Result<T, E>>, Error>
    where
        P: Pipe<D::Item, Out = Result<T, E>>,
        OP: Fn(T, T) -> Result<T, E> + Sync,
        T: Send,
        E: Send,
    {
        let mut term = TryReduce::new(op);
        self.run(&mut term)?;
        Ok(term.into_result())
    }

    /// The least item (the first of equal ones).
    pub fn min(self) -> Result<Option<P::Out>, Error>
    where
        P::Out: Ord + Send,
    {
        self.min_by(Ord::cmp)
    }

    /// The greatest item (the last of equal ones).
    pub fn max(self) -> Result<Option<P::Out>, Error>
    where
        P::Out: Ord + Send,
    {
        self.max_by(Ord::cmp)
    }

    /// The least item by `cmp` (the first of equal ones).
    pub fn min_by<F>(self, cmp: F) -> Result<Option<P::Out>, Error>
    where
        F: Fn(&P::Out, &P::Out) -> Ordering + Sync,
        P::Out: Send,
    {
        self.extreme(cmp, false)
    }

    /// The greatest item by `cmp` (the last of equal ones).
    pub fn max_by<F>(self, cmp: F) -> Result<Option<P::Out>, Error>
    where
        F: Fn(&P::Out, &P::Out) -> Ordering + Sync,
        P::Out: Send,
    {
        self.extreme(cmp, true)
    }

    /// The item with the least key (the first of equal ones); `key` runs
    /// once per item.
    pub fn min_by_key<K, F>(self, key: F) -> Result<Option<P::Out>, Error>
    where
        K: Ord + Send,
        F: Fn(&P::Out) -> K + Sync,
        P::Out: Send,
    {
        let keyed = self.map(move |x| (key(&x), x));
        Ok(keyed.extreme(|a, b| a.0.cmp(&b.0), false)?.map(|(_, x)| x))
    }

    /// The item with the greatest key (the last of equal ones); `key` runs
    /// once per item.
    pub fn max_by_key<K, F>(self, key: F) -> Result<Option<P::Out>, Error>
    where
        K: Ord + Send,
        F: Fn(&P::Out) -> K + Sync,
        P::Out: Send,
    {
        let keyed = self.map(move |x| (key(&x), x));
        Ok(keyed.extreme(|a, b| a.0.cmp(&b.0), true)?.map(|(_, x)| x))
    }

    fn extreme<F>(self, cmp: F, max: bool) -> Result<Option<P::Out>, Error>
    where
        F: Fn(&P::Out, &P::Out) -> Ordering + Sync,
        P::Out: Send,
    {
        let mut term = Reduce::new(Extreme { cmp, max });
        self.run(&mut term)?;
        Ok(term.into_result())
    }

    /// Whether `predicate` holds for some item; stops soon after the first
    /// one found (items not yet run are dropped, never run).
    pub fn any<F>(self, predicate: F) -> Result<bool, Error>
    where
        F: Fn(P::Out) -> bool + Sync,
    {
        let mut term = Any::new(predicate);
        self.run(&mut term)?;
        Ok(term.found())
    }

    /// Some item for which `predicate` holds, or `None`; stops soon after
    /// the first one found (items not yet run are dropped, never run), as
    /// [`any`](Par::any) does. Which item it returns when several match
    /// depends on scheduling, as in rayon: the one found first in time,
    /// not the first in input order.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let hit = rt.par(0..1_000_000u64).map(|x| x * x).find_any(|sq| sq % 1000 == 1);
    /// assert_eq!(hit?.map(|sq| sq % 1000), Some(1));
    /// assert_eq!(rt.par(0..1000u64).find_any(|x| *x > 5000)?, None);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn find_any<F>(self, predicate: F) -> Result<Option<P::Out>, Error>
    where
        F: Fn(&P::Out) -> bool + Sync,
        P::Out: Send,
    {
        let mut term = FindAny::new(predicate);
        self.run(&mut term)?;
        Ok(term.into_item())
    }

    /// The index of some item for which `predicate` holds, or `None`;
    /// stops soon after the first one found, as
    /// [`find_any`](Par::find_any) does (which one, when several match,
    /// depends on scheduling). The index is the item's position, as
    /// [`enumerate`](Par::enumerate) gives it, so the adapters before it
    /// must be [`OneToOne`].
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let v: Vec<u64> = (0..100_000).map(|x| x * 7 % 100_003).collect();
    /// let i = rt.par(&v).position_any(|x| *x == 7 * 500)?;
    /// assert_eq!(i, Some(500));
    /// assert_eq!(rt.par(&v).position_any(|x| *x > 200_000)?, None);
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn position_any<F>(self, predicate: F) -> Result<Option<usize>, Error>
    where
        P: OneToOne<D::Item>,
        F: Fn(P::Out) -> bool + Sync,
    {
        self.enumerate()
            .filter_map(move |(i, x)| predicate(x).then_some(i))
            .find_any(|_| true)
    }

    /// The first item in input order for which `predicate` holds, or
    /// `None`, as a serial `find` gives it; stops early as
    /// [`try_for_each`](Par::try_for_each) does (the items after a match
    /// do not run, the items before it do). rayon's `find_first`.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let first = rt.par(0..1_000_000u64).map(|x| x * x).find_first(|sq| sq % 1000 == 1);
    /// assert_eq!(first?, Some(1));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn find_first<F>(self, predicate: F) -> Result<Option<P::Out>, Error>
    where
        F: Fn(&P::Out) -> bool + Sync,
        P::Out: Send,
    {
        let found = self.try_for_each(move |x| if predicate(&x) { Err(x) } else { Ok(()) })?;
        Ok(found.err())
    }

    /// The index of the first item for which `predicate` holds, or `None`,
    /// as a serial `position` gives it; stops early as
    /// [`find_first`](Par::find_first) does. The adapters before it must
    /// be [`OneToOne`], as for [`position_any`](Par::position_any).
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let v: Vec<u64> = (0..100_000).map(|x| x % 1000).collect();
    /// assert_eq!(rt.par(&v).position_first(|x| *x == 999)?, Some(999));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn position_first<F>(self, predicate: F) -> Result<Option<usize>, Error>
    where
        P: OneToOne<D::Item>,
        F: Fn(P::Out) -> bool + Sync,
    {
        let found = self
            .enumerate()
            .try_for_each(move |(i, x)| if predicate(x) { Err(i) } else { Ok(()) })?;
        Ok(found.err())
    }

    /// Whether `predicate` holds for every item; stops soon after the
    /// first one for which it does not.
    pub fn all<F>(self, predicate: F) -> Result<bool, Error>
    where
        F: Fn(P::Out) -> bool + Sync,
    {
        self.any(move |x| !predicate(x)).map(|found| !found)
    }
}

/// Collections a [`Par`] can `collect` into.
pub trait FromPar<T>: Sized {
    /// Runs `par` and gathers its items.
    fn from_par<D, P>(par: Par<'_, D, P>) -> Result<Self, Error>
    where
        D: Drive,
        P: Pipe<D::Item, Out = T>;
}

impl<T: Send> FromPar<T> for Vec<T> {
    fn from_par<D, P>(par: Par<'_, D, P>) -> Result<Self, Error>
    where
        D: Drive,
        P: Pipe<D::Item, Out = T>,
    {
        par.collect_vec()
    }
}

impl<T: Send, E: Send> FromPar<Result<T, E>> for Result<Vec<T>, E> {
    fn from_par<D, P>(par: Par<'_, D, P>) -> Result<Self, Error>
    where
        D: Drive,
        P: Pipe<D::Item, Out = Result<T, E>>,
    {
        Ok(par.collect_vec()?.into_iter().collect())
    }
}
