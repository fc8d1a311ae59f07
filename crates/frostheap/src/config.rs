//! Configuration: the policy enums ([`Protect`] and the [`Backend`] it
//! resolves to, [`OnViolation`], [`HugePages`]) and the `FROSTHEAP_*`
//! environment variables, read once at start-up.
//!
//! `FROSTHEAP_MIN`, `FROSTHEAP_MAX` (sizes such as `64M`, `1G`, `1.5GiB`),
//! `FROSTHEAP_HUGE_PAGES=auto|on|off`, `FROSTHEAP_PROTECT=auto|pkey|mprotect|off`,
//! `FROSTHEAP_ON_VIOLATION=rollback|cancel|abort|audit`, `FROSTHEAP_TRACK_ALLOCS=0|1`
//! and `FROSTHEAP_STATS=0|1` (the C library's statistics at exit).
//!
//! [`parse`] takes the variables from a lookup function, so every rule is
//! tested in process; [`from_env`] is `parse` over the real environment.
//! Parsing is hand-written and never allocates, on purpose: the global
//! allocator reads these at the first allocation, before `main`, where no
//! parsing crate's allocations could be served. A bad value is an
//! [`EnvError`], which the global allocator prints as one line before
//! exiting with status 2.
//!
//! This module sits just above `os` and `size`: it imports nothing else of
//! the crate, so every layer may read a policy.

use core::ffi::CStr;

use crate::os;
use crate::size::{parse_size_bytes, SizeError, SizeErrorKind};

/// How guarded heaps are protected during a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protect {
    /// `pkey` where available, else `mprotect`.
    #[default]
    Auto,
    /// Memory protection keys: a register write per worker, any size.
    Pkey,
    /// `mprotect` of each guarded heap's committed range.
    Mprotect,
    /// No protection: violations go unnoticed.
    Off,
}

impl Protect {
    /// Parses `auto`, `pkey`, `mprotect` or `off`.
    pub fn parse(s: &str) -> Option<Protect> {
        Self::parse_bytes(s.as_bytes())
    }

    /// The word `FROSTHEAP_PROTECT` accepts for this backend (what
    /// [`Protect::parse`] reads back; also its `Display`).
    pub fn name(self) -> &'static str {
        match self {
            Protect::Auto => "auto",
            Protect::Pkey => "pkey",
            Protect::Mprotect => "mprotect",
            Protect::Off => "off",
        }
    }

    fn parse_bytes(s: &[u8]) -> Option<Protect> {
        match s {
            b"auto" => Some(Protect::Auto),
            b"pkey" => Some(Protect::Pkey),
            b"mprotect" => Some(Protect::Mprotect),
            b"off" => Some(Protect::Off),
            _ => None,
        }
    }
}

/// What happens to a task that writes a frozen heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum OnViolation {
    /// Park the task's thread for good, report `Error::Violation`, start a
    /// replacement worker. The store never happens.
    Cancel = 0,
    /// Write a full report to stderr and die with the original signal.
    Abort = 1,
    /// Let the write land and record it; the phase goes on.
    Audit = 2,
    /// Let the store land, record what it overwrote, let the task run to
    /// its end, and undo every such store when the phase ends; the phase
    /// returns `Error::Violation` (docs/rollback.md).
    #[default]
    Rollback = 3,
}

impl OnViolation {
    /// Parses `rollback`, `cancel`, `abort` or `audit`.
    pub fn parse(s: &str) -> Option<OnViolation> {
        Self::parse_bytes(s.as_bytes())
    }

    /// The name `parse` accepts: `rollback`, `cancel`, `abort` or `audit`.
    ///
    /// ```
    /// use frostheap::OnViolation;
    /// assert_eq!(OnViolation::parse(OnViolation::default().name()), Some(OnViolation::Rollback));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            OnViolation::Rollback => "rollback",
            OnViolation::Cancel => "cancel",
            OnViolation::Abort => "abort",
            OnViolation::Audit => "audit",
        }
    }

    fn parse_bytes(s: &[u8]) -> Option<OnViolation> {
        match s {
            b"rollback" => Some(OnViolation::Rollback),
            b"cancel" => Some(OnViolation::Cancel),
            b"abort" => Some(OnViolation::Abort),
            b"audit" => Some(OnViolation::Audit),
            _ => None,
        }
    }

    /// The policy stored as `self as u32` (in an atomic the fault handler
    /// reads); an unknown number is `Cancel`.
    pub(crate) fn from_u32(n: u32) -> OnViolation {
        match n {
            1 => OnViolation::Abort,
            2 => OnViolation::Audit,
            3 => OnViolation::Rollback,
            _ => OnViolation::Cancel,
        }
    }
}

