//! The workloads of the `par` benchmark (issue 15), shared by its three
//! binaries: `par` (the driver, with `frostheap::Global`; its children run
//! frostheap and rayon in that allocator), `par_rayon_system` and
//! `par_rayon_mimalloc`.
//!
//! Every case runs as a child: `<bin> <engine> <case> <runs>` builds the
//! input, runs the case once as warm-up and then `runs` times, timing only
//! the parallel call (inputs a call consumes or sorts are copied before the
//! clock starts), and prints `sample <ns>` per timed run and `check <N>`,
//! a checksum of the result that must agree across engines.

use std::collections::HashMap;
use std::time::Instant;

use frostheap_bench::child;

/// Items of every case but `alloc`.
pub const ITEMS: u64 = 10_000_000;
/// Items of the allocation-heavy case.
pub const ALLOC_ITEMS: u64 = 200_000;

/// The cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// CPU-bound map over a `Vec<u64>` moved into the call, collected.
    MapVec,
    /// CPU-bound map over a `Range<u64>`, collected.
    MapRange,
    /// CPU-bound map over a `&[u64]`, collected.
    MapSlice,
    /// `filter_map` of the CPU-bound function, then `sum`.
    FilterMapSum,
    /// `fold` into a 16-bucket histogram of the CPU-bound function, then
    /// `reduce` the histograms.
    FoldReduce,
    /// Parallel unstable sort of 10 M random `u64`.
    Sort,
    /// 200,000 items that each build Strings, a Vec and a HashMap (the
    /// `parmap` benchmark's case (b)), collected.
    Alloc,
}

impl Case {
    /// The name on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Case::MapVec => "map-vec",
            Case::MapRange => "map-range",
            Case::MapSlice => "map-slice",
            Case::FilterMapSum => "filter-map-sum",
            Case::FoldReduce => "fold-reduce",
            Case::Sort => "sort",
            Case::Alloc => "alloc",
        }
    }

    /// The case's heading.
    pub fn title(self) -> &'static str {
        match self {
            Case::MapVec => "map over Vec<u64> (moved), 10 M items, ~40 integer ops each",
            Case::MapRange => "map over 0..10 M, ~40 integer ops each",
            Case::MapSlice => "map over &[u64], 10 M items, ~40 integer ops each",
            Case::FilterMapSum => "filter_map + sum, 10 M items",
            Case::FoldReduce => "fold into a 16-bucket histogram + reduce, 10 M items",
            Case::Sort => "sort_unstable of 10 M random u64",
            Case::Alloc => "(b) alloc: 200,000 items, ~10-100 small allocations each, collected",
        }
    }

    /// Items per run.
    pub fn items(self) -> u64 {
        if self == Case::Alloc {
            ALLOC_ITEMS
        } else {
            ITEMS
        }
    }
}

/// About 40 integer operations (the `parmap` benchmark's case (a)).
#[inline]
pub fn cpu(x: u64) -> u64 {
    let mut h = x ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..8 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
        h = h.rotate_left(7).wrapping_add(0x632b_e59b_d9b4_e019);
    }
    h
}

/// `filter_map`'s function: a third of the items pass.
#[inline]
pub fn keep(x: u64) -> Option<u64> {
    let h = cpu(x);
    h.is_multiple_of(3).then_some(h >> 40)
}

/// A 16-bucket histogram.
pub type Histogram = [u64; 16];

/// `fold`'s step.
#[inline]
pub fn bucket(mut h: Histogram, x: u64) -> Histogram {
    h[(cpu(x) & 15) as usize] += 1;
    h
}

/// `reduce`'s step.
#[inline]
pub fn merge(mut a: Histogram, b: Histogram) -> Histogram {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// Builds `5 + x % 46` Strings in a Vec, a HashMap over them and one
/// joined String — between about 10 and 100 allocations — and returns a
/// small number.
pub fn alloc_heavy(x: u64) -> u64 {
    let n = 5 + (x % 46) as usize;
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

/// A checksum of results.
pub fn checksum(v: &[u64]) -> u64 {
    v.iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b))
}

