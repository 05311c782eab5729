/**
 * I/O queues: a submission queue with a tracker per command identifier (CID), and completion
 * queues that one or several SQs share. Three ways to use them, all over the same rings:
 *
 * - low level (the libnvm model): acquire() a CID, fill the SQ slot in place (rw(), or your own
 *   writer at `slot`), submit() once per batch, poll() completions into one handler per queue;
 *   no allocation, no promise, no copy per command;
 * - synchronous: execSync() posts one command and spins, bounded, for its completion;
 * - async: rwAsync() and friends return promises; many may be in flight, doorbells are rung once
 *   per microtask turn and a poller reaps on the event loop until nothing is outstanding.
 *
 * The CID is the tracker index, so it is unique among outstanding commands by construction. Each
 * tracker owns its own data-pointer list pages (PRP list or SGL segments; SPDK's nvme_tracker), so
 * building a command never allocates.
 */
import { ClosedError, ControllerFatalError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError } from "./errors.ts";
import { native } from "./native.ts";
import type { Backend } from "./backends/types.ts";
import { DmaBuffer } from "./dma.ts";
import { prpListPages, writePrp, writePrpPair } from "./prp.ts";
import { buildSgl, sglListPages, sglSupport } from "./sgl.ts";
import { CompletionQueue, SubmissionQueue } from "./queue.ts";
import { commandName, hi32, lo32 } from "./spec/commands.ts";
import { CSTS_CFS, REG_ALL_ONES, REG_CSTS, cqHeadDoorbell, sqTailDoorbell } from "./spec/registers.ts";

// Constants of the hot path are const enums: Bun inlines their values, while a module-level
// const costs three bytecodes per use (scope lookup and TDZ check), which counts against the
// JIT's inlining budget even though the optimized code folds it (bench/README.md, "inlining").
const enum K {
  TWO32 = 0x1_0000_0000,
  /** Largest SLBA a JS number holds exactly; the controller's NSZE bounds it further. */
  MAX_SLBA = 9007199254740991,
  PAGE_SIZE = 4096,
  PAGE_SHIFT = 12,
  PAGE_MASK = 4095,
  SQE_DWORDS = 16,
  CQE_DWORDS = 4,
}

/** Tracker states. */
const enum State {
  FREE = 0,
  /** Acquired through the low-level API, not yet posted. */
  ACQUIRED = 1,
  INFLIGHT = 2,
  /** Its deadline passed; the CID stays reserved until the controller completes it (or a reset). */
  EXPIRED = 3,
  /** Every CID of a deleted queue: nothing can be posted. */
  CLOSED = 4,
}

/** How a posted command reports its completion. */
const enum Mode {
  HANDLER = 0,
  PROMISE = 1,
  SYNC = 2,
}
/** A completion for the low-level handler: called once per CQE, with the 15-bit status (0 = success). */
export type CompletionHandler = (cid: number, status: number, dw0: number) => void;

export interface IoQueueOptions {
  /** Entries in the SQ (and in its CQ when one is created for it): 2 to CAP.MQES+1. Defaults to 256. */
  readonly entries?: number;
  /** Queue id; defaults to the lowest free one. */
  readonly qid?: number;
  /** Share this completion queue instead of creating one. */
  readonly cq?: IoCompletionQueue;
  /** Per-command timeout in ms. Defaults to the controller's (10 000). */
  readonly timeoutMs?: number;
  /** Data pointers: PRPs, or SGLs where Identify Controller SGLS says they are supported. Defaults to "prp". */
  readonly dataPointer?: "prp" | "sgl";
}

/** NLB fits 16 bits (1 to 65536 blocks) and the SLBA is a non-negative integer a double holds exactly. */
function rwFieldsOk(blocks: number, slba: number): boolean {
  return (blocks | 0) === blocks && blocks >= 1 && blocks <= 65536 && slba >= 0 && slba <= K.MAX_SLBA && Math.floor(slba) === slba;
}

// The SQE writers are split in two so each stays under the JIT's inlining limit.

/** CDW0 (opcode, CID), NSID, MPTR and CDW13-15 of an SQE at dword `o`: all but DPTR and CDW10-12. */
function writeSqeHead(sqe: Uint32Array, o: number, opcode: number, cid: number, nsid: number): void {
  sqe[o] = (opcode & 0xff) | (cid << 16);
  sqe[o + 1] = nsid;
  sqe[o + 2] = 0;
  sqe[o + 3] = 0;
  sqe[o + 4] = 0;
  sqe[o + 5] = 0;
  sqe[o + 13] = 0;
  sqe[o + 14] = 0;
  sqe[o + 15] = 0;
}

