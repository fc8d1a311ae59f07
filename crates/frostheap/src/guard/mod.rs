//! The guard table: every heap region of the process, with what the fault
//! handler must know about it, and (in [`worker`]) what the handler and
//! the runtime share about each worker thread.
//!
//! One fixed array of [`Entry`]s, one per live heap: the heap's address
//! range, an opaque pointer to its owner, and its guard state — how many
//! phases freeze it now (and how many of them with `mprotect`), sealed for
//! good, the protection key its pages carry, and how many runtimes guard
//! it. An entry is claimed when its heap is built
//! and released when the heap is dropped, so guard state lives exactly as
//! long as its heap: a new heap at a reused address starts from a clean
//! entry. "Which heap owns this address" is a scan of the entries in use
//! with two compares each, lock-free and async-signal-safe.
//!
//! Context heaps are not in the table: they live in one reservation of
//! their own, where ownership is a subtraction and a shift
//! (`context::owns`), and they are never frozen.
//!
//! The owner pointer is opaque here; its typed view lives in the module
//! that registered it (`heap`), which alone casts it back.
//!
//! This is the bottom of the crate's guard machinery: it imports only
//! `os` and `config`, so the heap (which defers frees and marks seals
//! here) and the trap (which reads it from the handler) both stand on it.

pub(crate) mod stack;
pub(crate) mod undo;
pub(crate) mod worker;

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

use crate::os;

pub(crate) use stack::StackCopy;
pub(crate) use undo::UndoLog;
pub(crate) use worker::{
    current_item, current_worker, defer_free, set_current_item, set_current_worker, WorkerState,
    AUDIT_RECORDS, JOB_ABANDONED, JOB_PARKED, JOB_RUNNING,
};

/// Most heaps alive at once.
pub(crate) const CAPACITY: usize = 256;

/// One heap region and its guard state.
///
/// Registration fills every field and publishes `start` last (Release);
/// removal clears `start` first. A reader that sees a non-zero `start`
/// with Acquire sees the rest of the entry as registered.
pub(crate) struct Entry {
    /// First address; 0 while the entry is free (or being filled).
    start: AtomicUsize,
    /// One past the last address; 0 while free. Claiming an entry moves
    /// it from 0 to the region's end (compare-exchange).
    end: AtomicUsize,
    /// One past the last committed byte: `start` plus the heap's committed
    /// prefix, published by its region as the prefix grows or shrinks
    /// (`Region::mirror_committed`). The rest of the range is reserved
    /// (`PROT_NONE`): a fault there is the program's, frozen or not.
    committed_end: AtomicUsize,
    /// The heap's own pointer, opaque here (see the module comment).
    owner: AtomicPtr<()>,
    /// Phases that freeze the heap now (several runtimes may guard one
    /// heap and run phases at once): raised before the first page is
    /// protected, lowered after the last is opened (the freeze protocol,
    /// `trap::freeze`, which changes both counts under its lock).
    frozen: AtomicU32,
    /// Of those, the phases whose backend is `mprotect`: the heap's pages
    /// are protected exactly while this is non-zero. The first such freeze
    /// protects them and the last thaw opens them; a count, not a flag, so
    /// that one runtime's thaw never opens pages another's phase still
    /// has frozen.
    protected: AtomicU32,
    /// Sealed for good: read-only to everyone, never thawed.
    sealed: AtomicBool,
    /// The protection key the region's pages carry (0: none).
    key: AtomicU32,
    /// Runtimes that guard this heap now.
    guards: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Entry = Entry {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    committed_end: AtomicUsize::new(0),
    owner: AtomicPtr::new(core::ptr::null_mut()),
    frozen: AtomicU32::new(0),
    protected: AtomicU32::new(0),
    sealed: AtomicBool::new(false),
    key: AtomicU32::new(0),
    guards: AtomicU32::new(0),
};

static TABLE: [Entry; CAPACITY] = [FREE; CAPACITY];
/// One past the highest entry ever used: lookups scan `[0, HIGH)`.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Registers the region `[start, end)` of the heap `owner`, its first
/// `committed` bytes committed, with clean guard state; `None` when the
/// table is full. The caller keeps [`Entry::committed_cell`] up to date
/// from then on.
pub(crate) fn register(
    start: usize,
    end: usize,
    committed: usize,
    owner: *const (),
) -> Option<&'static Entry> {
    debug_assert!(start != 0 && start < end, "register: empty range");
    for (i, e) in TABLE.iter().enumerate() {
        // Claim a free entry by moving `end` from 0 to ours; `start` stays
        // 0 (invisible to lookups) until the entry is filled.
        if e.end
            .compare_exchange(0, end, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            e.owner.store(owner as *mut (), Ordering::Relaxed);
            e.committed_end.store(start + committed, Ordering::Relaxed);
            e.frozen.store(0, Ordering::Relaxed);
            e.protected.store(0, Ordering::Relaxed);
            e.sealed.store(false, Ordering::Relaxed);
            e.key.store(0, Ordering::Relaxed);
            e.guards.store(0, Ordering::Relaxed);
            e.start.store(start, Ordering::Release);
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            return Some(e);
        }
    }
    None
}

