/* Threads that free other threads' blocks and never allocate (consumers of
 * a producer's blocks). A thread's first free of a thread heap's block
 * gives it a heap of its own, whose remote cache and batch of remote frees
 * (frostheap's heap::remote_batch) then take its frees: every block must
 * arrive intact and, once the consumers have exited, every block must be
 * back with its heap (run with FROSTHEAP_STATS=1: "thread heaps in use 0 B"
 * at exit).
 *
 *   consumer ROUNDS BLOCKS   prints "consumer: N checks, F failures" */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks, failures;
#define CHECK(c)                                                              \
    do {                                                                      \
        checks++;                                                             \
        if (!(c)) {                                                           \
            failures++;                                                       \
            fprintf(stderr, "consumer.c:%d: CHECK(%s) failed\n", __LINE__,    \
                    #c);                                                      \
        }                                                                     \
    } while (0)

static long rounds, nblocks;
static unsigned char **blocks;
static size_t *sizes;
/* made: the producer filled `blocks` for round r (r + 1); taken: the
 * round's consumer has freed them all (r + 1). */
static atomic_long made, taken;
static atomic_int bad;

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static void *producer(void *arg) {
    (void)arg;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (long r = 0; r < rounds; r++) {
        while (atomic_load(&taken) < r) sched_yield();
        for (long i = 0; i < nblocks; i++) {
            /* 16 B - 512 B, as a message or a small object would be. */
            size_t n = 16 + next(&x) % 497;
            unsigned char *p = malloc(n);
            if (!p) abort();
            memset(p, (int)((r + i) & 0xff), n);
            blocks[i] = p, sizes[i] = n;
        }
        atomic_store(&made, r + 1);
    }
    return NULL;
}

static void *consumer(void *arg) {
    long r = (long)(intptr_t)arg;
    while (atomic_load(&made) < r + 1) sched_yield();
    for (long i = 0; i < nblocks; i++) {
        unsigned char *p = blocks[i], want = (unsigned char)((r + i) & 0xff);
        for (size_t k = 0; k < sizes[i]; k++)
            if (p[k] != want) { atomic_fetch_add(&bad, 1); break; }
        free(p);
    }
    atomic_store(&taken, r + 1);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: consumer ROUNDS BLOCKS\n"); return 2; }
    rounds = atol(argv[1]), nblocks = atol(argv[2]);
    if (rounds < 1 || nblocks < 1) { fprintf(stderr, "ROUNDS and BLOCKS: at least 1\n"); return 2; }
    blocks = calloc(nblocks, sizeof *blocks), sizes = calloc(nblocks, sizeof *sizes);
    pthread_t prod;
    CHECK(pthread_create(&prod, NULL, producer, NULL) == 0);
    for (long r = 0; r < rounds; r++) {
        pthread_t cons;
        CHECK(pthread_create(&cons, NULL, consumer, (void *)(intptr_t)r) == 0);
        CHECK(pthread_join(cons, NULL) == 0);
    }
    CHECK(pthread_join(prod, NULL) == 0);
    CHECK(atomic_load(&bad) == 0);
    CHECK(atomic_load(&taken) == rounds);
    free(blocks), free(sizes);
    printf("consumer: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
