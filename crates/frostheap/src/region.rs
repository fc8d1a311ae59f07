//! A region: one contiguous range of virtual addresses, reserved once and
//! committed on demand as a single prefix `[base, base + committed)`.
//!
//! Keeping the committed part one (base, length) pair is what lets a freeze
//! protect a whole heap with one `mprotect` call. The region never moves and
//! never grows past its reservation: the heap's hard `max`, or, for a heap
//! of the global allocator's arena, its slot (the charge stays bounded by
//! `max`: [`Region::in_reservation`]).
//!
//! Which heap owns an address is answered by the guard table (`guard`),
//! where every heap registers its region.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};

use crate::os::{self, OsError};

/// The unit of commitment and of the heap's page table: 64 KiB.
pub const PAGE_SHIFT: u32 = 16;
/// `1 << PAGE_SHIFT`.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

// The configuration refuses a `FROSTHEAP_MAX` below two heap pages
// without importing this layer; the two constants must agree.
const _: () = assert!(2 * PAGE_SIZE == crate::config::MIN_MAX);

/// How a region uses transparent huge pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Huge {
    /// Aligned to a heap page and advised `MADV_NOHUGEPAGE`: base pages,
    /// even where THP is `always` system-wide.
    Off,
    /// Aligned to 2 MiB, committed in 2 MiB steps and advised
    /// `MADV_HUGEPAGE` from the first byte.
    On,
    /// Laid out as `On` but advised as `Off` until
    /// [`Region::switch_to_huge_pages`]: the main heap, which switches at
    /// its first guard by the `mprotect` backend.
    Later,
}

/// How a region should be laid out.
#[derive(Clone, Copy, Debug)]
pub struct RegionConfig {
    /// Bytes committed at creation (rounded up to [`PAGE_SIZE`], but no
    /// further than `max` rounded down to it: [`committed_min`]).
    pub min: usize,
    /// The hard cap: bytes reserved (at least; an arena slot may be
    /// more, [`Region::in_reservation`]).
    pub max: usize,
    /// Its use of transparent huge pages.
    pub huge_pages: Huge,
}

