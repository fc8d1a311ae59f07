//! A thread's cache of blocks of *other* thread heaps that it freed, which
//! it hands out again for its own allocations of the same class (when its
//! current span of the class is dry, before a refill) instead of sending
//! them back to their heaps.
//!
//! On the remote path ([`super::remote`]) a block freed by a thread other
//! than its owner costs one or two atomic ORs on lines the owner also
//! reads, a cache-line transfer when the owner collects it and another
//! when the owner hands it out again. Where threads free one another's
//! blocks at random (a server; the `larson` case of the `threads`
//! benchmark) that was half of frostheap's time. jemalloc's thread caches
//! take any block a thread frees, whoever made it, and hand it out again
//! on that thread: the block's line, which the freer has just used, stays
//! in its core, and nothing is written anywhere else. This cache does the
//! same for blocks of **thread heaps** only:
//!
//! - never a main-heap block: a runtime freezes the main heap, and a
//!   thread handed a frozen block would fault writing it;
//! - never on a runtime worker inside a phase (it allocates from its
//!   context heap: its heap word is null, so neither path looks here);
//! - only blocks aligned to 16 are taken and only requests aligned to at
//!   most 16 are served.
//!
//! **Counting.** A cached block stays live in its own heap's statistics
//! until it goes back there. The cache counts the bytes it holds
//! ([`RemoteCache::bytes`], its classes' sizes), and
//! `frostheap::stats()` takes them off the thread heaps' bytes in use, so
//! the process figures stay exact: a block is cached under its class in
//! its heap's class map, which is the size its heap counts, whatever the
//! size it was asked for (a block shrunk in place by `realloc`, or one a
//! heap lent from a larger class). The limit is not involved: it counts
//! commits.
//!
//! **Bounds.** Each class holds at most [`CAP`] blocks and [`CAP_BYTES`]
//! bytes, and classes above 8 KiB none, so a thread holds at most 338 KiB
//! of other heaps' memory (32 classes, all full), typically a few KiB; a
//! free into a full class takes the remote path. The cache empties when its
//! thread exits (`global::heaps::detach`), sorted, so that blocks sharing a
//! word of their heap's remote-free bitmap are published with one atomic
//! OR (`Remote::free_sorted`); a heap adopted after a `fork` keeps the
//! cache it had, whose blocks are still live.
//!
//! **Deep classes, with many thread heaps.** While [`DEEP_FROM_HEAPS`] or
//! more thread heaps are live, a class the thread *allocates* from (its
//! first pop since the count crossed that line) becomes deep: up to
//! [`DEEP_CAP`] blocks and [`DEEP_CAP_BYTES`] bytes, the classes made deep
//! adding at most [`DEEP_EXTRA`] bytes to the shallow bounds a thread. A
//! block another thread freed goes back to one of that many heaps, each
//! of whose classes keeps the most blocks it ever had; kept by the thread
//! that freed it, it serves that thread's next allocation instead (the
//! `threads` benchmark's larson case with eight threads, C program: a peak
//! of 27.7 MB became 22.1 MB; with four, 12.8 MB became 11.9 MB; see
//! docs/threads.md). With two thread heaps a deep cache made that peak
//! 11% higher (the other heap's blocks, taken before those the thread's
//! own heap got back), hence the line. A thread that only frees (a
//! consumer) never pops, so its classes stay shallow: it would otherwise
//! keep four times as much of its producer's memory for good. A deep class
//! stays deep until its thread exits (the drain makes every class shallow
//! again), whatever the count does meanwhile.
//!
//! **Medium classes, with two or three thread heaps.** While
//! [`MEDIUM_FROM_HEAPS`] or more thread heaps are live, a shallow class the
//! thread pops from while it is full becomes medium: up to [`MEDIUM_CAP`]
//! blocks and [`MEDIUM_CAP_BYTES`] bytes, within the same [`DEEP_EXTRA`]
//! (every class of 16 B – 1 KiB medium adds 160 KiB). A full class that is
//! also allocated from is one the thread frees other heaps' blocks into
//! faster than it takes them out; there every free past the cap takes the
//! remote path, a cross-core line or two per block (the larson case with
//! two threads: one free of other heaps' blocks in 14 took it, one in 56
//! with medium classes; C program, 24 alternating rounds, 0.91× the time,
//! peak within its spread). Not on a thread that may run on one CPU only
//! (its affinity mask, read once per epoch of the count): with two
//! threads sharing a CPU, a cache that large made larson 1.33× slower (no
//! line crosses cores there, and the thread's allocations take more of
//! the other heap's blocks, colder than its own). Not from a pop that
//! finds room: a thread that frees a little of the previous threads'
//! memory and allocates a little (the `spawn` case) would keep more of it
//! until it exits (a medium class at every pop: peak +3%). Nor on a
//! consumer, which never pops. With the caps of every class raised to
//! the medium ones, the producer/consumer peaks rose 4–7% and `spawn`'s
//! with eight threads 10% (see docs/threads.md).
//!
//! **Double frees.** Every block the cache holds carries a mark in its
//! second word; a free of a block with the mark scans its class and
//! reports a double free, as the remote path's bitmap does.
//!
//! Only the owning thread touches a cache (`Cell`s), except `bytes`, which
//! statistics read.

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::class::{is_fine_only, CLASS_SIZE, N_CLASSES};
use super::page::{invalid_free, Block};

