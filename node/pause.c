/* The pod sandbox ("pause") process of the local node (see node/README.md): it
 * holds the pod's namespaces and does nothing until SIGTERM or SIGINT ends it.
 * As PID 1 it gets no default signal handlers, hence the explicit ones. */
#include <signal.h>
#include <stddef.h>
#include <unistd.h>

static void stop(int signal) { _exit(128 + signal); }

int main(void) {
    struct sigaction action = {.sa_handler = stop};
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    for (;;) pause();
}
