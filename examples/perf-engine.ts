/**
 * The load generator behind examples/perf.ts, run in the main thread (one queue pair) or in a
 * Worker per queue pair (examples/perf-worker.ts): keeps `qd` commands outstanding on one I/O
 * queue and records every completion's latency in a fixed log-linear histogram.
 *
 * Low-level API (the default): acquire a CID, rw() the SQE in place (each CID reads or writes its
 * own `bs` slice of the buffer), one submit() per refill, poll() with one completion handler that
 * queues CIDs; one clock read per non-empty poll, which also dates the refill that follows (and
 * the deadlines of its commands: IoQueue.batchTime), nothing allocated per command. The
 * completions' bookkeeping (histogram, counters) comes after the refill's doorbell, while the
 * controller works on the new commands.
 * Async API: `qd` loops each awaiting rwAsync() (a promise per command, by design).
 *
 * Warm-up: the measured job starts once the warm-up time has passed AND the runtime's JIT
 * compiler threads have been idle for a second (at most 3x the warm-up): under emulation the JIT
 * compiles for seconds, and its threads take CPU from the poller (pinned, from the same CPU). The
 * warm-up runs the job itself, whole, in one-second jobs (runJob()).
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import type { DmaBuffer } from "../lib/dma.ts";
import type { NvmeIoQueue } from "../lib/transports/types.ts";
import { NvmeStatusError, NvmeTimeoutError } from "../lib/errors.ts";
import { commandName, NVM_READ, NVM_WRITE } from "../lib/spec/commands.ts";

// ---- latency histogram ---------------------------------------------------------------------------

/** Sub-buckets per power of two: relative bucket width 1/64 (values below 64 ns are exact). */
const SUB_BITS = 6;
const SUB = 1 << SUB_BITS;
/** Powers of two above 64 ns covered: up to 2^(6+42) ns, about 3 days. */
const GROUPS = 42;
export const HIST_BUCKETS = SUB + GROUPS * SUB;
const MAX_EXP = SUB_BITS + GROUPS - 1;

export const PERCENTILES = [1, 5, 25, 50, 75, 90, 95, 99, 99.9] as const;
export type PercentileKey = `p${(typeof PERCENTILES)[number]}`;

/** Bucket of a latency in ns (non-negative). */
function bucketOf(ns: number): number {
  const v = Math.floor(ns);
  if (v < SUB) return v < 0 ? 0 : v;
  let e: number;
  let top: number;
  if (v < 0x1_0000_0000) {
    e = 31 - Math.clz32(v);
    top = v >>> (e - SUB_BITS);
  } else {
    e = Math.min(Math.floor(Math.log2(v)), MAX_EXP);
    top = Math.min(Math.floor(v / 2 ** (e - SUB_BITS)), 2 * SUB - 1);
  }
  return SUB + (e - SUB_BITS) * SUB + (top - SUB);
}

/** Smallest value (ns) of a bucket, and its width. */
export function bucketRange(b: number): { low: number; width: number } {
  if (b < SUB) return { low: b, width: 1 };
  const g = Math.floor((b - SUB) / SUB);
  const m = (b - SUB) % SUB;
  return { low: (SUB + m) * 2 ** g, width: 2 ** g };
}

export class LatencyHistogram {
  /** Count per bucket (ns). */
  readonly counts: Float64Array;
  count = 0;
  sum = 0;
  min = Infinity;
  max = 0;

  constructor(counts?: ArrayLike<number>) {
    this.counts = new Float64Array(HIST_BUCKETS);
    if (counts) this.counts.set(counts);
  }

  record(ns: number): void {
    this.counts[bucketOf(ns)]!++;
    this.count++;
    this.sum += ns;
    if (ns < this.min) this.min = ns;
    if (ns > this.max) this.max = ns;
  }

