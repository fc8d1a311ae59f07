//! The runner of the `it` binary (`harness = false` in Cargo.toml): what
//! libtest does, plus declared needs, visible skips, a shuffled order and a
//! time limit per test.
//!
//! [libtest-mimic] parses the usual arguments (`<filter>`, `--exact`,
//! `--skip`, `--test-threads`, `--list`, `--ignored`, `--include-ignored`,
//! `--format`) and prints what `cargo test` users know. Around it:
//!
//! - **Registration.** [`test!`](crate::test) submits a [`Test`] to an
//!   [`inventory`] registry next to the function it names; `main` collects
//!   the registry, sorts it by name and refuses duplicates. A test function
//!   that is not registered is dead code, which the binary denies
//!   (`#![deny(dead_code)]` in main.rs). A `#[test]` attribute would be
//!   dropped silently by a `harness = false` build, so
//!   `harness::no_test_attribute_is_left_in_the_sources` fails on one, and
//!   `harness::every_source_file_is_a_module` fails on a file under
//!   `tests/it` that is not compiled at all.
//! - **Needs.** A test declares what the machine must have ([`Need`]:
//!   protection keys, `mseal`, transparent huge pages, AVX2, AVX-512F,
//!   the source tree). The need is probed once, at run time, because the
//!   same binary runs on hosts without protection keys and in a guest with
//!   them but without `mseal`.
//!   A test whose need is missing is reported `ignored (needs …: why)`,
//!   never `ok`, and the run ends with a summary of every skipped case and
//!   its reason. `FROSTHEAP_TEST_REQUIRE=pkey,mseal` (or `all`) turns a
//!   skip for a listed need into a failure: CI's guest sets it, so the pkey
//!   cases cannot silently not run there. `--include-ignored` does not run
//!   a test whose need is missing (it would fail for the wrong reason).
//! - **Order.** `--shuffle` runs the tests in a random order and prints
//!   the seed; `--shuffle-seed N` replays an order. (libtest has both only
//!   behind `-Z unstable-options`.) `RUST_TEST_THREADS` is honoured like
//!   libtest does, when `--test-threads` is not given.
//! - **Time.** A test running for over a minute is announced (like
//!   libtest); one over `FROSTHEAP_TEST_TIMEOUT` seconds (default 900)
//!   stops the binary with a failure naming it, because a thread cannot be
//!   killed and a hung CI job is worse than a lost run. Child processes
//!   have their own, shorter limit (`check::output_within`), which leaves
//!   out a stretch in which the whole machine stood still. The closing
//!   lines name the ten slowest tests.
//!
//! Output is not captured (libtest-mimic cannot): a test's prints and a
//! panic's message appear as they happen, and a failed test's panic message
//! and location are repeated in the failure list at the end. The skipped
//! cases are listed by module, and the very last lines digest each
//! failure: its first lines and, for a child process killed at its time
//! limit, each thread's state and innermost frames — what a CI log shows
//! when only its end is read.
//!
//! [libtest-mimic]: libtest_mimic

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// One registered test (made by [`test!`](crate::test), never by hand).
pub struct Test {
    /// `module_path!()` where it was registered: `it::freeze`.
    pub module: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// The test: passes unless it panics.
    pub run: fn(),
    /// What the machine must have for the test to run.
    pub needs: &'static [Need],
}

inventory::collect!(Test);

impl Test {
    /// The name libtest would give it: the module path below the crate,
    /// then the function (`freeze::kernel_write_pkey`).
    fn full_name(&self) -> String {
        let module = self
            .module
            .split_once("::")
            .map(|(_crate, rest)| rest)
            .unwrap_or("");
        if module.is_empty() {
            self.name.to_string()
        } else {
            format!("{module}::{}", self.name)
        }
    }
}

