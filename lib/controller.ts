/**
 * A controller, whatever reaches it: the NVMe logic (Identify, features, log pages, namespaces
 * and their formats, Format NVM, errors, timeouts) over one transport (lib/transports/): PCIe
 * (registers by MMIO, queues in DMA memory with doorbells) or TCP (registers by Property Get/Set,
 * capsules over a connection per queue). Nothing here branches on the transport; what differs
 * lives below ControllerTransport. Release on close(), on normal exit and on SIGINT/SIGTERM/SIGHUP.
 *
 *   Controller.open("05:00.0")                                        PCIe (sysfs, VFIO, disnvm)
 *   Controller.open("nvme+tcp://10.0.0.5:4420/nqn.2024-01.io.x:sub1")  NVMe/TCP
 *   Controller.discover("nvme+tcp://10.0.0.5:4420")                    the subsystems a target offers
 *   Controller.open("unix:/run/libnvm/0000:05:00.0.sock")              served by another process (lib/share)
 *   Controller.open("smartio-rpc:80000")                               served by a process of a SmartIO cluster
 */
import { closeSync } from "node:fs";
import { ClosedError, InvalidArgumentError, NvmeStatusError, UnsupportedError } from "./errors.ts";
import type { DmaBuffer } from "./dma.ts";
import type { QueueLease } from "./lease.ts";
import type { QueuePair, Completion, ExecOptions } from "./queue.ts";
import type { IoCompletionQueue, IoQueue, IoQueueOptions } from "./io.ts";
import type { Backend } from "./backends/types.ts";
import * as cmd from "./spec/commands.ts";
import type { Capabilities } from "./spec/registers.ts";
import { mdtsBytes, parseIdentifyController, parseIdentifyNamespace, parseNamespaceList } from "./spec/identify.ts";
import type { IdentifyController, IdentifyNamespace } from "./spec/identify.ts";
import { LID_ERROR, LID_FW_SLOT, LID_SMART, parseErrorLog, parseFirmwareSlotLog, parseSmartLog } from "./spec/log.ts";
import { PcieTransport, readRegisters, type PcieOptions } from "./transports/pcie/transport.ts";
import { TcpTransport, discover, type DiscoveryResult, type TcpOptions } from "./transports/tcp/transport.ts";
import type { TcpQueue } from "./transports/tcp/queue.ts";
import { isTcpTarget } from "./transports/tcp/uri.ts";
import { ShareClientTransport, type ShareClientOptions } from "./share/client.ts";
import { unixPath } from "./share/link.ts";
import { connectSisci, sisciRpcFdid } from "./share/sisci-link.ts";
import type { AdminAsyncOptions, AdminExecOptions, AdminResult, AdminTransfer, ControllerTransport, ForeignQueueHost, MapDmaBufOptions, NvmeIoQueue, RegisterSnapshot, TransportKind } from "./transports/types.ts";

const HOST_PAGE_SHIFT = 12;

export type { AdminAsyncOptions, MapDmaBufOptions, RegisterSnapshot } from "./transports/types.ts";
export { readRegisters } from "./transports/pcie/transport.ts";

export interface ControllerOptions extends PcieOptions, TcpOptions, ShareClientOptions {
  /** Close this controller on SIGINT, SIGTERM and SIGHUP, then exit with 128+signal. Defaults to true. */
  readonly handleSignals?: boolean;
  /** Largest transfer per command when the controller sets no limit (MDTS = 0). Defaults to 2 MiB. */
  readonly maxTransferBytes?: number;
}

/** What Controller.serve() returns: a ShareServer, seen here without importing its layer. */
export interface Serving {
  /** unix:PATH, what clients open. */
  readonly address: string;
  close(): void;
}

/** Set by lib/share/server.ts when it loads: the serving layer sits above this module. */
let serveImpl: ((ctrl: Controller, opts: object) => Serving) | undefined;

/** For lib/share/server.ts: how Controller.serve() starts a server. */
export function registerServe(f: (ctrl: Controller, opts: object) => Serving): void {
  serveImpl = f;
}

/** An I/O queue of either transport: PCIe's IoQueue (rings, doorbells) or TCP's TcpQueue (a connection). */
export type AnyIoQueue = IoQueue | TcpQueue;

/**
 * Memory another driver exports as a dma-buf: a CudaMemory (lib/cuda), or anything with the same
 * two members. Controller.mapCudaMemory() takes it; the CUDA layer stays out of this module.
 */
export interface DmaBufExporter {
  /** Bytes, whole 4 KiB pages. */
  readonly size: number;
  /** A new dma-buf file descriptor for the whole memory; the caller owns (and closes) it. */
  exportDmaBuf(): number;
}

export { FORMAT_TIMEOUT_MS } from "./spec/commands.ts";
/** The largest feature data one Get/Set Features moves here: one page (every feature of Base 2.0 fits). */
const FEATURE_DATA_MAX = 4096;

