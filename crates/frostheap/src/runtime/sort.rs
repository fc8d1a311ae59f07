//! Parallel sorts of a slice: `sort_unstable(_by, _by_key)` and the stable
//! `sort(_by, _by_key)`.
//!
//! **Unstable** (quicksort by phases, as rayon's `par_sort_unstable` is by
//! `join`): each phase splits every part longer than `len / (4 × workers)`
//! around the median of a sample, in place (a branchless Lomuto partition
//! that only swaps, so a panicking comparator leaves a permutation); a run
//! of elements equal to the pivot found by a lopsided split is already in
//! place and leaves the work. When the parts are small enough, one last
//! phase sorts them with std's `sort_unstable_by`, longest first. The first
//! split runs on one worker; later ones run side by side.
//!
//! **Stable** (merge sort by phases): one phase sorts `2 × workers` blocks
//! with std's stable sort; then each merge level is one phase in which
//! every pair of neighbouring runs is merged into a buffer, each merge cut
//! into pieces of equal output length (the cut points found by binary
//! search), so even the last merge uses every worker. Levels alternate
//! between the slice and the buffer. A merge only reads its source and
//! copies bits into the other side, so when a comparator panics the source
//! of that level still holds every element exactly once, and it is copied
//! back if it is the buffer: the slice stays a permutation of its input.
//!
//! Both need the slice writable by tasks: it must not live in a guarded
//! heap (checked up front, [`Error::NotWritable`]).

use core::cmp::Ordering;
use core::mem::MaybeUninit;

use super::pool::Runtime;
use crate::error::Error;
use crate::global::unguarded;

/// Parts shorter than this are never split in a phase of their own.
const MIN_SPLIT: usize = 1 << 14;

/// Sample size for a pivot (odd, so it has a median).
const SAMPLE: usize = 63;

impl Runtime {
    /// Sorts `v` in parallel, not keeping the order of equal elements
    /// (rayon's `par_sort_unstable`).
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let mut v: Vec<u64> = (0..100_000u64).map(|x| x.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    /// rt.sort_unstable(&mut v)?;
    /// assert!(v.windows(2).all(|w| w[0] <= w[1]));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn sort_unstable<T: Ord + Send>(&self, v: &mut [T]) -> Result<(), Error> {
        self.sort_unstable_by(v, T::cmp)
    }

    /// [`Runtime::sort_unstable`] by the key `f` computes.
    pub fn sort_unstable_by_key<T, K, F>(&self, v: &mut [T], f: F) -> Result<(), Error>
    where
        T: Send,
        K: Ord,
        F: Fn(&T) -> K + Sync,
    {
        self.sort_unstable_by(v, |a, b| f(a).cmp(&f(b)))
    }

    /// [`Runtime::sort_unstable`] with the comparator `cmp`.
    pub fn sort_unstable_by<T, F>(&self, v: &mut [T], cmp: F) -> Result<(), Error>
    where
        T: Send,
        F: Fn(&T, &T) -> Ordering + Sync,
    {
        self.enter_call();
        self.check_writable(v.as_ptr() as usize, core::mem::size_of_val(v))?;
        let n = v.len();
        if n < 2 {
            return Ok(());
        }
        let is_less = |a: &T, b: &T| cmp(a, b) == Ordering::Less;
        let split_above = MIN_SPLIT.max(n / (4 * self.n_workers));
        let mut parts: Vec<&mut [T]> = unguarded(|| vec![v]);
        loop {
            let (big, mut small): (Vec<&mut [T]>, Vec<&mut [T]>) =
                unguarded(|| parts.into_iter().partition(|p| p.len() > split_above));
            if big.is_empty() {
                parts = small;
                break;
            }
            let halves: Vec<[&mut [T]; 2]> = self.par(big).map(|p| split(p, &is_less)).collect()?;
            unguarded(|| small.extend(halves.into_iter().flatten().filter(|p| p.len() > 1)));
            parts = small;
        }
        // Longest first, so the last parts claimed are the short ones.
        parts.sort_unstable_by_key(|p| core::cmp::Reverse(p.len()));
        self.par(parts).for_each(|p| p.sort_unstable_by(&cmp))
    }

    /// Sorts `v` in parallel, keeping the order of equal elements (rayon's
    /// `par_sort`). Uses a buffer as long as `v`, in system memory.
    ///
    /// ```
    /// let rt = frostheap::Runtime::builder().workers(2).build()?;
    /// let mut v: Vec<(u8, u32)> = (0..50_000u32).map(|i| ((i % 7) as u8, i)).collect();
    /// rt.sort_by_key(&mut v, |p| p.0)?;
    /// assert!(v.windows(2).all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1)));
    /// # Ok::<(), frostheap::Error>(())
    /// ```
    pub fn sort<T: Ord + Send>(&self, v: &mut [T]) -> Result<(), Error> {
        self.sort_by(v, T::cmp)
    }

