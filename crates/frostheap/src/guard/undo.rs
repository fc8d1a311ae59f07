//! The undo log of the rollback policy: what a worker's violating stores
//! overwrote, kept so the thaw can put it back (docs/rollback.md).
//!
//! **Filling it (fault handler, the worker's own thread).** Before a
//! violating store is let through, [`UndoLog::begin`] copies the bytes the
//! store may change (its *window*) into a staging slot, then takes a stamp
//! from the process-wide sequence counter — after the copy, so that any
//! store stamped later happened after this snapshot. One instruction later,
//! with access closed again, [`UndoLog::finish`] compares the window with
//! memory and appends one entry: the span from the first to the last
//! changed byte, each byte's old and new value. Nothing here allocates or
//! locks: the log is one `MAP_NORESERVE` mapping made before the worker's
//! first phase, and the space an entry may need is reserved by `begin`,
//! which refuses (the caller then cancels the task) rather than let a
//! store through that could not be undone.
//!
//! **Entry format.** `seq: u64 | addr: u64 | len: u32 | prev: u32` (24
//! bytes), then `len` pairs `(old, new)`, padded to 8 bytes. `prev` is the
//! offset of the worker's previous entry, for walking the log backwards. A
//! step whose span starts where the previous entry ends, with no stamp
//! taken by anyone in between, extends that entry: a `rep stosb` that the
//! trap flag steps one byte at a time becomes one entry, not thousands.
//!
//! **Replay (main, at the thaw, heaps writable).** [`replay_phase`] merges
//! the logs of all workers newest stamp first, and for every byte does an
//! atomic compare-exchange from the new value back to the old one. A byte
//! a later store changed again is restored by that store's entry first; a
//! byte a thread that is no worker wrote afterwards no longer holds the new
//! value, so its store stays. Entries of the same stamp never overlap
//! (one per window; windows of one step are disjoint). Phases of other
//! runtimes that overlap this one may have stored on top of its stores:
//! what the replay cannot restore yet is left over for theirs ([`Overlap`]).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::os::{self, OsError};

/// Staging slots: windows of one instruction pending between its fault and
/// its trap (a store crossing into a second frozen page faults twice).
pub(crate) const SLOTS: usize = 4;
/// Bytes of one staging slot: the largest window (a 4 KiB page).
pub(crate) const SLOT_BYTES: usize = 4096;
/// Bytes of entries one worker can hold per phase.
pub(crate) const LOG_BYTES: usize = 1 << 20;
/// Bytes of an entry header.
const HEADER: usize = 24;
/// `prev` of a worker's first entry.
const NO_ENTRY: u32 = u32::MAX;
/// Bytes of used entries kept resident after a replay; more are purged.
const KEEP_RESIDENT: usize = 64 << 10;

/// The process-wide stamp counter (0 is never handed out).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// One rollback step at a time, and no replay of an overlapping phase
/// during one: 0 when free, 1 while held, by a worker from
/// [`UndoLog::enter_gate`] (its fault, before anything else of the step)
/// to [`UndoLog::finish`] (its trap), or by a replay around its restores. A step's window is open to its own thread
/// alone, but the bytes in it are not: another worker's violating store
/// to them landing between the snapshot and the diff is taken for part
/// of this step, and so is a replay's restore (a store by a thread that
/// is no worker). With two runtimes storing into the same words, both
/// happened (a user's trial: a word left with a store's value at the end
/// in most runs): a replay then brought back a value another had undone.
/// The `mprotect` steps take it too, before the step lock (which a
/// replay's store into a page another phase keeps protected takes after
/// the gate: one order for both), so that a replay's restore into a page a
/// step has open cannot land inside that step's diff either (a review's
/// find: the pkey gate alone, taken after the step lock, could also
/// deadlock with such a replay). A futex word, taken in the fault handler: its holder runs one
/// instruction and its trap, or a replay's compare-exchanges, before it
/// lets go.
static GATE: AtomicU32 = AtomicU32::new(0);

/// Takes the [`GATE`] (async-signal-safe: a futex wait at most).
fn gate_enter() {
    while GATE
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        os::futex_wait(&GATE, 1, None);
    }
}

/// Lets the [`GATE`] go.
fn gate_leave() {
    GATE.store(0, Ordering::Release);
    os::futex_wake(&GATE, 1);
}

