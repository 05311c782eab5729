/*
 * libnvm-bench.so: benchmark instruments for bench/, never linked into libnvm-native.so and never
 * used by lib/ or the tests.
 *
 * 1. A completer: a thread standing in for a controller. It watches an SQ tail doorbell (an
 *    ordinary memory word standing in for BAR0), and as soon as the tail moves it answers every
 *    new SQ entry at once with a successful CQE (CID from the entry, SQHD, SQID, phase; DW3 stored
 *    last with release semantics, as a device's posted write lands after the rest of the entry).
 *    It never overfills the CQ (it reads the CQ head doorbell). `hold` keeps the newest N entries
 *    unanswered, so a benchmark can run with N commands always outstanding.
 *
 * 2. The C reference loop: the same work as the TypeScript low-level path (IoQueue.acquire, rw,
 *    submit, poll, one completion handler), written in C and called once per batch: a CID from a
 *    free stack, tracker state and a deadline (from one clock read per batch, as IoQueue; or one
 *    per command, nvm_bench_loop_clock), all 16 SQE dwords written in place with
 *    PRPs for the CID's slice of a data buffer, one doorbell per batch behind a release fence, then
 *    reaping (phase first, acquire load), dispatch through a function pointer, one CQ head
 *    doorbell per reap round. Every wait is bounded.
 *
 * Conventions as libnvm-native: u32/i32 arguments and returns only (no 64-bit values, no pointer
 * returns); handles are small integers; errors are negative errno values.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))

#define MAX_HANDLES 64
#define SQE_DWORDS 16
#define CQE_DWORDS 4
#define PAGE 4096u
#define NVM_BENCH_NO_THREAD (-2)

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

API uint32_t nvm_bench_abi_version(void) { return 6; }

/* Pin the calling thread to `cpu` (-1: allow every CPU). */
API int32_t nvm_bench_pin(int32_t cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu < 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET(i, &set);
    } else {
        CPU_SET(cpu, &set);
    }
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

/* ---- completer ------------------------------------------------------------------------------ */

struct completer {
    pthread_t thread;
    int used;
    int threaded;
    int cpu;
    const volatile uint32_t *sq;
    uint32_t sq_entries;
    volatile uint32_t *cq;
    uint32_t cq_entries;
    const volatile uint32_t *sq_db;
    const volatile uint32_t *cq_db;
    uint32_t sqid;
    uint32_t hold;      /* atomic */
    uint32_t stop;      /* atomic */
    uint32_t paused;    /* atomic: sleep instead of spinning (another benchmark has the CPUs) */
    uint32_t completed; /* atomic, wraps */
    uint32_t bad;       /* atomic: doorbell values out of range */
    /* Optional log of what it answered (tests): CDW0, CDW10, CDW11, CDW12 per entry, in SQ order. */
    uint32_t *log;
    uint32_t log_cap, log_len; /* log_len: atomic */
    uint64_t latency_ns; /* atomic: answer an entry only this long after it was first seen */
    uint64_t *seen_at;   /* per SQ slot: when it was first seen (latency_ns > 0) */
    uint32_t seen_tail;  /* entries up to here have a seen_at */
    /* The controller's own state. */
    uint32_t sq_head, cq_tail, phase;
};

static struct completer completers[MAX_HANDLES];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

