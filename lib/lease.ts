/**
 * A queue lent to another thread (worker.ts): what the owner of the controller and the borrower
 * share so that the owner's resets cannot replay stale commands and the borrower's stuck commands
 * still get recovered. One SharedArrayBuffer per lent queue; both sides use Atomics on it.
 *
 * Reset, as the owner runs it: it disables the controller (the lent queue's DMA stops), moves
 * STATE from the live epoch E to E+1, re-enables the controller and waits, bounded, for the
 * borrower to acknowledge E+1 (ACK). The borrower acknowledges at its next idle poll, after it
 * settled every outstanding command and emptied its rings; until the owner re-creates the queue
 * and moves STATE to E+2, the borrower holds its doorbell writes back. A borrower that does not
 * acknowledge in time finds STATE = ABANDONED: the queue was not re-created, its commands settle
 * with an error and new ones are refused. The owner never writes a lent queue's rings.
 *
 * Recovery for the borrower: it cannot send admin commands, so it asks the owner through REQ_ABORT
 * (a CID past its deadline) and REQ_RESET (a command the Abort did not end, or a fatal controller
 * status); the owner serves them from a timer on its event loop.
 *
 * A borrower may also live in the owner's own thread without running JavaScript while it works:
 * the queue core's OS threads or a GPU kernel started from here (lib/gpu). It cannot answer the
 * lease while the owner waits, so the owner calls it instead (LocalBorrower): at a reset and when it
 * gives the queue up, the borrower's executors stop (bounded) and ring no doorbell after that; at a
 * reset it then empties the rings, and the owner takes the acknowledgment as given. (Before the
 * controller closes, such a layer stops its executors through Controller.beforeClose().)
 */
import { NvmeTimeoutError } from "./errors.ts";
import type { Backend } from "./backends/types.ts";
import { addDmaUser, removeDmaUser, type DmaUser } from "./dma.ts";
import type { IoCompletionQueue, IoQueue, LeaseGate } from "./io.ts";

/** Int32 words of the lease. */
const enum W {
  /** Even: live epoch (the queue exists on the controller); odd: the owner is resetting; ABANDONED. */
  STATE = 0,
  /** The odd STATE value the borrower has handled. */
  ACK = 1,
  /** CID + 1 of a command the borrower asks the owner to abort; 0: none. */
  REQ_ABORT = 2,
  /** 1: the borrower asks the owner to reset the controller. */
  REQ_RESET = 3,
  /** 1 from export until the borrower's close(). */
  LENT = 4,
  /** Ring state the borrower leaves at close(): SQ tail, SQ head, CQ head, CQ phase. */
  SQ_TAIL = 5,
  SQ_HEAD = 6,
  CQ_HEAD = 7,
  CQ_PHASE = 8,
  /**
   * 1: the borrower gave up waiting for its owner with commands that may still reach memory: the
   * owner keeps every exported buffer until the queue is deleted or the controller disabled.
   */
  POISONED = 9,
  /** 1 from the borrower's release() until the owner's reclaim() took its ring state. */
  RETURNED = 10,
  WORDS = 16,
}

export const LEASE_BYTES = W.WORDS * 4;
/** STATE of a lent queue the owner could not re-create after a reset. */
const ABANDONED = -1;

/** Memory exported to other threads (exportBuffer): what a lent queue's commands may reach. */
export const exportedMemory = new WeakSet<object>();

/** A borrower in the owner's thread whose executors do not run JavaScript (see the top). */
export interface LocalBorrower {
  /**
   * Make the executors using the queue stop, waiting at most `ms`: true once none of them can
   * touch the queue's rings or ring its doorbells any more. Commands they posted stay in flight.
   */
  stop(why: "reset" | "abandon", ms: number): boolean;
  /**
   * Reset, once the controller is disabled and the executors stopped: every command ended; empty
   * the rings as the re-created queue starts (tail, head 0, phase 1).
   */
  emptyRings(): void;
}

/** Owner side of one lent queue. */
export class QueueLease implements DmaUser {
  readonly sab: SharedArrayBuffer;
  readonly #w: Int32Array;
  #ended = false;
  #local: LocalBorrower | undefined;
  /** The resetting value the local borrower acknowledged (it stopped), or -1. */
  #localAck = -1;
  /** The local borrower stopped in quiesce(), before the disable. */
  #localStopped = false;

  constructor(
    readonly queue: IoQueue,
    private readonly backend: Backend,
  ) {
    this.sab = new SharedArrayBuffer(LEASE_BYTES);
    this.#w = new Int32Array(this.sab);
    addDmaUser(backend, this);
  }

