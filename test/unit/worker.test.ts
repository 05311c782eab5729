/**
 * lib/worker.ts: an I/O queue pair handed to another thread as plain numbers.
 *
 * The owner side is built as Controller.createIoQueue() builds it (an IoQueue bound to an
 * IoCompletionQueue of its own) over a FakeBackend; exportIoQueue() reads only `backend`,
 * `cap.dstrd` and `info.sgls` of the controller, so a stub carries those. A FakeDisk moves data
 * the way a controller does — by the PRPs in the SQE, through bus addresses it resolves with the
 * owner's own DmaBuffers — so a command whose PRPs, list pages or buffer addresses were mangled
 * on the way reads or writes the wrong bytes, or faults.
 *
 * In the same thread a FakeIoController answers the attached queue's doorbells synchronously.
 * With a real Worker, the owner thread plays the controller: it watches the SQ tail doorbell in
 * the fake BAR0, fetches SQEs from its own view of the ring and posts CQEs into its own view of
 * the CQ, while the Worker (which loads this file, see the end) submits and polls.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import {
  attachIoQueue,
  ClosedError,
  DmaBuffer,
  exportBuffer,
  exportIoQueue,
  InvalidArgumentError,
  IoCompletionQueue,
  IoQueue,
  NvmeStatusError,
  type AttachedIoQueue,
  type SharedIoQueue,
  type SharedMapping,
} from "../../lib/index.ts";
import type { Controller } from "../../lib/controller.ts";
import type { Backend } from "../../lib/backends/types.ts";
import { CQE_DWORDS, NVM_FLUSH, NVM_READ, NVM_WRITE, SQE_DWORDS } from "../../lib/spec/commands.ts";
import { cqHeadDoorbell, sqTailDoorbell } from "../../lib/spec/registers.ts";
import {
  encodeStatus,
  SC_DATA_TRANSFER_ERROR,
  SC_INVALID_NAMESPACE,
  SC_INVALID_OPCODE,
  SC_LBA_OUT_OF_RANGE,
  SCT_GENERIC,
} from "../../lib/spec/status.ts";
import { QueueLease } from "../../lib/lease.ts";
import { addr64, FakeBackend, FakeIoController } from "./fake-backend.ts";

const PAGE = 4096;
const BLOCK = 512;
const TWO32 = 0x1_0000_0000;
const NSID = 1;
const DISK_BLOCKS = 4096; // 2 MiB

// ---- shared by both threads --------------------------------------------------------------------

/** Deterministic bytes for `seed`: what a write puts on the disk and a read must bring back. */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + (i >>> 9) * 7 + seed * 101 + 1) & 0xff;
  return out;
}

/** Index of the first byte where `a` and `b` differ, -1 when equal. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** What the main thread gives a Worker. */
interface WorkerJob {
  readonly queue: SharedIoQueue;
  readonly buf: SharedMapping;
  /** First LBA of the Worker's own part of the disk; the seeds its data is made from start here. */
  readonly lba: number;
  readonly seed: number;
}

/** What a Worker reports: the first byte that differed per check (-1 = equal), and its final state. */
interface WorkerReport {
  readonly type: "done";
  readonly attached: { qid: number; entries: number; sqTail: number; sqHead: number; cqHead: number; cqPhase: number; sqDoorbell: number; cqDoorbell: number };
  readonly busOfBuffer: number[];
  readonly syncDiff: number;
  readonly syncCrossPageDiff: number;
  readonly asyncDiffs: number[];
  readonly lowLevel: { cid: number; status: number }[];
  readonly lowLevelDiffs: number[];
  readonly statusError: { name: string; sc: number; sct: number; sqid: number };
  readonly unknownNamespace: string;
  readonly final: { sqTail: number; sqHead: number; cqHead: number; cqPhase: number; commands: number };
  readonly afterClose: { queueClosed: boolean; bufferFreed: boolean; sqeLength: number; cqeLength: number; bytesLength: number; bufferError: string };
}

interface WorkerFailure {
  readonly type: "error";
  readonly name: string;
  readonly message: string;
  readonly stack?: string;
}

/** The Worker's side: attach, run sync, async and low-level commands, compare, detach, report. */
async function workerMain(): Promise<void> {
  const port = parentPort!;
  const job = workerData as WorkerJob;
  let w: AttachedIoQueue | undefined;
  try {
    w = attachIoQueue(job.queue);
    const buf = w.buffer(job.buf);
    const q = w.queue;
    const attached = {
      qid: q.qid,
      entries: q.sq.entries,
      sqTail: q.sq.tail,
      sqHead: q.sq.head,
      cqHead: w.cq.cq.head,
      cqPhase: w.cq.cq.phase,
      sqDoorbell: q.sq.doorbell,
      cqDoorbell: w.cq.cq.doorbell,
    };
    const busOfBuffer: number[] = [];
    for (let off = 0; off < buf.size; off += PAGE) busOfBuffer.push(buf.busAddress(off));
    let commands = 0;
    const bytes = buf.bytes;

    // Synchronous: 64 KiB (a PRP list in the CID's list page), then 4 KiB straddling two pages.
    const big = pattern(64 * 1024, job.seed);
    bytes.set(big, 0);
    q.rwSync(NVM_WRITE, NSID, job.lba, 128, buf, 0, big.length);
    bytes.fill(0);
    q.rwSync(NVM_READ, NSID, job.lba, 128, buf, 0, big.length);
    commands += 2;
    const syncDiff = firstDifference(bytes.subarray(0, big.length), big);
    const small = pattern(PAGE, job.seed + 1);
    bytes.set(small, 2048);
    q.rwSync(NVM_WRITE, NSID, job.lba + 128, 8, buf, 2048, PAGE);
    bytes.fill(0, 0, 3 * PAGE);
    q.rwSync(NVM_READ, NSID, job.lba + 128, 8, buf, 2048, PAGE);
    commands += 2;
    const syncCrossPageDiff = firstDifference(bytes.subarray(2048, 2048 + PAGE), small);

    // Async: eight writes in flight at once, then eight reads into other offsets.
    const parts = Array.from({ length: 8 }, (_, i) => pattern(PAGE, job.seed + 10 + i));
    parts.forEach((p, i) => bytes.set(p, i * PAGE));
    await Promise.all(parts.map((_, i) => q.rwAsync(NVM_WRITE, NSID, job.lba + 256 + 8 * i, 8, buf, i * PAGE, PAGE)));
    bytes.fill(0, 8 * PAGE, 16 * PAGE);
    await Promise.all(parts.map((_, i) => q.rwAsync(NVM_READ, NSID, job.lba + 256 + 8 * i, 8, buf, (8 + i) * PAGE, PAGE)));
    commands += 16;
    const asyncDiffs = parts.map((p, i) => firstDifference(bytes.subarray((8 + i) * PAGE, (9 + i) * PAGE), p));

    // Low level: acquire, rw, one submit for the batch, poll into the handler.
    const lowLevel: { cid: number; status: number }[] = [];
    q.onComplete = (cid, status) => lowLevel.push({ cid, status });
    bytes.fill(0, 16 * PAGE, 20 * PAGE);
    for (let i = 0; i < 4; i++) {
      const cid = q.acquire();
      if (cid < 0) throw new Error("no free CID for a low-level read");
      q.rw(cid, NVM_READ, NSID, job.lba + 256 + 8 * i, 8, buf, (16 + i) * PAGE, PAGE);
    }
    q.submit();
    commands += 4;
    const end = performance.now() + 10_000;
    while (lowLevel.length < 4) {
      q.poll();
      if (performance.now() > end) throw new Error(`low-level reads: ${lowLevel.length} of 4 completed`);
    }
    const lowLevelDiffs = parts.slice(0, 4).map((p, i) => firstDifference(bytes.subarray((16 + i) * PAGE, (17 + i) * PAGE), p));

    // A status from the controller reaches the Worker's caller as NvmeStatusError.
    let statusError = { name: "none", sc: -1, sct: -1, sqid: -1 };
    try {
      q.rwSync(NVM_READ, NSID, DISK_BLOCKS, 1, buf, 0, BLOCK);
    } catch (e) {
      const s = e as NvmeStatusError;
      statusError = { name: s.name, sc: s.sc, sct: s.sct, sqid: s.sqid };
    }
    commands += 1;
    // A namespace the owner did not identify is refused before anything is sent.
    let unknownNamespace = "none";
    try {
      q.rwSync(NVM_READ, NSID + 1, 0, 1, buf, 0, BLOCK);
    } catch (e) {
      unknownNamespace = (e as Error).name;
    }

    const final = { sqTail: q.sq.tail, sqHead: q.sq.head, cqHead: w.cq.cq.head, cqPhase: w.cq.cq.phase, commands };
    const sqe = q.sq.sqe;
    const cqe = w.cq.cq.cqe;
    w.close();
    let bufferError = "none";
    try {
      void buf.bytes;
    } catch (e) {
      bufferError = (e as Error).name;
    }
    const afterClose = {
      queueClosed: q.closed,
      bufferFreed: buf.freed,
      sqeLength: sqe.length,
      cqeLength: cqe.length,
      bytesLength: bytes.length,
      bufferError,
    };
    const report: WorkerReport = {
      type: "done",
      attached,
      busOfBuffer,
      syncDiff,
      syncCrossPageDiff,
      asyncDiffs,
      lowLevel,
      lowLevelDiffs,
      statusError,
      unknownNamespace,
      final,
      afterClose,
    };
    port.postMessage(report);
  } catch (e) {
    // Detach before reporting: the owner frees the memory once it hears from us.
    w?.close();
    const err = e as Error;
    const failure: WorkerFailure = { type: "error", name: err.name, message: err.message, stack: err.stack };
    port.postMessage(failure);
  }
}

