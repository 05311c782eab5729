/**
 * Driving an I/O queue from a Worker. The controller (and its admin queue) stays in the thread
 * that opened it; that thread creates the I/O queue, then hands it over as plain numbers: where
 * its rings, its CID list pages and its data buffers are (virtual and bus addresses), the
 * doorbell offsets, and the ring state. The Worker rebuilds an ordinary IoQueue over the same
 * memory (bun:ffi views of a pointer see the same bytes in every thread of the process), dlopens
 * the native library through lib/native.ts as usual, and runs the low-level, sync or async API
 * on it with nothing shared per command.
 *
 *   // owner thread                                   // Worker
 *   const q = ctrl.createIoQueue({ entries: 64 });    const w = attachIoQueue(workerData.queue);
 *   const buf = ctrl.allocBuffer(1 << 20);            const buf = w.buffer(workerData.buf);
 *   new Worker(file, { workerData: {                  w.queue.onComplete = ...; // acquire/rw/submit/poll
 *     queue: exportIoQueue(ctrl, q),                  ...
 *     buf: exportBuffer(buf) } });                    w.close(); // before the owner frees anything
 *
 * Rules: the owner must not touch a queue it exported until the Worker is done with it (one
 * thread per queue; an SQ and its CQ travel together, so the CQ must not be shared with another
 * SQ), and must keep the controller open until the Worker has closed its side (close() detaches
 * the Worker's views; after that, the owner may delete the queue and free the memory).
 */
import type { Pointer } from "bun:ffi";
import { InvalidArgumentError } from "./errors.ts";
import { HOST_PAGE_SIZE, type Backend, type BackendKind, type DmaMapping, type DmaOptions } from "./backends/types.ts";
import type { Controller } from "./controller.ts";
import { DmaBuffer } from "./dma.ts";
import { IoCompletionQueue, IoQueue } from "./io.ts";
import { PRP_PAGE_SIZE } from "./prp.ts";
import { REG_DOORBELL_BASE } from "./spec/registers.ts";

/** A DMA mapping as plain numbers. */
export interface SharedMapping {
  /** Host virtual address of the first byte. */
  readonly vaddr: number;
  /** Bytes (whole 4 KiB pages). */
  readonly size: number;
  /** Bus address of each 4 KiB page as (lo, hi) pairs. */
  readonly iova: readonly number[];
  readonly contiguous: boolean;
}

/** An I/O queue pair as plain numbers: everything a Worker needs to drive it. */
export interface SharedIoQueue {
  readonly backendKind: BackendKind;
  readonly backendName: string;
  /** BAR0 mapping (the doorbells are in it). */
  readonly bar0: number;
  readonly bar0Size: number;
  /** CAP.DSTRD: doorbell stride. */
  readonly dstrd: number;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  /** Identify Controller SGLS. */
  readonly sgls: number;
  readonly dataPointer: "prp" | "sgl";
  readonly qid: number;
  readonly entries: number;
  readonly cqid: number;
  readonly cqEntries: number;
  /** Byte offsets of the SQ tail and CQ head doorbells in BAR0. */
  readonly sqDoorbell: number;
  readonly cqDoorbell: number;
  readonly sq: SharedMapping;
  readonly cq: SharedMapping;
  /** The CIDs' data-pointer list pages (listPages per CID). */
  readonly lists: SharedMapping;
  readonly listPages: number;
  /** Ring state at export: SQ tail and head, CQ head and phase. */
  readonly sqTail: number;
  readonly sqHead: number;
  readonly cqHead: number;
  readonly cqPhase: number;
}

function shareMapping(buf: DmaBuffer, size: number): SharedMapping {
  if (buf.base !== 0) throw new InvalidArgumentError("export a whole DMA buffer, not a region of one");
  return { vaddr: Number(buf.pointer), size, iova: Array.from(buf.iova), contiguous: buf.contiguous };
}

/** Describe a data buffer for attachIoQueue(...).buffer(). Whole buffers only (not regions). */
export function exportBuffer(buf: DmaBuffer): SharedMapping {
  return shareMapping(buf, buf.size);
}

/**
 * Describe `q` (created by `ctrl`) for a Worker. The queue must have nothing outstanding and
 * must be the only SQ on its completion queue; from here on only the Worker uses it.
 */
export function exportIoQueue(ctrl: Controller, q: IoQueue): SharedIoQueue {
  if (q.closed) throw new InvalidArgumentError(`I/O queue ${q.qid} is closed`);
  if (q.outstanding > 0) throw new InvalidArgumentError(`I/O queue ${q.qid} has ${q.outstanding} commands outstanding: export it idle`);
  if (q.ioCq.sqs.size !== 1) {
    throw new InvalidArgumentError(`completion queue ${q.ioCq.qid} is shared by SQs ${[...q.ioCq.sqs.keys()].join(", ")}: a Worker needs an SQ with a CQ of its own`);
  }
  const cq = q.ioCq.cq;
  // The list pages are one mapping; listBuffer(0) is a region at its start (base 0 of the mapping).
  const first = q.listBuffer(0);
  const lists: SharedMapping = {
    vaddr: Number(first.pointer),
    size: q.depth * q.listPages * PRP_PAGE_SIZE,
    iova: Array.from(first.iova),
    contiguous: first.contiguous,
  };
  const backend = ctrl.backend;
  return {
    backendKind: backend.kind,
    backendName: backend.name,
    bar0: Number(backend.bar0),
    bar0Size: backend.bar0Size,
    dstrd: ctrl.cap.dstrd,
    timeoutMs: q.timeoutMs,
    maxTransfer: q.maxTransfer,
    sgls: ctrl.info.sgls,
    dataPointer: q.useSgl ? "sgl" : "prp",
    qid: q.qid,
    entries: q.sq.entries,
    cqid: q.ioCq.qid,
    cqEntries: q.ioCq.entries,
    sqDoorbell: q.sq.doorbell,
    cqDoorbell: cq.doorbell,
    sq: shareMapping(q.sq.mem, q.sq.mem.size),
    cq: shareMapping(cq.mem, cq.mem.size),
    lists,
    listPages: q.listPages,
    sqTail: q.sq.tail,
    sqHead: q.sq.head,
    cqHead: cq.head,
    cqPhase: cq.phase,
  };
}