/// Why [`Region::new_own`] made no region.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NewRegionError {
    /// The address space refused the reservation (`max` too large for it).
    Reserve(OsError),
    /// The reservation was made, but committing `min` failed (and the
    /// reservation was given back).
    Commit(OsError),
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
    huge: Huge,
    /// Advised `MADV_HUGEPAGE` now (`Huge::On`, or `Later` once switched).
    huge_now: AtomicBool,
    /// The errno of the `MADV_COLLAPSE` the switch to huge pages was
    /// refused (0: none).
    collapse_errno: AtomicI32,
    /// Written only by the region's owner under its heap's span lock;
    /// read by anyone (stats, freeze).
    committed: AtomicUsize,
    /// Where the committed end (`base + committed`) is published besides
    /// (the guard table's entry of the region's heap, which the fault
    /// handler reads: [`Region::mirror_committed`]); null for none.
    mirror: AtomicPtr<AtomicUsize>,
    /// Protected read-only by an mprotect freeze: pages committed while it
    /// is set are committed read-only too. Written under the span lock.
    frozen: AtomicBool,
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
    /// A region of its own (an explicit heap's): reserves `config.max`
    /// bytes, rounded up to a page (and the reservation to the region's
    /// alignment), and commits `config.min` of them. The heap builder
    /// checks `min <= max` and `max >= PAGE_SIZE` first.
    ///
    /// A refused reservation is [`NewRegionError::Reserve`], told apart
    /// from a refused commit so that the builder can name `max`. A `max`
    /// whose rounding passes the top of the address space is refused as
    /// the kernel refuses such a length (`mmap`, `ENOMEM`): `max(usize::MAX)`
    /// wrapped to a region of 0 bytes, built `Ok`, that could hold nothing.
    // Not inlined into `HeapCore::init_at`, which builds the main heap at
    // every process's start-up in a range of the arena: laid with the rare
    // code (layout.ld), as explicit heaps are built rarely.
    #[inline(never)]
    pub(crate) fn new_own(config: RegionConfig) -> Result<Region, NewRegionError> {
        let align = align_of(config.huge_pages);
        let too_large = OsError {
            call: "mmap",
            errno: libc::ENOMEM,
        };
        let reserved =
            checked_round_up(config.max, PAGE_SIZE).ok_or(NewRegionError::Reserve(too_large))?;
        let len = checked_round_up(reserved, align).ok_or(NewRegionError::Reserve(too_large))?;
        let base = os::reserve(len, align).map_err(NewRegionError::Reserve)?;
        // SAFETY: the whole reservation is ours and aligned to `align`.
        unsafe { Region::build(base, reserved, len, config, true) }.map_err(NewRegionError::Commit)
    }

    /// The region on `[base, base + reserved)`, which the caller reserved
    /// (`owned`: for itself; `advised` bytes from `base` are advised as
    /// `config` says), with `config.min` committed.
    ///
    /// # Safety
    /// 1. `[base, base + advised)` is reserved, aligned as `config` needs
    ///    and given to this region alone; `reserved <= advised`.
    unsafe fn build(
        base: *mut u8,
        reserved: usize,
        advised: usize,
        config: RegionConfig,
        owned: bool,
    ) -> Result<Region, OsError> {
        let region = Region {
            base,
            reserved,
            min_committed: committed_min(config.min, config.max).min(reserved),
            huge: config.huge_pages,
            huge_now: AtomicBool::new(config.huge_pages == Huge::On),
            collapse_errno: AtomicI32::new(0),
            committed: AtomicUsize::new(0),
            mirror: AtomicPtr::new(core::ptr::null_mut()),
            frozen: AtomicBool::new(false),
            owned,
        };
        // Without huge pages the advice is explicit: where THP is `always`
        // system-wide, an unadvised region would get huge pages anyway (and
        // a part of a shared reservation may have been another region's).
        // A refusal only costs performance, so it is ignored.
        // SAFETY: by (1) the range is ours and aligned.
        let _ = unsafe {
            if config.huge_pages == Huge::On {
                os::advise_huge_pages(base, advised)
            } else {
                os::advise_no_huge_pages(base, advised)
            }
        };
        if region.min_committed > 0 {
            region.grow_to(region.min_committed)?;
        }
        Ok(region)
    }

    /// A region on `[base, base + len)`, a part of a reservation the
    /// caller made (the heaps of one process share one, so that "is this
    /// frostheap memory" stays one compare); commits `config.min`. Its
    /// committed range may reach `len` (at least `config.max`), its charge
    /// only `config.max`: room past the cap lets a block fit above live
    /// blocks that pin the range, where the limit has room for it. Dropping
    /// it decommits what it committed and leaves the range reserved.
    ///
    /// # Safety
    /// 1. `[base, base + len)` is reserved (`PROT_NONE`), page- and,
    ///    unless `config.huge_pages` is `Huge::Off`, huge-page-aligned, and
    ///    given to this region alone for as long as it lives.
    pub(crate) unsafe fn in_reservation(
        base: *mut u8,
        len: usize,
        config: RegionConfig,
    ) -> Result<Region, OsError> {
        let reserved = round_up(config.max, PAGE_SIZE).max(len & !(PAGE_SIZE - 1));
        // SAFETY: by (1).
        unsafe { Region::build(base, reserved, reserved, config, false) }
    }

    /// First address of the region.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes reserved: the heap's hard cap rounded up to a page, or, for a
    /// heap of the global allocator's arena, its slot (at least the cap,
    /// often twice: [`Region::in_reservation`]).
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

    /// Whether the region is laid out for transparent huge pages (aligned
    /// to 2 MiB and committed in 2 MiB steps), now or after a switch.
    pub fn huge_layout(&self) -> bool {
        self.huge != Huge::Off
    }

    /// Whether the region is advised `MADV_HUGEPAGE` now.
    pub fn huge_pages(&self) -> bool {
        self.huge_now.load(Ordering::Acquire)
    }

    /// The errno of the refused `MADV_COLLAPSE` (or advice) of the switch
    /// to huge pages; 0 if there was none.
    pub fn collapse_errno(&self) -> i32 {
        self.collapse_errno.load(Ordering::Acquire)
    }

    /// Switches a `Huge::Later` region to huge pages, once: advises
    /// `MADV_HUGEPAGE` over the whole reservation, so that pages touched
    /// from now on fault in as huge pages, and collapses the 2 MiB ranges
    /// of the committed prefix into huge pages now (`MADV_COLLAPSE`), so
    /// that the next `mprotect` of the prefix rewrites one entry per 2 MiB
    /// rather than per 4 KiB. A refused collapse (a kernel before 6.1, no
    /// free huge page) is recorded in [`Region::collapse_errno`] and
    /// leaves the rest of the prefix on base pages (the kernel's khugepaged
    /// may collapse them later); the advice stands. Does nothing for other
    /// regions, or once switched.
    ///
    /// Precondition: the caller holds the heap's span lock (the committed
    /// prefix cannot change) and the region is not frozen (only writable
    /// pages collapse).
    pub(crate) fn switch_to_huge_pages(&self) {
        if self.huge != Huge::Later || self.huge_pages() {
            return;
        }
        // SAFETY: the reservation is ours and 2 MiB-aligned (`Later` is
        // laid out as `On`); the advice changes no contents.
        if let Err(e) = unsafe { os::advise_huge_pages(self.base, self.reserved) } {
            self.collapse_errno.store(e.errno, Ordering::Release);
            return;
        }
        self.huge_now.store(true, Ordering::Release);
        let whole = self.committed() & !(os::HUGE_PAGE_SIZE - 1);
        // SAFETY: whole 2 MiB ranges of the committed prefix, just
        // advised; collapsing copies pages and keeps their contents.
        if let Err(e) = unsafe { os::collapse_huge_pages(self.base, whole) } {
            self.collapse_errno.store(e.errno, Ordering::Release);
        }
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
        self.publish(new_committed);
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

    /// Whether [`Region::mark_frozen`] set the mark. Read under the span
    /// lock, which a freeze takes to set it, it stays true or false until
    /// the lock is released.
    pub(crate) fn is_marked_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
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

    /// Publishes the committed end into `cell` from now on (and at once),
    /// or, with `None`, stops publishing it.
    ///
    /// Precondition, with `Some`: the caller holds the heap's span lock, so
    /// the prefix cannot change between the pointer's store and the first
    /// publication (with `None`, as the heap is dropped, nothing can grow
    /// it).
    pub(crate) fn mirror_committed(&self, cell: Option<&'static AtomicUsize>) {
        let p = cell.map_or(core::ptr::null_mut(), |c| {
            c as *const AtomicUsize as *mut AtomicUsize
        });
        self.mirror.store(p, Ordering::Release);
        self.publish(self.committed.load(Ordering::Acquire));
    }

    /// Stores `base + committed` where [`Region::mirror_committed`] said.
    fn publish(&self, committed: usize) {
        // SAFETY: the pointer is null or a `&'static AtomicUsize`.
        if let Some(cell) = unsafe { self.mirror.load(Ordering::Acquire).as_ref() } {
            cell.store(self.base as usize + committed, Ordering::Release);
        }
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
        self.publish(new_committed);
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
        let align = align_of(self.huge);
        // SAFETY: the reservation was made by `new` with this length, and a
        // Region is dropped only when its heap (and every allocation in it)
        // is gone.
        unsafe { os::unmap(self.base, round_up(self.reserved, align)) };
    }
}

