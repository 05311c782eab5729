/**
 * A scriptable NVMe/TCP target (a subsystem with two namespaces in memory, and a discovery
 * controller), run in a Worker: libnvm's initiator blocks in C socket calls on the test's thread,
 * so the target needs an event loop of its own. It speaks the protocol from lib/transports/tcp/pdu.ts
 * and computes digests with the TypeScript CRC-32C (the oracle, not the C code under test), and on
 * request it misbehaves: malformed or out-of-order PDUs, wrong digests, stalls, truncated streams,
 * termination requests, refused Connects, a port that goes away and comes back.
 *
 * Messages in: { type: "set", faults } (merged), { type: "listen" }, { type: "unlisten" } (closes
 * every connection too), { type: "stats" }, { type: "peek", nsid, offset, length }, { type: "poke", ... }.
 * Messages out: { type: "listening", port }, { type: "ok" }, { type: "stats", ... }, { type: "data", bytes }.
 */
import { parentPort } from "node:worker_threads";
import type { Socket, TCPSocketListener } from "bun";
import { crc32c } from "../../../lib/transports/tcp/crc32c.ts";
import {
  encodeC2HData,
  encodeCapsuleResp,
  encodeIcResp,
  encodeR2t,
  encodeTermReq,
  FLAG_DDGSTF,
  FLAG_HDGSTF,
  FLAG_LAST_PDU,
  FLAG_SUCCESS,
  parseCommonHeader,
  parseIcReq,
  PduType,
  type Digests,
} from "../../../lib/transports/tcp/pdu.ts";
import { DISCOVERY_NQN, encodeDiscoveryLog } from "../../../lib/spec/fabrics.ts";

export interface Faults {
  /** ICResp overrides. */
  icresp?: { digests?: Digests; cpda?: number; maxh2cdata?: number; pfv?: number; type?: number; close?: boolean };
  /** C2HData PDUs of at most this many bytes (default: one PDU). */
  c2hChunk?: number;
  /** R2Ts of at most this many bytes (default: one R2T for all). */
  r2tChunk?: number;
  /** MAXH2CDATA in the ICResp (default 64 KiB, so large writes split into several H2CData). */
  maxh2cdata?: number;
  /** IOCCSZ in Identify Controller, 16-byte units (default (64 + 8192) / 16). */
  ioccsz?: number;
  /** Never answer commands with this opcode on I/O queues (-1: none). */
  stallIoOpcode?: number;
  /** Never answer admin commands with this opcode. */
  stallAdminOpcode?: number;
  /** Answer after this many ms. */
  delayMs?: number;
  /** The next read's answer, broken this way (once). */
  breakRead?:
    | "hdgst"
    | "ddgst"
    | "unknown-type"
    | "unknown-cid"
    | "beyond"
    | "plen"
    | "termreq"
    | "resp-unknown-cid"
    | "truncate"
    | "offset"
    | "success-no-last"
    | "r2t-for-read"
    | "icresp-again"
    | "short-then-ok";
  /** Close the connection when a command with this opcode arrives on an I/O queue (once). */
  closeOnIoOpcode?: number;
  /** Connect answers this status (SCT << 8 | SC) instead of success. */
  connectStatus?: number;
  /** Connect DW0 AUTHREQ (non-zero: authentication required). */
  authreq?: number;
  /** Enforce KATO: no command within KATO + 100 ms ends the association (as nvmet). */
  enforceKato?: boolean;
  /** MDTS in Identify Controller (default 0). */
  mdts?: number;
  /** CSTS.CFS on enable. */
  cfsOnEnable?: boolean;
  /**
   * In-capsule data the port takes on every queue, admin included, as nvmet's inline_data_size
   * (default: no limit on the admin queue, IOCCSZ's on I/O queues); more is SGL Offset Invalid.
   */
  inlineDataSize?: number;
  /** CAP.TO in 500 ms units (default 1). */
  capTo?: number;
  /** Never set CSTS.RDY. */
  neverReady?: boolean;
}

