//! Large blocks (above 128 KiB, or aligned beyond what a size class
//! gives): whole spans from the span allocator, page-aligned (with an
//! offset into the span for larger alignments), grown and shrunk in place
//! when the pages after them are free. The helpers here lay large spans out
//! in the page table; the heap counts them and takes the locks.

use core::alloc::Layout;

use super::page::{Kind, PageMeta, PageTable};
use super::span::Locked;
use crate::region::{round_up, PAGE_SIZE};

/// Pages a large block for `layout` takes; `None` when it cannot fit in
/// `reserved` bytes with the room its alignment may need to find an
/// aligned start (the span allocator takes only the block's pages, at an
/// aligned page: `Locked::alloc_aligned`).
pub(super) fn pages_for(layout: Layout, reserved: usize) -> Option<usize> {
    let extra = layout.align().saturating_sub(PAGE_SIZE);
    match layout.size().max(1).checked_add(extra) {
        Some(b) if b <= reserved => Some(layout.size().max(1).div_ceil(PAGE_SIZE)),
        _ => None,
    }
}

/// Makes the `n_pages` pages at `idx` (just taken from the span allocator)
/// a large block aligned to `align`, allocated by the state `owner`;
/// returns its address and usable size.
pub(super) fn place(
    pages: &PageTable,
    idx: usize,
    n_pages: usize,
    align: usize,
    owner: u8,
) -> (usize, usize) {
    let start = pages.page_addr(idx);
    let aligned = round_up(start, align.max(PAGE_SIZE));
    let offset = aligned - start;
    let m = pages.meta(idx);
    m.set_kind(Kind::Large);
    m.span_pages.set(n_pages as u32);
    m.offset.set(offset as u32);
    m.owner.set(owner);
    m.block_size.set(0);
    pages.mark_cont(idx, n_pages);
    (aligned, n_pages * PAGE_SIZE - offset)
}

/// The largest size a reallocation gives a small block of: the largest
/// class whose span holds two blocks or more (32 KiB; a test checks it
/// against `class::span_pages`). Above it, each class block has a span of
/// its own, as a large block of the same size has.
pub(super) const PAGES_FROM: usize = 32 << 10;

/// Whether a reallocation to `size` bytes aligned to `align` gives (or
/// keeps) a large block, though a class may hold the size (see the
/// `realloc` module).
#[inline]
pub(super) fn realloc_in_pages(size: usize, align: usize) -> bool {
    size > PAGES_FROM && align <= PAGE_SIZE
}

/// Whether a small block of `cur` usable bytes keeps a reallocation to
/// `new_size` where it is (it fits, and does not waste more than half).
#[inline]
pub(super) fn small_fits(cur: usize, new_size: usize) -> bool {
    new_size <= cur && (new_size >= cur / 2 || cur <= 64)
}

/// Grows or shrinks the large block whose span `m` heads (page `idx`) in
/// place to hold `new_size` bytes, under the span lock: the pages after it
/// are taken if free (or committed at the top), or its tail is freed.
/// Returns the usable bytes before and after, or `None` when it cannot
/// grow where it is.
pub(super) fn resize_in_place(
    spans: &mut Locked<'_>,
    pages: &PageTable,
    m: &PageMeta,
    idx: usize,
    new_size: usize,
) -> Option<(usize, usize)> {
    let n = m.span_pages.get() as usize;
    // The block starts `offset` bytes into its span (non-zero only for
    // alignments above a page, which C `realloc` does not know about).
    let new_n = (m.offset.get() as usize + new_size.max(1)).div_ceil(PAGE_SIZE);
    if new_n == n {
        return Some((n * PAGE_SIZE, n * PAGE_SIZE));
    }
    if new_n < n {
        m.span_pages.set(new_n as u32);
        // SAFETY: the tail pages are past the shrunk block (now cut off its
        // span) and hold nothing live.
        unsafe { spans.free(idx + new_n, n - new_n) };
    } else {
        if !spans.take_following(idx + n, new_n - n) {
            return None;
        }
        m.span_pages.set(new_n as u32);
        for i in idx + n..idx + new_n {
            let c = pages.meta(i);
            c.set_kind(Kind::Cont);
            c.head.set(idx as u32);
        }
    }
    Some((n * PAGE_SIZE, new_n * PAGE_SIZE))
}
