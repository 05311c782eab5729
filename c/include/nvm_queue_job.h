/*
 * What an executor does with the queue core: the workloads GPU threads run in the CUDA kernels
 * (c/cuda/nvm_queue.cu), host threads run in host mode (c/src/queue.c), and the mock libcuda
 * runs for its "kernels" (test/cuda/mock-libcuda.c). One source for all three, like the core.
 *
 * Two workloads:
 *   BENCH  each executor keeps commands outstanding until a duration or a total count is reached:
 *          random or sequential LBAs, reads and/or writes. Writes carry a pattern that is a
 *          function of the LBA, so a read can be checked block by block (NVMQ_JOB_VERIFY).
 *          Latency (reserve to observed completion) goes into a log-linear histogram.
 *   LIST   a list of requests (SLBA, blocks, opcode, offset in the data buffer); each gets its
 *          status (0, the NVMe status, or NVMQ_REQ_*).
 * Two modes:
 *   SHARED every executor thread submits on its own (FIFO tickets; BaM-style), thread t on queue
 *          t % nqueues, keeping `depth` commands outstanding.
 *   COOP   one block per queue: `lanes` lanes each write one SQE, lane 0 reserves, publishes once
 *          and reaps; a barrier between the phases (GPU: __syncthreads(); host: one thread plays
 *          every lane in turn, NVMQ_LANES below).
 * Everything an executor writes goes to the `work` area (zeroed by the host) and the queues'
 * state blocks; the host reads them once the executors stopped.
 */
#ifndef NVM_QUEUE_JOB_H
#define NVM_QUEUE_JOB_H

#include "nvm_queue_core.h"

#define NVMQ_JOB_ABI 1u

#define NVMQ_JOB_BENCH 1u
#define NVMQ_JOB_LIST 2u

#define NVMQ_MODE_SHARED 1u
#define NVMQ_MODE_COOP 2u

/* struct nvmq_job.flags */
#define NVMQ_JOB_VERIFY 1u /* reads are checked against the LBA pattern, block by block */
#define NVMQ_JOB_SEQ 2u    /* bench: LBAs in order from one shared cursor instead of random */

/* struct nvmq_req.status beyond the 15-bit NVMe status */
#define NVMQ_REQ_TIMEOUT 0x10000u    /* its completion did not come in time: the queue broke */
#define NVMQ_REQ_BROKEN 0x20000u     /* not completed: its queue was broken (another wait, a stop) */
#define NVMQ_REQ_INVALID 0x40000u    /* the core could not express its data pointer */
#define NVMQ_REQ_NOT_RUN 0xffffffffu /* never sent (its executor stopped first) */

/* Latency histogram: 8 exact buckets (0..7 ns), then 8 per power of two up to 2^43 ns. */
#define NVMQ_HIST_SUB_BITS 3u
#define NVMQ_HIST_SUB 8u
#define NVMQ_HIST_BUCKETS (NVMQ_HIST_SUB + 40u * NVMQ_HIST_SUB)

/* The job, filled by the host; read-only for executors. lib/gpu/layout.ts mirrors it. */
struct nvmq_job {
    uint32_t abi, kind, mode, nqueues;
    uint32_t threads;  /* SHARED: executor threads; COOP: blocks (one per queue) */
    uint32_t lanes;    /* COOP: lanes per block; SHARED: 1 */
    uint32_t depth;    /* SHARED: commands each thread keeps outstanding; COOP: 1 */
    uint32_t nsid;
    uint32_t lba_bytes; /* LBA data size */
    uint32_t bs;        /* BENCH: bytes per command, a multiple of lba_bytes */
    uint32_t read_pct;  /* BENCH: share of reads, 0 to 100 */
    uint32_t flags;     /* NVMQ_JOB_* */
    uint32_t seed;
    uint32_t groups;    /* counter and histogram groups (executor e adds to group e % groups) */
    uint32_t nreqs;     /* LIST */
    uint32_t rsvd;
    uint64_t lba_first;   /* BENCH: first LBA of the range */
    uint64_t lba_span;    /* BENCH: LBAs in the range (commands start at multiples of bs/lba_bytes) */
    uint64_t ios;         /* BENCH: stop after this many commands in total (0: by time) */
    uint64_t duration_ns; /* BENCH: stop this long after the first executor started (0: by count) */
    uint64_t timeout_ns;  /* every wait's bound */
    uint64_t queues;      /* u64[nqueues]: executor address of each queue's struct nvmq */
    uint64_t data;        /* the data buffer, executor address */
    uint64_t data_bytes;
    uint64_t pages;       /* u64[data pages]: bus address of each 4 KiB page of the data buffer */
    uint64_t work;        /* executor-written area, nvmq_work_bytes() bytes, zeroed by the host */
    uint64_t reqs;        /* LIST: struct nvmq_req[nreqs] */
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_job) == 152, "struct nvmq_job: lib/gpu/layout.ts mirrors it");