interface Ns {
  readonly lbaSize: number;
  readonly data: Uint8Array;
}

const NQN = "nqn.2024-01.io.libnvm:test";
const namespaces = new Map<number, Ns>([
  [1, { lbaSize: 512, data: new Uint8Array(8 << 20) }],
  [2, { lbaSize: 4096, data: new Uint8Array(4 << 20) }],
]);

let faults: Faults = {};
let listener: TCPSocketListener<Conn> | undefined;
let port = 0;
let nextCntlid = 1;
const stats = { connections: 0, commands: 0, connects: [] as { qid: number; cntlid: number; sqsize: number; cattr: number; kato: number; hostnqn: string; subnqn: string; inCapsule: boolean }[], keepAlives: 0, h2cPdus: 0, r2ts: 0, icreqs: [] as { hpda: number; hd: boolean; dd: boolean; maxr2t: number }[], resets: 0 };

interface Ctrl {
  readonly cntlid: number;
  readonly discovery: boolean;
  cc: number;
  csts: number;
  kato: number;
  lastCommand: number;
  readonly conns: Set<Conn>;
}
const ctrls = new Map<number, Ctrl>();

interface Pending {
  /** Command whose data comes by R2T: where it goes. */
  readonly cid: number;
  readonly sqe: Uint8Array;
  readonly total: number;
  got: number;
  readonly buf: Uint8Array;
  ttag: number;
  r2tEnd: number;
}

interface Conn {
  inbuf: Uint8Array;
  inlen: number;
  out: Uint8Array[];
  icDone: boolean;
  digests: Digests;
  qid: number;
  sqsize: number;
  sqhd: number;
  sqflow: boolean;
  ctrl: Ctrl | undefined;
  pending: Map<number, Pending>;
  closed: boolean;
  socket: Socket<Conn>;
}

const u16 = (b: Uint8Array, o: number) => b[o]! | (b[o + 1]! << 8);
const u32 = (b: Uint8Array, o: number) => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}

function send(c: Conn, b: Uint8Array): void {
  if (c.closed) return;
  c.out.push(b);
  flush(c);
}

function flush(c: Conn): void {
  while (c.out.length > 0 && !c.closed) {
    const b = c.out[0]!;
    const n = c.socket.write(b);
    if (n < 0) return;
    if (n < b.length) {
      c.out[0] = b.subarray(n);
      return;
    }
    c.out.shift();
  }
}

function later(f: () => void): void {
  const d = faults.delayMs ?? 0;
  if (d > 0) setTimeout(f, d);
  else f();
}

function close(c: Conn): void {
  if (c.closed) return;
  c.closed = true;
  c.ctrl?.conns.delete(c);
  c.socket.end();
}

function endAssociation(ctrl: Ctrl): void {
  for (const c of [...ctrl.conns]) close(c);
  ctrls.delete(ctrl.cntlid);
}

function resp(c: Conn, cid: number, status: number, dw0 = 0, dw1 = 0): void {
  if (c.sqsize > 0 && c.sqflow) c.sqhd = (c.sqhd + 1) % (c.sqsize + 1);
  send(c, encodeCapsuleResp({ dw0, dw1, sqhd: c.sqflow ? c.sqhd : 0xffff, sqid: Math.max(c.qid, 0), cid, status }, c.digests));
}

