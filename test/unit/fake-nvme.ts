/**
 * A whole NVMe controller in TypeScript, behind a FakeBackend, for Controller-level unit tests:
 * registers (CAP, VS, CC, CSTS, AQA, ASQ, ACQ), the admin queue (Identify, Features, Create and
 * Delete I/O queues, Abort, Get Log Page) and NVM Read/Write/Flush that move data by the PRPs of
 * each command, through bus addresses resolved against the backend's live mappings.
 *
 * It runs synchronously inside the register and doorbell writes: install() wraps native()'s
 * nvm_read32 / nvm_write32 / nvm_write64 / nvm_doorbell for this backend's BAR0 (in this thread),
 * so Controller.open's spins and QueuePair.execute() see answers at once. pump() serves doorbells
 * written by other threads (a Worker writes the fake BAR0's memory directly).
 *
 * What tests script: commands held without completion (`hold`), whether Abort ends a held
 * command, a controller that ignores CC.EN = 0, one that is gone (registers all ones), CSTS.CFS.
 * What tests observe: every DMA the controller made to a bus address no live mapping backs
 * (`dmaViolations`: memory the application no longer owns), every command fetched (`fetched`).
 * A held command moves its data only when it completes (completeHeld()): a late DMA.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { native, type NativeLib } from "../../lib/native.ts";
import {
  encodeStatus,
  SC_ABORT_REQUESTED,
  SC_INVALID_FIELD,
  SC_INVALID_FORMAT,
  SC_INVALID_NAMESPACE,
  SC_INVALID_OPCODE,
  SC_LBA_OUT_OF_RANGE,
  SC_SQ_DELETION,
  SCT_COMMAND_SPECIFIC,
  SCT_GENERIC,
} from "../../lib/spec/status.ts";
import { FakeBackend } from "./fake-backend.ts";

const PAGE = 4096;
const TWO32 = 0x1_0000_0000;
const REG_CAP = 0x00;
const REG_VS = 0x08;
const REG_CC = 0x14;
const REG_CSTS = 0x1c;
const REG_AQA = 0x24;
const REG_ASQ = 0x28;
const REG_ACQ = 0x30;
const DOORBELLS = 0x1000;

export const ST_ABORT_REQUESTED = encodeStatus({ sct: SCT_GENERIC, sc: SC_ABORT_REQUESTED });
const ST_SQ_DELETION = encodeStatus({ sct: SCT_GENERIC, sc: SC_SQ_DELETION });
const ST_INVALID_OPCODE = encodeStatus({ sct: SCT_GENERIC, sc: SC_INVALID_OPCODE, dnr: true });
const ST_INVALID_FIELD = encodeStatus({ sct: SCT_GENERIC, sc: SC_INVALID_FIELD, dnr: true });
const ST_INVALID_NS = encodeStatus({ sct: SCT_GENERIC, sc: SC_INVALID_NAMESPACE, dnr: true });
const ST_LBA_RANGE = encodeStatus({ sct: SCT_GENERIC, sc: SC_LBA_OUT_OF_RANGE, dnr: true });
const ST_INVALID_FORMAT = encodeStatus({ sct: SCT_COMMAND_SPECIFIC, sc: SC_INVALID_FORMAT, dnr: true });
/** Features the fake keeps a value of (Get/Set Features); any other FID is Invalid Field in Command. */
const FEATURES = new Set([0x01, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0e]);
const FID_TIMESTAMP = 0x0e;

export interface FakeNamespace {
  readonly nsid: number;
  readonly blocks: number;
  /** LBA data size as a power of two (9: 512 bytes). */
  readonly lbads: number;
  /** Metadata bytes per block (LBA format MS); with `extended`, interleaved with the data. */
  readonly ms?: number;
  readonly extended?: boolean;
  /** End-to-end Data Protection Type Settings (DPS). */
  readonly dps?: number;
  /**
   * LBA formats Format NVM may pick (Identify Namespace LBAF0..NLBAF); the one in use is the
   * first with this `lbads` and `ms`. Defaults to that one format alone.
   */
  readonly formats?: readonly { readonly lbads: number; readonly ms?: number }[];
}

