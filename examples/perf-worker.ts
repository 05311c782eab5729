/**
 * One queue pair of examples/perf.ts --queues N, in a Worker: attaches the I/O queue and buffer
 * the main thread exported (lib/worker.ts), says "ready", runs the job on "start", posts the
 * result (or the error), and detaches its views before the main thread frees anything.
 */
import { parentPort, workerData } from "node:worker_threads";
import { attachIoQueue, type SharedIoQueue, type SharedMapping, type SharedTcpIoQueue } from "../lib/worker.ts";
import { runJob, type JobResult, type Workload } from "./perf-engine.ts";

export interface PerfWorkerData {
  readonly queue: SharedIoQueue | SharedTcpIoQueue;
  readonly buffer: SharedMapping;
  readonly workload: Workload;
  readonly progress: SharedArrayBuffer;
  readonly index: number;
}

export type PerfWorkerMessage =
  | { readonly type: "ready" }
  | { readonly type: "result"; readonly result: JobResult }
  | { readonly type: "error"; readonly message: string };

if (parentPort && workerData) {
  const port = parentPort;
  const data = workerData as PerfWorkerData;
  const post = (m: PerfWorkerMessage) => port.postMessage(m);
  let attached: ReturnType<typeof attachIoQueue> | undefined;
  try {
    attached = attachIoQueue(data.queue);
    const buf = attached.buffer(data.buffer);
    const progress = new Float64Array(data.progress);
    port.once("message", (m: { type: string }) => {
      if (m.type !== "start") return;
      runJob(attached!.queue, buf, data.workload, progress, data.index).then(
        (result) => {
          attached!.close();
          post({ type: "result", result });
        },
        (e: unknown) => {
          attached!.close();
          post({ type: "error", message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
        },
      );
    });
    post({ type: "ready" });
  } catch (e) {
    attached?.close();
    post({ type: "error", message: e instanceof Error ? `${e.name}: ${e.message}` : String(e) });
  }
}
