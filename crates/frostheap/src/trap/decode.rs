//! A decoder for the x86_64 stores the `mprotect` backend performs itself
//! instead of opening a page (`emulate.rs`): the plain moves to memory a
//! compiler emits for a store, and nothing else.
//!
//! Pure: bytes in, a [`Store`] (its length, the width written, the memory
//! operand and where the value comes from) or `None` out; the handler
//! reads the registers. `None` is always safe: the store is then stepped
//! through as before. Decoded (64-bit mode, 64-bit addressing):
//!
//! | bytes | instruction | width |
//! |---|---|---|
//! | `88 /r` | `mov r/m8, r8` (`ah`..`bh` without REX) | 1 |
//! | `89 /r` | `mov r/m16/32/64, r` (`66`, `REX.W`) | 2, 4, 8 |
//! | `C6 /0 ib` | `mov r/m8, imm8` | 1 |
//! | `C7 /0 iw/id` | `mov r/m16/32/64, imm` (`REX.W`: imm32 sign-extended) | 2, 4, 8 |
//! | `0F C3 /r` | `movnti m32/m64, r` | 4, 8 |
//! | `0F 11`, `66 0F 11` | `movups`, `movupd m128, xmm` | 16 |
//! | `F3 0F 11`, `F2 0F 11` | `movss m32`, `movsd m64, xmm` | 4, 8 |
//! | `0F 29`, `66 0F 29`, `0F 2B`, `66 0F 2B`, `66 0F E7` | `movaps`, `movapd`, `movntps`, `movntpd`, `movntdq m128, xmm` (16-aligned) | 16 |
//! | `66 0F 7F`, `F3 0F 7F` | `movdqa` (16-aligned), `movdqu m128, xmm` | 16 |
//! | `66 0F D6` | `movq m64, xmm` | 8 |
//! | `66 0F 7E` | `movd m32`, `movq m64, xmm` (`REX.W`) | 4, 8 |
//! | `0F 13`, `66 0F 13`, `0F 17`, `66 0F 17` | `movlps`, `movlpd`, `movhps`, `movhpd m64, xmm` | 8 |
//!
//! Everything else is `None`: a register destination (`mod == 3`), any
//! `lock` prefix (`xchg`, `cmpxchg`, `add` to memory and every other
//! read-modify-write: they read what they write, and an atomic one must
//! stay atomic), segment overrides (`fs`/`gs` bases are not in the
//! frame; the others are rare enough to step), the address-size prefix,
//! string instructions (`movs`, `stos`: `string.rs` performs those), `push`/`call`, `mov moffs`
//! (`A2`/`A3`), MMX stores, VEX and EVEX (AVX, AVX-512) encodings, and a
//! `66`, `F2` or `F3` where the table has none.

/// Where the value of a store comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A general register, by its number (0 = rax .. 15 = r15); `high8`
    /// for `ah`, `ch`, `dh`, `bh` (bits 8..16 of register `reg`).
    Gpr { reg: u8, high8: bool },
    /// An immediate, already sign-extended to 64 bits where the
    /// instruction does.
    Imm(u64),
    /// Bytes `offset..offset + width` of an XMM register (0..=15).
    Xmm { reg: u8, offset: u8 },
}

/// A memory operand: `base + index * scale + disp`, or
/// `next instruction + disp` when `rip_relative`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    pub base: Option<u8>,
    pub index: Option<u8>,
    pub scale: u8,
    pub disp: i64,
    pub rip_relative: bool,
}

/// A decoded store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Store {
    /// The instruction's length in bytes (what RIP advances by).
    pub len: usize,
    /// Bytes written: 1, 2, 4, 8 or 16.
    pub width: usize,
    /// The alignment the instruction demands of its address (16 for the
    /// aligned SSE moves, else 1): a misaligned one raises #GP, which the
    /// step then reproduces.
    pub align: usize,
    pub mem: Mem,
    pub src: Source,
}

impl Store {
    /// The address written, from the instruction's address and a
    /// register file (`gpr(n)` for n = 0 (rax) .. 15 (r15)).
    pub(crate) fn address(&self, rip: u64, gpr: impl Fn(u8) -> u64) -> u64 {
        let m = &self.mem;
        let mut a = m.disp as u64;
        if m.rip_relative {
            a = a.wrapping_add(rip).wrapping_add(self.len as u64);
        }
        if let Some(b) = m.base {
            a = a.wrapping_add(gpr(b));
        }
        if let Some(i) = m.index {
            a = a.wrapping_add(gpr(i).wrapping_mul(u64::from(m.scale)));
        }
        a
    }
}

