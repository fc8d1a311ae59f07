//! Heap operations, their byte encoding, and a replayer that checks a
//! [`Heap`] against a naive model after every operation.
//!
//! This file is shared by path: the integration tests (`tests/it`, through
//! proptest strategies and the stable replay harness) and the cargo-fuzz
//! target (`fuzz/fuzz_targets/heap_ops.rs`) both compile it as a module, so
//! it refers to nothing but `std`, `frostheap` and `allocator_api2`.
//!
//! **The model** is a list of live blocks, each with its layout, the usable
//! size the heap counts for it (one of [`usable_sizes`] of the layout it
//! was made with: its class's block size, or a larger class's block the
//! heap lent), and the seed of the byte pattern written into it. After
//! every operation the heap's `in_use`, `allocations`, `peak` and
//! `total_allocations` must equal the model's, every block's contents are
//! verified byte for byte before it is freed or resized, and a resize must
//! preserve the common prefix.
//!
//! **The encoding** (for fuzzers): a byte string is read op by op; the
//! first byte of an op picks its kind, the following bytes its arguments
//! (see [`decode`]). Running out of bytes ends the sequence, so every byte
//! string is a valid input.

#![allow(dead_code)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::OnceLock;

use allocator_api2::alloc::Allocator;
use frostheap::Heap;

/// Largest size an op asks for (1 MiB).
pub const MAX_SIZE: usize = 1 << 20;
/// Largest alignment an op asks for is `1 << MAX_ALIGN_SHIFT` (4096): up to
/// 64 KiB `Heap::block_size` is exact, which the model relies on.
pub const MAX_ALIGN_SHIFT: u32 = 12;
/// Ops decoded from one byte string at most (bounds live memory to
/// `MAX_OPS * MAX_SIZE`).
pub const MAX_OPS: usize = 256;
/// Largest small block (a size class); anything larger is a large block.
const MAX_SMALL: usize = 128 << 10;
/// A reallocation to more than this many bytes gives a large block (whole
/// heap pages), though a class would hold the size.
const REALLOC_PAGES_FROM: usize = 32 << 10;
/// A heap page: the unit of a large block.
const HEAP_PAGE: usize = 64 << 10;

/// The usable size of a large block of `size` bytes (alignments up to a
/// heap page: the block starts at its first page).
fn pages_usable(size: usize) -> usize {
    size.max(1).div_ceil(HEAP_PAGE) * HEAP_PAGE
}

/// Which interface an op goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `Heap::try_alloc` / `try_alloc_zeroed` / `try_realloc` / `dealloc`.
    Heap,
    /// `allocator_api2::alloc::Allocator`: `allocate(_zeroed)`,
    /// `grow(_zeroed)` / `shrink`, `deallocate`.
    Allocator,
}

/// One heap operation. `pick` chooses a live block (modulo the number of
/// live blocks); ops that need a block are skipped when none is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Allocate `size` bytes aligned to `1 << align_shift`.
    Alloc {
        size: usize,
        align_shift: u32,
        zeroed: bool,
        api: Api,
    },
    /// Resize a block to `size` bytes. Through `Api::Heap` the alignment
    /// stays; through `Api::Allocator` the new layout is aligned to
    /// `1 << align_shift`, and `zeroed` picks `grow_zeroed` when growing.
    Realloc {
        pick: usize,
        size: usize,
        align_shift: u32,
        zeroed: bool,
        api: Api,
    },
    /// Free a block.
    Free { pick: usize, api: Api },
    /// Ask `allocation_containing` about byte `at` (modulo the usable size)
    /// of a block.
    Probe { pick: usize, at: usize },
}

