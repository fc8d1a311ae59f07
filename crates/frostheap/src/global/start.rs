//! The main heap's start-up: the static slot it lives in, built at the
//! process's first allocation without allocating, and the thread that
//! owns it.
//!
//! The thread that makes the first allocation — `main`, since std
//! allocates while setting up the main thread — wins the race to
//! `INITIALIZING`, reads the environment (a bad value prints one line and
//! exits with status 2 before `main` runs), reserves the heap and
//! publishes it with `READY`. The slot keeps the heap's base and length
//! beside it, so that routing a free is two compares. Without `Global`,
//! the first `Heap::build` or `Runtime::build` starts it ([`start`]), and
//! a start-up that fails there is that build's error instead.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::borrow::Cow;

use super::heaps;
use crate::config;
use crate::heap::core::{CoreConfig, ORPHAN};
use crate::heap::process;
use crate::heap::{Heap, HeapInner, InitError};
use crate::os;
use crate::region::Huge;
use crate::sync::thread_token;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
pub(super) const READY: u8 = 2;

/// The main heap's start-up state and its region, for routing. The heap
/// itself is slot 0 of the arena ([`super::heaps`]).
pub(super) struct MainSlot {
    /// Thread token of the main thread (0 before initialisation; `ORPHAN`,
    /// which no thread has, in a `fork` child whose forking thread was not
    /// the main one: see [`fork_child_adopt`]).
    pub(super) owner: AtomicUsize,
    pub(super) state: AtomicU8,
}

pub(super) static MAIN: MainSlot = MainSlot {
    state: AtomicU8::new(UNINIT),
    owner: AtomicUsize::new(0),
};

/// The main heap.
#[inline(always)]
pub(super) fn main_inner() -> &'static HeapInner {
    // SAFETY: only called after READY was observed, by the owner (which
    // built it), or for a block of the main heap (which exists only once
    // the heap does).
    unsafe { heaps::slot_heap(0) }
}

/// The main heap, if `Global` is the global allocator and has started.
pub fn main_heap() -> Option<Heap> {
    (MAIN.state.load(Ordering::Acquire) == READY).then(|| Heap::from_static(main_inner()))
}

/// Whether `FROSTHEAP_HUGE_PAGES=auto` may put the main heap on huge pages:
/// yes for Rust programs, no for the C ABI, whose programs never freeze.
/// Measured: Python under LD_PRELOAD ran 1.18× glibc's time with huge pages
/// advised (first-touch compaction and zeroing of 2 MiB pages) and 0.93×
/// without.
///
/// A Rust program's main heap starts on base pages (`Huge::Later`) and
/// switches to huge pages the first time a runtime guards it with the
/// `mprotect` backend (`trap::guard`): the whole reservation is advised
/// `MADV_HUGEPAGE` and what is committed is collapsed into huge pages then
/// (`MADV_COLLAPSE`), so every freeze, the first included, rewrites one
/// page-table entry per 2 MiB. A freeze on base pages costs ~600× more
/// (1 GiB: 106 ms against 171 µs, docs/freeze.md), which is why an earlier "first
/// 8 MiB in base pages" was reverted: every phase of a main heap past
/// 8 MiB paid ~1 ms more. Huge pages from the first byte, as before
/// (`FROSTHEAP_HUGE_PAGES=on`), cost a trivial program a 2 MiB page
/// resident (peak RSS 4.0 MB against glibc's 2.6 MB); a program that never
/// freezes with `mprotect` (no runtime, or the `pkey` backend, where a
/// freeze is a register write at any page size) never pays it now.
pub(super) static AUTO_HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Set by the C ABI's entry points ([`super::raw`]) before they start the
/// main heap: the C library registers the `fork` handlers itself, at a
/// moment of its choosing (see `frostheap-capi`), so the start-up must not
/// register them a second time.
pub(super) static C_ABI: AtomicBool = AtomicBool::new(false);

/// `fork` in a Rust program on `Global`: the forking thread takes every
/// heap's locks before the fork, so that no lock is copied into the child
/// held by a thread that does not exist there; both sides release them,
/// and the child repairs remote frees the fork cut in half and puts the
/// other threads' heaps up for adoption (as for the C ABI: see
/// [`fork_child_adopt`]).
extern "C" fn on_fork_prepare() {
    fork_prepare();
}

