/**
 * createGpuQueues() end to end without a GPU, against the whole fake controller of fake-nvme.ts
 * (queues created through its admin path, data moved by each command's PRPs, every DMA to memory
 * no live mapping backs recorded):
 *   - host mode (device "cpu"): OS threads run the queue core on the controller's I/O queues;
 *   - GPU mode (device "cuda") on the mock libcuda, whose "kernels" run the same core on host
 *     threads and fail a launch whose job names an address no GPU could reach.
 * Round trips of request lists (shared and cooperative mode), bench runs with pattern writes and
 * verified reads, statuses the controller reports, a completion that never comes (bounded, the
 * queue deleted and created again, the buffer not freed before that), the controller's reset and
 * close during a run, a stop request, and refused options.
 *
 * The fake controller answers doorbells the executors write straight into its BAR0 when pumped:
 * a timer pumps it while a run is awaited.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClosedError, CudaError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError } from "../../lib/errors.ts";
import { deferredCount } from "../../lib/dma.ts";
import { checkPattern, createGpuQueues, setKernelImagePath, type GpuQueues } from "../../lib/gpu/index.ts";
import { cuda } from "../../lib/cuda/index.ts";
import { mock, useMockDriver } from "../cuda/mock.ts";
import { FakeNvme, type Fetched } from "./fake-nvme.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-gpu-queues-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../lib/controller.ts");
const { Namespace } = await import("../../lib/namespace.ts");
type Controller = import("../../lib/controller.ts").Controller;

const LBA = 512;
const BLOCKS = 8192;
const OPC_WRITE = 0x01;
/** Media and Data Integrity Errors / Unrecovered Read Error (81h). */
const ST_UNRECOVERED = 0x81 | (2 << 8);

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      f();
    } catch {
      // a test's set or controller may already be closed
    }
  }
});

// A kernel image the mock accepts (fatbin magic): the real one needs nvcc, which unit tests do not.
const imageDir = mkdtempSync(join(tmpdir(), "libnvm-kernels-"));
const image = join(imageDir, "nvm_queue.fatbin");
writeFileSync(image, new Uint8Array([0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0]));

beforeAll(() => {
  useMockDriver();
  setKernelImagePath(image);
});
afterAll(() => {
  setKernelImagePath(undefined);
  cuda.close();
  mock.reset();
  rmSync(imageDir, { recursive: true, force: true });
  rmSync(lockDir, { recursive: true, force: true });
});

interface Rig {
  f: FakeNvme;
  ctrl: Controller;
  ns: InstanceType<typeof Namespace>;
}

function rig(opts: { timeoutMs?: number } = {}): Rig {
  const f = new FakeNvme({ namespaces: [{ nsid: 1, blocks: BLOCKS, lbads: 9 }], mdts: 7 }).install();
  cleanups.push(() => f.uninstall());
  const ctrl = Controller.openBackend(f.backend, { handleSignals: false, timeoutMs: opts.timeoutMs ?? 2000, abortGraceMs: 200 });
  cleanups.push(() => ctrl.close());
  // The executors write doorbells into the fake BAR0's memory: serve them while tests await.
  const pump = setInterval(() => f.pump(), 0);
  cleanups.push(() => clearInterval(pump));
  return { f, ctrl, ns: new Namespace(ctrl, 1) };
}

function set(r: Rig, opts: Parameters<typeof createGpuQueues>[1]): GpuQueues {
  const gq = createGpuQueues(r.ctrl, opts);
  cleanups.push(() => gq.close());
  return gq;
}

function requests(n: number): { lba: number; blocks: number; offset: number }[] {
  // 1 to 20 blocks (up to 10 KiB: 1, 2 or 3 pages, or a PRP list), at offsets inside pages.
  let offset = 0;
  return Array.from({ length: n }, (_, i) => {
    const blocks = 1 + ((i * 7) % 20);
    const r = { lba: i * 24, blocks, offset: offset + (i % 3) * 4 };
    offset += 12288;
    return r;
  });
}

