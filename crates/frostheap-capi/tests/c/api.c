/* Every exported function and its edge cases, on the main thread (the
 * main heap) and on a second thread (glibc, charged against the limit).
 * Usage: api glibc|frostheap, or api limits MIB. "glibc" skips the checks
 * where frostheap deliberately follows newer glibc (aligned_alloc's EINVAL),
 * so the same program validates itself against the system allocator.
 * "limits MIB" checks, under FROSTHEAP_MAX=MIB, that the limit counts both
 * the main heap and other threads' memory. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int checks, failures, frostheap;
static const char *where = "main";

#define CHECK(c)                                                                        \
    do {                                                                                \
        checks++;                                                                       \
        if (!(c)) {                                                                     \
            if (failures++ < 20)                                                        \
                fprintf(stderr, "api.c:%d [%s]: CHECK(%s) failed (errno %d)\n", __LINE__,     \
                    where, #c, errno);                                                  \
        }                                                                               \
    } while (0)

/* volatile: keep the compiler from folding allocation calls. */
static volatile size_t HUGE = SIZE_MAX;
static volatile size_t HALF = SIZE_MAX / 2 + 1;

static int aligned(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 7);
}
static int intact(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7)) return 0;
    return 1;
}
static int zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static const size_t SIZES[] = {0, 1, 8, 15, 16, 17, 24, 100, 1000, 4095, 4096, 65536,
                               131072, 131073, 300000, 1 << 20, 5 << 20};
#define N_SIZES (sizeof SIZES / sizeof SIZES[0])

static void check_malloc(void) {
    for (size_t i = 0; i < N_SIZES; i++) {
        size_t n = SIZES[i];
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(aligned(p, 16));
        CHECK(malloc_usable_size(p) >= n);
        fill(p, malloc_usable_size(p), 3);
        CHECK(intact(p, malloc_usable_size(p), 3));
        free(p);
    }
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b);
    free(a);
    free(b);
    errno = 0;
    CHECK(malloc(HUGE) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(HALF) == NULL && errno == ENOMEM);
    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0);
}

static void check_calloc(void) {
    for (size_t i = 0; i < N_SIZES; i++) {
        size_t n = SIZES[i];
        /* Dirty a block of the same size first so calloc must zero. */
        unsigned char *d = malloc(n);
        if (d) memset(d, 0xff, n);
        free(d);
        unsigned char *p = calloc(n, 1);
        CHECK(p != NULL);
        if (!p) continue;
        CHECK(zero(p, n));
        CHECK(malloc_usable_size(p) >= n);
        free(p);
        p = calloc(1, n);
        CHECK(p && zero(p, n));
        free(p);
    }
    unsigned char *p = calloc(1000, 8);
    CHECK(p && zero(p, 8000));
    free(p);
    p = calloc(0, 10);
    CHECK(p != NULL);
    free(p);
    errno = 0;
    CHECK(calloc(HALF, 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(HALF >> 20, (size_t)1 << 40) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(HUGE, 1) == NULL && errno == ENOMEM);
}

static void check_realloc(void) {
    unsigned char *p = realloc(NULL, 100);
    CHECK(p != NULL);
    free(p);

    /* Grow through every size class kind, then shrink: contents kept. */
    static const size_t steps[] = {10, 100, 1000, 70000, 140000, 1 << 20, 6 << 20, 200, 50, 3};
    p = malloc(1);
    CHECK(p != NULL);
    if (!p) return;
    fill(p, 1, 9);
    size_t have = 1;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = steps[i];
        unsigned char *q = realloc(p, n);
        CHECK(q != NULL);
        if (!q) break;
        size_t keep = have < n ? have : n;
        CHECK(intact(q, keep, 9));
        CHECK(malloc_usable_size(q) >= n);
        CHECK(aligned(q, 16));
        fill(q, n, 9);
        p = q;
        have = n;
    }
    /* A failed realloc leaves the block alone. */
    errno = 0;
    CHECK(realloc(p, HUGE) == NULL && errno == ENOMEM);
    CHECK(intact(p, have, 9));
    errno = 0;
    CHECK(realloc(p, HALF) == NULL && errno == ENOMEM);
    CHECK(intact(p, have, 9));
    /* realloc(p, 0) frees and returns NULL (glibc). */
    CHECK(realloc(p, 0) == NULL);

    /* reallocarray */
    p = reallocarray(NULL, 10, 10);
    CHECK(p != NULL);
    fill(p, 100, 4);
    errno = 0;
    unsigned char *same = p; /* the failed call must leave p alone */
    CHECK(reallocarray(same, HALF, 2) == NULL && errno == ENOMEM);
    CHECK(intact(p, 100, 4));
    unsigned char *q = reallocarray(p, 100, 100);
    CHECK(q && intact(q, 100, 4) && malloc_usable_size(q) >= 10000);
    CHECK(reallocarray(q, 0, 5) == NULL);

    /* Blocks from the aligned functions can be resized too. */
    p = memalign(4096, 5000);
    CHECK(p && aligned(p, 4096));
    fill(p, 5000, 6);
    q = realloc(p, 300000);
    CHECK(q && intact(q, 5000, 6));
    free(q);
}

