/* A program that grows its break itself (an allocator of its own on sbrk
 * and brk). Usage: brk glibc|frostheap. Under glibc it grows by 8 MiB steps
 * eight times; under the library with FROSTHEAP_MAX=32M the limit stops it
 * with ENOMEM after at most four; shrinking gives the memory back, so it
 * grows as far again, and brk moves the break both ways; brk(0), which moves
 * nothing, gives nothing back.
 * Prints "brk: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

enum { STEPS = 8 };
#define STEP ((intptr_t)8 << 20)

/* Grows the break by up to STEPS steps, touching each; returns how many. */
static int grow(void) {
    int n = 0;
    errno = 0;
    while (n < STEPS) {
        char *p = sbrk(STEP);
        if (p == (void *)-1)
            break;
        memset(p, n + 1, STEP);
        n++;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: brk glibc|frostheap\n");
        return 2;
    }
    int frostheap = !strcmp(argv[1], "frostheap");
    char *start = sbrk(0);
    CHECK(start != (void *)-1);
    int n = grow();
    if (frostheap) {
        CHECK(n >= 1 && n <= 4);
        CHECK(errno == ENOMEM);
    } else {
        CHECK(n == STEPS);
    }
    CHECK(sbrk(-(intptr_t)n * STEP) != (void *)-1);
    CHECK(sbrk(0) == start);
    /* Given back: it grows as far again. */
    CHECK(grow() == n);
    CHECK(sbrk(-(intptr_t)n * STEP) != (void *)-1);
    /* brk both ways. */
    CHECK(brk(start + STEP) == 0);
    CHECK(sbrk(0) == start + STEP);
    start[STEP - 1] = 1;
    CHECK(brk(start) == 0);
    CHECK(sbrk(0) == start);
    /* brk(0): glibc says 0, and the kernel leaves the break where it is
     * (below the break's start, the address is ignored): the step it holds
     * still counts, so one step fewer fits. */
    CHECK(sbrk(STEP) == start);
    CHECK(brk(0) == 0);
    CHECK(sbrk(0) == start + STEP);
    int m = grow();
    CHECK(m == (frostheap ? n - 1 : STEPS));
    CHECK(sbrk(-(intptr_t)(m + 1) * STEP) != (void *)-1);
    CHECK(sbrk(0) == start);
    printf("brk: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
