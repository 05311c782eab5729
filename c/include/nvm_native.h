/*
 * libnvm native core: only what JavaScript cannot do itself.
 *
 * - mapping files (sysfs resource0, device nodes) and unmapping them;
 * - 32-bit volatile register access, 64-bit registers as two halves (low first);
 * - doorbell stores behind a release fence;
 * - page-aligned, locked, populated DMA memory and its physical addresses (pagemap);
 * - PCI configuration space access;
 * - synchronous TCP sockets and CRC-32C for the NVMe/TCP transport.
 *
 * Conventions for bun:ffi (see docs): functions that can fail return 0 or a negative errno,
 * or a pointer/NULL. After a NULL, nvm_last_error() returns the positive errno of the failing
 * call on this thread. MAP_FAILED never crosses the boundary. Hot functions take u32/ptr and
 * return u32/void; 64-bit values travel as two u32 halves.
 */
#ifndef NVM_NATIVE_H
#define NVM_NATIVE_H

#include <stdint.h>

#define NVM_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI; lib/native.ts refuses a library with another one. */
#define NVM_NATIVE_ABI 7
NVM_API uint32_t nvm_abi_version(void);

/* errno of the last failed call on this thread (0 after a success). */
NVM_API int32_t nvm_last_error(void);

/* --- mappings ---------------------------------------------------------------------------- */

/* open(path, O_RDWR|O_SYNC) and mmap(size bytes at offset, MAP_SHARED); the fd is closed again.
 * A size of 0 maps the whole file (st_size). The mapped size goes to *size_out when non-NULL. */
NVM_API void *nvm_map_file(const char *path, uint32_t offset, uint32_t size, uint32_t *size_out);
NVM_API int32_t nvm_unmap(void *addr, uint32_t size);

/* --- registers (uncached MMIO) --------------------------------------------------------------- */

NVM_API uint32_t nvm_read32(const void *base, uint32_t offset);
NVM_API void nvm_write32(void *base, uint32_t offset, uint32_t value);
/* 64-bit register as two 32-bit stores, low dword first (NVMe 1.4 3.1.2: the host may use 32-bit accesses). */
NVM_API void nvm_write64(void *base, uint32_t offset, uint32_t lo, uint32_t hi);
/* Release fence, then a 32-bit store: SQ entries written before are visible to the device first. */
NVM_API void nvm_doorbell(void *base, uint32_t offset, uint32_t value);
NVM_API void nvm_fence_release(void);

/* --- DMA memory ------------------------------------------------------------------------------ */

#define NVM_DMA_HUGE 1u   /* back with 2 MiB hugetlb pages (MAP_HUGE_2MB): physically contiguous per huge page */
#define NVM_DMA_NOLOCK 2u /* no mlock: the kernel pins the pages and charges RLIMIT_MEMLOCK itself
                             (VFIO type1, the disnvm module), which an mlock would count twice */

/* Anonymous, page-aligned, zero-filled, populated and (unless NVM_DMA_NOLOCK) mlocked memory of size
 * bytes (rounded up to the page size, or to 2 MiB with NVM_DMA_HUGE). NULL on failure, errno in
 * nvm_last_error(): ENOMEM with NVM_DMA_HUGE when the 2 MiB pool (/sys/kernel/mm/hugepages/hugepages-2048kB)
 * has too few free pages. nvm_dma_free() of a 2 MiB-aligned part of a NVM_DMA_HUGE allocation frees that part. */
NVM_API void *nvm_dma_alloc(uint32_t size, uint32_t flags);
/* As nvm_dma_alloc, but the memory is a memfd's (hugetlb with NVM_DMA_HUGE), mapped shared: its
 * descriptor in *fd_out (close-on-exec), to hand to another process that must keep the pages
 * alive (a served controller's server: lib/share). The pages live while the mapping or any
 * descriptor of the memfd does; nvm_dma_free unmaps, close() drops the descriptor. */
NVM_API void *nvm_dma_alloc_fd(uint32_t size, uint32_t flags, int32_t *fd_out);
NVM_API int32_t nvm_dma_free(void *addr, uint32_t size, uint32_t flags);

/* Physical address of each 4 KiB page of [addr, addr + npages*4096) from /proc/self/pagemap, as
 * (lo, hi) u32 pairs into out[2*npages]. -EPERM when the kernel hides PFNs (no CAP_SYS_ADMIN),
 * -EFAULT when a page is not present. */
