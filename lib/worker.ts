/**
 * Driving an I/O queue from a Worker. The controller (and its admin queue) stays in the thread
 * that opened it; that thread creates the I/O queue, then hands it over as plain numbers (where
 * its rings, its CID list pages and its data buffers are, virtual and bus addresses, the doorbell
 * offsets, the ring state) and a shared lease (lease.ts). The Worker rebuilds an ordinary IoQueue over the same
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
 * SQ), and must keep the controller open, and its event loop running, until the Worker has closed
 * its side (close() detaches the Worker's views; after that, the owner may delete the queue and
 * free the memory).
 *
 * The lease (lease.ts) is what keeps the owner's resets and the Worker's queue consistent: a reset
 * re-creates the lent queue only after the Worker settled its commands and emptied its rings, so a
 * stale SQ entry is never fetched again. The Worker cannot send admin commands: for a command past
 * its deadline it asks the owner, through the lease, for an Abort and then a reset. While a queue
 * is lent, the owner's free() of an exported buffer waits until the queue is deleted or returned.
 *
 * attachIoQueue() checks the shape of what it is given (every number in range, doorbells where
 * DSTRD puts them and inside BAR0, mappings large enough for what is built over them), but it
 * cannot check that the addresses are real: pass it only what exportIoQueue()/exportBuffer()
 * made, in this process.
 */
import type { Pointer } from "bun:ffi";
import { ClosedError, InvalidArgumentError, UnsupportedError } from "./errors.ts";
import { exportedMemory, LEASE_BYTES, LeaseClient } from "./lease.ts";
import { HOST_PAGE_SIZE, type Backend, type BackendKind, type DmaMapping, type DmaOptions } from "./backends/types.ts";
import type { AnyIoQueue, Controller } from "./controller.ts";
import { BorrowedHostMemory } from "./transports/tcp/memory.ts";
import { TcpQueue, type TcpLinkParams } from "./transports/tcp/queue.ts";
import { DmaBuffer } from "./dma.ts";
import { IoCompletionQueue, IoQueue, type IoQueueContext } from "./io.ts";
import { PRP_PAGE_SIZE } from "./prp.ts";
import { CQE_SIZE, SQE_SIZE } from "./spec/commands.ts";
import { cqHeadDoorbell, sqTailDoorbell } from "./spec/registers.ts";

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

/** An I/O queue pair as plain numbers, and its lease: everything a Worker needs to drive it. */
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
  /** After a deadline, how long the owner's Abort may take before the Worker asks for a reset. */
  readonly abortGraceMs: number;
  /** LBA data size of each namespace the owner accepted for I/O, as [nsid, bytes] pairs. */
  readonly lbaSizes: readonly (readonly [number, number])[];
  /** The lease shared with the owner (lease.ts): resets, recovery requests, the return of the queue. */
  readonly lease: SharedArrayBuffer;
}

const BACKEND_KINDS: readonly string[] = ["sysfs", "vfio", "disnvm", "smartio"] satisfies BackendKind[];
/** Entries of one I/O queue: 2 to 65536 (CAP.MQES is 16 bits, 0's based). */
const MAX_QUEUE_ENTRIES = 0x10000;

function shareMapping(buf: DmaBuffer, what: string): SharedMapping {
  if (buf.freed) throw new InvalidArgumentError(`${what} was freed: export live memory only`);
  const d = buf.dmaBuf;
  if (d) {
    // The Worker's side describes memory by its CPU address, and revocation is the owner's to
    // handle (it resets the controller): an import stays with the owner thread.
    throw new InvalidArgumentError(
      `${what} was imported from dma-buf fd ${d.fd} (exporter ${d.exporter}): it has no CPU address to share and its revocation is handled by the owner, so a Worker cannot use it; send the commands on it from the owner thread`,
    );
  }
  const iova = buf.iova;
  // Host memory of an NVMe/TCP controller has no bus addresses: a whole buffer is base 0.
  if (iova.length === 0) {
    if (buf.base !== 0) throw new InvalidArgumentError(`${what} is a region of a buffer: export the whole buffer (and pass offsets within it)`);
    return { vaddr: Number(buf.pointer), size: buf.size, iova: [], contiguous: false };
  }
  // A region (even one at offset 0) covers less than its mapping; every backend describes each
  // page of a mapping it made, so a whole buffer has exactly a bus address pair per page.
  if (buf.base !== 0 || buf.size !== (iova.length / 2) * HOST_PAGE_SIZE) {
    throw new InvalidArgumentError(`${what} is a region of a DMA buffer: export the whole buffer (and pass offsets within it)`);
  }
  return { vaddr: Number(buf.pointer), size: buf.size, iova: Array.from(iova), contiguous: buf.contiguous };
}