// ---------------------------------------------------------------------------
// Decoding.

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn uint(&mut self, n_bytes: usize) -> Option<usize> {
        let mut v = 0usize;
        for _ in 0..n_bytes {
            v = (v << 8) | self.u8()? as usize;
        }
        Some(v)
    }

    /// A size skewed towards small blocks, as real programs ask: one
    /// selector byte, then one to three bytes of value.
    fn size(&mut self) -> Option<usize> {
        Some(match self.u8()? % 8 {
            0..=3 => self.uint(1)?,
            4 | 5 => self.uint(2)? % 4097,
            6 => self.uint(3)? % (MAX_SMALL + 1),
            _ => self.uint(3)? % (MAX_SIZE + 1),
        })
    }

    fn api(flags: u8) -> Api {
        if flags & 1 == 0 {
            Api::Heap
        } else {
            Api::Allocator
        }
    }
}

/// Decodes a byte string into at most [`MAX_OPS`] ops.
///
/// | first byte % 10 | op | argument bytes |
/// |---|---|---|
/// | 0..=3 | `Alloc` | size (2–4), flags (api, zeroed, align shift) |
/// | 4..=5 | `Realloc` | pick, size (2–4), flags |
/// | 6..=8 | `Free` | pick (api from the first byte) |
/// | 9 | `Probe` | pick, offset (2) |
/// The usable sizes a heap may give a request for `layout`: its class's
/// block size ([`Heap::block_size`]); in a heap under 8 MiB, for the
/// classes only larger heaps have, the next class's ([`small_heap_block`]);
/// and, for a request of a class from 1 KiB up to 128 KiB aligned to at
/// most 16, the next two classes' (of the heap's kind) within half as
/// large again, whose free blocks a heap lends before it carves more of
/// the class's own (`HeapCore::borrow`).
pub fn usable_sizes(layout: Layout) -> Vec<usize> {
    let own = Heap::block_size(layout);
    let next = |s: usize| Heap::block_size(Layout::from_size_align(s + 1, 1).expect("valid layout"));
    let mut sizes = vec![own];
    // A large heap's classes, then a small heap's.
    let kinds: [(usize, &dyn Fn(usize) -> usize); 2] = [
        (own, &next),
        (small_heap_block(own), &|s| small_heap_block(next(s))),
    ];
    for (base, next) in kinds {
        if !sizes.contains(&base) {
            sizes.push(base);
        }
        if layout.align() <= 16 && (1024..=MAX_SMALL).contains(&base) {
            let mut s = base;
            for _ in 0..2 {
                s = next(s);
                if s > MAX_SMALL || s > base * 3 / 2 {
                    break;
                }
                if !sizes.contains(&s) {
                    sizes.push(s);
                }
            }
        }
    }
    sizes
}

/// The block a heap that has committed less than 8 MiB gives for a class
/// of `own` bytes: the class's own, or, for the classes between 1 KiB and
/// 4 KiB that four classes per power of two do not have (1152, 1408, ...),
/// the next class's.
pub fn small_heap_block(own: usize) -> usize {
    if own > 1024 && own < 4096 {
        let k = usize::BITS - 1 - (own - 1).leading_zeros();
        if !(own - (1 << k)).is_multiple_of(1 << (k - 2)) {
            return Heap::block_size(Layout::from_size_align(own + 1, 1).expect("valid layout"));
        }
    }
    own
}

/// The usable size of `p`, a block the heap just returned for `layout`,
/// checked to be one of [`usable_sizes`].
fn usable_of(heap: &Heap, p: NonNull<u8>, layout: Layout, what: &str) -> usize {
    // SAFETY: the caller's block is live.
    let usable = unsafe { heap.usable_size(p) };
    let allowed = usable_sizes(layout);
    assert!(
        allowed.contains(&usable),
        "{what}: a block of {usable} bytes for {layout:?}, expected one of {allowed:?}"
    );
    usable
}

pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader { data };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(op) = decode_one(&mut r) else { break };
        ops.push(op);
    }
    ops
}

