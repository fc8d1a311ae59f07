/* A thread that frees another thread's blocks hands them out again first
 * (frostheap's remote cache): malloc returns the last block freed, calloc
 * returns it zeroed, and a block freed twice stops the process with a
 * report, whether the cache holds it or, the cache full, the batch of
 * remote frees (frostheap's heap::remote_batch, whose free of a word it
 * holds is found from the block's address alone).
 *
 *   remote_cache            the checks; prints "remote_cache: N checks, F failures"
 *   remote_cache double     frees one of another thread's blocks twice
 *   remote_cache double-batched
 *                           fills the cache's class, then frees one more
 *                           block of it twice */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* N blocks for the checks; MORE for double-batched: the cache holds 32
 * blocks of SIZE's class (112 B), and the rest go to the batch. */
enum { N = 16, MORE = 40, CACHED = 32, SIZE = 100 };

static int checks, failures;
#define CHECK(c)                                                              \
    do {                                                                      \
        checks++;                                                             \
        if (!(c)) {                                                           \
            failures++;                                                       \
            fprintf(stderr, "remote_cache.c:%d: CHECK(%s) failed\n", __LINE__, \
                    #c);                                                      \
        }                                                                     \
    } while (0)

static unsigned char *blocks[MORE];
static int twice, batched;
/* The maker stays alive (owning its heap) until the freer is done: a
 * thread that exits leaves its heap to be adopted, and the freer would
 * adopt it and free its own blocks. */
static atomic_int made, done;

static void *maker(void *arg) {
    (void)arg;
    for (int i = 0; i < (batched ? MORE : N); i++) {
        blocks[i] = malloc(SIZE);
        memset(blocks[i], 0xAB, SIZE);
    }
    atomic_store(&made, 1);
    while (!atomic_load(&done)) sched_yield();
    return NULL;
}

static void *freer(void *arg) {
    (void)arg;
    /* A thread that has allocated has a heap of its own (and a cache). */
    void *mine = malloc(8);
    if (batched) {
        for (int i = 0; i < CACHED; i++) free(blocks[i]);
        free(blocks[CACHED]);
        printf("freeing %p twice\n", (void *)blocks[CACHED + 1]);
        fflush(stdout);
        free(blocks[CACHED + 1]);
        free(blocks[CACHED + 1]);
        printf("survived a double free\n");
        return NULL;
    }
    if (twice) {
        printf("freeing %p twice\n", (void *)blocks[0]);
        fflush(stdout);
        free(blocks[0]);
        free(blocks[0]);
        printf("survived a double free\n");
        return NULL;
    }
    for (int i = 0; i < N; i++) free(blocks[i]);
    unsigned char *z = calloc(1, SIZE);
    CHECK(z == blocks[N - 1]);
    int zero = 1;
    for (int i = 0; i < SIZE; i++) zero &= z[i] == 0;
    CHECK(zero);
    unsigned char *m = malloc(SIZE);
    CHECK(m == blocks[N - 2]);
    CHECK(malloc_usable_size(m) >= SIZE);
    memset(m, 1, SIZE);
    /* realloc of a block of another heap held by this thread moves it. */
    unsigned char *r = realloc(m, 3 * SIZE);
    CHECK(r != NULL && r[0] == 1 && r[SIZE - 1] == 1);
    free(r);
    free(z);
    free(mine);
    return NULL;
}

int main(int argc, char **argv) {
    twice = argc > 1 && strcmp(argv[1], "double") == 0;
    batched = argc > 1 && strcmp(argv[1], "double-batched") == 0;
    pthread_t a, b;
    pthread_create(&a, NULL, maker, NULL);
    while (!atomic_load(&made)) sched_yield();
    pthread_create(&b, NULL, freer, NULL);
    pthread_join(b, NULL);
    atomic_store(&done, 1);
    pthread_join(a, NULL);
    printf("remote_cache: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
