//! `frostheap run --max-memory 1G -- CMD ARGS…`: runs any program on
//! frostheap's heaps under one hard limit for the whole process (every
//! thread's heap and its anonymous `mmap`s) — an `-Xmx` for Python, C and
//! C++.
//!
//! It validates the sizes, sets `FROSTHEAP_MAX` / `FROSTHEAP_MIN`, prepends
//! `libfrostheap.so` (built by `frostheap-capi`) to `LD_PRELOAD`, and `exec`s
//! the command, which keeps this process's id, so signals and exit status
//! pass through untouched. A program the loader would not preload the
//! library into — statically linked, or set-user-ID to another owner — is
//! refused with the reason, since it would run with no limit and nothing
//! would say so.
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

use frostheap::__private::{parse_limit_bytes, process_memory, LIMIT_SYNTAX, WHOLE_BYTES};
use frostheap::{Bytes, SizeErrorKind};

/// The library's file name.
pub const LIB_NAME: &str = "libfrostheap.so";

/// Arguments of `frostheap run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Hard cap on the memory the program allocates, every thread and its
    /// anonymous mmaps included (FROSTHEAP_MAX), e.g. 512M, 1G, 1.5GiB, or
    /// 75% (of physical memory, or of the cgroup's limit if less); at
    /// least 128K, and at most what the address space can reserve (checked
    /// before the program runs). Per process: each child the program
    /// starts gets its own.
    #[arg(long, value_name = "SIZE")]
    max_memory: String,
    /// Memory the main heap commits up front (FROSTHEAP_MIN): a size or a
    /// percentage, as for --max-memory, at most --max-memory. It counts
    /// against --max-memory from the start, and only the main heap uses
    /// it, so the commit stops an eighth of --max-memory (8 MiB at least)
    /// short of it, for the other threads' heaps and the program's mmaps:
    /// equal to --max-memory (as -Xms equal to -Xmx for a JVM), seven
    /// eighths are committed up front, and the main heap grows into the
    /// rest on demand.
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

/// `--max-memory` or `--min` (of `run`, and `serve`'s `--max-memory`): a
/// size, or a percentage of the memory this process (and so the program,
/// in the same cgroup) may use, resolved here to bytes.
pub(crate) fn limit_arg(flag: &str, text: &str) -> Result<usize, String> {
    parse_limit_bytes(text.as_bytes(), process_memory()).map_err(|e| match e.kind() {
        SizeErrorKind::TooLarge => {
            format!("invalid {flag} \"{text}\": expected a size that fits in 64 bits")
        }
        SizeErrorKind::Malformed => format!("invalid {flag} \"{text}\": expected {LIMIT_SYNTAX}"),
        _ => format!("invalid {flag} \"{text}\": expected {WHOLE_BYTES}"),
    })
}

