/*
 * The fake controller thread of fake-ctrl.h. One thread serves every queue, as one controller
 * does; it only ever touches the host's memory the way a controller's DMA would: the SQ entries
 * (after an acquire load of the tail doorbell), the data pages (through the windows), the CQ
 * entries (Phase Tag last, with a release store) and the doorbell words.
 */
#define _GNU_SOURCE
#include "fake-ctrl.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096u
#define MAX_QUEUES 1024
#define MAX_WINDOWS 65536
#define DOORBELLS 0x1000u

/* Status Field values (CQE DW3 bits 31:17 as a 15-bit value: SC, SCT << 8, DNR << 14). */
#define ST_INVALID_OPCODE (0x01u | 1u << 14)
#define ST_DATA_TRANSFER_ERROR 0x04u
#define ST_INVALID_FIELD (0x02u | 1u << 14)
#define ST_INVALID_NS (0x0bu | 1u << 14)
#define ST_LBA_RANGE (0x80u | 1u << 14)
#define ST_UNRECOVERED_READ (0x81u | 2u << 8)

struct cmd {
    uint32_t dw[16];
    uint64_t due;
    uint32_t dropped;
    uint32_t fail; /* complete with an injected error */
};

struct queue {
    uint32_t qid, entries;
    uint32_t *sq, *cq;
    uint32_t *sq_db, *cq_db;
    uint32_t sq_head;  /* next SQE to fetch */
    uint32_t cq_tail;  /* next CQE to post */
    uint32_t cq_phase;
    struct cmd *pending; /* in fetch order */
    uint32_t npending;
    uint8_t *inflight;   /* per CID (the core's CIDs are < entries; others are tracked too) */
    uint32_t ninflight;
};

struct window {
    uint64_t bus, bytes;
    unsigned char *host;
};