/// One pending window: `len == 0` when the slot is free.
struct Pending {
    lo: AtomicUsize,
    len: AtomicUsize,
    seq: AtomicU64,
}

/// One worker's undo log. Written by the worker's fault handlers during a
/// phase, read and reset by main after it (the worker's end-of-phase
/// signal orders the two); every field is an atomic for that hand-over,
/// accessed with `Relaxed` inside each side.
pub(crate) struct UndoLog {
    /// The mapping: `SLOTS × SLOT_BYTES` of staging, then `LOG_BYTES` of
    /// entries. Null until [`UndoLog::prepare`].
    base: AtomicUsize,
    /// Bytes of entries used.
    used: AtomicUsize,
    /// Bytes promised to pending windows (worst case each).
    reserved: AtomicUsize,
    /// Offset of the last entry, or [`NO_ENTRY`].
    last: AtomicU32,
    /// The newest stamp the last entry covers (an entry extended by later
    /// steps keeps its first stamp in its header).
    last_seq: AtomicU64,
    /// Steps recorded since the last reset: the stores undone.
    stores: AtomicU32,
    /// Most bytes ever used, for purging after a replay.
    high: AtomicUsize,
    /// Whether this worker's pending step holds the process's [`GATE`].
    in_gate: AtomicBool,
    /// Set at the first store that found no room ([`UndoLog::overflow`]):
    /// the phase keeps its stores, and this log records no more until
    /// its reset.
    overflowed: AtomicBool,
    pending: [Pending; SLOTS],
}

/// The outcome of [`UndoLog::begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Saved; let the store through.
    Saved,
    /// No room for the worst-case entry or no free slot: the store must
    /// not happen (the caller falls back to cancelling the task).
    Full,
}

impl Default for UndoLog {
    fn default() -> Self {
        Self::new()
    }
}

impl UndoLog {
    /// An empty log with no mapping yet.
    pub(crate) const fn new() -> UndoLog {
        UndoLog {
            base: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            last: AtomicU32::new(NO_ENTRY),
            last_seq: AtomicU64::new(0),
            stores: AtomicU32::new(0),
            high: AtomicUsize::new(0),
            in_gate: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            pending: [const {
                Pending {
                    lo: AtomicUsize::new(0),
                    len: AtomicUsize::new(0),
                    seq: AtomicU64::new(0),
                }
            }; SLOTS],
        }
    }

    /// Maps the log (outside any phase; idempotent).
    pub(crate) fn prepare(&self) -> Result<(), OsError> {
        if self.base.load(Ordering::Acquire) == 0 {
            let p = os::map_table(SLOTS * SLOT_BYTES + LOG_BYTES)?;
            self.base.store(p as usize, Ordering::Release);
        }
        Ok(())
    }

    /// Takes the [`GATE`] for a step of this worker, unless its pending
    /// step holds it already (a second fault of the same instruction).
    /// In the fault handler, first (before the step lock); [`finish`](Self::finish)
    /// or [`abandon_pending`](Self::abandon_pending) lets
    /// it go.
    pub(crate) fn enter_gate(&self) {
        if !self.in_gate.load(Ordering::Relaxed) {
            gate_enter();
            self.in_gate.store(true, Ordering::Relaxed);
        }
    }

    /// Forgets the pending windows of a worker parked inside a step (its
    /// store was never let through), and lets go of the [`GATE`] it held.
    /// The worker itself in its fault handler, before it parks
    /// (async-signal-safe: atomics and a futex wake), or main after the
    /// phase, before the replay (again: it does nothing the second time).
    pub(crate) fn abandon_pending(&self) {
        self.drop_pending();
        if self.in_gate.swap(false, Ordering::AcqRel) {
            gate_leave();
        }
    }

    /// Forgets the pending windows and keeps the [`GATE`]: a store the
    /// handler meant to perform itself and could not (the kernel refused
    /// the write: nothing changed) goes on to be stepped, under the same
    /// gate. Async-signal-safe.
    pub(crate) fn drop_pending(&self) {
        for p in &self.pending {
            let len = p.len.swap(0, Ordering::Relaxed);
            if len != 0 {
                self.reserved.fetch_sub(Self::worst(len), Ordering::Relaxed);
            }
        }
    }

    fn staging(&self, slot: usize) -> *mut u8 {
        (self.base.load(Ordering::Relaxed) + slot * SLOT_BYTES) as *mut u8
    }

