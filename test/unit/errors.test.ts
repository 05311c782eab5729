import { describe, expect, test } from "bun:test";
import {
  ClosedError,
  ControllerFatalError,
  CudaError,
  DeviceError,
  InvalidArgumentError,
  NativeError,
  NvmeError,
  NvmeStatusError,
  type NvmeErrorCode,
  NvmeTimeoutError,
  ParseError,
  PermissionError,
} from "../../lib/errors.ts";
import { encodeStatus } from "../../lib/spec/status.ts";

const readCtx = { command: "Read", opcode: 0x02, cid: 5, sqid: 1, detail: "@ LBA 123, 8 blocks" };

describe("NvmeStatusError message", () => {
  test("reads like Linux's nvme_log_error", () => {
    const e = new NvmeStatusError(encodeStatus({ sct: 0, sc: 0x80, dnr: true }), readCtx);
    expect(e.message).toContain("Read(0x02)");
    expect(e.message).toContain("@ LBA 123, 8 blocks");
    expect(e.message).toContain("LBA Out of Range");
    expect(e.message).toContain("sct 0x0");
    expect(e.message).toContain("sc 0x80");
    expect(e.message).toContain(" DNR");
    expect(e.message).not.toContain("MORE");
    expect(e.message).toContain("sqid 1, cid 5");
    expect(e.message.startsWith("Read(0x02) @ LBA 123, 8 blocks: LBA Out of Range (sct 0x0")).toBe(true);
  });

  test("opcodes of one and two hex digits are both printed with two", () => {
    const fmt = new NvmeStatusError(encodeStatus({ sct: 1, sc: 0x0a }), {
      command: "Format NVM",
      opcode: 0x80,
      cid: 0,
      sqid: 0,
    });
    expect(fmt.message.startsWith("Format NVM(0x80): Invalid Format (sct 0x1 command specific / sc 0xa)")).toBe(true);
    const flush = new NvmeStatusError(encodeStatus({ sct: 0, sc: 0x02 }), { command: "Flush", opcode: 0, cid: 3, sqid: 2 });
    expect(flush.message).toContain("Flush(0x00): Invalid Field in Command");
  });

  test("MORE without DNR; no detail means no extra space", () => {
    const e = new NvmeStatusError(encodeStatus({ sct: 2, sc: 0x81, more: true }), { ...readCtx, detail: undefined });
    expect(e.message).toContain("Read(0x02): Unrecovered Read Error");
    expect(e.message).toContain(" MORE");
    expect(e.message).not.toContain("DNR");
  });

  test("fields decoded from the 15-bit Status Field", () => {
    // DNR bit 14, MORE 13, CRD 12:11, SCT 10:08, SC 07:00
    const e = new NvmeStatusError(0x7fff, readCtx);
    expect([e.sc, e.sct, e.crd, e.more, e.dnr]).toEqual([0xff, 7, 3, true, true]);
    expect(e.status).toBe("Vendor specific status 0xff");
    const z = new NvmeStatusError(0x0001, readCtx);
    expect([z.sc, z.sct, z.crd, z.more, z.dnr]).toEqual([1, 0, 0, false, false]);
    expect([z.command, z.opcode, z.cid, z.sqid]).toEqual(["Read", 2, 5, 1]);
  });
});

describe("error classes", () => {
  test("each has its name, a stable code and is an NvmeError", () => {
    const cases: Array<[NvmeError, string, NvmeErrorCode]> = [
      [new NvmeStatusError(1, readCtx), "NvmeStatusError", "ERR_NVME_STATUS"],
      [new NvmeTimeoutError("t", 20), "NvmeTimeoutError", "ERR_NVME_TIMEOUT"],
      [new ControllerFatalError("f", 2), "ControllerFatalError", "ERR_NVME_CONTROLLER_FATAL"],
      [new NativeError("n", 2, "open", "/x"), "NativeError", "ERR_NVME_NATIVE"],
      [new InvalidArgumentError("i"), "InvalidArgumentError", "ERR_NVME_INVALID_ARGUMENT"],
      [new DeviceError("d"), "DeviceError", "ERR_NVME_DEVICE"],
      [new PermissionError("p"), "PermissionError", "ERR_NVME_PERMISSION"],
      [new ClosedError("c"), "ClosedError", "ERR_NVME_CLOSED"],
      [new ParseError("x"), "ParseError", "ERR_NVME_PARSE"],
      [new CudaError("g", { reason: "no-driver", call: "dlopen" }), "CudaError", "ERR_NVME_CUDA"],
    ];
    for (const [e, name, code] of cases) {
      expect(e).toBeInstanceOf(Error);
      expect(e).toBeInstanceOf(NvmeError);
      expect(e.name).toBe(name);
      expect(e.code).toBe(code);
      expect(String(e).startsWith(`${name}: `)).toBe(true);
    }
    expect(new Set(cases.map(([e]) => e.code)).size).toBe(cases.length);
  });

  test("extra fields are kept", () => {
    expect(new NvmeTimeoutError("t", 20).timeoutMs).toBe(20);
    expect(new ControllerFatalError("f", 0xffffffff).csts).toBe(0xffffffff);
    const n = new NativeError("open failed", 13, "open", "/dev/x");
    expect([n.errno, n.call, n.path, n.message]).toEqual([13, "open", "/dev/x", "open failed"]);
    const g = new CudaError("cuMemAlloc_v2 failed", { reason: "driver", call: "cuMemAlloc_v2", result: 2, resultName: "CUDA_ERROR_OUT_OF_MEMORY" });
    expect([g.reason, g.call, g.result, g.resultName]).toEqual(["driver", "cuMemAlloc_v2", 2, "CUDA_ERROR_OUT_OF_MEMORY"]);
  });
});
