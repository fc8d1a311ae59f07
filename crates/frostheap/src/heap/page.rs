//! The page table.
//!
//! A heap's region is cut into 64 KiB pages. Each page has a 64-byte
//! [`PageMeta`] in a side table (its own `MAP_NORESERVE` mapping, shared
//! with the remote-free bitmap, mapped read-only and made writable as the
//! region's committed prefix grows), so the region holds nothing but user
//! data and a page's geometry is found from any address with one shift.
//!
//! A *span* is a run of pages: free, a small-object span (blocks of one
//! size class), or a large allocation ([`super::span`] hands them out). Its
//! head page's meta describes it; later pages point back at the head.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::region::{PAGE_SHIFT, PAGE_SIZE};

/// "No page": the end of a list.
pub const NONE: u32 = u32::MAX;

/// What a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Never part of a span (beyond the committed prefix, or zeroed meta).
    Unused = 0,
    /// Head of a free span.
    FreeSpan = 1,
    /// Last page of a free span of two or more pages; `head` points back.
    FreeTail = 2,
    /// Head of a small-object span.
    Small = 3,
    /// Head of a large allocation.
    Large = 4,
    /// A later page of a small or large span; `head` points at its head.
    Cont = 5,
}

/// Which class state allocates from a small span.
pub const OWNER_LOCAL: u8 = 0;
/// The span belongs to the lock-protected shared state.
pub const OWNER_SHARED: u8 = 1;
/// The heap is sealed: no fast path applies (frees and allocations take
/// the slow path, which refuses them).
pub const OWNER_SEALED: u8 = 2;
/// A span of the owner's local state, as [`OWNER_LOCAL`], made once the
/// owner's cache was on (`super::own_cache`): the owner's frees of its
/// blocks go to that cache. Its own value, so that the free fast path
/// tells the two apart by the compare it makes anyway, and a heap whose
/// cache is off (every heap below 8 MiB) frees as if there were none.
pub const OWNER_CACHED: u8 = 3;

/// Whether a small span's `owner` byte names the owner's local state
/// ([`OWNER_LOCAL`] or [`OWNER_CACHED`]).
#[inline(always)]
pub fn owner_local(owner: u8) -> bool {
    owner == OWNER_LOCAL || owner == OWNER_CACHED
}

/// `state` bit: the span had no free block and left its queue.
pub const FULL: u32 = 1;
/// `state` bit: the span is on the heap's pending stack.
pub const PENDING: u32 = 2;
/// The bits of `state` above [`FULL`] and [`PENDING`]: the span's
/// generation, advanced each time its pages become a new small span, so a
/// remote freer that was delayed after publishing its free (when the owner
/// may have collected it and retired the span) never acts on the span's
/// next incarnation.
pub const GENERATION: u32 = !(FULL | PENDING);
/// One step of [`GENERATION`] (it wraps after 2^30 incarnations).
pub const GENERATION_STEP: u32 = (FULL | PENDING) + 1;

/// `flags` bit: the span is linked in its class queue.
pub const IN_QUEUE: u8 = 1;
/// `flags` bit (free spans): contents may be non-zero / resident.
pub const DIRTY: u8 = 2;
/// `used` of a class queue's current span: far from zero, so that the
/// frees into it, which count down without asking whether the span is
/// current, do not reach zero in practice (see [`PageMeta::used`]).
pub const CURRENT_USED: u32 = 1 << 31;

/// A free block's link.
#[repr(C)]
pub struct Block {
    /// Next free block.
    pub next: *mut Block,
}

