//! `freeze`: what freezing guarded heaps costs, side by side in one run.
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin freeze -- [--out-dir DIR] [--max SIZE] [--budget-ms N]
//! cargo run --release -p frostheap-bench --bin freeze -- --max 64M --budget-ms 20   # brief
//! ```
//!
//! **What it measures.**
//!
//! 1. Freeze + thaw against committed size (16 MiB … 4 GiB) for each
//!    backend: `pkey` (a PKRU write pair; size-independent, but measured
//!    in the rounds of every size, so the report can give frostheap's
//!    `mprotect` over it as a per-round ratio in the same run), frostheap's
//!    `mprotect` on transparent huge pages (a `frostheap::Heap` built with
//!    `HugePages::On`) and on 4 KiB pages (`HugePages::Off`). Each
//!    frostheap figure sits beside the raw system call on the same amount
//!    of memory of the same page type: `mprotect(PROT_READ)` then
//!    `mprotect(PROT_READ|PROT_WRITE)` over the committed prefix of a plain
//!    `mmap` reservation (with `MADV_HUGEPAGE` for the huge-page column).
//!    The heap is frozen through the runtime's own path (mark, one
//!    `mprotect` of the committed prefix; thaw mirrored) via the
//!    `#[doc(hidden)]` hook `Heap::bench_freeze`. Memory is committed by
//!    allocating and touching it; the share backed by huge pages is read
//!    from `/proc/self/smaps` and shown.
//! 2. An empty phase (`rt.for_each(0..workers, |_| ())`) with no guarded
//!    heap, and with one guarded heap of 16 MiB and 1 GiB committed; each
//!    guarded runtime alternates with the unguarded one.
//! 3. Violation to error: a task takes a timestamp just before it writes a
//!    guarded heap; main reads the clock as soon as `map` has returned the
//!    `Err(Error::Violation)`. The cancel policy parks one thread per
//!    violation, so `max_parked` is raised above the count.
//! 4. The main heap (`frostheap::Global`, this binary's allocator) at its
//!    first `mprotect` guard, in a child process per size (16, 64,
//!    256 MiB) and `FROSTHEAP_HUGE_PAGES` value, three rounds each: the
//!    child writes that much in `Vec`s, times building a two-worker runtime
//!    that guards the main heap with `mprotect` (under `auto` that is the
//!    switch to huge pages: the advice and `MADV_COLLAPSE` of everything
//!    committed), then samples freeze + thaw of the main heap as in 1.
//!    `on` is what `auto` was before the switch existed (huge pages from
//!    the first byte); `off` is 4 KiB pages throughout.
//!
//! **How.** frostheap and the raw call alternate, one sample each, so
//! machine noise hits both alike (`frostheap_bench::Plan`); samples are
//! taken until a time budget per cell is spent (at least 15, at most 401).
//! The report shows the median, the p10–p90 spread, and the per-round
//! ratio frostheap / raw (median and p10–p90 of the ratios). Output: a
//! markdown table on stdout and in `DIR/freeze.md`, and a log–log plot of
//! cost against size in `DIR/freeze.svg` (`frostheap_bench::plot`;
//! default `DIR = target/frostheap-bench`).
//!
//! Targets from the issue: pkey ≤ 100 ns at every size; mprotect on huge
//! pages within 1.2× of the raw call; violation to error ≤ 50 µs. No
//! timing is asserted: this is a report, not a test.

use std::alloc::Layout;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use frostheap::{Error, OnViolation, Protect, Runtime};
use frostheap_bench::child::{self, report, report_sample};
use frostheap_bench::interleave::time_ns;
use frostheap_bench::plot::{Line, LogLogChart, Mark};
use frostheap_bench::regions::{huge_backed, GrownHeap, RawRegion};
use frostheap_bench::table::{human_bytes, human_ns};
use frostheap_bench::{cli, table, Machine, Plan, Summary, Table};

