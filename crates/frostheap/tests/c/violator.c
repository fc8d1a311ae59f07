/* A C function that stores into memory it is handed: the violation
 * matrix calls it through FFI with a pointer into a frozen heap, to show
 * that writes made by C code are caught like Rust's. Compiled by build.rs
 * into a static library that only the integration tests link. */
#include <stdint.h>

void frostheap_test_c_store(uint64_t *p, uint64_t value) {
    *(volatile uint64_t *)p = value;
}
