/**
 * Get Log Page (admin opcode 02h): the command dword arithmetic and parsers for the Error
 * Information, SMART / Health Information and Firmware Slot Information log pages.
 *
 * Layouts are from NVMe Base Specification 2.0 section 5.16 "Get Log Page command". All
 * multi-byte fields are little endian.
 */
import { InvalidArgumentError } from "../errors.ts";
import { asciiField, requireLength, u128 } from "./identify.ts";
import { decodeStatus } from "./status.ts";
import type { CompletionStatus } from "./status.ts";

/** Log Page Identifiers (LID, CDW10 bits 7:0). */
export const LID_ERROR = 0x01;
export const LID_SMART = 0x02;
export const LID_FW_SLOT = 0x03;
export const LID_CHANGED_NS_LIST = 0x04;
export const LID_COMMANDS_SUPPORTED_EFFECTS = 0x05;
export const LID_DEVICE_SELF_TEST = 0x06;
export const LID_ANA = 0x0c;
export const LID_SANITIZE_STATUS = 0x81;

export const ERROR_LOG_ENTRY_SIZE = 64;
export const SMART_LOG_SIZE = 512;
export const FW_SLOT_LOG_SIZE = 512;

/** NUMD is a 32-bit 0's based dword count, so one Get Log Page moves at most 2^32 dwords. */
const MAX_LOG_BYTES = 2 ** 32 * 4;

// ---------------------------------------------------------------------------------------------
// Command dwords
// ---------------------------------------------------------------------------------------------

/**
 * Split the transfer length into NUMDL (CDW10 bits 31:16) and NUMDU (CDW11 bits 15:0).
 * NUMD is 0's based: a 4096-byte page is 1024 dwords, NUMD 1023, not 1024.
 * `lid` is checked so a bad call fails before anything is sent.
 */
export function getLogPageDwords(lid: number, byteLength: number): { numdl: number; numdu: number } {
  if (!Number.isInteger(lid) || lid < 0 || lid > 0xff) {
    throw new InvalidArgumentError(`Get Log Page: log page identifier ${lid} is not an integer in 0..255`);
  }
  if (!Number.isInteger(byteLength) || byteLength <= 0 || byteLength % 4 !== 0) {
    throw new InvalidArgumentError(
      `Get Log Page (LID 0x${lid.toString(16)}): length ${byteLength} must be a positive multiple of 4 bytes (the command counts dwords)`,
    );
  }
  if (byteLength > MAX_LOG_BYTES) {
    throw new InvalidArgumentError(
      `Get Log Page (LID 0x${lid.toString(16)}): length ${byteLength} exceeds the ${MAX_LOG_BYTES} bytes NUMD can express; read it in pieces with the log page offset`,
    );
  }
  const numd = byteLength / 4 - 1;
  return { numdl: numd % 0x10000, numdu: Math.floor(numd / 0x10000) };
}

export interface GetLogPageOptions {
  readonly lid: number;
  readonly byteLength: number;
  /** Log Specific Parameter, CDW10 bits 14:8. */
  readonly lsp?: number;
  /** Retain Asynchronous Event, CDW10 bit 15: read without clearing a pending event. */
  readonly rae?: boolean;
  /** Log Specific Identifier, CDW11 bits 31:16. */
  readonly lsi?: number;
  /** Byte offset into the log (LPOL/LPOU, CDW12-13); must be dword aligned. */
  readonly offset?: number;
}

/** CDW10-CDW13 of a Get Log Page command, as unsigned 32-bit values. */
export function getLogPageCdws(opts: GetLogPageOptions): {
  cdw10: number;
  cdw11: number;
  cdw12: number;
  cdw13: number;
} {
  const { numdl, numdu } = getLogPageDwords(opts.lid, opts.byteLength);
  const lsp = opts.lsp ?? 0;
  const lsi = opts.lsi ?? 0;
  const offset = opts.offset ?? 0;
  if (!Number.isInteger(lsp) || lsp < 0 || lsp > 0x7f) {
    throw new InvalidArgumentError(`Get Log Page: LSP ${lsp} does not fit CDW10 bits 14:8 (0..127)`);
  }
  if (!Number.isInteger(lsi) || lsi < 0 || lsi > 0xffff) {
    throw new InvalidArgumentError(`Get Log Page: LSI ${lsi} does not fit CDW11 bits 31:16 (0..65535)`);
  }
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 4 !== 0) {
    throw new InvalidArgumentError(`Get Log Page: offset ${offset} must be a non-negative multiple of 4`);
  }
  return {
    cdw10: (opts.lid | (lsp << 8) | (opts.rae ? 1 << 15 : 0) | (numdl << 16)) >>> 0,
    cdw11: (numdu | (lsi << 16)) >>> 0,
    // `>>> 0` also turns an offset of -0 (which passes the checks above) into 0.
    cdw12: (offset % 2 ** 32) >>> 0,
    cdw13: Math.floor(offset / 2 ** 32) >>> 0,
  };
}

