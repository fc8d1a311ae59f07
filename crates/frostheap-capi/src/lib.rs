//! `libfrostheap.so`: the C allocation functions on a frostheap main heap,
//! for `LD_PRELOAD` (see `frostheap run --max-memory 1G -- CMD`).
//!
//! **Routing.** The thread that makes the process's first allocation (for a
//! preloaded program: the main thread, while ld.so and libc initialise)
//! owns the *main heap*, named `main`; every other thread gets a heap of
//! its own at its first allocation, adopted from an exited thread when one
//! is waiting (see `frostheap::global`). One limit, `FROSTHEAP_MAX`, bounds
//! them all, counted where memory is committed. Frees and reallocs are
//! routed by address ([`raw::owns`]: one compare), whoever makes them: a
//! block freed by another thread goes back to its heap as a remote free,
//! and one another thread reallocates moves to that thread's heap (a large
//! block that grows by moving its pages, charged its growth alone:
//! [`raw::Local::realloc_moved_in`]).
//! The rare allocation of a thread that has no heap (while its heap is
//! being attached, after it exited, or with every slot taken) goes to
//! glibc's own allocator (reached through `dlsym`), charged against the
//! limit for its usable size ([`foreign`]).
//!
//! **Semantics** are glibc 2.36's: `errno = ENOMEM` and `NULL` past the
//! limit (so CPython raises `MemoryError` instead of being killed), a
//! call that succeeds leaves `errno` as it was (the library's own probes
//! and fallbacks restore it), `free(NULL)` does nothing, `realloc(NULL, n)` is `malloc(n)`,
//! `realloc(p, 0)` frees `p` and returns `NULL`, `calloc` and
//! `reallocarray` check their multiplication, `posix_memalign` returns
//! `EINVAL` for an alignment that is not a power of two multiple of
//! `sizeof(void *)`, and `memalign` rounds a non-power of two up, as glibc
//! does. One difference: `aligned_alloc` returns `NULL` and sets `EINVAL`
//! for an alignment that is not a power of two (C17's rule, which glibc
//! follows from 2.38 and jemalloc follows; mimalloc returns `NULL`), where
//! glibc 2.36 rounds it up as `memalign` does and returns a block.
//!
//! **No recursion.** Nothing on these paths allocates: the main heap is
//! built without the allocator, and statistics are formatted into a stack
//! buffer (frostheap's `fmt_buf`). The library's own Rust `std` keeps its
//! default global allocator (`System`, which calls `malloc`, i.e. these
//! functions); it is never reached from inside them.
//!
//! **Fork.** The first allocation registers `pthread_atfork` handlers
//! ([`raw::fork_prepare`] / [`raw::fork_release`] /
//! [`raw::fork_child_adopt`]). Registering that early makes the prepare
//! handler run last and the parent and child handlers first, so other
//! libraries' handlers may allocate. glibc locks its own arenas itself.
//!
//! **Fast paths.** `malloc`, `calloc` and `free` read the thread's heap
//! from one word of initial-exec thread-local storage ([`tls`]: two
//! instructions); `free` compares the block against that heap's region;
//! then the heap's small-block pop or push. Everything else — a thread's
//! first allocation (which builds or adopts its heap, and on the process's
//! first registers the fork handlers and the exit hook that clears the
//! word), a block of another thread's heap (a remote free) or of glibc,
//! `errno` — is out of line.
//!
//! **`mmap`.** Anonymous private memory the program maps itself is
//! charged against the same limit while it is writable or was made so
//! (CPython's arenas; the JVM's heap, committed with `MAP_FIXED`; V8's,
//! committed with `mprotect`), and a refused `mmap` returns `MAP_FAILED`
//! with `ENOMEM` (see [`mapped`]).
//!
//! **glibc's second names** (`__libc_malloc`, `__libc_free`,
//! `__libc_calloc`, `__libc_realloc`, `__libc_memalign`, `__libc_valloc`,
//! `__libc_pvalloc`, and the old `cfree`) are these same functions, so a
//! program that calls them directly is capped too, and mixing the names
//! is safe.
//!
//! **Introspection.** `malloc_trim`, `mallinfo2`, `mallinfo` (also as
//! `__libc_mallinfo`), `malloc_stats` and `malloc_info` answer for the
//! heaps, not for glibc's arenas (see [`info`]).
//!
//! `FROSTHEAP_STATS=1` prints the main heap's statistics when the library
//! is unloaded at exit (a `.fini_array` entry, so `_exit` prints nothing).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]
// A cdylib: its Rust items are all private, and the crate page is read
// as a map of them (`cargo doc --document-private-items`), so it links them.
#![allow(rustdoc::private_intra_doc_links)]

