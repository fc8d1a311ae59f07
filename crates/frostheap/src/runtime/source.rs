//! Parallel sources: the inputs the workers index directly.
//!
//! A [`ParSource`] hands out item `i` in O(1) from any worker, so a phase
//! starts at once and main only waits, as with rayon's indexed parallel
//! iterators. [`IntoParSource`] turns the usual inputs into one:
//!
//! | input | items |
//! |---|---|
//! | `&[T]`, `&Vec<T>`, `&[T; N]`, `slice.iter()` | `&T` |
//! | `Vec<T>` | `T`, moved into the tasks |
//! | `&mut [T]`, `&mut Vec<T>`, `slice.iter_mut()` | `&mut T` |
//! | `a..b`, `a..=b` over the integer types | the integers |
//! | `slice.chunks(k)`, `slice.chunks_exact(k)` | `&[T]` |
//! | [`chunks_mut`]`(slice, k)` | `&mut [T]` |
//! | `par(a).zip(b)` ([`Zip`]) | `(a's item, b's item)`, as many as the shorter has |
//! | `par(a).skip(k)`, `par(a).take(n)` ([`Skip`], [`Take`]) | `a`'s items from the `k`th, the first `n` |
//!
//! Anything else that iterates goes through
//! [`Runtime::par_bridge`](super::Runtime::par_bridge), which collects the
//! items on main first (a serial step).
//!
//! A source that lends its items mutably reports the bytes it lends
//! ([`ParSource::lent_mut`]); the runtime checks them against the guarded
//! heaps before the phase, in O(1) per guarded heap.

use core::marker::PhantomData;
use core::ops::{Range, RangeInclusive};

use super::sealed::Sealed;

/// An input whose items the workers take by index.
///
/// Implemented by this crate for the types [`IntoParSource`] lists.
///
/// # Safety
/// Implementors: for `i < len()`, `take(i)` returns item `i`, and may be
/// called from any worker thread, concurrently for different `i` (hence
/// `Sync`); `drop_untaken` disposes of items never taken; items borrowed
/// mutably are disjoint for different `i`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an input the workers can index",
    label = "not a slice, Vec, range or chunked view",
    note = "slices, `Vec<T>`, `&Vec<T>`, `&mut [T]`, integer ranges and `slice.chunks(k)` are indexed directly; for any other iterator use `Runtime::par_bridge(iter)` or `Runtime::map_iter(iter, f)`, which collect the items on main first"
)]
pub unsafe trait ParSource: Sync + Sealed {
    /// What a task receives.
    type Item: Send;

    /// Number of items.
    fn len(&self) -> usize;

    /// Whether there is no item.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `i`.
    ///
    /// # Safety
    /// 1. `i < len()`, and item `i` is taken at most once and never also
    ///    passed to `drop_untaken`.
    unsafe fn take(&self, i: usize) -> Self::Item;

    /// Drops items `range`, none of which was taken.
    ///
    /// # Safety
    /// 1. As for `take`, for every index of `range`.
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        let _ = range;
    }

    /// Calls `lent(address, bytes)` for each address range that tasks may
    /// write through the items, for sources that lend them mutably (one
    /// range per mutable slice: a [`Zip`] of two `&mut` slices lends two).
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        let _ = lent;
    }

    /// Whether tasks get `&mut` access to values that may own memory
    /// (values of a type that needs `Drop`), which the caller keeps after
    /// the call. A rollback runtime keeps the violating stores of such a
    /// phase instead of undoing them (`Runtime::run_phase`): a `Vec` a
    /// task pushed to, whose buffer lies in a guarded heap, would
    /// otherwise keep a length that counts an element the undo took back.
    const LENDS_OWNERS: bool = false;

    /// Called once before the first item is taken: from then on the
    /// runtime, not the source's `Drop`, disposes of the items.
    #[doc(hidden)]
    fn hand_over(&mut self) {}
}

