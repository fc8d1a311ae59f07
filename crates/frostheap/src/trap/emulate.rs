//! Performing a store for the interrupted code, on the `mprotect`
//! backend, without opening its page: the handler decodes the faulting
//! instruction (`decode.rs`), computes its address and value from the
//! saved registers (for a read-modify-write, from the operand read
//! through the descriptor too, and with the registers and flags the
//! instruction leaves: `rmw.rs`), writes the bytes through a
//! `/proc/self/mem` descriptor and moves the interrupted code past the
//! instruction. Every caller holds the step lock from [`plan`] to
//! [`Planned::perform`], and every store to a frozen page faults into a
//! path that takes it: so a read-modify-write is atomic.
//!
//! Why: a stepped store opens its 4 KiB page to *every* thread for one
//! instruction (`step.rs`). In that instant a worker's violating store to
//! the page lands without a fault, and inside a bystander's step (no
//! diff) survives the phase unreported; a bystander's store inside a
//! worker's step is undone with the diff (docs/rollback.md, "Known
//! limits"). A performed store opens nothing: the page stays read-only to
//! every other thread. A user's trial (a plain thread incrementing a word
//! of a page while each phase's task stored to another word of it) had
//! 900 to 1,499 phases of 3,000 return `Ok` with the violating store kept.
//!
//! The write goes through the kernel's `FOLL_FORCE` path, which writes a
//! private page mapped read-only (as a debugger's breakpoint does). It is
//! probed when the backend is set up ([`prepare`]): where the kernel
//! refuses it (`proc_mem.force_override=never`, or `ptrace` with no
//! tracer) every store is stepped as before. The descriptor belongs to
//! the process that opened it: after `fork` it still writes the parent's
//! memory, so the handler uses it only where `getpid` is the opener's,
//! and a runtime set up in the child opens its own.
//!
//! Vector moves (SSE, and AVX and AVX-512 by their VEX and EVEX
//! encodings: glibc's `memcpy` and `memset` below a few KiB on CPUs that
//! have them) take the register's bytes from the frame's XSAVE area
//! ([`Frame::vector`]); under an AVX-512 opmask only the bytes it selects
//! are written, from the first to the last, those between them that it
//! leaves written back as they were (read under the step lock).
//!
//! String stores (`rep movs`, `rep stos`: glibc's `memcpy` and
//! `memset` from a few KiB up) are performed a page at a time
//! (`string.rs`). What is not decoded is stepped as before: see
//! `decode.rs` for the list, and so is a store whose bytes leave the
//! faulting page (unless it is a plain move whose bytes all lie in the
//! committed part of the same heap: performed across the two pages), one made
//! while a step is armed on the thread (its second fault), and a
//! misaligned aligned-move (the step reproduces its #GP).
//!
//! The descriptor is trusted to stay ours: a program that closes
//! descriptors it did not open and reuses the number for a file of its
//! own would have the handler read the instruction from that file at
//! the instruction's address as offset, which finds nothing there (a
//! short read or an error, so the store is stepped) unless the file
//! reaches that far (tens of terabytes).
//!
//! Async-signal-safe: atomics, `getpid`, `pread` and `pwrite`, no
//! allocation, no lock of its own (the caller's step lock).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::decode::{decode, Op, Source, MAX_LEN};
use super::frame::Frame;
use super::rmw::{self, Operands, ARITH_FLAGS};
use super::string;
use crate::{guard, os};

/// The `/proc/self/mem` descriptor: the opener's pid in the high half,
/// the descriptor plus one in the low half (0: the kernel refused the
/// probe for that pid, or none was opened). Written by [`prepare`] only,
/// outside the handler; one word, so the handler never pairs one
/// process's descriptor with another's pid.
static SELF_MEM: AtomicU64 = AtomicU64::new(0);

/// Whether stores are performed at all (tests turn it off to show the
/// step they replace).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether read-modify-writes are performed too (tests turn it off to
/// show the step they replace, plain moves still performed).
static RMW_ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns performing stores on or off for the process (on by default);
/// off, every store on `mprotect` is stepped as before. For tests that
/// measure or show the step.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

