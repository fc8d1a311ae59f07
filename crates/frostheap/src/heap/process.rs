//! The process-wide limit (`FROSTHEAP_MAX`, `frostheap run --max-memory`)
//! and the commit counters behind [`crate::stats`].
//!
//! Memory is counted where it is committed — a heap's span allocator
//! taking pages into a span (a small span as its blocks are carved, in
//! steps of 4 to 32 KiB; see [`super::span`]), a context
//! heap taking a chunk, the C ABI's anonymous `mmap` — and released where
//! it is decommitted (or a free span purged), never per allocation: the
//! fast paths carry no shared atomic. A charge that would
//! take the sum past the limit fails and charges nothing; the allocation
//! that needed it returns null (`OutOfMemory`, `ENOMEM`) whichever thread
//! asked. The limit is `usize::MAX` until frostheap starts in the process
//! and reads the environment, once (`global::start`): the global
//! allocator (or the C ABI) at its first allocation, or, in a program
//! without it, the first `Heap::build` or `Runtime::build`.
//!
//! The counters are plain atomics updated with one compare-and-swap per
//! span a heap takes, or per step a small span's carving reaches (five in
//! a 64 KiB span, on the slow path that writes the new blocks' free list,
//! about to fault their pages in), so contention is that of the page
//! faults and kernel calls that follow them.
//!
//! **Reclaiming.** Heaps keep free memory committed for reuse (see
//! [`super::span`]), which with many threads could hold the process at its
//! limit while little is in use. A heap whose charge does not fit first
//! gives back its own free memory, then asks the *reclaimer* — registered
//! by the global allocator, which knows every thread's heap — to give back
//! the free memory of the other heaps whose span locks are free (free tops
//! decommitted, free spans below them purged and uncharged), and the
//! context heaps' reclaimer to purge the free chunks each worker keeps for
//! reuse, then tries once more.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// What a charge is for (the per-kind lines of [`crate::ProcessStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The main heap (the main thread's heap in global mode).
    Main = 0,
    /// The heaps of other threads in global mode and under the C ABI.
    Thread = 1,
    /// Runtime workers' context heaps.
    Context = 2,
    /// Heaps built with [`crate::Heap::builder`].
    Explicit = 3,
    /// Anonymous private mappings a program under the C ABI made itself
    /// with `mmap` (CPython's arenas).
    Mapped = 4,
    /// Memory outside the heaps: bytes charged with
    /// [`crate::Heap::charge_external`], what `Global` takes from the
    /// system allocator (inside [`crate::unguarded`], for [`crate::Shared`]
    /// values, for a thread without a heap) and, under the C ABI, the glibc
    /// blocks of threads without a heap.
    External = 5,
}

/// Number of [`Kind`]s.
pub const N_KINDS: usize = 6;

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; N_KINDS] = [
        Kind::Main,
        Kind::Thread,
        Kind::Context,
        Kind::Explicit,
        Kind::Mapped,
        Kind::External,
    ];

    /// The kind's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Thread => "thread",
            Kind::Context => "context",
            Kind::Explicit => "explicit",
            Kind::Mapped => "mapped",
            Kind::External => "external",
        }
    }
}

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Sum of `BY_KIND`: what the limit is compared with.
static COMMITTED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static BY_KIND: [AtomicUsize; N_KINDS] = [const { AtomicUsize::new(0) }; N_KINDS];

/// Sets the process limit (start-up, before any charge that should be
/// bounded by it).
pub(crate) fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The process limit in bytes (`usize::MAX`: none).
pub fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Charges `bytes` about to be committed for `kind`, the heaps' free
/// memory given back first if the limit refuses them (the reclaimer, as
/// before a heap's own charge is refused); false (nothing charged, one
/// refusal counted) when that would still take the process past its
/// limit. For the charges that come from outside a heap's span allocator:
/// a mapping of the C ABI, system memory of `Global`, glibc's blocks of
/// threads without a heap, `Heap::charge_external`, a heap's minimum.
/// (Until 2026-12-07 it never reclaimed, and a mapping was refused while
/// the heaps kept freed memory committed: `tests/c/map_room.c`.)
pub fn charge(kind: Kind, bytes: usize) -> bool {
    charge_quiet(kind, bytes) || reclaim_and_charge(kind, bytes) || {
        count_refusal();
        false
    }
}

