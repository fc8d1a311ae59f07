/* The checks of the C test programs: CHECK(c) counts a check and, when c is
 * false, a failure; the first 20 failures are printed as
 * "FILE:LINE: CHECK(c) failed". Each program prints its counts at its end
 * ("NAME: N checks, F failures"), which the Rust tests read. */
#ifndef FROSTHEAP_TEST_CHECK_H
#define FROSTHEAP_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int checks, failures;

/* The file's name without its directory (cc is given the whole path). */
static const char *check_file(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

#define CHECK(c)                                                                        \
    do {                                                                                \
        checks++;                                                                       \
        if (!(c)) {                                                                     \
            if (failures++ < 20)                                                        \
                fprintf(stderr, "%s:%d: CHECK(%s) failed\n", check_file(__FILE__),      \
                        __LINE__, #c);                                                  \
        }                                                                               \
    } while (0)

#endif