/// The alignment of a region's base.
fn align_of(huge: Huge) -> usize {
    match huge {
        Huge::Off => PAGE_SIZE,
        Huge::On | Huge::Later => os::HUGE_PAGE_SIZE,
    }
}

/// What a region with a minimum of `min` bytes and a cap of `max` commits
/// up front: `min` rounded up to a page, but never past `max` rounded down
/// to one, the most the heap may ever have charged (a minimum as large as
/// the limit, `FROSTHEAP_MIN=FROSTHEAP_MAX=100000K`, not a multiple of 64
/// KiB, rounded up past the limit: the process limit refused the main
/// heap's first charge and start-up failed). `max` is at least a page
/// (the builders and the configuration check it).
#[inline]
pub const fn committed_min(min: usize, max: usize) -> usize {
    let cap = max & !(PAGE_SIZE - 1);
    // Compared before rounding: `min` within a page of `usize::MAX` rounded
    // up to 0 and committed nothing. Below `cap` it rounds up to `cap` at
    // most, which is a multiple of the page: no overflow.
    if min < cap {
        round_up(min, PAGE_SIZE)
    } else {
        cap
    }
}

/// Rounds `n` up to a multiple of the power of two `align`. The caller
/// knows it fits (`n` at most `usize::MAX - align + 1`); a size from
/// outside goes through [`checked_round_up`].
#[inline]
pub const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// The largest power of two below `max` (the top bit when `max` is past
/// it), and `least` or more, for which `grants(size)` holds, tried from
/// the largest down; 0 when none does. What an error line offers instead
/// of a size the address space refused (the arena's slots, an explicit
/// heap's range); always inlined, so that each caller stays the one
/// function its linker script lays with the rare code.
#[inline(always)]
pub(crate) fn largest_granted(
    max: usize,
    least: usize,
    mut grants: impl FnMut(usize) -> bool,
) -> usize {
    let mut size = max
        .checked_next_power_of_two()
        .map_or(1 << (usize::BITS - 1), |p| p / 2);
    while size >= least {
        if grants(size) {
            return size;
        }
        size /= 2;
    }
    0
}