extern "C" fn on_fork_parent() {
    fork_release();
}

extern "C" fn on_fork_child() {
    fork_release();
    fork_child_adopt();
}

/// `pthread_atfork` prepare handler: takes every heap's locks.
pub fn fork_prepare() {
    if MAIN.state.load(Ordering::Acquire) == READY {
        heaps::lock_for_fork();
    }
}

/// `pthread_atfork` parent and child handler: releases the locks.
pub fn fork_release() {
    // SAFETY: called once per fork by the parent's and the child's
    // handlers; it releases only what this thread's prepare took (none
    // if frostheap had not started then).
    unsafe { heaps::unlock_after_fork() };
}

/// In a `fork` child: the forking thread is the child's only thread. The
/// remote frees the fork cut in half are completed in every heap, and the
/// heaps of the other threads (which do not exist in the child) are left
/// without an owner for good (`heaps::after_fork_in_child`). When the
/// forking thread was not the main thread, the main heap is among them:
/// the main thread may have been in the middle of an allocation or a free
/// on its owner path. No thread of the child is then the main one (its
/// token is `ORPHAN`): the forking thread keeps its own heap, or gets one
/// at its first allocation as any other thread does, and the main heap's
/// blocks are freed as remote frees (docs/threads.md, "`fork` while other
/// threads allocate"). Until 2026-12-05 the forking thread became the main
/// heap's owner, through that state: `fork_churn 1500 1 thread` lost 2 to
/// 4 of its children (hung, or refused an allocation far below the limit).
pub fn fork_child_adopt() {
    if MAIN.state.load(Ordering::Acquire) != READY {
        return;
    }
    let forked_by_main = on_main_thread();
    // SAFETY: in the child this is the only thread, inside the fork child
    // handler, after the locks were released.
    unsafe { heaps::after_fork_in_child(forked_by_main) };
    if !forked_by_main {
        MAIN.owner.store(ORPHAN, Ordering::Relaxed);
    }
}

/// Starts frostheap in this process, if nothing has, as the global
/// allocator's first allocation does: reads the `FROSTHEAP_*` environment
/// ([`config::from_env_once`]), sets the process limit and builds the
/// main heap; returns the configuration read. `Heap::build` and
/// `Runtime::build` call it first. Before, in a program without `Global`
/// only a runtime started it (through `unguarded`): under
/// `FROSTHEAP_MAX=256M` a heap built first committed 512 MiB and
/// `stats().limit` was `usize::MAX`, while the same heap built after a
/// runtime was refused at 256 MiB; and `FROSTHEAP_MAX=banana` was refused
/// by `Runtime::build` but not by `Heap::build`. A bad value is returned
/// here as the `Error::InvalidConfig` both give, and nothing is started
/// (`init` prints it and exits with status 2, for the first allocation,
/// which cannot return it). Under `Global` the environment was read
/// before `main`, and this returns what was read then.
///
/// So is an arena that cannot be reserved, or a main heap that cannot be
/// built in it ([`start_error`]): `init` exits there too, and did so
/// inside these builders, which return a `Result` (`FROSTHEAP_MAX=1000T`,
/// or `ulimit -v` below the arena, stopped a program without `Global` at
/// its first `Heap::build` with status 2). What was set up is undone
/// ([`undo_start`]), so the next call tries again: it returns the same
/// error while the cause lasts, and starts once the address space allows.
pub(crate) fn start() -> Result<config::EnvConfig, crate::Error> {
    let cfg = config::from_env_once()?;
    while MAIN.state.load(Ordering::Acquire) != READY {
        // Returns at once when another thread is starting it: wait for it.
        // It never waits for us; if it fails, it undoes its start and we
        // try again, to fail ourselves (the same cause) or to start.
        if let Err(failure) = start_main() {
            undo_start();
            return Err(start_error(failure));
        }
        if MAIN.state.load(Ordering::Acquire) != READY {
            std::thread::yield_now();
        }
    }
    Ok(cfg)
}

/// Why [`start_main`] did not start the main heap: what `init` prints
/// before exiting, and what `start` returns.
enum Failure {
    /// A bad `FROSTHEAP_*` value.
    Env(config::EnvError),
    /// The arena for heaps of `cfg.max` bytes could not be reserved.
    Unreserved(config::EnvConfig, os::OsError),
    /// The arena was reserved, but the main heap could not be built in it.
    Unbuilt(config::EnvConfig, InitError),
}

