/*
 * The queue core: one NVMe I/O queue pair (NVMe Base 2.0, 3.3.1) driven by many concurrent
 * submitters, from ONE source for two machines: compiled as C11 for host threads (pthreads, gcc)
 * and as CUDA for GPU threads (nvcc). Header-only; included by libnvm-native.so (host mode,
 * c/src/queue.c), by the CUDA kernels (c/cuda/nvm_queue.cu), by the test-only fake controller
 * suite and by the test-only mock libcuda. /work/shared/docs/gpu.md sections 1, 3 and 5 give the
 * protocol's sources; the code is ours.
 *
 * Protocol (per queue of `entries` slots, a power of two, and as many command identifiers):
 *   reserve  FIFO tickets: t = fetch_add(ticket, n); ticket t may use SQ slot t & mask once fewer
 *            than entries - 1 commands are outstanding (t - released < entries - 1). That one
 *            count keeps the CQ from overflowing and the SQ from filling past the NVMe limit, and
 *            it frees the slot: every completed command was fetched and the controller fetches in
 *            order, so ticket t - entries was fetched. FIFO, not a CAS counter: an unfair credit
 *            counter starved threads (gpu.md section 5). Then a CID from a FIFO free list (a
 *            bounded multi-producer queue of ticketed cells): CIDs are not slots, so a command the
 *            controller is slow to complete holds back only its own CID, never the ring.
 *   write    the SQE (the CID, PRPs from the data's page table, a PRP list in the slot's own list
 *            page when the transfer spans more than two pages), then ready[slot] = t + 1 with
 *            release ordering.
 *   publish  whoever takes the try-lock `tail_lock` advances the tail over every contiguous ready
 *            slot and rings the SQ Tail Doorbell once for all of them (a combining doorbell);
 *            a submitter returns once its own ticket is published. Every wait helps publish, so
 *            a written SQE never waits for its own submitter.
 *   reap     whoever takes the try-lock `head_lock` consumes every posted CQE (phase tag read
 *            first with acquire ordering, then the rest), hands status and DW0 to the command's
 *            owner record, puts the CID back on the free list, counts it released, records SQHD
 *            (the ring state handed back to the host), and rings the CQ Head Doorbell once.
 *   wait     the owner polls its record, reaping while it waits.
 * Every wait has a deadline (host: CLOCK_MONOTONIC; GPU: %globaltimer, both in ns). A wait that
 * passes it marks the queue broken (first reason wins) and returns NVMQ_ETIMEDOUT; every other
 * waiter on that queue then returns NVMQ_EBROKEN, so nothing hangs. A timed-out command keeps its
 * CID (busy[] names it): the host side ends it through the controller (queue deletion or reset)
 * before its buffer may be reused. The same happens when the host sets the stop word.
 *
 * Ordering (gpu.md section 3): SQE stores happen before the doorbell (GPU: fence.sc.sys, then
 * st.mmio.relaxed.sys for a BAR doorbell registered as I/O memory, or st.relaxed.sys for ordinary
 * memory such as the test controller's; host: a release store, which on x86-64 is the release
 * fence and the one 32-bit volatile store of nvm_doorbell() in a single mov, and which
 * ThreadSanitizer models where it ignores a standalone fence). State the host may look at, and
 * the rings, use system scope; tickets, locks and slot state shared by GPU threads only use device
 * scope (on the host both are plain C11 atomics).
 *
 * Memory: `struct nvmq` and its slot arrays are one position-independent block (the arrays are
 * found by offsets from the struct), so the host can build it in its own memory and copy it to
 * the GPU. Addresses of the rings, doorbells and lists are stored as the executor (host threads
 * or the GPU) sees them; NVMQ_ADDR() turns one into a pointer (the mock libcuda overrides it to
 * translate device addresses).
 */
#ifndef NVM_QUEUE_CORE_H
#define NVM_QUEUE_CORE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define NVMQ_FN static __device__ __forceinline__
#define NVMQ_HOST_FN static inline
#define NVMQ_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#include <sched.h>
#include <time.h>
#define NVMQ_FN static inline
#define NVMQ_HOST_FN static inline
#define NVMQ_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* ---- atomics with scopes, the clock, pauses, stores ------------------------------------------- */

