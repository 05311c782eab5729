/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR BSD-2-Clause */
/*
 * disnvm: the user API of the disnvm kernel module (module/disnvm.c), shared with libnvm's C
 * library (c/src/disnvm.c). One header for both sides: every struct is fixed-size, made of __u64
 * fields (or pairs of __u32) only, so its layout is the same for 32- and 64-bit processes and needs
 * no compat code.
 *
 * /dev/disnvmN is one NVMe controller bound to the disnvm PCI driver. One process opens it at a
 * time (a second open() gets EBUSY). Holding it lets that process point the controller's DMA at any
 * bus address, so open() needs CAP_SYS_RAWIO (EPERM without) unless an IOMMU confines the
 * controller: its IOMMU domain translates (DMA or DMA-FQ, not identity/passthrough) and no other
 * device shares its IOMMU group. DISNVM_INFO_ISOLATED says which case holds. What the open file
 * gives:
 *
 *   mmap(fd, offset 0)    BAR0, uncached, MAP_SHARED only; not inherited across fork()
 *   DISNVM_IOC_MAP_HOST   pin host memory and map it for the controller's DMA (through the IOMMU
 *                         when there is one): one bus address per 4 KiB page
 *   DISNVM_IOC_MAP_DMABUF import a dma-buf (any exporter: udmabuf, a GPU driver): attach it to the
 *                         controller, map it for the controller's DMA, one bus address per 4 KiB
 *                         page; the way to reach GPU memory with the IOMMU on
 *   DISNVM_IOC_MAP_DEVICE CUDA device memory through NV-P2P (nvidia_p2p_get_pages; 64 KiB pages),
 *                         the fallback for drivers without dma-buf export; EOPNOTSUPP when the
 *                         module was built without the NVIDIA driver's headers
 *   DISNVM_IOC_UNMAP      undo one MAP_* by its start address (MAP_DMABUF: by its handle)
 *   DISNVM_IOC_INFO       BAR0 size, PCI identity, pinned-page and import counts
 *   DISNVM_IOC_BUS_MASTER set or clear Bus Master Enable (PCI COMMAND bit 2)
 *   DISNVM_IOC_DMABUF_STATUS  whether the exporter revoked an import
 *   DISNVM_IOC_REVOKE_DMABUF  test hook (CAP_SYS_ADMIN): revoke an import as its exporter would
 *   DISNVM_IOC_BAR_FD     a new descriptor that maps BAR0 only (its register page read-only), for a
 *                         process the opener serves: it rings its own queues' doorbells and maps
 *                         no memory for DMA; revoked when the opener's file is released
 *
 * Pinned host memory is charged to the opener's RLIMIT_MEMLOCK (mm->locked_vm, VmLck in
 * /proc/<pid>/status), as VFIO and RDMA charge theirs: do not also mlock() it, or it counts twice.
 *
 * When the file is released (close and munmap of BAR0, or the process dies, SIGKILL included)
 * the module shuts the controller down (CC.SHN, then CC.EN = 0, bounded by CAP.TO), clears bus
 * mastering, and only then unmaps and unpins everything the file mapped and detaches every
 * dma-buf it imported: no DMA can reach freed memory.
 *
 * An exporter that takes an imported dma-buf back (its move_notify callback) gets it only after the
 * module stopped the controller the same way (disabled, bus mastering cleared): the import is then
 * revoked (DISNVM_IOC_DMABUF_STATUS, disnvm_info.file_revoked), and bus mastering cannot be set
 * again (ESTALE) until the revoked import was unmapped.
 */
#ifndef DISNVM_IOCTL_H
#define DISNVM_IOCTL_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Bumped on any incompatible change of the structs or numbers below; DISNVM_IOC_INFO reports it. */
#define DISNVM_ABI_VERSION 3

/* The unit of the bus address lists: one address per 4 KiB page, whatever the CPU's page size. */
#define DISNVM_PAGE_SIZE 4096ULL

