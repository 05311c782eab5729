/**
 * The disnvm kernel module and its backend, in the guest: insmod the module built for the guest's
 * kernel (test/vm/build-module.sh), bind the controller to it, and check identify, the data round
 * trip, the refusals of bad requests, and release: after close and after SIGKILL no page stays
 * pinned, the controller is left disabled and another process can open it.
 *
 * The guest is left as found, also when a test fails: afterAll unbinds the controller, clears
 * driver_override, unloads the module and restores the PCI COMMAND register, then checks.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DisnvmBackend } from "../../lib/backends/disnvm.ts";
import { Controller, ControllerBusyError, DeviceError, Namespace, native, registers } from "../../lib/index.ts";
import { configRead, configWrite, findPciDevice, PCI_COMMAND, PCI_COMMAND_MASTER } from "../../lib/pci.ts";
import { ctrlAddress, REPO, requireExpected, waitForLine } from "./common.ts";

const BDF = ctrlAddress();
const SYS = `/sys/bus/pci/devices/${BDF}`;
const PINNED = join(SYS, "disnvm_pinned_pages");
const KVER = process.env.LIBNVM_VM_KVER ?? "";
const KO = join(REPO, "module", "build", KVER, "disnvm.ko");

const EPERM = 1;
const ENOENT = 2;
const E2BIG = 7;
const EFAULT = 14;
const EEXIST = 17;
const EINVAL = 22;
const EOPNOTSUPP = 95;

/** What afterAll restores. */
let before: { driver: string | undefined; override: string; command: number; loaded: boolean } | undefined;
let node = "";
const children = new Set<ReturnType<typeof Bun.spawn>>();
const openBackends = new Set<{ close(): void }>();

function run(cmd: string[]): { code: number; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, out: `${r.stdout.toString()}${r.stderr.toString()}`.trim() };
}

function moduleLoaded(): boolean {
  return readFileSync("/proc/modules", "utf8").split("\n").some((l) => l.startsWith("disnvm "));
}

function driverOf(): string | undefined {
  return findPciDevice(BDF).driver;
}

function pinned(): number {
  return Number(readFileSync(PINNED, "utf8").trim());
}

/**
 * Pages pinned with FOLL_PIN anywhere in the guest right now (/proc/vmstat: acquired - released).
 * Unlike the module's own counter this also sees pins the module took and lost track of, such as
 * those of a pin that stopped part-way.
 */
function foll(): number {
  // The counters are kept per CPU and folded into /proc/vmstat lazily: fold them first.
  writeFileSync("/proc/sys/vm/stat_refresh", "1");
  const v = readFileSync("/proc/vmstat", "utf8");
  const get = (k: string) => Number(new RegExp(`^${k} (\\d+)$`, "m").exec(v)?.[1] ?? NaN);
  return get("nr_foll_pin_acquired") - get("nr_foll_pin_released");
}

/** Opening `node` again fails with ControllerBusyError naming `pid` as the owner. */
function expectOwnedBy(node: string, pid: number): void {
  let busy: unknown;
  try {
    new DisnvmBackend(node).close();
  } catch (e) {
    busy = e;
  }
  expect(busy).toBeInstanceOf(ControllerBusyError);
  expect((busy as ControllerBusyError).pid).toBe(pid);
  if (pid === process.pid) return;
  // force cannot take it either: the module admits one open file, and the error says whom to stop.
  let forced: unknown;
  try {
    Controller.open(node, { force: true, handleSignals: false }).close();
  } catch (e) {
    forced = e;
  }
  expect(forced).toBeInstanceOf(ControllerBusyError);
  expect((forced as ControllerBusyError).pid).toBe(pid);
  expect((forced as Error).message).toContain("force cannot take a disnvm controller from a live process");
}

async function until<T>(what: string, f: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(20);
  }
}

/** Bind the controller to disnvm and wait for its node; returns /dev/disnvmN. */
async function bind(): Promise<string> {
  writeFileSync(join(SYS, "driver_override"), "disnvm");
  writeFileSync("/sys/bus/pci/drivers_probe", BDF);
  const name = await until(`${SYS}/misc/disnvm*`, () => {
    try {
      return readdirSync(join(SYS, "misc")).find((n) => n.startsWith("disnvm"));
    } catch {
      return undefined;
    }
  });
  const path = `/dev/${name}`;
  await until(path, () => (existsSync(path) ? true : undefined));
  return path;
}

function unbind(): void {
  if (driverOf() === "disnvm") writeFileSync("/sys/bus/pci/drivers/disnvm/unbind", BDF);
}