/// Something a test needs from the machine, probed at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Protection keys: the CPU has PKU and the kernel enabled it
    /// (`pkey_alloc` succeeds).
    Pkey,
    /// The `mseal(2)` system call (Linux 6.10 and later).
    Mseal,
    /// Transparent huge pages (`always` or `madvise` in
    /// `/sys/kernel/mm/transparent_hugepage/enabled`).
    Thp,
    /// AVX2 instructions.
    Avx2,
    /// AVX-512F instructions.
    Avx512f,
    /// AVX-512F with BW and VL (byte and word masks, EVEX on XMM and YMM:
    /// what glibc's `memcpy` and `memset` use where the CPU has them).
    Avx512bw,
    /// The crate's sources at the path they were built from (absent when
    /// the binary runs elsewhere, as in CI's guest).
    SourceTree,
    /// A memory cgroup this process may make for a child, with a limit
    /// ([`crate::check::MemoryCgroup`]: root, and a writable cgroup tree).
    MemoryCgroup,
}

impl Need {
    const ALL: [Need; 8] = [
        Need::Pkey,
        Need::Mseal,
        Need::Thp,
        Need::Avx2,
        Need::Avx512f,
        Need::Avx512bw,
        Need::SourceTree,
        Need::MemoryCgroup,
    ];

    /// The name `FROSTHEAP_TEST_REQUIRE` and the reports use.
    pub fn key(self) -> &'static str {
        match self {
            Need::Pkey => "pkey",
            Need::Mseal => "mseal",
            Need::Thp => "thp",
            Need::Avx2 => "avx2",
            Need::Avx512f => "avx512f",
            Need::Avx512bw => "avx512bw",
            Need::SourceTree => "sources",
            Need::MemoryCgroup => "cgroup",
        }
    }

    /// `None` if this machine has it, else why not (probed once).
    pub fn missing(self) -> Option<&'static str> {
        static PROBED: [OnceLock<Option<String>>; 8] = [const { OnceLock::new() }; 8];
        PROBED[self as usize]
            .get_or_init(|| self.probe())
            .as_deref()
    }

    fn probe(self) -> Option<String> {
        match self {
            Need::Pkey => probe_pkey(),
            Need::Mseal => probe_mseal(),
            Need::Thp => {
                let path = "/sys/kernel/mm/transparent_hugepage/enabled";
                match std::fs::read_to_string(path) {
                    Ok(mode) if !mode.contains("[never]") => None,
                    Ok(mode) => Some(format!("transparent huge pages are off ({path}: {})", mode.trim())),
                    Err(e) => Some(format!("no transparent huge pages in this kernel ({path}: {e})")),
                }
            }
            Need::Avx2 => (!std::is_x86_feature_detected!("avx2"))
                .then(|| "the CPU has no AVX2".to_string()),
            Need::Avx512f => (!std::is_x86_feature_detected!("avx512f"))
                .then(|| "the CPU has no AVX-512F".to_string()),
            Need::Avx512bw => (!(std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")))
            .then(|| "the CPU has no AVX-512F with BW and VL".to_string()),
            Need::SourceTree => {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
                (!dir.is_dir()).then(|| format!("{} is not on this machine", dir.display()))
            }
            Need::MemoryCgroup => crate::check::MemoryCgroup::new(64 << 20).err(),
        }
    }
}

/// Allocates a protection key and frees it again.
fn probe_pkey() -> Option<String> {
    // SAFETY: pkey_alloc(0, 0) only allocates a key; it is freed at once.
    let key = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0, 0) };
    if key >= 0 {
        // SAFETY: the key was allocated just above and is used by nobody.
        unsafe { libc::syscall(libc::SYS_pkey_free, key) };
        return None;
    }
    let err = std::io::Error::last_os_error();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| {
        flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    Some(match (has("pku"), has("ospke")) {
        (false, _) => format!("the CPU has no protection keys (no pku flag; pkey_alloc: {err})"),
        (true, false) => format!("the kernel has not enabled protection keys (no ospke flag; pkey_alloc: {err})"),
        (true, true) => format!("pkey_alloc failed: {err}"),
    })
}