/// The longest x86 instruction.
pub(crate) const MAX_LEN: usize = 15;

/// Decodes the store at the start of `code` (the bytes at the faulting
/// RIP; fewer than [`MAX_LEN`] where the code ends), or `None` if it is
/// not one of the module's table.
pub(crate) fn decode(code: &[u8]) -> Option<Store> {
    let code = &code[..code.len().min(MAX_LEN)];
    let mut i = 0;
    let mut opsize16 = false;
    let mut rep: Option<u8> = None;
    let mut rex = 0u8;
    loop {
        let b = *code.get(i)?;
        match b {
            0x66 => opsize16 = true,
            0xF2 | 0xF3 => {
                if rep.is_some_and(|r| r != b) {
                    return None;
                }
                rep = Some(b);
            }
            // lock, segment overrides, address size.
            0xF0 | 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x67 => return None,
            0x40..=0x4F => {
                rex = b;
                i += 1;
                break;
            }
            _ => break,
        }
        i += 1;
    }
    let (w, r, x, bx) = (rex & 8 != 0, (rex >> 2) & 1, (rex >> 1) & 1, rex & 1);
    let op = *code.get(i)?;
    i += 1;
    // (width, align, source kind, immediate bytes)
    enum Kind {
        Gpr,
        Imm(usize),
        Xmm(u8),
    }
    let plain = !opsize16 && rep.is_none();
    let (width, align, kind) = match op {
        0x88 if plain => (1, 1, Kind::Gpr),
        0x89 if rep.is_none() => (
            if w {
                8
            } else if opsize16 {
                2
            } else {
                4
            },
            1,
            Kind::Gpr,
        ),
        0xC6 if plain => (1, 1, Kind::Imm(1)),
        0xC7 if rep.is_none() => {
            if w {
                (8, 1, Kind::Imm(4))
            } else if opsize16 {
                (2, 1, Kind::Imm(2))
            } else {
                (4, 1, Kind::Imm(4))
            }
        }
        0x0F => {
            let op2 = *code.get(i)?;
            i += 1;
            if opsize16 && rep.is_some() {
                return None;
            }
            let p66 = opsize16;
            match (op2, rep) {
                (0xC3, None) if !p66 => (if w { 8 } else { 4 }, 1, Kind::Gpr),
                (0x11, None) => (16, 1, Kind::Xmm(0)),
                (0x11, Some(0xF3)) => (4, 1, Kind::Xmm(0)),
                (0x11, Some(0xF2)) => (8, 1, Kind::Xmm(0)),
                (0x29 | 0x2B, None) => (16, 16, Kind::Xmm(0)),
                (0xE7, None) if p66 => (16, 16, Kind::Xmm(0)),
                (0x7F, None) if p66 => (16, 16, Kind::Xmm(0)),
                (0x7F, Some(0xF3)) => (16, 1, Kind::Xmm(0)),
                (0xD6, None) if p66 => (8, 1, Kind::Xmm(0)),
                (0x7E, None) if p66 => (if w { 8 } else { 4 }, 1, Kind::Xmm(0)),
                (0x13, None) => (8, 1, Kind::Xmm(0)),
                (0x17, None) => (8, 1, Kind::Xmm(8)),
                _ => return None,
            }
        }
        _ => return None,
    };
    let modrm = *code.get(i)?;
    i += 1;
    let md = modrm >> 6;
    let reg = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 {
        return None;
    }
    if matches!(kind, Kind::Imm(_)) && reg != 0 {
        return None;
    }
    let mut mem = Mem {
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
    };
    let mut disp_bytes = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *code.get(i)?;
        i += 1;
        mem.scale = 1 << (sib >> 6);
        let index = ((sib >> 3) & 7) | x << 3;
        if index != 4 {
            mem.index = Some(index);
        }
        let base = sib & 7;
        if base == 5 && md == 0 {
            disp_bytes = 4;
        } else {
            mem.base = Some(base | bx << 3);
        }
    } else if rm == 5 && md == 0 {
        mem.rip_relative = true;
        disp_bytes = 4;
    } else {
        mem.base = Some(rm | bx << 3);
    }
    mem.disp = match disp_bytes {
        1 => i64::from(*code.get(i)? as i8),
        4 => i64::from(i32::from_le_bytes(code.get(i..i + 4)?.try_into().ok()?)),
        _ => 0,
    };
    i += disp_bytes;
    let reg_full = reg | r << 3;
    let src = match kind {
        Kind::Gpr => {
            let high8 = width == 1 && rex == 0 && (4..8).contains(&reg);
            Source::Gpr {
                reg: if high8 { reg - 4 } else { reg_full },
                high8,
            }
        }
        Kind::Imm(n) => {
            let bytes = code.get(i..i + n)?;
            i += n;
            let v = match n {
                1 => u64::from(bytes[0]),
                2 => u64::from(u16::from_le_bytes([bytes[0], bytes[1]])),
                _ => i32::from_le_bytes(bytes.try_into().ok()?) as i64 as u64,
            };
            Source::Imm(v)
        }
        Kind::Xmm(offset) => Source::Xmm {
            reg: reg_full,
            offset,
        },
    };
    Some(Store {
        len: i,
        width,
        align,
        mem,
        src,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAX: u8 = 0;
    const RCX: u8 = 1;
    const RDX: u8 = 2;
    const RBX: u8 = 3;
    const RSP: u8 = 4;
    const RBP: u8 = 5;
    const R8: u8 = 8;
    const R12: u8 = 12;
    const R13: u8 = 13;
    const R15: u8 = 15;

    fn mem(base: Option<u8>, index: Option<u8>, scale: u8, disp: i64) -> Mem {
        Mem {
            base,
            index,
            scale,
            disp,
            rip_relative: false,
        }
    }

    fn gpr(reg: u8) -> Source {
        Source::Gpr { reg, high8: false }
    }

    #[track_caller]
    fn store(code: &[u8], width: usize, mem: Mem, src: Source) {
        let s = decode(code).unwrap_or_else(|| panic!("{code:02x?} not decoded"));
        assert_eq!(
            s,
            Store {
                len: code.len(),
                width,
                align: s.align,
                mem,
                src
            },
            "{code:02x?}"
        );
        // The instruction's length is all of it: with bytes after it, the
        // same answer.
        let mut longer = code.to_vec();
        longer.extend_from_slice(&[0x90; 8]);
        assert_eq!(decode(&longer), Some(s), "{code:02x?} followed by nops");
    }

    #[test]
    fn moves_from_general_registers_decode_with_their_width_and_operand() {
        // mov [rax], cl
        store(&[0x88, 0x08], 1, mem(Some(RAX), None, 1, 0), gpr(RCX));
        // mov [rbx], ah (no REX: 4 is ah, bits 8..16 of rax)
        store(
            &[0x88, 0x23],
            1,
            mem(Some(RBX), None, 1, 0),
            Source::Gpr {
                reg: RAX,
                high8: true,
            },
        );
        // mov [rbx], spl (REX: 4 is spl)
        store(&[0x40, 0x88, 0x23], 1, mem(Some(RBX), None, 1, 0), gpr(RSP));
        // mov [rdi+0x10], esi
        store(&[0x89, 0x77, 0x10], 4, mem(Some(7), None, 1, 0x10), gpr(6));
        // mov [rdi-8], si
        store(
            &[0x66, 0x89, 0x77, 0xF8],
            2,
            mem(Some(7), None, 1, -8),
            gpr(6),
        );
        // mov [rax+rcx*8+0x12345678], rdx
        store(
            &[0x48, 0x89, 0x94, 0xC8, 0x78, 0x56, 0x34, 0x12],
            8,
            mem(Some(RAX), Some(RCX), 8, 0x1234_5678),
            gpr(RDX),
        );
        // mov [r12], r15 (rm 4 with REX.B: SIB, base r12)
        store(
            &[0x4D, 0x89, 0x3C, 0x24],
            8,
            mem(Some(R12), None, 1, 0),
            gpr(R15),
        );
        // mov [r13+0], r8 (rm 5 with REX.B and mod 1: base r13, not RIP)
        store(
            &[0x4D, 0x89, 0x45, 0x00],
            8,
            mem(Some(R13), None, 1, 0),
            gpr(R8),
        );
        // mov [rbp+0], eax
        store(&[0x89, 0x45, 0x00], 4, mem(Some(RBP), None, 1, 0), gpr(RAX));
        // mov [r12*4+0x40], eax (REX.X: index 12 is r12; base 5, mod 0: none)
        store(
            &[0x42, 0x89, 0x04, 0xA5, 0x40, 0, 0, 0],
            4,
            mem(None, Some(R12), 4, 0x40),
            gpr(RAX),
        );
        // mov [rsp+8], rax (SIB with no index)
        store(
            &[0x48, 0x89, 0x44, 0x24, 0x08],
            8,
            mem(Some(RSP), None, 1, 8),
            gpr(RAX),
        );
        // movnti [rcx], rax
        store(
            &[0x48, 0x0F, 0xC3, 0x01],
            8,
            mem(Some(RCX), None, 1, 0),
            gpr(RAX),
        );
        // movnti [rcx], eax
        store(&[0x0F, 0xC3, 0x01], 4, mem(Some(RCX), None, 1, 0), gpr(RAX));
    }

    #[test]
    fn rip_relative_addresses_count_from_the_next_instruction() {
        // mov dword [rip+0x100], 7: the immediate follows the displacement,
        // and the address counts from after it.
        let code = [0xC7, 0x05, 0x00, 0x01, 0, 0, 0x07, 0, 0, 0];
        let s = decode(&code).unwrap();
        assert_eq!((s.len, s.width, s.src), (10, 4, Source::Imm(7)));
        assert!(s.mem.rip_relative);
        assert_eq!(s.address(0x1000, |_| unreachable!()), 0x1000 + 10 + 0x100);
        // mov [rip-4], al
        let s = decode(&[0x88, 0x05, 0xFC, 0xFF, 0xFF, 0xFF]).unwrap();
        assert_eq!(s.address(0x2000, |_| 0), 0x2000 + 6 - 4);
    }

    #[test]
    fn immediates_are_as_wide_as_the_store_and_sign_extended_to_64() {
        // mov byte [rax], 0xAB
        store(
            &[0xC6, 0x00, 0xAB],
            1,
            mem(Some(RAX), None, 1, 0),
            Source::Imm(0xAB),
        );
        // mov word [rax], 0xBEEF
        store(
            &[0x66, 0xC7, 0x00, 0xEF, 0xBE],
            2,
            mem(Some(RAX), None, 1, 0),
            Source::Imm(0xBEEF),
        );
        // mov dword [rax+4], 0x80000000
        store(
            &[0xC7, 0x40, 0x04, 0, 0, 0, 0x80],
            4,
            mem(Some(RAX), None, 1, 4),
            Source::Imm(0xFFFF_FFFF_8000_0000),
        );
        // mov qword [rax], -1
        store(
            &[0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF],
            8,
            mem(Some(RAX), None, 1, 0),
            Source::Imm(u64::MAX),
        );
    }

    #[test]
    fn sse_stores_name_their_register_width_and_alignment() {
        let xmm = |reg, offset| Source::Xmm { reg, offset };
        let at_rdi = mem(Some(7), None, 1, 0);
        // movups [rdi], xmm0; movupd; movdqu [rdi], xmm9 (REX.R)
        store(&[0x0F, 0x11, 0x07], 16, at_rdi, xmm(0, 0));
        store(&[0x66, 0x0F, 0x11, 0x07], 16, at_rdi, xmm(0, 0));
        store(&[0xF3, 0x44, 0x0F, 0x7F, 0x0F], 16, at_rdi, xmm(9, 0));
        // movss, movsd, movq, movd, movq via 7E with REX.W, movlps, movhps
        store(&[0xF3, 0x0F, 0x11, 0x0F], 4, at_rdi, xmm(1, 0));
        store(&[0xF2, 0x0F, 0x11, 0x0F], 8, at_rdi, xmm(1, 0));
        store(&[0x66, 0x0F, 0xD6, 0x17], 8, at_rdi, xmm(2, 0));
        store(&[0x66, 0x0F, 0x7E, 0x17], 4, at_rdi, xmm(2, 0));
        store(&[0x66, 0x48, 0x0F, 0x7E, 0x17], 8, at_rdi, xmm(2, 0));
        store(&[0x0F, 0x13, 0x1F], 8, at_rdi, xmm(3, 0));
        store(&[0x0F, 0x17, 0x1F], 8, at_rdi, xmm(3, 8));
        // The aligned ones say so.
        for code in [
            &[0x0F, 0x29, 0x07][..],
            &[0x66, 0x0F, 0x29, 0x07],
            &[0x0F, 0x2B, 0x07],
            &[0x66, 0x0F, 0xE7, 0x07],
            &[0x66, 0x0F, 0x7F, 0x07],
        ] {
            assert_eq!(
                decode(code).map(|s| (s.width, s.align)),
                Some((16, 16)),
                "{code:02x?}"
            );
        }
        assert_eq!(decode(&[0x0F, 0x11, 0x07]).unwrap().align, 1);
    }

    #[test]
    fn everything_else_falls_back_to_the_step() {
        for (code, what) in [
            (&[0x89, 0xC8][..], "mov eax, ecx (register destination)"),
            (&[0xF0, 0x48, 0x0F, 0xB1, 0x0F], "lock cmpxchg [rdi], rcx"),
            (&[0xF0, 0x48, 0x0F, 0xC1, 0x07], "lock xadd [rdi], rax"),
            (&[0x48, 0x87, 0x07], "xchg [rdi], rax"),
            (&[0x48, 0x01, 0x07], "add [rdi], rax"),
            (&[0xF0, 0x48, 0xFF, 0x07], "lock inc qword [rdi]"),
            (&[0xF3, 0xA4], "rep movsb"),
            (&[0xF3, 0x48, 0xAB], "rep stosq"),
            (&[0xAA], "stosb"),
            (
                &[0x64, 0x48, 0x89, 0x04, 0x25, 0, 0, 0, 0],
                "mov fs:[0], rax",
            ),
            (&[0x65, 0x89, 0x07], "mov gs:[rdi], eax"),
            (&[0x2E, 0x89, 0x07], "cs override"),
            (&[0x67, 0x89, 0x07], "mov [edi], eax (address size)"),
            (&[0xC5, 0xFE, 0x7F, 0x07], "vmovdqu [rdi], ymm0 (VEX)"),
            (&[0xC5, 0xF8, 0x11, 0x07], "vmovups [rdi], xmm0 (VEX)"),
            (
                &[0x62, 0xF1, 0xFE, 0x48, 0x7F, 0x07],
                "vmovdqu32 [rdi], zmm0 (EVEX)",
            ),
            (&[0x0F, 0x7F, 0x07], "movq [rdi], mm0 (MMX)"),
            (&[0x0F, 0xE7, 0x07], "movntq [rdi], mm0 (MMX)"),
            (&[0x0F, 0x7E, 0x07], "movd [rdi], mm0 (MMX)"),
            (&[0xF3, 0x0F, 0x7E, 0x07], "movq xmm0, [rdi] (a load)"),
            (&[0x0F, 0x10, 0x07], "movups xmm0, [rdi] (a load)"),
            (&[0x8B, 0x07], "mov eax, [rdi] (a load)"),
            (&[0xA3, 0, 0, 0, 0, 0, 0, 0, 0], "mov moffs, eax"),
            (&[0x50], "push rax"),
            (&[0xE8, 0, 0, 0, 0], "call"),
            (&[0xC7, 0x08, 1, 0, 0, 0], "C7 /1 (not a move)"),
            (&[0xC7, 0xF8, 0, 0, 0, 0], "xbegin"),
            (&[0xF3, 0x89, 0x07], "xrelease mov"),
            (&[0x66, 0x88, 0x07], "66 on a byte move"),
            (&[0x66, 0xF3, 0x0F, 0x7F, 0x07], "66 and F3 together"),
            (&[0xF2, 0xF3, 0x0F, 0x11, 0x07], "F2 and F3 together"),
            (&[0x0F, 0x38, 0xF1, 0x07], "movbe [rdi], eax"),
            (&[0x48, 0x0F, 0xAB, 0x07], "bts [rdi], rax"),
            (&[0x0F, 0x11, 0xC1], "movups xmm1, xmm0 (register)"),
        ] {
            assert_eq!(decode(code), None, "{what}: {code:02x?}");
        }
    }

    #[test]
    fn a_cut_off_instruction_never_decodes() {
        let full = [0x48, 0x89, 0x94, 0xC8, 0x78, 0x56, 0x34, 0x12];
        for n in 0..full.len() {
            assert_eq!(decode(&full[..n]), None, "{n} bytes");
        }
        let imm = [0x48, 0xC7, 0x00, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(decode(&imm[..6]), None, "immediate cut off");
        // Prefixes past 15 bytes: no instruction.
        let mut long = vec![0x66; 14];
        long.extend_from_slice(&[0x89, 0x07]);
        assert_eq!(decode(&long), None);
    }

    #[test]
    fn addresses_add_base_index_scale_and_displacement() {
        let regs = |n: u8| [0x1000u64, 0x10, 0, 0, 0, 0, 0, 0][n as usize % 8];
        // mov [rax+rcx*8+0x12345678], rdx
        let s = decode(&[0x48, 0x89, 0x94, 0xC8, 0x78, 0x56, 0x34, 0x12]).unwrap();
        assert_eq!(s.address(0, regs), 0x1000 + 0x80 + 0x1234_5678);
        // mov [rax-8], ecx: wraps as the CPU does
        let s = decode(&[0x89, 0x48, 0xF8]).unwrap();
        assert_eq!(s.address(0, |_| 4), 4u64.wrapping_sub(8));
    }
}
