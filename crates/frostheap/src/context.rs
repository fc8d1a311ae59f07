//! Context heaps: one bump arena per runtime worker.
//!
//! All context heaps live in one reservation (the *context space*) cut into
//! 1 GiB slots, one per worker, so "is this a context address, and whose"
//! is a subtraction and a shift. A slot is cut into *chunks*, committed
//! when first used: 4 MiB each ([`CHUNK_SIZE`]) under a process limit of
//! 256 MiB or more, and under a smaller one the power of two at or below
//! a 64th of it, 64 KiB at least ([`chunk_shift_for`]; fixed for the
//! process when the context space is reserved). With 4 MiB chunks, the
//! current one and two kept free per worker, two workers held 16 MiB of
//! a 20 MiB limit (a user's trial: it aborted with 7 MB in use); with
//! 256 KiB chunks they hold 1.5 MiB at most.
//!
//! Allocation bumps a cursor through the current chunk and counts the
//! allocation in the chunk (a plain store: only the owning worker
//! allocates). A free, from any thread, increments the chunk's atomic free
//! count. A chunk the owner has moved past is *sealed*; when a sealed
//! chunk's frees equal its allocations it is empty, and whoever sees that
//! first (the last freer, or the owner at sealing) marks it free in the
//! slot's *free map* (one bit per chunk, set by anyone, cleared by the
//! owner as it takes free chunks from it, and by a reclaimer for as long
//! as it purges one: a chunk is taken by claiming its bit). Results that
//! escape a task keep their chunk non-empty, so nothing is copied and
//! nothing dangles; the chunk is free once main drops them.
//!
//! Requests of more than half a chunk take a *run* of chunks: the first
//! run of free chunks in the map that is long enough, else fresh ones. A
//! run freed is free chunks again, so a large result made and dropped
//! phase after phase reuses the same part of the slot instead of walking
//! through it. A slot that runs out makes the allocation fail; the global
//! allocator then falls back to other memory.
//!
//! **Memory goes back to the OS when results no longer use it.** At most
//! [`KEEP_RESIDENT`] free chunks (8 MiB of 4 MiB chunks) of a heap stay resident for
//! reuse; the rest are purged (`MADV_DONTNEED`) by whoever frees their last
//! block, so two 100 MB results dropped by main cost 8 MiB afterwards, not
//! 200 MB, and no phase has to run for it. (The main heap's rule is the
//! same idea with a larger allowance; here chunks are reused task after
//! task, and the allowance covers that churn.) A chunk the limit refuses
//! is tried again after the heap has purged the free chunks it keeps, and
//! then after the reclaimers have given back the other heaps' free memory
//! (`process::reclaim_and_charge`), as a heap's refused charge is: only
//! then is the allocation refused. The kept chunks of every live context
//! heap are among that memory ([`reclaim_kept`], which `frostheap::trim`
//! runs too), whichever heap's charge was refused: a worker's kept chunks
//! no longer count against the limit while another heap is refused.
//!
//! **Values a rolled-back phase keeps are pinned, not the whole chunk.**
//! After a phase whose stores the rollback policy undid, the runtime never
//! drops the values its tasks made (one may rest on an undone store), and
//! their blocks are never freed. Such a block in a worker's current chunk
//! kept the chunk from ever emptying: the cursor never started over,
//! later tasks walked through the rest of it, and the whole chunk was
//! kept. The worker now pins its current chunk below the cursor before
//! its next task ([`ContextHeap::pin_current`]): the bytes below the
//! *floor* are left as they are (their frees are not counted), and the
//! chunk is reused above it, the cursor starting over at the floor
//! whenever every block above it is freed. A pinned chunk, once sealed,
//! is never made free. Before each job the worker also starts its current
//! chunk over when every block in it has been freed, by main as well
//! ([`ContextHeap::reuse_current_if_freed`]).
//!
//! **A slot comes back when its heap is retired and empty.** A worker
//! retires its heap when it exits. Blocks its tasks returned may still be
//! alive in main's data: then the heap stays until the last of them is
//! freed, and that free (whichever thread makes it) decommits the slot and
//! hands it back. Meanwhile the heap keeps no free chunk resident: no
//! task takes one from it again. The bookkeeping of a slot (its
//! [`ContextHeap`]) is made once per slot, in a mapping of its own, and
//! lives as long as the process, so a thread still finishing a free into
//! a heap that has just been handed back reads valid (if stale) counters;
//! a generation number keeps such a thread from releasing the slot's next
//! heap.
//!
//! A parked worker never retires its heap: its slot stays taken, which is
//! why `max_parked` and `workers` together must fit in [`N_SLOTS`].

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use crate::os;
use crate::region::round_up;
use crate::sync::thread_token;

/// Bytes per context slot (virtual).
pub const SLOT_SHIFT: u32 = 30;
/// Number of slots in the context space.
pub const N_SLOTS: usize = 1024;
/// The largest chunk's shift: 4 MiB chunks, under a limit of 256 MiB or
/// more.
pub const CHUNK_SHIFT: u32 = 22;
/// `1 << CHUNK_SHIFT`: the largest chunk.
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
/// The smallest chunk's shift (64 KiB chunks, under a limit below 4 MiB).
pub const MIN_CHUNK_SHIFT: u32 = 16;
/// Chunks in a slot of the smallest chunks (the bookkeeping's size).
const CHUNKS_PER_SLOT: usize = 1 << (SLOT_SHIFT - MIN_CHUNK_SHIFT);
/// Free chunks a heap keeps resident for reuse; more are purged.
pub const KEEP_RESIDENT: u32 = 2;
const NONE: u32 = u32::MAX;

const ACTIVE: u32 = 0;
const SEALED: u32 = 1;
const REUSABLE: u32 = 2;
/// Words of a slot's free map.
const MAP_WORDS: usize = CHUNKS_PER_SLOT / 64;
/// The low half of [`ContextHeap::life`]: in use by its worker.
const LIFE_ACTIVE: u64 = 0;
/// The low half of `life` once the slot is handed back.
const LIFE_RELEASED: u64 = u32::MAX as u64;

/// The low half of a [`ContextHeap::life`] value: the heap's state
/// ([`LIFE_ACTIVE`], the frontier plus one, or [`LIFE_RELEASED`]).
fn life_state(life: u64) -> u64 {
    life & LIFE_RELEASED
}

