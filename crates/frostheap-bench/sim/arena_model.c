/* What a coalescing arena for the larger small blocks would cost in time
 * and hold in pages, in the `local` case of the `threads` benchmark
 * (64 live blocks a thread, replaced in turn by blocks of 16 B - 4 KiB),
 * against segregated size classes, both as models run side by side in one
 * process, single-threaded. coalesce.py simulates the pages; this measures
 * what finding, splitting and coalescing blocks costs next to a class's
 * free-list pop, which is what keeps `local` at about 0.45x jemalloc's
 * time (docs/threads.md).
 *
 * Both models carve blocks on demand and count as resident every 4 KiB
 * page a block was ever carved on. The class model is frostheap's policy in
 * a small heap without its borrowing: 16 B steps to 128 B, then four
 * classes per power of two, a LIFO free list in the blocks per class. The
 * arena model sends blocks of up to THRESH bytes to the same classes and
 * larger ones to one arena of 256-byte granules: free blocks on doubly
 * linked lists by length (exact up to 16 granules, then by power of two),
 * a bit per non-empty list, boundary tags in a side array (a 16-bit
 * length at a block's first granule, and at a free block's last one too,
 * with the top bit set while free), first fit from the smallest list that
 * fits, the rest split off, a freed block merged with free neighbours at
 * once and with the carving frontier when it ends there.
 *
 *   cc -O2 -o /tmp/arena_model crates/frostheap-bench/sim/arena_model.c
 *   /tmp/arena_model [ops] [rounds] [thresh] [cap]
 *
 * (cap: freed blocks kept whole per length in front of the arena, 0 by
 * default) prints, per round, ns per replacement of each model and their
 * ratio, and the pages each holds at the end. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../preload/clock_rng.h"

enum { WINDOW = 64, LO = 16, HI = 4096, PAGE = 4096 };
enum { N_CLASSES = 28, GRAN = 256, ARENA = 8 << 20, NG = ARENA / GRAN };

static void *reserve(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

/* ---- segregated classes ---- */

static uint32_t class_size[N_CLASSES];
static uint8_t class_of_16[HI / 16 + 1];

static void classes_init(void) {
    for (int c = 0; c < N_CLASSES; c++) {
        if (c < 8) class_size[c] = 16 * (c + 1);
        else {
            int g = (c - 8) / 4, i = (c - 8) % 4, k = 7 + g;
            class_size[c] = (1u << k) + (i + 1) * (1u << (k - 2));
        }
    }
    for (int i = 0, c = 0; i <= HI / 16; i++) {
        while (class_size[c] < (uint32_t)(i ? i * 16 : 1)) c++;
        class_of_16[i] = (uint8_t)c;
    }
}

typedef struct {
    char *span[N_CLASSES];
    void *free[N_CLASSES];
    uint32_t carved[N_CLASSES];
} classes_t;

static void classes_new(classes_t *h) {
    memset(h, 0, sizeof *h);
    /* A class never has more than the window's blocks live at once. */
    for (int c = 0; c < N_CLASSES; c++) h->span[c] = reserve((size_t)WINDOW * class_size[c]);
}

static inline void *class_alloc(classes_t *h, int c) {
    void *p = h->free[c];
    if (p) { h->free[c] = *(void **)p; return p; }
    p = h->span[c] + (size_t)h->carved[c]++ * class_size[c];
    return p;
}

static inline void class_free(classes_t *h, int c, void *p) {
    *(void **)p = h->free[c];
    h->free[c] = p;
}

static size_t class_pages(classes_t *h) {
    size_t n = 0;
    for (int c = 0; c < N_CLASSES; c++) n += ((size_t)h->carved[c] * class_size[c] + PAGE - 1) / PAGE;
    return n;
}

/* ---- the arena ---- */

enum { N_LISTS = 32, FREE_BIT = 0x8000 };

typedef struct link { struct link *next, *prev; } link_t;

typedef struct {
    char *base;
    uint16_t *tag;  /* side array: a length per block start (and free end) */
    link_t *list[N_LISTS];
    uint32_t nonempty;
    uint32_t top, top_max;  /* granules carved, and the most ever */
    /* In front of it, per length up to 16 granules, at most `cap` freed
     * blocks kept whole (LIFO, linked in the blocks), as glibc's tcache
     * is: the allocation of that length takes one back first. */
    void *quick[17];
    uint32_t quick_len[17], cap;
} arena_t;

static inline int list_of(uint32_t k) {
    if (k <= 16) return (int)k - 1;
    return 16 + (31 - __builtin_clz(k)) - 4; /* 17..31 -> 16, 32..63 -> 17, ... */
}

static void arena_new(arena_t *a) {
    memset(a, 0, sizeof *a);
    a->base = reserve(ARENA);
    a->tag = reserve(NG * sizeof *a->tag);
}

static inline void push(arena_t *a, uint32_t g, uint32_t k) {
    link_t *b = (link_t *)(a->base + (size_t)g * GRAN);
    int l = list_of(k);
    b->prev = NULL;
    b->next = a->list[l];
    if (b->next) b->next->prev = b;
    a->list[l] = b;
    a->nonempty |= 1u << l;
    a->tag[g] = (uint16_t)(k | FREE_BIT);
    a->tag[g + k - 1] = (uint16_t)(k | FREE_BIT);
}

static inline void unlink_block(arena_t *a, uint32_t g, uint32_t k) {
    link_t *b = (link_t *)(a->base + (size_t)g * GRAN);
    int l = list_of(k);
    if (b->prev) b->prev->next = b->next;
    else if (!(a->list[l] = b->next)) a->nonempty &= ~(1u << l);
    if (b->next) b->next->prev = b->prev;
}