    /// [`Runtime::sort`] by the key `f` computes.
    pub fn sort_by_key<T, K, F>(&self, v: &mut [T], f: F) -> Result<(), Error>
    where
        T: Send,
        K: Ord,
        F: Fn(&T) -> K + Sync,
    {
        self.sort_by(v, |a, b| f(a).cmp(&f(b)))
    }

    /// [`Runtime::sort`] with the comparator `cmp`.
    pub fn sort_by<T, F>(&self, v: &mut [T], cmp: F) -> Result<(), Error>
    where
        T: Send,
        F: Fn(&T, &T) -> Ordering + Sync,
    {
        self.enter_call();
        self.check_writable(v.as_ptr() as usize, core::mem::size_of_val(v))?;
        let n = v.len();
        if n < 2 {
            return Ok(());
        }
        let blocks = (2 * self.n_workers).min(n.div_ceil(MIN_SPLIT / 4)).max(1);
        let block = n.div_ceil(blocks);
        let parts: Vec<&mut [T]> = unguarded(|| v.chunks_mut(block).collect());
        self.par(parts).for_each(|p| p.sort_by(&cmp))?;
        if blocks == 1 || core::mem::size_of::<T>() == 0 {
            return Ok(());
        }
        let is_less = |a: &T, b: &T| cmp(a, b) == Ordering::Less;
        let mut buf: Vec<MaybeUninit<T>> = unguarded(|| Vec::with_capacity(n));
        let (data, other) = (v.as_mut_ptr(), buf.as_mut_ptr().cast::<T>());
        let (mut src, mut dst) = (data, other);
        let mut run = block;
        while run < n {
            let pieces = merge_pieces(src, dst, n, run, 4 * self.n_workers, &is_less);
            // SAFETY: each piece merges two disjoint sorted runs of `src`
            // into its own disjoint range of `dst` (both n elements long).
            let r = self.par(pieces).for_each(|p| unsafe { p.run(&is_less) });
            if let Err(e) = r {
                // The level's source still holds every element once.
                if src == other {
                    // SAFETY: the buffer holds all n elements; `v` holds
                    // stale copies that are overwritten without a drop.
                    unsafe { core::ptr::copy_nonoverlapping(other, data, n) };
                }
                return Err(e);
            }
            core::mem::swap(&mut src, &mut dst);
            run *= 2;
        }
        if src == other {
            let whole = Piece {
                a: other,
                na: n,
                b: other,
                nb: 0,
                out: data,
            };
            // SAFETY: copies the buffer's n elements back into `v`, whose
            // stale copies are overwritten without a drop.
            unsafe { whole.run(&is_less) };
        }
        Ok(())
    }
}

