/**
 * The PCIe transport (NVMe Base 2.0, 3.5.1 "Memory-based Controller Initialization" and 3.6
 * "Shutdown"): registers by MMIO through a backend (sysfs, VFIO, the disnvm module), the admin
 * queue pair and every I/O queue in DMA memory with doorbells, recovery by Abort and controller
 * reset, queues lent to Workers, and release on close(). Controller (lib/controller.ts) runs the
 * NVMe logic above it (Identify, features, logs, namespaces, Format NVM) through admin().
 */
import { ControllerBusyError, ControllerFatalError, ClosedError, DeviceError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, SmartIoError } from "../../errors.ts";
import { native } from "../../native.ts";
import { DmaBuffer } from "../../dma.ts";
import { QueueLease } from "../../lease.ts";
import { buildPrp, prpListPages, PRP_PAGE_SIZE } from "../../prp.ts";
import { QueuePair, type Completion, type ExecOptions } from "../../queue.ts";
import { IoCompletionQueue, IoQueue, type IoQueueContext, type IoQueueOptions, type PollingOptions } from "../../io.ts";
import { controllerName, createBackend, resolveController, type BackendChoice } from "../../backends/index.ts";
import { OwnerLock } from "../../lock.ts";
import { HOST_PAGE_SIZE, type Backend } from "../../backends/types.ts";
import * as cmd from "../../spec/commands.ts";
import {
  ADMIN_QUEUE_MAX_ENTRIES,
  CC_EN,
  CC_SHN_MASK,
  CC_SHN_NORMAL,
  CSTS_CFS,
  CSTS_RDY,
  CSTS_SHST_COMPLETE,
  CSTS_SHST_MASK,
  decodeCap,
  encodeAqa,
  encodeCc,
  REG_ACQ,
  REG_ALL_ONES,
  REG_AQA,
  REG_ASQ,
  REG_CAP,
  REG_CC,
  REG_CSTS,
  REG_VS,
  type Capabilities,
} from "../../spec/registers.ts";
import { SC_ABORT_REQUESTED, SCT_GENERIC } from "../../spec/status.ts";
import type { AdminAsyncOptions, AdminExecOptions, AdminResult, AdminTransfer, ControllerHooks, ControllerTransport, ForeignQueueHost, MapDmaBufOptions, RegisterSnapshot, TransportOptions } from "../types.ts";

const HOST_PAGE_SHIFT = 12;

export interface PcieOptions extends TransportOptions {
  /**
   * How to reach the controller: "sysfs" (raw, root, IOMMU off), "vfio" (bound to vfio-pci),
   * "disnvm" (the kernel module), or "auto": by the device's bound driver, or disnvm for a
   * /dev/disnvmN path. Defaults to "auto".
   */
  readonly backend?: BackendChoice;
  /** Admin SQ and CQ entries, 2 to 4096 (AQA). Defaults to 64. */
  readonly adminQueueEntries?: number;
  /**
   * Open even when another live process owns the controller (it is reset under that process).
   * For a hung owner; after a crash the lock is free anyway. Defaults to false.
   */
  readonly force?: boolean;
  /**
   * After a command's deadline the library sends Abort for it; how long the command may then take
   * to end before the controller is reset. Its caller is settled only at that end. Defaults to 1000.
   */
  readonly abortGraceMs?: number;
  /**
   * How the async API waits for completions: spin for a while after activity, then poll on a timer
   * tick (the default), or always spin. Defaults to { mode: "adaptive", spinUs: 500, sleepMs: 1 }.
   */
  readonly polling?: PollingOptions;
}

export class PcieTransport implements ControllerTransport, ForeignQueueHost {
  readonly kind = "pcie" as const;
  readonly backend: Backend;
  readonly cap: Capabilities;
  /** Version register (VS), raw. */
  readonly vs: number;
  readonly admin: QueuePair;
  readonly timeoutMs: number;
  /** PCIe moves what MDTS allows: no limit of its own. */
  readonly transferCap = Infinity;
  /** One 4 KiB page for Identify and small log pages. */
  #scratch: DmaBuffer;
  readonly #sqs = new Map<number, IoQueue>();
  readonly #cqs = new Map<number, IoCompletionQueue>();
  /** Queue ids held for other processes' queues (lib/share/server.ts), SQ id → CQ id, and whether created. */
  readonly #foreign = new Map<number, { cqid: number; created: boolean }>();
  readonly #foreignCqs = new Set<number>();
  #granted: { sqs: number; cqs: number } | undefined;
  /** Memory a failed command may still point the controller at: freed only once it is disabled. */
  readonly #deferred: { free(): void }[] = [];
  #closed = false;
  #lock: OwnerLock | undefined;
  #resetting = false;
  #resets = 0;
  /** What setNumberOfQueues() asked for, to ask again after a reset. */
  #requested = { sqs: 65535, cqs: 65535 };
  /** How long a command the controller did not abort may take before the controller is reset. */
  readonly #abortGraceMs: number;
  readonly #polling: PollingOptions | undefined;
  /** Set when a reset failed: the queues refuse commands until reset() succeeds. */
  #failed: ControllerFatalError | undefined;
  /** Bus mastering was cleared to stop DMA after a disable failed; reset() sets it again. */
  #masterCleared = false;
  /** I/O queues lent to other threads (exportIoQueue), by SQ id. */
  readonly #leases = new Map<number, QueueLease>();
  /** Serves the borrowers' Abort and reset requests while queues are lent. */
  #leaseTimer: ReturnType<typeof setInterval> | undefined;
  /** What the Controller above tells its queues: LBA sizes, the transfer limit, SGL support. */
  #hooks: ControllerHooks | undefined;

  /**
   * Open the controller at `ctrl` (a PCI address like 05:00.0, or /dev/disnvmN), reset it and
   * bring up the admin queue pair, through the backend `opts.backend` picks (see resolveController).
   */
  static open(ctrl: string, opts: PcieOptions = {}): PcieTransport {
    const where = resolveController(ctrl, opts.backend);
    // The owner lock comes before anything touches the device; keyed by PCI address so every
    // backend of one controller shares it.
    const lock = OwnerLock.acquire(controllerName(where), opts.force, where.kind);
    let backend: Backend;
    try {
      backend = createBackend(where);
    } catch (e) {
      lock?.release();
      throw opts.force ? forceRefused(where.kind, e) : e;
    }
    return PcieTransport.#bringUp(backend, opts, lock);
  }

