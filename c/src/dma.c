#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <linux/memfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include "common.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26) /* log2(2 MiB) << MAP_HUGE_SHIFT */
#endif

#define PAGE_4K 4096u
#define HUGE_2M (2u << 20)

static uint32_t round_size(uint32_t size, uint32_t flags)
{
    uint64_t unit = (flags & NVM_DMA_HUGE) ? HUGE_2M : PAGE_4K;
    uint64_t r = ((uint64_t)size + unit - 1) / unit * unit;
    return r > UINT32_MAX ? 0 : (uint32_t)r;
}

void *nvm_dma_alloc(uint32_t size, uint32_t flags)
{
    uint32_t len = round_size(size, flags);
    if (size == 0 || len == 0)
        return nvm_fail_null(EINVAL);

    int mflags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE;
    if (flags & NVM_DMA_HUGE)
        /* 2 MiB whatever the default hugepage size is: the pool libnvm raises and gives back. */
        mflags |= MAP_HUGETLB | MAP_HUGE_2MB;

    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, mflags, -1, 0);
    if (p == MAP_FAILED)
        return nvm_fail_null(errno);

    /* mlock so the pages stay resident at the physical address the device was given; with
     * NVM_DMA_NOLOCK the kernel's pin does that, and charges the memlock limit itself. */
    if (!(flags & NVM_DMA_NOLOCK) && mlock(p, len) != 0) {
        int err = errno;
        munmap(p, len);
        return nvm_fail_null(err);
    }
    /* Not inherited by a fork()ed child: a child writing to it would copy-on-write
     * the pages away from the addresses the controller holds. */
    madvise(p, len, MADV_DONTFORK);
    nvm_errno_tls = 0;
    return p;
}

void *nvm_dma_alloc_fd(uint32_t size, uint32_t flags, int32_t *fd_out)
{
    uint32_t len = round_size(size, flags);
    if (size == 0 || len == 0)
        return nvm_fail_null(EINVAL);
    unsigned int mfd = MFD_CLOEXEC;
    if (flags & NVM_DMA_HUGE)
        mfd |= MFD_HUGETLB | MFD_HUGE_2MB;
    int fd = memfd_create("libnvm-dma", mfd);
    if (fd < 0)
        return nvm_fail_null(errno);
    int err;
    if (ftruncate(fd, len) != 0) {
        err = errno;
        goto fail_fd;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
        err = errno;
        goto fail_fd;
    }
    if (!(flags & NVM_DMA_NOLOCK) && mlock(p, len) != 0) {
        err = errno;
        munmap(p, len);
        goto fail_fd;
    }
    /* A shared mapping is not copied on write by a fork()ed child, but the child would hold the pages. */
    madvise(p, len, MADV_DONTFORK);
    *fd_out = fd;
    nvm_errno_tls = 0;
    return p;
fail_fd:
    close(fd);
    /* A hugetlb memfd whose pages are not there fails the populate or the first touch with ENOMEM or EFAULT/SIGBUS: ENOMEM for the caller. */
    return nvm_fail_null(err == EFAULT || err == EINVAL ? ENOMEM : err);
}

int32_t nvm_dma_free(void *addr, uint32_t size, uint32_t flags)
{
    uint32_t len = round_size(size, flags);
    if (len == 0)
        return nvm_fail(EINVAL);
    if (!(flags & NVM_DMA_NOLOCK))
        munlock(addr, len);
    if (munmap(addr, len) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_phys_addrs(const void *addr, uint32_t npages, uint32_t *out)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nvm_fail(errno);

    uintptr_t va = (uintptr_t)addr & ~(uintptr_t)(PAGE_4K - 1);
    for (uint32_t i = 0; i < npages; i++) {
        uint64_t entry;
        off_t off = (off_t)((va / PAGE_4K + i) * sizeof(entry));
        if (pread(fd, &entry, sizeof(entry), off) != (ssize_t)sizeof(entry)) {
            int err = errno ? errno : EIO;
            close(fd);
            return nvm_fail(err);
        }
        /* Bit 63: present; bits 54:0: PFN, which reads as 0 without CAP_SYS_ADMIN. */
        if (!(entry >> 63)) {
            close(fd);
            return nvm_fail(EFAULT);
        }
        uint64_t pfn = entry & ((1ULL << 55) - 1);
        if (pfn == 0) {
            close(fd);
            return nvm_fail(EPERM);
        }
        uint64_t pa = pfn * PAGE_4K;
        out[2 * i] = (uint32_t)pa;
        out[2 * i + 1] = (uint32_t)(pa >> 32);
    }
    close(fd);
    return nvm_ok();
}

void *nvm_host_alloc(uint32_t size)
{
    void *p = calloc(1, size ? size : 1);
    if (!p)
        return nvm_fail_null(ENOMEM);
    nvm_errno_tls = 0;
    return p;
}

void nvm_host_free(void *p) { free(p); }

int32_t nvm_memlock_limit(uint32_t *out)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0)
        return nvm_fail(errno);
    uint64_t v = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    out[0] = (uint32_t)v;
    out[1] = (uint32_t)(v >> 32);
    return nvm_ok();
}
