/**
 * NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, 3.6 "PDU Formats"): the common header,
 * ICReq/ICResp, CapsuleCmd/CapsuleResp, H2CData/C2HData, R2T and the termination requests, as
 * encoders and parsers over bytes. Every field little endian, named as the specification names
 * it. The connection's hot path (connection.ts) reads and writes the same offsets in place; these
 * functions are what the tests check against hand-written bytes and what test targets speak.
 *
 * On the wire: [CH 8][PSH HLEN-8][HDGST 4?][PAD?][DATA?][DDGST 4?]; PDO is the offset of DATA.
 */
import { crc32c } from "./crc32c.ts";

/** PDU-TYPE (byte 0). */
export const enum PduType {
  ICReq = 0x00,
  ICResp = 0x01,
  H2CTermReq = 0x02,
  C2HTermReq = 0x03,
  CapsuleCmd = 0x04,
  CapsuleResp = 0x05,
  H2CData = 0x06,
  C2HData = 0x07,
  R2T = 0x09,
}

export const PDU_TYPE_NAMES: Readonly<Record<number, string>> = {
  0x00: "ICReq",
  0x01: "ICResp",
  0x02: "H2CTermReq",
  0x03: "C2HTermReq",
  0x04: "CapsuleCmd",
  0x05: "CapsuleResp",
  0x06: "H2CData",
  0x07: "C2HData",
  0x09: "R2T",
};

export function pduTypeName(t: number): string {
  return PDU_TYPE_NAMES[t] ?? `unknown PDU type 0x${t.toString(16).padStart(2, "0")}`;
}

// FLAGS (byte 1)
/** HDGSTF: a header digest follows the header. */
export const FLAG_HDGSTF = 0x01;
/** DDGSTF: a data digest follows the data. */
export const FLAG_DDGSTF = 0x02;
/** LAST_PDU (H2CData, C2HData): the last data PDU of the transfer (or of the R2T). */
export const FLAG_LAST_PDU = 0x04;
/** SUCCESS (C2HData): with LAST_PDU, the command completed successfully and no CapsuleResp follows. */
export const FLAG_SUCCESS = 0x08;

/** Common header: PDU-TYPE, FLAGS, HLEN, PDO, PLEN. */
export const CH_SIZE = 8;
export const ICREQ_SIZE = 128;
export const ICRESP_SIZE = 128;
/** CapsuleCmd header: CH + the 64-byte SQE. */
export const CAPSULE_CMD_HLEN = 72;
/** CapsuleResp, H2CData, C2HData, R2T and the TermReqs: CH + 16 bytes. */
export const SHORT_HLEN = 24;
export const DIGEST_SIZE = 4;
/** Termination requests carry at most 128 bytes of the offending PDU header (3.6.2.3). */
export const TERM_REQ_MAX_DATA = 128;
/** MAXH2CDATA may not be below 4096 (3.6.2.3, ICResp). */
export const MIN_MAXH2CDATA = 4096;
/** Initialize Connection PDU Format Version. */
export const PFV_1_0 = 0;

/** Fatal Error Status (FES) of a termination request. */
export const enum Fes {
  InvalidHeaderField = 0x01,
  PduSequenceError = 0x02,
  HeaderDigestError = 0x03,
  DataTransferOutOfRange = 0x04,
  R2TLimitExceeded = 0x05,
  UnsupportedParameter = 0x06,
}

const FES_NAMES: Readonly<Record<number, string>> = {
  1: "Invalid PDU Header Field",
  2: "PDU Sequence Error",
  3: "Header Digest Error",
  4: "Data Transfer Out of Range",
  5: "R2T Limit Exceeded / Data Transfer Limit Exceeded",
  6: "Unsupported Parameter",
};

export function fesName(fes: number): string {
  return FES_NAMES[fes] ?? `reserved FES 0x${fes.toString(16)}`;
}

export interface CommonHeader {
  readonly type: number;
  readonly flags: number;
  /** Header length: CH + PDU specific header, without the header digest. */
  readonly hlen: number;
  /** PDU Data Offset: where the data starts (0: none). */
  readonly pdo: number;
  /** PDU Length: the whole PDU, digests and padding included. */
  readonly plen: number;
}