// ---------------------------------------------------------------------------------------------
// SMART / Health Information (LID 02h)
// ---------------------------------------------------------------------------------------------

/** Critical Warning (byte 0) bits, each a condition the host should act on. */
export interface CriticalWarning {
  /** Bit 0: available spare capacity has fallen below the threshold. */
  readonly availableSpare: boolean;
  /** Bit 1: a temperature is above an over-temperature or below an under-temperature threshold. */
  readonly temperature: boolean;
  /** Bit 2: NVM subsystem reliability is degraded (media errors or internal errors). */
  readonly reliabilityDegraded: boolean;
  /** Bit 3: all media has been placed in read-only mode. */
  readonly readOnly: boolean;
  /** Bit 4: the volatile memory backup device has failed. */
  readonly volatileBackupFailed: boolean;
  /** Bit 5: the Persistent Memory Region has become read-only or unreliable. */
  readonly pmrReadOnly: boolean;
}

export const CRITICAL_WARNING_SPARE = 1 << 0;
export const CRITICAL_WARNING_TEMPERATURE = 1 << 1;
export const CRITICAL_WARNING_RELIABILITY = 1 << 2;
export const CRITICAL_WARNING_READ_ONLY = 1 << 3;
export const CRITICAL_WARNING_VOLATILE_BACKUP = 1 << 4;
export const CRITICAL_WARNING_PMR_READ_ONLY = 1 << 5;

export interface SmartLog {
  /** Critical Warning, byte 0, raw. */
  readonly criticalWarning: number;
  readonly criticalWarnings: CriticalWarning;
  /** Composite Temperature in kelvin, bytes 2:1. */
  readonly compositeTemperature: number;
  /** Composite Temperature in degrees Celsius (kelvin - 273). */
  readonly compositeTemperatureCelsius: number;
  /** Available Spare as a percentage, byte 3. */
  readonly availableSpare: number;
  /** Available Spare Threshold as a percentage, byte 4. */
  readonly availableSpareThreshold: number;
  /** Percentage Used, byte 5; may exceed 100 (up to 255). */
  readonly percentageUsed: number;
  /** Endurance Group Critical Warning Summary, byte 6. */
  readonly enduranceGroupCriticalWarning: number;
  /** Data Units Read, bytes 47:32, in thousands of 512-byte units (1 = 512 000 bytes). */
  readonly dataUnitsRead: bigint;
  /** Data Units Written, bytes 63:48, in thousands of 512-byte units. */
  readonly dataUnitsWritten: bigint;
  /** Host Read Commands, bytes 79:64. */
  readonly hostReadCommands: bigint;
  /** Host Write Commands, bytes 95:80. */
  readonly hostWriteCommands: bigint;
  /** Controller Busy Time in minutes, bytes 111:96. */
  readonly controllerBusyTime: bigint;
  /** Power Cycles, bytes 127:112. */
  readonly powerCycles: bigint;
  /** Power On Hours, bytes 143:128. */
  readonly powerOnHours: bigint;
  /** Unsafe Shutdowns, bytes 159:144. */
  readonly unsafeShutdowns: bigint;
  /** Media and Data Integrity Errors, bytes 175:160. */
  readonly mediaErrors: bigint;
  /** Number of Error Information Log Entries over the controller's life, bytes 191:176. */
  readonly numErrLogEntries: bigint;
  /** Warning Composite Temperature Time in minutes, bytes 195:192. */
  readonly warningTempTime: number;
  /** Critical Composite Temperature Time in minutes, bytes 199:196. */
  readonly criticalCompTime: number;
  /** Temperature Sensors 1-8 in kelvin, bytes 215:200; null where the sensor is not implemented (0). */
  readonly temperatureSensors: readonly (number | null)[];
  /** Thermal Management Temperature 1 Transition Count, bytes 219:216. */
  readonly tmt1TransitionCount: number;
  /** Thermal Management Temperature 2 Transition Count, bytes 223:220. */
  readonly tmt2TransitionCount: number;
  /** Total Time For Thermal Management Temperature 1 in seconds, bytes 227:224. */
  readonly tmt1TotalTime: number;
  /** Total Time For Thermal Management Temperature 2 in seconds, bytes 231:228. */
  readonly tmt2TotalTime: number;
}