/// Turns performing read-modify-writes on or off for the process (on by
/// default); off, they are stepped as before and plain moves are still
/// performed. For tests that measure or show the step.
pub fn set_rmw_enabled(on: bool) {
    RMW_ENABLED.store(on, Ordering::Release);
}

/// Opens and probes the descriptor for this process, once per process
/// (again in a child after `fork`). Called when a runtime sets up the
/// `mprotect` backend, outside any phase of its own; callers are
/// serialised (the guard's tagging lock).
pub(crate) fn prepare() {
    let pid = os::getpid() as u32;
    let word = SELF_MEM.load(Ordering::Acquire);
    if word != 0 && (word >> 32) as u32 == pid {
        return;
    }
    let fd = match os::open_self_mem() {
        Ok(fd) if probe(fd) => Some(fd),
        Ok(fd) => {
            os::close(fd);
            None
        }
        Err(_) => None,
    };
    let new = u64::from(pid) << 32 | fd.map_or(0, |fd| fd as u64 + 1);
    let old = SELF_MEM.swap(new, Ordering::AcqRel);
    // The parent's descriptor, inherited: no handler here uses it (its pid
    // is not ours), so closing it cannot close a descriptor in use.
    if old != 0 && (old >> 32) as u32 != pid && old as u32 != 0 {
        os::close((old as u32 - 1) as i32);
    }
}

/// Whether a write through `fd` lands in a private page mapped read-only.
fn probe(fd: i32) -> bool {
    let page = os::page_size();
    let Ok(p) = os::map_table(page) else {
        return false;
    };
    // SAFETY: `p` is a fresh page of ours, written, protected, written
    // through `fd` and read, then unmapped; nothing else knows it.
    unsafe {
        p.write_volatile(1);
        let ok = os::protect(p, page, os::Access::Read).is_ok()
            && os::pwrite_at(fd, &[2], p as usize) == Ok(1)
            && p.read_volatile() == 2;
        os::unmap(p, page);
        ok
    }
}

/// A store decoded at the faulting instruction, ready to be performed.
pub(crate) struct Planned {
    fd: i32,
    /// The first byte written.
    pub addr: usize,
    /// Bytes written.
    pub width: usize,
    bytes: [u8; 64],
    /// Whether the bytes are to be written: a read-modify-write that
    /// leaves them as they are (a failed `cmpxchg`, `or` with 0) writes
    /// nothing; its locked write of the same value is invisible.
    write: bool,
    /// Registers the instruction writes (number, whole 64-bit value).
    regs: [Option<(u8, u64)>; 2],
    /// The flags it leaves: the bits of RFLAGS it may change, and their
    /// values (0, 0 for a plain move).
    flags: (u64, u64),
    /// The instruction's length.
    len: usize,
    /// A string store (`movs`, `stos`): its part in the faulting page,
    /// written from its source instead of `bytes` (string.rs).
    string: Option<string::Part>,
}

