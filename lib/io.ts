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
 *
 * A command settles (its promise, its sync caller, its handler) only once the controller can no
 * longer reach its memory: at its completion, at the completion the Abort the owner sent for it
 * provokes, or when the owner disabled the controller or deleted the queue. A deadline that passes
 * starts that recovery (Abort, then a reset after the grace period); it does not settle anything.
 * Until a command settles its CID, its list pages and its data buffer stay reserved (DmaBuffer.free()
 * defers the release, see dma.ts).
 */
import { ClosedError, ControllerFatalError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError } from "./errors.ts";
import { native } from "./native.ts";
import type { Backend } from "./backends/types.ts";
import { addDmaUser, DmaBuffer, deferredFrees, releaseDeferred, removeDmaUser, type DmaUser } from "./dma.ts";
import { prpListPages, writePrp, writePrpPair } from "./prp.ts";
import { buildSgl, sglListPages, sglSupport } from "./sgl.ts";
import { CompletionQueue, SubmissionQueue } from "./queue.ts";
import { commandName, hi32, lo32 } from "./spec/commands.ts";
import { CSTS_CFS, CSTS_RDY, REG_ALL_ONES, REG_CSTS, cqHeadDoorbell, sqTailDoorbell } from "./spec/registers.ts";
import { encodeStatus, SC_ABORT_REQUESTED, SC_ABORTED_BY_HOST, SC_SQ_DELETION, SCT_GENERIC, SCT_PATH } from "./spec/status.ts";

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
  /**
   * Its deadline passed and recovery started (Abort, then a reset): the caller is not settled yet,
   * and the CID stays reserved until the controller completes the command or is disabled.
   */
  EXPIRED = 3,
  /** Every CID of a deleted queue: nothing can be posted. */
  CLOSED = 4,
}

/**
 * What IoQueue keeps of each posted command besides its state, in one Float64Array of STRIDE
 * numbers per CID: one array the hot path stores into instead of four (each typed array a store
 * reaches costs the JIT its own storage, length and bounds check: ~2 ns a command apiece on the
 * machine of bench/README.md).
 */
const enum Info {
  /** performance.now() past which recovery starts. */
  DEADLINE = 0,
  /** For error messages: SLBA and NLB of a Read/Write/Compare (NLB 0: not a block command), opcode. */
  SLBA = 1,
  NLB = 2,
  OPCODE = 3,
  STRIDE = 4,
}

/** How a posted command reports its completion. */
const enum Mode {
  HANDLER = 0,
  PROMISE = 1,
  SYNC = 2,
}
import type { CompletionHandler, NvmeIoQueue, PollingOptions, QueueOptions, SqeWriter } from "./transports/types.ts";
export type { CompletionHandler, PollingOptions } from "./transports/types.ts";

/**
 * Status a handler gets for a command the host ended itself because the controller was disabled
 * (reset): Path Related Status 71h, Command Aborted By Host (NVMe Base 2.0, 4.6.1.2.4).
 */
export const STATUS_ABORTED_BY_HOST = encodeStatus({ sct: SCT_PATH, sc: SC_ABORTED_BY_HOST });
/** Status a handler gets for commands still outstanding when their queue was deleted (Generic 08h). */
export const STATUS_SQ_DELETION = encodeStatus({ sct: SCT_GENERIC, sc: SC_SQ_DELETION });
/** Command Abort Requested (Generic 07h): what an aborted command completes with. */
const STATUS_ABORT_REQUESTED = encodeStatus({ sct: SCT_GENERIC, sc: SC_ABORT_REQUESTED });

/** PCIe's I/O queue options: the transport-neutral ones, and a completion queue to share. */
export interface IoQueueOptions extends QueueOptions {
  /** Share this completion queue instead of creating one. */
  readonly cq?: IoCompletionQueue;
}

