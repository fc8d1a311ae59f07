//! Other threads' allocations: glibc's allocator (`__libc_malloc` and
//! friends), charged against the main heap's limit.
//!
//! **Reaching glibc.** The library exports `__libc_malloc` and the rest
//! of glibc's second names itself (a program or library that calls them
//! gets heap blocks, under the limit: see the crate), so glibc's own are
//! found with `dlsym(RTLD_NEXT, ...)`, the next definition past this
//! library: once, from the library's constructor ([`resolve`]), before
//! the program runs and before any thread exists. Should a thread need
//! glibc before that (a thread another library's constructor started),
//! the first such call resolves them; a call that finds the resolution in
//! progress on another thread, or that finds no glibc past the library,
//! fails with `ENOMEM` rather than wait or guess.
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

use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use frostheap::__private::raw;

use crate::set_errno;

/// glibc's allocation functions, past this library's own of the same
/// names.
#[derive(Clone, Copy)]
struct Glibc {
    malloc: unsafe extern "C" fn(usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    calloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    memalign: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    trim: unsafe extern "C" fn(usize) -> c_int,
}

/// The names looked up, in [`Glibc`]'s field order (NUL-terminated).
const NAMES: [&[u8]; 6] = [
    b"__libc_malloc\0",
    b"__libc_free\0",
    b"__libc_calloc\0",
    b"__libc_realloc\0",
    b"__libc_memalign\0",
    b"malloc_trim\0",
];

/// The addresses [`resolve`] found, in [`NAMES`]' order; read only once
/// [`STATE`] is [`READY`].
static FOUND: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const READY: u8 = 2;
const MISSING: u8 = 3;
/// Where [`resolve`] stands.
static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

/// Finds glibc's allocation functions past this library (see the module
/// documentation); true once they are known. Called by the library's
/// constructor; a later call returns at once.
pub(crate) fn resolve() -> bool {
    match STATE.load(Ordering::Acquire) {
        READY => return true,
        MISSING => return false,
        _ => {}
    }
    if STATE
        .compare_exchange(UNRESOLVED, RESOLVING, Ordering::Acquire, Ordering::Acquire)
        .is_err()
    {
        // Resolving on another thread (or below us on this one): do not
        // wait on it.
        return STATE.load(Ordering::Acquire) == READY;
    }
    let mut ok = true;
    for (name, slot) in NAMES.iter().zip(&FOUND) {
        // SAFETY: name is NUL-terminated; RTLD_NEXT asks for the next
        // definition past this library, which has its own of each name.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) };
        ok &= !p.is_null();
        slot.store(p as usize, Ordering::Relaxed);
    }
    if ok {
        // glibc's allocator initialises itself at its first call, which in
        // a process without the library is made while the process has one
        // thread; under the library its first call may come from threads
        // without a heap at once, and its initialisation is not made for
        // that. A trim initialises it without allocating: now, while
        // (from the constructor) the process has one thread.
        // SAFETY: glibc's malloc_trim, found just above, has no
        // preconditions.
        unsafe {
            let trim: unsafe extern "C" fn(usize) -> c_int = found(5);
            trim(0);
        }
    }
    STATE.store(if ok { READY } else { MISSING }, Ordering::Release);
    ok
}

/// glibc's functions, resolved now if the constructor has not run yet;
/// `None` if they cannot be reached (the caller fails with `ENOMEM`).
#[inline]
fn glibc() -> Option<Glibc> {
    if !resolve() {
        return None;
    }
    // SAFETY: READY was published after each slot got the address of
    // glibc's function of that name, whose type is the field's (glibc's
    // ABI since 2.2.5, as <malloc.h> declares them).
    unsafe {
        Some(Glibc {
            malloc: found(0),
            free: found(1),
            calloc: found(2),
            realloc: found(3),
            memalign: found(4),
            trim: found(5),
        })
    }
}

/// Slot `i` of [`FOUND`] as a function pointer of type `F`.
///
/// # Safety
/// 1. `F` is a function pointer type, and the slot holds the address of a
///    function of that type.
unsafe fn found<F: Copy>(i: usize) -> F {
    const { assert!(core::mem::size_of::<F>() == core::mem::size_of::<usize>()) };
    let addr = FOUND[i].load(Ordering::Relaxed);
    // SAFETY: (1); the sizes match.
    unsafe { core::mem::transmute_copy::<usize, F>(&addr) }
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

/// Charges an upper bound for a new block, runs `f` on glibc's
/// functions, and settles the charge to the block's usable size. Null with
/// `ENOMEM` if refused, or if glibc cannot be reached.
#[inline]
fn charged_alloc(size: usize, align: usize, f: impl FnOnce(&Glibc) -> *mut c_void) -> *mut c_void {
    crate::ensure_atfork();
    let (Some(held), Some(glibc)) = (bound(size, align), glibc()) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if !charge(held) {
        crate::stats::report_first_refusal(size, None);
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    let p = f(&glibc);
    if p.is_null() {
        release(held);
        return p; // glibc set errno
    }
    if !USED.load(Ordering::Relaxed) {
        USED.store(true, Ordering::Release);
    }
    // SAFETY: p is a live block glibc just returned.
    let usable = unsafe { usable_size(p) };
    if usable <= held {
        release(held - usable);
    } else if !charge(usable - held) {
        release(held);
        // SAFETY: p is ours to free; nobody has seen it.
        unsafe { (glibc.free)(p) };
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    p
}

/// `malloc` through glibc, charged.
pub(crate) fn malloc(size: usize) -> *mut c_void {
    // SAFETY: glibc's malloc has no preconditions.
    charged_alloc(size, 0, |g| unsafe { (g.malloc)(size) })
}

/// `calloc` through glibc, charged; `total` is `nmemb * size` (checked).
pub(crate) fn calloc(nmemb: usize, size: usize, total: usize) -> *mut c_void {
    // SAFETY: glibc's calloc has no preconditions.
    charged_alloc(total, 0, |g| unsafe { (g.calloc)(nmemb, size) })
}

/// `memalign` through glibc, charged.
pub(crate) fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: glibc's memalign has no preconditions (align is a power of
    // two).
    charged_alloc(size, align, |g| unsafe { (g.memalign)(align, size) })
}

/// Set once glibc has returned a block: its allocator is initialised.
static USED: AtomicBool = AtomicBool::new(false);

/// glibc's `malloc_trim(pad)` on its own arenas (which hold the blocks of
/// threads without a heap), once glibc has allocated anything; true if it
/// gave memory back. Not before: glibc's `malloc_trim` initialises its
/// allocator when nothing has, and threads that trim at once would
/// initialise it together (the `mixer` stress program, every thread
/// trimming, crashed in glibc's trim of its half-initialised main arena).
pub(crate) fn trim(pad: usize) -> bool {
    if !USED.load(Ordering::Acquire) {
        return false;
    }
    // SAFETY: glibc's malloc_trim has no preconditions, and its allocator
    // is initialised (USED).
    glibc().is_some_and(|g| unsafe { (g.trim)(pad) } != 0)
}

/// `free` of a glibc block: releases its charge. `extern "C"` (it cannot
/// unwind), so that the exported `free`'s helpers reach it in a tail call.
///
/// # Safety
/// 1. `p` is a live glibc block (non-null).
pub(crate) unsafe extern "C" fn free(p: *mut c_void) {
    // A glibc block exists only once glibc was reached.
    let Some(glibc) = glibc() else { return };
    // SAFETY: (1).
    let usable = unsafe { usable_size(p) };
    // SAFETY: (1).
    unsafe { (glibc.free)(p) };
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
    let (Some(held), Some(glibc)) = (bound(size, 0), glibc()) else {
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    };
    if !charge(held) {
        crate::stats::report_first_refusal(size, None);
        set_errno(libc::ENOMEM);
        return core::ptr::null_mut();
    }
    // SAFETY: (1).
    let q = unsafe { (glibc.realloc)(p, size) };
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