/// The store that faulted at `fault_addr`, if it can be performed here:
/// decoded, its bytes all in the faulting page (a plain move: in the
/// committed part of its heap, across two pages), the descriptor this
/// process's own, no step armed on the thread, and the heap not sealed
/// (`FOLL_FORCE` may write a sealed page too, and a store into one must
/// never land: the rollback's replay could not put it back).
///
/// A read-modify-write reads its operand here, and computes what the
/// instruction writes there, in its registers and in the flags (`rmw.rs`):
/// the caller holds the step lock from this call to [`Planned::perform`],
/// which every other store to a frozen page takes too, so the operand
/// cannot change in between (docs/rollback.md, "Known limits").
pub(crate) fn plan(fault_addr: usize, frame: &Frame) -> Option<Planned> {
    if !ENABLED.load(Ordering::Acquire) || frame.single_step() {
        return None;
    }
    let entry = guard::entry_of(fault_addr).filter(|e| !e.is_sealed())?;
    let word = SELF_MEM.load(Ordering::Acquire);
    if word as u32 == 0 || (word >> 32) as u32 != os::getpid() as u32 {
        return None;
    }
    let fd = (word as u32 - 1) as i32;
    let ip = frame.ip();
    // Read through the descriptor, not the pointer: a page of code may be
    // execute-only, and the next page may be unmapped (a short read).
    let mut code = [0u8; MAX_LEN];
    let n = os::pread_at(fd, &mut code, ip as usize).ok()?;
    let Some(store) = decode(&code[..n]) else {
        let part = string::plan(&code[..n], fault_addr, os::page_size(), frame)?;
        return Some(Planned {
            fd,
            addr: part.dst,
            width: part.bytes(),
            bytes: [0; 64],
            write: true,
            regs: [None; 2],
            flags: (0, 0),
            len: part.len(),
            string: Some(part),
        });
    };
    if store.op.reads() && !RMW_ENABLED.load(Ordering::Acquire) {
        return None;
    }
    let mut addr = store.address(ip, |r| frame.gpr(r)) as usize;
    // The register operand's value, or the immediate's.
    let src = match store.src {
        Source::Gpr { reg, high8 } => frame.gpr(reg) >> if high8 { 8 } else { 0 },
        Source::Imm(v) => v,
        Source::Xmm { .. } | Source::None => 0,
    };
    let mut bit = 0;
    if matches!(store.op, Op::Bts | Op::Btr | Op::Btc) {
        let (word_addr, b) = store.bit_address(addr as u64, src);
        addr = word_addr as usize;
        bit = u64::from(b);
    }
    if !addr.is_multiple_of(store.align) {
        return None;
    }
    let mut width = store.width;
    // An opmask narrows an AVX-512 store to the bytes it selects, from the
    // first to the last (the others neither change nor fault); `selected`
    // has a bit for each of them, from `addr` on.
    let (mut first, mut selected) = (0, u64::MAX);
    if let Some(mask) = store.mask {
        let bits = mask.bytes(frame.opmask(mask.k)?, width);
        if bits == 0 {
            return None;
        }
        first = bits.trailing_zeros() as usize;
        width = 64 - bits.leading_zeros() as usize - first;
        selected = bits >> first;
        addr += first;
    }
    if fault_addr.wrapping_sub(addr) >= width
        || !(in_fault_page(fault_addr, addr, width)
            || store.op == Op::Move && in_committed_heap(entry, addr, width))
    {
        return None;
    }
    let mut planned = Planned {
        fd,
        addr,
        width,
        bytes: [0u8; 64],
        write: true,
        regs: [None; 2],
        flags: (0, 0),
        len: store.len,
        string: None,
    };
    match store.src {
        Source::Xmm { reg, offset } if store.op == Op::Move => {
            // XMM, YMM or ZMM: 16, 32 or 64 bytes of the register.
            let v = frame.vector(
                reg,
                (usize::from(offset) + store.width)
                    .next_power_of_two()
                    .max(16),
            )?;
            let o = usize::from(offset) + first;
            planned.bytes[..width].copy_from_slice(&v[o..o + width]);
            let all = u64::MAX >> (64 - width);
            if selected & all != all {
                // Bytes the mask leaves, between those it writes: as they
                // are (read under the step lock, which every store to a
                // frozen page takes, so none changes them before the write).
                let mut old = [0u8; 64];
                if os::pread_at(fd, &mut old[..width], addr) != Ok(width) {
                    return None;
                }
                for (b, byte) in planned.bytes[..width].iter_mut().enumerate() {
                    if selected >> b & 1 == 0 {
                        *byte = old[b];
                    }
                }
            }
            return Some(planned);
        }
        _ if store.op == Op::Move => {
            planned.bytes[..8].copy_from_slice(&src.to_le_bytes());
            return Some(planned);
        }
        _ => {}
    }
    // A read-modify-write: the operand as it is now (through the
    // descriptor too: no fault of this handler's own, whatever the page).
    let mut old = [0u8; 16];
    if os::pread_at(fd, &mut old[..width], addr) != Ok(width) {
        return None;
    }
    let word = |k: usize| u64::from_le_bytes(old[8 * k..8 * k + 8].try_into().unwrap_or([0; 8]));
    let before = Operands {
        mem: [word(0), word(1)],
        src: if matches!(store.op, Op::Bts | Op::Btr | Op::Btc) {
            bit
        } else {
            src
        },
        rax: frame.gpr(0),
        rcx: frame.gpr(1),
        rdx: frame.gpr(2),
        rbx: frame.gpr(3),
        flags: frame.flags(),
    };
    let after = rmw::run(store.op, width, before);
    planned.bytes[..8].copy_from_slice(&after.mem[0].to_le_bytes());
    planned.bytes[8..16].copy_from_slice(&after.mem[1].to_le_bytes());
    planned.write = planned.bytes[..width] != old[..width];
    planned.flags = (ARITH_FLAGS, after.flags);
    planned.regs = match (store.op, store.src) {
        (Op::Xadd | Op::Xchg, Source::Gpr { reg, high8: true }) => {
            let whole = frame.gpr(reg);
            [
                Some((reg, (whole & !0xFF00) | ((after.src & 0xFF) << 8))),
                None,
            ]
        }
        (Op::Xadd | Op::Xchg, Source::Gpr { reg, .. }) => [Some((reg, after.src)), None],
        (Op::Cmpxchg, _) => [Some((0, after.rax)), None],
        (Op::Cmpxchg16b, _) => [Some((0, after.rax)), Some((2, after.rdx))],
        _ => [None; 2],
    };
    Some(planned)
}

