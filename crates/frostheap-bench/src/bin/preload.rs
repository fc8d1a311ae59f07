//! `preload`: unmodified programs under four allocators, side by side, in
//! one run — glibc, Debian's libmimalloc and libjemalloc, and
//! libfrostheap, the last three through `LD_PRELOAD`.
//!
//! Workloads: an allocation-heavy Python script (dicts, lists, strings;
//! `preload/alloc_heavy.py`), a C allocation loop
//! (`preload/alloc_loop.c`) and a C program that makes a batch of 1-65 KiB
//! buffers and frees it all, round after round, as a garbage collector
//! does (`preload/batch_rounds.c`); the C programs are compiled here with
//! `cc -O2`. Repetitions are
//! interleaved (every allocator once per round, the first rotating;
//! `frostheap_bench::Plan`), each run a child process
//! (`frostheap_bench::child`), so drift in machine load hits all of them
//! alike; the report gives the median wall time with its p10–p90 spread,
//! the per-round ratio to glibc and to the fastest (median and p10–p90),
//! and the same for CPU time (user + system of the child, from `wait4`),
//! which a shared, busy machine disturbs less than wall time, and the
//! child's peak RSS (`ru_maxrss`; at least this process's own, a few MiB).
//!
//! ```text
//! cargo build --release -p frostheap-capi -p frostheap-bench
//! apt-get install libmimalloc2.0 libjemalloc2      # optional baselines
//! target/release/preload [--reps 7] [--only python|c|batch] [--ops N]
//!                        [--rounds N] [--batch N] [--lib NAME=PATH]...
//! target/release/preload --reps 1 --ops 2000000 --rounds 1   # brief
//! ```
//!
//! `--lib NAME=PATH` adds another preloaded library (say, an earlier build
//! of libfrostheap.so) to the same interleaved run, for before/after
//! comparisons. An allocator whose library is not installed is skipped
//! with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Parser, ValueEnum};
use frostheap_bench::child::{self, Outcome};
use frostheap_bench::{cli, table, Machine, Plan, Table};

