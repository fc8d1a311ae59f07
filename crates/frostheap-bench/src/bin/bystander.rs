//! `bystander`: what one store into a frozen heap costs on the `mprotect`
//! backend when the handler performs it (decodes it and writes its bytes
//! through `/proc/self/mem`, the page left read-only: `trap/emulate.rs`)
//! against stepping it (the page opened to every thread for one
//! instruction, the trap flag, the page closed again: what the handler
//! does for the stores it does not decode, and did for all of them before
//! 2026-12-06, for AVX and AVX-512 moves before 2026-12-07), side by side
//! in one run.
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin bystander -- [--rounds N] [--stores N] [--out FILE]
//! ```
//!
//! **What it measures.** A runtime of two workers guards a heap on
//! `mprotect`; in each round one phase runs, whose task starts a thread
//! (a bystander: not a worker, so its stores are legal, land and stay)
//! that makes `--stores` stores of one kind into a frozen page, one fault
//! each, and times them. The kinds: a plain `mov`, a `lock xadd`, an AVX
//! `vmovdqu` of a YMM register, an AVX-512 `vmovdqu64` of ZMM16, a masked
//! `vmovdqu8` (8 of 64 bytes), and libc's `memcpy` of 256 bytes (glibc's
//! vector stores: 4 to 8 faults a copy); the AVX kinds only where the CPU
//! has them. The two variants, *performed* and *stepped*
//! (`frostheap::__private::set_store_emulation(false)`), alternate round by
//! round (`frostheap_bench::Plan`), and the table gives ns per store
//! (median, p10–p90) and the per-round ratio performed / stepped. No
//! timing is asserted: this is a report.

use std::path::PathBuf;

use clap::Parser;
use frostheap::{Heap, Runtime};
use frostheap_bench::{cli, table, Machine, Plan, Table};

/// What a bystander's store into a frozen heap costs, performed against
/// stepped.
#[derive(Parser)]
#[command(name = "bystander")]
struct Options {
    /// Timed rounds per variant and kind.
    #[arg(long, default_value_t = 15, value_parser = cli::count)]
    rounds: usize,
    /// Stores per round.
    #[arg(long, default_value_t = 2000, value_parser = cli::count)]
    stores: usize,
    /// Also write the markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A kind of store: its label, whether the CPU has it, and one store of
/// it to the 64 bytes at the address.
struct Kind {
    label: &'static str,
    available: fn() -> bool,
    store: fn(usize),
}

fn always() -> bool {
    true
}

fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

fn avx512bw() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
}

fn mov(p: usize) {
    // SAFETY: `p` is 64 writable bytes of the benchmark's page.
    unsafe { (p as *mut u64).write_volatile(p as u64) };
}

