/*
 * The queue core (c/include/nvm_queue_core.h) compiled for the host, run by the host-mode runner
 * (c/src/queue.c: the threads libnvm starts), against the fake controller thread (fake-ctrl.c).
 * test/unit/queue-core.test.ts builds it with ThreadSanitizer and runs every scenario; it also
 * builds it with the ready[] store weakened to relaxed (-DNVMQ_ORDER_READY=NVMQ_RLX) and expects
 * ThreadSanitizer to report the race that store prevents. bench/queue-core.ts builds it optimised
 * without TSan and runs --bench.
 *
 * One line per scenario: "core: ok <name> <what held>" or "core: FAIL <name> <what did not>",
 * then "core: N passed, M failed"; exit 1 on any failure.
 *
 *   core-suite [--only NAME[,NAME...]] [--list]     the scenarios
 *   core-suite --bench [--seconds S]                 commands/s per submitting thread, no faults
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fake-ctrl.h"
#include "nvm_native.h"
#include "nvm_queue_job.h"

#define PAGE 4096u
#define BAR_BYTES (16u * 1024u)
#define DATA_BUS 0x4000000000ull  /* fake bus addresses: far from any host address */
#define LIST_BUS 0x8000000000ull
#define MAX_Q 16

/* c/src/queue.c reports errno through this (c/src/mmio.c defines it in libnvm-native.so). */
__thread int32_t nvm_errno_tls;

static int passed, failed;
static char why[512];

