/*
 * The C reference driver of bench/perf-c.ts (part of libnvm-bench.so, never of libnvm-native.so):
 * examples/perf.ts's low-level job (examples/perf-engine.ts, runJob) written in C, over an I/O
 * queue pair that TypeScript created through the ordinary controller bring-up and hands over as
 * addresses. What differs between the two is then only the submit/complete loop and its
 * bookkeeping, so `bun run bench:guest` can put them side by side in one boot.
 *
 * Same work as TypeScript, step by step:
 * - workload: xorshift32 LBAs (isWrite() drawn before nextLba(), as the engine does), sequential
 *   slots wrapping at the end of the span, `qd` commands kept outstanding, warm-up then a measured
 *   window ended by time or by a command count;
 * - per command, as IoQueue.acquire/rw/post: a CID from a free stack and a completion credit, the
 *   checks of rw() (CID state, NLB, SLBA, bytes = blocks x LBA size, buffer span, MDTS), all 16
 *   SQE dwords, PRP1/PRP2 from the buffer's per-page bus addresses or a PRP list in the CID's own
 *   list page, tracker state, opcode, SLBA, NLB and a deadline from the clock reading the refill
 *   was given (IoQueue.batchTime); one SQ doorbell per refill behind a release fence;
 * - per completion, as IoCompletionQueue.poll/IoQueue.complete: phase first (acquire load), then
 *   DW2 and DW0, SQ head from SQHD, the SQ id checked, the CID checked and freed, the completion
 *   handler called through a function pointer (it queues the CID, as the engine's onComplete), one
 *   CQ head doorbell per non-empty poll;
 * - latency: one clock read per non-empty poll: every completion reaped ends then, and every
 *   command of the refill that follows starts then; recorded, after the refill's doorbell, in the
 *   engine's log-linear histogram (64 sub-buckets per power of two, exact below 64 ns);
 * - the clock is read every 256 empty polls too, for the end of the run and for the no-completion
 *   deadline, and every 50 ms the shared stop flag is checked (where the engine yields to its
 *   event loop).
 *
 * Parameters and results travel as doubles (addresses of user memory are below 2^53): one call,
 * not a hot path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define API __attribute__((visibility("default")))

#define SQE_DWORDS 16
#define CQE_DWORDS 4
#define PAGE 4096u
#define PRP_PER_PAGE (PAGE / 8)

/* The engine's histogram (examples/perf-engine.ts): keep the three in step. */
#define SUB_BITS 6
#define SUB (1u << SUB_BITS)
#define GROUPS 42
#define HIST_BUCKETS (SUB + GROUPS * SUB)
#define MAX_EXP (SUB_BITS + GROUPS - 1)

/* Engine constants: hybrid polling after 64 empty polls, a look at the stop flag every 50 ms. */
#define IDLE_POLLS 64
#define YIELD_NS 50000000ull

/* Parameter slots (bench/perf-c-engine.ts, PerfParam). */
enum {
    P_SQ, P_SQ_ENTRIES, P_SQ_TAIL, P_SQ_HEAD, P_SQ_DB,
    P_CQ, P_CQ_ENTRIES, P_CQ_HEAD, P_CQ_PHASE, P_CQ_DB,
    P_BAR0, P_SQID, P_DEPTH, P_TIMEOUT_MS, P_MAX_TRANSFER,
    P_BUF, P_BUF_SIZE, P_BUF_IOVA,
    P_LISTS, P_LIST_IOVA, P_LIST_BYTES,
    P_NSID, P_LBA_SIZE, P_FIRST_LBA, P_SPAN_BLOCKS, P_BS, P_QD,
    P_SEQ, P_RW, P_RWMIX_READ, P_SECONDS, P_IOS, P_WARMUP, P_SEED, P_IDLE_SLEEP_US, P_TURNAROUND_DELAY_US,
    P_PROGRESS, P_INDEX,
    P_COUNT
};

/* Result slots (PerfOut); the histogram's counts follow from R_HIST. */
enum {
    R_STATUS, R_IOS, R_READS, R_WRITES, R_ERRORS, R_FIRST_STATUS, R_FIRST_CID, R_FIRST_OPCODE,
    R_SECONDS, R_COUNT, R_SUM, R_MIN, R_MAX, R_INTERRUPTED,
    R_SQ_TAIL, R_SQ_HEAD, R_CQ_HEAD, R_CQ_PHASE, R_TIMEOUT_OUTSTANDING, R_WARMUP,
    R_POLLS, R_REAPS, R_SUBMITS,
    R_HIST = 32
};

