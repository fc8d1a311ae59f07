/* mremap keeps each page's state: a mapping whose first part was made
 * PROT_NONE (no longer counted) stays uncounted there when it shrinks,
 * is shrunk or moved, and the growth of a writable mapping is charged, of a
 * PROT_NONE one not.
 * Usage: mremap_states glibc|frostheap; under the library with
 * FROSTHEAP_MAX=64M. Prints "mremap_states: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

#define M ((size_t)1 << 20)

static char *map_rw(size_t len) {
    return mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/* Whether `len` more writable bytes can be mapped now (then unmapped). */
static int fits(size_t len) {
    char *p = map_rw(len);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, len);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: mremap_states glibc|frostheap\n");
        return 2;
    }
    int frostheap = !strcmp(argv[1], "frostheap");
    /* 40 MiB, its first 39 MiB made PROT_NONE, shrunk to those: nothing
     * counts, so 60 MiB more fit under 64 MiB. */
    char *p = map_rw(40 * M);
    CHECK(p != MAP_FAILED);
    memset(p, 1, 40 * M);
    CHECK(mprotect(p, 39 * M, PROT_NONE) == 0);
    char *q = mremap(p, 40 * M, 39 * M, 0);
    CHECK(q == p);
    CHECK(fits(60 * M));
    CHECK(munmap(q, 39 * M) == 0);
    /* 40 MiB, its first 30 made PROT_NONE, shrunk to those 30 and moved
     * (to a place reserved for it): nothing counts. */
    char *dest = mmap(0, 30 * M, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(dest != MAP_FAILED);
    p = map_rw(40 * M);
    CHECK(p != MAP_FAILED);
    memset(p, 2, 40 * M);
    CHECK(mprotect(p, 30 * M, PROT_NONE) == 0);
    q = mremap(p, 40 * M, 30 * M, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
    CHECK(q == dest);
    CHECK(fits(60 * M));
    /* Made writable again, it counts again. */
    CHECK(mprotect(q, 30 * M, PROT_READ | PROT_WRITE) == 0);
    CHECK(q[0] == 2);
    if (frostheap)
        CHECK(!fits(40 * M));
    CHECK(munmap(q, 30 * M) == 0);
    /* 10 MiB grown to 20 (moved or not): the growth of a writable mapping
     * is charged, 20 count: 40 more fit, 50 do not. */
    p = map_rw(10 * M);
    CHECK(p != MAP_FAILED);
    memset(p, 3, 10 * M);
    q = mremap(p, 10 * M, 20 * M, MREMAP_MAYMOVE);
    CHECK(q != MAP_FAILED);
    CHECK(q[10 * M - 1] == 3);
    memset(q + 10 * M, 4, 10 * M);
    CHECK(fits(40 * M));
    if (frostheap) {
        errno = 0;
        CHECK(!fits(50 * M) && errno == ENOMEM);
    }
    /* A PROT_NONE mapping grown: nothing charged for the growth. */
    CHECK(mprotect(q, 20 * M, PROT_NONE) == 0);
    q = mremap(q, 20 * M, 30 * M, MREMAP_MAYMOVE);
    CHECK(q != MAP_FAILED);
    CHECK(fits(60 * M));
    CHECK(munmap(q, 30 * M) == 0);
    printf("mremap_states: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
