/* Cross-thread frees, both ways, with the owner allocating concurrently:
 * main hands blocks to workers, which check and free them (remote frees
 * into the main heap) while main keeps allocating and freeing; workers
 * hand their blocks (glibc) back to main, which checks, resizes and frees
 * them; workers resize main's blocks (which moves them to glibc). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { WORKERS = 4, PER = 4000, ROUNDS = 8 };

static atomic_int failures;
#define CHECK(c)                                                                  \
    do {                                                                          \
        if (!(c) && atomic_fetch_add(&failures, 1) < 20)                          \
            fprintf(stderr, "threads.c:%d: CHECK(%s) failed\n", __LINE__, #c);      \
    } while (0)

typedef struct {
    unsigned char *p;
    size_t n;
} block;

static block from_main[WORKERS][PER];
static atomic_int published[WORKERS]; /* how many of from_main[w] are ready */
static block from_worker[WORKERS][PER];

static size_t size_of(unsigned i) {
    unsigned x = i * 2654435761u;
    return (x % 23 == 0) ? 20000 + x % 300000 : 1 + x % 700;
}
static void fill(block b, unsigned seed) {
    for (size_t i = 0; i < b.n; i++) b.p[i] = (unsigned char)(seed ^ i);
}
static int intact(block b, unsigned seed) {
    for (size_t i = 0; i < b.n; i++)
        if (b.p[i] != (unsigned char)(seed ^ i)) return 0;
    return 1;
}

static void *worker(void *arg) {
    int w = (int)(intptr_t)arg;
    int done = 0;
    while (done < PER) {
        int ready = atomic_load_explicit(&published[w], memory_order_acquire);
        for (; done < ready; done++) {
            block b = from_main[w][done];
            CHECK(intact(b, (unsigned)(w * PER + done)));
            if (done % 5 == 0) {
                /* A worker resizes a main-heap block: it moves to glibc. */
                unsigned char *q = realloc(b.p, b.n + 1000);
                CHECK(q != NULL);
                b.p = q;
                CHECK(intact(b, (unsigned)(w * PER + done)));
            }
            free(b.p);
        }
    }
    for (int i = 0; i < PER; i++) {
        block b = {malloc(size_of((unsigned)i)), size_of((unsigned)i)};
        CHECK(b.p != NULL);
        fill(b, (unsigned)(i + w));
        from_worker[w][i] = b;
    }
    return NULL;
}

int main(void) {
    for (int round = 0; round < ROUNDS; round++) {
        pthread_t t[WORKERS];
        for (int w = 0; w < WORKERS; w++) {
            atomic_store(&published[w], 0);
            pthread_create(&t[w], NULL, worker, (void *)(intptr_t)w);
        }
        /* Publish blocks while allocating and freeing scratch on the side:
         * the owner's fast path runs while remote frees arrive. */
        for (int i = 0; i < PER; i++) {
            for (int w = 0; w < WORKERS; w++) {
                unsigned seed = (unsigned)(w * PER + i);
                block b = {malloc(size_of(seed)), size_of(seed)};
                CHECK(b.p != NULL);
                fill(b, seed);
                from_main[w][i] = b;
                atomic_store_explicit(&published[w], i + 1, memory_order_release);
            }
            void *scratch = malloc(size_of((unsigned)i) / 2 + 1);
            CHECK(scratch != NULL);
            free(scratch);
        }
        for (int w = 0; w < WORKERS; w++) pthread_join(t[w], NULL);
        /* Main checks the workers' glibc blocks, grows some, frees all. */
        for (int w = 0; w < WORKERS; w++) {
            for (int i = 0; i < PER; i++) {
                block b = from_worker[w][i];
                CHECK(intact(b, (unsigned)(i + w)));
                if (i % 7 == 0) {
                    unsigned char *q = realloc(b.p, b.n * 2);
                    CHECK(q != NULL);
                    b.p = q;
                    CHECK(intact(b, (unsigned)(i + w)));
                }
                free(b.p);
            }
        }
    }
    printf("threads: %d rounds, %d failures\n", ROUNDS, atomic_load(&failures));
    return atomic_load(&failures) != 0;
}
