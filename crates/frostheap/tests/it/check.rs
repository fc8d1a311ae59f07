//! Shared helpers: heaps for tests, pointers that cross threads, and the
//! fixture programs (tests/fixtures/) that global-mode and crash tests run
//! as child processes, each within a time limit.
//!
//! Fixtures are binaries of this package, so cargo builds them with the
//! test and names their paths at compile time (`CARGO_BIN_EXE_<name>`): no
//! test runs cargo, and a fixture can never be older than the library the
//! test was built with.

use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use frostheap::Heap;

/// 1 MiB.
pub const MIB: usize = 1 << 20;

/// A heap for model tests: large enough that the model never meets the
/// limit, owned by the calling thread.
pub fn roomy_heap(name: &'static str) -> Heap {
    Heap::builder()
        .name(name)
        .max(1 << 30)
        .build()
        .expect("a 1 GiB heap can be reserved")
}

/// A block pointer that may cross threads (the heap allows a block to be
/// freed by any thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendPtr(pub NonNull<u8>);

// SAFETY: a SendPtr is only an address; the tests hand each block to
// exactly one thread at a time, and the heap supports freeing from any
// thread.
unsafe impl Send for SendPtr {}

/// A byte that identifies block `i` (written by one thread, checked by
/// another).
pub fn tag(i: usize) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 7) as u8
}

/// Declares the fixture programs: each name is a `[[bin]]` of this
/// package (tests/fixtures/<name>.rs), whose path cargo passes in as
/// `CARGO_BIN_EXE_<name>` when it builds this test.
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// Every fixture and where cargo built it.
        pub const FIXTURES: &[(&str, &str)] = &[
            $(($name, env!(concat!("CARGO_BIN_EXE_", $name))),)*
        ];
    };
}

fixtures!(
    "explicit_heaps",
    "explicit_heaps_global",
    "freeze_child",
    "freeze_env",
    "global_alloc",
    "global_hello",
    "global_routing",
    "global_threads",
    "global_track",
    "nested_guards",
    "recovery",
    "runtime_global",
    "violation",
);

/// The path of fixture program `name`, which must exist.
#[track_caller]
pub fn fixture(name: &str) -> PathBuf {
    let Some(&(_, path)) = FIXTURES.iter().find(|(n, _)| *n == name) else {
        panic!(
            "no fixture program {name:?}: add tests/fixtures/{name}.rs, a [[bin]] for it in crates/frostheap/Cargo.toml, and its name to `fixtures!` in tests/it/check.rs"
        )
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "fixture program {name} is missing at {}: cargo builds it with this test (`cargo test --release -p frostheap --test it`, or `cargo build --release -p frostheap --bins`); a copy of the test binary run elsewhere needs the fixtures at the same paths (ci/guest.sh copies them)",
        path.display()
    );
    path
}

/// The path of example program `name` (examples/<name>.rs), for the few
/// child programs that need a dev-dependency (a fixture `[[bin]]` cannot
/// see them). Cargo builds examples with every `cargo test` of the package,
/// but not for `cargo test --test it` alone: then this fails saying how to
/// build it. Tests never run cargo themselves.
#[track_caller]
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .unwrap_or_else(|| panic!("no profile directory above {}", exe.display()));
    assert!(
        path.is_file(),
        "example program {name} is missing at {}: `cargo test` builds examples, `cargo test --test it` does not; build it with `cargo build --release -p frostheap --examples` (or run the package's full tests)",
        path.display()
    );
    path
}

/// Runs example `name` like [`run_fixture`] runs a fixture: `args`, our
/// `FROSTHEAP_*` variables removed, `env` added, within the time limit.
#[track_caller]
pub fn run_example(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FROSTHEAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    output_within(&mut cmd, &format!("example {name} {}", args.join(" ")))
}

/// Runs fixture `name` with `args` and extra environment `env`, with every
/// `FROSTHEAP_*` variable of our own environment removed first, within the
/// time limit of [`output_within`].
#[track_caller]
pub fn run_fixture(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    output_within(
        &mut fixture_command(name, args, env),
        &format!("fixture {name} {}", args.join(" ")),
    )
}

/// The command [`run_fixture`] runs, for a test that sets more up in the
/// child (see [`output_within`] to run it).
#[track_caller]
pub fn fixture_command(name: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(fixture(name));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FROSTHEAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// How long a child process may run: `FROSTHEAP_TEST_CHILD_TIMEOUT`
/// seconds, default 120 (the slowest fixture takes about a second here;
/// CI's emulated guest is some ten times slower).
pub fn child_time_limit() -> Duration {
    const VAR: &str = "FROSTHEAP_TEST_CHILD_TIMEOUT";
    match std::env::var(VAR) {
        Err(_) => Duration::from_secs(120),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => panic!("{VAR}={v:?}: expected whole seconds above 0"),
        },
    }
}

