/* Reserve, then commit with MAP_FIXED: how the JVM takes its heap. A
 * PROT_NONE reservation of 1 GiB, committed in 32 MiB steps by read-write
 * MAP_FIXED mappings over it, uncommitted by a PROT_NONE MAP_FIXED one.
 * Usage: fixed glibc|frostheap. Under glibc every step of 8 is committed;
 * under the library with FROSTHEAP_MAX=128M the limit stops it with ENOMEM
 * after at most four, a commit over pages already committed costs nothing,
 * and uncommitted or unmapped steps are free to commit again. Then a
 * mapping grows and shrinks with mremap.
 * Prints "fixed: N checks, F failures". */
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
    void *p = mmap(r + i * STEP, STEP, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    CHECK(p == r + i * STEP);
    memset(p, i + 1, STEP);
    return 1;
}

static int uncommit(char *r, int i) {
    void *p = mmap(r + i * STEP, STEP, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return p != MAP_FAILED;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: fixed glibc|frostheap\n");
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
    /* Committing a step again replaces pages that count already: it costs
     * nothing, even at the limit, and its contents are fresh zeroes. */
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
    /* A mapping that grows and shrinks with mremap, then goes. */
    char *m = mmap(NULL, STEP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    if (m == MAP_FAILED) goto out;
    memset(m, 7, STEP);
    char *g = mremap(m, STEP, 2 * STEP, MREMAP_MAYMOVE);
    CHECK(g != MAP_FAILED && g[STEP - 1] == 7);
    if (g == MAP_FAILED) goto out;
    memset(g + STEP, 8, STEP);
    char *s = mremap(g, 2 * STEP, STEP / 2, 0);
    CHECK(s == g && s[0] == 7);
    CHECK(munmap(s, STEP / 2) == 0);
out:
    printf("fixed: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
