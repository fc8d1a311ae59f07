/* Threads leave their results behind: 8 threads each make 8192 blocks of
 * 1000 bytes, filled, and exit; the main thread checks and frees them all
 * (frees into the heaps the threads left), then grows by 32 MiB of its
 * own through mmap, every page touched. Prints the heaps' committed bytes
 * (mallinfo2's arena, under the library) before the frees, after them
 * and after the growth:
 *
 *   results   prints "results: made=M before=B after=A corrupt=C" */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define THREADS 8
#define BLOCKS 8192
#define SIZE 1000

static void *make(void *arg) {
    unsigned char tag = (unsigned char)(size_t)arg;
    void **blocks = malloc(BLOCKS * sizeof *blocks);
    if (!blocks) return NULL;
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(SIZE);
        if (blocks[i]) memset(blocks[i], tag, SIZE);
    }
    return blocks;
}

int main(void) {
    pthread_t t[THREADS];
    void **made[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, make, (void *)(size_t)(i + 1))) return 2;
    for (int i = 0; i < THREADS; i++)
        if (pthread_join(t[i], (void **)&made[i]) || !made[i]) return 3;
    long corrupt = 0;
    size_t made_by_threads = mallinfo2().arena;
    for (int i = 0; i < THREADS; i++) {
        for (int j = 0; j < BLOCKS; j++) {
            unsigned char *b = made[i][j];
            if (!b) return 4;
            for (int k = 0; k < SIZE; k += 97) corrupt += b[k] != (unsigned char)(i + 1);
            free(b);
        }
        free(made[i]);
    }
    size_t before = mallinfo2().arena;
    size_t len = 32u << 20;
    char *grown = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (grown == MAP_FAILED) return 5;
    for (size_t off = 0; off < len; off += 4096) grown[off] = 1;
    size_t after = mallinfo2().arena;
    munmap(grown, len);
    printf("results: made=%zu before=%zu after=%zu corrupt=%ld\n", made_by_threads, before, after,
           corrupt);
    return 0;
}
