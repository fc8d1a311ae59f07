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

use super::class::{is_fine_only, CLASS_SIZE, N_CLASSES};
use super::page::{
    Block, Kind, PageMeta, PageTable, CURRENT_USED, EMPTY, GENERATION, GENERATION_STEP, IN_QUEUE,
    NONE, OWNER_LOCAL,
};
use super::stats::Counters;
use crate::region::PAGE_SIZE;

/// Blocks linked per lazy extension of a fresh span, at most...
const EXTEND_BATCH: u32 = 32;
/// ... and bytes at most (but always one block): linking a block writes
/// its first word, which makes its page resident. With a fixed 32 blocks,
/// a thread that allocated a few blocks of every class from 16 B to 4 KiB
/// made 843 KiB resident for a working set of 128 KiB (the `threads`
/// benchmark's `local` case: 808 KiB in the thread heap's smaps, against
/// glibc's 132 KiB arena); one base page per extension is mimalloc's
/// bound too.
const EXTEND_BYTES: u32 = 4096;

/// One set of class queues: the owner's (`local`) or the locked one.
/// `repr(C)`, fast-path fields first, from a cache line of its own (see
/// `HeapCore`).
#[repr(C, align(64))]
pub(crate) struct ClassState {
    pub(super) counters: Counters,
    /// Head span of each class queue, or the empty meta.
    pub(super) current: [Cell<*const PageMeta>; N_CLASSES],
    /// Queue heads and tails (page indices).
    pub(super) head: [Cell<u32>; N_CLASSES],
    pub(super) tail: [Cell<u32>; N_CLASSES],
    /// Blocks each class has taken from the next classes since it last
    /// carved blocks of its own (`HeapCore::borrow`).
    pub(super) borrowed: [Cell<u16>; N_CLASSES],
    /// [`OWNER_LOCAL`] or [`super::page::OWNER_SHARED`].
    pub(super) kind: u8,
    /// Whether the fine-only classes ([`is_fine_only`]) have spans of
    /// their own; until then each is served by the next class, its
    /// `current` that class's (see [`ClassState::serving`]). Turned on
    /// once, by [`ClassState::split_fine_classes`].
    pub(super) fine: Cell<bool>,
    /// Set while the owner allocates the block a shrink moves to
    /// ([`super::core::HeapCore::alloc_for_move`]): a refusal then is
    /// none (the shrink keeps its block), and is not counted.
    pub(super) shrinking: Cell<bool>,
}

const _: () = assert!(core::mem::offset_of!(ClassState, counters) == 0);

impl ClassState {
    /// Writes an empty state at `dst`, element by element (no copy of the
    /// state on the stack: see `HeapCore::init_at`).
    ///
    /// # Safety
    /// 1. `dst` is valid for a write of a `ClassState`.
    pub(super) unsafe fn init(dst: *mut ClassState, kind: u8) {
        // SAFETY: (1); every field, and every element of the arrays, is
        // written once through its own place.
        unsafe {
            let current = (&raw mut (*dst).current).cast::<Cell<*const PageMeta>>();
            let head = (&raw mut (*dst).head).cast::<Cell<u32>>();
            let tail = (&raw mut (*dst).tail).cast::<Cell<u32>>();
            let borrowed = (&raw mut (*dst).borrowed).cast::<Cell<u16>>();
            for c in 0..N_CLASSES {
                current.add(c).write(Cell::new(&EMPTY.0 as *const PageMeta));
                head.add(c).write(Cell::new(NONE));
                tail.add(c).write(Cell::new(NONE));
                borrowed.add(c).write(Cell::new(0));
            }
            (&raw mut (*dst).counters).write(Counters::new());
            (&raw mut (*dst).kind).write(kind);
            (&raw mut (*dst).fine).write(Cell::new(false));
            (&raw mut (*dst).shrinking).write(Cell::new(false));
        }
        // Every field of ClassState, to be written above: stops compiling
        // when a field is added.
        const _: fn(&ClassState) = |ClassState {
                                        counters: _,
                                        current: _,
                                        head: _,
                                        tail: _,
                                        borrowed: _,
                                        kind: _,
                                        fine: _,
                                        shrinking: _,
                                    }| {};
    }

    /// The class whose spans serve requests of class `c`: `c`, or, for a
    /// fine-only class before [`ClassState::split_fine_classes`], the
    /// next class (whose `current` its `current` follows, so the fast
    /// path needs no test).
    #[inline]
    pub(super) fn serving(&self, c: usize) -> usize {
        if is_fine_only(c) && !self.fine.get() {
            c + 1
        } else {
            c
        }
    }

