//! The one error type of frostheap. Every variant carries the numbers a
//! caller needs (requested, limit, in use, ...) through accessors, and its
//! message says what happened, the value, and what to do about it.

use core::fmt;

use crate::os::OsError;

/// Everything that can go wrong in frostheap.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// An allocation (or a charge) was refused. `refused_by` says what
    /// refused it, and so what the numbers count: the heap's own `max`
    /// (the heap's numbers), the process limit, `FROSTHEAP_MAX` (the
    /// process's numbers), the heap's range or the kernel (the heap's
    /// numbers), a sealed heap, or a budget. Match it with `..`
    /// (`committed` and `refused_by` came after the first three fields).
    OutOfMemory {
        /// Bytes the refused allocation asked for: its size. (A layout
        /// aligned to more than a heap page takes only its own pages, at a
        /// page so aligned; when the heap has no such page free and its
        /// range cannot grow to one, it is refused for those bytes.)
        requested: usize,
        /// The limit that refused, in bytes: the heap's `max` for
        /// [`RefusedBy::HeapMax`], [`RefusedBy::Range`],
        /// [`RefusedBy::System`] and [`RefusedBy::Sealed`]; the process
        /// limit (`FROSTHEAP_MAX`, or its default) for
        /// [`RefusedBy::ProcessLimit`]; the budget's total for
        /// [`RefusedBy::Budget`].
        limit: usize,
        /// Bytes in use against `limit` when the allocation was refused:
        /// in the heap's blocks for the heap's own refusals; for
        /// [`RefusedBy::ProcessLimit`], what the process has committed
        /// (the limit counts committed memory, every heap's, not blocks);
        /// the bytes the budget's permits hold for [`RefusedBy::Budget`].
        in_use: usize,
        /// Bytes committed against `limit`: the heap's committed memory
        /// (whole spans of 64 KiB pages, and the free memory it keeps),
        /// which is what its `max` bounds, for the heap's own refusals;
        /// the process's for [`RefusedBy::ProcessLimit`]; `in_use` for
        /// [`RefusedBy::Budget`]. Where it is far above `in_use` the
        /// heap's memory is held by the rounding of its blocks to their
        /// spans (blocks of 65,537 bytes take two 64 KiB pages each).
        committed: usize,
        /// What refused the allocation.
        refused_by: RefusedBy,
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

/// What refused an allocation, for [`Error::OutOfMemory`]: which limit,
/// and so what its numbers count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusedBy {
    /// The heap's own `max` (below the process limit): raising `max`, or
    /// freeing the heap's blocks, makes room.
    HeapMax,
    /// The process limit (`FROSTHEAP_MAX`, or its default), which every
    /// heap's committed memory counts against: `limit` is it, `in_use` and
    /// `committed` are what the process has committed. Raising
    /// `FROSTHEAP_MAX`, or freeing memory in any heap, makes room.
    ProcessLimit,
    /// The heap's range (its reservation, `max` rounded up) has no free
    /// run of pages that large, though the request fits under `max`: the
    /// blocks the heap holds pin the range.
    Range,
    /// The kernel refused to commit memory (`ulimit -v`, the overcommit
    /// policy, `vm.max_map_count`).
    System,
    /// The heap is sealed ([`crate::Heap::seal`]) and allocates nothing
    /// more, whatever its limit: neither a larger `max` nor freeing
    /// memory helps.
    Sealed,
    /// A memory budget (frostheap-budget's `Budget`): `limit` is its
    /// total, `in_use` what its permits hold.
    Budget,
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

    /// Bytes in use when the error happened, for [`Error::OutOfMemory`]
    /// (see its field for what they count).
    pub fn in_use(&self) -> Option<usize> {
        match self {
            Error::OutOfMemory { in_use, .. } => Some(*in_use),
            _ => None,
        }
    }

    /// Bytes committed against the limit, for [`Error::OutOfMemory`].
    pub fn committed(&self) -> Option<usize> {
        match self {
            Error::OutOfMemory { committed, .. } => Some(*committed),
            _ => None,
        }
    }

    /// What refused the allocation, for [`Error::OutOfMemory`].
    pub fn refused_by(&self) -> Option<RefusedBy> {
        match self {
            Error::OutOfMemory { refused_by, .. } => Some(*refused_by),
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
            Error::OutOfMemory {
                requested,
                limit,
                in_use,
                committed,
                refused_by,
            } => {
                use crate::size::Bytes;
                let (requested, limit, in_use, committed) =
                    (Bytes(*requested), Bytes(*limit), Bytes(*in_use), Bytes(*committed));
                // The heap's numbers: in use, and committed, which its
                // limit bounds (blocks rounded to their spans show here).
                let held = format_args!("{in_use:#} in use in {committed:#} committed");
                match refused_by {
                    RefusedBy::HeapMax => write!(
                        f,
                        "out of memory: {requested:#} requested, {held}, limit {limit:#} (the heap's max, which its committed memory counts against); raise the heap's max or free its memory first"
                    ),
                    RefusedBy::ProcessLimit => write!(
                        f,
                        "out of memory: {requested:#} requested, the process has {committed:#} committed, limit {limit:#} (FROSTHEAP_MAX, which every heap's committed memory counts against); raise FROSTHEAP_MAX or free memory first"
                    ),
                    RefusedBy::Range => write!(
                        f,
                        "out of memory: {requested:#} requested, {held}, limit {limit:#}: the heap's range has no free run that large (the blocks it holds pin it), though it fits under the heap's max; free the blocks that pin it, or use a heap with a larger max"
                    ),
                    RefusedBy::System => write!(
                        f,
                        "out of memory: {requested:#} requested, {held}, limit {limit:#}: the kernel refused to commit memory (see ulimit -v, vm.overcommit_memory, vm.max_map_count)"
                    ),
                    RefusedBy::Sealed => write!(
                        f,
                        "out of memory: {requested:#} requested from a sealed heap ({held}): a heap sealed with Heap::seal allocates nothing more, whatever its limit ({limit:#}); allocate before sealing it, or from another heap"
                    ),
                    RefusedBy::Budget => write!(
                        f,
                        "out of memory: {requested:#} requested, more than the whole budget ({limit:#}, {in_use:#} of it in use); raise the budget or ask for less"
                    ),
                }
            }
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
                 (and grow it there too: a frostheap::Shared holds a value there, not what the value owns), or in a Heap not passed to guard()",
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
