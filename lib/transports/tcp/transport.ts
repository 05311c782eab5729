/**
 * The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0; NVMe Base 2.0, 3.5.2 "Controller
 * Initialization" for message-based controllers): a dynamic controller of an NVM subsystem behind
 * a TCP target, with one connection per queue.
 *
 * Bring-up: connect the admin queue (ICReq/ICResp, Connect QID 0 with CNTLID FFFFh, which gives
 * the controller's CNTLID), read CAP and VS by Property Get, then the same rules as PCIe: CC.EN
 * (with CC.IOSQES/IOCQES/MPS/CSS/AMS as for memory-based controllers) by Property Set, CSTS.RDY by
 * Property Get within CAP.TO. Each I/O queue is a new connection, ICReq, and Connect with its QID
 * and that CNTLID; there is no Create I/O SQ/CQ. Shutdown: CC.SHN by Property Set, CSTS.SHST by
 * Property Get, then the connections close.
 *
 * Why synchronous sockets: libnvm's Controller is synchronous (open(), identify, admin commands,
 * readSync) and Bun's sockets are asynchronous only, so the sockets are the C library's
 * (c/src/tcp.c: non-blocking descriptors, every wait bounded by poll(), data read straight into the
 * caller's buffer) and the async API polls them like PCIe's poller polls a completion queue. So
 * Controller.open("nvme+tcp://...") gives the same Controller, Namespace and tools as a local drive.
 *
 * Failure: a connection that drops (or that libnvm closes after a timeout or a protocol violation)
 * fails its outstanding commands with a typed error; then the queue reconnects in the background,
 * with backoff, a bounded number of times (the whole controller when the admin queue went, or when
 * the target no longer knows the CNTLID), and the requests that waited meanwhile are sent. Keep
 * Alive (admin opcode 18h) every KATO/2 from a timer on the event loop; a target that does not
 * answer within the command timeout is a dropped connection.
 */
import {
  ClosedError,
  ConnectionError,
  ControllerFatalError,
  InvalidArgumentError,
  NvmeStatusError,
  NvmeTimeoutError,
  UnsupportedError,
} from "../../errors.ts";
import { DmaBuffer } from "../../dma.ts";
import type { IoQueueOptions } from "../../io.ts";
import type { Completion } from "../../queue.ts";
import * as cmd from "../../spec/commands.ts";
import * as fabrics from "../../spec/fabrics.ts";
import {
  CC_EN,
  CC_SHN_MASK,
  CC_SHN_NORMAL,
  CSTS_CFS,
  CSTS_RDY,
  CSTS_SHST_COMPLETE,
  CSTS_SHST_MASK,
  decodeCap,
  encodeCc,
  REG_CAP,
  REG_CC,
  REG_CSTS,
  REG_VS,
  type Capabilities,
} from "../../spec/registers.ts";
import type { IdentifyController } from "../../spec/identify.ts";
import type {
  AdminAsyncOptions,
  AdminExecOptions,
  AdminResult,
  AdminTransfer,
  ControllerHooks,
  ControllerTransport,
  MapDmaBufOptions,
  NvmeIoQueue,
  RegisterSnapshot,
  TransportOptions,
} from "../types.ts";
import { hostIdentity, type HostIdentity } from "./hostnqn.ts";
import { addressOf, openLink } from "./link.ts";
import { HostMemory } from "./memory.ts";
import { TcpQueue, type TcpLinkParams, type TcpQueueContext } from "./queue.ts";
import { formatTcpTarget, isTcpTarget, parseTcpTarget, type TcpTarget } from "./uri.ts";

export interface TcpOptions extends TransportOptions {
  /** Host NQN. Defaults to /etc/nvme/hostnqn, else one generated once and kept (hostnqn.ts). */
  readonly hostnqn?: string;
  /** Host Identifier, a UUID. Defaults to /etc/nvme/hostid, the NQN's UUID, or one derived from the NQN. */
  readonly hostid?: string;
  /** Header digests (CRC-32C) on every PDU. Defaults to false. */
  readonly headerDigest?: boolean;
  /** Data digests (CRC-32C) on every PDU with data. Defaults to false. */
  readonly dataDigest?: boolean;
  /** Entries of each I/O queue created without `entries` (Connect SQSIZE + 1). Defaults to 128. */
  readonly queueSize?: number;
  /** At most this many I/O queues. Defaults to what the controller grants. */
  readonly nrIoQueues?: number;
  /** Keep Alive Timeout sent at Connect, in ms (0: none). Defaults to 30 000. */
  readonly keepAliveTimeoutMs?: number;
  /**
   * Disable SQ flow control (Connect CATTR bit 2): the controller then reports no SQHD, and may end
   * a read with a SUCCESS C2HData instead of a CapsuleResp. Defaults to false.
   */
  readonly disableSqFlowControl?: boolean;
  /** Attempts per reconnect after a connection was lost. Defaults to 10. */
  readonly reconnectAttempts?: number;
  /** Delay before the first reconnect attempt, doubled after each failure (at most 5 s). Defaults to 100. */
  readonly reconnectDelayMs?: number;
  /** Bound on TCP connect and ICReq/ICResp, in ms. Defaults to min(timeoutMs, 5000). */
  readonly connectTimeoutMs?: number;
  /** Largest H2CData PDU this host sends, below the target's MAXH2CDATA. Defaults to MAXH2CDATA. */
  readonly maxH2CDataBytes?: number;
  /** How long a poll with nothing to read waits in the kernel, in µs. Defaults to 50. */
  readonly pollWaitUs?: number;
}