/// One engine's implementation of every case.
pub trait Engine {
    /// A copy of `v` that the call's tasks may change in place (an engine
    /// whose tasks may write only some memory puts it there).
    fn writable_copy(&self, v: &[u64]) -> Vec<u64> {
        v.to_vec()
    }
    /// `input` moved in, `cpu` mapped, collected.
    fn map_vec(&self, input: Vec<u64>) -> Vec<u64>;
    /// `cpu` over `0..n`, collected.
    fn map_range(&self, n: u64) -> Vec<u64>;
    /// `cpu` over the slice, collected.
    fn map_slice(&self, input: &[u64]) -> Vec<u64>;
    /// `keep` then sum.
    fn filter_map_sum(&self, input: &[u64]) -> u64;
    /// `bucket` folded, `merge` reduced.
    fn fold_reduce(&self, input: &[u64]) -> Histogram;
    /// Sorted in place.
    fn sort(&self, data: &mut [u64]);
    /// `alloc_heavy` over the slice, collected.
    fn alloc(&self, input: &[u64]) -> Vec<u64>;
}

/// Runs `runs` timed runs (after one warm-up) of `case` on `engine` and
/// prints them in the protocol of `frostheap_bench::child`.
pub fn child_main(engine: &dyn Engine, case: Case, runs: usize) {
    let n = case.items();
    let input: Vec<u64> = (0..n).collect();
    let random: Vec<u64> = if case == Case::Sort {
        (0..n).map(cpu).collect()
    } else {
        Vec::new()
    };
    let mut check = 0;
    for run in 0..=runs {
        let (ns, c) = match case {
            Case::MapVec => {
                let owned = input.clone();
                timed(|| checksum(&engine.map_vec(owned)))
            }
            Case::MapRange => timed(|| checksum(&engine.map_range(n))),
            Case::MapSlice => timed(|| checksum(&engine.map_slice(&input))),
            Case::FilterMapSum => timed(|| engine.filter_map_sum(&input)),
            Case::FoldReduce => timed(|| checksum(&engine.fold_reduce(&input))),
            Case::Sort => {
                let mut data = engine.writable_copy(&random);
                let (ns, ()) = timed(|| engine.sort(&mut data));
                assert!(data.windows(2).all(|w| w[0] <= w[1]), "sorted");
                (ns, checksum(&data[..1000]) ^ data[data.len() / 2])
            }
            Case::Alloc => timed(|| checksum(&engine.alloc(&input))),
        };
        check = c;
        if run > 0 {
            child::report_sample(ns);
        }
    }
    child::report("check", check);
}

/// Nanoseconds `f` took (the result is dropped after the clock stops).
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed().as_nanos() as f64, out)
}

/// rayon's implementation of every case.
pub struct Rayon;

impl Engine for Rayon {
    fn map_vec(&self, input: Vec<u64>) -> Vec<u64> {
        use rayon::prelude::*;
        input.into_par_iter().map(cpu).collect()
    }
    fn map_range(&self, n: u64) -> Vec<u64> {
        use rayon::prelude::*;
        (0..n).into_par_iter().map(cpu).collect()
    }
    fn map_slice(&self, input: &[u64]) -> Vec<u64> {
        use rayon::prelude::*;
        input.par_iter().map(|x| cpu(*x)).collect()
    }
    fn filter_map_sum(&self, input: &[u64]) -> u64 {
        use rayon::prelude::*;
        input.par_iter().filter_map(|x| keep(*x)).sum()
    }
    fn fold_reduce(&self, input: &[u64]) -> Histogram {
        use rayon::prelude::*;
        input
            .par_iter()
            .fold(|| [0; 16], |h, x| bucket(h, *x))
            .reduce(|| [0; 16], merge)
    }
    fn sort(&self, data: &mut [u64]) {
        use rayon::prelude::*;
        data.par_sort_unstable();
    }
    fn alloc(&self, input: &[u64]) -> Vec<u64> {
        use rayon::prelude::*;
        input.par_iter().map(|x| alloc_heavy(*x)).collect()
    }
}

/// The command line of a child: `<engine> <case> <runs>`.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ChildArgs {
    /// The case.
    #[arg(value_enum)]
    pub case: Case,
    /// Timed runs after the warm-up run.
    #[arg(default_value_t = 3, value_parser = frostheap_bench::cli::count)]
    pub runs: usize,
}