#if defined(__CUDA_ARCH__)
#define NVMQ_RLX __NV_ATOMIC_RELAXED
#define NVMQ_ACQ __NV_ATOMIC_ACQUIRE
#define NVMQ_REL __NV_ATOMIC_RELEASE
#define NVMQ_ACQREL __NV_ATOMIC_ACQ_REL
/* Shared by the GPU's threads only (tickets, locks, slot state, owner records). */
#define NVMQ_DEV __NV_THREAD_SCOPE_DEVICE
/* Shared with the host or the controller (rings, doorbells, the stop word). */
#define NVMQ_SYS __NV_THREAD_SCOPE_SYSTEM
#define nvmq_load(p, o, s) __nv_atomic_load_n((p), (o), (s))
#define nvmq_store(p, v, o, s) __nv_atomic_store_n((p), (v), (o), (s))
#define nvmq_fetch_add(p, v, o, s) __nv_atomic_fetch_add((p), (v), (o), (s))
#define nvmq_cas(p, e, d, o, s) __nv_atomic_compare_exchange_n((p), (e), (d), false, (o), NVMQ_RLX, (s))
#else
#define NVMQ_RLX __ATOMIC_RELAXED
#define NVMQ_ACQ __ATOMIC_ACQUIRE
#define NVMQ_REL __ATOMIC_RELEASE
#define NVMQ_ACQREL __ATOMIC_ACQ_REL
#define NVMQ_DEV 0
#define NVMQ_SYS 0
#define nvmq_load(p, o, s) __atomic_load_n((p), (o))
#define nvmq_store(p, v, o, s) __atomic_store_n((p), (v), (o))
#define nvmq_fetch_add(p, v, o, s) __atomic_fetch_add((p), (v), (o))
#define nvmq_cas(p, e, d, o, s) __atomic_compare_exchange_n((p), (e), (d), 0, (o), NVMQ_RLX)
#endif

/*
 * Test hook: the memory order of the ready[] store that publishes an SQE to the combiner. The
 * ThreadSanitizer suite builds one variant with it weakened to relaxed and expects a reported race
 * (test/queue/core-suite.c): proof that the suite can see the race the release store prevents.
 */
#ifndef NVMQ_ORDER_READY
#define NVMQ_ORDER_READY NVMQ_REL
#endif

/* Executor view of a stored address (the mock libcuda translates device addresses here). */
#ifndef NVMQ_ADDR
#define NVMQ_ADDR(a) ((void *)(uintptr_t)(a))
#endif

/* Nanoseconds on the executor's own clock; deadlines are only ever compared on the same clock. */
NVMQ_FN uint64_t nvmq_now(void)
{
#if defined(__CUDA_ARCH__)
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
#endif
}

/*
 * Waits read the clock every 32nd step that made no progress, not every step: a clock read can
 * cost a system call (a guest whose clocksource has no vDSO path), which a tight poll would pay
 * again and again.
 *
 * One step of a bounded wait. GPU: __nanosleep, doubling from 8 to 256 ns, so waiting warps give
 * the SM to others. Host: a pause instruction for the first polls, then sched_yield(): host
 * threads may outnumber the CPUs (and under an emulator the device model needs a CPU too).
 */
NVMQ_FN void nvmq_pause(uint32_t *backoff)
{
#if defined(__CUDA_ARCH__)
    __nanosleep(*backoff < 8 ? 8 : *backoff);
    if (*backoff < 256)
        *backoff = *backoff < 8 ? 16 : *backoff * 2;
#else
    if (*backoff < 64) {
        (*backoff)++;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    } else {
        sched_yield();
    }
#endif
}

/* A doorbell register write: everything stored before it reaches memory first (see the top). */
NVMQ_FN void nvmq_doorbell(uint32_t *db, uint32_t value, uint32_t mmio)
{
#if defined(__CUDA_ARCH__)
    __nv_atomic_thread_fence(__NV_ATOMIC_SEQ_CST, __NV_THREAD_SCOPE_SYSTEM); /* fence.sc.sys */
    if (mmio)
        asm volatile("st.mmio.relaxed.sys.global.u32 [%0], %1;" ::"l"(db), "r"(value) : "memory");
    else
        __nv_atomic_store_n(db, value, __NV_ATOMIC_RELAXED, __NV_THREAD_SCOPE_SYSTEM);
#else
    (void)mmio;
    __atomic_store_n((volatile uint32_t *)db, value, __ATOMIC_RELEASE);
#endif
}

/* A dword the controller wrote by DMA, read after the acquire of its phase tag. */
NVMQ_FN uint32_t nvmq_dma_load(uint32_t *p)
{
#if defined(__CUDA_ARCH__)
    return __nv_atomic_load_n(p, __NV_ATOMIC_RELAXED, __NV_THREAD_SCOPE_SYSTEM);
#else
    return *(volatile uint32_t *)p;
#endif
}

/* ---- the queue state ---------------------------------------------------------------------------- */

#define NVMQ_ABI 1u
#define NVMQ_SQE_BYTES 64u
#define NVMQ_CQE_BYTES 16u
#define NVMQ_PAGE 4096u
/* One PRP list page per slot, no chaining: 512 entries after PRP1, so 513 pages per command. */
#define NVMQ_MAX_PAGES 513u
#define NVMQ_MIN_ENTRIES 2u
/* CIDs are 0 to entries - 1: never FFFFh, which means "no command" in the Error Information log. */
#define NVMQ_MAX_ENTRIES 32768u
/* Counters and locks each get a line of their own (the GPU's L2 line is 128 bytes). */
#define NVMQ_LINE 128u

