//! Shared helpers: heaps for tests, pointers that cross threads, and the
//! example programs that global-mode tests run as child processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::SystemTime;

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

/// Whether this test binary was built with the release profile (the
/// directory `target/<profile>/deps` it runs from).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/it-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            newest_mtime(&path, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}

fn is_fresh(exe: &Path, name: &str) -> bool {
    let Ok(built) = std::fs::metadata(exe).and_then(|m| m.modified()) else {
        return false;
    };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut newest = SystemTime::UNIX_EPOCH;
    newest_mtime(&crate_dir.join("src"), &mut newest);
    for f in [
        crate_dir.join("Cargo.toml"),
        crate_dir.join("examples").join(format!("{name}.rs")),
    ] {
        if let Ok(m) = std::fs::metadata(&f).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    built >= newest
}

/// The path of example `name`, built with this test binary's profile.
///
/// `cargo test` builds the package's examples next to the test binary
/// (`target/<profile>/examples`), so normally that file is used. When it is
/// missing or older than the sources (`cargo test --test it` does not build
/// examples), the example is built with `cargo build` into a private
/// target directory: the running `cargo test` holds the lock of the
/// shared one, so building there would wait forever.
pub fn example(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let profile_dir = profile_dir();
    let next_to_us = profile_dir.join("examples").join(name);
    if is_fresh(&next_to_us, name) {
        return next_to_us;
    }
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target = profile_dir.join("frostheap-it-examples");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "frostheap", "--example", name])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build for an example");
    assert!(
        status.success(),
        "cargo build --example {name} failed: {status}"
    );
    let built = target
        .join(if release { "release" } else { "debug" })
        .join("examples")
        .join(name);
    assert!(
        built.exists(),
        "cargo build did not produce {}",
        built.display()
    );
    built
}

/// Runs example `name` with `args` and extra environment `env`, with every
/// `FROSTHEAP_*` variable of our own environment removed first.
pub fn run_example(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FROSTHEAP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output()
        .unwrap_or_else(|e| panic!("running example {name}: {e}"))
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
