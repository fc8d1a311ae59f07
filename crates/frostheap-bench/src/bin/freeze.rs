//! `freeze`: what freezing guarded heaps costs, side by side in one run.
//!
//! ```text
//! cargo run --release -p frostheap-bench --bin freeze -- [--out-dir DIR] [--max SIZE] [--budget-ms N]
//! ```
//!
//! **What it measures.**
//!
//! 1. Freeze + thaw against committed size (16 MiB … 4 GiB) for each
//!    backend: `pkey` (a PKRU write pair; size-independent), frostheap's
//!    `mprotect` on transparent huge pages (a [`Heap`] built with
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
//!    heap, and with one guarded heap of 16 MiB and 1 GiB committed.
//! 3. Violation to error: a task takes a timestamp just before it writes a
//!    guarded heap; main reads the clock as soon as `map` has returned the
//!    `Err(Error::Violation)`. The cancel policy parks one thread per
//!    violation, so `max_parked` is raised above the count.
//!
//! **How.** frostheap and the raw call alternate, one sample each, so
//! machine noise hits both alike; samples are taken until a time budget
//! per cell is spent (at least 15, at most 401). The report shows the
//! median, the p10–p90 spread, and the ratio of medians frostheap / raw.
//! Output: a markdown table on stdout and in `DIR/freeze.md`, and a
//! log–log plot of cost against size in `DIR/freeze.svg` (default
//! `DIR = target/frostheap-bench`).
//!
//! Targets from the issue: pkey ≤ 100 ns at every size; mprotect on huge
//! pages within 1.2× of the raw call; violation to error ≤ 50 µs. No
//! timing is asserted: this is a report, not a test.

use std::alloc::Layout;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use frostheap::{Error, Heap, HugePages, OnViolation, Protect, Runtime};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const HUGE: usize = 2 * MIB;
const PAGE: usize = 4096;

const USAGE: &str = "\
usage: freeze [--out-dir DIR] [--max SIZE] [--budget-ms N]
  --out-dir DIR   where freeze.md and freeze.svg go (default target/frostheap-bench)
  --max SIZE      largest committed size measured (default 4G; sizes are 16M 64M 256M 1G 4G)
  --budget-ms N   time spent sampling each cell (default 400)";

struct Options {
    out_dir: PathBuf,
    max: usize,
    budget: Duration,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        out_dir: PathBuf::from("target/frostheap-bench"),
        max: 4 * GIB,
        budget: Duration::from_millis(400),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out-dir" => o.out_dir = PathBuf::from(value()?),
            "--max" => {
                let v = value()?;
                o.max = frostheap::parse_size(&v)
                    .map_err(|_| format!("--max {v:?}: expected a size such as 1G"))?
            }
            "--budget-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--budget-ms {v:?}: expected milliseconds"))?;
                o.budget = Duration::from_millis(ms)
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// Statistics.

/// Median and p10–p90 of a set of samples, in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Summary {
    median: f64,
    p10: f64,
    p90: f64,
    n: usize,
}

fn summarize(samples: &mut [f64]) -> Summary {
    assert!(!samples.is_empty());
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
        n: samples.len(),
    }
}

/// Nanoseconds as a short human figure.
fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn cell(s: &Summary) -> String {
    format!("{} ({}–{})", human(s.median), human(s.p10), human(s.p90))
}

