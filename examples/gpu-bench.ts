/**
 * GPU-initiated I/O benchmark: random reads (or writes, or a mix) issued by GPU threads through
 * the queue core (lib/gpu), or by host threads running the same queue code (--device=cpu): IOPS,
 * MiB/s, latency percentiles, errors and timeouts. --verify first writes a known pattern over the
 * range (each block's bytes are a function of its LBA), then checks every block read.
 * WRITES (--verify, --rw=write|mix) OVERWRITE THE RANGE.
 *
 *   bun run examples/gpu-bench.ts --ctrl=05:00.0 --ns=1 --device=cuda --threads=4096 --queues=4 --entries=1024 --bs=4k --seconds=10
 *   bun run examples/gpu-bench.ts --ctrl=05:00.0 --device=cpu --threads=4 --depth=16 --queues=2 --seconds=5 --verify --size=64m
 */
import { createGpuQueues, type GpuBenchResult } from "../lib/gpu/index.ts";
import { Namespace } from "../lib/namespace.ts";
import { intOption, openController, parse, run, toJson, UsageError } from "./common.ts";

const usage = `usage: bun run examples/gpu-bench.ts --ctrl=BDF [--ns=NSID] [--device=cuda|cpu] [--mode=shared|coop] [--threads=T]
                 [--depth=D] [--lanes=L] [--queues=Q] [--entries=E] [--bs=SIZE] [--seconds=S | --ios=N] [--rw=read|write|mix]
                 [--rwmix=PCT] [--offset=SIZE] [--size=SIZE] [--verify] [--timeout=MS] [--seed=N] [--cuda-device=N] [--json]
  Random I/O issued by GPU threads (--device=cuda) or by host threads running the same queue code
  (--device=cpu), on Q queue pairs of E entries each. Reports IOPS, MiB/s, latency (min, mean, max,
  p1 ... p99.9), NVMe errors, timeouts and, with --verify, blocks that did not read back their pattern.
  WRITES OVERWRITE THE RANGE (--verify, --rw=write or mix).
  --ctrl=BDF        controller's PCI address (or /dev/disnvmN)
  --ns=NSID         namespace (default 1)
  --device=D        cuda (default): GPU threads; cpu: OS threads running the same queue code
  --mode=M          shared (default): every executor submits on its own (FIFO tickets);
                    coop: one block per queue, lanes write one SQE each, one doorbell per round
  --threads=T       shared mode: executors (default: cuda queues x (entries-1), cpu: queues)
  --depth=D         shared mode: commands each executor keeps outstanding (default 1)
  --lanes=L         coop mode: lanes per block (default: entries-1, at most 1024; cpu: 32)
  --queues=Q        I/O queue pairs (default 1)
  --entries=E       entries per SQ and CQ, a power of two (default 256, at most CAP.MQES+1)
  --bs=SIZE         bytes per command: a multiple of the LBA size (default 4k; k, m suffixes)
  --seconds=S       measure for S seconds (default 10)
  --ios=N           or: N commands in total
  --rw=RW           read (default), write, or mix (writes carry the LBA pattern)
  --rwmix=PCT       percentage of reads with --rw=mix (default 50)
  --offset=SIZE     start of the range (default 0)
  --size=SIZE       length of the range (default: to the end of the namespace)
  --verify          write the pattern over the whole range first, then check every block read
  --timeout=MS      bound of every wait of the queue code (default: the controller's, 10000)
  --seed=N          LBA and pattern seed (default: from the clock)
  --cuda-device=N   GPU ordinal (default 0)
  --json            print one JSON object on stdout
  -h, --help        this text
`;

const KiB = 1024;
const MiB = 1024 * KiB;

function sizeOption(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([kmg])?(i?b)?$/i.exec(String(v).trim());
  if (!m) throw new UsageError(`--${name}=${String(v)}: expected a size like 4096, 4k, 128k or 1m\n${usage}`);
  const unit = (m[2] ?? "").toLowerCase();
  const n = Number(m[1]) * (unit === "k" ? KiB : unit === "m" ? MiB : unit === "g" ? 1024 * MiB : 1);
  if (!Number.isSafeInteger(n)) throw new UsageError(`--${name}=${String(v)} is too large`);
  return n;
}