/* One pass: answer every new SQ entry (minus `hold`) the doorbell shows; returns how many. */
static uint32_t completer_pass(struct completer *c)
{
    const uint32_t n = c->sq_entries, m = c->cq_entries;
    /* Acquire: the SQ entries the host wrote before its doorbell store are visible after it. */
    uint32_t tail = __atomic_load_n(c->sq_db, __ATOMIC_ACQUIRE);
    if (tail >= n) {
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
        return 0;
    }
    uint32_t pending = (tail + n - c->sq_head) % n;
    uint32_t hold = __atomic_load_n(&c->hold, __ATOMIC_RELAXED);
    uint64_t latency = __atomic_load_n(&c->latency_ns, __ATOMIC_RELAXED);
    uint64_t now = 0;
    if (latency && c->seen_at) {
        /* A device's service time: stamp new entries, answer each only `latency` after its stamp. */
        now = now_ns();
        for (; c->seen_tail != tail; c->seen_tail = c->seen_tail + 1 == n ? 0 : c->seen_tail + 1) c->seen_at[c->seen_tail] = now;
    }
    uint32_t done = 0;
    while (pending > hold) {
        if (latency && c->seen_at && now - c->seen_at[c->sq_head] < latency) break;
        uint32_t cq_head = __atomic_load_n(c->cq_db, __ATOMIC_ACQUIRE);
        if (cq_head >= m) {
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
            break;
        }
        if ((c->cq_tail + 1) % m == cq_head) break; /* CQ full: wait for the host to release entries */
        const volatile uint32_t *sqe = c->sq + c->sq_head * SQE_DWORDS;
        uint32_t cid = sqe[0] >> 16;
        uint32_t logged = __atomic_load_n(&c->log_len, __ATOMIC_RELAXED);
        if (c->log && logged < c->log_cap) {
            uint32_t *l = c->log + 4 * logged;
            l[0] = sqe[0];
            l[1] = sqe[10];
            l[2] = sqe[11];
            l[3] = sqe[12];
            __atomic_store_n(&c->log_len, logged + 1, __ATOMIC_RELEASE);
        }
        c->sq_head = c->sq_head + 1 == n ? 0 : c->sq_head + 1;
        volatile uint32_t *e = c->cq + c->cq_tail * CQE_DWORDS;
        e[0] = 0;
        e[1] = 0;
        e[2] = c->sq_head | (c->sqid << 16);
        /* DW3 (CID, phase, status 0) last: the host reads the phase first. */
        __atomic_store_n((uint32_t *)&e[3], cid | (c->phase << 16), __ATOMIC_RELEASE);
        if (++c->cq_tail == m) {
            c->cq_tail = 0;
            c->phase ^= 1;
        }
        pending--;
        done++;
    }
    if (done) __atomic_fetch_add(&c->completed, done, __ATOMIC_RELAXED);
    return done;
}

static void *completer_main(void *arg)
{
    struct completer *c = arg;
    if (c->cpu >= 0) nvm_bench_pin(c->cpu);
    const struct timespec ms = {0, 1000000};
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        if (__atomic_load_n(&c->paused, __ATOMIC_ACQUIRE)) nanosleep(&ms, NULL);
        else if (completer_pass(c) == 0) cpu_relax();
    }
    return NULL;
}

/*
 * Start a completer for one SQ/CQ pair. `bar0` is the memory standing in for BAR0; `sq_db` and
 * `cq_db` are byte offsets of the SQ tail and CQ head doorbells in it. `cpu` >= 0 pins the thread;
 * NVM_BENCH_NO_THREAD starts none: the caller runs passes with nvm_bench_completer_step() in its own
 * thread (no cross-core traffic, for profiling the host side alone). Returns a handle >= 0 or -errno.
 */
API int32_t nvm_bench_completer_start(void *sq, uint32_t sq_entries, void *cq, uint32_t cq_entries, void *bar0,
                                      uint32_t sq_db, uint32_t cq_db, uint32_t sqid, int32_t cpu)
{
    if (!sq || !cq || !bar0 || sq_entries < 2 || cq_entries < 2 || (sq_db & 3) || (cq_db & 3)) return -EINVAL;
    pthread_mutex_lock(&table_lock);
    int32_t h = -1;
    for (int i = 0; i < MAX_HANDLES; i++) {
        if (!completers[i].used) {
            h = i;
            break;
        }
    }
    if (h < 0) {
        pthread_mutex_unlock(&table_lock);
        return -ENOSPC;
    }
    struct completer *c = &completers[h];
    memset(c, 0, sizeof(*c));
    c->used = 1;
    c->cpu = cpu;
    c->sq = sq;
    c->sq_entries = sq_entries;
    c->cq = cq;
    c->cq_entries = cq_entries;
    c->sq_db = (const volatile uint32_t *)((char *)bar0 + sq_db);
    c->cq_db = (const volatile uint32_t *)((char *)bar0 + cq_db);
    c->sqid = sqid;
    c->phase = 1;
    c->threaded = cpu != NVM_BENCH_NO_THREAD;
    int rc = c->threaded ? pthread_create(&c->thread, NULL, completer_main, c) : 0;
    if (rc != 0) c->used = 0;
    pthread_mutex_unlock(&table_lock);
    return rc == 0 ? h : -rc;
}