/// A [`ContextHeap::life`] value with its generation kept and `state` in
/// its low half.
fn life_with_state(life: u64, state: u64) -> u64 {
    (life & !LIFE_RELEASED) | state
}

static SPACE_ONCE: Once = Once::new();
static SPACE_BASE: AtomicUsize = AtomicUsize::new(0);
static SPACE_LEN: AtomicUsize = AtomicUsize::new(0);
static SLOT_USED: [AtomicBool; N_SLOTS] = [const { AtomicBool::new(false) }; N_SLOTS];
/// The bookkeeping of each slot ever used (made once, never freed), for
/// frees routed by address.
static SLOT_HEAP: [AtomicPtr<ContextHeap>; N_SLOTS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; N_SLOTS];

/// Whether `addr` lies in the context space. Two loads and a compare.
#[inline]
pub fn owns(addr: usize) -> bool {
    addr.wrapping_sub(SPACE_BASE.load(Ordering::Relaxed)) < SPACE_LEN.load(Ordering::Relaxed)
}

/// Slots the context space holds: [`N_SLOTS`], or fewer where the
/// reservation of them all was refused (set once, with the space).
static SPACE_SLOTS: AtomicUsize = AtomicUsize::new(0);

/// The chunks' shift for the process (set once, with the space).
static SPACE_CHUNK_SHIFT: AtomicU32 = AtomicU32::new(CHUNK_SHIFT);

/// The chunk shift for a process limit of `limit` bytes: the largest
/// chunk no more than a 64th of the limit, between 64 KiB and 4 MiB. A
/// worker holds its current chunk and keeps two free ones (`KEEP_RESIDENT`),
/// so at most 3/64 of the limit (under 5%) stays committed per worker
/// with no block in it; 4 MiB from a limit of 256 MiB up, as before.
pub fn chunk_shift_for(limit: usize) -> u32 {
    let sixty_fourth = (limit / 64).max(1);
    (usize::BITS - 1 - sixty_fourth.leading_zeros()).clamp(MIN_CHUNK_SHIFT, CHUNK_SHIFT)
}

/// Bytes per chunk in this process (4 MiB until the context space is
/// reserved).
pub fn chunk_size() -> usize {
    1 << SPACE_CHUNK_SHIFT.load(Ordering::Relaxed)
}