function choice<T extends string>(name: string, v: unknown, options: readonly T[], dflt: T): T {
  if (v === undefined) return dflt;
  if (!(options as readonly string[]).includes(String(v))) throw new UsageError(`--${name}=${String(v)}: choose ${options.join(" or ")}\n${usage}`);
  return v as T;
}

function text(label: string, r: GpuBenchResult): string {
  const l = r.latency;
  const lines = [
    `${label}: ios=${r.ios} IOPS=${r.iops.toFixed(1)} MiB/s=${r.mibPerSec.toFixed(2)} seconds=${r.seconds.toFixed(3)} reads=${r.reads} writes=${r.writes} ` +
      `errors=${r.errors} timeouts=${r.timeouts} verify_errors=${r.verifyErrors} doorbells/cmd=${r.ios ? (r.doorbells / r.ios).toFixed(3) : "0"}`,
    `\tlatency (µs) min=${l.minUs.toFixed(3)} mean=${l.meanUs.toFixed(3)} max=${l.maxUs.toFixed(3)} (histogram buckets: 1/8 of a power of two)`,
  ];
  for (const [k, v] of Object.entries(l.percentilesUs).reverse()) lines.push(`\t${`${k}:`.padEnd(7)} ${v.toFixed(3).padStart(14)}`);
  for (const b of r.brokenQueues) lines.push(`\tqueue ${b.qid} broke (${b.reason}${b.cid >= 0 ? `, cid ${b.cid}` : ""})${r.recovered.includes(b.qid) ? ": deleted and created again" : ""}`);
  if (r.firstError) lines.push(`\tfirst error: ${r.firstError}`);
  return lines.join("\n");
}