/// Releases `entry` (its heap is being dropped).
///
/// Precondition: no runtime guards the heap (each holds a handle to it),
/// and it is not sealed (a sealed heap is never dropped).
pub(crate) fn unregister(entry: &'static Entry) {
    debug_assert_eq!(
        entry.guards.load(Ordering::Acquire),
        0,
        "unregister: a runtime still guards this heap"
    );
    // Bytes a replay left over in this heap go with it: its memory is
    // about to be unmapped, or reused by another heap.
    undo::forget_range(
        entry.start.load(Ordering::Acquire),
        entry.end.load(Ordering::Acquire),
    );
    entry.start.store(0, Ordering::Release);
    entry.owner.store(core::ptr::null_mut(), Ordering::Relaxed);
    entry.committed_end.store(0, Ordering::Relaxed);
    entry.end.store(0, Ordering::Release);
}

/// The entry whose region contains `addr`, if any. Lock-free and
/// async-signal-safe.
pub(crate) fn entry_of(addr: usize) -> Option<&'static Entry> {
    let high = HIGH.load(Ordering::Acquire);
    TABLE[..high].iter().find(|e| {
        let start = e.start.load(Ordering::Acquire);
        start != 0 && addr >= start && addr < e.end.load(Ordering::Relaxed)
    })
}

/// The first address of `[addr, addr + len)` that lies in a frozen or
/// sealed heap, if any (checked page by page).
pub(crate) fn frozen_in(addr: usize, len: usize) -> Option<usize> {
    let page = os::page_size();
    let mut a = addr & !(page - 1);
    while a < addr + len.max(1) {
        if entry_of(a).is_some_and(|e| e.is_frozen() || e.is_sealed()) {
            return Some(a.max(addr));
        }
        a += page;
    }
    None
}

impl Entry {
    /// First address of the region.
    pub(crate) fn start(&self) -> usize {
        self.start.load(Ordering::Acquire)
    }

    /// Whether `addr`, inside the region, lies in its committed prefix.
    /// Lock-free and async-signal-safe; exact for any address the program
    /// got from the heap (the prefix is published grown before a block in
    /// the new part is handed out, and shrunk before it is decommitted).
    pub(crate) fn is_committed(&self, addr: usize) -> bool {
        addr < self.committed_end.load(Ordering::Acquire)
    }

