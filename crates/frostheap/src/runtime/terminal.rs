//! Terminal operations: what a parallel call does with its pipeline's
//! items — write them into result slots, gather them in order, fold them
//! into one value, or look for one (`any`, `find_any`, `try_for_each`).
//!
//! A [`Terminal`] consumes each chunk's items on the worker that claimed
//! the chunk, keeping per-claim state (a claim is a run of consecutive
//! chunks, see `batch.rs`), and publishes the claim's partial when the claim
//! ends. Reductions combine partials **on the workers**: a finished claim's
//! partial merges with the partials of the claims right before and after it
//! if they are done ([`Segments`]), so partials are combined in input order
//! (an `op` need only be associative, as with rayon) and main receives one
//! value per batch.
//!
//! Partials are plain values built by the tasks; whatever they allocate
//! comes from the worker's context heap, like any task allocation in
//! global mode.

use core::ops::{ControlFlow, Range};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::pool::Runtime;
use crate::global::unguarded;
use crate::guard;

/// What a parallel call does with its items of type `T`.
pub trait Terminal<T>: Sync {
    /// State kept over one claim.
    type State;
    /// Results go straight into slots, one per input item, in order (the
    /// engine then drops the written ones after an error).
    const SLOTS: bool = false;
    /// A claim whose chunks stopped running because the terminal stopped
    /// ([`Terminal::stopped_at`]) still ends ([`Terminal::end_claim`],
    /// after `fold`'s partial), so that its partial is published: for a
    /// reduction that stops, whose result must cover every claim. Without
    /// it such a claim's state is dropped.
    const ENDS_HALTED_CLAIMS: bool = false;
    /// Called on main before batch `[base, base + n)`, cut into `chunks`
    /// chunks.
    fn prepare_batch(&mut self, rt: &Runtime, base: usize, n: usize, chunks: usize);
    /// Called on main after the batch: `Some(ran)` when its first `ran`
    /// items ran (all of them, or the chunks a budgeted batch claimed
    /// before it reached the budget: a prefix, whose claims all ended),
    /// `None` after an error.
    fn finish_batch(&mut self, ran: Option<usize>);
    /// Whether the values written to slots need drop (for `SLOTS`): the
    /// batch engine counts those it keeps after a rollback.
    const SLOT_VALUES_NEED_DROP: bool = false;
    /// Called on main after a batch whose violating stores the rollback
    /// policy undid, before [`Terminal::finish_batch`]: the values the
    /// batch's tasks made are never dropped, as they may rest on a store
    /// that was undone (see [`Runtime::run_batch`]), but the terminal's
    /// own containers of them (a piece's buffer) are freed, the values'
    /// bytes forgotten in place. Returns how many values it kept that need
    /// drop (a value that needs none owns nothing, and nothing of it is
    /// kept). Terminals that keep nothing the tasks made need not act;
    /// slots are never dropped then either (the batch engine skips them).
    ///
    /// [`Runtime::run_batch`]: super::pool::Runtime
    fn leak_batch(&mut self) -> usize {
        0
    }
    /// State for a new claim.
    fn begin(&self) -> Self::State;
    /// Consumes the items of one chunk; `first` is the input index of the
    /// chunk's first item.
    fn consume<I: Iterator<Item = T>>(&self, state: &mut Self::State, first: usize, items: I);
    /// Publishes the partial of the claim of chunks `claim`.
    fn end_claim(&self, claim: Range<usize>, state: Self::State);
    /// Whether the outcome is decided and no further chunk need be
    /// claimed. Once true it stays true, and the items still needed (see
    /// [`Terminal::stopped_at`]) lie in chunks claimed before it became
    /// true; the call then ends after this batch.
    fn stopped(&self) -> bool {
        false
    }
    /// Whether the items from input index `first` on need not run (checked
    /// before each chunk). The items before the one that decided the
    /// outcome may still be needed: `try_for_each` keeps running them, as
    /// one of them may fail first. Defaults to [`Terminal::stopped`].
    fn stopped_at(&self, first: usize) -> bool {
        let _ = first;
        self.stopped()
    }
    /// The result slots the workers write this batch, `(address, bytes)`,
    /// for terminals that write slots.
    fn slot_window(&self) -> Option<(usize, usize)> {
        None
    }
    /// Drops the results in slots `range` of the current batch (the items'
    /// indices minus the batch's base); only for `SLOTS`.
    ///
    /// # Safety
    /// 1. Those results were written and nothing else owns them.
    unsafe fn drop_results(&self, range: Range<usize>) {
        let _ = range;
    }
}

