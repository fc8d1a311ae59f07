/* realloc of large blocks that cannot grow where they are (the block after
 * them pins them), under FROSTHEAP_MAX.
 * Usage: realloc_move grow|loop|buffer|time [MiB] [rounds].
 *   grow  a block of 60% of the limit (FROSTHEAP_MAX, given in MiB as the
 *         argument) grows to 70%: it must succeed (glibc moves such a
 *         block with mremap; the library moves its pages, charging the
 *         growth alone), keep its contents, and leave mallinfo2's figures
 *         exact: in use and committed both up by the two blocks' bytes.
 *   loop  three blocks grown at random from 4 to 18 MiB in steps of up
 *         to 3 MiB, and made again, 3,000 times, under a limit of 64 MiB:
 *         every growth succeeds (copied, some needed the old block and the
 *         new one together, more than the limit), contents follow, in use
 *         is exact after each call, the process's mappings stay few (a
 *         move may split the heap's mapping where the block was and where
 *         it went: some 100 more after these 700 moves, 135 after 7,000),
 *         and once the blocks are freed
 *         and the heap trimmed, what is committed is back where it was.
 *   buffer  a buffer reallocated past 32 KiB is made of whole pages: one
 *         of 2 MiB shrunk to 40,000 bytes stays where it is (its tail
 *         given back), grows back to 1 MiB where it is, shrinks to
 *         100,000 bytes where it is, and moves into a class only at 32 KiB
 *         or less; contents follow, malloc_usable_size is its pages, and
 *         mallinfo2's in use follows it exactly.
 *   time  prints the median time of a realloc of a block of MiB (64) to
 *         twice that, its pages all written, over `rounds` (15) rounds.
 * Prints "realloc_move: N checks, F failures" (grow, loop). */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

#define MIB ((size_t)1 << 20)

static void stamp(void *p, size_t len, uint64_t seed) {
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = seed ^ i;
}

static int stamped(const void *p, size_t len, uint64_t seed) {
    const uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        if (w[i] != (seed ^ i))
            return 0;
    return 1;
}

static long mappings(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    long n = 0;
    int c;
    if (!f)
        return -1;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static void grow(size_t limit) {
    size_t old = limit * 6 / 10, new = limit * 7 / 10;
    struct mallinfo2 before = mallinfo2();
    char *p = malloc(old);
    char *pin = malloc(MIB);
    CHECK(p && pin);
    if (!p || !pin)
        return;
    CHECK(pin >= p + old && pin < p + old + (64 << 10)); /* right after it */
    stamp(p, old, 0x5eed);
    char *q = realloc(p, new);
    CHECK(q != NULL);
    if (!q)
        return;
    CHECK(q != p); /* it moved */
    CHECK(stamped(q, old, 0x5eed));
    struct mallinfo2 after = mallinfo2();
    size_t blocks = malloc_usable_size(q) + malloc_usable_size(pin);
    CHECK(after.uordblks - before.uordblks == blocks);
    CHECK(after.arena - before.arena == blocks);
    if (after.arena - before.arena != blocks)
        fprintf(stderr, "in use +%zu, committed +%zu, blocks %zu\n",
                after.uordblks - before.uordblks, after.arena - before.arena, blocks);
    stamp(q, new, 7); /* the growth is usable */
    CHECK(stamped(q, new, 7));
    free(q);
    free(pin);
}

static uint32_t x = 0x12345678;
static size_t next(size_t n) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x % n;
}

