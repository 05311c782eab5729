/**
 * A controller shared over a real Unix socket (lib/share/): the server runs in a Worker over the
 * fake NVMe controller (fixture.ts); clients in this thread open it with Controller.open("unix:…"),
 * or speak the protocol by hand (RawClient) to do what a well-behaved client never does: touch
 * another client's queue, replay a request, send garbage, vanish with I/O outstanding.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ClosedError, NvmeStatusError, NvmeTimeoutError, ShareError, UnsupportedError } from "../../../lib/errors.ts";
import { toArrayBuffer } from "bun:ffi";
import { native } from "../../../lib/native.ts";
import { connectUnix, UnixListener, type UnixConnection } from "../../../lib/share/link.ts";
import { decodeBody, encode, FrameReader, HEADER_SIZE, type Reply, type Request } from "../../../lib/share/protocol.ts";
import { NVM_READ } from "../../../lib/spec/commands.ts";
import { pageRuns, pagesFrom } from "../../../lib/share/server.ts";
import { exportIoQueue } from "../../../lib/worker.ts";
import { ClientFakeBackend, ServerThread } from "./fixture.ts";

const dir = mkdtempSync(join(tmpdir(), "libnvm-share-"));
process.env.LIBNVM_LOCK_DIR = dir;
const { Controller } = await import("../../../lib/controller.ts");
const { Namespace } = await import("../../../lib/namespace.ts");
type Controller = ReturnType<typeof Controller.open>;

let n = 0;
const sockPath = () => join(dir, `s${++n}.sock`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitFor(cond: () => Promise<boolean> | boolean, ms = 3000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(5);
  }
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      await f();
    } catch {
      // closed already
    }
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function server(opts: { allow?: string[]; uids?: number[]; maxQueues?: number } = {}): Promise<{ s: ServerThread; path: string }> {
  const s = new ServerThread();
  const path = sockPath();
  await s.start({ socket: path, ...opts });
  cleanups.push(() => s.stop());
  return { s, path };
}

function client(s: ServerThread, path: string, opts: { timeoutMs?: number } = {}): { c: Controller; be: ClientFakeBackend } {
  let be: ClientFakeBackend | undefined;
  const c = Controller.open(`unix:${path}`, {
    handleSignals: false,
    timeoutMs: opts.timeoutMs ?? 1000,
    abortGraceMs: 200,
    shareBackend: () => (be = s.backend()),
  });
  cleanups.push(() => c.close());
  return { c, be: be! };
}

/** The protocol by hand. */
class RawClient {
  readonly conn: UnixConnection;
  readonly reader = new FrameReader();
  id = 0;
  constructor(path: string) {
    this.conn = connectUnix(path, 1000);
  }
  sendRaw(b: Uint8Array): void {
    this.conn.send(b, 1000);
  }
  send(msg: Request, id = ++this.id): number {
    this.sendRaw(encode({ id, timeoutMs: 2000, msg }));
    return id;
  }
  /** The next reply (any id), waiting at most `ms`. */
  reply(ms = 2000): { id: number; msg: Reply } {
    const end = performance.now() + ms;
    for (;;) {
      const raw = this.reader.next();
      if (raw) return { id: raw.id, msg: decodeBody(raw) as Reply };
      if (performance.now() > end) throw new Error("no reply");
      const b = this.conn.recv(20_000);
      if (b.length) this.reader.push(b);
    }
  }
  request(msg: Request): Reply {
    const id = this.send(msg);
    const r = this.reply();
    expect(r.id).toBe(id);
    return r.msg;
  }
  close(): void {
    this.conn.close();
  }
}

describe("admin commands through the server", () => {
  test("Identify, the namespace list, a log page and a feature come through; CAP and VS from the server", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    expect(c.info.sn.trim()).toBe("FAKE0001");
    expect(c.info.mn.trim()).toBe("libnvm fake controller");
    expect(c.activeNamespaces()).toEqual([1]);
    expect(c.cap.mqes).toBe(255);
    expect(c.vs).toBe(0x10400);
    expect(c.name).toMatch(/via unix:/);
    expect(c.smartLog()).toBeDefined();
    expect(c.getFeatures(0x06)).toBe(1); // Volatile Write Cache: the fake starts with 1
    expect(new Namespace(c, 1).blocks).toBe(4096);
    const st = await s.stats();
    expect(st.clients.length).toBe(1);
    expect(st.clients[0]!.pid).toBe(process.pid);
  });

  test("a status from the controller arrives as NvmeStatusError; the server keeps serving", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    expect(() => c.getFeatures(0x7f)).toThrow(NvmeStatusError); // the fake: Invalid Field in Command
    expect(c.activeNamespaces()).toEqual([1]);
  });
});