/* Largest single MAP_HOST/MAP_DEVICE/MAP_DMABUF request (1 GiB); larger ones get E2BIG. */
#define DISNVM_MAX_MAP_SIZE (1ULL << 30)

/* CUDA device memory is pinned in GPU pages of 64 KiB: MAP_DEVICE wants that alignment. */
#define DISNVM_GPU_PAGE_SIZE 65536ULL

/*
 * DISNVM_IOC_MAP_HOST / DISNVM_IOC_MAP_DEVICE.
 *
 * In:  vaddr, size: a range of this process's memory, both multiples of 4 KiB (of the CPU page size
 *      where that is larger; 64 KiB for MAP_DEVICE), 0 < size <= DISNVM_MAX_MAP_SIZE; it must not
 *      overlap a range this file has mapped.
 *      addrs: user pointer to size / 4096 __u64 entries. flags: 0.
 * Out: addrs[i] = the bus address the controller uses for byte i * 4096 of the range. The list is
 *      complete or the call fails: never a short list, never an address 0.
 * Errors: EINVAL (unaligned, size 0, flags != 0), E2BIG (size too large), EEXIST (overlap),
 *      EFAULT (range or addrs not accessible, or not all pages could be pinned), ENOMEM (the pages
 *      would take the opener over RLIMIT_MEMLOCK and it lacks CAP_IPC_LOCK, or out of memory),
 *      EPERM (ioctl from a process other than the one that opened the file, or the controller is
 *      no longer isolated by an IOMMU and the opener lacked CAP_SYS_RAWIO), ENODEV (device
 *      unbound), EOPNOTSUPP (MAP_DEVICE without CUDA support),
 *      EXDEV (MAP_HOST: the DMA API would not let the controller reach the process's pages
 *      directly. Either it would bounce the transfers through kernel buffers the process never
 *      sees: swiotlb=force, an SEV/TDX guest whose memory is encrypted, a DMA mask too small for
 *      the memory with no IOMMU; or the device's DMA is not cache-coherent and every transfer would
 *      need cache maintenance a userspace driver cannot do. Logged once in the kernel log.)
 */

struct disnvm_map {
	__u64 vaddr;
	__u64 size;
	__u64 addrs;
	__u64 flags;
};

/*
 * DISNVM_IOC_MAP_DMABUF: import [offset, offset + size) of a dma-buf for the controller's DMA.
 *
 * The module attaches the dma-buf to the controller's PCI device as a dynamic importer that allows
 * peer-to-peer (so a GPU's memory reaches the NVMe directly), pins it with its exporter, and maps
 * it: the exporter makes the bus addresses for this device (through its IOMMU domain when one
 * translates). Nothing is charged to RLIMIT_MEMLOCK: the memory is the exporter's, which accounts
 * for it, and this process's own pages are not pinned.
 *
 * In:  fd: a dma-buf file descriptor of the calling process. offset, size: multiples of 4 KiB,
 *      0 < size <= DISNVM_MAX_MAP_SIZE, offset + size <= the dma-buf's size. addrs: user pointer to
 *      size / 4096 __u64 entries. flags: 0.
 * Out: addrs[i] = the bus address of byte offset + i * 4096 of the dma-buf (complete, none 0);
 *      handle: names the import for DISNVM_IOC_UNMAP (with DISNVM_UNMAP_DMABUF), _DMABUF_STATUS
 *      and _REVOKE_DMABUF; dmabuf_size: the dma-buf's size in bytes.
 * Errors: EBADF (fd is not open), EINVAL (fd is not a dma-buf; unaligned; size 0; flags != 0),
 *      ERANGE (offset + size past the dma-buf's end), E2BIG (size too large), EFAULT (addrs),
 *      EPERM, ENODEV (as MAP_HOST), EXDEV (the DMA would be bounced or is not coherent, or an
 *      address the exporter gave is not mapped in the controller's IOMMU domain), EIO (the
 *      exporter's mapping cannot be described in 4 KiB pages), EAGAIN (the exporter revoked the
 *      buffer while it was being imported), EOPNOTSUPP (a kernel without dma-buf support), or
 *      what the exporter's attach or map refused with (EBUSY: it cannot place the buffer where
 *      the controller reaches it).
 *
 * Revocation: an exporter may take the buffer back (dma_buf_move_notify(), e.g. a GPU reset).
 * Before the module lets it, it stops the controller (CC.SHN, CC.EN = 0, bus mastering cleared) and
 * gives the mapping back; the import is then revoked: DISNVM_IOC_DMABUF_STATUS says so, and
 * DISNVM_IOC_BUS_MASTER refuses to set bus mastering (ESTALE) until the import was unmapped. The
 * process then unmaps it and resets the controller; it never lets the controller use the old
 * addresses.
 */
