/* A change of protection across a hole: Linux applies mprotect to the
 * range's mappings in address order and fails with ENOMEM at the first
 * hole, after changing the mappings before it. Usage: protect_hole
 * glibc|frostheap.
 *
 * 1. A 16 MiB PROT_NONE MAP_NORESERVE reservation A, a hole, and another
 *    reservation C; mprotect(A..C, PROT_READ | PROT_WRITE) fails with
 *    ENOMEM, and A is writable (written here). A counts: under the
 *    library with FROSTHEAP_MAX=64M, 16 MiB writable mappings are then
 *    granted twice, not three times (A was left uncounted, and a third
 *    was granted: 64 MiB mapped past the limit with the heap's own).
 * 2. Writable A, a hole, writable C; mprotect(A..C, PROT_NONE) fails
 *    with ENOMEM, and A is PROT_NONE: it stops counting, so three 16 MiB
 *    steps fit beside C, not two.
 * 3. A range that starts in a hole changes nothing and counts as before.
 * Under glibc alone every step is granted (8 at most are tried).
 * Prints "protect_hole: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

#define PIECE ((size_t)16 << 20)
enum { MOST = 8 };

static char *map(int prot, int flags) {
    void *p = mmap(NULL, 3 * PIECE, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Maps writable 16 MiB steps, touched, until refused or MOST; unmaps them
 * and returns how many were granted. */
static int steps(void) {
    char *got[MOST];
    int n = 0;
    while (n < MOST) {
        void *p = mmap(NULL, PIECE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            break;
        memset(p, 1, PIECE);
        got[n++] = p;
    }
    for (int i = 0; i < n; i++)
        CHECK(munmap(got[i], PIECE) == 0);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: protect_hole glibc|frostheap\n");
        return 2;
    }
    int frostheap = !strcmp(argv[1], "frostheap");
    printf("protect_hole: starting\n");
    fflush(stdout);

    /* 1. Made writable up to the hole. */
    char *r = map(PROT_NONE, MAP_NORESERVE);
    CHECK(r != NULL);
    if (!r) goto out;
    CHECK(munmap(r + PIECE, PIECE) == 0);
    errno = 0;
    CHECK(mprotect(r, 3 * PIECE, PROT_READ | PROT_WRITE) == -1 && errno == ENOMEM);
    memset(r, 2, PIECE); /* A is writable: the kernel changed it */
    int n = steps();
    CHECK(n == (frostheap ? 2 : MOST));
    CHECK(munmap(r, 3 * PIECE) == 0);
    CHECK(steps() == (frostheap ? 3 : MOST));

    /* 2. Made PROT_NONE up to the hole. */
    r = map(PROT_READ | PROT_WRITE, 0);
    CHECK(r != NULL);
    if (!r) goto out;
    CHECK(munmap(r + PIECE, PIECE) == 0);
    errno = 0;
    CHECK(mprotect(r, 3 * PIECE, PROT_NONE) == -1 && errno == ENOMEM);
    CHECK(madvise(r, PIECE, MADV_DONTNEED) == 0);
    CHECK(steps() == (frostheap ? 2 : MOST));
    CHECK(munmap(r, 3 * PIECE) == 0);

    /* 3. Starting in a hole: nothing changes. */
    r = map(PROT_NONE, MAP_NORESERVE);
    CHECK(r != NULL);
    if (!r) goto out;
    CHECK(munmap(r, PIECE) == 0);
    errno = 0;
    CHECK(mprotect(r, 3 * PIECE, PROT_READ | PROT_WRITE) == -1 && errno == ENOMEM);
    CHECK(steps() == (frostheap ? 3 : MOST));
    /* Made writable now, it counts. */
    CHECK(mprotect(r + PIECE, 2 * PIECE, PROT_READ | PROT_WRITE) == 0 || (frostheap && errno == ENOMEM));
    CHECK(munmap(r + PIECE, 2 * PIECE) == 0);
out:
    printf("protect_hole: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
