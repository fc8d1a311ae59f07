//! The integration tests of frostheap: one binary, shared helpers in
//! [`check`], the op model in [`ops`] (shared with the fuzz target).
//!
//! | module | checks |
//! |---|---|
//! | `heap_model` | random alloc / realloc / free against a naive model (proptest) |
//! | `fuzz_replay` | the fuzz target's op encoding, replayed from fixed-seed byte strings |
//! | `limits` | `max`: refusals with the right numbers, recovery; invalid configurations |
//! | `remote` | millions of blocks crossing threads: remote frees, the locked shared path |
//! | `collections` | `allocator_api2::vec::Vec` and hashbrown maps in a heap |
//! | `global_mode` | `frostheap::Global` in example programs run as child processes |
//! | `violations` | the violation matrix: backend × policy × twelve ways to write a frozen heap; reports |
//! | `freeze` | backends, bystander threads, kernel writes, sealed heaps, env config; the cap, abort, and foreign faults in child processes |
//! | `runtime` | `map` / `for_each` / `scope` against sequential code, panics, violations, budgets, context heaps; global mode through the `runtime_global` example |

mod check;
mod collections;
mod freeze;
mod fuzz_replay;
mod global_mode;
mod heap_model;
mod limits;
mod ops;
mod remote;
mod runtime;
mod violations;
