/* FROSTHEAP_MIN equal to FROSTHEAP_MAX (as -Xms equal to -Xmx for a JVM):
 * the main heap's pre-commit leaves room for the rest. Run with
 * FROSTHEAP_MIN=FROSTHEAP_MAX=64M: another thread allocates 1 MiB, the
 * program maps 4 MiB writable, and the main thread then allocates 1 MiB
 * blocks up to the limit (48 MiB at least: the main heap grows past its
 * pre-commit). When the pre-commit was the whole limit, the thread's
 * block and the mapping were refused. Prints "min_max: N checks, F
 * failures". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"

static void *thread_main(void *arg) {
    (void)arg;
    char *p = malloc(1 << 20);
    CHECK(p != NULL);
    if (p) memset(p, 1, 1 << 20);
    free(p);
    return NULL;
}

int main(void) {
    char *small = malloc(100);
    CHECK(small != NULL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, thread_main, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    void *m = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED);
    if (m != MAP_FAILED) {
        memset(m, 1, 4 << 20);
        CHECK(munmap(m, 4 << 20) == 0);
    }
    static void *blocks[128];
    int n = 0;
    while (n < 128 && (blocks[n] = malloc(1 << 20)) != NULL) n++;
    CHECK(n >= 48 && n < 64);
    for (int i = 0; i < n; i++) free(blocks[i]);
    free(small);
    printf("min_max: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