// The main heap is measured in child processes of this binary (section 4).
#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// What freezing guarded heaps costs, against the raw system call.
#[derive(Parser)]
#[command(name = "freeze")]
struct Options {
    /// Where freeze.md and freeze.svg go.
    #[arg(long, default_value = "target/frostheap-bench")]
    out_dir: PathBuf,
    /// Largest committed size measured (sizes are 16M 64M 256M 1G 4G).
    #[arg(long, default_value = "4G", value_parser = cli::size)]
    max: usize,
    /// Milliseconds spent sampling each cell.
    #[arg(long = "budget-ms", default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..))]
    budget_ms: u64,
    /// Internal: run as the child of section 4 with this much committed.
    #[arg(long, hide = true, value_parser = cli::size)]
    main_heap_child: Option<usize>,
}

impl Options {
    /// Samples alternate until the budget is spent: at least 15, at most
    /// 401 per variant, after one warm-up round.
    fn plan(&self) -> Plan {
        Plan::budget(1, Duration::from_millis(self.budget_ms), 15, 401)
    }
}

/// Samples `f` alone under the plan of `o`, in ns.
fn sample(o: &Options, f: impl Fn() -> f64) -> Summary {
    o.plan().run(&[()], |_| f()).samples(|ns| *ns).summary(0)
}

// ---------------------------------------------------------------------------
// Rows.

struct SizeRow {
    target: usize,
    thp: Option<PairRow>,
    small: Option<PairRow>,
}

impl SizeRow {
    /// The PKRU pair measured beside the huge-page cells of this size.
    fn pkey(&self) -> Option<&Summary> {
        self.thp.as_ref().and_then(|p| p.pkey.as_ref())
    }
}

struct PairRow {
    committed: usize,
    huge_share: f64,
    frostheap: Summary,
    raw: Summary,
    /// frostheap / raw, per round.
    ratio: Summary,
    /// The PKRU pair, in the same rounds (`None` without protection keys).
    pkey: Option<Summary>,
    /// frostheap's mprotect freeze + thaw over the PKRU pair, per round.
    mprotect_over_pkey: Option<Summary>,
}

struct PhaseRow {
    label: String,
    summary: Summary,
    /// Against the runtime without a guarded heap, per round (`None` for
    /// that runtime itself).
    ratio: Option<Summary>,
}

/// The pkey backend's freeze + thaw, a PKRU write pair, as a sampler
/// returning ns per pair; `None` on a machine without protection keys.
fn pkey_pair() -> Option<impl Fn() -> f64> {
    let key = frostheap::__private::pkey().ok()?;
    let wd = 1u32 << (2 * key + 1);
    // SAFETY: pkey() succeeded, so RDPKRU and WRPKRU exist; only the
    // write-disable bit of frostheap's own key changes, and nothing here
    // writes a heap that carries it.
    let base = unsafe { frostheap::__private::os::rdpkru() };
    // Many pairs per sample: one pair is below the clock's resolution.
    const PAIRS: u32 = 1000;
    Some(move || {
        time_ns(|| {
            for _ in 0..PAIRS {
                // SAFETY: as above.
                unsafe {
                    frostheap::__private::os::wrpkru(base | wd);
                    frostheap::__private::os::wrpkru(base);
                }
            }
        }) / PAIRS as f64
    })
}

