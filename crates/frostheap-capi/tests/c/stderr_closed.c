/* A program that closes standard error before it exits, as coreutils'
 * close_stdout does (to report a failed write), then opens a file, which
 * takes descriptor 2: the statistics that FROSTHEAP_STATS=1 prints at exit
 * go to standard error as the process started, not into that file.
 * `stderr_closed none` allocates nothing (no stdio either). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "none") == 0) {
        say("stderr_closed: no allocation\n");
        return 0;
    }
    char *p = malloc(1000);
    if (!p) return 1;
    memset(p, 7, 1000);
    if (close(2) != 0) return 1;
    int fd = open("/dev/null", O_WRONLY);
    if (fd != 2) return 1;
    free(p);
    say("stderr_closed: closed\n");
    return 0;
}
