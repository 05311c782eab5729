/*
 * The SmartIO shim (c/include/nvm_sisci.h): Dolphin's SISCI API, 5.11 and later (devices by fabric
 * device id, SCIConnectDeviceSegment with memory types), as flat functions for bun:ffi. Compiled
 * only where sisci_api.h and libsisci exist (c/CMakeLists.txt), against those installed headers; in
 * CI against the test-only fake's (test/smartio/dis), so this exact code runs in the tests.
 *
 * Call order, as SISCI wants it: SCIInitialize once per process; SCIOpen a descriptor per resource
 * (so each one's teardown is independent of the others'); borrow the device, find the adapter that
 * reaches it (SCIQuery), then for host memory create -> prepare -> set available -> map for the
 * device -> map for the CPU, and undo in reverse. SISCI answers SCI_ERR_BUSY while something is
 * still in use (a remote connection going away), so teardown retries until a deadline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sisci_types.h>
#include <sisci_error.h>
#include <sisci_api.h>

#include "nvm_sisci.h"

struct nvm_sisci_device {
    sci_desc_t sd;
    sci_smartio_device_t dev; /* NULL once returned (SCIClose may still be pending) */
    uint32_t fdid;
    uint32_t adapter;
};

struct nvm_sisci_remote {
    sci_remote_segment_t seg;
    struct nvm_sisci_device *dev;
    size_t size;
    sci_map_t map;
    int dev_mapped;
};

struct nvm_sisci_segment {
    sci_desc_t sd;
    sci_local_segment_t seg; /* NULL once removed (SCIClose may still be pending) */
    struct nvm_sisci_device *dev;
    size_t size;
    sci_map_t map;
    int available;
    int dev_mapped;
};

struct nvm_sisci_intr {
    sci_desc_t sd;
    sci_local_data_interrupt_t intr;
};

struct nvm_sisci_rintr {
    sci_desc_t sd;
    sci_remote_data_interrupt_t intr;
};

/* --- errors and the call trace ------------------------------------------------------------- */

static __thread struct {
    int32_t err;
    uint32_t sci;
    const char *call;
    char text[160];
} last;

/* init_lock: the SCIInitialize/SCITerminate count; trace_lock: whole lines in the trace file. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned users;
static FILE *trace;

static int errno_of(sci_error_t e)
{
    switch (e) {
    case SCI_ERR_NO_SUCH_FDID:
        return ENODEV;
    case SCI_ERR_NOT_AVAILABLE:
    case SCI_ERR_BUSY:
        return EBUSY;
    case SCI_ERR_TIMEOUT:
        return ETIMEDOUT;
    case SCI_ERR_SEGMENTID_USED:
        return EEXIST;
    case SCI_ERR_NO_SUCH_SEGMENT:
        return ENOENT;
    case SCI_ERR_SEGMENT_NOT_PREPARED:
    case SCI_ERR_ILLEGAL_OPERATION:
        return EPROTO;
    case SCI_ERR_CONNECTION_REFUSED:
        return ECONNREFUSED;
    case SCI_ERR_NOT_CONNECTED:
    case SCI_ERR_SEGMENT_NOT_CONNECTED:
        return ENOTCONN;
    case SCI_ERR_NO_SUCH_NODEID:
    case SCI_ERR_NODE_NOT_RESPONDING:
    case SCI_ERR_NO_REMOTE_LINK_ACCESS:
    case SCI_ERR_NO_LINK_ACCESS:
        return EHOSTUNREACH;
    case SCI_ERR_NOSPC:
    case SCI_ERR_API_NOSPC:
        return ENOSPC;
    case SCI_ERR_ILLEGAL_PARAMETER:
    case SCI_ERR_ILLEGAL_FLAG:
    case SCI_ERR_OUT_OF_RANGE:
    case SCI_ERR_SIZE_ALIGNMENT:
    case SCI_ERR_OFFSET_ALIGNMENT:
        return EINVAL;
    case SCI_ERR_FLAG_NOT_IMPLEMENTED:
    case SCI_ERR_NOT_IMPLEMENTED:
    case SCI_ERR_NOT_SUPPORTED:
        return EOPNOTSUPP;
    case SCI_ERR_OVERFLOW:
        return EMSGSIZE;
    default:
        return EIO;
    }
}

/* The names of the errnos errno_of() gives (strerrorname_np is glibc 2.32+; clusters run older). */
static const char *errno_name(int e)
{
    switch (e) {
    case ENODEV: return "ENODEV";
    case EBUSY: return "EBUSY";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case EPROTO: return "EPROTO";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOTCONN: return "ENOTCONN";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENOSPC: return "ENOSPC";
    case EINVAL: return "EINVAL";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EMSGSIZE: return "EMSGSIZE";
    default: return "EIO";
    }
}

