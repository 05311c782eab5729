/**
 * A controller another process serves (server.ts), opened with Controller.open("unix:PATH"): a
 * ControllerTransport whose admin commands travel over the socket, and whose I/O queues are
 * today's PCIe IoQueue over this process's own memory. The server creates the CQ and SQ at
 * addresses this process gives it; from then on this process writes SQ entries, rings its
 * doorbells in its own mapping of BAR0 and polls its own CQ, with nobody in between.
 *
 * Recovery is split: a command past its deadline is aborted through the server (which checks the
 * queue is ours); one the Abort does not end has its queue deleted through the server (the
 * controller ends every command of a deleted SQ first), and only then settles. When the server is
 * gone nobody can stop the controller's DMA into our memory: the commands settle with ShareError,
 * and the memory is given up (kept mapped, never reused) until this process exits.
 *
 * Backends: sysfs (this process maps BAR0 through sysfs and translates its own hugepages, each a
 * memfd the server holds too; root, as the server), VFIO (BAR0 through the device descriptor the
 * server passes; each DMA allocation a memfd the server maps in its IOMMU container, at an IOVA it
 * returns: remote-vfio.ts), disnvm (BAR0 through a BAR-only descriptor the module makes for the
 * server to pass; each DMA allocation a memfd the server has the module pin, with the bus address
 * of each page it returns: remote-disnvm.ts), SmartIO (opened as smartio-rpc:<fdid> across a
 * cluster, the frames carried by SISCI data interrupts, sisci-link.ts: this process borrows the
 * device shared, maps BAR0 through SISCI and allocates its memory as segments mapped for the device).
 *
 * A controller reset on the server's side (one a client was granted, or the server's recovery)
 * drops every client's queues: the server says which of ours with an event frame, which this
 * client reads every 50 ms while it has queues, and with every reply (a program spinning in
 * synchronous calls: at the latest when a command's deadline sends an Abort). Their outstanding commands
 * then settle with ShareError "queue-lost" (the controller was disabled: none can move data any
 * more), new submissions on them fail with it, and the queues' memory is given back: create new
 * queues (the default queue is created again on its next use).
 */
import type { Backend } from "../backends/types.ts";
import { parseSmartIoAddress, SmartIoBackend } from "../backends/smartio.ts";
import { SysfsBackend } from "../backends/sysfs.ts";
import { DmaBuffer } from "../dma.ts";
import { ClosedError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, ShareError, ShareProtocolError, UnsupportedError } from "../errors.ts";
import { IoCompletionQueue, IoQueue, type IoQueueContext, type IoQueueOptions, type PollingOptions } from "../io.ts";
import type { Completion } from "../queue.ts";
import { native } from "../native.ts";
import * as cmd from "../spec/commands.ts";
import { decodeCap, type Capabilities } from "../spec/registers.ts";
import { readRegisters } from "../transports/pcie/transport.ts";
import type { AdminAsyncOptions, AdminExecOptions, AdminResult, AdminTransfer, ControllerHooks, ControllerTransport, MapDmaBufOptions, NvmeIoQueue, RegisterSnapshot, TransportOptions } from "../transports/types.ts";
import type { ShareConnection } from "./carrier.ts";
import { connectUnix } from "./link.ts";
import { RemoteVfioBackend } from "./remote-vfio.ts";
import { RemoteDisnvmBackend } from "./remote-disnvm.ts";
import { decodeBody, encode, FrameReader, MAX_ADMIN_DATA, SHARE_VERSION, type ErrorReply, type HelloOk, type Reply, type Request, type ServerEvent } from "./protocol.ts";

/** How long beyond a request's own deadline the server's answer may take to arrive (its "timeout" reply included). */
const REPLY_SLACK_MS = 1000;
/** Sending a request: the server reads continuously, so a full socket means it is stuck. */
const SEND_MS = 2000;
/** How often a client with queues looks for the server's events between requests (ms). */
const EVENT_LOOK_MS = 50;
/** Requests the client sends on its own behalf (Abort, deleting a stuck queue, goodbye): short deadlines. */
const RECOVERY_MS = 2000;

