//! A parallel task writes the main heap; the runtime reports it.
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static GLOBAL: frostheap::Global = frostheap::Global;

fn main() {
    println!("main prints first");
    let data: Vec<AtomicU64> = build_data();
    let rt = frostheap::Runtime::builder().workers(2).build().unwrap();
    println!("backend {:?}", rt.backend());
    let out = rt.map(0..8u64, |i| {
        println!("task {i} on {:?}", std::thread::current().name());
        let v: Vec<u64> = (0..100).collect();
        v.iter().sum::<u64>() + i
    });
    println!("ok map: {:?}", out.map(|v| v.len()));
    let r = rt.map(0..8usize, |i| {
        if i == 5 {
            data[3].fetch_add(1, Ordering::Relaxed);
        }
        i
    });
    match r {
        Err(e) => println!("{e}"),
        Ok(v) => println!("no violation?! {v:?}"),
    }
    println!("data[3] = {}", data[3].load(Ordering::Relaxed));
    let again = rt.map(0..4u32, |i| i * 2).unwrap();
    println!("again {again:?} stats {:?}", rt.stats());
}

#[inline(never)]
fn build_data() -> Vec<AtomicU64> {
    (0..1000).map(AtomicU64::new).collect()
}
