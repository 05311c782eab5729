/**
 * dma-buf imports without a kernel: the fd checks against a fake /proc, the errors of the backends
 * that cannot import, DmaBuffer without a CPU view, and Controller.mapDmaBuf() against the fake
 * controller (fake-nvme.ts) over a fake exporter's memory (FakeBackend.createDmaBuf): data moved
 * by PRPs to and from imported pages, the deferred release, and revocation (FakeBackend.revoke()
 * plays the disnvm module's move_notify: controller disabled, bus mastering cleared).
 * The real import is test/hw-dmabuf/ (6.12 guest, udmabuf, an IOMMU).
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dmaBufRange, dmaBufUnsupported, inspectDmaBuf } from "../../lib/backends/dmabuf.ts";
import { SysfsBackend } from "../../lib/backends/sysfs.ts";
import { VfioBackend } from "../../lib/backends/vfio.ts";
import { DmaBuffer, deferredCount } from "../../lib/dma.ts";
import { ClosedError, ControllerFatalError, DmaBufRevokedError, InvalidArgumentError, NoCpuViewError, UnsupportedError } from "../../lib/errors.ts";
import { STATUS_ABORTED_BY_HOST } from "../../lib/io.ts";
import { NVM_READ, NVM_WRITE } from "../../lib/spec/commands.ts";
import { FakeBackend, type FakeDmaBuf } from "./fake-backend.ts";
import { FakeNvme } from "./fake-nvme.ts";

const dir = mkdtempSync(join(tmpdir(), "libnvm-dmabuf-"));
process.env.LIBNVM_LOCK_DIR = join(dir, "lock");
mkdirSync(process.env.LIBNVM_LOCK_DIR, { mode: 0o700 });
const { Controller } = await import("../../lib/controller.ts");
const { Namespace } = await import("../../lib/namespace.ts");
const { exportBuffer } = await import("../../lib/worker.ts");
type Controller = import("../../lib/controller.ts").Controller;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      f();
    } catch {
      // a test's controller may already be closed
    }
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(2);
  }
}
function track<T>(p: Promise<T>): { state: "pending" | "fulfilled" | "rejected"; error?: unknown } {
  const t: { state: "pending" | "fulfilled" | "rejected"; error?: unknown } = { state: "pending" };
  p.then(
    () => (t.state = "fulfilled"),
    (e: unknown) => Object.assign(t, { state: "rejected", error: e }),
  );
  return t;
}
function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("did not throw");
}

/** A fake controller with namespace 1 (2048 x 512-byte blocks), opened; and a fake dma-buf. */
function setup(bufBytes = 64 * 1024, opts: { timeoutMs?: number } = {}): { f: FakeNvme; c: Controller; b: FakeDmaBuf } {
  const f = new FakeNvme().install();
  cleanups.push(() => f.uninstall());
  const c = Controller.openBackend(f.backend, { handleSignals: false, timeoutMs: opts.timeoutMs ?? 2000, abortGraceMs: 200 });
  cleanups.push(() => c.close());
  return { f, c, b: f.backend.createDmaBuf(bufBytes, "fake-gpu") };
}

function pattern(bytes: Uint8Array, seed: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + seed + (i >> 9)) & 0xff;
}

describe("what an fd is (/proc/self/fdinfo)", () => {
  const proc = join(dir, "proc");
  mkdirSync(join(proc, "fdinfo"), { recursive: true });
  mkdirSync(join(proc, "fd"), { recursive: true });
  writeFileSync(join(proc, "fdinfo", "7"), "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nsize:\t1048576\ncount:\t2\nexp_name:\tudmabuf\n");
  writeFileSync(join(proc, "fdinfo", "8"), "pos:\t0\nflags:\t02000002\nmnt_id:\t1\nino:\t9\n");
  symlinkSync("/memfd:scratch (deleted)", join(proc, "fd", "8"));

  test("a dma-buf: its size and exporter", () => {
    expect(inspectDmaBuf(7, proc)).toEqual({ size: 1 << 20, exporter: "udmabuf" });
  });

  test("an fd that is not open, and one that is not a dma-buf, each say so", () => {
    const closed = thrown(() => inspectDmaBuf(9, proc));
    expect(closed).toBeInstanceOf(InvalidArgumentError);
    expect((closed as Error).message).toContain("fd 9 is not open in this process");
    const memfd = thrown(() => inspectDmaBuf(8, proc));
    expect(memfd).toBeInstanceOf(InvalidArgumentError);
    expect((memfd as Error).message).toContain("fd 8 is not a dma-buf (it is /memfd:scratch (deleted))");
    expect((memfd as Error).message).toContain("/dev/udmabuf");
  });

  test("ranges: inside the buffer, to its end by default, past it refused, at most the largest import", () => {
    const file = { size: 1 << 20, exporter: "udmabuf" };
    expect(dmaBufRange(7, file, 0, undefined, 1 << 30)).toBe(1 << 20);
    expect(dmaBufRange(7, file, 4096, undefined, 1 << 30)).toBe((1 << 20) - 4096);
    expect(dmaBufRange(7, file, 8192, 4096, 1 << 30)).toBe(4096);
    expect(() => dmaBufRange(7, file, 1 << 20, undefined, 1 << 30)).toThrow(/offset 1048576 is past the end of dma-buf fd 7 \(1048576 bytes, exporter udmabuf\)/);
    expect(() => dmaBufRange(7, file, 4096, 1 << 20, 1 << 30)).toThrow(/runs past the end .* import at most 1044480 bytes there/);
    expect(() => dmaBufRange(7, file, 0, undefined, 65536)).toThrow(/exceed the largest import \(65536 bytes\)/);
    expect(() => dmaBufRange(7, file, 1 << 20, 4096, 1 << 30)).toThrow(InvalidArgumentError);
  });
});

