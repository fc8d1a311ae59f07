//! A thread's remote frees gathered a bitmap word at a time: frees of other
//! thread heaps' small blocks (up to 512 B) that its remote cache
//! ([`super::remote_cache`]) did not take, published to their heap's
//! remote-free bitmap ([`super::remote`]) with one atomic OR per word
//! instead of one per block.
//!
//! A remote free costs a locked read-modify-write of the bitmap word, and
//! one more for the word's summary bit when the word was empty. A thread
//! that frees the blocks another thread made, in the order it made them (a
//! consumer of a producer's blocks, a pipeline stage), frees neighbours of
//! one class one after another: blocks of one span, carved or collected in
//! ascending order, which share a bitmap word (64 granules of 16 B, 1 KiB
//! of span, 2 to 64 blocks of these classes). Each class keeps one word's
//! bits here; a free into the same word is a bit set in a thread-local
//! word, and a free into another word (or the thread's exit) publishes the
//! word held: about one publication per six frees in the producer/consumer
//! case of the `threads` benchmark (64 B – 256 B blocks, 83% of frees
//! gathered). There (C, `LD_PRELOAD`, medians of five alternating runs) a
//! consumer that also allocates went from 19.5 to 17.3 ns per block with
//! the pair on one CPU and from 27.9 to 25.3 ns on two; one that only
//! frees, from 18.0 to 17.3 ns on one CPU and level on two. The free into
//! the word held is inlined into the caller's remote free and saves no
//! registers (a new word is out of line), and the bytes held are counted
//! from the words' bits when statistics ask rather than on every free: 19.0
//! to 18.1 ns on one CPU (medians of seven alternating runs).
//!
//! **Found by address.** Each word is keyed by its address (shifted right
//! by 10: heaps start on page boundaries, so the key names the heap and
//! the word together), and a small table of hints, indexed by the key,
//! names the class whose word a key was last held in. A remote free looks
//! there first ([`RemoteBatch::free_held`]), from the block's address
//! alone, before it looks up the block's heap (the arena's slot) and class
//! (the heap's class map): one load of the hint, one compare of the key, a
//! bit set. A stale hint only sends the free the long way. The C
//! consumer's remote free went from 48 instructions to 23 when its word is
//! held (callgrind, the producer/consumer pair on one CPU).
//!
//! Tried and not kept: finding the words themselves by address (a set of
//! slots per key instead of a slot per class, so that no class is looked up
//! at all). Streams of different classes then share slots and evict each
//! other's words half-gathered: more publications with fewer bits each,
//! which cost more time than the instructions saved (the producer/consumer
//! pair on one CPU: 21.9 ns a block against 19.6, medians of 31
//! alternating runs, with 32 two-slot sets).
//!
//! **What it holds.** At most one word per class, so at most 1 KiB of
//! blocks per class and 16 KiB per thread (the 16 classes up to 512 B);
//! a class whose blocks are larger than 512 B fits at most one in a word
//! and publishes straight away. The blocks stay live in their heap's
//! statistics until published, like the remote cache's, and count in
//! [`RemoteBatch::bytes`] (the bits held times their class's size), which
//! `frostheap::stats()` takes off the thread heaps' bytes in use. Until
//! then their heap cannot hand them out again: a thread that frees a few
//! blocks and then sleeps holds at most one word of each class back from
//! their owners.
//!
//! **Double frees.** A block freed twice into the word held is reported at
//! once; a bit already set in the heap's word when it is published (freed
//! twice, by two threads) is reported by the publication, as a remote free
//! reports it.
//!
//! **Which blocks.** The same as the remote cache's: blocks of other thread
//! heaps, never the main heap's (a runtime may freeze it), freed on a
//! thread with a heap of its own outside phases (a runtime worker inside a
//! phase has no heap word and never comes here). The heaps are in static
//! storage and never dropped, so a word may name a heap whose thread has
//! exited: the bits reach its bitmap and its next owner collects them.
//!
//! Only the owning thread touches a batch (`Cell`s), except the words'
//! bits, which statistics read.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering};

use super::class::{CLASS_SIZE, N_CLASSES};
use super::core::HeapCore;
use super::page::{invalid_free, GRANULE_SHIFT};

/// Classes whose blocks are gathered: those of at most 512 B (two or more
/// to a bitmap word). The classes are in ascending size.
pub(crate) const BATCHED: usize = {
    let mut c = 0;
    while c < N_CLASSES && CLASS_SIZE[c] <= 512 {
        c += 1;
    }
    c
};