static struct completer *completer(int32_t h)
{
    return h >= 0 && h < MAX_HANDLES && completers[h].used ? &completers[h] : NULL;
}

/* Leave the newest `hold` SQ entries unanswered (0: answer everything). */
API int32_t nvm_bench_completer_hold(int32_t h, uint32_t hold)
{
    struct completer *c = completer(h);
    if (!c) return -EINVAL;
    __atomic_store_n(&c->hold, hold, __ATOMIC_RELAXED);
    return 0;
}

/* One completer pass in the calling thread (a completer started with NVM_BENCH_NO_THREAD). */
API uint32_t nvm_bench_completer_step(int32_t h)
{
    struct completer *c = completer(h);
    return c && !c->threaded ? completer_pass(c) : 0;
}

/*
 * Answer each entry `latency_ns` after the completer first saw it (0: at once), as a device with that
 * service time would: for measuring how a poller waits (bench/polling.ts).
 */
API int32_t nvm_bench_completer_latency(int32_t h, uint32_t latency_ns)
{
    struct completer *c = completer(h);
    if (!c) return -EINVAL;
    if (!c->seen_at) {
        c->seen_at = calloc(c->sq_entries, sizeof(uint64_t));
        if (!c->seen_at) return -ENOMEM;
        c->seen_tail = c->sq_head;
    }
    __atomic_store_n(&c->latency_ns, (uint64_t)latency_ns, __ATOMIC_RELAXED);
    return 0;
}

/* Pause (1) or resume (0) a threaded completer; a paused one sleeps and answers nothing. */
API int32_t nvm_bench_completer_pause(int32_t h, uint32_t paused)
{
    struct completer *c = completer(h);
    if (!c) return -EINVAL;
    __atomic_store_n(&c->paused, paused ? 1u : 0u, __ATOMIC_RELEASE);
    return 0;
}

/*
 * Log CDW0, CDW10, CDW11 and CDW12 of the next `capacity` entries it answers into `log` (4 u32 each;
 * the caller keeps it alive until the completer stops). Set it before the first doorbell.
 */
API int32_t nvm_bench_completer_log(int32_t h, void *log, uint32_t capacity)
{
    struct completer *c = completer(h);
    if (!c || (!log && capacity)) return -EINVAL;
    c->log = log;
    c->log_cap = capacity;
    __atomic_store_n(&c->log_len, 0, __ATOMIC_RELEASE);
    return 0;
}

/* Entries logged so far. */
API uint32_t nvm_bench_completer_logged(int32_t h)
{
    struct completer *c = completer(h);
    return c ? __atomic_load_n(&c->log_len, __ATOMIC_ACQUIRE) : 0;
}

/* Completions posted so far (mod 2^32). */
API uint32_t nvm_bench_completer_count(int32_t h)
{
    struct completer *c = completer(h);
    return c ? __atomic_load_n(&c->completed, __ATOMIC_RELAXED) : 0;
}

/* Doorbell values it saw out of range (a bug in the code under test when non-zero). */
API uint32_t nvm_bench_completer_bad(int32_t h)
{
    struct completer *c = completer(h);
    return c ? __atomic_load_n(&c->bad, __ATOMIC_RELAXED) : 0;
}

API int32_t nvm_bench_completer_stop(int32_t h)
{
    struct completer *c = completer(h);
    if (!c) return -EINVAL;
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELAXED);
    if (c->threaded) pthread_join(c->thread, NULL);
    free(c->seen_at);
    c->seen_at = NULL;
    pthread_mutex_lock(&table_lock);
    c->used = 0;
    pthread_mutex_unlock(&table_lock);
    return 0;
}

