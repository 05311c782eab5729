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
import { prpListPages, PRP_PAGE_SIZE, writePrp } from "./prp.ts";
import { buildSgl, sglListPages, sglSupport } from "./sgl.ts";
import { CompletionQueue, SubmissionQueue } from "./queue.ts";
import { commandName, CQE_DWORDS, SQE_DWORDS, writeSqe } from "./spec/commands.ts";
import { CSTS_CFS, REG_ALL_ONES, REG_CSTS, cqHeadDoorbell, sqTailDoorbell } from "./spec/registers.ts";

const TWO32 = 0x1_0000_0000;

// Tracker states
const FREE = 0;
/** Acquired through the low-level API, not yet posted. */
const ACQUIRED = 1;
const INFLIGHT = 2;
/** Its deadline passed; the CID stays reserved until the controller completes it (or a reset). */
const EXPIRED = 3;

// How a posted command reports its completion
const MODE_HANDLER = 0;
const MODE_PROMISE = 1;
const MODE_SYNC = 2;

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
  #lastSq: IoQueue | undefined;

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
    let n = 0;
    for (let o = cq.peek(); o >= 0; o = cq.peek()) {
      const dw2 = e[o + 2]!;
      const dw3 = e[o + 3]!;
      const dw0 = e[o]!;
      cq.pop();
      n++;
      const sqid = dw2 >>> 16;
      let q = this.#lastSq;
      // One Map lookup per change of SQ, not per completion (usually one SQ per CQ).
      if (q === undefined || q.qid !== sqid || q.closed) q = this.#lastSq = this.sqs.get(sqid);
      q?.complete(dw3 & 0xffff, dw3 >>> 17, dw0, dw2 & 0xffff);
    }
    if (n > 0) cq.ring();
    return n;
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

  readonly #ctx: IoQueueContext;
  readonly #state: Uint8Array;
  readonly #mode: Uint8Array;
  readonly #free: Uint16Array;
  #freeTop: number;
  readonly #deadline: Float64Array;
  readonly #status: Int32Array;
  readonly #dw0: Uint32Array;
  // For error messages only: what each CID was doing.
  readonly #opcode: Uint8Array;
  readonly #slba: Float64Array;
  readonly #nlb: Uint32Array;
  readonly #resolve: (((dw0: number) => void) | undefined)[];
  readonly #reject: (((e: Error) => void) | undefined)[];
  /** Data-pointer list pages, `listPages` per CID. */
  readonly #lists: DmaBuffer;
  readonly listPages: number;
  /** Async requests waiting for a free CID, in order; they time out like posted commands. */
  readonly #waiting: Waiter[] = [];
  #inflight = 0;
  /** Of #inflight, those whose caller was already failed (timed out, controller fatal). */
  #expired = 0;
  /** Set when the controller failed: nothing more is posted on this queue. */
  #fatal: Error | undefined;
  /** Why the last synchronous command failed without a status (status -2). */
  #syncError: Error | undefined;
  #ringPending = false;
  /**
   * performance.now() of the first command posted since the last submit(): every command of a
   * batch gets its deadline from it (one clock read per batch, not per command; never later).
   */
  #batchStart = -1;
  #polling = false;
  #closed = false;

  constructor(
    ctx: IoQueueContext,
    readonly qid: number,
    entries: number,
    ioCq: IoCompletionQueue,
    opts: IoQueueOptions = {},
  ) {
    this.#ctx = ctx;
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
    const pages = Math.ceil(this.maxTransfer / PRP_PAGE_SIZE) + 1;
    this.listPages = Math.max(1, prpListPages(PRP_PAGE_SIZE - 4, this.maxTransfer), Math.ceil(pages / 255));
    this.sq = new SubmissionQueue(ctx.backend, qid, entries, sqTailDoorbell(qid, ctx.dstrd), ctx.backend.bar0);
    try {
      this.#lists = new DmaBuffer(ctx.backend, depth * this.listPages * PRP_PAGE_SIZE);
    } catch (e) {
      this.sq.mem.free();
      throw e;
    }
    this.#state = new Uint8Array(depth);
    this.#mode = new Uint8Array(depth);
    this.#free = new Uint16Array(depth);
    for (let i = 0; i < depth; i++) this.#free[i] = depth - 1 - i; // pop gives 0, 1, 2, ...
    this.#freeTop = depth;
    this.#deadline = new Float64Array(depth);
    this.#status = new Int32Array(depth);
    this.#dw0 = new Uint32Array(depth);
    this.#opcode = new Uint8Array(depth);
    this.#slba = new Float64Array(depth);
    this.#nlb = new Uint32Array(depth);
    this.#resolve = new Array(depth).fill(undefined);
    this.#reject = new Array(depth).fill(undefined);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Commands posted and not yet completed (expired ones included). */
  get outstanding(): number {
    return this.#inflight;
  }

  // ---- low-level API ------------------------------------------------------------------------

  /** A free CID, reserved for the caller; -1 when `depth` commands are outstanding. */
  acquire(): number {
    if (this.#freeTop === 0 || this.ioCq.credits === 0 || this.#fatal) return -1;
    const cid = this.#free[--this.#freeTop]!;
    this.#state[cid] = ACQUIRED;
    this.ioCq.credits--;
    return cid;
  }

  /** Give back a CID acquired but never posted. */
  release(cid: number): void {
    this.#checkAcquired(cid);
    this.#freeCid(cid);
  }

  #freeCid(cid: number): void {
    this.#state[cid] = FREE;
    this.#free[this.#freeTop++] = cid;
    this.ioCq.credits++;
  }

  #checkAcquired(cid: number): void {
    if (this.#closed) throw new ClosedError(`I/O queue ${this.qid} is closed`);
    const valid = Number.isInteger(cid) && cid >= 0 && cid < this.depth;
    if (!valid || this.#state[cid] !== ACQUIRED) {
      const what = valid ? ["free", "acquired", "already in flight", "expired and still outstanding"][this.#state[cid]!] : "not a CID of this queue";
      throw new InvalidArgumentError(`CID ${cid} on queue ${this.qid} is ${what}: post only CIDs returned by acquire() (0 to ${this.depth - 1})`);
    }
  }

  /** Dword offset of the SQ slot the next posted command goes into. */
  get slot(): number {
    return this.sq.tail * SQE_DWORDS;
  }

  /**
   * Post the command already written at `slot` under `cid` (CDW0 31:16 must hold `cid`).
   * It reaches the controller at the next submit().
   */
  post(cid: number, mode = MODE_HANDLER): void {
    this.#checkAcquired(cid);
    if (this.sq.sqe[this.slot]! >>> 16 !== cid) {
      throw new InvalidArgumentError(`the SQ slot holds CID ${this.sq.sqe[this.slot]! >>> 16}, not the acquired CID ${cid}`);
    }
    this.#post(cid, mode, this.sq.sqe[this.slot]! & 0xff);
  }

  /** Post the checked command at `slot`. */
  #post(cid: number, mode: number, opcode: number): void {
    if (this.#batchStart < 0) this.#batchStart = performance.now();
    this.#state[cid] = INFLIGHT;
    this.#mode[cid] = mode;
    this.#status[cid] = -1;
    this.#deadline[cid] = this.#batchStart + this.timeoutMs;
    this.#opcode[cid] = opcode;
    this.#inflight++;
    this.sq.advance();
  }

  /**
   * Write a data command (Read, Write, Compare: opcode, NSID, SLBA, blocks) into the SQ slot
   * for `cid`, with PRPs or an SGL for `bytes` bytes of `buf` at `offset`, and post it.
   * The caller has checked the range (Namespace.checkRange); this checks the buffer.
   */
  rw(cid: number, opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): void {
    this.#checkAcquired(cid);
    if (!Number.isInteger(blocks) || blocks < 1 || blocks > 65536) {
      throw new InvalidArgumentError(`block count ${blocks}: NLB is 16 bits, one command moves 1 to 65536 blocks`);
    }
    if (!Number.isSafeInteger(slba) || slba < 0) throw new InvalidArgumentError(`SLBA ${slba} is not a non-negative integer`);
    this.#checkBuffer(buf, offset, bytes);
    const o = this.slot;
    const sqe = this.sq.sqe;
    writeSqe(sqe, o, opcode, cid, nsid, 0, 0, slba % TWO32, Math.floor(slba / TWO32), ((blocks - 1) & 0xffff) | cdw12Flags);
    this.#dataPointer(cid, o, buf, offset, bytes);
    // Checked above and written here: post without re-reading the slot.
    this.#post(cid, MODE_HANDLER, opcode & 0xff);
    this.#slba[cid] = slba;
    this.#nlb[cid] = blocks;
  }

  #checkBuffer(buf: DmaBuffer, offset: number, bytes: number): void {
    if (buf.freed) throw new ClosedError("the data buffer was freed; allocate a new one");
    if (!buf.belongsTo(this.#ctx.backend)) {
      throw new InvalidArgumentError("the data buffer belongs to another controller: allocate it with this controller's allocBuffer()");
    }
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0) {
      throw new InvalidArgumentError(`buffer offset ${offset} must be a non-negative multiple of 4 (dword alignment)`);
    }
    if (offset + bytes > buf.size) {
      throw new InvalidArgumentError(`buffer too small: ${bytes} bytes at offset ${offset}, the buffer holds ${buf.size}`);
    }
    if (bytes > this.maxTransfer) {
      throw new InvalidArgumentError(`${bytes} bytes exceed the largest transfer of one command (${this.maxTransfer} bytes, MDTS): split it`);
    }
  }

  #dataPointer(cid: number, o: number, buf: DmaBuffer, offset: number, bytes: number): void {
    const listOffset = cid * this.listPages * PRP_PAGE_SIZE;
    if (this.useSgl) {
      if (sglListPages(buf, offset, bytes) > this.listPages) {
        throw new InvalidArgumentError(`this transfer needs more SGL segment pages than a command has (${this.listPages})`);
      }
      buildSgl(this.sq.sqe, o, buf, offset, bytes, this.#lists, listOffset);
    } else {
      writePrp(this.sq.sqe, o, buf, offset, bytes, this.#lists, listOffset);
    }
  }

  /** The CID's own list page, for commands whose data is a small structure (Dataset Management ranges). */
  listBuffer(cid: number): DmaBuffer {
    return this.#lists.region(cid * this.listPages * PRP_PAGE_SIZE, PRP_PAGE_SIZE);
  }

  /** Ring the SQ tail doorbell once for everything posted since the last submit. */
  submit(): void {
    this.#ringPending = false;
    this.#batchStart = -1;
    this.sq.ring();
  }

  /** Reap completions (of this queue and of others sharing its CQ); returns how many. */
  poll(): number {
    if (this.#closed) return 0;
    const n = this.ioCq.poll();
    // Another SQ on a shared CQ may have reaped our completions: drain whenever there is room.
    if (this.#waiting.length > 0) this.#drain();
    return n;
  }

  /** @internal Called by the CQ for each completion of this SQ. */
  complete(cid: number, status: number, dw0: number, sqhd: number): void {
    this.sq.head = sqhd;
    if (cid >= this.depth) return; // not ours: a controller bug, or a stale entry after reset
    const state = this.#state[cid];
    if (state !== INFLIGHT && state !== EXPIRED) return;
    this.#freeCid(cid);
    this.#inflight--;
    if (state === EXPIRED) {
      this.#expired--;
      return; // its caller was already told it timed out
    }
    switch (this.#mode[cid]) {
      case MODE_SYNC:
        this.#status[cid] = status;
        this.#dw0[cid] = dw0;
        break;
      case MODE_PROMISE: {
        const resolve = this.#resolve[cid]!;
        const reject = this.#reject[cid]!;
        this.#resolve[cid] = undefined;
        this.#reject[cid] = undefined;
        if (status === 0) resolve(dw0);
        else reject(this.#statusError(cid, status));
        break;
      }
      default:
        this.onComplete?.(cid, status, dw0);
    }
  }

  #statusError(cid: number, status: number): NvmeStatusError {
    const opcode = this.#opcode[cid]!;
    const nlb = this.#nlb[cid]!;
    return new NvmeStatusError(status, {
      command: commandName(opcode, false),
      opcode,
      cid,
      sqid: this.qid,
      detail: nlb > 0 ? `@ LBA ${this.#slba[cid]}, ${nlb} blocks` : undefined,
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
      if (this.#state[cid] !== INFLIGHT || this.#mode[cid] === MODE_SYNC || this.#deadline[cid]! > now) continue;
      this.#state[cid] = EXPIRED;
      this.#expired++;
      n++;
      const err = new NvmeTimeoutError(
        `${commandName(this.#opcode[cid]!, false)} (cid ${cid}) on queue ${this.qid} did not complete within ${this.timeoutMs} ms`,
        this.timeoutMs,
      );
      if (this.#mode[cid] === MODE_PROMISE) {
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
    return this.#state[cid] === EXPIRED;
  }

  #checkController(): void {
    const csts = native().nvm_read32(this.#ctx.backend.bar0, REG_CSTS);
    if (csts !== REG_ALL_ONES && (csts & CSTS_CFS) === 0) return;
    const err = new ControllerFatalError(
      csts === REG_ALL_ONES
        ? `${this.#ctx.backend.name}: controller registers read all ones: the device is gone`
        : `${this.#ctx.backend.name}: Controller Fatal Status (CSTS.CFS) set with ${this.#inflight} commands outstanding`,
      csts,
    );
    // With an owner that can reset the controller, outstanding commands fail and the queue goes on;
    // alone, the queue refuses further commands.
    if (this.#ctx.onFatal) this.#ctx.onFatal(err);
    else this.#failAll(err);
  }

  /** Fail every outstanding async command and waiter; their CIDs stay reserved (the controller is broken). */
  #failAll(err: Error): void {
    this.#fatal = err;
    this.#failOutstanding(err);
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  #failOutstanding(err: Error): void {
    this.#syncError = err;
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.#state[cid] !== INFLIGHT) continue;
      this.#state[cid] = EXPIRED;
      this.#expired++;
      if (this.#mode[cid] === MODE_PROMISE) {
        const reject = this.#reject[cid]!;
        this.#resolve[cid] = undefined;
        this.#reject[cid] = undefined;
        reject(err);
      } else if (this.#mode[cid] === MODE_SYNC) this.#status[cid] = -2;
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
      this.#state[i] = FREE;
      this.#free[i] = this.depth - 1 - i;
    }
    this.#freeTop = this.depth;
    this.#inflight = 0;
    this.#expired = 0;
    this.#fatal = undefined;
    this.#ringPending = false;
    this.#batchStart = -1;
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
    if (this.#closed) throw new ClosedError(`I/O queue ${this.qid} is closed`);
    if (this.#fatal) throw this.#fatal;
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
      if (this.#state[cid] === ACQUIRED) this.release(cid);
      throw e;
    }
    this.#mode[cid] = MODE_SYNC;
    this.submit();
    for (let spins = 0; this.#status[cid] === -1; spins++) {
      this.poll();
      if ((spins & 255) === 255) {
        if (performance.now() > deadline) {
          this.#state[cid] = EXPIRED;
          this.#expired++;
          const err = new NvmeTimeoutError(
            `${commandName(this.#opcode[cid]!, false)} (cid ${cid}) on queue ${this.qid} did not complete within ${this.timeoutMs} ms`,
            this.timeoutMs,
          );
          this.#ctx.onExpired?.(this, cid);
          throw err;
        }
        if ((spins & 16383) === 16383) this.#checkController();
      }
    }
    const status = this.#status[cid]!;
    if (status === -2) throw this.#syncError!;
    if (status !== 0) throw this.#statusError(cid, status);
    return this.#dw0[cid]!;
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
      this.#nlb[cid] = 0;
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
      this.#nlb[cid] = 0;
    });
  }

  #async(fill: (cid: number) => void): Promise<number> {
    if (this.#closed) return Promise.reject(new ClosedError(`I/O queue ${this.qid} is closed`));
    if (this.#fatal) return Promise.reject(this.#fatal);
    return new Promise<number>((resolve, reject) => {
      const since = performance.now();
      const start = () => {
        if (this.#closed) return reject(new ClosedError(`I/O queue ${this.qid} was closed before this command was sent`));
        if (this.#fatal) return reject(this.#fatal);
        const cid = this.acquire();
        if (cid < 0) return void this.#waiting.unshift({ start, reject, since }); // lost a race with a sync caller: stay first
        try {
          fill(cid);
        } catch (e) {
          if (this.#state[cid] === ACQUIRED) this.release(cid);
          return reject(e as Error);
        }
        this.#mode[cid] = MODE_PROMISE;
        this.#resolve[cid] = resolve;
        this.#reject[cid] = reject;
        this.#scheduleRing();
        this.#startPolling();
      };
      if (this.#freeTop === 0 || this.ioCq.credits === 0 || this.#waiting.length > 0) {
        this.#waiting.push({ start, reject, since });
        this.#startPolling();
      } else start();
    });
  }

  #drain(): void {
    while (this.#freeTop > 0 && this.ioCq.credits > 0 && this.#waiting.length > 0) this.#waiting.shift()!.start();
  }

  #scheduleRing(): void {
    if (this.#ringPending) return;
    this.#ringPending = true;
    // One doorbell for everything posted in this turn of the event loop.
    queueMicrotask(() => {
      if (this.#ringPending && !this.#closed) this.submit();
    });
  }

  #startPolling(): void {
    if (this.#polling) return;
    this.#polling = true;
    let turns = 0;
    const loop = () => {
      if (this.#closed) {
        this.#polling = false;
        return;
      }
      // Spin briefly before yielding: a completion is usually microseconds away.
      for (let i = 0; i < 64 && this.poll() === 0 && this.#inflight > this.#expired; i++);
      if (this.#ringPending) this.submit();
      if ((++turns & 63) === 0) {
        this.checkTimeouts();
        this.#checkController();
      }
      // Commands already failed (expired) do not keep the poller spinning: a later poll reaps them.
      if (this.#inflight > this.#expired || this.#waiting.length > 0) setImmediate(loop);
      else this.#polling = false;
    };
    setImmediate(loop);
  }

  /** The controller deleted the queue (or never created it): fail what is left, free the memory. */
  free(): void {
    if (this.#closed) return;
    this.#failAll(new ClosedError(`I/O queue ${this.qid} was deleted with commands outstanding`));
    this.#closed = true;
    // A shared CQ outlives this SQ: hand back the completion slots its CIDs still held.
    for (let cid = 0; cid < this.depth; cid++) if (this.#state[cid] !== FREE) this.ioCq.credits++;
    this.ioCq.sqs.delete(this.qid);
    this.sq.mem.free();
    this.#lists.free();
  }
}

export { MODE_HANDLER, MODE_PROMISE, MODE_SYNC, CQE_DWORDS };
