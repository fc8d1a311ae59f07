//! `frostheap::Global` as the global allocator: where blocks go and how
//! frees are routed. The main thread allocates from the main heap; other
//! threads from heaps of their own; a main-heap block freed (or grown) by
//! another thread goes back to the main heap.
//!
//! Run: `cargo run -p frostheap --example global_routing`. The integration
//! tests run it as a child process (tests/it/global_mode.rs); it checks
//! itself and prints one `ok` line with the main heap's limits.
//!
//! `global_routing remote-double-free` instead frees one main-heap block
//! twice from another thread, which must stop the process with a report.

use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

const MIB: usize = 1 << 20;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("remote-double-free") {
        remote_double_free();
    }
    let heap = frostheap::main_heap().expect("Global is the global allocator and has started");

    // 1. Main-thread allocations land in the main heap, small and large.
    let small = Box::new(7u64);
    let v: Vec<u64> = (0..1000).collect();
    let big = vec![1u8; 4 * MIB];
    assert!(
        heap.owns(&*small as *const u64),
        "main-thread Box not in the main heap"
    );
    assert!(
        heap.owns(v.as_ptr()),
        "main-thread Vec not in the main heap"
    );
    assert!(
        heap.owns(big.as_ptr()),
        "main-thread 4 MiB Vec not in the main heap"
    );
    assert!(heap.stats().in_use >= 4 * MIB + 8000);

    // 2. Other threads allocate from heaps of their own.
    let theirs = {
        let heap = heap.clone();
        thread::spawn(move || {
            let small = Box::new(7u64);
            let big = vec![1u8; 4 * MIB];
            assert!(
                frostheap::stats().threads_in_use >= 4 * MIB + 8,
                "another thread's allocations are not in a thread heap"
            );
            [heap.owns(&*small as *const u64), heap.owns(big.as_ptr())]
        })
        .join()
        .unwrap()
    };
    assert_eq!(
        theirs,
        [false, false],
        "another thread's allocations went to the main heap"
    );

    // 3. Main-heap blocks freed by another thread are routed back. The
    //    channels are warmed up first so their own blocks are allocated
    //    before the measurements.
    let (tx, rx) = mpsc::channel::<Vec<Box<[u8; 64]>>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let freer = thread::spawn(move || {
        for blocks in rx {
            drop(blocks);
            done_tx.send(()).unwrap();
        }
    });
    tx.send(Vec::new()).unwrap();
    done_rx.recv().unwrap();

    let before = heap.stats();
    let blocks: Vec<Box<[u8; 64]>> = (0..10_000).map(|i| Box::new([i as u8; 64])).collect();
    let during = heap.stats();
    assert!(
        during.allocations >= before.allocations + 10_001,
        "{before:?} -> {during:?}"
    );
    assert!(during.in_use >= before.in_use + 10_000 * 64);
    tx.send(blocks).unwrap();
    done_rx.recv().unwrap();
    let after = heap.stats();
    assert!(
        after.allocations + 10_001 <= during.allocations,
        "small remote frees not counted: {during:?} -> {after:?}"
    );
    assert!(
        after.in_use + 10_000 * 64 <= during.in_use,
        "small remote frees not counted: {during:?} -> {after:?}"
    );

    // A large block (its own path) freed by another thread.
    let during = heap.stats();
    drop(big);
    let after_local = heap.stats();
    assert!(
        after_local.in_use + 4 * MIB <= during.in_use,
        "local free of a large block"
    );
    // The thread and its channel exist before the measurement, so their
    // own allocations on main are not counted in it.
    let (tx_big, rx_big) = mpsc::sync_channel::<Vec<u8>>(1);
    let big_freer = thread::spawn(move || {
        let big = rx_big.recv().unwrap();
        assert!(
            big.iter().all(|&b| b == 2),
            "contents changed crossing threads"
        );
        drop(big);
    });
    let big = vec![2u8; 8 * MIB];
    let during = heap.stats();
    tx_big.send(big).unwrap();
    big_freer.join().unwrap();
    let after = heap.stats();
    assert!(
        after.in_use + 8 * MIB <= during.in_use,
        "large remote free not routed back: {during:?} -> {after:?}"
    );

    // 4. Another thread grows a main-heap Vec: the block moves to that
    //    thread's heap, keeps its contents, and leaves the main heap.
    let (tx_grow, rx_grow) = mpsc::sync_channel::<Vec<u32>>(1);
    let (tx_back, rx_back) = mpsc::sync_channel::<Vec<u32>>(1);
    let grower = {
        let heap = heap.clone();
        thread::spawn(move || {
            let mut grown = rx_grow.recv().unwrap();
            grown.extend(1 << 16..1 << 18);
            assert!(
                !heap.owns(grown.as_ptr()),
                "a realloc on another thread stayed in the main heap"
            );
            tx_back.send(grown).unwrap();
        })
    };
    let mut grown: Vec<u32> = Vec::with_capacity(1 << 16);
    grown.extend(0..1 << 16);
    assert!(heap.owns(grown.as_ptr()));
    let during = heap.stats();
    tx_grow.send(grown).unwrap();
    let grown = rx_back.recv().unwrap();
    grower.join().unwrap();
    assert!(
        grown.iter().enumerate().all(|(i, &x)| x == i as u32),
        "contents lost in a cross-thread realloc"
    );
    let after = heap.stats();
    assert!(
        after.in_use + (1 << 18) <= during.in_use,
        "the old block was not freed: {during:?} -> {after:?}"
    );
    drop(grown); // a thread heap's block freed on main: a remote free

    drop(tx);
    freer.join().unwrap();
    let s = heap.stats();
    println!(
        "global_routing: ok limit={} committed={} min_committed_ok={} in_use={}",
        s.limit,
        s.committed,
        s.committed
            >= std::env::var("FROSTHEAP_MIN")
                .ok()
                .and_then(|m| frostheap::parse_size(&m).ok())
                .unwrap_or(0),
        s.in_use
    );
}

/// Frees one main-heap block twice from another thread: the second free
/// finds the block's bit already set in the remote-free bitmap and aborts
/// with a report naming the pointer.
fn remote_double_free() {
    let layout = std::alloc::Layout::new::<[u64; 4]>();
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc(layout) } as usize;
    assert!(frostheap::main_heap().unwrap().owns(p as *const u8));
    println!("freeing 0x{p:x} twice");
    thread::spawn(move || {
        // SAFETY: deliberately not: the second free is the error under
        // test, which frostheap must catch before it corrupts anything.
        unsafe {
            std::alloc::dealloc(p as *mut u8, layout);
            std::alloc::dealloc(p as *mut u8, layout);
        }
    })
    .join()
    .unwrap();
    println!("survived a double free");
    std::process::exit(0);
}
