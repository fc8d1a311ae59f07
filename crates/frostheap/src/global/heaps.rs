//! Thread heaps: every thread that allocates gets a heap of its own, all of
//! them in one reservation (the *arena*) with the main heap in its first
//! slot, so "is this frostheap memory" is one compare and "which heap" is
//! a shift.
//!
//! **Slots.** The arena is `n_slots` slots of `2^slot_shift` bytes, each
//! at least `FROSTHEAP_MAX` (so any one heap may use the whole limit), and
//! twice the power of two at or above it where that costs no slot and no
//! `ulimit -v` is set (room past the blocks that pin a heap's range:
//! [`reserve_arena`]), at most
//! 1024 of them and 32 TiB in all, at most half the address space
//! under `ulimit -v` (fewer where the reservation is refused: half as
//! many each time). Slot 0 is the main heap; the
//! others are built on first use, in static storage (the allocator cannot
//! allocate its own heaps), and never freed: a heap outlives every block in
//! it.
//!
//! **A thread's life.** Its first allocation *attaches* a heap: one a
//! thread left behind (adoption), or a fresh slot. When the thread exits,
//! a pthread key's destructor (after the thread's std thread-local
//! destructors; see `route::give_up_at_exit`) *abandons* it
//! ([`HeapCore::abandon`]: remote
//! frees collected, its free memory given back but for a bounded part of
//! it kept resident for the next thread (`abandon_warm`), owner cleared)
//! and pushes it
//! on the abandoned stack, where the next thread that attaches adopts it,
//! with every block still in it: blocks freed by other threads meanwhile
//! were remote frees, collected by the adopter. So 10,000 short-lived
//! threads use a handful of heaps. When every slot is taken, a thread
//! allocates through the main heap's locked shared path.
//!
//! [`HeapCore::abandon`]: crate::heap::core::HeapCore::abandon

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::borrow::Cow;

use crate::heap::core::{CoreConfig, WARM_FROM};
use crate::heap::page::NONE;
use crate::heap::process;
use crate::heap::remote_cache;
use crate::heap::HeapInner;
use crate::region::{Huge, PAGE_SIZE};
use crate::sync::{thread_token, RawLock};

/// Slots at most (the main heap's included).
pub(super) const MAX_HEAPS: usize = 1024;
/// Address space the arena may take at most: 32 TiB of the 128 TiB a
/// process has.
const ARENA_BUDGET_SHIFT: u32 = 45;
/// The smallest slot: 64 MiB.
const MIN_SLOT_SHIFT: u32 = 26;

const EMPTY: u8 = 0;
const LIVE: u8 = 1;
const ABANDONED: u8 = 2;

/// One thread heap's storage. Written once (by the thread that builds it)
/// before `state` leaves EMPTY; read only after.
#[repr(C, align(64))]
struct Slot {
    inner: UnsafeCell<MaybeUninit<HeapInner>>,
    state: AtomicU8,
    /// Bytes of resident free spans the heap's last thread left for the
    /// next ([`abandon_warm`]) while it is abandoned; 0 when it is live.
    warm: AtomicUsize,
    /// The allocations its thread had made when the growth hook last
    /// looked ([`idle_heaps_to_visit`]).
    allocations_seen: AtomicU64,
    /// When the growth hook recorded that count (monotonic nanoseconds).
    seen_at: AtomicU64,
    /// Whether the growth hook's last look found its thread waiting
    /// ([`idle_heaps_to_visit`]): [`release_idle_heaps`] visits it.
    waiting: AtomicBool,
}

// SAFETY: `inner` is initialised by one thread before `state` becomes LIVE
// (Release) and only read after LIVE or ABANDONED is seen (Acquire); the
// heap inside synchronises itself.
unsafe impl Sync for Slot {}

static SLOTS: [Slot; MAX_HEAPS] = [const {
    Slot {
        inner: UnsafeCell::new(MaybeUninit::uninit()),
        state: AtomicU8::new(EMPTY),
        warm: AtomicUsize::new(0),
        allocations_seen: AtomicU64::new(0),
        seen_at: AtomicU64::new(0),
        waiting: AtomicBool::new(false),
    }
}; MAX_HEAPS];

/// The arena: `[base, base + len)`, slots of `1 << shift` bytes (`mask`
/// is `(1 << shift) - 1`). One static, so routing a free loads one
/// address.
struct Arena {
    base: AtomicUsize,
    len: AtomicUsize,
    shift: AtomicUsize,
    mask: AtomicUsize,
}

static ARENA: Arena = Arena {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    shift: AtomicUsize::new(0),
    mask: AtomicUsize::new(0),
};
/// Usable slots (`len >> shift`).
static N_SLOTS: AtomicUsize = AtomicUsize::new(0);
/// Next slot never built (slot 0 is the main heap's).
static NEXT_FRESH: AtomicUsize = AtomicUsize::new(1);
/// `max` of every heap in the arena (the process limit, or the machine's
/// memory).
static HEAP_MAX: AtomicUsize = AtomicUsize::new(0);

/// Slots abandoned by exited threads, waiting to be adopted.
struct Abandoned {
    lock: RawLock,
    slots: UnsafeCell<[u16; MAX_HEAPS]>,
    len: AtomicUsize,
}

// SAFETY: `slots` is touched only under `lock`; `len` is written only
// under it, and read without it only for a peek that takes the lock before
// acting on what it saw.
unsafe impl Sync for Abandoned {}

static ABANDONED_STACK: Abandoned = Abandoned {
    lock: RawLock::new(),
    slots: UnsafeCell::new([0; MAX_HEAPS]),
    len: AtomicUsize::new(0),
};

