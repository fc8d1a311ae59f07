//! Linux implementation of the OS primitives: `mmap`, `mprotect`,
//! `madvise`, `mseal`, and the few process facts (page size, transparent
//! huge pages, physical memory, environment) the upper layers need.
//!
//! None of these functions allocate from the Rust heap: they run inside the
//! global allocator, before `main`, and (for [`write_stderr`]) inside the
//! fault handler.

use core::ffi::CStr;
use core::ptr;

/// The error of a failed system call: the call's name and `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsError {
    /// Name of the system call that failed.
    pub call: &'static str,
    /// The `errno` it left.
    pub errno: i32,
}

impl core::fmt::Display for OsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // strerror_r would allocate nothing, but the numeric value plus a
        // few common names keep this free of libc's locale machinery.
        let name = match self.errno {
            libc::ENOMEM => "ENOMEM (out of memory or address space)",
            libc::EINVAL => "EINVAL (invalid argument)",
            libc::EPERM => "EPERM (operation not permitted)",
            libc::EACCES => "EACCES (permission denied)",
            libc::ENOSYS => "ENOSYS (not implemented by this kernel)",
            libc::ENOSPC => "ENOSPC (no space left: no free protection key)",
            _ => "",
        };
        write!(f, "{} failed: errno {} {}", self.call, self.errno, name)
    }
}

fn last_error(call: &'static str) -> OsError {
    OsError {
        call,
        errno: errno(),
    }
}

/// The calling thread's `errno`.
fn errno() -> libc::c_int {
    // SAFETY: __errno_location always returns a valid pointer to this
    // thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Runs `f`, then sets the calling thread's `errno` back to what it was
/// before: for calls whose failure is an answer (a probe) or is reported
/// in what they return, inside C functions that succeed.
fn keeping_errno<T>(f: impl FnOnce() -> T) -> T {
    let saved = errno();
    let r = f();
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = saved };
    r
}

/// The result of a pthreads call, which returns its error number instead
/// of setting `errno`.
fn pthread_result(call: &'static str, r: libc::c_int) -> Result<(), OsError> {
    if r == 0 {
        Ok(())
    } else {
        Err(OsError { call, errno: r })
    }
}

/// The base page size (4 KiB on x86_64 Linux), asked of the kernel once:
/// the heaps' slow paths and the fault handler read it, and the C ABI's
/// glibc fallback on every allocation (an atomic load is
/// async-signal-safe; `sysconf` is not promised to be).
pub fn page_size() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let n = if n <= 0 { 4096 } else { n as usize };
    PAGE.store(n, Ordering::Relaxed);
    n
}

/// The transparent-huge-page size.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Transparent huge pages as the kernel offers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpMode {
    /// `always`: every large enough anonymous mapping.
    Always,
    /// `madvise`: mappings advised with `MADV_HUGEPAGE`.
    Madvise,
    /// `never`, or the file is missing (no THP in this kernel).
    Never,
}

/// Reads `/sys/kernel/mm/transparent_hugepage/enabled` without allocating.
pub fn thp_mode() -> ThpMode {
    let mut buf = [0u8; 128];
    let n = read_small_file(c"/sys/kernel/mm/transparent_hugepage/enabled", &mut buf);
    let text = &buf[..n];
    let selected = |word: &[u8]| text.windows(word.len()).any(|w| w == word);
    if selected(b"[always]") {
        ThpMode::Always
    } else if selected(b"[madvise]") {
        ThpMode::Madvise
    } else {
        ThpMode::Never
    }
}

/// Reads up to `buf.len()` bytes of a small file; 0 if it cannot be read.
///
/// With the raw system calls (`syscall(2)`), not glibc's `open`, `read`
/// and `close`: those are pthread cancellation points, and this runs where
/// the C library starts frostheap, inside a program's `malloc` or `mmap`,
/// which POSIX says are not (see [`write_stderr`]). Out of line: its
/// callers (the cgroup's files, the huge-page setting) run at start-up,
/// whose code must fit the C library's first 64 KiB window.
#[inline(never)]
pub fn read_small_file(path: &CStr, buf: &mut [u8]) -> usize {
    // SAFETY: path is NUL-terminated; flags are valid.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut total = 0;
    while total < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_read,
                fd,
                buf[total..].as_mut_ptr(),
                buf.len() - total,
            )
        };
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    total
}

/// Total physical memory in bytes.
pub fn physical_memory() -> usize {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    if pages <= 0 {
        return 1 << 30;
    }
    (pages as usize).saturating_mul(page_size())
}

/// How many CPUs the calling thread may run on (its affinity mask,
/// `sched_getaffinity(2)`); 1 if the mask cannot be read. One system call,
/// no allocation.
pub fn thread_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes of
    // the calling thread's (pid 0) mask into `set`.
    let r =
        unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return 1;
    }
    // SAFETY: `set` is an initialised cpu_set_t.
    (unsafe { libc::CPU_COUNT(&set) }).max(1) as usize
}

/// The process's address-space limit (`RLIMIT_AS`, `ulimit -v`) in bytes,
/// or `None` when there is none.
pub fn address_space_limit() -> Option<usize> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `r` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } != 0 || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(usize::try_from(r.rlim_cur).unwrap_or(usize::MAX))
}

/// `mmap(2)`, `munmap(2)`, `mremap(2)` and `mprotect(2)` as system calls,
/// not through the C library's functions of those names: in a process under
/// `libfrostheap.so` those names are the library's own, which count a
/// program's anonymous memory against the limit, and the heaps' own
/// mappings are counted where they are committed (they must not count
/// twice, nor turn a commit of a heap into a refused `mprotect`). Same
/// results as the C functions: `MAP_FAILED` or -1 with `errno` set.
///
/// # Safety
/// As the system call's, for the arguments given.
unsafe fn sys_mmap(
    addr: *mut libc::c_void,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: libc::off_t,
) -> *mut libc::c_void {
    // SAFETY: forwarded.
    unsafe {
        libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) as *mut libc::c_void
    }
}

/// See [`sys_mmap`].
///
/// # Safety
/// As `munmap(2)`'s.
unsafe fn sys_munmap(addr: *mut libc::c_void, len: usize) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) as libc::c_int }
}

