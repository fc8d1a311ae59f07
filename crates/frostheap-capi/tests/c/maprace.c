/* Threads that map, move (mremap) and unmap anonymous memory at once, so
 * that the kernel hands one thread the addresses another has just given
 * back: the library's record of counted ranges must follow the kernel's
 * order of the calls. Usage: maprace THREADS ITERATIONS. Each thread keeps
 * up to 8 regions of 1-64 pages at first; each operation maps a new one,
 * or grows one (to up to three times its size, in place or moved) or
 * shrinks it with mremap, or unmaps its head, its tail or all of it; it
 * checks the first byte of every page it wrote. At the end
 * everything is unmapped: under the library nothing may stay counted
 * ("mapped 0 B" at exit). Prints "maprace: N operations, F failures". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { REGIONS = 8, MAX_PAGES = 64 };
static long page;
static int iterations;
static long failures_total;
static pthread_mutex_t total_lock = PTHREAD_MUTEX_INITIALIZER;

struct region { char *base; int pages; unsigned char tag; };

static uint64_t next(uint64_t *x) {
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static void fill(struct region *r, int from) {
    for (int i = from; i < r->pages; i++) r->base[i * page] = (char)(r->tag + i);
}

static int check(struct region *r, int upto) {
    int bad = 0;
    for (int i = 0; i < upto && i < r->pages; i++)
        if (r->base[i * page] != (char)(r->tag + i)) bad++;
    return bad;
}

static void *run(void *arg) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ ((uintptr_t)arg * 0x100000001b3ull + 1);
    struct region rs[REGIONS];
    memset(rs, 0, sizeof rs);
    long failures = 0;
    for (int it = 0; it < iterations; it++) {
        struct region *r = &rs[next(&x) % REGIONS];
        if (!r->base) {
            r->pages = 1 + next(&x) % MAX_PAGES;
            void *p = mmap(NULL, r->pages * page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { failures++; continue; }
            r->base = p;
            r->tag = (unsigned char)next(&x);
            fill(r, 0);
            continue;
        }
        failures += check(r, r->pages);
        switch (next(&x) % 3) {
        case 0: { /* grow or shrink, moving if it must */
            int pages = next(&x) & 1 && r->pages < 256 ? r->pages + 1 + next(&x) % (2 * r->pages + 8)
                                     : 1 + next(&x) % r->pages;
            void *p = mremap(r->base, r->pages * page, pages * page, MREMAP_MAYMOVE);
            if (p == MAP_FAILED) { failures++; break; }
            int old = r->pages;
            r->base = p, r->pages = pages;
            failures += check(r, old);
            if (pages > old) fill(r, old);
            break;
        }
        case 1: /* the head or the tail goes */
            if (r->pages > 1) {
                int cut = 1 + next(&x) % (r->pages - 1);
                if (next(&x) & 1) {
                    if (munmap(r->base + (r->pages - cut) * page, cut * page)) failures++;
                } else {
                    if (munmap(r->base, cut * page)) failures++;
                    r->base += cut * page;
                    r->tag += cut;
                }
                r->pages -= cut;
                break;
            }
            /* fall through */
        default:
            if (munmap(r->base, r->pages * page)) failures++;
            r->base = NULL;
        }
    }
    for (int i = 0; i < REGIONS; i++)
        if (rs[i].base) {
            failures += check(&rs[i], rs[i].pages);
            munmap(rs[i].base, rs[i].pages * page);
        }
    pthread_mutex_lock(&total_lock);
    failures_total += failures;
    pthread_mutex_unlock(&total_lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: maprace THREADS ITERATIONS\n"); return 2; }
    int threads = atoi(argv[1]);
    iterations = atoi(argv[2]);
    if (threads < 1 || threads > 64 || iterations < 1) { fprintf(stderr, "maprace: bad arguments\n"); return 2; }
    page = sysconf(_SC_PAGESIZE);
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, run, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    printf("maprace: %ld operations, %ld failures\n", (long)threads * iterations, failures_total);
    return failures_total != 0;
}
