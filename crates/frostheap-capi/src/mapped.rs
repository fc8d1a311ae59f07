//! `mmap`, `munmap` and `mremap`: anonymous private mappings a program
//! makes itself (CPython's arenas, many runtimes' allocators) are charged
//! against the process limit, so `FROSTHEAP_MAX` caps them too.
//!
//! **What counts**: `MAP_ANONYMOUS | MAP_PRIVATE` with `PROT_WRITE`,
//! without `MAP_NORESERVE` (a reservation, as frostheap's own heaps make).
//! The length is charged before the mapping is made; a refused charge
//! returns `MAP_FAILED` with `errno = ENOMEM`, as the kernel does when it
//! is out of memory, so CPython raises `MemoryError`. File mappings, shared
//! mappings and reservations pass through unchanged.
//!
//! **`MAP_FIXED`** replaces whatever was mapped in its range: the pages
//! there that counted stop counting, and the new mapping counts if it is
//! of the kind above. This is how runtimes that reserve address space and
//! commit it in steps use `mmap` (the JVM's heap: a `PROT_NONE` reservation,
//! then `MAP_FIXED` read-write mappings over it to commit, and `MAP_FIXED`
//! `PROT_NONE` ones to uncommit), so they are capped too. Only the growth is
//! charged before the call: a mapping over pages that already count is
//! charged for the others alone. Commits made with `mprotect` on a
//! reservation (V8's heap, .NET's) are not seen.
//!
//! **Releasing** needs to know which pages were charged: each counted
//! mapping is recorded as (start, length) in a fixed open-addressing table
//! (no allocation: this runs under `malloc`), found by its start address.
//! `munmap` of a whole recorded mapping, or of its front, takes one
//! lookup; any other range (a hole in the middle, the tail, several
//! mappings at once) scans the table, which only happens when a program
//! unmaps part of an anonymous mapping. When the table is full a mapping
//! is still made and charged, and stays charged after it is unmapped (the
//! limit errs on the safe side); 65,536 live mappings are far more than
//! CPython's arenas need (one per 1 MiB).
//!
//! The calls go to the kernel with `syscall(2)`: glibc's own `mmap`
//! would be this function again.

use core::ffi::{c_int, c_long, c_void};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use frostheap::__private::raw;

use crate::set_errno;

const ENTRIES: usize = 1 << 16;
/// An empty entry's start.
const FREE: usize = 0;
/// A removed entry's start (probing goes on past it).
const GONE: usize = 1;

struct Entry {
    start: AtomicUsize,
    len: AtomicUsize,
}

static TABLE: [Entry; ENTRIES] = [const {
    Entry {
        start: AtomicUsize::new(FREE),
        len: AtomicUsize::new(0),
    }
}; ENTRIES];
/// Live entries (when 0, an unmap of anything skips the table).
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Every recorded mapping lies in `[LOW, HIGH)` (written under the lock;
/// reset when the table empties): a range outside it needs no scan, so
/// that the `MAP_FIXED` file mappings and unmaps of a program's other
/// memory do not pay for a scan of the table.
static LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGH: AtomicUsize = AtomicUsize::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);

/// The table's lock: a spin lock (held for a probe sequence, never across
/// a system call).
struct Guard;

fn lock() -> Guard {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    Guard
}

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

fn home(start: usize) -> usize {
    (start >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 16)
}

fn page_round(len: usize) -> usize {
    let page = crate::os_page();
    len.saturating_add(page - 1) & !(page - 1)
}

