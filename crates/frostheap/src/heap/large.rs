//! Large blocks (above 128 KiB, or aligned beyond what a size class
//! gives): whole spans from the span allocator, page-aligned (with an
//! offset into the span for larger alignments), grown and shrunk in place
//! when the pages after them are free; and reallocation of any block,
//! which stays where it is whenever it still fits.

use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::Ordering;

use super::class::{class_for, class_of};
use super::core::{invalid_free, HeapCore};
use super::page::{Kind, PageMeta, OWNER_LOCAL, OWNER_SHARED};
use crate::region::{round_up, PAGE_SHIFT, PAGE_SIZE};

impl HeapCore {
    /// Allocates a large block; returns it and whether it is known zeroed.
    pub(super) fn alloc_large(&self, layout: Layout) -> (*mut u8, bool) {
        if self.is_sealed() {
            return (ptr::null_mut(), false);
        }
        let align = layout.align();
        let extra = align.saturating_sub(PAGE_SIZE);
        let bytes = match layout.size().max(1).checked_add(extra) {
            Some(b) if b <= self.region.reserved() => b,
            _ => {
                self.others.refused.fetch_add(1, Ordering::Relaxed);
                return (ptr::null_mut(), false);
            }
        };
        let pages = bytes.div_ceil(PAGE_SIZE);
        let owner = self.is_owner();
        let (idx, zeroed) = {
            match self.lock_spans().alloc(pages) {
                Some(s) => s,
                None => {
                    self.others.refused.fetch_add(1, Ordering::Relaxed);
                    return (ptr::null_mut(), false);
                }
            }
        };
        let start = self.page_addr(idx);
        let aligned = round_up(start, align.max(PAGE_SIZE));
        let offset = aligned - start;
        let m = self.meta(idx);
        m.set_kind(Kind::Large);
        m.span_pages.set(pages as u32);
        m.offset.set(offset as u32);
        m.owner.set(if owner { OWNER_LOCAL } else { OWNER_SHARED });
        m.block_size.set(0);
        self.mark_cont(idx, pages);
        let usable = pages * PAGE_SIZE - offset;
        if owner {
            self.local.on_alloc(usable);
        } else {
            self.shared.on_alloc(usable);
        }
        (aligned as *mut u8, zeroed)
    }

    pub(super) fn free_large(&self, m: &PageMeta, idx: usize) {
        if !self.is_owner()
            && crate::guard::defer_free((self.page_addr(idx) + m.offset.get() as usize) as *mut u8)
        {
            return;
        }
        let pages = m.span_pages.get() as usize;
        let usable = pages * PAGE_SIZE - m.offset.get() as usize;
        self.account_large_free(m, usable);
        // SAFETY: the span's block is freed: nothing in it is live.
        unsafe { self.lock_spans().free(idx, pages) };
    }

    pub(super) fn account_large_free(&self, m: &PageMeta, usable: usize) {
        if m.owner.get() == OWNER_SHARED {
            self.shared.on_free(usable);
        } else if self.is_owner() {
            self.local.on_free(usable);
        } else {
            self.others.freed_bytes.fetch_add(usable, Ordering::Relaxed);
            self.others.freed_count.fetch_add(1, Ordering::Relaxed);
        }
    }
    // -----------------------------------------------------------------
    // Reallocation.

