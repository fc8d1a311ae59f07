//! A region: one contiguous range of virtual addresses, reserved once and
//! committed on demand as a single prefix `[base, base + committed)`.
//!
//! Keeping the committed part one (base, length) pair is what lets a freeze
//! protect a whole heap with one `mprotect` call. The region never moves and
//! never grows past its reservation, which is the heap's hard `max`.
//!
//! Which heap owns an address is answered by the guard table (`guard`),
//! where every heap registers its region.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::os::{self, OsError};

/// The unit of commitment and of the heap's page table: 64 KiB.
pub const PAGE_SHIFT: u32 = 16;
/// `1 << PAGE_SHIFT`.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

// The configuration refuses a `max` below one heap page without importing
// this layer; the two constants must agree.
const _: () = assert!(PAGE_SIZE == crate::config::MIN_MAX);

/// How a region should be laid out.
#[derive(Clone, Copy, Debug)]
pub struct RegionConfig {
    /// Bytes committed at creation (rounded up to [`PAGE_SIZE`]).
    pub min: usize,
    /// Bytes reserved; the hard cap on commitment.
    pub max: usize,
    /// Align to 2 MiB and advise `MADV_HUGEPAGE` (otherwise: `MADV_NOHUGEPAGE`).
    pub huge_pages: bool,
}

/// A reserved range of address space with a committed prefix.
///
/// Invariants: `base % align == 0`; `committed % PAGE_SIZE == 0`;
/// `min_committed <= committed <= reserved`; `[base, base + committed)` is
/// readable and writable unless a freeze has protected it;
/// `[base + committed, base + reserved)` is `PROT_NONE`.
#[derive(Debug)]
pub struct Region {
    base: *mut u8,
    reserved: usize,
    min_committed: usize,
    huge_pages: bool,
    /// Written only by the region's owner under its heap's span lock;
    /// read by anyone (stats, freeze).
    committed: AtomicUsize,
    /// Protected read-only by an mprotect freeze: pages committed while it
    /// is set are committed read-only too. Written under the span lock.
    frozen: core::sync::atomic::AtomicBool,
    /// The reservation is the region's own (unmapped on drop); false for a
    /// region carved from a larger reservation ([`Region::in_reservation`]).
    owned: bool,
}