/**
 * Describe a data buffer for attachIoQueue(...).buffer(). Whole, live buffers only (not regions).
 * While a queue is lent, the owner's free() of an exported buffer waits until the queue comes back.
 */
export function exportBuffer(buf: DmaBuffer): SharedMapping {
  const m = shareMapping(buf, "the buffer");
  exportedMemory.add(buf.memoryKey);
  return m;
}

/**
 * Describe `q` (created by `ctrl`) for a Worker. The queue must be idle (no command
 * outstanding, no CID acquired) and must be the only SQ on its completion queue; from here on
 * only the Worker uses it, until its close(). Namespaces the Worker sends commands to must have
 * been identified by the owner first (new Namespace(ctrl, nsid)).
 */
export function exportIoQueue(ctrl: Controller, q: IoQueue): SharedIoQueue;
export function exportIoQueue(ctrl: Controller, q: TcpQueue): SharedTcpIoQueue;
export function exportIoQueue(ctrl: Controller, q: AnyIoQueue): SharedIoQueue | SharedTcpIoQueue;
export function exportIoQueue(ctrl: Controller, q: AnyIoQueue): SharedIoQueue | SharedTcpIoQueue {
  if (q.transport === "tcp") return exportTcpQueue(ctrl, q);
  if (q.closed) throw new InvalidArgumentError(`I/O queue ${q.qid} is closed`);
  const backend = ctrl.backend;
  if (!q.sq.mem.belongsTo(backend)) throw new InvalidArgumentError(`I/O queue ${q.qid} belongs to another controller than ${backend.name}`);
  const ioCq = q.ioCq;
  if (ioCq.closed) throw new InvalidArgumentError(`completion queue ${ioCq.qid} of I/O queue ${q.qid} is closed`);
  if (ioCq.sqs.get(q.qid) !== q) throw new InvalidArgumentError(`I/O queue ${q.qid} is not bound to its completion queue ${ioCq.qid}`);
  if (ioCq.sqs.size !== 1) {
    const others = [...ioCq.sqs.keys()].filter((id) => id !== q.qid);
    throw new InvalidArgumentError(
      `completion queue ${ioCq.qid} is shared with SQ${others.length > 1 ? "s" : ""} ${others.join(", ")}: a Worker needs an SQ with a CQ of its own`,
    );
  }
  if (q.outstanding > 0) throw new InvalidArgumentError(`I/O queue ${q.qid} has ${q.outstanding} commands outstanding: export it idle`);
  // With the CQ to itself, every credit missing is a CID of this SQ acquired and not posted (the
  // owner's async poller would keep reaping this CQ behind the Worker's back while one waits).
  if (ioCq.credits !== ioCq.entries - 1) {
    throw new InvalidArgumentError(`I/O queue ${q.qid} has ${ioCq.entries - 1 - ioCq.credits} CIDs acquired and not posted: release them and export it idle`);
  }
  const cq = ioCq.cq;
  // Lent from here on: the owner's resets wait for the Worker, and the ring state below is current.
  const lease = ctrl.lendIoQueue(q);
  // The list pages are one mapping; listBuffer(0) is a region at its start (base 0 of the mapping).
  const first = q.listBuffer(0);
  const listPages = q.depth * q.listPages;
  const lists: SharedMapping = {
    vaddr: Number(first.pointer),
    size: listPages * PRP_PAGE_SIZE,
    iova: Array.from(first.iova.subarray(0, 2 * listPages)),
    contiguous: first.contiguous,
  };
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
    cqid: ioCq.qid,
    cqEntries: ioCq.entries,
    sqDoorbell: q.sq.doorbell,
    cqDoorbell: cq.doorbell,
    sq: shareMapping(q.sq.mem, `the SQ ring of I/O queue ${q.qid}`),
    cq: shareMapping(cq.mem, `the CQ ring of completion queue ${ioCq.qid}`),
    lists,
    listPages: q.listPages,
    sqTail: q.sq.tail,
    sqHead: q.sq.head,
    cqHead: cq.head,
    cqPhase: cq.phase,
    abortGraceMs: ctrl.abortGraceMs,
    lbaSizes: [...ctrl.knownLbaSizes],
    lease: lease.sab,
  };
}