/// `mseal(0, 0, 0)` is a no-op where the call exists and `ENOSYS` where it
/// does not.
fn probe_mseal() -> Option<String> {
    // SAFETY: an empty range seals nothing.
    let rc = unsafe { libc::syscall(libc::SYS_mseal, 0usize, 0usize, 0usize) };
    if rc == 0 {
        return None;
    }
    let err = std::io::Error::last_os_error();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Some(if err.raw_os_error() == Some(libc::ENOSYS) {
        format!(
            "the kernel has no mseal (Linux 6.10 added it; this is {})",
            release.trim()
        )
    } else {
        format!("mseal(0, 0, 0) failed: {err}")
    })
}

/// The needs listed in `FROSTHEAP_TEST_REQUIRE`.
fn required_needs() -> Result<Vec<Need>, String> {
    match std::env::var_os("FROSTHEAP_TEST_REQUIRE") {
        None => Ok(Vec::new()),
        Some(v) => {
            let v = v
                .into_string()
                .map_err(|v| format!("FROSTHEAP_TEST_REQUIRE={v:?} is not UTF-8"))?;
            parse_required(&v).map_err(|e| format!("FROSTHEAP_TEST_REQUIRE={v:?}: {e}"))
        }
    }
}

/// Comma-separated need keys, or `all`; an unknown key is an error that
/// lists the accepted ones.
fn parse_required(value: &str) -> Result<Vec<Need>, String> {
    let mut out = Vec::new();
    for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            out.extend(Need::ALL);
            continue;
        }
        match Need::ALL.iter().find(|n| n.key() == word) {
            Some(&n) => out.push(n),
            None => {
                let keys: Vec<_> = Need::ALL.iter().map(|n| n.key()).collect();
                return Err(format!(
                    "unknown need {word:?}; expected a comma-separated list of {} (or all)",
                    keys.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// Positive whole seconds from the environment variable `var`.
fn seconds_from_env(var: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(var) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => Err(format!("{var}={v:?}: expected whole seconds above 0")),
        },
    }
}

/// A skipped case, for the closing summary.
struct Skip {
    test: String,
    need: Need,
    why: &'static str,
}

static SKIPS: Mutex<Vec<Skip>> = Mutex::new(Vec::new());

/// How long each test that ran took, for the closing list of the slowest.
static TIMES: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

/// Each failed test and its message, for the closing digest.
static FAILURES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------------------
// Time limit.

/// Tests running now, with their start.
static RUNNING: Mutex<Vec<(String, Instant, bool)>> = Mutex::new(Vec::new());

/// Removes its test from [`RUNNING`] when the test ends, however it ends.
struct Running(String);

impl Running {
    fn start(name: &str) -> Running {
        lock(&RUNNING).push((name.to_string(), Instant::now(), false));
        Running(name.to_string())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = lock(&RUNNING);
        if let Some(i) = running.iter().position(|(n, _, _)| *n == self.0) {
            let (name, started, _) = running.swap_remove(i);
            lock(&TIMES).push((name, started.elapsed()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Announces tests running for over a minute; stops the process when one
/// runs past `limit`.
fn watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("it-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let mut running = lock(&RUNNING);
            for (name, started, announced) in running.iter_mut() {
                let ran = started.elapsed();
                if ran > limit {
                    let _ = std::io::stdout().flush();
                    eprintln!(
                        "\ntest {name} ... FAILED: still running after {}s (FROSTHEAP_TEST_TIMEOUT); stopping the test binary",
                        limit.as_secs()
                    );
                    std::process::exit(101);
                }
                if !*announced && ran > Duration::from_secs(60) {
                    *announced = true;
                    eprintln!("test {name} has been running for over 60 seconds");
                }
            }
        })
        .expect("starting the watchdog thread");
}

// ---------------------------------------------------------------------------
// Panics.

thread_local! {
    /// Where the last panic on this thread happened.
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps the default panic output and remembers the location, so a failed
/// test's entry in the failure list says where it panicked.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(l) = info.location() {
            PANIC_AT.with(|p| *p.borrow_mut() = Some(format!("{}:{}", l.file(), l.line())));
        }
        default(info);
    }));
}

fn run_one(test: &Test) -> Result<(), Failed> {
    let _running = Running::start(&test.full_name());
    catch_unwind(AssertUnwindSafe(test.run)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic without a message)");
        let at = PANIC_AT
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "an unknown place".into());
        let message = format!("panicked at {at}:\n{msg}");
        lock(&FAILURES).push((test.full_name(), message.clone()));
        message.into()
    })
}

