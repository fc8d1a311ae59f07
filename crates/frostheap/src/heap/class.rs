//! Size classes: 56 block sizes from 16 B to 128 KiB.
//!
//! Up to 128 B the classes step by 16; above, each power-of-two range is
//! split in four (160, 192, 224, 256, 320, ...), so internal waste stays
//! under 25% — the spacing jemalloc and mimalloc both use — except from 1
//! KiB to 4 KiB, split in eight (1152, 1280, 1408, ..., 3840, 4096).
//! Every class size is a multiple of 16, and blocks are laid from the
//! start of a 64 KiB aligned span, so a block of a class whose size is a
//! multiple of `a` is `a`-aligned: aligned requests pick the first class
//! with that property.
//!
//! **Fine classes for large heaps only.** The eight classes between those
//! of the four-way split ([`is_fine_only`]: 1152, 1408, ..., 3840) are a
//! heap's own only once it is large (past `OWN_CACHE_FROM`, 8 MiB, when
//! its owner's cache turns on); before, each is served by the next class,
//! the one the four-way split has (`ClassState::serving`): its current
//! span is that class's. Finer classes waste less of each block (uniform
//! requests of 16 B – 4 KiB: 7.5% more than glibc's 16-byte rounding with
//! four classes per doubling, 3.6% with eight from 1 KiB), but each class
//! keeps the most blocks it ever had live at once, so a heap of a few
//! blocks per class holds more pages with more classes: in the `threads`
//! benchmark's `local` case (64 live blocks a thread), simulated class
//! pages went from 368 to 416–456 KiB a thread with eight classes per
//! doubling, while `working-set` (25,000 live blocks a thread) went from
//! 1.099× glibc's live bytes to 1.063× (`python3
//! crates/frostheap-bench/sim/ws_classes.py`).

use crate::region::PAGE_SIZE;

/// Number of small size classes.
pub const N_CLASSES: usize = 56;
/// The largest small block; anything larger is a large allocation.
pub const MAX_SMALL: usize = 128 << 10;

/// The first class of the eight-way split (1152 B).
const FINE_FIRST: usize = 20;
/// The class past the eight-way split (5120 B).
const FINE_END: usize = 36;

const fn compute_size(c: usize) -> usize {
    if c < 8 {
        16 * (c + 1)
    } else if c < FINE_FIRST {
        let g = (c - 8) / 4;
        let i = (c - 8) % 4;
        let k = 7 + g;
        (1 << k) + (i + 1) * (1 << (k - 2))
    } else if c < FINE_END {
        let g = (c - FINE_FIRST) / 8;
        let i = (c - FINE_FIRST) % 8;
        let k = 10 + g;
        (1 << k) + (i + 1) * (1 << (k - 3))
    } else {
        let g = (c - FINE_END) / 4;
        let i = (c - FINE_END) % 4;
        let k = 12 + g;
        (1 << k) + (i + 1) * (1 << (k - 2))
    }
}

/// Whether class `c` is one of the eight-way split's that the four-way
/// split has not (1152, 1408, ..., 3840 B): a small heap serves it from
/// class `c + 1` (see the module documentation).
#[inline(always)]
pub const fn is_fine_only(c: usize) -> bool {
    c >= FINE_FIRST && c < FINE_END && (c - FINE_FIRST).is_multiple_of(2)
}

/// Block size of each class.
pub static CLASS_SIZE: [u32; N_CLASSES] = {
    let mut t = [0u32; N_CLASSES];
    let mut c = 0;
    while c < N_CLASSES {
        t[c] = compute_size(c) as u32;
        c += 1;
    }
    t
};

/// Sizes up to this are classed by one load from `SMALL_LOOKUP`. 4 KiB
/// (257 bytes of table) keeps a page-sized request on the same short path
/// as a 16-byte one: the computed path costs ~0.7 ns more per alloc+free
/// pair, which showed as a step at 4096 in the side-by-side benchmark.
const LOOKUP_MAX: usize = 4096;

