/**
 * The VFIO backend against QEMU's controller behind the emulated Intel IOMMU (q35 + intel-iommu,
 * intel_iommu=on). Not part of ./test/hw (that boot has no IOMMU); run it with:
 *
 *   bun test/vm/run.ts --machine q35 --qemu-arg -device --qemu-arg intel-iommu,intremap=on \
 *     --kernel-arg intel_iommu=on --kernel-arg no_timer_check --mdts 10 --ns 64M:512,32M:4096 \
 *     -- 'bun test --timeout 120000 ./test/hw-vfio'
 *
 * intremap=on: VFIO type1 refuses a group without interrupt remapping (MSI isolation) unless
 * vfio_iommu_type1.allow_unsafe_interrupts=1. no_timer_check: with interrupt remapping on, 6.1
 * panics at boot when its timer-through-IO-APIC test fails, which a busy TCG host makes it do now
 * and then ("timer doesn't work through Interrupt-remapped IO-APIC"); the timer works regardless.
 *
 * beforeAll loads vfio-pci and binds the controller to it; afterAll unbinds it and clears
 * driver_override (the device is left unbound, as the guest booted). Without an IOMMU, or outside
 * the guest, the suite FAILS with the way to run it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { Controller, ControllerBusyError, DmaBuffer, DeviceError, IoQueue, Namespace, commands, registers, status } from "../../lib/index.ts";
import { VfioBackend } from "../../lib/backends/vfio.ts";
import { configRead, findPciDevice, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from "../../lib/pci.ts";
import { IOVA_DEFAULT_BASE } from "../../lib/iova.ts";
import { ctrlAddress, expected, requireExpected, spawnFixture, waitForLine } from "../hw/common.ts";
import { patternFill } from "../hw/pattern.ts";

const RUN_IT =
  "bun test/vm/run.ts --machine q35 --qemu-arg -device --qemu-arg intel-iommu,intremap=on --kernel-arg intel_iommu=on --kernel-arg no_timer_check " +
  "--mdts 10 --ns 64M:512,32M:4096 -- 'bun test --timeout 120000 ./test/hw-vfio'";
/** An IOVA inside the IOMMU's aperture that the allocator (from 256 MiB upwards) never reaches here. */
const UNMAPPED_READ = 0xdead0000;
const UNMAPPED_WRITE = 0xdeac0000;
const UNMAPPED_LIST = 0xbeef0000;
/** Completion status field (DW3 31:17): DNR (bit 14) | SCT 0 generic | SC 04h Data Transfer Error. */
const DATA_TRANSFER_ERROR_DNR = (1 << 14) | (status.SCT_GENERIC << 8) | status.SC_DATA_TRANSFER_ERROR;
/** vfio_iommu_type1's default dma_entry_limit: what a container with no mapping reports. */
const DMA_ENTRY_LIMIT = 65535;
const MiB = 1 << 20;
/** Under QEMU (the harness sets LIBNVM_TEST_EXPECT) the controller's exact answers are known. */
const inQemu = expected() !== undefined;

let bdf = "";
let group = "";

function write(path: string, text: string): void {
  writeFileSync(path, text);
}

function driverOf(b: string): string | undefined {
  try {
    return basename(readlinkSync(`/sys/bus/pci/devices/${b}/driver`));
  } catch {
    return undefined;
  }
}

