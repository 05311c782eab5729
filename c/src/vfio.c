/*
 * VFIO (type1 IOMMU) for a PCI device: the container/group/device fds, IOMMU information,
 * regions, BAR mmap through the device fd, configuration space through the config region, and
 * DMA map/unmap. Only the ioctls; which IOVA to use, and what to tell the user when a step
 * fails, is decided in lib/backends/vfio.ts.
 *
 * Linux include/uapi/linux/vfio.h; Documentation/driver-api/vfio.rst ("VFIO Usage Example").
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "common.h"

/* Older uapi headers (before 5.10) lack the DMA-available capability. */
#ifndef VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
#define VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL 3
struct vfio_iommu_type1_info_dma_avail {
    struct vfio_info_cap_header header;
    __u32 avail;
};
#endif

_Static_assert(NVM_VFIO_MAP_READ == VFIO_DMA_MAP_FLAG_READ, "map flags are VFIO's");
_Static_assert(NVM_VFIO_MAP_WRITE == VFIO_DMA_MAP_FLAG_WRITE, "map flags are VFIO's");
_Static_assert(NVM_VFIO_REGION_MMAP == VFIO_REGION_INFO_FLAG_MMAP, "region flags are VFIO's");

static inline uint64_t join64(uint32_t lo, uint32_t hi) { return (uint64_t)hi << 32 | lo; }

static inline void split64(uint32_t *out, uint64_t v)
{
    out[0] = (uint32_t)v;
    out[1] = (uint32_t)(v >> 32);
}

int32_t nvm_vfio_open(const char *group_path, const char *bdf, uint32_t *out)
{
    int err, container, group, device;
    struct vfio_group_status status = { .argsz = sizeof(status) };

    memset(out, 0, NVM_VFIO_OPEN_DWORDS * sizeof(*out));
    /* O_CLOEXEC on both: a spawned child that inherited the container would keep every DMA
     * mapping (and the pinned pages) alive after this process has gone. */
    out[4] = NVM_VFIO_STEP_CONTAINER;
    container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (container < 0)
        return nvm_fail(errno);

    out[4] = NVM_VFIO_STEP_API_VERSION;
    int api = ioctl(container, VFIO_GET_API_VERSION);
    if (api != VFIO_API_VERSION) {
        out[5] = (uint32_t)api;
        err = EPROTO;
        goto close_container;
    }

    /* Prefer TYPE1v2 (unmap semantics without splitting); plain TYPE1 works the same for us. */
    out[4] = NVM_VFIO_STEP_EXTENSION;
    uint32_t type;
    if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1)
        type = VFIO_TYPE1v2_IOMMU;
    else if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) == 1)
        type = VFIO_TYPE1_IOMMU;
    else {
        err = ENODEV;
        goto close_container;
    }

    out[4] = NVM_VFIO_STEP_GROUP;
    group = open(group_path, O_RDWR | O_CLOEXEC);
    if (group < 0) {
        err = errno; /* EBUSY: another process has the group open */
        goto close_container;
    }

    out[4] = NVM_VFIO_STEP_GROUP_STATUS;
    if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) != 0) {
        err = errno;
        goto close_group;
    }
    out[5] = status.flags;
    if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        /* A device of the group is bound to a kernel driver that owns its DMA. */
        err = EBUSY;
        goto close_group;
    }

    out[4] = NVM_VFIO_STEP_SET_CONTAINER;
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) != 0) {
        err = errno;
        goto close_group;
    }

    out[4] = NVM_VFIO_STEP_SET_IOMMU;
    if (ioctl(container, VFIO_SET_IOMMU, type) != 0) {
        err = errno;
        goto close_group;
    }

    out[4] = NVM_VFIO_STEP_DEVICE;
    device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf); /* the kernel opens it O_CLOEXEC */
    if (device < 0) {
        err = errno;
        goto close_group;
    }

    out[0] = (uint32_t)container;
    out[1] = (uint32_t)group;
    out[2] = (uint32_t)device;
    out[3] = type;
    out[4] = NVM_VFIO_STEP_NONE;
    return nvm_ok();

close_group:
    close(group); /* detaches it from the container */
close_container:
    close(container);
    return nvm_fail(err);
}

int32_t nvm_vfio_close(int32_t container, int32_t group, int32_t device)
{
    /* Device first (vfio-pci disables and resets the function on its last close), then the
     * group (leaving the container: type1 unmaps and unpins everything when its last group
     * goes), then the container. */
    int err = 0;
    if (device >= 0 && close(device) != 0 && !err)
        err = errno;
    if (group >= 0 && close(group) != 0 && !err)
        err = errno;
    if (container >= 0 && close(container) != 0 && !err)
        err = errno;
    return err ? nvm_fail(err) : nvm_ok();
}

