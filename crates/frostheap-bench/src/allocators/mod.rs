//! The allocators under test, behind one tiny trait so that every workload
//! is monomorphised per allocator and calls it directly (no dynamic
//! dispatch in the timed loops).
//!
//! Four allocators are reached through [`GlobalAlloc`] exactly as a program
//! that installs them would reach them: `std::alloc::System` (glibc
//! malloc here), `mimalloc::MiMalloc`, `tikv_jemallocator::Jemalloc`, and
//! `frostheap::Global`. The benchmark binary installs `frostheap::Global`
//! as its `#[global_allocator]`, so the main thread (which runs every timed
//! loop) owns the main heap and takes frostheap's owner fast path. A fifth
//! subject is an explicit [`frostheap::Heap`] built on the main thread,
//! used through `allocator_api2::alloc::Allocator` — the path a program
//! with its own heaps takes.
//!
//! [`workload`] holds the allocation workloads the `frostheap-bench`
//! binary (`src/main.rs`) times; a new allocator benchmark (more threads,
//! other sizes) adds its workload there and calls it through
//! [`with_subject!`](crate::with_subject).

pub mod workload;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;

/// An allocator as the workloads see it.
pub trait Subject: Sync {
    /// Allocates a block for `layout`; null on failure.
    ///
    /// # Safety
    /// 1. `layout` has a non-zero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    /// 1. `ptr` came from [`Subject::alloc`] on this subject with `layout`
    ///    and was not freed since.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout);
}

/// Any [`GlobalAlloc`], called through that trait.
pub struct ViaGlobal<A>(pub A);

impl<A: GlobalAlloc + Sync> Subject for ViaGlobal<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded (1): a non-zero size is GlobalAlloc's contract.
        unsafe { self.0.alloc(layout) }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded (1).
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// A [`frostheap::Heap`], called through `Allocator`.
pub struct ViaHeap(pub frostheap::Heap);

impl Subject for ViaHeap {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.0.allocate(layout) {
            Ok(p) => p.cast::<u8>().as_ptr(),
            Err(_) => std::ptr::null_mut(),
        }
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: by (1) ptr is a live, non-null block of this heap.
        unsafe { self.0.deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

/// Which allocator a column is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `std::alloc::System` (glibc malloc).
    System,
    /// `mimalloc::MiMalloc`.
    Mimalloc,
    /// `tikv_jemallocator::Jemalloc`.
    Jemalloc,
    /// `frostheap::Global`, the bench's global allocator, main thread.
    FrostGlobal,
    /// A `frostheap::Heap` built on the main thread.
    FrostHeap,
}

impl Which {
    /// Every subject, in column order.
    pub const ALL: [Which; 5] = [
        Which::System,
        Which::Mimalloc,
        Which::Jemalloc,
        Which::FrostGlobal,
        Which::FrostHeap,
    ];

    /// The baselines frostheap is compared with.
    pub const OTHERS: [Which; 3] = [Which::System, Which::Mimalloc, Which::Jemalloc];

    /// The frostheap subjects.
    pub const FROST: [Which; 2] = [Which::FrostGlobal, Which::FrostHeap];

    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Which::System => "system",
            Which::Mimalloc => "mimalloc",
            Which::Jemalloc => "jemalloc",
            Which::FrostGlobal => "frostheap Global",
            Which::FrostHeap => "frostheap Heap",
        }
    }

    /// Short label for ratio columns.
    pub fn short(self) -> &'static str {
        match self {
            Which::System => "sys",
            Which::Mimalloc => "mi",
            Which::Jemalloc => "je",
            Which::FrostGlobal => "G",
            Which::FrostHeap => "H",
        }
    }
}

/// The five subjects, built once.
pub struct Subjects {
    /// `System`.
    pub system: ViaGlobal<System>,
    /// mimalloc.
    pub mimalloc: ViaGlobal<mimalloc::MiMalloc>,
    /// jemalloc.
    pub jemalloc: ViaGlobal<tikv_jemallocator::Jemalloc>,
    /// frostheap's global allocator (main heap on the main thread).
    pub frost_global: ViaGlobal<frostheap::Global>,
    /// An explicit heap owned by the main thread.
    pub frost_heap: ViaHeap,
}

impl Subjects {
    /// Builds the subjects. Call on the main thread: it becomes the owner
    /// of the explicit heap.
    pub fn build() -> Subjects {
        let heap = frostheap::Heap::builder()
            .name("bench")
            .build()
            .expect("cannot build the bench heap");
        Subjects {
            system: ViaGlobal(System),
            mimalloc: ViaGlobal(mimalloc::MiMalloc),
            jemalloc: ViaGlobal(tikv_jemallocator::Jemalloc),
            frost_global: ViaGlobal(frostheap::Global),
            frost_heap: ViaHeap(heap),
        }
    }
}

/// Calls `$body` with `$s` bound to the subject `$which` names, as a
/// concrete type (so the body is monomorphised per allocator).
#[macro_export]
macro_rules! with_subject {
    ($subjects:expr, $which:expr, |$s:ident| $body:expr) => {
        match $which {
            $crate::allocators::Which::System => {
                let $s = &$subjects.system;
                $body
            }
            $crate::allocators::Which::Mimalloc => {
                let $s = &$subjects.mimalloc;
                $body
            }
            $crate::allocators::Which::Jemalloc => {
                let $s = &$subjects.jemalloc;
                $body
            }
            $crate::allocators::Which::FrostGlobal => {
                let $s = &$subjects.frost_global;
                $body
            }
            $crate::allocators::Which::FrostHeap => {
                let $s = &$subjects.frost_heap;
                $body
            }
        }
    };
}
