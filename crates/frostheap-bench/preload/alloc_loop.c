/* A C allocation loop: a working set of 8192 slots, each replaced by a
 * block of a random size (mostly small, some up to 64 KiB), with some
 * reallocs and callocs. Prints a checksum so nothing is optimised out. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 20000000;
    enum { SLOTS = 8192 };
    static unsigned char *slot[SLOTS];
    static size_t len[SLOTS];
    uint64_t x = 0x9E3779B97F4A7C15ull, sum = 0;
    for (long i = 0; i < ops; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned s = (unsigned)(x % SLOTS);
        size_t n = (x >> 32) % 64 == 0 ? (size_t)((x >> 40) % 65536) : (size_t)((x >> 40) % 512) + 1;
        if (slot[s] && (x >> 20) % 8 == 0) {
            unsigned char *q = realloc(slot[s], n + 1);
            if (!q) return 1;
            slot[s] = q;
            len[s] = n + 1;
        } else {
            free(slot[s]);
            slot[s] = (x >> 24) % 4 == 0 ? calloc(1, n + 1) : malloc(n + 1);
            if (!slot[s]) return 1;
            len[s] = n + 1;
        }
        slot[s][0] = (unsigned char)i;
        slot[s][len[s] - 1] = (unsigned char)(i >> 3);
        sum += slot[s][len[s] - 1] + slot[s][0];
    }
    for (unsigned s = 0; s < SLOTS; s++) free(slot[s]);
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
