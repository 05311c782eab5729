/**
 * dma-buf import through the disnvm module (the dmabuf suite of test/vm/hw.ts): Debian's 6.12 guest
 * (its udmabuf turns memfd pages into a dma-buf; 6.1 has none) on q35 with the IOMMU translating for
 * the controller, so every bus address the exporter makes is an IOVA of the controller's own domain
 * and a wrongly attached or released buffer faults instead of reaching memory.
 *
 * Namespace 1 (512-byte blocks, MDTS 4 MiB) carries the data tests; namespace 2 (4096-byte blocks)
 * is throttled by QEMU to a few commands a second, so the release and revocation tests find their
 * commands still in flight.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  ClosedError,
  commands,
  Controller,
  ControllerFatalError,
  DisnvmBackend,
  DmaBufRevokedError,
  InvalidArgumentError,
  Namespace,
  native,
  NoCpuViewError,
  NvmeStatusError,
  PermissionError,
  registers,
  type DmaBuffer,
} from "../../lib/index.ts";
import { configRead, findPciDevice, PCI_COMMAND, PCI_COMMAND_MASTER } from "../../lib/pci.ts";
import { REPO, waitForLine } from "../hw/common.ts";
import { BDF, disnvmNode, ensureHugepages, hasCap, iommuDomainType, pinnedPages } from "../hw-disnvm/common.ts";
import { attached, attachedTo, dmabufsOnController, fillPattern, firstDifference, heapBuffer, udmabuf, type TestDmaBuf } from "./common.ts";

const MiB = 1 << 20;
const EPERM = 1;
const EBADF = 9;
const E2BIG = 7;
const EFAULT = 14;
const EINVAL = 22;
const ERANGE = 34;
const ESTALE = 116;
const CAP_SYS_ADMIN = 21;

let node = "";
let giveBackHugepages = () => {};
const open: { close(): void }[] = [];
const bufs: TestDmaBuf[] = [];

function controller(): Controller {
  const c = Controller.openBackend(new DisnvmBackend(node), { handleSignals: false });
  open.push(c);
  return c;
}
function disnvm(c: Controller): DisnvmBackend {
  return c.backend as DisnvmBackend;
}
function track(d: TestDmaBuf): TestDmaBuf {
  bufs.push(d);
  return d;
}
function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("did not throw");
}
async function settled<T>(ps: Promise<T>[]): Promise<PromiseSettledResult<T>[]> {
  return Promise.all(ps.map((p) => p.then((value) => ({ status: "fulfilled" as const, value }), (reason: unknown) => ({ status: "rejected" as const, reason }))));
}
function dmesg(): string {
  const r = Bun.spawnSync(["dmesg"], { stdout: "pipe" });
  return r.stdout.toString();
}
/** IOMMU faults the kernel logged for the controller so far (at bus address `at` only, when given). */
function dmarFaults(at?: number): number {
  const short = BDF.replace(/^0000:/, "");
  const addr = at === undefined ? "" : `fault addr 0x${at.toString(16)} `;
  return dmesg().split("\n").filter((l) => l.includes("DMAR") && l.includes(`[${short}]`) && l.includes(addr)).length;
}
/** Wait (bounded) for the kernel to log an IOMMU fault at `at` beyond the `before` it had: the fault interrupt may come after the command's completion. */
async function faultLogged(at: number, before: number): Promise<boolean> {
  const deadline = Date.now() + 3000;
  for (;;) {
    if (dmarFaults(at) > before) return true;
    if (Date.now() > deadline) return false;
    await Bun.sleep(20);
  }
}
function vmLck(): number {
  return Number(/^VmLck:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))![1]);
}
function registersNow(): { cc: number; csts: number } {
  const b = new DisnvmBackend(node);
  try {
    return { cc: native().nvm_read32(b.bar0, registers.REG_CC), csts: native().nvm_read32(b.bar0, registers.REG_CSTS) };
  } finally {
    b.close();
  }
}
function busMaster(): boolean {
  return (configRead(findPciDevice(BDF), PCI_COMMAND, 2) & PCI_COMMAND_MASTER) !== 0;
}
/** Physical address of each 4 KiB page of `bytes` (root: /proc/self/pagemap), as numbers. */
function physical(bytes: Uint8Array): number[] {
  const n = native();
  const pages = bytes.length / 4096;
  // pagemap reports only pages this process has mapped: touch each one.
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 4096) sum += bytes[i]!;
  void sum;
  const out = n.nvm_host_alloc(pages * 8)!;
  try {
    if (n.nvm_phys_addrs(ptr(bytes), pages, out) !== 0) throw new Error("nvm_phys_addrs failed");
    const v = new Uint32Array(toArrayBuffer(out, 0, pages * 8));
    return Array.from({ length: pages }, (_, i) => v[2 * i]! + v[2 * i + 1]! * 2 ** 32);
  } finally {
    n.nvm_host_free(out);
  }
}
function busAddresses(buf: DmaBuffer): number[] {
  const v = buf.iova;
  return Array.from({ length: v.length / 2 }, (_, i) => v[2 * i]! + v[2 * i + 1]! * 2 ** 32);
}
/** A Read of `blocks` blocks of `ns` at `lba` whose data pointer is the bus address `prp1` (one page). */
function readTo(ns: Namespace, prp1: number, lba: number, blocks: number) {
  return (sqe: Uint32Array, o: number, cid: number) => commands.writeSqe(sqe, o, commands.NVM_READ, cid, ns.nsid, prp1, 0, lba, 0, blocks - 1);
}

