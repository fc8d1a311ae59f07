//! `frostheap run`: finding `libfrostheap.so` (explicitly, next to the
//! binary, or in an installed layout) and capping a real program with it.
//!
//! The library is built by `cargo build --release` (next to the command)
//! or `cargo test --workspace --release` (which leaves it in `deps/`
//! only); these tests look for it in both places beside the `frostheap`
//! binary cargo built for them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FROSTHEAP: &str = env!("CARGO_BIN_EXE_frostheap");

/// The library cargo built beside the command under test: next to it
/// after `cargo build`, in `deps/` after `cargo test --workspace`.
fn built_library() -> PathBuf {
    let dir = Path::new(FROSTHEAP)
        .parent()
        .expect("the binary has a directory");
    let candidates = [
        dir.join("libfrostheap.so"),
        dir.join("deps/libfrostheap.so"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libfrostheap.so not found at {candidates:?}: `cargo test --workspace --release` \
                 or `cargo build --release` at the root builds it"
            )
        })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("frostheap-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_frostheap_lib_that_does_not_exist_stops_with_one_line_naming_it() {
    let out = Command::new(FROSTHEAP)
        .args(["run", "--max-memory", "64M", "--", "true"])
        .env("FROSTHEAP_LIB", "/nonexistent/libfrostheap.so")
        .output()
        .expect("run frostheap");
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("invalid FROSTHEAP_LIB \"/nonexistent/libfrostheap.so\"")
            && err.contains("existing libfrostheap.so"),
        "{err}"
    );
}

#[test]
fn an_installed_command_finds_the_library_in_lib_frostheap_and_caps_python() {
    let lib = built_library();
    let root = Scratch::new("installed");
    let bin = root.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(FROSTHEAP, bin.join("frostheap")).expect("install the command");
    let installed = bin.join("frostheap");

    // Without the library, the error names where it looked.
    let out = output_of_copied(
        Command::new(&installed)
            .args(["run", "--max-memory", "64M", "--", "true"])
            .env_remove("FROSTHEAP_LIB"),
    );
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let expected = root.0.join("lib/frostheap/libfrostheap.so");
    assert!(
        stderr(&out).contains(&expected.display().to_string()),
        "the error names {}: {}",
        expected.display(),
        stderr(&out)
    );

    // With it installed, a program over the cap gets MemoryError, and one
    // under it runs normally.
    std::fs::create_dir_all(root.0.join("lib/frostheap")).unwrap();
    std::fs::copy(&lib, &expected).expect("install the library");
    let python = |code: &str| {
        output_of_copied(
            Command::new(&installed)
                .args(["run", "--max-memory", "64M", "--", "python3", "-c", code])
                .env_remove("FROSTHEAP_LIB")
                .env("PYTHONMALLOC", "malloc"),
        )
    };
    let over = python(
        "try:\n  b = bytearray(200 << 20)\n  print('allocated')\nexcept MemoryError:\n  print('MemoryError')",
    );
    assert!(over.status.success(), "stderr: {}", stderr(&over));
    assert_eq!(String::from_utf8_lossy(&over.stdout).trim(), "MemoryError");
    let under = python("b = bytearray(16 << 20); print(len(b))");
    assert!(under.status.success(), "stderr: {}", stderr(&under));
    assert_eq!(String::from_utf8_lossy(&under.stdout).trim(), "16777216");
}

/// Runs `cmd`, whose program this test process has just copied into
/// place, and waits for its output. A test running beside it that starts
/// a process meanwhile may hold the copy's write descriptor between its
/// `fork` and its `exec` (the descriptor closes at the `exec`), and the
/// kernel refuses to run a file open for writing (`ETXTBSY`, "Text file
/// busy"): retried for up to a second.
fn output_of_copied(cmd: &mut Command) -> Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.expect("run the installed command"),
        }
    }
    panic!("the installed command stayed busy (ETXTBSY) for a second");
}

/// Runs `frostheap run --max-memory 64M -- ARGS` with the built library.
fn run_capped(args: &[&str]) -> Output {
    Command::new(FROSTHEAP)
        .args(["run", "--max-memory", "64M", "--"])
        .args(args)
        .env("FROSTHEAP_LIB", built_library())
        .output()
        .expect("run frostheap")
}