/// Records a counted mapping; false when the table is full.
fn insert(_g: &Guard, start: usize, len: usize) -> bool {
    let h = home(start);
    for i in 0..ENTRIES {
        let e = &TABLE[(h + i) & (ENTRIES - 1)];
        let s = e.start.load(Ordering::Relaxed);
        if s == FREE || s == GONE {
            e.len.store(len, Ordering::Relaxed);
            e.start.store(start, Ordering::Relaxed);
            LIVE.fetch_add(1, Ordering::Relaxed);
            LOW.fetch_min(start, Ordering::Relaxed);
            HIGH.fetch_max(start.saturating_add(len), Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// The entry recorded for exactly `start`.
fn find(_g: &Guard, start: usize) -> Option<&'static Entry> {
    let h = home(start);
    for i in 0..ENTRIES {
        let e = &TABLE[(h + i) & (ENTRIES - 1)];
        match e.start.load(Ordering::Relaxed) {
            FREE => return None,
            s if s == start => return Some(e),
            _ => {}
        }
    }
    None
}

fn remove(e: &Entry) {
    e.start.store(GONE, Ordering::Relaxed);
    if LIVE.fetch_sub(1, Ordering::Relaxed) == 1 {
        LOW.store(usize::MAX, Ordering::Relaxed);
        HIGH.store(0, Ordering::Relaxed);
    }
}

/// Whether `[start, end)` may hold recorded mappings.
fn may_hold(start: usize, end: usize) -> bool {
    start < HIGH.load(Ordering::Relaxed) && end > LOW.load(Ordering::Relaxed)
}

/// Takes `[start, start + len)` out of the recorded mappings; returns the
/// bytes that were charged there.
fn forget_range(g: &Guard, start: usize, len: usize) -> usize {
    if LIVE.load(Ordering::Relaxed) == 0 || len == 0 {
        return 0;
    }
    let end = start.saturating_add(len);
    // The common case: the whole mapping, or its front.
    if let Some(e) = find(g, start) {
        let elen = e.len.load(Ordering::Relaxed);
        remove(e);
        if len < elen {
            // The tail stays mapped and charged.
            let _ = insert(g, end, elen - len);
            return len;
        }
        if len == elen {
            return elen;
        }
        // Past the mapping's end: other mappings may follow.
        return elen + forget_scan(g, start + elen, end);
    }
    forget_scan(g, start, end)
}

/// [`forget_range`] by scanning every entry.
fn forget_scan(g: &Guard, start: usize, end: usize) -> usize {
    if !may_hold(start, end) {
        return 0;
    }
    let mut released = 0;
    for e in &TABLE {
        let s = e.start.load(Ordering::Relaxed);
        if s == FREE || s == GONE {
            continue;
        }
        let elen = e.len.load(Ordering::Relaxed);
        let (lo, hi) = (s.max(start), (s + elen).min(end));
        if lo >= hi {
            continue;
        }
        released += hi - lo;
        remove(e);
        if s < lo {
            let _ = insert(g, s, lo - s);
        }
        if hi < s + elen {
            let _ = insert(g, hi, s + elen - hi);
        }
    }
    released
}

/// The bytes of `[start, start + len)` that recorded mappings cover.
fn charged_within(_g: &Guard, start: usize, len: usize) -> usize {
    if LIVE.load(Ordering::Relaxed) == 0 || len == 0 {
        return 0;
    }
    let end = start.saturating_add(len);
    if !may_hold(start, end) {
        return 0;
    }
    let mut n = 0;
    for e in &TABLE {
        let s = e.start.load(Ordering::Relaxed);
        if s == FREE || s == GONE {
            continue;
        }
        let (lo, hi) = (s.max(start), (s + e.len.load(Ordering::Relaxed)).min(end));
        n += hi.saturating_sub(lo);
    }
    n
}

/// Whether a mapping made with these arguments counts against the limit.
fn counts(prot: c_int, flags: c_int) -> bool {
    flags & (libc::MAP_ANONYMOUS | libc::MAP_PRIVATE) == libc::MAP_ANONYMOUS | libc::MAP_PRIVATE
        && flags & libc::MAP_NORESERVE == 0
        && prot & libc::PROT_WRITE != 0
}

/// `mmap(2)`, charged when it makes an anonymous private writable mapping.
///
/// # Safety
/// Callable from C at any time, from any thread, with `mmap`'s contract.
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    let counted = counts(prot, flags) && len > 0;
    let bytes = page_round(len);
    // MAP_FIXED replaces the range (MAP_FIXED_NOREPLACE fails instead).
    let replaces = flags & libc::MAP_FIXED != 0 && len > 0;
    if counted {
        // The limit is set when the library starts, at the process's first
        // allocation: a program whose first call is this one starts it now
        // (the main heap's start makes no counted mapping, and a nested
        // call during it does not wait for it).
        let _ = raw::on_main_thread();
    }
    let already = if replaces && counted {
        charged_within(&lock(), addr as usize, bytes)
    } else {
        0
    };
    let charge = if counted { bytes - already } else { 0 };
    if charge > 0 && !raw::charge_mapped(charge) {
        crate::stats::report_first_refusal(bytes);
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    }
    // SAFETY: the caller's mmap arguments, passed to the kernel unchanged.
    let p = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) };
    if p == -1 {
        if charge > 0 {
            raw::release_mapped(charge);
        }
        return libc::MAP_FAILED;
    }
    if counted || replaces {
        let released = {
            let g = lock();
            let released = if replaces {
                forget_range(&g, p as usize, bytes)
            } else {
                0
            };
            if counted {
                let _ = insert(&g, p as usize, bytes);
            }
            released
        };
        // Charged: `charge` = the new mapping less the counted pages it
        // replaces (`already`), which `released` are, unless another thread
        // unmapped some of them meanwhile (then the count is short by
        // those pages: a program that unmaps what it is replacing).
        if released > already {
            raw::release_mapped(released - already);
        }
    }
    p as *mut c_void
}

