/* Memory the heaps hold free serves the program's own mappings under the
 * limit (FROSTHEAP_MAX=64M): the main thread makes, writes and frees a
 * 16 MiB block three times (its heap keeps the freed memory committed),
 * and a thread does the same once and then waits, running (its heap keeps
 * its 16 MiB too); then the main thread maps 1 MiB pieces with `mmap`
 * until ENOMEM, unmaps them, and makes 1 MiB pieces of a PROT_NONE
 * reservation writable with `mprotect` until ENOMEM. Each must reach at
 * least 56 MiB: before 2026-12-07 a mapping was refused while the heaps
 * kept their free memory (32 MiB here), where `malloc` got 63.
 * Prints "map_room: mmap N MiB, mprotect M MiB" and the check counts. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

#define MIB ((size_t)1 << 20)
#define PIECES 128

static pthread_barrier_t made, done;

static void make_and_free(void) {
    char *volatile p = malloc(16 * MIB);
    CHECK(p != NULL);
    if (p) {
        memset(p, 1, 16 * MIB);
        free(p);
    }
}

static void *waiter(void *arg) {
    (void)arg;
    make_and_free();
    pthread_barrier_wait(&made);
    pthread_barrier_wait(&done);
    return NULL;
}

int main(void) {
    pthread_barrier_init(&made, NULL, 2);
    pthread_barrier_init(&done, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, waiter, NULL);
    for (int r = 0; r < 3; r++)
        make_and_free();
    pthread_barrier_wait(&made);

    static char *piece[PIECES];
    int mapped = 0;
    for (; mapped < PIECES; mapped++) {
        void *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            CHECK(errno == ENOMEM);
            break;
        }
        piece[mapped] = p;
        piece[mapped][MIB - 1] = 1;
    }
    for (int i = 0; i < mapped; i++)
        munmap(piece[i], MIB);

    char *reserved =
        mmap(NULL, PIECES * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(reserved != MAP_FAILED);
    int opened = 0;
    for (; reserved != MAP_FAILED && opened < PIECES; opened++) {
        if (mprotect(reserved + opened * MIB, MIB, PROT_READ | PROT_WRITE)) {
            CHECK(errno == ENOMEM);
            break;
        }
        reserved[opened * MIB] = 1;
    }
    if (reserved != MAP_FAILED)
        munmap(reserved, PIECES * MIB);

    pthread_barrier_wait(&done);
    pthread_join(t, NULL);
    printf("map_room: mmap %d MiB, mprotect %d MiB\n", mapped, opened);
    CHECK(mapped >= 56 && mapped < PIECES);
    CHECK(opened >= 56 && opened < PIECES);
    printf("map_room: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
