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
//! `layout.ld` places std's start-up function next to the library's entry
//! points (the linker script says why).

fn main() {
    println!("cargo:rerun-if-changed=src/tls.c");
    println!("cargo:rerun-if-changed=build.rs");
    cc::Build::new()
        .file("src/tls.c")
        .flag("-fPIC")
        .compile("frostheap_capi_tls");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=layout.ld");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/layout.ld");
    let unwinder = std::env::var("DEP_GCC_EH_UNWINDER")
        .expect("frostheap-unwind's build script says which unwinder it linked");
    println!("cargo:rustc-env=FROSTHEAP_UNWINDER={unwinder}");
}
