//! The multi-threaded allocation workloads of the `threads` benchmark, run
//! on whatever global allocator the child binary installs
//! (`threads_system`, `threads_mimalloc`, `threads_jemalloc`,
//! `threads_frostheap`); `preload/threads.c` runs the same cases in C under
//! `LD_PRELOAD`.
//!
//! - **local**: every thread allocates and frees its own blocks of mixed
//!   sizes (16 B – 4 KiB), keeping a window of 64 live.
//! - **working-set**: the same at the scale of a real program's heap: every
//!   thread fills a window of 25,000 live blocks of 16 B – 4 KiB (about 50
//!   MiB) and replaces one at random per operation. Its peak RSS is what an
//!   allocator adds to live data (size classes' rounding, per-class
//!   pages), where `local`'s is mostly fixed costs.
//! - **larson**: threads replace random blocks (16 B – 1 KiB) in one array
//!   shared by all of them (Larson and Krishnan's server simulation), so
//!   most frees are of another thread's block.
//! - **prodcons**: threads in pairs; one allocates 64 B – 256 B blocks and
//!   hands them over a ring, the other frees them. Where the scheduler puts
//!   the pair decides the figure more than the allocator does: on one CPU
//!   (taking turns) no cache line moves, on two every block's lines do, and
//!   a free-running pair switches between the two from run to run (on a
//!   2-vCPU VM mimalloc measured 14 ns in some rounds and 80–110 ns in
//!   others). `prodcons-1cpu` pins every thread to one CPU and
//!   `prodcons-2cpu` producers to one CPU and consumers to another, so each
//!   placement is measured on its own.
//! - **spawn**: threads created and joined in a loop, each allocating a
//!   little and leaving some blocks for the next generation to free (the
//!   cost of a thread's first allocation and of its heap after it exits).
//! - **spawn-large**: the same with 32 blocks of 4 KiB – 256 KiB a
//!   thread, each written whole (a request's buffers in a thread per
//!   request), half left to the next generation: what a heap does with
//!   the free memory its thread leaves.
//!
//! Each figure is nanoseconds of wall time per operation of one thread
//! (an alloc+free, a replacement, a block handed over, a thread).

use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

/// xorshift64: reproducible sizes and slots per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A block of `size` bytes (at least 8) with its size in its first word,
/// as a C program would touch a fresh block.
fn make(size: usize) -> *mut u8 {
    let l = Layout::from_size_align(size.max(8), 8).expect("layout");
    // SAFETY: non-zero size.
    let p = unsafe { alloc(l) };
    assert!(!p.is_null(), "out of memory");
    // SAFETY: p has at least 8 bytes, aligned to 8.
    unsafe { p.cast::<usize>().write(size.max(8)) };
    p
}

/// Frees a block from [`make`].
///
/// # Safety
/// 1. `p` came from [`make`] and is freed once.
unsafe fn unmake(p: *mut u8) {
    // SAFETY: (1): the first word is the size it was made with.
    unsafe {
        let size = p.cast::<usize>().read();
        dealloc(p, Layout::from_size_align_unchecked(size, 8));
    }
}

/// Runs `body(thread index)` on `threads` threads started together;
/// returns the wall time from the start to the last one's end, in ns.
fn timed(threads: usize, body: impl Fn(usize) + Sync) -> f64 {
    let start = Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        for t in 0..threads {
            let (start, body) = (&start, &body);
            s.spawn(move || {
                start.wait();
                body(t);
            });
        }
        let t0 = Instant::now();
        start.wait();
        t0
    });
    t0.elapsed().as_nanos() as f64
}

/// Live blocks per thread in `working-set`.
pub const WORKING_SET: usize = 25_000;

/// ns per replacement per thread: every thread fills a window of
/// [`WORKING_SET`] blocks of 16 B – 4 KiB, then replaces `ops` of them,
/// each at a random slot.
pub fn working_set(threads: usize, ops: usize) -> f64 {
    let start = Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        for t in 0..threads {
            let start = &start;
            s.spawn(move || {
                let mut rng = Rng(0x6A09_E667_F3BC_C908 ^ (t as u64 + 1));
                let mut window: Vec<*mut u8> = (0..WORKING_SET)
                    .map(|_| make(16 + (rng.next() % 4081) as usize))
                    .collect();
                start.wait();
                for _ in 0..ops {
                    let r = rng.next();
                    let slot = &mut window[(r % WORKING_SET as u64) as usize];
                    let old = std::mem::replace(slot, make(16 + ((r >> 32) % 4081) as usize));
                    // SAFETY: made above, freed once.
                    unsafe { unmake(old) };
                }
                for p in window {
                    // SAFETY: as above.
                    unsafe { unmake(p) };
                }
            });
        }
        start.wait();
        Instant::now()
    });
    t0.elapsed().as_nanos() as f64 / ops as f64
}

