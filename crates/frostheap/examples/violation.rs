//! A parallel task writes the main heap through an atomic; the runtime
//! reports it and the data stays intact. With `FROSTHEAP_TRACK_ALLOCS=1`
//! the report also says where the written block was allocated (in
//! `build_data`). Checks itself; exits non-zero on failure.
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    // The runtime first: building it routes allocations through
    // `unguarded`, after which tracked allocations must still be recorded —
    // including those the allocator's fast path could serve (a block of the
    // same size freed just before).
    let rt = frostheap::Runtime::builder().workers(2).build().unwrap();
    drop(std::hint::black_box(vec![0u64; 1000]));
    let data: Vec<AtomicU64> = build_data();
    let r = rt.map(0..8usize, |i| {
        if i == 5 {
            data[3].fetch_add(1, Ordering::Relaxed);
        }
        i
    });
    let e = r.expect_err("the write to the main heap is caught");
    let v = e.violation().expect("a violation");
    assert_eq!(v.item_index(), Some(5));
    assert_eq!(v.address(), &data[3] as *const AtomicU64 as usize);
    println!("{v}");
    assert_eq!(
        data[3].load(Ordering::Relaxed),
        3,
        "the store never happened"
    );
    assert_eq!(rt.map(0..4u32, |i| i * 2).unwrap(), vec![0, 2, 4, 6]);
    println!("violation example: ok");
}

#[inline(never)]
fn build_data() -> Vec<AtomicU64> {
    let data = (0..1000).map(AtomicU64::new).collect();
    // Not a tail call: this frame stays on the stack while the vector is
    // allocated, so the recorded site names it.
    std::hint::black_box(data)
}
