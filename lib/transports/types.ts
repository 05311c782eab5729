/**
 * What the NVMe logic above (Controller, Namespace, the tools) asks of a transport, whatever it is:
 * PCIe (registers by MMIO, rings in DMA memory, doorbells: lib/io.ts, lib/transports/pcie/) or
 * TCP (registers by Property Get/Set, capsules over a socket per queue: lib/transports/tcp/).
 *
 * The I/O queue interface is the part of IoQueue that does not depend on memory rings: CIDs, the
 * Read/Write/Compare path (rw() builds the command in place: an SQ slot on PCIe, a staged
 * CapsuleCmd on TCP), batches (submit), completions (poll, onComplete), and the sync and async
 * calls. Writing SQEs yourself (`q.sq.sqe`, `q.slot`, `post()`), PRP/SGL list pages
 * (`listBuffer()`) and completion queues shared by several SQs are PCIe's only.
 */
import type { DmaBuffer } from "../dma.ts";
import type { Completion } from "../queue.ts";
import type { Command } from "../spec/commands.ts";
import type { Capabilities } from "../spec/registers.ts";
import type { IdentifyController } from "../spec/identify.ts";

/** Which transport a controller is reached through. */
export type TransportKind = "pcie" | "tcp";

/** A completion for the low-level handler: called once per command, with the 15-bit status (0 = success). */
export type CompletionHandler = (cid: number, status: number, dw0: number) => void;

/** Writes a command into the 16 dwords at `o` of `sqe` for command identifier `cid`. */
export type SqeWriter = (sqe: Uint32Array, o: number, cid: number) => void;

export interface NvmeIoQueue {
  readonly transport: TransportKind;
  readonly qid: number;
  /** Commands that may be outstanding at once. */
  readonly depth: number;
  readonly timeoutMs: number;
  /** Largest transfer one command may move, in bytes. */
  readonly maxTransfer: number;
  readonly closed: boolean;
  /** Commands posted and not yet settled. */
  readonly outstanding: number;
  onComplete: CompletionHandler | null;
  onTimeout: ((cid: number) => void) | null;

  // low level: no allocation, no promise per command
  acquire(): number;
  release(cid: number): void;
  rw(cid: number, opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags?: number): void;
  /**
   * The caller just read performance.now() (`now`): the commands it posts until the next submit()
   * count their deadlines from it, and posting reads no clock of its own. Ignored once a command
   * of the batch was posted.
   */
  batchTime(now: number): void;
  submit(): void;
  poll(): number;
  checkTimeouts(now?: number): number;

  // synchronous
  rwSync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags?: number): number;
  commandSync(write: SqeWriter, buf?: DmaBuffer): number;

  // async
  rwAsync(opcode: number, nsid: number, slba: number, blocks: number, buf: DmaBuffer, offset: number, bytes: number, cdw12Flags?: number): Promise<number>;
  commandAsync(write: SqeWriter, buf?: DmaBuffer): Promise<number>;
  /**
   * A command whose host-to-controller data is a small structure (at most 4096 bytes: Dataset
   * Management ranges): `write` fills the SQE without a data pointer, the queue carries `data`
   * (PCIe: the CID's own list page as PRP1; TCP: in the capsule, or by R2T).
   */
  commandDataAsync(write: SqeWriter, data: Uint8Array): Promise<number>;

  /** @internal The namespace was formatted: look its LBA size up again. */
  forgetLbaSize(): void;
}

/** What every transport's open takes. */
export interface TransportOptions {
  /** Per-command timeout in milliseconds. Defaults to 10 000. */
  readonly timeoutMs?: number;
}

/** Registers as read, for diagnostics and tests (over TCP: Property Get; AQA does not exist there and reads 0). */
export interface RegisterSnapshot {
  readonly cap: bigint;
  readonly vs: number;
  readonly cc: number;
  readonly csts: number;
  readonly aqa: number;
}

