//! The freeze protocol: [`Freeze::new`] freezes a runtime's guarded heaps
//! for one phase, and dropping the [`Freeze`] thaws them.
//!
//! The fault handler's invariants are enforced here, next to it:
//! - **Mark every heap before protecting any** (mprotect). A guarded
//!   heap's own bookkeeping may live in another guarded heap (a `Heap`
//!   built on main lives in the main heap), so every core is written (its
//!   region marked frozen, so pages committed meanwhile are committed
//!   read-only) before the first page is protected; on thaw every heap is
//!   opened before any mark is cleared (but see the next point).
//! - **Guard flags up before the first `mprotect`, down after the last.**
//!   A thread that is no worker and writes a heap while it is protected
//!   always finds the heap's entry frozen and [`MPROTECT_FROZEN`] non-zero,
//!   so its store is stepped through in the handler.
//! - **Several runtimes may freeze one heap at once** (two threads each
//!   driving a runtime that guards the main heap). A heap's entry counts
//!   the phases that freeze it, and of them the `mprotect` ones: the first
//!   of those protects its pages (and marks it), the last opens them (and
//!   clears the mark); the ones between change only the counts. Every
//!   freeze and thaw of the process runs under [`FREEZES`], so the counts,
//!   marks and protections change together. Until 2026-12 the flag was one
//!   bit and every thaw opened its heaps: one runtime's thaw opened the
//!   main heap and lowered its flag while the other's phase ran, so that
//!   phase's violating stores landed unseen (`Ok` with the store kept), or
//!   the other runtime's next freeze protected it again under a lowered
//!   flag and the next write to it by any thread was taken for a real
//!   crash (SIGSEGV, 4 runs in 4 of a user's trial).
//! - **A thaw never writes frozen memory while it holds the step lock**:
//!   such a store would be stepped through, and the step's trap releases
//!   the lock. So a heap whose core lives in a heap another phase keeps
//!   protected has its mark cleared before the lock is taken (a store
//!   stepped through like any bystander's).
//! - **Nothing here allocates or writes memory a frozen heap holds** (but
//!   for those marks): everything is read from the runtime's system-memory
//!   state, and the lengths thawed are kept on the stack.
//!
//! With protection keys the pages keep their key for the runtime's life
//! ([`super::Guarded`]); the freeze is each worker's PKRU (set by the
//! worker at the start of its phase) plus the entries' frozen counts, which
//! tell the handler and the `io` helpers what is frozen now.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use super::{Backend, Guarded};
use crate::guard;
use crate::heap::HeapInner;
use crate::os;
use crate::sync::{LockGuard, RawLock};

/// Bumped at every thaw; threads waiting in the handler sleep on it.
pub(super) static THAW_EPOCH: AtomicU32 = AtomicU32::new(0);
/// Heaps frozen with `mprotect` right now (by any runtime), counted once
/// per phase that freezes them.
pub(super) static MPROTECT_FROZEN: AtomicU32 = AtomicU32::new(0);

/// Every freeze and thaw of the process, one at a time: the entries'
/// counts, the regions' marks and the pages' protections they decide
/// change together. Taken by runtimes' main threads between phases, never
/// by the handler (whose steps a holder may need: a mark written into a
/// heap another phase has frozen is stepped through).
static FREEZES: RawLock = RawLock::new();

/// Phases with result slots exempted from their freeze at once; one more
/// waits (before freezing) until a phase ends.
const EXEMPT_SLOTS: usize = 64;

/// Bits of an [`EXEMPT`] word that hold the window's page count; the
/// first page's number lies above them (36 bits). With 4 KiB pages a
/// window may reach 1 TiB and lie anywhere under 2^48 (x86_64's user space
/// is under 2^47 unless a mapping asks for more).
const EXEMPT_LEN_BITS: u32 = 28;

/// The pages exempted from a current freeze (a phase's result slots), a
/// word per phase: the first page's number above [`EXEMPT_LEN_BITS`], the
/// page count below; 0 while the slot is free. The rollback policy never
/// saves or undoes bytes there (`handler`). Written under [`FREEZES`];
/// read lock-free by the handler.
///
/// One word, not a start and a length: the handler may read a slot while
/// its phase ends and the next one fills it, and two words could pair one
/// window's start with the other's length (a window that was never
/// exempt, or an exempt one missed, whose result slots the handler would
/// then save and put back over a worker's results).
#[allow(clippy::declare_interior_mutable_const)]
const NO_EXEMPT: AtomicUsize = AtomicUsize::new(0);