/// [`round_up`], or `None` when the multiple is past `usize::MAX`.
#[inline]
pub const fn checked_round_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(m) => Some(m & !(align - 1)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_a_size_past_the_top_is_none_not_a_wrap() {
        assert_eq!(checked_round_up(0, PAGE_SIZE), Some(0));
        assert_eq!(checked_round_up(1, PAGE_SIZE), Some(PAGE_SIZE));
        assert_eq!(checked_round_up(PAGE_SIZE, PAGE_SIZE), Some(PAGE_SIZE));
        let top = usize::MAX & !(PAGE_SIZE - 1);
        assert_eq!(checked_round_up(top, PAGE_SIZE), Some(top));
        assert_eq!(checked_round_up(top + 1, PAGE_SIZE), None);
        assert_eq!(checked_round_up(usize::MAX, PAGE_SIZE), None);
        assert_eq!(checked_round_up(usize::MAX, os::HUGE_PAGE_SIZE), None);
    }

    #[test]
    fn the_committed_minimum_never_passes_the_cap_nor_wraps() {
        assert_eq!(committed_min(0, 1 << 20), 0);
        assert_eq!(committed_min(1, 1 << 20), PAGE_SIZE);
        assert_eq!(
            committed_min(1_000_001, 1_000_001),
            1_000_001 & !(PAGE_SIZE - 1)
        );
        let cap = usize::MAX & !(PAGE_SIZE - 1);
        // `min` within a page of the top rounded up to 0.
        assert_eq!(committed_min(usize::MAX, usize::MAX), cap);
        assert_eq!(committed_min(cap + 1, usize::MAX), cap);
        assert_eq!(committed_min(cap - 1, usize::MAX), cap);
    }

    #[test]
    fn a_region_whose_max_rounds_past_the_top_is_refused_as_a_reservation() {
        for huge_pages in [Huge::Off, Huge::On] {
            for max in [
                usize::MAX,
                usize::MAX - PAGE_SIZE + 2,
                usize::MAX - os::HUGE_PAGE_SIZE + 2,
            ] {
                let r = Region::new_own(RegionConfig {
                    min: 0,
                    max,
                    huge_pages,
                });
                match r {
                    Err(NewRegionError::Reserve(e)) => assert_eq!(e.errno, libc::ENOMEM),
                    other => panic!("max={max:#x} {huge_pages:?}: {other:?}"),
                }
            }
        }
    }
}
