//! [`Violation`]: a write by a parallel task into a guarded heap, as the
//! caller gets it in `Error::Violation`, and its report, read like a
//! sanitizer's: where, in which heap and block, by whom (thread, task
//! item), at which instruction (function and file:line), and — with
//! `FROSTHEAP_TRACK_ALLOCS=1` — where the block was allocated.
//!
//! This is plain data, below the heaps and the trap: the crate's one error
//! type carries it, and every layer returns that type. The trap fills it
//! in from the fault handler's numbers (`trap::report`); symbols are
//! resolved here, on first use.

use core::fmt;

use crate::config::{Backend, OnViolation};
use crate::size::Bytes;

/// How the guarded memory was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A store by the task's thread (caught by the MMU).
    Write,
    /// A write the kernel made on the task's behalf (`read(2)` into frozen
    /// memory failed with `EFAULT`).
    KernelWrite,
}

/// A write by a parallel task into a guarded heap.
#[derive(Clone, Debug)]
pub struct Violation {
    pub(crate) address: usize,
    pub(crate) heap_name: String,
    pub(crate) heap_base: usize,
    pub(crate) allocation: Option<(usize, usize)>,
    pub(crate) access: Access,
    pub(crate) thread_id: u32,
    pub(crate) thread_name: Option<String>,
    pub(crate) item_index: Option<usize>,
    pub(crate) ip: usize,
    pub(crate) backend: Backend,
    pub(crate) policy: OnViolation,
    /// Rollback: the stores the phase undid (this one and every other).
    pub(crate) stores_undone: usize,
    /// Rollback: values the phase's tasks made that need drop, kept
    /// undropped because the phase's stores were undone (set by the batch
    /// engine once it has freed what held them).
    pub(crate) values_kept: usize,
    /// A rollback runtime kept the phase's stores: its tasks had `&mut`
    /// access to values that own memory (`Runtime::run_phase`'s `keep`).
    pub(crate) kept: bool,
    /// Why it kept them: a worker's undo log filled (with `kept`).
    pub(crate) log_filled: bool,
    /// The other violating stores of the same phase: (address, item).
    pub(crate) others: Vec<(usize, Option<usize>)>,
    /// Violating stores of the same phase counted and not listed in
    /// `others` (past each worker's first 256).
    pub(crate) unlisted: usize,
    /// Rollback: tasks of the phase cancelled instead, because a store
    /// could not be stepped (their threads are parked).
    pub(crate) cancelled: usize,
    /// Workers abandoned because the phase made no progress for
    /// `no_progress_timeout` after this violation parked a worker.
    pub(crate) abandoned: usize,
    pub(crate) no_progress_timeout: core::time::Duration,
    /// The violating thread's frames: the faulting instruction, then
    /// return addresses (empty when no stack copy was taken).
    pub(crate) frames: Vec<usize>,
    /// Symbols, resolved on first use (reading debug info costs far more
    /// than everything else in a report; the caller gets the error first).
    pub(crate) resolved: std::sync::OnceLock<Resolved>,
}

/// The symbolised parts of a report.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolved {
    function: Option<String>,
    location: Option<(String, u32)>,
    allocated_at: Vec<String>,
    backtrace: Vec<String>,
}

impl Resolved {
    fn of(ip: usize, allocation: Option<(usize, usize)>, frames: &[usize]) -> Resolved {
        let mut function = None;
        let mut location = None;
        if ip != 0 {
            // The handler saw the address of the faulting instruction
            // itself, not a return address. `backtrace::resolve` treats
            // every address as a return address and looks up `addr - 1`
            // (the previous instruction: another line, no line at all, or
            // the previous function when the store is a function's first
            // instruction), so hand it `ip + 1`. Inlining yields several
            // frames, innermost first: report the innermost one that is
            // the program's own code (not std's or a registry crate's),
            // falling back to the innermost.
            type Frame = (Option<String>, Option<(String, u32)>);
            let mut frames: Vec<Frame> = Vec::new();
            backtrace::resolve((ip + 1) as *mut core::ffi::c_void, |sym| {
                let name = sym.name().map(|n| format!("{n:#}"));
                let loc = match (sym.filename(), sym.lineno()) {
                    (Some(file), Some(line)) => Some((file.display().to_string(), line)),
                    _ => None,
                };
                frames.push((name, loc));
            });
            let is_own = |loc: &Option<(String, u32)>| {
                loc.as_ref().is_some_and(|(f, _)| {
                    !f.starts_with("/rustc/") && !f.contains("/.cargo/registry/")
                })
            };
            let pick = frames.iter().position(|(_, l)| is_own(l)).unwrap_or(0);
            if let Some((name, loc)) = frames.get(pick).cloned() {
                function = name;
                location = loc;
            }
        }
        let allocated_at = allocation
            .map(|(base, _)| crate::track::site_of(base))
            .unwrap_or_default();
        Resolved {
            function,
            location,
            allocated_at,
            backtrace: symbolise(frames),
        }
    }
}

