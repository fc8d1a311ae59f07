/* The `threads` benchmark's workloads in C, for LD_PRELOADed allocators
 * (glibc, mimalloc, jemalloc, libfrostheap.so): the same cases as
 * src/threads.rs (prodcons free, prodcons-1cpu, prodcons-2cpu, spawn, spawn-large). Usage: threads CASE THREADS OPS RUNS; prints
 * "sample <ns per operation of one thread>" per run. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>

#include "clock_rng.h"

static long ops;
static int nthreads;

static void *make(size_t n) {
    unsigned char *p = malloc(n);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    p[0] = (unsigned char)n;
    return p;
}

static pthread_barrier_t start;

static void *local(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uintptr_t)arg + 1);
    void *window[64] = {0};
    pthread_barrier_wait(&start);
    for (long i = 0; i < ops; i++) {
        free(window[i % 64]);
        window[i % 64] = make(16 + next(&x) % 4081);
    }
    for (int i = 0; i < 64; i++) free(window[i]);
    return NULL;
}

/* working-set: WORKING_SET live blocks per thread, one replaced at random
 * per operation (src/threads.rs). */
enum { WORKING_SET = 25000 };

static void *working_set(void *arg) {
    uint64_t x = 0x6A09E667F3BCC908ull ^ ((uintptr_t)arg + 1);
    void **window = malloc(WORKING_SET * sizeof *window);
    if (!window) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (int i = 0; i < WORKING_SET; i++) window[i] = make(16 + next(&x) % 4081);
    pthread_barrier_wait(&start);
    for (long i = 0; i < ops; i++) {
        uint64_t r = next(&x);
        void **slot = &window[r % WORKING_SET];
        free(*slot);
        *slot = make(16 + (r >> 32) % 4081);
    }
    for (int i = 0; i < WORKING_SET; i++) free(window[i]);
    free(window);
    return NULL;
}

static _Atomic(void *) *slots;
static size_t nslots;

static void *larson(void *arg) {
    uint64_t x = 0x2545F4914F6CDD1Dull ^ ((uintptr_t)arg + 1);
    pthread_barrier_wait(&start);
    for (long i = 0; i < ops; i++) {
        uint64_t r = next(&x);
        void *old = atomic_exchange(&slots[r % nslots], make(16 + (r >> 32) % 1009));
        free(old);
    }
    return NULL;
}

enum { RING = 1024, BATCH = 64 };
typedef struct {
    _Atomic(void *) slot[RING];
    _Alignas(128) atomic_long head;
    _Alignas(128) atomic_long tail;
} ring_t;
static ring_t *rings;

/* prodcons-1cpu / prodcons-2cpu: the CPUs producers and consumers run on
 * (-1: wherever the scheduler puts them). */
static int producer_cpu = -1, consumer_cpu = -1;

static void pin_to(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) { perror("sched_setaffinity"); exit(1); }
}