/// Conversion into a [`ParSource`]: what [`Runtime::par`](super::Runtime::par),
/// `map` and `for_each` accept (see the table in [`par`](super::par)).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an input the workers can index",
    label = "not a slice, Vec, range or chunked view",
    note = "slices, `Vec<T>`, `&Vec<T>`, `&mut [T]`, integer ranges and `slice.chunks(k)` are indexed directly; for any other iterator use `Runtime::par_bridge(iter)` or `Runtime::map_iter(iter, f)`, which collect the items on main first"
)]
pub trait IntoParSource {
    /// The source.
    type Source: ParSource<Item = Self::Item>;
    /// What a task receives.
    type Item: Send;
    /// Makes the source.
    fn into_par_source(self) -> Self::Source;
}

impl<S: ParSource> IntoParSource for S {
    type Source = S;
    type Item = S::Item;
    fn into_par_source(self) -> S {
        self
    }
}

// ---------------------------------------------------------------- slices

/// Items borrowed from a slice: `&T`.
pub struct SliceRef<'a, T>(&'a [T]);

impl<T> Sealed for SliceRef<'_, T> {}

// SAFETY: take hands out shared references into the slice (T: Sync);
// nothing is owned, so nothing is dropped.
unsafe impl<'a, T: Sync> ParSource for SliceRef<'a, T> {
    type Item = &'a T;
    #[inline]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> &'a T {
        // SAFETY: by (1), i < len.
        unsafe { self.0.get_unchecked(i) }
    }
}

impl<'a, T: Sync> IntoParSource for &'a [T] {
    type Source = SliceRef<'a, T>;
    type Item = &'a T;
    fn into_par_source(self) -> Self::Source {
        SliceRef(self)
    }
}

impl<'a, T: Sync> IntoParSource for &'a Vec<T> {
    type Source = SliceRef<'a, T>;
    type Item = &'a T;
    fn into_par_source(self) -> Self::Source {
        SliceRef(self)
    }
}

impl<'a, T: Sync, const N: usize> IntoParSource for &'a [T; N] {
    type Source = SliceRef<'a, T>;
    type Item = &'a T;
    fn into_par_source(self) -> Self::Source {
        SliceRef(self)
    }
}

impl<'a, T: Sync> IntoParSource for core::slice::Iter<'a, T> {
    type Source = SliceRef<'a, T>;
    type Item = &'a T;
    fn into_par_source(self) -> Self::Source {
        SliceRef(self.as_slice())
    }
}

/// Items borrowed mutably from a slice: `&mut T`, one task per element.
pub struct SliceMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> Sealed for SliceMut<'_, T> {}

impl<'a, T> SliceMut<'a, T> {
    fn new(s: &'a mut [T]) -> Self {
        SliceMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }
}

// SAFETY: SliceMut holds the slice's exclusive borrow and hands each
// element to one task only; `&mut T` may cross threads when T: Send.
unsafe impl<T: Send> Sync for SliceMut<'_, T> {}

// SAFETY: distinct indices give disjoint elements of the exclusively
// borrowed slice; nothing is owned.
unsafe impl<'a, T: Send> ParSource for SliceMut<'a, T> {
    type Item = &'a mut T;
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> &'a mut T {
        // SAFETY: by (1), i < len and element i is handed out once.
        unsafe { &mut *self.ptr.add(i) }
    }
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        lent(self.ptr as usize, self.len * core::mem::size_of::<T>());
    }
    const LENDS_OWNERS: bool = core::mem::needs_drop::<T>();
}

impl<'a, T: Send> IntoParSource for &'a mut [T] {
    type Source = SliceMut<'a, T>;
    type Item = &'a mut T;
    fn into_par_source(self) -> Self::Source {
        SliceMut::new(self)
    }
}

impl<'a, T: Send> IntoParSource for &'a mut Vec<T> {
    type Source = SliceMut<'a, T>;
    type Item = &'a mut T;
    fn into_par_source(self) -> Self::Source {
        SliceMut::new(self)
    }
}

impl<'a, T: Send> IntoParSource for core::slice::IterMut<'a, T> {
    type Source = SliceMut<'a, T>;
    type Item = &'a mut T;
    fn into_par_source(self) -> Self::Source {
        SliceMut::new(self.into_slice())
    }
}

// ---------------------------------------------------------------- owned