NVM_API int32_t nvm_phys_addrs(const void *addr, uint32_t npages, uint32_t *out);

/* Plain host memory (calloc) for out-parameters and scratch; never given to a device. */
NVM_API void *nvm_host_alloc(uint32_t size);
NVM_API void nvm_host_free(void *p);

/* --- PCI configuration space ------------------------------------------------------------------ */

/* pread/pwrite of width 1, 2 or 4 bytes at offset of a config file (sysfs .../config). */
NVM_API int32_t nvm_config_read(const char *path, uint32_t offset, uint32_t width, uint32_t *value);
NVM_API int32_t nvm_config_write(const char *path, uint32_t offset, uint32_t width, uint32_t value);

/* RLIMIT_MEMLOCK soft limit in bytes as (lo, hi) into out[2]; all ones = unlimited. */
NVM_API int32_t nvm_memlock_limit(uint32_t *out);

/* --- single owner ------------------------------------------------------------------------------ */

#define NVM_LOCK_OUT_DWORDS 5u
/* Open `path` (created mode 0600 if missing) with O_NOFOLLOW, check on the descriptor that it is a
 * regular file owned by the effective uid with one link, flock(LOCK_EX|LOCK_NB) it and write our
 * PID into it: returns the fd (keep it open while owning the device), -ELOOP for a symlink at
 * `path`, -EPERM with out[3] = 1 when the check refused the file (nothing written), or -EBUSY when
 * another live process holds it. out[5]: st_mode, st_uid, st_nlink of the file, refused flag,
 * and on -EBUSY the holder's PID from the file (0 when it holds none). */
NVM_API int32_t nvm_lock_acquire(const char *path, uint32_t *out);
NVM_API int32_t nvm_lock_release(int32_t fd);

/* --- VFIO (type1 IOMMU) ------------------------------------------------------------------------ */

/* Steps of nvm_vfio_open(), reported in out[4] so the caller can say which one failed. */
#define NVM_VFIO_STEP_NONE 0u
#define NVM_VFIO_STEP_CONTAINER 1u     /* open /dev/vfio/vfio */
#define NVM_VFIO_STEP_API_VERSION 2u   /* VFIO_GET_API_VERSION (got it in out[5]); -EPROTO */
#define NVM_VFIO_STEP_EXTENSION 3u     /* VFIO_CHECK_EXTENSION TYPE1v2 / TYPE1; -ENODEV */
#define NVM_VFIO_STEP_GROUP 4u         /* open /dev/vfio/<group>: -EBUSY held elsewhere, -EACCES */
#define NVM_VFIO_STEP_GROUP_STATUS 5u  /* VFIO_GROUP_GET_STATUS; -EBUSY when not viable (flags in out[5]) */
#define NVM_VFIO_STEP_SET_CONTAINER 6u /* VFIO_GROUP_SET_CONTAINER */
#define NVM_VFIO_STEP_SET_IOMMU 7u     /* VFIO_SET_IOMMU */
#define NVM_VFIO_STEP_DEVICE 8u        /* VFIO_GROUP_GET_DEVICE_FD */
#define NVM_VFIO_OPEN_DWORDS 8u

/* Open a container (close-on-exec), check the API version and the type1 extension, open the group
 * (e.g. "/dev/vfio/12"), check it is viable, attach it, set the IOMMU (TYPE1v2, else TYPE1) and get
 * the device fd of `bdf`. out[8]: container, group, device fds, IOMMU type, failed step, and the API
 * version or group flags. On failure everything opened is closed again. */
NVM_API int32_t nvm_vfio_open(const char *group_path, const char *bdf, uint32_t *out);
/* Close the device, group and container fds in that order; a negative fd is skipped. */
NVM_API int32_t nvm_vfio_close(int32_t container, int32_t group, int32_t device);

#define NVM_VFIO_INFO_HDR_DWORDS 8u
/* VFIO_IOMMU_GET_INFO with its capability chain. out[8 + 4*max_ranges]: flags, iova_pgsizes (lo, hi),
 * number of IOVA ranges the IOMMU reported (may exceed max_ranges), DMA mappings still available
 * (all ones when not reported), 3 reserved; then per range start (lo, hi) and end (lo, hi), inclusive. */
NVM_API int32_t nvm_vfio_iommu_info(int32_t container, uint32_t *out, uint32_t max_ranges);