describe("I/O queues at the client's memory", () => {
  test("createIoQueue: the server creates CQ then SQ at the client's addresses; verified writes and reads go straight to the controller", async () => {
    const { s, path } = await server();
    const { c, be } = client(s, path);
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 32 });
    const st = await s.stats();
    expect(st.sqs).toEqual([q.qid]);
    const creates = st.admin.filter(([op]) => op === 0x05 || op === 0x01);
    expect(creates.map(([op]) => op)).toEqual([0x05, 0x01]);
    const buf = c.allocBuffer(64 * 1024);
    crypto.getRandomValues(buf.bytes);
    const want = buf.bytes.slice();
    ns.writeSync(q, 100, 128, buf);
    buf.bytes.fill(0);
    ns.readSync(q, 100, 128, buf);
    expect(Buffer.compare(buf.bytes, want)).toBe(0);
    // The async API on the default queue too.
    buf.bytes.fill(0);
    await ns.read(100, 128, buf);
    expect(Buffer.compare(buf.bytes, want)).toBe(0);
    expect(be.live.size).toBeGreaterThan(0);
    const after = await s.stats();
    // No admin command carried the I/O.
    expect(after.admin.filter(([op]) => op === 0x02 || op === 0x01).length).toBe(2 /* two SQ creates */);
    expect(after.violations).toEqual([]);
    c.deleteIoQueue(q);
    const del = (await s.stats()).admin.slice(-2).map(([op]) => op);
    expect(del).toEqual([0x00, 0x04]); // Delete SQ, then Delete CQ
  });

  test("close() deletes the client's queues through the server, then frees its memory; the server forgets the client", async () => {
    const { s, path } = await server();
    const { c, be } = client(s, path);
    c.createIoQueue({ entries: 8 });
    c.createIoQueue({ entries: 8 });
    expect((await s.stats()).sqs.length).toBe(2);
    c.close();
    expect(be.live.size).toBe(0);
    await waitFor(async () => (await s.stats()).clients.length === 0);
    const st = await s.stats();
    expect(st.sqs).toEqual([]);
    expect(st.violations).toEqual([]);
  });

  test("per-client quota: the server grants maxQueues, then ShareError 'quota'; two clients get disjoint queue ids", async () => {
    const { s, path } = await server({ maxQueues: 2 });
    const a = client(s, path).c;
    const b = client(s, path).c;
    const qa = [a.createIoQueue({ entries: 4 }), a.createIoQueue({ entries: 4 })];
    const e = (() => {
      try {
        a.createIoQueue({ entries: 4 });
      } catch (x) {
        return x;
      }
    })();
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("quota");
    const qb = b.createIoQueue({ entries: 4 });
    const ids = new Set([...qa, qb].map((q) => q.qid));
    expect(ids.size).toBe(3);
    expect(a.ioQueuesGranted()).toEqual({ sqs: 2, cqs: 2 });
  });
});