/// Metadata for one 64 KiB page. Only head pages carry span data.
///
/// Field discipline:
/// - `free`, `used`, `extend`, `next`/`prev` (for small spans), `flags`:
///   the span's owner only — the heap's owner thread for `OWNER_LOCAL`
///   spans, the holder of the shared lock for `OWNER_SHARED` spans.
/// - `kind`, `class`, `owner`, `block_size`, `capacity`, `span_pages`,
///   `head`, `offset`, and `next`/`prev`/`flags` of free spans: under the
///   span lock; stable while any block of the span is live, so any thread
///   holding a block may read them.
/// - `remote`, `state`, `pending_next`: atomics, any thread.
///
/// Invariants (small head): `extend <= capacity`;
/// `capacity == span_pages * PAGE_SIZE / block_size`; unless the span is
/// its queue's current one (see `used`), `used <= extend` and `used` counts
/// blocks handed out and neither freed by the owner nor collected from the
/// remote-free bitmap.
#[repr(C, align(64))]
pub struct PageMeta {
    /// Small: the owner's free list.
    pub free: Cell<*mut Block>,
    /// Small: blocks handed out and not returned to `free` — kept only
    /// while the span is *not* its queue's current span. The current span
    /// is the one allocations pop from and most frees go back to; keeping
    /// a count there made every alloc+free pair two dependent
    /// read-modify-writes of this word (about a fifth of the pair's time).
    /// A span that becomes current gets [`CURRENT_USED`] instead, and every
    /// free into a span counts down, current or not: no test of "current"
    /// on the free path. The count is exact again whenever the span stops
    /// being current: it stops only when dry (every block carved and handed
    /// out, so `used = capacity`) or when the heap is sealed (no free
    /// counts any more). Should 2^31 frees into one current span bring it
    /// to zero, the free takes the slow path once, which leaves a current
    /// span alone.
    pub used: Cell<u32>,
    /// Small: blocks in the span.
    pub capacity: Cell<u32>,
    /// Small: the class size; large: 0.
    pub block_size: Cell<u32>,
    /// Small: index of the first block never handed out.
    pub extend: Cell<u32>,
    /// Span length in pages (heads).
    pub span_pages: Cell<u32>,
    /// Cont / FreeTail: the head page's index.
    pub head: Cell<u32>,
    /// Queue or bin links (page indices).
    pub next: Cell<u32>,
    /// Queue or bin links (page indices).
    pub prev: Cell<u32>,
    /// Large: offset of the allocation from the span start (over-alignment).
    /// Free span head: how many of the span's pages are not charged against
    /// the limits (purged, or never used; see [`super::span`]). Small: how
    /// many of its pages its carving charges (all, or none: taken
    /// uncharged, see `span::Locked::alloc_small`).
    pub offset: Cell<u32>,
    /// [`Kind`] as a byte.
    pub kind: Cell<u8>,
    /// [`OWNER_LOCAL`], [`OWNER_CACHED`], [`OWNER_SHARED`] or
    /// [`OWNER_SEALED`] (next to `kind`: the free
    /// fast path tests both with one compare).
    pub owner: Cell<u8>,
    /// Small: size class.
    pub class: Cell<u8>,
    /// [`IN_QUEUE`], [`DIRTY`].
    pub flags: Cell<u8>,
    /// Summary of this page's slice of the heap's remote-free bitmap (any
    /// page of a small span, not only its head): bit `w` is set when word
    /// `w` of the page's 64 bitmap words may hold blocks freed by other
    /// threads. Set by the freer that made the word non-zero; the owner
    /// takes it whole, then the words it names.
    pub remote: AtomicU64,
    /// [`FULL`] and [`PENDING`], and the [`GENERATION`] above them.
    pub state: AtomicU32,
    /// Link in the heap's pending stack.
    pub pending_next: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<PageMeta>() == 64);

impl PageMeta {
    /// The page's [`Kind`].
    #[inline]
    pub fn kind(&self) -> Kind {
        match self.kind.get() {
            1 => Kind::FreeSpan,
            2 => Kind::FreeTail,
            3 => Kind::Small,
            4 => Kind::Large,
            5 => Kind::Cont,
            _ => Kind::Unused,
        }
    }

    /// Sets the kind.
    #[inline]
    pub fn set_kind(&self, kind: Kind) {
        self.kind.set(kind as u8);
    }
}

/// A `PageMeta` that is always empty: class queues point at it when they
/// have no span, so the allocation fast path needs a single null test.
pub struct EmptyMeta(pub PageMeta);
// SAFETY: nothing ever writes to the empty meta: the slow path recognises
// it by address before touching any field.
unsafe impl Sync for EmptyMeta {}

/// The shared empty meta.
pub static EMPTY: EmptyMeta = EmptyMeta(PageMeta {
    free: Cell::new(ptr::null_mut()),
    used: Cell::new(0),
    capacity: Cell::new(0),
    block_size: Cell::new(0),
    extend: Cell::new(0),
    span_pages: Cell::new(0),
    head: Cell::new(NONE),
    next: Cell::new(NONE),
    prev: Cell::new(NONE),
    offset: Cell::new(0),
    kind: Cell::new(0),
    owner: Cell::new(0),
    class: Cell::new(0),
    flags: Cell::new(0),
    remote: AtomicU64::new(0),
    state: AtomicU32::new(0),
    pending_next: AtomicU32::new(NONE),
});

