//! Regression: an explicit Heap built on main under frostheap::Global has
//! its bookkeeping inside the main heap; freezing and thawing both heaps
//! must never write frozen memory. Also the Runtime itself is boxed in the
//! main heap. Exits non-zero on failure.
use std::alloc::Layout;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    let heap = frostheap::Heap::builder()
        .name("index")
        .max(256 << 20)
        .build()
        .unwrap();
    let main = frostheap::main_heap().expect("Global installed");
    let rt = Box::new(
        frostheap::Runtime::builder()
            .workers(2)
            .guard(&heap)
            .build()
            .unwrap(),
    );
    assert!(
        main.owns(&*rt as *const _ as *const u8),
        "the runtime lives in the main heap"
    );
    let mut v = allocator_api2::vec::Vec::new_in(heap.clone());
    v.extend(0..100_000u64);
    for round in 0..50 {
        let s: Vec<u64> = rt.map(0..8u64, |i| v[i as usize * 1000] + round).unwrap();
        assert_eq!(s[3], 3000 + round);
        // Between phases both heaps are writable, and the heap can grow.
        v.extend(0..1000u64);
        let p = heap
            .try_alloc(Layout::from_size_align(1 << 20, 8).unwrap())
            .unwrap();
        unsafe { heap.dealloc(p) };
    }
    let r = rt.map(0..4usize, |i| {
        if i == 2 {
            let p = &v[10] as *const u64 as *mut u64;
            unsafe { p.write_volatile(1) };
        }
        i
    });
    let e = r.expect_err("the write to the explicit heap must be caught");
    assert_eq!(e.violation().unwrap().heap_name(), "index");
    assert_eq!(v[10], 10);

    // Large result vectors live in the main heap with their own pages
    // exempted from the freeze: results are written, other main-heap data
    // stays frozen in the same phase.
    let main_data: Vec<u64> = (0..1000).collect();
    for _ in 0..3 {
        let big: Vec<u64> = rt.map(0..200_000u64, |i| i * 3).unwrap();
        assert!(
            main.owns(big.as_ptr()),
            "a 1.6 MB result vector lives in the main heap"
        );
        assert!(big.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    }
    let r = rt.map(0..200_000u64, |i| {
        if i == 77_777 {
            let p = &main_data[5] as *const u64 as *mut u64;
            unsafe { p.write_volatile(0) };
        }
        i
    });
    let e = r.expect_err("main-heap data stays frozen while the results are written");
    assert_eq!(e.violation().unwrap().heap_name(), "main");
    assert_eq!(e.violation().unwrap().item_index(), Some(77_777));
    assert_eq!(main_data[5], 5);
    println!("nested guards: ok ({} phases)", rt.stats().phases);
}
