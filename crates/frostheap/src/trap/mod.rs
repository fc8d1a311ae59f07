//! Freezing guarded heaps and catching the writes that hit them.
//!
//! **Backends** ([`Protect`]). `pkey`: each guarded region is tagged with
//! the process's protection key while a runtime guards it; a freeze is a
//! write to each worker's PKRU register denying writes to that key (main
//! keeps access). `mprotect`: one `mprotect(PROT_READ)` over each guarded
//! heap's committed prefix, on huge pages where available. `off`: no
//! protection. `auto` picks `pkey` where the CPU and kernel have protection
//! keys and `mprotect` elsewhere.
//!
//! | file | what |
//! |---|---|
//! | here | resolving the backend, the key, `Guarded` (a runtime's hold on a heap: the key tagging) |
//! | `freeze` | `Freeze`: the freeze protocol, whose `Drop` thaws |
//! | `handler` | the SIGSEGV and SIGTRAP handlers |
//! | `spare` | spare stacks for a handler whose thread's alternate stack is too small |
//! | `abandon` | stopping a worker whose task can never finish (cancel: blocked on a lock a parked task holds) |
//! | `backtrace` | the violating thread's stack, copied in the handler and unwound after the phase |
//! | `step` | letting one faulting store through (audit, rollback) |
//! | `decode` | the x86_64 stores the `mprotect` backend performs itself |
//! | `emulate` | performing such a store through `/proc/self/mem`, its page never opened |
//! | `frame` | the x86_64 signal frame the handlers read and edit |
//! | `report` | from the handler's numbers to a `Violation` (the type itself is `crate::violation`'s) |
//!
//! What the handler reads lives one layer down, in `guard`: the table of
//! heap regions with their guard state, and each worker's state.
//!
//! Neither backend is a security boundary: writes through `/proc/self/mem`
//! or `ptrace` succeed against both. frostheap catches mistakes, not
//! attackers.

pub(crate) mod abandon;
pub(crate) mod backtrace;
mod decode;
mod emulate;
mod frame;
mod freeze;
mod handler;
mod report;
mod rmw;
mod spare;
mod step;
mod string;

use core::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

pub use crate::config::{Backend, OnViolation, Protect};
pub use crate::violation::{Access, Violation};
pub use emulate::set_enabled as set_store_emulation;
pub use emulate::set_rmw_enabled as set_rmw_emulation;
pub(crate) use freeze::Freeze;
pub use step::step_lock_address;

use crate::error::Error;
use crate::guard::Entry;
use crate::heap::{Heap, HeapInner};
use crate::os::{self, OsError};

// ---------------------------------------------------------------------------
// The protection key.

/// The process's protection key (0 = none allocated yet / unavailable).
static PKEY: AtomicU32 = AtomicU32::new(0);
static PKEY_PROBED: Once = Once::new();
static PKEY_ERROR: AtomicU32 = AtomicU32::new(0);

/// The protection key, allocating it on first use; `Err` if the CPU or
/// kernel has none.
pub fn pkey() -> Result<u32, OsError> {
    PKEY_PROBED.call_once(|| match os::pkey_alloc() {
        Ok(k) => PKEY.store(k, Ordering::Release),
        Err(e) => PKEY_ERROR.store(e.errno as u32, Ordering::Release),
    });
    match PKEY.load(Ordering::Acquire) {
        0 => Err(OsError {
            call: "pkey_alloc",
            errno: PKEY_ERROR.load(Ordering::Acquire) as i32,
        }),
        k => Ok(k),
    }
}

/// Whether this machine has protection keys.
pub fn pkeys_available() -> bool {
    pkey().is_ok()
}

/// Sets the calling thread's rights on the process's protection key `key`
/// (`Read`: a worker inside a phase; `ReadWrite`: everyone else). Does
/// nothing unless `key` is the key [`pkey`] allocated.
pub(crate) fn set_key_access(key: u32, access: os::Access) {
    if key == 0 || PKEY.load(Ordering::Acquire) != key {
        return;
    }
    // SAFETY: a key was allocated, so the CPU and kernel have protection
    // keys (RDPKRU and WRPKRU exist); the new value changes only this
    // thread's rights on our own key.
    unsafe { os::wrpkru(os::pkru_with(os::rdpkru(), key, access)) };
}

/// Resolves a requested backend against the machine.
pub fn resolve(protect: Protect) -> Result<Backend, Error> {
    match protect {
        Protect::Off => Ok(Backend::Off),
        Protect::Mprotect => Ok(Backend::Mprotect),
        Protect::Auto => Ok(pkey().map(Backend::Pkey).unwrap_or(Backend::Mprotect)),
        Protect::Pkey => pkey().map(Backend::Pkey).map_err(|e| {
            Error::invalid(
                "protect",
                "pkey",
                format!(
                    "a backend this machine supports: protection keys are unavailable here ({e}); use auto or mprotect"
                ),
            )
        }),
    }
}