const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// Unmodified programs under glibc, mimalloc, jemalloc and libfrostheap
/// (`LD_PRELOAD`), interleaved.
#[derive(Parser)]
#[command(name = "preload")]
struct Options {
    /// Repetitions: every allocator runs each workload once per repetition.
    #[arg(long, default_value_t = 7, value_parser = cli::count)]
    reps: usize,
    /// Run this workload only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Operations of the C loop.
    #[arg(long, default_value_t = 20_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
    /// Rounds of the Python script.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Buffers in each round of the batch program (300 rounds; 1,000
    /// buffers are ~33 MB).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Another preloaded library in the same run (an earlier build, say).
    #[arg(long = "lib", value_name = "NAME=PATH", value_parser = lib_spec)]
    extra: Vec<(String, PathBuf)>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Only {
    /// The Python script.
    Python,
    /// The C malloc/free loop.
    C,
    /// The C program of batches made and freed, round after round.
    Batch,
}

fn lib_spec(spec: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = spec
        .split_once('=')
        .ok_or("expected NAME=PATH, e.g. before=/tmp/libfrostheap.so")?;
    if !Path::new(path).is_file() {
        return Err(format!("{path} is not a file"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

struct Allocator {
    name: String,
    /// `None`: the system allocator (no preload).
    preload: Option<PathBuf>,
}

struct Workload {
    name: &'static str,
    argv: Vec<String>,
}

fn main() {
    let o = Options::parse();
    let mut allocators = allocators();
    for (name, path) in &o.extra {
        allocators.push(Allocator {
            name: name.clone(),
            preload: Some(path.clone()),
        });
    }
    let (workloads, compiled) = match workloads(&o) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("preload: {e}");
            std::process::exit(2);
        }
    };
    let machine = Machine::now();
    let mut report = String::new();
    for w in &workloads {
        report += &run_workload(&o, w, &allocators);
    }
    println!(
        "# preload\n\n{}; {} interleaved repetitions; wall and CPU (user + system) time, median \
         (p10–p90); ratios per repetition, median (p10–p90)\n{report}",
        machine.describe(),
        o.reps
    );
    for bin in compiled {
        let _ = std::fs::remove_file(bin);
    }
}

/// Runs `w` under every allocator, interleaved; returns its report.
fn run_workload(o: &Options, w: &Workload, allocators: &[Allocator]) -> String {
    eprintln!("preload: {} …", w.name);
    let rounds = Plan::rounds(0, o.reps).run(allocators, |a| {
        let mut cmd = Command::new(&w.argv[0]);
        cmd.args(&w.argv[1..])
            .env_remove("LD_PRELOAD")
            .env_remove("FROSTHEAP_STATS");
        if let Some(p) = &a.preload {
            cmd.env("LD_PRELOAD", p);
        }
        let out =
            child::run(&mut cmd).unwrap_or_else(|e| panic!("{} under {}: {e}", w.name, a.name));
        eprintln!("  {:<11} {:?}", a.name, out.wall);
        out
    });
    // Same program, same answer, whatever the allocator.
    let expected = &rounds.of(0)[0].stdout;
    for (i, a) in allocators.iter().enumerate() {
        for out in rounds.of(i) {
            assert_eq!(
                &out.stdout, expected,
                "{} under {} printed other results than under glibc",
                w.name, a.name
            );
        }
    }
    let mut t = Table::new(
        [
            "allocator",
            "wall s",
            "÷ glibc",
            "÷ fastest",
            "CPU s",
            "÷ glibc",
            "÷ fastest",
            "peak RSS MiB",
            "÷ glibc",
        ],
        1,
    );
    let wall = rounds.samples(|out: &Outcome| out.wall.as_secs_f64());
    let cpu = rounds.samples(|out: &Outcome| out.cpu.as_secs_f64());
    let peak = rounds.samples(|out: &Outcome| out.peak_rss as f64 / (1u64 << 20) as f64);
    let all: Vec<usize> = (0..allocators.len()).collect();
    let (wall_fastest, cpu_fastest) = (wall.lowest_median(&all), cpu.lowest_median(&all));
    for (i, a) in allocators.iter().enumerate() {
        t.row([
            a.name.clone(),
            table::number(&wall.summary(i), 3),
            table::ratio(&wall.ratio(i, 0)),
            table::ratio(&wall.ratio(i, wall_fastest)),
            table::number(&cpu.summary(i), 3),
            table::ratio(&cpu.ratio(i, 0)),
            table::ratio(&cpu.ratio(i, cpu_fastest)),
            table::number(&peak.summary(i), 1),
            table::ratio(&peak.ratio(i, 0)),
        ]);
    }
    format!("\n## {}\n\n{t}", w.name)
}
fn allocators() -> Vec<Allocator> {
    let mut out = vec![Allocator {
        name: "glibc".into(),
        preload: None,
    }];
    for (name, path) in [("mimalloc", MIMALLOC), ("jemalloc", JEMALLOC)] {
        if Path::new(path).is_file() {
            out.push(Allocator {
                name: name.into(),
                preload: Some(PathBuf::from(path)),
            });
        } else {
            eprintln!("preload: skipping {name}: {path} is not installed (apt-get install libmimalloc2.0 libjemalloc2)");
        }
    }
    let exe = std::env::current_exe().expect("own path");
    let lib = exe.parent().expect("own directory").join("libfrostheap.so");
    if lib.is_file() {
        out.push(Allocator {
            name: "frostheap".into(),
            preload: Some(lib),
        });
    } else {
        eprintln!(
            "preload: skipping frostheap: {} not found (cargo build --release -p frostheap-capi)",
            lib.display()
        );
    }
    out
}

/// The workloads to run, and the C programs compiled for them (to delete).
fn workloads(opts: &Options) -> Result<(Vec<Workload>, Vec<PathBuf>), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload");
    let mut out = Vec::new();
    let mut compiled = Vec::new();
    let want = |w: Only| opts.only.is_none_or(|only| only == w);
    // The real interpreter, not a pyenv shim (whose bash would be timed).
    match Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        _ if !want(Only::Python) => {}
        Ok(o) if o.status.success() => {
            let py = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let script = dir.join("alloc_heavy.py").display().to_string();
            out.push(Workload {
                name: "python dicts/lists/str",
                argv: vec![py, script, opts.rounds.to_string()],
            });
        }
        _ => eprintln!("preload: skipping the Python workload: python3 not found"),
    }
    let mut compile = |source: &str| -> Result<String, String> {
        let stem = source.trim_end_matches(".c");
        let bin = std::env::temp_dir().join(format!("frostheap-{stem}-{}", std::process::id()));
        let status = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(dir.join(source))
            .status()
            .map_err(|e| format!("cannot run cc: {e}"))?;
        if !status.success() {
            return Err(format!("cc failed on preload/{source}"));
        }
        compiled.push(bin.clone());
        Ok(bin.display().to_string())
    };
    if want(Only::C) {
        out.push(Workload {
            name: "C malloc/free loop",
            argv: vec![compile("alloc_loop.c")?, opts.ops.to_string()],
        });
    }
    if want(Only::Batch) {
        out.push(Workload {
            name: "C batches made and freed, round after round",
            argv: vec![
                compile("batch_rounds.c")?,
                opts.batch.to_string(),
                "300".into(),
            ],
        });
    }
    Ok((out, compiled))
}
