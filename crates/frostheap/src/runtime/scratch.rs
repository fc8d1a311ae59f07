//! The runtime's scratch buffers: memory a runtime keeps across maps.
//!
//! `map` over an iterator pulls each batch's items into a buffer before the
//! workers start, and every batch needs a zeroed progress word per chunk.
//! Both live in buffers mapped directly from the OS (system memory, so
//! tasks may write them while the guarded heaps are frozen), page-aligned
//! and advised for huge pages, grown by doubling and kept until the runtime
//! is dropped: a 10 M-item map does not fault in 80 MB of fresh pages
//! every time it runs.

use crate::os;

/// A buffer in system memory that a runtime keeps across maps: mapped
/// directly (page-aligned, huge-page advised), grown by doubling, never
/// shrunk until the runtime is dropped. Holding the runtime's scratch lock
/// gives exclusive use.
#[derive(Default)]
pub(crate) struct ScratchBuf {
    ptr: usize,
    bytes: usize,
}

impl ScratchBuf {
    /// The buffer as `*mut T` (page-aligned: fits any `T` aligned to at
    /// most a page).
    pub(crate) fn ptr<T>(&self) -> *mut T {
        debug_assert!(
            core::mem::align_of::<T>() <= os::page_size(),
            "scratch item over-aligned"
        );
        if core::mem::size_of::<T>() == 0 {
            return core::ptr::NonNull::dangling().as_ptr();
        }
        self.ptr as *mut T
    }

    /// Makes room for `items` values of `T`, keeping the first `keep`;
    /// returns the capacity in items.
    pub(crate) fn reserve<T>(&mut self, keep: usize, items: usize) -> usize {
        let size = core::mem::size_of::<T>();
        if size == 0 {
            return usize::MAX;
        }
        let need = items.saturating_mul(size);
        if need > self.bytes {
            self.remap(need, keep * size);
        }
        self.bytes / size
    }

    /// Grows to hold `items` values of `T`, keeping the first `keep`.
    pub(crate) fn grow<T>(&mut self, keep: usize, items: usize) -> usize {
        let size = core::mem::size_of::<T>();
        if size == 0 {
            return usize::MAX;
        }
        self.remap(items.max(64).saturating_mul(size), keep * size);
        self.bytes / size
    }

    /// `n` zeroed bytes.
    pub(crate) fn zeroed_bytes(&mut self, n: usize) -> *mut u8 {
        if n > self.bytes {
            self.remap(n, 0);
        }
        // SAFETY: n <= bytes, inside our mapping.
        unsafe { core::ptr::write_bytes(self.ptr as *mut u8, 0, n) };
        self.ptr as *mut u8
    }

    fn remap(&mut self, need: usize, keep: usize) {
        let bytes = crate::region::round_up(need.max(1 << 16), 1 << 21);
        let new = match os::map_table(bytes) {
            Ok(p) => p,
            Err(_) => {
                os::write_stderr(
                    b"frostheap: cannot map the runtime's scratch buffer (out of address space)\n",
                );
                std::process::abort()
            }
        };
        // SAFETY: a fresh mapping of `bytes`; THP advice is a hint.
        let _ = unsafe { os::advise_huge_pages(new, bytes) };
        if self.ptr != 0 {
            // SAFETY: `keep` bytes are initialised in the old buffer and fit
            // in the new one (need >= keep); the old mapping is ours.
            unsafe {
                core::ptr::copy_nonoverlapping(self.ptr as *const u8, new, keep.min(bytes));
                os::unmap(self.ptr as *mut u8, self.bytes);
            }
        }
        self.ptr = new as usize;
        self.bytes = bytes;
    }
}

impl Drop for ScratchBuf {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: mapped by remap with this length; nothing uses it now.
            unsafe { os::unmap(self.ptr as *mut u8, self.bytes) };
        }
    }
}

/// The runtime's scratch buffers: a batch's items and its per-chunk
/// progress words.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) items: ScratchBuf,
    pub(crate) state: ScratchBuf,
}