static EXEMPT: [AtomicUsize; EXEMPT_SLOTS] = [NO_EXEMPT; EXEMPT_SLOTS];

/// The [`EXEMPT`] word of the window `[lo, lo + len)`, or `None` if it is
/// empty, not whole pages, or beyond what a word encodes.
fn exempt_word(lo: usize, len: usize) -> Option<usize> {
    let shift = os::page_size().trailing_zeros();
    let mask = (1usize << shift) - 1;
    let (first, pages) = (lo >> shift, len >> shift);
    let fits =
        pages != 0 && pages < 1 << EXEMPT_LEN_BITS && first < 1 << (usize::BITS - EXEMPT_LEN_BITS);
    (lo & mask == 0 && len & mask == 0 && fits).then_some(first << EXEMPT_LEN_BITS | pages)
}

/// The window `(lo, len)` an [`EXEMPT`] word holds (`(0, 0)` for a free
/// slot).
fn exempt_window(word: usize) -> (usize, usize) {
    let shift = os::page_size().trailing_zeros();
    let pages = word & ((1 << EXEMPT_LEN_BITS) - 1);
    ((word >> EXEMPT_LEN_BITS) << shift, pages << shift)
}

/// Whether `addr` lies in the pages exempted from a current freeze.
pub(super) fn exempt(addr: usize) -> bool {
    EXEMPT.iter().any(|e| {
        let (lo, len) = exempt_window(e.load(Ordering::Acquire));
        addr.wrapping_sub(lo) < len
    })
}

/// Whether the core of `heap` (its bookkeeping, which marking writes)
/// lies in a heap whose pages an `mprotect` freeze keeps protected.
fn core_protected(heap: &HeapInner) -> bool {
    let at = &heap.core as *const _ as usize;
    let end = at + core::mem::size_of_val(&heap.core) - 1;
    [at, end]
        .into_iter()
        .any(|a| guard::entry_of(a).is_some_and(|e| e.is_protected()))
}

/// The guarded heaps of one runtime, frozen until this value is dropped.
pub(crate) struct Freeze<'a> {
    guarded: &'a [Guarded],
    backend: Backend,
    window: Option<(usize, usize)>,
    /// The slot of [`EXEMPT`] that holds `window`.
    slot: usize,
}

impl<'a> Freeze<'a> {
    /// Freezes every heap of `guarded` with `backend`, except the pages
    /// `window` (address, length), which stay writable for the phase.
    ///
    /// Precondition: the caller is the runtime's main thread, between
    /// phases; `window` lies inside one block of a heap of `guarded`, on
    /// pages of its own. Stops the process if the kernel refuses a
    /// protection change (nothing could be trusted after a half-done
    /// freeze).
    pub(crate) fn new(
        guarded: &'a [Guarded],
        backend: Backend,
        window: Option<(usize, usize)>,
    ) -> Freeze<'a> {
        if guarded.len() > guard::CAPACITY {
            fatal(b"frostheap: more guarded heaps than the guard table holds\n");
        }
        // Checked before anything is frozen.
        let word = window.map(|(lo, len)| {
            exempt_word(lo, len).unwrap_or_else(|| {
                fatal(
                    b"frostheap: the result slots' pages lie beyond what the freeze's table \
                      of exempt pages encodes (whole pages, at most 2^28 of them, starting \
                      below page number 2^36)\n",
                )
            })
        });
        let (_freezes, slot) = lock_with_slot(window.is_some());
        let mprotect = backend == Backend::Mprotect;
        // The heaps this freeze protects: those no other phase has
        // protected already.
        let mut first = [false; guard::CAPACITY];
        if mprotect {
            for (f, g) in first.iter_mut().zip(guarded) {
                *f = g.entry().protect_first();
            }
            for (_, g) in first.iter().zip(guarded).filter(|(f, _)| **f) {
                g.heap().inner().core.freeze_mark();
            }
        }
        // Marked frozen and protected under the step lock, as the thaw
        // opens them: a handler that holds the lock and finds the heap
        // frozen performs a store as a read through the descriptor and a
        // write, atomic only against stores that fault too. A bystander's
        // store that faulted in the last phase and took the lock after
        // its thaw found the heap marked frozen again while its pages were
        // still writable, and another thread's `lock xadd` to the word
        // landed between the performed read and write: 47 to 9,554 counts
        // lost in 15 runs of 20 of `recovery atomics 400` on an AMD EPYC
        // VM (CI, 2026-12-07). With the asynchronous signals held, as in
        // the thaw: a handler's store on this thread into a heap another
        // phase keeps protected would take the lock again and let it go.
        let held = mprotect.then(|| {
            let held = super::step::SignalsHeld::new();
            super::step::step_lock();
            held
        });
        for g in guarded {
            g.entry().set_frozen(true);
            if mprotect {
                MPROTECT_FROZEN.fetch_add(1, Ordering::AcqRel);
            }
        }
        for (_, g) in first.iter().zip(guarded).filter(|(f, _)| **f) {
            if g.heap().inner().core.protect_committed(true).is_err() {
                fatal(b"frostheap: mprotect failed while freezing a guarded heap\n");
            }
        }
        if let (Some((lo, len)), Some(word)) = (window, word) {
            // SAFETY: the window is the result slots' own pages, inside one
            // block of a guarded heap (the precondition). With `mprotect`
            // they are opened even when another phase froze the heap first:
            // its tasks have no business there.
            let r = unsafe {
                match backend {
                    Backend::Mprotect => os::protect(lo as *mut u8, len, os::Access::ReadWrite),
                    Backend::Pkey(_) => os::pkey_tag(lo as *mut u8, len, 0, os::Access::ReadWrite),
                    Backend::Off => Ok(()),
                }
            };
            if r.is_err() {
                fatal(b"frostheap: cannot exempt the result slots from the freeze\n");
            }
            EXEMPT[slot].store(word, Ordering::Release);
        }
        if held.is_some() {
            super::step::step_unlock();
        }
        drop(held);
        Freeze {
            guarded,
            backend,
            window,
            slot,
        }
    }
}

