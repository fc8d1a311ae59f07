//! glibc's malloc introspection, answered by frostheap: `malloc_trim`,
//! `mallinfo2`, `mallinfo` (and `__libc_mallinfo`), `malloc_stats` and
//! `malloc_info`.
//!
//! Without these a program under the library would reach glibc's, which
//! know only glibc's arenas: `mallinfo2` would report next to nothing in
//! use, and `malloc_trim` would give back nothing of what the program
//! freed. Programs call them to watch their heap (monitoring, tests of
//! memory use) and to give memory back after a large release.
//!
//! None of them allocates: the figures are the heaps' own counters
//! ([`frostheap::stats`]), and `malloc_stats` and `malloc_info` format
//! into a stack buffer (`malloc_info`'s stream may allocate as it writes).

use core::ffi::c_int;

use frostheap::__private::fmt_buf::Buf;
use frostheap::__private::raw;
use frostheap::Kind;

/// `malloc_trim(3)`: gives the free memory of every heap back to the
/// system ([`frostheap::trim`]: each heap's free top decommitted and its
/// free spans purged, the calling thread's cache of other heaps' blocks
/// handed back first), and glibc's own arenas, which hold the blocks of
/// threads without a heap, to glibc's `malloc_trim(pad)`. Returns 1 if
/// some memory was given back, 0 if none. `pad` (glibc: bytes to keep at
/// the top of the main arena) goes to glibc's alone: a heap keeps its
/// minimum (`FROSTHEAP_MIN` for the main heap) whatever it is.
#[no_mangle]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    // SAFETY: the thread's own heap word, read on this thread.
    let heaps = unsafe { raw::trim(crate::local_fast()) } > 0;
    let glibc = crate::foreign::trim(pad);
    c_int::from(heaps || glibc)
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mallinfo2 {
    /// Bytes committed for the heaps that serve `malloc` (the main heap
    /// and every thread heap), purged free spans not counted.
    pub arena: usize,
    /// Free chunks: not counted by frostheap (0).
    pub ordblks: usize,
    /// Free fastbin blocks: glibc only (0).
    pub smblks: usize,
    /// Blocks glibc mapped on their own: frostheap has none, its large
    /// blocks are in the heaps (0).
    pub hblks: usize,
    /// Bytes of those blocks (0).
    pub hblkhd: usize,
    /// Unused by glibc too (0).
    pub usmblks: usize,
    /// Bytes in fastbin blocks: glibc only (0).
    pub fsmblks: usize,
    /// Bytes in use: the usable size of every live block of the heaps,
    /// and of glibc blocks of threads without a heap.
    pub uordblks: usize,
    /// Bytes committed and not in use (`arena - uordblks`, at least 0):
    /// free blocks, and free spans not yet purged.
    pub fordblks: usize,
    /// Bytes `malloc_trim` could give back: not computed (0).
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (the same fields as `int`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mallinfo {
    /// See [`Mallinfo2::arena`].
    pub arena: c_int,
    /// See [`Mallinfo2::ordblks`].
    pub ordblks: c_int,
    /// See [`Mallinfo2::smblks`].
    pub smblks: c_int,
    /// See [`Mallinfo2::hblks`].
    pub hblks: c_int,
    /// See [`Mallinfo2::hblkhd`].
    pub hblkhd: c_int,
    /// See [`Mallinfo2::usmblks`].
    pub usmblks: c_int,
    /// See [`Mallinfo2::fsmblks`].
    pub fsmblks: c_int,
    /// See [`Mallinfo2::uordblks`].
    pub uordblks: c_int,
    /// See [`Mallinfo2::fordblks`].
    pub fordblks: c_int,
    /// See [`Mallinfo2::keepcost`].
    pub keepcost: c_int,
}

/// `mallinfo2(3)`: the heaps' figures in glibc's fields (see
/// [`Mallinfo2`] for what each one holds here).
#[no_mangle]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = frostheap::stats();
    // Blocks of threads without a heap live in glibc, charged as external
    // bytes for their usable size (see `foreign`).
    let external = s.committed_for(Kind::External);
    let arena = s.committed_for(Kind::Main) + s.committed_for(Kind::Thread) + external;
    let uordblks = s.in_use() + external;
    Mallinfo2 {
        arena,
        uordblks,
        fordblks: arena.saturating_sub(uordblks),
        ..Mallinfo2::default()
    }
}

/// `mallinfo(3)`: [`mallinfo2`] in `int` fields. A figure past `INT_MAX`
/// reads `INT_MAX` (glibc's wraps around); `mallinfo2` has the exact one.
#[no_mangle]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let int = |n: usize| c_int::try_from(n).unwrap_or(c_int::MAX);
    Mallinfo {
        arena: int(m.arena),
        ordblks: int(m.ordblks),
        smblks: int(m.smblks),
        hblks: int(m.hblks),
        hblkhd: int(m.hblkhd),
        usmblks: int(m.usmblks),
        fsmblks: int(m.fsmblks),
        uordblks: int(m.uordblks),
        fordblks: int(m.fordblks),
        keepcost: int(m.keepcost),
    }
}

