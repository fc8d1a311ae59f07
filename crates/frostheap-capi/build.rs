//! Compiles `src/tls.c`, the calling thread's heap as an initial-exec
//! thread-local (stable Rust cannot choose a thread-local's TLS model; see
//! `src/tls.rs`), into the library, and links GCC's unwinder into it
//! statically when the C compiler has it.
//!
//! **The unwinder.** std reaches the unwinder (`_Unwind_*`: panics,
//! backtraces) through `libgcc_s.so.1`, a `DT_NEEDED` entry that every
//! process under the library then loads, relocates and runs the
//! constructors of: 96 KiB of resident memory in a C program that has no
//! other use for it (`/proc/self/smaps`). Linked from `libgcc_eh.a` (what
//! `gcc -static-libgcc` links into shared objects), the unwinder's code
//! is in the library, untouched until something unwinds, and its symbols
//! stay local (the library exports only the C ABI). Its frame lookup is
//! per process (`dl_iterate_phdr`), so it unwinds through every object,
//! and a program's own `libgcc_s` (C++) is not disturbed: this copy
//! unwinds only the library's Rust frames, which never unwind into C.
//! Without `libgcc_eh.a` (a compiler without GCC's runtime), the library
//! keeps `libgcc_s` and the build says so; `FROSTHEAP_UNWINDER` tells
//! the tests which one was linked.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/tls.c");
    println!("cargo:rerun-if-changed=build.rs");
    let build = cc::Build::new();
    build
        .clone()
        .file("src/tls.c")
        .flag("-fPIC")
        .compile("frostheap_capi_tls");

    match static_unwinder(&build) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
            println!("cargo:rustc-env=FROSTHEAP_UNWINDER=static");
        }
        None => {
            println!(
                "cargo:warning=libgcc_eh.a not found by the C compiler: libfrostheap.so \
                 loads libgcc_s.so.1 for its unwinder (96 KiB more resident per process)"
            );
            println!("cargo:rustc-env=FROSTHEAP_UNWINDER=shared");
        }
    }
}

/// The directory of the C compiler's `libgcc_eh.a`, if it has one. The
/// compiler prints the bare name back when it does not know the file.
fn static_unwinder(build: &cc::Build) -> Option<PathBuf> {
    let out = build
        .get_compiler()
        .to_command()
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    if out.status.success() && path.is_absolute() && path.is_file() {
        path.parent().map(PathBuf::from)
    } else {
        None
    }
}
