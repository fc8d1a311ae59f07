//! `libfrostheap.so`: the C allocation functions on a frostheap main heap,
//! for `LD_PRELOAD` (see `frostheap run --max-memory 1G -- CMD`).
//!
//! **Routing.** The thread that makes the process's first allocation (for a
//! preloaded program: the main thread, while ld.so and libc initialise)
//! owns the *main heap*, named `main`, under `FROSTHEAP_MIN` /
//! `FROSTHEAP_MAX`. Its allocations go there. Every other thread allocates
//! from glibc's allocator through the `__libc_malloc` family, and each of
//! those blocks is *charged* against the main heap's limit
//! ([`frostheap::Heap::charge_external`]) for its usable size, and released
//! when it is freed — so the limit counts both. Frees and reallocs are
//! routed by address ([`raw::owns`]: two compares), whoever makes them.
//!
//! **Semantics** are glibc 2.36's: `errno = ENOMEM` and `NULL` past the
//! limit (so CPython raises `MemoryError` instead of being killed),
//! `free(NULL)` does nothing, `realloc(NULL, n)` is `malloc(n)`,
//! `realloc(p, 0)` frees `p` and returns `NULL`, `calloc` and
//! `reallocarray` check their multiplication, `posix_memalign` returns
//! `EINVAL` for an alignment that is not a power of two multiple of
//! `sizeof(void *)`, `aligned_alloc` sets `EINVAL` for one that is not a
//! power of two (glibc 2.38's rule), and `memalign` rounds a non-power of
//! two up, as glibc does.
//!
//! **No recursion.** Nothing on these paths allocates: the main heap is
//! built without the allocator, and statistics are formatted into a stack
//! buffer ([`frostheap::fmt_buf`]). The library's own Rust `std` keeps its
//! default global allocator (`System`, which calls `malloc`, i.e. these
//! functions); it is never reached from inside them.
//!
//! **Fork.** The first allocation registers `pthread_atfork` handlers
//! ([`raw::fork_prepare`] / [`raw::fork_release`] /
//! [`raw::fork_child_adopt`]). Registering that early makes the prepare
//! handler run last and the parent and child handlers first, so other
//! libraries' handlers may allocate. glibc locks its own arenas itself.
//!
//! **Fast paths.** `malloc`, `calloc` and `free` on the main thread are
//! one owner compare (the owner's thread token against `%fs:0`) and the
//! heap's small-block pop or push; everything else — the first allocation
//! (which builds the heap and registers the fork handlers), other
//! threads, `errno` — is out of line. In the preload benchmark's C loop
//! this took `malloc` from 67 to ≈ 30 instructions a call (callgrind).
//!
//! `FROSTHEAP_STATS=1` prints the main heap's statistics when the library
//! is unloaded at exit (a `.fini_array` entry, so `_exit` prints nothing).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod foreign;
mod stats;

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicU8, Ordering};

use frostheap::global::raw;

/// Alignment `malloc` guarantees (glibc's `MALLOC_ALIGNMENT`).
const MALLOC_ALIGN: usize = raw::MALLOC_ALIGN;

#[inline]
fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Sets `ENOMEM` and returns null: the failure of every allocation
/// function (kept out of line, off the fast paths).
#[cold]
#[inline(never)]
fn out_of_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

/// The base page size, for `valloc` and `pvalloc`.
fn os_page() -> usize {
    frostheap::os::page_size()
}

// ---------------------------------------------------------------------------
// Fork handlers, registered at the first allocation.

const ATFORK_NONE: u8 = 0;
const ATFORK_REGISTERING: u8 = 1;
const ATFORK_DONE: u8 = 2;
static ATFORK: AtomicU8 = AtomicU8::new(ATFORK_NONE);

/// Registers the fork handlers once. `pthread_atfork` may itself allocate
/// (glibc grows its handler list past 48 entries): such a nested call sees
/// `ATFORK_REGISTERING` and does not register again.
#[inline]
fn ensure_atfork() {
    if ATFORK.load(Ordering::Relaxed) == ATFORK_NONE {
        register_atfork();
    }
}

