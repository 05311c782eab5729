/**
 * Parsers for the Identify data structures (admin opcode 06h) that a PCIe host needs:
 * Identify Controller (CNS 01h), Identify Namespace for the NVM command set (CNS 00h) and the
 * Active Namespace ID list (CNS 02h).
 *
 * Offsets are from NVMe Base Specification 2.0 figure "Identify Controller Data Structure, I/O
 * Command Set Independent" and NVM Command Set Specification 1.0 figure "Identify Namespace Data
 * Structure, NVM Command Set". All multi-byte fields are little endian.
 */
import { InvalidArgumentError, ParseError } from "../errors.ts";

/** Every Identify data structure is one 4 KiB page. */
export const IDENTIFY_DATA_SIZE = 4096;

// ---------------------------------------------------------------------------------------------
// Byte helpers, shared with log.ts
// ---------------------------------------------------------------------------------------------

/** @internal Throw ParseError unless `data` holds at least `min` bytes. */
export function requireLength(data: Uint8Array, min: number, what: string): void {
  if (data.byteLength < min) {
    throw new ParseError(
      `${what} is ${data.byteLength} bytes, expected at least ${min}; the transfer was short or the wrong buffer was passed`,
    );
  }
}

/**
 * @internal An ASCII string field (SN, MN, FR, FRS): the specification pads with spaces, some
 * devices pad with NULs, so both are trimmed from the end. Bytes are mapped one-to-one to code
 * points so a non-ASCII byte is visible rather than lost.
 */
export function asciiField(data: Uint8Array, off: number, len: number): string {
  let end = off + len;
  while (end > off && (data[end - 1] === 0x20 || data[end - 1] === 0x00)) end--;
  return String.fromCharCode(...data.subarray(off, end));
}

/** @internal A UTF-8 field that ends at its first NUL (SUBNQN). */
export function utf8Field(data: Uint8Array, off: number, len: number): string {
  const field = data.subarray(off, off + len);
  const nul = field.indexOf(0);
  return new TextDecoder().decode(nul === -1 ? field : field.subarray(0, nul));
}

/** @internal Bytes as lower-case hex in the order they appear (NGUID, EUI64, FGUID are big endian identifiers). */
export function hexBytes(data: Uint8Array, off: number, len: number): string {
  let s = "";
  for (let i = off; i < off + len; i++) s += (data[i] ?? 0).toString(16).padStart(2, "0");
  return s;
}

/** @internal A little-endian 128-bit counter or capacity. */
export function u128(view: DataView, off: number): bigint {
  return (view.getBigUint64(off + 8, true) << 64n) | view.getBigUint64(off, true);
}

// ---------------------------------------------------------------------------------------------
// Identify Controller (CNS 01h)
// ---------------------------------------------------------------------------------------------

/** One Power State Descriptor (32 bytes each, PSD0 at byte 2048). */
export interface PowerStateDescriptor {
  /** Maximum Power, bytes 1:0, in units selected by `mxps`. */
  readonly mp: number;
  /** Max Power Scale, byte 3 bit 0: 0 = MP is in 0.01 W, 1 = MP is in 0.0001 W. */
  readonly mxps: number;
  /** Non-Operational State, byte 3 bit 1: no I/O is processed in this state. */
  readonly nops: boolean;
  /** Entry Latency in microseconds, bytes 7:4 (0 = not reported). */
  readonly enlat: number;
  /** Exit Latency in microseconds, bytes 11:8 (0 = not reported). */
  readonly exlat: number;
  /** Relative Read Throughput, byte 12 bits 4:0 (0 = best). */
  readonly rrt: number;
  /** Relative Read Latency, byte 13 bits 4:0. */
  readonly rrl: number;
  /** Relative Write Throughput, byte 14 bits 4:0. */
  readonly rwt: number;
  /** Relative Write Latency, byte 15 bits 4:0. */
  readonly rwl: number;
  /** Idle Power, bytes 17:16, scaled by `ips`. */
  readonly idlp: number;
  /** Idle Power Scale, byte 18 bits 7:6: 0 = not reported, 1 = 0.0001 W, 2 = 0.01 W. */
  readonly ips: number;
  /** Active Power, bytes 21:20, scaled by `aps`. */
  readonly actp: number;
  /** Active Power Workload, byte 22 bits 2:0. */
  readonly apw: number;
  /** Active Power Scale, byte 22 bits 7:6: 0 = not reported, 1 = 0.0001 W, 2 = 0.01 W. */
  readonly aps: number;
  /** MP converted to watts using MXPS. */
  readonly maxPowerWatts: number;
}