/// The backend actually in force (after resolving `Auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Protection key `key`.
    Pkey(u32),
    /// `mprotect`.
    Mprotect,
    /// Nothing.
    Off,
}

impl Backend {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pkey(_) => "pkey",
            Backend::Mprotect => "mprotect",
            Backend::Off => "off",
        }
    }
}

/// Whether a region uses transparent huge pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// On where the kernel offers THP (`always` or `madvise` mode) and the
    /// heap's `max` (the main heap's: `FROSTHEAP_MAX`) is at least
    /// [`HugePages::AUTO_FROM`]: a heap built with it from its first byte;
    /// the main heap of a Rust program (`Global`) from the first time a
    /// runtime guards it with the `mprotect` backend (it starts on base
    /// pages); the C ABI's main heap never.
    #[default]
    Auto,
    /// Align to 2 MiB and advise `MADV_HUGEPAGE`.
    On,
    /// No huge pages, even where THP is `always` system-wide: plain 64 KiB
    /// alignment and `MADV_NOHUGEPAGE`.
    Off,
}

impl core::fmt::Display for Protect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl HugePages {
    /// The word `FROSTHEAP_HUGE_PAGES` accepts for this policy (`auto`,
    /// `on`, `off`; also its `Display`).
    pub fn name(self) -> &'static str {
        match self {
            HugePages::Auto => "auto",
            HugePages::On => "on",
            HugePages::Off => "off",
        }
    }

    /// The smallest `max` for which `Auto` lays a heap out for huge pages
    /// (64 MiB). Such a heap commits and charges in 2 MiB steps and
    /// charges each small span's whole 64 KiB page (a touch may make 2
    /// MiB resident): under a small limit that is most of it. A `Global`
    /// program under `FROSTHEAP_MAX=128K` (the least accepted) had its
    /// main heap charge the whole limit at its first growth and hold a
    /// page for each of its first two size classes; the third, a 24-byte
    /// `String`, was refused and the program aborted. Under 512K, its
    /// first growth took the whole limit from every other thread.
    ///
    /// The trade: a smaller heap frozen with the `mprotect` backend (a CPU
    /// without protection keys) protects its 4 KiB pages one by one, which
    /// costs more per freeze than a heap on huge pages (a 16 MiB main heap
    /// in CI's emulated guest: 1.83 ms a freeze and thaw against 30 µs).
    /// A small heap frozen often there asks for [`HugePages::On`]
    /// (`FROSTHEAP_HUGE_PAGES=on`).
    pub const AUTO_FROM: usize = 64 << 20;

    /// Resolves `Auto` against the running kernel.
    pub fn enabled(self) -> bool {
        match self {
            HugePages::On => true,
            HugePages::Off => false,
            HugePages::Auto => os::thp_mode() != os::ThpMode::Never,
        }
    }

    /// Resolves `Auto` against the running kernel for a heap whose cap is
    /// `max` ([`HugePages::AUTO_FROM`]).
    pub fn enabled_for(self, max: usize) -> bool {
        match self {
            HugePages::Auto => max >= HugePages::AUTO_FROM && self.enabled(),
            _ => self.enabled(),
        }
    }

    fn parse_bytes(s: &[u8]) -> Option<HugePages> {
        match s {
            b"auto" => Some(HugePages::Auto),
            b"on" => Some(HugePages::On),
            b"off" => Some(HugePages::Off),
            _ => None,
        }
    }
}

impl core::fmt::Display for HugePages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The smallest accepted `FROSTHEAP_MAX`: two heap pages
/// (`region::PAGE_SIZE`, which checks at build time that the two agree).
/// Every size class takes a span of its own, at least one 64 KiB page,
/// and Rust's start-up allocates in two classes before `main` (16 bytes,
/// then 544): under `FROSTHEAP_MAX=64K`, the documented minimum until
/// 2026-12-06, which was accepted, a program with `frostheap::Global`
/// aborted before `main` ("memory allocation of 544 bytes failed"); under
/// 128K a hello-world runs.
pub const MIN_MAX: usize = 128 << 10;

/// What the main heap's pre-commit (`FROSTHEAP_MIN`) leaves of a limit of
/// `max` bytes to everything else: an eighth of it, 8 MiB at least (all of
/// it, below 8 MiB). See [`main_precommit`].
pub const fn min_headroom(max: usize) -> usize {
    let eighth = max / 8;
    if eighth > 8 << 20 {
        eighth
    } else {
        8 << 20
    }
}

