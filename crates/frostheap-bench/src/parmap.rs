//! The workloads of the `parmap` benchmark, shared by its three binaries
//! (`parmap`, the driver with `frostheap::Global` installed, and the rayon
//! baselines `parmap_rayon_system` / `parmap_rayon_mimalloc`).
//!
//! Every binary can run as a *child*: `<bin> child <case> <timed runs>`
//! ([`ChildArgs`]) builds the input, runs the case once as warm-up and then
//! `timed runs` times, and prints, in the protocol of [`crate::child`], one
//! `sample <ns>` line per timed run and a `check <N>` line (a checksum of
//! the results, so the driver can verify every engine computed the same
//! thing). The driver reads the child's peak RSS from `wait4`. Each
//! variant runs in its own process because a binary has one global
//! allocator and one peak RSS.

use std::collections::HashMap;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use crate::child;

/// 1 MiB.
pub const MIB: usize = 1 << 20;
/// (a) items of the CPU-bound map.
pub const CPU_ITEMS: u64 = 10_000_000;
/// (b) items of the allocation-heavy map.
pub const ALLOC_ITEMS: u64 = 200_000;
/// (c) items of the memory-heavy map, each needing a 1 MiB intermediate.
pub const MEMORY_ITEMS: u64 = 10_000;
/// (c) the memory budget given to frostheap.
pub const MEMORY_BUDGET: usize = 64 * MIB;

/// The three cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Case {
    /// (a) a few dozen integer operations per item.
    Cpu,
    /// (b) each item builds Strings, a Vec and a HashMap (10–100 small
    /// allocations) and returns a small result.
    Alloc,
    /// (c) each item fills and reads a 1 MiB buffer.
    Memory,
}

impl Case {
    /// Every case, in report order.
    pub const ALL: [Case; 3] = [Case::Cpu, Case::Alloc, Case::Memory];

    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Case::Cpu => "cpu",
            Case::Alloc => "alloc",
            Case::Memory => "memory",
        }
    }

    /// The heading of the case's table.
    pub fn title(self) -> &'static str {
        match self {
            Case::Cpu => "(a) cpu: 10 M items, ~40 integer ops each",
            Case::Alloc => "(b) alloc: 200,000 items, ~10-100 small allocations each",
            Case::Memory => {
                "(c) memory: 10,000 items, 1 MiB intermediate each (frostheap budget 64 MiB)"
            }
        }
    }

    /// Items per run.
    pub fn items(self) -> u64 {
        match self {
            Case::Cpu => CPU_ITEMS,
            Case::Alloc => ALLOC_ITEMS,
            Case::Memory => MEMORY_ITEMS,
        }
    }
}

/// (a) About 40 integer operations.
#[inline]
pub fn cpu(x: &u64) -> u64 {
    let mut h = *x ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..8 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
        h = h.rotate_left(7).wrapping_add(0x632b_e59b_d9b4_e019);
    }
    h
}

/// (b) Builds `5 + x % 46` Strings in a Vec, a HashMap over them and one
/// joined String — between about 10 and 100 allocations — and returns a
/// small number.
pub fn alloc_heavy(x: &u64) -> u64 {
    let n = 5 + (*x % 46) as usize;
    let mut words: Vec<String> = Vec::new();
    for k in 0..n {
        words.push(format!("w{}-{}", x, k * 7));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &words {
        *counts.entry(w.as_str()).or_default() += w.len();
    }
    let joined = words.concat();
    let longest = counts.values().copied().max().unwrap_or(0);
    (joined.len() + counts.len() * 3 + longest) as u64
}

/// (c) Fills a 1 MiB intermediate from the item and reads it back.
pub fn memory_heavy(x: &u64) -> u64 {
    let mut buf: Vec<u64> = Vec::with_capacity(MIB / 8);
    let mut h = *x;
    for _ in 0..MIB / 8 {
        h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        buf.push(h);
    }
    buf.iter().step_by(97).fold(0u64, |a, &b| a ^ b)
}

/// How an engine maps a case's function over its input.
pub type MapFn<'a> = &'a dyn Fn(&[u64], fn(&u64) -> u64) -> Vec<u64>;

/// A child's command line after its mode word: `<case> <timed runs>`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ChildArgs {
    /// The case to run.
    #[arg(value_enum)]
    pub case: Case,
    /// Timed runs after the warm-up run.
    #[arg(default_value_t = 3, value_parser = crate::cli::count)]
    pub runs: usize,
}

/// The command line of a rayon baseline binary: `child <case> <runs>`.
#[derive(Parser)]
#[command(about = "A parmap baseline; run by `parmap`, not by hand.")]
enum BaselineCommand {
    /// Run one case as a child of `parmap`.
    Child(ChildArgs),
}

/// `main` of a baseline binary: parses `child <case> <runs>` and runs the
/// case with `map`.
pub fn baseline_main(map: MapFn<'_>) {
    let BaselineCommand::Child(args) = BaselineCommand::parse();
    child_main(&args, map);
}

/// Runs one child: builds the input, one warm-up run, then `args.runs`
/// timed runs of `map`, printed in the protocol of [`crate::child`].
pub fn child_main(args: &ChildArgs, map: MapFn<'_>) {
    let case = args.case;
    let input: Vec<u64> = (0..case.items()).collect();
    let f: fn(&u64) -> u64 = match case {
        Case::Cpu => cpu,
        Case::Alloc => alloc_heavy,
        Case::Memory => memory_heavy,
    };
    let mut check = 0u64;
    for run in 0..=args.runs {
        let start = Instant::now();
        let out = map(&input, f);
        let ns = start.elapsed().as_nanos();
        assert_eq!(out.len(), input.len());
        check = out
            .iter()
            .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b));
        if run > 0 {
            child::report_sample(ns as f64);
        }
    }
    child::report("check", check);
    child::report_peak_rss();
}