// GCC's unwinder, linked into the library in place of libgcc_s (see the
// crate). Declared with `extern crate`, rustc puts its archive behind
// frostheap's on the link line (with `use frostheap_unwind as _`, before
// it: `cargo rustc -p frostheap-capi --release --lib -- --print
// link-args`), and the linker its code behind frostheap's.
extern crate frostheap_unwind;

mod foreign;
mod info;
mod mapped;
mod ranges;
mod stats;
mod tls;

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicU8, Ordering};

use frostheap::__private::raw;

/// Tells frostheap, before its own constructors run, that it serves the C
/// ABI here ([`raw::serving_c`]). Its constructor for Rust programs, which
/// creates std's stdout for `println!` inside phases, then does nothing: a
/// C program never prints through the library's Rust stdout, and creating
/// it mapped 100 KiB more of the library's text into every process.
///
/// Linkers run `.init_array` entries with a priority (the suffix) before
/// those without one, such as frostheap's. 101 is the first priority GCC
/// leaves to programs; std takes 99 for its own.
#[used]
#[link_section = ".init_array.00101"]
static SERVING_C: extern "C" fn() = serving_c;

extern "C" fn serving_c() {
    raw::serving_c();
    stats::keep_stderr();
    // glibc's allocator, for threads without a heap, found while the
    // process has one thread (see `foreign`).
    foreign::resolve();
}

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

/// [`out_of_memory`] for an allocation of `requested` bytes that a heap
/// refused (the limit, most often): the first in the process is reported
/// on standard error ([`stats::report_first_refusal`]).
#[cold]
#[inline(never)]
fn refused(requested: usize) -> *mut c_void {
    // The heap the call used is the thread's heap word's (every path that
    // got a heap set it): read as is, attaching nothing.
    stats::report_first_refusal(requested, local_fast());
    out_of_memory()
}

/// The base page size, for `valloc` and `pvalloc`.
fn os_page() -> usize {
    frostheap::__private::os::page_size()
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
    // A thread that gives its heap up at exit clears its heap word.
    raw::on_thread_exit(tls::clear);
    // SAFETY: the three handlers are `extern "C" fn()` that live as long as
    // the library (which is never unloaded while the process can fork).
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    ATFORK.store(ATFORK_DONE, Ordering::Release);
}

extern "C" fn fork_prepare() {
    raw::fork_prepare();
    mapped::fork_prepare();
}

extern "C" fn fork_parent() {
    mapped::fork_release();
    raw::fork_release();
}

extern "C" fn fork_child() {
    mapped::fork_release();
    raw::fork_release();
    raw::fork_child_adopt();
}

// ---------------------------------------------------------------------------
// Main-heap helpers.

/// The calling thread's heap, from its heap word ([`tls`]), if it has one.
#[inline(always)]
fn local_fast() -> Option<raw::Local> {
    // SAFETY: the word is null or set by `local_slow` on this thread to a
    // heap the thread still owns (cleared by the exit hook when it gives
    // the heap up).
    unsafe { raw::Local::from_raw(tls::get()) }
}

/// The calling thread's heap: from its heap word, or (the thread's first
/// allocation, or the process's) attached now, with the fork handlers and
/// the exit hook registered on the way.
#[inline(always)]
fn local() -> Option<raw::Local> {
    match local_fast() {
        Some(h) => Some(h),
        None => local_slow(),
    }
}

#[inline(never)]
fn local_slow() -> Option<raw::Local> {
    let h = raw::local()?;
    // The exit hook is registered before any thread's word is set.
    ensure_atfork();
    tls::set(h.as_raw());
    Some(h)
}

/// Allocates `size` bytes aligned to `align` on the calling thread's side:
/// its heap or glibc.
///
/// # Safety
/// 1. `align` is a power of two.
#[inline]
unsafe fn alloc_aligned(size: usize, align: usize) -> *mut c_void {
    if let Some(h) = local() {
        let Ok(layout) = Layout::from_size_align(size, align) else {
            return out_of_memory();
        };
        // SAFETY: h is this thread's heap.
        let p = unsafe { h.alloc(layout) };
        return if p.is_null() { refused(size) } else { p.cast() };
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
    if let Some(h) = local_fast() {
        // SAFETY: h is this thread's heap.
        let p = unsafe { h.malloc(size) };
        return if p.is_null() { refused(size) } else { p.cast() };
    }
    malloc_elsewhere(size)
}

/// `malloc` when the thread's heap word is null: the thread's first
/// allocation (the process's builds the main heap and
/// registers the fork handlers), or a thread without a heap (glibc,
/// charged).
#[inline(never)]
fn malloc_elsewhere(size: usize) -> *mut c_void {
    if let Some(h) = local_slow() {
        // SAFETY: h is this thread's heap.
        let p = unsafe { h.malloc(size) };
        return if p.is_null() { refused(size) } else { p.cast() };
    }
    foreign::malloc(size)
}

/// `free(3)`: routed by address; `free(NULL)` does nothing.
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if let Some(h) = local_fast() {
        // SAFETY: h is this thread's heap; (1).
        if unsafe { h.free_own(ptr.cast()) } {
            return;
        }
        // SAFETY: as above, and ptr is not one of h's blocks.
        unsafe { free_not_own(h, ptr) };
        return;
    }
    // SAFETY: (1).
    unsafe { free_without_heap(ptr) };
}

