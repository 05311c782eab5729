/**
 * A Backend over plain memory, for unit tests without a controller: BAR0 is a zeroed C-allocated
 * area, DMA memory is real (nvm_dma_alloc), and bus addresses are made up per 4 KiB page so the
 * tests can check every PRP entry and queue base against known values.
 *
 * Fake bus addresses start above 4 GiB by default, so the high dword of every 64-bit field is
 * exercised. Allocations that do not ask for `contiguous` get pages spaced two pages apart on the
 * "bus", so code that assumes one address range for a multi-page buffer gets caught.
 *
 * dma-bufs: createDmaBuf() makes a fake exporter's buffer (host memory the test sees, under a fake
 * fd number); importDmaBuf() maps it like the disnvm module would, without a CPU view; revoke()
 * plays the module's move_notify (controller disabled, bus mastering cleared, bus mastering refused
 * until takeRevokedDmaBufs() gave the import back).
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { dmaBufRange } from "../../lib/backends/dmabuf.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "../../lib/backends/types.ts";
import { DmaBufRevokedError, InvalidArgumentError } from "../../lib/errors.ts";
import { native } from "../../lib/native.ts";
import { CQE_DWORDS, SQE_DWORDS } from "../../lib/spec/commands.ts";
import type { CompletionQueue, QueuePair, SubmissionQueue } from "../../lib/queue.ts";

export const FAKE_BAR0_SIZE = 16 * 1024;
/** First fake bus address handed out: 4 GiB, so hi dwords are non-zero. */
export const FAKE_BUS_BASE = 0x1_0000_0000;
const TWO32 = 0x1_0000_0000;
/** nvm_dma_alloc flag: no mlock (c/include/nvm_native.h). */
const NVM_DMA_NOLOCK = 2;

export interface FakeBackendOptions {
  /** Bus address of the first page handed out. Defaults to FAKE_BUS_BASE. */
  readonly busBase?: number;
  /** Give non-contiguous allocations consecutive pages anyway. Defaults to false (pages are scattered). */
  readonly alwaysContiguous?: boolean;
}

export interface FakeMapping extends DmaMapping {
  readonly requested: number;
  /** The host memory the "bus" addresses lead to: vaddr, or the fake exporter's memory of an import. */
  readonly backing: Pointer;
}

/** A fake exporter's dma-buf: host memory the test reads and writes, known to importDmaBuf() by `fd`. */
export interface FakeDmaBuf {
  readonly fd: number;
  readonly size: number;
  readonly exporter: string;
  readonly memory: Pointer;
  readonly bytes: Uint8Array;
}

const REG_CC = 0x14;

export class FakeBackend implements Backend {
  readonly kind = "sysfs" as const;
  readonly name = "0000:fa:ke.0";
  readonly bar0: Pointer;
  readonly bar0Size = FAKE_BAR0_SIZE;
  /** BAR0 as dwords: what the code under test wrote to registers and doorbells. */
  readonly regs: Uint32Array;
  readonly live = new Set<FakeMapping>();
  allocations = 0;
  frees = 0;
  #nextBus: number;
  readonly #alwaysContiguous: boolean;
  #closed = false;
  /** Fake dma-bufs by fd; imports of them (also in `live` until revoked); revoked, not yet taken. */
  readonly dmaBufs = new Map<number, FakeDmaBuf>();
  readonly imports = new Set<FakeMapping>();
  readonly #revokedPending = new Set<FakeMapping>();
  #nextFd = 1000;
  #nextHandle = 1;