/// Takes [`FREEZES`] and, if `need_slot`, a free slot of [`EXEMPT`]
/// (`usize::MAX` otherwise), waiting outside the lock while every slot is
/// taken.
fn lock_with_slot(need_slot: bool) -> (LockGuard<'static>, usize) {
    loop {
        let lock = FREEZES.lock();
        if !need_slot {
            return (lock, usize::MAX);
        }
        if let Some(i) = EXEMPT.iter().position(|e| e.load(Ordering::Acquire) == 0) {
            return (lock, i);
        }
        drop(lock);
        os::yield_now();
    }
}

impl Drop for Freeze<'_> {
    /// Thaws, mirroring the freeze: open every heap this thaw is the last
    /// to free (no writes), then clear their marks, and only then lower the
    /// guard counts (a thread that faulted while frozen is still waiting;
    /// one that faults now cannot, the pages are writable) and wake the
    /// waiters. Heaps another phase still freezes stay protected, and so
    /// does this phase's window in them.
    fn drop(&mut self) {
        let _freezes = FREEZES.lock();
        let mut held = None;
        let mprotect = self.backend == Backend::Mprotect;
        let mut last = [false; guard::CAPACITY];
        let mut early = [false; guard::CAPACITY];
        if mprotect {
            for ((l, e), g) in last.iter_mut().zip(early.iter_mut()).zip(self.guarded) {
                *l = g.entry().protect_last();
                *e = *l && core_protected(g.heap().inner());
            }
            // A mark that lives in memory another phase keeps protected is
            // cleared before the step lock is taken (its store is stepped
            // through). Its heap is still protected, so pages committed
            // from now on are writable early, which nothing can tell:
            // this phase's workers are done, and no other phase freezes it.
            for (_, g) in early.iter().zip(self.guarded).filter(|(e, _)| **e) {
                // `usize::MAX`: clear the mark, open nothing (the heap is
                // opened whole below).
                if g.heap().inner().core.thaw_unmark(usize::MAX).is_err() {
                    fatal(b"frostheap: mprotect failed while thawing a guarded heap\n");
                }
            }
            // No thread may have a page open for a stepped store while the
            // heaps are opened: its trap would protect the page again after.
            // With the asynchronous signals blocked while the lock is
            // held: a handler's store into a heap still protected, on
            // this thread, would take the lock again (it is re-entrant)
            // and its step's trap would let it go in the middle of the
            // thaw (a review's find).
            held = Some(super::step::SignalsHeld::new());
            super::step::step_lock();
            let mut thawed = [0usize; guard::CAPACITY];
            for ((len, _), g) in thawed
                .iter_mut()
                .zip(last)
                .zip(self.guarded)
                .filter(|((_, l), _)| *l)
            {
                match g.heap().inner().core.protect_committed(false) {
                    Ok(n) => *len = n,
                    Err(_) => fatal(b"frostheap: mprotect failed while thawing a guarded heap\n"),
                }
            }
            for (((len, l), e), g) in thawed.iter().zip(last).zip(early).zip(self.guarded) {
                if l && !e && g.heap().inner().core.thaw_unmark(*len).is_err() {
                    fatal(b"frostheap: mprotect failed while thawing a guarded heap\n");
                }
            }
            if let Some((lo, len)) = self.window {
                // The result slots' pages in a heap another phase still
                // freezes are frozen again with it.
                if guard::entry_of(lo).is_some_and(|e| e.is_protected())
                    // SAFETY: the result slots' own pages (as when
                    // exempting), inside a heap that stays protected.
                    && unsafe { os::protect(lo as *mut u8, len, os::Access::Read) }.is_err()
                {
                    fatal(b"frostheap: cannot freeze the result slots again after the phase\n");
                }
            }
        }
        if self.window.is_some() {
            EXEMPT[self.slot].store(0, Ordering::Release);
        }
        if let (Some((lo, len)), Backend::Pkey(key)) = (self.window, self.backend) {
            // SAFETY: as when exempting: the result slots' own pages.
            if unsafe { os::pkey_tag(lo as *mut u8, len, key, os::Access::ReadWrite) }.is_err() {
                fatal(b"frostheap: cannot re-tag the result slots after the phase\n");
            }
        }
        for g in self.guarded {
            g.entry().set_frozen(false);
            if mprotect {
                MPROTECT_FROZEN.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // Bumped with the marks cleared, under the step lock: the handler
        // reads both under it to tell a store that faulted before this
        // thaw from a real crash (handler.rs, `judge`).
        THAW_EPOCH.fetch_add(1, Ordering::AcqRel);
        if mprotect {
            super::step::step_unlock();
        }
        drop(held);
        os::futex_wake(&THAW_EPOCH, i32::MAX);
    }
}

/// Stops the process with a message, without allocating (a heap may be
/// frozen, where formatting a panic message could not run).
fn fatal(msg: &[u8]) -> ! {
    os::write_stderr(msg);
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exempt_word_holds_its_window_whole_and_only_its_window() {
        let page = os::page_size();
        let lo = 0x7f12_3456_7000 & !(page - 1);
        for pages in [1, 2, 513, (1 << EXEMPT_LEN_BITS) - 1] {
            let len = pages * page;
            let word = exempt_word(lo, len).expect("a window of whole pages under 2^48");
            assert_eq!(exempt_window(word), (lo, len), "{pages} pages");
        }
        // What one word cannot hold is refused, never cut short.
        assert_eq!(exempt_word(lo, 0), None, "an empty window");
        assert_eq!(exempt_word(lo + 8, page), None, "a start inside a page");
        assert_eq!(
            exempt_word(lo, page + 8),
            None,
            "a length of part of a page"
        );
        assert_eq!(exempt_word(lo, page << EXEMPT_LEN_BITS), None, "2^28 pages");
        let beyond = (1usize << (usize::BITS - EXEMPT_LEN_BITS)) * page;
        assert_eq!(exempt_word(beyond, page), None, "a first page past 2^36");
        assert!(
            exempt_word(beyond - page, page).is_some(),
            "the last page encoded"
        );
        assert_eq!(exempt_window(0), (0, 0), "a free slot");
    }

    #[test]
    fn exempt_names_the_pages_of_a_filled_slot_and_no_page_around_them() {
        let page = os::page_size();
        let (lo, len) = (0x7e00_0000_0000, 3 * page);
        let (lock, slot) = lock_with_slot(true);
        EXEMPT[slot].store(exempt_word(lo, len).unwrap(), Ordering::Release);
        let inside = [lo, lo + page, lo + len - 1];
        let outside = [lo - 1, lo + len, 0, usize::MAX];
        let got: Vec<bool> = inside.iter().chain(&outside).map(|&a| exempt(a)).collect();
        EXEMPT[slot].store(0, Ordering::Release);
        drop(lock);
        assert_eq!(got, [true, true, true, false, false, false, false]);
        assert!(!exempt(lo), "the slot freed");
    }
}
