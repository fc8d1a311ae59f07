/* A request no limit could hold (an overflow probe), then one larger than
 * the limit, then 1 MiB blocks until the limit refuses one. Under
 * FROSTHEAP_MAX=64M the library prints two refusal lines: one for the
 * first request larger than the limit, one for the first refusal of a
 * request that fits under it. Prints "firstline: N MiB". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    if (malloc(SIZE_MAX / 2) != NULL || malloc((size_t)100 << 20) != NULL)
        return 1;
    size_t n = 0;
    void *p;
    while ((p = malloc(1 << 20)) != NULL) {
        memset(p, 1, 4096);
        n++;
    }
    printf("firstline: %zu MiB\n", n);
    return 0;
}
