//! Collections in a heap: `allocator_api2::vec::Vec` and hashbrown maps
//! (through `Allocator`), from the owner thread and from another thread.

use allocator_api2::vec::Vec as HeapVec;
use hashbrown::HashMap;

use frostheap::Heap;

use crate::check::roomy_heap;

fn fill_map(heap: &Heap, n: u64) -> HashMap<u64, HeapVec<u64, Heap>, std::hash::RandomState, Heap> {
    let mut map = HashMap::with_hasher_in(std::hash::RandomState::new(), heap.clone());
    for k in 0..n {
        let mut v = HeapVec::new_in(heap.clone());
        v.extend((0..k % 50).map(|j| k * 1000 + j));
        map.insert(k, v);
    }
    map
}

fn check_map(
    heap: &Heap,
    map: &HashMap<u64, HeapVec<u64, Heap>, std::hash::RandomState, Heap>,
    n: u64,
) {
    assert_eq!(map.len() as u64, n);
    for k in 0..n {
        let v = &map[&k];
        assert_eq!(v.len() as u64, k % 50);
        assert!(
            v.iter().enumerate().all(|(j, &x)| x == k * 1000 + j as u64),
            "values of key {k}"
        );
        if !v.is_empty() {
            assert!(
                heap.owns(v.as_ptr()),
                "vector of key {k} is not in the heap"
            );
        }
    }
    // The table itself: its entries live in the heap.
    let (k, v) = map.get_key_value(&0).unwrap();
    assert!(
        heap.owns(k as *const u64) && heap.owns(v as *const HeapVec<u64, Heap>),
        "map entries not in the heap"
    );
}

test!(hashbrown_map_lives_in_the_heap_and_gives_everything_back);
fn hashbrown_map_lives_in_the_heap_and_gives_everything_back() {
    let heap = roomy_heap("map");
    let n: u64 = 20_000;
    let mut map = HashMap::new_in(heap.clone());
    for k in 0..n {
        map.insert(k, k * 3);
    }
    let s = heap.stats();
    // One table allocation holding at least n entries of 16 bytes.
    assert_eq!(s.allocations, 1, "{s:?}");
    assert!(s.in_use >= n as usize * 16, "{s:?}");
    assert!(heap.owns(map.get_key_value(&7).unwrap().0 as *const u64));
    assert!((0..n).all(|k| map[&k] == k * 3));
    drop(map);
    assert_eq!((heap.stats().in_use, heap.stats().allocations), (0, 0));

    let map = fill_map(&heap, 5000);
    check_map(&heap, &map, 5000);
    // The table plus one block per non-empty vector.
    assert_eq!(
        heap.stats().allocations,
        1 + (0..5000).filter(|k| k % 50 != 0).count()
    );
    drop(map);
    assert_eq!((heap.stats().in_use, heap.stats().allocations), (0, 0));
}

test!(map_built_on_another_thread_dropped_on_the_owner);
fn map_built_on_another_thread_dropped_on_the_owner() {
    let heap = roomy_heap("map-shared");
    let map = {
        let heap = heap.clone();
        std::thread::spawn(move || {
            let map = fill_map(&heap, 3000);
            check_map(&heap, &map, 3000);
            map
        })
        .join()
        .unwrap()
    };
    check_map(&heap, &map, 3000);
    assert!(heap.stats().in_use > 0);
    drop(map);
    assert_eq!((heap.stats().in_use, heap.stats().allocations), (0, 0));
}

test!(vec_grows_shrinks_and_keeps_contents);
fn vec_grows_shrinks_and_keeps_contents() {
    let heap = roomy_heap("vec");
    let mut v: HeapVec<u32, Heap> = HeapVec::new_in(heap.clone());
    for i in 0..300_000u32 {
        v.push(i);
        if i % 65_536 == 0 {
            assert!(heap.owns(v.as_ptr()));
        }
    }
    assert!(heap.stats().in_use >= 300_000 * 4);
    v.truncate(1000);
    v.shrink_to_fit();
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    assert!(heap.owns(v.as_ptr()));
    assert_eq!(heap.stats().allocations, 1);
    assert!(
        heap.stats().in_use < 8192,
        "shrink_to_fit gave nothing back: {:?}",
        heap.stats()
    );
    let w = v.clone();
    assert_eq!(w, v);
    assert!(heap.owns(w.as_ptr()));
    drop((v, w));
    assert_eq!(heap.stats().in_use, 0);
}
