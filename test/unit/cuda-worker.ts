/**
 * The Worker of cuda.test.ts: its own copy of lib/cuda (one module instance per thread) on the
 * same mock libcuda, in a thread where no context is current yet. Reports what it saw and exits.
 */
import { parentPort } from "node:worker_threads";
import { cuda } from "../../lib/cuda/index.ts";
import { mock, useMockDriver } from "../cuda/mock.ts";

try {
  useMockDriver();
  const before = mock.currentDevice();
  const m = cuda.alloc(4096);
  const data = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);
  m.copyFromHost(data);
  const back = new Uint8Array(4096);
  m.copyToHost(back);
  const currentDevice = mock.currentDevice();
  const refsDuring = mock.contextRefs(0);
  cuda.close();
  parentPort!.postMessage({
    ok: before === -1,
    currentDevice,
    refsDuring,
    roundTrip: back.every((v, i) => v === data[i]),
  });
} catch (e) {
  parentPort!.postMessage({ ok: false, error: String(e) });
}