/// One class's word: its key (the address of its 1 KiB of blocks shifted
/// right by 10: heaps start on page boundaries, so the key names the heap
/// and the word together) and its bits; the heap is beside, in
/// [`RemoteBatch`]. Nothing held: `key` is [`NO_KEY`] and `bits` zero (the
/// heap is stale). `bits` is atomic only so that statistics can count the
/// blocks held (a plain load and store on the owner's path); the owner
/// alone writes it.
#[repr(align(16))]
struct Word {
    key: Cell<usize>,
    bits: AtomicU64,
}

/// The key of a word that holds nothing: no block's address shifted right
/// by 10 reaches it.
const NO_KEY: usize = usize::MAX;

/// Bits of an address below its bitmap word's key: a word covers 64
/// granules.
const KEY_SHIFT: usize = GRANULE_SHIFT + 6;

/// Entries of the hint table, which names the class whose word a key is
/// likely held in.
const HINTS: usize = 256;

/// The hint entry of key `key`: its place in its 64 KiB page (a stream of
/// frees in ascending order takes the entries in turn) turned by the
/// page's index, so that the current words of spans at the same place in
/// their pages (spans started together) take different entries.
#[inline(always)]
fn hint_of(key: usize) -> usize {
    (key ^ (key >> 6)) % HINTS
}

/// The bit of the block at `p` in its bitmap word (heaps start on page
/// boundaries, so the address alone gives it).
#[inline(always)]
fn bit_of(p: *mut u8) -> u64 {
    1u64 << ((p as usize >> GRANULE_SHIFT) & 63)
}

/// One thread's words of remote frees not yet published, a word per class
/// (read by every remote free), the heap of each (read when a word is
/// published), and the hints.
pub(crate) struct RemoteBatch {
    words: [Word; BATCHED],
    heaps: [Cell<*const HeapCore>; BATCHED],
    /// Per entry, the class whose word a key of the entry was last held
    /// in ([`hint_of`]): a free looks there first, from its address alone,
    /// and a word whose key matches is its word whatever the hint's age.
    hints: [Cell<u8>; HINTS],
}

// SAFETY: the `Cell`s are touched only by the thread that owns the heap the
// batch belongs to (see the module documentation); `bits` is atomic.
unsafe impl Sync for RemoteBatch {}
// SAFETY: the words name heaps in static storage; a batch moves with its
// heap (an explicit heap's is never used).
unsafe impl Send for RemoteBatch {}

impl RemoteBatch {
    pub(crate) const fn new() -> RemoteBatch {
        RemoteBatch {
            words: [const {
                Word {
                    key: Cell::new(NO_KEY),
                    bits: AtomicU64::new(0),
                }
            }; BATCHED],
            heaps: [const { Cell::new(ptr::null()) }; BATCHED],
            hints: [const { Cell::new(0) }; HINTS],
        }
    }

    /// Sets `p`'s bit in `w`, its word held; a bit already set is a
    /// double free.
    #[inline(always)]
    fn gather(w: &Word, p: *mut u8) {
        let (bits, bit) = (w.bits.load(Ordering::Relaxed), bit_of(p));
        if bits & bit != 0 {
            invalid_free(p);
        }
        w.bits.store(bits | bit, Ordering::Relaxed);
    }

    /// The free of `p` into a word held, found from its address alone
    /// through the hints: true, and the block gathered, if the class the
    /// hint names holds `p`'s word; false, and nothing done, otherwise.
    ///
    /// A word held names blocks of one of another thread heap's small
    /// spans, live until published, so a `p` in the same 1 KiB is a block
    /// of that span: no lookup of its heap or class is needed. (Such a
    /// block skips the remote cache: the word was started because the
    /// cache had no room for the class, and a thread that frees neighbours
    /// in order is a consumer, whose cache stays full.)
    ///
    /// # Safety
    /// 1. The calling thread owns the batch and is not a runtime worker
    ///    inside a phase; `p` is null or a live block that is not one of
    ///    the calling thread's heap's, freed by the caller (it is the
    ///    caller's to give up).
    #[inline(always)]
    pub(crate) unsafe fn free_held(&self, p: *mut u8) -> bool {
        let key = p as usize >> KEY_SHIFT;
        // SAFETY: hint_of() < HINTS; a hint is a class below BATCHED (set
        // by start_word) or 0 as built, and BATCHED > 0.
        let c = unsafe { self.hints.get_unchecked(hint_of(key)).get() as usize };
        // SAFETY: as above.
        let w = unsafe { self.words.get_unchecked(c) };
        if w.key.get() != key {
            return false;
        }
        // A word held names its heap, in static storage (start_word).
        #[cfg(debug_assertions)]
        // SAFETY: as said.
        unsafe { &*self.heaps[c].get() }.debug_check_small_block(p, Some(c));
        Self::gather(w, p);
        true
    }

