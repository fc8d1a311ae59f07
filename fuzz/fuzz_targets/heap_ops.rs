//! Fuzz target: an op sequence (alloc / realloc / free / probe, through
//! both of `Heap`'s interfaces) decoded from the input bytes and replayed
//! against a fresh heap and the naive model. Any divergence — contents,
//! stats, alignment, ownership, `allocation_containing` — panics.
//!
//! The decoder and the replayer are the integration tests' own
//! (`crates/frostheap/tests/it/ops.rs`), so a crash found here replays in
//! the stable harness (`tests/it/fuzz_replay.rs`) byte for byte.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/frostheap/tests/it/ops.rs"]
mod ops;

fuzz_target!(|data: &[u8]| {
    let heap = frostheap::Heap::builder()
        .name("fuzz")
        .max(1 << 30)
        .build()
        .expect("a 1 GiB heap");
    ops::Replayer::new(&heap).run(&ops::decode(data));
});
