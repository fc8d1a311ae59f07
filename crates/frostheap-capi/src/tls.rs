//! The calling thread's heap, for the fast paths: one word of
//! initial-exec thread-local storage, defined in `tls.c` and read here
//! with two instructions (`mov reg, [rip + sym@GOTTPOFF]; mov reg,
//! fs:[reg]`), as glibc reads its own thread-locals.
//!
//! Stable Rust cannot choose a thread-local's TLS model, and in a shared
//! library its thread-locals are global-dynamic: a call to
//! `__tls_get_addr`. A table indexed by a hash of the thread pointer,
//! which the heap then had to confirm was still the caller's (its owner
//! against the thread pointer), cost `malloc` 27% and `free` 33% more
//! instructions than the single-threaded library's one compare
//! (callgrind, `preload/alloc_loop.c`); this word needs no confirmation:
//! it is set on the thread's first allocation and cleared when the
//! thread gives its heap up at exit (the hook registered with
//! `raw::on_thread_exit`).
//!
//! Initial-exec is valid for a library loaded with the program
//! (`LD_PRELOAD`, a `DT_NEEDED` entry): its TLS is part of the initial
//! block. A `dlopen`ed copy takes its 8 bytes from glibc's surplus of
//! static TLS, which is there for such libraries (tests/preload.rs,
//! `dlopen_then_allocate`). Should that surplus be used up by other
//! initial-exec libraries loaded earlier, `dlopen` itself fails ("cannot
//! allocate memory in static TLS block") and the program goes on with
//! its own allocator; glibc's tunable `glibc.rtld.optional_static_tls`
//! enlarges the surplus. Nothing fails later, at an allocation.

use core::ffi::c_void;

extern "C" {
    /// Stores the calling thread's word (`tls.c`).
    fn frostheap_set_thread_heap(heap: *mut c_void);
}

/// The calling thread's heap word: null, or what [`set`] stored on this
/// thread.
#[inline(always)]
pub(crate) fn get() -> *const c_void {
    let word: *const c_void;
    // SAFETY: `frostheap_thread_heap` is an initial-exec thread-local of
    // this library (tls.c): its GOT entry holds its offset from the
    // thread pointer, and %fs points at the calling thread's thread
    // pointer, so the second load reads the calling thread's word. Reads
    // only; `readonly` (not `nomem`) keeps it from moving across a store
    // the compiler can see, such as a call to `set`.
    unsafe {
        core::arch::asm!(
            "mov {w}, qword ptr [rip + frostheap_thread_heap@GOTTPOFF]",
            "mov {w}, qword ptr fs:[{w}]",
            w = out(reg) word,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
    word
}

/// Sets the calling thread's heap word.
#[inline(never)]
pub(crate) fn set(heap: *const c_void) {
    // SAFETY: writes the calling thread's own thread-local word.
    unsafe { frostheap_set_thread_heap(heap.cast_mut()) }
}

/// Clears the calling thread's heap word: the thread gives its heap up.
pub(crate) fn clear() {
    set(core::ptr::null())
}
