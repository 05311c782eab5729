/*
 * TEST-ONLY stand-in for Dolphin's sisci_error.h, written for libnvm's fake SmartIO
 * (test/smartio/fake-sisci.c). It is NOT Dolphin's header and copies nothing from it: it declares
 * the error names libnvm's shim (c/src/sisci.c) uses, as Dolphin's public documentation and
 * examples name them. The numeric values are the fake's own and mean nothing on a real system;
 * the shim never depends on them. Never install or ship this file.
 */
#ifndef FAKE_SISCI_ERROR_H
#define FAKE_SISCI_ERROR_H

typedef enum {
    SCI_ERR_OK = 0,
    SCI_ERR_BUSY = 0x901,
    SCI_ERR_FLAG_NOT_IMPLEMENTED,
    SCI_ERR_ILLEGAL_FLAG,
    SCI_ERR_NOSPC,
    SCI_ERR_API_NOSPC,
    SCI_ERR_NOT_IMPLEMENTED,
    SCI_ERR_NO_SUCH_ADAPTERNO,
    SCI_ERR_TIMEOUT,
    SCI_ERR_OUT_OF_RANGE,
    SCI_ERR_NO_SUCH_SEGMENT,
    SCI_ERR_CONNECTION_REFUSED,
    SCI_ERR_SEGMENT_NOT_CONNECTED,
    SCI_ERR_SIZE_ALIGNMENT,
    SCI_ERR_OFFSET_ALIGNMENT,
    SCI_ERR_ILLEGAL_PARAMETER,
    SCI_ERR_SEGMENT_NOT_PREPARED,
    SCI_ERR_ILLEGAL_OPERATION,
    SCI_ERR_SEGMENTID_USED,
    SCI_ERR_SYSTEM,
    SCI_ERR_NOT_CONNECTED,
    SCI_ERR_NOT_AVAILABLE,
    SCI_ERR_OVERFLOW,
    SCI_ERR_NOT_INITIALIZED,
    SCI_ERR_NOT_SUPPORTED,
    SCI_ERR_NO_SUCH_NODEID,
    SCI_ERR_NODE_NOT_RESPONDING,
    SCI_ERR_NO_REMOTE_LINK_ACCESS,
    SCI_ERR_NO_LINK_ACCESS,
    SCI_ERR_NO_SUCH_FDID,
} sci_error_t;

#endif
