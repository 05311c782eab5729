/**
 * One NVMe/TCP queue: a TCP connection to the target, its command identifiers, the capsules sent
 * on it and the PDUs received from it (NVMe/TCP Transport Specification 1.0, 3.3 and 3.6), with
 * the same three APIs as a PCIe IoQueue: low level (acquire, rw, submit, poll, onComplete), sync
 * (rwSync, commandSync) and async (rwAsync, commandAsync). The admin queue (QID 0) is one too,
 * driven through exec()/execAsync().
 *
 * Sending: rw() builds the CapsuleCmd in the CID's own staging slot (common header, the 64-byte
 * SQE with PSDT 01b and an SGL, the digests); submit() sends every capsule posted since the last
 * one in a single sendmsg, in-capsule data taken straight from the caller's buffer (no copy).
 * Writes above the in-capsule allowance go by R2T: the target asks, poll() answers with H2CData
 * PDUs of at most MAXH2CDATA bytes each, again straight from the caller's buffer.
 *
 * Receiving: poll() reads from the socket without waiting (or, after a run of empty polls, waits
 * a little in the kernel so a target on the same CPUs gets to run) and parses PDUs as they come.
 * C2HData payloads are read straight into the caller's buffer at DATAO (readv with the data digest
 * and the next PDU header in the same call), so data lands where it belongs with no extra copy.
 * Everything the target sends is checked before it is trusted: type and direction, HLEN, PDO,
 * PLEN, the digests, the CID (outstanding, and of the right direction), DATAO and DATAL against the
 * command's buffer. A violation closes the connection at once (ProtocolError / DigestError).
 *
 * A command settles only once no more of its data can land in its buffer: at its CapsuleResp (or
 * its last C2HData with SUCCESS), or once its connection was closed. So a deadline that passes
 * closes the queue's connection first (shutdown, close: the kernel drops whatever else arrives)
 * and only then rejects the command, and every other one outstanding on that connection (typed:
 * NvmeTimeoutError for the late one, ConnectionError for the rest). The owner (the transport)
 * reconnects the queue (a new connection, ICReq, Connect with the same QID), and requests waiting
 * meanwhile are sent then.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import {
  ClosedError,
  ConnectionError,
  DigestError,
  InvalidArgumentError,
  NvmeError,
  NvmeStatusError,
  NvmeTimeoutError,
  ProtocolError,
} from "../../errors.ts";
import { checkPtr, errnoName, native } from "../../native.ts";
import { addDmaUser, DmaBuffer, deferredFrees, releaseDeferred, removeDmaUser, type DmaUser } from "../../dma.ts";
import type { DmaAllocator } from "../../backends/types.ts";
import { commandName, hi32, lo32, writeCommand, type Command } from "../../spec/commands.ts";
import { FABRICS_OPCODE, fabricsCommandName, fabricsStatusName } from "../../spec/fabrics.ts";
import { encodeStatus, SC_ABORTED_BY_HOST, SC_TRANSIENT_TRANSPORT_ERROR, SCT_GENERIC, SCT_PATH } from "../../spec/status.ts";
import type { CompletionHandler, NvmeIoQueue, SqeWriter } from "../types.ts";
import { fesName, FLAG_DDGSTF, FLAG_HDGSTF, FLAG_LAST_PDU, FLAG_SUCCESS, pduTypeName } from "./pdu.ts";

const enum K {
  TWO32 = 0x1_0000_0000,
  MAX_SLBA = 9007199254740991,
  /** Staging slot per CID: CH (8) + SQE (64) + HDGST (4) + the in-capsule data's DDGST (4). */
  SLOT = 80,
  SLOT_DWORDS = 20,
  /** The SQE's first dword within a slot. */
  SQE_DW = 2,
  HDGST_DW = 18,
  DDGST_DW = 19,
  CAPSULE_HLEN = 72,
  SHORT_HLEN = 24,
  /** iovecs per sendmsg (nvm_tcp_sendv takes at most 256). */
  IOV_MAX = 255,
  IOV_DWORDS = 4,
  /** The receive/transmit scratch area: received PDU header, its DDGST, an H2CData header and DDGST, a TermReq. */
  MISC = 512,
  RX_HDR = 0,
  RX_DD = 32,
  TX_HDR = 64,
  TX_DD = 96,
  RX_TERM = 128,
  RX_TERM_MAX = 256,
  /** Empty polls before poll() waits in the kernel for data. */
  SPIN_POLLS = 16,
}

const enum State {
  FREE = 0,
  ACQUIRED = 1,
  INFLIGHT = 2,
  CLOSED = 4,
}

const enum Mode {
  HANDLER = 0,
  PROMISE = 1,
  SYNC = 2,
}

/** Data transfer direction, from the opcode's bits 1:0 (Base 2.0, figure "Opcodes for Data Transfer"). */
const enum Dir {
  NONE = 0,
  /** Controller to host: C2HData. */
  IN = 1,
  /** Host to controller: in the capsule, or R2T + H2CData. */
  OUT = 2,
}

const enum Rx {
  HEADER = 0,
  DATA = 1,
}

/** PDU-TYPE values the host receives. */
const enum T {
  C2H_TERM_REQ = 0x03,
  CAPSULE_RESP = 0x05,
  C2H_DATA = 0x07,
  R2T = 0x09,
}

/** Command Aborted By Host (71h, path related): what a handler gets for a command its connection's loss ended. */
export const STATUS_ABORTED_BY_HOST = encodeStatus({ sct: SCT_PATH, sc: SC_ABORTED_BY_HOST });
/** Transient Transport Error (22h): what a handler gets for a command whose data digest was wrong. */
export const STATUS_TRANSIENT_TRANSPORT_ERROR = encodeStatus({ sct: SCT_GENERIC, sc: SC_TRANSIENT_TRANSPORT_ERROR });

/** What one connection negotiated (ICReq/ICResp, Identify Controller) and the host chose. */
export interface TcpLinkParams {
  /** Header digests on every PDU that may carry one. */
  readonly hdgst: boolean;
  /** Data digests on every PDU with data. */
  readonly ddgst: boolean;
  /** Bytes per H2CData PDU: the target's MAXH2CDATA, or less when the host caps it. */
  readonly maxh2cdata: number;
  /** Bytes of host-to-controller data that may travel in the capsule (SGL 01h); more goes by R2T. */
  readonly inCapsule: number;
  /** SQ flow control on: CapsuleResps carry SQHD. Off (Connect CATTR bit 2): SQHD is FFFFh and reads may end with SUCCESS. */
  readonly sqflow: boolean;
}

/** What the owner of a queue (the TCP transport, or a Worker's attach) provides. */
export interface TcpQueueContext {
  /** "host:port" for messages. */
  readonly address: string;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  /** Buffers must be this controller's (allocBuffer): its DmaUsers are asked before memory goes. */
  readonly memory: DmaAllocator;
  /** LBA data size of namespace `nsid` (throws for one commands cannot be sent to). */
  readonly lbaSize: (nsid: number) => number;
  /**
   * The connection was closed (by the target, or by us after a timeout or a violation); every
   * command on it has settled. The owner reconnects the queue (attach() + Connect, then resume()),
   * or gives up (settleAndRefuse()). Optional: without it the queue refuses from then on.
   */
  readonly onLinkLost?: (q: TcpQueue, err: Error) => void;
  /**
   * A synchronous caller found the link down: reconnect now (bounded), or throw why not. Optional:
   * without it, sync calls on a queue that is down throw the error that took it down.
   */
  readonly reconnectNow?: (q: TcpQueue) => void;
  /** An async request found the link down: make sure a reconnect is on its way. Optional. */
  readonly requestLink?: (q: TcpQueue) => void;
  /**
   * How long poll() waits in the kernel for data after a run of empty polls, in µs. Defaults to 50:
   * measured in the 2-vCPU guest against nvmet on loopback, pure spinning (0) starves the target
   * (QD 32: a quarter of the IOPS), and 200 or 1000 µs waits cost 20-40 %.
   */
  readonly pollWaitUs?: number;
}

/** Data of an admin or fabrics command run through exec(). */
export interface TcpTransfer {
  readonly buf: DmaBuffer;
  readonly offset: number;
  readonly bytes: number;
  /** "in": controller to host (Identify, Get Log Page); "out": host to controller (Connect data, Set Features data). */
  readonly dir: "in" | "out";
}

export interface TcpCompletion {
  readonly dw0: number;
  readonly dw1: number;
  readonly cid: number;
  /** SQ Head Pointer the controller reported (FFFFh with SQ flow control disabled). */
  readonly sqhd: number;
}