struct nvmq_req {
    uint64_t slba;
    uint64_t offset; /* of the data in the buffer */
    uint32_t nlb;    /* blocks, 1 to 65536 */
    uint32_t opcode;
    uint32_t status; /* out: 0, NVMe status (SC | SCT << 8 | CRD | M | DNR), NVMQ_REQ_*; host sets NVMQ_REQ_NOT_RUN */
    uint32_t rsvd;
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_req) == 32, "struct nvmq_req: lib/gpu/layout.ts mirrors it");

/* Per group: what the executors of the group did. */
struct nvmq_group {
    uint64_t ios, reads, writes;
    uint64_t errors;        /* commands completed with a non-zero status */
    uint64_t timeouts;      /* waits that passed their deadline (each broke its queue) */
    uint64_t verify_errors; /* blocks read back that did not hold their pattern */
    uint64_t lat_sum_ns;
    uint64_t rsvd;
    uint32_t hist[NVMQ_HIST_BUCKETS];
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_group) == 64 + 4 * NVMQ_HIST_BUCKETS, "struct nvmq_group layout");

/* Head of the work area. */
struct nvmq_work {
    uint64_t start_ns;   /* executor clock when the first executor started (0 until then) */
    uint64_t end_ns;     /* last completion seen (max over executors, approximately) */
    uint64_t cursor;     /* commands taken (BENCH: count limit and the sequential cursor) */
    uint32_t exited;     /* executors (threads or blocks) that returned */
    uint32_t first_status; /* first non-zero NVMe status seen, 0 */
    uint64_t first_lba;    /* its SLBA (or the first block that failed verification) */
    uint32_t first_verify; /* 1 once a verification failure was recorded in first_lba */
    uint32_t first_opcode;
    uint64_t rsvd[2];
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_work) == 64, "struct nvmq_work layout");

/* Per executor lane: state kept across the phases of a block (COOP) or per outstanding command. */
struct nvmq_lane {
    struct nvmq_rec rec;
    uint64_t lba;
    uint64_t t_submit;
    uint64_t deadline;
    uint64_t rng;
    uint32_t opcode, ticket, active, req; /* active: a command is outstanding; req: LIST index */
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_lane) == 64, "struct nvmq_lane layout");

/* Per COOP block: what lane 0 tells the others after a barrier. */
struct nvmq_block {
    uint32_t go, n, t0, iter;
    uint64_t rsvd[2];
};

/* Lanes per executor, and how many lane records the work area holds. */
NVMQ_FN uint32_t nvmq_job_lanes_per(const struct nvmq_job *j)
{
    return j->mode == NVMQ_MODE_COOP ? j->lanes : j->depth;
}

/* Layout of the work area: head, groups, lanes, blocks. Returns its bytes (host and executors agree). */
NVMQ_FN uint64_t nvmq_work_layout(const struct nvmq_job *j, uint64_t *off_groups, uint64_t *off_lanes, uint64_t *off_blocks)
{
    uint64_t o = sizeof(struct nvmq_work);
    *off_groups = o;
    o += (uint64_t)j->groups * sizeof(struct nvmq_group);
    *off_lanes = o;
    o += (uint64_t)j->threads * nvmq_job_lanes_per(j) * sizeof(struct nvmq_lane);
    *off_blocks = o;
    o += (uint64_t)j->threads * sizeof(struct nvmq_block);
    return o;
}