API uint32_t nvm_bench_perf_layout(uint32_t what)
{
    switch (what) {
    case 0: return P_COUNT;
    case 1: return R_HIST;
    case 2: return HIST_BUCKETS;
    default: return 0;
    }
}

enum { ST_FREE = 0, ST_ACQUIRED = 1, ST_INFLIGHT = 2 };
enum { OPC_WRITE = 1, OPC_READ = 2 };

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct hist {
    double *counts;
    double count, sum, min, max;
};

static uint32_t bucket_of(uint64_t v)
{
    if (v < SUB) return (uint32_t)v;
    int e = 63 - __builtin_clzll(v);
    if (e > MAX_EXP) e = MAX_EXP;
    uint64_t top = v >> (e - SUB_BITS);
    if (top > 2 * SUB - 1) top = 2 * SUB - 1;
    return SUB + (uint32_t)(e - SUB_BITS) * SUB + (uint32_t)(top - SUB);
}

/* The bucket of `ns` (hi:lo), for the test that holds it to the engine's bucketOf(). */
API uint32_t nvm_bench_perf_bucket(uint32_t lo, uint32_t hi)
{
    return bucket_of((uint64_t)hi << 32 | lo);
}

static inline void hist_record(struct hist *h, uint64_t ns)
{
    h->counts[bucket_of(ns)] += 1;
    h->count += 1;
    h->sum += (double)ns;
    if ((double)ns < h->min) h->min = (double)ns;
    if ((double)ns > h->max) h->max = (double)ns;
}

struct job;
typedef void (*completion_fn)(struct job *j, uint32_t cid, uint32_t status, uint32_t dw0);

/* The queue's side: IoQueue + IoCompletionQueue. */
struct job {
    uint32_t *sq;
    uint32_t sq_entries, tail, sq_head;
    const volatile uint32_t *cq;
    uint32_t cq_entries, cq_head, phase;
    volatile uint32_t *sq_db, *cq_db;
    uint32_t sqid, depth;
    uint16_t *free_stack;
    uint32_t free_top, credits, inflight;
    uint8_t *state, *opcode;
    uint32_t *nlb;
    uint64_t *slba, *deadline;
    uint64_t batch_start; /* 0: nothing posted since the last doorbell */
    uint64_t timeout_ns;
    uint32_t max_transfer;
    /* Data buffer: size, per-4 KiB-page bus addresses (lo, hi). */
    uint64_t buf_size;
    const uint32_t *buf_iova;
    /* PRP list pages: list_bytes per CID, virtual and bus addresses per page. */
    uint32_t *lists;
    const uint32_t *list_iova;
    uint32_t list_bytes;
    uint32_t nsid, lba_size;
    completion_fn handler;
    /* The engine's side: per CID when it started and whether it wrote; per completion reaped, the
     * same copied (the refill reuses the CID before the bookkeeping). */
    uint64_t *start;
    uint8_t *wrote;
    uint64_t *done_start;
    uint8_t *done_wrote;
    uint32_t n_done;
    uint64_t errors;
    int32_t first_status;
    uint32_t first_cid, first_opcode;
};

static void on_complete(struct job *j, uint32_t cid, uint32_t status, uint32_t dw0)
{
    (void)dw0;
    j->done_start[j->n_done] = j->start[cid];
    j->done_wrote[j->n_done++] = j->wrote[cid];
    if (status != 0 && j->errors++ == 0) {
        j->first_status = (int32_t)status;
        j->first_cid = cid;
        j->first_opcode = j->wrote[cid] ? OPC_WRITE : OPC_READ;
    }
}

static inline int acquire(struct job *j)
{
    if (j->free_top == 0 || j->credits == 0) return -1;
    uint32_t cid = j->free_stack[--j->free_top];
    j->state[cid] = ST_ACQUIRED;
    j->credits--;
    return (int)cid;
}

/* Bus address of byte `off` of the data buffer. */
static inline uint64_t buf_bus(const struct job *j, uint64_t off)
{
    uint64_t p = off / PAGE;
    return ((uint64_t)j->buf_iova[2 * p] | ((uint64_t)j->buf_iova[2 * p + 1] << 32)) + off % PAGE;
}

