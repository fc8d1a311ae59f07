/* Threads that call malloc_trim at the same moment, as their first word
 * to the allocator, in a process that never had glibc allocate anything.
 * Under the library glibc's own malloc_trim must not be reached then: it
 * initialises glibc's allocator on the way, and threads doing so together
 * crashed in its half-initialised main arena. Usage: trim_race THREADS.
 * Prints "trim_race: N threads trimmed". */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_barrier_t start;

static void *trim(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start);
    malloc_trim(0);
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    if (n < 1 || n > 64) return 2;
    pthread_t t[64];
    pthread_barrier_init(&start, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, trim, NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("trim_race: %d threads trimmed\n", n);
    return 0;
}
