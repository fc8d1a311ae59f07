//! Exact statistics: the counters of a class state and [`Stats`].
//!
//! The owner's bytes are one signed *slack* word (peak + foreign frees
//! seen − net bytes): an allocation subtracts, a free adds, below zero
//! raises the peak on a slow path. With the allocation and free counts,
//! that is three counter updates per alloc+free pair, none of them an
//! atomic read-modify-write. The shared state (other threads, under the
//! shared lock) keeps monotonic byte counters with atomic adds; frees of
//! owner blocks by other threads are counted in the heap's
//! `OtherThreads`, and [`HeapCore::stats`] puts the three together.
//!
//! The slack word replaced separate allocated and freed byte counters with
//! a peak compare on every allocation: 0.3–0.4 ns less per alloc+free pair
//! at 16 B–4 KiB on the allocator benchmark (docs/alloc.md). Exact
//! statistics cost about 0.7 ns of a 3.7 ns pair there; limits,
//! `Budget::from_heap` and the model tests rely on them.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};

use super::core::HeapCore;
use super::page::OWNER_LOCAL;
use super::queue::ClassState;

/// The allocation statistics of one class state.
///
/// The owner's state keeps its bytes as one signed word, `slack`: the
/// peak (plus the foreign frees it has taken into account) minus its net
/// bytes. An allocation subtracts its size, a free adds it back; a
/// negative slack means the owner's live bytes passed the peak, which the
/// slow path then raises: one read-modify-write per operation and no
/// separate peak test. `peak`, `foreign_seen` and `slack` move together
/// only on slow paths, under the sequence counter `seq`, so readers
/// ([`HeapCore::stats`]) see them consistent.
///
/// The shared state (any thread, under the shared lock; read by others
/// without it) keeps monotonic `alloc_bytes` / `freed_bytes` updated with
/// atomic adds instead. Counts are separate monotonic counters in both;
/// writers store `freed_count` with Release after the allocation it frees
/// was counted, and readers load it first with Acquire, so a reader never
/// sees more frees than allocations.
#[repr(C)]
pub(super) struct Counters {
    /// Owner's state: the highest live bytes seen (net bytes less the
    /// foreign frees taken into account at the time); shared state: the
    /// highest `alloc_bytes - freed_bytes` seen.
    pub(super) peak: AtomicUsize,
    /// Owner's state: `peak + foreign_seen - net bytes`.
    pub(super) slack: AtomicIsize,
    /// Owner's state: its last reading of the heap's foreign freed bytes.
    pub(super) foreign_seen: AtomicUsize,
    /// Allocations ever made through this state.
    pub(super) total: AtomicU64,
    /// Shared state: usable bytes allocated, plus in-place growths.
    pub(super) alloc_bytes: AtomicUsize,
    /// Frees made through this state (`total - freed_count` are live).
    pub(super) freed_count: AtomicU64,
    /// Shared state: usable bytes freed, plus in-place shrinks.
    pub(super) freed_bytes: AtomicUsize,
    /// Owner's state: odd while the owner moves `peak`, `foreign_seen` and
    /// `slack` together.
    pub(super) seq: AtomicUsize,
}

// The words every owner operation writes (`slack`, `total`, `freed_count`)
// sit at 8 mod 16 from a line start (ClassState is line-aligned), so their
// low 12 address bits never equal those of a block's first word (blocks
// start 16-aligned), which the fast paths load right after these stores:
// the CPU would otherwise stall the load as possibly aliased ("4K
// aliasing"), which cost 12% on the 64 B pair loop of the allocator
// benchmark.
const _: () = {
    assert!(core::mem::offset_of!(Counters, slack) % 16 == 8);
    assert!(core::mem::offset_of!(Counters, total) % 16 == 8);
    assert!(core::mem::offset_of!(Counters, freed_count) % 16 == 8);
    assert!(core::mem::offset_of!(ClassState, counters) == 0);
};

impl Counters {
    pub(super) const fn new() -> Counters {
        Counters {
            slack: AtomicIsize::new(0),
            total: AtomicU64::new(0),
            freed_count: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            foreign_seen: AtomicUsize::new(0),
            seq: AtomicUsize::new(0),
            alloc_bytes: AtomicUsize::new(0),
            freed_bytes: AtomicUsize::new(0),
        }
    }

