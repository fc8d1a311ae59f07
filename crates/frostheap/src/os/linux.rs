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
    // SAFETY: __errno_location always returns a valid pointer to this
    // thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    OsError { call, errno }
}

/// The base page size (4 KiB on x86_64 Linux).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n <= 0 {
        4096
    } else {
        n as usize
    }
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
pub fn read_small_file(path: &CStr, buf: &mut [u8]) -> usize {
    // SAFETY: path is NUL-terminated; flags are valid.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return 0;
    }
    let mut total = 0;
    while total < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe {
            libc::read(
                fd,
                buf[total..].as_mut_ptr().cast(),
                buf.len() - total,
            )
        };
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    // SAFETY: fd was opened above and is closed once.
    unsafe { libc::close(fd) };
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

/// Reserves `len` bytes of address space aligned to `align`: `PROT_NONE`,
/// `MAP_NORESERVE` (no swap reservation, no commit charge).
///
/// Preconditions: `len` and `align` are non-zero multiples of the page size,
/// `align` is a power of two. Postcondition: the range is inaccessible until
/// [`commit`]; the excess taken for alignment is unmapped again.
pub fn reserve(len: usize, align: usize) -> Result<*mut u8, OsError> {
    debug_assert!(len > 0 && len % page_size() == 0, "reserve: len {len} not page-aligned");
    debug_assert!(align.is_power_of_two() && align >= page_size(), "reserve: bad align {align}");
    let padded = len.checked_add(align - page_size()).ok_or(OsError { call: "mmap", errno: libc::ENOMEM })?;
    // SAFETY: an anonymous PROT_NONE mapping at a kernel-chosen address
    // cannot alias any existing memory.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            padded,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(last_error("mmap"));
    }
    let raw = raw as usize;
    let base = (raw + align - 1) & !(align - 1);
    let head = base - raw;
    let tail = padded - head - len;
    // SAFETY: head and tail are page-aligned pieces of the mapping made
    // above that lie outside [base, base + len).
    unsafe {
        if head > 0 {
            libc::munmap(raw as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((base + len) as *mut libc::c_void, tail);
        }
    }
    Ok(base as *mut u8)
}

/// Maps `len` bytes of zeroed, readable and writable memory that is charged
/// only when touched (`MAP_NORESERVE`): used for side tables.
///
/// Precondition: `len` is a non-zero multiple of the page size.
pub fn map_table(len: usize) -> Result<*mut u8, OsError> {
    // SAFETY: an anonymous mapping at a kernel-chosen address.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
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

/// Unmaps a range made by [`reserve`] or [`map_table`].
///
/// # Safety
/// 1. `[addr, addr + len)` was mapped by this module and nothing refers to
///    it any more.
pub unsafe fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: by (1) the range is ours to drop.
    unsafe { libc::munmap(addr.cast(), len) };
}

/// Makes `[addr, addr + len)` readable and writable. Pages that were never
/// committed, or were decommitted, read as zero.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside a reservation made
///    by [`reserve`].
pub unsafe fn commit(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1) the range belongs to one of our reservations.
    let r = unsafe { libc::mprotect(addr.cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("mprotect"))
    }
}

/// Returns `[addr, addr + len)` to the reserved state: inaccessible, its
/// physical pages released. A later [`commit`] sees zeroes.
///
/// # Safety
/// 1. The range is page-aligned, non-empty and inside a reservation made
///    by [`reserve`]; no live object lies in it.
pub unsafe fn decommit(addr: *mut u8, len: usize) -> Result<(), OsError> {
    // SAFETY: by (1) replacing the range with a fresh PROT_NONE mapping
    // discards only memory we own and no longer use.
    let raw = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        Err(last_error("mmap"))
    } else {
        Ok(())
    }
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
    let r = unsafe { libc::mprotect(addr.cast(), len, prot) };
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
    const SYS_MSEAL: libc::c_long = 462;
    // SAFETY: by (1); mseal only restricts future operations.
    let r = unsafe { libc::syscall(SYS_MSEAL, addr, len, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_error("mseal"))
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
pub fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: writing from a valid slice to fd 2.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
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
