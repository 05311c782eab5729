/**
 * NVMe over Fabrics commands and structures (NVMe Base Specification 2.0, 6 "Fabrics Command
 * Set"; NVMe over Fabrics 1.1): Connect with its data, Property Get/Set (the registers of a
 * fabrics controller), their status codes, and the Discovery Log Page (5.16.1.23). Builders return
 * the plain `Command` of commands.ts: FCTYPE (byte 4) travels in the NSID dword, the SGL in the
 * DPTR dwords is the transport's to fill.
 */
import { InvalidArgumentError, ParseError } from "../errors.ts";
import type { Command } from "./commands.ts";

/** Fabrics command opcode (Base 2.0, figure "Fabrics Command Opcodes"). */
export const FABRICS_OPCODE = 0x7f;

// Fabrics Command Type (FCTYPE, byte 4)
export const FCTYPE_PROPERTY_SET = 0x00;
export const FCTYPE_CONNECT = 0x01;
export const FCTYPE_PROPERTY_GET = 0x04;
export const FCTYPE_AUTHENTICATION_SEND = 0x05;
export const FCTYPE_AUTHENTICATION_RECEIVE = 0x06;
export const FCTYPE_DISCONNECT = 0x08;

/** Connect data: 1024 bytes (figure "Connect Command Data"). */
export const CONNECT_DATA_SIZE = 1024;
/** NQNs are at most 223 bytes of UTF-8 (Base 2.0, 4.5 "NVMe Qualified Names"), NUL-terminated in a 256-byte field. */
export const NQN_MAX = 223;
/** The well-known NQN of discovery controllers. */
export const DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery";
/** Admin Connect asks for a dynamic controller with CNTLID FFFFh. */
export const CNTLID_DYNAMIC = 0xffff;

/** Connect's CATTR bit 2: the host disables SQ flow control (then the controller reports SQHD FFFFh). */
export const CATTR_DISABLE_SQ_FLOW_CONTROL = 1 << 2;

// Connect's command-specific statuses (SCT 1; figure "Connect Command Specific Status Values") and
// the fabrics ones that may end other commands.
export const SC_CONNECT_INCOMPATIBLE_FORMAT = 0x80;
export const SC_CONNECT_CONTROLLER_BUSY = 0x81;
export const SC_CONNECT_INVALID_PARAMETERS = 0x82;
export const SC_CONNECT_RESTART_DISCOVERY = 0x83;
export const SC_CONNECT_INVALID_HOST = 0x84;
export const SC_DISCOVER_RESTART = 0x90;
export const SC_AUTH_REQUIRED = 0x91;

const FABRICS_STATUS: ReadonlyMap<number, string> = new Map([
  [SC_CONNECT_INCOMPATIBLE_FORMAT, "Connect Incompatible Format"],
  [SC_CONNECT_CONTROLLER_BUSY, "Connect Controller Busy"],
  [SC_CONNECT_INVALID_PARAMETERS, "Connect Invalid Parameters"],
  [SC_CONNECT_RESTART_DISCOVERY, "Connect Restart Discovery"],
  [SC_CONNECT_INVALID_HOST, "Connect Invalid Host"],
  [SC_DISCOVER_RESTART, "Discover Restart"],
  [SC_AUTH_REQUIRED, "Authentication Required"],
]);

/** The name of a command-specific (SCT 1) status of a Fabrics command, or undefined for the generic tables. */
export function fabricsStatusName(sct: number, sc: number): string | undefined {
  return sct === 1 ? FABRICS_STATUS.get(sc) : undefined;
}

/** The name of a Fabrics command for messages, by FCTYPE. */
export function fabricsCommandName(fctype: number): string {
  switch (fctype) {
    case FCTYPE_PROPERTY_SET:
      return "Property Set";
    case FCTYPE_CONNECT:
      return "Connect";
    case FCTYPE_PROPERTY_GET:
      return "Property Get";
    case FCTYPE_AUTHENTICATION_SEND:
      return "Authentication Send";
    case FCTYPE_AUTHENTICATION_RECEIVE:
      return "Authentication Receive";
    case FCTYPE_DISCONNECT:
      return "Disconnect";
    default:
      return `Fabrics 0x${fctype.toString(16).padStart(2, "0")}`;
  }
}

export interface ConnectFields {
  /** Queue ID: 0 for the admin queue. */
  readonly qid: number;
  /** Entries of the submission queue (SQSIZE is 0's based: entries - 1). */
  readonly entries: number;
  /** Connect Attributes (CATTR): bit 2 disables SQ flow control. Defaults to 0. */
  readonly cattr?: number;
  /** Keep Alive Timeout in milliseconds (admin queue only; 0: none). Defaults to 0. */
  readonly katoMs?: number;
}