/// See [`sys_mmap`]; `MAP_FAILED` with `errno` set on failure.
///
/// # Safety
/// As `mremap(2)`'s.
unsafe fn sys_mremap(
    old: *mut u8,
    old_len: usize,
    new_len: usize,
    flags: libc::c_int,
    new_addr: *mut u8,
) -> *mut libc::c_void {
    // SAFETY: forwarded.
    unsafe {
        libc::syscall(libc::SYS_mremap, old, old_len, new_len, flags, new_addr) as *mut libc::c_void
    }
}

/// See [`sys_mmap`].
///
/// # Safety
/// As `mprotect(2)`'s.
unsafe fn sys_mprotect(addr: *mut libc::c_void, len: usize, prot: libc::c_int) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) as libc::c_int }
}

/// Reserves `len` bytes of address space aligned to `align`: `PROT_NONE`,
/// `MAP_NORESERVE` (no swap reservation, no commit charge).
///
/// Preconditions: `len` and `align` are non-zero multiples of the page size,
/// `align` is a power of two. Postcondition: the range is inaccessible until
/// [`commit`]; the excess taken for alignment is unmapped again.
pub fn reserve(len: usize, align: usize) -> Result<*mut u8, OsError> {
    debug_assert!(
        len > 0 && len.is_multiple_of(page_size()),
        "reserve: len {len} not page-aligned"
    );
    debug_assert!(
        align.is_power_of_two() && align >= page_size(),
        "reserve: bad align {align}"
    );
    let padded = len.checked_add(align - page_size()).ok_or(OsError {
        call: "mmap",
        errno: libc::ENOMEM,
    })?;
    let raw = map_anonymous(padded, libc::PROT_NONE)? as usize;
    let base = (raw + align - 1) & !(align - 1);
    let head = base - raw;
    let tail = padded - head - len;
    // SAFETY: head and tail are page-aligned pieces of the mapping made
    // above that lie outside [base, base + len).
    unsafe {
        if head > 0 {
            sys_munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            sys_munmap((base + len) as *mut libc::c_void, tail);
        }
    }
    Ok(base as *mut u8)
}

/// A private anonymous `MAP_NORESERVE` mapping of `len` bytes with
/// protection `prot`, at a kernel-chosen address.
fn map_anonymous(len: usize, prot: libc::c_int) -> Result<*mut u8, OsError> {
    // SAFETY: an anonymous mapping at a kernel-chosen address cannot alias
    // any existing memory.
    let raw = unsafe {
        sys_mmap(
            ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        Err(last_error("mmap"))
    } else {
        Ok(raw.cast())
    }
}

/// Maps `len` bytes of zeroed, readable and writable memory that is charged
/// only when touched (`MAP_NORESERVE`): used for side tables.
///
/// Precondition: `len` is a non-zero multiple of the page size.
pub fn map_table(len: usize) -> Result<*mut u8, OsError> {
    map_anonymous(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// Maps `len` bytes of zeroed memory that is only readable until parts of
/// it are opened with [`protect`] (`MAP_NORESERVE`): a side table whose
/// size follows a reservation, charged (even under strict overcommit) only
/// as far as it is opened.
///
/// Precondition: `len` is a non-zero multiple of the page size.
pub fn map_table_closed(len: usize) -> Result<*mut u8, OsError> {
    map_anonymous(len, libc::PROT_READ)
}

/// Unmaps a range made by [`reserve`], [`map_table`] or
/// [`map_table_closed`].
///
/// # Safety
/// 1. `[addr, addr + len)` was mapped by this module and nothing refers to
///    it any more.
pub unsafe fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: by (1) the range is ours to drop.
    unsafe { sys_munmap(addr.cast(), len) };
}

/// Makes `[addr, addr + len)` readable and writable. Pages that were never
/// committed, or were decommitted, read as zero.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside a reservation made
///    by [`reserve`].
pub unsafe fn commit(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1) the range belongs to one of our reservations.
    let r = unsafe { sys_mprotect(addr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("mprotect"))
    }
}

/// Returns `[addr, addr + len)` to the reserved state: inaccessible, its
/// physical pages released. A later [`commit`] sees zeroes.
///
/// `madvise(MADV_DONTNEED)` then `mprotect(PROT_NONE)` rather than a fresh
/// `MAP_FIXED` mapping: the mapping keeps its flags — its protection key
/// and its `MADV_HUGEPAGE` advice — so a later commit needs no re-tagging.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside a reservation made
///    by [`reserve`]; no live object lies in it.
pub unsafe fn decommit(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1) dropping the contents and access loses nothing anyone
    // needs.
    unsafe {
        if libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) != 0 {
            return Err(last_error("madvise"));
        }
        if sys_mprotect(addr.cast(), len, libc::PROT_NONE) != 0 {
            return Err(last_error("mprotect"));
        }
    }
    Ok(())
}

/// Releases the physical pages behind `[addr, addr + len)` but keeps the
/// range accessible; it reads as zero afterwards (`MADV_DONTNEED`).
///
/// # Safety
/// 1. The range is page-aligned, non-empty, committed, and holds no live
///    object.
pub unsafe fn purge(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1) dropping the contents loses nothing anyone needs.
    let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("madvise"))
    }
}

/// How many of the pages of `[addr, addr + len)` are resident in memory
/// (`mincore(2)`), with `vec` for its answer: a byte per page. `errno` is
/// left as it was.
///
/// # Safety
/// 1. The range is page-aligned and mapped; `vec` has a byte for each of
///    its pages.
pub unsafe fn resident_pages(addr: *mut u8, len: usize, vec: &mut [u8]) -> Result<usize, OsError> {
    keeping_errno(|| {
        // SAFETY: by (1); mincore writes a byte per page into `vec`.
        if unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) } == 0 {
            Ok(vec.iter().filter(|&&b| b & 1 != 0).count())
        } else {
            Err(last_error("mincore"))
        }
    })
}