/// `__libc_mallinfo`, glibc's second name for [`mallinfo`].
#[no_mangle]
pub extern "C" fn __libc_mallinfo() -> Mallinfo {
    mallinfo()
}

/// `malloc_stats(3)`: the lines `FROSTHEAP_STATS=1` prints at exit (the
/// main heap's figures, then the process's), on standard error, now.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    crate::stats::print(2);
}

/// `malloc_info(3)`: glibc's XML report, written to `stream`, with the
/// heaps' figures: `<heap nr="0">` is the main heap, `<heap nr="1">` all
/// thread heaps together (one per thread that allocates; glibc's arenas
/// are shared by threads), each with its committed bytes as `system
/// current` and `aspace`, and its committed bytes not in live blocks as
/// the free `rest`; the totals add the blocks of threads without a heap,
/// which glibc holds (see `foreign`), and `system max` is the process's
/// peak of committed bytes, all kinds together (`FROSTHEAP_STATS`'
/// peak). Large blocks live in the heaps, so `mmap` counts none; there are
/// no fast bins and no size histogram (`<sizes>` is empty). Left to
/// glibc, the report saw glibc's arenas alone: next to nothing.
///
/// `options` other than 0 return `EINVAL`, as glibc's does (which sets no
/// `errno`; this sets it too). Returns 0, or -1 if the stream took fewer
/// bytes than written (`errno` as `fwrite` left it).
///
/// # Safety
/// 1. `stream` is a `FILE` open for writing, as for glibc's.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        // SAFETY: errno is the calling thread's.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return libc::EINVAL;
    }
    let s = frostheap::stats();
    let main = s.committed_for(Kind::Main);
    let threads = s.committed_for(Kind::Thread);
    let external = s.committed_for(Kind::External);
    let mut buf = [0u8; 2048];
    let b = Buf::new(&mut buf).str("<malloc version=\"1\">\n");
    let b = heap(b, 0, main, s.main_in_use);
    let b = heap(b, 1, threads, s.threads_in_use);
    let arena = main + threads + external;
    let b = totals(
        b,
        arena,
        s.main_in_use + s.threads_in_use + external,
        s.peak_committed.max(arena),
        true,
    );
    let out = b.str("</malloc>\n").finish();
    // SAFETY: (1); `out` is `out.len()` readable bytes.
    let written = unsafe { libc::fwrite(out.as_ptr().cast(), 1, out.len(), stream) };
    if written == out.len() {
        0
    } else {
        -1
    }
}

/// `malloc_info`'s `<heap>` element for heap `nr`.
fn heap(b: Buf<'_>, nr: u64, committed: usize, in_use: usize) -> Buf<'_> {
    let b = b.str("<heap nr=\"").dec(nr).str("\">\n<sizes>\n</sizes>\n");
    totals(b, committed, in_use, committed, false).str("</heap>\n")
}

/// The end of one of `malloc_info`'s elements: ` size="N"/>`.
fn size(b: Buf<'_>, n: usize) -> Buf<'_> {
    b.str("\" size=\"").dec(n as u64).str("\"/>\n")
}

/// `malloc_info`'s figures of one heap, or of all (`max`: the most it has
/// had committed, as far as is known; `all`: the totals, which have an
/// `mmap` line too, as glibc's).
fn totals(b: Buf<'_>, committed: usize, in_use: usize, max: usize, all: bool) -> Buf<'_> {
    let b = b.str("<total type=\"fast\" count=\"0\" size=\"0\"/>\n");
    let b = size(
        b.str("<total type=\"rest\" count=\"0"),
        committed.saturating_sub(in_use),
    );
    let b = if all {
        b.str("<total type=\"mmap\" count=\"0\" size=\"0\"/>\n")
    } else {
        b
    };
    let b = size(b.str("<system type=\"current"), committed);
    let b = size(b.str("<system type=\"max"), max);
    let b = size(b.str("<aspace type=\"total"), committed);
    size(b.str("<aspace type=\"mprotect"), committed)
}
