/**
 * One controller, several processes (lib/share/), through QEMU's controller and the sysfs backend
 * (suite "share") or VFIO (suite "share-vfio": LIBNVM_TEST_BACKEND=vfio):
 * examples/serve.ts owns it; clients (client.ts, and this test process) open unix:PATH, create
 * queues at their own memory and do verified I/O on disjoint LBA ranges at once; a client killed
 * with SIGKILL mid-I/O has its queues deleted by the server while the others carry on; a server
 * killed with SIGKILL leaves its clients with ShareError on their next call, promptly.
 */
import { afterEach, expect, test } from "bun:test";
import { chmodSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { Controller, Namespace, ShareError, UnsupportedError, defaultSocketPath, exportIoQueue, parseBdf } from "../../lib/index.ts";
import { ctrlAddress, expectedBackend, finished, REPO, requireExpected, waitForLine } from "../hw/common.ts";
import { client, killChildren, RawShareClient, requestsServed, rest, serve, spawn, tmp } from "./harness.ts";
import type { Request } from "../../lib/share/protocol.ts";
import { fillShare } from "./pattern.ts";
import { expectPattern } from "./verify.ts";

afterEach(killChildren);

/** Check the last round a client reported against the media, from this process (through the server). */
async function verifyRange(path: string, nsid: number, first: number, blocks: number, seed: number, round: number): Promise<void> {
  using c = Controller.open(`unix:${path}`, { handleSignals: false });
  await expectPattern(c, nsid, first, blocks, seed, round);
}

test("two client processes do verified I/O on disjoint ranges at once, each through its own queue; the default socket is under /run/libnvm", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { path } = await serve();
  expect(path).toBe(defaultSocketPath(parseBdf(ctrlAddress())));
  const a = client(path, nsid, 0, 512, 4, 1);
  const b = client(path, nsid, 1024, 512, 4, 2);
  const qa = await waitForLine(a.stdout, /^ready qid \d+/, 60_000);
  const qb = await waitForLine(b.stdout, /^ready qid \d+/, 60_000);
  expect(qa).not.toBe(qb);
  // Each runs 4 s of rounds; the rest bounds a start under TCG and a command's recovery (deadline, Abort, deletion).
  const [{ code: ca, out: outA }, { code: cb, out: outB }] = await Promise.all([finished(a, 60_000, "client a"), finished(b, 60_000, "client b")]);
  expect({ ca, outA }).toMatchObject({ ca: 0 });
  expect({ cb, outB }).toMatchObject({ cb: 0 });
  const ra = Number(/^done (\d+)/m.exec(outA)![1]);
  const rb = Number(/^done (\d+)/m.exec(outB)![1]);
  expect(ra).toBeGreaterThan(0);
  expect(rb).toBeGreaterThan(0);
  await verifyRange(path, nsid, 0, 512, 1, ra);
  await verifyRange(path, nsid, 1024, 512, 2, rb);
});

test("SIGKILL of one client mid-I/O: the server deletes its queue; the other client's I/O and data are unaffected", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { p: server, path } = await serve(join(tmp, "share-kill.sock"));
  const victim = client(path, nsid, 4096, 1024, 30, 3);
  const other = client(path, nsid, 8192, 512, 8, 4);
  await waitForLine(other.stdout, /^ready/, 60_000);
  // Its output is read from here on: a client blocked writing a full pipe would stop its I/O.
  const otherDone = finished(other, 60_000, "the other client");
  otherDone.catch(() => {});
  await waitForLine(victim.stdout, /^round 1$/, 60_000);
  // The server holds the clients' DMA memory (their hugetlb memfds), so a killed client's pages
  // are not freed before its queues are deleted.
  const memfds = readdirSync(`/proc/${server.pid}/fd`).filter((f) => {
    try {
      return readlinkSync(`/proc/${server.pid}/fd/${f}`).includes("memfd:libnvm-dma");
    } catch {
      return false;
    }
  });
  expect(memfds.length).toBeGreaterThanOrEqual(2);
  victim.kill("SIGKILL");
  await victim.exited;
  const { code, out } = await otherDone;
  expect({ code, out }).toMatchObject({ code: 0 });
  const round = Number(/^done (\d+)/m.exec(out)![1]);
  console.log(`share: the other client verified ${round} rounds in 8 s`);
  await verifyRange(path, nsid, 8192, 512, 4, round);
  // The server said it reclaimed the victim's queue (its log is on stderr).
  server.kill("SIGTERM");
  await server.exited;
  const log = await rest(server.stderr);
  expect(log).toMatch(new RegExp(`client \\d+ \\(pid ${victim.pid}\\) disconnected: deleted its 1 I/O queue, then released the \\d+ MiB of memory`));
});

