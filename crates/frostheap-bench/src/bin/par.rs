//! `par`: frostheap's parallel API (`rt.par(..)`, issue 15) side by side
//! with rayon, case by case, in one run.
//!
//! ```text
//! cargo build --release -p frostheap-bench --bins
//! target/release/par [--reps 5] [--runs 3] [--cases map-vec,map-range,...]
//! target/release/par --reps 1 --runs 1      # brief
//! ```
//!
//! **Cases** (`src/bin/par/work.rs`): a CPU-bound map (about 40 integer
//! operations per item, 10 M items) over a `Vec` moved into the call, a
//! `Range` and a slice, each collected in order; `filter_map` + `sum`;
//! `fold` into a 16-bucket histogram + `reduce`; an unstable sort of 10 M
//! random `u64`; and the allocation-heavy map of `parmap`'s case (b).
//!
//! **Variants**, each in its own process: `frostheap`, this binary with
//! `frostheap::Global` as the global allocator and the default runtime
//! (`rt.par(&v).map(f).collect()`, `rt.sort_unstable(&mut v)`, ...; data
//! the sort changes is built inside `frostheap::unguarded`, as it must
//! be); `rayon+Global`, rayon's equivalent (`v.par_iter().map(f)
//! .collect()`, `v.par_sort_unstable()`, ...) in this same binary, so with
//! the same allocator; `rayon+system` and `rayon+mimalloc` in the sibling
//! binaries `par_rayon_system` / `par_rayon_mimalloc`. Both engines use
//! one worker per hardware thread.
//!
//! **How.** Each child builds its input, runs the case once as warm-up,
//! then `--runs` timed runs of the parallel call alone; the driver
//! interleaves the children (`frostheap_bench::Plan`, the first variant
//! rotating) `--reps` times and reports per variant the median time and
//! p10–p90 over every timed run, and frostheap's throughput over each
//! variant's as per-round ratios (median and p10–p90). Checksums must
//! agree.
//!
//! Targets (issue 15): every map, `filter_map` + `sum` and `fold` +
//! `reduce` ≥ 0.95× the throughput of rayon with the same allocator; the
//! sort ≥ 0.9× `par_sort_unstable`; (b) faster than rayon with mimalloc.
//! No timing is asserted: this is a report.

#[path = "par/work.rs"]
mod work;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use frostheap::Runtime;
use frostheap_bench::child::{self, Outcome, Variant};
use frostheap_bench::{cli, table, Machine, Table};
use work::{Case, ChildArgs, Engine, Histogram};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

/// frostheap's parallel API against rayon (on frostheap's allocator, glibc
/// and mimalloc), each variant in its own process, interleaved.
#[derive(Parser)]
#[command(name = "par")]
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
        default_value = "map-vec,map-range,map-slice,filter-map-sum,fold-reduce,sort,alloc"
    )]
    cases: Vec<Case>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The children this binary runs as (started by the driver, hidden).
#[derive(Subcommand)]
enum ChildMode {
    /// frostheap's parallel API.
    #[command(hide = true)]
    Frostheap(ChildArgs),
    /// rayon, with this binary's allocator (`frostheap::Global`).
    #[command(hide = true)]
    Rayon(ChildArgs),
}

/// frostheap's implementation of every case.
struct Frostheap(Runtime);