static void fail_if(int cond, const char *fmt, ...)
{
    if (!cond || why[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
}

static void *zalloc(size_t bytes)
{
    void *p = aligned_alloc(PAGE, (bytes + PAGE - 1) / PAGE * PAGE);
    if (!p) {
        perror("aligned_alloc");
        exit(2);
    }
    memset(p, 0, (bytes + PAGE - 1) / PAGE * PAGE);
    return p;
}

struct scenario {
    const char *name;
    const char *what;
    /* fake controller */
    uint32_t lba_bytes, delay_min_us, delay_max_us, reorder, error_ppm, drop_ppm, drop_nth;
    /* queues and job */
    uint32_t queues, entries, mode, threads, lanes, depth, bs, read_pct, flags;
    uint64_t ios, duration_ms, timeout_ms;
    /* host stops the run after this many ms (0: never) */
    uint32_t stop_after_ms;
    /* expectations */
    int expect_broken; /* 0: no queue breaks; else the reason at least one queue must give */
    int fill_first;    /* write the pattern over the whole range first (sequential, verified after) */
    int list;          /* LIST job of mixed sizes instead of BENCH */
};

struct rig {
    const struct scenario *sc;
    uint32_t *bar;
    struct fc *fc;
    uint64_t blocks;
    void *sq[MAX_Q], *cq[MAX_Q], *lists[MAX_Q];
    uint64_t *lists_bus[MAX_Q];
    struct nvmq *state[MAX_Q];
    uint64_t queue_addrs[MAX_Q];
    uint32_t stop;
    unsigned char *data;
    uint64_t data_bytes;
    uint64_t *pages;
};

static void rig_build(struct rig *r, const struct scenario *sc, uint64_t data_bytes, uint32_t blocks)
{
    memset(r, 0, sizeof *r);
    r->sc = sc;
    r->blocks = blocks;
    r->bar = zalloc(BAR_BYTES);
    struct fc_config cfg = {.lba_bytes = sc->lba_bytes, .nsid = 1, .blocks = blocks, .delay_min_us = sc->delay_min_us,
                            .delay_max_us = sc->delay_max_us, .reorder = sc->reorder, .error_ppm = sc->error_ppm,
                            .drop_ppm = sc->drop_ppm, .seed = 7, .drop_nth = sc->drop_nth};
    r->fc = fc_create(&cfg, r->bar);
    if (!r->fc) {
        fprintf(stderr, "fc_create failed\n");
        exit(2);
    }
    /* Data pages get bus addresses in reverse order, one IOMMU window each: a PRP built as if the
     * buffer were contiguous on the bus lands outside every window. */
    r->data_bytes = (data_bytes + PAGE - 1) / PAGE * PAGE;
    r->data = zalloc(r->data_bytes);
    uint64_t npages = r->data_bytes / PAGE;
    r->pages = zalloc(npages * 8);
    for (uint64_t i = 0; i < npages; i++) {
        r->pages[i] = DATA_BUS + (npages - 1 - i) * 2 * PAGE;
        if (fc_add_window(r->fc, r->pages[i], r->data + i * PAGE, PAGE) != 0) {
            fprintf(stderr, "fc_add_window data %llu failed\n", (unsigned long long)i);
            exit(2);
        }
    }
    for (uint32_t q = 0; q < sc->queues; q++) {
        const uint32_t e = sc->entries;
        r->sq[q] = zalloc((size_t)e * 64);
        r->cq[q] = zalloc((size_t)e * 16);
        r->lists[q] = zalloc((size_t)e * PAGE);
        r->lists_bus[q] = zalloc((size_t)e * 8);
        for (uint32_t s = 0; s < e; s++)
            r->lists_bus[q][s] = LIST_BUS + ((uint64_t)q << 28) + (uint64_t)s * PAGE;
        if (fc_add_window(r->fc, r->lists_bus[q][0], r->lists[q], (uint64_t)e * PAGE) != 0 ||
            fc_add_queue(r->fc, q + 1, r->sq[q], r->cq[q], e) != 0) {
            fprintf(stderr, "fake queue %u setup failed\n", q + 1);
            exit(2);
        }
        r->state[q] = zalloc(nvm_q_state_bytes(e));
        struct nvmq_init_desc d = {.entries = e, .sqid = q + 1, .flags = 0, .sq_tail = 0, .sq_head = 0, .cq_head = 0, .cq_phase = 1,
                                   .sq = (uintptr_t)r->sq[q], .cq = (uintptr_t)r->cq[q],
                                   .sq_db = (uintptr_t)(r->bar + (0x1000 + 8 * (q + 1)) / 4),
                                   .cq_db = (uintptr_t)(r->bar + (0x1000 + 8 * (q + 1) + 4) / 4),
                                   .lists = (uintptr_t)r->lists[q], .lists_bus = (uintptr_t)r->lists_bus[q],
                                   .stop = (uintptr_t)&r->stop, .timeout_ns = sc->timeout_ms * 1000000ull};
        if (nvm_q_init(r->state[q], &d) != 0) {
            fprintf(stderr, "nvm_q_init failed\n");
            exit(2);
        }
        r->queue_addrs[q] = (uintptr_t)r->state[q];
    }
    if (fc_start(r->fc) != 0) {
        fprintf(stderr, "fc_start failed\n");
        exit(2);
    }
}

static void rig_free(struct rig *r)
{
    fc_destroy(r->fc);
    for (uint32_t q = 0; q < r->sc->queues; q++) {
        free(r->sq[q]);
        free(r->cq[q]);
        free(r->lists[q]);
        free(r->lists_bus[q]);
        free(r->state[q]);
    }
    free(r->data);
    free(r->pages);
    free(r->bar);
}

struct outcome {
    uint64_t ios, reads, writes, errors, timeouts, verify_errors;
    uint64_t fc[FC_STATS];
    double seconds;
    uint32_t broken_queues, broken_reason, busy_slots, bad_cqes;
    uint64_t doorbells;
    int joined;
};

/* Run `job` on the rig's queues with the host-mode runner; bounded by `bound_ms`. */
static void run_job(struct rig *r, struct nvmq_job *job, struct outcome *o, uint32_t bound_ms)
{
    memset(o, 0, sizeof *o);
    uint32_t bytes = nvm_q_work_bytes(job);
    void *work = zalloc(bytes);
    job->work = (uintptr_t)work;
    uint64_t t0 = nvmq_now();
    void *run = nvm_q_start(job);
    if (!run) {
        fail_if(1, "nvm_q_start failed: errno %d", nvm_errno_tls);
        free(work);
        return;
    }
    const struct scenario *sc = r->sc;
    int stopped = 0;
    for (;;) {
        if (nvm_q_join(run, 20) == 0) {
            o->joined = 1;
            break;
        }
        uint64_t ms = (nvmq_now() - t0) / 1000000;
        if (sc->stop_after_ms && !stopped && ms >= sc->stop_after_ms) {
            __atomic_store_n(&r->stop, 1u, __ATOMIC_RELEASE);
            stopped = 1;
        }
        if (ms > bound_ms) {
            /* A hang: stop everything, report, and give the executors one more bound to leave. */
            __atomic_store_n(&r->stop, 1u, __ATOMIC_RELEASE);
            fail_if(1, "the run did not end within %u ms (executors still running: %u of %u done)", bound_ms, nvm_q_done(run), job->threads);
            o->joined = nvm_q_join(run, 5000) == 0;
            if (!o->joined) {
                printf("core: FAIL hang: executors did not stop; aborting the suite\n");
                fflush(stdout);
                _exit(1);
            }
            break;
        }
    }
    o->seconds = (double)(nvmq_now() - t0) / 1e9;
    uint64_t og, ol, ob;
    nvmq_work_layout(job, &og, &ol, &ob);
    const struct nvmq_group *g = (const struct nvmq_group *)((unsigned char *)work + og);
    for (uint32_t i = 0; i < job->groups; i++) {
        o->ios += g[i].ios;
        o->reads += g[i].reads;
        o->writes += g[i].writes;
        o->errors += g[i].errors;
        o->timeouts += g[i].timeouts;
        o->verify_errors += g[i].verify_errors;
    }
    for (uint32_t q = 0; q < sc->queues; q++) {
        struct nvmq *s = r->state[q];
        if (s->broken.v) {
            o->broken_queues++;
            o->broken_reason = s->broken.v;
        }
        o->bad_cqes += s->bad_cqes.v;
        o->doorbells += s->doorbells.v;
        const uint32_t *busy = (const uint32_t *)((unsigned char *)s + s->off_busy);
        for (uint32_t k = 0; k < s->entries; k++)
            o->busy_slots += busy[k] != 0;
    }
    fc_stats(r->fc, o->fc);
    free(work);
}

static void job_defaults(struct nvmq_job *j, struct rig *r, uint32_t kind)
{
    const struct scenario *sc = r->sc;
    memset(j, 0, sizeof *j);
    j->abi = NVMQ_JOB_ABI;
    j->kind = kind;
    j->mode = sc->mode;
    j->nqueues = sc->queues;
    j->threads = sc->mode == NVMQ_MODE_COOP ? sc->queues : sc->threads;
    j->lanes = sc->mode == NVMQ_MODE_COOP ? sc->lanes : 1;
    j->depth = sc->mode == NVMQ_MODE_COOP ? 1 : sc->depth;
    j->nsid = 1;
    j->lba_bytes = sc->lba_bytes;
    j->bs = sc->bs;
    j->read_pct = sc->read_pct;
    j->flags = sc->flags;
    j->seed = 0x5eed;
    j->groups = j->threads;
    j->lba_first = 0;
    j->lba_span = r->blocks;
    j->ios = sc->ios;
    j->duration_ns = sc->duration_ms * 1000000ull;
    j->timeout_ns = sc->timeout_ms * 1000000ull;
    j->queues = (uintptr_t)r->queue_addrs;
    j->data = (uintptr_t)r->data;
    j->data_bytes = r->data_bytes;
    j->pages = (uintptr_t)r->pages;
}

/* Every block of the RAM disk holds its pattern (what the fill wrote). Returns the first bad LBA or -1. */
static int64_t disk_bad_block(struct rig *r, uint32_t seed)
{
    const uint32_t *d = fc_disk(r->fc);
    const uint32_t per = r->sc->lba_bytes / 4;
    for (uint64_t b = 0; b < r->blocks; b++)
        for (uint32_t i = 0; i < per; i++)
            if (d[b * per + i] != nvmq_pattern(b, i, seed))
                return (int64_t)b;
    return -1;
}

static void common_checks(const struct scenario *sc, const struct outcome *o)
{
    fail_if(o->fc[FC_DUP_CID] != 0, "%llu CIDs were fetched while already in flight", (unsigned long long)o->fc[FC_DUP_CID]);
    fail_if(o->fc[FC_BAD_DOORBELL] != 0, "%llu doorbell values out of range", (unsigned long long)o->fc[FC_BAD_DOORBELL]);
    fail_if(o->fc[FC_BAD_PRP] != 0, "%llu data pointers outside the IOMMU windows or misaligned", (unsigned long long)o->fc[FC_BAD_PRP]);
    fail_if(o->fc[FC_MAX_INFLIGHT] > sc->entries - 1, "%llu commands in flight on a queue of %u entries", (unsigned long long)o->fc[FC_MAX_INFLIGHT], sc->entries);
    fail_if(o->bad_cqes != 0, "%u completions for CIDs not outstanding", o->bad_cqes);
    fail_if(!o->joined, "the executors were not joined");
}

static void report(const char *name, const char *detail)
{
    if (why[0]) {
        failed++;
        printf("core: FAIL %s %s\n", name, why);
    } else {
        passed++;
        printf("core: ok %s %s\n", name, detail);
    }
    fflush(stdout);
    why[0] = 0;
}

static void bench_scenario(const struct scenario *sc)
{
    const uint32_t regions = sc->mode == NVMQ_MODE_COOP ? sc->queues * sc->lanes : sc->threads * sc->depth;
    const uint32_t blocks = 8192;
    struct rig r;
    rig_build(&r, sc, (uint64_t)regions * sc->bs, blocks);
    struct nvmq_job job;
    struct outcome o;
    char detail[512] = "";
    if (sc->fill_first) {
        /* Sequential pattern writes over the whole range, then a check of the disk itself; no
         * injected errors while filling (a failed write would leave a block without its pattern). */
        fc_set_error_ppm(r.fc, 0);
        job_defaults(&job, &r, NVMQ_JOB_BENCH);
        job.flags = NVMQ_JOB_SEQ;
        job.read_pct = 0;
        job.ios = blocks / (sc->bs / sc->lba_bytes);
        job.duration_ns = 0;
        run_job(&r, &job, &o, 60000);
        common_checks(sc, &o);
        fail_if(o.ios != job.ios, "fill: %llu of %llu writes completed", (unsigned long long)o.ios, (unsigned long long)job.ios);
        fail_if(o.errors != o.fc[FC_ERRORS], "fill: %llu errors reported, %llu injected", (unsigned long long)o.errors, (unsigned long long)o.fc[FC_ERRORS]);
        int64_t bad = o.fc[FC_ERRORS] ? -1 : disk_bad_block(&r, job.seed);
        fail_if(bad >= 0, "fill: LBA %lld on the disk does not hold its pattern", (long long)bad);
    }
    fc_set_error_ppm(r.fc, sc->error_ppm);
    job_defaults(&job, &r, NVMQ_JOB_BENCH);
    uint64_t fetched_before = o.fc[FC_FETCHED] * (sc->fill_first != 0);
    uint64_t errors_before = o.fc[FC_ERRORS] * (sc->fill_first != 0);
    uint32_t bound = (uint32_t)(sc->duration_ms + 3 * sc->timeout_ms + 30000);
    run_job(&r, &job, &o, bound);
    common_checks(sc, &o);
    const uint64_t injected = o.fc[FC_ERRORS] - errors_before;
    fail_if(o.errors != injected, "%llu errors reported, %llu injected", (unsigned long long)o.errors, (unsigned long long)injected);
    fail_if(o.verify_errors != 0, "%llu blocks read back without their pattern", (unsigned long long)o.verify_errors);
    if (sc->expect_broken) {
        fail_if(o.broken_queues == 0, "no queue broke (expected reason %d)", sc->expect_broken);
        fail_if(o.broken_reason != (uint32_t)sc->expect_broken && !(sc->expect_broken == NVMQ_BROKEN_WAIT && o.broken_reason == NVMQ_BROKEN_RESERVE),
                "a queue broke for reason %u, expected %d", o.broken_reason, sc->expect_broken);
        if (sc->expect_broken != NVMQ_BROKEN_STOP) {
            fail_if(o.timeouts == 0, "no timeout was reported");
            fail_if(o.busy_slots == 0, "no slot is left busy for the host to end");
        }
    } else {
        fail_if(o.broken_queues != 0, "%u queue(s) broke (reason %u)", o.broken_queues, o.broken_reason);
        fail_if(o.timeouts != 0, "%llu timeouts", (unsigned long long)o.timeouts);
        fail_if(o.busy_slots != 0, "%u slots still busy after the run", o.busy_slots);
        fail_if(sc->ios && o.ios != sc->ios, "%llu of %llu commands completed", (unsigned long long)o.ios, (unsigned long long)sc->ios);
        fail_if(o.fc[FC_COMPLETED] != o.fc[FC_FETCHED], "the controller fetched %llu commands and completed %llu",
                (unsigned long long)o.fc[FC_FETCHED], (unsigned long long)o.fc[FC_COMPLETED]);
        fail_if(o.ios != o.fc[FC_FETCHED] - fetched_before, "%llu commands accounted, %llu fetched", (unsigned long long)o.ios,
                (unsigned long long)(o.fc[FC_FETCHED] - fetched_before));
    }
    snprintf(detail, sizeof detail,
             "(%s): %llu commands in %.2f s, %llu doorbells, %llu errors = injected, %llu timeouts, %u broken queue(s), %u busy slot(s), "
             "CQ-full waits %llu, max in flight %llu of %u",
             sc->what, (unsigned long long)o.ios, o.seconds, (unsigned long long)o.doorbells, (unsigned long long)o.errors,
             (unsigned long long)o.timeouts, o.broken_queues, o.busy_slots, (unsigned long long)o.fc[FC_CQ_FULL],
             (unsigned long long)o.fc[FC_MAX_INFLIGHT], sc->entries - 1);
    rig_free(&r);
    report(sc->name, detail);
}

/* LIST jobs: requests of 1 block up to a PRP list of 257 pages, at offsets inside pages; data compared. */
static void list_scenario(const struct scenario *sc)
{
    const uint32_t n = 200, lba = sc->lba_bytes;
    /* Bytes per request: within a page, across two, a PRP list of 2 to 257 pages. */
    const uint32_t sizes[] = {512, 1024, 3584, 4096, 4608, 8192, 32768, 257 * 4096};
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += (sizes[i % 8] < lba ? lba : sizes[i % 8]) + 512;
    struct rig r;
    const uint32_t blocks = 65536;
    rig_build(&r, sc, bytes, blocks);
    struct nvmq_req *reqs = zalloc(n * sizeof *reqs);
    unsigned char *expect = zalloc(r.data_bytes);
    uint64_t off = 0, lba_at = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nlb = sizes[i % 8] < lba ? 1 : sizes[i % 8] / lba;
        reqs[i] = (struct nvmq_req){.slba = lba_at, .offset = off + (i % 3) * 4, .nlb = nlb, .opcode = 0x01, .status = NVMQ_REQ_NOT_RUN};
        for (uint64_t k = 0; k < (uint64_t)nlb * lba; k++)
            r.data[reqs[i].offset + k] = expect[reqs[i].offset + k] = (unsigned char)(k * 31 + i);
        off += (uint64_t)nlb * lba + 512;
        lba_at += nlb;
    }
    fail_if(lba_at > blocks, "scenario too large");
    struct nvmq_job job;
    struct outcome o;
    job_defaults(&job, &r, NVMQ_JOB_LIST);
    job.depth = 1;
    job.reqs = (uintptr_t)reqs;
    job.nreqs = n;
    run_job(&r, &job, &o, 60000);
    common_checks(sc, &o);
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++)
        bad += reqs[i].status != 0;
    fail_if(bad, "%u of %u writes did not complete with success (first: %u)", bad, n, reqs[0].status);
    /* What the writes put on the disk, block by block, is what the buffer held. */
    const unsigned char *disk = fc_disk(r.fc);
    for (uint32_t i = 0; i < n && !why[0]; i++)
        fail_if(memcmp(disk + reqs[i].slba * lba, expect + reqs[i].offset, (size_t)reqs[i].nlb * lba) != 0, "write %u (LBA %llu, %u blocks) put other bytes on the disk", i,
                (unsigned long long)reqs[i].slba, reqs[i].nlb);
    /* Read everything back into a cleared buffer. */
    memset(r.data, 0, r.data_bytes);
    for (uint32_t i = 0; i < n; i++) {
        reqs[i].opcode = 0x02;
        reqs[i].status = NVMQ_REQ_NOT_RUN;
    }
    job_defaults(&job, &r, NVMQ_JOB_LIST);
    job.depth = 1;
    job.reqs = (uintptr_t)reqs;
    job.nreqs = n;
    run_job(&r, &job, &o, 60000);
    common_checks(sc, &o);
    bad = 0;
    for (uint32_t i = 0; i < n; i++)
        bad += reqs[i].status != 0;
    fail_if(bad, "%u of %u reads did not complete with success", bad, n);
    for (uint32_t i = 0; i < n && !why[0]; i++)
        fail_if(memcmp(r.data + reqs[i].offset, expect + reqs[i].offset, (size_t)reqs[i].nlb * lba) != 0, "read %u (LBA %llu) brought other bytes", i,
                (unsigned long long)reqs[i].slba);
    char detail[256];
    snprintf(detail, sizeof detail, "(%s): %u writes and %u reads of 1 to 257 pages at offsets inside pages, data compared, %llu doorbells", sc->what, n, n,
             (unsigned long long)o.doorbells);
    free(reqs);
    free(expect);
    rig_free(&r);
    report(sc->name, detail);
}