test("SIGKILL of the server: a client's next call fails with ShareError 'server-gone' well within its deadline; its close() is bounded; the controller opens again", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { p: server, path } = await serve(join(tmp, "share-server-kill.sock"));
  // A deadline far above the bounds asserted below: a call that ran into it would fail them.
  const c = Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 10_000 });
  // The client reaches the controller the way its server does (sysfs, or VFIO through the server's container).
  expect(c.backend.kind).toBe((expectedBackend() ?? "sysfs") as never);
  const ns = new Namespace(c, nsid);
  const buf = c.allocBuffer(4096);
  await ns.read(0, 8, buf);
  server.kill("SIGKILL");
  await server.exited;
  const t0 = performance.now();
  let e: unknown;
  try {
    c.activeNamespaces();
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(ShareError);
  expect((e as ShareError).reason).toBe("server-gone");
  expect(performance.now() - t0).toBeLessThan(4000);
  expect(() => c.createIoQueue()).toThrow(ShareError);
  const t1 = performance.now();
  c.close();
  expect(performance.now() - t1).toBeLessThan(4000);
  // The owner lock went with the server; a new owner resets the controller and works.
  using again = Controller.open(ctrlAddress(), { handleSignals: false });
  expect(again.activeNamespaces()).toContain(nsid);
});

test("a reset on the server's side (a client granted --allow=reset asks for it) drops every client's queues: typed ShareError 'queue-lost', then new queues work and data is intact", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { path } = await serve(join(tmp, "share-reset.sock"), ["--allow=reset"]);
  using a = Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 5000 });
  using b = Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 5000 });
  const nsA = new Namespace(a, nsid);
  const qa = a.createIoQueue({ entries: 16 });
  const out = a.allocBuffer(8 * nsA.lbaSize);
  const back = a.allocBuffer(8 * nsA.lbaSize);
  fillShare(out.bytes, 9, 20_000);
  await nsA.write(20_000, 8, out, { queue: qa });
  const resetsBefore = b.resets;
  b.reset();
  expect(b.resets).toBe(resetsBefore + 1);
  // A hears of it with its next reply; its queue is gone from the controller.
  expect(a.activeNamespaces()).toContain(nsid);
  const e = await nsA.read(20_000, 8, back, { queue: qa }).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(ShareError);
  expect((e as ShareError).reason).toBe("queue-lost");
  expect((e as Error).message).toContain("Create a new queue");
  const qa2 = a.createIoQueue({ entries: 16 });
  await nsA.read(20_000, 8, back, { queue: qa2 });
  expect(Buffer.compare(back.bytes, out.bytes)).toBe(0);
  // B's default queue works (created after the reset), on B's own memory.
  const backB = b.allocBuffer(8 * nsA.lbaSize);
  await new Namespace(b, nsid).read(20_000, 8, backB);
  expect(Buffer.compare(backB.bytes, out.bytes)).toBe(0);
});

test("Workers: a client's queue cannot be lent to one (UnsupportedError naming the way instead); a Worker that opens unix:PATH itself does verified I/O", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { path } = await serve(join(tmp, "share-worker.sock"));
  using c = Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 5000 });
  const q = c.createIoQueue({ entries: 8 });
  expect(() => exportIoQueue(c, q as never)).toThrow(UnsupportedError);
  expect(() => exportIoQueue(c, q as never)).toThrow(`Controller.open("unix:${path}") in the Worker`);
  const w = new Worker(join(import.meta.dir, "worker-client.ts"), { workerData: { target: `unix:${path}`, nsid, lba: 24_000, blocks: 16, seed: 11 } });
  try {
    type Answer = { qid?: number; same?: boolean; error?: string };
    const r: Answer = await Promise.race([
      new Promise<Answer>((resolve) => w.once("message", resolve)),
      Bun.sleep(60_000).then((): Answer => ({ error: "the Worker did not answer within 60 s" })),
    ]);
    expect(r).toMatchObject({ same: true });
    expect(r.qid).not.toBe(q.qid);
    // It closed its controller before answering, and ends by itself.
    await Promise.race([new Promise((resolve) => w.once("exit", resolve)), Bun.sleep(10_000)]);
  } finally {
    await w.terminate();
  }
});