function modprobe(mod: string): void {
  const root = process.env.LIBNVM_VM_MODROOT;
  const r = Bun.spawnSync(["modprobe", ...(root ? ["-d", root] : []), mod], { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`modprobe ${root ? `-d ${root} ` : ""}${mod} failed: ${r.stderr.toString().trim()}`);
}

beforeAll(async () => {
  bdf = ctrlAddress();
  let groups: string[] = [];
  try {
    groups = readdirSync("/sys/kernel/iommu_groups");
  } catch {
    groups = [];
  }
  const link = `/sys/bus/pci/devices/${bdf}/iommu_group`;
  if (groups.length === 0 || !existsSync(link)) {
    throw new Error(
      `the VFIO suite needs an IOMMU: /sys/kernel/iommu_groups is ${groups.length === 0 ? "empty" : `set but ${bdf} has no group`}. ` +
        `Run it in the q35 guest with the emulated Intel IOMMU: ${RUN_IT}`,
    );
  }
  group = basename(readlinkSync(link));
  // vfio-pci's dependencies are explicit: vfio would request_module() the IOMMU driver from the
  // host's module tree, not the guest kernel's (LIBNVM_VM_MODROOT).
  for (const m of ["irqbypass", "vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio-pci-core", "vfio-pci"]) modprobe(m);
  const drv = driverOf(bdf);
  if (drv !== "vfio-pci") {
    if (drv) write(`/sys/bus/pci/devices/${bdf}/driver/unbind`, bdf);
    write(`/sys/bus/pci/devices/${bdf}/driver_override`, "vfio-pci");
    write("/sys/bus/pci/drivers_probe", bdf);
  }
  const deadline = Date.now() + 10_000;
  while (!existsSync(`/dev/vfio/${group}`) || driverOf(bdf) !== "vfio-pci") {
    if (Date.now() > deadline) throw new Error(`${bdf} did not come up on vfio-pci (/dev/vfio/${group}) within 10 s`);
    await Bun.sleep(20);
  }
});

afterAll(() => {
  if (!bdf) return;
  if (driverOf(bdf) === "vfio-pci") write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf);
  if (existsSync(`/sys/bus/pci/devices/${bdf}/driver_override`)) write(`/sys/bus/pci/devices/${bdf}/driver_override`, "\n");
});

function openVfio(): Controller {
  return Controller.openBackend(new VfioBackend(bdf));
}

function vfioOf(c: Controller): VfioBackend {
  const b = c.backend;
  if (!(b instanceof VfioBackend)) throw new Error(`expected a VFIO backend, got ${b.kind}`);
  return b;
}

function memInfo(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(readFileSync("/proc/meminfo", "utf8"));
  if (!m) throw new Error(`/proc/meminfo has no ${field}`);
  return Number(m[1]);
}

