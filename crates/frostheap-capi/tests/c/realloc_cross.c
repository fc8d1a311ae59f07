/* realloc of another thread's large block (a producer builds a buffer, a
 * consumer grows it), under FROSTHEAP_MAX.
 * Usage: realloc_cross grow|exited|shrunk|main|stress|time [MiB] [...].
 *   grow    thread A makes a block of 60% of the limit (FROSTHEAP_MAX,
 *           given in MiB as the argument) and writes it, hands it to
 *           thread B and waits, running; B grows it to 70%: it must
 *           succeed (the library moves its pages into B's heap, charging
 *           the growth alone; copied, it needed 130%), keep its contents,
 *           and leave mallinfo2's figures exact: in use and committed up
 *           by the new block's bytes alone, the old block counted nowhere.
 *   exited  the same, A having exited before B's realloc (its heap waits
 *           for a thread to adopt it).
 *   shrunk  as grow, but A makes a block of 80% of the limit, writes it
 *           whole and shrinks it to 40% (the part given up stays free in
 *           A's heap), and B grows it to 65%: A's free memory must go
 *           back for it (refused before 2026-12-07: the move found A's
 *           heap locked, the reclaimer skipped it).
 *   main    the same, the main thread in B's place, A exited; the block is
 *           left live for the statistics at exit (FROSTHEAP_STATS=1: the
 *           main heap holds it, the thread heaps hold nothing).
 *   stress  THREADS (3) workers, ROUNDS (3000) handoffs in all: slots of
 *           blocks of 1-16 MiB (and a few small ones), each taken by a
 *           worker, checked, grown or shrunk with realloc, written and put
 *           back; each worker also makes and frees blocks of its own, and
 *           exits after 100-300 handoffs for a new one to take its place
 *           (adopting an exited thread's heap). Contents must follow every
 *           call, and once the blocks are freed, in use is back at its
 *           baseline. Prints the refusals (a growth refused at the limit
 *           is not a failure) and the moves.
 *           Usage: realloc_cross stress [MiB] [THREADS] [ROUNDS].
 *   time    prints the median time of another thread's block of MiB (64),
 *           its pages all written, grown to twice that, over `rounds` (15)
 *           rounds. Usage: realloc_cross time [MiB] [rounds].
 * Prints "realloc_cross: N checks, F failures" (all but time). */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define MIB ((size_t)1 << 20)

static void stamp(void *p, size_t len, uint64_t seed) {
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = seed ^ i;
}

static int stamped(const void *p, size_t len, uint64_t seed) {
    const uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i] != (seed ^ i))
            return 0;
    return 1;
}

static size_t in_use(void) {
    return mallinfo2().uordblks;
}

static size_t committed(void) {
    return mallinfo2().arena;
}

/* --- grow, exited, main ------------------------------------------------ */

static size_t old_len, new_len, made_len;
static char *handed;
static pthread_barrier_t start, made, go, done;
static size_t before_use, before_committed;

static void *producer(void *stay) {
    if (stay)
        pthread_barrier_wait(&start);
    handed = malloc(made_len);
    if (handed && made_len > old_len) {
        memset(handed, 1, made_len);
        char *q = realloc(handed, old_len);
        CHECK(q != NULL);
        if (q)
            handed = q;
    }
    if (handed)
        stamp(handed, old_len, 0x5eed);
    if (stay) {
        pthread_barrier_wait(&made);
        pthread_barrier_wait(&done); /* running while B grows its block */
    }
    return NULL;
}

/* B; with `arg` 2, B has a heap of its own before A exits (else B would
 * adopt A's heap, and grow a block of its own). */
static void *consumer(void *arg) {
    char *own = NULL;
    if (arg == (void *)2) {
        own = malloc(64);
        pthread_barrier_wait(&start);
    }
    if (arg)
        pthread_barrier_wait(&go);
    if (!handed) {
        CHECK(handed != NULL);
        return NULL;
    }
    char *q = realloc(handed, new_len);
    CHECK(q != NULL);
    if (!q) {
        fprintf(stderr, "the growth of %zu to %zu bytes was refused\n", old_len, new_len);
        free(own);
        return NULL;
    }
    CHECK(stamped(q, old_len, 0x5eed));
    size_t use = in_use(), com = committed(), usable = malloc_usable_size(q);
    CHECK(use - before_use == usable);
    CHECK(com - before_committed == usable);
    if (use - before_use != usable || com - before_committed != usable)
        fprintf(stderr, "in use +%zu, committed +%zu, the block %zu\n", use - before_use,
                com - before_committed, usable);
    stamp(q, new_len, 7); /* the growth is usable */
    CHECK(stamped(q, new_len, 7));
    handed = q;
    free(own);
    return NULL;
}