export interface IdentifyController {
  /** PCI Vendor ID, bytes 1:0. */
  readonly vid: number;
  /** PCI Subsystem Vendor ID, bytes 3:2. */
  readonly ssvid: number;
  /** Serial Number, bytes 23:4. */
  readonly sn: string;
  /** Model Number, bytes 63:24. */
  readonly mn: string;
  /** Firmware Revision, bytes 71:64. */
  readonly fr: string;
  /** Recommended Arbitration Burst, byte 72 (a power of two). */
  readonly rab: number;
  /** IEEE OUI, bytes 75:73, least significant byte first. */
  readonly ieee: number;
  /** Controller Multi-Path I/O and Namespace Sharing Capabilities, byte 76. */
  readonly cmic: number;
  /** Maximum Data Transfer Size, byte 77: 2^MDTS units of CAP.MPSMIN; 0 = no limit. Raw. */
  readonly mdts: number;
  /** Controller ID, bytes 79:78. */
  readonly cntlid: number;
  /** Version, bytes 83:80, same layout as the VS register (0 on controllers older than 1.2). */
  readonly ver: number;
  /** RTD3 Resume Latency in microseconds, bytes 87:84. */
  readonly rtd3r: number;
  /** RTD3 Entry Latency in microseconds, bytes 91:88. */
  readonly rtd3e: number;
  /** Optional Asynchronous Events Supported, bytes 95:92. */
  readonly oaes: number;
  /** Controller Attributes, bytes 99:96. */
  readonly ctratt: number;
  /** Read Recovery Levels Supported, bytes 101:100. */
  readonly rrls: number;
  /** Controller Type, byte 111: 1 = I/O, 2 = discovery, 3 = administrative (0 = not reported). */
  readonly cntrltype: number;
  /** FRU Globally Unique Identifier, bytes 127:112, as 32 hex digits in byte order. */
  readonly fguid: string;
  /** Command Retry Delay Times 1-3 in 100 ms units, bytes 129:128, 131:130, 133:132. The CRD field of a status selects one. */
  readonly crdt1: number;
  readonly crdt2: number;
  readonly crdt3: number;
  /** NVM Subsystem Report, byte 253 (NVMe-MI: bit 0 part of a storage device, bit 1 of an enclosure). */
  readonly nvmsr: number;
  /** VPD Write Cycle Information, byte 254 (bit 7: valid, bits 6:0 write cycles remaining). */
  readonly vwci: number;
  /** Management Endpoint Capabilities, byte 255 (bit 0: SMBus/I2C port, bit 1: PCIe port). */
  readonly mec: number;
  /** Optional Admin Command Support, bytes 257:256. */
  readonly oacs: number;
  /** Abort Command Limit, byte 258 (0's based). */
  readonly acl: number;
  /** Asynchronous Event Request Limit, byte 259 (0's based). */
  readonly aerl: number;
  /** Firmware Updates, byte 260. */
  readonly frmw: number;
  /** Log Page Attributes, byte 261. */
  readonly lpa: number;
  /** Error Log Page Entries, byte 262 (0's based). */
  readonly elpe: number;
  /** Number of Power States Support, byte 263 (0's based). */
  readonly npss: number;
  /** Admin Vendor Specific Command Configuration, byte 264. */
  readonly avscc: number;
  /** Autonomous Power State Transition Attributes, byte 265. */
  readonly apsta: number;
  /** Warning Composite Temperature Threshold in kelvin, bytes 267:266. */
  readonly wctemp: number;
  /** Critical Composite Temperature Threshold in kelvin, bytes 269:268. */
  readonly cctemp: number;
  /** Maximum Time for Firmware Activation in 100 ms units, bytes 271:270. */
  readonly mtfa: number;
  /** Host Memory Buffer Preferred Size in 4 KiB units, bytes 275:272. */
  readonly hmpre: number;
  /** Host Memory Buffer Minimum Size in 4 KiB units, bytes 279:276. */
  readonly hmmin: number;
  /** Total NVM Capacity in bytes, bytes 295:280 (128-bit). */
  readonly tnvmcap: bigint;
  /** Unallocated NVM Capacity in bytes, bytes 311:296 (128-bit). */
  readonly unvmcap: bigint;
  /** Replay Protected Memory Block Support, bytes 315:312. */
  readonly rpmbs: number;
  /** Extended Device Self-test Time in minutes, bytes 317:316. */
  readonly edstt: number;
  /** Device Self-test Options, byte 318. */
  readonly dsto: number;
  /** Firmware Update Granularity in 4 KiB units, byte 319 (FFh = no restriction). */
  readonly fwug: number;
  /** Keep Alive Support granularity in 100 ms units, bytes 321:320. */
  readonly kas: number;
  /** Host Controlled Thermal Management Attributes, bytes 323:322. */
  readonly hctma: number;
  /** Minimum Thermal Management Temperature in kelvin, bytes 325:324. */
  readonly mntmt: number;
  /** Maximum Thermal Management Temperature in kelvin, bytes 327:326. */
  readonly mxtmt: number;
  /** Sanitize Capabilities, bytes 331:328. */
  readonly sanicap: number;
  /** Host Memory Buffer Minimum Descriptor Entry Size in 4 KiB units, bytes 335:332. */
  readonly hmminds: number;
  /** Host Memory Maximum Descriptors Entries, bytes 337:336. */
  readonly hmmaxd: number;
  /** NVM Set Identifier Maximum, bytes 339:338. */
  readonly nsetidmax: number;
  /** Endurance Group Identifier Maximum, bytes 341:340. */
  readonly endgidmax: number;
  /** ANA Transition Time in seconds, byte 342. */
  readonly anatt: number;
  /** Asymmetric Namespace Access Capabilities, byte 343. */
  readonly anacap: number;
  /** ANA Group Identifier Maximum, bytes 347:344. */
  readonly anagrpmax: number;
  /** Number of ANA Group Identifiers, bytes 351:348. */
  readonly nanagrpid: number;
  /** Persistent Event Log Size in 64 KiB units, bytes 355:352. */
  readonly pels: number;
  /** Domain Identifier, bytes 357:356. */
  readonly domainid: number;
  /** Max Endurance Group Capacity in bytes, bytes 383:368 (128-bit). */
  readonly megcap: bigint;
  /** Submission Queue Entry Size, byte 512, raw: bits 3:0 required, bits 7:4 maximum, each log2 bytes. */
  readonly sqes: number;
  /** Required (minimum) SQ entry size in bytes, 2^SQES[3:0]; 64 for NVM controllers. */
  readonly sqesMin: number;
  /** Maximum SQ entry size in bytes, 2^SQES[7:4]. */
  readonly sqesMax: number;
  /** Completion Queue Entry Size, byte 513, raw, same layout as SQES. */
  readonly cqes: number;
  /** Required (minimum) CQ entry size in bytes, 2^CQES[3:0]; 16 for NVM controllers. */
  readonly cqesMin: number;
  /** Maximum CQ entry size in bytes, 2^CQES[7:4]. */
  readonly cqesMax: number;
  /** Maximum Outstanding Commands, bytes 515:514 (fabrics; 0 on PCIe). */
  readonly maxcmd: number;
  /** Number of Namespaces (the largest valid NSID), bytes 519:516. */
  readonly nn: number;
  /** Optional NVM Command Support, bytes 521:520. */
  readonly oncs: number;
  /** Fused Operation Support, bytes 523:522. */
  readonly fuses: number;
  /** Format NVM Attributes, byte 524. */
  readonly fna: number;
  /** Volatile Write Cache, byte 525 (bit 0: present). */
  readonly vwc: number;
  /** Atomic Write Unit Normal in logical blocks, bytes 527:526 (0's based). */
  readonly awun: number;
  /** Atomic Write Unit Power Fail in logical blocks, bytes 529:528 (0's based). */
  readonly awupf: number;
  /** I/O Command Set Vendor Specific Command Configuration (NVSCC in 1.x), byte 530. */
  readonly nvscc: number;
  /** Namespace Write Protection Capabilities, byte 531. */
  readonly nwpc: number;
  /** Atomic Compare & Write Unit, bytes 533:532 (0's based). */
  readonly acwu: number;
  /** Optional Copy Formats Supported, bytes 535:534. */
  readonly ocfs: number;
  /** SGL Support, bytes 539:536. */
  readonly sgls: number;
  /** Maximum Number of Allowed Namespaces, bytes 543:540. */
  readonly mnan: number;
  /** Maximum Domain Namespace Attachments, bytes 559:544 (128-bit). */
  readonly maxdna: bigint;
  /** Maximum I/O Controller Namespace Attachments, bytes 563:560. */
  readonly maxcna: number;
  /** NVM Subsystem NVMe Qualified Name, bytes 1023:768, UTF-8, NUL terminated. */
  readonly subnqn: string;
  /** I/O Queue Command Capsule Supported Size in 16-byte units, bytes 1795:1792 (fabrics). */
  readonly ioccsz: number;
  /** I/O Queue Response Capsule Supported Size in 16-byte units, bytes 1799:1796 (fabrics). */
  readonly iorcsz: number;
  /** In Capsule Data Offset in 16-byte units, bytes 1801:1800 (fabrics). */
  readonly icdoff: number;
  /** Fabrics Controller Attributes (FCATT; CTRATTR in 1.x), byte 1802. */
  readonly ctrattr: number;
  /** Maximum SGL Data Block Descriptors, byte 1803 (fabrics). */
  readonly msdbd: number;
  /** Optional Fabric Commands Support, bytes 1805:1804 (fabrics; bit 0: Disconnect). */
  readonly ofcs: number;
  /**
   * Power State Descriptors PSD0..PSD{NPSS}. The structure has room for 32 (bytes 3071:2048),
   * so an NPSS above 31 from a broken device is capped at 32 descriptors; `npss` stays raw.
   */
  readonly psd: readonly PowerStateDescriptor[];
}