/* One trace line: "SCIBorrowDevice(fdid=0x80000, flags=0x0) = OK" or "= EBUSY (sci 0x..: text)".
 * The errno class is what to compare between a real cluster and the fake (their codes differ). */
static void trace_call(const char *call, sci_error_t err, unsigned tries, const char *fmt, va_list ap)
{
    if (!trace)
        return;
    char args[256];
    vsnprintf(args, sizeof(args), fmt, ap);
    pthread_mutex_lock(&trace_lock);
    if (trace) {
        fprintf(trace, "%s(%s)", call, args);
        if (tries > 1)
            fprintf(trace, " tries=%u", tries);
        if (err == SCI_ERR_OK)
            fprintf(trace, " = OK\n");
        else
            fprintf(trace, " = %s (sci 0x%x: %s)\n", errno_name(errno_of(err)), (unsigned)err, SCIGetErrorString(err));
        fflush(trace);
    }
    pthread_mutex_unlock(&trace_lock);
}

/* After every SISCI call: trace it; on failure record it as this thread's last error and return
 * -errno; else 0. */
static int32_t done(const char *call, sci_error_t err, unsigned tries, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    trace_call(call, err, tries, fmt, ap);
    va_end(ap);
    if (err == SCI_ERR_OK) {
        last.err = 0;
        return 0;
    }
    last.err = errno_of(err);
    last.sci = (uint32_t)err;
    last.call = call;
    snprintf(last.text, sizeof(last.text), "%s", SCIGetErrorString(err));
    return -last.err;
}

/* A call made while cleaning up after an earlier failure: traced, but the earlier error stays. */
static void cleanup(const char *call, sci_error_t err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    trace_call(call, err, 1, fmt, ap);
    va_end(ap);
}

static int32_t fail(const char *call, int err, const char *why)
{
    last.err = err;
    last.sci = 0;
    last.call = call;
    snprintf(last.text, sizeof(last.text), "%s", why);
    return -err;
}

