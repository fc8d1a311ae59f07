//! The x86_64 Linux signal frame: what the fault handlers read from it
//! and the three things they change in it.
//!
//! Read: the fault address and `si_code` (siginfo), whether the access was
//! a write (bit 1 of the page-fault error code the kernel saves as
//! `REG_ERR`), and the faulting instruction (`REG_RIP`). Changed: the
//! trap flag (`EFLAGS.TF`, for single-stepping one store), the signal
//! mask (`uc_sigmask`: the asynchronous signals stay blocked for the
//! stepped instruction, see `step.rs`) and the PKRU value saved in the
//! frame's XSAVE area, which the kernel loads into the register on
//! `sigreturn` — the only way to change the access rights of the
//! interrupted code from inside a handler, since the handler itself runs
//! with the kernel's default PKRU.
//!
//! Facts this relies on (probed, see docs): the frame's `fpregs` point at
//! an XSAVE area whose header word `XSTATE_BV` is at +512; the PKRU
//! component (bit 9) sits at the offset CPUID(0xD, 9).EBX reports; a
//! component whose `XSTATE_BV` bit is clear is in its initial state (for
//! PKRU: 0, every key open) and its bytes in the area are stale.

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "frostheap's fault handler reads and edits the x86_64 signal frame \
     (src/trap/frame.rs); another architecture needs its own frame.rs \
     (fault address, write bit, instruction pointer, single-step flag) and, \
     without protection keys, only the mprotect backend"
);

use crate::os;

/// `si_code` of an `mprotect` fault: the page does not allow the access.
pub(crate) const SEGV_ACCERR: i32 = 2;
/// `si_code` of a protection-key fault: the thread's PKRU denies the
/// access.
pub(crate) const SEGV_PKUERR: i32 = 4;
/// `si_code` of a single-step trap.
pub(crate) const TRAP_TRACE: i32 = 2;

/// Whether a SIGTRAP with `si_code` `code`, interrupting `frame`, is the
/// end of a single step this library armed: `TRAP_TRACE`, or any other
/// code the kernel sends (not `kill`'s or `tgkill`'s, whose codes are 0 or
/// below) with the trap flag still set in the frame. A guest kernel
/// (Firecracker, Linux 6.18) reported some single-step traps as
/// `TRAP_BRKPT` (it derives the code from the debug status register,
/// which the hypervisor did not always carry over), and the trap passed
/// on to the default action killed the process in the middle of a phase.
pub(crate) fn is_step_trap(code: i32, frame: &Frame) -> bool {
    code == TRAP_TRACE || (code > 0 && frame.single_step())
}
const EFLAGS_TF: i64 = 0x100;
const EFLAGS_DF: i64 = 0x400;

/// Bit of `XSTATE_BV` for the PKRU component.
const XSTATE_PKRU: u64 = 1 << 9;
/// Offset of `XSTATE_BV` in the XSAVE area (the header follows the
/// 512-byte legacy area).
const XSTATE_BV_OFFSET: usize = 512;

/// Bit of `XSTATE_BV` for the SSE component (the XMM registers).
const XSTATE_SSE: u64 = 1 << 1;
/// The XSAVE components of the AVX and AVX-512 registers: the upper
/// halves of YMM0..15, the opmask registers, the upper halves of
/// ZMM0..15, and ZMM16..31.
const XSTATE_AVX: u32 = 2;
const XSTATE_OPMASK: u32 = 5;
const XSTATE_ZMM_HI256: u32 = 6;
const XSTATE_HI16_ZMM: u32 = 7;
/// Offset of XMM0 in the legacy FXSAVE area.
const XMM_OFFSET: usize = 160;
/// Offset of the software-reserved bytes of the FXSAVE area, where the
/// kernel writes `FP_XSTATE_MAGIC1` when the frame holds an XSAVE area.
const FP_SW_OFFSET: usize = 464;
/// The kernel's `FP_XSTATE_MAGIC1`.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;

/// The frame's `gregs` index of each general register, in the encoding's
/// numbering (0 = rax, 1 = rcx, 2 = rdx, 3 = rbx, 4 = rsp, 5 = rbp,
/// 6 = rsi, 7 = rdi, 8..=15 = r8..r15).
const GPR_BY_NUMBER: [libc::c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// A fault as the SIGSEGV handler sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fault {
    /// The address accessed.
    pub addr: usize,
    /// `si_code`: [`SEGV_ACCERR`], [`SEGV_PKUERR`], or another reason.
    pub code: i32,
    /// The access was a write.
    pub write: bool,
    /// The faulting instruction.
    pub ip: usize,
}

/// The signal frame of the signal being handled.
pub(crate) struct Frame {
    uc: *mut libc::ucontext_t,
}

