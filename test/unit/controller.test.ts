/**
 * Controller bring-up against registers that never behave: every wait is bounded by CAP.TO and
 * ends in a typed error, and a failed open releases everything it took.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControllerFatalError, NvmeTimeoutError } from "../../lib/errors.ts";
import { FakeBackend } from "./fake-backend.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-ctrl-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../lib/controller.ts");
afterAll(() => rmSync(lockDir, { recursive: true, force: true }));

/** CAP with MQES 63, CAP.TO = 1 (500 ms), CSS bit 0 (NVM command set, CAP bit 37 = hi bit 5). */
function fakeController(): FakeBackend {
  const b = new FakeBackend();
  b.setReg(0x00, 63 | (1 << 24));
  b.setReg(0x04, 1 << 5);
  return b;
}

test("a controller that never sets CSTS.RDY fails open() after CAP.TO with NvmeTimeoutError, and releases everything", () => {
  const b = fakeController();
  const t0 = performance.now();
  let err: unknown;
  try {
    Controller.openBackend(b);
  } catch (e) {
    err = e;
  }
  const ms = performance.now() - t0;
  expect(err).toBeInstanceOf(NvmeTimeoutError);
  expect((err as Error).message).toContain("CSTS.RDY did not become 1 within CAP.TO (500 ms)");
  expect(ms).toBeGreaterThanOrEqual(450);
  expect(ms).toBeLessThan(5000);
  expect(b.live.size).toBe(0); // admin queues freed
  // The lock went with it: the same device opens (and fails the same way) again.
  expect(() => Controller.openBackend(fakeController())).toThrow(NvmeTimeoutError);
});

test("CSTS.CFS while enabling is ControllerFatalError", () => {
  const b = fakeController();
  b.setReg(0x1c, 1 << 1);
  expect(() => Controller.openBackend(b)).toThrow(ControllerFatalError);
});

test("registers that read all ones (device gone) are ControllerFatalError at once", () => {
  const b = new FakeBackend();
  b.setReg(0x00, 0xffffffff);
  b.setReg(0x04, 0xffffffff);
  expect(() => Controller.openBackend(b)).toThrow(/not responding/);
});

test("a controller stuck enabled (RDY stays 1 after CC.EN = 0) fails after CAP.TO", () => {
  const b = fakeController();
  b.setReg(0x14, 1); // CC.EN
  b.setReg(0x1c, 1); // CSTS.RDY, and the fake never clears it
  expect(() => Controller.openBackend(b)).toThrow(/CSTS.RDY did not become 0/);
});