    fn entries(&self) -> *mut u8 {
        (self.base.load(Ordering::Relaxed) + SLOTS * SLOT_BYTES) as *mut u8
    }

    /// Worst-case bytes of the entry for a window of `len` bytes.
    fn worst(len: usize) -> usize {
        (HEADER + 2 * len).next_multiple_of(8)
    }

    /// Saves the window `[lo, lo + len)` before a store that may change it
    /// is let through, and stamps it. Async-signal-safe.
    ///
    /// # Safety
    /// 1. The caller is the log's worker (in its fault handler), and
    ///    `[lo, lo + len)` is readable now and stays mapped until the
    ///    matching [`UndoLog::finish`] and the replay.
    pub(crate) unsafe fn begin(&self, lo: usize, len: usize) -> Begin {
        debug_assert!(len > 0 && len <= SLOT_BYTES, "a window fits a slot");
        if self.base.load(Ordering::Relaxed) == 0 || self.overflowed.load(Ordering::Relaxed) {
            return Begin::Full;
        }
        let Some(slot) = self
            .pending
            .iter()
            .position(|p| p.len.load(Ordering::Relaxed) == 0)
        else {
            return Begin::Full;
        };
        let need = Self::worst(len);
        let committed = self.used.load(Ordering::Relaxed) + self.reserved.load(Ordering::Relaxed);
        if committed + need > LOG_BYTES {
            return Begin::Full;
        }
        self.reserved.fetch_add(need, Ordering::Relaxed);
        // SAFETY: by (1) the window is readable; the slot is ours and holds
        // SLOT_BYTES >= len.
        unsafe { core::ptr::copy_nonoverlapping(lo as *const u8, self.staging(slot), len) };
        // The stamp follows the copy: a store stamped after this one
        // happens after this snapshot was complete.
        let seq = SEQ.fetch_add(1, Ordering::SeqCst) + 1;
        let p = &self.pending[slot];
        p.lo.store(lo, Ordering::Relaxed);
        p.seq.store(seq, Ordering::Relaxed);
        p.len.store(len, Ordering::Relaxed);
        Begin::Saved
    }

    /// Marks the log overflowed: a store found no room in it, and the
    /// phase will keep its stores instead of undoing them (the runtime
    /// sees it after the phase, [`UndoLog::overflowed`]). True the first
    /// time since the last reset. Async-signal-safe.
    pub(crate) fn overflow(&self) -> bool {
        !self.overflowed.swap(true, Ordering::Relaxed)
    }