export interface TcpExecOptions {
  readonly timeoutMs?: number;
  /** Text for error messages, e.g. "CNS 0x01". */
  readonly detail?: string;
}

interface Waiter {
  readonly start: () => void;
  readonly reject: (e: Error) => void;
  readonly since: number;
}

function rwFieldsOk(blocks: number, slba: number): boolean {
  return (blocks | 0) === blocks && blocks >= 1 && blocks <= 65536 && slba >= 0 && slba <= K.MAX_SLBA && Math.floor(slba) === slba;
}

function dirOf(opcode: number): number {
  const d = opcode & 3;
  return d === 1 ? Dir.OUT : d === 2 ? Dir.IN : Dir.NONE;
}

function commandLabel(opcode: number, qid: number, fctype: number): string {
  return opcode === FABRICS_OPCODE ? fabricsCommandName(fctype) : commandName(opcode, qid === 0);
}

export class TcpQueue implements NvmeIoQueue, DmaUser {
  readonly transport = "tcp" as const;
  readonly qid: number;
  readonly entries: number;
  readonly depth: number;
  readonly timeoutMs: number;
  readonly maxTransfer: number;
  onComplete: CompletionHandler | null = null;
  onTimeout: ((cid: number) => void) | null = null;

  readonly #ctx: TcpQueueContext;
  private readonly memory: DmaAllocator;
  private params: TcpLinkParams = { hdgst: false, ddgst: false, maxh2cdata: 4096, inCapsule: 0, sqflow: true };
  /** The connection's descriptor; -1 while down. */
  private fd = -1;
  /** Bumped whenever the link goes down: code that may have called out checks it did not change. */
  private linkGen = 0;
  private isClosed = false;
  /** Why the queue refuses commands for good (settleAndRefuse), or undefined. */
  private fatal: Error | undefined;
  /** Why the link went down last, for sync callers without a reconnect. */
  private lostWith: Error | undefined;
  /** The connection was lent to another thread (exportIoQueue): this side does not touch it. */
  private lent = false;
  /**
   * The lease shared with the borrower: [0] 1 while lent, [1] 1 when the borrower shut the
   * connection down, [2] and [3] the SQ tail and head it left (SQ flow control goes on from there).
   */
  private leaseWords: Int32Array | undefined;
  /** This side closes the descriptor when the link drops (false: a Worker's view of the owner's socket). */
  private ownsFd = true;

  // Staging, C-owned: CapsuleCmd slots, the scratch area, the iovec array.
  private readonly stagePtr: number;
  private readonly stage32: Uint32Array;
  private readonly miscPtr: number;
  private readonly misc8: Uint8Array;
  private readonly misc32: Uint32Array;
  private readonly iovPtr: number;
  private readonly iov32: Uint32Array;

  // Per CID.
  private readonly cidState: Uint8Array;
  private readonly cidMode: Uint8Array;
  private readonly freeCids: Uint16Array;
  private freeTop: number;
  private readonly cidDeadline: Float64Array;
  private readonly cidStatus: Int32Array;
  private readonly cidDw0: Uint32Array;
  private readonly cidDw1: Uint32Array;
  private readonly cidSqhd: Uint16Array;
  private readonly cidOpcode: Uint8Array;
  private readonly cidFctype: Uint8Array;
  private readonly cidSlba: Float64Array;
  private readonly cidNlb: Uint32Array;
  private readonly cidBuf: (DmaBuffer | undefined)[];
  private readonly cidDir: Uint8Array;
  /** Address of the command's data in this process (its buffer at its offset). */
  private readonly cidAddr: Float64Array;
  private readonly cidLen: Uint32Array;
  /** C2H: bytes received so far (DATAO must equal it); H2C by R2T: bytes sent. */
  private readonly cidDone: Uint32Array;
  /** 1: its data went in the capsule (an R2T for it is a violation). */
  private readonly cidInCap: Uint8Array;
  /** A data digest failed for it: it settles with this error at its completion. */
  private readonly cidBad: (Error | undefined)[];
  private readonly cidError: (Error | undefined)[];
  private readonly cidDetail: (string | undefined)[];
  readonly #resolve: (((dw0: number) => void) | undefined)[];
  readonly #reject: (((e: Error) => void) | undefined)[];
  /** CIDs posted and not yet sent, in order. */
  private readonly pending: Uint16Array;
  private pendingCount = 0;
  private inflight = 0;
  /** SQ tail (commands sent) and head (SQHD) for SQ flow control. */
  private sqTail = 0;
  private sqHead = 0;
  private batchStart = -1;
  private fmtNsid = -1;
  private fmtLba = 0;
  private emptyPolls = 0;
  private polls = 0;
  private readonly pollWaitUs: number;
  readonly #waiting: Waiter[] = [];
  #ringPending = false;
  #polling = false;

  // Receive state.
  private rxMode = Rx.HEADER;
  private rxHave = 0;
  private rxHdrSize = K.SHORT_HLEN;
  private rxCid = 0;
  private rxAddr = 0;
  private rxLeft = 0;
  private rxDatal = 0;
  private rxFlags = 0;
  private rxDdHave = 0;
  private rxDdNeed = 0;

  constructor(ctx: TcpQueueContext, qid: number, entries: number) {
    if (!Number.isInteger(entries) || entries < 2 || entries > 0x10000) throw new InvalidArgumentError(`a queue of ${entries} entries: 2 to 65536`);
    this.#ctx = ctx;
    this.memory = ctx.memory;
    this.qid = qid;
    this.entries = entries;
    const depth = entries - 1;
    this.depth = depth;
    this.timeoutMs = ctx.timeoutMs;
    this.maxTransfer = ctx.maxTransfer;
    this.pollWaitUs = ctx.pollWaitUs ?? 50;
    const n = native();
    const stage = checkPtr(n.nvm_host_alloc(depth * K.SLOT), "nvm_host_alloc");
    const misc = checkPtr(n.nvm_host_alloc(K.MISC), "nvm_host_alloc");
    const iov = checkPtr(n.nvm_host_alloc(K.IOV_MAX * K.IOV_DWORDS * 4 + 16), "nvm_host_alloc");
    this.stagePtr = Number(stage);
    this.stage32 = new Uint32Array(toArrayBuffer(stage, 0, depth * K.SLOT));
    this.miscPtr = Number(misc);
    const miscBuf = toArrayBuffer(misc, 0, K.MISC);
    this.misc8 = new Uint8Array(miscBuf);
    this.misc32 = new Uint32Array(miscBuf);
    this.iovPtr = Number(iov);
    this.iov32 = new Uint32Array(toArrayBuffer(iov, 0, K.IOV_MAX * K.IOV_DWORDS * 4));
    this.cidState = new Uint8Array(depth);
    this.cidMode = new Uint8Array(depth);
    this.freeCids = new Uint16Array(depth);
    for (let i = 0; i < depth; i++) this.freeCids[i] = depth - 1 - i;
    this.freeTop = depth;
    this.cidDeadline = new Float64Array(depth);
    this.cidStatus = new Int32Array(depth);
    this.cidDw0 = new Uint32Array(depth);
    this.cidDw1 = new Uint32Array(depth);
    this.cidSqhd = new Uint16Array(depth);
    this.cidOpcode = new Uint8Array(depth);
    this.cidFctype = new Uint8Array(depth);
    this.cidSlba = new Float64Array(depth);
    this.cidNlb = new Uint32Array(depth);
    this.cidBuf = new Array<DmaBuffer | undefined>(depth).fill(undefined);
    this.cidDir = new Uint8Array(depth);
    this.cidAddr = new Float64Array(depth);
    this.cidLen = new Uint32Array(depth);
    this.cidDone = new Uint32Array(depth);
    this.cidInCap = new Uint8Array(depth);
    this.cidBad = new Array<Error | undefined>(depth).fill(undefined);
    this.cidError = new Array<Error | undefined>(depth).fill(undefined);
    this.cidDetail = new Array<string | undefined>(depth).fill(undefined);
    this.#resolve = new Array(depth).fill(undefined);
    this.#reject = new Array(depth).fill(undefined);
    this.pending = new Uint16Array(depth);
    addDmaUser(this.memory, this);
  }

  // ---- connection -----------------------------------------------------------------------------