impl Frame {
    /// Wraps the handler's third argument.
    ///
    /// # Safety
    /// 1. `ctx` is the `ucontext_t` the kernel passed to the running
    ///    `SA_SIGINFO` handler, and the returned value is used only while
    ///    that handler runs.
    pub(crate) unsafe fn new(ctx: *mut libc::c_void) -> Frame {
        Frame { uc: ctx.cast() }
    }

    fn gregs(&self) -> &[i64] {
        // SAFETY: by (1) of `new`, uc is the live frame.
        unsafe { &(*self.uc).uc_mcontext.gregs }
    }

    fn gregs_mut(&mut self) -> &mut [i64] {
        // SAFETY: by (1) of `new`; the handler is the frame's only user.
        unsafe { &mut (*self.uc).uc_mcontext.gregs }
    }

    /// The fault described by `info` and this frame.
    ///
    /// # Safety
    /// 1. `info` is the siginfo the kernel passed with this frame for a
    ///    SIGSEGV.
    pub(crate) unsafe fn fault(&self, info: *const libc::siginfo_t) -> Fault {
        // SAFETY: by (1).
        let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
        let gregs = self.gregs();
        Fault {
            addr,
            code,
            write: gregs[libc::REG_ERR as usize] & 2 != 0,
            ip: gregs[libc::REG_RIP as usize] as usize,
        }
    }

    /// The stack and frame pointers of the interrupted code (for copying its
    /// stack), or `None` when it ran on the alternate signal stack (a
    /// signal handler of the program with `SA_ONSTACK`, or one delivered
    /// inside another handler there): its stack is not the thread's, and
    /// a copy from its stack pointer up to the thread's stack top would
    /// read across unrelated mappings and the guard page between them.
    pub(crate) fn own_stack_regs(&self) -> Option<(usize, usize)> {
        // SAFETY: by (1) of `new`; the kernel saved the thread's alternate
        // stack (its base and size as `sigaltstack` set them) in the frame.
        // (Not its `ss_flags`: since Linux 4.7 they are the flags given to
        // `sigaltstack`, never SS_ONSTACK for where the interrupted code
        // ran, as a review found of this function's first version.)
        let (alt, alt_len) = unsafe {
            (
                (*self.uc).uc_stack.ss_sp as usize,
                (*self.uc).uc_stack.ss_size,
            )
        };
        let gregs = self.gregs();
        let sp = gregs[libc::REG_RSP as usize] as usize;
        if alt_len != 0 && sp.wrapping_sub(alt) < alt_len {
            return None;
        }
        Some((sp, gregs[libc::REG_RBP as usize] as usize))
    }

    /// The signal mask the interrupted code resumes with (the kernel's
    /// 64-bit mask: the first word of the frame's `uc_sigmask`, which is
    /// all `rt_sigreturn` reads back).
    pub(crate) fn signal_mask(&self) -> u64 {
        // SAFETY: by (1) of `new`; `uc_sigmask` is at least 8 bytes and
        // 8-aligned, and its first word is the kernel's mask.
        unsafe {
            core::ptr::addr_of!((*self.uc).uc_sigmask)
                .cast::<u64>()
                .read()
        }
    }

    /// Sets the signal mask the interrupted code resumes with (`sigreturn`
    /// installs it; SIGKILL and SIGSTOP are never blocked whatever it says).
    pub(crate) fn set_signal_mask(&mut self, mask: u64) {
        // SAFETY: as in `signal_mask`; the handler is the frame's only user.
        unsafe {
            core::ptr::addr_of_mut!((*self.uc).uc_sigmask)
                .cast::<u64>()
                .write(mask)
        }
    }

    /// Whether the interrupted code runs with the trap flag set.
    pub(crate) fn single_step(&self) -> bool {
        self.gregs()[libc::REG_EFL as usize] & EFLAGS_TF != 0
    }

    /// Sets or clears the trap flag the interrupted code resumes with: set,
    /// it stops with SIGTRAP (`TRAP_TRACE`) after one instruction.
    pub(crate) fn set_single_step(&mut self, on: bool) {
        let efl = &mut self.gregs_mut()[libc::REG_EFL as usize];
        if on {
            *efl |= EFLAGS_TF;
        } else {
            *efl &= !EFLAGS_TF;
        }
    }

    /// General register `n` of the interrupted code, in the encoding's
    /// numbering (0 = rax, 1 = rcx, 2 = rdx, 3 = rbx, 4 = rsp, 5 = rbp,
    /// 6 = rsi, 7 = rdi, 8..=15 = r8..r15).
    pub(crate) fn gpr(&self, n: u8) -> u64 {
        self.gregs()[GPR_BY_NUMBER[usize::from(n & 15)] as usize] as u64
    }