/// Moves the pages of `[from, from + len)` to `[to, to + len)` without
/// copying them: `mremap(from, n, n, MREMAP_MAYMOVE | MREMAP_FIXED |
/// MREMAP_DONTUNMAP, to)` (Linux 5.7), as a system call, not through the C
/// library's `mremap` (see `sys_mmap`: under `libfrostheap.so` that name
/// is the library's own, which records a program's mappings). What was
/// mapped at `to` is replaced by the moved mapping, which keeps the
/// source's flags — protection, `MAP_NORESERVE`, huge-page advice,
/// protection key — and `[from, from + len)` stays mapped with those
/// flags, holding no page: it reads as zero.
///
/// **Each part moved lies in one mapping (VMA) of the source**, checked
/// first (`in_one_mapping`, which changes nothing): older kernels move
/// one mapping at a time (the host's 6.18 moves across mappings), and
/// Linux 6.1 (Debian 12's) unmaps the destination *before* it finds the
/// source spanning two and fails, so the range at `to` was left unmapped.
/// Another thread's `mmap` could land in that hole before the next
/// part's move or the copy that followed the failure (`heap/span.rs`,
/// `move_or_copy`) replaced it: a new thread's stack and TLS, zeroed
/// under it (its first TLS read found NULL and the process died of
/// SIGSEGV), or the copy stored into a page no longer mapped. CI's QEMU
/// guest (6.1) lost its shuffled `it` run so once; two of its tests side
/// by side (a large block grown thousands of times beside a runtime
/// starting its workers) died in 8 runs of 30, and in none of 40 since.
/// A source that earlier moves or protections split spans several
/// mappings: the part is halved, down to `unit` bytes, until it lies in
/// one (the parts of one source mapping merge again at the destination),
/// and a `unit` that still spans two is not moved. Returns the error of
/// the first part that could not move, with the bytes moved before it
/// (from the start):
/// `EFAULT` for a `unit` across two mappings, `EINVAL` on a kernel before
/// 5.7, `ENOMEM` past `vm.max_map_count`. `errno` is left as the caller
/// had it, failure or not: a move that fails is copied instead, and the
/// C function that asked for it (another thread's block grown by
/// `realloc`) succeeds, which must not change `errno` (glibc's does not).
///
/// # Safety
/// 1. Both ranges are `unit`-aligned (a multiple of the page size),
///    non-empty, disjoint, inside private anonymous mappings of this
///    module; nothing lives at `to` and nothing refers to the source's
///    contents at their old addresses any more.
pub unsafe fn move_pages(
    from: *mut u8,
    len: usize,
    to: *mut u8,
    unit: usize,
) -> Result<(), (usize, OsError)> {
    // SAFETY: (1).
    keeping_errno(|| unsafe { move_pages_in_parts(from, len, to, unit) })
}

/// [`move_pages`], `errno` left as its calls set it.
///
/// # Safety
/// 1. As for [`move_pages`].
unsafe fn move_pages_in_parts(
    from: *mut u8,
    len: usize,
    to: *mut u8,
    unit: usize,
) -> Result<(), (usize, OsError)> {
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | MREMAP_DONTUNMAP;
    let mut moved = 0;
    let mut part = len;
    while moved < len {
        part = part.min(len - moved);
        // SAFETY: by (1), the source is ours and mapped.
        while !unsafe { in_one_mapping(from.add(moved), part) } {
            if part <= unit {
                return Err((
                    moved,
                    OsError {
                        call: "mremap",
                        errno: libc::EFAULT,
                    },
                ));
            }
            part = (part / 2).max(unit) & !(unit - 1);
        }
        // SAFETY: by (1), the part's source and destination are ours, and
        // what the destination held is free.
        let r = unsafe { sys_mremap(from.add(moved), part, part, flags, to.add(moved)) };
        if r == libc::MAP_FAILED {
            return Err((moved, last_error("mremap")));
        }
        moved += part;
        part = len - moved;
    }
    Ok(())
}

/// Whether `[p, p + len)` lies in one mapping (VMA), asked of the kernel
/// without changing anything that stays: `mremap(p, len, len + page, 0)`,
/// a growth in place that may not move, fails with `EFAULT` exactly when
/// the range reaches past the mapping that holds `p` (checked before
/// anything else), and otherwise with `ENOMEM` (the range ends inside its
/// mapping, or the addresses after it are taken). Should the page after
/// the range be free and the range end its mapping, the kernel grows the
/// mapping by that page, which is given back at once. `errno` is left as
/// it was (the probe's failure is its answer, not an error).
///
/// # Safety
/// 1. `p` is page-aligned and mapped by this module; `len` is a non-zero
///    multiple of the page size.
unsafe fn in_one_mapping(p: *mut u8, len: usize) -> bool {
    let page = page_size();
    keeping_errno(|| {
        // SAFETY: no flag: the mapping at `p` grows in place or nothing
        // happens; by (1) it is ours.
        let r = unsafe { sys_mremap(p, len, len + page, 0, ptr::null_mut()) };
        if r != libc::MAP_FAILED {
            // Grown into the free page after it: shrunk back (that page
            // was nobody's, and is nobody's again).
            // SAFETY: the page just added to our mapping.
            unsafe { sys_mremap(p, len + page, len, 0, ptr::null_mut()) };
            return true;
        }
        errno() != libc::EFAULT
    })
}

/// `MREMAP_DONTUNMAP` (Linux 5.7), which the libc crate may lack.
const MREMAP_DONTUNMAP: libc::c_int = 4;

/// Advises the kernel to back `[addr, addr + len)` with huge pages.
/// A refusal is harmless and is reported for diagnostics only.
///
/// # Safety
/// 1. The range is page-aligned and inside one of our mappings.
pub unsafe fn advise_huge_pages(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1); MADV_HUGEPAGE never changes contents.
    let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("madvise"))
    }
}

/// `MADV_COLLAPSE` (Linux 6.1), which the libc crate may lack.
const MADV_COLLAPSE: libc::c_int = 25;