/// Reserves the arena for heaps of `max` bytes; returns slot 0's address.
/// Called once, by the thread that starts the main heap.
///
/// Each heap's range is its whole slot, the power of two at or above
/// `max`, and twice that where it costs no slot (no more than 32 GiB, the
/// arena's budget over 1024 slots; never under `ulimit -v`; and only if
/// that reservation is granted whole): a heap's
/// blocks must each fit in one run of its range, and live blocks pin the
/// range where they lie. With a range of `max`, a program that made 30 MiB
/// of blocks, kept one of 64 bytes and freed the rest was refused 100 MiB
/// under `FROSTHEAP_MAX=128M` with 0.4 MB committed (a user's trial). Only
/// the charge is bounded by `max`.
pub(super) fn reserve_arena(max: usize) -> Result<*mut u8, crate::os::OsError> {
    let slot_for = |bytes: usize| bytes.max(1 << MIN_SLOT_SHIFT).checked_next_power_of_two();
    let Some(plain) = slot_for(max) else {
        // Past the largest power of two: no address space holds it.
        return Err(crate::os::OsError {
            call: "mmap",
            errno: libc::ENOMEM,
        });
    };
    let count = |shift: u32| {
        let slots = (1usize << ARENA_BUDGET_SHIFT.saturating_sub(shift)).clamp(1, MAX_HEAPS);
        // Under an address-space limit (`ulimit -v`), at most half of it
        // (one slot at least): the program needs the rest for its code,
        // stacks, the context space and its own mappings.
        match crate::os::address_space_limit() {
            Some(limit) => slots.min(((limit / 2) >> shift).max(1)),
            None => slots,
        }
    };
    let plain_shift = plain.trailing_zeros();
    // Twice the slot where 1024 of them still fit the budget (32 GiB each
    // at most), never under `ulimit -v`.
    let roomy = crate::os::address_space_limit().is_none()
        && plain_shift < ARENA_BUDGET_SHIFT - MAX_HEAPS.trailing_zeros();
    let mut shift = plain_shift + u32::from(roomy);
    let mut slots = count(shift);
    let base = loop {
        match crate::os::reserve(slots << shift, crate::os::HUGE_PAGE_SIZE) {
            Ok(base) => break base,
            // The roomy slots whole, or plain ones.
            Err(_) if shift > plain_shift => {
                shift = plain_shift;
                slots = count(shift);
            }
            // Where address space is scarcer still (valgrind, some
            // sandboxes), fewer slots: threads beyond them share the main
            // heap's locked path.
            Err(_) if slots > 1 => slots /= 2,
            Err(e) => return Err(e),
        }
    };
    let len = slots << shift;
    ARENA.base.store(base as usize, Ordering::Relaxed);
    ARENA.shift.store(shift as usize, Ordering::Relaxed);
    ARENA.mask.store((1 << shift) - 1, Ordering::Relaxed);
    N_SLOTS.store(slots, Ordering::Relaxed);
    HEAP_MAX.store(max, Ordering::Relaxed);
    ARENA.len.store(len, Ordering::Release);
    Ok(base)
}

/// Undoes [`reserve_arena`] when the main heap could not be built in the
/// arena, for the next start-up to reserve it afresh (the process's
/// address space may allow more by then). Nothing lies in it: the main
/// heap's build undid itself, and thread heaps are built only after the
/// main heap is published.
///
/// # Safety
/// 1. The main heap's start-up failed and has not been tried again since:
///    slot 0 and every other slot are unbuilt, and nothing refers to the
///    arena.
pub(super) unsafe fn unreserve_arena() {
    // Its length first: nothing routes an address into it from here on.
    let len = ARENA.len.swap(0, Ordering::Relaxed);
    let base = ARENA.base.swap(0, Ordering::Relaxed);
    N_SLOTS.store(0, Ordering::Relaxed);
    if len != 0 {
        // SAFETY: reserved by `reserve_arena`, and unused: (1).
        unsafe { crate::os::unmap(base as *mut u8, len) };
    }
}

/// Bytes of one slot of the arena (after [`reserve_arena`]): each heap's
/// range.
pub(super) fn slot_len() -> usize {
    1 << ARENA.shift.load(Ordering::Relaxed)
}

/// After [`reserve_arena`] refused heaps of `max` bytes: the largest
/// `FROSTHEAP_MAX` whose one slot the address space grants now, a power of
/// two below `max` (any limit up to it reserves a slot of at most its
/// size), or 0 when not even the least slot fits. Each size tried is
/// reserved and unmapped at once; for the start-up's error line.
// Not #[cold]: cold code goes to .text.unlikely, which the
// linker lays in the first window of code; layout.ld moves this
// to .text.rare.
#[inline(never)]
pub(super) fn largest_reservable(max: usize) -> usize {
    crate::region::largest_granted(max, 1 << MIN_SLOT_SHIFT, |size| {
        let Ok(base) = crate::os::reserve(size, crate::os::HUGE_PAGE_SIZE) else {
            return false;
        };
        // SAFETY: reserved just above, by this module, and nothing refers
        // to it.
        unsafe { crate::os::unmap(base, size) };
        true
    })
}