/* ---- the C reference loop ------------------------------------------------------------------- */

enum { FREE = 0, INFLIGHT = 2 };

typedef void (*completion_fn)(void *ctx, uint32_t cid, uint32_t status, uint32_t dw0);

struct loop {
    int used;
    uint32_t *sq;
    uint32_t sq_entries, tail, sq_head;
    const volatile uint32_t *cq;
    uint32_t cq_entries, cq_head, phase;
    volatile uint32_t *sq_db, *cq_db;
    uint32_t depth;
    uint16_t *free_stack;
    uint32_t free_top;
    uint32_t credits;
    uint8_t *state;
    uint8_t *opcode;
    uint64_t *deadline;
    uint64_t *slba;
    uint64_t timeout_ns;
    uint32_t nsid, inflight;
    /* Data buffer: bus address of its first byte (contiguous), size, bytes per command. */
    uint64_t bus;
    uint32_t buf_bytes, bs, lba_shift;
    uint64_t next_lba;
    completion_fn handler;
    uint64_t completions, errors;
    /* A completer without a thread that this loop steps itself while it waits (-1: none). */
    int32_t inline_completer;
    /* 1: one clock read per batch for the deadlines (as IoQueue does); 0: one per command. */
    uint32_t clock_per_batch;
};

static struct loop loops[MAX_HANDLES];

/* The completion handler of the C loop, called through a function pointer as IoQueue calls onComplete. */
static void count_completion(void *ctx, uint32_t cid, uint32_t status, uint32_t dw0)
{
    struct loop *l = ctx;
    (void)cid;
    (void)dw0;
    l->completions++;
    if (status) l->errors++;
}

/*
 * A queue pair for the C loop over rings the caller allocated (and a completer answers). The
 * data buffer is `buf_bytes` bytes at bus address (bus_hi:bus_lo), physically contiguous; each
 * command moves `bs` bytes (a multiple of 512, at most 8 KiB: PRP1 and PRP2, no list) of the
 * CID's slice of it. Returns a handle >= 0 or -errno.
 */
API int32_t nvm_bench_loop_create(void *sq, uint32_t sq_entries, void *cq, uint32_t cq_entries, void *bar0, uint32_t sq_db,
                                  uint32_t cq_db, uint32_t nsid, uint32_t bus_lo, uint32_t bus_hi, uint32_t buf_bytes, uint32_t bs)
{
    if (!sq || !cq || !bar0 || sq_entries < 2 || cq_entries < 2 || bs == 0 || bs % 512 || bs > 2 * PAGE) return -EINVAL;
    uint32_t depth = (sq_entries < cq_entries ? sq_entries : cq_entries) - 1;
    if ((uint64_t)depth * bs > buf_bytes) return -EINVAL;
    pthread_mutex_lock(&table_lock);
    int32_t h = -1;
    for (int i = 0; i < MAX_HANDLES; i++) {
        if (!loops[i].used) {
            h = i;
            break;
        }
    }
    if (h < 0) {
        pthread_mutex_unlock(&table_lock);
        return -ENOSPC;
    }
    struct loop *l = &loops[h];
    memset(l, 0, sizeof(*l));
    l->used = 1;
    pthread_mutex_unlock(&table_lock);
    l->sq = sq;
    l->sq_entries = sq_entries;
    l->cq = cq;
    l->cq_entries = cq_entries;
    l->phase = 1;
    l->sq_db = (volatile uint32_t *)((char *)bar0 + sq_db);
    l->cq_db = (volatile uint32_t *)((char *)bar0 + cq_db);
    l->depth = depth;
    l->credits = cq_entries - 1;
    l->free_stack = calloc(depth, sizeof(uint16_t));
    l->state = calloc(depth, 1);
    l->opcode = calloc(depth, 1);
    l->deadline = calloc(depth, sizeof(uint64_t));
    l->slba = calloc(depth, sizeof(uint64_t));
    if (!l->free_stack || !l->state || !l->opcode || !l->deadline || !l->slba) {
        free(l->free_stack);
        free(l->state);
        free(l->opcode);
        free(l->deadline);
        free(l->slba);
        l->used = 0;
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < depth; i++) l->free_stack[i] = (uint16_t)(depth - 1 - i);
    l->free_top = depth;
    l->timeout_ns = 10ull * 1000000000ull;
    l->nsid = nsid;
    l->bus = ((uint64_t)bus_hi << 32) | bus_lo;
    l->buf_bytes = buf_bytes;
    l->bs = bs;
    l->lba_shift = 9;
    l->handler = count_completion;
    l->inline_completer = -1;
    l->clock_per_batch = 1;
    return h;
}

