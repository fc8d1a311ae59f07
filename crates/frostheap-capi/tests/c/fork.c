/* fork, then allocate in the child: from the main thread, from another
 * thread (whose child must adopt the main heap), and while other threads
 * allocate (the atfork handlers hold the heap's locks across fork). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                      \
    do {                                                              \
        if (!(c)) {                                                   \
            failures++;                                               \
            fprintf(stderr, "fork.c:%d: CHECK(%s) failed\n", __LINE__, #c); \
        }                                                             \
    } while (0)

/* The child's work: check inherited blocks, allocate a lot, free all. */
static int child_work(unsigned char **inherited, int n) {
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < 100; k++)
            if (inherited[i][k] != (unsigned char)i) return 10;
        free(inherited[i]);
    }
    enum { M = 5000 };
    static void *mine[M];
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < M; i++) {
            size_t sz = (i % 50 == 0) ? 200000 : (size_t)(i % 900 + 1);
            mine[i] = (i % 2) ? malloc(sz) : calloc(1, sz);
            if (!mine[i]) return 11;
            memset(mine[i], i, sz);
            if (i % 3 == 0) {
                void *q = realloc(mine[i], sz * 2);
                if (!q) return 12;
                mine[i] = q;
            }
        }
        for (int i = 0; i < M; i++) free(mine[i]);
    }
    return 0;
}

static int fork_and_check(unsigned char **blocks, int n) {
    pid_t pid = fork();
    if (pid == 0) _exit(child_work(blocks, n));
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

enum { N = 64 };
static unsigned char *blocks[N];

static void *fork_from_thread(void *arg) {
    (void)arg;
    return (void *)(intptr_t)fork_and_check(blocks, N);
}

static atomic_int stop;
static void *churn(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        void *p = malloc(1000);
        free(p);
    }
    return NULL;
}

int main(void) {
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc(100 + (size_t)i * 1000);
        memset(blocks[i], i, 100);
    }
    CHECK(fork_and_check(blocks, N) == 0);

    pthread_t t;
    void *r;
    pthread_create(&t, NULL, fork_from_thread, NULL);
    pthread_join(t, &r);
    CHECK((intptr_t)r == 0);

    pthread_t churners[2];
    for (int i = 0; i < 2; i++) pthread_create(&churners[i], NULL, churn, NULL);
    for (int k = 0; k < 20; k++) {
        /* main allocates while the churners do; then forks. */
        void *p = malloc(5000);
        CHECK(fork_and_check(blocks, N) == 0);
        free(p);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(churners[i], NULL);

    for (int i = 0; i < N; i++) free(blocks[i]);
    printf("fork: %d failures\n", failures);
    return failures != 0;
}