/// [`charge`] for a caller with more to try when it is refused (a heap
/// gives back free memory and charges again): counts no refusal; the
/// caller counts one ([`count_refusal`]) if everything it tries fails, so
/// that [`counters`]' refusals are commits refused, not attempts.
pub(crate) fn charge_quiet(kind: Kind, bytes: usize) -> bool {
    let limit = LIMIT.load(Ordering::Relaxed);
    let mut cur = COMMITTED.load(Ordering::Relaxed);
    loop {
        let next = match cur.checked_add(bytes) {
            Some(n) if n <= limit => n,
            _ => return false,
        };
        match COMMITTED.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                BY_KIND[kind as usize].fetch_add(bytes, Ordering::Relaxed);
                PEAK.fetch_max(next, Ordering::Relaxed);
                if next >= GROWTH_MARK.load(Ordering::Relaxed) {
                    grown(kind, next);
                }
                return true;
            }
            Err(c) => cur = c,
        }
    }
}

/// The growth hook ([`set_growth_hook`]): gives back what the heaps of
/// exited threads hold free — with `true`, but for what they keep for
/// their next threads — and returns the bytes released. Stored as a `fn`
/// address (0: none).
static GROWTH_HOOK: AtomicUsize = AtomicUsize::new(0);
/// The committed level at which the next charge for a heap or a mapping
/// runs the growth hook (`usize::MAX`: no hook).
static GROWTH_MARK: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The least step of [`growth_step`].
const MIN_GROWTH_STEP: usize = 4 << 20;

/// How far the process grows between two runs of the growth hook: a 32nd
/// of what it has committed, 4 MiB at least. A run that finds nothing to
/// give back looks at each abandoned heap's class queues, where committing
/// 4 MiB faults in 1,024 pages; with a quarter, a CPython program holding
/// 150 MB grew by 22 MB without a run.
fn growth_step(committed: usize) -> usize {
    (committed / 32).max(MIN_GROWTH_STEP)
}

/// Registers the growth hook (the global allocator, at start-up).
///
/// A thread that exits leaves its heap, with the blocks still live in it,
/// for the next thread to adopt; the blocks other threads free into it
/// afterwards (the results a worker made, dropped by the main thread) are
/// remote frees that only an adopter, a trim or the limit's reclaimer
/// collected. A CPython program whose 64 threads had been joined kept 50–60
/// MB resident in their heaps where glibc kept 21. So the process does
/// not grow by much before those heaps give back what they hold free: each
/// time a charge for a heap (main, thread or explicit) or a mapping (the C
/// ABI's `mmap`: CPython's small objects live in mapped arenas) takes the
/// process a step ([`growth_step`]) past where it last looked, or past the
/// lowest it has been since, the hook runs, on the thread charging,
/// skipping every lock it finds busy. CPython's 64 threads, joined, their
/// results dropped, and the main thread growing by some 50 MB: 186–194 MB
/// resident at the end, now 89 (glibc 100–121). The hook also runs once
/// the process grows by as much as those heaps keep for their next
/// threads ([`kept_for_adoption`]), and, leaving that, from the frees that
/// bring their spans back ([`brought_back_while_abandoned`]). As the
/// process grows, it also gives back the free memory of live heaps whose
/// threads wait (no allocation for 10 ms), with the spans other threads
/// freed whole in them, which such a thread does not collect.
pub(crate) fn set_growth_hook(f: fn(bool) -> usize) {
    GROWTH_HOOK.store(f as usize, Ordering::Release);
    let committed = COMMITTED.load(Ordering::Relaxed);
    GROWTH_MARK.store(committed + growth_step(committed), Ordering::Relaxed);
}

/// A charge took the process to `committed`, past the growth mark: the
/// thread that moves the mark runs the hook, then sets the mark a step
/// above what is committed after it.
#[cold]
#[inline(never)]
fn grown(kind: Kind, committed: usize) {
    if !matches!(
        kind,
        Kind::Main | Kind::Thread | Kind::Explicit | Kind::Mapped
    ) {
        return;
    }
    let mark = GROWTH_MARK.load(Ordering::Relaxed);
    if committed < mark
        || GROWTH_MARK
            .compare_exchange(
                mark,
                committed + growth_step(committed),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return; // another thread runs it
    }
    if run_growth_hook(false) > 0 {
        let now = COMMITTED.load(Ordering::Relaxed);
        GROWTH_MARK.store(now + growth_step(now), Ordering::Relaxed);
    }
}

