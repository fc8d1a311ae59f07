//! A decoder for the x86_64 stores the `mprotect` backend performs itself
//! instead of opening a page (`emulate.rs`): the plain moves to memory a
//! compiler emits for a store, and the read-modify-writes of atomics,
//! locks and counters.
//!
//! Pure: bytes in, a [`Store`] (its length, the width written, the memory
//! operand, the other operand and what it does: [`Op`]) or `None` out;
//! the handler reads the registers. `None` is always safe: the store is
//! then stepped through as before. Decoded (64-bit mode, 64-bit
//! addressing), plain moves:
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
//! | `66 0F 3A 14`, `15`, `16`, `17` `/r ib` | `pextrb`, `pextrw`, `pextrd`/`pextrq` (`REX.W`), `extractps m, xmm, imm8`: element `imm8` | 1, 2, 4/8, 4 |
//!
//! and the same moves VEX- and EVEX-encoded (AVX, AVX2, AVX-512: 16, 32
//! or 64 bytes, EVEX under an opmask too), which glibc's `memcpy` and
//! `memset` use on CPUs that have them: see [`decode_vector`]; the
//! element and lane extracts to memory (`pextrb`/`w`/`d`/`q`,
//! `extractps`, `vextract*`), the part their immediate chooses: see
//! [`decode_extract`] (`66 0F 3A 14`..`17` without VEX in this table).
//!
//! Read-modify-writes, with or without `lock` (the handler performs every
//! one under its step lock, which makes it atomic: `rmw.rs` computes it),
//! 16/32/64 bits by `66` and `REX.W` where the width column says "wide":
//!
//! | bytes | instruction | width |
//! |---|---|---|
//! | `00`, `08`, `10`, `18`, `20`, `28`, `30` `/r` | `add`, `or`, `adc`, `sbb`, `and`, `sub`, `xor r/m8, r8` | 1 |
//! | `01`, `09`, `11`, `19`, `21`, `29`, `31` `/r` | the same, `r/m, r` | wide |
//! | `80 /0..6 ib`, `81 /0..6 iw/id`, `83 /0..6 ib` | the same from an immediate (`83`: sign-extended) | 1, wide, wide |
//! | `FE /0 /1`, `FF /0 /1` | `inc`, `dec` | 1, wide |
//! | `F6 /2 /3`, `F7 /2 /3` | `not`, `neg` | 1, wide |
//! | `86 /r`, `87 /r` | `xchg r/m, r` (locked without the prefix) | 1, wide |
//! | `0F C0 /r`, `0F C1 /r` | `xadd r/m, r` | 1, wide |
//! | `0F B0 /r`, `0F B1 /r` | `cmpxchg r/m, r` (accumulator implied) | 1, wide |
//! | `REX.W 0F C7 /1` | `cmpxchg16b m128` (16-aligned) | 16 |
//! | `0F AB`, `0F B3`, `0F BB` `/r`; `0F BA /5 /6 /7 ib` | `bts`, `btr`, `btc` from a register (signed bit offset, [`Store::bit_address`]) or an immediate | wide |
//!
//! Everything else is `None`: a register destination (`mod == 3`), `lock`
//! on a plain move (#UD, the step's to raise), what only reads its
//! operand (`cmp`, `test`, `bt`), other read-modify-writes (shifts and
//! rotates, `cmpxchg8b`), segment overrides (`fs`/`gs` bases are not in
//! the frame; the others are rare enough to step), the address-size
//! prefix, string instructions (`movs`, `stos`: `string.rs` performs those), `push`/`call`,
//! `mov moffs` (`A2`/`A3`), MMX stores, the VEX and EVEX forms
//! [`decode_vector`] refuses, and a `66`, `F2` or `F3` where the tables have none (so
//! `xacquire`/`xrelease` on a read-modify-write).

/// Where the value of a store comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A general register, by its number (0 = rax .. 15 = r15); `high8`
    /// for `ah`, `ch`, `dh`, `bh` (bits 8..16 of register `reg`).
    Gpr { reg: u8, high8: bool },
    /// An immediate, already sign-extended to 64 bits where the
    /// instruction does.
    Imm(u64),
    /// Bytes `offset..offset + width` of a vector register (0..=15 for
    /// the SSE and VEX forms, 0..=31 for EVEX; XMM, YMM or ZMM by the
    /// width).
    Xmm { reg: u8, offset: u8 },
    /// No operand but the memory one (`inc`, `dec`, `not`, `neg`) or only
    /// implicit registers (`cmpxchg16b`: rdx:rax and rcx:rbx).
    None,
}

/// The ALU group's operations that write their memory operand, in the
/// encoding's numbering (the `/digit` of `80`/`81`/`83`, bits 3..6 of
/// the `00`..`3F` opcodes); 7, `cmp`, only reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alu {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
}

impl Alu {
    /// The operation numbered `n` (0..=6), or `None` for `cmp` (7).
    fn of(n: u8) -> Option<Alu> {
        Some(match n {
            0 => Alu::Add,
            1 => Alu::Or,
            2 => Alu::Adc,
            3 => Alu::Sbb,
            4 => Alu::And,
            5 => Alu::Sub,
            6 => Alu::Xor,
            _ => return None,
        })
    }
}

/// What the instruction does to its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Stores `src` there (`mov`, `movnti`, the SSE moves): nothing read.
    Move,
    /// `mem = mem OP src`, flags set (`add`, `or`, `adc`, `sbb`, `and`,
    /// `sub`, `xor`, from a register or an immediate).
    Alu(Alu),
    /// `inc`, `dec` (flags but CF), `not` (no flags), `neg`.
    Inc,
    Dec,
    Not,
    Neg,
    /// `xadd`: `mem += src`, the register gets the old value, flags as `add`.
    Xadd,
    /// `xchg`: the register and memory swap, no flags.
    Xchg,
    /// `cmpxchg`: the accumulator (al/ax/eax/rax) compared with memory;
    /// equal, `mem = src`; else the accumulator gets memory. Flags as `cmp`.
    Cmpxchg,
    /// `cmpxchg16b`: rdx:rax compared with the 16 bytes; equal, they get
    /// rcx:rbx, else rdx:rax gets them. ZF only.
    Cmpxchg16b,
    /// `bts`, `btr`, `btc`: bit `src` set, cleared or flipped, CF the old
    /// bit. With a register, the bit offset is signed and selects the word
    /// too ([`Store::bit_address`]); with an immediate, it is taken modulo
    /// the width.
    Bts,
    Btr,
    Btc,
}

impl Op {
    /// Whether the instruction reads its memory operand before it writes
    /// it (everything but a plain move).
    pub(crate) fn reads(self) -> bool {
        self != Op::Move
    }
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
    /// Bytes written: 1, 2, 4, 8, 16, 32 or 64 (all of them, or those the
    /// mask selects).
    pub width: usize,
    /// The alignment the instruction demands of its address (the width
    /// for the aligned vector moves, 16 for `cmpxchg16b`, else 1): a
    /// misaligned one raises #GP, which the step then reproduces.
    pub align: usize,
    pub mem: Mem,
    pub src: Source,
    /// What it does with the memory operand.
    pub op: Op,
    /// An AVX-512 store under an opmask (`{k1}`..`{k7}`): only the
    /// elements whose bit is set are written (and only they may fault).
    pub mask: Option<Mask>,
}