static void check_aligned(void) {
    static const size_t aligns[] = {8, 16, 32, 64, 256, 4096, 65536, 1 << 20};
    static const size_t sizes[] = {0, 1, 100, 5000, 100000, 1 << 20};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        for (size_t j = 0; j < sizeof sizes / sizeof sizes[0]; j++) {
            size_t a = aligns[i], n = sizes[j];
            void *p = (void *)1;
            errno = 1234;
            int rc = posix_memalign(&p, a, n);
            CHECK(rc == 0 && errno == 1234);
            if (rc) continue;
            CHECK(p != NULL && aligned(p, a) && malloc_usable_size(p) >= n);
            memset(p, 0x5a, n);
            free(p);

            p = aligned_alloc(a, n);
            CHECK(p != NULL && aligned(p, a) && malloc_usable_size(p) >= n);
            free(p);

            p = memalign(a, n);
            CHECK(p != NULL && aligned(p, a) && malloc_usable_size(p) >= n);
            if (p) memset(p, 0x33, n);
            free(p);
        }
    }
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 3, 10) == EINVAL && p == (void *)1);
    CHECK(posix_memalign(&p, 0, 10) == EINVAL);
    CHECK(posix_memalign(&p, 4, 10) == EINVAL);  /* not a multiple of sizeof(void *) */
    CHECK(posix_memalign(&p, 24, 10) == EINVAL); /* not a power of two */
    CHECK(posix_memalign(&p, 64, HUGE) == ENOMEM);

    p = aligned_alloc(1, 10);
    CHECK(p != NULL);
    free(p);
    if (frostheap) { /* glibc 2.38's rule; 2.36 rounds the alignment up */
        errno = 0;
        CHECK(aligned_alloc(3, 10) == NULL && errno == EINVAL);
        errno = 0;
        CHECK(aligned_alloc(0, 10) == NULL && errno == EINVAL);
    }
    errno = 0;
    CHECK(aligned_alloc(64, HUGE) == NULL && errno == ENOMEM);

    p = memalign(48, 10); /* rounded up to 64, as glibc does */
    CHECK(p != NULL && aligned(p, 64));
    free(p);
    p = memalign(0, 10);
    CHECK(p != NULL && aligned(p, 16));
    free(p);
    errno = 0;
    CHECK(memalign(HUGE, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign(64, HUGE) == NULL && errno == ENOMEM);

    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    p = valloc(10);
    CHECK(p != NULL && aligned(p, page) && malloc_usable_size(p) >= 10);
    free(p);
    p = valloc(3 * page + 1);
    CHECK(p != NULL && aligned(p, page) && malloc_usable_size(p) >= 3 * page + 1);
    free(p);
    p = pvalloc(10);
    CHECK(p != NULL && aligned(p, page) && malloc_usable_size(p) >= page);
    free(p);
    p = pvalloc(0);
    CHECK(p != NULL && aligned(p, page));
    free(p);
    errno = 0;
    CHECK(pvalloc(HUGE) == NULL && errno == ENOMEM);
}