/** CDW10-12 of a Read/Write/Compare: SLBA, NLB-1 with the CDW12 flags. */
function writeRwCdws(sqe: Uint32Array, o: number, slba: number, blocks: number, cdw12Flags: number): void {
  sqe[o + 10] = lo32(slba);
  sqe[o + 11] = hi32(slba);
  sqe[o + 12] = ((blocks - 1) & 0xffff) | cdw12Flags;
}

/** A completion queue; SQs bound to it receive their completions through poll(). */
export class IoCompletionQueue {
  readonly cq: CompletionQueue;
  /** SQs bound to this CQ by SQ id. */
  readonly sqs = new Map<number, IoQueue>();
  /**
   * Completions this CQ can still take: every SQ bound to it draws from the same budget, so
   * the CQ can never overflow however many SQs share it (one slot always stays empty).
   */
  credits: number;
  closed = false;
  private lastSq: IoQueue | undefined;

  constructor(
    backend: Backend,
    readonly qid: number,
    readonly entries: number,
    dstrd: number,
    /** Created together with an SQ (createIoQueue without `cq`): deleted with it. */
    readonly implicit = false,
  ) {
    this.cq = new CompletionQueue(backend, qid, entries, cqHeadDoorbell(qid, dstrd), backend.bar0);
    this.credits = entries - 1;
  }

  /** @internal After a controller reset: empty ring, full budget. */
  reset(): void {
    this.cq.reset();
    this.credits = this.entries - 1;
  }

  /** Reap every posted completion, dispatch it to its SQ, ring the head doorbell once. */
  poll(): number {
    const cq = this.cq;
    const e = cq.cqe;
    const entries = cq.entries;
    let head = cq.head;
    let phase = cq.phase;
    let q = this.lastSq;
    let n = 0;
    for (;;) {
      const o = head * K.CQE_DWORDS;
      // Atomics.load: a plain load in a polling loop is hoisted by the JIT. Phase first; the
      // rest of the entry is valid only after it.
      const dw3 = Atomics.load(e, o + 3);
      if (((dw3 >>> 16) & 1) !== phase) break;
      const dw2 = e[o + 2]!;
      const dw0 = e[o]!;
      if (++head === entries) {
        head = 0;
        phase ^= 1;
      }
      n++;
      // Consumed before it is dispatched: a handler may poll this CQ again (a sync command).
      cq.head = head;
      cq.phase = phase;
      const sqid = dw2 >>> 16;
      // One Map lookup per change of SQ, not per completion (usually one SQ per CQ).
      if (q === undefined || q.qid !== sqid) q = this.lastSq = this.sqs.get(sqid);
      q?.complete(dw3 & 0xffff, dw3 >>> 17, dw0, dw2 & 0xffff);
      // The handler may have polled (head, phase) or deleted its queue (lastSq): reload.
      head = cq.head;
      phase = cq.phase;
      q = this.lastSq;
    }
    if (n > 0) cq.ring();
    return n;
  }

  /** @internal `q` was deleted: its completions are no longer dispatched. */
  unbind(q: IoQueue): void {
    if (this.sqs.get(q.qid) === q) this.sqs.delete(q.qid);
    if (this.lastSq === q) this.lastSq = undefined;
  }

  free(): void {
    this.closed = true;
    this.cq.mem.free();
  }
}

/** What the owner (the controller) lends an I/O queue. */
export interface IoQueueContext {
  readonly backend: Backend;
  readonly dstrd: number;
  readonly timeoutMs: number;
  /** Largest transfer one command may move, in bytes. */
  readonly maxTransfer: number;
  /** Identify Controller SGLS. */
  readonly sgls: number;
  /** A command's deadline passed (after its caller was failed): the owner aborts it, or resets. */
  readonly onExpired?: (q: IoQueue, cid: number) => void;
  /** CSTS.CFS or a vanished device seen while polling: the owner resets the controller. */
  readonly onFatal?: (err: ControllerFatalError) => void;
}

interface Waiter {
  readonly start: () => void;
  readonly reject: (e: Error) => void;
  readonly since: number;
}

