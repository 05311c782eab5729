/**
 * Submission and completion queue rings in DMA memory (NVMe Base 2.0, 3.3.1) and a queue pair
 * that runs one command at a time to completion (the admin path, setup, tools). The rings are
 * plain state plus typed-array views: no allocation per command.
 */
import type { Pointer } from "bun:ffi";
import { ControllerFatalError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError } from "./errors.ts";
import { native } from "./native.ts";
import {
  CID_MAX,
  commandName,
  CQE_DWORDS,
  CQE_SIZE,
  cqeCid,
  cqeSqhd,
  cqeStatus,
  SQE_DWORDS,
  SQE_SIZE,
  writeCommand,
  type Command,
} from "./spec/commands.ts";
import { CSTS_CFS, REG_ALL_ONES, REG_CSTS, cqHeadDoorbell, sqTailDoorbell } from "./spec/registers.ts";
import { DmaBuffer } from "./dma.ts";
import type { Backend } from "./backends/types.ts";

export class SubmissionQueue {
  readonly mem: DmaBuffer;
  /** The ring as dwords; the entry in slot i starts at i * 16. */
  readonly sqe: Uint32Array;
  /** Next slot the host fills. */
  tail = 0;
  /** Last SQ Head Pointer (SQHD) reported by the controller in a CQE. */
  head = 0;

  constructor(
    backend: Backend,
    readonly qid: number,
    readonly entries: number,
    readonly doorbell: number,
    private readonly bar0: Pointer,
  ) {
    this.mem = new DmaBuffer(backend, entries * SQE_SIZE, { contiguous: true });
    this.sqe = this.mem.u32;
  }

  /** Full when advancing the tail would make it equal the head (one slot always stays empty). */
  get full(): boolean {
    const next = this.tail + 1 === this.entries ? 0 : this.tail + 1;
    return next === this.head;
  }

  /** Entries the controller has not yet fetched. */
  get pending(): number {
    return (this.tail - this.head + this.entries) % this.entries;
  }

  /** Dword offset of the slot at the tail; advance() commits it. */
  get slot(): number {
    return this.tail * SQE_DWORDS;
  }

  advance(): void {
    this.tail = this.tail + 1 === this.entries ? 0 : this.tail + 1;
  }

  /** Empty again, as after a controller reset (the controller's SQ head is 0 once it is re-created). */
  reset(): void {
    this.tail = 0;
    this.head = 0;
  }

  /** Tell the controller about every entry up to the tail (one doorbell per batch). */
  ring(): void {
    native().nvm_doorbell(this.bar0, this.doorbell, this.tail);
  }
}

export class CompletionQueue {
  readonly mem: DmaBuffer;
  /** The ring as dwords; entry i starts at i * 4. */
  readonly cqe: Uint32Array;
  head = 0;
  /** Phase Tag expected of new entries: 1 on the first pass, inverted at each wrap. */
  phase = 1;

  constructor(
    backend: Backend,
    readonly qid: number,
    readonly entries: number,
    readonly doorbell: number,
    private readonly bar0: Pointer,
  ) {
    this.mem = new DmaBuffer(backend, entries * CQE_SIZE, { contiguous: true });
    this.cqe = this.mem.u32;
  }

  /**
   * Dword offset of the entry at the head if the controller has posted it, else -1.
   * Atomics.load because plain loads in a polling loop are hoisted by the JIT; the phase
   * is read first, the rest of the entry is valid only after it.
   */
  peek(): number {
    const o = this.head * CQE_DWORDS;
    return ((Atomics.load(this.cqe, o + 3) >>> 16) & 1) === this.phase ? o : -1;
  }

  /** Consume the entry at the head. */
  pop(): void {
    if (++this.head === this.entries) {
      this.head = 0;
      this.phase ^= 1;
    }
  }

  /** Empty again, as after a controller reset: old entries' phase bits must not look new. */
  reset(): void {
    this.cqe.fill(0);
    this.head = 0;
    this.phase = 1;
  }

  /** Release consumed entries to the controller (once per batch). */
  ring(): void {
    native().nvm_doorbell(this.bar0, this.doorbell, this.head);
  }
}

export interface Completion {
  /** Command specific DW0 (e.g. Number of Queues granted). */
  readonly dw0: number;
  readonly dw1: number;
  readonly cid: number;
}

