#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.h"

void *nvm_map_file(const char *path, uint32_t offset, uint32_t size, uint32_t *size_out)
{
    int fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0)
        return nvm_fail_null(errno);

    if (size == 0) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            int err = errno;
            close(fd);
            return nvm_fail_null(err);
        }
        if (st.st_size <= 0 || (uint64_t)st.st_size <= offset || (uint64_t)st.st_size - offset > UINT32_MAX) {
            close(fd);
            return nvm_fail_null(EINVAL);
        }
        size = (uint32_t)(st.st_size - offset);
    }

    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    int err = errno;
    close(fd); /* the mapping keeps its own reference */
    if (p == MAP_FAILED)
        return nvm_fail_null(err);
    if (size_out)
        *size_out = size;
    nvm_errno_tls = 0;
    return p;
}

int32_t nvm_unmap(void *addr, uint32_t size)
{
    if (munmap(addr, size) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}