  constructor(opts: FakeBackendOptions = {}) {
    // Page aligned, as a BAR mapping is (GPU queues register its doorbell pages whole).
    const p = native().nvm_dma_alloc(FAKE_BAR0_SIZE, NVM_DMA_NOLOCK);
    if (p === null) throw new Error("nvm_dma_alloc failed for the fake BAR0");
    this.bar0 = p;
    this.regs = new Uint32Array(toArrayBuffer(p, 0, FAKE_BAR0_SIZE));
    this.#nextBus = opts.busBase ?? FAKE_BUS_BASE;
    this.#alwaysContiguous = opts.alwaysContiguous ?? false;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** A 32-bit register or doorbell as the code under test left it. */
  reg(offset: number): number {
    if (offset % 4 !== 0) throw new Error(`unaligned register offset ${offset}`);
    return this.regs[offset / 4]!;
  }

  /** Put a value in a register, as the controller would (e.g. CSTS). */
  setReg(offset: number, value: number): void {
    this.regs[offset / 4] = value >>> 0;
  }

  allocDma(size: number, opts: DmaOptions = {}): DmaMapping {
    if (this.#closed) throw new Error("FakeBackend is closed");
    const pages = Math.ceil(size / HOST_PAGE_SIZE);
    const vaddr = native().nvm_dma_alloc(size, 0);
    if (vaddr === null) throw new Error(`nvm_dma_alloc(${size}) failed: errno ${native().nvm_last_error()}`);
    const contiguous = opts.contiguous === true || this.#alwaysContiguous || pages === 1;
    const stride = contiguous ? HOST_PAGE_SIZE : 2 * HOST_PAGE_SIZE;
    const iova = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = this.#nextBus + i * stride;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    // Leave a gap between allocations too, so no two buffers look like one range.
    this.#nextBus += pages * stride + HOST_PAGE_SIZE;
    const m: FakeMapping = { vaddr, size: pages * HOST_PAGE_SIZE, iova, contiguous, requested: size, backing: vaddr };
    this.live.add(m);
    this.allocations++;
    return m;
  }

  /** A fake exporter's dma-buf of `size` bytes (zeroed), importable by its fd. */
  createDmaBuf(size: number, exporter = "fake"): FakeDmaBuf {
    const memory = native().nvm_dma_alloc(size, 0);
    if (memory === null) throw new Error(`nvm_dma_alloc(${size}) failed`);
    const b: FakeDmaBuf = { fd: this.#nextFd++, size, exporter, memory, bytes: new Uint8Array(toArrayBuffer(memory, 0, size)) };
    this.dmaBufs.set(b.fd, b);
    return b;
  }

  /** As the disnvm backend: scattered bus addresses over the fake buffer's pages, no CPU view. */
  importDmaBuf(fd: number, offset: number, size?: number): DmaMapping {
    if (this.#closed) throw new Error("FakeBackend is closed");
    const b = this.dmaBufs.get(fd);
    if (!b) throw new InvalidArgumentError(`fd ${fd} is not open in this process (fake)`);
    const bytes = dmaBufRange(fd, b, offset, size, 1 << 30);
    const pages = bytes / HOST_PAGE_SIZE;
    const iova = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = this.#nextBus + i * 2 * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    this.#nextBus += pages * 2 * HOST_PAGE_SIZE + HOST_PAGE_SIZE;
    const handle = this.#nextHandle++;
    const m: FakeMapping = {
      vaddr: null,
      size: bytes,
      iova,
      contiguous: pages === 1,
      requested: bytes,
      backing: (Number(b.memory) + offset) as Pointer,
      dmaBuf: { fd, offset, bufferSize: b.size, exporter: b.exporter, handle },
    };
    this.live.add(m);
    this.imports.add(m);
    this.events.push("import");
    return m;
  }

  /**
   * The disnvm module's move_notify for import `m`: the controller is disabled (CC.EN = 0; the
   * fake controller then clears CSTS.RDY and forgets its queues) and its bus mastering cleared,
   * and the memory is the exporter's again (a DMA to it is a violation).
   */
  revoke(m: DmaMapping): void {
    const f = m as FakeMapping;
    if (!this.imports.has(f)) throw new Error("not a live import of this FakeBackend");
    this.live.delete(f);
    this.#revokedPending.add(f);
    this.setReg(REG_CC, this.reg(REG_CC) & ~1);
    this.busMaster = false;
    this.events.push("revoke");
  }

  takeRevokedDmaBufs(): DmaMapping[] {
    const out = [...this.#revokedPending];
    this.#revokedPending.clear();
    for (const m of out) {
      m.invalidate?.(new DmaBufRevokedError(`dma-buf fd ${m.dmaBuf!.fd} was revoked by its exporter (fake)`));
      this.events.push("take-revoked");
    }
    return out;
  }

  freeDma(mapping: DmaMapping): void {
    const m = mapping as FakeMapping;
    if (m.vaddr === null) {
      // An import: the exporter's memory stays; only the mapping goes.
      if (!this.imports.delete(m)) return;
      this.live.delete(m);
      this.#revokedPending.delete(m);
      this.frees++;
      this.events.push("unimport");
      m.revoke?.();
      return;
    }
    if (!this.live.delete(m)) return;
    this.frees++;
    this.events.push("free");
    m.revoke?.(); // as every backend must: no view may outlive the mapping
    const rc = native().nvm_dma_free(m.vaddr, m.size, 0);
    if (rc !== 0) throw new Error(`nvm_dma_free failed: ${rc}`);
  }

  /** PCI COMMAND Bus Master Enable as the code under test left it; `failBusMaster` makes writes throw. */
  busMaster = true;
  failBusMaster = false;
  /** Mappings given up by abandonDma() (still allocated). */
  readonly abandoned = new Set<FakeMapping>();

  /** What happened to bus mastering and memory, in order ("busMaster:false", "free", "abandon"). */
  readonly events: string[] = [];

  setBusMaster(enabled: boolean): void {
    if (this.failBusMaster) throw new Error("fake: config space write failed");
    // The module's rule: no DMA while a revoked import may still be in the controller's queues.
    if (enabled && this.#revokedPending.size > 0) throw new Error("fake: ESTALE, a revoked import is still mapped");
    this.busMaster = enabled;
    this.events.push(`busMaster:${enabled}`);
  }

  abandonDma(): void {
    for (const m of this.live) this.abandoned.add(m);
    this.live.clear();
    this.imports.clear();
    this.events.push("abandon");
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const m of [...this.live, ...this.imports]) this.freeDma(m);
    for (const b of this.dmaBufs.values()) native().nvm_dma_free(b.memory, b.size, 0);
    this.dmaBufs.clear();
    native().nvm_dma_free(this.bar0, FAKE_BAR0_SIZE, NVM_DMA_NOLOCK);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The byte address (lo + hi * 2^32) stored in two dwords. */
export function addr64(u32: ArrayLike<number>, o: number): number {
  return u32[o]! + u32[o + 1]! * TWO32;
}

/** Write a completion queue entry at the slot `index` of a CQ ring (DW3 last, as a controller does). */
export function postCqe(
  cqe: Uint32Array,
  index: number,
  e: { cid: number; phase: number; status?: number; sqhd?: number; sqid?: number; dw0?: number; dw1?: number },
): void {
  const o = index * CQE_DWORDS;
  cqe[o] = (e.dw0 ?? 0) >>> 0;
  cqe[o + 1] = (e.dw1 ?? 0) >>> 0;
  cqe[o + 2] = ((e.sqhd ?? 0) & 0xffff) | (((e.sqid ?? 0) & 0xffff) << 16);
  cqe[o + 3] = ((e.cid & 0xffff) | ((e.phase & 1) << 16) | ((e.status ?? 0) << 17)) >>> 0;
}

/** What the fake controller answers for one command; `undefined` from the responder = never complete. */
export interface FakeResponse {
  readonly status?: number;
  readonly dw0?: number;
  readonly dw1?: number;
}

export interface SeenCommand {
  readonly cid: number;
  readonly opcode: number;
  /** Copy of the 16 dwords of the SQE as the controller fetched it. */
  readonly sqe: Uint32Array;
}

/**
 * A controller that answers synchronously. QueuePair.execute() rings the SQ doorbell and then
 * spins on the CQ without yielding, so nothing on another turn of the event loop could answer.
 * This fake wraps the pair's `sq.ring()` instead: after the real doorbell store it reads the
 * new tail from the fake BAR0 (so the doorbell write is what drives it), fetches every SQE
 * between its own head and that tail, and posts completions with the phase it tracks itself.
 *
 * `queue` holds completions to post before the answer to the next fetched command
 * (e.g. a late completion of an earlier command).
 */
export class FakeController {
  readonly seen: SeenCommand[] = [];
  /** SQ head as the controller sees it (entries fetched). */
  sqHead = 0;
  /** Next CQ slot to write and the phase to write it with. */
  cqTail = 0;
  cqPhase = 1;
  /** Completions to post before answering the next fetched command. */
  readonly queue: Array<{ cid: number; status?: number; dw0?: number }> = [];
  responder: (cmd: SeenCommand) => FakeResponse | undefined = () => ({});

  constructor(
    readonly backend: FakeBackend,
    readonly qp: QueuePair,
  ) {
    const sq = qp.sq;
    const original = sq.ring.bind(sq);
    sq.ring = () => {
      original();
      this.#onDoorbell();
    };
  }

  /** Post a completion now, as if the controller finished `cid` at some point. */
  complete(cid: number, r: FakeResponse = {}): void {
    const cq = this.qp.cq;
    postCqe(cq.cqe, this.cqTail, {
      cid,
      phase: this.cqPhase,
      status: r.status ?? 0,
      dw0: r.dw0 ?? 0,
      dw1: r.dw1 ?? 0,
      sqhd: this.sqHead,
      sqid: this.qp.qid,
    });
    if (++this.cqTail === cq.entries) {
      this.cqTail = 0;
      this.cqPhase ^= 1;
    }
  }

  #onDoorbell(): void {
    const sq = this.qp.sq;
    const tail = this.backend.reg(sq.doorbell);
    while (this.sqHead !== tail) {
      const o = this.sqHead * SQE_DWORDS;
      const sqe = sq.sqe.slice(o, o + SQE_DWORDS);
      const cmd: SeenCommand = { cid: sqe[0]! >>> 16, opcode: sqe[0]! & 0xff, sqe };
      this.seen.push(cmd);
      this.sqHead = this.sqHead + 1 === sq.entries ? 0 : this.sqHead + 1;
      for (const late of this.queue.splice(0)) this.complete(late.cid, late);
      const r = this.responder(cmd);
      if (r) this.complete(cmd.cid, r);
    }
  }
}

export interface SeenIoCommand extends SeenCommand {
  /** The SQ it was fetched from. */
  readonly sqid: number;
}

/**
 * A controller for I/O queues: one completion queue that any number of submission queues share
 * (IoQueue over IoCompletionQueue). Like FakeController it wraps each attached SQ's ring(): the
 * tail read back from the fake BAR0 is what makes it fetch. It also wraps the CQ's ring() and
 * reads the head doorbell back, and it never posts into a full CQ (tail + 1 = head, as the host
 * last rang it): such completions wait in `held` until the host frees entries, as a real
 * controller must. `overflows` counts completions that arrived while the CQ was full.
 *
 * The responder answers each fetched command at once; `undefined` leaves it outstanding, and
 * complete() finishes it later (a late completion).
 */
export class FakeIoController {
  readonly seen: SeenIoCommand[] = [];
  /** SQ head per SQ id as the controller sees it (entries fetched). */
  readonly sqHeads = new Map<number, number>();
  /** SQ tail doorbell writes per SQ id. */
  readonly sqDoorbells = new Map<number, number>();
  /** Every value the host wrote to the CQ head doorbell, in order. */
  readonly cqDoorbells: number[] = [];
  readonly #sqEntries = new Map<number, number>();
  readonly #sqs = new Map<number, SubmissionQueue>();
  /** Next CQ slot to write and the phase to write it with. */
  cqTail = 0;
  cqPhase = 1;
  /** Completions that found the CQ full, posted when the host rings the head doorbell. */
  readonly held: Array<{ sqid: number; cid: number; r: FakeResponse }> = [];
  /** Completions that found the CQ full (held, not lost). */
  overflows = 0;
  responder: (cmd: SeenIoCommand) => FakeResponse | undefined = () => ({});

  constructor(
    readonly backend: FakeBackend,
    readonly cq: CompletionQueue,
  ) {
    const original = cq.ring.bind(cq);
    cq.ring = () => {
      original();
      this.cqDoorbells.push(this.backend.reg(cq.doorbell));
      this.#flush();
    };
  }

  /** Answer commands rung on `sq` (its completions carry `sqid`, by default its qid). */
  attach(sq: SubmissionQueue, sqid = sq.qid): void {
    this.sqHeads.set(sqid, 0);
    this.sqDoorbells.set(sqid, 0);
    this.#sqEntries.set(sqid, sq.entries);
    this.#sqs.set(sqid, sq);
    const original = sq.ring.bind(sq);
    sq.ring = () => {
      original();
      this.sqDoorbells.set(sqid, this.sqDoorbells.get(sqid)! + 1);
      this.#onDoorbell(sqid);
    };
  }

  /** CQ head as the host last released it (0 before any head doorbell). */
  get cqHead(): number {
    return this.backend.reg(this.cq.doorbell);
  }

  get cqFull(): boolean {
    return (this.cqTail + 1) % this.cq.entries === this.cqHead;
  }

  /** Post a completion for `cid` of SQ `sqid` now (or hold it while the CQ is full). */
  complete(sqid: number, cid: number, r: FakeResponse = {}): void {
    if (this.cqFull || this.held.length > 0) {
      if (this.cqFull) this.overflows++;
      this.held.push({ sqid, cid, r });
      return;
    }
    this.#post(sqid, cid, r);
  }

  #post(sqid: number, cid: number, r: FakeResponse): void {
    postCqe(this.cq.cqe, this.cqTail, {
      cid,
      phase: this.cqPhase,
      status: r.status ?? 0,
      dw0: r.dw0 ?? 0,
      dw1: r.dw1 ?? 0,
      sqhd: this.sqHeads.get(sqid) ?? 0,
      sqid,
    });
    if (++this.cqTail === this.cq.entries) {
      this.cqTail = 0;
      this.cqPhase ^= 1;
    }
  }

  #flush(): void {
    while (this.held.length > 0 && !this.cqFull) {
      const h = this.held.shift()!;
      this.#post(h.sqid, h.cid, h.r);
    }
  }

  #onDoorbell(sqid: number): void {
    const sq = this.#sqs.get(sqid)!;
    const entries = this.#sqEntries.get(sqid)!;
    const tail = this.backend.reg(sq.doorbell);
    let head = this.sqHeads.get(sqid)!;
    while (head !== tail) {
      const o = head * SQE_DWORDS;
      const sqe = sq.sqe.slice(o, o + SQE_DWORDS);
      const cmd: SeenIoCommand = { cid: sqe[0]! >>> 16, opcode: sqe[0]! & 0xff, sqe, sqid };
      this.seen.push(cmd);
      head = head + 1 === entries ? 0 : head + 1;
      this.sqHeads.set(sqid, head);
      const r = this.responder(cmd);
      if (r) this.complete(sqid, cmd.cid, r);
    }
  }
}
