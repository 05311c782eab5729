/**
 * The sharing server (lib/share/server.ts) with its clients across a SmartIO cluster: the same
 * server as over a Unix socket, its listener the SISCI carrier (lib/share/sisci-link.ts) over the
 * fake SmartIO (test/smartio), in a Worker over the fake NVMe controller (fixture.ts); clients in
 * this thread open smartio-rpc:<fdid>. What the server promises holds through this carrier too:
 * admin commands through it, I/O queues at the client's memory with verified I/O, the filter,
 * queues of two clients disjoint, a client that vanishes reclaimed (the carrier's ping finds it
 * gone), a server that dies a typed error at once, nothing left borrowed.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ShareError } from "../../../lib/errors.ts";
import { connectSisci, type SisciConnection } from "../../../lib/share/sisci-link.ts";
import { decodeBody, encode, FrameReader, type Reply, type Request } from "../../../lib/share/protocol.ts";
import { fabricDir, fake, NOTHING_LIVE, removeFabric, useFakeSmartIo } from "../../smartio/fake.ts";
import { ClientFakeBackend, ServerThread } from "./fixture.ts";

const lockDir = mkdtempSync(join(tmpdir(), "libnvm-share-sisci-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../../lib/controller.ts");
const { Namespace } = await import("../../../lib/namespace.ts");
type Controller = ReturnType<typeof Controller.open>;

const FDID = 0x80100;
const TARGET = "smartio-rpc:80100";
let dir = "";
let shim = "";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(5);
  }
}

beforeAll(() => {
  shim = useFakeSmartIo();
  dir = fabricDir();
  fake.configure(dir, "80100=none");
});
afterAll(() => {
  removeFabric(dir);
  rmSync(lockDir, { recursive: true, force: true });
});

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch {
      // closed already
    }
  }
  fake.clear();
  // Server and clients gone: nothing of SISCI is held in this process.
  expect(fake.state()).toEqual(NOTHING_LIVE);
});

async function server(opts: { allow?: string[]; maxQueues?: number } = {}): Promise<ServerThread> {
  const s = new ServerThread();
  await s.start({ socket: "", sisci: { fdid: FDID, shim }, ...opts });
  cleanups.push(() => s.stop());
  return s;
}

function client(s: ServerThread, opts: { timeoutMs?: number } = {}): { c: Controller; be: ClientFakeBackend } {
  let be: ClientFakeBackend | undefined;
  const c = Controller.open(TARGET, { handleSignals: false, timeoutMs: opts.timeoutMs ?? 1000, abortGraceMs: 200, shareBackend: () => (be = s.backend()) });
  cleanups.push(() => c.close());
  return { c, be: be! };
}

/** The protocol by hand over the SISCI carrier. */
class RawClient {
  readonly conn: SisciConnection;
  readonly reader = new FrameReader();
  id = 0;
  constructor() {
    this.conn = connectSisci(FDID, 2000);
  }
  request(msg: Request): Reply {
    const id = ++this.id;
    this.conn.send(encode({ id, timeoutMs: 2000, msg }), 1000);
    const end = performance.now() + 3000;
    for (;;) {
      const f = this.reader.next();
      if (f && f.id === id) return decodeBody(f) as Reply;
      if (performance.now() > end) throw new Error(`no reply to ${msg.type}`);
      this.reader.push(this.conn.recv(50_000));
    }
  }
}

