import { describe, expect, test } from "bun:test";
import {
  ADMIN_QUEUE_MAX_ENTRIES,
  BAR0_MIN_SIZE,
  CC_EN,
  CC_SHN_ABRUPT,
  CC_SHN_NORMAL,
  CSTS_SHST_COMPLETE,
  REG_ACQ,
  REG_AQA,
  REG_ASQ,
  REG_CAP,
  REG_CC,
  REG_CSTS,
  REG_DOORBELL_BASE,
  REG_VS,
  cqHeadDoorbell,
  decodeAqa,
  decodeCap,
  decodeCc,
  decodeCsts,
  decodeVersion,
  encodeAqa,
  encodeCc,
  formatVersionRegister,
  sqTailDoorbell,
} from "../../lib/spec/registers.ts";

describe("register offsets (Base 2.0 3.1.4)", () => {
  test("match the Controller Properties table", () => {
    expect([REG_CAP, REG_VS, REG_CC, REG_CSTS, REG_AQA, REG_ASQ, REG_ACQ, REG_DOORBELL_BASE]).toEqual([
      0x00, 0x08, 0x14, 0x1c, 0x24, 0x28, 0x30, 0x1000,
    ]);
    // Registers plus the admin SQ tail doorbell and CQ head doorbell at stride 4.
    expect(BAR0_MIN_SIZE).toBe(0x1008);
  });
});

describe("AQA", () => {
  test("ASQS in bits 11:00 and ACQS in 27:16, both 0-based", () => {
    expect(encodeAqa(64, 16)).toBe(0x000f003f);
    expect(encodeAqa(16, 64)).toBe(0x003f000f);
    expect(encodeAqa(2, 2)).toBe(0x00010001);
  });

  test("the 4096-entry maximum fills the 12-bit fields and nothing else", () => {
    expect(ADMIN_QUEUE_MAX_ENTRIES).toBe(4096);
    expect(encodeAqa(4096, 4096)).toBe(0x0fff0fff);
  });

  test("decodeAqa inverts encodeAqa", () => {
    expect(decodeAqa(encodeAqa(64, 16))).toEqual({ asqs: 64, acqs: 16 });
    expect(decodeAqa(encodeAqa(4096, 2))).toEqual({ asqs: 4096, acqs: 2 });
  });
});

describe("CAP", () => {
  // QEMU's emulated NVMe controller (hw/nvme): MQES 7ffh, CQR, TO 0fh, CSS c1h, MPSMAX 4.
  const QEMU_CAP = 0x004018200f0107ffn;
  const lo = Number(QEMU_CAP & 0xffffffffn);
  const hi = Number(QEMU_CAP >> 32n);

  test("decodes QEMU's CAP", () => {
    const cap = decodeCap(lo, hi);
    expect(cap.mqes).toBe(2047);
    expect(cap.cqr).toBe(true);
    expect(cap.ams).toBe(0);
    expect(cap.to).toBe(15);
    expect(cap.timeoutMs).toBe(7500);
    expect(cap.dstrd).toBe(0);
    expect(cap.nssrs).toBe(false);
    expect(cap.css).toBe(0xc1);
    expect(cap.bps).toBe(false);
    expect(cap.mpsmin).toBe(0);
    expect(cap.mpsmax).toBe(4);
    expect(cap.minPageSize).toBe(4096);
    expect(cap.maxPageSize).toBe(65536);
    expect(cap.pmrs).toBe(false);
    expect(cap.cmbs).toBe(false);
    expect(cap.raw).toBe(QEMU_CAP);
  });

  test("each field comes from its own bits", () => {
    // MQES ffffh, CQR 0, AMS 3 (bits 18:17), TO ffh; DSTRD 0fh (bits 35:32), NSSRS (36), BPS (45),
    // MPSMIN 3 (51:48), MPSMAX 0fh (55:52), PMRS (56), CMBS (57).
    const cap = decodeCap(0xff06ffff, 0x03f3200f | (1 << 4));
    expect(cap.mqes).toBe(0xffff);
    expect(cap.cqr).toBe(false);
    expect(cap.ams).toBe(3);
    expect(cap.to).toBe(0xff);
    expect(cap.timeoutMs).toBe(255 * 500);
    expect(cap.dstrd).toBe(0xf);
    expect(cap.nssrs).toBe(true);
    expect(cap.css).toBe(0);
    expect(cap.bps).toBe(true);
    expect(cap.mpsmin).toBe(3);
    expect(cap.mpsmax).toBe(0xf);
    expect(cap.minPageSize).toBe(32768);
    expect(cap.pmrs).toBe(true);
    expect(cap.cmbs).toBe(true);
    expect(cap.raw).toBe(0x03f3201fff06ffffn);
  });
});