/** Kelvin to Celsius the way the specification rounds it (whole degrees, 273 offset). */
export function kelvinToCelsius(k: number): number {
  return k - 273;
}

/** Bytes represented by a Data Units Read/Written count (each unit is 1000 x 512 bytes). */
export function dataUnitsToBytes(units: bigint): bigint {
  return units * 512_000n;
}

/** Parse the SMART / Health Information log page (LID 02h, 512 bytes). */
export function parseSmartLog(data: Uint8Array): SmartLog {
  requireLength(data, SMART_LOG_SIZE, "SMART / Health Information log");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const cw = v.getUint8(0);
  const temp = v.getUint16(1, true);
  const sensors: (number | null)[] = [];
  for (let i = 0; i < 8; i++) {
    const k = v.getUint16(200 + 2 * i, true);
    sensors.push(k === 0 ? null : k);
  }
  return {
    criticalWarning: cw,
    criticalWarnings: {
      availableSpare: (cw & CRITICAL_WARNING_SPARE) !== 0,
      temperature: (cw & CRITICAL_WARNING_TEMPERATURE) !== 0,
      reliabilityDegraded: (cw & CRITICAL_WARNING_RELIABILITY) !== 0,
      readOnly: (cw & CRITICAL_WARNING_READ_ONLY) !== 0,
      volatileBackupFailed: (cw & CRITICAL_WARNING_VOLATILE_BACKUP) !== 0,
      pmrReadOnly: (cw & CRITICAL_WARNING_PMR_READ_ONLY) !== 0,
    },
    compositeTemperature: temp,
    compositeTemperatureCelsius: kelvinToCelsius(temp),
    availableSpare: v.getUint8(3),
    availableSpareThreshold: v.getUint8(4),
    percentageUsed: v.getUint8(5),
    enduranceGroupCriticalWarning: v.getUint8(6),
    dataUnitsRead: u128(v, 32),
    dataUnitsWritten: u128(v, 48),
    hostReadCommands: u128(v, 64),
    hostWriteCommands: u128(v, 80),
    controllerBusyTime: u128(v, 96),
    powerCycles: u128(v, 112),
    powerOnHours: u128(v, 128),
    unsafeShutdowns: u128(v, 144),
    mediaErrors: u128(v, 160),
    numErrLogEntries: u128(v, 176),
    warningTempTime: v.getUint32(192, true),
    criticalCompTime: v.getUint32(196, true),
    temperatureSensors: sensors,
    tmt1TransitionCount: v.getUint32(216, true),
    tmt2TransitionCount: v.getUint32(220, true),
    tmt1TotalTime: v.getUint32(224, true),
    tmt2TotalTime: v.getUint32(228, true),
  };
}

// ---------------------------------------------------------------------------------------------
// Error Information (LID 01h)
// ---------------------------------------------------------------------------------------------

export interface ErrorLogEntry {
  /** Error Count, bytes 7:0: unique, incrementing; 0 marks an unused entry (those are dropped). */
  readonly errorCount: bigint;
  /** Submission Queue ID, bytes 9:8 (FFFFh = not tied to a queue). */
  readonly sqid: number;
  /** Command ID, bytes 11:10 (FFFFh = not tied to a command). */
  readonly cid: number;
  /**
   * The 15-bit Status Field, same value as CQE DW3 >>> 17 and accepted by NvmeStatusError.
   * The log stores a 16-bit word at bytes 13:12 laid out like CQE DW3 bits 31:16: bit 0 is the
   * phase tag, bits 15:1 the status.
   */
  readonly status: number;
  /** `status` split into SCT / SC / CRD / M / DNR. */
  readonly statusFields: CompletionStatus;
  /** Phase Tag of the failed completion, bit 0 of bytes 13:12. */
  readonly phaseTag: number;
  /** Parameter Error Location, bytes 15:14, raw (FFFFh = not applicable). */
  readonly parameterErrorLocation: number;
  /** Byte within the command holding the bad parameter (bits 7:0), or null when not applicable. */
  readonly parameterErrorByte: number | null;
  /** Bit within that byte (bits 10:8), or null when not applicable. */
  readonly parameterErrorBit: number | null;
  /** First LBA that had the error, bytes 23:16. */
  readonly lba: bigint;
  /** Namespace ID, bytes 27:24. */
  readonly nsid: number;
  /** Vendor Specific Information Available, byte 28: LID of a vendor log with more detail, 0 if none. */
  readonly vsia: number;
  /** Transport Type, byte 29 (valid when non-zero). */
  readonly trtype: number;
  /** Command Specific Information, bytes 39:32. */
  readonly csi: bigint;
  /** Transport Type Specific Information, bytes 41:40. */
  readonly ttsi: number;
}