    /// Where the heap's region publishes its committed end (an address).
    pub(crate) fn committed_cell(&'static self) -> &'static AtomicUsize {
        &self.committed_end
    }

    /// The owner registered with the region, as an opaque pointer (null
    /// once released). Only the registering module casts it back.
    pub(crate) fn owner(&self) -> *const () {
        self.owner.load(Ordering::Acquire)
    }

    /// Frozen by a phase now (by at least one).
    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire) > 0
    }

    /// Counts one more phase freezing the heap (`true`) or one fewer (the
    /// freeze protocol in `trap::freeze`, under its lock).
    pub(crate) fn set_frozen(&self, frozen: bool) {
        if frozen {
            self.frozen.fetch_add(1, Ordering::AcqRel);
        } else {
            let before = self.frozen.fetch_sub(1, Ordering::AcqRel);
            debug_assert!(before > 0, "set_frozen: not frozen");
        }
    }

    /// Whether an `mprotect` freeze has the heap's pages protected now.
    pub(crate) fn is_protected(&self) -> bool {
        self.protected.load(Ordering::Acquire) > 0
    }

    /// Counts one more `mprotect` freeze of the heap; true if it is the
    /// first (the caller protects the pages). Under the freeze lock.
    pub(crate) fn protect_first(&self) -> bool {
        self.protected.fetch_add(1, Ordering::AcqRel) == 0
    }

    /// Counts one `mprotect` freeze fewer; true if it was the last (the
    /// caller opens the pages). Under the freeze lock.
    pub(crate) fn protect_last(&self) -> bool {
        let before = self.protected.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "protect_last: not protected");
        before == 1
    }

    /// Sealed for good.
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Marks the heap sealed: from now on a write to it is never a
    /// thawed-race retry, and a worker's write is a violation in any phase.
    pub(crate) fn mark_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// The protection key the region's pages carry (0: none).
    pub(crate) fn key(&self) -> u32 {
        self.key.load(Ordering::Acquire)
    }

    /// Records the key the region's pages carry after tagging them.
    pub(crate) fn set_key(&self, key: u32) {
        self.key.store(key, Ordering::Release);
    }

    /// Counts one more runtime guarding the heap; returns the new count.
    pub(crate) fn add_guard(&self) -> u32 {
        self.guards.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts one runtime fewer; returns the new count.
    pub(crate) fn remove_guard(&self) -> u32 {
        let before = self.guards.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "remove_guard: no guard to remove");
        before - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses far from any real mapping: the table never dereferences
    /// them.
    const FAKE: usize = 0x7e00_0000_0000;

    #[test]
    fn a_released_entry_comes_back_clean_for_the_next_region_at_that_address() {
        let owner = 0x1000 as *const ();
        let e = register(FAKE, FAKE + (1 << 20), 8192, owner).expect("a free entry");
        assert!(core::ptr::eq(entry_of(FAKE + 5).unwrap(), e));
        assert_eq!(e.owner(), owner);
        assert!(e.is_committed(FAKE + 8191) && !e.is_committed(FAKE + 8192));
        e.committed_cell().store(FAKE + 16384, Ordering::Release);
        assert!(e.is_committed(FAKE + 16383) && !e.is_committed(FAKE + 16384));
        e.set_frozen(true);
        e.mark_sealed();
        e.set_key(3);
        assert_eq!(e.add_guard(), 1);
        assert_eq!(frozen_in(FAKE + 100, 8), Some(FAKE + 100));
        assert!(e.protect_first());
        assert_eq!(e.remove_guard(), 0);
        e.sealed.store(false, Ordering::Relaxed);
        unregister(e);
        assert!(entry_of(FAKE + 5).is_none());
        assert_eq!(frozen_in(FAKE + 100, 8), None);
        let again = register(FAKE, FAKE + (1 << 20), 0, 0x2000 as *const ()).expect("an entry");
        assert!(!again.is_frozen() && !again.is_protected() && !again.is_sealed());
        assert!(
            !again.is_committed(FAKE),
            "nothing committed: the last heap's prefix is gone"
        );
        assert_eq!((again.key(), again.add_guard()), (0, 1));
        assert_eq!(again.remove_guard(), 0);
        unregister(again);
    }

    #[test]
    fn lookups_find_the_right_entry_and_nothing_outside() {
        let base = FAKE + (1 << 32);
        let a = register(base, base + 4096, 4096, 0xa0 as *const ()).unwrap();
        let b = register(base + 8192, base + 12288, 4096, 0xb0 as *const ()).unwrap();
        assert!(core::ptr::eq(entry_of(base).unwrap(), a));
        assert!(core::ptr::eq(entry_of(base + 4095).unwrap(), a));
        assert!(entry_of(base + 4096).is_none());
        assert!(core::ptr::eq(entry_of(base + 8192).unwrap(), b));
        assert!(entry_of(base + 12288).is_none());
        unregister(a);
        unregister(b);
    }
}