// ---------------------------------------------------------------------------
// Arguments.

/// The order options, taken out before libtest-mimic sees the rest.
#[derive(Debug)]
struct Order {
    shuffle_seed: Option<u64>,
}

fn split_order_args(args: Vec<OsString>) -> Result<(Order, Vec<OsString>), String> {
    let mut order = Order { shuffle_seed: None };
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    let parse_seed = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("--shuffle-seed {v:?}: expected a whole number"))
    };
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--shuffle") => {
                if order.shuffle_seed.is_none() {
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    order.shuffle_seed = Some(t.as_nanos() as u64 ^ u64::from(std::process::id()));
                }
            }
            Some("--shuffle-seed") => {
                let v = it
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or("--shuffle-seed needs a number")?;
                order.shuffle_seed = Some(parse_seed(&v)?);
            }
            Some(s) if s.starts_with("--shuffle-seed=") => {
                order.shuffle_seed = Some(parse_seed(&s["--shuffle-seed=".len()..])?);
            }
            _ => rest.push(a),
        }
    }
    Ok((order, rest))
}

// ---------------------------------------------------------------------------
// The run.

/// Runs the registered tests as the command line asks.
pub fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("it: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let (order, rest) = split_order_args(std::env::args_os().collect())?;
    let mut args = Arguments::from_iter(rest);
    if args.test_threads.is_none() {
        if let Ok(v) = std::env::var("RUST_TEST_THREADS") {
            let n = v
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("RUST_TEST_THREADS={v:?}: expected a number above 0"))?;
            args.test_threads = Some(n);
        }
    }
    let required = required_needs()?;
    let limit = seconds_from_env("FROSTHEAP_TEST_TIMEOUT", 900)?;
    // Our own lines would spoil a listing or JSON output.
    let plain = !args.list && !matches!(args.format, Some(libtest_mimic::FormatSetting::Json));

    let mut tests: Vec<&'static Test> = inventory::iter::<Test>.into_iter().collect();
    tests.sort_by_key(|t| t.full_name());
    if let Some(w) = tests.windows(2).find(|w| w[0].full_name() == w[1].full_name()) {
        return Err(format!("{} is registered twice", w[0].full_name()));
    }
    if let Some(seed) = order.shuffle_seed {
        fastrand::Rng::with_seed(seed).shuffle(&mut tests);
        if plain {
            println!("shuffled with seed {seed} (replay this order with --shuffle-seed {seed})");
        }
    }
    if plain {
        let probed: Vec<String> = Need::ALL
            .iter()
            .map(|n| match n.missing() {
                None => format!("{} yes", n.key()),
                Some(_) => format!("{} no", n.key()),
            })
            .collect();
        let required: Vec<_> = required.iter().map(|n| n.key()).collect();
        println!(
            "this machine: {}; required (FROSTHEAP_TEST_REQUIRE): {}",
            probed.join(", "),
            if required.is_empty() {
                "none".to_string()
            } else {
                required.join(",")
            }
        );
    }

    install_panic_hook();
    watchdog(limit);
    let trials = tests
        .iter()
        .map(|&t| {
            let required = required.clone();
            Trial::ignorable_test(t.full_name(), move || {
                for &need in t.needs {
                    let Some(why) = need.missing() else { continue };
                    if required.contains(&need) {
                        return Err(format!(
                            "needs {} and FROSTHEAP_TEST_REQUIRE requires it, but this machine lacks it: {why}",
                            need.key()
                        )
                        .into());
                    }
                    lock(&SKIPS).push(Skip {
                        test: t.full_name(),
                        need,
                        why,
                    });
                    return Ok(Completion::ignored_with(format!("needs {}: {why}", need.key())));
                }
                run_one(t).map(|()| Completion::Completed)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if plain {
        print_skips();
        print_slowest();
        print_failure_digest();
    }
    Ok(conclusion.exit_code())
}

/// The closing summary: every case skipped for a missing need, grouped by
/// reason.
fn print_skips() {
    let skips = lock(&SKIPS);
    if skips.is_empty() {
        return;
    }
    let mut by_reason: BTreeMap<(Need, &str), Vec<&str>> = BTreeMap::new();
    for s in skips.iter() {
        by_reason.entry((s.need, s.why)).or_default().push(&s.test);
    }
    println!(
        "SKIPPED {} tests: this machine lacks what they need (FROSTHEAP_TEST_REQUIRE=<need> makes that a failure):",
        skips.len()
    );
    for ((need, why), names) in by_reason {
        println!("  {} need {need:?} ({}): {why}", names.len(), need.key());
        for line in grouped_names(&names, 100) {
            println!("    {line}");
        }
    }
    println!();
}

/// `names` (`module::case`) by module, one line per module
/// (`module: case_a, case_b`), wrapped past `width` characters: a
/// summary that keeps a CI log's last lines for the failures.
fn grouped_names(names: &[&str], width: usize) -> Vec<String> {
    let mut by_module: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in names {
        let (module, case) = n.rsplit_once("::").unwrap_or(("", n));
        by_module.entry(module).or_default().push(case);
    }
    let mut lines = Vec::new();
    for (module, mut cases) in by_module {
        cases.sort_unstable();
        let mut line = format!("{module}:");
        for (i, case) in cases.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            if line.len() + sep.len() + case.len() > width && i > 0 {
                lines.push(format!("{line},"));
                line = format!("  {case}");
            } else {
                line += sep;
                line += case;
            }
        }
        lines.push(line);
    }
    lines
}

/// The last lines of the run: each failed test, the first line of its
/// message and, for a child process killed at its time limit, one line
/// per thread with the innermost frames gdb found. The full messages are
/// in libtest's failure list above, but a CI log is often read from its
/// end (a hang's report, with the stacks of every thread, is hundreds of
/// lines, and a run with expected panics prints thousands before it).
fn print_failure_digest() {
    const MOST: usize = 4;
    let failures = lock(&FAILURES);
    if failures.is_empty() {
        return;
    }
    println!(
        "FAILED {} tests, in short (each full message is in the failure list above):",
        failures.len()
    );
    for (name, message) in failures.iter().take(MOST) {
        for line in digest(name, message) {
            println!("{line}");
        }
    }
    if failures.len() > MOST {
        println!("  and {} more", failures.len() - MOST);
    }
}

/// The lines [`print_failure_digest`] gives one failure: its name, the
/// message's first two lines, and each thread of a killed child
/// (`check::output_within`'s report) as `tid "comm" state: frame0 <
/// frame1 < ...`, innermost first, with function names only.
fn digest(name: &str, message: &str) -> Vec<String> {
    const FRAMES: usize = 6;
    const THREADS: usize = 12;
    let cut = |l: &str, n: usize| l.chars().take(n).collect::<String>();
    let mut out = vec![format!("  {name}")];
    out.extend(message.lines().take(2).map(|l| format!("    {}", cut(l, 300))));
    let Some((_, stacks)) = message.split_once("--- where its threads were before the kill") else {
        return out;
    };
    // "  thread TID "comm": state S, wchan W" lines, then gdb's
    // "  Thread N (Thread 0x.. (LWP TID) "comm"):" with its "  #k" frames.
    let mut threads: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in stacks.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("thread ") {
            let tid = rest.split_whitespace().next().unwrap_or("").to_string();
            threads.push((tid, rest.to_string(), Vec::new()));
        } else if line.starts_with("Thread ") {
            current = line
                .split_once("(LWP ")
                .and_then(|(_, r)| r.split(')').next())
                .and_then(|tid| threads.iter().position(|t| t.0 == tid));
        } else if let (Some(i), Some(frame)) = (current, line.strip_prefix('#')) {
            if threads[i].2.len() < FRAMES {
                threads[i].2.push(frame_function(frame));
            }
        }
    }
    for (_, about, frames) in threads.iter().take(THREADS) {
        let frames = if frames.is_empty() {
            "(no frames)".to_string()
        } else {
            frames.join(" < ")
        };
        out.push(format!("    {}: {}", cut(about, 80), cut(&frames, 400)));
    }
    if threads.len() > THREADS {
        out.push(format!("    and {} more threads", threads.len() - THREADS));
    }
    out
}

/// The function of one of gdb's frame lines (`3  0x55.. in f (a=1) at
/// x.rs:9`, or `0  f (a=1) at x.rs:9`, `#` taken off).
fn frame_function(frame: &str) -> String {
    let rest = frame.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
    let rest = match rest.split_once(" in ") {
        Some((addr, f)) if addr.starts_with("0x") => f,
        _ => rest,
    };
    rest.split(" (").next().unwrap_or(rest).to_string()
}

/// The ten slowest tests of the run (CI's emulated guest is slow; this
/// says where its time goes).
fn print_slowest() {
    let mut times = lock(&TIMES).clone();
    if times.len() < 2 {
        return;
    }
    times.sort_by_key(|t| std::cmp::Reverse(t.1));
    let list: Vec<String> = times
        .iter()
        .take(10)
        .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
        .collect();
    println!("slowest: {}", list.join(", "));
}

// ---------------------------------------------------------------------------
// The harness's own checks.

crate::test!(no_test_attribute_is_left_in_the_sources);
/// A `#[test]` (or `#[ignore]`, `#[should_panic]`) attribute compiles to
/// nothing in a `harness = false` binary: the test would silently never
/// run. The sources are compiled in (main.rs's `modules!`), so this runs
/// wherever the binary does.
fn no_test_attribute_is_left_in_the_sources() {
    let mut found = Vec::new();
    for (file, text) in crate::SOURCES {
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            if ["#[test", "#[ignore", "#[should_panic"]
                .iter()
                .any(|a| l.starts_with(a))
            {
                found.push(format!("tests/it/{file}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these attributes do nothing in this binary (harness = false); register the test with `test!(name);` instead (see tests/it/main.rs):\n{}",
        found.join("\n")
    );
}

crate::test!(every_source_file_is_a_module, needs: [SourceTree]);
/// A file under tests/it that no `mod` names is never compiled, and its
/// tests never run.
fn every_source_file_is_a_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut stray = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("reading tests/it").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&dir).expect("under tests/it");
                let rel = rel.to_string_lossy();
                if !crate::SOURCES.iter().any(|(f, _)| *f == rel) {
                    stray.push(rel.into_owned());
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "files under tests/it that are not modules of the binary (add them to `modules!` in tests/it/main.rs): {stray:?}"
    );
}

crate::test!(required_needs_are_parsed_strictly);
/// `FROSTHEAP_TEST_REQUIRE`: keys and `all` are accepted, anything else is
/// an error naming the word and the accepted keys (a typo must not turn
/// the requirement off).
fn required_needs_are_parsed_strictly() {
    assert_eq!(parse_required("pkey"), Ok(vec![Need::Pkey]));
    assert_eq!(
        parse_required(" pkey , mseal,"),
        Ok(vec![Need::Pkey, Need::Mseal])
    );
    assert_eq!(parse_required(""), Ok(vec![]));
    assert_eq!(parse_required("all"), Ok(Need::ALL.to_vec()));
    let e = parse_required("pkey,pkeys").expect_err("a typo is an error");
    assert!(e.contains("\"pkeys\""), "{e}");
    for n in Need::ALL {
        assert!(e.contains(n.key()), "lists {}: {e}", n.key());
        assert_eq!(Need::ALL[n as usize], n, "ALL is in declaration order");
    }
}

crate::test!(order_arguments_are_taken_out_before_libtest_mimic);
/// `--shuffle-seed N` (and `=N`) is consumed; everything else is passed on
/// in order; a bad seed is an error.
fn order_arguments_are_taken_out_before_libtest_mimic() {
    let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
    let (order, rest) = split_order_args(args(&["it", "--shuffle-seed", "42", "freeze", "--exact"]))
        .expect("valid order arguments");
    assert_eq!(order.shuffle_seed, Some(42));
    assert_eq!(rest, args(&["it", "freeze", "--exact"]));
    let (order, rest) =
        split_order_args(args(&["it", "--shuffle-seed=7", "--list"])).expect("valid");
    assert_eq!(order.shuffle_seed, Some(7));
    assert_eq!(rest, args(&["it", "--list"]));
    let (order, _) = split_order_args(args(&["it", "--shuffle"])).expect("valid");
    assert!(order.shuffle_seed.is_some(), "--shuffle picks a seed");
    let (order, _) = split_order_args(args(&["it"])).expect("valid");
    assert_eq!(order.shuffle_seed, None);
    let e = split_order_args(args(&["it", "--shuffle-seed", "x"])).expect_err("bad seed");
    assert!(e.contains("\"x\""), "{e}");
}

crate::test!(every_fixture_program_is_declared, needs: [SourceTree]);
/// A program under tests/fixtures that `fixtures!` (check.rs) does not
/// list cannot be run by a test; one listed but not there fails to build.
fn every_fixture_program_is_declared() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut undeclared = Vec::new();
    for e in std::fs::read_dir(&dir).expect("reading tests/fixtures").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "rs") {
            let stem = p.file_stem().expect("a file name").to_string_lossy();
            if !crate::check::FIXTURES.iter().any(|(n, _)| *n == stem) {
                undeclared.push(stem.into_owned());
            }
        }
    }
    assert!(
        undeclared.is_empty(),
        "fixture programs without a [[bin]] in Cargo.toml and an entry in `fixtures!` (tests/it/check.rs): {undeclared:?}"
    );
}