/** Data to the host, then the completion (or SUCCESS), in chunks; faults applied once. */
function c2h(c: Conn, cid: number, data: Uint8Array, useSuccess: boolean): void {
  const chunk = faults.c2hChunk ?? data.length;
  const brk = faults.breakRead;
  if (brk !== undefined) faults.breakRead = undefined;
  if (brk === "unknown-type") return send(c, Uint8Array.from([0x08, 0, 24, 0, 24, 0, 0, 0, ...new Array(16).fill(0), ...(c.digests.header ? [0, 0, 0, 0] : [])]));
  if (brk === "termreq") return void (send(c, encodeTermReq(PduType.C2HTermReq, { fes: 2, fei: 0, data: new Uint8Array(24) })), setTimeout(() => close(c), 20));
  if (brk === "icresp-again") return send(c, encodeIcResp({ pfv: 0, cpda: 0, digests: c.digests, maxh2cdata: 65536 }));
  if (brk === "r2t-for-read") return send(c, encodeR2t({ cccid: cid, ttag: 1, r2to: 0, r2tl: data.length }, c.digests));
  if (brk === "resp-unknown-cid") return resp(c, (cid + 77) & 0xffff, 0);
  for (let off = 0; off < data.length; off += chunk) {
    const part = data.subarray(off, Math.min(off + chunk, data.length));
    const last = off + part.length >= data.length;
    let flags = last ? FLAG_LAST_PDU | (useSuccess ? FLAG_SUCCESS : 0) : 0;
    let cccid = cid;
    let datao = off;
    if (brk === "success-no-last" && off === 0) flags = FLAG_SUCCESS;
    if (brk === "unknown-cid") cccid = (cid + 99) & 0xffff;
    if (brk === "offset") datao = off + 4;
    let pdu = encodeC2HData({ cccid, datao, flags }, brk === "beyond" ? new Uint8Array(part.length + 512) : part, c.digests);
    if (brk === "hdgst" && c.digests.header) pdu[25] = pdu[25]! ^ 1;
    if (brk === "ddgst" && c.digests.data) pdu[pdu.length - 1] = pdu[pdu.length - 1]! ^ 0x80;
    if (brk === "plen") put32(pdu, 4, u32(pdu, 4) + 4);
    if (brk === "truncate") {
      send(c, pdu.subarray(0, Math.floor(pdu.length / 2)));
      return void setTimeout(() => close(c), 50);
    }
    if (brk === "short-then-ok") {
      // Completes successfully with half the data: a violation the host must catch.
      send(c, encodeC2HData({ cccid: cid, datao: 0, flags: 0 }, data.subarray(0, data.length / 2), c.digests));
      return resp(c, cid, 0);
    }
    send(c, pdu);
    if (brk === "hdgst" || brk === "plen" || brk === "beyond" || brk === "unknown-cid" || brk === "offset" || brk === "success-no-last") return;
  }
  if (!useSuccess) resp(c, cid, 0);
}

function identifyController(ctrl: Ctrl): Uint8Array {
  const b = new Uint8Array(4096);
  const enc = new TextEncoder();
  b.set(enc.encode("LIBNVMTCPTEST0001   "), 4);
  b.set(enc.encode("libnvm fake TCP target                  "), 24);
  b.set(enc.encode("1.0     "), 64);
  b[77] = faults.mdts ?? 0;
  b[78] = ctrl.cntlid & 0xff;
  b[79] = ctrl.cntlid >>> 8;
  put32(b, 80, 0x00010400);
  b[111] = ctrl.discovery ? 2 : 1;
  b[320] = 10; // KAS: 1 s
  b[514] = 0xff;
  b[515] = 0x03; // MAXCMD
  put32(b, 516, 2); // NN
  b[520] = 0x0c; // ONCS: DSM, Write Zeroes
  b[525] = 1; // VWC
  put32(b, 536, 1 | (1 << 20)); // SGLS
  b.set(enc.encode(ctrl.discovery ? DISCOVERY_NQN : NQN), 768);
  put32(b, 1792, faults.ioccsz ?? (64 + 8192) / 16);
  put32(b, 1796, 1);
  b[1803] = 1; // MSDBD
  return b;
}

function identifyNamespace(nsid: number): Uint8Array {
  const b = new Uint8Array(4096);
  const ns = namespaces.get(nsid);
  if (!ns) return b;
  const blocks = ns.data.length / ns.lbaSize;
  put32(b, 0, blocks);
  put32(b, 8, blocks);
  put32(b, 16, blocks);
  b[25] = 0;
  b[26] = 0;
  b[130] = Math.log2(ns.lbaSize);
  return b;
}