async function roundTrip(r: Rig, gq: GpuQueues, threads: number): Promise<void> {
  const reqs = requests(60);
  const out = r.ctrl.allocBuffer(60 * 12288);
  const back = r.ctrl.allocBuffer(60 * 12288);
  crypto.getRandomValues(out.bytes.subarray(0, 65536));
  for (let o = 65536; o < out.size; o += 65536) out.bytes.copyWithin(o, 0, Math.min(65536, out.size - o));
  const w = await gq.writeBlocks(r.ns, reqs, out, { threads });
  expect(w.failures.map((x) => x.error.message)).toEqual([]);
  expect(w.ok).toBe(60);
  // What the controller stored is what each request pointed at.
  const media = r.f.media.get(1)!;
  for (const q of reqs) expect(Buffer.compare(media.subarray(q.lba * LBA, (q.lba + q.blocks) * LBA), out.bytes.subarray(q.offset, q.offset + q.blocks * LBA))).toBe(0);
  const rd = await gq.readBlocks(r.ns, reqs, back, { threads });
  expect(rd.ok).toBe(60);
  for (const q of reqs) expect(Buffer.compare(back.bytes.subarray(q.offset, q.offset + q.blocks * LBA), out.bytes.subarray(q.offset, q.offset + q.blocks * LBA))).toBe(0);
  expect(r.f.dmaViolations).toEqual([]);
  expect(gq.running).toBe(false);
}