fn xadd(p: usize) {
    // SAFETY: as for `mov`; 8-aligned.
    unsafe {
        (*(p as *const std::sync::atomic::AtomicU64))
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

fn vmovdqu_ymm(p: usize) {
    // SAFETY: as for `mov`; only called where the CPU has AVX2. ymm0 is
    // caller-saved (`clobber_abi`).
    unsafe {
        core::arch::asm!("vmovdqu ymmword ptr [rdi], ymm0", "vzeroupper", in("rdi") p, clobber_abi("C"), options(nostack))
    };
}

fn vmovdqu64_zmm(p: usize) {
    // SAFETY: as for `mov`; only called where the CPU has AVX-512.
    unsafe {
        core::arch::asm!("vmovdqu64 zmmword ptr [rdi], zmm16", in("rdi") p, clobber_abi("C"), options(nostack))
    };
}

fn vmovdqu8_masked(p: usize) {
    // SAFETY: as for `mov`; the mask selects 8 of the 64 bytes; only
    // called where the CPU has AVX-512BW.
    unsafe {
        core::arch::asm!(
            "mov eax, 0xFF00",
            "kmovq k1, rax",
            "vmovdqu8 zmmword ptr [rdi]{{k1}}, zmm16",
            in("rdi") p,
            clobber_abi("C"),
            options(nostack),
        )
    };
}

fn memcpy_256(p: usize) {
    static SRC: [u8; 256] = [0xA5; 256];
    // SAFETY: the page has 256 writable bytes from `p` (see `bystander`'s
    // addresses); libc's copy, its size hidden from the compiler.
    unsafe {
        libc::memcpy(
            p as *mut libc::c_void,
            SRC.as_ptr().cast(),
            std::hint::black_box(256),
        )
    };
}

const KINDS: [Kind; 6] = [
    Kind {
        label: "`mov` 8 B",
        available: always,
        store: mov,
    },
    Kind {
        label: "`lock xadd` 8 B",
        available: always,
        store: xadd,
    },
    Kind {
        label: "AVX `vmovdqu` 32 B",
        available: avx2,
        store: vmovdqu_ymm,
    },
    Kind {
        label: "AVX-512 `vmovdqu64` 64 B",
        available: avx512bw,
        store: vmovdqu64_zmm,
    },
    Kind {
        label: "AVX-512 `vmovdqu8` 8 of 64 B, masked",
        available: avx512bw,
        store: vmovdqu8_masked,
    },
    Kind {
        label: "libc `memcpy` 256 B (per copy)",
        available: always,
        store: memcpy_256,
    },
];

/// One round: a phase whose task starts a bystander that makes `stores`
/// stores of `store` into the frozen `page` (3,840 bytes of it, 64 at a
/// time, so that every store meets a page that is still frozen); ns per
/// store.
fn round(rt: &Runtime, page: usize, stores: usize, store: fn(usize)) -> f64 {
    let ns = std::sync::Mutex::new(0.0);
    let r = rt.map(0..2usize, |i| {
        if i == 0 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let t = std::time::Instant::now();
                    for k in 0..stores {
                        store(page + (k % 15) * 256);
                    }
                    *ns.lock().expect("the round's figure") =
                        t.elapsed().as_nanos() as f64 / stores as f64;
                });
            });
        }
        i
    });
    assert_eq!(r.expect("a bystander's stores are no violation"), [0, 1]);
    ns.into_inner().expect("the round's figure")
}

fn main() {
    let o = Options::parse();
    let machine = Machine::now();
    let heap = Heap::builder()
        .name("bystander")
        .max(16 << 20)
        .build()
        .expect("a heap");
    let page = heap
        .try_alloc(std::alloc::Layout::from_size_align(4096, 4096).expect("layout"))
        .expect("a page")
        .as_ptr() as usize;
    let rt = Runtime::builder()
        .workers(2)
        .guard(&heap)
        .guard_main_heap(false)
        .protect(frostheap::Protect::Mprotect)
        .build()
        .expect("a runtime on mprotect");
    let mut t = Table::new(
        ["store", "performed ns", "stepped ns", "performed / stepped"],
        1,
    );
    let mut skipped = Vec::new();
    for kind in &KINDS {
        if !(kind.available)() {
            skipped.push(kind.label);
            continue;
        }
        let rounds = Plan::rounds(1, o.rounds).run(&[true, false], |&performed| {
            frostheap::__private::set_store_emulation(performed);
            round(&rt, page, o.stores, kind.store)
        });
        frostheap::__private::set_store_emulation(true);
        let s = rounds.samples(|ns| *ns);
        t.row([
            kind.label.to_string(),
            table::time(&s.summary(0)),
            table::time(&s.summary(1)),
            table::ratio(&s.ratio(0, 1)),
        ]);
    }
    let mut report = format!(
        "# A bystander's store into a frozen heap (`mprotect`)\n\n{}; {} rounds of {} stores per kind and variant, \
         alternating. Cells: ns per store, median (p10–p90); the ratio per round.\n\n{}",
        machine.describe(),
        o.rounds,
        o.stores,
        t
    );
    if !skipped.is_empty() {
        report.push_str(&format!(
            "\nNot measured (the CPU lacks the instructions): {}.\n",
            skipped.join(", ")
        ));
    }
    print!("{report}");
    if let Some(path) = &o.out {
        cli::write_or_exit("bystander", path, report.as_bytes());
    }
}