struct disnvm_map_dmabuf {
	__u32 fd;
	__u32 flags;
	__u64 offset;
	__u64 size;
	__u64 addrs;
	__u64 handle;		/* out */
	__u64 dmabuf_size;	/* out */
};

/*
 * DISNVM_IOC_UNMAP: release the mapping that starts at vaddr: DMA unmap, flush the IOMMU's TLB
 * when it defers invalidations (a DMA-FQ domain), then unpin and uncharge. With flags =
 * DISNVM_UNMAP_DMABUF, vaddr is the handle of a MAP_DMABUF import instead: unmap it, unpin it with
 * its exporter, detach and flush the same way. With an IOMMU the controller cannot reach the
 * memory once this returns. Without one (only possible with CAP_SYS_RAWIO) the caller makes sure
 * the controller no longer uses it. Errors: ENOENT (no mapping starts there, no such handle),
 * EINVAL (other flags), EPERM (not the opener), ENODEV (device unbound).
 */
struct disnvm_unmap {
	__u64 vaddr;
	__u64 flags;
};

/* disnvm_unmap.flags: vaddr is a MAP_DMABUF handle. */
#define DISNVM_UNMAP_DMABUF (1ULL << 0)

/*
 * DISNVM_IOC_DMABUF_STATUS: flags (out; in: 0) of the import `handle`: DISNVM_DMABUF_REVOKED once
 * its exporter took it back. Errors: ENOENT (no such handle), EINVAL (flags != 0), EPERM (not the
 * opener), ENODEV.
 *
 * DISNVM_IOC_REVOKE_DMABUF: a test hook, for exporters that never revoke (udmabuf): run the
 * module's move_notify for the import `handle` under the dma-buf's reservation lock, exactly as an
 * exporter's dma_buf_move_notify() would. Needs CAP_SYS_ADMIN (EPERM without); flags: 0.
 */
struct disnvm_dmabuf_handle {
	__u64 handle;
	__u64 flags;
};

/* disnvm_dmabuf_handle.flags out of DISNVM_IOC_DMABUF_STATUS */
#define DISNVM_DMABUF_REVOKED (1ULL << 0)

/* disnvm_info.flags */
#define DISNVM_INFO_CUDA (1ULL << 0)       /* MAP_DEVICE is compiled in */
#define DISNVM_INFO_DMA_64BIT (1ULL << 1)  /* 64-bit DMA mask (else 32-bit) */
#define DISNVM_INFO_ISOLATED (1ULL << 2)   /* an IOMMU translates, alone in its group: no CAP_SYS_RAWIO needed */
#define DISNVM_INFO_DMABUF (1ULL << 3)     /* MAP_DMABUF is there (the kernel has dma-buf support) */
#define DISNVM_INFO_BAR_FD (1ULL << 4)     /* DISNVM_IOC_BAR_FD is there (4 KiB CPU pages) */

