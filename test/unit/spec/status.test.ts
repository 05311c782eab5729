import { describe, expect, test } from "bun:test";
import { InvalidArgumentError, NvmeStatusError } from "../../../lib/errors.ts";
import {
  SCT_COMMAND_SPECIFIC,
  SCT_GENERIC,
  SCT_MEDIA,
  SCT_PATH,
  SCT_VENDOR_SPECIFIC,
  SC_ABORT_REQUESTED,
  SC_CID_CONFLICT,
  SC_COMPARE_FAILURE,
  SC_CQ_INVALID,
  SC_INVALID_FIELD,
  SC_INVALID_FORMAT,
  SC_INVALID_NAMESPACE,
  SC_INVALID_OPCODE,
  SC_INVALID_QID,
  SC_INVALID_QUEUE_SIZE,
  SC_LBA_OUT_OF_RANGE,
  SC_SQ_DELETION,
  SC_SUCCESS,
  SC_UNRECOVERED_READ,
  SC_WRITE_FAULT,
  decodeStatus,
  encodeStatus,
  isSuccess,
  statusName,
  statusTypeName,
} from "../../../lib/spec/status.ts";

describe("status constants", () => {
  test("SCT values match the Status Code Type table", () => {
    expect([SCT_GENERIC, SCT_COMMAND_SPECIFIC, SCT_MEDIA, SCT_PATH, SCT_VENDOR_SPECIFIC]).toEqual([0, 1, 2, 3, 7]);
  });

  test("SC values match the specification tables", () => {
    expect(SC_SUCCESS).toBe(0x00);
    expect(SC_INVALID_OPCODE).toBe(0x01);
    expect(SC_INVALID_FIELD).toBe(0x02);
    expect(SC_CID_CONFLICT).toBe(0x03);
    expect(SC_ABORT_REQUESTED).toBe(0x07);
    expect(SC_SQ_DELETION).toBe(0x08);
    expect(SC_INVALID_NAMESPACE).toBe(0x0b);
    expect(SC_LBA_OUT_OF_RANGE).toBe(0x80);
    expect(SC_CQ_INVALID).toBe(0x00);
    expect(SC_INVALID_QID).toBe(0x01);
    expect(SC_INVALID_QUEUE_SIZE).toBe(0x02);
    expect(SC_INVALID_FORMAT).toBe(0x0a);
    expect(SC_WRITE_FAULT).toBe(0x80);
    expect(SC_UNRECOVERED_READ).toBe(0x81);
    expect(SC_COMPARE_FAILURE).toBe(0x85);
  });
});

