//! `preload`: unmodified programs under four allocators, side by side, in
//! one run — glibc, Debian's libmimalloc and libjemalloc, and
//! libfrostheap, the last three through `LD_PRELOAD`.
//!
//! Workloads: an allocation-heavy Python script (dicts, lists, strings;
//! `preload/alloc_heavy.py`) and a C allocation loop
//! (`preload/alloc_loop.c`, compiled here with `cc -O2`). Repetitions are
//! interleaved (every allocator once per round) so drift in machine load
//! hits all of them alike; the report gives the median wall time, the
//! spread (min–max), and the ratio of medians to glibc and to the fastest,
//! and the same for CPU time (user + system, from `getrusage` of the
//! child), which a shared, busy machine disturbs less than wall time.
//!
//! ```text
//! cargo build --release -p frostheap-capi -p frostheap-bench
//! apt-get install libmimalloc2.0 libjemalloc2      # optional baselines
//! target/release/preload [--reps 7] [--only python|c] [--ops N]
//!                        [--rounds N] [--lib NAME=PATH]...
//! ```
//!
//! `--lib NAME=PATH` adds another preloaded library (say, an earlier build
//! of libfrostheap.so) to the same interleaved run, for before/after
//! comparisons. An allocator whose library is not installed is skipped
//! with a message.

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

/// What to run, from the command line.
struct Options {
    reps: usize,
    /// `Some("python")` or `Some("c")`: that workload only.
    only: Option<String>,
    /// Operations of the C loop.
    ops: u64,
    /// Rounds of the Python script.
    rounds: u64,
    /// Extra preloaded libraries (`--lib NAME=PATH`).
    extra: Vec<(String, PathBuf)>,
}

fn parse_args() -> Options {
    let mut o = Options {
        reps: 7,
        only: None,
        ops: 20_000_000,
        rounds: 4,
        extra: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>| -> u64 {
        v.and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| usage())
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => o.reps = number(args.next()) as usize,
            "--ops" => o.ops = number(args.next()),
            "--rounds" => o.rounds = number(args.next()),
            "--only" => match args.next().as_deref() {
                Some(w @ ("python" | "c")) => o.only = Some(w.to_owned()),
                _ => usage(),
            },
            "--lib" => {
                let spec = args.next().unwrap_or_else(|| usage());
                let Some((name, path)) = spec.split_once('=') else {
                    usage()
                };
                if !Path::new(path).is_file() {
                    eprintln!("preload: --lib {name}: {path} is not a file");
                    std::process::exit(2);
                }
                o.extra.push((name.to_owned(), PathBuf::from(path)));
            }
            _ => usage(),
        }
    }
    o
}

fn main() {
    let opts = parse_args();
    let reps = opts.reps;
    let mut allocators = allocators();
    for (name, path) in &opts.extra {
        allocators.push(Allocator {
            name: Box::leak(name.clone().into_boxed_str()),
            preload: Some(path.clone()),
        });
    }
    let workloads = match workloads(&opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("preload: {e}");
            std::process::exit(2);
        }
    };

    println!("{reps} interleaved repetitions; wall and CPU (user + system) time, median (min–max); ratios of medians");
    println!("load average at start: {}\n", loadavg());
    println!(
        "{:<22} {:<11} {:>22} {:>8} {:>10} {:>22} {:>8} {:>10}",
        "workload",
        "allocator",
        "wall: median (spread) s",
        "÷ glibc",
        "÷ fastest",
        "CPU: median (spread) s",
        "÷ glibc",
        "÷ fastest"
    );
    for w in &workloads {
        // times[allocator][rep], cpu[allocator][rep]
        let mut times = vec![Vec::with_capacity(reps); allocators.len()];
        let mut cpu = vec![Vec::with_capacity(reps); allocators.len()];
        let mut outputs: Vec<Option<String>> = vec![None; allocators.len()];
        for _ in 0..reps {
            for (i, a) in allocators.iter().enumerate() {
                let (secs, cpu_secs, out) = run_once(w, a);
                cpu[i].push(cpu_secs);
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
        let cpu_medians: Vec<f64> = cpu.iter_mut().map(|t| median(t)).collect();
        let cpu_fastest = cpu_medians.iter().cloned().fold(f64::INFINITY, f64::min);
        for (i, a) in allocators.iter().enumerate() {
            let (t, c) = (&times[i], &cpu[i]);
            println!(
                "{:<22} {:<11} {:>8.3} ({:.3}–{:.3}) {:>7.2}× {:>9.2}× {:>8.3} ({:.3}–{:.3}) {:>7.2}× {:>9.2}×",
                w.name,
                a.name,
                medians[i],
                t[0],
                t[t.len() - 1],
                medians[i] / medians[0],
                medians[i] / fastest,
                cpu_medians[i],
                c[0],
                c[c.len() - 1],
                cpu_medians[i] / cpu_medians[0],
                cpu_medians[i] / cpu_fastest
            );
        }
        println!();
    }
    println!("load average at end: {}", loadavg());
}

fn usage() -> ! {
    eprintln!(
        "usage: preload [--reps N] [--only python|c] [--ops N] [--rounds N] [--lib NAME=PATH]..."
    );
    std::process::exit(2);
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// User + system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
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

fn workloads(opts: &Options) -> Result<Vec<Workload>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload");
    let mut out = Vec::new();
    let want = |w: &str| opts.only.as_deref().is_none_or(|only| only == w);
    // The real interpreter, not a pyenv shim (whose bash would be timed).
    match Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
    {
        _ if !want("python") => {}
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
    if !want("c") {
        return Ok(out);
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
        argv: vec![bin.display().to_string(), opts.ops.to_string()],
    });
    Ok(out)
}

/// Runs `w` under `a` once: wall seconds, CPU seconds, standard output.
fn run_once(w: &Workload, a: &Allocator) -> (f64, f64, String) {
    let mut cmd = Command::new(&w.argv[0]);
    cmd.args(&w.argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    cmd.env_remove("LD_PRELOAD").env_remove("FROSTHEAP_STATS");
    if let Some(p) = &a.preload {
        cmd.env("LD_PRELOAD", p);
    }
    let cpu_before = children_cpu();
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", w.argv[0]));
    let secs = start.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu_before;
    assert!(
        out.status.success(),
        "{} under {} failed: {:?}",
        w.name,
        a.name,
        out.status
    );
    (secs, cpu, String::from_utf8_lossy(&out.stdout).into_owned())
}
