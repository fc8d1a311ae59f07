//! `mmap`, `munmap`, `mremap`, `mprotect`, `sbrk` and `brk`: the anonymous
//! private memory a program maps itself (CPython's arenas, the JVM's and
//! V8's heaps, many runtimes' allocators) is charged against the process
//! limit, so `FROSTHEAP_MAX` caps it too.
//!
//! **What counts** is what the kernel would charge to its commit account:
//! anonymous private memory that is writable, or was made writable.
//! - An `MAP_ANONYMOUS | MAP_PRIVATE` mapping with `PROT_WRITE` and without
//!   `MAP_NORESERVE` counts from the call that makes it.
//! - One without write access, or with `MAP_NORESERVE` (a reservation, as
//!   runtimes make for a heap they commit in steps), counts nothing; the
//!   parts of it that `mprotect` later makes writable count from then (V8,
//!   .NET), and stop counting when `mprotect` makes them `PROT_NONE` again
//!   (V8 then discards their pages). Read-only or executable stays as it
//!   was: a JIT that flips its code between writable and executable keeps
//!   it counted.
//! - `MAP_FIXED` replaces whatever was mapped in its range: what counted
//!   there stops counting, and the new mapping counts as above. That is
//!   how the JVM commits (read-write `MAP_FIXED` over its reservation) and
//!   uncommits (`PROT_NONE` `MAP_FIXED`).
//! - `munmap` ends it; `mremap` moves it with each page's state, charges a
//!   growth that extends a counted page and releases the pages a shrink
//!   cuts.
//! - A private mapping of `/dev/zero` is anonymous memory to the kernel,
//!   and counts as such. Other file mappings and shared mappings are not
//!   counted (see [`is_dev_zero`] for why private writable file mappings,
//!   which the kernel's commit account charges, are not).
//! - The program break, when the program moves it itself (`sbrk`, `brk`),
//!   counts by how far its calls moved it (the break the kernel reports
//!   after each).
//!
//! Growth is charged **before** the call: a refused charge returns
//! `MAP_FAILED` (or -1 from `mprotect`) with `errno = ENOMEM`, as the
//! kernel does when it is out of memory, so CPython raises `MemoryError`
//! and the JVM reports that it cannot commit its heap. A mapping over pages
//! that already count is charged for the others alone.
//!
//! **The record** of which anonymous private ranges count and which are
//! reservations is a sorted array of disjoint ranges (neighbours of the
//! same state merged), searched by bisection, in static memory: no
//! allocation, since this runs under `malloc`. 65,536 ranges are far more
//! than runtimes make (CPython: one per 1 MiB arena, merged when
//! adjacent). Should it fill, a new mapping is still made and charged, and
//! stays charged after it is unmapped (the limit errs on the safe side);
//! a reservation that finds no room is not recorded, and what `mprotect`
//! makes writable in it is not counted.
//!
//! **One call at a time.** The record's lock is held across the system
//! call, from the look-up that decides what to charge to the record's
//! update, so the record changes in the order the kernel's mappings do. It
//! was taken for the look-up and again for the update: between a thread's
//! `munmap` (or `mremap`) and its update, another thread's `mmap` could be
//! given the same addresses and find them still counted, then the update
//! removed the new mapping's record, and a later `mremap` of that mapping,
//! half recorded, left its old half recorded for good (the stress program
//! `maprace`, with a yield in that window: 60 KiB to 1.8 MiB still counted
//! at exit after everything was unmapped). The kernel takes its own
//! `mmap_lock` for writing on each of these calls, so they did not run
//! side by side anyway.
//!
//! The calls go to the kernel with `syscall(2)`: glibc's own `mmap` would
//! be this function again. frostheap's own heaps make theirs the same way
//! (they are counted where they commit), so they never reach these.

use core::cell::UnsafeCell;
use core::ffi::{c_int, c_long, c_void};
use core::sync::atomic::{AtomicUsize, Ordering};

