/**
 * The controller never reaches memory the application no longer owns, against a whole fake
 * controller (fake-nvme.ts) that moves data by PRPs and records every DMA to a bus address no
 * live mapping backs (`dmaViolations`). A held command moves its data only when the test
 * completes it: a late DMA, as a real controller's after a timeout.
 *
 * Each test here failed on the code before these guarantees: a timed-out command settled (and
 * its buffer was freed) while the controller could still write it; a reset that could not
 * disable the controller left queues accepting commands; a scratch page was reused after a timed
 * out Identify; a Worker's queue replayed stale SQ entries after the owner's reset.
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { fstatSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { ClosedError, ControllerFatalError, NvmeStatusError, NvmeTimeoutError, UnsupportedError, InvalidArgumentError } from "../../lib/errors.ts";
import { deferredCount } from "../../lib/dma.ts";
import { STATUS_ABORTED_BY_HOST } from "../../lib/io.ts";
import { NVM_READ, NVM_WRITE } from "../../lib/spec/commands.ts";
import { SC_ABORT_REQUESTED } from "../../lib/spec/status.ts";
import { FakeNvme, type FakeNvmeOptions } from "./fake-nvme.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-dma-safety-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../lib/controller.ts");
const { Namespace } = await import("../../lib/namespace.ts");
const { attachIoQueue, exportBuffer, exportIoQueue } = await import("../../lib/worker.ts");
type Controller = InstanceType<typeof Controller>;

const OPC_ABORT = 0x08;
const OPC_IDENTIFY = 0x06;

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      f();
    } catch {
      // a test's controller may already be failed or closed
    }
  }
});
afterAll(() => rmSync(lockDir, { recursive: true, force: true }));

function fake(opts: FakeNvmeOptions = {}): FakeNvme {
  const f = new FakeNvme(opts).install();
  cleanups.push(() => f.uninstall());
  return f;
}

function open(f: FakeNvme, opts: { timeoutMs?: number; abortGraceMs?: number } = {}): Controller {
  const c = Controller.openBackend(f.backend, { handleSignals: false, timeoutMs: opts.timeoutMs ?? 100, abortGraceMs: opts.abortGraceMs ?? 200 });
  cleanups.push(() => c.close());
  return c;
}

interface Tracked<T> {
  state: "pending" | "fulfilled" | "rejected";
  value?: T;
  error?: unknown;
}
function track<T>(p: Promise<T>): Tracked<T> {
  const t: Tracked<T> = { state: "pending" };
  p.then(
    (v) => Object.assign(t, { state: "fulfilled", value: v }),
    (e: unknown) => Object.assign(t, { state: "rejected", error: e }),
  );
  return t;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(2);
  }
}
const isIoRead = (f: { sqid: number; opcode: number }) => f.sqid !== 0 && f.opcode === NVM_READ;
const aborts = (f: FakeNvme) => f.fetched.filter((c) => c.sqid === 0 && c.opcode === OPC_ABORT).length;

describe("a command past its deadline settles only once the controller can no longer reach its buffer", () => {
  test("a read whose Abort has no effect: still pending after the deadline; a buffer freed meanwhile is kept; the late DMA lands in live memory", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100, abortGraceMs: 10_000 });
    const ns = new Namespace(c, 1);
    f.abortEnds = false;
    f.media.get(1)!.fill(0x5a, 0, 4096);
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const frees = f.backend.frees;
    const p = track(ns.read(0, 8, buf));
    await waitFor(() => aborts(f) === 1);
    await sleep(50);
    // Deadline passed, Abort sent and refused: the read may still land, so nothing is settled.
    expect(p.state).toBe("pending");
    buf.free(); // the application gives the buffer up
    expect(() => buf.bytes).toThrow(ClosedError);
    expect(f.backend.frees).toBe(frees);
    expect(deferredCount(f.backend)).toBe(1);
    // The controller finishes the read after all: its DMA lands in memory that is still ours.
    f.hold = () => false;
    expect(f.completeHeld()).toBe(1);
    await waitFor(() => p.state !== "pending");
    expect(p.state).toBe("fulfilled");
    expect(f.dmaViolations).toEqual([]);
    expect(deferredCount(f.backend)).toBe(0);
    expect(f.backend.frees).toBe(frees + 1);
    expect(c.resets).toBe(0);
  });

  test("an Abort that ends the command: NvmeTimeoutError only after the aborted completion, with SC 07h as its cause", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100, abortGraceMs: 10_000 });
    const ns = new Namespace(c, 1);
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const t0 = performance.now();
    const e = await ns.read(0, 8, buf).catch((err: unknown) => err);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(95);
    expect(e).toBeInstanceOf(NvmeTimeoutError);
    expect((e as Error).message).toMatch(/did not complete within 100 ms; it was aborted/);
    expect(((e as Error).cause as NvmeStatusError).sc).toBe(SC_ABORT_REQUESTED);
    expect(aborts(f)).toBe(1);
    expect(f.held.length).toBe(0);
    expect(c.resets).toBe(0);
    // The queue and the buffer are fine: the next read works.
    f.hold = () => false;
    await ns.read(0, 8, buf);
    expect(f.dmaViolations).toEqual([]);
  });

  test("an Abort without effect: after abortGraceMs the controller is reset, the read settles after the disable, the queue works again", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100, abortGraceMs: 200 });
    const ns = new Namespace(c, 1);
    f.abortEnds = false;
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const disables = f.disables;
    const t0 = performance.now();
    const p = track(ns.read(0, 8, buf));
    await sleep(150);
    expect(p.state).toBe("pending");
    buf.free();
    await waitFor(() => p.state !== "pending");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    expect(p.error).toBeInstanceOf(NvmeTimeoutError);
    expect((p.error as Error).message).toContain("failed by a controller reset");
    expect(f.disables).toBe(disables + 1);
    expect(c.resets).toBe(1);
    expect(deferredCount(f.backend)).toBe(0); // released once the controller was disabled
    f.hold = () => false;
    const b2 = c.allocBuffer(4096);
    f.media.get(1)!.fill(0x33, 0, 4096);
    await ns.read(0, 8, b2);
    expect(b2.bytes[4095]).toBe(0x33);
    expect(f.dmaViolations).toEqual([]);
  });

  test("readSync: the same, synchronously (bounded by deadline + grace + reset)", () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100, abortGraceMs: 100 });
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 4 });
    f.abortEnds = false;
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const t0 = performance.now();
    expect(() => ns.readSync(q, 0, 8, buf)).toThrow(/failed by a controller reset/);
    const dt = performance.now() - t0;
    expect(dt).toBeGreaterThanOrEqual(195);
    expect(dt).toBeLessThan(3000);
    expect(c.resets).toBe(1);
    f.hold = () => false;
    ns.readSync(q, 0, 8, buf);
    expect(f.dmaViolations).toEqual([]);
  });

  test("low level: onTimeout at the deadline; onComplete (Command Aborted By Host) only after the reset; the buffer freed in onTimeout is kept until then", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100, abortGraceMs: 150 });
    new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 4 });
    f.abortEnds = false;
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const frees = f.backend.frees;
    const events: string[] = [];
    q.onTimeout = (cid) => {
      events.push(`timeout ${cid}`);
      buf.free();
      events.push(`kept ${f.backend.frees === frees}`);
    };
    q.onComplete = (cid, status) => events.push(`complete ${cid} ${status === STATUS_ABORTED_BY_HOST ? "aborted-by-host" : status}`);
    const cid = q.acquire();
    q.rw(cid, NVM_READ, 1, 0, 8, buf, 0, 4096);
    q.submit();
    const end = performance.now() + 3000;
    while (q.outstanding > 0 && performance.now() < end) {
      q.poll();
      q.checkTimeouts();
      await sleep(5);
    }
    expect(events).toEqual([`timeout ${cid}`, "kept true", `complete ${cid} aborted-by-host`]);
    expect(f.backend.frees).toBe(frees + 1);
    expect(f.dmaViolations).toEqual([]);
  });

  test("an Identify that times out: its scratch page is set aside (its late DMA lands there), the next Identify gets a fresh page", () => {
    const f = fake({ namespaces: [{ nsid: 1, blocks: 2048, lbads: 9 }, { nsid: 2, blocks: 512, lbads: 12 }] });
    const c = open(f, { timeoutMs: 100 });
    let once = true;
    f.hold = (x) => x.sqid === 0 && x.opcode === OPC_IDENTIFY && x.sqe[1] === 1 && once && !(once = false);
    expect(() => c.identifyNamespace(1)).toThrow(NvmeTimeoutError);
    const ns2 = c.identifyNamespace(2);
    expect(ns2.lbaSize).toBe(4096);
    // The late completion of the first Identify writes its page, which nobody uses any more.
    const frees = f.backend.frees;
    expect(f.completeHeld()).toBe(1);
    expect(f.dmaViolations).toEqual([]);
    expect(c.identifyNamespace(2).nsze).toBe(512n);
    expect(f.backend.frees).toBe(frees); // kept until close (the controller is disabled then)
  });
});

describe("a reset that cannot disable the controller", () => {
  /** A controller with one read the fake holds (no completion, no data moved yet). */
  async function readInFlight() {
    const f = fake();
    const c = open(f, { timeoutMs: 5000 });
    const ns = new Namespace(c, 1);
    f.hold = isIoRead;
    const buf = c.allocBuffer(4096);
    const p = track(ns.read(0, 8, buf));
    await waitFor(() => f.held.length === 1);
    return { f, c, ns, buf, p };
  }

  test("device gone (CSTS all ones): commands settle with ControllerFatalError; queues and admin refuse until a reset succeeds", async () => {
    const { f, c, ns, buf, p } = await readInFlight();
    f.gone = true;
    expect(() => c.reset()).toThrow(ControllerFatalError);
    await sleep(1);
    expect(p.error).toBeInstanceOf(ControllerFatalError);
    expect((p.error as Error).message).toMatch(/reset of .* failed/);
    expect(await ns.read(0, 8, buf).catch((e: unknown) => e)).toBeInstanceOf(ControllerFatalError);
    expect(() => c.identifyController()).toThrow(ControllerFatalError);
    expect(() => c.createIoQueue()).toThrow(ControllerFatalError);
  });

  test("stuck enabled: bus mastering is cleared before anything settles; a later reset sets it again and I/O works", async () => {
    const { f, c, ns, buf, p } = await readInFlight();
    f.stuckEnabled = true;
    f.backend.events.length = 0;
    expect(() => c.reset()).toThrow(/bus mastering was cleared/);
    expect(f.backend.busMaster).toBe(false);
    await sleep(1);
    expect(p.error).toBeInstanceOf(ControllerFatalError);
    expect(f.backend.events[0]).toBe("busMaster:false");
    // The controller recovers: the next reset disables it, sets bus mastering again, re-creates the queue.
    f.stuckEnabled = false;
    f.hold = () => false;
    c.reset();
    expect(f.backend.busMaster).toBe(true);
    f.media.get(1)!.fill(0x44, 0, 4096);
    await ns.read(0, 8, buf);
    expect(buf.bytes[0]).toBe(0x44);
    expect(f.dmaViolations).toEqual([]);
  });

  test("stuck enabled and bus mastering cannot be cleared: the DMA memory is abandoned, never freed", async () => {
    const { f, c, ns, buf, p } = await readInFlight();
    f.stuckEnabled = true;
    f.backend.failBusMaster = true;
    expect(() => c.reset()).toThrow(/kept \(never freed\)/);
    await sleep(1);
    expect(p.error).toBeInstanceOf(ControllerFatalError);
    const abandoned = f.backend.abandoned.size;
    expect(abandoned).toBeGreaterThan(0);
    const frees = f.backend.frees;
    buf.free();
    expect(() => c.close()).toThrow(); // the disable fails again, and says so
    expect(f.backend.frees).toBe(frees); // nothing the controller may reach went back
    expect(f.backend.abandoned.size).toBe(abandoned);
  });
});