/// For a command that starts a program under `FROSTHEAP_MAX=max`
/// (`frostheap run --max-memory`): whether the program's start-up can
/// reserve its arena, checked here, before the program runs, so that the
/// command names its own flag instead of the program's start-up naming
/// the variable. The start-up needs one slot at least (it takes fewer
/// slots where address space is short, down to one): the power of two at
/// or above `max`, 64 MiB at least. `Ok` when that slot is reserved and
/// unmapped here at once; else `Err((slot, largest))`, the slot's size
/// (`None`: past the largest power of two) and the largest limit the
/// start-up would take, as its own line says it (`largest_reservable`,
/// and under `ulimit -v` no more than the largest power of two within a
/// quarter of it; 0 when none).
///
/// Under `ulimit -v` the probe is not made: this process's own arena
/// takes up to half of that limit, which the program does not have, so a
/// slot refused here may be granted there. Only a slot larger than the
/// limit itself, which no process under it can reserve, is refused then.
pub fn probe_reservation(max: usize) -> Result<(), (Option<usize>, usize)> {
    let slot = max.max(1 << MIN_SLOT_SHIFT).checked_next_power_of_two();
    let limit = crate::os::address_space_limit();
    let quarter = limit.map_or(usize::MAX, |a| {
        (a / 4).checked_ilog2().map_or(0, |k| 1 << k)
    });
    let granted = match (slot, limit) {
        (None, _) => false,
        (Some(slot), Some(limit)) => slot <= limit,
        (Some(slot), None) => match crate::os::reserve(slot, crate::os::HUGE_PAGE_SIZE) {
            Ok(base) => {
                // SAFETY: reserved just above, and nothing refers to it.
                unsafe { crate::os::unmap(base, slot) };
                true
            }
            Err(_) => false,
        },
    };
    if granted {
        return Ok(());
    }
    let largest = match limit {
        Some(_) => quarter,
        None => largest_reservable(max),
    };
    Err((slot, largest.min(quarter)))
}

/// Builds the main heap in slot 0 (`init` builds it there) and publishes
/// it, unless `init` fails.
///
/// # Safety
/// 1. On `Ok`, `init` has written a fully built heap into the slot it is
///    given; it is called once.
pub(super) unsafe fn publish_main<E>(
    init: impl FnOnce(&mut MaybeUninit<HeapInner>) -> Result<(), E>,
) -> Result<(), E> {
    // SAFETY: slot 0 is written once, by the main heap's start-up, before
    // its state becomes LIVE.
    init(unsafe { &mut *SLOTS[0].inner.get() })?;
    SLOTS[0].state.store(LIVE, Ordering::Release);
    Ok(())
}

/// The heap in slot `idx`.
///
/// # Safety
/// 1. Slot `idx` was built (its state was seen LIVE or ABANDONED, or the
///    caller holds a block of it).
#[inline(always)]
pub(super) unsafe fn slot_heap(idx: usize) -> &'static HeapInner {
    crate::sync::invariant!(idx < MAX_HEAPS, "slot {idx} out of range");
    // SAFETY: (1).
    unsafe { (*SLOTS.get_unchecked(idx).inner.get()).assume_init_ref() }
}

/// The heap owning `p` and `p`'s offset into its region, if `p` lies in
/// the arena.
#[inline(always)]
pub(super) fn heap_of(p: *mut u8) -> Option<(&'static HeapInner, usize)> {
    let offset = (p as usize).wrapping_sub(ARENA.base.load(Ordering::Relaxed));
    if offset >= ARENA.len.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: a block lies in a slot only once its heap was built and
    // handed it out.
    let heap = unsafe { slot_heap(offset >> ARENA.shift.load(Ordering::Relaxed)) };
    Some((heap, offset & ARENA.mask.load(Ordering::Relaxed)))
}

/// Whether `p` lies in the arena: one subtraction and one compare.
#[inline(always)]
pub(super) fn arena_owns(p: *const u8) -> bool {
    (p as usize).wrapping_sub(ARENA.base.load(Ordering::Relaxed))
        < ARENA.len.load(Ordering::Relaxed)
}

