//! Backtraces of violating threads: the user's frames, not only the
//! faulting one (a violation inside `memcpy` or an atomic of std names the
//! code that called it).
//!
//! **In the handler**, [`StackCopy::capture`] copies the interrupted stack —
//! from the stack pointer up to the worker's stack top, at most
//! [`STACK_COPY_BYTES`] — and the three registers unwinding starts from
//! (instruction, stack and frame pointer) into a per-worker area mapped
//! before the worker's first phase: one `memcpy`, async-signal-safe, for
//! the first violation of each worker per phase.
//!
//! **After the phase**, on main, [`StackCopy::take_frames`] unwinds that
//! copy with `framehop` from the DWARF call-frame information of the
//! loaded objects (`.eh_frame` through `.eh_frame_hdr`, read in place),
//! giving the return addresses; the report symbolises them with
//! `backtrace` when it is first displayed.
//!
//! Why a copy and not the live stack: walking a thread's stack while it
//! waits in its handler needs a handshake (the handler publishes its
//! registers and waits on a futex; main walks and releases it), and main's
//! walk needs the loader's lock (`dl_iterate_phdr`) and the allocator,
//! which the stopped thread may hold. A copy needs neither, never blocks
//! the worker, and works the same under every policy, parked or not. Its
//! cost is the `memcpy` (64 KiB at most) per reported violation.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::os::{self, OsError};

/// The most stack one copy holds.
pub(crate) const STACK_COPY_BYTES: usize = 64 << 10;
/// The most frames a backtrace keeps.
pub(crate) const MAX_FRAMES: usize = 32;

/// One worker's stack copy: taken by its fault handler, read by main
/// after the phase (the worker's end-of-phase signal orders the two).
pub(crate) struct StackCopy {
    /// A mapping of [`STACK_COPY_BYTES`] (0 until prepared).
    buf: AtomicUsize,
    /// The highest address a copy may read: set by the worker at start
    /// (an address in its outermost frame), 0 while unknown.
    top: AtomicUsize,
    len: AtomicUsize,
    ip: AtomicUsize,
    sp: AtomicUsize,
    bp: AtomicUsize,
    /// 1 while a copy is held (the handler takes none then).
    held: AtomicU32,
}

impl Default for StackCopy {
    fn default() -> Self {
        Self::new()
    }
}

impl StackCopy {
    /// No mapping, no copy.
    pub(crate) const fn new() -> StackCopy {
        StackCopy {
            buf: AtomicUsize::new(0),
            top: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            ip: AtomicUsize::new(0),
            sp: AtomicUsize::new(0),
            bp: AtomicUsize::new(0),
            held: AtomicU32::new(0),
        }
    }

    /// Maps the copy area (outside any phase; idempotent).
    pub(crate) fn prepare(&self) -> Result<(), OsError> {
        if self.buf.load(Ordering::Acquire) == 0 {
            let p = os::map_table(STACK_COPY_BYTES)?;
            self.buf.store(p as usize, Ordering::Release);
        }
        Ok(())
    }

    /// Records the top of the calling thread's stack that copies may read:
    /// an address inside its outermost frame that matters (the worker's
    /// loop). Frames above it are never copied.
    pub(crate) fn set_top(&self, top: usize) {
        self.top.store(top, Ordering::Release);
    }

    /// Copies the stack of the interrupted code (`ip`, `sp`, `bp` from the
    /// signal frame), unless a copy is held already. Async-signal-safe.
    ///
    /// # Safety
    /// 1. Called in a signal handler of the thread whose stack this area
    ///    describes (its stack `[sp, top)` is mapped and not running).
    pub(crate) unsafe fn capture(&self, ip: usize, sp: usize, bp: usize) -> bool {
        let (buf, top) = (
            self.buf.load(Ordering::Relaxed),
            self.top.load(Ordering::Relaxed),
        );
        if buf == 0 || top <= sp || self.held.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let len = (top - sp).min(STACK_COPY_BYTES);
        // SAFETY: by (1), [sp, sp + len) lies in the thread's own stack below
        // its top; the buffer holds STACK_COPY_BYTES >= len.
        unsafe { core::ptr::copy_nonoverlapping(sp as *const u8, buf as *mut u8, len) };
        self.len.store(len, Ordering::Relaxed);
        self.ip.store(ip, Ordering::Relaxed);
        self.sp.store(sp, Ordering::Relaxed);
        self.bp.store(bp, Ordering::Relaxed);
        self.held.store(1, Ordering::Release);
        true
    }