fn decode_one(r: &mut Reader<'_>) -> Option<Op> {
    let tag = r.u8()?;
    Some(match tag % 10 {
        0..=3 => {
            let size = r.size()?;
            let flags = r.u8()?;
            Op::Alloc {
                size,
                align_shift: u32::from(flags >> 2) % (MAX_ALIGN_SHIFT + 1),
                zeroed: flags & 2 != 0,
                api: Reader::api(flags),
            }
        }
        4 | 5 => {
            let pick = r.u8()? as usize;
            let size = r.size()?;
            let flags = r.u8()?;
            Op::Realloc {
                pick,
                size,
                align_shift: u32::from(flags >> 2) % (MAX_ALIGN_SHIFT + 1),
                zeroed: flags & 2 != 0,
                api: Reader::api(flags),
            }
        }
        6..=8 => Op::Free {
            pick: r.u8()? as usize,
            api: Reader::api(tag / 10),
        },
        _ => Op::Probe {
            pick: r.u8()? as usize,
            at: r.uint(2)?,
        },
    })
}

// ---------------------------------------------------------------------------
// Patterns.

/// Pattern bytes: block contents are `pattern()[seed..seed + len]`, so
/// filling and verifying are one `memcpy` / `memcmp` (fast in debug
/// builds) while every byte still depends on its position and the seed.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        (0..MAX_SIZE + 256)
            .map(|_| {
                // xorshift32: no period shorter than the buffer.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Writes the pattern of `seed` into `len` bytes at `p`.
///
/// # Safety
/// 1. `p` is valid for writes of `len` bytes, `len <= MAX_SIZE`.
pub unsafe fn fill(p: NonNull<u8>, len: usize, seed: u8) {
    let src = &pattern()[seed as usize..seed as usize + len];
    // SAFETY: by (1) the destination holds len bytes; the pattern is a
    // separate allocation, so the ranges do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), len) };
}

/// Panics unless the `len` bytes at `p` hold the pattern of `seed`.
///
/// # Safety
/// 1. `p` is valid for reads of `len` bytes, `len <= MAX_SIZE`.
pub unsafe fn verify(p: NonNull<u8>, len: usize, seed: u8, what: &str) {
    // SAFETY: by (1).
    let got = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    let want = &pattern()[seed as usize..seed as usize + len];
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{what}: block {p:p} ({len} bytes) corrupted at byte {i}: found {:#04x}, wrote {:#04x}",
            got[i], want[i]
        );
    }
}

/// Panics unless the `len` bytes at `p` are zero.
///
/// # Safety
/// 1. `p` is valid for reads of `len` bytes.
pub unsafe fn verify_zero(p: NonNull<u8>, len: usize, what: &str) {
    // SAFETY: by (1).
    let got = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    // Compared against zeros chunk by chunk (memcmp: fast in debug builds).
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    if got.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()]) {
        return;
    }
    if let Some(i) = got.iter().position(|&b| b != 0) {
        panic!(
            "{what}: block {p:p} not zeroed at byte {i} of {len}: {:#04x}",
            got[i]
        );
    }
}

// ---------------------------------------------------------------------------
// The replayer.

/// A live block as the model knows it.
#[derive(Clone, Copy, Debug)]
struct Block {
    ptr: NonNull<u8>,
    /// The layout the block currently fits (what the caller asked last).
    layout: Layout,
    /// Usable bytes the heap counts in `in_use` for it.
    usable: usize,
    /// Whether it is a large block (whole pages, resized in place by its
    /// page count), as an allocation of more than `MAX_SMALL` or a
    /// reallocation of more than `REALLOC_PAGES_FROM` bytes gives.
    large: bool,
    /// Its pattern's seed.
    seed: u8,
}

/// Replays ops against one heap and checks it against the model.
///
/// The heap must be empty (no live block; it may have been used before)
/// and owned by the calling thread, and no other thread may use it during
/// the replay; its limit must be far above `MAX_OPS * MAX_SIZE` plus
/// fragmentation, since the model treats every refusal as a bug.
pub struct Replayer<'h> {
    heap: &'h Heap,
    live: Vec<Block>,
    in_use: usize,
    peak: usize,
    total: u64,
    n_ops: usize,
    /// The heap's `peak` and `total_allocations` before the replay.
    base_peak: usize,
    base_total: u64,
}