  /**
   * Set (or clear) the borrower that lives in this thread. Set it after lend(); clear it when the
   * borrower returned the queue.
   */
  setLocalBorrower(b: LocalBorrower | undefined): void {
    this.#local = b;
    this.#localAck = -1;
  }

  /** Hand the queue out (again): its ring state travels in the description, not here. */
  lend(): void {
    Atomics.store(this.#w, W.ACK, 0);
    Atomics.store(this.#w, W.REQ_ABORT, 0);
    Atomics.store(this.#w, W.REQ_RESET, 0);
    Atomics.store(this.#w, W.LENT, 1);
  }

  /** True from lend() until the borrower closed its side. */
  get lent(): boolean {
    return Atomics.load(this.#w, W.LENT) === 1;
  }

  /** The queue no longer exists on the controller (abandoned in a reset). */
  get abandoned(): boolean {
    return Atomics.load(this.#w, W.STATE) === ABANDONED;
  }

  /** DmaUser: while lent (or given up on by its borrower), exported memory may be reached. */
  mayAccess(key: object): boolean {
    if (this.#ended || !exportedMemory.has(key)) return false;
    return this.lent || Atomics.load(this.#w, W.POISONED) === 1;
  }

  /**
   * Copy the ring state the borrower left into the owner's queue objects, once it returned the
   * queue; the owner then drives the queue itself again.
   */
  reclaim(cq: IoCompletionQueue): void {
    const w = this.#w;
    // Once only: after a reset the owner's queue objects were emptied, and the state the borrower
    // left before it is stale (taking it again would make the re-created queue fetch old entries).
    if (Atomics.exchange(w, W.RETURNED, 0) !== 1) return;
    this.queue.sq.tail = Atomics.load(w, W.SQ_TAIL);
    this.queue.sq.head = Atomics.load(w, W.SQ_HEAD);
    cq.cq.head = Atomics.load(w, W.CQ_HEAD);
    cq.cq.phase = Atomics.load(w, W.CQ_PHASE);
  }

  /**
   * Reset step before the disable: a local borrower's executors stop ringing doorbells first, so
   * the controller is disabled with its queues quiet, as a host driver quiesces its queues before
   * a reset. (QEMU 7.2's controller crashes, SIGSEGV in nvme_rw_complete_cb, when SQ doorbell
   * writes from another CPU race with CC.EN = 0.) A Worker borrower cannot be stopped from here:
   * moving STATE now would let it settle commands the controller may still run.
   */
  quiesce(): void {
    const s = Atomics.load(this.#w, W.STATE);
    this.#localStopped = !!this.#local && this.lent && s !== ABANDONED && this.#local.stop("reset", 5000);
  }

  /** Reset step: the controller is disabled. Returns the value the borrower must acknowledge. */
  beginReset(): number {
    const s = Atomics.load(this.#w, W.STATE);
    const resetting = s === ABANDONED ? s : s + 1;
    // Disabled: nothing the borrower posted can reach memory any more.
    Atomics.store(this.#w, W.POISONED, 0);
    Atomics.store(this.#w, W.REQ_RESET, 0);
    Atomics.store(this.#w, W.REQ_ABORT, 0);
    if (s !== ABANDONED) Atomics.store(this.#w, W.STATE, resetting);
    // A local borrower that did not stop in quiesce() stops now, before the re-enable.
    if (this.#local && this.lent && s !== ABANDONED) {
      const stopped = this.#localStopped || this.#local.stop("reset", 5000);
      if (stopped) this.#local.emptyRings();
      this.#localAck = stopped ? resetting : -1;
    }
    this.#localStopped = false;
    return resetting;
  }

  /** Wait up to `ms` for the borrower to acknowledge `value` (it settled and emptied its rings). */
  awaitAck(value: number, ms: number): boolean {
    if (this.#local) {
      // It stopped in beginReset() or it never will: nothing to wait for.
      if (this.#localAck !== value) return false;
      Atomics.store(this.#w, W.ACK, value);
      return true;
    }
    const deadline = performance.now() + ms;
    for (;;) {
      const ack = Atomics.load(this.#w, W.ACK);
      if (ack === value) return true;
      const left = deadline - performance.now();
      if (left <= 0) return false;
      Atomics.wait(this.#w, W.ACK, ack, Math.min(left, 50));
    }
  }

  /** The queue exists on the controller again: the borrower may ring its doorbells. */
  live(resetting: number): void {
    Atomics.store(this.#w, W.STATE, resetting + 1);
    Atomics.notify(this.#w, W.STATE);
  }

  /** The queue was not re-created: the borrower settles and refuses everything. */
  abandon(): void {
    this.#local?.stop("abandon", 5000);
    Atomics.store(this.#w, W.STATE, ABANDONED);
    Atomics.notify(this.#w, W.STATE);
  }

  /** What the borrower asked for since the last call: a CID to abort (-1: none), a reset. */
  takeRequests(): { abortCid: number; reset: boolean } {
    const abort = Atomics.exchange(this.#w, W.REQ_ABORT, 0);
    const reset = Atomics.exchange(this.#w, W.REQ_RESET, 0) === 1;
    return { abortCid: abort - 1, reset };
  }

  /** The queue was deleted, or the controller disabled for good: nothing it lent can be reached. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    removeDmaUser(this.backend, this);
  }
}

/** Borrower side: the LeaseGate its IoQueue consults, and the recovery requests it sends. */
export class LeaseClient implements LeaseGate {
  readonly #w: Int32Array;
  #epoch: number;
  #acked = 0;
  #dead = false;
  /** When a reset was asked for (performance.now()), or -1. */
  #resetAskedAt = -1;

  constructor(
    sab: SharedArrayBuffer,
    private readonly cq: IoCompletionQueue | undefined,
    /** How long to wait for the owner to act on a reset request before failing the queue. */
    private readonly ownerWaitMs: number,
  ) {
    this.#w = new Int32Array(sab);
    this.#epoch = Atomics.load(this.#w, W.STATE);
  }

  get open(): boolean {
    return Atomics.load(this.#w, W.STATE) === this.#epoch;
  }

  check(q: IoQueue): void {
    const s = Atomics.load(this.#w, W.STATE);
    if (s === this.#epoch) {
      if (this.#resetAskedAt >= 0 && performance.now() - this.#resetAskedAt > this.ownerWaitMs) this.#giveUp(q);
      return;
    }
    if (this.#dead) return;
    if (s === ABANDONED) {
      this.#dead = true;
      q.settleAndRefuse(
        new NvmeTimeoutError(
          `I/O queue ${q.qid}: the thread that owns the controller reset it and did not re-create this queue (this Worker did not answer in time); attach a new queue`,
          q.timeoutMs,
        ),
      );
      return;
    }
    if ((s & 1) === 1) {
      if (this.#acked === s) return;
      // The controller is disabled: settle everything, empty both rings, then say so.
      q.resetAfterDisable(new NvmeTimeoutError(`failed by a controller reset (the owner of the controller reset it)`, q.timeoutMs));
      this.cq?.reset();
      this.#acked = s;
      this.#resetAskedAt = -1;
      Atomics.store(this.#w, W.ACK, s);
      Atomics.notify(this.#w, W.ACK);
      return;
    }
    if (this.#acked === s - 1) {
      this.#epoch = s;
      q.resume();
    }
  }

  /** A command's deadline passed: ask the owner to send Abort for it (one request at a time). */
  requestAbort(cid: number): void {
    Atomics.compareExchange(this.#w, W.REQ_ABORT, 0, cid + 1);
  }

  /** A command the Abort did not end, or a fatal controller status: ask the owner for a reset. */
  requestReset(): void {
    Atomics.store(this.#w, W.REQ_RESET, 1);
    if (this.#resetAskedAt < 0) this.#resetAskedAt = performance.now();
  }

  /**
   * The owner did not act: settle and refuse, and tell the owner that exported memory may still be
   * reached until it deletes the queue or disables the controller.
   */
  #giveUp(q: IoQueue): void {
    this.#dead = true;
    Atomics.store(this.#w, W.POISONED, 1);
    q.settleAndRefuse(
      new NvmeTimeoutError(
        `I/O queue ${q.qid}: the thread that owns the controller did not reset it within ${this.ownerWaitMs} ms of this Worker's request; ` +
          `the controller may still read or write this queue's buffers: do not reuse them (the owner keeps them until it deletes the queue)`,
        this.ownerWaitMs,
      ),
    );
  }

  /**
   * Hand the queue back, with the ring state the owner continues from; `busy`: commands were left
   * outstanding, so exported memory stays with the owner until it deletes the queue or disables.
   */
  release(sqTail: number, sqHead: number, cqHead: number, cqPhase: number, busy: boolean): void {
    const w = this.#w;
    Atomics.store(w, W.SQ_TAIL, sqTail);
    Atomics.store(w, W.SQ_HEAD, sqHead);
    Atomics.store(w, W.CQ_HEAD, cqHead);
    Atomics.store(w, W.CQ_PHASE, cqPhase);
    if (busy) Atomics.store(w, W.POISONED, 1);
    Atomics.store(w, W.RETURNED, 1);
    Atomics.store(w, W.LENT, 0);
  }
}
