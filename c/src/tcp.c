/*
 * Synchronous TCP for the NVMe/TCP transport (lib/transports/tcp/): what JavaScript cannot do.
 *
 * Bun's sockets are asynchronous only, while libnvm's Controller is synchronous (open, identify,
 * admin commands, readSync). So sockets live here: non-blocking descriptors, every wait bounded by
 * poll() with the caller's timeout, and reads scattered straight into the caller's memory (the
 * application's buffer for C2HData payloads: no bounce copy). No NVMe/TCP logic: PDUs are built
 * and parsed in TypeScript.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
#include "wait.h"

int32_t nvm_tcp_connect(const char *host, uint32_t port, uint32_t timeout_ms)
{
    struct addrinfo hints, *res = NULL;
    char service[12];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: it ignores loopback, so a machine with only `lo` up could not reach 127.0.0.1. */
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(service, sizeof(service), "%u", port);
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        if (gai == EAI_SYSTEM)
            return nvm_fail(errno ? errno : EIO);
        /* A name that does not resolve: ENOENT, told apart from connection errors by the caller. */
        return nvm_fail(gai == EAI_AGAIN ? EAGAIN : ENOENT);
    }
    int err = ECONNREFUSED;
    int64_t deadline = nvm_now_us() + (int64_t)timeout_ms * 1000;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            int64_t left = deadline - nvm_now_us();
            int w = left > 0 ? nvm_wait_fd(fd, POLLOUT, left) : 0;
            if (w <= 0) {
                err = w < 0 ? -w : ETIMEDOUT;
                close(fd);
                continue;
            }
            socklen_t len = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
            r = err == 0 ? 0 : -1;
        } else if (r != 0) {
            err = errno;
        }
        if (r != 0) {
            close(fd);
            continue;
        }
        /* Capsules are small and latency-bound: no Nagle delay (the kernel's nvme-tcp host does the same). */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        freeaddrinfo(res);
        nvm_errno_tls = 0;
        return fd;
    }
    freeaddrinfo(res);
    return nvm_fail(err);
}

/* Entries of the iovec array TypeScript fills: address (lo, hi), length, reserved. */
#define IOV_DWORDS 4u
#define IOV_MAX_LOCAL 256u

int32_t nvm_tcp_sendv(int32_t fd, const uint32_t *iov, uint32_t count, uint32_t timeout_ms)
{
    struct iovec v[IOV_MAX_LOCAL];
    if (count == 0)
        return nvm_ok();
    if (count > IOV_MAX_LOCAL)
        return nvm_fail(EINVAL);
    uint32_t n = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t *e = iov + i * IOV_DWORDS;
        if (e[2] == 0)
            continue;
        v[n].iov_base = (void *)(uintptr_t)((uint64_t)e[0] | ((uint64_t)e[1] << 32));
        v[n].iov_len = e[2];
        n++;
    }
    int64_t deadline = nvm_now_us() + (int64_t)timeout_ms * 1000;
    struct iovec *cur = v;
    while (n > 0) {
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = cur;
        msg.msg_iovlen = n;
        /* MSG_NOSIGNAL: a target that closed the connection is an error to report, not SIGPIPE. */
        ssize_t s = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (s < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return nvm_fail(errno);
            int64_t left = deadline - nvm_now_us();
            if (left <= 0)
                return nvm_fail(ETIMEDOUT);
            int w = nvm_wait_fd(fd, POLLOUT, left);
            if (w < 0)
                return nvm_fail(-w);
            continue;
        }
        size_t done = (size_t)s;
        while (n > 0 && done >= cur->iov_len) {
            done -= cur->iov_len;
            cur++;
            n--;
        }
        if (n > 0) {
            cur->iov_base = (char *)cur->iov_base + done;
            cur->iov_len -= done;
        }
    }
    return nvm_ok();
}

int32_t nvm_tcp_recv3(int32_t fd, void *p1, uint32_t n1, void *p2, uint32_t n2, void *p3, uint32_t n3, uint32_t timeout_us)
{
    struct iovec v[3];
    int n = 0;
    if (n1) v[n++] = (struct iovec){ p1, n1 };
    if (n2) v[n++] = (struct iovec){ p2, n2 };
    if (n3) v[n++] = (struct iovec){ p3, n3 };
    if (n == 0)
        return nvm_fail(EINVAL);
    for (int tries = 0; tries < 2; tries++) {
        ssize_t r = readv(fd, v, n);
        if (r > 0) {
            nvm_errno_tls = 0;
            return (int32_t)r;
        }
        if (r == 0)
            /* Orderly shutdown by the target. */
            return nvm_fail(ENOTCONN);
        if (errno == EINTR)
            return 0;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return nvm_fail(errno);
        if (timeout_us == 0 || tries == 1)
            break;
        int w = nvm_wait_fd(fd, POLLIN, timeout_us);
        if (w < 0)
            return nvm_fail(-w);
        if (w == 0)
            break;
    }
    nvm_errno_tls = 0;
    return 0;
}

int32_t nvm_tcp_shutdown(int32_t fd)
{
    if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_tcp_close(int32_t fd)
{
    if (close(fd) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_tcp_peer(int32_t fd, uint32_t *out)
{
    /* out[0]: local port, out[1]: peer port: for tests and diagnostics. */
    struct sockaddr_storage a;
    socklen_t len = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return nvm_fail(errno);
    out[0] = ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port : ((struct sockaddr_in *)&a)->sin_port);
    len = sizeof(a);
    if (getpeername(fd, (struct sockaddr *)&a, &len) != 0)
        return nvm_fail(errno);
    out[1] = ntohs(a.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&a)->sin6_port : ((struct sockaddr_in *)&a)->sin_port);
    return nvm_ok();
}