/* Results (0 or negative). */
#define NVMQ_OK 0
#define NVMQ_ETIMEDOUT (-1) /* this wait passed its deadline: the queue is now broken */
#define NVMQ_EBROKEN (-2)   /* the queue was broken (another wait's deadline, a stop, a protocol error) */
#define NVMQ_EINVAL (-3)    /* a command the core cannot express (too many pages, no list page) */

/* Why a queue is broken (struct nvmq.broken; 0: it is not). */
#define NVMQ_BROKEN_RESERVE 1u /* no slot freed up in time: completions stopped coming */
#define NVMQ_BROKEN_PUBLISH 2u /* an SQE was never published (a submitter died between reserve and write) */
#define NVMQ_BROKEN_WAIT 3u    /* a command's completion did not come in time */
#define NVMQ_BROKEN_STOP 4u    /* the host asked every executor to stop */
#define NVMQ_BROKEN_CQE 5u     /* a completion the queue cannot have: CID not outstanding, or another SQ's */
#define NVMQ_BROKEN_CIDS 6u    /* the CID free list stalled (an executor died inside it) */

/* struct nvmq.flags */
#define NVMQ_F_MMIO_DOORBELL 1u /* GPU: the doorbells are BAR pages registered as I/O memory (st.mmio) */

struct nvmq_line {
    uint32_t v;
    uint32_t pad[NVMQ_LINE / 4 - 1];
};

struct nvmq {
    /* Set by nvmq_init(), read-only after. */
    uint32_t abi;
    uint32_t entries; /* slots in the SQ and in the CQ (same size), and CIDs: a power of two */
    uint32_t mask;
    uint32_t sqid;        /* the SQ's Queue Identifier, checked against each CQE's SQID */
    uint32_t flags;       /* NVMQ_F_* */
    uint32_t off_cidseq;  /* u32[entries]: CID free list, cell sequence numbers */
    uint32_t off_cidval;  /* u32[entries]: CID free list, cell values */
    uint32_t off_slotcid; /* u32[entries]: the CID of the ticket that owns each SQ slot */
    uint32_t off_ready;   /* u32[entries]: ticket + 1 of the SQE written in each SQ slot */
    uint32_t off_busy;    /* u32[entries]: per CID, ticket + 1 of its outstanding command, 0 when free */
    uint32_t off_owner;   /* u64[entries]: per CID, executor address of its owner record */
    uint32_t bytes;       /* of the whole block, arrays included */
    uint64_t sq;          /* SQ ring, entries x 64 bytes */
    uint64_t cq;          /* CQ ring, entries x 16 bytes */
    uint64_t sq_db;       /* SQ y Tail Doorbell (SQyTDBL) */
    uint64_t cq_db;       /* CQ y Head Doorbell (CQyHDBL) */
    uint64_t lists;       /* entries x 4 KiB PRP list pages, one per slot, or 0 */
    uint64_t lists_bus;   /* u64[entries]: bus address of each slot's list page */
    uint64_t stop;        /* u32 the host sets to stop every executor (system scope), or 0 */
    uint64_t timeout_ns;  /* bound of the waits inside the reaper (the CID free list) */
    uint32_t rsvd[4];
    /* Shared state, one line each. */
    struct nvmq_line ticket;     /* next ticket */
    struct nvmq_line released;   /* tickets whose command completed, counted from the start ticket */
    struct nvmq_line published;  /* tickets made visible to the controller (the SQ tail, unwrapped) */
    struct nvmq_line tail_lock;  /* held by the one publisher */
    struct nvmq_line head_lock;  /* held by the one reaper; guards cq_head, cq_phase */
    struct nvmq_line cq_head;    /* CQ head slot */
    struct nvmq_line cq_phase;   /* Phase Tag expected of the entry at the head */
    struct nvmq_line sq_head;    /* SQ Head Pointer (SQHD) of the last CQE consumed */
    struct nvmq_line broken;     /* NVMQ_BROKEN_*, first reason wins */
    struct nvmq_line broken_cid; /* CID whose wait broke the queue, or 0xffffffff */
    struct nvmq_line bad_cqes;   /* completions for a CID not outstanding or another SQ */
    struct nvmq_line doorbells;  /* SQ tail doorbell writes (one per published batch) */
    struct nvmq_line cid_deq;    /* CID free list: next cell to take from */
    struct nvmq_line cid_enq;    /* CID free list: next cell to put into */
};

NVMQ_STATIC_ASSERT(sizeof(struct nvmq) == 128 + 14 * NVMQ_LINE, "struct nvmq layout: lib/gpu/layout.ts mirrors it");
NVMQ_STATIC_ASSERT(offsetof(struct nvmq, ticket) == 128, "struct nvmq: shared lines start at byte 128");