/// One line per frame: `function at file:line` (inlined functions each
/// get their own line), innermost first, up to the task's own closure: the
/// runtime's frames that called it (from the first `frostheap::runtime::`
/// function on) say nothing about the violation and are left out. The
/// first address is the faulting instruction itself, the rest return
/// addresses (`backtrace::resolve` looks up `addr - 1` for every address,
/// so the first is passed as `ip + 1`).
fn symbolise(frames: &[usize]) -> Vec<String> {
    let mut lines = Vec::new();
    // `frostheap::runtime::..` or, for a trait method, `<frostheap::runtime::.. as ..>`.
    let runtime = |l: &String| {
        l.trim_start_matches('<')
            .starts_with("frostheap::runtime::")
    };
    for (k, &addr) in frames.iter().enumerate() {
        if lines.iter().any(runtime) {
            break;
        }
        let a = if k == 0 { addr + 1 } else { addr };
        let before = lines.len();
        backtrace::resolve(a as *mut core::ffi::c_void, |sym| {
            let name = sym
                .name()
                .map(|n| format!("{n:#}"))
                .unwrap_or_else(|| "?".into());
            match (sym.filename(), sym.lineno()) {
                (Some(file), Some(line)) => {
                    lines.push(format!("{name} at {}:{line}", file.display()))
                }
                _ => lines.push(name),
            }
        });
        if lines.len() == before {
            lines.push(format!("{addr:#x}"));
        }
    }
    if let Some(cut) = lines.iter().position(runtime) {
        lines.truncate(cut);
    }
    trim_std_tail(&mut lines);
    lines
}

/// Drops the standard library's frames between the task's outermost frame
/// and the runtime (the iterator adapters that called the closure): they
/// are the same for every violation. std frames above the task's own (a
/// `Mutex::lock` that wrote the frozen lock word) stay: they say how the
/// store happened. A frame is std's when its source is under the
/// toolchain's `/rustc/<hash>/library/`, or it has no source and a
/// `core::`/`std::`/`alloc::` name. Keeps at least one frame.
fn trim_std_tail(lines: &mut Vec<String>) {
    let std_frame = |l: &String| {
        (l.contains("/rustc/") && l.contains("/library/"))
            || !l.contains(" at ")
                && ["core::", "std::", "alloc::"]
                    .iter()
                    .any(|p| l.starts_with(p))
    };
    while lines.len() > 1 && lines.last().is_some_and(std_frame) {
        lines.pop();
    }
}

