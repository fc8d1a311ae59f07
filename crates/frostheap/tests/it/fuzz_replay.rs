//! The stable fuzz harness: the fuzz target's byte encoding
//! ([`crate::ops::decode`]) replayed from pseudo-random byte strings of a
//! fixed-seed generator, so CI runs the same sequences every time. The
//! cargo-fuzz target (`fuzz/fuzz_targets/heap_ops.rs`) runs the same code
//! on coverage-guided inputs where a nightly toolchain exists.

use std::cell::UnsafeCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;

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

/// `var` parsed, `default` if it is unset; a value that does not parse
/// stops the test with its name (a hunt must not run the default count
/// while its user thinks it runs theirs).
fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => default,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?}: expected a whole number")),
        Err(e) => panic!("{var}: {e}"),
    }
}

/// The line a `SIGABRT` handler writes while sequences are replayed: in
/// debug builds a broken allocator invariant aborts the process (it may
/// hold a heap's lock, where a panic could not unwind), so the panic below
/// that names the failing input never comes. Formatted before each
/// sequence, written by the handler without allocating.
static ABORT_LINE: Mutex<()> = Mutex::new(());
static ABORT_TEXT: AbortText = AbortText(UnsafeCell::new([0; 512]));
/// The thread that replays (its kernel id): an abort on another thread,
/// another test's, is not this test's to explain.
static ABORT_TID: AtomicI32 = AtomicI32::new(0);

/// The text of [`ABORT_TEXT`]: written by [`AbortNote::set`] on the
/// replaying thread while [`ABORT_LEN`] is 0, read by the handler on that
/// thread only, up to that length: a read never overlaps a write.
struct AbortText(UnsafeCell<[u8; 512]>);
// SAFETY: see the type's comment.
unsafe impl Sync for AbortText {}
static ABORT_LEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn name_the_sequence_on_abort(_: libc::c_int) {
    // SAFETY: gettid has no preconditions (and is async-signal-safe).
    if unsafe { libc::gettid() } != ABORT_TID.load(Ordering::Acquire) {
        return;
    }
    let len = ABORT_LEN.load(Ordering::Acquire);
    // SAFETY: the text is written only while ABORT_LEN is 0 (see
    // `AbortNote::set`); write(2) is async-signal-safe. Returning lets
    // `abort` go on (its handler reset by SA_RESETHAND).
    unsafe { libc::write(2, ABORT_TEXT.0.get().cast(), len) };
}

/// Names the sequence being replayed should the process abort; restores
/// the previous `SIGABRT` disposition when dropped.
struct AbortNote {
    old: libc::sigaction,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl AbortNote {
    fn new() -> AbortNote {
        let one = ABORT_LINE.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in the handler.
        ABORT_TID.store(unsafe { libc::gettid() }, Ordering::Release);
        // SAFETY: a zeroed sigaction is valid; the handler only reads a
        // static and calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = name_the_sequence_on_abort as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGABRT, &sa, &mut old), 0);
            AbortNote { old, _one: one }
        }
    }

    fn set(&self, i: usize, seed: u64) {
        let line = format!(
            "\nfuzz_replay: the process aborted while it replayed sequence {i} of seed {seed:#x}: \
             replay it with FROSTHEAP_IT_SEED={seed} FROSTHEAP_IT_SEQUENCES={}\n",
            i + 1
        );
        ABORT_LEN.store(0, Ordering::Release);
        // SAFETY: ABORT_LEN is 0, so the handler writes nothing of the text
        // while it changes; only this test writes it (ABORT_LINE).
        let text = unsafe { &mut *ABORT_TEXT.0.get() };
        // Never cut: a shortened count would replay a run that stops
        // before the failing sequence.
        assert!(line.len() <= text.len(), "the abort note outgrew its buffer: {line}");
        text[..line.len()].copy_from_slice(line.as_bytes());
        ABORT_LEN.store(line.len(), Ordering::Release);
    }
}

impl Drop for AbortNote {
    fn drop(&mut self) {
        ABORT_LEN.store(0, Ordering::Release);
        ABORT_TID.store(0, Ordering::Release);
        // SAFETY: `old` is the disposition `new` replaced.
        unsafe { libc::sigaction(libc::SIGABRT, &self.old, std::ptr::null_mut()) };
    }
}

test!(random_byte_strings_replay_cleanly);
fn random_byte_strings_replay_cleanly() {
    let sequences = env_or("FROSTHEAP_IT_SEQUENCES", SEQUENCES);
    let seed = env_or("FROSTHEAP_IT_SEED", 0x0f05_7ea9);
    let mut rng = SplitMix(seed);
    let mut n_ops = 0;
    let mut heap = roomy_heap("fuzz");
    let note = AbortNote::new();
    for i in 0..sequences {
        note.set(i, seed);
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