/* The figures before A's block are taken once both threads have started
 * (what starting a thread allocates is counted before them). */
static void handoff(size_t limit, const char *mode) {
    int shrunk = !strcmp(mode, "shrunk");
    old_len = shrunk ? limit * 4 / 10 : limit * 6 / 10;
    new_len = shrunk ? limit * 65 / 100 : limit * 7 / 10;
    made_len = shrunk ? limit * 8 / 10 : old_len;
    pthread_barrier_init(&start, NULL, 2);
    pthread_barrier_init(&made, NULL, 2);
    pthread_barrier_init(&go, NULL, 2);
    pthread_barrier_init(&done, NULL, 2);
    pthread_t a, b;
    if (!strcmp(mode, "grow") || shrunk) {
        pthread_create(&b, NULL, consumer, (void *)1);
        pthread_create(&a, NULL, producer, (void *)1);
        before_use = in_use();
        before_committed = committed();
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&made);
        pthread_barrier_wait(&go);
        pthread_join(b, NULL);
        pthread_barrier_wait(&done);
        pthread_join(a, NULL);
        free(handed);
        return;
    }
    /* exited, main: A made its block and exited, B running. */
    int on_main = !strcmp(mode, "main");
    if (!on_main) {
        pthread_create(&b, NULL, consumer, (void *)2);
        pthread_barrier_wait(&start);
    }
    pthread_create(&a, NULL, producer, NULL);
    pthread_join(a, NULL);
    if (!handed) {
        CHECK(handed != NULL);
        return;
    }
    before_use = in_use() - malloc_usable_size(handed);
    before_committed = committed() - malloc_usable_size(handed);
    if (on_main) {
        consumer(NULL); /* the block stays live for the lines at exit */
        return;
    }
    pthread_barrier_wait(&go);
    pthread_join(b, NULL);
    free(handed);
}

/* --- stress ------------------------------------------------------------ */

enum { SLOTS = 6, MAX_THREADS = 4 };

static struct slot {
    pthread_mutex_t lock;
    char *p;
    size_t len;
    uint64_t seed;
} slots[SLOTS];

static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;
static long handoffs, rounds_total, refused, moved, bad;