fn size_name(bytes: usize) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Samples `a` and `b` alternately until `budget` is spent (15..=401
/// samples each); each closure returns its own duration in ns.
fn alternate(
    budget: Duration,
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) -> (Summary, Summary) {
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    // Warm-up: one of each, discarded.
    a();
    b();
    let start = Instant::now();
    while sa.len() < 401 && (sa.len() < 15 || start.elapsed() < budget) {
        sa.push(a());
        sb.push(b());
    }
    (summarize(&mut sa), summarize(&mut sb))
}

fn time_ns(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64
}

// ---------------------------------------------------------------------------
// The raw baseline: a plain mmap reservation, committed prefix, mprotect.

struct RawRegion {
    map: *mut u8,
    map_len: usize,
    base: *mut u8,
    reserved: usize,
    committed: usize,
}

impl RawRegion {
    /// Reserves `len` bytes (PROT_NONE), 2 MiB aligned, advised for huge
    /// pages when `huge`.
    fn new(len: usize, huge: bool) -> RawRegion {
        let map_len = len + HUGE;
        // SAFETY: a fresh anonymous reservation; no existing memory is
        // touched.
        let map = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap of {len} bytes");
        let map = map as *mut u8;
        let base = ((map as usize + HUGE - 1) & !(HUGE - 1)) as *mut u8;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [base, base + len) lies inside the reservation.
        let rc = unsafe { libc::madvise(base.cast(), len, advice) };
        assert_eq!(rc, 0, "madvise");
        RawRegion {
            map,
            map_len,
            base,
            reserved: len,
            committed: 0,
        }
    }

    /// Commits (read-write) and touches the prefix up to `len`.
    fn grow_to(&mut self, len: usize) {
        assert!(len <= self.reserved);
        if len <= self.committed {
            return;
        }
        // SAFETY: [base + committed, base + len) is inside the reservation,
        // page aligned.
        let rc = unsafe {
            libc::mprotect(
                self.base.add(self.committed).cast(),
                len - self.committed,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(rc, 0, "mprotect commit");
        touch(self.base as usize + self.committed, len - self.committed);
        self.committed = len;
    }

    /// One freeze + thaw of the committed prefix, in ns.
    fn freeze_thaw(&self) -> f64 {
        time_ns(|| {
            // SAFETY: the committed prefix is ours; nothing else uses it.
            unsafe {
                let rc = libc::mprotect(self.base.cast(), self.committed, libc::PROT_READ);
                debug_assert_eq!(rc, 0);
                let rc = libc::mprotect(
                    self.base.cast(),
                    self.committed,
                    libc::PROT_READ | libc::PROT_WRITE,
                );
                debug_assert_eq!(rc, 0);
            }
        })
    }
}

impl Drop for RawRegion {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// Writes one byte per 4 KiB page of `[addr, addr + len)`.
fn touch(addr: usize, len: usize) {
    let mut a = addr;
    while a < addr + len {
        // SAFETY: callers pass committed, writable memory they own.
        unsafe { (a as *mut u8).write_volatile(1) };
        a += PAGE;
    }
}

/// Bytes of `[addr, addr + len)` backed by huge pages, from
/// /proc/self/smaps (mappings overlapping the range, counted whole).
fn huge_backed(addr: usize, len: usize) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut total = 0;
    let mut inside = false;
    for line in text.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, e)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
                {
                    inside = s < addr + len && e > addr;
                    continue;
                }
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kb: usize = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                total += kb * 1024;
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------
// frostheap: a heap committed by allocating and touching.

struct GrownHeap {
    heap: Heap,
    blocks: usize,
}

impl GrownHeap {
    fn new(max: usize, huge: bool) -> GrownHeap {
        let heap = Heap::builder()
            .name(if huge { "bench-thp" } else { "bench-4k" })
            .max(max + 256 * MIB)
            .huge_pages(if huge { HugePages::On } else { HugePages::Off })
            .build()
            .expect("a benchmark heap");
        GrownHeap { heap, blocks: 0 }
    }

    fn committed(&self) -> usize {
        self.heap.stats().committed
    }

    /// Allocates and touches blocks until at least `target` bytes are
    /// committed. Blocks are never freed (the heap is dropped whole).
    fn grow_to(&mut self, target: usize) {
        while self.committed() < target {
            let want = (target - self.committed()).clamp(MIB, 64 * MIB);
            let layout = Layout::from_size_align(want, PAGE).expect("layout");
            let p = self.heap.try_alloc(layout).expect("growing the heap");
            touch(p.as_ptr() as usize, want);
            self.blocks += 1;
        }
    }

    fn freeze_thaw(&self) -> f64 {
        time_ns(|| {
            self.heap.bench_freeze(true).expect("freeze");
            self.heap.bench_freeze(false).expect("thaw");
        })
    }
}

// ---------------------------------------------------------------------------
// Rows.

struct SizeRow {
    target: usize,
    pkey: Option<Summary>,
    thp: Option<PairRow>,
    small: Option<PairRow>,
}

struct PairRow {
    committed: usize,
    huge_share: f64,
    frostheap: Summary,
    raw: Summary,
}

struct PhaseRow {
    label: String,
    summary: Summary,
}

fn pkey_pair(budget: Duration) -> Option<Summary> {
    let key = frostheap::trap::pkey().ok()?;
    let wd = 1u32 << (2 * key + 1);
    let base = frostheap::os::rdpkru();
    // Many pairs per sample: one pair is below the clock's resolution.
    const PAIRS: u32 = 1000;
    let one = || {
        time_ns(|| {
            for _ in 0..PAIRS {
                frostheap::os::wrpkru(base | wd);
                frostheap::os::wrpkru(base);
            }
        }) / PAIRS as f64
    };
    Some(alternate(budget, one, one).0)
}

fn measure_sizes(o: &Options, sizes: &[usize], rows: &mut Vec<SizeRow>) {
    let pkey = pkey_pair(o.budget);
    for &s in sizes {
        rows.push(SizeRow {
            target: s,
            pkey,
            thp: None,
            small: None,
        });
    }
    for huge in [true, false] {
        let what = if huge { "huge pages" } else { "4 KiB pages" };
        eprintln!("freeze: committing up to {} on {what} …", size_name(o.max));
        let mut heap = GrownHeap::new(o.max, huge);
        let mut raw = RawRegion::new(o.max + 256 * MIB, huge);
        for row in rows.iter_mut() {
            let t = Instant::now();
            heap.grow_to(row.target);
            let committed = heap.committed();
            raw.grow_to(committed);
            let grow = t.elapsed();
            let (f, r) = alternate(o.budget, || heap.freeze_thaw(), || raw.freeze_thaw());
            let share = huge_backed(heap.heap.base() as usize, committed) as f64 / committed as f64;
            eprintln!(
                "  {:>7} committed {} ({} blocks, {:.0}% huge; grown in {:.1?}): frostheap {} raw {}",
                size_name(row.target),
                committed,
                heap.blocks,
                share * 100.0,
                grow,
                human(f.median),
                human(r.median)
            );
            let pair = PairRow {
                committed,
                huge_share: share,
                frostheap: f,
                raw: r,
            };
            if huge {
                row.thp = Some(pair);
            } else {
                row.small = Some(pair);
            }
        }
    }
}

fn empty_phase(rt: &Runtime, budget: Duration) -> Summary {
    let workers = rt.workers();
    let one = || {
        time_ns(|| {
            rt.for_each(0..workers, |_| ()).expect("an empty phase");
        })
    };
    alternate(budget, one, one).0
}

fn measure_phases(o: &Options) -> Vec<PhaseRow> {
    let mut out = Vec::new();
    let workers = 2;
    let rt = Runtime::builder()
        .workers(workers)
        .guard_main_heap(false)
        .protect(Protect::Off)
        .build()
        .expect("runtime");
    out.push(PhaseRow {
        label: format!("{workers} workers, no guarded heap"),
        summary: empty_phase(&rt, o.budget),
    });
    drop(rt);
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
        out.push(PhaseRow {
            label: format!(
                "{workers} workers, guarded heap of {} on {} (mprotect)",
                size_name(heap.committed()),
                if huge { "huge pages" } else { "4 KiB pages" }
            ),
            summary: empty_phase(&rt, o.budget),
        });
    }
    out
}

/// Nanoseconds since the first call (a clock both main and tasks read).
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
    let first = samples[0];
    (first, summarize(&mut samples[1..]))
}

/// Starting one worker (what the cancel policy does after each
/// violation), measured as building a one-worker runtime.
fn measure_worker_start(budget: Duration) -> Summary {
    let one = || {
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
    };
    alternate(budget, one, one).0
}

// ---------------------------------------------------------------------------
// Output.

fn table(rows: &[SizeRow], pkey_note: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### Freeze + thaw against committed size (median, p10–p90)\n"
    );
    let _ = writeln!(
        t,
        "| committed | pkey (PKRU pair) | frostheap mprotect, huge pages | raw mprotect, huge pages | ratio | huge-backed | frostheap mprotect, 4 KiB | raw mprotect, 4 KiB | ratio |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let pkey = match &r.pkey {
            Some(s) => cell(s),
            None if pkey_note.is_empty() => "–".to_string(),
            None => "unavailable on this machine".to_string(),
        };
        let pair = |p: &Option<PairRow>| match p {
            Some(p) => (
                cell(&p.frostheap),
                cell(&p.raw),
                format!("{:.2}×", p.frostheap.median / p.raw.median),
                format!("{:.0}%", p.huge_share * 100.0),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let (ft, rt, xt, share) = pair(&r.thp);
        let (fs, rs, xs, _) = pair(&r.small);
        let committed = r.thp.as_ref().map(|p| p.committed).unwrap_or(r.target);
        let _ = writeln!(
            t,
            "| {} ({committed} B) | {pkey} | {ft} | {rt} | {xt} | {share} | {fs} | {rs} | {xs} |",
            size_name(r.target)
        );
    }
    t
}

/// A hand-written log–log SVG: one line per mechanism.
fn svg(rows: &[SizeRow], pkey_note: &str) -> String {
    let (w, h) = (860.0, 540.0);
    let (left, right, top, bottom) = (90.0, 250.0, 40.0, 70.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    type Series = (&'static str, &'static str, bool, Vec<(usize, f64)>);
    let mut series: Vec<Series> = vec![
        ("frostheap mprotect, huge pages", "#1f5fbf", false, vec![]),
        ("raw mprotect, huge pages", "#1f5fbf", true, vec![]),
        ("frostheap mprotect, 4 KiB", "#c0392b", false, vec![]),
        ("raw mprotect, 4 KiB", "#c0392b", true, vec![]),
        ("pkey (PKRU pair)", "#2e8b57", false, vec![]),
    ];
    for r in rows {
        if let Some(p) = &r.thp {
            series[0].3.push((r.target, p.frostheap.median));
            series[1].3.push((r.target, p.raw.median));
        }
        if let Some(p) = &r.small {
            series[2].3.push((r.target, p.frostheap.median));
            series[3].3.push((r.target, p.raw.median));
        }
        if let Some(p) = &r.pkey {
            series[4].3.push((r.target, p.median));
        }
    }
    let xs: Vec<f64> = rows.iter().map(|r| (r.target as f64).log10()).collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min) - 0.1,
        xs.iter().cloned().fold(f64::MIN, f64::max) + 0.1,
    );
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.3.iter().map(|p| p.1))
        .chain([100.0]) // the pkey target stays in view
        .collect();
    let y0 = ys.iter().cloned().fold(f64::MAX, f64::min).log10().floor();
    let y1 = ys.iter().cloned().fold(f64::MIN, f64::max).log10().ceil();
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + ph - (y.log10() - y0) / (y1 - y0).max(1.0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">frostheap: freeze + thaw cost against committed size (median)</text>"#,
        left + pw / 2.0
    );
    // Axes and grid.
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let mut d = y0 as i32;
    while d <= y1 as i32 {
        let y = py(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            human(10f64.powi(d))
        );
        d += 1;
    }
    for r in rows {
        let x = px((r.target as f64).log10());
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 18.0,
            size_name(r.target)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">committed size (log scale)</text>"#,
        left + pw / 2.0,
        h - 25.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">freeze + thaw time (log scale)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // The pkey target.
    let yt = py(100.0);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{yt:.1}" x2="{:.1}" y2="{yt:.1}" stroke="#2e8b57" stroke-dasharray="2,4"/><text x="{:.1}" y="{:.1}" fill="#2e8b57">pkey target 100 ns</text>"##,
        left + pw,
        left + 6.0,
        yt - 5.0
    );
    // Lines.
    for (name, color, dashed, pts) in &series {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px((*x as f64).log10()), py(*y)))
            .collect();
        let dash = if *dashed {
            r#" stroke-dasharray="7,5""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}><title>{name}</title></polyline>"#,
            path.join(" ")
        );
        for p in &path {
            let (cx, cy) = p.split_once(',').expect("x,y");
            let _ = writeln!(s, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{color}"/>"#);
        }
    }
    // Legend.
    let lx = left + pw + 15.0;
    let mut ly = top + 10.0;
    for (name, color, dashed, pts) in &series {
        let dash = if *dashed {
            r#" stroke-dasharray="7,5""#
        } else {
            ""
        };
        let label = if pts.is_empty() {
            format!("{name}: {pkey_note}")
        } else {
            name.to_string()
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{label}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
        ly += 22.0;
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("freeze: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let sizes: Vec<usize> = [16 * MIB, 64 * MIB, 256 * MIB, GIB, 4 * GIB]
        .into_iter()
        .filter(|&s| s <= o.max)
        .collect();
    let pkey_note = match frostheap::trap::pkey() {
        Ok(_) => String::new(),
        Err(e) => format!("unavailable on this machine ({e})"),
    };
    let mut rows = Vec::new();
    measure_sizes(&o, &sizes, &mut rows);
    eprintln!("freeze: empty phases …");
    let phases = measure_phases(&o);
    eprintln!("freeze: violations …");
    let n_violations = 200;
    let (first, violations) = measure_violations(n_violations, OnViolation::Cancel);
    let (audit_first, audit) = measure_violations(n_violations, OnViolation::Audit);
    let worker_start = measure_worker_start(o.budget);

    let mut md = String::new();
    let _ = writeln!(md, "## frostheap freeze benchmark\n");
    let _ = writeln!(
        md,
        "Backend `pkey`: {}. Workers: 2. Samples per cell: {}–{} (budget {:?} per cell). Total run time: {:.1?}.\n",
        if pkey_note.is_empty() { "available" } else { pkey_note.as_str() },
        rows.iter()
            .filter_map(|r| r.thp.as_ref().map(|p| p.frostheap.n))
            .chain(rows.iter().filter_map(|r| r.small.as_ref().map(|p| p.frostheap.n)))
            .min()
            .unwrap_or(0),
        rows.iter()
            .filter_map(|r| r.thp.as_ref().map(|p| p.frostheap.n))
            .chain(rows.iter().filter_map(|r| r.small.as_ref().map(|p| p.frostheap.n)))
            .max()
            .unwrap_or(0),
        o.budget,
        started.elapsed()
    );
    md.push_str(&table(&rows, &pkey_note));
    let _ = writeln!(md, "\n### Empty phase: `rt.for_each(0..workers, |_| ())`\n");
    let _ = writeln!(md, "| runtime | median (p10–p90) | vs. no guarded heap |");
    let _ = writeln!(md, "|---|---|---|");
    let base = phases.first().map(|p| p.summary.median).unwrap_or(1.0);
    for p in &phases {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2}× |",
            p.label,
            cell(&p.summary),
            p.summary.median / base
        );
    }
    let _ = writeln!(
        md,
        "\n### Violation to error (cancel policy, mprotect, 16 MiB guarded, {n_violations} violations)\n"
    );
    let _ = writeln!(md, "| measure | value |");
    let _ = writeln!(md, "|---|---|");
    let _ = writeln!(
        md,
        "| first violation (cold: symbolizer loads debug info) | {} |",
        human(first)
    );
    let _ = writeln!(
        md,
        "| the other {} violations: median (p10–p90) | {} |",
        violations.n,
        cell(&violations)
    );
    let _ = writeln!(
        md,
        "| audit policy instead (no parking, no replacement worker): first; median (p10–p90) | {}; {} |",
        human(audit_first),
        cell(&audit)
    );
    let _ = writeln!(
        md,
        "| for scale: starting one worker (building a one-worker runtime) | {} |",
        cell(&worker_start)
    );
    let _ = writeln!(md, "\n### Against the targets\n");
    let _ = writeln!(
        md,
        "- pkey ≤ 100 ns at every size: {}",
        match rows.first().and_then(|r| r.pkey) {
            Some(s) => format!(
                "{} ({})",
                human(s.median),
                if s.median <= 100.0 { "met" } else { "missed" }
            ),
            None => format!("not measurable: {pkey_note}"),
        }
    );
    let worst = rows
        .iter()
        .filter_map(|r| {
            r.thp
                .as_ref()
                .map(|p| (r.target, p.frostheap.median / p.raw.median))
        })
        .fold((0, 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
    let _ = writeln!(
        md,
        "- mprotect on huge pages within 1.2× of the raw call: worst ratio {:.2}× at {} ({})",
        worst.1,
        size_name(worst.0),
        if worst.1 <= 1.2 { "met" } else { "missed" }
    );
    let _ = writeln!(
        md,
        "- violation to error ≤ 50 µs: median {} ({})",
        human(violations.median),
        if violations.median <= 50_000.0 {
            "met"
        } else {
            "missed"
        }
    );
    print!("{md}");
    if let Err(e) = std::fs::create_dir_all(&o.out_dir) {
        eprintln!("freeze: cannot create {}: {e}", o.out_dir.display());
        std::process::exit(1);
    }
    let md_path = o.out_dir.join("freeze.md");
    let svg_path = o.out_dir.join("freeze.svg");
    std::fs::write(&md_path, &md).expect("writing freeze.md");
    std::fs::write(&svg_path, svg(&rows, &pkey_note)).expect("writing freeze.svg");
    eprintln!(
        "freeze: wrote {} and {} in {:.1?}",
        md_path.display(),
        svg_path.display(),
        started.elapsed()
    );
}