beforeAll(() => {
  node = disnvmNode();
  if (!existsSync("/dev/udmabuf")) throw new Error(`/dev/udmabuf is missing: the dmabuf suite needs a kernel with CONFIG_UDMABUF (Debian's 6.12; this guest runs ${process.env.LIBNVM_VM_KVER})`);
  const domain = iommuDomainType();
  if (domain !== "DMA" && domain !== "DMA-FQ") throw new Error(`the controller's IOMMU domain is ${domain ?? "absent"}: the dmabuf suite runs with the IOMMU translating (q35, intel_iommu=on)`);
  // Queues over 4 KiB come from 2 MiB hugepages (module/README.md).
  giveBackHugepages = ensureHugepages(8);
});

// A failed test must not leave the node open for the next one (one owner at a time).
afterEach(() => {
  for (const c of open.splice(0)) {
    try {
      c.close();
    } catch {
      // reported by the test that failed
    }
  }
});

afterAll(() => {
  const problems: string[] = [];
  for (const c of open.splice(0)) {
    try {
      c.close();
    } catch (e) {
      problems.push(`close: ${(e as Error).message}`);
    }
  }
  for (const d of bufs.splice(0)) d.close();
  giveBackHugepages();
  if (dmabufsOnController() !== 0) problems.push(`${dmabufsOnController()} dma-buf imports still on the controller`);
  if (pinnedPages() !== 0) problems.push(`${pinnedPages()} pages still pinned`);
  if (problems.length > 0) throw new Error(`the guest was not left clean: ${problems.join("; ")}`);
});

describe("import", () => {
  test("the module imports dma-bufs and the IOMMU translates for the controller (alone in its group)", () => {
    const c = controller();
    const info = disnvm(c).info();
    expect(info).toMatchObject({ abiVersion: 3, dmaBuf: true, isolated: true, fileDmaBufs: 0, dmaBufs: 0 });
    c.close();
  });

  test("the dma-buf is attached to the controller, one bus address per 4 KiB page in its IOMMU domain, nothing pinned or charged; free() detaches", () => {
    const d = track(udmabuf(MiB));
    const c = controller();
    const b = disnvm(c);
    const before = { pinned: b.info().pinnedPages, vmLck: vmLck() };
    expect(attached(d.ino)).toBe(false);
    const buf = c.mapDmaBuf(d.fd);
    expect(buf.size).toBe(MiB);
    expect(buf.dmaBuf).toMatchObject({ fd: d.fd, offset: 0, bufferSize: MiB, exporter: "udmabuf" });
    expect(attachedTo(d.ino)).toEqual([BDF]);
    expect(dmabufsOnController()).toBe(1);
    expect(b.info()).toMatchObject({ fileDmaBufs: 1, fileDmaBufPages: 256, dmaBufs: 1, fileRevoked: 0 });
    // The exporter's memory: the module pins nothing of ours and charges nothing to RLIMIT_MEMLOCK.
    expect(b.info().pinnedPages).toBe(before.pinned);
    expect(vmLck()).toBe(before.vmLck);
    const bus = busAddresses(buf);
    expect(bus.length).toBe(256);
    for (const a of bus) {
      expect(a).toBeGreaterThan(0);
      expect(a % 4096).toBe(0);
    }
    // IOVAs the exporter made for this controller, not the memfd's physical pages.
    const phys = physical(d.bytes);
    expect(bus.some((a, i) => a === phys[i])).toBe(false);
    // No CPU view in this process; the message says how to copy.
    expect(thrown(() => buf.bytes)).toBeInstanceOf(NoCpuViewError);
    expect((thrown(() => buf.pointer) as Error).message).toContain("allocBuffer()");
    buf.free();
    expect(attached(d.ino)).toBe(false);
    expect(dmabufsOnController()).toBe(0);
    expect(b.info()).toMatchObject({ fileDmaBufs: 0, fileDmaBufPages: 0, fileMappings: b.info().fileMappings });
    c.close();
  });
});

