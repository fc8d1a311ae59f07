//! # frostheap
//!
//! A memory runtime for programs that alternate between a main phase and
//! parallel phases. Every heap lives in **one reserved address range**,
//! committed on demand, with a hard `min`/`max` — a JVM-style `-Xms`/`-Xmx`
//! for Rust.
//!
//! ```
//! use std::alloc::Layout;
//! let heap = frostheap::Heap::builder().name("index").max(64 << 20).build()?;
//! let block = heap.try_alloc(Layout::from_size_align(1 << 20, 8).unwrap())?;
//! assert!(heap.owns(block.as_ptr()));
//! // Past the cap, allocation fails with the numbers, and the heap goes on.
//! let err = heap.try_alloc(Layout::from_size_align(100 << 20, 8).unwrap()).unwrap_err();
//! assert_eq!(err.limit(), Some(64 << 20));
//! unsafe { heap.dealloc(block) };
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! As the global allocator, the main thread allocates from the main heap
//! under `FROSTHEAP_MIN` / `FROSTHEAP_MAX`:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: frostheap::Global = frostheap::Global;
//! ```
//!
//! ## Parallel phases over frozen data
//!
//! A [`Runtime`] runs parallel phases. While a phase runs, every guarded
//! heap (the main heap in global mode, and any heap passed to
//! [`RuntimeBuilder::guard`]) is frozen by the MMU: tasks read it, and a task
//! that writes it commits a [`Violation`]. Under the default policy
//! ([`OnViolation::Rollback`]) the task runs to its end, its stores are
//! undone when the phase ends, and the call returns the report: the data
//! ends the phase as it was. Tasks allocate from their worker's context
//! heap.
//!
//! ```
//! use frostheap::{Error, Heap, Runtime};
//! let heap = Heap::builder().name("index").max(64 << 20).build()?;
//! let mut index = allocator_api2::vec::Vec::new_in(heap.clone());
//! index.extend(0..1000u64);
//! let rt = Runtime::builder().workers(2).guard(&heap).build()?;
//!
//! let doubled = rt.map(0..10usize, |i| index[i] * 2)?;
//! assert_eq!(doubled[3], 6);
//!
//! let bad = rt.map(0..4usize, |i| {
//!     if i == 2 {
//!         // A write through a shared reference: the bug frostheap catches.
//!         unsafe { (&index[7] as *const u64 as *mut u64).write_volatile(0) };
//!     }
//!     i
//! });
//! match bad {
//!     Err(Error::Violation(v)) => {
//!         assert_eq!(v.heap_name(), "index");
//!         assert_eq!(v.item_index(), Some(2));
//!     }
//!     other => panic!("expected a violation, got {other:?}"),
//! }
//! assert_eq!(index[7], 7); // the store was undone at the end of the phase
//! assert_eq!(rt.map(0..3u32, |x| x + 1)?, vec![1, 2, 3]); // and the runtime goes on
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! State that tasks are meant to write lives outside guarded heaps:
//! anything built inside [`unguarded`], and [`Shared<T>`] values (the `T`,
//! not what it owns: a `Vec`'s buffer or a channel's state made in main
//! stays in the main heap).
//!
//! The model, the vocabulary and what each policy and backend guarantees
//! are in `docs/design.md`; the code map and the layers in
//! `ARCHITECTURE.md` (both in the repository).
//!
//! # The public API
//!
//! Everything public is listed here; every other module of the crate is
//! private.
//!
//! ## Heaps
//!
//! - [`Heap`], built with [`Heap::builder`] ([`HeapBuilder`]): a cheap,
//!   cloneable handle to a heap in a region of its own, with a hard `max`;
//!   an `allocator_api2` allocator. [`Stats`] are its exact numbers.
//!
//! ```
//! let heap = frostheap::Heap::builder().name("cache").min(1 << 20).max(16 << 20).build()?;
//! let mut v = allocator_api2::vec::Vec::new_in(heap.clone());
//! v.extend_from_slice(&[1u32, 2, 3]);
//! let s: frostheap::Stats = heap.stats();
//! assert!(s.in_use >= 12 && heap.owns(v.as_ptr()));
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! - [`Global`]: the global allocator (`#[global_allocator] static GLOBAL:
//!   frostheap::Global = frostheap::Global;`). The thread that allocates
//!   first owns the **main heap** ([`main_heap`]), every other thread gets
//!   a heap of its own, and `FROSTHEAP_MAX` bounds them all.
//!   [`stats`] returns the process's numbers ([`ProcessStats`], committed
//!   bytes per [`Kind`]).
//!
//! ```
//! // This doctest does not install `Global`: there is no main heap, and
//! // the process counters show only what explicit heaps committed.
//! assert!(frostheap::main_heap().is_none());
//! let heap = frostheap::Heap::builder().max(8 << 20).build()?;
//! let _block = heap.try_alloc(std::alloc::Layout::new::<[u8; 4096]>())?;
//! let s: frostheap::ProcessStats = frostheap::stats();
//! assert!(s.committed_for(frostheap::Kind::Explicit) > 0);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! - [`unguarded`] runs a closure whose allocations go to system memory,
//!   never frozen (and counted against `FROSTHEAP_MAX` as external
//!   memory); [`Shared<T>`] is a value put there, for tasks to write
//!   (what the value owns stays where it was made).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! let total = frostheap::Shared::new(AtomicU64::new(0));
//! let log: Vec<String> = frostheap::unguarded(|| Vec::with_capacity(16));
//! total.fetch_add(log.capacity() as u64, Ordering::Relaxed);
//! assert_eq!(total.load(Ordering::Relaxed), 16);
//! ```
//!
//! ## Parallel phases
//!
//! - [`Runtime`], built with [`Runtime::builder`] ([`RuntimeBuilder`]):
//!   workers, guarded heaps, the violation policy, a memory budget.
//!   [`Runtime::par`] starts a parallel call with rayon's adapters
//!   (`zip`, `map`, `map_init`, `filter`, `fold`, `enumerate`, ...) and
//!   terminals (`collect`, `sum`, `for_each_with`, `try_for_each`, ...;
//!   the types are in [`par`]); `map`, `map_with`, `for_each`,
//!   `for_each_mut`, `scope` ([`Scope`]), `join`, the sorts and
//!   [`Runtime::par_bridge`] / `map_iter` (for arbitrary iterators) are the
//!   other entry points. [`RuntimeStats`] counts phases, items and bytes.
//!   [`DEFAULT_MAX_PARKED`] and [`DEFAULT_NO_PROGRESS_TIMEOUT`] are the
//!   builder's defaults for the cancel policy's limits.
//!
//! ```
//! let rt = frostheap::Runtime::builder().workers(2).memory_budget(64 << 20).build()?;
//! let v: Vec<u64> = (1..=100).collect();
//! assert_eq!(rt.par(&v).map(|x| x * 2).sum::<u64>()?, 10_100);
//! let w: Vec<u64> = (0..100).rev().collect();
//! assert_eq!(rt.par(&v).zip(&w).map(|(x, y)| x + y).min()?, Some(100));
//! let mut w = vec![3, 1, 2];
//! rt.sort_unstable(&mut w)?;
//! let (a, b) = rt.join(|| w[0], || w[2])?;
//! assert_eq!((a, b), (1, 3));
//! assert!(rt.stats().phases >= 2);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! - [`TaskContext`] (the item's index, the worker) and [`Arena`] (the
//!   worker's context heap as an allocator), for tasks that ask.
//!
//! ```
//! let rt = frostheap::Runtime::builder().workers(2).build()?;
//! let lens = rt.map_with(0..4usize, |cx: &frostheap::TaskContext<'_>, i| {
//!     let mut tmp = allocator_api2::vec::Vec::new_in(cx.arena());
//!     tmp.extend(0..i);
//!     (cx.item_index(), tmp.len())
//! })?;
//! assert_eq!(lens[3], (Some(3), 3));
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! - [`global_runtime`] / [`try_global_runtime`]: the process-wide runtime,
//!   built on first use from `FROSTHEAP_WORKERS`, `FROSTHEAP_MEMORY_BUDGET`
//!   and `FROSTHEAP_MAX_PARKED`.
//!
//! ```
//! let rt = frostheap::try_global_runtime()?;
//! assert_eq!(rt.map(0..3u32, |x| x * x)?, vec![0, 1, 4]);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! ## Violations, policies and backends
//!
//! - [`Violation`]: a task's write to a guarded heap, as
//!   `Err(Error::Violation(..))` carries it (the first example above), or
//!   as [`Runtime::audit_log`] lists it; [`Access`] says what kind of write.
//! - [`OnViolation`]: the policy (`Rollback`, the default; `Cancel`;
//!   `Audit`; `Abort`). [`Protect`]: the requested backend, which a
//!   runtime resolves to a [`Backend`].
//!
//! ```
//! use frostheap::{Access, Backend, Error, Heap, OnViolation, Protect, Runtime};
//! let heap = Heap::builder().name("table").max(16 << 20).build()?;
//! let mut table = allocator_api2::vec::Vec::new_in(heap.clone());
//! table.extend(0..64u64);
//! let rt = Runtime::builder()
//!     .workers(2)
//!     .guard(&heap)
//!     .protect(Protect::Auto)
//!     .on_violation(OnViolation::Audit)
//!     .build()?;
//! assert_ne!(rt.backend(), Backend::Off);
//! rt.for_each(0..1usize, |_| unsafe {
//!     (&table[5] as *const u64 as *mut u64).write_volatile(50)
//! })?;
//! let log = rt.audit_log();
//! assert_eq!(log[0].heap_name(), "table");
//! assert_eq!(log[0].access(), Access::Write);
//! assert_eq!(table[5], 50); // audit lets the store land
//! # Ok::<(), Error>(())
//! ```
//!
//! - [`io::read`]: `read(2)` that reports a destination in frozen memory
//!   as a violation (the kernel's own writes raise no fault).
//!
//! ```
//! let file = std::fs::File::open("/dev/zero").unwrap();
//! let mut buf = [1u8; 8];
//! assert_eq!(frostheap::io::read(&file, &mut buf)?, 8);
//! assert_eq!(buf, [0; 8]);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! ## Errors, sizes and configuration
//!
//! - [`Error`]: the one error type; its accessors give the numbers
//!   ([`Error::limit`], [`Error::requested`], [`Error::in_use`],
//!   [`Error::violation`]).
//! - [`parse_size`], [`SizeError`] and [`Bytes`]: sizes as people write
//!   and read them (binary units).
//! - [`HugePages`]: a heap's huge-page policy ([`HeapBuilder::huge_pages`]).
//!
//! ```
//! assert_eq!(frostheap::parse_size("1.5GiB"), Ok(3 << 29));
//! assert!(frostheap::parse_size("12 parsecs").is_err());
//! assert_eq!(frostheap::Bytes(64 << 20).to_string(), "64 MiB");
//! let heap = frostheap::Heap::builder()
//!     .huge_pages(frostheap::HugePages::Off)
//!     .max(1 << 20)
//!     .build()?;
//! let err = heap.try_alloc(std::alloc::Layout::new::<[u8; 2 << 20]>()).unwrap_err();
//! assert_eq!((err.requested(), err.limit()), (Some(2 << 20), Some(1 << 20)));
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! ## Capacity from bytes
//!
//! [`RuntimeBuilder::memory_budget`] sizes batches from per-item costs
//! measured in the context heaps. Turning a byte count into client
//! capacity and admission permits (and the tower layer) is the
//! `frostheap-budget` crate, which sits above this one.
//!
//! ## Layers
//!
//! `os` (the only code that makes system calls) → `config` (policies,
//! environment) → `guard` (the table of heap regions and their guard
//! state, worker state) → `region` (reserve, commit, protect) → `heap`
//! (size classes, spans, stats, limits) → `context` (bump arenas) and
//! `trap` (fault handler, freeze protocol, reports) → `global` →
//! `runtime` (phases, parallel calls). See ARCHITECTURE.md for the code
//! map and invariants.
//!
//! Neither protection backend is a security boundary: writes through
//! `/proc/self/mem` or `ptrace` succeed against both.
//!
//! ## Crate features
//!
//! The crate has no optional features.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod config;
mod context;
mod error;
mod fmt_buf;
mod global;
mod guard;
mod heap;
pub mod io;
mod os;
mod region;
mod runtime;
mod size;
mod sync;
mod track;
mod trap;
mod violation;

