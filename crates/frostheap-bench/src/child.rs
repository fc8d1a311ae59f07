//! Running one variant in its own process: wall time, CPU time and peak
//! RSS of that child, and the samples it reports.
//!
//! A variant needs its own process when it changes something a process
//! has only one of: the global allocator (rayon on glibc or on mimalloc,
//! frostheap's `Global`), an `LD_PRELOAD`ed malloc, or the peak resident
//! set being measured. [`run`] starts the command with its standard output
//! and error captured, reads both to the end, and reaps the child with
//! `wait4`, which returns the `rusage` of that one child: its user and
//! system time and its `ru_maxrss` (the peak RSS of the child, or of the
//! largest of its own waited-for children). Wall time runs from just
//! before the spawn to the reaping.
//!
//! **Protocol** for children that are benchmark binaries: the child prints
//! one line `sample <f64>` per timed run ([`report_sample`]) and any other
//! figure as `<key> <value>` ([`report`]); the parent reads them with
//! [`Outcome::samples`] and [`Outcome::value`].

use std::fmt;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What one run of a child process gave.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// From just before the spawn to the child being reaped.
    pub wall: Duration,
    /// The child's user + system CPU time.
    pub cpu: Duration,
    /// The child's `ru_maxrss`, in bytes. On Linux this is **at least the
    /// resident set of this process when it started the child**: `exec`
    /// records the peak of the image it replaces, which for a forked or
    /// `posix_spawn`ed child is this process's (a child running `true`
    /// from a parent holding 50 MiB reports 50 MiB). It is the child's own
    /// figure only when that is larger; [`Outcome::reported_peak_rss`] is
    /// the child's own.
    pub peak_rss: u64,
    /// Everything the child wrote to its standard output.
    pub stdout: String,
    /// Everything the child wrote to its standard error.
    pub stderr: String,
}

impl Outcome {
    /// The values of the child's `sample <f64>` lines, in order.
    ///
    /// # Panics
    /// If a `sample` line does not hold a number.
    pub fn samples(&self) -> Vec<f64> {
        self.values("sample")
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("child printed `sample {v}`: not a number"))
            })
            .collect()
    }

    /// The child's own peak resident set in bytes, as it reported it last
    /// ([`report_peak_rss`]: `VmHWM`, which starts from zero at `exec`),
    /// or `None` if it did not.
    ///
    /// # Panics
    /// If the `peak_rss_kib` line does not hold a whole number.
    pub fn reported_peak_rss(&self) -> Option<u64> {
        self.value(PEAK_RSS_KEY).map(|v| {
            v.parse::<u64>().unwrap_or_else(|_| {
                panic!("child printed `{PEAK_RSS_KEY} {v}`: not a whole number")
            }) * 1024
        })
    }

    /// The value of the child's last `<key> <value>` line, if any.
    pub fn value<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.values(key).last()
    }

    fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.stdout.lines().filter_map(move |line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::trim)
        })
    }
}

/// Why a child gave no [`Outcome`].
#[derive(Debug)]
pub struct ChildError {
    what: String,
}

impl fmt::Display for ChildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for ChildError {}

/// Runs `cmd` to its end with standard input closed and standard output
/// and error captured; the child must exit with status 0.
///
/// # Errors
/// If the command cannot be started, or it exits with another status or
/// by a signal (the error shows the command, the status and the end of
/// its standard error).
pub fn run(cmd: &mut Command) -> Result<Outcome, ChildError> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| ChildError {
        what: format!("cannot start {shown}: {e}"),
    })?;
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let mut out = Vec::new();
    let _ = child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_end(&mut out);
    let stderr = err_reader.join().expect("the stderr reader does not panic");
    let (status, usage) = wait4(child.id()).map_err(|e| ChildError {
        what: format!("waiting for {shown}: {e}"),
    })?;
    let wall = start.elapsed();
    let outcome = Outcome {
        wall,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        peak_rss: usage.ru_maxrss.max(0) as u64 * 1024,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    if !status.success() {
        let tail: Vec<&str> = outcome.stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ChildError {
            what: format!(
                "{shown} failed ({status}); its stderr ends:\n{}",
                tail.join("\n")
            ),
        });
    }
    Ok(outcome)
}

/// Prints one timed run's figure in the protocol (`sample <value>`).
pub fn report_sample(value: f64) {
    println!("sample {value}");
}

/// Prints any other figure in the protocol (`<key> <value>`).
pub fn report(key: &str, value: impl fmt::Display) {
    println!("{key} {value}");
}

/// The protocol key of a child's own peak resident set, in KiB.
pub const PEAK_RSS_KEY: &str = "peak_rss_kib";

/// This process's peak resident set since its `exec`, in KiB (`VmHWM` of
/// `/proc/self/status`), or `None` where the kernel does not give it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Prints this process's peak resident set in the protocol
/// (`peak_rss_kib <n>`), for [`Outcome::reported_peak_rss`]: a child
/// calls it last, after everything it measures. Nothing is printed where
/// the kernel does not give the figure (the parent then has none).
pub fn report_peak_rss() {
    if let Some(kib) = peak_rss_kib() {
        report(PEAK_RSS_KEY, kib);
    }
}