/// Runs `cmd` to its end like [`Command::output`], but a child still
/// running after [`child_time_limit`] is killed with its process group, and
/// the test fails naming `what`, with the output so far: a hang is a
/// failure, not a stuck test run. (The status is polled every 10 ms: no
/// SIGCHLD handler in a binary that tests signal handling.)
#[track_caller]
pub fn output_within(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let limit = child_time_limit();
    let mut clock = RunningClock::start();
    let mut stacks = String::new();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
        {
            break Some(status);
        }
        if clock.ran() > limit {
            // Where every thread of the group stood, before the kill: a
            // hang that shows once in a hundred CI runs must say where.
            stacks = stacks_of_group(child.id());
            // SAFETY: kill(2) on the child's own process group (made by
            // process_group(0) above; the child is not reaped yet, so the
            // group id is still its).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(RunningClock::POLL);
    };
    let stood = clock.stood_still();
    if stood > Duration::ZERO {
        // Evidence for the log, pass or fail: a child's time limit that
        // ran out while the machine stood still would say "hang".
        eprintln!(
            "note: {what}: the machine stood still for {:.1}s while it ran (polls {}ms apart came that late); not counted against its time limit",
            stood.as_secs_f64(),
            RunningClock::POLL.as_millis()
        );
    }
    let out = Output {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    };
    if status.is_none() {
        panic!(
            "{what} did not finish within {}s (FROSTHEAP_TEST_CHILD_TIMEOUT; {:.1}s of the machine standing still not counted): killed it and its process group\n{}\n--- where its threads were before the kill\n{stacks}",
            limit.as_secs(),
            stood.as_secs_f64(),
            describe(&out)
        );
    }
    out
}

/// The time a child has had to run: the wall-clock time since its start
/// less the stretches in which the machine stood still. The loop that
/// waits for the child polls every [`POLL`](Self::POLL); a poll that comes
/// over [`STILL`](Self::STILL) late means that nothing ran here — a
/// virtual machine its host stopped, a suspended CI runner — and that
/// stretch is the child's no more than ours. (A CI run failed two tests,
/// each at its 120 s limit, on fixtures that never hung in 99 runs here:
/// a machine that stood still, or hangs that the next failure's stacks
/// will show; its log could not tell whether the two limits ran out
/// together.) A child that hangs does not stop the polls, so its time
/// keeps counting.
struct RunningClock {
    started: Instant,
    last_poll: Instant,
    still: Duration,
}

impl RunningClock {
    const POLL: Duration = Duration::from_millis(10);
    const STILL: Duration = Duration::from_secs(2);

    fn start() -> RunningClock {
        let now = Instant::now();
        RunningClock {
            started: now,
            last_poll: now,
            still: Duration::ZERO,
        }
    }

    /// Called once a poll: the time the child has had to run so far.
    fn ran(&mut self) -> Duration {
        self.ran_at(Instant::now())
    }

    /// [`ran`](Self::ran) with the poll's time given.
    fn ran_at(&mut self, now: Instant) -> Duration {
        let gap = now - self.last_poll;
        self.last_poll = now;
        if gap > Self::STILL {
            self.still += gap - Self::POLL;
        }
        (now - self.started).saturating_sub(self.still)
    }

    /// How long the machine stood still while the child ran.
    fn stood_still(&self) -> Duration {
        self.still
    }
}

/// Where each thread of the processes of group `pgid` stands: each
/// process's threads with their state and kernel wait channel (from
/// /proc), and, for the first four processes, their user stacks from
/// `gdb`'s `thread apply all bt` where `gdb` is installed (CI installs
/// it), all within 90 s (a fork-heavy fixture may leave a dozen children).
fn stacks_of_group(pgid: u32) -> String {
    const GDB_PROCESSES: usize = 4;
    let budget = Instant::now() + Duration::from_secs(90);
    let mut out = String::new();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat_field(*pid, None, 5).as_deref() == Some(&pgid.to_string()))
        .collect();
    pids.sort_unstable();
    for (n, pid) in pids.into_iter().enumerate() {
        out += &format!("process {pid}:\n");
        let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            let read = |f: &str| {
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            out += &format!(
                "  thread {tid} {:?}: state {}, wchan {}\n",
                read("comm"),
                proc_stat_field(pid, Some(tid), 3).unwrap_or_default(),
                read("wchan")
            );
        }
        if n >= GDB_PROCESSES || Instant::now() >= budget {
            out += "  (no user stacks: past the first processes or the time for them)\n";
            continue;
        }
        let gdb = Command::new("gdb")
            .args(["-nx", "-batch", "-p", &pid.to_string()])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt 24"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match gdb {
            Err(e) => out += &format!("  (no user stacks: gdb: {e})\n"),
            Ok(mut g) => {
                let read = |p: Option<Box<dyn Read + Send>>| {
                    p.map(|mut p| {
                        std::thread::spawn(move || {
                            let mut s = String::new();
                            let _ = p.read_to_string(&mut s);
                            s
                        })
                    })
                };
                let reader = read(g.stdout.take().map(|p| Box::new(p) as _));
                let errors = read(g.stderr.take().map(|p| Box::new(p) as _));
                while g.try_wait().ok().flatten().is_none() {
                    if Instant::now() >= budget {
                        let _ = g.kill();
                        out += "  (gdb stopped: out of time)\n";
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = g.wait();
                let errors = errors.and_then(|r| r.join().ok()).unwrap_or_default();
                if let Some(r) = reader {
                    let text = r.join().unwrap_or_default();
                    if !text.lines().any(|l| l.starts_with('#')) {
                        // Why gdb saw no frame (a refused attach, say).
                        out.extend(errors.lines().take(3).map(|l| format!("  gdb: {l}\n")));
                    }
                    out.extend(
                        text.lines()
                            .filter(|l| l.starts_with('#') || l.starts_with("Thread "))
                            .map(|l| {
                                // A frame's line, without its long
                                // argument lists past 200 characters.
                                let cut = l.char_indices().nth(200).map_or(l.len(), |(i, _)| i);
                                format!("  {}\n", &l[..cut])
                            }),
                    );
                }
            }
        }
    }
    out
}