int32_t nvm_vfio_iommu_info(int32_t container, uint32_t *out, uint32_t max_ranges)
{
    uint32_t argsz = sizeof(struct vfio_iommu_type1_info);
    struct vfio_iommu_type1_info *info = NULL;

    memset(out, 0, (NVM_VFIO_INFO_HDR_DWORDS + 4 * (size_t)max_ranges) * sizeof(*out));
    /* Ask once with the bare struct; the kernel raises argsz when capabilities follow it. */
    for (int attempt = 0; attempt < 2; attempt++) {
        struct vfio_iommu_type1_info *grown = realloc(info, argsz);
        if (!grown) {
            free(info);
            return nvm_fail(ENOMEM);
        }
        info = grown;
        memset(info, 0, argsz);
        info->argsz = argsz;
        if (ioctl(container, VFIO_IOMMU_GET_INFO, info) != 0) {
            int err = errno;
            free(info);
            return nvm_fail(err);
        }
        if (info->argsz <= argsz)
            break;
        argsz = info->argsz;
    }

    out[0] = info->flags;
    split64(&out[1], (info->flags & VFIO_IOMMU_INFO_PGSIZES) ? info->iova_pgsizes : 0);
    out[4] = UINT32_MAX; /* DMA mappings available: not reported */

    if ((info->flags & VFIO_IOMMU_INFO_CAPS) && info->cap_offset) {
        uint32_t off = info->cap_offset;
        /* Bounded walk: offsets must move forward inside the buffer the kernel filled. */
        for (int n = 0; off && off + sizeof(struct vfio_info_cap_header) <= argsz && n < 64; n++) {
            struct vfio_info_cap_header *hdr = (void *)((char *)info + off);
            if (hdr->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
                struct vfio_iommu_type1_info_cap_iova_range *cap = (void *)hdr;
                uint32_t nr = cap->nr_iovas;
                if (off + sizeof(*cap) + (uint64_t)nr * sizeof(cap->iova_ranges[0]) > argsz)
                    break;
                out[3] = nr;
                for (uint32_t i = 0; i < nr && i < max_ranges; i++) {
                    uint32_t *r = &out[NVM_VFIO_INFO_HDR_DWORDS + 4 * i];
                    split64(&r[0], cap->iova_ranges[i].start);
                    split64(&r[2], cap->iova_ranges[i].end);
                }
            } else if (hdr->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
                struct vfio_iommu_type1_info_dma_avail *cap = (void *)hdr;
                if (off + sizeof(*cap) <= argsz)
                    out[4] = cap->avail;
            }
            if (hdr->next <= off)
                break;
            off = hdr->next;
        }
    }
    free(info);
    return nvm_ok();
}

int32_t nvm_vfio_region_info(int32_t device, uint32_t index, uint32_t *out)
{
    struct vfio_region_info info = { .argsz = sizeof(info), .index = index };
    if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) != 0)
        return nvm_fail(errno);
    out[0] = info.flags;
    split64(&out[1], info.size);
    split64(&out[3], info.offset);
    return nvm_ok();
}

void *nvm_vfio_map_region(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t size)
{
    if (size == 0)
        return nvm_fail_null(EINVAL);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, device, (off_t)join64(offset_lo, offset_hi));
    if (p == MAP_FAILED)
        return nvm_fail_null(errno);
    nvm_errno_tls = 0;
    return p;
}

int32_t nvm_vfio_region_read(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t width, uint32_t *value)
{
    if (width != 1 && width != 2 && width != 4)
        return nvm_fail(EINVAL);
    uint32_t v = 0; /* little-endian host: the low bytes are the register's */
    ssize_t n = pread(device, &v, width, (off_t)join64(offset_lo, offset_hi));
    if (n != (ssize_t)width)
        return nvm_fail(n < 0 ? errno : EIO);
    *value = v;
    return nvm_ok();
}

int32_t nvm_vfio_region_write(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t width, uint32_t value)
{
    if (width != 1 && width != 2 && width != 4)
        return nvm_fail(EINVAL);
    /* One pwrite of exactly `width` bytes: vfio-pci forwards it as one access of that width. */
    ssize_t n = pwrite(device, &value, width, (off_t)join64(offset_lo, offset_hi));
    if (n != (ssize_t)width)
        return nvm_fail(n < 0 ? errno : EIO);
    return nvm_ok();
}

int32_t nvm_vfio_dma_map(int32_t container, void *vaddr, uint32_t iova_lo, uint32_t iova_hi, uint32_t size, uint32_t flags)
{
    struct vfio_iommu_type1_dma_map map = {
        .argsz = sizeof(map),
        .flags = flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE),
        .vaddr = (uintptr_t)vaddr,
        .iova = join64(iova_lo, iova_hi),
        .size = size,
    };
    /* Pins the pages and programs the IOMMU; EEXIST when the IOVA range overlaps a mapping. */
    if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}

int32_t nvm_vfio_dma_unmap(int32_t container, uint32_t iova_lo, uint32_t iova_hi, uint32_t size)
{
    struct vfio_iommu_type1_dma_unmap unmap = {
        .argsz = sizeof(unmap),
        .iova = join64(iova_lo, iova_hi),
        .size = size,
    };
    if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) != 0)
        return nvm_fail(errno);
    /* The kernel writes back how much it unmapped: 0 means nothing was mapped there. */
    if (unmap.size != size)
        return nvm_fail(ENOENT);
    return nvm_ok();
}

int32_t nvm_vfio_device_reset(int32_t device)
{
    if (ioctl(device, VFIO_DEVICE_RESET) != 0)
        return nvm_fail(errno);
    return nvm_ok();
}