use frostheap::__private::raw;
use frostheap::__private::sync::{LockGuard, RawLock};

use crate::ranges::{Change, State, Table};
use crate::set_errno;

struct Shared(UnsafeCell<Table>);

// SAFETY: the table is only reached through `Guard`, which holds `LOCK`.
unsafe impl Sync for Shared {}

static TABLE: Shared = Shared(UnsafeCell::new(Table::new()));
/// The table's `len`, readable without the lock: when 0, an unmap or a
/// change of protection has nothing to look up.
static RECORDED: AtomicUsize = AtomicUsize::new(0);
static LOCK: RawLock = RawLock::new();

/// The table's lock, held across the system call it records (see the
/// module documentation): a waiter spins briefly, then yields the CPU
/// (another thread's `munmap` of a large range may take a while).
struct Guard {
    _held: LockGuard<'static>,
}

fn lock() -> Guard {
    Guard { _held: LOCK.lock() }
}

/// With `--cfg frostheap_chaos` (ci/chaos.sh), yields the CPU about one
/// time in two between a system call and the record's update, which
/// opened the window described in the module documentation wide enough
/// to fail every run of `maprace`; nothing in any other build.
#[inline(always)]
fn chaos() {
    #[cfg(frostheap_chaos)]
    {
        // SAFETY: rdtsc has no preconditions.
        let t = unsafe { core::arch::x86_64::_rdtsc() };
        if (t >> 4) & 1 == 0 {
            frostheap::__private::os::yield_now();
        }
    }
}

impl Guard {
    fn table(&mut self) -> &mut Table {
        // SAFETY: the lock is held for as long as the guard lives, and the
        // borrow is tied to the guard.
        unsafe { &mut *TABLE.0.get() }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Before the lock goes (with the field, after this).
        RECORDED.store(self.table().len(), Ordering::Relaxed);
    }
}

/// Takes the table's lock before a `fork` (the prepare handler), so that
/// the child never starts with it held by a thread it does not have.
pub(crate) fn fork_prepare() {
    LOCK.lock_raw();
}

/// Releases the lock [`fork_prepare`] took, in the parent and the child.
pub(crate) fn fork_release() {
    // SAFETY: fork_prepare took it, without a guard, on the thread that
    // forked (in the child, the only thread).
    unsafe { LOCK.unlock_raw() };
}

fn page_round(len: usize) -> usize {
    let page = crate::os_page();
    len.saturating_add(page - 1) & !(page - 1)
}

/// Brings the process's charge in line with a change of the table, when
/// `charged` bytes were charged for it beforehand. The change is what
/// counts; the two differ only when another thread changed the same range
/// meanwhile (a program that unmaps what it is mapping over), and then a
/// missing charge is taken even past the limit: the memory is mapped.
fn settle(charged: usize, change: Change) {
    let owed = change.added as isize - change.removed as isize - charged as isize;
    if owed > 0 {
        let _ = raw::charge_mapped(owed as usize);
    } else if owed < 0 {
        raw::release_mapped(owed.unsigned_abs());
    }
}

/// Starts the library if nothing has yet: the limit is set when it starts,
/// at the process's first allocation, and a program whose first call is
/// one of these starts it here, before the record's lock is taken (the
/// main heap's start maps nothing through here, and a nested call during
/// it does not wait for it).
fn started() {
    let _ = raw::on_main_thread();
}

/// Charges `bytes`, under the record's lock, before a call that makes
/// them count; false (and
/// `ENOMEM` set, the first refusal reported) if the limit refuses.
fn charge(bytes: usize) -> bool {
    if bytes == 0 {
        return true;
    }
    if raw::charge_mapped(bytes) {
        return true;
    }
    crate::stats::report_first_refusal(bytes, None);
    set_errno(libc::ENOMEM);
    false
}

