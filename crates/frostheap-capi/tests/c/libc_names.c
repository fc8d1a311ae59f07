/* glibc's second names for its allocator (__libc_malloc, __libc_free,
 * __libc_calloc, __libc_realloc, __libc_memalign, __libc_valloc,
 * __libc_pvalloc, __libc_mallinfo, and the old cfree), mixed with the usual
 * ones on one thread and across threads, and under the limit.
 * Usage: libc_names glibc|frostheap. The checks common to both hold under
 * glibc too (the program validates itself against the system allocator);
 * those marked frostheap check the limit (run it with FROSTHEAP_MAX=64M)
 * and that `cfree` is there for old binaries (glibc 2.26 and later keep it
 * for them only, out of dlsym's reach). Then a thread whose last
 * allocations come after it gave its heap up (from a pthread key's
 * destructor, which glibc runs after the library's) gets glibc blocks,
 * which the main thread resizes and frees; malloc_stats() is called while
 * they are live. Prints "libc_names: N checks, F failures". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern struct mallinfo __libc_mallinfo(void);

#include "check.h"

static int frostheap;

static int all(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

/* One thread: every second name, and blocks passed between the names. */
static void names(void) {
    unsigned char *p = __libc_malloc(100);
    CHECK(p != NULL);
    memset(p, 1, 100);
    free(p);

    p = malloc(100);
    CHECK(p != NULL);
    memset(p, 2, 100);
    __libc_free(p);

    p = __libc_calloc(100, 10);
    CHECK(p != NULL && all(p, 1000, 0));
    memset(p, 3, 1000);
    p = __libc_realloc(p, 50000);
    CHECK(p != NULL && all(p, 1000, 3));
    p = realloc(p, 200);
    CHECK(p != NULL && all(p, 200, 3));
    __libc_free(p);

    p = __libc_memalign(256, 100);
    CHECK(p != NULL && (uintptr_t)p % 256 == 0);
    free(p);

    long page = sysconf(_SC_PAGESIZE);
    p = __libc_valloc(100);
    CHECK(p != NULL && (uintptr_t)p % page == 0);
    __libc_free(p);
    p = __libc_pvalloc(100);
    CHECK(p != NULL && (uintptr_t)p % page == 0 && malloc_usable_size(p) >= (size_t)page);
    free(p);

    /* __libc_mallinfo sees blocks from either name (small ones: glibc
     * counts its mmapped blocks elsewhere). */
    struct mallinfo before = __libc_mallinfo();
    enum { N = 100, SIZE = 10000 };
    void *b[N];
    for (int i = 0; i < N; i++) b[i] = i % 2 ? __libc_malloc(SIZE) : malloc(SIZE);
    struct mallinfo during = __libc_mallinfo();
    CHECK((long)during.uordblks - before.uordblks >= (long)N * SIZE);
    for (int i = 0; i < N; i++) i % 2 ? free(b[i]) : __libc_free(b[i]);

    void (*old_free)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    if (frostheap)
        CHECK(old_free != NULL);
    if (old_free)
        old_free(__libc_malloc(10));
}

/* Blocks made on one thread under one name, freed on another under the
 * other. */
static void *make(void *arg) {
    void **b = arg;
    for (int i = 0; i < 1000; i++) {
        b[i] = i % 2 ? __libc_malloc(16 + i) : malloc(16 + i);
        if (b[i]) memset(b[i], 4, 16 + i);
    }
    return NULL;
}

static void across_threads(void) {
    static void *b[1000];
    pthread_t t;
    CHECK(pthread_create(&t, NULL, make, b) == 0);
    pthread_join(t, NULL);
    int ok = 1;
    for (int i = 0; i < 1000; i++) {
        ok &= b[i] != NULL && all(b[i], 16 + i, 4);
        i % 3 ? __libc_free(b[i]) : free(b[i]);
    }
    CHECK(ok);
}

/* frostheap: __libc_malloc is capped like malloc, and refuses with ENOMEM;
 * once freed, the memory is there again. */
static void limit(void) {
    enum { MIB = 1 << 20, MAX = 200 };
    static void *b[MAX];
    int n = 0;
    errno = 0;
    while (n < MAX && (b[n] = __libc_malloc(MIB)) != NULL) memset(b[n++], 5, MIB);
    CHECK(n > 0 && n <= 64);
    CHECK(n < MAX && errno == ENOMEM);
    for (int i = 0; i < n; i++) __libc_free(b[i]);
    void *again = malloc(8 * MIB);
    CHECK(again != NULL);
    free(again);
}

/* A thread's allocations after it gave up its heap: glibc's, charged. */
static pthread_key_t late_key;
static void *late[2];

static void late_destructor(void *arg) {
    (void)arg;
    late[0] = malloc(1000);
    late[1] = __libc_calloc(1, 9000);
    if (late[0]) memset(late[0], 6, 1000);
}

static void *set_late_key(void *arg) {
    (void)arg;
    free(malloc(100)); /* the thread gets its heap */
    pthread_setspecific(late_key, (void *)1);
    return NULL;
}

static void after_exit(void) {
    CHECK(pthread_key_create(&late_key, late_destructor) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, set_late_key, NULL) == 0);
    pthread_join(t, NULL);
    CHECK(late[0] != NULL && late[1] != NULL);
    if (!late[0] || !late[1]) return;
    CHECK(all(late[1], 9000, 0));
    malloc_stats(); /* while the late blocks are live */
    late[0] = realloc(late[0], 30000);
    CHECK(late[0] != NULL && all(late[0], 1000, 6));
    free(late[0]);
    __libc_free(late[1]);
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: libc_names glibc|frostheap\n");
        return 2;
    }
    frostheap = !strcmp(argv[1], "frostheap");
    names();
    across_threads();
    if (frostheap) limit();
    after_exit();
    printf("libc_names: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