function parsePowerState(view: DataView, off: number): PowerStateDescriptor {
  const mp = view.getUint16(off, true);
  const flags = view.getUint8(off + 3);
  const mxps = flags & 0x1;
  return {
    mp,
    mxps,
    nops: (flags & 0x2) !== 0,
    enlat: view.getUint32(off + 4, true),
    exlat: view.getUint32(off + 8, true),
    rrt: view.getUint8(off + 12) & 0x1f,
    rrl: view.getUint8(off + 13) & 0x1f,
    rwt: view.getUint8(off + 14) & 0x1f,
    rwl: view.getUint8(off + 15) & 0x1f,
    idlp: view.getUint16(off + 16, true),
    ips: view.getUint8(off + 18) >>> 6,
    actp: view.getUint16(off + 20, true),
    apw: view.getUint8(off + 22) & 0x7,
    aps: view.getUint8(off + 22) >>> 6,
    maxPowerWatts: mxps ? mp / 10000 : mp / 100,
  };
}

/** PSD0 is at byte 2048; each descriptor is 32 bytes and there are at most 32 (NPSS <= 31). */
const PSD_OFFSET = 2048;
const PSD_SIZE = 32;
const MAX_POWER_STATES = 32;

/** Parse the Identify Controller data structure (CNS 01h). */
export function parseIdentifyController(data: Uint8Array): IdentifyController {
  requireLength(data, IDENTIFY_DATA_SIZE, "Identify Controller data");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const u8 = (o: number) => v.getUint8(o);
  const u16 = (o: number) => v.getUint16(o, true);
  const u32 = (o: number) => v.getUint32(o, true);

  const npss = u8(263);
  const psd: PowerStateDescriptor[] = [];
  // NPSS is 0's based and the structure holds PSD0..PSD31 (bytes 3071:2048). A larger NPSS
  // (the byte goes to 255) would read the vendor specific area, then past the 4 KiB page.
  const psdCount = Math.min(npss + 1, MAX_POWER_STATES);
  for (let i = 0; i < psdCount; i++) psd.push(parsePowerState(v, PSD_OFFSET + PSD_SIZE * i));

  const sqes = u8(512);
  const cqes = u8(513);

  return {
    vid: u16(0),
    ssvid: u16(2),
    sn: asciiField(data, 4, 20),
    mn: asciiField(data, 24, 40),
    fr: asciiField(data, 64, 8),
    rab: u8(72),
    ieee: u8(73) | (u8(74) << 8) | (u8(75) << 16),
    cmic: u8(76),
    mdts: u8(77),
    cntlid: u16(78),
    ver: u32(80),
    rtd3r: u32(84),
    rtd3e: u32(88),
    oaes: u32(92),
    ctratt: u32(96),
    rrls: u16(100),
    cntrltype: u8(111),
    fguid: hexBytes(data, 112, 16),
    crdt1: u16(128),
    crdt2: u16(130),
    crdt3: u16(132),
    nvmsr: u8(253),
    vwci: u8(254),
    mec: u8(255),
    oacs: u16(256),
    acl: u8(258),
    aerl: u8(259),
    frmw: u8(260),
    lpa: u8(261),
    elpe: u8(262),
    npss,
    avscc: u8(264),
    apsta: u8(265),
    wctemp: u16(266),
    cctemp: u16(268),
    mtfa: u16(270),
    hmpre: u32(272),
    hmmin: u32(276),
    tnvmcap: u128(v, 280),
    unvmcap: u128(v, 296),
    rpmbs: u32(312),
    edstt: u16(316),
    dsto: u8(318),
    fwug: u8(319),
    kas: u16(320),
    hctma: u16(322),
    mntmt: u16(324),
    mxtmt: u16(326),
    sanicap: u32(328),
    hmminds: u32(332),
    hmmaxd: u16(336),
    nsetidmax: u16(338),
    endgidmax: u16(340),
    anatt: u8(342),
    anacap: u8(343),
    anagrpmax: u32(344),
    nanagrpid: u32(348),
    pels: u32(352),
    domainid: u16(356),
    megcap: u128(v, 368),
    sqes,
    sqesMin: 2 ** (sqes & 0xf),
    sqesMax: 2 ** (sqes >>> 4),
    cqes,
    cqesMin: 2 ** (cqes & 0xf),
    cqesMax: 2 ** (cqes >>> 4),
    maxcmd: u16(514),
    nn: u32(516),
    oncs: u16(520),
    fuses: u16(522),
    fna: u8(524),
    vwc: u8(525),
    awun: u16(526),
    awupf: u16(528),
    nvscc: u8(530),
    nwpc: u8(531),
    acwu: u16(532),
    ocfs: u16(534),
    sgls: u32(536),
    mnan: u32(540),
    maxdna: u128(v, 544),
    maxcna: u32(560),
    subnqn: utf8Field(data, 768, 256),
    ioccsz: u32(1792),
    iorcsz: u32(1796),
    icdoff: u16(1800),
    ctrattr: u8(1802),
    msdbd: u8(1803),
    ofcs: u16(1804),
    psd,
  };
}

