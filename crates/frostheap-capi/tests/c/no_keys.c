/* A process that has used up its pthread keys before its first thread
 * allocates: frostheap gives a thread's heap up at exit through a key's
 * destructor, so without a key the threads get no heap of their own and
 * allocate on the main heap's shared path. Everything must still work.
 * Prints "no keys: N keys taken, M threads ok". */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 8, BLOCKS = 1000 };

static void *run(void *arg) {
    char *b[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        size_t n = 16 + (size_t)(i * 37 % 2000);
        b[i] = malloc(n);
        if (b[i] == NULL)
            return NULL;
        memset(b[i], (int)(uintptr_t)arg, n);
    }
    int ok = 1;
    for (int i = 0; i < BLOCKS; i++) {
        ok &= b[i][0] == (char)(uintptr_t)arg;
        free(b[i]);
    }
    return ok ? arg : NULL;
}

int main(void) {
    void *volatile first = malloc(32); /* the main heap, before any key */
    free(first);
    int keys = 0;
    for (;;) {
        pthread_key_t k;
        int r = pthread_key_create(&k, NULL);
        if (r == EAGAIN)
            break;
        if (r != 0) {
            printf("pthread_key_create: %d\n", r);
            return 2;
        }
        keys++;
    }
    for (uintptr_t i = 1; i <= THREADS; i++) {
        pthread_t t;
        void *r = NULL;
        if (pthread_create(&t, NULL, run, (void *)i) || pthread_join(t, &r)) {
            puts("pthread_create or pthread_join failed");
            return 2;
        }
        if (r != (void *)i) {
            printf("thread %u: allocation failed or its blocks were not intact\n", (unsigned)i);
            return 1;
        }
    }
    printf("no keys: %d keys taken, %d threads ok\n", keys, THREADS);
    return 0;
}
