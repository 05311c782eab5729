/*
 * A fake SISCI library (libsisci.so), TEST-ONLY, for the SmartIO shim (c/src/sisci.c) where no
 * Dolphin adapter, driver or library exists. It implements, under the same C names, the SISCI calls
 * the shim makes (test/smartio/dis/include declares them), and the rules of the real library the
 * shim must follow (see test/smartio/README.md for the list). Never shipped.
 *
 * The fabric: FAKE_SISCI_DEVICES="80000=0000:00:04.0,80100=none,80200=none+unavailable" (fdids in
 * hex, as smartio_tool prints them) names the devices that are lent; a BDF means the device is
 * backed by VFIO (the controller bound to vfio-pci: the fake owns the container, BAR0 is the VFIO
 * BAR mmap, "map for device" is VFIO_IOMMU_MAP_DMA, so the NVMe controller really DMAs into the
 * segments), "none" a device of plain memory (a zeroed 16 KiB BAR, made-up bus addresses) for the
 * host's contract tests. FAKE_SISCI_FABRIC is a directory shared by the processes of one "cluster"
 * (borrow and segment-id locks, shared device segments, the interrupt namespace);
 * FAKE_SISCI_NODE this process's node id (default 4): processes with different ids are different
 * hosts. FAKE_SISCI_INJECT="SCIBorrowDevice=SCI_ERR_TIMEOUT*1,..." injects failures into a
 * process the test cannot reach otherwise; fake_sisci_* below are the controls for the test's own.
 *
 * Cross-process state lives in the kernel, so a killed process leaves nothing held: borrows and
 * segment ids are flock()s (shared for a borrow, exclusive for an exclusive borrow or an id), data
 * interrupts are abstract UNIX datagram sockets (gone with the process).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "sisci_api.h"
#include "nvm_native.h"

#define FAKE_API __attribute__((visibility("default")))
#define PAGE 4096u
#define MAX_DEVS 16
#define NONE_BAR_SIZE (16u * 1024)
/* The fake's limit on one data interrupt's payload (the real one is the adapter's). */
#define MAX_INTR_DATA 4096u
/* Where made-up and IOMMU bus addresses start: above 4 GiB, so the high dword is exercised. */
#define IOVA_BASE 0x100000000ull
#define FIRST_AUTO_SEGMENT_ID 0x10000u
#define FIRST_AUTO_INTNO 1024u
#define VFIO_CONFIG_REGION 7u
#define PCI_COMMAND 4u

/* --- state ------------------------------------------------------------------------------------ */

struct iova_range {
    uint64_t start, size;
};

struct private_seg {
    unsigned id;
    int memfd;
    size_t size;
    struct private_seg *next;
};

struct fabric_dev {
    uint32_t fdid;
    char bdf[32]; /* "" for a plain-memory device */
    int available;
    uint32_t pci_class;
    /* the backing, in this process, while borrowed here */
    unsigned refs;
    int container, group, device;
    uint64_t bar_off, cfg_off;
    uint32_t bar_size;
    uint32_t command_before;
    void *bar_mem;
    struct iova_range *maps;
    size_t nmaps;
    struct private_seg *priv;
    /* The lender (this process holds the VFIO backing): other processes borrow through it. */
    int lender_sock, lender_wake;
    pthread_t lender_thread;
    struct lent_map *lent;
    /* A borrower whose backing another process lends: the connection to that lender. */
    int lender_conn;
};

/* Memory of another borrower mapped in this process's IOMMU container (the lender's side). */
struct lent_map {
    uint64_t iova, len;
    void *pin;
    int conn; /* the borrower's connection; -1 once it went away */
    struct lent_map *next;
};

struct fake_sci_desc {
    int dead;
    unsigned users; /* borrows, segments, interrupts opened on it */
};

struct fake_sci_smartio_device {
    int dead;
    struct fake_sci_desc *sd;
    struct fabric_dev *fd;
    int lockfd;
    unsigned connected; /* device segments connected through it */
    unsigned dev_maps;  /* segments mapped for it */
};

struct fake_sci_remote_segment {
    int dead;
    struct fake_sci_smartio_device *dev;
    unsigned memtype, id;
    int memfd; /* private and shared memory; -1 for the BAR */
    size_t size;
    unsigned cpu_maps;
    int dev_mapped;
    void *pin;
    uint64_t iova, iova_len;
};

struct fake_sci_local_segment {
    int dead;
    struct fake_sci_desc *sd;
    unsigned id;
    int lockfd;
    size_t size;
    int memfd;    /* -1 when created SCI_FLAG_EMPTY */
    void *pin;    /* the fake's own mapping of the memory, what the IOMMU maps */
    int attached; /* empty segment with GPU memory attached */
    int prepared, available;
    unsigned cpu_maps;
    struct fake_sci_smartio_device *mapped_for; /* one device mapping at a time */
    uint64_t iova, iova_len;
};

struct fake_sci_map {
    int dead;
    struct fake_sci_local_segment *local;
    struct fake_sci_remote_segment *remote;
    void *addr;
    size_t len;
    int unmap; /* munmap on SCIUnmapSegment */
};

struct fake_sci_local_data_interrupt {
    int dead;
    struct fake_sci_desc *sd;
    int sock;
    unsigned number;
};

struct fake_sci_remote_data_interrupt {
    int dead;
    struct fake_sci_desc *sd;
    int sock;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int configured;
static char fabric[1024];
static unsigned long fabric_ino;
static unsigned local_node = 4;
static struct fabric_dev devs[MAX_DEVS];
static int ndevs;
static unsigned init_refs;

/* What is alive in this process (fake_sisci_state). */
enum {
    ST_INIT,
    ST_DESCRIPTORS,
    ST_BORROWS,
    ST_CONNECTED,
    ST_LOCAL_SEGMENTS,
    ST_CPU_MAPS,
    ST_DEVICE_MAPS,
    ST_AVAILABLE,
    ST_INTERRUPTS,
    ST_REMOTE_INTERRUPTS,
    ST_BACKINGS,
    ST_IOMMU_MAPS,
    ST_COUNT
};
static unsigned live[ST_COUNT];

struct inject {
    char call[48];
    sci_error_t err;
    uint32_t count; /* UINT32_MAX: every call */
};
static struct inject injects[32];

struct counter {
    char call[48];
    uint32_t n;
};
static struct counter counters[64];

static const struct {
    const char *name;
    sci_error_t value;
    const char *text;
} errors[] = {
    { "SCI_ERR_OK", SCI_ERR_OK, "OK" },
    { "SCI_ERR_BUSY", SCI_ERR_BUSY, "resource busy (still in use)" },
    { "SCI_ERR_FLAG_NOT_IMPLEMENTED", SCI_ERR_FLAG_NOT_IMPLEMENTED, "flag not implemented" },
    { "SCI_ERR_ILLEGAL_FLAG", SCI_ERR_ILLEGAL_FLAG, "illegal flag" },
    { "SCI_ERR_NOSPC", SCI_ERR_NOSPC, "out of resources" },
    { "SCI_ERR_API_NOSPC", SCI_ERR_API_NOSPC, "out of API resources" },
    { "SCI_ERR_NOT_IMPLEMENTED", SCI_ERR_NOT_IMPLEMENTED, "not implemented" },
    { "SCI_ERR_NO_SUCH_ADAPTERNO", SCI_ERR_NO_SUCH_ADAPTERNO, "no such adapter" },
    { "SCI_ERR_TIMEOUT", SCI_ERR_TIMEOUT, "operation timed out" },
    { "SCI_ERR_OUT_OF_RANGE", SCI_ERR_OUT_OF_RANGE, "out of range" },
    { "SCI_ERR_NO_SUCH_SEGMENT", SCI_ERR_NO_SUCH_SEGMENT, "no such segment" },
    { "SCI_ERR_CONNECTION_REFUSED", SCI_ERR_CONNECTION_REFUSED, "connection refused" },
    { "SCI_ERR_SEGMENT_NOT_CONNECTED", SCI_ERR_SEGMENT_NOT_CONNECTED, "segment not connected" },
    { "SCI_ERR_SIZE_ALIGNMENT", SCI_ERR_SIZE_ALIGNMENT, "size not aligned" },
    { "SCI_ERR_OFFSET_ALIGNMENT", SCI_ERR_OFFSET_ALIGNMENT, "offset not aligned" },
    { "SCI_ERR_ILLEGAL_PARAMETER", SCI_ERR_ILLEGAL_PARAMETER, "illegal parameter" },
    { "SCI_ERR_SEGMENT_NOT_PREPARED", SCI_ERR_SEGMENT_NOT_PREPARED, "segment not prepared" },
    { "SCI_ERR_ILLEGAL_OPERATION", SCI_ERR_ILLEGAL_OPERATION, "illegal operation" },
    { "SCI_ERR_SEGMENTID_USED", SCI_ERR_SEGMENTID_USED, "segment id already used" },
    { "SCI_ERR_SYSTEM", SCI_ERR_SYSTEM, "system error" },
    { "SCI_ERR_NOT_CONNECTED", SCI_ERR_NOT_CONNECTED, "not connected" },
    { "SCI_ERR_NOT_AVAILABLE", SCI_ERR_NOT_AVAILABLE, "not available" },
    { "SCI_ERR_OVERFLOW", SCI_ERR_OVERFLOW, "overflow: the message does not fit" },
    { "SCI_ERR_NOT_INITIALIZED", SCI_ERR_NOT_INITIALIZED, "SCIInitialize was not called" },
    { "SCI_ERR_NOT_SUPPORTED", SCI_ERR_NOT_SUPPORTED, "not supported" },
    { "SCI_ERR_NO_SUCH_NODEID", SCI_ERR_NO_SUCH_NODEID, "no such node" },
    { "SCI_ERR_NODE_NOT_RESPONDING", SCI_ERR_NODE_NOT_RESPONDING, "node not responding" },
    { "SCI_ERR_NO_REMOTE_LINK_ACCESS", SCI_ERR_NO_REMOTE_LINK_ACCESS, "no remote link access" },
    { "SCI_ERR_NO_LINK_ACCESS", SCI_ERR_NO_LINK_ACCESS, "no link access" },
    { "SCI_ERR_NO_SUCH_FDID", SCI_ERR_NO_SUCH_FDID, "no such fabric device id" },
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void count_call(const char *call)
{
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        if (counters[i].call[0] == 0)
            snprintf(counters[i].call, sizeof(counters[i].call), "%s", call);
        if (strcmp(counters[i].call, call) == 0) {
            counters[i].n++;
            return;
        }
    }
}

/* An injected failure for `call`, consumed. */
static int injected(const char *call, sci_error_t *error)
{
    for (size_t i = 0; i < sizeof(injects) / sizeof(injects[0]); i++) {
        struct inject *j = &injects[i];
        if (j->count == 0 || strcmp(j->call, call) != 0)
            continue;
        if (j->count != UINT32_MAX)
            j->count--;
        *error = j->err;
        return 1;
    }
    return 0;
}

static int error_value(const char *name, sci_error_t *out)
{
    for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
        if (strcmp(errors[i].name, name) == 0) {
            *out = errors[i].value;
            return 0;
        }
    }
    return -1;
}

