/**
 * Who may hold a controller through the disnvm module (issue 10, item 7). Holding /dev/disnvmN lets
 * a process point the controller's DMA anywhere, so without CAP_SYS_RAWIO the module gives it only
 * when an IOMMU translates for the controller and the controller is alone in its IOMMU group.
 *
 * Runs in two suites (test/vm/hw.ts), each telling what to expect in LIBNVM_TEST_DISNVM_ISOLATED:
 *   disnvm-io     (pc, no IOMMU)          "0": without CAP_SYS_RAWIO open() is refused with a typed
 *                                          PermissionError naming why; with it everything works
 *   disnvm-iommu  (q35 + intel-iommu)     "1": without CAP_SYS_RAWIO the controller works, data verified
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { DisnvmBackend, disnvmIsolation, PermissionError } from "../../lib/index.ts";
import { requireExpected } from "../hw/common.ts";
import { BDF, CAP_SYS_RAWIO, disnvmNode, ensureHugepages, hasCap, iommuDomainType, pinnedPages, runUser } from "./common.ts";

const want = process.env.LIBNVM_TEST_DISNVM_ISOLATED;
let node = "";
let giveBackHugepages = () => {};

beforeAll(() => {
  if (want !== "0" && want !== "1") throw new Error("LIBNVM_TEST_DISNVM_ISOLATED must be 0 or 1 (set by the suite in test/vm/hw.ts)");
  node = disnvmNode();
  giveBackHugepages = ensureHugepages(8);
});
afterAll(() => giveBackHugepages());

test(`the module and sysfs agree the controller is ${want === "1" ? "" : "not "}isolated by an IOMMU`, () => {
  const b = new DisnvmBackend(node);
  try {
    expect(b.info().isolated).toBe(want === "1");
  } finally {
    b.close();
  }
  const iso = disnvmIsolation(BDF);
  expect(iso.isolated).toBe(want === "1");
  if (want === "1") expect(["DMA", "DMA-FQ"]).toContain(iommuDomainType());
  else expect(iso.why).toContain(`no IOMMU translates for ${BDF}`);
});

if (want === "1") {
  test("without CAP_SYS_RAWIO: the controller opens, and data written reads back the same", () => {
    const r = runUser(node, "io", { drop: ["sys_rawio"] });
    expect(hasCap(r.capEff, CAP_SYS_RAWIO)).toBe(false);
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(r.sn).toBe(requireExpected().serial);
    expect(pinnedPages()).toBe(0);
  });
} else {
  test("without CAP_SYS_RAWIO: open() is a PermissionError that says why and what to do; nothing is mapped", () => {
    const r = runUser(node, "io", { drop: ["sys_rawio"] });
    expect(hasCap(r.capEff, CAP_SYS_RAWIO)).toBe(false);
    expect(r.ok).toBeUndefined();
    expect(r.error.name).toBe(PermissionError.name);
    expect(r.error.code).toBe("ERR_NVME_PERMISSION");
    expect(r.error.message).toContain(`cannot open ${node}: without CAP_SYS_RAWIO`);
    expect(r.error.message).toContain(`no IOMMU translates for ${BDF}`);
    expect(r.error.message).toContain("intel_iommu=on");
    expect(r.error.message).toContain("VFIO");
    expect(pinnedPages()).toBe(0);
    // The refusal left nothing behind: root opens it at once, and the kernel log says who was refused.
    new DisnvmBackend(node).close();
    const log = Bun.spawnSync(["dmesg"], { stdout: "pipe" }).stdout.toString();
    expect(log).toMatch(new RegExp(`\\[\\d+\\] may not open ${node}: no IOMMU isolates the controller and it lacks CAP_SYS_RAWIO`));
  });

  test("with CAP_SYS_RAWIO (root as is): the same process opens the controller and its data reads back the same", () => {
    const r = runUser(node, "io");
    expect(hasCap(r.capEff, CAP_SYS_RAWIO)).toBe(true);
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(pinnedPages()).toBe(0);
  });
}
