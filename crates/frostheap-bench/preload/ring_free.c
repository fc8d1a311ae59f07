/* A pipeline of two threads: the main thread makes COUNT blocks (of SIZE
 * bytes, or of 64 KiB - 8 MiB at random with SIZE 0), writes a byte every
 * 64 KiB of each, and hands them through a ring of 64 slots to a second
 * thread, which frees them. Whenever the maker waits for its CPU, the
 * freeing thread may empty the maker's heap: an allocator that gives the
 * free memory back as soon as little is live faults it in again at once.
 *
 * usage: ring_free [SIZE] [COUNT]   (defaults: 0, 40000) */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS 64
static void *_Atomic ring[SLOTS];
static atomic_int done;

static void *consume(void *arg) {
    (void)arg;
    for (int i = 0;; i = (i + 1) % SLOTS) {
        void *p = atomic_exchange(&ring[i], NULL);
        if (p)
            free(p);
        else if (atomic_load(&done))
            break;
        else
            sched_yield();
    }
    for (int j = 0; j < SLOTS; j++)
        free(atomic_exchange(&ring[j], NULL));
    return NULL;
}

int main(int argc, char **argv) {
    size_t fixed = argc > 1 ? strtoul(argv[1], NULL, 0) : 0;
    long count = argc > 2 ? atol(argv[2]) : 40000;
    uint64_t x = 88172645463325252ULL;
    pthread_t t;
    pthread_create(&t, NULL, consume, NULL);
    for (long i = 0; i < count; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t size = fixed ? fixed : ((size_t)64 << 10) << (x % 8);
        char *p = malloc(size);
        if (!p)
            return 1;
        for (size_t o = 0; o < size; o += 65536)
            p[o] = 1;
        while (atomic_load(&ring[i % SLOTS]))
            sched_yield();
        atomic_store(&ring[i % SLOTS], p);
    }
    atomic_store(&done, 1);
    pthread_join(t, NULL);
    return 0;
}
