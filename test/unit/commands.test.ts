import { describe, expect, test } from "bun:test";
import {
  ADMIN_ABORT,
  ADMIN_CREATE_IO_CQ,
  ADMIN_CREATE_IO_SQ,
  ADMIN_DELETE_IO_CQ,
  ADMIN_DELETE_IO_SQ,
  ADMIN_FORMAT_NVM,
  ADMIN_GET_FEATURES,
  ADMIN_GET_LOG_PAGE,
  ADMIN_IDENTIFY,
  ADMIN_SET_FEATURES,
  CID_MAX,
  CNS_CONTROLLER,
  CNS_NAMESPACE,
  CQE_SIZE,
  CQE_SIZE_LOG2,
  FID_NUMBER_OF_QUEUES,
  FID_VOLATILE_WRITE_CACHE,
  NVM_FLUSH,
  NVM_READ,
  NVM_WRITE,
  SEL_SAVED,
  SQE_DWORDS,
  SQE_SIZE,
  SQE_SIZE_LOG2,
  abort,
  commandName,
  cqeCid,
  cqeSqhd,
  cqeSqid,
  cqeStatus,
  createIoCq,
  createIoSq,
  decodeNumberOfQueues,
  deleteIoCq,
  deleteIoSq,
  featureName,
  flush,
  formatNvm,
  getFeatures,
  getLogPage,
  hi32,
  identify,
  lo32,
  numberOfQueues,
  readWrite,
  setFeatures,
  writeCommand,
  writeSqe,
  type Command,
} from "../../lib/spec/commands.ts";

/** A ring of three slots, every dword 0xffffffff, so leftovers show. */
function dirtyRing(): Uint32Array {
  return new Uint32Array(3 * SQE_DWORDS).fill(0xffffffff);
}

describe("entry sizes", () => {
  test("SQE 64 bytes, CQE 16 bytes, and their log2 for CC", () => {
    expect(SQE_SIZE).toBe(64);
    expect(CQE_SIZE).toBe(16);
    expect(SQE_DWORDS).toBe(16);
    expect(2 ** SQE_SIZE_LOG2).toBe(SQE_SIZE);
    expect(2 ** CQE_SIZE_LOG2).toBe(CQE_SIZE);
    expect(CID_MAX).toBe(0xfffe);
  });
});

describe("writeCommand", () => {
  test("writes all 16 dwords: nothing of the previous command survives", () => {
    const sq = dirtyRing();
    writeCommand(sq, 16, 0, { opcode: NVM_FLUSH });
    expect(Array.from(sq.subarray(16, 32))).toEqual(new Array(16).fill(0));
    // Only the addressed slot is touched.
    expect(sq.subarray(0, 16).every((v) => v === 0xffffffff)).toBe(true);
    expect(sq.subarray(32, 48).every((v) => v === 0xffffffff)).toBe(true);
  });

  test("every field lands in its dword", () => {
    const sq = dirtyRing();
    const cmd: Command = {
      opcode: 0x7f,
      nsid: 0xfffffffe,
      prp1: 0x1_2345_6000,
      prp2: 0xab_cdef_1000,
      cdw10: 10,
      cdw11: 11,
      cdw12: 12,
      cdw13: 13,
      cdw14: 14,
      cdw15: 0xffffffff,
    };
    writeCommand(sq, 0, 0xbeef, cmd);
    expect(Array.from(sq.subarray(0, 16))).toEqual([
      0xbeef007f, // CDW0: CID 31:16, OPC 07:00, FUSE/PSDT 0
      0xfffffffe, // NSID
      0,
      0,
      0, // MPTR
      0,
      0x23456000, // PRP1 lo
      0x1, // PRP1 hi
      0xcdef1000, // PRP2 lo
      0xab, // PRP2 hi
      10,
      11,
      12,
      13,
      14,
      0xffffffff,
    ]);
  });

  test("CID in CDW0 31:16, the highest CID included", () => {
    const sq = dirtyRing();
    writeCommand(sq, 0, CID_MAX, { opcode: NVM_READ });
    expect(sq[0]).toBe(0xfffe0002);
    writeCommand(sq, 0, 1, { opcode: NVM_WRITE });
    expect(sq[0]).toBe(0x00010001);
  });

  test("PRPs below 4 GiB have a zero hi dword", () => {
    const sq = dirtyRing();
    writeCommand(sq, 0, 0, { opcode: NVM_READ, prp1: 0xfffff000, prp2: 0x1000 });
    expect([sq[6], sq[7], sq[8], sq[9]]).toEqual([0xfffff000, 0, 0x1000, 0]);
  });

  test("lo32/hi32 split 53-bit addresses", () => {
    expect(lo32(0x1_0000_0000)).toBe(0);
    expect(hi32(0x1_0000_0000)).toBe(1);
    expect(lo32(0x1f_ffff_ffff_f000)).toBe(0xfffff000);
    expect(hi32(0x1f_ffff_ffff_f000)).toBe(0x1fffff);
  });
});