/// `run --max-memory`: [`limit_arg`], then every bound the program's
/// start-up holds `FROSTHEAP_MAX` to, checked here so that a value it
/// would refuse is named as the flag, with what is expected, before the
/// program runs (`--max-memory 1000T` was the program's start-up line
/// "invalid FROSTHEAP_MAX=\"1099511627776000\"", a variable the user never
/// wrote, and `--max-memory 100K` passed here, checked against one heap
/// page, to be refused there against two): at least [`MIN_MAX`], and an
/// arena the address space can reserve ([`probe_reservation`]).
///
/// [`MIN_MAX`]: frostheap::__private::MIN_MAX
/// [`probe_reservation`]: frostheap::__private::probe_reservation
pub(crate) fn max_memory_arg(text: &str) -> Result<usize, String> {
    use frostheap::__private::{probe_reservation, MIN_MAX, MIN_MAX_EXPECTED};
    let max = limit_arg("--max-memory", text)?;
    if max < MIN_MAX {
        return Err(format!(
            "invalid --max-memory \"{text}\" ({:#}): expected {MIN_MAX_EXPECTED}",
            Bytes(max)
        ));
    }
    if let Err((slot, largest)) = probe_reservation(max) {
        let slot = match slot {
            Some(slot) => format!("{}", Bytes(slot)),
            None => "past 2^63 bytes".to_string(),
        };
        let most = match largest {
            0 => "and this process cannot reserve even 64M now".to_string(),
            n => format!("and at most {} can be reserved here", Bytes(n)),
        };
        let ulimit = match frostheap::__private::os::address_space_limit() {
            Some(limit) => format!(
                " (under the address-space limit, ulimit -v, of {}: --max-memory should be at most a quarter of it)",
                Bytes(limit)
            ),
            None => String::new(),
        };
        return Err(format!(
            "invalid --max-memory \"{text}\" ({:#}): expected a size the address space can reserve: \
             the program reserves its limit rounded up to a power of two ({slot}), {most}{ulimit}",
            Bytes(max)
        ));
    }
    Ok(max)
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

/// Where `program` is found, as `execvp` finds it: a name with a `/` as it
/// is, any other in the directories of `PATH`. `None` when it is not found
/// (exec then reports it).
fn locate(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return Some(program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Why the loader would not preload the library into `file`, if it would
/// not: a statically linked executable has no loader, and the loader
/// ignores `LD_PRELOAD` in a program whose set-user-ID or set-group-ID bit
/// changes the caller's identity (secure execution). Either way the limit
/// would not apply, and nothing would say so. A script is judged by its
/// interpreter (`#!`), one level deep; a file that is neither (or cannot
/// be read) is left to exec.
fn unreachable_reason(file: &Path, depth: u32) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(file).ok()?;
    let mode = meta.permissions().mode();
    // SAFETY: geteuid and getegid cannot fail and have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (mode & 0o4000 != 0 && meta.uid() != euid) || (mode & 0o2000 != 0 && meta.gid() != egid) {
        return Some(format!(
            "{} is set-user-ID or set-group-ID to another identity: the loader ignores \
             LD_PRELOAD there",
            file.display()
        ));
    }
    let mut head = [0u8; 4096];
    let n = std::fs::File::open(file).ok()?.read(&mut head).ok()?;
    let head = &head[..n];
    if head.starts_with(b"#!") && depth == 0 {
        let line = head[2..].split(|&b| b == b'\n').next()?;
        let interpreter = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
        return unreachable_reason(Path::new(interpreter), depth + 1);
    }
    if is_static_elf(head)? {
        return Some(format!(
            "{} is statically linked (it has no program interpreter, as a static or \
             static-PIE executable): no loader runs to preload the library",
            file.display()
        ));
    }
    None
}

/// Whether an ELF file (its first bytes) is an executable without a
/// program interpreter (`PT_INTERP`); `None` if it is not a 64-bit
/// little-endian ELF file whose program headers lie in those bytes.
fn is_static_elf(head: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(head.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(head.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(head.get(o..o + 8)?.try_into().ok()?));
    let kind = u16_at(0x10)?;
    if kind != ET_EXEC && kind != ET_DYN {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut any_interp = false;
    for i in 0..phnum {
        any_interp |= u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP;
    }
    // A `-static-pie` executable is ET_DYN with no interpreter, as a
    // shared library is: either way no loader preloads the library (a
    // static-PIE program ran uncapped, Debian's /sbin/ldconfig among
    // them; a shared library run on its own fails regardless).
    Some(!any_interp)
}

/// Runs `frostheap run`: returns only on error.
pub fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let max = max_memory_arg(&args.max_memory)?;
    let min = match &args.min {
        Some(text) => {
            let min = limit_arg("--min", text)?;
            if min > max {
                return Err(format!(
                    "invalid --min \"{text}\": expected at most --max-memory ({:#})",
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
    if let Some(why) = locate(Path::new(program)).and_then(|f| unreachable_reason(&f, 0)) {
        return Err(format!(
            "cannot cap {}: {why}, so --max-memory would not apply",
            Path::new(program).display()
        )
        .into());
    }
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
    // As shells and env(1) say it: 127 for a command not found, 126 for
    // one found that could not be run (not executable, a bad `#!`
    // interpreter), so that neither reads as the program's own exit 2.
    crate::out::errln!(
        "frostheap: cannot run {}: {err}",
        Path::new(program).display()
    );
    std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    });
}
