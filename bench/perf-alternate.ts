/**
 * TypeScript and C taking turns on one queue pair, in one process: examples/perf.ts's job
 * (runJob) and the C reference's (bench/perf-c-engine.ts) alternate in short slices, so that a
 * change in the machine's load hits both alike. Separate runs of each (bench:guest's pairs) are
 * seconds apart; on a shared host the load moves between them and one pair's TS/C ratio can
 * land anywhere from 0.3x to 1.7x. Adjacent slices of a second see the same load.
 *
 * Same options as perf.ts (low-level API, one queue pair); the warm-up runs TypeScript first
 * (until the JIT is quiet, as perf.ts does), then one C slice unmeasured; then `--seconds` are
 * split into slices of `--slice` seconds (default 1), TS and C in turns, who goes first
 * alternating. stdout: perf.ts's JSON for the TypeScript slices together; stderr, one line:
 *   alternate: {"slices":[{"ts":{"iops":..,"p50Us":..},"c":{...}},...]}
 *
 *   bun bench/perf-alternate.ts --ctrl=BDF --qd=1 --seconds=10 --warmup=5 --cpu=1 [--slice=1] --json
 */
import { perf, type PerfEngine } from "../examples/perf.ts";
import { run } from "../examples/common.ts";
import { LatencyHistogram, runJob, type JobResult, type Workload } from "../examples/perf-engine.ts";
import type { DmaBuffer } from "../lib/dma.ts";
import type { Controller } from "../lib/controller.ts";
import type { NvmeIoQueue } from "../lib/transports/types.ts";
import { runJobC } from "./perf-c-engine.ts";

export interface SliceFigure {
  iops: number;
  p50Us: number;
  errors: number;
}

function figure(r: JobResult): SliceFigure {
  const h = new LatencyHistogram();
  h.merge(r.hist);
  return { iops: r.seconds > 0 ? r.ios / r.seconds : 0, p50Us: h.percentile(50) / 1000, errors: r.errors };
}

/** Several slices' results as one (the TypeScript side's report). */
function mergeResults(rs: JobResult[]): JobResult {
  const h = new LatencyHistogram();
  for (const r of rs) h.merge(r.hist);
  const first = rs[0]!;
  const sum = (k: "ios" | "reads" | "writes" | "bytes" | "seconds" | "errors") => rs.reduce((s, r) => s + r[k], 0);
  return {
    ...first,
    ios: sum("ios"),
    reads: sum("reads"),
    writes: sum("writes"),
    bytes: sum("bytes"),
    seconds: sum("seconds"),
    errors: sum("errors"),
    interrupted: rs.some((r) => r.interrupted),
    hist: h.toJSON(),
  };
}

function sliceArg(argv: string[]): { slice: number; rest: string[] } {
  const rest: string[] = [];
  let slice = 1;
  for (const a of argv) {
    const m = /^--slice=(.+)$/.exec(a);
    if (!m) rest.push(a);
    else {
      slice = Number(m[1]);
      if (!(slice >= 0.2 && slice <= 60)) throw new Error(`--slice=${m[1]}: 0.2 to 60 seconds`);
    }
  }
  return { slice, rest };
}

export function alternateEngine(slice: number, out: { slices: { ts: SliceFigure; c: SliceFigure }[] }): PerfEngine {
  return {
    name: "alternate",
    tool: "libnvm bench/perf-alternate.ts",
    refuse: ({ api, queues, workers }) =>
      api !== "low" ? "TS and C take turns on the low-level API only (--api=low)" : queues > 1 || workers ? "one queue pair in this thread (no --queues, no --workers)" : undefined,
    async run(ctrl: Controller, q: NvmeIoQueue, buf: DmaBuffer, w: Workload, progress: Float64Array, index: number): Promise<JobResult> {
      if (w.seconds === undefined) throw new Error("perf-alternate measures time slices: give --seconds, not --ios");
      const stopped = () => progress[0] === 1;
      // Warm both up: TypeScript until the JIT is quiet (perf.ts's rule), C for one slice.
      const warm = await runJob(q, buf, { ...w, seconds: slice, markFile: undefined }, progress, index);
      if (!stopped()) runJobC(ctrl, q, buf, { ...w, warmupSeconds: 0, seconds: slice, markFile: undefined }, progress, index);
      const rounds = Math.max(1, Math.round(w.seconds / (2 * slice)));
      const ts: JobResult[] = [];
      for (let i = 0; i < rounds && !stopped(); i++) {
        // The same LBAs for both halves of a round; who goes first alternates.
        const sw: Workload = { ...w, warmupSeconds: 0, seconds: slice, seed: (w.seed + i * 0x9e3779b9) >>> 0, markFile: undefined };
        let t: JobResult | undefined;
        let c: JobResult | undefined;
        for (const who of i % 2 === 0 ? ["ts", "c"] : ["c", "ts"]) {
          if (who === "ts") t = await runJob(q, buf, sw, progress, index);
          else c = runJobC(ctrl, q, buf, sw, progress, index);
        }
        ts.push(t!);
        out.slices.push({ ts: figure(t!), c: figure(c!) });
      }
      const merged = mergeResults(ts.length > 0 ? ts : [warm]);
      return { ...merged, warmupSeconds: warm.warmupSeconds, ...(warm.jitQuiet !== undefined ? { jitQuiet: warm.jitQuiet } : {}) };
    },
  };
}

if (import.meta.main) {
  await run(async () => {
    const { slice, rest } = sliceArg(Bun.argv.slice(2));
    const out = { slices: [] as { ts: SliceFigure; c: SliceFigure }[] };
    await perf(rest, alternateEngine(slice, out));
    process.stderr.write(`alternate: ${JSON.stringify({ slice, ...out })}\n`);
  });
}
