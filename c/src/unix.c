/*
 * Synchronous Unix-domain sockets for sharing a controller (lib/share/): what JavaScript cannot do.
 *
 * Bun's sockets are asynchronous only and do not give the peer's credentials, while a Controller
 * opened over "unix:PATH" is synchronous (open, identify, createIoQueue) and the server must know
 * which uid a client runs as (SO_PEERCRED). So the sockets live here: non-blocking, close-on-exec
 * descriptors, every wait bounded by poll() with the caller's timeout. No protocol logic: messages
 * are built and parsed in TypeScript (lib/share/protocol.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
#include "wait.h"

static int fill_addr(const char *path, struct sockaddr_un *a)
{
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(a->sun_path))
        return -ENAMETOOLONG;
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, len + 1);
    return 0;
}

int32_t nvm_unix_connect(const char *path, uint32_t timeout_ms)
{
    struct sockaddr_un a;
    int r = fill_addr(path, &a);
    if (r < 0)
        return nvm_fail(-r);
    int64_t deadline = nvm_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return nvm_fail(errno);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
            nvm_errno_tls = 0;
            return fd;
        }
        int err = errno;
        close(fd);
        /* EAGAIN: the server's backlog is full; try again until the deadline. */
        if (err != EAGAIN && err != EINTR)
            return nvm_fail(err);
        if (nvm_now_us() >= deadline)
            return nvm_fail(ETIMEDOUT);
        usleep(1000);
    }
}

int32_t nvm_unix_listen(const char *path, uint32_t mode, uint32_t backlog)
{
    struct sockaddr_un a;
    int r = fill_addr(path, &a);
    if (r < 0)
        return nvm_fail(-r);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return nvm_fail(errno);
    /* The socket file is created by bind() with the umask applied: none of it may be wider than
     * `mode` even for a moment, so bind under a umask that leaves only the owner, then chmod. */
    mode_t old = umask(0077);
    r = bind(fd, (struct sockaddr *)&a, sizeof(a));
    int err = errno;
    umask(old);
    if (r != 0)
        goto fail;
    if (chmod(path, (mode_t)(mode & 0777)) != 0) {
        err = errno;
        unlink(path);
        goto fail;
    }
    if (listen(fd, (int)(backlog ? backlog : 16)) != 0) {
        err = errno;
        unlink(path);
        goto fail;
    }
    nvm_errno_tls = 0;
    return fd;
fail:
    close(fd);
    return nvm_fail(err);
}

int32_t nvm_unix_accept(int32_t fd, uint32_t *cred)
{
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            return nvm_fail(errno);
        }
        struct ucred uc;
        socklen_t len = sizeof(uc);
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) {
            int err = errno;
            close(c);
            return nvm_fail(err);
        }
        cred[0] = (uint32_t)uc.pid;
        cred[1] = (uint32_t)uc.uid;
        cred[2] = (uint32_t)uc.gid;
        nvm_errno_tls = 0;
        return c;
    }
}

int32_t nvm_unix_peercred(int32_t fd, uint32_t *cred)
{
    struct ucred uc;
    socklen_t len = sizeof(uc);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0)
        return nvm_fail(errno);
    cred[0] = (uint32_t)uc.pid;
    cred[1] = (uint32_t)uc.uid;
    cred[2] = (uint32_t)uc.gid;
    return nvm_ok();
}

int32_t nvm_unix_send(int32_t fd, const void *buf, uint32_t len, uint32_t timeout_ms)
{
    const char *p = buf;
    int64_t deadline = nvm_now_us() + (int64_t)timeout_ms * 1000;
    while (len > 0) {
        /* MSG_NOSIGNAL: a peer that went away is an error to report, not SIGPIPE. */
        ssize_t s = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
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
        p += s;
        len -= (uint32_t)s;
    }
    return nvm_ok();
}

int32_t nvm_unix_recv(int32_t fd, void *buf, uint32_t len, uint32_t timeout_us)
{
    if (len == 0)
        return nvm_fail(EINVAL);
    for (int tries = 0; tries < 2; tries++) {
        ssize_t r = recv(fd, buf, len, MSG_DONTWAIT);
        if (r > 0) {
            nvm_errno_tls = 0;
            return (int32_t)r;
        }
        if (r == 0)
            /* Orderly shutdown, or the peer process died (the kernel closed its end). */
            return nvm_fail(ENOTCONN);
        if (errno == EINTR)
            break;
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

int32_t nvm_unix_send_fd(int32_t fd, const void *buf, uint32_t len, int32_t passfd, uint32_t timeout_ms)
{
    if (len == 0)
        return nvm_fail(EINVAL);
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } c;
    memset(&c, 0, sizeof(c));
    struct iovec v = { (void *)buf, len };
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = c.space;
    m.msg_controllen = sizeof(c.space);
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &passfd, sizeof(int));
    int64_t deadline = nvm_now_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        /* The descriptor goes with the first byte: the rest, if the socket took only part, follows plainly. */
        ssize_t s = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (s >= 0) {
            if ((uint32_t)s == len)
                return nvm_ok();
            /* ...within what is left of this call's deadline, not a fresh timeout. */
            int64_t rest = deadline - nvm_now_us();
            if (rest <= 0)
                return nvm_fail(ETIMEDOUT);
            return nvm_unix_send(fd, (const char *)buf + s, len - (uint32_t)s, (uint32_t)((rest + 999) / 1000));
        }
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
    }
}

int32_t nvm_unix_recv_fds(int32_t fd, void *buf, uint32_t len, int32_t *fds, uint32_t max_fds, uint32_t timeout_us)
{
    if (len == 0 || max_fds == 0 || max_fds > 16)
        return nvm_fail(EINVAL);
    fds[0] = 0;
    if (timeout_us > 0) {
        int w = nvm_wait_fd(fd, POLLIN, timeout_us);
        if (w < 0)
            return nvm_fail(-w);
        if (w == 0)
            return nvm_ok();
    }
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(16 * sizeof(int))];
    } c;
    struct iovec v = { buf, len };
    struct msghdr m;
    memset(&m, 0, sizeof(m));
    m.msg_iov = &v;
    m.msg_iovlen = 1;
    m.msg_control = c.space;
    m.msg_controllen = CMSG_SPACE(max_fds * sizeof(int));
    ssize_t r = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return nvm_ok();
        return nvm_fail(errno);
    }
    if (r == 0)
        return nvm_fail(ENOTCONN);
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h != NULL; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        uint32_t n = (uint32_t)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (uint32_t i = 0; i < n; i++) {
            int got;
            memcpy(&got, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
            if ((uint32_t)fds[0] < max_fds)
                fds[1 + fds[0]++] = got;
            else
                close(got);
        }
    }
    /* MSG_CTRUNC: descriptors beyond max_fds were closed by the kernel. */
    nvm_errno_tls = 0;
    return (int32_t)r;
}

int32_t nvm_unix_close(int32_t fd)
{
    if (close(fd) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}