function spawnHold(mode: string) {
  const p = Bun.spawn(["bun", join(import.meta.dir, "fixtures", "disnvm-hold.ts"), BDF, node, mode], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    cwd: REPO,
  });
  children.add(p);
  return p;
}

/** The child's "ready <pinned pages>" line; on failure the error carries the child's stderr. */
async function ready(p: ReturnType<typeof spawnHold>): Promise<number> {
  try {
    const line = await waitForLine(p.stdout, /^ready \d+/, 60_000);
    return Number(line.split(" ")[1]);
  } catch (e) {
    p.kill("SIGKILL");
    const err = await new Response(p.stderr).text();
    throw new Error(`${(e as Error).message}; its stderr: ${err.trim().split("\n").slice(-15).join("\n")}`);
  }
}

/** CC and CSTS as a fresh owner sees them, without resetting anything. */
function registersNow(): { cc: number; csts: number } {
  const b = new DisnvmBackend(node);
  try {
    return { cc: native().nvm_read32(b.bar0, registers.REG_CC), csts: native().nvm_read32(b.bar0, registers.REG_CSTS) };
  } finally {
    b.close();
  }
}

beforeAll(async () => {
  if (!KVER) throw new Error("LIBNVM_VM_KVER is not set: run this file in the guest (bun test/vm/run.ts / bun test/vm/hw.ts)");
  if (!existsSync(KO)) throw new Error(`${KO} is missing: build it with \`bash test/vm/build-module.sh\` (setup.sh runs it)`);
  const dev = findPciDevice(BDF);
  before = {
    driver: dev.driver,
    override: readFileSync(join(SYS, "driver_override"), "utf8").trim(),
    command: configRead(dev, PCI_COMMAND, 2),
    loaded: moduleLoaded(),
  };
  if (before.driver) throw new Error(`${BDF} is bound to ${before.driver}; the hardware tests expect it unbound`);
  if (before.loaded) throw new Error("disnvm is already loaded: a previous run did not clean up");
  const r = run(["insmod", KO]);
  if (r.code !== 0) throw new Error(`insmod ${KO} failed (${r.code}): ${r.out}`);
  // Loading binds nothing by itself: no ID table.
  expect(driverOf()).toBeUndefined();
  node = await bind();
});

afterAll(async () => {
  const problems: string[] = [];
  const attempt = (what: string, f: () => void) => {
    try {
      f();
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
    }
  };
  for (const p of children) {
    attempt("kill a fixture", () => p.kill("SIGKILL"));
    await p.exited;
  }
  for (const b of openBackends) attempt("close", () => b.close());
  attempt("unbind", unbind);
  attempt("clear driver_override", () => writeFileSync(join(SYS, "driver_override"), "\n"));
  if (moduleLoaded()) {
    // The module stays busy for as long as a killed child's file is still being released.
    await until("rmmod disnvm", () => (run(["rmmod", "disnvm"]).code === 0 ? true : undefined), 10_000).catch((e: Error) =>
      problems.push(e.message),
    );
  }
  if (before) {
    const b = before;
    attempt("restore PCI COMMAND", () => configWrite(findPciDevice(BDF), PCI_COMMAND, 2, b.command));
    const dev = findPciDevice(BDF);
    if (dev.driver !== b.driver) problems.push(`${BDF} is bound to ${dev.driver}, was ${b.driver}`);
    const override = readFileSync(join(SYS, "driver_override"), "utf8").trim();
    if (override !== b.override) problems.push(`driver_override is ${override}, was ${b.override}`);
    if (moduleLoaded() !== b.loaded) problems.push("disnvm is still loaded");
    const cmd = configRead(dev, PCI_COMMAND, 2);
    if (cmd !== b.command) problems.push(`PCI COMMAND is 0x${cmd.toString(16)}, was 0x${b.command.toString(16)}`);
  }
  if (problems.length > 0) throw new Error(`the guest was not restored: ${problems.join("; ")}`);
});