describe("CC", () => {
  test("IOSQES 6 in bits 19:16 and IOCQES 4 in 23:20", () => {
    const cc = encodeCc({ en: true, css: 0, mps: 0, ams: 0, iosqes: 6, iocqes: 4 });
    expect(cc).toBe(0x00460001);
    expect((cc >>> 16) & 0xf).toBe(6);
    expect((cc >>> 20) & 0xf).toBe(4);
  });

  test("encodeCc / decodeCc round trip every field", () => {
    const c = { en: true, css: 6, mps: 4, ams: 1, shn: 2, iosqes: 6, iocqes: 4 };
    const cc = encodeCc(c);
    // EN bit 0, CSS 06:04, MPS 10:07, AMS 13:11, SHN 15:14
    expect(cc).toBe(0x00460001 | (6 << 4) | (4 << 7) | (1 << 11) | (2 << 14));
    expect(decodeCc(cc)).toEqual(c);
  });

  test("EN and SHN default to 0; the result is unsigned", () => {
    const cc = encodeCc({ css: 0, mps: 0, ams: 0, iosqes: 6, iocqes: 4 });
    expect(cc & CC_EN).toBe(0);
    expect(decodeCc(cc).shn).toBe(0);
    expect(decodeCc(CC_SHN_NORMAL).shn).toBe(1);
    expect(decodeCc(CC_SHN_ABRUPT).shn).toBe(2);
    expect(encodeCc({ css: 0, mps: 0, ams: 0, iosqes: 0xf, iocqes: 0xf })).toBe(0x00ff0000);
  });
});

describe("CSTS and VS", () => {
  test("decodeCsts", () => {
    expect(decodeCsts(0)).toEqual({ rdy: false, cfs: false, shst: 0, nssro: false, pp: false });
    expect(decodeCsts(1 | CSTS_SHST_COMPLETE)).toEqual({ rdy: true, cfs: false, shst: 2, nssro: false, pp: false });
    expect(decodeCsts(0b110010)).toEqual({ rdy: false, cfs: true, shst: 0, nssro: true, pp: true });
  });

  test("decodeVersion: MJR 31:16, MNR 15:08, TER 07:00", () => {
    expect(decodeVersion(0x00010400)).toEqual({ mjr: 1, mnr: 4, ter: 0 });
    expect(decodeVersion(0x00020001)).toEqual({ mjr: 2, mnr: 0, ter: 1 });
    expect(formatVersionRegister(0x00010302)).toBe("1.3.2");
  });
});

describe("doorbells (3.1.4.22)", () => {
  test("DSTRD 0: 4 bytes apart", () => {
    expect(sqTailDoorbell(0, 0)).toBe(0x1000);
    expect(cqHeadDoorbell(0, 0)).toBe(0x1004);
    expect(sqTailDoorbell(1, 0)).toBe(0x1008);
    expect(cqHeadDoorbell(1, 0)).toBe(0x100c);
    expect(sqTailDoorbell(5, 0)).toBe(0x1028);
    expect(cqHeadDoorbell(5, 0)).toBe(0x102c);
  });

  test("DSTRD 2: 16 bytes apart", () => {
    expect(sqTailDoorbell(0, 2)).toBe(0x1000);
    expect(cqHeadDoorbell(0, 2)).toBe(0x1010);
    expect(sqTailDoorbell(1, 2)).toBe(0x1020);
    expect(cqHeadDoorbell(1, 2)).toBe(0x1030);
  });
});