/** Progress of a Format NVM, reported about once a second. */
export interface FormatProgress {
  readonly elapsedMs: number;
  /**
   * Percent of the namespace still to format, from Identify Namespace FPI bits 6:0; null when the
   * controller does not report it (FPI bit 7 clear) or the format covers every namespace.
   */
  readonly percentRemaining: number | null;
}

export interface FormatOptions extends cmd.FormatNvmFields {
  /**
   * Milliseconds the format may take; then it is aborted and, when the controller does not end it
   * within abortGraceMs, the controller is reset. Defaults to FORMAT_TIMEOUT_MS (10 minutes).
   */
  readonly timeoutMs?: number;
  /** Called about once a second while the format runs. Defaults to none. */
  readonly onProgress?: (p: FormatProgress) => void;
}

export interface GetFeatureOptions {
  /** Select (SEL, CDW10 10:08): current, default, saved, supported capabilities. Defaults to 0 (current). */
  readonly sel?: number;
  /** Feature specific CDW11. Defaults to 0. */
  readonly cdw11?: number;
  /** For namespace specific features. Defaults to 0. */
  readonly nsid?: number;
  /** Bytes of data the feature returns (Timestamp 8, LBA Range Type 4096, ...), up to 4096. Defaults to 0. */
  readonly dataLength?: number;
}

export interface SetFeatureOptions {
  /** Feature specific CDW11 (the value of most features). Defaults to 0. */
  readonly cdw11?: number;
  /** Feature specific CDW12. Defaults to 0. */
  readonly cdw12?: number;
  /** Save (SV, CDW10 bit 31): keep the value across power cycles. Defaults to false. */
  readonly save?: boolean;
  /** For namespace specific features. Defaults to 0. */
  readonly nsid?: number;
  /** The feature's data structure, up to 4096 bytes. Defaults to none. */
  readonly data?: Uint8Array;
}

export interface FeatureResult {
  /** Completion DW0: the value of most features. */
  readonly dw0: number;
  /** The data returned (GetFeatureOptions.dataLength bytes), or undefined. */
  readonly data: Uint8Array | undefined;
}

export class Controller {
  /** The transport underneath: PcieTransport or TcpTransport. */
  readonly #t: ControllerTransport;
  readonly cap: Capabilities;
  /** Version register (VS), raw. */
  readonly vs: number;
  /** Memory page size in use (CC.MPS): the host page size, 4096. */
  readonly pageSize = 1 << HOST_PAGE_SHIFT;
  /** Identify Controller, read during open(). */
  readonly info: IdentifyController;
  readonly timeoutMs: number;
  /** Largest transfer of one command in bytes: MDTS, or `maxTransferBytes` when MDTS is 0 (no limit); over TCP at most MAXH2CDATA. */
  readonly maxTransfer: number;
  #defaultQueue: AnyIoQueue | undefined;
  /** LBA data size of namespaces checked for use (namespaceFormat()), by NSID. */
  readonly #lbaSizes = new Map<number, number>();
  /** The NSID a Format NVM is running on ("all" for FFFFFFFFh): its I/O is refused meanwhile. */
  #formatting: number | "all" | undefined;
  /** What beforeClose() registered. */
  readonly #closeHooks = new Set<() => void>();

  /**
   * Open a controller and bring it up (CC.EN = 1, CSTS.RDY = 1, bounded by CAP.TO), then identify it:
   * - a PCI address (05:00.0) or /dev/disnvmN, or pcie://0000:05:00.0?backend=vfio: PCIe, through
   *   the backend `opts.backend` picks (resolveController): disable, program AQA/ASQ/ACQ, enable;
   * - nvme+tcp://HOST[:PORT]/SUBNQN[?options] (or SPDK's "trtype:TCP traddr:... trsvcid:...
   *   subnqn:..."): NVMe/TCP: connect the admin queue (ICReq, Connect), properties, enable. Without
   *   a SUBNQN it opens the target's discovery controller (Controller.discover() lists subsystems);
   * - unix:PATH: a controller another process serves (examples/serve.ts, lib/share/server.ts): admin
   *   commands go through that server, I/O queues live in this process's memory and are driven
   *   from here as any PCIe queue;
   * - smartio-rpc:<fdid>: the same across a Dolphin SmartIO cluster: the controller borrowed as
   *   fabric device <fdid> (hex) is served by a process on any host of it (examples/serve.ts
   *   --ctrl=smartio:<fdid> --sisci), requests travel as SISCI data interrupts, and this process's
   *   queues and data are SISCI segments mapped for the device.
   */
  static open(target: string, opts: ControllerOptions = {}): Controller {
    const socket = unixPath(target);
    const fdid = socket === undefined ? sisciRpcFdid(target) : undefined;
    const t: ControllerTransport =
      socket !== undefined
        ? ShareClientTransport.connect(socket, opts)
        : fdid !== undefined
          ? ShareClientTransport.over(connectSisci(fdid, opts.connectTimeoutMs ?? opts.timeoutMs ?? 10_000), opts)
          : isTcpTarget(target)
          ? TcpTransport.connect(target, opts)
          : PcieTransport.open(pcieTarget(target, opts), pcieOptions(target, opts));
    return new Controller(t, opts);
  }

