/**
 * Controller registers (NVMe Base Specification 2.0, 3.1.4 "Controller Properties").
 * Offsets into BAR0 and field decoders. 64-bit registers are read and written as two
 * 32-bit halves by the native layer; here they arrive as (lo, hi).
 *
 * The decoders accept a register value as an unsigned (0..2^32-1) or signed (-2^31..-1, as
 * `x | 0` leaves it) 32-bit integer and throw InvalidArgumentError for anything else (NaN,
 * fractions, values wider than 32 bits): such a value is a bug in the caller, and decoding it
 * bit-wise would quietly yield zeros (CSTS.RDY = 0, CFS = 0) or drop the high bits.
 */
import { InvalidArgumentError } from "../errors.ts";

export const REG_CAP = 0x00; // Controller Capabilities, 64-bit
export const REG_VS = 0x08; // Version
export const REG_INTMS = 0x0c; // Interrupt Mask Set
export const REG_INTMC = 0x10; // Interrupt Mask Clear
export const REG_CC = 0x14; // Controller Configuration
export const REG_CSTS = 0x1c; // Controller Status
export const REG_NSSR = 0x20; // NVM Subsystem Reset
export const REG_AQA = 0x24; // Admin Queue Attributes
export const REG_ASQ = 0x28; // Admin Submission Queue Base Address, 64-bit
export const REG_ACQ = 0x30; // Admin Completion Queue Base Address, 64-bit
export const REG_CMBLOC = 0x38;
export const REG_CMBSZ = 0x3c;
/** Doorbells start at 1000h (3.1.4.22). */
export const REG_DOORBELL_BASE = 0x1000;

/** The smallest BAR0 that holds the registers and the admin doorbells. */
export const BAR0_MIN_SIZE = 0x1008;

// CC fields (3.1.4.5)
export const CC_EN = 1 << 0;
export const CC_CSS_SHIFT = 4; // I/O Command Set Selected, bits 06:04
export const CC_CSS_NVM = 0;
export const CC_MPS_SHIFT = 7; // Memory Page Size, bits 10:07, 2^(12+MPS)
export const CC_AMS_SHIFT = 11; // Arbitration Mechanism Selected, bits 13:11
export const CC_SHN_SHIFT = 14; // Shutdown Notification, bits 15:14
export const CC_SHN_MASK = 3 << CC_SHN_SHIFT;
export const CC_SHN_NORMAL = 1 << CC_SHN_SHIFT;
export const CC_SHN_ABRUPT = 2 << CC_SHN_SHIFT;
export const CC_IOSQES_SHIFT = 16; // I/O Submission Queue Entry Size, bits 19:16, 2^n bytes
export const CC_IOCQES_SHIFT = 20; // I/O Completion Queue Entry Size, bits 23:20

// CSTS fields (3.1.4.6)
export const CSTS_RDY = 1 << 0;
export const CSTS_CFS = 1 << 1; // Controller Fatal Status
export const CSTS_SHST_SHIFT = 2; // Shutdown Status, bits 03:02
export const CSTS_SHST_MASK = 3 << CSTS_SHST_SHIFT;
export const CSTS_SHST_COMPLETE = 2 << CSTS_SHST_SHIFT;
export const CSTS_NSSRO = 1 << 4;
export const CSTS_PP = 1 << 5; // Processing Paused

/** CSTS reads all ones when the device has dropped off the bus (surprise removal, dead link). */
export const REG_ALL_ONES = 0xffffffff;

export interface Capabilities {
  /** Maximum Queue Entries Supported (MQES), 0-based: queues may hold mqes+1 entries. */
  readonly mqes: number;
  /** Contiguous Queues Required (CQR). */
  readonly cqr: boolean;
  /** Arbitration Mechanism Supported (AMS), bits 18:17. */
  readonly ams: number;
  /** Timeout (TO) in 500 ms units: worst case for CSTS.RDY to follow CC.EN. */
  readonly to: number;
  /** Doorbell Stride (DSTRD): doorbells are 4 << dstrd bytes apart. */
  readonly dstrd: number;
  /** NVM Subsystem Reset Supported (NSSRS). */
  readonly nssrs: boolean;
  /** Command Sets Supported (CSS), bits 44:37. */
  readonly css: number;
  /** Boot Partition Support (BPS). */
  readonly bps: boolean;
  /** Memory Page Size Minimum (MPSMIN): 2^(12+mpsmin) bytes. */
  readonly mpsmin: number;
  /** Memory Page Size Maximum (MPSMAX). */
  readonly mpsmax: number;
  readonly pmrs: boolean;
  readonly cmbs: boolean;
  /** CAP.TO in milliseconds. */
  readonly timeoutMs: number;
  /** Smallest and largest page size in bytes. */
  readonly minPageSize: number;
  readonly maxPageSize: number;
  /** Raw register as a bigint, for printing. */
  readonly raw: bigint;
}

/** @internal `v` as an unsigned 32-bit register value, or InvalidArgumentError naming the register. */
function reg32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < -0x8000_0000 || v > 0xffff_ffff) {
    throw new InvalidArgumentError(`${what} value ${v} is not a 32-bit register value (an integer in -2^31..2^32-1)`);
  }
  return v >>> 0;
}

