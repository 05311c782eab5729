/**
 * GPU-initiated I/O: I/O queue pairs of a controller driven by GPU threads, or, in host mode, by OS
 * threads running the very same queue code (c/include/nvm_queue_core.h, nvm_queue_job.h).
 *
 *   using gq = createGpuQueues(ctrl, { device: "cuda", count: 4, entries: 1024 });
 *   const r = await gq.readBlocks(ns, [{ lba: 0, blocks: 8, offset: 0 }, ...], buf);
 *   const b = await gq.bench({ ns, buffer: buf, bs: 4096, threads: 4096, seconds: 5, verify: true });
 *
 * The queues are ordinary I/O queues created through the admin path (Controller.createIoQueue),
 * with SQ, CQ and data in host DMA memory (the placement that works with the IOMMU on: gpu.md
 * section 4, rung 1). For each run they are lent (lib/lease.ts) to the executors, which then own
 * their rings: the controller's reset stops the executors (bounded) before it re-creates the
 * queues, its close() stops them before it deletes the queues and frees their memory, and while
 * they are lent, the run's data buffer is not freed under a command that may still reach it.
 *
 * A run's waits are all bounded (timeoutMs). A command whose completion does not come breaks its
 * queue: every executor on it stops, and before the run's promise settles the queue is deleted
 * (Delete I/O Submission Queue ends every command on it, NVMe Base 2.0 5.7; a controller that does
 * not answer is reset instead) and created again, so its buffers are free and the set is usable.
 *
 * GPU mode (device "cuda"): the rings, the list pages, the data buffer and a stop word are host
 * memory registered with the GPU (cuMemHostRegister DEVICEMAP); the doorbells are BAR0's pages
 * registered as I/O memory (IOMEMORY | DEVICEMAP; unverified on a real GPU here), the queue state
 * and the job are GPU memory. The kernels are c/cuda/nvm_queue.cu's fatbin (lib/gpu/kernels.ts).
 */
import type { Pointer } from "bun:ffi";
import type { Controller } from "../controller.ts";
import { DmaBuffer, releaseDeferred } from "../dma.ts";
import { ClosedError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, UnsupportedError } from "../errors.ts";
import type { IoQueue } from "../io.ts";
import { exportedMemory, LeaseClient, type LocalBorrower, type QueueLease } from "../lease.ts";
import type { Namespace } from "../namespace.ts";
import { checkPtr, native } from "../native.ts";
import { commandName, NVM_READ, NVM_WRITE } from "../spec/commands.ts";
import { cqHeadDoorbell, sqTailDoorbell } from "../spec/registers.ts";
import { cuda } from "../cuda/index.ts";
import type { CudaMemory, HostRegistration, IoMemoryRegistration } from "../cuda/memory.ts";
import { KERNEL_COOP, KERNEL_SHARED, KernelStream } from "./kernels.ts";
import {
  BROKEN,
  checkLayout,
  D,
  G,
  HIST_BUCKETS,
  HIST_SUB,
  J,
  JOB_BENCH,
  JOB_LIST,
  JOB_SEQ,
  JOB_VERIFY,
  Mem,
  MODE_COOP,
  MODE_SHARED,
  NVMQ_F_MMIO_DOORBELL,
  NVMQ_JOB_ABI,
  Q,
  R,
  REQ_BROKEN,
  REQ_INVALID,
  REQ_NOT_RUN,
  REQ_TIMEOUT,
  W,
  workLayout,
  type BrokenReason,
} from "./layout.ts";

const PAGE = 4096;
const NVM_DMA_NOLOCK = 2;
/** One PRP list page per slot: 512 entries after PRP1. */
const MAX_PAGES_PER_COMMAND = 513;
const MAX_CUDA_GROUPS = 256;

export type GpuDevice = "cuda" | "cpu";
export type QueueMode = "shared" | "coop";

export interface GpuQueueOptions {
  /** Where the queue code runs: GPU threads ("cuda") or OS threads ("cpu", host mode). Defaults to "cuda". */
  readonly device?: GpuDevice;
  /** CUDA device ordinal (device "cuda"). Defaults to 0. */
  readonly cudaDevice?: number;
  /** Queue pairs to create. Defaults to 1. */
  readonly count?: number;
  /** Entries of each SQ and its CQ: a power of two from 2 to 32768, at most CAP.MQES+1. Defaults to 256 (less when MQES is smaller). */
  readonly entries?: number;
  /**
   * "shared": every executor submits on its own (FIFO tickets, many per queue); "coop": one block
   * per queue, its lanes write one SQE each and lane 0 rings once per round. Defaults to "shared".
   */
  readonly mode?: QueueMode;
  /** The bound of every wait of the queue code, in ms. Defaults to the controller's timeout. */
  readonly timeoutMs?: number;
}

/** How many executors a run uses. */
export interface ExecutorOptions {
  /** Shared mode: executor threads (GPU threads, or OS threads with device "cpu"). Defaults: cuda count x (entries - 1), cpu count. */
  readonly threads?: number;
  /** Shared mode: commands each executor keeps outstanding. Defaults to 1. */
  readonly depth?: number;
  /** Coop mode: lanes per block (one block per queue). Defaults to min(entries - 1, 1024, cpu: 32). */
  readonly lanes?: number;
}

/** One request of readBlocks()/writeBlocks(): `blocks` blocks at `lba`, the data at `offset` of the buffer. */
export interface BlockRequest {
  readonly lba: number;
  readonly blocks: number;
  /** Byte offset in the buffer (a multiple of 4). */
  readonly offset: number;
}

export interface BlockResult {
  /** Requests that completed with success. */
  readonly ok: number;
  /** Per request: 0, the NVMe status (15 bits), or a REQ_* code of the queue core. */
  readonly statuses: Uint32Array;
  /** Requests that did not succeed, with a typed error each. */
  readonly failures: readonly { readonly index: number; readonly error: Error }[];
  readonly seconds: number;
  readonly brokenQueues: readonly BrokenQueue[];
  /** Queue ids deleted and created again after a timeout (their old commands are ended). */
  readonly recovered: readonly number[];
}

export interface GpuBenchOptions extends ExecutorOptions {
  readonly ns: Namespace;
  /** Data buffer: one region of `bs` bytes per executor lane (threads x depth, or count x lanes). */
  readonly buffer: DmaBuffer;
  /** Bytes per command: a multiple of the LBA size, at most MDTS and 513 pages. Defaults to 4096. */
  readonly bs?: number;
  /** Measure this long (the executors stop themselves). */
  readonly seconds?: number;
  /** Or: this many commands in total. */
  readonly ios?: number;
  /** Share of reads, 0 to 100. Defaults to 100. */
  readonly readPct?: number;
  /** "rand" (default) or "seq" (one cursor shared by all executors). */
  readonly pattern?: "rand" | "seq";
  /** Check every block read against the pattern of its LBA (written by an earlier run). */
  readonly verify?: boolean;
  /** First LBA and number of LBAs covered. Defaults: the whole namespace. */
  readonly lbaFirst?: number;
  readonly lbaCount?: number;
  /** Pattern seed (writes and verification must agree). Defaults to 0x5eed. */
  readonly seed?: number;
}

