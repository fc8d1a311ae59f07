//! [`RuntimeBuilder`]: a runtime's configuration and its start-up.
//!
//! `build` reads the environment (`FROSTHEAP_PROTECT`,
//! `FROSTHEAP_ON_VIOLATION`, `FROSTHEAP_TRACK_ALLOCS`) for what the builder
//! leaves unset, resolves the protection backend, installs the fault
//! handler, registers the guarded heaps, and starts the workers. Everything
//! it allocates for the runtime's own use (the control block, the worker
//! list, the threads) is made inside [`unguarded`], so tasks never find it
//! frozen.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Mutex;

use super::pool::{Runtime, RuntimeStats, DEFAULT_MAX_PARKED};
use super::recovery::DEFAULT_NO_PROGRESS_TIMEOUT;
use super::scratch::Scratch;
use super::worker::ControlBlock;
use crate::error::Error;
use crate::global::unguarded;
use crate::heap::Heap;
use crate::trap::{self, Backend, OnViolation, Protect};

/// Builds a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    workers: Option<usize>,
    guards: Vec<Heap>,
    guard_main: bool,
    protect: Option<Protect>,
    on_violation: Option<OnViolation>,
    memory_budget: Option<usize>,
    /// `None`: the default, [`DEFAULT_MAX_PARKED`] or the room the workers
    /// leave if less ([`RuntimeBuilder::max_parked`]).
    max_parked: Option<usize>,
    no_progress_timeout: core::time::Duration,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            workers: None,
            guards: Vec::new(),
            guard_main: true,
            protect: None,
            on_violation: None,
            memory_budget: None,
            max_parked: None,
            no_progress_timeout: DEFAULT_NO_PROGRESS_TIMEOUT,
        }
    }
}

impl RuntimeBuilder {
    /// Number of worker threads, 1 to 1024 (each keeps one of the
    /// process's 1024 context slots; default: available parallelism, or
    /// 1024 if that is more). [`RuntimeBuilder::build`] refuses any other
    /// count with [`Error::InvalidConfig`] naming `workers`.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Freezes `heap` during phases (a heap given twice is guarded once).
    pub fn guard(mut self, heap: &Heap) -> Self {
        if !self.guards.contains(heap) {
            self.guards.push(heap.clone());
        }
        self
    }

    /// Whether to guard the main heap when `Global` is the global
    /// allocator (default: yes).
    pub fn guard_main_heap(mut self, yes: bool) -> Self {
        self.guard_main = yes;
        self
    }

    /// The protection backend (default: `FROSTHEAP_PROTECT`, else `auto`).
    pub fn protect(mut self, protect: Protect) -> Self {
        self.protect = Some(protect);
        self
    }

    /// The violation policy (default: `FROSTHEAP_ON_VIOLATION`, else
    /// [`OnViolation::Rollback`]).
    pub fn on_violation(mut self, policy: OnViolation) -> Self {
        self.on_violation = Some(policy);
        self
    }

    /// Runs parallel calls in batches (one phase each) sized so the memory
    /// their items allocate stays near `bytes`: what tasks allocate in
    /// their context heaps, temporaries and results alike, measured per
    /// item.
    ///
    /// - The first batch of a call has **one item per worker**, since
    ///   nothing is measured yet, and runs whole.
    /// - Each later batch has `bytes / per_item` items, `per_item` being
    ///   the most one item of the call has allocated so far, but at most
    ///   **twice** as many as the batch before ran, and at least one.
    /// - A batch claims no more chunks once its items have allocated
    ///   `bytes`; the next batch starts at the first item it did not run.
    ///   So when items turn dearer than those measured, a phase overshoots
    ///   the budget by at most the chunks then running: **one chunk per
    ///   worker**, a chunk being 1/32 of a worker's share of the batch (at
    ///   most 4096 items). As a batch has at most `bytes / per_item`
    ///   items, items `r` times dearer than any measured take a phase to
    ///   at most `bytes × (1 + r / 32)`. In a user's trial (8 MiB, 300
    ///   items of 16 B then 100 of 1 MiB) the largest phase took 8.0 to
    ///   10.0 MiB, where sizing the second batch from the first two items
    ///   took 100 MiB.
    ///
    /// **An item larger than the budget** still runs (an item is never
    /// split): every batch after the first then holds one item, so the
    /// call runs one item at a time, and
    /// [`RuntimeStats::oversized_items`](super::RuntimeStats::oversized_items)
    /// counts them. The first batch runs one item per worker together
    /// whatever their size, so its phase may take `workers` times the
    /// largest item: with `memory_budget(1000)`, two workers and items of
    /// 100 KB, the first phase holds 200 KB and each later one 100 KB.
    /// No budget of at least one byte is refused, as an item's cost is
    /// known only once it ran; `0` is refused by [`build`](Self::build)
    /// with [`Error::InvalidConfig`] naming `memory_budget`.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Threads the cancel policy may leave parked. Parked workers are
    /// replaced while fewer than this are parked, so the runtime's threads
    /// never exceed `workers + max_parked`; from then on, every call
    /// returns [`Error::Incomplete`]. The cap is looked at before each
    /// phase, and every worker of a phase may park in it (a violator, or a
    /// task blocked on its lock), so the parked threads alone may pass it
    /// by up to `workers - 1`, within that same total. Each parked thread also keeps a
    /// context slot (1024 in the process), so `workers + max_parked` may
    /// not exceed 1024: [`RuntimeBuilder::build`] refuses a `max_parked`
    /// set here that does not fit with [`Error::InvalidConfig`] naming
    /// `max_parked`, the workers and the most that fits. The default is
    /// [`DEFAULT_MAX_PARKED`], or the room the
    /// workers leave if that is less (`1024 - workers`: 24 with 1,000
    /// workers, 0 with 1,024).
    pub fn max_parked(mut self, n: usize) -> Self {
        self.max_parked = Some(n);
        self
    }

