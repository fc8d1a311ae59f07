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

/// One class's word: the heap, the word's index in its bitmap, the bits.
/// `bits == 0`: nothing held (the other fields are stale). `bits` is
/// atomic only so that statistics can count the blocks held (relaxed: a
/// plain load and store on the owner's path); the owner alone writes it.
struct Word {
    heap: Cell<*const HeapCore>,
    word: Cell<usize>,
    bits: AtomicU64,
}

/// One thread's words of remote frees not yet published, a word per class.
pub(crate) struct RemoteBatch {
    words: [Word; BATCHED],
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
                    heap: Cell::new(ptr::null()),
                    word: Cell::new(0),
                    bits: AtomicU64::new(0),
                }
            }; BATCHED],
        }
    }

    /// Frees `p`, a small block of class `c` (at least) of `heap`, another
    /// thread heap than the caller's: gathered with the class's word if it
    /// lies there (or the class holds none); otherwise the word held is
    /// published first. False (nothing done) for a class above 512 B: the
    /// caller frees the block to its heap.
    ///
    /// # Safety
    /// 1. The calling thread owns the batch and is not `heap`'s owner; `p`
    ///    is a live block of one of `heap`'s small spans, aligned to 16,
    ///    freed by the caller (it is the caller's to give up); `heap` is in
    ///    static storage.
    #[inline(always)]
    pub(crate) unsafe fn free(&self, heap: &HeapCore, c: usize, p: *mut u8) -> bool {
        let Some(w) = self.words.get(c) else {
            return false;
        };
        let granule = (p as usize - heap.base()) >> GRANULE_SHIFT;
        let (word, bit) = (granule >> 6, 1u64 << (granule & 63));
        let bits = w.bits.load(Ordering::Relaxed);
        if bits != 0 && ptr::eq(w.heap.get(), heap) && w.word.get() == word {
            if bits & bit != 0 {
                invalid_free(p);
            }
            w.bits.store(bits | bit, Ordering::Relaxed);
        } else {
            // SAFETY: forwarded (1).
            unsafe { self.start_word(c, heap, word, bit) };
        }
        true
    }

    /// [`RemoteBatch::free`] into a word other than the one class `c`
    /// holds: publishes that one and holds `bit` of `heap`'s `word`. Out of
    /// line: about one free in six comes here, and the free into the word
    /// held stays a few instructions with no registers saved.
    ///
    /// # Safety
    /// 1. As [`RemoteBatch::free`].
    #[cold]
    #[inline(never)]
    unsafe fn start_word(&self, c: usize, heap: &HeapCore, word: usize, bit: u64) {
        // SAFETY: forwarded (1): the owner of the batch.
        unsafe { self.publish(c) };
        let w = &self.words[c];
        w.heap.set(heap);
        w.word.set(word);
        w.bits.store(bit, Ordering::Relaxed);
    }

    /// Publishes class `c`'s word, if it holds one.
    ///
    /// # Safety
    /// 1. The calling thread owns the batch.
    #[inline]
    pub(crate) unsafe fn publish(&self, c: usize) {
        let w = &self.words[c];
        // (A load and a store, not a swap: the owner alone writes `bits`.)
        let bits = w.bits.load(Ordering::Relaxed);
        if bits == 0 {
            return;
        }
        // SAFETY: a word with bits names a heap in static storage (free's
        // (1)), and the bits are blocks of its small spans that the caller
        // gave up.
        let heap = unsafe { &*w.heap.get() };
        heap.publish_remote(w.word.get(), bits);
        // Cleared after the publication: a statistics reader in between
        // counts the blocks freed twice (in the bitmap, and held here),
        // understating the bytes in use, never overstating them.
        w.bits.store(0, Ordering::Relaxed);
    }

    /// Publishes every word held (the thread exits).
    ///
    /// # Safety
    /// 1. The calling thread owns the batch (or is the only thread, in a
    ///    `fork` child).
    pub(crate) unsafe fn publish_all(&self) {
        for c in 0..BATCHED {
            // SAFETY: forwarded (1).
            unsafe { self.publish(c) };
        }
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

    /// Blocks held, all classes (for tests).
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> u32 {
        self.words
            .iter()
            .map(|w| w.bits.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}