    /// Frees `p`, a small block of class `c` of `heap`, another thread
    /// heap than the caller's: gathered with the class's word if it lies
    /// there; otherwise the class's word is published and `p`'s starts to
    /// be held. False (nothing done) for a class above 512 B: the caller
    /// frees the block to its heap.
    ///
    /// # Safety
    /// 1. The calling thread owns the batch and is not `heap`'s owner; `p`
    ///    is a live block of one of `heap`'s small spans, of class `c`,
    ///    aligned to 16, freed by the caller (it is the caller's to give
    ///    up); `heap` is in static storage.
    #[inline(always)]
    pub(crate) unsafe fn free(&self, heap: &HeapCore, c: usize, p: *mut u8) -> bool {
        let Some(w) = self.words.get(c) else {
            return false;
        };
        let key = p as usize >> KEY_SHIFT;
        if w.key.get() == key {
            Self::gather(w, p);
        } else {
            // SAFETY: forwarded (1).
            unsafe { self.start_word(heap, c, key, bit_of(p)) };
        }
        true
    }

    /// [`RemoteBatch::free`] into a word other than the one class `c`
    /// holds: publishes that one, holds `bit` of the word `key` of `heap`,
    /// and points the key's hint at the class. Out of line: about one free
    /// in six comes here, and the free into a word held stays a few
    /// instructions with no registers saved. `extern "C"`: it cannot
    /// unwind (a double free it finds aborts), so that the C ABI's `extern
    /// "C"` remote free calls it in a tail call, with no frame.
    ///
    /// # Safety
    /// 1. As [`RemoteBatch::free`].
    #[cold]
    #[inline(never)]
    unsafe extern "C" fn start_word(&self, heap: &HeapCore, c: usize, key: usize, bit: u64) {
        crate::sync::invariant!(
            heap.base().is_multiple_of(1 << KEY_SHIFT),
            "a heap's base is not aligned to a bitmap word's blocks"
        );
        // SAFETY: forwarded (1): the owner of the batch.
        unsafe { self.publish(c) };
        let w = &self.words[c];
        w.key.set(key);
        self.heaps[c].set(heap);
        w.bits.store(bit, Ordering::Relaxed);
        self.hints[hint_of(key)].set(c as u8);
    }

    /// Publishes class `c`'s word, if it holds one.
    ///
    /// # Safety
    /// 1. The calling thread owns the batch.
    #[inline]
    unsafe fn publish(&self, c: usize) {
        let w = &self.words[c];
        // (A load and a store, not a swap: the owner alone writes `bits`.)
        let bits = w.bits.load(Ordering::Relaxed);
        if bits == 0 {
            return;
        }
        // SAFETY: a word with bits names a heap in static storage (free's
        // (1)), and the bits are blocks of its small spans that the caller
        // gave up.
        let heap = unsafe { &*self.heaps[c].get() };
        heap.publish_remote(w.key.get() - (heap.base() >> KEY_SHIFT), bits);
        // Cleared after the publication: a statistics reader in between
        // counts the blocks freed twice (in the bitmap, and held here),
        // understating the bytes in use, never overstating them.
        w.bits.store(0, Ordering::Relaxed);
        w.key.set(NO_KEY);
    }

    /// Publishes every word held (the thread exits).
    ///
    /// # Safety
    /// 1. The calling thread owns the batch (or is the only thread, in a
    ///    `fork` child).
    ///
    /// The publication itself is out of line: inlined into the loop, which
    /// the compiler unrolled, it took 3.8 KiB of the code a thread's exit
    /// runs, which must fit the library's first 64 KiB window with the
    /// rest of it (`crates/frostheap-capi/layout.ld`).
    pub(crate) unsafe fn publish_all(&self) {
        for c in 0..BATCHED {
            if self.words[c].bits.load(Ordering::Relaxed) != 0 {
                // SAFETY: forwarded (1).
                unsafe { self.publish_out_of_line(c) };
            }
        }
    }

    /// [`RemoteBatch::publish`], out of line.
    ///
    /// # Safety
    /// 1. The calling thread owns the batch.
    #[cold]
    #[inline(never)]
    unsafe fn publish_out_of_line(&self, c: usize) {
        // SAFETY: forwarded (1).
        unsafe { self.publish(c) };
    }

    /// Usable bytes held (of the classes' sizes), read on any thread: the
    /// bits of every word, as the owner last stored them.
    pub(crate) fn bytes(&self) -> usize {
        self.words
            .iter()
            .zip(CLASS_SIZE)
            .map(|(w, size)| w.bits.load(Ordering::Relaxed).count_ones() as usize * size as usize)
            .sum()
    }

    /// Blocks held, all words (for tests).
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> u32 {
        self.words
            .iter()
            .map(|w| w.bits.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}
