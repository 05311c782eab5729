/**
 * Submission and completion queue entries (NVMe Base Specification 2.0, 4.2 and 4.6) and the
 * opcodes of the admin and NVM command sets. Writers fill an SQE in place: `sq` is a Uint32Array
 * over the queue's DMA memory and `o` the dword offset of the slot (slot × 16). They write all
 * 16 dwords, so nothing of the slot's previous command survives.
 */
import { InvalidArgumentError } from "../errors.ts";
import { getLogPageCdws } from "./log.ts";

export const SQE_SIZE = 64;
export const CQE_SIZE = 16;
export const SQE_DWORDS = 16;
export const CQE_DWORDS = 4;
/** log2 of the entry sizes, for CC.IOSQES / CC.IOCQES. */
export const SQE_SIZE_LOG2 = 6;
export const CQE_SIZE_LOG2 = 4;

// Admin command set opcodes (Figure "Opcodes for Admin Commands")
export const ADMIN_DELETE_IO_SQ = 0x00;
export const ADMIN_CREATE_IO_SQ = 0x01;
export const ADMIN_GET_LOG_PAGE = 0x02;
export const ADMIN_DELETE_IO_CQ = 0x04;
export const ADMIN_CREATE_IO_CQ = 0x05;
export const ADMIN_IDENTIFY = 0x06;
export const ADMIN_ABORT = 0x08;
export const ADMIN_SET_FEATURES = 0x09;
export const ADMIN_GET_FEATURES = 0x0a;
export const ADMIN_ASYNC_EVENT_REQUEST = 0x0c;
export const ADMIN_NAMESPACE_MANAGEMENT = 0x0d;
export const ADMIN_FIRMWARE_COMMIT = 0x10;
export const ADMIN_FIRMWARE_DOWNLOAD = 0x11;
export const ADMIN_KEEP_ALIVE = 0x18;
export const ADMIN_FORMAT_NVM = 0x80;

// NVM command set opcodes
export const NVM_FLUSH = 0x00;
export const NVM_WRITE = 0x01;
export const NVM_READ = 0x02;
export const NVM_WRITE_UNCORRECTABLE = 0x04;
export const NVM_COMPARE = 0x05;
export const NVM_WRITE_ZEROES = 0x08;
export const NVM_DATASET_MANAGEMENT = 0x09;

// Identify CNS values (CDW10 bits 07:00)
export const CNS_NAMESPACE = 0x00;
export const CNS_CONTROLLER = 0x01;
export const CNS_ACTIVE_NAMESPACES = 0x02;
export const CNS_NS_DESCRIPTORS = 0x03;
/** Allocated Namespace ID list (Namespace Management): active and inactive NSIDs alike. */
export const CNS_ALLOCATED_NAMESPACES = 0x10;

// Feature identifiers (Get/Set Features CDW10 bits 07:00)
export const FID_ARBITRATION = 0x01;
export const FID_POWER_MANAGEMENT = 0x02;
export const FID_LBA_RANGE_TYPE = 0x03;
export const FID_TEMPERATURE_THRESHOLD = 0x04;
export const FID_ERROR_RECOVERY = 0x05;
export const FID_VOLATILE_WRITE_CACHE = 0x06;
export const FID_NUMBER_OF_QUEUES = 0x07;
export const FID_INTERRUPT_COALESCING = 0x08;
export const FID_INTERRUPT_VECTOR_CONFIG = 0x09;
export const FID_WRITE_ATOMICITY_NORMAL = 0x0a;
export const FID_ASYNC_EVENT_CONFIG = 0x0b;
export const FID_AUTONOMOUS_POWER_STATE = 0x0c;
export const FID_HOST_MEMORY_BUFFER = 0x0d;
export const FID_TIMESTAMP = 0x0e;
export const FID_KEEP_ALIVE_TIMER = 0x0f;
export const FID_HOST_THERMAL_MANAGEMENT = 0x10;
export const FID_NON_OPERATIONAL_POWER_STATE = 0x11;

