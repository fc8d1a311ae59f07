/* calloc of MIB MiB, ROUNDS times, each block freed before the next: with
 * MODE "touch" two bytes of it written (a sparse table), with "fill" all
 * of it (a buffer used whole). Exits 1 if a byte calloc returned is not
 * zero (those checked: the two touched, or every 4096th before filling).
 *
 * usage: calloc_rounds touch|fill MIB ROUNDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    int fill = !strcmp(argv[1], "fill");
    size_t size = strtoul(argv[2], NULL, 0) << 20;
    int rounds = atoi(argv[3]);
    for (int r = 0; r < rounds; r++) {
        unsigned char *p = calloc(1, size);
        if (!p)
            return 1;
        if (fill) {
            for (size_t o = 0; o < size; o += 4096)
                if (p[o])
                    return 1;
            memset(p, r + 1, size);
        } else {
            if (p[0] || p[size - 1])
                return 1;
            p[0] = p[size - 1] = 1;
        }
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
    return 0;
}