// ---- the owner's side ----------------------------------------------------------------------------

/** exportIoQueue() reads `backend`, `cap.dstrd` and `info.sgls` of the controller. */
function stubController(backend: Backend, o: { dstrd?: number; sgls?: number } = {}): Controller {
  return {
    backend,
    cap: { dstrd: o.dstrd ?? 0 },
    info: { sgls: o.sgls ?? 0 },
    closed: false,
    abortGraceMs: 1000,
    knownLbaSizes: new Map([[NSID, BLOCK]]),
    leases: [] as QueueLease[],
    lendIoQueue(q: IoQueue) {
      const lease = new QueueLease(q, backend);
      lease.lend();
      (this as unknown as { leases: QueueLease[] }).leases.push(lease);
      return lease;
    },
  } as unknown as Controller;
}

interface QueueOptions {
  qid?: number;
  cqid?: number;
  entries?: number;
  cqEntries?: number;
  dstrd?: number;
  maxTransfer?: number;
  timeoutMs?: number;
  sgls?: number;
  dataPointer?: "prp" | "sgl";
}

interface Owned {
  q: IoQueue;
  cq: IoCompletionQueue;
  ctrl: Controller;
}

/** An I/O queue pair as Controller.createIoQueue() leaves it: an SQ bound to a CQ of its own. */
function ownQueue(be: FakeBackend, o: QueueOptions = {}): Owned {
  const qid = o.qid ?? 1;
  const entries = o.entries ?? 16;
  const dstrd = o.dstrd ?? 0;
  const cq = new IoCompletionQueue(be, o.cqid ?? qid, o.cqEntries ?? entries, dstrd);
  const q = new IoQueue(
    {
      backend: be,
      dstrd,
      timeoutMs: o.timeoutMs ?? 10_000,
      maxTransfer: o.maxTransfer ?? 128 * 1024,
      sgls: o.sgls ?? 0,
      lbaSize: () => BLOCK,
      onExpired: () => {},
      onStuck: (q) => q.resetAfterDisable(new Error("reset")),
      onFatal: (q, err) => q.settleAndRefuse(err),
    },
    qid,
    entries,
    cq,
    { dataPointer: o.dataPointer },
  );
  cq.sqs.set(qid, q);
  return { q, cq, ctrl: stubController(be, { dstrd, sgls: o.sgls }) };
}

const STATUS_INVALID_OPCODE = encodeStatus({ sct: SCT_GENERIC, sc: SC_INVALID_OPCODE, dnr: true });
const STATUS_INVALID_NAMESPACE = encodeStatus({ sct: SCT_GENERIC, sc: SC_INVALID_NAMESPACE, dnr: true });
const STATUS_LBA_OUT_OF_RANGE = encodeStatus({ sct: SCT_GENERIC, sc: SC_LBA_OUT_OF_RANGE, dnr: true });
const STATUS_DATA_TRANSFER_ERROR = encodeStatus({ sct: SCT_GENERIC, sc: SC_DATA_TRANSFER_ERROR });

/**
 * One namespace of 512-byte blocks and the data movement of Read and Write by PRPs. Only pages
 * exposed with expose() are reachable on the (fake) bus, resolved through the owner's buffers.
 */
class FakeDisk {
  readonly data = new Uint8Array(DISK_BLOCKS * BLOCK);
  /** Transfers that named a bus address nobody exposed, or a malformed PRP. */
  faults = 0;
  readonly #pages = new Map<number, { buf: DmaBuffer; off: number }>();

  /** Make every page of `buf` reachable by its bus address, as an IOMMU mapping would. */
  expose(buf: DmaBuffer): void {
    expect(buf.base % PAGE).toBe(0);
    for (let off = 0; off < buf.size; off += PAGE) this.#pages.set(buf.busAddress(off), { buf, off });
  }

