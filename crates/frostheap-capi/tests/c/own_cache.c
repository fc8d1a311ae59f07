/* Thread heaps large enough that their frees go to the owner's cache
 * (heap/own_cache.rs: past 8 MiB committed): THREADS threads each keep
 * LIVE blocks of 16 B - 4 KiB (about 40 MiB a thread) and replace one at
 * random per operation. One replaced block in eight is handed to the next
 * thread through a shared slot, which that thread frees (a remote free of
 * a block of a cached span); every thread calls malloc_trim(0) once in
 * 20,000 operations (the cache given back to its spans while the other
 * threads allocate and free), and thread 0 forks once halfway: the child
 * checks its blocks, allocates and frees some thousands more, and exits.
 *
 * Every block carries its seed and size in its first 16 bytes and a
 * pattern derived from them in the rest, checked when the block is
 * replaced, handed over or freed at the end: a block handed out twice, or
 * written after it was freed (by a free list's link, say), shows as a
 * broken pattern. Prints "own_cache: N checks, 0 failures".
 *
 * Usage: own_cache [threads] [ops per thread] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { LIVE = 20000, MAX_THREADS = 16 };

static int threads = 2;
static long ops = 200000;
static atomic_long failures, checks;
static _Atomic(unsigned char *) handoff[MAX_THREADS];
static pthread_barrier_t filled;

static uint64_t next(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static unsigned char *make(uint64_t seed, size_t size) {
    unsigned char *p = malloc(size);
    if (!p) { fprintf(stderr, "own_cache: malloc(%zu) failed\n", size); exit(1); }
    if (malloc_usable_size(p) < size) {
        fprintf(stderr, "own_cache: usable size %zu < %zu\n", malloc_usable_size(p), size);
        exit(1);
    }
    memcpy(p, &seed, 8);
    uint64_t s64 = size;
    memcpy(p + 8, &s64, 8);
    for (size_t i = 16; i < size; i++) p[i] = (unsigned char)(seed + i * 7);
    return p;
}

/* Checks a block made by make(); returns 0 when it is intact. */
static int check(const unsigned char *p) {
    uint64_t seed, size;
    memcpy(&seed, p, 8);
    memcpy(&size, p + 8, 8);
    atomic_fetch_add(&checks, 1);
    if (size < 16 || size > 4096) return 1;
    for (size_t i = 16; i < size; i++)
        if (p[i] != (unsigned char)(seed + i * 7)) return 1;
    return 0;
}

static void check_free(unsigned char *p) {
    if (check(p)) atomic_fetch_add(&failures, 1);
    free(p);
}

static int fork_once(unsigned char **live, uint64_t *x) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        /* The child: the other threads' heaps were abandoned at the fork,
         * their owners' caches forgotten; this thread's heap is its own. */
        int bad = 0;
        for (int i = 0; i < LIVE; i += 7) bad += check(live[i]);
        for (int i = 0; i < 5000; i++) {
            uint64_t r = next(x);
            int k = (int)(r % LIVE);
            bad += check(live[k]);
            free(live[k]);
            live[k] = make(r, 16 + (r >> 32) % 4081);
        }
        for (int i = 0; i < LIVE; i++) { bad += check(live[i]); free(live[i]); }
        _exit(bad ? 3 : 0);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) { perror("waitpid"); return 1; }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "own_cache: the fork child failed (status %d)\n", status);
        return 1;
    }
    return 0;
}

static void *worker(void *arg) {
    int me = (int)(uintptr_t)arg;
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uint64_t)me << 32 | 1);
    unsigned char **live = malloc(LIVE * sizeof *live);
    if (!live) { fprintf(stderr, "own_cache: out of memory\n"); exit(1); }
    for (int i = 0; i < LIVE; i++) {
        uint64_t r = next(&x);
        live[i] = make(r, 16 + (r >> 32) % 4081);
    }
    pthread_barrier_wait(&filled);
    for (long i = 0; i < ops; i++) {
        uint64_t r = next(&x);
        int k = (int)(r % LIVE);
        unsigned char *old = live[k];
        if (check(old)) atomic_fetch_add(&failures, 1);
        if ((r >> 60) == 0) {
            /* To the next thread, which frees it (and whatever was there). */
            unsigned char *prev = atomic_exchange(&handoff[(me + 1) % threads], old);
            if (prev) check_free(prev);
        } else {
            free(old);
        }
        live[k] = make(r, 16 + (r >> 32) % 4081);
        unsigned char *mine = atomic_exchange(&handoff[me], NULL);
        if (mine) check_free(mine);
        if (i % 20000 == 19999) malloc_trim(0);
        if (me == 0 && i == ops / 2 && fork_once(live, &x)) atomic_fetch_add(&failures, 1);
    }
    for (int i = 0; i < LIVE; i++) check_free(live[i]);
    free(live);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) threads = atoi(argv[1]);
    if (argc > 2) ops = atol(argv[2]);
    if (threads < 1 || threads > MAX_THREADS || ops < 2) {
        fprintf(stderr, "usage: own_cache [threads 1..%d] [ops >= 2]\n", MAX_THREADS);
        return 2;
    }
    pthread_t t[MAX_THREADS];
    pthread_barrier_init(&filled, NULL, threads);
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i)) { perror("pthread_create"); return 1; }
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < threads; i++) {
        unsigned char *p = atomic_exchange(&handoff[i], NULL);
        if (p) check_free(p);
    }
    printf("own_cache: %ld checks, %ld failures\n", atomic_load(&checks), atomic_load(&failures));
    return atomic_load(&failures) != 0;
}