/** The admin queue: 32 entries (Connect SQSIZE 31), as Linux's host. */
const ADMIN_QUEUE_ENTRIES = 32;
/**
 * In-capsule data on the admin queue: 8 KiB, as the Linux and SPDK hosts assume. Linux nvmet holds
 * the admin queue to its port's inline_data_size too, and answers SGL Offset Invalid when that is
 * smaller: the admin queue then sends its data by R2T (#bringUp).
 */
const ADMIN_IN_CAPSULE = 8192;
const DEFAULT_QUEUE_SIZE = 128;
/** Generic status 16h: SGL Offset Invalid (in-capsule data the controller does not take). */
const SC_SGL_OFFSET_INVALID = 0x16;
const DEFAULT_KATO_MS = 30_000;

export interface DiscoveryRecord extends fabrics.DiscoveryEntry {
  /** The nvme+tcp:// address that opens it (a discovery address for a referral). */
  readonly uri: string;
}

export interface DiscoveryResult {
  /** The discovery controller asked. */
  readonly target: string;
  readonly genctr: bigint;
  readonly records: DiscoveryRecord[];
  readonly hostnqn: string;
}

/** Everything the transport needs that a URI and options decide. */
interface Settings {
  readonly target: TcpTarget;
  readonly host: HostIdentity;
  readonly timeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly digests: { header: boolean; data: boolean };
  readonly queueSize: number;
  readonly nrIoQueues: number;
  readonly katoMs: number;
  readonly sqflow: boolean;
  readonly reconnectAttempts: number;
  readonly reconnectDelayMs: number;
  readonly maxH2C: number | undefined;
  readonly pollWaitUs: number | undefined;
}

function settingsOf(targetText: string, opts: TcpOptions): Settings {
  const target = parseTcpTarget(targetText);
  const u = target.options;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (!(timeoutMs > 0)) throw new InvalidArgumentError(`timeout ${timeoutMs} ms: must be positive`);
  const pick = <T>(a: T | undefined, b: T | undefined, d: T): T => a ?? b ?? d;
  const queueSize = pick(opts.queueSize, u.queueSize, DEFAULT_QUEUE_SIZE);
  if (!Number.isInteger(queueSize) || queueSize < 2 || queueSize > 65536) throw new InvalidArgumentError(`queue size ${queueSize}: 2 to 65536 entries`);
  const katoMs = target.discovery ? 0 : pick(opts.keepAliveTimeoutMs, u.keepAliveTimeoutMs, DEFAULT_KATO_MS);
  return {
    target,
    host: hostIdentity({ hostnqn: opts.hostnqn ?? u.hostnqn, hostid: opts.hostid ?? u.hostid }),
    timeoutMs,
    connectTimeoutMs: pick(opts.connectTimeoutMs, u.connectTimeoutMs, Math.min(timeoutMs, 5000)),
    digests: { header: pick(opts.headerDigest, u.headerDigest, false), data: pick(opts.dataDigest, u.dataDigest, false) },
    queueSize,
    nrIoQueues: pick(opts.nrIoQueues, u.nrIoQueues, 65535),
    katoMs,
    sqflow: !pick(opts.disableSqFlowControl, u.disableSqFlowControl, false),
    reconnectAttempts: pick(opts.reconnectAttempts, u.reconnectAttempts, 10),
    reconnectDelayMs: pick(opts.reconnectDelayMs, u.reconnectDelayMs, 100),
    maxH2C: opts.maxH2CDataBytes,
    pollWaitUs: opts.pollWaitUs,
  };
}

