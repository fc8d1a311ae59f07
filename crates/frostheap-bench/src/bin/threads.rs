//! `threads`: multi-threaded allocation, frostheap against glibc, mimalloc
//! and jemalloc, as Rust global allocators and as `LD_PRELOAD` libraries,
//! in one interleaved run.
//!
//! ```text
//! cargo build --release -p frostheap-capi -p frostheap-bench
//! cargo run --release -p frostheap-bench --bin threads -- [--threads 2] [--rounds 7]
//! ```
//!
//! Cases (see `frostheap_bench::threads` and `preload/threads.c`, the same
//! cases in Rust and C): per-thread alloc/free loops of 16 B – 4 KiB,
//! with 64 blocks live (`local`) and with 25,000 (`working-set`, about 50
//! MiB a thread, where peak RSS shows what an allocator adds to live data);
//! larson (threads replace random blocks of a shared array, so most frees
//! are remote); producer/consumer pairs, placed by the scheduler, pinned
//! to one CPU and pinned to two (`prodcons-1cpu`, `prodcons-2cpu`; the
//! last is skipped, with a line saying so, on one CPU); threads created
//! and joined in a loop, each allocating a little (`spawn`) or 32 blocks
//! of 4 KiB – 256 KiB written whole (`spawn-large`). Every variant runs in its own process (a global
//! allocator or a preloaded library is one per process), so each round
//! also gives the child's peak RSS, which the child reports itself (its
//! `VmHWM`: the kernel's figure for a child starts at its parent's
//! resident set). A case reports the median ns per operation of one
//! thread (p10–p90), frostheap's per-round ratio to the best of the three
//! others (the one with the lowest median), peak RSS, and which of the
//! others, if any, is both faster and smaller than frostheap (by medians:
//! where none is, a bound missed over the best is a trade of time for
//! memory or the reverse); then the fixed RSS of a trivial program under
//! each.
//!
//! Nothing here is asserted: the figures depend on the machine and its
//! load, which the report's first line states.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use frostheap_bench::child::{self, Outcome};
use frostheap_bench::{cli, table, Machine, Plan, Samples, Table};

const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const NAMES: [&str; 4] = ["glibc", "mimalloc", "jemalloc", "frostheap"];
const CASES: [&str; 8] = [
    "local",
    "working-set",
    "larson",
    "prodcons",
    "prodcons-1cpu",
    "prodcons-2cpu",
    "spawn",
    "spawn-large",
];