static void loop(void) {
    enum { BLOCKS = 3, STEPS = 3000 };
    char *b[BLOCKS];
    size_t len[BLOCKS];
    long maps_before = mappings();
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < BLOCKS; i++) {
        len[i] = 4 * MIB + next(224) * (64 << 10);
        b[i] = malloc(len[i]);
        CHECK(b[i] != NULL);
        if (!b[i])
            return;
        stamp(b[i], 4096, i);
    }
    int moves = 0, failed = 0;
    for (int step = 0; step < STEPS; step++) {
        int i = next(BLOCKS);
        /* Growths, each of up to 3 MiB, until the block would pass 18
         * MiB: then it is freed and a new one of 4-5 MiB made, which
         * takes the first free run that holds it, often with a block
         * right after it, which it must then leave to grow. */
        size_t n = len[i] + (64 << 10) + next(48) * (64 << 10) + next(1000);
        if (n > 18 * MIB) {
            free(b[i]);
            len[i] = 4 * MIB + next(16) * (64 << 10);
            b[i] = malloc(len[i]);
            CHECK(b[i] != NULL);
            if (!b[i])
                return;
            stamp(b[i], 4096, i);
            continue;
        }
        char *q = realloc(b[i], n);
        if (!q) {
            if (failed++ < 5)
                fprintf(stderr, "step %d: block %d of %zu to %zu refused\n", step, i, len[i], n);
            continue;
        }
        moves += q != b[i] && n > len[i];
        if (!stamped(q, 4096, i) && failed++ < 5)
            fprintf(stderr, "step %d: block %d lost its contents\n", step, i);
        memcpy(q + n - 8, &step, sizeof step);
        b[i] = q;
        len[i] = n;
        size_t blocks = 0;
        for (int j = 0; j < BLOCKS; j++)
            blocks += malloc_usable_size(b[j]);
        struct mallinfo2 now = mallinfo2();
        if (now.uordblks - before.uordblks != blocks && failed++ < 5)
            fprintf(stderr, "step %d: in use +%zu, the blocks %zu\n", step,
                    now.uordblks - before.uordblks, blocks);
    }
    CHECK(failed == 0);
    CHECK(moves > 100);
    long maps_after = mappings();
    printf("moves=%d mappings=%ld..%ld\n", moves, maps_before, maps_after);
    CHECK(maps_after - maps_before < 256);
    for (int i = 0; i < BLOCKS; i++)
        free(b[i]);
    malloc_trim(0);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks == before.uordblks);
    CHECK(after.arena <= before.arena);
    if (after.arena > before.arena)
        fprintf(stderr, "committed %zu before, %zu after\n", before.arena, after.arena);
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void timed(size_t mib, int rounds) {
    double t[64];
    if (rounds > 64)
        rounds = 64;
    for (int r = 0; r < rounds; r++) {
        char *p = malloc(mib * MIB);
        char *pin = malloc(MIB);
        if (!p || !pin) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        memset(p, r + 1, mib * MIB);
        double t0 = now_ns();
        char *q = realloc(p, 2 * mib * MIB);
        t[r] = now_ns() - t0;
        if (!q || q[mib * MIB - 1] != (char)(r + 1)) {
            fprintf(stderr, "realloc failed or lost the contents\n");
            exit(2);
        }
        free(q);
        free(pin);
    }
    qsort(t, rounds, sizeof t[0], by_value);
    printf("realloc %zu MiB -> %zu MiB: median %.0f us (min %.0f, max %.0f) over %d rounds\n",
           mib, 2 * mib, t[rounds / 2] / 1e3, t[0] / 1e3, t[rounds - 1] / 1e3, rounds);
}

static void buffer(void) {
    size_t base = mallinfo2().uordblks;
    size_t size = 2 * MIB;
    char *p = malloc(size);
    CHECK(p != NULL);
    if (!p)
        return;
    stamp(p, size, 0xb0f);
    static const struct {
        size_t size;
        int stays;
        size_t usable;
    } steps[] = {
        {40000, 1, 64 << 10},
        {1 << 20, 1, 1 << 20},
        {100000, 1, 128 << 10},
        {32 << 10, 0, 32 << 10},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        size_t new = steps[i].size, kept = size < new ? size : new;
        char *q = realloc(p, new);
        CHECK(q != NULL);
        if (!q)
            return;
        CHECK(stamped(q, kept & ~(size_t)7, 0xb0f));
        CHECK((q == p) == steps[i].stays);
        CHECK(malloc_usable_size(q) == steps[i].usable);
        CHECK(mallinfo2().uordblks - base == steps[i].usable);
        if ((q == p) != steps[i].stays || malloc_usable_size(q) != steps[i].usable)
            fprintf(stderr, "%zu -> %zu: %s, %zu usable\n", size, new,
                    q == p ? "stayed" : "moved", malloc_usable_size(q));
        stamp(q, new, 0xb0f);
        p = q;
        size = new;
    }
    free(p);
    CHECK(mallinfo2().uordblks == base);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "grow";
    size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
    /* stdout's buffer first, so that no block comes between the figures. */
    printf("realloc_move %s\n", mode);
    fflush(stdout);
    if (!strcmp(mode, "grow"))
        grow((mib ? mib : 256) * MIB);
    else if (!strcmp(mode, "loop"))
        loop();
    else if (!strcmp(mode, "buffer"))
        buffer();
    else if (!strcmp(mode, "time")) {
        timed(mib ? mib : 64, argc > 3 ? atoi(argv[3]) : 15);
        return 0;
    } else {
        fprintf(stderr, "usage: realloc_move grow|loop|buffer|time [MiB] [rounds]\n");
        return 2;
    }
    printf("realloc_move: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
