/*
 * Host mode of the queue core: N OS threads run the executor code of nvm_queue_job.h, the code
 * the GPU kernels run, on I/O queues the TypeScript side created through the admin path. Started
 * and joined from TypeScript through bun:ffi; the JS thread never blocks on them for longer than
 * the bound it passes to nvm_q_join().
 *
 * Threads are created waiting at a gate, and released together only once all of them exist: a
 * failed pthread_create() then leaves nothing running (the others are told to leave at the gate).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include "common.h"
#include "nvm_queue_job.h"

NVMQ_STATIC_ASSERT(sizeof(struct nvmq_line) == NVMQ_LINE, "struct nvmq_line");

struct nvm_q_run {
    const struct nvmq_job *job;
    pthread_t *threads;
    uint32_t n;
    uint32_t gate; /* 0: wait, 1: go, 2: leave without running */
    uint32_t done; /* threads that returned */
};

struct nvm_q_arg {
    struct nvm_q_run *run;
    uint32_t index;
};

uint32_t nvm_q_state_bytes(uint32_t entries) { return nvmq_state_bytes(entries); }

int32_t nvm_q_init(void *state, const void *desc)
{
    if (!state || !desc)
        return nvm_fail(EINVAL);
    if (nvmq_init((struct nvmq *)state, (const struct nvmq_init_desc *)desc) != NVMQ_OK)
        return nvm_fail(EINVAL);
    return nvm_ok();
}

uint32_t nvm_q_work_bytes(const void *job)
{
    uint64_t og, ol, ob;
    uint64_t bytes = nvmq_work_layout((const struct nvmq_job *)job, &og, &ol, &ob);
    return bytes > UINT32_MAX ? 0 : (uint32_t)bytes;
}

int32_t nvm_q_sizes(uint32_t *out)
{
    uint64_t og, ol, ob;
    struct nvmq_job j = {.threads = 1, .groups = 1, .depth = 1, .mode = NVMQ_MODE_SHARED};
    nvmq_work_layout(&j, &og, &ol, &ob);
    out[0] = (uint32_t)sizeof(struct nvmq);
    out[1] = (uint32_t)sizeof(struct nvmq_init_desc);
    out[2] = (uint32_t)sizeof(struct nvmq_job);
    out[3] = (uint32_t)sizeof(struct nvmq_req);
    out[4] = (uint32_t)sizeof(struct nvmq_group);
    out[5] = (uint32_t)sizeof(struct nvmq_work);
    out[6] = (uint32_t)sizeof(struct nvmq_lane);
    out[7] = (uint32_t)sizeof(struct nvmq_block);
    out[8] = NVMQ_HIST_BUCKETS;
    out[9] = NVMQ_ABI;
    out[10] = NVMQ_JOB_ABI;
    out[11] = (uint32_t)offsetof(struct nvmq, ticket);
    return nvm_ok();
}

static void *executor(void *p)
{
    struct nvm_q_arg a = *(struct nvm_q_arg *)p;
    free(p);
    struct nvm_q_run *run = a.run;
    uint32_t g;
    while ((g = __atomic_load_n(&run->gate, __ATOMIC_ACQUIRE)) == 0)
        sched_yield();
    if (g == 1) {
        if (run->job->mode == NVMQ_MODE_COOP)
            nvmq_job_block(run->job, a.index);
        else
            nvmq_job_thread(run->job, a.index);
    }
    __atomic_fetch_add(&run->done, 1u, __ATOMIC_RELEASE);
    return NULL;
}

void *nvm_q_start(const void *job_)
{
    const struct nvmq_job *job = (const struct nvmq_job *)job_;
    if (!job || job->abi != NVMQ_JOB_ABI || job->threads == 0 || job->nqueues == 0 || job->groups == 0 ||
        (job->mode != NVMQ_MODE_SHARED && job->mode != NVMQ_MODE_COOP))
        return nvm_fail_null(EINVAL);
    struct nvm_q_run *run = calloc(1, sizeof *run);
    if (!run)
        return nvm_fail_null(ENOMEM);
    run->job = job;
    run->threads = calloc(job->threads, sizeof(pthread_t));
    if (!run->threads) {
        free(run);
        return nvm_fail_null(ENOMEM);
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* The executors use little stack; many of them should not cost 8 MiB each. */
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int err = 0;
    uint32_t created = 0;
    for (; created < job->threads; created++) {
        struct nvm_q_arg *a = malloc(sizeof *a);
        if (!a) {
            err = ENOMEM;
            break;
        }
        a->run = run;
        a->index = created;
        err = pthread_create(&run->threads[created], &attr, executor, a);
        if (err) {
            free(a);
            break;
        }
    }
    pthread_attr_destroy(&attr);
    run->n = created;
    __atomic_store_n(&run->gate, err ? 2u : 1u, __ATOMIC_RELEASE);
    if (err) {
        for (uint32_t i = 0; i < created; i++)
            pthread_join(run->threads[i], NULL);
        free(run->threads);
        free(run);
        return nvm_fail_null(err);
    }
    nvm_errno_tls = 0;
    return run;
}

uint32_t nvm_q_done(void *run_) { return __atomic_load_n(&((struct nvm_q_run *)run_)->done, __ATOMIC_ACQUIRE); }

int32_t nvm_q_join(void *run_, uint32_t timeout_ms)
{
    struct nvm_q_run *run = (struct nvm_q_run *)run_;
    uint64_t deadline = nvmq_now() + (uint64_t)timeout_ms * 1000000ull;
    while (__atomic_load_n(&run->done, __ATOMIC_ACQUIRE) < run->n) {
        if (nvmq_now() >= deadline)
            return nvm_fail(ETIMEDOUT);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    /* Every executor returned: the joins below do not wait. */
    for (uint32_t i = 0; i < run->n; i++)
        pthread_join(run->threads[i], NULL);
    free(run->threads);
    free(run);
    return nvm_ok();
}