/// `mmap64`: the same call on 64-bit Linux.
///
/// # Safety
/// As [`mmap`].
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}

/// `munmap(2)`: releases whatever part of the range was charged.
///
/// # Safety
/// Callable from C at any time, with `munmap`'s contract.
#[no_mangle]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: the caller's arguments, passed to the kernel unchanged.
    let r = unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
    if r == 0 && LIVE.load(Ordering::Relaxed) != 0 {
        let released = {
            let g = lock();
            forget_range(&g, addr as usize, page_round(len))
        };
        if released > 0 {
            raw::release_mapped(released);
        }
    }
    r as c_int
}

/// `mremap(2)`. A counted mapping that grows is charged for the growth
/// first (`MAP_FAILED`, `ENOMEM` past the limit); one that shrinks
/// releases the difference. Declared with its fifth argument (`new_address`,
/// variadic in C): on x86_64 a variadic integer argument travels in the
/// same register as a fixed one.
///
/// # Safety
/// Callable from C at any time, with `mremap`'s contract.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    let (old_b, new_b) = (page_round(old_len), page_round(new_len));
    let charged = LIVE.load(Ordering::Relaxed) != 0 && {
        let g = lock();
        find(&g, old as usize).is_some_and(|e| e.len.load(Ordering::Relaxed) == old_b)
    };
    if charged && new_b > old_b && !raw::charge_mapped(new_b - old_b) {
        crate::stats::report_first_refusal(new_b);
        set_errno(libc::ENOMEM);
        return libc::MAP_FAILED;
    }
    // SAFETY: the caller's arguments, passed to the kernel unchanged.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mremap,
            old,
            old_len,
            new_len,
            flags as c_long,
            new_address,
        )
    };
    if p == -1 {
        if charged && new_b > old_b {
            raw::release_mapped(new_b - old_b);
        }
        return libc::MAP_FAILED;
    }
    // MREMAP_FIXED replaced whatever was mapped at the new address.
    let replaced = if flags & libc::MREMAP_FIXED != 0 && LIVE.load(Ordering::Relaxed) != 0 {
        let g = lock();
        forget_range(&g, p as usize, new_b)
    } else {
        0
    };
    if replaced > 0 {
        raw::release_mapped(replaced);
    }
    if charged {
        {
            let g = lock();
            if let Some(e) = find(&g, old as usize) {
                remove(e);
            }
            let _ = insert(&g, p as usize, new_b);
        }
        if new_b < old_b {
            raw::release_mapped(old_b - new_b);
        }
    }
    p as *mut c_void
}