/* Where the owner of a command learns its completion. Written by whichever executor reaps it. */
struct nvmq_rec {
    uint32_t done;   /* 0 while outstanding; 1 once status and dw0 are valid (release) */
    uint32_t status; /* CQE DW3 bits 31:17: SC, SCT, CRD, More, DNR (0 = success) */
    uint32_t dw0;    /* command specific DW0 */
    uint32_t cid;    /* the command's CID (set by nvmq_write()) */
};

/* Bytes of the state block for `entries` slots, or 0 when entries is not a power of two in range. */
NVMQ_FN uint32_t nvmq_state_bytes(uint32_t entries)
{
    if (entries < NVMQ_MIN_ENTRIES || entries > NVMQ_MAX_ENTRIES || (entries & (entries - 1)) != 0)
        return 0;
    return (uint32_t)sizeof(struct nvmq) + entries * (5u * 4u + 8u);
}

/* What the host gives nvmq_init(): addresses as the executor will see them. */
struct nvmq_init_desc {
    uint32_t entries, sqid, flags, sq_tail, sq_head, cq_head, cq_phase, rsvd;
    uint64_t sq, cq, sq_db, cq_db, lists, lists_bus, stop, timeout_ns;
};
NVMQ_STATIC_ASSERT(sizeof(struct nvmq_init_desc) == 96, "struct nvmq_init_desc: lib/gpu/layout.ts mirrors it");

/*
 * Build the state block at `q` (nvmq_state_bytes() bytes) for a queue whose SQ tail, CQ head and
 * phase are what the host left them at: ticket numbers start at the SQ tail, so ticket t goes to
 * slot t & mask. Host code only (the block is then used in place or copied to the GPU).
 */
NVMQ_HOST_FN int nvmq_init(struct nvmq *q, const struct nvmq_init_desc *d)
{
    uint32_t bytes = nvmq_state_bytes(d->entries);
    if (bytes == 0 || d->sq_tail >= d->entries || d->sq_head >= d->entries || d->cq_head >= d->entries || d->cq_phase > 1 || !d->sq || !d->cq || !d->sq_db ||
        !d->cq_db || (d->lists != 0) != (d->lists_bus != 0))
        return NVMQ_EINVAL;
    unsigned char *p = (unsigned char *)q;
    for (uint32_t i = 0; i < bytes; i++)
        p[i] = 0;
    const uint32_t n = d->entries, mask = n - 1;
    q->abi = NVMQ_ABI;
    q->entries = n;
    q->mask = mask;
    q->sqid = d->sqid;
    q->flags = d->flags;
    q->off_cidseq = (uint32_t)sizeof(struct nvmq);
    q->off_cidval = q->off_cidseq + 4 * n;
    q->off_slotcid = q->off_cidval + 4 * n;
    q->off_ready = q->off_slotcid + 4 * n;
    q->off_busy = q->off_ready + 4 * n;
    q->off_owner = q->off_busy + 4 * n; /* 8-byte aligned: sizeof(struct nvmq) and 20n are multiples of 8 */
    q->bytes = bytes;
    q->sq = d->sq;
    q->cq = d->cq;
    q->sq_db = d->sq_db;
    q->cq_db = d->cq_db;
    q->lists = d->lists;
    q->lists_bus = d->lists_bus;
    q->stop = d->stop;
    q->timeout_ns = d->timeout_ns ? d->timeout_ns : 10000000000ull;
    const uint32_t start = d->sq_tail;
    uint32_t *cidseq = (uint32_t *)(p + q->off_cidseq);
    uint32_t *cidval = (uint32_t *)(p + q->off_cidval);
    uint32_t *ready = (uint32_t *)(p + q->off_ready);
    for (uint32_t i = 0; i < n; i++) {
        /* Every CID starts on the free list: cell i holds CID i for taker number i. */
        cidval[i] = i;
        cidseq[i] = i + 1;
    }
    for (uint32_t s = 0; s < n; s++) {
        /* As "ready" of each slot, the ticket + 1 of the lap before its first ticket at or after
         * `start`, which no ticket of this lap can equal. */
        uint32_t first = start + ((s - start) & mask);
        ready[s] = first + 1 - n;
    }
    q->cid_deq.v = 0;
    q->cid_enq.v = n;
    q->ticket.v = start;
    q->released.v = start;
    q->published.v = start;
    q->cq_head.v = d->cq_head;
    q->cq_phase.v = d->cq_phase;
    q->sq_head.v = d->sq_head;
    q->broken_cid.v = 0xffffffffu;
    return NVMQ_OK;
}