static int add_inject(const char *call, sci_error_t err, uint32_t count)
{
    for (size_t i = 0; i < sizeof(injects) / sizeof(injects[0]); i++) {
        struct inject *j = &injects[i];
        if (j->count == 0 || strcmp(j->call, call) == 0) {
            snprintf(j->call, sizeof(j->call), "%s", call);
            j->err = err;
            j->count = count;
            return 0;
        }
    }
    return -ENOSPC;
}

/* Entry of every SISCI function: count it, refuse it before SCIInitialize, apply an injection.
 * The lock is held from here to the function's end (SCIWaitForDataInterrupt and
 * SCIConnectDataInterrupt drop it while they wait). */
#define ENTER(call, error, ret)                                                                       \
    do {                                                                                              \
        pthread_mutex_lock(&mu);                                                                      \
        count_call(call);                                                                             \
        if (init_refs == 0) {                                                                         \
            *(error) = SCI_ERR_NOT_INITIALIZED;                                                       \
            pthread_mutex_unlock(&mu);                                                                \
            return ret;                                                                               \
        }                                                                                             \
        if (injected(call, error)) {                                                                  \
            pthread_mutex_unlock(&mu);                                                                \
            return ret;                                                                               \
        }                                                                                             \
        *(error) = SCI_ERR_OK;                                                                        \
    } while (0)
#define NOTHING
#define LEAVE(error, value, ret)                                                                      \
    do {                                                                                              \
        *(error) = (value);                                                                           \
        pthread_mutex_unlock(&mu);                                                                    \
        return ret;                                                                                   \
    } while (0)

/* --- configuration ------------------------------------------------------------------------------- */

static int parse_devices(const char *spec)
{
    ndevs = 0;
    if (!spec)
        return 0;
    char *copy = strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (ndevs == MAX_DEVS)
            break;
        char *eq = strchr(item, '=');
        if (!eq)
            continue;
        *eq = 0;
        struct fabric_dev *d = &devs[ndevs];
        memset(d, 0, sizeof(*d));
        d->fdid = (uint32_t)strtoul(item, NULL, 16);
        d->available = 1;
        d->pci_class = 0x010802;
        d->container = d->group = d->device = -1;
        d->lender_sock = d->lender_wake = d->lender_conn = -1;
        char *plus = strchr(eq + 1, '+');
        if (plus) {
            *plus = 0;
            if (strcmp(plus + 1, "unavailable") == 0)
                d->available = 0;
        }
        if (strcmp(eq + 1, "none") != 0)
            snprintf(d->bdf, sizeof(d->bdf), "%s", eq + 1);
        ndevs++;
    }
    free(copy);
    return 0;
}

static int set_fabric(const char *dir)
{
    if (!dir || !*dir) {
        const char *tmp = getenv("TMPDIR");
        snprintf(fabric, sizeof(fabric), "%s/fake-sisci", tmp && *tmp ? tmp : "/tmp");
    } else
        snprintf(fabric, sizeof(fabric), "%s", dir);
    mkdir(fabric, 0700);
    struct stat st;
    if (stat(fabric, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "fake-sisci: the fabric directory %s is not usable: %s\n", fabric, strerror(errno));
        return -1;
    }
    fabric_ino = (unsigned long)st.st_ino;
    return 0;
}

static void configure_from_env(void)
{
    if (configured)
        return;
    configured = 1;
    set_fabric(getenv("FAKE_SISCI_FABRIC"));
    parse_devices(getenv("FAKE_SISCI_DEVICES"));
    const char *node = getenv("FAKE_SISCI_NODE");
    if (node && *node)
        local_node = (unsigned)strtoul(node, NULL, 0);
    const char *inj = getenv("FAKE_SISCI_INJECT");
    if (inj && *inj) {
        char *copy = strdup(inj), *save = NULL;
        for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(item, '='), *star;
            if (!eq)
                continue;
            *eq = 0;
            uint32_t count = 1;
            if ((star = strchr(eq + 1, '*'))) {
                *star = 0;
                count = strcmp(star + 1, "always") == 0 ? UINT32_MAX : (uint32_t)strtoul(star + 1, NULL, 0);
            }
            sci_error_t e;
            if (error_value(eq + 1, &e) == 0)
                add_inject(item, e, count);
            else
                fprintf(stderr, "fake-sisci: FAKE_SISCI_INJECT: unknown error %s\n", eq + 1);
        }
        free(copy);
    }
}

static struct fabric_dev *find_dev(uint32_t fdid)
{
    for (int i = 0; i < ndevs; i++)
        if (devs[i].fdid == fdid)
            return &devs[i];
    return NULL;
}

/* --- the device's backing: VFIO or plain memory --------------------------------------------------- */

static uint64_t iova_alloc(struct fabric_dev *d, uint64_t len);
static void iova_free(struct fabric_dev *d, uint64_t start);
/* --- the lender: one process holds the VFIO backing, the others borrow through it -------------------
 *
 * VFIO lets one process open a device, but SmartIO lets every host of the cluster borrow it (not
 * exclusively). So the process that opened the VFIO backing plays the lending host's SmartIO driver:
 * a thread of it answers other borrowers of the fabric on a SOCK_SEQPACKET socket named by
 * (fabric, fdid). A borrower gets the VFIO device descriptor (its BAR0 is mapped from it, as a
 * borrower maps the BAR through the NTB) and has its segments "mapped for the device" by the lender:
 * it hands over the segment's memfd, the lender maps it into its IOMMU container and says at which
 * bus address. The lender keeps its own mapping of those pages, so a borrower that dies leaves them
 * held, and mapped for the device, until the lender returns the device: the controller never
 * reaches memory that went back to the kernel. */

