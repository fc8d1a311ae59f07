/* Threads that exit with free memory resident: 8 threads at once each
 * write 96 blocks of 64 KiB, free them and exit; then one more thread
 * does the same; then the program trims. Prints the heaps' committed
 * bytes (mallinfo2's arena, under the library) after the eight exited,
 * while the ninth held its blocks, and after the trim:
 *
 *   warm   prints "warm: kept=K holding=H trimmed=T corrupt=C" */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 8
#define BLOCKS 96
#define SIZE (64 << 10)

static pthread_barrier_t together;
static size_t holding;

static void *work(void *arg) {
    unsigned char tag = (unsigned char)(size_t)arg;
    void *blocks[BLOCKS];
    long corrupt = 0;
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(SIZE);
        if (!blocks[i]) return (void *)-1;
        memset(blocks[i], tag, SIZE);
    }
    for (int i = 0; i < BLOCKS; i++)
        for (int k = 0; k < SIZE; k += 4093) corrupt += ((unsigned char *)blocks[i])[k] != tag;
    if (tag <= THREADS) pthread_barrier_wait(&together); /* all eight hold theirs at once */
    else holding = mallinfo2().arena;
    for (int i = 0; i < BLOCKS; i++) free(blocks[i]);
    return (void *)corrupt;
}

int main(void) {
    pthread_t t[THREADS + 1];
    long corrupt = 0;
    void *r;
    pthread_barrier_init(&together, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, work, (void *)(size_t)(i + 1))) return 2;
    for (int i = 0; i < THREADS; i++) {
        if (pthread_join(t[i], &r) || r == (void *)-1) return 3;
        corrupt += (long)r;
    }
    size_t kept = mallinfo2().arena;
    if (pthread_create(&t[THREADS], NULL, work, (void *)(size_t)(THREADS + 1))) return 2;
    if (pthread_join(t[THREADS], &r) || r == (void *)-1) return 3;
    corrupt += (long)r;
    malloc_trim(0);
    size_t trimmed = mallinfo2().arena;
    printf("warm: kept=%zu holding=%zu trimmed=%zu corrupt=%ld\n", kept, holding, trimmed, corrupt);
    return 0;
}