/* Pointers an executor thread works with: resolved once per thread (NVMQ_ADDR). */
struct nvmq_view {
    struct nvmq *q;
    uint32_t *cidseq, *cidval, *slotcid, *ready, *busy;
    uint64_t *owner;
    uint32_t *sq;  /* as dwords */
    uint32_t *cq;  /* as dwords */
    uint32_t *sq_db, *cq_db, *stop;
    uint64_t *lists;
    const uint64_t *lists_bus;
    uint32_t entries, mask, mmio;
};

NVMQ_FN void nvmq_bind(struct nvmq_view *v, struct nvmq *q)
{
    unsigned char *p = (unsigned char *)q;
    v->q = q;
    v->cidseq = (uint32_t *)(p + q->off_cidseq);
    v->cidval = (uint32_t *)(p + q->off_cidval);
    v->slotcid = (uint32_t *)(p + q->off_slotcid);
    v->ready = (uint32_t *)(p + q->off_ready);
    v->busy = (uint32_t *)(p + q->off_busy);
    v->owner = (uint64_t *)(p + q->off_owner);
    v->sq = (uint32_t *)NVMQ_ADDR(q->sq);
    v->cq = (uint32_t *)NVMQ_ADDR(q->cq);
    v->sq_db = (uint32_t *)NVMQ_ADDR(q->sq_db);
    v->cq_db = (uint32_t *)NVMQ_ADDR(q->cq_db);
    v->stop = q->stop ? (uint32_t *)NVMQ_ADDR(q->stop) : (uint32_t *)0;
    v->lists = q->lists ? (uint64_t *)NVMQ_ADDR(q->lists) : (uint64_t *)0;
    v->lists_bus = q->lists_bus ? (const uint64_t *)NVMQ_ADDR(q->lists_bus) : (const uint64_t *)0;
    v->entries = q->entries;
    v->mask = q->mask;
    v->mmio = (q->flags & NVMQ_F_MMIO_DOORBELL) != 0;
}

/* ---- broken queues -------------------------------------------------------------------------------- */

NVMQ_FN uint32_t nvmq_broken(const struct nvmq_view *v)
{
    return nvmq_load(&v->q->broken.v, NVMQ_ACQ, NVMQ_DEV);
}

/* Mark the queue broken for `reason` (the first reason is kept), naming `cid` when one is to blame. */
NVMQ_FN void nvmq_break(const struct nvmq_view *v, uint32_t reason, uint32_t cid)
{
    uint32_t expected = 0;
    if (nvmq_cas(&v->q->broken.v, &expected, reason, NVMQ_ACQREL, NVMQ_DEV))
        nvmq_store(&v->q->broken_cid.v, cid, NVMQ_REL, NVMQ_DEV);
}

/*
 * The host's stop word, looked at every 256th step of a wait: on a GPU it is a read across PCIe.
 * Seen set, it breaks the queue so every other executor on it stops at its next step.
 */
NVMQ_FN int nvmq_stopped(const struct nvmq_view *v, uint32_t step)
{
    if ((step & 255u) != 255u || !v->stop)
        return 0;
    if (nvmq_load(v->stop, NVMQ_RLX, NVMQ_SYS) == 0)
        return 0;
    nvmq_break(v, NVMQ_BROKEN_STOP, 0xffffffffu);
    return 1;
}

/* ---- the CID free list --------------------------------------------------------------------------- */

/*
 * A bounded FIFO of free CIDs with ticketed cells (taker and putter number k use cell k & mask;
 * the cell's sequence says whose turn it is). Outstanding commands are fewer than entries, so a
 * taker only ever waits for a putter that is writing its cell right now, and the other way round;
 * both waits are bounded all the same (the queue's timeout_ns).
 */
NVMQ_FN int nvmq_cid_take(const struct nvmq_view *v, uint32_t *cid)
{
    const uint32_t k = nvmq_fetch_add(&v->q->cid_deq.v, 1u, NVMQ_RLX, NVMQ_DEV);
    uint32_t *seq = &v->cidseq[k & v->mask];
    uint32_t backoff = 0;
    uint64_t deadline = 0;
    while (nvmq_load(seq, NVMQ_ACQ, NVMQ_DEV) != k + 1) {
        uint64_t now = nvmq_now();
        if (!deadline)
            deadline = now + v->q->timeout_ns;
        else if (now > deadline) {
            nvmq_break(v, NVMQ_BROKEN_CIDS, 0xffffffffu);
            return NVMQ_ETIMEDOUT;
        }
        nvmq_pause(&backoff);
    }
    *cid = v->cidval[k & v->mask];
    nvmq_store(seq, k + v->entries, NVMQ_REL, NVMQ_DEV);
    return NVMQ_OK;
}

