//! Allocation-site tracking (`FROSTHEAP_TRACK_ALLOCS=1`): where each block
//! of a guarded heap was allocated, so a violation report can say so.
//!
//! Tracking is off unless the variable is set at start-up. When on, the
//! main heap records the return addresses of each small or large block's
//! allocation (up to [`FRAMES`] frames, captured with the frame-pointer-free
//! unwinder of the `backtrace` crate, which does not allocate) in a fixed
//! open-addressing table keyed by block address; a free does not erase the
//! entry, a new allocation of the same block overwrites it.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::os;

/// Return addresses kept per block.
pub const FRAMES: usize = 16;
const SLOTS: usize = 1 << 20;

#[repr(C)]
struct Entry {
    key: AtomicUsize,
    frames: [AtomicUsize; FRAMES],
}

static TABLE: AtomicPtr<Entry> = AtomicPtr::new(core::ptr::null_mut());
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns tracking on (maps the table). Called once at start-up when
/// `FROSTHEAP_TRACK_ALLOCS=1`.
pub fn enable() {
    if ENABLED.load(Ordering::Acquire) {
        return;
    }
    if let Ok(p) = os::map_table(SLOTS * core::mem::size_of::<Entry>()) {
        TABLE.store(p.cast(), Ordering::Release);
        ENABLED.store(true, Ordering::Release);
    }
}

/// Whether tracking is on.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn slot(key: usize) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44) & (SLOTS - 1)
}

/// Records the current call stack as the allocation site of `block`.
pub(crate) fn record(block: usize) {
    let table = TABLE.load(Ordering::Acquire);
    if table.is_null() {
        return;
    }
    let mut frames = [0usize; FRAMES + 1];
    let mut n = 0;
    // SAFETY: trace_unsynchronized walks this thread's stack without
    // allocating; we only copy instruction pointers out.
    unsafe {
        backtrace::trace_unsynchronized(|f| {
            frames[n] = f.ip() as usize;
            n += 1;
            n < frames.len()
        });
    }
    // Skip `record` itself; the allocator's other frames (inlined or not)
    // are dropped by name when the site is symbolised (see `site_of`).
    let skip = 1.min(n);
    let i = slot(block);
    for probe in 0..16 {
        // SAFETY: the index is below SLOTS, inside the table.
        let e = unsafe { &*table.add((i + probe) & (SLOTS - 1)) };
        let k = e.key.load(Ordering::Relaxed);
        if k == block || k == 0 || probe == 15 {
            e.key.store(block, Ordering::Relaxed);
            for (j, fr) in e.frames.iter().enumerate() {
                fr.store(
                    frames
                        .get(skip + j)
                        .copied()
                        .filter(|_| skip + j < n)
                        .unwrap_or(0),
                    Ordering::Relaxed,
                );
            }
            return;
        }
    }
}

/// The recorded allocation site of the block at `addr` (its first byte),
/// symbolised, outermost last; empty when none is recorded. For tests and
/// tools; violation reports use it the same way.
#[doc(hidden)]
pub fn allocation_site(addr: usize) -> Vec<String> {
    site_of(addr)
}

/// The recorded allocation site of `block`, symbolised, outermost last.
pub(crate) fn site_of(block: usize) -> Vec<String> {
    let table = TABLE.load(Ordering::Acquire);
    if table.is_null() {
        return Vec::new();
    }
    let i = slot(block);
    for probe in 0..16 {
        // SAFETY: inside the table.
        let e = unsafe { &*table.add((i + probe) & (SLOTS - 1)) };
        if e.key.load(Ordering::Relaxed) == block {
            let mut out = Vec::new();
            for fr in &e.frames {
                let ip = fr.load(Ordering::Relaxed);
                if ip == 0 {
                    break;
                }
                let mut name = String::new();
                let mut line = format!("{ip:#x}");
                // Return addresses point after the call: resolve ip - 1.
                backtrace::resolve((ip - 1) as *mut core::ffi::c_void, |sym| {
                    if let Some(n) = sym.name() {
                        name = format!("{n:#}");
                        line = format!("{ip:#x} in {name}");
                    }
                    if let (Some(file), Some(l)) = (sym.filename(), sym.lineno()) {
                        line.push_str(&format!(" at {}:{l}", file.display()));
                    }
                });
                // The allocator's own frames say nothing about the site.
                let machinery = [
                    "frostheap::heap",
                    "frostheap::track",
                    "frostheap::global",
                    "<frostheap::",
                    "alloc::",
                    "<alloc::",
                    "core::",
                    "<core::",
                    "std::",
                    "<std::",
                    "__rust",
                    "backtrace::",
                ];
                if out.is_empty() && machinery.iter().any(|m| name.starts_with(m)) {
                    continue;
                }
                out.push(line);
                if out.len() == 6 {
                    break;
                }
            }
            return out;
        }
    }
    Vec::new()
}
