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
//!
//! The crate sits above the allocator crate (`frostheap`), which carries
//! no HTTP or tower dependency.
//!
//! ## Crate features
//!
//! The default build has no optional features.
//!
//! - `tower`: [`tower`](crate::tower), a tower middleware that admits HTTP
//!   requests by memory from a [`Budget`] — waiting for a permit through
//!   `poll_ready`, or shedding with 503. Adds tower-service, tower-layer,
//!   http, http-body and pin-project-lite.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod budget;
mod estimator;
pub mod gate;
mod permit;
#[cfg(feature = "tower")]
pub mod tower;

pub use budget::{Budget, BudgetStats, PerClient, Thousands, DEFAULT_PER_CLIENT};
pub use permit::{Acquire, Permit};
