/* malloc_trim, mallinfo2, mallinfo, malloc_info and malloc_stats, on the
 * main thread and on a second thread whose blocks the main thread frees.
 * Usage: trim glibc|frostheap. The checks common to both hold under glibc
 * too (the program validates itself against the system allocator): the
 * blocks show in `uordblks`, and once they are freed and the heap trimmed
 * the process is back down by at least half their bytes. Those marked
 * frostheap check what differs: glibc gives a freed top back at `free`
 * already (frostheap keeps free memory until it clearly outweighs what is
 * live, or until the trim), counts in `arena` the address space it keeps
 * after a trim (frostheap, what is committed), and returns 0 from a trim
 * with nothing left to give. Prints "trim: N checks, F failures". */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static int frostheap;

enum { BLOCKS = 20000, SIZE = 1000 };
#define BYTES ((size_t)BLOCKS * SIZE)

static long resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) {
        perror("statm");
        exit(2);
    }
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

/* `malloc_info`'s report (to a memory stream): its last `system current`
 * (the totals'), or -1 if the report fails or has none. */
static long info_current(void) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        perror("open_memstream");
        exit(2);
    }
    int r = malloc_info(0, f);
    fclose(f);
    long current = -1;
    const char *key = "<system type=\"current\" size=\"";
    for (char *at = text; r == 0 && (at = strstr(at, key)); at += strlen(key))
        current = atol(at + strlen(key));
    free(text);
    return current;
}

static void **fill(void) {
    void **b = malloc(BLOCKS * sizeof *b);
    for (int i = 0; i < BLOCKS; i++) {
        b[i] = malloc(SIZE);
        if (!b[i]) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        memset(b[i], i, SIZE);
    }
    return b;
}

/* The main thread's own blocks. */
static void main_thread(void) {
    struct mallinfo2 before = mallinfo2();
    void **b = fill();
    struct mallinfo2 full = mallinfo2();
    CHECK(full.uordblks >= before.uordblks + BYTES);
    CHECK(full.arena >= full.uordblks);
    CHECK(full.fordblks <= full.arena);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo small = mallinfo();
#pragma GCC diagnostic pop
    CHECK((size_t)small.uordblks == full.uordblks);
    CHECK((size_t)small.arena == full.arena);
    /* malloc_info's totals hold the blocks; options other than 0 fail. */
    long current = info_current();
    if (current < (long)BYTES) fprintf(stderr, "malloc_info: system current %ld\n", current);
    CHECK(current >= (long)BYTES);
    CHECK(malloc_info(1, stderr) != 0);
    long full_rss = resident_bytes();
    for (int i = 0; i < BLOCKS; i++) free(b[i]);
    free(b);
    struct mallinfo2 freed = mallinfo2();
    /* glibc's figure moves by a few blocks of its own (stdio's). */
    CHECK(freed.uordblks <= before.uordblks + (frostheap ? 0 : 65536));
    long rss = resident_bytes();
    int released = malloc_trim(0);
    long trimmed = resident_bytes();
    if (trimmed > full_rss - (long)BYTES / 2)
        fprintf(stderr, "main: resident %ld full, %ld freed, %ld trimmed\n", full_rss, rss,
            trimmed);
    CHECK(trimmed <= full_rss - (long)BYTES / 2);
    if (frostheap) {
        CHECK(released == 1);
        CHECK(trimmed <= rss - (long)BYTES / 2);
    }
    struct mallinfo2 after = mallinfo2();
    if (frostheap) CHECK(after.arena <= freed.arena - BYTES / 2);
    CHECK(after.uordblks == freed.uordblks);
    /* Everything is given back: nothing more to give. */
    if (frostheap) CHECK(malloc_trim(0) == 0);
}

/* A thread's blocks, freed by the main thread while the thread waits:
 * its trim brings back the spans that filled up and were emptied by
 * another thread. */
static pthread_barrier_t filled, freed;
static void **theirs;
static long thread_rss[3];

static void *filler(void *arg) {
    (void)arg;
    theirs = fill();
    thread_rss[0] = resident_bytes();
    pthread_barrier_wait(&filled);
    pthread_barrier_wait(&freed);
    thread_rss[1] = resident_bytes();
    int released = malloc_trim(0);
    thread_rss[2] = resident_bytes();
    if (frostheap) CHECK(released == 1);
    return NULL;
}

static void other_thread(void) {
    pthread_t t;
    pthread_barrier_init(&filled, NULL, 2);
    pthread_barrier_init(&freed, NULL, 2);
    if (pthread_create(&t, NULL, filler, NULL)) {
        perror("pthread_create");
        exit(2);
    }
    pthread_barrier_wait(&filled);
    struct mallinfo2 full = mallinfo2();
    CHECK(full.uordblks >= BYTES);
    for (int i = 0; i < BLOCKS; i++) free(theirs[i]);
    free(theirs);
    pthread_barrier_wait(&freed);
    pthread_join(t, NULL);
    if (thread_rss[2] > thread_rss[0] - (long)BYTES / 2)
        fprintf(stderr, "thread: resident %ld full, %ld freed, %ld trimmed\n", thread_rss[0],
            thread_rss[1], thread_rss[2]);
    CHECK(thread_rss[2] <= thread_rss[0] - (long)BYTES / 2);
    if (frostheap) CHECK(thread_rss[2] <= thread_rss[1] - (long)BYTES / 2);
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "glibc") && strcmp(argv[1], "frostheap"))) {
        fprintf(stderr, "usage: trim glibc|frostheap\n");
        return 2;
    }
    frostheap = !strcmp(argv[1], "frostheap");
    main_thread();
    other_thread();
    malloc_stats();
    printf("trim: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