describe("disnvm module", () => {
  test("binds through driver_override: /dev/disnvm0 and the info ioctl", () => {
    expect(node).toBe("/dev/disnvm0");
    expect(pinned()).toBe(0);
    const b = new DisnvmBackend(node);
    try {
      expect(b.bdf).toBe(BDF);
      const info = b.info();
      // No IOMMU in this guest: not isolated, so only a CAP_SYS_RAWIO holder (root here) may open it.
      expect(info).toMatchObject({ abiVersion: 3, vendor: 0x1b36, device: 0x0010, classCode: 0x010802, cuda: false, dma64: true, isolated: false });
      expect(info.bar0Size).toBe(b.bar0Size);
      expect(info.bar0Size).toBeGreaterThanOrEqual(0x2000);
      // One owner at a time, with the owner named.
      expectOwnedBy(node, process.pid);
    } finally {
      b.close();
      b.close(); // idempotent
    }
  });

  test("identify through the module", () => {
    const want = requireExpected();
    const ctrl = Controller.openBackend(new DisnvmBackend(node));
    openBackends.add(ctrl);
    try {
      expect(ctrl.backend.kind).toBe("disnvm");
      expect(ctrl.info.sn).toBe(want.serial);
      expect(ctrl.info.mn).toBe("QEMU NVMe Ctrl");
      expect(ctrl.activeNamespaces()).toEqual(want.namespaces.map((n) => n.nsid));
      // The admin queues and the identify page are pinned while it is open.
      expect(pinned()).toBeGreaterThan(0);
      expect((ctrl.backend as DisnvmBackend).info().pinnedPages).toBe(pinned());
    } finally {
      ctrl.close();
      openBackends.delete(ctrl);
    }
    expect(pinned()).toBe(0);
  });

  test("write, read back and compare through the async API, single- and multi-page", async () => {
    const want = requireExpected();
    const ctrl = Controller.openBackend(new DisnvmBackend(node));
    openBackends.add(ctrl);
    try {
      for (const spec of want.namespaces) {
        const ns = new Namespace(ctrl, spec.nsid);
        // One block, 64 KiB, and MDTS-sized transfers (PRP lists) near the end of the namespace.
        for (const bytes of [ns.lbaSize, 65536, Math.min(ns.maxTransfer, 1 << 20)]) {
          const blocks = bytes / ns.lbaSize;
          const lba = ns.blocks - blocks * 3;
          using out = ctrl.allocBuffer(bytes * 2);
          using back = ctrl.allocBuffer(bytes * 2);
          crypto.getRandomValues(out.bytes.subarray(0, Math.min(out.size, 65536)));
          for (let o = 65536; o < out.size; o += 65536) out.bytes.copyWithin(o, 0, Math.min(65536, out.size - o));
          out.bytes[bytes - 1] = 0xa5;
          await Promise.all([ns.write(lba, blocks, out), ns.write(lba + blocks, blocks, out, { offset: bytes })]);
          await Promise.all([ns.read(lba, blocks, back, { offset: bytes }), ns.read(lba + blocks, blocks, back)]);
          expect(Buffer.compare(back.bytes.subarray(bytes, 2 * bytes), out.bytes.subarray(0, bytes))).toBe(0);
          expect(Buffer.compare(back.bytes.subarray(0, bytes), out.bytes.subarray(bytes, 2 * bytes))).toBe(0);
          expect(await ns.compare(lba, blocks, out)).toBe(true);
          out.bytes[0]! ^= 0xff;
          expect(await ns.compare(lba, blocks, out)).toBe(false);
        }
      }
      expect(pinned()).toBeGreaterThan(0);
    } finally {
      ctrl.close();
      openBackends.delete(ctrl);
    }
    expect(pinned()).toBe(0);
  });

  test("bad requests are refused with the documented errno, and a failed pin leaves nothing pinned", () => {
    expect(foll()).toBe(0);
    const n = native();
    const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
    expect(fd).toBeGreaterThanOrEqual(0);
    const addrs = n.nvm_host_alloc(64 * 8)!;
    const mem = n.nvm_dma_alloc(16 * 4096, 0)!;
    const at = (off: number) => (Number(mem) + off) as Pointer;
    try {
      const map = (off: number, size: number) => Math.abs(n.nvm_disnvm_map_host(fd, at(off), size, addrs));
      expect(map(1, 4096)).toBe(EINVAL); // vaddr not 4 KiB aligned
      expect(map(0, 4097)).toBe(EINVAL); // size not 4 KiB aligned
      expect(map(0, 0)).toBe(EINVAL); // nothing to map
      expect(map(0, 0x8000_0000)).toBe(E2BIG); // 2 GiB: over the 1 GiB limit
      expect(-n.nvm_disnvm_map_host(fd, mem, 4096, 0 as unknown as Pointer)).toBe(EFAULT); // no address list
      expect(pinned()).toBe(0);

      expect(map(0, 8 * 4096)).toBe(0);
      expect(pinned()).toBe(8);
      expect(map(0, 8 * 4096)).toBe(EEXIST); // the same range again
      expect(map(4 * 4096, 8 * 4096)).toBe(EEXIST); // overlaps its end
      expect(map(7 * 4096, 4096)).toBe(EEXIST); // inside it
      expect(map(8 * 4096, 4 * 4096)).toBe(0); // adjacent: fine
      expect(pinned()).toBe(12);
      expect(-n.nvm_disnvm_unmap(fd, at(4096))).toBe(ENOENT); // not the start of a mapping
      expect(-n.nvm_disnvm_unmap(fd, at(12 * 4096))).toBe(ENOENT); // never mapped
      expect(n.nvm_disnvm_unmap(fd, at(8 * 4096))).toBe(0);
      expect(pinned()).toBe(8);
      expect(-n.nvm_disnvm_unmap(fd, at(8 * 4096))).toBe(ENOENT); // already unmapped

      // The last page of this range is not mapped: the partial pin is undone, nothing is returned.
      expect(n.nvm_unmap(at(15 * 4096), 4096)).toBe(0);
      expect(map(12 * 4096, 4 * 4096)).toBe(EFAULT);
      expect(pinned()).toBe(8);
      expect(foll()).toBe(8);

      // Only the process that opened the file maps through it (here: a child given it as stdin).
      const child = Bun.spawnSync(["bun", join(import.meta.dir, "fixtures", "disnvm-foreign.ts"), BDF], {
        stdin: fd,
        stdout: "pipe",
        stderr: "pipe",
        cwd: REPO,
      });
      expect(child.stderr.toString()).toBe("");
      expect(JSON.parse(child.stdout.toString())).toEqual({ map: -EPERM, unmap: -EPERM, busMaster: -EPERM, info: 0 });
      expect(pinned()).toBe(8);

      // No CUDA support in this build: the ioctl exists and says so.
      expect(-n.nvm_disnvm_map_device(fd, 0, 1, 65536, addrs)).toBe(EOPNOTSUPP);
      // BAR0 is mapped whole or in part, never past its end.
      expect(n.nvm_disnvm_map_bar(fd, 1 << 20)).toBeNull();
      expect(n.nvm_last_error()).toBe(EINVAL);
    } finally {
      // Closing with a mapping still live: the release unpins it.
      expect(n.nvm_disnvm_close(fd)).toBe(0);
      n.nvm_dma_free(mem, 15 * 4096, 0);
      n.nvm_host_free(addrs);
    }
    expect(pinned()).toBe(0);
    expect(foll()).toBe(0);
  });

  test("bus addresses: one per 4 KiB page, none zero, the hugepage-backed ones contiguous", () => {
    const n = native();
    const b = new DisnvmBackend(node);
    openBackends.add(b);
    try {
      const scattered = b.allocDma(64 * 4096);
      expect(scattered.iova.length).toBe(128);
      for (let i = 0; i < scattered.iova.length; i += 2) {
        const a = scattered.iova[i]! + scattered.iova[i + 1]! * 2 ** 32;
        expect(a).toBeGreaterThan(0);
        expect(a % 4096).toBe(0);
      }
      // Without an IOMMU the bus address is the physical one; with one translating for the device
      // (iommu_group type DMA or DMA-FQ: q35 + intel_iommu=on) it is an IOVA the IOMMU maps.
      const phys = n.nvm_host_alloc(64 * 8)!;
      try {
        expect(n.nvm_phys_addrs(scattered.vaddr!, 64, phys)).toBe(0);
        const pa = new Uint32Array(toArrayBuffer(phys, 0, 64 * 8).slice(0));
        const same = pa.every((v, i) => v === scattered.iova[i]);
        let domain = "none";
        try {
          domain = readFileSync(join(SYS, "iommu_group", "type"), "utf8").trim();
        } catch {
          // no IOMMU group: no IOMMU
        }
        expect(same).toBe(!domain.startsWith("DMA"));
      } finally {
        n.nvm_host_free(phys);
      }
      const queue = b.allocDma(16 * 4096, { contiguous: true });
      expect(queue.contiguous).toBe(true);
      expect(b.info()).toMatchObject({ filePinnedPages: 80, fileMappings: 2, pinnedPages: 80 });
      expect(pinned()).toBe(80);
      b.freeDma(scattered);
      expect(pinned()).toBe(16);
      b.freeDma(scattered); // twice: a no-op
      expect(b.info().fileMappings).toBe(1);
    } finally {
      b.close();
      openBackends.delete(b);
    }
    expect(pinned()).toBe(0);
  });

  test("DISNVM_IOC_BUS_MASTER clears and sets Bus Master Enable (PCI COMMAND bit 2); other values are EINVAL", () => {
    const dev = findPciDevice(BDF);
    const master = () => (configRead(dev, PCI_COMMAND, 2) & PCI_COMMAND_MASTER) !== 0;
    const b = new DisnvmBackend(node);
    openBackends.add(b);
    try {
      expect(master()).toBe(true); // open() set it
      b.setBusMaster(false);
      expect(master()).toBe(false);
      b.setBusMaster(false); // already clear: no error
      expect(master()).toBe(false);
      b.setBusMaster(true);
      expect(master()).toBe(true);
    } finally {
      b.close();
      openBackends.delete(b);
    }
    expect(master()).toBe(false); // release clears it
    expect(() => b.setBusMaster(true)).toThrow(DeviceError); // closed
    // Only 0 and 1; nothing changes on a refusal.
    const n = native();
    const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
    expect(fd).toBeGreaterThanOrEqual(0);
    try {
      expect(master()).toBe(true);
      expect(-n.nvm_disnvm_bus_master(fd, 2)).toBe(EINVAL);
      expect(master()).toBe(true);
    } finally {
      expect(n.nvm_disnvm_close(fd)).toBe(0);
    }
  });

  test("a missing node or a node that is not disnvm's is a DeviceError with the next step", () => {
    let missing: unknown;
    try {
      new DisnvmBackend("/dev/disnvm7");
    } catch (e) {
      missing = e;
    }
    expect(missing).toBeInstanceOf(DeviceError);
    expect((missing as Error).message).toContain("driver_override");
    expect((missing as Error).message).toContain("drivers_probe");
    expect(() => new DisnvmBackend("/dev/null")).toThrow(/not a disnvm device node/);
    expect(() => new DisnvmBackend("/dev")).toThrow(/not a device node/);
  });

  for (const mode of ["--idle", "--busy"]) {
    test(`SIGKILL of an owner (${mode.slice(2)}): nothing stays pinned, the controller is disabled, a new owner works`, async () => {
      const p = spawnHold(mode);
      try {
        const held = await ready(p);
        expect(held).toBeGreaterThan(256); // the 1 MiB buffer and the queues
        expect(pinned()).toBe(held);
        expect(foll()).toBe(held);
        // It owns the node: this process cannot open it meanwhile, and is told who has it.
        expectOwnedBy(node, p.pid);
        if (mode === "--busy") await Bun.sleep(300);
      } finally {
        p.kill("SIGKILL");
        await p.exited;
        children.delete(p);
      }
      expect(p.signalCode).toBe("SIGKILL");
      // The release ran as the process died: before its parent could see it exit.
      expect(pinned()).toBe(0);
      expect(foll()).toBe(0);
      // ...and it shut the controller down before unpinning: CC.EN = 0, CSTS.RDY = 0.
      const r = registersNow();
      expect(registers.decodeCc(r.cc).en).toBe(false);
      expect(registers.decodeCsts(r.csts).rdy).toBe(false);
      const ctrl = Controller.openBackend(new DisnvmBackend(node));
      try {
        expect(ctrl.info.sn).toBe(requireExpected().serial);
      } finally {
        ctrl.close();
      }
      expect(pinned()).toBe(0);
    });
  }

  test("unbinding under an open file revokes its mappings: BAR0 access gets SIGBUS, pins are released", async () => {
    const p = spawnHold("--raw");
    try {
      expect(await ready(p)).toBe(16);
      expect(pinned()).toBe(16);
      expect(foll()).toBe(16);
      unbind();
      expect(driverOf()).toBeUndefined();
      expect(existsSync(node)).toBe(false);
      // The file is still open in the child, but its pins went with the device.
      expect(foll()).toBe(0);
      p.stdin.write("touch\n");
      p.stdin.flush();
      await p.exited;
      expect(p.signalCode).toBe("SIGBUS");
    } finally {
      p.kill("SIGKILL");
      await p.exited;
      children.delete(p);
      // Bound again for whatever follows; the same N comes back.
      if (driverOf() === undefined) expect(await bind()).toBe(node);
    }
    expect(pinned()).toBe(0);
  });

  test("the kernel logged no warning or bug from the module", () => {
    const r = run(["dmesg"]);
    expect(r.code).toBe(0);
    // From the module's load on: earlier lines are the emulated machine's own complaints.
    const lines = r.out.split("\n");
    const from = lines.findIndex((l) => l.includes("disnvm: loading out-of-tree module"));
    expect(from).toBeGreaterThanOrEqual(0);
    const bad = lines.slice(from).filter((l) => /WARNING:|BUG:|Oops|general protection fault|refcount_t:|list_del corruption|Bad page/.test(l));
    expect(bad).toEqual([]);
    expect(r.out).toContain("/dev/disnvm0");
  });
});