#define SHARED NVMQ_MODE_SHARED
#define COOP NVMQ_MODE_COOP
#define VERIFY NVMQ_JOB_VERIFY

static const struct scenario SCENARIOS[] = {
    {.name = "shared-verify", .what = "8 threads x depth 4 on 2 queues of 64, fill then verified random reads", .lba_bytes = 512,
     .queues = 2, .entries = 64, .mode = SHARED, .threads = 8, .depth = 4, .bs = 4096, .read_pct = 100, .flags = VERIFY, .ios = 6000,
     .timeout_ms = 20000, .fill_first = 1},
    {.name = "tiny-queue", .what = "16 threads on one queue of 2 entries: the SQ is always full, the phase wraps every completion",
     .lba_bytes = 512, .queues = 1, .entries = 2, .mode = SHARED, .threads = 16, .depth = 1, .bs = 512, .read_pct = 50, .ios = 3000,
     .timeout_ms = 20000},
    {.name = "contention", .what = "32 threads x depth 2 on one queue of 8 (FIFO tickets under contention)", .lba_bytes = 4096, .queues = 1,
     .entries = 8, .mode = SHARED, .threads = 32, .depth = 2, .bs = 4096, .read_pct = 70, .ios = 6000, .timeout_ms = 20000},
    {.name = "reorder-delay", .what = "completions out of order within 16, 0-200 us late, 1% errors; 4 queues of 32",
     .lba_bytes = 4096, .delay_min_us = 0, .delay_max_us = 200, .reorder = 16, .error_ppm = 10000, .queues = 4, .entries = 32,
     .mode = SHARED, .threads = 12, .depth = 3, .bs = 8192, .read_pct = 100, .flags = VERIFY, .ios = 4000, .timeout_ms = 20000,
     .fill_first = 1},
    {.name = "large-prp", .what = "64 KiB commands (PRP lists in each slot's list page), verified", .lba_bytes = 512, .queues = 2,
     .entries = 16, .mode = SHARED, .threads = 4, .depth = 2, .bs = 65536, .read_pct = 100, .flags = VERIFY, .ios = 1500,
     .timeout_ms = 20000, .fill_first = 1},
    {.name = "coop", .what = "cooperative mode: 3 blocks of 31 lanes on queues of 32, one doorbell per round, verified", .lba_bytes = 512,
     .reorder = 8, .queues = 3, .entries = 32, .mode = COOP, .lanes = 31, .bs = 4096, .read_pct = 100, .flags = VERIFY, .ios = 6000,
     .timeout_ms = 20000, .fill_first = 1},
    {.name = "drop-shared", .what = "the 200th command never completes: its deadline fires, the queue breaks, every thread leaves",
     .lba_bytes = 512, .drop_nth = 200, .queues = 1, .entries = 16, .mode = SHARED, .threads = 16, .depth = 2, .bs = 512, .read_pct = 100,
     .duration_ms = 5000, .timeout_ms = 300, .expect_broken = NVMQ_BROKEN_WAIT},
    {.name = "drop-coop", .what = "cooperative mode with 0.1% of completions never coming: bounded exits", .lba_bytes = 512,
     .drop_ppm = 1000, .queues = 2, .entries = 16, .mode = COOP, .lanes = 8, .bs = 512, .read_pct = 100, .duration_ms = 5000,
     .timeout_ms = 300, .expect_broken = NVMQ_BROKEN_WAIT},
    {.name = "stop", .what = "the host sets the stop word mid-run: every executor leaves", .lba_bytes = 512, .delay_min_us = 20,
     .delay_max_us = 50, .queues = 2, .entries = 16, .mode = SHARED, .threads = 8, .depth = 2, .bs = 512, .read_pct = 100,
     .duration_ms = 60000, .timeout_ms = 20000, .stop_after_ms = 300, .expect_broken = NVMQ_BROKEN_STOP},
    {.name = "list", .what = "LIST jobs, 6 threads on 3 queues of 8", .lba_bytes = 512, .reorder = 4, .queues = 3, .entries = 8,
     .mode = SHARED, .threads = 6, .depth = 1, .bs = 512, .timeout_ms = 20000, .list = 1},
    {.name = "list-coop", .what = "LIST jobs in cooperative mode, 2 blocks of 7 lanes", .lba_bytes = 4096, .reorder = 4, .queues = 2,
     .entries = 8, .mode = COOP, .lanes = 7, .bs = 4096, .timeout_ms = 20000, .list = 1},
};
#define NSCEN (sizeof SCENARIOS / sizeof SCENARIOS[0])

