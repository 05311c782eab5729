/*
 * libnvm's SmartIO shim (libnvm-sisci.so): Dolphin's SISCI API (eXpressWare 5.11 and later) as flat
 * functions with integer and pointer arguments, for bun:ffi. Built only where sisci_api.h and
 * libsisci are installed (c/CMakeLists.txt); TypeScript loads it from lib/sisci.ts and never loads
 * libsisci itself, whose exported names the SISCI headers rename with macros.
 *
 * The shim owns every SISCI type: devices, segments and interrupts are opaque handles (pointers).
 * A handle is freed only by the call that ends it successfully (return, disconnect, remove); after
 * a failure it stays valid, so the caller can retry or give it up.
 *
 * Errors: functions return 0 (or a count, or a handle), or -errno (or NULL). nvm_sisci_last_error()
 * then tells, for this thread, the errno, the sci_error_t SISCI returned, the SISCI function that
 * failed and SCIGetErrorString()'s text. The errno classes:
 *   ENODEV        no such fabric device id (SCI_ERR_NO_SUCH_FDID)
 *   EBUSY         not available: not lent, or borrowed exclusively elsewhere (SCI_ERR_NOT_AVAILABLE);
 *                 or still in use after the busy deadline (SCI_ERR_BUSY)
 *   ETIMEDOUT     SCI_ERR_TIMEOUT
 *   EEXIST        segment id in use (SCI_ERR_SEGMENTID_USED)
 *   ENOENT        no such segment or interrupt (SCI_ERR_NO_SUCH_SEGMENT)
 *   EPROTO        out of order: not prepared, not available, illegal operation
 *   ECONNREFUSED  SCI_ERR_CONNECTION_REFUSED
 *   ENOTCONN      not connected (SCI_ERR_NOT_CONNECTED, SCI_ERR_SEGMENT_NOT_CONNECTED)
 *   EHOSTUNREACH  no such node, node not responding, no (remote) link access
 *   ENOSPC        SCI_ERR_NOSPC / SCI_ERR_API_NOSPC
 *   EINVAL        illegal parameter, flag, range or alignment
 *   EOPNOTSUPP    not implemented or not supported (a flag this SISCI lacks)
 *   EMSGSIZE      a data interrupt larger than the buffer (SCI_ERR_OVERFLOW)
 *   EIO           anything else
 *
 * Teardown calls take a timeout: SISCI answers SCI_ERR_BUSY while a segment or interrupt is still
 * in use (a remote node connected, a mapping not yet gone), and they retry until the deadline.
 *
 * LIBNVM_SISCI_TRACE=<file>: every SISCI call is appended to the file, one line each (the call,
 * its integer arguments, the result), so a run on a real cluster can be compared with the fake's.
 */
#ifndef NVM_SISCI_H
#define NVM_SISCI_H

#include <stdint.h>

#define NVM_SISCI_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI; lib/sisci.ts refuses a shim with another one. */
#define NVM_SISCI_ABI 1
NVM_SISCI_API uint32_t nvm_sisci_abi_version(void);

/* The last failure on this thread: out[2] = errno (0 after a success), sci_error_t; `call` gets the
 * SISCI function's name, `text` SCIGetErrorString()'s (both NUL-terminated, truncated to fit; either
 * may be NULL). Returns out[0]. */
#define NVM_SISCI_ERROR_DWORDS 2u
NVM_SISCI_API int32_t nvm_sisci_last_error(uint32_t *out, char *call, uint32_t call_len, char *text, uint32_t text_len);

/* SCIInitialize on the first call in the process, SCITerminate when as many nvm_sisci_fini() calls
 * followed. Every other function needs it. */
NVM_SISCI_API int32_t nvm_sisci_init(void);
NVM_SISCI_API int32_t nvm_sisci_fini(void);

/* --- devices -------------------------------------------------------------------------------- */

#define NVM_SISCI_BORROW_EXCLUSIVE 1u /* no other borrower anywhere in the cluster (SCI_FLAG_EXCLUSIVE) */
#define NVM_SISCI_DEVICE_DWORDS 4u
/* Borrow fabric device `fdid` (SCIOpen, SCIBorrowDevice, then SCIQuery for the adapter that reaches
 * it). info[4]: fdid, local adapter, lender's node id, this node's id on that adapter. */
