/**
 * Harness self-check: runs INSIDE the QEMU guest (bun test/vm/hw.ts --dir ./test/vm/_selftest) and checks
 * what the guest promises to hardware tests: the emulated controller at LIBNVM_TEST_CTRL, the
 * LIBNVM_TEST_EXPECT description, no hugepages reserved, a writable /run/tmp and /run/xchg, the guest module tree.
 *
 * Outside the guest there is no controller: every test fails (on purpose: never skip).
 * LIBNVM_SELFTEST_FAIL=1 makes one test fail, to prove the harness reports failures.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";

const ctrl = process.env.LIBNVM_TEST_CTRL ?? "";
const sysfs = `/sys/bus/pci/devices/${ctrl}`;
const read = (f: string) => readFileSync(`${sysfs}/${f}`, "utf8").trim();

interface Expect {
  serial: string;
  mdts: number;
  maxIoQpairs: number;
  namespaces: { nsid: number; sizeBytes: number; lbaSize: number }[];
  machine: string;
  ctrl: string;
}

describe("guest harness", () => {
  test("LIBNVM_TEST_CTRL names a PCI device", () => {
    expect(ctrl).toMatch(/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/);
    expect(existsSync(sysfs)).toBe(true);
  });

  test("it is QEMU's NVMe controller (1b36:0010, class 010802)", () => {
    expect(read("vendor")).toBe("0x1b36");
    expect(read("device")).toBe("0x0010");
    expect(read("class")).toBe("0x010802");
    // Debian's nvme driver is a module and is not loaded: the device is free for userspace.
    expect(existsSync(`${sysfs}/driver`)).toBe(false);
    expect(existsSync(`${sysfs}/resource0`)).toBe(true);
  });

  test("LIBNVM_TEST_EXPECT describes the configuration", () => {
    const e = JSON.parse(process.env.LIBNVM_TEST_EXPECT ?? "null") as Expect;
    expect(typeof e.serial).toBe("string");
    expect(e.serial.length).toBeGreaterThan(0);
    expect(e.ctrl).toBe(ctrl);
    expect(Number.isInteger(e.mdts)).toBe(true);
    expect(e.namespaces.length).toBeGreaterThan(0);
    for (const ns of e.namespaces) {
      expect([512, 4096]).toContain(ns.lbaSize);
      expect(ns.sizeBytes % ns.lbaSize).toBe(0);
    }
  });

  test("no hugepages are reserved (a fresh machine), and the kernel has a 2 MiB pool to raise", () => {
    expect(Number(readFileSync("/proc/sys/vm/nr_hugepages", "utf8"))).toBe(0);
    expect(Number(readFileSync("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "utf8"))).toBe(0);
    expect(readFileSync("/proc/meminfo", "utf8")).toMatch(/Hugepagesize:\s+2048 kB/);
  });

  test("scratch and exchange dirs are writable", () => {
    expect(process.env.TMPDIR).toBe("/run/tmp");
    writeFileSync("/run/tmp/selftest", "ok");
    const xchg = process.env.LIBNVM_VM_XCHG ?? "";
    expect(xchg).toBe("/run/xchg");
    writeFileSync(`${xchg}/selftest.txt`, "written in the guest\n");
  });

  test("the guest kernel's module tree is reachable", () => {
    const root = process.env.LIBNVM_VM_MODROOT ?? "";
    const kver = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
    expect(readdirSync(`${root}/lib/modules`)).toContain(kver);
    expect(existsSync(`${root}/lib/modules/${kver}/modules.dep`)).toBe(true);
  });

  test("deliberate failure switch is off", () => {
    expect(process.env.LIBNVM_SELFTEST_FAIL ?? "").toBe("");
  });
});