/// The state a new mapping made with these arguments is recorded in;
/// `None` if it is not anonymous private memory: `MAP_ANONYMOUS`, or a
/// private mapping of `/dev/zero` ([`is_dev_zero`]).
fn state_of(prot: c_int, flags: c_int, fd: c_int) -> Option<State> {
    // MAP_SHARED_VALIDATE (3) has MAP_PRIVATE's bit (2): the type is the
    // low bits as a whole.
    if flags & libc::MAP_TYPE != libc::MAP_PRIVATE
        || (flags & libc::MAP_ANONYMOUS == 0 && !is_dev_zero(fd))
    {
        None
    } else if prot & libc::PROT_WRITE != 0 && flags & libc::MAP_NORESERVE == 0 {
        Some(State::Counted)
    } else {
        Some(State::Reserved)
    }
}

/// Whether `fd` is `/dev/zero` (the character device 1:5), by `fstat`
/// (the raw system call: nothing interposed, never a cancellation point).
/// The kernel makes a private mapping of it anonymous memory, the same as
/// `MAP_ANONYMOUS` (`mmap_zero`, drivers/char/mem.c), which programs
/// older than `MAP_ANONYMOUS` use; left uncounted, 256 MiB of it were
/// written under a 64 MiB limit. Costs one system call per private file
/// mapping, beside the `mmap` itself.
///
/// Private writable mappings of other files are not counted, though the
/// kernel's commit account charges them: their pages are the file's page
/// cache until the program writes one, and a program maps a file privately
/// to read it with the freedom to patch a few pages (a large data file,
/// mapped whole, would be refused under a limit it never comes near). The
/// dynamic loader maps every library's writable data that way, with its
/// own system calls (they never reach this function, so the program's
/// start-up is untouched either way), and those count nowhere here too.
///
/// Out of line and cold (laid with the rare code, layout.ld): anonymous
/// mappings, which most `mmap` calls make, never reach it.
#[cold]
#[inline(never)]
fn is_dev_zero(fd: c_int) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: all zeroes is a valid stat buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: st is writable for a struct stat; a bad fd fails with EBADF.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 5)
}

/// `mmap(2)`, charged when it makes anonymous private writable memory.
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
    let state = if len > 0 {
        state_of(prot, flags, fd)
    } else {
        None
    };
    // MAP_FIXED replaces the range (MAP_FIXED_NOREPLACE fails instead).
    let replaces = flags & libc::MAP_FIXED != 0 && len > 0;
    let call = || {
        // SAFETY: the caller's mmap arguments, passed to the kernel unchanged.
        unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) }
    };
    if state.is_none() && !(replaces && RECORDED.load(Ordering::Relaxed) != 0) {
        // Neither recorded nor replacing anything recorded.
        return call() as *mut c_void;
    }
    let bytes = page_round(len);
    started();
    let mut g = lock();
    let mut charged = 0;
    if state == Some(State::Counted) {
        let already = if replaces {
            let start = addr as usize;
            g.table()
                .bytes(start, start.saturating_add(bytes), State::Counted)
        } else {
            0
        };
        charged = bytes - already;
        if !charge(charged) {
            return libc::MAP_FAILED;
        }
    }
    let p = call();
    if p == -1 {
        drop(g);
        raw::release_mapped(charged);
        return libc::MAP_FAILED;
    }
    chaos();
    let start = p as usize;
    // With no room for it, the mapping stays charged for good.
    let change = g.table().assign(start, start + bytes, state);
    drop(g);
    if let Some(change) = change {
        settle(charged, change);
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
    let call = || {
        // SAFETY: the caller's arguments, passed to the kernel unchanged.
        unsafe { libc::syscall(libc::SYS_munmap, addr, len) as c_int }
    };
    if RECORDED.load(Ordering::Relaxed) == 0 {
        // Nothing recorded: nothing this call could unmap is (a range
        // recorded since was mapped by a call this one cannot overlap).
        return call();
    }
    let mut g = lock();
    let r = call();
    if r != 0 {
        return r;
    }
    chaos();
    let start = addr as usize;
    let end = start.saturating_add(page_round(len));
    // An unmap in the middle of a range splits it: with no room for the
    // piece, the range stays recorded (and charged).
    let change = g.table().assign(start, end, None);
    drop(g);
    if let Some(change) = change {
        settle(0, change);
    }
    r
}