/// `free` on a thread with a heap, of anything but a block of that heap:
/// another thread's heap block (a remote free), a glibc block, or null. Out
/// of line, so that the own heap's path saves no registers for it, and
/// called (a tail call) with the heap already read: a consumer, whose
/// every free comes here, reads its heap word once.
///
/// `extern "C"`, so that the compiler knows it cannot unwind: a call from
/// an `extern "C"` function to one that might is wrapped in an abort on
/// unwinding, which is no tail call (`free` then kept a frame and a return
/// for it on every remote free).
///
/// # Safety
/// 1. `h` is the calling thread's heap; `ptr` is null or a live block
///    returned by these functions, and not one of `h`'s.
#[inline(never)]
unsafe extern "C" fn free_not_own(h: raw::Local, ptr: *mut c_void) {
    // SAFETY: forwarded (1).
    if unsafe { h.free_other(ptr.cast()) } {
        return;
    }
    // SAFETY: (1): not in the arena (free_other took those), so glibc made
    // it, or null.
    unsafe { free_foreign(ptr) };
}

/// `free` on a thread without a heap word (its first call, a thread that
/// gave its heap up at exit, or one whose heaps ran out).
///
/// # Safety
/// 1. `ptr` is null or a live block returned by these functions.
#[inline(never)]
unsafe fn free_without_heap(ptr: *mut c_void) {
    // The thread's first call is a free of another thread's block (a
    // consumer): it gets its heap now, as its first allocation would give
    // it, so that its frees take the heap's cache and batch. The heap it
    // gets may be the block's own (adopted from the thread that made it,
    // which has exited): then this is a free of its own.
    if raw::in_thread_heap(ptr.cast()) {
        if let Some(h) = local_slow() {
            // SAFETY: h is this thread's heap; (1).
            if unsafe { h.free_own(ptr.cast()) } {
                return;
            }
            // SAFETY: as above, and ptr is not one of h's blocks.
            unsafe { free_not_own(h, ptr) };
            return;
        }
    }
    if raw::owns(ptr.cast()) {
        // SAFETY: (1) and the address test: a live heap block.
        unsafe { raw::free(ptr.cast()) };
    } else {
        // SAFETY: (1): not ours, so glibc made it, or null.
        unsafe { free_foreign(ptr) };
    }
}

/// `free` of a block outside the arena: glibc's, or null.
///
/// # Safety
/// 1. `ptr` is null or a live block glibc returned.
#[inline]
unsafe fn free_foreign(ptr: *mut c_void) {
    if !ptr.is_null() {
        // SAFETY: forwarded (1).
        unsafe { foreign::free(ptr) };
    }
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
    if let Some(h) = local_fast() {
        // SAFETY: h is this thread's heap.
        let p = unsafe { h.calloc(total) };
        return if p.is_null() {
            refused(total)
        } else {
            p.cast()
        };
    }
    calloc_elsewhere(nmemb, size, total)
}

