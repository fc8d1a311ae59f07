//! Computing a read-modify-write for the interrupted code, exactly as the
//! CPU computes it: the same instruction, run here on a copy.
//!
//! The `mprotect` backend performs a decoded read-modify-write (`lock
//! xadd`, `lock inc`, `xchg`, `lock cmpxchg`, `add [mem], r`, ...) without
//! opening its page (`emulate.rs`): under the step lock it reads the
//! operand, computes the new value, the registers the instruction writes
//! and its flags, writes the bytes through `/proc/self/mem` and moves the
//! interrupted code past the instruction. This module is the middle step.
//!
//! Exact by construction rather than by a model: each operation runs the
//! same instruction (same mnemonic, same operand size, a memory operand)
//! on a copy of the operand in this handler's stack, with a copy of the
//! interrupted code's register operand, after `popfq` has loaded the
//! interrupted code's arithmetic flags (CF, PF, AF, ZF, SF, OF: `adc` and
//! `sbb` read CF, and `inc`, `dec`, `bts`, ... leave some flags as they
//! were), and `pushfq` reads the flags back. What the instruction leaves
//! in its register (`xadd`'s old value, `xchg`'s, `cmpxchg`'s accumulator
//! on failure, with the zero-extension of a 32-bit write and the
//! untouched upper bytes of an 8- or 16-bit one) is what this CPU does, in
//! the flags it leaves "undefined" too. The one change: a `bts`/`btr`/`btc`
//! offset is reduced to the bit inside its word first (the caller has
//! found the word, `decode::Store::bit_address`), so the copy's
//! instruction never reaches past the copy. `lock` is left out: the copy
//! is this thread's own, and the caller's step lock is what makes the
//! operation atomic against every other store to a frozen page (each one
//! faults and is performed or stepped under that lock).
//!
//! `cmpxchg16b` (ZF only, and no general register is free for `rbx` in
//! inline assembly) is computed without running it.
//!
//! Async-signal-safe: no call, no allocation, registers and this stack.

use core::arch::asm;

use super::decode::{Alu, Op};

/// The arithmetic flags of RFLAGS: CF, PF, AF, ZF, SF, OF.
pub(crate) const ARITH_FLAGS: u64 = 0x8D5;
/// ZF.
const ZF: u64 = 0x40;

/// The operands of a read-modify-write, before and after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operands {
    /// The memory operand: its low `width` bytes (both words for
    /// `cmpxchg16b`), zero above.
    pub mem: [u64; 2],
    /// The register operand, the whole 64-bit register (for `bts`/`btr`/
    /// `btc`, the bit's number in its word; an immediate's value for the
    /// immediate forms, which is run as a register of that value: the same
    /// operation, the same flags).
    pub src: u64,
    /// rax (`cmpxchg`'s accumulator, `cmpxchg16b`'s low compare word).
    pub rax: u64,
    /// rdx, rbx, rcx (`cmpxchg16b` only).
    pub rdx: u64,
    pub rbx: u64,
    pub rcx: u64,
    /// RFLAGS; only [`ARITH_FLAGS`] are read and written.
    pub flags: u64,
}

/// Runs `ins ptr [m], s` (one operand size) on the copy, the flags in
/// and out.
macro_rules! binary {
    ($ins:literal, $ptr:literal, $s:literal, $o:ident) => {{
        let mut m = $o.mem;
        let mut s = $o.src;
        let mut f = flags_in($o.flags);
        // SAFETY: `m` is a local array of 16 bytes and the instruction
        // reads and writes its first `width` bytes only; `popfq` loads
        // this code's own flags with the arithmetic ones replaced (DF
        // stays clear, TF clear), `pushfq` and the `pop` restore the stack.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($ins, " ", $ptr, " ptr [{m}], {s:", $s, "}"),
                "pushfq",
                "pop {f}",
                m = in(reg) m.as_mut_ptr(),
                s = inout(reg) s,
                f = inout(reg) f,
            );
        }
        $o.mem = m;
        $o.src = s;
        $o.flags = f;
    }};
}

