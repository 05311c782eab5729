/**
 * Set-up mistakes a user makes, each answered with a typed error that says what to run, and
 * the controller left usable afterwards.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { Controller, DeviceError, InvalidArgumentError } from "../../lib/index.ts";
import { ctrlAddress, REPO } from "./common.ts";

const HUGEPAGES = "/proc/sys/vm/nr_hugepages";
/** The 2 MiB pool libnvm raises (the same pool as vm.nr_hugepages where 2 MiB is the default size). */
const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB";

function identifyAs(args: string[]) {
  const p = Bun.spawnSync(args, { cwd: REPO, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("set-up errors", () => {
  test("malformed, missing and non-NVMe addresses", () => {
    expect(() => Controller.open("05:00")).toThrow(InvalidArgumentError);
    expect(() => Controller.open("0000:42:00.0")).toThrow(DeviceError);
    // The host bridge at 00:00.0 exists but is not an NVMe controller.
    expect(() => Controller.open("00:00.0")).toThrow(/not an NVMe controller/);
  });

  test("a controller bound to the kernel's nvme driver is refused with the unbind command", () => {
    const bdf = ctrlAddress();
    const modroot = process.env.LIBNVM_VM_MODROOT;
    if (!modroot) throw new Error("LIBNVM_VM_MODROOT is not set: this test loads the guest kernel's nvme module");
    const load = Bun.spawnSync(["modprobe", "-d", modroot, "nvme"], { stderr: "pipe" });
    expect(load.exitCode).toBe(0);
    try {
      // The kernel probes asynchronously; wait (bounded) for the driver link.
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        if (existsSync(`/sys/bus/pci/devices/${bdf}/driver`)) break;
        Bun.sleepSync(50);
      }
      let err: unknown;
      try {
        Controller.open(bdf).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DeviceError);
      expect(String((err as Error).message)).toContain(`bound to the kernel driver nvme`);
      expect(String((err as Error).message)).toContain(`echo ${bdf} > /sys/bus/pci/devices/${bdf}/driver/unbind`);
    } finally {
      writeFileSync(`/sys/bus/pci/devices/${bdf}/driver/unbind`, bdf);
      Bun.spawnSync(["rmmod", "nvme"]);
    }
    // Unbound again: ours to use.
    const c = Controller.open(bdf);
    expect(c.info.mn).toBe("QEMU NVMe Ctrl");
    c.close();
  });

  test("without root the example exits 1 and says to run as root", () => {
    const r = identifyAs(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bun", "examples/identify.ts", `--ctrl=${ctrlAddress()}`]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/PermissionError: .*needs root/);
  });

  test("a process that may not raise nr_hugepages (read-only sysfs, as in a container): PermissionError with the exact command, nothing changed", () => {
    writeFileSync(HUGEPAGES, "0");
    // A private mount namespace whose hugepage pool directory is read-only: writes get EROFS.
    const ro = `mount --bind ${POOL} ${POOL} && mount -o remount,bind,ro ${POOL} && exec bun examples/identify.ts --json --ctrl=${ctrlAddress()}`;
    const r = identifyAs(["unshare", "--mount", "--propagation", "private", "sh", "-c", ro]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`PermissionError: no free 2 MiB hugepage for DMA memory (1 needed, 0 free), and this process may not reserve any (EROFS writing ${POOL}/nr_hugepages)`);
    expect(r.err).toContain(`reserve them as root: echo 1 > ${POOL}/nr_hugepages`);
    expect(r.out).toBe("");
    expect(readFileSync(HUGEPAGES, "utf8").trim()).toBe("0");
    // Nothing was left behind: the next open (allowed to reserve) works and gives the page back.
    const c = Controller.open(ctrlAddress(), { adminQueueEntries: 256 });
    expect(c.identifyController().sn).toBe(c.info.sn);
    c.close();
    expect(readFileSync(HUGEPAGES, "utf8").trim()).toBe("0");
  });
});
