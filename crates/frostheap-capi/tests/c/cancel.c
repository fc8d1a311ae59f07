/* A thread with a deferred cancel pending reaches a refused malloc or mmap,
 * whose refusal line the library writes. malloc and mmap are not
 * cancellation points (POSIX): the thread must come back from them, and
 * be cancelled at its own next cancellation point.
 * Usage: cancel lock|refuse|mmap SIZE_MIB, under FROSTHEAP_MAX=64M (a size
 * above 64 refuses a request larger than the limit, one below it a request
 * that fits under the limit with 32 MiB held first: each has its line).
 * - lock: the thread holds a mutex around malloc; main then takes it.
 * - refuse: the thread returns normally, with malloc's NULL and ENOMEM.
 * - mmap: as refuse, with mmap; then main unmaps and maps (the record's
 *   lock must not be left held).
 * Prints "cancel MODE: ok". A thread cancelled inside malloc or mmap hangs
 * main (lock, mmap) or returns PTHREAD_CANCELED (refuse). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static sem_t ready, cancelled;
static size_t size;
static int mode_mmap;
static volatile int refused_ok;

/* The refused call, with the cancel pending and enabled (deferred). */
static void *worker(void *arg) {
    (void)arg;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, 0);
    sem_post(&ready);
    sem_wait(&cancelled);
    pthread_mutex_lock(&m);
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, 0);
    int failed;
    if (mode_mmap) {
        void *p = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        failed = p == MAP_FAILED && errno == ENOMEM;
    } else {
        void *p = malloc(size);
        failed = p == NULL && errno == ENOMEM;
        free(p);
    }
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, 0);
    refused_ok = failed;
    pthread_mutex_unlock(&m);
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, 0);
    pthread_testcancel();
    return (void *)1;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "lock") && strcmp(argv[1], "refuse") && strcmp(argv[1], "mmap"))) {
        fprintf(stderr, "usage: cancel lock|refuse|mmap SIZE_MIB\n");
        return 2;
    }
    size = (size_t)atol(argv[2]) << 20;
    mode_mmap = !strcmp(argv[1], "mmap");
    /* Something recorded (mmap), and held so that a request below the
     * limit is refused by it. */
    char *held = mmap(0, 32 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (held == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(held, 1, 32 << 20);
    sem_init(&ready, 0, 0);
    sem_init(&cancelled, 0, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, 0);
    sem_wait(&ready);
    pthread_cancel(t);
    sem_post(&cancelled);
    void *r;
    pthread_join(t, &r);
    /* Cancelled at pthread_testcancel, after the refused call returned. */
    int fails = 0;
    if (r != PTHREAD_CANCELED || !refused_ok) {
        fprintf(stderr, "cancel: the thread %s, the call %s\n",
                r == PTHREAD_CANCELED ? "was cancelled" : "returned", refused_ok ? "refused" : "did not refuse");
        fails++;
    }
    pthread_mutex_lock(&m);
    pthread_mutex_unlock(&m);
    if (munmap(held, 32 << 20) != 0)
        fails++;
    void *q = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED || munmap(q, 1 << 20) != 0)
        fails++;
    if (fails)
        return 1;
    printf("cancel %s: ok\n", argv[1]);
    return 0;
}