/// Class of sizes up to [`LOOKUP_MAX`], indexed by `(size + 15) / 16`.
static SMALL_LOOKUP: [u8; LOOKUP_MAX / 16 + 1] = {
    let mut t = [0u8; LOOKUP_MAX / 16 + 1];
    let mut i = 0;
    while i < LOOKUP_MAX / 16 + 1 {
        let size = if i == 0 { 1 } else { i * 16 };
        t[i] = class_of_computed(size) as u8;
        i += 1;
    }
    t
};

const fn class_of_computed(size: usize) -> usize {
    if size <= 128 {
        let s = if size == 0 { 1 } else { size };
        s.div_ceil(16) - 1
    } else {
        let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
        if k < 10 {
            8 + (k - 7) * 4 + (size - 1 - (1 << k)) / (1 << (k - 2))
        } else if k < 12 {
            FINE_FIRST + (k - 10) * 8 + (size - 1 - (1 << k)) / (1 << (k - 3))
        } else {
            FINE_END + (k - 12) * 4 + (size - 1 - (1 << k)) / (1 << (k - 2))
        }
    }
}

/// The class for `size` bytes with 16-byte alignment if `size` is at most
/// 4 KiB (one table load), or `None`: the first step of the C ABI's
/// `malloc` fast path, which leaves larger sizes to its slow path.
#[inline(always)]
pub fn class_of_lookup(size: usize) -> Option<usize> {
    if size <= LOOKUP_MAX {
        // `get`: no bounds-check panic (the index is in range), so inlined
        // fast paths stay leaves.
        SMALL_LOOKUP.get((size + 15) >> 4).map(|&c| c as usize)
    } else {
        None
    }
}

/// The class for `size` bytes with 16-byte alignment, or `None` if `size`
/// is larger than [`MAX_SMALL`].
#[inline(always)]
pub fn class_of(size: usize) -> Option<usize> {
    if size <= LOOKUP_MAX {
        Some(SMALL_LOOKUP[(size + 15) >> 4] as usize)
    } else if size <= MAX_SMALL {
        Some(class_of_computed(size))
    } else {
        None
    }
}

/// The class for a size and alignment, or `None` for a large allocation.
/// Always inlined: it is the first step of every allocation, and for the
/// common `align <= 16` case it is one compare and one table load.
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 16 {
        return class_of(size);
    }
    if align > PAGE_SIZE {
        return None;
    }
    let s = size.max(1).checked_add(align - 1)? & !(align - 1);
    let c = class_of(s)?;
    // (`get`: no bounds-check panic, so inlined fast paths stay leaves.)
    if CLASS_SIZE
        .get(c)
        .is_some_and(|&size| (size as usize).is_multiple_of(align))
    {
        return Some(c);
    }
    // Powers of two are classes, and a power of two >= align is a
    // multiple of it.
    class_of(s.next_power_of_two())
}

/// Pages (of 64 KiB) in one span of class `c`: 32 blocks where that takes
/// no more than [`SPAN_PAGES_FOR_32`] pages (blocks up to 8 KiB), else the
/// fewest pages that hold one block (a power of two).
///
/// **Medium blocks, one span each or nearly.** A span is given back only
/// when its last block is freed, and each thread heap keeps, per class, the
/// blocks it carved. With spans of at least 8 blocks, 16 threads each
/// replacing blocks of 1 B – 64 KiB in a ring of 32 committed 97.5 MiB at
/// their peak for 16–32 MiB live (glibc: 25.8 MB resident), and under
/// `FROSTHEAP_MAX=32M` 16% of their allocations were refused; a stress
/// program keeping 40–90% of a 64M limit live in blocks of 1–128 KiB was
/// refused with 6.5 MiB live. With a span per page (10–64 KiB blocks: 6 to
/// 1 a span) or per block above: 65.6 MB resident, 0.3% refused at 32M,
/// and the stress program's first refusal at 29 MiB live. The price is a
/// span taken and given back more often: a block of 8–128 KiB allocated
/// and freed at random among 64 took 74 ns instead of 22 (glibc 155 ns,
/// jemalloc 410 ns: `medium time 64 1000000 8192 131072`,
/// crates/frostheap-bench/preload/medium.c, whose `ring` mode is the 16
/// threads above), where a program that fills such a block spends
/// microseconds; with 4 blocks a span, 37 ns, but ten times the refusals
/// at 32M.
#[inline]
pub fn span_pages(c: usize) -> usize {
    let size = CLASS_SIZE[c] as usize;
    let for_32 = (size * 32).div_ceil(PAGE_SIZE);
    let pages = if for_32 <= SPAN_PAGES_FOR_32 {
        for_32
    } else {
        size.div_ceil(PAGE_SIZE)
    };
    pages.next_power_of_two()
}

