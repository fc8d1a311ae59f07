//! Pipelines: the adapters between a source and a terminal operation.
//!
//! A pipeline is a chain of stages (`Map<Filter<Identity<T>, P>, F>`), built
//! by [`Par`](super::par::Par)'s adapter methods. On a worker, the batch
//! engine hands each chunk of items to the pipeline as a std iterator, and
//! every stage wraps that iterator in the matching std adapter (`map`,
//! `filter`, `filter_map`, `flat_map`, ...): the terminal then drives the
//! whole chain with one internal-iteration loop (`fold`, `for_each`,
//! `sum`), which the compiler turns into the same code as a hand-written
//! loop. This is how rayon's folders consume sequential iterators too.
//! Stages call the user's function through a closure of their own
//! (`it.map(move |x| (self.f)(x))`), never by handing std `&self.f`: the
//! `impl Fn for &F` shim in between was left out of line, so a
//! `filter_map` + `sum` made one call and one unpredictable branch per
//! item and ran at 0.6x rayon's speed (`par` benchmark); called directly,
//! the function is inlined into the loop.
//!
//! A stage may keep state for the run of chunks a worker claimed (its
//! *claim*): [`Fold`] folds a whole claim into one value and emits it when
//! the claim ends ([`Pipe::finish`]), so `fold` makes one partial per claim
//! (a few dozen per phase), as rayon's makes one per split.

use super::sealed::Sealed;
use super::task::TaskContext;
use super::worker::WorkerEnv;

/// One stage of a pipeline taking `In` items. Sealed: made by
/// [`Par`](super::par::Par)'s adapters.
pub trait Pipe<In>: Sync + Sealed {
    /// What the stage emits.
    type Out;
    /// State kept over one claim.
    type State;
    /// Whether the stage emits exactly one item per input item, in order
    /// (then `collect` writes results straight into their slots).
    const ONE_TO_ONE: bool;
    /// State for a new claim.
    #[doc(hidden)]
    fn begin(&self) -> Self::State;
    /// Wraps the items of one chunk.
    #[doc(hidden)]
    fn apply<I: Iterator<Item = In>>(
        &self,
        env: &WorkerEnv<'_>,
        state: &mut Self::State,
        items: I,
    ) -> impl Iterator<Item = Self::Out>;
    /// What the stage emits when its claim ends.
    #[doc(hidden)]
    fn finish(&self, env: &WorkerEnv<'_>, state: Self::State) -> impl Iterator<Item = Self::Out>;
}

/// A pipeline that emits exactly one item per input item, in input order,
/// each as its input item is taken (`map`, `map_with_context`, `map_init`,
/// `map_with`, `inspect`, `enumerate`, and none at all): an item's position is its input index.
/// What [`Par::enumerate`](super::par::Par::enumerate) and
/// [`Par::position_any`](super::par::Par::position_any) need, as rayon's
/// need an indexed iterator. Sealed, as [`Pipe`] is.
#[diagnostic::on_unimplemented(
    message = "`enumerate` and `position_any` need a pipeline that keeps one item per input item, in order",
    label = "after `filter`, `filter_map`, `flat_map_iter` or `fold`, an item's position is no longer its input index",
    note = "call `enumerate()` before those adapters (rayon too requires an indexed iterator here); `map_with_context(|task, x| (task.item_index(), x))` gives any item the input index it came from"
)]
pub trait OneToOne<In>: Pipe<In> {}

impl<T> OneToOne<T> for Identity<T> {}

impl<In, P, F, R> OneToOne<In> for Map<P, F>
where
    P: OneToOne<In>,
    F: Fn(P::Out) -> R + Sync,
{
}