// SAFETY: a Region is an address range plus atomics; the memory it
// describes is managed by its heap, which provides the synchronisation.
unsafe impl Send for Region {}
// SAFETY: as above; `committed` is atomic and only mutated under the heap's
// span lock.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `config.max` bytes and commits `config.min` of them,
    /// returning the raw OS error (the global allocator calls it before
    /// `main`; heap builders check `min`/`max` first).
    pub(crate) fn new_unchecked_config(config: RegionConfig) -> Result<Region, OsError> {
        let align = if config.huge_pages {
            os::HUGE_PAGE_SIZE
        } else {
            PAGE_SIZE
        };
        let reserved = round_up(config.max, PAGE_SIZE);
        let base = os::reserve(round_up(reserved, align), align)?;
        let region = Region {
            base,
            reserved,
            min_committed: round_up(config.min, PAGE_SIZE).min(reserved),
            huge_pages: config.huge_pages,
            committed: AtomicUsize::new(0),
            frozen: core::sync::atomic::AtomicBool::new(false),
            owned: true,
        };
        // Without huge pages the advice is explicit: where THP is `always`
        // system-wide, an unadvised region would get huge pages anyway. A
        // refusal only costs performance, so it is ignored.
        let whole = round_up(reserved, align);
        // SAFETY: the whole reservation is ours and page-aligned.
        let _ = unsafe {
            if config.huge_pages {
                os::advise_huge_pages(base, whole)
            } else {
                os::advise_no_huge_pages(base, whole)
            }
        };
        if region.min_committed > 0 {
            region.grow_to(region.min_committed)?;
        }
        Ok(region)
    }

    /// A region on `[base, base + config.max)`, a part of a reservation the
    /// caller made (the heaps of one process share one, so that "is this
    /// frostheap memory" stays one compare); commits `config.min`. Dropping
    /// it decommits what it committed and leaves the range reserved.
    ///
    /// # Safety
    /// 1. `[base, base + config.max)` is reserved (`PROT_NONE`), page- and,
    ///    with `config.huge_pages`, huge-page-aligned, and given to this
    ///    region alone for as long as it lives.
    pub(crate) unsafe fn in_reservation(
        base: *mut u8,
        config: RegionConfig,
    ) -> Result<Region, OsError> {
        let reserved = round_up(config.max, PAGE_SIZE);
        let region = Region {
            base,
            reserved,
            min_committed: round_up(config.min, PAGE_SIZE).min(reserved),
            huge_pages: config.huge_pages,
            committed: AtomicUsize::new(0),
            frozen: core::sync::atomic::AtomicBool::new(false),
            owned: false,
        };
        // SAFETY: by (1) the range is ours and aligned. A refusal only
        // costs performance, so it is ignored; the advice is explicit both
        // ways, as in `new` (and the part may have been another region's).
        let _ = unsafe {
            if config.huge_pages {
                os::advise_huge_pages(base, reserved)
            } else {
                os::advise_no_huge_pages(base, reserved)
            }
        };
        if region.min_committed > 0 {
            region.grow_to(region.min_committed)?;
        }
        Ok(region)
    }

    /// First address of the region.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes reserved (the heap's hard cap, rounded up to a page).
    #[inline]
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Bytes committed now.
    #[inline]
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Acquire)
    }

    /// Bytes committed at creation, below which the region never shrinks.
    pub fn min_committed(&self) -> usize {
        self.min_committed
    }

    /// Whether the region is laid out for transparent huge pages.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Commits the prefix up to `new_committed` bytes.
    ///
    /// Precondition: the caller holds the heap's span lock (one writer);
    /// `new_committed` is page-aligned and `<= reserved`.
    pub(crate) fn grow_to(&self, new_committed: usize) -> Result<(), OsError> {
        let old = self.committed.load(Ordering::Relaxed);
        debug_assert!(
            new_committed.is_multiple_of(PAGE_SIZE),
            "grow_to: {new_committed} not page-aligned"
        );
        debug_assert!(
            new_committed <= self.reserved,
            "grow_to: past the reservation"
        );
        if new_committed <= old {
            return Ok(());
        }
        // SAFETY: [base+old, base+new) is page-aligned, non-empty and inside
        // our reservation.
        unsafe { os::commit(self.base.add(old), new_committed - old)? };
        if self.frozen.load(Ordering::Acquire) {
            // SAFETY: the same range, just committed; nothing lives there.
            unsafe { os::protect(self.base.add(old), new_committed - old, os::Access::Read)? };
        }
        self.committed.store(new_committed, Ordering::Release);
        Ok(())
    }

    /// Protects the committed prefix read-only (`frozen`) or read-write,
    /// with one `mprotect` call; returns the length protected.
    ///
    /// Precondition: the caller holds the heap's span lock, so the
    /// committed length cannot change meanwhile.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<usize, OsError> {
        self.mark_frozen(frozen);
        self.protect_prefix(frozen)
    }

    /// Records whether the region is frozen: pages committed while it is
    /// set are committed read-only. Precondition: the span lock is held.
    pub(crate) fn mark_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Release);
    }

    /// `mprotect`s `[base, base + committed)` read-only or read-write and
    /// returns the length. Writes nothing but the page tables: safe to
    /// call while the memory holding this Region is itself frozen.
    pub(crate) fn protect_prefix(&self, frozen: bool) -> Result<usize, OsError> {
        let committed = self.committed.load(Ordering::Acquire);
        self.protect_range(0, committed, frozen)?;
        Ok(committed)
    }

    /// `mprotect`s `[base + from, base + to)` (no-op when empty).
    pub(crate) fn protect_range(
        &self,
        from: usize,
        to: usize,
        frozen: bool,
    ) -> Result<(), OsError> {
        if to > from {
            let access = if frozen {
                os::Access::Read
            } else {
                os::Access::ReadWrite
            };
            // SAFETY: the range is inside our committed prefix; the runtime
            // accounts for every thread that may write it (workers are in a
            // phase, other writers wait in the fault handler).
            unsafe { os::protect(self.base.add(from), to - from, access)? };
        }
        Ok(())
    }

    /// Decommits the tail above `new_committed` (never below the minimum).
    ///
    /// # Safety
    /// 1. The caller holds the heap's span lock and no live allocation lies
    ///    at or above `new_committed`.
    pub(crate) unsafe fn shrink_to(&self, new_committed: usize) -> Result<(), OsError> {
        let new_committed = new_committed.max(self.min_committed);
        let old = self.committed.load(Ordering::Relaxed);
        if new_committed >= old {
            return Ok(());
        }
        // Publish the smaller size first so a concurrent freeze never
        // protects pages that are being decommitted.
        self.committed.store(new_committed, Ordering::Release);
        // SAFETY: by (1) the tail is free; it is page-aligned and ours.
        unsafe { os::decommit(self.base.add(new_committed), old - new_committed) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if !self.owned {
            let committed = self.committed.load(Ordering::Relaxed);
            if committed > 0 {
                // SAFETY: the committed prefix is ours (in_reservation's
                // (1)) and nothing lives in it once the region is dropped.
                let _ = unsafe { os::decommit(self.base, committed) };
            }
            return;
        }
        let align = if self.huge_pages {
            os::HUGE_PAGE_SIZE
        } else {
            PAGE_SIZE
        };
        // SAFETY: the reservation was made by `new` with this length, and a
        // Region is dropped only when its heap (and every allocation in it)
        // is gone.
        unsafe { os::unmap(self.base, round_up(self.reserved, align)) };
    }
}

/// Rounds `n` up to a multiple of the power of two `align`.
#[inline]
pub const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}