/// The bytes the main heap commits up front for `FROSTHEAP_MIN=min` under
/// `FROSTHEAP_MAX=max`: `min`, but no more than `max` less
/// `min_headroom` (rounded down to 64 KiB, a heap page), so that the
/// other threads' heaps and the program's mappings, which the limit counts
/// too, always have room. `FROSTHEAP_MIN` equal to `FROSTHEAP_MAX`, as
/// `-Xms` equal to `-Xmx` is common for a JVM, is accepted and commits
/// seven eighths of the limit up front; the main heap grows into the rest
/// on demand, as far as the limit allows. Until 2026-12-06 it committed
/// the whole limit to the main heap, and every other thread's allocation
/// and every counted `mmap` was refused: CPython could not start. The
/// JVM's `-Xmx` bounds its heap alone, and its threads and native memory
/// come on top; here one limit counts them all.
pub const fn main_precommit(min: usize, max: usize) -> usize {
    let cap = max.saturating_sub(min_headroom(max)) & !0xffff;
    if min < cap {
        min
    } else {
        cap
    }
}

/// What a `FROSTHEAP_MAX` below [`MIN_MAX`] is told is expected (and
/// `frostheap run --max-memory`, in the same words).
pub const MIN_MAX_EXPECTED: &str = "at least 128K (two heap pages: each size class a program allocates in takes a 64 KiB page of its own, and Rust's start-up alone uses two)";

/// The configuration the environment asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvConfig {
    /// Bytes committed at start.
    pub min: usize,
    /// The hard cap.
    pub max: usize,
    /// `FROSTHEAP_MAX` was set (otherwise `max` is [`default_max`]).
    pub max_from_env: bool,
    /// Huge-page policy.
    pub huge_pages: HugePages,
    /// Protection backend requested by `FROSTHEAP_PROTECT`.
    pub protect: Protect,
    /// Violation policy from `FROSTHEAP_ON_VIOLATION`.
    pub on_violation: OnViolation,
    /// `FROSTHEAP_TRACK_ALLOCS=1`.
    pub track_allocs: bool,
    /// `FROSTHEAP_STATS=1`: the C library prints its statistics at exit.
    /// Read here with the others, so that a bad value stops the process
    /// at start-up with one line, as theirs do (it turned the statistics
    /// on, whatever it said: `abc`, `2`).
    pub stats: bool,
}

/// A bad environment value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: &'static [u8],
    /// What is accepted.
    pub expected: &'static str,
}

impl EnvError {
    /// Writes the one-line message to `buf` without allocating.
    pub fn render<'a>(&self, buf: &'a mut [u8]) -> &'a [u8] {
        crate::fmt_buf::Buf::new(buf)
            .str("frostheap: invalid ")
            .str(self.var)
            .str("=\"")
            .bytes(self.value)
            .str("\": expected ")
            .str(self.expected)
            .str("\n")
            .finish()
    }
}

impl core::fmt::Display for EnvError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 512];
        let line = self.render(&mut buf);
        f.write_str(
            core::str::from_utf8(line)
                .unwrap_or("frostheap: invalid environment")
                .trim_end(),
        )
    }
}

impl std::error::Error for EnvError {}

/// One variable: its name for messages and for the lookup.
struct Var {
    name: &'static str,
    c_name: &'static CStr,
}

const MIN: Var = Var {
    name: "FROSTHEAP_MIN",
    c_name: c"FROSTHEAP_MIN",
};
const MAX: Var = Var {
    name: "FROSTHEAP_MAX",
    c_name: c"FROSTHEAP_MAX",
};
const HUGE_PAGES: Var = Var {
    name: "FROSTHEAP_HUGE_PAGES",
    c_name: c"FROSTHEAP_HUGE_PAGES",
};
const PROTECT: Var = Var {
    name: "FROSTHEAP_PROTECT",
    c_name: c"FROSTHEAP_PROTECT",
};
const ON_VIOLATION: Var = Var {
    name: "FROSTHEAP_ON_VIOLATION",
    c_name: c"FROSTHEAP_ON_VIOLATION",
};
const TRACK_ALLOCS: Var = Var {
    name: "FROSTHEAP_TRACK_ALLOCS",
    c_name: c"FROSTHEAP_TRACK_ALLOCS",
};
const STATS: Var = Var {
    name: "FROSTHEAP_STATS",
    c_name: c"FROSTHEAP_STATS",
};

/// `FROSTHEAP_MAX` as the environment spells it (`None`: unset), for a
/// message about a value [`from_env`] accepted but the process could not
/// use. Never allocates.
pub fn max_text() -> Option<&'static [u8]> {
    variable(MAX.c_name)
}

