//! # frostheap-budget
//!
//! Capacity from memory. A server should not be told "at most 512
//! clients"; it should be told "you have 256 MiB" and work out how many
//! clients fit. A [`Budget`] is that byte count, handing out [`Permit`]s:
//!
//! ```
//! use frostheap_budget::{Budget, PerClient};
//! let budget = Budget::with_per_client(256 << 20, PerClient::Declared(128 << 10))?;
//! assert_eq!(budget.clients(), 2048);
//! let permit = budget.try_acquire(100 << 10).expect("fits");
//! assert_eq!(budget.stats().in_use, 100 << 10);
//! drop(permit); // the bytes come back
//! assert_eq!(budget.stats().in_use, 0);
//! # Ok::<(), frostheap::Error>(())
//! ```
//!
//! - [`Budget::try_acquire`] admits or refuses at once (shedding);
//!   [`Budget::acquire`] waits in FIFO order (backpressure). Both are one
//!   weighted semaphore whose permits are bytes (tokio's, see
//!   `budget.rs`).
//! - **Per-client cost** is declared ([`PerClient::Declared`]) or measured
//!   ([`PerClient::Measured`]): a permit records what its client really
//!   used ([`Permit::record_usage`]) and the budget's estimate follows.
//! - [`Budget::from_heap`] takes the room left under a frostheap heap's
//!   hard cap.
//! - [`gate::ConnectionGate`]: a separate, small bound for the connections
//!   that have no admitted request (slow headers, idle keep-alive).
//! - The measured estimate is the [95th percentile](QUANTILE) of recorded
//!   usage over a [time window](DEFAULT_WINDOW): a few outliers do not
//!   move it, a real shift does within the window (see `estimator.rs`).
//!
//! ## In your own tower stack (feature `tower`)
//!
//! The lines a server adds to an existing axum or tower stack:
//!
//! ```ignore
//! use frostheap_budget::{tower::MemoryLimitLayer, Budget, Permit};
//! let budget = Budget::new(256 << 20);                       // bytes for clients, not a client count
//! let app = app.layer(MemoryLimitLayer::new(budget.clone())); // 503 + Retry-After past the budget
//! // in a handler that wants the estimate to follow real usage:
//! async fn handler(Extension(permit): Extension<Permit>, body: Bytes) { permit.record_usage(2 * body.len()); }
//! ```
//!
//! `examples/axum.rs` is a whole server doing this (its test runs it). The
//! layer charges each request `max(per-client cost, Content-Length)` (or
//! a [`cost`] function of the head) from
//! the head on, until its response body has been sent; see [`tower`] for
//! waiting instead of shedding. What the layer cannot do alone is make
//! the 503 readable by a client still sending its body: the server must
//! close such connections with a lingering close (`frostheap serve` does),
//! and bound the connections that have no admitted request yet
//! ([`gate`]).
//!
//! The crate sits above the allocator crate (`frostheap`), which carries
//! no HTTP or tower dependency.
//!
//! ## Crate features
//!
//! The default build has no optional features.
//!
//! - `tower`: [`tower`], a tower middleware that admits HTTP
//!   requests by memory from a [`Budget`] — waiting for a permit through
//!   `poll_ready`, or shedding with 503. Adds tower-service, tower-layer,
//!   http, http-body and pin-project-lite.
#![cfg_attr(
    feature = "tower",
    doc = "<!-- the links to the tower module -->\n[`cost`]: tower::MemoryLimitLayer::cost\n[`tower`]: mod@crate::tower"
)]
// Without the feature there is no `tower` module to link to: its links
// lead to the features above. (Intra-doc links to it were broken in that
// build, and `cargo doc` with `-D warnings` failed in both.) The comment
// opening each fragment keeps the definitions out of the list before
// (rustdoc drops a fragment's leading blank line).
#![cfg_attr(
    not(feature = "tower"),
    doc = "<!-- the links to the tower module -->\n[`cost`]: #crate-features\n[`tower`]: #crate-features"
)]
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod budget;
mod estimator;
pub mod gate;
mod permit;
#[cfg(test)]
mod tests;
#[cfg(feature = "tower")]
pub mod tower;

pub use budget::{Budget, BudgetStats, PerClient, Thousands, DEFAULT_PER_CLIENT};
pub use estimator::{DEFAULT_WINDOW, QUANTILE};
pub use permit::{Acquire, Permit};
