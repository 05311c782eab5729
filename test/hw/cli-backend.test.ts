/**
 * The command line through whichever backend the suite runs (test/vm/hw.ts runs this file through
 * sysfs, VFIO and disnvm): list names the driver and the backend, identify, a write/compare/read
 * round trip, the SMART log.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ctrlAddress, expectedBackend, libnvm, requireExpected } from "./common.ts";

const dir = mkdtempSync(join(process.env.TMPDIR ?? "/tmp", "cli-backend-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function ok(args: string[]) {
  const r = libnvm(args);
  if (r.code !== 0) throw new Error(`libnvm ${args.join(" ")} exited ${r.code}: ${r.err}`);
  return r;
}

test("list: the driver the controller is bound to, the backend that reaches it, its namespaces", () => {
  const backend = expectedBackend() ?? "sysfs";
  const driver = { sysfs: null, vfio: "vfio-pci", disnvm: "disnvm" }[backend];
  const j = JSON.parse(ok(["list", "-o", "json"]).out);
  const c = j.Controllers.find((x: { Address: string }) => x.Address === ctrlAddress());
  expect(c.Driver).toBe(driver);
  expect(c.Backends).toContain(backend);
  expect(c.SerialNumber).toBe(requireExpected().serial);
  expect(c.Namespaces).toEqual(requireExpected().namespaces.map((n) => n.nsid));
  // DevicePath is what libnvm opened: the address, or the disnvm node.
  for (const d of j.Devices) {
    if (backend === "disnvm") expect(d.DevicePath).toMatch(/^\/dev\/disnvm\d+$/);
    else expect(d.DevicePath).toBe(ctrlAddress());
  }
});

test("id-ctrl and id-ns -o json", () => {
  const exp = requireExpected();
  expect(JSON.parse(ok(["id-ctrl", ctrlAddress(), "-o", "json"]).out).sn.trimEnd()).toBe(exp.serial);
  for (const n of exp.namespaces) expect(JSON.parse(ok(["id-ns", ctrlAddress(), "-n", String(n.nsid), "-o", "json"]).out).nsze).toBe(n.sizeBytes / n.lbaSize);
});

test("write, compare, read round trip; the SMART log counts the commands", () => {
  const n = requireExpected().namespaces[0]!;
  const data = new Uint8Array(48 * 1024);
  crypto.getRandomValues(data);
  writeFileSync(join(dir, "in.bin"), data);
  const before = JSON.parse(ok(["smart-log", ctrlAddress(), "-o", "json"]).out);
  ok(["write", ctrlAddress(), "-n", String(n.nsid), "-s", "300", "-d", join(dir, "in.bin")]);
  ok(["compare", ctrlAddress(), "-n", String(n.nsid), "-s", "300", "-d", join(dir, "in.bin")]);
  ok(["read", ctrlAddress(), "-n", String(n.nsid), "-s", "300", "-z", String(data.length), "-d", join(dir, "out.bin")]);
  expect(Buffer.compare(readFileSync(join(dir, "out.bin")), data)).toBe(0);
  const after = JSON.parse(ok(["smart-log", ctrlAddress(), "-o", "json"]).out);
  expect(BigInt(after.host_write_commands) - BigInt(before.host_write_commands)).toBe(1n);
  // At least the Read: whether Compare counts as a read command is the controller's choice.
  expect(BigInt(after.host_read_commands) - BigInt(before.host_read_commands)).toBeGreaterThanOrEqual(1n);
});