    /// Whether a store of the phase found no room ([`UndoLog::overflow`]).
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Whether a window is pending (between a fault and its trap).
    pub(crate) fn is_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|p| p.len.load(Ordering::Relaxed) != 0)
    }

    /// Records what the store (and anything else that wrote the pending
    /// windows meanwhile) changed, once write access is closed again.
    /// Returns the bytes that changed. Async-signal-safe.
    ///
    /// # Safety
    /// 1. As for [`UndoLog::begin`]: the log's worker, the windows still
    ///    readable.
    pub(crate) unsafe fn finish(&self) -> usize {
        let mut changed = 0;
        let mut steps = 0;
        for p in &self.pending {
            let len = p.len.load(Ordering::Relaxed);
            if len == 0 {
                continue;
            }
            let slot = p as *const Pending as usize - self.pending.as_ptr() as usize;
            let slot = slot / core::mem::size_of::<Pending>();
            let lo = p.lo.load(Ordering::Relaxed);
            let seq = p.seq.load(Ordering::Relaxed);
            let old = self.staging(slot);
            // SAFETY: the window is readable by (1); the staging slot holds
            // its snapshot.
            let (first, last) = unsafe { changed_span(old, lo as *const u8, len) };
            if first < last {
                // SAFETY: space for the worst case was reserved by begin.
                unsafe { self.append(seq, lo + first, old.add(first), last - first) };
                changed += last - first;
            }
            self.reserved.fetch_sub(Self::worst(len), Ordering::Relaxed);
            p.len.store(0, Ordering::Relaxed);
            steps = 1;
        }
        self.stores.fetch_add(steps, Ordering::Relaxed);
        // After the diff: the step is over.
        if self.in_gate.swap(false, Ordering::AcqRel) {
            gate_leave();
        }
        changed
    }

    /// Appends (or extends the last entry with) the span of `len` bytes at
    /// `addr`, whose old values are at `old` and new values in memory.
    ///
    /// # Safety
    /// 1. Space for the worst case of the span's window is reserved;
    ///    `old` and `addr` are readable for `len` bytes.
    unsafe fn append(&self, seq: u64, addr: usize, old: *const u8, len: usize) {
        let entries = self.entries();
        let used = self.used.load(Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        if last != NO_ENTRY {
            let h = entries.wrapping_add(last as usize);
            // SAFETY: `last` is the offset of a complete entry of ours.
            let (_, laddr, llen, _) = unsafe { read_header(h) };
            if laddr + llen == addr && self.last_seq.load(Ordering::Relaxed) + 1 == seq {
                // Nobody stamped between the two steps: one entry in order.
                // SAFETY: the last entry ends at `used` (after padding); its
                // pairs grow in place into reserved space.
                unsafe {
                    write_pairs(h.add(HEADER + 2 * llen), old, addr as *const u8, len);
                    (h.add(16) as *mut u32).write((llen + len) as u32);
                }
                let end = (last as usize + HEADER + 2 * (llen + len)).next_multiple_of(8);
                self.set_used(end);
                self.last_seq.store(seq, Ordering::Relaxed);
                return;
            }
        }
        let h = entries.wrapping_add(used);
        // SAFETY: reserved by begin: HEADER + 2 len bytes fit at `used`.
        unsafe {
            (h as *mut u64).write(seq);
            (h.add(8) as *mut u64).write(addr as u64);
            (h.add(16) as *mut u32).write(len as u32);
            (h.add(20) as *mut u32).write(last);
            write_pairs(h.add(HEADER), old, addr as *const u8, len);
        }
        self.last.store(used as u32, Ordering::Relaxed);
        self.last_seq.store(seq, Ordering::Relaxed);
        self.set_used(used + Self::worst(len));
    }

    fn set_used(&self, used: usize) {
        self.used.store(used, Ordering::Relaxed);
        self.high.fetch_max(used, Ordering::Relaxed);
    }

    /// Stores recorded since the last reset.
    pub(crate) fn stores(&self) -> u32 {
        self.stores.load(Ordering::Acquire)
    }

    /// Whether nothing was recorded since the last reset.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.stores() == 0 && self.used.load(Ordering::Acquire) == 0
    }

    /// The entry at offset `from`, if any.
    fn newest(&self, from: u32) -> Option<Entry> {
        if from == NO_ENTRY || self.base.load(Ordering::Acquire) == 0 {
            return None;
        }
        let h = self.entries().wrapping_add(from as usize);
        // SAFETY: `from` is the offset of a complete entry (the log is at
        // rest: its worker has ended its phase).
        let (seq, addr, len, prev) = unsafe { read_header(h) };
        Some(Entry {
            seq,
            addr,
            len,
            pairs: h.wrapping_add(HEADER),
            prev,
        })
    }

    /// Forgets every entry (after the replay) and gives back the pages of
    /// a log that grew past [`KEEP_RESIDENT`].
    pub(crate) fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
        self.last.store(NO_ENTRY, Ordering::Relaxed);
        self.stores.store(0, Ordering::Release);
        self.overflowed.store(false, Ordering::Relaxed);
        let high = self.high.swap(0, Ordering::Relaxed);
        if high > KEEP_RESIDENT {
            let page = os::page_size();
            let from = self.entries() as usize + KEEP_RESIDENT;
            let to = (self.entries() as usize + high).next_multiple_of(page);
            // SAFETY: inside our mapping; nothing is stored there any more.
            let _ = unsafe { os::purge(from as *mut u8, to - from) };
        }
    }
}

impl Drop for UndoLog {
    fn drop(&mut self) {
        let base = self.base.load(Ordering::Acquire);
        if base != 0 {
            // SAFETY: mapped by prepare with this length; nothing refers to
            // it once the log is dropped.
            unsafe { os::unmap(base as *mut u8, SLOTS * SLOT_BYTES + LOG_BYTES) };
        }
    }
}

/// An entry as the replay reads it.
struct Entry {
    seq: u64,
    addr: usize,
    len: usize,
    /// `len` pairs (old, new).
    pairs: *const u8,
    /// Offset of the log's previous entry, or [`NO_ENTRY`].
    prev: u32,
}