  /** The owner's bytes at bus address `bus`, `len` bytes within one page. */
  #host(bus: number, len: number): Uint8Array | undefined {
    const inPage = bus % PAGE;
    const p = this.#pages.get(bus - inPage);
    if (!p || inPage + len > PAGE) return undefined;
    return p.buf.bytes.subarray(p.off + inPage, p.off + inPage + len);
  }

  #u64(bus: number): number | undefined {
    const b = this.#host(bus, 8);
    if (!b) return undefined;
    const v = new DataView(b.buffer, b.byteOffset, 8);
    return v.getUint32(0, true) + v.getUint32(4, true) * TWO32;
  }

  /** (bus address, length) of each piece of a `bytes`-long transfer: PRP1, then PRP2 or a PRP list. */
  #segments(sqe: Uint32Array, bytes: number): Array<[number, number]> | undefined {
    const prp1 = addr64(sqe, 6);
    const prp2 = addr64(sqe, 8);
    const first = Math.min(bytes, PAGE - (prp1 % PAGE));
    const segs: Array<[number, number]> = [[prp1, first]];
    let left = bytes - first;
    if (left === 0) return segs;
    if (left <= PAGE) {
      if (prp2 % PAGE !== 0) return undefined;
      segs.push([prp2, left]);
      return segs;
    }
    if (prp2 % 8 !== 0) return undefined;
    for (let e = prp2; left > 0; e += 8) {
      const entry = this.#u64(e);
      if (entry === undefined) return undefined;
      if (e % PAGE === PAGE - 8 && left > PAGE) {
        e = entry - 8; // the last entry of a full list page points to the next list page
        continue;
      }
      if (entry % PAGE !== 0) return undefined;
      segs.push([entry, Math.min(left, PAGE)]);
      left -= Math.min(left, PAGE);
    }
    return segs;
  }

  /** Run one NVM command; returns the 15-bit status. */
  execute(sqe: Uint32Array): number {
    const opcode = sqe[0]! & 0xff;
    if (opcode === NVM_FLUSH) return 0;
    if (opcode !== NVM_READ && opcode !== NVM_WRITE) return STATUS_INVALID_OPCODE;
    if (sqe[1] !== NSID) return STATUS_INVALID_NAMESPACE;
    const slba = addr64(sqe, 10);
    const nlb = (sqe[12]! & 0xffff) + 1;
    if (slba + nlb > DISK_BLOCKS) return STATUS_LBA_OUT_OF_RANGE;
    const segs = this.#segments(sqe, nlb * BLOCK);
    const hosts = segs?.map(([bus, len]) => this.#host(bus, len));
    if (!hosts || hosts.some((h) => h === undefined)) {
      this.faults++;
      return STATUS_DATA_TRANSFER_ERROR;
    }
    let at = slba * BLOCK;
    for (const h of hosts as Uint8Array[]) {
      if (opcode === NVM_WRITE) this.data.set(h, at);
      else h.set(this.data.subarray(at, at + h.length));
      at += h.length;
    }
    return 0;
  }
}

/** Expose the queue's list pages (one per CID here) and the data buffers to `disk`. */
function exposeAll(disk: FakeDisk, q: IoQueue, ...bufs: DmaBuffer[]): void {
  expect(q.listPages).toBe(1);
  for (let cid = 0; cid < q.depth; cid++) disk.expose(q.listBuffer(cid));
  for (const b of bufs) disk.expose(b);
}

/**
 * The controller side of one queue pair, run by the owner thread while a Worker drives the
 * host side: it fetches what the SQ tail doorbell (in the fake BAR0) says was submitted, and
 * posts completions, phase tag last, never into a full CQ (head as the host last rang it).
 */
class ThreadedController {
  readonly seen: number[] = [];
  sqHead: number;
  cqTail: number;
  cqPhase: number;

  constructor(
    readonly be: FakeBackend,
    readonly owned: Owned,
    readonly disk: FakeDisk,
    start: SharedIoQueue,
  ) {
    // The queue was exported idle: the controller has fetched up to the tail and posted up to the head.
    this.sqHead = start.sqTail;
    this.cqTail = start.cqHead;
    this.cqPhase = start.cqPhase;
  }

  /** Fetch and answer everything rung so far; returns how many commands. */
  service(): number {
    const { q, cq } = this.owned;
    const regs = this.be.regs;
    const sqEntries = q.sq.entries;
    const cqEntries = cq.entries;
    const tail = Atomics.load(regs, q.sq.doorbell / 4);
    if (tail >= sqEntries) throw new Error(`SQ ${q.qid} tail doorbell ${tail} outside the ring of ${sqEntries}`);
    const ring = q.sq.sqe;
    const cqe = cq.cq.cqe;
    let n = 0;
    while (this.sqHead !== tail) {
      if ((this.cqTail + 1) % cqEntries === Atomics.load(regs, cq.cq.doorbell / 4)) break; // CQ full
      const o = this.sqHead * SQE_DWORDS;
      const sqe = ring.slice(o, o + SQE_DWORDS);
      this.sqHead = (this.sqHead + 1) % sqEntries;
      const status = this.disk.execute(sqe);
      this.seen.push(sqe[0]! & 0xff);
      const c = this.cqTail * CQE_DWORDS;
      cqe[c] = 0;
      cqe[c + 1] = 0;
      cqe[c + 2] = (this.sqHead | (q.qid << 16)) >>> 0;
      Atomics.store(cqe, c + 3, ((sqe[0]! >>> 16) | (this.cqPhase << 16) | (status << 17)) >>> 0);
      if (++this.cqTail === cqEntries) {
        this.cqTail = 0;
        this.cqPhase ^= 1;
      }
      n++;
    }
    return n;
  }
}

/** Run `workers` to their report while `controllers` answer their queues from this thread. */
async function runWorkers(jobs: { job: WorkerJob; controller: ThreadedController }[]): Promise<WorkerReport[]> {
  const workers = jobs.map(({ job }) => new Worker(import.meta.path, { workerData: job }));
  const exited = workers.map((w) => new Promise<void>((resolve) => w.once("exit", () => resolve())));
  const reports: (WorkerReport | undefined)[] = jobs.map(() => undefined);
  let failure: Error | undefined;
  workers.forEach((w, i) => {
    w.on("message", (m: WorkerReport | WorkerFailure) => {
      if (m.type === "done") reports[i] = m;
      else failure ??= new Error(`Worker ${i}: ${m.name}: ${m.message}\n${m.stack ?? ""}`);
    });
    w.on("error", (e: Error) => (failure ??= e));
  });
  try {
    // Bounds a hang (a lost doorbell or completion), no more: nothing here measures time.
    const deadline = performance.now() + 25_000;
    while (!failure && reports.some((r) => r === undefined)) {
      for (const { controller } of jobs) controller.service();
      if (performance.now() > deadline) throw new Error("the Workers did not finish: a command was never answered");
      await new Promise<void>((r) => setImmediate(r));
    }
    if (failure) throw failure;
    return reports as WorkerReport[];
  } finally {
    // Not before the Workers are gone may the owner free what they had views of.
    for (const w of workers) void w.terminate();
    await Promise.all(exited);
  }
}

// ---- tests -----------------------------------------------------------------------------------