impl<In, P, F, R> OneToOne<In> for MapWithContext<P, F>
where
    P: OneToOne<In>,
    F: Fn(&TaskContext<'_>, P::Out) -> R + Sync,
{
}

impl<In, P, F> OneToOne<In> for Inspect<P, F>
where
    P: OneToOne<In>,
    F: Fn(&P::Out) + Sync,
{
}

/// The pipeline with no stage: the source's items as they are.
pub struct Identity<T>(core::marker::PhantomData<fn(T) -> T>);

impl<T> Identity<T> {
    pub(crate) fn new() -> Self {
        Identity(core::marker::PhantomData)
    }
}

impl<T> Sealed for Identity<T> {}

impl<T> Pipe<T> for Identity<T> {
    type Out = T;
    type State = ();
    const ONE_TO_ONE: bool = true;
    #[inline]
    fn begin(&self) {}
    #[inline]
    fn apply<I: Iterator<Item = T>>(
        &self,
        _: &WorkerEnv<'_>,
        _: &mut (),
        items: I,
    ) -> impl Iterator<Item = T> {
        items
    }
    #[inline]
    fn finish(&self, _: &WorkerEnv<'_>, _: ()) -> impl Iterator<Item = T> {
        core::iter::empty()
    }
}

/// Defines a stateless stage that wraps the inner stage's iterator.
macro_rules! stateless_stage {
    (
        $(#[$doc:meta])*
        $name:ident<$f:ident>, one_to_one: $one:expr,
        impl<$($extra:ident),*> out: $out:ty, where { $($bounds:tt)* },
        |$self_:ident, $env:ident, $it:ident| $wrap:expr
    ) => {
        $(#[$doc])*
        pub struct $name<P, $f> {
            inner: P,
            f: $f,
        }

        impl<P, $f> $name<P, $f> {
            pub(crate) fn new(inner: P, f: $f) -> Self {
                $name { inner, f }
            }
        }

        impl<P, $f> Sealed for $name<P, $f> {}

        impl<In, P, $f $(, $extra)*> Pipe<In> for $name<P, $f>
        where
            P: Pipe<In>,
            $f: Sync,
            $($bounds)*
        {
            type Out = $out;
            type State = P::State;
            const ONE_TO_ONE: bool = P::ONE_TO_ONE && $one;
            #[inline]
            fn begin(&self) -> P::State {
                self.inner.begin()
            }
            #[inline]
            fn apply<I: Iterator<Item = In>>(
                &$self_,
                $env: &WorkerEnv<'_>,
                state: &mut P::State,
                items: I,
            ) -> impl Iterator<Item = $out> {
                let $it = $self_.inner.apply($env, state, items);
                $wrap
            }
            #[inline]
            fn finish(
                &$self_,
                $env: &WorkerEnv<'_>,
                state: P::State,
            ) -> impl Iterator<Item = $out> {
                let $it = $self_.inner.finish($env, state);
                $wrap
            }
        }
    };
}

stateless_stage!(
    /// `map(f)`: each item becomes `f(item)`.
    Map<F>, one_to_one: true, impl<R> out: R,
    where { F: Fn(P::Out) -> R },
    |self, env, it| it.map(move |x| (self.f)(x))
);

stateless_stage!(
    /// `map_with_context(f)`: each item becomes `f(&task, item)`, where
    /// `task` is the [`TaskContext`] (item index, worker, arena).
    MapWithContext<F>, one_to_one: true, impl<R> out: R,
    where { F: Fn(&TaskContext<'_>, P::Out) -> R },
    |self, env, it| it.map(move |x| {
        let task = TaskContext {
            ctx: env.ctx,
            item_index: Some(crate::guard::current_item()),
            worker: env.index,
        };
        (self.f)(&task, x)
    })
);

stateless_stage!(
    /// `filter(p)`: the items for which `p` is true.
    Filter<F>, one_to_one: false, impl<> out: P::Out,
    where { F: Fn(&P::Out) -> bool },
    |self, env, it| it.filter(move |x| (self.f)(x))
);

stateless_stage!(
    /// `filter_map(f)`: the `Some` values of `f(item)`.
    FilterMap<F>, one_to_one: false, impl<R> out: R,
    where { F: Fn(P::Out) -> Option<R> },
    |self, env, it| it.filter_map(move |x| (self.f)(x))
);

stateless_stage!(
    /// `flat_map_iter(f)`: the items of each `f(item)`, in order, produced
    /// serially within the task.
    FlatMapIter<F>, one_to_one: false, impl<R> out: R::Item,
    where { F: Fn(P::Out) -> R, R: IntoIterator },
    |self, env, it| it.flat_map(move |x| (self.f)(x))
);

stateless_stage!(
    /// `inspect(f)`: calls `f(&item)` and passes the item on.
    Inspect<F>, one_to_one: true, impl<> out: P::Out,
    where { F: Fn(&P::Out) },
    |self, env, it| it.inspect(move |x| (self.f)(x))
);

/// `enumerate()`: each item paired with its input index, which is its
/// position, as the pipeline before it is [`OneToOne`]. The index is the
/// worker's current item, which the batch engine sets as it takes each
/// input item (one-to-one stages take no item ahead), so it costs a
/// thread-local load per item and no state.
pub struct Enumerate<P> {
    inner: P,
}

impl<P> Enumerate<P> {
    pub(crate) fn new(inner: P) -> Self {
        Enumerate { inner }
    }
}

impl<P> Sealed for Enumerate<P> {}

impl<In, P: OneToOne<In>> Pipe<In> for Enumerate<P> {
    type Out = (usize, P::Out);
    type State = P::State;
    const ONE_TO_ONE: bool = true;
    #[inline]
    fn begin(&self) -> P::State {
        self.inner.begin()
    }
    #[inline]
    fn apply<I: Iterator<Item = In>>(
        &self,
        env: &WorkerEnv<'_>,
        state: &mut P::State,
        items: I,
    ) -> impl Iterator<Item = (usize, P::Out)> {
        self.inner.apply(env, state, items).map(|x| {
            let i = crate::guard::current_item();
            debug_assert!(
                i != usize::MAX,
                "frostheap: enumerate saw an item outside any task"
            );
            (i, x)
        })
    }
    #[inline]
    fn finish(
        &self,
        env: &WorkerEnv<'_>,
        state: P::State,
    ) -> impl Iterator<Item = (usize, P::Out)> {
        // A one-to-one pipeline emits nothing when a claim ends.
        self.inner.finish(env, state).map(|x| (usize::MAX, x))
    }
}

impl<In, P: OneToOne<In>> OneToOne<In> for Enumerate<P> {}

/// What [`MapInit`] makes a claim's state from: a function
/// ([`InitFn`], `map_init`'s `init`) or a value to clone ([`CloneOf`],
/// `map_with`'s and `for_each_with`'s). Sealed.
pub trait MakeState: Sync + Sealed {
    /// The state `f` receives `&mut`.
    type State;
    /// A new state, on the worker that needs it.
    #[doc(hidden)]
    fn make(&self) -> Self::State;
}

/// `map_init`'s `init`: a claim's state is `init()`.
pub struct InitFn<F>(F);

impl<F> InitFn<F> {
    pub(crate) fn new(init: F) -> Self {
        InitFn(init)
    }
}

impl<F> Sealed for InitFn<F> {}

impl<F, T> MakeState for InitFn<F>
where
    F: Fn() -> T + Sync,
{
    type State = T;
    #[inline]
    fn make(&self) -> T {
        (self.0)()
    }
}

/// `map_with`'s and `for_each_with`'s value: a claim's state is a clone
/// of it, made on the worker. The value itself stays where the call was
/// made and is dropped there when the call ends. A `Mutex` lets workers
/// clone a value that is `Send` but not `Sync`, as rayon's bounds allow
/// (one lock per claim: a few dozen per phase).
pub struct CloneOf<T>(std::sync::Mutex<T>);

impl<T> CloneOf<T> {
    pub(crate) fn new(value: T) -> Self {
        CloneOf(std::sync::Mutex::new(value))
    }
}

impl<T> Sealed for CloneOf<T> {}

impl<T: Clone + Send> MakeState for CloneOf<T> {
    type State = T;
    fn make(&self) -> T {
        // A clone that panicked leaves the value as it was (`clone` takes
        // `&T`): the poison is ignored.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `map_init(init, f)` (with [`InitFn`]) and `map_with(value, f)` (with
/// [`CloneOf`], the type [`MapWith`]): each item becomes `f(&mut state,
/// item)`, where `state` is made once per claim (a run of consecutive
/// chunks one worker took), at its first item, kept over the claim's
/// chunks, and dropped on the worker when the claim ends.
pub struct MapInit<P, M, F> {
    inner: P,
    make: M,
    f: F,
}

/// `map_with(value, f)`: [`MapInit`] whose state is a clone of `value`.
pub type MapWith<P, T, F> = MapInit<P, CloneOf<T>, F>;

impl<P, M, F> MapInit<P, M, F> {
    pub(crate) fn new(inner: P, make: M, f: F) -> Self {
        MapInit { inner, make, f }
    }
}

impl<P, M, F> Sealed for MapInit<P, M, F> {}

impl<In, P, M, F, R> Pipe<In> for MapInit<P, M, F>
where
    P: Pipe<In>,
    M: MakeState,
    F: Fn(&mut M::State, P::Out) -> R + Sync,
{
    type Out = R;
    /// The inner state and the claim's state (`None` until the claim's
    /// first item).
    type State = (P::State, Option<M::State>);
    const ONE_TO_ONE: bool = P::ONE_TO_ONE;
    fn begin(&self) -> Self::State {
        (self.inner.begin(), None)
    }
    #[inline]
    fn apply<I: Iterator<Item = In>>(
        &self,
        env: &WorkerEnv<'_>,
        state: &mut Self::State,
        items: I,
    ) -> impl Iterator<Item = R> {
        let (inner, made) = state;
        self.inner
            .apply(env, inner, items)
            .map(move |x| (self.f)(made.get_or_insert_with(|| self.make.make()), x))
    }
    fn finish(&self, env: &WorkerEnv<'_>, state: Self::State) -> impl Iterator<Item = R> {
        let (inner, mut made) = state;
        self.inner
            .finish(env, inner)
            .map(move |x| (self.f)(made.get_or_insert_with(|| self.make.make()), x))
    }
}

impl<In, P, M, F, R> OneToOne<In> for MapInit<P, M, F>
where
    P: OneToOne<In>,
    M: MakeState,
    F: Fn(&mut M::State, P::Out) -> R + Sync,
{
}

/// `fold(identity, f)`: the items of each claim folded into one value,
/// emitted when the claim ends.
pub struct Fold<P, ID, F> {
    inner: P,
    identity: ID,
    f: F,
}

impl<P, ID, F> Fold<P, ID, F> {
    pub(crate) fn new(inner: P, identity: ID, f: F) -> Self {
        Fold { inner, identity, f }
    }
}

impl<P, ID, F> Sealed for Fold<P, ID, F> {}

impl<In, P, ID, F, A> Pipe<In> for Fold<P, ID, F>
where
    P: Pipe<In>,
    ID: Fn() -> A + Sync,
    F: Fn(A, P::Out) -> A + Sync,
{
    type Out = A;
    /// The inner state and the claim's accumulator (`None` until the
    /// claim's first chunk and while a chunk folds).
    type State = (P::State, Option<A>);
    const ONE_TO_ONE: bool = false;
    fn begin(&self) -> Self::State {
        (self.inner.begin(), None)
    }
    #[inline]
    fn apply<I: Iterator<Item = In>>(
        &self,
        env: &WorkerEnv<'_>,
        state: &mut Self::State,
        items: I,
    ) -> impl Iterator<Item = A> {
        let acc = state.1.take().unwrap_or_else(&self.identity);
        let acc = self
            .inner
            .apply(env, &mut state.0, items)
            .fold(acc, |a, x| (self.f)(a, x));
        state.1 = Some(acc);
        core::iter::empty()
    }
    fn finish(&self, env: &WorkerEnv<'_>, state: Self::State) -> impl Iterator<Item = A> {
        let (inner, acc) = state;
        let acc = acc.unwrap_or_else(&self.identity);
        let acc = self
            .inner
            .finish(env, inner)
            .fold(acc, |a, x| (self.f)(a, x));
        core::iter::once(acc)
    }
}