/// The result slots of a batch: each index written by one worker.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);

impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// Slot `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}
// SAFETY: each index is written by exactly one worker (claimed through the
// atomic cursor) and read by main only after the phase.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

// ---------------------------------------------------------------- slots

/// `collect` of a one-to-one pipeline: each result written straight into
/// its slot of the output `Vec`, no second buffer and no copy.
pub(crate) struct SlotCollect<R> {
    pub(crate) out: Vec<R>,
    /// The current batch's first slot and first input index.
    slots: SyncPtr<R>,
    base: usize,
    n: usize,
}

impl<R> SlotCollect<R> {
    pub(crate) fn new() -> Self {
        SlotCollect {
            out: unguarded(Vec::new),
            slots: SyncPtr(core::ptr::null_mut()),
            base: 0,
            n: 0,
        }
    }
}

// SAFETY: workers reach a SlotCollect only through `consume` and
// `drop_results`, which write and drop distinct slots through the raw
// pointer (each index belongs to one worker); `out` itself is touched by
// main only, between phases.
unsafe impl<R: Send> Sync for SlotCollect<R> {}

impl<R: Send> Terminal<R> for SlotCollect<R> {
    type State = ();
    const SLOTS: bool = true;
    const SLOT_VALUES_NEED_DROP: bool = core::mem::needs_drop::<R>();
    fn prepare_batch(&mut self, rt: &Runtime, base: usize, n: usize, _: usize) {
        rt.reserve_results(&mut self.out, n);
        // SAFETY: `len + n <= capacity` after the reserve, so the slots lie
        // inside the allocation.
        self.slots = SyncPtr(unsafe { self.out.as_mut_ptr().add(self.out.len()) });
        self.base = base;
        self.n = n;
    }
    fn finish_batch(&mut self, ran: Option<usize>) {
        if let Some(ran) = ran {
            debug_assert!(
                ran <= self.n,
                "frostheap: a batch ran more items than it had"
            );
            // SAFETY: the batch's first `ran` items ran, so slots
            // [len, len + ran) are initialised.
            unsafe { self.out.set_len(self.out.len() + ran) };
        }
    }
    fn begin(&self) {}
    #[inline]
    fn consume<I: Iterator<Item = R>>(&self, _: &mut (), first: usize, items: I) {
        let mut slot = self.slots.get(first.wrapping_sub(self.base));
        items.for_each(|r| {
            // SAFETY: the engine hands each index of the batch to one
            // worker, in order, and the pipeline is one-to-one: `slot` is
            // the result slot of the item that made `r`.
            unsafe { slot.write(r) };
            slot = slot.wrapping_add(1);
        });
    }
    fn end_claim(&self, _: Range<usize>, _: ()) {}
    fn slot_window(&self) -> Option<(usize, usize)> {
        Some((self.slots.0 as usize, self.n * core::mem::size_of::<R>()))
    }
    unsafe fn drop_results(&self, range: Range<usize>) {
        for i in range {
            // SAFETY: by (1).
            unsafe { core::ptr::drop_in_place(self.slots.get(i)) };
        }
    }
}

// ---------------------------------------------------------------- pieces

/// `collect` of a pipeline that filters or expands: each claim gathers its
/// items in a `Vec`; main concatenates the pieces in input order once at
/// the end (one copy, as rayon's `collect` of an unindexed iterator).
pub(crate) struct PieceCollect<R> {
    /// `(batch, first chunk, items)` per finished claim.
    pieces: Mutex<Vec<(usize, usize, Vec<R>)>>,
    batch: usize,
}