/**
 * Connect (Base 2.0, 6.3): RECFMT 0 and QID in CDW10 (bytes 40-43), SQSIZE and CATTR in CDW11
 * (44-47), KATO in CDW12 (48-51). Its 1024 bytes of data (connectData()) go in the capsule or by R2T.
 */
export function connect(f: ConnectFields): Command {
  if (!Number.isInteger(f.qid) || f.qid < 0 || f.qid > 0xfffe) throw new InvalidArgumentError(`Connect QID ${f.qid}: 0 (admin) to 65534`);
  if (!Number.isInteger(f.entries) || f.entries < 2 || f.entries > 0x10000) throw new InvalidArgumentError(`Connect SQSIZE: a queue of ${f.entries} entries (2 to 65536)`);
  const kato = f.katoMs ?? 0;
  if (!Number.isInteger(kato) || kato < 0 || kato > 0xffffffff) throw new InvalidArgumentError(`Keep Alive Timeout ${kato} ms is not a 32-bit count of milliseconds`);
  return {
    opcode: FABRICS_OPCODE,
    nsid: FCTYPE_CONNECT,
    cdw10: (f.qid & 0xffff) << 16, // RECFMT 0 in bits 15:00
    cdw11: ((f.entries - 1) & 0xffff) | (((f.cattr ?? 0) & 0xff) << 16),
    cdw12: kato,
  };
}

/** Write `s` NUL-padded into a `size`-byte field of `out` at `off`; InvalidArgumentError when it does not fit. */
function putString(out: Uint8Array, off: number, size: number, s: string, what: string): void {
  const b = new TextEncoder().encode(s);
  if (b.length > Math.min(size - 1, NQN_MAX)) throw new InvalidArgumentError(`${what} "${s}" is ${b.length} bytes: an NQN has at most ${NQN_MAX}`);
  out.set(b, off);
}

/**
 * Connect data (figure "Connect Command Data"): HOSTID (16-byte UUID) at 0, CNTLID at 16, SUBNQN at
 * 256, HOSTNQN at 512, NUL-terminated, the rest zero.
 */
export function connectData(hostId: Uint8Array, cntlid: number, subnqn: string, hostnqn: string): Uint8Array {
  if (hostId.length !== 16) throw new InvalidArgumentError(`HOSTID must be 16 bytes (a UUID), got ${hostId.length}`);
  const d = new Uint8Array(CONNECT_DATA_SIZE);
  d.set(hostId, 0);
  d[16] = cntlid & 0xff;
  d[17] = (cntlid >>> 8) & 0xff;
  putString(d, 256, 256, subnqn, "SUBNQN");
  putString(d, 512, 256, hostnqn, "HOSTNQN");
  return d;
}

/** What a successful Connect answers in DW0 (figure "Connect Response"). */
export interface ConnectResult {
  readonly cntlid: number;
  /** Authentication Requirements (AUTHREQ): non-zero means DH-HMAC-CHAP or TLS must follow. */
  readonly authreq: number;
}

export function decodeConnectResult(dw0: number): ConnectResult {
  return { cntlid: dw0 & 0xffff, authreq: (dw0 >>> 16) & 0xffff };
}

/** DW0 of a Connect that failed with Invalid Parameters: which byte was wrong (IATTR, IPO). */
export function connectInvalidParameter(dw0: number): { readonly inData: boolean; readonly offset: number } {
  return { inData: ((dw0 >>> 16) & 1) === 1, offset: dw0 & 0xffff };
}

/** Property Get (6.5): ATTRIB bit 0 (size: 0 four bytes, 1 eight) in byte 40, OFST at 44. */
export function propertyGet(offset: number, size: 4 | 8): Command {
  return { opcode: FABRICS_OPCODE, nsid: FCTYPE_PROPERTY_GET, cdw10: size === 8 ? 1 : 0, cdw11: offset >>> 0 };
}

/** Property Set (6.6): ATTRIB in byte 40, OFST at 44, VALUE at 48-55. */
export function propertySet(offset: number, value: number, size: 4 | 8 = 4, valueHi = 0): Command {
  return { opcode: FABRICS_OPCODE, nsid: FCTYPE_PROPERTY_SET, cdw10: size === 8 ? 1 : 0, cdw11: offset >>> 0, cdw12: value >>> 0, cdw13: valueHi >>> 0 };
}

// ---- Discovery Log Page (LID 70h) ----------------------------------------------------------

export const LID_DISCOVERY = 0x70;
/** Header and each entry of the Discovery Log Page are 1024 bytes. */
export const DISCOVERY_RECORD_SIZE = 1024;

/** Transport Type (TRTYPE). */
export const TRTYPE_RDMA = 1;
export const TRTYPE_FC = 2;
export const TRTYPE_TCP = 3;
export const TRTYPE_LOOP = 0xfe;
/** Subsystem Type (SUBTYPE). */
export const SUBTYPE_REFERRAL = 1;
export const SUBTYPE_NVM = 2;
export const SUBTYPE_CURRENT_DISCOVERY = 3;

