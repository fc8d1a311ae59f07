//! `bridge`: `rt.par_bridge` over the lines of a file against rayon's
//! `par_bridge`, the user's pipeline (a map per line and a sum), time and
//! memory side by side.
//!
//! ```text
//! cargo build --release -p frostheap-bench --bin bridge
//! target/release/bridge gen FILE 100        # a 100 MB text file
//! target/release/bridge frostheap FILE      # one run in this process
//! target/release/bridge rayon FILE
//! ```
//!
//! Each run prints one line: the variant, the checksum, the seconds the
//! call took, and the process's peak (VmHWM) and resident (VmRSS) memory
//! after the call, in MiB. The variants share this binary, so rayon runs on
//! `frostheap::Global` too (as the user's program did); run each in its
//! own process and alternate them to compare (medians of rounds). No
//! timing is asserted: this is a report.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use rayon::iter::{ParallelBridge, ParallelIterator};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

/// The per-line work: words and the bytes of the longest one.
fn work(line: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.len() as u64 * 1000 + words.iter().map(|w| w.len()).max().unwrap_or(0) as u64
}

fn status_mb(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn generate(path: &str, mb: usize) {
    let mut out = BufWriter::new(File::create(path).expect("create"));
    let (mut written, mut x) = (0usize, 0x9e37_79b9_7f4a_7c15u64);
    while written < mb * 1_000_000 {
        // xorshift: lines of 1 to 12 words of 1 to 9 letters.
        let mut line = String::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for w in 0..(x % 12 + 1) {
            if w > 0 {
                line.push(' ');
            }
            for c in 0..((x >> (w * 3)) % 9 + 1) {
                line.push((b'a' + ((x >> (c + w)) % 26) as u8) as char);
            }
        }
        writeln!(out, "{line}").expect("write");
        written += line.len() + 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, path) = (args[1].as_str(), args[2].as_str());
    if mode == "gen" {
        generate(path, args[3].parse().expect("MB"));
        return;
    }
    let lines = || BufReader::new(File::open(path).expect("open")).lines();
    // Built before the clock starts and kept until the figures are read, as
    // a program that goes on using its runtime would.
    // FROSTHEAP_BENCH_BUDGET=64M: the same call under a memory budget.
    let mut b = frostheap::Runtime::builder().workers(2);
    if let Ok(v) = std::env::var("FROSTHEAP_BENCH_BUDGET") {
        let mib: usize = v.trim_end_matches('M').parse().expect("budget in M");
        b = b.memory_budget(mib << 20);
    }
    let rt = b.build().expect("runtime");
    let t = Instant::now();
    let sum: u64 = match mode {
        "frostheap" => rt
            .par_bridge(lines())
            .map(|l| work(&l.expect("line")))
            .sum()
            .expect("call"),
        "rayon" => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("pool");
            pool.install(|| lines().par_bridge().map(|l| work(&l.expect("line"))).sum())
        }
        "seq" => lines().map(|l| work(&l.expect("line"))).sum(),
        m => panic!("unknown mode {m}"),
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{mode} sum={sum} secs={secs:.3} hwm_mib={:.1} rss_after_mib={:.1}",
        status_mb("VmHWM:"),
        status_mb("VmRSS:")
    );
    drop(rt);
}