static void *fail_null(const char *call, int err, const char *why)
{
    fail(call, err, why);
    return NULL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Run `stmt` (a SISCI call setting `err`) again every millisecond while it says SCI_ERR_BUSY, until
 * timeout_ms passed; `tries` counts the calls. */
#define UNTIL_NOT_BUSY(timeout_ms, err, tries, stmt)                                                    \
    do {                                                                                                \
        const uint64_t deadline_ = now_ms() + (timeout_ms);                                             \
        const struct timespec ms_ = { 0, 1000000 };                                                     \
        for ((tries) = 1;; (tries)++) {                                                                 \
            stmt;                                                                                       \
            if ((err) != SCI_ERR_BUSY || now_ms() >= deadline_)                                         \
                break;                                                                                  \
            nanosleep(&ms_, NULL);                                                                      \
        }                                                                                               \
    } while (0)

static inline void split64(uint32_t *out, uint64_t v)
{
    out[0] = (uint32_t)v;
    out[1] = (uint32_t)(v >> 32);
}

uint32_t nvm_sisci_abi_version(void) { return NVM_SISCI_ABI; }

int32_t nvm_sisci_last_error(uint32_t *out, char *call, uint32_t call_len, char *text, uint32_t text_len)
{
    out[0] = (uint32_t)last.err;
    out[1] = last.err ? last.sci : 0;
    if (call && call_len)
        snprintf(call, call_len, "%s", last.err && last.call ? last.call : "");
    if (text && text_len)
        snprintf(text, text_len, "%s", last.err ? last.text : "");
    return last.err;
}

int32_t nvm_sisci_init(void)
{
    int32_t rc = 0;
    pthread_mutex_lock(&init_lock);
    if (users == 0) {
        const char *path = getenv("LIBNVM_SISCI_TRACE");
        if (path && *path) {
            pthread_mutex_lock(&trace_lock);
            if (!trace)
                trace = fopen(path, "ae");
            pthread_mutex_unlock(&trace_lock);
        }
        sci_error_t err;
        SCIInitialize(0, &err);
        rc = done("SCIInitialize", err, 1, "flags=0x0");
    }
    if (rc == 0)
        users++;
    pthread_mutex_unlock(&init_lock);
    return rc;
}

int32_t nvm_sisci_fini(void)
{
    pthread_mutex_lock(&init_lock);
    if (users == 0) {
        pthread_mutex_unlock(&init_lock);
        return fail("SCITerminate", EINVAL, "nvm_sisci_fini() without nvm_sisci_init()");
    }
    if (--users == 0) {
        SCITerminate();
        cleanup("SCITerminate", SCI_ERR_OK, "");
        pthread_mutex_lock(&trace_lock);
        if (trace) {
            fclose(trace);
            trace = NULL;
        }
        pthread_mutex_unlock(&trace_lock);
    }
    pthread_mutex_unlock(&init_lock);
    last.err = 0;
    return 0;
}

/* --- devices -------------------------------------------------------------------------------- */

/* SCIQuery(SCI_Q_DEVICE_INFO) of fdid: info[4] = fdid, adapter, lender node, 0. */
static int32_t query(uint32_t fdid, uint32_t *info)
{
    sci_error_t err;
    sci_smartio_device_info_t di;
    sci_smartio_query_device_t q;
    memset(&di, 0, sizeof(di));
    memset(&q, 0, sizeof(q));
    q.fdid = fdid;
    q.subcommand = SCI_Q_DEVICE_INFO;
    q.data = &di;
    SCIQuery(SCI_Q_DEVICE, &q, 0, &err);
    int32_t rc = done("SCIQuery", err, 1, "SCI_Q_DEVICE, fdid=0x%x, SCI_Q_DEVICE_INFO", fdid);
    if (rc < 0)
        return rc;
    info[0] = fdid;
    info[1] = di.adapter;
    info[2] = di.nodeid;
    info[3] = 0;
    return 0;
}

int32_t nvm_sisci_device_query(uint32_t fdid, uint32_t *info)
{
    memset(info, 0, NVM_SISCI_DEVICE_DWORDS * sizeof(*info));
    return query(fdid, info);
}

int32_t nvm_sisci_device_list(uint32_t pci_class, uint32_t *fdids, uint32_t max)
{
    sci_error_t err;
    sci_desc_t sd;
    SCIOpen(&sd, 0, &err);
    int32_t rc = done("SCIOpen", err, 1, "flags=0x0");
    if (rc < 0)
        return rc;
    sci_smartio_device_info_t filter;
    memset(&filter, 0, sizeof(filter));
    filter.pci_class = pci_class;
    size_t n = SCIGetDeviceList(sd, fdids, max, &filter, 0, &err);
    rc = done("SCIGetDeviceList", err, 1, "max=%u, pci_class=0x%x", max, pci_class);
    sci_error_t cerr;
    SCIClose(sd, 0, &cerr);
    cleanup("SCIClose", cerr, "flags=0x0");
    if (rc < 0)
        return rc;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

void *nvm_sisci_device_borrow(uint32_t fdid, uint32_t flags, uint32_t *info)
{
    sci_error_t err, cerr;
    memset(info, 0, NVM_SISCI_DEVICE_DWORDS * sizeof(*info));
    struct nvm_sisci_device *d = calloc(1, sizeof(*d));
    if (!d)
        return fail_null("calloc", ENOMEM, "out of memory");
    d->fdid = fdid;
    SCIOpen(&d->sd, 0, &err);
    if (done("SCIOpen", err, 1, "flags=0x0") < 0)
        goto free_d;
    const unsigned sflags = (flags & NVM_SISCI_BORROW_EXCLUSIVE) ? SCI_FLAG_EXCLUSIVE : 0;
    SCIBorrowDevice(d->sd, &d->dev, fdid, sflags, &err);
    if (done("SCIBorrowDevice", err, 1, "fdid=0x%x, flags=%s", fdid, sflags ? "SCI_FLAG_EXCLUSIVE" : "0") < 0)
        goto close_sd;
    /* Local segments are prepared on an adapter that reaches the device: SISCI says which. */
    if (query(fdid, info) < 0)
        goto return_dev;
    d->adapter = info[1];
    unsigned node = 0;
    SCIGetLocalNodeId(d->adapter, &node, 0, &err);
    if (done("SCIGetLocalNodeId", err, 1, "adapter=%u", d->adapter) < 0)
        goto return_dev;
    info[3] = node;
    return d;

return_dev:
    SCIReturnDevice(d->dev, 0, &cerr);
    cleanup("SCIReturnDevice", cerr, "fdid=0x%x", fdid);
close_sd:
    SCIClose(d->sd, 0, &cerr);
    cleanup("SCIClose", cerr, "flags=0x0");
free_d:
    free(d);
    return NULL;
}

int32_t nvm_sisci_device_return(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_device *d = handle;
    sci_error_t err;
    unsigned tries;
    int32_t rc;
    if (d->dev) {
        UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIReturnDevice(d->dev, 0, &err));
        if ((rc = done("SCIReturnDevice", err, tries, "fdid=0x%x", d->fdid)) < 0)
            return rc;
        d->dev = NULL;
    }
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIClose(d->sd, 0, &err));
    if ((rc = done("SCIClose", err, tries, "flags=0x0")) < 0)
        return rc;
    free(d);
    return 0;
}

