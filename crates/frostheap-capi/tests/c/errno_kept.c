/* A call that succeeds leaves errno as it was: every call below is made with
 * errno set to EDOM (a value no allocator or mapping call sets) and must
 * find it there after it returns a result. glibc's allocator keeps errno
 * on success (its free even keeps it since 2.33), and programs test errno
 * after a successful call more often than they should. Until 2026-12-07 a
 * thread that grew another thread's block of 100 MiB found ENOMEM in
 * errno after a successful realloc (the library asks the kernel whether a
 * range is one mapping with an mremap that fails either way).
 *
 * Covered: malloc of 1 B - 64 MiB, calloc, realloc growing and shrinking
 * (in place, moved, a large block's pages moved to another thread's heap,
 * with and without its maker alive), the aligned calls, malloc_usable_size,
 * free (own, another thread's, an exited thread's), a thread's first calls
 * (its heap attached or an exited thread's adopted), malloc_trim,
 * mallinfo2, mmap, mprotect, mremap, munmap. Under FROSTHEAP_MAX=256M
 * also a malloc that only the free memory of a waiting thread's heap can
 * serve, and a refusal, which sets ENOMEM, then a call that succeeds and
 * leaves whatever errno then holds. Run with FROSTHEAP_MAX=256M, with no
 * limit, and under glibc alone.
 * Prints "errno_kept: N checks, F failures". */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"

#define MIB ((size_t)1 << 20)
#define SENTINEL EDOM

/* Checks that `call` (an expression) succeeds by `ok` and keeps errno. */
#define KEPT(call, ok)                                                                  \
    do {                                                                                \
        errno = SENTINEL;                                                               \
        call;                                                                           \
        int e_ = errno;                                                                 \
        CHECK(ok);                                                                      \
        CHECK(e_ == SENTINEL);                                                          \
        if (e_ != SENTINEL && failures < 20)                                            \
            fprintf(stderr, "errno_kept: %s left errno %d\n", #call, e_);              \
    } while (0)

static void fill(void *p, size_t n, unsigned char v) { memset(p, v, n); }

/* One thread's own calls, small to large. */
static void own_calls(void) {
    static const size_t sizes[] = {1, 16, 100, 1000, 4096, 10000, 70000, 300000,
                                   1 << 20, 5 << 20, 33 << 20, 64 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p, *q;
        KEPT(p = malloc(n), p != NULL);
        if (!p)
            continue;
        fill(p, n, 1);
        KEPT(q = realloc(p, n * 2 + 7), q != NULL);
        if (q)
            p = q;
        KEPT(q = realloc(p, n / 2 + 1), q != NULL);
        if (q)
            p = q;
        size_t u;
        KEPT(u = malloc_usable_size(p), u >= n / 2 + 1);
        KEPT(free(p), 1);
        KEPT(p = calloc(n, 1), p != NULL && ((unsigned char *)p)[n - 1] == 0);
        KEPT(free(p), 1);
    }
    for (size_t align = 8; align <= (2 << 20); align <<= 3) {
        void *p = NULL;
        int r;
        KEPT(r = posix_memalign(&p, align, 3000), r == 0 && ((uintptr_t)p & (align - 1)) == 0);
        free(p);
        KEPT(p = aligned_alloc(align, align * 2), p != NULL);
        free(p);
        KEPT(p = memalign(align, 100), p != NULL);
        free(p);
    }
    void *p;
    KEPT(p = valloc(5000), p != NULL);
    free(p);
    /* A large block grown again and again (in place, or its pages moved). */
    char *g = malloc(MIB);
    for (size_t n = 2 * MIB; n <= 48 * MIB && g; n += 3 * MIB) {
        char *q;
        KEPT(q = realloc(g, n), q != NULL);
        if (q) {
            g = q;
            g[n - 1] = 2;
        }
    }
    free(g);
}

static char *handed;
static size_t handed_len, grow_to;
static int handed_ready, handed_done;

static void *grow_handed(void *arg) {
    (void)arg;
    char *q;
    KEPT(q = realloc(handed, grow_to), q != NULL && q[handed_len - 1] == 7);
    if (q)
        handed = q;
    KEPT(free(handed), 1);
    handed = NULL;
    return NULL;
}

static void *make_handed(void *arg) {
    (void)arg;
    char *p = malloc(handed_len);
    if (p)
        fill(p, handed_len, 7);
    handed = p;
    __atomic_store_n(&handed_ready, 1, __ATOMIC_RELEASE);
    /* Waits, running, until the block has been grown. */
    while (!__atomic_load_n(&handed_done, __ATOMIC_ACQUIRE))
        usleep(100);
    return NULL;
}

/* Thread A makes a block, thread B grows it: A still running (waiting
 * for B to finish), or exited. */
static void cross_thread(size_t mib, size_t to_mib, int maker_exits) {
    handed_len = mib * MIB;
    grow_to = to_mib * MIB;
    handed_ready = handed_done = 0;
    handed = NULL;
    pthread_t a, b;
    if (maker_exits)
        handed_done = 1;
    pthread_create(&a, NULL, make_handed, NULL);
    if (maker_exits)
        pthread_join(a, NULL);
    while (!__atomic_load_n(&handed_ready, __ATOMIC_ACQUIRE))
        usleep(100);
    CHECK(handed != NULL);
    if (handed) {
        pthread_create(&b, NULL, grow_handed, NULL);
        pthread_join(b, NULL);
    }
    __atomic_store_n(&handed_done, 1, __ATOMIC_RELEASE);
    if (!maker_exits)
        pthread_join(a, NULL);
}

/* Fills `handed_len` bytes with blocks of 1-64 KiB, frees them (its heap
 * keeps them free), and waits, running, until `handed_done`. */
static void *fill_free_and_wait(void *arg) {
    (void)arg;
    static void *blocks[100000];
    size_t n = 0, k = 0;
    while (n < handed_len && k < 100000) {
        size_t len = 1024 + (k * 7919) % (63 * 1024);
        blocks[k] = malloc(len);
        if (!blocks[k])
            break;
        fill(blocks[k], len, 5);
        n += len;
        k++;
    }
    for (size_t i = 0; i < k; i++)
        free(blocks[i]);
    __atomic_store_n(&handed_ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&handed_done, __ATOMIC_ACQUIRE))
        usleep(100);
    return NULL;
}

