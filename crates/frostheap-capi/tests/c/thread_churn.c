/* 10,000 short-lived threads on the C ABI: each allocates a little, frees
 * blocks that earlier (exited) threads made, and leaves some of its own to
 * be freed after it exited. Every block is checked before it is freed.
 * Prints "thread_churn: ok" on success. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 10000, BATCH = 50, KEEP = 4 };

typedef struct {
    unsigned char *p;
    size_t n;
    unsigned char tag;
} block;

static block left[THREADS][KEEP]; /* blocks of exited threads */
static int failures;

static void check_free(block *b) {
    for (size_t i = 0; i < b->n; i++) {
        if (b->p[i] != b->tag) {
            failures++;
            fprintf(stderr, "thread_churn: block %p corrupted at %zu\n", (void *)b->p, i);
            break;
        }
    }
    free(b->p);
    b->p = NULL;
}

typedef struct {
    int id;
} arg;

static void *work(void *a) {
    int id = ((arg *)a)->id;
    /* Free what a thread of the previous batch left (it has exited). */
    if (id >= BATCH)
        for (int k = 0; k < KEEP / 2; k++)
            check_free(&left[id - BATCH][k]);
    /* Allocate, use and free some, keep KEEP. */
    for (int i = 0; i < 32; i++) {
        size_t n = 16 + (size_t)((id * 31 + i * 7) % 2000);
        unsigned char *p = malloc(n);
        if (!p) {
            failures++;
            return NULL;
        }
        memset(p, (unsigned char)id, n);
        if (i < KEEP) {
            left[id][i] = (block){p, n, (unsigned char)id};
        } else {
            free(p);
        }
    }
    return NULL;
}

int main(void) {
    static arg args[THREADS];
    for (int start = 0; start < THREADS; start += BATCH) {
        pthread_t t[BATCH];
        for (int i = 0; i < BATCH; i++) {
            args[start + i].id = start + i;
            if (pthread_create(&t[i], NULL, work, &args[start + i]) != 0) {
                fprintf(stderr, "thread_churn: pthread_create failed\n");
                return 1;
            }
        }
        for (int i = 0; i < BATCH; i++)
            pthread_join(t[i], NULL);
        /* The main thread frees the rest of what the previous batch left. */
        if (start >= BATCH)
            for (int i = start - BATCH; i < start; i++)
                for (int k = KEEP / 2; k < KEEP; k++)
                    check_free(&left[i][k]);
    }
    for (int i = THREADS - BATCH; i < THREADS; i++)
        for (int k = 0; k < KEEP; k++)
            check_free(&left[i][k]);
    if (failures) {
        fprintf(stderr, "thread_churn: %d failures\n", failures);
        return 1;
    }
    printf("thread_churn: ok\n");
    return 0;
}