/* Flags and memory types by name in the trace: their values differ between SISCI releases (and the
 * fake), their names do not. */
static const char *memtype_name(uint32_t t)
{
    return t == NVM_SISCI_MEMTYPE_BAR ? "SCI_MEMTYPE_BAR" : t == NVM_SISCI_MEMTYPE_PRIVATE ? "SCI_MEMTYPE_PRIVATE" : "SCI_MEMTYPE_SHARED";
}

static const char *map_flags_name(uint32_t f)
{
    switch (f & (NVM_SISCI_MAP_READONLY | NVM_SISCI_MAP_IOSPACE)) {
    case NVM_SISCI_MAP_READONLY:
        return "SCI_FLAG_READONLY_MAP";
    case NVM_SISCI_MAP_IOSPACE:
        return "SCI_FLAG_IO_MAP_IOSPACE";
    case NVM_SISCI_MAP_READONLY | NVM_SISCI_MAP_IOSPACE:
        return "SCI_FLAG_READONLY_MAP|SCI_FLAG_IO_MAP_IOSPACE";
    default:
        return "0";
    }
}

static int memtype(uint32_t t, unsigned *out)
{
    switch (t) {
    case NVM_SISCI_MEMTYPE_BAR:
        *out = SCI_MEMTYPE_BAR;
        return 0;
    case NVM_SISCI_MEMTYPE_PRIVATE:
        *out = SCI_MEMTYPE_PRIVATE;
        return 0;
    case NVM_SISCI_MEMTYPE_SHARED:
        *out = SCI_MEMTYPE_SHARED;
        return 0;
    default:
        return fail("memtype", EINVAL, "memory type must be NVM_SISCI_MEMTYPE_BAR, _PRIVATE or _SHARED");
    }
}

int32_t nvm_sisci_device_segment_create(void *handle, uint32_t id, uint32_t size, uint32_t type, uint32_t hints)
{
    struct nvm_sisci_device *d = handle;
    unsigned mt, h = 0;
    int32_t rc = memtype(type, &mt);
    if (rc < 0)
        return rc;
    if (hints & NVM_SISCI_HINT_DEVICE_READ)
        h |= SCI_MEMACCESS_DEVICE_READ;
    if (hints & NVM_SISCI_HINT_DEVICE_WRITE)
        h |= SCI_MEMACCESS_DEVICE_WRITE;
    if (hints & NVM_SISCI_HINT_HOST_READ)
        h |= SCI_MEMACCESS_HOST_READ;
    if (hints & NVM_SISCI_HINT_HOST_WRITE)
        h |= SCI_MEMACCESS_HOST_WRITE;
    if (hints & NVM_SISCI_HINT_MULTIHOST_READ)
        h |= SCI_MEMACCESS_MULTIHOST_READ;
    if (hints & NVM_SISCI_HINT_MULTIHOST_WRITE)
        h |= SCI_MEMACCESS_MULTIHOST_WRITE;
    sci_error_t err;
    SCICreateDeviceSegment(d->dev, id, size, mt, h, 0, &err);
    return done("SCICreateDeviceSegment", err, 1, "fdid=0x%x, id=%u, size=%u, memtype=%s, hints=0x%x", d->fdid, id, size, memtype_name(type), hints);
}

/* --- remote segments --------------------------------------------------------------------------- */