// ---- checking what a Worker was given -----------------------------------------------------------

function isInt(v: unknown, min: number, max: number): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= min && v <= max;
}

function checkInt(where: string, field: string, v: unknown, min: number, max: number): number {
  if (!isInt(v, min, max)) {
    throw new InvalidArgumentError(`${where}: ${field} must be an integer from ${min} to ${max}, got ${show(v)}`);
  }
  return v;
}

function show(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v === undefined || v === null) return String(v);
  return Array.isArray(v) ? "an array" : typeof v;
}

/** A mapping as exportBuffer() describes it: a page-aligned address, whole pages, a bus address per page. */
function checkMapping(where: string, m: unknown, minBytes = 1): SharedMapping {
  if (typeof m !== "object" || m === null) throw new InvalidArgumentError(`${where}: not a shared mapping (got ${show(m)}): pass what exportBuffer() returned`);
  const s = m as Partial<SharedMapping>;
  const vaddr = checkInt(where, "vaddr", s.vaddr, 1, Number.MAX_SAFE_INTEGER);
  if (vaddr % HOST_PAGE_SIZE !== 0) throw new InvalidArgumentError(`${where}: vaddr 0x${vaddr.toString(16)} is not 4 KiB aligned`);
  const size = checkInt(where, "size", s.size, HOST_PAGE_SIZE, 0xffff_f000);
  if (size % HOST_PAGE_SIZE !== 0) throw new InvalidArgumentError(`${where}: size ${size} is not a whole number of 4 KiB pages`);
  if (size < minBytes) throw new InvalidArgumentError(`${where}: ${size} bytes, but ${minBytes} are needed`);
  const pages = size / HOST_PAGE_SIZE;
  if (!Array.isArray(s.iova) || s.iova.length < 2 * pages || s.iova.length % 2 !== 0) {
    throw new InvalidArgumentError(`${where}: iova must hold a (lo, hi) bus address pair for each of its ${pages} pages`);
  }
  for (let i = 0; i < 2 * pages; i++) {
    const v: unknown = s.iova[i];
    if (!isInt(v, 0, 0xffff_ffff) || (i % 2 === 0 && v % HOST_PAGE_SIZE !== 0)) {
      throw new InvalidArgumentError(`${where}: iova[${i}] = ${show(v)} is not ${i % 2 === 0 ? "the low dword of a 4 KiB-aligned bus address" : "a 32-bit value"}`);
    }
  }
  if (typeof s.contiguous !== "boolean") throw new InvalidArgumentError(`${where}: contiguous must be a boolean`);
  return s as SharedMapping;
}