/* Many live blocks of mixed sizes, freed in a scrambled order. */
static void check_churn(void) {
    enum { N = 20000 };
    static unsigned char *blocks[N];
    static size_t sizes[N];
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t n = (x % 16 == 0) ? (size_t)(x % 200000) : (size_t)(x % 512);
            sizes[i] = n;
            blocks[i] = (i % 3 == 0) ? calloc(1, n) : malloc(n);
            CHECK(blocks[i] != NULL);
            if (blocks[i]) fill(blocks[i], n, (unsigned)i);
        }
        for (int k = 0; k < N; k++) {
            int i = (int)(((uint64_t)k * 7919) % N);
            CHECK(blocks[i] == NULL || intact(blocks[i], sizes[i], (unsigned)i));
            free(blocks[i]);
        }
    }
}

static void suite(void) {
    check_malloc();
    check_calloc();
    check_realloc();
    check_aligned();
    check_churn();
}

static void *thread_suite(void *arg) {
    (void)arg;
    where = "thread";
    suite();
    return NULL;
}

/* With FROSTHEAP_MAX = limit: the limit counts the main heap and other
 * threads' glibc blocks together. */
static size_t limit_mib;
static void *held;
static void *thread_takes_most(void *arg) {
    size_t n = (size_t)(uintptr_t)arg;
    held = malloc(n);
    if (held) memset(held, 1, n);
    return NULL;
}
static void *thread_alloc(void *arg) {
    errno = 0;
    void *p = malloc((size_t)(uintptr_t)arg);
    return p ? p : (void *)(uintptr_t)(errno == ENOMEM ? 1 : 2);
}

static void check_limits(void) {
    size_t limit = limit_mib << 20, half = limit / 2, most = limit / 4 * 3;
    pthread_t t;
    void *r;
    where = "limits";
    errno = 0;
    CHECK(malloc(limit + (1 << 20)) == NULL && errno == ENOMEM);
    pthread_create(&t, NULL, thread_alloc, (void *)(uintptr_t)(limit + (1 << 20)));
    pthread_join(t, &r);
    CHECK(r == (void *)1); /* refused with ENOMEM in the thread too */

    pthread_create(&t, NULL, thread_takes_most, (void *)(uintptr_t)half);
    pthread_join(t, NULL);
    CHECK(held != NULL);
    errno = 0;
    void *p = malloc(most);
    CHECK(p == NULL && errno == ENOMEM); /* the thread's block counts */
    free(held);
    p = malloc(most);
    CHECK(p != NULL); /* and its release too */
    if (p) memset(p, 2, most);
    pthread_create(&t, NULL, thread_alloc, (void *)(uintptr_t)half);
    pthread_join(t, &r);
    CHECK(r == (void *)1); /* main's block counts for the thread */
    free(p);
    pthread_create(&t, NULL, thread_alloc, (void *)(uintptr_t)half);
    pthread_join(t, &r);
    CHECK(r != (void *)1 && r != (void *)2);
    if (r != (void *)1 && r != (void *)2) free(r); /* a cross-thread free of a glibc block */
}

int main(int argc, char **argv) {
    frostheap = argc > 1 && strcmp(argv[1], "glibc") != 0;
    if (argc > 2 && strcmp(argv[1], "limits") == 0) {
        /* A fresh process: the main heap has committed next to nothing. */
        limit_mib = strtoull(argv[2], NULL, 10);
        check_limits();
    } else {
        suite();
        pthread_t t;
        pthread_create(&t, NULL, thread_suite, NULL);
        pthread_join(t, NULL);
    }
    printf("api: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