function handleCapsule(c: Conn, pdu: Uint8Array): void {
  const ch = parseCommonHeader(pdu);
  const hd = (ch.flags & FLAG_HDGSTF) !== 0;
  if (hd && u32(pdu, 72) !== crc32c(pdu.subarray(0, 72))) return close(c);
  const sqe = pdu.subarray(8, 72);
  const opcode = sqe[0]!;
  const cid = u16(sqe, 2);
  const psdt = sqe[1]! >>> 6;
  if (psdt !== 1) return resp(c, cid, 0x4002); // Invalid Field, DNR
  const sglType = sqe[39]!;
  const sglLen = u32(sqe, 32);
  let inData: Uint8Array | undefined;
  if (ch.pdo > 0) {
    const dlen = ch.plen - ch.pdo - ((ch.flags & FLAG_DDGSTF) !== 0 ? 4 : 0);
    inData = pdu.slice(ch.pdo, ch.pdo + dlen);
    if ((ch.flags & FLAG_DDGSTF) !== 0 && u32(pdu, ch.pdo + dlen) !== crc32c(inData)) return resp(c, cid, 0x22);
    if (sglType !== 0x01 || sglLen !== dlen) return resp(c, cid, 0x4002);
    const limit = faults.inlineDataSize ?? (c.qid > 0 ? (faults.ioccsz ?? (64 + 8192) / 16) * 16 - 64 : Infinity);
    if (dlen > limit) return resp(c, cid, 0x4016); // SGL Offset Invalid, DNR
  }
  stats.commands++;
  if (c.ctrl) c.ctrl.lastCommand = performance.now();
  const needsData = (opcode & 3) === 1 || (opcode === 0x7f && sqe[4] === 1);
  if (needsData && inData === undefined && sglLen > 0) {
    // Ask for the data by R2T, in chunks.
    const p: Pending = { cid, sqe: sqe.slice(), total: sglLen, got: 0, buf: new Uint8Array(sglLen), ttag: 0, r2tEnd: 0 };
    c.pending.set(cid, p);
    sendR2t(c, p);
    return;
  }
  later(() => execute(c, sqe.slice(), inData));
}

function sendR2t(c: Conn, p: Pending): void {
  const chunk = faults.r2tChunk ?? p.total;
  const len = Math.min(chunk, p.total - p.got);
  p.ttag = (p.ttag + 1) & 0xffff;
  p.r2tEnd = p.got + len;
  stats.r2ts++;
  send(c, encodeR2t({ cccid: p.cid, ttag: p.ttag, r2to: p.got, r2tl: len }, c.digests));
}

function handleH2C(c: Conn, pdu: Uint8Array): void {
  const ch = parseCommonHeader(pdu);
  stats.h2cPdus++;
  if ((ch.flags & FLAG_HDGSTF) !== 0 && u32(pdu, 24) !== crc32c(pdu.subarray(0, 24))) return close(c);
  const cid = u16(pdu, 8);
  const ttag = u16(pdu, 10);
  const datao = u32(pdu, 12);
  const datal = u32(pdu, 16);
  const p = c.pending.get(cid);
  if (!p || ttag !== p.ttag || datao !== p.got || datao + datal > p.r2tEnd || datal > (faults.maxh2cdata ?? 65536)) return close(c);
  const data = pdu.subarray(ch.pdo, ch.pdo + datal);
  if ((ch.flags & FLAG_DDGSTF) !== 0 && u32(pdu, ch.pdo + datal) !== crc32c(data)) return close(c);
  p.buf.set(data, datao);
  p.got += datal;
  const last = (ch.flags & FLAG_LAST_PDU) !== 0;
  if (p.got === p.r2tEnd && !last) return close(c);
  if (p.got < p.total) {
    if (p.got === p.r2tEnd) sendR2t(c, p);
    return;
  }
  c.pending.delete(cid);
  later(() => execute(c, p.sqe, p.buf));
}