describe("backends without the module say why, and name the way that works", () => {
  test("VFIO: type1 cannot import another driver's dma-buf; the disnvm module can", () => {
    const e = thrown(() => VfioBackend.prototype.importDmaBuf.call({} as VfioBackend, 5, 0));
    expect(e).toBeInstanceOf(UnsupportedError);
    expect((e as Error).message).toContain("VFIO's type1 IOMMU maps only this process's own memory");
    expect((e as Error).message).toContain("cannot import a dma-buf another driver exported");
    expect((e as Error).message).toContain("disnvm kernel module");
    expect(dmaBufUnsupported("vfio").message).toBe((e as Error).message);
  });

  test("sysfs: physical addresses of its own pages only; the disnvm module", () => {
    const e = thrown(() => SysfsBackend.prototype.importDmaBuf.call({} as SysfsBackend, 5, 0));
    expect(e).toBeInstanceOf(UnsupportedError);
    expect((e as Error).message).toContain("raw sysfs backend");
    expect((e as Error).message).toContain("/dev/disnvmN");
  });
});

describe("DmaBuffer over an import: bus addresses, no CPU view", () => {
  test("bytes, u32 and pointer throw NoCpuViewError saying how to copy; busAddress, iova, region work; free gives the import back", () => {
    const be = new FakeBackend();
    cleanups.push(() => be.close());
    const b = be.createDmaBuf(8 * 4096, "fake-gpu");
    const buf = DmaBuffer.importDmaBuf(be, b.fd, 4096, 4 * 4096);
    expect(buf.size).toBe(4 * 4096);
    expect(buf.dmaBuf).toMatchObject({ fd: b.fd, offset: 4096, bufferSize: 8 * 4096, exporter: "fake-gpu" });
    for (const view of ["bytes", "u32", "pointer"] as const) {
      const e = thrown(() => buf[view]);
      expect(e).toBeInstanceOf(NoCpuViewError);
      expect((e as Error).message).toContain(`${view}: this buffer is device memory imported from dma-buf fd ${b.fd} (exporter fake-gpu)`);
      expect((e as Error).message).toContain("allocBuffer()");
      expect((e as Error).message).toContain("exporter's own API");
    }
    const iova = buf.iova;
    expect(iova.length).toBe(8);
    expect(buf.busAddress(4096 + 12)).toBe(iova[2]! + iova[3]! * 2 ** 32 + 12);
    const r = buf.region(4096 + 512, 8192);
    expect(r.busAddress(0)).toBe(buf.busAddress(4096 + 512));
    expect(r.dmaBuf?.fd).toBe(b.fd);
    expect(() => r.bytes).toThrow(NoCpuViewError);
    expect(buf.freed).toBe(false);
    buf.free();
    expect(buf.freed).toBe(true);
    expect(() => buf.iova).toThrow(ClosedError);
    expect(be.imports.size).toBe(0);
    expect(be.events).toEqual(["import", "unimport"]);
    // The exporter's memory is untouched by all of this.
    expect(b.bytes.length).toBe(8 * 4096);
  });

  test("a Worker cannot be given an import: exportBuffer says why", () => {
    const be = new FakeBackend();
    cleanups.push(() => be.close());
    const b = be.createDmaBuf(4096);
    const buf = DmaBuffer.importDmaBuf(be, b.fd, 0);
    const e = thrown(() => exportBuffer(buf));
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect((e as Error).message).toContain(`imported from dma-buf fd ${b.fd}`);
    expect((e as Error).message).toContain("from the owner thread");
  });
});