export class TcpTransport implements ControllerTransport {
  readonly kind = "tcp" as const;
  readonly name: string;
  readonly address: string;
  readonly timeoutMs: number;
  readonly memory: HostMemory;
  readonly admin: TcpQueue;
  #cap!: Capabilities;
  #vs = 0;
  /** Controller ID of the current association (admin Connect's answer). */
  #cntlid = 0;
  /** The target's MAXH2CDATA (the smallest any connection offered). */
  #maxh2cdata = 0;
  readonly #s: Settings;
  readonly #io = new Map<number, TcpQueue>();
  #granted: { sqs: number; cqs: number } | undefined;
  #requested: { sqs: number; cqs: number } | undefined;
  #hooks: ControllerHooks | undefined;
  #closed = false;
  #resets = 0;
  #kaTimer: ReturnType<typeof setInterval> | undefined;
  /** A reconnect cycle is scheduled or running. */
  #reconnecting = false;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Queues whose connection was lost and that wait for a reconnect. */
  readonly #down = new Set<TcpQueue>();
  /** Why the last reconnect cycle gave up, or undefined. */
  #gaveUp: Error | undefined;

  /** Connect to the controller `target` names and bring it up (CSTS.RDY = 1). */
  static connect(target: string, opts: TcpOptions = {}): TcpTransport {
    if (!isTcpTarget(target)) throw new InvalidArgumentError(`"${target}" is not an NVMe/TCP address (nvme+tcp://HOST:PORT/SUBNQN)`);
    return new TcpTransport(settingsOf(target, opts));
  }

  private constructor(s: Settings) {
    this.#s = s;
    this.timeoutMs = s.timeoutMs;
    this.address = addressOf(s.target);
    this.name = formatTcpTarget(s.target);
    this.memory = new HostMemory(this.name);
    this.admin = new TcpQueue(this.#context(), 0, ADMIN_QUEUE_ENTRIES);
    try {
      this.#bringUp();
    } catch (e) {
      this.admin.free();
      this.memory.close();
      throw e;
    }
  }

  get cap(): Capabilities {
    return this.#cap;
  }

  get vs(): number {
    return this.#vs;
  }

  get cntlid(): number {
    return this.#cntlid;
  }

  get hostnqn(): string {
    return this.#s.host.hostnqn;
  }

  get subnqn(): string {
    return this.#s.target.subnqn;
  }

  get discovery(): boolean {
    return this.#s.target.discovery;
  }

  /** What the admin connection negotiated. */
  get link(): TcpLinkParams {
    return this.admin.link;
  }

  get keepAliveTimeoutMs(): number {
    return this.#s.katoMs;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get resets(): number {
    return this.#resets;
  }

  /** No Abort over TCP: a command past its deadline ends its connection at once. */
  get abortGraceMs(): number {
    return 0;
  }

  /** Over TCP, one command moves at most MAXH2CDATA bytes (Linux nvmet refuses more whatever MDTS says). */
  get transferCap(): number {
    return this.#maxh2cdata;
  }

  #context(): TcpQueueContext {
    return {
      address: this.address,
      timeoutMs: this.timeoutMs,
      maxTransfer: this.#hooks?.maxTransfer ?? 1 << 20,
      memory: this.memory,
      lbaSize: (nsid) => {
        if (!this.#hooks) throw new InvalidArgumentError(`${this.name}: the controller was not identified yet`);
        return this.#hooks.lbaSize(nsid);
      },
      onLinkLost: (q, err) => this.#onLinkLost(q, err),
      reconnectNow: (q) => this.#reconnectNow(q),
      requestLink: (q) => this.#onLinkLost(q, undefined),
      pollWaitUs: this.#s.pollWaitUs,
    };
  }

  // ---- bring-up ---------------------------------------------------------------------------------

  #linkParams(maxh2cdata: number, inCapsule: number): TcpLinkParams {
    const cap = this.#s.maxH2C;
    return {
      hdgst: this.#s.digests.header,
      ddgst: this.#s.digests.data,
      maxh2cdata: cap !== undefined ? Math.max(4096, Math.min(cap - (cap % 4), maxh2cdata)) : maxh2cdata,
      inCapsule,
      sqflow: this.#s.sqflow,
    };
  }

  /** Queues being connected: their failures are the connect's to report, not a lost link to repair. */
  readonly #connecting = new Set<TcpQueue>();

