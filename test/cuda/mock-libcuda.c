/*
 * A stand-in for the NVIDIA driver's libcuda.so.1, for unit tests of lib/cuda/ on machines with
 * no GPU. Test-only: built by test/cuda/mock.ts under test/cuda/build/, never shipped.
 *
 * What it models, and why:
 * - It exports the driver entry points lib/cuda/driver.ts binds, under the names the real
 *   library exports them: the versioned ones (cuMemAlloc_v2, ...). It does NOT export the
 *   unversioned names whose real symbol keeps an older ABI (cuMemAlloc takes a 32-bit pointer
 *   there), so binding the wrong one fails at dlopen instead of corrupting memory on a real GPU.
 * - It checks arguments the way the driver documents (cuda.h "\return" lists): NOT_INITIALIZED
 *   before cuInit, INVALID_CONTEXT without a current context, INVALID_VALUE/INVALID_DEVICE for
 *   bad pointers, sizes, ordinals and flags, HOST_MEMORY_(ALREADY|NOT)_REGISTERED.
 * - Device handles (CUdevice) are not ordinals and device pointers are not host addresses, so a
 *   caller that mixes them up is caught: CUdevice = 0x100 + ordinal; cuMemAlloc_v2 pointers start
 *   at 0xC0DE << 48, so their high dword has bit 31 set; a registered host page is seen by the
 *   "device" at its host address + 0x5000 << 48. With mock_set_alloc_offset(), allocations start
 *   off a page boundary as small ones do on a GPU, and such a pointer loses bits in a double.
 * - The current context is per thread (__thread), as in the driver: a Worker that did not make
 *   its own context current gets INVALID_CONTEXT.
 * - "Device memory" is a memfd (sealed against shrinking) mapped MAP_SHARED, so the dma-buf
 *   export can be a real one: with /dev/udmabuf present, cuMemGetHandleForAddressRange turns the
 *   memfd pages into a dma-buf with UDMABUF_CREATE; without it, it returns NOT_SUPPORTED (801).
 *
 * Test-only controls (mock_*) set device count, attributes and memory size, inject the result of
 * the next call of an entry point, and let tests look inside (allocations, registrations, the
 * memfd behind a device pointer, the current device of the calling thread, call counts).
 *
 * Kernels: cuModuleLoadData accepts what the driver would recognise (a fatbin, a cubin or PTX
 * text) and cuModuleGetFunction knows libnvm's two queue kernels by name. cuLaunchKernel runs such
 * a "kernel" on host threads executing the same queue code, nvm_queue_job.h compiled for the host,
 * with every device address it meets translated to the host memory behind it (NVMQ_ADDR), and
 * only after checking that each address the job names is one a GPU could reach (device memory or a
 * registered host range): a host pointer passed where a device address belongs makes the launch
 * fail at cuStreamQuery with CUDA_ERROR_ILLEGAL_ADDRESS, as a GPU would. Streams report
 * CUDA_ERROR_NOT_READY until those threads returned. Registering I/O memory (IOMEMORY) is refused
 * with NOT_PERMITTED unless a test allows it (mock_set_iomemory).
 *
 * Every entry point runs under one mutex: tests call it from Workers too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/udmabuf.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

/* The queue code the "kernels" run: addresses in the job are device addresses, translated here. */
#include <stdint.h>
static void *mock_translate(uint64_t a);
#define NVMQ_ADDR(a) mock_translate(a)
#include "nvm_queue_job.h"

/* The driver API's types and the values used here, declared from cuda.h's documented values. */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct mock_ctx *CUcontext;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_STUB_LIBRARY = 34,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_OPERATING_SYSTEM = 304,
    CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712,
    CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713,
    CUDA_ERROR_NOT_PERMITTED = 800,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

enum {
    ATTR_CAN_MAP_HOST_MEMORY = 19,
    ATTR_PCI_BUS_ID = 33,
    ATTR_PCI_DEVICE_ID = 34,
    ATTR_UNIFIED_ADDRESSING = 41,
    ATTR_PCI_DOMAIN_ID = 50,
    ATTR_COMPUTE_CAPABILITY_MAJOR = 75,
    ATTR_COMPUTE_CAPABILITY_MINOR = 76,
    ATTR_HOST_REGISTER_SUPPORTED = 99,
    ATTR_READ_ONLY_HOST_REGISTER_SUPPORTED = 113,
    ATTR_GPU_DIRECT_RDMA_SUPPORTED = 116,
    ATTR_DMA_BUF_SUPPORTED = 124,
    ATTR_TABLE = 160, /* attributes are small integers; anything else is INVALID_VALUE */
};

#define HOSTREGISTER_PORTABLE 0x01u
#define HOSTREGISTER_DEVICEMAP 0x02u
#define HOSTREGISTER_IOMEMORY 0x04u
#define HOSTREGISTER_READ_ONLY 0x08u
#define RANGE_HANDLE_TYPE_DMA_BUF_FD 1
#define RANGE_FLAG_DMA_BUF_MAPPING_TYPE_PCIE 1ull

#define MAX_DEVICES 8
#define DEVICE_HANDLE_BASE 0x100
#define PAGE 4096ull
#define DPTR_BASE 0xC0DE000000000000ull
#define DPTR_ALIGN (2ull << 20)
#define HOSTMAP_BIAS 0x5000000000000000ull

struct mock_ctx {
    int ordinal;
    int refs;
    int alive;
};

