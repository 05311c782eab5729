/**
 * The sharing protocol's SISCI carrier (lib/share/sisci-link.ts) against the fake SmartIO on the
 * host (test/smartio: data interrupts are sockets between processes, the rendezvous a shared device
 * segment in the fabric directory). The other end runs in a process of its own with another node
 * id (test/smartio/rpc-peer.ts): another host of the cluster. Framing over interrupts (frames
 * larger than a datagram), a late reply dropped by its request id, deadlines, a server that dies
 * (typed error, not a hang), a client that dies (the server's end fails typed), nothing left.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Backend } from "../../../lib/backends/types.ts";
import { ShareError } from "../../../lib/errors.ts";
import { ShareClientTransport } from "../../../lib/share/client.ts";
import {
  connectSisci,
  DATAGRAM_HEADER,
  DATAGRAM_MAGIC,
  KIND_DATA,
  parseDatagram,
  sisciRpcFdid,
  SisciListener,
} from "../../../lib/share/sisci-link.ts";
import type { ShareConnection } from "../../../lib/share/carrier.ts";
import { fabricDir, fake, fakeEnv, NOTHING_LIVE, removeFabric, useFakeSmartIo } from "../../smartio/fake.ts";

const REPO = join(import.meta.dir, "..", "..", "..");
const PEER = join(REPO, "test", "smartio", "rpc-peer.ts");
const DEVICES = "80000=none,80100=none,80200=none";
/** The peer is another host. */
const PEER_NODE = 8;

let dir = "";
const children: Bun.Subprocess[] = [];
const cleanups: (() => void)[] = [];

beforeAll(() => {
  useFakeSmartIo();
  dir = fabricDir();
  fake.configure(dir, DEVICES);
});
afterAll(() => removeFabric(dir));
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) {
    try {
      f();
    } catch {
      // closed already
    }
  }
  for (const c of children.splice(0)) {
    c.kill("SIGKILL");
    await c.exited; // its interrupts gone before the next test publishes a server
  }
  fake.clear();
  expect(fake.state()).toEqual(NOTHING_LIVE);
});