/// Field `n` (1-based, as proc(5) numbers them) of /proc/PID/stat, or of
/// /proc/PID/task/TID/stat.
fn proc_stat_field(pid: u32, tid: Option<u32>, n: usize) -> Option<String> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n.checked_sub(3)?).map(str::to_string)
}

/// The child exited 0 and printed `marker` on stdout (its own checks
/// passed); otherwise fails with its whole output.
pub fn assert_succeeded_saying(out: &Output, marker: &str) {
    assert!(out.status.success(), "{}", describe(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(marker),
        "no {marker:?} in stdout\n{}",
        describe(out)
    );
}

/// The number `N` of the word `KEY=N` (`key` is `"KEY="`) the child
/// printed on stdout; fails with its whole output when there is none.
pub fn printed_number(out: &Output, key: &str) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}N in stdout\n{}", describe(out)))
}

/// Stdout and stderr of a child, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A memory cgroup made for a child process: a child of this process's
/// own memory cgroup (v1's `memory` hierarchy, or v2's with the memory
/// controller enabled for its children), with a memory limit, removed
/// when dropped (after the processes run in it have exited).
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// One with a limit of `bytes`; `Err(why)` where this machine does not
    /// let this process make one (not root, a read-only cgroup tree, no
    /// memory controller).
    pub fn new(bytes: u64) -> Result<MemoryCgroup, String> {
        use frostheap::__private::os::cgroup::own_cgroup;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let own = std::fs::read("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let (hierarchy, path) =
            own_cgroup(&own).ok_or("no memory cgroup in /proc/self/cgroup")?;
        // Where the library looks for the limit (os::cgroup).
        let path = String::from_utf8_lossy(path);
        let mount = String::from_utf8_lossy(hierarchy.mount());
        let file = String::from_utf8_lossy(hierarchy.file());
        let file = file.trim_start_matches('/');
        let parent = PathBuf::from(format!("{mount}{}", path.trim_end_matches('/')));
        let dir = parent.join(format!(
            "frostheap-test-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot make a cgroup ({}: {e})", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        let limit = cgroup.dir.join(file);
        std::fs::write(&limit, bytes.to_string()).map_err(|e| {
            format!(
                "cannot set a memory limit ({}: {e}; on cgroup v2 the memory controller must be enabled in {}/cgroup.subtree_control)",
                limit.display(),
                parent.display()
            )
        })?;
        Ok(cgroup)
    }

    /// `cmd` runs in this cgroup (the child moves itself in before it
    /// executes the program).
    pub fn run_in<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").into_os_string().into_vec())
            .expect("a cgroup path has no NUL");
        // SAFETY: open, write and close are async-signal-safe; the closure
        // touches only the child and the path made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n == 1 { Ok(()) } else { Err(err) }
            })
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The children have been reaped; a cgroup's last process can take
        // a moment to leave it.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("left behind: the cgroup {}", self.dir.display());
    }
}

crate::test!(a_childs_time_limit_counts_no_stretch_the_machine_stood_still);
/// The clock of [`output_within`]: polls 10 ms apart count whole; a poll
/// that came 130 s late counts as one poll, and the stretch is reported.
fn a_childs_time_limit_counts_no_stretch_the_machine_stood_still() {
    let mut clock = RunningClock::start();
    let t0 = clock.started;
    let ms = Duration::from_millis;
    assert_eq!(clock.ran_at(t0 + ms(10)), ms(10));
    assert_eq!(clock.ran_at(t0 + ms(1_990)), ms(1_990), "a poll under 2 s late counts");
    assert_eq!(clock.stood_still(), Duration::ZERO);
    assert_eq!(clock.ran_at(t0 + ms(131_990)), ms(2_000));
    assert_eq!(clock.stood_still(), ms(129_990));
    assert_eq!(clock.ran_at(t0 + ms(132_000)), ms(2_010));
}
