/* What the heaps of exited threads keep for the next threads goes back a
 * second after the last of them exited, once the program allocates on:
 * four threads in turn each make 256 blocks of 64 KiB, write them, free
 * them and exit (their heaps keep up to 32 MiB of that resident for the
 * next threads); then the main thread makes and frees a block of 256 KiB
 * every millisecond for up to 10 s, and reads what the library has
 * committed (mallinfo2's arena: what it keeps is committed). It must
 * fall by 8 MiB or more, and not before 0.9 s (the decay's window, not
 * the exit, gave it back). Prints "warm_decay: N checks, F failures". */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* What the library has committed for the process's heaps (their free
 * memory kept for the next threads included), in KiB. */
static long committed_kib(void) {
    return (long)(mallinfo2().arena >> 10);
}

static void *worker(void *arg) {
    (void)arg;
    static __thread char *blocks[256];
    for (int i = 0; i < 256; i++) {
        blocks[i] = malloc(64 << 10);
        if (!blocks[i])
            return NULL;
        memset(blocks[i], i, 64 << 10);
    }
    for (int i = 0; i < 256; i++)
        free(blocks[i]);
    return arg;
}

int main(void) {
    /* Timed from before the last thread starts (its exit is the last that
     * keeps memory): a main thread preempted after the join cannot make a
     * give-back on time look early. */
    double t0 = 0, t = 0;
    for (int i = 0; i < 4; i++) {
        pthread_t th;
        t0 = now_s();
        CHECK(pthread_create(&th, NULL, worker, NULL) == 0);
        pthread_join(th, NULL);
    }
    long kept = committed_kib();
    long now = kept; /* committed, KiB */
    while ((t = now_s() - t0) < 10 && now > kept - (8 << 10)) {
        char *p = malloc(256 << 10);
        if (!p) {
            fprintf(stderr, "warm_decay: out of memory\n");
            return 1;
        }
        memset(p, 1, 4096);
        free(p);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        now = committed_kib();
    }
    printf("committed %ld KiB after the threads, %ld KiB %.2f s after the last started\n", kept, now, t);
    CHECK(now <= kept - (8 << 10));
    CHECK(t >= 0.9);
    printf("warm_decay: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