/// Set by [`ignore_environment`].
static ENVIRONMENT_IGNORED: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Makes this process start frostheap as if no `FROSTHEAP_*` variable
/// were set: for a program whose environment is meant for a child it
/// starts. `frostheap run` sets its child's limit from its flags, and was
/// itself held to the `FROSTHEAP_MAX` it inherited (aborted by a 1M one
/// before it could start its child: a `frostheap run` inside another) or
/// stopped at start-up by a bad one that its `--max-memory` replaces.
/// Takes effect only if called before frostheap first reads the
/// environment (the process's first allocation): from a constructor.
pub fn ignore_environment() {
    ENVIRONMENT_IGNORED.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// A `FROSTHEAP_*` variable's value, unless [`ignore_environment`] was
/// called. Never allocates. Out of line: [`parse`] looks up each variable
/// through it, and start-up code must fit the C library's first window.
#[inline(never)]
fn variable(name: &CStr) -> Option<&'static [u8]> {
    if ENVIRONMENT_IGNORED.load(core::sync::atomic::Ordering::Relaxed) {
        None
    } else {
        os::getenv(name)
    }
}

/// The configuration this process runs with: [`from_env`] the first time
/// it is asked for, the same answer (an error included) every time after.
/// Whatever starts frostheap in the process reads it here — the global
/// allocator at its first allocation, or, without it, the first
/// `Heap::build` or `Runtime::build` — so that the limit in force, the
/// policies a runtime defaults to and the errors they return agree,
/// however the environment changes later. Never allocates, so the global
/// allocator may call it before `main`. Its own lock, not std's
/// `OnceLock`: std's `Once` code lies far from frostheap's in the library,
/// and running it at start-up made every process map a second (and, with
/// `FROSTHEAP_MIN`, a third) 64 KiB window of the library's code (the test
/// `the_library_touches_one_window_of_code_and_one_of_tables`).
///
/// Once read, the answer is taken without the lock: a thread that forked
/// while another held it (builds run at any time) would leave the child's
/// next build waiting for it for good. Only a `fork` during the first
/// read itself, a few microseconds at start-up, can still do that.
pub fn from_env_once() -> Result<EnvConfig, EnvError> {
    use core::sync::atomic::{AtomicBool, Ordering};
    /// The answer, once read.
    struct Read(core::cell::UnsafeCell<Option<Result<EnvConfig, EnvError>>>);
    // SAFETY: the cell is written once, under `LOCK`, before `DONE` is
    // set (Release); it is read under `LOCK` or after `DONE` is seen set
    // (Acquire), and never written again.
    unsafe impl Sync for Read {}
    static LOCK: crate::sync::RawLock = crate::sync::RawLock::new();
    static READ: Read = Read(core::cell::UnsafeCell::new(None));
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.load(Ordering::Acquire) {
        // SAFETY: written once before DONE was set, never again.
        if let Some(r) = unsafe { *READ.0.get() } {
            return r;
        }
    }
    let _held = LOCK.lock();
    // SAFETY: under `LOCK`; readers without it wait for DONE, set below.
    let read = unsafe { &mut *READ.0.get() };
    let r = *read.get_or_insert_with(from_env);
    DONE.store(true, Ordering::Release);
    r
}

/// Reads the configuration from the process environment (every call reads
/// it again; frostheap itself uses [`from_env_once`]).
pub fn from_env() -> Result<EnvConfig, EnvError> {
    // Each fact read once: the cgroup's limit is a few files to open.
    let physical = os::physical_memory();
    let cgroup = os::cgroup::memory_limit();
    parse(
        variable,
        default_max(physical, cgroup, os::address_space_limit()),
        memory_of(physical, cgroup),
    )
}

/// The memory this process may use: physical memory, or its cgroup's
/// memory limit when that is less (a container's). What a percentage in
/// `FROSTHEAP_MAX` or `FROSTHEAP_MIN` is a percentage of.
pub fn process_memory() -> usize {
    memory_of(os::physical_memory(), os::cgroup::memory_limit())
}

/// [`process_memory`] of these facts.
fn memory_of(physical: usize, cgroup_limit: Option<usize>) -> usize {
    physical.min(cgroup_limit.unwrap_or(usize::MAX))
}

/// What `FROSTHEAP_MAX` and `FROSTHEAP_MIN` (and `frostheap run
/// --max-memory`) accept.
pub const LIMIT_SYNTAX: &str = "a byte size (a number with an optional binary unit B, K, M, G, T, P, E, or KB/KiB, MB/MiB, ..., EB/EiB, any case, at most 9 decimals, e.g. 64M, 1G, 1.5GiB) or a whole percentage, 1% to 100%, of the memory the process may use (physical memory, or its cgroup's limit if less), e.g. 75%";