describe("data", () => {
  test("write from dma-buf memory, read back through a plain buffer: bit for bit (the import outlives its fd)", async () => {
    const d = track(udmabuf(MiB));
    fillPattern(d.bytes, 1);
    const c = controller();
    const ns = new Namespace(c, 1);
    const src = c.mapDmaBuf(d.fd);
    // The import holds the dma-buf itself: its fd may go.
    d.closeFd();
    await ns.write(4096, MiB / 512, src);
    using back = c.allocBuffer(MiB);
    await ns.read(4096, MiB / 512, back);
    expect(firstDifference(back.bytes, d.bytes)).toBe(-1);
    src.free();
    c.close();
  });

  test("read into dma-buf memory: the controller's data is in the memfd, bit for bit", async () => {
    const d = track(udmabuf(MiB));
    d.bytes.fill(0xee);
    const c = controller();
    const ns = new Namespace(c, 1);
    using out = c.allocBuffer(MiB);
    fillPattern(out.bytes, 2);
    await ns.write(8192, MiB / 512, out);
    const dst = c.mapDmaBuf(d.fd);
    await ns.read(8192, MiB / 512, dst);
    expect(firstDifference(d.bytes, out.bytes)).toBe(-1);
    dst.free();
    c.close();
  });

  test("regions at odd page offsets (PRP lists over imported pages) and an import at a page offset: only their bytes move", async () => {
    const d = track(udmabuf(16 * 4096));
    const c = controller();
    const ns = new Namespace(c, 1);
    using out = c.allocBuffer(64 * 1024);
    fillPattern(out.bytes, 3);
    await ns.write(12288, 128, out);
    const whole = c.mapDmaBuf(d.fd);
    // PRP1 inside page 3, then a list of 10 more imported pages.
    d.bytes.fill(0x5a);
    const at = 3 * 4096 + 512;
    const len = 40 * 1024;
    await ns.read(12288, len / 512, whole.region(at, len));
    expect(firstDifference(d.bytes.subarray(at, at + len), out.bytes.subarray(0, len))).toBe(-1);
    expect(d.bytes[at - 1]).toBe(0x5a);
    expect(d.bytes[at + len]).toBe(0x5a);
    // The other way, from a region at page 5 + 2048 of the import.
    await ns.write(20000, 24, whole.region(5 * 4096 + 2048, 24 * 512));
    using back = c.allocBuffer(24 * 512);
    await ns.read(20000, 24, back);
    expect(firstDifference(back.bytes, d.bytes.subarray(5 * 4096 + 2048, 5 * 4096 + 2048 + 24 * 512))).toBe(-1);
    // An import of pages 7..15 of the dma-buf only: page 0 of it is page 7 of the memfd.
    const part = c.mapDmaBuf(d.fd, { offset: 7 * 4096, size: 9 * 4096 });
    expect(part.dmaBuf).toMatchObject({ offset: 7 * 4096, bufferSize: 16 * 4096 });
    d.bytes.fill(0x11);
    await ns.read(12288, 9 * 8, part);
    expect(firstDifference(d.bytes.subarray(7 * 4096, 16 * 4096), out.bytes.subarray(0, 9 * 4096))).toBe(-1);
    expect(d.bytes[7 * 4096 - 1]).toBe(0x11);
    expect(attachedTo(d.ino)).toEqual([BDF, BDF]); // two imports, two attachments
    whole.free();
    part.free();
    expect(attached(d.ino)).toBe(false);
    c.close();
  });

  test("multi-MiB: 16 MiB in 4 MiB commands from one import to the drive and back into another, through PRP lists and through SGLs", async () => {
    const a = track(udmabuf(16 * MiB));
    const b = track(udmabuf(16 * MiB));
    fillPattern(a.bytes, 4);
    const c = controller();
    const ns = new Namespace(c, 1);
    expect(ns.maxTransfer).toBe(4 * MiB);
    const src = c.mapDmaBuf(a.fd);
    const dst = c.mapDmaBuf(b.fd);
    const per = ns.maxBlocks;
    const base = 32768;
    const q = c.createIoQueue({ entries: 8 });
    const sgl = c.createIoQueue({ entries: 8, dataPointer: "sgl" });
    for (let i = 0; i < 4; i++) await ns.write(base + i * per, per, src, { queue: q, offset: i * 4 * MiB });
    for (const [queue, fill] of [[q, 0x01], [sgl, 0x02]] as const) {
      b.bytes.fill(fill);
      await Promise.all(Array.from({ length: 4 }, (_, i) => ns.read(base + i * per, per, dst, { queue, offset: i * 4 * MiB })));
      expect(firstDifference(b.bytes, a.bytes)).toBe(-1);
    }
    src.free();
    dst.free();
    c.close();
  });

  test("another exporter: a buffer of the system dma-heap, both ways, seen through the dma-buf's own mmap", async () => {
    const h = track(heapBuffer(MiB));
    h.sync(false);
    fillPattern(h.bytes, 5);
    h.sync(true);
    const c = controller();
    const ns = new Namespace(c, 1);
    const buf = c.mapDmaBuf(h.fd);
    expect(buf.dmaBuf?.exporter).toBe("system");
    await ns.write(65536, MiB / 512, buf);
    using back = c.allocBuffer(MiB);
    await ns.read(65536, MiB / 512, back);
    h.sync(false);
    expect(firstDifference(back.bytes, h.bytes)).toBe(-1);
    h.bytes.fill(0);
    h.sync(true);
    await ns.read(65536, MiB / 512, buf);
    h.sync(false);
    expect(firstDifference(h.bytes, back.bytes)).toBe(-1);
    h.sync(true);
    buf.free();
    expect(attached(h.ino)).toBe(false);
    c.close();
  });

  test("after free() the controller cannot reach the imported pages: a read aimed at an old bus address is stopped by the IOMMU and the memory stays as it was", async () => {
    const d = track(udmabuf(8 * 4096));
    d.bytes.fill(0x3c);
    const c = controller();
    const ns = new Namespace(c, 1);
    using out = c.allocBuffer(4096);
    out.bytes.fill(0xc3);
    await ns.write(0, 8, out);
    const q = c.createIoQueue({ entries: 4 });
    const buf = c.mapDmaBuf(d.fd);
    const old = buf.busAddress(2 * 4096);
    q.commandSync(readTo(ns, old, 0, 8)); // lands while imported
    expect(d.bytes.subarray(2 * 4096, 3 * 4096).every((x) => x === 0xc3)).toBe(true);
    d.bytes.fill(0x3c);
    const faults = dmarFaults(old);
    buf.free(); // detached at once, the lazy IOTLB flushed
    // QEMU completes a read whose data write the IOMMU refused; the fault is in the kernel log.
    q.commandSync(readTo(ns, old, 0, 8));
    expect(d.bytes.every((x) => x === 0x3c)).toBe(true);
    expect(await faultLogged(old, faults)).toBe(true);
    c.close();
  });
});