describe("close() of a controller that cannot be disabled", () => {
  test("bus mastering is cleared before any memory is freed", () => {
    const f = fake();
    const c = open(f, { timeoutMs: 5000 });
    new Namespace(c, 1);
    c.createIoQueue();
    c.allocBuffer(8192);
    f.stuckEnabled = true;
    f.backend.events.length = 0;
    try {
      c.close();
    } catch {
      // the failed disable is reported
    }
    expect(f.backend.events[0]).toBe("busMaster:false");
    expect(f.backend.events.filter((e) => e === "free").length).toBeGreaterThan(3);
    expect(f.backend.live.size).toBe(0);
  });

  test("and when bus mastering cannot be cleared either, nothing is freed", () => {
    const f = fake();
    const c = open(f, { timeoutMs: 5000 });
    c.createIoQueue();
    c.allocBuffer(8192);
    f.stuckEnabled = true;
    f.backend.failBusMaster = true;
    const frees = f.backend.frees;
    expect(() => c.close()).toThrow();
    expect(f.backend.frees).toBe(frees);
    expect(f.backend.abandoned.size).toBeGreaterThanOrEqual(5); // admin SQ/CQ, scratch, I/O SQ/CQ/lists, the buffer
  });
});

describe("namespaces and byte counts the controller would get wrong", () => {
  const formats = [
    { nsid: 1, blocks: 2048, lbads: 9 },
    { nsid: 2, blocks: 512, lbads: 12 },
    { nsid: 3, blocks: 2048, lbads: 9, ms: 8 },
    { nsid: 4, blocks: 2048, lbads: 9, ms: 8, extended: true },
    { nsid: 5, blocks: 2048, lbads: 9, ms: 8, extended: true, dps: 1 },
  ];

  test("metadata (separate or extended) and protection information are refused with UnsupportedError; nothing is sent", async () => {
    const f = fake({ namespaces: formats });
    const c = open(f);
    const q = c.createIoQueue({ entries: 4 });
    const buf = c.allocBuffer(8192);
    for (const nsid of [3, 4, 5]) {
      expect(() => new Namespace(c, nsid)).toThrow(UnsupportedError);
      expect(() => new Namespace(c, nsid)).toThrow(/metadata/);
      const cid = q.acquire();
      expect(() => q.rw(cid, NVM_WRITE, nsid, 0, 16, buf, 0, 8192)).toThrow(UnsupportedError);
      q.release(cid);
      expect(await q.rwAsync(NVM_WRITE, nsid, 0, 16, buf, 0, 8192).catch((e: unknown) => e)).toBeInstanceOf(UnsupportedError);
    }
    expect(() => new Namespace(c, 5)).toThrow(/protection information type 1/);
    expect(f.fetched.filter((x) => x.sqid !== 0).length).toBe(0);
  });

  test("rw(): a byte count that is not blocks x LBA size is refused for each namespace's own LBA size", () => {
    const f = fake({ namespaces: formats });
    const c = open(f);
    new Namespace(c, 1);
    new Namespace(c, 2);
    const q = c.createIoQueue({ entries: 8 });
    const buf = c.allocBuffer(65536);
    for (const [nsid, blocks, bytes] of [
      [1, 16, 4096], // PRP2 would point at a data page read as a PRP list
      [1, 8, 8192], // PRP2 would be 0 for the second page
      [2, 1, 512],
      [2, 2, 4096],
    ] as const) {
      const cid = q.acquire();
      expect(() => q.rw(cid, NVM_READ, nsid, 0, blocks, buf, 0, bytes)).toThrow(InvalidArgumentError);
      expect(() => q.rw(cid, NVM_READ, nsid, 0, blocks, buf, 0, bytes)).toThrow(/pass blocks x LBA size/);
      q.release(cid);
    }
    // Matching counts go through, switching namespaces between commands.
    for (const [nsid, blocks, bytes] of [
      [1, 16, 8192],
      [2, 2, 8192],
      [1, 1, 512],
    ] as const) {
      q.rwSync(NVM_READ, nsid, 0, blocks, buf, 0, bytes);
    }
    expect(f.fetched.filter((x) => x.sqid !== 0).length).toBe(3);
    expect(f.dmaViolations).toEqual([]);
  });
});