function defineTests(): void {
  const cleanups: Array<() => void> = [];
  afterEach(() => {
    for (const f of cleanups.splice(0).reverse()) f();
  });

  /** A fresh fake backend per test, closed after it (after everything registered later). */
  function backend(): FakeBackend {
    const be = new FakeBackend();
    cleanups.push(() => be.close());
    return be;
  }

  function owned(be: FakeBackend, o: QueueOptions = {}): Owned {
    const x = ownQueue(be, o);
    cleanups.push(() => {
      x.q.free();
      x.cq.free();
    });
    return x;
  }

  function alloc(be: FakeBackend, size: number): DmaBuffer {
    const b = new DmaBuffer(be, size);
    cleanups.push(() => b.free());
    return b;
  }

  /** Attach in this thread; detached before the owner's memory goes (cleanups run in reverse). */
  function attach(d: SharedIoQueue): AttachedIoQueue {
    const w = attachIoQueue(d);
    cleanups.push(() => w.close());
    return w;
  }

  /**
   * Run `n` one-block writes on the owner's queue under a FakeIoController, so the rings are
   * somewhere other than their start (and the CQ phase inverted when `n` wraps it).
   */
  function advance(be: FakeBackend, o: Owned, n: number): FakeIoController {
    const fake = new FakeIoController(be, o.cq.cq);
    fake.attach(o.q.sq);
    const buf = alloc(be, PAGE);
    for (let i = 0; i < n; i++) o.q.rwSync(NVM_WRITE, NSID, i, 1, buf, 0, BLOCK);
    expect(o.q.outstanding).toBe(0);
    return fake;
  }

  /** A FakeIoController for the attached queue that goes on where `before` (the owner's) stopped. */
  function continueController(be: FakeBackend, w: AttachedIoQueue, before: FakeIoController | undefined, disk: FakeDisk): FakeIoController {
    const fake = new FakeIoController(be, w.cq.cq);
    fake.attach(w.queue.sq);
    if (before) {
      fake.cqTail = before.cqTail;
      fake.cqPhase = before.cqPhase;
      fake.sqHeads.set(w.queue.qid, before.sqHeads.get(w.queue.qid)!);
    }
    fake.responder = (cmd) => ({ status: disk.execute(cmd.sqe) });
    return fake;
  }

  describe("exportIoQueue / attachIoQueue round trip", () => {
    test("the lib/index.ts API is lib/worker.ts's", async () => {
      const direct = await import("../../lib/worker.ts");
      expect(exportIoQueue).toBe(direct.exportIoQueue);
      expect(exportBuffer).toBe(direct.exportBuffer);
      expect(attachIoQueue).toBe(direct.attachIoQueue);
    });

    test("the description is plain data and the lease: it survives structuredClone (and JSON, but for the lease)", () => {
      const be = backend();
      const o = owned(be, { qid: 2, entries: 8 });
      const data = alloc(be, 4 * PAGE);
      const d = exportIoQueue(o.ctrl, o.q);
      const b = exportBuffer(data);
      // Plain numbers, strings and arrays, and the lease: a SharedArrayBuffer, shared (not copied)
      // by structuredClone, which is how workerData crosses to a Worker.
      expect(structuredClone(d)).toEqual(d);
      new Int32Array(structuredClone(d).lease)[15] = 7;
      expect(new Int32Array(d.lease)[15]).toBe(7);
      const { lease: _lease, ...plain } = d;
      expect(JSON.parse(JSON.stringify(plain))).toEqual(plain);
      expect(JSON.parse(JSON.stringify(b))).toEqual(b);
      expect(d.backendKind).toBe("sysfs");
      expect(d.backendName).toBe(be.name);
      expect(d.bar0).toBe(Number(be.bar0));
      expect(d.bar0Size).toBe(be.bar0Size);
      // A clone attaches like the original: that is what crosses to a Worker.
      const w = attach(structuredClone(d));
      expect(Number(w.queue.sq.mem.pointer)).toBe(Number(o.q.sq.mem.pointer));
    });

    for (const shape of [
      { qid: 1, cqid: 1, entries: 16, cqEntries: 16, dstrd: 0 },
      { qid: 5, cqid: 7, entries: 32, cqEntries: 8, dstrd: 2 },
      { qid: 3, cqid: 2, entries: 4, cqEntries: 64, dstrd: 1 },
    ]) {
      test(`SQ ${shape.qid} (${shape.entries}) on CQ ${shape.cqid} (${shape.cqEntries}), DSTRD ${shape.dstrd}: ids, sizes, doorbells, memory and bus addresses carry over`, () => {
        const be = backend();
        const o = owned(be, { ...shape, timeoutMs: 1234, maxTransfer: 64 * 1024 });
        const data = alloc(be, 5 * PAGE); // scattered pages on the fake bus
        expect(data.contiguous).toBe(false);
        const d = exportIoQueue(o.ctrl, o.q);
        expect(d).toMatchObject({
          qid: shape.qid,
          cqid: shape.cqid,
          entries: shape.entries,
          cqEntries: shape.cqEntries,
          dstrd: shape.dstrd,
          sqDoorbell: sqTailDoorbell(shape.qid, shape.dstrd),
          cqDoorbell: cqHeadDoorbell(shape.cqid, shape.dstrd),
          timeoutMs: 1234,
          maxTransfer: 64 * 1024,
          dataPointer: "prp",
          listPages: o.q.listPages,
        });
        const w = attach(d);
        const wb = w.buffer(exportBuffer(data));
        const q = w.queue;
        expect(q.qid).toBe(shape.qid);
        expect(w.cq.qid).toBe(shape.cqid);
        expect(q.ioCq).toBe(w.cq);
        expect(w.cq.sqs.get(shape.qid)).toBe(q);
        expect(q.sq.entries).toBe(shape.entries);
        expect(w.cq.entries).toBe(shape.cqEntries);
        expect(q.depth).toBe(o.q.depth);
        expect(q.listPages).toBe(o.q.listPages);
        expect(q.timeoutMs).toBe(1234);
        expect(q.maxTransfer).toBe(64 * 1024);
        expect(q.useSgl).toBe(false);
        expect(q.sq.doorbell).toBe(o.q.sq.doorbell);
        expect(w.cq.cq.doorbell).toBe(o.cq.cq.doorbell);
        expect(w.cq.credits).toBe(shape.cqEntries - 1);

        // The same memory, at the same bus addresses.
        expect(Number(q.sq.mem.pointer)).toBe(Number(o.q.sq.mem.pointer));
        expect(Number(w.cq.cq.mem.pointer)).toBe(Number(o.cq.cq.mem.pointer));
        expect(Number(wb.pointer)).toBe(Number(data.pointer));
        expect(q.sq.mem.busAddress(0)).toBe(o.q.sq.mem.busAddress(0));
        expect(w.cq.cq.mem.busAddress(0)).toBe(o.cq.cq.mem.busAddress(0));
        expect(wb.size).toBe(data.size);
        expect(wb.contiguous).toBe(false);
        expect(Array.from(wb.iova)).toEqual(Array.from(data.iova));
        for (let off = 0; off < data.size; off += 1000) expect(wb.busAddress(off)).toBe(data.busAddress(off));
        for (let cid = 0; cid < o.q.depth; cid++) {
          expect(Number(q.listBuffer(cid).pointer)).toBe(Number(o.q.listBuffer(cid).pointer));
          expect(q.listBuffer(cid).busAddress(0)).toBe(o.q.listBuffer(cid).busAddress(0));
        }

        // Writes on either side are seen on the other.
        data.bytes.set([1, 2, 3, 4], PAGE - 2);
        expect(Array.from(wb.bytes.subarray(PAGE - 2, PAGE + 2))).toEqual([1, 2, 3, 4]);
        wb.u32[100] = 0xdeadbeef;
        expect(data.u32[100]).toBe(0xdeadbeef);
        q.sq.sqe[5] = 0x12345678;
        expect(o.q.sq.sqe[5]).toBe(0x12345678);
        o.cq.cq.cqe[3] = 0x8765;
        expect(w.cq.cq.cqe[3]).toBe(0x8765);
      });
    }

    test("an SGL queue stays an SGL queue", () => {
      const be = backend();
      const o = owned(be, { sgls: 1, dataPointer: "sgl" });
      const d = exportIoQueue(o.ctrl, o.q);
      expect(d.dataPointer).toBe("sgl");
      expect(d.sgls).toBe(1);
      expect(attach(d).queue.useSgl).toBe(true);
    });

    test("ring state carries over after the owner's commands wrapped the CQ (phase 0)", () => {
      const be = backend();
      const o = owned(be, { entries: 8 });
      advance(be, o, 11);
      // 11 commands on 8-entry rings: tail 3, head 3, the CQ on its second pass.
      expect(o.q.sq.tail).toBe(3);
      expect(o.cq.cq.head).toBe(3);
      expect(o.cq.cq.phase).toBe(0);
      const d = exportIoQueue(o.ctrl, o.q);
      expect(d).toMatchObject({ sqTail: 3, sqHead: o.q.sq.head, cqHead: 3, cqPhase: 0 });
      expect(d.sqHead).toBe(3);
      const w = attach(d);
      expect(w.queue.sq.tail).toBe(3);
      expect(w.queue.sq.head).toBe(3);
      expect(w.cq.cq.head).toBe(3);
      expect(w.cq.cq.phase).toBe(0);
      expect(w.queue.slot).toBe(o.q.slot);
      // The stale entries of the first pass (phase 1) are not taken for new ones.
      expect(w.queue.poll()).toBe(0);
      expect(w.queue.outstanding).toBe(0);
    });
  });

  describe("commands through the attached queue, in this thread", () => {
    test("write, read back and compare (PRP1/PRP2 and a PRP list), continuing the owner's rings", () => {
      const be = backend();
      const o = owned(be, { entries: 8, timeoutMs: 2000 });
      const data = alloc(be, 20 * PAGE);
      const disk = new FakeDisk();
      exposeAll(disk, o.q, data);
      const before = advance(be, o, 11);
      const w = attach(exportIoQueue(o.ctrl, o.q));
      const wb = w.buffer(exportBuffer(data));
      const fake = continueController(be, w, before, disk);
      const q = w.queue;

      // 64 KiB from offset 0: 16 scattered pages, so PRP2 points to the CID's list page.
      const big = pattern(64 * 1024, 1);
      wb.bytes.set(big, 0);
      q.rwSync(NVM_WRITE, NSID, 100, 128, wb, 0, big.length);
      expect(firstDifference(disk.data.subarray(100 * BLOCK, 100 * BLOCK + big.length), big)).toBe(-1);
      // The command went into the owner's ring at the slot the owner had reached.
      expect(o.q.sq.sqe[3 * SQE_DWORDS]! & 0xff).toBe(NVM_WRITE);
      expect(fake.seen[0]!.sqe).toEqual(o.q.sq.sqe.slice(3 * SQE_DWORDS, 4 * SQE_DWORDS));
      wb.bytes.fill(0);
      q.rwSync(NVM_READ, NSID, 100, 128, wb, 0, big.length);
      expect(firstDifference(wb.bytes.subarray(0, big.length), big)).toBe(-1);
      expect(firstDifference(data.bytes.subarray(0, big.length), big)).toBe(-1); // the owner's view too

      // 4 KiB across a page boundary: PRP1 at an offset, PRP2 the next page.
      const small = pattern(PAGE, 2);
      wb.bytes.set(small, 17 * PAGE + 1024);
      q.rwSync(NVM_WRITE, NSID, 7, 8, wb, 17 * PAGE + 1024, PAGE);
      wb.bytes.fill(0, 16 * PAGE);
      q.rwSync(NVM_READ, NSID, 7, 8, wb, 18 * PAGE + 512, PAGE);
      expect(firstDifference(wb.bytes.subarray(18 * PAGE + 512, 19 * PAGE + 512), small)).toBe(-1);

      expect(disk.faults).toBe(0);
      expect(fake.seen.map((c) => c.opcode)).toEqual([NVM_WRITE, NVM_READ, NVM_WRITE, NVM_READ]);
      expect(fake.seen.every((c) => c.sqid === o.q.qid)).toBe(true);
      expect(fake.overflows).toBe(0);
      // 11 + 4 commands on 8-entry rings: still the CQ's second pass.
      expect(q.sq.tail).toBe(15 % 8);
      expect(w.cq.cq.head).toBe(15 % 8);
      expect(w.cq.cq.phase).toBe(0);
      expect(q.outstanding).toBe(0);
    });

    test("async and low-level commands complete; a status error reaches the caller", async () => {
      const be = backend();
      const o = owned(be, { entries: 4, timeoutMs: 2000 });
      const data = alloc(be, 8 * PAGE);
      const disk = new FakeDisk();
      exposeAll(disk, o.q, data);
      const w = attach(exportIoQueue(o.ctrl, o.q));
      const wb = w.buffer(exportBuffer(data));
      const fake = continueController(be, w, undefined, disk);
      const q = w.queue;

      // Six writes with a depth of 3: some wait for a CID.
      const parts = Array.from({ length: 6 }, (_, i) => pattern(PAGE, 20 + i));
      parts.forEach((p, i) => wb.bytes.set(p, i * PAGE));
      expect(await Promise.all(parts.map((_, i) => q.rwAsync(NVM_WRITE, NSID, 8 * i, 8, wb, i * PAGE, PAGE)))).toEqual([0, 0, 0, 0, 0, 0]);
      parts.forEach((p, i) => expect(firstDifference(disk.data.subarray(8 * i * BLOCK, (8 * i + 8) * BLOCK), p)).toBe(-1));

      wb.bytes.fill(0);
      const done: number[] = [];
      q.onComplete = (cid, status) => {
        expect(status).toBe(0);
        done.push(cid);
      };
      for (let i = 0; i < 3; i++) {
        const cid = q.acquire();
        expect(cid).toBeGreaterThanOrEqual(0);
        q.rw(cid, NVM_READ, NSID, 8 * (5 - i), 8, wb, i * PAGE, PAGE);
      }
      expect(q.acquire()).toBe(-1);
      q.submit();
      expect(q.poll()).toBe(3);
      expect(done.sort()).toEqual([0, 1, 2]);
      for (let i = 0; i < 3; i++) expect(firstDifference(wb.bytes.subarray(i * PAGE, (i + 1) * PAGE), parts[5 - i]!)).toBe(-1);

      const err = await q.rwAsync(NVM_READ, NSID, DISK_BLOCKS - 1, 2, wb, 0, 2 * BLOCK).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NvmeStatusError);
      expect((err as NvmeStatusError).sc).toBe(SC_LBA_OUT_OF_RANGE);
      expect((err as NvmeStatusError).sqid).toBe(o.q.qid);
      expect(() => q.rwSync(0x7f, NSID, 0, 1, wb, 0, BLOCK)).toThrow(NvmeStatusError);
      expect(disk.faults).toBe(0);
      expect(fake.seen.length).toBe(11);
      expect(q.outstanding).toBe(0);
    });
  });

  describe("in a real Worker", () => {
    test(
      "the Worker submits sync, async and low-level commands while this thread plays the controller",
      async () => {
        const be = backend();
        const o = owned(be, { qid: 4, entries: 16, timeoutMs: 20_000 });
        const data = alloc(be, 24 * PAGE);
        const disk = new FakeDisk();
        exposeAll(disk, o.q, data);
        advance(be, o, 5); // the Worker starts mid-ring
        const d = exportIoQueue(o.ctrl, o.q);
        expect(d.sqTail).toBe(5);
        const controller = new ThreadedController(be, o, disk, d);
        const lba = 1024;
        const seed = 7;
        const [r] = await runWorkers([{ job: { queue: d, buf: exportBuffer(data), lba, seed }, controller }]);
        const report = r!;

        expect(report.attached).toEqual({
          qid: 4,
          entries: 16,
          sqTail: 5,
          sqHead: 5,
          cqHead: 5,
          cqPhase: 1,
          sqDoorbell: sqTailDoorbell(4, 0),
          cqDoorbell: cqHeadDoorbell(4, 0),
        });
        expect(report.busOfBuffer).toEqual(Array.from({ length: 24 }, (_, i) => data.busAddress(i * PAGE)));
        expect(report.syncDiff).toBe(-1);
        expect(report.syncCrossPageDiff).toBe(-1);
        expect(report.asyncDiffs).toEqual(Array(8).fill(-1));
        expect(report.lowLevel.map((c) => c.status)).toEqual([0, 0, 0, 0]);
        expect(new Set(report.lowLevel.map((c) => c.cid)).size).toBe(4);
        expect(report.lowLevelDiffs).toEqual([-1, -1, -1, -1]);
        expect(report.statusError).toEqual({ name: "NvmeStatusError", sc: SC_LBA_OUT_OF_RANGE, sct: SCT_GENERIC, sqid: 4 });
        expect(report.unknownNamespace).toBe("InvalidArgumentError");

        // What the Worker wrote is on the disk, taken from the owner's memory by bus address.
        expect(disk.faults).toBe(0);
        expect(firstDifference(disk.data.subarray(lba * BLOCK, (lba + 128) * BLOCK), pattern(64 * 1024, seed))).toBe(-1);
        expect(firstDifference(disk.data.subarray((lba + 128) * BLOCK, (lba + 136) * BLOCK), pattern(PAGE, seed + 1))).toBe(-1);
        for (let i = 0; i < 8; i++) {
          const at = (lba + 256 + 8 * i) * BLOCK;
          expect(firstDifference(disk.data.subarray(at, at + PAGE), pattern(PAGE, seed + 10 + i))).toBe(-1);
        }

        // 25 commands after 5 on 16-entry rings: both wrapped once; controller and host agree.
        const total = 5 + report.final.commands;
        expect(report.final.commands).toBe(25);
        expect(controller.seen.length).toBe(25);
        expect(report.final).toMatchObject({ sqTail: total % 16, sqHead: total % 16, cqHead: total % 16, cqPhase: 0 });
        expect(controller.sqHead).toBe(total % 16);
        expect(controller.cqTail).toBe(total % 16);
        expect(controller.cqPhase).toBe(0);
        expect(be.reg(o.q.sq.doorbell)).toBe(total % 16);
        expect(be.reg(o.cq.cq.doorbell)).toBe(total % 16);

        // close() in the Worker detached its views and left the memory to the owner.
        expect(report.afterClose).toEqual({ queueClosed: true, bufferFreed: true, sqeLength: 0, cqeLength: 0, bytesLength: 0, bufferError: "ClosedError" });
        expect(data.freed).toBe(false);
        expect(o.q.sq.mem.freed).toBe(false);
        // What the Worker's last reads brought in is in the owner's view of the buffer.
        for (let i = 0; i < 4; i++) {
          expect(firstDifference(data.bytes.subarray((16 + i) * PAGE, (17 + i) * PAGE), pattern(PAGE, seed + 10 + i))).toBe(-1);
        }
      },
      30_000,
    );

    test(
      "two Workers drive two queue pairs at once",
      async () => {
        const be = backend();
        const disk = new FakeDisk();
        const jobs = [1, 2].map((qid, i) => {
          const o = owned(be, { qid, entries: 8, timeoutMs: 20_000 });
          const data = alloc(be, 24 * PAGE);
          exposeAll(disk, o.q, data);
          const d = exportIoQueue(o.ctrl, o.q);
          return { job: { queue: d, buf: exportBuffer(data), lba: 1024 * (i + 1), seed: 40 + 30 * i }, controller: new ThreadedController(be, o, disk, d) };
        });
        const reports = await runWorkers(jobs);
        expect(disk.faults).toBe(0);
        reports.forEach((r, i) => {
          expect(r.attached.qid).toBe(i + 1);
          expect(r.syncDiff).toBe(-1);
          expect(r.syncCrossPageDiff).toBe(-1);
          expect(r.asyncDiffs).toEqual(Array(8).fill(-1));
          expect(r.lowLevelDiffs).toEqual([-1, -1, -1, -1]);
          expect(r.statusError.sqid).toBe(i + 1);
          expect(jobs[i]!.controller.seen.length).toBe(25);
          const { lba, seed } = jobs[i]!.job;
          expect(firstDifference(disk.data.subarray(lba * BLOCK, (lba + 128) * BLOCK), pattern(64 * 1024, seed))).toBe(-1);
        });
      },
      30_000,
    );
  });

  describe("bad inputs", () => {
    test("exporting a closed queue, or one whose CQ was freed, is InvalidArgumentError", () => {
      const be = backend();
      const a = owned(be, { qid: 1 });
      a.q.free();
      expect(() => exportIoQueue(a.ctrl, a.q)).toThrow(InvalidArgumentError);
      expect(() => exportIoQueue(a.ctrl, a.q)).toThrow(/I\/O queue 1 is closed/);
      const b = owned(be, { qid: 2 });
      b.cq.free();
      expect(() => exportIoQueue(b.ctrl, b.q)).toThrow(/completion queue 2 of I\/O queue 2 is closed/);
    });

    test("a CQ shared with another SQ cannot travel: InvalidArgumentError naming the other SQs", () => {
      const be = backend();
      const a = owned(be, { qid: 1 });
      const ctx = { backend: be, dstrd: 0, timeoutMs: 10_000, maxTransfer: 128 * 1024, sgls: 0, lbaSize: () => 512 };
      const b = new IoQueue(ctx, 2, 16, a.cq);
      a.cq.sqs.set(2, b);
      const c = new IoQueue(ctx, 3, 16, a.cq);
      a.cq.sqs.set(3, c);
      cleanups.push(() => {
        c.free();
        b.free();
      });
      expect(() => exportIoQueue(a.ctrl, a.q)).toThrow(InvalidArgumentError);
      expect(() => exportIoQueue(a.ctrl, a.q)).toThrow(/completion queue 1 is shared with SQs 2, 3/);
      expect(() => exportIoQueue(a.ctrl, b)).toThrow(/shared with SQs 1, 3/);
      // Once the others are gone, the queue has its CQ to itself again.
      c.free();
      b.free();
      expect(a.cq.sqs.size).toBe(1);
      expect(exportIoQueue(a.ctrl, a.q).qid).toBe(1);
    });

    test("a queue not bound to its CQ, or of another controller, is InvalidArgumentError", () => {
      const be = backend();
      const a = owned(be);
      a.cq.sqs.delete(a.q.qid);
      expect(() => exportIoQueue(a.ctrl, a.q)).toThrow(/not bound to its completion queue/);
      a.cq.sqs.set(a.q.qid, a.q);
      const other = backend();
      expect(() => exportIoQueue(stubController(other), a.q)).toThrow(InvalidArgumentError);
      expect(() => exportIoQueue(stubController(other), a.q)).toThrow(/belongs to another controller/);
    });

    test("a queue with commands outstanding, or a CID acquired, is InvalidArgumentError until idle", () => {
      const be = backend();
      const o = owned(be, { entries: 8 });
      const fake = new FakeIoController(be, o.cq.cq);
      fake.attach(o.q.sq);
      fake.responder = () => undefined; // completes later
      const buf = alloc(be, PAGE);
      const cid = o.q.acquire();
      expect(() => exportIoQueue(o.ctrl, o.q)).toThrow(/1 CIDs acquired and not posted/);
      o.q.rw(cid, NVM_READ, NSID, 0, 1, buf, 0, BLOCK);
      o.q.submit();
      expect(() => exportIoQueue(o.ctrl, o.q)).toThrow(InvalidArgumentError);
      expect(() => exportIoQueue(o.ctrl, o.q)).toThrow(/1 commands outstanding/);
      fake.complete(o.q.qid, cid);
      expect(o.q.poll()).toBe(1);
      const d = exportIoQueue(o.ctrl, o.q);
      expect(d.sqTail).toBe(1);
      expect(d.cqHead).toBe(1);
    });

    test("exportBuffer refuses a region and a freed buffer", () => {
      const be = backend();
      const data = alloc(be, 2 * PAGE);
      expect(() => exportBuffer(data.region(PAGE, PAGE))).toThrow(InvalidArgumentError);
      expect(() => exportBuffer(data.region(0, PAGE))).toThrow(/region/);
      const gone = new DmaBuffer(be, PAGE);
      gone.free();
      expect(() => exportBuffer(gone)).toThrow(InvalidArgumentError);
      expect(() => exportBuffer(gone)).toThrow(/freed/);
      const b = exportBuffer(data);
      expect(b.size).toBe(2 * PAGE);
      expect(b.iova.length).toBe(4);
    });

    describe("attachIoQueue validates what it is given before viewing any memory", () => {
      type Mutation = [string, (d: Record<string, unknown>) => unknown, RegExp];
      const mapping = (field: "sq" | "cq" | "lists", change: (m: Record<string, unknown>) => void) => (d: Record<string, unknown>) => {
        const m = { ...(d[field] as Record<string, unknown>) };
        m.iova = [...(m.iova as number[])];
        change(m);
        d[field] = m;
      };
      const cases: Mutation[] = [
        ["not an object", () => null, /not a shared I\/O queue/],
        ["a number", () => 42, /not a shared I\/O queue/],
        ["unknown backend kind", (d) => void (d.backendKind = "spdk"), /backendKind "spdk"/],
        ["data pointer", (d) => void (d.dataPointer = "dma"), /dataPointer "dma"/],
        ["qid 0", (d) => void (d.qid = 0), /qid must be an integer from 1 to 65535, got 0/],
        ["fractional qid", (d) => void (d.qid = 1.5), /qid must be an integer/],
        ["qid as a string", (d) => void (d.qid = "1"), /qid must be an integer/],
        ["1-entry SQ", (d) => void (d.entries = 1), /entries must be an integer from 2/],
        ["DSTRD 16", (d) => void (d.dstrd = 16), /dstrd must be an integer from 0 to 15/],
        ["no BAR0", (d) => void (d.bar0 = 0), /bar0 must be/],
        ["SQ doorbell off by one stride", (d) => void (d.sqDoorbell = (d.sqDoorbell as number) + 4), /SQ doorbell .* not where DSTRD 0 puts SQ 1's/],
        ["CQ doorbell of another CQ", (d) => void (d.cqDoorbell = cqHeadDoorbell(9, 0)), /CQ doorbell .* not where DSTRD 0 puts CQ 1's/],
        ["doorbells past BAR0", (d) => void (d.bar0Size = 0x1000), /lie outside BAR0/],
        ["negative timeout", (d) => void (d.timeoutMs = -1), /timeoutMs must be a positive number/],
        ["infinite timeout", (d) => void (d.timeoutMs = Infinity), /timeoutMs must be a positive number/],
        ["no list pages", (d) => void (d.listPages = 0), /listPages must be/],
        ["SQ tail outside the ring", (d) => void (d.sqTail = 16), /sqTail must be an integer from 0 to 15/],
        ["CQ head outside the ring", (d) => void (d.cqHead = -1), /cqHead must be/],
        ["phase 2", (d) => void (d.cqPhase = 2), /cqPhase must be an integer from 0 to 1/],
        ["SQ ring missing", (d) => void (d.sq = undefined), /SQ ring: not a shared mapping/],
        ["SQ ring at address 0", mapping("sq", (m) => void (m.vaddr = 0)), /SQ ring: vaddr must be/],
        ["SQ ring not page aligned", mapping("sq", (m) => void (m.vaddr = (m.vaddr as number) + 64)), /SQ ring: vaddr 0x[0-9a-f]+ is not 4 KiB aligned/],
        ["CQ ring of part of a page", mapping("cq", (m) => void (m.size = 100)), /CQ ring: size must be an integer from 4096/],
        ["CQ ring of a page and a half", mapping("cq", (m) => void (m.size = 6144)), /CQ ring: size 6144 is not a whole number of 4 KiB pages/],
        ["SQ ring too small for the entries", (d) => void (d.entries = 128), /SQ ring: 4096 bytes, but 8192 are needed/],
        ["list pages too small for their count", (d) => void (d.listPages = 2), /list pages: 61440 bytes, but 122880 are needed/],
        ["a bus address missing", mapping("lists", (m) => void (m.iova as number[]).pop()), /list pages: iova must hold a \(lo, hi\) bus address pair for each/],
        ["a bus address not a number", mapping("lists", (m) => void ((m.iova as unknown[])[1] = "0")), /list pages: iova\[1\] = "0" is not a 32-bit value/],
        ["a bus address not page aligned", mapping("sq", (m) => void ((m.iova as number[])[0] = 0x1234)), /SQ ring: iova\[0\] = 4660 is not the low dword of a 4 KiB-aligned bus address/],
        ["a bus address over 32 bits per half", mapping("cq", (m) => void ((m.iova as number[])[1] = TWO32)), /CQ ring: iova\[1\]/],
        ["contiguous not a boolean", mapping("cq", (m) => void (m.contiguous = 1)), /CQ ring: contiguous must be a boolean/],
      ];
      for (const [what, mutate, message] of cases) {
        test(what, () => {
          const be = backend();
          const o = owned(be, { entries: 16 });
          const d = structuredClone(exportIoQueue(o.ctrl, o.q)) as unknown as Record<string, unknown>;
          const replaced = mutate(d);
          const bad = (replaced === undefined ? d : replaced) as SharedIoQueue;
          const frees = be.frees;
          let err: unknown;
          try {
            attachIoQueue(bad).close();
          } catch (e) {
            err = e;
          }
          expect(err).toBeInstanceOf(InvalidArgumentError);
          expect((err as Error).message).toMatch(message);
          // The owner's memory is untouched.
          expect(be.frees).toBe(frees);
          expect(o.q.sq.mem.freed).toBe(false);
          expect(o.cq.cq.mem.freed).toBe(false);
        });
      }

      test("a transfer limit that needs more list pages than were exported fails, and releases what it built", () => {
        const be = backend();
        const o = owned(be, { maxTransfer: 128 * 1024 });
        const d = { ...exportIoQueue(o.ctrl, o.q), maxTransfer: 4 << 20 };
        expect(() => attachIoQueue(d)).toThrow(InvalidArgumentError);
        expect(() => attachIoQueue(d)).toThrow(/cannot allocate DMA memory/);
        // The valid description still attaches over the same memory.
        const w = attach(exportIoQueue(o.ctrl, o.q));
        expect(w.queue.listPages).toBe(o.q.listPages);
      });

      test("an SGL queue on a controller without SGL support fails", () => {
        const be = backend();
        const o = owned(be);
        const d = { ...exportIoQueue(o.ctrl, o.q), dataPointer: "sgl" as const };
        expect(() => attachIoQueue(d)).toThrow(/does not support SGLs/);
      });

      test("buffer() validates the mapping too", () => {
        const be = backend();
        const o = owned(be);
        const data = alloc(be, 2 * PAGE);
        const w = attach(exportIoQueue(o.ctrl, o.q));
        const b = exportBuffer(data);
        expect(() => w.buffer({ ...b, iova: b.iova.slice(0, 2) })).toThrow(/shared buffer: iova must hold/);
        expect(() => w.buffer({ ...b, vaddr: b.vaddr + 4 })).toThrow(/shared buffer: vaddr 0x[0-9a-f]+ is not 4 KiB aligned/);
        expect(() => w.buffer(null as unknown as SharedMapping)).toThrow(InvalidArgumentError);
        // A rejected mapping is not lent: the next good one is the one that is used.
        expect(Number(w.buffer(b).pointer)).toBe(Number(data.pointer));
      });
    });
  });

  describe("close() on the attached side", () => {
    test("detaches every view, fails what was outstanding, and leaves the memory to the owner", async () => {
      const be = backend();
      const o = owned(be, { entries: 8 });
      const data = alloc(be, 4 * PAGE);
      const w = attachIoQueue(exportIoQueue(o.ctrl, o.q));
      const wb = w.buffer(exportBuffer(data));
      const fake = new FakeIoController(be, w.cq.cq);
      fake.attach(w.queue.sq);
      fake.responder = () => undefined; // never answered
      const pending = w.queue.rwAsync(NVM_READ, NSID, 0, 8, wb, 0, PAGE).catch((e: unknown) => e);
      await new Promise<void>((r) => queueMicrotask(r));
      expect(w.queue.outstanding).toBe(1);

      data.bytes.fill(0xa5, 0, 16);
      const views = { sqe: w.queue.sq.sqe, cqe: w.cq.cq.cqe, bytes: wb.bytes, u32: wb.u32, list: w.queue.listBuffer(0).bytes };
      expect(views.bytes[0]).toBe(0xa5);
      const frees = be.frees;
      w.close();

      expect(await pending).toBeInstanceOf(ClosedError);
      expect(views.sqe.length).toBe(0);
      expect(views.cqe.length).toBe(0);
      expect(views.bytes.length).toBe(0);
      expect(views.u32.length).toBe(0);
      expect(views.list.length).toBe(0);
      expect(wb.freed).toBe(true);
      expect(() => wb.bytes).toThrow(ClosedError);
      expect(w.queue.closed).toBe(true);
      expect(w.cq.closed).toBe(true);
      expect(w.cq.sqs.size).toBe(0);
      expect(() => w.queue.rwSync(NVM_READ, NSID, 0, 1, wb, 0, BLOCK)).toThrow(ClosedError);
      expect(await w.queue.rwAsync(NVM_READ, NSID, 0, 1, wb, 0, BLOCK).catch((e: unknown) => e)).toBeInstanceOf(ClosedError);
      expect(() => w.buffer(exportBuffer(data))).toThrow(ClosedError);
      w.close(); // idempotent

      // The owner's side is as it was: same memory, still mapped, still readable.
      expect(be.frees).toBe(frees);
      expect(data.freed).toBe(false);
      expect(o.q.sq.mem.freed).toBe(false);
      expect(o.cq.cq.mem.freed).toBe(false);
      expect(data.bytes[15]).toBe(0xa5);
      expect(o.q.sq.sqe[0]! & 0xff).toBe(NVM_READ); // the command the attached side wrote
      // Now the owner deletes the queue and frees the memory. The exported buffer the outstanding
      // read may still write waits for the queue's deletion (the controller then ended the read).
      data.free();
      expect(data.freed).toBe(true);
      expect(be.frees).toBe(frees);
      o.q.free();
      o.cq.free();
      expect(be.frees).toBe(frees + 3);
      const lease = (o.ctrl as unknown as { leases: QueueLease[] }).leases[0]!;
      lease.end(); // what Controller.deleteIoQueue() does once Delete I/O SQ completed
      expect(be.frees).toBe(frees + 4);
    });
  });
}

if (isMainThread) defineTests();
else await workerMain();