describe("release", () => {
  /** Namespace 2 (throttled) with a pattern at blocks 0..15, written through `c`. */
  async function throttled(c: Controller, seed: number): Promise<{ ns: Namespace; data: Uint8Array }> {
    const ns = new Namespace(c, 2);
    expect(ns.lbaSize).toBe(4096);
    using out = c.allocBuffer(16 * 4096);
    fillPattern(out.bytes, seed);
    await ns.write(0, 16, out);
    return { ns, data: out.bytes.slice() };
  }

  test("free() while commands are in flight: the import stays attached until they ended, their data landed, then it is detached", async () => {
    const d = track(udmabuf(16 * 4096));
    const c = controller();
    const { ns, data } = await throttled(c, 6);
    const buf = c.mapDmaBuf(d.fd);
    const reads = Array.from({ length: 4 }, (_, i) => ns.read(4 * i, 4, buf, { offset: 4 * i * 4096 }));
    await Bun.sleep(20); // rung and fetched: QEMU holds them in its throttle
    buf.free();
    expect(buf.freed).toBe(true);
    expect(disnvm(c).info().fileDmaBufs).toBe(1); // kept: the controller may still write it
    expect(attached(d.ino)).toBe(true);
    await Promise.all(reads);
    expect(disnvm(c).info().fileDmaBufs).toBe(0);
    expect(attached(d.ino)).toBe(false);
    expect(firstDifference(d.bytes, data)).toBe(-1);
    c.close();
  });

  test("close() while commands are in flight: they end, the controller is stopped before the import is detached; the dma-buf stays usable", async () => {
    const d = track(udmabuf(16 * 4096));
    d.bytes.fill(0x77);
    const c = controller();
    const { ns, data } = await throttled(c, 7);
    const faults = dmarFaults();
    const buf = c.mapDmaBuf(d.fd);
    const reads = Array.from({ length: 4 }, (_, i) => ns.read(4 * i, 4, buf, { offset: 4 * i * 4096 }));
    await Bun.sleep(20);
    c.close();
    const results = await settled(reads);
    // Deleting the queue ends each: its completion says so (Command Aborted due to SQ Deletion), or
    // it settles with ClosedError once the queue is gone.
    for (const r of results) {
      if (r.status === "fulfilled") continue;
      if (r.reason instanceof NvmeStatusError) expect(r.reason.sc).toBe(0x08);
      else expect(r.reason).toBeInstanceOf(ClosedError);
    }
    expect(attached(d.ino)).toBe(false);
    expect(dmabufsOnController()).toBe(0);
    expect(dmarFaults()).toBe(faults); // nothing reached it after the detach
    // Each 16 KiB piece is what was on the drive (the read landed) or untouched (it never did).
    for (let i = 0; i < 4; i++) {
      const piece = d.bytes.subarray(4 * i * 4096, 4 * (i + 1) * 4096);
      const landed = firstDifference(piece, data.subarray(4 * i * 4096, 4 * (i + 1) * 4096)) === -1;
      expect(landed || piece.every((x) => x === 0x77)).toBe(true);
      if (results[i]!.status === "fulfilled") expect(landed).toBe(true);
    }
    // The exporter's buffer lives on and imports again.
    const c2 = controller();
    const again = c2.mapDmaBuf(d.fd);
    await new Namespace(c2, 2).read(0, 16, again);
    expect(firstDifference(d.bytes, data)).toBe(-1);
    again.free();
    c2.close();
  });

  test("SIGKILL of the owner with a dma-buf imported: the module disables the controller, then detaches; the exporter's memory stays intact", async () => {
    const d = track(udmabuf(MiB));
    const blocks = MiB / 512;
    const lba = 100_000;
    // The pattern the owner keeps reading into the dma-buf.
    const c = controller();
    const ns = new Namespace(c, 1);
    using out = c.allocBuffer(MiB);
    fillPattern(out.bytes, 8);
    await ns.write(lba, blocks, out);
    const want = out.bytes.slice();
    c.close();
    const faults = dmarFaults();
    const p = Bun.spawn(["bun", join(import.meta.dir, "fixtures", "owner.ts"), node, String(lba), String(blocks)], {
      stdin: d.fd,
      stdout: "pipe",
      stderr: "pipe",
      cwd: REPO,
    });
    try {
      try {
        await waitForLine(p.stdout, /^ready \d+/, 60_000);
      } catch (e) {
        p.kill("SIGKILL");
        throw new Error(`${(e as Error).message}; its stderr: ${(await new Response(p.stderr).text()).trim().slice(-2000)}`);
      }
      expect(attachedTo(d.ino)).toEqual([BDF]);
      expect(dmabufsOnController()).toBe(1);
      expect(busMaster()).toBe(true);
      await Bun.sleep(200); // reads in flight
    } finally {
      p.kill("SIGKILL");
      await p.exited;
    }
    expect(p.signalCode).toBe("SIGKILL");
    // The release ran as the process died: detached, and the controller stopped first.
    expect(attached(d.ino)).toBe(false);
    expect(dmabufsOnController()).toBe(0);
    expect(busMaster()).toBe(false);
    expect(dmarFaults()).toBe(faults);
    const r = registersNow();
    expect(registers.decodeCc(r.cc).en).toBe(false);
    expect(registers.decodeCsts(r.csts).rdy).toBe(false);
    // The exporter's memory: intact, and holding what the owner read into it.
    expect(firstDifference(d.bytes, want)).toBe(-1);
    // A new owner imports the same dma-buf and uses it.
    const c2 = controller();
    const again = c2.mapDmaBuf(d.fd);
    await new Namespace(c2, 1).write(lba + blocks, blocks, again);
    using back = c2.allocBuffer(MiB);
    await new Namespace(c2, 1).read(lba + blocks, blocks, back);
    expect(firstDifference(back.bytes, want)).toBe(-1);
    again.free();
    c2.close();
  });
});

