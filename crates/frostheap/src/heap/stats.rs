//! Exact statistics: the counters of a class state and [`Stats`].
//!
//! The owner's bytes are one signed *slack* word (peak + foreign frees
//! seen − net bytes): an allocation subtracts, a free adds, below zero
//! raises the peak on a slow path. With the allocation and free counts,
//! that is three counter updates per alloc+free pair, none of them an
//! atomic read-modify-write. The shared state (other threads, under the
//! shared lock) keeps monotonic byte counters with atomic adds. Frees of
//! the owner's small blocks by other threads are counted by the owner
//! when it collects them, and are the remote-free bitmap's set bits until
//! then; frees of its large blocks by other threads are counted in the
//! heap's `OtherThreads`. [`read`] puts the four together.
//!
//! The slack word replaced separate allocated and freed byte counters with
//! a peak compare on every allocation: 0.3–0.4 ns less per alloc+free pair
//! at 16 B–4 KiB on the allocator benchmark (docs/alloc.md). Exact
//! statistics cost about 0.7 ns of a 3.7 ns pair there; limits,
//! `Budget::from_heap` and the model tests rely on them.

use core::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};

/// The allocation statistics of one class state.
///
/// The owner's state keeps its bytes as one signed word, `slack`: the
/// peak (plus the foreign frees it has taken into account) minus its net
/// bytes. An allocation subtracts its size, a free adds it back; a
/// negative slack means the owner's live bytes passed the peak, which the
/// slow path then raises: one read-modify-write per operation and no
/// separate peak test. `peak`, `foreign_seen` and `slack` move together
/// only on slow paths, under the sequence counter `seq`, so readers
/// ([`read`]) see them consistent.
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

    /// The owner's state read together with `also` (the remote frees not
    /// yet collected, which a collection moves into these counters):
    /// `(freed_count, peak, slack, foreign_seen)` and `also`'s result.
    /// `freed_count` is read first, and `also` before the bytes, so that
    /// the bytes cover every allocation whose free was seen. Spins, then
    /// yields, while an update is in progress; after 100 yields (the owner
    /// stopped mid-update, or a signal handler on its thread interrupted
    /// one) it takes the last reading. An update in progress can only make
    /// that understate the live bytes, except a collection, which can make
    /// it overstate them by the blocks collected during the reading.
    pub(super) fn owner_snapshot<R: Copy + Default>(
        &self,
        mut also: impl FnMut() -> R,
    ) -> ((u64, usize, isize, usize), R) {
        let mut last = ((0, 0, 0, 0), R::default());
        for attempt in 0..200 {
            let seq = self.seq.load(Ordering::Acquire);
            let frees = self.freed_count.load(Ordering::Acquire);
            let r = also();
            last = (
                (
                    frees,
                    self.peak.load(Ordering::Relaxed),
                    self.slack.load(Ordering::Relaxed),
                    self.foreign_seen.load(Ordering::Relaxed),
                ),
                r,
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

/// Statistics of one heap. `in_use <= committed <= reserved`,
/// `committed + purged <= reserved`, and `committed + external <= limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of address space reserved.
    pub reserved: usize,
    /// Bytes committed and charged against the limits: the heap's
    /// committed range (readable and writable) less what of it holds no
    /// memory (`purged`).
    pub committed: usize,
    /// Bytes inside the committed range that hold no memory and are not
    /// charged: free spans that were purged (`MADV_DONTNEED`), pages the
    /// range grew by that no span has used yet, and the part of small
    /// spans that their blocks' carving has not reached (a small span is
    /// charged in steps of 4, 8, 16, 32 KiB as it is carved). They are
    /// charged when used. The committed range is `committed + purged` bytes from
    /// the heap's base.
    pub purged: usize,
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
    /// The heap is advised to use transparent huge pages now: from its
    /// first byte, or, for the main heap under `FROSTHEAP_HUGE_PAGES=auto`,
    /// since a runtime first guarded it with the `mprotect` backend.
    pub huge_pages: bool,
    /// Non-zero if the kernel refused to collapse the heap's memory into
    /// huge pages when it switched to them (`MADV_COLLAPSE`, Linux 6.1 and
    /// later): the `errno` (`EINVAL`: a kernel without it; `ENOMEM`,
    /// `EAGAIN`: no huge page to be had then). Memory committed before the
    /// switch then stays on 4 KiB pages, at least until the kernel's
    /// khugepaged collapses it, and each `mprotect` freeze of it costs more.
    pub collapse_errno: i32,
}

/// A heap's counts read together from the owner's state (`l`), the shared
/// state (`s`), the bytes and count of the owner's large blocks other
/// threads freed, and `uncollected`, which returns the bytes and count of
/// remote frees the owner has not collected yet (read inside the owner's
/// sequence window, see [`Counters::owner_snapshot`]): `(in_use, peak,
/// allocations, total_allocations)`.
pub(super) fn read(
    l: &Counters,
    s: &Counters,
    large_bytes: &AtomicUsize,
    large_count: &AtomicUsize,
    uncollected: impl FnMut() -> (usize, usize),
) -> (usize, usize, usize, u64) {
    let foreign = large_bytes.load(Ordering::Relaxed);
    let foreign_count = large_count.load(Ordering::Relaxed);
    // Freed sides first (Acquire), so each allocated side read after
    // them covers at least what they count as freed.
    let s_freed = s.freed_bytes.load(Ordering::Acquire);
    let s_frees = s.freed_count.load(Ordering::Acquire);
    let ((l_frees, l_peak, slack, seen), (remote_bytes, remote_count)) =
        l.owner_snapshot(uncollected);
    // Signed and wide: the owner's live bytes (peak - slack) less the
    // foreign frees it has not taken into account yet and the remote frees
    // it has not collected, plus the shared state's net, which may be
    // negative (another thread grew an owner block in place, counted as
    // shared, and the owner freed it).
    let live =
        (l_peak as i128 - slack as i128) - (foreign as i128 - seen as i128) - remote_bytes as i128
            + (s.alloc_bytes.load(Ordering::Relaxed) as i128 - s_freed as i128);
    let in_use = live.clamp(0, usize::MAX as i128) as usize;
    let net_count = l.total.load(Ordering::Relaxed).saturating_sub(l_frees)
        + s.total.load(Ordering::Relaxed).saturating_sub(s_frees);
    let allocations = (net_count as usize)
        .saturating_sub(foreign_count)
        .saturating_sub(remote_count);
    let peak = l_peak.max(s.peak.load(Ordering::Relaxed)).max(in_use);
    let total = l.total.load(Ordering::Relaxed) + s.total.load(Ordering::Relaxed);
    (in_use, peak, allocations, total)
}