static inline int acquire(struct loop *l)
{
    if (l->free_top == 0 || l->credits == 0) return -1;
    uint32_t cid = l->free_stack[--l->free_top];
    l->credits--;
    return (int)cid;
}

/* Same as IoQueue.rw + post: checks, 16 dwords, PRPs for the CID's slice, tracker state, deadline. */
static inline int post_rw(struct loop *l, uint32_t cid, uint32_t opcode, uint64_t slba, uint32_t blocks, uint32_t offset,
                          uint32_t bytes, uint64_t now)
{
    if (cid >= l->depth || l->state[cid] != FREE) return -EINVAL;
    if (blocks < 1 || blocks > 65536 || offset % 4 || (uint64_t)offset + bytes > l->buf_bytes) return -EINVAL;
    uint64_t prp1 = l->bus + offset;
    uint32_t first = PAGE - (uint32_t)(prp1 % PAGE);
    uint64_t prp2 = bytes <= first ? 0 : prp1 + first;
    uint32_t *e = l->sq + l->tail * SQE_DWORDS;
    e[0] = (opcode & 0xff) | (cid << 16);
    e[1] = l->nsid;
    e[2] = 0;
    e[3] = 0;
    e[4] = 0;
    e[5] = 0;
    e[6] = (uint32_t)prp1;
    e[7] = (uint32_t)(prp1 >> 32);
    e[8] = (uint32_t)prp2;
    e[9] = (uint32_t)(prp2 >> 32);
    e[10] = (uint32_t)slba;
    e[11] = (uint32_t)(slba >> 32);
    e[12] = (blocks - 1) & 0xffff;
    e[13] = 0;
    e[14] = 0;
    e[15] = 0;
    l->state[cid] = INFLIGHT;
    l->opcode[cid] = (uint8_t)opcode;
    l->slba[cid] = slba;
    l->deadline[cid] = now + l->timeout_ns;
    l->inflight++;
    l->tail = l->tail + 1 == l->sq_entries ? 0 : l->tail + 1;
    return 0;
}

static inline uint32_t reap(struct loop *l)
{
    uint32_t n = 0;
    for (;;) {
        const volatile uint32_t *e = l->cq + l->cq_head * CQE_DWORDS;
        /* Phase first (acquire); the rest of the entry is valid only after it. */
        uint32_t dw3 = __atomic_load_n((const uint32_t *)&e[3], __ATOMIC_ACQUIRE);
        if (((dw3 >> 16) & 1) != l->phase) break;
        uint32_t dw2 = e[2], dw0 = e[0];
        if (++l->cq_head == l->cq_entries) {
            l->cq_head = 0;
            l->phase ^= 1;
        }
        n++;
        l->sq_head = dw2 & 0xffff;
        uint32_t cid = dw3 & 0xffff;
        if (cid >= l->depth || l->state[cid] != INFLIGHT) continue;
        l->state[cid] = FREE;
        l->free_stack[l->free_top++] = (uint16_t)cid;
        l->credits++;
        l->inflight--;
        l->handler(l, cid, dw3 >> 17, dw0);
    }
    if (n) {
        __atomic_thread_fence(__ATOMIC_RELEASE);
        *l->cq_db = l->cq_head;
    }
    return n;
}

/*
 * One batch: post `batch` reads (opcode 2) or writes (1) of `bs` bytes at consecutive LBAs, ring
 * the SQ doorbell once, then reap until `batch` of this loop's commands completed. Returns the
 * number completed, or 0xffffffff when the wait passed its deadline (no completer running?).
 */
