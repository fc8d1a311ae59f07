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
//! ## Layers
//!
//! `os` (the only code that makes system calls) → `region` (reserve,
//! commit, the region table) → `heap` (size classes, spans, stats, limits)
//! → `global` (the `GlobalAlloc`). See ARCHITECTURE.md for the code map
//! and invariants.
//!
//! ## Crate features
//!
//! The default build has no optional features.
//!
//! - `tower`: `budget::tower`, a tower middleware that admits HTTP
//!   requests by memory from a [`Budget`] — waiting for a permit through
//!   `poll_ready`, or shedding with 503. Adds tower-service, tower-layer,
//!   http, http-body and pin-project-lite.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod budget;
pub mod config;
pub mod context;
mod error;
pub mod fmt_buf;
pub mod global;
pub mod heap;
pub mod io;
pub mod os;
pub mod region;
pub mod runtime;
pub mod size;
pub mod sync;
pub mod track;
pub mod trap;

pub use budget::{Budget, Permit};
pub use config::HugePages;
pub use error::Error;
pub use global::{main_heap, unguarded, Global, Shared};
pub use heap::{Heap, HeapBuilder, Stats};
pub use runtime::{Arena, Runtime, RuntimeBuilder, RuntimeStats, Scope, TaskContext};
pub use size::{parse_size, Bytes};
pub use trap::{OnViolation, Protect, Violation};
