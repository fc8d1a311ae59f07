//! `rollback`: what the rollback policy costs next to `cancel`, side by
//! side in one run (issue 13).
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin rollback -- [--rounds N] [--phases N] [--out FILE]
//! cargo run --release -p frostheap-bench --bin rollback -- --rounds 21 --phases 20   # brief
//! ```
//!
//! **What it measures.** Two runtimes of two workers each guard the same
//! heap (16 MiB committed), one under `rollback`, one under `cancel`, on
//! the backend `FROSTHEAP_PROTECT` selects (default `auto`).
//!
//! 1. **One violation to `Err`.** A `map` over one item per worker, whose
//!    first task stores once into the guarded heap: the call's wall time,
//!    from before `map` to its `Err(Violation)`; and, because `cancel`
//!    parks the violating thread and the next call starts its
//!    replacement, the same call plus the next (clean) one, which is what
//!    a violation costs a program that goes on. Under rollback the store
//!    is let through (fault, copy of its page or 128 bytes, single step,
//!    diff) and undone at the thaw; under cancel the thread parks.
//! 2. **A phase without violation.** `--phases` back-to-back `map`s of
//!    one cheap item per worker (an empty phase's overhead: freeze, wake,
//!    join, thaw, and, under rollback, the empty undo logs' replay), and a
//!    `map` of 100 000 items of a cheap function (per item). Target: the
//!    same as `cancel` within noise.
//! 3. **The alternative the design amendments proposed** for closing the
//!    `mprotect` backend's single-step window: back each guarded heap with
//!    a `memfd` mapped twice (the frozen view, and a writable alias through
//!    which the handler would perform the decoded store). What that costs
//!    every phase is its freeze + thaw: `mprotect(PROT_READ)` and back over
//!    `--memfd-size` of a shared `memfd` mapping (with its alias mapped,
//!    `MADV_HUGEPAGE` asked), against the same on an anonymous mapping on
//!    transparent huge pages (what a guarded heap is today). Where
//!    `shmem_enabled` is `never` (most distributions' default) the memfd
//!    gets no huge pages; the report shows the share of each that does.
//!
//! **How.** Each round runs both variants, rotating which goes first
//! (`frostheap_bench::Plan`); the table shows medians with p10–p90 and the
//! per-round ratio rollback / cancel (median and p10–p90 of the ratios:
//! never a ratio of medians). Every cancel round parks one thread for good
//! and keeps a context slot, so the cancel runtime is rebuilt every 100
//! violations and the number of rounds is capped at 800 (the process has
//! 1024 context slots). No timing is asserted: this is a report.

use std::alloc::Layout;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use frostheap::{Error, OnViolation, Runtime};
use frostheap_bench::interleave::time_ns;
use frostheap_bench::regions::{huge_backed, GrownHeap, RawRegion};
use frostheap_bench::{cli, table, Machine, Plan, Table};

const MIB: usize = 1 << 20;
const WORKERS: usize = 2;
/// Cancel violations per runtime before it is rebuilt.
const CANCEL_PER_RUNTIME: usize = 100;

/// What the rollback policy costs next to cancel.
#[derive(Parser)]
#[command(name = "rollback")]
struct Options {
    /// Timed rounds per case (each runs both policies), at most 800.
    #[arg(long, default_value_t = 201, value_parser = cli::count)]
    rounds: usize,
    /// Empty phases timed together in one sample of the phase case.
    #[arg(long, default_value_t = 200, value_parser = cli::count)]
    phases: usize,
    /// Bytes of the memfd / anonymous regions of the freeze case.
    #[arg(long = "memfd-size", default_value = "64M", value_parser = cli::size)]
    memfd_size: usize,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Rollback,
    Cancel,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Rollback => "rollback",
            Policy::Cancel => "cancel",
        }
    }
}

const VARIANTS: [Policy; 2] = [Policy::Rollback, Policy::Cancel];

/// The guarded heap and the word tasks write.
struct Target {
    heap: GrownHeap,
    word: usize,
}

impl Target {
    fn new() -> Target {
        let mut heap = GrownHeap::new(64 * MIB, true);
        heap.grow_to(16 * MIB);
        let p = heap
            .heap
            .try_alloc(Layout::from_size_align(4096, 64).expect("layout"))
            .expect("a target block");
        // SAFETY: a fresh 4096-byte block of the heap, not frozen now.
        unsafe { (p.as_ptr() as *mut u64).write(0) };
        Target {
            word: p.as_ptr() as usize,
            heap,
        }
    }

    fn runtime(&self, policy: OnViolation) -> Runtime {
        Runtime::builder()
            .workers(WORKERS)
            .guard(&self.heap.heap)
            .guard_main_heap(false)
            .on_violation(policy)
            .max_parked(CANCEL_PER_RUNTIME + 1)
            .build()
            .expect("runtime")
    }

