/* A spike dropped: LIVE MB of 1 KiB blocks made and kept, SPIKE MB more
 * made after them and freed, then SECS seconds of light churn (1,000
 * blocks of 1 B - 64 KiB replaced at random); prints the resident set
 * (VmRSS) at the peak and every half second after the drop. An
 * allocator that keeps free memory resident in proportion to what is
 * live keeps the spike for as long as the program runs; one that lets
 * unused free memory decay gives it back.
 *
 * usage: spike [LIVE_MB] [SPIKE_MB] [SECS]   (defaults: 300, 600, 3) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock_rng.h"

static long rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb / 1024;
}

static char **blocks(long n) {
    char **v = malloc(n * sizeof *v);
    for (long i = 0; v && i < n; i++) {
        v[i] = malloc(1024);
        if (!v[i])
            return NULL;
        memset(v[i], (int)i, 1024);
    }
    return v;
}

int main(int argc, char **argv) {
    long live_mb = argc > 1 ? atol(argv[1]) : 300;
    long spike_mb = argc > 2 ? atol(argv[2]) : 600;
    double secs = argc > 3 ? atof(argv[3]) : 3;
    if (live_mb < 1 || spike_mb < 1 || secs <= 0) {
        fprintf(stderr, "usage: spike [LIVE_MB(>0)] [SPIKE_MB(>0)] [SECS(>0)]\n");
        return 2;
    }
    char **live = blocks(live_mb * 1000);
    char **spike = blocks(spike_mb * 1000);
    if (!live || !spike) {
        fprintf(stderr, "spike: out of memory\n");
        return 1;
    }
    printf("peak %ld MB; after the drop:", rss_mb());
    for (long i = 0; i < spike_mb * 1000; i++)
        free(spike[i]);
    free(spike);
    char *churn[1000] = {0};
    uint64_t x = 5;
    double t0 = now_ns(), next_sample = 0;
    for (;;) {
        double t = (now_ns() - t0) / 1e9;
        if (t >= next_sample) {
            printf(" %ld", rss_mb());
            fflush(stdout);
            next_sample += 0.5;
        }
        if (t >= secs)
            break;
        for (int k = 0; k < 1000; k++) {
            uint64_t r = next(&x);
            int i = r % 1000;
            free(churn[i]);
            size_t size = 1 + (r >> 16) % (64 << 10);
            churn[i] = malloc(size);
            if (!churn[i]) {
                fprintf(stderr, "spike: out of memory\n");
                return 1;
            }
            churn[i][0] = 1;
        }
    }
    printf(" MB\n");
    return live[0][0] != 0;
}
