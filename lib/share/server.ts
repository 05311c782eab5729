/**
 * Serving a controller to other processes (the C original's nvm_rpc_bind / SPDK's multi-process
 * mode): the process that opened the controller keeps its admin queue and listens on a Unix socket;
 * clients (client.ts, Controller.open("unix:PATH")) send admin commands through it, and have it
 * create their I/O queues at their own DMA memory, then ring their own doorbells and poll their own
 * completion queues with nobody in between.
 *
 * The server enforces what no client may do to the others:
 * - peers: only the uids allowed (the server's own by default), checked with SO_PEERCRED;
 * - a filter: Identify, Get Log Page and Get Features pass; Set Features, Format NVM, Sanitize,
 *   firmware, namespace management, vendor commands and a controller reset need a grant (`allow`);
 *   queue commands and Number of Queues are the server's alone;
 * - queues: a client deletes and aborts on its own queues only, and holds at most `maxQueues`;
 * - deadlines: every request carries one; the server does not run a request past it.
 * A client that disconnects, even killed, has its queues deleted (SQ, then CQ: the controller ends
 * every command of the SQ first) before anything of it is released.
 *
 * Memory per backend: sysfs clients translate their own pages (the server only holds their memfds
 * so the pages outlive them); VFIO and disnvm clients hand each DMA allocation over as a memfd,
 * which the server maps for the controller (VFIO: into its IOMMU container at an IOVA; disnvm: the
 * module pins it through the server's file and returns a bus address per page) and unmaps only
 * once no queue of that client exists. The client maps BAR0 through a descriptor the server
 * passes with its hello reply (VFIO: the device; disnvm: a BAR-only descriptor of the module's,
 * which maps no memory and cannot write the registers).
 *
 * A controller reset (one a client was granted, or the server's own recovery) drops every I/O
 * queue: each client is told with an event frame naming its queues, whose outstanding commands
 * then settle (the controller was disabled: no DMA of theirs can happen any more), and whose new
 * submissions fail with ShareError "queue-lost": the client creates new queues.
 *
 * Admin commands without data (Format NVM, Sanitize, Device Self-test, ...) run asynchronously, so
 * a long one of one client does not hold up the others; the short ones that move data (Identify,
 * Get Log Page) run in place. Each within its request's deadline.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { registerServe, type Controller } from "../controller.ts";
import { InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, ShareProtocolError, UnsupportedError } from "../errors.ts";
import { native } from "../native.ts";
import { VfioBackend } from "../backends/vfio.ts";
import { DisnvmBackend } from "../backends/disnvm.ts";
import * as cmd from "../spec/commands.ts";
import type { ForeignQueueHost } from "../transports/types.ts";
import type { PeerInfo, ShareConnection, ShareListener } from "./carrier.ts";
import { UnixListener } from "./link.ts";
import {
  decodeBody,
  encode,
  FrameReader,
  isRequestType,
  MSG_HELLO,
  MSG_HOLD_MEMORY,
  MAX_RUNS,
  RequestIds,
  typeName,
  type ErrorReason,
  type Frame,
  type Pages,
  type RawFrame,
  type Reply,
  type Request,
} from "./protocol.ts";

/** What `allow` may grant clients beyond the default. */
export type ShareGrant = "features" | "format" | "firmware" | "namespaces" | "reset" | "vendor" | "all";
export const SHARE_GRANTS: readonly ShareGrant[] = ["features", "format", "firmware", "namespaces", "reset", "vendor", "all"];

export interface ShareServerOptions {
  /**
   * Where clients connect, when not a Unix socket: a carrier's listener the caller made (a
   * SisciListener, for clients across a SmartIO cluster). The server closes it with itself.
   * socket and mode are then unused.
   */
  readonly listener?: ShareListener;
  /** Socket path. Defaults to /run/libnvm/<controller name>.sock (the directory is created). */
  readonly socket?: string;
  /** Permissions of the socket file. Defaults to 0o600 (the server's user only). */
  readonly mode?: number;
  /** Commands clients may send beyond Identify, Get Log Page and Get Features. Defaults to none. */
  readonly allow?: readonly ShareGrant[];
  /** Uids served (SO_PEERCRED). Defaults to the server's own uid. */
  readonly uids?: readonly number[];
  /** I/O queues one client may hold at once. Defaults to 8. */
  readonly maxQueues?: number;
  /** Bytes of DMA memory one client may have the server hold (hold-memory). Defaults to 64 GiB. */
  readonly maxMemory?: number;
  /**
   * How often the socket is looked at while clients talk (ms); after idleMs without a request it
   * is looked at every idlePollMs. Defaults to 1, 50 and 10: an idle server costs its clients' I/O
   * no CPU, a request after a pause waits at most 10 ms.
   */
  readonly pollMs?: number;
  readonly idleMs?: number;
  readonly idlePollMs?: number;
  /** Where the server says what happens (clients arriving, leaving, queues reclaimed). Defaults to none. */
  readonly log?: (line: string) => void;
}