    /// Unwinds the copy held, if any, and lets the handler take the next:
    /// the faulting instruction's address first, then return addresses.
    /// Main thread, after the phase.
    pub(crate) fn take_frames(&self) -> Option<Vec<usize>> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        let buf = self.buf.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        // SAFETY: the handler filled `len` bytes of our mapping and set
        // `held` after (Release, read above with Acquire); nothing writes
        // it until `held` is cleared below.
        let stack = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
        let frames = unwind(
            self.ip.load(Ordering::Relaxed),
            self.sp.load(Ordering::Relaxed),
            self.bp.load(Ordering::Relaxed),
            stack,
        );
        self.held.store(0, Ordering::Release);
        Some(frames)
    }
}

impl Drop for StackCopy {
    fn drop(&mut self) {
        let buf = self.buf.load(Ordering::Acquire);
        if buf != 0 {
            // SAFETY: mapped by prepare with this length; unused now.
            unsafe { os::unmap(buf as *mut u8, STACK_COPY_BYTES) };
        }
    }
}

/// Unwinds a copy of a stack that was at `sp` when the thread stopped at
/// `ip` (frame pointer `bp`): the instruction's address, then the return
/// addresses of its callers, as far as the copy and the unwind information
/// go (at most [`MAX_FRAMES`]).
pub(crate) fn unwind(ip: usize, sp: usize, bp: usize, stack: &[u8]) -> Vec<usize> {
    let mut unwinder: UnwinderX86_64<&'static [u8]> = UnwinderX86_64::new();
    for m in modules() {
        unwinder.add_module(m);
    }
    let mut cache = CacheX86_64::<_>::new();
    let regs = UnwindRegsX86_64::new(ip as u64, sp as u64, bp as u64);
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let off = addr.checked_sub(sp as u64).ok_or(())? as usize;
        let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    };
    let mut frames = Vec::new();
    let mut iter = unwinder.iter_frames(ip as u64, regs, &mut cache, &mut read_stack);
    while let Ok(Some(frame)) = iter.next() {
        let addr = match frame {
            FrameAddress::InstructionPointer(a) => a,
            FrameAddress::ReturnAddress(a) => a.get(),
        };
        frames.push(addr as usize);
        if frames.len() == MAX_FRAMES {
            break;
        }
    }
    frames
}

/// The loaded objects as framehop modules: their `.eh_frame_hdr` and
/// `.eh_frame`, read in place.
fn modules() -> Vec<Module<&'static [u8]>> {
    let mut out = Vec::new();
    for obj in os::loaded_objects() {
        let Some((hdr, hdr_len)) = obj.eh_frame_hdr else {
            continue;
        };
        let (Some(lo), Some(hi)) = (
            obj.segments.iter().map(|s| s.0).min(),
            obj.segments.iter().map(|s| s.1).max(),
        ) else {
            continue;
        };
        // SAFETY: PT_GNU_EH_FRAME lies inside a loaded, readable segment
        // of the object, mapped while the object stays loaded (for the
        // few milliseconds this backtrace takes).
        let hdr_bytes: &'static [u8] =
            unsafe { core::slice::from_raw_parts(hdr as *const u8, hdr_len) };
        let Some(eh_frame) = eh_frame_address(hdr, hdr_bytes) else {
            continue;
        };
        // The section's length is not recorded anywhere loaded: hand over
        // the rest of its segment (entries are found through the header's
        // table, never by scanning to the end).
        let Some(&(_, seg_end, _)) = obj
            .segments
            .iter()
            .find(|&&(s, e, _)| eh_frame >= s && eh_frame < e)
        else {
            continue;
        };
        // SAFETY: as above: [eh_frame, seg_end) is inside a loaded segment.
        let eh_bytes: &'static [u8] =
            unsafe { core::slice::from_raw_parts(eh_frame as *const u8, seg_end - eh_frame) };
        let text = obj
            .segments
            .iter()
            .find(|s| s.2)
            .map(|&(s, e, _)| (s - obj.bias) as u64..(e - obj.bias) as u64);
        let svma = |a: usize, len: usize| (a - obj.bias) as u64..(a - obj.bias + len) as u64;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: text,
            eh_frame_svma: Some(svma(eh_frame, eh_bytes.len())),
            eh_frame: Some(eh_bytes),
            eh_frame_hdr_svma: Some(svma(hdr, hdr_len)),
            eh_frame_hdr: Some(hdr_bytes),
            ..Default::default()
        };
        out.push(Module::new(
            obj.name,
            lo as u64..hi as u64,
            obj.bias as u64,
            info,
        ));
    }
    out
}