function execute(c: Conn, sqe: Uint8Array, data: Uint8Array | undefined): void {
  if (c.closed) return;
  const opcode = sqe[0]!;
  const cid = u16(sqe, 2);
  const nsid = u32(sqe, 4);
  const cdw10 = u32(sqe, 40);
  const cdw11 = u32(sqe, 44);
  const cdw12 = u32(sqe, 48);
  const sglLen = u32(sqe, 32);
  if (opcode === 0x7f) {
    const fctype = sqe[4]!;
    if (fctype === 0x01) {
      const qid = cdw10 >>> 16;
      const sqsize = cdw11 & 0xffff;
      const cattr = (cdw11 >>> 16) & 0xff;
      const d = data ?? new Uint8Array(1024);
      const dec = (o: number) => new TextDecoder().decode(d.subarray(o, o + 256)).replace(/\0.*$/s, "");
      const subnqn = dec(256);
      const hostnqn = dec(512);
      const cntlid = u16(d, 16);
      stats.connects.push({ qid, cntlid, sqsize, cattr, kato: cdw12, hostnqn, subnqn, inCapsule: data !== undefined && sglLenInCapsule(sqe) });
      if (faults.connectStatus !== undefined) return resp(c, cid, faults.connectStatus, faults.connectStatus === 0x182 ? 256 | (1 << 16) : 0);
      if (subnqn !== NQN && subnqn !== DISCOVERY_NQN) return resp(c, cid, 0x4182, 256 | (1 << 16));
      c.qid = qid;
      c.sqsize = sqsize;
      c.sqflow = (cattr & 4) === 0;
      if (qid === 0) {
        const ctrl: Ctrl = { cntlid: nextCntlid++, discovery: subnqn === DISCOVERY_NQN, cc: 0, csts: 0, kato: cdw12, lastCommand: performance.now(), conns: new Set([c]) };
        ctrls.set(ctrl.cntlid, ctrl);
        c.ctrl = ctrl;
        return resp(c, cid, 0, ctrl.cntlid | ((faults.authreq ?? 0) << 16));
      }
      const ctrl = ctrls.get(cntlid);
      if (!ctrl) return resp(c, cid, 0x4182, 16 | (1 << 16));
      ctrl.conns.add(c);
      c.ctrl = ctrl;
      return resp(c, cid, 0, ctrl.cntlid);
    }
    const ctrl = c.ctrl;
    if (!ctrl) return resp(c, cid, 0x4001);
    if (fctype === 0x04) {
      const ofst = cdw11;
      const cap = { lo: 1023 | (1 << 16) | ((faults.capTo ?? 1) << 24), hi: 1 << 5 };
      if (ofst === 0) return resp(c, cid, 0, cap.lo, cap.hi);
      if (ofst === 8) return resp(c, cid, 0, 0x00010400);
      if (ofst === 0x14) return resp(c, cid, 0, ctrl.cc);
      if (ofst === 0x1c) return resp(c, cid, 0, ctrl.csts);
      return resp(c, cid, 0x4002);
    }
    if (fctype === 0x00) {
      if (cdw11 !== 0x14) return resp(c, cid, 0x4002);
      const cc = cdw12;
      const was = ctrl.cc;
      ctrl.cc = cc;
      if ((cc & 1) && !(was & 1)) {
        if (faults.cfsOnEnable) ctrl.csts |= 2;
        else if (!faults.neverReady) ctrl.csts |= 1;
      }
      if (!(cc & 1)) ctrl.csts &= ~1;
      if ((cc >>> 14) & 3) ctrl.csts = (ctrl.csts & ~0xc) | 0x8;
      return resp(c, cid, 0);
    }
    return resp(c, cid, 0x4001);
  }
  const ctrl = c.ctrl;
  if (!ctrl) return resp(c, cid, 0x4001);
  if (c.qid === 0) {
    if (opcode === faults.stallAdminOpcode) return;
    switch (opcode) {
      case 0x06: {
        const cns = cdw10 & 0xff;
        const b = cns === 1 ? identifyController(ctrl) : cns === 0 ? identifyNamespace(nsid) : cns === 2 ? nsList() : new Uint8Array(4096);
        return c2h(c, cid, b.subarray(0, sglLen), false);
      }
      case 0x02: {
        const lid = cdw10 & 0xff;
        const numd = ((cdw10 >>> 16) | ((cdw11 & 0xffff) << 16)) + 1;
        const bytes = numd * 4;
        if (lid === 0x70) {
          const log = encodeDiscoveryLog(7n, [
            { trtype: 3, adrfam: 1, subtype: 2, treq: 4, portid: 1, cntlid: 0xffff, asqsz: 32, eflags: 0, trsvcid: String(port), subnqn: NQN, traddr: "127.0.0.1", sectype: 0 },
            { trtype: 3, adrfam: 1, subtype: 1, treq: 0, portid: 3, cntlid: 0xffff, asqsz: 32, eflags: 0, trsvcid: "4421", subnqn: DISCOVERY_NQN, traddr: "127.0.0.1", sectype: 0 },
          ]);
          const out = new Uint8Array(bytes);
          out.set(log.subarray(0, bytes));
          return c2h(c, cid, out, false);
        }
        return c2h(c, cid, new Uint8Array(bytes), false);
      }
      case 0x09:
      case 0x0a:
        if ((cdw10 & 0xff) === 0x07) return resp(c, cid, 0, 127 | (127 << 16));
        return resp(c, cid, 0);
      case 0x18:
        stats.keepAlives++;
        return resp(c, cid, 0);
      default:
        return resp(c, cid, 0x4001);
    }
  }
  if (opcode === faults.stallIoOpcode) return;
  if (opcode === faults.closeOnIoOpcode) {
    faults.closeOnIoOpcode = undefined;
    return close(c);
  }
  const ns = namespaces.get(nsid);
  if (!ns) return resp(c, cid, 0x400b);
  const slba = cdw10 + u32(sqe, 44) * 0x1_0000_0000;
  const blocks = (cdw12 & 0xffff) + 1;
  const off = slba * ns.lbaSize;
  const len = blocks * ns.lbaSize;
  switch (opcode) {
    case 0x02:
      if (off + len > ns.data.length) return resp(c, cid, 0x4080);
      if (sglLen !== len) return resp(c, cid, 0x400d);
      return c2h(c, cid, ns.data.slice(off, off + len), !c.sqflow);
    case 0x01:
      if (off + len > ns.data.length) return resp(c, cid, 0x4080);
      if (!data || data.length !== len) return resp(c, cid, 0x400d);
      ns.data.set(data, off);
      return resp(c, cid, 0);
    case 0x00:
      return resp(c, cid, 0);
    case 0x08:
      ns.data.fill(0, off, off + len);
      return resp(c, cid, 0);
    case 0x09: {
      const nr = (cdw10 & 0xff) + 1;
      for (let i = 0; i < nr && data; i++) {
        const n = u32(data, i * 16 + 4);
        const lba = u32(data, i * 16 + 8);
        ns.data.fill(0, lba * ns.lbaSize, (lba + n) * ns.lbaSize);
      }
      return resp(c, cid, 0);
    }
    default:
      return resp(c, cid, 0x4001);
  }
}

