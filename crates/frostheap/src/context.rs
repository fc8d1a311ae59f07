//! Context heaps: one bump arena per runtime worker.
//!
//! All context heaps live in one reservation (the *context space*) cut into
//! 1 GiB slots, one per worker, so "is this a context address, and whose"
//! is a subtraction and a shift. A slot is cut into 4 MiB *chunks*,
//! committed when first used.
//!
//! Allocation bumps a cursor through the current chunk and counts the
//! allocation in the chunk (a plain store: only the owning worker
//! allocates). A free, from any thread, increments the chunk's atomic free
//! count. A chunk the owner has moved past is *sealed*; when a sealed
//! chunk's frees equal its allocations it is empty, and whoever sees that
//! first (the last freer, or the owner at sealing) pushes it on the slot's
//! reuse stack: reuse is O(1), with no scan. Results that escape a task
//! keep their chunk non-empty, so nothing is copied and nothing dangles;
//! the chunk is reused once main drops them.
//!
//! Requests of more than half a chunk take a run of fresh chunks. A slot
//! that runs out makes the allocation fail; the global allocator then falls
//! back to system memory.
//!
//! Chunks on the reuse stack beyond [`KEEP_RESIDENT`] are purged
//! (`MADV_DONTNEED`), so idle contexts do not pin memory.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Once;

use crate::os;
use crate::region::round_up;
use crate::sync::thread_token;

/// Bytes per context slot (virtual).
pub const SLOT_SHIFT: u32 = 30;
/// Number of slots in the context space.
pub const N_SLOTS: usize = 1024;
/// Bytes per chunk.
pub const CHUNK_SHIFT: u32 = 22;
/// `1 << CHUNK_SHIFT`.
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
const CHUNKS_PER_SLOT: usize = 1 << (SLOT_SHIFT - CHUNK_SHIFT);
/// Empty chunks kept resident for reuse; more are purged.
pub const KEEP_RESIDENT: u32 = 2;
const NONE: u32 = u32::MAX;

const ACTIVE: u32 = 0;
const SEALED: u32 = 1;
const REUSABLE: u32 = 2;

static SPACE_ONCE: Once = Once::new();
static SPACE_BASE: AtomicUsize = AtomicUsize::new(0);
static SPACE_LEN: AtomicUsize = AtomicUsize::new(0);
static SLOT_USED: [AtomicBool; N_SLOTS] = [const { AtomicBool::new(false) }; N_SLOTS];
/// Every live context heap by slot, for frees routed by address.
static SLOT_HEAP: [core::sync::atomic::AtomicPtr<ContextHeap>; N_SLOTS] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; N_SLOTS];

/// Whether `addr` lies in the context space. Two loads and a compare.
#[inline]
pub fn owns(addr: usize) -> bool {
    addr.wrapping_sub(SPACE_BASE.load(Ordering::Relaxed)) < SPACE_LEN.load(Ordering::Relaxed)
}

