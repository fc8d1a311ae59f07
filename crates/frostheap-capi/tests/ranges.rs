//! The record of counted and reserved memory behind the library's `mmap`
//! (`src/ranges.rs`), tested on its own: the library is a `cdylib`, whose
//! own unit tests are not built (see Cargo.toml), so this test includes
//! the file, and runs the tests it holds.

#[path = "../src/ranges.rs"]
#[allow(dead_code)]
mod ranges;