  /** True while the queue has a connection. */
  get live(): boolean {
    return this.fd >= 0;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** The connection's file descriptor (-1 while down): exportIoQueue hands it to a Worker. */
  get socket(): number {
    return this.fd;
  }

  get link(): TcpLinkParams {
    return this.params;
  }

  /** Commands posted and not yet settled. */
  get outstanding(): number {
    return this.inflight;
  }

  /** SQ flow control: the SQ tail and the last SQHD reported. */
  get sqPointers(): { tail: number; head: number } {
    return { tail: this.sqTail, head: this.sqHead };
  }

  /**
   * @internal Take over connected socket `fd` (ICReq/ICResp done) with what it negotiated. The
   * first command must then be Connect (exec()). Every CID is free; the receive state starts over.
   */
  attach(fd: number, params: TcpLinkParams, ownsFd = true, sq?: { tail: number; head: number }): void {
    if (this.isClosed) throw new ClosedError(`queue ${this.qid} is closed`);
    if (this.fd >= 0) throw new InvalidArgumentError(`queue ${this.qid} is connected already`);
    this.fd = fd;
    this.ownsFd = ownsFd;
    this.params = params;
    this.rxHdrSize = K.SHORT_HLEN + (params.hdgst ? 4 : 0);
    this.rxMode = Rx.HEADER;
    this.rxHave = 0;
    this.sqTail = sq?.tail ?? 0;
    this.sqHead = sq?.head ?? 0;
    this.emptyPolls = 0;
    this.lostWith = undefined;
  }

  /**
   * @internal Lend the connection to another thread (exportIoQueue): this side stops using it until
   * the borrower gives it back through `lease` (word 0 back to 0; word 1 set when it shut the
   * connection down, after which this side closes it and reconnects).
   */
  lend(lease: Int32Array): void {
    if (this.inflight > 0 || this.#waiting.length > 0) throw new InvalidArgumentError(`I/O queue ${this.qid} has ${this.inflight + this.#waiting.length} commands outstanding or waiting: export it idle`);
    if (this.fd < 0) throw new InvalidArgumentError(`I/O queue ${this.qid} is not connected (reconnecting): export it once it is`);
    if (this.lent) throw new InvalidArgumentError(`I/O queue ${this.qid} is already lent to a Worker: one thread per queue`);
    Atomics.store(lease, 0, 1);
    Atomics.store(lease, 1, 0);
    Atomics.store(lease, 2, this.sqTail);
    Atomics.store(lease, 3, this.sqHead);
    this.leaseWords = lease;
    this.lent = true;
  }

  /** Lent and not given back yet (the borrower's close() gives it back). */
  get isLent(): boolean {
    if (this.lent && this.leaseWords !== undefined && Atomics.load(this.leaseWords, 0) === 0) this.#reclaim();
    return this.lent;
  }

  #reclaim(): void {
    const w = this.leaseWords!;
    const down = Atomics.load(w, 1) === 1;
    this.sqTail = Atomics.load(w, 2);
    this.sqHead = Atomics.load(w, 3);
    this.lent = false;
    this.leaseWords = undefined;
    if (down) this.#drop(new ConnectionError(`queue ${this.qid} to ${this.#ctx.address}: the Worker that borrowed it closed its connection`, this.#ctx.address, this.qid));
  }

  /**
   * @internal A Worker's view: stop using the owner's connection without closing it (nothing is
   * outstanding), or, with commands outstanding, shut it down first so nothing lands in their
   * buffers. Returns true when the connection was shut down.
   */
  detach(): boolean {
    if (this.leaseWords !== undefined) {
      Atomics.store(this.leaseWords, 2, this.sqTail);
      Atomics.store(this.leaseWords, 3, this.sqHead);
    }
    if (this.fd < 0) return !this.ownsFd && this.lostWith !== undefined;
    if (this.inflight > 0) {
      this.#drop(new ClosedError(`queue ${this.qid} was detached from this Worker with commands outstanding`), undefined, true);
      return true;
    }
    this.fd = -1;
    return false;
  }

  /**
   * Close the connection (when it is up) and settle every command outstanding on it: `err` for
   * all, or `late` for the one whose deadline passed. The owner is told (onLinkLost), unless
   * `quiet`. Nothing more can arrive for these commands: the kernel drops what the target still sends.
   */
  #drop(err: Error, late?: { cid: number; err: Error }, quiet = false): void {
    const wasUp = this.fd >= 0;
    if (wasUp) {
      const n = native();
      // shutdown first: a Worker blocked on this socket (or our own next recv) sees the end at once.
      n.nvm_tcp_shutdown(this.fd);
      // A Worker's view leaves the descriptor to the owner, which closes it when it gets the queue back.
      if (this.ownsFd) n.nvm_tcp_close(this.fd);
      this.fd = -1;
      this.linkGen++;
      this.lostWith = err;
      this.rxMode = Rx.HEADER;
      this.rxHave = 0;
    }
    this.pendingCount = 0;
    this.#settleAll((cid) => (late && cid === late.cid ? late.err : err), STATUS_ABORTED_BY_HOST);
    this.sqTail = 0;
    this.sqHead = 0;
    if (deferredFrees.count !== 0) releaseDeferred(this.memory);
    if (wasUp && !quiet && !this.isClosed) this.#ctx.onLinkLost?.(this, err);
  }

  /** @internal A Worker's view: where to leave the SQ pointers when it gives the queue back (detach()). */
  borrow(lease: Int32Array): void {
    this.leaseWords = lease;
  }

  /** @internal Close the connection and fail what is outstanding with `err` (the owner tears the controller down). */
  disconnect(err: Error): void {
    this.#drop(err, undefined, true);
  }

  /** @internal The queue is connected again (attach + Connect): send what waited. */
  resume(): void {
    if (this.#waiting.length > 0) {
      this.#drain();
      this.#startPolling();
    }
  }