/// Every size, on huge pages and on 4 KiB pages: frostheap's freeze +
/// thaw, the raw `mprotect` pair and (where the CPU has protection keys)
/// the PKRU pair, interleaved round by round.
fn measure_sizes(o: &Options, sizes: &[usize]) -> Vec<SizeRow> {
    let pkey = pkey_pair();
    let mut rows: Vec<SizeRow> = sizes
        .iter()
        .map(|&target| SizeRow {
            target,
            thp: None,
            small: None,
        })
        .collect();
    for huge in [true, false] {
        let what = if huge { "huge pages" } else { "4 KiB pages" };
        eprintln!(
            "freeze: committing up to {} on {what} …",
            human_bytes(o.max as u64)
        );
        let mut heap = GrownHeap::new(o.max, huge);
        let mut raw = RawRegion::new(o.max + 256 * MIB, huge);
        for row in rows.iter_mut() {
            let t = Instant::now();
            heap.grow_to(row.target);
            let committed = heap.committed();
            raw.grow_to(committed);
            let grow = t.elapsed();
            let (frost, plain) = (|| heap.freeze_thaw(), || raw.freeze_thaw());
            let mut variants: Vec<&dyn Fn() -> f64> = vec![&frost, &plain];
            if let Some(p) = &pkey {
                variants.push(p);
            }
            let s = o.plan().run(&variants, |f| f()).samples(|ns| *ns);
            let share = huge_backed(heap.heap.base() as usize, committed) as f64 / committed as f64;
            let pair = PairRow {
                committed,
                huge_share: share,
                frostheap: s.summary(0),
                raw: s.summary(1),
                ratio: s.ratio(0, 1),
                pkey: pkey.is_some().then(|| s.summary(2)),
                mprotect_over_pkey: pkey.is_some().then(|| s.ratio(0, 2)),
            };
            eprintln!(
                "  {:>7} committed {} ({} blocks, {:.0}% huge; grown in {:.1?}): frostheap {} raw {}",
                human_bytes(row.target as u64),
                committed,
                heap.blocks,
                share * 100.0,
                grow,
                human_ns(pair.frostheap.median),
                human_ns(pair.raw.median)
            );
            if huge {
                row.thp = Some(pair);
            } else {
                row.small = Some(pair);
            }
        }
    }
    rows
}

fn empty_phase(rt: &Runtime) -> f64 {
    let workers = rt.workers();
    time_ns(|| {
        rt.for_each(0..workers, |_| ()).expect("an empty phase");
    })
}

fn measure_phases(o: &Options) -> Vec<PhaseRow> {
    let workers = 2;
    let unguarded = Runtime::builder()
        .workers(workers)
        .guard_main_heap(false)
        .protect(Protect::Off)
        .build()
        .expect("runtime");
    let mut out = vec![PhaseRow {
        label: format!("{workers} workers, no guarded heap"),
        summary: sample(o, || empty_phase(&unguarded)),
        ratio: None,
    }];
    for (size, huge) in [
        (16 * MIB, true),
        (GIB, true),
        (16 * MIB, false),
        (GIB, false),
    ] {
        if size > o.max {
            continue;
        }
        let mut heap = GrownHeap::new(size, huge);
        heap.grow_to(size);
        let rt = Runtime::builder()
            .workers(workers)
            .guard(&heap.heap)
            .guard_main_heap(false)
            .protect(Protect::Mprotect)
            .build()
            .expect("runtime");
        let s = o
            .plan()
            .run(&[&rt, &unguarded], |rt| empty_phase(rt))
            .samples(|ns| *ns);
        out.push(PhaseRow {
            label: format!(
                "{workers} workers, guarded heap of {} on {} (mprotect)",
                human_bytes(heap.committed() as u64),
                if huge { "huge pages" } else { "4 KiB pages" }
            ),
            summary: s.summary(0),
            ratio: Some(s.ratio(0, 1)),
        });
    }
    out
}

fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Violation to error: (first violation, the rest), in ns. Under audit
/// the store lands and `map` returns `Ok`: the same path minus parking and
/// the replacement worker.
fn measure_violations(n: usize, policy: OnViolation) -> (f64, Summary) {
    let mut heap = GrownHeap::new(64 * MIB, true);
    heap.grow_to(16 * MIB);
    let target = {
        let p = heap
            .heap
            .try_alloc(Layout::from_size_align(4096, 64).expect("layout"))
            .expect("a target block");
        p.as_ptr() as usize
    };
    let rt = Runtime::builder()
        .workers(2)
        .guard(&heap.heap)
        .guard_main_heap(false)
        .protect(Protect::Mprotect)
        .on_violation(policy)
        .max_parked(n + 16)
        .build()
        .expect("runtime");
    let stamp = AtomicU64::new(0);
    now_ns();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let out = rt.map(0..1usize, |_| {
            stamp.store(now_ns(), Ordering::SeqCst);
            // SAFETY: target is a live block of the guarded heap; the store
            // is the violation being timed (the task is cancelled).
            unsafe { (target as *mut u64).write_volatile(1) };
        });
        let end = now_ns();
        match (policy, out) {
            (OnViolation::Cancel, Err(Error::Violation(_))) => {}
            (OnViolation::Audit, Ok(_)) => {}
            (_, other) => panic!("{policy:?}: unexpected {:?}", other.map(|_| ())),
        }
        samples.push((end - stamp.load(Ordering::SeqCst)) as f64);
    }
    if policy == OnViolation::Audit {
        assert_eq!(rt.audit_log().len(), n, "every audited store is recorded");
    }
    (samples[0], Summary::of(&samples[1..]))
}