/// The span `[first, last)` of offsets where `old` and `now` differ
/// (`first == last` if none).
///
/// # Safety
/// 1. Both are readable for `len` bytes.
unsafe fn changed_span(old: *const u8, now: *const u8, len: usize) -> (usize, usize) {
    // SAFETY: by (1). Volatile: `now` is memory other threads may write.
    let differs = |i: usize| unsafe { old.add(i).read() != now.add(i).read_volatile() };
    let Some(first) = (0..len).find(|&i| differs(i)) else {
        return (0, 0);
    };
    let last = (first..len).rev().find(|&i| differs(i)).unwrap_or(first) + 1;
    (first, last)
}

/// Writes `len` pairs (old, new) at `dst`.
///
/// # Safety
/// 1. `dst` is writable for `2 len` bytes; `old` and `now` readable for
///    `len`.
unsafe fn write_pairs(dst: *mut u8, old: *const u8, now: *const u8, len: usize) {
    for i in 0..len {
        // SAFETY: by (1).
        unsafe {
            dst.add(2 * i).write(old.add(i).read());
            dst.add(2 * i + 1).write(now.add(i).read_volatile());
        }
    }
}

/// (seq, addr, len, prev) of the entry at `h`.
///
/// # Safety
/// 1. `h` is an entry's header inside a log.
unsafe fn read_header(h: *const u8) -> (u64, usize, usize, u32) {
    // SAFETY: by (1); headers are 8-aligned (entries are padded to 8).
    unsafe {
        (
            (h as *const u64).read(),
            (h.add(8) as *const u64).read() as usize,
            (h.add(16) as *const u32).read() as usize,
            (h.add(20) as *const u32).read(),
        )
    }
}

/// A byte a replay could not restore because it no longer held the value
/// the store wrote: kept for the replays of the phases that were running
/// at the time (their later store to the byte may be on top of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leftover {
    seq: u64,
    addr: usize,
    old: u8,
    new: u8,
    /// Tickets below this one were handed out before the byte was left
    /// over: once none of them is in flight, no replay can bring back the
    /// value `new`, and the leftover is dropped.
    made_at: u64,
}

/// The rollback phases of the process (of every runtime) and what their
/// replays left over. Several runtimes may run phases at once over the
/// same heap (two threads, each driving one), so a byte may carry a
/// violating store of one runtime's phase on top of another's; each
/// runtime replays its own logs at its own thaw, and a replay that comes
/// first finds the other's value where it expects its own. Such a byte is
/// kept as a [`Leftover`] and restored by a later replay, in stamp order,
/// once the store on top of it has been undone. Taken by main threads
/// only (never by the handler), at the start of a phase and around a
/// replay.
struct Overlap {
    /// The next ticket (0 is never handed out).
    next: u64,
    /// Tickets of the phases started and not yet replayed.
    in_flight: Vec<u64>,
    /// Bytes left over, oldest stamp first.
    leftovers: Vec<Leftover>,
}

static OVERLAP: std::sync::Mutex<Overlap> = std::sync::Mutex::new(Overlap {
    next: 1,
    in_flight: Vec::new(),
    leftovers: Vec::new(),
});

fn overlap() -> std::sync::MutexGuard<'static, Overlap> {
    OVERLAP.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rollback phase in flight, from before its workers can store until
/// [`replay_phase`] undoes their stores.
#[must_use = "a ticket is given back by replay_phase"]
pub(crate) struct Ticket(u64);

impl Drop for Ticket {
    /// A phase that ends without its replay (a panic on main's way to it)
    /// is no longer in flight either.
    fn drop(&mut self) {
        let t = self.0;
        overlap().in_flight.retain(|&f| f != t);
    }
}

/// Drops the bytes left over in `[start, end)`: a heap's range, as the
/// heap is dropped (its memory unmapped or given to another heap, where a
/// later replay's compare-exchange would fault or change another heap's
/// byte: a review's find). Not in a handler; heaps are dropped by their
/// users, never inside a replay.
pub(crate) fn forget_range(start: usize, end: usize) {
    let mut o = overlap();
    if !o.leftovers.is_empty() {
        o.leftovers.retain(|l| !(start..end).contains(&l.addr));
    }
}

/// Counts a rollback phase in flight; called before its freeze, so that
/// every store its workers make is made while it is counted.
pub(crate) fn phase_begins() -> Ticket {
    let mut o = overlap();
    let t = o.next;
    o.next += 1;
    o.in_flight.push(t);
    Ticket(t)
}

