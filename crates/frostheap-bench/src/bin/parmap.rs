//! `parmap`: frostheap's parallel map side by side with rayon, in one run.
//!
//! ```text
//! cargo build --release -p frostheap-bench --bins
//! target/release/parmap [--reps 5] [--runs 3] [--cases cpu,alloc,memory]
//! ```
//!
//! **Cases** (`src/parmap/work.rs`): (a) `cpu`, a map over 10 M integers
//! with about 40 integer operations each; (b) `alloc`, 200,000 items that
//! each build Strings, a Vec and a HashMap (about 10–100 small
//! allocations) and return a number; (c) `memory`, 10,000 items that each
//! fill a 1 MiB intermediate, with a 64 MiB memory budget for frostheap.
//!
//! **Variants.** `frostheap`: this binary, whose global allocator is
//! `frostheap::Global`, so the main heap holds the input and each task
//! allocates in its worker's context heap; `rt.map_slice(&items, f)` on
//! a `Runtime` with the default worker count — like rayon's `par_iter`, a
//! slice-indexed path. `frostheap map`: the same binary calling the
//! generic `rt.map(&items, f)`, which accepts any iterator and therefore
//! collects the item references on main before the workers start (shown
//! so the cost of that serial step is on record). `rayon+system` and
//! `rayon+mimalloc`: `items.par_iter().map(f).collect::<Vec<_>>()` in the
//! sibling binaries `parmap_rayon_system` / `parmap_rayon_mimalloc`.
//!
//! **How.** Every variant runs in its own child process (one global
//! allocator and one peak RSS per process): the child builds the input,
//! runs once as warm-up, then `--runs` timed runs. The driver interleaves
//! the children — every variant once per repetition, `--reps` times — so
//! drift in machine load hits all alike, and reports per variant the
//! median time over all timed runs, the p10–p90 spread, throughput, the
//! ratio of frostheap's throughput to the variant's, and the child's peak
//! RSS (`getrusage` `ru_maxrss`, the maximum over its processes). The
//! children's result checksums must agree.
//!
//! Targets (issue 4): (a) frostheap ≥ 0.95× the throughput of the faster
//! rayon; (b)
//! faster than rayon with the system allocator and with mimalloc; (c)
//! peak memory within 1.25× of the 64 MiB budget. No timing is asserted:
//! this is a report.

#[path = "../parmap/work.rs"]
mod work;

use std::path::PathBuf;
use std::process::Command;

use work::{Case, MEMORY_BUDGET, MIB};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const VARIANTS: [&str; 4] = [
    "frostheap",
    "frostheap map",
    "rayon+system",
    "rayon+mimalloc",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("child") => return child(&args[1..], Path::Slice),
        Some("child-iter") => return child(&args[1..], Path::Iter),
        _ => {}
    }
    let mut reps = 5usize;
    let mut runs = 3usize;
    let mut cases: Vec<Case> = Case::ALL.to_vec();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--reps" => reps = value().parse().unwrap_or_else(|_| usage("--reps N")),
            "--runs" => runs = value().parse().unwrap_or_else(|_| usage("--runs N")),
            "--cases" => {
                cases = value()
                    .split(',')
                    .map(|c| Case::parse(c).unwrap_or_else(|| usage(&format!("unknown case {c}"))))
                    .collect()
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "parmap: {workers} hardware threads, {reps} repetitions x {runs} timed runs per variant, interleaved"
    );
    for case in cases {
        report(case, reps, runs);
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("parmap: {msg}\nusage: parmap [--reps N] [--runs N] [--cases cpu,alloc,memory]");
    std::process::exit(2)
}

/// Which frostheap entry point a child uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `rt.map_slice(&items, f)`: workers index the slice directly.
    Slice,
    /// `rt.map(&items, f)`: the generic iterator path (main collects the
    /// item references before the workers start).
    Iter,
}

/// The frostheap child, in global mode.
fn child(args: &[String], path: Path) {
    let case = args.first().and_then(|s| Case::parse(s));
    let mut b = frostheap::Runtime::builder();
    if case == Some(Case::Memory) {
        b = b.memory_budget(MEMORY_BUDGET);
    }
    let rt = b.build().expect("the runtime starts");
    work::child_main(args, &|items, f| {
        match path {
            Path::Slice => rt.map_slice(items, f),
            Path::Iter => rt.map(items, f),
        }
        .expect("the parallel map succeeds")
    });
    if case == Some(Case::Memory) {
        let s = rt.stats();
        eprintln!(
            "frostheap memory stats: bytes_per_item={} peak_phase_bytes={} batches={:?} context_committed={}",
            s.bytes_per_item,
            s.peak_phase_bytes,
            &s.batch_sizes[..s.batch_sizes.len().min(4)],
            s.context_committed
        );
    }
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.with_file_name(name)
}