function parseErrorEntry(v: DataView, off: number): ErrorLogEntry {
  const word = v.getUint16(off + 12, true);
  const status = word >>> 1;
  const pel = v.getUint16(off + 14, true);
  const pelValid = pel !== 0xffff;
  return {
    errorCount: v.getBigUint64(off, true),
    sqid: v.getUint16(off + 8, true),
    cid: v.getUint16(off + 10, true),
    status,
    statusFields: decodeStatus(status),
    phaseTag: word & 1,
    parameterErrorLocation: pel,
    parameterErrorByte: pelValid ? pel & 0xff : null,
    parameterErrorBit: pelValid ? (pel >>> 8) & 0x7 : null,
    lba: v.getBigUint64(off + 16, true),
    nsid: v.getUint32(off + 24, true),
    vsia: v.getUint8(off + 28),
    trtype: v.getUint8(off + 29),
    csi: v.getBigUint64(off + 32, true),
    ttsi: v.getUint16(off + 40, true),
  };
}

/**
 * Parse `entries` Error Information log entries (64 bytes each; ELPE + 1 is the most a
 * controller keeps). Entries whose Error Count is 0 are unused slots and are left out, so the
 * result may be shorter than `entries`, unless `opts.keepUnused` (a tool that prints every slot,
 * as nvme-cli does). Defaults to as many entries as `data` holds.
 */
export function parseErrorLog(
  data: Uint8Array,
  entries: number = Math.floor(data.byteLength / ERROR_LOG_ENTRY_SIZE),
  opts: { readonly keepUnused?: boolean } = {},
): ErrorLogEntry[] {
  if (!Number.isInteger(entries) || entries < 0) {
    throw new InvalidArgumentError(`Error Information log: entry count ${entries} is not a non-negative integer`);
  }
  requireLength(data, entries * ERROR_LOG_ENTRY_SIZE, `Error Information log (${entries} entries)`);
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: ErrorLogEntry[] = [];
  for (let i = 0; i < entries; i++) {
    const e = parseErrorEntry(v, i * ERROR_LOG_ENTRY_SIZE);
    if (e.errorCount !== 0n || opts.keepUnused) out.push(e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Firmware Slot Information (LID 03h)
// ---------------------------------------------------------------------------------------------

export interface FirmwareSlotLog {
  /** Active Firmware Info, byte 0, raw. */
  readonly afi: number;
  /** Slot (1-7) the running firmware came from, AFI bits 2:0. */
  readonly activeSlot: number;
  /** Slot to activate at the next Controller Level Reset, AFI bits 6:4; 0 = none indicated. */
  readonly nextSlot: number;
  /** Firmware Revision for slots 1-7, bytes 15:8 .. 63:56; "" for an empty slot. */
  readonly frs1: string;
  readonly frs2: string;
  readonly frs3: string;
  readonly frs4: string;
  readonly frs5: string;
  readonly frs6: string;
  readonly frs7: string;
  /** The same revisions as an array: frs[0] is slot 1. */
  readonly frs: readonly string[];
}

/** Parse the Firmware Slot Information log page (LID 03h, 512 bytes). */
export function parseFirmwareSlotLog(data: Uint8Array): FirmwareSlotLog {
  requireLength(data, FW_SLOT_LOG_SIZE, "Firmware Slot Information log");
  const afi = data[0] ?? 0;
  const frs: string[] = [];
  for (let slot = 1; slot <= 7; slot++) frs.push(asciiField(data, 8 * slot, 8));
  const [frs1 = "", frs2 = "", frs3 = "", frs4 = "", frs5 = "", frs6 = "", frs7 = ""] = frs;
  return {
    afi,
    activeSlot: afi & 0x7,
    nextSlot: (afi >>> 4) & 0x7,
    frs1,
    frs2,
    frs3,
    frs4,
    frs5,
    frs6,
    frs7,
    frs,
  };
}
