/* Threads replaced in generations, as a server with a thread per
 * connection replaces them: THREADS threads at once, each holding 32
 * blocks of 16 + 100 * i + 613 * (g % SETS) bytes (generation g: the size
 * classes rotate over SETS sets, as requests change), then all exit and
 * the next generation starts (adopting their heaps, under frostheap).
 * Prints each generation's resident set while its threads hold their
 * blocks; exits 1 at the first refused malloc. Under a limit:
 *
 *   cc -O2 -pthread -o /tmp/thread_generations \
 *       crates/frostheap-bench/preload/thread_generations.c
 *   FROSTHEAP_MAX=256M LD_PRELOAD=target/release/libfrostheap.so \
 *       /tmp/thread_generations 1000 14 7
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_barrier_t held, done;
static int generation, sets;

static void *connection(void *arg) {
    void *p[32];
    for (int i = 0; i < 32; i++) {
        p[i] = malloc(16 + 100 * (size_t)i + 613 * (size_t)(generation % sets));
        if (!p[i]) {
            fprintf(stderr, "thread_generations: generation %d: malloc refused\n", generation);
            exit(1);
        }
        *(volatile char *)p[i] = 1;
    }
    pthread_barrier_wait(&held);
    pthread_barrier_wait(&done);
    for (int i = 0; i < 32; i++)
        free(p[i]);
    return arg;
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    int generations = argc > 2 ? atoi(argv[2]) : 0;
    sets = argc > 3 ? atoi(argv[3]) : 0;
    if (n < 1 || n > 4096 || generations < 1 || sets < 1) {
        fprintf(stderr, "usage: thread_generations THREADS(1-4096) GENERATIONS(>0) SETS(>0)\n");
        return 2;
    }
    pthread_t *t = malloc(n * sizeof *t);
    pthread_barrier_init(&held, NULL, n + 1);
    pthread_barrier_init(&done, NULL, n + 1);
    for (generation = 0; generation < generations; generation++) {
        for (int i = 0; i < n; i++)
            if (pthread_create(&t[i], NULL, connection, NULL)) {
                perror("thread_generations: pthread_create");
                return 1;
            }
        pthread_barrier_wait(&held);
        printf("generation %d: rss %ld KiB\n", generation, rss_kib());
        fflush(stdout);
        pthread_barrier_wait(&done);
        for (int i = 0; i < n; i++)
            pthread_join(t[i], NULL);
    }
    free(t);
    return 0;
}
