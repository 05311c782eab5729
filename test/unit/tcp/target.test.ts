/**
 * libnvm's NVMe/TCP initiator against the scripted target (target-worker.ts): the bring-up as the
 * target sees it, I/O by every data path (in-capsule, R2T with several H2CData, C2HData in one or
 * several PDUs, SUCCESS), digests, keep-alive, reconnects, the three APIs and Workers; then the
 * target misbehaving in every way the transport checks, each ending in a typed error, never a hang.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import {
  ClosedError,
  ConnectionError,
  ControllerFatalError,
  DigestError,
  InvalidArgumentError,
  NvmeStatusError,
  NvmeTimeoutError,
  ProtocolError,
  UnsupportedError,
} from "../../../lib/errors.ts";
import { NVM_READ, NVM_WRITE } from "../../../lib/spec/commands.ts";
import { STATUS_ABORTED_BY_HOST, STATUS_TRANSIENT_TRANSPORT_ERROR, type TcpQueue } from "../../../lib/transports/tcp/queue.ts";
import { exportBuffer, exportIoQueue } from "../../../lib/worker.ts";
import { FakeTarget, TEST_NQN } from "./fake-target.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-tcp-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../../lib/controller.ts");
const { Namespace } = await import("../../../lib/namespace.ts");
type Ctrl = import("../../../lib/controller.ts").Controller;

const HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0c2f6a59-5c1d-4b4e-9d0b-2b6f0f0b0a01";
let t: FakeTarget;

beforeAll(async () => {
  t = await FakeTarget.start();
});
afterAll(async () => {
  await t.stop();
  rmSync(lockDir, { recursive: true, force: true });
});

function open(query = "", opts: Parameters<typeof Controller.open>[1] = {}): Ctrl {
  return Controller.open(t.uri(query), { handleSignals: false, hostnqn: HOSTNQN, timeoutMs: 2000, reconnectDelayMs: 20, ...opts });
}

function pattern(buf: { bytes: Uint8Array }, seed: number, bytes: number): void {
  let x = seed >>> 0 || 1;
  const b = buf.bytes;
  for (let i = 0; i < bytes; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`${what} did not happen within ${ms} ms`);
    await Bun.sleep(10);
  }
}

describe("bring-up and identify", () => {
  test("the target sees ICReq HPDA 0, admin Connect with SQSIZE 31, KATO, CNTLID FFFFh and our NQNs; CC.EN with IOSQES 6 / IOCQES 4", async () => {
    await t.resetFaults();
    const before = (await t.stats()).connects.length;
    using c = open("", { keepAliveTimeoutMs: 5000 });
    const s = await t.stats();
    const admin = s.connects[before]!;
    expect(admin).toMatchObject({ qid: 0, cntlid: 0xffff, sqsize: 31, kato: 5000, hostnqn: HOSTNQN, subnqn: TEST_NQN, inCapsule: true, cattr: 0 });
    expect(s.icreqs.at(-1)).toEqual({ hpda: 0, hd: false, dd: false, maxr2t: 0 });
    const me = s.controllers.find((x) => x.cntlid === c.tcp.cntlid)!;
    expect(me.cc).toBe(0x00460001);
    expect(me.csts & 1).toBe(1);
    expect(c.transport).toBe("tcp");
    expect(c.info.sn).toBe("LIBNVMTCPTEST0001");
    expect(c.info.cntrltype).toBe(1);
    expect(c.info.subnqn).toBe(TEST_NQN);
    expect(c.cap.mqes).toBe(1023);
    expect(c.vs).toBe(0x00010400);
    expect(c.activeNamespaces()).toEqual([1, 2]);
    expect(c.registers()).toMatchObject({ vs: 0x00010400, cc: 0x00460001, csts: 1, aqa: 0 });
    // MDTS 0 (no limit): 2 MiB by default, capped at the target's MAXH2CDATA (64 KiB here), the
    // most Linux nvmet accepts in one command whatever MDTS says.
    expect(c.maxTransfer).toBe(64 * 1024);
    expect(() => c.backend).toThrow(UnsupportedError);
    expect(() => c.mapDmaBuf(0)).toThrow(UnsupportedError);
  });

  test("close() shuts the controller down (CC.SHN, CSTS.SHST) before the connections close", async () => {
    const c = open();
    const cntlid = c.tcp.cntlid;
    c.close();
    c.close();
    await until(async () => !(await t.stats()).controllers.some((x) => x.cntlid === cntlid), 2000, "the association's end");
    expect(c.closed).toBe(true);
    expect(() => c.identifyController()).toThrow(ClosedError);
  });

  test("a refused Connect is a named status: Invalid Host says which host; authentication required is UnsupportedError", async () => {
    await t.set({ connectStatus: 0x4184 });
    expect(() => open()).toThrow(/Connect Invalid Host.*does not allow host nqn\.2014-08\.org\.nvmexpress:uuid:0c2f6a59/);
    await t.set({ connectStatus: undefined, authreq: 1 });
    expect(() => open()).toThrow(UnsupportedError);
    await t.resetFaults();
    expect(() => Controller.open(t.uri("", "nqn.2024-01.io.libnvm:nosuch"), { handleSignals: false, hostnqn: HOSTNQN })).toThrow(/invalid connect data byte 256: Connect Invalid Parameters.*is nqn.2024-01.io.libnvm:nosuch offered/);
  });

  test("a port that takes no in-capsule data (nvmet inline_data_size 0): Connect again with the data by R2T, on every queue", async () => {
    await t.set({ inlineDataSize: 0, ioccsz: 4 });
    const s0 = await t.stats();
    const before = s0.connects.length;
    using c = open();
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    pattern(buf, 21, 4096);
    await ns.write(3, 8, buf);
    expect(await t.peek(1, 3 * 512, 4096)).toEqual(buf.bytes.slice());
    const s1 = await t.stats();
    // The admin Connect in the capsule (refused: SGL Offset Invalid) on one connection, again by
    // R2T on a second, then the I/O queue's by R2T on a third.
    expect(s1.connections - s0.connections).toBe(3);
    expect(s1.connects.slice(before).map((x) => [x.qid, x.inCapsule])).toEqual([[0, false], [1, false]]);
    c.setFeature(0x0e, { data: new Uint8Array(8) }); // Timestamp: 8 bytes of data by R2T on the admin queue
    await t.resetFaults();
  });

  test("CSTS.RDY that never comes is NvmeTimeoutError after CAP.TO; CSTS.CFS is ControllerFatalError", async () => {
    await t.set({ neverReady: true });
    const t0 = performance.now();
    expect(() => open()).toThrow(NvmeTimeoutError);
    expect(performance.now() - t0).toBeLessThan(3000);
    await t.set({ neverReady: false, cfsOnEnable: true });
    expect(() => open()).toThrow(ControllerFatalError);
    await t.resetFaults();
  });

  test("nobody listening: ConnectionError naming the address, at once", async () => {
    const t0 = performance.now();
    let err: unknown;
    try {
      Controller.open("nvme+tcp://127.0.0.1:1/nqn.2024-01.io.libnvm:test", { handleSignals: false, hostnqn: HOSTNQN });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConnectionError);
    expect((err as ConnectionError).message).toMatch(/127\.0\.0\.1:1.*connection refused/);
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  test("ICResp problems: digests other than asked, CPDA, a short MAXH2CDATA, not an ICResp at all", async () => {
    const cases: [Parameters<FakeTarget["set"]>[0]["icresp"], new (...a: never[]) => Error, RegExp][] = [
      [{ digests: { header: true, data: false } }, ProtocolError, /digests .* other than asked/],
      [{ cpda: 1 }, UnsupportedError, /CPDA 1/],
      [{ maxh2cdata: 1024 }, ProtocolError, /MAXH2CDATA 1024/],
      [{ type: 5 }, ProtocolError, /not a 128-byte ICResp/],
      [{ close: true }, ConnectionError, /closed the connection before answering ICReq/],
    ];
    for (const [icresp, cls, re] of cases) {
      await t.set({ icresp });
      let err: unknown;
      try {
        open();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(cls);
      expect((err as Error).message).toMatch(re);
    }
    await t.resetFaults();
  });
});

describe("I/O paths", () => {
  test("writes in the capsule (up to IOCCSZ) and by R2T with H2CData of at most MAXH2CDATA; reads in one or many C2HData; every byte checked at the target", async () => {
    await t.resetFaults();
    using c = open("", { maxH2CDataBytes: 16384 });
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(64 * 1024);
    using back = c.allocBuffer(64 * 1024);
    const inCapsule = c.info.ioccsz * 16 - 64;
    expect(inCapsule).toBe(8192);
    for (const [blocks, seed] of [[1, 1], [16, 2], [17, 3], [128, 4]] as const) {
      const bytes = blocks * 512;
      pattern(buf, seed, bytes);
      const before = await t.stats();
      await ns.write(100, blocks, buf);
      const after = await t.stats();
      // Over 8 KiB: one R2T, and H2CData PDUs of at most 16 KiB (our cap below the target's 64 KiB).
      expect(after.r2ts - before.r2ts).toBe(bytes > inCapsule ? 1 : 0);
      expect(after.h2cPdus - before.h2cPdus).toBe(bytes > inCapsule ? Math.ceil(bytes / 16384) : 0);
      expect(await t.peek(1, 100 * 512, bytes)).toEqual(buf.bytes.slice(0, bytes));
      back.bytes.fill(0);
      await ns.read(100, blocks, back);
      expect(back.bytes.subarray(0, bytes)).toEqual(buf.bytes.subarray(0, bytes));
    }
    // C2HData in 1000-byte PDUs (DATAO in order), and R2Ts of 12 KiB each.
    await t.set({ c2hChunk: 1000, r2tChunk: 12288 });
    pattern(buf, 9, 65536);
    await ns.write(0, 128, buf);
    back.bytes.fill(0);
    await ns.read(0, 128, back);
    expect(back.bytes).toEqual(buf.bytes);
    await t.resetFaults();
  });

  test("digests: header, data, both; each I/O verified", async () => {
    for (const q of ["hdr-digest=1", "data-digest=1", "hdr-digest=1&data-digest=1"]) {
      using c = open(q);
      expect(c.tcp.link).toMatchObject({ hdgst: q.includes("hdr"), ddgst: q.includes("data") });
      const s = await t.stats();
      expect(s.icreqs.at(-1)).toMatchObject({ hd: q.includes("hdr"), dd: q.includes("data") });
      const ns = new Namespace(c, 2);
      using buf = c.allocBuffer(65536);
      using back = c.allocBuffer(65536);
      for (const blocks of [1, 2, 16]) {
        pattern(buf, blocks, blocks * 4096);
        await ns.write(10, blocks, buf);
        back.bytes.fill(0);
        await ns.read(10, blocks, back);
        expect(back.bytes.subarray(0, blocks * 4096)).toEqual(buf.bytes.subarray(0, blocks * 4096));
      }
    }
  });

  test("SQ flow control off (Connect CATTR bit 2): reads end with SUCCESS, no CapsuleResp; SQHD tracked when on", async () => {
    using c = open("disable-sqflow=1");
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    pattern(buf, 5, 4096);
    await ns.write(7, 8, buf);
    const q = c.defaultIoQueue() as TcpQueue;
    expect((await t.stats()).connects.at(-1)).toMatchObject({ qid: q.qid, cattr: 4 });
    using back = c.allocBuffer(4096);
    for (let i = 0; i < 20; i++) await ns.read(7, 8, back);
    expect(back.bytes).toEqual(buf.bytes);
    using c2 = open();
    const ns2 = new Namespace(c2, 1);
    await ns2.read(0, 1, c2.allocBuffer(4096));
    const q2 = c2.defaultIoQueue() as TcpQueue;
    expect(q2.sqPointers.head).toBe(q2.sqPointers.tail);
  });

  test("the sync API, the low-level API (acquire, rw, submit, poll, onComplete) and QD 64 async", async () => {
    using c = open();
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 65 }) as TcpQueue;
    using buf = c.allocBuffer(64 * 4096);
    pattern(buf, 77, buf.size);
    ns.writeSync(q, 0, 8, buf);
    using back = c.allocBuffer(64 * 4096);
    ns.readSync(q, 0, 8, back);
    expect(back.bytes.subarray(0, 4096)).toEqual(buf.bytes.subarray(0, 4096));
    const done: number[] = [];
    q.onComplete = (cid, status) => {
      expect(status).toBe(0);
      done.push(cid);
    };
    for (let i = 0; i < 64; i++) {
      const cid = q.acquire();
      expect(cid).toBeGreaterThanOrEqual(0);
      q.rw(cid, NVM_WRITE, 1, i * 8, 8, buf, i * 4096, 4096);
    }
    expect(q.acquire()).toBe(-1);
    q.submit();
    const end = performance.now() + 5000;
    while (q.outstanding > 0 && performance.now() < end) q.poll();
    expect(done.length).toBe(64);
    q.onComplete = null;
    back.bytes.fill(0);
    await Promise.all(Array.from({ length: 64 }, (_, i) => ns.read(i * 8, 8, back, { queue: q, offset: i * 4096 })));
    expect(back.bytes).toEqual(buf.bytes);
    await ns.flush({ queue: q });
    await ns.writeZeroes(0, 8, { queue: q });
    await ns.deallocate([{ lba: 8, count: 8 }], { queue: q });
    expect((await t.peek(1, 0, 8192)).every((x) => x === 0)).toBe(true);
    c.deleteIoQueue(q);
    expect(q.closed).toBe(true);
  });

  test("bad input is refused before anything is sent: another controller's buffer, a size that is not blocks x LBA size, over the transfer limit", async () => {
    using c = open();
    const ns = new Namespace(c, 1);
    const q = c.defaultIoQueue();
    using buf = c.allocBuffer(1 << 20);
    expect(() => ns.readSync(q, 0, 256, buf)).toThrow(/exceed MDTS/);
    await expect(q.rwAsync(NVM_READ, 1, 0, 2, buf, 0, 512)).rejects.toThrow(/2 blocks of namespace 1 are 1024 bytes/);
    using other = open();
    using foreign = other.allocBuffer(4096);
    await expect(ns.read(0, 1, foreign)).rejects.toThrow(InvalidArgumentError);
    expect(() => buf.busAddress(0)).toThrow(/no bus address/);
  });
});

describe("failures: typed, bounded, and later commands work", () => {
  test("a command the target never answers: NvmeTimeoutError at the deadline, its connection closed first, then the queue reconnects", async () => {
    await t.resetFaults();
    using c = open("", { timeoutMs: 400 });
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    await ns.read(0, 1, buf);
    await t.set({ stallIoOpcode: NVM_READ });
    buf.bytes.fill(0xee);
    const t0 = performance.now();
    const err = await ns.read(0, 8, buf).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NvmeTimeoutError);
    expect((err as Error).message).toMatch(/connection was closed, so nothing more can land in its buffer/);
    expect(performance.now() - t0).toBeLessThan(2000);
    // The buffer stays as the application left it: nothing arrives for the dead command.
    await Bun.sleep(100);
    expect(buf.bytes.every((x: number) => x === 0xee)).toBe(true);
    await t.resetFaults();
    await ns.write(0, 8, buf);
    await ns.read(0, 8, buf);
    expect(buf.bytes.every((x: number) => x === 0xee)).toBe(true);
  });

  test("the other commands outstanding on a connection that dropped fail with ConnectionError; the queue reconnects and later I/O works", async () => {
    await t.resetFaults();
    using c = open();
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(64 * 512);
    await ns.read(0, 1, buf);
    await t.set({ stallIoOpcode: NVM_READ, closeOnIoOpcode: NVM_WRITE });
    const reads = Array.from({ length: 8 }, (_, i) => ns.read(i, 1, buf, { offset: i * 512 }).then(() => "ok", (e: unknown) => e));
    await Bun.sleep(30);
    const w = await ns.write(0, 1, buf, { offset: 4096 }).then(() => "ok", (e: unknown) => e);
    const results = await Promise.all(reads);
    expect(w).toBeInstanceOf(ConnectionError);
    for (const r of results) expect(r).toBeInstanceOf(ConnectionError);
    await t.resetFaults();
    await ns.write(0, 8, buf);
    const resetsBefore = c.resets;
    await ns.read(0, 8, buf);
    expect(c.resets).toBe(resetsBefore); // the queue alone reconnected, same association
  });

  test("the target's port goes away mid-I/O and comes back: typed failures, then a new association and verified I/O", async () => {
    await t.resetFaults();
    using c = open("", { timeoutMs: 1500, reconnectAttempts: 50 });
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(8 * 512);
    pattern(buf, 3, 4096);
    await ns.write(50, 8, buf);
    const cntlid = c.tcp.cntlid;
    const inflight = Array.from({ length: 4 }, () => ns.read(50, 8, c.allocBuffer(4096)).then(() => "ok", (e: unknown) => e));
    await t.unlisten();
    const outcomes = await Promise.all(inflight);
    for (const o of outcomes) expect(o === "ok" || o instanceof ConnectionError || o instanceof NvmeTimeoutError).toBe(true);
    // While it is gone: typed errors, bounded by the timeout.
    const gone = await ns.read(50, 8, buf).then(() => "ok", (e: unknown) => e);
    expect(gone === "ok" || gone instanceof ConnectionError || gone instanceof NvmeTimeoutError).toBe(true);
    await t.listen();
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      ok = await ns.read(50, 8, buf).then(() => true, () => false);
      if (!ok) await Bun.sleep(50);
    }
    expect(ok).toBe(true);
    pattern(buf, 4, 4096);
    await ns.write(60, 8, buf);
    using back = c.allocBuffer(4096);
    await ns.read(60, 8, back);
    expect(back.bytes).toEqual(buf.bytes);
    expect(c.tcp.cntlid).not.toBe(cntlid);
    expect(c.resets).toBeGreaterThanOrEqual(1);
    // Admin works on the new association too.
    expect(c.identifyController().sn).toBe("LIBNVMTCPTEST0001");
  });

  test("keep-alive: KATO 400 ms enforced by the target, idle for 1.5 s, the association survives", async () => {
    await t.set({ enforceKato: true });
    using c = open("kato=400");
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    const cntlid = c.tcp.cntlid;
    const ka0 = (await t.stats()).keepAlives;
    await Bun.sleep(1500);
    expect((await t.stats()).keepAlives - ka0).toBeGreaterThanOrEqual(3);
    await ns.read(0, 8, buf);
    expect(c.tcp.cntlid).toBe(cntlid);
    expect(c.resets).toBe(0);
    await t.resetFaults();
  });

  test("without keep-alive (KATO enforced, none sent) the target ends the association; the next admin command fails typed once, then reconnects", async () => {
    await t.set({ enforceKato: true });
    using c = open("kato=300");
    // Stop our keep-alive timer by blocking the event loop past KATO: what a long synchronous loop does.
    Bun.sleepSync(800);
    await Bun.sleep(50);
    let first: unknown;
    try {
      c.identifyController();
    } catch (e) {
      first = e;
    }
    expect(first === undefined || first instanceof ConnectionError).toBe(true);
    expect(c.identifyController().sn).toBe("LIBNVMTCPTEST0001");
    await t.resetFaults();
  });

  const hostile: [NonNullable<Parameters<FakeTarget["set"]>[0]["breakRead"]>, string, (e: unknown) => boolean][] = [
    ["unknown-type", "pdu-type", (e) => e instanceof ProtocolError],
    ["unknown-cid", "cccid", (e) => e instanceof ProtocolError],
    ["beyond", "data-range", (e) => e instanceof ProtocolError],
    ["plen", "plen", (e) => e instanceof ProtocolError],
    ["termreq", "terminated", (e) => e instanceof ProtocolError],
    ["resp-unknown-cid", "cid", (e) => e instanceof ProtocolError],
    ["offset", "data-offset", (e) => e instanceof ProtocolError],
    ["success-no-last", "success-flag", (e) => e instanceof ProtocolError],
    ["r2t-for-read", "r2t", (e) => e instanceof ProtocolError],
    ["icresp-again", "pdu-type", (e) => e instanceof ProtocolError],
    ["short-then-ok", "short-transfer", (e) => e instanceof ProtocolError],
    ["truncate", "", (e) => e instanceof ConnectionError],
  ];
  for (const [fault, violation, typed] of hostile) {
    test(`hostile target: ${fault} → ${violation || "ConnectionError"}, connection closed, later commands work`, async () => {
      await t.resetFaults();
      using c = open("", { timeoutMs: 1000 });
      const ns = new Namespace(c, 1);
      using buf = c.allocBuffer(4096);
      await ns.read(0, 8, buf);
      await t.set({ breakRead: fault });
      const t0 = performance.now();
      const err = await ns.read(0, 8, buf).then(() => undefined, (e: unknown) => e);
      expect(typed(err)).toBe(true);
      if (violation) expect((err as ProtocolError).violation).toBe(violation);
      expect(performance.now() - t0).toBeLessThan(1500);
      await t.resetFaults();
      await ns.read(0, 8, buf);
    });
  }

  test("a bad header digest closes the connection (DigestError header); a bad data digest fails its command alone (DigestError data, Transient Transport Error for handlers)", async () => {
    await t.resetFaults();
    using c = open("hdr-digest=1&data-digest=1", { timeoutMs: 1000 });
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    await ns.read(0, 8, buf);
    await t.set({ breakRead: "hdgst" });
    const h = await ns.read(0, 8, buf).then(() => undefined, (e: unknown) => e);
    expect(h).toBeInstanceOf(DigestError);
    expect((h as DigestError).digest).toBe("header");
    await ns.read(0, 8, buf);
    const q = c.defaultIoQueue() as TcpQueue;
    await t.set({ breakRead: "ddgst" });
    const d = await ns.read(0, 8, buf).then(() => undefined, (e: unknown) => e);
    expect(d).toBeInstanceOf(DigestError);
    expect((d as DigestError).digest).toBe("data");
    expect(q.live).toBe(true); // the same connection goes on
    await ns.read(0, 8, buf);
    await t.set({ breakRead: "ddgst" });
    let status = -1;
    q.onComplete = (_cid, s) => (status = s);
    const cid = q.acquire();
    q.rw(cid, NVM_READ, 1, 0, 8, buf, 0, 4096);
    q.submit();
    const end = performance.now() + 2000;
    while (q.outstanding > 0 && performance.now() < end) q.poll();
    expect(status).toBe(STATUS_TRANSIENT_TRANSPORT_ERROR);
    q.onComplete = null;
    await t.resetFaults();
  });

  test("a low-level handler whose connection drops gets Command Aborted By Host", async () => {
    await t.resetFaults();
    using c = open();
    const q = c.createIoQueue() as TcpQueue;
    new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    await t.set({ stallIoOpcode: NVM_READ, closeOnIoOpcode: NVM_WRITE });
    const statuses: number[] = [];
    q.onComplete = (_cid, s) => statuses.push(s);
    const a = q.acquire();
    q.rw(a, NVM_READ, 1, 0, 8, buf, 0, 4096);
    q.submit();
    const b = q.acquire();
    q.rw(b, NVM_WRITE, 1, 0, 8, buf, 0, 4096);
    q.submit();
    const end = performance.now() + 2000;
    while (q.outstanding > 0 && performance.now() < end) q.poll();
    expect(statuses).toEqual([STATUS_ABORTED_BY_HOST, STATUS_ABORTED_BY_HOST]);
    await t.resetFaults();
  });

  test("fuzz: replies with random bytes flipped or cut give data or a typed error, never a hang or an uncaught exception", async () => {
    await t.resetFaults();
    using c = open("data-digest=1", { timeoutMs: 500 });
    const ns = new Namespace(c, 1);
    using buf = c.allocBuffer(4096);
    const kinds = ["unknown-type", "unknown-cid", "beyond", "plen", "offset", "truncate", "ddgst", "short-then-ok"] as const;
    for (let i = 0; i < 24; i++) {
      await t.set({ breakRead: kinds[i % kinds.length], c2hChunk: [512, 1000, 4096][i % 3] });
      const r = await ns.read(0, 8, buf).then(() => "ok", (e: unknown) => e);
      expect(r === "ok" || r instanceof ProtocolError || r instanceof DigestError || r instanceof ConnectionError || r instanceof NvmeTimeoutError).toBe(true);
    }
    await t.resetFaults();
    await ns.read(0, 8, buf);
  });
});

describe("discovery and Workers", () => {
  test("Controller.discover lists the subsystems and referrals with the URI that opens each; the discovery controller opens and identifies", async () => {
    await t.resetFaults();
    const d = Controller.discover(`nvme+tcp://127.0.0.1:${t.port}`, { hostnqn: HOSTNQN, handleSignals: false });
    expect(d.genctr).toBe(7n);
    expect(d.records.map((r) => r.uri)).toEqual([`nvme+tcp://127.0.0.1:${t.port}/${TEST_NQN}`, "nvme+tcp://127.0.0.1:4421"]);
    expect(d.records[0]).toMatchObject({ trtype: 3, adrfam: 1, subtype: 2, treq: 4, subnqn: TEST_NQN, traddr: "127.0.0.1" });
    using dc = Controller.open(`nvme+tcp://127.0.0.1:${t.port}/discovery`, { handleSignals: false, hostnqn: HOSTNQN });
    expect(dc.info.cntrltype).toBe(2);
    expect(() => dc.createIoQueue()).toThrow(/discovery controller/);
    const conn = (await t.stats()).connects.at(-1)!;
    expect(conn).toMatchObject({ qid: 0, kato: 0, subnqn: "nqn.2014-08.org.nvmexpress.discovery" });
    // The URI a record gives opens the subsystem.
    using c = Controller.open(d.records[0]!.uri, { handleSignals: false, hostnqn: HOSTNQN });
    expect(c.info.subnqn).toBe(TEST_NQN);
  });

  test("a TCP queue driven from a Worker (exportIoQueue / attachIoQueue), then given back and used here again", async () => {
    await t.resetFaults();
    using c = open();
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 33 }) as TcpQueue;
    using buf = c.allocBuffer(32 * 4096);
    pattern(buf, 11, buf.size);
    const desc = exportIoQueue(c, q);
    expect(() => ns.readSync(q, 0, 1, buf)).toThrow(/lent to a Worker/);
    const w = new Worker(
      `
      const { parentPort, workerData } = require("node:worker_threads");
      const { attachIoQueue } = require(${JSON.stringify(join(import.meta.dir, "../../../lib/worker.ts"))});
      const a = attachIoQueue(workerData.queue);
      const b = a.buffer(workerData.buf);
      const q = a.queue;
      (async () => {
        await Promise.all(Array.from({ length: 32 }, (_, i) => q.rwAsync(1, 1, i * 8, 8, b, i * 4096, 4096)));
        q.rwSync(2, 1, 0, 8, b, 0, 4096);
        a.close();
        parentPort.postMessage("done");
      })().catch((e) => parentPort.postMessage("error: " + e.message));
      `,
      { eval: true, workerData: { queue: desc, buf: exportBuffer(buf) } },
    );
    const msg = await new Promise((resolve) => w.once("message", resolve));
    await w.terminate();
    expect(msg).toBe("done");
    expect(await t.peek(1, 0, 32 * 4096)).toEqual(buf.bytes.slice());
    // Given back: usable here again, on the same connection.
    expect(q.isLent).toBe(false);
    using back = c.allocBuffer(4096);
    ns.readSync(q, 8, 8, back);
    expect(back.bytes).toEqual(buf.bytes.subarray(4096, 8192));
  });
});