/* DISNVM_IOC_INFO. */
struct disnvm_info {
	__u64 abi_version;        /* DISNVM_ABI_VERSION */
	__u64 bar0_size;          /* bytes; mmap at most this much */
	__u64 vendor;             /* PCI vendor ID */
	__u64 device;             /* PCI device ID */
	__u64 class_code;         /* PCI class code, 0x010802 for NVMe */
	__u64 flags;              /* DISNVM_INFO_* */
	__u64 pinned_pages;       /* 4 KiB pages pinned on this device, all files */
	__u64 file_pinned_pages;  /* 4 KiB pages pinned through this file */
	__u64 file_mappings;      /* live MAP_* ranges of this file, imports included */
	__u64 file_dmabufs;       /* live MAP_DMABUF imports of this file */
	__u64 file_dmabuf_pages;  /* 4 KiB pages imported through this file (not pinned_pages) */
	__u64 file_revoked;       /* imports of this file their exporter revoked, not yet unmapped */
	__u64 dmabufs;            /* live MAP_DMABUF imports on this device, all files */
	__u64 file_bar_fds;       /* live DISNVM_IOC_BAR_FD descriptors made from this file */
	__u64 reserved[2];
};

/*
 * DISNVM_IOC_BUS_MASTER: enable = 1 sets Bus Master Enable, 0 clears it (the controller can then
 * start no DMA at all: how a caller stops a controller it could not disable before settling the
 * memory it gave it). open() sets it, release clears it. Errors: EINVAL (enable > 1, flags != 0),
 * EPERM (not the opener), ENODEV (device unbound), ESTALE (enable = 1 while an import the exporter
 * revoked is still mapped: unmap it first).
 */
struct disnvm_bus_master {
	__u32 enable;
	__u32 flags;
};

/*
 * DISNVM_IOC_BAR_FD (argument: flags, 0): returns a new file descriptor (O_CLOEXEC) that maps BAR0
 * and does nothing else: mmap(MAP_SHARED) within BAR0, the register page (offset 0, CC, AQA, ASQ,
 * ACQ) read-only and never made writable, the doorbells from offset 0x1000 read-write; no ioctl.
 * For the opener to hand (SCM_RIGHTS) to a process it serves, which then rings its own queues'
 * doorbells: that process can neither map memory for the controller's DMA nor move the admin
 * queue. It holds no reference to the opener's file: when that is released (closed, or its
 * process died) or the device is unbound, the descriptor is revoked first: its mappings are
 * zapped, and every later touch finds a page of plain memory (writes land nowhere, reads see what
 * was written there, at first zeroes) instead of a controller someone else may own by then.
 * Errors: EINVAL (flags), EPERM (not the opener), ENODEV (unbound), EOPNOTSUPP (CPU pages larger
 * than 4 KiB: the doorbells share the register page), EMFILE/ENOMEM.
 */
#define DISNVM_IOC_MAGIC 0xDA

#define DISNVM_IOC_MAP_HOST   _IOWR(DISNVM_IOC_MAGIC, 0x01, struct disnvm_map)
#define DISNVM_IOC_MAP_DEVICE _IOWR(DISNVM_IOC_MAGIC, 0x02, struct disnvm_map)
#define DISNVM_IOC_UNMAP      _IOW(DISNVM_IOC_MAGIC, 0x03, struct disnvm_unmap)
#define DISNVM_IOC_INFO       _IOR(DISNVM_IOC_MAGIC, 0x04, struct disnvm_info)
#define DISNVM_IOC_BUS_MASTER _IOW(DISNVM_IOC_MAGIC, 0x05, struct disnvm_bus_master)
#define DISNVM_IOC_MAP_DMABUF _IOWR(DISNVM_IOC_MAGIC, 0x06, struct disnvm_map_dmabuf)
#define DISNVM_IOC_DMABUF_STATUS _IOWR(DISNVM_IOC_MAGIC, 0x07, struct disnvm_dmabuf_handle)
#define DISNVM_IOC_REVOKE_DMABUF _IOW(DISNVM_IOC_MAGIC, 0x08, struct disnvm_dmabuf_handle)
#define DISNVM_IOC_BAR_FD     _IO(DISNVM_IOC_MAGIC, 0x09)

#endif /* DISNVM_IOCTL_H */
