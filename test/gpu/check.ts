/**
 * The GPU check of lib/cuda against the real driver (run by test/gpu/check.sh on a machine with an
 * NVIDIA GPU; no NVMe needed). One line per check, "gpu: ok <check> ..." or "gpu: FAIL <check> ...",
 * then "gpu: cuda layer checks N passed, M failed" (check.sh prints the total with the queue checks
 * of queue-check.ts); exit 1 on any failure. No driver or no GPU is a failure, not a skip:
 * the checks that need them are reported as not run.
 *
 * DmaBuffers come from the unit tests' FakeBackend (locked host memory, made-up bus addresses): a
 * host registration needs only the pages, not a controller.
 */
import { closeSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { cuda, CudaError, CudaMemory, cudaLibraryPath, DmaBuffer, type CudaDevice } from "../../lib/index.ts";
import { FakeBackend } from "../unit/fake-backend.ts";

const MiB = 1 << 20;
let passed = 0;
let failed = 0;
/** Why the checks that need a GPU cannot run, once one of the first checks failed. */
let blocked: string | undefined;

function ok(name: string, detail: string): void {
  passed++;
  console.log(`gpu: ok ${name} ${detail}`);
}

function fail(name: string, detail: string): void {
  failed++;
  console.log(`gpu: FAIL ${name} ${detail}`);
}

async function check(name: string, fn: () => string | Promise<string>, needsGpu = true): Promise<void> {
  if (needsGpu && blocked) return fail(name, `not run: ${blocked}`);
  const t0 = performance.now();
  try {
    const detail = await fn();
    ok(name, `${detail} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (e) {
    const text = e instanceof CudaError ? `${e.message} [${e.reason}, ${e.call}]` : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    fail(name, text.replace(/\n/g, " | "));
    if (needsGpu && (name === "driver" || name === "devices")) blocked = `${name} failed`;
  }
}

function pattern(n: number, seed: number): Uint8Array {
  const a = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    a[i] = x & 0xff;
  }
  return a;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function expectSame(what: string, got: Uint8Array, want: Uint8Array): void {
  const i = firstDifference(got, want);
  if (i >= 0) throw new Error(`${what}: bytes differ from offset ${i} (got 0x${(got[i] ?? 0).toString(16)}, want 0x${(want[i] ?? 0).toString(16)})`);
}

function hex(p: bigint): string {
  return "0x" + p.toString(16);
}

let devices: CudaDevice[] = [];
const backend = new FakeBackend();

await check("driver", () => {
  const v = cuda.driverVersion();
  return `CUDA ${Math.floor(v / 1000)}.${(v % 1000) / 10} (cuDriverGetVersion ${v}) from ${cudaLibraryPath()}`;
});

await check("devices", () => {
  devices = cuda.devices();
  return devices
    .map(
      (d) =>
        `[${d.ordinal}] ${d.name} ${d.pciBusId} cc ${d.computeCapability.major}.${d.computeCapability.minor} ` +
        `${(d.totalMemory / 2 ** 30).toFixed(1)} GiB dma-buf ${d.dmaBufSupported ? "yes" : "no"} map-host ${d.canMapHostMemory ? "yes" : "no"}`,
    )
    .join("; ");
});

await check("alloc", () => {
  using a = cuda.alloc(64 * MiB);
  using b = cuda.alloc(5000);
  if (a.size !== 64 * MiB || b.size !== 8192) throw new Error(`sizes ${a.size}, ${b.size}`);
  if (a.devicePointer === 0n || b.devicePointer === 0n) throw new Error("NULL device pointer");
  const overlap = a.devicePointer < b.devicePointer + BigInt(b.size) && b.devicePointer < a.devicePointer + BigInt(a.size);
  if (overlap) throw new Error(`allocations overlap: ${hex(a.devicePointer)}+${a.size}, ${hex(b.devicePointer)}+${b.size}`);
  return `64 MiB at ${hex(a.devicePointer)}, 5000 B -> ${b.size} B at ${hex(b.devicePointer)}`;
});

await check("copy", () => {
  const n = 64 * MiB;
  using a = cuda.alloc(n);
  using b = cuda.alloc(n);
  const data = pattern(n, 1);
  let t = performance.now();
  a.copyFromHost(data);
  const h2d = performance.now() - t;
  const back = new Uint8Array(n);
  t = performance.now();
  a.copyToHost(back);
  const d2h = performance.now() - t;
  expectSame("host -> GPU -> host", back, data);
  // At an odd offset, and device to device.
  const small = pattern(4099, 2);
  a.copyFromHost(small, { offset: 12345 });
  cuda.copy(b, a, n);
  const part = new Uint8Array(4099);
  b.copyToHost(part, { offset: 12345 });
  expectSame("offset copy then device-to-device", part, small);
  const gbs = (ms: number) => (n / 2 ** 30 / (ms / 1000)).toFixed(1);
  return `64 MiB both ways (HtoD ${gbs(h2d)} GiB/s, DtoH ${gbs(d2h)} GiB/s, pageable), offset and DtoD copies exact`;
});

await check("errors", () => {
  // A request the real driver refuses, named by the real cuGetErrorName.
  const total = devices[0]?.totalMemory ?? 0;
  let e: unknown;
  try {
    cuda.alloc(total * 4).free();
  } catch (x) {
    e = x;
  }
  if (!(e instanceof CudaError) || e.resultName !== "CUDA_ERROR_OUT_OF_MEMORY") throw new Error(`alloc of 4 x device memory gave ${String(e)}`);
  const m = cuda.alloc(4096);
  m.free();
  let again: unknown;
  try {
    m.free();
  } catch (x) {
    again = x;
  }
  if (!(again instanceof Error) || again.name !== "ClosedError") throw new Error(`double free gave ${String(again)}`);
  return `alloc of ${(total * 4) / 2 ** 30} GiB: ${e.resultName}; double free: ClosedError`;
});

await check("dmabuf-attribute", () => {
  const d = devices[0]!;
  if (!d.dmaBufSupported) {
    throw new Error(`CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0 on ${d.name}: the export below cannot work (open kernel modules needed?)`);
  }
  return `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 1 on ${d.name}`;
});

await check("dmabuf-export", () => {
  using m = cuda.alloc(2 * MiB);
  m.copyFromHost(pattern(4096, 3));
  const fd = m.exportDmaBuf();
  try {
    const info = readFileSync(`/proc/self/fdinfo/${fd}`, "utf8");
    const exp = /^exp_name:\s*(\S+)$/m.exec(info)?.[1];
    const size = Number(/^size:\s*(\d+)$/m.exec(info)?.[1]);
    if (!exp) throw new Error(`fd ${fd} has no exp_name in fdinfo (not a dma-buf?): ${info.replace(/\n/g, " ")}`);
    if (size !== m.size) throw new Error(`dma-buf size ${size}, allocation ${m.size}`);
    return `fd ${fd}: exp_name ${exp}, size ${size} (2 MiB at ${hex(m.devicePointer)})`;
  } finally {
    closeSync(fd);
  }
});

await check("registerHost", () => {
  using buf = new DmaBuffer(backend, 3 * 4096);
  // A region that starts inside a page: the device pointer must carry the offset.
  const region = buf.region(4096 + 64, 8000);
  using reg = cuda.registerHost(region);
  using mem = cuda.alloc(8192);
  const data = pattern(8000, 4);
  mem.copyFromHost(data);
  cuda.copy(reg, mem, 8000); // the GPU's copy engine writes the DMA buffer through the device pointer
  expectSame("GPU -> registered DMA buffer", buf.bytes.subarray(4096 + 64, 4096 + 64 + 8000), data);
  if (!buf.bytes.subarray(0, 4096 + 64).every((v) => v === 0)) throw new Error("bytes before the region were written");
  const back = pattern(8000, 5);
  region.bytes.set(back);
  cuda.copy(mem, reg, 8000); // and reads it
  const out = new Uint8Array(8000);
  mem.copyToHost(out);
  expectSame("registered DMA buffer -> GPU", out, back);
  const same = reg.devicePointer === BigInt(Number(region.pointer));
  return `region at host 0x${Number(region.pointer).toString(16)} -> device ${hex(reg.devicePointer)} (${same ? "same address, UVA" : "different address"}); written and read by the GPU`;
});

await check("registerHost-release", () => {
  const buf = new DmaBuffer(backend, 4096);
  const reg = cuda.registerHost(buf);
  buf.free(); // unregisters before the pages go
  if (reg.registered) throw new Error("still registered after the buffer's free()");
  // The pages of a new buffer register again, and unregister() before free() is the documented order.
  using buf2 = new DmaBuffer(backend, 4096);
  const reg2 = cuda.registerHost(buf2);
  reg2.unregister();
  return "free() of the buffer and unregister() both release the registration";
});

await check("worker", async () => {
  const w = new Worker(join(import.meta.dir, "check-worker.ts"));
  try {
    const r = await new Promise<{ ok: boolean; detail: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the Worker did not answer in 30 s")), 30_000);
      w.once("message", (m) => (clearTimeout(timer), resolve(m)));
      w.once("error", (e) => (clearTimeout(timer), reject(e)));
    });
    if (!r.ok) throw new Error(r.detail);
    return r.detail;
  } finally {
    await w.terminate();
  }
});

await check("close", () => {
  const m = cuda.alloc(4096);
  cuda.close();
  if (!(m instanceof CudaMemory) || !m.freed) throw new Error("memory still live after cuda.close()");
  using again = cuda.alloc(4096); // starts over
  cuda.close();
  return "frees live memory, releases the primary context, and the next call starts over";
});

backend.close();
console.log(`gpu: cuda layer checks ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