NVMQ_FN int nvmq_cid_put(const struct nvmq_view *v, uint32_t cid)
{
    const uint32_t k = nvmq_fetch_add(&v->q->cid_enq.v, 1u, NVMQ_RLX, NVMQ_DEV);
    uint32_t *seq = &v->cidseq[k & v->mask];
    uint32_t backoff = 0;
    uint64_t deadline = 0;
    while (nvmq_load(seq, NVMQ_ACQ, NVMQ_DEV) != k) {
        uint64_t now = nvmq_now();
        if (!deadline)
            deadline = now + v->q->timeout_ns;
        else if (now > deadline) {
            nvmq_break(v, NVMQ_BROKEN_CIDS, cid);
            return NVMQ_ETIMEDOUT;
        }
        nvmq_pause(&backoff);
    }
    v->cidval[k & v->mask] = cid;
    nvmq_store(seq, k + 1, NVMQ_REL, NVMQ_DEV);
    return NVMQ_OK;
}

/* ---- reaping ---------------------------------------------------------------------------------- */

/*
 * Consume every completion posted at the CQ head, if no other executor is doing it: hand each to
 * its owner record and free its slot. One CQ Head Doorbell write per call that found any.
 * Returns how many were consumed (0 when the lock was taken or nothing was posted).
 */
NVMQ_FN uint32_t nvmq_reap(const struct nvmq_view *v)
{
    struct nvmq *q = v->q;
    uint32_t unlocked = 0;
    if (nvmq_load(&q->head_lock.v, NVMQ_RLX, NVMQ_DEV) != 0 || !nvmq_cas(&q->head_lock.v, &unlocked, 1u, NVMQ_ACQ, NVMQ_DEV))
        return 0;
    uint32_t head = nvmq_load(&q->cq_head.v, NVMQ_RLX, NVMQ_DEV);
    uint32_t phase = nvmq_load(&q->cq_phase.v, NVMQ_RLX, NVMQ_DEV);
    uint32_t n = 0, sqhd = 0;
    for (;;) {
        uint32_t *e = v->cq + 4 * head;
        /* Phase Tag first, with acquire: the rest of the entry is valid only after it. */
        uint32_t dw3 = nvmq_load(&e[3], NVMQ_ACQ, NVMQ_SYS);
        if (((dw3 >> 16) & 1u) != phase)
            break;
        uint32_t dw0 = nvmq_dma_load(&e[0]);
        uint32_t dw2 = nvmq_dma_load(&e[2]);
        uint32_t cid = dw3 & 0xffffu;
        if (++head == v->entries) {
            head = 0;
            phase ^= 1u;
        }
        n++;
        sqhd = dw2 & 0xffffu;
        uint32_t occupant = cid < v->entries ? nvmq_load(&v->busy[cid], NVMQ_RLX, NVMQ_DEV) : 0;
        if (occupant == 0 || (dw2 >> 16) != q->sqid) {
            /* Not a command of ours: consumed (the CQ must move on) but handed to no one. */
            nvmq_fetch_add(&q->bad_cqes.v, 1u, NVMQ_RLX, NVMQ_DEV);
            nvmq_break(v, NVMQ_BROKEN_CQE, cid);
            continue;
        }
        struct nvmq_rec *rec = (struct nvmq_rec *)(uintptr_t)v->owner[cid];
        rec->status = dw3 >> 17;
        rec->dw0 = dw0;
        nvmq_store(&rec->done, 1u, NVMQ_REL, NVMQ_DEV);
        /* The controller is done with the command: its CID goes back on the free list, and one
         * more ticket may go (the slot that ticket gets was fetched: see the top). */
        nvmq_store(&v->busy[cid], 0u, NVMQ_RLX, NVMQ_DEV);
        if (nvmq_cid_put(v, cid) != NVMQ_OK)
            break;
        nvmq_fetch_add(&q->released.v, 1u, NVMQ_REL, NVMQ_DEV);
    }
    if (n > 0) {
        nvmq_store(&q->cq_head.v, head, NVMQ_RLX, NVMQ_DEV);
        nvmq_store(&q->cq_phase.v, phase, NVMQ_RLX, NVMQ_DEV);
        nvmq_store(&q->sq_head.v, sqhd, NVMQ_RLX, NVMQ_DEV);
        /* Entries read above are released to the controller: one write per batch. */
        nvmq_doorbell(v->cq_db, head, v->mmio);
    }
    nvmq_store(&q->head_lock.v, 0u, NVMQ_REL, NVMQ_DEV);
    return n;
}

/* ---- publishing --------------------------------------------------------------------------------- */

/*
 * If no other executor is publishing: advance the SQ tail over every contiguous ready slot and
 * ring the SQ Tail Doorbell once for all of them. Every wait calls it too: a submitter waiting for
 * a slot may hold a written SQE of its own that only a publisher can send, and the commands that
 * would free the slot may be such SQEs. Returns the number of entries published.
 */