function sglLenInCapsule(sqe: Uint8Array): boolean {
  return sqe[39] === 0x01;
}

function nsList(): Uint8Array {
  const b = new Uint8Array(4096);
  [...namespaces.keys()].forEach((n, i) => put32(b, i * 4, n));
  return b;
}

function onData(c: Conn, chunk: Uint8Array): void {
  if (c.closed) return;
  if (c.inlen + chunk.length > c.inbuf.length) {
    const n = new Uint8Array(Math.max(c.inbuf.length * 2, c.inlen + chunk.length));
    n.set(c.inbuf.subarray(0, c.inlen));
    c.inbuf = n;
  }
  c.inbuf.set(chunk, c.inlen);
  c.inlen += chunk.length;
  for (;;) {
    if (c.inlen < 8) return;
    const plen = u32(c.inbuf, 4);
    if (plen < 8 || plen > 16 << 20) return close(c);
    if (c.inlen < plen) return;
    const pdu = c.inbuf.slice(0, plen);
    c.inbuf.copyWithin(0, plen, c.inlen);
    c.inlen -= plen;
    const type = pdu[0]!;
    if (!c.icDone) {
      if (type !== PduType.ICReq) return close(c);
      const r = parseIcReq(pdu);
      stats.icreqs.push({ hpda: r.hpda, hd: r.digests.header, dd: r.digests.data, maxr2t: r.maxr2t });
      const ic = faults.icresp ?? {};
      if (ic.close) return close(c);
      c.digests = ic.digests ?? r.digests;
      c.icDone = true;
      const out = encodeIcResp({ pfv: ic.pfv ?? 0, cpda: ic.cpda ?? 0, digests: c.digests, maxh2cdata: ic.maxh2cdata ?? faults.maxh2cdata ?? 65536 });
      if (ic.type !== undefined) out[0] = ic.type;
      send(c, out);
      continue;
    }
    if (type === PduType.CapsuleCmd) handleCapsule(c, pdu);
    else if (type === PduType.H2CData) handleH2C(c, pdu);
    else return close(c);
  }
}

