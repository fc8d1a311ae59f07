//! String stores (`movs`, `stos`, with or without `rep`) performed by the
//! handler on the `mprotect` backend, a page at a time, as `emulate.rs`
//! performs plain moves.
//!
//! Why: glibc's `memcpy`, `memmove` and `memset` copy and fill with
//! `rep movsb` and `rep stosb` from a few KiB up. Stepped, such an
//! instruction traps after every one of its iterations (the trap flag
//! stops a `rep` instruction between iterations), and every iteration
//! that writes a frozen page faults again: a byte per fault, a step and
//! two `mprotect` calls, about 10 µs each on this machine. A thread that
//! copied 100 KiB into the main heap while another runtime's phase kept
//! it frozen took seconds (a debug build of the recovery tests' two
//! runtimes, whose drivers symbolise a violation's backtrace while the
//! other runtime's phase runs, exceeded its 120 s under load: CI,
//! 2026-12-06). Performed here, the part of the instruction that writes
//! the faulting page is one `pwrite`.
//!
//! How: the element at `rdi` is the one that faulted (a `rep` instruction
//! interrupted by a fault has its registers at the iteration that
//! faulted). The elements from it to the end of the page (at most `rcx`
//! of them) are written through the `/proc/self/mem` descriptor; `rdi`
//! (and `rsi` for `movs`) advance past them and `rcx` counts them off, as
//! the iterations would. If any remain, the instruction is not skipped:
//! it resumes, as an interrupted `rep` instruction does, and its next
//! frozen page faults again. Not performed (stepped as before): a set
//! direction flag (a copy downwards), a `movs` whose destination starts
//! inside its source's span ahead of it (the element-by-element copy then
//! repeats the source, where a `pwrite` moves it as `memmove` does), a
//! first element that leaves the page, and any prefix but `66`, `F3`
//! (`rep`) and REX: `F2` (`repne`), segment overrides (a `movs` source
//! may name one), the address-size prefix (32-bit counters).

use super::frame::Frame;
use crate::os;

/// A `stos` fill's pattern, in bytes (a multiple of every element
/// width), and the most pieces of it one `pwritev` writes: a 4 KiB page.
const FILL_UNIT: usize = 256;
const FILL_PIECES: usize = 16;

/// The register numbers the string instructions use.
const RCX: u8 = 1;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// A decoded string store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StringOp {
    /// The instruction's length in bytes.
    pub len: usize,
    /// Bytes an iteration writes: 1, 2, 4 or 8.
    pub elem: usize,
    /// `rep` (`F3`): `rcx` iterations, else one.
    pub rep: bool,
    /// `movs` (a copy from `rsi`), else `stos` (a fill from `rax`).
    pub movs: bool,
}

/// Decodes `movs`/`stos` at the start of `code`, or `None`.
pub(crate) fn decode(code: &[u8]) -> Option<StringOp> {
    let mut i = 0;
    let (mut op16, mut rep, mut w) = (false, false, false);
    let op = loop {
        let b = *code.get(i)?;
        i += 1;
        match b {
            0x66 => op16 = true,
            0xF3 => rep = true,
            0x40..=0x4F => {
                // REX comes last, just before the opcode.
                w = b & 8 != 0;
                let op = *code.get(i)?;
                i += 1;
                break op;
            }
            // Any other prefix lands here and matches no opcode below.
            _ => break b,
        }
    };
    let wide = if w {
        8
    } else if op16 {
        2
    } else {
        4
    };
    let (elem, movs) = match op {
        0xA4 => (1, true),
        0xA5 => (wide, true),
        0xAA => (1, false),
        0xAB => (wide, false),
        _ => return None,
    };
    Some(StringOp {
        len: i,
        elem,
        rep,
        movs,
    })
}

/// The part of a string store that writes the faulting page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Part {
    /// The first byte written (`rdi`).
    pub dst: usize,
    /// Elements written here.
    n: usize,
    /// Where a `movs` copies from (`rsi`); `None` for `stos`.
    src: Option<usize>,
    /// What a `stos` writes (`rax`'s low `elem` bytes).
    value: u64,
    op: StringOp,
}

impl Part {
    /// Bytes written.
    pub(crate) fn bytes(&self) -> usize {
        self.n * self.op.elem
    }

    /// The instruction's length.
    pub(crate) fn len(&self) -> usize {
        self.op.len
    }
}