export class IoQueue {
  readonly sq: SubmissionQueue;
  readonly ioCq: IoCompletionQueue;
  /** Commands that may be outstanding at once: one less than the smaller ring. */
  readonly depth: number;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  readonly useSgl: boolean;
  /** Called for completions of commands posted through the low-level API. */
  onComplete: CompletionHandler | null = null;
  /** Called when a low-level command's deadline passes (checkTimeouts()). */
  onTimeout: ((cid: number) => void) | null = null;

  // State the hot path touches is in TS-private fields (one bytecode per access, so rw() and
  // complete() stay small enough to inline); the rest is #private.
  readonly #ctx: IoQueueContext;
  private readonly backend: Backend;
  private readonly cidState: Uint8Array;
  private readonly cidMode: Uint8Array;
  private readonly freeCids: Uint16Array;
  private freeTop: number;
  private readonly cidDeadline: Float64Array;
  private readonly cidStatus: Int32Array;
  private readonly cidDw0: Uint32Array;
  // For error messages only: what each CID was doing.
  private readonly cidOpcode: Uint8Array;
  private readonly cidSlba: Float64Array;
  private readonly cidNlb: Uint32Array;
  readonly #resolve: (((dw0: number) => void) | undefined)[];
  readonly #reject: (((e: Error) => void) | undefined)[];
  /** Data-pointer list pages, `listPages` per CID. */
  private readonly lists: DmaBuffer;
  readonly listPages: number;
  private readonly listBytes: number;
  /** Async requests waiting for a free CID, in order; they time out like posted commands. */
  readonly #waiting: Waiter[] = [];
  private inflight = 0;
  /** Of inflight, those whose caller was already failed (timed out, controller fatal). */
  private expiredCount = 0;
  /** Set when the controller failed: nothing more is posted on this queue. */
  private fatal: Error | undefined;
  /** Why the last synchronous command failed without a status (status -2). */
  #syncError: Error | undefined;
  #ringPending = false;
  /**
   * performance.now() of the first command posted since the last submit(): every command of a
   * batch gets its deadline from it (one clock read per batch, not per command; never later).
   */
  private batchStart = -1;
  #polling = false;
  private isClosed = false;

