//! Compiles `tests/c/violator.c` (a C function that stores through a
//! pointer) into a static library for the integration tests' FFI case.
//!
//! The library is only put on the search path: nothing links it unless it
//! asks by name (`#[link(name = "frostheap_test_violator")]` in
//! `tests/it/violations.rs`), so the frostheap library itself and every
//! crate that depends on it stay free of it.

fn main() {
    println!("cargo:rerun-if-changed=tests/c/violator.c");
    println!("cargo:rerun-if-changed=build.rs");
    // `--cfg frostheap_chaos`: race-widening yields (sync::chaos).
    println!("cargo::rustc-check-cfg=cfg(frostheap_chaos)");
    cc::Build::new()
        .file("tests/c/violator.c")
        .cargo_metadata(false)
        .compile("frostheap_test_violator");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    println!("cargo:rustc-link-search=native={out}");
}