#[cold]
#[inline(never)]
fn register_atfork() {
    if ATFORK
        .compare_exchange(
            ATFORK_NONE,
            ATFORK_REGISTERING,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    // SAFETY: the three handlers are `extern "C" fn()` that live as long as
    // the library (which is never unloaded while the process can fork).
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    ATFORK.store(ATFORK_DONE, Ordering::Release);
}

extern "C" fn fork_prepare() {
    raw::fork_prepare();
}

extern "C" fn fork_parent() {
    raw::fork_release();
}

extern "C" fn fork_child() {
    raw::fork_release();
    raw::fork_child_adopt();
}

// ---------------------------------------------------------------------------
// Main-heap helpers.

/// Allocates `size` bytes aligned to `align` from the main heap; sets
/// `ENOMEM` and returns null past the limit.
///
/// # Safety
/// 1. The caller is the main heap's owner ([`raw::on_main_thread`]).
/// 2. `align` is a power of two.
#[inline]
unsafe fn main_alloc(size: usize, align: usize) -> *mut c_void {
    ensure_atfork();
    let Ok(layout) = Layout::from_size_align(size, align) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    // SAFETY: (1).
    let p = unsafe { raw::alloc(layout) };
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// Allocates `size` bytes aligned to `align` on the calling thread's side:
/// the main heap or glibc.
///
/// # Safety
/// 1. `align` is a power of two.
#[inline]
unsafe fn alloc_aligned(size: usize, align: usize) -> *mut c_void {
    if raw::on_main_thread() {
        // SAFETY: we are the owner; (1).
        return unsafe { main_alloc(size, align) };
    }
    if align <= MALLOC_ALIGN {
        foreign::malloc(size)
    } else {
        foreign::memalign(align, size)
    }
}

/// Whether `align` is a power of two (0 is not).
#[inline]
fn is_pow2(align: usize) -> bool {
    align.is_power_of_two()
}

// ---------------------------------------------------------------------------
// The exported functions.

/// `malloc(3)`.
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if raw::is_main_thread() {
        // SAFETY: we are the owner.
        let p = unsafe { raw::malloc(size) };
        return if p.is_null() {
            out_of_memory()
        } else {
            p.cast()
        };
    }
    malloc_elsewhere(size)
}

/// `malloc` when the caller is not known to be the main heap's owner: the
/// process's first allocation (which builds the main heap and registers
/// the fork handlers) or another thread's (glibc, charged).
#[inline(never)]
fn malloc_elsewhere(size: usize) -> *mut c_void {
    if raw::on_main_thread() {
        ensure_atfork();
        // SAFETY: we are the owner.
        let p = unsafe { raw::malloc(size) };
        return if p.is_null() {
            out_of_memory()
        } else {
            p.cast()
        };
    }
    foreign::malloc(size)
}

/// `free(3)`: routed by address; `free(NULL)` does nothing.
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if raw::owns(ptr.cast()) {
        // SAFETY: (1) and the address test: a live main-heap block.
        unsafe { raw::free(ptr.cast()) };
    } else if !ptr.is_null() {
        // SAFETY: (1): not ours, so glibc made it.
        unsafe { free_elsewhere(ptr) };
    }
}

/// `free` of a glibc block, out of line so that the main heap's path
/// saves no registers for it.
///
/// # Safety
/// 1. `ptr` is a live glibc block (non-null).
#[inline(never)]
unsafe fn free_elsewhere(ptr: *mut c_void) {
    // SAFETY: (1).
    unsafe { foreign::free(ptr) };
}

/// `calloc(3)`: zeroed; `ENOMEM` when `nmemb * size` overflows.
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    let Some(total) = nmemb.checked_mul(size) else {
        return out_of_memory();
    };
    if raw::is_main_thread() {
        // SAFETY: we are the owner.
        let p = unsafe { raw::calloc(total) };
        return if p.is_null() {
            out_of_memory()
        } else {
            p.cast()
        };
    }
    calloc_elsewhere(nmemb, size, total)
}

/// `calloc` when the caller is not known to be the owner (see
/// [`malloc_elsewhere`]); `total` is `nmemb * size`, checked.
#[inline(never)]
fn calloc_elsewhere(nmemb: usize, size: usize, total: usize) -> *mut c_void {
    if raw::on_main_thread() {
        ensure_atfork();
        // SAFETY: we are the owner.
        let p = unsafe { raw::calloc(total) };
        return if p.is_null() {
            out_of_memory()
        } else {
            p.cast()
        };
    }
    foreign::calloc(nmemb, size, total)
}

