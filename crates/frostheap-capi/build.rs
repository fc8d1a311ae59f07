//! Compiles `src/tls.c`, the calling thread's heap as an initial-exec
//! thread-local (stable Rust cannot choose a thread-local's TLS model; see
//! `src/tls.rs`), into the library.

fn main() {
    println!("cargo:rerun-if-changed=src/tls.c");
    println!("cargo:rerun-if-changed=build.rs");
    cc::Build::new()
        .file("src/tls.c")
        .flag("-fPIC")
        .compile("frostheap_capi_tls");
}