NVM_SISCI_API void *nvm_sisci_device_borrow(uint32_t fdid, uint32_t flags, uint32_t *info);
/* SCIReturnDevice (retried while busy) and SCIClose. Connections and segments of the device must be
 * gone first. */
NVM_SISCI_API int32_t nvm_sisci_device_return(void *dev, uint32_t timeout_ms);
/* SCIQuery of `fdid` without borrowing it: info[4] as nvm_sisci_device_borrow (node id 0 there). */
NVM_SISCI_API int32_t nvm_sisci_device_query(uint32_t fdid, uint32_t *info);
/* SCIGetDeviceList: the fabric device ids of class `pci_class` (0: any) into fdids[max]; returns how
 * many exist (may exceed max). */
NVM_SISCI_API int32_t nvm_sisci_device_list(uint32_t pci_class, uint32_t *fdids, uint32_t max);

#define NVM_SISCI_MEMTYPE_BAR 1u     /* a BAR of the device; id = BAR number */
#define NVM_SISCI_MEMTYPE_PRIVATE 2u /* memory near the device, for this borrower */
#define NVM_SISCI_MEMTYPE_SHARED 3u  /* memory near the device, seen by every borrower (a rendezvous) */

#define NVM_SISCI_HINT_DEVICE_READ 1u
#define NVM_SISCI_HINT_DEVICE_WRITE 2u
#define NVM_SISCI_HINT_HOST_READ 4u
#define NVM_SISCI_HINT_HOST_WRITE 8u
#define NVM_SISCI_HINT_MULTIHOST_READ 16u
#define NVM_SISCI_HINT_MULTIHOST_WRITE 32u
/* SCICreateDeviceSegment: `size` bytes of PRIVATE or SHARED memory near the device under `id`, with
 * the access hints above; -EEXIST when the id is taken (a SHARED one another borrower made). */
NVM_SISCI_API int32_t nvm_sisci_device_segment_create(void *dev, uint32_t id, uint32_t size, uint32_t memtype, uint32_t hints);

/* --- device memory: remote segments (BAR, private, shared) ----------------------------------- */

/* SCIConnectDeviceSegment: the device's memory `id` of `memtype`; its size into *size_out. */
NVM_SISCI_API void *nvm_sisci_connect_device_segment(void *dev, uint32_t id, uint32_t memtype, uint32_t *size_out);
#define NVM_SISCI_MAP_READONLY 1u /* SCI_FLAG_READONLY_MAP */
#define NVM_SISCI_MAP_IOSPACE 2u  /* SCI_FLAG_IO_MAP_IOSPACE: uncached (registers); else write-combined */
/* SCIMapRemoteSegment of [offset, offset+size) (size 0: to the end) into this process. One CPU
 * mapping per handle. Undo with nvm_sisci_remote_unmap_cpu(). */
NVM_SISCI_API void *nvm_sisci_remote_map_cpu(void *rseg, uint32_t offset, uint32_t size, uint32_t flags);
NVM_SISCI_API int32_t nvm_sisci_remote_unmap_cpu(void *rseg, uint32_t timeout_ms);
/* SCIMapRemoteSegmentForDevice of the whole segment for the borrowed device: the address the device
 * uses, (lo, hi) into ioaddr[2]. */
NVM_SISCI_API int32_t nvm_sisci_remote_map_device(void *rseg, uint32_t *ioaddr);
NVM_SISCI_API int32_t nvm_sisci_remote_unmap_device(void *rseg, uint32_t timeout_ms);
/* SCIDisconnectSegment (retried while busy); frees the handle. */
NVM_SISCI_API int32_t nvm_sisci_disconnect(void *rseg, uint32_t timeout_ms);

/* --- host memory: local segments -------------------------------------------------------------- */

#define NVM_SISCI_SEGMENT_AUTO_ID 1u /* let SISCI pick the id (SCI_FLAG_AUTO_ID); `id` is ignored */
/* SCIOpen and SCICreateSegment of `size` bytes of host memory for the borrowed device `dev`; the id
 * into *id_out. -EEXIST when `id` is taken on this node. */
NVM_SISCI_API void *nvm_sisci_segment_create(void *dev, uint32_t id, uint32_t size, uint32_t flags, uint32_t *id_out);
/* The same over GPU memory: an empty segment with the CUDA device pointer (lo, hi) attached
 * (SCIAttachPhysicalMemory, SCI_FLAG_CUDA_BUFFER); no CPU mapping of it. -EOPNOTSUPP where SISCI
 * was built without CUDA support. */
