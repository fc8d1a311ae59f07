/* libfrostheap.so loaded with dlopen() instead of LD_PRELOAD: its
 * thread's-heap word is initial-exec TLS, which a dlopened library takes
 * from glibc's surplus of static TLS. The library's own malloc and free
 * (looked up with dlsym, RTLD_LOCAL: the program's malloc stays glibc's)
 * serve the main thread and two other threads, with blocks freed across
 * threads, and after the threads exit. Then a thread with a heap of the
 * library outlives a dlclose of it: the library stays loaded (-z
 * nodelete) and the thread's exit, which runs the library's pthread key
 * destructor, is safe. Usage: dlopen PATH-TO-LIBRARY. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void *(*fh_malloc)(size_t);
static void (*fh_free)(void *);
static int failures;

#define CHECK(c)                                                           \
    do {                                                                   \
        if (!(c)) {                                                        \
            failures++;                                                    \
            fprintf(stderr, "dlopen.c:%d: CHECK(%s) failed\n", __LINE__, #c); \
        }                                                                  \
    } while (0)

enum { N = 2000 };
static unsigned char *from_thread[2][N];

static pthread_barrier_t holding, closed;

/* Allocates (so it gets a heap of the library), then waits for main's
 * dlclose before it frees and exits. */
static void *outliver(void *arg) {
    unsigned char *p = fh_malloc(64);
    pthread_barrier_wait(&holding);
    pthread_barrier_wait(&closed);
    if (!p) return (void *)1;
    fh_free(p);
    return arg;
}

static void *worker(void *arg) {
    long t = (long)arg;
    for (int i = 0; i < N; i++) {
        unsigned char *p = fh_malloc((size_t)(i % 500) + 1);
        if (!p) return (void *)1;
        p[0] = (unsigned char)(t + i);
        if (i % 2) fh_free(p); else from_thread[t][i] = p;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: dlopen LIBRARY\n"); return 2; }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    fh_malloc = (void *(*)(size_t))dlsym(lib, "malloc");
    fh_free = (void (*)(void *))dlsym(lib, "free");
    CHECK(fh_malloc && fh_free);
    if (!fh_malloc || !fh_free) return 1;
    unsigned char *mine = fh_malloc(100);
    CHECK(mine != NULL);
    memset(mine, 7, 100);
    pthread_t t[2];
    for (long i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < 2; i++) {
        void *r = (void *)1;
        pthread_join(t[i], &r);
        CHECK(r == NULL);
    }
    /* The workers exited: their blocks are freed here (remote frees into
     * heaps waiting for adoption), and a new thread adopts one. */
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < N; i += 2) {
            CHECK(from_thread[k][i][0] == (unsigned char)(k + i));
            fh_free(from_thread[k][i]);
        }
    CHECK(pthread_create(&t[0], NULL, worker, (void *)0) == 0);
    pthread_join(t[0], NULL);
    for (int i = 0; i < N; i += 2) fh_free(from_thread[0][i]);
    CHECK(mine[99] == 7);
    fh_free(mine);
    pthread_barrier_init(&holding, NULL, 2);
    pthread_barrier_init(&closed, NULL, 2);
    CHECK(pthread_create(&t[1], NULL, outliver, NULL) == 0);
    pthread_barrier_wait(&holding);
    CHECK(dlclose(lib) == 0);
    CHECK(dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL); /* still there */
    pthread_barrier_wait(&closed);
    void *r = (void *)1;
    pthread_join(t[1], &r);
    CHECK(r == NULL);
    printf("dlopen: %d failures\n", failures);
    return failures != 0;
}
