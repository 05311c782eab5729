/**
 * NVMe/TCP PDUs against bytes written out by hand from the NVMe/TCP Transport Specification 1.0
 * (3.6) and Linux nvmet's ICResp as seen on the wire, and CRC-32C: the check value, the C code
 * (SSE4.2 and tables) against the TypeScript oracle.
 */
import { describe, expect, test } from "bun:test";
import { toArrayBuffer } from "bun:ffi";
import { native } from "../../../lib/native.ts";
import { crc32c, CRC32C_CHECK } from "../../../lib/transports/tcp/crc32c.ts";
import {
  encodeC2HData,
  encodeCapsuleCmd,
  encodeCapsuleResp,
  encodeH2CData,
  encodeIcReq,
  encodeIcResp,
  encodeR2t,
  encodeTermReq,
  parseCapsuleCmd,
  parseCapsuleResp,
  parseCommonHeader,
  parseDataPdu,
  parseIcReq,
  parseIcResp,
  parseR2t,
  parseTermReq,
  PduType,
} from "../../../lib/transports/tcp/pdu.ts";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => Number.parseInt(b, 16)));
const ascii = new TextEncoder().encode("123456789");

/** `bytes` copied into C memory, for the C functions. */
function cbuf(bytes: Uint8Array): { p: number; free: () => void } {
  const n = native();
  const p = n.nvm_host_alloc(Math.max(1, bytes.length));
  new Uint8Array(toArrayBuffer(p!, 0, Math.max(1, bytes.length))).set(bytes);
  return { p: Number(p), free: () => n.nvm_host_free(p!) };
}

