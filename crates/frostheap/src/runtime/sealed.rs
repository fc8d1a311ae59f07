//! The sealed-trait pattern: public traits of the parallel API
//! ([`ParSource`](super::source::ParSource), [`Pipe`](super::pipe::Pipe),
//! [`Drive`](super::drive::Drive)) that only this crate implements.

/// Implemented by this crate's parallel types only.
pub trait Sealed {}