#[derive(Default)]
struct Samples {
    ns: Vec<u128>,
    maxrss_kb: u64,
    check: Option<u64>,
}

fn run_child(variant: &str, case: Case, runs: usize, into: &mut Samples) {
    let (exe, mode) = match variant {
        "frostheap" => (std::env::current_exe().expect("current_exe"), "child"),
        "frostheap map" => (std::env::current_exe().expect("current_exe"), "child-iter"),
        "rayon+system" => (sibling("parmap_rayon_system"), "child"),
        _ => (sibling("parmap_rayon_mimalloc"), "child"),
    };
    if !exe.exists() {
        usage(&format!(
            "{} is missing: build with `cargo build --release -p frostheap-bench --bins`",
            exe.display()
        ));
    }
    let out = Command::new(&exe)
        .args([mode, case.name(), &runs.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{variant} {} failed: {}\n{stdout}\n{}",
        case.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "run_ns" => into.ns.push(value.parse().expect("run_ns")),
            "maxrss_kb" => into.maxrss_kb = into.maxrss_kb.max(value.parse().expect("maxrss")),
            "check" => {
                let c: u64 = value.parse().expect("check");
                if let Some(prev) = into.check {
                    assert_eq!(prev, c, "{variant}: results differ between runs");
                }
                into.check = Some(c);
            }
            _ => {}
        }
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| l.starts_with("frostheap memory stats"))
    {
        if into.ns.len() == runs {
            println!("  ({line})");
        }
    }
}

fn percentile(sorted: &[u128], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64
}

fn report(case: Case, reps: usize, runs: usize) {
    let label = match case {
        Case::Cpu => "(a) cpu: 10 M items, ~40 integer ops each",
        Case::Alloc => "(b) alloc: 200,000 items, ~10-100 small allocations each",
        Case::Memory => {
            "(c) memory: 10,000 items, 1 MiB intermediate each (frostheap budget 64 MiB)"
        }
    };
    println!("\n{label}");
    let mut samples: Vec<Samples> = VARIANTS.iter().map(|_| Samples::default()).collect();
    for _ in 0..reps {
        for (v, s) in VARIANTS.iter().zip(samples.iter_mut()) {
            run_child(v, case, runs, s);
        }
    }
    let checks: Vec<Option<u64>> = samples.iter().map(|s| s.check).collect();
    assert!(
        checks.windows(2).all(|w| w[0] == w[1]),
        "variants computed different results: {checks:?}"
    );
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.ns.sort_unstable();
            percentile(&s.ns, 0.5)
        })
        .collect();
    println!(
        "  {:<16} {:>11} {:>21} {:>13} {:>16} {:>14}",
        "variant", "median ms", "p10-p90 ms", "k items/s", "frostheap/this", "peak RSS MiB"
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        let s = &samples[i];
        let med = medians[i];
        println!(
            "  {:<16} {:>11.1} {:>21} {:>13.1} {:>15.2}x {:>14.1}",
            v,
            med / 1e6,
            format!(
                "{:.1}-{:.1}",
                percentile(&s.ns, 0.1) / 1e6,
                percentile(&s.ns, 0.9) / 1e6
            ),
            case.items() as f64 / med * 1e6,
            // Ratio of throughputs = inverse ratio of times.
            med / medians[0],
            s.maxrss_kb as f64 / 1024.0
        );
    }
    let fh = medians[0];
    let (sys, mi) = (medians[2], medians[3]);
    match case {
        Case::Cpu => println!(
            "  target (a) frostheap >= 0.95x the faster rayon: {:.2}x -> {} (generic `map` path: {:.2}x)",
            sys.min(mi) / fh,
            verdict(sys.min(mi) / fh >= 0.95),
            sys.min(mi) / medians[1]
        ),
        Case::Alloc => println!(
            "  target (b) faster than rayon+system ({:.2}x) and rayon+mimalloc ({:.2}x) -> {}",
            sys / fh,
            mi / fh,
            verdict(sys > fh && mi > fh)
        ),
        Case::Memory => {
            let peak = samples[0].maxrss_kb as f64 * 1024.0;
            println!(
                "  target (c) frostheap peak RSS {:.1} MiB <= 1.25 x 64 MiB = 80 MiB -> {}",
                peak / MIB as f64,
                verdict(peak <= 1.25 * MEMORY_BUDGET as f64)
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
