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
use core::sync::atomic::{AtomicU32, AtomicU64};

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
    pub offset: Cell<u32>,
    /// [`Kind`] as a byte.
    pub kind: Cell<u8>,
    /// [`OWNER_LOCAL`] or [`OWNER_SHARED`] (next to `kind`: the free
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
