/* Every cross-thread path at once, with threads that come and go: THREADS
 * threads swap blocks in and out of one shared array of slots at random
 * (larson-style: most frees are of blocks another thread made, many of
 * them of heaps whose thread has exited), with sizes from 1 B to 400 KiB
 * (small classes cached by the freer, small classes freed remotely, large
 * blocks), reallocs and callocs among them. Each thread does OPS
 * operations and exits; GENERATIONS waves of threads follow one another,
 * so heaps are abandoned and adopted while other threads hold, free and
 * cache their blocks.
 *
 * Every block carries its own seed and size in its first 16 bytes and a
 * pattern derived from them in the rest, checked whenever a thread takes
 * it out of a slot: a block handed out twice, or written after it was
 * freed, shows as a broken pattern. Prints "mixer: N checks, 0 failures".
 *
 * With TRIM > 0, every thread also calls malloc_trim(0) about once in TRIM
 * operations, and the main thread every 256 of its own: heaps give their
 * free memory back while other threads allocate, free into them and adopt
 * them.
 *
 * Usage: mixer [threads] [ops per thread] [generations] [trim] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOTS = 4096 };

static _Atomic(unsigned char *) slots[SLOTS];
static atomic_long failures, checks;
static int threads = 4, ops = 20000, generations = 8, trim = 0;

static uint64_t next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static size_t pick_size(uint64_t r) {
    switch (r % 16) {
    case 0: return 20000 + (r >> 8) % 110000;  /* small classes of 20-128 KiB */
    case 1: return 131073 + (r >> 8) % 270000; /* large blocks */
    case 2: case 3: return 1025 + (r >> 8) % 7000; /* cached classes, 1-8 KiB */
    default: return 1 + (r >> 8) % 1024;       /* tiny */
    }
}

static unsigned char pat(uint64_t seed, size_t i) { return (unsigned char)(seed * 31 + i * 131 + (i >> 8)); }

/* Writes the header and the pattern (the first and last 512 bytes and
 * every 4 KiB between: enough to catch an overlap, cheap on large blocks). */
static void stamp(unsigned char *p, size_t n, uint64_t seed) {
    if (n < 16) { /* too small for a header: a pattern alone, seed in byte 0 */
        for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i);
        return;
    }
    memcpy(p, &seed, 8);
    uint64_t n64 = n;
    memcpy(p + 8, &n64, 8);
    for (size_t i = 16; i < n; i++) {
        if (i < 512 || i + 512 >= n || i % 4096 == 0) p[i] = pat(seed, i);
    }
}

static int intact(unsigned char *p, size_t n_known, size_t *n_out) {
    uint64_t seed, n64;
    memcpy(&seed, p, 8);
    memcpy(&n64, p + 8, 8);
    if (n64 < 16 || n64 > (1u << 20)) return 0;
    if (n_known && n64 != n_known) return 0;
    size_t n = (size_t)n64;
    *n_out = n;
    for (size_t i = 16; i < n; i++) {
        if ((i < 512 || i + 512 >= n || i % 4096 == 0) && p[i] != pat(seed, i)) return 0;
    }
    return 1;
}

static void *work(void *arg) {
    uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
    for (int k = 0; k < ops; k++) {
        uint64_t r = next(&s);
        if (trim && r % (uint64_t)trim == 1) malloc_trim(0);
        size_t n = pick_size(r);
        if (n < 16) n = 16; /* every block carries a header */
        unsigned char *p;
        if (r % 97 == 0) {
            p = calloc(1, n);
            if (p) {
                for (size_t i = 0; i < n; i += 509) {
                    if (p[i] != 0) {
                        atomic_fetch_add(&failures, 1);
                        fprintf(stderr, "mixer: calloc block %p not zeroed at %zu\n", (void *)p, i);
                        break;
                    }
                }
            }
        } else {
            p = malloc(n);
        }
        if (!p) {
            atomic_fetch_add(&failures, 1);
            fprintf(stderr, "mixer: allocation of %zu bytes failed\n", n);
            continue;
        }
        stamp(p, n, r);
        unsigned char *old = atomic_exchange(&slots[(r >> 32) % SLOTS], p);
        if (!old) continue;
        size_t on = 0;
        atomic_fetch_add(&checks, 1);
        if (!intact(old, 0, &on)) {
            if (atomic_fetch_add(&failures, 1) < 20)
                fprintf(stderr, "mixer: block %p broken when taken\n", (void *)old);
            continue; /* freeing it could corrupt further: leak it */
        }
        if (r % 7 == 0) {
            /* Resize what another thread made: grow or shrink, keep the
             * header and the bytes that stay. */
            size_t m = pick_size(next(&s));
            if (m < 16) m = 16;
            unsigned char *q = realloc(old, m);
            if (!q) {
                atomic_fetch_add(&failures, 1);
                free(old);
                continue;
            }
            uint64_t seed;
            memcpy(&seed, q, 8);
            size_t keep = on < m ? on : m;
            for (size_t i = 16; i < keep; i++) {
                if ((i < 512 || i + 512 >= on || i % 4096 == 0) && q[i] != pat(seed, i)) {
                    if (atomic_fetch_add(&failures, 1) < 20)
                        fprintf(stderr, "mixer: realloc %p -> %p lost byte %zu\n", (void *)old, (void *)q, i);
                    break;
                }
            }
            free(q);
        } else {
            free(old);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) threads = atoi(argv[1]);
    if (argc > 2) ops = atoi(argv[2]);
    if (argc > 3) generations = atoi(argv[3]);
    if (argc > 4) trim = atoi(argv[4]);
    if (threads < 1 || threads > 256 || ops < 1 || generations < 1 || trim < 0) {
        fprintf(stderr, "usage: mixer [threads 1-256] [ops >= 1] [generations >= 1] [trim >= 0]\n");
        return 2;
    }
    pthread_t *t = malloc(sizeof(pthread_t) * (size_t)threads);
    int id = 0;
    for (int g = 0; g < generations; g++) {
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, work, (void *)(intptr_t)++id);
        /* Main frees and checks some of the slots meanwhile: its heap's
         * own frees and remote frees into the workers' heaps. */
        uint64_t s = (uint64_t)g + 77;
        for (int k = 0; k < ops / 4; k++) {
            if (trim && k % 256 == 0) malloc_trim(0);
            unsigned char *old = atomic_exchange(&slots[next(&s) % SLOTS], NULL);
            size_t on;
            if (!old) continue;
            atomic_fetch_add(&checks, 1);
            if (!intact(old, 0, &on)) {
                if (atomic_fetch_add(&failures, 1) < 20)
                    fprintf(stderr, "mixer: block %p broken when main took it\n", (void *)old);
                continue;
            }
            free(old);
        }
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    }
    for (int i = 0; i < SLOTS; i++) {
        unsigned char *old = atomic_exchange(&slots[i], NULL);
        size_t on;
        if (!old) continue;
        atomic_fetch_add(&checks, 1);
        if (!intact(old, 0, &on)) {
            atomic_fetch_add(&failures, 1);
            continue;
        }
        free(old);
    }
    free(t);
    printf("mixer: %ld checks, %ld failures\n", atomic_load(&checks), atomic_load(&failures));
    return atomic_load(&failures) != 0;
}
