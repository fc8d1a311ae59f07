//! The operating-system boundary: the only module that makes system calls.
//!
//! Everything above this layer speaks in terms of page-aligned ranges and
//! plain results; everything here is a thin, documented wrapper around one
//! kernel facility. Each function states its preconditions (alignment,
//! non-zero length) and postconditions (contents zeroed or not), in the
//! spirit of mimalloc's `prim.h`: the whole OS interface fits on a page.
//!
//! Linux is the first-class platform. Other targets fail at build time with
//! a clear message instead of misbehaving at run time.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;
#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(target_os = "linux")]
mod objects;
#[cfg(target_os = "linux")]
pub(crate) use objects::loaded_objects;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "frostheap supports Linux only for now: its `os` layer (src/os/) has no \
     implementation for this target. Porting means adding src/os/<platform>.rs \
     with the same functions (reserve, commit, decommit, protect, ...)."
);