export interface DiscoveryEntry {
  /** Transport Type: 3 TCP, 1 RDMA, 2 FC, FEh loop. */
  readonly trtype: number;
  /** Address Family: 1 IPv4, 2 IPv6, 3 InfiniBand, 4 FC, FEh intra host. */
  readonly adrfam: number;
  /** 1 referral to another discovery service, 2 NVM subsystem, 3 this discovery subsystem. */
  readonly subtype: number;
  /** Transport Requirements: bits 1:0 secure channel, bit 2 SQ flow control disable supported. */
  readonly treq: number;
  readonly portid: number;
  /** FFFFh: dynamic controllers. */
  readonly cntlid: number;
  /** Admin Max SQ Size. */
  readonly asqsz: number;
  readonly eflags: number;
  /** Transport Service Identifier: the TCP port, as text. */
  readonly trsvcid: string;
  readonly subnqn: string;
  /** Transport Address: the IP address, as text. */
  readonly traddr: string;
  /** TCP Security Type (TSAS byte 0): 0 none, 1 TLS 1.2, 2 TLS 1.3. */
  readonly sectype: number;
}

export interface DiscoveryLog {
  /** Generation Counter: changes whenever the log does. */
  readonly genctr: bigint;
  /** Number of Records the controller holds (may exceed the entries read). */
  readonly numrec: number;
  readonly recfmt: number;
  readonly entries: DiscoveryEntry[];
}

/** A fixed-size text field: up to the first NUL, trailing spaces trimmed. */
function text(b: Uint8Array, off: number, size: number): string {
  const f = b.subarray(off, off + size);
  const end = f.indexOf(0);
  return new TextDecoder().decode(end >= 0 ? f.subarray(0, end) : f).trimEnd();
}

/** Parse the header (1024 bytes) and as many whole entries as `b` holds (up to NUMREC). */
export function parseDiscoveryLog(b: Uint8Array): DiscoveryLog {
  if (b.length < DISCOVERY_RECORD_SIZE) throw new ParseError(`Discovery Log Page: ${b.length} bytes, the header alone is ${DISCOVERY_RECORD_SIZE}`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const genctr = v.getBigUint64(0, true);
  const numrec64 = v.getBigUint64(8, true);
  if (numrec64 > 0xffffn) throw new ParseError(`Discovery Log Page: NUMREC ${numrec64} is not a plausible number of records`);
  const numrec = Number(numrec64);
  const recfmt = v.getUint16(16, true);
  const entries: DiscoveryEntry[] = [];
  const have = Math.min(numrec, Math.floor(b.length / DISCOVERY_RECORD_SIZE) - 1);
  for (let i = 0; i < have; i++) {
    const o = DISCOVERY_RECORD_SIZE * (i + 1);
    entries.push({
      trtype: b[o]!,
      adrfam: b[o + 1]!,
      subtype: b[o + 2]!,
      treq: b[o + 3]!,
      portid: v.getUint16(o + 4, true),
      cntlid: v.getUint16(o + 6, true),
      asqsz: v.getUint16(o + 8, true),
      eflags: v.getUint16(o + 10, true),
      trsvcid: text(b, o + 32, 32),
      subnqn: text(b, o + 256, 256),
      traddr: text(b, o + 512, 256),
      sectype: b[o + 768]!,
    });
  }
  return { genctr, numrec, recfmt, entries };
}

/** Build a Discovery Log Page (the inverse of parseDiscoveryLog), for test targets. */
export function encodeDiscoveryLog(genctr: bigint, entries: readonly DiscoveryEntry[]): Uint8Array {
  const b = new Uint8Array(DISCOVERY_RECORD_SIZE * (entries.length + 1));
  const v = new DataView(b.buffer);
  v.setBigUint64(0, genctr, true);
  v.setBigUint64(8, BigInt(entries.length), true);
  const enc = new TextEncoder();
  entries.forEach((e, i) => {
    const o = DISCOVERY_RECORD_SIZE * (i + 1);
    b[o] = e.trtype;
    b[o + 1] = e.adrfam;
    b[o + 2] = e.subtype;
    b[o + 3] = e.treq;
    v.setUint16(o + 4, e.portid, true);
    v.setUint16(o + 6, e.cntlid, true);
    v.setUint16(o + 8, e.asqsz, true);
    v.setUint16(o + 10, e.eflags, true);
    // TRSVCID and TRADDR are space padded (ASCII), NQNs NUL padded.
    b.fill(0x20, o + 32, o + 64);
    b.set(enc.encode(e.trsvcid).subarray(0, 32), o + 32);
    b.set(enc.encode(e.subnqn).subarray(0, 255), o + 256);
    b.fill(0x20, o + 512, o + 768);
    b.set(enc.encode(e.traddr).subarray(0, 256), o + 512);
    b[o + 768] = e.sectype;
  });
  return b;
}
