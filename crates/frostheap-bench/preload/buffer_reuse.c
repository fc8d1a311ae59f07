/* One buffer reused ROUNDS times, as a program reuses a line or message
 * buffer: each round asks for 0 - 300,000 bytes at random; a buffer too
 * small grows to twice its size or the request, whichever is larger (what
 * Rust's Vec and most string builders do), the bytes are written, and
 * the buffer is shrunk back to the request (what `shrink_to` does). An
 * allocator that copies the buffer at each resize spends its time in
 * memmove; one that keeps large blocks where they are, growing into the
 * pages after them and giving their tail back, copies almost nothing.
 *
 * usage: buffer_reuse [ROUNDS]   (default 200000); prints the wall time */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock_rng.h"

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 200000;
    if (rounds < 1) {
        fprintf(stderr, "usage: buffer_reuse [ROUNDS(>0)]\n");
        return 2;
    }
    uint64_t x = 71, sum = 0;
    size_t cap = 0;
    char *b = NULL;
    double t0 = now_ns();
    for (long r = 0; r < rounds; r++) {
        size_t n = next(&x) % 300000;
        if (n > cap) {
            size_t want = cap * 2 > n ? cap * 2 : n;
            char *q = realloc(b, want);
            if (!q) {
                fprintf(stderr, "buffer_reuse: out of memory\n");
                return 1;
            }
            b = q, cap = want;
        }
        memset(b, (int)r, n);
        sum += n ? (unsigned char)b[n - 1] : 0;
        if (n >= 4096 && n < cap) {
            char *q = realloc(b, n);
            if (q)
                b = q, cap = n;
        }
    }
    free(b);
    printf("buffer_reuse: %ld rounds in %.3f s (check %llu)\n", rounds,
           (now_ns() - t0) / 1e9, (unsigned long long)sum);
    return 0;
}