export interface BrokenQueue {
  readonly qid: number;
  readonly reason: BrokenReason;
  /** The CID whose wait broke it (reason "wait", "reserve", "publish"), or -1. */
  readonly cid: number;
}

export interface LatencySummary {
  readonly meanUs: number;
  readonly minUs: number;
  readonly maxUs: number;
  readonly percentilesUs: Readonly<Record<string, number>>;
}

export interface GpuBenchResult {
  readonly device: GpuDevice;
  readonly mode: QueueMode;
  readonly queues: number;
  readonly executors: number;
  readonly depth: number;
  readonly ios: number;
  readonly reads: number;
  readonly writes: number;
  /** Commands completed with a non-zero status. */
  readonly errors: number;
  /** Waits that passed their deadline (each broke its queue). */
  readonly timeouts: number;
  /** Blocks read back without their pattern (verify). */
  readonly verifyErrors: number;
  readonly seconds: number;
  readonly iops: number;
  readonly mibPerSec: number;
  readonly latency: LatencySummary;
  /** Latency histogram: count per bucket (8 exact below 8 ns, then 8 per power of two, ns). */
  readonly histogram: readonly number[];
  readonly doorbells: number;
  readonly firstError?: string;
  readonly brokenQueues: readonly BrokenQueue[];
  readonly recovered: readonly number[];
}

export const PERCENTILES = [1, 5, 25, 50, 75, 90, 95, 99, 99.9] as const;

/** Lower bound and width (ns) of histogram bucket `b`. */
export function bucketRange(b: number): { low: number; width: number } {
  if (b < HIST_SUB) return { low: b, width: 1 };
  const g = Math.floor((b - HIST_SUB) / HIST_SUB);
  const sub = (b - HIST_SUB) % HIST_SUB;
  return { low: (HIST_SUB + sub) * 2 ** g, width: 2 ** g };
}

export function summarizeHistogram(hist: readonly number[], sumNs: number): LatencySummary {
  const count = hist.reduce((a, b) => a + b, 0);
  const us = (ns: number) => Number((ns / 1000).toFixed(3));
  if (count === 0) return { meanUs: 0, minUs: 0, maxUs: 0, percentilesUs: Object.fromEntries(PERCENTILES.map((p) => [`p${p}`, 0])) };
  let first = -1;
  let last = -1;
  hist.forEach((c, b) => {
    if (c > 0) {
      if (first < 0) first = b;
      last = b;
    }
  });
  const mid = (b: number) => {
    const r = bucketRange(b);
    return r.low + (r.width - 1) / 2;
  };
  const percentilesUs: Record<string, number> = {};
  for (const p of PERCENTILES) {
    const target = Math.max(1, Math.ceil((p / 100) * count));
    let seen = 0;
    for (let b = 0; b < hist.length; b++) {
      seen += hist[b]!;
      if (seen >= target) {
        percentilesUs[`p${p}`] = us(mid(b));
        break;
      }
    }
  }
  const lastRange = bucketRange(last);
  return { meanUs: us(sumNs / count), minUs: us(bucketRange(first).low), maxUs: us(lastRange.low + lastRange.width - 1), percentilesUs };
}

// ---- memory the executors use -------------------------------------------------------------------

/**
 * An area the executors read or write: in host mode C memory they use in place; in GPU mode GPU
 * memory with a host staging copy the host fills and reads (upload/download).
 */
class Area {
  readonly host: Mem;
  readonly #gpu: CudaMemory | undefined;
  #freed = false;

  constructor(bytes: number, gpuDevice: number | undefined) {
    const size = Math.max(PAGE, Math.ceil(bytes / PAGE) * PAGE);
    const p = checkPtr(native().nvm_dma_alloc(size, NVM_DMA_NOLOCK), "nvm_dma_alloc");
    this.host = new Mem(p, size);
    try {
      this.#gpu = gpuDevice === undefined ? undefined : cuda.alloc(size, { device: gpuDevice });
    } catch (e) {
      native().nvm_dma_free(p, size, NVM_DMA_NOLOCK);
      throw e;
    }
  }

  /** Where the executors see byte 0. */
  get address(): bigint {
    return this.#gpu ? this.#gpu.devicePointer : BigInt(this.host.address);
  }

  upload(bytes = this.host.size): void {
    this.#gpu?.copyFromHost(this.host.bytes.subarray(0, bytes));
  }

  download(bytes = this.host.size, offset = 0): void {
    this.#gpu?.copyToHost(this.host.bytes.subarray(offset, offset + bytes), { offset });
  }

  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    try {
      if (this.#gpu && !this.#gpu.freed) this.#gpu.free();
    } finally {
      native().nvm_dma_free(this.host.pointer, this.host.size, NVM_DMA_NOLOCK);
    }
  }
}

interface Slot {
  queue: IoQueue;
  lists: DmaBuffer;
  sqReg?: HostRegistration;
  cqReg?: HostRegistration;
  listsReg?: HostRegistration;
}

interface Executors {
  readonly executors: number;
  readonly perExecutor: number;
  readonly mode: number;
  readonly grid: number;
  readonly block: number;
}

interface Active {
  /** Host mode: the run handle of nvm_q_start (null once joined). */
  handle: Pointer | null;
  /** GPU mode: the stream the kernel runs on. */
  stream: KernelStream | undefined;
  leases: QueueLease[];
  finished: boolean;
  /** Set when the owner's reset, abandon or close stopped the executors. */
  interruptedBy?: "reset" | "abandon" | "close";
}

interface Outcome {
  work: Area;
  job: Area;
  reqs?: Area;
  states: { broken: number; cid: number; busy: number; doorbells: number }[];
  brokenQueues: BrokenQueue[];
  recovered: number[];
  interruptedBy?: "reset" | "abandon" | "close";
}

