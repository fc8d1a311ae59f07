/* Medium blocks, two ways. `medium time WINDOW OPS LO HI`: one thread
 * replaces blocks of LO..HI bytes at random in a window of WINDOW, writing
 * one byte of each, and prints "sample <ns per replacement>" (the
 * allocator's own cost: a program that fills such blocks spends far more).
 * `medium ring THREADS OPS`: each thread replaces blocks of 1 B - 64 KiB
 * in a ring of 32, filling each, and prints "refused <failed mallocs>"
 * (run it under FROSTHEAP_MAX to see how much of a limit the live blocks,
 * 16-32 MiB with 16 threads, leave usable). See span_pages in
 * crates/frostheap/src/heap/class.rs.
 *
 *   cc -O2 -pthread -o /tmp/medium crates/frostheap-bench/preload/medium.c
 *   LD_PRELOAD=target/release/libfrostheap.so /tmp/medium time 64 1000000 8192 131072
 *   LD_PRELOAD=target/release/libfrostheap.so FROSTHEAP_MAX=32M /tmp/medium ring 16 100000
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock_rng.h"

static long ops;
static atomic_long refused;

static void *ring(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uintptr_t)arg + 1);
    void *blocks[32] = {0};
    for (long i = 0; i < ops; i++) {
        free(blocks[i % 32]);
        size_t n = 1 + next(&x) % (64 << 10);
        blocks[i % 32] = malloc(n);
        if (blocks[i % 32]) memset(blocks[i % 32], 1, n);
        else atomic_fetch_add(&refused, 1);
    }
    for (int i = 0; i < 32; i++) free(blocks[i]);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "time")) {
        long window = atol(argv[2]), n = atol(argv[3]);
        size_t lo = atol(argv[4]), hi = atol(argv[5]);
        if (window < 1 || n < 1 || lo < 1 || hi < lo) { fprintf(stderr, "medium time: bad arguments\n"); return 2; }
        void **w = calloc(window, sizeof *w);
        uint64_t x = 88172645463325252ull;
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            uint64_t r = next(&x);
            long k = r % window;
            free(w[k]);
            char *p = malloc(lo + (r >> 32) % (hi - lo + 1));
            if (!p) { fprintf(stderr, "out of memory\n"); return 1; }
            p[0] = 1;
            w[k] = p;
        }
        printf("sample %.1f\n", (now_ns() - t0) / n);
        for (long k = 0; k < window; k++) free(w[k]);
        free(w);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "ring")) {
        int threads = atoi(argv[2]);
        ops = atol(argv[3]);
        if (threads < 1 || threads > 256 || ops < 1) { fprintf(stderr, "medium ring: bad arguments\n"); return 2; }
        pthread_t t[256];
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, ring, (void *)(uintptr_t)i);
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        printf("refused %ld\n", atomic_load(&refused));
        return 0;
    }
    fprintf(stderr, "usage: medium time WINDOW OPS LO HI | medium ring THREADS OPS\n");
    return 2;
}