    /// Owner only: runs `f`, which moves `peak`, `foreign_seen` and
    /// `slack`, with `seq` odd (a sequence lock: readers retry). `f` stores
    /// `slack` first, so that an update cut short (a `fork` in the middle,
    /// see [`Counters::after_fork`], or a reader that gave up waiting)
    /// leaves the owner's live bytes understated, never overstated.
    #[cold]
    pub(super) fn owner_update(&self, f: impl FnOnce()) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
        f();
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// In a `fork` child: an update the fork cut in half stays as it is
    /// (understating, see [`Counters::owner_update`]), and the sequence
    /// counter becomes even again, or every reader would wait on it and
    /// the next update would invert it.
    pub(super) fn after_fork(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(seq & 1), Ordering::Relaxed);
    }

    /// The owner's state's `(peak, slack, foreign_seen)`, read together.
    /// Spins, then yields, while an update is in progress; after 100
    /// yields (the owner stopped mid-update, or a signal handler on its
    /// thread interrupted one) it takes the last reading, which an update
    /// in progress can only make understate the live bytes.
    pub(super) fn owner_snapshot(&self) -> (usize, isize, usize) {
        let mut last = (0, 0, 0);
        for attempt in 0..200 {
            let seq = self.seq.load(Ordering::Acquire);
            last = (
                self.peak.load(Ordering::Relaxed),
                self.slack.load(Ordering::Relaxed),
                self.foreign_seen.load(Ordering::Relaxed),
            );
            core::sync::atomic::fence(Ordering::Acquire);
            if seq & 1 == 0 && self.seq.load(Ordering::Relaxed) == seq {
                break;
            }
            if attempt < 100 {
                core::hint::spin_loop();
            } else {
                crate::os::yield_now();
            }
        }
        last
    }
}

impl ClassState {
    /// Counts an allocation of `size` usable bytes.
    #[inline]
    pub(super) fn on_alloc(&self, size: usize) {
        if self.kind == OWNER_LOCAL {
            self.on_alloc_as::<true>(size)
        } else {
            self.on_alloc_as::<false>(size)
        }
    }

    /// [`ClassState::on_alloc`] for a caller that knows statically which
    /// state this is (`LOCAL` iff `self.kind == OWNER_LOCAL`), so the fast
    /// paths carry no branch on `kind`.
    #[inline(always)]
    pub(super) fn on_alloc_as<const LOCAL: bool>(&self, size: usize) {
        debug_assert_eq!(
            LOCAL,
            self.kind == OWNER_LOCAL,
            "on_alloc_as with the wrong state"
        );
        let c = &self.counters;
        if LOCAL {
            if self.count_local_alloc(size) {
                self.raise_peak();
            }
        } else {
            let allocated = c.alloc_bytes.fetch_add(size, Ordering::Relaxed) + size;
            c.total.fetch_add(1, Ordering::Relaxed);
            let net = allocated.saturating_sub(c.freed_bytes.load(Ordering::Acquire));
            c.peak.fetch_max(net, Ordering::Relaxed);
        }
    }