/** A client as the server sees it. */
export interface ShareClientInfo {
  readonly id: number;
  readonly pid: number;
  /** undefined for a client across a SmartIO cluster (no credentials there). */
  readonly uid: number | undefined;
  readonly label: string;
  /** Its I/O submission queue ids (created or reserved). */
  readonly sqids: readonly number[];
  /** Bytes of its DMA memory the server holds (its memfds), so none is freed while its queues exist. */
  readonly heldBytes: number;
  /** Requests it made so far: a client's I/O goes to the controller without any, so this stays small while it does I/O. */
  readonly requests: number;
}

interface ClientQueue {
  readonly cqid: number;
  created: boolean;
}

interface Client {
  readonly id: number;
  readonly conn: ShareConnection;
  readonly peer: PeerInfo;
  readonly reader: FrameReader;
  readonly ids: RequestIds;
  readonly queues: Map<number, ClientQueue>;
  /** Descriptors that arrived and no hold-memory took yet. */
  readonly fds: number[];
  /** Memory held for it: handle → its memfd, size, where the controller reaches it (VFIO, disnvm) and the mapping's release. */
  readonly memory: Map<number, HeldMemory>;
  nextHandle: number;
  label: string;
  greeted: boolean;
  requests: number;
}

/** A run of consecutive 4 KiB pages of held memory, at consecutive bus addresses. */
interface Run {
  /** The first page's index in the memory. */
  readonly page: number;
  readonly bus: number;
  readonly pages: number;
}

interface HeldMemory {
  readonly fd: number;
  readonly bytes: number;
  /** VFIO: the IOVA it is mapped at; 0 otherwise. */
  readonly iova: number;
  /** VFIO and disnvm: where the controller reaches it. sysfs: none (the client translates its own pages). */
  readonly runs?: readonly Run[];
  unmap?: () => void;
}

/** Runs of consecutive bus addresses out of one address per 4 KiB page, (lo, hi) pairs. */
export function pageRuns(addrs: Uint32Array): Run[] {
  const runs: Run[] = [];
  let cur: { page: number; bus: number; pages: number } | undefined;
  for (let i = 0; i < addrs.length / 2; i++) {
    const bus = addrs[2 * i]! + addrs[2 * i + 1]! * 0x1_0000_0000;
    if (cur && cur.bus + cur.pages * 4096 === bus) cur.pages++;
    else {
      if (cur) runs.push(cur);
      cur = { page: i, bus, pages: 1 };
    }
  }
  if (cur) runs.push(cur);
  return runs;
}

/** The pages message for `runs` of memory `handle` of `bytes`, from page `first`: as many runs as one message carries. */
export function pagesFrom(handle: number, bytes: number, runs: readonly Run[], first: number): Pages {
  const out: { bus: number; pages: number }[] = [];
  for (const r of runs) {
    if (out.length === MAX_RUNS) break;
    if (r.page + r.pages <= first) continue;
    const skip = Math.max(0, first - r.page);
    out.push({ bus: r.bus + skip * 4096, pages: r.pages - skip });
  }
  return { type: "pages", handle, total: bytes, first, runs: out };
}

/** Why a request is refused (the grant that allows it), or undefined when clients may send it. */
export function adminGrantNeeded(opcode: number, cdw10: number): ShareGrant | "never" | undefined {
  switch (opcode) {
    case 0x06: // Identify
    case 0x02: // Get Log Page
    case 0x0a: // Get Features
      return undefined;
    case 0x09: // Set Features: Number of Queues (FID 07h) is the server's; the rest changes what every client sees
      return (cdw10 & 0xff) === cmd.FID_NUMBER_OF_QUEUES ? "never" : "features";
    case 0x80: // Format NVM
    case 0x84: // Sanitize
      return "format";
    case 0x10: // Firmware Commit
    case 0x11: // Firmware Image Download
      return "firmware";
    case 0x0d: // Namespace Management
    case 0x15: // Namespace Attachment
      return "namespaces";
    case 0x00: // Delete I/O SQ
    case 0x01: // Create I/O SQ
    case 0x04: // Delete I/O CQ
    case 0x05: // Create I/O CQ
    case 0x08: // Abort: through the queue requests, which check the queue is the client's
    case 0x0c: // Asynchronous Event Request: would hold an admin slot for ever
      return "never";
    default:
      return opcode >= 0xc0 ? "vendor" : "all";
  }
}

