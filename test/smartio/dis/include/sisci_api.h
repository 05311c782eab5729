/*
 * TEST-ONLY stand-in for Dolphin's sisci_api.h (see sisci_error.h beside it): the SISCI calls and
 * flags libnvm's shim (c/src/sisci.c) uses, declared from Dolphin's public SISCI documentation
 * (eXpressWare 5.11+: SmartIO devices named by fabric device id, memory types, device segments).
 * Written for libnvm; no text of Dolphin's header is copied, and the flag values are the fake's own.
 * Unlike the real header it renames no symbol. Never install or ship it.
 */
#ifndef FAKE_SISCI_API_H
#define FAKE_SISCI_API_H

#include "sisci_types.h"
#include "sisci_error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SCI_INFINITE_TIMEOUT 0xffffffffu

/* flags (the fake's values) */
#define SCI_FLAG_FIXED_INTNO 0x1u
#define SCI_FLAG_USE_CALLBACK 0x2u
#define SCI_FLAG_AUTO_ID 0x4u
#define SCI_FLAG_EMPTY 0x8u
#define SCI_FLAG_CUDA_BUFFER 0x10u
#define SCI_FLAG_READONLY_MAP 0x20u
#define SCI_FLAG_IO_MAP_IOSPACE 0x40u
#define SCI_FLAG_EXCLUSIVE 0x80u
#define SCI_FLAG_CACHE_FLUSH 0x100u
#define SCI_FLAG_CACHE_INVALIDATE 0x200u

/* device memory types (SCIConnectDeviceSegment, SCICreateDeviceSegment) */
#define SCI_MEMTYPE_BAR 0x1u
#define SCI_MEMTYPE_PRIVATE 0x2u
#define SCI_MEMTYPE_SHARED 0x4u

/* access hints for SCICreateDeviceSegment */
#define SCI_MEMACCESS_DEVICE_READ 0x1u
#define SCI_MEMACCESS_DEVICE_WRITE 0x2u
#define SCI_MEMACCESS_HOST_READ 0x4u
#define SCI_MEMACCESS_HOST_WRITE 0x8u
#define SCI_MEMACCESS_MULTIHOST_READ 0x10u
#define SCI_MEMACCESS_MULTIHOST_WRITE 0x20u

/* SCIQuery */
#define SCI_Q_DEVICE 0x100u
#define SCI_Q_DEVICE_INFO 0x1u

/* library */
void SCIInitialize(unsigned int flags, sci_error_t *error);
void SCITerminate(void);
const char *SCIGetErrorString(sci_error_t error);
void SCIOpen(sci_desc_t *sd, unsigned int flags, sci_error_t *error);
void SCIClose(sci_desc_t sd, unsigned int flags, sci_error_t *error);
void SCIGetLocalNodeId(unsigned int adapterNo, unsigned int *nodeId, unsigned int flags, sci_error_t *error);
void SCIQuery(unsigned int command, void *data, unsigned int flags, sci_error_t *error);

/* SmartIO devices */
size_t SCIGetDeviceList(sci_desc_t sd, uint32_t *fdids, size_t maxEntries, const sci_smartio_device_info_t *filter,
                        unsigned int flags, sci_error_t *error);
void SCIBorrowDevice(sci_desc_t sd, sci_smartio_device_t *device, uint32_t fdid, unsigned int flags, sci_error_t *error);
void SCIReturnDevice(sci_smartio_device_t device, unsigned int flags, sci_error_t *error);
void SCIConnectDeviceSegment(sci_smartio_device_t device, sci_remote_segment_t *segment, unsigned int segmentId,
                             unsigned int memtype, sci_cb_device_segment_t callback, void *callbackArg,
                             unsigned int flags, sci_error_t *error);
void SCICreateDeviceSegment(sci_smartio_device_t device, unsigned int segmentId, size_t size, unsigned int memtype,
                            unsigned int accessHints, unsigned int flags, sci_error_t *error);