pub use config::{Backend, HugePages, OnViolation, Protect};
pub use error::{Error, RefusedBy};
pub use global::{main_heap, stats, trim, unguarded, Global, ProcessStats, Shared};
pub use heap::process::Kind;
pub use heap::{Heap, HeapBuilder, Stats};
pub use runtime::{
    global_runtime, par, try_global_runtime, Arena, Runtime, RuntimeBuilder, RuntimeStats, Scope,
    TaskContext, DEFAULT_MAX_PARKED, DEFAULT_NO_PROGRESS_TIMEOUT,
};
pub use size::{parse_size, Bytes, SizeError, SizeErrorKind};
pub use violation::{Access, Violation};

/// **Not public API.** Internals that the workspace's other crates and the
/// integration tests use; hidden from the docs, with no stability promise.
/// Each item says who uses it.
#[doc(hidden)]
pub mod __private {
    /// frostheap-capi: the heaps with C semantics, fork handlers.
    pub use crate::global::raw;

    /// frostheap-capi (`getenv`, `write_stderr`, `page_size`),
    /// frostheap-cli `info` (page and huge-page sizes, THP, physical
    /// memory, the cgroup's memory limit), frostheap-bench `freeze`
    /// (`rdpkru` / `wrpkru`, the PKRU pair it times).
    pub mod os {
        pub use crate::os::*;
    }

