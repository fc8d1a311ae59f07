/* The library's own start-up, seen from the program: one block allocated
 * and freed, nothing printed (stdio's buffers would be blocks of their
 * own). Under FROSTHEAP_STATS=1 the main heap must end with nothing live:
 * whatever the library's constructors allocate for themselves would show
 * there (std's stdout buffer did, 1 KiB, until the C library told
 * frostheap it serves C before frostheap's constructors ran). */
#include <stdlib.h>

int main(void) {
    void *volatile p = malloc(100);
    if (p == NULL)
        return 2;
    free(p);
    return 0;
}