describe("statusName", () => {
  test("generic command status", () => {
    const cases: [number, string][] = [
      [0x00, "Successful Completion"],
      [0x01, "Invalid Command Opcode"],
      [0x02, "Invalid Field in Command"],
      [0x03, "Command ID Conflict"],
      [0x04, "Data Transfer Error"],
      [0x05, "Commands Aborted due to Power Loss Notification"],
      [0x06, "Internal Error"],
      [0x07, "Command Abort Requested"],
      [0x08, "Command Aborted due to SQ Deletion"],
      [0x09, "Command Aborted due to Failed Fused Command"],
      [0x0a, "Command Aborted due to Missing Fused Command"],
      [0x0b, "Invalid Namespace or Format"],
      [0x0c, "Command Sequence Error"],
      [0x13, "PRP Offset Invalid"],
      [0x16, "SGL Offset Invalid"],
      [0x18, "Host Identifier Inconsistent Format"],
      [0x1d, "Sanitize In Progress"],
      [0x20, "Namespace is Write Protected"],
      [0x21, "Command Interrupted"],
      [0x22, "Transient Transport Error"],
      [0x23, "Command Prohibited by Command and Feature Lockdown"],
      [0x24, "Admin Command Media Not Ready"],
      [0x80, "LBA Out of Range"],
      [0x81, "Capacity Exceeded"],
      [0x82, "Namespace Not Ready"],
      [0x83, "Reservation Conflict"],
      [0x84, "Format In Progress"],
      [0x85, "Invalid Value Size"],
    ];
    for (const [sc, name] of cases) expect(statusName(0, sc)).toBe(name);
  });

  test("command specific status", () => {
    const cases: [number, string][] = [
      [0x00, "Completion Queue Invalid"],
      [0x01, "Invalid Queue Identifier"],
      [0x02, "Invalid Queue Size"],
      [0x03, "Abort Command Limit Exceeded"],
      [0x05, "Asynchronous Event Request Limit Exceeded"],
      [0x06, "Invalid Firmware Slot"],
      [0x07, "Invalid Firmware Image"],
      [0x08, "Invalid Interrupt Vector"],
      [0x09, "Invalid Log Page"],
      [0x0a, "Invalid Format"],
      [0x0b, "Firmware Activation Requires Conventional Reset"],
      [0x0c, "Invalid Queue Deletion"],
      [0x2d, "Identifier Unavailable"],
      [0x80, "Conflicting Attributes"],
      [0x81, "Invalid Protection Information"],
      [0x82, "Attempted Write to Read Only Range"],
      [0xb9, "Zone Is Full"],
    ];
    for (const [sc, name] of cases) expect(statusName(1, sc)).toBe(name);
  });

  test("media and data integrity errors", () => {
    expect(statusName(2, 0x80)).toBe("Write Fault");
    expect(statusName(2, 0x81)).toBe("Unrecovered Read Error");
    expect(statusName(2, 0x82)).toBe("End-to-end Guard Check Error");
    expect(statusName(2, 0x83)).toBe("End-to-end Application Tag Check Error");
    expect(statusName(2, 0x84)).toBe("End-to-end Reference Tag Check Error");
    expect(statusName(2, 0x85)).toBe("Compare Failure");
    expect(statusName(2, 0x86)).toBe("Access Denied");
    expect(statusName(2, 0x87)).toBe("Deallocated or Unwritten Logical Block");
  });

  test("path related status", () => {
    expect(statusName(3, 0x00)).toBe("Internal Path Error");
    expect(statusName(3, 0x01)).toBe("Asymmetric Access Persistent Loss");
    expect(statusName(3, 0x02)).toBe("Asymmetric Access Inaccessible");
    expect(statusName(3, 0x03)).toBe("Asymmetric Access Transition");
    expect(statusName(3, 0x60)).toBe("Controller Pathing Error");
    expect(statusName(3, 0x70)).toBe("Host Pathing Error");
    expect(statusName(3, 0x71)).toBe("Command Aborted By Host");
  });

  test("unknown codes fall back to a description carrying the value", () => {
    expect(statusName(0, 0x3f)).toBe("Unknown generic status 0x3f");
    expect(statusName(0, 0x17)).toBe("Unknown generic status 0x17");
    expect(statusName(1, 0x04)).toBe("Unknown command specific status 0x04");
    expect(statusName(2, 0x00)).toBe("Unknown media and data integrity status 0x00");
    expect(statusName(3, 0x04)).toBe("Unknown path related status 0x04");
    expect(statusName(0, 0xc5)).toBe("Vendor specific generic status 0xc5");
    expect(statusName(2, 0xff)).toBe("Vendor specific media and data integrity status 0xff");
  });

  test("vendor specific and reserved types", () => {
    expect(statusName(7, 0x12)).toBe("Vendor specific status 0x12");
    expect(statusName(7, 0x00)).toBe("Vendor specific status 0x00");
    expect(statusName(4, 0x01)).toBe("Reserved status code type 0x04, status 0x01");
    expect(statusName(6, 0x80)).toBe("Reserved status code type 0x06, status 0x80");
  });

  test("values outside the 3-bit SCT / 8-bit SC give text naming them, never an exception", () => {
    expect(statusName(8, 0x01)).toBe("Invalid status code type 0x08, status 0x01");
    expect(statusName(NaN, 1.5)).toBe("Invalid status code type NaN, status 1.5");
    expect(statusName(-1, 2)).toBe("Invalid status code type -1, status 0x02");
    expect(statusName(0, 0x100)).toBe("Invalid status code 0x100 (status code type 0x00)");
    expect(statusName(7, -3)).toBe("Invalid status code -3 (status code type 0x07)");
    expect(statusTypeName(8)).toBe("invalid");
    expect(statusTypeName(1.5)).toBe("invalid");
    expect(statusTypeName(NaN)).toBe("invalid");
  });
});

