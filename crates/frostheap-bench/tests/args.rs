//! The benchmark binaries that parse their arguments by hand: `--help`
//! prints the usage and exits 0 without running the benchmark, and an
//! argument they do not take is refused with status 2 and one line saying
//! so. `global_path --help` ran the benchmark.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_prints_the_usage_and_unknown_arguments_are_refused() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_global_path"), "global_path"),
        (env!("CARGO_BIN_EXE_borrow_loop"), "borrow_loop"),
        (env!("CARGO_BIN_EXE_threads_system"), "threads_"),
    ] {
        for help in ["--help", "-h"] {
            let out = run(bin, &[help]);
            let stdout = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {help}: {stdout}");
            assert!(
                stdout.starts_with(&format!("usage: {name}")),
                "{name} {help}: {stdout}"
            );
            // Usage only: no benchmark line (`pair16 …`, `sample …`).
            assert!(
                !stdout
                    .lines()
                    .any(|l| l.starts_with("pair16") || l.starts_with("sample ")),
                "{stdout}"
            );
        }
        let out = run(bin, &["--bogus"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} --bogus: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{name} --bogus ran: {}",
            text(&out.stdout)
        );
        assert!(
            !stderr.is_empty() && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn a_threads_child_refuses_a_count_that_is_not_a_number() {
    let out = run(
        env!("CARGO_BIN_EXE_threads_system"),
        &["local", "two", "10", "1"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("THREADS") && stderr.contains("\"two\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bystander_measures_every_kind_the_cpu_has_in_a_brief_run() {
    let out = run(
        env!("CARGO_BIN_EXE_bystander"),
        &["--rounds", "1", "--stores", "20"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // `mov`, `lock xadd` and `memcpy` on every x86_64 CPU; the AVX rows
    // where the CPU has them, else named as not measured.
    let rows = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" µs"))
        .count();
    let skipped = stdout.lines().any(|l| l.starts_with("Not measured"));
    assert!(rows == 6 || (rows >= 3 && skipped), "{stdout}");
    let out = run(env!("CARGO_BIN_EXE_bystander"), &["--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
