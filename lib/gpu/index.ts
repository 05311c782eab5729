/**
 * GPU-initiated I/O (`import { createGpuQueues } from "libnvm"`): I/O queue pairs driven by GPU
 * threads, or by OS threads running the same queue code (device: "cpu"). See queues.ts.
 */
export {
  createGpuQueues,
  GpuQueues,
  bucketRange,
  summarizeHistogram,
  PERCENTILES,
  type GpuDevice,
  type QueueMode,
  type GpuQueueOptions,
  type ExecutorOptions,
  type BlockRequest,
  type BlockResult,
  type GpuBenchOptions,
  type GpuBenchResult,
  type BrokenQueue,
  type LatencySummary,
} from "./queues.ts";
export { setKernelImagePath, kernelImageCandidates, KERNEL_FILE } from "./kernels.ts";
export { patternDword, fillPattern, checkPattern } from "./pattern.ts";
export { REQ_TIMEOUT, REQ_BROKEN, REQ_INVALID, REQ_NOT_RUN, HIST_BUCKETS, type BrokenReason } from "./layout.ts";
