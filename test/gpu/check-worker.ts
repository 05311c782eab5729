/**
 * The Worker of test/gpu/check.ts: another OS thread with its own copy of lib/cuda, where no CUDA
 * context is current until lib/cuda makes one so. Allocates, copies both ways, closes; reports.
 */
import { parentPort } from "node:worker_threads";
import { cuda } from "../../lib/index.ts";

try {
  const n = 1 << 20;
  const m = cuda.alloc(n);
  const data = new Uint8Array(n).map((_, i) => (i * 13 + 1) & 0xff);
  m.copyFromHost(data);
  const back = new Uint8Array(n);
  m.copyToHost(back);
  const same = back.every((v, i) => v === data[i]);
  cuda.close();
  parentPort!.postMessage({ ok: same, detail: same ? "1 MiB round trip in a Worker (its own context current), then its close()" : "the Worker read back other bytes" });
} catch (e) {
  parentPort!.postMessage({ ok: false, detail: String(e) });
}
