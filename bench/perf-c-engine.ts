/**
 * The C reference driver's job (c/src/bench_perf.c in libnvm-bench.so): examples/perf-engine.ts's
 * low-level runJob() in C, on the I/O queue pair that examples/perf.ts created through the
 * ordinary controller bring-up. The rings, doorbells, the CIDs' PRP list pages and the data
 * buffer are handed to C as addresses; C runs the whole job (warm-up, measured window, latency
 * histogram) in one call and hands the ring state back, so the TypeScript IoQueue stays usable
 * (and deletable) afterwards. Only the submit/complete loop and its bookkeeping differ from the
 * TypeScript run.
 */
import { ptr, type Pointer } from "bun:ffi";
import type { Controller } from "../lib/controller.ts";
import type { DmaBuffer } from "../lib/dma.ts";
import { InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, UnsupportedError } from "../lib/errors.ts";
import type { IoQueue } from "../lib/io.ts";
import type { NvmeIoQueue } from "../lib/transports/types.ts";
import { commandName, NVM_READ } from "../lib/spec/commands.ts";
import { HIST_BUCKETS, markMeasuring, type JobResult, type Workload } from "../examples/perf-engine.ts";
import { benchNative } from "./bench-native.ts";

/** Parameter slots: c/src/bench_perf.c's P_* enum, in the same order. */
export const PERF_PARAMS = [
  "sq", "sqEntries", "sqTail", "sqHead", "sqDb",
  "cq", "cqEntries", "cqHead", "cqPhase", "cqDb",
  "bar0", "sqid", "depth", "timeoutMs", "maxTransfer",
  "buf", "bufSize", "bufIova",
  "lists", "listIova", "listBytes",
  "nsid", "lbaSize", "firstLba", "spanBlocks", "bs", "qd",
  "seq", "rw", "rwmixRead", "seconds", "ios", "warmup", "seed", "idleSleepUs", "turnaroundDelayUs",
  "progress", "index",
] as const;
type Param = (typeof PERF_PARAMS)[number];

/** Result slots: bench_perf.c's R_* enum; the histogram's counts follow from slot 32 (R_HIST). */
const enum R {
  STATUS = 0,
  IOS,
  READS,
  WRITES,
  ERRORS,
  FIRST_STATUS,
  FIRST_CID,
  FIRST_OPCODE,
  SECONDS,
  COUNT,
  SUM,
  MIN,
  MAX,
  INTERRUPTED,
  SQ_TAIL,
  SQ_HEAD,
  CQ_HEAD,
  CQ_PHASE,
  TIMEOUT_OUTSTANDING,
  WARMUP,
  POLLS,
  REAPS,
  SUBMITS,
  HIST = 32,
}

const ETIMEDOUT = 110;

/** A typed array's address for C. Its buffer is materialized first: bun#32054 (a small array's ptr() may move). */
function address(a: Float64Array | Uint32Array): number {
  void a.buffer;
  return Number(ptr(a));
}

function isPcie(q: NvmeIoQueue): q is IoQueue {
  return q.transport === "pcie";
}

/**
 * Run `w` (low-level API) on `q` over `buf` in C. Same contract as runJob(): `buf` holds at
 * least q.depth x w.bs bytes (each CID its own slice), `progress` is the engine's shared progress
 * array. The queue must be idle and the only SQ on its CQ. Synchronous: the event loop does not
 * run meanwhile (a signal is seen by the C loop through `progress[0]` only when something sets it
 * from another thread), and it is bounded by the run's length and the queue's timeout.
 */