static void bench(double seconds)
{
    printf("core-bench: commands/s against the fake controller (no delay, no faults), 4 KiB reads, %.1f s per row\n", seconds);
    printf("%-7s %-8s %-7s %-6s %-7s %12s %14s %12s\n", "mode", "threads", "depth", "queues", "entries", "commands/s", "per thread", "doorbells/cmd");
    static const uint32_t rows[][5] = {
        /* mode, threads, depth, queues, entries */
        {SHARED, 1, 1, 1, 64},  {SHARED, 1, 8, 1, 64},   {SHARED, 1, 32, 1, 64}, {SHARED, 2, 1, 1, 64}, {SHARED, 2, 16, 2, 64},
        {SHARED, 4, 1, 1, 64},  {SHARED, 4, 8, 1, 64},   {SHARED, 8, 4, 2, 64},  {SHARED, 16, 2, 1, 64}, {COOP, 1, 32, 1, 64},
        {COOP, 2, 32, 2, 64},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct scenario sc = {.name = "bench", .what = "bench", .lba_bytes = 512, .queues = rows[i][3], .entries = rows[i][4],
                              .mode = rows[i][0], .threads = rows[i][1], .depth = rows[i][2], .lanes = rows[i][2], .bs = 4096,
                              .read_pct = 100, .duration_ms = (uint64_t)(seconds * 1000), .timeout_ms = 20000};
        const uint32_t regions = sc.mode == COOP ? sc.queues * sc.lanes : sc.threads * sc.depth;
        struct rig r;
        rig_build(&r, &sc, (uint64_t)regions * sc.bs, 8192);
        struct nvmq_job job;
        struct outcome o;
        job_defaults(&job, &r, NVMQ_JOB_BENCH);
        run_job(&r, &job, &o, (uint32_t)(seconds * 1000) + 30000);
        const uint32_t submitters = sc.mode == COOP ? sc.queues : sc.threads;
        double rate = (double)o.ios / o.seconds;
        printf("%-7s %-8u %-7u %-6u %-7u %12.0f %14.0f %12.3f%s\n", sc.mode == COOP ? "coop" : "shared", submitters, sc.mode == COOP ? sc.lanes : sc.depth,
               sc.queues, sc.entries, rate, rate / submitters, o.ios ? (double)o.doorbells / (double)o.ios : 0.0, why[0] ? "  FAILED" : "");
        if (why[0])
            printf("core-bench: %s\n", why);
        why[0] = 0;
        fflush(stdout);
        rig_free(&r);
    }
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    int do_bench = 0;
    double seconds = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--bench"))
            do_bench = 1;
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--list")) {
            for (size_t k = 0; k < NSCEN; k++)
                printf("%s\n", SCENARIOS[k].name);
            return 0;
        } else {
            fprintf(stderr, "usage: %s [--only NAME,...] [--list] | --bench [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (do_bench) {
        bench(seconds);
        return 0;
    }
    for (size_t k = 0; k < NSCEN; k++) {
        const struct scenario *sc = &SCENARIOS[k];
        if (only) {
            char list[512];
            snprintf(list, sizeof list, ",%s,", only);
            char key[96];
            snprintf(key, sizeof key, ",%s,", sc->name);
            if (!strstr(list, key))
                continue;
        }
        if (sc->list)
            list_scenario(sc);
        else
            bench_scenario(sc);
    }
    printf("core: %d passed, %d failed\n", passed, failed);
    return failed || passed == 0 ? 1 : 0;
}