describe("the filter", () => {
  test("reset, Format NVM, Set Features are refused by default; Number of Queues is the server's, with the grant that allows them", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    const reason = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return e instanceof ShareError ? `${e.reason}: ${e.message}` : String(e);
      }
      return "passed";
    };
    expect(reason(() => c.reset())).toMatch(/^refused: .*--allow=reset/);
    expect(await c.formatNvm(1, { lbaf: 0 }).then(() => "passed", (e: ShareError) => `${e.reason}: ${e.message}`)).toMatch(/^refused: .*Format NVM\(0x80\).*--allow=format/);
    expect(reason(() => c.setFeature(0x06, { cdw11: 0 }))).toMatch(/^refused: .*--allow=features/);
    // Number of Queues is the server's: a client is told its grant, and a raw Set Features of it is refused.
    expect(c.setNumberOfQueues(4)).toEqual({ sqs: 8, cqs: 8 });
    expect(reason(() => c.adminCommand({ opcode: 0x09, cdw10: 0x07, cdw11: 0x00030003 }))).toMatch(/^refused: .*Number of Queues/);
    // A raw Create I/O SQ would place a queue where the server cannot see it: never.
    expect(reason(() => c.adminCommand({ opcode: 0x01, cdw10: 5 }))).toMatch(/^refused: .*server's own/);
    expect(c.activeNamespaces()).toEqual([1]);
  });

  test("--allow=features,format lets them through", async () => {
    const { s, path } = await server({ allow: ["features", "format"] });
    const { c } = client(s, path);
    c.setFeature(0x06, { cdw11: 0 });
    expect(c.getFeatures(0x06)).toBe(0);
    await c.formatNvm(1, { lbaf: 0 });
  });

  test("a client cannot delete or abort on another client's queue: 'not-owner'; the owner's queue keeps working", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    const raw = new RawClient(path);
    cleanups.push(() => raw.close());
    expect(raw.request({ type: "hello", pid: 1, label: "raw" }).type).toBe("hello-ok");
    expect(raw.request({ type: "delete-queue", sqid: q.qid })).toMatchObject({ type: "error", reason: "not-owner" });
    expect(raw.request({ type: "abort", sqid: q.qid, cid: 0 })).toMatchObject({ type: "error", reason: "not-owner" });
    expect(raw.request({ type: "admin", sqe: Uint32Array.from({ length: 16 }, (_, i) => (i === 0 ? 0x00 : i === 10 ? q.qid : 0)), toHost: 0 })).toMatchObject({ type: "error", reason: "refused" });
    expect((await s.stats()).sqs).toEqual([q.qid]);
    const buf = c.allocBuffer(4096);
    ns.readSync(q, 0, 8, buf);
  });
});

describe("messages that break the protocol", () => {
  test("replayed, malformed, unknown and misdirected requests get typed errors; the connection and others keep working", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    const raw = new RawClient(path);
    cleanups.push(() => raw.close());
    expect(raw.request({ type: "hello", pid: 1, label: "raw" }).type).toBe("hello-ok");
    // Replayed: the same id again.
    raw.send({ type: "reserve-queue", entries: 4 }, raw.id);
    expect(raw.reply().msg).toMatchObject({ type: "error", reason: "replayed" });
    // A body too short for its type.
    const short = encode({ id: ++raw.id, timeoutMs: 1000, msg: { type: "delete-queue", sqid: 1 } }).slice(0, HEADER_SIZE + 1);
    new DataView(short.buffer).setUint32(16, 1, true);
    raw.sendRaw(short);
    expect(raw.reply().msg).toMatchObject({ type: "error", reason: "protocol" });
    // A reply sent as a request.
    raw.sendRaw(encode({ id: ++raw.id, timeoutMs: 0, msg: { type: "ok" } }));
    expect(raw.reply().msg).toMatchObject({ type: "error", reason: "protocol" });
    // Still served.
    expect(raw.request({ type: "reserve-queue", entries: 4 }).type).toBe("queue-ids");
    // Garbage (bad magic): said why, then dropped; its reserved ids are released.
    raw.sendRaw(new Uint8Array(HEADER_SIZE).fill(0x41));
    expect(raw.reply().msg).toMatchObject({ type: "error", reason: "protocol" });
    await waitFor(async () => (await s.stats()).clients.length === 1);
    expect(() => raw.reply(300)).toThrow(ShareError); // the server closed it
    // The well-behaved client did not notice.
    expect(c.activeNamespaces()).toEqual([1]);
  });

  test("a request before hello, and an oversized length, are refused", async () => {
    const { s, path } = await server();
    const raw = new RawClient(path);
    cleanups.push(() => raw.close());
    expect(raw.request({ type: "reserve-queue", entries: 4 })).toMatchObject({ type: "error", reason: "protocol" });
    const h = encode({ id: ++raw.id, timeoutMs: 1000, msg: { type: "bye" } });
    new DataView(h.buffer).setUint32(16, 0x7fff_ffff, true);
    raw.sendRaw(h);
    expect(raw.reply().msg).toMatchObject({ type: "error", reason: "protocol" });
    // A length it will not read past: the connection is closed after saying why.
    expect(() => raw.reply(500)).toThrow(ShareError);
    await waitFor(async () => (await s.stats()).clients.length === 0);
  });
});

