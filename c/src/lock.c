#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.h"

/* Holder's PID as written by nvm_lock_acquire, or 0 when the file holds none (yet). */
static uint32_t read_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    long v = strtol(buf, NULL, 10);
    return v > 0 && v <= 0x7fffffff ? (uint32_t)v : 0;
}

/* An advisory lock the kernel drops when the holder dies (even by SIGKILL): flock on an open file.
 * The holder writes its PID into the file so a second process can say who holds it.
 *
 * The directory is checked by the caller (owned by us, writable by nobody else); the file is
 * checked here on the descriptor itself, so nothing can be swapped in between the check and the
 * use: O_NOFOLLOW refuses a symlink (ELOOP) instead of truncating whatever it points at, and
 * fstat must show a regular file of ours with one link (a hard link would let us write into
 * another file). O_NONBLOCK and O_NOCTTY keep a FIFO or a terminal planted there from blocking or
 * becoming our controlling tty before fstat refuses it. Mode 0600: flock needs only a read
 * descriptor, so a file others may read is a file others may hold to keep us out. */
int32_t nvm_lock_acquire(const char *path, uint32_t *out)
{
    memset(out, 0, NVM_LOCK_OUT_DWORDS * sizeof(*out));
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
    if (fd < 0)
        return nvm_fail(errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return nvm_fail(err);
    }
    out[0] = (uint32_t)st.st_mode;
    out[1] = (uint32_t)st.st_uid;
    out[2] = (uint32_t)st.st_nlink;
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1) {
        close(fd);
        out[3] = 1;
        return nvm_fail(EPERM);
    }
    /* An older libnvm made its files 0666: take the access of others away before locking. */
    if ((st.st_mode & 077) != 0 && fchmod(fd, 0600) != 0) {
        int err = errno;
        close(fd);
        return nvm_fail(err);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        if (err == EWOULDBLOCK)
            out[4] = read_pid(fd);
        close(fd);
        return nvm_fail(err == EWOULDBLOCK ? EBUSY : err);
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
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
