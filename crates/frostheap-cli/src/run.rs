//! `frostheap run --max-memory 1G -- CMD ARGS…`: runs any program on
//! frostheap's heaps under one hard limit for the whole process (every
//! thread's heap and its anonymous `mmap`s) — an `-Xmx` for Python, C and
//! C++.
//!
//! It validates the sizes, sets `FROSTHEAP_MAX` / `FROSTHEAP_MIN`, prepends
//! `libfrostheap.so` (built by `frostheap-capi`) to `LD_PRELOAD`, and `exec`s
//! the command, which keeps this process's id, so signals and exit status
//! pass through untouched.
//!
//! The library is looked for, in order: the file `FROSTHEAP_LIB` names (set
//! but missing is an error, never a silent fallback); next to this binary
//! (`cargo build --release` at the workspace root builds both into
//! `target/release/`); `../lib/frostheap/` from this binary (an installed
//! layout: `cargo install --path crates/frostheap-cli` puts the command in
//! `~/.cargo/bin`, and the library is copied to `~/.cargo/lib/frostheap/`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use frostheap::__private::SIZE_SYNTAX;
use frostheap::{parse_size, Bytes};

/// The library's file name.
pub const LIB_NAME: &str = "libfrostheap.so";

/// Arguments of `frostheap run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Hard cap on the memory the program allocates, every thread and its
    /// anonymous mmaps included (FROSTHEAP_MAX), e.g. 512M, 1G, 1.5GiB.
    /// Per process: each child the program starts gets its own.
    #[arg(long, value_name = "SIZE")]
    max_memory: String,
    /// Memory the main heap commits up front (FROSTHEAP_MIN).
    #[arg(long, value_name = "SIZE")]
    min: Option<String>,
    /// Print the main heap's and the process's statistics at exit
    /// (FROSTHEAP_STATS=1).
    #[arg(long)]
    stats: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

fn size_arg(flag: &str, text: &str) -> Result<usize, String> {
    parse_size(text).map_err(|_| format!("invalid {flag} \"{text}\": expected {SIZE_SYNTAX}"))
}

/// The environment variable that names the library explicitly.
pub const LIB_VAR: &str = "FROSTHEAP_LIB";

/// Where the library is looked for when `FROSTHEAP_LIB` is unset: next to
/// the running binary (one directory up when the binary is in `deps/`, as
/// test harnesses run it), then the installed layout `../lib/frostheap/`.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(LIB_NAME));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                out.push(up.join(LIB_NAME));
            }
        }
        if let Some(up) = dir.parent() {
            out.push(up.join("lib").join("frostheap").join(LIB_NAME));
        }
    }
    out
}

/// Finds the library: the file `FROSTHEAP_LIB` names, or the first of
/// [`candidates`] that exists; the error names every place it looked and
/// how to build or install the library.
fn find_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(LIB_VAR).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "invalid {LIB_VAR} \"{}\": expected the path of an existing {LIB_NAME}",
                path.display()
            ))
        };
    }
    let searched = candidates();
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let paths: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
            format!(
            "{LIB_NAME} not found (looked for {}). In a checkout, `cargo build --release` at the \
             workspace root builds it next to this binary; for an installed command, copy \
             target/release/{LIB_NAME} to ../lib/frostheap/ beside the binary, or set {LIB_VAR}",
            if paths.is_empty() {
                "nothing: the binary's location is unknown".to_string()
            } else {
                paths.join(", ")
            }
        )
        })
}

/// Runs `frostheap run`: returns only on error.
pub fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let max = size_arg("--max-memory", &args.max_memory)?;
    if max < frostheap::__private::PAGE_SIZE {
        return Err(format!(
            "invalid --max-memory \"{}\": expected at least {} (one heap page)",
            args.max_memory,
            Bytes(frostheap::__private::PAGE_SIZE)
        )
        .into());
    }
    let min = match &args.min {
        Some(text) => {
            let min = size_arg("--min", text)?;
            if min > max {
                return Err(format!(
                    "invalid --min \"{text}\": expected at most --max-memory ({})",
                    Bytes(max)
                )
                .into());
            }
            Some(min)
        }
        None => None,
    };
    let lib = find_library()?;

    let mut preload = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env("LD_PRELOAD", preload)
        .env("FROSTHEAP_MAX", max.to_string());
    match min {
        Some(min) => cmd.env("FROSTHEAP_MIN", min.to_string()),
        None => cmd.env_remove("FROSTHEAP_MIN"),
    };
    if args.stats {
        cmd.env("FROSTHEAP_STATS", "1");
    }
    let err = cmd.exec();
    Err(format!("cannot run {}: {err}", Path::new(program).display()).into())
}
