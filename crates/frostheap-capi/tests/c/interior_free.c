/* ci/chaos.sh's check that its build has the debug checks on: main frees
 * an address inside a block another thread's heap made. A build with debug
 * assertions stops with "frostheap (debug check): not a block boundary of
 * its span"; a release build does not check it (see ci/chaos.sh). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static char *block;

static void *make(void *arg) {
    (void)arg;
    block = malloc(64);
    return NULL;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, make, NULL);
    pthread_join(t, NULL);
    free(block + 16);
    puts("interior free accepted");
    return 0;
}
