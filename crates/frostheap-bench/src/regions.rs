//! Memory committed to a given size, for benchmarks of what freezing,
//! guarding and violations cost: a frostheap [`Heap`] grown by allocating
//! and touching ([`GrownHeap`]), and its baseline, a plain `mmap`
//! reservation whose prefix is committed and `mprotect`ed directly
//! ([`RawRegion`]). Both come on transparent huge pages or on 4 KiB pages;
//! [`huge_backed`] reads from `/proc/self/smaps` how much of a range the
//! kernel really backs with huge pages.

use std::alloc::Layout;

use frostheap::{Heap, HugePages};

use crate::interleave::time_ns;

const MIB: usize = 1 << 20;
const HUGE: usize = 2 * MIB;
const PAGE: usize = 4096;

/// The raw baseline: a plain anonymous `mmap` reservation whose prefix is
/// committed read-write and frozen with `mprotect` directly.
pub struct RawRegion {
    map: *mut u8,
    map_len: usize,
    base: *mut u8,
    reserved: usize,
    committed: usize,
}

impl RawRegion {
    /// Reserves `len` bytes (PROT_NONE), 2 MiB aligned, advised for huge
    /// pages when `huge`.
    pub fn new(len: usize, huge: bool) -> RawRegion {
        let map_len = len + HUGE;
        // SAFETY: a fresh anonymous reservation; no existing memory is
        // touched.
        let map = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap of {len} bytes");
        let map = map as *mut u8;
        let base = ((map as usize + HUGE - 1) & !(HUGE - 1)) as *mut u8;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [base, base + len) lies inside the reservation.
        let rc = unsafe { libc::madvise(base.cast(), len, advice) };
        assert_eq!(rc, 0, "madvise");
        RawRegion {
            map,
            map_len,
            base,
            reserved: len,
            committed: 0,
        }
    }

    /// The first address of the region (2 MiB aligned).
    pub fn base(&self) -> usize {
        self.base as usize
    }

    /// Commits (read-write) and touches the prefix up to `len`.
    pub fn grow_to(&mut self, len: usize) {
        assert!(len <= self.reserved);
        if len <= self.committed {
            return;
        }
        // SAFETY: [base + committed, base + len) is inside the reservation,
        // page aligned.
        let rc = unsafe {
            libc::mprotect(
                self.base.add(self.committed).cast(),
                len - self.committed,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(rc, 0, "mprotect commit");
        touch(self.base as usize + self.committed, len - self.committed);
        self.committed = len;
    }

    /// One freeze + thaw of the committed prefix, in ns.
    pub fn freeze_thaw(&self) -> f64 {
        time_ns(|| {
            // SAFETY: the committed prefix is ours; nothing else uses it.
            unsafe {
                let rc = libc::mprotect(self.base.cast(), self.committed, libc::PROT_READ);
                debug_assert_eq!(rc, 0);
                let rc = libc::mprotect(
                    self.base.cast(),
                    self.committed,
                    libc::PROT_READ | libc::PROT_WRITE,
                );
                debug_assert_eq!(rc, 0);
            }
        })
    }
}

impl Drop for RawRegion {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}

/// Writes one byte per 4 KiB page of `[addr, addr + len)`.
fn touch(addr: usize, len: usize) {
    let mut a = addr;
    while a < addr + len {
        // SAFETY: callers pass committed, writable memory they own.
        unsafe { (a as *mut u8).write_volatile(1) };
        a += PAGE;
    }
}

/// Bytes of `[addr, addr + len)` backed by huge pages, from
/// /proc/self/smaps (mappings overlapping the range, counted whole).
pub fn huge_backed(addr: usize, len: usize) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut total = 0;
    let mut inside = false;
    for line in text.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, e)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
                {
                    inside = s < addr + len && e > addr;
                    continue;
                }
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("AnonHugePages:") {
                let kb: usize = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                total += kb * 1024;
            }
        }
    }
    total
}

/// A frostheap [`Heap`] committed by allocating and touching blocks.
pub struct GrownHeap {
    /// The heap.
    pub heap: Heap,
    /// Blocks allocated to grow it (never freed: the heap is dropped whole).
    pub blocks: usize,
}

impl GrownHeap {
    /// A heap that can grow to `max` (plus slack), on huge pages when
    /// `huge` (`HugePages::On`), else on 4 KiB pages (`HugePages::Off`).
    pub fn new(max: usize, huge: bool) -> GrownHeap {
        let heap = Heap::builder()
            .name(if huge { "bench-thp" } else { "bench-4k" })
            .max(max + 256 * MIB)
            .huge_pages(if huge { HugePages::On } else { HugePages::Off })
            .build()
            .expect("a benchmark heap");
        GrownHeap { heap, blocks: 0 }
    }

    /// Bytes the heap has committed.
    pub fn committed(&self) -> usize {
        self.heap.stats().committed
    }

    /// Allocates and touches blocks until at least `target` bytes are
    /// committed. Blocks are never freed (the heap is dropped whole).
    pub fn grow_to(&mut self, target: usize) {
        while self.committed() < target {
            let want = (target - self.committed()).clamp(MIB, 64 * MIB);
            let layout = Layout::from_size_align(want, PAGE).expect("layout");
            let p = self.heap.try_alloc(layout).expect("growing the heap");
            touch(p.as_ptr() as usize, want);
            self.blocks += 1;
        }
    }

    /// One freeze + thaw through the runtime's own path
    /// (`Heap::bench_freeze`), in ns.
    pub fn freeze_thaw(&self) -> f64 {
        time_ns(|| {
            self.heap.bench_freeze(true).expect("freeze");
            self.heap.bench_freeze(false).expect("thaw");
        })
    }
}