/// ns per alloc+free per thread, `ops` per thread.
pub fn local(threads: usize, ops: usize) -> f64 {
    timed(threads, |t| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
        let mut window = [std::ptr::null_mut::<u8>(); 64];
        for i in 0..ops {
            let old =
                std::mem::replace(&mut window[i % 64], make(16 + (rng.next() % 4081) as usize));
            if !old.is_null() {
                // SAFETY: made above, freed once.
                unsafe { unmake(old) };
            }
        }
        for p in window.into_iter().filter(|p| !p.is_null()) {
            // SAFETY: as above.
            unsafe { unmake(p) };
        }
    }) / ops as f64
}

/// ns per replacement per thread: `ops` per thread over a shared array of
/// 1,000 slots per thread.
pub fn larson(threads: usize, ops: usize) -> f64 {
    let slots: Vec<AtomicPtr<u8>> = (0..1000 * threads)
        .map(|i| AtomicPtr::new(make(16 + i % 1009)))
        .collect();
    let ns = timed(threads, |t| {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (t as u64 + 1));
        for _ in 0..ops {
            let r = rng.next();
            let i = (r % slots.len() as u64) as usize;
            let old = slots[i].swap(make(16 + ((r >> 32) % 1009) as usize), Ordering::AcqRel);
            // SAFETY: every slot holds a block from make, swapped out by
            // exactly one thread.
            unsafe { unmake(old) };
        }
    }) / ops as f64;
    for p in slots {
        // SAFETY: as above; no thread runs any more.
        unsafe { unmake(p.into_inner()) };
    }
    ns
}

const RING: usize = 1024;
const BATCH: usize = 64;

/// A single-producer single-consumer ring of blocks.
struct Ring {
    slots: Vec<AtomicPtr<u8>>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

/// Where the producer/consumer threads run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Placement {
    /// Wherever the scheduler puts them.
    Free,
    /// All on the first CPU the process may use.
    OneCpu,
    /// Producers on the first CPU, consumers on the second.
    TwoCpus,
}

/// The CPUs the process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size is the set's.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: as in allowed_cpus; CPU_SET writes within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// ns per block handed over per pair: `threads / 2` producer/consumer
/// pairs (at least one), `ops` blocks each, placed by `placement`.
pub fn prodcons(threads: usize, ops: usize, placement: Placement) -> f64 {
    let cpus = allowed_cpus();
    let cpu_of = |t: usize| match placement {
        Placement::Free => None,
        Placement::OneCpu => Some(cpus[0]),
        Placement::TwoCpus => {
            assert!(
                cpus.len() >= 2,
                "prodcons-2cpu needs two CPUs; this process may use {cpus:?}"
            );
            Some(cpus[t % 2])
        }
    };
    let pairs = (threads / 2).max(1);
    let ops = (ops / BATCH).max(1) * BATCH;
    let rings: Vec<Ring> = (0..pairs)
        .map(|_| Ring {
            slots: (0..RING)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        })
        .collect();
    timed(2 * pairs, |t| {
        if let Some(cpu) = cpu_of(t) {
            pin_to(cpu);
        }
        let ring = &rings[t / 2];
        if t % 2 == 0 {
            let mut rng = Rng(0xDEAD_BEEF ^ (t as u64 + 1));
            let mut tail = 0;
            while tail < ops {
                while tail + BATCH - ring.head.load(Ordering::Acquire) > RING {
                    std::thread::yield_now();
                }
                for i in tail..tail + BATCH {
                    let p = make(64 + (rng.next() % 193) as usize);
                    ring.slots[i % RING].store(p, Ordering::Relaxed);
                }
                tail += BATCH;
                ring.tail.store(tail, Ordering::Release);
            }
        } else {
            let mut head = 0;
            while head < ops {
                let tail = ring.tail.load(Ordering::Acquire);
                if tail == head {
                    std::thread::yield_now();
                    continue;
                }
                for i in head..tail {
                    // SAFETY: the producer published a block from make.
                    unsafe { unmake(ring.slots[i % RING].load(Ordering::Relaxed)) };
                }
                head = tail;
                ring.head.store(head, Ordering::Release);
            }
        }
    }) / ops as f64
}