enum { LEND_DEVICE = 1, LEND_MAP = 2, LEND_UNMAP = 3 };
struct lend_msg {
    uint32_t op;
    int32_t status; /* replies: sci_error_t */
    uint64_t a, b;  /* DEVICE: BAR0 offset, size; MAP: offset, length -> iova; UNMAP: iova */
};
#define MAX_BORROWERS 32
#define LEND_REPLY_MS 5000

static socklen_t lender_addr(struct sockaddr_un *a, uint32_t fdid)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "fake-sisci:%lu:lender:%x", fabric_ino, fdid);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int send_msg(int sock, const struct lend_msg *m, int fd)
{
    struct iovec iov = { (void *)m, sizeof(*m) };
    char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr h = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(ctl, 0, sizeof(ctl));
        h.msg_control = ctl;
        h.msg_controllen = sizeof(ctl);
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(sock, &h, MSG_NOSIGNAL) == (ssize_t)sizeof(*m) ? 0 : -1;
}

/* One message and the descriptor that came with it (*fd, -1 if none); 0 at EOF, -1 on error. */
static ssize_t recv_msg(int sock, struct lend_msg *m, int *fd)
{
    struct iovec iov = { m, sizeof(*m) };
    char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr h = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl) };
    *fd = -1;
    ssize_t n = recvmsg(sock, &h, MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    if (n != (ssize_t)sizeof(*m)) {
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        errno = EPROTO;
        return -1;
    }
    return n;
}

/* The lender's side of one request of borrower connection `conn`; -1 when the borrower is gone. */
static int lender_serve(struct fabric_dev *d, int conn)
{
    struct lend_msg m, out;
    int fd;
    ssize_t n = recv_msg(conn, &m, &fd);
    if (n <= 0) {
        /* Gone (returned, or died): what it had mapped stays lent until the lender returns the device. */
        pthread_mutex_lock(&mu);
        for (struct lent_map *l = d->lent; l; l = l->next)
            if (l->conn == conn)
                l->conn = -1;
        pthread_mutex_unlock(&mu);
        return -1;
    }
    out = (struct lend_msg){ .op = m.op, .status = SCI_ERR_OK };
    int give = -1;
    pthread_mutex_lock(&mu);
    if (m.op == LEND_DEVICE) {
        give = d->device;
        out.a = d->bar_off;
        out.b = d->bar_size;
    } else if (m.op == LEND_MAP && fd >= 0 && m.b > 0 && m.a % PAGE == 0) {
        uint64_t len = (m.b + PAGE - 1) / PAGE * PAGE;
        void *pin = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)m.a);
        uint64_t at = pin == MAP_FAILED ? 0 : iova_alloc(d, len);
        if (!at) {
            out.status = SCI_ERR_NOSPC;
        } else if (nvm_vfio_dma_map(d->container, pin, (uint32_t)at, (uint32_t)(at >> 32), (uint32_t)len, NVM_VFIO_MAP_READ | NVM_VFIO_MAP_WRITE) < 0) {
            iova_free(d, at);
            out.status = SCI_ERR_NOSPC;
        } else {
            struct lent_map *l = calloc(1, sizeof(*l));
            *l = (struct lent_map){ at, len, pin, conn, d->lent };
            d->lent = l;
            live[ST_IOMMU_MAPS]++;
            out.a = at;
            pin = MAP_FAILED;
        }
        if (pin != MAP_FAILED)
            munmap(pin, len);
    } else if (m.op == LEND_UNMAP) {
        out.status = SCI_ERR_ILLEGAL_OPERATION;
        for (struct lent_map **pl = &d->lent; *pl; pl = &(*pl)->next) {
            struct lent_map *l = *pl;
            /* A borrower unmaps what it mapped, nothing else. */
            if (l->iova != m.a || l->conn != conn)
                continue;
            if (nvm_vfio_dma_unmap(d->container, (uint32_t)l->iova, (uint32_t)(l->iova >> 32), (uint32_t)l->len) < 0) {
                out.status = SCI_ERR_SYSTEM; /* kept mapped: never hand the range or the pages out again */
                break;
            }
            live[ST_IOMMU_MAPS]--;
            iova_free(d, l->iova);
            munmap(l->pin, l->len);
            *pl = l->next;
            free(l);
            out.status = SCI_ERR_OK;
            break;
        }
    } else
        out.status = SCI_ERR_ILLEGAL_PARAMETER;
    pthread_mutex_unlock(&mu);
    if (fd >= 0)
        close(fd);
    return send_msg(conn, &out, give) == 0 ? 0 : -1;
}

