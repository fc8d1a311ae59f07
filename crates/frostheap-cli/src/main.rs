//! The `frostheap` command: `tour` (the default), `info`, and the tools
//! built on the library. With frostheap-bench, the only crates that know clap.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command is itself a frostheap program: the main thread's data lives
/// in the main heap, which the tour's parallel phases freeze.
#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

/// `frostheap run`'s `FROSTHEAP_*` variables are its child's, which the
/// flags set or replace: the command itself starts as if none were set
/// (`frostheap::Global` reads them at its first allocation, before `main`
/// could look at the arguments). It was held to an inherited
/// `FROSTHEAP_MAX` (a `frostheap run` inside another with a small limit
/// aborted: "memory allocation of 4800 bytes failed") and stopped at
/// start-up over a bad one its own `--max-memory` replaces. `serve`,
/// `tour` and `info` keep the variables: `serve` runs under the limit
/// they set, and `info` shows it.
///
/// A constructor, so that it runs before the first allocation: glibc
/// passes `.init_array` functions the program's arguments; with a
/// priority, it runs before those without one, such as frostheap's own
/// (101 is the first GCC leaves to programs). The subcommand is the first
/// argument (the command has no options that go before it).
#[cfg(target_env = "gnu")]
#[used]
#[link_section = ".init_array.00101"]
static RUN_IGNORES_ENVIRONMENT: extern "C" fn(
    libc::c_int,
    *const *const libc::c_char,
    *const *const libc::c_char,
) = run_ignores_environment;

/// (glibc only: musl calls `.init_array` functions with no arguments.)
#[cfg(target_env = "gnu")]
extern "C" fn run_ignores_environment(
    argc: libc::c_int,
    argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    if argc < 2 || argv.is_null() {
        return;
    }
    // SAFETY: glibc calls .init_array functions with the program's argc
    // and argv, whose first argc entries are NUL-terminated strings.
    let first = unsafe { *argv.add(1) };
    // SAFETY: as above (checked for null all the same).
    if !first.is_null() && unsafe { std::ffi::CStr::from_ptr(first) }.to_bytes() == b"run" {
        frostheap::__private::ignore_environment();
    }
}

mod info;
mod out;
mod run;
mod serve;
mod tour;

#[derive(Parser)]
#[command(
    name = "frostheap",
    version,
    about = "A memory runtime for parallel programs: heaps with hard limits, frozen by the MMU during parallel phases."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// A guided demonstration of frostheap (the default).
    Tour,
    /// Page sizes, huge pages, protection keys and the limits in force.
    Info,
    /// Run any program (Python, C, C++) on a frostheap heap with a hard
    /// limit: `frostheap run --max-memory 1G -- python3 app.py`.
    Run(run::RunArgs),
    /// An HTTP/1.1 server that derives its capacity from a memory budget:
    /// `frostheap serve --max-memory 256M --listen 127.0.0.1:8080`.
    ///
    /// Durations (the timeouts, --shutdown-delay, --estimate-window) are
    /// at most 1 day.
    Serve(Box<serve::ServeArgs>),
}

fn main() -> ExitCode {
    if info::limit_too_small() {
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Tour) {
        Command::Tour => tour::run(),
        Command::Info => info::run(),
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out::errln!("frostheap: {e}");
            ExitCode::from(2)
        }
    }
}
