/* A 16-byte block aligned to 1 GiB under FROSTHEAP_MAX=64M: the heaps'
 * ranges (twice the limit) cannot hold it with its alignment's slack, so
 * it is refused (ENOMEM, the pointer untouched), and the refusal line
 * says so rather than blaming the limit, with nothing committed. A block
 * aligned to 4 MiB is then granted. Prints "big_align: N checks, F
 * failures". */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"

int main(void) {
    void *p = (void *)1;
    int r = posix_memalign(&p, (size_t)1 << 30, 16);
    CHECK(r == ENOMEM);
    CHECK(p == (void *)1);
    void *q = NULL;
    r = posix_memalign(&q, (size_t)4 << 20, 16);
    CHECK(r == 0 && q != NULL && ((uintptr_t)q & ((4 << 20) - 1)) == 0);
    free(q);
    printf("big_align: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
