//! Size classes: 48 block sizes from 16 B to 128 KiB.
//!
//! Up to 128 B the classes step by 16; above, each power-of-two range is
//! split in four (160, 192, 224, 256, 320, ...), so internal waste stays
//! under 25% — the spacing jemalloc and mimalloc both use. Every class size
//! is a multiple of 16, and blocks are laid from the start of a 64 KiB
//! aligned span, so a block of a class whose size is a multiple of `a` is
//! `a`-aligned: aligned requests pick the first class with that property.

use crate::region::PAGE_SIZE;

/// Number of small size classes.
pub const N_CLASSES: usize = 48;
/// The largest small block; anything larger is a large allocation.
pub const MAX_SMALL: usize = 128 << 10;

const fn compute_size(c: usize) -> usize {
    if c < 8 {
        16 * (c + 1)
    } else {
        let g = (c - 8) / 4;
        let i = (c - 8) % 4;
        let k = 7 + g;
        (1 << k) + (i + 1) * (1 << (k - 2))
    }
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
        let step = 1 << (k - 2);
        let idx = (size - 1 - (1 << k)) / step;
        8 + (k - 7) * 4 + idx
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

/// Pages (of 64 KiB) in one span of class `c`: at least 8 blocks a span,
/// and 32 where that takes no more than [`SPAN_PAGES_FOR_32`] pages.
#[inline]
pub fn span_pages(c: usize) -> usize {
    let size = CLASS_SIZE[c] as usize;
    let for_32 = (size * 32).div_ceil(PAGE_SIZE);
    let pages = if for_32 <= SPAN_PAGES_FOR_32 {
        for_32
    } else {
        (size * 8).div_ceil(PAGE_SIZE)
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
