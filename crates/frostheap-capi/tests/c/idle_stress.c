/* Owners that pause while other threads free their blocks, with the spans
 * freed whole retired for them meanwhile by others: PRODUCERS threads make
 * blocks of 16 B - 128 KiB (most small), each filled with a pattern of its
 * own, hand most to CONSUMERS threads through a shared ring, keep some and
 * free those themselves later (frees into spans that may be on the pending
 * stack), and every few rounds sleep (an owner that does not allocate);
 * consumers check every block and free it; a trimmer thread calls
 * malloc_trim(0) in a loop (which retires the spans other live threads'
 * blocks were freed whole from). Under a limit, the reclaimer does the
 * same at each refusal, and the growth hook as the process grows.
 * Allocations may be refused (counted). Usage:
 *
 *   idle_stress SECONDS   prints "idle_stress: blocks=N refused=R corrupt=C",
 *                         and exits 1 if a block was found changed */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PRODUCERS 4
#define CONSUMERS 2
#define RING 4096
#define KEEP 64

typedef struct { unsigned char *p; size_t n; } block_t;

static block_t ring[RING];
static size_t head, tail;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER, not_full = PTHREAD_COND_INITIALIZER;
static atomic_int stop, producers_left = PRODUCERS;
static atomic_long made, refused, corrupt;

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

/* The pattern of a block of n bytes at p: its first 64 bytes and its last
 * one, from its address and size. */
static unsigned char mark(const unsigned char *p, size_t n, size_t i) {
    return (unsigned char)(((uintptr_t)p >> 4) ^ n ^ (i * 31));
}

static void fill(unsigned char *p, size_t n) {
    for (size_t i = 0; i < n && i < 64; i++) p[i] = mark(p, n, i);
    p[n - 1] = mark(p, n, n - 1);
}

static void check_and_free(block_t b) {
    for (size_t i = 0; i < b.n && i < 64; i++)
        if (b.p[i] != mark(b.p, b.n, i)) {
            atomic_fetch_add(&corrupt, 1);
            break;
        }
    if (b.p[b.n - 1] != mark(b.p, b.n, b.n - 1)) atomic_fetch_add(&corrupt, 1);
    free(b.p);
}

static size_t size_of_draw(uint64_t r) {
    switch (r % 8) {
    case 0: return 16 + (r >> 8) % (128 * 1024 - 16);
    case 1:
    case 2: return 1024 + (r >> 8) % 7168;
    default: return 16 + (r >> 8) % 1000;
    }
}

static void *producer(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uintptr_t)arg;
    block_t keep[KEEP];
    int kept = 0;
    for (long round = 0; !atomic_load(&stop); round++) {
        for (int i = 0; i < 512; i++) {
            uint64_t r = next(&x);
            size_t n = size_of_draw(r);
            unsigned char *p = malloc(n);
            if (!p) {
                atomic_fetch_add(&refused, 1);
                continue;
            }
            fill(p, n);
            atomic_fetch_add(&made, 1);
            block_t b = {p, n};
            if ((r >> 40) % 8 == 0) {
                if (kept == KEEP) check_and_free(keep[--kept]);
                keep[kept++] = b;
                continue;
            }
            pthread_mutex_lock(&mu);
            while (tail - head == RING && !atomic_load(&stop)) pthread_cond_wait(&not_full, &mu);
            if (tail - head == RING) {
                pthread_mutex_unlock(&mu);
                check_and_free(b);
                continue;
            }
            ring[tail++ % RING] = b;
            pthread_cond_signal(&not_empty);
            pthread_mutex_unlock(&mu);
        }
        /* Some of its own, freed by itself: maybe into spans on the
         * pending stack, or being retired for it. */
        while (kept > KEEP / 2) check_and_free(keep[--kept]);
        if (round % 4 == 3) usleep(2000 + (unsigned)(next(&x) % 3000));
    }
    while (kept > 0) check_and_free(keep[--kept]);
    pthread_mutex_lock(&mu);
    atomic_fetch_sub(&producers_left, 1);
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (tail == head && atomic_load(&producers_left) > 0) pthread_cond_wait(&not_empty, &mu);
        if (tail == head) break;
        block_t b = ring[head++ % RING];
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&mu);
        check_and_free(b);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *trimmer(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        malloc_trim(0);
        usleep(500);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 5;
    if (seconds < 1) return 2;
    pthread_t p[PRODUCERS], c[CONSUMERS], t;
    for (int i = 0; i < PRODUCERS; i++)
        if (pthread_create(&p[i], NULL, producer, (void *)(uintptr_t)(i + 1))) return 3;
    for (int i = 0; i < CONSUMERS; i++)
        if (pthread_create(&c[i], NULL, consumer, NULL)) return 3;
    if (pthread_create(&t, NULL, trimmer, NULL)) return 3;
    sleep((unsigned)seconds);
    atomic_store(&stop, 1);
    pthread_mutex_lock(&mu);
    pthread_cond_broadcast(&not_full);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < PRODUCERS; i++) pthread_join(p[i], NULL);
    for (int i = 0; i < CONSUMERS; i++) pthread_join(c[i], NULL);
    pthread_join(t, NULL);
    printf("idle_stress: blocks=%ld refused=%ld corrupt=%ld\n", atomic_load(&made),
           atomic_load(&refused), atomic_load(&corrupt));
    return atomic_load(&corrupt) != 0;
}
