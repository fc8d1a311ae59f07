//! Reallocation: a block stays where it is whenever it still fits (a small
//! block not wasting more than half, a large one whose following pages are
//! free or can be committed), and moves otherwise: a large block of 1 MiB
//! or more that grows moves its pages, charging its growth alone
//! ([`HeapCore::move_large`]); any other block is copied into a new one.
//!
//! **Whole pages from 32 KiB on.** A reallocation to more than
//! [`large::PAGES_FROM`] bytes gives or keeps a large block, though a class
//! would hold the size: classes above it have a span of their own per block
//! (`class::span_pages`), so the pages are the same, and a large block can
//! later grow into the pages after it and shrink by giving its tail back,
//! where a class block is copied at each step. A buffer reused at sizes of
//! up to 300 KB (cleared, extended, shrunk back to its length) copied its
//! contents at almost every step (`memmove`: 42% of the time, 1.6×
//! jemalloc's, which keeps large blocks from 16 KiB where they are).

use core::alloc::Layout;
use core::ptr;

use super::class::{class_for, class_of};
use super::core::HeapCore;
use super::large;
use super::page::{invalid_free, large_usable, Kind};
use crate::region::{PAGE_SHIFT, PAGE_SIZE};

impl HeapCore {
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
        let (head, m) = self
            .pages
            .head_of((p as usize - self.pages.base) >> PAGE_SHIFT);
        let pages = large::realloc_in_pages(new_size, align);
        match (m.kind(), class_for(new_size, align)) {
            (Kind::Small, Some(_)) if large::small_fits(m.block_size.get() as usize, new_size) => {
                return p;
            }
            (Kind::Large, c) if align <= PAGE_SIZE && (c.is_none() || pages) => {
                if self.resize_large_in_place(m, head, new_size) {
                    return p;
                }
                // SAFETY: (1): the block is live, and the caller's.
                let q = unsafe { self.move_large(m, head, new_size) };
                if !q.is_null() {
                    return q;
                }
            }
            _ => {}
        }
        // SAFETY: new_size is non-zero or a valid zero-size layout; align is
        // a power of two taken from a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let q = self.alloc_for_move(new_size <= old.size(), || {
            if pages {
                self.alloc_large(new_layout).0
            } else {
                self.alloc(new_layout)
            }
        });
        if q.is_null() {
            // A shrink that could not move keeps its block, which holds the
            // new size with the same alignment: past the limit, a program
            // giving memory back (`shrink_to_fit`) must not be refused.
            return if new_size <= old.size() { p } else { q };
        }
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe {
            ptr::copy_nonoverlapping(p, q, old.size().min(new_size));
            self.free(p);
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
        let (head, m) = self
            .pages
            .head_of((p as usize - self.pages.base) >> PAGE_SHIFT);
        let old_size = match m.kind() {
            Kind::Small => {
                let cur = m.block_size.get() as usize;
                if large::small_fits(cur, new_size) {
                    return p;
                }
                cur
            }
            Kind::Large => {
                if class_of(new_size).is_none() || large::realloc_in_pages(new_size, 16) {
                    if self.resize_large_in_place(m, head, new_size) {
                        return p;
                    }
                    // SAFETY: (1): the block is live, and the caller's.
                    let q = unsafe { self.move_large(m, head, new_size) };
                    if !q.is_null() {
                        return q;
                    }
                }
                large_usable(m)
            }
            _ => invalid_free(p),
        };
        let q = self.alloc_for_move(new_size <= old_size, || {
            if large::realloc_in_pages(new_size, 16) {
                self.alloc_c_large::<false>(new_size)
            } else {
                // SAFETY: (1): we are the owner.
                unsafe { self.alloc_c_as_owner::<false>(new_size) }
            }
        });
        if q.is_null() {
            // A shrink keeps its block past the limit (see `realloc`).
            return if new_size <= old_size { p } else { q };
        }
        // SAFETY: both blocks are live and distinct; p has old_size usable
        // bytes and q at least new_size; then p is freed once, by its owner
        // (1).
        unsafe {
            ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            self.free_at_as_owner(p, p as usize - self.pages.base);
        }
        q
    }
}