/// Items moved out of a `Vec<T>` into the tasks. The `Vec`'s buffer is
/// read in place (no copy) and freed when the source is dropped; items no
/// task took are dropped by the runtime (or by the source's `Drop`, if it
/// never ran).
pub struct VecItems<T> {
    ptr: *mut T,
    len: usize,
    cap: usize,
    /// The items are still the source's: nothing was taken yet.
    owns_items: bool,
}

impl<T> Sealed for VecItems<T> {}

// SAFETY: each item is moved out by one task only, and T: Send.
unsafe impl<T: Send> Sync for VecItems<T> {}
// SAFETY: the buffer is owned; T: Send.
unsafe impl<T: Send> Send for VecItems<T> {}

impl<T> VecItems<T> {
    /// Takes over `v`'s items and buffer.
    pub(crate) fn new(v: Vec<T>) -> Self {
        let mut v = core::mem::ManuallyDrop::new(v);
        VecItems {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
            owns_items: true,
        }
    }
}

// SAFETY: take moves item i out once (the trait's contract); drop_untaken
// drops the rest in place; the buffer itself is freed by Drop without
// dropping items.
unsafe impl<T: Send> ParSource for VecItems<T> {
    type Item = T;
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> T {
        // SAFETY: by (1), item i is initialised and not yet moved out.
        unsafe { self.ptr.add(i).read() }
    }
    fn hand_over(&mut self) {
        self.owns_items = false;
    }
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        if core::mem::needs_drop::<T>() && !range.is_empty() {
            // SAFETY: by (1), these items are initialised and owned here.
            unsafe {
                core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                    self.ptr.add(range.start),
                    range.len(),
                ))
            };
        }
    }
}

impl<T> Drop for VecItems<T> {
    fn drop(&mut self) {
        // A source never run still owns every item; after `hand_over`,
        // every item was taken or dropped by the runtime and only the
        // buffer is freed.
        let len = if self.owns_items { self.len } else { 0 };
        // SAFETY: the parts came from a Vec, and its first `len` items are
        // initialised and ours.
        drop(unsafe { Vec::from_raw_parts(self.ptr, len, self.cap) });
    }
}

impl<T: Send> IntoParSource for Vec<T> {
    type Source = VecItems<T>;
    type Item = T;
    fn into_par_source(self) -> Self::Source {
        VecItems::new(self)
    }
}

// ---------------------------------------------------------------- ranges

/// The integers of a range.
#[derive(Clone, Copy, Debug)]
pub struct RangeItems<T> {
    start: T,
    len: usize,
}

impl<T> Sealed for RangeItems<T> {}

macro_rules! range_sources {
    ($($t:ty),*) => {$(
        // SAFETY: items are computed, not stored: nothing is borrowed or
        // owned.
        unsafe impl ParSource for RangeItems<$t> {
            type Item = $t;
            #[inline]
            fn len(&self) -> usize {
                self.len
            }
            #[inline]
            unsafe fn take(&self, i: usize) -> $t {
                // `i < len` and the range's end fits in the type, so the
                // sum does not wrap (wrapping only to say so to the
                // compiler without a check).
                self.start.wrapping_add(i as $t)
            }
        }

        impl IntoParSource for Range<$t> {
            type Source = RangeItems<$t>;
            type Item = $t;
            fn into_par_source(self) -> Self::Source {
                let len = if self.end > self.start {
                    // The distance fits in u128, and a range of more than
                    // usize::MAX items could not be run anyway.
                    usize::try_from((self.end as i128 - self.start as i128) as u128)
                        .expect("frostheap: a range of more than usize::MAX items")
                } else {
                    0
                };
                RangeItems { start: self.start, len }
            }
        }

        impl IntoParSource for RangeInclusive<$t> {
            type Source = RangeItems<$t>;
            type Item = $t;
            fn into_par_source(self) -> Self::Source {
                let (start, end) = (*self.start(), *self.end());
                if self.is_empty() {
                    return RangeItems { start, len: 0 };
                }
                let len = usize::try_from((end as i128 - start as i128) as u128 + 1)
                    .expect("frostheap: a range of more than usize::MAX items");
                RangeItems { start, len }
            }
        }
    )*};
}