    /// After a violation parked a worker (`cancel`, or a full undo log
    /// under `rollback`), how long the phase may make no progress — no
    /// worker finishes its share or uses CPU time — before the workers
    /// still in it are abandoned (stopped for good, like the violator) and
    /// the call returns `Err(Violation)` saying so. Those tasks are most
    /// likely blocked on a lock the cancelled task holds. A parked worker
    /// keeps its locks for good, so while the runtime has parked workers
    /// every later phase is watched the same way: there, the tasks blocked
    /// in a `futex` wait (a lock, a condition variable, a channel) when the
    /// time runs out are abandoned, and the call returns
    /// `Err(Incomplete)` saying why. Default
    /// [`DEFAULT_NO_PROGRESS_TIMEOUT`]
    /// (3 s).
    pub fn no_progress_timeout(mut self, timeout: core::time::Duration) -> Self {
        self.no_progress_timeout = timeout;
        self
    }

    /// The runtime's workers and `max_parked`, checked: the workers given
    /// (1 to [`N_SLOTS`](crate::context::N_SLOTS)), or `parallelism` up to
    /// that many; `max_parked` as given, if it fits beside the workers in
    /// the context slots, or by default [`DEFAULT_MAX_PARKED`] or the room
    /// the workers leave if less. A count that does not fit is an error
    /// naming the count the caller set (a worker count past the slots was
    /// reported as a bad `max_parked` of 64, which nobody had set).
    pub(super) fn counts(&self, parallelism: usize) -> Result<(usize, usize), Error> {
        let slots = crate::context::N_SLOTS;
        let workers = match self.workers {
            Some(n) if !(1..=slots).contains(&n) => {
                return Err(Error::invalid(
                    "workers",
                    n,
                    format!(
                        "1 to {slots} worker threads: each keeps one of the process's {slots} context slots"
                    ),
                ))
            }
            Some(n) => n,
            None => parallelism.clamp(1, slots),
        };
        let room = slots - workers;
        let max_parked = match self.max_parked {
            None => DEFAULT_MAX_PARKED.min(room),
            Some(n) if n > room => {
                return Err(Error::invalid(
                    "max_parked",
                    n,
                    format!(
                        "at most {room} with {workers} workers: each worker and each parked thread keeps one of the process's {slots} context slots"
                    ),
                ))
            }
            Some(n) => n,
        };
        Ok((workers, max_parked))
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Runtime, Error> {
        // Reads the environment, if nothing has, sets the process limit
        // and starts the main heap (as the first `Heap::build` would).
        let env = crate::global::start()?;
        let (workers, max_parked) = self.counts(available_parallelism())?;
        if self.no_progress_timeout.is_zero() {
            return Err(Error::invalid(
                "no_progress_timeout",
                "0s",
                "a duration above zero",
            ));
        }
        if self.memory_budget == Some(0) {
            return Err(Error::invalid(
                "memory_budget",
                0,
                "a budget of at least 1 byte",
            ));
        }
        if env.track_allocs {
            // Global mode turned tracking on at the first allocation; for
            // explicit heaps it starts here (blocks allocated earlier have
            // no recorded site).
            crate::track::enable();
        }
        let protect = self.protect.unwrap_or(env.protect);
        let policy = self.on_violation.unwrap_or(env.on_violation);
        let backend = trap::resolve(protect)?;
        if backend != Backend::Off {
            trap::install()?;
        }
        unguarded(|| {
            let mut heaps = self.guards;
            if self.guard_main {
                if let Some(main) = crate::global::main_heap() {
                    if !heaps.contains(&main) {
                        heaps.push(main);
                    }
                }
            }
            let mut guards = Vec::with_capacity(heaps.len());
            if backend != Backend::Off {
                for h in &heaps {
                    guards.push(trap::guard(h, backend)?);
                }
            }
            let control: &'static ControlBlock = Box::leak(Box::new(ControlBlock {
                backend,
                guards_any: !guards.is_empty(),
                policy,
                epoch: AtomicU32::new(0),
                job: AtomicPtr::new(core::ptr::null_mut()),
                remaining: AtomicU32::new(0),
                gate: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                held: AtomicU32::new(0),
                events: AtomicU32::new(0),
                parked: AtomicU32::new(0),
                shutdown: AtomicBool::new(false),
                pin_epoch: AtomicU32::new(0),
            }));
            let rt = Runtime {
                control,
                heaps,
                guards,
                workers: Mutex::new(Vec::with_capacity(workers)),
                n_workers: workers,
                memory_budget: self.memory_budget,
                max_parked,
                no_progress_timeout: self.no_progress_timeout,
                next_worker_id: AtomicUsize::new(0),
                stats: Mutex::new(RuntimeStats {
                    memory_budget: self.memory_budget,
                    workers,
                    backend: backend.name(),
                    ..RuntimeStats::default()
                }),
                audit_log: Mutex::new(Vec::new()),
                bytes_total: AtomicUsize::new(0),
                in_phase: AtomicBool::new(false),
                phase_lock: Mutex::new(()),
                scratch: Mutex::new(Scratch::default()),
                missing_workers: AtomicUsize::new(0),
            };
            for _ in 0..workers {
                rt.add_worker()?;
            }
            Ok(rt)
        })
    }
}