    /// Sets general register `n` (numbered as in [`Frame::gpr`]) of the
    /// interrupted code, which it resumes with (a read-modify-write the
    /// handler performed for it wrote that register).
    pub(crate) fn set_gpr(&mut self, n: u8, value: u64) {
        self.gregs_mut()[GPR_BY_NUMBER[usize::from(n & 15)] as usize] = value as i64;
    }

    /// Whether the interrupted code runs with the direction flag set
    /// (string instructions step downwards).
    pub(crate) fn direction_flag(&self) -> bool {
        self.flags() & EFLAGS_DF as u64 != 0
    }

    /// The interrupted code's RFLAGS.
    pub(crate) fn flags(&self) -> u64 {
        self.gregs()[libc::REG_EFL as usize] as u64
    }

    /// Replaces the bits `mask` of the interrupted code's RFLAGS with
    /// those of `flags` (the arithmetic flags of an instruction the
    /// handler performed for it).
    pub(crate) fn set_flags(&mut self, mask: u64, flags: u64) {
        let efl = &mut self.gregs_mut()[libc::REG_EFL as usize];
        *efl = ((*efl as u64 & !mask) | (flags & mask)) as i64;
    }

    /// XMM register `n` (0..=15) of the interrupted code, from the frame's
    /// FXSAVE/XSAVE area, or `None` if the frame has none. In an XSAVE
    /// area (its software-reserved bytes at +464 carry `FP_XSTATE_MAGIC1`)
    /// a clear SSE bit (1) of `XSTATE_BV` means the registers are in their
    /// initial state, zero, and the bytes there are not their value.
    pub(crate) fn xmm(&self, n: u8) -> Option<[u8; 16]> {
        // SAFETY: by (1) of `new`.
        let fp = unsafe { (*self.uc).uc_mcontext.fpregs } as *const u8;
        if fp.is_null() || n >= 16 {
            return None;
        }
        // SAFETY: the legacy FXSAVE area is 512 bytes: XMM0..15 at 160 +
        // 16 n, the software-reserved words at 464; an XSAVE area's header
        // follows it at 512.
        unsafe {
            let magic = (fp.add(FP_SW_OFFSET) as *const u32).read_unaligned();
            if magic == FP_XSTATE_MAGIC1 {
                let bv = (fp.add(XSTATE_BV_OFFSET) as *const u64).read_unaligned();
                if bv & XSTATE_SSE == 0 {
                    return Some([0; 16]);
                }
            }
            Some((fp.add(XMM_OFFSET + 16 * usize::from(n)) as *const [u8; 16]).read_unaligned())
        }
    }

    /// The low `bytes` (16, 32 or 64) of vector register `n` (0..=31:
    /// XMM, YMM or ZMM) of the interrupted code, or `None` if the frame
    /// holds no XSAVE area with every component those bytes lie in. In
    /// the standard XSAVE format (the kernel's signal frame): bytes 0..16
    /// of registers 0..15 in the legacy area, 16..32 in the AVX component
    /// (2), 32..64 in `ZMM_Hi256` (6); registers 16..31 whole in
    /// `Hi16_ZMM` (7). A component whose `XSTATE_BV` bit is clear is in its
    /// initial state: zero.
    pub(crate) fn vector(&self, n: u8, bytes: usize) -> Option<[u8; 64]> {
        let mut v = [0u8; 64];
        if n >= 32 || !matches!(bytes, 16 | 32 | 64) {
            return None;
        }
        let n = usize::from(n);
        if n < 16 {
            v[..16].copy_from_slice(&self.xmm(n as u8)?);
            if bytes > 16 {
                v[16..32].copy_from_slice(&self.xstate(XSTATE_AVX, 16 * n, 16)?[..16]);
            }
            if bytes > 32 {
                v[32..].copy_from_slice(&self.xstate(XSTATE_ZMM_HI256, 32 * n, 32)?[..32]);
            }
        } else {
            v[..bytes].copy_from_slice(&self.xstate(XSTATE_HI16_ZMM, 64 * (n - 16), 64)?[..bytes]);
        }
        Some(v)
    }

    /// Opmask register `k` (0..=7) of the interrupted code (AVX-512), or
    /// `None` if the frame holds no XSAVE area with the opmask component.
    pub(crate) fn opmask(&self, k: u8) -> Option<u64> {
        if k >= 8 {
            return None;
        }
        let b = self.xstate(XSTATE_OPMASK, 8 * usize::from(k), 8)?;
        Some(u64::from_le_bytes(b[..8].try_into().ok()?))
    }