/// Starting one worker (what the cancel policy does after each
/// violation), measured as building a one-worker runtime.
fn measure_worker_start(o: &Options) -> Summary {
    sample(o, || {
        let t = Instant::now();
        let rt = Runtime::builder()
            .workers(1)
            .guard_main_heap(false)
            .protect(Protect::Off)
            .build()
            .expect("runtime");
        let ns = t.elapsed().as_nanos() as f64;
        drop(rt);
        ns
    })
}

/// Section 4, in the child: grows the main heap to `size` committed, times
/// its first guard with `mprotect` (building a runtime), and samples its
/// freeze + thaw. Prints `committed`, `huge_before`, `guard_ns`,
/// `huge_after`, `collapse_errno` and `sample` lines.
fn main_heap_child(o: &Options, size: usize) {
    let heap = frostheap::main_heap().expect("Global is installed");
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    while heap.stats().committed < size {
        let want = (size - heap.stats().committed).clamp(MIB, 64 * MIB);
        // Written (not zeroed on fresh pages): resident, as in a program.
        blocks.push(vec![1u8; want]);
    }
    let base = heap.base() as usize;
    let committed = heap.stats().committed;
    report("committed", committed);
    report("huge_before", huge_backed(base, committed));
    let t = Instant::now();
    let rt = Runtime::builder()
        .workers(2)
        .protect(Protect::Mprotect)
        .build()
        .expect("runtime");
    report("guard_ns", t.elapsed().as_nanos());
    report("huge_after", huge_backed(base, heap.stats().committed));
    report("collapse_errno", heap.stats().collapse_errno);
    // Nothing writes the main heap between the two calls: the workers are
    // idle, and the timed closure allocates nothing.
    let rounds = o.plan().run(&[()], |_| {
        time_ns(|| {
            heap.bench_freeze(true).expect("freeze");
            heap.bench_freeze(false).expect("thaw");
        })
    });
    for ns in rounds.of(0) {
        report_sample(*ns);
    }
    drop(rt);
    std::hint::black_box(&blocks);
}

struct MainHeapRow {
    size: usize,
    mode: &'static str,
    committed: usize,
    huge_before: f64,
    huge_after: f64,
    collapse_errno: String,
    guard: Summary,
    freeze: Summary,
}