  merge(o: { counts: ArrayLike<number>; count: number; sum: number; min: number; max: number }): void {
    for (let i = 0; i < HIST_BUCKETS; i++) this.counts[i]! += o.counts[i]!;
    this.count += o.count;
    this.sum += o.sum;
    this.min = Math.min(this.min, o.min);
    this.max = Math.max(this.max, o.max);
  }

  get mean(): number {
    return this.count > 0 ? this.sum / this.count : 0;
  }

  /** The p-th percentile in ns: the middle of its bucket, within [min, max] (exact below 64 ns). */
  percentile(p: number): number {
    if (this.count === 0) return 0;
    const target = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let b = 0; b < HIST_BUCKETS; b++) {
      seen += this.counts[b]!;
      if (seen >= target) {
        const { low, width } = bucketRange(b);
        return Math.min(Math.max(low + (width - 1) / 2, this.min), this.max);
      }
    }
    return this.max;
  }

  /** Plain numbers for postMessage and JSON. */
  toJSON(): { counts: number[]; count: number; sum: number; min: number; max: number } {
    return { counts: Array.from(this.counts), count: this.count, sum: this.sum, min: this.min, max: this.max };
  }
}

// ---- workload -------------------------------------------------------------------------------------

export interface Workload {
  readonly nsid: number;
  readonly lbaSize: number;
  /** The LBA range this queue covers. */
  readonly firstLba: number;
  readonly spanBlocks: number;
  readonly bs: number;
  readonly qd: number;
  readonly pattern: "rand" | "seq";
  readonly rw: "read" | "write" | "mix";
  /** Percentage of reads when rw is "mix". */
  readonly rwmixRead: number;
  /** Stop after this many seconds of measurement, or after `ios` commands (whichever is given). */
  readonly seconds?: number;
  readonly ios?: number;
  /** Run this long before measuring (JIT warm-up, steady state). */
  readonly warmupSeconds: number;
  readonly api: "low" | "async";
  readonly seed: number;
  /**
   * Hybrid polling (low-level API): after 64 empty polls in a row, sleep this many microseconds
   * before polling again. 0 (the default) spins. Sleeping gives the CPU back when pollers outnumber
   * free CPUs (or, in an emulator, when the device model needs the host CPU the poller spins on).
   */
  readonly idleSleepUs?: number;
  /**
   * An experiment (low-level API): busy-wait this many microseconds after each poll that reaped,
   * before the refill and its doorbell, to measure what a slower turnaround costs (bench/README.md
   * section 5). 0 (the default) does not wait.
   */
  readonly turnaroundDelayUs?: number;
  /**
   * For a profiler outside the process (test/vm/profile-guest.ts): the first job writes this file,
   * {"at": epoch ms, "seconds": S}, when its measured window starts (`at` may lie ahead).
   */
  readonly markFile?: string;
}

/** Tell an outside profiler when job `index`'s measured window starts (the first job only). */
export function markMeasuring(w: Workload, index: number, at: number): void {
  if (w.markFile !== undefined && index === 0) writeFileSync(w.markFile, JSON.stringify({ at, seconds: w.seconds ?? null }));
}

export interface JobResult {
  index: number;
  qid: number;
  ios: number;
  reads: number;
  writes: number;
  bytes: number;
  /** Measured time: from the end of the warm-up to the last completion. */
  seconds: number;
  /** The warm-up it ran: the one asked for, or longer while the JIT was still compiling. */
  warmupSeconds: number;
  /** Whether the JIT had gone quiet when the measured window started (absent when not checked). */
  jitQuiet?: boolean;
  errors: number;
  firstError?: string;
  interrupted: boolean;
  /**
   * The low-level loop's meetings with the controller while measured: CQ polls, polls that reaped
   * (each rings the CQ head doorbell once), SQ tail doorbells. Per command they show how a loop's
   * speed changes its batching (absent for the async API).
   */
  loop?: { polls: number; reaps: number; submits: number };
  hist: ReturnType<LatencyHistogram["toJSON"]>;
}

/**
 * Shared progress: [0] stop flag (set by the main thread), then per job index i:
 * [1 + 3i] commands measured, [2 + 3i] bytes measured, [3 + 3i] 1 once measuring.
 */