    /// The owner's counting of an allocation of `size` usable bytes (only
    /// the owner writes these: plain load + store). Returns whether the
    /// owner's live bytes passed the peak: the caller then raises it (a
    /// plain call, or a tail call on the leaf fast path).
    #[inline(always)]
    pub(super) fn count_local_alloc(&self, size: usize) -> bool {
        let c = &self.counters;
        let slack = c.slack.load(Ordering::Relaxed).wrapping_sub(size as isize);
        c.slack.store(slack, Ordering::Relaxed);
        c.total
            .store(c.total.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        slack < 0
    }

    /// The owner's slack went below zero: its live bytes passed the peak
    /// by that much, which becomes the new peak (slack zero).
    #[cold]
    #[inline(never)]
    pub(super) fn raise_peak(&self) {
        debug_assert_eq!(self.kind, OWNER_LOCAL, "raise_peak on the shared state");
        let c = &self.counters;
        let slack = c.slack.load(Ordering::Relaxed);
        if slack < 0 {
            c.owner_update(|| {
                c.slack.store(0, Ordering::Relaxed);
                c.peak.store(
                    c.peak.load(Ordering::Relaxed) + slack.unsigned_abs(),
                    Ordering::Relaxed,
                );
            });
        }
    }

    /// [`ClassState::raise_peak`], then `p` (a tail call for fast paths).
    #[cold]
    #[inline(never)]
    pub(super) fn raise_peak_returning(&self, p: NonNull<u8>) -> NonNull<u8> {
        self.raise_peak();
        p
    }

    /// The owner read the heap's foreign freed bytes anew (they only grow):
    /// its live bytes are that much lower than its net bytes from now on,
    /// so its slack to the peak grows by the difference.
    pub(super) fn set_foreign_seen(&self, foreign: usize) {
        debug_assert_eq!(
            self.kind, OWNER_LOCAL,
            "set_foreign_seen on the shared state"
        );
        let c = &self.counters;
        let seen = c.foreign_seen.load(Ordering::Relaxed);
        if foreign > seen {
            c.owner_update(|| {
                c.slack.store(
                    c.slack
                        .load(Ordering::Relaxed)
                        .wrapping_add((foreign - seen) as isize),
                    Ordering::Relaxed,
                );
                c.foreign_seen.store(foreign, Ordering::Relaxed);
            });
        }
    }

    /// Counts a free of `size` usable bytes.
    #[inline]
    pub(super) fn on_free(&self, size: usize) {
        if self.kind == OWNER_LOCAL {
            self.on_free_as::<true>(size)
        } else {
            self.on_free_as::<false>(size)
        }
    }

    /// [`ClassState::on_free`] for a caller that knows which state this is.
    #[inline(always)]
    pub(super) fn on_free_as<const LOCAL: bool>(&self, size: usize) {
        debug_assert_eq!(
            LOCAL,
            self.kind == OWNER_LOCAL,
            "on_free_as with the wrong state"
        );
        let c = &self.counters;
        if LOCAL {
            c.slack.store(
                c.slack.load(Ordering::Relaxed).wrapping_add(size as isize),
                Ordering::Relaxed,
            );
            c.freed_count
                .store(c.freed_count.load(Ordering::Relaxed) + 1, Ordering::Release);
        } else {
            c.freed_bytes.fetch_add(size, Ordering::Release);
            c.freed_count.fetch_add(1, Ordering::Release);
        }
    }

    /// Counts a change in a live block's usable size (large realloc).
    pub(super) fn on_resize(&self, old: usize, new: usize) {
        let c = &self.counters;
        if self.kind == OWNER_LOCAL {
            let slack = c
                .slack
                .load(Ordering::Relaxed)
                .wrapping_sub(new as isize)
                .wrapping_add(old as isize);
            c.slack.store(slack, Ordering::Relaxed);
            if slack < 0 {
                self.raise_peak();
            }
        } else if new >= old {
            let allocated = c.alloc_bytes.fetch_add(new - old, Ordering::Relaxed) + (new - old);
            c.peak.fetch_max(
                allocated.saturating_sub(c.freed_bytes.load(Ordering::Acquire)),
                Ordering::Relaxed,
            );
        } else {
            c.freed_bytes.fetch_add(old - new, Ordering::Release);
        }
    }
}

/// Statistics of one heap. `in_use <= committed <= reserved`, and
/// `committed <= limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of address space reserved.
    pub reserved: usize,
    /// Bytes committed (readable and writable).
    pub committed: usize,
    /// Usable bytes of live allocations.
    pub in_use: usize,
    /// The highest `in_use` seen. Exact for single-threaded use. Frees by
    /// other threads are taken into account when the owner next collects
    /// them, so it may overstate by those; allocations by other threads
    /// keep a peak of their own, and the value is the larger of the two
    /// peaks and the current `in_use`, so it may understate a high that
    /// both reached together.
    pub peak: usize,
    /// The hard cap (`max`).
    pub limit: usize,
    /// Live allocations.
    pub allocations: usize,
    /// Allocations ever made.
    pub total_allocations: u64,
    /// Allocations refused because of the limit.
    pub refused: u64,
    /// Bytes held outside the heap but charged against its limit
    /// (see [`crate::Heap::charge_external`]); not part of `in_use`.
    pub external: usize,
}

impl HeapCore {
    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> Stats {
        let l = &self.local.counters;
        let s = &self.shared.counters;
        let foreign = self.others.freed_bytes.load(Ordering::Relaxed);
        // Freed sides first (Acquire), so each allocated side read after
        // them covers at least what they count as freed.
        let s_freed = s.freed_bytes.load(Ordering::Acquire);
        let (l_frees, s_frees) = (
            l.freed_count.load(Ordering::Acquire),
            s.freed_count.load(Ordering::Acquire),
        );
        let (l_peak, slack, seen) = l.owner_snapshot();
        // Signed and wide: the owner's live bytes (peak - slack) less the
        // foreign frees it has not taken into account yet, plus the shared
        // state's net, which may be negative (another thread grew an
        // owner block in place, counted as shared, and the owner freed it).
        let live = (l_peak as i128 - slack as i128) - (foreign as i128 - seen as i128)
            + (s.alloc_bytes.load(Ordering::Relaxed) as i128 - s_freed as i128);
        let in_use = live.clamp(0, usize::MAX as i128) as usize;
        let net_count = l.total.load(Ordering::Relaxed).saturating_sub(l_frees)
            + s.total.load(Ordering::Relaxed).saturating_sub(s_frees);
        let allocations =
            (net_count as usize).saturating_sub(self.others.freed_count.load(Ordering::Relaxed));
        let peak = l_peak.max(s.peak.load(Ordering::Relaxed)).max(in_use);
        Stats {
            reserved: self.region.reserved(),
            committed: self.region.committed(),
            in_use,
            peak,
            limit: self.limit,
            allocations,
            total_allocations: l.total.load(Ordering::Relaxed) + s.total.load(Ordering::Relaxed),
            refused: self.others.refused.load(Ordering::Relaxed),
            external: self.others.external.load(Ordering::Relaxed),
        }
    }