  /** A new connection for `q` (ICReq), then Connect with `cntlid`. Returns what Connect answered. */
  #connectQueue(q: TcpQueue, cntlid: number, inCapsule: number): fabrics.ConnectResult {
    this.#connecting.add(q);
    try {
      const r = this.#connectQueueOnce(q, cntlid, inCapsule);
      this.#down.delete(q);
      return r;
    } finally {
      this.#connecting.delete(q);
    }
  }

  #connectQueueOnce(q: TcpQueue, cntlid: number, inCapsule: number): fabrics.ConnectResult {
    const { fd, icresp } = openLink(this.#s.target, q.qid, this.#s.digests, this.#s.connectTimeoutMs);
    this.#maxh2cdata = this.#maxh2cdata === 0 ? icresp.maxh2cdata : Math.min(this.#maxh2cdata, icresp.maxh2cdata);
    q.attach(fd, this.#linkParams(icresp.maxh2cdata, inCapsule));
    const data = fabrics.connectData(this.#s.host.hostid, cntlid, this.#s.target.subnqn, this.#s.host.hostnqn);
    const page = new DmaBuffer(this.memory, 4096);
    try {
      page.bytes.set(data);
      const c = fabrics.connect({
        qid: q.qid,
        entries: q.entries,
        cattr: this.#s.sqflow ? 0 : fabrics.CATTR_DISABLE_SQ_FLOW_CONTROL,
        katoMs: q.qid === 0 ? this.#s.katoMs : 0,
      });
      const r = q.exec(c, { buf: page, offset: 0, bytes: fabrics.CONNECT_DATA_SIZE, dir: "out" }, { timeoutMs: this.#s.connectTimeoutMs + this.timeoutMs, detail: `QID ${q.qid}, ${q.entries} entries, CNTLID 0x${cntlid.toString(16)}` });
      const res = fabrics.decodeConnectResult(r.dw0);
      if (res.authreq !== 0) {
        q.disconnect(new ClosedError("authentication required"));
        throw new UnsupportedError(
          `${this.name}: the subsystem requires in-band authentication (Connect AUTHREQ 0x${res.authreq.toString(16)}: DH-HMAC-CHAP or TLS), which libnvm does not implement; allow this host without it (nvmet: no dhchap key for ${this.#s.host.hostnqn})`,
        );
      }
      return res;
    } catch (e) {
      q.disconnect(e instanceof Error ? e : new Error(String(e)));
      throw this.#connectFailure(e, q.qid);
    } finally {
      page.free();
    }
  }

  /** A Connect status, explained: which host, which subsystem. */
  #connectFailure(e: unknown, qid: number): unknown {
    if (!(e instanceof NvmeStatusError) || e.sct !== 1) return e;
    const hint =
      e.sc === fabrics.SC_CONNECT_INVALID_HOST
        ? `: the subsystem does not allow host ${this.#s.host.hostnqn} (nvmet: link it into allowed_hosts, or set attr_allow_any_host)`
        : e.sc === fabrics.SC_CONNECT_INVALID_PARAMETERS
          ? qid === 0
            ? `: is ${this.#s.target.subnqn} offered on ${this.address}? (Controller.discover("nvme+tcp://${this.address}") lists what is)`
            : ""
          : e.sc === fabrics.SC_CONNECT_CONTROLLER_BUSY
            ? ": the target has no controller or queue left (cntlid range, qid_max)"
            : "";
    if (hint === "") return e;
    // The same status, its message followed by what to check.
    const err = new NvmeStatusError((e.dnr ? 1 << 14 : 0) | (e.more ? 1 << 13 : 0) | (e.crd << 11) | (e.sct << 8) | e.sc, { command: e.command, opcode: e.opcode, cid: e.cid, sqid: e.sqid, statusName: e.status });
    err.message = `${e.message}${hint}`;
    return err;
  }

  #getProperty(offset: number, size: 4 | 8): { lo: number; hi: number } {
    const r = this.admin.exec(fabrics.propertyGet(offset, size), undefined, { detail: `offset 0x${offset.toString(16)}` });
    return { lo: r.dw0, hi: size === 8 ? r.dw1 : 0 };
  }

  #setProperty(offset: number, value: number): void {
    this.admin.exec(fabrics.propertySet(offset, value), undefined, { detail: `offset 0x${offset.toString(16)} = 0x${value.toString(16)}` });
  }

  /** Wait for CSTS.RDY to equal `ready` (Property Get), bounded by CAP.TO (3.1.4.1). */
  #waitReady(ready: boolean): void {
    const timeoutMs = Math.max(this.#cap.timeoutMs, 500);
    const deadline = performance.now() + timeoutMs;
    for (let i = 0; ; i++) {
      const csts = this.#getProperty(REG_CSTS, 4).lo;
      if (ready && (csts & CSTS_CFS) !== 0) throw new ControllerFatalError(`${this.name}: Controller Fatal Status (CSTS.CFS) set during enable`, csts);
      if (((csts & CSTS_RDY) !== 0) === ready) return;
      if (performance.now() > deadline) {
        throw new NvmeTimeoutError(`${this.name}: CSTS.RDY did not become ${ready ? 1 : 0} within CAP.TO (${timeoutMs} ms) after CC.EN=${ready ? 1 : 0}`, timeoutMs);
      }
      Bun.sleepSync(Math.min(1 + i, 20));
    }
  }

  /** In-capsule data the admin queue may send: ADMIN_IN_CAPSULE, or 0 once the target refused it. */
  #adminInCapsule = ADMIN_IN_CAPSULE;

  /** Connect the admin queue and enable the controller (admin Connect, CAP, VS, CC.EN, CSTS.RDY). */
  #bringUp(): void {
    let r: fabrics.ConnectResult;
    try {
      r = this.#connectQueue(this.admin, fabrics.CNTLID_DYNAMIC, this.#adminInCapsule);
    } catch (e) {
      // SGL Offset Invalid: the port takes no in-capsule data (nvmet's inline_data_size 0), not
      // even the 1 KiB of Connect data: connect again, with the data by R2T from now on.
      if (!(e instanceof NvmeStatusError) || e.sct !== 0 || e.sc !== SC_SGL_OFFSET_INVALID || this.#adminInCapsule === 0) throw e;
      this.#adminInCapsule = 0;
      r = this.#connectQueue(this.admin, fabrics.CNTLID_DYNAMIC, 0);
    }
    this.#cntlid = r.cntlid;
    const cap = this.#getProperty(REG_CAP, 8);
    this.#cap = decodeCap(cap.lo, cap.hi);
    this.#vs = this.#getProperty(REG_VS, 4).lo;
    if ((this.#cap.css & 1) === 0 && (this.#cap.css & 0x40) === 0) {
      throw new UnsupportedError(`${this.name}: controller supports neither the NVM command set nor I/O command sets (CAP.CSS = 0x${this.#cap.css.toString(16)})`);
    }
    if (this.#cap.mpsmin > 0) throw new UnsupportedError(`${this.name}: smallest memory page (CAP.MPSMIN) is ${this.#cap.minPageSize} bytes; libnvm uses 4096`);
    // A new association starts disabled; a controller found enabled is disabled first, as on PCIe.
    const cc = this.#getProperty(REG_CC, 4).lo;
    if ((cc & CC_EN) !== 0) {
      this.#setProperty(REG_CC, cc & ~CC_EN);
      this.#waitReady(false);
    }
    // CC as for a memory-based controller: IOSQES 6 and IOCQES 4 (Linux nvmet sets CSTS.CFS
    // otherwise), MPS 0 (4 KiB), round robin, the NVM command set.
    const value = encodeCc({ css: 0, mps: 0, ams: 0, iosqes: cmd.SQE_SIZE_LOG2, iocqes: cmd.CQE_SIZE_LOG2 });
    this.#setProperty(REG_CC, value | CC_EN);
    this.#waitReady(true);
  }

  configure(hooks: ControllerHooks): void {
    this.#hooks = hooks;
    if (this.#s.katoMs > 0 && this.#kaTimer === undefined) {
      // Keep Alive at half the timeout, from the event loop (TBKAS targets count any command; a
      // Keep Alive is one more). A blocked event loop cannot send it: the target may then end the
      // association after KATO, which the next command sees as a lost connection.
      this.#kaTimer = setInterval(() => this.#keepAlive(), Math.max(100, Math.floor(this.#s.katoMs / 2)));
      this.#kaTimer.unref();
    }
  }

  #keepAlive(): void {
    if (this.#closed || !this.admin.live) return;
    try {
      this.admin.exec({ opcode: cmd.ADMIN_KEEP_ALIVE }, undefined, { timeoutMs: Math.min(this.timeoutMs, Math.max(this.#s.katoMs, 1000)) });
    } catch {
      // The admin connection was dropped: its loss schedules the reconnect.
    }
  }

  abortOpen(): void {
    this.#closed = true;
    if (this.#kaTimer) clearInterval(this.#kaTimer);
    this.admin.free();
    this.memory.close();
  }

  check(): void {
    if (this.#closed) throw new ClosedError(`controller ${this.name} is closed; open it again`);
  }

  registers(): RegisterSnapshot {
    this.check();
    const cap = this.#getProperty(REG_CAP, 8);
    return {
      cap: (BigInt(cap.hi) << 32n) | BigInt(cap.lo),
      vs: this.#getProperty(REG_VS, 4).lo,
      cc: this.#getProperty(REG_CC, 4).lo,
      csts: this.#getProperty(REG_CSTS, 4).lo,
      aqa: 0,
    };
  }

  // ---- admin ------------------------------------------------------------------------------------

  adminCommand(c: cmd.Command, opts: AdminExecOptions = {}): Completion {
    this.check();
    const r = this.admin.exec(c, undefined, opts);
    return { dw0: r.dw0, dw1: r.dw1, cid: r.cid };
  }

  adminData(c: cmd.Command, data: AdminTransfer | undefined, opts: AdminExecOptions = {}): AdminResult {
    this.check();
    if (data === undefined || (data.toHost === undefined && data.toController === undefined)) return this.adminCommand(c, opts);
    const bytes = data.toController !== undefined ? data.toController.length : data.toHost!;
    if (!Number.isInteger(bytes) || bytes <= 0) throw new InvalidArgumentError(`admin command data of ${bytes} bytes`);
    const buf = new DmaBuffer(this.memory, bytes);
    try {
      if (data.toController !== undefined) buf.bytes.set(data.toController);
      const r = this.admin.exec(c, { buf, offset: 0, bytes, dir: data.toController !== undefined ? "out" : "in" }, opts);
      return { dw0: r.dw0, dw1: r.dw1, cid: r.cid, ...(data.toHost !== undefined ? { data: buf.bytes.slice(0, bytes) } : {}) };
    } finally {
      // Settled means no more of its data can arrive (a timeout closed the connection first).
      buf.free();
    }
  }

  async adminCommandAsync(c: cmd.Command, opts: AdminAsyncOptions = {}): Promise<Completion> {
    this.check();
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    if (!(timeoutMs > 0)) throw new InvalidArgumentError(`timeout ${timeoutMs} ms: must be positive`);
    let settled = false;
    const p = this.admin.execAsync(c, undefined, { timeoutMs, ...(opts.detail !== undefined ? { detail: opts.detail } : {}) });
    p.then(
      () => (settled = true),
      () => (settled = true),
    );
    const t0 = performance.now();
    for (let looks = 0; !settled; looks++) {
      await Promise.race([p.catch(() => undefined), Bun.sleep(Math.min(1 + looks, 50))]);
      if (!settled) opts.onWait?.(performance.now() - t0);
    }
    const dw0 = await p;
    return { dw0, dw1: 0, cid: 0 };
  }

  setNumberOfQueues(sqs: number, cqs: number): { sqs: number; cqs: number } {
    this.#granted = cmd.decodeNumberOfQueues(this.adminCommand(cmd.numberOfQueues(sqs, cqs)).dw0);
    this.#requested = { sqs, cqs };
    return this.#granted;
  }

  ioQueuesGranted(): { sqs: number; cqs: number } {
    this.#granted ??= this.setNumberOfQueues(65535, 65535);
    return this.#granted;
  }

  // ---- I/O queues -------------------------------------------------------------------------------

  /** In-capsule data an I/O queue takes: IOCCSZ x 16 bytes of capsule less the 64-byte SQE (Identify Controller). */
  #ioInCapsule(info: IdentifyController | undefined): number {
    const ioccsz = info?.ioccsz ?? 0;
    return ioccsz > 4 ? ioccsz * 16 - 64 : 0;
  }

  createIoQueue(opts: IoQueueOptions = {}): TcpQueue {
    this.check();
    if (this.#s.target.discovery) throw new UnsupportedError(`${this.name} is a discovery controller: it has no I/O queues (open one of the subsystems it lists)`);
    if (opts.cq !== undefined) throw new UnsupportedError(`${this.name}: over NVMe/TCP each I/O queue is a connection with its own completions; completion queues shared by several SQs are PCIe only`);
    const entries = opts.entries ?? Math.min(this.#s.queueSize, this.#cap.mqes + 1);
    if (!Number.isInteger(entries) || entries < 2 || entries > this.#cap.mqes + 1) {
      throw new InvalidArgumentError(`I/O queue of ${entries} entries: must be 2 to ${this.#cap.mqes + 1} (CAP.MQES+1)`);
    }
    const granted = this.ioQueuesGranted();
    const max = Math.min(granted.sqs, granted.cqs, this.#s.nrIoQueues);
    let qid = opts.qid;
    if (qid !== undefined) {
      if (!Number.isInteger(qid) || qid < 1 || qid > max) throw new InvalidArgumentError(`I/O queue id ${qid}: the controller granted ids 1 to ${max} (Number of Queues${this.#s.nrIoQueues < 65535 ? ", nr-io-queues" : ""})`);
      if (this.#io.has(qid)) throw new InvalidArgumentError(`I/O queue ${qid} already exists on ${this.name}`);
    } else {
      for (let i = 1; i <= max && qid === undefined; i++) if (!this.#io.has(i)) qid = i;
      if (qid === undefined) throw new InvalidArgumentError(`all ${max} I/O queues the controller granted are in use: delete one first`);
    }
    const q = new TcpQueue({ ...this.#context(), ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) }, qid, entries);
    try {
      this.#connectQueue(q, this.#cntlid, this.#ioInCapsule(this.#hooks?.info));
    } catch (e) {
      q.free();
      throw e;
    }
    this.#io.set(qid, q);
    return q;
  }

  deleteIoQueue(q: NvmeIoQueue): void {
    this.check();
    const t = this.#io.get(q.qid);
    if (t !== q) return;
    if (t.isLent) throw new InvalidArgumentError(`I/O queue ${q.qid} is lent to a Worker: close it there (AttachedIoQueue.close()) first`);
    this.#io.delete(q.qid);
    this.#down.delete(t);
    t.free();
  }

  ioQueues(): IterableIterator<TcpQueue> {
    return this.#io.values();
  }

  isLent(qid: number): boolean {
    return this.#io.get(qid)?.isLent === true;
  }

  allocBuffer(size: number): DmaBuffer {
    this.check();
    return new DmaBuffer(this.memory, size);
  }

  mapDmaBuf(fd: number, opts: MapDmaBufOptions): DmaBuffer {
    return new DmaBuffer(this.memory, 4096, {}, { mapping: this.memory.importDmaBuf(fd, opts.offset ?? 0, opts.size) });
  }

  /** Over TCP a command that settled can no longer touch its memory (a timeout closed its connection first). */
  releaseAfter(_error: unknown, resource: { free(): void }): void {
    resource.free();
  }

  // ---- recovery ---------------------------------------------------------------------------------

  /** A queue's connection went down (`err`), or a request found it down (undefined): reconnect in the background. */
  #onLinkLost(q: TcpQueue, err: Error | undefined): void {
    if (this.#closed || this.#connecting.has(q)) return;
    if (err !== undefined || !q.live) this.#down.add(q);
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    this.#gaveUp = undefined;
    this.#cycle(0, this.#s.reconnectDelayMs);
  }

  /** One reconnect attempt after `delayMs`; on failure the next, with twice the delay, until the attempts run out. */
  #cycle(attempt: number, delayMs: number): void {
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (this.#closed) return;
      try {
        this.#repair();
        this.#reconnecting = false;
      } catch (e) {
        if (attempt + 1 >= this.#s.reconnectAttempts) {
          this.#reconnecting = false;
          this.#giveUp(e);
          return;
        }
        this.#cycle(attempt + 1, Math.min(Math.max(delayMs * 2, 10), 5000));
      }
    }, delayMs);
    this.#reconnectTimer.unref?.();
  }

  /** Requests that waited for the connections fail; the next command starts another cycle. */
  #giveUp(e: unknown): void {
    const why = e instanceof Error ? e.message : String(e);
    this.#gaveUp = new ConnectionError(`${this.name}: reconnecting failed ${this.#s.reconnectAttempts} times (last: ${why}); the next command tries again`, this.address, -1);
    for (const q of this.#down) {
      q.settleAndRefuse(this.#gaveUp);
      q.unrefuse();
    }
  }

  /**
   * Bring every queue that is down back: the I/O queues alone when the admin queue still works
   * and the controller accepts their Connect; else the whole controller (a new association).
   */
  #repair(): void {
    if (this.#down.size === 0) return;
    if (this.admin.live && !this.#down.has(this.admin)) {
      try {
        for (const q of [...this.#down]) {
          if (q.isLent) {
            this.#down.delete(q);
            continue;
          }
          this.#connectQueue(q, this.#cntlid, this.#ioInCapsule(this.#hooks?.info));
          this.#down.delete(q);
          q.resume();
        }
        return;
      } catch (e) {
        // A connection refused is the target's whole port gone: try the whole controller next time.
        if (!(e instanceof NvmeStatusError)) throw e;
      }
    }
    this.#reassociate();
  }

  /** A new association: every connection closed, the admin queue connected and enabled again, then every I/O queue. */
  #reassociate(): void {
    const lost = new ConnectionError(`${this.name}: the controller is being reconnected; this command was outstanding and did not complete (its data may or may not have moved)`, this.address, 0);
    this.admin.disconnect(lost);
    for (const q of this.#io.values()) if (!q.isLent) q.disconnect(lost);
    this.#bringUp();
    if (this.#requested) this.#granted = cmd.decodeNumberOfQueues(this.adminCommand(cmd.numberOfQueues(this.#requested.sqs, this.#requested.cqs)).dw0);
    for (const q of this.#io.values()) {
      if (q.isLent) continue;
      this.#connectQueue(q, this.#cntlid, this.#ioInCapsule(this.#hooks?.info));
    }
    this.#down.clear();
    this.#resets++;
    this.admin.resume();
    for (const q of this.#io.values()) q.resume();
  }

  /** A synchronous caller found `q` down: one attempt now (the background cycle goes on if it fails). */
  #reconnectNow(q: TcpQueue): void {
    if (this.#closed) throw new ClosedError(`controller ${this.name} is closed`);
    this.#down.add(q);
    if (q === this.admin || !this.admin.live) this.#reassociate();
    else this.#repair();
  }

  reset(reason?: Error): void {
    this.check();
    void reason;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#reconnecting = false;
    this.#reassociate();
  }

  /** @internal The reconnect state, for diagnostics and tests. */
  get reconnectState(): { reconnecting: boolean; down: number[]; gaveUp: string | undefined } {
    return { reconnecting: this.#reconnecting, down: [...this.#down].map((q) => q.qid), gaveUp: this.#gaveUp?.message };
  }

  // ---- teardown ---------------------------------------------------------------------------------

  /**
   * Shut the controller down (CC.SHN = 01b by Property Set, CSTS.SHST = 10b by Property Get, bounded
   * by RTD3E or 10 s), then close every connection (commands still outstanding settle with
   * ClosedError) and free the buffers. Idempotent; a failing step does not stop the rest.
   */
  close(): void {
    if (this.#closed) return;
    if (this.#kaTimer) clearInterval(this.#kaTimer);
    this.#kaTimer = undefined;
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    let firstError: unknown;
    if (this.admin.live) {
      try {
        const cc = this.#getProperty(REG_CC, 4).lo;
        if ((cc & CC_EN) !== 0) {
          this.#setProperty(REG_CC, (cc & ~CC_SHN_MASK) | CC_SHN_NORMAL);
          const timeoutMs = Math.max((this.#hooks?.rtd3e ?? 0) / 1000, 10_000);
          const deadline = performance.now() + timeoutMs;
          for (let i = 0; (this.#getProperty(REG_CSTS, 4).lo & CSTS_SHST_MASK) !== CSTS_SHST_COMPLETE; i++) {
            if (performance.now() > deadline) throw new NvmeTimeoutError(`${this.name}: shutdown did not complete within ${timeoutMs} ms`, timeoutMs);
            Bun.sleepSync(Math.min(1 + i, 20));
          }
        }
      } catch (e) {
        firstError = e;
      }
    }
    this.#closed = true;
    for (const q of this.#io.values()) q.free();
    this.#io.clear();
    this.admin.free();
    this.memory.close();
    if (firstError !== undefined && !(firstError instanceof ConnectionError)) throw firstError;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Read the Discovery Log Page of the discovery controller `target` names (nvme+tcp://HOST[:PORT],
 * port 8009 unless given): header first, then every record, again until GENCTR held still.
 */
export function discover(target: string, opts: TcpOptions = {}): DiscoveryResult {
  const t = parseTcpTarget(target);
  const text = t.discovery ? target : formatTcpTarget({ host: t.host, port: t.port });
  const tr = TcpTransport.connect(text, { ...opts, keepAliveTimeoutMs: 0 });
  try {
    for (let tries = 0; ; tries++) {
      const head = tr.adminData(cmd.getLogPage(fabrics.LID_DISCOVERY, 0, fabrics.DISCOVERY_RECORD_SIZE, 0, 0, 0), { toHost: fabrics.DISCOVERY_RECORD_SIZE }, { detail: "Discovery" }).data!;
      const h = fabrics.parseDiscoveryLog(head);
      const bytes = fabrics.DISCOVERY_RECORD_SIZE * (h.numrec + 1);
      const all = h.numrec === 0 ? head : tr.adminData(cmd.getLogPage(fabrics.LID_DISCOVERY, 0, bytes, 0, 0, 0), { toHost: bytes }, { detail: "Discovery" }).data!;
      const log = fabrics.parseDiscoveryLog(all);
      if (log.genctr !== h.genctr && tries < 3) continue;
      const records = log.entries.map((e) => ({
        ...e,
        uri:
          e.subtype === fabrics.SUBTYPE_NVM
            ? formatTcpTarget({ host: e.traddr, port: Number(e.trsvcid) || 4420, subnqn: e.subnqn })
            : formatTcpTarget({ host: e.traddr, port: Number(e.trsvcid) || 8009 }),
      }));
      return { target: text, genctr: log.genctr, records, hostnqn: tr.hostnqn };
    }
  } finally {
    tr.close();
  }
}
