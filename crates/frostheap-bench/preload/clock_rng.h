/* The clock and the request generator of preload/threads.c, shared with
 * sim/arena_model.c, which replays the `local` case's requests: the same
 * xorshift from the same seed gives the same sizes. */
#ifndef FROSTHEAP_BENCH_CLOCK_RNG_H
#define FROSTHEAP_BENCH_CLOCK_RNG_H

#include <stdint.h>
#include <time.h>

static inline double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static inline uint64_t next(uint64_t *x) {
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

#endif