struct fc {
    struct fc_config cfg;
    unsigned char *disk;
    uint32_t *bar;
    struct queue *queues; /* MAX_QUEUES */
    uint32_t nqueues;
    struct window *windows; /* sorted by bus address, disjoint */
    uint32_t nwindows;
    pthread_t thread;
    int running;
    uint32_t stop;    /* set by fc_stop() */
    uint32_t release; /* fc_release_dropped(): status + 1 to apply */
    uint64_t rng;
    uint64_t stats[FC_STATS]; /* read with atomics from other threads */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(struct fc *fc)
{
    uint64_t x = fc->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    fc->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static void count(struct fc *fc, int which, uint64_t n) { __atomic_fetch_add(&fc->stats[which], n, __ATOMIC_RELAXED); }

/* Host address of [bus, bus+bytes) when one window holds all of it (the emulated IOMMU), else NULL. */
static unsigned char *translate(struct fc *fc, uint64_t bus, uint64_t bytes)
{
    uint32_t lo = 0, hi = fc->nwindows;
    while (lo < hi) { /* the last window starting at or below bus */
        uint32_t mid = (lo + hi) / 2;
        if (fc->windows[mid].bus <= bus)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const struct window *w = &fc->windows[lo - 1];
    if (bus - w->bus <= w->bytes && bytes <= w->bytes - (bus - w->bus))
        return w->host + (bus - w->bus);
    return NULL;
}

/* Move `bytes` between the disk at `disk` and the PRP-described host memory; 0 or a status. */
static uint32_t transfer(struct fc *fc, const uint32_t *dw, unsigned char *disk, uint32_t bytes, int to_host)
{
    uint64_t prp1 = dw[6] | (uint64_t)dw[7] << 32, prp2 = dw[8] | (uint64_t)dw[9] << 32;
    if (prp1 & 3u) {
        count(fc, FC_BAD_PRP, 1);
        return ST_INVALID_FIELD;
    }
    uint32_t first = PAGE - (uint32_t)(prp1 % PAGE);
    if (first > bytes)
        first = bytes;
    uint32_t rest = bytes - first;
    uint32_t pages = (rest + PAGE - 1) / PAGE;
    uint64_t addrs[1 + 2048];
    uint32_t lens[1 + 2048];
    if (pages > 2048)
        return ST_INVALID_FIELD;
    addrs[0] = prp1;
    lens[0] = first;
    if (pages == 1) {
        addrs[1] = prp2;
        lens[1] = rest;
    } else if (pages > 1) {
        /* PRP2 is a list; its last entry chains to the next list when more remain. */
        uint64_t list = prp2;
        uint32_t i = 0;
        while (i < pages) {
            if (list % 8 != 0) {
                count(fc, FC_BAD_PRP, 1);
                return ST_INVALID_FIELD;
            }
            uint32_t in_page = (PAGE - (uint32_t)(list % PAGE)) / 8;
            const uint64_t *e = (const uint64_t *)translate(fc, list, in_page * 8ull);
            if (!e) {
                count(fc, FC_BAD_PRP, 1);
                return ST_DATA_TRANSFER_ERROR;
            }
            uint32_t k = 0;
            for (; k < in_page && i < pages; k++) {
                if (k == in_page - 1 && pages - i > 1) {
                    list = e[k];
                    break;
                }
                addrs[1 + i] = e[k];
                lens[1 + i] = i + 1 == pages ? rest - i * PAGE : PAGE;
                i++;
            }
        }
    }
    for (uint32_t i = 0; i <= pages; i++) {
        if (lens[i] == 0)
            continue;
        if (i > 0 && addrs[i] % PAGE != 0) {
            count(fc, FC_BAD_PRP, 1);
            return ST_INVALID_FIELD;
        }
        unsigned char *h = translate(fc, addrs[i], lens[i]);
        if (!h) {
            count(fc, FC_BAD_PRP, 1);
            return ST_DATA_TRANSFER_ERROR;
        }
        if (to_host)
            memcpy(h, disk, lens[i]);
        else
            memcpy(disk, h, lens[i]);
        disk += lens[i];
    }
    return 0;
}

static uint32_t execute(struct fc *fc, const uint32_t *dw)
{
    uint32_t opc = dw[0] & 0xffu;
    if (opc == 0x00u) /* Flush */
        return 0;
    if (opc != 0x01u && opc != 0x02u) {
        count(fc, FC_BAD_OPCODE, 1);
        return ST_INVALID_OPCODE;
    }
    if (dw[1] != fc->cfg.nsid)
        return ST_INVALID_NS;
    uint64_t slba = dw[10] | (uint64_t)dw[11] << 32;
    uint32_t nlb = (dw[12] & 0xffffu) + 1;
    if (slba >= fc->cfg.blocks || nlb > fc->cfg.blocks - slba)
        return ST_LBA_RANGE;
    count(fc, opc == 0x02u ? FC_READS : FC_WRITES, 1);
    return transfer(fc, dw, fc->disk + slba * fc->cfg.lba_bytes, nlb * fc->cfg.lba_bytes, opc == 0x02u);
}

/* Post a CQE for `c` on `q`, if the CQ has room; 0 when it is full (the caller tries later). */
static int post(struct fc *fc, struct queue *q, const struct cmd *c, uint32_t status)
{
    uint32_t head = __atomic_load_n(q->cq_db, __ATOMIC_ACQUIRE);
    uint32_t next = q->cq_tail + 1 == q->entries ? 0 : q->cq_tail + 1;
    if (head >= q->entries) {
        count(fc, FC_BAD_DOORBELL, 1);
        return 0;
    }
    if (next == head) {
        count(fc, FC_CQ_FULL, 1);
        return 0;
    }
    uint32_t cid = c->dw[0] >> 16;
    uint32_t *e = q->cq + 4 * q->cq_tail;
    __atomic_store_n(&e[0], 0u, __ATOMIC_RELAXED);
    __atomic_store_n(&e[1], 0u, __ATOMIC_RELAXED);
    __atomic_store_n(&e[2], q->sq_head | q->qid << 16, __ATOMIC_RELAXED);
    /* The Phase Tag makes the entry new: stored last, with release. */
    __atomic_store_n(&e[3], cid | q->cq_phase << 16 | status << 17, __ATOMIC_RELEASE);
    q->cq_tail = next;
    if (next == 0)
        q->cq_phase ^= 1u;
    if (cid < q->entries && q->inflight[cid]) {
        q->inflight[cid] = 0;
        q->ninflight--;
    }
    count(fc, FC_COMPLETED, 1);
    return 1;
}

static void fetch(struct fc *fc, struct queue *q, uint64_t now)
{
    uint32_t tail = __atomic_load_n(q->sq_db, __ATOMIC_ACQUIRE);
    if (tail >= q->entries) {
        count(fc, FC_BAD_DOORBELL, 1);
        return;
    }
    while (q->sq_head != tail) {
        if (q->npending == q->entries) /* cannot happen unless the host overran the ring */
            break;
        struct cmd *c = &q->pending[q->npending++];
        memcpy(c->dw, q->sq + 16 * q->sq_head, 64);
        q->sq_head = q->sq_head + 1 == q->entries ? 0 : q->sq_head + 1;
        uint64_t nth = __atomic_add_fetch(&fc->stats[FC_FETCHED], 1, __ATOMIC_RELAXED);
        uint32_t cid = c->dw[0] >> 16;
        if (cid < q->entries) {
            if (q->inflight[cid])
                count(fc, FC_DUP_CID, 1);
            else {
                q->inflight[cid] = 1;
                q->ninflight++;
            }
        }
        if (q->ninflight > __atomic_load_n(&fc->stats[FC_MAX_INFLIGHT], __ATOMIC_RELAXED))
            __atomic_store_n(&fc->stats[FC_MAX_INFLIGHT], q->ninflight, __ATOMIC_RELAXED);
        uint32_t span = fc->cfg.delay_max_us > fc->cfg.delay_min_us ? fc->cfg.delay_max_us - fc->cfg.delay_min_us : 0;
        c->due = now + 1000ull * (fc->cfg.delay_min_us + (span ? (uint32_t)(rnd(fc) % (span + 1)) : 0));
        c->dropped = (fc->cfg.drop_nth && nth == fc->cfg.drop_nth) || (fc->cfg.drop_ppm && rnd(fc) % 1000000u < fc->cfg.drop_ppm);
        if (c->dropped)
            count(fc, FC_DROPPED, 1);
        uint32_t ppm = __atomic_load_n(&fc->cfg.error_ppm, __ATOMIC_RELAXED);
        c->fail = !c->dropped && ppm && rnd(fc) % 1000000u < ppm;
    }
}

/*
 * Complete what is due: with `reorder` > 1 a random one of the first `reorder` due commands each
 * time (out of order), else the first due one (in fetch order among those due; a dropped command
 * holds back only itself). `release` (status + 1) makes dropped commands due as well.
 */
static void complete_some(struct fc *fc, struct queue *q, uint64_t now, uint32_t release)
{
    const uint32_t window = fc->cfg.reorder > 1 ? (fc->cfg.reorder < 64 ? fc->cfg.reorder : 64) : 1;
    for (;;) {
        uint32_t cand[64], n = 0;
        for (uint32_t i = 0; i < q->npending && n < window; i++) {
            const struct cmd *c = &q->pending[i];
            if (c->dropped ? release != 0 : c->due <= now)
                cand[n++] = i;
        }
        if (n == 0)
            return;
        uint32_t pick = cand[n > 1 ? (uint32_t)(rnd(fc) % n) : 0];
        struct cmd *c = &q->pending[pick];
        uint32_t status;
        if (c->dropped)
            status = release - 1;
        else if (c->fail) {
            status = ST_UNRECOVERED_READ;
            count(fc, FC_ERRORS, 1);
        } else
            status = execute(fc, c->dw);
        if (!post(fc, q, c, status))
            return; /* CQ full: the host must consume first; the command stays pending */
        memmove(&q->pending[pick], &q->pending[pick + 1], (q->npending - pick - 1) * sizeof *c);
        q->npending--;
    }
}

static void *run(void *p)
{
    struct fc *fc = p;
    uint32_t idle = 0;
    while (!__atomic_load_n(&fc->stop, __ATOMIC_ACQUIRE)) {
        uint64_t now = now_ns();
        uint32_t release = __atomic_exchange_n(&fc->release, 0u, __ATOMIC_ACQ_REL);
        uint64_t before = __atomic_load_n(&fc->stats[FC_COMPLETED], __ATOMIC_RELAXED) + __atomic_load_n(&fc->stats[FC_FETCHED], __ATOMIC_RELAXED);
        uint32_t left = 0;
        for (uint32_t i = 0; i < fc->nqueues; i++) {
            struct queue *q = &fc->queues[i];
            fetch(fc, q, now);
            complete_some(fc, q, now, release);
            for (uint32_t k = 0; release && k < q->npending; k++)
                left += q->pending[k].dropped;
        }
        /* Dropped commands a full CQ held back are released on a later pass. */
        if (left)
            __atomic_store_n(&fc->release, release, __ATOMIC_RELEASE);
        if (__atomic_load_n(&fc->stats[FC_COMPLETED], __ATOMIC_RELAXED) + __atomic_load_n(&fc->stats[FC_FETCHED], __ATOMIC_RELAXED) != before)
            idle = 0;
        else if (++idle > 64)
            sched_yield(); /* the host's threads may need this CPU */
    }
    return NULL;
}

struct fc *fc_create(const struct fc_config *cfg, void *bar)
{
    if (!cfg || !bar || (cfg->lba_bytes != 512 && cfg->lba_bytes != 4096) || cfg->blocks == 0 || cfg->delay_max_us < cfg->delay_min_us)
        return NULL;
    struct fc *fc = calloc(1, sizeof *fc);
    if (!fc)
        return NULL;
    fc->cfg = *cfg;
    if (fc->cfg.nsid == 0)
        fc->cfg.nsid = 1;
    fc->disk = calloc(cfg->blocks, cfg->lba_bytes);
    fc->windows = calloc(MAX_WINDOWS, sizeof *fc->windows);
    fc->queues = calloc(MAX_QUEUES, sizeof *fc->queues);
    if (!fc->disk || !fc->windows || !fc->queues) {
        free(fc->disk);
        free(fc->windows);
        free(fc->queues);
        free(fc);
        return NULL;
    }
    fc->bar = bar;
    fc->rng = ((uint64_t)cfg->seed << 1 | 1) * 0x9e3779b97f4a7c15ull;
    return fc;
}

struct fc *fc_create_simple(uint32_t lba_bytes, uint32_t blocks, uint32_t delay_min_us, uint32_t delay_max_us, uint32_t reorder,
                            uint32_t error_ppm, uint32_t drop_ppm, uint32_t seed, uint32_t drop_nth, void *bar)
{
    struct fc_config c = {.lba_bytes = lba_bytes, .nsid = 1, .blocks = blocks, .delay_min_us = delay_min_us, .delay_max_us = delay_max_us,
                          .reorder = reorder, .error_ppm = error_ppm, .drop_ppm = drop_ppm, .seed = seed, .drop_nth = drop_nth};
    return fc_create(&c, bar);
}

int32_t fc_add_window(struct fc *fc, uint64_t bus, void *host, uint64_t bytes)
{
    if (fc->running || fc->nwindows == MAX_WINDOWS || !host || !bytes || bus + bytes < bus)
        return -EINVAL;
    uint32_t i = fc->nwindows;
    while (i > 0 && fc->windows[i - 1].bus > bus)
        i--;
    if ((i > 0 && fc->windows[i - 1].bus + fc->windows[i - 1].bytes > bus) || (i < fc->nwindows && bus + bytes > fc->windows[i].bus))
        return -EEXIST; /* windows are disjoint, as IOMMU mappings are */
    memmove(&fc->windows[i + 1], &fc->windows[i], (fc->nwindows - i) * sizeof *fc->windows);
    fc->windows[i] = (struct window){.bus = bus, .bytes = bytes, .host = host};
    fc->nwindows++;
    return 0;
}

int32_t fc_add_queue(struct fc *fc, uint32_t qid, void *sq, void *cq, uint32_t entries)
{
    if (fc->running || fc->nqueues == MAX_QUEUES || qid == 0 || qid > 1024 || !sq || !cq || entries < 2 || entries > 65536)
        return -EINVAL;
    struct queue *q = &fc->queues[fc->nqueues];
    memset(q, 0, sizeof *q);
    q->pending = calloc(entries, sizeof(struct cmd));
    q->inflight = calloc(entries, 1);
    if (!q->pending || !q->inflight) {
        free(q->pending);
        free(q->inflight);
        return -ENOMEM;
    }
    q->qid = qid;
    q->entries = entries;
    q->sq = sq;
    q->cq = cq;
    q->sq_db = fc->bar + (DOORBELLS + 8u * qid) / 4;
    q->cq_db = fc->bar + (DOORBELLS + 8u * qid + 4u) / 4;
    q->cq_phase = 1;
    fc->nqueues++;
    return 0;
}

int32_t fc_start(struct fc *fc)
{
    if (fc->running)
        return -EBUSY;
    __atomic_store_n(&fc->stop, 0u, __ATOMIC_RELEASE);
    int err = pthread_create(&fc->thread, NULL, run, fc);
    if (err)
        return -err;
    fc->running = 1;
    return 0;
}

int32_t fc_stop(struct fc *fc)
{
    if (!fc->running)
        return 0;
    __atomic_store_n(&fc->stop, 1u, __ATOMIC_RELEASE);
    pthread_join(fc->thread, NULL);
    fc->running = 0;
    return 0;
}

void fc_destroy(struct fc *fc)
{
    if (!fc)
        return;
    fc_stop(fc);
    for (uint32_t i = 0; i < fc->nqueues; i++) {
        free(fc->queues[i].pending);
        free(fc->queues[i].inflight);
    }
    free(fc->disk);
    free(fc->windows);
    free(fc->queues);
    free(fc);
}

int32_t fc_release_dropped(struct fc *fc, uint32_t status)
{
    __atomic_store_n(&fc->release, (status & 0x7fffu) + 1, __ATOMIC_RELEASE);
    return 0;
}

void fc_stats(struct fc *fc, uint64_t *out)
{
    for (int i = 0; i < FC_STATS; i++)
        out[i] = __atomic_load_n(&fc->stats[i], __ATOMIC_RELAXED);
}

void *fc_disk(struct fc *fc) { return fc->disk; }

void fc_set_error_ppm(struct fc *fc, uint32_t ppm) { __atomic_store_n(&fc->cfg.error_ppm, ppm, __ATOMIC_RELAXED); }