/// Parses a limit: a byte size (`parse_size_bytes`), or `N%` (a whole
/// `N` from 1 to 100) of `memory` ([`process_memory`]), rounded down to a
/// byte, as a JVM's `-XX:MaxRAMPercentage` is of the same memory. Never
/// allocates.
pub fn parse_limit_bytes(text: &[u8], memory: usize) -> Result<usize, SizeError> {
    let trimmed = text.trim_ascii();
    let Some(number) = trimmed.strip_suffix(b"%") else {
        return parse_size_bytes(text);
    };
    let number = number.trim_ascii_end();
    if number.is_empty() || number.len() > 3 || !number.iter().all(u8::is_ascii_digit) {
        return Err(SizeError::new(SizeErrorKind::Malformed, text));
    }
    let percent = number
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    if !(1..=100).contains(&percent) {
        return Err(SizeError::new(SizeErrorKind::Malformed, text));
    }
    // memory * percent / 100 exactly, without overflow near the top and
    // without a u128 division (the compiler's `__udivti3`, laid far from
    // the start-up code: a second 64 KiB window of code for every process
    // started with `FROSTHEAP_MAX=75%`).
    Ok(memory / 100 * percent + memory % 100 * percent / 100)
}

/// [`default_max`] of this machine and process: its physical memory, its
/// cgroup's memory limit and its address-space limit.
pub fn default_max_here() -> usize {
    default_max(
        os::physical_memory(),
        os::cgroup::memory_limit(),
        os::address_space_limit(),
    )
}

/// `FROSTHEAP_MAX` when it is unset: the least of
///
/// - physical memory;
/// - three quarters of the memory limit of the process's cgroup (a
///   container's `--memory`, a systemd unit's `MemoryMax`), if it has one.
///   Past that limit the kernel kills the process, and the cgroup counts
///   more than the heaps: the program's code and stacks, the page cache it
///   dirties, the container's other processes. Three quarters is .NET's
///   default hard limit for its heap in a container (`GCHeapHardLimit`);
///   a JVM's default heap is a quarter of it (`MaxRAMPercentage`), with
///   far more of its memory outside the heap;
/// - under an address-space limit (`ulimit -v`), the largest power of two
///   no more than a quarter of it. Every heap lives in one reservation of
///   address space whose slots are the limit rounded up to a power of
///   two, and the arena takes at most half the address space
///   (`global::heaps::reserve_arena`): so at least two heaps fit, and the
///   program keeps the rest for its code, stacks and mappings. With
///   physical memory as the default the reservation was refused and a
///   program under `ulimit -v` could not start.
pub fn default_max(
    physical_memory: usize,
    cgroup_limit: Option<usize>,
    address_space: Option<usize>,
) -> usize {
    let in_cgroup = cgroup_limit.map_or(usize::MAX, |c| c / 4 * 3);
    let limited = address_space.map_or(usize::MAX, |a| {
        (a / 4).checked_ilog2().map_or(0, |k| 1 << k)
    });
    physical_memory.min(in_cgroup).min(limited).max(MIN_MAX)
}

