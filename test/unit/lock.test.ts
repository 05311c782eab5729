import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControllerBusyError } from "../../lib/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "libnvm-lock-"));
process.env.LIBNVM_LOCK_DIR = dir;
const { OwnerLock } = await import("../../lib/lock.ts");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("the owner's PID is in the lock file; a second acquire is ControllerBusyError naming it", () => {
  const a = OwnerLock.acquire("0000:05:00.0")!;
  expect(a.path).toBe(join(dir, "0000_05_00.0.lock"));
  expect(readFileSync(a.path, "utf8").trim()).toBe(String(process.pid));
  let err: unknown;
  try {
    OwnerLock.acquire("0000:05:00.0");
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ControllerBusyError);
  expect((err as ControllerBusyError).pid).toBe(process.pid);
  expect((err as Error).message).toContain(`in use by process ${process.pid}`);
  expect((err as Error).message).toContain("--force");
  // Another controller is independent.
  const b = OwnerLock.acquire("/dev/disnvm1")!;
  expect(b.path).toBe(join(dir, "dev_disnvm1.lock"));
  b.release();
  a.release();
  a.release(); // idempotent
  const again = OwnerLock.acquire("0000:05:00.0")!;
  again.release();
});

test("force goes past a live owner without taking the lock", () => {
  const a = OwnerLock.acquire("0000:06:00.0")!;
  expect(OwnerLock.acquire("0000:06:00.0", true)).toBeUndefined();
  a.release();
});
