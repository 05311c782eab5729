#ifndef NVM_WAIT_H
#define NVM_WAIT_H
/* Bounded waits on a descriptor, for the socket code (tcp.c, unix.c); ppoll() needs _GNU_SOURCE first. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>

static inline int64_t nvm_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * ppoll() one descriptor for `events` at most `timeout_us` (0: just look): 1 ready (POLLERR or
 * POLLHUP included: the following call reports what went wrong), 0 not (or interrupted), -errno.
 */
static inline int nvm_wait_fd(int fd, short events, int64_t timeout_us)
{
    struct pollfd p = { .fd = fd, .events = events };
    struct timespec ts = { .tv_sec = timeout_us / 1000000, .tv_nsec = (timeout_us % 1000000) * 1000 };
    int r = ppoll(&p, 1, &ts, NULL);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    return r == 0 ? 0 : 1;
}
#endif