/// `replay` (a phase's replay alone) for the phase of `ticket`, composed with the replays of
/// other runtimes' phases that overlap it: bytes a still-running phase has
/// stored on top of this one's are left over and restored by that phase's
/// replay, after its own store to them; this replay restores the bytes
/// earlier replays left over for it. Without overlap (the leftover list
/// empty, no other phase in flight) it is exactly `replay`.
///
/// # Safety
/// As `replay`, and 2. bytes earlier replays left over are still
/// mapped: they lie in guarded heaps of runtimes whose phases are in
/// flight or were when they were left over, and a heap dropped since took
/// its leftovers with it ([`forget_range`]).
pub(crate) unsafe fn replay_phase<'a>(
    logs: impl Iterator<Item = &'a UndoLog> + Clone,
    ticket: Ticket,
) -> usize {
    let mut o = overlap();
    let o = &mut *o;
    o.in_flight.retain(|&t| t != ticket.0);
    // Given back here, under the lock already held.
    core::mem::forget(ticket);
    let others = !o.in_flight.is_empty();
    let made_at = o.next;
    // Only a phase in flight has steps in progress.
    if others {
        gate_enter();
    }
    // SAFETY: by (1) and (2).
    let stores = unsafe { replay_merged(logs, &mut o.leftovers, others.then_some(made_at)) };
    if others {
        gate_leave();
    }
    // A leftover no phase in flight can resolve any more: the value on top
    // of it is a store that stays (a thread that is no worker made it).
    let oldest = o.in_flight.iter().copied().min().unwrap_or(u64::MAX);
    o.leftovers.retain(|l| l.made_at > oldest);
    stores
}

/// Undoes every entry of `logs`, newest stamp first, then resets them.
/// Returns the stores undone (steps recorded). Main thread, after every
/// worker of the phase has ended it and while no worker can run.
///
/// # Safety
/// 1. Every address an entry names is writable by the caller now (the
///    heaps are thawed, or this thread has write access to the key) and
///    still mapped.
#[cfg(test)]
pub(crate) unsafe fn replay<'a>(logs: impl Iterator<Item = &'a UndoLog> + Clone) -> usize {
    // SAFETY: by (1); nothing is left over.
    unsafe { replay_merged(logs, &mut Vec::new(), None) }
}

