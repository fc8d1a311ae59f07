/* fork again and again while other threads allocate and free blocks of
 * every size without pause, so that some fork lands in the middle of a
 * thread's allocation or free; each child checks and frees blocks those
 * threads made before they started churning (frees into heaps whose owner
 * does not exist in the child), then grows by 8 MiB and more (the
 * process's growth hook visits the other threads' heaps) and starts a
 * thread of its own. A child that hangs is killed by its alarm and
 * counted as failed; so is one that finds a block changed.
 *
 * Until 2026-12-05 the child gave those heaps up for adoption through
 * their owners' state, which the fork may have cut in half: a span
 * retired twice made a free-span bin a ring, and the child's first
 * growth spun there for good (half of the runs of `fork_churn 300 2`).
 *
 * With "thread" as a third argument, the forks come from a thread of
 * their own while the main thread churns too (its blocks are the main
 * heap's): the child's only thread is then not the main one. Until
 * 2026-12-05 such a child made the forking thread the main heap's owner,
 * through the main thread's state, which the fork may have cut in half too.
 *
 * usage: fork_churn FORKS THREADS [thread]; prints "fork_churn: N children
 * ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAX_THREADS = 9, HELD = 64, SLOTS = 256 };

static atomic_int stop;
static atomic_int ready;
/* Blocks each thread made before churning: never touched again by it. */
static unsigned char *held[MAX_THREADS][HELD];

static void *churn(void *arg) {
    long t = (long)arg;
    for (int i = 0; i < HELD; i++) {
        size_t n = 16 + (size_t)i * 61;
        held[t][i] = malloc(n);
        memset(held[t][i], (int)(t * HELD + i) & 0xff, n);
    }
    atomic_fetch_add(&ready, 1);
    unsigned s = (unsigned)t * 2654435761u + 1;
    void *slots[SLOTS] = {0};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        s = s * 1103515245 + 12345;
        int k = (s >> 8) & (SLOTS - 1);
        free(slots[k]);
        size_t n = (s >> 16) % ((s & 1) ? 200000 : 2000) + 1;
        slots[k] = malloc(n);
        memset(slots[k], k, n < 64 ? n : 64);
    }
    for (int k = 0; k < SLOTS; k++) free(slots[k]);
    return 0;
}

static void *child_thread(void *arg) {
    (void)arg;
    unsigned char *p = malloc(100000);
    if (!p) return 0;
    memset(p, 3, 100000);
    int ok = p[99999] == 3;
    free(p);
    return ok ? (void *)1 : 0;
}

/* The child's work; its exit status. */
static int child(int threads) {
    alarm(20);
    for (int t = 0; t < threads; t++)
        for (int i = 0; i < HELD; i++) {
            size_t n = 16 + (size_t)i * 61;
            for (size_t b = 0; b < n; b++)
                if (held[t][i][b] != (unsigned char)((t * HELD + i) & 0xff)) return 4;
            free(held[t][i]);
        }
    static void *mine[256];
    for (int round = 0; round < 2; round++) {
        for (int j = 0; j < 256; j++) {
            size_t n = (j % 4 == 0) ? 65536 : (size_t)(j * 37 % 4000 + 1);
            mine[j] = malloc(n);
            if (!mine[j]) return 5;
            memset(mine[j], j, n);
        }
        for (int j = 0; j < 256; j++) free(mine[j]);
    }
    pthread_t th;
    void *r;
    if (pthread_create(&th, 0, child_thread, 0) != 0 || pthread_join(th, &r) != 0 || !r) return 6;
    return 0;
}

/* Forks FORKS children one after another and waits for each; the number
 * that failed. */
static int fork_loop(int forks, int churners) {
    int failed = 0;
    for (int i = 0; i < forks; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            exit(1);
        }
        if (p == 0) _exit(child(churners));
        int st;
        if (waitpid(p, &st, 0) != p) exit(1);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failed++;
            fprintf(stderr, "fork_churn: child %d: %s %d\n", i,
                    WIFSIGNALED(st) ? "killed by signal" : "exit status",
                    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        }
    }
    return failed;
}

static int forks_wanted, churners_wanted;
static int forker_failed;

static void *forker(void *arg) {
    (void)arg;
    while (atomic_load(&ready) < churners_wanted) usleep(100);
    forker_failed = fork_loop(forks_wanted, churners_wanted);
    atomic_store(&stop, 1);
    return 0;
}

int main(int argc, char **argv) {
    int from_thread = argc == 4 && strcmp(argv[3], "thread") == 0;
    if (argc != 3 && !from_thread) {
        fprintf(stderr, "usage: fork_churn FORKS THREADS [thread]\n");
        return 2;
    }
    int forks = atoi(argv[1]), threads = atoi(argv[2]);
    if (threads < 1 || threads > MAX_THREADS - 1) return 2;
    /* With "thread", the main thread churns as the last of them. */
    int churners = threads + from_thread;
    pthread_t t[MAX_THREADS];
    for (long i = 0; i < threads; i++) pthread_create(&t[i], 0, churn, (void *)i);
    int failed;
    if (from_thread) {
        forks_wanted = forks;
        churners_wanted = churners;
        pthread_t f;
        pthread_create(&f, 0, forker, 0);
        churn((void *)(long)threads);
        pthread_join(f, 0);
        failed = forker_failed;
    } else {
        while (atomic_load(&ready) < threads) usleep(100);
        failed = fork_loop(forks, threads);
        atomic_store(&stop, 1);
    }
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
    if (failed) {
        printf("fork_churn: %d of %d children failed\n", failed, forks);
        return 1;
    }
    printf("fork_churn: %d children ok\n", forks);
    return 0;
}