/// `calloc` when the thread's heap word is null
/// (see [`malloc_elsewhere`]); `total` is `nmemb * size`, checked.
#[inline(never)]
fn calloc_elsewhere(nmemb: usize, size: usize, total: usize) -> *mut c_void {
    if let Some(h) = local_slow() {
        // SAFETY: h is this thread's heap.
        let p = unsafe { h.calloc(total) };
        return if p.is_null() {
            refused(total)
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
    if size > isize::MAX as usize - MALLOC_ALIGN {
        return if raw::owns(ptr.cast()) {
            out_of_memory()
        } else {
            // SAFETY: (1): not ours, so glibc made it (and says ENOMEM).
            unsafe { foreign::realloc(ptr, size) }
        };
    }
    if let Some(h) = local_fast() {
        if h.holds(ptr.cast()) {
            // SAFETY: (1): a live block of this thread's heap. Its
            // alignment is at least 16, and realloc need not keep more.
            let q = unsafe { h.realloc_c(ptr.cast(), size) };
            return if q.is_null() { refused(size) } else { q.cast() };
        }
    }
    // SAFETY: (1), and ptr is not a block of this thread's heap.
    unsafe { realloc_elsewhere(ptr, size) }
}

/// `realloc` of a block that is not the calling thread's own (another
/// thread's heap block, or glibc's), or by a thread whose heap word is
/// not set yet; `0 < size <= isize::MAX - 16`.
///
/// # Safety
/// 1. `ptr` is a live block returned by these functions.
#[inline(never)]
unsafe fn realloc_elsewhere(ptr: *mut c_void, size: usize) -> *mut c_void {
    if !raw::owns(ptr.cast()) {
        // A glibc block stays in glibc, whichever thread resizes it.
        // SAFETY: (1): not ours, so glibc made it.
        return unsafe { foreign::realloc(ptr, size) };
    }
    let Some(h) = local() else {
        // SAFETY: (1): a live heap block; this thread has no heap.
        return unsafe { move_to_glibc(ptr, size) };
    };
    if h.holds(ptr.cast()) {
        // The thread's first call since it got its heap word.
        // SAFETY: (1): a live block of this thread's heap.
        let q = unsafe { h.realloc_c(ptr.cast(), size) };
        return if q.is_null() { refused(size) } else { q.cast() };
    }
    // Another thread's block moves to this thread's heap: a large one that
    // grows by moving its pages, charged its growth alone; any other by a
    // copy.
    // SAFETY: h is this thread's heap; (1): ptr is a live heap block, not
    // of h.
    let q = unsafe { h.realloc_moved_in(ptr.cast(), size) };
    if !q.is_null() {
        return q.cast();
    }
    // SAFETY: (1): ptr is a live heap block.
    let old = unsafe { raw::usable_size(ptr.cast()) };
    // SAFETY: h is this thread's heap.
    let q = unsafe { h.malloc_for_move(size <= old, size) };
    if q.is_null() {
        // A shrink keeps its block past the limit: the program gives
        // memory back, and the block holds the new size.
        return if size <= old { ptr } else { refused(size) };
    }
    // SAFETY: (1): ptr is live; its usable size bounds what we copy
    // from it, `size` what fits in q; then ptr is freed once (a remote
    // free into its heap).
    unsafe {
        core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), q, old.min(size));
        raw::free(ptr.cast());
    }
    q.cast()
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

/// `aligned_alloc(3)`: `NULL` and `EINVAL` unless `alignment` is a power
/// of two (C17, glibc from 2.38; glibc 2.36 rounds it up).
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

// ---------------------------------------------------------------------------
// glibc's second names.
//
// glibc exports its allocator under a second name each, which some
// programs and libraries call to reach the system allocator directly
// (profilers, hooks, code that wants `malloc` not to be interposed). Under
// the library they are the functions above: a block from one name may be
// freed or resized through the other, and all of them count against the
// limit. Left to glibc, `__libc_malloc` handed out memory past
// `FROSTHEAP_MAX` (400 MiB under a 64 MiB limit), a `free` of such a block
// took its size off the heaps' statistics (which wrapped), and
// `__libc_free` of a heap block aborted the process ("free(): invalid
// pointer"). The library reaches glibc's own through `dlsym` (`foreign`).

/// `__libc_malloc`: [`malloc`].
///
/// # Safety
/// As [`malloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { malloc(size) }
}

/// `__libc_free`: [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn __libc_free(ptr: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(ptr) }
}

/// `cfree`, glibc's old name for `free` (kept by glibc for binaries linked
/// before 2.26): [`free`].
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn cfree(ptr: *mut c_void) {
    // SAFETY: forwarded.
    unsafe { free(ptr) }
}

/// `__libc_calloc`: [`calloc`].
///
/// # Safety
/// As [`calloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_calloc(nmemb: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { calloc(nmemb, size) }
}

/// `__libc_realloc`: [`realloc`].
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { realloc(ptr, size) }
}

/// `__libc_memalign`: [`memalign`].
///
/// # Safety
/// As [`memalign`].
#[no_mangle]
pub unsafe extern "C" fn __libc_memalign(alignment: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { memalign(alignment, size) }
}

/// `__libc_valloc`: [`valloc`].
///
/// # Safety
/// As [`valloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { valloc(size) }
}

/// `__libc_pvalloc`: [`pvalloc`].
///
/// # Safety
/// As [`pvalloc`].
#[no_mangle]
pub unsafe extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { pvalloc(size) }
}

/// `realloc` of a heap block by a thread that has no heap: the block moves
/// to glibc.
///
/// # Safety
/// 1. `ptr` is a live heap block.
#[cold]
unsafe fn move_to_glibc(ptr: *mut c_void, size: usize) -> *mut c_void {
    let q = foreign::malloc(size);
    if !q.is_null() {
        // SAFETY: (1): ptr is live; its usable size bounds what we copy from
        // it, `size` what fits in q; then ptr is freed once.
        unsafe {
            let old = raw::usable_size(ptr.cast());
            core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), q.cast::<u8>(), old.min(size));
            raw::free(ptr.cast());
        }
    }
    q
}
