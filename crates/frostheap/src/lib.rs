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
//! that writes it is cancelled with a [`Violation`] report while the data
//! stays intact. Tasks allocate from their worker's context heap.
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
//! assert_eq!(index[7], 7); // the store never happened
//! assert_eq!(rt.map(0..3u32, |x| x + 1)?, vec![1, 2, 3]); // and the runtime goes on
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! State that tasks are meant to write lives outside guarded heaps:
//! [`Shared<T>`] values and anything built inside [`unguarded`].
//!
//! ## Capacity from bytes
//!
//! [`RuntimeBuilder::memory_budget`] sizes `map` batches from per-item
//! costs measured in the context heaps. Turning a byte count into client
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
//! `runtime` (phases, map). See ARCHITECTURE.md for the code map and
//! invariants.
//!
//! Neither protection backend is a security boundary: writes through
//! `/proc/self/mem` or `ptrace` succeed against both.
//!
//! ## Crate features
//!
//! The crate has no optional features.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod context;
mod error;
pub mod fmt_buf;
pub mod global;
mod guard;
pub mod heap;
pub mod io;
pub mod os;
pub mod region;
pub mod runtime;
pub mod size;
pub mod sync;
pub mod track;
pub mod trap;
mod violation;

pub use config::{HugePages, OnViolation, Protect};
pub use error::Error;
pub use global::{main_heap, stats, unguarded, Global, ProcessStats, Shared};
pub use heap::{Heap, HeapBuilder, Stats};
pub use runtime::{
    global_runtime, par, try_global_runtime, Arena, Runtime, RuntimeBuilder, RuntimeStats, Scope,
    TaskContext,
};
pub use size::{parse_size, Bytes};
pub use violation::Violation;
