//! What a task sees of its worker: [`TaskContext`] (its item's index, the
//! worker's index) and [`Arena`], the worker's context heap as an
//! `allocator_api2` allocator, for tasks that allocate explicitly (the
//! global allocator routes every other task allocation there already).

use allocator_api2::alloc::{AllocError, Allocator};

use crate::context::{self, ContextHeap};

/// A task's view of its worker: the item index and the context arena.
pub struct TaskContext<'a> {
    pub(super) ctx: &'a ContextHeap,
    pub(super) item_index: Option<usize>,
    pub(super) worker: usize,
}

impl<'a> TaskContext<'a> {
    /// The worker's arena, as an allocator: bump allocation in the
    /// worker's context heap, freed from any thread.
    pub fn arena(&self) -> Arena<'a> {
        Arena { ctx: self.ctx }
    }
    /// Index of the input item (for `map` / `for_each`).
    pub fn item_index(&self) -> Option<usize> {
        self.item_index
    }
    /// Index of the worker running the task.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

/// A worker's context heap as an [`Allocator`]. Allocate only from the
/// task that received it; free from anywhere.
#[derive(Clone, Copy)]
pub struct Arena<'a> {
    ctx: &'a ContextHeap,
}

// SAFETY: blocks come from the context heap's bump allocator (valid for
// the layout until freed); deallocate routes to the owning chunk. Arena is
// !Send (it holds a reference to a !Sync-by-use owner API), so allocation
// happens on the owning worker only.
unsafe impl Allocator for Arena<'_> {
    fn allocate(
        &self,
        layout: core::alloc::Layout,
    ) -> Result<core::ptr::NonNull<[u8]>, AllocError> {
        // SAFETY: an Arena is handed only to tasks running on the owning
        // worker, and it is not Send.
        let p = unsafe { self.ctx.alloc(layout.size(), layout.align()) };
        if p.is_null() {
            // SAFETY: as above (the owning worker).
            let by_limit = unsafe { self.ctx.take_limit_refused() };
            if by_limit {
                // Nothing else serves it: one refusal by the process limit.
                crate::heap::process::count_refusal();
            }
            // The line every other refusal prints, before std's "memory
            // allocation of N bytes failed" should the caller not handle
            // it (it printed none: the first line was a later one's).
            crate::global::arena_refusal_line(layout.size(), by_limit);
        }
        let p = core::ptr::NonNull::new(p).ok_or(AllocError)?;
        Ok(core::ptr::NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, _layout: core::alloc::Layout) {
        // SAFETY: the Allocator contract: ptr is a live block of a context.
        unsafe { context::free(ptr.as_ptr()) }
    }
}