describe("through SISCI data interrupts, the same server", () => {
  test("admin commands: Identify, the namespace list, a log page, a feature; the client has no uid (another host)", async () => {
    const s = await server();
    const { c } = client(s);
    expect(c.info.sn.trim()).toBe("FAKE0001");
    expect(c.name).toMatch(/via smartio-rpc:80100$/);
    expect(c.activeNamespaces()).toEqual([1]);
    expect(c.smartLog()).toBeDefined();
    expect(c.getFeatures(0x06)).toBe(1);
    const st = await s.stats();
    expect(st.clients.length).toBe(1);
    expect(st.clients[0]!.pid).toBe(process.pid);
    expect(st.clients[0]!.uid).toBeUndefined();
    expect(st.log.join("\n")).toMatch(/no uid \(node 4, interrupt \d+\)/);
  });

  test("two clients: queues at each client's memory, disjoint ids, verified writes and reads on disjoint blocks, no stray DMA", async () => {
    const s = await server();
    const a = client(s);
    const b = client(s);
    const qa = a.c.createIoQueue({ entries: 16 });
    const qb = b.c.createIoQueue({ entries: 16 });
    expect(qa.qid).not.toBe(qb.qid);
    for (const [{ c }, q, lba] of [[a, qa, 0], [b, qb, 1024]] as const) {
      const ns = new Namespace(c, 1);
      const buf = c.allocBuffer(32 * 1024);
      crypto.getRandomValues(buf.bytes);
      const want = buf.bytes.slice();
      ns.writeSync(q, lba, 64, buf);
      buf.bytes.fill(0);
      ns.readSync(q, lba, 64, buf);
      expect(Buffer.compare(buf.bytes, want)).toBe(0);
    }
    const st = await s.stats();
    expect(st.sqs.sort()).toEqual([qa.qid, qb.qid].sort());
    expect(st.violations).toEqual([]);
  });

  test("the filter: Format NVM and Set Features refused without the grant; the server keeps serving", async () => {
    const s = await server();
    const { c } = client(s);
    expect(await c.formatNvm(1, { lbaf: 0 }).then(() => "passed", (e: ShareError) => `${e.reason}: ${e.message}`)).toMatch(/^refused: .*Format NVM\(0x80\).*--allow=format/);
    expect(() => c.setFeature(0x06, { cdw11: 0 })).toThrow(/--allow=features/);
    expect(c.activeNamespaces()).toEqual([1]);
  });
});

describe("failures across the cluster", () => {
  test("a client that vanishes (its interrupt gone, no goodbye): the server finds it by its ping, deletes its queue, forgets it", async () => {
    const s = await server();
    const raw = new RawClient();
    expect(raw.request({ type: "hello", pid: 1, label: "doomed" }).type).toBe("hello-ok");
    const ids = raw.request({ type: "reserve-queue", entries: 4 });
    if (ids.type !== "queue-ids") throw new Error(JSON.stringify(ids));
    const be = s.backend();
    cleanups.push(() => be.close());
    const sq = be.allocDma(4096);
    const cq = be.allocDma(4096);
    const bus = (m: typeof sq) => m.iova[0]! + m.iova[1]! * 0x1_0000_0000;
    expect(raw.request({ type: "create-queue", sqid: ids.sqid, cqid: ids.cqid, entries: 4, sqBus: bus(sq), cqBus: bus(cq) }).type).toBe("ok");
    expect((await s.stats()).sqs).toEqual([ids.sqid]);
    raw.conn.abandonForTests();
    const t0 = performance.now();
    await waitFor(async () => (await s.stats()).clients.length === 0);
    expect(performance.now() - t0).toBeLessThan(2000);
    const st = await s.stats();
    expect(st.reclaimed).toBe(1);
    expect(st.sqs).toEqual([]);
    expect(st.admin.slice(-2)).toEqual([
      [0x00, ids.sqid],
      [0x04, ids.cqid],
    ]);
    expect(st.violations).toEqual([]);
    // A well-behaved client gets the same ids again.
    const { c } = client(s);
    expect(c.createIoQueue({ entries: 4 }).qid).toBe(ids.sqid);
  });

  test("a server that dies: the next call fails with ShareError 'server-gone' at once; close() is bounded and keeps the memory", async () => {
    const s = await server();
    const { c, be } = client(s, { timeoutMs: 5000 });
    c.createIoQueue({ entries: 8 });
    await s.call("abandon");
    const t0 = performance.now();
    let e: unknown;
    try {
      c.activeNamespaces();
    } catch (x) {
      e = x;
    }
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("server-gone");
    const t1 = performance.now();
    c.close();
    expect(performance.now() - t1).toBeLessThan(1000);
    expect(be.abandoned).toBe(true);
  });
});
