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
//! A bridged call streams, as rayon's `par_bridge` does, budget or not:
//! without a budget its batches hold at most 4,096 items per worker
//! ([`BRIDGE_ITEMS_PER_WORKER`](super::pool::BRIDGE_ITEMS_PER_WORKER)),
//! 16 MiB of items in the buffer, and stop being pulled once main's items
//! took 16 MiB (what they own; both 16 MiB from a 16 GiB process limit
//! up, 1/1024 of it below: `bridge_buffer_bytes`), so the memory a
//! bridged call holds is bounded by the items in flight, not by the input.
//! Under a budget, what the items own is bounded the same way, by the
//! budget if less: the budget's per-item measure sees only what tasks
//! allocate (256 items of 1 MiB under a 64 MiB budget peaked at 135 MiB,
//! now 39 MiB).
//! It pulled the whole iterator into one batch before: over the lines of a
//! 100 MB file the process peaked at 241 MiB resident and kept 188 MiB
//! after the call (the items' bytes, in the system allocator, where
//! `unguarded` puts them); now 7.8 MiB both, rayon 3 MiB. Batches that
//! small cost no time there (a batch is a phase: freeze, wake, thaw): the
//! call takes 0.80× the time it took before, 1.09× rayon's (docs/par.md).
//!
//! An empty input runs no phase.

use super::batch::{n_chunks, progress_bytes};
use super::pipe::Pipe;
use super::pool::{bridge_buffer_bytes, Runtime};
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
        let mut writable = Ok(());
        src.lent_mut(&mut |address, bytes| {
            if writable.is_ok() {
                writable = rt.check_writable(address, bytes);
            }
        });
        writable?;
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
/// the workers start on them, one batch at a time, bounded with or
/// without a memory budget (see the module's docs). Made by
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
        // The items may also take no more than the scratch bound (or the
        // budget, if less) of new memory as they are made (what they own:
        // a line's bytes, a read's buffer), which the budget's per-item
        // measure, of what tasks allocate, does not see.
        let owned = rt
            .memory_budget
            .map_or(bridge_buffer_bytes(), |b| b.min(bridge_buffer_bytes()));
        loop {
            let batch_len =
                rt.next_bridge_batch_len(ran, per_item, core::mem::size_of::<I::Item>());
            if held < batch_len && !ended {
                let want = batch_len - held;
                let pulled;
                (pulled, ended) = pull(&mut iter, &mut scratch.items, held, want, owned);
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

/// The most items [`pull`] makes between two looks at what they own (a
/// relaxed load).
const OWNED_CHECK: usize = 256;

/// Pulls up to `want` items of `iter` into `buf` after the `held` items at
/// its start (kept); returns how many it pulled and whether `iter` ended.
///
/// It stops early once the process committed more than `owned` bytes
/// since it began — the items' own allocations, made inside `unguarded`,
/// are charged there as system memory, byte for byte — looked at after 1,
/// 2, 4, … and then every [`OWNED_CHECK`] items (so it overshoots by at
/// most as many items again as it had made, or `OWNED_CHECK`): items that
/// own large buffers (a file's chunks) then make small batches, which a
/// count of items alone would not bound. Committed bytes are the
/// process's, so memory another thread commits or gives back meanwhile
/// can only make the batch smaller (a fall wraps past `owned`). (Until
/// 2026-12-07 system memory was not charged, and main's was counted here
/// apart, by a thread-local count that never went down.)
///
/// Items are produced inside `unguarded`, so memory they own is not frozen
/// and tasks may write it. If the iterator panics, the buffer's items
/// (those held and those pulled) are dropped before the panic goes on to
/// main's caller.
fn pull<I: Iterator>(
    iter: &mut I,
    buf: &mut super::scratch::ScratchBuf,
    held: usize,
    want: usize,
    owned: usize,
) -> (usize, bool) {
    unguarded(|| {
        let max = held.saturating_add(want);
        // What the items own: the process's committed bytes, which count
        // what the thread takes from the system allocator (`unguarded`
        // routes there) too.
        let owned_now = crate::heap::process::committed;
        let at_start = owned_now();
        // Looks at the count after 1, 2, 4, … items, then every
        // OWNED_CHECK: a few large items stop the batch early, and a
        // million small ones pay one load every OWNED_CHECK.
        let mut step = 1;
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
            let (start, room) = (items.len, (cap.min(max) - items.len).min(step));
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
            let ended = n - start < room;
            let full = owned_now().wrapping_sub(at_start) > owned;
            if ended || n == max || full {
                // The items stay in the buffer, now the caller's.
                core::mem::forget(items);
                break (n - held, ended);
            }
            step = (step * 2).min(OWNED_CHECK);
            if n == cap {
                cap = items.buf.grow::<I::Item>(n, n * 2);
            }
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
