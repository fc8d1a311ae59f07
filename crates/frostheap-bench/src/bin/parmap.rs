//! `parmap`: frostheap's parallel map side by side with rayon, in one run.
//!
//! ```text
//! cargo build --release -p frostheap-bench --bins
//! target/release/parmap [--reps 5] [--runs 3] [--cases cpu,alloc,memory]
//! target/release/parmap --reps 1 --runs 1      # brief
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
//! allocator and one peak RSS per process; `frostheap_bench::child`): the
//! child builds the input, runs once as warm-up, then `--runs` timed runs.
//! The driver interleaves the children — every variant once per
//! repetition, the first variant rotating, `--reps` times
//! (`frostheap_bench::Plan`) — so drift in machine load hits all alike,
//! and reports per variant the median time over all timed runs, the
//! p10–p90 spread, throughput, frostheap's throughput over the variant's
//! (per round: timed run `k` of repetition `r` of each variant form a
//! round; median and p10–p90 of those ratios), and the child's peak RSS
//! (`ru_maxrss` from `wait4`, the largest over the repetitions). The
//! children's result checksums must agree.
//!
//! Targets (issue 4): (a) frostheap ≥ 0.95× the throughput of the faster
//! rayon; (b)
//! faster than rayon with the system allocator and with mimalloc; (c)
//! peak memory within 1.25× of the 64 MiB budget. No timing is asserted:
//! this is a report.

use clap::{Parser, Subcommand};
use frostheap_bench::child::{self, Outcome, Variant};
use frostheap_bench::parmap::{self, Case, ChildArgs, MEMORY_BUDGET, MIB};
use frostheap_bench::{cli, table, Machine, Table};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

/// frostheap's parallel map against rayon (on glibc and on mimalloc), each
/// variant in its own process, interleaved.
#[derive(Parser)]
#[command(name = "parmap")]
struct Options {
    #[command(subcommand)]
    child: Option<ChildMode>,
    /// Repetitions: every variant runs once per repetition.
    #[arg(long, default_value_t = 5, value_parser = cli::count)]
    reps: usize,
    /// Timed runs inside each child, after one warm-up run.
    #[arg(long, default_value_t = 3, value_parser = cli::count)]
    runs: usize,
    /// The cases, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cpu,alloc,memory"
    )]
    cases: Vec<Case>,
}

/// The children this binary runs as (started by the driver, hidden).
#[derive(Subcommand)]
enum ChildMode {
    /// `rt.map_slice(&items, f)`: workers index the slice directly.
    #[command(hide = true)]
    Child(ChildArgs),
    /// `rt.map(&items, f)`: the generic iterator path (main collects the
    /// item references before the workers start).
    #[command(hide = true)]
    ChildIter(ChildArgs),
}

fn main() {
    let o = Options::parse();
    match o.child {
        Some(ChildMode::Child(args)) => return frostheap_child(&args, false),
        Some(ChildMode::ChildIter(args)) => return frostheap_child(&args, true),
        None => {}
    }
    let variants = [
        Variant::beside_me("frostheap", "parmap", "child"),
        Variant::beside_me("frostheap map", "parmap", "child-iter"),
        Variant::beside_me("rayon+system", "parmap_rayon_system", "child"),
        Variant::beside_me("rayon+mimalloc", "parmap_rayon_mimalloc", "child"),
    ];
    child::require_built("parmap", &variants);
    let machine = Machine::now();
    let mut report = String::new();
    for &case in &o.cases {
        report += &run_case(&o, case, &variants);
    }
    println!(
        "# parmap\n\n{}; {} repetitions × {} timed runs per variant, interleaved\n{report}",
        machine.describe(),
        o.reps,
        o.runs
    );
}

/// The frostheap child, in global mode.
fn frostheap_child(args: &ChildArgs, generic: bool) {
    let mut b = frostheap::Runtime::builder();
    if args.case == Case::Memory {
        b = b.memory_budget(MEMORY_BUDGET);
    }
    let rt = b.build().expect("the runtime starts");
    parmap::child_main(args, &|items, f| {
        if generic {
            rt.map(items, f)
        } else {
            rt.map_slice(items, f)
        }
        .expect("the parallel map succeeds")
    });
    if args.case == Case::Memory {
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

/// Runs one case under every variant, interleaved; returns its report.
fn run_case(o: &Options, case: Case, variants: &[Variant]) -> String {
    eprintln!("parmap: {} …", case.name());
    let runs = o.runs.to_string();
    let rounds = child::run_checked(case.name(), variants, o.reps, &[case.name(), &runs]);
    let ns = rounds.samples_each(Outcome::samples);
    let peak_rss = |i: usize| {
        rounds
            .of(i)
            .iter()
            .map(|out| {
                // The child's own: wait4's would be at least this driver's
                // resident set (see `child::Outcome::peak_rss`).
                out.reported_peak_rss()
                    .expect("a parmap child reports its peak RSS")
            })
            .max()
            .unwrap_or(0)
    };
    let mut s = format!("\n## {}\n\n", case.title());
    if let Some(line) = rounds.of(0)[0]
        .stderr
        .lines()
        .find(|l| l.starts_with("frostheap memory stats"))
    {
        s += &format!("({line})\n\n");
    }
    let mut t = Table::new(
        [
            "variant",
            "median ms (p10–p90)",
            "k items/s",
            "frostheap/this (throughput)",
            "peak RSS MiB",
        ],
        1,
    );
    for (i, v) in variants.iter().enumerate() {
        let time = ns.summary(i);
        t.row([
            v.name.to_string(),
            table::number(&time.scaled(1e-6), 1),
            format!("{:.1}", case.items() as f64 / time.median * 1e6),
            // frostheap's throughput over this variant's = this variant's
            // time over frostheap's, round by round.
            table::ratio(&ns.ratio(i, 0)),
            format!("{:.1}", peak_rss(i) as f64 / MIB as f64),
        ]);
    }
    s += &t.to_string();
    let faster_rayon = ns.lowest_median(&[2, 3]);
    let target = match case {
        Case::Cpu => {
            let r = ns.ratio(faster_rayon, 0);
            format!(
                "target (a) frostheap ≥ 0.95× the throughput of the faster rayon ({}): {} → {} \
                 (generic `map` path: {})",
                variants[faster_rayon].name,
                table::ratio(&r),
                verdict(r.median >= 0.95),
                table::ratio(&ns.ratio(faster_rayon, 1))
            )
        }
        Case::Alloc => {
            let (sys, mi) = (ns.ratio(2, 0), ns.ratio(3, 0));
            format!(
                "target (b) faster than rayon+system ({}) and rayon+mimalloc ({}) → {}",
                table::ratio(&sys),
                table::ratio(&mi),
                verdict(sys.median > 1.0 && mi.median > 1.0)
            )
        }
        Case::Memory => {
            let peak = peak_rss(0) as f64;
            format!(
                "target (c) frostheap peak RSS {:.1} MiB ≤ 1.25 × 64 MiB = 80 MiB → {}",
                peak / MIB as f64,
                verdict(peak <= 1.25 * MEMORY_BUDGET as f64)
            )
        }
    };
    s + "\n" + &target + "\n"
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