impl<R> PieceCollect<R> {
    pub(crate) fn new() -> Self {
        PieceCollect {
            pieces: Mutex::new(unguarded(Vec::new)),
            batch: 0,
        }
    }

    /// The items in input order.
    pub(crate) fn into_vec(self) -> Vec<R> {
        let mut pieces = self.pieces.into_inner().unwrap_or_else(|e| e.into_inner());
        pieces.sort_unstable_by_key(|&(b, c, _)| (b, c));
        if pieces.len() == 1 {
            return pieces.pop().expect("one piece").2;
        }
        let total = pieces.iter().map(|p| p.2.len()).sum();
        let mut out = Vec::with_capacity(total);
        for (_, _, mut v) in pieces {
            out.append(&mut v);
        }
        out
    }
}

impl<R: Send> Terminal<R> for PieceCollect<R> {
    type State = Vec<R>;
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, chunks: usize) {
        // Room for one piece per claim (at most one claim per chunk), made
        // on main in system memory, so workers never grow the list.
        let pieces = self.pieces.get_mut().unwrap_or_else(|e| e.into_inner());
        unguarded(|| pieces.reserve(chunks));
    }
    fn leak_batch(&mut self) -> usize {
        let batch = self.batch;
        let pieces = self.pieces.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut kept = 0;
        // Kept in input order by `into_vec`, which an error never reaches.
        for (_, _, mut piece) in
            unguarded(|| pieces.extract_if(.., |p| p.0 == batch).collect::<Vec<_>>())
        {
            if core::mem::needs_drop::<R>() {
                kept += piece.len();
            }
            // SAFETY: length 0 is within the capacity, and the values are
            // forgotten in place: their bytes are never read again, and
            // what they own is never freed. The buffer is the terminal's
            // own (made by the worker's `consume`, never lent to a task),
            // so nothing can point into it, and it is freed below.
            unsafe { piece.set_len(0) };
        }
        kept
    }
    fn finish_batch(&mut self, _: Option<usize>) {
        self.batch += 1;
    }
    fn begin(&self) -> Vec<R> {
        Vec::new()
    }
    #[inline]
    fn consume<I: Iterator<Item = R>>(&self, piece: &mut Vec<R>, _: usize, items: I) {
        piece.extend(items);
    }
    fn end_claim(&self, claim: Range<usize>, piece: Vec<R>) {
        if !piece.is_empty() {
            let mut pieces = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
            pieces.push((self.batch, claim.start, piece));
        }
    }
}

// ---------------------------------------------------------------- for_each

/// `for_each(f)`.
pub(crate) struct ForEach<F>(pub(crate) F);

impl<T, F: Fn(T) + Sync> Terminal<T> for ForEach<F> {
    type State = ();
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, _: usize) {}
    fn finish_batch(&mut self, _: Option<usize>) {}
    fn begin(&self) {}
    #[inline]
    fn consume<I: Iterator<Item = T>>(&self, _: &mut (), _: usize, items: I) {
        items.for_each(|x| (self.0)(x));
    }
    fn end_claim(&self, _: Range<usize>, _: ()) {}
}

// ---------------------------------------------------------------- any

/// `any(p)` (and `all` as `!any(!p)`): stops as soon as one item matches.
pub(crate) struct Any<F> {
    p: F,
    found: AtomicBool,
}

impl<F> Any<F> {
    pub(crate) fn new(p: F) -> Self {
        Any {
            p,
            found: AtomicBool::new(false),
        }
    }
    pub(crate) fn found(&self) -> bool {
        self.found.load(Ordering::Relaxed)
    }
}

