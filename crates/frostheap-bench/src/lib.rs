//! The library every frostheap benchmark binary is built on: frostheap and
//! its baselines run side by side in one run, interleaved, and reported as
//! medians with their spread and as per-round ratios, in markdown tables
//! the docs can paste.
//!
//! | module | what it gives |
//! |---|---|
//! | [`interleave`] | [`Plan`]: run the variants of a case in rotating rounds, warm-up dropped; [`Rounds`] → [`Samples`]; [`time_ns`](interleave::time_ns) |
//! | [`stats`] | the one percentile definition, [`Summary`] (median, p10–p90), [`ratio`](stats::ratio) (per-round ratios) |
//! | [`child`] | [`child::run`]: a variant in its own process, with its wall time and CPU time (`wait4`); the `sample <value>` protocol, and the child's own peak RSS reported in it |
//! | [`table`] | [`Table`] (markdown) and the cell formats: [`table::time`], [`table::ratio`], [`table::number`] |
//! | [`plot`] | [`plot::LogLogChart`]: a log–log line chart as SVG (plotters) |
//! | [`machine`] | the report's opening line: CPUs, model, load before and after |
//! | [`cli`] | value parsers for `clap` (`size`, `count`, `positive`) and writing a report file |
//! | [`allocators`] | the allocators under test behind one trait, and the allocation workloads |
//! | [`regions`] | a frostheap heap and a raw `mmap` region committed to a size, on huge or 4 KiB pages (freeze and violation costs) |
//! | [`parmap`] | the parallel-map workloads and the child protocol of `parmap` and its rayon baselines |
//! | [`threads`] | the multi-threaded allocation workloads of `threads` (per-thread loops, larson, producer/consumer, thread churn) |
//!
//! The binaries: `frostheap-bench` (`src/main.rs`, the allocators),
//! `freeze` (freezing guarded heaps), `rollback` (a violation's cost),
//! `bystander` (a store into a frozen heap on `mprotect`, performed against
//! stepped), `parmap` (against rayon), `threads` (every thread's heap) and
//! `preload` (unmodified programs under `LD_PRELOAD`), among others in
//! `src/bin/`.
//!
//! # How to add a benchmark
//!
//! A benchmark is a binary in `src/bin/` that measures **cases** (one
//! input: "pair 64 B", "10 M items"), each under several **variants**
//! (frostheap and its baselines: glibc, mimalloc, jemalloc, bumpalo,
//! rayon), and prints for each case a table of medians with p10–p90 and of
//! frostheap's ratio to each baseline. No timing is ever asserted: a
//! benchmark is a report, not a test.
//!
//! 1. **Arguments** with `clap`'s derive; use [`cli::count`] for rounds,
//!    [`cli::size`] for sizes, and give every figure a default that
//!    measures something meaningful, so one command reproduces the table.
//!    Offer a way to run briefly (fewer rounds, a smaller input) for
//!    checking the benchmark works on a busy machine.
//! 2. **Variants** are a slice of values of your choosing (an enum, or
//!    closures). Where a variant changes something a process has only one
//!    of — the global allocator, an `LD_PRELOAD`, the peak RSS you report —
//!    run it in its own process with [`child::run`]: the child binary
//!    prints `sample <ns>` per timed run ([`child::report_sample`]) and,
//!    last, its peak RSS ([`child::report_peak_rss`]); the parent reads
//!    [`child::Outcome::samples`] and [`child::Outcome::reported_peak_rss`]
//!    (not `peak_rss`, `wait4`'s figure, which on Linux starts at the
//!    parent's own resident set). See `src/bin/parmap.rs`.
//! 3. **Interleave**: `Plan::rounds(warmup, rounds).run(&variants, |v| …)`
//!    calls the closure once per variant per round, rotating which variant
//!    goes first, and keeps what it returns. Return the measured figure
//!    (ns for the whole round, or per operation), or a child's
//!    [`child::Outcome`]. Use [`Plan::budget`] when the cost of a case
//!    spans orders of magnitude.
//! 4. **Summarise**: `rounds.samples(|x| *x)` gives [`Samples`];
//!    `samples.summary(v)` a variant's median and p10–p90, and
//!    `samples.ratio(frostheap, baseline)` the per-round ratio (below 1:
//!    frostheap takes less time). Never divide two medians: the ratio of
//!    round `i` compares two runs made under the same load.
//! 5. **Report**: a [`Table`] per case, with [`table::time`] /
//!    [`table::number`] cells for the variants and [`table::ratio`] cells
//!    for the ratios; open the report with [`Machine::describe`] and say
//!    how many rounds it ran. Print it, and write it to a file when asked
//!    (`--out`, [`cli::write_or_exit`]).
//!
//! A complete case, from `src/main.rs`:
//!
//! ```no_run
//! use frostheap_bench::{table, Plan, Table};
//!
//! let variants = ["system", "frostheap"];
//! let ops = 1_000_000;
//! let samples = Plan::rounds(3, 21)
//!     .run(&variants, |v| {
//!         let start = std::time::Instant::now();
//!         // … `ops` operations of variant `v` …
//!         start.elapsed().as_nanos() as f64 / ops as f64
//!     })
//!     .samples(|ns| *ns);
//! let mut t = Table::new(["case", "system", "frostheap", "frostheap / system"], 1);
//! t.row([
//!     "pair 64 B".to_string(),
//!     table::number(&samples.summary(0), 2),
//!     table::number(&samples.summary(1), 2),
//!     table::ratio(&samples.ratio(1, 0)),
//! ]);
//! print!("{t}");
//! ```

#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod allocators;
pub mod child;
pub mod cli;
pub mod interleave;
pub mod machine;
pub mod parmap;
pub mod plot;
pub mod regions;
pub mod stats;
pub mod table;
pub mod threads;

pub use interleave::{Plan, Rounds, Samples};
pub use machine::Machine;
pub use stats::Summary;
pub use table::Table;