  /** @internal Settle everything with `err` and refuse new commands (the owner gave up on the queue). */
  settleAndRefuse(err: Error): void {
    this.#drop(err, undefined, true);
    this.fatal = err;
    for (const w of this.#waiting.splice(0)) w.reject(err);
  }

  /** @internal Commands may be sent again (after settleAndRefuse, a new connection). */
  unrefuse(): void {
    this.fatal = undefined;
  }

  #settleAll(errFor: (cid: number) => Error, handlerStatus: number): void {
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.cidState[cid] === State.INFLIGHT) this.#settle(cid, errFor(cid), handlerStatus);
    }
  }

  #settle(cid: number, err: Error, handlerStatus: number): void {
    this.#freeCid(cid);
    this.inflight--;
    const mode = this.cidMode[cid];
    if (mode === Mode.PROMISE) {
      const reject = this.#reject[cid]!;
      this.#resolve[cid] = undefined;
      this.#reject[cid] = undefined;
      reject(err);
    } else if (mode === Mode.SYNC) {
      this.cidStatus[cid] = -2;
      this.cidError[cid] = err;
    } else this.onComplete?.(cid, handlerStatus, 0);
  }

  #freeCid(cid: number): void {
    this.cidState[cid] = State.FREE;
    this.freeCids[this.freeTop++] = cid;
    this.cidBuf[cid] = undefined;
    this.cidBad[cid] = undefined;
  }

  /** DmaUser: a posted command not yet settled may still receive into or send from the memory `key` names. */
  mayAccess(key: object): boolean {
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.cidState[cid] === State.INFLIGHT && this.cidBuf[cid]?.memoryKey === key) return true;
    }
    return false;
  }

  forgetLbaSize(): void {
    this.fmtNsid = -1;
  }

  // ---- low-level API ----------------------------------------------------------------------------

  /** A free CID, reserved for the caller; -1 when none is free, the SQ is full, or the link is down. */
  acquire(): number {
    if (this.freeTop === 0 || this.fd < 0 || this.fatal !== undefined || (this.lent && this.isLent)) return -1;
    // SQ flow control (NVMe/TCP 3.3.2): at most SQSIZE commands in the SQ, freed as SQHD advances.
    if (this.params.sqflow && (this.sqTail - this.sqHead + this.entries) % this.entries === this.entries - 1) return -1;
    const cid = this.freeCids[--this.freeTop]!;
    this.cidState[cid] = State.ACQUIRED;
    return cid;
  }

  release(cid: number): void {
    this.#checkAcquired(cid);
    this.cidState[cid] = State.FREE;
    this.freeCids[this.freeTop++] = cid;
  }

  #checkAcquired(cid: number): void {
    if (this.isClosed) throw new ClosedError(`I/O queue ${this.qid} is closed`);
    const valid = Number.isInteger(cid) && cid >= 0 && cid < this.depth;
    if (!valid || this.cidState[cid] !== State.ACQUIRED) {
      const what = valid ? ["free", "acquired", "already in flight", "", "closed"][this.cidState[cid]!] : "not a CID of this queue";
      throw new InvalidArgumentError(`CID ${cid} on queue ${this.qid} is ${what}: post only CIDs returned by acquire() (0 to ${this.depth - 1})`);
    }
  }

  /**
   * Read/Write/Compare for `cid`: the CapsuleCmd in its slot (SQE, SGL: in-capsule data for a
   * small write, else the transport data block the target fetches by R2T or fills by C2HData),
   * posted; it is sent at the next submit().
   */
  rw(cid: number, opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags?: number): void {
    if (!(this.cidState[cid] === State.ACQUIRED && rwFieldsOk(blocks, slba) && nsid === this.fmtNsid && bytes === blocks * this.fmtLba && this.#spanOk(buf, offset, bytes))) {
      this.#checkRw(cid, nsid, blocks, slba, buf, offset, bytes);
    }
    const s = this.stage32;
    const o = cid * K.SLOT_DWORDS + K.SQE_DW;
    s[o] = (opcode & 0xff) | (cid << 16);
    s[o + 1] = nsid;
    s[o + 2] = 0;
    s[o + 3] = 0;
    s[o + 4] = 0;
    s[o + 5] = 0;
    s[o + 10] = lo32(slba);
    s[o + 11] = hi32(slba);
    s[o + 12] = ((blocks - 1) & 0xffff) | (cdw12Flags ?? 0);
    s[o + 13] = 0;
    s[o + 14] = 0;
    s[o + 15] = 0;
    this.#setData(cid, dirOf(opcode), Number(buf.pointer) + offset, bytes, buf);
    this.#post(cid, Mode.HANDLER, opcode);
    this.cidSlba[cid] = slba;
    this.cidNlb[cid] = blocks;
  }

  #spanOk(buf: DmaBuffer, offset: number, bytes: number): boolean {
    return (offset | 0) === offset && (offset & 0x8000_0003) === 0 && (bytes | 0) === bytes && bytes > 0 && bytes <= this.maxTransfer && offset + bytes <= buf.size && buf.belongsTo(this.memory);
  }

  #checkRw(cid: number, nsid: number, blocks: number, slba: number, buf: DmaBuffer, offset: number, bytes: number): void {
    this.#checkAcquired(cid);
    if (!Number.isInteger(blocks) || blocks < 1 || blocks > 65536) throw new InvalidArgumentError(`block count ${blocks}: NLB is 16 bits, one command moves 1 to 65536 blocks`);
    if (!Number.isSafeInteger(slba) || slba < 0) throw new InvalidArgumentError(`SLBA ${slba} is not a non-negative integer`);
    this.#checkBuffer(buf, offset, bytes);
    this.#checkBlockBytes(nsid, blocks, bytes);
  }

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
    if (!buf.belongsTo(this.memory)) throw new InvalidArgumentError("the data buffer belongs to another controller: allocate it with this controller's allocBuffer()");
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0) throw new InvalidArgumentError(`buffer offset ${offset} must be a non-negative multiple of 4 (dword alignment)`);
    if (!Number.isInteger(bytes) || bytes <= 0) throw new InvalidArgumentError(`transfer length must be a positive integer, got ${bytes}`);
    if (offset + bytes > buf.size) throw new InvalidArgumentError(`buffer too small: ${bytes} bytes at offset ${offset}, the buffer holds ${buf.size}`);
    if (bytes > this.maxTransfer) {
      throw new InvalidArgumentError(`${bytes} bytes exceed the largest transfer of one command (${this.maxTransfer} bytes: MDTS, or the target's MAXH2CDATA): split it`);
    }
  }

  /** The data of `cid`: direction, address, length; in the capsule when it is host-to-controller and small enough. */
  #setData(cid: number, dir: number, addr: number, bytes: number, buf: DmaBuffer | undefined): void {
    const s = this.stage32;
    const o = cid * K.SLOT_DWORDS + K.SQE_DW;
    // SGL Data Block descriptor at SQE bytes 24-39 (Base 2.0, 4.3.2): address 0, length, identifier.
    s[o + 6] = 0;
    s[o + 7] = 0;
    s[o + 8] = bytes;
    const inCap = dir === Dir.OUT && bytes > 0 && bytes <= this.params.inCapsule ? 1 : 0;
    // 01h: Data Block, Offset (in-capsule data at offset 0); 5Ah: Transport Data Block (C2HData or R2T).
    s[o + 9] = (inCap === 1 ? 0x01 : 0x5a) << 24;
    this.cidDir[cid] = bytes > 0 ? dir : Dir.NONE;
    this.cidAddr[cid] = addr;
    this.cidLen[cid] = bytes;
    this.cidDone[cid] = 0;
    this.cidInCap[cid] = inCap;
    this.cidBuf[cid] = buf;
  }

  /**
   * Finish the capsule of `cid` (PSDT 01b in CDW0, the common header, the digests) and queue it
   * for the next submit(). The SQE and the data are in place.
   */
  #post(cid: number, mode: number, opcode: number): void {
    const s = this.stage32;
    const base = cid * K.SLOT_DWORDS;
    const o = base + K.SQE_DW;
    // CDW0: FUSE 00b (no fused operations over fabrics) and PSDT 01b: SGLs on every fabrics command.
    s[o] = (s[o]! & 0xffff00ff) | 0x4000;
    const hd = this.params.hdgst ? 4 : 0;
    const len = this.cidInCap[cid] === 1 ? this.cidLen[cid]! : 0;
    const dd = this.params.ddgst && len > 0 ? 4 : 0;
    const pdo = len > 0 ? K.CAPSULE_HLEN + hd : 0;
    // CH: PDU-TYPE 04h (CapsuleCmd), FLAGS, HLEN 72, PDO, PLEN.
    s[base] = 0x04 | ((hd ? FLAG_HDGSTF : 0) << 8) | ((dd ? FLAG_DDGSTF : 0) << 8) | (K.CAPSULE_HLEN << 16) | (pdo << 24);
    s[base + 1] = K.CAPSULE_HLEN + hd + len + dd;
    if (hd !== 0 || dd !== 0) {
      const n = native();
      if (hd !== 0) s[base + K.HDGST_DW] = n.nvm_crc32c(this.stagePtr + base * 4, K.CAPSULE_HLEN, 0);
      if (dd !== 0) s[base + K.DDGST_DW] = n.nvm_crc32c(this.cidAddr[cid]!, len, 0);
    }
    if (this.batchStart < 0) this.batchStart = performance.now();
    this.cidState[cid] = State.INFLIGHT;
    this.cidMode[cid] = mode;
    this.cidDeadline[cid] = this.batchStart + this.timeoutMs;
    this.cidOpcode[cid] = opcode;
    this.cidNlb[cid] = 0;
    this.cidDetail[cid] = undefined;
    this.inflight++;
    this.pending[this.pendingCount++] = cid;
    if (this.params.sqflow) this.sqTail = this.sqTail + 1 === this.entries ? 0 : this.sqTail + 1;
  }

  /**
   * The caller read performance.now() at `now`, before posting: the commands it posts until the
   * next submit() take their deadlines from `now` instead of from a clock read of the queue's own
   * (as IoQueue.batchTime). Ignored once a command of the batch was posted.
   */
  batchTime(now: number): void {
    if (this.batchStart < 0 && now >= 0) this.batchStart = now;
  }

  /** Send every capsule posted since the last submit(), in one sendmsg when they fit. */
  submit(): void {
    this.#ringPending = false;
    this.batchStart = -1;
    const count = this.pendingCount;
    if (count === 0) return;
    if (this.fd < 0) {
      // Posted on a CID acquired before the link went down: it can never be sent.
      this.#drop(this.lostWith ?? new ConnectionError(`queue ${this.qid} to ${this.#ctx.address} is not connected`, this.#ctx.address, this.qid));
      return;
    }
    const iov = this.iov32;
    const hd = this.params.hdgst ? 4 : 0;
    let v = 0;
    for (let i = 0; i < count; i++) {
      if (v + 3 > K.IOV_MAX) {
        if (!this.#sendv(v)) return;
        v = 0;
      }
      const cid = this.pending[i]!;
      const slot = this.stagePtr + cid * K.SLOT;
      let e = v * K.IOV_DWORDS;
      iov[e] = lo32(slot);
      iov[e + 1] = hi32(slot);
      iov[e + 2] = K.CAPSULE_HLEN + hd;
      v++;
      if (this.cidInCap[cid] === 1) {
        const addr = this.cidAddr[cid]!;
        e += K.IOV_DWORDS;
        iov[e] = lo32(addr);
        iov[e + 1] = hi32(addr);
        iov[e + 2] = this.cidLen[cid]!;
        v++;
        if (this.params.ddgst) {
          e += K.IOV_DWORDS;
          const dd = slot + K.DDGST_DW * 4;
          iov[e] = lo32(dd);
          iov[e + 1] = hi32(dd);
          iov[e + 2] = 4;
          v++;
        }
      }
    }
    this.pendingCount = 0;
    this.#sendv(v);
  }

  /** sendmsg the first `v` iovecs; on failure the link is dropped. */
  #sendv(v: number): boolean {
    const r = native().nvm_tcp_sendv(this.fd, this.iovPtr as unknown as Pointer, v, this.timeoutMs);
    if (r === 0) return true;
    this.#drop(this.#sockError(-r, "send"));
    return false;
  }

  #sockError(errno: number, what: string): ConnectionError {
    const why =
      errno === 107 // ENOTCONN: readv got end of file
        ? "the target closed the connection"
        : errno === 110 // ETIMEDOUT
          ? `the target did not take the data within ${this.timeoutMs} ms`
          : `${what} failed: ${errnoName(errno)}`;
    return new ConnectionError(`queue ${this.qid} to ${this.#ctx.address}: ${why}; its outstanding commands failed, the controller reconnects`, this.#ctx.address, this.qid, errno);
  }

  #violation(violation: string, what: string): ProtocolError {
    return new ProtocolError(`queue ${this.qid} to ${this.#ctx.address}: protocol violation by the target (${violation}): ${what}; connection closed`, violation, this.qid);
  }

  // ---- receiving --------------------------------------------------------------------------------

  /** Read and handle whatever the target sent; returns how many commands completed. */
  poll(): number {
    if (this.fd < 0 || (this.lent && this.isLent)) {
      if (this.#waiting.length > 0 && this.fd >= 0) this.#drain();
      return 0;
    }
    // A run of empty polls with commands outstanding: wait in the kernel for a moment rather
    // than spin, so a target on the same CPUs (a loopback target) gets to run.
    const wait = this.emptyPolls >= K.SPIN_POLLS && this.inflight > 0 ? this.pollWaitUs : 0;
    const n = this.#receive(wait);
    if (n === 0) this.emptyPolls++;
    else this.emptyPolls = 0;
    if (this.#waiting.length > 0) this.#drain();
    // Deadlines also for the low-level API, whose callers may never call checkTimeouts().
    if ((++this.polls & 1023) === 0 && this.inflight > 0) this.checkTimeouts();
    return n;
  }

  /** @internal Receive, waiting up to `waitUs` for the first bytes; returns completions handled. */
  #receive(waitUs: number): number {
    const n = native();
    const gen = this.linkGen;
    const hdr = this.miscPtr + K.RX_HDR;
    let done = 0;
    for (;;) {
      let r: number;
      let asked: number;
      if (this.rxMode === Rx.HEADER) {
        asked = this.rxHdrSize - this.rxHave;
        r = n.nvm_tcp_recv3(this.fd, hdr + this.rxHave, asked, 0, 0, 0, 0, waitUs);
      } else {
        // The rest of the data straight into the caller's buffer, then its digest, then the
        // next PDU's header: one system call for a whole read in the common case.
        const ddLeft = this.rxDdNeed - this.rxDdHave;
        asked = this.rxLeft + ddLeft + this.rxHdrSize;
        r = n.nvm_tcp_recv3(this.fd, this.rxAddr, this.rxLeft, this.miscPtr + K.RX_DD + this.rxDdHave, ddLeft, hdr, this.rxHdrSize, waitUs);
      }
      if (r <= 0) {
        if (r < 0) this.#drop(this.#sockError(-r, "receive"));
        return done;
      }
      waitUs = 0;
      let got = r;
      if (this.rxMode === Rx.DATA) {
        const d = Math.min(got, this.rxLeft);
        this.rxLeft -= d;
        this.rxAddr += d;
        got -= d;
        const dd = Math.min(got, this.rxDdNeed - this.rxDdHave);
        this.rxDdHave += dd;
        got -= dd;
        if (this.rxLeft === 0 && this.rxDdHave === this.rxDdNeed) {
          done += this.#dataDone();
          if (this.linkGen !== gen) return done;
          this.rxMode = Rx.HEADER;
          this.rxHave = got;
        } else if (got !== 0) {
          return done; // unreachable: readv fills iovecs in order
        }
      } else {
        this.rxHave += got;
      }
      if (this.rxMode === Rx.HEADER && this.rxHave === this.rxHdrSize) {
        this.rxHave = 0;
        done += this.#header();
        if (this.linkGen !== gen) return done;
      }
      // Short read: the socket is drained.
      if (r < asked) return done;
    }
  }

  /** A whole PDU header is in RX_HDR: check it and act on it. Returns completions handled. */
  #header(): number {
    const b = this.misc8;
    const type = b[K.RX_HDR]!;
    const flags = b[K.RX_HDR + 1]!;
    const hlen = b[K.RX_HDR + 2]!;
    const pdo = b[K.RX_HDR + 3]!;
    const plen = this.misc32[(K.RX_HDR + 4) >> 2]!;
    const hd = this.params.hdgst ? 4 : 0;
    if (type === T.C2H_TERM_REQ) return this.#termReq(hlen, plen);
    if (type !== T.CAPSULE_RESP && type !== T.C2H_DATA && type !== T.R2T) {
      this.#drop(this.#violation("pdu-type", `${pduTypeName(type)} is not a PDU a controller sends once the connection is set up`));
      return 0;
    }
    if (hlen !== K.SHORT_HLEN) {
      this.#drop(this.#violation("hlen", `${pduTypeName(type)} with HLEN ${hlen}, it is 24`));
      return 0;
    }
    if (((flags & FLAG_HDGSTF) !== 0) !== (hd !== 0)) {
      this.#drop(this.#violation("hdgstf", `${pduTypeName(type)} ${hd ? "without" : "with"} a header digest (HDGSTF ${flags & 1}), but header digests were negotiated ${hd ? "on" : "off"}`));
      return 0;
    }
    if (hd !== 0) {
      const want = this.misc32[(K.RX_HDR + K.SHORT_HLEN) >> 2]!;
      const got = native().nvm_crc32c(this.miscPtr + K.RX_HDR, K.SHORT_HLEN, 0);
      if (want !== got) {
        this.#drop(
          new DigestError(
            `queue ${this.qid} to ${this.#ctx.address}: header digest of a ${pduTypeName(type)} is 0x${want.toString(16).padStart(8, "0")}, the header's CRC-32C is 0x${got.toString(16).padStart(8, "0")}; connection closed`,
            "header",
            this.qid,
          ),
        );
        return 0;
      }
    }
    if (type === T.CAPSULE_RESP) {
      if (plen !== K.SHORT_HLEN + hd || pdo !== 0) {
        this.#drop(this.#violation("plen", `CapsuleResp with PLEN ${plen} and PDO ${pdo}; it is ${K.SHORT_HLEN + hd} and 0`));
        return 0;
      }
      return this.#capsuleResp();
    }
    const m = this.misc32;
    const cccid = m[(K.RX_HDR + 8) >> 2]! & 0xffff;
    if (type === T.R2T) {
      if (plen !== K.SHORT_HLEN + hd || pdo !== 0) {
        this.#drop(this.#violation("plen", `R2T with PLEN ${plen} and PDO ${pdo}; it is ${K.SHORT_HLEN + hd} and 0`));
        return 0;
      }
      this.#r2t(cccid, m[(K.RX_HDR + 8) >> 2]! >>> 16, m[(K.RX_HDR + 12) >> 2]!, m[(K.RX_HDR + 16) >> 2]!);
      return 0;
    }
    // C2HData
    const datao = m[(K.RX_HDR + 12) >> 2]!;
    const datal = m[(K.RX_HDR + 16) >> 2]!;
    const dd = this.params.ddgst ? 4 : 0;
    if (((flags & FLAG_DDGSTF) !== 0) !== (dd !== 0)) {
      this.#drop(this.#violation("ddgstf", `C2HData ${dd ? "without" : "with"} a data digest (DDGSTF), but data digests were negotiated ${dd ? "on" : "off"}`));
      return 0;
    }
    // HPDA 0 was asked for: the data follows the header (and its digest) with no padding.
    if (pdo !== K.SHORT_HLEN + hd) {
      this.#drop(this.#violation("pdo", `C2HData with PDO ${pdo}; with HPDA 0 the data starts at ${K.SHORT_HLEN + hd}`));
      return 0;
    }
    if (datal === 0 || plen !== pdo + datal + dd) {
      this.#drop(this.#violation("plen", `C2HData with DATAL ${datal} and PLEN ${plen}; PLEN must be PDO (${pdo}) + DATAL${dd ? " + 4 (DDGST)" : ""} with DATAL > 0`));
      return 0;
    }
    if (cccid >= this.depth || this.cidState[cccid] !== State.INFLIGHT) {
      this.#drop(this.#violation("cccid", `C2HData for CID ${cccid}, which is not outstanding`));
      return 0;
    }
    if (this.cidDir[cccid] !== Dir.IN) {
      this.#drop(this.#violation("direction", `C2HData for CID ${cccid}, a ${commandLabel(this.cidOpcode[cccid]!, this.qid, this.cidFctype[cccid]!)} that moves no data to the host`));
      return 0;
    }
    if (datao !== this.cidDone[cccid]) {
      this.#drop(this.#violation("data-offset", `C2HData for CID ${cccid} at DATAO ${datao}, but ${this.cidDone[cccid]} bytes arrived so far (data must come in order, without gaps or overlap)`));
      return 0;
    }
    if (datao + datal > this.cidLen[cccid]!) {
      this.#drop(this.#violation("data-range", `C2HData for CID ${cccid}: bytes ${datao}..${datao + datal} are beyond the command's ${this.cidLen[cccid]} bytes`));
      return 0;
    }
    if ((flags & FLAG_SUCCESS) !== 0) {
      if ((flags & FLAG_LAST_PDU) === 0) {
        this.#drop(this.#violation("success-flag", `C2HData for CID ${cccid} with SUCCESS but not LAST_PDU`));
        return 0;
      }
      if (this.params.sqflow) {
        this.#drop(this.#violation("success-flag", `C2HData for CID ${cccid} with SUCCESS while SQ flow control is on (the host did not disable it at Connect)`));
        return 0;
      }
    }
    this.rxCid = cccid;
    this.rxAddr = this.cidAddr[cccid]! + datao;
    this.rxLeft = datal;
    this.rxDatal = datal;
    this.rxFlags = flags;
    this.rxDdNeed = dd;
    this.rxDdHave = 0;
    this.rxMode = Rx.DATA;
    return 0;
  }

  /** The data of a C2HData PDU (and its digest) arrived. Returns 1 when it completed its command (SUCCESS). */
  #dataDone(): number {
    const cid = this.rxCid;
    const datal = this.rxDatal;
    const start = this.cidAddr[cid]! + this.cidDone[cid]!;
    this.cidDone[cid] = this.cidDone[cid]! + datal;
    if (this.rxDdNeed !== 0) {
      const want = this.misc32[K.RX_DD >> 2]!;
      const got = native().nvm_crc32c(start, datal, 0);
      // A bad data digest fails only its command (Transient Transport Error); the stream is intact.
      if (want !== got && this.cidBad[cid] === undefined) {
        this.cidBad[cid] = new DigestError(
          `queue ${this.qid} to ${this.#ctx.address}: data digest of C2HData for CID ${cid} (${datal} bytes at offset ${start - this.cidAddr[cid]!}) is 0x${want.toString(16).padStart(8, "0")}, the data's CRC-32C is 0x${got.toString(16).padStart(8, "0")}; the buffer holds what arrived (Transient Transport Error)`,
          "data",
          this.qid,
        );
      }
    }
    if ((this.rxFlags & FLAG_SUCCESS) !== 0) {
      if (this.cidDone[cid] !== this.cidLen[cid]) {
        this.#drop(this.#violation("success-flag", `C2HData for CID ${cid} ended the command with SUCCESS after ${this.cidDone[cid]} of its ${this.cidLen[cid]} bytes`));
        return 0;
      }
      // SUCCESS: the command succeeded and no CapsuleResp follows (SQ flow control is off).
      this.#complete(cid, 0, 0, 0, 0xffff);
      return 1;
    }
    return 0;
  }

  #capsuleResp(): number {
    const m = this.misc32;
    const dw0 = m[(K.RX_HDR + 8) >> 2]!;
    const dw1 = m[(K.RX_HDR + 12) >> 2]!;
    const dw2 = m[(K.RX_HDR + 16) >> 2]!;
    const dw3 = m[(K.RX_HDR + 20) >> 2]!;
    const cid = dw3 & 0xffff;
    const status = dw3 >>> 17;
    const sqhd = dw2 & 0xffff;
    if (cid >= this.depth || this.cidState[cid] !== State.INFLIGHT) {
      this.#drop(this.#violation("cid", `CapsuleResp for CID ${cid}, which is not outstanding on this queue`));
      return 0;
    }
    // SQID: a Connect that failed may name SQ 0 (Linux nvmet installs the queue only on success).
    if (dw2 >>> 16 !== this.qid && this.cidOpcode[cid] !== FABRICS_OPCODE) {
      this.#drop(this.#violation("sqid", `CapsuleResp for CID ${cid} names SQ ${dw2 >>> 16}`));
      return 0;
    }
    if (this.params.sqflow) {
      if (sqhd >= this.entries) {
        this.#drop(this.#violation("sqhd", `CapsuleResp with SQHD ${sqhd}, past the ${this.entries}-entry SQ`));
        return 0;
      }
      this.sqHead = sqhd;
    }
    if (status === 0 && this.cidDone[cid] !== this.cidLen[cid] && this.cidInCap[cid] === 0 && this.cidDir[cid] !== Dir.NONE) {
      const what = this.cidDir[cid] === Dir.IN ? "received" : "asked for by R2T";
      this.#drop(this.#violation("short-transfer", `CID ${cid} completed successfully with ${this.cidDone[cid]} of its ${this.cidLen[cid]} bytes ${what}`));
      return 0;
    }
    this.#complete(cid, status, dw0, dw1, sqhd);
    return 1;
  }

  /** The target asks for [r2to, r2to + r2tl) of command `cid`'s data: send it in H2CData PDUs of at most MAXH2CDATA. */
  #r2t(cid: number, ttag: number, r2to: number, r2tl: number): void {
    if (cid >= this.depth || this.cidState[cid] !== State.INFLIGHT) {
      this.#drop(this.#violation("cccid", `R2T for CID ${cid}, which is not outstanding`));
      return;
    }
    if (this.cidDir[cid] !== Dir.OUT || this.cidInCap[cid] === 1) {
      this.#drop(this.#violation("r2t", `R2T for CID ${cid}, whose data ${this.cidInCap[cid] === 1 ? "went in the capsule" : "does not go to the controller"}`));
      return;
    }
    if (r2to !== this.cidDone[cid] || r2tl === 0 || r2to + r2tl > this.cidLen[cid]!) {
      this.#drop(this.#violation("r2t-range", `R2T for CID ${cid} asks for bytes ${r2to}..${r2to + r2tl}; ${this.cidDone[cid]} of its ${this.cidLen[cid]} were sent`));
      return;
    }
    const n = native();
    const hd = this.params.hdgst ? 4 : 0;
    const dd = this.params.ddgst ? 4 : 0;
    const max = this.params.maxh2cdata;
    const m = this.misc32;
    const iov = this.iov32;
    const addr = this.cidAddr[cid]!;
    const gen = this.linkGen;
    for (let off = r2to, end = r2to + r2tl; off < end; ) {
      const len = Math.min(max, end - off);
      const last = off + len === end;
      const t = K.TX_HDR >> 2;
      m[t] = 0x06 | ((FLAG_HDGSTF * (hd ? 1 : 0) | FLAG_DDGSTF * (dd ? 1 : 0) | (last ? FLAG_LAST_PDU : 0)) << 8) | (K.SHORT_HLEN << 16) | ((K.SHORT_HLEN + hd) << 24);
      m[t + 1] = K.SHORT_HLEN + hd + len + dd;
      m[t + 2] = cid | (ttag << 16);
      m[t + 3] = off;
      m[t + 4] = len;
      m[t + 5] = 0;
      if (hd) m[t + 6] = n.nvm_crc32c(this.miscPtr + K.TX_HDR, K.SHORT_HLEN, 0);
      if (dd) m[K.TX_DD >> 2] = n.nvm_crc32c(addr + off, len, 0);
      const h = this.miscPtr + K.TX_HDR;
      const d = this.miscPtr + K.TX_DD;
      iov[0] = lo32(h);
      iov[1] = hi32(h);
      iov[2] = K.SHORT_HLEN + hd;
      iov[4] = lo32(addr + off);
      iov[5] = hi32(addr + off);
      iov[6] = len;
      iov[8] = lo32(d);
      iov[9] = hi32(d);
      iov[10] = dd;
      if (!this.#sendv(3) || this.linkGen !== gen) return;
      off += len;
    }
    this.cidDone[cid] = r2to + r2tl;
  }

  /** A C2HTermReq: the target ends the connection, saying why. */
  #termReq(hlen: number, plen: number): number {
    const b = this.misc8;
    const fes = b[K.RX_HDR + 8]! | (b[K.RX_HDR + 9]! << 8);
    const fei = this.misc32[(K.RX_HDR + 8) >> 2]! >>> 16 | ((b[K.RX_HDR + 12]! | (b[K.RX_HDR + 13]! << 8)) << 16);
    const ok = hlen === K.SHORT_HLEN && plen >= K.SHORT_HLEN && plen <= K.SHORT_HLEN + 128;
    const err = new ProtocolError(
      `queue ${this.qid} to ${this.#ctx.address}: the target terminated the connection (C2HTermReq, FES ${fes}: ${fesName(fes)}, FEI 0x${(fei >>> 0).toString(16)}${ok ? "" : `; malformed: HLEN ${hlen}, PLEN ${plen}`}); connection closed`,
      "terminated",
      this.qid,
    );
    this.#drop(err);
    return 0;
  }

  /** The completion of `cid`: settle it (its data, if any, has all arrived). */
  #complete(cid: number, status: number, dw0: number, dw1: number, sqhd: number): void {
    const bad = this.cidBad[cid];
    this.cidState[cid] = State.FREE;
    this.freeCids[this.freeTop++] = cid;
    this.cidBuf[cid] = undefined;
    this.inflight--;
    const mode = this.cidMode[cid];
    if (mode === Mode.HANDLER) {
      if (bad !== undefined) {
        this.cidBad[cid] = undefined;
        status = STATUS_TRANSIENT_TRANSPORT_ERROR;
      }
      const h = this.onComplete;
      if (h !== null) h(cid, status, dw0);
    } else if (mode === Mode.PROMISE) {
      const resolve = this.#resolve[cid]!;
      const reject = this.#reject[cid]!;
      this.#resolve[cid] = undefined;
      this.#reject[cid] = undefined;
      if (bad !== undefined) {
        this.cidBad[cid] = undefined;
        reject(bad);
      } else if (status === 0) resolve(dw0);
      else reject(this.#statusError(cid, status, dw0));
    } else {
      if (bad !== undefined) {
        this.cidBad[cid] = undefined;
        this.cidStatus[cid] = -2;
        this.cidError[cid] = bad;
        return;
      }
      this.cidStatus[cid] = status;
      this.cidDw0[cid] = dw0;
      this.cidDw1[cid] = dw1;
      this.cidSqhd[cid] = sqhd;
    }
    if (deferredFrees.count !== 0) releaseDeferred(this.memory);
  }

  #statusError(cid: number, status: number, dw0: number): NvmeStatusError {
    const opcode = this.cidOpcode[cid]!;
    const nlb = this.cidNlb[cid]!;
    const fabrics = opcode === FABRICS_OPCODE;
    const fctype = this.cidFctype[cid]!;
    const name = fabrics ? fabricsStatusName((status >>> 8) & 7, status & 0xff) : undefined;
    let detail = nlb > 0 ? `@ LBA ${this.cidSlba[cid]}, ${nlb} blocks` : this.cidDetail[cid];
    // Connect Invalid Parameters: DW0 says which byte (IATTR: in the data or the SQE; IPO).
    if (fabrics && (status & 0x7ff) === 0x182) detail = `${detail ? `${detail}; ` : ""}invalid ${dw0 & 0x10000 ? "connect data" : "SQE"} byte ${dw0 & 0xffff}`;
    return new NvmeStatusError(status, {
      command: commandLabel(opcode, this.qid, fctype),
      opcode,
      cid,
      sqid: this.qid,
      ...(detail !== undefined ? { detail } : {}),
      ...(name !== undefined ? { statusName: name } : {}),
    });
  }

  // ---- deadlines --------------------------------------------------------------------------------

  /**
   * Requests that waited longer than the timeout for a CID (or for the connection) fail with
   * NvmeTimeoutError; a posted command past its deadline closes the connection (so nothing more
   * lands in its buffer) and then fails, with the others outstanding on it. Returns how many.
   */
  checkTimeouts(now = performance.now()): number {
    let n = 0;
    while (this.#waiting.length > 0 && now - this.#waiting[0]!.since > this.timeoutMs) {
      n++;
      this.#waiting.shift()!.reject(
        new NvmeTimeoutError(
          `a command on queue ${this.qid} to ${this.#ctx.address} waited ${this.timeoutMs} ms ${this.fd < 0 ? "for the connection to come back" : "for a free slot"} and was never sent`,
          this.timeoutMs,
        ),
      );
    }
    for (let cid = 0; cid < this.depth; cid++) {
      if (this.cidState[cid] !== State.INFLIGHT || this.cidDeadline[cid]! > now || this.cidMode[cid] === Mode.SYNC) continue;
      n++;
      this.#expire(cid);
      break; // the connection is gone: every other command settled with it
    }
    return n;
  }

  #expire(cid: number): void {
    if (this.cidMode[cid] === Mode.HANDLER) this.onTimeout?.(cid);
    const what = commandLabel(this.cidOpcode[cid]!, this.qid, this.cidFctype[cid]!);
    const late = new NvmeTimeoutError(
      `${what} (cid ${cid}) on queue ${this.qid} to ${this.#ctx.address} did not complete within ${this.timeoutMs} ms; the queue's connection was closed, so nothing more can land in its buffer`,
      this.timeoutMs,
    );
    const others = new ConnectionError(
      `queue ${this.qid} to ${this.#ctx.address}: connection closed because ${what} (cid ${cid}) did not complete within ${this.timeoutMs} ms; this command was outstanding on it and did not complete (its data may or may not have moved)`,
      this.#ctx.address,
      this.qid,
    );
    this.#drop(others, { cid, err: late });
  }

  // ---- synchronous ------------------------------------------------------------------------------

  /** A free CID for a synchronous caller: reconnects a link that is down, waits (bounded) for one to free up. */
  #acquireSync(deadline: number): number {
    if (this.isClosed) throw new ClosedError(`queue ${this.qid} is closed`);
    if (this.fatal) throw this.fatal;
    if (this.lent && this.isLent) throw new InvalidArgumentError(`queue ${this.qid} is lent to a Worker: use it there`);
    // An idle admin connection is read by nobody: look for a close by the target before using it.
    if (this.qid === 0 && this.fd >= 0 && this.inflight === 0) this.#receive(0);
    for (;;) {
      if (this.fd < 0) {
        if (this.#ctx.reconnectNow) this.#ctx.reconnectNow(this);
        else throw this.lostWith ?? new ConnectionError(`queue ${this.qid} to ${this.#ctx.address} is not connected`, this.#ctx.address, this.qid);
        if (this.fd < 0) throw this.lostWith ?? new ConnectionError(`queue ${this.qid} to ${this.#ctx.address} could not be reconnected`, this.#ctx.address, this.qid);
      }
      const cid = this.acquire();
      if (cid >= 0) return cid;
      this.poll();
      if (this.fatal) throw this.fatal;
      if (performance.now() > deadline) throw new NvmeTimeoutError(`queue ${this.qid}: no command slot freed within ${this.timeoutMs} ms`, this.timeoutMs);
    }
  }

  /** Post with `fill`, send, and wait (bounded) for the command to settle; returns its CID's results. */
  #execSync(fill: (cid: number) => void, timeoutMs: number): number {
    const deadline = performance.now() + timeoutMs;
    const cid = this.#acquireSync(deadline);
    try {
      fill(cid);
    } catch (e) {
      if (this.cidState[cid] === State.ACQUIRED) this.release(cid);
      throw e;
    }
    this.cidMode[cid] = Mode.SYNC;
    this.cidStatus[cid] = -1;
    this.cidDeadline[cid] = deadline;
    this.submit();
    while (this.cidStatus[cid] === -1) {
      if (this.fd < 0) break; // settled by the drop (status -2)
      this.#receive(Math.min(20_000, this.pollWaitUs * 20));
      if (this.cidStatus[cid] !== -1) break;
      if (performance.now() > deadline) this.#expire(cid);
    }
    const status = this.cidStatus[cid]!;
    if (status === -2) {
      const err = this.cidError[cid]!;
      this.cidError[cid] = undefined;
      throw err;
    }
    if (status !== 0) throw this.#statusError(cid, status, this.cidDw0[cid]!);
    return cid;
  }

  rwSync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): number {
    const cid = this.#execSync((c) => this.rw(c, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags), this.timeoutMs);
    return this.cidDw0[cid]!;
  }

  commandSync(write: SqeWriter, buf?: DmaBuffer): number {
    const cid = this.#execSync((c) => this.#writeCommand(c, write, undefined), this.timeoutMs);
    void buf;
    return this.cidDw0[cid]!;
  }

  /** `write` fills the SQE (any data pointer it writes is replaced by the SGL); `data` travels with it. */
  #writeCommand(cid: number, write: SqeWriter, data: { addr: number; bytes: number; dir: number; buf: DmaBuffer | undefined } | undefined): void {
    const o = cid * K.SLOT_DWORDS + K.SQE_DW;
    write(this.stage32, o, cid);
    const opcode = this.stage32[o]! & 0xff;
    if (this.stage32[o]! >>> 16 !== cid) throw new InvalidArgumentError(`the command written for CID ${cid} carries CID ${this.stage32[o]! >>> 16}`);
    this.#setData(cid, data?.dir ?? Dir.NONE, data?.addr ?? 0, data?.bytes ?? 0, data?.buf);
    this.#post(cid, Mode.HANDLER, opcode);
    this.cidFctype[cid] = opcode === FABRICS_OPCODE ? this.stage32[o + 1]! & 0xff : 0;
  }

  /**
   * Run an admin or fabrics command synchronously, with its data in `data` (Identify, Get Log Page,
   * Connect's data...). NvmeStatusError on a status; NvmeTimeoutError past the deadline (the
   * connection is then closed, so the buffer is free again); ConnectionError / ProtocolError.
   */
  exec(c: Command, data?: TcpTransfer, opts: TcpExecOptions = {}): TcpCompletion {
    if (data) this.#checkTransfer(data);
    const cid = this.#execSync((id) => {
      this.#writeCommand(id, (sqe, o, i) => writeCommand(sqe, o, i, c), data && this.#transferOf(data));
      this.cidDetail[id] = opts.detail;
    }, opts.timeoutMs ?? this.timeoutMs);
    return { dw0: this.cidDw0[cid]!, dw1: this.cidDw1[cid]!, cid, sqhd: this.cidSqhd[cid]! };
  }

  /** exec() without waiting: for a command that may run long (Format NVM). */
  execAsync(c: Command, data?: TcpTransfer, opts: TcpExecOptions = {}): Promise<number> {
    if (data) this.#checkTransfer(data);
    return this.#async((id) => {
      this.#writeCommand(id, (sqe, o, i) => writeCommand(sqe, o, i, c), data && this.#transferOf(data));
      this.cidDetail[id] = opts.detail;
      if (opts.timeoutMs !== undefined) this.cidDeadline[id] = performance.now() + opts.timeoutMs;
    });
  }

  #checkTransfer(t: TcpTransfer): void {
    if (t.bytes > 0) this.#checkBuffer(t.buf, t.offset, t.bytes);
  }

  #transferOf(t: TcpTransfer): { addr: number; bytes: number; dir: number; buf: DmaBuffer } {
    return { addr: t.bytes > 0 ? Number(t.buf.pointer) + t.offset : 0, bytes: t.bytes, dir: t.dir === "in" ? Dir.IN : Dir.OUT, buf: t.buf };
  }

  // ---- async ------------------------------------------------------------------------------------

  rwAsync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags = 0): Promise<number> {
    try {
      this.#checkBuffer(buf, offset, bytes);
      this.#checkBlockBytes(nsid, blocks, bytes);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return this.#async((cid) => this.rw(cid, opcode, nsid, slba, blocks, buf, offset, bytes, cdw12Flags));
  }

  commandAsync(write: SqeWriter, _buf?: DmaBuffer): Promise<number> {
    return this.#async((cid) => this.#writeCommand(cid, write, undefined));
  }

  commandDataAsync(write: SqeWriter, data: Uint8Array): Promise<number> {
    if (data.length === 0 || data.length > 4096 || data.length % 4 !== 0) return Promise.reject(new InvalidArgumentError(`command data of ${data.length} bytes: 4 to 4096, a multiple of 4`));
    let page: DmaBuffer | undefined;
    try {
      page = new DmaBuffer(this.memory, 4096);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    page.bytes.set(data);
    const p = this.#async((cid) => this.#writeCommand(cid, write, { addr: Number(page.pointer), bytes: data.length, dir: Dir.OUT, buf: page }));
    // The page goes once the command settled: no byte of it can be sent after that.
    return p.finally(() => page.free());
  }

  #async(fill: (cid: number) => void): Promise<number> {
    if (this.isClosed) return Promise.reject(new ClosedError(`queue ${this.qid} is closed`));
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.lent && this.isLent) return Promise.reject(new InvalidArgumentError(`queue ${this.qid} is lent to a Worker: use it there`));
    return new Promise<number>((resolve, reject) => {
      const since = performance.now();
      const start = () => {
        if (this.isClosed) return reject(new ClosedError(`queue ${this.qid} was closed before this command was sent`));
        if (this.fatal) return reject(this.fatal);
        const cid = this.acquire();
        if (cid < 0) return void this.#waiting.unshift({ start, reject, since });
        try {
          fill(cid);
        } catch (e) {
          if (this.cidState[cid] === State.ACQUIRED) this.release(cid);
          return reject(e as Error);
        }
        this.cidMode[cid] = Mode.PROMISE;
        this.#resolve[cid] = resolve;
        this.#reject[cid] = reject;
        this.#scheduleSubmit();
        this.#startPolling();
      };
      if (this.freeTop === 0 || this.fd < 0 || this.#waiting.length > 0) {
        this.#waiting.push({ start, reject, since });
        if (this.fd < 0) this.#ctx.requestLink?.(this);
        this.#startPolling();
      } else start();
    });
  }

  #drain(): void {
    while (this.#waiting.length > 0 && this.fd >= 0 && this.freeTop > 0) {
      const before = this.#waiting.length;
      this.#waiting.shift()!.start();
      // start() put it back: the SQ is full (flow control) until a completion.
      if (this.#waiting.length >= before) break;
    }
  }

  #scheduleSubmit(): void {
    if (this.#ringPending) return;
    this.#ringPending = true;
    // One sendmsg for everything posted in this turn of the event loop.
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
      for (let i = 0; i < 8 && this.poll() === 0 && this.inflight > 0 && this.fd >= 0; i++);
      if (this.#ringPending) this.submit();
      if ((++turns & 63) === 0 || this.fd < 0) this.checkTimeouts();
      if (this.inflight > 0 || this.#waiting.length > 0) {
        // While the connection is down nothing can arrive: look again in a few milliseconds.
        if (this.fd < 0) setTimeout(loop, 5);
        else setImmediate(loop);
      } else this.#polling = false;
    };
    setImmediate(loop);
  }

  // ---- teardown ---------------------------------------------------------------------------------

  /**
   * Close the connection (commands still outstanding settle with ClosedError: nothing more can
   * arrive for them) and free the staging memory. Idempotent.
   */
  free(): void {
    if (this.isClosed) return;
    const err = new ClosedError(`queue ${this.qid} was closed with commands outstanding`);
    this.isClosed = true;
    if (this.lent && this.isLent && this.fd >= 0) {
      // Still lent (the owner must not close before the Worker did): shut the connection down so
      // the Worker's reads end, but leave the descriptor open: closed, its number could be reused
      // by another file the Worker would then read.
      native().nvm_tcp_shutdown(this.fd);
      this.fd = -1;
    } else this.#drop(err, undefined, true);
    this.fatal = err;
    for (const w of this.#waiting.splice(0)) w.reject(err);
    this.cidState.fill(State.CLOSED);
    this.freeTop = 0;
    const n = native();
    n.nvm_host_free(this.stagePtr as unknown as Pointer);
    n.nvm_host_free(this.miscPtr as unknown as Pointer);
    n.nvm_host_free(this.iovPtr as unknown as Pointer);
    removeDmaUser(this.memory, this);
  }
}

/** Errors a command of a TCP queue may settle with besides a status: for callers that branch. */
export function isLinkError(e: unknown): boolean {
  return e instanceof ConnectionError || e instanceof ProtocolError || (e instanceof DigestError && e.digest === "header") || (e instanceof NvmeError && e.code === "ERR_NVME_TIMEOUT");
}