/// Section 4: a child per size, `FROSTHEAP_HUGE_PAGES` value and round.
fn measure_main_heap(o: &Options, sizes: &[usize]) -> Vec<MainHeapRow> {
    const MODES: [&str; 3] = ["on", "auto", "off"];
    let exe = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for &size in sizes.iter().filter(|&&s| s <= 256 * MIB) {
        let rounds = Plan::rounds(0, 3).run(&MODES, |mode| {
            child::run(
                std::process::Command::new(&exe)
                    .arg("--main-heap-child")
                    .arg(size.to_string())
                    .arg("--budget-ms")
                    .arg(o.budget_ms.to_string())
                    .env("FROSTHEAP_HUGE_PAGES", mode),
            )
            .unwrap_or_else(|e| {
                eprintln!("freeze: {e}");
                std::process::exit(1);
            })
        });
        for (i, &mode) in MODES.iter().enumerate() {
            let outs = rounds.of(i);
            let num = |out: &child::Outcome, key: &str| -> f64 {
                out.value(key)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("the child printed no {key}:\n{}", out.stdout))
            };
            let last = outs.last().expect("three rounds");
            let committed = num(last, "committed") as usize;
            let mut errnos: Vec<String> = outs
                .iter()
                .map(|out| out.value("collapse_errno").unwrap_or("?").to_string())
                .collect();
            errnos.dedup();
            let freeze: Vec<f64> = outs.iter().flat_map(|out| out.samples()).collect();
            let summary =
                |key: &str| Summary::of(&outs.iter().map(|out| num(out, key)).collect::<Vec<_>>());
            let row = MainHeapRow {
                size,
                mode,
                committed,
                huge_before: summary("huge_before").median / committed as f64,
                huge_after: summary("huge_after").median / committed as f64,
                collapse_errno: errnos.join(", "),
                guard: summary("guard_ns"),
                freeze: Summary::of(&freeze),
            };
            eprintln!(
                "  main heap {} FROSTHEAP_HUGE_PAGES={mode}: first guard {}, freeze + thaw {} ({:.0}% huge after)",
                human_bytes(size as u64),
                human_ns(row.guard.median),
                human_ns(row.freeze.median),
                row.huge_after * 100.0
            );
            rows.push(row);
        }
    }
    rows
}

// ---------------------------------------------------------------------------
// Output.

fn main_heap_table(rows: &[MainHeapRow]) -> Table {
    let mut t = Table::new(
        [
            "main heap",
            "FROSTHEAP_HUGE_PAGES",
            "huge-backed before the guard",
            "first mprotect guard (building a 2-worker runtime)",
            "MADV_COLLAPSE errno",
            "huge-backed after",
            "freeze + thaw after",
        ],
        2,
    );
    for r in rows {
        t.row([
            format!("{} ({} B)", human_bytes(r.size as u64), r.committed),
            r.mode.to_string(),
            format!("{:.0}%", r.huge_before * 100.0),
            table::time(&r.guard),
            r.collapse_errno.clone(),
            format!("{:.0}%", r.huge_after * 100.0),
            table::time(&r.freeze),
        ]);
    }
    t
}

fn size_table(rows: &[SizeRow], pkey_note: &str) -> Table {
    let mut t = Table::new(
        [
            "committed",
            "pkey (PKRU pair)",
            "frostheap mprotect, huge pages",
            "raw mprotect, huge pages",
            "ratio",
            "huge-backed",
            "frostheap mprotect, 4 KiB",
            "raw mprotect, 4 KiB",
            "ratio",
        ],
        1,
    );
    for r in rows {
        let pkey = match r.pkey() {
            Some(s) => table::time(s),
            None if pkey_note.is_empty() => "–".to_string(),
            None => "unavailable on this machine".to_string(),
        };
        let pair = |p: &Option<PairRow>| match p {
            Some(p) => [
                table::time(&p.frostheap),
                table::time(&p.raw),
                table::ratio(&p.ratio),
                format!("{:.0}%", p.huge_share * 100.0),
            ],
            None => ["–".into(), "–".into(), "–".into(), "–".into()],
        };
        let [ft, rt, xt, share] = pair(&r.thp);
        let [fs, rs, xs, _] = pair(&r.small);
        let committed = r.thp.as_ref().map(|p| p.committed).unwrap_or(r.target);
        t.row([
            format!("{} ({committed} B)", human_bytes(r.target as u64)),
            pkey,
            ft,
            rt,
            xt,
            share,
            fs,
            rs,
            xs,
        ]);
    }
    t
}

fn phase_table(phases: &[PhaseRow]) -> Table {
    let mut t = Table::new(
        [
            "runtime",
            "median (p10–p90)",
            "vs. no guarded heap (per round)",
        ],
        1,
    );
    for p in phases {
        let ratio = p.ratio.as_ref().map_or("1.00×".to_string(), table::ratio);
        t.row([p.label.clone(), table::time(&p.summary), ratio]);
    }
    t
}