export function parseCommonHeader(b: Uint8Array, o = 0): CommonHeader {
  return { type: b[o]!, flags: b[o + 1]!, hlen: b[o + 2]!, pdo: b[o + 3]!, plen: u32(b, o + 4) };
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

function putCh(b: Uint8Array, type: number, flags: number, hlen: number, pdo: number, plen: number): void {
  b[0] = type;
  b[1] = flags;
  b[2] = hlen;
  b[3] = pdo;
  put32(b, 4, plen);
}

export interface Digests {
  /** Header digest (HDGST) on every PDU that may carry one. */
  readonly header: boolean;
  /** Data digest (DDGST) on every PDU with data. */
  readonly data: boolean;
}

const NO_DIGESTS: Digests = { header: false, data: false };

/** Append the header digest over b[0, hlen) at hlen. */
function putHeaderDigest(b: Uint8Array, hlen: number): void {
  put32(b, hlen, crc32c(b.subarray(0, hlen)));
}

// ---- ICReq / ICResp (3.6.2.2, 3.6.2.3) ------------------------------------------------------

export interface IcReq {
  /** PDU Format Version: 0. */
  readonly pfv: number;
  /** Host PDU Data Alignment: C2H data starts at a multiple of (HPDA+1) dwords. */
  readonly hpda: number;
  readonly digests: Digests;
  /** Maximum Number of Outstanding R2T per command, 0's based. */
  readonly maxr2t: number;
}

export function encodeIcReq(r: IcReq): Uint8Array {
  const b = new Uint8Array(ICREQ_SIZE);
  putCh(b, PduType.ICReq, 0, ICREQ_SIZE, 0, ICREQ_SIZE);
  put16(b, 8, r.pfv);
  b[10] = r.hpda;
  b[11] = (r.digests.header ? 1 : 0) | (r.digests.data ? 2 : 0);
  put32(b, 12, r.maxr2t);
  return b;
}

export function parseIcReq(b: Uint8Array): IcReq {
  return { pfv: u16(b, 8), hpda: b[10]!, digests: { header: (b[11]! & 1) !== 0, data: (b[11]! & 2) !== 0 }, maxr2t: u32(b, 12) };
}

export interface IcResp {
  readonly pfv: number;
  /** Controller PDU Data Alignment: H2C and in-capsule data start at a multiple of (CPDA+1) dwords. */
  readonly cpda: number;
  /** What the controller enabled. */
  readonly digests: Digests;
  /** Maximum H2C Data Length: bytes of data per H2CData PDU. */
  readonly maxh2cdata: number;
}

export function encodeIcResp(r: IcResp): Uint8Array {
  const b = new Uint8Array(ICRESP_SIZE);
  putCh(b, PduType.ICResp, 0, ICRESP_SIZE, 0, ICRESP_SIZE);
  put16(b, 8, r.pfv);
  b[10] = r.cpda;
  b[11] = (r.digests.header ? 1 : 0) | (r.digests.data ? 2 : 0);
  put32(b, 12, r.maxh2cdata);
  return b;
}

export function parseIcResp(b: Uint8Array): IcResp {
  return { pfv: u16(b, 8), cpda: b[10]!, digests: { header: (b[11]! & 1) !== 0, data: (b[11]! & 2) !== 0 }, maxh2cdata: u32(b, 12) };
}

// ---- CapsuleCmd / CapsuleResp (3.6.2.4, 3.6.2.5) -------------------------------------------

/**
 * A CapsuleCmd: the 64-byte SQE, then in-capsule data if any. Digests as negotiated (the data
 * digest only with data).
 */
export function encodeCapsuleCmd(sqe: Uint8Array, data: Uint8Array | undefined, d: Digests = NO_DIGESTS): Uint8Array {
  if (sqe.length !== 64) throw new RangeError(`an SQE is 64 bytes, got ${sqe.length}`);
  const hd = d.header ? DIGEST_SIZE : 0;
  const len = data?.length ?? 0;
  const dd = d.data && len > 0 ? DIGEST_SIZE : 0;
  const pdo = len > 0 ? CAPSULE_CMD_HLEN + hd : 0;
  const plen = CAPSULE_CMD_HLEN + hd + len + dd;
  const b = new Uint8Array(plen);
  putCh(b, PduType.CapsuleCmd, (hd ? FLAG_HDGSTF : 0) | (dd ? FLAG_DDGSTF : 0), CAPSULE_CMD_HLEN, pdo, plen);
  b.set(sqe, CH_SIZE);
  if (hd) putHeaderDigest(b, CAPSULE_CMD_HLEN);
  if (len > 0) {
    b.set(data!, pdo);
    if (dd) put32(b, pdo + len, crc32c(data!));
  }
  return b;
}

export interface CapsuleCmd {
  readonly header: CommonHeader;
  /** The SQE's 64 bytes. */
  readonly sqe: Uint8Array;
  readonly data: Uint8Array;
}

export function parseCapsuleCmd(b: Uint8Array): CapsuleCmd {
  const header = parseCommonHeader(b);
  const end = header.pdo > 0 ? header.plen - ((header.flags & FLAG_DDGSTF) !== 0 ? DIGEST_SIZE : 0) : header.pdo;
  return { header, sqe: b.slice(CH_SIZE, CH_SIZE + 64), data: header.pdo > 0 ? b.slice(header.pdo, end) : new Uint8Array(0) };
}

/** The 16-byte CQE fields a CapsuleResp carries (Base 2.0, 4.6 "Completion Queue Entry"). */
export interface Cqe {
  /** DW0: command specific (Connect: CNTLID; Property Get: the low dword). */
  readonly dw0: number;
  /** DW1: command specific (Property Get: the high dword). */
  readonly dw1: number;
  /** SQ Head Pointer (SQHD): FFFFh with SQ flow control disabled. */
  readonly sqhd: number;
  readonly sqid: number;
  readonly cid: number;
  /** The 15-bit Status Field (DW3 bits 31:17); the phase bit means nothing over fabrics. */
  readonly status: number;
}

export function encodeCapsuleResp(c: Cqe, d: Digests = NO_DIGESTS): Uint8Array {
  const hd = d.header ? DIGEST_SIZE : 0;
  const b = new Uint8Array(SHORT_HLEN + hd);
  putCh(b, PduType.CapsuleResp, hd ? FLAG_HDGSTF : 0, SHORT_HLEN, 0, SHORT_HLEN + hd);
  put32(b, 8, c.dw0);
  put32(b, 12, c.dw1);
  put32(b, 16, (c.sqhd & 0xffff) | ((c.sqid & 0xffff) << 16));
  put32(b, 20, ((c.cid & 0xffff) | ((c.status & 0x7fff) << 17)) >>> 0);
  if (hd) putHeaderDigest(b, SHORT_HLEN);
  return b;
}

export function parseCapsuleResp(b: Uint8Array): Cqe {
  const dw2 = u32(b, 16);
  const dw3 = u32(b, 20);
  return { dw0: u32(b, 8), dw1: u32(b, 12), sqhd: dw2 & 0xffff, sqid: dw2 >>> 16, cid: dw3 & 0xffff, status: dw3 >>> 17 };
}

// ---- H2CData / C2HData / R2T (3.6.2.6 - 3.6.2.8) -------------------------------------------

export interface DataPdu {
  /** Command Capsule CID (CCCID). */
  readonly cccid: number;
  /** H2CData: Transfer Tag (TTAG) from the R2T; 0 in C2HData. */
  readonly ttag: number;
  /** Data Offset (DATAO): where the data sits in the command's transfer. */
  readonly datao: number;
  /** LAST_PDU, SUCCESS (C2HData). */
  readonly flags: number;
}

function encodeData(type: number, p: DataPdu, data: Uint8Array, d: Digests): Uint8Array {
  const hd = d.header ? DIGEST_SIZE : 0;
  const dd = d.data ? DIGEST_SIZE : 0;
  const pdo = SHORT_HLEN + hd;
  const plen = pdo + data.length + dd;
  const b = new Uint8Array(plen);
  putCh(b, type, p.flags | (hd ? FLAG_HDGSTF : 0) | (dd ? FLAG_DDGSTF : 0), SHORT_HLEN, pdo, plen);
  put16(b, 8, p.cccid);
  put16(b, 10, type === PduType.H2CData ? p.ttag : 0);
  put32(b, 12, p.datao);
  put32(b, 16, data.length);
  if (hd) putHeaderDigest(b, SHORT_HLEN);
  b.set(data, pdo);
  if (dd) put32(b, pdo + data.length, crc32c(data));
  return b;
}

export function encodeH2CData(p: DataPdu, data: Uint8Array, d: Digests = NO_DIGESTS): Uint8Array {
  return encodeData(PduType.H2CData, p, data, d);
}

export function encodeC2HData(p: Omit<DataPdu, "ttag">, data: Uint8Array, d: Digests = NO_DIGESTS): Uint8Array {
  return encodeData(PduType.C2HData, { ...p, ttag: 0 }, data, d);
}

export interface ParsedDataPdu extends DataPdu {
  readonly header: CommonHeader;
  /** Data Length (DATAL). */
  readonly datal: number;
  readonly data: Uint8Array;
}

export function parseDataPdu(b: Uint8Array): ParsedDataPdu {
  const header = parseCommonHeader(b);
  const datal = u32(b, 16);
  return { header, cccid: u16(b, 8), ttag: u16(b, 10), datao: u32(b, 12), datal, flags: header.flags, data: b.slice(header.pdo, header.pdo + datal) };
}

export interface R2t {
  readonly cccid: number;
  readonly ttag: number;
  /** R2T Offset (R2TO): where in the command's data the host sends from. */
  readonly r2to: number;
  /** R2T Length (R2TL): bytes the host may send now. */
  readonly r2tl: number;
}

export function encodeR2t(r: R2t, d: Digests = NO_DIGESTS): Uint8Array {
  const hd = d.header ? DIGEST_SIZE : 0;
  const b = new Uint8Array(SHORT_HLEN + hd);
  putCh(b, PduType.R2T, hd ? FLAG_HDGSTF : 0, SHORT_HLEN, 0, SHORT_HLEN + hd);
  put16(b, 8, r.cccid);
  put16(b, 10, r.ttag);
  put32(b, 12, r.r2to);
  put32(b, 16, r.r2tl);
  if (hd) putHeaderDigest(b, SHORT_HLEN);
  return b;
}

export function parseR2t(b: Uint8Array): R2t {
  return { cccid: u16(b, 8), ttag: u16(b, 10), r2to: u32(b, 12), r2tl: u32(b, 16) };
}

// ---- H2CTermReq / C2HTermReq (3.6.2.9) ------------------------------------------------------

export interface TermReq {
  /** Fatal Error Status. */
  readonly fes: number;
  /** Fatal Error Information: the offending field's byte offset (FES 1), or the limit (FES 5). */
  readonly fei: number;
  /** Up to 128 bytes of the PDU header that caused it. */
  readonly data: Uint8Array;
}

/** A termination request: never digests (3.6.2.9). */
export function encodeTermReq(type: PduType.H2CTermReq | PduType.C2HTermReq, t: TermReq): Uint8Array {
  const data = t.data.subarray(0, TERM_REQ_MAX_DATA);
  const plen = SHORT_HLEN + data.length;
  const b = new Uint8Array(plen);
  putCh(b, type, 0, SHORT_HLEN, data.length > 0 ? SHORT_HLEN : 0, plen);
  put16(b, 8, t.fes);
  put32(b, 10, t.fei);
  b.set(data, SHORT_HLEN);
  return b;
}

export function parseTermReq(b: Uint8Array): TermReq {
  return { fes: u16(b, 8), fei: u32(b, 10), data: b.slice(SHORT_HLEN, Math.min(u32(b, 4), b.length)) };
}

/** SGL Descriptor Type/Sub Type byte (Base 2.0, 4.3.2) of the two descriptors NVMe/TCP uses. */
export const enum SglId {
  /** Data Block, Offset: in-capsule data at ICDOFF + address. */
  InCapsule = 0x01,
  /** Transport Data Block, transport specific sub type 0xA: data by C2HData or R2T + H2CData. */
  Transport = 0x5a,
}
/** PSDT 01b (SGLs, metadata in one buffer) in CDW0 bits 15:14: required on every fabrics command. */
export const CDW0_PSDT_SGL = 1 << 14;
