/**
 * I/O load generator: IOPS, bandwidth and completion latency (min, mean, max, percentiles) of
 * reads, writes or a mix, random or sequential, at a queue depth, on one queue pair in this
 * thread or on N queue pairs driven by N Workers. Writes overwrite the namespace.
 *
 *   bun run examples/perf.ts --ctrl=05:00.0 --ns=1 --qd=32 --bs=4k --pattern=rand --rw=read --seconds=10
 *   bun run examples/perf.ts --ctrl=05:00.0 --queues=4 --qd=32 --json
 *   bun run examples/perf.ts --ctrl=05:00.0 --qd=1 --ios=100000 --plot=lat.svg
 */
import { writeSync, writeFileSync } from "node:fs";
import { Worker } from "node:worker_threads";
import type { AnyIoQueue, Controller } from "../lib/controller.ts";
import type { DmaBuffer } from "../lib/dma.ts";
import { Namespace } from "../lib/namespace.ts";
import { exportBuffer, exportIoQueue } from "../lib/worker.ts";
import { intOption, openController, parse, run, toJson, UsageError } from "./common.ts";
import { LatencyHistogram, PERCENTILES, progressSlots, runJob, type JobResult, type Workload } from "./perf-engine.ts";
import { latencySvg } from "./perf-plot.ts";
import { parseCpuList, pinProcess } from "./cpu.ts";
import type { PerfWorkerData, PerfWorkerMessage } from "./perf-worker.ts";

const usage = `usage: bun run examples/perf.ts --ctrl=CTRL [--ns=NSID] [--qd=N] [--bs=SIZE] [--pattern=rand|seq]
                 [--rw=read|write|mix] [--rwmix=PCT] [--seconds=S | --ios=N] [--warmup=S] [--queues=N]
                 [--workers] [--api=low|async] [--idle-sleep=US] [--turnaround-delay=US] [--cpu=LIST] [--offset=SIZE] [--size=SIZE] [--seed=N]
                 [--plot=FILE] [--mark=FILE] [--json]
  Keeps QD commands outstanding per queue pair and reports IOPS, MiB/s and completion latency
  (min, mean, max, p1 p5 p25 p50 p75 p90 p95 p99 p99.9) per queue pair and in total.
  WRITES OVERWRITE THE NAMESPACE (--rw=write or mix).
  --ctrl=CTRL       controller: PCI address (unbound from the kernel's nvme driver), /dev/disnvmN, nvme+tcp://HOST:PORT/SUBNQN, unix:PATH or smartio-rpc:<fdid> (served)
  --ns=NSID         namespace (default 1)
  --qd=N            commands outstanding per queue pair (default 1)
  --bs=SIZE         bytes per command: a multiple of the LBA size, at most MDTS (default 4k; k, m suffixes)
  --pattern=P       rand (default) or seq
  --rw=RW           read (default), write, or mix
  --rwmix=PCT       percentage of reads with --rw=mix (default 50)
  --seconds=S       measure for S seconds (default 10)
  --ios=N           or: measure N commands per queue pair
  --warmup=S        run S seconds before measuring (default 0); and then on until the JIT's threads were
                    idle for a second (at most 3xS)
  --queues=N        N queue pairs, each driven by its own Worker (default 1: this thread)
  --workers         use a Worker even for one queue pair (like for like with --queues=N)
  --api=A           low (default): acquire/rw/submit/poll; async: rwAsync promises
  --idle-sleep=US   hybrid polling (low API): after 64 empty polls sleep US microseconds (default 0: spin);
                    for more pollers than free CPUs
  --turnaround-delay=US  an experiment (low API): busy-wait US microseconds after each poll that reaped,
                    before the refill's doorbell: what a slower completion-to-doorbell turnaround costs
  --cpu=LIST        pin the whole process (every thread, Workers included) to these CPUs, as taskset -c
                    LIST does: 3, 0,2 or 0-3
  --offset=SIZE     start of the region used (default 0)
  --size=SIZE       length of the region (default: to the end of the namespace); seq splits it among queues
  --seed=N          random LBA seed (default: from the clock)
  --plot=FILE       write the latency histogram as an SVG
  --mark=FILE       write FILE ({"at": epoch ms, "seconds": S}) when the measured window starts, for a
                    profiler outside the process (test/vm/profile-guest.ts)
  --json            print one JSON object on stdout
  -h, --help        this text
`;