/* DPTR for `bytes` at `off`: PRP1/PRP2, or PRP2 pointing at the CID's list (chained past 511 entries). */
static inline void data_pointer(struct job *j, uint32_t *e, uint32_t cid, uint64_t off, uint32_t bytes)
{
    uint64_t prp1 = buf_bus(j, off), prp2 = 0;
    uint32_t first = PAGE - (uint32_t)(off % PAGE);
    if (bytes > first) {
        if (bytes <= first + PAGE) {
            prp2 = buf_bus(j, off + first);
        } else {
            uint32_t list0 = cid * j->list_bytes;
            uint32_t lp = list0, slot = 0;
            uint64_t page = off + first;
            int64_t remaining = (int64_t)bytes - first;
            while (remaining > 0) {
                if (slot == PRP_PER_PAGE - 1 && remaining > PAGE) {
                    uint32_t next = (lp + PAGE) / PAGE;
                    uint64_t nb = (uint64_t)j->list_iova[2 * next] | ((uint64_t)j->list_iova[2 * next + 1] << 32);
                    uint32_t *u = j->lists + (lp + slot * 8) / 4;
                    u[0] = (uint32_t)nb;
                    u[1] = (uint32_t)(nb >> 32);
                    lp += PAGE;
                    slot = 0;
                }
                uint64_t a = buf_bus(j, page);
                uint32_t *u = j->lists + (lp + slot * 8) / 4;
                u[0] = (uint32_t)a;
                u[1] = (uint32_t)(a >> 32);
                slot++;
                page += PAGE;
                remaining -= PAGE;
            }
            uint32_t l = list0 / PAGE;
            prp2 = (uint64_t)j->list_iova[2 * l] | ((uint64_t)j->list_iova[2 * l + 1] << 32);
        }
    }
    e[6] = (uint32_t)prp1;
    e[7] = (uint32_t)(prp1 >> 32);
    e[8] = (uint32_t)prp2;
    e[9] = (uint32_t)(prp2 >> 32);
}

/* IoQueue.rw + post: checks, the SQE in place, the tracker. -EINVAL when a check fails. */
static inline int rw(struct job *j, uint32_t cid, uint32_t opcode, uint64_t slba, uint32_t blocks, uint64_t off, uint32_t bytes)
{
    if (cid >= j->depth || j->state[cid] != ST_ACQUIRED || blocks < 1 || blocks > 65536 || slba > (1ull << 53) - 1 ||
        (uint64_t)blocks * j->lba_size != bytes || off % 4 || bytes == 0 || bytes > j->max_transfer || off + bytes > j->buf_size)
        return -EINVAL;
    uint32_t *e = j->sq + j->tail * SQE_DWORDS;
    e[0] = (opcode & 0xff) | (cid << 16);
    e[1] = j->nsid;
    e[2] = 0;
    e[3] = 0;
    e[4] = 0;
    e[5] = 0;
    e[13] = 0;
    e[14] = 0;
    e[15] = 0;
    e[10] = (uint32_t)slba;
    e[11] = (uint32_t)(slba >> 32);
    e[12] = (blocks - 1) & 0xffff;
    data_pointer(j, e, cid, off, bytes);
    if (j->batch_start == 0) j->batch_start = now_ns();
    j->state[cid] = ST_INFLIGHT;
    j->deadline[cid] = j->batch_start + j->timeout_ns;
    j->opcode[cid] = (uint8_t)opcode;
    j->inflight++;
    j->tail = j->tail + 1 == j->sq_entries ? 0 : j->tail + 1;
    j->slba[cid] = slba;
    j->nlb[cid] = blocks;
    return 0;
}