describe("failures", () => {
  test("a client that vanishes with a Read outstanding: the server deletes its SQ (the Read ends) then its CQ, before the memory goes; no stray DMA", async () => {
    const { s, path } = await server();
    const raw = new RawClient(path);
    expect(raw.request({ type: "hello", pid: 1, label: "doomed" }).type).toBe("hello-ok");
    const ids = raw.request({ type: "reserve-queue", entries: 4 });
    if (ids.type !== "queue-ids") throw new Error(JSON.stringify(ids));
    const be = s.backend();
    const sq = be.allocDma(4096);
    const cq = be.allocDma(4096);
    const data = be.allocDma(4096);
    const bus = (m: typeof sq) => m.iova[0]! + m.iova[1]! * 0x1_0000_0000;
    expect(raw.request({ type: "create-queue", sqid: ids.sqid, cqid: ids.cqid, entries: 4, sqBus: bus(sq), cqBus: bus(cq) }).type).toBe("ok");
    await s.call("hold-reads", { sqid: ids.sqid });
    // A Read of LBA 0 into `data`, CID 5, written and rung by hand.
    const sqe = new Uint32Array(ClientFakeBackend.view(sq).buffer, ClientFakeBackend.view(sq).byteOffset, 16);
    sqe.fill(0);
    sqe[0] = NVM_READ | (5 << 16);
    sqe[1] = 1;
    sqe[6] = bus(data) >>> 0;
    sqe[7] = Math.floor(bus(data) / 0x1_0000_0000);
    native().nvm_doorbell(be.bar0, 0x1000 + 2 * ids.sqid * 4, 1);
    await waitFor(async () => (await s.stats()).held === 1);
    raw.close(); // as a killed process's socket: no goodbye, no deletes
    await waitFor(async () => (await s.stats()).clients.length === 0);
    const st = await s.stats();
    expect(st.reclaimed).toBe(1);
    expect(st.sqs).toEqual([]);
    expect(st.admin.slice(-2)).toEqual([
      [0x00, ids.sqid],
      [0x04, ids.cqid],
    ]);
    // The Read ended with Command Aborted due to SQ Deletion, posted into memory still ours.
    const cqe = new Uint32Array(ClientFakeBackend.view(cq).buffer, ClientFakeBackend.view(cq).byteOffset, 4);
    expect(cqe[3]! & 0xffff).toBe(5);
    expect((cqe[3]! >>> 17) & 0xff).toBe(0x08);
    expect(st.violations).toEqual([]);
    expect(st.log.join("\n")).toMatch(/doomed|disconnected: deleted its 1 I\/O queue/);
    be.close();
    // Its ids are free again for the next client.
    const { c } = client(s, path);
    expect(c.createIoQueue({ entries: 4 }).qid).toBe(ids.sqid);
  });

  test("hold-memory: the server keeps the client's memfd (its pages outlive the client) until release, or until the client's queues are deleted", async () => {
    const { s, path } = await server();
    const raw = new RawClient(path);
    expect(raw.request({ type: "hello", pid: 1, label: "holder" }).type).toBe("hello-ok");
    const n = native();
    const out = n.nvm_host_alloc(8)!;
    const mem = n.nvm_dma_alloc_fd(1 << 20, 2, out)!;
    const fd = new Int32Array(toArrayBuffer(out, 0, 4))[0]!;
    n.nvm_host_free(out);
    // Without its descriptor: refused, nothing held.
    expect(raw.request({ type: "hold-memory", bytes: 1 << 20 })).toMatchObject({ type: "error", reason: "protocol" });
    raw.conn.sendWithFd(encode({ id: ++raw.id, timeoutMs: 1000, msg: { type: "hold-memory", bytes: 1 << 20 } }), fd, 1000);
    const h = raw.reply().msg;
    expect(h).toMatchObject({ type: "memory" });
    expect((await s.stats()).clients[0]!.heldBytes).toBe(1 << 20);
    expect(raw.request({ type: "release-memory", handle: (h as { handle: number }).handle })).toMatchObject({ type: "ok" });
    expect((await s.stats()).clients[0]!.heldBytes).toBe(0);
    expect(raw.request({ type: "release-memory", handle: 99 })).toMatchObject({ type: "error", reason: "not-owner" });
    // Held again, with a queue: on the disconnect the queue goes first, then the memory.
    raw.conn.sendWithFd(encode({ id: ++raw.id, timeoutMs: 1000, msg: { type: "hold-memory", bytes: 1 << 20 } }), fd, 1000);
    expect(raw.reply().msg).toMatchObject({ type: "memory" });
    const ids = raw.request({ type: "reserve-queue", entries: 4 }) as { sqid: number; cqid: number };
    const bus = (m: { iova: Uint32Array }) => m.iova[0]! + m.iova[1]! * 0x1_0000_0000;
    const be = s.backend();
    const sq = be.allocDma(4096);
    const cq = be.allocDma(4096);
    expect(raw.request({ type: "create-queue", sqid: ids.sqid, cqid: ids.cqid, entries: 4, sqBus: bus(sq), cqBus: bus(cq) }).type).toBe("ok");
    raw.close();
    await waitFor(async () => (await s.stats()).clients.length === 0);
    expect((await s.stats()).log.at(-1)).toMatch(/deleted its 1 I\/O queue, then released the 1 MiB of memory/);
    n.nvm_unix_close(fd);
    n.nvm_dma_free(mem, 1 << 20, 2);
    be.close();
  });

  test("a server that dies: the next call fails with ShareError 'server-gone' at once, not at the deadline; close() is bounded and keeps the memory", async () => {
    const { s, path } = await server();
    const { c, be } = client(s, path, { timeoutMs: 5000 });
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    await s.call("abandon");
    const t0 = performance.now();
    const e = (() => {
      try {
        c.activeNamespaces();
      } catch (x) {
        return x;
      }
    })();
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("server-gone");
    expect(() => c.createIoQueue()).toThrow(ShareError);
    void ns;
    void q;
    const t1 = performance.now();
    c.close();
    expect(performance.now() - t1).toBeLessThan(1000);
    // Nobody deleted the queue: its memory is never given back while the controller may reach it.
    expect(be.abandoned).toBe(true);
    expect(() => c.activeNamespaces()).toThrow(ClosedError);
  });

  test("a server that never answers: ShareError 'timeout' within the deadline plus the reply slack", () => {
    const path = sockPath();
    const l = UnixListener.listen(path, 0o600); // listens, never accepts or answers
    cleanups.push(() => l.close());
    const t0 = performance.now();
    let e: unknown;
    try {
      Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 300 });
    } catch (x) {
      e = x;
    }
    const dt = performance.now() - t0;
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("timeout");
    expect(dt).toBeGreaterThanOrEqual(290);
    expect(dt).toBeLessThan(2500);
  });

  test("no server at the path: ShareError 'server-gone' naming how to start one", () => {
    expect(() => Controller.open(`unix:${join(dir, "nobody.sock")}`, { handleSignals: false })).toThrow(/start the server/);
  });

  test("a peer whose uid the server does not serve is refused ('peer', SO_PEERCRED) and nothing else happens", async () => {
    const { s, path } = await server({ uids: [4_000_000] });
    let e: unknown;
    try {
      client(s, path);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("peer");
    expect((e as Error).message).toContain(`--uid=${process.getuid!()}`);
    expect((await s.stats()).clients).toEqual([]);
  });

  test("a command the controller holds past its deadline: Abort through the server ends it (NvmeTimeoutError); the queue works again", async () => {
    const { s, path } = await server();
    const { c } = client(s, path, { timeoutMs: 200 });
    const ns = new Namespace(c, 1);
    const q = c.createIoQueue({ entries: 8 });
    await s.call("hold-reads", { sqid: q.qid });
    const buf = c.allocBuffer(4096);
    const e = await ns.read(0, 8, buf, { queue: q }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NvmeTimeoutError);
    const st = await s.stats();
    expect(st.admin.some(([op]) => op === 0x08)).toBe(true);
    expect(st.violations).toEqual([]);
    await ns.write(0, 8, buf, { queue: q });
  });
});