/** What part of a dma-buf Controller.mapDmaBuf() imports. */
export interface MapDmaBufOptions {
  /** Byte offset into the dma-buf, a multiple of 4096. Defaults to 0. */
  readonly offset?: number;
  /** Bytes to import, a multiple of 4096. Defaults to the rest of the dma-buf from `offset`. */
  readonly size?: number;
}

/** The data an admin command moves besides its SQE: to the host (its length), or to the controller. */
export interface AdminTransfer {
  /** Bytes the controller returns (Identify 4096, Get Log Page NUMD x 4, Get Features data). */
  readonly toHost?: number;
  /** Bytes the host sends (Set Features data), at most 4096. */
  readonly toController?: Uint8Array;
}

export interface AdminResult {
  readonly dw0: number;
  readonly dw1: number;
  readonly cid: number;
  /** The data returned (a copy the caller owns), when AdminTransfer.toHost was given. */
  readonly data?: Uint8Array;
}

export interface AdminExecOptions {
  /** Milliseconds before NvmeTimeoutError. Defaults to the controller's timeout. */
  readonly timeoutMs?: number;
  /** Text for error messages, e.g. "CNS 0x01". */
  readonly detail?: string;
}

/** An admin command waited for asynchronously (adminCommandAsync). */
export interface AdminAsyncOptions extends AdminExecOptions {
  /**
   * Called between looks at the completion (every 1 to 50 ms) with the milliseconds since the
   * command was sent: progress reports, other admin commands. Defaults to none.
   */
  readonly onWait?: (elapsedMs: number) => void;
}

/** What the Controller tells its transport once it identified the controller. */
export interface ControllerHooks {
  /** LBA data size of a namespace commands may be sent to (throws a typed error otherwise). */
  readonly lbaSize: (nsid: number) => number;
  /** Largest transfer of one command in bytes. */
  readonly maxTransfer: number;
  /** Identify Controller SGLS. */
  readonly sgls: number;
  /** Identify Controller RTD3E (µs): the shutdown bound. */
  readonly rtd3e: number;
  /** The whole Identify Controller (IOCCSZ, KAS, MAXCMD... for transports that need them). */
  readonly info: IdentifyController;
}

/**
 * What every transport's createIoQueue() takes (PCIe's IoQueueOptions adds a completion queue to
 * share). Here rather than in io.ts so that io.ts and the transports share it without a cycle.
 */
export interface QueueOptions {
  /** Entries in the SQ (and in its CQ when one is created for it): 2 to CAP.MQES+1. Defaults to 256. */
  readonly entries?: number;
  /** Queue id; defaults to the lowest free one. */
  readonly qid?: number;
  /** Per-command timeout in ms. Defaults to the controller's (10 000). */
  readonly timeoutMs?: number;
  /** Data pointers: PRPs, or SGLs where Identify Controller SGLS says they are supported. Defaults to "prp". */
  readonly dataPointer?: "prp" | "sgl";
  /** How the async API waits for completions on this queue. Defaults to the controller's (PollingOptions). */
  readonly polling?: PollingOptions;
}

/**
 * How the async API's poller waits for completions. "adaptive": it spins (yielding to the event
 * loop between turns) for `spinUs` after the last completion or submission, which covers a fast
 * drive's latency, then polls once per `sleepMs` timer tick, so a slow command does not keep a core
 * busy. "spin": it never sleeps (the lowest latency for slow commands, a core at 100 % while
 * anything is outstanding).
 */
export interface PollingOptions {
  /** Defaults to "adaptive". */
  readonly mode?: "adaptive" | "spin";
  /** Microseconds of spinning after activity before sleeping. Defaults to 500. */
  readonly spinUs?: number;
  /** Milliseconds between polls once sleeping (timer granularity: 1). Defaults to 1. */
  readonly sleepMs?: number;
}