  /** Bring up the controller behind an already opened backend; the transport owns it from here on. */
  static openBackend(backend: Backend, opts: PcieOptions = {}): PcieTransport {
    let lock: OwnerLock | undefined;
    try {
      lock = OwnerLock.acquire(backend.bdf ?? backend.name, opts.force, backend.kind);
    } catch (e) {
      backend.close();
      throw e;
    }
    return PcieTransport.#bringUp(backend, opts, lock);
  }

  static #bringUp(backend: Backend, opts: PcieOptions, lock: OwnerLock | undefined): PcieTransport {
    try {
      const c = new PcieTransport(backend, opts);
      c.#lock = lock;
      return c;
    } catch (e) {
      backend.close();
      lock?.release();
      throw e;
    }
  }

  private constructor(backend: Backend, opts: PcieOptions) {
    this.backend = backend;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.#abortGraceMs = opts.abortGraceMs ?? 1000;
    this.#polling = opts.polling;
    const n = native();
    const bar0 = backend.bar0;
    const capLo = n.nvm_read32(bar0, REG_CAP);
    const capHi = n.nvm_read32(bar0, REG_CAP + 4);
    if (capLo === REG_ALL_ONES && capHi === REG_ALL_ONES) {
      throw new ControllerFatalError(`${backend.name}: registers read all ones: the device is not responding (check lspci)`, REG_ALL_ONES);
    }
    this.cap = decodeCap(capLo, capHi);
    this.vs = n.nvm_read32(bar0, REG_VS);

    const entries = opts.adminQueueEntries ?? 64;
    // AQA bounds the admin queues (2 to 4096 entries); CAP.MQES applies to I/O queues only.
    if (!Number.isInteger(entries) || entries < 2 || entries > ADMIN_QUEUE_MAX_ENTRIES) {
      throw new InvalidArgumentError(`admin queue of ${entries} entries: must be 2 to ${ADMIN_QUEUE_MAX_ENTRIES} (the AQA limit)`);
    }
    if (this.cap.mpsmin > 0) {
      throw new InvalidArgumentError(`${backend.name}: smallest memory page (CAP.MPSMIN) is ${this.cap.minPageSize} bytes; libnvm uses 4096-byte host pages`);
    }
    if ((this.cap.css & 1) === 0) {
      throw new InvalidArgumentError(`${backend.name}: controller does not support the NVM command set (CAP.CSS = 0x${this.cap.css.toString(16)})`);
    }

    // Disable first: firmware (SeaBIOS on QEMU) or a crashed process may have left it enabled
    // with its own queues, and AQA/ASQ/ACQ may only change while CC.EN = 0.
    this.#disable();

    this.admin = new QueuePair(backend, 0, entries, this.cap.dstrd, this.timeoutMs);
    let scratch: DmaBuffer | undefined;
    try {
      this.#enable();
      scratch = new DmaBuffer(backend, PRP_PAGE_SIZE);
      this.#scratch = scratch;
    } catch (e) {
      this.#disableQuietly();
      scratch?.free();
      this.admin.free();
      throw e;
    }
  }

  /** @internal The Controller above identified the controller: what its I/O queues need from it. */
  configure(hooks: ControllerHooks): void {
    this.#hooks = hooks;
  }

  /**
   * Undo open() when the Controller above could not finish it (its Identify failed): disable the
   * controller, free the admin queue and the scratch page, close the backend, drop the lock.
   */
  abortOpen(): void {
    this.#closed = true;
    this.#disableQuietly();
    for (const r of this.#deferred.splice(0)) r.free();
    this.#scratch.free();
    this.admin.free();
    this.backend.close();
    this.#lock?.release();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** After a command's deadline and its Abort, how long before the controller is reset (ms). */
  get abortGraceMs(): number {
    return this.#abortGraceMs;
  }

  get name(): string {
    return this.backend.name;
  }

  /** ClosedError after close(), the reset's ControllerFatalError while the controller is failed. */
  check(): void {
    if (this.#closed) throw new ClosedError(`controller ${this.backend.name} is closed; open it again`);
    if (this.#failed) throw this.#failed;
  }

  /** Wait for CSTS.RDY to equal `ready`, bounded by CAP.TO (3.1.4.1). */
  #waitReady(ready: boolean): void {
    const n = native();
    const timeoutMs = Math.max(this.cap.timeoutMs, 500);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const csts = n.nvm_read32(this.backend.bar0, REG_CSTS);
      if (csts === REG_ALL_ONES) {
        throw new ControllerFatalError(`${this.backend.name}: CSTS reads all ones: the device is gone`, csts);
      }
      if (ready && (csts & CSTS_CFS) !== 0) {
        throw new ControllerFatalError(`${this.backend.name}: Controller Fatal Status (CSTS.CFS) set during enable`, csts);
      }
      if (((csts & CSTS_RDY) !== 0) === ready) return;
      if (performance.now() > deadline) {
        throw new NvmeTimeoutError(
          `${this.backend.name}: CSTS.RDY did not become ${ready ? 1 : 0} within CAP.TO (${timeoutMs} ms) after CC.EN=${ready ? 1 : 0}`,
          timeoutMs,
        );
      }
      Bun.sleepSync(1);
    }
  }

  /** Program the admin queue (AQA, ASQ, ACQ) and CC, set CC.EN and wait for CSTS.RDY (3.5.1). */
  #enable(): void {
    const n = native();
    const bar0 = this.backend.bar0;
    const entries = this.admin.sq.entries;
    n.nvm_write32(bar0, REG_AQA, encodeAqa(entries, entries));
    const asq = this.admin.sq.mem.busAddress(0);
    const acq = this.admin.cq.mem.busAddress(0);
    n.nvm_write64(bar0, REG_ASQ, cmd.lo32(asq), cmd.hi32(asq));
    n.nvm_write64(bar0, REG_ACQ, cmd.lo32(acq), cmd.hi32(acq));
    const cc = encodeCc({
      css: 0, // NVM command set
      mps: HOST_PAGE_SHIFT - 12,
      ams: 0, // round robin
      iosqes: cmd.SQE_SIZE_LOG2,
      iocqes: cmd.CQE_SIZE_LOG2,
    });
    n.nvm_write32(bar0, REG_CC, cc);
    n.nvm_write32(bar0, REG_CC, cc | CC_EN);
    this.#waitReady(true);
  }

  #disable(): void {
    const n = native();
    const cc = n.nvm_read32(this.backend.bar0, REG_CC);
    if ((cc & CC_EN) !== 0) n.nvm_write32(this.backend.bar0, REG_CC, cc & ~CC_EN);
    this.#waitReady(false);
  }

  #disableQuietly(): void {
    try {
      this.#disable();
    } catch {
      // Best effort on an error path: the original error is the one to report.
    }
  }

  /** Read the controller registers without changing anything. */
  registers(): RegisterSnapshot {
    this.check();
    return readRegisters(this.backend);
  }

  // ---- admin commands -------------------------------------------------------------------

  /** Run an admin command without data synchronously; NvmeStatusError on a non-zero status. */
  adminCommand(c: cmd.Command, opts?: ExecOptions): Completion {
    this.check();
    return this.admin.execute(c, opts);
  }

  /**
   * Run an admin command with its data: up to a page through the scratch page (or a page of its
   * own for data to the controller), more through a buffer and a PRP list. When it fails without
   * a status (a timeout: the controller may still write the memory), the memory is set aside until
   * the controller is disabled, so no later command shares it. Data to the host comes back as a copy.
   */
  adminData(c: cmd.Command, data: AdminTransfer | undefined, opts: ExecOptions = {}): AdminResult {
    this.check();
    if (data === undefined || (data.toHost === undefined && data.toController === undefined)) return this.admin.execute(c, opts);
    if (data.toController !== undefined) {
      const bytes = data.toController;
      if (bytes.length > PRP_PAGE_SIZE) throw new InvalidArgumentError(`${bytes.length} bytes of admin command data: libnvm sends at most ${PRP_PAGE_SIZE}`);
      const page = new DmaBuffer(this.backend, PRP_PAGE_SIZE);
      let r: Completion;
      try {
        page.bytes.set(bytes);
        r = this.admin.execute({ ...c, prp1: page.busAddress(0), prp2: 0 }, opts);
      } catch (e) {
        this.releaseAfter(e, page);
        throw e;
      }
      page.free();
      return r;
    }
    const want = data.toHost!;
    if (want <= PRP_PAGE_SIZE) {
      const page = this.#scratch;
      page.bytes.fill(0);
      let r: Completion;
      try {
        r = this.admin.execute({ ...c, prp1: page.busAddress(0), prp2: 0 }, opts);
      } catch (e) {
        if (!(e instanceof NvmeStatusError) && !(e instanceof InvalidArgumentError) && !(e instanceof ClosedError)) {
          this.#scratch = new DmaBuffer(this.backend, PRP_PAGE_SIZE);
          this.releaseAfter(e, page);
        }
        throw e;
      }
      return { ...r, data: page.bytes.slice(0, want) };
    }
    const buf = new DmaBuffer(this.backend, want);
    const listPages = prpListPages(0, want);
    const list = listPages > 0 ? new DmaBuffer(this.backend, listPages * PRP_PAGE_SIZE) : undefined;
    let r: Completion;
    try {
      const { prp1, prp2 } = buildPrp(buf, 0, want, list);
      r = this.admin.execute({ ...c, prp1, prp2 }, opts);
    } catch (e) {
      if (list) this.releaseAfter(e, list);
      this.releaseAfter(e, buf);
      throw e;
    }
    const out = buf.bytes.slice(0, want);
    list?.free();
    buf.free();
    return { ...r, data: out };
  }

  /**
   * Run an admin command without blocking the event loop: posted, then looked for every 1 to 50
   * ms, so I/O queue pollers and timers run while it takes its time (Format NVM, Sanitize). Its
   * deadline is `opts.timeoutMs` (default the controller's): then Abort is sent, and when the
   * controller does not end it within abortGraceMs the controller is reset, as for an I/O
   * command. A command that Abort ended rejects with NvmeTimeoutError (its cause is the
   * controller's status); any other status with NvmeStatusError.
   */
  async adminCommandAsync(c: cmd.Command, opts: AdminAsyncOptions = {}): Promise<Completion> {
    this.check();
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    if (!(timeoutMs > 0)) throw new InvalidArgumentError(`timeout ${timeoutMs} ms: must be positive`);
    const name = cmd.commandName(c.opcode, true);
    const cid = this.admin.post(c, opts);
    const t0 = performance.now();
    let abortedAt: number | undefined;
    for (let looks = 0; ; looks++) {
      if (this.#closed) throw new ClosedError(`controller ${this.backend.name} was closed while ${name} ran`);
      if (this.#failed) throw this.#failed;
      let done: Completion | undefined;
      try {
        done = this.admin.take(cid);
      } catch (e) {
        if (abortedAt !== undefined && e instanceof NvmeStatusError && e.sct === SCT_GENERIC && e.sc === SC_ABORT_REQUESTED) {
          const err = new NvmeTimeoutError(`${name} (cid ${cid}) did not complete within ${timeoutMs} ms and was aborted`, timeoutMs);
          (err as { cause?: unknown }).cause = e;
          throw err;
        }
        throw e;
      }
      if (done) return done;
      const now = performance.now();
      if (abortedAt === undefined && now - t0 > timeoutMs) {
        abortedAt = now;
        try {
          this.admin.execute(cmd.abort(0, cid), { timeoutMs: Math.min(this.timeoutMs, 1000) });
        } catch {
          // The admin queue does not answer either: nothing but a reset helps.
          this.#resetQuietly(new NvmeTimeoutError(`${name} (cid ${cid}) did not complete within ${timeoutMs} ms and Abort got no answer`, timeoutMs));
        }
        continue;
      }
      if (abortedAt !== undefined && now - abortedAt > this.#abortGraceMs) {
        // The reset ends the command (take() then throws the reset's error) or fails the controller.
        this.#resetQuietly(new NvmeTimeoutError(`${name} (cid ${cid}) did not complete within ${timeoutMs} ms and was not aborted`, timeoutMs));
        continue;
      }
      // CSTS is an uncached read: about every 100 ms, for a controller that failed or vanished.
      if (looks % 10 === 9) {
        const csts = native().nvm_read32(this.backend.bar0, REG_CSTS);
        if (csts === REG_ALL_ONES || (csts & CSTS_CFS) !== 0) {
          this.#resetQuietly(
            new ControllerFatalError(
              csts === REG_ALL_ONES ? `${this.backend.name}: registers read all ones while ${name} ran: the device is gone` : `${this.backend.name}: Controller Fatal Status (CSTS.CFS) set while ${name} ran`,
              csts,
            ),
          );
          continue;
        }
      }
      opts.onWait?.(now - t0);
      await Bun.sleep(Math.min(1 + looks, 50));
    }
  }


  /** Ask for `sqs` I/O SQs and `cqs` CQs; returns what the controller allocated (may differ). */
  setNumberOfQueues(sqs: number, cqs = sqs): { sqs: number; cqs: number } {
    this.#granted = cmd.decodeNumberOfQueues(this.adminCommand(cmd.numberOfQueues(sqs, cqs)).dw0);
    this.#requested = { sqs, cqs };
    return this.#granted;
  }

  /**
   * I/O queues the controller allocated (Set Features, Number of Queues). Asked for once, the
   * first time a queue is created, unless setNumberOfQueues() was called first: the spec allows
   * it only before any I/O queue exists.
   */
  ioQueuesGranted(): { sqs: number; cqs: number } {
    this.#granted ??= this.setNumberOfQueues(65535);
    return this.#granted;
  }


  /** The I/O context queues get: the transfer limit, SGL support, doorbell stride, timeout. */
  get #ioContext(): IoQueueContext {
    const hooks = this.#hooks;
    if (!hooks) throw new InvalidArgumentError(`${this.backend.name}: the controller was not identified yet`);
    return {
      backend: this.backend,
      dstrd: this.cap.dstrd,
      timeoutMs: this.timeoutMs,
      maxTransfer: hooks.maxTransfer,
      sgls: hooks.sgls,
      lbaSize: hooks.lbaSize,
      abortGraceMs: this.#abortGraceMs,
      onExpired: (q, cid) => this.#onExpired(q, cid),
      onStuck: (q, cid) => this.#onStuck(q, cid),
      onFatal: (_q, err) => this.#onFatal(err),
      onDisabled: () => this.#onDisabled(),
      polling: this.#polling,
    };
  }


  #checkEntries(entries: number): void {
    if (!Number.isInteger(entries) || entries < 2 || entries > this.cap.mqes + 1) {
      throw new InvalidArgumentError(`I/O queue of ${entries} entries: must be 2 to ${this.cap.mqes + 1} (CAP.MQES+1)`);
    }
  }

  #pickQid(used: Map<number, unknown>, max: number, wanted: number | undefined, what: string): number {
    const foreign: { has(q: number): boolean } = used === this.#sqs ? this.#foreign : used === this.#cqs ? this.#foreignCqs : new Set<number>();
    if (wanted !== undefined) {
      if (!Number.isInteger(wanted) || wanted < 1 || wanted > max) {
        throw new InvalidArgumentError(`${what} id ${wanted}: the controller granted ids 1 to ${max} (Number of Queues)`);
      }
      if (used.has(wanted)) throw new InvalidArgumentError(`${what} ${wanted} already exists on ${this.backend.name}`);
      if (foreign.has(wanted)) throw new InvalidArgumentError(`${what} ${wanted} is held by a client this process serves (lib/share)`);
      return wanted;
    }
    for (let q = 1; q <= max; q++) if (!used.has(q) && !foreign.has(q)) return q;
    throw new InvalidArgumentError(`all ${max} ${what}s the controller granted are in use: delete one first`);
  }

  /** Create an I/O completion queue several submission queues can share (createIoQueue({ cq })). */
  createCompletionQueue(opts: { entries?: number; qid?: number } = {}): IoCompletionQueue {
    this.check();
    const entries = opts.entries ?? 256;
    this.#checkEntries(entries);
    const qid = this.#pickQid(this.#cqs, this.ioQueuesGranted().cqs, opts.qid, "I/O completion queue");
    return this.#createCq(qid, entries, false);
  }

  #createCq(qid: number, entries: number, implicit: boolean): IoCompletionQueue {
    const cq = new IoCompletionQueue(this.backend, qid, entries, this.cap.dstrd, implicit);
    try {
      this.adminCommand(cmd.createIoCq(qid, entries, cq.cq.mem.busAddress(0)), { detail: `QID ${qid}, ${entries} entries` });
    } catch (e) {
      this.releaseAfter(e, cq);
      throw e;
    }
    this.#cqs.set(qid, cq);
    return cq;
  }

  /**
   * Create an I/O submission queue with its own completion queue of the same size, or bound to
   * `opts.cq`. Deleted by deleteIoQueue() or close().
   */
  createIoQueue(opts: IoQueueOptions = {}): IoQueue {
    this.check();
    const entries = opts.entries ?? 256;
    this.#checkEntries(entries);
    const granted = this.ioQueuesGranted();
    const qid = this.#pickQid(this.#sqs, granted.sqs, opts.qid, "I/O submission queue");
    if (opts.cq && (opts.cq.closed || this.#cqs.get(opts.cq.qid) !== opts.cq)) {
      throw new InvalidArgumentError(`completion queue ${opts.cq.qid} is not a live queue of ${this.backend.name}`);
    }
    const cq = opts.cq ?? this.#createCq(this.#cqs.has(qid) ? this.#pickQid(this.#cqs, granted.cqs, undefined, "I/O completion queue") : qid, entries, true);
    let q: IoQueue;
    try {
      q = new IoQueue(this.#ioContext, qid, entries, cq, opts);
    } catch (e) {
      if (cq.implicit) this.#deleteCq(cq);
      throw e;
    }
    try {
      this.adminCommand(cmd.createIoSq(qid, entries, cq.qid, q.sq.mem.busAddress(0)), { detail: `QID ${qid}, CQID ${cq.qid}, ${entries} entries` });
    } catch (e) {
      this.releaseAfter(e, q);
      if (cq.implicit) this.#deleteCq(cq);
      throw e;
    }
    cq.sqs.set(qid, q);
    this.#sqs.set(qid, q);
    return q;
  }

  /**
   * Delete a submission queue (and the completion queue created with it). The controller ends the
   * commands still outstanding on it (NVMe Base 2.0, 5.7: Command Aborted due to SQ Deletion)
   * before it completes the deletion; they settle with ClosedError.
   */
  deleteIoQueue(q: IoQueue): void {
    this.check();
    if (this.#sqs.get(q.qid) !== q) return;
    const lease = this.#leases.get(q.qid);
    if (lease?.lent) throw new InvalidArgumentError(`I/O queue ${q.qid} is lent to a Worker: close it there (AttachedIoQueue.close()) first`);
    if (lease) lease.reclaim(q.ioCq);
    this.#sqs.delete(q.qid);
    if (!lease?.abandoned) {
      try {
        this.adminCommand(cmd.deleteIoSq(q.qid));
      } catch (e) {
        this.releaseAfter(e, q);
        throw e;
      }
    }
    q.free();
    if (lease) this.#endLease(q.qid, lease);
    if (q.ioCq.implicit && q.ioCq.sqs.size === 0) {
      if (lease?.abandoned) {
        this.#cqs.delete(q.ioCq.qid);
        q.ioCq.free();
      } else this.#deleteCq(q.ioCq);
    }
  }

  /** Delete a completion queue; every SQ bound to it must be deleted first (the spec forbids otherwise). */
  deleteCompletionQueue(cq: IoCompletionQueue): void {
    this.check();
    if (cq.sqs.size > 0) {
      throw new InvalidArgumentError(`completion queue ${cq.qid} still has submission queues ${[...cq.sqs.keys()].join(", ")}: delete them first`);
    }
    this.#deleteCq(cq);
  }

  #deleteCq(cq: IoCompletionQueue): void {
    if (this.#cqs.get(cq.qid) !== cq) return;
    this.#cqs.delete(cq.qid);
    try {
      this.adminCommand(cmd.deleteIoCq(cq.qid));
    } catch (e) {
      this.releaseAfter(e, cq);
      throw e;
    }
    cq.free();
  }


  // ---- queues other processes own (lib/share/server.ts) -------------------------------------

  reserveForeignQueue(): { sqid: number; cqid: number } {
    this.check();
    const granted = this.ioQueuesGranted();
    const sqid = this.#pickQid(this.#sqs, granted.sqs, undefined, "I/O submission queue");
    const cqid = this.#pickQid(this.#cqs, granted.cqs, undefined, "I/O completion queue");
    this.#foreign.set(sqid, { cqid, created: false });
    this.#foreignCqs.add(cqid);
    return { sqid, cqid };
  }

  releaseForeignQueue(sqid: number, cqid: number): void {
    const f = this.#foreign.get(sqid);
    if (!f || f.cqid !== cqid) return;
    this.#foreign.delete(sqid);
    this.#foreignCqs.delete(cqid);
  }

  createForeignQueue(sqid: number, cqid: number, entries: number, sqBus: number, cqBus: number, opts: AdminExecOptions = {}): void {
    this.check();
    const f = this.#foreign.get(sqid);
    if (!f || f.cqid !== cqid || f.created) throw new InvalidArgumentError(`SQ ${sqid} / CQ ${cqid} were not reserved for a client, or already created`);
    this.#checkEntries(entries);
    this.admin.execute(cmd.createIoCq(cqid, entries, cqBus), { ...opts, detail: `QID ${cqid}, ${entries} entries, for a client` });
    try {
      this.admin.execute(cmd.createIoSq(sqid, entries, cqid, sqBus), { ...opts, detail: `QID ${sqid}, CQID ${cqid}, ${entries} entries, for a client` });
    } catch (e) {
      try {
        this.admin.execute(cmd.deleteIoCq(cqid), opts);
      } catch {
        // The controller failed both: the reset that follows drops the CQ with everything else.
      }
      throw e;
    }
    f.created = true;
  }

  deleteForeignQueue(sqid: number, cqid: number, opts: AdminExecOptions = {}): void {
    const f = this.#foreign.get(sqid);
    if (!f || f.cqid !== cqid) return;
    if (f.created && !this.#closed && !this.#failed) {
      // Submission queue first: the controller ends every command of it (Base 2.0, 5.7) before it
      // completes the deletion, so afterwards no data of the client moves; then the CQ.
      for (const c of [cmd.deleteIoSq(sqid), cmd.deleteIoCq(cqid)]) {
        try {
          this.admin.execute(c, opts);
        } catch (e) {
          // A status: the controller has no such queue (a reset dropped it). Anything else: it may
          // still reach the rings, so the ids stay held and the caller learns why.
          if (!(e instanceof NvmeStatusError)) throw e;
        }
      }
    }
    this.releaseForeignQueue(sqid, cqid);
  }

  /** Every live I/O queue (for the Controller's checks and namespace format bookkeeping). */
  ioQueues(): IterableIterator<IoQueue> {
    return this.#sqs.values();
  }

  /** I/O queue `qid` is lent to a Worker. */
  isLent(qid: number): boolean {
    return this.#leases.get(qid)?.lent === true;
  }


  /**
   * Free `resource` after a command that used it failed with `error`. A status from the controller
   * means it is done with the command; a timeout or a fatal error means it may still read or write
   * the memory, so it is kept until close() has disabled the controller.
   */
  releaseAfter(error: unknown, resource: { free(): void }): void {
    if (error instanceof NvmeStatusError || error instanceof InvalidArgumentError) resource.free();
    else this.#deferred.push(resource);
  }


  /** Allocate DMA memory this controller can reach. Free it before close(), or close() frees it. */
  allocBuffer(size: number): DmaBuffer {
    this.check();
    return new DmaBuffer(this.backend, size);
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
   * VFIO and sysfs throw UnsupportedError. InvalidArgumentError, before anything is mapped, for an
   * fd that is not an open dma-buf, an offset or size that is not whole 4 KiB pages or runs past
   * the dma-buf's end.
   */
  mapDmaBuf(fd: number, opts: MapDmaBufOptions = {}): DmaBuffer {
    this.check();
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fff_ffff) {
      throw new InvalidArgumentError(`dma-buf fd ${fd}: must be a file descriptor of this process (an integer >= 0)`);
    }
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset % HOST_PAGE_SIZE !== 0) {
      throw new InvalidArgumentError(`dma-buf offset ${offset}: must be a non-negative multiple of ${HOST_PAGE_SIZE} (whole pages)`);
    }
    const size = opts.size;
    if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0 || size % HOST_PAGE_SIZE !== 0)) {
      throw new InvalidArgumentError(`dma-buf size ${size}: must be a positive multiple of ${HOST_PAGE_SIZE} (whole pages), or left out for the rest of the buffer`);
    }
    return DmaBuffer.importDmaBuf(this.backend, fd, offset, size);
  }

  // ---- recovery --------------------------------------------------------------------------

  /** How many times reset() brought the controller back. */
  get resets(): number {
    return this.#resets;
  }

  /**
   * Reset the controller and carry on: disable it (its DMA stops), settle every outstanding
   * command (NvmeTimeoutError, or `reason` when it is a ControllerFatalError), start every ring
   * over, enable it again, ask for the same Number of Queues and re-create every I/O queue with
   * its id, size and memory. Queue objects stay valid; requests waiting for a slot are then sent.
   * A queue lent to a Worker is re-created once the Worker acknowledged the reset (bounded wait).
   *
   * When the controller cannot be disabled, bus mastering is cleared instead so it can DMA
   * nowhere; only then are commands settled (when even that fails and the device is still there,
   * its memory is kept, never freed). The controller is then failed: every command and admin call
   * throws ControllerFatalError until a reset() succeeds.
   */
  reset(reason?: Error): void {
    if (this.#closed) throw new ClosedError(`controller ${this.backend.name} is closed; open it again`);
    if (this.#resetting) return;
    this.#resetting = true;
    try {
      const why = reason?.message ?? "reset() called";
      const fail =
        reason instanceof ControllerFatalError
          ? reason
          : new NvmeTimeoutError(`failed by a controller reset (${why})`, reason instanceof NvmeTimeoutError ? reason.timeoutMs : this.timeoutMs);
      for (const lease of this.#leases.values()) lease.quiesce();
      try {
        this.#haltDma();
      } catch (e) {
        throw this.#fail(e, "reset");
      }
      // Disabled: nothing posted before can reach memory any more. Commands on imports the
      // exporter revoked fail with the buffer's own error, before the reset's error takes the rest.
      try {
        this.#takeRevoked();
      } catch {
        // Asking the module failed; it still keeps bus mastering off while a revoked import is
        // mapped, so setting it below fails and says why.
      }
      for (const [qid, q] of this.#sqs) if (!this.#leases.get(qid)?.lent) q.settleRevoked();
      const lent = new Map<number, { lease: QueueLease; ack: number }>();
      for (const [qid, lease] of this.#leases) {
        const q = this.#sqs.get(qid);
        const wasLent = lease.lent;
        const ack = lease.beginReset();
        if (!q || lease.abandoned) continue;
        if (wasLent) lent.set(qid, { lease, ack });
        else {
          lease.reclaim(q.ioCq);
          lease.live(ack);
        }
      }
      const lentCqs = new Set([...lent.keys()].map((qid) => this.#sqs.get(qid)!.ioCq));
      for (const q of this.#sqs.values()) if (!lent.has(q.qid) && !this.#leases.get(q.qid)?.abandoned) q.resetAfterDisable(fail);
      for (const cq of this.#cqs.values()) if (!lentCqs.has(cq)) cq.reset();
      this.admin.reset(fail);
      // Queues of other processes (lib/share) are gone with the disable; their owners re-create
      // them (createForeignQueue) or delete them (deleteForeignQueue then sends nothing).
      for (const f of this.#foreign.values()) f.created = false;
      try {
        if (this.#masterCleared) {
          this.backend.setBusMaster(true);
          this.#masterCleared = false;
        }
        this.#enable();
        if (this.#granted) this.#granted = cmd.decodeNumberOfQueues(this.admin.execute(cmd.numberOfQueues(this.#requested.sqs, this.#requested.cqs)).dw0);
        const skip = (qid: number) => lent.has(qid) || this.#leases.get(qid)?.abandoned === true;
        for (const cq of this.#cqs.values()) {
          if (lentCqs.has(cq) || [...cq.sqs.keys()].some((qid) => this.#leases.get(qid)?.abandoned)) continue;
          this.admin.execute(cmd.createIoCq(cq.qid, cq.entries, cq.cq.mem.busAddress(0)));
        }
        for (const q of this.#sqs.values()) {
          if (skip(q.qid)) continue;
          this.admin.execute(cmd.createIoSq(q.qid, q.sq.entries, q.ioCq.qid, q.sq.mem.busAddress(0)));
        }
        // Lent queues: re-created only once their borrower emptied its rings, or never.
        const wait = Math.min(this.timeoutMs, 5000);
        for (const [qid, { lease, ack }] of lent) {
          const q = this.#sqs.get(qid)!;
          if (!lease.awaitAck(ack, wait)) {
            lease.abandon();
            continue;
          }
          this.admin.execute(cmd.createIoCq(q.ioCq.qid, q.ioCq.entries, q.ioCq.cq.mem.busAddress(0)));
          this.admin.execute(cmd.createIoSq(qid, q.sq.entries, q.ioCq.qid, q.sq.mem.busAddress(0)));
          lease.live(ack);
        }
      } catch (e) {
        // Disabled or half set up: stop its DMA for good and fail everything until the next reset.
        try {
          this.#haltDma();
        } catch {
          // #fail says how DMA was stopped.
        }
        throw this.#fail(e, "reset");
      }
      this.#failed = undefined;
      this.#resets++;
      for (const q of this.#sqs.values()) if (!lent.has(q.qid)) q.resume();
    } finally {
      this.#resetting = false;
    }
  }

  /**
   * Stop the controller's DMA: disable it (CC.EN = 0, CSTS.RDY = 0 within CAP.TO). When that
   * fails, clear bus mastering; when that fails too and the device still answers, give up its
   * memory for good (abandonDma) so nothing it may reach is ever freed. Throws the disable's error
   * when the controller could not be disabled.
   */
  #haltDma(): void {
    try {
      this.#disable();
    } catch (e) {
      if (this.#masterCleared) throw e;
      try {
        this.backend.setBusMaster(false);
        this.#masterCleared = true;
      } catch {
        if (native().nvm_read32(this.backend.bar0, REG_CSTS) !== REG_ALL_ONES) {
          this.#dmaAbandoned = true;
          this.backend.abandonDma();
        }
      }
      throw e;
    }
  }

  /** DMA memory was given up (abandonDma) because the controller could not be stopped. */
  #dmaAbandoned = false;

  /**
   * `what` (a reset) failed with `e`: every command settles with a ControllerFatalError (the
   * controller's DMA was stopped by #haltDma, or its memory abandoned), lent queues are told, and
   * the controller refuses commands until reset() succeeds. Returns that error.
   */
  #fail(e: unknown, what: string): ControllerFatalError {
    const csts = native().nvm_read32(this.backend.bar0, REG_CSTS);
    const how = this.#dmaAbandoned
      ? "its bus mastering could not be cleared either, so its DMA memory is kept (never freed) until the process exits"
      : this.#masterCleared
        ? "bus mastering was cleared, so it can no longer reach memory"
        : csts === REG_ALL_ONES
          ? "the device is gone"
          : "it is disabled";
    const err = new ControllerFatalError(
      `${what} of ${this.backend.name} failed: ${(e as Error).message ?? String(e)}; ${how}. Controller.reset() tries again; close() releases it`,
      csts,
    );
    this.#failed = err;
    for (const q of this.#sqs.values()) {
      const lease = this.#leases.get(q.qid);
      if (lease?.lent) lease.abandon();
      else q.settleAndRefuse(err);
    }
    return err;
  }

  /**
   * A command's deadline passed: ask the controller to Abort it. Its caller is settled by the
   * completion that follows; the queue asks for a reset (#onStuck) when none comes in time.
   */
  #onExpired(q: IoQueue, cid: number): void {
    if (this.#closed || this.#resetting || this.#failed) return;
    try {
      this.admin.execute(cmd.abort(q.qid, cid), { timeoutMs: Math.min(this.timeoutMs, 1000) });
    } catch {
      // The admin queue does not answer either: nothing but a reset helps.
      this.#resetQuietly(new NvmeTimeoutError(`command ${cid} on queue ${q.qid} did not complete within ${q.timeoutMs} ms and Abort got no answer`, q.timeoutMs));
    }
  }

  /** A command outstanding `abortGraceMs` after its deadline and its Abort: reset the controller. */
  #onStuck(q: IoQueue, cid: number): void {
    if (q.closed || !q.isExpired(cid)) return;
    this.#resetQuietly(new NvmeTimeoutError(`command ${cid} on queue ${q.qid} did not complete within ${q.timeoutMs} ms and was not aborted`, q.timeoutMs));
  }

  #resetQuietly(reason: Error): void {
    if (this.#closed || this.#resetting) return;
    try {
      this.reset(reason);
    } catch {
      // The reset failed: #fail settled and refused everything with its error.
    }
  }

  #onFatal(err: ControllerFatalError): void {
    this.#resetQuietly(err);
  }

  /**
   * CSTS.RDY read 0 with commands outstanding, outside a reset of ours: the controller was disabled
   * under us, and nothing outstanding will complete. The disnvm module does this when the exporter
   * of an imported dma-buf revokes it; either way a reset recovers.
   */
  #onDisabled(): void {
    if (this.#closed || this.#resetting || this.#failed) return;
    let revoked = 0;
    try {
      revoked = this.#takeRevoked();
    } catch {
      // The reset asks again.
    }
    const csts = native().nvm_read32(this.backend.bar0, REG_CSTS);
    const why =
      revoked > 0
        ? `the disnvm module disabled it because the exporter of ${revoked === 1 ? "an imported dma-buf revoked it" : `${revoked} imported dma-bufs revoked them`}`
        : "it was disabled (CSTS.RDY = 0) by something other than libnvm";
    this.#resetQuietly(new ControllerFatalError(`${this.backend.name}: ${why}; commands in flight were ended by the reset that followed (their data may or may not have moved)`, csts));
  }

  /**
   * Imports whose exporter revoked them: the backend invalidates them (commands on them fail with
   * DmaBufRevokedError from now on) and gives them back. The kernel disabled the controller and
   * cleared its bus mastering first, so reset() sets bus mastering again. Returns how many.
   */
  #takeRevoked(): number {
    const taken = this.backend.takeRevokedDmaBufs?.() ?? [];
    if (taken.length > 0) this.#masterCleared = true;
    return taken.length;
  }

  // ---- queues lent to other threads (worker.ts) ---------------------------------------------

  /**
   * @internal Lend I/O queue `q` to another thread: the lease carries this controller's resets to
   * the borrower, and the borrower's Abort and reset requests back, served from a timer here.
   */
  lendIoQueue(q: IoQueue): QueueLease {
    this.check();
    if (this.#sqs.get(q.qid) !== q) throw new InvalidArgumentError(`I/O queue ${q.qid} is not a live queue of ${this.backend.name}`);
    let lease = this.#leases.get(q.qid);
    if (lease?.lent) throw new InvalidArgumentError(`I/O queue ${q.qid} is already lent to a Worker: one thread per queue`);
    if (lease?.abandoned) throw new InvalidArgumentError(`I/O queue ${q.qid} was not re-created after a reset (its Worker did not answer): delete it and create another`);
    if (lease) lease.reclaim(q.ioCq);
    else {
      lease = new QueueLease(q, this.backend);
      this.#leases.set(q.qid, lease);
    }
    lease.lend();
    this.#leaseTimer ??= setInterval(() => this.#serveLeases(), 10);
    this.#leaseTimer.unref();
    return lease;
  }

  #serveLeases(): void {
    if (this.#closed) return;
    for (const [qid, lease] of this.#leases) {
      const r = lease.takeRequests();
      if (r.reset) {
        this.#resetQuietly(new NvmeTimeoutError(`a command of the Worker on queue ${qid} did not end after its deadline and Abort`, this.timeoutMs));
      } else if (r.abortCid >= 0 && !this.#resetting && !this.#failed) {
        try {
          this.admin.execute(cmd.abort(qid, r.abortCid), { timeoutMs: Math.min(this.timeoutMs, 1000) });
        } catch {
          this.#resetQuietly(new NvmeTimeoutError(`command ${r.abortCid} of the Worker on queue ${qid}: Abort got no answer`, this.timeoutMs));
        }
      }
    }
  }

  #endLease(qid: number, lease: QueueLease): void {
    lease.end();
    this.#leases.delete(qid);
    if (this.#leases.size === 0 && this.#leaseTimer) {
      clearInterval(this.#leaseTimer);
      this.#leaseTimer = undefined;
    }
  }

  // ---- teardown --------------------------------------------------------------------------

  /**
   * Delete I/O queues, send a normal shutdown (CC.SHN, wait for CSTS.SHST complete), disable
   * (CC.EN = 0, wait for RDY = 0), then free all DMA memory and unmap BAR0. Every step is bounded;
   * a failing step does not stop the release of the rest. When the controller cannot be disabled,
   * bus mastering is cleared before anything is freed; when that fails too, the memory is kept.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#leaseTimer) clearInterval(this.#leaseTimer);
    this.#leaseTimer = undefined;
    const n = native();
    const bar0 = this.backend.bar0;
    let firstError: unknown;
    const step = (f: () => void) => {
      try {
        f();
      } catch (e) {
        firstError ??= e;
      }
    };
    const alive = () => n.nvm_read32(bar0, REG_CSTS) !== REG_ALL_ONES;
    // A controller disabled under us (the disnvm module does it when an import is revoked) has no
    // queues left and answers no admin command: each would wait for its deadline.
    const ready = () => {
      const csts = n.nvm_read32(bar0, REG_CSTS);
      return csts !== REG_ALL_ONES && (csts & CSTS_RDY) !== 0;
    };
    const gone = (qid: number) => this.#leases.get(qid)?.abandoned === true;
    // Queues other processes own (lib/share) first: their SQs, then their CQs.
    for (const [sqid, f] of this.#foreign) {
      step(() => {
        if (f.created && ready() && !this.#failed) this.admin.execute(cmd.deleteIoSq(sqid));
      });
    }
    for (const [, f] of this.#foreign) {
      step(() => {
        if (f.created && ready() && !this.#failed) this.admin.execute(cmd.deleteIoCq(f.cqid));
      });
    }
    this.#foreign.clear();
    this.#foreignCqs.clear();
    // Submission queues first: a completion queue may not be deleted while an SQ uses it. Skipped
    // after a failed reset: the controller is then disabled or cut off the bus.
    for (const q of [...this.#sqs.values()].reverse()) {
      step(() => {
        if (ready() && !this.#failed && !gone(q.qid)) this.admin.execute(cmd.deleteIoSq(q.qid));
      });
    }
    for (const cq of [...this.#cqs.values()].reverse()) {
      step(() => {
        if (ready() && !this.#failed && ![...cq.sqs.keys()].some(gone)) this.admin.execute(cmd.deleteIoCq(cq.qid));
      });
    }
    step(() => {
      if (!alive() || this.#failed) return;
      const cc = n.nvm_read32(bar0, REG_CC);
      if ((cc & CC_EN) === 0) return;
      n.nvm_write32(bar0, REG_CC, (cc & ~CC_SHN_MASK) | CC_SHN_NORMAL);
      // RTD3E (microseconds) is the controller's own bound on entry latency; 10 s when it gives none.
      const timeoutMs = Math.max((this.#hooks?.rtd3e ?? 0) / 1000, 10_000);
      const deadline = performance.now() + timeoutMs;
      while ((n.nvm_read32(bar0, REG_CSTS) & CSTS_SHST_MASK) !== CSTS_SHST_COMPLETE) {
        if (performance.now() > deadline) throw new NvmeTimeoutError(`${this.backend.name}: shutdown did not complete within ${timeoutMs} ms`, timeoutMs);
        Bun.sleepSync(1);
      }
    });
    step(() => {
      if (alive()) this.#haltDma();
    });
    // Commands on imports their exporter revoked end with the buffer's own error, not ClosedError.
    step(() => {
      if (!this.#dmaAbandoned) {
        this.#takeRevoked();
        for (const [qid, q] of this.#sqs) if (!this.#leases.get(qid)?.lent) q.settleRevoked();
      }
    });
    // Nothing points the controller at this memory any more (or, abandoned, it is never freed):
    // a Worker still holding a lent queue settles and refuses, then everything is released.
    for (const lease of this.#leases.values()) if (lease.lent) lease.abandon();
    for (const q of this.#sqs.values()) step(() => q.free());
    for (const cq of this.#cqs.values()) step(() => cq.free());
    for (const lease of this.#leases.values()) lease.end();
    this.#leases.clear();
    this.#sqs.clear();
    this.#cqs.clear();
    for (const r of this.#deferred.splice(0)) step(() => r.free());
    step(() => this.#scratch.free());
    step(() => this.admin.free());
    step(() => this.backend.close());
    step(() => this.#lock?.release());
    if (firstError !== undefined) throw firstError;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function readRegisters(backend: Backend): RegisterSnapshot {
  const n = native();
  const b = backend.bar0;
  const lo = n.nvm_read32(b, REG_CAP);
  const hi = n.nvm_read32(b, REG_CAP + 4);
  return {
    cap: (BigInt(hi) << 32n) | BigInt(lo),
    vs: n.nvm_read32(b, REG_VS),
    cc: n.nvm_read32(b, REG_CC),
    csts: n.nvm_read32(b, REG_CSTS),
    aqa: n.nvm_read32(b, REG_AQA),
  };
}

/**
 * `force` resets a controller under a live owner only with the raw sysfs backend: VFIO lets one
 * process hold an IOMMU group and disnvm one open file, and the kernel, not libnvm, refuses a
 * second; SISCI lets one borrower have a device exclusively. Say so instead of the backend's own
 * busy error.
 */
function forceRefused(kind: string, e: unknown): unknown {
  if (kind === "smartio" && e instanceof SmartIoError && e.reason === "not-available") {
    return new ControllerBusyError(
      `${e.message}. force cannot take a SmartIO device another host or process borrowed exclusively: SISCI allows one exclusive borrower. Close it there (or stop that process) and open again`,
      0,
    );
  }
  if (kind === "sysfs" || kind === "smartio" || !(e instanceof DeviceError || e instanceof ControllerBusyError)) return e;
  if (!/held by|open in|already open|in use/.test(e.message)) return e;
  const pid = e instanceof ControllerBusyError ? e.pid : Number(/process(?:es)? (\d+)/.exec(e.message)?.[1] ?? 0);
  return new ControllerBusyError(
    `${e.message}. force cannot take a ${kind === "vfio" ? "VFIO" : "disnvm"} controller from a live process: the kernel allows one holder at a time. ` +
      `Stop that process${pid ? ` (kill ${pid}; kill -9 ${pid} if it hangs)` : ""} and open again; the kernel then disables the controller and releases its memory`,
    pid,
  );
}
