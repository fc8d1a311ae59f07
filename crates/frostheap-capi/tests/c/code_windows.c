/* How much of libfrostheap.so's code a process has resident after the
 * library's start-up, a few allocations on two threads, and their exits:
 * the pages of the library's executable mapping that /proc/self/pagemap
 * says are present, and how many 64 KiB windows of addresses (the
 * kernel's fault-around unit, aligned in addresses, not from the
 * mapping's start) they fall in. Every process pays for each window
 * touched (see crates/frostheap-capi/layout.ld).
 *
 *   code_windows   prints "code: P pages in W windows (its first 64 KiB
 *                  span S): OFFSETS" */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *work(void *arg) {
    void *volatile keep[64];
    for (int i = 0; i < 64; i++) keep[i] = malloc(16 + 61 * i);
    for (int i = 0; i < 64; i++) free(keep[i]);
    return arg;
}

int main(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, work, NULL)) return 2;
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    work(NULL);
    /* Read the maps with read(2) into a static buffer: nothing allocated
     * after the measurement starts. */
    static char maps[1 << 16];
    int fd = open("/proc/self/maps", O_RDONLY);
    if (fd < 0) return 3;
    size_t n = 0;
    ssize_t r;
    while (n < sizeof maps - 1 && (r = read(fd, maps + n, sizeof maps - 1 - n)) > 0) n += r;
    close(fd);
    maps[n] = 0;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    if (pm < 0) return 4;
    int pages = 0, windows = 0, found = 0, span = 0;
    static char offsets[8192];
    size_t used = 0;
    for (char *line = strtok(maps, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long lo, hi;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
        if (!strstr(line, "libfrostheap") || perms[2] != 'x') continue;
        /* The windows the code's first 64 KiB spans: 1 where the library
         * is loaded 64 KiB-aligned (the kernel aligns a file mapping of 2
         * MiB or more on ext4; not on tmpfs), 2 otherwise. */
        if (!found) span = (int)(((lo + 0xffff) >> 16) - (lo >> 16) + 1);
        found = 1;
        long last = -1;
        for (unsigned long a = lo; a < hi; a += 4096) {
            uint64_t e;
            if (pread(pm, &e, 8, (off_t)(a / 4096) * 8) != 8) return 5;
            if (!(e >> 63)) continue;
            pages++;
            long w = (long)(a >> 16);
            if (w != last) { windows++; last = w; }
            if (used < sizeof offsets - 16) used += snprintf(offsets + used, sizeof offsets - used, " %#lx", a - lo);
        }
    }
    close(pm);
    if (!found) return 6;
    printf("code: %d pages in %d windows (its first 64 KiB span %d):%s\n", pages, windows, span,
           offsets);
    return 0;
}