const KiB = 1024;
const MiB = 1024 * 1024;

/** "4k" -> 4096, "128K" -> 131072, "1m" -> 1048576, "4096" -> 4096. */
function sizeOption(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([kmg])?(i?b)?$/i.exec(String(v).trim());
  if (!m) throw new UsageError(`--${name}=${String(v)}: expected a size like 4096, 4k, 128k or 1m\n${usage}`);
  const unit = (m[2] ?? "").toLowerCase();
  const n = Number(m[1]) * (unit === "k" ? KiB : unit === "m" ? MiB : unit === "g" ? 1024 * MiB : 1);
  if (!Number.isSafeInteger(n)) throw new UsageError(`--${name}=${String(v)} is too large`);
  return n;
}

function secondsOption(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || !/^\d+(\.\d+)?$/.test(v) || !Number.isFinite(n)) {
    throw new UsageError(`--${name}=${String(v)}: expected a number of seconds\n${usage}`);
  }
  return n;
}

function choice<T extends string>(name: string, v: unknown, options: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(options as readonly string[]).includes(String(v))) throw new UsageError(`--${name}=${String(v)}: choose ${options.join(" or ")}\n${usage}`);
  return v as T;
}

export interface LatencySummary {
  min: number;
  mean: number;
  max: number;
  percentiles: Record<string, number>;
}

export interface QueueReport {
  qid: number;
  ios: number;
  reads: number;
  writes: number;
  bytes: number;
  seconds: number;
  /** The warm-up run before measuring: --warmup, or longer while the JIT still compiled. */
  warmupSeconds: number;
  /** Whether the JIT had gone quiet when measuring started (absent when nothing was checked). */
  jitQuiet?: boolean;
  iops: number;
  mibPerSec: number;
  errors: number;
  firstError?: string;
  /** The low-level loop's CQ polls, polls that reaped and SQ doorbells while measured (JobResult.loop). */
  loop?: { polls: number; reaps: number; submits: number };
  /** Microseconds. */
  latencyUs: LatencySummary;
}

const us = (ns: number) => Number((ns / 1000).toFixed(3));

function summarize(h: LatencyHistogram): LatencySummary {
  const percentiles: Record<string, number> = {};
  for (const p of PERCENTILES) percentiles[`p${p}`] = us(h.percentile(p));
  return { min: h.count > 0 ? us(h.min) : 0, mean: us(h.mean), max: us(h.max), percentiles };
}

function report(r: Omit<JobResult, "hist" | "index" | "interrupted">, h: LatencyHistogram): QueueReport {
  return {
    qid: r.qid,
    ios: r.ios,
    reads: r.reads,
    writes: r.writes,
    bytes: r.bytes,
    seconds: Number(r.seconds.toFixed(3)),
    warmupSeconds: Number(r.warmupSeconds.toFixed(3)),
    ...(r.jitQuiet !== undefined ? { jitQuiet: r.jitQuiet } : {}),
    iops: r.seconds > 0 ? Number((r.ios / r.seconds).toFixed(1)) : 0,
    mibPerSec: r.seconds > 0 ? Number((r.bytes / MiB / r.seconds).toFixed(2)) : 0,
    errors: r.errors,
    ...(r.firstError !== undefined ? { firstError: r.firstError } : {}),
    ...(r.loop ? { loop: r.loop } : {}),
    latencyUs: summarize(h),
  };
}

function textReport(label: string, r: QueueReport): string {
  const l = r.latencyUs;
  const lines = [
    `${label} ios=${r.ios} IOPS=${r.iops.toFixed(1)} MiB/s=${r.mibPerSec.toFixed(2)} seconds=${r.seconds.toFixed(3)}` +
      `${r.reads && r.writes ? ` reads=${r.reads} writes=${r.writes}` : ""} errors=${r.errors}`,
    `\tlatency (µs) min=${l.min.toFixed(3)} mean=${l.mean.toFixed(3)} max=${l.max.toFixed(3)}`,
  ];
  for (const p of [...PERCENTILES].reverse()) lines.push(`\t${`p${p}:`.padEnd(7)} ${l.percentiles[`p${p}`]!.toFixed(3).padStart(14)}`);
  if (r.firstError) lines.push(`\tfirst error: ${r.firstError}`);
  return lines.join("\n");
}