function listen(): void {
  listener = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port,
    socket: {
      open(socket) {
        stats.connections++;
        socket.data = { inbuf: new Uint8Array(1 << 16), inlen: 0, out: [], icDone: false, digests: { header: false, data: false }, qid: -1, sqsize: 0, sqhd: 0, sqflow: true, ctrl: undefined, pending: new Map(), closed: false, socket };
      },
      data(socket, d) {
        onData(socket.data, d);
      },
      drain(socket) {
        flush(socket.data);
      },
      close(socket) {
        const c = socket.data;
        c.closed = true;
        c.ctrl?.conns.delete(c);
        // The admin queue's connection going ends the association, as nvmet does.
        if (c.ctrl && c.qid === 0) endAssociation(c.ctrl);
      },
      error() {},
    },
  });
  port = listener.port;
}

setInterval(() => {
  if (!faults.enforceKato) return;
  const now = performance.now();
  for (const ctrl of [...ctrls.values()]) {
    if (ctrl.kato > 0 && now - ctrl.lastCommand > ctrl.kato + 100) endAssociation(ctrl);
  }
}, 50);

parentPort!.on("message", (m: { type: string; faults?: Faults; nsid?: number; offset?: number; length?: number; bytes?: Uint8Array }) => {
  switch (m.type) {
    case "listen":
      listen();
      parentPort!.postMessage({ type: "listening", port });
      break;
    case "unlisten":
      listener?.stop(true);
      listener = undefined;
      for (const ctrl of [...ctrls.values()]) endAssociation(ctrl);
      parentPort!.postMessage({ type: "ok" });
      break;
    case "set":
      faults = { ...faults, ...m.faults };
      parentPort!.postMessage({ type: "ok" });
      break;
    case "reset-faults":
      faults = {};
      parentPort!.postMessage({ type: "ok" });
      break;
    case "stats":
      parentPort!.postMessage({ type: "stats", stats: { ...stats, controllers: [...ctrls.values()].map((x) => ({ cntlid: x.cntlid, cc: x.cc, csts: x.csts, kato: x.kato, conns: x.conns.size })) } });
      break;
    case "peek": {
      const ns = namespaces.get(m.nsid!)!;
      parentPort!.postMessage({ type: "data", bytes: ns.data.slice(m.offset!, m.offset! + m.length!) });
      break;
    }
    case "poke": {
      namespaces.get(m.nsid!)!.data.set(m.bytes!, m.offset!);
      parentPort!.postMessage({ type: "ok" });
      break;
    }
  }
});