/// `mremap(2)`. A mapping moves with the state of each of its pages (a
/// part made `PROT_NONE` stays uncounted, a shrink releases the pages it
/// cuts); a growth takes the state of the mapping's last page, charged
/// first when that counts (`MAP_FAILED`, `ENOMEM` past the limit).
/// `MREMAP_DONTUNMAP` leaves the old range as it was, still counted: the
/// new one counts as the old did, charged first.
///
/// With a table too full to record the pieces ([`Table::has_room_to_move`]),
/// the mapping moves whole, as counted if any of it counted, charged for
/// what did not, so that no record stays behind at its old address (the
/// limit errs on the safe side). Before each page kept its state, every
/// move did that: a 40 MiB mapping with 39 MiB made `PROT_NONE`, shrunk
/// to those 39 MiB, counted 39 MiB instead of nothing.
///
/// Declared with its fifth argument (`new_address`, variadic in C): on
/// x86_64 a variadic integer argument travels in the same register as a
/// fixed one.
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
    let call = || {
        // SAFETY: the caller's arguments, passed to the kernel unchanged.
        unsafe {
            libc::syscall(
                libc::SYS_mremap,
                old,
                old_len,
                new_len,
                flags as c_long,
                new_address,
            )
        }
    };
    let (old_b, new_b) = (page_round(old_len), page_round(new_len));
    if RECORDED.load(Ordering::Relaxed) == 0 {
        // Nothing recorded, so nothing to move or replace.
        return call() as *mut c_void;
    }
    let old_start = old as usize;
    let old_end = old_start.saturating_add(old_b);
    started();
    let mut g = lock();
    let t = g.table();
    let keeps_old = flags & libc::MREMAP_DONTUNMAP != 0;
    let exact = t.has_room_to_move(old_start, old_b, new_b);
    // The whole-mapping state of the fallback.
    let counted = t.bytes(old_start, old_end, State::Counted);
    let state = if counted > 0 {
        Some(State::Counted)
    } else if t.bytes(old_start, old_end, State::Reserved) > 0 {
        Some(State::Reserved)
    } else {
        None
    };
    let charged = if exact {
        let copied = if keeps_old {
            t.bytes(old_start, old_start + old_b.min(new_b), State::Counted)
        } else {
            0
        };
        let grows_counted =
            new_b > old_b && old_b > 0 && t.state_at(old_end - 1) == Some(State::Counted);
        copied + if grows_counted { new_b - old_b } else { 0 }
    } else {
        match state {
            Some(State::Counted) if keeps_old => new_b,
            Some(State::Counted) => new_b.saturating_sub(counted),
            _ => 0,
        }
    };
    if !charge(charged) {
        return libc::MAP_FAILED;
    }
    let p = call();
    if p == -1 {
        drop(g);
        raw::release_mapped(charged);
        return libc::MAP_FAILED;
    }
    chaos();
    let t = g.table();
    let new_start = p as usize;
    let change = if exact {
        t.moved(old_start, old_b, new_start, new_b, keeps_old)
    } else {
        let mut change = Change::default();
        if state.is_some() && !keeps_old {
            if let Some(c) = t.assign(old_start, old_end, None) {
                change.removed += c.removed;
            }
        }
        if state.is_some() || flags & libc::MREMAP_FIXED != 0 {
            if let Some(c) = t.assign(new_start, new_start + new_b, state) {
                change.removed += c.removed;
                change.added += c.added;
            }
        }
        change
    };
    drop(g);
    settle(charged, change);
    p as *mut c_void
}