/// The opmask of an EVEX store: register `k` (1..=7), one bit per
/// element of `elem` bytes, element 0 at the lowest address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mask {
    pub k: u8,
    pub elem: u8,
}

impl Mask {
    /// The bytes of a `width`-byte store that opmask value `bits` selects,
    /// a bit a byte (byte 0 lowest).
    pub(crate) fn bytes(self, bits: u64, width: usize) -> u64 {
        let elem = usize::from(self.elem);
        let mut out = 0u64;
        for e in 0..width / elem {
            if bits >> e & 1 != 0 {
                out |= (u64::MAX >> (64 - elem)) << (e * elem);
            }
        }
        out
    }
}

impl Store {
    /// The address written, from the instruction's address and a
    /// register file (`gpr(n)` for n = 0 (rax) .. 15 (r15)). For `bts`,
    /// `btr`, `btc` with a register offset, see [`Store::bit_address`].
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

    /// For `bts`/`btr`/`btc`: the address of the word holding the bit and
    /// the bit's number in it (below `8 * width`), from the operand's
    /// address and the offset (`src`'s value). A register offset is a
    /// signed number of bits from the operand's address, which may lie in
    /// another word (the SDM's bit base: `addr + width * (offset SAR
    /// log2(8 * width))`); an immediate is taken modulo the width.
    pub(crate) fn bit_address(&self, addr: u64, offset: u64) -> (u64, u32) {
        let bits = 8 * self.width as u32;
        match self.src {
            Source::Gpr { .. } => {
                // The register at the operand's width, sign-extended.
                let shift = 64 - bits;
                let off = ((offset << shift) as i64) >> shift;
                let word = off >> bits.trailing_zeros();
                (
                    addr.wrapping_add((word as u64).wrapping_mul(self.width as u64)),
                    (off as u64 & u64::from(bits - 1)) as u32,
                )
            }
            _ => (addr, (offset & u64::from(bits - 1)) as u32),
        }
    }
}

/// The longest x86 instruction.
pub(crate) const MAX_LEN: usize = 15;

