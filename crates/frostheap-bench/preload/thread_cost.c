/* What each thread costs in resident memory: N threads start, each makes
 * one allocation of 64 bytes (ALLOC = 1), none (ALLOC = 0), or ALLOC
 * blocks of 16 + 100 * i bytes (ALLOC = 2..64: that many size classes,
 * as a thread per connection holds a few buffers of each), and all wait
 * while the main thread reads its own VmRSS and RssAnon; prints the growth
 * per thread and in all. Run it plain (glibc) and under each preloaded
 * allocator:
 *
 *   cc -O2 -pthread -o /tmp/thread_cost crates/frostheap-bench/preload/thread_cost.c
 *   /tmp/thread_cost 16 1
 *   LD_PRELOAD=target/release/libfrostheap.so /tmp/thread_cost 16 1
 *   LD_PRELOAD=target/release/libfrostheap.so /tmp/thread_cost 1000 32
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_barrier_t started, done;

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = 0;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n))
            kib = atol(line + n);
    if (f)
        fclose(f);
    return kib;
}

static int blocks;

static void *allocating(void *arg) {
    void *p[64];
    for (int i = 0; i < blocks; i++) {
        p[i] = malloc(blocks == 1 ? 64 : 16 + 100 * (size_t)i);
        if (!p[i]) {
            fprintf(stderr, "thread_cost: malloc refused\n");
            exit(1);
        }
        *(volatile char *)p[i] = 1;
    }
    pthread_barrier_wait(&started);
    pthread_barrier_wait(&done);
    for (int i = 0; i < blocks; i++)
        free(p[i]);
    return arg;
}

static void *idle(void *arg) {
    pthread_barrier_wait(&started);
    pthread_barrier_wait(&done);
    return arg;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 16;
    blocks = argc > 2 ? atoi(argv[2]) : 1;
    if (n < 1 || n > 1024 || blocks < 0 || blocks > 64) {
        fprintf(stderr, "usage: thread_cost THREADS(1-1024) [ALLOC(0-64)]\n");
        return 2;
    }
    pthread_t *t = malloc(n * sizeof *t);
    pthread_barrier_init(&started, NULL, n + 1);
    pthread_barrier_init(&done, NULL, n + 1);
    long rss0 = status_kib("VmRSS:"), anon0 = status_kib("RssAnon:");
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, blocks ? allocating : idle, NULL)) {
            perror("thread_cost: pthread_create");
            return 1;
        }
    pthread_barrier_wait(&started);
    long rss1 = status_kib("VmRSS:"), anon1 = status_kib("RssAnon:");
    pthread_barrier_wait(&done);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    free(t);
    printf("per thread: rss %.1f KiB, anon %.1f KiB; in all: rss %ld KiB\n",
           (rss1 - rss0) / (double)n, (anon1 - anon0) / (double)n, rss1);
    return 0;
}