fn reserve_space() -> Result<(), os::OsError> {
    let mut err = None;
    SPACE_ONCE.call_once(|| match os::reserve(N_SLOTS << SLOT_SHIFT, CHUNK_SIZE) {
        Ok(p) => {
            SPACE_BASE.store(p as usize, Ordering::Relaxed);
            SPACE_LEN.store(N_SLOTS << SLOT_SHIFT, Ordering::Release);
        }
        Err(e) => err = Some(e),
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
/// store); `frees` by anyone (atomic add); `owner_frees` by the owner
/// only, and only while the chunk is its current one (plain store: most
/// frees are a task's own temporaries, and a locked add per free cost more
/// than the rest of the free). Empty iff sealed and
/// `frees + owner_frees == allocs`; `owner_frees` is final before the
/// chunk is sealed (the owner stops using it with the SeqCst store of
/// SEALED), so whoever sees SEALED sees its last value.
struct ChunkMeta {
    allocs: AtomicU32,
    frees: AtomicU32,
    owner_frees: AtomicU32,
    state: AtomicU32,
    /// Chunks in this run (on the run's first chunk).
    run: AtomicU32,
    /// Reuse-stack link.
    next: AtomicU32,
    /// Pages are resident (not purged since last use).
    resident: AtomicBool,
    /// Committed at least once.
    committed: AtomicBool,
}

impl ChunkMeta {
    /// Starts a new use of this chunk (or run head): `run` chunks,
    /// `allocs` allocations made, none freed, in `state`. The state is
    /// stored last (SeqCst) so a freer that sees it sees the counts.
    fn restart(&self, run: u32, allocs: u32, state: u32) {
        self.run.store(run, Ordering::Relaxed);
        self.allocs.store(allocs, Ordering::Relaxed);
        self.frees.store(0, Ordering::Relaxed);
        self.owner_frees.store(0, Ordering::Relaxed);
        self.state.store(state, Ordering::SeqCst);
    }

    /// Frees counted so far, by anyone.
    fn freed(&self) -> u32 {
        self.frees.load(Ordering::SeqCst) + self.owner_frees.load(Ordering::Relaxed)
    }
}

/// One worker's bump arena.
pub struct ContextHeap {
    slot: usize,
    base: usize,
    /// The owning worker's [`thread_token`] (0 until it starts).
    owner: AtomicUsize,
    // Owner-only state.
    cursor: Cell<usize>,
    limit: Cell<usize>,
    current: Cell<u32>,
    frontier: Cell<u32>,
    chunks: Box<[ChunkMeta]>,
    /// Reuse stack (chunk indices); pushed by anyone, popped by the owner.
    reuse: AtomicU32,
    resident_reusable: AtomicU32,
    /// Bytes handed out since creation (owner writes, anyone reads).
    allocated: AtomicUsize,
    /// Chunks committed now.
    committed_chunks: AtomicUsize,
}

// SAFETY: the Cell fields are touched only by the owning worker thread;
// everything other threads touch (frees, the reuse stack, counters) is
// atomic.
unsafe impl Sync for ContextHeap {}
// SAFETY: as above; the slot's memory belongs to the heap.
unsafe impl Send for ContextHeap {}

impl ContextHeap {
    /// Takes a free slot of the context space.
    pub fn new() -> Result<Box<ContextHeap>, crate::error::Error> {
        reserve_space().map_err(|source| crate::error::Error::Os {
            context: "reserving the context space",
            source,
        })?;
        let slot = SLOT_USED
            .iter()
            .position(|s| {
                s.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| {
                crate::error::Error::invalid(
                    "workers",
                    N_SLOTS + 1,
                    format!("at most {N_SLOTS} context heaps alive at once"),
                )
            })?;
        let base = SPACE_BASE.load(Ordering::Relaxed) + (slot << SLOT_SHIFT);
        let chunks = (0..CHUNKS_PER_SLOT)
            .map(|_| ChunkMeta {
                allocs: AtomicU32::new(0),
                frees: AtomicU32::new(0),
                owner_frees: AtomicU32::new(0),
                state: AtomicU32::new(ACTIVE),
                run: AtomicU32::new(1),
                next: AtomicU32::new(NONE),
                resident: AtomicBool::new(false),
                committed: AtomicBool::new(false),
            })
            .collect();
        let heap = Box::new(ContextHeap {
            slot,
            base,
            owner: AtomicUsize::new(0),
            cursor: Cell::new(0),
            limit: Cell::new(0),
            current: Cell::new(NONE),
            frontier: Cell::new(0),
            chunks,
            reuse: AtomicU32::new(NONE),
            resident_reusable: AtomicU32::new(0),
            allocated: AtomicUsize::new(0),
            committed_chunks: AtomicUsize::new(0),
        });
        SLOT_HEAP[slot].store(
            &*heap as *const ContextHeap as *mut ContextHeap,
            Ordering::Release,
        );
        Ok(heap)
    }

    /// Makes the calling thread the owner: the worker calls this once, on
    /// its own thread, before its first task.
    pub fn set_owner(&self) {
        self.owner.store(thread_token(), Ordering::Relaxed);
    }

    /// Bytes handed out since creation (the bump counter).
    #[inline]
    pub fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Bytes of chunks committed now.
    pub fn committed(&self) -> usize {
        self.committed_chunks.load(Ordering::Relaxed) * CHUNK_SIZE
    }

    /// First address of the slot.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Bump-allocates; null when the slot is exhausted.
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
        if size > CHUNK_SIZE / 2 || align > CHUNK_SIZE / 2 {
            return self.alloc_run(size, align);
        }
        self.seal_current();
        let Some(idx) = self.take_chunk() else {
            return core::ptr::null_mut();
        };
        let start = self.base + ((idx as usize) << CHUNK_SHIFT);
        self.current.set(idx);
        self.cursor.set(start);
        self.limit.set(start + CHUNK_SIZE);
        // SAFETY: forwarded (1); the new chunk fits any request up to half
        // a chunk with alignment up to half a chunk.
        unsafe { self.alloc(size, align) }
    }

    /// A dedicated run of fresh chunks for a large request.
    fn alloc_run(&self, size: usize, align: usize) -> *mut u8 {
        // Runs start chunk-aligned; a block aligned beyond a chunk could
        // start past the run's first chunk, where a free would not find the
        // run's counts. Such rare requests go to system memory.
        if align > CHUNK_SIZE {
            return core::ptr::null_mut();
        }
        let Some(bytes) = size.checked_add(align.saturating_sub(1)) else {
            return core::ptr::null_mut();
        };
        let k = bytes.div_ceil(CHUNK_SIZE).max(1);
        let Some(first) = self.take_fresh(k) else {
            return core::ptr::null_mut();
        };
        let start = self.base + (first << CHUNK_SHIFT);
        // One allocation, sealed at once: its free empties the run.
        self.chunks[first].restart(k as u32, 1, SEALED);
        self.allocated.store(
            self.allocated.load(Ordering::Relaxed) + k * CHUNK_SIZE,
            Ordering::Relaxed,
        );
        round_up(start, align) as *mut u8
    }

    /// Seals the current chunk; if it is already empty, it becomes
    /// reusable at once.
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

    /// Pops a reusable chunk, or commits the next fresh one.
    fn take_chunk(&self) -> Option<u32> {
        let mut top = self.reuse.load(Ordering::Acquire);
        while top != NONE {
            let next = self.chunks[top as usize].next.load(Ordering::Relaxed);
            // Only the owner pops, so the classic ABA cannot happen.
            match self
                .reuse
                .compare_exchange_weak(top, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let c = &self.chunks[top as usize];
                    let run = c.run.load(Ordering::Relaxed);
                    if c.resident.load(Ordering::Relaxed) {
                        self.resident_reusable.fetch_sub(1, Ordering::Relaxed);
                    }
                    if run > 1 {
                        // Use the first chunk; the rest goes back as a run.
                        let rest = &self.chunks[top as usize + 1];
                        rest.run.store(run - 1, Ordering::Relaxed);
                        rest.resident
                            .store(c.resident.load(Ordering::Relaxed), Ordering::Relaxed);
                        if rest.resident.load(Ordering::Relaxed) {
                            self.resident_reusable.fetch_add(1, Ordering::Relaxed);
                        }
                        rest.state.store(REUSABLE, Ordering::Relaxed);
                        self.push_reuse(top + 1);
                    }
                    c.resident.store(true, Ordering::Relaxed);
                    c.restart(1, 0, ACTIVE);
                    return Some(top);
                }
                Err(t) => top = t,
            }
        }
        let idx = self.take_fresh(1)?;
        self.chunks[idx].restart(1, 0, ACTIVE);
        Some(idx as u32)
    }

    /// Commits the next `k` never-used chunks of the slot; returns the
    /// first, marked committed and resident. `None` when the slot is full.
    fn take_fresh(&self, k: usize) -> Option<usize> {
        let first = self.frontier.get() as usize;
        if first + k > CHUNKS_PER_SLOT {
            return None;
        }
        let start = self.base + (first << CHUNK_SHIFT);
        // Committed chunks count against the process limit (FROSTHEAP_MAX).
        if !crate::heap::process::charge(crate::heap::process::Kind::Context, k * CHUNK_SIZE) {
            return None;
        }
        // SAFETY: the chunks lie in our slot of the context space, unused.
        if unsafe { os::commit(start as *mut u8, k * CHUNK_SIZE) }.is_err() {
            crate::heap::process::release(crate::heap::process::Kind::Context, k * CHUNK_SIZE);
            return None;
        }
        self.frontier.set((first + k) as u32);
        self.committed_chunks.fetch_add(k, Ordering::Relaxed);
        let c = &self.chunks[first];
        c.committed.store(true, Ordering::Relaxed);
        c.resident.store(true, Ordering::Relaxed);
        Some(first)
    }

    fn make_reusable(&self, idx: u32) {
        let c = &self.chunks[idx as usize];
        if c.state
            .compare_exchange(SEALED, REUSABLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        if self.resident_reusable.load(Ordering::Relaxed) >= KEEP_RESIDENT {
            let start = self.base + ((idx as usize) << CHUNK_SHIFT);
            let len = c.run.load(Ordering::Relaxed) as usize * CHUNK_SIZE;
            // SAFETY: the run is empty: no live allocation lies in it.
            if unsafe { os::purge(start as *mut u8, len) }.is_ok() {
                c.resident.store(false, Ordering::Relaxed);
            }
        }
        if c.resident.load(Ordering::Relaxed) {
            self.resident_reusable.fetch_add(1, Ordering::Relaxed);
        }
        self.push_reuse(idx);
    }

    fn push_reuse(&self, idx: u32) {
        let mut top = self.reuse.load(Ordering::Relaxed);
        loop {
            self.chunks[idx as usize].next.store(top, Ordering::Relaxed);
            match self
                .reuse
                .compare_exchange_weak(top, idx, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(t) => top = t,
            }
        }
    }

    /// Frees a context block, from any thread.
    ///
    /// # Safety
    /// 1. `p` was allocated by this heap and not freed since.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8) {
        let idx = ((p as usize - self.base) >> CHUNK_SHIFT) as u32;
        let c = &self.chunks[idx as usize];
        // The owner freeing into its current chunk: a plain count (only the
        // owner seals a chunk, so it is still unsealed after this store).
        // `current` is read only once the owner check passed (it is the
        // owner's Cell).
        if self.owner.load(Ordering::Relaxed) == thread_token() && self.current.get() == idx {
            let owner_frees = c.owner_frees.load(Ordering::Relaxed) + 1;
            // Every block of the current chunk freed (a task that dropped
            // its temporaries): start the chunk over, so the next task
            // reuses the same, cache-hot bytes instead of walking through
            // the whole chunk. No live block is left, so no other thread
            // can still count a free here (a stale `frees` read only
            // misses a reset).
            if owner_frees + c.frees.load(Ordering::Relaxed) == c.allocs.load(Ordering::Relaxed) {
                c.frees.store(0, Ordering::Relaxed);
                c.owner_frees.store(0, Ordering::Relaxed);
                c.allocs.store(0, Ordering::Relaxed);
                self.cursor.set(self.base + ((idx as usize) << CHUNK_SHIFT));
            } else {
                c.owner_frees.store(owner_frees, Ordering::Relaxed);
            }
            return;
        }
        let frees = c.frees.fetch_add(1, Ordering::SeqCst) + 1;
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
        let in_current = cur != NONE && p.wrapping_sub(self.base) >> CHUNK_SHIFT == cur as usize;
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

    /// Whether every allocation ever made here has been freed.
    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(|c| {
            c.state.load(Ordering::Acquire) == REUSABLE
                || !c.committed.load(Ordering::Relaxed)
                || c.freed() == c.allocs.load(Ordering::Acquire)
        })
    }
}

impl ContextHeap {
    /// Ends the heap's use by its worker. An empty heap returns its slot
    /// (decommitted) for reuse; a heap whose blocks escaped into main's
    /// data is leaked, so those blocks stay valid (its chunks are purged as
    /// they empty).
    pub fn retire(self: Box<Self>) {
        if self.is_empty() {
            drop(self);
        } else {
            Box::leak(self);
        }
    }
}

impl Drop for ContextHeap {
    fn drop(&mut self) {
        let len = (self.frontier.get() as usize) << CHUNK_SHIFT;
        if len > 0 {
            // SAFETY: the heap is dropped only when empty (see `retire`):
            // nothing lives in the slot any more.
            let _ = unsafe { os::decommit(self.base as *mut u8, len) };
            crate::heap::process::release(crate::heap::process::Kind::Context, len);
        }
        SLOT_HEAP[self.slot].store(core::ptr::null_mut(), Ordering::Release);
        SLOT_USED[self.slot].store(false, Ordering::Release);
    }
}

/// Frees a block anywhere in the context space, from any thread.
///
/// # Safety
/// 1. `p` is a live context block ([`owns`] is true for it).
pub unsafe fn free(p: *mut u8) {
    let slot = (p as usize - SPACE_BASE.load(Ordering::Relaxed)) >> SLOT_SHIFT;
    let heap = SLOT_HEAP[slot].load(Ordering::Acquire);
    // SAFETY: a slot with live blocks keeps its heap registered (see Drop:
    // a heap with live blocks is leaked, not unregistered).
    if let Some(h) = unsafe { heap.as_ref() } {
        // SAFETY: forwarded (1).
        unsafe { h.free(p) }
    }
}