struct mock_alloc {
    CUdeviceptr dptr;
    size_t size; /* whole pages */
    int memfd;
    unsigned char *host;
    int ordinal;
    struct mock_alloc *next;
};

struct mock_reg {
    uintptr_t host;
    size_t size;
    unsigned flags;
    CUdeviceptr dptr; /* 0 without DEVICEMAP */
    struct mock_reg *next;
};

struct mock_device {
    int attr[ATTR_TABLE];
    unsigned char known[ATTR_TABLE];
    unsigned long long total_mem;
    unsigned long long used;
    char name[64];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int device_count = 1;
static int driver_version = 13000;
static struct mock_device devices[MAX_DEVICES];
static struct mock_ctx contexts[MAX_DEVICES];
static struct mock_alloc *allocs;
static struct mock_reg *regs;
static CUdeviceptr next_dptr = DPTR_BASE;
static unsigned alloc_offset; /* where in its slot an allocation starts (the driver sub-allocates small ones) */
static char udmabuf_path[256] = "/dev/udmabuf";
static unsigned long long last_export[4]; /* handleType, flags, dptr, size */
static int iomemory_allowed; /* mock_set_iomemory(): IOMEMORY registrations succeed */
static __thread struct mock_ctx *current;

/* --- call counts and injected failures --------------------------------------------------------- */

#define MAX_NAMES 64
static struct {
    char name[48];
    unsigned calls;   /* since the library was loaded: never reset, for the coverage test */
    int fail_result;  /* result the next call returns instead of running, 0 = none */
} entries[MAX_NAMES];

static int entry_index(const char *name)
{
    for (int i = 0; i < MAX_NAMES; i++) {
        if (entries[i].name[0] == '\0') {
            snprintf(entries[i].name, sizeof entries[i].name, "%s", name);
            return i;
        }
        if (strcmp(entries[i].name, name) == 0)
            return i;
    }
    return -1;
}

/* Count the call; return the injected result for it, if one is pending (and clear it). */
static CUresult enter(const char *name)
{
    int i = entry_index(name);
    if (i < 0)
        return CUDA_SUCCESS;
    entries[i].calls++;
    CUresult r = entries[i].fail_result;
    entries[i].fail_result = CUDA_SUCCESS;
    return r;
}

/* Define an entry point: lock, count, injected result or the body, unlock. */
#define ENTRY(fn, params, args)                                                                        \
    static CUresult impl_##fn params;                                                                  \
    API CUresult fn params                                                                             \
    {                                                                                                  \
        pthread_mutex_lock(&lock);                                                                     \
        CUresult r_ = enter(#fn);                                                                      \
        if (r_ == CUDA_SUCCESS)                                                                        \
            r_ = impl_##fn args;                                                                       \
        pthread_mutex_unlock(&lock);                                                                   \
        return r_;                                                                                     \
    }                                                                                                  \
    static CUresult impl_##fn params

/* --- state ------------------------------------------------------------------------------------- */

static void device_defaults(int i)
{
    struct mock_device *d = &devices[i];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "Mock GPU %d (libnvm test double)", i);
    d->total_mem = 1ull << 30;
    const int defaults[][2] = {
        {ATTR_CAN_MAP_HOST_MEMORY, 1},
        {ATTR_PCI_BUS_ID, 0xC1 + i}, /* hex letters, so a caller's case handling shows */
        {ATTR_PCI_DEVICE_ID, 0},
        {ATTR_UNIFIED_ADDRESSING, 1},
        {ATTR_PCI_DOMAIN_ID, 0},
        {ATTR_COMPUTE_CAPABILITY_MAJOR, 9},
        {ATTR_COMPUTE_CAPABILITY_MINOR, 0},
        {ATTR_HOST_REGISTER_SUPPORTED, 1},
        {ATTR_READ_ONLY_HOST_REGISTER_SUPPORTED, 1},
        {ATTR_GPU_DIRECT_RDMA_SUPPORTED, 1},
        {ATTR_DMA_BUF_SUPPORTED, 1},
    };
    for (size_t k = 0; k < sizeof defaults / sizeof defaults[0]; k++) {
        d->attr[defaults[k][0]] = defaults[k][1];
        d->known[defaults[k][0]] = 1;
    }
}

static void free_alloc(struct mock_alloc *a)
{
    munmap(a->host, a->size);
    close(a->memfd);
    devices[a->ordinal].used -= a->size;
    free(a);
}

/* Free every allocation of one device (its primary context went away), or of all with -1. */
static void free_allocs_of(int ordinal)
{
    struct mock_alloc **pp = &allocs;
    while (*pp) {
        struct mock_alloc *a = *pp;
        if (ordinal < 0 || a->ordinal == ordinal) {
            *pp = a->next;
            free_alloc(a);
        } else {
            pp = &a->next;
        }
    }
}

static int ordinal_of(CUdevice dev)
{
    int i = dev - DEVICE_HANDLE_BASE;
    return i >= 0 && i < device_count ? i : -1;
}

static CUresult need_init(void) { return initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED; }

static CUresult need_context(void)
{
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    return current && current->alive ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

static struct mock_alloc *alloc_containing(CUdeviceptr p, size_t size)
{
    for (struct mock_alloc *a = allocs; a; a = a->next)
        if (p >= a->dptr && p - a->dptr <= a->size && size <= a->size - (p - a->dptr))
            return a;
    return NULL;
}

/* Host address behind [p, p+size) of device memory or of a registered, device-mapped host range. */
static void *resolve(CUdeviceptr p, size_t size)
{
    struct mock_alloc *a = alloc_containing(p, size);
    if (a)
        return a->host + (p - a->dptr);
    for (struct mock_reg *r = regs; r; r = r->next)
        if (r->dptr && p >= r->dptr && p - r->dptr <= r->size && size <= r->size - (p - r->dptr))
            return (void *)(r->host + (p - r->dptr));
    return NULL;
}

/* --- errors ------------------------------------------------------------------------------------ */

static const struct {
    CUresult r;
    const char *name;
    const char *text;
} names[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_STUB_LIBRARY, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_OPERATING_SYSTEM, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
     "part or all of the requested memory range is already mapped"},
    {CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
     "pointer does not correspond to a registered memory region"},
    {CUDA_ERROR_NOT_PERMITTED, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult lookup(CUresult error, const char **pStr, int text)
{
    if (!pStr)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (names[i].r == error) {
            *pStr = text ? names[i].text : names[i].name;
            return CUDA_SUCCESS;
        }
    }
    /* As the driver does for a value that is no CUresult. */
    *pStr = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

ENTRY(cuGetErrorName, (CUresult error, const char **pStr), (error, pStr)) { return lookup(error, pStr, 0); }

ENTRY(cuGetErrorString, (CUresult error, const char **pStr), (error, pStr)) { return lookup(error, pStr, 1); }

/* --- initialisation, version, devices ---------------------------------------------------------- */

ENTRY(cuInit, (unsigned int Flags), (Flags))
{
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* A driver that sees no GPU fails here with NO_DEVICE; mock_set_device_count(0) instead models
     * one that initialises and then counts none, and mock_fail_next("cuInit", 100) the first. */
    initialized = 1;
    return CUDA_SUCCESS;
}

ENTRY(cuDriverGetVersion, (int *driverVersion), (driverVersion))
{
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = driver_version;
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceGetCount, (int *count), (count))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = device_count;
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceGet, (CUdevice * device, int ordinal), (device, ordinal))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= device_count)
        return CUDA_ERROR_INVALID_DEVICE;
    *device = DEVICE_HANDLE_BASE + ordinal;
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceGetName, (char *name, int len, CUdevice dev), (name, len, dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "%s", devices[i].name);
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceGetAttribute, (int *pi, int attrib, CUdevice dev), (pi, attrib, dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    if (attrib < 0 || attrib >= ATTR_TABLE || !devices[i].known[attrib])
        return CUDA_ERROR_INVALID_VALUE;
    *pi = devices[i].attr[attrib];
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev), (bytes, dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = devices[i].total_mem;
    return CUDA_SUCCESS;
}

ENTRY(cuDeviceGetPCIBusId, (char *pciBusId, int len, CUdevice dev), (pciBusId, len, dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!pciBusId || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    /* [domain]:[bus]:[device].[function] in hexadecimal, upper case as the driver prints it. */
    snprintf(pciBusId, (size_t)len, "%04X:%02X:%02X.0", devices[i].attr[ATTR_PCI_DOMAIN_ID], devices[i].attr[ATTR_PCI_BUS_ID],
             devices[i].attr[ATTR_PCI_DEVICE_ID]);
    return CUDA_SUCCESS;
}

/* --- contexts ---------------------------------------------------------------------------------- */

ENTRY(cuDevicePrimaryCtxRetain, (CUcontext * pctx, CUdevice dev), (pctx, dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    contexts[i].ordinal = i;
    contexts[i].alive = 1;
    contexts[i].refs++;
    *pctx = &contexts[i];
    return CUDA_SUCCESS;
}

ENTRY(cuDevicePrimaryCtxRelease_v2, (CUdevice dev), (dev))
{
    CUresult r = need_init();
    if (r)
        return r;
    int i = ordinal_of(dev);
    if (i < 0)
        return CUDA_ERROR_INVALID_DEVICE;
    if (contexts[i].refs == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (--contexts[i].refs == 0) {
        /* The primary context is destroyed with its last reference, and its memory with it. */
        contexts[i].alive = 0;
        free_allocs_of(i);
    }
    return CUDA_SUCCESS;
}

ENTRY(cuCtxSetCurrent, (CUcontext ctx), (ctx))
{
    CUresult r = need_init();
    if (r)
        return r;
    if (ctx == NULL) {
        current = NULL;
        return CUDA_SUCCESS;
    }
    if (ctx < &contexts[0] || ctx >= &contexts[MAX_DEVICES] || !ctx->alive)
        return CUDA_ERROR_INVALID_CONTEXT;
    current = ctx;
    return CUDA_SUCCESS;
}

/* --- device memory ----------------------------------------------------------------------------- */

ENTRY(cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytesize), (dptr, bytesize))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    size_t size = (bytesize + PAGE - 1) & ~(PAGE - 1);
    struct mock_device *d = &devices[current->ordinal];
    if (size > d->total_mem - d->used)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct mock_alloc *a = calloc(1, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    a->memfd = memfd_create("libnvm-mock-cuda", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (a->memfd < 0)
        goto fail_free;
    /* udmabuf refuses a memfd that could shrink under the dma-buf (gpu.md section 7). */
    if (ftruncate(a->memfd, (off_t)size) != 0 || fcntl(a->memfd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        goto fail_close;
    a->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, a->memfd, 0);
    if (a->host == MAP_FAILED)
        goto fail_close;
    a->size = size;
    a->ordinal = current->ordinal;
    a->dptr = next_dptr + alloc_offset;
    /* Aligned like the driver's large allocations, with a hole after each so none look adjacent. */
    next_dptr += ((size + DPTR_ALIGN - 1) & ~(DPTR_ALIGN - 1)) + DPTR_ALIGN;
    d->used += size;
    a->next = allocs;
    allocs = a;
    *dptr = a->dptr;
    return CUDA_SUCCESS;

fail_close:
    close(a->memfd);
fail_free:
    free(a);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

ENTRY(cuMemFree_v2, (CUdeviceptr dptr), (dptr))
{
    CUresult r = need_context();
    if (r)
        return r;
    for (struct mock_alloc **pp = &allocs; *pp; pp = &(*pp)->next) {
        if ((*pp)->dptr == dptr) {
            struct mock_alloc *a = *pp;
            *pp = a->next;
            free_alloc(a);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE; /* not the start of a live allocation: a double free lands here */
}

ENTRY(cuMemcpyHtoD_v2, (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount), (dstDevice, srcHost, ByteCount))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (ByteCount == 0)
        return CUDA_SUCCESS;
    void *dst = resolve(dstDevice, ByteCount);
    if (!srcHost || !dst)
        return CUDA_ERROR_INVALID_VALUE;
    memcpy(dst, srcHost, ByteCount);
    return CUDA_SUCCESS;
}

ENTRY(cuMemcpyDtoH_v2, (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount), (dstHost, srcDevice, ByteCount))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (ByteCount == 0)
        return CUDA_SUCCESS;
    void *src = resolve(srcDevice, ByteCount);
    if (!dstHost || !src)
        return CUDA_ERROR_INVALID_VALUE;
    memcpy(dstHost, src, ByteCount);
    return CUDA_SUCCESS;
}

ENTRY(cuMemcpyDtoD_v2, (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount), (dstDevice, srcDevice, ByteCount))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (ByteCount == 0)
        return CUDA_SUCCESS;
    void *dst = resolve(dstDevice, ByteCount), *src = resolve(srcDevice, ByteCount);
    if (!dst || !src)
        return CUDA_ERROR_INVALID_VALUE;
    memmove(dst, src, ByteCount);
    return CUDA_SUCCESS;
}

/* --- host memory mapped for the device --------------------------------------------------------- */

ENTRY(cuMemHostRegister_v2, (void *p, size_t bytesize, unsigned int Flags), (p, bytesize, Flags))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (!p || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (Flags & ~(HOSTREGISTER_PORTABLE | HOSTREGISTER_DEVICEMAP | HOSTREGISTER_IOMEMORY | HOSTREGISTER_READ_ONLY))
        return CUDA_ERROR_INVALID_VALUE;
    const struct mock_device *d = &devices[current->ordinal];
    /* The real driver may refuse BAR pages unprivileged; tests choose (mock_set_iomemory). */
    if ((Flags & HOSTREGISTER_IOMEMORY) && !iomemory_allowed)
        return CUDA_ERROR_NOT_PERMITTED;
    if (!d->attr[ATTR_HOST_REGISTER_SUPPORTED])
        return CUDA_ERROR_NOT_SUPPORTED;
    if ((Flags & HOSTREGISTER_READ_ONLY) && !d->attr[ATTR_READ_ONLY_HOST_REGISTER_SUPPORTED])
        return CUDA_ERROR_NOT_SUPPORTED;
    uintptr_t start = (uintptr_t)p;
    if (start + bytesize < start)
        return CUDA_ERROR_INVALID_VALUE;
    for (struct mock_reg *g = regs; g; g = g->next)
        if (start < g->host + g->size && g->host < start + bytesize)
            return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    /* The driver pins the pages, so each must be mapped: mincore fails with ENOMEM where one is not. */
    uintptr_t first = start & ~(uintptr_t)(PAGE - 1);
    size_t span = ((start + bytesize + PAGE - 1) & ~(uintptr_t)(PAGE - 1)) - first;
    unsigned char *vec = malloc(span / PAGE);
    if (!vec)
        return CUDA_ERROR_OUT_OF_MEMORY;
    int mapped = mincore((void *)first, span, vec) == 0;
    free(vec);
    if (!mapped)
        return CUDA_ERROR_INVALID_VALUE;
    struct mock_reg *g = calloc(1, sizeof *g);
    if (!g)
        return CUDA_ERROR_OUT_OF_MEMORY;
    g->host = start;
    g->size = bytesize;
    g->flags = Flags;
    g->dptr = (Flags & HOSTREGISTER_DEVICEMAP) ? (CUdeviceptr)start + HOSTMAP_BIAS : 0;
    g->next = regs;
    regs = g;
    return CUDA_SUCCESS;
}

ENTRY(cuMemHostUnregister, (void *p), (p))
{
    CUresult r = need_context();
    if (r)
        return r;
    /* Only the base address given to cuMemHostRegister names a registration. */
    for (struct mock_reg **pp = &regs; *pp; pp = &(*pp)->next) {
        if ((*pp)->host == (uintptr_t)p) {
            struct mock_reg *g = *pp;
            *pp = g->next;
            free(g);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

ENTRY(cuMemHostGetDevicePointer_v2, (CUdeviceptr * pdptr, void *p, unsigned int Flags), (pdptr, p, Flags))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (!pdptr || Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* DEVICEMAP on a device that cannot map host memory fails here, not at registration (cuda.h). */
    if (!devices[current->ordinal].attr[ATTR_CAN_MAP_HOST_MEMORY])
        return CUDA_ERROR_NOT_SUPPORTED;
    uintptr_t a = (uintptr_t)p;
    for (struct mock_reg *g = regs; g; g = g->next) {
        if (g->dptr && a >= g->host && a < g->host + g->size) {
            *pdptr = g->dptr + (a - g->host);
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

/* --- dma-buf export ---------------------------------------------------------------------------- */

#ifndef MOCK_WITHOUT_DMA_BUF /* the build of a driver too old to have it (CUDA < 11.7) */
ENTRY(cuMemGetHandleForAddressRange,
      (void *handle, CUdeviceptr dptr, size_t size, int handleType, unsigned long long flags),
      (handle, dptr, size, handleType, flags))
{
    CUresult r = need_context();
    if (r)
        return r;
    last_export[0] = (unsigned)handleType;
    last_export[1] = flags;
    last_export[2] = dptr;
    last_export[3] = size;
    if (!handle || handleType != RANGE_HANDLE_TYPE_DMA_BUF_FD || (flags & ~RANGE_FLAG_DMA_BUF_MAPPING_TYPE_PCIE))
        return CUDA_ERROR_INVALID_VALUE;
    /* dptr and size must be host-page aligned and inside one allocation (cuda.h). */
    if (size == 0 || (dptr & (PAGE - 1)) || (size & (PAGE - 1)))
        return CUDA_ERROR_INVALID_VALUE;
    struct mock_alloc *a = alloc_containing(dptr, size);
    if (!a)
        return CUDA_ERROR_INVALID_VALUE;
    if (!devices[a->ordinal].attr[ATTR_DMA_BUF_SUPPORTED])
        return CUDA_ERROR_NOT_SUPPORTED;
    if (flags & RANGE_FLAG_DMA_BUF_MAPPING_TYPE_PCIE)
        return CUDA_ERROR_NOT_SUPPORTED; /* no BAR1 here */
    /* A real dma-buf of the memfd pages when the kernel has udmabuf; without it, no export at all. */
    int dev = open(udmabuf_path, O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return errno == ENOENT ? CUDA_ERROR_NOT_SUPPORTED : errno == EACCES ? CUDA_ERROR_NOT_PERMITTED : CUDA_ERROR_OPERATING_SYSTEM;
    struct udmabuf_create create = {
        .memfd = (uint32_t)a->memfd,
        .flags = UDMABUF_FLAGS_CLOEXEC,
        .offset = dptr - a->dptr,
        .size = size,
    };
    int fd = ioctl(dev, UDMABUF_CREATE, &create);
    close(dev);
    if (fd < 0)
        return CUDA_ERROR_OPERATING_SYSTEM;
    *(int *)handle = fd;
    return CUDA_SUCCESS;
}
#endif

/* --- modules, kernels, streams ------------------------------------------------------------------ */

struct mock_module {
    int loaded;
    int ordinal;
};

/* The kernels of c/cuda/nvm_queue.cu, by the names the fatbin exports. */
enum { KERNEL_SHARED = 1, KERNEL_COOP = 2 };
struct mock_function {
    const char *name;
    int kind;
    struct mock_module *module;
};

#define MAX_MODULES 16
static struct mock_module modules[MAX_MODULES];
static struct mock_function functions[MAX_MODULES][2];
static unsigned long long launches;
static unsigned long long last_launch[5]; /* grid, block, shared bytes, parameter, kind */

struct mock_launch {
    int kind;
    uint32_t grid, block;
    const struct nvmq_job *job; /* host view */
    CUresult result;            /* what the stream reports once the threads returned */
    uint32_t nthreads;
    uint32_t done;
    pthread_t threads[64];
};

struct mock_stream {
    int magic;
    struct mock_launch *pending;
};
#define STREAM_MAGIC 0x57ea

/* Device address -> host address (called by the queue code under NVMQ_ADDR). */
static void *mock_translate(uint64_t a)
{
    pthread_mutex_lock(&lock);
    void *p = resolve(a, 1);
    pthread_mutex_unlock(&lock);
    return p;
}

/* Whether [a, a+size) is memory a GPU could reach: device memory or a registered host range. */
static int reachable(uint64_t a, uint64_t size) { return a != 0 && resolve(a, size) != NULL; }

/*
 * Check every address the job names before anything runs (under the lock). 0, or
 * CUDA_ERROR_ILLEGAL_ADDRESS for an address no GPU could reach (a host pointer, say).
 */
static CUresult check_job(uint64_t job_dptr, const struct nvmq_job **out)
{
    const struct nvmq_job *j = resolve(job_dptr, sizeof *j);
    if (!j || j->abi != NVMQ_JOB_ABI)
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    uint64_t og, ol, ob;
    uint64_t work = nvmq_work_layout(j, &og, &ol, &ob);
    uint64_t npages = (j->data_bytes + NVMQ_PAGE - 1) / NVMQ_PAGE;
    if (!reachable(j->queues, 8ull * j->nqueues) || !reachable(j->work, work) || !reachable(j->data, j->data_bytes) ||
        !reachable(j->pages, npages * 8) || (j->kind == NVMQ_JOB_LIST && !reachable(j->reqs, (uint64_t)j->nreqs * sizeof(struct nvmq_req))))
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    const uint64_t *qs = resolve(j->queues, 8ull * j->nqueues);
    for (uint32_t i = 0; i < j->nqueues; i++) {
        const struct nvmq *q = resolve(qs[i], sizeof *q);
        if (!q || q->abi != NVMQ_ABI || !reachable(qs[i], q->bytes))
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        if (!reachable(q->sq, (uint64_t)q->entries * 64) || !reachable(q->cq, (uint64_t)q->entries * 16) || !reachable(q->sq_db, 4) ||
            !reachable(q->cq_db, 4) || (q->stop && !reachable(q->stop, 4)) || (q->lists && !reachable(q->lists, (uint64_t)q->entries * NVMQ_PAGE)) ||
            (q->lists_bus && !reachable(q->lists_bus, (uint64_t)q->entries * 8)))
            return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    *out = j;
    return CUDA_SUCCESS;
}

struct mock_worker {
    struct mock_launch *l;
    uint32_t first;
};

static void *run_kernel(void *p)
{
    struct mock_worker w = *(struct mock_worker *)p;
    free(p);
    struct mock_launch *l = w.l;
    if (l->kind == KERNEL_SHARED) {
        /* Virtual GPU threads first, first + n, ...: each one runs as a GPU thread would. */
        uint64_t total = (uint64_t)l->grid * l->block;
        for (uint64_t t = w.first; t < total; t += l->nthreads)
            nvmq_job_thread(l->job, (uint32_t)t);
    } else {
        for (uint32_t b = w.first; b < l->grid; b += l->nthreads)
            nvmq_job_block(l->job, b);
    }
    __atomic_fetch_add(&l->done, 1u, __ATOMIC_RELEASE);
    return NULL;
}

static int image_kind(const unsigned char *img)
{
    if (img[0] == 0x50 && img[1] == 0xed && img[2] == 0x55 && img[3] == 0xba)
        return 1; /* fatbin (magic 0xBA55ED50) */
    if (img[0] == 0x7f && img[1] == 'E' && img[2] == 'L' && img[3] == 'F')
        return 2; /* cubin */
    if ((img[0] == '/' && img[1] == '/') || img[0] == '.')
        return 3; /* PTX text */
    return 0;
}

ENTRY(cuModuleLoadData, (void **module, const void *image), (module, image))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (!module || !image)
        return CUDA_ERROR_INVALID_VALUE;
    if (!image_kind(image))
        return CUDA_ERROR_INVALID_IMAGE;
    for (int i = 0; i < MAX_MODULES; i++) {
        if (!modules[i].loaded) {
            modules[i].loaded = 1;
            modules[i].ordinal = current->ordinal;
            functions[i][0] = (struct mock_function){.name = "nvmq_shared_kernel", .kind = KERNEL_SHARED, .module = &modules[i]};
            functions[i][1] = (struct mock_function){.name = "nvmq_coop_kernel", .kind = KERNEL_COOP, .module = &modules[i]};
            *module = &modules[i];
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

ENTRY(cuModuleUnload, (void *module), (module))
{
    CUresult r = need_context();
    if (r)
        return r;
    struct mock_module *m = module;
    if (m < &modules[0] || m >= &modules[MAX_MODULES] || !m->loaded)
        return CUDA_ERROR_INVALID_HANDLE;
    m->loaded = 0;
    return CUDA_SUCCESS;
}

ENTRY(cuModuleGetFunction, (void **hfunc, void *hmod, const char *name), (hfunc, hmod, name))
{
    CUresult r = need_context();
    if (r)
        return r;
    struct mock_module *m = hmod;
    if (!hfunc || !name)
        return CUDA_ERROR_INVALID_VALUE;
    if (m < &modules[0] || m >= &modules[MAX_MODULES] || !m->loaded)
        return CUDA_ERROR_INVALID_HANDLE;
    for (int k = 0; k < 2; k++) {
        struct mock_function *f = &functions[m - modules][k];
        if (strcmp(f->name, name) == 0) {
            *hfunc = f;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;
}

ENTRY(cuStreamCreate, (void **phStream, unsigned int Flags), (phStream, Flags))
{
    CUresult r = need_context();
    if (r)
        return r;
    if (!phStream || (Flags & ~1u))
        return CUDA_ERROR_INVALID_VALUE;
    struct mock_stream *st = calloc(1, sizeof *st);
    if (!st)
        return CUDA_ERROR_OUT_OF_MEMORY;
    st->magic = STREAM_MAGIC;
    *phStream = st;
    return CUDA_SUCCESS;
}

/* The stream's launch finished: join its threads and forget it. Returns its result. */
static CUresult reap_launch(struct mock_stream *st)
{
    struct mock_launch *l = st->pending;
    for (uint32_t i = 0; i < l->nthreads; i++)
        pthread_join(l->threads[i], NULL);
    CUresult res = l->result;
    free(l);
    st->pending = NULL;
    return res;
}

ENTRY(cuStreamQuery, (void *hStream), (hStream))
{
    CUresult r = need_context();
    if (r)
        return r;
    struct mock_stream *st = hStream;
    if (!st || st->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    if (!st->pending)
        return CUDA_SUCCESS;
    if (__atomic_load_n(&st->pending->done, __ATOMIC_ACQUIRE) < st->pending->nthreads)
        return CUDA_ERROR_NOT_READY;
    return reap_launch(st);
}

ENTRY(cuStreamDestroy_v2, (void *hStream), (hStream))
{
    CUresult r = need_context();
    if (r)
        return r;
    struct mock_stream *st = hStream;
    if (!st || st->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE;
    /* The driver lets queued work finish; the mock waits for its threads (they are bounded). */
    if (st->pending) {
        pthread_mutex_unlock(&lock);
        while (__atomic_load_n(&st->pending->done, __ATOMIC_ACQUIRE) < st->pending->nthreads)
            sched_yield();
        pthread_mutex_lock(&lock);
        reap_launch(st);
    }
    st->magic = 0;
    free(st);
    return CUDA_SUCCESS;
}

ENTRY(cuLaunchKernel,
      (void *f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
       void *hStream, void **kernelParams, void **extra),
      (f, gx, gy, gz, bx, by, bz, shared, hStream, kernelParams, extra))
{
    CUresult r = need_context();
    if (r)
        return r;
    struct mock_function *fn = f;
    if (!fn || !fn->module || !fn->module->loaded || (fn != &functions[fn->module - modules][0] && fn != &functions[fn->module - modules][1]))
        return CUDA_ERROR_INVALID_HANDLE;
    if (fn->module->ordinal != current->ordinal)
        return CUDA_ERROR_INVALID_HANDLE; /* a function of another context's module */
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || (uint64_t)bx * by * bz > 1024 || gy != 1 || gz != 1 || by != 1 ||
        bz != 1 || shared > 48 * 1024)
        return CUDA_ERROR_INVALID_VALUE;
    /* Our kernels take one parameter, passed through kernelParams (not `extra`). */
    if (!kernelParams || extra || !kernelParams[0])
        return CUDA_ERROR_INVALID_VALUE;
    struct mock_stream *st = hStream;
    if (!st || st->magic != STREAM_MAGIC)
        return CUDA_ERROR_INVALID_HANDLE; /* libnvm launches on a stream of its own, never the default */
    if (st->pending)
        return CUDA_ERROR_NOT_READY; /* one launch at a time per stream in this mock */
    CUdeviceptr param = *(const CUdeviceptr *)kernelParams[0];
    struct mock_launch *l = calloc(1, sizeof *l);
    if (!l)
        return CUDA_ERROR_OUT_OF_MEMORY;
    l->kind = fn->kind;
    l->grid = gx;
    l->block = bx;
    launches++;
    last_launch[0] = gx;
    last_launch[1] = bx;
    last_launch[2] = shared;
    last_launch[3] = param;
    last_launch[4] = (unsigned long long)fn->kind;
    l->result = check_job(param, &l->job);
    st->pending = l;
    if (l->result != CUDA_SUCCESS)
        return CUDA_SUCCESS; /* like a GPU fault: the launch is accepted, the stream reports it */
    uint64_t work = fn->kind == KERNEL_SHARED ? (uint64_t)gx * bx : gx;
    l->nthreads = work < 64 ? (uint32_t)work : 64;
    for (uint32_t i = 0; i < l->nthreads; i++) {
        struct mock_worker *w = malloc(sizeof *w);
        if (!w || pthread_create(&l->threads[i], NULL, run_kernel, (*w = (struct mock_worker){.l = l, .first = i}, w)) != 0) {
            free(w);
            /* Those started finish their share; the launch reports the failure. */
            l->nthreads = i;
            l->result = CUDA_ERROR_OUT_OF_MEMORY;
            break;
        }
    }
    return CUDA_SUCCESS;
}

/* --- test-only controls ------------------------------------------------------------------------ */

/* Back to one fresh device: no cuInit yet, no context, no memory, no registration, no pending
 * failure. Call counts stay (mock_calls covers the whole run). The calling thread's current
 * context is cleared; other threads' are left pointing at dead contexts (INVALID_CONTEXT). */
API void mock_reset(void)
{
    pthread_mutex_lock(&lock);
    free_allocs_of(-1);
    while (regs) {
        struct mock_reg *g = regs;
        regs = g->next;
        free(g);
    }
    for (int i = 0; i < MAX_DEVICES; i++) {
        device_defaults(i);
        contexts[i] = (struct mock_ctx){.ordinal = i};
    }
    for (int i = 0; i < MAX_NAMES; i++)
        entries[i].fail_result = CUDA_SUCCESS;
    initialized = 0;
    device_count = 1;
    driver_version = 13000;
    next_dptr = DPTR_BASE;
    alloc_offset = 0;
    snprintf(udmabuf_path, sizeof udmabuf_path, "%s", "/dev/udmabuf");
    memset(last_export, 0, sizeof last_export);
    memset(last_launch, 0, sizeof last_launch);
    iomemory_allowed = 0;
    for (int i = 0; i < MAX_MODULES; i++)
        modules[i].loaded = 0;
    current = NULL;
    pthread_mutex_unlock(&lock);
}

__attribute__((constructor)) static void mock_load(void) { mock_reset(); }

API int32_t mock_set_device_count(int32_t n)
{
    if (n < 0 || n > MAX_DEVICES)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    device_count = n;
    pthread_mutex_unlock(&lock);
    return 0;
}

API int32_t mock_set_attribute(int32_t ordinal, int32_t attrib, int32_t value)
{
    if (ordinal < 0 || ordinal >= MAX_DEVICES || attrib < 0 || attrib >= ATTR_TABLE)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    devices[ordinal].attr[attrib] = value;
    devices[ordinal].known[attrib] = 1;
    pthread_mutex_unlock(&lock);
    return 0;
}

API int32_t mock_set_total_mem(int32_t ordinal, uint32_t mib)
{
    if (ordinal < 0 || ordinal >= MAX_DEVICES)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    devices[ordinal].total_mem = (unsigned long long)mib << 20;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Start later allocations `bytes` into their 2 MiB slot (a multiple of 256, as the driver aligns),
 * as the driver does when it packs small allocations: such pointers are not page aligned, and
 * above 2^53 they do not survive a trip through a double. */
API int32_t mock_set_alloc_offset(uint32_t bytes)
{
    if (bytes % 256 || bytes >= DPTR_ALIGN)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    alloc_offset = bytes;
    pthread_mutex_unlock(&lock);
    return 0;
}

API void mock_set_driver_version(int32_t v)
{
    pthread_mutex_lock(&lock);
    driver_version = v;
    pthread_mutex_unlock(&lock);
}

API void mock_set_udmabuf_path(const char *path)
{
    pthread_mutex_lock(&lock);
    snprintf(udmabuf_path, sizeof udmabuf_path, "%s", path);
    pthread_mutex_unlock(&lock);
}

/* The next call of `entry` returns `result` without doing anything (it is still counted). */
API int32_t mock_fail_next(const char *entry, int32_t result)
{
    pthread_mutex_lock(&lock);
    int i = entry_index(entry);
    if (i >= 0)
        entries[i].fail_result = result;
    pthread_mutex_unlock(&lock);
    return i >= 0 ? 0 : -ENOSPC;
}

/* Calls of `entry` since the library was loaded (mock_reset does not clear them). */
API uint32_t mock_calls(const char *entry)
{
    pthread_mutex_lock(&lock);
    int i = entry_index(entry);
    uint32_t n = i >= 0 ? entries[i].calls : 0;
    pthread_mutex_unlock(&lock);
    return n;
}

/* The memfd behind device memory at `dptr` (owned by the mock: do not close it), or -1. */
API int32_t mock_memfd(CUdeviceptr dptr)
{
    pthread_mutex_lock(&lock);
    struct mock_alloc *a = alloc_containing(dptr, 1);
    int fd = a ? a->memfd : -1;
    pthread_mutex_unlock(&lock);
    return fd;
}

/* Ordinal of the device whose context allocated `dptr`, or -1. */
API int32_t mock_allocation_device(CUdeviceptr dptr)
{
    pthread_mutex_lock(&lock);
    struct mock_alloc *a = alloc_containing(dptr, 1);
    int o = a ? a->ordinal : -1;
    pthread_mutex_unlock(&lock);
    return o;
}

API uint32_t mock_live_allocations(void)
{
    pthread_mutex_lock(&lock);
    uint32_t n = 0;
    for (struct mock_alloc *a = allocs; a; a = a->next)
        n++;
    pthread_mutex_unlock(&lock);
    return n;
}

API uint32_t mock_live_registrations(void)
{
    pthread_mutex_lock(&lock);
    uint32_t n = 0;
    for (struct mock_reg *g = regs; g; g = g->next)
        n++;
    pthread_mutex_unlock(&lock);
    return n;
}

/* The registration that starts at `p`: out = {bytesize, Flags, device pointer}; -1 when none. */
API int32_t mock_registration(void *p, uint64_t *out)
{
    pthread_mutex_lock(&lock);
    int found = -1;
    for (struct mock_reg *g = regs; g; g = g->next) {
        if (g->host == (uintptr_t)p) {
            out[0] = g->size;
            out[1] = g->flags;
            out[2] = g->dptr;
            found = 0;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return found;
}

/* Ordinal of the calling thread's current context, -1 when none is current, -2 when it died. */
API int32_t mock_current_device(void)
{
    if (!current)
        return -1;
    return current->alive ? current->ordinal : -2;
}

/* References held on a device's primary context. */
API int32_t mock_context_refs(int32_t ordinal)
{
    if (ordinal < 0 || ordinal >= MAX_DEVICES)
        return -EINVAL;
    pthread_mutex_lock(&lock);
    int n = contexts[ordinal].refs;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Arguments of the last cuMemGetHandleForAddressRange: {handleType, flags, dptr, size}. */
API void mock_last_export(uint64_t *out)
{
    pthread_mutex_lock(&lock);
    memcpy(out, last_export, sizeof last_export);
    pthread_mutex_unlock(&lock);
}

/* IOMEMORY registrations: refused with NOT_PERMITTED (0, the default) or accepted (1). */
API void mock_set_iomemory(int32_t allow)
{
    pthread_mutex_lock(&lock);
    iomemory_allowed = allow != 0;
    pthread_mutex_unlock(&lock);
}

/* Kernel launches since the mock was loaded, and the last one: {grid, block, shared bytes, parameter, kind}. */
API uint32_t mock_last_launch(uint64_t *out)
{
    pthread_mutex_lock(&lock);
    memcpy(out, last_launch, sizeof last_launch);
    uint32_t n = (uint32_t)launches;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Modules loaded now. */
API uint32_t mock_live_modules(void)
{
    pthread_mutex_lock(&lock);
    uint32_t n = 0;
    for (int i = 0; i < MAX_MODULES; i++)
        n += modules[i].loaded;
    pthread_mutex_unlock(&lock);
    return n;
}
