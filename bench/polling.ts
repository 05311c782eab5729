/**
 * What the async API's adaptive polling costs and saves, against pure spinning, with no device:
 * an IoQueue over memory (bench/memory-backend.ts) answered by the C completer thread
 * (c/src/bench.c) with a set service time per command, as a device with that latency would.
 *
 * Two measurements per polling mode:
 *   - latency: QD1 reads with the async API (ns.read's path: rwAsync), p50 and p99 of the round
 *     trip, at device service times from 0 to 5 ms: within the spin window adaptive polling should
 *     cost nothing; past it, at most a timer tick (1 ms) per command;
 *   - idle CPU: one command the device does not answer for 2 s; the process's CPU time over that
 *     wait, as a share of one core (target < 5 % for adaptive; spinning takes a whole core).
 *
 *   bun bench/polling.ts [--json] [--seconds S]
 */
import { parseArgs } from "node:util";
import { DmaBuffer } from "../lib/dma.ts";
import { IoCompletionQueue, IoQueue, type PollingOptions } from "../lib/io.ts";
import { NVM_READ } from "../lib/spec/commands.ts";
import { cqHeadDoorbell, sqTailDoorbell } from "../lib/spec/registers.ts";
import { benchNative } from "./bench-native.ts";
import { describeMachine, finishMachineInfo, machineInfo } from "./machine.ts";
import { answeredQueueContext, MemoryBackend } from "./memory-backend.ts";

const { values: args } = parseArgs({ options: { json: { type: "boolean", default: false }, seconds: { type: "string", default: "2" } } });
const SECONDS = Math.max(0.5, Number(args.seconds));
const ENTRIES = 64;
const BS = 4096;
const BLOCKS = 8;
const SERVICE_US = [0, 50, 200, 1000, 5000];
const MODES: readonly { name: string; polling: PollingOptions }[] = [
  { name: "spin", polling: { mode: "spin" } },
  { name: "adaptive", polling: { mode: "adaptive" } },
];

const lib = benchNative();
const be = new MemoryBackend();
let nextQid = 1;

/** A queue pair over memory and its completer, with `polling`. */
function setup(polling: PollingOptions) {
  const qid = nextQid++;
  const ctx = answeredQueueContext(be, { who: "bench/polling", timeoutMs: 60_000, lbaSize: BS / BLOCKS, polling });
  const cq = new IoCompletionQueue(be, qid, ENTRIES, 0);
  const q = new IoQueue(ctx, qid, ENTRIES, cq);
  cq.sqs.set(qid, q);
  const buf = new DmaBuffer(be, BS);
  const h = lib.nvm_bench_completer_start(q.sq.mem.pointer, ENTRIES, cq.cq.mem.pointer, ENTRIES, be.bar0, sqTailDoorbell(qid, 0), cqHeadDoorbell(qid, 0), qid, 1);
  if (h < 0) throw new Error(`nvm_bench_completer_start: errno ${-h}`);
  return {
    q,
    buf,
    h,
    close() {
      lib.nvm_bench_completer_stop(h);
      q.free();
      cq.free();
      buf.free();
    },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** QD1 async reads for `seconds`: round-trip latencies in microseconds. */
async function latency(polling: PollingOptions, serviceUs: number): Promise<{ p50: number; p99: number; n: number }> {
  const s = setup(polling);
  try {
    lib.nvm_bench_completer_latency(s.h, serviceUs * 1000);
    const lat: number[] = [];
    const end = performance.now() + SECONDS * 1000;
    // Warm-up: the JIT, and the poller's first turns (bounded: a tenth of the run).
    const warm = performance.now() + SECONDS * 100;
    for (let i = 0; i < 200 && performance.now() < warm; i++) await s.q.rwAsync(NVM_READ, 1, 0, BLOCKS, s.buf, 0, BS);
    while (performance.now() < end) {
      const t0 = performance.now();
      await s.q.rwAsync(NVM_READ, 1, 0, BLOCKS, s.buf, 0, BS);
      lat.push((performance.now() - t0) * 1000);
    }
    lat.sort((a, b) => a - b);
    return { p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length };
  } finally {
    s.close();
  }
}

/** One command the device holds for `seconds`: this process's CPU time meanwhile, % of one core. */
async function idleCpu(polling: PollingOptions): Promise<number> {
  const s = setup(polling);
  try {
    lib.nvm_bench_completer_pause(s.h, 1);
    const p = s.q.rwAsync(NVM_READ, 1, 0, BLOCKS, s.buf, 0, BS);
    await new Promise((r) => setTimeout(r, 20)); // past the spin window
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const c = process.cpuUsage(c0);
    const wall = performance.now() - t0;
    lib.nvm_bench_completer_pause(s.h, 0);
    await p;
    return ((c.user + c.system) / 1000 / wall) * 100;
  } finally {
    s.close();
  }
}

const machine = machineInfo();
const rows: { serviceUs: number; spin: { p50: number; p99: number }; adaptive: { p50: number; p99: number } }[] = [];
for (const serviceUs of SERVICE_US) {
  const r: Record<string, { p50: number; p99: number }> = {};
  for (const m of MODES) r[m.name] = await latency(m.polling, serviceUs);
  rows.push({ serviceUs, spin: r.spin!, adaptive: r.adaptive! });
}
const idle: Record<string, number> = {};
for (const m of MODES) idle[m.name] = await idleCpu(m.polling);
finishMachineInfo(machine);
be.close();

if (args.json) {
  console.log(JSON.stringify({ date: new Date().toISOString(), machine, seconds: SECONDS, rows, idleCpuPercent: idle }, null, 2));
} else {
  console.log(describeMachine(machine));
  console.log("");
  console.log("QD1 async reads (rwAsync), round trip in µs, p50 / p99, against a device answering after the service time");
  console.log("service   spin (p50/p99)   adaptive (p50/p99)   adaptive/spin p50");
  console.log("-------   --------------   ------------------   -----------------");
  for (const r of rows) {
    const f = (x: { p50: number; p99: number }) => `${x.p50.toFixed(1)} / ${x.p99.toFixed(1)}`;
    console.log(
      `${`${r.serviceUs} µs`.padEnd(9)} ${f(r.spin).padStart(14)}   ${f(r.adaptive).padStart(18)}   ${(r.adaptive.p50 / r.spin.p50).toFixed(2).padStart(16)}x`,
    );
  }
  console.log("");
  console.log(`one command outstanding for ${SECONDS} s: CPU ${idle.spin!.toFixed(1)} % of a core spinning, ${idle.adaptive!.toFixed(1)} % adaptive`);
  console.log("targets: adaptive idle CPU < 5 % of a core; QD1 latency cost < 10 % where the service time is within the spin window (500 µs)");
}
