//! Other threads' allocations: glibc's allocator (`__libc_malloc` and
//! friends), charged against the main heap's limit.
//!
//! **Charging without a window.** Before calling glibc we charge an upper
//! bound of the usable size the block can get ([`bound`]: the request plus
//! one OS page plus 64 bytes, plus the alignment for aligned requests —
//! glibc's chunk rounding, its `MINSIZE` remainder rule and `mmap` page
//! rounding all stay under it). If that charge is refused the call fails
//! with `ENOMEM` and nothing happened. Afterwards the difference between
//! the bound and the real usable size is released, so the heap's
//! `external` counter ends equal to the sum of the usable sizes of live
//! glibc blocks, and at no moment can other threads take room that this
//! call then lacks.
//!
//! If glibc ever returns more than the bound (only with exotic tunables,
//! such as `glibc.malloc.hugetlb=2`), the excess is charged; when that is
//! refused, a fresh block is given back with `ENOMEM`, and a resized one
//! (which cannot be undone) records the excess as [`DEBT`], which later
//! releases pay off first, so the counter never underflows.
//!
//! **Usable size** is read from the chunk header exactly as glibc's
//! `malloc_usable_size` does (`musable` in malloc.c: size field minus one
//! word, or two for an `mmap`ed chunk). glibc exports no other name for it
//! than `malloc_usable_size`, which this library replaces. x86_64 glibc has
//! no memory tagging, which would change the formula.

use core::ffi::c_void;
use core::sync::atomic::{AtomicUsize, Ordering};

use frostheap::__private::raw;

use crate::set_errno;

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
    fn __libc_calloc(nmemb: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(alignment: usize, size: usize) -> *mut c_void;
}

/// Bytes of live glibc blocks that could not be charged (see the module
/// documentation); releases pay these off before touching the heap.
static DEBT: AtomicUsize = AtomicUsize::new(0);

/// glibc's chunk flag for an `mmap`ed chunk.
const IS_MMAPPED: usize = 0x2;
/// glibc's three flag bits in the size field.
const SIZE_BITS: usize = 0x7;
const SIZE_SZ: usize = core::mem::size_of::<usize>();

/// Usable size of a live glibc block.
///
/// # Safety
/// 1. `p` is a live block returned by glibc's allocator.
pub(crate) unsafe fn usable_size(p: *mut c_void) -> usize {
    // SAFETY: (1): the word before a glibc block is its chunk's size field.
    let field = unsafe { *p.cast::<usize>().sub(1) };
    let chunk = field & !SIZE_BITS;
    if field & IS_MMAPPED != 0 {
        chunk - 2 * SIZE_SZ
    } else {
        chunk - SIZE_SZ
    }
}

/// The most usable bytes glibc gives for `size` bytes aligned to `align`
/// (`align` 0 for plain `malloc`); `None` if that overflows.
fn bound(size: usize, align: usize) -> Option<usize> {
    size.checked_add(align)?.checked_add(crate::os_page() + 64)
}

/// Charges `bytes` against the main heap's limit.
fn charge(bytes: usize) -> bool {
    raw::heap().charge_external(bytes).is_ok()
}

/// Releases `bytes`, paying off [`DEBT`] first.
fn release(mut bytes: usize) {
    let mut debt = DEBT.load(Ordering::Relaxed);
    while debt > 0 && bytes > 0 {
        let pay = debt.min(bytes);
        match DEBT.compare_exchange_weak(debt, debt - pay, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                bytes -= pay;
                break;
            }
            Err(d) => debt = d,
        }
    }
    if bytes > 0 {
        raw::heap().release_external(bytes);
    }
}

/// Charges an upper bound for a new block, runs `f`, and settles the
/// charge to the block's usable size. Null with `ENOMEM` if refused.
#[inline]
fn charged_alloc(size: usize, align: usize, f: impl FnOnce() -> *mut c_void) -> *mut c_void {
    crate::ensure_atfork();
    let Some(held) = bound(size, align) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if !charge(held) {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    let p = f();
    if p.is_null() {
        release(held);
        return p; // glibc set errno
    }
    // SAFETY: p is a live block glibc just returned.
    let usable = unsafe { usable_size(p) };
    if usable <= held {
        release(held - usable);
    } else if !charge(usable - held) {
        release(held);
        // SAFETY: p is ours to free; nobody has seen it.
        unsafe { __libc_free(p) };
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    p
}

/// `malloc` through glibc, charged.
pub(crate) fn malloc(size: usize) -> *mut c_void {
    // SAFETY: __libc_malloc has no preconditions.
    charged_alloc(size, 0, || unsafe { __libc_malloc(size) })
}

/// `calloc` through glibc, charged; `total` is `nmemb * size` (checked).
pub(crate) fn calloc(nmemb: usize, size: usize, total: usize) -> *mut c_void {
    // SAFETY: __libc_calloc has no preconditions.
    charged_alloc(total, 0, || unsafe { __libc_calloc(nmemb, size) })
}

/// `memalign` through glibc, charged.
pub(crate) fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: __libc_memalign has no preconditions (align is a power of two).
    charged_alloc(size, align, || unsafe { __libc_memalign(align, size) })
}

/// `free` of a glibc block: releases its charge.
///
/// # Safety
/// 1. `p` is a live glibc block (non-null).
pub(crate) unsafe fn free(p: *mut c_void) {
    // SAFETY: (1).
    let usable = unsafe { usable_size(p) };
    // SAFETY: (1).
    unsafe { __libc_free(p) };
    release(usable);
}

/// `realloc` of a glibc block to `size > 0` bytes, keeping it in glibc.
///
/// # Safety
/// 1. `p` is a live glibc block (non-null).
pub(crate) unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    crate::ensure_atfork();
    // SAFETY: (1).
    let old = unsafe { usable_size(p) };
    let Some(held) = bound(size, 0) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if !charge(held) {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    // SAFETY: (1).
    let q = unsafe { __libc_realloc(p, size) };
    if q.is_null() {
        release(held);
        return q; // p untouched; glibc set errno
    }
    // SAFETY: q is live.
    let new = unsafe { usable_size(q) };
    // Charged now: old + held; owed: new.
    match (old + held).checked_sub(new) {
        Some(extra) => release(extra),
        None => {
            let excess = new - old - held;
            if !charge(excess) {
                DEBT.fetch_add(excess, Ordering::Relaxed);
            }
        }
    }
    q
}