/// Decodes the store at the start of `code` (the bytes at the faulting
/// RIP; fewer than [`MAX_LEN`] where the code ends), or `None` if it is
/// not one of the module's table.
pub(crate) fn decode(code: &[u8]) -> Option<Store> {
    let code = &code[..code.len().min(MAX_LEN)];
    // In 64-bit mode C4, C5 and 62 always begin a VEX or EVEX prefix; a
    // legacy prefix or REX in front of one is #UD (the step's to raise).
    if let Some(0xC4 | 0xC5 | 0x62) = code.first() {
        return decode_vector(code);
    }
    let mut i = 0;
    let mut opsize16 = false;
    let mut rep: Option<u8> = None;
    let mut lock = false;
    let mut rex = 0u8;
    loop {
        let b = *code.get(i)?;
        match b {
            0x66 => opsize16 = true,
            0xF0 => lock = true,
            0xF2 | 0xF3 => {
                if rep.is_some_and(|r| r != b) {
                    return None;
                }
                rep = Some(b);
            }
            // Segment overrides, address size.
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x67 => return None,
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
    // Where the operand other than memory comes from.
    enum Kind {
        Gpr,
        /// An immediate of n bytes, zero-extended (a byte store's, whose
        /// width is 1, or a 16-bit one) or sign-extended to 64 bits (4).
        Imm(usize),
        /// An 8-bit immediate sign-extended to 64 bits (`83`).
        Imm8Sx,
        Xmm(u8),
        /// Element `imm8` of an XMM register (the immediate after the
        /// memory operand), as wide as the store.
        XmmElement,
        None,
    }
    // The operand size of the 16/32/64-bit forms.
    let wide = if w {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    // An immediate as wide as the operand: imm16 with 66, else imm32
    // (sign-extended with REX.W).
    let imm_wide = if opsize16 && !w { 2 } else { 4 };
    let plain = !opsize16 && rep.is_none();
    // The ModRM reg field, which the group opcodes use as the operation.
    let reg_field = (*code.get(i + usize::from(op == 0x0F))? >> 3) & 7;
    let (width, align, kind, what) = match op {
        0x88 if plain => (1, 1, Kind::Gpr, Op::Move),
        0x89 if rep.is_none() => (wide, 1, Kind::Gpr, Op::Move),
        0xC6 if plain => (1, 1, Kind::Imm(1), Op::Move),
        0xC7 if rep.is_none() => (wide, 1, Kind::Imm(imm_wide), Op::Move),
        // The ALU group to memory: add, or, adc, sbb, and, sub, xor (not
        // cmp, which only reads); even opcodes bytes, odd ones wide.
        0x00..=0x3F if op & 7 < 2 && rep.is_none() => {
            let alu = Op::Alu(Alu::of(op >> 3)?);
            if op & 1 == 0 {
                (1, 1, Kind::Gpr, alu)
            } else {
                (wide, 1, Kind::Gpr, alu)
            }
        }
        0x80 if rep.is_none() => (1, 1, Kind::Imm(1), Op::Alu(Alu::of(reg_field)?)),
        0x81 if rep.is_none() => (wide, 1, Kind::Imm(imm_wide), Op::Alu(Alu::of(reg_field)?)),
        0x83 if rep.is_none() => (wide, 1, Kind::Imm8Sx, Op::Alu(Alu::of(reg_field)?)),
        0x86 if rep.is_none() => (1, 1, Kind::Gpr, Op::Xchg),
        0x87 if rep.is_none() => (wide, 1, Kind::Gpr, Op::Xchg),
        0xF6 | 0xF7 | 0xFE | 0xFF if rep.is_none() => {
            let what = match (op, reg_field) {
                (0xF6 | 0xF7, 2) => Op::Not,
                (0xF6 | 0xF7, 3) => Op::Neg,
                (0xFE | 0xFF, 0) => Op::Inc,
                (0xFE | 0xFF, 1) => Op::Dec,
                // test, mul, div; call, jmp, push: no store to decode.
                _ => return None,
            };
            (if op & 1 == 0 { 1 } else { wide }, 1, Kind::None, what)
        }
        0x0F => {
            let op2 = *code.get(i)?;
            i += 1;
            if opsize16 && rep.is_some() {
                return None;
            }
            let p66 = opsize16;
            match (op2, rep) {
                (0xC3, None) if !p66 => (if w { 8 } else { 4 }, 1, Kind::Gpr, Op::Move),
                (0x11, None) => (16, 1, Kind::Xmm(0), Op::Move),
                (0x11, Some(0xF3)) => (4, 1, Kind::Xmm(0), Op::Move),
                (0x11, Some(0xF2)) => (8, 1, Kind::Xmm(0), Op::Move),
                (0x29 | 0x2B, None) => (16, 16, Kind::Xmm(0), Op::Move),
                (0xE7, None) if p66 => (16, 16, Kind::Xmm(0), Op::Move),
                (0x7F, None) if p66 => (16, 16, Kind::Xmm(0), Op::Move),
                (0x7F, Some(0xF3)) => (16, 1, Kind::Xmm(0), Op::Move),
                (0xD6, None) if p66 => (8, 1, Kind::Xmm(0), Op::Move),
                (0x7E, None) if p66 => (if w { 8 } else { 4 }, 1, Kind::Xmm(0), Op::Move),
                // pextrb, pextrw, pextrd/q (REX.W), extractps to memory:
                // the element the immediate after the operand chooses.
                (0x3A, None) if p66 => {
                    let op3 = *code.get(i)?;
                    i += 1;
                    let width = match op3 {
                        0x14 => 1,
                        0x15 => 2,
                        0x16 if w => 8,
                        0x16 | 0x17 => 4,
                        _ => return None,
                    };
                    (width, 1, Kind::XmmElement, Op::Move)
                }
                (0x13, None) => (8, 1, Kind::Xmm(0), Op::Move),
                (0x17, None) => (8, 1, Kind::Xmm(8), Op::Move),
                (0xB0, None) => (1, 1, Kind::Gpr, Op::Cmpxchg),
                (0xB1, None) => (wide, 1, Kind::Gpr, Op::Cmpxchg),
                (0xC0, None) => (1, 1, Kind::Gpr, Op::Xadd),
                (0xC1, None) => (wide, 1, Kind::Gpr, Op::Xadd),
                (0xAB, None) => (wide, 1, Kind::Gpr, Op::Bts),
                (0xB3, None) => (wide, 1, Kind::Gpr, Op::Btr),
                (0xBB, None) => (wide, 1, Kind::Gpr, Op::Btc),
                (0xBA, None) => {
                    let what = match reg_field {
                        5 => Op::Bts,
                        6 => Op::Btr,
                        7 => Op::Btc,
                        // bt (4) only reads.
                        _ => return None,
                    };
                    (wide, 1, Kind::Imm(1), what)
                }
                // cmpxchg16b (REX.W; without it cmpxchg8b, not decoded).
                (0xC7, None) if w && !p66 && reg_field == 1 => (16, 16, Kind::None, Op::Cmpxchg16b),
                _ => return None,
            }
        }
        _ => return None,
    };
    // `lock` on a plain move raises #UD, which the step reproduces.
    if lock && !what.reads() {
        return None;
    }
    let modrm = *code.get(i)?;
    i += 1;
    let reg = (modrm >> 3) & 7;
    if modrm >> 6 == 3 {
        return None;
    }
    if what == Op::Move && matches!(kind, Kind::Imm(_)) && reg != 0 {
        return None;
    }
    let (mem, next) = memory_operand(code, i, modrm, x, bx, 1)?;
    i = next;
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
        Kind::Imm8Sx => {
            let b = *code.get(i)?;
            i += 1;
            Source::Imm(b as i8 as i64 as u64)
        }
        Kind::Xmm(offset) => Source::Xmm {
            reg: reg_full,
            offset,
        },
        Kind::XmmElement => {
            let imm = *code.get(i)?;
            i += 1;
            Source::Xmm {
                reg: reg_full,
                offset: imm.wrapping_mul(width as u8) % 16,
            }
        }
        Kind::None => Source::None,
    };
    Some(Store {
        len: i,
        width,
        align,
        mem,
        src,
        op: what,
        mask: None,
    })
}

/// The memory operand whose ModRM byte `modrm` was read just before
/// `code[i]` (where a SIB byte and the displacement follow), with REX's
/// (or VEX's, EVEX's) X and B bits; an 8-bit displacement is scaled by
/// `disp8_scale` (EVEX's compressed displacement; 1 elsewhere). Returns it
/// and the index past it; `mod == 3` (a register) is for the caller to
/// refuse.
fn memory_operand(
    code: &[u8],
    mut i: usize,
    modrm: u8,
    x: u8,
    bx: u8,
    disp8_scale: i64,
) -> Option<(Mem, usize)> {
    let md = modrm >> 6;
    let rm = modrm & 7;
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
        1 => i64::from(*code.get(i)? as i8) * disp8_scale,
        4 => i64::from(i32::from_le_bytes(code.get(i..i + 4)?.try_into().ok()?)),
        _ => 0,
    };
    Some((mem, i + disp_bytes))
}

/// A VEX (`C4`, `C5`: AVX, AVX2) or EVEX (`62`: AVX-512) vector move to
/// memory in map `0F`, or `None`. The same moves as the SSE table, 16, 32
/// or 64 bytes wide by VEX.L or EVEX.L'L, of XMM/YMM/ZMM 0..15 (VEX) or
/// 0..31 (EVEX):
///
/// | opcode (map 0F) | VEX | EVEX |
/// |---|---|---|
/// | `11` | `vmovups`, `vmovupd`; `vmovss`, `vmovsd` (F3, F2; L 0) | the same; masked by element (4 or 8 bytes) |
/// | `29` | `vmovaps`, `vmovapd` (aligned to the width) | the same; masked |
/// | `2B`, `66 E7` | `vmovntps`, `vmovntpd`, `vmovntdq` (aligned) | the same, unmasked |
/// | `66 7F`, `F3 7F` | `vmovdqa` (aligned), `vmovdqu` | `vmovdqa32`/`64`, `vmovdqu32`/`64` (by W), masked |
/// | `F2 7F` | — | `vmovdqu8`, `vmovdqu16` (by W), masked by byte or word |
/// | `66 D6`, `66 7E` | `vmovq m64`; `vmovd m32`, `vmovq m64` (W) (L 0) | the same, unmasked |
/// | `13`, `17` | `vmovlps`, `vmovlpd`, `vmovhps`, `vmovhpd m64` (L 0) | the same, unmasked |
///
/// EVEX's 8-bit displacement counts in units of the bytes the operand
/// spans (disp8 × N, N the width for these forms). Refused, for the step
/// to execute (or raise #UD as the CPU would): a register destination, a
/// `vvvv` other than 1111 (and EVEX's V'), EVEX broadcast or zeroing on a
/// store, L'L = 11, an opmask on a form that takes none, EVEX.W against
/// the form's element size, reserved EVEX bits set, another map
/// (`0F38`: `vmaskmov`, `vpmaskmov`, scatters; `0F3A`: `vextract*`),
/// and a scalar form with L set.
fn decode_vector(code: &[u8]) -> Option<Store> {
    let evex = code[0] == 0x62;
    // (R, X, B, R') as bits, map, W, vvvv (inverted), L (bytes), pp, aaa.
    let (r, x, bx, r2, map, w, vvvv_ok, vl, pp, aaa, mut i);
    if code[0] == 0xC5 {
        let p = *code.get(1)?;
        (r, x, bx, r2, map, w) = (!p >> 7 & 1, 0, 0, 0, 1, false);
        vvvv_ok = (p >> 3) & 0xF == 0xF;
        vl = if p & 4 != 0 { 32 } else { 16 };
        (pp, aaa, i) = (p & 3, 0, 2);
    } else if code[0] == 0xC4 {
        let (p0, p1) = (*code.get(1)?, *code.get(2)?);
        (r, x, bx, r2, map, w) = (
            !p0 >> 7 & 1,
            !p0 >> 6 & 1,
            !p0 >> 5 & 1,
            0,
            p0 & 0x1F,
            p1 & 0x80 != 0,
        );
        vvvv_ok = (p1 >> 3) & 0xF == 0xF;
        vl = if p1 & 4 != 0 { 32 } else { 16 };
        (pp, aaa, i) = (p1 & 3, 0, 3);
    } else {
        let (p0, p1, p2) = (*code.get(1)?, *code.get(2)?, *code.get(3)?);
        // P0: R X B R' 0 0 m m; P1: W vvvv 1 pp; P2: z L'L b V' aaa.
        if p0 & 0x0C != 0 || p1 & 4 == 0 || p2 & 0x80 != 0 || p2 & 0x10 != 0 {
            return None;
        }
        (r, x, bx, r2, map, w) = (
            !p0 >> 7 & 1,
            !p0 >> 6 & 1,
            !p0 >> 5 & 1,
            !p0 >> 4 & 1,
            p0 & 3,
            p1 & 0x80 != 0,
        );
        vvvv_ok = (p1 >> 3) & 0xF == 0xF && p2 & 8 != 0;
        vl = match (p2 >> 5) & 3 {
            0 => 16,
            1 => 32,
            2 => 64,
            _ => return None,
        };
        (pp, aaa, i) = (p1 & 3, p2 & 7, 4);
    }
    if !vvvv_ok {
        return None;
    }
    let op = *code.get(i)?;
    i += 1;
    if map == 3 {
        return decode_extract(code, i, op, (evex, w, vl, pp, aaa), (r, x, bx, r2));
    }
    if map != 1 {
        return None;
    }
    // (width, alignment, element size for a mask (0: the form takes
    // none), offset in the register).
    let scalar = |width: usize| (vl == 16).then_some((width, 1, 0, 0));
    let (width, align, elem, offset) = match (op, pp) {
        (0x11, 0) if !evex || !w => (vl, 1, 4, 0),
        (0x11, 1) if !evex || w => (vl, 1, 8, 0),
        (0x11, 2) if !evex || !w => (scalar(4)?.0, 1, 4, 0),
        (0x11, 3) if !evex || w => (scalar(8)?.0, 1, 8, 0),
        (0x29, 0) if !evex || !w => (vl, vl, 4, 0),
        (0x29, 1) if !evex || w => (vl, vl, 8, 0),
        (0x2B, 0) if !evex || !w => (vl, vl, 0, 0),
        (0x2B, 1) if !evex || w => (vl, vl, 0, 0),
        (0xE7, 1) if !evex || !w => (vl, vl, 0, 0),
        (0x7F, 1) => (vl, vl, if w { 8 } else { 4 }, 0),
        (0x7F, 2) => (vl, 1, if w { 8 } else { 4 }, 0),
        (0x7F, 3) if evex => (vl, 1, if w { 2 } else { 1 }, 0),
        (0xD6, 1) if !evex || w => scalar(8)?,
        (0x7E, 1) => scalar(if w { 8 } else { 4 })?,
        (0x13, 0) if !evex || !w => scalar(8)?,
        (0x13, 1) if !evex || w => scalar(8)?,
        (0x17, 0) if !evex || !w => (scalar(8)?.0, 1, 0, 8),
        (0x17, 1) if !evex || w => (scalar(8)?.0, 1, 0, 8),
        _ => return None,
    };
    // VEX forms take no mask; EVEX's aaa names one (0: none).
    let mask = match (evex, aaa) {
        (_, 0) => None,
        (true, k) if elem != 0 => Some(Mask { k, elem }),
        _ => return None,
    };
    let modrm = *code.get(i)?;
    i += 1;
    if modrm >> 6 == 3 {
        return None;
    }
    let scale = if evex { width as i64 } else { 1 };
    let (mem, next) = memory_operand(code, i, modrm, x, bx, scale)?;
    Some(Store {
        len: next,
        width,
        align,
        mem,
        src: Source::Xmm {
            reg: (modrm >> 3) & 7 | r << 3 | r2 << 4,
            offset,
        },
        op: Op::Move,
        mask,
    })
}

/// The lane and element extracts to memory in map `0F3A` (the ModRM byte
/// at `code[i]`, an 8-bit immediate choosing the part after the memory
/// operand), VEX- or EVEX-encoded (`prefix`: EVEX or not, W, the vector
/// length in bytes, pp, aaa; `regs`: R, X, B, R'), or `None`:
///
/// | opcode (66 0F3A) | instruction | width | part |
/// |---|---|---|---|
/// | `14`, `15` | `vpextrb`, `vpextrw m` (L 0) | 1, 2 | element `imm` of the XMM |
/// | `16` | `vpextrd`, `vpextrq m` (by W; L 0) | 4, 8 | the same |
/// | `17` | `vextractps m32` (L 0) | 4 | the same |
/// | `19`, `39` | VEX: `vextractf128`, `vextracti128` (L 1, W 0); EVEX: `vextractf32x4`/`64x2`, `vextracti32x4`/`64x2` (256 or 512 bits; masked) | 16 | 16-byte lane `imm` |
/// | `1B`, `3B` | EVEX: `vextractf32x8`/`64x4`, `vextracti32x8`/`64x4` (512 bits; masked) | 32 | 32-byte half `imm` |
///
/// (The SSE4.1 forms without VEX, `66 0F 3A 14`..`17`, go through
/// [`decode`]'s table.)
fn decode_extract(
    code: &[u8],
    mut i: usize,
    op: u8,
    (evex, w, vl, pp, aaa): (bool, bool, usize, u8, u8),
    (r, x, bx, r2): (u8, u8, u8, u8),
) -> Option<Store> {
    if pp != 1 {
        return None;
    }
    // (width, element size for a mask (0: none), the register's bytes the
    // immediate chooses a part of).
    let (width, elem, reg_bytes) = match op {
        0x14 if vl == 16 => (1, 0, 16),
        0x15 if vl == 16 => (2, 0, 16),
        0x16 if vl == 16 => (if w { 8 } else { 4 }, 0, 16),
        0x17 if vl == 16 => (4, 0, 16),
        0x19 | 0x39 if !evex && vl == 32 && !w => (16, 0, 32),
        0x19 | 0x39 if evex && vl >= 32 => (16, if w { 8 } else { 4 }, vl),
        0x1B | 0x3B if evex && vl == 64 => (32, if w { 8 } else { 4 }, 64),
        _ => return None,
    };
    let mask = match aaa {
        0 => None,
        k if evex && elem != 0 => Some(Mask { k, elem }),
        _ => return None,
    };
    let modrm = *code.get(i)?;
    i += 1;
    if modrm >> 6 == 3 {
        return None;
    }
    let scale = if evex { width as i64 } else { 1 };
    let (mem, next) = memory_operand(code, i, modrm, x, bx, scale)?;
    let imm = usize::from(*code.get(next)?);
    Some(Store {
        len: next + 1,
        width,
        align: 1,
        mem,
        src: Source::Xmm {
            reg: (modrm >> 3) & 7 | r << 3 | r2 << 4,
            offset: (imm * width % reg_bytes) as u8,
        },
        op: Op::Move,
        mask,
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
    const RDI: u8 = 7;
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
                src,
                op: Op::Move,
                mask: s.mask,
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
    fn vex_and_evex_moves_decode_with_width_register_mask_and_scaled_displacement() {
        let xmm = |reg, offset| Source::Xmm { reg, offset };
        let rdi = |disp| mem(Some(7), None, 1, disp);
        // Bytes as GNU as encodes them (Intel syntax in the comments).
        // vmovups [rdi], xmm1; vmovups [rdi+0x40], ymm9 (VEX.R);
        // vmovupd [rax+rcx*8-0x10], ymm3
        store(&[0xC5, 0xF8, 0x11, 0x0F], 16, rdi(0), xmm(1, 0));
        store(&[0xC5, 0x7C, 0x11, 0x4F, 0x40], 32, rdi(0x40), xmm(9, 0));
        store(
            &[0xC5, 0xFD, 0x11, 0x5C, 0xC8, 0xF0],
            32,
            mem(Some(RAX), Some(RCX), 8, -0x10),
            xmm(3, 0),
        );
        // vmovss [rdi+4], xmm2; vmovsd [rip+0x100], xmm12
        store(&[0xC5, 0xFA, 0x11, 0x57, 0x04], 4, rdi(4), xmm(2, 0));
        let rip = Mem {
            rip_relative: true,
            ..mem(None, None, 1, 0x100)
        };
        store(
            &[0xC5, 0x7B, 0x11, 0x25, 0x00, 0x01, 0x00, 0x00],
            8,
            rip,
            xmm(12, 0),
        );
        // vmovdqu [r13+0], ymm7 (three-byte VEX, VEX.B); vmovq [rdi], xmm3;
        // vmovd [rdi+8], xmm4; vmovhps [rdi], xmm6 (its upper half)
        store(
            &[0xC4, 0xC1, 0x7E, 0x7F, 0x7D, 0x00],
            32,
            mem(Some(R13), None, 1, 0),
            xmm(7, 0),
        );
        store(&[0xC5, 0xF9, 0xD6, 0x1F], 8, rdi(0), xmm(3, 0));
        store(&[0xC5, 0xF9, 0x7E, 0x67, 0x08], 4, rdi(8), xmm(4, 0));
        store(&[0xC5, 0xF8, 0x17, 0x37], 8, rdi(0), xmm(6, 8));
        // EVEX: disp8 counts in units of the operand's bytes.
        // vmovdqu64 [rdi+0x40], zmm16; [rdi-0x40], ymm16; vmovups
        // [rdi+0x10], xmm20; vmovq [rdi+8], xmm18; vmovdqa64
        // [r12+0x100], zmm25 (disp32: 0x100 is no multiple of 64 in 8 bits)
        store(
            &[0x62, 0xE1, 0xFE, 0x48, 0x7F, 0x47, 0x01],
            64,
            rdi(0x40),
            xmm(16, 0),
        );
        store(
            &[0x62, 0xE1, 0xFE, 0x28, 0x7F, 0x47, 0xFE],
            32,
            rdi(-0x40),
            xmm(16, 0),
        );
        store(
            &[0x62, 0xE1, 0x7C, 0x08, 0x11, 0x67, 0x01],
            16,
            rdi(0x10),
            xmm(20, 0),
        );
        store(
            &[0x62, 0xE1, 0xFD, 0x08, 0x7E, 0x57, 0x01],
            8,
            rdi(8),
            xmm(18, 0),
        );
        store(
            &[0x62, 0x41, 0xFD, 0x48, 0x7F, 0x4C, 0x24, 0x04],
            64,
            mem(Some(R12), None, 1, 0x100),
            xmm(25, 0),
        );
        // Masked: the opmask and the element size it counts in.
        for (code, width, (base, disp), reg, k, elem) in [
            // vmovdqu8 [rax]{k1}, zmm16
            (
                &[0x62, 0xE1, 0x7F, 0x49, 0x7F, 0x00][..],
                64,
                (RAX, 0),
                16,
                1,
                1,
            ),
            // vmovdqu16 [rax+0x20]{k2}, ymm17
            (
                &[0x62, 0xE1, 0xFF, 0x2A, 0x7F, 0x48, 0x01],
                32,
                (RAX, 0x20),
                17,
                2,
                2,
            ),
            // vmovdqu32 [rdi+0x80]{k3}, zmm31
            (
                &[0x62, 0x61, 0x7E, 0x4B, 0x7F, 0x7F, 0x02],
                64,
                (RDI, 0x80),
                31,
                3,
                4,
            ),
            // vmovaps [rdi+0x40]{k7}, zmm2 (aligned)
            (
                &[0x62, 0xF1, 0x7C, 0x4F, 0x29, 0x57, 0x01],
                64,
                (RDI, 0x40),
                2,
                7,
                4,
            ),
            // vmovss [rdi+8]{k1}, xmm19
            (
                &[0x62, 0xE1, 0x7E, 0x09, 0x11, 0x5F, 0x02],
                4,
                (RDI, 8),
                19,
                1,
                4,
            ),
        ] {
            store(code, width, mem(Some(base), None, 1, disp), xmm(reg, 0));
            assert_eq!(
                decode(code).unwrap().mask,
                Some(Mask { k, elem }),
                "{code:02x?}"
            );
        }
        // Aligned to their width: vmovaps ymm, vmovntdq ymm, vmovdqa xmm
        // (VEX); vmovntdq zmm (EVEX). vmovups is not.
        for (code, align) in [
            (&[0xC5, 0xFC, 0x29, 0x07][..], 32),
            (&[0xC5, 0xFD, 0xE7, 0x2E], 32),
            (&[0xC5, 0x79, 0x7F, 0x7F, 0x20], 16),
            (&[0x62, 0xF1, 0x7D, 0x48, 0xE7, 0x4F, 0x01], 64),
            (&[0xC5, 0x7C, 0x11, 0x4F, 0x40], 1),
        ] {
            assert_eq!(decode(code).map(|s| s.align), Some(align), "{code:02x?}");
        }
        // An opmask selects whole elements, element 0 lowest.
        let m = Mask { k: 1, elem: 4 };
        assert_eq!(m.bytes(0b101, 16), 0x0F0F);
        assert_eq!(Mask { k: 1, elem: 1 }.bytes(u64::MAX, 64), u64::MAX);
        assert_eq!(Mask { k: 1, elem: 8 }.bytes(0b1000_0000, 64), 0xFF << 56);
        assert_eq!(Mask { k: 1, elem: 2 }.bytes(0xFFFF_0000, 32), 0);
    }

    #[test]
    fn extracts_take_the_element_or_lane_their_immediate_chooses() {
        let xmm = |reg, offset| Source::Xmm { reg, offset };
        let rdi = |disp| mem(Some(RDI), None, 1, disp);
        // SSE4.1: pextrb [rdi+5], xmm1, 13; pextrw [rdi], xmm2, 3; pextrd
        // [rdi], xmm3, 2; pextrq [rdi], xmm9, 1 (REX.W, REX.R);
        // extractps [rdi], xmm4, 3
        store(
            &[0x66, 0x0F, 0x3A, 0x14, 0x4F, 0x05, 0x0D],
            1,
            rdi(5),
            xmm(1, 13),
        );
        store(&[0x66, 0x0F, 0x3A, 0x15, 0x17, 0x03], 2, rdi(0), xmm(2, 6));
        store(&[0x66, 0x0F, 0x3A, 0x16, 0x1F, 0x02], 4, rdi(0), xmm(3, 8));
        store(
            &[0x66, 0x4C, 0x0F, 0x3A, 0x16, 0x0F, 0x01],
            8,
            rdi(0),
            xmm(9, 8),
        );
        store(&[0x66, 0x0F, 0x3A, 0x17, 0x27, 0x03], 4, rdi(0), xmm(4, 12));
        // VEX: vextractf128 [rdi+0x10], ymm9, 1; vextracti128 [rdi], ymm0,
        // 0; vpextrb [rdi], xmm1, 7; vpextrq [rdi], xmm1, 1
        store(
            &[0xC4, 0x63, 0x7D, 0x19, 0x4F, 0x10, 0x01],
            16,
            rdi(0x10),
            xmm(9, 16),
        );
        store(&[0xC4, 0xE3, 0x7D, 0x39, 0x07, 0x00], 16, rdi(0), xmm(0, 0));
        store(&[0xC4, 0xE3, 0x79, 0x14, 0x0F, 0x07], 1, rdi(0), xmm(1, 7));
        store(&[0xC4, 0xE3, 0xF9, 0x16, 0x0F, 0x01], 8, rdi(0), xmm(1, 8));
        // EVEX: vextractf32x4 [rdi+0x20]{k1}, zmm16, 3 (disp8 x 16);
        // vextracti64x4 [rdi+0x40], zmm31, 1 (x 32); vpextrq [rdi+8],
        // xmm20, 1 (x 8)
        store(
            &[0x62, 0xE3, 0x7D, 0x49, 0x19, 0x47, 0x02, 0x03],
            16,
            rdi(0x20),
            xmm(16, 48),
        );
        assert_eq!(
            decode(&[0x62, 0xE3, 0x7D, 0x49, 0x19, 0x47, 0x02, 0x03])
                .unwrap()
                .mask,
            Some(Mask { k: 1, elem: 4 })
        );
        store(
            &[0x62, 0x63, 0xFD, 0x48, 0x3B, 0x7F, 0x02, 0x01],
            32,
            rdi(0x40),
            xmm(31, 32),
        );
        store(
            &[0x62, 0xE3, 0xFD, 0x08, 0x16, 0x67, 0x01, 0x01],
            8,
            rdi(8),
            xmm(20, 8),
        );
        // The immediate wraps within the register: pextrb's 0x1D is 13,
        // vextractf128's 3 is lane 1.
        store(
            &[0x66, 0x0F, 0x3A, 0x14, 0x4F, 0x05, 0x1D],
            1,
            rdi(5),
            xmm(1, 13),
        );
        store(
            &[0xC4, 0xE3, 0x7D, 0x19, 0x0F, 0x03],
            16,
            rdi(0),
            xmm(1, 16),
        );
    }

    #[test]
    fn vector_forms_the_cpu_would_refuse_or_that_do_more_are_stepped() {
        for (code, what) in [
            (
                &[0xC5, 0xF8, 0x11, 0xC1][..],
                "vmovups xmm1, xmm0 (register)",
            ),
            (&[0xC5, 0xF0, 0x11, 0x07], "vmovups with vvvv != 1111 (#UD)"),
            (&[0x66, 0xC5, 0xF8, 0x11, 0x07], "66 before VEX (#UD)"),
            (&[0x48, 0xC5, 0xF8, 0x11, 0x07], "REX before VEX (#UD)"),
            (&[0xC5, 0xF8, 0x10, 0x07], "vmovups xmm0, [rdi] (a load)"),
            (&[0xC5, 0xFE, 0x11, 0x07], "vmovss with L = 1"),
            (&[0xC5, 0xFD, 0xD6, 0x07], "vmovq with L = 1 (#UD)"),
            (&[0xC5, 0xFF, 0x7F, 0x07], "VEX F2 7F (no such move)"),
            (&[0xC4, 0xE2, 0x79, 0x2E, 0x07], "vmaskmovps (map 0F38)"),
            (
                &[0x62, 0xF1, 0xFE, 0xC8, 0x7F, 0x07],
                "EVEX zeroing on a store (#UD)",
            ),
            (
                &[0x62, 0xF1, 0xFE, 0x58, 0x7F, 0x07],
                "EVEX broadcast on a store",
            ),
            (&[0x62, 0xF1, 0xFE, 0x68, 0x7F, 0x07], "EVEX L'L = 11 (#UD)"),
            (&[0x62, 0xF1, 0xFE, 0x40, 0x7F, 0x07], "EVEX V' = 0 (#UD)"),
            (&[0x62, 0xF5, 0xFE, 0x48, 0x7F, 0x07], "EVEX map 5"),
            (
                &[0x62, 0xF9, 0xFE, 0x48, 0x7F, 0x07],
                "EVEX reserved bit set",
            ),
            (
                &[0x62, 0xF1, 0xFE, 0x4A, 0xE7, 0x07],
                "vmovntdq with a mask (#UD)",
            ),
            (
                &[0x62, 0xF1, 0xFC, 0x48, 0x11, 0x07],
                "vmovups with W1 (#UD)",
            ),
            (
                &[0x62, 0xF1, 0x7D, 0x48, 0x11, 0x07],
                "vmovupd with W0 (#UD)",
            ),
            (
                &[0x62, 0xF2, 0x7D, 0x49, 0xA0, 0x04, 0x07],
                "vpscatterdd (map 0F38)",
            ),
            (
                &[0xC4, 0xE3, 0x7D, 0x14, 0x0F, 0x07],
                "vpextrb with L = 1 (#UD)",
            ),
            (
                &[0xC4, 0xE3, 0x79, 0x19, 0x0F, 0x01],
                "vextractf128 with L = 0 (#UD)",
            ),
            (
                &[0xC4, 0xE3, 0x7C, 0x19, 0x0F, 0x01],
                "vextractf128 without 66",
            ),
            (
                &[0x66, 0x0F, 0x3A, 0x14, 0xC8, 0x01],
                "pextrb eax, xmm1, 1 (register)",
            ),
            (&[0x66, 0x0F, 0x3A, 0x20, 0x07, 0x01], "pinsrb (a load)"),
            (&[0x0F, 0x3A, 0x14, 0x07, 0x01], "0F 3A 14 without 66"),
            (
                &[0x62, 0xE3, 0x7D, 0x09, 0x14, 0x07, 0x01],
                "vpextrb with a mask (#UD)",
            ),
            (
                &[0x62, 0x63, 0xFD, 0x28, 0x3B, 0x3F, 0x01],
                "vextracti64x4 of 256 bits (#UD)",
            ),
        ] {
            assert_eq!(decode(code), None, "{what}: {code:02x?}");
        }
    }

    #[test]
    fn everything_else_falls_back_to_the_step() {
        for (code, what) in [
            (&[0x89, 0xC8][..], "mov eax, ecx (register destination)"),
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
            (&[0x0F, 0x11, 0xC1], "movups xmm1, xmm0 (register)"),
            (
                &[0xF0, 0x48, 0x89, 0x07],
                "lock mov (#UD, the step's to raise)",
            ),
            (&[0xF0, 0x0F, 0x11, 0x07], "lock movups (#UD)"),
            (&[0x48, 0x39, 0x07], "cmp [rdi], rax (reads only)"),
            (&[0x48, 0x83, 0x3F, 0x01], "cmp qword [rdi], 1 (83 /7)"),
            (&[0x80, 0x3F, 0x01], "cmp byte [rdi], 1 (80 /7)"),
            (&[0x48, 0x85, 0x07], "test [rdi], rax"),
            (&[0xF6, 0x07, 0x01], "test byte [rdi], 1 (F6 /0)"),
            (&[0x48, 0xF7, 0x27], "mul qword [rdi] (F7 /4)"),
            (&[0x48, 0xFF, 0x17], "call [rdi] (FF /2)"),
            (&[0xFF, 0x37], "push [rdi] (FF /6)"),
            (&[0x48, 0x0F, 0xA3, 0x07], "bt [rdi], rax (reads only)"),
            (
                &[0x48, 0x0F, 0xBA, 0x27, 0x05],
                "bt qword [rdi], 5 (0F BA /4)",
            ),
            (&[0x0F, 0xC7, 0x0F], "cmpxchg8b [rdi]"),
            (&[0x66, 0x48, 0x0F, 0xC7, 0x0F], "66 on cmpxchg16b"),
            (&[0x48, 0xD1, 0x27], "shl qword [rdi], 1"),
            (&[0x48, 0x01, 0xC7], "add rdi, rax (register destination)"),
            (&[0xF0, 0x48, 0x01, 0xC7], "lock add rdi, rax (#UD)"),
            (&[0xF2, 0xF0, 0x48, 0x0F, 0xC1, 0x07], "xacquire lock xadd"),
            (&[0xF3, 0x48, 0x87, 0x07], "xrelease xchg"),
            (&[0x64, 0xF0, 0x48, 0xFF, 0x07], "lock inc fs:[rdi]"),
            (&[0x48, 0x13, 0x07], "adc rax, [rdi] (a load)"),
        ] {
            assert_eq!(decode(code), None, "{what}: {code:02x?}");
        }
    }

    #[track_caller]
    fn rmw(code: &[u8], op: Op, width: usize, mem: Mem, src: Source) {
        let s = decode(code).unwrap_or_else(|| panic!("{code:02x?} not decoded"));
        assert_eq!(
            (s.len, s.op, s.width, s.mem, s.src),
            (code.len(), op, width, mem, src),
            "{code:02x?}"
        );
        let mut longer = code.to_vec();
        longer.extend_from_slice(&[0x90; 8]);
        assert_eq!(decode(&longer), Some(s), "{code:02x?} followed by nops");
        // A lock prefix changes nothing (the handler's lock makes any of
        // them atomic), before or after 66.
        let mut locked = vec![0xF0];
        locked.extend_from_slice(code);
        let l = decode(&locked).unwrap_or_else(|| panic!("lock {code:02x?} not decoded"));
        assert_eq!(
            (l.len, l.op, l.width, l.mem, l.src),
            (code.len() + 1, op, width, mem, src)
        );
    }

    #[test]
    fn read_modify_writes_decode_with_their_operation_width_and_operands() {
        let at_rdi = mem(Some(7), None, 1, 0);
        // lock xadd [rdi], rax / eax / ax / cl
        rmw(&[0x48, 0x0F, 0xC1, 0x07], Op::Xadd, 8, at_rdi, gpr(RAX));
        rmw(&[0x0F, 0xC1, 0x07], Op::Xadd, 4, at_rdi, gpr(RAX));
        rmw(&[0x66, 0x0F, 0xC1, 0x07], Op::Xadd, 2, at_rdi, gpr(RAX));
        rmw(&[0x0F, 0xC0, 0x0F], Op::Xadd, 1, at_rdi, gpr(RCX));
        // xadd [rdi], ah (no REX: bits 8..16 of rax); with REX, spl
        rmw(
            &[0x0F, 0xC0, 0x27],
            Op::Xadd,
            1,
            at_rdi,
            Source::Gpr {
                reg: RAX,
                high8: true,
            },
        );
        rmw(&[0x40, 0x0F, 0xC0, 0x27], Op::Xadd, 1, at_rdi, gpr(RSP));
        // xadd [r12+rcx*8+0x10], r15 (REX.WRXB... R and B)
        rmw(
            &[0x4D, 0x0F, 0xC1, 0x7C, 0xCC, 0x10],
            Op::Xadd,
            8,
            mem(Some(R12), Some(RCX), 8, 0x10),
            gpr(R15),
        );
        // The ALU group from registers: add, or, adc, sbb, and, sub, xor
        for (n, alu) in [
            Alu::Add,
            Alu::Or,
            Alu::Adc,
            Alu::Sbb,
            Alu::And,
            Alu::Sub,
            Alu::Xor,
        ]
        .into_iter()
        .enumerate()
        {
            let op = 8 * n as u8;
            rmw(&[op, 0x0F], Op::Alu(alu), 1, at_rdi, gpr(RCX));
            rmw(&[0x48, op + 1, 0x0F], Op::Alu(alu), 8, at_rdi, gpr(RCX));
            rmw(&[0x66, op + 1, 0x0F], Op::Alu(alu), 2, at_rdi, gpr(RCX));
            // 80 /n ib, 81 /n id (sign-extended under REX.W) and iw, 83 /n ib
            let modrm = 0x07 | ((n as u8) << 3);
            rmw(
                &[0x80, modrm, 0xF0],
                Op::Alu(alu),
                1,
                at_rdi,
                Source::Imm(0xF0),
            );
            rmw(
                &[0x48, 0x81, modrm, 0, 0, 0, 0x80],
                Op::Alu(alu),
                8,
                at_rdi,
                Source::Imm(0xFFFF_FFFF_8000_0000),
            );
            rmw(
                &[0x66, 0x81, modrm, 0x34, 0x12],
                Op::Alu(alu),
                2,
                at_rdi,
                Source::Imm(0x1234),
            );
            rmw(
                &[0x83, modrm, 0xFF],
                Op::Alu(alu),
                4,
                at_rdi,
                Source::Imm(u64::MAX),
            );
        }
        // inc, dec, not, neg: FE/FF /0 /1, F6/F7 /2 /3
        rmw(&[0x48, 0xFF, 0x07], Op::Inc, 8, at_rdi, Source::None);
        rmw(&[0xFF, 0x0F], Op::Dec, 4, at_rdi, Source::None);
        rmw(&[0xFE, 0x07], Op::Inc, 1, at_rdi, Source::None);
        rmw(&[0x66, 0xFF, 0x0F], Op::Dec, 2, at_rdi, Source::None);
        rmw(&[0xF6, 0x17], Op::Not, 1, at_rdi, Source::None);
        rmw(&[0x48, 0xF7, 0x1F], Op::Neg, 8, at_rdi, Source::None);
        // xchg [rdi], rax; xchg [rdi], dl
        rmw(&[0x48, 0x87, 0x07], Op::Xchg, 8, at_rdi, gpr(RAX));
        rmw(&[0x86, 0x17], Op::Xchg, 1, at_rdi, gpr(RDX));
        // lock cmpxchg [rdi], rcx / cl; cmpxchg16b [rdi] (16-aligned)
        rmw(&[0x48, 0x0F, 0xB1, 0x0F], Op::Cmpxchg, 8, at_rdi, gpr(RCX));
        rmw(&[0x0F, 0xB0, 0x0F], Op::Cmpxchg, 1, at_rdi, gpr(RCX));
        rmw(
            &[0x48, 0x0F, 0xC7, 0x0F],
            Op::Cmpxchg16b,
            16,
            at_rdi,
            Source::None,
        );
        assert_eq!(decode(&[0x48, 0x0F, 0xC7, 0x0F]).unwrap().align, 16);
        // bts/btr/btc from a register and an immediate
        rmw(&[0x48, 0x0F, 0xAB, 0x07], Op::Bts, 8, at_rdi, gpr(RAX));
        rmw(&[0x0F, 0xB3, 0x07], Op::Btr, 4, at_rdi, gpr(RAX));
        rmw(&[0x66, 0x0F, 0xBB, 0x07], Op::Btc, 2, at_rdi, gpr(RAX));
        rmw(
            &[0x48, 0x0F, 0xBA, 0x2F, 0x3F],
            Op::Bts,
            8,
            at_rdi,
            Source::Imm(0x3F),
        );
        rmw(
            &[0x0F, 0xBA, 0x37, 0x05],
            Op::Btr,
            4,
            at_rdi,
            Source::Imm(5),
        );
        rmw(
            &[0x0F, 0xBA, 0x3F, 0x05],
            Op::Btc,
            4,
            at_rdi,
            Source::Imm(5),
        );
    }

    #[test]
    fn read_modify_writes_take_every_addressing_form() {
        // lock add qword [rip+0x100], 1 (83 /0 ib): the immediate follows
        // the displacement, the address counts from after it.
        let code = [0xF0, 0x48, 0x83, 0x05, 0x00, 0x01, 0, 0, 0x01];
        let s = decode(&code).unwrap();
        assert_eq!((s.op, s.len, s.src), (Op::Alu(Alu::Add), 9, Source::Imm(1)));
        assert_eq!(s.address(0x1000, |_| unreachable!()), 0x1000 + 9 + 0x100);
        // lock inc dword [rip-4]
        let s = decode(&[0xF0, 0xFF, 0x05, 0xFC, 0xFF, 0xFF, 0xFF]).unwrap();
        assert_eq!((s.op, s.width), (Op::Inc, 4));
        assert_eq!(s.address(0x2000, |_| 0), 0x2000 + 7 - 4);
        // lock or dword [rsp+disp8], 0 (the full fence compilers emit)
        rmw(
            &[0x83, 0x4C, 0x24, 0xF0, 0x00],
            Op::Alu(Alu::Or),
            4,
            mem(Some(RSP), None, 1, -16),
            Source::Imm(0),
        );
        // add [r13+0], rax (mod 1 base 5: r13, not RIP); sub [rbx+disp32], r8
        rmw(
            &[0x49, 0x01, 0x45, 0x00],
            Op::Alu(Alu::Add),
            8,
            mem(Some(R13), None, 1, 0),
            gpr(RAX),
        );
        rmw(
            &[0x4C, 0x29, 0x83, 0x78, 0x56, 0x34, 0x12],
            Op::Alu(Alu::Sub),
            8,
            mem(Some(RBX), None, 1, 0x1234_5678),
            gpr(R8),
        );
        // xor byte [rax*2+0x40], 7 (no base)
        rmw(
            &[0x80, 0x34, 0x45, 0x40, 0, 0, 0, 0x07],
            Op::Alu(Alu::Xor),
            1,
            mem(None, Some(RAX), 2, 0x40),
            Source::Imm(7),
        );
        // The 66 prefix after lock, as compilers order them.
        let s = decode(&[0xF0, 0x66, 0x0F, 0xC1, 0x07]).unwrap();
        assert_eq!((s.op, s.width, s.len), (Op::Xadd, 2, 5));
        // A cut-off read-modify-write never decodes.
        let full = [
            0xF0, 0x48, 0x81, 0x84, 0xC8, 0x78, 0x56, 0x34, 0x12, 1, 0, 0, 0,
        ];
        assert!(decode(&full).is_some());
        for n in 0..full.len() {
            assert_eq!(decode(&full[..n]), None, "{n} bytes");
        }
    }

    #[test]
    fn a_bit_offset_in_a_register_selects_the_word_and_an_immediate_wraps() {
        let s = decode(&[0x48, 0x0F, 0xAB, 0x07]).unwrap(); // bts [rdi], rax
        assert_eq!(s.bit_address(0x1000, 5), (0x1000, 5));
        assert_eq!(s.bit_address(0x1000, 64 + 3), (0x1008, 3));
        assert_eq!(s.bit_address(0x1000, (-1i64) as u64), (0xFF8, 63));
        let s = decode(&[0x66, 0x0F, 0xAB, 0x07]).unwrap(); // bts [rdi], ax
                                                            // The register at the operand's width: 0xFFFF is -1 for a word.
        assert_eq!(s.bit_address(0x1000, 0x1_FFFF), (0xFFE, 15));
        assert_eq!(s.bit_address(0x1000, 33), (0x1004, 1));
        let s = decode(&[0x0F, 0xBA, 0x2F, 0x25]).unwrap(); // bts dword [rdi], 37
        assert_eq!(s.bit_address(0x1000, 37), (0x1000, 5));
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
