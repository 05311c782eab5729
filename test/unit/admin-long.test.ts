/**
 * Long admin commands and the library calls the command line needs, against the scripted fake
 * controller (fake-nvme.ts): Format NVM changes the LBA size and every cached copy of it is
 * forgotten; a long admin command leaves the event loop (and other queues' pollers) running and
 * is recovered as I/O is (Abort at its deadline, reset when that does not end it); Get/Set
 * Features with data; raw Identify; the admin queue's post()/take().
 */
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError, NvmeStatusError, NvmeTimeoutError, UnsupportedError } from "../../lib/errors.ts";
import { ADMIN_FORMAT_NVM, CNS_CONTROLLER, FID_TIMESTAMP, FID_VOLATILE_WRITE_CACHE, getFeatures, NVM_READ } from "../../lib/spec/commands.ts";
import { SC_ABORT_REQUESTED, SC_INVALID_FIELD, SC_INVALID_FORMAT, SCT_COMMAND_SPECIFIC } from "../../lib/spec/status.ts";
import { FakeNvme, type FakeNvmeOptions } from "./fake-nvme.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-admin-long-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller, FORMAT_TIMEOUT_MS } = await import("../../lib/controller.ts");
const { Namespace } = await import("../../lib/namespace.ts");
type Controller = import("../../lib/controller.ts").Controller;

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

/** Namespace 1: 1 MiB in 512-byte blocks, formats 512+0, 512+8, 4096+0; namespace 2: 4096-byte blocks, one format. */
const TWO_NAMESPACES: FakeNvmeOptions = {
  namespaces: [
    { nsid: 1, blocks: 2048, lbads: 9, formats: [{ lbads: 9 }, { lbads: 9, ms: 8 }, { lbads: 12 }] },
    { nsid: 2, blocks: 256, lbads: 12 },
  ],
};

function fake(opts: FakeNvmeOptions = TWO_NAMESPACES): FakeNvme {
  const f = new FakeNvme(opts).install();
  cleanups.push(() => f.uninstall());
  return f;
}

