//! No code: this crate's build script links GCC's unwinder, `libgcc_eh.a`,
//! into `libfrostheap.so` when the C compiler has it (see `build.rs`).
//!
//! **Why the C library links it.** std reaches the unwinder (`_Unwind_*`:
//! panics, backtraces) through `libgcc_s.so.1`, a `DT_NEEDED` entry that
//! every process under the library would load, relocate and run the
//! constructors of: 96 KiB of resident memory in a C program with no
//! other use for it (`/proc/self/smaps`). Linked from `libgcc_eh.a` (what
//! `gcc -static-libgcc` links into shared objects), the unwinder is part
//! of the library, its code untouched until something unwinds, its
//! symbols local (the library exports only the C ABI). Its frame lookup
//! is per process (`dl_iterate_phdr`), so it unwinds through every
//! object, and a program's own `libgcc_s` (C++) is not disturbed: this
//! copy unwinds only the library's Rust frames, which never unwind into
//! C.
//!
//! **Why a crate of its own.** The linker lays an archive's code where
//! the archive stands on its command line. Linked by frostheap-capi
//! itself, the unwinder's 20 KiB sat between the library's entry points
//! and frostheap's code, and a program mapped more of the library's text
//! (the kernel maps file pages in 64 KiB windows around each fault): 44
//! pages present after a producer/consumer run, 36 with the unwinder
//! behind frostheap's code, where rustc puts an upstream crate's
//! libraries when frostheap-capi declares it with `extern crate` (see
//! there).
#![no_std]