static void *lender_main(void *arg)
{
    struct fabric_dev *d = arg;
    int conns[MAX_BORROWERS], n = 0;
    struct pollfd p[2 + MAX_BORROWERS];
    for (;;) {
        p[0] = (struct pollfd){ .fd = d->lender_wake, .events = POLLIN };
        p[1] = (struct pollfd){ .fd = d->lender_sock, .events = POLLIN };
        for (int i = 0; i < n; i++)
            p[2 + i] = (struct pollfd){ .fd = conns[i], .events = POLLIN };
        /* Not a wait of the library's caller: this thread runs until the lender returns the device. */
        if (poll(p, (nfds_t)(2 + n), -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[0].revents)
            break;
        const int had = n;
        for (int i = had - 1; i >= 0; i--) {
            if (p[2 + i].revents && lender_serve(d, conns[i]) < 0) {
                close(conns[i]);
                conns[i] = conns[--n];
            }
        }
        if (p[1].revents & POLLIN) {
            int c = accept4(d->lender_sock, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0 && n < MAX_BORROWERS)
                conns[n++] = c;
            else if (c >= 0)
                close(c);
        }
    }
    for (int i = 0; i < n; i++)
        close(conns[i]);
    return NULL;
}

/* This process opened the VFIO backing: lend it to the fabric's other borrowers. */
static void lender_start(struct fabric_dev *d)
{
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    if (bind(s, (struct sockaddr *)&a, lender_addr(&a, d->fdid)) != 0 || listen(s, 16) != 0) {
        close(s);
        return;
    }
    d->lender_sock = s;
    d->lender_wake = eventfd(0, EFD_CLOEXEC);
    if (d->lender_wake < 0 || pthread_create(&d->lender_thread, NULL, lender_main, d) != 0) {
        if (d->lender_wake >= 0)
            close(d->lender_wake);
        close(s);
        d->lender_sock = d->lender_wake = -1;
    }
}

/* Stop lending (called with mu held, which the thread needs to finish a request). Every mapping of
 * a borrower is undone here, the pages last. */
static void lender_stop(struct fabric_dev *d)
{
    if (d->lender_sock < 0)
        return;
    uint64_t one = 1;
    if (write(d->lender_wake, &one, sizeof(one)) != (ssize_t)sizeof(one))
        fprintf(stderr, "fake-sisci: waking the lender thread failed: %s\n", strerror(errno));
    pthread_mutex_unlock(&mu);
    pthread_join(d->lender_thread, NULL);
    pthread_mutex_lock(&mu);
    close(d->lender_sock);
    close(d->lender_wake);
    d->lender_sock = d->lender_wake = -1;
    for (struct lent_map *l = d->lent, *next; l; l = next) {
        next = l->next;
        if (nvm_vfio_dma_unmap(d->container, (uint32_t)l->iova, (uint32_t)(l->iova >> 32), (uint32_t)l->len) == 0) {
            live[ST_IOMMU_MAPS]--;
            munmap(l->pin, l->len);
        }
        /* Else the container's close below ends the mapping; the pages stay ours until exit. */
        free(l);
    }
    d->lent = NULL;
}

/* One request to the lender and its reply, bounded (SO_RCVTIMEO); the descriptor it sent into *fd. */
static sci_error_t lender_call(struct fabric_dev *d, struct lend_msg *m, int send_fd, int *fd)
{
    int got = -1;
    if (send_msg(d->lender_conn, m, send_fd) != 0)
        return SCI_ERR_NODE_NOT_RESPONDING;
    struct lend_msg r;
    ssize_t n = recv_msg(d->lender_conn, &r, &got);
    if (n <= 0 || r.op != m->op) {
        if (got >= 0)
            close(got);
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? SCI_ERR_TIMEOUT : SCI_ERR_NODE_NOT_RESPONDING;
    }
    if (fd)
        *fd = got;
    else if (got >= 0)
        close(got);
    *m = r;
    return (sci_error_t)r.status;
}

/* The backing is another process's (VFIO's one-opener rule): borrow through it. */
static sci_error_t borrow_from_lender(struct fabric_dev *d)
{
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return SCI_ERR_NOSPC;
    if (connect(s, (struct sockaddr *)&a, lender_addr(&a, d->fdid)) != 0) {
        close(s);
        return SCI_ERR_NOT_AVAILABLE;
    }
    struct timeval tv = { LEND_REPLY_MS / 1000, 0 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    d->lender_conn = s;
    struct lend_msg m = { .op = LEND_DEVICE };
    int dev = -1;
    sci_error_t e = lender_call(d, &m, -1, &dev);
    if (e != SCI_ERR_OK || dev < 0) {
        if (dev >= 0)
            close(dev);
        close(s);
        d->lender_conn = -1;
        return e != SCI_ERR_OK ? e : SCI_ERR_SYSTEM;
    }
    d->device = dev;
    d->bar_off = m.a;
    d->bar_size = (uint32_t)m.b;
    return SCI_ERR_OK;
}


static sci_error_t backing_open(struct fabric_dev *d)
{
    if (d->refs++ > 0)
        return SCI_ERR_OK;
    if (!d->bdf[0]) {
        d->bar_size = NONE_BAR_SIZE;
        d->bar_mem = mmap(NULL, NONE_BAR_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (d->bar_mem == MAP_FAILED) {
            d->bar_mem = NULL;
            d->refs--;
            return SCI_ERR_NOSPC;
        }
        live[ST_BACKINGS]++;
        return SCI_ERR_OK;
    }
    char link[PATH_MAX], target[PATH_MAX], group[PATH_MAX + 16];
    snprintf(link, sizeof(link), "/sys/bus/pci/devices/%s/iommu_group", d->bdf);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0) {
        fprintf(stderr, "fake-sisci: %s has no IOMMU group (%s): the fake lends it through VFIO\n", d->bdf, strerror(errno));
        d->refs--;
        return SCI_ERR_SYSTEM;
    }
    target[n] = 0;
    const char *g = strrchr(target, '/');
    snprintf(group, sizeof(group), "/dev/vfio/%s", g ? g + 1 : target);
    uint32_t out[NVM_VFIO_OPEN_DWORDS];
    int32_t rc = nvm_vfio_open(group, d->bdf, out);
    if (rc == -EBUSY && borrow_from_lender(d) == SCI_ERR_OK) {
        live[ST_BACKINGS]++;
        return SCI_ERR_OK;
    }
    if (rc < 0) {
        fprintf(stderr, "fake-sisci: VFIO open of %s (%s) failed at step %u: %s\n", d->bdf, group, out[4], strerror(-rc));
        d->refs--;
        /* Held by another process: as a device another host borrowed exclusively. */
        return rc == -EBUSY ? SCI_ERR_NOT_AVAILABLE : SCI_ERR_SYSTEM;
    }
    d->container = (int)out[0];
    d->group = (int)out[1];
    d->device = (int)out[2];
    uint32_t info[5];
    if (nvm_vfio_region_info(d->device, 0, info) < 0)
        goto fail;
    d->bar_size = info[1];
    d->bar_off = (uint64_t)info[4] << 32 | info[3];
    if (nvm_vfio_region_info(d->device, VFIO_CONFIG_REGION, info) < 0)
        goto fail;
    d->cfg_off = (uint64_t)info[4] << 32 | info[3];
    /* What the SmartIO driver does for a borrower: memory space and bus mastering on. */
    uint64_t at = d->cfg_off + PCI_COMMAND;
    if (nvm_vfio_region_read(d->device, (uint32_t)at, (uint32_t)(at >> 32), 2, &d->command_before) < 0 ||
        nvm_vfio_region_write(d->device, (uint32_t)at, (uint32_t)(at >> 32), 2, d->command_before | 0x6) < 0)
        goto fail;
    live[ST_BACKINGS]++;
    lender_start(d);
    return SCI_ERR_OK;
fail:
    fprintf(stderr, "fake-sisci: VFIO region access of %s failed: %s\n", d->bdf, strerror(nvm_last_error()));
    nvm_vfio_close(d->container, d->group, d->device);
    d->container = d->group = d->device = -1;
    d->refs--;
    return SCI_ERR_SYSTEM;
}

static void backing_close(struct fabric_dev *d)
{
    if (--d->refs > 0)
        return;
    for (struct private_seg *p = d->priv, *next; p; p = next) {
        next = p->next;
        close(p->memfd);
        free(p);
    }
    d->priv = NULL;
    free(d->maps);
    d->maps = NULL;
    d->nmaps = 0;
    if (d->bar_mem) {
        munmap(d->bar_mem, NONE_BAR_SIZE);
        d->bar_mem = NULL;
    } else if (d->lender_conn >= 0) {
        close(d->lender_conn);
        close(d->device);
        d->lender_conn = d->device = -1;
    } else if (d->device >= 0) {
        lender_stop(d);
        uint64_t at = d->cfg_off + PCI_COMMAND;
        nvm_vfio_region_write(d->device, (uint32_t)at, (uint32_t)(at >> 32), 2, d->command_before & ~0x4u);
        nvm_vfio_close(d->container, d->group, d->device);
        d->container = d->group = d->device = -1;
    }
    live[ST_BACKINGS]--;
}

/* First-fit bus address range of `len` bytes for device d. */
static uint64_t iova_alloc(struct fabric_dev *d, uint64_t len)
{
    uint64_t at = IOVA_BASE;
    size_t i = 0;
    for (; i < d->nmaps; i++) {
        if (d->maps[i].start >= at + len)
            break;
        at = d->maps[i].start + d->maps[i].size;
    }
    struct iova_range *grown = realloc(d->maps, (d->nmaps + 1) * sizeof(*grown));
    if (!grown)
        return 0;
    d->maps = grown;
    memmove(&d->maps[i + 1], &d->maps[i], (d->nmaps - i) * sizeof(*grown));
    d->maps[i] = (struct iova_range){ at, len };
    d->nmaps++;
    return at;
}

static void iova_free(struct fabric_dev *d, uint64_t start)
{
    for (size_t i = 0; i < d->nmaps; i++) {
        if (d->maps[i].start == start) {
            memmove(&d->maps[i], &d->maps[i + 1], (d->nmaps - i - 1) * sizeof(d->maps[0]));
            d->nmaps--;
            return;
        }
    }
}

/* Map [vaddr, vaddr+len) for device d: the address it will use. The same memory is [offset,
 * offset+len) of `memfd`, which a lender in another process maps (-1: none, not lendable). */
static sci_error_t device_map(struct fabric_dev *d, void *vaddr, int memfd, uint64_t offset, uint64_t len, uint64_t *iova)
{
    len = (len + PAGE - 1) / PAGE * PAGE;
    if (d->lender_conn >= 0) {
        if (memfd < 0)
            return SCI_ERR_NOT_SUPPORTED;
        struct lend_msg m = { .op = LEND_MAP, .a = offset, .b = len };
        sci_error_t e = lender_call(d, &m, memfd, NULL);
        if (e != SCI_ERR_OK)
            return e;
        *iova = m.a;
        live[ST_DEVICE_MAPS]++;
        return SCI_ERR_OK;
    }
    uint64_t at = iova_alloc(d, len);
    if (!at)
        return SCI_ERR_NOSPC;
    if (d->device >= 0) {
        int32_t rc = nvm_vfio_dma_map(d->container, vaddr, (uint32_t)at, (uint32_t)(at >> 32), (uint32_t)len, NVM_VFIO_MAP_READ | NVM_VFIO_MAP_WRITE);
        if (rc < 0) {
            fprintf(stderr, "fake-sisci: VFIO_IOMMU_MAP_DMA of %llu bytes failed: %s\n", (unsigned long long)len, strerror(-rc));
            iova_free(d, at);
            return rc == -ENOMEM || rc == -ENOSPC ? SCI_ERR_NOSPC : SCI_ERR_SYSTEM;
        }
        live[ST_IOMMU_MAPS]++;
    }
    *iova = at;
    live[ST_DEVICE_MAPS]++;
    return SCI_ERR_OK;
}

static void device_unmap(struct fabric_dev *d, uint64_t iova, uint64_t len)
{
    len = (len + PAGE - 1) / PAGE * PAGE;
    if (d->lender_conn >= 0) {
        struct lend_msg m = { .op = LEND_UNMAP, .a = iova };
        sci_error_t e = lender_call(d, &m, -1, NULL);
        /* A lender that is gone took the mapping with it (its pages stay pinned where it left them). */
        if (e == SCI_ERR_OK || e == SCI_ERR_NODE_NOT_RESPONDING)
            live[ST_DEVICE_MAPS]--;
        return;
    }
    if (d->device >= 0) {
        if (nvm_vfio_dma_unmap(d->container, (uint32_t)iova, (uint32_t)(iova >> 32), (uint32_t)len) == 0)
            live[ST_IOMMU_MAPS]--;
        else
            return; /* never hand the range out again */
    }
    iova_free(d, iova);
    live[ST_DEVICE_MAPS]--;
}

static int lock_file(const char *name, int op)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", fabric, name);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, op | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* --- library ---------------------------------------------------------------------------------- */

void SCIInitialize(unsigned int flags, sci_error_t *error)
{
    pthread_mutex_lock(&mu);
    count_call("SCIInitialize");
    configure_from_env();
    if (injected("SCIInitialize", error)) {
        pthread_mutex_unlock(&mu);
        return;
    }
    if (flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_FLAG, NOTHING);
    init_refs++;
    live[ST_INIT] = init_refs;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCITerminate(void)
{
    pthread_mutex_lock(&mu);
    count_call("SCITerminate");
    if (init_refs > 0)
        init_refs--;
    live[ST_INIT] = init_refs;
    pthread_mutex_unlock(&mu);
}

const char *SCIGetErrorString(sci_error_t error)
{
    for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++)
        if (errors[i].value == error)
            return errors[i].text;
    return "unknown error";
}

void SCIOpen(sci_desc_t *sd, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIOpen", error, NOTHING);
    if (flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_FLAG, NOTHING);
    struct fake_sci_desc *d = calloc(1, sizeof(*d));
    if (!d)
        LEAVE(error, SCI_ERR_NOSPC, NOTHING);
    live[ST_DESCRIPTORS]++;
    *sd = d;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIClose(sci_desc_t sd, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIClose", error, NOTHING);
    if (!sd || sd->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* Resources still open on the descriptor keep it busy. */
    if (sd->users > 0)
        LEAVE(error, SCI_ERR_BUSY, NOTHING);
    sd->dead = 1;
    live[ST_DESCRIPTORS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIGetLocalNodeId(unsigned int adapterNo, unsigned int *nodeId, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIGetLocalNodeId", error, NOTHING);
    (void)flags;
    if (adapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    *nodeId = local_node;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIQuery(unsigned int command, void *data, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIQuery", error, NOTHING);
    (void)flags;
    if (command != SCI_Q_DEVICE || !data)
        LEAVE(error, SCI_ERR_NOT_SUPPORTED, NOTHING);
    sci_smartio_query_device_t *q = data;
    if (q->subcommand != SCI_Q_DEVICE_INFO || !q->data)
        LEAVE(error, SCI_ERR_NOT_SUPPORTED, NOTHING);
    struct fabric_dev *d = find_dev(q->fdid);
    if (!d)
        LEAVE(error, SCI_ERR_NO_SUCH_FDID, NOTHING);
    sci_smartio_device_info_t *info = q->data;
    info->adapter = 0;
    info->nodeid = local_node;
    info->pci_class = d->pci_class;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

/* --- devices -------------------------------------------------------------------------------------- */

size_t SCIGetDeviceList(sci_desc_t sd, uint32_t *fdids, size_t maxEntries, const sci_smartio_device_info_t *filter,
                        unsigned int flags, sci_error_t *error)
{
    ENTER("SCIGetDeviceList", error, 0);
    (void)flags;
    if (!sd || sd->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, 0);
    size_t n = 0;
    for (int i = 0; i < ndevs; i++) {
        if (filter && filter->pci_class && filter->pci_class != devs[i].pci_class)
            continue;
        if (n < maxEntries)
            fdids[n] = devs[i].fdid;
        n++;
    }
    LEAVE(error, SCI_ERR_OK, n);
}

void SCIBorrowDevice(sci_desc_t sd, sci_smartio_device_t *device, uint32_t fdid, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIBorrowDevice", error, NOTHING);
    if (!sd || sd->dead || (flags & ~SCI_FLAG_EXCLUSIVE))
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    struct fabric_dev *d = find_dev(fdid);
    if (!d)
        LEAVE(error, SCI_ERR_NO_SUCH_FDID, NOTHING);
    if (!d->available)
        LEAVE(error, SCI_ERR_NOT_AVAILABLE, NOTHING);
    /* Every borrow holds the device's lock, shared; an exclusive one alone. */
    char name[64];
    snprintf(name, sizeof(name), "device-%x.borrow", fdid);
    int lockfd = lock_file(name, (flags & SCI_FLAG_EXCLUSIVE) ? LOCK_EX : LOCK_SH);
    if (lockfd < 0)
        LEAVE(error, errno == EWOULDBLOCK ? SCI_ERR_NOT_AVAILABLE : SCI_ERR_SYSTEM, NOTHING);
    sci_error_t e = backing_open(d);
    if (e != SCI_ERR_OK) {
        close(lockfd);
        LEAVE(error, e, NOTHING);
    }
    struct fake_sci_smartio_device *b = calloc(1, sizeof(*b));
    b->sd = sd;
    b->fd = d;
    b->lockfd = lockfd;
    sd->users++;
    live[ST_BORROWS]++;
    *device = b;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIReturnDevice(sci_smartio_device_t device, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIReturnDevice", error, NOTHING);
    (void)flags;
    if (!device || device->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* Stricter than documented: connections and mappings through the borrow go first. */
    if (device->connected > 0 || device->dev_maps > 0)
        LEAVE(error, SCI_ERR_BUSY, NOTHING);
    device->dead = 1;
    close(device->lockfd);
    backing_close(device->fd);
    device->sd->users--;
    live[ST_BORROWS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCICreateDeviceSegment(sci_smartio_device_t device, unsigned int segmentId, size_t size, unsigned int memtype,
                            unsigned int accessHints, unsigned int flags, sci_error_t *error)
{
    ENTER("SCICreateDeviceSegment", error, NOTHING);
    const unsigned all_hints = SCI_MEMACCESS_DEVICE_READ | SCI_MEMACCESS_DEVICE_WRITE | SCI_MEMACCESS_HOST_READ |
                               SCI_MEMACCESS_HOST_WRITE | SCI_MEMACCESS_MULTIHOST_READ | SCI_MEMACCESS_MULTIHOST_WRITE;
    if (!device || device->dead || size == 0 || (accessHints & ~all_hints) || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    struct fabric_dev *d = device->fd;
    if (memtype == SCI_MEMTYPE_PRIVATE) {
        for (struct private_seg *p = d->priv; p; p = p->next)
            if (p->id == segmentId)
                LEAVE(error, SCI_ERR_SEGMENTID_USED, NOTHING);
        int fd = memfd_create("fake-sisci-private", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t)((size + PAGE - 1) / PAGE * PAGE)) != 0) {
            if (fd >= 0)
                close(fd);
            LEAVE(error, SCI_ERR_NOSPC, NOTHING);
        }
        struct private_seg *p = calloc(1, sizeof(*p));
        *p = (struct private_seg){ segmentId, fd, size, d->priv };
        d->priv = p;
        LEAVE(error, SCI_ERR_OK, NOTHING);
    }
    if (memtype == SCI_MEMTYPE_SHARED) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/device-%x.shared-%u", fabric, d->fdid, segmentId);
        /* Every borrower of the device sees the same one: the first creates it, the others find it taken. */
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            LEAVE(error, errno == EEXIST ? SCI_ERR_SEGMENTID_USED : SCI_ERR_SYSTEM, NOTHING);
        /* Its exact size is the file's: the last page past it still maps (and pins) whole. */
        int ok = ftruncate(fd, (off_t)size) == 0;
        close(fd);
        LEAVE(error, ok ? SCI_ERR_OK : SCI_ERR_NOSPC, NOTHING);
    }
    LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
}

void SCIConnectDeviceSegment(sci_smartio_device_t device, sci_remote_segment_t *segment, unsigned int segmentId,
                             unsigned int memtype, sci_cb_device_segment_t callback, void *callbackArg,
                             unsigned int flags, sci_error_t *error)
{
    ENTER("SCIConnectDeviceSegment", error, NOTHING);
    (void)callbackArg;
    if (!device || device->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (callback || flags != 0)
        LEAVE(error, SCI_ERR_FLAG_NOT_IMPLEMENTED, NOTHING);
    struct fabric_dev *d = device->fd;
    int memfd = -1;
    size_t size = 0;
    if (memtype == SCI_MEMTYPE_BAR) {
        if (segmentId != 0) /* the fake's devices have BAR0 only */
            LEAVE(error, SCI_ERR_NO_SUCH_SEGMENT, NOTHING);
        size = d->bar_size;
    } else if (memtype == SCI_MEMTYPE_PRIVATE) {
        struct private_seg *p = d->priv;
        while (p && p->id != segmentId)
            p = p->next;
        if (!p)
            LEAVE(error, SCI_ERR_NO_SUCH_SEGMENT, NOTHING);
        memfd = dup(p->memfd);
        size = p->size;
    } else if (memtype == SCI_MEMTYPE_SHARED) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/device-%x.shared-%u", fabric, d->fdid, segmentId);
        memfd = open(path, O_RDWR | O_CLOEXEC);
        if (memfd < 0)
            LEAVE(error, SCI_ERR_NO_SUCH_SEGMENT, NOTHING);
        struct stat st;
        fstat(memfd, &st);
        size = (size_t)st.st_size;
    } else
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    struct fake_sci_remote_segment *r = calloc(1, sizeof(*r));
    *r = (struct fake_sci_remote_segment){ .dev = device, .memtype = memtype, .id = segmentId, .memfd = memfd, .size = size };
    device->connected++;
    live[ST_CONNECTED]++;
    *segment = r;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

size_t SCIGetRemoteSegmentSize(sci_remote_segment_t segment)
{
    return segment && !segment->dead ? segment->size : 0;
}

volatile void *SCIMapRemoteSegment(sci_remote_segment_t segment, sci_map_t *map, size_t offset, size_t size, void *addr,
                                   unsigned int flags, sci_error_t *error)
{
    ENTER("SCIMapRemoteSegment", error, NULL);
    if (!segment || segment->dead || addr)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NULL);
    if (flags & ~(SCI_FLAG_READONLY_MAP | SCI_FLAG_IO_MAP_IOSPACE))
        LEAVE(error, SCI_ERR_ILLEGAL_FLAG, NULL);
    if (offset % PAGE)
        LEAVE(error, SCI_ERR_OFFSET_ALIGNMENT, NULL);
    if (size == 0 || offset > segment->size || size > segment->size - offset)
        LEAVE(error, SCI_ERR_OUT_OF_RANGE, NULL);
    struct fabric_dev *d = segment->dev->fd;
    const int prot = (flags & SCI_FLAG_READONLY_MAP) ? PROT_READ : PROT_READ | PROT_WRITE;
    void *p;
    int unmap = 1;
    if (segment->memtype == SCI_MEMTYPE_BAR && d->bar_mem) {
        p = (char *)d->bar_mem + offset;
        unmap = 0;
    } else if (segment->memtype == SCI_MEMTYPE_BAR) {
        uint64_t at = d->bar_off + offset;
        p = nvm_vfio_map_region(d->device, (uint32_t)at, (uint32_t)(at >> 32), (uint32_t)size);
        if (!p)
            LEAVE(error, SCI_ERR_SYSTEM, NULL);
        if (prot == PROT_READ)
            mprotect(p, size, PROT_READ);
    } else {
        p = mmap(NULL, size, prot, MAP_SHARED, segment->memfd, (off_t)offset);
        if (p == MAP_FAILED)
            LEAVE(error, SCI_ERR_NOSPC, NULL);
    }
    struct fake_sci_map *m = calloc(1, sizeof(*m));
    *m = (struct fake_sci_map){ .remote = segment, .addr = p, .len = size, .unmap = unmap };
    segment->cpu_maps++;
    live[ST_CPU_MAPS]++;
    *map = m;
    LEAVE(error, SCI_ERR_OK, p);
}

void SCIMapRemoteSegmentForDevice(sci_remote_segment_t segment, sci_smartio_device_t device, sci_ioaddr_t *ioaddr,
                                  size_t offset, size_t size, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIMapRemoteSegmentForDevice", error, NOTHING);
    if (!segment || segment->dead || !device || device->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* No peer-to-peer here: a device's own memory only, for that device. */
    if (segment->memtype == SCI_MEMTYPE_BAR || device->fd != segment->dev->fd)
        LEAVE(error, SCI_ERR_NOT_SUPPORTED, NOTHING);
    if (segment->dev_mapped)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    if (offset % PAGE)
        LEAVE(error, SCI_ERR_OFFSET_ALIGNMENT, NOTHING);
    if (size == 0 || offset > segment->size || size > segment->size - offset)
        LEAVE(error, SCI_ERR_OUT_OF_RANGE, NOTHING);
    size_t len = (size + PAGE - 1) / PAGE * PAGE;
    void *pin = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, segment->memfd, (off_t)offset);
    if (pin == MAP_FAILED)
        LEAVE(error, SCI_ERR_NOSPC, NOTHING);
    uint64_t io;
    sci_error_t e = device_map(device->fd, pin, segment->memfd, offset, len, &io);
    if (e != SCI_ERR_OK) {
        munmap(pin, len);
        LEAVE(error, e, NOTHING);
    }
    segment->pin = pin;
    segment->iova = io;
    segment->iova_len = len;
    segment->dev_mapped = 1;
    device->dev_maps++;
    *ioaddr = io;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIUnmapRemoteSegmentForDevice(sci_remote_segment_t segment, sci_smartio_device_t device, unsigned int flags,
                                    sci_error_t *error)
{
    ENTER("SCIUnmapRemoteSegmentForDevice", error, NOTHING);
    (void)flags;
    if (!segment || segment->dead || !device || device->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (!segment->dev_mapped)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    device_unmap(device->fd, segment->iova, segment->iova_len);
    munmap(segment->pin, segment->iova_len);
    segment->dev_mapped = 0;
    device->dev_maps--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIDisconnectSegment(sci_remote_segment_t segment, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIDisconnectSegment", error, NOTHING);
    (void)flags;
    if (!segment || segment->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* Mapped (for the CPU or the device): still in use. */
    if (segment->cpu_maps > 0 || segment->dev_mapped)
        LEAVE(error, SCI_ERR_BUSY, NOTHING);
    segment->dead = 1;
    if (segment->memfd >= 0)
        close(segment->memfd);
    segment->dev->connected--;
    live[ST_CONNECTED]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

/* --- local segments ---------------------------------------------------------------------------- */

void SCICreateSegment(sci_desc_t sd, sci_local_segment_t *segment, unsigned int segmentId, size_t size,
                      sci_cb_local_segment_t callback, void *callbackArg, unsigned int flags, sci_error_t *error)
{
    ENTER("SCICreateSegment", error, NOTHING);
    (void)callbackArg;
    if (!sd || sd->dead || size == 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (callback || (flags & ~(SCI_FLAG_AUTO_ID | SCI_FLAG_EMPTY)))
        LEAVE(error, SCI_ERR_FLAG_NOT_IMPLEMENTED, NOTHING);
    /* Segment ids are unique per node, across processes: an exclusive lock per id. */
    char name[64];
    int lockfd = -1;
    unsigned id = segmentId;
    if (flags & SCI_FLAG_AUTO_ID) {
        for (id = FIRST_AUTO_SEGMENT_ID; id < FIRST_AUTO_SEGMENT_ID + 65536 && lockfd < 0; id++) {
            snprintf(name, sizeof(name), "node-%u.segment-%u", local_node, id);
            lockfd = lock_file(name, LOCK_EX);
        }
        id--;
        if (lockfd < 0)
            LEAVE(error, SCI_ERR_NOSPC, NOTHING);
    } else {
        snprintf(name, sizeof(name), "node-%u.segment-%u", local_node, id);
        lockfd = lock_file(name, LOCK_EX);
        if (lockfd < 0)
            LEAVE(error, errno == EWOULDBLOCK ? SCI_ERR_SEGMENTID_USED : SCI_ERR_SYSTEM, NOTHING);
    }
    int memfd = -1;
    void *pin = NULL;
    const size_t len = (size + PAGE - 1) / PAGE * PAGE;
    if (!(flags & SCI_FLAG_EMPTY)) {
        memfd = memfd_create("fake-sisci-segment", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, (off_t)len) != 0 ||
            (pin = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd, 0)) == MAP_FAILED) {
            if (memfd >= 0)
                close(memfd);
            close(lockfd);
            LEAVE(error, SCI_ERR_NOSPC, NOTHING);
        }
    }
    struct fake_sci_local_segment *s = calloc(1, sizeof(*s));
    *s = (struct fake_sci_local_segment){ .sd = sd, .id = id, .lockfd = lockfd, .size = size, .memfd = memfd, .pin = pin };
    sd->users++;
    live[ST_LOCAL_SEGMENTS]++;
    *segment = s;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

size_t SCIGetLocalSegmentSize(sci_local_segment_t segment)
{
    return segment && !segment->dead ? segment->size : 0;
}

unsigned int SCIGetLocalSegmentId(sci_local_segment_t segment)
{
    return segment && !segment->dead ? segment->id : 0;
}

void SCIAttachPhysicalMemory(sci_ioaddr_t ioaddress, void *address, unsigned int busNo, size_t size,
                             sci_local_segment_t segment, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIAttachPhysicalMemory", error, NOTHING);
    (void)ioaddress;
    (void)busNo;
    if (!segment || segment->dead || !address || size == 0 || size > segment->size)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* Models a SISCI built without CUDA support. */
    const char *nocuda = getenv("FAKE_SISCI_NO_CUDA");
    if (!(flags & SCI_FLAG_CUDA_BUFFER) || (nocuda && *nocuda == '1'))
        LEAVE(error, SCI_ERR_FLAG_NOT_IMPLEMENTED, NOTHING);
    if (segment->memfd >= 0 || segment->attached)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    if ((uintptr_t)address % PAGE)
        LEAVE(error, SCI_ERR_OFFSET_ALIGNMENT, NOTHING);
    /* The fake has no GPU: the "device pointer" is host memory the test owns (and the IOMMU maps). */
    segment->pin = address;
    segment->attached = 1;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIPrepareSegment(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIPrepareSegment", error, NOTHING);
    if (!segment || segment->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    if (!segment->pin) /* empty, nothing attached */
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    segment->prepared = 1;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCISetSegmentAvailable(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags, sci_error_t *error)
{
    ENTER("SCISetSegmentAvailable", error, NOTHING);
    if (!segment || segment->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    if (!segment->prepared)
        LEAVE(error, SCI_ERR_SEGMENT_NOT_PREPARED, NOTHING);
    if (segment->available)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    segment->available = 1;
    live[ST_AVAILABLE]++;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCISetSegmentUnavailable(sci_local_segment_t segment, unsigned int localAdapterNo, unsigned int flags,
                              sci_error_t *error)
{
    ENTER("SCISetSegmentUnavailable", error, NOTHING);
    if (!segment || segment->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    if (!segment->available)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    /* Still mapped for a device: it is in use. */
    if (segment->mapped_for)
        LEAVE(error, SCI_ERR_BUSY, NOTHING);
    segment->available = 0;
    live[ST_AVAILABLE]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIMapLocalSegmentForDevice(sci_local_segment_t segment, unsigned int localAdapterNo, sci_smartio_device_t device,
                                 sci_ioaddr_t *ioaddr, size_t offset, size_t size, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIMapLocalSegmentForDevice", error, NOTHING);
    if (!segment || segment->dead || !device || device->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    /* prepare -> available -> map for the device, in that order. */
    if (!segment->prepared)
        LEAVE(error, SCI_ERR_SEGMENT_NOT_PREPARED, NOTHING);
    if (!segment->available)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    if (segment->mapped_for)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    if (offset % PAGE)
        LEAVE(error, SCI_ERR_OFFSET_ALIGNMENT, NOTHING);
    if (size == 0 || offset > segment->size || size > segment->size - offset)
        LEAVE(error, SCI_ERR_OUT_OF_RANGE, NOTHING);
    uint64_t io;
    sci_error_t e = device_map(device->fd, (char *)segment->pin + offset, segment->memfd, offset, size, &io);
    if (e != SCI_ERR_OK)
        LEAVE(error, e, NOTHING);
    segment->mapped_for = device;
    segment->iova = io;
    segment->iova_len = size;
    device->dev_maps++;
    *ioaddr = io;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIUnmapLocalSegmentForDevice(sci_local_segment_t segment, unsigned int localAdapterNo,
                                   sci_smartio_device_t device, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIUnmapLocalSegmentForDevice", error, NOTHING);
    (void)flags;
    if (!segment || segment->dead || !device || device->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    if (segment->mapped_for != device)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NOTHING);
    device_unmap(device->fd, segment->iova, segment->iova_len);
    segment->mapped_for = NULL;
    device->dev_maps--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void *SCIMapLocalSegment(sci_local_segment_t segment, sci_map_t *map, size_t offset, size_t size, void *addr,
                         unsigned int flags, sci_error_t *error)
{
    ENTER("SCIMapLocalSegment", error, NULL);
    if (!segment || segment->dead || addr)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NULL);
    if (flags & ~SCI_FLAG_READONLY_MAP)
        LEAVE(error, SCI_ERR_ILLEGAL_FLAG, NULL);
    /* GPU memory attached to the segment has no CPU view here. */
    if (segment->memfd < 0)
        LEAVE(error, SCI_ERR_ILLEGAL_OPERATION, NULL);
    if (offset % PAGE)
        LEAVE(error, SCI_ERR_OFFSET_ALIGNMENT, NULL);
    if (size == 0 || offset > segment->size || size > segment->size - offset)
        LEAVE(error, SCI_ERR_OUT_OF_RANGE, NULL);
    const int prot = (flags & SCI_FLAG_READONLY_MAP) ? PROT_READ : PROT_READ | PROT_WRITE;
    void *p = mmap(NULL, size, prot, MAP_SHARED, segment->memfd, (off_t)offset);
    if (p == MAP_FAILED)
        LEAVE(error, SCI_ERR_NOSPC, NULL);
    struct fake_sci_map *m = calloc(1, sizeof(*m));
    *m = (struct fake_sci_map){ .local = segment, .addr = p, .len = size, .unmap = 1 };
    segment->cpu_maps++;
    live[ST_CPU_MAPS]++;
    *map = m;
    LEAVE(error, SCI_ERR_OK, p);
}

void SCIRemoveSegment(sci_local_segment_t segment, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIRemoveSegment", error, NOTHING);
    (void)flags;
    if (!segment || segment->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    /* Mapped (for the CPU or a device): still in use. */
    if (segment->cpu_maps > 0 || segment->mapped_for)
        LEAVE(error, SCI_ERR_BUSY, NOTHING);
    if (segment->available) {
        segment->available = 0;
        live[ST_AVAILABLE]--;
    }
    if (segment->memfd >= 0) {
        munmap(segment->pin, (segment->size + PAGE - 1) / PAGE * PAGE);
        close(segment->memfd);
    }
    close(segment->lockfd);
    segment->dead = 1;
    segment->sd->users--;
    live[ST_LOCAL_SEGMENTS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

/* --- mappings -------------------------------------------------------------------------------- */

void SCIUnmapSegment(sci_map_t map, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIUnmapSegment", error, NOTHING);
    (void)flags;
    if (!map || map->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (map->unmap)
        munmap(map->addr, map->len);
    if (map->local)
        map->local->cpu_maps--;
    else
        map->remote->cpu_maps--;
    map->dead = 1;
    live[ST_CPU_MAPS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCICacheSync(sci_map_t map, void *addr, size_t length, unsigned int flags, sci_error_t *error)
{
    ENTER("SCICacheSync", error, NOTHING);
    (void)map;
    (void)length;
    if (!addr)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (!(flags & (SCI_FLAG_CACHE_FLUSH | SCI_FLAG_CACHE_INVALIDATE)) || (flags & ~(SCI_FLAG_CACHE_FLUSH | SCI_FLAG_CACHE_INVALIDATE)))
        LEAVE(error, SCI_ERR_ILLEGAL_FLAG, NOTHING);
    /* x86 DMA is cache-coherent: a full barrier is all there is to do. */
    __sync_synchronize();
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIFlush(sci_sequence_t sequence, unsigned int flags)
{
    (void)sequence;
    (void)flags;
    pthread_mutex_lock(&mu);
    count_call("SCIFlush");
    pthread_mutex_unlock(&mu);
    __sync_synchronize();
}

/* --- data interrupts: abstract UNIX datagram sockets, one name per (fabric, node, number) ------ */

static socklen_t intr_addr(struct sockaddr_un *a, unsigned node, unsigned number)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "fake-sisci:%lu:%u:%u", fabric_ino, node, number);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

void SCICreateDataInterrupt(sci_desc_t sd, sci_local_data_interrupt_t *interrupt, unsigned int localAdapterNo,
                            unsigned int *interruptNo, sci_cb_data_interrupt_t callback, void *callbackArg,
                            unsigned int flags, sci_error_t *error)
{
    ENTER("SCICreateDataInterrupt", error, NOTHING);
    (void)callbackArg;
    if (!sd || sd->dead || !interruptNo)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    if (callback || (flags & SCI_FLAG_USE_CALLBACK) || (flags & ~(SCI_FLAG_FIXED_INTNO | SCI_FLAG_USE_CALLBACK)))
        LEAVE(error, SCI_ERR_FLAG_NOT_IMPLEMENTED, NOTHING);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        LEAVE(error, SCI_ERR_NOSPC, NOTHING);
    struct sockaddr_un a;
    unsigned no = (flags & SCI_FLAG_FIXED_INTNO) ? *interruptNo : FIRST_AUTO_INTNO;
    for (;; no++) {
        if (bind(s, (struct sockaddr *)&a, intr_addr(&a, local_node, no)) == 0)
            break;
        if (errno != EADDRINUSE || (flags & SCI_FLAG_FIXED_INTNO) || no > FIRST_AUTO_INTNO + 65536) {
            int fixed_taken = errno == EADDRINUSE;
            close(s);
            LEAVE(error, fixed_taken ? SCI_ERR_NOT_AVAILABLE : SCI_ERR_NOSPC, NOTHING);
        }
    }
    struct fake_sci_local_data_interrupt *i = calloc(1, sizeof(*i));
    *i = (struct fake_sci_local_data_interrupt){ .sd = sd, .sock = s, .number = no };
    sd->users++;
    live[ST_INTERRUPTS]++;
    *interruptNo = no;
    *interrupt = i;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIWaitForDataInterrupt(sci_local_data_interrupt_t interrupt, void *data, unsigned int *length,
                             unsigned int timeout, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIWaitForDataInterrupt", error, NOTHING);
    (void)flags;
    if (!interrupt || interrupt->dead || !length)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    const int sock = interrupt->sock;
    pthread_mutex_unlock(&mu); /* others may trigger, connect or create meanwhile */
    const uint64_t deadline = now_ms() + timeout;
    for (;;) {
        int wait = -1;
        if (timeout != SCI_INFINITE_TIMEOUT) {
            uint64_t now = now_ms();
            wait = now >= deadline ? 0 : (int)(deadline - now > INT_MAX ? INT_MAX : deadline - now);
        }
        struct pollfd p = { .fd = sock, .events = POLLIN };
        int n = poll(&p, 1, wait);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0) {
            *error = SCI_ERR_TIMEOUT;
            return;
        }
        ssize_t got = n < 0 ? -1 : recv(sock, data, *length, MSG_TRUNC | MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (got < 0) {
            *error = SCI_ERR_SYSTEM;
            return;
        }
        *error = (size_t)got > *length ? SCI_ERR_OVERFLOW : SCI_ERR_OK;
        *length = (unsigned)got;
        return;
    }
}

void SCIRemoveDataInterrupt(sci_local_data_interrupt_t interrupt, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIRemoveDataInterrupt", error, NOTHING);
    (void)flags;
    if (!interrupt || interrupt->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    close(interrupt->sock);
    interrupt->dead = 1;
    interrupt->sd->users--;
    live[ST_INTERRUPTS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIConnectDataInterrupt(sci_desc_t sd, sci_remote_data_interrupt_t *interrupt, unsigned int nodeId,
                             unsigned int localAdapterNo, unsigned int interruptNo, unsigned int timeout,
                             unsigned int flags, sci_error_t *error)
{
    ENTER("SCIConnectDataInterrupt", error, NOTHING);
    if (!sd || sd->dead || flags != 0)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (localAdapterNo != 0)
        LEAVE(error, SCI_ERR_NO_SUCH_ADAPTERNO, NOTHING);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        LEAVE(error, SCI_ERR_NOSPC, NOTHING);
    struct sockaddr_un a;
    socklen_t alen = intr_addr(&a, nodeId, interruptNo);
    pthread_mutex_unlock(&mu);
    /* The interrupt may not exist yet: try until the timeout, then the connection is refused. */
    const uint64_t deadline = now_ms() + (timeout == SCI_INFINITE_TIMEOUT ? UINT32_MAX : timeout);
    const struct timespec ms = { 0, 1000000 };
    int rc;
    while ((rc = connect(s, (struct sockaddr *)&a, alen)) != 0 && (errno == ECONNREFUSED || errno == ENOENT) && now_ms() < deadline)
        nanosleep(&ms, NULL);
    pthread_mutex_lock(&mu);
    if (rc != 0) {
        close(s);
        LEAVE(error, SCI_ERR_CONNECTION_REFUSED, NOTHING);
    }
    struct fake_sci_remote_data_interrupt *r = calloc(1, sizeof(*r));
    *r = (struct fake_sci_remote_data_interrupt){ .sd = sd, .sock = s };
    sd->users++;
    live[ST_REMOTE_INTERRUPTS]++;
    *interrupt = r;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCITriggerDataInterrupt(sci_remote_data_interrupt_t interrupt, void *data, unsigned int length,
                             unsigned int flags, sci_error_t *error)
{
    ENTER("SCITriggerDataInterrupt", error, NOTHING);
    (void)flags;
    if (!interrupt || interrupt->dead || (!data && length))
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    if (length > MAX_INTR_DATA)
        LEAVE(error, SCI_ERR_OUT_OF_RANGE, NOTHING);
    /* The receiver removed its interrupt: nothing to trigger any more. */
    if (send(interrupt->sock, data, length, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)length)
        LEAVE(error, errno == EAGAIN ? SCI_ERR_BUSY : SCI_ERR_NOT_CONNECTED, NOTHING);
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

void SCIDisconnectDataInterrupt(sci_remote_data_interrupt_t interrupt, unsigned int flags, sci_error_t *error)
{
    ENTER("SCIDisconnectDataInterrupt", error, NOTHING);
    (void)flags;
    if (!interrupt || interrupt->dead)
        LEAVE(error, SCI_ERR_ILLEGAL_PARAMETER, NOTHING);
    close(interrupt->sock);
    interrupt->dead = 1;
    interrupt->sd->users--;
    live[ST_REMOTE_INTERRUPTS]--;
    LEAVE(error, SCI_ERR_OK, NOTHING);
}

/* --- the test's controls ------------------------------------------------------------------------- */

/* Replace the fabric (directory, devices as FAKE_SISCI_DEVICES, this process's node id); -EBUSY while
 * a device is borrowed here. */
FAKE_API int32_t fake_sisci_configure(const char *dir, const char *devices, uint32_t node)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < ndevs; i++) {
        if (devs[i].refs > 0) {
            pthread_mutex_unlock(&mu);
            return -EBUSY;
        }
    }
    configured = 1;
    int rc = set_fabric(dir) == 0 ? 0 : -EINVAL;
    parse_devices(devices);
    local_node = node;
    pthread_mutex_unlock(&mu);
    return rc;
}

/* The next `count` calls of `call` fail with the error named `error` (UINT32_MAX: all; 0: none). */
FAKE_API int32_t fake_sisci_inject(const char *call, const char *error, uint32_t count)
{
    sci_error_t e;
    if (error_value(error, &e) != 0)
        return -EINVAL;
    pthread_mutex_lock(&mu);
    int rc = add_inject(call, e, count);
    pthread_mutex_unlock(&mu);
    return rc;
}

/* Forget injections and call counts. */
FAKE_API void fake_sisci_clear(void)
{
    pthread_mutex_lock(&mu);
    memset(injects, 0, sizeof(injects));
    memset(counters, 0, sizeof(counters));
    pthread_mutex_unlock(&mu);
}

FAKE_API uint32_t fake_sisci_calls(const char *call)
{
    uint32_t n = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
        if (strcmp(counters[i].call, call) == 0)
            n = counters[i].n;
    pthread_mutex_unlock(&mu);
    return n;
}

/* The value of the error named `name` in the fake's header, or -1. */
FAKE_API int32_t fake_sisci_error_value(const char *name)
{
    sci_error_t e;
    return error_value(name, &e) == 0 ? (int32_t)e : -1;
}

/* What is alive in this process: out[ST_COUNT] in the order of the ST_ enum (test/smartio/fake.ts). */
FAKE_API uint32_t fake_sisci_state(uint32_t *out)
{
    pthread_mutex_lock(&mu);
    memcpy(out, live, sizeof(live));
    pthread_mutex_unlock(&mu);
    return ST_COUNT;
}

/* smartio_tool available / unavailable for `fdid`. */
FAKE_API int32_t fake_sisci_set_available(uint32_t fdid, uint32_t available)
{
    pthread_mutex_lock(&mu);
    struct fabric_dev *d = find_dev(fdid);
    if (d)
        d->available = available != 0;
    pthread_mutex_unlock(&mu);
    return d ? 0 : -ENOENT;
}