for (const device of ["cpu", "cuda"] as const) {
  describe(`${device === "cpu" ? "host mode (OS threads)" : "GPU mode (mock libcuda)"}`, () => {
    beforeAll(() => {
      if (device === "cuda") mock.setIoMemory(true);
    });

    test("write then read back 60 requests of 1 to 20 blocks, shared mode, 8-entry queues (rings wrap, PRP lists)", async () => {
      const r = rig();
      const gq = set(r, { device, count: 2, entries: 8 });
      await roundTrip(r, gq, 6);
      // Twice: the second run starts from the ring state the first left (tails, heads, phases).
      await roundTrip(r, gq, 3);
    });

    test("the same in cooperative mode: one block per queue, lanes write an SQE each, one doorbell per round", async () => {
      const r = rig();
      const gq = set(r, { device, count: 3, entries: 8, mode: "coop" });
      await roundTrip(r, gq, 1);
    });

    test("bench: sequential pattern writes, then random reads each checked block by block", async () => {
      const r = rig();
      const gq = set(r, { device, count: 2, entries: 16 });
      const buf = r.ctrl.allocBuffer(8 * 2 * 4096);
      const fill = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 8, depth: 2, readPct: 0, pattern: "seq", ios: BLOCKS / 8, seed: 77 });
      expect([fill.ios, fill.writes, fill.errors, fill.timeouts]).toEqual([BLOCKS / 8, BLOCKS / 8, 0, 0]);
      // The controller's media holds every block's pattern: the writes went where they said.
      expect(checkPattern(new Uint32Array(r.f.media.get(1)!.buffer, 0, (BLOCKS * LBA) / 4), 0, BLOCKS, LBA, 77)).toBe(-1);
      const rd = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 8, depth: 2, ios: 1500, verify: true, seed: 77 });
      expect([rd.ios, rd.reads, rd.errors, rd.verifyErrors, rd.timeouts]).toEqual([1500, 1500, 0, 0, 0]);
      expect(rd.brokenQueues).toEqual([]);
      expect(rd.latency.percentilesUs.p50).toBeGreaterThan(0);
      expect(rd.histogram.reduce((a, b) => a + b, 0)).toBe(1500);
      expect(rd.doorbells).toBeGreaterThan(0);
      expect(rd.doorbells).toBeLessThanOrEqual(1500);
      // A wrong seed: every block read is reported.
      const wrong = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 2, ios: 20, verify: true, seed: 78 });
      expect(wrong.verifyErrors).toBe(20 * 8);
      expect(wrong.firstError).toMatch(/did not read back its pattern/);
    });

    test("statuses the controller reports reach each request as a typed error", async () => {
      const r = rig();
      const gq = set(r, { device, count: 1, entries: 8 });
      const reqs = requests(20);
      const buf = r.ctrl.allocBuffer(20 * 12288);
      let held = 0;
      r.f.hold = (c: Fetched) => c.sqid !== 0 && c.opcode === OPC_WRITE && (c.sqe[10]! === 3 * 24 || c.sqe[10]! === 9 * 24) && ++held > 0;
      const run = gq.writeBlocks(r.ns, reqs, buf, { threads: 4 });
      await waitFor(() => r.f.held.length === 2);
      r.f.completeHeld(() => true, ST_UNRECOVERED);
      const w = await run;
      expect(w.ok).toBe(18);
      expect(w.failures.map((x) => x.index)).toEqual([3, 9]);
      for (const x of w.failures) {
        expect(x.error).toBeInstanceOf(NvmeStatusError);
        expect(x.error.message).toMatch(/Unrecovered Read Error/);
      }
      expect(w.statuses[3]).toBe(ST_UNRECOVERED);
    });

    test("a completion that never comes: the wait is bounded, the queue is deleted and created again, the buffer is freed only after", async () => {
      const r = rig();
      const gq = set(r, { device, count: 2, entries: 8, timeoutMs: 300 });
      const before = [...gq.queues];
      const reqs = requests(30);
      const buf = r.ctrl.allocBuffer(30 * 12288);
      r.f.hold = (c: Fetched) => c.sqid !== 0 && c.sqe[10]! === 5 * 24;
      const mapping = [...r.f.backend.live].find((m) => Number(m.vaddr) === Number(buf.pointer))!;
      expect(mapping).toBeDefined();
      const t0 = performance.now();
      const run = gq.readBlocks(r.ns, reqs, buf, { threads: 4 });
      await waitFor(() => r.f.held.length === 1);
      const stuckQid = r.f.held[0]!.sqid;
      // Freed while the controller may still write it: the memory must stay until the command ended.
      buf.free();
      expect(deferredCount(r.f.backend)).toBe(1);
      expect(r.f.backend.live.has(mapping)).toBe(true);
      const res = await run;
      expect(performance.now() - t0).toBeLessThan(5000);
      const timeout = res.failures.find((x) => x.index === 5);
      expect(timeout?.error).toBeInstanceOf(NvmeTimeoutError);
      expect(res.statuses[5]).toBe(0x10000);
      expect(res.brokenQueues).toEqual([{ qid: stuckQid, reason: "wait", cid: expect.any(Number) }]);
      expect(res.recovered).toEqual([stuckQid]);
      // Deleting the queue ended the held command (SQ deletion status), then the buffer went back.
      expect(r.f.held).toEqual([]);
      expect(deferredCount(r.f.backend)).toBe(0);
      expect(r.f.backend.live.has(mapping)).toBe(false);
      expect(r.f.dmaViolations).toEqual([]);
      // The set goes on with a fresh queue in place of the broken one.
      const replaced = gq.queues.filter((q, i) => q !== before[i]);
      expect(replaced.map((q) => [q.closed, q.qid])).toEqual([[false, stuckQid]]);
      expect(before.find((q) => q.qid === stuckQid)!.closed).toBe(true);
      r.f.hold = () => false;
      const buf2 = r.ctrl.allocBuffer(30 * 12288);
      expect((await gq.readBlocks(r.ns, reqs, buf2, { threads: 4 })).ok).toBe(30);
    });

    test("the controller's reset during a run stops the executors first; the next run starts on the re-created queues", async () => {
      const r = rig();
      const gq = set(r, { device, count: 2, entries: 16 });
      const buf = r.ctrl.allocBuffer(4 * 4096);
      const fill = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, readPct: 0, pattern: "seq", ios: BLOCKS / 8, seed: 5 });
      expect(fill.errors).toBe(0);
      const run = gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, seconds: 30, verify: true, seed: 5 });
      await waitFor(() => r.f.fetched.length > BLOCKS / 8 + 200);
      // The executors stop before the disable, not after it (a controller being disabled gets
      // no doorbell write; QEMU 7.2's crashes when one races with CC.EN = 0).
      const disablesAtStop: number[] = [];
      const stop = gq.stop.bind(gq);
      gq.stop = (why, ms) => {
        disablesAtStop.push(r.f.disables);
        return stop(why, ms);
      };
      const disables = r.f.disables;
      const t0 = performance.now();
      r.ctrl.reset();
      const res = await run;
      expect(performance.now() - t0).toBeLessThan(5000);
      expect(r.f.disables).toBe(disables + 1);
      expect(disablesAtStop[0]).toBe(disables);
      expect(res.firstError).toMatch(/reset/);
      expect(res.verifyErrors).toBe(0);
      expect(r.f.dmaViolations).toEqual([]);
      // A stale ring state here would make the re-created queues fetch old entries again.
      const fetched = r.f.fetched.length;
      const again = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, ios: 400, verify: true, seed: 5 });
      expect([again.ios, again.errors, again.verifyErrors, again.timeouts]).toEqual([400, 0, 0, 0]);
      expect(r.f.fetched.length - fetched).toBe(400);
      // A reset between runs (the queues not lent): the next run must start from the emptied
      // rings, not from the ring state the last run handed back before the reset.
      r.ctrl.reset();
      const fetched2 = r.f.fetched.length;
      const third = await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, ios: 300, verify: true, seed: 5 });
      expect([third.ios, third.errors, third.verifyErrors, third.timeouts]).toEqual([300, 0, 0, 0]);
      expect(r.f.fetched.length - fetched2).toBe(300);
    });

    test("the controller's close during a run stops the executors before the rings are freed", async () => {
      const r = rig();
      const gq = set(r, { device, count: 1, entries: 8 });
      const buf = r.ctrl.allocBuffer(2 * 4096);
      const run = gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 2, seconds: 30 });
      await waitFor(() => r.f.fetched.length > 100);
      r.ctrl.close();
      const res = await run;
      expect(res.firstError).toMatch(/close\(\)/);
      expect(() => gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1, ios: 1 })).toThrow(ClosedError);
    });

    test("requestStop() ends a run at once; the queues it stopped are deleted and created again", async () => {
      const r = rig();
      const gq = set(r, { device, count: 2, entries: 8 });
      const buf = r.ctrl.allocBuffer(4 * 4096);
      const run = gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, seconds: 30 });
      await waitFor(() => r.f.fetched.length > 50);
      const t0 = performance.now();
      gq.requestStop();
      const res = await run;
      expect(performance.now() - t0).toBeLessThan(3000);
      expect(res.brokenQueues.every((b) => b.reason === "stop")).toBe(true);
      expect(res.ios).toBeGreaterThan(0);
      expect((await gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 4, ios: 100 })).ios).toBe(100);
    });

    test("refused before anything runs: bad sizes, a small buffer, a second run, a closed set", async () => {
      const r = rig();
      expect(() => createGpuQueues(r.ctrl, { device, entries: 48 })).toThrow(/power of two/);
      expect(() => createGpuQueues(r.ctrl, { device, entries: 512 })).toThrow(/CAP.MQES/);
      const gq = set(r, { device, count: 1, entries: 8 });
      const buf = r.ctrl.allocBuffer(4096);
      await expect(gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 2, ios: 10 })).rejects.toThrow(/need 8192/);
      await expect(gq.bench({ ns: r.ns, buffer: buf, bs: 1000, threads: 1, ios: 10 })).rejects.toThrow(/multiple of namespace 1's 512-byte blocks/);
      await expect(gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1 })).rejects.toThrow(/seconds or ios/);
      await expect(gq.readBlocks(r.ns, [{ lba: BLOCKS - 1, blocks: 2, offset: 0 }], buf)).rejects.toThrow(InvalidArgumentError);
      const first = gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1, ios: 50 });
      await expect(gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1, ios: 1 })).rejects.toThrow(/one run at a time/);
      expect((await first).ios).toBe(50);
      gq.close();
      await expect(gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1, ios: 1 })).rejects.toThrow(ClosedError);
    });
  });
}