#define NVM_VFIO_REGION_MMAP 4u /* VFIO_REGION_INFO_FLAG_MMAP */
/* VFIO_DEVICE_GET_REGION_INFO (vfio-pci: BAR0 = 0, config space = 7). out[5]: flags, size (lo, hi),
 * offset in the device fd (lo, hi). */
NVM_API int32_t nvm_vfio_region_info(int32_t device, uint32_t index, uint32_t *out);
/* mmap(size bytes of the device fd at offset, MAP_SHARED): a BAR. Undo with nvm_unmap(). */
NVM_API void *nvm_vfio_map_region(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t size);
/* pread/pwrite of width 1, 2 or 4 bytes at a device fd offset (config region offset + register). */
NVM_API int32_t nvm_vfio_region_read(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t width, uint32_t *value);
NVM_API int32_t nvm_vfio_region_write(int32_t device, uint32_t offset_lo, uint32_t offset_hi, uint32_t width, uint32_t value);

#define NVM_VFIO_MAP_READ 1u  /* the device may read the memory */
#define NVM_VFIO_MAP_WRITE 2u /* the device may write it */
/* VFIO_IOMMU_MAP_DMA: pin [vaddr, vaddr+size) and map it at iova. -EEXIST when the IOVA overlaps. */
NVM_API int32_t nvm_vfio_dma_map(int32_t container, void *vaddr, uint32_t iova_lo, uint32_t iova_hi, uint32_t size, uint32_t flags);
/* VFIO_IOMMU_UNMAP_DMA of exactly one earlier mapping; -ENOENT when nothing of that size was mapped there. */
NVM_API int32_t nvm_vfio_dma_unmap(int32_t container, uint32_t iova_lo, uint32_t iova_hi, uint32_t size);
/* VFIO_DEVICE_RESET (function level reset when the device has one). */
NVM_API int32_t nvm_vfio_device_reset(int32_t device);

/* --- disnvm kernel module (module/, uapi c/include/disnvm_ioctl.h) ---------------------------- */

/* open(path, O_RDWR|O_CLOEXEC) of /dev/disnvmN: the fd, or -errno (EBUSY: another process has it). */
NVM_API int32_t nvm_disnvm_open(const char *path);
/* close(fd); the module releases everything once the fd and the BAR0 mapping are both gone. */
NVM_API int32_t nvm_disnvm_close(int32_t fd);
/* mmap(size bytes at offset 0, MAP_SHARED) of the open node: BAR0, uncached. Stays valid after
 * nvm_disnvm_close(); undo with nvm_unmap(). */
NVM_API void *nvm_disnvm_map_bar(int32_t fd, uint32_t size);
#define NVM_DISNVM_INFO_DWORDS 32u
/* DISNVM_IOC_INFO: struct disnvm_info's u64 fields as (lo, hi) pairs into out[32]. */
NVM_API int32_t nvm_disnvm_info(int32_t fd, uint32_t *out);
/* DISNVM_IOC_MAP_HOST: pin and DMA-map [vaddr, vaddr+size); the bus address of each 4 KiB page as
 * (lo, hi) pairs into addrs[2 * size/4096] (C-owned memory). */
NVM_API int32_t nvm_disnvm_map_host(int32_t fd, void *vaddr, uint32_t size, uint32_t *addrs);
/* DISNVM_IOC_MAP_DEVICE: the same for a CUDA device address; -EOPNOTSUPP without CUDA support. */
NVM_API int32_t nvm_disnvm_map_device(int32_t fd, uint32_t vaddr_lo, uint32_t vaddr_hi, uint32_t size, uint32_t *addrs);
/* DISNVM_IOC_UNMAP of the mapping that starts at vaddr; -ENOENT when none does. */
NVM_API int32_t nvm_disnvm_unmap(int32_t fd, void *vaddr);
/* DISNVM_IOC_BUS_MASTER: set (enable = 1) or clear (0) Bus Master Enable; -EINVAL for other values,
 * -ESTALE for enable while an import its exporter revoked is still mapped. */
NVM_API int32_t nvm_disnvm_bus_master(int32_t fd, uint32_t enable);
#define NVM_DISNVM_DMABUF_OUT_DWORDS 4u
/* DISNVM_IOC_MAP_DMABUF: import [offset, offset+size) of the dma-buf `dmabuf_fd`; the bus address of
 * each 4 KiB page as (lo, hi) pairs into addrs[2 * size/4096], and into out[4] the import's handle
 * (lo, hi) and the dma-buf's size (lo, hi). -EBADF, -EINVAL (not a dma-buf), -ERANGE, ... as the uapi. */
