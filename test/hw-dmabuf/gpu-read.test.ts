/**
 * examples/gpu-read.ts end to end in the 6.12 guest, with the test-only mock libcuda
 * (test/cuda/mock-libcuda.c, built by test/vm/setup.sh) standing in for the driver: its "device
 * memory" is a memfd, its dma-buf export a real dma-buf made by the kernel's udmabuf, which the
 * disnvm module imports for the controller. So the whole path — TS, C, "libcuda", dma-buf, module,
 * the controller's DMA through the IOMMU, "GPU memory" — runs for real with only the driver replaced.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Controller, Namespace } from "../../lib/index.ts";
import { disnvmNode, ensureHugepages } from "../hw-disnvm/common.ts";
import { REPO, requireExpected } from "../hw/common.ts";

const MOCK = join(REPO, "test", "cuda", "build", "libcuda.so.1");
let node: string;
let giveBack: () => void = () => {};

beforeAll(() => {
  node = disnvmNode();
  if (!existsSync(MOCK)) throw new Error(`${MOCK} is missing: build it with \`bash test/vm/setup.sh\``);
  giveBack = ensureHugepages(8);
});
afterAll(() => giveBack());

function gpuRead(args: string[], libcuda = MOCK) {
  const p = Bun.spawnSync(["bun", "examples/gpu-read.ts", `--ctrl=${node}`, ...args], {
    cwd: REPO,
    env: { ...process.env, LIBNVM_LIBCUDA: libcuda },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

/** Write `blocks` blocks of a seeded pattern at `lba` through plain host buffers; returns the bytes. */
async function writePattern(nsid: number, lba: number, blocks: number, seed: number): Promise<Uint8Array> {
  const c = Controller.open(node, { handleSignals: false });
  try {
    const ns = new Namespace(c, nsid);
    const data = new Uint8Array(blocks * ns.lbaSize);
    for (let i = 0; i < data.length; i++) data[i] = (i * 13 + (i >>> 12) * 7 + seed) & 0xff;
    using buf = c.allocBuffer(data.length);
    buf.bytes.set(data);
    for (let done = 0; done < blocks; done += ns.maxBlocks) {
      const n = Math.min(ns.maxBlocks, blocks - done);
      await ns.write(lba + done, n, buf, { offset: done * ns.lbaSize });
    }
    return data;
  } finally {
    c.close();
  }
}

test("gpu-read: 5 MiB + 1 block by DMA into the mock's GPU memory, several commands, verified against a host read and the pattern written", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const blocks = (5 << 20) / 512 + 1; // over MDTS (4 MiB here): two commands
  const data = await writePattern(nsid, 2000, blocks, 91);
  const r = gpuRead([`--ns=${nsid}`, "--lba=2000", `--blocks=${blocks}`, "--verify", "--json"]);
  expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: "" });
  const j = JSON.parse(r.out) as { bytes: string; commands: number; verified: string; sha256: string; gbPerSec: number; gpu: { ordinal: number; name: string } };
  expect(j.bytes).toBe(String(data.length));
  expect(j.commands).toBeGreaterThan(1); // MDTS splits it: PRP lists over imported pages
  expect(j.verified).toBe("identical");
  // What came back from "GPU memory" is what was written, not merely what a host read also saw.
  expect(j.sha256).toBe(createHash("sha256").update(data).digest("hex"));
  expect(j.gbPerSec).toBeGreaterThan(0);
  expect(j.gpu.ordinal).toBe(0);
});

test("gpu-read prints one line with the bytes moved and the rate", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  await writePattern(nsid, 100, 8, 5);
  const r = gpuRead([`--ns=${nsid}`, "--lba=100", "--blocks=8"]);
  expect(r.code).toBe(0);
  expect(r.out).toMatch(/^gpu-read: 4096 bytes, 8 blocks, 1 command into GPU 0 \(.+\), [\d.]+ s, [\d.]+ GB\/s\n$/);
});

test("gpu-read: no driver is CudaError exit 1 with the next step; a usage error exits 2 with one line", () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const none = gpuRead([`--ns=${nsid}`, "--lba=0", "--blocks=8"], "/nonexistent/libcuda.so.1");
  expect(none.code).toBe(1);
  expect(none.err).toMatch(/^error: CudaError: .*no CUDA driver.*LIBNVM_LIBCUDA/);
  const usage = gpuRead([`--ns=${nsid}`, "--lba=0"]);
  expect(usage.code).toBe(2);
  expect(usage.err.split("\n")[0]).toBe("--ns, --lba and --blocks are required");
  const past = gpuRead([`--ns=${nsid}`, "--lba=0", "--blocks=999999999"]);
  expect(past.code).toBe(1);
  expect(past.err).toMatch(/past NSZE/);
});

test("doctor: with the module bound, the IOMMU on and a GPU (the mock) that exports dma-bufs, the GPU path works now", () => {
  const p = Bun.spawnSync(["bun", "examples/doctor.ts", `--ctrl=${node}`], { cwd: REPO, env: { ...process.env, LIBNVM_LIBCUDA: MOCK }, stdout: "pipe", stderr: "pipe" });
  const out = p.stdout.toString();
  expect(out).toMatch(/gpu {5}works now: GPU 0 .*exports dma-bufs.*; the module imports dma-bufs/);
  expect(out).toMatch(/cuda: {3}driver CUDA \d+\.\d+ \(.*libcuda\.so\.1\); 1 GPU/);
});

test("libnvm gpu-read: the same tool through the command line", async () => {
  const nsid = requireExpected().namespaces[0]!.nsid;
  const data = await writePattern(nsid, 300, 16, 17);
  const p = Bun.spawnSync(["bun", "bin/libnvm.ts", "gpu-read", node, `--ns=${nsid}`, "--lba=300", "--blocks=16", "--json"], {
    cwd: REPO,
    env: { ...process.env, LIBNVM_LIBCUDA: MOCK },
    stdout: "pipe",
    stderr: "pipe",
  });
  expect({ code: p.exitCode, err: p.stderr.toString() }).toEqual({ code: 0, err: "" });
  expect(JSON.parse(p.stdout.toString()).sha256).toBe(createHash("sha256").update(data).digest("hex"));
});
