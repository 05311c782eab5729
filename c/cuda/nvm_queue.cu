/*
 * The GPU kernels of libnvm: GPU threads drive NVMe queues with the queue core
 * (c/include/nvm_queue_core.h) running the workloads of c/include/nvm_queue_job.h, the same code
 * host threads run in host mode. Built by nvcc into build/nvm_queue.fatbin (c/CMakeLists.txt:
 * SASS for every architecture CUDA supports from sm_75, plus PTX for later GPUs) and loaded with
 * cuModuleLoadData by lib/gpu/kernels.ts. Each kernel takes one parameter: the device address of
 * a struct nvmq_job.
 */
#include "nvm_queue_job.h"

/* SHARED mode: every thread of the grid is one executor (global index = executor number). */
extern "C" __global__ void nvmq_shared_kernel(const struct nvmq_job *job)
{
    nvmq_job_thread(job, blockIdx.x * blockDim.x + threadIdx.x);
}

/* COOP mode: block b drives queue b; its threads are the lanes (blockDim.x == job->lanes). */
extern "C" __global__ void nvmq_coop_kernel(const struct nvmq_job *job)
{
    nvmq_job_block(job, blockIdx.x);
}
