/* The growth path alone: N blocks of SIZE bytes allocated and kept (one
 * write each, so page faults count), then all freed; RUNS times, printing
 * "sample <ns per allocation>" per run. Every allocation carves a fresh
 * block, so this times the slow path a heap takes as it grows (new spans,
 * their carving and its charge against the limit), not the free lists:
 *
 *   cc -O2 -o /tmp/grow crates/frostheap-bench/preload/grow.c
 *   LD_PRELOAD=target/release/libfrostheap.so /tmp/grow 1000000 32 5
 */
#include <stdio.h>
#include <stdlib.h>

#include "clock_rng.h"

int main(int argc, char **argv) {
    long n = argc > 2 ? atol(argv[1]) : 0;
    long size = argc > 2 ? atol(argv[2]) : 0;
    int runs = argc > 3 ? atoi(argv[3]) : 5;
    if (n < 1 || size < 1 || runs < 1) {
        fprintf(stderr, "usage: grow N(>0) SIZE(>0) [RUNS(>0)]\n");
        return 2;
    }
    char **p = malloc(n * sizeof *p);
    if (!p) { fprintf(stderr, "grow: out of memory\n"); return 1; }
    for (int r = 0; r < runs; r++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            p[i] = malloc((size_t)size);
            if (!p[i]) { fprintf(stderr, "grow: out of memory\n"); return 1; }
            p[i][0] = 1;
        }
        double ns = (now_ns() - t0) / n;
        for (long i = 0; i < n; i++) free(p[i]);
        printf("sample %.3f\n", ns);
    }
    free(p);
    return 0;
}