/// Reaps child `pid`: its exit status and resource usage.
fn wait4(pid: u32) -> std::io::Result<(ExitStatus, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable locals; `pid`
        // is a child of this process that nothing else reaps (the
        // `std::process::Child` it came from is never waited on).
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc == pid as libc::pid_t {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// One variant of a side-by-side benchmark: the binary that runs it as a
/// child, and the mode (first argument) that makes it one.
pub struct Variant {
    /// The name in the report.
    pub name: &'static str,
    /// The binary.
    pub exe: PathBuf,
    /// The child mode it is started in.
    pub mode: &'static str,
}

impl Variant {
    /// A variant run by `bin` from the directory of the running benchmark
    /// (the benchmark itself when `bin` is its own name).
    pub fn beside_me(name: &'static str, bin: &str, mode: &'static str) -> Variant {
        let own = std::env::current_exe().expect("current_exe");
        Variant {
            name,
            exe: own.with_file_name(bin),
            mode,
        }
    }
}

/// Stops the benchmark `bench` with one line naming the first variant's
/// binary that is not built, and the command that builds it.
pub fn require_built(bench: &str, variants: &[Variant]) {
    if let Some(v) = variants.iter().find(|v| !v.exe.exists()) {
        eprintln!(
            "{bench}: {} is missing: build it with `cargo build --release -p frostheap-bench --bins`",
            v.exe.display()
        );
        std::process::exit(2);
    }
}

/// Runs every variant as `exe MODE ARGS..` once per round, interleaved
/// ([`Plan`](crate::Plan), `rounds` rounds, no warm-up), printing each
/// run's wall time under `label`; then checks that every run of every
/// variant printed the same `check` value (same input, same answer,
/// whatever the engine and the repetition) and panics naming them if not.
pub fn run_checked(
    label: &str,
    variants: &[Variant],
    rounds: usize,
    args: &[&str],
) -> crate::Rounds<Outcome> {
    let rounds = crate::Plan::rounds(0, rounds).run(variants, |v| {
        let out = run(Command::new(&v.exe).arg(v.mode).args(args))
            .unwrap_or_else(|e| panic!("{} {label}: {e}", v.name));
        eprintln!("  {:<16} {:?}", v.name, out.wall);
        out
    });
    let checks: Vec<(&str, &str)> = variants
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            rounds.of(i).iter().map(move |out| {
                (
                    v.name,
                    out.value("check").expect("a child prints its check"),
                )
            })
        })
        .collect();
    assert!(
        checks.windows(2).all(|w| w[0].1 == w[1].1),
        "variants computed different results: {checks:?}"
    );
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reports_samples_values_and_its_own_peak_rss() {
        // The child grows a 64 MiB string in the shell: its peak RSS, not
        // the test binary's, must show it.
        let script = "echo sample 1.5; echo check 42; echo sample 2; \
                      x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo len ${#x}; echo oops >&2";
        let o = run(Command::new("sh").args(["-c", script])).expect("sh runs");
        assert_eq!(o.samples(), [1.5, 2.0]);
        assert_eq!(o.value("check"), Some("42"));
        assert_eq!(o.value("len"), Some("67108864"));
        assert_eq!(o.value("missing"), None);
        assert_eq!(o.stderr.trim(), "oops");
        assert!(o.peak_rss >= 64 << 20, "peak RSS {} B", o.peak_rss);
        // Copying 64 MiB through `tr` takes CPU time, in sh's children,
        // which wait4 counts for sh.
        assert!(o.cpu > Duration::ZERO && o.wall > Duration::ZERO, "{o:?}");
    }

    #[test]
    fn a_child_reports_its_own_peak_rss_apart_from_its_parents() {
        // This process holds 48 MiB (touched, so resident) while it starts
        // a child that holds nothing: the child's VmHWM, which it reports,
        // stays small whatever ru_maxrss says; our own VmHWM is at least
        // the 48 MiB (a high-water mark: other tests of this process may
        // have raised it before, so only the lower bound is checked).
        let held = vec![1u8; 48 << 20];
        let ours = peak_rss_kib().expect("VmHWM in /proc/self/status");
        assert!(ours >= 48 * 1024, "our VmHWM {ours} KiB");
        let script = "grep VmHWM /proc/self/status | tr -dc 0-9 | sed 's/^/peak_rss_kib /'";
        let o = run(Command::new("sh").args(["-c", script])).expect("sh runs");
        let own = o.reported_peak_rss().expect("the child reported it");
        assert!(own < 32 << 20, "the child reported {own} B");
        assert!(held.iter().all(|&b| b == 1));
        let o = run(Command::new("sh").args(["-c", "echo peak_rss_kib lots"])).expect("sh runs");
        let e = std::panic::catch_unwind(|| o.reported_peak_rss()).expect_err("not a number");
        let msg = e.downcast_ref::<String>().expect("a formatted panic");
        assert!(msg.contains("peak_rss_kib lots"), "{msg}");
    }

    #[test]
    fn a_failing_child_is_an_error_naming_its_status_and_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo broken input >&2; exit 3"]))
            .expect_err("exit 3 is a failure");
        let msg = e.to_string();
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("broken input"), "{msg}");
        let e = run(&mut Command::new("/nonexistent/program")).expect_err("cannot start");
        assert!(e.to_string().contains("cannot start"), "{e}");
    }
}