/**
 * "major.minor.tertiary" from a VER field or VS register: MJR bits 31:16, MNR 15:8, TER 7:0.
 * `ver` must be a 32-bit value (unsigned, or signed as `x | 0` leaves it); anything else (NaN, a
 * fraction, wider than 32 bits) is an InvalidArgumentError rather than a made-up "0.0.0".
 */
export function formatVersion(ver: number): string {
  if (!Number.isInteger(ver) || ver < -0x8000_0000 || ver > 0xffff_ffff) {
    throw new InvalidArgumentError(`version ${ver} is not a 32-bit VER / VS value`);
  }
  return `${(ver >>> 16) & 0xffff}.${(ver >>> 8) & 0xff}.${ver & 0xff}`;
}

/**
 * Largest transfer one command may move, in bytes: 2^MDTS pages of CAP.MPSMIN. MDTS 0 means the
 * controller sets no limit, returned as null. MDTS is one byte, so a device may report up to
 * 2^255 pages; a limit that is not a safe integer (above 2^53 bytes) is no limit in practice and
 * is also returned as null rather than as an inexact or infinite number.
 *
 * `mdts` must be an integer in 0..255 and `mpsminBytes` a power of two (CAP.MPSMIN in bytes, as
 * decodeCap's minPageSize gives it); anything else is an InvalidArgumentError.
 */