/// Blocks per class at most.
pub const CAP: u32 = 32;
/// Bytes per class at most: large classes hold fewer blocks, and classes
/// above half of it none.
pub const CAP_BYTES: u32 = 16 << 10;

/// Blocks per deep class at most (see the module documentation).
pub const DEEP_CAP: u32 = 128;
/// Bytes per deep class at most.
pub const DEEP_CAP_BYTES: u32 = 64 << 10;
/// Bytes the medium and deep classes of one cache add to their shallow
/// bounds, at most: with the shallow classes' 338 KiB, a thread holds at
/// most 850 KiB of other heaps' memory. Enough for every class from 16 B
/// to 1 KiB deep (480 KiB more than their shallow caps, 656 KiB in all):
/// in larson with eight threads (C program), 384 KiB (most of them) took
/// the peak 15% below the shallow caches', 512 KiB 20%, 768 KiB no
/// further.
pub const DEEP_EXTRA: usize = 512 << 10;
/// Live thread heaps from which classes become deep (a deep class that
/// does not fit in [`DEEP_EXTRA`] goes medium if that fits).
pub const DEEP_FROM_HEAPS: usize = 4;

/// Blocks per medium class at most (see the module documentation).
pub const MEDIUM_CAP: u32 = 64;
/// Bytes per medium class at most.
pub const MEDIUM_CAP_BYTES: u32 = 32 << 10;
/// Live thread heaps from which classes become medium, on a thread that
/// may run on more than one CPU.
pub const MEDIUM_FROM_HEAPS: usize = 2;

/// A class's depth: its cap is [`CLASS_CAP`] plus its level's extra.
pub(crate) const SHALLOW: u8 = 0;
pub(crate) const MEDIUM: u8 = 1;
pub(crate) const DEEP: u8 = 2;

/// Live thread heaps (attached and not given up), kept by
/// `global::heaps`.
static LIVE_HEAPS: AtomicUsize = AtomicUsize::new(0);
/// Bumped whenever [`LIVE_HEAPS`] crosses [`DEEP_FROM_HEAPS`], either way:
/// a class looks at the count again at its first pop after a bump.
static EPOCH: AtomicU32 = AtomicU32::new(0);
/// A class's `seen` before its first pop.
const NEVER: u32 = u32::MAX;

/// A thread heap was attached (a fresh one built or an abandoned one
/// adopted).
pub(crate) fn heap_attached() {
    if LIVE_HEAPS.fetch_add(1, Ordering::Relaxed) + 1 == DEEP_FROM_HEAPS {
        EPOCH.fetch_add(1, Ordering::Relaxed);
    }
}

