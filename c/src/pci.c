#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include "common.h"

int32_t nvm_config_read(const char *path, uint32_t offset, uint32_t width, uint32_t *value)
{
    if (width != 1 && width != 2 && width != 4)
        return nvm_fail(EINVAL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nvm_fail(errno);
    uint32_t v = 0; /* little-endian host: the low bytes are the register's */
    ssize_t n = pread(fd, &v, width, offset);
    int err = errno;
    close(fd);
    if (n != (ssize_t)width)
        return nvm_fail(n < 0 ? err : EIO);
    *value = v;
    return nvm_ok();
}

int32_t nvm_config_write(const char *path, uint32_t offset, uint32_t width, uint32_t value)
{
    if (width != 1 && width != 2 && width != 4)
        return nvm_fail(EINVAL);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return nvm_fail(errno);
    /* One pwrite of exactly `width` bytes: sysfs turns it into one config cycle of that width. */
    ssize_t n = pwrite(fd, &value, width, offset);
    int err = errno;
    close(fd);
    if (n != (ssize_t)width)
        return nvm_fail(n < 0 ? err : EIO);
    return nvm_ok();
}