static inline void submit(struct job *j)
{
    j->batch_start = 0;
    /* The SQ entries were written by ordinary stores: they reach memory before the new tail. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *j->sq_db = j->tail;
}

/* IoCompletionQueue.poll with IoQueue.complete: reap all, one CQ head doorbell. */
static inline uint32_t poll_cq(struct job *j)
{
    uint32_t n = 0;
    for (;;) {
        const volatile uint32_t *e = j->cq + j->cq_head * CQE_DWORDS;
        /* Phase first; the rest of the entry is valid only after it. */
        uint32_t dw3 = __atomic_load_n((const uint32_t *)&e[3], __ATOMIC_ACQUIRE);
        if (((dw3 >> 16) & 1) != j->phase) break;
        uint32_t dw2 = e[2], dw0 = e[0];
        if (++j->cq_head == j->cq_entries) {
            j->cq_head = 0;
            j->phase ^= 1;
        }
        n++;
        if ((dw2 >> 16) != j->sqid) continue; /* not this SQ's: the CQ is not shared here */
        j->sq_head = dw2 & 0xffff;
        uint32_t cid = dw3 & 0xffff;
        if (cid >= j->depth || j->state[cid] != ST_INFLIGHT) continue; /* stale or unknown */
        j->state[cid] = ST_FREE;
        j->free_stack[j->free_top++] = (uint16_t)cid;
        j->credits++;
        j->inflight--;
        j->handler(j, cid, dw3 >> 17, dw0);
    }
    if (n) {
        __atomic_thread_fence(__ATOMIC_RELEASE);
        *j->cq_db = j->cq_head;
    }
    return n;
}

/* xorshift32, as the engine's rand32(). */
static inline uint32_t rand32(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

#define PTR(p, i) ((void *)(uintptr_t)(p)[i])

/*
 * Run the job; `p` holds P_COUNT parameters, `out` R_HIST + HIST_BUCKETS doubles. Returns 0, or
 * -EINVAL (bad parameters), -ENOMEM, -ETIMEDOUT (no completion within the queue's timeout with
 * commands outstanding: the controller still owns them, so the caller must reset it). R_STATUS
 * holds the same value.
 */
API int32_t nvm_bench_perf_run(const double *p, double *out)
{
    if (!p || !out) return -EINVAL;
    memset(out, 0, sizeof(double) * (R_HIST + HIST_BUCKETS));
    struct job j;
    memset(&j, 0, sizeof(j));
    j.sq = PTR(p, P_SQ);
    j.sq_entries = (uint32_t)p[P_SQ_ENTRIES];
    j.tail = (uint32_t)p[P_SQ_TAIL];
    j.sq_head = (uint32_t)p[P_SQ_HEAD];
    j.cq = PTR(p, P_CQ);
    j.cq_entries = (uint32_t)p[P_CQ_ENTRIES];
    j.cq_head = (uint32_t)p[P_CQ_HEAD];
    j.phase = (uint32_t)p[P_CQ_PHASE];
    char *bar0 = PTR(p, P_BAR0);
    j.sq_db = (volatile uint32_t *)(bar0 + (uint32_t)p[P_SQ_DB]);
    j.cq_db = (volatile uint32_t *)(bar0 + (uint32_t)p[P_CQ_DB]);
    j.sqid = (uint32_t)p[P_SQID];
    j.depth = (uint32_t)p[P_DEPTH];
    j.timeout_ns = (uint64_t)(p[P_TIMEOUT_MS] * 1e6);
    j.max_transfer = (uint32_t)p[P_MAX_TRANSFER];
    j.buf_size = (uint64_t)p[P_BUF_SIZE];
    j.buf_iova = PTR(p, P_BUF_IOVA);
    j.lists = PTR(p, P_LISTS);
    j.list_iova = PTR(p, P_LIST_IOVA);
    j.list_bytes = (uint32_t)p[P_LIST_BYTES];
    j.nsid = (uint32_t)p[P_NSID];
    j.lba_size = (uint32_t)p[P_LBA_SIZE];
    j.handler = on_complete;
    j.first_status = -1;
    const uint64_t first_lba = (uint64_t)p[P_FIRST_LBA], span = (uint64_t)p[P_SPAN_BLOCKS];
    const uint32_t bs = (uint32_t)p[P_BS], qd = (uint32_t)p[P_QD];
    const int seq = p[P_SEQ] != 0;
    const int rw_kind = (int)p[P_RW]; /* 0 read, 1 write, 2 mix */
    const double seconds = p[P_SECONDS], warmup = p[P_WARMUP];
    const double limit = p[P_IOS] > 0 ? p[P_IOS] : INFINITY;
    const uint64_t idle_sleep_ns = (uint64_t)(p[P_IDLE_SLEEP_US] * 1000);
    const uint64_t delay_ns = (uint64_t)(p[P_TURNAROUND_DELAY_US] * 1000);
    volatile double *progress = PTR(p, P_PROGRESS);
    const uint32_t base = 1 + 3 * (uint32_t)p[P_INDEX];

    if (!j.sq || !j.cq || !bar0 || !j.buf_iova || !j.lists || !j.list_iova || j.sq_entries < 2 || j.cq_entries < 2 || j.depth < 1 ||
        j.depth > 0xffff || qd < 1 || qd > j.depth || bs == 0 || j.lba_size == 0 || bs % j.lba_size || (uint64_t)j.depth * bs > j.buf_size ||
        span < bs / j.lba_size || j.list_bytes < PAGE)
        return (int32_t)(out[R_STATUS] = -EINVAL);
    const uint32_t blocks = bs / j.lba_size;
    const uint64_t slots = span / blocks;

    int rc = -ENOMEM;
    j.free_stack = calloc(j.depth, sizeof(uint16_t));
    j.state = calloc(j.depth, 1);
    j.opcode = calloc(j.depth, 1);
    j.nlb = calloc(j.depth, sizeof(uint32_t));
    j.slba = calloc(j.depth, sizeof(uint64_t));
    j.deadline = calloc(j.depth, sizeof(uint64_t));
    j.start = calloc(j.depth, sizeof(uint64_t));
    j.wrote = calloc(j.depth, 1);
    j.done_start = calloc(j.depth, sizeof(uint64_t));
    j.done_wrote = calloc(j.depth, 1);
    if (!j.free_stack || !j.state || !j.opcode || !j.nlb || !j.slba || !j.deadline || !j.start || !j.wrote || !j.done_start || !j.done_wrote)
        goto out_free;
    for (uint32_t i = 0; i < j.depth; i++) j.free_stack[i] = (uint16_t)(j.depth - 1 - i); /* pops 0, 1, 2, ... */
    j.free_top = j.depth;
    j.credits = j.cq_entries - 1;

    struct hist h = {out + R_HIST, 0, 0, INFINITY, 0};
    uint32_t x = (uint32_t)p[P_SEED];
    if (x == 0) x = 0x9e3779b9u;
    uint64_t seq_slot = 0;
    const int big_span = slots > 0x100000000ull;
    const uint64_t mix_read_below = (uint64_t)floor(p[P_RWMIX_READ] / 100 * 4294967296.0);
    double ios = 0, reads = 0, writes = 0;
    int interrupted = 0, stopping = 0;
    /* While measuring: CQ polls, polls that reaped (one CQ head doorbell each), SQ tail doorbells. */
    double polls = 0, reaps = 0, submits = 0;

    const uint64_t t0 = now_ns();
    int measuring = warmup <= 0;
    uint64_t t_measure = measuring ? t0 : t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = seconds > 0 && measuring ? t_measure + (uint64_t)(seconds * 1e9) : UINT64_MAX; /* set when measuring starts */
    uint64_t t_last = t0;
    if (measuring && progress) progress[base + 2] = 1;

    uint64_t t = now_ns();
    uint64_t last_activity = t, last_yield = t;
    uint32_t empty = 0;
    /* refill(t): keep qd outstanding (fewer near the end of a counted run). */
#define REFILL()                                                                                                         \
    do {                                                                                                                 \
        uint32_t posted = 0;                                                                                             \
        while (j.inflight < qd && !(measuring && ios + j.inflight >= limit)) {                                           \
            int cid = acquire(&j);                                                                                       \
            if (cid < 0) break;                                                                                          \
            if (posted == 0 && j.batch_start == 0) j.batch_start = t; /* IoQueue.batchTime(t) */                        \
            int write = rw_kind == 1 || (rw_kind == 2 && rand32(&x) >= mix_read_below);                                 \
            uint64_t s;                                                                                                  \
            if (seq) {                                                                                                   \
                s = seq_slot;                                                                                            \
                seq_slot = seq_slot + 1 == slots ? 0 : seq_slot + 1;                                                     \
            } else if (big_span) {                                                                                       \
                uint64_t hi = rand32(&x);                                                                                \
                s = (uint64_t)fmod((double)hi * 4294967296.0 + (double)rand32(&x), (double)slots);                      \
            } else {                                                                                                     \
                s = rand32(&x) % slots;                                                                                  \
            }                                                                                                            \
            if (rw(&j, (uint32_t)cid, write ? OPC_WRITE : OPC_READ, first_lba + s * blocks, blocks, (uint64_t)cid * bs, \
                   bs) != 0) {                                                                                           \
                rc = -EINVAL;                                                                                            \
                goto out_drain;                                                                                          \
            }                                                                                                            \
            j.start[cid] = t;                                                                                            \
            j.wrote[cid] = (uint8_t)write;                                                                               \
            posted++;                                                                                                    \
        }                                                                                                                \
        if (posted > 0) {                                                                                                \
            submit(&j);                                                                                                  \
            submits += measuring;                                                                                        \
        }                                                                                                                \
    } while (0)

    uint32_t to_record = 0; /* completions of the last poll still to be recorded (counted already) */
    REFILL();
    for (uint32_t spins = 1;; spins++) {
        uint32_t n = poll_cq(&j);
        polls += measuring;
        if (n == 0 || j.n_done == 0) {
            if (idle_sleep_ns > 0 && ++empty >= IDLE_POLLS) {
                empty = 0;
                struct timespec ts = {0, (long)idle_sleep_ns};
                nanosleep(&ts, NULL);
            }
            if ((spins & 255) != 0) continue;
            t = now_ns();
            if (t - last_activity > j.timeout_ns) {
                rc = -ETIMEDOUT;
                out[R_TIMEOUT_OUTSTANDING] = j.inflight;
                goto out_state;
            }
        } else {
            empty = 0;
            t = now_ns();
            /* The experiment's wait (Workload.turnaroundDelayUs): bounded by the clock. */
            if (delay_ns > 0)
                while (now_ns() - t < delay_ns) {
                }
            last_activity = t;
            t_last = t;
            if (measuring) {
                ios += j.n_done;
                to_record = j.n_done;
                reaps++;
            }
            j.n_done = 0;
        }
        if (!measuring && t >= t_measure) {
            measuring = 1;
            t_measure = t;
            if (seconds > 0) t_end = t + (uint64_t)(seconds * 1e9);
            if (progress) progress[base + 2] = 1;
        }
        if (j.errors > 0 || t >= t_end || (measuring && ios >= limit)) stopping = 1;
        if (!stopping) REFILL();
        if (to_record > 0) {
            /* After the doorbell: the controller is already working on the new commands. */
            for (uint32_t k = 0; k < to_record; k++) {
                hist_record(&h, t - j.done_start[k]);
                if (j.done_wrote[k]) writes++;
                else reads++;
            }
            to_record = 0;
            if (progress) {
                progress[base] = ios;
                progress[base + 1] = ios * bs;
            }
        }
        if (stopping && j.inflight == 0) break;
        if (t - last_yield > YIELD_NS) {
            /* Where the engine yields to its event loop: the stop flag (a signal, the main thread). */
            last_yield = now_ns();
            if (progress && progress[0] != 0 && !stopping) {
                stopping = 1;
                interrupted = 1;
            }
        }
    }
#undef REFILL
    rc = 0;
    goto out_state;
out_drain:
    /* A check failed: nothing more is posted; what is outstanding completes (bounded). */
    if (j.batch_start) submit(&j);
    for (uint64_t end = now_ns() + j.timeout_ns; j.inflight > 0 && now_ns() < end;) poll_cq(&j);
out_state:
    out[R_IOS] = ios;
    out[R_READS] = reads;
    out[R_WRITES] = writes;
    out[R_ERRORS] = (double)j.errors;
    out[R_FIRST_STATUS] = j.first_status;
    out[R_FIRST_CID] = j.first_cid;
    out[R_FIRST_OPCODE] = j.first_opcode;
    out[R_SECONDS] = t_last > t_measure ? (double)(t_last - t_measure) / 1e9 : 0;
    out[R_COUNT] = h.count;
    out[R_SUM] = h.sum;
    out[R_MIN] = h.min;
    out[R_MAX] = h.max;
    out[R_INTERRUPTED] = interrupted;
    out[R_WARMUP] = (double)(t_measure - t0) / 1e9;
    out[R_POLLS] = polls;
    out[R_REAPS] = reaps;
    out[R_SUBMITS] = submits;
    out[R_SQ_TAIL] = j.tail;
    out[R_SQ_HEAD] = j.sq_head;
    out[R_CQ_HEAD] = j.cq_head;
    out[R_CQ_PHASE] = j.phase;
out_free:
    free(j.free_stack);
    free(j.state);
    free(j.opcode);
    free(j.nlb);
    free(j.slba);
    free(j.deadline);
    free(j.start);
    free(j.wrote);
    free(j.done_start);
    free(j.done_wrote);
    out[R_STATUS] = rc;
    return rc;
}