/// Runs `ins ptr [m]` (one operand size) on the copy, the flags in and out.
macro_rules! unary {
    ($ins:literal, $ptr:literal, $o:ident) => {{
        let mut m = $o.mem;
        let mut f = flags_in($o.flags);
        // SAFETY: as in `binary!`.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!($ins, " ", $ptr, " ptr [{m}]"),
                "pushfq",
                "pop {f}",
                m = in(reg) m.as_mut_ptr(),
                f = inout(reg) f,
            );
        }
        $o.mem = m;
        $o.flags = f;
    }};
}

/// `cmpxchg ptr [m], s` (one operand size) with rax, the flags in and out.
macro_rules! cmpxchg {
    ($ptr:literal, $s:literal, $o:ident) => {{
        let mut m = $o.mem;
        let mut f = flags_in($o.flags);
        let mut a = $o.rax;
        // SAFETY: as in `binary!`.
        unsafe {
            asm!(
                "push {f}",
                "popfq",
                concat!("cmpxchg ", $ptr, " ptr [{m}], {s:", $s, "}"),
                "pushfq",
                "pop {f}",
                m = in(reg) m.as_mut_ptr(),
                s = in(reg) $o.src,
                f = inout(reg) f,
                inout("rax") a,
            );
        }
        $o.mem = m;
        $o.rax = a;
        $o.flags = f;
    }};
}

/// Dispatches on the operand size: `$m!(args, "byte", "l", o)` and so on.
macro_rules! sized {
    ($width:expr, $m:ident, $o:ident $(, $ins:literal)?) => {
        match $width {
            1 => $m!($($ins,)? "byte", "l", $o),
            2 => $m!($($ins,)? "word", "x", $o),
            4 => $m!($($ins,)? "dword", "e", $o),
            _ => $m!($($ins,)? "qword", "r", $o),
        }
    };
}

/// The same without the byte size (`bts`, `btr`, `btc` have none).
macro_rules! sized_wide {
    ($width:expr, $ins:literal, $o:ident) => {
        match $width {
            2 => binary!($ins, "word", "x", $o),
            4 => binary!($ins, "dword", "e", $o),
            _ => binary!($ins, "qword", "r", $o),
        }
    };
}

/// The same, for the one-operand forms.
macro_rules! sized_unary {
    ($width:expr, $ins:literal, $o:ident) => {
        match $width {
            1 => unary!($ins, "byte", $o),
            2 => unary!($ins, "word", $o),
            4 => unary!($ins, "dword", $o),
            _ => unary!($ins, "qword", $o),
        }
    };
}

/// This code's RFLAGS with the arithmetic flags of `flags`: what `popfq`
/// loads before the operation (DF, TF, AC and the rest stay this
/// handler's own).
fn flags_in(flags: u64) -> u64 {
    let own: u64;
    // SAFETY: reads RFLAGS through the stack (push, pop).
    unsafe { asm!("pushfq", "pop {}", out(reg) own) };
    (own & !ARITH_FLAGS) | (flags & ARITH_FLAGS)
}