/// The main heap's start-up at the global allocator's first allocation
/// (or the C ABI's first call), which cannot return an error: a failure
/// prints one line and exits with status 2 ([`exit_failed`]).
#[cold]
#[inline(never)]
pub(super) fn init() {
    if let Err(failure) = start_main() {
        exit_failed(failure);
    }
}

/// Starts the main heap, unless another thread has won the race to: `Ok`
/// at once then (ready or not). On `Err` the state stays `INITIALIZING`,
/// with the process limit set and, for [`Failure::Unbuilt`], the arena
/// reserved: `init` exits, `start` undoes them ([`undo_start`]).
#[cold]
#[inline(never)]
fn start_main() -> Result<(), Failure> {
    if MAIN
        .state
        .compare_exchange(UNINIT, INITIALIZING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Ok(()); // another thread is initialising or has: we are not main
    }
    let cfg = config::from_env_once().map_err(Failure::Env)?;
    let core = CoreConfig {
        min: config::main_precommit(cfg.min, cfg.max),
        max: cfg.max,
        huge_pages: match cfg.huge_pages {
            config::HugePages::Auto
                if AUTO_HUGE_PAGES.load(Ordering::Relaxed)
                    && cfg.huge_pages.enabled_for(cfg.max) =>
            {
                Huge::Later
            }
            config::HugePages::On => Huge::On,
            _ => Huge::Off,
        },
        kind: process::Kind::Main,
    };
    process::set_limit(cfg.max);
    process::set_reclaimer(process::Reclaimer::Heaps, heaps::reclaim);
    process::set_growth_hook(heaps::release_abandoned_on_growth);
    process::set_reuse_hook(heaps::release_idle_on_reuse);
    process::set_hand_back_hook(heaps::hand_back_before_refusal);
    let base = heaps::reserve_arena(cfg.max).map_err(|e| Failure::Unreserved(cfg, e))?;
    let build = |slot: &mut MaybeUninit<HeapInner>| {
        // SAFETY: slot 0 of the fresh arena is reserved, huge-page
        // aligned and given to the main heap for good.
        let h = unsafe {
            HeapInner::init_in(slot, Cow::Borrowed("main"), base, heaps::slot_len(), core)?
        };
        h.register();
        Ok::<(), InitError>(())
    };
    // SAFETY: we won the race to INITIALIZING: nobody else writes slot
    // 0, and `build` builds the heap there whole or fails.
    unsafe { heaps::publish_main(build) }.map_err(|e| Failure::Unbuilt(cfg, e))?;
    MAIN.owner.store(thread_token(), Ordering::Relaxed);
    if cfg.track_allocs {
        crate::track::enable();
    }
    MAIN.state.store(READY, Ordering::Release);
    if !C_ABI.load(Ordering::Relaxed) {
        // glibc allocates the handler list with its own malloc, not with
        // this allocator. Refused only for want of memory, which leaves a
        // fork as unsafe as without them: nothing else depends on it.
        let _ = os::at_fork(on_fork_prepare, on_fork_parent, on_fork_child);
    }
    Ok(())
}

/// After [`start_main`] failed in `start`: the arena unmapped and the
/// process limit cleared (nothing was built: no heap, no block, nothing
/// charged), then the state back to `UNINIT`, last, so that whoever wins
/// it next starts from nothing. The reclaimer and the growth hook stay:
/// with no heap built they find nothing, and the next start sets them
/// again.
fn undo_start() {
    // SAFETY: `start_main` failed just now, with the state INITIALIZING:
    // nothing was built, and no one tries again until it is UNINIT.
    unsafe { heaps::unreserve_arena() };
    process::set_limit(usize::MAX);
    MAIN.state.store(UNINIT, Ordering::Release);
}