NVMQ_FN uint32_t nvmq_push(const struct nvmq_view *v)
{
    struct nvmq *q = v->q;
    uint32_t unlocked = 0;
    if (nvmq_load(&q->tail_lock.v, NVMQ_RLX, NVMQ_DEV) != 0 || !nvmq_cas(&q->tail_lock.v, &unlocked, 1u, NVMQ_ACQ, NVMQ_SYS))
        return 0;
    uint32_t p = nvmq_load(&q->published.v, NVMQ_RLX, NVMQ_DEV), from = p;
    while (nvmq_load(&v->ready[p & v->mask], NVMQ_ACQ, NVMQ_DEV) == p + 1)
        p++;
    if (p != from) {
        nvmq_doorbell(v->sq_db, p & v->mask, v->mmio);
        nvmq_fetch_add(&q->doorbells.v, 1u, NVMQ_RLX, NVMQ_DEV);
        nvmq_store(&q->published.v, p, NVMQ_REL, NVMQ_DEV);
    }
    /* System scope: the next holder's doorbell must follow ours on the bus. */
    nvmq_store(&q->tail_lock.v, 0u, NVMQ_REL, NVMQ_SYS);
    return p - from;
}

/* ---- submitting ------------------------------------------------------------------------------- */

/*
 * Take `n` consecutive tickets (1 <= n < entries) and wait, reaping and publishing meanwhile,
 * until each may go; then take a CID for each. *t0 gets the first ticket. On NVMQ_ETIMEDOUT the
 * queue is broken (the tickets are lost with it).
 */
NVMQ_FN int nvmq_reserve(const struct nvmq_view *v, uint32_t n, uint64_t deadline, uint32_t *t0)
{
    struct nvmq *q = v->q;
    if (n == 0 || n >= v->entries)
        return NVMQ_EINVAL;
    uint32_t first = nvmq_fetch_add(&q->ticket.v, n, NVMQ_RLX, NVMQ_DEV);
    *t0 = first;
    uint32_t backoff = 0, step = 0;
    const uint32_t last = first + n - 1;
    /* Tickets go in order, so the last one's turn is every one's. */
    while ((int32_t)(last - nvmq_load(&q->released.v, NVMQ_ACQ, NVMQ_DEV)) >= (int32_t)(v->entries - 1)) {
        if (nvmq_broken(v) || nvmq_stopped(v, ++step))
            return NVMQ_EBROKEN;
        if (nvmq_reap(v) + nvmq_push(v) > 0) {
            backoff = 0;
            continue;
        }
        if (nvmq_now() > deadline) {
            nvmq_break(v, NVMQ_BROKEN_RESERVE, 0xffffffffu);
            return NVMQ_ETIMEDOUT;
        }
        nvmq_pause(&backoff);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t cid;
        int r = nvmq_cid_take(v, &cid);
        if (r != NVMQ_OK)
            return r;
        v->slotcid[(first + i) & v->mask] = cid;
    }
    return NVMQ_OK;
}

/* One I/O command to write: data described by its buffer's page table (bus addresses). */
struct nvmq_io {
    uint32_t opcode;   /* NVM command set opcode (Read 02h, Write 01h, ...) */
    uint32_t nsid;
    uint64_t slba;
    uint32_t nlb;      /* blocks, 1 to 65536 (written 0's based) */
    uint32_t cdw12;    /* CDW12 bits 31:16 (FUA, LR, ...) */
    uint32_t bytes;    /* data bytes (0: no data) */
    uint32_t rsvd;
    uint64_t offset;   /* of the data in its buffer */
    const uint64_t *pages; /* bus address of each 4 KiB page of the buffer (executor memory) */
};

/*
 * Write the SQE of ticket `t` (reserved) for `io`, owned by `rec` (rec->cid gets its CID), and
 * mark it ready. Returns NVMQ_EINVAL, without marking anything, for data the core cannot point to
 * (more than NVMQ_MAX_PAGES pages, or over two pages without list pages); the ticket then stays
 * unpublished and the caller must break the queue.
 */