/// The most pages a span takes to hold 32 blocks (see [`span_pages`]):
/// up to 8 KiB blocks. A class's span holds what is live of the class at
/// its peak, carved on demand, so a larger span costs no memory until it
/// is used; with 16 blocks of 4 KiB a span, a thread whose live 4 KiB
/// blocks hover around 16 kept filling one span and retiring another, and
/// held two spans' worth of memory resident for one span of blocks.
const SPAN_PAGES_FOR_32: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_multiples_of_16() {
        for c in 1..N_CLASSES {
            assert!(CLASS_SIZE[c] > CLASS_SIZE[c - 1]);
            assert_eq!(CLASS_SIZE[c] % 16, 0);
        }
        assert_eq!(CLASS_SIZE[N_CLASSES - 1] as usize, MAX_SMALL);
    }

    /// The classes a small heap serves are those of four classes per
    /// doubling above 128 B; each fine-only class is served by the next
    /// one, at most 1/8 larger and at least as aligned.
    #[test]
    fn fine_only_classes_sit_between_the_four_way_split() {
        let coarse: Vec<u32> = (0..N_CLASSES)
            .filter(|&c| !is_fine_only(c))
            .map(|c| CLASS_SIZE[c])
            .collect();
        assert_eq!(coarse.len(), 48);
        let mut expected = vec![16, 32, 48, 64, 80, 96, 112, 128];
        for k in 7..17 {
            for i in 1..=4 {
                expected.push((1u32 << k) + i * (1 << (k - 2)));
            }
        }
        assert_eq!(coarse, expected);
        let fine: Vec<u32> = (0..N_CLASSES)
            .filter(|&c| is_fine_only(c))
            .map(|c| CLASS_SIZE[c])
            .collect();
        assert_eq!(fine, [1152, 1408, 1664, 1920, 2304, 2816, 3328, 3840]);
        for c in (0..N_CLASSES).filter(|&c| is_fine_only(c)) {
            let (size, next) = (CLASS_SIZE[c], CLASS_SIZE[c + 1]);
            assert!(!is_fine_only(c + 1));
            assert!(next * 8 <= size * 9, "class {c}");
            let align = 1 << size.trailing_zeros();
            assert_eq!(next % align, 0, "class {c}: {next} not {align}-aligned");
        }
    }

    #[test]
    fn class_of_is_the_smallest_fitting_class() {
        for size in 0..=MAX_SMALL {
            let c = class_of(size).unwrap();
            assert!(CLASS_SIZE[c] as usize >= size, "size {size}");
            if c > 0 {
                assert!(
                    (CLASS_SIZE[c - 1] as usize) < size.max(1),
                    "size {size} class {c}"
                );
            }
        }
        assert_eq!(class_of(MAX_SMALL + 1), None);
    }

    #[test]
    fn aligned_classes_are_aligned() {
        for align in [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 65536] {
            for size in [1, 15, 16, 17, 100, 1000, 4096, 5000, 70000] {
                if let Some(c) = class_for(size, align) {
                    assert_eq!(
                        CLASS_SIZE[c] as usize % align,
                        0,
                        "size {size} align {align}"
                    );
                    assert!(CLASS_SIZE[c] as usize >= size);
                }
            }
        }
    }
}