range_sources!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

// ---------------------------------------------------------------- chunks

/// Consecutive sub-slices of a slice: `&[T]`, each `size` long but the
/// last. Made by [`chunks`].
pub struct ChunksRef<'a, T> {
    slice: &'a [T],
    size: usize,
    n: usize,
}

impl<T> Sealed for ChunksRef<'_, T> {}

impl<'a, T> ChunksRef<'a, T> {
    fn new(slice: &'a [T], size: usize) -> Self {
        assert!(size != 0, "frostheap: chunk size must be at least 1");
        let n = slice.len().div_ceil(size);
        ChunksRef { slice, size, n }
    }
}

// SAFETY: shared sub-slices (T: Sync); nothing owned.
unsafe impl<'a, T: Sync> ParSource for ChunksRef<'a, T> {
    type Item = &'a [T];
    fn len(&self) -> usize {
        self.n
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> &'a [T] {
        let start = i * self.size;
        let end = (start + self.size).min(self.slice.len());
        // SAFETY: by (1), i < n, so start < end <= len.
        unsafe { self.slice.get_unchecked(start..end) }
    }
}

/// The chunks of std's `slice.chunks(k)` or `slice.chunks_exact(k)`: item
/// `i` is `iter.clone().nth(i)`, which std computes in O(1) for these two
/// iterators (an offset and a sub-slice), so the borrow stays the one std
/// made.
pub struct StdChunks<I>(I);

impl<I> Sealed for StdChunks<I> {}

macro_rules! std_chunks {
    ($($it:ident),*) => {$(
        // SAFETY: items are shared sub-slices produced by std's own
        // iterator (T: Sync); nothing is owned.
        unsafe impl<'a, T: Sync> ParSource for StdChunks<core::slice::$it<'a, T>> {
            type Item = &'a [T];
            fn len(&self) -> usize {
                self.0.len()
            }
            #[inline]
            unsafe fn take(&self, i: usize) -> &'a [T] {
                // SAFETY: by (1), i < len, so the iterator has an item i.
                unsafe { self.0.clone().nth(i).unwrap_unchecked() }
            }
        }

        impl<'a, T: Sync> IntoParSource for core::slice::$it<'a, T> {
            type Source = StdChunks<core::slice::$it<'a, T>>;
            type Item = &'a [T];
            fn into_par_source(self) -> Self::Source {
                StdChunks(self)
            }
        }
    )*};
}

std_chunks!(Chunks, ChunksExact);

/// Consecutive mutable sub-slices: `&mut [T]`, each `size` long but the
/// last. Made by [`chunks_mut`].
pub struct ChunksMut<'a, T> {
    ptr: *mut T,
    /// Elements of the slice.
    elems: usize,
    size: usize,
    n: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> Sealed for ChunksMut<'_, T> {}

// SAFETY: holds the slice's exclusive borrow; each chunk goes to one task.
unsafe impl<T: Send> Sync for ChunksMut<'_, T> {}

// SAFETY: distinct indices give disjoint chunks of the exclusively borrowed
// slice; nothing is owned.
unsafe impl<'a, T: Send> ParSource for ChunksMut<'a, T> {
    type Item = &'a mut [T];
    fn len(&self) -> usize {
        self.n
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> &'a mut [T] {
        let start = i * self.size;
        let end = (start + self.size).min(self.elems);
        // SAFETY: by (1), i < n, so start < end <= len, and chunk i is
        // handed out once.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        lent(self.ptr as usize, self.elems * core::mem::size_of::<T>());
    }
    const LENDS_OWNERS: bool = core::mem::needs_drop::<T>();
}

/// `slice` as consecutive mutable chunks of `size` elements (the last may
/// be shorter), one task per chunk: rayon's `par_chunks_mut`.
///
/// ```
/// let rt = frostheap::Runtime::builder().workers(2).build()?;
/// let mut v = vec![1u32; 1000];
/// rt.par(frostheap::par::chunks_mut(&mut v, 100)).for_each(|c| c[0] = 0)?;
/// assert_eq!(v.iter().filter(|&&x| x == 0).count(), 10);
/// # Ok::<(), frostheap::Error>(())
/// ```
///
/// # Panics
/// If `size` is 0.
pub fn chunks_mut<T: Send>(slice: &mut [T], size: usize) -> ChunksMut<'_, T> {
    assert!(size != 0, "frostheap: chunk size must be at least 1");
    ChunksMut {
        ptr: slice.as_mut_ptr(),
        elems: slice.len(),
        size,
        n: slice.len().div_ceil(size),
        _borrow: PhantomData,
    }
}