describe("revocation", () => {
  test("an exporter's revocation (the module's test hook): its commands fail with DmaBufRevokedError, others are ended by the reset; new ones are refused; the controller works again and can no longer reach the memory", async () => {
    const d = track(udmabuf(16 * 4096));
    d.bytes.fill(0x99);
    const c = controller();
    const ns2 = new Namespace(c, 2);
    const ns1 = new Namespace(c, 1);
    using plain = c.allocBuffer(16 * 4096);
    const buf = c.mapDmaBuf(d.fd);
    const old = buf.busAddress(0);
    const resets = c.resets;
    // Throttled: these are in QEMU when the revocation comes. Disabling the controller drains them
    // (QEMU completes what it started, before the module returns): each either completed or fails.
    const started = Array.from({ length: 2 }, (_, i) => ns2.read(4 * i, 4, buf, { offset: 4 * i * 4096 }));
    await Bun.sleep(20);
    // Posted, their doorbell not rung yet (it is, once this synchronous turn ends, to a disabled
    // controller): these the controller never finishes.
    const onPlain = Array.from({ length: 2 }, (_, i) => ns2.read(i, 1, plain, { offset: i * 4096 }));
    const onImport = Array.from({ length: 2 }, (_, i) => ns2.read(8 + 4 * i, 4, buf, { offset: (8 + 4 * i) * 4096 }));
    disnvm(c).revokeDmaBuf(buf.dmaBuf!.handle);
    // The module stopped the controller before returning, and keeps bus mastering off.
    expect(registers.decodeCsts(native().nvm_read32(c.backend.bar0, registers.REG_CSTS)).rdy).toBe(false);
    expect(busMaster()).toBe(false);
    const imp = await settled(onImport);
    const pl = await settled(onPlain);
    for (const r of imp) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(DmaBufRevokedError);
      expect(((r as PromiseRejectedResult).reason as Error).message).toContain(`dma-buf fd ${d.fd} (exporter udmabuf`);
    }
    for (const r of pl) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(ControllerFatalError);
      expect(((r as PromiseRejectedResult).reason as Error).message).toContain("because the exporter of an imported dma-buf revoked it");
    }
    for (const r of await settled(started)) if (r.status === "rejected") expect(r.reason).toBeInstanceOf(DmaBufRevokedError);
    expect(c.resets).toBe(resets + 1);
    // The library gave the revoked import back (bus mastering could not come back otherwise).
    expect(disnvm(c).info()).toMatchObject({ fileDmaBufs: 0, fileRevoked: 0 });
    expect(attached(d.ino)).toBe(false);
    expect(busMaster()).toBe(true);
    // The controller cannot write the revoked memory by its old address: the IOMMU stops it. (At
    // once: a later mapping of this process may get the IOVA again.)
    const memBefore = d.bytes.slice();
    const faults = dmarFaults(old);
    c.defaultIoQueue().commandSync(readTo(ns1, old, 500, 8));
    expect(firstDifference(d.bytes, memBefore)).toBe(-1);
    expect(await faultLogged(old, faults)).toBe(true);
    // Refused from now on, before anything reaches the controller.
    expect(buf.revokedError).toBeInstanceOf(DmaBufRevokedError);
    expect(await ns1.read(0, 8, buf).catch((e: unknown) => e)).toBeInstanceOf(DmaBufRevokedError);
    const q = c.createIoQueue({ entries: 4 });
    expect(thrown(() => ns1.readSync(q, 0, 8, buf))).toBeInstanceOf(DmaBufRevokedError);
    // The controller works again for everything else.
    fillPattern(plain.bytes, 9);
    const want = plain.bytes.slice();
    await ns1.write(500, 128, plain);
    plain.bytes.fill(0);
    await ns1.read(500, 128, plain);
    expect(firstDifference(plain.bytes, want)).toBe(-1);
    const handle = buf.dmaBuf!.handle;
    buf.free();
    expect(dmesg()).toContain(`the exporter (udmabuf) revoked dma-buf import ${handle}: controller disabled`);
    c.close();
  });

  test("the test hook is root's: without CAP_SYS_ADMIN it is a PermissionError and nothing is revoked", () => {
    const caps = "-sys_admin";
    const r = Bun.spawnSync(["setpriv", `--inh-caps=${caps}`, `--bounding-set=${caps}`, "--", "bun", join(import.meta.dir, "fixtures", "no-admin.ts"), node], {
      cwd: REPO,
      stdout: "pipe",
      stderr: "pipe",
      timeout: 110_000,
    });
    const line = r.stdout.toString().trim().split("\n").at(-1) ?? "";
    if (r.exitCode !== 0 || !line.startsWith("{")) throw new Error(`no-admin.ts exited ${r.exitCode}: ${r.stderr.toString().trim().slice(-2000)}`);
    const j = JSON.parse(line);
    expect(hasCap(j.capEff, CAP_SYS_ADMIN)).toBe(false);
    expect(j.error?.name).toBe(PermissionError.name);
    expect(j.error.message).toContain("test hook for root (CAP_SYS_ADMIN)");
    expect(j.revoked).toBe(0);
    expect(j.dmaBufs).toBe(1);
    expect(dmabufsOnController()).toBe(0);
  });

  test("the module: a revoked import reads as revoked, and bus mastering stays off (ESTALE) until it is unmapped", () => {
    const d = track(udmabuf(65536));
    const n = native();
    const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
    expect(fd).toBeGreaterThanOrEqual(0);
    const addrs = n.nvm_host_alloc(16 * 8)!;
    const out = n.nvm_host_alloc(16)!;
    const o = new Uint32Array(toArrayBuffer(out, 0, 16));
    try {
      expect(n.nvm_disnvm_map_dmabuf(fd, d.fd, 0, 0, 65536, addrs, out)).toBe(0);
      const handle = o[0]!;
      expect(n.nvm_disnvm_dmabuf_status(fd, handle, 0, out)).toBe(0);
      expect(o[0]).toBe(0);
      expect(n.nvm_disnvm_revoke_dmabuf(fd, handle, 0)).toBe(0);
      expect(n.nvm_disnvm_dmabuf_status(fd, handle, 0, out)).toBe(0);
      expect(o[0]).toBe(1); // DISNVM_DMABUF_REVOKED
      expect(busMaster()).toBe(false);
      expect(n.nvm_disnvm_bus_master(fd, 1)).toBe(-ESTALE);
      expect(busMaster()).toBe(false);
      expect(n.nvm_disnvm_revoke_dmabuf(fd, handle, 0)).toBe(0); // twice: nothing more happens
      expect(n.nvm_disnvm_unmap_dmabuf(fd, handle, 0)).toBe(0);
      expect(n.nvm_disnvm_unmap_dmabuf(fd, handle, 0)).toBe(-2); // ENOENT: gone
      expect(n.nvm_disnvm_dmabuf_status(fd, handle, 0, out)).toBe(-2);
      expect(n.nvm_disnvm_bus_master(fd, 1)).toBe(0);
      expect(busMaster()).toBe(true);
      expect(attached(d.ino)).toBe(false);
    } finally {
      expect(n.nvm_disnvm_close(fd)).toBe(0);
      n.nvm_host_free(addrs);
      n.nvm_host_free(out);
    }
  });
});