    /// `len` (at most 64) bytes at `at` of XSAVE component `component` in
    /// the frame: zero if the component is in its initial state, `None` if
    /// the frame has no XSAVE area, the kernel did not save the component
    /// there, or the bytes lie past the area the kernel says it wrote.
    fn xstate(&self, component: u32, at: usize, len: usize) -> Option<[u8; 64]> {
        let (offset, size) = os::xsave_component(component)?;
        if at + len > size || len > 64 {
            return None;
        }
        // SAFETY: by (1) of `new`.
        let fp = unsafe { (*self.uc).uc_mcontext.fpregs } as *const u8;
        if fp.is_null() {
            return None;
        }
        let mut out = [0u8; 64];
        // SAFETY: the legacy area's software-reserved words (at +464: the
        // magic, the extended size, the features saved, the XSAVE area's
        // size) and the header's XSTATE_BV lie inside every frame's area;
        // the component's bytes are read only when the kernel says the
        // area it wrote reaches past them.
        unsafe {
            if (fp.add(FP_SW_OFFSET) as *const u32).read_unaligned() != FP_XSTATE_MAGIC1 {
                return None;
            }
            let saved = (fp.add(FP_SW_OFFSET + 8) as *const u64).read_unaligned();
            let area = (fp.add(FP_SW_OFFSET + 16) as *const u32).read_unaligned() as usize;
            if saved & (1 << component) == 0 || offset + at + len > area {
                return None;
            }
            let bv = (fp.add(XSTATE_BV_OFFSET) as *const u64).read_unaligned();
            if bv & (1 << component) != 0 {
                core::ptr::copy_nonoverlapping(fp.add(offset + at), out.as_mut_ptr(), len);
            }
        }
        Some(out)
    }

    /// The interrupted code's instruction pointer.
    pub(crate) fn ip(&self) -> u64 {
        self.gregs()[libc::REG_RIP as usize] as u64
    }

    /// Moves the interrupted code past the instruction at its instruction
    /// pointer, `len` bytes long (a store the handler performed for it).
    pub(crate) fn skip_instruction(&mut self, len: usize) {
        let rip = &mut self.gregs_mut()[libc::REG_RIP as usize];
        *rip = rip.wrapping_add(len as i64);
    }

    /// Sets the interrupted code's rights on protection key `key` to
    /// `access` (`Read` or `ReadWrite`; `None` denies both), in the PKRU
    /// the kernel restores on return. False if the frame has no XSAVE area
    /// with a PKRU component (no protection keys), or `key` is 0.
    pub(crate) fn set_key_access(&mut self, key: u32, access: os::Access) -> bool {
        let Some(offset) = os::xsave_pkru_offset() else {
            return false;
        };
        // SAFETY: by (1) of `new`.
        let fp = unsafe { (*self.uc).uc_mcontext.fpregs } as *mut u8;
        if fp.is_null() || key == 0 || key >= 16 {
            return false;
        }
        // SAFETY: on x86_64 Linux the frame's fpregs point at the XSAVE
        // area the kernel restores on sigreturn; its header word and the
        // PKRU component lie inside it (offsets above).
        unsafe {
            let xstate_bv = fp.add(XSTATE_BV_OFFSET) as *mut u64;
            let bv = xstate_bv.read_unaligned();
            let pkru = fp.add(offset) as *mut u32;
            // A clear bit means PKRU was in its initial state (0) and the
            // bytes in the area are not its value.
            let old = if bv & XSTATE_PKRU != 0 {
                pkru.read_unaligned()
            } else {
                0
            };
            pkru.write_unaligned(os::pkru_with(old, key, access));
            xstate_bv.write_unaligned(bv | XSTATE_PKRU);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step's end is told by its code or, whatever code the kernel
    /// gives it, by the trap flag; a SIGTRAP another process or thread
    /// sends (code 0 or below) never is.
    #[test]
    fn a_step_ends_at_trace_or_at_a_kernel_trap_with_the_flag_set() {
        // SAFETY: all zeroes is a valid ucontext_t (integers and pointers).
        let mut uc: libc::ucontext_t = unsafe { core::mem::zeroed() };
        // SAFETY: uc lives for the frame's use below.
        let mut frame = unsafe { Frame::new((&mut uc as *mut libc::ucontext_t).cast()) };
        const TRAP_BRKPT: i32 = 1;
        const SI_USER: i32 = 0;
        const SI_TKILL: i32 = -6;
        assert!(is_step_trap(TRAP_TRACE, &frame));
        assert!(!is_step_trap(TRAP_BRKPT, &frame));
        frame.set_single_step(true);
        assert!(frame.single_step());
        assert!(is_step_trap(TRAP_BRKPT, &frame));
        assert!(is_step_trap(0x80, &frame), "SI_KERNEL");
        assert!(!is_step_trap(SI_USER, &frame));
        assert!(!is_step_trap(SI_TKILL, &frame));
        frame.set_single_step(false);
        assert!(!frame.single_step());
    }
}