impl Runtime {
    /// Starts building a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }
}

/// The workers a runtime gets when none are given: the machine's
/// parallelism, 1 if unknown.
pub(super) fn available_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(b: RuntimeBuilder) -> (&'static str, String) {
        match b.counts(8) {
            Err(e @ Error::InvalidConfig { name, .. }) => (name, e.to_string()),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn a_worker_count_past_the_slots_names_workers_and_the_range() {
        for n in [0, 1025, 2000] {
            let (name, msg) = refusal(Runtime::builder().workers(n));
            assert_eq!(name, "workers", "{msg}");
            assert!(
                msg.contains(&format!("\"{n}\"")) && msg.contains("1 to 1024"),
                "{msg}"
            );
            assert!(!msg.contains("max_parked"), "{msg}");
        }
    }

    #[test]
    fn the_default_max_parked_fits_in_the_room_the_workers_leave() {
        let counts = |w: usize| Runtime::builder().workers(w).counts(8).unwrap();
        assert_eq!(counts(1), (1, DEFAULT_MAX_PARKED));
        assert_eq!(counts(960), (960, 64));
        assert_eq!(counts(961), (961, 63));
        assert_eq!(counts(1000), (1000, 24));
        assert_eq!(counts(1024), (1024, 0));
        // Available parallelism is a default too: at most the slots.
        assert_eq!(Runtime::builder().counts(4096).unwrap(), (1024, 0));
        assert_eq!(Runtime::builder().counts(0).unwrap(), (1, 64));
    }

    #[test]
    fn an_explicit_max_parked_that_does_not_fit_names_it_the_workers_and_the_most() {
        let (name, msg) = refusal(Runtime::builder().workers(1000).max_parked(64));
        assert_eq!(name, "max_parked", "{msg}");
        assert!(
            msg.contains("\"64\"") && msg.contains("1000 workers") && msg.contains("at most 24"),
            "{msg}"
        );
        // What fits is kept as given.
        let b = Runtime::builder().workers(1000).max_parked(24);
        assert_eq!(b.counts(8).unwrap(), (1000, 24));
        let b = Runtime::builder().workers(4).max_parked(1000);
        assert_eq!(b.counts(8).unwrap(), (4, 1000));
    }

    #[test]
    fn every_worker_count_the_environment_accepts_builds_its_counts() {
        for n in 1..=1024usize {
            let v = n.to_string();
            let b = super::super::default::from_env(|name| {
                (name == "FROSTHEAP_WORKERS").then(|| v.clone())
            })
            .unwrap();
            let (workers, parked) = b.counts(8).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!((workers, parked), (n, DEFAULT_MAX_PARKED.min(1024 - n)));
        }
    }
}