crate::test!(a_hangs_digest_gives_each_thread_its_state_and_innermost_frames);
/// The closing digest of a fixture killed at its time limit, from a
/// report laid out as `check::output_within` writes it: one line per
/// thread, joining `/proc`'s state with gdb's frames by thread id,
/// function names only; the skipped list grouped by module and wrapped.
fn a_hangs_digest_gives_each_thread_its_state_and_innermost_frames() {
    let message = "panicked at tests/it/check.rs:99:\n\
        fixture global_threads idle-worker did not finish within 120s\n\
        status: signal 9\n\
        --- where its threads were before the kill\n\
        process 70:\n  \
        thread 70 \"global_threads\": state S, wchan futex_wait_queue\n  \
        thread 71 \"worker\": state R, wchan 0\n  \
        Thread 2 (Thread 0x7f01 (LWP 71) \"worker\"):\n  \
        #0  frostheap::heap::span::Spans::lock (self=0x1) at src/heap/span.rs:10\n  \
        #1  0x0000555 in <frostheap::global::Global as core::alloc::GlobalAlloc>::alloc (x=2) at src/global/mod.rs:5\n  \
        Thread 1 (Thread 0x7f00 (LWP 70) \"global_threads\"):\n  \
        #0  0x00007f in __GI___futex_abstimed_wait (a=1) at futex.c:57\n  \
        #1  0x00008f in std::sync::mpmc::list::Channel<T>::recv ()\n";
    let lines = digest("global_mode::a_test", message);
    assert_eq!(
        lines,
        [
            "  global_mode::a_test",
            "    panicked at tests/it/check.rs:99:",
            "    fixture global_threads idle-worker did not finish within 120s",
            "    70 \"global_threads\": state S, wchan futex_wait_queue: __GI___futex_abstimed_wait < std::sync::mpmc::list::Channel<T>::recv",
            "    71 \"worker\": state R, wchan 0: frostheap::heap::span::Spans::lock < <frostheap::global::Global as core::alloc::GlobalAlloc>::alloc",
        ]
    );
    // A failure that is no hang: its name and first lines only.
    assert_eq!(digest("m::t", "panicked at a.rs:1:\nleft != right\nmore").len(), 3);
    let grouped = grouped_names(&["v::pkey::b", "v::pkey::a", "w::c", "v::pkey::ccccccccccc"], 20);
    assert_eq!(grouped, ["v::pkey: a, b,", "  ccccccccccc", "w: c"]);
}