/// `slice` as consecutive chunks of `size` elements (the last may be
/// shorter): rayon's `par_chunks`. `slice.chunks(size)` is accepted too.
///
/// # Panics
/// If `size` is 0.
pub fn chunks<T: Sync>(slice: &[T], size: usize) -> ChunksRef<'_, T> {
    ChunksRef::new(slice, size)
}

// ---------------------------------------------------------------- zip

/// Two sources paired item by item: item `i` is `(a's item i, b's item
/// i)`, and there are as many items as the shorter source has, as with
/// rayon's `IndexedParallelIterator::zip`. Made by
/// [`Par::zip`](super::par::Par::zip).
///
/// The longer source's items past the shorter one's length are never
/// taken: when the call starts (on main, before the phase) they are
/// dropped, as rayon drops them; a call built and never run drops them
/// with the sources. What either source lends mutably is checked against
/// the guarded heaps ([`ParSource::lent_mut`]: both ranges), and the pair
/// lends owners when either side does ([`ParSource::LENDS_OWNERS`]).
pub struct Zip<A, B> {
    a: A,
    b: B,
    /// `min(a.len(), b.len())`.
    len: usize,
}

impl<A: ParSource, B: ParSource> Zip<A, B> {
    pub(crate) fn new(a: A, b: B) -> Self {
        let len = a.len().min(b.len());
        Zip { a, b, len }
    }
}

impl<A, B> Sealed for Zip<A, B> {}

// SAFETY: item i takes item i of each side once (the caller's contract
// for i < len <= both lengths); distinct indices give each side's
// distinct, hence disjoint, items; drop_untaken forwards the same range
// to both sides, and hand_over drops each side's items past `len`, which
// no index reaches, once.
unsafe impl<A: ParSource, B: ParSource> ParSource for Zip<A, B> {
    type Item = (A::Item, B::Item);
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> Self::Item {
        // SAFETY: by (1), i < len, which is at most either side's length,
        // and item i is taken once: so is each side's item i.
        unsafe { (self.a.take(i), self.b.take(i)) }
    }
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        // SAFETY: by (1), for each side (its items `range` exist, as
        // `range.end <= len`, and were never taken).
        unsafe {
            self.a.drop_untaken(range.clone());
            self.b.drop_untaken(range);
        }
    }
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        self.a.lent_mut(lent);
        self.b.lent_mut(lent);
    }
    const LENDS_OWNERS: bool = A::LENDS_OWNERS || B::LENDS_OWNERS;
    fn hand_over(&mut self) {
        self.a.hand_over();
        self.b.hand_over();
        // SAFETY: the items past `len` of each side are never taken (no
        // index reaches them) and, handed over, no longer the side's own
        // to drop: they are dropped here, once.
        unsafe {
            self.a.drop_untaken(self.len..self.a.len());
            self.b.drop_untaken(self.len..self.b.len());
        }
    }
}

// ---------------------------------------------------------------- take, skip

/// The first `len` items of a source: rayon's `take`. Made by
/// [`Par::take`](super::par::Par::take). The items after them are
/// dropped when the call starts, on the calling thread (a call built and
/// never run drops them with the source).
pub struct Take<S> {
    src: S,
    /// `min(n, src.len())`.
    len: usize,
}

impl<S: ParSource> Take<S> {
    pub(crate) fn new(src: S, n: usize) -> Self {
        let len = n.min(src.len());
        Take { src, len }
    }
}

impl<S> Sealed for Take<S> {}

