/**
 * What the disnvm backend decides without the module: whether an IOMMU isolates a controller (the
 * module's rule for opening without CAP_SYS_RAWIO, read back from sysfs for the error messages and
 * doctor), over a fake /sys/bus/pci/devices; and how failed DMA allocations are reported.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { disnvmIsolation } from "../../../lib/backends/disnvm.ts";
import { dmaAllocError, memlockError } from "../../../lib/backends/dma-common.ts";
import { NativeError, PermissionError } from "../../../lib/errors.ts";

const root = mkdtempSync(join(tmpdir(), "libnvm-isolation-"));
const devices = join(root, "devices");
const groups = join(root, "iommu_groups");
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A device directory, and when `group` is given an iommu_group link to a group of `type` holding `members`. */
function device(bdf: string, group?: { id: string; type?: string; members: string[] }): void {
  mkdirSync(join(devices, bdf), { recursive: true });
  if (!group) return;
  const g = join(groups, group.id);
  mkdirSync(join(g, "devices"), { recursive: true });
  if (group.type !== undefined) writeFileSync(join(g, "type"), `${group.type}\n`);
  for (const m of group.members) symlinkSync(join(devices, m), join(g, "devices", m));
  symlinkSync(g, join(devices, bdf, "iommu_group"));
}

describe("disnvmIsolation", () => {
  test("no IOMMU group: not isolated, and the reason says the IOMMU is off", () => {
    device("0000:00:04.0");
    const r = disnvmIsolation("0000:00:04.0", devices);
    expect(r.isolated).toBe(false);
    expect(r.why).toContain("no IOMMU translates for 0000:00:04.0");
  });

  test("an identity (passthrough) domain does not translate", () => {
    device("0000:01:00.0", { id: "3", type: "identity", members: ["0000:01:00.0"] });
    const r = disnvmIsolation("0000:01:00.0", devices);
    expect(r.isolated).toBe(false);
    expect(r.why).toContain(`IOMMU group 3 has a "identity" domain, which does not translate`);
    expect(r.why).toContain("iommu=pt");
  });

  for (const type of ["DMA", "DMA-FQ"]) {
    test(`a ${type} domain with the controller alone in its group is isolated`, () => {
      const bdf = type === "DMA" ? "0000:02:00.0" : "0000:03:00.0";
      device(bdf, { id: type === "DMA" ? "4" : "5", type, members: [bdf] });
      const r = disnvmIsolation(bdf, devices);
      expect(r.isolated).toBe(true);
      expect(r.why).toContain(`a ${type} domain`);
    });
  }

  test("a translating domain shared with other devices is not isolated, and they are named", () => {
    device("0000:04:00.1");
    device("0000:04:00.2");
    device("0000:04:00.0", { id: "6", type: "DMA-FQ", members: ["0000:04:00.2", "0000:04:00.0", "0000:04:00.1"] });
    const r = disnvmIsolation("0000:04:00.0", devices);
    expect(r.isolated).toBe(false);
    expect(r.why).toBe("0000:04:00.0's IOMMU group 6 is shared with 0000:04:00.1, 0000:04:00.2");
  });

  test("a group without a type file (unknown domain) is not trusted", () => {
    device("0000:05:00.0", { id: "7", members: ["0000:05:00.0"] });
    expect(disnvmIsolation("0000:05:00.0", devices).isolated).toBe(false);
  });
});

describe("DMA allocation errors", () => {
  test("ENOMEM from mlock is the memlock limit; without mlock it is memory itself", () => {
    const locked = dmaAllocError(8192, 12);
    expect(locked).toBeInstanceOf(PermissionError);
    expect(locked.message).toContain("ulimit -l unlimited");
    const unlocked = dmaAllocError(8192, 12, { locked: false });
    expect(unlocked).toBeInstanceOf(NativeError);
    expect((unlocked as NativeError).errno).toBe(12);
  });

  test("memlockError names the size, the call and the fix", () => {
    const e = memlockError(1 << 21, "DISNVM_IOC_MAP_HOST: ENOMEM");
    expect(e).toBeInstanceOf(PermissionError);
    expect(e.message).toBe(
      "cannot lock 2097152 bytes of DMA memory (DISNVM_IOC_MAP_HOST: ENOMEM): raise the memlock limit (`ulimit -l unlimited`, or LimitMEMLOCK= for a service)",
    );
  });
});