describe("a controller reset on the server's side drops every client's queues", () => {
  test("a client's granted reset: the others' outstanding commands settle with ShareError 'queue-lost' (after the disable), new ones on lost queues too; new queues work; no stray DMA", async () => {
    const { s, path } = await server({ allow: ["reset"] });
    const a = client(s, path, { timeoutMs: 600 }).c;
    const b = client(s, path).c;
    const nsA = new Namespace(a, 1);
    const nsB = new Namespace(b, 1);
    const qa = a.createIoQueue({ entries: 8 });
    const qb = b.createIoQueue({ entries: 8 });
    const bufA = a.allocBuffer(4096);
    const bufB = b.allocBuffer(4096);
    nsA.readSync(qa, 0, 8, bufA);
    await s.call("hold-reads", { sqid: qa.qid });
    const pending = nsA.read(0, 8, bufA, { queue: qa }).catch((x: unknown) => x);
    await waitFor(async () => (await s.stats()).held === 1);
    const t0 = performance.now();
    b.reset();
    // The reset disabled the controller (the held Read will never move data); the server told A,
    // whose client looks for such events between requests: the Read settles before its deadline.
    const e = await pending;
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("queue-lost");
    expect((e as Error).message).toMatch(/reset the controller \(client \d+ \(pid \d+\) asked for a reset\).*Create a new queue/);
    expect(performance.now() - t0).toBeLessThan(600);
    expect((await s.stats()).admin.some(([op]) => op === 0x08)).toBe(false); // no Abort was needed
    // New commands on the lost queues fail the same way, the requester's own included.
    expect(await nsA.read(0, 8, bufA, { queue: qa }).catch((x: unknown) => (x as ShareError).reason)).toBe("queue-lost");
    expect(() => nsB.readSync(qb, 0, 8, bufB)).toThrow(/was lost: the server .* reset the controller/);
    // Their ids and memory went back: the requester's at once, the other's on its next turn.
    expect(qb.closed).toBe(true);
    await waitFor(() => qa.closed);
    await s.call("hold-reads", { sqid: -1 });
    // New queues (the lost ones' ids went back to the server) and the default queue work.
    const qa2 = a.createIoQueue({ entries: 8 });
    nsA.readSync(qa2, 0, 8, bufA);
    await nsB.read(0, 8, bufB);
    const st = await s.stats();
    expect(st.violations).toEqual([]);
    // The controller has the two new queues only (qa2, and B's default queue): the lost ones are gone.
    expect(st.sqs.length).toBe(2);
    expect(st.sqs).toContain(qa2.qid);
    expect(st.log.join("\n")).toMatch(/I\/O queue \d+ lost to a controller reset/);
  });

  test("the owner's own reset (the server's recovery): the clients hear of it with their next reply", async () => {
    const { s, path } = await server();
    const a = client(s, path).c;
    const nsA = new Namespace(a, 1);
    const q = a.createIoQueue({ entries: 8 });
    const buf = a.allocBuffer(4096);
    nsA.readSync(q, 0, 8, buf);
    expect(await s.call<number>("reset")).toBe(1);
    // The server notices the reset on its next turn and tells the client, which reads it with this reply.
    await sleep(50);
    expect(a.activeNamespaces()).toEqual([1]);
    expect(() => nsA.readSync(q, 0, 8, buf)).toThrow(ShareError);
    const q2 = a.createIoQueue({ entries: 8 });
    nsA.readSync(q2, 0, 8, buf);
    expect((await s.stats()).violations).toEqual([]);
  });
});

