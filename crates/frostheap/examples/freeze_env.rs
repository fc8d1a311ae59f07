//! Builds a runtime from the environment (`FROSTHEAP_PROTECT`,
//! `FROSTHEAP_ON_VIOLATION`) without `frostheap::Global`, so a bad value
//! reaches `Runtime::builder().build()` as `Error::InvalidConfig`; on
//! success, runs one phase whose task writes the guarded heap and prints
//! the backend and how many writes were audited. Used by
//! tests/it/freeze.rs.

use frostheap::{Error, Heap, Runtime};

fn main() {
    let heap = Heap::builder()
        .name("env")
        .max(16 << 20)
        .build()
        .expect("heap");
    let mut v = allocator_api2::vec::Vec::new_in(heap.clone());
    v.extend(0..64u64);
    let at = v.as_mut_ptr() as usize + 8;
    match Runtime::builder().workers(1).guard(&heap).build() {
        Ok(rt) => {
            let out = rt.for_each(0..1u8, |_| {
                // SAFETY: `at` points into the live vector; under the audit
                // policy the store lands and is recorded.
                unsafe { (at as *mut u64).write_volatile(99) };
            });
            println!(
                "ok backend={} audited={} result_ok={}",
                rt.backend().name(),
                rt.audit_log().len(),
                out.is_ok()
            );
        }
        Err(e) => {
            if let Error::InvalidConfig { name, value, .. } = &e {
                println!("InvalidConfig name={name} value={value}");
            }
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