void *nvm_sisci_connect_device_segment(void *handle, uint32_t id, uint32_t type, uint32_t *size_out)
{
    struct nvm_sisci_device *d = handle;
    unsigned mt;
    *size_out = 0;
    if (memtype(type, &mt) < 0)
        return NULL;
    struct nvm_sisci_remote *r = calloc(1, sizeof(*r));
    if (!r)
        return fail_null("calloc", ENOMEM, "out of memory");
    sci_error_t err;
    SCIConnectDeviceSegment(d->dev, &r->seg, id, mt, NULL, NULL, 0, &err);
    if (done("SCIConnectDeviceSegment", err, 1, "fdid=0x%x, id=%u, memtype=%s", d->fdid, id, memtype_name(type)) < 0) {
        free(r);
        return NULL;
    }
    r->dev = d;
    r->size = SCIGetRemoteSegmentSize(r->seg);
    *size_out = r->size > UINT32_MAX ? UINT32_MAX : (uint32_t)r->size;
    return r;
}

void *nvm_sisci_remote_map_cpu(void *handle, uint32_t offset, uint32_t size, uint32_t flags)
{
    struct nvm_sisci_remote *r = handle;
    if (r->map)
        return fail_null("SCIMapRemoteSegment", EALREADY, "this handle is mapped already");
    if (offset > r->size)
        return fail_null("SCIMapRemoteSegment", EINVAL, "offset past the segment's end");
    size_t len = size ? size : r->size - offset;
    unsigned sflags = 0;
    if (flags & NVM_SISCI_MAP_READONLY)
        sflags |= SCI_FLAG_READONLY_MAP;
    if (flags & NVM_SISCI_MAP_IOSPACE)
        sflags |= SCI_FLAG_IO_MAP_IOSPACE;
    sci_error_t err;
    volatile void *p = SCIMapRemoteSegment(r->seg, &r->map, offset, len, NULL, sflags, &err);
    if (done("SCIMapRemoteSegment", err, 1, "offset=%u, size=%zu, flags=%s", offset, len, map_flags_name(flags)) < 0) {
        r->map = NULL;
        return NULL;
    }
    return (void *)p;
}

int32_t nvm_sisci_remote_unmap_cpu(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_remote *r = handle;
    if (!r->map)
        return 0;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIUnmapSegment(r->map, 0, &err));
    int32_t rc = done("SCIUnmapSegment", err, tries, "remote");
    if (rc == 0)
        r->map = NULL;
    return rc;
}

int32_t nvm_sisci_remote_map_device(void *handle, uint32_t *ioaddr)
{
    struct nvm_sisci_remote *r = handle;
    sci_ioaddr_t io = 0;
    sci_error_t err;
    SCIMapRemoteSegmentForDevice(r->seg, r->dev->dev, &io, 0, r->size, 0, &err);
    int32_t rc = done("SCIMapRemoteSegmentForDevice", err, 1, "fdid=0x%x, offset=0, size=%zu", r->dev->fdid, r->size);
    if (rc < 0)
        return rc;
    r->dev_mapped = 1;
    split64(ioaddr, (uint64_t)io);
    return 0;
}

int32_t nvm_sisci_remote_unmap_device(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_remote *r = handle;
    if (!r->dev_mapped)
        return 0;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIUnmapRemoteSegmentForDevice(r->seg, r->dev->dev, 0, &err));
    int32_t rc = done("SCIUnmapRemoteSegmentForDevice", err, tries, "fdid=0x%x", r->dev->fdid);
    if (rc == 0)
        r->dev_mapped = 0;
    return rc;
}

int32_t nvm_sisci_disconnect(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_remote *r = handle;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIDisconnectSegment(r->seg, 0, &err));
    int32_t rc = done("SCIDisconnectSegment", err, tries, "fdid=0x%x", r->dev->fdid);
    if (rc == 0)
        free(r);
    return rc;
}

/* --- local segments ---------------------------------------------------------------------------- */

static struct nvm_sisci_segment *create(struct nvm_sisci_device *d, uint32_t id, size_t size, unsigned sflags, uint32_t *id_out)
{
    sci_error_t err, cerr;
    struct nvm_sisci_segment *s = calloc(1, sizeof(*s));
    if (!s)
        return fail_null("calloc", ENOMEM, "out of memory");
    s->dev = d;
    SCIOpen(&s->sd, 0, &err);
    if (done("SCIOpen", err, 1, "flags=0x0") < 0)
        goto free_s;
    SCICreateSegment(s->sd, &s->seg, id, size, NULL, NULL, sflags, &err);
    if (done("SCICreateSegment", err, 1, "id=%u, size=%zu, flags=%s", id, size,
             (sflags & SCI_FLAG_EMPTY) ? ((sflags & SCI_FLAG_AUTO_ID) ? "SCI_FLAG_EMPTY|SCI_FLAG_AUTO_ID" : "SCI_FLAG_EMPTY")
                                       : ((sflags & SCI_FLAG_AUTO_ID) ? "SCI_FLAG_AUTO_ID" : "0")) < 0)
        goto close_sd;
    s->size = SCIGetLocalSegmentSize(s->seg);
    *id_out = SCIGetLocalSegmentId(s->seg);
    return s;

close_sd:
    SCIClose(s->sd, 0, &cerr);
    cleanup("SCIClose", cerr, "flags=0x0");
free_s:
    free(s);
    return NULL;
}