export function decodeCap(lo: number, hi: number): Capabilities {
  lo = reg32(lo, "CAP (offset 00h, low dword)");
  hi = reg32(hi, "CAP (offset 04h, high dword)");
  const to = (lo >>> 24) & 0xff;
  const mpsmin = (hi >>> 16) & 0xf;
  const mpsmax = (hi >>> 20) & 0xf;
  return {
    mqes: lo & 0xffff,
    cqr: ((lo >>> 16) & 1) === 1,
    ams: (lo >>> 17) & 0x3,
    to,
    dstrd: hi & 0xf,
    nssrs: ((hi >>> 4) & 1) === 1,
    css: (hi >>> 5) & 0xff,
    bps: ((hi >>> 13) & 1) === 1,
    mpsmin,
    mpsmax,
    pmrs: ((hi >>> 24) & 1) === 1,
    cmbs: ((hi >>> 25) & 1) === 1,
    timeoutMs: to * 500,
    minPageSize: 2 ** (12 + mpsmin),
    maxPageSize: 2 ** (12 + mpsmax),
    raw: (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0),
  };
}

export interface Version {
  readonly mjr: number;
  readonly mnr: number;
  readonly ter: number;
}

/** VS (3.1.4.2): MJR bits 31:16, MNR 15:08, TER 07:00. Identify Controller's VER uses the same layout. */
export function decodeVersion(vs: number): Version {
  vs = reg32(vs, "VS (offset 08h)");
  return { mjr: (vs >>> 16) & 0xffff, mnr: (vs >>> 8) & 0xff, ter: vs & 0xff };
}

export function formatVersionRegister(vs: number): string {
  const v = decodeVersion(vs);
  return `${v.mjr}.${v.mnr}.${v.ter}`;
}

export interface ControllerConfig {
  readonly en: boolean;
  readonly css: number;
  readonly mps: number;
  readonly ams: number;
  readonly shn: number;
  readonly iosqes: number;
  readonly iocqes: number;
}

export function decodeCc(cc: number): ControllerConfig {
  cc = reg32(cc, "CC (offset 14h)");
  return {
    en: (cc & CC_EN) !== 0,
    css: (cc >>> CC_CSS_SHIFT) & 0x7,
    mps: (cc >>> CC_MPS_SHIFT) & 0xf,
    ams: (cc >>> CC_AMS_SHIFT) & 0x7,
    shn: (cc >>> CC_SHN_SHIFT) & 0x3,
    iosqes: (cc >>> CC_IOSQES_SHIFT) & 0xf,
    iocqes: (cc >>> CC_IOCQES_SHIFT) & 0xf,
  };
}

export function encodeCc(c: Omit<ControllerConfig, "en" | "shn"> & { en?: boolean; shn?: number }): number {
  return (
    ((c.en ? CC_EN : 0) |
      (c.css << CC_CSS_SHIFT) |
      (c.mps << CC_MPS_SHIFT) |
      (c.ams << CC_AMS_SHIFT) |
      ((c.shn ?? 0) << CC_SHN_SHIFT) |
      (c.iosqes << CC_IOSQES_SHIFT) |
      (c.iocqes << CC_IOCQES_SHIFT)) >>>
    0
  );
}

export interface ControllerStatus {
  readonly rdy: boolean;
  readonly cfs: boolean;
  readonly shst: number;
  readonly nssro: boolean;
  readonly pp: boolean;
}

export function decodeCsts(csts: number): ControllerStatus {
  csts = reg32(csts, "CSTS (offset 1Ch)");
  return {
    rdy: (csts & CSTS_RDY) !== 0,
    cfs: (csts & CSTS_CFS) !== 0,
    shst: (csts & CSTS_SHST_MASK) >>> CSTS_SHST_SHIFT,
    nssro: (csts & CSTS_NSSRO) !== 0,
    pp: (csts & CSTS_PP) !== 0,
  };
}

/**
 * AQA (3.1.4.8): Admin Submission Queue Size (ASQS) bits 11:00 and Admin Completion Queue
 * Size (ACQS) bits 27:16, both 0-based. (The C original swapped the halves.)
 */
export function encodeAqa(asqEntries: number, acqEntries: number): number {
  return ((((acqEntries - 1) & 0xfff) << 16) | ((asqEntries - 1) & 0xfff)) >>> 0;
}

export function decodeAqa(aqa: number): { asqs: number; acqs: number } {
  aqa = reg32(aqa, "AQA (offset 24h)");
  return { asqs: (aqa & 0xfff) + 1, acqs: ((aqa >>> 16) & 0xfff) + 1 };
}

/** Admin queues hold at most 4096 entries (AQA fields are 12 bits). */
export const ADMIN_QUEUE_MAX_ENTRIES = 4096;

/** Offset of Submission Queue y Tail Doorbell (3.1.4.22): 1000h + (2y × (4 << CAP.DSTRD)). */
export function sqTailDoorbell(qid: number, dstrd: number): number {
  return REG_DOORBELL_BASE + 2 * qid * (4 << dstrd);
}

/** Offset of Completion Queue y Head Doorbell: 1000h + ((2y + 1) × (4 << CAP.DSTRD)). */
export function cqHeadDoorbell(qid: number, dstrd: number): number {
  return REG_DOORBELL_BASE + (2 * qid + 1) * (4 << dstrd);
}