/// Runs `op` at operand size `width` (1, 2, 4, 8; 16 for `cmpxchg16b`)
/// on `o`, as the CPU would on the operands themselves: `o` after it.
/// [`Op::Move`] changes nothing here (its bytes are `src`'s).
pub(crate) fn run(op: Op, width: usize, mut o: Operands) -> Operands {
    // The bytes above the operand stay zero in the copy; a 16-byte
    // operand is cmpxchg16b's alone.
    match op {
        Op::Move => {}
        Op::Alu(Alu::Add) => sized!(width, binary, o, "add"),
        Op::Alu(Alu::Or) => sized!(width, binary, o, "or"),
        Op::Alu(Alu::Adc) => sized!(width, binary, o, "adc"),
        Op::Alu(Alu::Sbb) => sized!(width, binary, o, "sbb"),
        Op::Alu(Alu::And) => sized!(width, binary, o, "and"),
        Op::Alu(Alu::Sub) => sized!(width, binary, o, "sub"),
        Op::Alu(Alu::Xor) => sized!(width, binary, o, "xor"),
        Op::Xadd => sized!(width, binary, o, "xadd"),
        Op::Xchg => sized!(width, binary, o, "xchg"),
        Op::Inc => sized_unary!(width, "inc", o),
        Op::Dec => sized_unary!(width, "dec", o),
        Op::Not => sized_unary!(width, "not", o),
        Op::Neg => sized_unary!(width, "neg", o),
        Op::Cmpxchg => sized!(width, cmpxchg, o),
        // Never a byte operand (decode.rs); the word forms.
        Op::Bts => sized_wide!(width, "bts", o),
        Op::Btr => sized_wide!(width, "btr", o),
        Op::Btc => sized_wide!(width, "btc", o),
        Op::Cmpxchg16b => {
            if o.mem == [o.rax, o.rdx] {
                o.mem = [o.rbx, o.rcx];
                o.flags |= ZF;
            } else {
                [o.rax, o.rdx] = o.mem;
                o.flags &= !ZF;
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(mem: u64, src: u64, rax: u64, flags: u64) -> Operands {
        Operands {
            mem: [mem, 0],
            src,
            rax,
            rdx: 0,
            rbx: 0,
            rcx: 0,
            flags,
        }
    }

    const CF: u64 = 1;
    const OF: u64 = 0x800;
    const SF: u64 = 0x80;

    #[test]
    fn xadd_returns_the_old_value_and_flags_of_the_sum() {
        let o = run(Op::Xadd, 8, ops(u64::MAX, 1, 0, 0));
        assert_eq!((o.mem[0], o.src), (0, u64::MAX));
        assert_eq!(o.flags & (CF | ZF), CF | ZF);
        // A 32-bit register write zero-extends; an 8-bit one keeps the rest.
        let o = run(Op::Xadd, 4, ops(5, 0xFFFF_FFFF_0000_0001, 0, 0));
        assert_eq!((o.mem[0], o.src), (6, 5));
        let o = run(Op::Xadd, 1, ops(0x7F, 0xAB01, 0, 0));
        assert_eq!((o.mem[0], o.src), (0x80, 0xAB7F));
        assert_eq!(o.flags & (OF | SF), OF | SF, "0x7f + 1 overflows a byte");
    }

    #[test]
    fn unchanged_flags_stay_as_the_interrupted_code_had_them() {
        // inc leaves CF; not leaves every flag.
        let o = run(Op::Inc, 8, ops(1, 0, 0, CF));
        assert_eq!((o.mem[0], o.flags & CF), (2, CF));
        let o = run(Op::Not, 2, ops(0x00FF, 0, 0, ARITH_FLAGS));
        assert_eq!((o.mem[0], o.flags & ARITH_FLAGS), (0xFF00, ARITH_FLAGS));
        // adc reads CF.
        let o = run(Op::Alu(Alu::Adc), 4, ops(1, 1, 0, CF));
        assert_eq!(o.mem[0], 3);
    }

    #[test]
    fn cmpxchg_writes_on_success_and_loads_the_accumulator_on_failure() {
        let o = run(Op::Cmpxchg, 8, ops(7, 9, 7, 0));
        assert_eq!((o.mem[0], o.rax, o.flags & ZF), (9, 7, ZF));
        let o = run(Op::Cmpxchg, 8, ops(8, 9, 7, ZF));
        assert_eq!((o.mem[0], o.rax, o.flags & ZF), (8, 8, 0));
        let o = run(Op::Cmpxchg, 1, ops(8, 9, 0xFF07, 0));
        assert_eq!((o.mem[0], o.rax), (8, 0xFF08));
    }

    #[test]
    fn bit_operations_set_cf_to_the_old_bit() {
        let o = run(Op::Bts, 8, ops(0, 63, 0, CF));
        assert_eq!((o.mem[0], o.flags & CF), (1 << 63, 0));
        let o = run(Op::Btr, 4, ops(0b100, 2, 0, 0));
        assert_eq!((o.mem[0], o.flags & CF), (0, CF));
        let o = run(Op::Btc, 2, ops(0, 15, 0, 0));
        assert_eq!(o.mem[0], 0x8000);
    }

    #[test]
    fn cmpxchg16b_compares_rdx_rax_and_stores_rcx_rbx() {
        let mut o = ops(1, 0, 1, 0);
        o.mem[1] = 2;
        o.rdx = 2;
        o.rbx = 3;
        o.rcx = 4;
        let done = run(Op::Cmpxchg16b, 16, o);
        assert_eq!((done.mem, done.flags & ZF), ([3, 4], ZF));
        o.rdx = 5;
        let failed = run(Op::Cmpxchg16b, 16, o);
        assert_eq!((failed.mem, failed.rax, failed.rdx), ([1, 2], 1, 2));
        assert_eq!(failed.flags & ZF, 0);
    }
}