/* A live block's length at its first granule, and no free mark at its
 * last: a free block's end tag left there would make a freed right
 * neighbour merge with it. */
static inline void mark_live(arena_t *a, uint32_t g, uint32_t k) {
    a->tag[g + k - 1] = 0;
    a->tag[g] = (uint16_t)k;
}

static inline void *arena_alloc(arena_t *a, size_t n) {
    uint32_t k = (uint32_t)((n + GRAN - 1) / GRAN);
    void *q = a->quick[k];
    if (q) {
        a->quick[k] = *(void **)q;
        a->quick_len[k]--;
        return q;
    }
    int l = list_of(k);
    /* An exact list holds blocks of length k; a power-of-two one may hold
     * shorter blocks than k, so search from the next list up. */
    uint32_t from = (k <= 16) ? (uint32_t)l : (uint32_t)l + 1;
    uint32_t mask = from < N_LISTS ? a->nonempty >> from : 0;
    if (mask) {
        int m = (int)from + __builtin_ctz(mask);
        link_t *b = a->list[m];
        uint32_t g = (uint32_t)(((char *)b - a->base) / GRAN);
        uint32_t len = a->tag[g] & ~FREE_BIT;
        unlink_block(a, g, len);
        if (len > k) push(a, g + k, len - k);
        mark_live(a, g, k);
        return b;
    }
    uint32_t g = a->top;
    if (g + k > NG) {
        fprintf(stderr, "the arena's %d granules are carved out\n", NG);
        exit(1);
    }
    a->top += k;
    if (a->top > a->top_max) a->top_max = a->top;
    mark_live(a, g, k);
    return a->base + (size_t)g * GRAN;
}

static inline void arena_free(arena_t *a, void *p) {
    uint32_t g = (uint32_t)(((char *)p - a->base) / GRAN);
    uint32_t k = a->tag[g];
    if (a->quick_len[k] < a->cap) {
        *(void **)p = a->quick[k];
        a->quick[k] = p;
        a->quick_len[k]++;
        return;
    }
    uint32_t end = g + k;
    if (end < a->top && (a->tag[end] & FREE_BIT)) {
        uint32_t r = a->tag[end] & ~FREE_BIT;
        unlink_block(a, end, r);
        k += r;
        end += r;
    }
    if (g > 0 && (a->tag[g - 1] & FREE_BIT)) {
        uint32_t left = a->tag[g - 1] & ~FREE_BIT;
        unlink_block(a, g - left, left);
        g -= left;
        k += left;
    }
    if (end == a->top) { a->top = g; return; }
    push(a, g, k);
}

/* ---- the replay ---- */

typedef struct { void *p; uint32_t n; } slot_t;

/* Blocks of up to `thresh` bytes from the classes, larger ones from the
 * arena (with `thresh` = HI, the classes alone). */
static double run(classes_t *h, arena_t *a, long ops, uint64_t seed, uint32_t thresh) {
    slot_t w[WINDOW] = {{0}};
    uint64_t x = seed;
    double t0 = now_ns();
    for (long i = 0; i < ops; i++) {
        slot_t *s = &w[i % WINDOW];
        if (s->p) {
            if (s->n <= thresh) class_free(h, class_of_16[(s->n + 15) / 16], s->p);
            else arena_free(a, s->p);
        }
        uint32_t n = LO + (uint32_t)(next(&x) % (HI - LO + 1));
        s->p = n <= thresh ? class_alloc(h, class_of_16[(n + 15) / 16]) : arena_alloc(a, n);
        s->n = n;
        *(volatile char *)s->p = (char)n;
    }
    double ns = (now_ns() - t0) / ops;
    for (int i = 0; i < WINDOW; i++) {
        if (!w[i].p) continue;
        if (w[i].n <= thresh) class_free(h, class_of_16[(w[i].n + 15) / 16], w[i].p);
        else arena_free(a, w[i].p);
    }
    return ns;
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 4000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    uint32_t thresh = argc > 3 ? (uint32_t)atoi(argv[3]) : 512;
    int cap = argc > 4 ? atoi(argv[4]) : 0;
    if (ops <= 0 || rounds <= 0 || thresh < 16 || thresh > HI || cap < 0) {
        fprintf(stderr, "usage: arena_model [ops > 0] [rounds > 0] [thresh 16..4096] [cap >= 0]\n");
        return 2;
    }
    classes_init();
    for (int r = 0; r < rounds; r++) {
        classes_t c1, c2;
        arena_t a;
        classes_new(&c1), classes_new(&c2), arena_new(&a);
        a.cap = (uint32_t)cap;
        uint64_t seed = 0x9E3779B97F4A7C15ull ^ (uint64_t)(r + 1);
        double t_classes, t_arena;
        if (r % 2 == 0) {
            t_classes = run(&c1, &a, ops, seed, HI);
            t_arena = run(&c2, &a, ops, seed, thresh);
        } else {
            t_arena = run(&c2, &a, ops, seed, thresh);
            t_classes = run(&c1, &a, ops, seed, HI);
        }
        size_t arena_pages = ((size_t)a.top_max * GRAN + PAGE - 1) / PAGE;
        printf("round %d: classes %.2f ns, %zu KiB; classes to %u B + arena %.2f ns, %zu + %zu KiB; "
               "time ratio %.2f\n",
               r, t_classes, class_pages(&c1) * 4, thresh, t_arena, class_pages(&c2) * 4,
               arena_pages * 4, t_arena / t_classes);
    }
    return 0;
}