  constructor(
    ctx: IoQueueContext,
    readonly qid: number,
    entries: number,
    ioCq: IoCompletionQueue,
    opts: IoQueueOptions = {},
  ) {
    this.#ctx = ctx;
    this.backend = ctx.backend;
    this.ioCq = ioCq;
    this.timeoutMs = opts.timeoutMs ?? ctx.timeoutMs;
    this.maxTransfer = ctx.maxTransfer;
    this.useSgl = opts.dataPointer === "sgl";
    if (this.useSgl && sglSupport(ctx.sgls) === "none") {
      throw new InvalidArgumentError(`this controller does not support SGLs (Identify Controller SGLS = 0x${ctx.sgls.toString(16)}); use PRPs`);
    }
    const depth = Math.min(entries, ioCq.entries) - 1;
    if (depth > 0xffff) throw new InvalidArgumentError(`queue depth ${depth} exceeds the 16-bit CID space`);
    this.depth = depth;
    // Worst case for one command of maxTransfer bytes starting inside a page: PRP entries, or one
    // SGL data block per page plus segment pointers (255 descriptors and a pointer per page).
    const pages = Math.ceil(this.maxTransfer / K.PAGE_SIZE) + 1;
    this.listPages = Math.max(1, prpListPages(K.PAGE_SIZE - 4, this.maxTransfer), Math.ceil(pages / 255));
    this.listBytes = this.listPages * K.PAGE_SIZE;
    this.sq = new SubmissionQueue(ctx.backend, qid, entries, sqTailDoorbell(qid, ctx.dstrd), ctx.backend.bar0);
    try {
      this.lists = new DmaBuffer(ctx.backend, depth * this.listPages * K.PAGE_SIZE);
    } catch (e) {
      this.sq.mem.free();
      throw e;
    }
    this.cidState = new Uint8Array(depth);
    this.cidMode = new Uint8Array(depth);
    this.freeCids = new Uint16Array(depth);
    for (let i = 0; i < depth; i++) this.freeCids[i] = depth - 1 - i; // pop gives 0, 1, 2, ...
    this.freeTop = depth;
    this.cidDeadline = new Float64Array(depth);
    this.cidStatus = new Int32Array(depth);
    this.cidDw0 = new Uint32Array(depth);
    this.cidOpcode = new Uint8Array(depth);
    this.cidSlba = new Float64Array(depth);
    this.cidNlb = new Uint32Array(depth);
    this.#resolve = new Array(depth).fill(undefined);
    this.#reject = new Array(depth).fill(undefined);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Commands posted and not yet completed (expired ones included). */
  get outstanding(): number {
    return this.inflight;
  }

  // ---- low-level API ------------------------------------------------------------------------

  /** A free CID, reserved for the caller; -1 when `depth` commands are outstanding. */
  acquire(): number {
    if (this.freeTop === 0 || this.ioCq.credits === 0 || this.fatal) return -1;
    const cid = this.freeCids[--this.freeTop]!;
    this.cidState[cid] = State.ACQUIRED;
    this.ioCq.credits--;
    return cid;
  }

  /** Give back a CID acquired but never posted. */
  release(cid: number): void {
    this.checkAcquired(cid);
    this.freeCid(cid);
  }

  private freeCid(cid: number): void {
    this.cidState[cid] = State.FREE;
    this.freeCids[this.freeTop++] = cid;
    this.ioCq.credits++;
  }

  private checkAcquired(cid: number): void {
    if (this.isClosed) throw new ClosedError(`I/O queue ${this.qid} is closed`);
    const valid = Number.isInteger(cid) && cid >= 0 && cid < this.depth;
    if (!valid || this.cidState[cid] !== State.ACQUIRED) {
      const what = valid ? ["free", "acquired", "already in flight", "expired and still outstanding"][this.cidState[cid]!] : "not a CID of this queue";
      throw new InvalidArgumentError(`CID ${cid} on queue ${this.qid} is ${what}: post only CIDs returned by acquire() (0 to ${this.depth - 1})`);
    }
  }

  /** Dword offset of the SQ slot the next posted command goes into. */
  get slot(): number {
    return this.sq.tail * K.SQE_DWORDS;
  }

  /**
   * Post the command already written at `slot` under `cid` (CDW0 31:16 must hold `cid`).
   * It reaches the controller at the next submit().
   */
  post(cid: number, mode?: number): void {
    const dw0 = this.sq.sqe[this.sq.tail * K.SQE_DWORDS]!;
    if (this.cidState[cid] !== State.ACQUIRED || dw0 >>> 16 !== cid) {
      this.checkAcquired(cid);
      throw new InvalidArgumentError(`the SQ slot holds CID ${dw0 >>> 16}, not the acquired CID ${cid}`);
    }
    this.postChecked(cid, mode ?? Mode.HANDLER, dw0 & 0xff);
  }

  /** Post the checked command at `slot`. */
  private postChecked(cid: number, mode: number, opcode: number): void {
    if (this.batchStart < 0) this.batchStart = performance.now();
    this.cidState[cid] = State.INFLIGHT;
    this.cidMode[cid] = mode;
    this.cidDeadline[cid] = this.batchStart + this.timeoutMs;
    this.cidOpcode[cid] = opcode;
    this.inflight++;
    this.sq.advance();
  }

  /**
   * Write a data command (Read, Write, Compare: opcode, NSID, SLBA, blocks) into the SQ slot
   * for `cid`, with PRPs or an SGL for `bytes` bytes of `buf` at `offset`, and post it.
   * The caller has checked the range (Namespace.checkRange); this checks the buffer.
   */
  rw(cid: number, opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags?: number): void {
    // The hot path is split into functions small enough for the JIT to inline, whole, into the
    // caller's loop: JSC's FTL inlines a callee of up to 170 bytecode units (options
    // maximumFunctionForCallInlineCandidateBytecodeCostForFTL); one 660-unit rw() was called
    // instead, which cost more than its work (bench/README.md, "inlining"). Hence also no default
    // parameter values here (they make JSC copy every argument), TS-private fields rather than
    // #private ones (three bytecodes per access instead of one) and const enums. One branch
    // covers every check; checkRw() finds what failed and says so. A CID out of range or of a
    // closed queue reads undefined or State.CLOSED.
    this.rwCheck(cid, blocks, slba, buf, offset, bytes);
    this.rwSqe(opcode, cid, nsid, slba, blocks, cdw12Flags);
    this.rwDataAndPost(cid, opcode, slba, blocks, buf, offset, bytes);
  }

  /** Every check of rw() in one branch (CID state, NLB, SLBA, buffer span, owner); checkRw() says what failed. */
  private rwCheck(cid: number, blocks: number, slba: number, buf: DmaBuffer, offset: number, bytes: number): void {
    if (!(this.cidState[cid] === State.ACQUIRED && rwFieldsOk(blocks, slba) && this.spanOk(buf, offset, bytes))) {
      this.checkRw(cid, blocks, slba, buf, offset, bytes);
    }
  }

  /** CDW0-5 and CDW10-15 of a Read/Write/Compare in the slot at the tail. */
  private rwSqe(opcode: number, cid: number, nsid: number, slba: number, blocks: number, cdw12Flags: number | undefined): void {
    const o = this.sq.tail * K.SQE_DWORDS;
    const sqe = this.sq.sqe;
    writeSqeHead(sqe, o, opcode, cid, nsid);
    writeRwCdws(sqe, o, slba, blocks, cdw12Flags ?? 0);
  }

  /** DPTR of the slot at the tail, then post it, keeping what error messages name (SLBA, blocks). */
  private rwDataAndPost(cid: number, opcode: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number): void {
    this.dataPointer(cid, this.sq.tail * K.SQE_DWORDS, buf, offset, bytes);
    this.postChecked(cid, Mode.HANDLER, opcode & 0xff);
    this.cidSlba[cid] = slba;
    this.cidNlb[cid] = blocks;
  }

  /** Offset and length fit `buf`, dword aligned, within MDTS, and the buffer is this controller's. */
  private spanOk(buf: DmaBuffer, offset: number, bytes: number): boolean {
    return (
      (offset | 0) === offset &&
      (offset & 0x8000_0003) === 0 &&
      (bytes | 0) === bytes &&
      bytes > 0 &&
      bytes <= this.maxTransfer &&
      offset + bytes <= buf.size &&
      buf.belongsTo(this.backend)
    );
  }

  /** DPTR for `bytes` of `buf` at `offset`: PRP1/PRP2 inline for one or two pages, else a list or an SGL. */
  private dataPointer(cid: number, o: number, buf: DmaBuffer, offset: number, bytes: number): void {
    const at = buf.base + offset;
    const inPage = at & K.PAGE_MASK;
    if (inPage + bytes <= 2 * K.PAGE_SIZE && at <= 0x7fff_ffff && !this.useSgl) {
      writePrpPair(this.sq.sqe, o, buf.iova, at >>> K.PAGE_SHIFT, inPage, bytes);
    } else this.dataPointerSlow(cid, o, buf, offset, bytes);
  }

  private dataPointerSlow(cid: number, o: number, buf: DmaBuffer, offset: number, bytes: number): void {
    if (!this.useSgl) return writePrp(this.sq.sqe, o, buf, offset, bytes, this.lists, cid * this.listBytes);
    if (sglListPages(buf, offset, bytes) > this.listPages) {
      throw new InvalidArgumentError(`this transfer needs more SGL segment pages than a command has (${this.listPages})`);
    }
    buildSgl(this.sq.sqe, o, buf, offset, bytes, this.lists, cid * this.listBytes);
  }

  /** The slow half of rw()'s checks: throws what failed; returns when all hold (e.g. a buffer over 2 GiB). */
  private checkRw(cid: number, blocks: number, slba: number, buf: DmaBuffer, offset: number, bytes: number): void {
    this.checkAcquired(cid);
    if (!Number.isInteger(blocks) || blocks < 1 || blocks > 65536) {
      throw new InvalidArgumentError(`block count ${blocks}: NLB is 16 bits, one command moves 1 to 65536 blocks`);
    }
    if (!Number.isSafeInteger(slba) || slba < 0) throw new InvalidArgumentError(`SLBA ${slba} is not a non-negative integer`);
    this.#checkBuffer(buf, offset, bytes);
  }

  #checkBuffer(buf: DmaBuffer, offset: number, bytes: number): void {
    if (buf.freed) throw new ClosedError("the data buffer was freed; allocate a new one");
    if (!buf.belongsTo(this.backend)) {
      throw new InvalidArgumentError("the data buffer belongs to another controller: allocate it with this controller's allocBuffer()");
    }
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0) {
      throw new InvalidArgumentError(`buffer offset ${offset} must be a non-negative multiple of 4 (dword alignment)`);
    }
    if (!Number.isInteger(bytes) || bytes <= 0) throw new InvalidArgumentError(`transfer length must be a positive integer, got ${bytes}`);
    if (offset + bytes > buf.size) {
      throw new InvalidArgumentError(`buffer too small: ${bytes} bytes at offset ${offset}, the buffer holds ${buf.size}`);
    }
    if (bytes > this.maxTransfer) {
      throw new InvalidArgumentError(`${bytes} bytes exceed the largest transfer of one command (${this.maxTransfer} bytes, MDTS): split it`);
    }
  }

  /** The CID's own list page, for commands whose data is a small structure (Dataset Management ranges). */
  listBuffer(cid: number): DmaBuffer {
    return this.lists.region(cid * this.listBytes, K.PAGE_SIZE);
  }

  /** Ring the SQ tail doorbell once for everything posted since the last submit. */
  submit(): void {
    this.#ringPending = false;
    this.batchStart = -1;
    this.sq.ring();
  }

  /** Reap completions (of this queue and of others sharing its CQ); returns how many. */
  poll(): number {
    if (this.isClosed) return 0;
    const n = this.ioCq.poll();
    // Another SQ on a shared CQ may have reaped our completions: drain whenever there is room.
    if (this.#waiting.length > 0) this.#drain();
    return n;
  }

  /**
   * @internal Called by the CQ for each completion of this SQ. Kept small so the JIT inlines it
   * into the CQ's poll loop: only the low-level handler's case is here.
   */
  complete(cid: number, status: number, dw0: number, sqhd: number): void {
    this.sq.head = sqhd;
    // Out of range reads undefined: not ours (a controller bug, or a stale entry after reset).
    if (this.cidState[cid] === State.INFLIGHT && this.cidMode[cid] === Mode.HANDLER) {
      this.cidState[cid] = State.FREE;
      this.freeCids[this.freeTop++] = cid;
      this.ioCq.credits++;
      this.inflight--;
      const handler = this.onComplete;
      if (handler !== null) handler(cid, status, dw0);
    } else this.completeOther(cid, status, dw0);
  }

  /** Completions of promise and sync commands, and of expired or unknown CIDs. */
  private completeOther(cid: number, status: number, dw0: number): void {
    const state = this.cidState[cid];
    if (state !== State.INFLIGHT) {
      if (state === State.EXPIRED) {
        this.freeCid(cid);
        this.inflight--;
        this.expiredCount--; // its caller was already told it timed out
      }
      return;
    }
    this.freeCid(cid);
    this.inflight--;
    if (this.cidMode[cid] === Mode.PROMISE) {
      const resolve = this.#resolve[cid]!;
      const reject = this.#reject[cid]!;
      this.#resolve[cid] = undefined;
      this.#reject[cid] = undefined;
      if (status === 0) resolve(dw0);
      else reject(this.#statusError(cid, status));
    } else {
      this.cidStatus[cid] = status;
      this.cidDw0[cid] = dw0;
    }
  }

  #statusError(cid: number, status: number): NvmeStatusError {
    const opcode = this.cidOpcode[cid]!;
    const nlb = this.cidNlb[cid]!;
    return new NvmeStatusError(status, {
      command: commandName(opcode, false),
      opcode,
      cid,
      sqid: this.qid,
      detail: nlb > 0 ? `@ LBA ${this.cidSlba[cid]}, ${nlb} blocks` : undefined,
    });
  }

  /**
   * Expire commands whose deadline passed: promises reject with NvmeTimeoutError, low-level
   * commands go to onTimeout. Their CIDs stay reserved until the controller completes them.
   */
  checkTimeouts(now = performance.now()): number {
    let n = 0;
    while (this.#waiting.length > 0 && now - this.#waiting[0]!.since > this.timeoutMs) {
      n++;
      this.#waiting.shift()!.reject(
        new NvmeTimeoutError(`a command on queue ${this.qid} waited ${this.timeoutMs} ms for a free slot and was never sent`, this.timeoutMs),
      );
    }
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.cidState[cid] !== State.INFLIGHT || this.cidMode[cid] === Mode.SYNC || this.cidDeadline[cid]! > now) continue;
      this.cidState[cid] = State.EXPIRED;
      this.expiredCount++;
      n++;
      const err = new NvmeTimeoutError(
        `${commandName(this.cidOpcode[cid]!, false)} (cid ${cid}) on queue ${this.qid} did not complete within ${this.timeoutMs} ms`,
        this.timeoutMs,
      );
      if (this.cidMode[cid] === Mode.PROMISE) {
        const reject = this.#reject[cid]!;
        this.#resolve[cid] = undefined;
        this.#reject[cid] = undefined;
        reject(err);
      } else this.onTimeout?.(cid);
      this.#ctx.onExpired?.(this, cid);
    }
    return n;
  }

  /** True while `cid` timed out and the controller has not completed it yet. */
  isExpired(cid: number): boolean {
    return this.cidState[cid] === State.EXPIRED;
  }

  #checkController(): void {
    const csts = native().nvm_read32(this.#ctx.backend.bar0, REG_CSTS);
    if (csts !== REG_ALL_ONES && (csts & CSTS_CFS) === 0) return;
    const err = new ControllerFatalError(
      csts === REG_ALL_ONES
        ? `${this.#ctx.backend.name}: controller registers read all ones: the device is gone`
        : `${this.#ctx.backend.name}: Controller Fatal Status (CSTS.CFS) set with ${this.inflight} commands outstanding`,
      csts,
    );
    // With an owner that can reset the controller, outstanding commands fail and the queue goes on;
    // alone, the queue refuses further commands.
    if (this.#ctx.onFatal) this.#ctx.onFatal(err);
    else this.#failAll(err);
  }

  /** Fail every outstanding async command and waiter; their CIDs stay reserved (the controller is broken). */
  #failAll(err: Error): void {
    this.fatal = err;
    this.#failOutstanding(err);
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  #failOutstanding(err: Error): void {
    this.#syncError = err;
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.cidState[cid] !== State.INFLIGHT) continue;
      this.cidState[cid] = State.EXPIRED;
      this.expiredCount++;
      if (this.cidMode[cid] === Mode.PROMISE) {
        const reject = this.#reject[cid]!;
        this.#resolve[cid] = undefined;
        this.#reject[cid] = undefined;
        reject(err);
      } else if (this.cidMode[cid] === Mode.SYNC) this.cidStatus[cid] = -2;
      else this.onTimeout?.(cid);
    }
  }

  /**
   * @internal The controller was disabled (reset): every posted command fails with `err`, the
   * rings start over empty, every CID is free again. Requests still waiting for a CID are kept
   * and sent once the queue exists again (resume()).
   */
  resetAfterDisable(err: Error): void {
    this.#failOutstanding(err);
    this.sq.reset();
    for (let i = 0; i < this.depth; i++) {
      this.cidState[i] = State.FREE;
      this.freeCids[i] = this.depth - 1 - i;
    }
    this.freeTop = this.depth;
    this.inflight = 0;
    this.expiredCount = 0;
    this.fatal = undefined;
    this.#ringPending = false;
    this.batchStart = -1;
  }

  /** @internal The queue exists on the controller again: send what waited. */
  resume(): void {
    if (this.#waiting.length > 0) {
      this.#drain();
      this.#startPolling();
    }
  }

  // ---- synchronous --------------------------------------------------------------------------

  /** Post with `fill(cid)` (which writes and posts the SQE), submit, and spin for completion. */
  #execSync(fill: (cid: number) => void): number {
    if (this.isClosed) throw new ClosedError(`I/O queue ${this.qid} is closed`);
    if (this.fatal) throw this.fatal;
    let cid = this.acquire();
    const deadline = performance.now() + this.timeoutMs;
    while (cid < 0) {
      // Async commands hold every CID: reap until one frees up, bounded like everything else.
      this.poll();
      if (performance.now() > deadline) throw new NvmeTimeoutError(`queue ${this.qid}: no command slot freed within ${this.timeoutMs} ms`, this.timeoutMs);
      cid = this.acquire();
    }
    try {
      fill(cid);
    } catch (e) {
      if (this.cidState[cid] === State.ACQUIRED) this.release(cid);
      throw e;
    }
    this.cidMode[cid] = Mode.SYNC;
    this.cidStatus[cid] = -1;
    this.submit();
    for (let spins = 0; this.cidStatus[cid] === -1; spins++) {
      this.poll();
      if ((spins & 255) === 255) {
        if (performance.now() > deadline) {
          this.cidState[cid] = State.EXPIRED;
          this.expiredCount++;
          const err = new NvmeTimeoutError(
            `${commandName(this.cidOpcode[cid]!, false)} (cid ${cid}) on queue ${this.qid} did not complete within ${this.timeoutMs} ms`,
            this.timeoutMs,
          );
          this.#ctx.onExpired?.(this, cid);
          throw err;
        }
        if ((spins & 16383) === 16383) this.#checkController();
      }
    }
    const status = this.cidStatus[cid]!;
    if (status === -2) throw this.#syncError!;
    if (status !== 0) throw this.#statusError(cid, status);
    return this.cidDw0[cid]!;
  }

  /** Read/Write/Compare synchronously; NvmeStatusError on a non-zero status. Returns DW0. */
  rwSync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): number {
    return this.#execSync((cid) => this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags));
  }

  /** Any command without data (Flush, Write Zeroes) or with a data structure in its list page, synchronously. */
  commandSync(write: (sqe: Uint32Array, o: number, cid: number) => void): number {
    return this.#execSync((cid) => {
      write(this.sq.sqe, this.slot, cid);
      this.post(cid);
      this.cidNlb[cid] = 0;
    });
  }

  // ---- async --------------------------------------------------------------------------------

  /** Read/Write/Compare; resolves with DW0, rejects with NvmeStatusError / NvmeTimeoutError. */
  rwAsync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): Promise<number> {
    try {
      // Checked now, not when a CID frees up: a bad buffer fails at once, in order.
      this.#checkBuffer(buf, offset, bytes);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return this.#async((cid) => this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags));
  }

  /** Any command built by `write` (which fills the SQE at `o` for `cid`), asynchronously. */
  commandAsync(write: (sqe: Uint32Array, o: number, cid: number) => void): Promise<number> {
    return this.#async((cid) => {
      write(this.sq.sqe, this.slot, cid);
      this.post(cid);
      this.cidNlb[cid] = 0;
    });
  }

  #async(fill: (cid: number) => void): Promise<number> {
    if (this.isClosed) return Promise.reject(new ClosedError(`I/O queue ${this.qid} is closed`));
    if (this.fatal) return Promise.reject(this.fatal);
    return new Promise<number>((resolve, reject) => {
      const since = performance.now();
      const start = () => {
        if (this.isClosed) return reject(new ClosedError(`I/O queue ${this.qid} was closed before this command was sent`));
        if (this.fatal) return reject(this.fatal);
        const cid = this.acquire();
        if (cid < 0) return void this.#waiting.unshift({ start, reject, since }); // lost a race with a sync caller: stay first
        try {
          fill(cid);
        } catch (e) {
          if (this.cidState[cid] === State.ACQUIRED) this.release(cid);
          return reject(e as Error);
        }
        this.cidMode[cid] = Mode.PROMISE;
        this.#resolve[cid] = resolve;
        this.#reject[cid] = reject;
        this.#scheduleRing();
        this.#startPolling();
      };
      if (this.freeTop === 0 || this.ioCq.credits === 0 || this.#waiting.length > 0) {
        this.#waiting.push({ start, reject, since });
        this.#startPolling();
      } else start();
    });
  }

  #drain(): void {
    while (this.freeTop > 0 && this.ioCq.credits > 0 && this.#waiting.length > 0) this.#waiting.shift()!.start();
  }

  #scheduleRing(): void {
    if (this.#ringPending) return;
    this.#ringPending = true;
    // One doorbell for everything posted in this turn of the event loop.
    queueMicrotask(() => {
      if (this.#ringPending && !this.isClosed) this.submit();
    });
  }

  #startPolling(): void {
    if (this.#polling) return;
    this.#polling = true;
    let turns = 0;
    const loop = () => {
      if (this.isClosed) {
        this.#polling = false;
        return;
      }
      // Spin briefly before yielding: a completion is usually microseconds away.
      for (let i = 0; i < 64 && this.poll() === 0 && this.inflight > this.expiredCount; i++);
      if (this.#ringPending) this.submit();
      if ((++turns & 63) === 0) {
        this.checkTimeouts();
        this.#checkController();
      }
      // Commands already failed (expired) do not keep the poller spinning: a later poll reaps them.
      if (this.inflight > this.expiredCount || this.#waiting.length > 0) setImmediate(loop);
      else this.#polling = false;
    };
    setImmediate(loop);
  }

  /** The controller deleted the queue (or never created it): fail what is left, free the memory. */
  free(): void {
    if (this.isClosed) return;
    this.#failAll(new ClosedError(`I/O queue ${this.qid} was deleted with commands outstanding`));
    this.isClosed = true;
    // A shared CQ outlives this SQ: hand back the completion slots its CIDs still held.
    for (let cid = 0; cid < this.depth; cid++) if (this.cidState[cid] !== State.FREE) this.ioCq.credits++;
    this.cidState.fill(State.CLOSED);
    this.freeTop = 0;
    this.ioCq.unbind(this);
    this.sq.mem.free();
    this.lists.free();
  }
}