/**
 * I/O queues whose rings another process owns (a client of lib/share/server.ts): created and
 * deleted through this controller's admin queue, with ids this controller's own queues never take.
 * Only transports with memory rings have it (PCIe).
 */
export interface ForeignQueueHost {
  /** Reserve a free SQ id and CQ id (none of ours, none reserved before). InvalidArgumentError when none is left. */
  reserveForeignQueue(): { sqid: number; cqid: number };
  /** Give back ids reserveForeignQueue() returned that createForeignQueue() did not use (or whose queue is deleted). */
  releaseForeignQueue(sqid: number, cqid: number): void;
  /** Create I/O CQ `cqid` at `cqBus`, then I/O SQ `sqid` at `sqBus` bound to it (ids reserved first). */
  createForeignQueue(sqid: number, cqid: number, entries: number, sqBus: number, cqBus: number, opts?: AdminExecOptions): void;
  /**
   * Delete I/O SQ `sqid` (the controller ends what is outstanding on it first), then CQ `cqid`, and
   * release both ids. Once it returns the controller no longer reaches the rings or any command's
   * data. A status error (the queue was lost to a controller reset) still releases the ids.
   */
  deleteForeignQueue(sqid: number, cqid: number, opts?: AdminExecOptions): void;
}

/**
 * A controller reached through one transport, brought to CSTS.RDY = 1 by its open: what the
 * Controller's NVMe logic runs on. Each transport keeps its own recovery (PCIe: Abort, then a
 * controller reset; TCP: the connection closed, then a reconnect).
 */
export interface ControllerTransport {
  /**
   * Why this transport lacks `what`, one of the things only the owner of a PCIe controller has (its
   * admin queue pair, completion queues of their own, lending a queue to a Worker): an error that
   * says what to do instead. Optional: the Controller's generic UnsupportedError otherwise.
   */
  unsupported?(what: string): Error;
  readonly kind: TransportKind;
  /** How messages name the controller: its PCI address or device node, or "host:port/subnqn". */
  readonly name: string;
  /** CAP, read by MMIO or Property Get. */
  readonly cap: Capabilities;
  /** VS, raw. */
  readonly vs: number;
  readonly timeoutMs: number;
  /** Largest transfer of one command the transport itself allows (TCP: MAXH2CDATA); Infinity for none. */
  readonly transferCap: number;
  readonly closed: boolean;
  /** How many times reset() (or, over TCP, a reconnect) brought the controller back. */
  readonly resets: number;
  readonly abortGraceMs: number;
  configure(hooks: ControllerHooks): void;
  /** Undo the open when the Controller could not finish it (its Identify failed). */
  abortOpen(): void;
  /** Throws ClosedError after close(), or why the controller refuses commands now. */
  check(): void;
  registers(): RegisterSnapshot;
  adminCommand(c: Command, opts?: AdminExecOptions): Completion;
  adminData(c: Command, data: AdminTransfer | undefined, opts?: AdminExecOptions): AdminResult;
  adminCommandAsync(c: Command, opts?: AdminAsyncOptions): Promise<Completion>;
  setNumberOfQueues(sqs: number, cqs: number): { sqs: number; cqs: number };
  ioQueuesGranted(): { sqs: number; cqs: number };
  createIoQueue(opts?: QueueOptions & { readonly cq?: unknown }): NvmeIoQueue;
  deleteIoQueue(q: NvmeIoQueue): void;
  ioQueues(): Iterable<NvmeIoQueue>;
  /** I/O queue `qid` is lent to a Worker. */
  isLent(qid: number): boolean;
  allocBuffer(size: number): DmaBuffer;
  mapDmaBuf(fd: number, opts: MapDmaBufOptions): DmaBuffer;
  /** Free `resource` after a command that used it failed with `error`, or keep it while the controller may still reach it. */
  releaseAfter(error: unknown, resource: { free(): void }): void;
  reset(reason?: Error): void;
  close(): void;
}
