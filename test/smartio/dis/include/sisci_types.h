/*
 * TEST-ONLY stand-in for Dolphin's sisci_types.h (see sisci_error.h beside it): the handle, address
 * and query types libnvm's shim uses, declared from Dolphin's public SISCI documentation. Handles
 * are pointers to the fake's own structures. Not Dolphin's header; never install or ship it.
 */
#ifndef FAKE_SISCI_TYPES_H
#define FAKE_SISCI_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include "sisci_error.h"

typedef struct fake_sci_desc *sci_desc_t;
typedef struct fake_sci_local_segment *sci_local_segment_t;
typedef struct fake_sci_remote_segment *sci_remote_segment_t;
typedef struct fake_sci_map *sci_map_t;
typedef struct fake_sci_sequence *sci_sequence_t;
typedef struct fake_sci_smartio_device *sci_smartio_device_t;
typedef struct fake_sci_local_data_interrupt *sci_local_data_interrupt_t;
typedef struct fake_sci_remote_data_interrupt *sci_remote_data_interrupt_t;

/* An address as the borrowed device sees it (what goes into PRPs and queue base registers). */
typedef uint64_t sci_ioaddr_t;

typedef enum { SCI_CALLBACK_CANCEL = 1, SCI_CALLBACK_CONTINUE } sci_callback_action_t;

/* The fake runs no callbacks (it refuses SCI_FLAG_USE_CALLBACK); these are only pointer types. */
typedef sci_callback_action_t (*sci_cb_local_segment_t)(void *arg, sci_local_segment_t segment, unsigned int reason,
                                                        unsigned int node, unsigned int adapter, sci_error_t error);
typedef sci_callback_action_t (*sci_cb_remote_segment_t)(void *arg, sci_remote_segment_t segment, unsigned int reason,
                                                         sci_error_t error);
typedef sci_callback_action_t (*sci_cb_device_segment_t)(void *arg, sci_remote_segment_t segment, unsigned int reason,
                                                         sci_error_t error);
typedef sci_callback_action_t (*sci_cb_data_interrupt_t)(void *arg, sci_local_data_interrupt_t interrupt, void *data,
                                                         unsigned int length, sci_error_t error);

/* SCIQuery(SCI_Q_DEVICE, ...) with subcommand SCI_Q_DEVICE_INFO fills a sci_smartio_device_info_t. */
typedef struct {
    unsigned int adapter;   /* a local adapter through which the device is reached */
    unsigned int nodeid;    /* the node that lends the device */
    unsigned int pci_class; /* class code; also the filter of SCIGetDeviceList */
} sci_smartio_device_info_t;

typedef struct {
    unsigned int fdid;
    unsigned int subcommand;
    void *data;
} sci_smartio_query_device_t;

#endif
