/* Private mappings of /dev/zero are anonymous memory (the kernel makes them
 * so) and count as such; shared ones and private mappings of a regular
 * file do not. Usage: devzero glibc|frostheap. Under glibc it maps eight
 * 16 MiB private writable steps of /dev/zero; under the library with
 * FROSTHEAP_MAX=32M the limit stops it with ENOMEM after at most two; a
 * read-only one made writable by mprotect is charged then (refused past
 * the limit); unmapping gives everything back; a 64 MiB shared /dev/zero
 * mapping and a 64 MiB private writable mapping of a file are not
 * refused. Prints "devzero: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

enum { STEPS = 8 };
#define STEP ((size_t)16 << 20)

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: devzero glibc|frostheap\n");
        return 2;
    }
    int frostheap = !strcmp(argv[1], "frostheap");
    int fd = open("/dev/zero", O_RDWR);
    CHECK(fd >= 0);
    char *steps[STEPS];
    int n = 0;
    errno = 0;
    while (n < STEPS) {
        char *p = mmap(0, STEP, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            break;
        memset(p, n + 1, STEP);
        steps[n++] = p;
    }
    if (frostheap) {
        CHECK(n >= 1 && n <= 2);
        CHECK(errno == ENOMEM);
    } else {
        CHECK(n == STEPS);
    }
    /* Read-only: a reservation, charged when made writable. */
    char *ro = mmap(0, STEP, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(ro != MAP_FAILED);
    int r = mprotect(ro, STEP, PROT_READ | PROT_WRITE);
    if (frostheap)
        CHECK(r == -1 && errno == ENOMEM);
    else
        CHECK(r == 0);
    for (int i = 0; i < n; i++)
        CHECK(munmap(steps[i], STEP) == 0);
    /* Given back: now it fits. */
    CHECK(mprotect(ro, STEP, PROT_READ | PROT_WRITE) == 0);
    memset(ro, 7, STEP);
    CHECK(munmap(ro, STEP) == 0);
    /* Shared /dev/zero and a private writable file mapping: not counted. */
    char *sh = mmap(0, 4 * STEP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(sh != MAP_FAILED);
    CHECK(munmap(sh, 4 * STEP) == 0);
    FILE *f = tmpfile();
    CHECK(f != NULL);
    CHECK(ftruncate(fileno(f), 4 * STEP) == 0);
    char *fp = mmap(0, 4 * STEP, PROT_READ | PROT_WRITE, MAP_PRIVATE, fileno(f), 0);
    CHECK(fp != MAP_FAILED);
    fp[0] = 1;
    CHECK(munmap(fp, 4 * STEP) == 0);
    fclose(f);
    close(fd);
    printf("devzero: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