/// `realloc(3)` with glibc's conventions: `realloc(NULL, n)` is
/// `malloc(n)`; `realloc(p, 0)` frees `p` and returns `NULL`; on failure
/// `p` is untouched and `errno` is `ENOMEM`.
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[no_mangle]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: no precondition.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: (1).
        unsafe { free(ptr) };
        return core::ptr::null_mut();
    }
    if raw::owns(ptr.cast()) {
        // A main-heap block exists, so the main heap and its owner do.
        if raw::is_main_thread() {
            if size > isize::MAX as usize - MALLOC_ALIGN {
                return out_of_memory();
            }
            // SAFETY: (1): a live main-heap block; we are the owner. Its
            // alignment is at least 16, and realloc need not keep more.
            let q = unsafe { raw::realloc_c(ptr.cast(), size) };
            return if q.is_null() {
                out_of_memory()
            } else {
                q.cast()
            };
        }
        // Another thread resizes a main-heap block: it moves to glibc.
        let q = foreign::malloc(size);
        if !q.is_null() {
            // SAFETY: (1): ptr is live; its usable size bounds what we copy
            // from it, `size` what fits in q; then ptr is freed once.
            unsafe {
                let old = raw::usable_size(ptr.cast());
                core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), q.cast::<u8>(), old.min(size));
                raw::free(ptr.cast());
            }
        }
        return q;
    }
    // A glibc block stays in glibc, whichever thread resizes it.
    // SAFETY: (1): not ours, so glibc made it.
    unsafe { foreign::realloc(ptr, size) }
}

/// `reallocarray(3)`: `realloc(ptr, nmemb * size)` with an overflow check
/// (`ENOMEM`, `ptr` untouched).
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: (1).
        Some(total) => unsafe { realloc(ptr, total) },
        None => {
            set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: returns 0, `EINVAL` (alignment not a power of two
/// multiple of `sizeof(void *)`) or `ENOMEM`; leaves `errno` alone.
///
/// # Safety
/// 1. `memptr` is valid for a pointer-sized write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    memptr: *mut *mut c_void,
    alignment: usize,
    size: usize,
) -> c_int {
    if !is_pow2(alignment) || !alignment.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // SAFETY: __errno_location is always valid for the calling thread.
    let saved = unsafe { *libc::__errno_location() };
    // SAFETY: alignment is a power of two.
    let p = unsafe { alloc_aligned(size, alignment) };
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: (1).
    unsafe { *memptr = p };
    0
}

/// `aligned_alloc(3)`: `EINVAL` unless `alignment` is a power of two.
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    if !is_pow2(alignment) {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    // SAFETY: alignment is a power of two.
    unsafe { alloc_aligned(size, alignment.max(MALLOC_ALIGN)) }
}

/// `memalign(3)`, as glibc: an alignment that is not a power of two is
/// rounded up to one; one above `SIZE_MAX / 2 + 1` is `EINVAL`.
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    let Some(align) = alignment.max(MALLOC_ALIGN).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    };
    // SAFETY: align is a power of two.
    unsafe { alloc_aligned(size, align) }
}

/// `valloc(3)`: page-aligned.
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: the page size is a power of two.
    unsafe { alloc_aligned(size, os_page()) }
}

/// `pvalloc(3)`: page-aligned, the size rounded up to whole pages (one page
/// for 0).
///
/// # Safety
/// Callable from C at any time, from any thread.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = os_page();
    let Some(rounded) = size
        .checked_add(page - 1)
        .map(|n| (n & !(page - 1)).max(page))
    else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    // SAFETY: the page size is a power of two.
    unsafe { alloc_aligned(rounded, page) }
}

/// `malloc_usable_size(3)`: at least the size asked for; 0 for `NULL`.
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        0
    } else if raw::owns(ptr.cast()) {
        // SAFETY: (1): a live main-heap block.
        unsafe { raw::usable_size(ptr.cast()) }
    } else {
        // SAFETY: (1): a live glibc block.
        unsafe { foreign::usable_size(ptr) }
    }
}