/// Collapses the pages of `[addr, addr + len)` into transparent huge pages
/// now (`MADV_COLLAPSE`, Linux 6.1 and later), one 2 MiB range at a time,
/// and returns the first refusal; the ranges after it are left as they
/// are. A range in which nothing was ever touched has nothing to collapse
/// (the kernel says `EINVAL`, as it does for advice it does not know, which
/// is why the call is probed first) and is skipped: it will fault in huge
/// pages if advised.
///
/// # Safety
/// 1. The range is `HUGE_PAGE_SIZE`-aligned, inside one of our mappings
///    and advised `MADV_HUGEPAGE`; collapsing copies pages, never changes
///    their contents.
pub unsafe fn collapse_huge_pages(addr: *mut u8, len: usize) -> Result<(), OsError> {
    debug_assert!(
        (addr as usize | len).is_multiple_of(HUGE_PAGE_SIZE),
        "collapse_huge_pages: unaligned range"
    );
    // SAFETY: an empty range: the kernel checks the advice and returns.
    if unsafe { libc::madvise(addr.cast(), 0, MADV_COLLAPSE) } != 0 {
        return Err(last_error("madvise(MADV_COLLAPSE)"));
    }
    for offset in (0..len).step_by(HUGE_PAGE_SIZE) {
        // SAFETY: by (1), a 2 MiB range of our mapping.
        let r = unsafe { libc::madvise(addr.add(offset).cast(), HUGE_PAGE_SIZE, MADV_COLLAPSE) };
        if r != 0 {
            let e = last_error("madvise(MADV_COLLAPSE)");
            if e.errno != libc::EINVAL {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Advises the kernel never to back `[addr, addr + len)` with huge pages
/// (`MADV_NOHUGEPAGE`), even where transparent huge pages are `always`
/// system-wide.
///
/// # Safety
/// 1. The range is page-aligned and inside one of our mappings.
pub unsafe fn advise_no_huge_pages(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1); MADV_NOHUGEPAGE never changes contents.
    let r = unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("madvise"))
    }
}

/// Access rights for [`protect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No access at all.
    None,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// Changes the protection of `[addr, addr + len)` with one `mprotect` call.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside one of our mappings.
/// 2. If `access` removes write (or read) access, the caller accounts for
///    every thread that may touch the range (they will fault).
pub unsafe fn protect(addr: *mut u8, len: usize, access: Access) -> Result<(), OsError> {
    let prot = match access {
        Access::None => libc::PROT_NONE,
        Access::Read => libc::PROT_READ,
        Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    };
    // SAFETY: by (1) and (2).
    let r = unsafe { sys_mprotect(addr.cast(), len, prot) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("mprotect"))
    }
}

/// Seals `[addr, addr + len)` with `mseal(2)`: its protection can never
/// change again and it cannot be unmapped for the life of the process.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside one of our mappings;
///    the caller never needs to change or unmap it again.
pub unsafe fn seal(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1); mseal only restricts future operations.
    let r = unsafe { libc::syscall(libc::SYS_mseal, addr, len, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("mseal"))
    }
}

/// Whether this kernel has `mseal(2)` (Linux 6.10 and later), or the error
/// of the probe. Probed once per process: a zero-length `mseal` at address
/// 0 seals nothing and succeeds where the call exists (`ENOSYS` where not).
pub fn mseal_available() -> Result<(), OsError> {
    use core::sync::atomic::{AtomicI32, Ordering};
    /// 0: not probed yet; -1: available; otherwise the probe's errno.
    static PROBED: AtomicI32 = AtomicI32::new(0);
    let mut state = PROBED.load(Ordering::Relaxed);
    if state == 0 {
        // SAFETY: a zero-length range: mseal checks its arguments and
        // returns without sealing anything.
        let r = unsafe { libc::syscall(libc::SYS_mseal, 0usize, 0usize, 0usize) };
        state = if r == 0 {
            -1
        } else {
            last_error("mseal").errno.max(1)
        };
        PROBED.store(state, Ordering::Relaxed);
    }
    match state {
        -1 => Ok(()),
        errno => Err(OsError {
            call: "mseal",
            errno,
        }),
    }
}

/// `getenv` without allocation: the value's bytes, valid for the life of
/// the process as long as nobody calls `setenv` for this name.
pub fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: name is NUL-terminated; getenv returns NULL or a pointer to
    // a NUL-terminated string in the environment block.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: p is a valid NUL-terminated string (see above).
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// Writes all of `bytes` to standard error with `write(2)`.
/// Async-signal-safe: usable from the fault handler and before `main`.
///
/// Through `syscall(SYS_write, …)`, not glibc's `write`: that one is a
/// pthread cancellation point, and this writes the refusal line from
/// inside `malloc` and `mmap`, which are not. A thread with a deferred
/// cancel pending that a refused allocation reached was cancelled in the
/// middle of `malloc` (holding the program's mutex, or the record of
/// mappings' lock, for good: the next `munmap` spun forever). glibc's
/// `syscall` is a plain system call, never a cancellation point; it is
/// also async-signal-safe, which `pthread_setcancelstate` around `write`
/// is not listed as, and it costs no extra calls.
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes)
}

/// [`write_stderr`] to the file descriptor `fd`; nothing is written when
/// it is not open for writing.
pub fn write_fd(fd: i32, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: writing from a valid slice to a descriptor; a bad one
        // fails with EBADF.
        let n = unsafe { libc::syscall(libc::SYS_write, fd, rest.as_ptr(), rest.len()) };
        if n <= 0 {
            // EINTR: try again; anything else: give up quietly.
            // SAFETY: errno is thread-local and always readable.
            if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Ends the process at once with `status`, running no destructors or
/// atexit handlers (`_exit(2)`). Used when start-up configuration is bad
/// inside the global allocator, where unwinding is impossible.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(status) }
}

/// Registers `fork` handlers (`pthread_atfork(3)`): `prepare` runs in the
/// forking thread before the fork, `parent` and `child` after it on each
/// side. glibc keeps the handlers with its own `malloc` (never a Rust
/// global allocator's).
pub fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> Result<(), OsError> {
    // SAFETY: three function pointers valid for the life of the process.
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    pthread_result("pthread_atfork", r)
}

/// A thread-specific data key whose `destructor` runs, in each thread that
/// set a non-null value for it, when the thread exits
/// (`pthread_key_create(3)`): after the thread's C++-style thread-local
/// destructors (std's), with the value the thread set.
pub fn thread_key(destructor: unsafe extern "C" fn(*mut libc::c_void)) -> Result<u32, OsError> {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: key is writable; the destructor lives as long as the process.
    let r = unsafe { libc::pthread_key_create(&mut key, Some(destructor)) };
    pthread_result("pthread_key_create", r).map(|()| key)
}

/// Deletes a key made by [`thread_key`] that no thread has set.
pub fn delete_thread_key(key: u32) {
    // SAFETY: deleting a key runs no destructor; an unknown key is EINVAL.
    unsafe { libc::pthread_key_delete(key) };
}

/// Sets the calling thread's value for `key` (made by [`thread_key`]): a
/// word, which the key's destructor gets back as a pointer. glibc keeps
/// the first 32 keys' values in the thread's descriptor: no allocation
/// for them.
pub fn set_thread_value(key: u32, value: usize) -> Result<(), OsError> {
    // SAFETY: pthread_setspecific only stores the word; nothing reads
    // through it but the destructor, which takes it as a number.
    let r = unsafe { libc::pthread_setspecific(key, value as *const libc::c_void) };
    pthread_result("pthread_setspecific", r)
}

// ---------------------------------------------------------------------------
// Threads, futexes, signals, protection keys.

/// The kernel thread id of the caller. Async-signal-safe.
pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The process id. Async-signal-safe.
pub fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Sends `sig` to thread `tid` of this process (`tgkill(2)`).
/// Async-signal-safe.
pub fn tgkill(tid: u32, sig: libc::c_int) -> Result<(), OsError> {
    // SAFETY: tgkill takes plain integers; a tid that is not a thread of
    // this process fails with ESRCH.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, getpid(), tid as libc::pid_t, sig) };
    if r != 0 {
        return Err(last_error("tgkill"));
    }
    Ok(())
}

/// Nanoseconds of `CLOCK_MONOTONIC` (through the vDSO: no system call).
/// Does not allocate; async-signal-safe. Inlined into its callers, which
/// run rarely: out of the first window of the C library's code.
#[inline]
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists.
    clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
}