/** A namespace as it is now: Format NVM changes its format, size and data. */
interface NamespaceState {
  readonly nsid: number;
  /** Capacity in bytes, kept across formats. */
  readonly bytes: number;
  readonly formats: readonly { readonly lbads: number; readonly ms: number }[];
  blocks: number;
  lbads: number;
  ms: number;
  extended: boolean;
  dps: number;
  /** Index of the format in use. */
  format: number;
}

export interface FakeNvmeOptions {
  readonly namespaces?: readonly FakeNamespace[];
  /** MDTS (Identify Controller byte 77). Defaults to 5 (128 KiB). */
  readonly mdts?: number;
  /** CAP.MQES (0's based). Defaults to 255. */
  readonly mqes?: number;
}

interface Queue {
  readonly qid: number;
  readonly base: number;
  readonly entries: number;
}
interface Sq extends Queue {
  readonly cqid: number;
  head: number;
  tail: number;
}
interface Cq extends Queue {
  tail: number;
  phase: number;
}

export interface Fetched {
  readonly sqid: number;
  readonly cid: number;
  readonly opcode: number;
  readonly sqe: Uint32Array;
}

/** What the fake does with a command: complete now, or hold it (no completion, no data moved). */
export type Holder = (c: Fetched) => boolean;

type Patched = Pick<NativeLib, "nvm_read32" | "nvm_write32" | "nvm_write64" | "nvm_doorbell">;

export class FakeNvme {
  readonly backend = new FakeBackend();
  readonly fetched: Fetched[] = [];
  readonly dmaViolations: string[] = [];
  /** Commands held without completion, in fetch order. */
  readonly held: Fetched[] = [];
  /** Which commands to hold. Defaults to none. */
  hold: Holder = () => false;
  /** Abort ends a held command with Command Abort Requested (else it reports "not aborted"). */
  abortEnds = true;
  /** CC.EN = 0 leaves CSTS.RDY set: a controller that cannot be disabled. */
  stuckEnabled = false;
  /** Every register reads all ones: the device fell off the bus. */
  gone = false;
  /** Doorbell writes for queues that do not exist (ignored, as a controller does). */
  invalidDoorbells = 0;
  /**
   * Memory of other processes (or threads) the controller may reach: the host address of the page
   * at bus address `page`, or undefined. For clients of a shared controller (test/unit/share).
   */
  foreign: ((page: number) => number | undefined) | null = null;
  /** Times CC.EN went from 1 to 0 with the controller obeying. */
  disables = 0;
  readonly media = new Map<number, Uint8Array>();
  readonly namespaces: readonly FakeNamespace[];
  /** Identify Namespace FPI (Format Progress Indicator) every namespace reports. Defaults to 0. */
  fpi = 0;
  /** Feature values by FID (Set Features CDW11), and the Timestamp feature's 8 bytes. */
  readonly features = new Map<number, number>([[0x06, 1]]);
  timestamp = new Uint8Array(8);
  /** Format NVM commands completed, as [nsid, LBAF, SES]. */
  readonly formats: [number, number, number][] = [];
  readonly #state = new Map<number, NamespaceState>();
  readonly #mdts: number;
  readonly #mqes: number;
  #sqs = new Map<number, Sq>();
  #cqs = new Map<number, Cq>();
  #saved: Patched | undefined;

