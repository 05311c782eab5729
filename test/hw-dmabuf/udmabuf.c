/*
 * Test-only helper of the dma-buf guest suite (test/hw-dmabuf/): dma-bufs from exporters a guest
 * without a GPU has, for the disnvm module to import. Built by test/vm/setup.sh into
 * test/hw-dmabuf/build/libudmabuf-test.so; not part of libnvm and never shipped.
 *
 *   t_udmabuf_create   memfd pages made a dma-buf by /dev/udmabuf (the CPU sees them through the memfd)
 *   t_heap_alloc       a buffer of /dev/dma_heap/system (the CPU sees it through the dma-buf's own mmap)
 *   t_dmabuf_sync      DMA_BUF_IOCTL_SYNC around CPU access to a dma-buf mapping
 *
 * Conventions as c/: 0 or -errno, results in a u32 out array, 64-bit values as (lo, hi).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

static void put_ptr(uint32_t *out, void *p)
{
    out[0] = (uint32_t)(uintptr_t)p;
    out[1] = (uint32_t)((uint64_t)(uintptr_t)p >> 32);
}

/*
 * A memfd of `size` bytes, mapped MAP_SHARED, and a dma-buf over [offset, offset + len) of it.
 * udmabuf wants the memfd sealed against shrinking (F_SEAL_SHRINK) and not against writes: its
 * pages must stay for as long as the dma-buf lives. out[4]: memfd, dma-buf fd, mapping (lo, hi).
 * On failure nothing stays open or mapped.
 */
API int32_t t_udmabuf_create(uint32_t size, uint32_t offset, uint32_t len, uint32_t *out)
{
    struct udmabuf_create create = { .flags = UDMABUF_FLAGS_CLOEXEC, .offset = offset, .size = len };
    int memfd, dev = -1, buf = -1, err;
    void *map = MAP_FAILED;

    memfd = memfd_create("libnvm-dmabuf-test", MFD_ALLOW_SEALING | MFD_CLOEXEC);
    if (memfd < 0)
        return -errno;
    if (ftruncate(memfd, size) != 0 || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        goto fail;
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (map == MAP_FAILED)
        goto fail;
    dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        goto fail;
    create.memfd = (uint32_t)memfd;
    buf = ioctl(dev, UDMABUF_CREATE, &create);
    if (buf < 0)
        goto fail;
    close(dev);
    out[0] = (uint32_t)memfd;
    out[1] = (uint32_t)buf;
    put_ptr(out + 2, map);
    return 0;

fail:
    err = errno;
    if (dev >= 0)
        close(dev);
    if (map != MAP_FAILED)
        munmap(map, size);
    close(memfd);
    return -err;
}

/* `size` bytes from the system dma-buf heap, and the dma-buf mapped MAP_SHARED. out[3]: dma-buf fd, mapping (lo, hi). */
API int32_t t_heap_alloc(uint32_t size, uint32_t *out)
{
    struct dma_heap_allocation_data alloc = { .len = size, .fd_flags = O_RDWR | O_CLOEXEC };
    int heap, err;
    void *map;

    heap = open("/dev/dma_heap/system", O_RDONLY | O_CLOEXEC);
    if (heap < 0)
        return -errno;
    if (ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &alloc) != 0) {
        err = errno;
        close(heap);
        return -err;
    }
    close(heap);
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, (int)alloc.fd, 0);
    if (map == MAP_FAILED) {
        err = errno;
        close((int)alloc.fd);
        return -err;
    }
    out[0] = alloc.fd;
    put_ptr(out + 1, map);
    return 0;
}

/* DMA_BUF_IOCTL_SYNC: start (end = 0) or end (1) CPU reads and writes of a dma-buf's mapping. */
API int32_t t_dmabuf_sync(int32_t fd, uint32_t end)
{
    struct dma_buf_sync sync = { .flags = DMA_BUF_SYNC_RW | (end ? DMA_BUF_SYNC_END : DMA_BUF_SYNC_START) };

    return ioctl(fd, DMA_BUF_IOCTL_SYNC, &sync) == 0 ? 0 : -errno;
}
