//! Backtraces of violating threads: the user's frames, not only the
//! faulting one (a violation inside `memcpy` or an atomic of std names the
//! code that called it).
//!
//! **In the handler**, `guard::StackCopy::capture` copies the interrupted stack —
//! from the stack pointer up to the worker's stack top, at most
//! 64 KiB — and the three registers unwinding starts from
//! (instruction, stack and frame pointer) into a per-worker area mapped
//! before the worker's first phase: one `memcpy`, async-signal-safe, for
//! the first violation of each worker per phase.
//!
//! **After the phase**, on main, [`frames_of`] unwinds that
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

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::guard::StackCopy;
use crate::os;

/// The most frames a backtrace keeps.
pub(crate) const MAX_FRAMES: usize = 32;

/// Unwinds the copy `copy` holds, if any: the faulting instruction's
/// address first, then return addresses. Main thread, after the phase.
pub(crate) fn frames_of(copy: &StackCopy) -> Option<Vec<usize>> {
    copy.take(unwind)
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