/** The poller's settings, checked (PollingOptions with its defaults filled in). */
function pollingSettings(p: PollingOptions | undefined): { spin: boolean; spinMs: number; sleepMs: number } {
  const mode = p?.mode ?? "adaptive";
  if (mode !== "adaptive" && mode !== "spin") throw new InvalidArgumentError(`polling mode ${String(mode)}: "adaptive" or "spin"`);
  const spinUs = p?.spinUs ?? 500;
  const sleepMs = p?.sleepMs ?? 1;
  if (!(spinUs >= 0 && spinUs <= 10_000_000)) throw new InvalidArgumentError(`polling spinUs ${spinUs}: 0 to 10 000 000 microseconds`);
  if (!(sleepMs >= 1 && sleepMs <= 1000)) throw new InvalidArgumentError(`polling sleepMs ${sleepMs}: 1 to 1000 milliseconds`);
  return { spin: mode === "spin", spinMs: spinUs / 1000, sleepMs };
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
  // Most SLBAs are under 2^32: no division for the upper half.
  sqe[o + 11] = slba > 0xffff_ffff ? hi32(slba) : 0;
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
  private readonly backend: Backend;

  constructor(
    backend: Backend,
    readonly qid: number,
    readonly entries: number,
    dstrd: number,
    /** Created together with an SQ (createIoQueue without `cq`): deleted with it. */
    readonly implicit = false,
  ) {
    this.backend = backend;
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
      if (q !== undefined) {
        q.sq.head = dw2 & 0xffff;
        q.complete(dw3 & 0xffff, dw3 >>> 17, dw0);
      }
      // The handler may have polled (head, phase) or deleted its queue (lastSq): reload.
      head = cq.head;
      phase = cq.phase;
      q = this.lastSq;
    }
    if (n > 0) {
      cq.ring();
      // Memory the application freed while these commands were in flight can go back now.
      if (deferredFrees.count !== 0) releaseDeferred(this.backend);
    }
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
  /**
   * Bytes of data per logical block of namespace `nsid` (no metadata), so that a command's block
   * count and byte count can be checked against each other. Throws a typed error for a namespace
   * commands cannot be sent to (inactive, or formatted with metadata or protection information).
   */
  readonly lbaSize: (nsid: number) => number;
  /** After a command's deadline, how long its Abort may take to end it before onStuck. Defaults to 1000 ms. */
  readonly abortGraceMs?: number;
  // Recovery is the owner's: a queue cannot stop the controller's DMA by itself, so it settles a
  // command past its deadline only when the owner's Abort or reset ends it. Every wait of the
  // queue is bounded by the owner acting on these.
  /** A command's deadline passed (its caller still waits): the owner sends Abort for it. */
  readonly onExpired: (q: IoQueue, cid: number) => void;
  /**
   * A command still outstanding `abortGraceMs` after its deadline: the owner resets the controller,
   * which settles it (resetAfterDisable()), or fails the queue (settleAndRefuse()).
   */
  readonly onStuck: (q: IoQueue, cid: number) => void;
  /** CSTS.CFS or a vanished device seen while polling: the owner resets the controller (or fails the queue). */
  readonly onFatal: (q: IoQueue, err: ControllerFatalError) => void;
  /**
   * CSTS.RDY found 0 while polling: the controller was disabled under the owner (the disnvm module
   * does that when the exporter of an imported dma-buf revokes it), so nothing outstanding will
   * complete. The owner finds out why and resets it. Optional: a queue without it keeps waiting
   * for its deadlines.
   */
  readonly onDisabled?: (q: IoQueue) => void;
  /** Set for a queue lent to another thread (worker.ts): the owner's resets reach it through this. */
  readonly lease?: LeaseGate;
  /** The owner's default for the async poller (IoQueueOptions.polling overrides it). */
  readonly polling?: PollingOptions;
}

/** The borrowing side of a queue lent by the thread that owns the controller (worker.ts). */
export interface LeaseGate {
  /** False while the owner is resetting the controller: doorbells wait until it re-created the queue. */
  readonly open: boolean;
  /** Called when a poll finds nothing: carries out a reset the owner signalled (settle, empty rings). */
  check(q: IoQueue): void;
}

interface Waiter {
  readonly start: () => void;
  readonly reject: (e: Error) => void;
  readonly since: number;
}

export class IoQueue implements DmaUser, NvmeIoQueue {
  readonly transport = "pcie" as const;
  readonly sq: SubmissionQueue;
  readonly ioCq: IoCompletionQueue;
  /** Commands that may be outstanding at once: one less than the smaller ring. */
  readonly depth: number;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  readonly useSgl: boolean;
  /**
   * Called for completions of commands posted through the low-level API, late ones included (a
   * command past its deadline that completed, or was aborted: SC 07h). A command ended by a reset
   * gets STATUS_ABORTED_BY_HOST, one ended by deleting its queue STATUS_SQ_DELETION. Until then its
   * buffer may still be read or written by the controller.
   */
  onComplete: CompletionHandler | null = null;
  /**
   * Called when a low-level command's deadline passes (checkTimeouts()): recovery (Abort, then a
   * reset) has started; its onComplete call follows once the controller can no longer reach it.
   */
  onTimeout: ((cid: number) => void) | null = null;