static void *small_blocks[1000];

/* A thread's first calls (its heap attached, or an exited thread's
 * adopted) and its others. */
static void *make_small(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++)
        KEPT(small_blocks[i] = malloc(16 + i * 7), small_blocks[i] != NULL);
    return NULL;
}

static void mappings(void) {
    char *m, *r;
    int rc;
    KEPT(m = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
         m != MAP_FAILED);
    if (m == MAP_FAILED)
        return;
    fill(m, 8 * MIB, 3);
    KEPT(rc = mprotect(m, MIB, PROT_READ), rc == 0);
    KEPT(rc = mprotect(m, MIB, PROT_READ | PROT_WRITE), rc == 0);
    KEPT(r = mremap(m, 8 * MIB, 24 * MIB, MREMAP_MAYMOVE), r != MAP_FAILED && r[8 * MIB - 1] == 3);
    if (r == MAP_FAILED)
        r = m;
    else
        m = r;
    KEPT(r = mremap(m, 24 * MIB, 4 * MIB, 0), r == m);
    KEPT(rc = munmap(m, 4 * MIB), rc == 0);
}

int main(void) {
    own_calls();

    /* Threads one after another, each freeing nothing: the main thread
     * frees their blocks after they exit. */
    for (int round = 0; round < 20; round++) {
        pthread_t t;
        pthread_create(&t, NULL, make_small, NULL);
        pthread_join(t, NULL);
        for (int i = 0; i < 1000; i++)
            KEPT(free(small_blocks[i]), 1);
    }

    cross_thread(100, 160, 0);
    cross_thread(100, 160, 1);
    cross_thread(5, 40, 0);

    mappings();

    int r;
    KEPT(r = malloc_trim(0), r == 0 || r == 1);
    struct mallinfo2 mi;
    KEPT(mi = mallinfo2(), mi.arena >= mi.uordblks || mi.arena == 0);

    /* Under FROSTHEAP_MAX=256M: a call that the heaps' free memory
     * serves (taken back from a waiting thread's heap and the main heap's
     * first), then a refusal, which sets ENOMEM, and a successful call
     * after it, which leaves whatever the program set. */
    const char *max = getenv("FROSTHEAP_MAX");
    if (max && atol(max) == 256) {
        handed_len = 150 * MIB;
        handed_ready = handed_done = 0;
        pthread_t w;
        pthread_create(&w, NULL, fill_free_and_wait, NULL);
        while (!__atomic_load_n(&handed_ready, __ATOMIC_ACQUIRE))
            usleep(100);
        void *most;
        KEPT(most = malloc(200 * MIB), most != NULL);
        if (most)
            fill(most, 200 * MIB, 9);
        free(most);
        __atomic_store_n(&handed_done, 1, __ATOMIC_RELEASE);
        pthread_join(w, NULL);
        void *big;
        errno = 0;
        big = malloc(300 * MIB);
        CHECK(big == NULL && errno == ENOMEM);
        free(big);
        void *p;
        KEPT(p = malloc(100), p != NULL);
        free(p);
    }

    printf("errno_kept: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