function open(f: FakeNvme, opts: { timeoutMs?: number; abortGraceMs?: number } = {}): Controller {
  const c = Controller.openBackend(f.backend, { handleSignals: false, timeoutMs: opts.timeoutMs ?? 1000, abortGraceMs: opts.abortGraceMs ?? 200 });
  cleanups.push(() => c.close());
  return c;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const isFormat = (c: { sqid: number; opcode: number }) => c.sqid === 0 && c.opcode === ADMIN_FORMAT_NVM;

describe("Format NVM", () => {
  test("changes the LBA size; the namespace reports it and I/O is checked against the new size", async () => {
    const f = fake();
    const c = open(f);
    const old = new Namespace(c, 1);
    const buf = c.allocBuffer(8192);
    await old.write(0, 1, buf); // the default queue caches 512 bytes for namespace 1
    expect(old.lbaSize).toBe(512);

    const after = await c.formatNvm(1, { lbaf: 2 });
    expect(f.formats).toEqual([[1, 2, 0]]);
    expect(after?.lbaSize).toBe(4096);
    expect(after?.formatIndex).toBe(2);
    expect(after?.nsze).toBe(256n);
    expect(c.identifyNamespace(1).lbaSize).toBe(4096);

    // The stale Namespace still says 512: its 1-block, 512-byte read is refused before it reaches
    // the controller, which would now move 4096 bytes into a 512-byte region.
    const e = await old.read(0, 1, buf).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect((e as Error).message).toContain("4096-byte LBAs");
    // A Namespace created after the format moves whole 4096-byte blocks.
    const ns = new Namespace(c, 1);
    expect(ns.lbaSize).toBe(4096);
    expect(ns.blocks).toBe(256);
    buf.bytes.fill(0xa5, 0, 4096);
    await ns.write(3, 1, buf);
    expect(f.media.get(1)!.subarray(3 * 4096, 4 * 4096).every((b) => b === 0xa5)).toBe(true);
    expect(f.dmaViolations).toEqual([]);
  });

  test("a queue that cached the old size (low-level rw) checks the new one after the format", async () => {
    const f = fake();
    const c = open(f);
    new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    const buf = c.allocBuffer(4096);
    q.rwSync(NVM_READ, 1, 0, 1, buf, 0, 512); // caches namespace 1 = 512 bytes in the queue
    await c.formatNvm(1, { lbaf: 2 });
    expect(() => q.rwSync(NVM_READ, 1, 0, 1, buf, 0, 512)).toThrow(/1 blocks of namespace 1 are 4096 bytes/);
    q.rwSync(NVM_READ, 1, 0, 1, buf, 0, 4096);
    expect(f.dmaViolations).toEqual([]);
  });

  test("to a format with metadata: allowed (an admin command), Identify shows it, Namespace refuses it", async () => {
    const f = fake();
    const c = open(f);
    new Namespace(c, 1);
    const id = await c.formatNvm(1, { lbaf: 1 });
    expect(id?.metadataSize).toBe(8);
    expect(id?.lbaSize).toBe(512);
    expect(() => new Namespace(c, 1)).toThrow(UnsupportedError);
    // The default queue forgot namespace 1: I/O to it is refused as the metadata format it now is.
    const buf = c.allocBuffer(4096);
    const e = await c.defaultIoQueue().rwAsync(NVM_READ, 1, 0, 1, buf, 0, 512).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnsupportedError);
    // And back: no metadata, I/O again.
    await c.formatNvm(1, { lbaf: 0 });
    await new Namespace(c, 1).read(0, 1, buf);
  });

  test("an LBA format the namespace does not have fails with the controller's own status, named", async () => {
    const f = fake();
    const c = open(f);
    const e = await c.formatNvm(2, { lbaf: 5 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NvmeStatusError);
    expect((e as NvmeStatusError).sct).toBe(SCT_COMMAND_SPECIFIC);
    expect((e as NvmeStatusError).sc).toBe(SC_INVALID_FORMAT);
    expect((e as Error).message).toContain("Format NVM(0x80) NSID 2, LBAF 5: Invalid Format");
    expect(c.identifyNamespace(2).lbaSize).toBe(4096);
  });

  test("fields wider than CDW10 allows, inactive NSIDs and outstanding I/O are refused before anything is sent", async () => {
    const f = fake();
    const c = open(f);
    await expect(c.formatNvm(1, { lbaf: 64 })).rejects.toThrow(InvalidArgumentError);
    await expect(c.formatNvm(1, { lbaf: 0, ses: 3 })).rejects.toThrow("SES 3");
    await expect(c.formatNvm(9, { lbaf: 0 })).rejects.toThrow("namespace 9 does not exist");
    const ns = new Namespace(c, 2);
    const buf = c.allocBuffer(4096);
    f.hold = (x) => x.sqid !== 0 && x.opcode === NVM_READ;
    const read = ns.read(0, 1, buf);
    await expect(c.formatNvm(1, { lbaf: 2 })).rejects.toThrow(/has 1 commands outstanding/);
    f.hold = () => false;
    f.completeHeld();
    await read;
    expect(f.fetched.filter(isFormat)).toEqual([]);
  });

  test("runs without blocking the event loop: another namespace's I/O completes while the format is outstanding", async () => {
    const f = fake();
    const c = open(f);
    const ns2 = new Namespace(c, 2);
    const buf = c.allocBuffer(4096);
    f.hold = isFormat;
    let formatted = false;
    const format = c.formatNvm(1, { lbaf: 2 }).then((id: { lbaSize: number } | undefined) => {
      formatted = true;
      return id;
    });
    await sleep(20);
    expect(f.held.length).toBe(1);
    // The poller of the default I/O queue runs while the format waits.
    f.media.get(2)!.fill(0x42, 0, 4096);
    await ns2.read(0, 1, buf);
    expect(buf.bytes[4095]).toBe(0x42);
    expect(formatted).toBe(false);
    // I/O to the namespace being formatted is refused meanwhile.
    const e = await c.defaultIoQueue().rwAsync(NVM_READ, 1, 0, 1, buf, 0, 512).catch((x: unknown) => x);
    expect((e as Error).message).toContain("namespace 1 on");
    expect((e as Error).message).toContain("is being formatted");
    // Other admin commands go through meanwhile and do not swallow the format's completion.
    expect(c.identifyController().sn).toBe("FAKE0001");
    f.hold = () => false;
    f.completeHeld();
    expect(c.identifyController().sn).toBe("FAKE0001"); // this execute() reaps the format's completion
    expect((await format)?.lbaSize).toBe(4096);
  });

  test("progress about once a second: FPI bits 6:0 when FPI bit 7 says the controller reports it", async () => {
    const f = fake();
    const c = open(f);
    f.fpi = 0x80 | 40;
    f.hold = isFormat;
    const seen: (number | null)[] = [];
    const format = c.formatNvm(1, { lbaf: 2, onProgress: (p: { percentRemaining: number | null }) => seen.push(p.percentRemaining) });
    await sleep(1300);
    f.hold = () => false;
    f.completeHeld();
    await format;
    expect(seen).toEqual([40]);
  });

  test("past its deadline: Abort; when Abort ends it, NvmeTimeoutError with the controller's status as cause, no reset", async () => {
    const f = fake();
    const c = open(f);
    f.hold = isFormat;
    const t0 = performance.now();
    const e = await c.formatNvm(1, { lbaf: 2, timeoutMs: 100 }).catch((x: unknown) => x);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(95);
    expect(e).toBeInstanceOf(NvmeTimeoutError);
    expect((e as Error).message).toContain("Format NVM (cid");
    expect((e as Error).message).toContain("did not complete within 100 ms and was aborted");
    expect(((e as Error).cause as NvmeStatusError).sc).toBe(SC_ABORT_REQUESTED);
    expect(c.resets).toBe(0);
    expect(c.identifyNamespace(1).lbaSize).toBe(512);
  });

  test("past its deadline, Abort without effect: the controller is reset after abortGraceMs and works again", async () => {
    const f = fake();
    const c = open(f, { abortGraceMs: 150 });
    const ns2 = new Namespace(c, 2);
    const buf = c.allocBuffer(4096);
    await ns2.read(0, 1, buf);
    f.abortEnds = false;
    f.hold = isFormat;
    const disables = f.disables;
    const t0 = performance.now();
    const e = await c.formatNvm(1, { lbaf: 2, timeoutMs: 100 }).catch((x: unknown) => x);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(240);
    expect(e).toBeInstanceOf(NvmeTimeoutError);
    expect((e as Error).message).toContain("failed by a controller reset");
    expect((e as Error).message).toContain("was not aborted");
    expect(c.resets).toBe(1);
    expect(f.disables).toBe(disables + 1);
    f.hold = () => false;
    // Admin and I/O queues were re-created.
    expect(c.identifyController().sn).toBe("FAKE0001");
    await ns2.read(0, 1, buf);
  });

  test("its own timeout defaults to 10 minutes, not the controller's per-command timeout", () => {
    expect(FORMAT_TIMEOUT_MS).toBe(600_000);
  });
});

describe("adminCommandAsync and the admin queue's post()/take()", () => {
  test("a completion reaped by execute() of another command is kept for take()", () => {
    const f = fake();
    const c = open(f);
    f.hold = (x) => x.sqid === 0 && x.opcode === 0x0a;
    const cid = c.admin.post(getFeatures(FID_VOLATILE_WRITE_CACHE));
    expect(c.admin.take(cid)).toBeUndefined();
    f.hold = () => false;
    f.completeHeld();
    c.identifyController(); // reaps the Get Features completion first
    expect(c.admin.take(cid)?.dw0).toBe(1);
    expect(() => c.admin.take(cid)).toThrow(/was not sent by post\(\), or was taken already/);
  });

  test("a status is NvmeStatusError, named", async () => {
    const f = fake();
    const c = open(f);
    const e = await c.adminCommandAsync(getFeatures(0x7f)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NvmeStatusError);
    expect((e as NvmeStatusError).sc).toBe(SC_INVALID_FIELD);
    expect((e as Error).message).toContain("Get Features(0x0a): Invalid Field in Command");
  });
});

describe("Get/Set Features", () => {
  test("DW0 values, Save, and a feature the controller does not support fails with its status", () => {
    const f = fake();
    const c = open(f);
    expect(c.getFeature(FID_VOLATILE_WRITE_CACHE).dw0).toBe(1);
    expect(c.setFeature(FID_VOLATILE_WRITE_CACHE, { cdw11: 0, save: false }).dw0).toBe(0);
    expect(c.getFeature(FID_VOLATILE_WRITE_CACHE)).toEqual({ dw0: 0, data: undefined });
    const set = f.fetched.filter((x) => x.opcode === 0x09).at(-1)!;
    expect(set.sqe[10]).toBe(FID_VOLATILE_WRITE_CACHE);
    expect(() => c.getFeature(0x7f)).toThrow(/Get Features\(0x0a\) FID 0x7f \(Namespace Metadata\): Invalid Field in Command/);
  });

  test("data in and out through a page of its own (Timestamp, 8 bytes)", () => {
    const f = fake();
    const c = open(f);
    const stamp = new Uint8Array([1, 2, 3, 4, 5, 6, 0, 0]);
    c.setFeature(FID_TIMESTAMP, { data: stamp });
    expect([...f.timestamp]).toEqual([...stamp]);
    const got = c.getFeature(FID_TIMESTAMP, { dataLength: 8 });
    expect(got.data && [...got.data]).toEqual([...stamp]);
    expect(f.dmaViolations).toEqual([]);
  });

  test("bad arguments are refused before anything is sent", () => {
    const f = fake();
    const c = open(f);
    const n = f.fetched.length;
    expect(() => c.getFeature(256)).toThrow("feature identifier 256");
    expect(() => c.getFeature(6, { sel: 4 })).toThrow("select 4");
    expect(() => c.getFeature(6, { dataLength: 4097 })).toThrow("4097 bytes");
    expect(() => c.setFeature(6, { data: new Uint8Array(5000) })).toThrow("5000 bytes");
    expect(f.fetched.length).toBe(n);
  });
});

test("identify(): a copy of any CNS's 4096 bytes as the controller returned them", () => {
  const f = fake();
  const c = open(f);
  const raw = c.identify(CNS_CONTROLLER);
  expect(raw.length).toBe(4096);
  expect(new TextDecoder().decode(raw.subarray(4, 24))).toBe("FAKE0001            ");
  raw.fill(0);
  expect(c.identify(CNS_CONTROLLER)[4]).toBe("F".charCodeAt(0));
  expect(() => c.identify(256)).toThrow(InvalidArgumentError);
});