/** Feature names as the specification's "Feature Identifiers" figure prints them (Base 2.0, 5.27.1). */
const featureNames: Record<number, string> = {
  [FID_ARBITRATION]: "Arbitration",
  [FID_POWER_MANAGEMENT]: "Power Management",
  [FID_LBA_RANGE_TYPE]: "LBA Range Type",
  [FID_TEMPERATURE_THRESHOLD]: "Temperature Threshold",
  [FID_ERROR_RECOVERY]: "Error Recovery",
  [FID_VOLATILE_WRITE_CACHE]: "Volatile Write Cache",
  [FID_NUMBER_OF_QUEUES]: "Number of Queues",
  [FID_INTERRUPT_COALESCING]: "Interrupt Coalescing",
  [FID_INTERRUPT_VECTOR_CONFIG]: "Interrupt Vector Configuration",
  [FID_WRITE_ATOMICITY_NORMAL]: "Write Atomicity Normal",
  [FID_ASYNC_EVENT_CONFIG]: "Asynchronous Event Configuration",
  [FID_AUTONOMOUS_POWER_STATE]: "Autonomous Power State Transition",
  [FID_HOST_MEMORY_BUFFER]: "Host Memory Buffer",
  [FID_TIMESTAMP]: "Timestamp",
  [FID_KEEP_ALIVE_TIMER]: "Keep Alive Timer",
  [FID_HOST_THERMAL_MANAGEMENT]: "Host Controlled Thermal Management",
  [FID_NON_OPERATIONAL_POWER_STATE]: "Non-Operational Power State Config",
  0x12: "Read Recovery Level Config",
  0x13: "Predictable Latency Mode Config",
  0x14: "Predictable Latency Mode Window",
  0x16: "Host Behavior Support",
  0x17: "Sanitize Config",
  0x18: "Endurance Group Event Configuration",
  0x19: "I/O Command Set Profile",
  0x1a: "Spinup Control",
  0x7d: "Enhanced Controller Metadata",
  0x7e: "Controller Metadata",
  0x7f: "Namespace Metadata",
  0x80: "Software Progress Marker",
  0x81: "Host Identifier",
  0x82: "Reservation Notification Mask",
  0x83: "Reservation Persistence",
  0x84: "Namespace Write Protection Config",
};

/** The specification's name of Feature Identifier `fid`, or "Vendor Specific" / "Reserved". */
export function featureName(fid: number): string {
  return featureNames[fid] ?? (fid >= 0xc0 && fid <= 0xff ? "Vendor Specific" : "Reserved");
}

/** Get Features Select (SEL), CDW10 bits 10:08. */
export const SEL_CURRENT = 0;
export const SEL_DEFAULT = 1;
export const SEL_SAVED = 2;
export const SEL_SUPPORTED_CAPABILITIES = 3;

/** CID 0xFFFF is reserved: error log entries use it to mean "no command" (Get Log Page, Error Information). */
export const CID_MAX = 0xfffe;

/** An admin or I/O command as plain values, for the paths where an object per command is fine. */
export interface Command {
  /** Opcode (CDW0 bits 07:00). */
  readonly opcode: number;
  readonly nsid?: number;
  /** PRP Entry 1 / 2 as byte addresses (bus addresses fit in 53 bits). */
  readonly prp1?: number;
  readonly prp2?: number;
  readonly cdw10?: number;
  readonly cdw11?: number;
  readonly cdw12?: number;
  readonly cdw13?: number;
  readonly cdw14?: number;
  readonly cdw15?: number;
}

const TWO32 = 0x1_0000_0000;
// ToUint32 keeps the low 32 bits of any integer below 2^53 and, unlike `% 2^32`, compiles to
// integer instructions; the high half is then an exact division.
export const lo32 = (v: number): number => v >>> 0;
export const hi32 = (v: number): number => ((v - (v >>> 0)) / TWO32) >>> 0;

/**
 * Fill the SQ slot at dword offset `o`: every dword, so nothing of the slot's previous command
 * survives. Numbers only, no objects: this is the hot path's writer. CDW0 gets OPC 07:00,
 * FUSE 09:08 = 0 (normal), PSDT 15:14 = 0 (PRPs) and CID 31:16; MPTR is 0.
 */
export function writeSqe(
  sq: Uint32Array,
  o: number,
  opcode: number,
  cid: number,
  nsid: number,
  prp1: number,
  prp2: number,
  cdw10: number,
  cdw11: number,
  cdw12: number,
  cdw13?: number,
  cdw14?: number,
  cdw15?: number,
): void {
  // Three parts, each small enough for the JIT to inline (so the whole writer inlines into the
  // caller's loop); optional rather than defaulted arguments, as default values make JSC copy
  // every argument on each call.
  writeSqeHeader(sq, o, opcode, cid, nsid);
  writeSqePrps(sq, o, prp1, prp2);
  writeSqeCdws(sq, o, cdw10, cdw11, cdw12, cdw13, cdw14, cdw15);
}