/// The replay: the entries of `logs` merged with `leftovers` (oldest stamp
/// first), newest stamp first; a leftover restored is removed. With
/// `keep` (a ticket bound: other phases are in flight), a byte of `logs`
/// that could not be restored is added to `leftovers`.
///
/// # Safety
/// 1. Every address an entry or a leftover names is writable by the
///    caller now and still mapped.
unsafe fn replay_merged<'a>(
    logs: impl Iterator<Item = &'a UndoLog> + Clone,
    leftovers: &mut Vec<Leftover>,
    keep: Option<u64>,
) -> usize {
    let mut stores = 0;
    // A cursor per log: the offset of its next (older) entry. Logs are
    // merged by picking the largest stamp each time; a phase has a few
    // workers, so a scan beats a heap and allocates nothing.
    const MAX: usize = 1024;
    let mut cursors = [NO_ENTRY; MAX];
    let mut n = 0;
    for log in logs.clone() {
        if n < MAX {
            cursors[n] = log.last.load(Ordering::Acquire);
        }
        n += 1;
    }
    assert!(
        n <= MAX,
        "frostheap: more than {MAX} undo logs in one phase"
    );
    // Leftovers are taken newest first too (from the end), interleaved by
    // stamp with the entries; those not restored go back, in order.
    let mut older = core::mem::take(leftovers);
    let mut kept_leftovers: Vec<Leftover> = Vec::new();
    let mut made: Vec<Leftover> = Vec::new();
    // Atomic, so a thread that is no worker writing the same byte now
    // either wins (its value stays) or loses cleanly.
    let restore = |addr: usize, old: u8, new: u8| {
        // SAFETY: every address passed is an entry's or a leftover's,
        // writable and mapped by (1).
        let byte = unsafe { AtomicU8::from_ptr(addr as *mut u8) };
        byte.compare_exchange(new, old, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    };
    loop {
        let mut best: Option<(usize, Entry)> = None;
        for (i, log) in logs.clone().enumerate() {
            if let Some(e) = log.newest(cursors[i]) {
                if best.as_ref().is_none_or(|(_, b)| e.seq > b.seq) {
                    best = Some((i, e));
                }
            }
        }
        if let Some(l) = older.last().copied() {
            if best.as_ref().is_none_or(|(_, b)| l.seq > b.seq) {
                older.pop();
                if !restore(l.addr, l.old, l.new) {
                    kept_leftovers.push(l);
                }
                continue;
            }
        }
        let Some((
            i,
            Entry {
                seq,
                addr,
                len,
                pairs,
                prev,
                ..
            },
        )) = best
        else {
            break;
        };
        cursors[i] = prev;
        for k in 0..len {
            // SAFETY: pairs of a complete entry.
            let (old, new) = unsafe { (pairs.add(2 * k).read(), pairs.add(2 * k + 1).read()) };
            if !restore(addr + k, old, new) && old != new {
                if let Some(made_at) = keep {
                    made.push(Leftover {
                        seq,
                        addr: addr + k,
                        old,
                        new,
                        made_at,
                    });
                }
            }
        }
    }
    for log in logs {
        stores += log.stores() as usize;
        log.reset();
    }
    // Oldest stamp first again: both lists were filled newest first.
    kept_leftovers.extend(made);
    kept_leftovers.sort_unstable_by_key(|l| l.seq);
    *leftovers = kept_leftovers;
    stores
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stamp counter is process-wide: tests that count on consecutive
    /// stamps run one at a time.
    static STAMPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A worker of the model: its log and the write it is stepping.
    struct Stepper {
        log: UndoLog,
        /// (offset, value) of the pending store, once begun.
        pending: Option<(usize, u8)>,
    }

    /// A xorshift generator (no dependency, reproducible).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Workers step stores (begin, store, finish) interleaved at random
    /// with each other and with stores by a thread that is no worker,
    /// which never write inside a window being stepped (the documented
    /// limit). After the replay every byte is as it was before the phase,
    /// or as the non-worker last wrote it.
    #[test]
    fn replay_restores_the_original_or_the_last_non_worker_value() {
        let _one = STAMPS.lock().unwrap_or_else(|e| e.into_inner());
        const MEM: usize = 256;
        const WINDOW: usize = 16;
        for seed in 1..400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut mem = vec![0u8; MEM];
            let original: Vec<u8> = (0..MEM).map(|i| (i * 7 % 50) as u8).collect();
            mem.copy_from_slice(&original);
            let mut expected = original.clone();
            let base = mem.as_mut_ptr() as usize;
            let workers: Vec<Stepper> = (0..3)
                .map(|_| Stepper {
                    log: UndoLog::new(),
                    pending: None,
                })
                .collect();
            let mut workers = workers;
            for w in &workers {
                w.log.prepare().unwrap();
            }
            let window_of = |off: usize| (off / WINDOW) * WINDOW;
            for _ in 0..200 {
                let w = rng.below(4);
                if w == 3 {
                    // A non-worker store, outside every pending window.
                    let off = rng.below(MEM);
                    let busy = workers.iter().any(|s| {
                        s.pending
                            .is_some_and(|(o, _)| window_of(o) == window_of(off))
                    });
                    if !busy {
                        let v = 128 + rng.below(128) as u8;
                        mem[off] = v;
                        expected[off] = v;
                    }
                    continue;
                }
                let s = &mut workers[w];
                match s.pending.take() {
                    None => {
                        let off = rng.below(MEM);
                        let lo = window_of(off);
                        // SAFETY: the window lies inside `mem`.
                        let r = unsafe { s.log.begin(base + lo, WINDOW) };
                        assert_eq!(r, Begin::Saved);
                        s.pending = Some((off, 50 + rng.below(78) as u8));
                    }
                    Some((off, v)) => {
                        mem[off] = v;
                        // SAFETY: the window lies inside `mem`.
                        unsafe { s.log.finish() };
                    }
                }
            }
            for s in &mut workers {
                if let Some((off, v)) = s.pending.take() {
                    mem[off] = v;
                    // SAFETY: as above.
                    unsafe { s.log.finish() };
                }
            }
            // SAFETY: every entry names a byte of `mem`, which we own.
            unsafe { replay(workers.iter().map(|s| &s.log)) };
            assert_eq!(mem, expected, "seed {seed}");
            assert!(workers.iter().all(|s| s.log.is_empty()));
        }
    }

    #[test]
    fn adjacent_steps_with_no_stamp_between_share_one_entry() {
        let _one = STAMPS.lock().unwrap_or_else(|e| e.into_inner());
        let mut mem = [0u8; 64];
        let base = mem.as_mut_ptr() as usize;
        let log = UndoLog::new();
        log.prepare().unwrap();
        for (i, byte) in mem.iter_mut().enumerate().take(32) {
            // SAFETY: inside `mem`.
            assert_eq!(unsafe { log.begin(base + i, 1) }, Begin::Saved);
            *byte = 0xAA;
            // SAFETY: inside `mem`.
            assert_eq!(unsafe { log.finish() }, 1);
        }
        assert_eq!(log.stores(), 32);
        assert_eq!(
            log.used.load(Ordering::Relaxed),
            (HEADER + 64).next_multiple_of(8)
        );
        // SAFETY: the entries name bytes of `mem`.
        assert_eq!(unsafe { replay(core::iter::once(&log)) }, 32);
        assert_eq!(mem, [0u8; 64]);
    }

    /// Two runtimes' phases store to one byte, the second on top of the
    /// first; the first phase replays while the second is in flight (its
    /// compare-exchange fails: the byte is left over), then the second
    /// replays its own entry and the leftover after it. With no phase in
    /// flight, nothing is kept.
    #[test]
    fn a_byte_stored_on_top_by_a_phase_in_flight_is_left_over_for_its_replay() {
        let _one = STAMPS.lock().unwrap_or_else(|e| e.into_inner());
        let mut mem = [1u8; 8];
        let at = mem.as_mut_ptr() as usize;
        let (first, second) = (UndoLog::new(), UndoLog::new());
        first.prepare().unwrap();
        second.prepare().unwrap();
        for (log, value) in [(&first, 0xA), (&second, 0xB)] {
            // SAFETY: inside `mem`.
            assert_eq!(unsafe { log.begin(at, 1) }, Begin::Saved);
            mem[0] = value;
            // SAFETY: inside `mem`.
            assert_eq!(unsafe { log.finish() }, 1);
        }
        let mut leftovers = Vec::new();
        // SAFETY: the entries name bytes of `mem`.
        let undone = unsafe { replay_merged(core::iter::once(&first), &mut leftovers, Some(7)) };
        assert_eq!(undone, 1);
        assert_eq!((mem[0], leftovers.len()), (0xB, 1), "{leftovers:?}");
        assert_eq!(
            (leftovers[0].old, leftovers[0].new, leftovers[0].made_at),
            (1, 0xA, 7)
        );
        // SAFETY: as above; the leftover names `mem[0]`.
        let undone = unsafe { replay_merged(core::iter::once(&second), &mut leftovers, None) };
        assert_eq!(undone, 1);
        assert_eq!((mem[0], leftovers.len()), (1, 0), "{leftovers:?}");
        // Without a phase in flight, a byte that stays changed (a thread
        // that is no worker wrote it) is not kept.
        // SAFETY: inside `mem`.
        assert_eq!(unsafe { first.begin(at, 1) }, Begin::Saved);
        mem[0] = 0xA;
        // SAFETY: inside `mem`.
        assert_eq!(unsafe { first.finish() }, 1);
        mem[0] = 0xC;
        // SAFETY: the entry names `mem[0]`.
        unsafe { replay_merged(core::iter::once(&first), &mut leftovers, None) };
        assert_eq!((mem[0], leftovers.len()), (0xC, 0));
    }

    #[test]
    fn a_full_log_refuses_before_the_store() {
        let _one = STAMPS.lock().unwrap_or_else(|e| e.into_inner());
        let mem = vec![1u8; SLOT_BYTES];
        let log = UndoLog::new();
        log.prepare().unwrap();
        let mut saved = 0;
        // SAFETY: the window lies inside `mem`.
        while unsafe { log.begin(mem.as_ptr() as usize, SLOT_BYTES) } == Begin::Saved {
            // SAFETY: as above. Nothing changed: no entry, and the
            // reservation is given back ...
            unsafe { log.finish() };
            // ... so count the space as if every byte had changed.
            log.used
                .fetch_add(UndoLog::worst(SLOT_BYTES), Ordering::Relaxed);
            saved += 1;
        }
        assert_eq!(saved, LOG_BYTES / UndoLog::worst(SLOT_BYTES));
        assert!(!log.is_pending());
    }
}