/// The `FROSTHEAP_*` variables `frostheap run` inherits are its child's:
/// the command itself is neither held to them nor stopped by a bad one,
/// and its flags set the child's limit. A 1M `FROSTHEAP_MAX` aborted the
/// command ("memory allocation of 4800 bytes failed"), so a `frostheap
/// run` inside another with a small limit failed; `abc` stopped it with
/// exit 2 though `--max-memory` was given.
#[test]
fn the_environment_run_inherits_is_its_childs_not_its_own() {
    let echo = ["--", "sh", "-c", "echo $FROSTHEAP_MAX"];
    for inherited in ["1M", "abc"] {
        let out = Command::new(FROSTHEAP)
            .args(["run", "--max-memory", "100M"])
            .args(echo)
            .env("FROSTHEAP_LIB", built_library())
            .env("FROSTHEAP_MAX", inherited)
            .output()
            .expect("run frostheap");
        assert!(out.status.success(), "{inherited}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "104857600");
    }
    // Nested: the inner command runs under the outer one's 16 MiB limit
    // (the library preloaded into it), and starts its child with its own.
    let out = Command::new(FROSTHEAP)
        .args(["run", "--max-memory", "16M", "--", FROSTHEAP])
        .args(["run", "--max-memory", "100M"])
        .args(echo)
        .env("FROSTHEAP_LIB", built_library())
        .output()
        .expect("run frostheap");
    assert!(out.status.success(), "nested: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "104857600");
}

/// A program the loader never preloads into would run uncapped with no
/// word of it: a statically linked one (no loader), the same behind a
/// script's `#!`, and a set-user-ID program of another owner (secure
/// execution ignores `LD_PRELOAD`). `frostheap run` refuses them with one
/// line saying why; a dynamic program, and a script run by one, run.
#[test]
fn programs_the_library_cannot_reach_are_refused_with_the_reason() {
    let dir = Scratch::new("unreachable");
    let src = dir.0.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"ran\"); return 0; }\n",
    )
    .unwrap();
    let cc = |out: &Path, extra: &[&str]| {
        let status = Command::new("cc")
            .args(extra)
            .arg("-o")
            .arg(out)
            .arg(&src)
            .status()
            .expect("a C compiler `cc` is needed for these tests");
        assert!(
            status.success(),
            "cc {extra:?} failed (a static libc, libc.a, is needed)"
        );
    };
    let fixed = dir.0.join("static");
    cc(&fixed, &["-static"]);
    // A static-PIE program is ET_DYN with no interpreter (it ran uncapped).
    let fixed_pie = dir.0.join("static-pie");
    cc(&fixed_pie, &["-static-pie"]);
    let dynamic = dir.0.join("dynamic");
    cc(&dynamic, &[]);
    let script = |name: &str, interpreter: &Path| {
        let path = dir.0.join(name);
        std::fs::write(&path, format!("#!{}\n", interpreter.display())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };

    for (program, why) in [
        (fixed.clone(), "is statically linked"),
        (fixed_pie.clone(), "is statically linked"),
        (script("by-static", &fixed), "is statically linked"),
    ] {
        let out = run_capped(&[program.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("cannot cap") && err.contains(why) && err.contains("--max-memory"),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "the program ran: {err}");
    }
    for program in [dynamic.clone(), script("by-dynamic", &dynamic)] {
        let out = run_capped(&[program.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
    }
    // A command that cannot be run exits as a shell's would: 127 not
    // found, 126 found and not runnable (never 2, a program's own code).
    let not_executable = dir.0.join("not-executable");
    std::fs::write(&not_executable, "data\n").unwrap();
    for (program, code) in [
        (dir.0.join("no-such-program"), 127),
        (not_executable, 126),
        (script("by-nothing", &dir.0.join("no-interpreter")), 127),
    ] {
        let out = run_capped(&[program.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{program:?}: {err}");
        assert!(err.contains("cannot run"), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }

    // Set-user-ID to another owner: a copy given to `nobody` when we are
    // root (CI), else a system program owned by root.
    // SAFETY: geteuid has no preconditions.
    let setuid = if unsafe { libc::geteuid() } == 0 {
        let copy = dir.0.join("setuid");
        std::fs::copy(&dynamic, &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(65534), None).expect("chown to nobody");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
        copy
    } else {
        [
            "/usr/bin/passwd",
            "/usr/bin/su",
            "/bin/su",
            "/usr/bin/mount",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0)
        })
        .expect("a set-user-ID program owned by root (passwd, su or mount)")
    };
    let out = run_capped(&[setuid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is set-user-ID or set-group-ID to another identity"),
        "{}",
        stderr(&out)
    );
}

/// `--max-memory 25%` is a quarter of the memory this process may use
/// (physical memory, or its cgroup's limit if less), in bytes in the
/// program's `FROSTHEAP_MAX`; a percentage outside 1–100% or with a
/// fraction stops with one line naming the flag, the value and what is
/// accepted, and nothing runs.
#[test]
fn max_memory_as_a_percentage_of_the_memory_the_process_may_use() {
    let out = Command::new(FROSTHEAP)
        .args([
            "run",
            "--max-memory",
            "25%",
            "--",
            "sh",
            "-c",
            "echo $FROSTHEAP_MAX",
        ])
        .env("FROSTHEAP_LIB", built_library())
        .output()
        .expect("run frostheap");
    assert!(out.status.success(), "{}", stderr(&out));
    let want = frostheap::__private::process_memory() / 4;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.to_string()
    );
    for bad in ["0%", "101%", "12.5%"] {
        let out = Command::new(FROSTHEAP)
            .args(["run", "--max-memory", bad, "--", "sh", "-c", "echo ran"])
            .env("FROSTHEAP_LIB", built_library())
            .output()
            .expect("run frostheap");
        assert!(!out.status.success(), "{bad} accepted");
        assert!(out.stdout.is_empty(), "{bad}: the program ran");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains(&format!("invalid --max-memory \"{bad}\"")) && err.contains("1% to 100%"),
            "{bad}: {err}"
        );
    }
}

/// Runs `frostheap run ARGS -- sh -c "echo ran"` with the built library,
/// under `sh`'s `ulimit -v KIB` when given.
fn run_echo(args: &[&str], ulimit_kib: Option<u64>) -> Output {
    let mut cmd = match ulimit_kib {
        Some(kib) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("ulimit -v {kib} && exec \"$0\" \"$@\""),
                FROSTHEAP,
            ]);
            c
        }
        None => Command::new(FROSTHEAP),
    };
    cmd.arg("run")
        .args(args)
        .args(["--", "sh", "-c", "echo ran"])
        .env("FROSTHEAP_LIB", built_library())
        .output()
        .expect("run frostheap")
}

/// A `--max-memory` the program's start-up would refuse is refused by the
/// command, naming the flag, the value and what is expected, and nothing
/// runs: a user's trial of `--max-memory 1000T` got the program's own
/// start-up line, "invalid FROSTHEAP_MAX=\"1099511627776000\"", about a
/// variable they never wrote; `100K` passed the command's check (one heap
/// page) and was refused by the start-up's (two); `8G` under `ulimit -v`
/// of 4 GiB, whose arena no process under that limit can reserve.
#[test]
fn a_max_memory_the_programs_start_up_would_refuse_is_refused_as_the_flag() {
    for (value, ulimit, expected) in [
        (
            "1000T",
            None,
            "expected a size the address space can reserve",
        ),
        ("100K", None, "expected at least 128K"),
        ("127K", None, "expected at least 128K"),
        (
            "8G",
            Some(4 << 20),
            "expected a size the address space can reserve",
        ),
    ] {
        let out = run_echo(&["--max-memory", value], ulimit);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(out.stdout.is_empty(), "{value}: the program ran: {err}");
        assert_eq!(err.lines().count(), 1, "{value}: {err}");
        assert!(
            err.contains(&format!("invalid --max-memory \"{value}\"")) && err.contains(expected),
            "{value}: {err}"
        );
        assert!(!err.contains("FROSTHEAP_MAX"), "{value}: {err}");
    }
    // The least accepted reaches the program (too little for `sh`, which
    // is then refused memory: the library's line, not the command's), and
    // a limit within `ulimit -v` runs.
    let out = run_echo(&["--max-memory", "128K"], None);
    assert!(!stderr(&out).contains("invalid"), "{}", stderr(&out));
    let out = run_echo(&["--max-memory", "1G"], Some(8 << 20));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
}

/// `--min` is checked as `--max-memory` is, and named as the flag: a
/// size it cannot read, or one above `--max-memory`, stops the command
/// with one line and nothing runs; equal to `--max-memory` (as `-Xms`
/// equal to `-Xmx`) it runs, with the program's `FROSTHEAP_MIN` in bytes.
#[test]
fn min_is_checked_as_the_flag_and_may_equal_max_memory() {
    for (min, expected) in [
        ("lots", "expected a byte size"),
        ("128M", "expected at most --max-memory (64 MiB)"),
        ("1.1G", "a whole number of bytes"),
    ] {
        let out = run_echo(&["--max-memory", "64M", "--min", min], None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{min}: {err}");
        assert!(out.stdout.is_empty(), "{min}: the program ran: {err}");
        assert_eq!(err.lines().count(), 1, "{min}: {err}");
        assert!(
            err.contains(&format!("invalid --min \"{min}\"")) && err.contains(expected),
            "{min}: {err}"
        );
    }
    let out = Command::new(FROSTHEAP)
        .args(["run", "--max-memory", "64M", "--min", "64M", "--"])
        .args(["sh", "-c", "echo $FROSTHEAP_MIN"])
        .env("FROSTHEAP_LIB", built_library())
        .output()
        .expect("run frostheap");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (64 << 20).to_string()
    );
}