/// The start-up's failure as `start` returns it, in the words of the line
/// `init` prints: a `FROSTHEAP_MAX` whose arena the address space cannot
/// hold is an `InvalidConfig` naming it and the most that can be
/// reserved ([`reservable_max`]); any other refusal an `Os` error naming
/// the call and its errno, or the `OutOfMemory` of a minimum that does
/// not fit under the process limit.
fn start_error(failure: Failure) -> crate::Error {
    use crate::Error;
    match failure {
        Failure::Env(e) => e.into(),
        Failure::Unreserved(cfg, e) => match config::max_text() {
            Some(text) if cfg.max_from_env => {
                let mut buf = [0u8; 512];
                let expected =
                    reservable_max(crate::fmt_buf::Buf::new(&mut buf), cfg.max, e).finish();
                Error::InvalidConfig {
                    name: "FROSTHEAP_MAX",
                    value: String::from_utf8_lossy(text).into_owned(),
                    expected: String::from_utf8_lossy(expected).into_owned(),
                }
            }
            // The default is sized to fit (a quarter of `ulimit -v` at
            // most): the kernel refused it, for want of address space
            // the process has used up, or in a sandbox.
            _ => Error::Os {
                context: if os::address_space_limit().is_some() {
                    "starting frostheap: reserving the arena of FROSTHEAP_MAX's default (FROSTHEAP_MAX unset) under the address-space limit (ulimit -v)"
                } else {
                    "starting frostheap: reserving the arena of FROSTHEAP_MAX's default (FROSTHEAP_MAX unset)"
                },
                source: e,
            },
        },
        Failure::Unbuilt(_, InitError::Os(e)) => Error::Os {
            context: "starting frostheap: committing the main heap's minimum (FROSTHEAP_MIN)",
            source: e,
        },
        Failure::Unbuilt(_, InitError::Reserve(e)) => Error::Os {
            context: "starting frostheap: mapping the main heap's page table",
            source: e,
        },
        // The configuration keeps FROSTHEAP_MIN within FROSTHEAP_MAX, and
        // the main heap is the first thing charged: said all the same.
        Failure::Unbuilt(
            _,
            InitError::Limit {
                requested,
                limit,
                committed,
            },
        ) => Error::OutOfMemory {
            requested,
            limit,
            in_use: committed,
            committed,
            refused_by: crate::RefusedBy::ProcessLimit,
        },
    }
}

/// The start-up failed at the first allocation: one line, and status 2.
// Not #[cold]: cold code goes to .text.unlikely, which the
// linker lays in the first window of code; layout.ld moves this
// to .text.rare.
#[inline(never)]
fn exit_failed(failure: Failure) -> ! {
    match failure {
        Failure::Env(e) => {
            let mut buf = [0u8; 512];
            os::write_stderr(e.render(&mut buf));
            os::exit_now(2)
        }
        Failure::Unreserved(cfg, e) => exit_unreserved(&cfg, e),
        Failure::Unbuilt(cfg, e) => exit_unstarted(&cfg, e),
    }
}

/// The arena for heaps of `cfg.max` bytes could not be reserved: prints
/// one line and exits with status 2. A `FROSTHEAP_MAX` the user set is
/// named with its value and what this process's address space can reserve
/// instead (`FROSTHEAP_MAX=1000T` printed `mmap errno 12` alone, under
/// "cannot reserve the main heap"); the default limit, with the numbers.
/// Under `ulimit -v` the line names that limit too.
// Not #[cold]: cold code goes to .text.unlikely, which the
// linker lays in the first window of code; layout.ld moves this
// to .text.rare.
#[inline(never)]
fn exit_unreserved(cfg: &config::EnvConfig, e: os::OsError) -> ! {
    let mut buf = [0u8; 512];
    let b = crate::fmt_buf::Buf::new(&mut buf);
    let line = match config::max_text() {
        Some(text) if cfg.max_from_env => reservable_max(
            b.str("frostheap: invalid FROSTHEAP_MAX=\"")
                .bytes(text)
                .str("\" (")
                .dec(cfg.max as u64)
                .str(" bytes): expected "),
            cfg.max,
            e,
        ),
        _ => address_space_hint(
            b.str("frostheap: cannot reserve the main heap (FROSTHEAP_MAX unset: its default is ")
                .dec(cfg.max as u64)
                .str(" bytes): ")
                .str(e.call)
                .str(" errno ")
                .dec(e.errno as u64),
        ),
    };
    os::write_stderr(line.str("\n").finish());
    os::exit_now(2)
}