export interface ExecOptions {
  /** Milliseconds before NvmeTimeoutError. Defaults to the pair's timeout. */
  readonly timeoutMs?: number;
  /** Text for error messages, e.g. "@ LBA 8, 16 blocks". */
  readonly detail?: string;
}

/** A command sent by post(): its completion, once seen, waits here for take(). */
interface Posted {
  readonly opcode: number;
  readonly detail: string | undefined;
  done: { readonly status: number; readonly dw0: number; readonly dw1: number } | Error | undefined;
}

/**
 * One SQ and its CQ, used synchronously: post one command, spin (bounded) for its completion.
 * For the admin queue and for tools; the pipelined I/O path builds on the same rings. A command
 * that may run long (Format NVM) is sent with post() instead and its completion collected with
 * take(), so the caller can wait without spinning while other commands go through execute().
 */
export class QueuePair {
  readonly sq: SubmissionQueue;
  readonly cq: CompletionQueue;
  #cid = 0;
  /** CIDs posted and not yet completed (a timed-out command may still complete later). */
  readonly #outstanding = new Set<number>();
  /** Commands sent by post() and not yet taken, by CID: their completions are kept, not dropped. */
  readonly #posted = new Map<number, Posted>();

  constructor(
    private readonly backend: Backend,
    readonly qid: number,
    entries: number,
    dstrd: number,
    readonly timeoutMs: number,
  ) {
    if (!Number.isInteger(entries) || entries < 2) throw new InvalidArgumentError(`a queue needs at least 2 entries, got ${entries}`);
    this.cq = new CompletionQueue(backend, qid, entries, cqHeadDoorbell(qid, dstrd), backend.bar0);
    try {
      this.sq = new SubmissionQueue(backend, qid, entries, sqTailDoorbell(qid, dstrd), backend.bar0);
    } catch (e) {
      this.cq.mem.free();
      throw e;
    }
  }

  get admin(): boolean {
    return this.qid === 0;
  }

  #nextCid(): number {
    // Skip CIDs still outstanding so two live commands never share one.
    for (let i = 0; i <= CID_MAX; i++) {
      const cid = this.#cid;
      this.#cid = cid === CID_MAX ? 0 : cid + 1;
      // A posted command's CID stays taken until take(): its completion is filed under it.
      if (!this.#outstanding.has(cid) && !this.#posted.has(cid)) return cid;
    }
    throw new InvalidArgumentError(`queue ${this.qid}: every command identifier is outstanding`);
  }

  /** Post `cmd`, ring, and wait for its completion; NvmeStatusError on a non-zero status. */
  execute(cmd: Command, opts: ExecOptions = {}): Completion {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    this.reap();
    if (this.sq.full) {
      throw new NvmeTimeoutError(`queue ${this.qid} is full of commands that never completed`, timeoutMs);
    }
    const cid = this.#nextCid();
    writeCommand(this.sq.sqe, this.sq.slot, cid, cmd);
    this.sq.advance();
    this.#outstanding.add(cid);
    this.sq.ring();

    const n = native();
    const bar0 = this.backend.bar0;
    const deadline = performance.now() + timeoutMs;
    for (let spins = 0; ; spins++) {
      const o = this.cq.peek();
      if (o >= 0) {
        const cq = this.cq.cqe;
        const got = cqeCid(cq, o);
        const status = cqeStatus(cq, o);
        const dw0 = cq[o]!;
        const dw1 = cq[o + 1]!;
        this.sq.head = cqeSqhd(cq, o);
        this.#outstanding.delete(got);
        this.cq.pop();
        this.cq.ring();
        // A posted command's completion, or a late one of an earlier, timed-out command.
        if (got !== cid) {
          this.#file(got, status, dw0, dw1);
          continue;
        }
        if (status !== 0) {
          throw new NvmeStatusError(status, {
            command: commandName(cmd.opcode, this.admin),
            opcode: cmd.opcode,
            cid,
            sqid: this.qid,
            detail: opts.detail,
          });
        }
        return { dw0, dw1, cid };
      }
      if ((spins & 255) === 255) {
        if (performance.now() > deadline) {
          throw new NvmeTimeoutError(
            `${commandName(cmd.opcode, this.admin)} (cid ${cid}) on queue ${this.qid} did not complete within ${timeoutMs} ms` +
              (this.admin ? ": if the controller stopped answering, Controller.reset() re-initializes it and re-creates its I/O queues" : ""),
            timeoutMs,
          );
        }
        // CSTS is an uncached read: look at it now and then, not on every spin.
        const csts = (spins & 16383) === 16383 ? n.nvm_read32(bar0, REG_CSTS) : 0;
        if (csts === REG_ALL_ONES || (csts & CSTS_CFS) !== 0) {
          throw new ControllerFatalError(
            csts === REG_ALL_ONES
              ? `${this.backend.name}: controller registers read all ones: the device is gone`
              : `${this.backend.name}: Controller Fatal Status (CSTS.CFS) set while waiting for ${commandName(cmd.opcode, this.admin)}; reopen to reset it`,
            csts,
          );
        }
      }
    }
  }