/// The part of the string store decoded in `code` that writes the page of
/// `fault_addr`, page size `page`, with the registers of `frame`; `None`
/// if it is to be stepped (see the module comment).
pub(crate) fn plan(code: &[u8], fault_addr: usize, page: usize, frame: &Frame) -> Option<Part> {
    let op = decode(code)?;
    if frame.direction_flag() {
        return None;
    }
    let count = if op.rep { frame.gpr(RCX) } else { 1 };
    let dst = frame.gpr(RDI) as usize;
    let page_lo = fault_addr & !(page - 1);
    if count == 0 || dst & !(page - 1) != page_lo {
        return None;
    }
    let n = ((page_lo + page - dst) / op.elem).min(usize::try_from(count).ok()?);
    let bytes = n * op.elem;
    if n == 0 || fault_addr.wrapping_sub(dst) >= bytes {
        return None;
    }
    let src = if op.movs {
        let src = frame.gpr(RSI) as usize;
        // A destination inside the source's span, ahead of it: the
        // iterations read bytes earlier ones wrote.
        if dst > src && dst - src < bytes {
            return None;
        }
        Some(src)
    } else {
        None
    };
    Some(Part {
        dst,
        n,
        src,
        value: frame.gpr(0),
        op,
    })
}

impl Part {
    /// Writes the part through `fd` (the `/proc/self/mem` descriptor) and
    /// moves the registers past the iterations written: past the
    /// instruction when none remain. False if nothing was written whole
    /// (the kernel refused, or a `movs` source it could not read): the
    /// store is to be stepped, which reproduces any fault of its own.
    ///
    /// Precondition: as [`super::emulate::Planned::perform`]'s.
    pub(crate) fn perform(&self, fd: i32, frame: &mut Frame) -> bool {
        let bytes = self.bytes();
        let written = match self.src {
            // SAFETY: the bytes the interrupted instruction was copying
            // there; the kernel reads the source itself, and a source it
            // cannot read is an error (EFAULT), not a fault here.
            Some(src) => unsafe { os::pwrite_from(fd, src as *const u8, bytes, self.dst) },
            None => {
                // The fill from one small pattern, repeated by the kernel
                // (`pwritev`): the handler may run on a small alternate
                // stack (std's, in a thread that is no worker), under a
                // signal frame that can take most of it (AMX state: 8
                // KiB), and a page-sized buffer there overflowed it (a
                // QEMU guest, 2026-12-06).
                let mut unit = [0u8; FILL_UNIT];
                let value = self.value.to_le_bytes();
                for (i, b) in unit.iter_mut().enumerate() {
                    *b = value[i % self.op.elem];
                }
                let empty = libc::iovec {
                    iov_base: core::ptr::null_mut(),
                    iov_len: 0,
                };
                let mut iov = [empty; FILL_PIECES];
                let mut k = 0;
                let mut left = bytes.min(FILL_UNIT * FILL_PIECES);
                while left > 0 {
                    let len = left.min(FILL_UNIT);
                    iov[k] = libc::iovec {
                        iov_base: unit.as_mut_ptr().cast(),
                        iov_len: len,
                    };
                    left -= len;
                    k += 1;
                }
                // SAFETY: the bytes the interrupted instruction was
                // filling there; every piece points into `unit`.
                unsafe { os::pwritev_at(fd, &iov[..k], self.dst) }
            }
        };
        let done = written.map_or(0, |w| w.min(bytes) / self.op.elem);
        if done == 0 {
            return false;
        }
        let advance = (done * self.op.elem) as u64;
        frame.set_gpr(RDI, frame.gpr(RDI).wrapping_add(advance));
        if self.op.movs {
            frame.set_gpr(RSI, frame.gpr(RSI).wrapping_add(advance));
        }
        let left = if self.op.rep {
            let left = frame.gpr(RCX) - done as u64;
            frame.set_gpr(RCX, left);
            left
        } else {
            0
        };
        if left == 0 {
            frame.skip_instruction(self.op.len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_stores_decode_with_their_widths_and_prefixes() {
        // (length, element width, rep, movs)
        type Decoded = Option<(usize, usize, bool, bool)>;
        let cases: &[(&[u8], Decoded)] = &[
            (&[0xF3, 0xA4], Some((2, 1, true, true))),
            (&[0xA4], Some((1, 1, false, true))),
            (&[0xF3, 0xA5], Some((2, 4, true, true))),
            (&[0xF3, 0x48, 0xA5], Some((3, 8, true, true))),
            (&[0x66, 0xF3, 0xA5], Some((3, 2, true, true))),
            (&[0xF3, 0xAA], Some((2, 1, true, false))),
            (&[0xF3, 0x48, 0xAB], Some((3, 8, true, false))),
            (&[0xAB], Some((1, 4, false, false))),
            (&[0x66, 0xAB], Some((2, 2, false, false))),
            // repne, segment override, address size, lock: stepped.
            (&[0xF2, 0xA4], None),
            (&[0x64, 0xF3, 0xA4], None),
            (&[0x67, 0xF3, 0xA4], None),
            (&[0xF0, 0xAB], None),
            // Not string stores: lods, scas, cmps, a plain mov.
            (&[0xF3, 0xAC], None),
            (&[0xF3, 0xAE], None),
            (&[0xF3, 0xA6], None),
            (&[0x48, 0x89, 0x07], None),
            (&[], None),
            (&[0xF3], None),
        ];
        for (code, want) in cases {
            let got = decode(code).map(|o| (o.len, o.elem, o.rep, o.movs));
            assert_eq!(got, *want, "{code:02x?}");
        }
    }
}