function powerOfTwoBelow(n: number): number {
  let p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

function int(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, got ${String(v)}`);
  }
  return v;
}

/** Create `opts.count` I/O queue pairs on `ctrl` for GPU threads (or host threads) to drive. */
export function createGpuQueues(ctrl: Controller, opts: Readonly<GpuQueueOptions> = {}): GpuQueues {
  return new GpuQueues(ctrl, opts);
}

export class GpuQueues implements LocalBorrower {
  readonly controller: Controller;
  readonly device: GpuDevice;
  readonly mode: QueueMode;
  readonly count: number;
  readonly entries: number;
  readonly timeoutMs: number;
  readonly cudaDevice: number;
  readonly #slots: Slot[] = [];
  readonly #stateStride: number;
  readonly #states: Area;
  readonly #queueTable: Area;
  readonly #listsBus: Area;
  readonly #stop: DmaBuffer;
  readonly #desc: Mem;
  #stopReg: HostRegistration | undefined;
  #doorbells: IoMemoryRegistration | undefined;
  #active: Active | undefined;
  #closed = false;
  /** Set when executors could not be stopped: their memory is kept, nothing else runs. */
  #failed: Error | undefined;
  readonly #unhook: () => void;

  constructor(ctrl: Controller, opts: Readonly<GpuQueueOptions>) {
    checkLayout();
    if (ctrl.closed) throw new ClosedError(`controller ${ctrl.name} is closed; open it again`);
    // The executors write SQ entries into rings in memory and ring doorbells in BAR0: PCIe only.
    if (ctrl.transport !== "pcie") {
      throw new UnsupportedError(`GPU queues need a controller reached over PCIe (rings in memory, doorbells in BAR0); ${ctrl.name} is reached over ${ctrl.transport.toUpperCase()}`);
    }
    this.controller = ctrl;
    const device = opts.device ?? "cuda";
    if (device !== "cuda" && device !== "cpu") throw new InvalidArgumentError(`device must be "cuda" or "cpu", got ${String(device)}`);
    this.device = device;
    const mode = opts.mode ?? "shared";
    if (mode !== "shared" && mode !== "coop") throw new InvalidArgumentError(`mode must be "shared" or "coop", got ${String(mode)}`);
    this.mode = mode;
    this.count = int("count", opts.count ?? 1, 1, 1024);
    // CIDs are 0 to entries - 1 and never FFFFh: 32768 at most.
    const maxEntries = Math.min(32768, ctrl.cap.mqes + 1);
    const entries = opts.entries ?? Math.min(256, powerOfTwoBelow(maxEntries));
    if (!Number.isSafeInteger(entries) || entries < 2 || entries > maxEntries || (entries & (entries - 1)) !== 0) {
      throw new InvalidArgumentError(
        `entries ${entries}: the queue code needs a power of two from 2 to ${powerOfTwoBelow(maxEntries)} (CAP.MQES+1 = ${ctrl.cap.mqes + 1}, at most 32768)`,
      );
    }
    this.entries = entries;
    this.timeoutMs = opts.timeoutMs ?? ctrl.timeoutMs;
    if (!(this.timeoutMs > 0) || !Number.isFinite(this.timeoutMs)) throw new InvalidArgumentError(`timeoutMs must be a positive number, got ${this.timeoutMs}`);
    this.cudaDevice = opts.cudaDevice ?? 0;
    const gpu = device === "cuda" ? this.cudaDevice : undefined;
    const granted = ctrl.ioQueuesGranted();
    if (Math.min(granted.sqs, granted.cqs) < this.count) {
      throw new InvalidArgumentError(`count ${this.count}: the controller granted ${Math.min(granted.sqs, granted.cqs)} I/O queue pairs (Number of Queues)`);
    }
    const stateBytes = native().nvm_q_state_bytes(entries);
    this.#stateStride = Math.ceil(stateBytes / 256) * 256;
    const cleanup: (() => void)[] = [];
    try {
      this.#desc = new Mem(checkPtr(native().nvm_host_alloc(D.SIZE), "nvm_host_alloc"), D.SIZE);
      cleanup.push(() => native().nvm_host_free(this.#desc.pointer));
      this.#states = new Area(this.count * this.#stateStride, gpu);
      cleanup.push(() => this.#states.free());
      this.#queueTable = new Area(this.count * 8, gpu);
      cleanup.push(() => this.#queueTable.free());
      this.#listsBus = new Area(this.count * entries * 8, gpu);
      cleanup.push(() => this.#listsBus.free());
      this.#stop = ctrl.allocBuffer(PAGE);
      cleanup.push(() => this.#stop.free());
      if (device === "cuda") {
        this.#stopReg = cuda.registerHost(this.#stop, { device: this.cudaDevice });
        cleanup.push(() => this.#stopReg?.unregister());
      }
      for (let i = 0; i < this.count; i++) {
        this.#slots.push(this.#newSlot());
        cleanup.push(() => this.#dropSlot(this.#slots.pop()!));
      }
      if (device === "cuda") this.#registerDoorbells();
    } catch (e) {
      this.#unhook = () => {};
      for (const f of cleanup.reverse()) {
        try {
          f();
        } catch {
          // Undoing a half-built set: the original error is the one to report.
        }
      }
      throw e;
    }
    this.#unhook = ctrl.beforeClose(() => this.#controllerClosing());
  }

  /**
   * The controller is closing: stop a run (bounded; the run then settles as stopped by close()),
   * and release the GPU's mappings of the controller's memory and BAR0 while both still exist.
   */
  #controllerClosing(): void {
    const a = this.#active;
    if (a && this.#stopExecutors(a, this.timeoutMs + 5000)) a.interruptedBy ??= "close";
    if (a && !a.finished) {
      this.#failed ??= new NvmeTimeoutError("the queue executors did not stop before the controller closed", this.timeoutMs);
      return;
    }
    for (const r of [this.#doorbells, this.#stopReg, ...this.#slots.flatMap((s) => [s.sqReg, s.cqReg, s.listsReg])]) {
      try {
        if (r?.registered) r.unregister();
      } catch {
        // The controller closes either way; the registration went with its pages.
      }
    }
  }

  /** The I/O queues the executors drive (do not submit on them yourself). */
  get queues(): readonly IoQueue[] {
    return this.#slots.map((s) => s.queue);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** True while a run is going on. */
  get running(): boolean {
    return this.#active !== undefined;
  }

  #newSlot(): Slot {
    const ctrl = this.controller;
    const queue = ctrl.createIoQueue({ entries: this.entries, timeoutMs: this.timeoutMs }) as IoQueue;
    let lists: DmaBuffer | undefined;
    const slot: Slot = { queue, lists: undefined as unknown as DmaBuffer };
    try {
      // One PRP list page per slot (CID): the core writes a command's list into its own page.
      lists = ctrl.allocBuffer(this.entries * PAGE);
      slot.lists = lists;
      if (this.device === "cuda") {
        slot.sqReg = cuda.registerHost(queue.sq.mem, { device: this.cudaDevice });
        slot.cqReg = cuda.registerHost(queue.ioCq.cq.mem, { device: this.cudaDevice });
        slot.listsReg = cuda.registerHost(lists, { device: this.cudaDevice });
      }
    } catch (e) {
      this.#dropSlot(slot);
      throw e;
    }
    return slot;
  }

  /** Release a slot's registrations, its list pages and its queue pair (deleted on the controller). */
  #dropSlot(slot: Slot): void {
    for (const r of [slot.sqReg, slot.cqReg, slot.listsReg]) if (r?.registered) r.unregister();
    slot.lists?.free();
    if (!this.controller.closed && !slot.queue.closed) this.controller.deleteIoQueue(slot.queue);
  }

  /** BAR0's doorbell pages of every queue of the set, registered as I/O memory for the GPU. */
  #registerDoorbells(): void {
    this.#doorbells?.unregister();
    this.#doorbells = undefined;
    const dstrd = this.controller.cap.dstrd;
    const offsets = this.#slots.flatMap((s) => [sqTailDoorbell(s.queue.qid, dstrd), cqHeadDoorbell(s.queue.ioCq.qid, dstrd)]);
    const first = Math.floor(Math.min(...offsets) / PAGE) * PAGE;
    const end = Math.ceil((Math.max(...offsets) + 4) / PAGE) * PAGE;
    const bar0 = Number(this.controller.backend.bar0);
    // The driver maps BAR pages through their present PTEs: read each page once first (disnvm and
    // VFIO fill BAR mappings on first touch).
    for (let o = first; o < end; o += PAGE) native().nvm_read32(this.controller.backend.bar0, o);
    this.#doorbells = cuda.registerIoMemory(bar0 + first, end - first, { device: this.cudaDevice });
  }

  /** Executor address of `hostOffset` bytes into BAR0 (a doorbell). */
  #doorbellAddress(offset: number): bigint {
    if (this.device === "cpu") return BigInt(Number(this.controller.backend.bar0) + offset);
    const reg = this.#doorbells!;
    return reg.devicePointer + BigInt(Number(this.controller.backend.bar0) + offset - reg.hostAddress);
  }

  #check(): void {
    if (this.#closed) throw new ClosedError("this GPU queue set was closed; create another with createGpuQueues()");
    if (this.#failed) throw this.#failed;
    if (this.controller.closed) throw new ClosedError(`controller ${this.controller.name} is closed; open it again`);
    if (this.#active) throw new InvalidArgumentError("a run is already going on this GPU queue set: await it first (one run at a time)");
  }

  #executors(e: Readonly<ExecutorOptions>, defaultsForList: boolean): Executors {
    if (this.mode === "coop") {
      const maxLanes = Math.min(this.entries - 1, 1024);
      const lanes = int("lanes", e.lanes ?? Math.min(maxLanes, this.device === "cpu" ? 32 : 1024), 1, maxLanes);
      return { executors: this.count, perExecutor: lanes, mode: MODE_COOP, grid: this.count, block: lanes };
    }
    const dflt = this.device === "cuda" ? this.count * (this.entries - 1) : this.count;
    const threads = int("threads", e.threads ?? dflt, 1, this.device === "cpu" ? 4096 : 0x7fffffff);
    const depth = defaultsForList ? 1 : int("depth", e.depth ?? 1, 1, this.entries - 1);
    const block = Math.min(threads, 128);
    return { executors: threads, perExecutor: depth, mode: MODE_SHARED, grid: Math.ceil(threads / block), block };
  }

  /** Build each queue's state from the ring state its IoQueue holds now (lent to us just before). */
  #initStates(): void {
    const d = this.#desc;
    const stopAddr = this.device === "cuda" ? this.#stopReg!.devicePointer : BigInt(Number(this.#stop.pointer));
    this.#stop.u32[0] = 0;
    const listsBus = this.#listsBus.host;
    const dstrd = this.controller.cap.dstrd;
    this.#slots.forEach((s, i) => {
      const q = s.queue;
      d.bytes.fill(0);
      d.setU32(D.entries, this.entries);
      d.setU32(D.sqid, q.qid);
      d.setU32(D.flags, this.device === "cuda" ? NVMQ_F_MMIO_DOORBELL : 0);
      d.setU32(D.sqTail, q.sq.tail);
      d.setU32(D.sqHead, q.sq.head);
      d.setU32(D.cqHead, q.ioCq.cq.head);
      d.setU32(D.cqPhase, q.ioCq.cq.phase);
      const addr = (b: DmaBuffer, reg: HostRegistration | undefined) => (reg ? reg.devicePointer : BigInt(Number(b.pointer)));
      d.setU64(D.sq, addr(q.sq.mem, s.sqReg));
      d.setU64(D.cq, addr(q.ioCq.cq.mem, s.cqReg));
      d.setU64(D.sqDb, this.#doorbellAddress(sqTailDoorbell(q.qid, dstrd)));
      d.setU64(D.cqDb, this.#doorbellAddress(cqHeadDoorbell(q.ioCq.qid, dstrd)));
      d.setU64(D.lists, addr(s.lists, s.listsReg));
      for (let k = 0; k < this.entries; k++) listsBus.setU64((i * this.entries + k) * 8, s.lists.busAddress(k * PAGE));
      d.setU64(D.listsBus, this.#listsBus.address + BigInt(i * this.entries * 8));
      d.setU64(D.stop, stopAddr);
      d.setU64(D.timeoutNs, Math.round(this.timeoutMs * 1e6));
      const state = (Number(this.#states.host.pointer) + i * this.#stateStride) as Pointer;
      if (native().nvm_q_init(state, d.pointer) !== 0) throw new InvalidArgumentError(`queue ${q.qid}: the queue core refused its ring state (tail ${q.sq.tail}, head ${q.sq.head})`);
      this.#queueTable.host.setU64(i * 8, this.#states.address + BigInt(i * this.#stateStride));
    });
    this.#states.upload(this.count * this.#stateStride);
    this.#queueTable.upload();
    this.#listsBus.upload();
  }

  /** The executors' view of `buf`: address of its first page, the page table, and buf's offset in that page. */
  #dataView(buf: DmaBuffer): { pages: Area; shift: number; reg?: HostRegistration } {
    if (!(buf instanceof DmaBuffer)) throw new InvalidArgumentError("the data buffer must be a DmaBuffer (ctrl.allocBuffer())");
    if (buf.freed) throw new ClosedError("the data buffer was freed; allocate a new one");
    if (!buf.belongsTo(this.controller.backend)) throw new InvalidArgumentError("the data buffer belongs to another controller: allocate it with this controller's allocBuffer()");
    const shift = buf.base % PAGE;
    const firstPage = Math.floor(buf.base / PAGE);
    const npages = Math.ceil((shift + buf.size) / PAGE);
    const pages = new Area(npages * 8, this.device === "cuda" ? this.cudaDevice : undefined);
    const iova = buf.iova;
    for (let i = 0; i < npages; i++) pages.host.setU64(i * 8, BigInt(iova[2 * (firstPage + i)]!) + (BigInt(iova[2 * (firstPage + i) + 1]!) << 32n));
    pages.upload();
    let reg: HostRegistration | undefined;
    if (this.device === "cuda") {
      try {
        reg = cuda.registerHost(buf, { device: this.cudaDevice });
      } catch (e) {
        pages.free();
        throw e;
      }
    }
    return { pages, shift, ...(reg ? { reg } : {}) };
  }

  // ---- runs -------------------------------------------------------------------------------------

  /** Lend every queue to this set's executors (the controller's resets then go through stop()). */
  #lend(): QueueLease[] {
    const leases: QueueLease[] = [];
    try {
      for (const s of this.#slots) {
        const q = s.queue;
        if (q.outstanding > 0) throw new InvalidArgumentError(`I/O queue ${q.qid} has ${q.outstanding} commands of its own outstanding: the set's queues are for its executors only`);
        const lease = this.controller.lendIoQueue(q);
        lease.setLocalBorrower(this);
        leases.push(lease);
      }
    } catch (e) {
      // Nothing ran: the queues go back with the ring state they came with.
      leases.forEach((l, i) => {
        const q = this.#slots[i]!.queue;
        this.#giveBack(l, q.sq.tail, q.sq.head, q.ioCq.cq.head, q.ioCq.cq.phase, false);
      });
      throw e;
    }
    return leases;
  }

  #giveBack(lease: QueueLease, tail: number, head: number, cqHead: number, phase: number, busy: boolean): void {
    lease.setLocalBorrower(undefined);
    if (lease.lent) new LeaseClient(lease.sab, undefined, 0).release(tail, head, cqHead, phase, busy);
  }

  /** LocalBorrower: the controller resets, or gives the queue up: stop the executors now. */
  stop(why: "reset" | "abandon", ms: number): boolean {
    const a = this.#active;
    if (!a) return true;
    const stopped = this.#stopExecutors(a, ms);
    if (!stopped) return false;
    a.interruptedBy ??= why;
    if (why === "reset") this.#awaitPosted(Math.min(this.timeoutMs, 2000));
    return true;
  }

  /**
   * After the executors stopped, their commands are still with the controller: wait (bounded) until
   * it has posted a completion for each, so a reset disables a controller with nothing in flight
   * where it can (QEMU 7.2's controller crashed, SIGSEGV in nvme_rw_complete_cb, on a disable with
   * this set's commands in flight). A controller that does not complete them is disabled anyway.
   * Reads the rings only: the completions are dropped with the rings after the disable.
   */
  #awaitPosted(ms: number): void {
    if (this.device === "cuda") this.#states.download(this.count * this.#stateStride);
    const st = this.#states.host;
    const deadline = performance.now() + ms;
    this.#slots.forEach((slot, i) => {
      const o = i * this.#stateStride;
      const offBusy = st.u32(o + Q.offBusy);
      let busy = 0;
      for (let k = 0; k < this.entries; k++) busy += st.u32(o + offBusy + 4 * k) !== 0 ? 1 : 0;
      const cqe = slot.queue.ioCq.cq.cqe;
      let head = st.u32(o + Q.cqHead);
      let phase = st.u32(o + Q.cqPhase);
      while (busy > 0) {
        // Phase Tag: bit 16 of DW3 (Status Field bit 0); Atomics.load so the loop reads memory.
        if (((Atomics.load(cqe, head * 4 + 3) >>> 16) & 1) === phase) {
          busy--;
          if (++head === this.entries) {
            head = 0;
            phase ^= 1;
          }
        } else if (performance.now() > deadline) return;
      }
    });
  }

  /** LocalBorrower: disabled, so every command ended; the re-created queues start empty, so do their rings here. */
  emptyRings(): void {
    if (!this.#active) return;
    const err = new NvmeTimeoutError("failed by a controller reset during a GPU queue run", this.timeoutMs);
    for (const s of this.#slots) {
      s.queue.resetAfterDisable(err);
      s.queue.ioCq.reset();
    }
  }

  /** Set the stop word and wait (bounded) for every executor to return. */
  #stopExecutors(a: Active, ms: number): boolean {
    if (a.finished) return true;
    Atomics.store(this.#stop.u32, 0, 1);
    const deadline = performance.now() + ms;
    for (;;) {
      if (this.#executorsDone(a, 1)) return true;
      if (performance.now() > deadline) return false;
      if (this.device === "cuda") Bun.sleepSync(1);
    }
  }

  /** True once every executor returned (host mode: joined; GPU: the stream is idle). */
  #executorsDone(a: Active, waitMs: number): boolean {
    if (a.finished) return true;
    if (a.handle) {
      if (native().nvm_q_join(a.handle, waitMs) !== 0) return false;
      a.handle = null;
    } else if (a.stream && !a.stream.done()) return false;
    a.finished = true;
    return true;
  }

  /** Progress the executors made so far (commands completed + executors returned), for the watchdog. */
  #progress(work: Area, groups: number, groupsAt: number): number {
    work.download(groupsAt + groups * G.SIZE);
    const h = work.host;
    let n = h.u32(W.exited);
    for (let g = 0; g < groups; g++) n += h.u64(groupsAt + g * G.SIZE + G.ios);
    return n;
  }

  /**
   * Run a job: lend the queues, start the executors, poll (never blocking) until they return,
   * bounded by a watchdog that stops them when they make no progress, give the queues back and
   * recover the broken ones.
   */
  async #run(fill: (job: Mem) => void, ex: Executors, data: DmaBuffer, reqs: Area | undefined, expectedMs: number): Promise<Outcome> {
    const view = this.#dataView(data);
    const gpu = this.device === "cuda" ? this.cudaDevice : undefined;
    const groups = this.device === "cpu" ? ex.executors : Math.min(ex.executors, MAX_CUDA_GROUPS);
    const layout = workLayout(groups, ex.executors, ex.perExecutor);
    let job: Area | undefined;
    let work: Area | undefined;
    let leases: QueueLease[] = [];
    const exported = exportedMemory.has(data.memoryKey);
    try {
      job = new Area(J.SIZE, gpu);
      work = new Area(layout.bytes, gpu);
      const j = job.host;
      j.setU32(J.abi, NVMQ_JOB_ABI);
      j.setU32(J.mode, ex.mode);
      j.setU32(J.nqueues, this.count);
      j.setU32(J.threads, ex.executors);
      j.setU32(J.lanes, ex.mode === MODE_COOP ? ex.perExecutor : 1);
      j.setU32(J.depth, ex.mode === MODE_COOP ? 1 : ex.perExecutor);
      j.setU32(J.groups, groups);
      j.setU64(J.timeoutNs, Math.round(this.timeoutMs * 1e6));
      j.setU64(J.queues, this.#queueTable.address);
      j.setU64(J.data, (view.reg ? view.reg.devicePointer : BigInt(Number(data.pointer))) - BigInt(view.shift));
      j.setU64(J.dataBytes, view.shift + data.size);
      j.setU64(J.pages, view.pages.address);
      j.setU64(J.work, work.address);
      if (reqs) j.setU64(J.reqs, reqs.address);
      fill(j);
      if (native().nvm_q_work_bytes(j.pointer) !== layout.bytes) throw new InvalidArgumentError("work area layout mismatch between TypeScript and the C library: rebuild it (bun run build)");
      job.upload(J.SIZE);
      work.upload(layout.bytes);
      reqs?.upload();
      // The buffer is reachable by the controller through the lent queues from here on.
      exportedMemory.add(data.memoryKey);
      leases = this.#lend();
      this.#initStates();
      const a: Active = { handle: null, stream: undefined, leases, finished: false };
      if (this.device === "cpu") {
        a.handle = checkPtr(native().nvm_q_start(j.pointer), "nvm_q_start");
      } else {
        a.stream = new KernelStream(this.cudaDevice);
        a.stream.launch(ex.mode === MODE_COOP ? KERNEL_COOP : KERNEL_SHARED, ex.grid, ex.block, job.address);
      }
      this.#active = a;
      // Poll: the core bounds every wait, so the executors return; the watchdog is for a bug.
      const stallMs = 2 * this.timeoutMs + 2000;
      let last = -1;
      let lastChange = performance.now();
      let stopAsked = 0;
      const started = performance.now();
      while (!this.#executorsDone(a, 0)) {
        await new Promise((r) => setTimeout(r, this.device === "cpu" ? 1 : 2));
        if (this.#closed) throw new ClosedError("the GPU queue set was closed during the run; its executors were stopped");
        if (a.finished) break;
        const now = performance.now();
        if (now - lastChange > 250) {
          const p = this.#progress(work, groups, layout.groups);
          if (p !== last) {
            last = p;
            lastChange = now;
          }
        }
        if (!stopAsked && now - lastChange > stallMs && now - started > expectedMs) {
          Atomics.store(this.#stop.u32, 0, 1);
          stopAsked = now;
        }
        if (stopAsked && now - stopAsked > this.timeoutMs + 5000) {
          this.#failed = new NvmeTimeoutError(
            `the queue executors (${this.device}) did not stop within ${Math.round(now - stopAsked)} ms of the stop word: their queues and buffers are kept (not freed) until the process exits; close the controller`,
            this.timeoutMs,
          );
          throw this.#failed;
        }
      }
      a.stream?.destroy();
      a.stream = undefined;
      work.download(layout.bytes);
      this.#states.download(this.count * this.#stateStride);
      reqs?.download();
      const outcome = this.#finish(a, work, job, reqs);
      this.#active = undefined;
      return outcome;
    } catch (e) {
      const a = this.#active;
      this.#active = undefined;
      if (a?.stream && (a.finished || this.#stopExecutors(a, this.timeoutMs + 5000))) {
        try {
          a.stream.destroy();
        } catch {
          // The error being thrown is the one to report.
        }
      }
      if (this.#closed) {
        // close() stopped the executors, gave the queues back and deleted them.
        work?.free();
        job?.free();
      } else if (!this.#failed) {
        if (a && (a.handle || a.stream || a.finished)) {
          // The executors ran (a kernel failure, say): stop what still runs, give the queues back
          // busy, and delete and re-create them all so no command of this run stays reachable.
          this.#stopExecutors(a, this.timeoutMs + 5000);
          try {
            this.#states.download(this.count * this.#stateStride);
          } catch {
            // The GPU context may be gone with the kernel: the queues are deleted anyway.
          }
          leases.forEach((l, i) => this.#giveBack(l, ...this.#coreRingState(i), true));
          for (const s of [...this.#slots]) this.#recover(s);
        } else {
          for (const [i, l] of leases.entries()) {
            const q = this.#slots[i]!.queue;
            this.#giveBack(l, q.sq.tail, q.sq.head, q.ioCq.cq.head, q.ioCq.cq.phase, false);
          }
        }
        work?.free();
        job?.free();
      }
      throw e;
    } finally {
      if (!this.#failed) {
        if (!exported) exportedMemory.delete(data.memoryKey);
        if (view.reg?.registered) view.reg.unregister();
        view.pages.free();
        releaseDeferred(this.controller.backend);
      }
    }
  }

  /** Queue `i`'s ring state as its executors left it: SQ tail, SQ head (SQHD), CQ head, phase. */
  #coreRingState(i: number): [number, number, number, number] {
    const st = this.#states.host;
    const o = i * this.#stateStride;
    return [st.u32(o + Q.published) & (this.entries - 1), st.u32(o + Q.sqHead), st.u32(o + Q.cqHead), st.u32(o + Q.cqPhase)];
  }

  /** Give every queue back with its ring state; delete and re-create the broken ones. */
  #finish(a: Active, work: Area, job: Area, reqs: Area | undefined): Outcome {
    const states: Outcome["states"] = [];
    const brokenQueues: BrokenQueue[] = [];
    const broken: Slot[] = [];
    this.#slots.forEach((s, i) => {
      const st = this.#states.host;
      const o = i * this.#stateStride;
      const reason = st.u32(o + Q.broken);
      const cid = st.u32(o + Q.brokenCid);
      const offBusy = st.u32(o + Q.offBusy);
      let busy = 0;
      for (let k = 0; k < this.entries; k++) busy += st.u32(o + offBusy + 4 * k) !== 0 ? 1 : 0;
      states.push({ broken: reason, cid, busy, doorbells: st.u32(o + Q.doorbells) });
      const lease = a.leases[i]!;
      if (a.interruptedBy === "reset") {
        // The reset ended every command and emptied the rings (stop()): nothing is left busy.
        this.#giveBack(lease, s.queue.sq.tail, s.queue.sq.head, s.queue.ioCq.cq.head, s.queue.ioCq.cq.phase, false);
        return;
      }
      this.#giveBack(lease, ...this.#coreRingState(i), reason !== 0 || busy > 0);
      if (reason !== 0) {
        brokenQueues.push({ qid: s.queue.qid, reason: BROKEN[reason as keyof typeof BROKEN] ?? "wait", cid: cid === 0xffffffff ? -1 : cid });
        broken.push(s);
      }
    });
    const recovered: number[] = [];
    if (broken.length > 0 && !this.controller.closed && a.interruptedBy === undefined) {
      for (const s of broken) {
        this.#recover(s);
        recovered.push(s.queue.qid);
      }
    }
    return { work, job, ...(reqs ? { reqs } : {}), states, brokenQueues, recovered, ...(a.interruptedBy ? { interruptedBy: a.interruptedBy } : {}) };
  }

  /**
   * A queue whose executors stopped with commands possibly outstanding: delete it (the controller
   * ends every command on it before it completes the deletion), or reset the controller when it
   * does not answer; then create it again for the next run.
   */
  #recover(s: Slot): void {
    const ctrl = this.controller;
    const i = this.#slots.indexOf(s);
    for (const r of [s.sqReg, s.cqReg]) if (r?.registered) r.unregister();
    try {
      ctrl.deleteIoQueue(s.queue);
    } catch {
      // Not deleted in time: the reset disables the controller, which ends every command (the
      // queue's memory stays with the controller until its close()).
      try {
        ctrl.reset(new NvmeTimeoutError(`I/O queue ${s.queue.qid} of a GPU queue set could not be deleted after a timeout`, this.timeoutMs));
      } catch (e) {
        this.#failed = e as Error;
        throw e;
      }
    }
    const queue = ctrl.createIoQueue({ entries: this.entries, timeoutMs: this.timeoutMs }) as IoQueue;
    const fresh: Slot = { queue, lists: s.lists, ...(s.listsReg ? { listsReg: s.listsReg } : {}) };
    if (this.device === "cuda") {
      fresh.sqReg = cuda.registerHost(queue.sq.mem, { device: this.cudaDevice });
      fresh.cqReg = cuda.registerHost(queue.ioCq.cq.mem, { device: this.cudaDevice });
    }
    this.#slots[i] = fresh;
    if (this.device === "cuda") this.#registerDoorbells();
  }

  #brokenText(b: BrokenQueue): string {
    return `queue ${b.qid} broke (${b.reason}${b.cid >= 0 ? `, cid ${b.cid}` : ""})`;
  }

  /** Ask the executors of the run going on to stop (they do within a few polls). */
  requestStop(): void {
    if (this.#active) Atomics.store(this.#stop.u32, 0, 1);
  }

  // ---- lists of requests --------------------------------------------------------------------------

  /** Read every request's blocks of `ns` into `buf` with the set's executors. */
  readBlocks(ns: Namespace, requests: readonly BlockRequest[], buf: DmaBuffer, opts: Readonly<ExecutorOptions> = {}): Promise<BlockResult> {
    return this.#blocks(NVM_READ, ns, requests, buf, opts);
  }

  /** Write every request's blocks of `ns` from `buf` with the set's executors. */
  writeBlocks(ns: Namespace, requests: readonly BlockRequest[], buf: DmaBuffer, opts: Readonly<ExecutorOptions> = {}): Promise<BlockResult> {
    return this.#blocks(NVM_WRITE, ns, requests, buf, opts);
  }

  async #blocks(opcode: number, ns: Namespace, requests: readonly BlockRequest[], buf: DmaBuffer, opts: Readonly<ExecutorOptions>): Promise<BlockResult> {
    this.#check();
    if (ns.ctrl !== this.controller) throw new InvalidArgumentError(`namespace ${ns.nsid} is of another controller than this set's`);
    if (!Array.isArray(requests) || requests.length === 0) throw new InvalidArgumentError("requests must be a non-empty array of { lba, blocks, offset }");
    const maxBlocks = Math.min(ns.maxBlocks, Math.floor((MAX_PAGES_PER_COMMAND - 1) * PAGE / ns.lbaSize));
    requests.forEach((r, i) => {
      if (r.offset % 4 !== 0 || !Number.isSafeInteger(r.offset) || r.offset < 0) throw new InvalidArgumentError(`request ${i}: offset ${r.offset} must be a non-negative multiple of 4`);
      ns.checkRange(r.lba, r.blocks, maxBlocks);
      if (r.offset + r.blocks * ns.lbaSize > buf.size) {
        throw new InvalidArgumentError(`request ${i}: ${r.blocks * ns.lbaSize} bytes at offset ${r.offset} do not fit the buffer of ${buf.size} bytes`);
      }
    });
    const ex = this.#executors({ ...opts, depth: 1 }, true);
    const gpu = this.device === "cuda" ? this.cudaDevice : undefined;
    const reqs = new Area(requests.length * R.SIZE, gpu);
    const shift = buf.base % PAGE;
    requests.forEach((r, i) => {
      const o = i * R.SIZE;
      reqs.host.setU64(o + R.slba, r.lba);
      reqs.host.setU64(o + R.offset, shift + r.offset);
      reqs.host.setU32(o + R.nlb, r.blocks);
      reqs.host.setU32(o + R.opcode, opcode);
      reqs.host.setU32(o + R.status, REQ_NOT_RUN);
    });
    let outcome: Outcome;
    try {
      outcome = await this.#run(
        (j) => {
          j.setU32(J.kind, JOB_LIST);
          j.setU32(J.nsid, ns.nsid);
          j.setU32(J.lbaBytes, ns.lbaSize);
          j.setU32(J.bs, ns.lbaSize);
          j.setU32(J.nreqs, requests.length);
          j.setU32(J.seed, 0);
        },
        ex,
        buf,
        reqs,
        0,
      );
    } catch (e) {
      if (!this.#failed) reqs.free();
      throw e;
    }
    const statuses = new Uint32Array(requests.length);
    const failures: { index: number; error: Error }[] = [];
    const name = commandName(opcode, false);
    for (let i = 0; i < requests.length; i++) {
      const st = reqs.host.u32(i * R.SIZE + R.status);
      statuses[i] = st;
      if (st === 0) continue;
      const r = requests[i]!;
      const detail = `@ LBA ${r.lba}, ${r.blocks} blocks`;
      let error: Error;
      if (st <= 0x7fff) error = new NvmeStatusError(st, { command: name, opcode, cid: -1, sqid: -1, detail });
      else if (st === REQ_TIMEOUT) error = new NvmeTimeoutError(`${name} ${detail} did not complete within ${this.timeoutMs} ms; its queue was deleted and created again`, this.timeoutMs);
      else if (st === REQ_INVALID) error = new InvalidArgumentError(`${name} ${detail}: the queue code cannot point to its data (more than ${MAX_PAGES_PER_COMMAND} pages)`);
      else {
        const why = outcome.interruptedBy ? `the run was stopped (controller ${outcome.interruptedBy})` : outcome.brokenQueues.map((b) => this.#brokenText(b)).join("; ") || "its queue broke";
        error = new NvmeTimeoutError(`${name} ${detail} was ${st === REQ_NOT_RUN ? "never sent" : "not completed"}: ${why}`, this.timeoutMs);
      }
      failures.push({ index: i, error });
    }
    const w = outcome.work.host;
    const seconds = Math.max(0, w.u64(W.endNs) - w.u64(W.startNs)) / 1e9;
    outcome.work.free();
    outcome.job.free();
    reqs.free();
    return { ok: requests.length - failures.length, statuses, failures, seconds, brokenQueues: outcome.brokenQueues, recovered: outcome.recovered };
  }

  // ---- bench --------------------------------------------------------------------------------------

  /** Random (or sequential) reads and/or writes by every executor until `seconds` or `ios`. */
  async bench(o: Readonly<GpuBenchOptions>): Promise<GpuBenchResult> {
    this.#check();
    const ns = o.ns;
    if (ns.ctrl !== this.controller) throw new InvalidArgumentError(`namespace ${ns.nsid} is of another controller than this set's`);
    const bs = o.bs ?? 4096;
    if (!Number.isSafeInteger(bs) || bs <= 0 || bs % ns.lbaSize !== 0) throw new InvalidArgumentError(`bs ${bs} is not a multiple of namespace ${ns.nsid}'s ${ns.lbaSize}-byte blocks`);
    const maxBytes = Math.min(ns.maxTransfer, (MAX_PAGES_PER_COMMAND - 1) * PAGE);
    if (bs > maxBytes) throw new InvalidArgumentError(`bs ${bs} exceeds the largest command here (${maxBytes} bytes: MDTS, and ${MAX_PAGES_PER_COMMAND} pages with one PRP list page)`);
    if ((o.seconds === undefined) === (o.ios === undefined)) throw new InvalidArgumentError("give seconds or ios (one of them)");
    if (o.seconds !== undefined && !(o.seconds > 0 && Number.isFinite(o.seconds))) throw new InvalidArgumentError(`seconds must be positive, got ${o.seconds}`);
    if (o.ios !== undefined) int("ios", o.ios, 1, Number.MAX_SAFE_INTEGER);
    const readPct = int("readPct", o.readPct ?? 100, 0, 100);
    const lbaFirst = o.lbaFirst ?? 0;
    const lbaCount = o.lbaCount ?? ns.blocks - lbaFirst;
    ns.checkSpan(lbaFirst, lbaCount);
    if (lbaCount < bs / ns.lbaSize) throw new InvalidArgumentError(`${lbaCount} LBAs cannot hold one ${bs}-byte command`);
    const ex = this.#executors(o, false);
    const regions = ex.executors * ex.perExecutor;
    if (o.buffer.size < regions * bs) {
      throw new InvalidArgumentError(`the buffer holds ${o.buffer.size} bytes; ${regions} executor lanes of ${bs} bytes need ${regions * bs}`);
    }
    if (o.pattern !== undefined && o.pattern !== "rand" && o.pattern !== "seq") throw new InvalidArgumentError(`pattern must be "rand" or "seq"`);
    const seed = int("seed", o.seed ?? 0x5eed, 0, 0xffffffff);
    const expectedMs = (o.seconds ?? 0) * 1000;
    const outcome = await this.#run(
      (j) => {
        j.setU32(J.kind, JOB_BENCH);
        j.setU32(J.nsid, ns.nsid);
        j.setU32(J.lbaBytes, ns.lbaSize);
        j.setU32(J.bs, bs);
        j.setU32(J.readPct, readPct);
        j.setU32(J.flags, (o.verify ? JOB_VERIFY : 0) | (o.pattern === "seq" ? JOB_SEQ : 0));
        j.setU32(J.seed, seed);
        j.setU64(J.lbaFirst, lbaFirst);
        j.setU64(J.lbaSpan, lbaCount);
        j.setU64(J.ios, o.ios ?? 0);
        j.setU64(J.durationNs, Math.round((o.seconds ?? 0) * 1e9));
      },
      ex,
      o.buffer,
      undefined,
      expectedMs,
    );
    const w = outcome.work.host;
    const groups = this.device === "cpu" ? ex.executors : Math.min(ex.executors, MAX_CUDA_GROUPS);
    const sum = { ios: 0, reads: 0, writes: 0, errors: 0, timeouts: 0, verifyErrors: 0, latSumNs: 0 };
    const hist = new Array<number>(HIST_BUCKETS).fill(0);
    for (let g = 0; g < groups; g++) {
      const at = W.SIZE + g * G.SIZE;
      for (const k of Object.keys(sum) as (keyof typeof sum)[]) sum[k] += w.u64(at + G[k]);
      for (let b = 0; b < HIST_BUCKETS; b++) hist[b]! += w.u32(at + G.hist + 4 * b);
    }
    const seconds = Math.max(0, w.u64(W.endNs) - w.u64(W.startNs)) / 1e9;
    const firstStatus = w.u32(W.firstStatus);
    let firstError: string | undefined;
    if (firstStatus !== 0) {
      const opcode = w.u32(W.firstOpcode);
      firstError = new NvmeStatusError(firstStatus, { command: commandName(opcode, false), opcode, cid: -1, sqid: -1, detail: `@ LBA ${w.u64(W.firstLba)}` }).message;
    } else if (outcome.interruptedBy) {
      firstError = `the run was stopped by the controller's ${outcome.interruptedBy === "close" ? "close()" : outcome.interruptedBy === "reset" ? "reset" : "failure"}`;
    } else if (w.u32(W.firstVerify) !== 0) {
      firstError = `LBA ${w.u64(W.firstLba)} did not read back its pattern (seed 0x${seed.toString(16)}): was the range written with it first?`;
    } else if (outcome.brokenQueues.length > 0) {
      firstError = outcome.brokenQueues.map((b) => this.#brokenText(b)).join("; ");
    }
    outcome.work.free();
    outcome.job.free();
    return {
      device: this.device,
      mode: this.mode,
      queues: this.count,
      executors: ex.executors,
      depth: ex.perExecutor,
      ios: sum.ios,
      reads: sum.reads,
      writes: sum.writes,
      errors: sum.errors,
      timeouts: sum.timeouts,
      verifyErrors: sum.verifyErrors,
      seconds,
      iops: seconds > 0 ? sum.ios / seconds : 0,
      mibPerSec: seconds > 0 ? (sum.ios * bs) / 1048576 / seconds : 0,
      latency: summarizeHistogram(hist, sum.latSumNs),
      histogram: hist,
      doorbells: outcome.states.reduce((a, s) => a + s.doorbells, 0),
      ...(firstError !== undefined ? { firstError } : {}),
      brokenQueues: outcome.brokenQueues,
      recovered: outcome.recovered,
    };
  }

  // ---- teardown -----------------------------------------------------------------------------------

  /**
   * Stop a run still going (bounded), delete the queues and free everything. Idempotent. After a
   * failure to stop the executors, their memory is kept until the process exits.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unhook();
    const a = this.#active;
    if (a) {
      if (!this.#stopExecutors(a, this.timeoutMs + 5000)) {
        this.#failed ??= new NvmeTimeoutError("the queue executors did not stop: their queues and buffers are kept until the process exits", this.timeoutMs);
        return;
      }
      if (this.device === "cuda") this.#states.download(this.count * this.#stateStride);
      a.leases.forEach((l, i) => this.#giveBack(l, ...this.#coreRingState(i), true));
      // The run's promise rejects with ClosedError once it sees this.
    }
    if (this.#failed) return;
    let first: unknown;
    const step = (f: () => void) => {
      try {
        f();
      } catch (e) {
        first ??= e;
      }
    };
    step(() => void (this.#doorbells?.registered && this.#doorbells.unregister()));
    for (const s of this.#slots.splice(0)) step(() => this.#dropSlot(s));
    step(() => void (this.#stopReg?.registered && this.#stopReg.unregister()));
    step(() => this.#stop.free());
    step(() => this.#states.free());
    step(() => this.#queueTable.free());
    step(() => this.#listsBus.free());
    step(() => native().nvm_host_free(this.#desc.pointer));
    if (first !== undefined) throw first;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export type { BrokenReason };
