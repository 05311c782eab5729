import { describe, expect, test } from "bun:test";
import { InvalidArgumentError, NvmeStatusError, ParseError } from "../../../lib/errors.ts";
import {
  ERROR_LOG_ENTRY_SIZE,
  FW_SLOT_LOG_SIZE,
  LID_ERROR,
  LID_FW_SLOT,
  LID_SMART,
  SMART_LOG_SIZE,
  dataUnitsToBytes,
  getLogPageCdws,
  getLogPageDwords,
  parseErrorLog,
  parseFirmwareSlotLog,
  parseSmartLog,
} from "../../../lib/spec/log.ts";
import { SCT_MEDIA, SC_UNRECOVERED_READ, encodeStatus } from "../../../lib/spec/status.ts";

function page(size: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(size);
  return { bytes, view: new DataView(bytes.buffer) };
}

function setU128(view: DataView, off: number, v: bigint): void {
  view.setBigUint64(off, v & 0xffff_ffff_ffff_ffffn, true);
  view.setBigUint64(off + 8, v >> 64n, true);
}

describe("LIDs", () => {
  test("mandatory log page identifiers", () => {
    expect([LID_ERROR, LID_SMART, LID_FW_SLOT]).toEqual([0x01, 0x02, 0x03]);
  });
});

describe("getLogPageDwords", () => {
  test("4 KiB: NUMD is 0's based, 1023 not 1024", () => {
    expect(getLogPageDwords(LID_ERROR, 4096)).toEqual({ numdl: 1023, numdu: 0 });
  });

  test("512-byte SMART log", () => {
    expect(getLogPageDwords(LID_SMART, 512)).toEqual({ numdl: 127, numdu: 0 });
  });

  test("one dword", () => {
    expect(getLogPageDwords(LID_SMART, 4)).toEqual({ numdl: 0, numdu: 0 });
  });

  test("the NUMDL / NUMDU boundary", () => {
    // 65536 dwords -> NUMD FFFFh fits NUMDL alone.
    expect(getLogPageDwords(0x07, 65536 * 4)).toEqual({ numdl: 0xffff, numdu: 0 });
    // 65537 dwords -> NUMD 10000h.
    expect(getLogPageDwords(0x07, 65537 * 4)).toEqual({ numdl: 0, numdu: 1 });
  });

  test("1 MiB: NUMD 3FFFFh splits into NUMDL FFFFh, NUMDU 3", () => {
    const { numdl, numdu } = getLogPageDwords(0x07, 1024 * 1024);
    expect(numdl).toBe(0xffff);
    expect(numdu).toBe(3);
    expect(numdu * 0x10000 + numdl + 1).toBe((1024 * 1024) / 4);
  });

  test("the largest length NUMD can express", () => {
    expect(getLogPageDwords(0x07, 2 ** 34)).toEqual({ numdl: 0xffff, numdu: 0xffff });
    expect(() => getLogPageDwords(0x07, 2 ** 34 + 4)).toThrow(InvalidArgumentError);
  });

  test("rejects lengths that are 0, negative, fractional or not dword multiples", () => {
    for (const bad of [0, -4, 2, 4095, 4097, 5.5, Number.NaN]) {
      expect(() => getLogPageDwords(LID_SMART, bad)).toThrow(InvalidArgumentError);
    }
  });

  test("rejects a LID outside 8 bits", () => {
    expect(() => getLogPageDwords(0x100, 512)).toThrow(InvalidArgumentError);
    expect(() => getLogPageDwords(-1, 512)).toThrow(InvalidArgumentError);
  });
});

