//! Shared helpers: heaps for tests, pointers that cross threads, and the
//! fixture programs (tests/fixtures/) that global-mode and crash tests run
//! as child processes, each within a time limit.
//!
//! Fixtures are binaries of this package, so cargo builds them with the
//! test and names their paths at compile time (`CARGO_BIN_EXE_<name>`): no
//! test runs cargo, and a fixture can never be older than the library the
//! test was built with.

use std::io::Read;
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
    "freeze_child",
    "freeze_env",
    "global_alloc",
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
    let mut cmd = Command::new(fixture(name));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FROSTHEAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    output_within(&mut cmd, &format!("fixture {name} {}", args.join(" ")))
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
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
        {
            break Some(status);
        }
        if started.elapsed() > limit {
            // SAFETY: kill(2) on the child's own process group (made by
            // process_group(0) above; the child is not reaped yet, so the
            // group id is still its).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        status: status.unwrap_or_else(|| ExitStatus::from_raw(libc::SIGKILL)),
        stdout: stdout.join().expect("the stdout reader"),
        stderr: stderr.join().expect("the stderr reader"),
    };
    if status.is_none() {
        panic!(
            "{what} did not finish within {}s (FROSTHEAP_TEST_CHILD_TIMEOUT): killed it and its process group\n{}",
            limit.as_secs(),
            describe(&out)
        );
    }
    out
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

/// Stdout and stderr of a child, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
