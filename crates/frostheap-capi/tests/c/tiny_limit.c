/* A small request refused under a tiny FROSTHEAP_MAX although it would fit
 * beside what is committed: the heap charges whole spans of pages, and the
 * span does not fit. Prints "ok 10" for the first block, then "refused N"
 * (errno ENOMEM) or "ok N" for a block of argv[1] bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 5000;
    char *small = malloc(10);
    if (small == NULL) {
        printf("refused 10\n");
        return 1;
    }
    printf("ok 10\n");
    errno = 0;
    char *p = malloc(n);
    if (p == NULL)
        printf("refused %zu%s\n", n, errno == ENOMEM ? "" : " (errno not ENOMEM)");
    else
        printf("ok %zu\n", n);
    free(p);
    free(small);
    return 0;
}