/// Spans of abandoned heaps that remote frees brought back, and 64 KiB
/// pages of large blocks freed into them ([`brought_back_while_abandoned`]).
static BROUGHT_BACK: AtomicUsize = AtomicUsize::new(0);
/// How many of them between two runs of the growth hook: 4 MiB of 64 KiB
/// spans.
const BROUGHT_BACK_STEP: usize = 64;

/// A remote free brought a full span of an abandoned heap back (its first
/// free block: the heap's thread exited with the span full, and another
/// thread frees its blocks). Every [`BROUGHT_BACK_STEP`] of those, the
/// freeing thread runs the growth hook, which has the abandoned heaps
/// collect what was freed into them and give back what they hold free,
/// but for what they keep for their next threads (`hook(true)`: the
/// frees of a consumer thread into the heaps of exited producers had
/// them purge it, and threads replaced in turn ran 20% slower):
/// a program that drops the results its threads left and does not grow
/// kept them resident until it trimmed (CPython, 64 threads' results
/// dropped: 141–148 MB resident, glibc 60–72).
///
/// `spans`: 1 for a small span, the 64 KiB pages of a large block freed
/// into such a heap. Called holding no heap lock: the hook skips every
/// lock it finds busy.
#[cold]
#[inline(never)]
pub(crate) fn brought_back_while_abandoned(spans: usize) {
    let before = BROUGHT_BACK.fetch_add(spans, Ordering::Relaxed);
    if before / BROUGHT_BACK_STEP == (before + spans) / BROUGHT_BACK_STEP {
        return;
    }
    run_growth_hook(true);
}

/// The reuse hook ([`set_reuse_hook`]), as a `fn` address (0: none).
static REUSE_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Registers the reuse hook (the global allocator, at start-up).
pub(crate) fn set_reuse_hook(f: fn()) {
    REUSE_HOOK.store(f as usize, Ordering::Release);
}

/// A heap took 4 MiB of the free memory it kept back into use (the span
/// allocator's `take` of dirty pages): the growth hook's look at the live
/// heaps, without growth. The hook gives back the free memory of heaps
/// whose threads have made no allocation for 10 ms since a look, and looked
/// only as the process grew; two threads that take turns (a pool's worker
/// makes 40 MiB of results and waits, the main thread drops them and makes
/// 40 MiB of its own) could each make their next 40 MiB from memory their
/// heap kept, the worker's from its results freed whole, so nothing grew,
/// no look came, and both heaps kept 40 MiB for good (84 MB where glibc
/// holds 42; 30 of 30 runs of `idle_owner` pinned to one CPU, twice in
/// CI; none of 30 with this look, whose round still peaks at 85 MB
/// resident: it finds the worker idle only once it has waited 10 ms).
/// Only the waiting heaps' part runs here: what the heaps of exited
/// threads keep for the next ones stays (the growth hook gives it back as
/// the process grows). Runs on the thread that took the memory, holding
/// its heap's span lock: the growth hook's conditions.
#[cold]
#[inline(never)]
pub(crate) fn reused() {
    let f = REUSE_HOOK.load(Ordering::Acquire);
    if f == 0 {
        return;
    }
    // SAFETY: REUSE_HOOK holds 0 or the address of a `fn()` stored by
    // set_reuse_hook.
    let hook: fn() = unsafe { core::mem::transmute::<usize, fn()>(f) };
    hook();
}

/// The hand-back hook ([`set_hand_back_hook`]): gives the other heaps'
/// blocks the calling thread holds (its remote cache and batch) back to
/// them, and says whether it held any. Stored as a `fn` address (0: none).
static HAND_BACK_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Registers the hand-back hook (the global allocator, at start-up).
pub(crate) fn set_hand_back_hook(f: fn() -> bool) {
    HAND_BACK_HOOK.store(f as usize, Ordering::Release);
}

/// Before an owner's allocation is refused (`HeapCore::give_back_held`):
/// the other heaps' blocks the calling thread holds go back to them, so
/// that the spans they leave empty can be retired for this charge (the
/// reclaimer retires them when the charge is tried again). A thread that
/// freed every block of 32 exited threads kept them in its remote cache,
/// and their heaps held 8–11 MiB with nothing in use while its requests
/// were refused at 41–45 MiB under a 64 MiB limit, where a `trim`, which
/// hands them back first, made room for 53 (a user's trial, 2026-12-07).
/// Returns whether anything was handed back.
#[cold]
#[inline(never)]
pub(crate) fn hand_back_held() -> bool {
    let f = HAND_BACK_HOOK.load(Ordering::Acquire);
    if f == 0 {
        return false;
    }
    // SAFETY: HAND_BACK_HOOK holds 0 or the address of a `fn() -> bool`
    // stored by set_hand_back_hook.
    let hook: fn() -> bool = unsafe { core::mem::transmute::<usize, fn() -> bool>(f) };
    hook()
}