describe("admin commands run asynchronously on the server", () => {
  test("a long admin command of one client (Format NVM the controller holds) does not delay another client's Identify", async () => {
    const { s, path } = await server({ allow: ["format"] });
    const a = client(s, path, { timeoutMs: 5000 }).c;
    const b = client(s, path).c;
    await s.call("hold-admin", { opcode: 0x80 });
    const t0 = performance.now();
    const format = a.formatNvm(1, { lbaf: 0, timeoutMs: 5000 }).then(
      () => performance.now() - t0,
      (x: unknown) => x,
    );
    await waitFor(async () => (await s.stats()).held === 1);
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      expect(b.activeNamespaces()).toEqual([1]);
      expect(b.identify(1, 0).length).toBe(4096);
      expect(performance.now() - t).toBeLessThan(250);
    }
    // Past the server's own per-command timeout (500 ms): the Format runs by its request's deadline.
    await sleep(700);
    expect(await s.call<number>("complete-held")).toBe(1);
    const took = await format;
    expect(typeof took).toBe("number");
    expect(took as number).toBeGreaterThan(700);
    expect((await s.stats()).violations).toEqual([]);
  });

  test("its request's deadline is honoured: at the deadline the server aborts it and the client gets NvmeTimeoutError", async () => {
    const { s, path } = await server({ allow: ["format"] });
    const a = client(s, path, { timeoutMs: 5000 }).c;
    await s.call("hold-admin", { opcode: 0x80 });
    const t0 = performance.now();
    const e = await a.formatNvm(1, { lbaf: 0, timeoutMs: 300 }).catch((x: unknown) => x);
    const dt = performance.now() - t0;
    expect(e).toBeInstanceOf(NvmeTimeoutError);
    expect(dt).toBeGreaterThanOrEqual(290);
    expect(dt).toBeLessThan(2500);
    // The server keeps serving.
    expect(a.activeNamespaces()).toEqual([1]);
  });
});