/// Reads the configuration from `lookup` (a variable's value, or `None`
/// when it is unset); `default_max` is the `max` used when `FROSTHEAP_MAX`
/// is unset ([`default_max`]), and `memory` what a percentage is of
/// ([`process_memory`]). Never allocates.
pub fn parse(
    lookup: impl Fn(&CStr) -> Option<&'static [u8]>,
    default_max: usize,
    memory: usize,
) -> Result<EnvConfig, EnvError> {
    let get = |var: &Var| lookup(var.c_name);
    let bad = |var: &Var, value: &'static [u8], expected: &'static str| EnvError {
        var: var.name,
        value,
        expected,
    };
    let size = |var: &Var| match get(var) {
        None => Ok(None),
        Some(value) => match parse_limit_bytes(value, memory).map_err(|e| e.kind()) {
            Ok(n) => Ok(Some((n, value))),
            Err(SizeErrorKind::Malformed) => Err(bad(var, value, LIMIT_SYNTAX)),
            Err(SizeErrorKind::TooLarge) => Err(bad(var, value, "a size that fits in 64 bits")),
            Err(_) => Err(bad(var, value, crate::size::WHOLE_BYTES)),
        },
    };
    let min = size(&MIN)?;
    let max = size(&MAX)?;
    let huge_pages = match get(&HUGE_PAGES) {
        None => HugePages::Auto,
        Some(value) => HugePages::parse_bytes(value)
            .ok_or_else(|| bad(&HUGE_PAGES, value, "auto, on or off"))?,
    };
    if let Some((max, value)) = max {
        if max < MIN_MAX {
            return Err(bad(&MAX, value, MIN_MAX_EXPECTED));
        }
    }
    let protect = match get(&PROTECT) {
        None => Protect::Auto,
        Some(value) => Protect::parse_bytes(value)
            .ok_or_else(|| bad(&PROTECT, value, "auto, pkey, mprotect or off"))?,
    };
    let on_violation = match get(&ON_VIOLATION) {
        None => OnViolation::Rollback,
        Some(value) => OnViolation::parse_bytes(value)
            .ok_or_else(|| bad(&ON_VIOLATION, value, "rollback, cancel, abort or audit"))?,
    };
    let track_allocs = match get(&TRACK_ALLOCS) {
        None | Some(b"0") | Some(b"") => false,
        Some(b"1") => true,
        Some(value) => return Err(bad(&TRACK_ALLOCS, value, "0 or 1")),
    };
    let stats = match get(&STATS) {
        None | Some(b"0") | Some(b"") => false,
        Some(b"1") => true,
        Some(value) => return Err(bad(&STATS, value, "0 or 1")),
    };
    let max_from_env = max.is_some();
    let max_bytes = max.map_or(default_max, |(n, _)| n);
    let min_bytes = min.map_or(0, |(n, _)| n);
    if let Some((min, value)) = min {
        if min > max_bytes {
            return Err(bad(
                &MIN,
                value,
                "a size no larger than FROSTHEAP_MAX (or, when it is unset, its default, which frostheap info shows)",
            ));
        }
    }
    Ok(EnvConfig {
        min: min_bytes,
        max: max_bytes,
        max_from_env,
        huge_pages,
        protect,
        on_violation,
        track_allocs,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHYS: usize = 8 << 30;
    /// What a percentage is of, in these tests.
    const MEMORY: usize = 6 << 30;

    /// Parses an environment given as (name, value) pairs.
    fn env(vars: &'static [(&'static str, &'static str)]) -> Result<EnvConfig, EnvError> {
        parse(
            |name| {
                vars.iter()
                    .find(|(n, _)| n.as_bytes() == name.to_bytes())
                    .map(|(_, v)| v.as_bytes())
            },
            PHYS,
            MEMORY,
        )
    }

    fn error_line(e: EnvError) -> String {
        let mut buf = [0u8; 512];
        String::from_utf8(e.render(&mut buf).to_vec()).unwrap()
    }

    #[test]
    fn an_empty_environment_gives_the_defaults() {
        let c = env(&[]).unwrap();
        assert_eq!(
            c,
            EnvConfig {
                min: 0,
                max: PHYS,
                max_from_env: false,
                huge_pages: HugePages::Auto,
                protect: Protect::Auto,
                on_violation: OnViolation::Rollback,
                track_allocs: false,
                stats: false,
            }
        );
    }

    #[test]
    fn every_variable_is_read() {
        let c = env(&[
            ("FROSTHEAP_MIN", "64M"),
            ("FROSTHEAP_MAX", "1.5GiB"),
            ("FROSTHEAP_HUGE_PAGES", "off"),
            ("FROSTHEAP_PROTECT", "mprotect"),
            ("FROSTHEAP_ON_VIOLATION", "audit"),
            ("FROSTHEAP_TRACK_ALLOCS", "1"),
            ("FROSTHEAP_STATS", "1"),
        ])
        .unwrap();
        assert_eq!(c.min, 64 << 20);
        assert_eq!(c.max, 3 << 29);
        assert!(c.max_from_env);
        assert_eq!(c.huge_pages, HugePages::Off);
        assert_eq!(c.protect, Protect::Mprotect);
        assert_eq!(c.on_violation, OnViolation::Audit);
        assert!(c.track_allocs);
        assert!(c.stats);
    }

    #[test]
    fn the_printed_names_are_the_words_the_variables_accept() {
        for p in [
            Protect::Auto,
            Protect::Pkey,
            Protect::Mprotect,
            Protect::Off,
        ] {
            assert_eq!(Protect::parse(&p.to_string()), Some(p), "{p}");
        }
        for h in [HugePages::Auto, HugePages::On, HugePages::Off] {
            assert_eq!(
                HugePages::parse_bytes(h.to_string().as_bytes()),
                Some(h),
                "{h}"
            );
        }
        assert_eq!(Protect::Auto.to_string(), "auto");
        assert_eq!(HugePages::Auto.to_string(), "auto");
    }

    #[test]
    fn every_accepted_word_parses() {
        for (word, want) in [
            ("auto", Protect::Auto),
            ("pkey", Protect::Pkey),
            ("mprotect", Protect::Mprotect),
            ("off", Protect::Off),
        ] {
            assert_eq!(Protect::parse(word), Some(want));
        }
        for (word, want) in [
            ("cancel", OnViolation::Cancel),
            ("abort", OnViolation::Abort),
            ("audit", OnViolation::Audit),
        ] {
            assert_eq!(OnViolation::parse(word), Some(want));
            assert_eq!(OnViolation::from_u32(want as u32), want);
        }
        for (word, want) in [
            ("auto", HugePages::Auto),
            ("on", HugePages::On),
            ("off", HugePages::Off),
        ] {
            assert_eq!(HugePages::parse_bytes(word.as_bytes()), Some(want));
        }
        for empty in ["0", ""] {
            let vars: &'static [(&str, &str)] =
                Box::leak(Box::new([("FROSTHEAP_TRACK_ALLOCS", empty)]));
            assert!(!env(vars).unwrap().track_allocs);
            let vars: &'static [(&str, &str)] = Box::leak(Box::new([("FROSTHEAP_STATS", empty)]));
            assert!(!env(vars).unwrap().stats);
        }
    }

    /// An environment, and the variable, value and expectation its error names.
    type BadCase = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static str,
        &'static str,
    );

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
        let cases: [BadCase; 15] = [
            (&[("FROSTHEAP_PROTECT", "sometimes")], "FROSTHEAP_PROTECT", "sometimes", "auto, pkey, mprotect or off"),
            (&[("FROSTHEAP_ON_VIOLATION", "explode")], "FROSTHEAP_ON_VIOLATION", "explode", "rollback, cancel, abort or audit"),
            (&[("FROSTHEAP_HUGE_PAGES", "yes")], "FROSTHEAP_HUGE_PAGES", "yes", "auto, on or off"),
            (&[("FROSTHEAP_TRACK_ALLOCS", "true")], "FROSTHEAP_TRACK_ALLOCS", "true", "0 or 1"),
            (&[("FROSTHEAP_STATS", "abc")], "FROSTHEAP_STATS", "abc", "0 or 1"),
            (&[("FROSTHEAP_STATS", "2")], "FROSTHEAP_STATS", "2", "0 or 1"),
            (&[("FROSTHEAP_MAX", "lots")], "FROSTHEAP_MAX", "lots", LIMIT_SYNTAX),
            (&[("FROSTHEAP_MAX", "150%")], "FROSTHEAP_MAX", "150%", LIMIT_SYNTAX),
            (&[("FROSTHEAP_MAX", "7.5%")], "FROSTHEAP_MAX", "7.5%", LIMIT_SYNTAX),
            (&[("FROSTHEAP_MAX", "0%")], "FROSTHEAP_MAX", "0%", LIMIT_SYNTAX),
            (&[("FROSTHEAP_MAX", "99999999999T")], "FROSTHEAP_MAX", "99999999999T", "a size that fits in 64 bits"),
            (&[("FROSTHEAP_MAX", "1.1G")], "FROSTHEAP_MAX", "1.1G", crate::size::WHOLE_BYTES),
            (&[("FROSTHEAP_MAX", "4K")], "FROSTHEAP_MAX", "4K", "at least 128K (two heap pages: each size class a program allocates in takes a 64 KiB page of its own, and Rust's start-up alone uses two)"),
            (&[("FROSTHEAP_MAX", "64K")], "FROSTHEAP_MAX", "64K", "at least 128K (two heap pages: each size class a program allocates in takes a 64 KiB page of its own, and Rust's start-up alone uses two)"),
            (&[("FROSTHEAP_MIN", "2G"), ("FROSTHEAP_MAX", "1G")], "FROSTHEAP_MIN", "2G", "a size no larger than FROSTHEAP_MAX (or, when it is unset, its default, which frostheap info shows)"),
        ];
        for (vars, var, value, expected) in cases {
            let e = env(vars).expect_err(var);
            assert_eq!(
                (e.var, e.value, e.expected),
                (var, value.as_bytes(), expected)
            );
            let line = error_line(e);
            assert_eq!(
                line,
                format!("frostheap: invalid {var}=\"{value}\": expected {expected}\n")
            );
            assert_eq!(e.to_string(), line.trim_end());
        }
    }

    #[test]
    fn min_above_physical_memory_is_refused_when_max_is_unset() {
        let e = env(&[("FROSTHEAP_MIN", "9G")]).unwrap_err();
        assert_eq!(e.var, "FROSTHEAP_MIN");
        assert!(env(&[("FROSTHEAP_MIN", "8G")]).is_ok());
    }

    #[test]
    fn the_default_max_fits_a_limited_address_space() {
        let gib = 1usize << 30;
        assert_eq!(default_max(24 * gib, None, None), 24 * gib);
        assert_eq!(default_max(24 * gib, None, Some(4 * gib)), gib);
        assert_eq!(default_max(gib, None, Some(64 * gib)), gib);
        // A power of two no more than a quarter, and never below MIN_MAX.
        assert_eq!(default_max(24 * gib, None, Some(4_096_000_000)), 512 << 20);
        assert_eq!(default_max(24 * gib, None, Some(8 * gib + 1)), 2 * gib);
        assert_eq!(default_max(24 * gib, None, Some(4096)), MIN_MAX);
        assert_eq!(default_max(24 * gib, None, Some(0)), MIN_MAX);
    }

    #[test]
    fn a_percentage_is_of_the_memory_the_process_may_use() {
        let gib = 1usize << 30;
        assert_eq!(parse_limit_bytes(b"75%", 4 * gib), Ok(3 * gib));
        assert_eq!(parse_limit_bytes(b" 100 % ", 4 * gib), Ok(4 * gib));
        assert_eq!(parse_limit_bytes(b"1%", 100), Ok(1));
        assert_eq!(parse_limit_bytes(b"33%", 100), Ok(33));
        assert_eq!(parse_limit_bytes(b"50%", usize::MAX), Ok(usize::MAX / 2));
        for memory in [
            0,
            99,
            101,
            4095,
            24 * gib + 12_345,
            usize::MAX - 1,
            usize::MAX,
        ] {
            for percent in 1..=100usize {
                let want = (memory as u128 * percent as u128 / 100) as usize;
                let text = format!("{percent}%");
                assert_eq!(
                    parse_limit_bytes(text.as_bytes(), memory),
                    Ok(want),
                    "{text} of {memory}"
                );
            }
        }
        assert_eq!(parse_limit_bytes(b"64M", 4 * gib), Ok(64 << 20));
        for bad in ["0%", "101%", "1000%", "%", "7.5%", "-5%", "50%%", "G%"] {
            assert_eq!(
                parse_limit_bytes(bad.as_bytes(), 4 * gib).map_err(|e| e.kind()),
                Err(SizeErrorKind::Malformed),
                "{bad}"
            );
        }
        let c = env(&[("FROSTHEAP_MAX", "50%"), ("FROSTHEAP_MIN", "10%")]).unwrap();
        assert_eq!(
            (c.max, c.min, c.max_from_env),
            (MEMORY / 2, MEMORY / 10, true)
        );
        assert!(env(&[("FROSTHEAP_MAX", "5%"), ("FROSTHEAP_MIN", "10%")]).is_err());
    }

    #[test]
    fn the_default_max_is_three_quarters_of_a_cgroup_limit() {
        let gib = 1usize << 30;
        assert_eq!(default_max(24 * gib, Some(4 * gib), None), 3 * gib);
        // Physical memory below the cgroup's limit: physical memory.
        assert_eq!(default_max(2 * gib, Some(4 * gib), None), 2 * gib);
        // The least of the three.
        assert_eq!(default_max(24 * gib, Some(4 * gib), Some(8 * gib)), 2 * gib);
        assert_eq!(
            default_max(24 * gib, Some(2 * gib), Some(64 * gib)),
            1536 << 20
        );
        assert_eq!(default_max(24 * gib, Some(0), None), MIN_MAX);
    }

    /// `FROSTHEAP_MIN` up to `FROSTHEAP_MAX` is accepted; the main heap's
    /// pre-commit stops an eighth of the limit (8 MiB at least) short of it.
    #[test]
    fn the_precommit_leaves_an_eighth_of_the_limit_to_the_rest() {
        let mib = 1usize << 20;
        assert_eq!(main_precommit(64 * mib, 64 * mib), 56 * mib);
        assert_eq!(main_precommit(32 * mib, 64 * mib), 32 * mib);
        assert_eq!(main_precommit(1 << 30, 1 << 30), 896 * mib);
        assert_eq!(main_precommit(8 * mib, 8 * mib), 0);
        assert_eq!(main_precommit(0, 1 << 30), 0);
        // Rounded down to a heap page.
        assert_eq!(main_precommit(100 * mib, 100 * mib + 1), 0x5780000);
        let c = env(&[("FROSTHEAP_MIN", "1G"), ("FROSTHEAP_MAX", "1G")]).unwrap();
        assert_eq!((c.min, c.max), (1 << 30, 1 << 30));
    }

    #[test]
    fn the_smallest_max_is_two_heap_pages() {
        assert_eq!(env(&[("FROSTHEAP_MAX", "128K")]).unwrap().max, MIN_MAX);
        assert!(env(&[("FROSTHEAP_MAX", "131071")]).is_err());
    }
}
