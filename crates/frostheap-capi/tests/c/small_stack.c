/* Threads with the smallest stack the system allows (PTHREAD_STACK_MIN)
 * make their first allocations, which give them their heaps. The heap is
 * built in its slot, not on the thread's stack: built on the stack and
 * moved, it took 14 KiB of it, and these threads crashed (SIGSEGV) in
 * their first malloc. Prints "small stack: N threads ok". */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 8 };

static void *run(void *arg) {
    size_t n = 16 + (size_t)(uintptr_t)arg * 40;
    char *p = malloc(n);
    if (p == NULL)
        return NULL;
    memset(p, 0x5a, n);
    char *q = realloc(p, 2 * n);
    if (q == NULL) {
        free(p);
        return NULL;
    }
    int ok = q[n - 1] == 0x5a;
    free(q);
    return ok ? arg : NULL;
}

int main(void) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) || pthread_attr_setstacksize(&attr, PTHREAD_STACK_MIN)) {
        puts("cannot set a thread stack of PTHREAD_STACK_MIN");
        return 2;
    }
    for (uintptr_t i = 1; i <= THREADS; i++) {
        pthread_t t;
        void *r = NULL;
        if (pthread_create(&t, &attr, run, (void *)i) || pthread_join(t, &r)) {
            puts("pthread_create or pthread_join failed");
            return 2;
        }
        if (r != (void *)i) {
            printf("thread %u: its blocks were not intact\n", (unsigned)i);
            return 1;
        }
    }
    printf("small stack: %d threads ok\n", THREADS);
    return 0;
}