export function mdtsBytes(mdts: number, mpsminBytes: number): number | null {
  if (!Number.isInteger(mdts) || mdts < 0 || mdts > 0xff) {
    throw new InvalidArgumentError(`MDTS ${mdts} is not an integer in 0..255 (Identify Controller byte 77)`);
  }
  if (!Number.isSafeInteger(mpsminBytes) || mpsminBytes < 1 || 2 ** Math.round(Math.log2(mpsminBytes)) !== mpsminBytes) {
    throw new InvalidArgumentError(`memory page size ${mpsminBytes} is not a power of two in bytes (CAP.MPSMIN)`);
  }
  if (mdts === 0) return null;
  const bytes = mpsminBytes * 2 ** mdts;
  return Number.isSafeInteger(bytes) ? bytes : null;
}

// ---------------------------------------------------------------------------------------------
// Identify Namespace, NVM command set (CNS 00h)
// ---------------------------------------------------------------------------------------------

/** One LBA Format descriptor (4 bytes; LBAF0 at byte 128). */
export interface LbaFormat {
  /** Metadata Size in bytes per logical block, bits 15:0. */
  readonly ms: number;
  /** LBA Data Size as a power of two, bits 23:16 (values below 9 mean the format is not supported). */
  readonly lbads: number;
  /** Relative Performance, bits 25:24: 0 = best .. 3 = degraded. */
  readonly rp: number;
}

