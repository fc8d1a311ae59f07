//! Compiles `src/tls.c`, the calling thread's heap as an initial-exec
//! thread-local (stable Rust cannot choose a thread-local's TLS model; see
//! `src/tls.rs`), into the library, and passes on which unwinder the
//! library has (`FROSTHEAP_UNWINDER`: `static` or `shared`, from the
//! frostheap-unwind crate's build script) to the tests.
//!
//! The library is linked `-z nodelete`: `dlclose` never unloads it. An
//! allocator cannot go while its blocks live, and each thread that got a
//! heap runs the library's pthread key destructor when it exits.
//!
//! `layout.ld` places the code every process runs next to the library's
//! entry points, and the unwind tables after the code (the linker script
//! says why). Where the C library is 2.36 or later, the library's relative
//! relocations are packed (`DT_RELR`): the 574 of them took 13 KiB of the
//! segment the loader reads in every process, and take 192 bytes packed.
//! An older C library cannot load such a file, so it is packed only
//! where the library is built against glibc 2.36 or later.

fn main() {
    println!("cargo:rerun-if-changed=src/tls.c");
    println!("cargo:rerun-if-changed=build.rs");
    // `--cfg frostheap_chaos` (ci/chaos.sh): race-widening yields.
    println!("cargo::rustc-check-cfg=cfg(frostheap_chaos)");
    cc::Build::new()
        .file("src/tls.c")
        .flag("-fPIC")
        .compile("frostheap_capi_tls");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    if glibc_packs_relocations() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,pack-relative-relocs");
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=layout.ld");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/layout.ld");
    let unwinder = std::env::var("DEP_GCC_EH_UNWINDER")
        .expect("frostheap-unwind's build script says which unwinder it linked");
    println!("cargo:rustc-env=FROSTHEAP_UNWINDER={unwinder}");
}

/// Whether the C library the build runs on loads packed relative
/// relocations (`DT_RELR`, glibc 2.36 and later).
fn glibc_packs_relocations() -> bool {
    // SAFETY: gnu_get_libc_version returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let version = version.to_string_lossy();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 36)
}
