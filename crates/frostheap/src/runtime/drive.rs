//! Drivers: how a parallel call walks its input batch by batch.
//!
//! Every call takes the runtime's phase lock (one phase at a time), checks
//! that data lent for mutation is writable, and cuts its input into
//! batches: one batch without a memory budget; with one, the first batch
//! has one item per worker and later ones `budget / bytes_per_item` items,
//! from the largest per-item consumption measured so far in this call. An
//! indexed source is run in place, batch after batch; an arbitrary
//! iterator ([`Bridge`]) is pulled on main into the runtime's scratch
//! buffer first, one batch at a time.
//!
//! An empty input runs no phase.

use super::batch::{n_chunks, progress_bytes};
use super::pipe::Pipe;
use super::pool::Runtime;
use super::sealed::Sealed;
use super::source::{ParSource, Pulled};
use super::terminal::Terminal;
use crate::error::Error;
use crate::global::unguarded;

/// A pipeline and a terminal, as a driver takes them (one parameter, so
/// that the terminal's item type can be named from the pipeline's).
pub trait Job<In> {
    /// The pipeline.
    type P: Pipe<In>;
    /// The terminal operation.
    type T: Terminal<<Self::P as Pipe<In>>::Out>;
    /// Both.
    #[doc(hidden)]
    fn parts(&mut self) -> (&Self::P, &mut Self::T);
}

/// A pipeline and a terminal operation, borrowed for one call.
pub struct Call<'a, P, T> {
    pub(crate) pipe: &'a P,
    pub(crate) term: &'a mut T,
}

impl<In, P: Pipe<In>, T: Terminal<P::Out>> Job<In> for Call<'_, P, T> {
    type P = P;
    type T = T;
    fn parts(&mut self) -> (&P, &mut T) {
        (self.pipe, self.term)
    }
}

/// An input a parallel call can walk: an indexed [`ParSource`] or a
/// [`Bridge`] over an arbitrary iterator. Sealed.
pub trait Drive: Sealed {
    /// What a task receives.
    type Item: Send;
    /// Runs every item through `pipe` into `term`.
    #[doc(hidden)]
    fn drive<J: Job<Self::Item>>(self, rt: &Runtime, job: J) -> Result<(), Error>;
}

/// An indexed source as a parallel input (what [`Runtime::par`] makes).
pub struct Indexed<S>(pub(crate) S);

impl<S> Sealed for Indexed<S> {}

impl<S: ParSource> Drive for Indexed<S> {
    type Item = S::Item;
    fn drive<J: Job<Self::Item>>(self, rt: &Runtime, mut job: J) -> Result<(), Error> {
        let (pipe, term) = job.parts();
        rt.enter_call();
        let mut src = self.0;
        if let Some((address, bytes)) = src.lent_mut() {
            rt.check_writable(address, bytes)?;
        }
        src.hand_over();
        let _turn = rt.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut scratch = rt.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let total = src.len();
        let (mut base, mut per_item, mut rolled_back) = (0usize, 0usize, false);
        while base < total {
            let n = rt.next_batch_len(base == 0, per_item).min(total - base);
            rt.record_batch(n);
            term.prepare_batch(rt, base, n, n_chunks(n, rt.n_workers));
            let progress = scratch.state.zeroed_bytes(progress_bytes(n, rt.n_workers));
            // SAFETY: items [base, base + n) were never taken (batches
            // follow each other); `progress` is zeroed, large enough, and
            // ours while the scratch lock is held; prepare_batch was called.
            let r = unsafe {
                rt.run_batch(
                    &src,
                    base,
                    n,
                    progress,
                    pipe,
                    term,
                    &mut per_item,
                    &mut rolled_back,
                )
            };
            if rolled_back {
                term.leak_batch();
            }
            term.finish_batch(r.is_ok());
            base += n;
            if r.is_err() || term.stopped() {
                // SAFETY: later batches' items were never taken.
                unsafe { src.drop_untaken(base..total) };
                return r;
            }
        }
        Ok(())
    }
}

/// An arbitrary iterator as a parallel input: main pulls its items into
/// the runtime's scratch buffer (system memory, kept across calls) before
/// the workers start on them, one batch at a time. Made by
/// [`Runtime::par_bridge`](super::Runtime::par_bridge).
pub struct Bridge<I>(pub(crate) I);

impl<I> Sealed for Bridge<I> {}

impl<I> Drive for Bridge<I>
where
    I: Iterator,
    I::Item: Send,
{
    type Item = I::Item;
    fn drive<J: Job<Self::Item>>(self, rt: &Runtime, mut job: J) -> Result<(), Error> {
        let (pipe, term) = job.parts();
        rt.enter_call();
        let _turn = rt.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut scratch = rt.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut iter = self.0;
        let (mut base, mut per_item, mut rolled_back) = (0usize, 0usize, false);
        loop {
            let batch_len = rt.next_batch_len(base == 0, per_item);
            let n = pull(&mut iter, &mut scratch.items, batch_len);
            if n == 0 {
                return Ok(());
            }
            rt.record_batch(n);
            term.prepare_batch(rt, base, n, n_chunks(n, rt.n_workers));
            let progress = scratch.state.zeroed_bytes(progress_bytes(n, rt.n_workers));
            // The batch's items sit at the start of the scratch buffer; the
            // source indexes them by their input index, base..base + n.
            let src = Pulled {
                ptr: scratch.items.ptr::<I::Item>().wrapping_sub(base),
                len: base + n,
            };
            // SAFETY: the n pulled items are initialised and owned by this
            // batch; `progress` is zeroed, large enough and ours while the
            // scratch lock is held; prepare_batch was called.
            let r = unsafe {
                rt.run_batch(
                    &src,
                    base,
                    n,
                    progress,
                    pipe,
                    term,
                    &mut per_item,
                    &mut rolled_back,
                )
            };
            if rolled_back {
                term.leak_batch();
            }
            term.finish_batch(r.is_ok());
            base += n;
            if r.is_err() || term.stopped() || batch_len == usize::MAX {
                return r;
            }
        }
    }
}

/// Pulls up to `max` items of `iter` into `buf` (from its start); returns
/// how many. Items are produced inside `unguarded`, so memory they own is
/// not frozen and tasks may write it.
fn pull<I: Iterator>(iter: &mut I, buf: &mut super::scratch::ScratchBuf, max: usize) -> usize {
    unguarded(|| {
        let hint = iter.size_hint().0.min(max);
        let mut cap = buf.reserve::<I::Item>(hint.max(64));
        let mut n = 0usize;
        loop {
            // A tight inner loop over the room known to be there (no
            // capacity check per item, so copies of plain items vectorise),
            // then grow if the iterator has more.
            let room = cap.min(max) - n;
            let dst = buf.ptr::<I::Item>();
            // Internal iteration (`for_each`): adapters and slice
            // iterators drive it with their own tight loops.
            let mut filled = 0usize;
            iter.by_ref().take(room).for_each(|x| {
                // SAFETY: n + filled < cap, inside the scratch buffer,
                // which is aligned for any T of alignment up to a page.
                unsafe { dst.add(n + filled).write(x) };
                filled += 1;
            });
            n += filled;
            if filled < room || n == max {
                break n;
            }
            cap = buf.grow::<I::Item>(n, n * 2);
        }
    })
}