impl<T, F: Fn(T) -> bool + Sync> Terminal<T> for Any<F> {
    type State = ();
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, _: usize) {}
    fn finish_batch(&mut self, _: Option<usize>) {}
    fn begin(&self) {}
    #[inline]
    fn consume<I: Iterator<Item = T>>(&self, _: &mut (), _: usize, mut items: I) {
        // Another worker's find ends this chunk at its next item.
        if items.any(|x| self.found.load(Ordering::Relaxed) || (self.p)(x)) {
            self.found.store(true, Ordering::Relaxed);
        }
    }
    fn end_claim(&self, _: Range<usize>, _: ()) {}
    fn stopped(&self) -> bool {
        self.found()
    }
}

// ---------------------------------------------------------------- try_for_each

/// `try_for_each(f)`: runs `f` on every item until one returns `Err`, and
/// keeps the error of the first failing item in input order.
///
/// An item's place in input order is its input index (items that `filter`
/// or `flat_map_iter` made from one input item run in order on one worker,
/// which stops at the first of them that fails). `fold` emits its partials
/// when a claim ends, outside any item: a partial's place is its claim's
/// last chunk (claims are disjoint runs of chunks), kept in the claim's
/// state. Once an item has failed, items after it are skipped: the chunks
/// after it at their start ([`Terminal::stopped_at`]), the items of a
/// running chunk one by one; the items before it still run, since one of
/// them may fail too and come first. Every chunk not yet claimed lies after
/// the failing item (the cursor only moves forward), so no new chunk is
/// claimed ([`Terminal::stopped`]).
pub(crate) struct TryForEach<F, E> {
    f: F,
    /// The place of the first failing item found so far (`usize::MAX`:
    /// none); only decreases, and equals `error`'s place.
    first_err: AtomicUsize,
    /// That item's error.
    error: Mutex<Option<(usize, E)>>,
}

impl<F, E> TryForEach<F, E> {
    pub(crate) fn new(f: F) -> Self {
        TryForEach {
            f,
            first_err: AtomicUsize::new(usize::MAX),
            error: Mutex::new(None),
        }
    }

    /// The error of the first failing item, if any.
    pub(crate) fn into_result(self) -> Result<(), E> {
        match self.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Keeps `e` if its item, at `place`, comes before every failing item
    /// found so far.
    #[cold]
    fn record(&self, place: usize, e: E) {
        let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if error.as_ref().is_none_or(|&(p, _)| place < p) {
            // A later item's error, if any, is dropped here, on the worker
            // (made in a context heap, it is freed to it as main would).
            *error = Some((place, e));
            self.first_err.store(place, Ordering::Relaxed);
        }
    }
}

impl<T, F, E> Terminal<T> for TryForEach<F, E>
where
    F: Fn(T) -> Result<(), E> + Sync,
    E: Send,
{
    /// The input index of the claim's latest chunk: the place of what
    /// `fold` emits when the claim ends.
    type State = usize;
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, _: usize) {}
    fn leak_batch(&mut self) -> usize {
        // The error may rest on a store the rollback undid.
        let error = self.error.get_mut().unwrap_or_else(|e| e.into_inner());
        error.take().map_or(0, |e| {
            core::mem::forget(e);
            usize::from(core::mem::needs_drop::<E>())
        })
    }
    fn finish_batch(&mut self, _: Option<usize>) {}
    fn begin(&self) -> usize {
        0
    }
    #[inline]
    fn consume<I: Iterator<Item = T>>(&self, latest: &mut usize, first: usize, mut items: I) {
        if first != usize::MAX {
            *latest = first;
        }
        let latest = *latest;
        let _ = items.try_for_each(|x| {
            let place = match guard::current_item() {
                usize::MAX => latest,
                i => i,
            };
            if self.first_err.load(Ordering::Relaxed) < place {
                return ControlFlow::Break(());
            }
            match (self.f)(x) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    self.record(place, e);
                    ControlFlow::Break(())
                }
            }
        });
    }
    fn end_claim(&self, _: Range<usize>, _: usize) {}
    fn stopped(&self) -> bool {
        self.first_err.load(Ordering::Relaxed) != usize::MAX
    }
    fn stopped_at(&self, first: usize) -> bool {
        self.first_err.load(Ordering::Relaxed) < first
    }
}