  constructor(opts: FakeNvmeOptions = {}) {
    this.namespaces = opts.namespaces ?? [{ nsid: 1, blocks: 2048, lbads: 9 }];
    for (const ns of this.namespaces) {
      const ms = ns.ms ?? 0;
      const formats = (ns.formats ?? [{ lbads: ns.lbads, ms }]).map((f) => ({ lbads: f.lbads, ms: f.ms ?? 0 }));
      const format = formats.findIndex((f) => f.lbads === ns.lbads && f.ms === ms);
      if (format < 0) throw new Error(`fake namespace ${ns.nsid}: its format is not among its formats`);
      this.#state.set(ns.nsid, { nsid: ns.nsid, bytes: ns.blocks << ns.lbads, formats, blocks: ns.blocks, lbads: ns.lbads, ms, extended: ns.extended ?? false, dps: ns.dps ?? 0, format });
      this.media.set(ns.nsid, new Uint8Array(ns.blocks << ns.lbads));
    }
    this.#mdts = opts.mdts ?? 5;
    this.#mqes = opts.mqes ?? 255;
    // CAP: MQES, CQR, TO = 1 (500 ms), DSTRD 0, CSS bit 0 (NVM), MPSMIN 0, MPSMAX 0.
    this.backend.setReg(REG_CAP, this.#mqes | (1 << 16) | (1 << 24));
    this.backend.setReg(REG_CAP + 4, 1 << 5);
    this.backend.setReg(REG_VS, 0x0001_0400);
  }

  /** Serve this backend's registers from native() in this thread until uninstall(). */
  install(): this {
    const n = native() as unknown as Patched & Record<string, unknown>;
    const saved: Patched = { nvm_read32: n.nvm_read32, nvm_write32: n.nvm_write32, nvm_write64: n.nvm_write64, nvm_doorbell: n.nvm_doorbell };
    this.#saved = saved;
    const bar = Number(this.backend.bar0);
    n.nvm_read32 = (base: Pointer, off: number) => (Number(base) === bar ? this.read32(off) : saved.nvm_read32(base, off));
    n.nvm_write32 = (base: Pointer, off: number, v: number) => (Number(base) === bar ? this.write32(off, v) : saved.nvm_write32(base, off, v));
    n.nvm_write64 = (base: Pointer, off: number, lo: number, hi: number) => {
      if (Number(base) !== bar) return saved.nvm_write64(base, off, lo, hi);
      this.write32(off, lo);
      this.write32(off + 4, hi);
    };
    n.nvm_doorbell = (base: Pointer, off: number, v: number) => (Number(base) === bar ? this.write32(off, v) : saved.nvm_doorbell(base, off, v));
    return this;
  }

  uninstall(): void {
    if (!this.#saved) return;
    Object.assign(native() as unknown as Patched, this.#saved);
    this.#saved = undefined;
  }

  [Symbol.dispose](): void {
    this.uninstall();
  }

  read32(off: number): number {
    if (this.gone) return 0xffffffff;
    // A controller that is no longer stuck finishes a disable it was asked for earlier.
    if (off === REG_CSTS && !this.stuckEnabled && (this.backend.reg(REG_CC) & 1) === 0 && (this.backend.reg(REG_CSTS) & 1) === 1) this.#disabled();
    return this.backend.reg(off);
  }

  write32(off: number, v: number): void {
    if (this.gone) return;
    v >>>= 0;
    if (off === REG_CC) return this.#writeCc(v);
    this.backend.setReg(off, v);
    if (off >= DOORBELLS) this.#doorbell(off, v);
  }

  /** Serve doorbells written straight into BAR0's memory (by another thread). */
  pump(): void {
    if (this.gone) return;
    for (const sq of this.#sqs.values()) {
      const tail = this.backend.reg(DOORBELLS + 8 * sq.qid);
      if (tail !== sq.tail && tail < sq.entries) {
        sq.tail = tail;
        this.#fetch(sq);
      }
    }
  }

  // ---- registers -------------------------------------------------------------------------

  #writeCc(v: number): void {
    const before = this.backend.reg(REG_CC);
    this.backend.setReg(REG_CC, v);
    const csts = this.backend.reg(REG_CSTS);
    if (v & 1 && !(before & 1)) {
      const aqa = this.backend.reg(REG_AQA);
      const asq = this.#reg64(REG_ASQ);
      const acq = this.#reg64(REG_ACQ);
      this.#cqs = new Map([[0, { qid: 0, base: acq, entries: ((aqa >>> 16) & 0xfff) + 1, tail: 0, phase: 1 }]]);
      this.#sqs = new Map([[0, { qid: 0, base: asq, entries: (aqa & 0xfff) + 1, cqid: 0, head: 0, tail: 0 }]]);
      this.backend.setReg(REG_CSTS, csts | 1);
    } else if (!(v & 1) && before & 1) {
      if (!this.stuckEnabled) this.#disabled();
    } else if ((v >>> 14) & 3) {
      this.backend.setReg(REG_CSTS, (csts & ~(3 << 2)) | (2 << 2)); // SHST: shutdown complete
    }
  }

  /** Disabled: every queue is gone and nothing held will ever complete or move data. */
  #disabled(): void {
    this.disables++;
    this.#sqs.clear();
    this.#cqs.clear();
    this.held.length = 0;
    this.backend.setReg(REG_CSTS, this.backend.reg(REG_CSTS) & ~1 & ~(3 << 2));
  }

  #reg64(off: number): number {
    return this.backend.reg(off) + this.backend.reg(off + 4) * TWO32;
  }