/// One line per page type and size, `pkey vs mprotect (huge pages): 16
/// MiB: mprotect/pkey = 3.92x (p10–p90 3.50–4.21)` (CI's pkey guest reads
/// these lines: keep their wording).
fn pkey_lines(rows: &[SizeRow], pkey_note: &str) -> String {
    let mut out = String::new();
    for (what, huge) in [("huge pages", true), ("4 KiB pages", false)] {
        for r in rows {
            let pair = if huge { &r.thp } else { &r.small };
            if let Some(x) = pair.as_ref().and_then(|p| p.mprotect_over_pkey) {
                out += &format!(
                    "- pkey vs mprotect ({what}): {}: mprotect/pkey = {:.2}x (p10–p90 {:.2}–{:.2})\n",
                    human_bytes(r.target as u64),
                    x.median,
                    x.p10,
                    x.p90
                );
            }
        }
    }
    if out.is_empty() {
        out = format!("- pkey vs mprotect: not measurable: {pkey_note}\n");
    }
    out
}

/// The log–log plot of freeze + thaw cost against committed size.
fn chart(rows: &[SizeRow], pkey_note: &str) -> LogLogChart {
    let series = |name: &str, color: u32, dashed: bool, y: &dyn Fn(&SizeRow) -> Option<f64>| Line {
        name: name.to_string(),
        color,
        dashed,
        points: rows
            .iter()
            .filter_map(|r| y(r).map(|y| (r.target as f64, y)))
            .collect(),
        note: pkey_note.to_string(),
    };
    LogLogChart {
        title: "frostheap: freeze + thaw cost against committed size (median)".into(),
        x_desc: "committed size (log scale)".into(),
        y_desc: "freeze + thaw time (log scale)".into(),
        x_ticks: rows.iter().map(|r| r.target as f64).collect(),
        x_label: |x| human_bytes(x as u64),
        y_label: human_ns,
        lines: vec![
            series("frostheap mprotect, huge pages", 0x1f5fbf, false, &|r| {
                r.thp.as_ref().map(|p| p.frostheap.median)
            }),
            series("raw mprotect, huge pages", 0x1f5fbf, true, &|r| {
                r.thp.as_ref().map(|p| p.raw.median)
            }),
            series("frostheap mprotect, 4 KiB", 0xc0392b, false, &|r| {
                r.small.as_ref().map(|p| p.frostheap.median)
            }),
            series("raw mprotect, 4 KiB", 0xc0392b, true, &|r| {
                r.small.as_ref().map(|p| p.raw.median)
            }),
            series("pkey (PKRU pair)", 0x2e8b57, false, &|r| {
                r.pkey().map(|s| s.median)
            }),
        ],
        marks: vec![Mark {
            y: 100.0,
            label: "pkey target 100 ns".into(),
            color: 0x2e8b57,
        }],
        size: (860, 540),
    }
}

