/*
 * The disnvm kernel module's device node (/dev/disnvmN): open, BAR0 mmap and the ioctls of
 * c/include/disnvm_ioctl.h. Only the system calls; the messages and the policy (what to pin, when)
 * are lib/backends/disnvm.ts's.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "common.h"
#include "disnvm_ioctl.h"

_Static_assert(sizeof(struct disnvm_info) == NVM_DISNVM_INFO_DWORDS * 4, "info is NVM_DISNVM_INFO_DWORDS");
_Static_assert(DISNVM_PAGE_SIZE == 4096, "one bus address per 4 KiB page");
_Static_assert(sizeof(struct disnvm_map_dmabuf) == 48, "fixed layout, no padding");

int32_t nvm_disnvm_open(const char *path)
{
    /* O_CLOEXEC: a spawned child must not keep the controller's file (and its pins) alive. */
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return nvm_fail(errno);
    nvm_errno_tls = 0;
    return fd;
}

int32_t nvm_disnvm_close(int32_t fd)
{
    /* The module's release runs once this and every BAR0 mapping are gone. */
    if (close(fd) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

void *nvm_disnvm_map_bar(int32_t fd, uint32_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return nvm_fail_null(errno);
    nvm_errno_tls = 0;
    return p;
}

int32_t nvm_disnvm_info(int32_t fd, uint32_t *out)
{
    struct disnvm_info info;

    memset(&info, 0, sizeof(info));
    if (ioctl(fd, DISNVM_IOC_INFO, &info) != 0)
        return nvm_fail(errno);
    /* u64 fields, little endian: each is (lo, hi) as u32 pairs. */
    memcpy(out, &info, sizeof(info));
    return nvm_ok();
}

int32_t nvm_disnvm_map_host(int32_t fd, void *vaddr, uint32_t size, uint32_t *addrs)
{
    struct disnvm_map req = {
        .vaddr = (uintptr_t)vaddr,
        .size = size,
        .addrs = (uintptr_t)addrs, /* size / 4096 u64 = (lo, hi) pairs */
    };

    if (ioctl(fd, DISNVM_IOC_MAP_HOST, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_map_device(int32_t fd, uint32_t vaddr_lo, uint32_t vaddr_hi, uint32_t size, uint32_t *addrs)
{
    struct disnvm_map req = {
        .vaddr = (uint64_t)vaddr_hi << 32 | vaddr_lo,
        .size = size,
        .addrs = (uintptr_t)addrs,
    };

    if (ioctl(fd, DISNVM_IOC_MAP_DEVICE, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_unmap(int32_t fd, void *vaddr)
{
    struct disnvm_unmap req = { .vaddr = (uintptr_t)vaddr };

    if (ioctl(fd, DISNVM_IOC_UNMAP, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_bus_master(int32_t fd, uint32_t enable)
{
    struct disnvm_bus_master req = { .enable = enable };

    if (ioctl(fd, DISNVM_IOC_BUS_MASTER, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_map_dmabuf(int32_t fd, int32_t dmabuf_fd, uint32_t offset_lo, uint32_t offset_hi, uint32_t size, uint32_t *addrs, uint32_t *out)
{
    struct disnvm_map_dmabuf req = {
        .fd = (uint32_t)dmabuf_fd,
        .offset = (uint64_t)offset_hi << 32 | offset_lo,
        .size = size,
        .addrs = (uintptr_t)addrs, /* size / 4096 u64 = (lo, hi) pairs */
    };

    if (ioctl(fd, DISNVM_IOC_MAP_DMABUF, &req) != 0)
        return nvm_fail(errno);
    out[0] = (uint32_t)req.handle;
    out[1] = (uint32_t)(req.handle >> 32);
    out[2] = (uint32_t)req.dmabuf_size;
    out[3] = (uint32_t)(req.dmabuf_size >> 32);
    return nvm_ok();
}

int32_t nvm_disnvm_unmap_dmabuf(int32_t fd, uint32_t handle_lo, uint32_t handle_hi)
{
    struct disnvm_unmap req = { .vaddr = (uint64_t)handle_hi << 32 | handle_lo, .flags = DISNVM_UNMAP_DMABUF };

    if (ioctl(fd, DISNVM_IOC_UNMAP, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_dmabuf_status(int32_t fd, uint32_t handle_lo, uint32_t handle_hi, uint32_t *flags)
{
    struct disnvm_dmabuf_handle req = { .handle = (uint64_t)handle_hi << 32 | handle_lo };

    if (ioctl(fd, DISNVM_IOC_DMABUF_STATUS, &req) != 0)
        return nvm_fail(errno);
    *flags = (uint32_t)req.flags;
    return nvm_ok();
}

int32_t nvm_disnvm_revoke_dmabuf(int32_t fd, uint32_t handle_lo, uint32_t handle_hi)
{
    struct disnvm_dmabuf_handle req = { .handle = (uint64_t)handle_hi << 32 | handle_lo };

    if (ioctl(fd, DISNVM_IOC_REVOKE_DMABUF, &req) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_disnvm_bar_fd(int32_t fd)
{
    int r = ioctl(fd, DISNVM_IOC_BAR_FD, 0);

    if (r < 0)
        return nvm_fail(errno);
    nvm_errno_tls = 0;
    return r;
}

void *nvm_disnvm_map_bar_fd(int32_t bar_fd, uint32_t size)
{
    /* One reserved range, so BAR0 is contiguous at the returned address: the module refuses a
     * writable mapping of the register page, so it comes in two mappings laid over the range. */
    const size_t regs = 4096;
    void *base, *p;
    int err;

    if (size <= regs)
        return nvm_fail_null(EINVAL);
    base = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return nvm_fail_null(errno);
    p = mmap(base, regs, PROT_READ, MAP_SHARED | MAP_FIXED, bar_fd, 0);
    if (p == MAP_FAILED)
        goto fail;
    p = mmap((char *)base + regs, size - regs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, bar_fd, regs);
    if (p == MAP_FAILED)
        goto fail;
    nvm_errno_tls = 0;
    return base;

fail:
    err = errno;
    munmap(base, size);
    return nvm_fail_null(err);
}