/** Every field of `d` in range and consistent with the others, before any view is made over it. */
function checkShared(d: unknown): SharedIoQueue {
  if (typeof d !== "object" || d === null) throw new InvalidArgumentError(`not a shared I/O queue (got ${show(d)}): pass what exportIoQueue() returned`);
  const s = d as Partial<SharedIoQueue>;
  const where = `shared I/O queue ${isInt(s.qid, 0, Infinity) ? s.qid : "?"}`;
  if (typeof s.backendKind !== "string" || !BACKEND_KINDS.includes(s.backendKind)) {
    throw new InvalidArgumentError(`${where}: backendKind ${show(s.backendKind)} is not one of ${BACKEND_KINDS.join(", ")}`);
  }
  if (typeof s.backendName !== "string") throw new InvalidArgumentError(`${where}: backendName must be a string`);
  if (s.dataPointer !== "prp" && s.dataPointer !== "sgl") throw new InvalidArgumentError(`${where}: dataPointer ${show(s.dataPointer)} is not "prp" or "sgl"`);
  checkInt(where, "bar0", s.bar0, 1, Number.MAX_SAFE_INTEGER);
  const bar0Size = checkInt(where, "bar0Size", s.bar0Size, 1, 0xffff_ffff);
  const dstrd = checkInt(where, "dstrd", s.dstrd, 0, 15);
  if (typeof s.timeoutMs !== "number" || !(s.timeoutMs > 0) || !Number.isFinite(s.timeoutMs)) {
    throw new InvalidArgumentError(`${where}: timeoutMs must be a positive number of milliseconds, got ${show(s.timeoutMs)}`);
  }
  checkInt(where, "maxTransfer", s.maxTransfer, 1, 0xffff_ffff);
  checkInt(where, "sgls", s.sgls, 0, 0xffff_ffff);
  const qid = checkInt(where, "qid", s.qid, 1, 0xffff);
  const cqid = checkInt(where, "cqid", s.cqid, 1, 0xffff);
  const entries = checkInt(where, "entries", s.entries, 2, MAX_QUEUE_ENTRIES);
  const cqEntries = checkInt(where, "cqEntries", s.cqEntries, 2, MAX_QUEUE_ENTRIES);
  if (s.sqDoorbell !== sqTailDoorbell(qid, dstrd)) {
    throw new InvalidArgumentError(`${where}: SQ doorbell ${show(s.sqDoorbell)} is not where DSTRD ${dstrd} puts SQ ${qid}'s (0x${sqTailDoorbell(qid, dstrd).toString(16)})`);
  }
  if (s.cqDoorbell !== cqHeadDoorbell(cqid, dstrd)) {
    throw new InvalidArgumentError(`${where}: CQ doorbell ${show(s.cqDoorbell)} is not where DSTRD ${dstrd} puts CQ ${cqid}'s (0x${cqHeadDoorbell(cqid, dstrd).toString(16)})`);
  }
  if (Math.max(s.sqDoorbell, s.cqDoorbell) + 4 > bar0Size) {
    throw new InvalidArgumentError(`${where}: its doorbells (0x${s.sqDoorbell.toString(16)}, 0x${s.cqDoorbell.toString(16)}) lie outside BAR0 (${bar0Size} bytes)`);
  }
  const listPages = checkInt(where, "listPages", s.listPages, 1, 0xffff);
  checkMapping(`${where}, SQ ring`, s.sq, entries * SQE_SIZE);
  checkMapping(`${where}, CQ ring`, s.cq, cqEntries * CQE_SIZE);
  checkMapping(`${where}, list pages`, s.lists, (Math.min(entries, cqEntries) - 1) * listPages * PRP_PAGE_SIZE);
  checkInt(where, "sqTail", s.sqTail, 0, entries - 1);
  checkInt(where, "sqHead", s.sqHead, 0, entries - 1);
  checkInt(where, "cqHead", s.cqHead, 0, cqEntries - 1);
  checkInt(where, "cqPhase", s.cqPhase, 0, 1);
  checkInt(where, "abortGraceMs", s.abortGraceMs, 0, 0x7fff_ffff);
  if (!Array.isArray(s.lbaSizes) || !s.lbaSizes.every((p) => Array.isArray(p) && p.length === 2 && isInt(p[0], 1, 0xfffffffe) && isInt(p[1], 512, 1 << 24))) {
    throw new InvalidArgumentError(`${where}: lbaSizes must be [nsid, LBA size] pairs`);
  }
  if (!(s.lease instanceof SharedArrayBuffer) || s.lease.byteLength !== LEASE_BYTES) {
    throw new InvalidArgumentError(`${where}: lease must be the SharedArrayBuffer of ${LEASE_BYTES} bytes exportIoQueue() made`);
  }
  return s as SharedIoQueue;
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
    const pages = m.size / HOST_PAGE_SIZE;
    this.#lent.push({ vaddr: m.vaddr as Pointer, size: m.size, iova: Uint32Array.from(m.iova.slice(0, 2 * pages)), contiguous: m.contiguous });
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

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError("a Worker cannot import a dma-buf: import it with ctrl.mapDmaBuf() in the owner thread and send the commands on it there");
  }

  setBusMaster(_enabled: boolean): void {
    throw new InvalidArgumentError("a Worker cannot change the controller's bus mastering: the owner thread does");
  }

  abandonDma(): void {
    this.#live.clear();
  }

  close(): void {
    this.#lent.length = 0;
    for (const m of [...this.#live]) this.freeDma(m);
  }
}

export interface AttachedIoQueue {
  /** An ordinary IoQueue over the owner's memory: low-level, sync and async APIs all work. */
  readonly queue: IoQueue;
  readonly cq: IoCompletionQueue;
  /** A data buffer the owner exported (exportBuffer), for commands on this queue. ClosedError after close(). */
  buffer(m: SharedMapping): DmaBuffer;
  /**
   * Detach every view (rings, list pages, buffers) and hand the queue back to the owner; commands
   * still outstanding fail with ClosedError (await them first to see their results). The owner may
   * then delete the queue and free the memory: exported buffers a command left outstanding may
   * still reach are released only once the queue is deleted. Idempotent.
   */
  close(): void;
}

/** In the Worker: rebuild the queue described by exportIoQueue(). InvalidArgumentError for a malformed description. */
export function attachIoQueue(shared: SharedIoQueue): AttachedIoQueue;
export function attachIoQueue(shared: SharedTcpIoQueue): AttachedTcpIoQueue;
export function attachIoQueue(shared: SharedIoQueue | SharedTcpIoQueue): AttachedIoQueue | AttachedTcpIoQueue;
export function attachIoQueue(shared: SharedIoQueue | SharedTcpIoQueue): AttachedIoQueue | AttachedTcpIoQueue {
  if (typeof shared === "object" && shared !== null && (shared as SharedTcpIoQueue).transport === "tcp") return attachTcpQueue(shared as SharedTcpIoQueue);
  const d = checkShared(shared as SharedIoQueue);
  const backend = new SharedBackend(d);
  let cq: IoCompletionQueue | undefined;
  let queue: IoQueue | undefined;
  const lbaSizes = new Map(d.lbaSizes);
  const ctx = (lease: LeaseClient): IoQueueContext => ({
    backend,
    dstrd: d.dstrd,
    timeoutMs: d.timeoutMs,
    maxTransfer: d.maxTransfer,
    sgls: d.sgls,
    abortGraceMs: d.abortGraceMs,
    lbaSize: (nsid) => {
      const size = lbaSizes.get(nsid);
      if (size === undefined) {
        throw new InvalidArgumentError(`namespace ${nsid} was not identified by the owner before it exported queue ${d.qid}: create new Namespace(ctrl, ${nsid}) there first`);
      }
      return size;
    },
    onExpired: (_q, cid) => lease.requestAbort(cid),
    onStuck: () => lease.requestReset(),
    onFatal: () => lease.requestReset(),
    lease,
  });
  // How long the owner may take to act on a reset asked for before the Worker gives up on it.
  const ownerWaitMs = Math.max(d.timeoutMs, 1000);
  let lease: LeaseClient | undefined;
  try {
    backend.lend(d.cq);
    cq = new IoCompletionQueue(backend, d.cqid, d.cqEntries, d.dstrd);
    lease = new LeaseClient(d.lease, cq, ownerWaitMs);
    // IoQueue allocates its SQ ring, then its list pages.
    backend.lend(d.sq);
    backend.lend(d.lists);
    queue = new IoQueue(ctx(lease), d.qid, d.entries, cq, { timeoutMs: d.timeoutMs, dataPointer: d.dataPointer });
    // Same memory, same roles: a change in how IoQueue allocates must not swap rings silently.
    if (
      Number(queue.sq.mem.pointer) !== d.sq.vaddr ||
      Number(cq.cq.mem.pointer) !== d.cq.vaddr ||
      Number(queue.listBuffer(0).pointer) !== d.lists.vaddr ||
      queue.sq.doorbell !== d.sqDoorbell ||
      cq.cq.doorbell !== d.cqDoorbell ||
      queue.listPages !== d.listPages
    ) {
      throw new InvalidArgumentError(`the Worker's view of I/O queue ${d.qid} does not match the exported one (maxTransfer or the queue layout differ)`);
    }
  } catch (e) {
    queue?.free();
    cq?.free();
    backend.close();
    // Nothing was posted: the owner gets the queue back as it exported it.
    new LeaseClient(d.lease, undefined, 0).release(d.sqTail, d.sqHead, d.cqHead, d.cqPhase, false);
    throw e;
  }
  cq.sqs.set(d.qid, queue);
  queue.sq.tail = d.sqTail;
  queue.sq.head = d.sqHead;
  cq.cq.head = d.cqHead;
  cq.cq.phase = d.cqPhase;
  const q = queue;
  const ioCq = cq;
  const client = lease;
  const buffers: DmaBuffer[] = [];
  let closed = false;
  return {
    queue: q,
    cq: ioCq,
    buffer(m: SharedMapping): DmaBuffer {
      if (closed) throw new ClosedError(`I/O queue ${d.qid} was detached from this Worker (close()); attach it again`);
      backend.lend(checkMapping("shared buffer", m));
      const b = new DmaBuffer(backend, m.size);
      buffers.push(b);
      return b;
    },
    close(): void {
      if (closed) return;
      closed = true;
      // Commands still outstanding settle with ClosedError below, though the controller may still
      // reach their buffers: this thread's views go, and the owner keeps exported memory until it
      // deletes the queue (which ends them) or disables the controller (the lease says so).
      client.release(q.sq.tail, q.sq.head, ioCq.cq.head, ioCq.cq.phase, q.outstanding > 0);
      // free() on a borrowed mapping only detaches the views: the owner still owns the memory.
      for (const b of buffers.splice(0)) b.free();
      q.free();
      ioCq.free();
      backend.close();
    },
  };
}

// ---- NVMe/TCP queues ----------------------------------------------------------------------------

/**
 * An NVMe/TCP I/O queue as plain data: its connection's descriptor (process wide, so a Worker reads
 * and writes the same socket), what the connection negotiated, and a small lease: word 0 is 1
 * while the Worker holds the queue, word 1 is set when the Worker shut the connection down (a
 * timeout or a violation there), after which the owner closes it and reconnects the queue. A
 * Worker cannot reconnect (it has no admin queue): a queue whose connection went down refuses
 * commands there; close it and export it again once the owner has reconnected it.
 */
export interface SharedTcpIoQueue {
  readonly transport: "tcp";
  readonly address: string;
  readonly fd: number;
  readonly qid: number;
  readonly entries: number;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  readonly link: TcpLinkParams;
  /** SQ flow control state at export: the SQ tail and the last SQHD. */
  readonly sqTail: number;
  readonly sqHead: number;
  readonly lbaSizes: readonly (readonly [number, number])[];
  readonly lease: SharedArrayBuffer;
}

export interface AttachedTcpIoQueue {
  /** A TcpQueue over the owner's connection: low-level, sync and async APIs all work. */
  readonly queue: TcpQueue;
  /** A buffer the owner exported (exportBuffer), for commands on this queue. */
  buffer(m: SharedMapping): DmaBuffer;
  /**
   * Hand the queue back to the owner. Commands still outstanding first have their connection shut
   * down (nothing more lands in their buffers) and fail with ClosedError; the owner then
   * reconnects the queue. Idempotent.
   */
  close(): void;
}

function exportTcpQueue(ctrl: Controller, q: TcpQueue): SharedTcpIoQueue {
  if (q.closed) throw new InvalidArgumentError(`I/O queue ${q.qid} is closed`);
  if (![...ctrl.tcp.ioQueues()].includes(q)) throw new InvalidArgumentError(`I/O queue ${q.qid} is not a live queue of ${ctrl.name}`);
  const lease = new SharedArrayBuffer(16);
  q.lend(new Int32Array(lease));
  const sq = q.sqPointers;
  return {
    transport: "tcp",
    address: ctrl.tcp.address,
    fd: q.socket,
    qid: q.qid,
    entries: q.entries,
    timeoutMs: q.timeoutMs,
    maxTransfer: q.maxTransfer,
    link: { ...q.link },
    sqTail: sq.tail,
    sqHead: sq.head,
    lbaSizes: [...ctrl.knownLbaSizes],
    lease,
  };
}

function attachTcpQueue(d: SharedTcpIoQueue): AttachedTcpIoQueue {
  const where = `shared NVMe/TCP queue ${d.qid}`;
  checkInt(where, "fd", d.fd, 0, 0x7fff_ffff);
  checkInt(where, "qid", d.qid, 1, 0xfffe);
  checkInt(where, "entries", d.entries, 2, MAX_QUEUE_ENTRIES);
  checkInt(where, "maxTransfer", d.maxTransfer, 1, 0xffff_ffff);
  if (!(d.lease instanceof SharedArrayBuffer) || d.lease.byteLength !== 16) throw new InvalidArgumentError(`${where}: lease must be the SharedArrayBuffer exportIoQueue() made`);
  const words = new Int32Array(d.lease);
  if (Atomics.load(words, 0) !== 1) throw new InvalidArgumentError(`${where} is not lent (it was given back already): export it again`);
  const memory = new BorrowedHostMemory();
  const lbaSizes = new Map(d.lbaSizes);
  const q = new TcpQueue(
    {
      address: d.address,
      timeoutMs: d.timeoutMs,
      maxTransfer: d.maxTransfer,
      memory,
      lbaSize: (nsid) => {
        const size = lbaSizes.get(nsid);
        if (size === undefined) throw new InvalidArgumentError(`namespace ${nsid} was not identified by the owner before it exported queue ${d.qid}: create new Namespace(ctrl, ${nsid}) there first`);
        return size;
      },
    },
    d.qid,
    d.entries,
  );
  checkInt(where, "sqTail", d.sqTail, 0, d.entries - 1);
  checkInt(where, "sqHead", d.sqHead, 0, d.entries - 1);
  q.attach(d.fd, d.link, false, { tail: d.sqTail, head: d.sqHead });
  q.borrow(words);
  const buffers: DmaBuffer[] = [];
  let closed = false;
  return {
    queue: q,
    buffer(m: SharedMapping): DmaBuffer {
      if (closed) throw new ClosedError(`I/O queue ${d.qid} was detached from this Worker (close()); attach it again`);
      if (typeof m !== "object" || m === null || !isInt(m.vaddr, 1, Number.MAX_SAFE_INTEGER) || !isInt(m.size, HOST_PAGE_SIZE, 0xffff_f000) || m.size % HOST_PAGE_SIZE !== 0) {
        throw new InvalidArgumentError(`shared buffer: not what exportBuffer() returned (${show(m)})`);
      }
      memory.lend(m.vaddr, m.size);
      const b = new DmaBuffer(memory, m.size);
      buffers.push(b);
      return b;
    },
    close(): void {
      if (closed) return;
      closed = true;
      const down = q.detach();
      for (const b of buffers.splice(0)) b.free();
      q.free();
      memory.close();
      if (down) Atomics.store(words, 1, 1);
      Atomics.store(words, 0, 0);
    },
  };
}
