/**
 * c/include/nvm_queue_core.h and nvm_queue_job.h as TypeScript sees them: byte offsets of every
 * field the host writes or reads, checked once against the C library's own sizeof() values
 * (nvm_q_sizes), and small helpers to write and read them in C-owned memory (little endian; 64-bit
 * fields as two 32-bit halves, low first).
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { NativeError } from "../errors.ts";
import { checkPtr, native } from "../native.ts";

export const NVMQ_ABI = 1;
export const NVMQ_JOB_ABI = 1;
export const NVMQ_LINE = 128;
export const HIST_SUB_BITS = 3;
export const HIST_SUB = 8;
export const HIST_BUCKETS = HIST_SUB + 40 * HIST_SUB;

/** struct nvmq: the header, then one 128-byte line per shared counter. */
export const Q = {
  abi: 0,
  entries: 4,
  mask: 8,
  sqid: 12,
  flags: 16,
  offCidSeq: 20,
  offCidVal: 24,
  offSlotCid: 28,
  offReady: 32,
  offBusy: 36,
  offOwner: 40,
  bytes: 44,
  sq: 48,
  cq: 56,
  sqDb: 64,
  cqDb: 72,
  lists: 80,
  listsBus: 88,
  stop: 96,
  timeoutNs: 104,
  ticket: 128,
  released: 128 + 1 * NVMQ_LINE,
  published: 128 + 2 * NVMQ_LINE,
  tailLock: 128 + 3 * NVMQ_LINE,
  headLock: 128 + 4 * NVMQ_LINE,
  cqHead: 128 + 5 * NVMQ_LINE,
  cqPhase: 128 + 6 * NVMQ_LINE,
  sqHead: 128 + 7 * NVMQ_LINE,
  broken: 128 + 8 * NVMQ_LINE,
  brokenCid: 128 + 9 * NVMQ_LINE,
  badCqes: 128 + 10 * NVMQ_LINE,
  doorbells: 128 + 11 * NVMQ_LINE,
  cidDeq: 128 + 12 * NVMQ_LINE,
  cidEnq: 128 + 13 * NVMQ_LINE,
  SIZE: 128 + 14 * NVMQ_LINE,
} as const;

/** struct nvmq.flags */
export const NVMQ_F_MMIO_DOORBELL = 1;

/** Why a queue broke (struct nvmq.broken). */
export const BROKEN = {
  1: "reserve",
  2: "publish",
  3: "wait",
  4: "stop",
  5: "cqe",
  6: "cids",
} as const;
export type BrokenReason = (typeof BROKEN)[keyof typeof BROKEN];
export const BROKEN_WAIT = 3;
export const BROKEN_STOP = 4;

/** struct nvmq_init_desc */
export const D = {
  entries: 0,
  sqid: 4,
  flags: 8,
  sqTail: 12,
  sqHead: 16,
  cqHead: 20,
  cqPhase: 24,
  sq: 32,
  cq: 40,
  sqDb: 48,
  cqDb: 56,
  lists: 64,
  listsBus: 72,
  stop: 80,
  timeoutNs: 88,
  SIZE: 96,
} as const;

/** struct nvmq_job */
export const J = {
  abi: 0,
  kind: 4,
  mode: 8,
  nqueues: 12,
  threads: 16,
  lanes: 20,
  depth: 24,
  nsid: 28,
  lbaBytes: 32,
  bs: 36,
  readPct: 40,
  flags: 44,
  seed: 48,
  groups: 52,
  nreqs: 56,
  lbaFirst: 64,
  lbaSpan: 72,
  ios: 80,
  durationNs: 88,
  timeoutNs: 96,
  queues: 104,
  data: 112,
  dataBytes: 120,
  pages: 128,
  work: 136,
  reqs: 144,
  SIZE: 152,
} as const;

export const JOB_BENCH = 1;
export const JOB_LIST = 2;
export const MODE_SHARED = 1;
export const MODE_COOP = 2;
export const JOB_VERIFY = 1;
export const JOB_SEQ = 2;

/** struct nvmq_req */
export const R = { slba: 0, offset: 8, nlb: 16, opcode: 20, status: 24, SIZE: 32 } as const;
export const REQ_TIMEOUT = 0x10000;
export const REQ_BROKEN = 0x20000;
export const REQ_INVALID = 0x40000;
export const REQ_NOT_RUN = 0xffffffff;

/** struct nvmq_group */
export const G = { ios: 0, reads: 8, writes: 16, errors: 24, timeouts: 32, verifyErrors: 40, latSumNs: 48, hist: 64, SIZE: 64 + 4 * HIST_BUCKETS } as const;
/** struct nvmq_work */
export const W = { startNs: 0, endNs: 8, cursor: 16, exited: 24, firstStatus: 28, firstLba: 32, firstVerify: 40, firstOpcode: 44, SIZE: 64 } as const;
export const LANE_SIZE = 64;
export const BLOCK_SIZE = 32;

/** Bytes of the work area (nvmq_work_layout()) and where the groups start. */
export function workLayout(groups: number, executors: number, lanesPer: number): { bytes: number; groups: number } {
  return { bytes: W.SIZE + groups * G.SIZE + executors * lanesPer * LANE_SIZE + executors * BLOCK_SIZE, groups: W.SIZE };
}

let checked = false;

/** Compare this mirror with the C library's sizes once; a mismatch means a stale libnvm-native.so. */
export function checkLayout(): void {
  if (checked) return;
  const n = native();
  const p = checkPtr(n.nvm_host_alloc(64), "nvm_host_alloc");
  try {
    n.nvm_q_sizes(p);
    const got = Array.from(new Uint32Array(toArrayBuffer(p, 0, 48)));
    const want = [Q.SIZE, D.SIZE, J.SIZE, R.SIZE, G.SIZE, W.SIZE, LANE_SIZE, BLOCK_SIZE, HIST_BUCKETS, NVMQ_ABI, NVMQ_JOB_ABI, Q.ticket];
    if (got.some((v, i) => v !== want[i])) {
      throw new NativeError(
        `libnvm-native.so's queue core layout (${got.join(", ")}) is not this libnvm's (${want.join(", ")}): rebuild it (bun run build)`,
        22,
        "nvm_q_sizes",
      );
    }
    checked = true;
  } finally {
    n.nvm_host_free(p);
  }
}

/** A little-endian view over C-owned memory with 64-bit helpers for addresses and counters. */
export class Mem {
  readonly view: DataView;
  readonly bytes: Uint8Array;
  constructor(
    readonly pointer: Pointer,
    readonly size: number,
  ) {
    const ab = toArrayBuffer(pointer, 0, size);
    this.view = new DataView(ab);
    this.bytes = new Uint8Array(ab);
  }
  get address(): number {
    return Number(this.pointer);
  }
  u32(o: number): number {
    return this.view.getUint32(o, true);
  }
  setU32(o: number, v: number): void {
    this.view.setUint32(o, v >>> 0, true);
  }
  /** A 64-bit field as a number (exact below 2^53: counters, host addresses, nanoseconds). */
  u64(o: number): number {
    return this.view.getUint32(o, true) + this.view.getUint32(o + 4, true) * 0x1_0000_0000;
  }
  big(o: number): bigint {
    return this.view.getBigUint64(o, true);
  }
  setU64(o: number, v: number | bigint): void {
    const b = BigInt(v);
    this.view.setUint32(o, Number(b & 0xffff_ffffn), true);
    this.view.setUint32(o + 4, Number(b >> 32n), true);
  }
}
