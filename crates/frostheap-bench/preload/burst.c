/* Bursts: COUNT blocks of 8-207 bytes made (a byte of each written), then
 * all freed, ROUNDS times, on one thread. Prints the resident memory after
 * each round's frees and after a malloc_trim (KiB, from /proc/self/statm).
 *
 * usage: burst [COUNT] [ROUNDS]   (defaults: 1000000, 10) */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long resident_kib(void) {
    long size, resident;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2)
        return -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    long count = argc > 1 ? atol(argv[1]) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 10;
    void **b = malloc(sizeof *b * (size_t)count);
    unsigned long x = 1;
    for (int r = 0; r < rounds; r++) {
        for (long i = 0; i < count; i++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
            b[i] = malloc((x >> 33) % 200 + 8);
            ((char *)b[i])[0] = 1;
        }
        for (long i = 0; i < count; i++)
            free(b[i]);
        printf("round %d: %ld KiB resident after the frees\n", r, resident_kib());
    }
    malloc_trim(0);
    printf("after malloc_trim: %ld KiB resident\n", resident_kib());
    return 0;
}
