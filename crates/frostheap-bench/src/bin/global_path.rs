//! `global_path`: `frostheap::Global` as a program meets it, through
//! `#[global_allocator]` (`__rust_alloc` / `__rust_dealloc`), not called
//! directly as the `alloc` benchmark calls it.
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin global_path
//! ```
//!
//! Its only dependency is `frostheap` (`Global`), so the same file builds
//! against another version of the library, to compare two versions in
//! alternating runs. Prints, for each case, the median of 7 runs in ns per
//! operation:
//!
//! - `pairN`: a `Vec<u8>` with capacity N made and dropped (one
//!   allocation and one free);
//! - `churn`: 100 live `Vec<u8>`s of 16–1,024 bytes of capacity, one
//!   replaced at random per step;
//! - `churn0`: the same with zero-filled `vec![0u8; n]` blocks
//!   (`alloc_zeroed`).

use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn pairs(size: usize, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(black_box(size));
        black_box(&v);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// xorshift64: the sequence of slots and sizes, the same in every run.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn churn(n: usize, zeroed: bool) -> f64 {
    let make = |size: usize| -> Vec<u8> {
        if zeroed {
            vec![0u8; size]
        } else {
            Vec::with_capacity(size)
        }
    };
    let mut slots: Vec<Vec<u8>> = (0..100).map(|i| make(16 + i * 10)).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let t = Instant::now();
    for _ in 0..n {
        let r = next(&mut x);
        slots[(r % 100) as usize] = make(16 + (r >> 40) as usize % 1009);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    black_box(&slots);
    ns
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// What `--help` prints.
const USAGE: &str = "usage: global_path\n\nfrostheap::Global through #[global_allocator]: the median of 7 runs, in ns per\noperation, of pairN (a Vec<u8> of capacity N made and dropped; N = 16, 256, 4096),\nchurn (100 live Vecs of 16-1,024 bytes, one replaced at random per step) and\nchurn0 (the same, zero-filled), on one line. Takes no arguments.";

/// The benchmark takes no arguments: `--help` (or `-h`) prints [`USAGE`]
/// and exits 0, anything else is refused with status 2, so that neither
/// runs the benchmark by surprise.
fn check_args() {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        eprintln!("global_path: unexpected argument {arg:?}: it takes none (--help for usage)");
        std::process::exit(2);
    }
}

fn main() {
    check_args();
    let mut line = String::new();
    for size in [16usize, 256, 4096] {
        let ns = median((0..7).map(|_| pairs(size, 2_000_000)).collect());
        line += &format!("pair{size} {ns:.2} ");
    }
    let ns = median((0..7).map(|_| churn(1_000_000, false)).collect());
    line += &format!("churn {ns:.2} ");
    let ns = median((0..7).map(|_| churn(1_000_000, true)).collect());
    line += &format!("churn0 {ns:.2}");
    println!("{line}");
}