describe("writeSqe", () => {
  test("every dword of the slot: 64-bit PRPs split lo/hi, CDW10-12 as given, omitted CDW13-15 zero", () => {
    const ring = dirtyRing();
    const o = SQE_DWORDS; // the middle slot
    writeSqe(ring, o, NVM_WRITE, 0xabcd, 7, 0x12_3456_7000, 2 ** 53 - 4096, 0xffff_ffff, 3, 0x8000_0007);
    expect(Array.from(ring.subarray(o, o + SQE_DWORDS))).toEqual([
      (0xabcd << 16 | NVM_WRITE) >>> 0, 7, 0, 0, 0, 0,
      0x3456_7000, 0x12, 0xffff_f000, 0x1f_ffff,
      0xffff_ffff, 3, 0x8000_0007, 0, 0, 0,
    ]);
    // The slots around it are untouched.
    expect(ring.subarray(0, o).every((d) => d === 0xffffffff)).toBe(true);
    expect(ring.subarray(o + SQE_DWORDS).every((d) => d === 0xffffffff)).toBe(true);
  });

  test("CDW13-15 when given; PRP2 0", () => {
    const ring = dirtyRing();
    writeSqe(ring, 0, NVM_READ, 1, 1, 4096, 0, 1, 2, 3, 4, 5, 6);
    expect(Array.from(ring.subarray(0, SQE_DWORDS))).toEqual([(1 << 16) | NVM_READ, 1, 0, 0, 0, 0, 4096, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
  });
});

describe("admin command builders", () => {
  test("identify: CNS in CDW10 07:00, CNTID 31:16, data at PRP1", () => {
    expect(identify(CNS_CONTROLLER, 0, 0x2000)).toEqual({ opcode: ADMIN_IDENTIFY, nsid: 0, prp1: 0x2000, cdw10: 0x01 });
    expect(identify(CNS_NAMESPACE, 7, 0x3000, 0x1234)).toEqual({
      opcode: ADMIN_IDENTIFY,
      nsid: 7,
      prp1: 0x3000,
      cdw10: 0x12340000,
    });
    expect(ADMIN_IDENTIFY).toBe(0x06);
  });

  test("createIoCq: QID 15:00, QSIZE 31:16 0-based, PC bit 0, IEN bit 1, IV 31:16", () => {
    const c = createIoCq(3, 64, 0x1_0000_0000);
    expect(c.opcode).toBe(ADMIN_CREATE_IO_CQ);
    expect(ADMIN_CREATE_IO_CQ).toBe(0x05);
    expect(c.prp1).toBe(0x1_0000_0000);
    expect(c.cdw10).toBe(0x003f0003);
    expect(c.cdw11).toBe(0x1);
    expect(createIoCq(1, 1024, 0, { pc: false, ien: true, iv: 5 }).cdw11).toBe(0x00050002);
    expect(createIoCq(0xffff, 65536, 0).cdw10).toBe(0xffffffff);
  });

  test("createIoSq: QSIZE 31:16 0-based, PC bit 0, QPRIO 02:01, CQID in CDW11 31:16", () => {
    const c = createIoSq(2, 256, 7, 0x5000);
    expect(c.opcode).toBe(ADMIN_CREATE_IO_SQ);
    expect(ADMIN_CREATE_IO_SQ).toBe(0x01);
    expect(c.prp1).toBe(0x5000);
    expect(c.cdw10).toBe(0x00ff0002);
    expect(c.cdw11).toBe(0x00070001);
    expect(createIoSq(2, 2, 0xffff, 0, { pc: false, qprio: 3 }).cdw11).toBe(0xffff0006);
  });

  test("deleteIoSq / deleteIoCq: QID in CDW10 15:00", () => {
    expect(deleteIoSq(9)).toEqual({ opcode: ADMIN_DELETE_IO_SQ, cdw10: 9 });
    expect(deleteIoCq(9)).toEqual({ opcode: ADMIN_DELETE_IO_CQ, cdw10: 9 });
    expect([ADMIN_DELETE_IO_SQ, ADMIN_DELETE_IO_CQ]).toEqual([0x00, 0x04]);
  });

  test("getLogPage 4096 bytes: NUMD 1023 = NUMDL 3ffh, NUMDU 0", () => {
    const c = getLogPage(0x02, 0xffffffff, 4096, 0x8000);
    expect(c.opcode).toBe(ADMIN_GET_LOG_PAGE);
    expect(c.nsid).toBe(0xffffffff);
    expect(c.cdw10).toBe(0x03ff0002);
    expect(c.cdw11).toBe(0);
    expect(c.cdw12).toBe(0);
    expect(c.cdw13).toBe(0);
  });

  test("getLogPage 1 MiB: NUMD 3ffffh = NUMDL ffffh, NUMDU 3", () => {
    const c = getLogPage(0x01, 0, 1 << 20, 0x8000, 0x9000);
    expect(c.cdw10).toBe(0xffff0001);
    expect(c.cdw11).toBe(3);
    expect(c.prp2).toBe(0x9000);
  });

  test("getLogPage offset goes to LPOL/LPOU", () => {
    const c = getLogPage(0x02, 0, 512, 0, 0, 0x2_0000_0200);
    expect(c.cdw10).toBe(0x007f0002); // 512 bytes: NUMD 127
    expect(c.cdw12).toBe(0x200);
    expect(c.cdw13).toBe(2);
  });

  test("abort: SQID 15:00, CID 31:16", () => {
    expect(abort(1, 0xfffe)).toEqual({ opcode: ADMIN_ABORT, cdw10: 0xfffe0001 });
    expect(ADMIN_ABORT).toBe(0x08);
  });

  test("getFeatures / setFeatures: FID 07:00, SEL 10:08, SV bit 31", () => {
    const g = getFeatures(FID_VOLATILE_WRITE_CACHE, SEL_SAVED);
    expect(g.opcode).toBe(ADMIN_GET_FEATURES);
    expect(g.cdw10).toBe(0x206);
    const s = setFeatures(FID_VOLATILE_WRITE_CACHE, 1, true);
    expect(s.opcode).toBe(ADMIN_SET_FEATURES);
    expect(s.cdw10).toBe(0x80000006);
    expect(s.cdw11).toBe(1);
    expect(setFeatures(FID_VOLATILE_WRITE_CACHE, 0).cdw10).toBe(0x06);
    expect(setFeatures(FID_VOLATILE_WRITE_CACHE, 0, false, 1, 0, 0xabcd).cdw12).toBe(0xabcd);
  });

  test("featureName: the specification's names, vendor specific C0h-FFh, the rest reserved", () => {
    expect(featureName(FID_VOLATILE_WRITE_CACHE)).toBe("Volatile Write Cache");
    expect(featureName(FID_NUMBER_OF_QUEUES)).toBe("Number of Queues");
    expect(featureName(0xc5)).toBe("Vendor Specific");
    expect(featureName(0x70)).toBe("Reserved");
  });

  test("formatNvm: LBAF 3:0 and 13:12, MSET 4, PI 7:5, PIL 8, SES 11:9", () => {
    expect(formatNvm(1, { lbaf: 4 })).toEqual({ opcode: ADMIN_FORMAT_NVM, nsid: 1, cdw10: 4 });
    expect(ADMIN_FORMAT_NVM).toBe(0x80);
    expect(formatNvm(2, { lbaf: 0x25, mset: 1, pi: 3, pil: 1, ses: 2 }).cdw10).toBe(0x5 | (1 << 4) | (3 << 5) | (1 << 8) | (2 << 9) | (2 << 12));
    expect(formatNvm(0xffffffff, { lbaf: 0, ses: 1 })).toEqual({ opcode: ADMIN_FORMAT_NVM, nsid: 0xffffffff, cdw10: 1 << 9 });
  });

  test("formatNvm refuses a value wider than its field, before anything is sent", () => {
    expect(() => formatNvm(1, { lbaf: 64 })).toThrow("LBAF 64 is not an integer in 0..63");
    expect(() => formatNvm(1, { lbaf: 0, ses: 3 })).toThrow("SES 3");
    expect(() => formatNvm(1, { lbaf: 0, pi: 4 })).toThrow("PI 4");
    expect(() => formatNvm(1, { lbaf: 0, mset: 2 })).toThrow("MSET 2");
    expect(() => formatNvm(1, { lbaf: 0, pil: -1 })).toThrow("PIL -1");
    expect(() => formatNvm(1, { lbaf: 1.5 })).toThrow("LBAF 1.5");
  });

  test("numberOfQueues: NSQR in CDW11 15:00, NCQR 31:16, both 0-based", () => {
    const c = numberOfQueues(8, 4);
    expect(c.opcode).toBe(ADMIN_SET_FEATURES);
    expect(c.cdw10).toBe(FID_NUMBER_OF_QUEUES);
    expect(FID_NUMBER_OF_QUEUES).toBe(0x07);
    expect(c.cdw11).toBe(0x00030007);
  });

  test("decodeNumberOfQueues: NSQA from DW0 15:00, NCQA from 31:16", () => {
    expect(decodeNumberOfQueues(0x0003_0007)).toEqual({ sqs: 8, cqs: 4 });
    expect(decodeNumberOfQueues(0x0007_0003)).toEqual({ sqs: 4, cqs: 8 });
    expect(decodeNumberOfQueues(0xffff_fffe)).toEqual({ sqs: 0xffff, cqs: 0x10000 });
  });
});

describe("NVM command builders", () => {
  test("readWrite: SLBA in CDW10/11, NLB-1 in CDW12", () => {
    const c = readWrite(NVM_READ, 1, 0x1_2345_6789, 8, 0x1000, 0x2000);
    expect(c).toEqual({
      opcode: NVM_READ,
      nsid: 1,
      prp1: 0x1000,
      prp2: 0x2000,
      cdw10: 0x23456789,
      cdw11: 1,
      cdw12: 7,
    });
    expect(readWrite(NVM_WRITE, 1, 0, 1, 0, 0).cdw12).toBe(0);
    expect(readWrite(NVM_WRITE, 1, 0, 65536, 0, 0).cdw12).toBe(0xffff);
  });

  test("readWrite through writeCommand", () => {
    const sq = dirtyRing();
    writeCommand(sq, 0, 5, readWrite(NVM_WRITE, 2, 123, 16, 0x1_0000_1000, 0));
    expect(Array.from(sq.subarray(0, 16))).toEqual([0x00050001, 2, 0, 0, 0, 0, 0x1000, 1, 0, 0, 123, 0, 15, 0, 0, 0]);
  });

  test("flush carries only the NSID", () => {
    expect(flush(3)).toEqual({ opcode: NVM_FLUSH, nsid: 3 });
  });
});

describe("completion queue entry accessors", () => {
  test("SQHD/SQID in DW2, CID/phase/status in DW3", () => {
    const cq = new Uint32Array([0, 0, 0x0002_0011, 0xa000_0000 | (1 << 16) | 0x1234]);
    expect(cqeSqhd(cq, 0)).toBe(0x11);
    expect(cqeSqid(cq, 0)).toBe(2);
    expect(cqeCid(cq, 0)).toBe(0x1234);
    // Status Field is DW3 31:17; the phase bit (16) is not part of it.
    expect(cqeStatus(cq, 0)).toBe(0x5000);
  });
});

describe("commandName", () => {
  test("admin and NVM tables are separate", () => {
    expect(commandName(0x02, true)).toBe("Get Log Page");
    expect(commandName(0x02, false)).toBe("Read");
    expect(commandName(0x06, true)).toBe("Identify");
    expect(commandName(0x7e, true)).toBe("Admin opcode 0x7e");
    expect(commandName(0x0a, false)).toBe("I/O opcode 0x0a");
  });
});