    /// Resizes a block, in place when it can.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap allocated with `old`'s alignment
    ///    and a size of at least `old.size()`.
    pub(crate) unsafe fn realloc(&self, p: *mut u8, old: Layout, new_size: usize) -> *mut u8 {
        if self.is_sealed() {
            return ptr::null_mut();
        }
        let align = old.align();
        let idx = (p as usize - self.base) >> PAGE_SHIFT;
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        match (m.kind(), class_for(new_size, align)) {
            (Kind::Small, Some(_)) => {
                let cur = m.block_size.get() as usize;
                if new_size <= cur && (new_size >= cur / 2 || cur <= 64) {
                    return p;
                }
            }
            (Kind::Large, None)
                if align <= PAGE_SIZE && self.resize_large_in_place(m, head, new_size) =>
            {
                return p;
            }
            _ => {}
        }
        // SAFETY: new_size is non-zero or a valid zero-size layout; align is
        // a power of two taken from a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let q = self.alloc(new_layout);
        if !q.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old.size().min(new_size));
                self.free(p);
            }
        }
        q
    }

    /// C `realloc` of a live block by the owner, to `new_size > 0` bytes
    /// aligned to 16: in place when the block still fits (or, for a large
    /// one, can grow or shrink where it is), otherwise moved, copying the
    /// old usable size (C does not tell the old request). One page-table
    /// lookup, where `usable_size` followed by [`HeapCore::realloc`] made
    /// two; null (and `p` untouched) past the limit.
    ///
    /// # Safety
    /// 1. `p` is a live block of this heap, and the calling thread is the
    ///    owner.
    pub(crate) unsafe fn realloc_c_as_owner(&self, p: *mut u8, new_size: usize) -> *mut u8 {
        let idx = (p as usize - self.base) >> PAGE_SHIFT;
        let mut head = idx;
        let mut m = self.meta(idx);
        if m.kind() == Kind::Cont {
            head = m.head.get() as usize;
            m = self.meta(head);
        }
        let old_size = match m.kind() {
            Kind::Small => {
                let cur = m.block_size.get() as usize;
                if new_size <= cur && (new_size >= cur / 2 || cur <= 64) {
                    return p;
                }
                cur
            }
            Kind::Large => {
                if class_of(new_size).is_none() && self.resize_large_in_place(m, head, new_size) {
                    return p;
                }
                m.span_pages.get() as usize * PAGE_SIZE - m.offset.get() as usize
            }
            _ => invalid_free(p),
        };
        // SAFETY: (1): we are the owner.
        let q = unsafe { self.alloc_c_as_owner::<false>(new_size) };
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; p has old_size
            // usable bytes and q at least new_size; then p is freed once.
            unsafe {
                ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
                self.free(p);
            }
        }
        q
    }

    pub(super) fn resize_large_in_place(&self, m: &PageMeta, idx: usize, new_size: usize) -> bool {
        let pages = m.span_pages.get() as usize;
        // The block starts `offset` bytes into its span (non-zero only for
        // alignments above a page, which C `realloc` does not know about).
        let new_pages = (m.offset.get() as usize + new_size.max(1)).div_ceil(PAGE_SIZE);
        if new_pages == pages {
            return true;
        }
        let mut spans = self.lock_spans();
        if new_pages < pages {
            m.span_pages.set(new_pages as u32);
            // SAFETY: the tail pages are past the shrunk block (now cut off
            // its span) and hold nothing live.
            unsafe { spans.free(idx + new_pages, pages - new_pages) };
        } else {
            let need = new_pages - pages;
            if !spans.take_following(idx + pages, need) {
                return false;
            }
            m.span_pages.set(new_pages as u32);
            for i in idx + pages..idx + new_pages {
                let c = self.meta(i);
                c.set_kind(Kind::Cont);
                c.head.set(idx as u32);
            }
        }
        let (old_usable, new_usable) = (pages * PAGE_SIZE, new_pages * PAGE_SIZE);
        if m.owner.get() == OWNER_SHARED {
            self.shared.on_resize(old_usable, new_usable);
        } else if self.is_owner() {
            self.local.on_resize(old_usable, new_usable);
        } else if new_usable < old_usable {
            self.others
                .freed_bytes
                .fetch_add(old_usable - new_usable, Ordering::Relaxed);
        } else {
            // A growth by a foreign thread of an owner block: count it as
            // shared so the owner's plain counters stay untouched.
            self.shared.on_resize(0, new_usable - old_usable);
        }
        true
    }
}