describe("Controller.mapDmaBuf", () => {
  test("bad arguments are InvalidArgumentErrors naming the value, and nothing is imported", () => {
    const { f, c, b } = setup();
    const cases: [() => unknown, RegExp][] = [
      [() => c.mapDmaBuf(-1), /dma-buf fd -1: must be a file descriptor of this process \(an integer >= 0\)/],
      [() => c.mapDmaBuf(1.5), /dma-buf fd 1.5/],
      [() => c.mapDmaBuf(Number.NaN), /dma-buf fd NaN/],
      [() => c.mapDmaBuf(b.fd, { offset: 100 }), /dma-buf offset 100: must be a non-negative multiple of 4096/],
      [() => c.mapDmaBuf(b.fd, { offset: -4096 }), /dma-buf offset -4096/],
      [() => c.mapDmaBuf(b.fd, { size: 0 }), /dma-buf size 0: must be a positive multiple of 4096/],
      [() => c.mapDmaBuf(b.fd, { size: 4095 }), /dma-buf size 4095/],
      [() => c.mapDmaBuf(b.fd, { offset: b.size }), /past the end of dma-buf fd/],
      [() => c.mapDmaBuf(b.fd, { offset: 4096, size: b.size }), /runs past the end of dma-buf fd/],
      [() => c.mapDmaBuf(b.fd + 1), /not open in this process/],
    ];
    for (const [call, msg] of cases) {
      const e = thrown(call);
      expect(e).toBeInstanceOf(InvalidArgumentError);
      expect((e as Error).message).toMatch(msg);
    }
    expect(f.backend.imports.size).toBe(0);
  });

  test("write from imported pages and read back through a plain buffer; read into imported pages and see them in the exporter's memory", async () => {
    const { f, c, b } = setup(64 * 1024);
    const ns = new Namespace(c, 1);
    pattern(b.bytes, 7);
    const src = c.mapDmaBuf(b.fd);
    expect(src.size).toBe(64 * 1024);
    await ns.write(100, 128, src);
    using back = c.allocBuffer(64 * 1024);
    await ns.read(100, 128, back);
    expect(Buffer.compare(back.bytes, b.bytes)).toBe(0);
    // The other way: the controller writes the exporter's memory.
    const b2 = f.backend.createDmaBuf(64 * 1024);
    const dst = c.mapDmaBuf(b2.fd);
    await ns.read(100, 128, dst);
    expect(Buffer.compare(b2.bytes, b.bytes)).toBe(0);
    // A region at an odd page offset: PRP1 inside page 3, then a PRP list over the imported pages.
    b2.bytes.fill(0);
    await ns.read(0, 24, dst.region(3 * 4096 + 512, 24 * 512));
    expect(Buffer.compare(b2.bytes.subarray(3 * 4096 + 512, 3 * 4096 + 512 + 24 * 512), f.media.get(1)!.subarray(0, 24 * 512))).toBe(0);
    expect(b2.bytes[3 * 4096 + 511]).toBe(0);
    expect(b2.bytes[3 * 4096 + 512 + 24 * 512]).toBe(0);
    // An import of part of a buffer, at a page offset.
    const part = c.mapDmaBuf(b.fd, { offset: 5 * 4096, size: 2 * 4096 });
    await ns.write(400, 16, part);
    expect(Buffer.compare(f.media.get(1)!.subarray(400 * 512, 416 * 512), b.bytes.subarray(5 * 4096, 7 * 4096))).toBe(0);
    expect(f.dmaViolations).toEqual([]);
    for (const x of [src, dst, part]) x.free();
    expect(f.backend.imports.size).toBe(0);
  });

  test("free() while a command may still reach an import waits for the command; close() gives every import back", async () => {
    const { f, c, b } = setup(8192);
    const ns = new Namespace(c, 1);
    const buf = c.mapDmaBuf(b.fd);
    f.hold = (x) => x.sqid !== 0 && x.opcode === NVM_READ;
    const p = track(ns.read(0, 16, buf));
    await waitFor(() => f.held.length === 1);
    buf.free();
    expect(buf.freed).toBe(true);
    expect(f.backend.imports.size).toBe(1); // still mapped: the read may land
    expect(deferredCount(f.backend)).toBe(1);
    f.media.get(1)!.fill(0x42, 0, 8192);
    f.hold = () => false;
    f.completeHeld();
    await waitFor(() => p.state !== "pending");
    expect(p.state).toBe("fulfilled");
    expect(b.bytes[8191]).toBe(0x42);
    expect(f.backend.imports.size).toBe(0);
    expect(f.dmaViolations).toEqual([]);
    c.mapDmaBuf(b.fd);
    c.mapDmaBuf(b.fd, { size: 4096 });
    expect(f.backend.imports.size).toBe(2);
    c.close();
    expect(f.backend.imports.size).toBe(0);
  });

  test("revoked by its exporter: commands on it fail with DmaBufRevokedError, others with the reset's error; it refuses new ones; the controller works again", async () => {
    const { f, c, b } = setup(16 * 1024);
    const ns = new Namespace(c, 1);
    const imported = c.mapDmaBuf(b.fd);
    using plain = c.allocBuffer(4096);
    f.hold = (x) => x.sqid !== 0 && x.opcode === NVM_READ;
    const onImport = track(ns.read(0, 32, imported));
    const onRegion = track(ns.read(64, 8, imported.region(8192, 4096)));
    const onPlain = track(ns.read(32, 8, plain));
    await waitFor(() => f.held.length === 3);
    const resets = c.resets;
    f.backend.revoke([...f.backend.imports][0]!);
    await waitFor(() => onImport.state !== "pending" && onRegion.state !== "pending" && onPlain.state !== "pending");
    expect(onImport.error).toBeInstanceOf(DmaBufRevokedError);
    expect((onImport.error as Error).message).toContain(`dma-buf fd ${b.fd} was revoked`);
    expect(onRegion.error).toBeInstanceOf(DmaBufRevokedError);
    expect(onPlain.error).toBeInstanceOf(ControllerFatalError);
    expect((onPlain.error as Error).message).toContain("because the exporter of an imported dma-buf revoked it");
    expect(c.resets).toBe(resets + 1);
    // The revoked import was given back before bus mastering was set again.
    const ev = f.backend.events;
    expect(ev.indexOf("take-revoked")).toBeGreaterThan(ev.indexOf("revoke"));
    expect(ev.lastIndexOf("busMaster:true")).toBeGreaterThan(ev.indexOf("take-revoked"));
    expect(f.backend.busMaster).toBe(true);
    // Refused from now on, asynchronously, synchronously and at the low level.
    expect(imported.revokedError).toBeInstanceOf(DmaBufRevokedError);
    expect(await ns.read(0, 8, imported).catch((e: unknown) => e)).toBeInstanceOf(DmaBufRevokedError);
    const q = c.createIoQueue({ entries: 4 });
    expect(() => ns.readSync(q, 0, 8, imported)).toThrow(DmaBufRevokedError);
    const cid = q.acquire();
    expect(() => q.rw(cid, NVM_WRITE, 1, 0, 8, imported, 0, 4096)).toThrow(DmaBufRevokedError);
    q.release(cid);
    // Everything else works again.
    f.hold = () => false;
    plain.bytes.fill(0x77);
    await ns.write(10, 8, plain);
    plain.bytes.fill(0);
    await ns.read(10, 8, plain);
    expect(plain.bytes[4095]).toBe(0x77);
    imported.free();
    expect(f.backend.imports.size).toBe(0);
    expect(f.dmaViolations).toEqual([]);
  });

  test("revoked under a synchronous command and a low-level one: readSync throws DmaBufRevokedError, onComplete gets Command Aborted By Host", async () => {
    const { f, c, b } = setup(8192);
    const ns = new Namespace(c, 1);
    const imported = c.mapDmaBuf(b.fd);
    const q = c.createIoQueue({ entries: 4 });
    const statuses: number[] = [];
    q.onComplete = (_cid, status) => statuses.push(status);
    f.hold = (x) => x.sqid !== 0 && x.opcode === NVM_READ;
    const cid = q.acquire();
    q.rw(cid, NVM_READ, 1, 0, 8, imported, 4096, 4096);
    q.submit();
    await waitFor(() => f.held.length === 1);
    // The module stops the controller; the next CSTS read finds it disabled.
    f.backend.revoke([...f.backend.imports][0]!);
    const t0 = performance.now();
    const e = thrown(() => ns.readSync(q, 0, 8, imported));
    // Found by the spin's periodic look at CSTS, not by the command's 2 s deadline.
    expect(performance.now() - t0).toBeLessThan(1500);
    expect(e).toBeInstanceOf(DmaBufRevokedError);
    expect(statuses).toEqual([STATUS_ABORTED_BY_HOST]);
    expect(c.resets).toBe(1);
    expect(f.dmaViolations).toEqual([]);
  });

  test("close() after a revocation nobody noticed yet: no admin command waits for a disabled controller; commands end with DmaBufRevokedError", async () => {
    const { f, c, b } = setup(8192, { timeoutMs: 5000 });
    const ns = new Namespace(c, 1);
    const imported = c.mapDmaBuf(b.fd);
    f.hold = (x) => x.sqid !== 0 && x.opcode === NVM_READ;
    const p = track(ns.read(0, 16, imported));
    await waitFor(() => f.held.length === 1);
    // Revoked, and closed at once: before the poller could see it.
    f.backend.revoke([...f.backend.imports][0]!);
    const t0 = performance.now();
    c.close();
    expect(performance.now() - t0).toBeLessThan(1000);
    await waitFor(() => p.state !== "pending");
    expect(p.error).toBeInstanceOf(DmaBufRevokedError);
    expect(f.backend.imports.size).toBe(0);
    expect(f.dmaViolations).toEqual([]);
  });
});