/// The address of `.eh_frame` that the `.eh_frame_hdr` at `hdr` points
/// to: its `eh_frame_ptr`, in the encodings linkers emit (`pcrel` or
/// `datarel` `sdata4`, or an absolute `udata8`).
fn eh_frame_address(hdr: usize, bytes: &[u8]) -> Option<usize> {
    const SDATA4: u8 = 0x0b;
    const UDATA8: u8 = 0x04;
    const PCREL: u8 = 0x10;
    const DATAREL: u8 = 0x30;
    if bytes.len() < 12 || bytes[0] != 1 {
        return None;
    }
    let enc = bytes[1];
    let field = hdr + 4;
    match (enc & 0x70, enc & 0x0f) {
        (base, SDATA4) if base == PCREL || base == DATAREL => {
            let v = i32::from_le_bytes(bytes[4..8].try_into().ok()?) as isize;
            let from = if base == PCREL { field } else { hdr };
            Some(from.wrapping_add_signed(v))
        }
        (0, UDATA8) => Some(u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?) as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registers of the caller's caller... taken here, with a copy of
    /// the stack up to `top`.
    #[inline(never)]
    fn copy_here(top: usize) -> Vec<usize> {
        let (ip, sp, bp): (usize, usize, usize);
        // SAFETY: reads three registers; no memory is touched.
        unsafe {
            core::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            )
        };
        // SAFETY: [sp, top) is this thread's own live stack.
        let stack = unsafe { core::slice::from_raw_parts(sp as *const u8, top - sp) }.to_vec();
        unwind(ip, sp, bp, &stack)
    }

    #[inline(never)]
    fn a_caller_in_the_middle(top: usize) -> Vec<usize> {
        let frames = copy_here(std::hint::black_box(top));
        std::hint::black_box(frames)
    }

    #[inline(never)]
    fn the_outermost_caller() -> Vec<usize> {
        let marker = [0u8; 64];
        let top = std::hint::black_box(&marker) as *const _ as usize;
        let frames = a_caller_in_the_middle(top);
        std::hint::black_box(&marker);
        frames
    }

    fn names(frames: &[usize]) -> Vec<String> {
        let mut names = Vec::new();
        for (k, &a) in frames.iter().enumerate() {
            let a = if k == 0 { a + 1 } else { a };
            backtrace::resolve(a as *mut core::ffi::c_void, |s| {
                if let Some(n) = s.name() {
                    names.push(format!("{n:#}"));
                }
            });
        }
        names
    }

    #[test]
    fn a_copied_stack_unwinds_to_the_callers_in_order() {
        let frames = the_outermost_caller();
        let names = names(&frames);
        let pos = |f: &str| {
            names
                .iter()
                .position(|n| n.ends_with(f))
                .unwrap_or_else(|| panic!("{f} not in {names:#?}"))
        };
        assert!(
            pos("copy_here") < pos("a_caller_in_the_middle"),
            "{names:#?}"
        );
    }

    #[test]
    fn eh_frame_pointers_decode_in_the_encodings_linkers_use() {
        let mut hdr = [0u8; 12];
        hdr[0] = 1;
        hdr[1] = 0x1b; // pcrel | sdata4
        hdr[4..8].copy_from_slice(&(-100i32).to_le_bytes());
        assert_eq!(eh_frame_address(0x1000, &hdr), Some(0x1000 + 4 - 100));
        hdr[1] = 0x3b; // datarel | sdata4
        assert_eq!(eh_frame_address(0x1000, &hdr), Some(0x1000 - 100));
        hdr[1] = 0x04; // udata8
        hdr[4..12].copy_from_slice(&0x1234_5678u64.to_le_bytes());
        assert_eq!(eh_frame_address(0x1000, &hdr), Some(0x1234_5678));
        hdr[1] = 0xff; // omitted
        assert_eq!(eh_frame_address(0x1000, &hdr), None);
    }
}