/// Splits `v` around the median of a sample: the elements less than the
/// pivot, and those greater or equal (without the pivot, which ends in its
/// final place). When the first side is short, the elements equal to the
/// pivot are split off the second side too, and left in place.
fn split<'a, T, F>(v: &'a mut [T], is_less: &F) -> [&'a mut [T]; 2]
where
    F: Fn(&T, &T) -> bool,
{
    let n = v.len();
    let s = SAMPLE.min(n);
    let step = n / s;
    for k in 0..s {
        v.swap(k, k * step);
    }
    v[..s].select_nth_unstable_by(s / 2, |a, b| {
        if is_less(a, b) {
            Ordering::Less
        } else if is_less(b, a) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    });
    v.swap(0, s / 2);
    let lt = {
        let (pivot, rest) = v.split_at_mut(1);
        partition(rest, |x| is_less(x, &pivot[0]))
    };
    v.swap(0, lt);
    let (left, rest) = v.split_at_mut(lt);
    let (pivot, right) = rest.split_at_mut(1);
    if left.len() >= n / 8 {
        return [left, right];
    }
    // Few elements below the pivot: perhaps many equal to it. Those are in
    // place once moved to the front of the right side.
    let eq = partition(right, |x| !is_less(&pivot[0], x));
    [left, &mut right[eq..]]
}

/// Moves the elements for which `pred` holds to the front, by swaps only;
/// returns how many there are.
fn partition<T>(v: &mut [T], pred: impl Fn(&T) -> bool) -> usize {
    let mut lt = 0;
    for i in 0..v.len() {
        let less = pred(&v[i]);
        v.swap(i, lt);
        lt += usize::from(less);
    }
    lt
}

/// One piece of a merge level: the first `na` elements at `a` and the
/// first `nb` at `b`, merged (stably, `a` first on ties) into `out`.
struct Piece<T> {
    a: *const T,
    na: usize,
    b: *const T,
    nb: usize,
    out: *mut T,
}

// SAFETY: a piece reads its own sub-runs and writes its own output range;
// pieces of one level are disjoint, and T: Send.
unsafe impl<T: Send> Send for Piece<T> {}

impl<T> Piece<T> {
    /// Merges, copying bits (the source keeps its copies).
    ///
    /// # Safety
    /// 1. `a[..na]` and `b[..nb]` are sorted and readable; `out[..na + nb]`
    ///    is writable and overlaps neither.
    unsafe fn run<F: Fn(&T, &T) -> bool>(&self, is_less: &F) {
        let (mut i, mut j, mut k) = (0, 0, 0);
        // SAFETY: by (1), every index stays below its run's length.
        unsafe {
            while i < self.na && j < self.nb {
                let take_b = is_less(&*self.b.add(j), &*self.a.add(i));
                let from = if take_b { self.b.add(j) } else { self.a.add(i) };
                core::ptr::copy_nonoverlapping(from, self.out.add(k), 1);
                i += usize::from(!take_b);
                j += usize::from(take_b);
                k += 1;
            }
            core::ptr::copy_nonoverlapping(self.a.add(i), self.out.add(k), self.na - i);
            k += self.na - i;
            core::ptr::copy_nonoverlapping(self.b.add(j), self.out.add(k), self.nb - j);
        }
    }
}

/// The pieces of one merge level: runs of `run` elements of `src` merged
/// pairwise into `dst`, about `pieces` pieces in all, cut at equal output
/// lengths.
fn merge_pieces<T, F: Fn(&T, &T) -> bool>(
    src: *mut T,
    dst: *mut T,
    n: usize,
    run: usize,
    pieces: usize,
    is_less: &F,
) -> Vec<Piece<T>> {
    let pairs = n.div_ceil(2 * run);
    let per_pair = pieces.div_ceil(pairs).max(1);
    let mut out = unguarded(|| Vec::with_capacity(pairs * per_pair));
    for p in 0..pairs {
        let lo = p * 2 * run;
        let mid = (lo + run).min(n);
        let hi = (lo + 2 * run).min(n);
        // SAFETY: [lo, hi) lies inside the n elements of src and dst.
        let (a, b, o) = unsafe { (src.add(lo), src.add(mid), dst.add(lo)) };
        let (na, nb) = (mid - lo, hi - mid);
        let total = na + nb;
        let mut prev = (0, 0);
        for q in 1..=per_pair {
            let at = total * q / per_pair;
            let i = if q == per_pair {
                na
            } else {
                // SAFETY: a[..na] and b[..nb] are the pair's sorted runs,
                // and at <= na + nb.
                unsafe { co_rank(a, na, b, nb, at, is_less) }
            };
            let j = at - i;
            if at > prev.0 + prev.1 {
                // SAFETY: the cut points lie inside the runs and the output.
                unsafe {
                    unguarded(|| {
                        out.push(Piece {
                            a: a.add(prev.0),
                            na: i - prev.0,
                            b: b.add(prev.1),
                            nb: j - prev.1,
                            out: o.add(prev.0 + prev.1),
                        })
                    })
                };
            }
            prev = (i, j);
        }
    }
    out
}

/// How many of the first `at` elements of the stable merge of `a[..na]`
/// and `b[..nb]` come from `a`.
///
/// # Safety
/// 1. `a[..na]` and `b[..nb]` are readable; `at <= na + nb`.
unsafe fn co_rank<T, F: Fn(&T, &T) -> bool>(
    a: *const T,
    na: usize,
    b: *const T,
    nb: usize,
    at: usize,
    is_less: &F,
) -> usize {
    let (mut lo, mut hi) = (at.saturating_sub(nb), at.min(na));
    while lo < hi {
        let mid = (lo + hi) / 2;
        let j = at - mid;
        // a[mid] is among the first `at` iff it merges before b[j - 1],
        // which it does unless b[j - 1] < a[mid] (ties take `a` first).
        // SAFETY: mid < hi <= na and 0 < j <= nb here.
        if j > 0 && !is_less(unsafe { &*b.add(j - 1) }, unsafe { &*a.add(mid) }) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
