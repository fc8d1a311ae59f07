//! `preload`: unmodified programs under four allocators, side by side, in
//! one run — glibc, Debian's libmimalloc and libjemalloc, and
//! libfrostheap, the last three through `LD_PRELOAD`.
//!
//! Workloads: an allocation-heavy Python script (dicts, lists, strings;
//! `preload/alloc_heavy.py`) and a C allocation loop
//! (`preload/alloc_loop.c`, compiled here with `cc -O2`). Repetitions are
//! interleaved (every allocator once per round) so drift in machine load
//! hits all of them alike; the report gives the median wall time, the
//! spread (min–max), and the ratio of medians to glibc and to the fastest.
//!
//! ```text
//! cargo build --release -p frostheap-capi -p frostheap-bench
//! apt-get install libmimalloc2.0 libjemalloc2      # optional baselines
//! target/release/preload [--reps 7]
//! ```
//!
//! An allocator whose library is not installed is skipped with a message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

struct Allocator {
    name: &'static str,
    /// `None`: the system allocator (no preload).
    preload: Option<PathBuf>,
}

struct Workload {
    name: &'static str,
    argv: Vec<String>,
}

fn main() {
    let mut reps = 7usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }

    let allocators = allocators();
    let workloads = match workloads() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("preload: {e}");
            std::process::exit(2);
        }
    };

    println!("{reps} interleaved repetitions; wall time, median (min–max); ratios of medians\n");
    println!(
        "{:<22} {:<11} {:>22} {:>9} {:>12}",
        "workload", "allocator", "median (spread) s", "÷ glibc", "÷ fastest"
    );
    for w in &workloads {
        // times[allocator][rep]
        let mut times = vec![Vec::with_capacity(reps); allocators.len()];
        let mut outputs: Vec<Option<String>> = vec![None; allocators.len()];
        for _ in 0..reps {
            for (i, a) in allocators.iter().enumerate() {
                let (secs, out) = run_once(w, a);
                if let Some(prev) = &outputs[i] {
                    assert_eq!(
                        prev, &out,
                        "{} under {} printed different results",
                        w.name, a.name
                    );
                }
                outputs[i] = Some(out);
                times[i].push(secs);
            }
        }
        // Same program, same answer, whatever the allocator.
        for (i, o) in outputs.iter().enumerate().skip(1) {
            assert_eq!(
                o, &outputs[0],
                "{} under {} disagrees with glibc",
                w.name, allocators[i].name
            );
        }
        let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        let fastest = medians.iter().cloned().fold(f64::INFINITY, f64::min);
        for (i, a) in allocators.iter().enumerate() {
            let t = &times[i];
            let (lo, hi) = (t[0], t[t.len() - 1]);
            println!(
                "{:<22} {:<11} {:>8.3} ({:.3}–{:.3}) {:>8.2}× {:>11.2}×",
                w.name,
                a.name,
                medians[i],
                lo,
                hi,
                medians[i] / medians[0],
                medians[i] / fastest
            );
        }
        println!();
    }
}

fn usage() -> ! {
    eprintln!("usage: preload [--reps N]");
    std::process::exit(2);
}

/// Sorts `t` and returns its median.
fn median(t: &mut [f64]) -> f64 {
    t.sort_by(|a, b| a.total_cmp(b));
    let n = t.len();
    if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    }
}

fn allocators() -> Vec<Allocator> {
    let mut out = vec![Allocator {
        name: "glibc",
        preload: None,
    }];
    for (name, path) in [("mimalloc", MIMALLOC), ("jemalloc", JEMALLOC)] {
        if Path::new(path).is_file() {
            out.push(Allocator {
                name,
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
            name: "frostheap",
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

fn workloads() -> Result<Vec<Workload>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload");
    let mut out = Vec::new();
    // The real interpreter, not a pyenv shim (whose bash would be timed).
    match Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        Ok(o) if o.status.success() => {
            let py = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let script = dir.join("alloc_heavy.py").display().to_string();
            out.push(Workload {
                name: "python dicts/lists/str",
                argv: vec![py, script, "4".into()],
            });
        }
        _ => eprintln!("preload: skipping the Python workload: python3 not found"),
    }
    let bin = std::env::temp_dir().join(format!("frostheap-alloc-loop-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(dir.join("alloc_loop.c"))
        .status()
        .map_err(|e| format!("cannot run cc: {e}"))?;
    if !status.success() {
        return Err("cc failed on preload/alloc_loop.c".into());
    }
    out.push(Workload {
        name: "C malloc/free loop",
        argv: vec![bin.display().to_string(), "20000000".into()],
    });
    Ok(out)
}

fn run_once(w: &Workload, a: &Allocator) -> (f64, String) {
    let mut cmd = Command::new(&w.argv[0]);
    cmd.args(&w.argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.env_remove("LD_PRELOAD").env_remove("FROSTHEAP_STATS");
    if let Some(p) = &a.preload {
        cmd.env("LD_PRELOAD", p);
    }
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", w.argv[0]));
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{} under {} failed: {:?}",
        w.name,
        a.name,
        out.status
    );
    (secs, String::from_utf8_lossy(&out.stdout).into_owned())
}