/**
 * The Worker's view of the owner's backend: the same BAR0, and DMA memory that already exists.
 * allocDma() hands out the mappings lent to it, in order (each at least the size asked);
 * freeDma() only detaches views (the owner frees the memory).
 */
class SharedBackend implements Backend {
  readonly kind: BackendKind;
  readonly name: string;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #lent: DmaMapping[] = [];
  readonly #live = new Set<DmaMapping>();

  constructor(d: SharedIoQueue) {
    this.kind = d.backendKind;
    this.name = d.backendName;
    this.bar0 = d.bar0 as Pointer;
    this.bar0Size = d.bar0Size;
  }

  lend(m: SharedMapping): void {
    this.#lent.push({ vaddr: m.vaddr as Pointer, size: m.size, iova: Uint32Array.from(m.iova), contiguous: m.contiguous });
  }

  allocDma(size: number, _opts?: DmaOptions): DmaMapping {
    const m = this.#lent.shift();
    // A backend may round mappings up (an IOMMU granule): at least the pages asked for.
    const want = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    if (!m || m.size < want) {
      throw new InvalidArgumentError(`a Worker cannot allocate DMA memory (${size} bytes asked${m ? `, ${m.size} lent` : ""}): allocate it in the owner thread and export it`);
    }
    this.#live.add(m);
    return m;
  }

  freeDma(m: DmaMapping): void {
    if (!this.#live.delete(m)) return;
    m.revoke?.();
  }

  close(): void {
    for (const m of [...this.#live]) this.freeDma(m);
  }
}

export interface AttachedIoQueue {
  /** An ordinary IoQueue over the owner's memory: low-level, sync and async APIs all work. */
  readonly queue: IoQueue;
  readonly cq: IoCompletionQueue;
  /** A data buffer the owner exported (exportBuffer), for commands on this queue. */
  buffer(m: SharedMapping): DmaBuffer;
  /** Detach every view; the owner may free the memory afterwards. Idempotent. */
  close(): void;
}

/** In the Worker: rebuild the queue described by exportIoQueue(). */
export function attachIoQueue(d: SharedIoQueue): AttachedIoQueue {
  const backend = new SharedBackend(d);
  const ctx = { backend, dstrd: d.dstrd, timeoutMs: d.timeoutMs, maxTransfer: d.maxTransfer, sgls: d.sgls };
  if (d.sqDoorbell !== REG_DOORBELL_BASE + 2 * d.qid * (4 << d.dstrd)) {
    throw new InvalidArgumentError(`SQ ${d.qid}: doorbell 0x${d.sqDoorbell.toString(16)} does not match DSTRD ${d.dstrd}`);
  }
  backend.lend(d.cq);
  const cq = new IoCompletionQueue(backend, d.cqid, d.cqEntries, d.dstrd);
  // IoQueue allocates its SQ ring, then its list pages.
  backend.lend(d.sq);
  backend.lend(d.lists);
  const queue = new IoQueue(ctx, d.qid, d.entries, cq, { timeoutMs: d.timeoutMs, dataPointer: d.dataPointer });
  cq.sqs.set(d.qid, queue);
  // Same memory, same roles: a change in how IoQueue allocates must not swap rings silently.
  if (
    Number(queue.sq.mem.pointer) !== d.sq.vaddr ||
    Number(cq.cq.mem.pointer) !== d.cq.vaddr ||
    Number(queue.listBuffer(0).pointer) !== d.lists.vaddr ||
    queue.sq.doorbell !== d.sqDoorbell ||
    cq.cq.doorbell !== d.cqDoorbell ||
    queue.listPages !== d.listPages
  ) {
    queue.free();
    cq.free();
    backend.close();
    throw new InvalidArgumentError(`the Worker's view of I/O queue ${d.qid} does not match the exported one`);
  }
  queue.sq.tail = d.sqTail;
  queue.sq.head = d.sqHead;
  cq.cq.head = d.cqHead;
  cq.cq.phase = d.cqPhase;
  const buffers: DmaBuffer[] = [];
  let closed = false;
  return {
    queue,
    cq,
    buffer(m: SharedMapping): DmaBuffer {
      backend.lend(m);
      const b = new DmaBuffer(backend, m.size);
      buffers.push(b);
      return b;
    },
    close(): void {
      if (closed) return;
      closed = true;
      // free() on a borrowed mapping only detaches the views: the owner still owns the memory.
      for (const b of buffers) b.free();
      queue.free();
      cq.free();
      backend.close();
    },
  };
}
