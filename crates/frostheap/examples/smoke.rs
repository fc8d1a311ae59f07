use std::alloc::Layout;
#[global_allocator]
static G: frostheap::Global = frostheap::Global;
fn main() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..1_000_000 { v.push(i); }
    let s: u64 = v.iter().sum();
    let h = frostheap::main_heap().unwrap();
    println!("sum {s} main owns v: {} stats {:?}", h.owns(v.as_ptr()), h.stats());
    drop(v);
    println!("after drop {:?}", h.stats());
    let heap = frostheap::Heap::builder().name("t").max(64 << 20).build().unwrap();
    let mut ps = vec![];
    for i in 0..10000 { ps.push(heap.try_alloc(Layout::from_size_align(16 + i % 3000, 8).unwrap()).unwrap()); }
    println!("{:?}", heap.stats());
    for p in ps { unsafe { heap.dealloc(p) } }
    println!("{:?}", heap.stats());
    let e = heap.try_alloc(Layout::from_size_align(100 << 20, 8).unwrap()).unwrap_err();
    println!("{e}");
    let t = std::thread::spawn(|| { let x: Vec<u8> = vec![1; 100]; x.len() }).join().unwrap();
    println!("thread {t}");
}