/** Start rpc-peer.ts and wait (bounded) for its first line. */
async function peer(args: string[]): Promise<{ p: Bun.Subprocess<"pipe", "pipe", "pipe">; line: string }> {
  const p = Bun.spawn(["bun", PEER, ...args], { cwd: REPO, env: { ...process.env, ...fakeEnv(dir, DEVICES, PEER_NODE) }, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  children.push(p);
  const reader = p.stdout.getReader();
  let text = "";
  const end = performance.now() + 15_000;
  while (!text.includes("\n")) {
    const left = end - performance.now();
    if (left <= 0) throw new Error(`rpc-peer ${args.join(" ")} did not start: ${text}`);
    const r = await Promise.race([reader.read(), Bun.sleep(left).then(() => ({ done: true, value: undefined }))]);
    if (r.done) throw new Error(`rpc-peer ${args.join(" ")} exited: ${text}${await new Response(p.stderr).text()}`);
    text += new TextDecoder().decode(r.value);
  }
  reader.releaseLock();
  return { p, line: text.trim() };
}

/** A backend that is never used: the carrier tests need a transport, not memory. */
const noMemory = (): Backend => ({ kind: "sysfs", name: "none", close() {}, abandonDma() {} }) as unknown as Backend;

describe("addresses and datagrams", () => {
  test("smartio-rpc:<fdid> is the client's target; smartio:<fdid> is not", () => {
    expect(sisciRpcFdid("smartio-rpc:80000")).toBe(0x80000);
    expect(sisciRpcFdid("smartio-rpc:0x80100")).toBe(0x80100);
    expect(sisciRpcFdid("smartio:80000")).toBeUndefined();
    expect(sisciRpcFdid("unix:/x")).toBeUndefined();
  });

  test("a datagram is ours only with the magic, the version and a length that matches", () => {
    const b = new Uint8Array(DATAGRAM_HEADER + 3);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, DATAGRAM_MAGIC, true);
    dv.setUint8(4, 1);
    dv.setUint8(5, KIND_DATA);
    dv.setUint16(6, 3, true);
    dv.setUint32(8, 8, true);
    dv.setUint32(12, 1025, true);
    dv.setUint32(16, 77, true);
    dv.setUint32(20, 1, true);
    b.set([1, 2, 3], DATAGRAM_HEADER);
    expect(parseDatagram(b)).toMatchObject({ kind: KIND_DATA, node: 8, intno: 1025, session: 77, seq: 1, payload: new Uint8Array([1, 2, 3]) });
    expect(parseDatagram(b.subarray(0, b.length - 1))).toBeUndefined(); // length says 3, 2 came
    const v2 = b.slice();
    v2[4] = 2;
    expect(parseDatagram(v2)).toBeUndefined();
    const other = b.slice();
    other[0] = 0;
    expect(parseDatagram(other)).toBeUndefined();
  });
});

describe("finding the server", () => {
  test("no server ever published: ShareError 'server-gone' saying how to start one; nothing left borrowed", () => {
    let e: unknown;
    try {
      connectSisci(0x80200, 1000);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("server-gone");
    expect((e as ShareError).message).toContain("examples/serve.ts --ctrl=smartio:80200 --sisci");
  });

  test("libnvm doctor smartio-rpc:<fdid> with nobody serving: exit 3, the ShareError and how to start the server", () => {
    const r = Bun.spawnSync(["bun", join(REPO, "bin", "libnvm.ts"), "doctor", "smartio-rpc:80200", "-o", "json"], {
      cwd: REPO,
      env: { ...process.env, ...fakeEnv(dir, DEVICES, PEER_NODE) },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(r.exitCode).toBe(3);
    const j = JSON.parse(r.stdout.toString());
    expect(j).toMatchObject({ ctrl: "smartio-rpc:80200", via: "sisci", reachable: false, error: { name: "ShareError" } });
    expect(j.error.message).toContain("examples/serve.ts --ctrl=smartio:80200 --sisci");
  });

  test("a second server for the same device is refused while the first lives; a stopped one leaves no server published", async () => {
    const { p } = await peer(["serve", "80000", "echo"]);
    expect(() => SisciListener.listen(0x80000)).toThrow(/served already \(node 8/);
    p.stdin.end(); // the peer withdraws its slot and exits
    await p.exited;
    let e: unknown;
    try {
      connectSisci(0x80000, 1000);
    } catch (x) {
      e = x;
    }
    expect((e as ShareError).reason).toBe("server-gone");
    expect((e as ShareError).message).toContain("no server is published");
    // And now this process may serve it.
    SisciListener.listen(0x80000).close();
  });
});

describe("framing over data interrupts", () => {
  test("frames larger than a datagram (up to 70 KB over 256-byte interrupts) arrive whole and in order", async () => {
    const { line } = await peer(["serve", "80000", "echo", "256"]);
    expect(line).toMatch(/^ready 8 \d+$/);
    const c = connectSisci(0x80000, 5000);
    cleanups.push(() => c.close());
    const before = fake.calls("SCITriggerDataInterrupt");
    const sizes = [1, 232, 233, 5000, 70_000];
    const sent = sizes.map((n) => {
      const b = new Uint8Array(n);
      crypto.getRandomValues(b);
      return b;
    });
    const all = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
    let at = 0;
    for (const b of sent) {
      c.send(b, 5000);
      all.set(b, at);
      at += b.length;
    }
    // 256-byte datagrams, 24 of header: the stream went in pieces of at most 232 bytes.
    expect(fake.calls("SCITriggerDataInterrupt") - before).toBeGreaterThanOrEqual(Math.ceil(all.length / 232));
    const back = new Uint8Array(all.length);
    let got = 0;
    const end = performance.now() + 10_000;
    while (got < all.length && performance.now() < end) {
      const r = c.recv(50_000);
      back.set(r, got);
      got += r.length;
    }
    expect(got).toBe(all.length);
    expect(Buffer.compare(back, all)).toBe(0);
  });
});

describe("requests and replies", () => {
  test("a late reply (to the previous request id) is dropped: each request gets its own", async () => {
    await peer(["serve", "80000", "stale"]);
    const t = ShareClientTransport.over(connectSisci(0x80000, 5000), { timeoutMs: 2000, shareBackend: noMemory });
    cleanups.push(() => t.close());
    expect(t.hello.name).toBe("peer");
    // hello was request 1; each admin command's reply carries its id in DW0, after a late one with 0xdead.
    for (const id of [2, 3, 4]) expect(t.adminCommand({ opcode: 0x06, cdw10: 1 }).dw0).toBe(id);
  });

  test("a server that does not answer: ShareError 'timeout' within the request's deadline plus the reply slack", async () => {
    await peer(["serve", "80000", "silent"]);
    const t = ShareClientTransport.over(connectSisci(0x80000, 5000), { timeoutMs: 2000, shareBackend: noMemory });
    cleanups.push(() => t.close());
    const t0 = performance.now();
    let e: unknown;
    try {
      t.adminCommand({ opcode: 0x06, cdw10: 1 }, { timeoutMs: 300 });
    } catch (x) {
      e = x;
    }
    const ms = performance.now() - t0;
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("timeout");
    expect(ms).toBeGreaterThanOrEqual(1300);
    expect(ms).toBeLessThan(2500);
  });

  test("a server killed while a request waits: ShareError 'server-gone' long before the deadline; later calls fail at once", async () => {
    await peer(["serve", "80000", "silent-die"]);
    const t = ShareClientTransport.over(connectSisci(0x80000, 5000, { pingMs: 100 }), { timeoutMs: 2000, shareBackend: noMemory });
    cleanups.push(() => t.close());
    const t0 = performance.now();
    let e: unknown;
    try {
      t.adminCommand({ opcode: 0x06, cdw10: 1 }, { timeoutMs: 10_000 });
    } catch (x) {
      e = x;
    }
    const ms = performance.now() - t0;
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("server-gone");
    expect(ms).toBeGreaterThanOrEqual(300); // it lived 300 ms
    expect(ms).toBeLessThan(3000); // not the 10 s deadline
    const t1 = performance.now();
    expect(() => t.adminCommand({ opcode: 0x06, cdw10: 1 })).toThrow(ShareError);
    expect(performance.now() - t1).toBeLessThan(100);
  });
});

describe("the server's side", () => {
  test("a client killed: its connection fails with 'server-gone' on the server within a few pings; another client is unaffected", async () => {
    const l = SisciListener.listen(0x80100, { pingMs: 100 });
    cleanups.push(() => l.close());
    const conns: ShareConnection[] = [];
    const kids = [];
    for (let i = 0; i < 2; i++) {
      const kid = Bun.spawn(["bun", PEER, "client", "80100"], { cwd: REPO, env: { ...process.env, ...fakeEnv(dir, DEVICES, PEER_NODE + i) }, stdout: "pipe", stderr: "pipe" });
      children.push(kid);
      kids.push(kid);
      const end = performance.now() + 15_000;
      let a = l.accept();
      while (!a && performance.now() < end) {
        await Bun.sleep(5);
        a = l.accept();
      }
      if (!a) throw new Error(`client ${i} did not connect: ${await new Response(kid.stderr).text()}`);
      expect(a.peer.uid).toBeUndefined(); // no credentials across hosts
      expect(a.peer.where).toMatch(new RegExp(`^node ${PEER_NODE + i}, interrupt \\d+$`));
      conns.push(a.conn);
    }
    cleanups.push(() => conns.forEach((c) => c.close()));
    kids[0]!.kill("SIGKILL");
    await kids[0]!.exited;
    const t0 = performance.now();
    let e: unknown;
    while (!e && performance.now() - t0 < 3000) {
      try {
        conns[0]!.recv(0);
        conns[1]!.recv(0);
      } catch (x) {
        e = x;
      }
      await Bun.sleep(5);
    }
    expect(e).toBeInstanceOf(ShareError);
    expect((e as ShareError).reason).toBe("server-gone");
    expect(performance.now() - t0).toBeLessThan(1000);
    // The other is alive and takes data.
    conns[1]!.send(new Uint8Array([1, 2, 3]), 1000);
    expect(conns[1]!.recv(0).length).toBe(0);
  });
});