export interface ShareClientOptions extends TransportOptions {
  /** After a command's deadline and its Abort, how long before its queue is deleted through the server (ms). Defaults to 1000. */
  readonly abortGraceMs?: number;
  /** How the async API waits for completions. Defaults to the IoQueue default. */
  readonly polling?: PollingOptions;
  /** How long connecting may take (ms). Defaults to the timeout. */
  readonly connectTimeoutMs?: number;
  /**
   * @internal The backend that maps BAR0 and this process's DMA memory, from what the server
   * said (tests). Defaults to the sysfs backend for the server's PCI address.
   */
  readonly shareBackend?: (hello: HelloOk) => Backend;
}

export class ShareClientTransport implements ControllerTransport {
  readonly kind = "pcie" as const;
  readonly name: string;
  readonly address: string;
  readonly cap: Capabilities;
  readonly vs: number;
  readonly timeoutMs: number;
  readonly transferCap = Infinity;
  readonly abortGraceMs: number;
  /** What the server said about itself and this client. */
  readonly hello: HelloOk;
  readonly backend: Backend;
  readonly #conn: ShareConnection;
  readonly #reader = new FrameReader();
  /** Descriptors the server sent (the VFIO device, with its hello reply), in arrival order. */
  readonly #fds: number[] = [];
  #nextId = 0;
  readonly #polling: PollingOptions | undefined;
  readonly #sqs = new Map<number, IoQueue>();
  readonly #deferred: { free(): void }[] = [];
  #hooks: ControllerHooks | undefined;
  #closed = false;
  /** Set once the server is gone: every call throws it. */
  #gone: ShareError | undefined;
  /** The server could not be made to delete a queue: the controller may still reach our memory. */
  #dmaAbandoned = false;
  #resets = 0;
  /** Ids of requests the async API waits for: their replies are kept when another request reads them. */
  readonly #outstanding = new Set<number>();
  readonly #stash = new Map<number, Reply>();
  /** Queues a controller reset dropped, settled, whose ids and memory are given back at the next chance. */
  readonly #lost = new Map<IoQueue, ShareError>();
  #reaping = false;
  /** While this client has queues: looks for the server's events between requests. */
  #watch: ReturnType<typeof setInterval> | undefined;

  /** Connect to the server at `path`, say hello, and map what the server's backend lets a client map. */
  static connect(path: string, opts: ShareClientOptions = {}): ShareClientTransport {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return ShareClientTransport.over(connectUnix(path, opts.connectTimeoutMs ?? timeoutMs), opts);
  }