impl<'h> Replayer<'h> {
    /// Starts replaying against `heap`.
    pub fn new(heap: &'h Heap) -> Replayer<'h> {
        let s = heap.stats();
        assert!(
            s.in_use == 0 && s.allocations == 0,
            "the replayer needs an empty heap, got {s:?}"
        );
        Replayer {
            heap,
            live: Vec::new(),
            in_use: 0,
            peak: 0,
            total: 0,
            n_ops: 0,
            base_peak: s.peak,
            base_total: s.total_allocations,
        }
    }

    /// Number of live blocks in the model.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Applies every op, then frees what is left ([`Replayer::finish`]).
    pub fn run(mut self, ops: &[Op]) {
        for op in ops {
            self.apply(op);
        }
        self.finish();
    }

    /// Applies one op and checks the heap against the model.
    pub fn apply(&mut self, op: &Op) {
        self.n_ops += 1;
        match *op {
            Op::Alloc {
                size,
                align_shift,
                zeroed,
                api,
            } => self.alloc(size, 1 << align_shift, zeroed, api),
            Op::Realloc {
                pick,
                size,
                align_shift,
                zeroed,
                api,
            } => {
                if !self.live.is_empty() {
                    let i = pick % self.live.len();
                    self.realloc(i, size, 1 << align_shift, zeroed, api);
                }
            }
            Op::Free { pick, api } => {
                if !self.live.is_empty() {
                    let i = pick % self.live.len();
                    self.free(i, api);
                }
            }
            Op::Probe { pick, at } => {
                if !self.live.is_empty() {
                    let b = self.live[pick % self.live.len()];
                    self.probe(&b, at % b.usable);
                }
            }
        }
        self.check_stats(op);
    }

    /// Frees every live block (verifying it), then checks that the heap is
    /// empty.
    pub fn finish(mut self) {
        while !self.live.is_empty() {
            let api = if self.live.len().is_multiple_of(2) {
                Api::Heap
            } else {
                Api::Allocator
            };
            self.free(self.live.len() - 1, api);
            self.check_stats(&Op::Free {
                pick: self.live.len(),
                api,
            });
        }
        let s = self.heap.stats();
        assert_eq!(
            (s.in_use, s.allocations),
            (0, 0),
            "heap not empty after freeing everything: {s:?}"
        );
    }

    fn next_seed(&self) -> u8 {
        (self.n_ops % 251) as u8
    }

    fn alloc(&mut self, size: usize, align: usize, zeroed: bool, api: Api) {
        let layout =
            Layout::from_size_align(size, align).expect("op sizes and alignments are valid");
        let ptr = match (api, zeroed) {
            (Api::Heap, false) => self.heap.try_alloc(layout),
            (Api::Heap, true) => self.heap.try_alloc_zeroed(layout),
            (Api::Allocator, false) => self
                .heap
                .allocate(layout)
                .map(|s| s.cast::<u8>())
                .map_err(|_| self.oom(layout)),
            (Api::Allocator, true) => self
                .heap
                .allocate_zeroed(layout)
                .map(|s| s.cast::<u8>())
                .map_err(|_| self.oom(layout)),
        };
        let ptr = ptr.unwrap_or_else(|e| {
            panic!(
                "op {}: alloc {layout:?} via {api:?} failed: {e}",
                self.n_ops
            )
        });
        if zeroed {
            // SAFETY: the block is live and holds layout.size() bytes.
            unsafe { verify_zero(ptr, size, "alloc_zeroed") };
        }
        let usable = usable_of(self.heap, ptr, layout, &format!("op {}", self.n_ops));
        let b = Block {
            ptr,
            layout,
            usable,
            large: usable > MAX_SMALL,
            seed: self.next_seed(),
        };
        self.check_block(&b, align, None);
        // SAFETY: the block holds layout.size() bytes.
        unsafe { fill(ptr, size, b.seed) };
        self.in_use += usable;
        self.peak = self.peak.max(self.in_use);
        self.total += 1;
        self.live.push(b);
    }

    fn realloc(&mut self, i: usize, size: usize, align: usize, zeroed: bool, api: Api) {
        let old = self.live[i];
        // SAFETY: the block is live and holds old.layout.size() bytes.
        unsafe { verify(old.ptr, old.layout.size(), old.seed, "before realloc") };
        // `required`: what the caller may rely on; `effective`: the
        // alignment the heap allocates a moved block with.
        let (new_layout, effective, result) = match api {
            Api::Heap => {
                let new_layout =
                    Layout::from_size_align(size, old.layout.align()).expect("valid layout");
                // SAFETY: old.ptr is live, allocated by this heap with old.layout.
                let r = unsafe { self.heap.try_realloc(old.ptr, old.layout, size) };
                (new_layout, old.layout.align(), r)
            }
            Api::Allocator => {
                let new_layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: old.ptr is live and fits old.layout; grow gets a
                // layout at least as large, shrink one at most as large.
                let r = unsafe {
                    if size >= old.layout.size() {
                        if zeroed {
                            self.heap.grow_zeroed(old.ptr, old.layout, new_layout)
                        } else {
                            self.heap.grow(old.ptr, old.layout, new_layout)
                        }
                    } else {
                        self.heap.shrink(old.ptr, old.layout, new_layout)
                    }
                };
                let effective = align.max(old.layout.align());
                (
                    new_layout,
                    effective,
                    r.map(|s| s.cast::<u8>()).map_err(|_| self.oom(new_layout)),
                )
            }
        };
        let ptr = result.unwrap_or_else(|e| {
            panic!(
                "op {}: realloc {:?} -> {new_layout:?} via {api:?} failed: {e}",
                self.n_ops, old.layout
            )
        });
        let kept = old.layout.size().min(size);
        // SAFETY: the new block holds `size` bytes, kept <= size.
        unsafe { verify(ptr, kept, old.seed, "prefix after realloc") };
        if api == Api::Allocator && zeroed && size > old.layout.size() {
            // SAFETY: as above.
            unsafe {
                verify_zero(
                    NonNull::new_unchecked(ptr.as_ptr().add(kept)),
                    size - kept,
                    "grow_zeroed tail",
                )
            };
        }
        let moved = ptr != old.ptr;
        // A reallocation proper (not an `Allocator` growth to a larger
        // alignment, which allocates anew) to more than 32 KiB gives a
        // large block.
        let in_pages = effective == old.layout.align() && size > REALLOC_PAGES_FROM;
        let (usable, large) = if moved && in_pages {
            // SAFETY: the new block is live.
            let usable = unsafe { self.heap.usable_size(ptr) };
            assert_eq!(
                usable,
                pages_usable(size),
                "op {}: a block reallocated to {size} bytes",
                self.n_ops
            );
            (usable, true)
        } else if moved {
            let layout = Layout::from_size_align(size, effective).expect("valid layout");
            let usable = usable_of(self.heap, ptr, layout, &format!("op {}", self.n_ops));
            (usable, usable > MAX_SMALL)
        } else if !old.large {
            // A small block resized in place keeps its class.
            assert!(
                size <= old.usable,
                "op {}: {size} bytes resized in place into a {}-byte block",
                self.n_ops,
                old.usable
            );
            (old.usable, false)
        } else {
            // A large block resized in place: its pages.
            (pages_usable(size), true)
        };
        let b = Block {
            ptr,
            layout: new_layout,
            usable,
            large,
            seed: self.next_seed(),
        };
        self.check_block(&b, new_layout.align(), Some(i));
        // SAFETY: the block holds `size` bytes.
        unsafe { fill(ptr, size, b.seed) };
        if moved {
            // The new block is allocated before the old one is freed.
            self.peak = self.peak.max(self.in_use + usable);
            self.total += 1;
        }
        self.in_use = self.in_use - old.usable + usable;
        self.peak = self.peak.max(self.in_use);
        self.live[i] = b;
    }

    fn free(&mut self, i: usize, api: Api) {
        let b = self.live.swap_remove(i);
        // SAFETY: the block is live and holds b.layout.size() bytes.
        unsafe { verify(b.ptr, b.layout.size(), b.seed, "before free") };
        // SAFETY: b.ptr is live, from this heap, and fits b.layout.
        unsafe {
            match api {
                Api::Heap => self.heap.dealloc(b.ptr),
                Api::Allocator => self.heap.deallocate(b.ptr, b.layout),
            }
        }
        self.in_use -= b.usable;
    }

    /// Checks a block the heap just returned: aligned, owned, the usable
    /// size the model expects, found by `allocation_containing`.
    /// `replacing`: the model index of the block a realloc replaces.
    fn check_block(&self, b: &Block, align: usize, replacing: Option<usize>) {
        let n = self.n_ops;
        let addr = b.ptr.as_ptr() as usize;
        assert_eq!(
            addr % align,
            0,
            "op {n}: {:p} not aligned to {align}",
            b.ptr
        );
        assert!(
            self.heap.owns(b.ptr.as_ptr()),
            "op {n}: heap does not own its block {:p}",
            b.ptr
        );
        // SAFETY: the block is live.
        let usable = unsafe { self.heap.usable_size(b.ptr) };
        assert_eq!(
            usable, b.usable,
            "op {n}: usable size of {:?} at {:p}",
            b.layout, b.ptr
        );
        assert!(
            usable >= b.layout.size(),
            "op {n}: usable {usable} < requested {:?}",
            b.layout
        );
        let overlapping = self.live.iter().enumerate().find(|&(j, o)| {
            let (s, e) = (o.ptr.as_ptr() as usize, o.ptr.as_ptr() as usize + o.usable);
            Some(j) != replacing && addr < e && s < addr + b.usable
        });
        if let Some((_, other)) = overlapping {
            panic!(
                "op {n}: new block {:p}+{} overlaps live block {:p}+{}",
                b.ptr, b.usable, other.ptr, other.usable
            );
        }
        for at in [0, b.usable / 2, b.usable - 1] {
            self.probe(b, at);
        }
    }

    fn probe(&self, b: &Block, at: usize) {
        let addr = b.ptr.as_ptr() as usize + at;
        assert!(
            self.heap.owns(addr as *const u8),
            "op {}: heap does not own {addr:#x}",
            self.n_ops
        );
        assert_eq!(
            self.heap.allocation_containing(addr),
            Some((b.ptr.as_ptr() as usize, b.usable)),
            "op {}: allocation_containing(base + {at}) for {:?} at {:p}",
            self.n_ops,
            b.layout,
            b.ptr
        );
    }

    fn check_stats(&self, op: &Op) {
        let s = self.heap.stats();
        let n = self.n_ops;
        assert_eq!(s.in_use, self.in_use, "op {n} ({op:?}): in_use\n{s:?}");
        assert_eq!(
            s.allocations,
            self.live.len(),
            "op {n} ({op:?}): allocations\n{s:?}"
        );
        assert_eq!(
            s.peak,
            self.base_peak.max(self.peak),
            "op {n} ({op:?}): peak\n{s:?}"
        );
        assert_eq!(
            s.total_allocations,
            self.base_total + self.total,
            "op {n} ({op:?}): total_allocations\n{s:?}"
        );
        assert_eq!(s.refused, 0, "op {n} ({op:?}): refused\n{s:?}");
        assert!(
            s.in_use <= s.committed && s.committed <= s.reserved && s.committed <= s.limit,
            "op {n} ({op:?}): in_use <= committed <= reserved, limit\n{s:?}"
        );
    }

    /// The `Allocator` API's `AllocError` carries no numbers: the heap's,
    /// as its own `max` refuses.
    fn oom(&self, layout: Layout) -> frostheap::Error {
        let s = self.heap.stats();
        frostheap::Error::OutOfMemory {
            requested: layout.size(),
            limit: s.limit,
            in_use: s.in_use,
            committed: s.committed,
            refused_by: frostheap::RefusedBy::HeapMax,
        }
    }
}