export class ShareServer {
  readonly controller: Controller;
  readonly path: string;
  readonly address: string;
  readonly #listener: ShareListener;
  readonly #host: ForeignQueueHost;
  /** The VFIO backend when the controller is reached through it: clients' memory is mapped in its IOMMU container. */
  readonly #vfio: VfioBackend | undefined;
  /** The disnvm backend when the controller is reached through the module: clients' memory is pinned through its file. */
  readonly #disnvm: DisnvmBackend | undefined;
  /** The controller's reset count last seen: a change means every client's queues are gone. */
  #resetsSeen: number;
  readonly #allow: ReadonlySet<ShareGrant>;
  readonly #uids: ReadonlySet<number>;
  readonly #maxQueues: number;
  readonly #maxMemory: number;
  readonly #log: (line: string) => void;
  readonly #clients = new Map<number, Client>();
  #nextClient = 1;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #pollMs: number;
  readonly #idleMs: number;
  readonly #idlePollMs: number;
  /** performance.now() of the last request or connection. */
  #lastActive = 0;
  #closed = false;
  #busy = false;
  /** Queues deleted because their client went away, for tests and the log. */
  reclaimed = 0;

  private constructor(ctrl: Controller, opts: ShareServerOptions) {
    this.controller = ctrl;
    this.#host = ctrl.foreignQueues();
    this.#vfio = ctrl.backend instanceof VfioBackend ? ctrl.backend : undefined;
    this.#disnvm = ctrl.backend instanceof DisnvmBackend ? ctrl.backend : undefined;
    // Before the socket exists: a module that cannot hand out BAR descriptors serves nobody.
    if (this.#disnvm && !this.#disnvm.info().barFd) {
      throw new UnsupportedError(`${ctrl.name}: the loaded disnvm module cannot hand its clients BAR0 alone (no DISNVM_IOC_BAR_FD): load the module built from this checkout (bash test/vm/build-module.sh), or serve the controller through sysfs or VFIO`);
    }
    this.#resetsSeen = ctrl.resets;
    const allow = new Set(opts.allow ?? []);
    for (const g of allow) if (!SHARE_GRANTS.includes(g)) throw new InvalidArgumentError(`allow: unknown grant "${g}"; choose from ${SHARE_GRANTS.join(", ")}`);
    this.#allow = allow;
    this.#uids = new Set(opts.uids ?? [process.getuid?.() ?? 0]);
    const maxQueues = opts.maxQueues ?? 8;
    if (!Number.isInteger(maxQueues) || maxQueues < 1 || maxQueues > 65535) throw new InvalidArgumentError(`maxQueues ${maxQueues}: 1 to 65535`);
    this.#maxQueues = maxQueues;
    this.#maxMemory = opts.maxMemory ?? 64 * 2 ** 30;
    this.#log = opts.log ?? (() => {});
    if (opts.listener) {
      this.#listener = opts.listener;
      this.path = opts.listener.address;
      this.address = opts.listener.address;
    } else {
      // By PCI address when there is one (a disnvm controller's name is its /dev node).
      this.path = opts.socket ?? defaultSocketPath(ctrl.backend.bdf ?? ctrl.name);
      this.address = `unix:${this.path}`;
      if (opts.socket === undefined) mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
      this.#listener = UnixListener.listen(this.path, opts.mode ?? 0o600);
    }
    this.#pollMs = opts.pollMs ?? 1;
    this.#idleMs = opts.idleMs ?? 50;
    this.#idlePollMs = opts.idlePollMs ?? 10;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed) return;
    const idle = performance.now() - this.#lastActive > this.#idleMs;
    this.#timer = setTimeout(() => {
      this.#tick();
      this.#schedule();
    }, idle ? this.#idlePollMs : this.#pollMs);
  }

  /**
   * Serve `ctrl` (opened by this process, over PCIe) on a Unix socket until close(). The
   * controller stays this process's: close() stops serving (deleting every client's queues) but
   * does not close it.
   */
  static listen(ctrl: Controller, opts: ShareServerOptions = {}): ShareServer {
    return new ShareServer(ctrl, opts);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The clients connected now. */
  clients(): ShareClientInfo[] {
    return [...this.#clients.values()].map((c) => ({
      id: c.id,
      pid: c.peer.pid,
      uid: c.peer.uid,
      label: c.label,
      sqids: [...c.queues.keys()],
      heldBytes: [...c.memory.values()].reduce((n, m) => n + m.bytes, 0),
      requests: c.requests,
    }));
  }

  // ---- the loop -----------------------------------------------------------------------------

  #tick(): void {
    if (this.#closed || this.#busy) return;
    this.#busy = true;
    try {
      for (let i = 0; i < 16; i++) {
        const a = this.#listener.accept();
        if (!a) break;
        this.#lastActive = performance.now();
        this.#arrive(a.conn, a.peer);
      }
      this.#noticeReset("the server's controller was reset (its recovery from a command that did not complete, or a failure)");
      for (const c of [...this.#clients.values()]) this.#serve(c);
    } finally {
      this.#busy = false;
    }
  }

  #arrive(conn: ShareConnection, peer: PeerInfo): void {
    // No uid where the carrier cannot know one (another host of a SmartIO cluster): served, and logged so.
    if (peer.uid !== undefined && !this.#uids.has(peer.uid)) {
      this.#log(`refused pid ${peer.pid}: uid ${peer.uid} is not served (serving ${[...this.#uids].join(", ")})`);
      try {
        conn.send(encode({ id: 0, timeoutMs: 0, msg: { type: "error", reason: "peer", message: `uid ${peer.uid} may not use ${this.address}: the server serves uid ${[...this.#uids].join(", ")}; run as that user, or start the server with --uid=${peer.uid}` } }), 100);
      } catch {
        // It is gone already.
      }
      conn.close();
      return;
    }
    const c: Client = { id: this.#nextClient++, conn, peer, reader: new FrameReader(), ids: new RequestIds(), queues: new Map(), fds: [], memory: new Map(), nextHandle: 1, label: "", greeted: false, requests: 0 };
    this.#clients.set(c.id, c);
  }

  #serve(c: Client): void {
    for (let chunks = 0; chunks < 16; chunks++) {
      let got: { bytes: Uint8Array; fds: number[] };
      try {
        got = c.conn.recvWithFds();
      } catch {
        this.#drop(c, "disconnected");
        return;
      }
      c.fds.push(...got.fds);
      if (got.bytes.length === 0) break;
      this.#lastActive = performance.now();
      c.reader.push(got.bytes);
    }
    for (;;) {
      let raw: RawFrame | undefined;
      try {
        raw = c.reader.next();
      } catch (e) {
        // The stream cannot be trusted past a broken header: say why, then drop the client.
        this.#reply(c, 0, { type: "error", reason: "protocol", message: (e as Error).message });
        this.#drop(c, `protocol error: ${(e as Error).message}`);
        return;
      }
      if (!raw) return;
      c.requests++;
      const received = performance.now();
      let msg: Request;
      try {
        c.ids.accept(raw.id, raw.type);
        if (!isRequestType(raw.type)) throw new ShareProtocolError(`${typeName(raw.type)} is a reply; the server takes requests`, "direction");
        msg = decodeBody(raw) as Request;
      } catch (e) {
        const reason: ErrorReason = e instanceof ShareProtocolError && e.violation === "replayed" ? "replayed" : "protocol";
        this.#discardFd(c, raw.type);
        this.#reply(c, raw.id, { type: "error", reason, message: (e as Error).message });
        continue;
      }
      if (!c.greeted && raw.type !== MSG_HELLO) {
        this.#discardFd(c, raw.type);
        this.#reply(c, raw.id, { type: "error", reason: "protocol", message: `${typeName(raw.type)} before hello` });
        continue;
      }
      const deadline = received + raw.timeoutMs;
      if (msg.type === "admin" && msg.toHost === 0 && !msg.toController) {
        // Without data it may be long (Format NVM, Sanitize, Device Self-test): the others are
        // served meanwhile, and its reply goes out whenever it settles.
        this.#adminAsync(c, raw.id, msg, deadline);
        continue;
      }
      let reply: Reply;
      try {
        reply = this.#handle(c, msg, deadline);
      } catch (e) {
        reply = errorReply(e);
      }
      if (!this.#clients.has(c.id)) return;
      if (reply.type === "hello-ok") this.#helloReply(c, raw.id, reply);
      else this.#reply(c, raw.id, reply);
      if (msg.type === "bye") {
        this.#drop(c, "said goodbye");
        return;
      }
    }
  }

  /**
   * The hello reply, with the descriptor the client maps BAR0 through: VFIO the device's; disnvm a
   * BAR-only one the module makes for this client (it can map no memory, and the registers only
   * read-only), closed here once sent.
   */
  #helloReply(c: Client, id: number, reply: Reply): void {
    if (this.#vfio) return this.#reply(c, id, reply, this.#vfio.deviceFd);
    if (!this.#disnvm) return this.#reply(c, id, reply);
    let fd: number;
    try {
      fd = this.#disnvm.barFd();
    } catch (e) {
      return this.#reply(c, id, errorReply(e));
    }
    try {
      this.#reply(c, id, reply, fd);
    } finally {
      native().nvm_unix_close(fd);
    }
  }

  /** An admin command without data, run without blocking the loop; replied to when it settles. */
  #adminAsync(c: Client, id: number, m: Extract<Request, { type: "admin" }>, deadline: number): void {
    const opcode = m.sqe[0]! & 0xff;
    const refused = this.#filter(opcode, m.sqe[10]!);
    if (refused) return this.#reply(c, id, refused);
    const name = cmd.commandName(opcode, true);
    const c0: cmd.Command = { opcode, nsid: m.sqe[1]!, cdw10: m.sqe[10]!, cdw11: m.sqe[11]!, cdw12: m.sqe[12]!, cdw13: m.sqe[13]!, cdw14: m.sqe[14]!, cdw15: m.sqe[15]! };
    let run: Promise<Reply>;
    try {
      // The request's own deadline, not the server's per-command timeout: a Format NVM may take minutes.
      const left = deadline - performance.now();
      if (left <= 0) throw new NvmeTimeoutError(`${name}: the request's deadline passed before the server could run it`, 0);
      run = this.controller.adminCommandAsync(c0, { timeoutMs: left }).then(
        (r): Reply => ({ type: "admin-ok", status: 0, dw0: r.dw0, dw1: r.dw1 }),
        (e: unknown): Reply => (e instanceof NvmeStatusError ? { type: "admin-ok", status: statusOf(e), dw0: 0, dw1: 0 } : errorReply(e)),
      );
    } catch (e) {
      return this.#reply(c, id, errorReply(e));
    }
    void run.then((reply) => {
      // A reset its recovery caused is the clients' to hear of before this reply.
      this.#noticeReset("the server's controller was reset (its recovery from an admin command that did not complete)");
      if (this.#clients.has(c.id)) this.#reply(c, id, reply);
    });
  }

  /** The refusal for an admin opcode clients may not send, or undefined. */
  #filter(opcode: number, cdw10: number): Reply | undefined {
    const need = adminGrantNeeded(opcode, cdw10);
    const name = cmd.commandName(opcode, true);
    if (need === "never") return refuse(`${name}(0x${hex2(opcode)}) is the server's own: clients ${opcode === 0x09 ? "cannot change Number of Queues" : "create, delete and abort through createIoQueue(), deleteIoQueue() and their queues"}`);
    if (need !== undefined && !this.#allow.has(need) && !this.#allow.has("all")) {
      return refuse(`${name}(0x${hex2(opcode)}) affects every client of ${this.controller.name}: the server refuses it unless started with --allow=${need}`);
    }
    return undefined;
  }

  /**
   * After a controller reset (the count moved): every client's created queues are gone from the
   * controller, which was disabled, so none of their commands can move data any more. Each client
   * hears which of its queues were lost (an event frame); their ids stay reserved until it deletes
   * them (nothing is sent to the controller then) or leaves.
   */
  #noticeReset(why: string): void {
    const now = this.controller.resets;
    if (now === this.#resetsSeen) return;
    this.#resetsSeen = now;
    for (const c of [...this.#clients.values()]) {
      const lost: number[] = [];
      for (const [sqid, q] of c.queues) {
        if (!q.created) continue;
        q.created = false;
        lost.push(sqid);
      }
      if (lost.length === 0) continue;
      this.#log(`client ${c.id}: I/O queue${lost.length === 1 ? "" : "s"} ${lost.join(", ")} lost to a controller reset (${why})`);
      this.#reply(c, 0, { type: "event", kind: "reset", sqids: lost, message: why });
    }
  }

  /** A hold-memory refused before it ran: close the descriptor that came with it, so the next one gets its own. */
  #discardFd(c: Client, type: number): void {
    if (type !== MSG_HOLD_MEMORY) return;
    const fd = c.fds.shift();
    if (fd !== undefined) native().nvm_unix_close(fd);
  }

  #reply(c: Client, id: number, msg: Reply, fd?: number): void {
    try {
      const bytes = encode({ id, timeoutMs: 0, msg } as Frame);
      if (fd !== undefined) c.conn.sendWithFd(bytes, fd, 1000);
      else c.conn.send(bytes, 1000);
    } catch {
      this.#drop(c, "does not read its replies");
    }
  }

  /** Milliseconds left until `deadline`; the request is refused when none are. */
  #left(deadline: number, what: string): number {
    const left = deadline - performance.now();
    if (left <= 0) throw new NvmeTimeoutError(`${what}: the request's deadline passed before the server could run it (the admin queue was busy)`, 0);
    return Math.min(left, this.controller.timeoutMs);
  }

  #handle(c: Client, m: Request, deadline: number): Reply {
    const ctrl = this.controller;
    switch (m.type) {
      case "hello": {
        c.greeted = true;
        c.label = m.label;
        this.#log(`client ${c.id}: pid ${c.peer.pid}, ${c.peer.uid !== undefined ? `uid ${c.peer.uid}` : `no uid (${c.peer.where ?? "another host"})`}${m.label ? ` (${m.label})` : ""}`);
        const cap = ctrl.registers().cap;
        return {
          type: "hello-ok",
          clientId: c.id,
          capLo: Number(cap & 0xffff_ffffn),
          capHi: Number(cap >> 32n),
          vs: ctrl.vs,
          timeoutMs: ctrl.timeoutMs,
          maxQueues: this.#maxQueues,
          backend: ctrl.backend.kind,
          bdf: ctrl.backend.bdf ?? ctrl.name,
          name: ctrl.name,
          serverPid: process.pid,
          bar0Offset: this.#vfio?.bar0Offset ?? 0,
          bar0Size: this.#vfio?.bar0Size ?? this.#disnvm?.bar0Size ?? 0,
        };
      }
      case "admin": {
        const opcode = m.sqe[0]! & 0xff;
        const refused = this.#filter(opcode, m.sqe[10]!);
        if (refused) return refused;
        const name = cmd.commandName(opcode, true);
        const c0: cmd.Command = { opcode, nsid: m.sqe[1]!, cdw10: m.sqe[10]!, cdw11: m.sqe[11]!, cdw12: m.sqe[12]!, cdw13: m.sqe[13]!, cdw14: m.sqe[14]!, cdw15: m.sqe[15]! };
        const timeoutMs = this.#left(deadline, name);
        const data = m.toHost > 0 ? { toHost: m.toHost } : m.toController ? { toController: m.toController } : undefined;
        try {
          const r = ctrl.adminData(c0, data, { timeoutMs });
          return r.data ? { type: "admin-ok", status: 0, dw0: r.dw0, dw1: r.dw1, data: r.data } : { type: "admin-ok", status: 0, dw0: r.dw0, dw1: r.dw1 };
        } catch (e) {
          if (e instanceof NvmeStatusError) return { type: "admin-ok", status: statusOf(e), dw0: 0, dw1: 0 };
          throw e;
        }
      }
      case "reserve-queue": {
        if (c.queues.size >= this.#maxQueues) {
          return { type: "error", reason: "quota", message: `this client holds ${c.queues.size} I/O queues, as many as the server grants one client (--queues=${this.#maxQueues}): delete one first` };
        }
        if (m.entries > ctrl.cap.mqes + 1) throw new InvalidArgumentError(`I/O queue of ${m.entries} entries: must be 2 to ${ctrl.cap.mqes + 1} (CAP.MQES+1)`);
        const ids = this.#host.reserveForeignQueue();
        c.queues.set(ids.sqid, { cqid: ids.cqid, created: false });
        return { type: "queue-ids", sqid: ids.sqid, cqid: ids.cqid };
      }
      case "create-queue": {
        const q = c.queues.get(m.sqid);
        if (!q || q.cqid !== m.cqid) return notOwner(m.sqid);
        // Through VFIO and disnvm the server knows the client's memory: the rings must lie in it.
        if ((this.#vfio || this.#disnvm) && !(this.#owns(c, m.sqBus, m.entries * 64) && this.#owns(c, m.cqBus, m.entries * 16))) {
          return refuse(`the rings of queue ${m.sqid} (SQ at 0x${m.sqBus.toString(16)}, CQ at 0x${m.cqBus.toString(16)}) are not in memory this client had the server map`);
        }
        this.#host.createForeignQueue(m.sqid, m.cqid, m.entries, m.sqBus, m.cqBus, { timeoutMs: this.#left(deadline, "Create I/O queue") });
        q.created = true;
        this.#log(`client ${c.id}: I/O queue ${m.sqid} (CQ ${m.cqid}, ${m.entries} entries)`);
        return { type: "ok" };
      }
      case "delete-queue": {
        const q = c.queues.get(m.sqid);
        if (!q) return notOwner(m.sqid);
        this.#host.deleteForeignQueue(m.sqid, q.cqid, { timeoutMs: this.#left(deadline, "Delete I/O queue") });
        c.queues.delete(m.sqid);
        return { type: "ok" };
      }
      case "abort": {
        if (!c.queues.has(m.sqid)) return notOwner(m.sqid);
        const r = ctrl.adminCommand(cmd.abort(m.sqid, m.cid), { timeoutMs: this.#left(deadline, "Abort") });
        return { type: "admin-ok", status: 0, dw0: r.dw0, dw1: r.dw1 };
      }
      case "reset": {
        if (!this.#allow.has("reset") && !this.#allow.has("all")) return refuse(`a controller reset ends every client's commands: the server refuses it unless started with --allow=reset`);
        const why = `client ${c.id} (pid ${c.peer.pid}) asked for a reset`;
        try {
          ctrl.reset(new Error(why));
        } finally {
          // Every client, this one included, hears of its lost queues before this reply.
          this.#noticeReset(why);
        }
        return { type: "ok" };
      }
      case "hold-memory": {
        const fd = c.fds.shift();
        if (fd === undefined) return { type: "error", reason: "protocol", message: "hold-memory came without its memfd (SCM_RIGHTS)" };
        const held = [...c.memory.values()].reduce((n, x) => n + x.bytes, 0);
        if (held + m.bytes > this.#maxMemory) {
          native().nvm_unix_close(fd);
          return { type: "error", reason: "quota", message: `the server holds ${held} bytes of this client's memory; ${m.bytes} more would pass its limit of ${this.#maxMemory}` };
        }
        const handle = c.nextHandle++;
        if (this.#disnvm) {
          // The module pins the client's pages through the server's file: they stay the
          // controller's to reach until released here, whatever becomes of the client.
          let mapped: { pages: Uint32Array; release(): void };
          try {
            mapped = this.#disnvm.mapForeign(fd, m.bytes);
          } catch (e) {
            native().nvm_unix_close(fd);
            throw e;
          }
          const runs = pageRuns(mapped.pages);
          c.memory.set(handle, { fd, bytes: m.bytes, iova: 0, runs, unmap: mapped.release });
          return pagesFrom(handle, m.bytes, runs, 0);
        }
        if (this.#vfio) {
          // The IOMMU maps the client's pages for the controller: the client learns the IOVA.
          let mapped: { iova: number; release(): void };
          try {
            mapped = this.#vfio.mapForeign(fd, m.bytes);
          } catch (e) {
            native().nvm_unix_close(fd);
            throw e;
          }
          c.memory.set(handle, { fd, bytes: m.bytes, iova: mapped.iova, runs: [{ page: 0, bus: mapped.iova, pages: m.bytes / 4096 }], unmap: mapped.release });
          return { type: "memory", handle, iova: mapped.iova };
        }
        c.memory.set(handle, { fd, bytes: m.bytes, iova: 0 });
        return { type: "memory", handle, iova: 0 };
      }
      case "memory-pages": {
        const h = c.memory.get(m.handle);
        if (!h?.runs) return { type: "error", reason: "not-owner", message: `memory ${m.handle} is not held for this client${h ? " with bus addresses of its own" : ""}` };
        if (m.first >= h.bytes / 4096) throw new InvalidArgumentError(`memory ${m.handle} has ${h.bytes / 4096} pages; page ${m.first} is past its end`);
        return pagesFrom(m.handle, h.bytes, h.runs, m.first);
      }
      case "release-memory": {
        const h = c.memory.get(m.handle);
        if (!h) return { type: "error", reason: "not-owner", message: `memory ${m.handle} is not held for this client` };
        c.memory.delete(m.handle);
        h.unmap?.();
        native().nvm_unix_close(h.fd);
        return { type: "ok" };
      }
      case "bye":
        this.#reclaim(c);
        return { type: "ok" };
    }
  }

  /** [bus, bus + bytes) lies within one run of consecutive pages of memory held for `c`. */
  #owns(c: Client, bus: number, bytes: number): boolean {
    for (const m of c.memory.values()) for (const r of m.runs ?? []) if (bus >= r.bus && bus + bytes <= r.bus + r.pages * 4096) return true;
    return false;
  }

  /**
   * Delete every queue of `c`: its SQs first (the controller ends their commands), then their CQs.
   * Only then is the client forgotten. A queue the controller could not be made to delete (no
   * answer) keeps its ids held, so no later queue lands on memory the controller may still reach.
   */
  #reclaim(c: Client): void {
    for (const [sqid, q] of [...c.queues]) {
      try {
        this.#host.deleteForeignQueue(sqid, q.cqid);
        if (q.created) this.reclaimed++;
        c.queues.delete(sqid);
      } catch (e) {
        this.#log(`client ${c.id}: I/O queue ${sqid} could not be deleted (${(e as Error).message}); its ids stay held`);
      }
    }
  }

  #drop(c: Client, why: string): void {
    if (!this.#clients.has(c.id)) return;
    const n = [...c.queues.values()].filter((q) => q.created).length;
    this.#reclaim(c);
    this.#clients.delete(c.id);
    c.conn.close();
    for (const fd of c.fds.splice(0)) native().nvm_unix_close(fd);
    // Only now, with its queues deleted, may its memory go back to the kernel. A queue the
    // controller would not delete keeps all of it held for as long as this server runs.
    const bytes = [...c.memory.values()].reduce((s, m) => s + m.bytes, 0);
    let memory = "";
    if (c.queues.size === 0) {
      for (const m of c.memory.values()) {
        m.unmap?.();
        native().nvm_unix_close(m.fd);
      }
      if (bytes > 0) memory = `, then released the ${bytes >> 20} MiB of memory it had the server hold`;
    } else if (bytes > 0) memory = `; keeps holding its ${bytes >> 20} MiB of memory (queues ${[...c.queues.keys()].join(", ")} could not be deleted)`;
    c.memory.clear();
    this.#log(`client ${c.id} (pid ${c.peer.pid}) ${why}${n > 0 ? `: deleted its ${n} I/O queue${n === 1 ? "" : "s"}` : ""}${memory} (${c.requests} request${c.requests === 1 ? "" : "s"} served)`);
  }

  /** Stop serving: every client's queues are deleted, connections closed, the socket removed. The controller stays open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const c of [...this.#clients.values()]) this.#drop(c, "disconnected: the server stops");
    this.#listener.close();
  }

  /**
   * @internal For tests: stop as a killed process would: every socket closed, nothing deleted,
   * no goodbye. Clients then find the server gone.
   */
  abandonForTests(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const c of this.#clients.values()) {
      if (c.conn.abandonForTests) c.conn.abandonForTests();
      else c.conn.close();
      for (const fd of [...c.fds, ...[...c.memory.values()].map((m) => m.fd)]) native().nvm_unix_close(fd);
    }
    this.#clients.clear();
    if (this.#listener.abandonForTests) this.#listener.abandonForTests();
    else this.#listener.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** /run/libnvm/<name>.sock, with the name's slashes made safe (a /dev/disnvmN node). */
export function defaultSocketPath(name: string): string {
  return `/run/libnvm/${name.replace(/^\/dev\//, "").replace(/[^A-Za-z0-9:._-]/g, "_")}.sock`;
}

function hex2(v: number): string {
  return v.toString(16).padStart(2, "0");
}

function refuse(message: string): Reply {
  return { type: "error", reason: "refused", message };
}

function notOwner(sqid: number): Reply {
  return { type: "error", reason: "not-owner", message: `I/O queue ${sqid} is not one of this client's: a client deletes and aborts on its own queues only` };
}

/** The 15-bit status field of a status error: SC, SCT, CRD, M, DNR. */
function statusOf(e: NvmeStatusError): number {
  return (e.sc & 0xff) | ((e.sct & 7) << 8) | ((e.crd & 3) << 11) | ((e.more ? 1 : 0) << 13) | ((e.dnr ? 1 : 0) << 14);
}

function errorReply(e: unknown): Reply {
  const message = e instanceof Error ? e.message : String(e);
  if (e instanceof NvmeTimeoutError) return { type: "error", reason: "timeout", message };
  if (e instanceof NvmeStatusError) return { type: "error", reason: "failed", message };
  if (e instanceof InvalidArgumentError) return { type: "error", reason: "refused", message };
  return { type: "error", reason: "failed", message: `${e instanceof Error ? e.name : "Error"}: ${message}` };
}

// Controller.serve() starts one of these (controller.ts cannot import this layer).
registerServe((ctrl, opts) => ShareServer.listen(ctrl, opts as ShareServerOptions));