describe("statusTypeName", () => {
  test("every SCT value", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(statusTypeName)).toEqual([
      "generic",
      "command specific",
      "media and data integrity",
      "path related",
      "reserved",
      "reserved",
      "reserved",
      "vendor specific",
    ]);
  });
});

describe("decodeStatus", () => {
  test("zero is success with no flags", () => {
    expect(decodeStatus(0)).toEqual({ sct: 0, sc: 0, crd: 0, more: false, dnr: false });
    expect(isSuccess(0)).toBe(true);
  });

  test("SC bits 7:0 and SCT bits 10:8", () => {
    // Media error, Unrecovered Read Error: SCT 2, SC 81h.
    const s = decodeStatus((2 << 8) | 0x81);
    expect(s.sct).toBe(2);
    expect(s.sc).toBe(0x81);
    expect(s.dnr).toBe(false);
    expect(s.more).toBe(false);
    expect(s.crd).toBe(0);
  });

  test("CRD bits 12:11, M bit 13, DNR bit 14", () => {
    expect(decodeStatus(1 << 14)).toEqual({ sct: 0, sc: 0, crd: 0, more: false, dnr: true });
    expect(decodeStatus(1 << 13)).toEqual({ sct: 0, sc: 0, crd: 0, more: true, dnr: false });
    expect(decodeStatus(3 << 11).crd).toBe(3);
    expect(decodeStatus(2 << 11).crd).toBe(2);
    const all = decodeStatus(0x7fff);
    expect(all).toEqual({ sct: 7, sc: 0xff, crd: 3, more: true, dnr: true });
  });

  test("from a raw CQE DW3 (status field in bits 31:17, phase in bit 16)", () => {
    // DNR set, SCT 0, SC 02h Invalid Field, phase tag 1, CID 0x1234 in bits 15:0.
    const dw3 = ((1 << 31) | (0x02 << 17) | (1 << 16) | 0x1234) >>> 0;
    const s = decodeStatus(dw3 >>> 17);
    expect(s).toEqual({ sct: 0, sc: SC_INVALID_FIELD, crd: 0, more: false, dnr: true });
    expect(isSuccess(dw3 >>> 17)).toBe(false);
  });

  test("anything but an integer in 0..0x7fff is an InvalidArgumentError", () => {
    for (const bad of [NaN, 1.5, -1, 0x8000, 0xffff, 2 ** 32, Infinity]) {
      expect(() => decodeStatus(bad)).toThrow(InvalidArgumentError);
    }
    expect(() => decodeStatus(NaN)).toThrow(/0x7fff/);
  });

  test("success with DNR/More set still counts as success", () => {
    expect(isSuccess(encodeStatus({ sct: 0, sc: 0, dnr: true, more: true, crd: 1 }))).toBe(true);
    expect(isSuccess(encodeStatus({ sct: 1, sc: 0 }))).toBe(false);
  });

  test("encodeStatus is the inverse", () => {
    const parts = { sct: 1, sc: 0x0a, crd: 2, more: true, dnr: true };
    expect(encodeStatus(parts)).toBe(0x0a | (1 << 8) | (2 << 11) | (1 << 13) | (1 << 14));
    expect(decodeStatus(encodeStatus(parts))).toEqual(parts);
  });

  test("agrees with NvmeStatusError's decoding", () => {
    const status = encodeStatus({ sct: 2, sc: 0x81, crd: 1, dnr: true, more: true });
    const err = new NvmeStatusError(status, { command: "Read", opcode: 0x02, cid: 7, sqid: 1 });
    const d = decodeStatus(status);
    expect(err.sct).toBe(d.sct);
    expect(err.sc).toBe(d.sc);
    expect(err.crd).toBe(d.crd);
    expect(err.dnr).toBe(d.dnr);
    expect(err.more).toBe(d.more);
    expect(err.status).toBe("Unrecovered Read Error");
    expect(err.message).toContain("media and data integrity");
  });
});