/** Run one job per queue: in this thread for one queue (unless `workers`), else one Worker each. */
async function runAll(
  ctrl: Controller,
  queues: AnyIoQueue[],
  bufs: DmaBuffer[],
  workloads: Workload[],
  progress: Float64Array,
  tick: () => void,
  workers_: boolean,
): Promise<JobResult[]> {
  if (queues.length === 1 && !workers_) return [await runJob(queues[0]!, bufs[0]!, workloads[0]!, progress, 0, tick)];
  const workers: Worker[] = [];
  const url = new URL("./perf-worker.ts", import.meta.url);
  const timer = setInterval(tick, 250);
  try {
    const results = await new Promise<JobResult[]>((resolve, reject) => {
      const out: JobResult[] = [];
      let ready = 0;
      const fail = (e: Error) => {
        progress[0] = 1; // stop the others
        reject(e);
      };
      queues.forEach((q, i) => {
        const data: PerfWorkerData = {
          queue: exportIoQueue(ctrl, q),
          buffer: exportBuffer(bufs[i]!),
          workload: workloads[i]!,
          progress: progress.buffer as SharedArrayBuffer,
          index: i,
        };
        const w = new Worker(url, { workerData: data });
        workers.push(w);
        w.on("message", (m: PerfWorkerMessage) => {
          if (m.type === "ready") {
            // Start together, so the total covers one common interval.
            if (++ready === queues.length) for (const x of workers) x.postMessage({ type: "start" });
          } else if (m.type === "result") {
            out[i] = m.result;
            if (out.filter(Boolean).length === queues.length) resolve(out);
          } else fail(new Error(`queue ${q.qid} (worker ${i}): ${m.message}`));
        });
        w.on("error", (e: Error) => fail(new Error(`queue ${q.qid} (worker ${i}): ${e.message}`)));
        w.on("exit", (code) => {
          if (out[i] === undefined) fail(new Error(`queue ${q.qid} (worker ${i}) exited with code ${code} before reporting`));
        });
      });
    });
    return results;
  } finally {
    clearInterval(timer);
    // Every worker has detached its views (or is gone) before the controller frees the queues.
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/**
 * Another implementation of the single-queue job (bench/perf-c.ts: the C reference driver): it
 * gets the queue pair and buffer this program set up, and must return what runJob() returns.
 */
export interface PerfEngine {
  /** Named in the JSON output ("ts" is runJob()). */
  readonly name: string;
  readonly tool: string;
  /** Why it cannot run these options (a usage error's text), or undefined. */
  refuse(opts: { readonly api: "low" | "async"; readonly queues: number; readonly workers: boolean }): string | undefined;
  run(ctrl: Controller, q: AnyIoQueue, buf: DmaBuffer, w: Workload, progress: Float64Array, index: number): JobResult | Promise<JobResult>;
}

/**
 * The whole program, `argv` being its arguments: `libnvm perf` runs it too. Usage errors throw
 * UsageError; --help prints the usage and exits. `engine` replaces runJob() for one queue pair.
 */
export async function perf(argv: string[], engine?: PerfEngine): Promise<void> {
  const args = parse(usage, {
    ns: { type: "string" },
    qd: { type: "string" },
    bs: { type: "string" },
    pattern: { type: "string" },
    rw: { type: "string" },
    rwmix: { type: "string" },
    seconds: { type: "string" },
    ios: { type: "string" },
    warmup: { type: "string" },
    queues: { type: "string" },
    api: { type: "string" },
    offset: { type: "string" },
    size: { type: "string" },
    seed: { type: "string" },
    plot: { type: "string" },
    mark: { type: "string" },
    workers: { type: "boolean", default: false },
    "idle-sleep": { type: "string" },
    "turnaround-delay": { type: "string" },
    cpu: { type: "string" },
  }, argv);
  const nsid = intOption("ns", args.ns, usage) ?? 1;
  const qd = intOption("qd", args.qd, usage) ?? 1;
  const bsArg = sizeOption("bs", args.bs) ?? 4096;
  const pattern = choice("pattern", args.pattern, ["rand", "seq"] as const, "rand");
  const rw = choice("rw", args.rw, ["read", "write", "mix"] as const, "read");
  const rwmixRead = intOption("rwmix", args.rwmix, usage) ?? 50;
  const iosArg = intOption("ios", args.ios, usage);
  const secondsArg = secondsOption("seconds", args.seconds);
  const warmupSeconds = secondsOption("warmup", args.warmup) ?? 0;
  const nQueues = intOption("queues", args.queues, usage) ?? 1;
  const api = choice("api", args.api, ["low", "async"] as const, "low");
  const offsetBytes = sizeOption("offset", args.offset) ?? 0;
  const sizeBytes = sizeOption("size", args.size);
  const seed = intOption("seed", args.seed, usage) ?? (Date.now() >>> 0);
  const plot = args.plot;
  const idleSleepUs = intOption("idle-sleep", args["idle-sleep"], usage) ?? 0;
  const turnaroundDelayUs = intOption("turnaround-delay", args["turnaround-delay"], usage) ?? 0;
  let cpus: number[] | undefined;
  try {
    cpus = args.cpu === undefined ? undefined : parseCpuList(args.cpu);
  } catch (e) {
    throw new UsageError(`--cpu=${args.cpu}: ${(e as Error).message}\n${usage}`);
  }
  if (qd < 1 || qd > 65535) throw new UsageError(`--qd=${qd}: 1 to 65535 commands\n${usage}`);
  if (nQueues < 1 || nQueues > 1024) throw new UsageError(`--queues=${nQueues}: 1 to 1024\n${usage}`);
  if (rwmixRead > 100) throw new UsageError(`--rwmix=${rwmixRead}: a percentage, 0 to 100\n${usage}`);
  if (iosArg !== undefined && secondsArg !== undefined) throw new UsageError(`give --seconds or --ios, not both\n${usage}`);
  if (iosArg === 0 || secondsArg === 0) throw new UsageError(`nothing to measure: --ios and --seconds must be positive\n${usage}`);
  if (plot === "") throw new UsageError(`--plot needs a file name\n${usage}`);
  if (turnaroundDelayUs > 0 && api !== "low") throw new UsageError(`--turnaround-delay is an experiment of the low-level loop: use it with --api=low\n${usage}`);
  const seconds = iosArg === undefined ? (secondsArg ?? 10) : undefined;
  // Before the controller is opened: every thread the runtime starts from here on inherits it.
  if (engine) {
    const why = engine.refuse({ api, queues: nQueues, workers: args.workers === true });
    if (why !== undefined) throw new UsageError(`${engine.tool}: ${why}\n${usage}`);
  }
  if (cpus) pinProcess(cpus);

  // Our own signal handling: the first SIGINT/SIGTERM/SIGHUP stops the jobs (Workers included)
  // and still reports; the controller is closed once nothing runs on its queues any more.
  const progress = new Float64Array(new SharedArrayBuffer(8 * progressSlots(nQueues)));
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled = sig === "SIGINT" ? 130 : sig === "SIGTERM" ? 143 : 129;
    progress[0] = 1;
  };
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, onSignal);

  using ctrl = openController(args, { handleSignals: false });
  const ns = new Namespace(ctrl, nsid);
  const bs = bsArg;
  if (bs % ns.lbaSize !== 0 || bs === 0) throw new UsageError(`--bs=${bs} is not a multiple of namespace ${nsid}'s ${ns.lbaSize}-byte blocks`);
  if (bs > ns.maxTransfer) throw new UsageError(`--bs=${bs} exceeds the largest command (${ns.maxTransfer} bytes: MDTS)`);
  if (offsetBytes % ns.lbaSize !== 0) throw new UsageError(`--offset=${offsetBytes} is not a multiple of ${ns.lbaSize}`);
  const firstLba = offsetBytes / ns.lbaSize;
  const spanBlocks = sizeBytes === undefined ? ns.blocks - firstLba : Math.floor(sizeBytes / ns.lbaSize);
  if (firstLba >= ns.blocks || spanBlocks < 1 || firstLba + spanBlocks > ns.blocks) {
    throw new UsageError(`region ${offsetBytes}+${sizeBytes ?? "end"} bytes is outside namespace ${nsid} (${ns.blocks * ns.lbaSize} bytes)`);
  }
  const mqes = ctrl.cap.mqes + 1;
  const entries = Math.max(2, qd + 1);
  if (entries > mqes) throw new UsageError(`--qd=${qd}: the controller's queues hold at most ${mqes - 1} commands (CAP.MQES)`);

  const granted = ctrl.setNumberOfQueues(nQueues);
  if (granted.sqs < nQueues || granted.cqs < nQueues) {
    throw new UsageError(`--queues=${nQueues}: the controller granted ${Math.min(granted.sqs, granted.cqs)} I/O queue pairs`);
  }
  const queues: AnyIoQueue[] = [];
  const bufs: DmaBuffer[] = [];
  const workloads: Workload[] = [];
  const blocksPerIo = bs / ns.lbaSize;
  // Sequential jobs each take their own part of the region; random ones all cover it.
  const part = pattern === "seq" ? Math.floor(spanBlocks / nQueues / blocksPerIo) * blocksPerIo : spanBlocks;
  if (part < blocksPerIo) throw new UsageError(`the region is too small for ${nQueues} sequential streams of ${bs}-byte commands`);
  for (let i = 0; i < nQueues; i++) {
    const q = ctrl.createIoQueue({ entries });
    queues.push(q);
    bufs.push(ctrl.allocBuffer(q.depth * bs));
    workloads.push({
      nsid,
      lbaSize: ns.lbaSize,
      firstLba: pattern === "seq" ? firstLba + i * part : firstLba,
      spanBlocks: part,
      bs,
      qd,
      pattern,
      rw,
      rwmixRead,
      ...(seconds !== undefined ? { seconds } : { ios: iosArg! }),
      warmupSeconds,
      api,
      seed: (seed + i * 0x9e3779b9) >>> 0,
      idleSleepUs,
      ...(turnaroundDelayUs > 0 ? { turnaroundDelayUs } : {}),
      ...(typeof args.mark === "string" && args.mark !== "" ? { markFile: args.mark } : {}),
    });
  }

  const what =
    `${ctrl.name} ns ${nsid} (${ns.blocks} blocks of ${ns.lbaSize} bytes): ${pattern} ${rw}${rw === "mix" ? ` ${rwmixRead}% reads` : ""}, ` +
    `bs ${bs}, qd ${qd}, ${nQueues} queue pair${nQueues === 1 ? "" : "s"}${args.workers || nQueues > 1 ? " (one Worker each)" : ""}, ${api === "low" ? "low-level" : "async"} API, ` +
    `${seconds !== undefined ? `${seconds} s` : `${iosArg} commands per queue`}${warmupSeconds > 0 ? ` after ${warmupSeconds} s warm-up` : ""}`;
  if (!args.json) process.stderr.write(`perf: ${what}\n`);

  // A progress line on a terminal, at most every 250 ms.
  const showProgress = process.stderr.isTTY === true && !args.json;
  const t0 = performance.now();
  let lastDraw = 0;
  let drawn = false;
  let lastIos = 0;
  let lastT = t0;
  const tick = () => {
    if (!showProgress) return;
    const now = performance.now();
    if (now - lastDraw < 250) return;
    let ios = 0;
    let bytes = 0;
    let measuring = true;
    for (let i = 0; i < nQueues; i++) {
      ios += progress[1 + 3 * i]!;
      bytes += progress[2 + 3 * i]!;
      if (progress[3 + 3 * i] !== 1) measuring = false;
    }
    const rate = ((ios - lastIos) / (now - lastT)) * 1000;
    lastIos = ios;
    lastT = now;
    lastDraw = now;
    const elapsed = (now - t0) / 1000;
    const total = seconds !== undefined ? `/${(seconds + warmupSeconds).toFixed(0)}` : "";
    writeSync(2, `\r[${elapsed.toFixed(1)}${total} s] ${measuring ? "" : "warming up "}${Math.round(rate)} IOPS, ${ios} commands, ${(bytes / MiB).toFixed(1)} MiB\x1b[K`);
    drawn = true;
  };

  const useWorkers = nQueues > 1 || args.workers === true;
  let results: JobResult[];
  if (engine) results = [await engine.run(ctrl, queues[0]!, bufs[0]!, workloads[0]!, progress, 0)];
  else results = await runAll(ctrl, queues, bufs, workloads, progress, tick, useWorkers);
  if (drawn) writeSync(2, "\r\x1b[K");

  const total = new LatencyHistogram();
  const perQueue = results.map((r) => {
    const h = new LatencyHistogram(r.hist.counts);
    h.count = r.hist.count;
    h.sum = r.hist.sum;
    h.min = r.hist.min;
    h.max = r.hist.max;
    total.merge(h);
    return report(r, h);
  });
  const sum = (k: "ios" | "reads" | "writes" | "bytes" | "errors") => results.reduce((a, r) => a + r[k], 0);
  // Jobs run over one common interval: total IOPS is the sum of the queues' rates.
  const totalSeconds = Math.max(...results.map((r) => r.seconds));
  const totalReport = report(
    {
      qid: 0,
      ios: sum("ios"),
      reads: sum("reads"),
      writes: sum("writes"),
      bytes: sum("bytes"),
      errors: sum("errors"),
      seconds: totalSeconds,
      warmupSeconds: Math.max(...results.map((r) => r.warmupSeconds)),
      ...(results.some((r) => r.jitQuiet !== undefined) ? { jitQuiet: results.every((r) => r.jitQuiet !== false) } : {}),
    },
    total,
  );
  totalReport.iops = Number(perQueue.reduce((a, r) => a + r.iops, 0).toFixed(1));
  totalReport.mibPerSec = Number(perQueue.reduce((a, r) => a + r.mibPerSec, 0).toFixed(2));
  const firstError = results.find((r) => r.firstError)?.firstError;
  if (firstError) totalReport.firstError = firstError;
  const interrupted = results.some((r) => r.interrupted) || signalled !== 0;

  if (plot) {
    writeFileSync(plot, latencySvg(total, `${pattern} ${rw}, bs ${bs}, qd ${qd} x ${nQueues} queue${nQueues === 1 ? "" : "s"} (${api} API)`, totalReport));
  }

  if (args.json) {
    process.stdout.write(
      toJson({
        tool: engine?.tool ?? "libnvm examples/perf.ts",
        engine: engine?.name ?? "ts",
        date: new Date().toISOString(),
        ctrl: ctrl.name,
        backend: ctrl.transport === "tcp" ? "tcp" : ctrl.backend.kind,
        nsid,
        lbaSize: ns.lbaSize,
        nsBlocks: ns.blocks,
        workload: { pattern, rw, rwmixRead, bs, qd, queues: nQueues, workers: useWorkers, api, idleSleepUs, turnaroundDelayUs, seconds, ios: iosArg, warmupSeconds, firstLba, spanBlocks, seed, cpus },
        queues: perQueue,
        total: totalReport,
        interrupted,
        ...(plot ? { plot } : {}),
      }) + "\n",
    );
  } else {
    const out: string[] = [];
    perQueue.forEach((r, i) => out.push(textReport(`Queue #${String(i + 1).padStart(2, "0")} qid=${r.qid} qd=${qd}`, r)));
    if (nQueues > 1) out.push(textReport(`Total (${nQueues} queue pairs)`, totalReport));
    if (interrupted) out.push("interrupted: the figures cover the time until the signal");
    if (plot) out.push(`latency histogram: ${plot}`);
    process.stdout.write(out.join("\n") + "\n");
  }
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.off(s, onSignal);
  if (totalReport.errors > 0) process.exitCode = 1;
  if (signalled) process.exitCode = signalled;
}

/** The usage text, for `libnvm perf --help`. */
export const PERF_USAGE = usage;

if (import.meta.main) await run(() => perf(Bun.argv.slice(2)));
