/* Threads that map, commit, uncommit, replace and unmap anonymous memory
 * at random, all at once, while another forks: the library's record of
 * counted and reserved ranges under contention. Usage: mapstress THREADS
 * ITERATIONS. Each thread keeps up to 8 regions of 1-16 pages, each either
 * a plain read-write mapping or a PROT_NONE reservation committed and
 * uncommitted page by page with mprotect, sometimes replaced with a
 * MAP_FIXED mapping, unmapped whole or in part; it checks the bytes it
 * wrote are still there, and unmaps everything at the end. Under the
 * library nothing may stay counted ("mapped 0 B" at exit, which the test
 * reads). Prints "mapstress: N operations, F failures". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

enum { REGIONS = 8, MAX_PAGES = 16 };
static long page;
static int iterations;
static long failures_total;
static pthread_mutex_t total_lock = PTHREAD_MUTEX_INITIALIZER;

struct region {
    char *base;
    int pages;
    unsigned char writable[MAX_PAGES]; /* which pages we may touch */
    unsigned char value[MAX_PAGES];    /* what we wrote there */
};

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static int check(struct region *r) {
    int bad = 0;
    for (int i = 0; i < r->pages; i++)
        if (r->writable[i] && r->base[i * page] != (char)r->value[i]) bad++;
    return bad;
}

static void drop(struct region *r) {
    if (r->base) munmap(r->base, r->pages * page);
    r->base = NULL;
}

static void *run(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uintptr_t)arg * 0x100000001b3ull + 1);
    struct region rs[REGIONS];
    memset(rs, 0, sizeof rs);
    long failures = 0;
    for (int it = 0; it < iterations; it++) {
        struct region *r = &rs[next(&x) % REGIONS];
        int op = next(&x) % 6;
        if (!r->base) {
            r->pages = 1 + next(&x) % MAX_PAGES;
            int reserve = next(&x) % 2;
            void *p = mmap(NULL, r->pages * page, reserve ? PROT_NONE : PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | (reserve ? MAP_NORESERVE : 0), -1, 0);
            if (p == MAP_FAILED) { failures++; continue; }
            r->base = p;
            for (int i = 0; i < r->pages; i++) {
                r->writable[i] = !reserve;
                r->value[i] = 0;
            }
            continue;
        }
        failures += check(r);
        int i = next(&x) % r->pages;
        char *pg = r->base + i * page;
        switch (op) {
        case 0: /* commit a page */
            if (mprotect(pg, page, PROT_READ | PROT_WRITE) != 0) { failures++; break; }
            r->writable[i] = 1;
            r->value[i] = (unsigned char)next(&x);
            pg[0] = (char)r->value[i];
            break;
        case 1: /* uncommit a page */
            if (mprotect(pg, page, PROT_NONE) != 0 || madvise(pg, page, MADV_DONTNEED) != 0) {
                failures++;
                break;
            }
            r->writable[i] = 0;
            break;
        case 2: /* replace a page with MAP_FIXED, read-write or not */
        {
            int rw = next(&x) % 2;
            void *p = mmap(pg, page, rw ? PROT_READ | PROT_WRITE : PROT_NONE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (p != pg) { failures++; break; }
            r->writable[i] = rw;
            r->value[i] = 0;
            break;
        }
        case 3: /* unmap the tail from page i (or the whole region) */
            munmap(pg, (r->pages - i) * page);
            if (i == 0) r->base = NULL;
            else r->pages = i;
            break;
        case 4: /* read-only and executable, then writable again */
            if (r->writable[i]) {
                if (mprotect(pg, page, PROT_READ | PROT_EXEC) != 0 ||
                    mprotect(pg, page, PROT_READ | PROT_WRITE) != 0)
                    failures++;
            }
            break;
        default: /* write the page again */
            if (r->writable[i]) {
                r->value[i] = (unsigned char)next(&x);
                pg[0] = (char)r->value[i];
            }
            break;
        }
    }
    for (int k = 0; k < REGIONS; k++) {
        if (rs[k].base) failures += check(&rs[k]);
        drop(&rs[k]);
    }
    pthread_mutex_lock(&total_lock);
    failures_total += failures;
    pthread_mutex_unlock(&total_lock);
    return NULL;
}

/* Forks now and then while the others map: a child must find the record
 * usable (it maps and unmaps once, then exits). */
static void *forker(void *arg) {
    (void)arg;
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            void *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            _exit(p == MAP_FAILED || munmap(p, 4 * page) != 0);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
            pthread_mutex_lock(&total_lock);
            failures_total++;
            pthread_mutex_unlock(&total_lock);
        }
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: mapstress THREADS ITERATIONS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    iterations = atoi(argv[2]);
    page = sysconf(_SC_PAGESIZE);
    free(malloc(1)); /* the library starts, with its fork handlers */
    pthread_t t[64], f;
    if (threads < 1 || threads > 64) return 2;
    pthread_create(&f, NULL, forker, NULL);
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    pthread_join(f, NULL);
    printf("mapstress: %ld operations, %ld failures\n", (long)threads * iterations, failures_total);
    return failures_total != 0;
}