    /// The word's value (checked after every violation: rollback and
    /// cancel both leave it as it was).
    fn value(&self) -> u64 {
        // SAFETY: a live block of the heap; reading is always allowed.
        unsafe { (self.word as *const u64).read_volatile() }
    }
}

/// The two runtimes; the cancel one is rebuilt as it parks threads.
struct Runtimes<'t> {
    target: &'t Target,
    rollback: Runtime,
    cancel: Runtime,
    cancel_violations: usize,
}

impl<'t> Runtimes<'t> {
    fn new(target: &'t Target) -> Runtimes<'t> {
        Runtimes {
            target,
            rollback: target.runtime(OnViolation::Rollback),
            cancel: target.runtime(OnViolation::Cancel),
            cancel_violations: 0,
        }
    }

    fn get(&mut self, p: Policy) -> &Runtime {
        match p {
            Policy::Rollback => &self.rollback,
            Policy::Cancel => {
                if self.cancel_violations == CANCEL_PER_RUNTIME {
                    self.cancel = self.target.runtime(OnViolation::Cancel);
                    self.cancel_violations = 0;
                }
                &self.cancel
            }
        }
    }

    /// One violating call, then one clean call: (ns to the `Err`, ns of
    /// both calls).
    fn violation(&mut self, p: Policy) -> (f64, f64) {
        let word = self.target.word;
        let rt = self.get(p);
        let start = Instant::now();
        let out = rt.map(0..WORKERS, |i| {
            if i == 0 {
                // SAFETY: `word` is a live block of the guarded heap; the
                // store is the violation being timed.
                unsafe { (word as *mut u64).write_volatile(1) };
            }
            i
        });
        let to_err = start.elapsed().as_nanos() as f64;
        match out {
            Err(Error::Violation(_)) => {}
            other => panic!(
                "{}: expected a violation, got {:?}",
                p.name(),
                other.map(|_| ())
            ),
        }
        let clean = rt.map(0..WORKERS, |i| i + 1).expect("the next call runs");
        let both = start.elapsed().as_nanos() as f64;
        assert_eq!(clean, [1, 2]);
        assert_eq!(
            self.target.value(),
            0,
            "{}: the store left a trace",
            p.name()
        );
        if p == Policy::Cancel {
            self.cancel_violations += 1;
        }
        (to_err, both)
    }
}

/// ns per empty phase, over `phases` back-to-back calls.
fn empty_phases(rt: &Runtime, phases: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..phases {
        let out = rt.map(0..WORKERS, |i| i).expect("a clean phase");
        std::hint::black_box(out);
    }
    start.elapsed().as_nanos() as f64 / phases as f64
}

/// ns per item of a 100 000-item map of a cheap function.
fn busy_phase(rt: &Runtime, data: &[u64]) -> f64 {
    let start = Instant::now();
    let out = rt
        .map_slice(data, |x| {
            x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
        })
        .expect("a clean phase");
    let ns = start.elapsed().as_nanos() as f64 / data.len() as f64;
    std::hint::black_box(out);
    ns
}

/// A `memfd` of `len` bytes mapped shared at a 2 MiB-aligned address,
/// touched, with a second (alias) mapping of the same file: the layout the
/// amendments proposed for guarded heaps.
struct MemfdRegion {
    view: *mut u8,
    alias: *mut u8,
    reservation: (*mut u8, usize),
    len: usize,
    fd: libc::c_int,
}

impl MemfdRegion {
    fn new(len: usize) -> MemfdRegion {
        const HUGE: usize = 2 * MIB;
        // SAFETY: plain system calls on memory and a file this function
        // makes; every result is checked.
        unsafe {
            let fd = libc::memfd_create(c"frostheap-bench".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0, "ftruncate");
            let res_len = len + HUGE;
            let res = libc::mmap(
                core::ptr::null_mut(),
                res_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            assert_ne!(res, libc::MAP_FAILED, "reserving");
            let at = ((res as usize + HUGE - 1) & !(HUGE - 1)) as *mut libc::c_void;
            let view = libc::mmap(
                at,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            );
            assert_eq!(view, at, "mapping the view");
            libc::madvise(view, len, libc::MADV_HUGEPAGE);
            let alias = libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(alias, libc::MAP_FAILED, "mapping the alias");
            let mut a = view as usize;
            while a < view as usize + len {
                (a as *mut u8).write_volatile(1);
                a += 4096;
            }
            MemfdRegion {
                view: view.cast(),
                alias: alias.cast(),
                reservation: (res.cast(), res_len),
                len,
                fd,
            }
        }
    }

    /// One freeze + thaw of the view, in ns.
    fn freeze_thaw(&self) -> f64 {
        time_ns(|| {
            // SAFETY: the view is ours; nothing else uses it.
            unsafe {
                libc::mprotect(self.view.cast(), self.len, libc::PROT_READ);
                libc::mprotect(
                    self.view.cast(),
                    self.len,
                    libc::PROT_READ | libc::PROT_WRITE,
                );
            }
        })
    }
}

impl Drop for MemfdRegion {
    fn drop(&mut self) {
        // SAFETY: the mappings and the descriptor made in `new`.
        unsafe {
            libc::munmap(self.alias.cast(), self.len);
            libc::munmap(self.reservation.0.cast(), self.reservation.1);
            libc::close(self.fd);
        }
    }
}

fn main() {
    let o = Options::parse();
    if o.rounds > 800 {
        eprintln!("rollback: --rounds {} is above 800: every cancel round keeps a context slot for good (1024 in a process)", o.rounds);
        std::process::exit(2);
    }
    let machine = Machine::now();
    let target = Target::new();
    let mut rts = Runtimes::new(&target);
    let backend = rts.rollback.backend().name();
    let plan = Plan::rounds(3, o.rounds);

    eprintln!("rollback: one violation to Err …");
    let violation = plan.run(&VARIANTS, |&p| rts.violation(p));
    let to_err = violation.samples(|s| s.0);
    let both = violation.samples(|s| s.1);

    eprintln!("rollback: phases without violation …");
    let rb = target.runtime(OnViolation::Rollback);
    let ca = target.runtime(OnViolation::Cancel);
    let pick = |p: Policy| if p == Policy::Rollback { &rb } else { &ca };
    let empty = plan
        .run(&VARIANTS, |&p| empty_phases(pick(p), o.phases))
        .samples(|ns| *ns);
    let data: Vec<u64> = (0..100_000u64).collect();
    let busy = plan
        .run(&VARIANTS, |&p| busy_phase(pick(p), &data))
        .samples(|ns| *ns);

    eprintln!("rollback: memfd double mapping vs anonymous huge pages …");
    let mut anon = RawRegion::new(o.memfd_size, true);
    anon.grow_to(o.memfd_size);
    let memfd = MemfdRegion::new(o.memfd_size);
    let regions = ["anonymous (THP)", "memfd + alias"];
    let freeze = Plan::rounds(2, o.rounds.min(31))
        .run(&regions, |&r| {
            if r == regions[0] {
                anon.freeze_thaw()
            } else {
                memfd.freeze_thaw()
            }
        })
        .samples(|ns| *ns);
    let anon_huge = huge_backed(anon.base(), o.memfd_size);
    let memfd_huge = huge_backed(memfd.view as usize, o.memfd_size);

    let mut md = String::from("## frostheap rollback benchmark\n\n");
    md += &format!(
        "{}; backend {backend}; {WORKERS} workers; one guarded heap of 16 MiB committed; {} rounds after 3 warm-up rounds, rollback and cancel alternating.\n\n",
        machine.describe(),
        o.rounds
    );
    let mut t = Table::new(["case", "rollback", "cancel", "rollback / cancel"], 1);
    for (label, s) in [
        ("one violation: map to Err", &to_err),
        (
            "one violation + the next call (cancel starts a replacement)",
            &both,
        ),
    ] {
        t.row([
            label.to_string(),
            table::time(&s.summary(0)),
            table::time(&s.summary(1)),
            table::ratio(&s.ratio(0, 1)),
        ]);
    }
    t.row([
        format!("empty phase (mean of {} calls)", o.phases),
        table::time(&empty.summary(0)),
        table::time(&empty.summary(1)),
        table::ratio(&empty.ratio(0, 1)),
    ]);
    t.row([
        "100 000-item map, per item".to_string(),
        table::time(&busy.summary(0)),
        table::time(&busy.summary(1)),
        table::ratio(&busy.ratio(0, 1)),
    ]);
    md += &t.to_string();
    md += "\nMedians with p10–p90; ratios are per round (median and p10–p90 of the ratios), below 1: rollback takes less time.\n\n";
    let mut f = Table::new(
        [
            "freeze + thaw",
            "anonymous (THP)",
            "memfd + alias",
            "memfd / anonymous",
        ],
        1,
    );
    f.row([
        format!(
            "{} MiB committed (huge-page backed: {} / {} MiB)",
            o.memfd_size / MIB,
            anon_huge / MIB,
            memfd_huge / MIB
        ),
        table::time(&freeze.summary(0)),
        table::time(&freeze.summary(1)),
        table::ratio(&freeze.ratio(1, 0)),
    ]);
    md += &f.to_string();
    md += "\nThe memfd layout would close the mprotect step window (docs/rollback.md) at this price on every phase.\n";
    print!("{md}");
    if let Some(path) = &o.out {
        cli::write_or_exit("rollback", path, md.as_bytes());
    }
    // The violations were really made (and reported) under rollback.
    assert!(rts.rollback.stats().violations as usize >= o.rounds);
}