/// Multi-threaded allocation benchmark (see the module documentation).
#[derive(Parser)]
#[command(name = "threads")]
struct Options {
    /// Threads per case (producer/consumer uses pairs of them).
    #[arg(long, default_value_t = 2, value_parser = cli::count)]
    threads: usize,
    /// Timed rounds per variant and case (each a fresh process).
    #[arg(long, default_value_t = 7, value_parser = cli::count)]
    rounds: usize,
    /// Operations per thread in a round (thread generations for `spawn`
    /// and `spawn-large` are this divided by 1,000).
    #[arg(long, default_value_t = 400_000, value_parser = cli::count)]
    ops: usize,
    /// Only these cases (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(CASES))]
    only: Vec<String>,
    /// Also write the markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One way to run the workloads: a Rust binary with its global allocator,
/// or the C program with a preloaded library.
struct Variant {
    name: String,
    program: PathBuf,
    preload: Option<PathBuf>,
}

impl Variant {
    fn run(&self, case: &str, threads: usize, ops: usize) -> Outcome {
        let mut cmd = Command::new(&self.program);
        cmd.args([case, &threads.to_string(), &ops.to_string(), "2"]);
        if let Some(lib) = &self.preload {
            cmd.env("LD_PRELOAD", lib);
        }
        child::run(&mut cmd).unwrap_or_else(|e| panic!("{} {case}: {e}", self.name))
    }
}

fn variants(dir: &Path, c_program: &Path) -> (Vec<Variant>, Vec<Variant>) {
    let rust = NAMES
        .iter()
        .map(|n| Variant {
            name: n.to_string(),
            program: dir.join(format!(
                "threads_{}",
                if *n == "glibc" { "system" } else { n }
            )),
            preload: None,
        })
        .collect();
    let libs = [
        None,
        Some(PathBuf::from(MIMALLOC)),
        Some(PathBuf::from(JEMALLOC)),
        Some(dir.join("libfrostheap.so")),
    ];
    let c = NAMES
        .iter()
        .zip(libs)
        .map(|(n, lib)| Variant {
            name: n.to_string(),
            program: c_program.to_path_buf(),
            preload: lib,
        })
        .collect();
    (rust, c)
}

/// One table: the cases of one kind of variant.
fn report(title: &str, vs: &[Variant], cases: &[&str], o: &Options) -> String {
    let mut t = Table::new(
        [
            "case",
            "glibc ns",
            "mimalloc ns",
            "jemalloc ns",
            "frostheap ns",
            "best other",
            "frostheap / best",
            "peak RSS MiB (g / mi / je / fh)",
            "fh RSS / best",
            "faster and smaller",
        ],
        1,
    );
    for case in cases {
        let ops = if case.starts_with("spawn") {
            (o.ops / 1000).max(1)
        } else {
            o.ops
        };
        let rounds = Plan::rounds(1, o.rounds).run(vs, |v| v.run(case, o.threads, ops));
        // The second run of each child (its first is a warm-up).
        let ns = rounds.samples(|out: &Outcome| *out.samples().last().expect("a sample"));
        let rss = rounds.samples(|out: &Outcome| own_peak_rss(out) as f64 / (1 << 20) as f64);
        let best = ns.lowest_median(&[0, 1, 2]);
        let best_rss = rss.lowest_median(&[0, 1, 2]);
        let mut row = vec![case.to_string()];
        row.extend((0..4).map(|i| table::number(&ns.summary(i), 1)));
        row.push(NAMES[best].to_string());
        row.push(table::ratio(&ns.ratio(3, best)));
        row.push(
            (0..4)
                .map(|i| format!("{:.1}", rss.summary(i).median))
                .collect::<Vec<_>>()
                .join(" / "),
        );
        row.push(table::ratio(&rss.ratio(3, best_rss)));
        let medians = |s: &Samples| -> [f64; 4] { core::array::from_fn(|i| s.summary(i).median) };
        row.push(dominating(medians(&ns), medians(&rss)));
        t.row(row);
    }
    let mut fixed = Table::new(
        [
            "trivial program",
            "glibc",
            "mimalloc",
            "jemalloc",
            "frostheap",
        ],
        1,
    );
    let rounds = Plan::rounds(0, o.rounds).run(vs, |v| v.run("none", 1, 1));
    let rss = rounds.samples(|out: &Outcome| own_peak_rss(out) as f64 / 1024.0);
    let mut row = vec!["peak RSS KiB".to_string()];
    row.extend((0..4).map(|i| table::number(&rss.summary(i), 0)));
    fixed.row(row);
    format!("\n## {title}\n\n{t}\n{fixed}")
}

/// The baselines that beat frostheap (the last of [`NAMES`]) on both time
/// and peak RSS at once, by their medians: "none" where the time and the
/// memory that frostheap gives up each buy it the other (the column says
/// whether a case's bound over the best is missed for a trade or outright).
fn dominating(ns: [f64; 4], rss: [f64; 4]) -> String {
    let fh = NAMES.len() - 1;
    let names: Vec<&str> = (0..fh)
        .filter(|&i| ns[i] < ns[fh] && rss[i] < rss[fh])
        .map(|i| NAMES[i])
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The child's own peak RSS, as it reported it: `wait4`'s would be at least
/// this driver's resident set (see `child::Outcome::peak_rss`), which made
/// every small case read about 2.7 MiB.
fn own_peak_rss(out: &Outcome) -> u64 {
    out.reported_peak_rss().unwrap_or_else(|| {
        panic!(
            "a child did not report its peak RSS; its output:\n{}",
            out.stdout
        )
    })
}

fn main() {
    let o = Options::parse();
    let machine = Machine::now();
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("own directory").to_path_buf();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload/threads.c");
    let c_program = std::env::temp_dir().join(format!("frostheap-threads-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&c_program)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("threads: cannot run `cc` to build {}: {e}", src.display());
            std::process::exit(2)
        });
    if !status.success() {
        eprintln!("threads: `cc` failed on {} ({status})", src.display());
        std::process::exit(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut skipped = String::new();
    let cases: Vec<&str> = CASES
        .into_iter()
        .filter(|c| o.only.is_empty() || o.only.iter().any(|x| x == c))
        .filter(|&c| {
            let fits = c != "prodcons-2cpu" || cpus >= 2;
            if !fits {
                skipped += "\nSkipped: prodcons-2cpu (this process may use one CPU).\n";
            }
            fits
        })
        .collect();
    let (rust, c) = variants(&dir, &c_program);
    for v in rust.iter().chain(&c) {
        for p in [Some(&v.program), v.preload.as_ref()].into_iter().flatten() {
            if !p.is_file() {
                let how = if p.starts_with("/usr") {
                    "install the baselines from Debian's packages: `apt-get install libmimalloc2.0 libjemalloc2`"
                } else {
                    "build with `cargo build --release -p frostheap-capi -p frostheap-bench`"
                };
                eprintln!("threads: {} not found: {how}", p.display());
                std::process::exit(2);
            }
            // What this build wrote is read from disk, as the installed
            // baselines are (see `read_from_disk_next`): the RSS comparison
            // would otherwise count the page cache's state, not the
            // allocators.
            if p.starts_with(&dir) || p == &c_program {
                frostheap_bench::machine::read_from_disk_next(p).unwrap_or_else(|e| {
                    panic!("dropping {} from the page cache: {e}", p.display())
                });
            }
        }
    }
    let mut text = format!(
        "# Multi-threaded allocation\n\n{}; {} threads; {} rounds per variant and case, \
         each a fresh process whose second run is timed, variants interleaved. \
         Cells: median ns per operation of one thread (p10–p90); ratios per round \
         (below 1.00 frostheap is faster); peak RSS medians. The benchmark's own \
         programs and libfrostheap.so are read from disk, as the installed baselines are.\n",
        machine.describe(),
        o.threads,
        o.rounds
    );
    text += &skipped;
    text += &report("Rust global allocators", &rust, &cases, &o);
    text += &report("C programs under LD_PRELOAD", &c, &cases, &o);
    let _ = std::fs::remove_file(&c_program);
    print!("{text}");
    if let Some(out) = &o.out {
        cli::write_or_exit("threads", out, text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::dominating;

    #[test]
    fn a_baseline_dominates_only_when_both_faster_and_smaller() {
        // (ns, peak RSS) medians of glibc, mimalloc, jemalloc, frostheap.
        let cases: [([f64; 4], [f64; 4], &str); 4] = [
            // glibc smaller but slower, jemalloc faster but larger: a trade.
            ([70.0, 16.0, 15.0, 7.0], [2.0, 3.4, 5.1, 2.5], "none"),
            ([70.0, 16.0, 15.0, 20.0], [2.0, 3.4, 2.4, 2.5], "jemalloc"),
            (
                [7.0, 6.0, 15.0, 8.0],
                [2.0, 2.4, 5.1, 2.5],
                "glibc, mimalloc",
            ),
            // A tie is no win.
            ([8.0, 16.0, 15.0, 8.0], [2.5, 3.4, 5.1, 2.5], "none"),
        ];
        for (ns, rss, want) in cases {
            assert_eq!(dominating(ns, rss), want, "ns {ns:?}, rss {rss:?}");
        }
    }
}