API uint32_t nvm_bench_loop_batch(int32_t h, uint32_t batch, uint32_t opcode)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return 0xffffffffu;
    struct loop *l = &loops[h];
    uint64_t want = l->completions + batch;
    uint32_t blocks = l->bs >> l->lba_shift;
    uint64_t batch_start = l->clock_per_batch ? now_ns() : 0;
    for (uint32_t i = 0; i < batch; i++) {
        int cid = acquire(l);
        if (cid < 0) break;
        uint64_t now = l->clock_per_batch ? batch_start : now_ns();
        post_rw(l, (uint32_t)cid, opcode, l->next_lba, blocks, (uint32_t)cid * l->bs, l->bs, now);
        l->next_lba = (l->next_lba + blocks) & 0xffffff;
    }
    /* SQ entries were written by ordinary stores: fence, then one doorbell for the batch. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *l->sq_db = l->tail;
    uint64_t deadline = 0;
    for (uint32_t spins = 0; l->completions < want; spins++) {
        if (reap(l) == 0) {
            if (l->inline_completer >= 0) nvm_bench_completer_step(l->inline_completer);
            else cpu_relax();
            if ((spins & 4095) == 4095) {
                uint64_t t = now_ns();
                if (deadline == 0) deadline = t + l->timeout_ns;
                else if (t > deadline) return 0xffffffffu;
            }
        }
    }
    return batch;
}

/* Post `count` commands without waiting (to keep `count` outstanding under a completer's hold). */
API uint32_t nvm_bench_loop_post(int32_t h, uint32_t count, uint32_t opcode)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return 0;
    struct loop *l = &loops[h];
    uint32_t blocks = l->bs >> l->lba_shift, n = 0;
    for (; n < count; n++) {
        int cid = acquire(l);
        if (cid < 0) break;
        post_rw(l, (uint32_t)cid, opcode, l->next_lba, blocks, (uint32_t)cid * l->bs, l->bs, now_ns());
        l->next_lba = (l->next_lba + blocks) & 0xffffff;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *l->sq_db = l->tail;
    return n;
}

/* Reap until nothing of this loop is outstanding (bounded); returns what is still outstanding. */
API uint32_t nvm_bench_loop_drain(int32_t h)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return 0;
    struct loop *l = &loops[h];
    uint64_t deadline = now_ns() + l->timeout_ns;
    while (l->inflight > 0 && now_ns() < deadline) {
        if (reap(l) == 0) {
            if (l->inline_completer >= 0) nvm_bench_completer_step(l->inline_completer);
            else cpu_relax();
        }
    }
    return l->inflight;
}

/* Deadlines from one clock read per batch (1, the default: what IoQueue does) or per command (0). */
API int32_t nvm_bench_loop_clock(int32_t h, uint32_t per_batch)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return -EINVAL;
    loops[h].clock_per_batch = per_batch ? 1u : 0u;
    return 0;
}

/* Step completer `c` (started with NVM_BENCH_NO_THREAD) from this loop while it waits; -1: none. */
API int32_t nvm_bench_loop_inline(int32_t h, int32_t c)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return -EINVAL;
    loops[h].inline_completer = c;
    return 0;
}

API uint32_t nvm_bench_loop_outstanding(int32_t h)
{
    return h >= 0 && h < MAX_HANDLES && loops[h].used ? loops[h].inflight : 0;
}

API uint32_t nvm_bench_loop_errors(int32_t h)
{
    return h >= 0 && h < MAX_HANDLES && loops[h].used ? (uint32_t)loops[h].errors : 0;
}

API int32_t nvm_bench_loop_destroy(int32_t h)
{
    if (h < 0 || h >= MAX_HANDLES || !loops[h].used) return -EINVAL;
    struct loop *l = &loops[h];
    free(l->free_stack);
    free(l->state);
    free(l->opcode);
    free(l->deadline);
    free(l->slba);
    pthread_mutex_lock(&table_lock);
    l->used = 0;
    pthread_mutex_unlock(&table_lock);
    return 0;
}