describe("getLogPageCdws", () => {
  test("SMART log, 512 bytes", () => {
    expect(getLogPageCdws({ lid: LID_SMART, byteLength: 512 })).toEqual({
      cdw10: (127 << 16) | 0x02,
      cdw11: 0,
      cdw12: 0,
      cdw13: 0,
    });
  });

  test("every field in its bits", () => {
    const c = getLogPageCdws({ lid: 0x0c, byteLength: 1024 * 1024, lsp: 0x01, rae: true, lsi: 0xabcd, offset: 2 ** 32 + 8 });
    // NUMDL FFFFh in 31:16, RAE bit 15, LSP 01h in 14:8, LID 0Ch in 7:0.
    expect(c.cdw10).toBe(0xffff_810c);
    // LSI in 31:16, NUMDU 3 in 15:0.
    expect(c.cdw11).toBe(0xabcd_0003);
    expect(c.cdw12).toBe(8);
    expect(c.cdw13).toBe(1);
  });

  test("rejects out-of-range LSP, LSI and unaligned offsets", () => {
    expect(() => getLogPageCdws({ lid: 2, byteLength: 512, lsp: 0x80 })).toThrow(InvalidArgumentError);
    expect(() => getLogPageCdws({ lid: 2, byteLength: 512, lsi: 0x10000 })).toThrow(InvalidArgumentError);
    expect(() => getLogPageCdws({ lid: 2, byteLength: 512, offset: 2 })).toThrow(InvalidArgumentError);
  });

  test("an offset of -0 gives LPOL / LPOU of +0", () => {
    const c = getLogPageCdws({ lid: 2, byteLength: 512, offset: -0 });
    expect(Object.is(c.cdw12, 0)).toBe(true);
    expect(Object.is(c.cdw13, 0)).toBe(true);
  });
});

function smartPage(): Uint8Array {
  const { bytes, view } = page(SMART_LOG_SIZE);
  view.setUint8(0, 0b0010_0101); // spare, reliability, PMR
  view.setUint16(1, 310, true); // 37 C
  view.setUint8(3, 95);
  view.setUint8(4, 10);
  view.setUint8(5, 120); // past rated endurance
  view.setUint8(6, 0x04);
  setU128(view, 32, 0x1_0000_0000_0000_0001n);
  setU128(view, 48, 2000n);
  setU128(view, 64, 3000n);
  setU128(view, 80, 4000n);
  setU128(view, 96, 5000n);
  setU128(view, 112, 6000n);
  setU128(view, 128, 7000n);
  setU128(view, 144, 8000n);
  setU128(view, 160, 9000n);
  setU128(view, 176, (1n << 127n) + 1n);
  view.setUint32(192, 11, true);
  view.setUint32(196, 12, true);
  const sensors = [300, 0, 310, 0, 0, 0, 0, 350];
  sensors.forEach((k, i) => view.setUint16(200 + 2 * i, k, true));
  view.setUint32(216, 21, true);
  view.setUint32(220, 22, true);
  view.setUint32(224, 23, true);
  view.setUint32(228, 24, true);
  return bytes;
}

describe("parseSmartLog", () => {
  const s = parseSmartLog(smartPage());

  test("critical warning bits", () => {
    expect(s.criticalWarning).toBe(0x25);
    expect(s.criticalWarnings).toEqual({
      availableSpare: true,
      temperature: false,
      reliabilityDegraded: true,
      readOnly: false,
      volatileBackupFailed: false,
      pmrReadOnly: true,
    });
  });

  test("temperature, spare and wear bytes 1..6", () => {
    expect(s.compositeTemperature).toBe(310);
    expect(s.compositeTemperatureCelsius).toBe(37);
    expect(s.availableSpare).toBe(95);
    expect(s.availableSpareThreshold).toBe(10);
    expect(s.percentageUsed).toBe(120);
    expect(s.enduranceGroupCriticalWarning).toBe(4);
  });

  test("128-bit counters at 32..191", () => {
    expect(s.dataUnitsRead).toBe(0x1_0000_0000_0000_0001n);
    expect(s.dataUnitsWritten).toBe(2000n);
    expect(s.hostReadCommands).toBe(3000n);
    expect(s.hostWriteCommands).toBe(4000n);
    expect(s.controllerBusyTime).toBe(5000n);
    expect(s.powerCycles).toBe(6000n);
    expect(s.powerOnHours).toBe(7000n);
    expect(s.unsafeShutdowns).toBe(8000n);
    expect(s.mediaErrors).toBe(9000n);
    expect(s.numErrLogEntries).toBe((1n << 127n) + 1n);
  });

  test("temperature times, sensors and thermal management", () => {
    expect(s.warningTempTime).toBe(11);
    expect(s.criticalCompTime).toBe(12);
    expect(s.temperatureSensors).toEqual([300, null, 310, null, null, null, null, 350]);
    expect(s.tmt1TransitionCount).toBe(21);
    expect(s.tmt2TransitionCount).toBe(22);
    expect(s.tmt1TotalTime).toBe(23);
    expect(s.tmt2TotalTime).toBe(24);
  });

  test("data units are thousands of 512-byte units", () => {
    expect(dataUnitsToBytes(2000n)).toBe(1_024_000_000n);
  });

  test("short buffer is a ParseError", () => {
    expect(() => parseSmartLog(new Uint8Array(511))).toThrow(ParseError);
  });
});