void *nvm_sisci_segment_create(void *dev, uint32_t id, uint32_t size, uint32_t flags, uint32_t *id_out)
{
    *id_out = 0;
    return create(dev, id, size, (flags & NVM_SISCI_SEGMENT_AUTO_ID) ? SCI_FLAG_AUTO_ID : 0, id_out);
}

void *nvm_sisci_segment_create_gpu(void *dev, uint32_t id, uint32_t dptr_lo, uint32_t dptr_hi, uint32_t size, uint32_t flags, uint32_t *id_out)
{
    *id_out = 0;
    unsigned sflags = SCI_FLAG_EMPTY | ((flags & NVM_SISCI_SEGMENT_AUTO_ID) ? SCI_FLAG_AUTO_ID : 0);
    struct nvm_sisci_segment *s = create(dev, id, size, sflags, id_out);
    if (!s)
        return NULL;
    const uint64_t dptr = (uint64_t)dptr_hi << 32 | dptr_lo;
    sci_error_t err;
    SCIAttachPhysicalMemory(0, (void *)(uintptr_t)dptr, 0, size, s->seg, SCI_FLAG_CUDA_BUFFER, &err);
    if (done("SCIAttachPhysicalMemory", err, 1, "dptr=0x%llx, size=%u, SCI_FLAG_CUDA_BUFFER", (unsigned long long)dptr, size) == 0) {
        s->size = size;
        return s;
    }
    SCIRemoveSegment(s->seg, 0, &err);
    cleanup("SCIRemoveSegment", err, "id=%u", *id_out);
    SCIClose(s->sd, 0, &err);
    cleanup("SCIClose", err, "flags=0x0");
    free(s);
    return NULL;
}

int32_t nvm_sisci_segment_prepare(void *handle)
{
    struct nvm_sisci_segment *s = handle;
    sci_error_t err;
    SCIPrepareSegment(s->seg, s->dev->adapter, 0, &err);
    return done("SCIPrepareSegment", err, 1, "adapter=%u", s->dev->adapter);
}

int32_t nvm_sisci_segment_set_available(void *handle)
{
    struct nvm_sisci_segment *s = handle;
    sci_error_t err;
    SCISetSegmentAvailable(s->seg, s->dev->adapter, 0, &err);
    int32_t rc = done("SCISetSegmentAvailable", err, 1, "adapter=%u", s->dev->adapter);
    if (rc == 0)
        s->available = 1;
    return rc;
}

int32_t nvm_sisci_segment_map_device(void *handle, uint32_t *ioaddr)
{
    struct nvm_sisci_segment *s = handle;
    sci_ioaddr_t io = 0;
    sci_error_t err;
    SCIMapLocalSegmentForDevice(s->seg, s->dev->adapter, s->dev->dev, &io, 0, s->size, 0, &err);
    int32_t rc = done("SCIMapLocalSegmentForDevice", err, 1, "adapter=%u, fdid=0x%x, offset=0, size=%zu", s->dev->adapter, s->dev->fdid, s->size);
    if (rc < 0)
        return rc;
    s->dev_mapped = 1;
    split64(ioaddr, (uint64_t)io);
    return 0;
}

void *nvm_sisci_segment_map_cpu(void *handle, uint32_t flags)
{
    struct nvm_sisci_segment *s = handle;
    if (s->map)
        return fail_null("SCIMapLocalSegment", EALREADY, "this handle is mapped already");
    const unsigned sflags = (flags & NVM_SISCI_MAP_READONLY) ? SCI_FLAG_READONLY_MAP : 0;
    sci_error_t err;
    void *p = SCIMapLocalSegment(s->seg, &s->map, 0, s->size, NULL, sflags, &err);
    if (done("SCIMapLocalSegment", err, 1, "offset=0, size=%zu, flags=%s", s->size, sflags ? "SCI_FLAG_READONLY_MAP" : "0") < 0) {
        s->map = NULL;
        return NULL;
    }
    return p;
}

