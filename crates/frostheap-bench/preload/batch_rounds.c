/* Rounds of a batch: BATCH zeroed buffers of 1-65 KiB made, each touched
 * at its end, then all freed; ROUNDS times. What a garbage collector's
 * rounds do to the allocator under a runtime (V8 frees its ArrayBuffers'
 * backing stores in batches): the memory a round frees is what the next
 * one makes again. Prints a checksum (the same under every allocator).
 *
 * usage: batch_rounds BATCH ROUNDS */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: batch_rounds BATCH ROUNDS\n");
        return 2;
    }
    long batch = atol(argv[1]), rounds = atol(argv[2]);
    if (batch < 1 || rounds < 1) return 2;
    unsigned char **p = malloc(sizeof *p * (size_t)batch);
    if (!p) return 1;
    unsigned long sum = 0;
    for (long r = 0; r < rounds; r++) {
        for (long i = 0; i < batch; i++) {
            size_t n = 1024 + (size_t)(r * batch + i) * 7919 % 65536;
            p[i] = calloc(1, n);
            if (!p[i]) return 1;
            p[i][n - 1] = (unsigned char)i;
            sum += p[i][0] + p[i][n - 1];
        }
        for (long i = 0; i < batch; i++) free(p[i]);
    }
    free(p);
    printf("%lu\n", sum);
    return 0;
}