test("a controller served with the default filter refuses a client's reset and Format NVM, and serves identify", async () => {
  const { path } = await serve(join(tmp, "share-filter.sock"));
  using c = Controller.open(`unix:${path}`, { handleSignals: false });
  expect(c.info.sn.trim()).toBe(requireExpected().serial);
  expect(() => c.reset()).toThrow(/--allow=reset/);
  const e = await c.formatNvm(1, { lbaf: 0 }).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(ShareError);
  expect((e as ShareError).reason).toBe("refused");
});

test("a client of another uid is refused by the server (SO_PEERCRED), which names the uid and the fix and keeps serving", async () => {
  // The socket is opened to everyone here (chmod) so that the server's own check is what refuses.
  const { path } = await serve(join(tmp, "share-uid.sock"));
  const probe = join(tmp, "peer-probe");
  const cc = Bun.spawnSync(["gcc", "-O1", "-Wall", "-Werror", "-o", probe, join(import.meta.dir, "peer-probe.c")], { stdout: "pipe", stderr: "pipe" });
  expect({ code: cc.exitCode, err: cc.stderr.toString() }).toMatchObject({ code: 0 });
  chmodSync(tmp, 0o755);
  chmodSync(path, 0o666);
  const p = Bun.spawnSync(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", probe, path], { stdout: "pipe", stderr: "pipe", timeout: 20_000 });
  expect({ code: p.exitCode, err: p.stderr.toString() }).toMatchObject({ code: 0, err: "" });
  const reply = p.stdout.toString("latin1");
  expect(reply).toContain("uid 65534 may not use");
  expect(reply).toContain("--uid=65534");
  // Still serving its own uid.
  using c = Controller.open(`unix:${path}`, { handleSignals: false });
  expect(c.info.sn.trim()).toBe(requireExpected().serial);
});

test("the tools take --ctrl=unix:PATH: identify, write-blocks, read-blocks, roundtrip, perf, and the libnvm command", async () => {
  const ns1 = requireExpected().namespaces[0]!;
  const { path } = await serve(join(tmp, "share-tools.sock"));
  const ctrl = `--ctrl=unix:${path}`;
  const run = async (args: string[]) => {
    const p = spawn(args);
    const { code, out, err } = await finished(p, 60_000, args.join(" "));
    return { code, out, err };
  };
  const id = await run([join(REPO, "examples/identify.ts"), ctrl, "--json"]);
  expect({ code: id.code, err: id.err }).toMatchObject({ code: 0 });
  expect(id.out).toContain(requireExpected().serial);
  const file = join(tmp, "share-tools.bin");
  const data = new Uint8Array(16 * ns1.lbaSize);
  crypto.getRandomValues(data);
  await Bun.write(file, data);
  const w = await run([join(REPO, "examples/write-blocks.ts"), ctrl, `--ns=${ns1.nsid}`, "--lba=30000", `--input=${file}`]);
  expect({ code: w.code, err: w.err }).toMatchObject({ code: 0 });
  const back = join(tmp, "share-tools.out");
  const r = await run([join(REPO, "examples/read-blocks.ts"), ctrl, `--ns=${ns1.nsid}`, "--lba=30000", "--count=16", `--output=${back}`]);
  expect({ code: r.code, err: r.err }).toMatchObject({ code: 0 });
  expect(Buffer.compare(new Uint8Array(await Bun.file(back).arrayBuffer()), data)).toBe(0);
  const rt = await run([join(REPO, "examples/roundtrip.ts"), ctrl, `--ns=${ns1.nsid}`, "--lba=31000", "--count=8", "--json"]);
  expect({ code: rt.code, err: rt.err }).toMatchObject({ code: 0 });
  const perf = await run([join(REPO, "examples/perf.ts"), ctrl, `--ns=${ns1.nsid}`, "--qd=4", "--ios=2000", "--json"]);
  expect({ code: perf.code, err: perf.err }).toMatchObject({ code: 0 });
  expect(JSON.parse(perf.out)).toBeDefined();
  const cli = await run([join(REPO, "bin/libnvm.ts"), "id-ctrl", `unix:${path}`, "-o", "json"]);
  expect({ code: cli.code, err: cli.err }).toMatchObject({ code: 0 });
  expect(JSON.parse(cli.out).sn.trim()).toBe(requireExpected().serial);
  const doc = await run([join(REPO, "bin/libnvm.ts"), "doctor", `unix:${path}`, "-o", "json"]);
  expect({ code: doc.code, err: doc.err }).toMatchObject({ code: 0 });
  expect(JSON.parse(doc.out)).toMatchObject({ via: "unix", reachable: true, transport: "pcie", sn: requireExpected().serial });
});

test("perf: a client's I/O goes to the controller, not through the server (a handful of requests for 4000 commands; figures printed, TCG timing)", async () => {
  const ns1 = requireExpected().namespaces[0]!;
  const perf = async (ctrl: string) => {
    const p = spawn([join(REPO, "examples/perf.ts"), `--ctrl=${ctrl}`, `--ns=${ns1.nsid}`, "--qd=8", "--ios=4000", "--seed=1", "--json"]);
    const { code, out, err } = await finished(p, 60_000, `perf on ${ctrl}`);
    expect({ code, err }).toMatchObject({ code: 0 });
    return { pid: p.pid, iops: (JSON.parse(out).total as { iops: number }).iops };
  };
  const owner = await perf(ctrlAddress());
  const { p: server, path } = await serve(join(tmp, "share-perf.sock"));
  const client = await perf(`unix:${path}`);
  // Two client processes at once, each with its own queue: they share the controller's time.
  const [c1, c2] = await Promise.all([perf(`unix:${path}`), perf(`unix:${path}`)]);
  server.kill("SIGTERM");
  await server.exited;
  console.log(`share: perf 4k rand read qd 8, 4000 IOs: owner ${Math.round(owner.iops)} IOPS, client through unix: ${Math.round(client.iops)} IOPS (ratio ${(client.iops / owner.iops).toFixed(2)})`);
  console.log(`share: two clients at once: ${Math.round(c1.iops)} + ${Math.round(c2.iops)} = ${Math.round(c1.iops + c2.iops)} IOPS (ratio to the owner alone ${((c1.iops + c2.iops) / owner.iops).toFixed(2)})`);
  // Same IoQueue code on both sides, so no timing is asserted here (bench/ has the figures). What a
  // client path that went through the server by mistake would show is the server's count of its
  // requests: one or more a command, where a client doing its own I/O makes a few dozen in all.
  const log = await rest(server.stderr);
  for (const c of [client, c1, c2]) {
    const served = requestsServed(log, c.pid);
    console.log(`share: client pid ${c.pid}: ${served} requests to the server for 4000 commands`);
    expect(served).toBeLessThan(100);
  }
});

test("a client's rings must lie in its own memory: through VFIO and disnvm the server refuses others (it maps every client's memory itself)", async () => {
  const { path } = await serve(join(tmp, "share-rings.sock"));
  const raw = new RawShareClient(path);
  const request = (msg: Request) => raw.request(msg);
  try {
    expect(request({ type: "hello", pid: process.pid, label: "rings" }).type).toBe("hello-ok");
    const ids = request({ type: "reserve-queue", entries: 4 });
    if (ids.type !== "queue-ids") throw new Error(JSON.stringify(ids));
    if (expectedBackend() === "vfio" || expectedBackend() === "disnvm") {
      // IOVAs this client never had mapped (the server's own, or another client's, could be there).
      const r = request({ type: "create-queue", sqid: ids.sqid, cqid: ids.cqid, entries: 4, sqBus: 0x1000_0000, cqBus: 0x1000_1000 });
      expect(r).toMatchObject({ type: "error", reason: "refused" });
      expect((r as { message: string }).message).toContain("not in memory this client had the server map");
    }
    // sysfs: the server cannot know what a client owns (physical addresses): nothing to refuse. Either
    // way the reservation goes back.
    expect(request({ type: "delete-queue", sqid: ids.sqid }).type).toBe("ok");
  } finally {
    raw.close();
  }
});