/// `mprotect(2)`: the reserved anonymous private pages it makes writable
/// are charged first (-1 with `ENOMEM` past the limit), and the counted
/// ones it makes `PROT_NONE` are released.
///
/// # Safety
/// Callable from C at any time, with `mprotect`'s contract.
#[no_mangle]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    let call = || {
        // SAFETY: the caller's arguments, passed to the kernel unchanged.
        unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot) as c_int }
    };
    let writable = prot & libc::PROT_WRITE != 0;
    if RECORDED.load(Ordering::Relaxed) == 0 || len == 0 || !(writable || prot == libc::PROT_NONE) {
        return call();
    }
    let start = addr as usize;
    let end = start.saturating_add(page_round(len));
    started();
    let mut g = lock();
    let charged = if writable {
        g.table().bytes(start, end, State::Reserved)
    } else {
        0
    };
    if !charge(charged) {
        return -1;
    }
    let r = call();
    if r != 0 {
        partly_protected(g, start, end, writable, charged);
        return r;
    }
    chaos();
    let change = if writable {
        g.table()
            .convert(start, end, State::Reserved, State::Counted)
    } else {
        g.table()
            .convert(start, end, State::Counted, State::Reserved)
    };
    drop(g);
    settle(charged, change);
    0
}

/// After a failed `mprotect` of `[start, end)` (under the record's lock,
/// `g`, with `charged` bytes charged for it): records what the kernel
/// changed all the same, and settles the charge. Linux applies a change
/// of protection to the range's mappings one by one, in address order,
/// and stops with `ENOMEM` at the first hole: the mappings before the
/// hole keep their new protection (a range that starts in a hole changes
/// nothing). The record took the failure for no change: the pages before
/// a hole that the call made writable were uncounted for good, and those
/// it made `PROT_NONE` counted until unmapped. The hole is found by
/// bisection with `msync(MS_ASYNC)` (a system call that walks the same
/// mappings, changes nothing and fails with `ENOMEM` on a range with a
/// hole: about 20 calls for a 4 GiB range), never by reading
/// `/proc/self/maps`, which allocates nothing here but is neither
/// async-signal-safe in its parsing nor cheap. A failure without a hole
/// (`EACCES` on a shared file mapping, a refusal of the kernel's own
/// commit account) leaves the record as it was: where the kernel stopped
/// then is not known.
///
/// Out of line, laid with the rare code (layout.ld); keeps `errno`.
#[inline(never)]
fn partly_protected(mut g: Guard, start: usize, end: usize, writable: bool, charged: usize) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let hole = if errno == libc::ENOMEM {
        first_hole(start, end)
    } else {
        None
    };
    let change = match hole {
        Some(hole) if hole > start => {
            chaos();
            if writable {
                g.table()
                    .convert(start, hole, State::Reserved, State::Counted)
            } else {
                g.table()
                    .convert(start, hole, State::Counted, State::Reserved)
            }
        }
        _ => Change::default(),
    };
    drop(g);
    settle(charged, change);
    set_errno(errno);
}