impl Violation {
    /// The address written.
    pub fn address(&self) -> usize {
        self.address
    }
    /// The guarded heap's name.
    pub fn heap_name(&self) -> &str {
        &self.heap_name
    }
    /// Offset of the address from the heap's base.
    pub fn offset(&self) -> usize {
        self.address - self.heap_base
    }
    /// The containing allocation: (base, usable size).
    pub fn allocation(&self) -> Option<(usize, usize)> {
        self.allocation
    }
    /// Index of the input item the task was processing.
    pub fn item_index(&self) -> Option<usize> {
        self.item_index
    }
    /// Kernel thread id of the violating task.
    pub fn thread_id(&self) -> u32 {
        self.thread_id
    }
    /// Name of the violating thread.
    pub fn thread_name(&self) -> Option<&str> {
        self.thread_name.as_deref()
    }
    /// Address of the faulting instruction.
    pub fn instruction(&self) -> usize {
        self.ip
    }
    fn resolved(&self) -> &Resolved {
        self.resolved
            .get_or_init(|| Resolved::of(self.ip, self.allocation, &self.frames))
    }
    /// The function containing the faulting instruction, if symbols allow.
    pub fn function(&self) -> Option<&str> {
        self.resolved().function.as_deref()
    }
    /// Source file and line of the faulting instruction.
    pub fn location(&self) -> Option<(&str, u32)> {
        self.resolved()
            .location
            .as_ref()
            .map(|(f, l)| (f.as_str(), *l))
    }
    /// How the memory was written.
    pub fn access(&self) -> Access {
        self.access
    }
    /// The protection backend that caught it.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The policy applied.
    pub fn policy(&self) -> OnViolation {
        self.policy
    }
    /// Where the violated block was allocated (`FROSTHEAP_TRACK_ALLOCS=1`).
    pub fn allocated_at(&self) -> &[String] {
        &self.resolved().allocated_at
    }
    /// The violating thread's frames, innermost first (`function at
    /// file:line`), from a copy of its stack taken at the violation.
    pub fn backtrace(&self) -> &[String] {
        &self.resolved().backtrace
    }
    /// Under rollback: how many violating stores the phase undid.
    pub fn stores_undone(&self) -> usize {
        self.stores_undone
    }
    /// Under rollback, when stores were undone: how many values the
    /// phase's tasks made (results, partials, a kept error or item) were
    /// kept, never dropped, because their type needs drop and one may
    /// rest on a store that was undone; what they own stays allocated for
    /// the life of the process (`RuntimeStats::values_kept` sums them).
    /// Values that need no drop own nothing: they and what held them are
    /// freed, and they are not counted.
    pub fn values_kept(&self) -> usize {
        self.values_kept
    }
    /// Whether a runtime under the rollback policy kept the phase's
    /// violating stores instead of undoing them (then [`Violation::policy`]
    /// is [`OnViolation::Audit`], what was applied). It does so for a
    /// phase whose tasks get `&mut` access to values that own memory
    /// (`for_each_mut`, `par(&mut v)`, `par_chunks_mut`, over a type that
    /// needs `Drop`): such a value may own the memory a task
    /// wrote (a `Vec` pushed to, whose buffer main allocated), and an undo
    /// would leave it disagreeing with that memory (its length counting an
    /// element the undo took back), which is unsound to drop. It does so
    /// too for a phase in which a worker's undo log (1 MiB: 26,000 to
    /// 32,000 scattered stores, as each changes 8 bytes or fewer) filled: the stores past it could not be
    /// undone, and undoing only those before would leave what the tasks
    /// built half as it was. The call still returns the violation.
    pub fn stores_kept(&self) -> bool {
        self.kept
    }
    /// The other violating stores of the same phase: (address, item
    /// index). Each worker's first 256 stores of a phase are listed; the
    /// rest are counted in [`Violation::violating_stores`].
    pub fn other_stores(&self) -> &[(usize, Option<usize>)] {
        &self.others
    }
    /// How many violating stores the phase made in all, this one included,
    /// listed in [`Violation::other_stores`] or not.
    pub fn violating_stores(&self) -> usize {
        1 + self.others.len() + self.unlisted
    }
    /// Under rollback: tasks of the phase that were cancelled instead of
    /// running to their end, because a store could not be stepped through
    /// alone (access to it could not be opened): that store was not made,
    /// and the thread is parked for good, as under the cancel policy
    /// (counted in `RuntimeStats::parked_workers`). A full undo log no
    /// longer cancels a task: the phase keeps its stores instead
    /// ([`Violation::stores_kept`]).
    pub fn tasks_cancelled(&self) -> usize {
        self.cancelled
    }
    /// Tasks of the same phase that made no progress for the runtime's
    /// `no_progress_timeout` after this violation and were cancelled too
    /// (most likely blocked on a lock the cancelled task held).
    pub fn tasks_abandoned(&self) -> usize {
        self.abandoned
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.policy {
            OnViolation::Audit if self.kept && self.log_filled => {
                "its stores were kept: a worker's undo log filled, and a phase undone in part would leave what its tasks built inconsistent"
            }
            OnViolation::Audit if self.kept => {
                "its stores were kept: the phase lent `&mut` values that own memory, which an undo would leave inconsistent"
            }
            OnViolation::Cancel => "the task was cancelled and the store did not happen",
            OnViolation::Audit => "audit mode: the store went through",
            OnViolation::Abort => "aborting",
            OnViolation::Rollback if self.cancelled > 0 => {
                "the stores were undone, and a task whose store could not be undone was cancelled: see below"
            }
            OnViolation::Rollback => "the task ran to its end and its stores were undone",
        };
        writeln!(
            f,
            "==frostheap== VIOLATION: write to frozen heap \"{}\" ({what})",
            self.heap_name
        )?;
        let access = match self.access {
            Access::Write => "store",
            Access::KernelWrite => "kernel write (read(2) into frozen memory: EFAULT)",
        };
        writeln!(
            f,
            "  address  {:#x} = heap \"{}\" + {:#x}   [{}, caught by {}]",
            self.address,
            self.heap_name,
            self.offset(),
            access,
            self.backend.name()
        )?;
        match self.allocation {
            Some((base, size)) => writeln!(
                f,
                "  block    {:#x}..{:#x}, a {} block; the write is {} bytes into it",
                base,
                base + size,
                Bytes(size),
                self.address - base
            )?,
            None => writeln!(f, "  block    (not inside an allocated block's geometry)")?,
        }
        write!(f, "  thread   tid {}", self.thread_id)?;
        if let Some(n) = &self.thread_name {
            write!(f, " \"{n}\"")?;
        }
        match self.item_index {
            Some(i) => writeln!(f, ", task item #{i}")?,
            None => writeln!(f)?,
        }
        if self.ip != 0 {
            write!(f, "  at       {:#x}", self.ip)?;
            if let Some(func) = self.function() {
                write!(f, " in {func}")?;
            }
            if let Some((file, line)) = self.location() {
                write!(f, " at {file}:{line}")?;
            }
            writeln!(f)?;
        }
        if !self.backtrace().is_empty() {
            writeln!(f, "  backtrace (violating thread):")?;
            for (k, frame) in self.backtrace().iter().enumerate() {
                writeln!(f, "    #{k:<2} {frame}")?;
            }
        }
        let others = self.others.len() + self.unlisted;
        if others > 0 {
            writeln!(
                f,
                "  also     {others} other violating store{} in this phase:",
                if others == 1 { "" } else { "s" }
            )?;
            for (addr, item) in self.others.iter().take(16) {
                match item {
                    Some(i) => writeln!(f, "    {addr:#x} by task item #{i}")?,
                    None => writeln!(f, "    {addr:#x}")?,
                }
            }
            if others > 16 {
                write!(f, "    ... and {} more", others - 16.min(self.others.len()))?;
                if self.unlisted > 0 {
                    write!(
                        f,
                        " ({} listed in other_stores(): each worker's first 256 of a phase)",
                        self.others.len()
                    )?;
                }
                writeln!(f)?;
            }
        }
        if self.policy == OnViolation::Rollback {
            let n = self.stores_undone;
            let stores = if n == 1 { "store" } else { "stores" };
            write!(f, "  rollback {n} {stores} undone; every guarded heap is as it was before the phase; ")?;
            match self.values_kept {
                0 => writeln!(f, "no value its tasks made is kept (none needs drop, so none owns memory)")?,
                k => writeln!(f, "{k} value(s) its tasks made are kept, never dropped, with what they own (one may rest on a store that was undone: RuntimeStats::values_kept)")?,
            }
            if self.cancelled > 0 {
                writeln!(
                    f,
                    "  cancelled {} task(s): a store could not be stepped, so that store was not made \
                     and the task did not run to its end; its thread is parked for good, keeping any \
                     lock it held (RuntimeStats::parked_workers)",
                    self.cancelled
                )?;
            }
        }
        if !self.allocated_at().is_empty() {
            writeln!(f, "  allocated at:")?;
            for frame in self.allocated_at() {
                writeln!(f, "    {frame}")?;
            }
        }
        if self.abandoned > 0 {
            writeln!(
                f,
                "  blocked  {} other task(s) made no progress for {} ms after this violation and were cancelled too: \
                 they are most likely blocked on a lock the cancelled task holds",
                self.abandoned,
                self.no_progress_timeout.as_millis()
            )?;
        }
        if self.policy == OnViolation::Cancel {
            write!(
                f,
                "  note     the task's thread is parked for good; locks it held stay held"
            )?;
        } else if self.log_filled {
            write!(
                f,
                "  note     a task made more violating stores than its worker's undo log holds (1 MiB: 26,000 \
                 to 32,000 scattered stores), so the phase kept them all, as the audit policy does; \
                 its tasks ran to their end and released their locks"
            )?;
        } else if self.kept {
            write!(
                f,
                "  note     the tasks had `&mut` access to values of a type that owns memory; a value built \
                 outside unguarded(..) owns memory in a guarded heap (a Vec's buffer), which tasks cannot \
                 write: build such values inside unguarded(..)"
            )?;
        } else {
            write!(
                f,
                "  note     guarded data is frozen during parallel phases; tasks may write their own allocations \
                 and memory made inside unguarded(..): a Shared<T> holds T there, but what T owns (a Vec's \
                 buffer, a map's table) must be built and grown inside unguarded(..) too"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::trim_std_tail;

    #[test]
    fn std_frames_below_the_task_are_left_out_and_those_above_it_kept() {
        let std =
            |f: &str| format!("{f} at /rustc/5980761/library/core/src/iter/adapters/map.rs:88");
        let mut lines = vec![
            std("core::sync::atomic::atomic_compare_exchange"),
            std("std::sync::poison::mutex::Mutex<T>::lock"),
            "app::task::{{closure}} at src/main.rs:40".to_string(),
            std("core::iter::adapters::map::map_fold::{{closure}}"),
            "core::iter::traits::iterator::Iterator::for_each".to_string(),
        ];
        trim_std_tail(&mut lines);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[2].starts_with("app::task"));

        let mut only_std = vec![std("core::ptr::write"), std("core::iter::Iterator::fold")];
        trim_std_tail(&mut only_std);
        assert_eq!(only_std.len(), 1, "the faulting frame always stays");
    }
}