// ---------------------------------------------------------------- try_reduce

/// `try_reduce(identity, op)` and `try_reduce_with(op)` over items
/// `Result<T, E>`: the `Ok` values combined with `op`, which may fail too,
/// until an item or a combination fails.
///
/// A partial is `Err` from its first failure on, and partials combine in
/// input order (see [`Segments`]) with an `Err` on the left kept, so the
/// call returns the first failure in input order among what ran. What
/// runs is decided as in [`TryForEach`]: once an item, or the combination
/// of an item into its run's partial, has failed, the items after it are
/// skipped (the chunks after it at their start, the items of a running
/// chunk one by one) and those before it still run, so the error of a
/// failing item is always the first failing item's. A combination of two
/// finished partials has no place of its own: its error ends the call too,
/// but skips nothing.
pub(crate) struct TryReduce<OP, T, E>
where
    OP: Fn(T, T) -> Result<T, E> + Sync,
    T: Send,
    E: Send,
{
    reduce: Reduce<TryOp<OP>, Result<T, E>>,
    /// The place of the first failure found so far (`usize::MAX`: none);
    /// only decreases.
    first_err: AtomicUsize,
}

/// [`TryReduce`]'s combination: `op` of two `Ok` values, else the first
/// `Err`.
pub(crate) struct TryOp<OP>(OP);

impl<T: Send, E: Send, OP: Fn(T, T) -> Result<T, E> + Sync> Combine<Result<T, E>> for TryOp<OP> {
    type Acc = Result<T, E>;
    fn fold<I: Iterator<Item = Result<T, E>>>(
        &self,
        acc: Option<Result<T, E>>,
        mut items: I,
    ) -> Option<Result<T, E>> {
        let mut acc = match acc {
            Some(a) => a,
            None => items.next()?,
        };
        for x in items {
            if acc.is_err() {
                break;
            }
            acc = self.combine(acc, x);
        }
        Some(acc)
    }
    fn combine(&self, a: Result<T, E>, b: Result<T, E>) -> Result<T, E> {
        (self.0)(a?, b?)
    }
}

impl<OP, T, E> TryReduce<OP, T, E>
where
    OP: Fn(T, T) -> Result<T, E> + Sync,
    T: Send,
    E: Send,
{
    pub(crate) fn new(op: OP) -> Self {
        TryReduce {
            reduce: Reduce::new(TryOp(op)),
            first_err: AtomicUsize::new(usize::MAX),
        }
    }

    /// The reduction (`None` when no item ran).
    pub(crate) fn into_result(self) -> Option<Result<T, E>> {
        self.reduce.into_result()
    }
}

impl<OP, T, E> Terminal<Result<T, E>> for TryReduce<OP, T, E>
where
    OP: Fn(T, T) -> Result<T, E> + Sync,
    T: Send,
    E: Send,
{
    /// The claim's partial, and the input index of its latest chunk (the
    /// place of what `fold` emits when the claim ends, as in
    /// [`TryForEach`]).
    type State = (Option<Result<T, E>>, usize);
    // The partial of a claim cut short holds the items before the stop,
    // and may hold the first failure.
    const ENDS_HALTED_CLAIMS: bool = true;
    fn prepare_batch(&mut self, rt: &Runtime, base: usize, n: usize, chunks: usize) {
        self.reduce.prepare_batch(rt, base, n, chunks);
    }
    fn leak_batch(&mut self) -> usize {
        self.reduce.leak_batch()
    }
    fn finish_batch(&mut self, ran: Option<usize>) {
        self.reduce.finish_batch(ran);
    }
    fn begin(&self) -> Self::State {
        (None, 0)
    }
    #[inline]
    fn consume<I: Iterator<Item = Result<T, E>>>(
        &self,
        state: &mut Self::State,
        first: usize,
        items: I,
    ) {
        if first != usize::MAX {
            state.1 = first;
        }
        let latest = state.1;
        let mut acc = state.0.take();
        if !matches!(acc, Some(Err(_))) {
            for x in items {
                let place = match guard::current_item() {
                    usize::MAX => latest,
                    i => i,
                };
                if self.first_err.load(Ordering::Relaxed) < place {
                    break;
                }
                let next = match acc {
                    Some(a) => self.reduce.c.combine(a, x),
                    None => x,
                };
                let failed = next.is_err();
                acc = Some(next);
                if failed {
                    self.first_err.fetch_min(place, Ordering::Relaxed);
                    break;
                }
            }
        }
        state.0 = acc;
    }
    fn end_claim(&self, claim: Range<usize>, state: Self::State) {
        self.reduce.end_claim(claim, state.0);
    }
    fn stopped(&self) -> bool {
        self.first_err.load(Ordering::Relaxed) != usize::MAX
    }
    fn stopped_at(&self, first: usize) -> bool {
        self.first_err.load(Ordering::Relaxed) < first
    }
}

