//! The three allocation workloads, each a plain function generic over the
//! allocator, timed as a whole round with `Instant` and reported per
//! operation.
//!
//! - **pairs**: `alloc` then `dealloc` of one block of a fixed size, `n`
//!   times. The pointer goes through `black_box`, so neither call can be
//!   elided (LLVM otherwise deletes a `malloc`/`free` pair it can see).
//! - **churn**: `k` live blocks of 16..=1024 bytes; each step frees the
//!   block in a random slot and allocates a new block of a random size
//!   there. Slots and sizes come from a fixed seed, so every allocator
//!   sees the same sequence. Filling and draining the slots is untimed.
//! - **remote**: the main thread allocates 64-byte blocks and hands them
//!   through a bounded single-producer single-consumer ring to a second
//!   thread, which frees them. The ring publishes in batches so that the
//!   cost measured is the allocator's (for frostheap: the owner's fast
//!   path plus the remote-free bitmap), not a cache-line round trip per
//!   block. The time runs from the consumer being ready to the last free.

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Subject;

/// The alignment every request uses (what `Box<[u64]>` asks for).
pub const ALIGN: usize = 8;

/// A layout of `size` bytes at [`ALIGN`].
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("valid layout")
}

#[cold]
fn out_of_memory(layout: Layout) -> ! {
    eprintln!(
        "frostheap-bench: allocation of {} bytes failed",
        layout.size()
    );
    std::process::exit(1);
}

/// `n` alloc+free pairs of `layout`. Returns the elapsed time.
#[inline(never)]
pub fn pairs<S: Subject>(s: &S, layout: Layout, n: usize) -> Duration {
    let layout = black_box(layout);
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: the layout has a non-zero size.
        let p = black_box(unsafe { s.alloc(layout) });
        if p.is_null() {
            out_of_memory(layout);
        }
        // SAFETY: p was just allocated with `layout`.
        unsafe { s.dealloc(p, layout) };
    }
    start.elapsed()
}

/// A reproducible sequence of churn steps for one live-set size.
pub struct Churn {
    /// Sizes of the blocks the slots start with.
    pub initial: Vec<u32>,
    /// Each step: the slot to replace and the new block's size.
    pub steps: Vec<(u32, u32)>,
}

impl Churn {
    /// `steps` steps over `k` slots, sizes uniform in 16..=1024.
    pub fn new(k: usize, steps: usize, seed: u64) -> Churn {
        let mut rng = SplitMix(seed);
        let size = |rng: &mut SplitMix| 16 + (rng.next_u64() % 1009) as u32;
        let initial = (0..k).map(|_| size(&mut rng)).collect();
        let steps = (0..steps)
            .map(|_| ((rng.next_u64() % k as u64) as u32, size(&mut rng)))
            .collect();
        Churn { initial, steps }
    }
}

/// One churn round: fill the slots (untimed), run the steps (timed),
/// drain (untimed). `slots` is scratch space of at least `initial.len()`.
#[inline(never)]
pub fn churn<S: Subject>(s: &S, churn: &Churn, slots: &mut [(*mut u8, u32)]) -> Duration {
    let slots = &mut slots[..churn.initial.len()];
    for (slot, &size) in slots.iter_mut().zip(&churn.initial) {
        let l = layout(size as usize);
        // SAFETY: non-zero size.
        let p = unsafe { s.alloc(l) };
        if p.is_null() {
            out_of_memory(l);
        }
        *slot = (p, size);
    }
    let start = Instant::now();
    for &(i, size) in black_box(&churn.steps[..]) {
        let slot = &mut slots[i as usize];
        // SAFETY: the slot holds a live block allocated with this size.
        unsafe { s.dealloc(slot.0, layout(slot.1 as usize)) };
        let l = layout(size as usize);
        // SAFETY: non-zero size.
        let p = black_box(unsafe { s.alloc(l) });
        if p.is_null() {
            out_of_memory(l);
        }
        *slot = (p, size);
    }
    let elapsed = start.elapsed();
    for &(p, size) in slots.iter() {
        // SAFETY: every slot holds a live block of its size.
        unsafe { s.dealloc(p, layout(size as usize)) };
    }
    elapsed
}

/// Blocks published at once through the ring.
const BATCH: usize = 64;
/// Ring capacity (a power of two, a multiple of `BATCH`).
const RING: usize = 1024;

#[repr(align(128))]
struct Padded<T>(T);

/// A bounded SPSC ring of pointers. `tail - head <= RING`; slots in
/// `[head, tail)` (mod RING) hold blocks the consumer has not freed.
struct Ring {
    slots: Vec<AtomicPtr<u8>>,
    /// Blocks the consumer has taken (written by the consumer only).
    head: Padded<AtomicUsize>,
    /// Blocks the producer has published (written by the producer only).
    tail: Padded<AtomicUsize>,
    ready: Padded<AtomicBool>,
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        // Two cores shared with other work: give the peer a chance.
        std::thread::yield_now();
    }
}

/// `n` 64-byte blocks allocated on the calling thread and freed on another.
/// `n` must be a multiple of the batch size (64).
#[inline(never)]
pub fn remote<S: Subject>(s: &S, n: usize) -> Duration {
    assert!(n.is_multiple_of(BATCH), "n must be a multiple of {BATCH}");
    let ring = Ring {
        slots: (0..RING)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect(),
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        ready: Padded(AtomicBool::new(false)),
    };
    let l = layout(64);
    std::thread::scope(|scope| {
        let ring = &ring;
        scope.spawn(move || {
            ring.ready.0.store(true, Ordering::Release);
            let mut head = 0;
            let mut spins = 0;
            while head < n {
                let tail = ring.tail.0.load(Ordering::Acquire);
                if tail == head {
                    backoff(&mut spins);
                    continue;
                }
                spins = 0;
                while head < tail {
                    let p = ring.slots[head % RING].load(Ordering::Relaxed);
                    // SAFETY: the producer published p, a live block of
                    // layout `l` that nobody else frees.
                    unsafe { s.dealloc(p, l) };
                    head += 1;
                }
                ring.head.0.store(head, Ordering::Release);
            }
        });
        let mut spins = 0;
        while !ring.ready.0.load(Ordering::Acquire) {
            backoff(&mut spins);
        }
        let start = Instant::now();
        let mut tail = 0;
        let mut head = 0;
        while tail < n {
            spins = 0;
            while tail + BATCH - head > RING {
                head = ring.head.0.load(Ordering::Acquire);
                if tail + BATCH - head > RING {
                    backoff(&mut spins);
                }
            }
            for i in tail..tail + BATCH {
                // SAFETY: non-zero size.
                let p = unsafe { s.alloc(l) };
                if p.is_null() {
                    out_of_memory(l);
                }
                ring.slots[i % RING].store(p, Ordering::Relaxed);
            }
            tail += BATCH;
            ring.tail.0.store(tail, Ordering::Release);
        }
        spins = 0;
        while ring.head.0.load(Ordering::Acquire) < n {
            backoff(&mut spins);
        }
        start.elapsed()
    })
}

/// SplitMix64: a small, well-mixed generator for reproducible inputs.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
