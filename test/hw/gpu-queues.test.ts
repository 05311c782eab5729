/**
 * The queue core's host mode (createGpuQueues({ device: "cpu" })) against QEMU's NVMe controller,
 * through whichever backend the suite runs (test/vm/hw.ts runs this file through sysfs, VFIO with
 * the IOMMU on, and disnvm): examples/gpu-bench.ts --verify with many threads on several queues,
 * in shared and cooperative mode; the blocks it wrote read back through the TypeScript path; a
 * request list round trip; the controller's reset during a run.
 */
import { afterEach, expect, test } from "bun:test";
import { checkPattern, createGpuQueues, Namespace, type Controller } from "../../lib/index.ts";
import { ctrlAddress, expectedBackend, openTestController, REPO, requireExpected } from "./common.ts";

const HUGEPAGE_NOTICE = /^libnvm: no free 2 MiB hugepage for DMA memory: raised \S+ from \d+ to \d+ .*\n/;

let ctrl: Controller | undefined;
afterEach(() => {
  ctrl?.close();
  ctrl = undefined;
});

/** The namespace of 4096-byte blocks. */
function ns4k() {
  const exp = requireExpected().namespaces.find((n) => n.lbaSize === 4096);
  if (!exp) throw new Error("the guest has no namespace with 4096-byte blocks");
  return exp;
}

function gpuBench(args: string[]) {
  const backend = expectedBackend();
  const p = Bun.spawnSync(["bun", "examples/gpu-bench.ts", `--ctrl=${ctrlAddress()}`, ...(backend ? [`--backend=${backend}`] : []), "--json", ...args], {
    cwd: REPO,
    stdout: "pipe",
    stderr: "pipe",
    timeout: 110_000,
  });
  const out = p.stdout.toString();
  return { code: p.exitCode, err: p.stderr.toString(), json: out.trim() ? JSON.parse(out) : undefined };
}

for (const mode of ["shared", "coop"] as const) {
  test(`gpu-bench --device=cpu --verify, ${mode} mode: the pattern over 8 MiB, then verified random reads, none wrong`, () => {
    const ns = ns4k();
    const exec = mode === "shared" ? ["--threads=8", "--depth=4"] : ["--lanes=15"];
    const r = gpuBench([`--ns=${ns.nsid}`, "--device=cpu", `--mode=${mode}`, "--queues=3", "--entries=64", ...exec, "--bs=4k", "--size=8m", "--seconds=3", "--verify", "--seed=1234", "--timeout=20000"]);
    expect(r.err.replace(HUGEPAGE_NOTICE, "")).toBe("");
    expect(r.code).toBe(0);
    const { fill, result } = r.json;
    expect([fill.ios, fill.writes, fill.errors, fill.timeouts]).toEqual([2048, 2048, 0, 0]);
    expect(result.ios).toBeGreaterThan(100);
    expect([result.errors, result.timeouts, result.verifyErrors, result.brokenQueues]).toEqual([0, 0, 0, []]);
    expect(result.doorbells).toBeLessThanOrEqual(result.ios);
  });
}

test("what the host threads wrote reads back through the TypeScript path; a request list round-trips", async () => {
  const exp = ns4k();
  ctrl = openTestController();
  const ns = new Namespace(ctrl, exp.nsid);
  using gq = createGpuQueues(ctrl, { device: "cpu", count: 2, entries: 32 });
  using buf = ctrl.allocBuffer(16 * 8 * 4096);
  const span = 1024;
  const fill = await gq.bench({ ns, buffer: buf, bs: 8 * 4096, threads: 4, depth: 4, readPct: 0, pattern: "seq", ios: span / 8, lbaFirst: 4096, lbaCount: span, seed: 99 });
  expect([fill.ios, fill.errors, fill.timeouts]).toEqual([span / 8, 0, 0]);
  using back = ctrl.allocBuffer(span * 4096);
  for (let lba = 0; lba < span; lba += 128) await ns.read(4096 + lba, 128, back.region(lba * 4096, 128 * 4096));
  expect(checkPattern(back.u32, 4096, span, 4096, 99)).toBe(-1);

  // Requests of 1 to 40 blocks (PRP lists), at offsets inside pages, written and read back.
  const reqs = Array.from({ length: 48 }, (_, i) => ({ lba: 6000 + i * 40, blocks: 1 + ((i * 13) % 40), offset: i * 40 * 4096 + (i % 4) * 4 }));
  using out = ctrl.allocBuffer(48 * 40 * 4096 + 4096);
  using into = ctrl.allocBuffer(48 * 40 * 4096 + 4096);
  crypto.getRandomValues(out.bytes.subarray(0, 65536));
  for (let o = 65536; o < out.size; o += 65536) out.bytes.copyWithin(o, 0, Math.min(65536, out.size - o));
  const w = await gq.writeBlocks(ns, reqs, out, { threads: 6 });
  expect(w.failures).toEqual([]);
  const rd = await gq.readBlocks(ns, reqs, into, { threads: 6 });
  expect(rd.failures).toEqual([]);
  for (const q of reqs) expect(Buffer.compare(into.bytes.subarray(q.offset, q.offset + q.blocks * 4096), out.bytes.subarray(q.offset, q.offset + q.blocks * 4096))).toBe(0);
});

test("the controller's reset during a run stops the host threads first; the next run works on the re-created queues", async () => {
  const exp = ns4k();
  ctrl = openTestController();
  const ns = new Namespace(ctrl, exp.nsid);
  using gq = createGpuQueues(ctrl, { device: "cpu", count: 2, entries: 32 });
  using buf = ctrl.allocBuffer(4 * 2 * 4096);
  const fill = await gq.bench({ ns, buffer: buf, bs: 4096, threads: 4, depth: 2, readPct: 0, pattern: "seq", ios: 512, lbaCount: 512, seed: 3 });
  expect(fill.errors).toBe(0);
  const run = gq.bench({ ns, buffer: buf, bs: 4096, threads: 4, depth: 2, seconds: 60, verify: true, lbaCount: 512, seed: 3 });
  await Bun.sleep(1500);
  const t0 = performance.now();
  ctrl.reset();
  const res = await run;
  expect(performance.now() - t0).toBeLessThan(10_000);
  expect(res.firstError).toMatch(/reset/);
  expect(res.ios).toBeGreaterThan(0);
  expect(res.verifyErrors).toBe(0);
  const again = await gq.bench({ ns, buffer: buf, bs: 4096, threads: 4, depth: 2, ios: 500, verify: true, lbaCount: 512, seed: 3 });
  expect([again.ios, again.errors, again.verifyErrors, again.timeouts, again.brokenQueues]).toEqual([500, 0, 0, 0, []]);
});