  // State the hot path touches is in TS-private fields (one bytecode per access, so rw() and
  // complete() stay small enough to inline); the rest is #private.
  readonly #ctx: IoQueueContext;
  private readonly backend: Backend;
  private readonly cidState: Uint8Array;
  private readonly cidMode: Uint8Array;
  private readonly freeCids: Uint16Array;
  private freeTop: number;
  private readonly cidStatus: Int32Array;
  private readonly cidDw0: Uint32Array;
  /** Deadline, SLBA, NLB and opcode of each CID (Info). */
  private readonly cidInfo: Float64Array;
  /** The data buffer each posted command reads or writes (undefined: none), for DmaBuffer.free(). */
  private readonly cidBuf: (DmaBuffer | undefined)[];
  /** NSID whose LBA data size is cached for rw()'s block-count check, and that size. */
  private fmtNsid = -1;
  private fmtLba = 0;
  readonly #graceMs: number;
  /** The settling functions of each CID's promise (Mode.PROMISE). */
  private readonly cidResolve: (((dw0: number) => void) | undefined)[];
  private readonly cidReject: (((e: Error) => void) | undefined)[];
  /** Data-pointer list pages, `listPages` per CID. */
  private readonly lists: DmaBuffer;
  readonly listPages: number;
  private readonly listBytes: number;
  /** Async requests waiting for a free CID, in order; they time out like posted commands. */
  readonly #waiting: Waiter[] = [];
  private inflight = 0;
  /** Of inflight, those whose deadline passed (recovery under way). */
  private expiredCount = 0;
  /** Set when the controller failed: nothing more is posted on this queue. */
  private fatal: Error | undefined;
  /** Why a synchronous command failed without a status (status -2), by CID. */
  readonly #cidError: (Error | undefined)[];
  #ringPending = false;
  /**
   * performance.now() of the first command posted since the last submit(): every command of a
   * batch gets its deadline from it (one clock read per batch, not per command; never later).
   */
  private batchStart = -1;
  #polling = false;
  readonly #poll: { spin: boolean; spinMs: number; sleepMs: number };
  /** performance.now() of the last completion reaped or command submitted by the async API. */
  #lastActive = 0;
  /** A command was posted since the poller's last turn (its spin window starts again). */
  #fresh = false;
  /** The shared Promise executor leaves the new promise's resolving functions here. */
  #captured: ((dw0: number) => void) | undefined;
  #capturedReject: ((e: Error) => void) | undefined;
  readonly #capture = (resolve: (dw0: number) => void, reject: (e: Error) => void): void => {
    this.#captured = resolve;
    this.#capturedReject = reject;
  };
  /** The poller's sleep timer, while it sleeps; a new command wakes it at once. */
  #sleep: ReturnType<typeof setTimeout> | undefined;
  #turns = 0;
  private isClosed = false;
  /** Why the queue was freed, when its owner said (free(reason)): what later submissions get. */
  #closedBy: Error | undefined;
  /** The owner's lease when another thread lent us this queue; null for the owner's own queues. */
  private readonly lease: LeaseGate | null;
  /** A doorbell write held back while the lease was closed (the owner resetting). */
  #ringDeferred = false;

  constructor(
    ctx: IoQueueContext,
    readonly qid: number,
    entries: number,
    ioCq: IoCompletionQueue,
    opts: IoQueueOptions = {},
  ) {
    this.#ctx = ctx;
    this.backend = ctx.backend;
    this.lease = ctx.lease ?? null;
    this.#graceMs = ctx.abortGraceMs ?? 1000;
    this.#poll = pollingSettings(opts.polling ?? ctx.polling);
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
    this.cidStatus = new Int32Array(depth);
    this.cidDw0 = new Uint32Array(depth);
    this.cidInfo = new Float64Array(depth * Info.STRIDE);
    this.cidBuf = new Array<DmaBuffer | undefined>(depth).fill(undefined);
    this.cidResolve = new Array(depth).fill(undefined);
    this.cidReject = new Array(depth).fill(undefined);
    this.#cidError = new Array(depth).fill(undefined);
    addDmaUser(ctx.backend, this);
  }

  /** DmaUser: a posted command not yet settled reads or writes the memory `key` names. */
  mayAccess(key: object): boolean {
    for (let cid = 0; cid < this.depth; cid++) {
      const st = this.cidState[cid];
      if ((st === State.INFLIGHT || st === State.EXPIRED) && this.cidBuf[cid]?.memoryKey === key) return true;
    }
    return false;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * @internal The controller formatted a namespace: look its LBA size up again on the next command
   * instead of trusting the one-entry cache of rw()'s block-count check.
   */
  forgetLbaSize(): void {
    this.fmtNsid = -1;
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
    if (this.isClosed) throw this.#closedBy ?? new ClosedError(`I/O queue ${this.qid} is closed`);
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
    // Small enough for the JIT to inline (test/unit/inlining.test.ts): the refusal is a call.
    const dw0 = this.sq.sqe[this.sq.tail * K.SQE_DWORDS]!;
    if (this.cidState[cid] !== State.ACQUIRED || dw0 >>> 16 !== cid) this.refusePost(cid, dw0);
    this.postChecked(cid, mode ?? Mode.HANDLER);
    this.recordCommand(cid, dw0 & 0xff);
  }

  /** Why post() cannot post `cid`: its state, or a slot written for another CID. Always throws. */
  private refusePost(cid: number, dw0: number): never {
    this.checkAcquired(cid);
    throw new InvalidArgumentError(`the SQ slot holds CID ${dw0 >>> 16}, not the acquired CID ${cid}`);
  }

  /** The opcode of a command post() sent, for its error messages; no LBA range (NLB 0): rw() did not describe it. */
  private recordCommand(cid: number, opcode: number): void {
    const r = cid * Info.STRIDE;
    this.cidInfo[r + Info.OPCODE] = opcode;
    this.cidInfo[r + Info.NLB] = 0;
  }

  /** Post the checked command at `slot`; the caller records its opcode (Info). */
  private postChecked(cid: number, mode: number): void {
    if (this.batchStart < 0) this.batchStart = performance.now();
    this.cidState[cid] = State.INFLIGHT;
    this.cidMode[cid] = mode;
    // Info.DEADLINE is 0: no add (the inlining budget counts every bytecode).
    this.cidInfo[cid * Info.STRIDE] = this.batchStart + this.timeoutMs;
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
    this.rwCheck(cid, nsid, blocks, slba, buf, offset, bytes);
    this.rwSqe(opcode, cid, nsid, slba, blocks, cdw12Flags);
    this.rwDataAndPost(cid, opcode, slba, blocks, buf, offset, bytes);
  }

  /**
   * Every check of rw() in one branch (CID state, NLB, SLBA, bytes = blocks x the namespace's LBA
   * size, buffer span, owner); checkRw() says what failed, and looks up another namespace's LBA size.
   */
  private rwCheck(cid: number, nsid: number, blocks: number, slba: number, buf: DmaBuffer, offset: number, bytes: number): void {
    if (!(this.cidState[cid] === State.ACQUIRED && rwFieldsOk(blocks, slba) && nsid === this.fmtNsid && bytes === blocks * this.fmtLba && this.spanOk(buf, offset, bytes))) {
      this.checkRw(cid, nsid, blocks, slba, buf, offset, bytes);
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
    this.postChecked(cid, Mode.HANDLER);
    const r = cid * Info.STRIDE;
    this.cidInfo[r + Info.OPCODE] = opcode & 0xff;
    this.cidInfo[r + Info.SLBA] = slba;
    this.cidInfo[r + Info.NLB] = blocks;
    this.cidBuf[cid] = buf;
  }

  /** Offset and length fit `buf`, dword aligned, within MDTS, and the buffer is this controller's. */
  private spanOk(buf: DmaBuffer, offset: number, bytes: number): boolean {
    // `bytes` is already blocks (1 to 65536) x the LBA size (rwCheck): a positive integer.
    return (
      (offset | 0) === offset &&
      (offset & 0x8000_0003) === 0 &&
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
  private checkRw(cid: number, nsid: number, blocks: number, slba: number, buf: DmaBuffer, offset: number, bytes: number): void {
    this.checkAcquired(cid);
    if (!Number.isInteger(blocks) || blocks < 1 || blocks > 65536) {
      throw new InvalidArgumentError(`block count ${blocks}: NLB is 16 bits, one command moves 1 to 65536 blocks`);
    }
    if (!Number.isSafeInteger(slba) || slba < 0) throw new InvalidArgumentError(`SLBA ${slba} is not a non-negative integer`);
    this.#checkBuffer(buf, offset, bytes);
    this.#checkBlockBytes(nsid, blocks, bytes);
  }

  /**
   * The controller moves blocks x LBA size bytes whatever the data pointer says: a byte count that
   * disagrees would make it read a data page as a PRP list, or transfer past the buffer.
   */
  #checkBlockBytes(nsid: number, blocks: number, bytes: number): void {
    if (nsid !== this.fmtNsid) {
      if (!Number.isInteger(nsid) || nsid < 1 || nsid > 0xfffffffe) throw new InvalidArgumentError(`NSID ${nsid} is not a namespace ID (1 to 0xfffffffe)`);
      const lba = this.#ctx.lbaSize(nsid);
      this.fmtNsid = nsid;
      this.fmtLba = lba;
    }
    if (bytes !== blocks * this.fmtLba) {
      throw new InvalidArgumentError(
        `${blocks} blocks of namespace ${nsid} are ${blocks * this.fmtLba} bytes (${this.fmtLba}-byte LBAs), but ${bytes} bytes were given: pass blocks x LBA size`,
      );
    }
  }

  #checkBuffer(buf: DmaBuffer, offset: number, bytes: number): void {
    if (buf.freed) throw new ClosedError("the data buffer was freed; allocate a new one");
    const revoked = buf.revokedError;
    if (revoked) throw revoked;
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

  /**
   * The caller read performance.now() at `now`, before posting: the commands it posts until the
   * next submit() take their deadlines from `now` instead of from a clock read of the queue's own
   * (a clock read per batch fewer: ~20 ns on hardware with a TSC, microseconds in a guest whose
   * clock is an emulated HPET). Ignored once a command of the batch was posted (its deadline
   * base stays); a `now` later than the posts would stretch the deadlines, so pass a reading
   * taken before them.
   */
  batchTime(now: number): void {
    if (this.batchStart < 0 && now >= 0) this.batchStart = now;
  }

  /** Ring the SQ tail doorbell once for everything posted since the last submit. */
  submit(): void {
    this.#ringPending = false;
    this.batchStart = -1;
    // A lent queue whose owner is resetting the controller: the doorbell waits for the queue to
    // exist again (LeaseGate.check() then settles or resumes what was posted).
    if (this.lease !== null && !this.lease.open) {
      this.#ringDeferred = true;
      return;
    }
    this.sq.ring();
  }

  /** Reap completions (of this queue and of others sharing its CQ); returns how many. */
  poll(): number {
    if (this.isClosed) return 0;
    const n = this.ioCq.poll();
    // Only an idle lent queue can have missed a reset: the owner disables the controller first.
    if (n === 0 && this.lease !== null) this.lease.check(this);
    // Another SQ on a shared CQ may have reaped our completions: drain whenever there is room.
    if (this.#waiting.length > 0) this.#drain();
    return n;
  }

  /**
   * @internal Called by the CQ for each completion of this SQ. Kept small so the JIT inlines it
   * into the CQ's poll loop (test/unit/inlining.test.ts): only the low-level handler's case and a
   * promise's success are here.
   */
  complete(cid: number, status: number, dw0: number): void {
    // Out of range reads undefined: not ours (a controller bug, or a stale entry after reset).
    if (this.cidState[cid] === State.INFLIGHT) {
      const mode = this.cidMode[cid];
      if (mode === Mode.HANDLER) {
        // A call the JIT inlines, and complete() stays under the inlining limit (bench/README.md).
        this.freeCid(cid);
        this.inflight--;
        const handler = this.onComplete;
        if (handler !== null) handler(cid, status, dw0);
        return;
      }
      if (mode === Mode.PROMISE && status === 0) return this.resolveCid(cid, dw0);
    }
    this.completeOther(cid, status, dw0);
  }

  /** A promise command that succeeded, on time: the async API's common case, inlined as well. */
  private resolveCid(cid: number, dw0: number): void {
    this.freeCid(cid);
    this.inflight--;
    const resolve = this.cidResolve[cid]!;
    this.cidResolve[cid] = undefined;
    this.cidReject[cid] = undefined;
    resolve(dw0);
  }

  /** Completions of promise and sync commands, and of expired or unknown CIDs. */
  private completeOther(cid: number, status: number, dw0: number): void {
    const state = this.cidState[cid];
    if (state !== State.INFLIGHT && state !== State.EXPIRED) return;
    const late = state === State.EXPIRED;
    this.freeCid(cid);
    this.inflight--;
    if (late) this.expiredCount--;
    const mode = this.cidMode[cid];
    if (mode === Mode.PROMISE) {
      const resolve = this.cidResolve[cid]!;
      const reject = this.cidReject[cid]!;
      this.cidResolve[cid] = undefined;
      this.cidReject[cid] = undefined;
      if (status === 0) resolve(dw0);
      else reject(late && status === STATUS_ABORT_REQUESTED ? this.#abortedError(cid, status) : this.#statusError(cid, status));
    } else if (mode === Mode.SYNC) {
      this.cidStatus[cid] = status;
      this.cidDw0[cid] = dw0;
    } else this.onComplete?.(cid, status, dw0);
  }

  #statusError(cid: number, status: number): NvmeStatusError {
    const r = cid * Info.STRIDE;
    const opcode = this.cidInfo[r + Info.OPCODE]!;
    const nlb = this.cidInfo[r + Info.NLB]!;
    return new NvmeStatusError(status, {
      command: commandName(opcode, false),
      opcode,
      cid,
      sqid: this.qid,
      detail: nlb > 0 ? `@ LBA ${this.cidInfo[r + Info.SLBA]}, ${nlb} blocks` : undefined,
    });
  }

  /** A command past its deadline that the controller ended with Command Abort Requested. */
  #abortedError(cid: number, status: number): NvmeTimeoutError {
    const err = new NvmeTimeoutError(
      `${commandName(this.cidInfo[cid * Info.STRIDE + Info.OPCODE]!, false)} (cid ${cid}) on queue ${this.qid} did not complete within ${this.timeoutMs} ms; it was aborted and its buffer is free again`,
      this.timeoutMs,
    );
    (err as { cause?: unknown }).cause = this.#statusError(cid, status);
    return err;
  }

  /**
   * Start recovery for `cid`, whose deadline passed at `now`: it stays outstanding (its caller
   * waits), the owner sends Abort, and `abortGraceMs` later checkTimeouts() asks for a reset.
   */
  #expire(cid: number, now: number): void {
    this.cidState[cid] = State.EXPIRED;
    this.expiredCount++;
    this.cidInfo[cid * Info.STRIDE + Info.DEADLINE] = now + this.#graceMs;
    if (this.cidMode[cid] === Mode.HANDLER) this.onTimeout?.(cid);
    this.#ctx.onExpired(this, cid);
  }

  /**
   * Start recovery for commands whose deadline passed, and ask the owner for a reset for those an
   * Abort did not end within the grace period; requests that waited longer than the timeout for a
   * free CID (never sent) fail with NvmeTimeoutError. Returns how many commands or requests it
   * acted on. Posted commands settle later: at their completion, or the reset.
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
      const st = this.cidState[cid];
      if (this.cidInfo[cid * Info.STRIDE + Info.DEADLINE]! > now || this.cidMode[cid] === Mode.SYNC) continue;
      if (st === State.INFLIGHT) {
        n++;
        this.#expire(cid, now);
      } else if (st === State.EXPIRED) {
        n++;
        this.cidInfo[cid * Info.STRIDE + Info.DEADLINE] = Infinity; // asked once; the reset settles it
        this.#ctx.onStuck(this, cid);
      }
    }
    return n;
  }

  /** True while `cid` is past its deadline and not yet settled (recovery under way). */
  isExpired(cid: number): boolean {
    return this.cidState[cid] === State.EXPIRED;
  }

  #checkController(): void {
    const csts = native().nvm_read32(this.#ctx.backend.bar0, REG_CSTS);
    if (csts !== REG_ALL_ONES && (csts & CSTS_CFS) === 0) {
      if ((csts & CSTS_RDY) === 0 && this.inflight > 0) this.#ctx.onDisabled?.(this);
      return;
    }
    const err = new ControllerFatalError(
      csts === REG_ALL_ONES
        ? `${this.#ctx.backend.name}: controller registers read all ones: the device is gone`
        : `${this.#ctx.backend.name}: Controller Fatal Status (CSTS.CFS) set with ${this.inflight} commands outstanding`,
      csts,
    );
    // The owner resets the controller, which settles the outstanding commands.
    this.#ctx.onFatal(this, err);
  }

  /** Refuse new commands and fail requests still waiting for a CID (never sent) with `err`. */
  #refuse(err: Error): void {
    this.fatal = err;
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  /**
   * Settle every posted command: the controller can no longer reach their memory (disabled,
   * its bus mastering cleared, or the queue deleted). Promises reject with `err`, sync callers
   * throw it, handlers get `handlerStatus`.
   */
  #settleAll(err: Error, handlerStatus: number): void {
    for (let cid = 0; cid < this.depth; cid++) {
      const st = this.cidState[cid];
      if (st === State.INFLIGHT || st === State.EXPIRED) this.#settle(cid, err, handlerStatus);
    }
    this.expiredCount = 0;
  }

  /** Settle posted command `cid` without a completion: promises reject, sync callers throw `err`. */
  #settle(cid: number, err: Error, handlerStatus: number): void {
    if (this.cidState[cid] === State.EXPIRED) this.expiredCount--;
    this.freeCid(cid);
    this.inflight--;
    const mode = this.cidMode[cid];
    if (mode === Mode.PROMISE) {
      const reject = this.cidReject[cid]!;
      this.cidResolve[cid] = undefined;
      this.cidReject[cid] = undefined;
      reject(err);
    } else if (mode === Mode.SYNC) {
      this.cidStatus[cid] = -2;
      this.#cidError[cid] = err;
    } else this.onComplete?.(cid, handlerStatus, 0);
  }

  /**
   * @internal The controller is stopped (disabled, bus mastering cleared): settle each posted
   * command whose data buffer was revoked by its exporter with the buffer's own error
   * (DmaBufRevokedError; handlers get Command Aborted By Host). Returns how many. The owner's
   * reset settles the rest.
   */
  settleRevoked(): number {
    let n = 0;
    for (let cid = 0; cid < this.depth; cid++) {
      const st = this.cidState[cid];
      if (st !== State.INFLIGHT && st !== State.EXPIRED) continue;
      const err = this.cidBuf[cid]?.revokedError;
      if (err === undefined) continue;
      this.#settle(cid, err, STATUS_ABORTED_BY_HOST);
      n++;
    }
    return n;
  }

  /**
   * @internal The controller was disabled (reset): every posted command fails with `err`, the
   * rings start over empty, every CID is free again. Requests still waiting for a CID are kept
   * and sent once the queue exists again (resume()).
   */
  resetAfterDisable(err: Error): void {
    this.#settleAll(err, STATUS_ABORTED_BY_HOST);
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
    this.#ringDeferred = false;
    this.batchStart = -1;
    if (deferredFrees.count !== 0) releaseDeferred(this.backend);
  }

  /**
   * @internal Settle everything with `err` and refuse new commands: the queue is gone for good
   * (the controller's DMA was stopped, or the device is gone, and the queue was not re-created).
   */
  settleAndRefuse(err: Error): void {
    this.#settleAll(err, STATUS_ABORTED_BY_HOST);
    this.#refuse(err);
    if (deferredFrees.count !== 0) releaseDeferred(this.backend);
  }

  /** @internal The queue exists on the controller again: ring what was held back, send what waited. */
  resume(): void {
    if (this.#ringDeferred) {
      this.#ringDeferred = false;
      this.sq.ring();
    }
    if (this.#waiting.length > 0) {
      this.#drain();
      this.#startPolling();
    }
  }

  // ---- synchronous --------------------------------------------------------------------------

  /**
   * Post with `fill(cid)` (which writes and posts the SQE), submit, and spin for the settlement:
   * the completion, the completion the Abort sent at the deadline provokes, or the owner's reset.
   */
  #execSync(fill: (cid: number) => void): number {
    if (this.isClosed) throw this.#closedBy ?? new ClosedError(`I/O queue ${this.qid} is closed`);
    if (this.fatal) throw this.fatal;
    let cid = this.acquire();
    const deadline = performance.now() + this.timeoutMs;
    while (cid < 0) {
      // Async commands hold every CID: reap until one frees up, bounded like everything else.
      this.poll();
      if (this.fatal) throw this.fatal;
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
    let expired = false;
    for (let spins = 0; this.cidStatus[cid] === -1; spins++) {
      this.poll();
      if ((spins & 255) === 255) {
        const now = performance.now();
        if (!expired && now > deadline) {
          expired = true;
          this.#expire(cid, now);
        } else if (expired && this.cidState[cid] === State.EXPIRED && now > this.cidInfo[cid * Info.STRIDE + Info.DEADLINE]!) {
          this.cidInfo[cid * Info.STRIDE + Info.DEADLINE] = Infinity;
          this.#ctx.onStuck(this, cid);
        }
        if ((spins & 16383) === 16383) this.#checkController();
      }
    }
    const status = this.cidStatus[cid]!;
    if (status === -2) {
      const err = this.#cidError[cid]!;
      this.#cidError[cid] = undefined;
      throw err;
    }
    if (expired && status === STATUS_ABORT_REQUESTED) throw this.#abortedError(cid, status);
    if (status !== 0) throw this.#statusError(cid, status);
    return this.cidDw0[cid]!;
  }

  /** Read/Write/Compare synchronously; NvmeStatusError on a non-zero status. Returns DW0. */
  rwSync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): number {
    return this.#execSync((cid) => this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags));
  }

  /**
   * Any command without data (Flush, Write Zeroes) or with a data structure in its list page,
   * synchronously. A command whose data is in a buffer of its own passes it as `buf`, so that
   * freeing the buffer waits for the command.
   */
  commandSync(write: (sqe: Uint32Array, o: number, cid: number) => void, buf?: DmaBuffer): number {
    return this.#execSync((cid) => {
      write(this.sq.sqe, this.slot, cid);
      this.post(cid);
      this.cidBuf[cid] = buf;
    });
  }

  // ---- async --------------------------------------------------------------------------------

  /** Read/Write/Compare; resolves with DW0, rejects with NvmeStatusError / NvmeTimeoutError. */
  rwAsync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): Promise<number> {
    // A free CID and nobody queued before us: post now, with no closure, clock read or waiter
    // object per command (the executor is shared, rw() does every check); else the general path.
    if (this.freeTop > 0 && this.ioCq.credits > 0 && this.#waiting.length === 0 && !this.isClosed && this.fatal === undefined) {
      const cid = this.acquire();
      try {
        this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags);
      } catch (e) {
        this.release(cid);
        return Promise.reject(e as Error);
      }
      const p = new Promise<number>(this.#capture);
      this.cidMode[cid] = Mode.PROMISE;
      this.cidResolve[cid] = this.#captured;
      this.cidReject[cid] = this.#capturedReject;
      this.#captured = undefined;
      this.#capturedReject = undefined;
      this.#scheduleRing();
      this.#posted();
      return p;
    }
    try {
      // Checked now, not when a CID frees up: a bad buffer fails at once, in order.
      this.#checkBuffer(buf, offset, bytes);
      this.#checkBlockBytes(nsid, blocks, bytes);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return this.#async((cid) => this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags));
  }

  /** Any command built by `write` (which fills the SQE at `o` for `cid`), asynchronously; `buf` as for commandSync(). */
  commandAsync(write: (sqe: Uint32Array, o: number, cid: number) => void, buf?: DmaBuffer): Promise<number> {
    return this.#async((cid) => {
      write(this.sq.sqe, this.slot, cid);
      this.post(cid);
      this.cidBuf[cid] = buf;
    });
  }

  /**
   * A command whose data is a small structure for the controller (Dataset Management ranges, at
   * most a page): `write` fills the SQE, the data goes into the CID's own list page, PRP1 points at it.
   */
  commandDataAsync(write: SqeWriter, data: Uint8Array): Promise<number> {
    if (data.length === 0 || data.length > K.PAGE_SIZE) return Promise.reject(new InvalidArgumentError(`command data of ${data.length} bytes: 1 to ${K.PAGE_SIZE}`));
    return this.commandAsync((sqe, o, cid) => {
      const page = this.listBuffer(cid);
      page.bytes.set(data);
      write(sqe, o, cid);
      const a = page.busAddress(0);
      sqe[o + 6] = lo32(a);
      sqe[o + 7] = hi32(a);
      sqe[o + 8] = 0;
      sqe[o + 9] = 0;
    });
  }

  #async(fill: (cid: number) => void): Promise<number> {
    if (this.isClosed) return Promise.reject(this.#closedBy ?? new ClosedError(`I/O queue ${this.qid} is closed`));
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
        this.cidResolve[cid] = resolve;
        this.cidReject[cid] = reject;
        this.#scheduleRing();
        this.#posted();
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

  /**
   * A command was posted: a running poller counts it as activity at its next turn (no clock read
   * per command); a sleeping or stopped one starts now.
   */
  #posted(): void {
    if (this.#polling && this.#sleep === undefined) this.#fresh = true;
    else this.#startPolling();
  }

  #startPolling(): void {
    this.#lastActive = performance.now();
    if (this.#polling) {
      // Asleep with a new command to wait for: poll now, not at the next timer tick.
      if (this.#sleep !== undefined) {
        clearTimeout(this.#sleep);
        this.#sleep = undefined;
        setImmediate(this.#loop);
      }
      return;
    }
    this.#polling = true;
    setImmediate(this.#loop);
  }

  /** One turn of the async poller; reschedules itself while anything is outstanding or waiting. */
  readonly #loop = (): void => {
    this.#sleep = undefined;
    if (this.isClosed) {
      this.#polling = false;
      return;
    }
    // Spin briefly before yielding: a completion is usually microseconds away. Commands past
    // their deadline do not keep it spinning (recovery ends them), only polled each turn.
    let got = 0;
    for (let i = 0; i < 64 && (got = this.poll()) === 0 && this.inflight > this.expiredCount; i++);
    if (this.#ringPending) this.submit();
    const turns = ++this.#turns;
    if ((turns & 63) === 0 || (this.expiredCount > 0 && (turns & 7) === 0)) {
      this.checkTimeouts();
      this.#checkController();
    }
    if (this.inflight === 0 && this.#waiting.length === 0) {
      this.#polling = false;
      return;
    }
    const now = performance.now();
    if (got > 0 || this.#fresh) this.#lastActive = now;
    this.#fresh = false;
    const p = this.#poll;
    // Within the spin window (or spinning by choice): yield to the event loop and poll again.
    // Past it: a timer tick per poll, so a slow command costs little CPU; the deadline checks
    // above still run (every 64 ticks, every 8 with a command past its deadline).
    if (p.spin || now - this.#lastActive < p.spinMs) setImmediate(this.#loop);
    else this.#sleep = setTimeout(this.#loop, p.sleepMs);
  };


  /**
   * The controller deleted the queue (or was disabled, or never created it): commands still
   * outstanding cannot be reached by it any more and settle with ClosedError (handlers: SQ
   * deletion status); then the rings and list pages are freed. With `reason`, the commands still
   * outstanding and every later submission get that instead (why the queue went).
   */
  free(reason?: Error): void {
    if (this.isClosed) return;
    const err = reason ?? new ClosedError(`I/O queue ${this.qid} was deleted with commands outstanding`);
    this.#closedBy = reason;
    this.#settleAll(err, STATUS_SQ_DELETION);
    this.#refuse(err);
    this.isClosed = true;
    // A shared CQ outlives this SQ: hand back the completion slots its CIDs still held.
    for (let cid = 0; cid < this.depth; cid++) if (this.cidState[cid] !== State.FREE) this.ioCq.credits++;
    this.cidState.fill(State.CLOSED);
    this.freeTop = 0;
    this.ioCq.unbind(this);
    this.sq.mem.free();
    this.lists.free();
    removeDmaUser(this.backend, this);
  }
}