/// The first page of `[start, end)` (page-aligned) that no mapping
/// holds, by bisection with `msync(MS_ASYNC)`, which fails on a range
/// with a hole and changes nothing (the raw system call: never a
/// cancellation point); `None` when the whole range is mapped.
fn first_hole(start: usize, end: usize) -> Option<usize> {
    let page = crate::os_page();
    let mapped = |to: usize| {
        // SAFETY: MS_ASYNC on a page-aligned range only walks its
        // mappings (since Linux 2.6.19 it starts no write-back).
        unsafe { libc::syscall(libc::SYS_msync, start, to - start, libc::MS_ASYNC) == 0 }
    };
    if !start.is_multiple_of(page) || end <= start || mapped(end) {
        return None;
    }
    // [start, lo) is mapped; [start, hi) is not.
    let (mut lo, mut hi) = (start, end);
    while hi - lo > page {
        let mid = lo + (((hi - lo) / 2) & !(page - 1));
        if mapped(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

// ---------------------------------------------------------------------------
// The program break.

extern "C" {
    /// glibc's `sbrk` under its own name: the library's `sbrk` is this
    /// one, charged.
    fn __sbrk(increment: libc::intptr_t) -> *mut c_void;
}

/// Bytes the program's own `sbrk`/`brk` calls have charged and not given
/// back. glibc's own moves of the break (its main arena, which serves only
/// threads without a heap) do not come through here, and their blocks are
/// charged one by one (see `foreign`).
static BREAK_CHARGED: AtomicUsize = AtomicUsize::new(0);

/// `sbrk(2)`: a program that grows its break itself (an allocator of its
/// own) is charged for the growth first (`(void *)-1` with `ENOMEM` past
/// the limit), and a shrink gives back what its growths were charged.
///
/// # Safety
/// Callable from C at any time, with `sbrk`'s contract.
#[no_mangle]
pub unsafe extern "C" fn sbrk(increment: libc::intptr_t) -> *mut c_void {
    let grow = usize::try_from(increment).unwrap_or(0);
    started();
    if !charge(grow) {
        return usize::MAX as *mut c_void;
    }
    // SAFETY: the caller's argument, to glibc's sbrk.
    let old = unsafe { __sbrk(increment) };
    if old as usize == usize::MAX {
        raw::release_mapped(grow);
        return old;
    }
    if increment == 0 {
        return old;
    }
    // What the kernel did, not what the call asked for: it ignores a break
    // below the break's start while glibc's `__brk` reports success
    // (`brk(0)`: 0, the break where it was, and the charge for it was
    // released, so 60 MiB more were granted under a 64 MiB limit). Bounded
    // by the request, so that a move of glibc's own (its main arena, for
    // threads without a heap) between the call and this read is not taken
    // for the program's.
    let (before, now) = (old as usize, current_break());
    if grow > 0 {
        let grown = now.saturating_sub(before).min(grow);
        if grown < grow {
            raw::release_mapped(grow - grown);
        }
        BREAK_CHARGED.fetch_add(grown, Ordering::Relaxed);
    } else {
        let shrink = before.saturating_sub(now).min(increment.unsigned_abs());
        let mut held = BREAK_CHARGED.load(Ordering::Relaxed);
        loop {
            let give = held.min(shrink);
            match BREAK_CHARGED.compare_exchange_weak(
                held,
                held - give,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    raw::release_mapped(give);
                    break;
                }
                Err(h) => held = h,
            }
        }
    }
    old
}

/// The program break where the kernel has it now: `brk(2)` with 0, an
/// address below the break's start, which the kernel ignores and answers
/// with the break (the raw system call: glibc's `brk` would be ours).
fn current_break() -> usize {
    // SAFETY: brk(0) moves nothing; it returns the current break.
    unsafe { libc::syscall(libc::SYS_brk, 0usize) as usize }
}

/// `brk(2)`: [`sbrk`] by the difference from the current break; 0, or -1
/// with `errno` set (`ENOMEM` past the limit). Charged by how far the
/// break moved: `brk(0)`, which glibc answers with 0 and the kernel
/// ignores, gives nothing back.
///
/// # Safety
/// Callable from C at any time, with `brk`'s contract.
#[no_mangle]
pub unsafe extern "C" fn brk(addr: *mut c_void) -> c_int {
    // SAFETY: sbrk(0) only reads the break.
    let current = unsafe { __sbrk(0) } as usize;
    if current == usize::MAX {
        return -1;
    }
    let delta = (addr as usize).wrapping_sub(current) as libc::intptr_t;
    // SAFETY: forwarded.
    if unsafe { sbrk(delta) } as usize == usize::MAX {
        -1
    } else {
        0
    }
}