/// `clock_gettime` of `clock` in nanoseconds; `None` if the clock does
/// not exist (`EINVAL`). Does not allocate.
#[inline]
fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; an invalid clock id fails with
    // EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time thread `tid` of this process has used, in nanoseconds
/// (`clock_gettime` on the thread's CPU-time clock, which Linux names by
/// tid: `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`). `None` if the thread
/// is gone. Does not allocate.
pub fn thread_cpu_ns(tid: u32) -> Option<u64> {
    // include/linux/posix-timers.h: a per-thread (4) scheduler-runtime (2)
    // CPU clock, for the bitwise complement of the id, shifted by 3.
    clock_ns(((!(tid as libc::clockid_t)) << 3) | 6)
}

/// Whether the thread `tid` of this process is blocked in a `futex` wait
/// (a lock, a condition variable, a channel), from the first field of
/// `/proc/self/task/TID/syscall`; `None` if that cannot be read. Allocates
/// nothing (the path and the text live on the stack).
pub fn thread_in_futex_wait(tid: u32) -> Option<bool> {
    const DIR: &[u8] = b"/proc/self/task/";
    const FILE: &[u8] = b"/syscall\0";
    let mut path = [0u8; 48];
    path[..DIR.len()].copy_from_slice(DIR);
    let mut at = DIR.len();
    let digits = tid.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut n = tid;
    for k in (0..digits).rev() {
        path[at + k] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    at += digits;
    path[at..at + FILE.len()].copy_from_slice(FILE);
    // SAFETY: `path` is NUL-terminated; open, read and close touch only
    // the buffers given.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut text = [0u8; 32];
    // SAFETY: as above; `text` is writable for its length.
    let len = unsafe { libc::read(fd, text.as_mut_ptr().cast(), text.len()) };
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
    if len <= 0 {
        return None;
    }
    // "202 0x..." while in futex(2) on x86_64; "running", or another
    // call's number, otherwise.
    let mut number: Option<i64> = None;
    for &b in &text[..len as usize] {
        match b {
            b'0'..=b'9' => number = Some(number.unwrap_or(0) * 10 + i64::from(b - b'0')),
            _ => break,
        }
    }
    Some(number == Some(libc::SYS_futex))
}

/// Blocks while `*word == expected` (spurious wake-ups happen: re-check).
/// `timeout_ns` of `None` waits forever. Async-signal-safe.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ns: Option<u64>) {
    let ts;
    let tsp = match timeout_ns {
        Some(ns) => {
            ts = libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as _,
            };
            &ts as *const libc::timespec
        }
        None => ptr::null(),
    };
    // SAFETY: word is a valid, aligned u32 for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            tsp,
        )
    };
}

/// Gives the CPU to another runnable thread, if any. Async-signal-safe.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// Waits while `*word == expected`, asleep in the kernel; returns once
/// the word has changed. For the runtime's waits (a phase ending, the next
/// phase starting).
///
/// It neither spins nor yields first. Under EEVDF (Linux 6.6 on), each
/// `sched_yield` hands the rest of the thread's slice away and moves its
/// virtual deadline a slice ahead, so a thread that yielded while it
/// waited is runnable but last in line when the word changes: with two
/// `yes` hogs on two CPUs, the 48 yields this wait made after 16 short
/// spins held a phase for 4 to 11 ms (88 to 252 small calls a second,
/// against 24,000 to 44,000 with a plain sleep, which a wake-up runs at
/// once). A spin of 64 to 1,024 `pause`s before the sleep was no faster
/// on a quiet machine and slower with the hogs: on two CPUs a spinning
/// main or worker takes the CPU the worker with work needs
/// (`frostheap-bench`'s `phases`).
pub fn wait_while_eq(word: &core::sync::atomic::AtomicU32, expected: u32) {
    use core::sync::atomic::Ordering;
    while word.load(Ordering::Acquire) == expected {
        futex_wait(word, expected, None);
    }
}

/// Wakes up to `n` waiters on `word`. Async-signal-safe.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32, n: i32) {
    // SAFETY: word is a valid, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        )
    };
}