export interface IdentifyNamespace {
  /** Namespace Size in logical blocks, bytes 7:0. */
  readonly nsze: bigint;
  /** Namespace Capacity in logical blocks, bytes 15:8. */
  readonly ncap: bigint;
  /** Namespace Utilization in logical blocks, bytes 23:16. */
  readonly nuse: bigint;
  /** Namespace Features, byte 24. */
  readonly nsfeat: number;
  /** Number of LBA Formats, byte 25 (0's based). */
  readonly nlbaf: number;
  /** Formatted LBA Size, byte 26, raw. */
  readonly flbas: number;
  /** Metadata Capabilities, byte 27. */
  readonly mc: number;
  /** End-to-end Data Protection Capabilities, byte 28. */
  readonly dpc: number;
  /** End-to-end Data Protection Type Settings, byte 29. */
  readonly dps: number;
  /** Namespace Multi-path I/O and Namespace Sharing Capabilities, byte 30. */
  readonly nmic: number;
  /** Reservation Capabilities, byte 31. */
  readonly rescap: number;
  /** Format Progress Indicator, byte 32. */
  readonly fpi: number;
  /** Deallocate Logical Block Features, byte 33. */
  readonly dlfeat: number;
  /** Namespace Atomic Write Unit Normal, bytes 35:34 (0's based). */
  readonly nawun: number;
  /** Namespace Atomic Write Unit Power Fail, bytes 37:36 (0's based). */
  readonly nawupf: number;
  /** Namespace Atomic Compare & Write Unit, bytes 39:38 (0's based). */
  readonly nacwu: number;
  /** Namespace Atomic Boundary Size Normal, bytes 41:40. */
  readonly nabsn: number;
  /** Namespace Atomic Boundary Offset, bytes 43:42. */
  readonly nabo: number;
  /** Namespace Atomic Boundary Size Power Fail, bytes 45:44. */
  readonly nabspf: number;
  /** Namespace Optimal I/O Boundary in logical blocks, bytes 47:46. */
  readonly noiob: number;
  /** NVM Capacity in bytes, bytes 63:48 (128-bit). */
  readonly nvmcap: bigint;
  /** Namespace Preferred Write Granularity, bytes 65:64 (0's based). */
  readonly npwg: number;
  /** Namespace Preferred Write Alignment, bytes 67:66 (0's based). */
  readonly npwa: number;
  /** Namespace Preferred Deallocate Granularity, bytes 69:68 (0's based). */
  readonly npdg: number;
  /** Namespace Preferred Deallocate Alignment, bytes 71:70 (0's based). */
  readonly npda: number;
  /** Namespace Optimal Write Size, bytes 73:72 (0's based). */
  readonly nows: number;
  /** Maximum Single Source Range Length (Copy), bytes 75:74. */
  readonly mssrl: number;
  /** Maximum Copy Length, bytes 79:76. */
  readonly mcl: number;
  /** Maximum Source Range Count (Copy), byte 80 (0's based). */
  readonly msrc: number;
  /** Number of Unique Capability LBA Formats, byte 82: formats beyond NLBAF that describe capabilities only. */
  readonly nulbaf: number;
  /** ANA Group Identifier, bytes 95:92. */
  readonly anagrpid: number;
  /** Namespace Attributes, byte 99 (bit 0: write protected). */
  readonly nsattr: number;
  /** NVM Set Identifier, bytes 101:100. */
  readonly nvmsetid: number;
  /** Endurance Group Identifier, bytes 103:102. */
  readonly endgid: number;
  /** Namespace Globally Unique Identifier, bytes 119:104, as 32 hex digits (big endian, byte order). */
  readonly nguid: string;
  /** IEEE Extended Unique Identifier, bytes 127:120, as 16 hex digits (big endian, byte order). */
  readonly eui64: string;
  /** LBA Format 0..NLBAF. */
  readonly lbaf: readonly LbaFormat[];
  /** Index of the format in use: FLBAS bits 3:0, with bits 6:5 as index bits 5:4. */
  readonly formatIndex: number;
  /** FLBAS bit 4: metadata is transferred at the end of each data block (extended LBA) rather than in a separate buffer. */
  readonly extendedMetadata: boolean;
  /** Logical block size in bytes of the format in use (2^LBADS); 0 for an inactive namespace. */
  readonly lbaSize: number;
  /** Metadata bytes per block of the format in use; 0 for an inactive namespace. */
  readonly metadataSize: number;
  /** False for an inactive NSID, which the controller reports as an all-zero structure (NSZE 0). */
  readonly isActive: boolean;
}

