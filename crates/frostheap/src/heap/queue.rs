//! Class queues: for each size class, a doubly linked queue of spans
//! (through page indices in the page table) with a *current* span that
//! allocation pops from; new spans are carved lazily, 32 blocks at a time.
//!
//! A [`ClassState`] is one set of queues with its counters: the owner's
//! (`local`, plain fields, owner thread only) or the shared one (other
//! threads, under the shared lock). A span that runs dry leaves its queue
//! (marked `FULL` when it is the owner's, see [`super::remote`]); a free
//! into it brings it back; an empty span that is not current is retired to
//! the span allocator.

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use super::class::{span_pages, CLASS_SIZE, N_CLASSES};
use super::core::HeapCore;
use super::page::{
    Block, Kind, PageMeta, CURRENT_USED, EMPTY, GENERATION, GENERATION_STEP, IN_QUEUE, NONE,
};
use super::stats::Counters;
use crate::region::PAGE_SIZE;

/// Blocks linked per lazy extension of a fresh span.
const EXTEND_BATCH: u32 = 32;

/// One set of class queues: the owner's (`local`) or the locked one.
/// `repr(C)`, fast-path fields first, from a cache line of its own (see
/// [`HeapCore`]).
#[repr(C, align(64))]
pub(crate) struct ClassState {
    pub(super) counters: Counters,
    /// Head span of each class queue, or the empty meta.
    pub(super) current: [Cell<*const PageMeta>; N_CLASSES],
    /// Queue heads and tails (page indices).
    pub(super) head: [Cell<u32>; N_CLASSES],
    pub(super) tail: [Cell<u32>; N_CLASSES],
    /// [`OWNER_LOCAL`] or [`OWNER_SHARED`].
    pub(super) kind: u8,
}

impl ClassState {
    pub(super) fn new(kind: u8) -> ClassState {
        ClassState {
            current: core::array::from_fn(|_| Cell::new(&EMPTY.0 as *const PageMeta)),
            head: core::array::from_fn(|_| Cell::new(NONE)),
            tail: core::array::from_fn(|_| Cell::new(NONE)),
            counters: Counters::new(),
            kind,
        }
    }

    /// Pops a block of class `c` from this state's current span, with its
    /// size; `None` when that free list is empty. The caller owns the state
    /// (the owner thread, or the holder of the shared lock) and counts the
    /// allocation.
    #[inline(always)]
    pub(super) fn pop_current(&self, c: usize) -> Option<(NonNull<u8>, usize)> {
        debug_assert!(c < N_CLASSES, "class out of range");
        // SAFETY: `current` always points at a live meta or at EMPTY (whose
        // free list is null); c < N_CLASSES.
        let m = unsafe { &*self.current.get_unchecked(c).get() };
        let b = NonNull::new(m.free.get())?;
        // SAFETY: b is a free block of this span; its first word is the link
        // written when it was freed or carved. (No `used` count: the current
        // span's is not kept, see PageMeta::used.)
        m.free.set(unsafe { b.as_ref() }.next);
        // A span in class c's queue has block_size == CLASS_SIZE[c];
        // reading it from the meta's line saves a table load.
        debug_assert_eq!(
            m.block_size.get(),
            CLASS_SIZE[c],
            "span in the wrong class queue"
        );
        Some((b.cast(), m.block_size.get() as usize))
    }
}

impl HeapCore {
    /// Links the next batch of never-used blocks into the free list.
    pub(super) fn extend_free(&self, m: &PageMeta, idx: usize) {
        let size = m.block_size.get() as usize;
        let first = m.extend.get();
        let n = (m.capacity.get() - first).min(EXTEND_BATCH);
        let start = self.page_addr(idx) + first as usize * size;
        let mut next = m.free.get();
        // Link backwards so the list hands out ascending addresses.
        for i in (0..n as usize).rev() {
            let b = (start + i * size) as *mut Block;
            // SAFETY: b is a never-used block inside this committed span.
            unsafe { (*b).next = next };
            next = b;
        }
        m.free.set(next);
        m.extend.set(first + n);
    }