static uint32_t rng(uint32_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* Stamps the first 4 KiB, and a word at the start of every 64 KiB. */
static void mark(char *p, size_t len, uint64_t seed) {
    stamp(p, len < 4096 ? len : 4096, seed);
    for (size_t at = 64 << 10; at + 8 <= len; at += 64 << 10) {
        uint64_t w = seed ^ at;
        memcpy(p + at, &w, 8);
    }
}

/* Whether the first `len` bytes hold what `mark` wrote. */
static int marked(const char *p, size_t len, uint64_t seed) {
    if (!stamped(p, len < 4096 ? len : 4096, seed))
        return 0;
    for (size_t at = 64 << 10; at + 8 <= len; at += 64 << 10) {
        uint64_t w = seed ^ at;
        if (memcmp(p + at, &w, 8))
            return 0;
    }
    return 1;
}

static size_t random_len(uint32_t *x) {
    if (rng(x) % 16 == 0)
        return 1 + rng(x) % (256 << 10); /* small and medium */
    return MIB + rng(x) % (15 * MIB);
}

static void *worker(void *arg) {
    uint32_t x = (uint32_t)(uintptr_t)arg * 2654435761u | 1;
    long mine = 100 + rng(&x) % 200;
    char *own = NULL;
    for (long i = 0; i < mine; i++) {
        pthread_mutex_lock(&counts_lock);
        int stop = rounds_total <= 0;
        rounds_total--;
        pthread_mutex_unlock(&counts_lock);
        if (stop)
            break;
        /* A block of its own, made and freed: the owner allocates while
         * others grow its blocks. */
        free(own);
        own = malloc(random_len(&x));
        if (own)
            own[0] = 1;
        struct slot *s = &slots[rng(&x) % SLOTS];
        pthread_mutex_lock(&s->lock);
        if (!marked(s->p, s->len, s->seed)) {
            pthread_mutex_lock(&counts_lock);
            if (bad++ < 5)
                fprintf(stderr, "slot %ld: the block lost its contents\n", (long)(s - slots));
            pthread_mutex_unlock(&counts_lock);
        }
        size_t n = random_len(&x);
        char *q = realloc(s->p, n);
        pthread_mutex_lock(&counts_lock);
        handoffs++;
        refused += q == NULL;
        moved += q != NULL && q != s->p;
        pthread_mutex_unlock(&counts_lock);
        if (q) {
            if (!marked(q, n < s->len ? n : s->len, s->seed)) {
                pthread_mutex_lock(&counts_lock);
                if (bad++ < 5)
                    fprintf(stderr, "a realloc of %zu to %zu lost the contents\n", s->len, n);
                pthread_mutex_unlock(&counts_lock);
            }
            s->p = q;
            s->len = n;
            s->seed = rng(&x);
            mark(q, n, s->seed);
        }
        pthread_mutex_unlock(&s->lock);
    }
    free(own);
    return NULL;
}

static void stress(int threads, long rounds) {
    if (threads < 2)
        threads = 2;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    /* Threads started and joined once, so that what glibc keeps for a
     * thread (its cached stack, its TLS) is there before the baseline. */
    pthread_t t[MAX_THREADS];
    for (int i = 0; i < MAX_THREADS; i++)
        pthread_create(&t[i], NULL, (void *(*)(void *))free, NULL);
    for (int i = 0; i < MAX_THREADS; i++)
        pthread_join(t[i], NULL);
    malloc_trim(0);
    size_t baseline = in_use(), baseline_committed = committed();
    uint32_t x = 0x9e3779b9;
    for (int i = 0; i < SLOTS; i++) {
        pthread_mutex_init(&slots[i].lock, NULL);
        slots[i].len = random_len(&x);
        slots[i].p = malloc(slots[i].len);
        slots[i].seed = rng(&x);
        CHECK(slots[i].p != NULL);
        if (!slots[i].p)
            return;
        mark(slots[i].p, slots[i].len, slots[i].seed);
    }
    rounds_total = rounds;
    long started = 0, exited = 0;
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)++started);
    /* Workers exit after their share; each is replaced until the rounds
     * are done, the new one adopting a heap an exited one left. */
    for (;;) {
        int live = 0;
        for (int i = 0; i < threads; i++) {
            if (!t[i])
                continue;
            pthread_join(t[i], NULL);
            exited++;
            t[i] = 0;
            pthread_mutex_lock(&counts_lock);
            int more = rounds_total > 0;
            pthread_mutex_unlock(&counts_lock);
            if (more) {
                pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)++started);
                live++;
            }
        }
        if (!live)
            break;
    }
    for (int i = 0; i < SLOTS; i++) {
        CHECK(marked(slots[i].p, slots[i].len, slots[i].seed));
        free(slots[i].p);
    }
    CHECK(bad == 0);
    CHECK(handoffs >= rounds);
    malloc_trim(0);
    size_t after = in_use(), after_committed = committed();
    CHECK(after == baseline);
    /* What the heaps charge follows the pages that moved from one heap to
     * another: trimmed, they are back where they were. */
    CHECK(after_committed <= baseline_committed);
    printf("handoffs=%ld moved=%ld refused=%ld workers=%ld in_use=%zu..%zu committed=%zu..%zu\n",
           handoffs, moved, refused, exited, baseline, after, baseline_committed, after_committed);
}

/* --- time -------------------------------------------------------------- */

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *written(void *arg) {
    size_t len = *(size_t *)arg;
    char *p = malloc(len);
    if (p)
        memset(p, 0x5a, len);
    return p;
}

static void timed(size_t mib, int rounds) {
    double t[64];
    if (rounds > 64)
        rounds = 64;
    size_t len = mib * MIB;
    for (int r = 0; r < rounds; r++) {
        pthread_t a;
        void *p;
        pthread_create(&a, NULL, written, &len);
        pthread_join(a, &p);
        if (!p) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        double t0 = now_ns();
        char *q = realloc(p, 2 * len);
        t[r] = now_ns() - t0;
        if (!q || q[len - 1] != 0x5a) {
            fprintf(stderr, "realloc failed or lost the contents\n");
            exit(2);
        }
        free(q);
    }
    qsort(t, rounds, sizeof t[0], by_value);
    printf("cross-thread realloc %zu MiB -> %zu MiB: median %.0f us (min %.0f, max %.0f) over %d "
           "rounds\n",
           mib, 2 * mib, t[rounds / 2] / 1e3, t[0] / 1e3, t[rounds - 1] / 1e3, rounds);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "grow";
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    /* stdout's buffer first, so that no block comes between the figures. */
    printf("realloc_cross %s\n", mode);
    fflush(stdout);
    if (!strcmp(mode, "grow") || !strcmp(mode, "exited") || !strcmp(mode, "shrunk") ||
        !strcmp(mode, "main"))
        handoff((mib ? mib : 256) * MIB, mode);
    else if (!strcmp(mode, "stress"))
        stress(argc > 3 ? atoi(argv[3]) : 3, argc > 4 ? atol(argv[4]) : 3000);
    else if (!strcmp(mode, "time")) {
        timed(mib ? mib : 64, argc > 3 ? atoi(argv[3]) : 15);
        return 0;
    } else {
        fprintf(stderr, "usage: realloc_cross grow|exited|shrunk|main|stress|time [MiB] [...]\n");
        return 2;
    }
    printf("realloc_cross: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