/** NLBAF is 0's based and the NVM command set defines at most 64 formats (bytes 383:128). */
const MAX_LBA_FORMATS = 64;
/** LBAF0 is at byte 128, 4 bytes each. */
const LBAF_OFFSET = 128;

/** Parse the Identify Namespace data structure for the NVM command set (CNS 00h). */
export function parseIdentifyNamespace(data: Uint8Array): IdentifyNamespace {
  requireLength(data, IDENTIFY_DATA_SIZE, "Identify Namespace data");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const u8 = (o: number) => v.getUint8(o);
  const u16 = (o: number) => v.getUint16(o, true);
  const u32 = (o: number) => v.getUint32(o, true);
  const u64 = (o: number) => v.getBigUint64(o, true);

  const nsze = u64(0);
  const nlbaf = u8(25);
  const flbas = u8(26);
  const count = Math.min(nlbaf + 1, MAX_LBA_FORMATS);
  const lbaf: LbaFormat[] = [];
  for (let i = 0; i < count; i++) {
    const d = u32(LBAF_OFFSET + 4 * i);
    lbaf.push({ ms: d & 0xffff, lbads: (d >>> 16) & 0xff, rp: (d >>> 24) & 0x3 });
  }
  // Bits 6:5 are reserved (zero) when there are 16 or fewer formats, so combining them
  // unconditionally is safe.
  const formatIndex = (flbas & 0xf) | (((flbas >>> 5) & 0x3) << 4);
  const isActive = nsze !== 0n;

  let lbaSize = 0;
  let metadataSize = 0;
  if (isActive) {
    const current = lbaf[formatIndex];
    if (current === undefined) {
      throw new ParseError(
        `Identify Namespace: FLBAS (byte 26) = 0x${flbas.toString(16).padStart(2, "0")} selects LBA format ${formatIndex}, ` +
          `but NLBAF (byte 25) = ${nlbaf} reports only ${count} formats (bytes 128..${127 + 4 * count})`,
      );
    }
    // LBADS below 9 (512 bytes) marks an unsupported format; above 2^30 is not a block size any
    // device uses and would not fit the arithmetic callers do with it.
    if (current.lbads < 9 || current.lbads > 30) {
      throw new ParseError(
        `Identify Namespace: LBA format ${formatIndex} in use (LBAF${formatIndex}, byte ${LBAF_OFFSET + 4 * formatIndex + 2}) ` +
          `has LBADS ${current.lbads}, which is not a valid block size (9..30)`,
      );
    }
    lbaSize = 2 ** current.lbads;
    metadataSize = current.ms;
  }

  return {
    nsze,
    ncap: u64(8),
    nuse: u64(16),
    nsfeat: u8(24),
    nlbaf,
    flbas,
    mc: u8(27),
    dpc: u8(28),
    dps: u8(29),
    nmic: u8(30),
    rescap: u8(31),
    fpi: u8(32),
    dlfeat: u8(33),
    nawun: u16(34),
    nawupf: u16(36),
    nacwu: u16(38),
    nabsn: u16(40),
    nabo: u16(42),
    nabspf: u16(44),
    noiob: u16(46),
    nvmcap: u128(v, 48),
    npwg: u16(64),
    npwa: u16(66),
    npdg: u16(68),
    npda: u16(70),
    nows: u16(72),
    mssrl: u16(74),
    mcl: u32(76),
    msrc: u8(80),
    nulbaf: u8(82),
    anagrpid: u32(92),
    nsattr: u8(99),
    nvmsetid: u16(100),
    endgid: u16(102),
    nguid: hexBytes(data, 104, 16),
    eui64: hexBytes(data, 120, 8),
    lbaf,
    formatIndex,
    extendedMetadata: (flbas & 0x10) !== 0,
    lbaSize,
    metadataSize,
    isActive,
  };
}

// ---------------------------------------------------------------------------------------------
// Active Namespace ID list (CNS 02h)
// ---------------------------------------------------------------------------------------------

/**
 * Parse an Active Namespace ID list: up to 1024 NSIDs in increasing order, the list ending at the
 * first zero entry. To continue past 1024, issue CNS 02h again with NSID = the last one returned.
 */
export function parseNamespaceList(data: Uint8Array): number[] {
  requireLength(data, IDENTIFY_DATA_SIZE, "Active Namespace ID list");
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: number[] = [];
  for (let i = 0; i < IDENTIFY_DATA_SIZE / 4; i++) {
    const nsid = v.getUint32(4 * i, true);
    if (nsid === 0) break;
    out.push(nsid);
  }
  return out;
}