    /// frostheap-capi: the lock of its record of mapped ranges.
    pub mod sync {
        pub use crate::sync::{LockGuard, RawLock};
    }

    /// frostheap-capi: formatting its exit statistics without allocating.
    pub mod fmt_buf {
        pub use crate::fmt_buf::*;
    }

    /// frostheap-cli `info`: what `FROSTHEAP_MIN` commits up front.
    pub use crate::config::main_precommit;
    /// frostheap-cli `info`: the environment as the library reads it, and
    /// which bound gave the default limit.
    pub use crate::config::{
        default_max, from_env, from_env_once, ignore_environment, EnvConfig, EnvError,
    };
    /// frostheap-cli `run` (`--max-memory`, `--min`) and `serve`
    /// (`--max-memory`): limits read as the variables are.
    pub use crate::config::{
        parse_limit_bytes, process_memory, LIMIT_SYNTAX, MIN_MAX, MIN_MAX_EXPECTED,
    };
    /// frostheap-cli `run` (`--max-memory`): whether the program's
    /// start-up can reserve the arena of its limit.
    pub use crate::global::probe_reservation;
    /// frostheap-cli (`info`, `run`): the heap's page size.
    pub use crate::region::PAGE_SIZE;
    /// frostheap-cli (`run`, `serve`): the size syntax in messages.
    pub use crate::size::{SIZE_SYNTAX, WHOLE_BYTES};
    /// Integration tests and the `global_track` fixture: allocation sites.
    pub use crate::track::allocation_site;
    /// Tests and the `atomics` trial fixture: turn off (and on again) the
    /// read-modify-writes among them alone (plain moves still performed).
    pub use crate::trap::set_rmw_emulation;
    /// Tests, the trial fixture and frostheap-bench `bystander`: turn off
    /// (and on again) the `mprotect` backend's performed stores, to show
    /// the step they replace.
    pub use crate::trap::set_store_emulation;
    /// Integration tests (`freeze`): the futex a thread waiting for another
    /// thread's step under the `mprotect` backend sleeps on.
    pub use crate::trap::step_lock_address;
    /// frostheap-cli (`info`, `tour`), frostheap-bench `freeze`, tests:
    /// protection keys and backend resolution.
    pub use crate::trap::{pkey, pkeys_available, resolve};

    /// Integration tests and the `runtime_global` fixture: context heaps.
    pub mod context {
        pub use crate::context::{chunk_shift_for, chunk_size, free, owns, CHUNK_SIZE};
    }

    /// Integration tests (`runtime`): the runtime's test hooks.
    pub mod runtime {
        /// Worker `worker` of `rt` starts no phase until `None` releases
        /// it, as a worker the scheduler does not run: its phases go on
        /// without it once the other workers have claimed every chunk.
        pub fn hold_worker_start(rt: &crate::Runtime, worker: Option<usize>) {
            rt.hold_worker_start(worker);
        }
    }
}