    pub(super) fn new_small_span(&self, st: &ClassState, c: usize) -> Option<usize> {
        let pages = span_pages(c);
        let mut spans = self.lock_spans();
        let (idx, _) = match spans.alloc(pages) {
            Some(s) => s,
            None => {
                self.others.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let m = self.meta(idx);
        let size = CLASS_SIZE[c];
        m.set_kind(Kind::Small);
        m.class.set(c as u8);
        m.owner.set(st.kind);
        m.block_size.set(size);
        m.capacity.set(((pages * PAGE_SIZE) / size as usize) as u32);
        m.extend.set(0);
        m.used.set(0);
        m.free.set(ptr::null_mut());
        m.span_pages.set(pages as u32);
        m.flags.set(0);
        // Every bit of a span's pages is collected before the span can be
        // retired (`used` counts uncollected remote frees), so a new span
        // starts with none.
        debug_assert!(!self.has_remote(idx, m), "new span with remote frees");
        // A new incarnation: a delayed freer of the span's previous one
        // (see free_remote) finds another generation and leaves it alone.
        let generation = m.state.load(Ordering::Relaxed) & GENERATION;
        m.state
            .store(generation.wrapping_add(GENERATION_STEP), Ordering::Relaxed);
        self.mark_cont(idx, pages);
        Some(idx)
    }

    pub(super) fn mark_cont(&self, idx: usize, pages: usize) {
        for i in idx + 1..idx + pages {
            let m = self.meta(i);
            m.set_kind(Kind::Cont);
            m.head.set(idx as u32);
        }
    }
    /// Returns an empty small span to the span allocator.
    pub(super) fn retire_span(&self, idx: usize) {
        let m = self.meta(idx);
        debug_assert!(m.used.get() == 0, "retiring a span with live blocks");
        let pages = m.span_pages.get() as usize;
        // SAFETY: the span has no live block, and leaves its queue's
        // bookkeeping with this call (its pages become a free span).
        unsafe { self.lock_spans().free(idx, pages) };
    }

    // -----------------------------------------------------------------
    // Class queues (doubly linked through page indices).

    pub(super) fn queue_push_back(&self, st: &ClassState, c: usize, idx: usize) {
        let m = self.meta(idx);
        if m.flags.get() & IN_QUEUE != 0 {
            return;
        }
        m.flags.set(m.flags.get() | IN_QUEUE);
        let tail = st.tail[c].get();
        m.prev.set(tail);
        m.next.set(NONE);
        if tail == NONE {
            st.head[c].set(idx as u32);
            Self::set_current(st, c, m);
        } else {
            self.meta(tail as usize).next.set(idx as u32);
        }
        st.tail[c].set(idx as u32);
    }

    /// Makes `new` class `c`'s current span in `st`, its `used` count
    /// [`CURRENT_USED`] (the empty meta is never written). The span it
    /// replaces is dry, its count already exact, or the heap is being
    /// sealed.
    pub(super) fn set_current(st: &ClassState, c: usize, new: *const PageMeta) {
        if !ptr::eq(new, &EMPTY.0) {
            // SAFETY: a non-empty current is a live meta of this heap.
            unsafe { &*new }.used.set(CURRENT_USED);
        }
        st.current[c].set(new);
    }

    pub(super) fn queue_unlink(&self, st: &ClassState, c: usize, idx: usize) {
        let m = self.meta(idx);
        // The current span leaves only when dry, its `used` count then set
        // exact by the caller (PageMeta::used).
        debug_assert!(
            !ptr::eq(st.current[c].get(), m)
                || (m.free.get().is_null()
                    && m.extend.get() == m.capacity.get()
                    && m.used.get() == m.capacity.get()),
            "current span unlinked before it ran dry"
        );
        if m.flags.get() & IN_QUEUE == 0 {
            return;
        }
        m.flags.set(m.flags.get() & !IN_QUEUE);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            st.head[c].set(next);
            let cur: *const PageMeta = if next == NONE {
                &EMPTY.0
            } else {
                self.meta(next as usize)
            };
            Self::set_current(st, c, cur);
        } else {
            self.meta(prev as usize).next.set(next);
        }
        if next == NONE {
            st.tail[c].set(prev);
        } else {
            self.meta(next as usize).prev.set(prev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::heap_of;
    use super::*;
    use crate::region::PAGE_SHIFT;
    use core::alloc::Layout;

    /// The current span's count runs down from CURRENT_USED with every
    /// free; if it ever reached zero (2^31 frees into one current span),
    /// the slow path must leave the span in place, not retire it.
    #[test]
    fn a_current_span_counted_down_to_zero_stays_current() {
        let core = heap_of(64 << 20);
        let layout = Layout::from_size_align(48, 8).unwrap();
        let p = core.alloc(layout);
        let q = core.alloc(layout);
        let idx = (p as usize - core.base) >> PAGE_SHIFT;
        let m = core.meta(idx);
        let c = m.class.get() as usize;
        assert!(ptr::eq(core.local.current[c].get(), m));
        assert_eq!(m.used.get(), CURRENT_USED);
        // Two frees left before the count wraps to zero.
        m.used.set(2);
        // SAFETY: p and q are live blocks of this heap, freed once each.
        unsafe {
            core.free(p);
            core.free(q);
        }
        assert_eq!(m.used.get(), 0);
        assert!(
            ptr::eq(core.local.current[c].get(), m),
            "span left its queue"
        );
        assert_eq!(m.kind(), Kind::Small, "current span retired");
        assert_eq!(core.stats().in_use, 0);
        // The span goes on serving its blocks (last freed first).
        assert_eq!(core.alloc(layout), q);
        assert_eq!(core.alloc(layout), p);
        assert_eq!(
            m.used.get(),
            0,
            "allocations from the current span do not count"
        );
    }
}