    /// Charges `bytes` of memory held outside the heap against its limit;
    /// false (and nothing charged) if committed + external would pass it.
    pub(crate) fn charge_external(&self, bytes: usize) -> bool {
        let cap = self.limit;
        let mut cur = self.others.external.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(bytes) {
                Some(n) if n.saturating_add(self.region.committed()) <= cap => n,
                _ => {
                    self.others.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            };
            match self.others.external.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Releases bytes charged with [`HeapCore::charge_external`].
    pub(crate) fn release_external(&self, bytes: usize) {
        let prev = self.others.external.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(prev >= bytes, "released more external bytes than charged");
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::heap_of;
    use super::*;
    use core::alloc::Layout;

    /// A reader of the statistics must not wait for ever on an owner
    /// update that never finishes (a signal handler calling `stats` on the
    /// owner's thread in the middle of one), and must read the owner's
    /// bytes exactly otherwise.
    #[test]
    fn stats_return_during_an_owner_update() {
        let core = heap_of(64 << 20);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        let q = core.alloc(Layout::from_size_align(3000, 8).unwrap());
        let exact = core.stats();
        assert_eq!((exact.in_use, exact.peak), (112 + 3072, 112 + 3072));
        // SAFETY: q is a live block of this heap.
        unsafe { core.free(q) };
        assert_eq!((core.stats().in_use, core.stats().peak), (112, 112 + 3072));
        let c = &core.local.counters;
        let seq = c.seq.load(Ordering::Relaxed);
        c.seq.store(seq + 1, Ordering::Relaxed); // an update "in progress"
        let during = core.stats();
        assert_eq!(during.in_use, 112, "the owner's values did not move");
        c.seq.store(seq + 2, Ordering::Relaxed);
        // SAFETY: p is a live block of this heap.
        unsafe { core.free(p) };
        assert_eq!(core.stats().in_use, 0);
    }

    /// A fork in the middle of an owner update leaves the sequence counter
    /// odd in the child; the child's repair makes it even, so readers do
    /// not wait on it and later updates keep the lock's sense. The cut
    /// update's bytes stay understated, never overstated.
    #[test]
    fn a_fork_child_repairs_a_cut_owner_update() {
        let core = heap_of(64 << 20);
        let p = core.alloc(Layout::from_size_align(100, 8).unwrap());
        let q = core.alloc(Layout::from_size_align(3000, 8).unwrap());
        assert_eq!(core.stats().in_use, 112 + 3072);
        // Replay q's peak raise cut by a fork after its first store
        // (slack = 0) and before its second (peak += 3072).
        let c = &core.local.counters;
        let seq = c.seq.load(Ordering::Relaxed);
        c.seq.store(seq + 1, Ordering::Relaxed);
        c.peak.store(112, Ordering::Relaxed);
        assert_eq!(core.stats().in_use, 112, "a cut update understates");
        // SAFETY: this thread is the only one using the heap.
        unsafe { core.repair_remote_frees_after_fork() };
        assert_eq!(
            c.seq.load(Ordering::Relaxed) & 1,
            0,
            "sequence counter still odd"
        );
        // Later updates run as usual and are read whole.
        let r = core.alloc(Layout::from_size_align(20_000, 8).unwrap());
        assert_eq!(c.seq.load(Ordering::Relaxed) & 1, 0);
        let s = core.stats();
        assert_eq!((s.in_use, s.peak), (112 + 20_480, 112 + 20_480), "{s:?}");
        // SAFETY: live blocks of this heap, freed once each.
        unsafe {
            for b in [p, q, r] {
                core.free(b);
            }
        }
        assert_eq!(core.stats().in_use, 0);
    }

    /// Another thread grows the owner's large block in place (counted in
    /// the shared state), then the owner frees it (counted in its own):
    /// the two states' nets are summed signed, so nothing stays in use.
    #[test]
    fn a_block_grown_by_another_thread_and_freed_by_the_owner_leaves_nothing() {
        let core = heap_of(64 << 20);
        let old = Layout::from_size_align(200_000, 8).unwrap();
        let p = core.alloc(old) as usize;
        let grown = std::thread::scope(|sc| {
            sc.spawn(|| {
                // SAFETY: p is a live block of `old`'s layout.
                unsafe { core.realloc(p as *mut u8, old, 900_000) as usize }
            })
            .join()
            .unwrap()
        });
        assert_eq!(grown, p, "grown in place");
        assert!(core.stats().in_use >= 900_000);
        // SAFETY: the live (grown) block.
        unsafe { core.free(p as *mut u8) };
        let s = core.stats();
        assert_eq!((s.in_use, s.allocations), (0, 0), "{s:?}");
    }
}