/** CDW0 (OPC, FUSE 0, PSDT 0, CID), NSID and MPTR 0. */
function writeSqeHeader(sq: Uint32Array, o: number, opcode: number, cid: number, nsid: number): void {
  sq[o] = ((opcode & 0xff) | (cid << 16)) >>> 0;
  sq[o + 1] = nsid >>> 0;
  sq[o + 2] = 0;
  sq[o + 3] = 0;
  sq[o + 4] = 0;
  sq[o + 5] = 0;
}

/** DPTR as PRP1/PRP2 (lo32/hi32 written out: the calls would push this past the inlining limit). */
function writeSqePrps(sq: Uint32Array, o: number, prp1: number, prp2: number): void {
  sq[o + 6] = prp1 >>> 0;
  sq[o + 7] = (prp1 - (prp1 >>> 0)) / 0x1_0000_0000;
  sq[o + 8] = prp2 >>> 0;
  sq[o + 9] = (prp2 - (prp2 >>> 0)) / 0x1_0000_0000;
}

/** CDW10-15; an omitted dword is 0 (ToUint32(undefined) is 0). */
function writeSqeCdws(sq: Uint32Array, o: number, cdw10: number, cdw11: number, cdw12: number, cdw13?: number, cdw14?: number, cdw15?: number): void {
  sq[o + 10] = cdw10 >>> 0;
  sq[o + 11] = cdw11 >>> 0;
  sq[o + 12] = cdw12 >>> 0;
  sq[o + 13] = (cdw13 as number) >>> 0;
  sq[o + 14] = (cdw14 as number) >>> 0;
  sq[o + 15] = (cdw15 as number) >>> 0;
}

/** Write `cmd` with command identifier `cid` into the SQ slot at dword offset `o`. */
export function writeCommand(sq: Uint32Array, o: number, cid: number, cmd: Command): void {
  writeSqe(
    sq,
    o,
    cmd.opcode,
    cid,
    cmd.nsid ?? 0,
    cmd.prp1 ?? 0,
    cmd.prp2 ?? 0,
    cmd.cdw10 ?? 0,
    cmd.cdw11 ?? 0,
    cmd.cdw12 ?? 0,
    cmd.cdw13 ?? 0,
    cmd.cdw14 ?? 0,
    cmd.cdw15 ?? 0,
  );
}

// ---- admin command builders ----------------------------------------------------------------

/** Identify (5.17): CNS in CDW10 07:00, CNTID in 31:16. Data is one 4 KiB page at PRP1. */
export function identify(cns: number, nsid: number, prp1: number, cntid = 0): Command {
  return { opcode: ADMIN_IDENTIFY, nsid, prp1, cdw10: (cns & 0xff) | ((cntid & 0xffff) << 16) };
}

/** Get Features (5.15): FID 07:00, SEL 10:08. */
export function getFeatures(fid: number, sel = SEL_CURRENT, cdw11 = 0, nsid = 0, prp1 = 0): Command {
  return { opcode: ADMIN_GET_FEATURES, nsid, prp1, cdw10: (fid & 0xff) | ((sel & 7) << 8), cdw11 };
}

/** Set Features (5.27): FID 07:00, SV (save) bit 31; CDW11-12 feature specific. */
export function setFeatures(fid: number, cdw11: number, save = false, nsid = 0, prp1 = 0, cdw12 = 0): Command {
  return { opcode: ADMIN_SET_FEATURES, nsid, prp1, cdw10: ((fid & 0xff) | (save ? 1 << 31 : 0)) >>> 0, cdw11, cdw12 };
}

/** How long a Format NVM may take by default: a secure erase of a large drive takes minutes. */
export const FORMAT_TIMEOUT_MS = 600_000;

/** Format NVM settings (Base 2.0, 5.23, CDW10). */
export interface FormatNvmFields {
  /** LBA Format index, 0 to 63: bits 3:0 (LBAFL) and 13:12 (LBAFU). */
  readonly lbaf: number;
  /** Metadata Settings (MSET), bit 4: 1 = metadata interleaved with the data (extended LBA). Defaults to 0. */
  readonly mset?: number;
  /** Protection Information (PI), bits 7:5: 0 = none, 1-3 = type 1-3. Defaults to 0. */
  readonly pi?: number;
  /** Protection Information Location (PIL), bit 8: 1 = first 8 bytes of metadata. Defaults to 0. */
  readonly pil?: number;
  /** Secure Erase Settings (SES), bits 11:9: 0 none, 1 User Data Erase, 2 Cryptographic Erase. Defaults to 0. */
  readonly ses?: number;
}