/// A heap for the calling thread, which has none: an abandoned one
/// adopted, or a fresh slot built. `None` when every slot is taken or
/// building one failed.
pub(super) fn attach() -> Option<(usize, &'static HeapInner)> {
    if let Some(idx) = pop_abandoned() {
        // SAFETY: abandoned slots were built.
        let h = unsafe { slot_heap(idx) };
        crate::sync::chaos();
        // SAFETY: the heap was abandoned (its old owner stopped using it
        // before pushing it, under the stack's lock, which we took after).
        unsafe { h.core.set_owner() };
        forget_warm(idx);
        process::adopted();
        SLOTS[idx].state.store(LIVE, Ordering::Relaxed);
        remote_cache::heap_attached();
        return Some((idx, h));
    }
    // A fresh slot is handed out and built under the abandoned stack's
    // lock, which a `fork`'s prepare takes first: no heap is half built
    // while a fork runs. (Until 2026-12-06 one built meanwhile was not
    // locked by the prepare; the child inherited its span lock held by a
    // thread that does not exist there, and the first trim or large free
    // into that heap waited for good: a review's find.) Nothing here waits
    // for that lock again: the reclaimer and the growth hook only try it.
    let _building = ABANDONED_STACK.lock.lock();
    let idx = NEXT_FRESH.fetch_add(1, Ordering::Relaxed);
    if idx >= N_SLOTS.load(Ordering::Relaxed) {
        NEXT_FRESH.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let shift = ARENA.shift.load(Ordering::Relaxed);
    let base = (ARENA.base.load(Ordering::Relaxed) + (idx << shift)) as *mut u8;
    let config = CoreConfig {
        min: 0,
        max: HEAP_MAX.load(Ordering::Relaxed),
        huge_pages: Huge::Off,
        kind: process::Kind::Thread,
    };
    // SAFETY: slot idx is ours alone until its state is LIVE.
    let slot = unsafe { &mut *SLOTS[idx].inner.get() };
    // SAFETY: slot idx of the arena is reserved and given to this heap
    // alone (NEXT_FRESH hands each slot out once); the heap is never
    // dropped.
    let h = match unsafe {
        HeapInner::init_in(slot, Cow::Borrowed("thread"), base, 1 << shift, config)
    } {
        Ok(h) => &*h,
        Err(_) => return None, // the slot stays unused
    };
    SLOTS[idx].state.store(LIVE, Ordering::Release);
    remote_cache::heap_attached();
    Some((idx, h))
}

/// The calling thread, owner of slot `idx`, exits: the heap is abandoned
/// and put up for adoption.
///
/// # Safety
/// 1. The calling thread owns slot `idx`'s heap and never uses it again.
#[inline(never)] // a function of its own, which layout.ld places
pub(super) unsafe fn detach(idx: usize) {
    // SAFETY: (1).
    let h = unsafe { slot_heap(idx) };
    // Other heaps' blocks the thread kept go back to them first.
    // SAFETY: (1): the owner, still.
    unsafe { hand_back_held_blocks(h) };
    crate::sync::chaos();
    // SAFETY: (1).
    unsafe { abandon_warm(idx, h) };
    SLOTS[idx].state.store(ABANDONED, Ordering::Relaxed);
    remote_cache::heap_detached();
    push_abandoned(idx);
}

/// Free memory the heaps of exited threads keep charged and resident for
/// the threads that adopt them, in all ([`abandon_warm`]), as counted when
/// each was given up or last collected: what a heap kept may go by ways
/// that do not count it down (the reclaimer's sweep of every heap) until
/// it is adopted or given back, and blocks freed into it since count at
/// its next collection.
static WARM: AtomicUsize = AtomicUsize::new(0);
/// What the abandoned heaps keep in all at most: this, or an eighth of
/// what the process has committed if more.
const WARM_MIN_TOTAL: usize = 32 << 20;

/// [`HeapCore::abandon`] for slot `idx`'s heap `h`, which may keep
/// resident free spans for the thread that adopts it, within what the
/// abandoned heaps keep in all ([`WARM_MIN_TOTAL`], an eighth of the
/// process's committed memory if more, an eighth of the process limit at
/// most: under a small limit the reclaimer would otherwise take it back at
/// every other refusal), [`WARM_FROM`] or more, or nothing. Purging each
/// free span is a `madvise` and a TLB shootdown, and the adopter faults
/// the pages in again: threads started and joined in turn, whose blocks a
/// consumer thread freed, spent two thirds of their time doing so. What
/// is kept stays charged against the process limit, and goes when a
/// thread adopts the heap, when the process grows by as much as is kept
/// or by a step (the growth hook), at the limit (the reclaimer) and at a
/// trim.
///
/// # Safety
/// 1. The calling thread owns `h` and gives it up ([`HeapCore::abandon`]).
///
/// [`HeapCore::abandon`]: crate::heap::core::HeapCore::abandon
unsafe fn abandon_warm(idx: usize, h: &HeapInner) {
    let mut allowed = 0;
    // SAFETY: (1).
    let kept = unsafe {
        h.core.abandon(&mut |held| {
            allowed = reserve_warm(0, held);
            allowed
        })
    };
    settle_warm(idx, allowed, kept);
}

/// What a heap that kept `already` bytes for its next thread (counted in
/// [`WARM`]) may keep of the `held` bytes its free spans hold, within
/// [`abandon_warm`]'s bounds: [`WARM`] then counts that for it instead
/// ([`settle_warm`] settles it with what it keeps). 0 below [`WARM_FROM`]:
/// a heap keeps that much or nothing.
fn reserve_warm(already: usize, held: usize) -> usize {
    let budget = (process::committed() / 8)
        .max(WARM_MIN_TOTAL)
        .min(process::limit() / 8);
    let mut cur = WARM.load(Ordering::Relaxed);
    loop {
        let others = cur.saturating_sub(already);
        // Whole pages: what is purged beyond it goes a page at a time.
        let mut allowed = held.min(budget.saturating_sub(others)) & !(PAGE_SIZE - 1);
        if allowed < WARM_FROM {
            allowed = 0;
        }
        match WARM.compare_exchange_weak(
            cur,
            others + allowed,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return allowed,
            Err(c) => cur = c,
        }
    }
}

/// Slot `idx`'s heap, for which [`WARM`] counts `allowed` bytes
/// ([`reserve_warm`]), keeps `kept`: the rest goes back to the budget, and
/// the process's growth hook runs once it grows by as much as the heaps
/// keep in all.
fn settle_warm(idx: usize, allowed: usize, kept: usize) {
    let kept = kept.min(allowed);
    let total = WARM.fetch_sub(allowed - kept, Ordering::Relaxed) - (allowed - kept);
    SLOTS[idx].warm.store(kept, Ordering::Relaxed);
    if kept > 0 {
        process::kept_for_adoption(total);
    }
}

/// What the abandoned heaps keep resident for their next threads
/// ([`abandon_warm`]).
pub(super) fn kept_for_next_threads() -> usize {
    WARM.load(Ordering::Relaxed)
}

/// Slot `idx`'s heap no longer keeps what [`abandon_warm`] counted: it was
/// adopted, or gave back its free memory.
fn forget_warm(idx: usize) {
    let kept = SLOTS[idx].warm.swap(0, Ordering::Relaxed);
    if kept > 0 {
        WARM.fetch_sub(kept, Ordering::Relaxed);
    }
}

/// Gives the other heaps' blocks that `h`'s thread holds back to them: its
/// remote cache, emptied ([`free_to_owners`]), and its remote batch,
/// published.
///
/// # Safety
/// 1. The calling thread owns `h`, and is not a runtime worker inside a
///    phase.
#[inline(never)] // a function of its own, which layout.ld places
unsafe fn hand_back_held_blocks(h: &HeapInner) {
    // SAFETY: (1): the owner of the cache and the batch; the cache holds
    // live blocks of other arena heaps.
    unsafe {
        h.remote_cache.drain(|blocks| free_to_owners(blocks));
        h.remote_batch.publish_all();
    }
}

/// The process's hand-back hook ([`process::set_hand_back_hook`]), run
/// before a heap's owner is refused: the other heaps' blocks the calling
/// thread holds go back to them ([`hand_back_held_blocks`]), unless it is
/// a runtime worker inside a phase. Returns whether it held any.
pub(super) fn hand_back_before_refusal() -> bool {
    let Some(h) = super::route::heap_outside_phase() else {
        return false;
    };
    if h.remote_cache.bytes() + h.remote_batch.bytes() == 0 {
        return false;
    }
    // SAFETY: h is the calling thread's own heap, and the thread is no
    // runtime worker inside a phase.
    unsafe { hand_back_held_blocks(h) };
    true
}

/// Frees `blocks`, live blocks of arena heaps the calling thread does not
/// own, to their heaps: sorted by address, each heap's run in one call, so
/// blocks that share a word of their heap's remote-free bitmap are
/// published with one atomic OR.
///
/// # Safety
/// 1. Every block is a live block of an arena heap the caller does not
///    own, freed once; the caller is not a runtime worker inside a phase.
unsafe fn free_to_owners(blocks: &mut [*mut u8]) {
    blocks.sort_unstable();
    let mut i = 0;
    while i < blocks.len() {
        let Some((heap, _)) = heap_of(blocks[i]) else {
            crate::heap::page::invalid_free(blocks[i]);
        };
        let mut j = i + 1;
        while j < blocks.len() && heap_of(blocks[j]).is_some_and(|(h, _)| core::ptr::eq(h, heap)) {
            j += 1;
        }
        // SAFETY: (1): blocks[i..j] are live blocks of `heap`, sorted.
        unsafe { heap.core.free_remote_sorted(&blocks[i..j]) };
        i = j;
    }
}

fn push_abandoned(idx: usize) {
    let s = &ABANDONED_STACK;
    let _g = s.lock.lock();
    // SAFETY: under the lock.
    unsafe { stack_insert(s, idx) };
}

/// Puts slot `idx` on the abandoned stack: on top if its heap keeps free
/// memory resident for its next thread ([`abandon_warm`]), else under
/// those that do, so that the adopter, which looks at the top
/// [`ADOPT_SCAN`], finds them: of 16 threads that exited together, the
/// first five kept their memory and the last eleven, pushed above them,
/// did not.
///
/// # Safety
/// 1. The caller holds the stack's lock, or is the process's only thread.
/// 2. `idx` is not on the stack.
unsafe fn stack_insert(s: &Abandoned, idx: usize) {
    let n = s.len.load(Ordering::Relaxed);
    // SAFETY: (1); (2): a slot is on the stack at most once, so n <
    // MAX_HEAPS.
    let slots = unsafe { &mut (&mut *s.slots.get())[..=n] };
    let mut at = n;
    if SLOTS[idx].warm.load(Ordering::Relaxed) == 0 {
        while at > 0 && SLOTS[slots[at - 1] as usize].warm.load(Ordering::Relaxed) > 0 {
            at -= 1;
        }
    }
    slots.copy_within(at..n, at + 1);
    slots[at] = idx as u16;
    s.len.store(n + 1, Ordering::Relaxed);
}

/// Abandoned heaps a thread looks at to choose the one it adopts.
const ADOPT_SCAN: usize = 8;

/// The abandoned heap a thread adopts: of the [`ADOPT_SCAN`] abandoned
/// last, the one with the most memory charged (what holds no memory not
/// counted; the last abandoned of those with the most), so that a thread
/// reuses the memory that waits in the heaps of exited threads before it
/// commits more.
///
/// The last abandoned alone would do as well where every thread allocates
/// alike, and badly where threads differ: where a producer thread's blocks
/// are freed by a consumer thread (which gets a heap of its own at its
/// first free, and commits next to nothing in it) and both are replaced in
/// turn, the consumer exits last, and the next producer adopted the
/// consumer's empty heap and committed as much again while the last
/// producer's heap, its blocks all freed, waited with the next consumer,
/// which never allocates.
fn pop_abandoned() -> Option<usize> {
    let s = &ABANDONED_STACK;
    if s.len.load(Ordering::Relaxed) == 0 {
        return None; // a racy peek: the common case takes no lock
    }
    let _g = s.lock.lock();
    let n = s.len.load(Ordering::Relaxed);
    if n == 0 {
        return None;
    }
    // SAFETY: under the lock; the first n entries are abandoned slots,
    // and n <= MAX_HEAPS.
    let slots = unsafe { &mut (&mut *s.slots.get())[..n] };
    let mut best = n - 1;
    let mut best_charged = 0;
    for i in (n.saturating_sub(ADOPT_SCAN)..n).rev() {
        // SAFETY: abandoned slots were built. (`charged` is atomic: the
        // heap's span lock is not needed to read it.)
        let charged = unsafe { slot_heap(slots[i] as usize) }.core.charged();
        if charged > best_charged {
            (best, best_charged) = (i, charged);
        }
    }
    slots.swap(best, n - 1);
    s.len.store(n - 1, Ordering::Relaxed);
    Some(slots[n - 1] as usize)
}

/// The process limit's reclaimer ([`process::set_reclaimer`]): the free
/// memory of every heap whose span lock is free goes back to the OS (free
/// tops decommitted, free spans below them purged and uncharged),
/// abandoned heaps first retire the empty spans they keep for their next
/// thread ([`release_abandoned`]), and live heaps the spans other threads
/// freed whole ([`give_back_retiring`]). The heap asking holds its own span
/// lock, so it is skipped here (it gave back its own first), and nothing
/// here waits for a lock: a thread that holds one heap's span lock and
/// waits for another's could wait forever on a `fork` handler taking them
/// all. Returns the bytes no longer charged.
pub(super) fn reclaim() -> usize {
    release_abandoned(false, true, false)
        + built()
            .map(|(_, h, live)| give_back_retiring(h, live, false))
            .sum::<usize>()
}

/// Every free page of heap `h` given back (its free top decommitted, its
/// free spans purged and uncharged), waiting for its span lock with
/// `wait`, or nothing if it is busy; for a live heap that no phase froze,
/// with the spans other threads freed whole in it, which its thread has
/// not collected ([`HeapCore::retire_spans_freed_whole`]; the heaps of
/// exited threads are collected whole by [`release_abandoned`]). Returns
/// the bytes no longer charged.
///
/// [`HeapCore::retire_spans_freed_whole`]: crate::heap::core::HeapCore::retire_spans_freed_whole
fn give_back_retiring(h: &HeapInner, live: bool, wait: bool) -> usize {
    if live && !h.frozen_now() {
        h.core.retire_spans_freed_whole(wait, true).1
    } else if wait {
        // SAFETY: no collection (`false`), which only the owner may ask.
        unsafe { h.core.give_back(false) }
    } else {
        h.core.try_give_back()
    }
}

/// The process's growth hook ([`process::set_growth_hook`]): what the
/// heaps of exited threads hold free — blocks other threads freed into
/// them since — given back ([`release_abandoned`]), skipping every lock
/// found busy; the empty current spans kept for their next thread stay
/// (see [`HeapCore::release_kept`](crate::heap::core::HeapCore::release_kept)). With `keep_warm` (run by frees that
/// brought spans of those heaps back), only the heaps frees brought spans
/// back into since are visited, and they keep, within the budget, what
/// [`abandon_warm`] would let them keep. Runs on a thread that is charging
/// a commit or freeing a block, which may hold its own heap's span lock:
/// the same conditions as the reclaimer's ([`reclaim`]).
///
/// As the process grows (not `keep_warm`), the live heaps of threads
/// that have made no allocation for 10 ms retire the spans
/// other threads freed whole and give back their free memory
/// ([`release_idle_heaps`]).
pub(super) fn release_abandoned_on_growth(keep_warm: bool) -> usize {
    // The racy peeks of `release_idle_heaps` and `release_abandoned`, here:
    // those functions are laid with the rare code (layout.ld), which a
    // process growing with no abandoned heap and no idle one (most of
    // them) should not touch.
    let idle = if !keep_warm && idle_heaps_to_visit() {
        release_idle_heaps()
    } else {
        0
    };
    if ABANDONED_STACK.len.load(Ordering::Relaxed) == 0 {
        return idle;
    }
    idle + release_abandoned(false, false, keep_warm)
}

/// The process's reuse hook ([`process::set_reuse_hook`]): as the growth
/// hook, the live heaps of threads that have made no allocation for 10 ms
/// give back their free memory and the spans other threads freed whole in
/// them ([`release_idle_heaps`]), when a heap took 4 MiB of its own free
/// memory back into use rather than when the process grew
/// ([`process::reused`] says why). The heaps of exited threads are left to
/// the growth hook.
#[inline(never)] // laid with the rare code (layout.ld)
pub(super) fn release_idle_on_reuse() {
    if idle_heaps_to_visit() {
        release_idle_heaps();
    }
}

/// How long the thread of a heap must have made no allocation for the
/// growth hook to give its heap's free memory back
/// ([`idle_heaps_to_visit`]).
const IDLE_AFTER_NS: u64 = 10_000_000;

/// Whether the thread of a live heap other than the calling thread's, not
/// frozen by a phase, has made no allocation (nor has any thread through
/// its shared state) since a look of the growth hook at least
/// [`IDLE_AFTER_NS`] (10 ms) before — so at the second look after its last
/// allocation at the earliest — and its heap has spans on its pending
/// stack (FULL spans other threads freed into, which it collects only as
/// a class of its runs dry) or holds [`WARM_FROM`] or more: a thread that
/// waits (a pool's worker between jobs) holds that memory for nothing
/// while the process grows. Marks those heaps for [`release_idle_heaps`],
/// and records each heap's count, and when, for the next look. A pool's
/// worker that waits while the main thread drops its 40 MiB of results
/// and makes 40 MiB of its own: 84 MB peak RSS, glibc's 42 (whose free
/// gives a block back to the arena that made it, and trims the arena's
/// top). With one step of growth as the only wait, a thread that kept
/// allocating but was off its CPU for that step, on a loaded machine, had
/// its free memory given back and faulted it in again.
///
/// A process with no thread heap (one thread) reads no clock here.
#[inline]
fn idle_heaps_to_visit() -> bool {
    if NEXT_FRESH.load(Ordering::Relaxed) <= 1 {
        return false; // the main heap alone
    }
    let me = thread_token();
    // Read before any count: a clock that lags the counts only makes a
    // heap look to have waited less.
    let now = crate::os::monotonic_ns();
    let mut any = false;
    for (idx, h, live) in built() {
        let slot = &SLOTS[idx];
        let made = h.core.allocations();
        // Acquire, with the Release below: a count seen is never paired
        // with the time of an older one (two hooks may look at once).
        if made != slot.allocations_seen.load(Ordering::Acquire) {
            // The time read after the count: never earlier than it.
            slot.seen_at
                .store(crate::os::monotonic_ns(), Ordering::Relaxed);
            slot.allocations_seen.store(made, Ordering::Release);
        } else if live
            && h.core.owner_token() != me
            && !h.frozen_now()
            && (h.core.pending_top() != NONE || h.core.charged() >= WARM_FROM)
            && now.saturating_sub(slot.seen_at.load(Ordering::Relaxed)) >= IDLE_AFTER_NS
        {
            slot.waiting.store(true, Ordering::Relaxed);
            any = true;
        }
    }
    any
}

/// The heaps that [`idle_heaps_to_visit`] found waiting (their mark taken;
/// only those: a heap whose count it just recorded would compare equal
/// too), still live and not frozen by a phase since, whose span lock is
/// free: their free memory goes back, with the spans other threads freed
/// whole in them ([`give_back_retiring`]), as it would if their threads
/// trimmed. (A heap given up since keeps what it keeps for its next
/// thread; a frozen one is left as it is until its phase ends.) Returns
/// the bytes no longer charged.
#[inline(never)] // laid with the rare code (layout.ld)
fn release_idle_heaps() -> usize {
    built()
        .filter(|&(idx, h, live)| {
            SLOTS[idx].waiting.swap(false, Ordering::Relaxed) && live && !h.frozen_now()
        })
        .map(|(_, h, live)| give_back_retiring(h, live, false))
        .sum()
}

/// What abandoned heaps keep for the threads that adopt them — the empty
/// spans of the classes their last thread used, as well as their free
/// memory — given back ([`HeapCore::release_kept`]), holding the abandoned
/// stack's lock so that no thread adopts one meanwhile. Heaps a phase
/// froze are left as they are. With `wait` false (the reclaimer), a lock
/// found busy — the stack's or a heap's span lock — skips what it guards;
/// with `kept` false, the empty current spans stay; with `keep_warm`, only
/// heaps that frees brought spans back into are visited, and each keeps of
/// its free memory what the budget allows ([`reserve_warm`]). Returns the
/// bytes no longer charged.
///
/// [`HeapCore::release_kept`]: crate::heap::core::HeapCore::release_kept
#[inline(never)] // laid with the rare code (layout.ld), as its callers are not
fn release_abandoned(wait: bool, kept: bool, keep_warm: bool) -> usize {
    let s = &ABANDONED_STACK;
    if s.len.load(Ordering::Relaxed) == 0 {
        return 0; // a racy peek, as in pop_abandoned
    }
    let guard = if wait {
        Some(s.lock.lock())
    } else {
        s.lock.try_lock()
    };
    let Some(_guard) = guard else {
        return 0;
    };
    // SAFETY: under the lock; the first len entries are abandoned slots.
    let slots = unsafe { &(&*s.slots.get())[..s.len.load(Ordering::Relaxed)] };
    slots
        .iter()
        .map(|&idx| {
            // SAFETY: abandoned slots were built.
            let h = unsafe { slot_heap(idx as usize) };
            if h.frozen_now() {
                return 0;
            }
            let idx = idx as usize;
            if keep_warm && !h.core.take_brought_back() {
                return 0; // nothing freed into it since: nothing to collect
            }
            // What it kept when its thread left, and what the budget gives
            // it more for the blocks freed into it since (a worker's
            // results, freed before the next worker adopts the heap).
            let already = SLOTS[idx].warm.load(Ordering::Relaxed);
            let mut allowed = already;
            let mut warm = |held| {
                allowed = reserve_warm(already, held);
                allowed
            };
            // SAFETY: the heap is abandoned (it is on the stack), and no
            // thread adopts it while we hold the stack's lock.
            let released = unsafe {
                h.core.release_kept(
                    wait,
                    kept,
                    keep_warm.then_some(&mut warm as &mut dyn FnMut(usize) -> usize),
                )
            };
            match released {
                Some((released, still)) => {
                    if keep_warm {
                        settle_warm(idx, allowed, still);
                    } else {
                        forget_warm(idx);
                    }
                    released
                }
                None => {
                    // Its lock was busy: it keeps what it kept, and its
                    // spans wait for the next run.
                    if keep_warm {
                        h.core.restore_brought_back();
                    }
                    0
                }
            }
        })
        .sum()
}

/// A trim the program asked for (`frostheap::trim`, the C ABI's
/// `malloc_trim`): `own`, the calling thread's heap when it allocates from
/// it (not inside a phase), first hands the other heaps' blocks its cache
/// and batch hold back to them, and collects the remote frees into its own
/// spans that filled up; then abandoned heaps retire the empty spans they
/// keep for their next thread ([`release_abandoned`]), and every built
/// heap that no phase has frozen gives back its free memory, waiting for
/// its span lock: the heaps of other live threads with the spans other
/// threads freed whole in them ([`give_back_retiring`]). Returns the bytes
/// no longer charged.
///
/// # Safety
/// 1. `own` is `None`, or the calling thread's heap, which it owns, on its
///    owner path.
pub(super) unsafe fn trim(own: Option<&'static HeapInner>) -> usize {
    if let Some(h) = own {
        // SAFETY: (1): the owner, not in a phase.
        unsafe { hand_back_held_blocks(h) };
    }
    release_abandoned(true, true, false)
        + built()
            .filter(|(_, h, _)| !h.frozen_now())
            .map(|(_, h, live)| {
                if own.is_some_and(|o| core::ptr::eq(o, h)) {
                    // SAFETY: (1): the calling thread's own heap.
                    unsafe { h.core.give_back(true) }
                } else {
                    give_back_retiring(h, live, true)
                }
            })
            .sum::<usize>()
}

/// Every built heap: `(slot, heap, whether a thread owns it)`.
pub(super) fn built() -> impl Iterator<Item = (usize, &'static HeapInner, bool)> {
    (0..NEXT_FRESH.load(Ordering::Acquire).min(MAX_HEAPS)).filter_map(|idx| {
        let state = SLOTS[idx].state.load(Ordering::Acquire);
        // SAFETY: LIVE or ABANDONED slots were built.
        (state != EMPTY).then(|| (idx, unsafe { slot_heap(idx) }, state == LIVE))
    })
}

/// The slots whose heap locks the `fork` prepare handler took, one bit
/// each: the parent and child handlers release exactly those. Written and
/// read only by the forking thread while it holds the abandoned stack's
/// lock (a second thread's prepare waits for that lock first).
static FORK_LOCKED: [AtomicU64; MAX_HEAPS / 64] = [const { AtomicU64::new(0) }; MAX_HEAPS / 64];
/// The [`thread_token`] of the thread that holds the `fork` locks, 0 when
/// none does: a thread whose prepare found frostheap not started (and took
/// nothing) must not release what a later fork's prepare took.
static FORK_HOLDER: AtomicUsize = AtomicUsize::new(0);

/// The `fork` prepare handler's half: takes the abandoned stack's lock,
/// then the locks of every heap built, in slot order, noting which.
pub(super) fn lock_for_fork() {
    ABANDONED_STACK.lock.lock_raw();
    for w in &FORK_LOCKED {
        w.store(0, Ordering::Relaxed);
    }
    for (idx, h, _) in built() {
        for l in h.core.locks() {
            l.lock_raw();
        }
        FORK_LOCKED[idx / 64].fetch_or(1 << (idx % 64), Ordering::Relaxed);
    }
    FORK_HOLDER.store(thread_token(), Ordering::Relaxed);
}

/// The `fork` parent and child handlers' half: releases the locks
/// [`lock_for_fork`] took on the calling thread (nothing if it took none),
/// and only those. Until 2026-12-06 it released
/// the locks of every heap built by then, read again: a thread that built
/// its heap while the fork ran (its slot was not built yet at the prepare)
/// could hold that heap's span lock, and the parent's handler let it go
/// under it (a review's find).
///
/// # Safety
/// 1. Called by a `fork` handler of the parent or the child, once per
///    `fork` (in the child the forking thread's copy has its token).
pub(super) unsafe fn unlock_after_fork() {
    if FORK_HOLDER.load(Ordering::Relaxed) != thread_token() {
        return;
    }
    FORK_HOLDER.store(0, Ordering::Relaxed);
    for (i, w) in FORK_LOCKED.iter().enumerate() {
        let mut bits = w.load(Ordering::Relaxed);
        while bits != 0 {
            let idx = i * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // SAFETY: a slot lock_for_fork saw built; slots are never
            // unbuilt.
            let h = unsafe { slot_heap(idx) };
            for l in h.core.locks() {
                // SAFETY: taken by lock_for_fork on this thread (its
                // token is FORK_HOLDER's).
                unsafe { l.unlock_raw() };
            }
        }
    }
    // SAFETY: as above, taken first by lock_for_fork.
    unsafe { ABANDONED_STACK.lock.unlock_raw() };
}

/// In a `fork` child, whose only thread is the calling one: every heap
/// another thread owned is repaired (remote frees the fork cut in half)
/// and left without an owner for good ([`HeapCore::orphan_after_fork`]:
/// its owner may have been in the middle of an allocation or a free), its
/// free memory going back as for a thread that waits. (Until 2026-12-05
/// they were given up for adoption, through the owner's state: a child
/// forked while other threads allocated spun for good in half of the
/// runs of a user's program.) The main heap is among them unless
/// `forked_by_main`.
///
/// [`HeapCore::orphan_after_fork`]: crate::heap::core::HeapCore::orphan_after_fork
///
/// # Safety
/// 1. The calling thread is the only thread of the process, inside the
///    `fork` child handler, after the heap locks were released.
/// 2. `forked_by_main` is whether it owns the main heap.
pub(super) unsafe fn after_fork_in_child(forked_by_main: bool) {
    let me = thread_token();
    let s = &ABANDONED_STACK;
    for (idx, h, live) in built() {
        // SAFETY: (1): nothing else runs.
        unsafe { h.core.repair_remote_frees_after_fork() };
        let other_threads = if idx == 0 {
            !forked_by_main
        } else {
            live && h.core.owner_token() != me
        };
        if other_threads {
            // SAFETY: (1): the owner does not exist in the child; nobody
            // is on the owner path.
            unsafe {
                h.core.forget_own_cache_after_fork();
                h.core.orphan_after_fork();
            }
        }
    }
    // What the heaps on the stack keep for their next threads, counted
    // anew: a thread of the parent that was between reserving its share
    // and settling it (`abandon_warm`) does not exist here.
    // SAFETY: the only thread; the first len entries are abandoned slots.
    let on_stack = unsafe { &(&*s.slots.get())[..s.len.load(Ordering::Relaxed)] };
    let kept = on_stack
        .iter()
        .map(|&idx| SLOTS[idx as usize].warm.load(Ordering::Relaxed))
        .sum();
    WARM.store(kept, Ordering::Relaxed);
    // The calling thread's heap, if it has one, is the only one live with
    // an owner.
    let live = built()
        .filter(|&(idx, h, live)| idx != 0 && live && !h.core.is_orphan())
        .count();
    remote_cache::set_live_heaps(live);
}

/// Thread heaps built so far, how many wait for adoption, and how many
/// heaps a `fork` left without an owner ([`after_fork_in_child`]; the main
/// heap among them when a thread other than the main one forked).
pub(super) fn counts() -> (usize, usize, usize) {
    let (mut built_n, mut abandoned, mut orphaned) = (0, 0, 0);
    for (idx, h, live) in built() {
        orphaned += usize::from(live && h.core.is_orphan());
        if idx != 0 {
            built_n += 1;
            abandoned += usize::from(!live);
        }
    }
    (built_n, abandoned, orphaned)
}