function errorEntry(view: DataView, index: number, fields: { count: bigint; status15: number; phase: number }): void {
  const o = index * ERROR_LOG_ENTRY_SIZE;
  view.setBigUint64(o, fields.count, true);
  view.setUint16(o + 8, 3, true); // SQID
  view.setUint16(o + 10, 0xbeef, true); // CID
  view.setUint16(o + 12, (fields.status15 << 1) | fields.phase, true);
  view.setUint16(o + 14, (5 << 8) | 44, true); // bit 5 of command byte 44
  view.setBigUint64(o + 16, 0x1_2345_6789n, true); // LBA
  view.setUint32(o + 24, 1, true); // NSID
  view.setUint8(o + 28, 0xc0); // VSIA
  view.setUint8(o + 29, 0); // TRTYPE
  view.setBigUint64(o + 32, 0xfeedn, true); // command specific
  view.setUint16(o + 40, 0x77, true); // transport type specific
}

describe("parseErrorLog", () => {
  const status15 = encodeStatus({ sct: SCT_MEDIA, sc: SC_UNRECOVERED_READ, dnr: true, more: true });

  test("decodes each 64-byte entry; the status word's bit 0 is the phase tag", () => {
    const { bytes, view } = page(4 * ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 0, { count: 42n, status15, phase: 1 });
    errorEntry(view, 1, { count: 41n, status15: 0x0002, phase: 0 });
    const log = parseErrorLog(bytes, 4);
    expect(log).toHaveLength(2); // entries 2 and 3 are unused (Error Count 0)
    const [e0, e1] = log;
    expect(e0?.errorCount).toBe(42n);
    expect(e0?.sqid).toBe(3);
    expect(e0?.cid).toBe(0xbeef);
    expect(e0?.status).toBe(status15);
    expect(e0?.phaseTag).toBe(1);
    expect(e0?.statusFields).toEqual({ sct: 2, sc: 0x81, crd: 0, more: true, dnr: true });
    expect(e0?.parameterErrorLocation).toBe(0x052c);
    expect(e0?.parameterErrorByte).toBe(44);
    expect(e0?.parameterErrorBit).toBe(5);
    expect(e0?.lba).toBe(0x1_2345_6789n);
    expect(e0?.nsid).toBe(1);
    expect(e0?.vsia).toBe(0xc0);
    expect(e0?.trtype).toBe(0);
    expect(e0?.csi).toBe(0xfeedn);
    expect(e0?.ttsi).toBe(0x77);
    expect(e1?.status).toBe(0x0002);
    expect(e1?.phaseTag).toBe(0);
    expect(e1?.statusFields.sc).toBe(0x02);
    expect(e1?.statusFields.dnr).toBe(false);
  });

  test("keepUnused keeps every slot, unused ones (Error Count 0) included, in log order", () => {
    const { bytes, view } = page(4 * ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 1, { count: 7n, status15, phase: 1 });
    const log = parseErrorLog(bytes, 4, { keepUnused: true });
    expect(log.map((e) => e.errorCount)).toEqual([0n, 7n, 0n, 0n]);
    expect(log[0]?.status).toBe(0);
  });

  test("status converts straight into NvmeStatusError", () => {
    const { bytes, view } = page(ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 0, { count: 1n, status15, phase: 1 });
    const [e] = parseErrorLog(bytes, 1);
    const err = new NvmeStatusError(e?.status ?? 0, { command: "Read", opcode: 2, cid: e?.cid ?? 0, sqid: e?.sqid ?? 0 });
    expect(err.status).toBe("Unrecovered Read Error");
    expect(err.dnr).toBe(true);
  });

  test("parameter error location FFFFh means not applicable", () => {
    const { bytes, view } = page(ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 0, { count: 1n, status15: 0, phase: 0 });
    view.setUint16(14, 0xffff, true);
    const [e] = parseErrorLog(bytes, 1);
    expect(e?.parameterErrorByte).toBeNull();
    expect(e?.parameterErrorBit).toBeNull();
  });

  test("entry count defaults to what the buffer holds", () => {
    const { bytes, view } = page(3 * ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 2, { count: 9n, status15: 1, phase: 0 });
    expect(parseErrorLog(bytes).map((e) => e.errorCount)).toEqual([9n]);
  });

  test("reads only the requested entries", () => {
    const { bytes, view } = page(2 * ERROR_LOG_ENTRY_SIZE);
    errorEntry(view, 1, { count: 9n, status15: 1, phase: 0 });
    expect(parseErrorLog(bytes, 1)).toEqual([]);
  });

  test("buffer shorter than the entries asked for is a ParseError", () => {
    expect(() => parseErrorLog(new Uint8Array(127), 2)).toThrow(ParseError);
  });

  test("bad entry counts are an InvalidArgumentError", () => {
    expect(() => parseErrorLog(new Uint8Array(64), -1)).toThrow(InvalidArgumentError);
    expect(() => parseErrorLog(new Uint8Array(64), 1.5)).toThrow(InvalidArgumentError);
  });
});