/// Installs the fault handlers (once per process).
pub fn install() -> Result<(), Error> {
    handler::install().map_err(|source| Error::Os {
        context: "installing the fault handler",
        source,
    })
}

/// Size of a worker's alternate signal stack: at least 64 KiB.
pub(crate) fn alt_stack_size() -> usize {
    (os::min_signal_stack() * 4).max(64 << 10)
}

// ---------------------------------------------------------------------------
// Guarding a heap: the count in its entry, and the key on its pages.

/// Serialises changes of a heap's guard count together with its tagging,
/// so one runtime never untags pages another has just counted on.
static TAGGING: Mutex<()> = Mutex::new(());

/// A runtime's hold on one guarded heap. While any hold on a heap lives
/// under the `pkey` backend, the heap's whole reservation carries the key
/// (committed pages read-write, the rest `PROT_NONE`; later commits keep
/// the key); when the last hold goes, the pages are given key 0 again.
pub(crate) struct Guarded {
    heap: Heap,
    entry: &'static Entry,
}

impl Guarded {
    /// The heap held.
    pub(crate) fn heap(&self) -> &Heap {
        &self.heap
    }

    /// Its entry in the guard table.
    pub(crate) fn entry(&self) -> &'static Entry {
        self.entry
    }
}

/// Takes a hold on `heap` for a runtime with `backend`.
pub(crate) fn guard(heap: &Heap, backend: Backend) -> Result<Guarded, Error> {
    let inner = heap.inner();
    let entry = inner.entry().ok_or_else(|| {
        Error::invalid(
            "guard",
            inner.name.as_ref(),
            "a heap registered in the guard table (it was full when the heap was built)",
        )
    })?;
    let _tagging = TAGGING.lock().unwrap_or_else(|e| e.into_inner());
    if let Backend::Pkey(key) = backend {
        // A sealed heap is read-only to every thread for good: it needs
        // no key (and its protection can no longer change).
        if entry.key() != key && !entry.is_sealed() {
            tag(inner, key).map_err(|source| Error::Os {
                context: "tagging a guarded heap with a protection key",
                source,
            })?;
            entry.set_key(key);
        }
    }
    if backend == Backend::Mprotect {
        // The handler performs decodable stores into frozen pages through
        // it, instead of opening the page (emulate.rs).
        emulate::prepare();
    }
    if backend == Backend::Mprotect && !entry.is_sealed() {
        // An `mprotect` freeze rewrites one page-table entry per page: a
        // heap laid out for huge pages later (the main heap) moves to them
        // now, before its first freeze. (It is not frozen: only a runtime
        // that guards it with `mprotect` freezes it that way, and this is
        // the first.)
        inner.core.switch_to_huge_pages();
    }
    entry.add_guard();
    Ok(Guarded {
        heap: heap.clone(),
        entry,
    })
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _tagging = TAGGING.lock().unwrap_or_else(|e| e.into_inner());
        if self.entry.remove_guard() == 0 && self.entry.key() != 0 && !self.entry.is_sealed() {
            // The last hold: the heap is no longer guarded, so no worker's
            // PKRU may stop writes to it. (A sealed heap keeps its key:
            // its protection can never change again.)
            match tag(self.heap.inner(), 0) {
                Ok(()) => self.entry.set_key(0),
                Err(e) => os::write_stderr(
                    format!(
                        "frostheap: cannot remove the protection key from heap \"{}\": {e}\n",
                        self.heap.name()
                    )
                    .as_bytes(),
                ),
            }
        }
    }
}

/// Tags `heap`'s whole reservation with protection key `key` (0: the
/// default key, which every thread may use): committed pages stay
/// read-write, the rest `PROT_NONE`.
///
/// `pkey_mprotect` sets the protection with the key, so this assumes the
/// heap is not frozen by `mprotect` meanwhile. One runtime never tags
/// during its own phases; a known limit remains when runtimes of both
/// backends guard one heap: a pkey runtime built or dropped while an
/// mprotect runtime's phase freezes that heap opens its pages early.
fn tag(heap: &HeapInner, key: u32) -> Result<(), OsError> {
    let region = heap.core.region();
    heap.core.commit_lock_and(|committed| {
        // SAFETY: both ranges lie inside the heap's reservation; the
        // protections are the ones the region already has (the commit lock
        // keeps `committed` fixed), only the key changes.
        unsafe {
            if committed > 0 {
                os::pkey_tag(region.base(), committed, key, os::Access::ReadWrite)?;
            }
            if region.reserved() > committed {
                os::pkey_tag(
                    region.base().add(committed),
                    region.reserved() - committed,
                    key,
                    os::Access::None,
                )?;
            }
        }
        Ok(())
    })
}