  /** Consume completions already posted (post()'s, kept for take(); late ones of timed-out commands). */
  reap(): number {
    let n = 0;
    for (let o = this.cq.peek(); o >= 0; o = this.cq.peek()) {
      const cq = this.cq.cqe;
      this.sq.head = cqeSqhd(cq, o);
      const cid = cqeCid(cq, o);
      this.#outstanding.delete(cid);
      this.#file(cid, cqeStatus(cq, o), cq[o]!, cq[o + 1]!);
      this.cq.pop();
      n++;
    }
    if (n > 0) this.cq.ring();
    return n;
  }

  /** Keep the completion of a posted command for take(); any other stray completion is dropped. */
  #file(cid: number, status: number, dw0: number, dw1: number): void {
    const p = this.#posted.get(cid);
    if (p && p.done === undefined) p.done = { status, dw0, dw1 };
  }

  /**
   * Post `cmd` and ring without waiting for it: for a command that may run long. Collect its
   * completion with take(cid); whoever reaps the CQ meanwhile (execute() of another command,
   * reap()) keeps it for take(). The caller bounds the wait (Controller.adminCommandAsync).
   */
  post(cmd: Command, opts: ExecOptions = {}): number {
    this.reap();
    if (this.sq.full) {
      throw new NvmeTimeoutError(`queue ${this.qid} is full of commands that never completed`, opts.timeoutMs ?? this.timeoutMs);
    }
    const cid = this.#nextCid();
    writeCommand(this.sq.sqe, this.sq.slot, cid, cmd);
    this.sq.advance();
    this.#outstanding.add(cid);
    this.#posted.set(cid, { opcode: cmd.opcode, detail: opts.detail, done: undefined });
    this.sq.ring();
    return cid;
  }

  /**
   * The completion of command `cid` sent by post(): undefined while it is outstanding. A non-zero
   * status throws NvmeStatusError, and a command a controller reset ended throws the reset's
   * error. Once it returned or threw, the command is forgotten and its CID free again.
   */
  take(cid: number): Completion | undefined {
    this.reap();
    const p = this.#posted.get(cid);
    if (!p) throw new InvalidArgumentError(`queue ${this.qid}: command ${cid} was not sent by post(), or was taken already`);
    const done = p.done;
    if (done === undefined) return undefined;
    this.#posted.delete(cid);
    if (done instanceof Error) throw done;
    if (done.status !== 0) {
      throw new NvmeStatusError(done.status, { command: commandName(p.opcode, this.admin), opcode: p.opcode, cid, sqid: this.qid, detail: p.detail });
    }
    return { dw0: done.dw0, dw1: done.dw1, cid };
  }

  /**
   * @internal After a controller reset: both rings empty, no command outstanding. Posted
   * commands not yet completed end with `reason` (the controller was disabled, so they never will).
   */
  reset(reason?: Error): void {
    this.sq.reset();
    this.cq.reset();
    this.#outstanding.clear();
    for (const p of this.#posted.values()) {
      p.done ??= reason ?? new NvmeTimeoutError(`queue ${this.qid}: ended by a controller reset before it completed`, this.timeoutMs);
    }
  }

  /** Free the rings (the controller must no longer use them). */
  free(): void {
    this.sq.mem.free();
    this.cq.mem.free();
  }
}