void SCIMapRemoteSegmentForDevice(sci_remote_segment_t segment, sci_smartio_device_t device, sci_ioaddr_t *ioaddr,
                                  size_t offset, size_t size, unsigned int flags, sci_error_t *error);
void SCIUnmapRemoteSegmentForDevice(sci_remote_segment_t segment, sci_smartio_device_t device, unsigned int flags,
                                    sci_error_t *error);
void SCIMapLocalSegmentForDevice(sci_local_segment_t segment, unsigned int localAdapterNo, sci_smartio_device_t device,
                                 sci_ioaddr_t *ioaddr, size_t offset, size_t size, unsigned int flags,
                                 sci_error_t *error);
void SCIUnmapLocalSegmentForDevice(sci_local_segment_t segment, unsigned int localAdapterNo,
                                   sci_smartio_device_t device, unsigned int flags, sci_error_t *error);

/* local segments */
void SCICreateSegment(sci_desc_t sd, sci_local_segment_t *segment, unsigned int segmentId, size_t size,
                      sci_cb_local_segment_t callback, void *callbackArg, unsigned int flags, sci_error_t *error);
void SCIAttachPhysicalMemory(sci_ioaddr_t ioaddress, void *address, unsigned int busNo, size_t size,
                             sci_local_segment_t segment, unsigned int flags, sci_error_t *error);
void SCIPrepareSegment(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags, sci_error_t *error);
void SCISetSegmentAvailable(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags,
                            sci_error_t *error);
void SCISetSegmentUnavailable(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags,
                              sci_error_t *error);
void SCIRemoveSegment(sci_local_segment_t segment, unsigned int flags, sci_error_t *error);
size_t SCIGetLocalSegmentSize(sci_local_segment_t segment);
unsigned int SCIGetLocalSegmentId(sci_local_segment_t segment);
void *SCIMapLocalSegment(sci_local_segment_t segment, sci_map_t *map, size_t offset, size_t size, void *addr,
                         unsigned int flags, sci_error_t *error);

/* remote segments */
size_t SCIGetRemoteSegmentSize(sci_remote_segment_t segment);
volatile void *SCIMapRemoteSegment(sci_remote_segment_t segment, sci_map_t *map, size_t offset, size_t size, void *addr,
                                   unsigned int flags, sci_error_t *error);
void SCIDisconnectSegment(sci_remote_segment_t segment, unsigned int flags, sci_error_t *error);

/* mappings */
void SCIUnmapSegment(sci_map_t map, unsigned int flags, sci_error_t *error);
void SCICacheSync(sci_map_t map, void *addr, size_t length, unsigned int flags, sci_error_t *error);
void SCIFlush(sci_sequence_t sequence, unsigned int flags);

/* data interrupts */
void SCICreateDataInterrupt(sci_desc_t sd, sci_local_data_interrupt_t *interrupt, unsigned int localAdapterNo,
                            unsigned int *interruptNo, sci_cb_data_interrupt_t callback, void *callbackArg,
                            unsigned int flags, sci_error_t *error);
void SCIRemoveDataInterrupt(sci_local_data_interrupt_t interrupt, unsigned int flags, sci_error_t *error);
void SCIWaitForDataInterrupt(sci_local_data_interrupt_t interrupt, void *data, unsigned int *length,
                             unsigned int timeout, unsigned int flags, sci_error_t *error);
void SCIConnectDataInterrupt(sci_desc_t sd, sci_remote_data_interrupt_t *interrupt, unsigned int nodeId,
                             unsigned int localAdapterNo, unsigned int interruptNo, unsigned int timeout,
                             unsigned int flags, sci_error_t *error);
void SCIDisconnectDataInterrupt(sci_remote_data_interrupt_t interrupt, unsigned int flags, sci_error_t *error);
void SCITriggerDataInterrupt(sci_remote_data_interrupt_t interrupt, void *data, unsigned int length,
                             unsigned int flags, sci_error_t *error);

#ifdef __cplusplus
}
#endif
#endif