export const progressSlots = (jobs: number): number => 1 + 3 * jobs;

const YIELD_MS = 50;
/** Warm-up jobs last this long; the JIT counts as quiet after one in which its threads used no CPU. */
const WARMUP_SLICE_MS = 1000;

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The warm-up waits for the JIT at most this many times its own length. */
const WARMUP_MAX_FACTOR = 3;

/**
 * CPU time (clock ticks) used so far by this process's JIT compiler threads (JavaScriptCore
 * names them "JITWorker"), from /proc/self/task; -1 where there is no /proc.
 */
export function jitCpuTicks(): number {
  let tasks: string[];
  try {
    tasks = readdirSync("/proc/self/task");
  } catch {
    return -1;
  }
  let ticks = 0;
  for (const tid of tasks) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${tid}/stat`, "latin1");
    } catch {
      continue; // the thread exited
    }
    const close = stat.lastIndexOf(")");
    if (!stat.slice(stat.indexOf("(") + 1, close).startsWith("JIT")) continue;
    // After "pid (comm) ": state is field 0, utime field 11, stime field 12 (proc(5), fields 14 and 15).
    const f = stat.slice(close + 2).split(" ");
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks;
}

/**
 * Keep `w.qd` commands outstanding on `q` over `buf` (at least qd × bs bytes) until done. With a
 * warm-up, the job first runs as jobs of WARMUP_SLICE_MS each (counted, then thrown away) until
 * the warm-up time has passed and the JIT's threads used no CPU during the last of them (at most
 * 3x the warm-up), then the measured job: the same function with the same branches taken, so the
 * code the JIT compiled during the warm-up is the code that runs measured. (A warm-up inside one
 * job, with bookkeeping only once measuring, left the measured branches cold: the first measured
 * completion sent the optimised loop back to the baseline tier and the JIT compiled it again
 * inside the window, 16 % of the pinned CPU at QD 32 in the guest profile.)
 */
export async function runJob(q: NvmeIoQueue, buf: DmaBuffer, w: Workload, progress: Float64Array, index: number, onTick?: () => void): Promise<JobResult> {
  if (w.warmupSeconds <= 0) return runMeasured(q, buf, w, progress, index, onTick);
  const t0 = performance.now();
  const from = t0 + w.warmupSeconds * 1000;
  const latest = t0 + WARMUP_MAX_FACTOR * w.warmupSeconds * 1000;
  const slice: Workload = { ...w, warmupSeconds: 0, seconds: WARMUP_SLICE_MS / 1000, ios: undefined, markFile: undefined };
  const base = 1 + 3 * index;
  let ticks = jitCpuTicks();
  let quiet = false;
  for (;;) {
    const r = await runMeasured(q, buf, slice, progress, index, onTick);
    // Nothing of the warm-up is reported as measured.
    progress[base] = 0;
    progress[base + 1] = 0;
    progress[base + 2] = 0;
    const now = performance.now();
    if (r.interrupted || r.errors > 0) return { ...r, ios: 0, reads: 0, writes: 0, bytes: 0, seconds: 0, warmupSeconds: (now - t0) / 1000, jitQuiet: false, hist: new LatencyHistogram().toJSON() };
    const t = jitCpuTicks();
    quiet = t < 0 || t === ticks;
    ticks = t;
    if (now >= from && (quiet || now >= latest)) break;
  }
  const tw = performance.now();
  const res = await runMeasured(q, buf, { ...w, warmupSeconds: 0 }, progress, index, onTick);
  return { ...res, warmupSeconds: (tw - t0) / 1000, jitQuiet: quiet };
}

/** One job measured from its first command. */
async function runMeasured(q: NvmeIoQueue, buf: DmaBuffer, w: Workload, progress: Float64Array, index: number, onTick?: () => void): Promise<JobResult> {
  if (w.qd > q.depth) throw new Error(`queue depth ${w.qd} exceeds the queue's ${q.depth} command slots`);
  if (buf.size < w.qd * w.bs && w.api === "async") throw new Error(`buffer of ${buf.size} bytes is too small for ${w.qd} x ${w.bs}`);
  if (buf.size < q.depth * w.bs && w.api === "low") throw new Error(`buffer of ${buf.size} bytes is too small for ${q.depth} x ${w.bs}`);
  const blocks = w.bs / w.lbaSize;
  const slots = Math.floor(w.spanBlocks / blocks);
  if (!Number.isInteger(blocks) || slots < 1) throw new Error(`${w.bs}-byte commands do not fit ${w.spanBlocks} blocks of ${w.lbaSize} bytes`);

  // xorshift32: one state word, no allocation.
  let x = w.seed >>> 0 || 0x9e3779b9;
  const rand32 = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const seq = w.pattern === "seq";
  const bigSpan = slots > 0x1_0000_0000;
  let seqSlot = 0;
  const nextLba = (): number => {
    let s: number;
    if (seq) {
      s = seqSlot;
      seqSlot = seqSlot + 1 === slots ? 0 : seqSlot + 1;
    } else s = bigSpan ? (rand32() * 0x1_0000_0000 + rand32()) % slots : rand32() % slots;
    return w.firstLba + s * blocks;
  };
  const writeAlways = w.rw === "write";
  const mix = w.rw === "mix";
  const mixReadBelow = Math.floor((w.rwmixRead / 100) * 0x1_0000_0000);
  const isWrite = (): boolean => writeAlways || (mix && rand32() >= mixReadBelow);

  const hist = new LatencyHistogram();
  const base = 1 + 3 * index;
  const limit = w.ios ?? Infinity;
  let ios = 0;
  let reads = 0;
  let writes = 0;
  let errors = 0;
  let firstError: string | undefined;
  let interrupted = false;
  let loopCounts: JobResult["loop"];

  const t0 = performance.now();
  const tEnd = w.seconds !== undefined ? t0 + w.seconds * 1000 : Infinity;
  let tLast = t0;
  progress[base + 2] = 1;
  markMeasuring(w, index, Date.now());

  if (w.api === "async") {
    let stopping = false;
    let inflight = 0;
    const loop = async (slot: number) => {
      const offset = slot * w.bs;
      while (!stopping && ios + inflight < limit) {
        const write = isWrite();
        const lba = nextLba();
        inflight++;
        const start = performance.now();
        try {
          await q.rwAsync(write ? NVM_WRITE : NVM_READ, w.nsid, lba, blocks, buf, offset, w.bs);
        } catch (e) {
          errors++;
          firstError ??= (e as Error).message;
          stopping = true;
        }
        inflight--;
        const t = performance.now();
        tLast = t;
        hist.record((t - start) * 1e6);
        ios++;
        if (write) writes++;
        else reads++;
        progress[base] = ios;
        progress[base + 1] = ios * w.bs;
        if (t >= tEnd) stopping = true;
        if (progress[0] !== 0) {
          stopping = true;
          interrupted = true;
        }
        onTick?.();
      }
    };
    const loops: Promise<void>[] = [];
    for (let i = 0; i < w.qd; i++) loops.push(loop(i));
    await Promise.all(loops);
  } else {
    const depth = q.depth;
    const start = new Float64Array(depth);
    const wrote = new Uint8Array(depth);
    // What the handler copies of each completion, because the refill reuses its CID before the
    // bookkeeping: when it started, and whether it wrote.
    const doneStart = new Float64Array(depth);
    const doneWrote = new Uint8Array(depth);
    let nDone = 0;
    let firstStatus = -1;
    let firstCid = 0;
    let firstOpcode = NVM_READ;
    q.onComplete = (cid, status) => {
      doneStart[nDone] = start[cid]!;
      doneWrote[nDone++] = wrote[cid]!;
      if (status !== 0 && errors++ === 0) {
        firstStatus = status;
        firstCid = cid;
        firstOpcode = wrote[cid] === 1 ? NVM_WRITE : NVM_READ;
      }
    };
    const bs = w.bs;
    const qd = w.qd;
    const nsid = w.nsid;
    let polls = 0;
    let reaps = 0;
    let submits = 0;
    const refill = (t: number): void => {
      let posted = 0;
      while (q.outstanding < qd && ios + q.outstanding < limit) {
        const cid = q.acquire();
        if (cid < 0) break;
        // The clock was just read: the batch's deadlines count from it (no clock read of the queue's own).
        if (posted === 0) q.batchTime(t);
        const write = isWrite();
        q.rw(cid, write ? NVM_WRITE : NVM_READ, nsid, nextLba(), blocks, buf, cid * bs, bs);
        start[cid] = t;
        wrote[cid] = write ? 1 : 0;
        posted++;
      }
      if (posted > 0) {
        q.submit();
        submits++;
      }
    };

    let t = performance.now();
    let stopping = false;
    let lastActivity = t;
    let lastYield = t;
    const sleepMs = (w.idleSleepUs ?? 0) / 1000;
    const delayMs = (w.turnaroundDelayUs ?? 0) / 1000;
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    let empty = 0;
    /** Completions of the last poll still to be recorded (counted in `ios` already). */
    let toRecord = 0;
    refill(t);
    for (let spins = 1; ; spins++) {
      const n = q.poll();
      polls++;
      if (n === 0 || nDone === 0) {
        // Hybrid polling: a short futex wait lets the CPU idle (nothing wakes it early).
        if (sleepMs > 0 && ++empty >= 64) {
          empty = 0;
          Atomics.wait(sleeper, 0, 0, sleepMs);
        }
        if ((spins & 255) !== 0) continue;
        t = performance.now();
        if (t - lastActivity > q.timeoutMs) {
          throw new NvmeTimeoutError(`queue ${q.qid}: no completion within ${q.timeoutMs} ms with ${q.outstanding} commands outstanding`, q.timeoutMs);
        }
      } else {
        empty = 0;
        t = performance.now();
        lastActivity = t;
        tLast = t;
        // Counted now, so that the refill of a counted run (--ios) posts no more than it needs.
        ios += nDone;
        toRecord = nDone;
        nDone = 0;
        reaps++;
        // The experiment's wait: bounded by the clock, nothing else.
        if (delayMs > 0) while (performance.now() - t < delayMs);
      }
      if (errors > 0 || t >= tEnd || ios >= limit) stopping = true;
      if (!stopping) refill(t);
      if (toRecord > 0) {
        // After the doorbell: the controller is already working on the new commands.
        for (let k = 0; k < toRecord; k++) {
          hist.record((t - doneStart[k]!) * 1e6);
          if (doneWrote[k] === 1) writes++;
          else reads++;
        }
        toRecord = 0;
        progress[base] = ios;
        progress[base + 1] = ios * bs;
      }
      if (stopping && q.outstanding === 0) break;
      if (t - lastYield > YIELD_MS) {
        // Signals (and the main thread's stop flag) are seen between turns of the event loop.
        await yieldToEventLoop();
        lastYield = performance.now();
        if (progress[0] !== 0 && !stopping) {
          stopping = true;
          interrupted = true;
        }
        onTick?.();
      }
    }
    q.onComplete = null;
    loopCounts = { polls, reaps, submits };
    if (firstStatus >= 0) {
      firstError = new NvmeStatusError(firstStatus, { command: commandName(firstOpcode, false), opcode: firstOpcode, cid: firstCid, sqid: q.qid }).message;
    }
  }
  return {
    index,
    qid: q.qid,
    ios,
    reads,
    writes,
    bytes: ios * w.bs,
    seconds: Math.max(tLast - t0, 0) / 1000,
    warmupSeconds: 0,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    interrupted,
    ...(loopCounts ? { loop: loopCounts } : {}),
    hist: hist.toJSON(),
  };
}