/**
 * Format NVM (5.23): the fields of CDW10, each checked against its width so that a bad value
 * never reaches the controller as another field's bits. NSID FFFFFFFFh formats every namespace.
 */
export function formatNvm(nsid: number, f: FormatNvmFields): Command {
  const field = (name: string, v: number, max: number) => {
    if (!Number.isInteger(v) || v < 0 || v > max) throw new InvalidArgumentError(`Format NVM: ${name} ${v} is not an integer in 0..${max}`);
    return v;
  };
  const lbaf = field("LBAF", f.lbaf, 63);
  const cdw10 =
    (lbaf & 0xf) |
    (field("MSET", f.mset ?? 0, 1) << 4) |
    (field("PI", f.pi ?? 0, 3) << 5) |
    (field("PIL", f.pil ?? 0, 1) << 8) |
    (field("SES", f.ses ?? 0, 2) << 9) |
    ((lbaf >>> 4) << 12);
  return { opcode: ADMIN_FORMAT_NVM, nsid, cdw10 };
}

/**
 * Number of Queues (5.27.1.5): NSQR in CDW11 15:00 and NCQR in 31:16, both 0-based.
 * The completion's DW0 carries NSQA in 15:00 and NCQA in 31:16 (the C original swapped them).
 */
export function numberOfQueues(sqs: number, cqs: number): Command {
  return setFeatures(FID_NUMBER_OF_QUEUES, (((cqs - 1) & 0xffff) << 16) | ((sqs - 1) & 0xffff));
}

export function decodeNumberOfQueues(dw0: number): { sqs: number; cqs: number } {
  return { sqs: (dw0 & 0xffff) + 1, cqs: ((dw0 >>> 16) & 0xffff) + 1 };
}

/**
 * Create I/O Completion Queue (5.4): QID CDW10 15:00, QSIZE 31:16 (0-based);
 * CDW11 PC bit 0 (physically contiguous), IEN bit 1, IV 31:16.
 */
export function createIoCq(qid: number, entries: number, prp1: number, opts: { pc?: boolean; ien?: boolean; iv?: number } = {}): Command {
  const pc = opts.pc ?? true;
  return {
    opcode: ADMIN_CREATE_IO_CQ,
    prp1,
    cdw10: ((qid & 0xffff) | (((entries - 1) & 0xffff) << 16)) >>> 0,
    cdw11: ((pc ? 1 : 0) | (opts.ien ? 2 : 0) | ((opts.iv ?? 0) << 16)) >>> 0,
  };
}

/**
 * Create I/O Submission Queue (5.5): QID CDW10 15:00, QSIZE 31:16 (0-based);
 * CDW11 PC bit 0, QPRIO 02:01, CQID 31:16.
 */
export function createIoSq(qid: number, entries: number, cqid: number, prp1: number, opts: { pc?: boolean; qprio?: number } = {}): Command {
  const pc = opts.pc ?? true;
  return {
    opcode: ADMIN_CREATE_IO_SQ,
    prp1,
    cdw10: ((qid & 0xffff) | (((entries - 1) & 0xffff) << 16)) >>> 0,
    cdw11: ((pc ? 1 : 0) | (((opts.qprio ?? 0) & 3) << 1) | ((cqid & 0xffff) << 16)) >>> 0,
  };
}

export function deleteIoSq(qid: number): Command {
  return { opcode: ADMIN_DELETE_IO_SQ, cdw10: qid & 0xffff };
}

export function deleteIoCq(qid: number): Command {
  return { opcode: ADMIN_DELETE_IO_CQ, cdw10: qid & 0xffff };
}

/**
 * Get Log Page (5.16): LID, NUMD (0-based dwords, so 4096 bytes is NUMD 1023) and the offset,
 * checked and laid out by log.getLogPageCdws.
 */
export function getLogPage(lid: number, nsid: number, bytes: number, prp1: number, prp2 = 0, offset = 0): Command {
  return { opcode: ADMIN_GET_LOG_PAGE, nsid, prp1, prp2, ...getLogPageCdws({ lid, byteLength: bytes, offset }) };
}