NVMQ_FN int nvmq_write(const struct nvmq_view *v, uint32_t t, const struct nvmq_io *io, struct nvmq_rec *rec)
{
    const uint32_t s = t & v->mask;
    uint64_t prp1 = 0, prp2 = 0;
    if (io->bytes > 0) {
        uint64_t first = io->offset / NVMQ_PAGE;
        uint32_t in_page = (uint32_t)(io->offset % NVMQ_PAGE);
        uint32_t pages = (in_page + io->bytes + NVMQ_PAGE - 1) / NVMQ_PAGE;
        if (pages > NVMQ_MAX_PAGES || (pages > 2 && !v->lists))
            return NVMQ_EINVAL;
        prp1 = io->pages[first] + in_page;
        if (pages == 2) {
            prp2 = io->pages[first + 1];
        } else if (pages > 2) {
            /* PRP2 points to the slot's own list page: entries for pages 2..n (NVMe Base 2.0, 4.1.1). */
            uint64_t *list = v->lists + (uint64_t)s * (NVMQ_PAGE / 8);
            for (uint32_t i = 1; i < pages; i++)
                list[i - 1] = io->pages[first + i];
            prp2 = v->lists_bus[s];
        }
    }
    const uint32_t cid = v->slotcid[s];
    nvmq_store(&rec->done, 0u, NVMQ_RLX, NVMQ_DEV);
    rec->cid = cid;
    v->owner[cid] = (uint64_t)(uintptr_t)rec;
    nvmq_store(&v->busy[cid], t + 1, NVMQ_RLX, NVMQ_DEV);
    uint32_t dw[16];
    dw[0] = (io->opcode & 0xffu) | (cid << 16); /* CDW0: OPC, FUSE 0, PSDT 0 (PRPs), CID */
    dw[1] = io->nsid;
    dw[2] = dw[3] = 0;
    dw[4] = dw[5] = 0; /* MPTR */
    dw[6] = (uint32_t)prp1;
    dw[7] = (uint32_t)(prp1 >> 32);
    dw[8] = (uint32_t)prp2;
    dw[9] = (uint32_t)(prp2 >> 32);
    dw[10] = (uint32_t)io->slba;
    dw[11] = (uint32_t)(io->slba >> 32);
    dw[12] = ((io->nlb - 1u) & 0xffffu) | (io->cdw12 & 0xffff0000u);
    dw[13] = dw[14] = dw[15] = 0;
    uint32_t *sqe = v->sq + 16u * s;
#if defined(__CUDA_ARCH__)
    /* Four 16-byte stores: the SQ sits in host memory, every store is a PCIe write. */
    uint4 *d4 = (uint4 *)sqe;
    for (int i = 0; i < 4; i++)
        d4[i] = make_uint4(dw[4 * i], dw[4 * i + 1], dw[4 * i + 2], dw[4 * i + 3]);
#else
    for (int i = 0; i < 16; i++)
        sqe[i] = dw[i];
#endif
    nvmq_store(&v->ready[s], t + 1, NVMQ_ORDER_READY, NVMQ_DEV);
    return NVMQ_OK;
}

/*
 * Make ticket `last` (and every ticket before it) visible to the controller: publish when no one
 * else is, return once someone did. Bounded: NVMQ_ETIMEDOUT breaks the queue.
 */
NVMQ_FN int nvmq_publish(const struct nvmq_view *v, uint32_t last, uint64_t deadline)
{
    struct nvmq *q = v->q;
    uint32_t backoff = 0, step = 0;
    for (;;) {
        if ((int32_t)(nvmq_load(&q->published.v, NVMQ_ACQ, NVMQ_DEV) - last) > 0)
            return NVMQ_OK;
        if (nvmq_broken(v) || nvmq_stopped(v, ++step))
            return NVMQ_EBROKEN;
        if (nvmq_push(v) > 0) {
            backoff = 0;
            continue;
        }
        if ((step & 31u) == 0 && nvmq_now() > deadline) {
            nvmq_break(v, NVMQ_BROKEN_PUBLISH, v->slotcid[last & v->mask]);
            return NVMQ_ETIMEDOUT;
        }
        nvmq_pause(&backoff);
    }
}

/* ---- completion ------------------------------------------------------------------------------- */

/* Non-blocking: 1 when `rec`'s command completed (its status and dw0 are then valid). */
NVMQ_FN int nvmq_done(const struct nvmq_rec *rec)
{
    return nvmq_load((uint32_t *)&rec->done, NVMQ_ACQ, NVMQ_DEV) != 0;
}

/*
 * Wait for `rec`'s command, reaping meanwhile. NVMQ_ETIMEDOUT breaks the queue and leaves the
 * command outstanding: its CID stays busy until the host ends it.
 */
NVMQ_FN int nvmq_wait(const struct nvmq_view *v, const struct nvmq_rec *rec, uint64_t deadline)
{
    uint32_t backoff = 0, step = 0;
    for (;;) {
        if (nvmq_done(rec))
            return NVMQ_OK;
        if (nvmq_broken(v) || nvmq_stopped(v, ++step))
            return nvmq_done(rec) ? NVMQ_OK : NVMQ_EBROKEN;
        if (nvmq_reap(v) + nvmq_push(v) > 0) {
            backoff = 0;
            continue;
        }
        if ((step & 31u) == 0 && nvmq_now() > deadline) {
            if (nvmq_done(rec))
                return NVMQ_OK;
            nvmq_break(v, NVMQ_BROKEN_WAIT, rec->cid);
            return NVMQ_ETIMEDOUT;
        }
        nvmq_pause(&backoff);
    }
}

#endif