fn main() {
    let o = Options::parse();
    if let Some(size) = o.main_heap_child {
        return main_heap_child(&o, size);
    }
    let started = Instant::now();
    let machine = Machine::now();
    let sizes: Vec<usize> = [16 * MIB, 64 * MIB, 256 * MIB, GIB, 4 * GIB]
        .into_iter()
        .filter(|&s| s <= o.max)
        .collect();
    let pkey_note = match frostheap::__private::pkey() {
        Ok(_) => String::new(),
        Err(e) => format!("unavailable on this machine ({e})"),
    };
    let rows = measure_sizes(&o, &sizes);
    eprintln!("freeze: empty phases …");
    let phases = measure_phases(&o);
    eprintln!("freeze: violations …");
    let n_violations = 200;
    let (first, violations) = measure_violations(n_violations, OnViolation::Cancel);
    let (audit_first, audit) = measure_violations(n_violations, OnViolation::Audit);
    let worker_start = measure_worker_start(&o);
    eprintln!("freeze: the main heap at its first mprotect guard …");
    let main_heap = measure_main_heap(&o, &sizes);

    let counts = rows
        .iter()
        .flat_map(|r| [&r.thp, &r.small])
        .filter_map(|p| p.as_ref().map(|p| p.frostheap.n));
    let mut md = String::from("## frostheap freeze benchmark\n\n");
    md += &format!(
        "{}. Backend `pkey`: {}. Workers: 2. Samples per cell: {}–{} (budget {} ms per cell). \
         Total run time: {:.1?}.\n\n",
        machine.describe(),
        if pkey_note.is_empty() {
            "available"
        } else {
            pkey_note.as_str()
        },
        counts.clone().min().unwrap_or(0),
        counts.max().unwrap_or(0),
        o.budget_ms,
        started.elapsed()
    );
    md += "### Freeze + thaw against committed size (median, p10–p90; ratio per round)\n\n";
    md += &size_table(&rows, &pkey_note).to_string();
    md += "\n### Empty phase: `rt.for_each(0..workers, |_| ())`\n\n";
    md += &phase_table(&phases).to_string();
    md += &format!(
        "\n### Violation to error (cancel policy, mprotect, 16 MiB guarded, {n_violations} violations)\n\n"
    );
    let mut v = Table::new(["measure", "value"], 2);
    v.row([
        "first violation (cold: symbolizer loads debug info)".to_string(),
        human_ns(first),
    ])
    .row([
        format!("the other {} violations: median (p10–p90)", violations.n),
        table::time(&violations),
    ])
    .row([
        "audit policy instead (no parking, no replacement worker): first; median (p10–p90)"
            .to_string(),
        format!("{}; {}", human_ns(audit_first), table::time(&audit)),
    ])
    .row([
        "for scale: starting one worker (building a one-worker runtime)".to_string(),
        table::time(&worker_start),
    ]);
    md += &v.to_string();
    md += "\n### The main heap at its first `mprotect` guard (a child per cell, 3 rounds; medians, p10–p90)\n\n";
    md += "`on` is huge pages from the first byte (what `auto` was before the main heap switched at its \
           first guard); `off` is 4 KiB pages throughout.\n\n";
    md += &main_heap_table(&main_heap).to_string();
    md +=
        "\n### pkey against mprotect (frostheap's freeze + thaw over the PKRU pair, per round)\n\n";
    md += &pkey_lines(&rows, &pkey_note);
    md += "\n### Against the targets\n\n";
    let worst_pkey = rows
        .iter()
        .filter_map(|r| r.pkey().map(|s| s.median))
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    md += &format!(
        "- pkey ≤ 100 ns at every size: {}\n",
        match worst_pkey {
            Some(ns) => format!(
                "worst median {} ({})",
                human_ns(ns),
                if ns <= 100.0 { "met" } else { "missed" }
            ),
            None => format!("not measurable: {pkey_note}"),
        }
    );
    let worst = rows
        .iter()
        .filter_map(|r| r.thp.as_ref().map(|p| (r.target, p.ratio.median)))
        .fold((0, 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
    md += &format!(
        "- mprotect on huge pages within 1.2× of the raw call: worst ratio {:.2}× at {} ({})\n",
        worst.1,
        human_bytes(worst.0 as u64),
        if worst.1 <= 1.2 { "met" } else { "missed" }
    );
    md += &format!(
        "- violation to error ≤ 50 µs: median {} ({})\n",
        human_ns(violations.median),
        if violations.median <= 50_000.0 {
            "met"
        } else {
            "missed"
        }
    );
    print!("{md}");
    let svg = chart(&rows, &pkey_note).to_svg().unwrap_or_else(|e| {
        eprintln!("freeze: {e}");
        std::process::exit(1);
    });
    let md_path = o.out_dir.join("freeze.md");
    let svg_path = o.out_dir.join("freeze.svg");
    cli::write_or_exit("freeze", &md_path, md.as_bytes());
    cli::write_or_exit("freeze", &svg_path, svg.as_bytes());
    eprintln!(
        "freeze: wrote {} and {} in {:.1?}",
        md_path.display(),
        svg_path.display(),
        started.elapsed()
    );
}