/// Runs the growth hook, if one is registered, with `keep_warm`; returns
/// the bytes it released (0 with none).
fn run_growth_hook(keep_warm: bool) -> usize {
    let f = GROWTH_HOOK.load(Ordering::Acquire);
    if f == 0 {
        return 0;
    }
    // SAFETY: GROWTH_HOOK holds 0 or the address of a `fn(bool) -> usize`
    // stored by set_growth_hook.
    let hook: fn(bool) -> usize = unsafe { core::mem::transmute::<usize, fn(bool) -> usize>(f) };
    hook(keep_warm)
}

/// A thread adopted an abandoned heap: the count of spans brought back
/// into abandoned heaps starts again, since threads that start will take
/// what those heaps hold. A consumer thread's frees into the heaps of
/// producers replaced in turn had the hook run every 64 spans, purge what
/// the next producers were about to reuse, and the producers ran 25%
/// slower.
pub(crate) fn adopted() {
    if BROUGHT_BACK.load(Ordering::Relaxed) != 0 {
        BROUGHT_BACK.store(0, Ordering::Relaxed);
    }
}

/// The heaps of exited threads keep `bytes` resident in all for the
/// threads that adopt them: the growth hook runs once the process grows by
/// as much from here, since what it grows by then is not served by what
/// they keep (a new main-thread working set, made while the last round's
/// worker heaps wait for the next round).
pub(crate) fn kept_for_adoption(bytes: usize) {
    if GROWTH_MARK.load(Ordering::Relaxed) == usize::MAX {
        return;
    }
    let now = COMMITTED.load(Ordering::Relaxed);
    GROWTH_MARK.fetch_min(now + bytes.max(1), Ordering::Relaxed);
    KEPT_AT.store(
        super::span::decay_clock(crate::os::monotonic_ns()),
        Ordering::Relaxed,
    );
}

/// When the heaps of exited threads last kept free memory for the next
/// threads (`span::decay_clock`; 0: nothing kept since the last give-back
/// [`unadopted_check`] ran).
static KEPT_AT: AtomicU32 = AtomicU32::new(0);

/// What the heaps of exited threads keep for the next threads decays as a
/// heap's free memory does (`span::DECAY_NS`): a heap's span freed or
/// taken a second or more after the last thread exited keeping some runs
/// the growth hook (`hook(false)`), which gives all of it back. A pool
/// whose threads exited kept up to 32 MiB (an eighth of what is
/// committed, if more) resident until a thread adopted a heap or the
/// process grew: for good, in a program that goes on with its main
/// thread alone. Threads that keep starting and exiting (the `threads`
/// benchmark's `spawn-large`) keep it, each exit moving the time on.
/// Called holding a span lock, as the reuse hook is (the growth hook skips
/// every lock it finds busy); one relaxed load while nothing is kept.
#[inline]
pub(crate) fn unadopted_check() {
    let at = KEPT_AT.load(Ordering::Relaxed);
    if at != 0 {
        unadopted_decay(at);
    }
}

/// [`unadopted_check`] with something kept since `at` (laid with the rare
/// code: layout.ld).
#[cold]
#[inline(never)]
fn unadopted_decay(at: u32) {
    let now = super::span::decay_clock(crate::os::monotonic_ns());
    if !super::span::decay_window_ended(at, now) {
        return;
    }
    if KEPT_AT
        .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        run_growth_hook(false);
    }
}

/// Charges `bytes` for `kind` whatever the limit: the rest of the last OS
/// page a retired small span carved into, which its free span counts
/// whole (`span::Locked::free_small`), when the limit refuses it and the
/// kernel refuses to purge that page: less than a span page, on a free,
/// which is never refused; released when that free span is purged or
/// decommitted; and the pages a large block moving by its growth could
/// not purge once copied (`span::Locked::move_run`, `move_in`).
pub(crate) fn charge_over(kind: Kind, bytes: usize) {
    let next = COMMITTED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    BY_KIND[kind as usize].fetch_add(bytes, Ordering::Relaxed);
    PEAK.fetch_max(next, Ordering::Relaxed);
}