/// A signal handler with `SA_SIGINFO`.
pub type SigAction = unsafe extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig` with `SA_SIGINFO | SA_ONSTACK | SA_NODEFER`
/// (and `SA_RESTART`), returning the previous action.
///
/// # Safety
/// 1. `handler` is async-signal-safe and chains to the returned action for
///    signals it does not claim.
pub unsafe fn install_handler(
    sig: libc::c_int,
    handler: SigAction,
) -> Result<libc::sigaction, OsError> {
    // SAFETY: sigaction structs are plain data; zeroed is a valid start.
    let mut new: libc::sigaction = unsafe { core::mem::zeroed() };
    new.sa_sigaction = handler as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART | libc::SA_NODEFER;
    // SAFETY: a valid sigset pointer.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: both pointers are valid; by (1) the handler is sound.
    if unsafe { libc::sigaction(sig, &new, &mut old) } != 0 {
        return Err(last_error("sigaction"));
    }
    Ok(old)
}

/// The action currently installed for `sig`.
pub fn current_handler(sig: libc::c_int) -> Result<libc::sigaction, OsError> {
    // SAFETY: sigaction structs are plain data; zeroed is a valid start.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is a valid pointer.
    if unsafe { libc::sigaction(sig, ptr::null(), &mut old) } != 0 {
        return Err(last_error("sigaction"));
    }
    Ok(old)
}

/// Adds the signals of `mask` (the kernel's 64-bit set: bit `n - 1` for
/// signal `n`) to the calling thread's blocked set; returns the set before.
/// One system call, async-signal-safe. (Inside a handler the block lasts
/// until it returns: `sigreturn` installs the mask saved in the signal
/// frame.)
pub fn block_signals(mask: u64) -> u64 {
    sigprocmask(libc::SIG_BLOCK, mask)
}

/// Sets the calling thread's blocked signals to `mask` (as
/// [`block_signals`] returned it). Async-signal-safe.
pub fn set_signal_mask(mask: u64) {
    sigprocmask(libc::SIG_SETMASK, mask);
}

fn sigprocmask(how: libc::c_int, mask: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask reads and writes 8-byte sets (the kernel's
    // sigset size on x86_64); it cannot fail with these arguments, and
    // SIGKILL and SIGSTOP are left unblocked by the kernel.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &mask as *const u64,
            &mut old as *mut u64,
            core::mem::size_of::<u64>(),
        )
    };
    old
}

/// Restores the default action for `sig`. Async-signal-safe.
pub fn reset_to_default(sig: libc::c_int) {
    // SAFETY: zeroed sigaction with SIG_DFL is valid.
    unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(sig, &act, ptr::null_mut());
    }
}

/// Minimum signal stack size the kernel asks for (AT_MINSIGSTKSZ, which
/// grows with AVX-512/AMX state), never below `libc::SIGSTKSZ`.
pub fn min_signal_stack() -> usize {
    // SAFETY: getauxval has no preconditions.
    let v = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    v.max(libc::SIGSTKSZ)
}

/// Makes `new` the calling thread's alternate signal stack and returns the
/// one it had. Fails (EPERM) while the thread runs on its alternate stack.
/// Async-signal-safe.
pub fn swap_alt_stack(new: &libc::stack_t) -> Result<libc::stack_t, OsError> {
    // SAFETY: a zeroed stack_t is valid to be written by the kernel.
    let mut old: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: both pointers are valid stack_t; the caller owns the memory
    // `new` describes for as long as it stays installed.
    if unsafe { libc::sigaltstack(new, &mut old) } != 0 {
        return Err(last_error("sigaltstack"));
    }
    Ok(old)
}

/// Runs `f(arg)` with the stack pointer at `top`, and returns to the
/// caller's stack. Async-signal-safe (no system call).
///
/// # Safety
/// 1. `top` is 16-byte aligned and ends writable memory that nothing else
///    uses while `f` runs, enough for `f`.
/// 2. `f` does not unwind, and is safe to call with `arg`.
#[inline(never)]
pub unsafe fn call_on_stack(
    top: *mut u8,
    f: unsafe extern "C" fn(*mut libc::c_void),
    arg: *mut libc::c_void,
) {
    // SAFETY: by (1) the new stack is ours and aligned for a call (the
    // return address makes it 8 mod 16 in `f`, as the ABI wants); r12 is
    // callee-saved, so it holds the old stack pointer across the call,
    // and every other register the call may change is declared clobbered.
    // The old stack's red zone is not touched: nothing is pushed on it.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// An alternate signal stack mapped for the calling thread.
pub struct AltStack {
    base: *mut u8,
    len: usize,
}

impl AltStack {
    /// Maps `size` bytes (plus a guard page) and installs them as the
    /// calling thread's alternate signal stack.
    pub fn install(size: usize) -> Result<AltStack, OsError> {
        let page = page_size();
        let len = size.div_ceil(page) * page + page;
        // SAFETY: an anonymous mapping at a kernel-chosen address.
        let base = unsafe {
            sys_mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(last_error("mmap"));
        }
        // SAFETY: the first page of our mapping becomes the guard page.
        unsafe { sys_mprotect(base, page, libc::PROT_NONE) };
        let st = libc::stack_t {
            // SAFETY: page < len, inside the mapping.
            ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
            ss_flags: 0,
            ss_size: len - page,
        };
        // SAFETY: st describes memory we own for the life of the thread
        // (the AltStack is kept by the thread until it exits).
        if unsafe { libc::sigaltstack(&st, ptr::null_mut()) } != 0 {
            let e = last_error("sigaltstack");
            // SAFETY: the mapping is ours and unused.
            unsafe { sys_munmap(base, len) };
            return Err(e);
        }
        Ok(AltStack {
            base: base.cast(),
            len,
        })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: disable the alternate stack before unmapping it; the
        // thread is not running a handler (we are in ordinary code).
        unsafe {
            let st = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&st, ptr::null_mut());
            sys_munmap(self.base.cast(), self.len);
        }
    }
}

/// Allocates a protection key with every access allowed, or the reason
/// there is none (EINVAL: the CPU or kernel lacks pkeys; ENOSPC: all 15
/// keys are taken).
pub fn pkey_alloc() -> Result<u32, OsError> {
    // SAFETY: pkey_alloc has no memory preconditions.
    let k = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0usize, 0usize) };
    if k < 0 {
        Err(last_error("pkey_alloc"))
    } else {
        Ok(k as u32)
    }
}

/// Tags `[addr, addr + len)` with protection key `key`, keeping `PROT_NONE`.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside one of our mappings.
pub unsafe fn pkey_tag(addr: *mut u8, len: usize, key: u32, access: Access) -> Result<(), OsError> {
    let prot = match access {
        Access::None => libc::PROT_NONE,
        Access::Read => libc::PROT_READ,
        Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
    };
    // SAFETY: by (1).
    let r = unsafe { libc::syscall(libc::SYS_pkey_mprotect, addr, len, prot, key as usize) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("pkey_mprotect"))
    }
}

/// `pkru` with the rights on protection key `key` set to `access`: the
/// access-disable bit for `None`, the write-disable bit for `Read`,
/// neither for `ReadWrite`. A pure computation on a PKRU value.
pub const fn pkru_with(pkru: u32, key: u32, access: Access) -> u32 {
    let bits = match access {
        Access::None => 1,
        Access::Read => 2,
        Access::ReadWrite => 0,
    };
    (pkru & !(3 << (2 * key))) | (bits << (2 * key))
}

/// Reads the calling thread's PKRU register.
///
/// # Safety
/// 1. The CPU and kernel have protection keys (a [`pkey_alloc`] has
///    succeeded); elsewhere RDPKRU raises #UD (SIGILL).
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn rdpkru() -> u32 {
    let pkru: u32;
    // SAFETY: by (1) the instruction exists; it reads a register (ecx must
    // be 0) and touches no memory.
    unsafe {
        core::arch::asm!("rdpkru", in("ecx") 0u32, out("eax") pkru, out("edx") _, options(nostack, preserves_flags));
    }
    pkru
}

/// Writes the calling thread's PKRU register. Not `nomem`: it changes
/// which memory the following instructions may access.
///
/// # Safety
/// 1. The CPU and kernel have protection keys (a [`pkey_alloc`] has
///    succeeded); elsewhere WRPKRU raises #UD (SIGILL).
/// 2. The calling thread keeps access to every key its code goes on to
///    use, or expects the faults: keys other than the caller's own are
///    left as they were (build the value with [`pkru_with`] from
///    [`rdpkru`]).
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn wrpkru(pkru: u32) {
    // SAFETY: by (1) the instruction exists (ecx = edx = 0); by (2) the
    // caller accounts for the access rights it changes.
    unsafe {
        core::arch::asm!("wrpkru", in("eax") pkru, in("ecx") 0u32, in("edx") 0u32, options(nostack, preserves_flags));
    }
}

/// Offset and size of XSAVE component `component` (below 32) in the
/// standard (non-compacted) XSAVE area, the format of a signal frame
/// (CPUID 0xD, sub-leaf `component`, EBX and EAX), or `None` if the CPU
/// has none. Asked once per component and remembered: in a VM every
/// `cpuid` is an exit to the hypervisor (4.7 µs each on an AMD EPYC VM,
/// 2026-12-07), and the fault handler asks for every performed vector
/// store and every protection-key grant. Async-signal-safe (an
/// instruction and atomics; two threads asking at once store the same
/// answer).
#[cfg(target_arch = "x86_64")]
pub fn xsave_component(component: u32) -> Option<(usize, usize)> {
    use core::sync::atomic::{AtomicU64, Ordering};
    /// Per component: 0 not asked yet, `u64::MAX` none, else the offset
    /// in the high half and the size in the low half.
    static LAYOUT: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];
    let slot = LAYOUT.get(component as usize)?;
    let mut v = slot.load(Ordering::Relaxed);
    if v == 0 {
        let r = core::arch::x86_64::__cpuid_count(0xD, component);
        v = if r.eax != 0 && r.ebx != 0 {
            u64::from(r.ebx) << 32 | u64::from(r.eax)
        } else {
            u64::MAX
        };
        slot.store(v, Ordering::Relaxed);
    }
    (v != u64::MAX).then_some(((v >> 32) as usize, v as u32 as usize))
}

/// Offset of the PKRU component in the XSAVE area (component 9), or
/// `None` without pkeys.
#[cfg(target_arch = "x86_64")]
pub fn xsave_pkru_offset() -> Option<usize> {
    xsave_component(9).map(|(offset, _)| offset)
}

// ---------------------------------------------------------------------------
// The process's own memory as a file (`/proc/self/mem`).

/// Opens `/proc/self/mem` for reading and writing (`O_RDWR | O_CLOEXEC`),
/// with the raw system call. Its descriptor reads and writes this
/// process's memory at the file offset equal to the address; a write goes
/// through the kernel's `FOLL_FORCE` path, which writes a private page
/// mapped read-only (unless the administrator set
/// `proc_mem.force_override=never`, or `ptrace` without a tracer: then it
/// fails with `EIO` or `EPERM`, which a caller probes for). After `fork`
/// the descriptor still refers to the parent's memory.
pub fn open_self_mem() -> Result<i32, OsError> {
    // SAFETY: the path is NUL-terminated; flags are valid.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/mem".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        Err(last_error("open /proc/self/mem"))
    } else {
        Ok(fd as i32)
    }
}

/// Closes `fd` (`close(2)`, the raw call); errors are ignored.
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor the caller owns and no longer uses.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// `pread(2)` of `buf.len()` bytes at offset `at` of `fd`, the raw
/// system call (no cancellation point; async-signal-safe): the bytes
/// read, or the call's errno. On a [`open_self_mem`] descriptor, `at` is
/// an address, and an unmapped one fails with `EIO` instead of faulting.
pub fn pread_at(fd: i32, buf: &mut [u8], at: usize) -> Result<usize, OsError> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::syscall(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), at) };
    if n < 0 {
        Err(last_error("pread"))
    } else {
        Ok(n as usize)
    }
}

/// `pwrite(2)` of `bytes` at offset `at` of `fd`, the raw system call
/// (async-signal-safe): the bytes written, or the call's errno.
///
/// # Safety
/// 1. If `fd` is an [`open_self_mem`] descriptor of this process, `at` is
///    an address, and the write changes memory there that no Rust
///    reference must see changed: the caller owns the bytes (the fault
///    handler, performing a store the interrupted code was making).
pub unsafe fn pwrite_at(fd: i32, bytes: &[u8], at: usize) -> Result<usize, OsError> {
    // SAFETY: bytes is valid for reads; what is written is the caller's by (1).
    unsafe { pwrite_from(fd, bytes.as_ptr(), bytes.len(), at) }
}

/// `pwritev(2)` of the pieces `iov` at offset `at` of `fd`, the raw system
/// call (async-signal-safe): the bytes written, or the call's errno.
///
/// # Safety
/// 1. As [`pwrite_at`]'s (1); every piece points to `iov_len` readable
///    bytes.
pub unsafe fn pwritev_at(fd: i32, iov: &[libc::iovec], at: usize) -> Result<usize, OsError> {
    // SAFETY: by (1). The offset goes in the low word whole: a 64-bit
    // kernel shifts the high word out (pos_from_hilo).
    let n = unsafe { libc::syscall(libc::SYS_pwritev, fd, iov.as_ptr(), iov.len(), at, 0usize) };
    if n < 0 {
        Err(last_error("pwritev"))
    } else {
        Ok(n as usize)
    }
}

/// [`pwrite_at`] of `len` bytes read from `src`, which may be unreadable:
/// the kernel reads them itself, and an unreadable source is an error
/// (`EFAULT`) or a short count, never a fault in the caller.
///
/// # Safety
/// 1. As [`pwrite_at`]'s (1).
pub unsafe fn pwrite_from(
    fd: i32,
    src: *const u8,
    len: usize,
    at: usize,
) -> Result<usize, OsError> {
    // SAFETY: the kernel validates `src`; what is written is the caller's
    // by (1).
    let n = unsafe { libc::syscall(libc::SYS_pwrite64, fd, src, len, at) };
    if n < 0 {
        Err(last_error("pwrite"))
    } else {
        Ok(n as usize)
    }
}

/// `read(2)` into `buf`: the byte count, or the call's errno.
pub fn read(fd: libc::c_int, buf: &mut [u8]) -> Result<usize, OsError> {
    // SAFETY: buf is a valid, writable slice of buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(last_error("read"))
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_waiting_on_a_lock_is_in_futex_wait_and_a_sleeping_one_is_not() {
        use std::sync::mpsc;
        let lock = std::sync::Mutex::new(());
        let held = lock.lock().unwrap();
        std::thread::scope(|s| {
            let (tid_tx, tid_rx) = mpsc::channel();
            let lock = &lock;
            let waiter = s.spawn(move || {
                tid_tx.send(gettid()).unwrap();
                drop(lock.lock().unwrap());
            });
            let (sleep_tx, sleep_rx) = mpsc::channel();
            let sleeper = s.spawn(move || {
                sleep_tx.send(gettid()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(500));
            });
            let (waiting, sleeping) = (tid_rx.recv().unwrap(), sleep_rx.recv().unwrap());
            // Until each is in its wait (a blocked thread stays there).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while thread_in_futex_wait(waiting) != Some(true) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never seen in futex wait"
                );
                std::thread::yield_now();
            }
            assert_eq!(thread_in_futex_wait(sleeping), Some(false));
            assert_eq!(
                thread_in_futex_wait(gettid()),
                Some(false),
                "this thread runs"
            );
            drop(held);
            waiter.join().unwrap();
            sleeper.join().unwrap();
        });
        assert_eq!(thread_in_futex_wait(u32::MAX), None, "no such thread");
    }

    #[test]
    fn pkru_with_sets_only_the_two_bits_of_the_key() {
        // The kernel's default for a new thread: every key but 0 denied.
        let default = 0x5555_5554;
        assert_eq!(pkru_with(default, 1, Access::ReadWrite), 0x5555_5550);
        assert_eq!(pkru_with(default, 1, Access::Read), 0x5555_5558);
        assert_eq!(pkru_with(0, 15, Access::None), 1 << 30);
        assert_eq!(pkru_with(0, 15, Access::Read), 2 << 30);
        assert_eq!(pkru_with(u32::MAX, 3, Access::ReadWrite), !(3 << 6));
    }

    /// mseal(2) came with Linux 6.10: the probe says so on both sides of
    /// that line (this machine and the pkey guest, which runs 6.1).
    #[test]
    fn the_mseal_probe_matches_the_kernel_version() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap(), numbers.next().unwrap());
        match mseal_available() {
            Ok(()) => assert!(version >= (6, 10), "mseal on {release}"),
            Err(e) => {
                assert!(version < (6, 10), "no mseal on {release}: {e}");
                assert_eq!((e.call, e.errno), ("mseal", libc::ENOSYS));
            }
        }
    }

    /// Whether every page of `[p, p + len)` is mapped (by anyone).
    fn all_mapped(p: *mut u8, len: usize) -> bool {
        let mut v = vec![0u8; len / page_size()];
        // SAFETY: `v` has a byte per page of the range.
        unsafe { libc::mincore(p.cast(), len, v.as_mut_ptr()) == 0 }
    }

    /// Regression (Linux 6.1, CI's pkey guest): a move whose source spans
    /// two mappings failed there after the kernel had unmapped the
    /// destination, and the hole was another thread's to take. The move
    /// now goes in parts, each in one mapping: the destination is mapped
    /// after it and holds the source's pages, whatever the kernel; a
    /// `unit` that spans two mappings is refused before anything moves,
    /// the destination as it was.
    #[test]
    fn a_move_across_two_mappings_goes_in_parts_and_never_unmaps_the_destination() {
        let page = page_size();
        let pages = 16;
        let len = pages * page;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4 * len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(base.cast(), libc::MAP_FAILED);
        let (src, dst) = (base, base.wrapping_add(2 * len));
        let fill = |p: *mut u8, tag: u8| {
            for i in 0..pages {
                // SAFETY: a page of the mapping, writable.
                unsafe { p.add(i * page).write_bytes(tag + i as u8, page) };
            }
        };
        fill(src, 1);
        fill(dst, 100);
        // Pages 4..8 read-only: the source is three mappings.
        // SAFETY: pages of the mapping.
        let r = unsafe { libc::mprotect(src.add(4 * page).cast(), 4 * page, libc::PROT_READ) };
        assert_eq!(r, 0);
        // A unit of eight pages spans the first two: refused, nothing moved.
        // SAFETY: both ranges lie in the mapping, disjoint; nothing uses them.
        let e =
            unsafe { move_pages(src, len, dst, 8 * page) }.expect_err("a unit across two mappings");
        assert_eq!((e.0, e.1.errno), (0, libc::EFAULT));
        assert!(all_mapped(dst, len), "the destination stays mapped");
        // SAFETY: the destination, mapped and readable.
        assert_eq!(unsafe { dst.add(5 * page).read() }, 105, "and as it was");
        // Pages as the unit: moved in three parts.
        // SAFETY: as above.
        unsafe { move_pages(src, len, dst, page) }.expect("a move in parts");
        assert!(all_mapped(dst, len), "the destination is mapped");
        for i in 0..pages {
            // SAFETY: pages of the mapping, readable (source and destination).
            let (d, s) = unsafe { (dst.add(i * page + 7).read(), src.add(i * page).read()) };
            assert_eq!(
                (d, s),
                (1 + i as u8, 0),
                "page {i}: moved, the source left empty"
            );
        }
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base.cast(), 4 * len) };
    }
}