/// Reserves the context space: [`N_SLOTS`] slots (1 TiB) or, under an
/// address-space limit (`ulimit -v`), as many as a quarter of it holds
/// (one at least), then half as many each time the kernel refuses, down
/// to one. A process under such a limit has far less than a terabyte to
/// give, and with the whole space or nothing no runtime could start there.
fn reserve_space() -> Result<(), os::OsError> {
    let mut err = None;
    SPACE_ONCE.call_once(|| {
        let mut slots = N_SLOTS;
        if let Some(limit) = os::address_space_limit() {
            slots = slots.min(((limit / 4) >> SLOT_SHIFT).max(1));
        }
        loop {
            match os::reserve(slots << SLOT_SHIFT, CHUNK_SIZE) {
                Ok(p) => {
                    SPACE_CHUNK_SHIFT.store(
                        chunk_shift_for(crate::heap::process::limit()),
                        Ordering::Relaxed,
                    );
                    SPACE_BASE.store(p as usize, Ordering::Relaxed);
                    SPACE_SLOTS.store(slots, Ordering::Relaxed);
                    SPACE_LEN.store(slots << SLOT_SHIFT, Ordering::Release);
                    crate::heap::process::set_reclaimer(
                        crate::heap::process::Reclaimer::Context,
                        reclaim_kept,
                    );
                    return;
                }
                Err(_) if slots > 1 => slots /= 2,
                Err(e) => {
                    err = Some(e);
                    return;
                }
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None if SPACE_LEN.load(Ordering::Acquire) == 0 => Err(os::OsError {
            call: "mmap",
            errno: libc::ENOMEM,
        }),
        None => Ok(()),
    }
}

/// Per-chunk counters. `allocs` is written by the owner only (plain
/// store); `frees` by anyone (a compare-exchange: see [`ChunkMeta::floor`]);
/// `owner_frees` by the owner
/// only, and only while the chunk is its current one (plain store: most
/// frees are a task's own temporaries, and a locked add per free cost more
/// than the rest of the free). Empty iff sealed and
/// `frees + owner_frees == allocs`; `owner_frees` is final before the
/// chunk is sealed (the owner stops using it with the SeqCst store of
/// SEALED), so whoever sees SEALED sees its last value.
struct ChunkMeta {
    allocs: AtomicU32,
    /// Frees counted by other threads in the low half; in the high half
    /// an epoch, advanced when the chunk is pinned, so that a free that
    /// read the floor before the pin is never counted after it.
    frees: AtomicU64,
    owner_frees: AtomicU32,
    /// 0, or the chunk is *pinned* below this address: it was its worker's
    /// current chunk when a phase the rollback policy undid kept values
    /// (`ContextHeap::pin_current`). The blocks below it may be kept for
    /// the life of the process, so that part is never reused, and their
    /// frees are not counted: the counts cover the blocks from the floor
    /// up, and while the chunk is current the cursor starts over at the
    /// floor whenever they are all freed. A pinned chunk, once sealed, is
    /// never made free (its blocks below the floor may still be in use).
    /// Set by the owner only, raised only, cleared only with the slot.
    floor: AtomicUsize,
    state: AtomicU32,
    /// Chunks in this run (on the run's first chunk).
    run: AtomicU32,
    /// Pages are resident (committed and not purged since).
    resident: AtomicBool,
}

impl ChunkMeta {
    /// Starts a new use of this chunk (or run head): `run` chunks,
    /// `allocs` allocations made, none freed, in `state`. The state is
    /// stored last (SeqCst) so a freer that sees it sees the counts.
    fn restart(&self, run: u32, allocs: u32, state: u32) {
        debug_assert_eq!(
            self.floor.load(Ordering::Relaxed),
            0,
            "frostheap: a pinned context chunk was taken again"
        );
        self.run.store(run, Ordering::Relaxed);
        self.allocs.store(allocs, Ordering::Relaxed);
        self.frees.store(0, Ordering::Relaxed);
        self.owner_frees.store(0, Ordering::Relaxed);
        self.state.store(state, Ordering::SeqCst);
    }

    /// Frees counted so far, by anyone.
    fn freed(&self) -> u32 {
        self.frees.load(Ordering::SeqCst) as u32 + self.owner_frees.load(Ordering::Relaxed)
    }

    /// Whether every block counted here (from the floor up) is freed, and
    /// the count may start over: owner only, on its current chunk.
    fn counted_all_freed(&self) -> bool {
        self.frees.load(Ordering::Acquire) as u32 + self.owner_frees.load(Ordering::Relaxed)
            == self.allocs.load(Ordering::Relaxed)
    }

    /// Starts the counts over with no block counted (owner only, on its
    /// current chunk, when no counted block is live: no other thread can
    /// be counting a free of one). Keeps the epoch.
    fn recount(&self) {
        let epoch = self.frees.load(Ordering::Relaxed) & !(u32::MAX as u64);
        self.frees.store(epoch, Ordering::Relaxed);
        self.owner_frees.store(0, Ordering::Relaxed);
        self.allocs.store(0, Ordering::Relaxed);
    }
}

/// One worker's bump arena: the bookkeeping of one slot of the context
/// space, made once per slot and reused by each heap that takes the slot
/// (see the file comment).
pub struct ContextHeap {
    slot: usize,
    base: usize,
    /// log2 of the chunk size, the process's (set with `base`, never
    /// changed): `chunk index == (addr - base) >> shift`.
    shift: u32,
    /// The kernel thread id of a reclaimer purging this heap's kept chunks
    /// ([`ContextHeap::hold`]), of its worker retiring it, or of a thread
    /// handing its slot back; 0 when none. Never reset with the slot: the
    /// thread that hands a slot back lets it go first.
    held_by: AtomicU32,
    /// The owning worker's [`thread_token`] (0 until it starts).
    owner: AtomicUsize,
    // Owner-only state.
    cursor: Cell<usize>,
    limit: Cell<usize>,
    current: Cell<u32>,
    frontier: Cell<u32>,
    /// Whether the process limit refused a chunk since
    /// [`ContextHeap::take_limit_refused`] last looked: the caller of a
    /// refused allocation counts one process refusal, once, whatever it
    /// tried ([`ContextHeap::alloc`]).
    limit_refused: Cell<bool>,
    chunks: [ChunkMeta; CHUNKS_PER_SLOT],
    /// The free map: a set bit is a free chunk (committed at least once,
    /// empty, not in use). Set by anyone, cleared by the owner only.
    free: [AtomicU64; MAP_WORDS],
    /// Chunks in the free map.
    free_count: AtomicU32,
    /// Free chunks whose pages are resident.
    resident_free: AtomicU32,
    /// Bytes handed out since creation (owner writes, anyone reads).
    allocated: AtomicUsize,
    /// Chunks committed and resident now (in use, or free and kept).
    committed_chunks: AtomicUsize,
    /// Chunks pinned ([`ChunkMeta::floor`]), and the bytes below their
    /// floors when they were pinned (owner writes, anyone reads).
    pinned: AtomicU32,
    pinned_bytes: AtomicUsize,
    /// The heap's life: a generation in the high half (one per heap that
    /// took the slot) and, in the low half, [`LIFE_ACTIVE`], the frontier
    /// plus one once retired, or [`LIFE_RELEASED`].
    life: AtomicU64,
}

// SAFETY: the Cell fields are touched only by the owning worker thread (and
// by `new` before the heap is handed to it); everything other threads touch
// (frees, the free map, counters) is atomic.
unsafe impl Sync for ContextHeap {}
// SAFETY: as above; the slot's memory belongs to the heap.
unsafe impl Send for ContextHeap {}

impl ContextHeap {
    /// Takes a free slot of the context space and returns its heap, empty.
    /// The heap belongs to the caller until [`ContextHeap::retire`].
    pub fn new() -> Result<&'static ContextHeap, crate::error::Error> {
        reserve_space().map_err(|source| crate::error::Error::Os {
            context: "reserving the context space",
            source,
        })?;
        let slots = SPACE_SLOTS.load(Ordering::Relaxed);
        let slot = SLOT_USED[..slots]
            .iter()
            .position(|s| {
                s.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| {
                let why = if slots < N_SLOTS {
                    format!(
                        "at most {slots} context heaps alive at once: the address space held no more than {slots} of {N_SLOTS} 1 GiB slots{}",
                        os::address_space_limit().map_or(String::new(), |l| format!(
                            " (its limit, ulimit -v, is {l} bytes)"
                        ))
                    )
                } else {
                    format!("at most {N_SLOTS} context heaps alive at once")
                };
                crate::error::Error::invalid("workers", slots + 1, why)
            })?;
        let heap = match Self::of_slot(slot) {
            Some(h) => h,
            None => match Self::make(slot) {
                Ok(h) => h,
                Err(source) => {
                    SLOT_USED[slot].store(false, Ordering::Release);
                    return Err(crate::error::Error::Os {
                        context: "mapping a context heap's bookkeeping",
                        source,
                    });
                }
            },
        };
        heap.reset();
        Ok(heap)
    }

    /// The bookkeeping of `slot`, if the slot was ever used.
    fn of_slot(slot: usize) -> Option<&'static ContextHeap> {
        // SAFETY: SLOT_HEAP holds only pointers from `make`, valid for the
        // rest of the process.
        unsafe { SLOT_HEAP[slot].load(Ordering::Acquire).as_ref() }
    }

    /// Maps the bookkeeping of `slot` (first use of the slot).
    fn make(slot: usize) -> Result<&'static ContextHeap, os::OsError> {
        let len = core::mem::size_of::<ContextHeap>().next_multiple_of(os::page_size());
        let p = os::map_table(len)? as *mut ContextHeap;
        // SAFETY: the mapping is zeroed, writable, page-aligned and large
        // enough; all-zero bytes are a valid ContextHeap (atomics, cells
        // and integers, every one zero), whose two plain fields are set
        // here before anyone else can see it. It is never unmapped.
        unsafe {
            core::ptr::addr_of_mut!((*p).slot).write(slot);
            core::ptr::addr_of_mut!((*p).base)
                .write(SPACE_BASE.load(Ordering::Relaxed) + (slot << SLOT_SHIFT));
            core::ptr::addr_of_mut!((*p).shift).write(SPACE_CHUNK_SHIFT.load(Ordering::Relaxed));
            SLOT_HEAP[slot].store(p, Ordering::Release);
            Ok(&*p)
        }
    }

    /// Makes the slot's bookkeeping that of a new, empty heap (the caller
    /// has just taken the slot; its previous heap was released, so no
    /// block lives in it and its memory is decommitted).
    fn reset(&self) {
        // Chunks past the last heap's frontier were never touched since
        // the slot's bookkeeping was made or last reset (a slot of 64 KiB
        // chunks has 16,384 of them: 384 KiB of bookkeeping not faulted in).
        let used = self.frontier.get() as usize;
        self.owner.store(0, Ordering::Relaxed);
        self.cursor.set(0);
        self.limit.set(0);
        self.current.set(NONE);
        self.frontier.set(0);
        self.limit_refused.set(false);
        for c in &self.chunks[..used] {
            c.floor.store(0, Ordering::Relaxed);
            c.restart(1, 0, ACTIVE);
            c.resident.store(false, Ordering::Relaxed);
        }
        self.pinned.store(0, Ordering::Relaxed);
        for w in &self.free {
            w.store(0, Ordering::Relaxed);
        }
        self.free_count.store(0, Ordering::Relaxed);
        self.resident_free.store(0, Ordering::Relaxed);
        self.allocated.store(0, Ordering::Relaxed);
        self.committed_chunks.store(0, Ordering::Relaxed);
        let generation = (self.life.load(Ordering::Relaxed) >> 32) + 1;
        self.life
            .store(generation << 32 | LIFE_ACTIVE, Ordering::SeqCst);
    }

    /// Makes the calling thread the owner: the worker calls this once, on
    /// its own thread, before its first task.
    pub fn set_owner(&self) {
        self.owner.store(thread_token(), Ordering::Relaxed);
    }

    /// Where the cursor starts over in chunk `idx`: its floor, if pinned,
    /// else its first byte.
    fn start_of(&self, idx: u32) -> usize {
        let floor = self.chunks[idx as usize].floor.load(Ordering::Relaxed);
        floor.max(self.base + ((idx as usize) << self.shift))
    }

    /// Pins the current chunk below the cursor (see [`ChunkMeta::floor`]):
    /// after a phase the rollback policy undid kept values its tasks made,
    /// which may own blocks here, before the worker's next task. Without
    /// it, such a block kept the chunk from ever being empty: the cursor
    /// never started over, every later task's temporaries walked through
    /// the rest of the chunk, and the whole chunk (4 MiB) was kept. Now
    /// what is kept is the chunk below the cursor, and the rest is reused
    /// as before. (The chunks the phase filled and sealed are kept whole,
    /// as they are full.)
    ///
    /// # Safety
    /// 1. Called by the owning worker thread only.
    pub unsafe fn pin_current(&self) {
        let cur = self.current.get();
        if cur == NONE {
            return;
        }
        let c = &self.chunks[cur as usize];
        let floor = self.cursor.get();
        let below = floor - self.start_of(cur);
        if below == 0 {
            return;
        }
        if c.floor.load(Ordering::Relaxed) == 0 {
            self.pinned.fetch_add(1, Ordering::Relaxed);
        }
        self.pinned_bytes.fetch_add(below, Ordering::Relaxed);
        // The floor first, then a new epoch with nothing counted: every
        // block counted so far lies below the floor (it is the cursor), and
        // no free of one is counted from here on (see `free`).
        c.floor.store(floor, Ordering::SeqCst);
        let mut word = c.frees.load(Ordering::SeqCst);
        while let Err(now) = c.frees.compare_exchange_weak(
            word,
            ((word >> 32) + 1) << 32,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            word = now;
        }
        c.owner_frees.store(0, Ordering::Relaxed);
        c.allocs.store(0, Ordering::Relaxed);
    }

    /// Starts the current chunk over (at its floor, if pinned) when every
    /// block counted in it has been freed, by this thread or others: the
    /// worker calls it before a job, so that results main dropped since
    /// the last one (frees by another thread, which cannot move the
    /// cursor) leave their bytes to the next tasks instead of the cursor
    /// walking on.
    ///
    /// # Safety
    /// 1. Called by the owning worker thread only.
    pub unsafe fn reuse_current_if_freed(&self) {
        let cur = self.current.get();
        if cur == NONE {
            return;
        }
        let c = &self.chunks[cur as usize];
        if c.allocs.load(Ordering::Relaxed) != 0 && c.counted_all_freed() {
            c.recount();
            self.cursor.set(self.start_of(cur));
        }
    }

    /// Chunks pinned by [`ContextHeap::pin_current`], and the bytes below
    /// their floors: what values kept by rolled-back phases hold, with
    /// the holes between them.
    pub fn pinned(&self) -> (usize, usize) {
        (
            self.pinned.load(Ordering::Relaxed) as usize,
            self.pinned_bytes.load(Ordering::Relaxed),
        )
    }

    /// Bytes handed out since creation (the bump counter).
    #[inline]
    pub fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Bytes of chunks committed and resident now: in use, or free and
    /// kept for reuse (at most [`KEEP_RESIDENT`] chunks).
    pub fn committed(&self) -> usize {
        self.committed_chunks.load(Ordering::Relaxed) << self.shift
    }

    /// Bytes per chunk of this heap.
    #[inline]
    fn chunk(&self) -> usize {
        1 << self.shift
    }

    /// Chunks in the slot.
    fn n_chunks(&self) -> usize {
        1 << (SLOT_SHIFT - self.shift)
    }

    /// Whether the process limit refused a chunk since the last call;
    /// clears it. After a null [`ContextHeap::alloc`], the caller counts
    /// the refusal in the process's statistics (`count_refusal`) if this
    /// says so and nothing else serves the allocation — or leaves it to
    /// the heap it tries next, which counts its own.
    ///
    /// # Safety
    /// 1. Called by the owning worker thread only.
    pub unsafe fn take_limit_refused(&self) -> bool {
        self.limit_refused.replace(false)
    }

    /// First address of the slot.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Bump-allocates; null when the slot is exhausted or the process
    /// limit refuses the chunks it needs (then
    /// [`ContextHeap::take_limit_refused`] says so, and the refusal is
    /// not counted yet).
    ///
    /// # Safety
    /// 1. Called by the owning worker thread only.
    #[inline]
    pub unsafe fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        let p = round_up(self.cursor.get(), align);
        let end = p.wrapping_add(size.max(1));
        if end <= self.limit.get() && end > p {
            self.cursor.set(end);
            let c = &self.chunks[self.current.get() as usize];
            c.allocs
                .store(c.allocs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            self.allocated.store(
                self.allocated.load(Ordering::Relaxed) + (end - p),
                Ordering::Relaxed,
            );
            return p as *mut u8;
        }
        // SAFETY: forwarded (1).
        unsafe { self.alloc_slow(size, align) }
    }

    #[cold]
    unsafe fn alloc_slow(&self, size: usize, align: usize) -> *mut u8 {
        // A refusal noted by an earlier allocation that then succeeded
        // (a free chunk refused, a fresh one taken) is not this one's.
        self.limit_refused.set(false);
        if size > self.chunk() / 2 || align > self.chunk() / 2 {
            return self.alloc_run(size, align);
        }
        self.seal_current();
        let Some(idx) = self.take_chunk() else {
            return core::ptr::null_mut();
        };
        let start = self.base + ((idx as usize) << self.shift);
        self.current.set(idx);
        self.cursor.set(start);
        self.limit.set(start + self.chunk());
        // SAFETY: forwarded (1); the new chunk fits any request up to half
        // a chunk with alignment up to half a chunk.
        unsafe { self.alloc(size, align) }
    }

    /// A dedicated run of chunks for a large request.
    fn alloc_run(&self, size: usize, align: usize) -> *mut u8 {
        // Runs start chunk-aligned; a block aligned beyond a chunk could
        // start past the run's first chunk, where a free would not find the
        // run's counts. Such rare requests go to other memory.
        if align > self.chunk() {
            return core::ptr::null_mut();
        }
        let Some(bytes) = size.checked_add(align.saturating_sub(1)) else {
            return core::ptr::null_mut();
        };
        let k = bytes.div_ceil(self.chunk()).max(1);
        let Some(first) = self.take_free(k).or_else(|| self.take_fresh(k)) else {
            return core::ptr::null_mut();
        };
        let start = self.base + (first << self.shift);
        // One allocation, sealed at once: its free empties the run.
        self.chunks[first].restart(k as u32, 1, SEALED);
        self.allocated.store(
            self.allocated.load(Ordering::Relaxed) + k * self.chunk(),
            Ordering::Relaxed,
        );
        round_up(start, align) as *mut u8
    }

    /// Seals the current chunk; if it is already empty, it becomes free at
    /// once.
    fn seal_current(&self) {
        let cur = self.current.get();
        if cur == NONE {
            return;
        }
        self.current.set(NONE);
        self.limit.set(0);
        let c = &self.chunks[cur as usize];
        c.state.store(SEALED, Ordering::SeqCst);
        if c.freed() == c.allocs.load(Ordering::Relaxed) {
            self.make_reusable(cur);
        }
    }

    /// A free chunk (resident ones first), or the next fresh one.
    fn take_chunk(&self) -> Option<u32> {
        let idx = self.take_free(1).or_else(|| self.take_fresh(1))?;
        self.chunks[idx].restart(1, 0, ACTIVE);
        Some(idx as u32)
    }

    /// Takes `k` consecutive free chunks out of the free map (owner only);
    /// for one chunk, a resident one if there is one. Returns the first.
    fn take_free(&self, k: usize) -> Option<usize> {
        if (self.free_count.load(Ordering::Acquire) as usize) < k {
            return None;
        }
        // Other threads set bits, and only a reclaimer purging the kept
        // chunks ([`reclaim_kept`]) clears one besides this owner, for as
        // long as its purge takes: a run is taken by claiming its bits.
        let is_free = |i: usize| self.free[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0;
        let frontier = self.frontier.get() as usize;
        let mut tries = 0;
        let first = loop {
            let first = if k == 1 {
                let resident = (0..frontier)
                    .find(|&i| is_free(i) && self.chunks[i].resident.load(Ordering::Relaxed));
                resident.or_else(|| (0..frontier).find(|&i| is_free(i)))?
            } else {
                let mut run = 0;
                (0..frontier).find(|&i| {
                    run = if is_free(i) { run + 1 } else { 0 };
                    run == k
                })? + 1
                    - k
            };
            crate::sync::chaos();
            if self.claim_run(first, k) {
                break first;
            }
            // A reclaimer holds one of its chunks for a moment; another
            // run, or a fresh one after a few tries.
            tries += 1;
            if tries == 4 {
                return None;
            }
        };
        // Purged chunks were uncharged (make_reusable, purge_kept): their
        // pages come back as they are touched, so they are charged again
        // first.
        let purged_in_run = self.chunks[first..first + k]
            .iter()
            .filter(|c| !c.resident.load(Ordering::Relaxed))
            .count();
        if purged_in_run > 0
            && !crate::heap::process::charge_quiet(
                crate::heap::process::Kind::Context,
                purged_in_run * self.chunk(),
            )
            // Refused: the free chunks this heap keeps resident go back
            // first, then the other heaps' free memory (the context heaps'
            // kept chunks among it).
            && !self.charge_after_giving_back(purged_in_run * self.chunk())
        {
            self.unclaim_run(first, k);
            self.limit_refused.set(true);
            return None;
        }
        for c in &self.chunks[first..first + k] {
            if c.resident.swap(true, Ordering::Relaxed) {
                self.resident_free.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.committed_chunks.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.free_count.fetch_sub(k as u32, Ordering::AcqRel);
        Some(first)
    }

    /// Takes chunks `first..first + k` out of the free map, all or none:
    /// false if one of them is not there (a reclaimer holds it).
    fn claim_run(&self, first: usize, k: usize) -> bool {
        for i in first..first + k {
            let bit = 1 << (i % 64);
            if self.free[i / 64].fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
                self.unclaim_run(first, i - first);
                return false;
            }
        }
        true
    }

    /// Puts chunks `first..first + k`, claimed by [`ContextHeap::claim_run`],
    /// back into the free map.
    fn unclaim_run(&self, first: usize, k: usize) {
        for i in first..first + k {
            self.free[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
        }
    }

    /// Commits the next `k` never-used chunks of the slot; returns the
    /// first, marked resident. `None` when the slot is full.
    fn take_fresh(&self, k: usize) -> Option<usize> {
        let first = self.frontier.get() as usize;
        if first + k > self.n_chunks() {
            // A run larger than the process limit is the limit's refusal
            // whatever the slot holds.
            if k.saturating_mul(self.chunk()) > crate::heap::process::limit() {
                self.limit_refused.set(true);
            }
            return None;
        }
        let start = self.base + (first << self.shift);
        // Committed chunks count against the process limit (FROSTHEAP_MAX);
        // a refusal is counted once by the caller of the refused
        // allocation (`take_limit_refused`), not per chunk tried.
        if !crate::heap::process::charge_quiet(
            crate::heap::process::Kind::Context,
            k * self.chunk(),
        ) && !self.charge_after_giving_back(k * self.chunk())
        {
            self.limit_refused.set(true);
            return None;
        }
        // SAFETY: the chunks lie in our slot of the context space, unused.
        if unsafe { os::commit(start as *mut u8, k * self.chunk()) }.is_err() {
            crate::heap::process::release(crate::heap::process::Kind::Context, k * self.chunk());
            return None;
        }
        self.frontier.set((first + k) as u32);
        self.committed_chunks.fetch_add(k, Ordering::Relaxed);
        for c in &self.chunks[first..first + k] {
            c.resident.store(true, Ordering::Relaxed);
        }
        Some(first)
    }

    /// After the limit refused a charge of `bytes`: charges it again once
    /// the free chunks this heap keeps resident are purged, then once the
    /// reclaimers have given back the other heaps' free memory (the other
    /// context heaps' kept chunks among it: [`reclaim_kept`]). False when
    /// both are refused (nothing charged, no refusal counted).
    fn charge_after_giving_back(&self, bytes: usize) -> bool {
        use crate::heap::process::{charge_quiet, reclaim_and_charge, Kind};
        (self.purge_kept() > 0 && charge_quiet(Kind::Context, bytes))
            || reclaim_and_charge(Kind::Context, bytes)
    }

    /// Purges the free chunks the heap keeps resident for reuse and
    /// uncharges them; returns how many. The owner, or a reclaimer that
    /// holds the heap ([`ContextHeap::hold`]), which keeps its slot from
    /// being handed back: each chunk
    /// is claimed out of the free map while it is purged (the owner takes
    /// no chunk it cannot claim), and a run another thread is making
    /// reusable is not in the map yet (its own purge is `make_reusable`'s).
    /// The free map is read from its words, not up to the owner's
    /// frontier (the owner's alone): past the frontier no bit is set.
    fn purge_kept(&self) -> usize {
        if self.resident_free.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut purged = 0;
        for (w, word) in self.free[..self.n_chunks().div_ceil(64)].iter().enumerate() {
            let mut bits = word.load(Ordering::SeqCst);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let c = &self.chunks[i];
                if !c.resident.load(Ordering::Relaxed) {
                    continue;
                }
                crate::sync::chaos();
                if !self.claim_run(i, 1) {
                    continue; // taken, or another reclaimer's
                }
                // Read again once claimed: nobody else changes it now.
                if c.resident.load(Ordering::Relaxed) {
                    let start = self.base + (i << self.shift);
                    // SAFETY: the chunk is free and claimed: no live block
                    // lies in it, and nobody takes it until it is put back.
                    if unsafe { os::purge(start as *mut u8, self.chunk()) }.is_ok() {
                        c.resident.store(false, Ordering::Relaxed);
                        self.resident_free.fetch_sub(1, Ordering::AcqRel);
                        self.committed_chunks.fetch_sub(1, Ordering::Relaxed);
                        purged += 1;
                    }
                }
                self.unclaim_run(i, 1);
            }
        }
        if purged > 0 {
            crate::heap::process::release(
                crate::heap::process::Kind::Context,
                purged * self.chunk(),
            );
        }
        purged
    }

    /// Holds the heap: while held, its worker cannot retire it and its
    /// slot is not handed back ([`ContextHeap::release_if_retired`] holds
    /// it to do so), so a reclaimer may purge its kept chunks
    /// ([`reclaim_kept`]) until [`ContextHeap::unhold_and_look`]. False if
    /// another thread holds it; nothing here waits. A holder that is no
    /// thread of this process any more (it held the heap as another thread
    /// forked, and this is the child) has its hold taken over.
    fn hold(&self) -> bool {
        let me = os::gettid();
        // SeqCst, as the unhold: a free that finds the heap held leaves
        // the release to the holder, which counts the free chunks again
        // after it lets go (`release_if_retired`).
        match self
            .held_by
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(holder) => {
                os::tgkill(holder, 0).is_err()
                    && self
                        .held_by
                        .compare_exchange(holder, me, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
            }
        }
    }

    /// Ends a [`ContextHeap::hold`], then hands the slot back if the heap
    /// is retired and empty: a free that emptied its last chunk while the
    /// heap was held left that to the holder.
    fn unhold_and_look(&self) {
        self.held_by.store(0, Ordering::SeqCst);
        self.release_if_retired();
    }

    /// Holds the heap for its retirement, waiting for a reclaimer that
    /// holds it: its purge of a few chunks waits for nothing.
    fn hold_to_retire(&self) {
        while !self.hold() {
            os::yield_now();
        }
    }

    /// The run starting at chunk `idx` is empty: puts its chunks in the free
    /// map, purging those beyond the [`KEEP_RESIDENT`] allowance. Any
    /// thread; exactly one caller per emptied run gets past the state
    /// change. The last chunk freed of a retired heap hands its slot back.
    fn make_reusable(&self, idx: u32) {
        let head = &self.chunks[idx as usize];
        // A pinned chunk is never free: its blocks below the floor may be
        // in use for the life of the process (the floor was stored by the
        // owner before the SeqCst store of SEALED that the caller saw).
        if head.floor.load(Ordering::SeqCst) != 0 {
            return;
        }
        if head
            .state
            .compare_exchange(SEALED, REUSABLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let first = idx as usize;
        let run = head.run.load(Ordering::Relaxed) as usize;
        // Claim resident places within the allowance for the run's first
        // chunks; purge the rest (all of them, in a retired heap: no task
        // takes a chunk from it again).
        let retired = life_state(self.life.load(Ordering::Acquire)) != LIFE_ACTIVE;
        let keep = if retired {
            0
        } else {
            self.resident_free
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                    (r < KEEP_RESIDENT).then(|| (r + run as u32).min(KEEP_RESIDENT))
                })
                .map_or(0, |r| (KEEP_RESIDENT - r).min(run as u32) as usize)
        };
        if keep < run {
            let start = self.base + ((first + keep) << self.shift);
            let len = (run - keep) * self.chunk();
            // SAFETY: the run is empty: no live allocation lies in it, and
            // it is not in the free map yet, so nobody takes it meanwhile.
            let purged = unsafe { os::purge(start as *mut u8, len) }.is_ok();
            let mut uncharged = 0;
            for c in &self.chunks[first + keep..first + run] {
                if purged && c.resident.swap(false, Ordering::Relaxed) {
                    self.committed_chunks.fetch_sub(1, Ordering::Relaxed);
                    uncharged += self.chunk();
                }
            }
            // A purged chunk no longer counts against the process limit
            // (it was charged until the runtime dropped: a task that
            // allocated and freed 40 MiB left main refused at 64M with 2
            // MiB in use); take_free charges it again.
            if uncharged > 0 {
                crate::heap::process::release(crate::heap::process::Kind::Context, uncharged);
            }
            if !purged {
                // Still resident: counted as such.
                self.resident_free
                    .fetch_add((run - keep) as u32, Ordering::AcqRel);
            }
        }
        for (i, c) in self.chunks[first..first + run].iter().enumerate() {
            c.run.store(1, Ordering::Relaxed);
            c.state.store(REUSABLE, Ordering::Relaxed);
            let i = first + i;
            self.free[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
        }
        self.free_count.fetch_add(run as u32, Ordering::SeqCst);
        self.release_if_retired();
    }

    /// Frees a context block, from any thread.
    ///
    /// # Safety
    /// 1. `p` was allocated by this heap and not freed since.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8) {
        let idx = ((p as usize - self.base) >> self.shift) as u32;
        let c = &self.chunks[idx as usize];
        // The owner freeing into its current chunk: a plain count (only the
        // owner seals a chunk, so it is still unsealed after this store).
        // `current` is read only once the owner check passed (it is the
        // owner's Cell).
        if self.owner.load(Ordering::Relaxed) == thread_token() && self.current.get() == idx {
            // A block below the floor is not counted (the owner set it).
            if (p as usize) < c.floor.load(Ordering::Relaxed) {
                return;
            }
            let owner_frees = c.owner_frees.load(Ordering::Relaxed) + 1;
            // Every block of the current chunk freed (a task that dropped
            // its temporaries): start the chunk over, so the next task
            // reuses the same, cache-hot bytes instead of walking through
            // the whole chunk. No live block is left (from the floor up),
            // so no other thread can still count a free here (a stale
            // `frees` read only misses a reset).
            if owner_frees + c.frees.load(Ordering::Relaxed) as u32
                == c.allocs.load(Ordering::Relaxed)
            {
                c.recount();
                self.cursor.set(self.start_of(idx));
            } else {
                c.owner_frees.store(owner_frees, Ordering::Relaxed);
            }
            return;
        }
        // Counted unless the block lies below the floor. The floor is read
        // after the count word and before the count is stored, and a pin
        // stores the floor before it moves the epoch: a free counted in
        // the new epoch has read the new floor, and one counted in the old
        // epoch is wiped by the pin (ChunkMeta::floor).
        let mut word = c.frees.load(Ordering::SeqCst);
        loop {
            if (p as usize) < c.floor.load(Ordering::SeqCst) {
                return;
            }
            match c
                .frees
                .compare_exchange_weak(word, word + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        let frees = word as u32 + 1;
        if c.state.load(Ordering::SeqCst) == SEALED
            && frees + c.owner_frees.load(Ordering::Relaxed) == c.allocs.load(Ordering::Acquire)
        {
            self.make_reusable(idx);
        }
    }

    /// Grows the most recent allocation in place when it is at the cursor.
    ///
    /// # Safety
    /// 1. Owner thread only; `p` is a live context block of `old` bytes (of
    ///    this heap or another; another's is never grown).
    pub unsafe fn grow_in_place(&self, p: *mut u8, old: usize, new: usize) -> bool {
        let p = p as usize;
        let cur = self.current.get();
        // Only the latest block of the current chunk may grow, and only
        // within that chunk (its counts cover exactly the chunk).
        // (Wrapping: `p` may belong to another worker's slot.)
        let in_current = cur != NONE && p.wrapping_sub(self.base) >> self.shift == cur as usize;
        if in_current && p + old == self.cursor.get() && p + new <= self.limit.get() && new >= old {
            self.cursor.set(p + new);
            self.allocated.store(
                self.allocated.load(Ordering::Relaxed) + (new - old),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }

    /// Whether every allocation ever made here has been freed (owner
    /// thread, or after it retired the heap).
    pub fn is_empty(&self) -> bool {
        let cur = self.current.get();
        let current_empty = cur == NONE || {
            let c = &self.chunks[cur as usize];
            c.freed() == c.allocs.load(Ordering::Acquire)
        };
        let sealed_free = self.free_count.load(Ordering::Acquire) as usize
            + usize::from(cur != NONE)
            == self.frontier.get() as usize;
        // A pinned chunk's blocks below its floor are never counted freed.
        current_empty && sealed_free && self.pinned.load(Ordering::Relaxed) == 0
    }

    /// Ends the heap's use by its worker (on the worker's thread, as it
    /// exits). An empty heap hands its slot back now (decommitted); a heap
    /// whose blocks escaped into main's data stays until the last of them
    /// is freed, and that free hands the slot back.
    pub fn retire(&'static self) {
        self.seal_current();
        let life = self.life.load(Ordering::Relaxed);
        let frontier = self.frontier.get();
        // Not while a reclaimer purges its kept chunks: it may do so only
        // while the heap is live (reclaim_kept).
        self.hold_to_retire();
        self.life
            .store(life_with_state(life, frontier as u64 + 1), Ordering::SeqCst);
        // Either the look after the unhold sees every chunk free, or the
        // freer that frees the last one sees the retirement (both sides
        // SeqCst). The look also purges the free chunks the heap kept for
        // its next tasks: there are none now.
        self.unhold_and_look();
    }

    /// Of a retired heap (a worker exited while blocks its tasks returned
    /// live on): purges the free chunks it keeps resident, which no task
    /// will take again, and hands the slot back once every chunk it ever
    /// committed is free. Any thread, holding the heap meanwhile: a
    /// thread that cannot (another holds it) leaves both to the holder,
    /// which looks again as it lets go ([`ContextHeap::unhold_and_look`]).
    ///
    /// Until 2026-12-07 a retired heap kept up to [`KEEP_RESIDENT`] free
    /// chunks resident and charged for as long as one of its blocks
    /// lived, and the process limit's reclaimer skipped it: a runtime of
    /// eight workers dropped with results alive in main kept 4 MiB of
    /// `FROSTHEAP_MAX=64M` (two 1 MiB chunks in each heap that held
    /// results), and frees that emptied more chunks kept as many again.
    fn release_if_retired(&self) {
        loop {
            let life = self.life.load(Ordering::SeqCst);
            let state = life_state(life);
            if state == LIFE_ACTIVE || state == LIFE_RELEASED || !self.hold() {
                return;
            }
            // Held: the slot is not handed back under this purge, and
            // the heap, retired, stays so (only a release, which holds
            // it, changes its life).
            self.purge_kept();
            let free = self.free_count.load(Ordering::SeqCst);
            if free as u64 + 1 == state {
                self.release(life, state);
                return;
            }
            self.held_by.store(0, Ordering::SeqCst);
            // A free counted while the heap was held found it held and
            // left the look to this thread.
            if self.free_count.load(Ordering::SeqCst) == free {
                return;
            }
        }
    }

    /// Hands the slot back: the heap is retired with every chunk free, and
    /// the caller holds it (and lets it go here).
    fn release(&self, life: u64, state: u64) {
        // One generation only: a thread finishing a free late never
        // releases the slot's next heap.
        let released = life_with_state(life, LIFE_RELEASED);
        if self
            .life
            .compare_exchange(life, released, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.held_by.store(0, Ordering::SeqCst);
            return;
        }
        let len = ((state - 1) as usize) << self.shift;
        // What is still charged: the chunks not purged (each purge, done
        // before its chunks were counted free, released its own).
        let charged = self.committed_chunks.swap(0, Ordering::Relaxed) * self.chunk();
        if len > 0 {
            // SAFETY: every chunk of the slot is free: nothing lives in it.
            let _ = unsafe { os::decommit(self.base as *mut u8, len) };
        }
        if charged > 0 {
            crate::heap::process::release(crate::heap::process::Kind::Context, charged);
        }
        // Released: whoever holds the heap next finds it so and leaves it.
        self.held_by.store(0, Ordering::SeqCst);
        // Last: from here on the slot may be taken (and reset) again.
        SLOT_USED[self.slot].store(false, Ordering::Release);
    }
}

/// Bytes of the free chunks the context heaps keep resident for reuse
/// (at most [`KEEP_RESIDENT`] a heap): committed and charged, holding no
/// block. The rest of what the context heaps have committed are chunks
/// that hold a live block, or a worker's current chunk; a bump arena
/// reuses a chunk only once it is empty, so each counts whole as in use
/// (`frostheap::stats()`, the out-of-memory line). Reads atomics only, of
/// every slot ever used: it allocates nothing (the out-of-memory line
/// calls it inside the allocator), and a slot being handed back may be
/// read a moment stale.
pub fn kept_free_bytes() -> usize {
    let slots = SPACE_SLOTS.load(Ordering::Acquire);
    (0..slots)
        .filter_map(ContextHeap::of_slot)
        .filter(|h| life_state(h.life.load(Ordering::Relaxed)) != LIFE_RELEASED)
        .map(|h| (h.resident_free.load(Ordering::Relaxed) as usize) << h.shift)
        .sum()
}

/// The process limit's reclaimer for the context heaps
/// (`process::Reclaimer::Context`, registered with the context space), and
/// part of [`crate::trim`]: purges and uncharges the free chunks every
/// live context heap keeps resident for reuse (at most [`KEEP_RESIDENT`]
/// a heap), skipping a heap another reclaimer holds. Without it a
/// worker's kept chunks counted against `FROSTHEAP_MAX` until that worker
/// itself was refused: other heaps were refused with up to two chunks a
/// worker committed and holding nothing (16 MiB with two workers, 512 MiB
/// with 64). Waits for nothing and allocates nothing (it runs inside the
/// allocator, from a refused charge). The heaps of exited workers, kept
/// for their escaped blocks, keep no free chunk once they are retired
/// ([`ContextHeap::release_if_retired`]); one made free in the instant of
/// the retirement is purged here too. Returns the bytes uncharged.
pub fn reclaim_kept() -> usize {
    let slots = SPACE_SLOTS.load(Ordering::Acquire);
    let mut bytes = 0;
    for h in (0..slots).filter_map(ContextHeap::of_slot) {
        if h.resident_free.load(Ordering::Acquire) == 0 || !h.hold() {
            continue;
        }
        // Held: a live heap stays live (its worker retires it only once
        // it holds it), a retired one keeps its slot (handed back only
        // by a thread that holds it), until the unhold.
        if life_state(h.life.load(Ordering::SeqCst)) != LIFE_RELEASED {
            bytes += h.purge_kept() << h.shift;
        }
        h.unhold_and_look();
    }
    bytes
}

/// Frees a block anywhere in the context space, from any thread.
///
/// # Safety
/// 1. `p` is a live context block ([`owns`] is true for it).
pub unsafe fn free(p: *mut u8) {
    let slot = (p as usize - SPACE_BASE.load(Ordering::Relaxed)) >> SLOT_SHIFT;
    // A live block's slot has its bookkeeping (made when the slot was first
    // taken, never freed).
    if let Some(h) = ContextHeap::of_slot(slot) {
        // SAFETY: forwarded (1).
        unsafe { h.free(p) }
    }
}