/// Whether `[addr, addr + width)` lies in the page of `fault_addr`.
fn in_fault_page(fault_addr: usize, addr: usize, width: usize) -> bool {
    let page = !(os::page_size() - 1);
    addr & page == fault_addr & page && addr.wrapping_add(width - 1) & page == fault_addr & page
}

/// Whether `[addr, addr + width)` (a store of at most 64 bytes, across
/// two pages, around the fault) lies in the committed part of the heap of
/// `entry`, where the store faulted (whose committed end lies within its
/// range: a region commits at most what it reserved). That heap is frozen
/// by `mprotect` (its whole committed part read-only) and not sealed (the
/// caller checked both), so the CPU faults on either page: the store is
/// one write of both parts, as it would be one store, where stepping it
/// opened both pages to every thread. A plain move only: the kernel writes
/// page by page, and if it wrote the first part and refused the second the
/// store is stepped, which writes the same bytes again (a read-modify-write
/// would apply its operation twice). Neither end may lie in a phase's
/// exempt result slots.
fn in_committed_heap(entry: &guard::Entry, addr: usize, width: usize) -> bool {
    let last = addr.wrapping_add(width - 1);
    last > addr
        && addr >= entry.start()
        && entry.is_committed(last)
        // A phase's result slots are exempt from the freeze: their bytes
        // are never saved or undone, so a violating store's part there
        // must not go into the undo window with the rest (stepped, the
        // window is the faulting page alone: `handler::window`).
        && !super::freeze::exempt(addr)
        && !super::freeze::exempt(last)
}

impl Planned {
    /// Writes the store's bytes (all or none where they lie in one page;
    /// a plain move across two may land in the first only, and is then
    /// stepped, which writes them again) and,
    /// if they landed, sets the registers and flags the instruction
    /// writes and moves `frame` past it. False if the kernel refused:
    /// nothing was written or set, and the store is to be stepped.
    ///
    /// Precondition: the caller holds what keeps the page frozen and
    /// mapped (the step lock) and has held it since [`plan`] (a
    /// read-modify-write's operand was read there), and, under rollback,
    /// has saved the bytes.
    pub(crate) fn perform(&self, frame: &mut Frame) -> bool {
        if let Some(part) = &self.string {
            return part.perform(self.fd, frame);
        }
        if self.write {
            // SAFETY: the bytes are the ones the interrupted instruction
            // was storing there (decoded from it, its registers and, for a
            // read-modify-write, the operand read under the same lock): the
            // handler performs that store for it.
            let written = unsafe { os::pwrite_at(self.fd, &self.bytes[..self.width], self.addr) };
            if written != Ok(self.width) {
                return false;
            }
        }
        for &(reg, value) in self.regs.iter().flatten() {
            frame.set_gpr(reg, value);
        }
        frame.set_flags(self.flags.0, self.flags.1);
        frame.skip_instruction(self.len);
        true
    }
}
