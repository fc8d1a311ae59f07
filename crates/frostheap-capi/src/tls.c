/* The calling thread's heap, for libfrostheap.so's fast paths (src/tls.rs).
 *
 * Initial-exec TLS: an access is two instructions (load the variable's
 * offset from the thread pointer out of the GOT, load through %fs), where
 * a Rust thread-local in a shared library takes a call to __tls_get_addr.
 * Valid for a library that is part of the initial TLS block (LD_PRELOAD,
 * DT_NEEDED); dlopen() finds room for the 8 bytes in glibc's surplus of
 * static TLS (tests/preload.rs: dlopen_then_allocate). Hidden: the
 * variable is the library's own, never interposed. */
__attribute__((visibility("hidden"), tls_model("initial-exec")))
__thread void *frostheap_thread_heap;

/* Sets the calling thread's heap (slow paths only). */
__attribute__((visibility("hidden")))
void frostheap_set_thread_heap(void *heap) {
    frostheap_thread_heap = heap;
}