describe("parseFirmwareSlotLog", () => {
  function fwPage(): Uint8Array {
    const { bytes } = page(FW_SLOT_LOG_SIZE);
    bytes[0] = (3 << 4) | 2; // running from slot 2, slot 3 next
    const put = (slot: number, s: string, pad: number) => {
      for (let i = 0; i < 8; i++) bytes[8 * slot + i] = i < s.length ? s.charCodeAt(i) : pad;
    };
    put(1, "1.0.0", 0x20);
    put(2, "2.0.1", 0x00);
    put(3, "ABCDEFGH", 0x20);
    put(7, "7", 0x20);
    return bytes;
  }

  test("AFI bits 2:0 and 6:4, slots at 8 * n", () => {
    const fw = parseFirmwareSlotLog(fwPage());
    expect(fw.afi).toBe(0x32);
    expect(fw.activeSlot).toBe(2);
    expect(fw.nextSlot).toBe(3);
    expect(fw.frs1).toBe("1.0.0");
    expect(fw.frs2).toBe("2.0.1");
    expect(fw.frs3).toBe("ABCDEFGH");
    expect(fw.frs4).toBe("");
    expect(fw.frs5).toBe("");
    expect(fw.frs6).toBe("");
    expect(fw.frs7).toBe("7");
    expect(fw.frs).toEqual(["1.0.0", "2.0.1", "ABCDEFGH", "", "", "", "7"]);
  });

  test("AFI bit 3 and bit 7 are reserved and ignored", () => {
    const bytes = fwPage();
    bytes[0] = 0x80 | 0x08 | 0x01;
    const fw = parseFirmwareSlotLog(bytes);
    expect(fw.activeSlot).toBe(1);
    expect(fw.nextSlot).toBe(0);
  });

  test("short buffer is a ParseError", () => {
    expect(() => parseFirmwareSlotLog(new Uint8Array(64))).toThrow(ParseError);
  });
});