/// A thread heap was given up (its thread exits).
pub(crate) fn heap_detached() {
    let was = LIVE_HEAPS.fetch_sub(1, Ordering::Relaxed);
    crate::sync::invariant!(was > 0, "more thread heaps given up than attached");
    if was == DEEP_FROM_HEAPS {
        EPOCH.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sets the count of live thread heaps (a `fork` child, whose other
/// threads' heaps were all given up at once).
pub(crate) fn set_live_heaps(n: usize) {
    LIVE_HEAPS.store(n, Ordering::Relaxed);
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Live thread heaps, as the count stands.
pub(crate) fn live_heaps() -> usize {
    LIVE_HEAPS.load(Ordering::Relaxed)
}

/// Blocks of each class a cache holds at most: [`CAP`], or as many as fit
/// in [`CAP_BYTES`]; none where fewer than two would, nor for the classes
/// only large heaps have ([`is_fine_only`]: a cache of their blocks would
/// raise the bound a thread's cache holds by half, for blocks that go
/// back to their heap anyway).
static CLASS_CAP: [u32; N_CLASSES] = {
    let mut t = [0; N_CLASSES];
    let mut c = 0;
    while c < N_CLASSES {
        let n = CAP_BYTES / CLASS_SIZE[c];
        t[c] = if is_fine_only(c) {
            0
        } else if n > CAP {
            CAP
        } else if n < 2 {
            0
        } else {
            n
        };
        c += 1;
    }
    t
};

/// Blocks a class of each level holds beyond its shallow cap: up to the
/// level's blocks ([`MEDIUM_CAP`], [`DEEP_CAP`]) and bytes
/// ([`MEDIUM_CAP_BYTES`], [`DEEP_CAP_BYTES`]) in all; none for a shallow
/// class or a class the cache does not hold.
static MORE: [[u32; N_CLASSES]; 3] = [
    [0; N_CLASSES],
    more_than_shallow(MEDIUM_CAP, MEDIUM_CAP_BYTES),
    more_than_shallow(DEEP_CAP, DEEP_CAP_BYTES),
];

/// Per class, the blocks a level of `cap` blocks and `cap_bytes` bytes
/// holds beyond [`CLASS_CAP`] (0 where it holds no more).
const fn more_than_shallow(cap: u32, cap_bytes: u32) -> [u32; N_CLASSES] {
    let mut t = [0; N_CLASSES];
    let mut c = 0;
    while c < N_CLASSES {
        if CLASS_CAP[c] > 0 {
            let n = cap_bytes / CLASS_SIZE[c];
            let level = if n > cap { cap } else { n };
            if level > CLASS_CAP[c] {
                t[c] = level - CLASS_CAP[c];
            }
        }
        c += 1;
    }
    t
}

/// Bytes class `c` at `level` adds to its shallow cap.
fn extra_bytes(c: usize, level: u8) -> usize {
    MORE[level as usize][c] as usize * CLASS_SIZE[c] as usize
}

/// A word the cache writes into the second word of every block it holds
/// (every block is at least 16 bytes): a block freed into the cache while
/// it holds it is a double free, found by a scan of its class only when
/// the word matches.
const HELD: usize = 0xF0E1_6C0D_E5CA_C4E5;

/// One thread's cache of other thread heaps' blocks.
pub(crate) struct RemoteCache {
    head: [Cell<*mut Block>; N_CLASSES],
    /// Blocks each class may still take: its cap less the blocks it holds
    /// (a full class is a zero, one load and test on every remote free).
    room: [Cell<u32>; N_CLASSES],
    /// The [`EPOCH`] at each class's last pop ([`NEVER`] before the
    /// first): a pop under another epoch looks at the heap count again.
    seen: [Cell<u32>; N_CLASSES],
    /// Each class's level: [`SHALLOW`], [`MEDIUM`] or [`DEEP`].
    level: [Cell<u8>; N_CLASSES],
    /// Bytes the medium and deep classes add to their shallow caps (at
    /// most [`DEEP_EXTRA`]).
    deep_bytes: Cell<usize>,
    /// The [`EPOCH`] at which the thread's CPUs were last counted
    /// ([`NEVER`] before), and whether they were more than one.
    cpus_seen: Cell<u32>,
    several_cpus: Cell<bool>,
    /// Usable bytes held, all classes (written by the owner, read by
    /// statistics).
    bytes: AtomicUsize,
}

// SAFETY: the `Cell`s are touched only by the thread that owns the heap the
// cache belongs to (see the module documentation); `bytes` is atomic.
unsafe impl Sync for RemoteCache {}
// SAFETY: the blocks a cache holds are heap memory owned by no thread; a
// cache moves with its heap (an explicit heap's is never used).
unsafe impl Send for RemoteCache {}

impl RemoteCache {
    pub(crate) const fn new() -> RemoteCache {
        RemoteCache {
            head: [const { Cell::new(ptr::null_mut()) }; N_CLASSES],
            room: {
                let mut room = [const { Cell::new(0) }; N_CLASSES];
                let mut c = 0;
                while c < N_CLASSES {
                    room[c] = Cell::new(CLASS_CAP[c]);
                    c += 1;
                }
                room
            },
            seen: [const { Cell::new(NEVER) }; N_CLASSES],
            level: [const { Cell::new(SHALLOW) }; N_CLASSES],
            deep_bytes: Cell::new(0),
            cpus_seen: Cell::new(NEVER),
            several_cpus: Cell::new(false),
            bytes: AtomicUsize::new(0),
        }
    }

    /// A cached block of class `c` (at least `CLASS_SIZE[c]` usable bytes,
    /// aligned to 16), if any.
    ///
    /// # Safety
    /// 1. The calling thread owns the cache.
    #[inline(always)]
    pub(crate) unsafe fn pop(&self, c: usize) -> Option<NonNull<u8>> {
        crate::sync::invariant!(c < N_CLASSES, "class out of range");
        // SAFETY: c < N_CLASSES (the caller's class).
        let head = unsafe { self.head.get_unchecked(c) };
        let b = NonNull::new(head.get())?;
        // SAFETY: b is a block this cache holds: its first word is the link
        // and its second word is the cache's mark, which is cleared here.
        unsafe {
            head.set((*b.as_ptr()).next);
            b.as_ptr().cast::<usize>().add(1).write(0);
        }
        // SAFETY: as above.
        let room = unsafe { self.room.get_unchecked(c) };
        let was_full = room.get() == 0;
        room.set(room.get() + 1);
        let size = CLASS_SIZE[c] as usize;
        self.bytes
            .store(self.bytes.load(Ordering::Relaxed) - size, Ordering::Relaxed);
        // SAFETY: as above.
        let seen = unsafe { self.seen.get_unchecked(c) }.get();
        if (was_full && self.level[c].get() == SHALLOW) || seen != EPOCH.load(Ordering::Relaxed) {
            self.reconsider(c, was_full);
        }
        Some(b.cast())
    }

    /// The first pop of class `c` since the heap count last crossed
    /// [`DEEP_FROM_HEAPS`], or a pop from the class full (`full`) while it
    /// is shallow: the class goes as deep as the count, the thread's CPUs
    /// and the cache's bytes beyond its shallow caps allow (never
    /// shallower: see the module documentation).
    #[cold]
    #[inline(never)]
    fn reconsider(&self, c: usize, full: bool) {
        let epoch = EPOCH.load(Ordering::Relaxed);
        self.seen[c].set(epoch);
        let live = live_heaps();
        let want = if live >= DEEP_FROM_HEAPS {
            DEEP
        } else if full && live >= MEDIUM_FROM_HEAPS && self.several_cpus(epoch) {
            MEDIUM
        } else {
            return;
        };
        let have = self.level[c].get();
        // The deepest level above the class's own that the bytes allow.
        for level in (have + 1..=want).rev() {
            let more = MORE[level as usize][c] - MORE[have as usize][c];
            let add = more as usize * CLASS_SIZE[c] as usize;
            if more > 0 && self.deep_bytes.get() + add <= DEEP_EXTRA {
                self.level[c].set(level);
                self.deep_bytes.set(self.deep_bytes.get() + add);
                self.room[c].set(self.room[c].get() + more);
                return;
            }
        }
    }

    /// Whether the calling thread may run on more than one CPU, counted
    /// once per [`EPOCH`] (one system call).
    fn several_cpus(&self, epoch: u32) -> bool {
        if self.cpus_seen.get() != epoch {
            self.cpus_seen.set(epoch);
            self.several_cpus.set(crate::os::thread_cpus() > 1);
        }
        self.several_cpus.get()
    }

    /// Class `c`'s level: 0 shallow, 1 medium, 2 deep.
    #[cfg(test)]
    pub(crate) fn level(&self, c: usize) -> u8 {
        self.level[c].get()
    }

    /// Blocks class `c` may hold now (at its level).
    pub(crate) fn cap(&self, c: usize) -> u32 {
        CLASS_CAP[c] + MORE[self.level[c].get() as usize][c]
    }

    /// Takes `p`, a live block of class `c` (at least) of another thread
    /// heap, freed by the calling thread; false if the class is full or not
    /// cached (the caller frees it to its heap).
    ///
    /// A full class is left as it is rather than given back to make room: a
    /// thread that frees more of a class than it allocates (a consumer) has
    /// a full class for good, and giving 32 blocks back every 32 frees, even
    /// a bitmap word at a time, measured slower in the producer/consumer
    /// case of the `threads` benchmark than the remote path block by block.
    ///
    /// # Safety
    /// 1. The calling thread owns the cache; `c` is a class (below
    ///    `N_CLASSES`); `p` is a live block of a thread heap, aligned to 16
    ///    with at least `CLASS_SIZE[c]` usable bytes, freed by the caller
    ///    (it is the caller's to give up).
    #[inline]
    pub(crate) unsafe fn push(&self, c: usize, p: *mut u8) -> bool {
        crate::sync::invariant!(c < N_CLASSES, "class out of range");
        // SAFETY: (1): c < N_CLASSES.
        let room = unsafe { self.room.get_unchecked(c) };
        if room.get() == 0 {
            return false;
        }
        // SAFETY: (1): p has at least 16 bytes; its words are ours to read
        // and write now.
        if unsafe { p.cast::<usize>().add(1).read() } == HELD {
            // SAFETY: forwarded (1).
            unsafe { self.push_marked(c, p) };
            return true;
        }
        // SAFETY: forwarded (1); the class has room.
        unsafe { self.push_unchecked(c, p) };
        true
    }

    /// [`RemoteCache::push`] of a block that carries the cache's mark: a
    /// double free if the class holds it, or a block whose second word
    /// happens to hold the mark's value. Out of line, and a tail call, so
    /// that `push` keeps nothing in registers across a call; `extern "C"`
    /// (it cannot unwind: a double free aborts), or the C ABI's `extern
    /// "C"` remote free would wrap the call in an abort on unwinding, which
    /// is no tail call.
    ///
    /// # Safety
    /// 1. As [`RemoteCache::push`], and the class has room.
    #[cold]
    #[inline(never)]
    unsafe extern "C" fn push_marked(&self, c: usize, p: *mut u8) {
        if self.holds(c, p) {
            invalid_free(p);
        }
        // SAFETY: forwarded (1).
        unsafe { self.push_unchecked(c, p) };
    }

    /// Puts `p` on class `c`'s list and marks it.
    ///
    /// # Safety
    /// 1. As [`RemoteCache::push`], and the class has room.
    #[inline(always)]
    unsafe fn push_unchecked(&self, c: usize, p: *mut u8) {
        // SAFETY: (1): c < N_CLASSES; p has at least 16 bytes, ours now.
        unsafe {
            let room = self.room.get_unchecked(c);
            let head = self.head.get_unchecked(c);
            (*p.cast::<Block>()).next = head.get();
            p.cast::<usize>().add(1).write(HELD);
            head.set(p.cast());
            room.set(room.get() - 1);
        }
        let size = CLASS_SIZE[c] as usize;
        self.bytes
            .store(self.bytes.load(Ordering::Relaxed) + size, Ordering::Relaxed);
    }

    /// Takes every block of class `c` out of the cache into `out`, and
    /// makes the class shallow again; returns how many blocks (the caller
    /// gives them back to their heaps).
    ///
    /// # Safety
    /// 1. The calling thread owns the cache.
    pub(crate) unsafe fn take(&self, c: usize, out: &mut [*mut u8; DEEP_CAP as usize]) -> usize {
        crate::sync::invariant!(self.cap(c) <= DEEP_CAP, "a class holds more than DEEP_CAP");
        let mut n = 0;
        let mut b = self.head[c].replace(ptr::null_mut());
        while !b.is_null() {
            // SAFETY: b is a block the cache held: read its link, clear
            // the mark. A class holds at most DEEP_CAP blocks.
            unsafe {
                out[n] = b.cast();
                let next = (*b).next;
                b.cast::<usize>().add(1).write(0);
                b = next;
            }
            n += 1;
        }
        // Shallow again: the thread gives the cache up.
        let level = self.level[c].replace(SHALLOW);
        self.deep_bytes
            .set(self.deep_bytes.get() - extra_bytes(c, level));
        self.seen[c].set(NEVER);
        self.room[c].set(CLASS_CAP[c]);
        let size = CLASS_SIZE[c] as usize;
        self.bytes.store(
            self.bytes.load(Ordering::Relaxed) - n * size,
            Ordering::Relaxed,
        );
        n
    }

    /// Whether class `c`'s list holds `p` (a double free check).
    #[cold]
    fn holds(&self, c: usize, p: *mut u8) -> bool {
        let mut b = self.head[c].get();
        while !b.is_null() {
            if b.cast::<u8>() == p {
                return true;
            }
            // SAFETY: b is a block the cache holds.
            b = unsafe { (*b).next };
        }
        false
    }

    /// Usable bytes the cache holds (of its classes' sizes).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Empties the cache, handing the blocks of each class to `free`, in
    /// no particular order.
    ///
    /// # Safety
    /// 1. The calling thread owns the cache (or is the only thread, in a
    ///    `fork` child), and `free` gives the blocks back to their heaps.
    pub(crate) unsafe fn drain(&self, mut free: impl FnMut(&mut [*mut u8])) {
        let mut out = [ptr::null_mut(); DEEP_CAP as usize];
        for c in 0..N_CLASSES {
            // SAFETY: forwarded (1).
            let n = unsafe { self.take(c, &mut out) };
            if n > 0 {
                free(&mut out[..n]);
            }
        }
    }
}