impl Engine for Frostheap {
    fn writable_copy(&self, v: &[u64]) -> Vec<u64> {
        // Tasks may change only memory outside the guarded main heap.
        frostheap::unguarded(|| v.to_vec())
    }
    fn map_vec(&self, input: Vec<u64>) -> Vec<u64> {
        self.0.par(input).map(work::cpu).collect().expect("map")
    }
    fn map_range(&self, n: u64) -> Vec<u64> {
        self.0.par(0..n).map(work::cpu).collect().expect("map")
    }
    fn map_slice(&self, input: &[u64]) -> Vec<u64> {
        self.0
            .par(input)
            .map(|x| work::cpu(*x))
            .collect()
            .expect("map")
    }
    fn filter_map_sum(&self, input: &[u64]) -> u64 {
        self.0
            .par(input)
            .filter_map(|x| work::keep(*x))
            .sum()
            .expect("sum")
    }
    fn fold_reduce(&self, input: &[u64]) -> Histogram {
        self.0
            .par(input)
            .fold(|| [0; 16], |h, x| work::bucket(h, *x))
            .reduce(|| [0; 16], work::merge)
            .expect("reduce")
    }
    fn sort(&self, data: &mut [u64]) {
        self.0.sort_unstable(data).expect("sort");
    }
    fn alloc(&self, input: &[u64]) -> Vec<u64> {
        self.0
            .par(input)
            .map(|x| work::alloc_heavy(*x))
            .collect()
            .expect("map")
    }
}

fn main() {
    let o = Options::parse();
    match o.child {
        Some(ChildMode::Frostheap(a)) => {
            let rt = Runtime::builder().build().expect("the runtime starts");
            return work::child_main(&Frostheap(rt), a.case, a.runs);
        }
        Some(ChildMode::Rayon(a)) => return work::child_main(&work::Rayon, a.case, a.runs),
        None => {}
    }
    let variants = [
        Variant::beside_me("frostheap", "par", "frostheap"),
        Variant::beside_me("rayon+Global", "par", "rayon"),
        Variant::beside_me("rayon+system", "par_rayon_system", "rayon"),
        Variant::beside_me("rayon+mimalloc", "par_rayon_mimalloc", "rayon"),
    ];
    child::require_built("par", &variants);
    let machine = Machine::now();
    let mut report = String::new();
    let mut summary = Table::new(
        [
            "case",
            "target",
            "frostheap / baseline (throughput)",
            "verdict",
        ],
        2,
    );
    for &case in &o.cases {
        report += &run_case(&o, case, &variants, &mut summary);
    }
    let text = format!(
        "# par\n\n{}; {} repetitions × {} timed runs per variant, interleaved\n\n{summary}{report}",
        machine.describe(),
        o.reps,
        o.runs
    );
    print!("{text}");
    if let Some(path) = &o.out {
        cli::write_or_exit("par", path, text.as_bytes());
    }
}

/// Runs one case under every variant, interleaved; returns its report and
/// adds its target line to `summary`.
fn run_case(o: &Options, case: Case, variants: &[Variant], summary: &mut Table) -> String {
    eprintln!("par: {} …", case.name());
    let runs = o.runs.to_string();
    let rounds = child::run_checked(case.name(), variants, o.reps, &[case.name(), &runs]);
    let ns = rounds.samples_each(Outcome::samples);
    let mut t = Table::new(
        [
            "variant",
            "median ms (p10–p90)",
            "k items/s",
            "frostheap/this (throughput)",
        ],
        1,
    );
    for (i, v) in variants.iter().enumerate() {
        let time = ns.summary(i);
        t.row([
            v.name.to_string(),
            table::number(&time.scaled(1e-6), 1),
            format!("{:.0}", case.items() as f64 / time.median * 1e6),
            table::ratio(&ns.ratio(i, 0)),
        ]);
    }
    let (baseline, floor, what) = match case {
        Case::Sort => (1, 0.9, "≥ 0.9× par_sort_unstable (same allocator)"),
        Case::Alloc => (3, 1.0, "> 1× rayon+mimalloc"),
        _ => (1, 0.95, "≥ 0.95× rayon, same allocator"),
    };
    let r = ns.ratio(baseline, 0);
    let ok = if case == Case::Alloc {
        r.median > floor
    } else {
        r.median >= floor
    };
    summary.row([
        case.name().to_string(),
        what.to_string(),
        table::ratio(&r),
        if ok { "met" } else { "NOT met" }.to_string(),
    ]);
    format!("\n## {}\n\n{t}", case.title())
}