/** Abort (5.1): SQID CDW10 15:00, CID 31:16. */
export function abort(sqid: number, cid: number): Command {
  return { opcode: ADMIN_ABORT, cdw10: ((sqid & 0xffff) | ((cid & 0xffff) << 16)) >>> 0 };
}

const adminNames: Record<number, string> = {
  [ADMIN_DELETE_IO_SQ]: "Delete I/O Submission Queue",
  [ADMIN_CREATE_IO_SQ]: "Create I/O Submission Queue",
  [ADMIN_GET_LOG_PAGE]: "Get Log Page",
  [ADMIN_DELETE_IO_CQ]: "Delete I/O Completion Queue",
  [ADMIN_CREATE_IO_CQ]: "Create I/O Completion Queue",
  [ADMIN_IDENTIFY]: "Identify",
  [ADMIN_ABORT]: "Abort",
  [ADMIN_SET_FEATURES]: "Set Features",
  [ADMIN_GET_FEATURES]: "Get Features",
  [ADMIN_ASYNC_EVENT_REQUEST]: "Asynchronous Event Request",
  [ADMIN_NAMESPACE_MANAGEMENT]: "Namespace Management",
  [ADMIN_FIRMWARE_COMMIT]: "Firmware Commit",
  [ADMIN_FIRMWARE_DOWNLOAD]: "Firmware Image Download",
  [ADMIN_KEEP_ALIVE]: "Keep Alive",
  [ADMIN_FORMAT_NVM]: "Format NVM",
};

const nvmNames: Record<number, string> = {
  [NVM_FLUSH]: "Flush",
  [NVM_WRITE]: "Write",
  [NVM_READ]: "Read",
  [NVM_WRITE_UNCORRECTABLE]: "Write Uncorrectable",
  [NVM_COMPARE]: "Compare",
  [NVM_WRITE_ZEROES]: "Write Zeroes",
  [NVM_DATASET_MANAGEMENT]: "Dataset Management",
};

export function commandName(opcode: number, admin: boolean): string {
  return (admin ? adminNames : nvmNames)[opcode] ?? `${admin ? "Admin" : "I/O"} opcode 0x${opcode.toString(16).padStart(2, "0")}`;
}

// ---- completion queue entry (4.6) ----------------------------------------------------------
// DW0 command specific, DW1 reserved/command specific, DW2 SQHD 15:00 SQID 31:16,
// DW3 CID 15:00, Phase Tag bit 16, Status Field 31:17.

export const cqeSqhd = (cq: Uint32Array, o: number): number => cq[o + 2]! & 0xffff;
export const cqeSqid = (cq: Uint32Array, o: number): number => cq[o + 2]! >>> 16;
export const cqeCid = (cq: Uint32Array, o: number): number => cq[o + 3]! & 0xffff;
/** The 15-bit Status Field (0 = success). */
export const cqeStatus = (cq: Uint32Array, o: number): number => cq[o + 3]! >>> 17;

// ---- NVM command builders -------------------------------------------------------------------

/**
 * Read, Write, Compare (NVM Command Set 3.2.4/3.2.6/3.2.1): SLBA in CDW10 (low) and CDW11 (high),
 * NLB 0-based in CDW12 bits 15:00.
 */
export function readWrite(opcode: number, nsid: number, slba: number, blocks: number, prp1: number, prp2: number): Command {
  return { opcode, nsid, prp1, prp2, cdw10: lo32(slba), cdw11: hi32(slba), cdw12: (blocks - 1) & 0xffff };
}

export function flush(nsid: number): Command {
  return { opcode: NVM_FLUSH, nsid };
}

/**
 * Read/Write/Compare CDW12 bit 30: Force Unit Access (FUA). A write completes only once its data
 * is in non-volatile media (past a volatile write cache); a read fetches from the media.
 */
export const RW_FUA = 1 << 30;

/** Write Zeroes CDW12 bit 25: Deallocate (DEAC) the blocks if the controller can. */
export const WRITE_ZEROES_DEAC = 1 << 25;
/** Dataset Management CDW11 bit 2: Attribute – Deallocate (AD). */
export const DSM_ATTR_DEALLOCATE = 1 << 2;
/** One Dataset Management range: Context Attributes (4), Length in logical blocks (4), SLBA (8). */
export const DSM_RANGE_SIZE = 16;
/** NR (CDW10 07:00) is 0-based: at most 256 ranges, exactly one 4 KiB page. */
export const DSM_MAX_RANGES = 256;