// SAFETY: item i is the source's item i, i < len <= src.len(), so the
// source's contract holds index for index; hand_over drops the items
// past `len`, which no index reaches, once.
unsafe impl<S: ParSource> ParSource for Take<S> {
    type Item = S::Item;
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> S::Item {
        // SAFETY: by (1), for the same index of the source.
        unsafe { self.src.take(i) }
    }
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        // SAFETY: by (1), for the same range of the source.
        unsafe { self.src.drop_untaken(range) }
    }
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        self.src.lent_mut(lent);
    }
    const LENDS_OWNERS: bool = S::LENDS_OWNERS;
    fn hand_over(&mut self) {
        self.src.hand_over();
        // SAFETY: the items past `len` are never taken and, handed over,
        // no longer the source's own to drop: dropped here, once.
        unsafe { self.src.drop_untaken(self.len..self.src.len()) };
    }
}

/// A source without its first `skip` items: rayon's `skip`; item `i` is
/// the source's item `skip + i`. Made by [`Par::skip`](super::par::Par::skip).
/// The skipped items are dropped when the call starts, on the calling
/// thread (a call built and never run drops them with the source).
pub struct Skip<S> {
    src: S,
    /// `min(n, src.len())`.
    skip: usize,
}

impl<S: ParSource> Skip<S> {
    pub(crate) fn new(src: S, n: usize) -> Self {
        let skip = n.min(src.len());
        Skip { src, skip }
    }
}

impl<S> Sealed for Skip<S> {}

// SAFETY: item i is the source's item skip + i, and i < len means
// skip + i < src.len(): distinct indices map to distinct indices of the
// source, each taken or dropped once as the caller's contract says;
// hand_over drops the skipped items, which no index reaches, once.
unsafe impl<S: ParSource> ParSource for Skip<S> {
    type Item = S::Item;
    #[inline]
    fn len(&self) -> usize {
        self.src.len() - self.skip
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> S::Item {
        // SAFETY: by (1), for the source's index skip + i.
        unsafe { self.src.take(self.skip + i) }
    }
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        // SAFETY: by (1), for the source's range shifted by skip.
        unsafe {
            self.src
                .drop_untaken(self.skip + range.start..self.skip + range.end)
        }
    }
    fn lent_mut(&self, lent: &mut dyn FnMut(usize, usize)) {
        self.src.lent_mut(lent);
    }
    const LENDS_OWNERS: bool = S::LENDS_OWNERS;
    fn hand_over(&mut self) {
        self.src.hand_over();
        // SAFETY: the first `skip` items are never taken and, handed over,
        // no longer the source's own to drop: dropped here, once.
        unsafe { self.src.drop_untaken(0..self.skip) };
    }
}

// ---------------------------------------------------------------- bridged

/// Items pulled from an arbitrary iterator on main into the runtime's
/// scratch buffer, one batch at a time (see
/// [`Runtime::par_bridge`](super::Runtime::par_bridge)).
pub(crate) struct Pulled<T> {
    /// Where item 0 would be: the buffer holds items `[len - n, len)` of
    /// the input, so this may point before the buffer, and is only ever
    /// offset with wrapping arithmetic.
    pub(crate) ptr: *mut T,
    /// One past the last input index the buffer holds.
    pub(crate) len: usize,
}

impl<T> Sealed for Pulled<T> {}

// SAFETY: each item is moved out by one task only, and T: Send.
unsafe impl<T: Send> Sync for Pulled<T> {}

// SAFETY: the buffer holds `len` initialised items that the batch owns;
// each is read or dropped once, as the trait requires of callers. The
// buffer is the runtime's (not freed here).
unsafe impl<T: Send> ParSource for Pulled<T> {
    type Item = T;
    #[inline]
    fn len(&self) -> usize {
        self.len
    }
    #[inline]
    unsafe fn take(&self, i: usize) -> T {
        // SAFETY: by (1), the item is initialised and not yet moved out.
        // (`ptr` itself may lie before the buffer: see its field; the sum
        // is back inside.)
        unsafe { self.ptr.wrapping_add(i).read() }
    }
    unsafe fn drop_untaken(&self, range: Range<usize>) {
        for i in range {
            // SAFETY: by (1).
            unsafe { core::ptr::drop_in_place(self.ptr.wrapping_add(i)) };
        }
    }
}
