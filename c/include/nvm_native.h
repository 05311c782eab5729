/*
 * libnvm native core: only what JavaScript cannot do itself.
 *
 * - mapping files (sysfs resource0, device nodes) and unmapping them;
 * - 32-bit volatile register access, 64-bit registers as two halves (low first);
 * - doorbell stores behind a release fence;
 * - page-aligned, locked, populated DMA memory and its physical addresses (pagemap);
 * - PCI configuration space access.
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
#define NVM_NATIVE_ABI 1
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

#define NVM_DMA_HUGE 1u /* back with 2 MiB hugetlb pages: physically contiguous per huge page */

/* Anonymous, page-aligned, zero-filled, populated and mlocked memory of size bytes (rounded up to the
 * page size, or to 2 MiB with NVM_DMA_HUGE). NULL on failure, errno in nvm_last_error(). */
NVM_API void *nvm_dma_alloc(uint32_t size, uint32_t flags);
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

#ifdef __cplusplus
}
#endif
#endif
