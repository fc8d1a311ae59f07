/* Reserve, then commit with mprotect: how V8 (and .NET) take their heaps.
 * A PROT_NONE MAP_NORESERVE reservation of 1 GiB, committed in 32 MiB steps
 * by mprotect(PROT_READ | PROT_WRITE), uncommitted by mprotect(PROT_NONE)
 * and madvise(MADV_DONTNEED). Usage: protect glibc|frostheap. Under glibc
 * every step of 8 is committed; under the library with FROSTHEAP_MAX=128M
 * the limit stops it with ENOMEM after at most four, making committed
 * pages writable again costs nothing (also after they were made read-only
 * and executable, as a JIT does with its code), and uncommitted or
 * unmapped steps are free to commit again.
 * Prints "protect: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

enum { STEPS = 8 };
#define STEP ((size_t)32 << 20)
#define RESERVED ((size_t)1 << 30)

static char *reserve(void) {
    void *r = mmap(NULL, RESERVED, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        perror("reserve");
        return NULL;
    }
    return r;
}

/* Commits step i of the reservation, and touches it. */
static int commit(char *r, int i) {
    if (mprotect(r + i * STEP, STEP, PROT_READ | PROT_WRITE) != 0)
        return 0;
    memset(r + i * STEP, i + 1, STEP);
    return 1;
}

static int uncommit(char *r, int i) {
    return mprotect(r + i * STEP, STEP, PROT_NONE) == 0 &&
           madvise(r + i * STEP, STEP, MADV_DONTNEED) == 0;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: protect glibc|frostheap\n");
        return 2;
    }
    int frostheap = !strcmp(argv[1], "frostheap");
    char *r = reserve();
    CHECK(r != NULL);
    if (!r) goto out;
    int n = 0;
    errno = 0;
    while (n < STEPS && commit(r, n)) n++;
    if (frostheap) {
        CHECK(n >= 2 && n <= 4);
        CHECK(errno == ENOMEM);
    } else {
        CHECK(n == STEPS);
    }
    /* Making a committed step writable again costs nothing, even at the
     * limit, also after it was read-only and executable for a while. */
    CHECK(mprotect(r, STEP, PROT_READ | PROT_EXEC) == 0);
    CHECK(r[STEP - 1] == 1);
    CHECK(commit(r, 0));
    CHECK(r[STEP - 1] == 1);
    /* An uncommitted step is given back to the limit. */
    CHECK(uncommit(r, 0));
    if (frostheap) {
        CHECK(commit(r, n));
        CHECK(!commit(r, n + 1) && errno == ENOMEM);
    }
    CHECK(munmap(r, RESERVED) == 0);
    /* Everything was given back: a new reservation commits as much. */
    r = reserve();
    CHECK(r != NULL);
    if (!r) goto out;
    int again = 0;
    while (again < n && commit(r, again)) again++;
    CHECK(again == n);
    CHECK(munmap(r, RESERVED) == 0);
out:
    printf("protect: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
