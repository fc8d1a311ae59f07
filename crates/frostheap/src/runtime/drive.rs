//! Drivers: how a parallel call walks its input batch by batch.
//!
//! Every call takes the runtime's phase lock (one phase at a time), checks
//! that data lent for mutation is writable, and cuts its input into
//! batches: one batch without a memory budget; with one, the first batch
//! has one item per worker and later ones `budget / bytes_per_item` items,
//! from the largest per-item consumption measured so far in this call, but
//! at most twice the items the batch before ran
//! ([`Runtime::next_batch_len`]). A budgeted batch may end before its last
//! item when its items reach the budget (`batch.rs`); the next batch starts
//! at the first item it did not run. An indexed source is run in place,
//! batch after batch; an arbitrary iterator ([`Bridge`]) is pulled on main
//! into the runtime's scratch buffer first, one batch at a time, and the
//! items a batch left are kept at the buffer's start for the next.
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
        let (mut base, mut ran, mut per_item) = (0usize, 0usize, 0usize);
        while base < total {
            let n = rt.next_batch_len(ran, per_item).min(total - base);
            term.prepare_batch(rt, base, n, n_chunks(n, rt.n_workers));
            let progress = scratch.state.zeroed_bytes(progress_bytes(n, rt.n_workers));
            // SAFETY: items [base, base + n) were never taken (each batch
            // starts after the items the one before ran); `progress` is
            // zeroed, large enough, and ours while the scratch lock is
            // held; prepare_batch was called.
            let r = unsafe { rt.run_batch(&src, base, n, progress, pipe, term, &mut per_item) };
            match r {
                Ok(k) if !term.stopped() => {
                    ran = k;
                    base += k;
                }
                r => {
                    // The batch dropped its own untaken items.
                    // SAFETY: later batches' items were never taken.
                    unsafe { src.drop_untaken(base + n..total) };
                    return r.map(drop);
                }
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
        let (mut base, mut ran, mut per_item) = (0usize, 0usize, 0usize);
        // Items pulled and not yet run, at the buffer's start (those a
        // batch that reached its budget left), and whether `iter` ended.
        let (mut held, mut ended) = (0usize, false);
        loop {
            let batch_len = rt.next_batch_len(ran, per_item);
            if held < batch_len && !ended {
                let want = batch_len - held;
                let pulled = pull(&mut iter, &mut scratch.items, held, want);
                ended = pulled < want;
                held += pulled;
            }
            let n = held.min(batch_len);
            if n == 0 {
                return Ok(());
            }
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
            let r = unsafe { rt.run_batch(&src, base, n, progress, pipe, term, &mut per_item) };
            let buf = scratch.items.ptr::<I::Item>();
            match r {
                Ok(k) if !term.stopped() => {
                    // SAFETY: items [k, held) of the buffer are initialised
                    // and not taken; they move to its start, for the next
                    // batch (`copy`: the ranges may overlap).
                    unsafe { core::ptr::copy(buf.add(k), buf, held - k) };
                    (ran, held) = (k, held - k);
                    base += k;
                }
                r => {
                    // The batch dropped its own untaken items; those pulled
                    // beyond it are ours to drop.
                    // SAFETY: items [n, held) of the buffer are initialised,
                    // never taken, and dropped once, here.
                    unsafe {
                        core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                            buf.add(n),
                            held - n,
                        ))
                    };
                    return r.map(drop);
                }
            }
        }
    }
}

/// Pulls up to `want` items of `iter` into `buf` after the `held` items at
/// its start (kept); returns how many it pulled. Items are produced inside
/// `unguarded`, so memory they own is not frozen and tasks may write it.
/// If the iterator panics, the buffer's items (those held and those
/// pulled) are dropped before the panic goes on to main's caller.
fn pull<I: Iterator>(
    iter: &mut I,
    buf: &mut super::scratch::ScratchBuf,
    held: usize,
    want: usize,
) -> usize {
    unguarded(|| {
        let max = held.saturating_add(want);
        let hint = iter.size_hint().0.min(want);
        let mut cap = buf.reserve::<I::Item>(held, (held + hint).max(64));
        let mut items = Filled::<I::Item> {
            buf,
            len: held,
            _items: core::marker::PhantomData,
        };
        loop {
            // A tight inner loop over the room known to be there (no
            // capacity check per item, so copies of plain items vectorise),
            // then grow if the iterator has more.
            let (start, room) = (items.len, cap.min(max) - items.len);
            let dst = items.buf.ptr::<I::Item>();
            let len = &mut items.len;
            // Internal iteration (`for_each`): adapters and slice
            // iterators drive it with their own tight loops.
            iter.by_ref().take(room).for_each(|x| {
                // SAFETY: *len < cap, inside the scratch buffer, which is
                // aligned for any T of alignment up to a page.
                unsafe { dst.add(*len).write(x) };
                *len += 1;
            });
            let n = items.len;
            if n - start < room || n == max {
                // The items stay in the buffer, now the caller's.
                core::mem::forget(items);
                break n - held;
            }
            cap = items.buf.grow::<I::Item>(n, n * 2);
        }
    })
}

/// The first `len` items of a scratch buffer while [`pull`] fills it:
/// dropped with it if the iterator panics (a normal return forgets it).
struct Filled<'a, T> {
    buf: &'a mut super::scratch::ScratchBuf,
    len: usize,
    _items: core::marker::PhantomData<T>,
}

impl<T> Drop for Filled<'_, T> {
    fn drop(&mut self) {
        // SAFETY: items [0, len) of the buffer are initialised (held from
        // the last batch or written by `pull`) and, as the panic unwinds
        // out of the drive, owned by nothing else; dropped once, here.
        unsafe {
            core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                self.buf.ptr::<T>(),
                self.len,
            ))
        };
    }
}
