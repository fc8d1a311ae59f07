//! The one error type of frostheap. Every variant carries the numbers a
//! caller needs (requested, limit, in use, ...) through accessors, and its
//! message says what happened, the value, and what to do about it.

use core::fmt;

use crate::os::OsError;

/// Everything that can go wrong in frostheap.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// An allocation would take the heap past its hard `max`.
    OutOfMemory {
        /// Bytes asked for (the size of the allocation that failed).
        requested: usize,
        /// The heap's limit (`max`) in bytes.
        limit: usize,
        /// Bytes in use in the heap when the allocation failed.
        in_use: usize,
    },
    /// A configuration value is not acceptable.
    InvalidConfig {
        /// What was configured: an environment variable or builder option.
        name: &'static str,
        /// The value given, as text.
        value: String,
        /// What is accepted instead.
        expected: String,
    },
    /// A parallel task wrote a guarded (frozen) heap.
    Violation(Box<crate::violation::Violation>),
    /// A task panicked; the other tasks finished or were skipped, the heaps
    /// were thawed, and the runtime is still usable.
    TaskPanicked {
        /// Index of the input item whose task panicked (`None` for scope
        /// tasks without an index).
        item_index: Option<usize>,
        /// The panic message.
        message: String,
    },
    /// A parallel call did not run every task, and no violation or panic
    /// of its own explains why: the runtime could not start the phase with
    /// all of its workers (threads parked by the cancel policy passed
    /// `max_parked`, or a replacement could not start: no task of the call
    /// ran), or tasks that made no progress while workers parked by earlier
    /// violations keep their tasks' locks were abandoned. `reason` says
    /// which. The call's results are discarded.
    Incomplete {
        /// What happened and what to do about it.
        reason: String,
    },
    /// Data passed to the runtime for tasks to change lives in a guarded
    /// heap, which is frozen while tasks run: the call failed before the
    /// phase started, and nothing was changed.
    NotWritable {
        /// The guarded heap the data lives in.
        heap: String,
        /// The data's first address.
        address: usize,
        /// The data's length in bytes.
        bytes: usize,
    },
    /// A system call failed.
    Os {
        /// What frostheap was doing.
        context: &'static str,
        /// The failing call and its errno.
        source: OsError,
    },
}

impl Error {
    /// Bytes requested, for [`Error::OutOfMemory`].
    pub fn requested(&self) -> Option<usize> {
        match self {
            Error::OutOfMemory { requested, .. } => Some(*requested),
            _ => None,
        }
    }

    /// The limit in force, for [`Error::OutOfMemory`].
    pub fn limit(&self) -> Option<usize> {
        match self {
            Error::OutOfMemory { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// Bytes in use when the error happened, for [`Error::OutOfMemory`].
    pub fn in_use(&self) -> Option<usize> {
        match self {
            Error::OutOfMemory { in_use, .. } => Some(*in_use),
            _ => None,
        }
    }

    /// The violation, for [`Error::Violation`].
    pub fn violation(&self) -> Option<&crate::violation::Violation> {
        match self {
            Error::Violation(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn invalid(
        name: &'static str,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> Error {
        Error::InvalidConfig {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory { requested, limit, in_use } => write!(
                f,
                "out of memory: {:#} requested, {:#} in use, limit {:#}; raise max (FROSTHEAP_MAX) or free memory first",
                crate::size::Bytes(*requested),
                crate::size::Bytes(*in_use),
                crate::size::Bytes(*limit),
            ),
            Error::InvalidConfig { name, value, expected } => {
                write!(f, "invalid {name}={value:?}: expected {expected}")
            }
            Error::Violation(v) => write!(f, "{v}"),
            Error::TaskPanicked { item_index: Some(i), message } => write!(f, "task for item #{i} panicked: {message}"),
            Error::TaskPanicked { item_index: None, message } => write!(f, "task panicked: {message}"),
            Error::Incomplete { reason } => write!(f, "the parallel call did not run every task: {reason}"),
            Error::NotWritable { heap, address, bytes } => write!(
                f,
                "the {} at {address:#x} was passed for tasks to change, but it lives in the guarded heap {heap:?}, \
                 which is frozen while tasks run; build it where tasks may write: inside frostheap::unguarded(|| ..) \
                 (and grow it there too), in a frostheap::Shared, or in a Heap not passed to guard()",
                DataLen(*bytes),
            ),
            Error::Os { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

/// A bad `FROSTHEAP_*` value, as `Heap::build` and `Runtime::build` return
/// it: the variable, its value and what is accepted.
impl From<crate::config::EnvError> for Error {
    fn from(e: crate::config::EnvError) -> Error {
        Error::InvalidConfig {
            name: e.var,
            value: String::from_utf8_lossy(e.value).into_owned(),
            expected: e.expected.to_string(),
        }
    }
}

/// "slice of N bytes" / "N-byte slice" wording for [`Error::NotWritable`].
struct DataLen(usize);

impl fmt::Display for DataLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slice of {}", crate::size::Bytes(self.0))
    }
}