/// Moves `bytes` already charged for `from` to `to`'s count, the process's
/// total unchanged: the pages of a large block that changed heap
/// (`span::Locked::move_in`), charged as the old heap's kind and now held
/// by the new heap's.
pub(crate) fn transfer(from: Kind, to: Kind, bytes: usize) {
    if from != to && bytes > 0 {
        BY_KIND[from as usize].fetch_sub(bytes, Ordering::Relaxed);
        BY_KIND[to as usize].fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Counts a commit the process limit refused, after every way around it
/// failed (see [`charge_quiet`]).
pub(crate) fn count_refusal() {
    REFUSED.fetch_add(1, Ordering::Relaxed);
}

/// Who registers a reclaimer: a function that gives back free committed
/// memory of heaps other than the caller's and returns the bytes
/// released.
#[derive(Clone, Copy)]
pub(crate) enum Reclaimer {
    /// The global allocator, which knows every thread's heap (at
    /// start-up).
    Heaps = 0,
    /// The context heaps, whose free chunks kept for reuse go back (with
    /// the context space, as the first runtime starts).
    Context = 1,
}

/// The reclaimers, as `fn` addresses (0: none), by [`Reclaimer`].
static RECLAIMERS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Registers a reclaimer.
pub(crate) fn set_reclaimer(who: Reclaimer, f: fn() -> usize) {
    RECLAIMERS[who as usize].store(f as usize, Ordering::Release);
}

/// Runs every reclaimer registered; returns the bytes they released.
pub(crate) fn reclaim() -> usize {
    RECLAIMERS
        .iter()
        .map(|r| match r.load(Ordering::Acquire) {
            0 => 0,
            f => {
                // SAFETY: a reclaimer slot holds 0 or the address of a
                // `fn() -> usize` stored by set_reclaimer.
                let reclaim = unsafe { core::mem::transmute::<usize, fn() -> usize>(f) };
                reclaim()
            }
        })
        .sum()
}

/// After a refused [`charge_quiet`]: reclaims free memory from other heaps
/// and charges once more; false (nothing charged, no refusal counted) when
/// there is no reclaimer, they gave nothing back, or the charge is refused
/// again.
pub(crate) fn reclaim_and_charge(kind: Kind, bytes: usize) -> bool {
    reclaim() > 0 && charge_quiet(kind, bytes)
}

/// Releases `bytes` charged for `kind` (decommitted, purged, unmapped).
pub fn release(kind: Kind, bytes: usize) {
    let prev = BY_KIND[kind as usize].fetch_sub(bytes, Ordering::Relaxed);
    crate::sync::invariant!(
        prev >= bytes,
        "released more {} bytes than charged",
        kind.name()
    );
    let now = COMMITTED.fetch_sub(bytes, Ordering::Relaxed) - bytes;
    // The growth mark follows the process down: after it gave back 100
    // MiB, growing by 32 MiB did not reach the mark its peak had set.
    let low = now + growth_step(now);
    let mark = GROWTH_MARK.load(Ordering::Relaxed);
    if low < mark && mark != usize::MAX {
        lowered(low);
    }
}

/// [`release`] took the process more than a step below its growth mark:
/// the mark comes down to `mark`, a step above it.
#[cold]
#[inline(never)]
fn lowered(mark: usize) {
    GROWTH_MARK.fetch_min(mark, Ordering::Relaxed);
}

/// What the process has committed, in bytes.
pub(crate) fn committed() -> usize {
    COMMITTED.load(Ordering::Relaxed)
}

/// Whether the process is at least twice `bytes` below its limit: a heap
/// may then keep `bytes` of free memory resident a while longer (its
/// deferred purges, its free top), since charges that never ask the heaps
/// for memory back (mappings, glibc's blocks, context chunks) would be
/// refused meanwhile near the limit.
#[inline]
pub(crate) fn far_from_limit(bytes: usize) -> bool {
    committed().saturating_add(2 * bytes) <= limit()
}

/// The raw counters: `(limit, committed, peak committed, refusals,
/// committed by kind)`.
pub(crate) fn counters() -> (usize, usize, usize, u64, [usize; N_KINDS]) {
    (
        LIMIT.load(Ordering::Relaxed),
        COMMITTED.load(Ordering::Relaxed),
        PEAK.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
        core::array::from_fn(|k| BY_KIND[k].load(Ordering::Relaxed)),
    )
}