static void *producer(void *arg) {
    pin_to(producer_cpu);
    ring_t *r = &rings[(uintptr_t)arg];
    uint64_t x = 0xDEADBEEFull ^ ((uintptr_t)arg + 1);
    pthread_barrier_wait(&start);
    for (long t = 0; t < ops; t += BATCH) {
        while (t + BATCH - atomic_load_explicit(&r->head, memory_order_acquire) > RING) sched_yield();
        for (long i = t; i < t + BATCH; i++)
            atomic_store_explicit(&r->slot[i % RING], make(64 + next(&x) % 193), memory_order_relaxed);
        atomic_store_explicit(&r->tail, t + BATCH, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg) {
    pin_to(consumer_cpu);
    ring_t *r = &rings[(uintptr_t)arg];
    pthread_barrier_wait(&start);
    long h = 0;
    while (h < ops) {
        long t = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (t == h) { sched_yield(); continue; }
        for (; h < t; h++) free(atomic_load_explicit(&r->slot[h % RING], memory_order_relaxed));
        atomic_store_explicit(&r->head, h, memory_order_release);
    }
    return NULL;
}

typedef struct { void **theirs; int n; void *keep[50]; uint64_t seed; } gen_t;

static void *generation(void *arg) {
    gen_t *g = arg;
    for (int i = 0; i < g->n; i++) free(g->theirs[i]);
    uint64_t x = g->seed;
    int k = 0;
    for (int i = 0; i < 100; i++) {
        void *p = make(16 + next(&x) % 497);
        if (i % 2 == 0) g->keep[k++] = p; else free(p);
    }
    return NULL;
}

/* spawn-large: 32 blocks of 4 KiB - 256 KiB, each written whole (a
 * request's buffers), half of them left to the next generation. */
#define LARGE_BLOCKS 32

static void *generation_large(void *arg) {
    gen_t *g = arg;
    for (int i = 0; i < g->n; i++) free(g->theirs[i]);
    uint64_t x = g->seed;
    int k = 0;
    for (int i = 0; i < LARGE_BLOCKS; i++) {
        size_t n = 4096 + next(&x) % (252 * 1024 + 1);
        void *p = make(n);
        memset(p, i, n);
        if (i % 2 == 0) g->keep[k++] = p; else free(p);
    }
    return NULL;
}

static double run(const char *c) {
    pthread_t t[256];
    double t0;
    if (!strcmp(c, "spawn") || !strcmp(c, "spawn-large")) {
        int large = !strcmp(c, "spawn-large");
        int kept = large ? LARGE_BLOCKS / 2 : 50;
        gen_t *g = calloc(nthreads, sizeof(gen_t)), *prev = calloc(nthreads, sizeof(gen_t));
        t0 = now_ns();
        for (long r = 0; r < ops; r++) {
            for (int i = 0; i < nthreads; i++) {
                g[i].theirs = r ? prev[i].keep : NULL;
                g[i].n = r ? kept : 0;
                g[i].seed = 0xC0FFEE00ull ^ (uint64_t)(r * nthreads + i + 1);
                pthread_create(&t[i], NULL, large ? generation_large : generation, &g[i]);
            }
            for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
            gen_t *s = prev; prev = g; g = s;
        }
        for (int i = 0; i < nthreads; i++) for (int k = 0; k < kept; k++) free(prev[i].keep[k]);
        double ns = (now_ns() - t0) / (ops * nthreads);
        free(g), free(prev);
        return ns;
    }
    int n = nthreads;
    void *(*fn)(void *) = local;
    if (!strcmp(c, "larson")) {
        nslots = 1000 * (size_t)nthreads;
        slots = malloc(nslots * sizeof *slots);
        for (size_t i = 0; i < nslots; i++) slots[i] = make(16 + i % 1009);
        fn = larson;
    } else if (!strncmp(c, "prodcons", 8)) {
        cpu_set_t set;
        int cpus[2], k = 0;
        if (sched_getaffinity(0, sizeof set, &set)) { perror("sched_getaffinity"); exit(1); }
        for (int i = 0; i < CPU_SETSIZE && k < 2; i++)
            if (CPU_ISSET(i, &set)) cpus[k++] = i;
        if (!strcmp(c, "prodcons-1cpu")) {
            producer_cpu = consumer_cpu = cpus[0];
        } else if (!strcmp(c, "prodcons-2cpu")) {
            if (k < 2) { fprintf(stderr, "prodcons-2cpu needs two CPUs\n"); exit(2); }
            producer_cpu = cpus[0], consumer_cpu = cpus[1];
        } else if (strcmp(c, "prodcons")) {
            fprintf(stderr, "unknown case %s\n", c);
            exit(2);
        }
        n = 2 * (nthreads / 2 > 0 ? nthreads / 2 : 1);
        rings = calloc(n / 2, sizeof(ring_t));
        ops = ops / BATCH * BATCH;
    } else if (!strcmp(c, "working-set")) {
        fn = working_set;
    } else if (strcmp(c, "local")) {
        fprintf(stderr, "unknown case %s\n", c);
        exit(2);
    }
    pthread_barrier_init(&start, NULL, n + 1);
    for (int i = 0; i < n; i++) {
        void *(*f)(void *) = fn;
        uintptr_t a = i;
        if (!strncmp(c, "prodcons", 8)) f = i % 2 ? consumer : producer, a = i / 2;
        pthread_create(&t[i], NULL, f, (void *)a);
    }
    t0 = now_ns();
    pthread_barrier_wait(&start);
    /* working-set's threads fill their windows before the barrier: the
     * clock starts once they have. */
    if (fn == working_set) t0 = now_ns();
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    double ns = (now_ns() - t0) / ops;
    pthread_barrier_destroy(&start);
    if (!strcmp(c, "larson")) { for (size_t i = 0; i < nslots; i++) free(slots[i]); free(slots); }
    if (!strncmp(c, "prodcons", 8)) free(rings);
    return ns;
}

/* The process's own peak resident set since its exec (VmHWM), in the
   benchmark's protocol: the parent's wait4 figure would be at least the
   parent's own resident set (see child.rs). */
static void report_peak_rss(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) printf("peak_rss_kib %ld\n", strtol(line + 6, NULL, 10));
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: threads CASE THREADS OPS RUNS\n"); return 2; }
    nthreads = atoi(argv[2]);
    if (nthreads < 1 || nthreads > 256) { fprintf(stderr, "THREADS: 1..256\n"); return 2; }
    long want = atol(argv[3]);
    int runs = atoi(argv[4]);
    if (!strcmp(argv[1], "none")) {
        for (int r = 0; r < runs; r++) printf("sample 0\n");
        report_peak_rss();
        return 0;
    }
    for (int r = 0; r < runs; r++) {
        ops = want;
        printf("sample %f\n", run(argv[1]));
        fflush(stdout);
    }
    report_peak_rss();
    return 0;
}