int32_t nvm_sisci_segment_unmap_cpu(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_segment *s = handle;
    if (!s->map)
        return 0;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIUnmapSegment(s->map, 0, &err));
    int32_t rc = done("SCIUnmapSegment", err, tries, "local");
    if (rc == 0)
        s->map = NULL;
    return rc;
}

int32_t nvm_sisci_segment_unmap_device(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_segment *s = handle;
    if (!s->dev_mapped)
        return 0;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIUnmapLocalSegmentForDevice(s->seg, s->dev->adapter, s->dev->dev, 0, &err));
    int32_t rc = done("SCIUnmapLocalSegmentForDevice", err, tries, "adapter=%u, fdid=0x%x", s->dev->adapter, s->dev->fdid);
    if (rc == 0)
        s->dev_mapped = 0;
    return rc;
}

int32_t nvm_sisci_segment_set_unavailable(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_segment *s = handle;
    if (!s->available)
        return 0;
    sci_error_t err;
    unsigned tries;
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCISetSegmentUnavailable(s->seg, s->dev->adapter, 0, &err));
    int32_t rc = done("SCISetSegmentUnavailable", err, tries, "adapter=%u", s->dev->adapter);
    if (rc == 0)
        s->available = 0;
    return rc;
}

int32_t nvm_sisci_segment_remove(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_segment *s = handle;
    sci_error_t err;
    unsigned tries;
    int32_t rc;
    if (s->seg) {
        UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIRemoveSegment(s->seg, 0, &err));
        if ((rc = done("SCIRemoveSegment", err, tries, "flags=0x0")) < 0)
            return rc;
        s->seg = NULL;
    }
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIClose(s->sd, 0, &err));
    if ((rc = done("SCIClose", err, tries, "flags=0x0")) < 0)
        return rc;
    free(s);
    return 0;
}

/* --- data interrupts --------------------------------------------------------------------------- */

int32_t nvm_sisci_local_node(uint32_t adapter, uint32_t *node)
{
    unsigned n = 0;
    sci_error_t err;
    SCIGetLocalNodeId(adapter, &n, 0, &err);
    int32_t rc = done("SCIGetLocalNodeId", err, 1, "adapter=%u", adapter);
    if (rc == 0)
        *node = n;
    return rc;
}

void *nvm_sisci_intr_create(uint32_t adapter, uint32_t number, uint32_t flags, uint32_t *out)
{
    sci_error_t err, cerr;
    out[0] = out[1] = 0;
    struct nvm_sisci_intr *i = calloc(1, sizeof(*i));
    if (!i)
        return fail_null("calloc", ENOMEM, "out of memory");
    uint32_t node;
    if (nvm_sisci_local_node(adapter, &node) < 0)
        goto free_i;
    SCIOpen(&i->sd, 0, &err);
    if (done("SCIOpen", err, 1, "flags=0x0") < 0)
        goto free_i;
    unsigned no = number;
    const unsigned sflags = (flags & NVM_SISCI_INTR_FIXED) ? SCI_FLAG_FIXED_INTNO : 0;
    /* No callback: the caller waits with a deadline (nvm_sisci_intr_wait) on a thread of its choice. */
    SCICreateDataInterrupt(i->sd, &i->intr, adapter, &no, NULL, NULL, sflags, &err);
    if (done("SCICreateDataInterrupt", err, 1, "adapter=%u, number=%u, flags=%s", adapter, number, sflags ? "SCI_FLAG_FIXED_INTNO" : "0") < 0) {
        SCIClose(i->sd, 0, &cerr);
        cleanup("SCIClose", cerr, "flags=0x0");
        goto free_i;
    }
    out[0] = no;
    out[1] = node;
    return i;

free_i:
    free(i);
    return NULL;
}

