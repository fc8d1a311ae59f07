//! `phases`: how many small parallel calls a second frostheap and rayon
//! make, quiet and with the CPUs oversubscribed, side by side in one run.
//!
//! ```text
//! cargo build --release -p frostheap-bench --bin phases
//! target/release/phases [--rounds 9] [--ms 1000] [--items 10000] [--hogs 2]
//! target/release/phases --baseline /path/to/an/older/phases   # before/after
//! ```
//!
//! **The call** is `rt.par(0..items).map(f).sum()` (rayon:
//! `(0..items).into_par_iter().map(f).sum()` in a pool of as many threads),
//! `f` a few integer operations, made back to back for `--ms`
//! milliseconds after a warm-up; each call is one phase. The figure is
//! calls per second. Both engines use one worker per hardware thread.
//!
//! **Conditions.** *quiet*, and *loaded*: `--hogs` processes of `yes`
//! writing to `/dev/null` (what a user's trial ran: two of them on two
//! CPUs), started before and killed after each loaded run, so every
//! round sees the same load.
//!
//! **How.** Each round runs every variant (frostheap, rayon, and with
//! `--baseline` the frostheap of another build of this binary, such as
//! one built from `main`) once per condition, each in its own process,
//! the order rotating from round to round; the report gives per variant
//! and condition the median calls/s with p10–p90, and per round the ratio
//! of frostheap's calls/s to each other variant's (median, p10–p90).
//! Sums must agree. No timing is asserted: this is a report.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use frostheap_bench::child::{self, Outcome};
use frostheap_bench::{cli, stats, table, Machine, Table};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

/// Small parallel calls per second, frostheap against rayon, quiet and
/// with the CPUs oversubscribed.
#[derive(Parser)]
#[command(name = "phases")]
struct Options {
    /// Rounds: every variant runs once per round and condition.
    #[arg(long, default_value_t = 9, value_parser = cli::count)]
    rounds: usize,
    /// Milliseconds of calls per run.
    #[arg(long, default_value_t = 1000, value_parser = cli::count)]
    ms: usize,
    /// Items of each call.
    #[arg(long, default_value_t = 10_000, value_parser = cli::count)]
    items: usize,
    /// `yes > /dev/null` processes running beside the loaded runs (0: quiet
    /// runs only).
    #[arg(long, default_value_t = 2)]
    hogs: usize,
    /// Another build of this binary (say, from `main`) whose frostheap is
    /// run beside this one's, as the variant `before`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Run one engine as a child (`frostheap` or `rayon`; hidden).
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// A few integer operations.
#[inline]
fn f(x: u64) -> u64 {
    (x ^ 0x9e37_79b9).wrapping_mul(0xff51_afd7_ed55_8ccd) >> 40
}

/// Calls of `call` made in `ms` milliseconds after 200 ms of warm-up, and
/// their sum's checksum.
fn calls_for(ms: usize, mut call: impl FnMut() -> u64) -> (u64, u64) {
    let warm = Instant::now();
    let mut check = 0;
    while warm.elapsed() < Duration::from_millis(200) {
        check = call();
    }
    let end = Instant::now() + Duration::from_millis(ms as u64);
    let mut calls = 0u64;
    let start = Instant::now();
    while Instant::now() < end {
        check = call();
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    child::report_sample(calls as f64 / secs);
    (calls, check)
}

fn child_main(engine: &str, ms: usize, items: usize) {
    let workers = frostheap_bench::machine::cpus();
    let n = items as u64;
    let (_, check) = match engine {
        "frostheap" => {
            let rt = frostheap::Runtime::builder()
                .workers(workers)
                .build()
                .expect("the runtime starts");
            calls_for(ms, || rt.par(0..n).map(f).sum().expect("sum"))
        }
        "rayon" => {
            use rayon::prelude::*;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .build()
                .expect("pool");
            calls_for(ms, || pool.install(|| (0..n).into_par_iter().map(f).sum()))
        }
        e => panic!("unknown engine {e}"),
    };
    child::report("check", check);
}

/// `yes > /dev/null`, `k` times.
fn start_hogs(k: usize) -> Vec<Child> {
    (0..k)
        .map(|_| {
            Command::new("yes")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("yes starts")
        })
        .collect()
}

fn stop_hogs(hogs: Vec<Child>) {
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
}

fn main() {
    let o = Options::parse();
    if let Some(engine) = &o.child {
        return child_main(engine, o.ms, o.items);
    }
    let own = std::env::current_exe().expect("current_exe");
    // (name, binary, engine).
    let mut variants = vec![
        ("frostheap", own.clone(), "frostheap"),
        ("rayon", own.clone(), "rayon"),
    ];
    if let Some(b) = &o.baseline {
        variants.push(("before", b.clone(), "frostheap"));
    }
    let conditions: Vec<usize> = if o.hogs > 0 { vec![0, o.hogs] } else { vec![0] };
    // samples[condition][variant]: calls/s per round.
    let mut samples = vec![vec![Vec::new(); variants.len()]; conditions.len()];
    let mut checks = Vec::new();
    let args = [
        "--ms".to_string(),
        o.ms.to_string(),
        "--items".into(),
        o.items.to_string(),
    ];
    for round in 0..o.rounds {
        for (c, &hogs) in conditions.iter().enumerate() {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                let (name, exe, engine) = &variants[v];
                let hog = start_hogs(hogs);
                let out: Outcome =
                    child::run(Command::new(exe).args(["--child", engine]).args(&args))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                stop_hogs(hog);
                let s = out.samples()[0];
                eprintln!("  round {round} hogs {hogs} {name:<10} {s:>10.0} calls/s");
                samples[c][v].push(s);
                checks.push(out.value("check").expect("check").to_string());
            }
        }
    }
    assert!(
        checks.windows(2).all(|w| w[0] == w[1]),
        "variants computed different sums: {checks:?}"
    );
    let mut t = Table::new(
        [
            "condition",
            "variant",
            "calls/s median (p10–p90)",
            "µs per call",
            "frostheap/this (calls/s, per round)",
        ],
        2,
    );
    for (c, &hogs) in conditions.iter().enumerate() {
        for (v, (name, _, _)) in variants.iter().enumerate() {
            let s = stats::Summary::of(&samples[c][v]);
            t.row([
                if hogs == 0 {
                    "quiet".to_string()
                } else {
                    format!("{hogs} yes hogs")
                },
                name.to_string(),
                table::number(&s, 0),
                format!("{:.1}", 1e6 / s.median),
                table::ratio(&stats::ratio(&samples[c][0], &samples[c][v])),
            ]);
        }
    }
    print!(
        "# phases\n\n{}; `par(0..{}).map(f).sum()` back to back for {} ms per run, \
         {} rounds, variants rotating\n\n{t}",
        Machine::now().describe(),
        o.items,
        o.ms,
        o.rounds
    );
}