describe("CRC-32C", () => {
  test("the check value: CRC32C(\"123456789\") = 0xE3069283, in TypeScript, in C and in C's table version", () => {
    expect(CRC32C_CHECK).toBe(0xe3069283);
    expect(crc32c(ascii)).toBe(0xe3069283);
    const b = cbuf(ascii);
    expect(native().nvm_crc32c(b.p, 9, 0)).toBe(0xe3069283);
    expect(native().nvm_crc32c_sw(b.p, 9, 0)).toBe(0xe3069283);
    b.free();
  });

  test("known vectors: empty, 32 zero bytes, 32 0xFF bytes (RFC 3720 B.4)", () => {
    expect(crc32c(new Uint8Array(0))).toBe(0);
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    // 00 01 ... 1F ascending
    expect(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
  });

  test("C (hardware where present, and tables) equals TypeScript for every length 0..300 and unaligned starts, and chains", () => {
    const n = native();
    const data = crypto.getRandomValues(new Uint8Array(4096 + 16));
    const b = cbuf(data);
    for (let len = 0; len <= 300; len++) {
      for (const off of [0, 1, 3, 7]) {
        const want = crc32c(data.subarray(off, off + len));
        expect(n.nvm_crc32c(b.p + off, len, 0)).toBe(want);
        expect(n.nvm_crc32c_sw(b.p + off, len, 0)).toBe(want);
      }
    }
    const whole = crc32c(data.subarray(0, 4096));
    expect(crc32c(data.subarray(1000, 4096), crc32c(data.subarray(0, 1000)))).toBe(whole);
    expect(n.nvm_crc32c(b.p + 1000, 3096, n.nvm_crc32c(b.p, 1000, 0))).toBe(whole);
    b.free();
    // Which one runs is reported: x86-64 machines here all have SSE4.2.
    expect([0, 1]).toContain(n.nvm_crc32c_impl());
  });
});

describe("PDUs in bytes", () => {
  test("ICReq: 128 bytes, PFV 0, HPDA, DGST bits, MAXR2T", () => {
    const b = encodeIcReq({ pfv: 0, hpda: 0, digests: { header: true, data: false }, maxr2t: 0 });
    expect(b.length).toBe(128);
    expect([...b.subarray(0, 16)]).toEqual([...hex("00 00 80 00 80 00 00 00  00 00 00 01 00 00 00 00")]);
    expect(b.subarray(16).every((x) => x === 0)).toBe(true);
    expect(parseIcReq(b)).toEqual({ pfv: 0, hpda: 0, digests: { header: true, data: false }, maxr2t: 0 });
    const both = encodeIcReq({ pfv: 0, hpda: 3, digests: { header: true, data: true }, maxr2t: 7 });
    expect([...both.subarray(8, 16)]).toEqual([...hex("00 00 03 03 07 00 00 00")]);
  });

  test("ICResp as Linux nvmet sends it: type 1, HLEN/PLEN 128, CPDA 0, no digests, MAXH2CDATA 4 MiB", () => {
    const wire = new Uint8Array(128);
    wire.set(hex("01 00 80 00 80 00 00 00  00 00 00 00 00 00 40 00"));
    expect(parseCommonHeader(wire)).toEqual({ type: 1, flags: 0, hlen: 128, pdo: 0, plen: 128 });
    expect(parseIcResp(wire)).toEqual({ pfv: 0, cpda: 0, digests: { header: false, data: false }, maxh2cdata: 0x400000 });
    expect(encodeIcResp({ pfv: 0, cpda: 0, digests: { header: false, data: false }, maxh2cdata: 0x400000 })).toEqual(wire);
  });

  test("CapsuleCmd without data: PLEN 72, PDO 0; with a header digest PLEN 76 and HDGSTF", () => {
    const sqe = new Uint8Array(64);
    sqe.set(hex("02 40 05 00 01 00 00 00"), 0); // Read, PSDT 01b, CID 5, NSID 1
    sqe[32] = 0x00;
    sqe[33] = 0x10; // SGL length 4096
    sqe[39] = 0x5a;
    sqe[48] = 7; // NLB 7
    const b = encodeCapsuleCmd(sqe, undefined);
    expect([...b.subarray(0, 8)]).toEqual([...hex("04 00 48 00 48 00 00 00")]);
    expect(b.subarray(8, 72)).toEqual(sqe);
    const h = encodeCapsuleCmd(sqe, undefined, { header: true, data: true });
    expect([...h.subarray(0, 8)]).toEqual([...hex("04 01 48 00 4c 00 00 00")]);
    const d = new DataView(h.buffer);
    expect(d.getUint32(72, true)).toBe(crc32c(h.subarray(0, 72)));
    expect(parseCapsuleCmd(h).sqe).toEqual(sqe);
  });

  test("CapsuleCmd with 4096 bytes in the capsule: PDO 72, PLEN 4168; with both digests PDO 76, PLEN 4176, DDGST over the data only", () => {
    const sqe = new Uint8Array(64);
    sqe[0] = 0x01;
    sqe[1] = 0x40;
    sqe[39] = 0x01;
    const data = crypto.getRandomValues(new Uint8Array(4096));
    const b = encodeCapsuleCmd(sqe, data);
    expect([...b.subarray(0, 8)]).toEqual([...hex("04 00 48 48 48 10 00 00")]);
    expect(parseCapsuleCmd(b).data).toEqual(data);
    const h = encodeCapsuleCmd(sqe, data, { header: true, data: true });
    expect([...h.subarray(0, 8)]).toEqual([...hex("04 03 48 4c 50 10 00 00")]);
    const v = new DataView(h.buffer);
    expect(v.getUint32(72, true)).toBe(crc32c(h.subarray(0, 72)));
    expect(v.getUint32(76 + 4096, true)).toBe(crc32c(data));
    expect(parseCapsuleCmd(h).data).toEqual(data);
  });

  test("CapsuleResp: 24 bytes, CQE at 8 (DW0, DW1, SQHD | SQID << 16, CID | status << 17)", () => {
    const b = encodeCapsuleResp({ dw0: 0x12345678, dw1: 0x9abcdef0, sqhd: 3, sqid: 1, cid: 5, status: 0x4002 });
    expect([...b]).toEqual([...hex("05 00 18 00 18 00 00 00  78 56 34 12 f0 de bc 9a  03 00 01 00 05 00 04 80")]);
    expect(parseCapsuleResp(b)).toEqual({ dw0: 0x12345678, dw1: 0x9abcdef0, sqhd: 3, sqid: 1, cid: 5, status: 0x4002 });
    const h = encodeCapsuleResp({ dw0: 0, dw1: 0, sqhd: 0xffff, sqid: 0, cid: 0, status: 0 }, { header: true, data: false });
    expect([...h.subarray(0, 8)]).toEqual([...hex("05 01 18 00 1c 00 00 00")]);
    expect(new DataView(h.buffer).getUint32(24, true)).toBe(crc32c(h.subarray(0, 24)));
  });

  test("C2HData: CCCID, DATAO, DATAL, LAST_PDU and SUCCESS; PDO 24 (28 with a header digest)", () => {
    const data = Uint8Array.from({ length: 16 }, (_, i) => i);
    const b = encodeC2HData({ cccid: 5, datao: 0, flags: 0x0c }, data);
    expect([...b.subarray(0, 24)]).toEqual([...hex("07 0c 18 18 28 00 00 00  05 00 00 00 00 00 00 00  10 00 00 00 00 00 00 00")]);
    expect(b.subarray(24)).toEqual(data);
    const p = parseDataPdu(b);
    expect({ cccid: p.cccid, datao: p.datao, datal: p.datal, flags: p.flags }).toEqual({ cccid: 5, datao: 0, datal: 16, flags: 0x0c });
    const h = encodeC2HData({ cccid: 5, datao: 4096, flags: 0 }, data, { header: true, data: true });
    expect([...h.subarray(0, 8)]).toEqual([...hex("07 03 18 1c 30 00 00 00")]);
    expect(new DataView(h.buffer).getUint32(28 + 16, true)).toBe(crc32c(data));
    expect(parseDataPdu(h).data).toEqual(data);
  });

  test("H2CData echoes CCCID and TTAG; R2T carries TTAG, R2TO, R2TL", () => {
    const data = new Uint8Array(8).fill(0xab);
    const b = encodeH2CData({ cccid: 9, ttag: 0x0102, datao: 0x1000, flags: 0x04 }, data);
    expect([...b.subarray(0, 24)]).toEqual([...hex("06 04 18 18 20 00 00 00  09 00 02 01 00 10 00 00  08 00 00 00 00 00 00 00")]);
    const r = encodeR2t({ cccid: 9, ttag: 0xffff, r2to: 0, r2tl: 1 << 20 });
    expect([...r]).toEqual([...hex("09 00 18 00 18 00 00 00  09 00 ff ff 00 00 00 00  00 00 10 00 00 00 00 00")]);
    expect(parseR2t(r)).toEqual({ cccid: 9, ttag: 0xffff, r2to: 0, r2tl: 1 << 20 });
  });

  test("C2HTermReq: FES, FEI and the offending header, never digests", () => {
    const hdr = new Uint8Array(24).fill(0x11);
    const b = encodeTermReq(PduType.C2HTermReq, { fes: 2, fei: 0x04030201, data: hdr });
    expect([...b.subarray(0, 16)]).toEqual([...hex("03 00 18 18 30 00 00 00  02 00 01 02 03 04 00 00")]);
    expect(parseTermReq(b)).toEqual({ fes: 2, fei: 0x04030201, data: hdr });
    // At most 128 bytes of the header travel.
    expect(encodeTermReq(PduType.H2CTermReq, { fes: 1, fei: 0, data: new Uint8Array(300) }).length).toBe(24 + 128);
  });
});
