#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.h"

/* An advisory lock the kernel drops when the holder dies (even by SIGKILL): flock on an open file.
 * The holder writes its PID into the file so a second process can say who holds it. */
int32_t nvm_lock_acquire(const char *path)
{
    /* Any user may own a controller (VFIO, disnvm): the file is world-writable like /run/lock. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    int writable = fd >= 0;
    if (fd < 0 && errno == EACCES)
        fd = open(path, O_RDONLY | O_CLOEXEC); /* another user's file: flock works read-only */
    if (fd < 0)
        return nvm_fail(errno);
    if (writable)
        (void)fchmod(fd, 0666); /* past the umask; fails harmlessly on another user's file */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        return nvm_fail(err == EWOULDBLOCK ? EBUSY : err);
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (writable && (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)) {
        int err = errno ? errno : EIO;
        close(fd);
        return nvm_fail(err);
    }
    nvm_errno_tls = 0;
    return fd;
}

int32_t nvm_lock_release(int32_t fd)
{
    /* Empty the file first: a reader between our close and the next owner sees no stale PID. */
    if (ftruncate(fd, 0) != 0) {
        /* Not fatal: the lock itself goes with the descriptor. */
    }
    if (close(fd) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}