/// Where the page table starts in its mapping. Every span starts 64 KiB
/// aligned, so its first block has the same low 12 address bits as a
/// 4 KiB-aligned meta; with the table itself page-aligned, the span at
/// page 0 (the heap's first, usually hottest, small span) would have its
/// meta there too, and the CPU's store-to-load forwarding, which compares
/// only those bits first, stalls loads of the block behind stores to the
/// meta ("4K aliasing": +0.6 ns on every alloc+free pair of that span).
/// Skewing the table by an odd number of lines moves that coincidence to
/// spans at page 31 mod 64.
pub const META_SKEW: usize = 33 * 64;
/// Where the class map ends in the metas' first (OS) page: it grows down
/// from there, a byte per 64 KiB page, so page 0's byte lies just below
/// this offset and a heap's first 2,048 pages (128 MiB) have their class
/// bytes on the same OS page as the first metas. A heap of a few spans
/// then opens one page of its side table for both (they took a page each
/// while the map lay after the bitmap). The line between the map's end
/// and [`META_SKEW`] stays empty, so no line holds both a class byte,
/// which remote freers read, and a meta, which the owner writes.
pub const CLASSES_END: usize = 32 * 64;
const _: () = assert!(CLASSES_END + 64 <= META_SKEW);
/// Where the remote-free bitmap starts in its first OS page: one line in.
/// A page's 64 words are 512 bytes, so from here a heap's first 16 pages'
/// words end 64 bytes into a third OS page, which only the frees of
/// blocks in the last 8 KiB of page 15 write; a small heap's blocks lie
/// near their spans' starts, and its bitmap takes two OS pages (three at
/// [`META_SKEW`]'s offset, where it lay after the metas). Not at the page's
/// start: there, the producer/consumer case of the `threads` benchmark,
/// whose consumer frees every block remotely, took 1.03x the time
/// (docs/threads.md).
pub const BITS_SKEW: usize = 64;
/// Bytes of region one remote-free bitmap bit stands for (every block
/// starts on such a boundary).
pub const GRANULE_SHIFT: usize = 4;
/// Remote-free bitmap words per page: one summary bit each.
pub const REMOTE_WORDS: usize = PAGE_SIZE >> (GRANULE_SHIFT + 6);
const _: () = assert!(REMOTE_WORDS == 64, "a page's summary is one u64");

/// One heap's page table: its region's base and length, the metas (64 B
/// per 64 KiB page) and the class map (1 B per page), both in the side
/// table. `Copy`: every part of the heap holds the same four words; the
/// table lives as long as the heap.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PageTable {
    /// The region's first address.
    pub base: usize,
    /// Meta of page 0.
    pub metas: *mut PageMeta,
    /// Bytes of region the table covers (the reservation).
    pub len: usize,
    /// The class map: for each page of an owner's small span (`Small`,
    /// [`OWNER_LOCAL`]) its class plus one, for any other page 0. What a
    /// thread freeing another thread's block without its size (C `free`)
    /// needs, kept off the meta's line: the owner writes that line on every
    /// allocation and free of the span, and a freer reading `kind` and
    /// `class` there took the line from the owner's core each time (84% of
    /// the free path's samples in the C larson benchmark). This map is
    /// written only when a span is made, retired or sealed, so its lines
    /// stay shared in every core's cache. Stable, like the meta's `class`,
    /// while any block of the span is live. The map grows down: this is
    /// page 0's byte, and page `idx`'s lies `idx` bytes below it (see
    /// [`CLASSES_END`]).
    pub classes: *const AtomicU8,
}

impl PageTable {
    /// The meta of page `idx`.
    #[inline]
    pub fn meta(&self, idx: usize) -> &PageMeta {
        crate::sync::invariant!(idx < self.len >> PAGE_SHIFT, "page {idx} outside the heap");
        // SAFETY: idx is inside the page table, which lives as long as the
        // heap that handed out this copy.
        unsafe { &*self.metas.add(idx) }
    }

    /// The class of the owner's small span holding page `idx` (see
    /// [`PageTable::classes`]); `None` for any other page.
    #[inline]
    pub fn small_class(&self, idx: usize) -> Option<usize> {
        crate::sync::invariant!(idx < self.len >> PAGE_SHIFT, "page {idx} outside the heap");
        // SAFETY: idx is inside the class map (which grows down from page
        // 0's byte), and the map lives as long as the heap that handed out
        // this copy.
        let v = unsafe { &*self.classes.sub(idx) }.load(Ordering::Relaxed);
        v.checked_sub(1).map(usize::from)
    }

    /// Records pages `idx .. idx + pages` in the class map: an owner's
    /// small span of class `c` when `c` is `Some`, else no such span. The
    /// caller holds what makes the pages' meta writable (the span lock, or
    /// the owner's state for a span it makes or seals).
    pub fn set_small_class(&self, idx: usize, pages: usize, c: Option<usize>) {
        crate::sync::invariant!(
            idx + pages <= self.len >> PAGE_SHIFT,
            "pages {idx}+{pages} outside the heap"
        );
        let v = c.map_or(0, |c| {
            crate::sync::invariant!(c < u8::MAX as usize, "class {c} does not fit the map");
            c as u8 + 1
        });
        for i in idx..idx + pages {
            // SAFETY: the pages are inside the class map (which grows
            // down), opened with their metas (SpanAllocator::open_tables).
            unsafe { &*self.classes.sub(i) }.store(v, Ordering::Relaxed);
        }
    }