test("write({ fua: true }) sets Force Unit Access (CDW12 bit 30) and flush() sends Flush for the namespace", async () => {
  const f = fake();
  const c = open(f);
  const ns = new Namespace(c, 1);
  const buf = c.allocBuffer(4096);
  await ns.write(0, 8, buf);
  await ns.write(8, 8, buf, { fua: true });
  await ns.flush();
  const io = f.fetched.filter((x) => x.sqid !== 0);
  expect(io.map((x) => [x.opcode, (x.sqe[12]! >>> 30) & 1, x.sqe[1]])).toEqual([
    [NVM_WRITE, 0, 1],
    [NVM_WRITE, 1, 1],
    [0x00, 0, 1],
  ]);
});

describe("a queue lent to a Worker across the owner's reset", () => {
  test("a borrower that does not answer in time: its queue is not re-created (no stale entry is fetched again), its commands settle, new ones are refused", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 100 });
    new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    const buf = c.allocBuffer(8 * 4096);
    // In this thread, as a Worker would: the owner's reset cannot get an answer while it waits.
    const w = attachIoQueue(exportIoQueue(c, q));
    cleanups.unshift(() => w.close());
    const wb = w.buffer(exportBuffer(buf));
    f.hold = (x) => x.sqid === q.qid;
    const p = track(w.queue.rwAsync(NVM_WRITE, 1, 100, 8, wb, 0, 4096));
    await waitFor(() => f.held.length === 1);
    c.reset();
    expect(f.hasSq(q.qid)).toBe(false);
    w.queue.poll(); // the borrower's next poll learns it
    await sleep(1);
    expect(p.error).toBeInstanceOf(NvmeTimeoutError);
    expect((p.error as Error).message).toContain("did not re-create this queue");
    expect(await w.queue.rwAsync(NVM_WRITE, 1, 101, 8, wb, 0, 4096).catch((e: unknown) => e)).toBeInstanceOf(NvmeTimeoutError);
    // Whatever it rings now goes nowhere; nothing was fetched twice.
    w.queue.submit();
    const writes = f.fetched.filter((x) => x.sqid === q.qid).map((x) => x.sqe[10]);
    expect(writes).toEqual([100]);
    // The owner's other queues came back.
    const own = new Namespace(c, 1);
    f.hold = () => false;
    await own.read(0, 8, c.allocBuffer(4096));
    w.close();
    c.deleteIoQueue(q);
    expect(f.dmaViolations).toEqual([]);
  });

  test("in a real Worker: the borrower settles and empties its rings before the owner re-creates the queue; nothing is replayed, and I/O goes on", async () => {
    const f = fake();
    const c = open(f, { timeoutMs: 2000 });
    new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    const buf = c.allocBuffer(16 * 4096);
    const pump = setInterval(() => f.pump(), 1);
    cleanups.unshift(() => clearInterval(pump));
    const control = new Int32Array(new SharedArrayBuffer(16));
    const worker = new Worker(join(import.meta.dir, "fixtures", "lease-worker.ts"), {
      workerData: { queue: exportIoQueue(c, q), buf: exportBuffer(buf), control: control.buffer },
    });
    const done = new Promise<{ ok: number; resetFailures: string[]; other: string[]; verified: boolean }>((resolve, reject) => {
      worker.on("message", resolve);
      worker.on("error", reject);
    });
    // Let it write for a while, then hold its writes so some are outstanding when the owner resets.
    await waitFor(() => Atomics.load(control, 0) >= 20, 10_000);
    f.hold = (x) => x.sqid === q.qid;
    await waitFor(() => f.held.length >= 2, 5000);
    c.reset();
    f.hold = () => false;
    expect(f.hasSq(q.qid)).toBe(true);
    Atomics.store(control, 1, 1); // finish: a last verified round trip, then report
    const r = await done;
    await worker.terminate();
    expect(r.resetFailures.length).toBeGreaterThanOrEqual(2);
    for (const m of r.resetFailures) expect(m).toContain("failed by a controller reset");
    expect(r.other).toEqual([]);
    expect(r.ok).toBeGreaterThanOrEqual(20);
    expect(r.verified).toBe(true);
    // Every write carries its own LBA: a stale SQ entry fetched again would show up twice.
    const lbas = f.fetched.filter((x) => x.sqid === q.qid && x.opcode === NVM_WRITE).map((x) => x.sqe[10]);
    expect(new Set(lbas).size).toBe(lbas.length);
    expect(f.dmaViolations).toEqual([]);
  }, 30_000);
});

test("mapCudaMemory(): exports the memory's dma-buf, imports it, and closes the fd whatever the import says", () => {
  const f = fake();
  const c = open(f);
  let exported = -1;
  const exporter = {
    size: 8192,
    exportDmaBuf: () => (exported = openSync("/dev/null", "r")), // not a dma-buf the backend knows: the import refuses it
  };
  expect(() => c.mapCudaMemory(exporter)).toThrow(InvalidArgumentError);
  expect(exported).toBeGreaterThanOrEqual(0);
  expect(() => fstatSync(exported)).toThrow(); // closed
  expect(f.backend.live.size).toBeGreaterThan(0); // the controller's own memory only: nothing imported
});
