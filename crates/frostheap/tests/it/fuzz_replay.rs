//! The stable fuzz harness: the fuzz target's byte encoding
//! ([`crate::ops::decode`]) replayed from pseudo-random byte strings of a
//! fixed-seed generator, so CI runs the same sequences every time. The
//! cargo-fuzz target (`fuzz/fuzz_targets/heap_ops.rs`) runs the same code
//! on coverage-guided inputs where a nightly toolchain exists.

use std::panic::AssertUnwindSafe;

use crate::check::roomy_heap;
use crate::ops::{decode, Op, Replayer, MAX_OPS};

/// SplitMix64: a tiny, well-mixed generator with a fixed seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn replay(data: &[u8]) {
    let heap = roomy_heap("fuzz");
    Replayer::new(&heap).run(&decode(data));
}

/// Sequences replayed on one heap before a fresh one is built: a heap
/// carries its free spans, queues and purge state from one sequence to
/// the next, as a long-running program's would, while fresh heaps keep
/// the `peak` check sharp.
const PER_HEAP: usize = 50;

/// Sequences replayed (the same in debug and release builds: the time
/// goes to filling and comparing blocks, which `memcpy` / `memcmp` do at
/// the same speed in both; about 1.5 s).
/// `FROSTHEAP_IT_SEQUENCES` and `FROSTHEAP_IT_SEED` override the count and
/// the seed for a longer local hunt.
const SEQUENCES: usize = 3000;

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

test!(random_byte_strings_replay_cleanly);
fn random_byte_strings_replay_cleanly() {
    let sequences = env_or("FROSTHEAP_IT_SEQUENCES", SEQUENCES);
    let mut rng = SplitMix(env_or("FROSTHEAP_IT_SEED", 0x0f05_7ea9));
    let mut n_ops = 0;
    let mut heap = roomy_heap("fuzz");
    for i in 0..sequences {
        // Mostly short strings, some long enough to hit MAX_OPS.
        let len = match rng.next() % 8 {
            0..=5 => (rng.next() % 256) as usize,
            _ => (rng.next() % 2048) as usize,
        };
        let data = rng.bytes(len);
        let ops = decode(&data);
        n_ops += ops.len();
        if i % PER_HEAP == 0 {
            heap = roomy_heap("fuzz");
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| Replayer::new(&heap).run(&ops)));
        if let Err(e) = result {
            panic!("sequence {i} failed; input bytes: {data:?}\n{e:?}");
        }
    }
    // The generator must actually exercise the heap.
    assert!(n_ops > sequences * 20, "only {n_ops} ops decoded");
}

test!(decoding_is_total_and_bounded);
fn decoding_is_total_and_bounded() {
    assert!(decode(&[]).is_empty());
    // An op cut short by the end of input is dropped, never misread.
    assert!(decode(&[0]).is_empty());
    assert_eq!(decode(&[9, 3, 0, 1]), vec![Op::Probe { pick: 3, at: 1 }]);
    let long = vec![9u8; 100_000];
    assert_eq!(decode(&long).len(), MAX_OPS);
}

test!(edge_inputs_replay_cleanly);
/// The edge inputs a fuzzer starts from: all zeros (allocate 0-byte
/// blocks), all ones, a strictly increasing byte ramp.
fn edge_inputs_replay_cleanly() {
    replay(&[0u8; 4096]);
    replay(&[0xffu8; 4096]);
    replay(&(0..4096).map(|i| i as u8).collect::<Vec<_>>());
}