  /**
   * Say hello over a connection a carrier made (connectUnix, connectSisci), and map what the
   * server's backend lets a client map. The transport owns the connection from here on.
   */
  static over(conn: ShareConnection, opts: ShareClientOptions = {}): ShareClientTransport {
    try {
      return new ShareClientTransport(conn, opts, opts.timeoutMs ?? 10_000);
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  private constructor(conn: ShareConnection, opts: ShareClientOptions, timeoutMs: number) {
    this.#conn = conn;
    this.address = conn.address;
    this.timeoutMs = timeoutMs;
    this.abortGraceMs = opts.abortGraceMs ?? 1000;
    this.#polling = opts.polling;
    const r = this.#request({ type: "hello", pid: process.pid, label: process.argv.slice(1, 2).join(" ") }, timeoutMs);
    if (r.type !== "hello-ok") throw this.#unexpected(r, "hello");
    this.hello = r;
    this.name = `${r.name} via ${this.address}`;
    this.cap = decodeCap(r.capLo, r.capHi);
    this.vs = r.vs;
    const deviceFd = this.#fds.shift();
    if (opts.shareBackend) this.backend = opts.shareBackend(r);
    else if (r.backend === "sysfs") {
      // Every hugepage this process maps for DMA is a memfd the server holds too, so the kernel
      // frees none of it when this process dies, only once the server deleted its queues.
      this.backend = new SysfsBackend(r.bdf, { holder: { hold: (fd, bytes) => this.#holdMemory(fd, bytes).handle, release: (h) => this.#releaseMemory(h) } });
    } else if (r.backend === "smartio") {
      // Across a SmartIO cluster: this process borrows the device too (shared), maps BAR0 through
      // SISCI and makes its queues and data SISCI segments mapped for the device, whose addresses
      // the server puts in Create I/O CQ/SQ. The server cannot see that memory: it trusts the
      // addresses, as with sysfs.
      this.backend = new SmartIoBackend(parseSmartIoAddress(r.bdf), { exclusive: false });
    } else if (r.backend === "vfio" && deviceFd !== undefined) {
      // The IOMMU container is the server's: it maps our memory and tells us where (IOVAs).
      this.backend = new RemoteVfioBackend(r.bdf, deviceFd, r.bar0Offset, r.bar0Size, { hold: (fd, bytes) => this.#holdMemory(fd, bytes), release: (h) => this.#releaseMemory(h) });
    } else if (r.backend === "disnvm" && deviceFd !== undefined) {
      // The module's file is the server's: it has our memory pinned and tells us each page's bus address.
      this.backend = new RemoteDisnvmBackend(r.bdf, r.name, deviceFd, r.bar0Size, { hold: (fd, bytes) => this.#holdPages(fd, bytes), release: (h) => this.#releaseMemory(h) });
    } else {
      if (deviceFd !== undefined) native().nvm_unix_close(deviceFd);
      this.#bye();
      throw new UnsupportedError(
        `${this.address} serves ${r.name} through its ${r.backend} backend${deviceFd === undefined && r.backend !== "sysfs" ? " but passed no descriptor to reach BAR0 through" : ""}; clients of libnvm reach a served controller through sysfs, VFIO, disnvm or SmartIO: serve it through one of those, or open it in the server's process`,
      );
    }
    if (opts.shareBackend && deviceFd !== undefined) native().nvm_unix_close(deviceFd);
  }

  // ---- requests -----------------------------------------------------------------------------

  #checkLink(): void {
    if (this.#gone) throw this.#gone;
  }

  #linkLost(e: unknown): never {
    if (e instanceof ShareError && e.reason === "server-gone") {
      this.#gone ??= new ShareError(`${e.message}; the server of ${this.address} is gone: its controller can no longer be shared with this process (open it again once a server runs)`, "server-gone", this.address);
      throw this.#gone;
    }
    if (e instanceof ShareProtocolError) {
      // Nothing after a broken frame can be trusted: this connection is done.
      this.#gone ??= new ShareError(`${this.address}: the server broke the protocol (${e.message}); reconnect`, "server-gone", this.address);
      this.#conn.close();
    }
    throw e;
  }

  /**
   * The reply to `id` among the frames that arrived. Replies to requests the async API still waits
   * for are kept for it; replies to requests given up on are dropped; events are acted on.
   */
  #take(id: number): Reply | undefined {
    const kept = this.#stash.get(id);
    if (kept) {
      this.#stash.delete(id);
      return kept;
    }
    for (;;) {
      const raw = this.#reader.next();
      if (!raw) return undefined;
      const m = decodeBody(raw) as Reply;
      if (raw.id === 0) {
        // Id 0: from the server on its own: an event, or about the connection (the server refuses
        // this peer, or this stream).
        if (m.type === "event") {
          this.#onEvent(m);
          continue;
        }
        if (m.type === "error") return m;
        throw new ShareProtocolError(`${m.type} without a request id`, "reply-id");
      }
      if (raw.id === id) return m;
      if (this.#outstanding.has(raw.id)) {
        this.#stash.set(raw.id, m);
        continue;
      }
      if (raw.id > this.#nextId) throw new ShareProtocolError(`a reply to request ${raw.id}, which was not sent (the last was ${this.#nextId})`, "reply-id");
    }
  }

  /**
   * The server reset the controller: our queues `sqids` are gone from it. It was disabled first,
   * so none of their commands can move data any more: settle them now, refuse new ones, and give
   * the ids and memory back once no request is being waited for (#reapLost).
   */
  #onEvent(m: ServerEvent): void {
    for (const sqid of m.sqids) {
      const q = this.#sqs.get(sqid);
      if (!q || this.#lost.has(q)) continue;
      const err = new ShareError(
        `I/O queue ${sqid} was lost: the server of ${this.address} reset the controller (${m.message}); its commands ended without a result ` +
          `(their data may or may not have moved). Create a new queue (createIoQueue(); the default queue is created again on its next use)`,
        "queue-lost",
        this.address,
      );
      q.settleAndRefuse(err);
      this.#lost.set(q, err);
    }
    if (this.#lost.size > 0) setTimeout(() => this.#reapLost(), 0);
  }

  /**
   * Every EVENT_LOOK_MS while queues exist: read what the server sent on its own between requests,
   * so commands on queues a reset dropped settle soon after it, not at their deadline. Replies the
   * async API waits for are kept for it; a server gone is noticed here too. A program that only
   * spins in synchronous calls hears of it with its next request (at the latest a deadline's Abort).
   */
  #lookForEvents(): void {
    if (this.#closed || this.#gone || this.#conn.closed) return;
    try {
      const chunk = this.#conn.recv(0);
      if (chunk.length > 0) this.#reader.push(chunk);
      this.#take(0);
    } catch (e) {
      try {
        this.#linkLost(e);
      } catch {
        // Kept in #gone when the server is gone; the next call says so.
      }
    }
  }

  /**
   * Lost queues: their ids go back to the server (which sends the controller nothing), their memory
   * to us. Only from the top of a call or a timer, never inside a queue's own callbacks (an Abort
   * sent at a deadline), whose poll may still be using the rings.
   */
  #reapLost(): void {
    if (this.#reaping || this.#lost.size === 0 || this.#closed) return;
    this.#reaping = true;
    try {
      for (const [q, err] of [...this.#lost]) {
        this.#lost.delete(q);
        if (this.#sqs.get(q.qid) === q) this.#sqs.delete(q.qid);
        // The controller dropped the queue when it was disabled: its memory is ours again, whatever the server answers.
        if (!this.#gone) this.#release(q.qid);
        q.free(err);
        q.ioCq.free();
      }
    } finally {
      this.#reaping = false;
    }
  }

  #send(msg: Request, timeoutMs: number): number {
    this.#checkLink();
    const id = ++this.#nextId;
    try {
      this.#conn.send(encode({ id, timeoutMs: Math.max(1, Math.ceil(timeoutMs)), msg }), SEND_MS);
    } catch (e) {
      this.#linkLost(e);
    }
    return id;
  }

  /** Send `msg` with a deadline of `timeoutMs` and wait (bounded) for its reply. */
  #request(msg: Request, timeoutMs: number): Reply {
    return this.#wait(this.#send(msg, timeoutMs), msg, timeoutMs);
  }

  /** The reply to request `id` (`msg`), bounded by its deadline plus REPLY_SLACK_MS. */
  #wait(id: number, msg: Request, timeoutMs: number): Reply {
    const deadline = performance.now() + timeoutMs + REPLY_SLACK_MS;
    try {
      for (;;) {
        const r = this.#take(id);
        if (r) return this.#checked(r);
        const left = deadline - performance.now();
        if (left <= 0) break;
        const got = this.#conn.recvWithFds(Math.min(left, 50) * 1000);
        this.#fds.push(...got.fds);
        if (got.bytes.length > 0) this.#reader.push(got.bytes);
      }
    } catch (e) {
      this.#linkLost(e);
    }
    throw new ShareError(`${this.address}: no answer to ${msg.type} within ${timeoutMs + REPLY_SLACK_MS} ms: the server is stuck or overloaded`, "timeout", this.address);
  }

  /** The same without blocking the event loop: looked for every 1 to 20 ms. */
  async #requestAsync(msg: Request, timeoutMs: number, onWait?: (elapsedMs: number) => void): Promise<Reply> {
    const id = this.#send(msg, timeoutMs);
    this.#outstanding.add(id);
    const t0 = performance.now();
    const deadline = t0 + timeoutMs + REPLY_SLACK_MS;
    try {
      for (let looks = 0; ; looks++) {
        if (this.#closed) throw new ClosedError(`controller ${this.name} was closed while ${msg.type} ran`);
        try {
          const chunk = this.#conn.recv(0);
          if (chunk.length > 0) this.#reader.push(chunk);
          const r = this.#take(id);
          if (r) return this.#checked(r);
        } catch (e) {
          this.#linkLost(e);
        }
        if (this.#lost.size > 0) this.#reapLost();
        const now = performance.now();
        if (now > deadline) throw new ShareError(`${this.address}: no answer to ${msg.type} within ${timeoutMs + REPLY_SLACK_MS} ms: the server is stuck or overloaded`, "timeout", this.address);
        onWait?.(now - t0);
        await Bun.sleep(Math.min(1 + looks, 20));
      }
    } finally {
      this.#outstanding.delete(id);
      this.#stash.delete(id);
    }
  }

  /**
   * Hand the memfd `fd` over to a disnvm server, which has the module map it: its handle and one
   * bus address per 4 KiB page, (lo, hi) pairs, gathered over as many pages messages as it takes.
   */
  #holdPages(fd: number, bytes: number): { handle: number; pages: Uint32Array } {
    let r = this.#holdReply(fd, bytes);
    if (r.type !== "pages") throw this.#unexpected(r, "hold-memory");
    const handle = r.handle;
    const count = bytes / 4096;
    if (r.total !== bytes) throw new ShareProtocolError(`${this.address}: pages of ${r.total} bytes for memory of ${bytes}`, "reply-type");
    const out = new Uint32Array(2 * count);
    let page = 0;
    try {
      for (;;) {
        if (r.type !== "pages" || r.handle !== handle || r.first !== page) throw this.#unexpected(r, `memory-pages ${page}`);
        for (const run of r.runs) {
          for (let i = 0; i < run.pages; i++, page++) {
            const a = run.bus + i * 4096;
            out[2 * page] = a % 0x1_0000_0000;
            out[2 * page + 1] = Math.floor(a / 0x1_0000_0000);
          }
        }
        if (page >= count) break;
        if (r.runs.length === 0) throw new ShareProtocolError(`${this.address}: no bus addresses from page ${page} of ${count}`, "reply-type");
        r = this.#request({ type: "memory-pages", handle, first: page }, this.timeoutMs);
      }
    } catch (e) {
      this.#releaseMemory(handle);
      throw e;
    }
    return { handle, pages: out };
  }

  /** Hand the memfd `fd` over to the server; its handle, and (VFIO) the IOVA it mapped it at. */
  #holdMemory(fd: number, bytes: number): { handle: number; iova: number } {
    const r = this.#holdReply(fd, bytes);
    if (r.type !== "memory") throw this.#unexpected(r, "hold-memory");
    return { handle: r.handle, iova: r.iova };
  }

  #holdReply(fd: number, bytes: number): Reply {
    this.#checkLink();
    const id = ++this.#nextId;
    try {
      this.#conn.sendWithFd(encode({ id, timeoutMs: this.timeoutMs, msg: { type: "hold-memory", bytes } }), fd, SEND_MS);
    } catch (e) {
      this.#linkLost(e);
    }
    return this.#wait(id, { type: "hold-memory" } as Request, this.timeoutMs);
  }

  /** The memory of `handle` is unmapped: the server may let it go. Quiet: gone or closed, the server drops it anyway. */
  #releaseMemory(handle: number): void {
    if (this.#gone || this.#conn.closed) return;
    try {
      this.#request({ type: "release-memory", handle }, RECOVERY_MS);
    } catch {
      // Held until this client disconnects.
    }
  }

  /** An error reply as the typed error it stands for. */
  #checked(r: Reply): Reply {
    if (r.type !== "error") return r;
    throw this.#errorOf(r);
  }

  #errorOf(r: ErrorReply): Error {
    switch (r.reason) {
      case "timeout":
        return new NvmeTimeoutError(`${this.address}: ${r.message}`, this.timeoutMs);
      case "protocol":
      case "replayed":
        return new ShareProtocolError(`${this.address} refused the request: ${r.message}`, r.reason);
      case "refused":
        return new ShareError(`${this.address}: ${r.message}`, "refused", this.address);
      default:
        return new ShareError(`${this.address}: ${r.message}`, r.reason, this.address);
    }
  }

  #unexpected(r: Reply, what: string): ShareProtocolError {
    return new ShareProtocolError(`${this.address}: ${r.type} is no answer to ${what}`, "reply-type");
  }

  #bye(): void {
    try {
      this.#request({ type: "bye" }, RECOVERY_MS);
    } catch {
      // Leaving anyway: the server reclaims on the disconnect.
    }
  }

  // ---- ControllerTransport -------------------------------------------------------------------

  configure(hooks: ControllerHooks): void {
    this.#hooks = hooks;
  }

  abortOpen(): void {
    this.close();
  }

  get closed(): boolean {
    return this.#closed;
  }

  get resets(): number {
    return this.#resets;
  }

  check(): void {
    if (this.#closed) throw new ClosedError(`controller ${this.name} is closed; open it again`);
    this.#checkLink();
    if (this.#lost.size > 0) this.#reapLost();
  }

  /**
   * What only the owner of the controller has (its admin queue pair, completion queues of their
   * own, lending a queue to a Worker): the server keeps the admin queue and every queue's
   * bookkeeping, so this says what to do instead.
   */
  unsupported(what: string): UnsupportedError {
    const instead = what.startsWith("lending")
      ? `a Worker opens the controller itself instead: Controller.open("${this.address}") in the Worker makes it another client of the server, with I/O queues of its own`
      : `that is for the server's process (pid ${this.hello.serverPid}) to do`;
    return new UnsupportedError(`${what}: ${this.name} is served by another process, which keeps its admin queue and every queue's bookkeeping; ${instead}`);
  }

  registers(): RegisterSnapshot {
    this.check();
    return readRegisters(this.backend);
  }

  adminCommand(c: cmd.Command, opts?: AdminExecOptions): Completion {
    return this.adminData(c, undefined, opts);
  }

  adminData(c: cmd.Command, data: AdminTransfer | undefined, opts: AdminExecOptions = {}): AdminResult {
    this.check();
    const msg = adminRequest(c, data);
    const r = this.#request(msg, opts.timeoutMs ?? this.timeoutMs);
    return this.#adminResult(c, r, opts);
  }

  #adminResult(c: cmd.Command, r: Reply, opts: AdminExecOptions): AdminResult {
    if (r.type !== "admin-ok") throw this.#unexpected(r, "an admin command");
    if (r.status !== 0) throw new NvmeStatusError(r.status, { command: cmd.commandName(c.opcode, true), opcode: c.opcode, cid: 0, sqid: 0, ...(opts.detail ? { detail: opts.detail } : {}) });
    return r.data ? { dw0: r.dw0, dw1: r.dw1, cid: 0, data: r.data } : { dw0: r.dw0, dw1: r.dw1, cid: 0 };
  }

  async adminCommandAsync(c: cmd.Command, opts: AdminAsyncOptions = {}): Promise<Completion> {
    this.check();
    const r = await this.#requestAsync(adminRequest(c, undefined), opts.timeoutMs ?? this.timeoutMs, opts.onWait);
    return this.#adminResult(c, r, opts);
  }

  /**
   * Number of Queues is the server's to set (it affects every client): a client gets what the
   * server grants it, which this returns without asking the controller anything.
   */
  setNumberOfQueues(_sqs: number, _cqs: number): { sqs: number; cqs: number } {
    this.check();
    return this.ioQueuesGranted();
  }

  ioQueuesGranted(): { sqs: number; cqs: number } {
    return { sqs: this.hello.maxQueues, cqs: this.hello.maxQueues };
  }

  get #ioContext(): IoQueueContext {
    const hooks = this.#hooks;
    if (!hooks) throw new InvalidArgumentError(`${this.name}: the controller was not identified yet`);
    return {
      backend: this.backend,
      dstrd: this.cap.dstrd,
      timeoutMs: this.timeoutMs,
      maxTransfer: hooks.maxTransfer,
      sgls: hooks.sgls,
      lbaSize: hooks.lbaSize,
      abortGraceMs: this.abortGraceMs,
      onExpired: (q, cid) => this.#onExpired(q, cid),
      onStuck: (q, cid) => this.#onStuck(q, cid),
      // The controller's state is the server's to act on (a reset, or its close): commands
      // outstanding here reach their deadlines and recover through onExpired and onStuck.
      onFatal: () => {},
      polling: this.#polling,
    };
  }

  /**
   * Create an I/O queue: the server reserves a SQ id and a CQ id, this process allocates both
   * rings (physically contiguous, CAP.CQR) and the queue's list pages, then the server creates the
   * CQ and the SQ at their addresses. A shared CQ (`opts.cq`) and a chosen `qid` are not offered.
   */
  createIoQueue(opts: IoQueueOptions = {}): NvmeIoQueue {
    this.check();
    if (opts.cq) throw new UnsupportedError(`${this.name}: completion queues shared by several SQs are not offered to a client of a server yet; create each queue with its own`);
    if (opts.qid !== undefined) throw new InvalidArgumentError(`${this.name}: the server picks the queue ids of its clients; leave qid out`);
    const entries = opts.entries ?? 256;
    if (!Number.isInteger(entries) || entries < 2 || entries > this.cap.mqes + 1) {
      throw new InvalidArgumentError(`I/O queue of ${entries} entries: must be 2 to ${this.cap.mqes + 1} (CAP.MQES+1)`);
    }
    const ids = this.#request({ type: "reserve-queue", entries }, this.timeoutMs);
    if (ids.type !== "queue-ids") throw this.#unexpected(ids, "reserve-queue");
    let cq: IoCompletionQueue | undefined;
    let q: IoQueue;
    try {
      cq = new IoCompletionQueue(this.backend, ids.cqid, entries, this.cap.dstrd, true);
      q = new IoQueue(this.#ioContext, ids.sqid, entries, cq, opts);
    } catch (e) {
      cq?.free();
      this.#release(ids.sqid);
      throw e;
    }
    try {
      const r = this.#request({ type: "create-queue", sqid: ids.sqid, cqid: ids.cqid, entries, sqBus: q.sq.mem.busAddress(0), cqBus: cq.cq.mem.busAddress(0) }, this.timeoutMs);
      if (r.type !== "ok") throw this.#unexpected(r, "create-queue");
    } catch (e) {
      // A refusal or a status: the controller has no such queue, the memory is ours again. Anything
      // else (no answer, the server gone): it may have created it, so the memory is kept.
      const done = e instanceof ShareError && (e.reason === "refused" || e.reason === "failed" || e.reason === "not-owner");
      this.#release(ids.sqid);
      if (done && !this.#gone) {
        q.free();
        cq.free();
      } else {
        q.settleAndRefuse(e as Error);
        this.#deferred.push(q, cq);
      }
      throw e;
    }
    cq.sqs.set(ids.sqid, q);
    if (!this.#watch) {
      this.#watch = setInterval(() => this.#lookForEvents(), EVENT_LOOK_MS);
      this.#watch.unref?.();
    }
    this.#sqs.set(ids.sqid, q);
    return q;
  }

  /** Ask the server to delete (or forget) SQ `sqid`; false when it could not (gone, no answer). */
  #release(sqid: number): boolean {
    try {
      this.#request({ type: "delete-queue", sqid }, RECOVERY_MS);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Delete an I/O queue through the server (SQ, then CQ; the controller ends what is outstanding
   * first: those commands settle with ClosedError). When the server cannot confirm it, the queue's
   * memory is kept until close().
   */
  deleteIoQueue(q: NvmeIoQueue): void {
    this.check();
    const io = this.#sqs.get(q.qid);
    if (io !== q) return;
    const r = this.#request({ type: "delete-queue", sqid: io.qid }, this.timeoutMs);
    if (r.type !== "ok") throw this.#unexpected(r, "delete-queue");
    this.#sqs.delete(io.qid);
    io.free();
    io.ioCq.free();
  }

  ioQueues(): IterableIterator<IoQueue> {
    return this.#sqs.values();
  }

  isLent(_qid: number): boolean {
    return false;
  }

  /** A command's deadline passed: ask the server to Abort it (on our own queue). */
  #onExpired(q: IoQueue, cid: number): void {
    if (this.#closed || this.#gone) return;
    try {
      this.#request({ type: "abort", sqid: q.qid, cid }, Math.min(this.timeoutMs, RECOVERY_MS));
    } catch {
      // No Abort: onStuck deletes the queue after the grace period.
    }
  }

  /**
   * A command outstanding abortGraceMs after its deadline and its Abort: have the server delete
   * the queue (the controller ends its commands first), then settle them. When the server cannot
   * (it is gone), settle them anyway, with ShareError, and give the memory up for good.
   */
  #onStuck(q: IoQueue, cid: number): void {
    if (q.closed || !q.isExpired(cid) || this.#sqs.get(q.qid) !== q) return;
    const err = new NvmeTimeoutError(`command ${cid} on queue ${q.qid} did not complete within ${q.timeoutMs} ms and was not aborted; the queue was deleted through ${this.address}: create another`, q.timeoutMs);
    this.#sqs.delete(q.qid);
    if (!this.#gone && this.#release(q.qid)) {
      q.free();
      q.ioCq.free();
      return;
    }
    this.#abandonDma();
    q.settleAndRefuse(this.#gone ?? new ShareError(`command ${cid} on queue ${q.qid} did not complete and the server of ${this.address} did not delete its queue: this process keeps the queue's memory until it exits`, "timeout", this.address));
  }

  #abandonDma(): void {
    if (this.#dmaAbandoned) return;
    this.#dmaAbandoned = true;
    this.backend.abandonDma();
  }

  allocBuffer(size: number): DmaBuffer {
    this.check();
    return new DmaBuffer(this.backend, size);
  }

  mapDmaBuf(_fd: number, _opts: MapDmaBufOptions): DmaBuffer {
    throw new UnsupportedError(`${this.name}: dma-buf imports need the disnvm backend in the process that owns the controller`);
  }

  releaseAfter(error: unknown, resource: { free(): void }): void {
    if (error instanceof NvmeStatusError || error instanceof InvalidArgumentError) resource.free();
    else this.#deferred.push(resource);
  }

  /**
   * Ask the server to reset the controller (refused unless it grants "reset"). As for every reset
   * on the server's side, every client's queues are lost, this process's included: their commands
   * outstanding fail with ShareError "queue-lost", and new queues are created as needed.
   */
  reset(_reason?: Error): void {
    this.check();
    const r = this.#request({ type: "reset" }, Math.max(this.timeoutMs, this.cap.timeoutMs * 2 + 1000));
    if (r.type !== "ok") throw this.#unexpected(r, "reset");
    this.#resets++;
    this.#reapLost();
  }

  /**
   * Delete every queue through the server, say goodbye, and release this process's memory and
   * BAR0 mapping. Memory of a queue the server could not confirm deleted is kept until exit.
   * The controller stays the server's. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#watch) clearInterval(this.#watch);
    let safe = !this.#gone && !this.#dmaAbandoned;
    for (const q of [...this.#sqs.values()]) {
      if (safe && this.#release(q.qid)) {
        q.free();
        q.ioCq.free();
      } else {
        safe = false;
        q.settleAndRefuse(this.#gone ?? new ClosedError(`controller ${this.name} was closed`));
      }
    }
    this.#sqs.clear();
    if (!this.#gone) this.#bye();
    this.#conn.close();
    for (const fd of this.#fds.splice(0)) native().nvm_unix_close(fd);
    if (!safe) this.#abandonDma();
    else for (const r of this.#deferred.splice(0)) r.free();
    this.backend.close();
  }
}

function adminRequest(c: cmd.Command, data: AdminTransfer | undefined): Request {
  const sqe = new Uint32Array(16);
  sqe[0] = c.opcode & 0xff;
  sqe[1] = c.nsid ?? 0;
  sqe[10] = c.cdw10 ?? 0;
  sqe[11] = c.cdw11 ?? 0;
  sqe[12] = c.cdw12 ?? 0;
  sqe[13] = c.cdw13 ?? 0;
  sqe[14] = c.cdw14 ?? 0;
  sqe[15] = c.cdw15 ?? 0;
  const toHost = data?.toHost ?? 0;
  if (toHost > MAX_ADMIN_DATA) throw new InvalidArgumentError(`${toHost} bytes of admin command data: a client of a server moves at most ${MAX_ADMIN_DATA} per command`);
  return data?.toController ? { type: "admin", sqe, toHost, toController: data.toController } : { type: "admin", sqe, toHost };
}