    /// The page index of meta `m`.
    #[inline]
    pub fn idx_of(&self, m: &PageMeta) -> usize {
        (m as *const PageMeta as usize - self.metas as usize) / core::mem::size_of::<PageMeta>()
    }

    /// The first address of page `idx`.
    #[inline]
    pub fn page_addr(&self, idx: usize) -> usize {
        self.base + (idx << PAGE_SHIFT)
    }

    /// Whether `addr` lies in the region.
    #[inline]
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base) < self.len
    }

    /// The head page of the span holding page `idx`, and its meta.
    #[inline]
    pub fn head_of(&self, idx: usize) -> (usize, &PageMeta) {
        let m = self.meta(idx);
        if m.kind() == Kind::Cont {
            let head = m.head.get() as usize;
            (head, self.meta(head))
        } else {
            (idx, m)
        }
    }

    /// Marks pages `idx + 1 .. idx + pages` as continuations of `idx`.
    pub fn mark_cont(&self, idx: usize, pages: usize) {
        for i in idx + 1..idx + pages {
            let m = self.meta(i);
            m.set_kind(Kind::Cont);
            m.head.set(idx as u32);
        }
    }

    /// Usable size of the live block at `p` (0 outside any block).
    pub fn usable_size(&self, p: usize) -> usize {
        let (_, m) = self.head_of((p - self.base) >> PAGE_SHIFT);
        match m.kind() {
            Kind::Small => m.block_size.get() as usize,
            Kind::Large => large_usable(m),
            _ => 0,
        }
    }

    /// The block containing `addr` below `committed` bytes: its base and
    /// size, in O(1). Reads the page table only, so the fault handler may
    /// call it.
    pub fn allocation_containing(&self, addr: usize, committed: usize) -> Option<(usize, usize)> {
        if !self.contains(addr) || addr >= self.base + committed {
            return None;
        }
        let (head, m) = self.head_of((addr - self.base) >> PAGE_SHIFT);
        let start = self.page_addr(head);
        match m.kind() {
            Kind::Small => {
                let size = m.block_size.get() as usize;
                let i = (addr - start) / size;
                if i >= m.capacity.get() as usize {
                    return None;
                }
                Some((start + i * size, size))
            }
            Kind::Large => {
                let base = start + m.offset.get() as usize;
                let end = start + m.span_pages.get() as usize * PAGE_SIZE;
                (addr >= base && addr < end).then_some((base, end - base))
            }
            _ => None,
        }
    }

    /// The first `top` pages as spans, in address order: `(head page, its
    /// meta, pages)` for small, large and free spans; pages in no span one
    /// at a time. Allocates nothing (the fork repair uses it). The caller
    /// keeps the spans still (the span lock, or the only thread).
    pub fn spans_in_order(
        &self,
        top: usize,
    ) -> impl Iterator<Item = (usize, &PageMeta, usize)> + '_ {
        let mut idx = 0;
        core::iter::from_fn(move || {
            (idx < top).then(|| {
                let m = self.meta(idx);
                let pages = match m.kind() {
                    Kind::Small | Kind::Large | Kind::FreeSpan => m.span_pages.get() as usize,
                    _ => 1,
                };
                let head = idx;
                idx += pages;
                (head, m, pages)
            })
        })
    }
}

/// Usable bytes of the large block whose span `m` heads.
#[inline]
pub fn large_usable(m: &PageMeta) -> usize {
    m.span_pages.get() as usize * PAGE_SIZE - m.offset.get() as usize
}

/// Debug builds' report of a broken heap invariant at `p` (see
/// `HeapCore::debug_check_small_block` and `Remote::collect`): `what`, the
/// address, and, where there is one, a number with its meaning (a class, a
/// size), then abort. Allocates nothing: it runs inside `malloc` and
/// `free`.
#[cfg(debug_assertions)]
#[cold]
pub fn debug_invariant_broken(what: &str, p: *mut u8, detail: Option<(&str, usize)>) -> ! {
    let mut buf = [0u8; 192];
    let mut msg = crate::fmt_buf::Buf::new(&mut buf)
        .str("frostheap (debug check): ")
        .str(what)
        .str(" at 0x")
        .hex(p as usize);
    if let Some((meaning, n)) = detail {
        msg = msg.str(" (").str(meaning).str(" ").dec(n as u64).str(")");
    }
    crate::os::write_stderr(msg.str("\n").finish());
    std::process::abort();
}

/// Stops the process on a free of something that is not a live block.
#[cold]
pub fn invalid_free(p: *mut u8) -> ! {
    let mut buf = [0u8; 96];
    let msg = crate::fmt_buf::Buf::new(&mut buf)
        .str("frostheap: free of an invalid or already freed pointer 0x")
        .hex(p as usize)
        .str("\n")
        .finish();
    crate::os::write_stderr(msg);
    std::process::abort();
}