NVM_API int32_t nvm_disnvm_map_dmabuf(int32_t fd, int32_t dmabuf_fd, uint32_t offset_lo, uint32_t offset_hi, uint32_t size, uint32_t *addrs, uint32_t *out);
/* DISNVM_IOC_UNMAP of the import `handle` (DISNVM_UNMAP_DMABUF); -ENOENT when there is none. */
NVM_API int32_t nvm_disnvm_unmap_dmabuf(int32_t fd, uint32_t handle_lo, uint32_t handle_hi);
/* DISNVM_IOC_DMABUF_STATUS: the import's DISNVM_DMABUF_* flags into *flags (1: revoked). */
NVM_API int32_t nvm_disnvm_dmabuf_status(int32_t fd, uint32_t handle_lo, uint32_t handle_hi, uint32_t *flags);
/* DISNVM_IOC_REVOKE_DMABUF: the module's test hook (CAP_SYS_ADMIN): revoke the import as its exporter would. */
NVM_API int32_t nvm_disnvm_revoke_dmabuf(int32_t fd, uint32_t handle_lo, uint32_t handle_hi);
/* DISNVM_IOC_BAR_FD: a new descriptor (O_CLOEXEC) that maps BAR0 only, for a process the opener
 * serves; or -errno (EPERM: not the opener, ENOTTY: a module without it). */
NVM_API int32_t nvm_disnvm_bar_fd(int32_t fd);
/* BAR0 through a DISNVM_IOC_BAR_FD descriptor, as one range of `size` bytes: its first 4 KiB (the
 * registers) mapped read-only, the rest (the doorbells) read-write; NULL with errno. Undo with
 * nvm_unmap(p, size). */
NVM_API void *nvm_disnvm_map_bar_fd(int32_t bar_fd, uint32_t size);

/* --- TCP (NVMe/TCP transport: lib/transports/tcp/) ------------------------------------------ */

/* Resolve `host` (name or address), connect a non-blocking, close-on-exec TCP socket to it within
 * timeout_ms and set TCP_NODELAY: the fd, or -errno (-ENOENT: the name does not resolve;
 * -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, ...). */
NVM_API int32_t nvm_tcp_connect(const char *host, uint32_t port, uint32_t timeout_ms);
/* Send every byte of `count` buffers, described by iov[4*count] as address (lo, hi), length,
 * reserved, waiting (poll) at most timeout_ms in all: 0, -ETIMEDOUT (the stream may then hold part
 * of the data: close it), or -errno (-EPIPE, -ECONNRESET). count <= 256. No SIGPIPE. */
NVM_API int32_t nvm_tcp_sendv(int32_t fd, const uint32_t *iov, uint32_t count, uint32_t timeout_ms);
/* readv() into up to three buffers (a length 0 skips one): the bytes read (> 0); 0 when none arrived
 * within timeout_us (0: do not wait); -ENOTCONN when the peer closed the connection; -errno. */
NVM_API int32_t nvm_tcp_recv3(int32_t fd, void *p1, uint32_t n1, void *p2, uint32_t n2, void *p3, uint32_t n3, uint32_t timeout_us);
/* shutdown(SHUT_RDWR): nothing more is received or sent on the connection (the fd stays open). */
NVM_API int32_t nvm_tcp_shutdown(int32_t fd);
NVM_API int32_t nvm_tcp_close(int32_t fd);
/* out[2]: local and peer port of a connected socket. */
NVM_API int32_t nvm_tcp_peer(int32_t fd, uint32_t *out);

/* --- Unix sockets (sharing a controller: lib/share/) ------------------------------------------ */

/* Connect a non-blocking, close-on-exec stream socket to the Unix socket at `path` (retrying while
 * the server's backlog is full, at most timeout_ms): the fd, or -errno (-ENOENT: no socket there;
 * -ECONNREFUSED: nobody listens; -EACCES; -ETIMEDOUT; -ENAMETOOLONG). */
NVM_API int32_t nvm_unix_connect(const char *path, uint32_t timeout_ms);
/* Bind and listen on a Unix socket at `path` with permissions `mode` (never wider, even during the
 * bind): the non-blocking, close-on-exec fd, or -errno (-EADDRINUSE: the path exists). */