await run(async () => {
  const args = parse(usage, {
    ns: { type: "string" },
    device: { type: "string" },
    mode: { type: "string" },
    threads: { type: "string" },
    depth: { type: "string" },
    lanes: { type: "string" },
    queues: { type: "string" },
    entries: { type: "string" },
    bs: { type: "string" },
    seconds: { type: "string" },
    ios: { type: "string" },
    rw: { type: "string" },
    rwmix: { type: "string" },
    offset: { type: "string" },
    size: { type: "string" },
    verify: { type: "boolean", default: false },
    timeout: { type: "string" },
    seed: { type: "string" },
    "cuda-device": { type: "string" },
  });
  const nsid = intOption("ns", args.ns, usage) ?? 1;
  const device = choice("device", args.device, ["cuda", "cpu"] as const, "cuda");
  const mode = choice("mode", args.mode, ["shared", "coop"] as const, "shared");
  const threads = intOption("threads", args.threads, usage);
  const depth = intOption("depth", args.depth, usage);
  const lanes = intOption("lanes", args.lanes, usage);
  const queues = intOption("queues", args.queues, usage) ?? 1;
  const entries = intOption("entries", args.entries, usage);
  const bs = sizeOption("bs", args.bs) ?? 4096;
  const iosArg = intOption("ios", args.ios, usage);
  const secondsArg = args.seconds === undefined ? undefined : Number(args.seconds);
  if (secondsArg !== undefined && !(secondsArg > 0)) throw new UsageError(`--seconds=${String(args.seconds)}: a positive number of seconds\n${usage}`);
  if (iosArg !== undefined && secondsArg !== undefined) throw new UsageError(`give --seconds or --ios, not both\n${usage}`);
  if (iosArg === 0) throw new UsageError(`--ios must be positive\n${usage}`);
  const seconds = iosArg === undefined ? (secondsArg ?? 10) : undefined;
  const rw = choice("rw", args.rw, ["read", "write", "mix"] as const, "read");
  const rwmix = intOption("rwmix", args.rwmix, usage) ?? 50;
  if (rwmix > 100) throw new UsageError(`--rwmix=${rwmix}: a percentage, 0 to 100\n${usage}`);
  const readPct = rw === "read" ? 100 : rw === "write" ? 0 : rwmix;
  const offsetBytes = sizeOption("offset", args.offset) ?? 0;
  const sizeBytes = sizeOption("size", args.size);
  const timeoutMs = intOption("timeout", args.timeout, usage);
  const seed = (intOption("seed", args.seed, usage) ?? Date.now()) >>> 0;
  const cudaDevice = intOption("cuda-device", args["cuda-device"], usage) ?? 0;
  if (queues < 1 || queues > 1024) throw new UsageError(`--queues=${queues}: 1 to 1024\n${usage}`);

  using ctrl = openController(args);
  const ns = new Namespace(ctrl, nsid);
  if (bs % ns.lbaSize !== 0) throw new UsageError(`--bs=${bs} is not a multiple of namespace ${nsid}'s ${ns.lbaSize}-byte blocks`);
  if (offsetBytes % ns.lbaSize !== 0) throw new UsageError(`--offset=${offsetBytes} is not a multiple of ${ns.lbaSize}`);
  const lbaFirst = offsetBytes / ns.lbaSize;
  const lbaCount = sizeBytes === undefined ? ns.blocks - lbaFirst : Math.floor(sizeBytes / ns.lbaSize);
  if (lbaFirst >= ns.blocks || lbaCount < bs / ns.lbaSize || lbaFirst + lbaCount > ns.blocks) {
    throw new UsageError(`range ${offsetBytes}+${sizeBytes ?? "end"} bytes does not fit namespace ${nsid} (${ns.blocks * ns.lbaSize} bytes) or one ${bs}-byte command`);
  }

  using gq = createGpuQueues(ctrl, {
    device,
    mode,
    count: queues,
    ...(entries !== undefined ? { entries } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    cudaDevice,
  });
  // The executor counts createGpuQueues() would choose, so the buffer has a region for each lane.
  const executors = mode === "coop" ? queues : (threads ?? (device === "cuda" ? queues * (gq.entries - 1) : queues));
  const perExecutor = mode === "coop" ? (lanes ?? Math.min(gq.entries - 1, 1024, device === "cpu" ? 32 : 1024)) : (depth ?? 1);
  using buf = ctrl.allocBuffer(executors * perExecutor * bs);
  const ex = mode === "coop" ? { lanes: perExecutor } : { threads: executors, depth: perExecutor };
  const what =
    `${ctrl.name} ns ${nsid}: ${device === "cuda" ? `GPU ${cudaDevice}` : "host threads"}, ${mode} mode, ${queues} queue${queues === 1 ? "" : "s"} x ${gq.entries} entries, ` +
    `${mode === "coop" ? `${queues} blocks x ${perExecutor} lanes` : `${executors} executors x depth ${perExecutor}`}, bs ${bs}, ${rw}` +
    `${rw === "mix" ? ` ${rwmix}% reads` : ""}, LBAs ${lbaFirst}+${lbaCount}, ${seconds !== undefined ? `${seconds} s` : `${iosArg} commands`}${args.verify ? ", verified" : ""}`;
  if (!args.json) process.stderr.write(`gpu-bench: ${what}\n`);

  let fill: GpuBenchResult | undefined;
  if (args.verify) {
    // Every block of the range gets its pattern first, in order, by the same executors.
    const bpc = bs / ns.lbaSize;
    if (!args.json) process.stderr.write(`gpu-bench: writing the pattern over ${lbaCount} blocks first\n`);
    fill = await gq.bench({ ns, buffer: buf, bs, ...ex, readPct: 0, pattern: "seq", ios: Math.floor(lbaCount / bpc), lbaFirst, lbaCount, seed });
    if (!args.json) process.stdout.write(text("pattern writes", fill) + "\n");
  }
  const res = await gq.bench({
    ns,
    buffer: buf,
    bs,
    ...ex,
    readPct,
    verify: args.verify,
    lbaFirst,
    lbaCount,
    seed,
    ...(seconds !== undefined ? { seconds } : { ios: iosArg! }),
  });

  const bad = (r: GpuBenchResult | undefined) => (r ? r.errors + r.timeouts + r.verifyErrors : 0);
  if (args.json) {
    process.stdout.write(
      toJson({
        tool: "libnvm examples/gpu-bench.ts",
        date: new Date().toISOString(),
        ctrl: ctrl.name,
        backend: ctrl.backend.kind,
        nsid,
        lbaSize: ns.lbaSize,
        workload: { device, mode, queues, entries: gq.entries, executors, depth: perExecutor, bs, rw, readPct, seconds, ios: iosArg, lbaFirst, lbaCount, verify: args.verify, seed },
        ...(fill ? { fill: { ...fill, histogram: undefined } } : {}),
        result: { ...res, histogram: undefined },
      }) + "\n",
    );
  } else {
    process.stdout.write(text("result", res) + "\n");
  }
  if (bad(fill) + bad(res) > 0 || (fill?.brokenQueues.length ?? 0) + res.brokenQueues.length > 0) process.exitCode = 1;
});