// ---------------------------------------------------------------- find_any

/// `find_any(p)`: some item for which `p` holds; stops as soon as one is
/// found, as [`Any`] does, and keeps the first one stored.
pub(crate) struct FindAny<F, T> {
    p: F,
    found: AtomicBool,
    item: Mutex<Option<T>>,
}

impl<F, T> FindAny<F, T> {
    pub(crate) fn new(p: F) -> Self {
        FindAny {
            p,
            found: AtomicBool::new(false),
            item: Mutex::new(None),
        }
    }

    /// The item found, if any.
    pub(crate) fn into_item(self) -> Option<T> {
        self.item.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Send, F: Fn(&T) -> bool + Sync> Terminal<T> for FindAny<F, T> {
    type State = ();
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, _: usize) {}
    fn leak_batch(&mut self) -> usize {
        // The item may rest on a store the rollback undid.
        let item = self.item.get_mut().unwrap_or_else(|e| e.into_inner());
        item.take().map_or(0, |x| {
            core::mem::forget(x);
            usize::from(core::mem::needs_drop::<T>())
        })
    }
    fn finish_batch(&mut self, _: Option<usize>) {}
    fn begin(&self) {}
    #[inline]
    fn consume<I: Iterator<Item = T>>(&self, _: &mut (), _: usize, mut items: I) {
        // Another worker's find ends this chunk at its next item.
        let _ = items.try_for_each(|x| {
            if self.found.load(Ordering::Relaxed) {
                return ControlFlow::Break(());
            }
            if (self.p)(&x) {
                self.keep(x);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
    }
    fn end_claim(&self, _: Range<usize>, _: ()) {}
    fn stopped(&self) -> bool {
        self.found.load(Ordering::Relaxed)
    }
}

impl<F, T> FindAny<F, T> {
    /// Keeps `x` unless another item was kept first (then `x` is dropped
    /// here, on the worker).
    #[cold]
    fn keep(&self, x: T) {
        let mut item = self.item.lock().unwrap_or_else(|e| e.into_inner());
        if item.is_none() {
            *item = Some(x);
            self.found.store(true, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------- reductions

/// An associative way to combine items into one value.
pub(crate) trait Combine<T>: Sync {
    /// A partial result.
    type Acc: Send;
    /// Folds one chunk's items into `acc` (`None`: nothing folded yet).
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<Self::Acc>, items: I) -> Option<Self::Acc>;
    /// Combines the partials of two consecutive ranges, `a` first.
    fn combine(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// Combines two optional partials of consecutive ranges.
fn combine_opt<T, C: Combine<T>>(c: &C, a: Option<C::Acc>, b: Option<C::Acc>) -> Option<C::Acc> {
    match (a, b) {
        (Some(a), Some(b)) => Some(c.combine(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Finished claims' partials, merged with their neighbours as they arrive:
/// a partial covering chunks `[s, e)` is stored at `by_start[s]`, and
/// `start_of[e]` says where the partial ending at `e` starts.
struct SegmentTable<A> {
    by_start: Vec<Option<(usize, Option<A>)>>,
    start_of: Vec<usize>,
}

/// No partial ends here.
const NO_SEGMENT: usize = usize::MAX;

/// Per-batch partials of a reduction, combined on the workers.
pub(crate) struct Segments<A>(Mutex<SegmentTable<A>>);

impl<A> Segments<A> {
    fn new() -> Self {
        Segments(Mutex::new(SegmentTable {
            by_start: unguarded(Vec::new),
            start_of: unguarded(Vec::new),
        }))
    }

    /// Empties the table and sizes it for `chunks` chunks (on main, in
    /// system memory: workers never grow it).
    fn reset(&mut self, chunks: usize) {
        let t = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        unguarded(|| {
            t.by_start.clear();
            t.by_start.resize_with(chunks + 1, || None);
            t.start_of.clear();
            t.start_of.resize(chunks + 1, NO_SEGMENT);
        });
    }

    /// Adds the partial of chunks `range`, merging it with finished
    /// neighbours (outside the lock, so merges of disjoint pairs run at
    /// once on different workers).
    fn insert<T, C: Combine<T, Acc = A>>(&self, c: &C, range: Range<usize>, mut acc: Option<A>) {
        let (mut lo, mut hi) = (range.start, range.end);
        loop {
            let (left, right) = {
                let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
                let left = match t.start_of[lo] {
                    NO_SEGMENT => None,
                    s => {
                        t.start_of[lo] = NO_SEGMENT;
                        t.by_start[s].take().map(|(_, a)| (s, a))
                    }
                };
                let right = t.by_start[hi].take().map(|(e, a)| {
                    t.start_of[e] = NO_SEGMENT;
                    (e, a)
                });
                if left.is_none() && right.is_none() {
                    t.by_start[lo] = Some((hi, acc));
                    t.start_of[hi] = lo;
                    return;
                }
                (left, right)
            };
            if let Some((s, a)) = left {
                acc = combine_opt(c, a, acc);
                lo = s;
            }
            if let Some((e, b)) = right {
                acc = combine_opt(c, acc, b);
                hi = e;
            }
        }
    }

    /// The partial covering every chunk, once all claims have ended.
    fn take_whole(&mut self) -> Option<A> {
        let t = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        t.by_start
            .first_mut()
            .and_then(Option::take)
            .and_then(|(_, a)| a)
    }
}

/// A reduction: per-claim partials, merged on workers, then across
/// batches on main.
pub(crate) struct Reduce<C: Combine<T>, T> {
    c: C,
    segments: Segments<C::Acc>,
    /// The batches done so far (main only; a Mutex so workers may share
    /// `&self` while Acc is only Send).
    acc: Mutex<Option<C::Acc>>,
    _items: core::marker::PhantomData<fn(T)>,
}

impl<T, C: Combine<T>> Reduce<C, T> {
    pub(crate) fn new(c: C) -> Self {
        Reduce {
            c,
            segments: Segments::new(),
            acc: Mutex::new(None),
            _items: core::marker::PhantomData,
        }
    }

    /// The reduction of every item (`None` when there was none).
    pub(crate) fn into_result(self) -> Option<C::Acc> {
        self.acc.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T, C: Combine<T>> Terminal<T> for Reduce<C, T> {
    type State = Option<C::Acc>;
    fn prepare_batch(&mut self, _: &Runtime, _: usize, _: usize, chunks: usize) {
        self.segments.reset(chunks);
    }
    fn leak_batch(&mut self) -> usize {
        let t = self.segments.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut kept = 0;
        for slot in &mut t.by_start {
            if let Some((_, Some(acc))) = slot.take() {
                core::mem::forget(acc);
                kept += usize::from(core::mem::needs_drop::<C::Acc>());
            }
        }
        kept
    }
    fn finish_batch(&mut self, ran: Option<usize>) {
        if ran.is_some() {
            // The claims of a batch that ran a prefix of its chunks ended,
            // so the partial at chunk 0 covers exactly that prefix.
            let batch = self.segments.take_whole();
            let acc = self.acc.get_mut().unwrap_or_else(|e| e.into_inner());
            *acc = combine_opt(&self.c, acc.take(), batch);
        }
    }
    fn begin(&self) -> Option<C::Acc> {
        None
    }
    #[inline]
    fn consume<I: Iterator<Item = T>>(&self, acc: &mut Option<C::Acc>, _: usize, items: I) {
        *acc = self.c.fold(acc.take(), items);
    }
    fn end_claim(&self, claim: Range<usize>, acc: Option<C::Acc>) {
        self.segments.insert(&self.c, claim, acc);
    }
}

/// `reduce(identity, op)` and `reduce_with(op)`.
pub(crate) struct ReduceOp<OP>(pub(crate) OP);

impl<T: Send, OP: Fn(T, T) -> T + Sync> Combine<T> for ReduceOp<OP> {
    type Acc = T;
    #[inline]
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<T>, mut items: I) -> Option<T> {
        let first = match acc {
            Some(a) => a,
            None => items.next()?,
        };
        Some(items.fold(first, &self.0))
    }
    fn combine(&self, a: T, b: T) -> T {
        (self.0)(a, b)
    }
}

/// `sum()` and `product()`: std's `Sum`/`Product` per chunk, then over the
/// partials.
pub(crate) struct SumOp<S>(pub(crate) core::marker::PhantomData<fn() -> S>);
pub(crate) struct ProductOp<S>(pub(crate) core::marker::PhantomData<fn() -> S>);

impl<T, S> Combine<T> for SumOp<S>
where
    S: core::iter::Sum<T> + core::iter::Sum<S> + Send,
{
    type Acc = S;
    #[inline]
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<S>, items: I) -> Option<S> {
        let s: S = items.sum();
        Some(match acc {
            Some(a) => [a, s].into_iter().sum(),
            None => s,
        })
    }
    fn combine(&self, a: S, b: S) -> S {
        [a, b].into_iter().sum()
    }
}

impl<T, S> Combine<T> for ProductOp<S>
where
    S: core::iter::Product<T> + core::iter::Product<S> + Send,
{
    type Acc = S;
    #[inline]
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<S>, items: I) -> Option<S> {
        let p: S = items.product();
        Some(match acc {
            Some(a) => [a, p].into_iter().product(),
            None => p,
        })
    }
    fn combine(&self, a: S, b: S) -> S {
        [a, b].into_iter().product()
    }
}

/// `count()`.
pub(crate) struct CountOp;

impl<T> Combine<T> for CountOp {
    type Acc = usize;
    #[inline]
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<usize>, items: I) -> Option<usize> {
        Some(acc.unwrap_or(0) + items.count())
    }
    fn combine(&self, a: usize, b: usize) -> usize {
        a + b
    }
}

/// `min_by`/`max_by` and their `_key` forms: the first least item, or the
/// last greatest, as std's iterators choose.
pub(crate) struct Extreme<F> {
    pub(crate) cmp: F,
    pub(crate) max: bool,
}

impl<T: Send, F: Fn(&T, &T) -> core::cmp::Ordering + Sync> Combine<T> for Extreme<F> {
    type Acc = T;
    #[inline]
    fn fold<I: Iterator<Item = T>>(&self, acc: Option<T>, mut items: I) -> Option<T> {
        let first = match acc {
            Some(a) => a,
            None => items.next()?,
        };
        Some(items.fold(first, |a, b| self.combine(a, b)))
    }
    #[inline]
    fn combine(&self, a: T, b: T) -> T {
        use core::cmp::Ordering::*;
        match ((self.cmp)(&a, &b), self.max) {
            (Greater, false) => b,
            (_, false) => a,
            (Greater, true) => a,
            (_, true) => b,
        }
    }
}