int32_t nvm_sisci_intr_wait(void *handle, void *buf, uint32_t len, uint32_t timeout_ms)
{
    struct nvm_sisci_intr *i = handle;
    /* Never SCI_INFINITE_TIMEOUT: every wait in libnvm is bounded. */
    const unsigned t = timeout_ms >= SCI_INFINITE_TIMEOUT ? SCI_INFINITE_TIMEOUT - 1 : timeout_ms;
    unsigned n = len;
    sci_error_t err;
    SCIWaitForDataInterrupt(i->intr, buf, &n, t, 0, &err);
    int32_t rc = done("SCIWaitForDataInterrupt", err, 1, "len=%u, timeout=%u", len, t);
    if (rc < 0)
        return rc;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

int32_t nvm_sisci_intr_remove(void *handle, uint32_t timeout_ms)
{
    struct nvm_sisci_intr *i = handle;
    sci_error_t err;
    unsigned tries;
    int32_t rc;
    if (i->intr) {
        UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIRemoveDataInterrupt(i->intr, 0, &err));
        if ((rc = done("SCIRemoveDataInterrupt", err, tries, "flags=0x0")) < 0)
            return rc;
        i->intr = NULL;
    }
    UNTIL_NOT_BUSY(timeout_ms, err, tries, SCIClose(i->sd, 0, &err));
    if ((rc = done("SCIClose", err, tries, "flags=0x0")) < 0)
        return rc;
    free(i);
    return 0;
}

void *nvm_sisci_intr_connect(uint32_t adapter, uint32_t node, uint32_t number, uint32_t timeout_ms)
{
    sci_error_t err, cerr;
    struct nvm_sisci_rintr *r = calloc(1, sizeof(*r));
    if (!r)
        return fail_null("calloc", ENOMEM, "out of memory");
    SCIOpen(&r->sd, 0, &err);
    if (done("SCIOpen", err, 1, "flags=0x0") < 0)
        goto free_r;
    const unsigned t = timeout_ms >= SCI_INFINITE_TIMEOUT ? SCI_INFINITE_TIMEOUT - 1 : timeout_ms;
    SCIConnectDataInterrupt(r->sd, &r->intr, node, adapter, number, t, 0, &err);
    if (done("SCIConnectDataInterrupt", err, 1, "node=%u, adapter=%u, number=%u, timeout=%u", node, adapter, number, t) < 0) {
        SCIClose(r->sd, 0, &cerr);
        cleanup("SCIClose", cerr, "flags=0x0");
        goto free_r;
    }
    return r;

free_r:
    free(r);
    return NULL;
}

int32_t nvm_sisci_intr_trigger(void *handle, const void *data, uint32_t len)
{
    struct nvm_sisci_rintr *r = handle;
    sci_error_t err;
    SCITriggerDataInterrupt(r->intr, (void *)data, len, 0, &err);
    return done("SCITriggerDataInterrupt", err, 1, "len=%u", len);
}

int32_t nvm_sisci_intr_disconnect(void *handle)
{
    struct nvm_sisci_rintr *r = handle;
    sci_error_t err;
    int32_t rc;
    if (r->intr) {
        SCIDisconnectDataInterrupt(r->intr, 0, &err);
        if ((rc = done("SCIDisconnectDataInterrupt", err, 1, "flags=0x0")) < 0)
            return rc;
        r->intr = NULL;
    }
    SCIClose(r->sd, 0, &err);
    if ((rc = done("SCIClose", err, 1, "flags=0x0")) < 0)
        return rc;
    free(r);
    return 0;
}

/* --- coherence --------------------------------------------------------------------------------- */

int32_t nvm_sisci_cache_sync(void *addr, uint32_t len, uint32_t flags)
{
    unsigned sflags = 0;
    if (flags & NVM_SISCI_SYNC_FLUSH)
        sflags |= SCI_FLAG_CACHE_FLUSH;
    if (flags & NVM_SISCI_SYNC_INVALIDATE)
        sflags |= SCI_FLAG_CACHE_INVALIDATE;
    sci_error_t err;
    SCICacheSync(NULL, addr, len, sflags, &err);
    return done("SCICacheSync", err, 1, "len=%u, flags=%s", len,
                flags == (NVM_SISCI_SYNC_FLUSH | NVM_SISCI_SYNC_INVALIDATE) ? "SCI_FLAG_CACHE_FLUSH|SCI_FLAG_CACHE_INVALIDATE"
                : flags == NVM_SISCI_SYNC_FLUSH                              ? "SCI_FLAG_CACHE_FLUSH"
                : flags == NVM_SISCI_SYNC_INVALIDATE                         ? "SCI_FLAG_CACHE_INVALIDATE"
                                                                             : "0");
}

void nvm_sisci_flush(void)
{
    SCIFlush(NULL, 0);
    cleanup("SCIFlush", SCI_ERR_OK, "flags=0x0");
}