describe("Workers", () => {
  test("a client's queue cannot be lent to a Worker: UnsupportedError saying to open unix:PATH in the Worker instead", async () => {
    const { s, path } = await server();
    const { c } = client(s, path);
    const q = c.createIoQueue({ entries: 8 });
    let e: unknown;
    try {
      exportIoQueue(c, q as never);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(UnsupportedError);
    expect((e as Error).message).toContain(`Controller.open("unix:${path}") in the Worker`);
    // Nothing was lent: the queue still works here.
    const buf = c.allocBuffer(4096);
    new Namespace(c, 1).readSync(q as never, 0, 8, buf);
  });
});

describe("bus addresses page by page (disnvm servers)", () => {
  const pairs = (addrs: number[]) => Uint32Array.from(addrs.flatMap((a) => [a % 0x1_0000_0000, Math.floor(a / 0x1_0000_0000)]));
  test("pageRuns merges consecutive pages; pagesFrom starts inside a run and stops at MAX_RUNS", () => {
    const runs = pageRuns(pairs([0x1_0000_0000, 0x1_0000_1000, 0x1_0000_2000, 0x5000, 0x1_0000_3000, 0x6000]));
    expect(runs).toEqual([
      { page: 0, bus: 0x1_0000_0000, pages: 3 },
      { page: 3, bus: 0x5000, pages: 1 },
      { page: 4, bus: 0x1_0000_3000, pages: 1 },
      { page: 5, bus: 0x6000, pages: 1 },
    ]);
    expect(pagesFrom(7, 6 * 4096, runs, 1)).toEqual({
      type: "pages",
      handle: 7,
      total: 6 * 4096,
      first: 1,
      runs: [
        { bus: 0x1_0000_1000, pages: 2 },
        { bus: 0x5000, pages: 1 },
        { bus: 0x1_0000_3000, pages: 1 },
        { bus: 0x6000, pages: 1 },
      ],
    });
    // Every page apart: 5000 runs, one message takes 4096; the next starts where it stopped.
    const scattered = pageRuns(pairs(Array.from({ length: 5000 }, (_, i) => 0x10_0000 + i * 0x2000)));
    const first = pagesFrom(1, 5000 * 4096, scattered, 0);
    expect(first.runs.length).toBe(4096);
    const rest = pagesFrom(1, 5000 * 4096, scattered, 4096);
    expect(rest.runs.length).toBe(904);
    expect(rest.runs[0]).toEqual({ bus: 0x10_0000 + 4096 * 0x2000, pages: 1 });
  });
});

beforeAll(() => {
  native();
});