  #doorbell(off: number, v: number): void {
    const idx = (off - DOORBELLS) / 4;
    const qid = idx >>> 1;
    if (idx % 2 === 0) {
      const sq = this.#sqs.get(qid);
      if (!sq || v >= sq.entries) {
        this.invalidDoorbells++;
        return;
      }
      sq.tail = v;
      this.#fetch(sq);
    } else if (!this.#cqs.has(qid)) this.invalidDoorbells++;
  }

  // ---- memory ------------------------------------------------------------------------------

  /** `len` bytes at bus address `bus` (within one page), or undefined (and a violation) when no live mapping backs it. */
  #at(bus: number, len: number, why: string): Uint8Array | undefined {
    const inPage = bus % PAGE;
    const page = bus - inPage;
    for (const m of this.backend.live) {
      for (let i = 0; i < m.iova.length / 2; i++) {
        if (m.iova[2 * i]! + m.iova[2 * i + 1]! * TWO32 === page) {
          return new Uint8Array(toArrayBuffer(m.backing, i * PAGE + inPage, len));
        }
      }
    }
    const other = this.foreign?.(page);
    if (other !== undefined) return new Uint8Array(toArrayBuffer(other as Pointer, inPage, len));
    this.dmaViolations.push(`${why}: bus 0x${bus.toString(16)} is not mapped`);
    return undefined;
  }

  #u32(bus: number, dwords: number, why: string): Uint32Array | undefined {
    const b = this.#at(bus, dwords * 4, why);
    return b ? new Uint32Array(b.buffer, b.byteOffset, dwords) : undefined;
  }

  /** (bus, length) pieces of a PRP-described transfer of `bytes`. */
  #prps(sqe: Uint32Array, bytes: number): [number, number][] | undefined {
    const prp1 = sqe[6]! + sqe[7]! * TWO32;
    const prp2 = sqe[8]! + sqe[9]! * TWO32;
    const first = Math.min(bytes, PAGE - (prp1 % PAGE));
    const out: [number, number][] = [[prp1, first]];
    let left = bytes - first;
    if (left === 0) return out;
    if (left <= PAGE) return [...out, [prp2, left]];
    let list = prp2;
    while (left > 0) {
      const entries = (PAGE - (list % PAGE)) / 8;
      const l = this.#u32(list, entries * 2, "PRP list");
      if (!l) return undefined;
      for (let i = 0; i < entries && left > 0; i++) {
        const e = l[2 * i]! + l[2 * i + 1]! * TWO32;
        if (i === entries - 1 && left > PAGE) {
          list = e;
          break;
        }
        out.push([e, Math.min(left, PAGE)]);
        left -= Math.min(left, PAGE);
      }
    }
    return out;
  }

  // ---- commands ----------------------------------------------------------------------------

  #fetch(sq: Sq): void {
    while (sq.head !== sq.tail) {
      const sqe = this.#u32(sq.base + sq.head * 64, 16, `SQ ${sq.qid} entry`);
      sq.head = (sq.head + 1) % sq.entries;
      if (!sqe) continue;
      const c: Fetched = { sqid: sq.qid, cid: sqe[0]! >>> 16, opcode: sqe[0]! & 0xff, sqe: sqe.slice() };
      this.fetched.push(c);
      if (this.hold(c)) {
        this.held.push(c);
        continue;
      }
      const { status, dw0 } = sq.qid === 0 ? this.#admin(c) : this.#io(c);
      this.#post(sq, c.cid, status, dw0);
    }
  }

  #post(sq: Sq, cid: number, status: number, dw0: number): void {
    const cq = this.#cqs.get(sq.cqid);
    if (!cq) return;
    const e = this.#u32(cq.base + cq.tail * 16, 4, `CQ ${cq.qid} entry`);
    if (e) {
      e[0] = dw0 >>> 0;
      e[1] = 0;
      e[2] = sq.head | (sq.qid << 16);
      e[3] = (cid | (cq.phase << 16) | (status << 17)) >>> 0;
    }
    if (++cq.tail === cq.entries) {
      cq.tail = 0;
      cq.phase ^= 1;
    }
  }

  /** Complete held commands (all, or those `which` picks): their data moves now. */
  completeHeld(which: (c: Fetched) => boolean = () => true, status?: number): number {
    let n = 0;
    for (const c of [...this.held]) {
      if (!which(c)) continue;
      this.held.splice(this.held.indexOf(c), 1);
      const sq = this.#sqs.get(c.sqid);
      if (!sq) continue;
      const r = status === undefined ? (c.sqid === 0 ? this.#admin(c) : this.#io(c)) : { status, dw0: 0 };
      this.#post(sq, c.cid, r.status, r.dw0);
      n++;
    }
    return n;
  }

  /** Whether an I/O queue exists on the controller now. */
  hasSq(qid: number): boolean {
    return this.#sqs.has(qid);
  }

  #ns(nsid: number): NamespaceState | undefined {
    return this.#state.get(nsid);
  }

  /** The namespace's LBA data size now (after any Format NVM). */
  lbaSize(nsid: number): number {
    return 1 << this.#state.get(nsid)!.lbads;
  }

  /**
   * Format NVM: LBAF from CDW10 3:0 and 13:12, MSET bit 4, SES 11:9. The capacity in bytes stays,
   * so the block count follows the new LBA size; the data is zeros afterwards.
   */
  #format(s: Uint32Array): { status: number; dw0: number } {
    const lbaf = (s[10]! & 0xf) | (((s[10]! >>> 12) & 3) << 4);
    const targets = s[1] === 0xffffffff ? [...this.#state.values()] : [this.#ns(s[1]!)];
    if (targets.some((t) => t === undefined)) return { status: ST_INVALID_NS, dw0: 0 };
    for (const t of targets as NamespaceState[]) {
      const f = t.formats[lbaf];
      if (!f) return { status: ST_INVALID_FORMAT, dw0: 0 };
      t.format = lbaf;
      t.lbads = f.lbads;
      t.ms = f.ms;
      t.extended = ((s[10]! >>> 4) & 1) === 1;
      t.dps = (s[10]! >>> 5) & 7;
      t.blocks = Math.floor(t.bytes / ((1 << f.lbads) + f.ms));
      this.media.set(t.nsid, new Uint8Array(t.blocks << t.lbads));
      this.formats.push([t.nsid, lbaf, (s[10]! >>> 9) & 7]);
    }
    return { status: 0, dw0: 0 };
  }

  #features(c: Fetched): { status: number; dw0: number } {
    const s = c.sqe;
    const fid = s[10]! & 0xff;
    if (!FEATURES.has(fid)) return { status: ST_INVALID_FIELD, dw0: 0 };
    if (fid === 0x07) return { status: 0, dw0: 63 | (63 << 16) };
    if (fid === FID_TIMESTAMP) {
      const data = this.#at(s[6]! + s[7]! * TWO32, 8, "Timestamp data");
      if (!data) return { status: 0, dw0: 0 };
      if (c.opcode === 0x09) this.timestamp = data.slice();
      else data.set(this.timestamp);
      return { status: 0, dw0: 0 };
    }
    if (c.opcode === 0x09) this.features.set(fid, s[11]!);
    return { status: 0, dw0: this.features.get(fid) ?? 0 };
  }

  #admin(c: Fetched): { status: number; dw0: number } {
    const s = c.sqe;
    const ok = { status: 0, dw0: 0 };
    switch (c.opcode) {
      case 0x06: {
        const cns = s[10]! & 0xff;
        const page = this.#at(s[6]! + s[7]! * TWO32, PAGE, "Identify data");
        if (!page) return ok;
        page.fill(0);
        const v = new DataView(page.buffer, page.byteOffset, PAGE);
        if (cns === 1) {
          v.setUint16(0, 0x1b36, true);
          page.set(new TextEncoder().encode("FAKE0001".padEnd(20)), 4);
          page.set(new TextEncoder().encode("libnvm fake controller".padEnd(40)), 24);
          page.set(new TextEncoder().encode("1.0".padEnd(8)), 64);
          page[77] = this.#mdts;
          v.setUint32(80, 0x0001_0400, true);
          page[258] = 3; // ACL
          page[512] = 0x66; // SQES
          page[513] = 0x44; // CQES
          v.setUint32(516, Math.max(...this.namespaces.map((n) => n.nsid), 1), true); // NN
          page[525] = 1; // VWC
        } else if (cns === 0) {
          const ns = this.#ns(s[1]!);
          if (ns) {
            v.setBigUint64(0, BigInt(ns.blocks), true);
            v.setBigUint64(8, BigInt(ns.blocks), true);
            v.setBigUint64(16, BigInt(ns.blocks), true);
            page[25] = ns.formats.length - 1; // NLBAF
            page[26] = (ns.format & 0xf) | ((ns.format >>> 4) << 5) | (ns.extended ? 0x10 : 0); // FLBAS
            page[29] = ns.dps;
            page[32] = this.fpi;
            ns.formats.forEach((f, i) => v.setUint32(128 + 4 * i, f.ms | (f.lbads << 16), true));
          }
        } else if (cns === 2) {
          this.namespaces.map((n) => n.nsid).sort((a, b) => a - b).forEach((id, i) => v.setUint32(4 * i, id, true));
        }
        return ok;
      }
      case 0x09: // Set Features
      case 0x0a: // Get Features
        return this.#features(c);
      case 0x80:
        return this.#format(s);
      case 0x05: {
        const qid = s[10]! & 0xffff;
        this.#cqs.set(qid, { qid, base: s[6]! + s[7]! * TWO32, entries: (s[10]! >>> 16) + 1, tail: 0, phase: 1 });
        return ok;
      }
      case 0x01: {
        const qid = s[10]! & 0xffff;
        // A doorbell is a write, not a value: what the register memory held before does not count.
        this.backend.setReg(DOORBELLS + 8 * qid, 0);
        this.#sqs.set(qid, { qid, base: s[6]! + s[7]! * TWO32, entries: (s[10]! >>> 16) + 1, cqid: s[11]! >>> 16, head: 0, tail: 0 });
        return ok;
      }
      case 0x00: {
        // Delete I/O SQ: what is outstanding on it completes as aborted first (no data moved).
        const qid = s[10]! & 0xffff;
        const sq = this.#sqs.get(qid);
        if (!sq) return { status: ST_INVALID_FIELD, dw0: 0 };
        for (const h of this.held.filter((x) => x.sqid === qid)) {
          this.held.splice(this.held.indexOf(h), 1);
          this.#post(sq, h.cid, ST_SQ_DELETION, 0);
        }
        this.#sqs.delete(qid);
        return ok;
      }
      case 0x04:
        this.#cqs.delete(s[10]! & 0xffff);
        return ok;
      case 0x08: {
        const sqid = s[10]! & 0xffff;
        const cid = s[10]! >>> 16;
        const h = this.held.find((x) => x.sqid === sqid && x.cid === cid);
        if (!h || !this.abortEnds) return { status: 0, dw0: 1 }; // not aborted
        this.held.splice(this.held.indexOf(h), 1);
        this.#post(this.#sqs.get(sqid)!, cid, ST_ABORT_REQUESTED, 0);
        return ok;
      }
      case 0x02: {
        const bytes = ((s[10]! >>> 16) + 1) * 4;
        for (const [bus, len] of this.#prps(s, bytes) ?? []) this.#at(bus, len, "log page")?.fill(0);
        return ok;
      }
      default:
        return { status: ST_INVALID_OPCODE, dw0: 0 };
    }
  }

  #io(c: Fetched): { status: number; dw0: number } {
    const s = c.sqe;
    if (c.opcode === 0x00) return { status: 0, dw0: 0 }; // Flush
    if (c.opcode !== 0x01 && c.opcode !== 0x02) return { status: ST_INVALID_OPCODE, dw0: 0 };
    const ns = this.#ns(s[1]!);
    if (!ns) return { status: ST_INVALID_NS, dw0: 0 };
    const slba = s[10]! + s[11]! * TWO32;
    const nlb = (s[12]! & 0xffff) + 1;
    if (slba + nlb > ns.blocks) return { status: ST_LBA_RANGE, dw0: 0 };
    const media = this.media.get(ns.nsid)!;
    let at = slba << ns.lbads;
    for (const [bus, len] of this.#prps(s, nlb << ns.lbads) ?? []) {
      const host = this.#at(bus, len, c.opcode === 0x02 ? "read data" : "write data");
      if (host) {
        if (c.opcode === 0x02) host.set(media.subarray(at, at + len));
        else media.set(host, at);
      }
      at += len;
    }
    return { status: 0, dw0: 0 };
  }
}