export function runJobC(ctrl: Pick<Controller, "backend" | "knownLbaSizes">, queue: NvmeIoQueue, buf: DmaBuffer, w: Workload, progress: Float64Array, index: number): JobResult {
  // PCIe only: the C loop writes SQ entries into the ring and rings doorbells in BAR0.
  if (!isPcie(queue)) throw new UnsupportedError(`the C reference drives PCIe queues (memory rings and doorbells), not ${queue.transport}`);
  const q = queue;
  if (w.api !== "low") throw new UnsupportedError("the C reference runs the low-level API only");
  if (w.qd > q.depth) throw new InvalidArgumentError(`queue depth ${w.qd} exceeds the queue's ${q.depth} command slots`);
  if (buf.size < q.depth * w.bs) throw new InvalidArgumentError(`buffer of ${buf.size} bytes is too small for ${q.depth} x ${w.bs}`);
  if (q.outstanding !== 0) throw new InvalidArgumentError(`queue ${q.qid} has ${q.outstanding} commands outstanding: hand it over idle`);
  if (q.ioCq.sqs.size !== 1) throw new UnsupportedError(`queue ${q.qid} shares its completion queue: the C reference needs a CQ of its own`);
  if (q.useSgl) throw new UnsupportedError("the C reference builds PRPs only");
  if (buf.base !== 0) throw new InvalidArgumentError("pass a whole buffer, not a region");
  const lib = benchNative();
  const nParams = lib.nvm_bench_perf_layout(0);
  const histAt = lib.nvm_bench_perf_layout(1);
  const buckets = lib.nvm_bench_perf_layout(2);
  if (nParams !== PERF_PARAMS.length || histAt !== R.HIST || buckets !== HIST_BUCKETS) {
    throw new Error(`libnvm-bench.so's perf layout (${nParams} params, results at ${histAt}, ${buckets} buckets) does not match bench/perf-c-engine.ts`);
  }
  const lbaSize = ctrl.knownLbaSizes.get(w.nsid);
  if (lbaSize === undefined || lbaSize !== w.lbaSize) throw new InvalidArgumentError(`namespace ${w.nsid}'s LBA size is not known to the controller: open it first`);

  // Keep every array the C side reads referenced until the call returns.
  const lists = q.listBuffer(0);
  const bufIova = buf.iova;
  const listIova = lists.iova;
  const cq = q.ioCq.cq;
  const v: Record<Param, number> = {
    sq: Number(q.sq.mem.pointer),
    sqEntries: q.sq.entries,
    sqTail: q.sq.tail,
    sqHead: q.sq.head,
    sqDb: q.sq.doorbell,
    cq: Number(cq.mem.pointer),
    cqEntries: cq.entries,
    cqHead: cq.head,
    cqPhase: cq.phase,
    cqDb: cq.doorbell,
    bar0: Number(ctrl.backend.bar0),
    sqid: q.qid,
    depth: q.depth,
    timeoutMs: q.timeoutMs,
    maxTransfer: q.maxTransfer,
    buf: Number(buf.pointer),
    bufSize: buf.size,
    bufIova: address(bufIova),
    lists: Number(lists.pointer),
    listIova: address(listIova),
    listBytes: q.listPages * 4096,
    nsid: w.nsid,
    lbaSize: w.lbaSize,
    firstLba: w.firstLba,
    spanBlocks: w.spanBlocks,
    bs: w.bs,
    qd: w.qd,
    seq: w.pattern === "seq" ? 1 : 0,
    rw: w.rw === "read" ? 0 : w.rw === "write" ? 1 : 2,
    rwmixRead: w.rwmixRead,
    seconds: w.seconds ?? -1,
    ios: w.ios ?? -1,
    warmup: w.warmupSeconds,
    seed: w.seed >>> 0,
    idleSleepUs: w.idleSleepUs ?? 0,
    turnaroundDelayUs: w.turnaroundDelayUs ?? 0,
    progress: address(progress),
    index,
  };
  const params = new Float64Array(PERF_PARAMS.map((k) => v[k]));
  const out = new Float64Array(R.HIST + HIST_BUCKETS);
  // C measures after exactly `warmup` seconds (no JIT to wait for).
  markMeasuring(w, index, Date.now() + w.warmupSeconds * 1000);
  const rc = lib.nvm_bench_perf_run(address(params) as unknown as Pointer, address(out) as unknown as Pointer);
  // Hand the rings back in the state the controller left them in.
  q.sq.tail = out[R.SQ_TAIL]!;
  q.sq.head = out[R.SQ_HEAD]!;
  cq.head = out[R.CQ_HEAD]!;
  cq.phase = out[R.CQ_PHASE]!;
  void [bufIova, listIova, params];
  if (rc === -ETIMEDOUT) {
    throw new NvmeTimeoutError(`queue ${q.qid}: no completion within ${q.timeoutMs} ms with ${out[R.TIMEOUT_OUTSTANDING]} commands outstanding (C reference)`, q.timeoutMs);
  }
  if (rc !== 0) throw new Error(`nvm_bench_perf_run failed: errno ${-rc}`);
  const errors = out[R.ERRORS]!;
  let firstError: string | undefined;
  if (errors > 0) {
    const opcode = out[R.FIRST_OPCODE]! || NVM_READ;
    firstError = new NvmeStatusError(out[R.FIRST_STATUS]!, { command: commandName(opcode, false), opcode, cid: out[R.FIRST_CID]!, sqid: q.qid }).message;
  }
  const ios = out[R.IOS]!;
  return {
    index,
    qid: q.qid,
    ios,
    reads: out[R.READS]!,
    writes: out[R.WRITES]!,
    bytes: ios * w.bs,
    seconds: out[R.SECONDS]!,
    warmupSeconds: out[R.WARMUP]!,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    interrupted: out[R.INTERRUPTED] === 1,
    loop: { polls: out[R.POLLS]!, reaps: out[R.REAPS]!, submits: out[R.SUBMITS]! },
    hist: { counts: Array.from(out.subarray(R.HIST)), count: out[R.COUNT]!, sum: out[R.SUM]!, min: out[R.MIN]!, max: out[R.MAX]! },
  };
}
