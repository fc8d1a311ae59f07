//! The README's first command runs the tour: it must keep working and keep
//! showing what it claims (a refused allocation at the cap, three caught
//! violations with the data intact, a caught append, the program going on).

use std::process::Command;

#[path = "../../frostheap-capi/tests/support/address_space.rs"]
mod address_space;
use address_space::with_address_space;

#[test]
fn the_tour_runs_and_shows_what_it_claims() {
    let out = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("tour")
        .env_remove("FROSTHEAP_ON_VIOLATION")
        .output()
        .expect("run the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("out of memory: 80 MiB requested"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("==frostheap== VIOLATION").count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("the data is intact"), "{stdout}");
    // Under the default policy (rollback) each of the three violating
    // tasks runs to its end: at least one store each is reported and
    // undone (memset's count depends on libc's store width), and no
    // worker is parked.
    assert!(stdout.contains("policy rollback"), "{stdout}");
    let stores: usize = stdout
        .split("violating stores reported, 0 parked workers replaced")
        .next()
        .and_then(|head| head.rsplit("; ").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("no '<n> violating stores reported, 0 parked workers replaced':\n{stdout}")
        });
    assert!(
        stores >= 3,
        "three violating tasks, {stores} stores:\n{stdout}"
    );
    assert!(stdout.contains("(the append never happened)"), "{stdout}");
    assert!(stdout.contains("End of the tour."), "{stdout}");
    // Every report names the faulting instruction's location. In optimized
    // builds the stores are inlined into the tour's closures, so reports
    // point at the tour's own lines; in debug builds an atomic or memset is
    // a real function call, and only the faulting instruction (inside
    // core or libc) is symbolised.
    let at_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("at "))
        .collect();
    assert_eq!(at_lines.len(), 4, "{stdout}");
    assert!(
        at_lines
            .iter()
            .all(|l| l.contains(" in ") && l.contains(':')),
        "{stdout}"
    );
    if !cfg!(debug_assertions) {
        assert!(at_lines.iter().all(|l| l.contains("tour.rs:")), "{stdout}");
    }
}

#[test]
fn the_tour_runs_under_an_address_space_limit() {
    // Under `ulimit -v` the heaps' reservation (FROSTHEAP_MAX's default was
    // physical memory) and the workers' context space (1 TiB) were refused
    // whole, and the tour stopped before its first line. Now the default
    // limit is a quarter of the address space and the context space takes
    // the slots that fit.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_frostheap"));
    cmd.arg("tour")
        .env_remove("FROSTHEAP_ON_VIOLATION")
        .env_remove("FROSTHEAP_MAX");
    with_address_space(&mut cmd, 8 << 30);
    let out = cmd.output().expect("run the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("End of the tour."), "{stdout}");
    assert_eq!(
        stdout.matches("==frostheap== VIOLATION").count(),
        4,
        "{stdout}"
    );
}

#[test]
fn no_subcommand_means_the_tour() {
    let out = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .output()
        .expect("run frostheap");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("frostheap tour"));
}

#[test]
fn the_tour_under_cancel_parks_and_replaces_one_worker_per_violation() {
    let out = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("tour")
        .env("FROSTHEAP_ON_VIOLATION", "cancel")
        .output()
        .expect("run the tour");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("policy cancel"), "{stdout}");
    assert!(stdout.contains("the data is intact"), "{stdout}");
    assert!(
        stdout.contains("3 violating stores reported, 3 parked workers replaced"),
        "{stdout}"
    );
    assert!(stdout.contains("(the append never happened)"), "{stdout}");
}

#[test]
fn info_names_the_limits_and_a_bad_environment_value_stops_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("info")
        .env("FROSTHEAP_MAX", "1G")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("process limit        1 GiB (FROSTHEAP_MAX)"),
        "{stdout}"
    );
    for line in [
        "page size",
        "transparent huge",
        "protection keys",
        "freeze backend",
    ] {
        assert!(stdout.contains(line), "`info` reports {line}:\n{stdout}");
    }
    // The defaults are printed as the words the variables accept.
    for setting in ["(FROSTHEAP_HUGE_PAGES=auto)", "(FROSTHEAP_PROTECT=auto)"] {
        assert!(
            stdout.contains(setting),
            "`info` prints {setting}:\n{stdout}"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("info")
        .env("FROSTHEAP_MAX", "lots")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("FROSTHEAP_MAX") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn the_tour_ends_normally_when_its_reader_leaves() {
    // `frostheap tour | head -1`: println! panicked on the closed pipe
    // (exit status 101).
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_frostheap"))
        .arg("tour")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the tour");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "frostheap tour");
    drop(lines);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
