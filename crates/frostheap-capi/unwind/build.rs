//! Links `libgcc_eh.a` when the C compiler knows it (see `src/lib.rs`),
//! and tells frostheap-capi's build script which unwinder the library
//! has: `static`, or `shared` (std's `libgcc_s`, with a warning).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    match libgcc_eh_dir() {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
            println!("cargo:unwinder=static");
        }
        None => {
            println!(
                "cargo:warning=libgcc_eh.a not found by the C compiler: libfrostheap.so \
                 loads libgcc_s.so.1 for its unwinder (96 KiB more resident per process)"
            );
            println!("cargo:unwinder=shared");
        }
    }
}

/// The directory of the C compiler's `libgcc_eh.a`, if it has one. The
/// compiler prints the bare name back when it does not know the file.
fn libgcc_eh_dir() -> Option<PathBuf> {
    let out = cc::Build::new()
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