describe("bad input", () => {
  test("through the library: typed errors naming the problem, before anything is mapped", () => {
    const d = track(udmabuf(8 * 4096));
    const nul = openSync("/dev/null", "r");
    const c = controller();
    const b = disnvm(c);
    const mappings = b.info().fileMappings;
    try {
      const cases: [() => unknown, RegExp][] = [
        [() => c.mapDmaBuf(987_654), /fd 987654 is not open in this process/],
        [() => c.mapDmaBuf(d.memfd), /is not a dma-buf \(it is \/memfd:libnvm-dmabuf-test/],
        [() => c.mapDmaBuf(nul), /is not a dma-buf \(it is \/dev\/null\)/],
        [() => c.mapDmaBuf(-3), /dma-buf fd -3: must be a file descriptor/],
        [() => c.mapDmaBuf(d.fd, { offset: 8 * 4096 }), /offset 32768 is past the end of dma-buf fd \d+ \(32768 bytes, exporter udmabuf\)/],
        [() => c.mapDmaBuf(d.fd, { offset: 4096, size: 8 * 4096 }), /runs past the end of dma-buf fd \d+ .* import at most 28672 bytes there/],
        [() => c.mapDmaBuf(d.fd, { offset: 100 }), /dma-buf offset 100: must be a non-negative multiple of 4096/],
        [() => c.mapDmaBuf(d.fd, { size: 0 }), /dma-buf size 0: must be a positive multiple of 4096/],
        [() => c.mapDmaBuf(d.fd, { size: 6000 }), /dma-buf size 6000/],
      ];
      for (const [call, msg] of cases) {
        const e = thrown(call);
        expect(e).toBeInstanceOf(InvalidArgumentError);
        expect((e as Error).message).toMatch(msg);
      }
      expect(b.info()).toMatchObject({ fileMappings: mappings, fileDmaBufs: 0 });
      expect(attached(d.ino)).toBe(false);
    } finally {
      closeSync(nul);
      c.close();
    }
  });

  test("straight to the module (no library checks): EBADF, EINVAL, ERANGE, E2BIG, EFAULT, and nothing mapped", () => {
    const d = track(udmabuf(8 * 4096));
    const n = native();
    const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
    expect(fd).toBeGreaterThanOrEqual(0);
    const addrs = n.nvm_host_alloc(8 * 8)!;
    const out = n.nvm_host_alloc(16)!;
    const info = n.nvm_host_alloc(256)!;
    const map = (dfd: number, off: number, size: number, a: Pointer = addrs) => Math.abs(n.nvm_disnvm_map_dmabuf(fd, dfd, off, 0, size, a, out));
    try {
      expect(map(987_654, 0, 4096)).toBe(EBADF);
      expect(map(-1, 0, 4096)).toBe(EBADF);
      expect(map(d.memfd, 0, 4096)).toBe(EINVAL); // a memfd, not a dma-buf
      expect(map(d.fd, 8 * 4096, 4096)).toBe(ERANGE); // at the end
      expect(map(d.fd, 4096, 8 * 4096)).toBe(ERANGE); // runs past it
      expect(map(d.fd, 100, 4096)).toBe(EINVAL); // unaligned offset
      expect(map(d.fd, 0, 100)).toBe(EINVAL); // unaligned size
      expect(map(d.fd, 0, 0)).toBe(EINVAL); // nothing
      expect(map(d.fd, 0, 2 ** 31)).toBe(E2BIG); // over 1 GiB
      expect(map(d.fd, 0, 4096, 0 as unknown as Pointer)).toBe(EFAULT); // no address list
      expect(n.nvm_disnvm_info(fd, info)).toBe(0);
      const v = new Uint32Array(toArrayBuffer(info, 0, 128));
      expect(v[2 * 8]).toBe(0); // file_mappings
      expect(v[2 * 9]).toBe(0); // file_dmabufs
      expect(attached(d.ino)).toBe(false);
      expect(dmabufsOnController()).toBe(0);
      // The test hook and the status of a handle that does not exist.
      expect(n.nvm_disnvm_revoke_dmabuf(fd, 12345, 0)).toBe(-2);
      expect(n.nvm_disnvm_dmabuf_status(fd, 12345, 0, out)).toBe(-2);
      // And a good one still works after all that.
      expect(map(d.fd, 4096, 4096)).toBe(0);
      expect(attached(d.ino)).toBe(true);
    } finally {
      // Closed with the import live: the release detaches it.
      expect(n.nvm_disnvm_close(fd)).toBe(0);
      n.nvm_host_free(addrs);
      n.nvm_host_free(out);
      n.nvm_host_free(info);
    }
    expect(attached(d.ino)).toBe(false);
    expect(dmabufsOnController()).toBe(0);
  });

  test("EPERM for another process than the opener holds for imports as for everything else", () => {
    // The opener rule is the module's open-file rule (test/hw/disnvm.test.ts); MAP_DMABUF follows it too.
    const n = native();
    const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
    expect(fd).toBeGreaterThanOrEqual(0);
    try {
      const child = Bun.spawnSync(
        ["bun", "-e", `import { native } from "${REPO}/lib/native.ts"; const n = native(); const a = n.nvm_host_alloc(64)!; console.log(n.nvm_disnvm_map_dmabuf(0, 0, 0, 0, 4096, a, a));`],
        { stdin: fd, stdout: "pipe", stderr: "pipe", cwd: REPO },
      );
      expect(child.stderr.toString()).toBe("");
      expect(Number(child.stdout.toString().trim())).toBe(-EPERM);
    } finally {
      expect(n.nvm_disnvm_close(fd)).toBe(0);
    }
  });
});

test("the kernel logged no warning or bug from the module", () => {
  const lines = dmesg().split("\n");
  const from = lines.findIndex((l) => l.includes("disnvm: loading out-of-tree module"));
  expect(from).toBeGreaterThanOrEqual(0);
  const bad = lines.slice(from).filter((l) => /WARNING:|BUG:|Oops|general protection fault|refcount_t:|list_del corruption|Bad page|circular locking/.test(l));
  expect(bad).toEqual([]);
});