NVM_API int32_t nvm_unix_listen(const char *path, uint32_t mode, uint32_t backlog);
/* Accept one connection without waiting: its non-blocking, close-on-exec fd with the peer's pid,
 * uid and gid (SO_PEERCRED) in cred[3], or -EAGAIN when none is pending, or -errno. */
NVM_API int32_t nvm_unix_accept(int32_t fd, uint32_t *cred);
/* SO_PEERCRED of a connected socket: pid, uid, gid into cred[3]. */
NVM_API int32_t nvm_unix_peercred(int32_t fd, uint32_t *cred);
/* Send all `len` bytes, waiting (poll) at most timeout_ms in all: 0, -ETIMEDOUT (part may have
 * gone: close the socket), or -errno (-EPIPE, -ECONNRESET). No SIGPIPE. */
NVM_API int32_t nvm_unix_send(int32_t fd, const void *buf, uint32_t len, uint32_t timeout_ms);
/* Receive up to `len` bytes: the count (> 0); 0 when none arrived within timeout_us (0: do not
 * wait); -ENOTCONN when the peer closed (or died); -errno. */
NVM_API int32_t nvm_unix_recv(int32_t fd, void *buf, uint32_t len, uint32_t timeout_us);
/* Send `len` bytes with descriptor `passfd` attached (SCM_RIGHTS, with the first byte), within
 * timeout_ms: 0 or -errno, as nvm_unix_send. */
NVM_API int32_t nvm_unix_send_fd(int32_t fd, const void *buf, uint32_t len, int32_t passfd, uint32_t timeout_ms);
/* Receive up to `len` bytes, waiting at most timeout_us (0: do not wait), and the descriptors that
 * came with them (close-on-exec): fds[0] their count, fds[1..] the descriptors (at most
 * max_fds <= 16; more are closed). The bytes read (> 0), 0 when none, -ENOTCONN when the peer
 * closed, -errno. */
NVM_API int32_t nvm_unix_recv_fds(int32_t fd, void *buf, uint32_t len, int32_t *fds, uint32_t max_fds, uint32_t timeout_us);
NVM_API int32_t nvm_unix_close(int32_t fd);

/* CRC-32C (Castagnoli) of len bytes, continuing from `prev` (a finished CRC; 0 to start):
 * nvm_crc32c(b, nb, nvm_crc32c(a, na, 0)) is the CRC of a then b. SSE4.2 when the CPU has it. */
NVM_API uint32_t nvm_crc32c(const void *data, uint32_t len, uint32_t prev);
/* 1 when nvm_crc32c uses the SSE4.2 instruction, 0 for the table version. */
NVM_API uint32_t nvm_crc32c_impl(void);
/* The table version alone, to check one against the other. */
NVM_API uint32_t nvm_crc32c_sw(const void *data, uint32_t len, uint32_t prev);
/* --- queue core, host mode (nvm_queue_core.h, nvm_queue_job.h; c/src/queue.c) ------------------ */

/* Bytes of a queue's state block (struct nvmq and its arrays); 0 unless entries is a power of
 * two from 2 to 32768. */
NVM_API uint32_t nvm_q_state_bytes(uint32_t entries);
/* nvmq_init() of the state block at `state` from a struct nvmq_init_desc; -EINVAL when refused. */
NVM_API int32_t nvm_q_init(void *state, const void *desc);
/* Bytes of the work area a struct nvmq_job needs (nvmq_work_layout()); 0 when over 4 GiB. */
NVM_API uint32_t nvm_q_work_bytes(const void *job);
/* Sizes of the shared structures, for lib/gpu/layout.ts to check its mirror: out[12]. */
NVM_API int32_t nvm_q_sizes(uint32_t *out);
/* Start job->threads OS threads running the job's executors (all or none): the run, or NULL with
 * errno. The job, its queues and its memory must stay valid until nvm_q_join() returned 0. */
NVM_API void *nvm_q_start(const void *job);
/* Executors of a run that returned so far (never blocks). */
NVM_API uint32_t nvm_q_done(void *run);
/* Wait up to timeout_ms for every executor to return, then join and free the run: 0, or
 * -ETIMEDOUT with the run still valid (ask again; set the queues' stop word to end it). */
NVM_API int32_t nvm_q_join(void *run, uint32_t timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
