//! The `frostheap` command: `tour` (the default), `info`, and the tools
//! built on the library. With frostheap-bench, the only crates that know clap.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command is itself a frostheap program: the main thread's data lives
/// in the main heap, which the tour's parallel phases freeze.
#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

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