describe("GPU mode specifics (mock libcuda)", () => {
  test("doorbells are BAR pages registered as I/O memory; the driver's refusal names the next step", () => {
    const r = rig();
    mock.setIoMemory(false);
    let e: unknown;
    try {
      createGpuQueues(r.ctrl, { device: "cuda", count: 1, entries: 8 });
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(CudaError);
    expect((e as CudaError).resultName).toBe("CUDA_ERROR_NOT_PERMITTED");
    expect((e as Error).message).toMatch(/run as root.*device: "cpu"/);
    // Nothing of the half-built set stays: its queue was deleted again, its registrations released.
    expect(mock.liveRegistrations()).toBe(0);
    mock.setIoMemory(true);
    const gq = set(r, { device: "cuda", count: 2, entries: 8 });
    const bar = Number(r.f.backend.bar0);
    const reg = mock.registration(bar + 4096);
    expect(reg?.flags).toBe(0x04 | 0x02); // IOMEMORY | DEVICEMAP
    expect(gq.queues).toHaveLength(2);
  });

  test("kernel launches: shared mode gets ceil(threads / 128) blocks, coop one block of `lanes` threads per queue", async () => {
    const r = rig();
    mock.setIoMemory(true);
    const buf = r.ctrl.allocBuffer(300 * 4096);
    const shared = set(r, { device: "cuda", count: 1, entries: 16 });
    await shared.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 300, ios: 300 });
    expect(mock.lastLaunch()).toMatchObject({ grid: 3, block: 128, shared: 0, kind: 1 });
    shared.close();
    const coop = set(r, { device: "cuda", count: 2, entries: 16, mode: "coop" });
    await coop.bench({ ns: r.ns, buffer: buf, bs: 4096, lanes: 15, ios: 300 });
    expect(mock.lastLaunch()).toMatchObject({ grid: 2, block: 15, kind: 2 });
  });

  test("without a built kernel image the error says how to build it", () => {
    const r = rig();
    mock.setIoMemory(true);
    setKernelImagePath(join(imageDir, "missing.fatbin"));
    try {
      const gq = set(r, { device: "cuda", count: 1, entries: 8 });
      const buf = r.ctrl.allocBuffer(4096);
      return expect(gq.bench({ ns: r.ns, buffer: buf, bs: 4096, threads: 1, ios: 1 })).rejects.toThrow(/-DLIBNVM_CUDA=ON.*device: "cpu"/);
    } finally {
      setKernelImagePath(image);
    }
  });
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