/* ---- the pattern writes carry and reads are checked against --------------------------------------- */

NVMQ_FN uint32_t nvmq_pattern(uint64_t lba, uint32_t dword, uint32_t seed)
{
    uint32_t x = (uint32_t)lba * 0x9e3779b1u ^ (uint32_t)(lba >> 32) * 0x85ebca77u ^ dword * 0xc2b2ae3du ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

NVMQ_FN void nvmq_fill(uint32_t *dst, uint64_t lba, uint32_t blocks, uint32_t lba_bytes, uint32_t seed)
{
    const uint32_t per = lba_bytes / 4;
    for (uint32_t b = 0; b < blocks; b++)
        for (uint32_t i = 0; i < per; i++)
            dst[b * per + i] = nvmq_pattern(lba + b, i, seed);
}

/* Before a read: the first 16 bytes of each block become something no pattern holds for it. */
NVMQ_FN void nvmq_poison(uint32_t *dst, uint64_t lba, uint32_t blocks, uint32_t lba_bytes, uint32_t seed)
{
    const uint32_t per = lba_bytes / 4;
    for (uint32_t b = 0; b < blocks; b++)
        for (uint32_t i = 0; i < 4 && i < per; i++)
            dst[b * per + i] = ~nvmq_pattern(lba + b, i, seed);
}

/* Blocks of a read that do not hold their pattern; *first gets the first such LBA. */
NVMQ_FN uint32_t nvmq_check(const uint32_t *src, uint64_t lba, uint32_t blocks, uint32_t lba_bytes, uint32_t seed, uint64_t *first)
{
    const uint32_t per = lba_bytes / 4;
    uint32_t bad = 0;
    for (uint32_t b = 0; b < blocks; b++) {
        for (uint32_t i = 0; i < per; i++) {
            if (nvmq_dma_load((uint32_t *)&src[b * per + i]) != nvmq_pattern(lba + b, i, seed)) {
                if (bad == 0)
                    *first = lba + b;
                bad++;
                break;
            }
        }
    }
    return bad;
}

/* ---- accounting -------------------------------------------------------------------------------- */

NVMQ_FN uint32_t nvmq_hist_bucket(uint64_t ns)
{
    if (ns < NVMQ_HIST_SUB)
        return (uint32_t)ns;
#if defined(__CUDA_ARCH__)
    uint32_t e = 63u - (uint32_t)__clzll((long long)ns); /* >= 3 */
#else
    uint32_t e = 63u - (uint32_t)__builtin_clzll(ns);
#endif
    if (e > 42u)
        return NVMQ_HIST_BUCKETS - 1;
    uint32_t sub = (uint32_t)(ns >> (e - NVMQ_HIST_SUB_BITS)) & (NVMQ_HIST_SUB - 1);
    return NVMQ_HIST_SUB + (e - NVMQ_HIST_SUB_BITS) * NVMQ_HIST_SUB + sub;
}

/* Executor-view pointers of a job, resolved once per executor. */
struct nvmq_ctx {
    const struct nvmq_job *j;
    struct nvmq_work *w;
    struct nvmq_group *groups;
    struct nvmq_lane *lanes;
    struct nvmq_block *blocks;
    unsigned char *data;
    const uint64_t *pages;
    struct nvmq_req *reqs;
};

NVMQ_FN void nvmq_ctx_bind(struct nvmq_ctx *c, const struct nvmq_job *j)
{
    uint64_t og, ol, ob;
    nvmq_work_layout(j, &og, &ol, &ob);
    unsigned char *w = (unsigned char *)NVMQ_ADDR(j->work);
    c->j = j;
    c->w = (struct nvmq_work *)w;
    c->groups = (struct nvmq_group *)(w + og);
    c->lanes = (struct nvmq_lane *)(w + ol);
    c->blocks = (struct nvmq_block *)(w + ob);
    c->data = (unsigned char *)NVMQ_ADDR(j->data);
    c->pages = (const uint64_t *)NVMQ_ADDR(j->pages);
    c->reqs = j->reqs ? (struct nvmq_req *)NVMQ_ADDR(j->reqs) : (struct nvmq_req *)0;
}

NVMQ_FN void nvmq_bind_queue(const struct nvmq_ctx *c, uint32_t qi, struct nvmq_view *v)
{
    const uint64_t *qs = (const uint64_t *)NVMQ_ADDR(c->j->queues);
    nvmq_bind(v, (struct nvmq *)NVMQ_ADDR(qs[qi]));
}

NVMQ_FN void nvmq_note_error(const struct nvmq_ctx *c, uint32_t status, uint64_t lba, uint32_t opcode)
{
    uint32_t zero = 0;
    if (nvmq_cas(&c->w->first_status, &zero, status, NVMQ_ACQREL, NVMQ_DEV)) {
        c->w->first_lba = lba;
        c->w->first_opcode = opcode;
    }
}

NVMQ_FN void nvmq_note_bad_block(const struct nvmq_ctx *c, uint64_t lba)
{
    uint32_t zero = 0;
    if (nvmq_cas(&c->w->first_verify, &zero, 1u, NVMQ_ACQREL, NVMQ_DEV) && nvmq_load(&c->w->first_status, NVMQ_ACQ, NVMQ_DEV) == 0)
        c->w->first_lba = lba;
}

/* A completed command of a bench lane: counters, histogram, verification. */
NVMQ_FN void nvmq_account(const struct nvmq_ctx *c, struct nvmq_group *g, struct nvmq_lane *l, uint32_t region, uint64_t now)
{
    const struct nvmq_job *j = c->j;
    uint64_t lat = now - l->t_submit;
    uint32_t write = l->opcode == 0x01u;
    nvmq_fetch_add(&g->ios, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
    nvmq_fetch_add(write ? &g->writes : &g->reads, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
    nvmq_fetch_add(&g->lat_sum_ns, lat, NVMQ_RLX, NVMQ_DEV);
    nvmq_fetch_add(&g->hist[nvmq_hist_bucket(lat)], 1u, NVMQ_RLX, NVMQ_DEV);
    if (l->rec.status != 0) {
        nvmq_fetch_add(&g->errors, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
        nvmq_note_error(c, l->rec.status, l->lba, l->opcode);
    } else if (!write && (j->flags & NVMQ_JOB_VERIFY)) {
        uint64_t first = 0;
        uint32_t bad = nvmq_check((const uint32_t *)(c->data + (uint64_t)region * j->bs), l->lba, j->bs / j->lba_bytes, j->lba_bytes, j->seed, &first);
        if (bad) {
            nvmq_fetch_add(&g->verify_errors, (uint64_t)bad, NVMQ_RLX, NVMQ_DEV);
            nvmq_note_bad_block(c, first);
        }
    }
}

/* xorshift64*: one state word per lane, nothing allocated. */
NVMQ_FN uint64_t nvmq_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

NVMQ_FN uint64_t nvmq_seed(uint32_t seed, uint32_t who)
{
    uint64_t s = ((uint64_t)seed << 32 | (who + 1u)) * 0x9e3779b97f4a7c15ull;
    return s ? s : 1;
}

/*
 * Pick the next bench command for lane `l` (region `region` of the data buffer): its LBA and
 * opcode, and prepare the data (pattern for a write, poison for a checked read). 0 when the job
 * has no more commands to give (count reached or time up).
 */
NVMQ_FN int nvmq_next_bench(const struct nvmq_ctx *c, struct nvmq_lane *l, uint32_t region, uint64_t now)
{
    const struct nvmq_job *j = c->j;
    const uint32_t bpc = j->bs / j->lba_bytes;
    const uint64_t slots = j->lba_span / bpc;
    if (j->duration_ns && now - nvmq_load(&c->w->start_ns, NVMQ_RLX, NVMQ_DEV) >= j->duration_ns)
        return 0;
    uint64_t idx = 0;
    if (j->ios || (j->flags & NVMQ_JOB_SEQ)) {
        idx = nvmq_fetch_add(&c->w->cursor, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
        if (j->ios && idx >= j->ios)
            return 0;
    }
    uint64_t slot = (j->flags & NVMQ_JOB_SEQ) ? idx % slots : nvmq_rand(&l->rng) % slots;
    l->lba = j->lba_first + slot * bpc;
    l->opcode = (uint32_t)(nvmq_rand(&l->rng) % 100u) < j->read_pct ? 0x02u : 0x01u;
    uint32_t *dst = (uint32_t *)(c->data + (uint64_t)region * j->bs);
    if (l->opcode == 0x01u)
        nvmq_fill(dst, l->lba, bpc, j->lba_bytes, j->seed);
    else if (j->flags & NVMQ_JOB_VERIFY)
        nvmq_poison(dst, l->lba, bpc, j->lba_bytes, j->seed);
    return 1;
}

NVMQ_FN void nvmq_io_for(const struct nvmq_ctx *c, struct nvmq_io *io, uint32_t opcode, uint64_t slba, uint32_t nlb, uint64_t offset)
{
    io->opcode = opcode;
    io->nsid = c->j->nsid;
    io->slba = slba;
    io->nlb = nlb;
    io->cdw12 = 0;
    io->bytes = nlb * c->j->lba_bytes;
    io->rsvd = 0;
    io->offset = offset;
    io->pages = c->pages;
}

NVMQ_FN void nvmq_started(const struct nvmq_ctx *c)
{
    uint64_t zero = 0;
    nvmq_cas(&c->w->start_ns, &zero, nvmq_now(), NVMQ_ACQREL, NVMQ_DEV);
}

NVMQ_FN void nvmq_exited(const struct nvmq_ctx *c, uint64_t last)
{
    /* end_ns: the latest completion any executor saw; a racy max is enough for a duration. */
    if (last > nvmq_load(&c->w->end_ns, NVMQ_RLX, NVMQ_DEV))
        nvmq_store(&c->w->end_ns, last, NVMQ_RLX, NVMQ_DEV);
    nvmq_fetch_add(&c->w->exited, 1u, NVMQ_ACQREL, NVMQ_SYS);
}

/* ---- SHARED mode: one executor thread --------------------------------------------------------- */

NVMQ_FN void nvmq_shared_bench(const struct nvmq_ctx *c, uint32_t t)
{
    const struct nvmq_job *j = c->j;
    struct nvmq_view v;
    nvmq_bind_queue(c, t % j->nqueues, &v);
    struct nvmq_group *g = &c->groups[t % j->groups];
    struct nvmq_lane *lanes = &c->lanes[(uint64_t)t * j->depth];
    const uint32_t bpc = j->bs / j->lba_bytes;
    for (uint32_t k = 0; k < j->depth; k++) {
        lanes[k].rng = nvmq_seed(j->seed, t * j->depth + k);
        lanes[k].active = 0;
    }
    /* Clock reads: one per batch issued and one per batch of completions (as IoQueue does), and
     * one every 64th empty poll for the deadlines; not one per command or per poll. */
    uint64_t now = nvmq_now(), last = now;
    uint32_t outstanding = 0, stopping = 0, step = 0, backoff = 0, idle = 0;
    for (;;) {
        /* Issue into every idle lane, then publish the batch once. */
        uint32_t issued = 0, last_ticket = 0;
        if (!stopping && outstanding < j->depth) {
            const uint64_t t_batch = nvmq_now();
            for (uint32_t k = 0; k < j->depth; k++) {
                struct nvmq_lane *l = &lanes[k];
                if (l->active)
                    continue;
                const uint32_t region = t * j->depth + k;
                if (!nvmq_next_bench(c, l, region, t_batch)) {
                    stopping = 1;
                    break;
                }
                uint32_t ticket;
                l->t_submit = t_batch;
                int r = nvmq_reserve(&v, 1, t_batch + j->timeout_ns, &ticket);
                if (r == NVMQ_ETIMEDOUT)
                    nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                if (r != NVMQ_OK) {
                    stopping = 1;
                    break;
                }
                struct nvmq_io io;
                nvmq_io_for(c, &io, l->opcode, l->lba, bpc, (uint64_t)region * j->bs);
                if (nvmq_write(&v, ticket, &io, &l->rec) != NVMQ_OK) {
                    /* The reserved ticket can never be published: nobody may wait behind it. */
                    nvmq_break(&v, NVMQ_BROKEN_PUBLISH, v.slotcid[ticket & v.mask]);
                    stopping = 1;
                    break;
                }
                l->ticket = ticket;
                l->deadline = t_batch + j->timeout_ns;
                l->active = 1;
                outstanding++;
                issued++;
                last_ticket = ticket;
            }
            if (issued) {
                int r = nvmq_publish(&v, last_ticket, t_batch + j->timeout_ns);
                if (r == NVMQ_ETIMEDOUT)
                    nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                if (r != NVMQ_OK)
                    break;
            }
        }
        if (outstanding == 0)
            break;
        /* Reap, then account every lane whose command completed. */
        nvmq_reap(&v);
        uint32_t completed = 0;
        for (uint32_t k = 0; k < j->depth; k++) {
            struct nvmq_lane *l = &lanes[k];
            if (!l->active || !nvmq_done(&l->rec))
                continue;
            if (completed++ == 0)
                now = nvmq_now();
            l->active = 0;
            outstanding--;
            last = now;
            nvmq_account(c, g, l, t * j->depth + k, now);
        }
        if (completed) {
            backoff = 0;
            idle = 0;
            continue;
        }
        if (nvmq_broken(&v) || nvmq_stopped(&v, ++step))
            break;
        if ((++idle & 63u) == 0) {
            now = nvmq_now();
            for (uint32_t k = 0; k < j->depth; k++) {
                if (lanes[k].active && now > lanes[k].deadline && !nvmq_done(&lanes[k].rec)) {
                    nvmq_break(&v, NVMQ_BROKEN_WAIT, lanes[k].rec.cid);
                    nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                    stopping = 1;
                    break;
                }
            }
            if (nvmq_broken(&v))
                break;
        }
        if (outstanding == j->depth || stopping)
            nvmq_pause(&backoff);
    }
    nvmq_exited(c, last);
}

NVMQ_FN void nvmq_shared_list(const struct nvmq_ctx *c, uint32_t t)
{
    const struct nvmq_job *j = c->j;
    struct nvmq_view v;
    nvmq_bind_queue(c, t % j->nqueues, &v);
    struct nvmq_group *g = &c->groups[t % j->groups];
    struct nvmq_lane *l = &c->lanes[(uint64_t)t * j->depth];
    uint64_t last = nvmq_now();
    for (uint32_t i = t; i < j->nreqs; i += j->threads) {
        struct nvmq_req *rq = &c->reqs[i];
        struct nvmq_io io;
        nvmq_io_for(c, &io, rq->opcode, rq->slba, rq->nlb, rq->offset);
        uint32_t ticket;
        l->t_submit = nvmq_now();
        int r = nvmq_reserve(&v, 1, l->t_submit + j->timeout_ns, &ticket);
        if (r == NVMQ_OK && nvmq_write(&v, ticket, &io, &l->rec) != NVMQ_OK) {
            nvmq_break(&v, NVMQ_BROKEN_PUBLISH, v.slotcid[ticket & v.mask]);
            rq->status = NVMQ_REQ_INVALID;
            break;
        }
        if (r == NVMQ_OK)
            r = nvmq_publish(&v, ticket, nvmq_now() + j->timeout_ns);
        if (r == NVMQ_OK)
            r = nvmq_wait(&v, &l->rec, nvmq_now() + j->timeout_ns);
        if (r != NVMQ_OK) {
            if (r == NVMQ_ETIMEDOUT)
                nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
            rq->status = r == NVMQ_ETIMEDOUT ? NVMQ_REQ_TIMEOUT : NVMQ_REQ_BROKEN;
            break;
        }
        last = nvmq_now();
        rq->status = l->rec.status;
        nvmq_fetch_add(&g->ios, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
        nvmq_fetch_add(rq->opcode == 0x01u ? &g->writes : &g->reads, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
        nvmq_fetch_add(&g->lat_sum_ns, last - l->t_submit, NVMQ_RLX, NVMQ_DEV);
        nvmq_fetch_add(&g->hist[nvmq_hist_bucket(last - l->t_submit)], 1u, NVMQ_RLX, NVMQ_DEV);
        if (l->rec.status) {
            nvmq_fetch_add(&g->errors, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
            nvmq_note_error(c, l->rec.status, rq->slba, rq->opcode);
        }
    }
    nvmq_exited(c, last);
}

/* Executor thread `t` of a SHARED job (GPU: the global thread index). */
NVMQ_FN void nvmq_job_thread(const struct nvmq_job *j, uint32_t t)
{
    if (t >= j->threads)
        return;
    struct nvmq_ctx c;
    nvmq_ctx_bind(&c, j);
    nvmq_started(&c);
    if (j->kind == NVMQ_JOB_BENCH)
        nvmq_shared_bench(&c, t);
    else
        nvmq_shared_list(&c, t);
}

/* ---- COOP mode: one block per queue ----------------------------------------------------------- */

/*
 * The lanes of a block run the code between NVMQ_LANES_BEGIN and NVMQ_LANES_END: on the GPU each
 * thread of the block is one lane and the block meets at a barrier after it; on the host one
 * thread runs the body once per lane (which is the barrier). Lane state that must survive a
 * barrier lives in the work area (struct nvmq_lane), not in locals.
 */
#if defined(__CUDA_ARCH__)
#define NVMQ_LANES_BEGIN(lane, n)   \
    {                               \
        const uint32_t lane = threadIdx.x; \
        if (lane < (n)) {
#define NVMQ_LANES_END \
    }                  \
    __syncthreads();   \
    }
#define NVMQ_LANE0 (threadIdx.x == 0)
#else
#define NVMQ_LANES_BEGIN(lane, n) for (uint32_t lane = 0; lane < (n); lane++) {
#define NVMQ_LANES_END }
#define NVMQ_LANE0 1
#endif

/*
 * Block `b` of a COOP job: queue b, `lanes` lanes. Each round: lane 0 reserves n tickets, every
 * lane writes its SQE, lane 0 publishes them with one doorbell and waits for all n (reaping), then
 * every lane accounts for its own command. `go` decides, uniformly for the block, whether to go on.
 */
NVMQ_FN void nvmq_job_block(const struct nvmq_job *j, uint32_t b)
{
    if (b >= j->threads)
        return;
    struct nvmq_ctx c;
    nvmq_ctx_bind(&c, j);
    struct nvmq_view v;
    nvmq_bind_queue(&c, b % j->nqueues, &v);
    struct nvmq_block *blk = &c.blocks[b];
    struct nvmq_lane *lanes = &c.lanes[(uint64_t)b * j->lanes];
    struct nvmq_group *g = &c.groups[b % j->groups];
    const uint32_t bench = j->kind == NVMQ_JOB_BENCH;
    const uint32_t bpc = bench ? j->bs / j->lba_bytes : 0;
    if (NVMQ_LANE0) {
        nvmq_started(&c);
        blk->iter = 0;
    }
    NVMQ_LANES_BEGIN(lane, j->lanes)
    lanes[lane].rng = nvmq_seed(j->seed, b * j->lanes + lane);
    lanes[lane].active = 0;
    NVMQ_LANES_END
    uint64_t last = nvmq_now();
    for (;;) {
        /* Phase 1, lane 0: how many lanes have a command this round, and their tickets. */
        if (NVMQ_LANE0) {
            uint32_t n = 0;
            uint64_t now = nvmq_now();
            for (uint32_t l = 0; l < j->lanes; l++) {
                struct nvmq_lane *ln = &lanes[l];
                if (bench) {
                    if (!nvmq_next_bench(&c, ln, b * j->lanes + l, now))
                        break;
                } else {
                    uint32_t i = (blk->iter * j->threads + b) * j->lanes + l;
                    if (i >= j->nreqs)
                        break;
                    ln->req = i;
                }
                n++;
            }
            blk->n = n;
            blk->go = 0;
            if (n > 0 && !nvmq_broken(&v)) {
                uint32_t t0;
                uint64_t t_submit = nvmq_now();
                int r = nvmq_reserve(&v, n, t_submit + j->timeout_ns, &t0);
                if (r == NVMQ_ETIMEDOUT)
                    nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                if (r == NVMQ_OK) {
                    blk->t0 = t0;
                    blk->go = 1;
                    for (uint32_t l = 0; l < n; l++)
                        lanes[l].t_submit = t_submit;
                }
            }
        }
        NVMQ_LANES_BEGIN(lane, 1)
        NVMQ_LANES_END
        if (!blk->go)
            break;
        /* Phase 2, every lane: its SQE. */
        NVMQ_LANES_BEGIN(lane, blk->n)
        struct nvmq_lane *ln = &lanes[lane];
        struct nvmq_io io;
        if (bench) {
            nvmq_io_for(&c, &io, ln->opcode, ln->lba, bpc, (uint64_t)(b * j->lanes + lane) * j->bs);
        } else {
            const struct nvmq_req *rq = &c.reqs[ln->req];
            nvmq_io_for(&c, &io, rq->opcode, rq->slba, rq->nlb, rq->offset);
            ln->opcode = rq->opcode;
            ln->lba = rq->slba;
        }
        ln->ticket = blk->t0 + lane;
        ln->active = nvmq_write(&v, ln->ticket, &io, &ln->rec) == NVMQ_OK;
        if (!ln->active)
            nvmq_break(&v, NVMQ_BROKEN_PUBLISH, v.slotcid[ln->ticket & v.mask]);
        NVMQ_LANES_END
        /* Phase 3, lane 0: one doorbell for the round, then every completion of it. */
        if (NVMQ_LANE0) {
            const uint32_t n = blk->n;
            int r = nvmq_publish(&v, blk->t0 + n - 1, nvmq_now() + j->timeout_ns);
            for (uint32_t l = 0; l < n && r == NVMQ_OK; l++)
                r = nvmq_wait(&v, &lanes[l].rec, lanes[l].t_submit + j->timeout_ns);
            if (r == NVMQ_ETIMEDOUT)
                nvmq_fetch_add(&g->timeouts, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
            if (r != NVMQ_OK)
                blk->go = 0;
            blk->iter++;
        }
        NVMQ_LANES_BEGIN(lane, 1)
        NVMQ_LANES_END
        /* Phase 4, every lane: its own completion (or why there was none). */
        NVMQ_LANES_BEGIN(lane, blk->n)
        struct nvmq_lane *ln = &lanes[lane];
        uint64_t now = nvmq_now();
        const uint32_t done = ln->active && nvmq_done(&ln->rec);
        if (bench) {
            if (done)
                nvmq_account(&c, g, ln, b * j->lanes + lane, now);
        } else {
            struct nvmq_req *rq = &c.reqs[ln->req];
            if (done) {
                rq->status = ln->rec.status;
                nvmq_fetch_add(&g->ios, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                nvmq_fetch_add(rq->opcode == 0x01u ? &g->writes : &g->reads, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                nvmq_fetch_add(&g->lat_sum_ns, now - ln->t_submit, NVMQ_RLX, NVMQ_DEV);
                nvmq_fetch_add(&g->hist[nvmq_hist_bucket(now - ln->t_submit)], 1u, NVMQ_RLX, NVMQ_DEV);
                if (ln->rec.status) {
                    nvmq_fetch_add(&g->errors, (uint64_t)1, NVMQ_RLX, NVMQ_DEV);
                    nvmq_note_error(&c, ln->rec.status, rq->slba, rq->opcode);
                }
            } else {
                const uint32_t why = nvmq_load(&v.q->broken.v, NVMQ_ACQ, NVMQ_DEV);
                const uint32_t mine = nvmq_load(&v.q->broken_cid.v, NVMQ_ACQ, NVMQ_DEV) == ln->rec.cid;
                rq->status = !ln->active ? NVMQ_REQ_INVALID : why == NVMQ_BROKEN_WAIT && mine ? NVMQ_REQ_TIMEOUT : NVMQ_REQ_BROKEN;
            }
        }
        if (done)
            last = now;
        ln->active = 0;
        NVMQ_LANES_END
        if (!blk->go)
            break;
    }
    if (NVMQ_LANE0)
        nvmq_exited(&c, last);
}

#endif