NVM_SISCI_API void *nvm_sisci_segment_create_gpu(void *dev, uint32_t id, uint32_t dptr_lo, uint32_t dptr_hi, uint32_t size,
                                                 uint32_t flags, uint32_t *id_out);
/* SCIPrepareSegment on the adapter that reaches the device, then SCISetSegmentAvailable: the order
 * SISCI requires before the segment is mapped for the device. */
NVM_SISCI_API int32_t nvm_sisci_segment_prepare(void *seg);
NVM_SISCI_API int32_t nvm_sisci_segment_set_available(void *seg);
/* SCIMapLocalSegmentForDevice of the whole segment: the address the device uses, (lo, hi) into ioaddr[2]. */
NVM_SISCI_API int32_t nvm_sisci_segment_map_device(void *seg, uint32_t *ioaddr);
/* SCIMapLocalSegment of the whole segment into this process (flags: NVM_SISCI_MAP_READONLY). */
NVM_SISCI_API void *nvm_sisci_segment_map_cpu(void *seg, uint32_t flags);
/* Teardown, in this order: CPU mapping, device mapping, availability, the segment (which frees the
 * handle). Each is retried while SISCI says busy, until timeout_ms. */
NVM_SISCI_API int32_t nvm_sisci_segment_unmap_cpu(void *seg, uint32_t timeout_ms);
NVM_SISCI_API int32_t nvm_sisci_segment_unmap_device(void *seg, uint32_t timeout_ms);
NVM_SISCI_API int32_t nvm_sisci_segment_set_unavailable(void *seg, uint32_t timeout_ms);
NVM_SISCI_API int32_t nvm_sisci_segment_remove(void *seg, uint32_t timeout_ms);

/* --- data interrupts (small messages between nodes) -------------------------------------------- */

#define NVM_SISCI_INTR_FIXED 1u /* use `number` (SCI_FLAG_FIXED_INTNO); else SISCI picks one */
#define NVM_SISCI_INTR_DWORDS 2u
/* SCIOpen and SCICreateDataInterrupt on `adapter`; out[2]: interrupt number, this node's id. */
NVM_SISCI_API void *nvm_sisci_intr_create(uint32_t adapter, uint32_t number, uint32_t flags, uint32_t *out);
/* SCIWaitForDataInterrupt, at most timeout_ms (never infinite): the message's length, -ETIMEDOUT,
 * or -EMSGSIZE when it did not fit `len`. */
NVM_SISCI_API int32_t nvm_sisci_intr_wait(void *intr, void *buf, uint32_t len, uint32_t timeout_ms);
NVM_SISCI_API int32_t nvm_sisci_intr_remove(void *intr, uint32_t timeout_ms);
/* SCIOpen and SCIConnectDataInterrupt to interrupt `number` of node `node`, trying for timeout_ms. */
NVM_SISCI_API void *nvm_sisci_intr_connect(uint32_t adapter, uint32_t node, uint32_t number, uint32_t timeout_ms);
NVM_SISCI_API int32_t nvm_sisci_intr_trigger(void *rintr, const void *data, uint32_t len);
NVM_SISCI_API int32_t nvm_sisci_intr_disconnect(void *rintr);
/* SCIGetLocalNodeId of `adapter` into *node. */
NVM_SISCI_API int32_t nvm_sisci_local_node(uint32_t adapter, uint32_t *node);

/* --- coherence --------------------------------------------------------------------------------- */

#define NVM_SISCI_SYNC_FLUSH 1u      /* write CPU caches back before the device reads */
#define NVM_SISCI_SYNC_INVALIDATE 2u /* drop CPU cache lines before the CPU reads what the device wrote */
/* SCICacheSync over [addr, addr+len) of a mapping made here; a no-op on cache-coherent hosts. */
NVM_SISCI_API int32_t nvm_sisci_cache_sync(void *addr, uint32_t len, uint32_t flags);
/* SCIFlush: drain write-combined stores (a WC mapping) before a doorbell. */
NVM_SISCI_API void nvm_sisci_flush(void);

#ifdef __cplusplus
}
#endif
#endif