/// What a `FROSTHEAP_MAX` of `max` bytes whose arena was refused (`e`)
/// should be, after "expected " in both the line of [`exit_unreserved`]
/// and the error of [`start_error`], which say it in the same words: what
/// this process's address space can reserve now, and under `ulimit -v` no
/// more than the default's rule allows (the largest power of two within a
/// quarter of it: the program needs the rest), which the end names.
// Not #[cold]: cold code goes to .text.unlikely, which the
// linker lays in the first window of code; layout.ld moves this
// to .text.rare.
#[inline(never)]
fn reservable_max(
    b: crate::fmt_buf::Buf<'_>,
    max: usize,
    e: os::OsError,
) -> crate::fmt_buf::Buf<'_> {
    let quarter = os::address_space_limit().map_or(usize::MAX, |a| {
        (a / 4).checked_ilog2().map_or(0, |k| 1 << k)
    });
    let b = b.str("a size this process's address space can reserve");
    let b = match heaps::largest_reservable(max).min(quarter) {
        0 => b.str(", and it cannot reserve even 64M now"),
        largest => size_of_pow2(b.str(", at most "), largest).str(" here"),
    };
    address_space_hint(
        b.str(" (")
            .str(e.call)
            .str(" errno ")
            .dec(e.errno as u64)
            .str(")"),
    )
}

/// The arena was reserved but the main heap could not be built in it (its
/// side table, or the commit of its minimum, refused): prints one line
/// naming both sizes and the call refused, and exits with status 2.
// Not #[cold]: cold code goes to .text.unlikely, which the
// linker lays in the first window of code; layout.ld moves this
// to .text.rare.
#[inline(never)]
fn exit_unstarted(cfg: &config::EnvConfig, e: InitError) -> ! {
    let mut buf = [0u8; 512];
    let line = crate::fmt_buf::Buf::new(&mut buf)
        .str("frostheap: cannot start the main heap (FROSTHEAP_MAX=")
        .dec(cfg.max as u64)
        .str(" bytes, FROSTHEAP_MIN=")
        .dec(cfg.min as u64)
        .str(" bytes): ");
    let line = match e {
        InitError::Os(e) | InitError::Reserve(e) => {
            line.str(e.call).str(" errno ").dec(e.errno as u64)
        }
        // The configuration keeps FROSTHEAP_MIN within FROSTHEAP_MAX, and
        // the main heap is the first thing charged: said all the same.
        InitError::Limit {
            requested,
            limit,
            committed,
        } => line
            .str("its minimum, ")
            .dec(requested as u64)
            .str(" bytes, does not fit under the process limit, ")
            .dec(limit as u64)
            .str(" bytes, with ")
            .dec(committed as u64)
            .str(" committed"),
    };
    let line = address_space_hint(line).str("\n").finish();
    os::write_stderr(line);
    os::exit_now(2)
}

/// Every heap lives in one reservation at least as large as the limit:
/// under `ulimit -v` that is what fails, and the line says so.
fn address_space_hint(b: crate::fmt_buf::Buf<'_>) -> crate::fmt_buf::Buf<'_> {
    match os::address_space_limit() {
        Some(limit) => b
            .str("; the address-space limit (ulimit -v) is ")
            .dec(limit as u64)
            .str(" bytes, and FROSTHEAP_MAX should be at most a quarter of it"),
        None => b,
    }
}

/// `n`, a power of two of at least 1 KiB, as `FROSTHEAP_MAX` accepts it
/// (`64T`, `512M`).
fn size_of_pow2(b: crate::fmt_buf::Buf<'_>, n: usize) -> crate::fmt_buf::Buf<'_> {
    let (shift, unit) = match n.trailing_zeros() {
        s if s >= 40 => (40, "T"),
        s if s >= 30 => (30, "G"),
        s if s >= 20 => (20, "M"),
        s if s >= 10 => (10, "K"),
        _ => (0, ""),
    };
    b.dec((n >> shift) as u64).str(unit)
}

/// Whether the calling thread owns the main heap, starting the heap if
/// no thread has yet.
#[inline]
pub(super) fn on_main_thread() -> bool {
    let owner = MAIN.owner.load(Ordering::Relaxed);
    if owner != 0 {
        return owner == thread_token();
    }
    init();
    MAIN.owner.load(Ordering::Relaxed) == thread_token()
}
