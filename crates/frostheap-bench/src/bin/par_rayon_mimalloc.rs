//! A `par` baseline: rayon with mimalloc as the global allocator. Run by `par` as a
//! child process (`par_rayon_mimalloc rayon <case> <runs>`); see
//! `src/bin/par/work.rs`.

// The driver's report helpers (case names, titles) are not used here.
#[allow(dead_code)]
#[path = "par/work.rs"]
mod work;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "A `par` baseline; run by `par`, not by hand.")]
struct Options {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run one case with rayon.
    Rayon(work::ChildArgs),
}

fn main() {
    let Mode::Rayon(a) = Options::parse().mode;
    work::child_main(&work::Rayon, a.case, a.runs);
}
