//! The runtime: workers, phases, `map` / `for_each` / `scope`.
//!
//! **The phase protocol** (docs/design.md): main calls a parallel method;
//! the runtime replaces workers parked by earlier violations, freezes
//! every guarded heap, publishes the job and wakes the workers (a futex on
//! the phase epoch); workers claim items in chunks from an atomic cursor
//! and run them with their context heap as the allocation target; when
//! every worker has reported (or been parked by the fault handler), main
//! thaws, undoes the rollback policy's stores, applies the frees the tasks
//! made of guarded memory, turns violation records into reports, and
//! returns results in input order or the first error.
//!
//! Everything a task legitimately writes lives outside guarded heaps: the
//! runtime allocates its control block, item and result slots inside
//! [`unguarded`](crate::global::unguarded).
//!
//! **Memory-aware batching.** With a memory budget, `map` pulls its input
//! in batches: the first batch has one item per worker; every later batch
//! has `budget / bytes_per_item` items, where `bytes_per_item` is the
//! largest exact per-item consumption measured so far in this `map` from
//! the context heaps' bump counters (each `map` measures its own items).
//! An item larger than the budget runs alone.
//!
//! **Files**, top down: `builder` (configuration and start-up), `default`
//! (the process-wide runtime), `map` (the entry points main calls), `call`
//! (a parallel call: adapters and terminal operations), `source` (inputs
//! the workers index), `pipe` (adapters), `terminal` (collect, reduce,
//! any, find_any, try_for_each), `sort`, `drive` (batch after batch), `batch` (one batch as one
//! phase: the claim loop and the recovery after an error), `phase` (freeze,
//! run, thaw), `recovery` (staffing, waiting, undo, deferred frees,
//! violation records), `pool` (the `Runtime` and its helpers), `scratch`
//! (buffers kept across calls), `task` (`TaskContext`, `Arena`), `sealed`,
//! `worker` (the threads).

mod batch;
mod builder;
mod call;
mod default;
mod drive;
mod map;
mod phase;
mod pipe;
mod pool;
mod recovery;
mod scratch;
mod sealed;
mod sort;
mod source;
mod task;
mod terminal;
mod worker;

/// The parallel API's types: what [`Runtime::par`] accepts and returns.
///
/// | input | items |
/// |---|---|
/// | `&[T]`, `&Vec<T>`, `&[T; N]`, `slice.iter()` | `&T` |
/// | `Vec<T>` | `T`, moved into the tasks |
/// | `&mut [T]`, `&mut Vec<T>`, `slice.iter_mut()` | `&mut T` (data must be writable: [`Runtime::for_each_mut`]) |
/// | `a..b`, `a..=b` over the integer types | the integers |
/// | `slice.chunks(k)`, `slice.chunks_exact(k)`, [`par::chunks`] | `&[T]` |
/// | [`par::chunks_mut`]`(slice, k)` | `&mut [T]` |
/// | `par(a).zip(b)` ([`par::Zip`]), `a` and `b` any of the above | `(a's item, b's item)`, as many as the shorter has |
/// | `par(a).skip(k)`, `par(a).take(n)` ([`par::Skip`], [`par::Take`]) | `a`'s items from the `k`th, the first `n` |
/// | [`Runtime::par_bridge`]`(any iterator)` | its items, pulled on main first |
///
/// Adapters ([`par::Par`]'s methods): `zip`, `skip`, `take` (first, on an
/// indexed input),
/// `map`, `map_with_context`, `map_init`, `map_with`, `filter`,
/// `filter_map`, `flat_map_iter`, `inspect`, `fold`, `enumerate` (before
/// any filtering adapter). Terminal operations:
/// `for_each`, `for_each_with`, `try_for_each` (the first error in input order),
/// `collect` (into `Vec`, in input order), `count`, `sum`, `product`,
/// `reduce`, `reduce_with`, `min`/`max`(`_by`, `_by_key`), `any`, `all`,
/// `find_any`, `position_any`, `find_first`, `position_first`. Sorts: [`Runtime::sort_unstable`] and
/// [`Runtime::sort`] with their `_by` and `_by_key` forms.
pub mod par {
    pub use super::call::{FromPar, Par};
    pub use super::drive::{Bridge, Drive, Indexed};
    pub use super::pipe::{
        CloneOf, Enumerate, Filter, FilterMap, FlatMapIter, Fold, Identity, InitFn, Inspect,
        MakeState, Map, MapInit, MapWith, MapWithContext, OneToOne, Pipe,
    };
    pub use super::source::{
        chunks, chunks_mut, ChunksMut, ChunksRef, IntoParSource, ParSource, RangeItems, Skip,
        SliceMut, SliceRef, StdChunks, Take, VecItems, Zip,
    };
}

pub use builder::RuntimeBuilder;
pub use default::{global_runtime, try_global_runtime};
pub use map::Scope;
pub use pool::{Runtime, RuntimeStats, DEFAULT_MAX_PARKED};
pub use recovery::DEFAULT_NO_PROGRESS_TIMEOUT;
pub use task::{Arena, TaskContext};