    /// Gives the fine-only classes spans of their own from now on (a heap
    /// grown large: see `heap::class`). Their queues are empty until then;
    /// their `current` stops following the next class's.
    pub(super) fn split_fine_classes(&self) {
        if self.fine.replace(true) {
            return;
        }
        for c in (0..N_CLASSES).filter(|&c| is_fine_only(c)) {
            crate::sync::invariant!(self.head[c].get() == NONE, "a fine-only class with spans");
            self.current[c].set(&EMPTY.0);
        }
    }

    /// Pops a block of class `c` from this state's current span, with its
    /// size; `None` when that free list is empty. The caller owns the state
    /// (the owner thread, or the holder of the shared lock) and counts the
    /// allocation.
    #[inline(always)]
    pub(super) fn pop_current(&self, c: usize) -> Option<(NonNull<u8>, usize)> {
        crate::sync::invariant!(c < N_CLASSES, "class out of range");
        // SAFETY: `current` always points at a live meta or at EMPTY (whose
        // free list is null); c < N_CLASSES.
        let m = unsafe { &*self.current.get_unchecked(c).get() };
        let b = NonNull::new(m.free.get())?;
        // SAFETY: b is a free block of this span; its first word is the link
        // written when it was freed or carved. (No `used` count: the current
        // span's is not kept, see PageMeta::used.)
        m.free.set(unsafe { b.as_ref() }.next);
        // A span in class c's queue has block_size == CLASS_SIZE[c] (the
        // next class's for a fine-only class not split yet); reading it
        // from the meta's line saves a table load.
        crate::sync::invariant_eq!(
            m.block_size.get(),
            CLASS_SIZE[self.serving(c)],
            "span in the wrong class queue"
        );
        Some((b.cast(), m.block_size.get() as usize))
    }

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
        crate::sync::invariant_eq!(
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
        crate::sync::invariant_eq!(self.kind, OWNER_LOCAL, "raise_peak on the shared state");
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
        crate::sync::invariant_eq!(
            self.kind,
            OWNER_LOCAL,
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

    /// The owner collected `n` remote frees of `size`-byte blocks: counts
    /// them as its own frees. Called inside an owner update
    /// ([`Counters::owner_update`], by `HeapCore::collect_remote`).
    pub(super) fn count_collected(&self, n: u32, size: usize) {
        crate::sync::invariant_eq!(
            self.kind,
            OWNER_LOCAL,
            "count_collected on the shared state"
        );
        let c = &self.counters;
        c.slack.store(
            c.slack
                .load(Ordering::Relaxed)
                .wrapping_add((n as usize * size) as isize),
            Ordering::Relaxed,
        );
        c.freed_count.store(
            c.freed_count.load(Ordering::Relaxed) + u64::from(n),
            Ordering::Release,
        );
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
        crate::sync::invariant_eq!(
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

    /// The blocks [`ClassState::extend_free`] carves next in the span
    /// headed by `m`: `n` from block `first`.
    fn next_extension(m: &PageMeta) -> (u32, u32) {
        let size = m.block_size.get();
        let first = m.extend.get();
        let batch = (EXTEND_BYTES / size).clamp(1, EXTEND_BATCH);
        (first, (m.capacity.get() - first).min(batch))
    }

    /// The bytes from the span's start carved before and after the next
    /// [`ClassState::extend_free`] of the span headed by `m`.
    pub(super) fn extension(m: &PageMeta) -> (usize, usize) {
        let size = m.block_size.get() as usize;
        let (first, n) = Self::next_extension(m);
        (first as usize * size, (first + n) as usize * size)
    }

    /// Links the next batch of never-used blocks of the span headed by `m`
    /// (page `idx`) into its free list.
    pub(super) fn extend_free(pages: &PageTable, m: &PageMeta, idx: usize) {
        let size = m.block_size.get() as usize;
        let (first, n) = Self::next_extension(m);
        let start = pages.page_addr(idx) + first as usize * size;
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

    /// Makes the `n_pages` pages at `idx` (just taken from the span
    /// allocator, under its lock) a fresh small span of class `c` for this
    /// state: no block carved yet, a new generation.
    pub(super) fn init_span(&self, pages: &PageTable, idx: usize, n_pages: usize, c: usize) {
        let m = pages.meta(idx);
        let size = CLASS_SIZE[c];
        m.set_kind(Kind::Small);
        m.class.set(c as u8);
        m.owner.set(self.kind);
        m.block_size.set(size);
        m.capacity
            .set(((n_pages * PAGE_SIZE) / size as usize) as u32);
        m.extend.set(0);
        m.used.set(0);
        m.free.set(ptr::null_mut());
        m.span_pages.set(n_pages as u32);
        m.flags.set(0);
        // A new incarnation: a delayed freer of the span's previous one
        // (see remote.rs) finds another generation and leaves it alone.
        let generation = m.state.load(Ordering::Relaxed) & GENERATION;
        m.state
            .store(generation.wrapping_add(GENERATION_STEP), Ordering::Relaxed);
        pages.mark_cont(idx, n_pages);
        if self.kind == OWNER_LOCAL {
            pages.set_small_class(idx, n_pages, Some(c));
        }
    }

    /// Appends the span at page `idx` to class `c`'s queue (a no-op when it
    /// is queued already); it becomes current when the queue was empty.
    pub(super) fn push_back(&self, pages: &PageTable, c: usize, idx: usize) {
        let m = pages.meta(idx);
        if m.flags.get() & IN_QUEUE != 0 {
            return;
        }
        m.flags.set(m.flags.get() | IN_QUEUE);
        let tail = self.tail[c].get();
        m.prev.set(tail);
        m.next.set(NONE);
        if tail == NONE {
            self.head[c].set(idx as u32);
            self.set_current(c, m);
        } else {
            pages.meta(tail as usize).next.set(idx as u32);
        }
        self.tail[c].set(idx as u32);
    }

    /// Makes `new` class `c`'s current span, its `used` count
    /// [`CURRENT_USED`] (the empty meta is never written). The span it
    /// replaces is dry, its count already exact, or the heap is being
    /// sealed.
    pub(super) fn set_current(&self, c: usize, new: *const PageMeta) {
        if !ptr::eq(new, &EMPTY.0) {
            // SAFETY: a non-empty current is a live meta of this heap.
            unsafe { &*new }.used.set(CURRENT_USED);
        }
        self.current[c].set(new);
        // The fine-only class below, served by this one until split.
        if c > 0 && is_fine_only(c - 1) && !self.fine.get() {
            self.current[c - 1].set(new);
        }
    }

    /// Moves class `c`'s current span, at page `idx`, behind the other
    /// spans of its queue, the next becoming current: a carving of it was
    /// refused (the heap's cap, the process limit) while spans that ran
    /// dry before it may hold blocks freed since. It has no free block on
    /// its list and its remote frees are collected, so every block it
    /// carved is in use: its count, not kept while current, is exact again
    /// as `extend`.
    pub(super) fn rotate(&self, pages: &PageTable, c: usize, idx: usize) {
        let m = pages.meta(idx);
        crate::sync::invariant!(m.free.get().is_null() && m.next.get() != NONE);
        m.used.set(m.extend.get());
        self.unlink(pages, c, idx);
        self.push_back(pages, c, idx);
    }

    /// Takes the span at page `idx` out of class `c`'s queue (a no-op when
    /// it is not queued); the next span becomes current if it was.
    pub(super) fn unlink(&self, pages: &PageTable, c: usize, idx: usize) {
        let m = pages.meta(idx);
        // The current span leaves only when dry, found empty by its owner
        // (`HeapCore::collect_queued`), or moved behind the others with
        // nothing free (`ClassState::rotate`), its `used` count then set
        // exact by the caller (PageMeta::used).
        crate::sync::invariant!(
            !ptr::eq(self.current[c].get(), m)
                || (m.free.get().is_null() && m.used.get() == m.extend.get())
                || m.used.get() == 0,
            "current span unlinked with free blocks or an inexact count"
        );
        if m.flags.get() & IN_QUEUE == 0 {
            return;
        }
        m.flags.set(m.flags.get() & !IN_QUEUE);
        let (prev, next) = (m.prev.get(), m.next.get());
        if prev == NONE {
            self.head[c].set(next);
            let cur: *const PageMeta = if next == NONE {
                &EMPTY.0
            } else {
                pages.meta(next as usize)
            };
            self.set_current(c, cur);
        } else {
            pages.meta(prev as usize).next.set(next);
        }
        if next == NONE {
            self.tail[c].set(prev);
        } else {
            pages.meta(next as usize).prev.set(prev);
        }
    }
}
