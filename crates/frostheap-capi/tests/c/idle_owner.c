/* A worker thread makes results and waits, alive, for the next job while
 * the main thread uses and frees them: the blocks go back into the heap of
 * a thread that does not allocate. Each of ROUNDS rounds, the worker makes
 * 40 MiB of 1000-byte blocks, filled (pausing 20 ms halfway); the main
 * thread checks and frees them, then makes 40 MiB of its own (pausing 20
 * ms halfway too) and frees them. Under a 64 MiB limit nothing may be refused: the memory the
 * worker's blocks held must serve the main thread.
 *
 *   idle_owner limit   prints "idle_owner: refused=R most=M corrupt=C", M
 *                      the most the heaps had committed (mallinfo2's
 *                      arena) with the main thread's 40 MiB made
 *   idle_owner trim    one round, then malloc_trim while the worker waits;
 *                      prints "idle_owner: before=B after=A corrupt=C",
 *                      the heaps' committed bytes (mallinfo2's arena)
 *                      before and after the trim */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCKS (40 * 1024 * 1024 / 1024)
#define SIZE 1000
#define ROUNDS 10

static void *made[BLOCKS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int job, done, quit;
static long worker_refused;

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (job == done && !quit) pthread_cond_wait(&cv, &mu);
        if (quit) break;
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < BLOCKS; i++) {
            /* A pause halfway, as the main thread's below (see there). */
            if (i == BLOCKS / 2) usleep(20000);
            made[i] = malloc(SIZE);
            if (made[i]) memset(made[i], (unsigned char)(job + 1), SIZE);
            else worker_refused++;
        }
        pthread_mutex_lock(&mu);
        done = job;
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Asks the worker for round `r`'s results and waits for them. */
static void produce(int r) {
    pthread_mutex_lock(&mu);
    job = r;
    pthread_cond_broadcast(&cv);
    while (done != r) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

/* Checks and frees the worker's blocks; returns the bytes found wrong. */
static long consume(int r) {
    long corrupt = 0;
    for (int i = 0; i < BLOCKS; i++) {
        unsigned char *b = made[i];
        if (!b) continue;
        for (int k = 0; k < SIZE; k += 97) corrupt += b[k] != (unsigned char)(r + 1);
        free(b);
    }
    return corrupt;
}

int main(int argc, char **argv) {
    int trim = argc > 1 && !strcmp(argv[1], "trim");
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL)) return 2;
    long corrupt = 0, refused = 0;
    size_t most = 0;
    void **mine = malloc(BLOCKS * sizeof *mine);
    if (!mine) return 3;
    for (int r = 1; r <= (trim ? 1 : ROUNDS); r++) {
        produce(r);
        corrupt += consume(r);
        if (trim) break;
        for (int i = 0; i < BLOCKS; i++) {
            /* Halfway, a pause of 20 ms, as between two requests: the
             * worker has then made no allocation for more than 10 ms.
             * The growth hook looks only as the process grows, and judges
             * a heap idle over two looks 10 ms apart; so the worker pauses
             * halfway too, for the main heap's free memory to go back
             * while it grows. Without that, a worker that made its 40 MiB
             * in under 10 ms left the main heap's free memory in place,
             * the main thread made its 40 MiB from it without growing (no
             * look, the worker's freed 40 MiB kept), and the worker made
             * its next from those without growing either: both heaps kept
             * 40 MiB from then on (84-87 MB; pinned to one CPU, 27 runs in
             * 30). The hook now also looks when a heap takes 4 MiB of its
             * free memory back into use (none in 30 without the pause,
             * though the round's peak RSS stays 85 MB); the pause keeps
             * each round the same. */
            if (i == BLOCKS / 2) usleep(20000);
            mine[i] = malloc(SIZE);
            if (mine[i]) memset(mine[i], 0x5a, SIZE);
            else refused++;
        }
        size_t now = mallinfo2().arena;
        if (now > most) most = now;
        for (int i = 0; i < BLOCKS; i++) free(mine[i]);
    }
    if (trim) {
        size_t before = mallinfo2().arena;
        malloc_trim(0);
        size_t after = mallinfo2().arena;
        printf("idle_owner: before=%zu after=%zu corrupt=%ld\n", before, after, corrupt);
    } else {
        printf("idle_owner: refused=%ld most=%zu corrupt=%ld\n", refused + worker_refused, most,
               corrupt);
    }
    pthread_mutex_lock(&mu);
    quit = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);
    free(mine);
    return 0;
}