/** The kernel log, as `dmesg` prints it. */
function kernelLog(): string {
  const r = Bun.spawnSync(["dmesg"], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`dmesg failed: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

/**
 * Wait (bounded) for the IOMMU's fault report about `addr` after `since` (an earlier kernelLog()):
 * Linux drivers/iommu/intel/dmar.c dmar_fault_do_one():
 *   DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0xdead0000 [fault reason 0x05] PTE Write access is not set
 */
async function dmarFault(kind: "Read" | "Write", addr: number, since: string): Promise<string> {
  const dev = bdf.slice(5).replace(".", "\\.");
  const re = new RegExp(`\\[DMA ${kind}[^\\]]*\\] Request device \\[${dev}\\] fault addr 0x${addr.toString(16)} .*`);
  const deadline = Date.now() + 5_000;
  let fresh = "";
  while (Date.now() < deadline) {
    const log = kernelLog();
    fresh = log.startsWith(since) ? log.slice(since.length) : log;
    const m = re.exec(fresh);
    if (m) return m[0];
    await Bun.sleep(20);
  }
  throw new Error(`no DMAR ${kind} fault for ${bdf} at 0x${addr.toString(16)} in the kernel log; new lines: ${JSON.stringify(fresh.slice(-2000))}`);
}

/** When the last IOMMU fault was provoked (ms since the epoch), for faultSlot(). */
let lastFault = 0;

/**
 * Wait until the kernel will print the next DMAR fault in full. dmar_fault() shares one ratelimit
 * (fixed 5 s windows, burst 10) between its header line and every fault-record check: 3 per fault
 * report. A command may cause 1 or 2 reports (QEMU faults when it maps its bounce buffer and again
 * when it writes it back; the second is collapsed only if the first is still pending), so a second
 * command in the same window may lose its "fault addr" line. One provoked fault per 5.5 s is safe.
 */
async function faultSlot(): Promise<void> {
  const wait = lastFault + 5_500 - Date.now();
  if (wait > 0) await Bun.sleep(wait);
  lastFault = Date.now();
}

/**
 * Post one data command through the low-level API with the data pointer written by hand (no
 * buffer checks), submit it and poll for its completion, bounded; returns the 15-bit status.
 */
function rawCommand(q: IoQueue, opcode: number, nsid: number, prp1: number, prp2: number, slba: number, blocks: number): number {
  let got: number | undefined;
  const prev = q.onComplete;
  q.onComplete = (_cid, st) => {
    got = st;
  };
  try {
    const cid = q.acquire();
    if (cid < 0) throw new Error("no free CID");
    commands.writeSqe(q.sq.sqe, q.slot, opcode, cid, nsid, prp1, prp2, slba % 0x1_0000_0000, Math.floor(slba / 0x1_0000_0000), blocks - 1);
    q.post(cid);
    q.submit();
    const deadline = performance.now() + 10_000;
    while (got === undefined) {
      q.poll();
      if (performance.now() > deadline) throw new Error(`opcode 0x${opcode.toString(16)} with PRP1 0x${prp1.toString(16)} did not complete in 10 s`);
    }
    return got;
  } finally {
    q.onComplete = prev;
  }
}

function covered(mappings: { iova: number; size: number }[], addr: number): boolean {
  return mappings.some((m) => addr >= m.iova && addr < m.iova + m.size);
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

describe("VFIO backend", () => {
  test("identify through VFIO: serial, model, MDTS; IOMMU geometry; bus mastering set, then cleared on close", () => {
    const exp = requireExpected();
    const c = openVfio();
    let b: VfioBackend;
    try {
      b = vfioOf(c);
      expect(b.kind).toBe("vfio");
      expect(b.name).toBe(bdf);
      expect(b.group).toBe(group);
      expect(c.info.sn).toBe(exp.serial);
      expect(c.info.mn).toBe("QEMU NVMe Ctrl");
      expect(c.info.mdts).toBe(exp.mdts!);
      expect(c.activeNamespaces()).toEqual(exp.namespaces.map((n) => n.nsid));
      expect(b.bar0Size).toBe(16384);

      // What QEMU's intel-iommu (aw-bits 39) reports through VFIO_IOMMU_GET_INFO.
      expect(b.iommu.type).toBe(3); // VFIO_TYPE1v2_IOMMU
      expect(b.iommu.granule).toBe(4096);
      expect(b.iommu.pgsizes & 0x1000n).toBe(0x1000n);
      if (inQemu) {
        expect(b.iommu.pgsizes).toBe(0x40201000n); // 4 KiB | 2 MiB | 1 GiB
        expect(b.iommu.ranges).toEqual([
          { start: 0, end: 0xfedfffff },
          { start: 0xfef00000, end: 2 ** 39 - 1 },
        ]);
      }
      // Every mapping the controller uses lies in a reported range, at or above the base, and
      // (one IOVA range each) is contiguous on the bus.
      const maps = b.mappings();
      expect(maps.length).toBeGreaterThanOrEqual(3); // admin SQ, CQ, identify page
      for (const m of maps) {
        expect(m.iova).toBeGreaterThanOrEqual(IOVA_DEFAULT_BASE);
        expect(b.iommu.ranges.some((r) => m.iova >= r.start && m.iova + m.size - 1 <= r.end)).toBe(true);
      }
      expect(b.dmaAvailable()).toBe(DMA_ENTRY_LIMIT - maps.length);

      const cmd = b.configRead(PCI_COMMAND, 2);
      expect(cmd & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)).toBe(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
      expect(b.commandBefore & PCI_COMMAND_MASTER).toBe(0); // vfio-pci hands it over with DMA off
    } finally {
      c.close();
    }
    c.close(); // idempotent
    expect(() => b!.dmaAvailable()).toThrow(DeviceError);
    // Seen from sysfs after the fds are closed: no bus mastering, so no DMA at all.
    expect(configRead(findPciDevice(bdf), PCI_COMMAND, 2) & PCI_COMMAND_MASTER).toBe(0);
  });

  for (const nsIndex of [0, 1]) {
    test(`data round trip with the async API on namespace ${nsIndex + 1}: one block, multi-page at an odd offset, 2 MiB`, async () => {
      const exp = requireExpected().namespaces[nsIndex]!;
      const c = openVfio();
      try {
        const ns = new Namespace(c, exp.nsid);
        expect(ns.lbaSize).toBe(exp.lbaSize);
        const out = c.allocBuffer(2 * MiB + 8192);
        const back = c.allocBuffer(2 * MiB + 8192);
        patternFill(100 + nsIndex, 0, out.bytes);
        const cases = [
          { lba: 0, bytes: exp.lbaSize, offset: 0 },
          { lba: 64, bytes: 5 * 4096, offset: exp.lbaSize === 512 ? 512 + 4096 : 4096 }, // PRP1 mid-page (512), PRP list
          { lba: 1024, bytes: 2 * MiB, offset: 4096 }, // a PRP list of 512 entries
        ];
        for (const k of cases) {
          const blocks = k.bytes / ns.lbaSize;
          back.bytes.fill(0);
          await ns.write(k.lba, blocks, out, { offset: k.offset });
          await ns.read(k.lba, blocks, back, { offset: k.offset });
          expect(same(back.bytes.subarray(k.offset, k.offset + k.bytes), out.bytes.subarray(k.offset, k.offset + k.bytes))).toBe(true);
          expect(await ns.compare(k.lba, blocks, out, { offset: k.offset })).toBe(true);
        }
        // Many at once through the default queue.
        const n = 64;
        back.bytes.fill(0);
        await Promise.all(Array.from({ length: n }, (_, i) => ns.write(4096 + i * 8, 8, out, { offset: i * 8 * ns.lbaSize })));
        await Promise.all(Array.from({ length: n }, (_, i) => ns.read(4096 + i * 8, 8, back, { offset: i * 8 * ns.lbaSize })));
        const total = n * 8 * ns.lbaSize;
        expect(same(back.bytes.subarray(0, total), out.bytes.subarray(0, total))).toBe(true);
      } finally {
        c.close();
      }
    });
  }

  test("IOVAs are reused after free, unmapped in the kernel (DMA mappings counted back), and no hugepage is needed for contiguous memory", async () => {
    const c = openVfio();
    try {
      const b = vfioOf(c);
      const baseAvail = b.dmaAvailable()!;
      const hugeFree = memInfo("HugePages_Free");

      const a = c.allocBuffer(1 * MiB);
      const x = a.busAddress(0);
      expect(b.dmaAvailable()).toBe(baseAvail - 1);
      const keep = c.allocBuffer(4096); // after `a`, so `a`'s hole cannot merge into the tail
      expect(b.dmaAvailable()).toBe(baseAvail - 2);
      a.free();
      expect(b.dmaAvailable()).toBe(baseAvail - 1); // the kernel really unmapped it
      expect(a.freed).toBe(true);
      const again = c.allocBuffer(1 * MiB);
      expect(again.busAddress(0)).toBe(x); // same range
      const small = c.allocBuffer(8192);
      expect(small.busAddress(0)).toBe(keep.busAddress(0) + 4096);

      // 4 MiB on one IOVA range from ordinary 4 KiB pages: contiguous without hugepages.
      const big = new DmaBuffer(b, 4 * MiB, { contiguous: true });
      expect(big.contiguous).toBe(true);
      const iova = big.iova;
      for (let i = 1; i < iova.length / 2; i++) {
        expect(iova[2 * i]! + iova[2 * i + 1]! * 0x1_0000_0000).toBe(big.busAddress(0) + i * 4096);
      }
      // So an I/O queue larger than a page (CAP.CQR=1 needs it contiguous) works, still without hugepages.
      const q = c.createIoQueue({ entries: 1024 }) as IoQueue;
      const ns = new Namespace(c, requireExpected().namespaces[1]!.nsid);
      patternFill(7, 0, big.bytes);
      await ns.write(2000, 256, big, { queue: q }); // 1 MiB
      big.bytes.fill(0, 4 * MiB - 1 * MiB);
      await ns.read(2000, 256, big, { queue: q, offset: 3 * MiB });
      const expectBytes = new Uint8Array(1 * MiB);
      patternFill(7, 0, expectBytes);
      expect(same(big.bytes.subarray(3 * MiB), expectBytes)).toBe(true);
      expect(memInfo("HugePages_Free")).toBe(hugeFree);

      big.free();
      again.free();
      small.free();
      keep.free();
      // The kernel's count and ours agree (the queue's rings and PRP list pages stay mapped).
      expect(b.dmaAvailable()).toBe(DMA_ENTRY_LIMIT - b.mappings().length);
    } finally {
      c.close();
    }
  });

  test("DMA memory counts once against RLIMIT_MEMLOCK: VmLck grows by exactly the mapped bytes, and falls back on free", () => {
    const vmLck = () => Number(/^VmLck:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))![1]);
    const c = openVfio();
    try {
      const before = vmLck();
      const a = c.allocBuffer(1 * MiB);
      // vfio_iommu_type1 charges the pinned pages; the library's own mlock would double this.
      expect(vmLck() - before).toBe(1024);
      a.free();
      expect(vmLck()).toBe(before);
    } finally {
      c.close();
    }
  });

  test("after close() the group is free: a new process opens the controller, and no mapping is left", async () => {
    const c = openVfio();
    c.allocBuffer(8 * MiB).bytes.fill(1); // left for close() to unmap and free
    c.createIoQueue({ entries: 64 });
    expect(vfioOf(c).mappings().length).toBeGreaterThan(3);
    c.close();

    const p = spawnFixture("vfio-hold.ts", ["--close"]);
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, err }).toEqual({ code: 0, err: "" });
    const report = JSON.parse(/^ready (.*)$/m.exec(out)![1]!) as { sn: string; dmaAvailable: number; mappings: unknown[] };
    expect(report.sn).toBe(requireExpected().serial);
    // A fresh container: only the child's own admin queues and identify page.
    expect(report.dmaAvailable).toBe(DMA_ENTRY_LIMIT - report.mappings.length);
    expect(out).toContain("\nclosed\n");

    // And this process again, twice in a row.
    for (let i = 0; i < 2; i++) {
      const b = new VfioBackend(bdf);
      try {
        expect(b.mappings()).toEqual([]);
        expect(b.dmaAvailable()).toBe(DMA_ENTRY_LIMIT);
      } finally {
        b.close();
      }
    }
  });

  test("SIGKILL: the holder's pinned memory is released, its group freed, and its IOVAs lead nowhere", async () => {
    const bigMiB = 256;
    const availBefore = memInfo("MemAvailable");
    const p = spawnFixture("vfio-hold.ts", ["--mib", String(bigMiB)]);
    let killed = false;
    try {
      const line = await waitForLine(p.stdout, /^ready /, 60_000);
      const child = JSON.parse(line.slice("ready ".length)) as { pid: number; big: { iova: number; size: number } };
      expect(child.pid).toBe(p.pid);
      expect(child.big.size).toBe(bigMiB * MiB);
      // The child's buffer is resident and pinned (MemAvailable is an estimate: loose bound).
      expect(availBefore - memInfo("MemAvailable")).toBeGreaterThan((bigMiB / 2) * 1024);

      // One owner at a time: the group is busy, and the message names the holder.
      let busy: unknown;
      try {
        new VfioBackend(bdf).close();
      } catch (e) {
        busy = e;
      }
      expect(busy).toBeInstanceOf(DeviceError);
      expect((busy as Error).message).toContain(`/dev/vfio/${group}`);
      expect((busy as Error).message).toContain(`held by process ${child.pid}`);
      // force cannot take it either: the kernel admits one holder, and the error says whom to stop.
      let forced: unknown;
      try {
        Controller.open(bdf, { force: true, handleSignals: false }).close();
      } catch (e) {
        forced = e;
      }
      expect(forced).toBeInstanceOf(ControllerBusyError);
      expect((forced as ControllerBusyError).pid).toBe(child.pid);
      expect((forced as Error).message).toContain("force cannot take a VFIO controller from a live process");
      expect((forced as Error).message).toContain(`kill ${child.pid}`);

      p.kill("SIGKILL");
      killed = true;
      expect(await p.exited).not.toBe(0);

      // The kernel closed the fds: type1 unpinned everything (a leaked container would keep 256 MiB pinned).
      const deadline = Date.now() + 10_000;
      while (availBefore - memInfo("MemAvailable") > 64 * 1024 && Date.now() < deadline) await Bun.sleep(50);
      expect(availBefore - memInfo("MemAvailable")).toBeLessThan(64 * 1024);

      // A new process opens it (the group is free, the controller resets and identifies).
      const q = spawnFixture("vfio-hold.ts", ["--close"]);
      const [out, err, code] = await Promise.all([new Response(q.stdout).text(), new Response(q.stderr).text(), q.exited]);
      expect({ code, err }).toEqual({ code: 0, err: "" });
      expect(out).toContain("\nclosed\n");

      // And this one: the dead process's IOVAs map nothing. A Read whose PRP list sits in the
      // middle of the dead buffer fails on the controller's side, and the IOMMU reports the read.
      const c = openVfio();
      try {
        const b = vfioOf(c);
        const ns = new Namespace(c, requireExpected().namespaces[1]!.nsid); // 4096-byte blocks
        const buf = c.allocBuffer(3 * 4096);
        const io = c.createIoQueue({ entries: 8 }) as IoQueue;
        const stale = child.big.iova + child.big.size / 2;
        expect(covered(b.mappings(), stale)).toBe(false);
        await faultSlot();
        const log = kernelLog();
        const st = rawCommand(io, commands.NVM_READ, ns.nsid, buf.busAddress(0), stale, 0, 3);
        if (inQemu) expect(st).toBe(DATA_TRANSFER_ERROR_DNR);
        else expect(st).not.toBe(0);
        await dmarFault("Read", stale, log);
        expect(c.identifyController().sn).toBe(requireExpected().serial);
      } finally {
        c.close();
      }
    } finally {
      if (!killed) {
        p.kill("SIGKILL");
        await p.exited; // its fds must be gone before the next test opens the group
      }
    }
  });

  test("a DMA to an IOVA never mapped is stopped by the IOMMU: no memory changes, the controller stays usable", async () => {
    const c = openVfio();
    try {
      const b = vfioOf(c);
      const ns = new Namespace(c, requireExpected().namespaces[1]!.nsid); // 4096-byte blocks: one page per block
      const q = c.createIoQueue({ entries: 16 }) as IoQueue;
      const lba = 3000;
      // Known data on the namespace, and canaries in every buffer this process has mapped.
      const data = c.allocBuffer(4 * 4096);
      patternFill(31, 0, data.bytes);
      await ns.write(lba, 4, data);
      const canary = c.allocBuffer(64 * 4096);
      canary.bytes.fill(0xa5);
      const sink = c.allocBuffer(4096); // PRP1 of command 2: the controller may write it
      data.bytes.fill(0xa5);
      for (const addr of [UNMAPPED_READ, UNMAPPED_WRITE, UNMAPPED_LIST]) {
        expect(b.iommu.ranges.some((r) => addr >= r.start && addr <= r.end)).toBe(true); // a valid IOVA ...
        expect(covered(b.mappings(), addr)).toBe(false); // ... that nothing is mapped at
      }

      // 1. Read, PRP1 = an unmapped IOVA: the controller's write into host memory faults in the IOMMU.
      // QEMU 7.2 bounces the data through a buffer and ignores the failed write-back: the command
      // completes with success (0) and the data goes nowhere. A real controller reports it
      // (typically Data Transfer Error); either way no memory of ours changed.
      await faultSlot();
      let log = kernelLog();
      const st1 = rawCommand(q, commands.NVM_READ, ns.nsid, UNMAPPED_READ, 0, lba, 1);
      if (inQemu) expect(st1).toBe(0);
      const f1 = await dmarFault("Write", UNMAPPED_READ, log);
      expect(f1).toContain("PTE Write access is not set");

      // 2. Read of 3 pages whose PRP list (PRP2) is at an unmapped IOVA: the controller cannot fetch
      // the list and fails the command itself: Data Transfer Error, DNR.
      await faultSlot();
      log = kernelLog();
      const st2 = rawCommand(q, commands.NVM_READ, ns.nsid, sink.busAddress(0), UNMAPPED_LIST, lba, 3);
      if (inQemu) expect(st2).toBe(DATA_TRANSFER_ERROR_DNR);
      else expect(st2).not.toBe(0);
      await dmarFault("Read", UNMAPPED_LIST, log);

      // 3. Write, PRP1 = an unmapped IOVA: the controller's read from host memory faults; QEMU 7.2
      // again completes it (0) and writes what the failed read gave it, zeros: no host byte reaches the disk.
      await faultSlot();
      log = kernelLog();
      const st3 = rawCommand(q, commands.NVM_WRITE, ns.nsid, UNMAPPED_WRITE, 0, lba + 3, 1);
      if (inQemu) expect(st3).toBe(0);
      const f3 = await dmarFault("Read", UNMAPPED_WRITE, log);
      expect(f3).toContain("PTE Read access is not set");

      // Nothing of ours changed: the canaries are intact.
      expect(canary.bytes.every((v) => v === 0xa5)).toBe(true);
      expect(data.bytes.every((v) => v === 0xa5)).toBe(true);

      // The controller is fine and the namespace holds what it held (block 3: zeros from command 3).
      const csts = registers.decodeCsts(c.registers().csts);
      expect(csts.cfs).toBe(false);
      expect(csts.rdy).toBe(true);
      await ns.read(lba, 4, data);
      const want = new Uint8Array(4 * 4096);
      patternFill(31, 0, want);
      expect(same(data.bytes.subarray(0, 3 * 4096), want.subarray(0, 3 * 4096))).toBe(true);
      if (inQemu) expect(data.bytes.subarray(3 * 4096, 4 * 4096).every((v) => v === 0)).toBe(true);
      expect(c.identifyController().sn).toBe(requireExpected().serial);
      expect(rawCommand(q, commands.NVM_READ, ns.nsid, canary.busAddress(0), 0, lba, 1)).toBe(0);
      expect(same(canary.bytes.subarray(0, 4096), want.subarray(0, 4096))).toBe(true);
    } finally {
      c.close();
    }
  });

  test("a user who may not open /dev/vfio/<group> gets a PermissionError with the chown and udev fix", async () => {
    // The group node is root's, mode 0600 (/dev/vfio/vfio itself is open to all).
    const p = Bun.spawn(
      ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bun", join(import.meta.dir, "../hw/fixtures/vfio-hold.ts"), bdf, "--close"],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, HOME: "/", TMPDIR: "/dev/shm" } },
    );
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, out }).toEqual({ code: 1, out: "" });
    expect(err).toContain(`PermissionError: cannot open /dev/vfio/${group}: permission denied`);
    expect(err).toContain(`chown $USER /dev/vfio/${group}`);
    expect(err).toContain(`SUBSYSTEM=="vfio", KERNEL=="${group}", OWNER="<user>"`);
  });

  test("refusals name the fix: not bound to vfio-pci -> the bind commands", () => {
    // Last: it unbinds the device (afterAll leaves it unbound anyway).
    write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf);
    let err: unknown;
    try {
      new VfioBackend(bdf).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeviceError);
    const msg = (err as Error).message;
    expect(msg).toContain(`${bdf} is not bound to any driver, not vfio-pci`);
    expect(msg).toContain(`echo vfio-pci > /sys/bus/pci/devices/${bdf}/driver_override`);
    expect(msg).toContain(`echo ${bdf} > /sys/bus/pci/drivers_probe`);
    expect(msg).not.toContain("driver/unbind"); // nothing to unbind from
  });
});