/// ns per thread: `rounds` generations of `threads` threads, each
/// allocating 100 blocks of 16 B – 512 B, freeing half and leaving the
/// rest to be freed by the next generation.
pub fn spawn(threads: usize, rounds: usize) -> f64 {
    generations(threads, rounds, 100, 0xC0FF_EE00, |rng, _| {
        make(16 + (rng.next() % 497) as usize)
    })
}

/// ns per thread: `rounds` generations of `threads` threads, each making
/// 32 blocks of 4 KiB – 256 KiB written whole, freeing half and leaving
/// the rest to be freed by the next generation.
pub fn spawn_large(threads: usize, rounds: usize) -> f64 {
    generations(threads, rounds, 32, 0x1A26_E000, |rng, i| {
        let size = 4096 + (rng.next() % (252 * 1024 + 1)) as usize;
        let p = make(size);
        // SAFETY: p has `size` bytes; its first word (the size, which
        // unmake reads) is written again after.
        unsafe {
            std::ptr::write_bytes(p, i as u8, size);
            p.cast::<usize>().write(size);
        }
        p
    })
}

/// ns per thread: `rounds` generations of `threads` threads, each first
/// freeing the blocks a thread of the generation before left, then making
/// `blocks` blocks with `make_one(rng, i)` (the `seed` makes each
/// thread's rng), freeing every other one and leaving the rest to the
/// next generation.
fn generations(
    threads: usize,
    rounds: usize,
    blocks: usize,
    seed: u64,
    make_one: fn(&mut Rng, usize) -> *mut u8,
) -> f64 {
    let t0 = Instant::now();
    let mut left: Vec<usize> = Vec::new();
    for r in 0..rounds {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let theirs: Vec<usize> = left.drain(..left.len().min(blocks / 2)).collect();
                std::thread::spawn(move || {
                    for p in theirs {
                        // SAFETY: a block from make, handed over once.
                        unsafe { unmake(p as *mut u8) };
                    }
                    let mut rng = Rng(seed ^ ((r * threads + t) as u64 + 1));
                    let mut keep = Vec::with_capacity(blocks / 2);
                    for i in 0..blocks {
                        let p = make_one(&mut rng, i);
                        if i % 2 == 0 {
                            keep.push(p as usize);
                        } else {
                            // SAFETY: made just above.
                            unsafe { unmake(p) };
                        }
                    }
                    keep
                })
            })
            .collect();
        for h in handles {
            left.extend(h.join().expect("a spawned thread"));
        }
    }
    for p in left {
        // SAFETY: as above.
        unsafe { unmake(p as *mut u8) };
    }
    t0.elapsed().as_nanos() as f64 / (rounds * threads) as f64
}

/// The child's main: `<case> <threads> <ops>`; prints `sample <ns>` for
/// each of `runs` runs (the first discarded as warm-up by the parent).
pub fn child_main() {
    const USAGE: &str = "usage: threads_<allocator> local|working-set|larson|prodcons|prodcons-1cpu|prodcons-2cpu|spawn|spawn-large|none THREADS OPS RUNS\n(a child of the `threads` benchmark: prints `sample <ns>` per run)";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.as_slice(), [h] if h == "--help" || h == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let [case, threads, ops, runs] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let number = |name: &str, v: &str| -> usize {
        v.parse().unwrap_or_else(|_| {
            eprintln!("{name} must be a whole number, not {v:?}\n{USAGE}");
            std::process::exit(2)
        })
    };
    let threads = number("THREADS", threads);
    let ops = number("OPS", ops);
    let runs = number("RUNS", runs);
    for _ in 0..runs {
        let ns = match case.as_str() {
            "local" => local(threads, ops),
            "working-set" => working_set(threads, ops),
            "larson" => larson(threads, ops),
            "prodcons" => prodcons(threads, ops, Placement::Free),
            "prodcons-1cpu" => prodcons(threads, ops, Placement::OneCpu),
            "prodcons-2cpu" => prodcons(threads, ops, Placement::TwoCpus),
            "spawn" => spawn(threads, ops),
            "spawn-large" => spawn_large(threads, ops),
            "none" => 0.0,
            other => {
                eprintln!("unknown case {other}");
                std::process::exit(2);
            }
        };
        crate::child::report_sample(ns);
    }
    crate::child::report_peak_rss();
}