  /** Bring up the PCIe controller behind an already opened backend; the controller owns it from here on. */
  static openBackend(backend: Backend, opts: ControllerOptions = {}): Controller {
    return new Controller(PcieTransport.openBackend(backend, opts), opts);
  }

  /**
   * The Discovery Log Page of an NVMe/TCP target (nvme+tcp://HOST[:PORT], port 8009 by default):
   * every subsystem (and referral) it offers this host, each with the URI that opens it.
   */
  static discover(target: string, opts: ControllerOptions = {}): DiscoveryResult {
    return discover(target, opts);
  }

  private constructor(t: ControllerTransport, opts: ControllerOptions) {
    this.#t = t;
    this.timeoutMs = t.timeoutMs;
    this.cap = t.cap;
    this.vs = t.vs;
    try {
      this.info = parseIdentifyController(this.#identify(cmd.CNS_CONTROLLER, 0));
      const limit = opts.maxTransferBytes ?? 2 << 20;
      this.maxTransfer = Math.min(mdtsBytes(this.info.mdts, this.cap.minPageSize) ?? limit, t.transferCap);
    } catch (e) {
      t.abortOpen();
      throw e;
    }
    t.configure({ lbaSize: (nsid) => this.#lbaSize(nsid), maxTransfer: this.maxTransfer, sgls: this.info.sgls, rtd3e: this.info.rtd3e, info: this.info });
    track(this, opts.handleSignals ?? true);
  }

  /** "pcie" or "tcp". */
  get transport(): TransportKind {
    return this.#t.kind;
  }

  /** The PCIe backend (sysfs, VFIO, disnvm) reaching the controller. UnsupportedError over TCP. */
  get backend(): Backend {
    if (this.#t instanceof ShareClientTransport) return this.#t.backend;
    return this.#pcie("backend").backend;
  }

  /** The PCIe admin queue pair (rings in DMA memory). UnsupportedError over TCP. */
  get admin(): QueuePair {
    return this.#pcie("the admin queue pair").admin;
  }

  /** The TCP transport (connections, keep-alive, reconnects). UnsupportedError over PCIe. */
  get tcp(): TcpTransport {
    if (this.#t instanceof TcpTransport) return this.#t;
    throw new UnsupportedError(`${this.name} is reached over PCIe, not NVMe/TCP`);
  }

  #pcie(what: string): PcieTransport {
    if (this.#t instanceof PcieTransport) return this.#t;
    const why = this.#t.unsupported?.(what);
    if (why) throw why;
    throw new UnsupportedError(`${what}: ${this.name} is reached over ${this.#t.kind.toUpperCase()}, which has no such thing (it is PCIe only)`);
  }

  get closed(): boolean {
    return this.#t.closed;
  }

  /**
   * Own this controller and serve it to other processes too (lib/share/server.ts): the admin queue
   * over a Unix socket, each client's I/O queues at its own memory. Returns the ShareServer
   * (ShareServer.listen(ctrl, opts) is the same call); close it before the controller. Options are
   * ShareServerOptions (socket, uids, allow, queues).
   */
  serve(opts: object = {}): Serving {
    if (!serveImpl) throw new UnsupportedError("serving is lib/share/server.ts's: import libnvm (its index), or that module, before calling serve()");
    return serveImpl(this, opts);
  }

  /**
   * Run `fn` at the start of close(), before any queue is deleted, memory freed or BAR0 unmapped:
   * for layers that lend this controller's queues and memory to executors of their own (lib/gpu
   * stops its executors and releases its GPU registrations there). `fn` must be bounded and must
   * not throw. Returns a function that removes it.
   */
  beforeClose(fn: () => void): () => void {
    this.#closeHooks.add(fn);
    return () => void this.#closeHooks.delete(fn);
  }

  /** After a command's deadline and its Abort, how long before the controller is reset (ms; PCIe). */
  get abortGraceMs(): number {
    return this.#t.abortGraceMs;
  }

  get name(): string {
    return this.#t.name;
  }

  #check(): void {
    this.#t.check();
  }

  /** Read the controller registers without changing anything (over TCP: Property Get; AQA reads 0). */
  registers(): RegisterSnapshot {
    return this.#t.registers();
  }

  // ---- admin commands -------------------------------------------------------------------

  /** Run an admin command without data synchronously; NvmeStatusError on a non-zero status. */
  adminCommand(c: cmd.Command, opts?: ExecOptions): Completion {
    this.#check();
    return this.#t.adminCommand(c, opts);
  }

  /**
   * @internal Run an admin command with its data (to the host: a copy comes back; to the
   * controller: at most 4096 bytes). A non-zero status throws NvmeStatusError. For layers that
   * forward commands (lib/share/server.ts); applications use the named methods.
   */
  adminData(c: cmd.Command, data: AdminTransfer | undefined, opts?: AdminExecOptions): AdminResult {
    this.#check();
    return this.#t.adminData(c, data, opts);
  }

  /** @internal I/O queues other processes own, created through this controller (lib/share/server.ts). PCIe only. */
  foreignQueues(): ForeignQueueHost {
    return this.#pcie("queues in another process's memory");
  }

  #identify(cns: number, nsid: number): Uint8Array {
    const r = this.#t.adminData(cmd.identify(cns, nsid, 0), { toHost: 4096 }, { detail: `CNS 0x${cns.toString(16).padStart(2, "0")} NSID ${nsid}` });
    return r.data!;
  }

  identifyController(): IdentifyController {
    this.#check();
    return parseIdentifyController(this.#identify(cmd.CNS_CONTROLLER, 0));
  }

  /** Identify Namespace (CNS 00h). An inactive NSID gives a structure of zeros (NSZE 0). */
  identifyNamespace(nsid: number): IdentifyNamespace {
    this.#checkNsid(nsid);
    return parseIdentifyNamespace(this.#identify(cmd.CNS_NAMESPACE, nsid));
  }

  /**
   * Identify Namespace, refused unless commands can be sent to the namespace: it is active and
   * formatted without metadata and without end-to-end protection. A metadata format would make the
   * controller move blocks x (LBA size + metadata size) bytes, or read metadata from MPTR, which
   * libnvm does not set up yet. Its LBA size is then what I/O queues check byte counts against.
   */
  namespaceFormat(nsid: number): IdentifyNamespace {
    const info = this.identifyNamespace(nsid);
    if (!info.isActive) {
      this.#lbaSizes.delete(nsid);
      throw new InvalidArgumentError(`namespace ${nsid} on ${this.name} is not active (NSZE 0): list the active ones with libnvm list-ns`);
    }
    if (info.metadataSize > 0 || (info.dps & 0x7) !== 0) {
      this.#lbaSizes.delete(nsid);
      const fmt = `LBA format ${info.formatIndex}: ${info.lbaSize}-byte blocks with ${info.metadataSize} bytes of ${info.extendedMetadata ? "extended (interleaved)" : "separate"} metadata${(info.dps & 0x7) !== 0 ? `, protection information type ${info.dps & 0x7}` : ""}`;
      throw new UnsupportedError(
        `namespace ${nsid} on ${this.name} is formatted with metadata (${fmt}); libnvm does not transfer metadata or protection information yet: reformat it to a format without metadata (nvme format --lbaf=N with ms 0) or use another namespace`,
      );
    }
    this.#lbaSizes.set(nsid, info.lbaSize);
    return info;
  }

  /** LBA data size of `nsid` for an I/O queue's checks: cached once namespaceFormat() accepted it. */
  #lbaSize(nsid: number): number {
    if (this.#formatting === "all" || this.#formatting === nsid) {
      throw new InvalidArgumentError(`namespace ${nsid} on ${this.name} is being formatted: wait for formatNvm() to end, then create its Namespace again`);
    }
    return this.#lbaSizes.get(nsid) ?? this.namespaceFormat(nsid).lbaSize;
  }

  /**
   * Forget the LBA size of `nsid` (every namespace when undefined), here and in every I/O queue's
   * one-entry cache: the next command to it identifies the namespace again, so byte counts are
   * checked against the format it has now, never against the one it had.
   */
  #forgetLbaSizes(nsid: number | undefined): void {
    if (nsid === undefined) this.#lbaSizes.clear();
    else this.#lbaSizes.delete(nsid);
    for (const q of this.#t.ioQueues()) q.forgetLbaSize();
  }

  /** The LBA sizes accepted so far, for a queue lent to another thread (it cannot identify). */
  get knownLbaSizes(): ReadonlyMap<number, number> {
    return this.#lbaSizes;
  }

  /** Active Namespace ID list (CNS 02h), ascending. */
  activeNamespaces(): number[] {
    this.#check();
    return parseNamespaceList(this.#identify(cmd.CNS_ACTIVE_NAMESPACES, 0));
  }

  #checkNsid(nsid: number): void {
    this.#check();
    if (this.info.cntrltype === 2) {
      throw new InvalidArgumentError(`${this.name} is a discovery controller: it has no namespaces; open one of the subsystems Controller.discover() (libnvm discover) lists`);
    }
    if (!Number.isInteger(nsid) || nsid < 1 || nsid > this.info.nn) {
      throw new InvalidArgumentError(`namespace ${nsid} does not exist: this controller has NSIDs 1 to ${this.info.nn} (NN)`);
    }
  }

  /** Get Features: completion DW0 only (getFeature() for data-returning features). */
  getFeatures(fid: number, opts: { sel?: number; cdw11?: number; nsid?: number } = {}): number {
    return this.adminCommand(cmd.getFeatures(fid, opts.sel, opts.cdw11, opts.nsid)).dw0;
  }

  /** Set Features: CDW11 only (setFeature() for CDW12 or a data structure). */
  setFeatures(fid: number, cdw11: number, opts: { save?: boolean; nsid?: number } = {}): number {
    return this.adminCommand(cmd.setFeatures(fid, cdw11, opts.save, opts.nsid)).dw0;
  }

  #checkFeature(fid: number, dataLength: number): void {
    if (!Number.isInteger(fid) || fid < 0 || fid > 0xff) throw new InvalidArgumentError(`feature identifier ${fid} is not an integer in 0..255 (CDW10 07:00)`);
    if (!Number.isInteger(dataLength) || dataLength < 0 || dataLength > FEATURE_DATA_MAX) {
      throw new InvalidArgumentError(`feature data of ${dataLength} bytes: libnvm moves 0 to ${FEATURE_DATA_MAX} bytes (one page)`);
    }
  }

  /**
   * Get Features (Base 2.0, 5.15) with everything the command carries: SEL, CDW11, NSID and the
   * data of features that return a structure. A feature the controller does not support fails
   * with its own status (NvmeStatusError, e.g. Invalid Field in Command).
   */
  getFeature(fid: number, opts: GetFeatureOptions = {}): FeatureResult {
    const bytes = opts.dataLength ?? 0;
    this.#checkFeature(fid, bytes);
    const sel = opts.sel ?? cmd.SEL_CURRENT;
    if (!Number.isInteger(sel) || sel < 0 || sel > 3) throw new InvalidArgumentError(`Get Features select ${sel}: 0 current, 1 default, 2 saved, 3 supported capabilities`);
    this.#check();
    const c = cmd.getFeatures(fid, sel, opts.cdw11 ?? 0, opts.nsid ?? 0);
    const detail = `FID 0x${fid.toString(16).padStart(2, "0")} (${cmd.featureName(fid)})`;
    const r = this.#t.adminData(c, bytes > 0 ? { toHost: bytes } : undefined, { detail });
    return { dw0: r.dw0, data: bytes > 0 ? r.data : undefined };
  }

  /** Set Features (Base 2.0, 5.27): CDW11, CDW12, Save, NSID and an optional data structure. */
  setFeature(fid: number, opts: SetFeatureOptions = {}): FeatureResult {
    const bytes = opts.data?.byteLength ?? 0;
    this.#checkFeature(fid, bytes);
    this.#check();
    const c = cmd.setFeatures(fid, opts.cdw11 ?? 0, opts.save ?? false, opts.nsid ?? 0, 0, opts.cdw12 ?? 0);
    const detail = `FID 0x${fid.toString(16).padStart(2, "0")} (${cmd.featureName(fid)})`;
    const r = this.#t.adminData(c, bytes > 0 ? { toController: opts.data! } : undefined, { detail });
    return { dw0: r.dw0, data: undefined };
  }

  /**
   * Identify with any CNS: a copy of the 4096-byte structure as the controller returned it (for
   * tools that print raw fields or save it). CNTID is 0.
   */
  identify(cns: number, nsid = 0): Uint8Array {
    this.#check();
    if (!Number.isInteger(cns) || cns < 0 || cns > 0xff) throw new InvalidArgumentError(`Identify CNS ${cns} is not an integer in 0..255`);
    if (!Number.isInteger(nsid) || nsid < 0 || nsid > 0xffffffff) throw new InvalidArgumentError(`Identify NSID ${nsid} is not a 32-bit value`);
    return this.#identify(cns, nsid).slice();
  }

  /**
   * Run an admin command without blocking the event loop (Format NVM, Sanitize), bounded by
   * `opts.timeoutMs` (default the controller's). What happens at the deadline is the transport's
   * recovery: over PCIe Abort, then a reset when the controller does not end it within
   * abortGraceMs; over TCP the admin connection is closed (so nothing more lands anywhere) and the
   * controller reconnects. A command ended that way rejects with NvmeTimeoutError; any other
   * status with NvmeStatusError.
   */
  async adminCommandAsync(c: cmd.Command, opts: AdminAsyncOptions = {}): Promise<Completion> {
    this.#check();
    return this.#t.adminCommandAsync(c, opts);
  }

  /**
   * Format NVM (Base 2.0, 5.23) on namespace `nsid`, or on every namespace with 0xFFFFFFFF: a new
   * LBA format (`lbaf`, with or without metadata), optionally a secure erase (`ses`). Sent with
   * adminCommandAsync(), so other queues' pollers keep running; bounded by `timeoutMs` (10 minutes
   * by default) with the transport's recovery. Every LBA size libnvm cached for the namespace is
   * forgotten, so I/O is checked against the new format; I/O to it is refused while the format
   * runs. Existing Namespace objects keep the old geometry: create them again. Returns the
   * namespace's Identify Namespace after the format (undefined for every namespace).
   */
  async formatNvm(nsid: number, opts: FormatOptions): Promise<IdentifyNamespace | undefined> {
    this.#check();
    const all = nsid === 0xffffffff;
    if (!all) this.#checkNsid(nsid);
    if (this.#formatting !== undefined) throw new InvalidArgumentError(`a Format NVM is already running on ${this.name}`);
    for (const q of this.#t.ioQueues()) {
      if (this.#t.isLent(q.qid)) throw new InvalidArgumentError(`I/O queue ${q.qid} is lent to a Worker, which knows the LBA sizes from before the format: close it there first`);
    }
    for (const q of this.#t.ioQueues()) {
      if (q.outstanding > 0) throw new InvalidArgumentError(`I/O queue ${q.qid} has ${q.outstanding} commands outstanding: wait for them before Format NVM changes the namespace under them`);
    }
    const c = cmd.formatNvm(nsid, opts);
    const fpi = all ? 0 : this.identifyNamespace(nsid).fpi;
    const t0 = performance.now();
    let reported = t0;
    const onWait = (elapsedMs: number) => {
      if (!opts.onProgress || performance.now() - reported < 1000) return;
      reported = performance.now();
      let percentRemaining: number | null = null;
      // FPI bit 7: the controller reports what is left in bits 6:0 while it formats.
      if ((fpi & 0x80) !== 0) {
        try {
          const now = this.identifyNamespace(nsid).fpi;
          if ((now & 0x80) !== 0) percentRemaining = now & 0x7f;
        } catch (e) {
          if (!(e instanceof NvmeStatusError)) throw e;
        }
      }
      opts.onProgress({ elapsedMs, percentRemaining });
    };
    this.#formatting = all ? "all" : nsid;
    this.#forgetLbaSizes(all ? undefined : nsid);
    try {
      await this.adminCommandAsync(c, {
        timeoutMs: opts.timeoutMs ?? cmd.FORMAT_TIMEOUT_MS,
        detail: `NSID ${all ? "0xffffffff" : nsid}, LBAF ${opts.lbaf}${opts.ses ? `, SES ${opts.ses}` : ""}`,
        onWait,
      });
    } finally {
      this.#formatting = undefined;
      // Also after a failure: the namespace may be half formatted, in either format.
      this.#forgetLbaSizes(all ? undefined : nsid);
    }
    return all ? undefined : this.identifyNamespace(nsid);
  }

  /** Ask for `sqs` I/O SQs and `cqs` CQs; returns what the controller allocated (may differ). */
  setNumberOfQueues(sqs: number, cqs = sqs): { sqs: number; cqs: number } {
    if (!Number.isInteger(sqs) || !Number.isInteger(cqs) || sqs < 1 || cqs < 1 || sqs > 65535 || cqs > 65535) {
      throw new InvalidArgumentError(`Number of Queues asks 1 to 65535 SQs and CQs, got ${sqs} and ${cqs}`);
    }
    this.#check();
    return this.#t.setNumberOfQueues(sqs, cqs);
  }

  /** Current Number of Queues allocated (Get Features 07h). */
  numberOfQueues(): { sqs: number; cqs: number } {
    return cmd.decodeNumberOfQueues(this.getFeatures(cmd.FID_NUMBER_OF_QUEUES));
  }

  /**
   * I/O queues the controller allocated (Set Features, Number of Queues). Asked for once, the
   * first time a queue is created, unless setNumberOfQueues() was called first: the spec allows
   * it only before any I/O queue exists.
   */
  ioQueuesGranted(): { sqs: number; cqs: number } {
    this.#check();
    return this.#t.ioQueuesGranted();
  }

  /** Create an I/O completion queue several submission queues can share (createIoQueue({ cq })). PCIe only. */
  createCompletionQueue(opts: { entries?: number; qid?: number } = {}): IoCompletionQueue {
    return this.#pcie("completion queues shared by several SQs").createCompletionQueue(opts);
  }

  /**
   * Create an I/O queue: over PCIe a submission queue with its own completion queue of the same
   * size (or bound to `opts.cq`); over TCP a new connection for the queue (ICReq, Connect with the
   * next QID). Deleted by deleteIoQueue() or close().
   */
  createIoQueue(opts: IoQueueOptions = {}): AnyIoQueue {
    this.#check();
    return this.#t.createIoQueue(opts) as AnyIoQueue;
  }

  /**
   * Delete an I/O queue. Over PCIe the controller ends the commands still outstanding on it (Base
   * 2.0, 5.7: Command Aborted due to SQ Deletion) before it completes the deletion; over TCP its
   * connection is closed. Either way they settle with ClosedError.
   */
  deleteIoQueue(q: NvmeIoQueue): void {
    this.#check();
    this.#t.deleteIoQueue(q);
    if (this.#defaultQueue === q) this.#defaultQueue = undefined;
  }

  /** Delete a completion queue; every SQ bound to it must be deleted first (the spec forbids otherwise). PCIe only. */
  deleteCompletionQueue(cq: IoCompletionQueue): void {
    this.#pcie("completion queues").deleteCompletionQueue(cq);
  }

  /** A 256-entry I/O queue (over TCP: the URI's queue size) created on first use, for the async Namespace methods. */
  defaultIoQueue(): AnyIoQueue {
    if (!this.#defaultQueue || this.#defaultQueue.closed) this.#defaultQueue = this.createIoQueue();
    return this.#defaultQueue;
  }

  /**
   * Free `resource` after a command that used it failed with `error`. A status from the controller
   * means it is done with the command; a timeout or a fatal error means it may still read or write
   * the memory, so it is kept until close() has disabled the controller.
   */
  releaseAfter(error: unknown, resource: { free(): void }): void {
    this.#t.releaseAfter(error, resource);
  }

  /** Get Log Page into a fresh copy of `bytes` bytes (multiple of 4; PRP list when over two pages on PCIe). */
  getLogPage(lid: number, bytes: number, opts: { nsid?: number; offset?: number } = {}): Uint8Array {
    this.#check();
    if (!Number.isInteger(bytes) || bytes <= 0 || bytes % 4 !== 0) {
      throw new InvalidArgumentError(`log page length must be a positive multiple of 4 bytes, got ${bytes}`);
    }
    const nsid = opts.nsid ?? 0xffffffff;
    const r = this.#t.adminData(cmd.getLogPage(lid, nsid, bytes, 0, 0, opts.offset), { toHost: bytes }, { detail: `LID 0x${lid.toString(16)}` });
    return r.data!;
  }

  /** SMART / Health Information (LID 02h), controller-wide. */
  smartLog(): ReturnType<typeof parseSmartLog> {
    return parseSmartLog(this.getLogPage(LID_SMART, 512));
  }

  /** The newest `entries` Error Information entries (LID 01h; at most ELPE+1 exist). */
  errorLog(entries = this.info.elpe + 1): ReturnType<typeof parseErrorLog> {
    const n = Math.max(1, Math.min(entries, this.info.elpe + 1));
    return parseErrorLog(this.getLogPage(LID_ERROR, n * 64), n);
  }

  /** Firmware Slot Information (LID 03h). */
  firmwareSlotLog(): ReturnType<typeof parseFirmwareSlotLog> {
    return parseFirmwareSlotLog(this.getLogPage(LID_FW_SLOT, 512));
  }

  /** Ask the controller to abort command `cid` on `sqid`; true when it reports it aborted it (DW0 bit 0 clear). */
  abort(sqid: number, cid: number): boolean {
    return (this.adminCommand(cmd.abort(sqid, cid)).dw0 & 1) === 0;
  }

  /**
   * Allocate a buffer for this controller's commands: over PCIe locked DMA memory the controller
   * reaches by bus address; over TCP host memory the connection reads into and sends from. Free it
   * before close(), or close() frees it.
   */
  allocBuffer(size: number): DmaBuffer {
    this.#check();
    return this.#t.allocBuffer(size);
  }

  /**
   * Import a dma-buf, another driver's exported memory (a GPU's, udmabuf's memfd pages, a
   * dma-heap's), as a DMA buffer of this controller: usable wherever a DmaBuffer is (ns.read and
   * ns.write, IoQueue.rw, PRP lists and SGLs, region()), reached by the controller directly, through
   * the IOMMU when one translates. It has no CPU view: bytes, u32 and pointer throw NoCpuViewError
   * (copy through a host buffer, or use the exporter's own API). The import holds the dma-buf by
   * itself, so `fd` may be closed afterwards; free() it like any buffer (a command still using it
   * delays the release), or close() the controller.
   *
   * If the exporter revokes it (a GPU reset, memory moved), the kernel stops the controller before
   * letting the memory go; libnvm then fails the commands on the buffer with DmaBufRevokedError,
   * refuses new ones with it, and resets the controller so other buffers work again.
   *
   * Only the disnvm backend imports (its kernel module attaches the dma-buf to the controller);
   * VFIO, sysfs and TCP throw UnsupportedError. InvalidArgumentError, before anything is mapped,
   * for an fd that is not an open dma-buf, an offset or size that is not whole 4 KiB pages or runs
   * past the dma-buf's end.
   */
  mapDmaBuf(fd: number, opts: MapDmaBufOptions = {}): DmaBuffer {
    this.#check();
    return this.#t.mapDmaBuf(fd, opts);
  }

  /**
   * Map GPU memory for this controller (the C original's nvm_dma_map_device): export it as a
   * dma-buf and import that (mapDmaBuf), so commands read and write the GPU's memory directly, with
   * no bounce through host memory. The import holds the dma-buf; the fd is closed here. Keep `mem`
   * allocated until the returned buffer is freed. Needs the disnvm backend (VFIO, sysfs and TCP say
   * so with UnsupportedError), and a GPU and driver that export dma-bufs (CudaError otherwise).
   */
  mapCudaMemory(mem: DmaBufExporter): DmaBuffer {
    this.#check();
    const fd = mem.exportDmaBuf();
    try {
      return this.mapDmaBuf(fd, { size: mem.size });
    } finally {
      closeSync(fd);
    }
  }

  // ---- recovery --------------------------------------------------------------------------

  /** How many times reset() (over TCP: a reconnect) brought the controller back. */
  get resets(): number {
    return this.#t.resets;
  }

  /**
   * Reset the controller and carry on. Over PCIe: disable it (its DMA stops), settle every
   * outstanding command, enable it again, ask for the same Number of Queues and re-create every
   * I/O queue with its id, size and memory. Over TCP: close every connection (commands outstanding
   * fail), then connect the admin queue again (a new controller, CC.EN = 1) and every I/O queue
   * with its QID. Queue objects stay valid; requests waiting for a slot are then sent.
   */
  reset(reason?: Error): void {
    if (this.#t.closed) throw new ClosedError(`controller ${this.name} is closed; open it again`);
    this.#t.reset(reason);
  }

  // ---- queues lent to other threads (worker.ts) ---------------------------------------------

  /**
   * @internal Lend PCIe I/O queue `q` to another thread: the lease carries this controller's
   * resets to the borrower, and the borrower's Abort and reset requests back.
   */
  lendIoQueue(q: IoQueue): QueueLease {
    return this.#pcie("lending a queue by its rings").lendIoQueue(q);
  }

  // ---- teardown --------------------------------------------------------------------------

  /**
   * Release the controller: over PCIe delete I/O queues, shut it down (CC.SHN, CSTS.SHST), disable
   * it and free all DMA memory; over TCP the same shutdown by Property Set, then every connection
   * closed. Every step is bounded; a failing step does not stop the release of the rest. Idempotent.
   */
  close(): void {
    if (this.#t.closed) return;
    // First the layers that hand this controller's queues and memory to executors of their own
    // (lib/gpu: queue core threads, GPU kernels): those must ring no doorbell of a queue being
    // deleted, touch no ring about to be freed, and unmap BAR0 from a GPU while it is still mapped.
    for (const f of [...this.#closeHooks]) {
      try {
        f();
      } catch {
        // Closing anyway: what a layer could not release is its to report.
      }
    }
    this.#closeHooks.clear();
    untrack(this);
    this.#t.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** pcie://BDF[?backend=...] → the BDF; anything else as given. */
function pcieTarget(target: string, _opts: ControllerOptions): string {
  const m = /^pcie:\/\/([^?]+)(?:\?(.*))?$/.exec(target);
  return m ? decodeURIComponent(m[1]!) : target;
}

/** pcie://BDF?backend=vfio: the backend from the URI unless the options name one. */
function pcieOptions(target: string, opts: ControllerOptions): PcieOptions {
  const m = /^pcie:\/\/([^?]+)(?:\?(.*))?$/.exec(target);
  if (!m || !m[2]) return opts;
  const q = new URLSearchParams(m[2]);
  const backend = q.get("backend");
  for (const k of q.keys()) if (k !== "backend") throw new InvalidArgumentError(`${target}: unknown option "${k}" (pcie:// takes backend=auto|sysfs|vfio|disnvm)`);
  if (backend === null || (opts.backend !== undefined && opts.backend !== "auto")) return opts;
  if (!["auto", "sysfs", "vfio", "disnvm"].includes(backend)) throw new InvalidArgumentError(`${target}: backend=${backend}: choose auto, sysfs, vfio or disnvm`);
  return { ...opts, backend: backend as PcieOptions["backend"] };
}

// ---- release on exit and on signals ----------------------------------------------------------

const open = new Set<Controller>();
const signalHandled = new Set<Controller>();
const SIGNALS = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;
let hooked = false;

function closeAll(): void {
  for (const c of [...open]) {
    try {
      c.close();
    } catch {
      // Exiting anyway: release what can be released.
    }
  }
}

function onSignal(sig: keyof typeof SIGNALS): void {
  closeAll();
  process.exit(128 + SIGNALS[sig]);
}

function track(c: Controller, handleSignals: boolean): void {
  open.add(c);
  if (handleSignals) signalHandled.add(c);
  if (!hooked) {
    hooked = true;
    process.on("exit", closeAll);
  }
  if (signalHandled.size === 1 && handleSignals) {
    for (const s of Object.keys(SIGNALS) as (keyof typeof SIGNALS)[]) process.on(s, onSignal);
  }
}

function untrack(c: Controller): void {
  open.delete(c);
  if (signalHandled.delete(c) && signalHandled.size === 0) {
    // No controller left to protect: give the signals their default behaviour back.
    for (const s of Object.keys(SIGNALS) as (keyof typeof SIGNALS)[]) process.off(s, onSignal);
  }
}
