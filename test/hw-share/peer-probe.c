/*
 * Test helper for test/hw-share: connect to a Unix socket as whoever runs it (the test runs it as
 * another uid through setpriv) and copy what the server sends to stdout until it closes the
 * connection or 10 s pass. Written in C so that it runs as an unprivileged uid that may not reach
 * Bun's install.
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2 || strlen(argv[1]) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        fprintf(stderr, "usage: peer-probe SOCKET\n");
        return 2;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strcpy(a.sun_path, argv[1]);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("peer-probe: connect");
        return 1;
    }
    char buf[4096];
    for (int waited = 0; waited < 10000;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, 100);
        if (r == 0) {
            waited += 100;
            continue;
        }
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return 0;
        fwrite(buf, 1, (size_t)n, stdout);
    }
    return 3;
}
