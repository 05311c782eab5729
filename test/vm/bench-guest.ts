/**
 * Side by side in one guest boot, on the same emulated controller: our driver (examples/perf.ts,
 * controller unbound) and then the kernel's nvme driver (fio through /dev/nvme0n1: io_uring with
 * interrupts and libaio, then io_uring polled with --hipri after reloading nvme with
 * poll_queues=2), for 4 KiB random read and write at QD 1, 4, 32 and 128 and 128 KiB sequential
 * read and write at QD 8. The drivers alternate per workload (ours, kernel, kernel polled, next
 * workload), so a change in the host's load hits a whole row rather than a whole column. Then the
 * cost of growth for ours: IOPS against queue depth, and against the number of queue pairs (one
 * Worker each). Then the queue core's host mode (examples/gpu-bench.ts --device=cpu: C threads
 * running the code GPU threads run) against examples/perf.ts at the same total queue depth,
 * alternating per row. Prints the tables (ours, kernel, ratio; core, TypeScript, ratio) and writes
 * every figure as JSON.
 *
 * First, ours against the C reference driver (bench/perf-c.ts: the same job, queue pair and LBA
 * sequence with its loop in C): 4 KiB random read and write at QD 1, 4, 32, 128 and 128 KiB
 * sequential read at QD 8, both pinned to one vCPU (--cpu), taking turns in pairs (who goes
 * first alternates, the seed is the pair's), the pairs spread over the whole section, so the host's
 * load hits both alike; per workload the median of the pairs' TS/C ratios. --boots N repeats the
 * whole boot N times and reports the median of the boots' medians.
 *
 * Last, NVMe/TCP: ours against the kernel's nvme-tcp host, both against Linux nvmet on loopback.
 *
 *   bun run bench:guest [--seconds 5] [--warmup 1] [--repeat 1] [--pairs 3] [--boots 1] [--ns-size 1G]
 *                       [--c-only | --skip-c] [--only-core | --skip-core] [--tcp-only | --skip-tcp] [--json] [--out FILE]
 *
 * On the host it installs fio when missing (the guest runs the host's root), boots the guest and
 * runs itself inside with --inside. Figures come from an emulated (TCG) machine whose CPUs are
 * shared with everything else on the host: they compare drivers within one boot, nothing more.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { describeMachine, machineInfo, qemuVersion, table, type MachineInfo } from "../../bench/machine.ts";
import { benchNative } from "../../bench/bench-native.ts";
import type { SliceFigure } from "../../bench/perf-alternate.ts";
import { cleanup, clocksourceArgs, guestToolMain, parseSize, runInGuest } from "./run.ts";

const { values: opts } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    inside: { type: "boolean", default: false },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "5" },
    repeat: { type: "string", default: "1" },
    "ns-size": { type: "string", default: "1G" },
    "skip-growth": { type: "boolean", default: false },
    "skip-kernel": { type: "boolean", default: false },
    "skip-c": { type: "boolean", default: false },
    "c-only": { type: "boolean", default: false },
    pairs: { type: "string", default: "3" },
    separate: { type: "boolean", default: false },
    slices: { type: "string", default: "10" },
    boots: { type: "string", default: "1" },
    cpu: { type: "string", default: "1" },
    "skip-tcp": { type: "boolean", default: false },
    "tcp-only": { type: "boolean", default: false },
    "tcp-ns-size": { type: "string", default: "512M" },
    "skip-core": { type: "boolean", default: false },
    "only-core": { type: "boolean", default: false },
    only: { type: "string" },
    json: { type: "boolean", default: false },
    out: { type: "string" },
    timeout: { type: "string" },
    clocksource: { type: "string", default: "tsc" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const USAGE = `usage: bun test/vm/bench-guest.ts [--seconds S] [--warmup S] [--repeat N] [--ns-size 1G] [--only NAME,...]
                                 [--slices N | --separate [--pairs N]] [--boots N] [--cpu N] [--c-only | --skip-c]
                                 [--skip-growth] [--skip-kernel] [--skip-core | --only-core] [--skip-tcp | --tcp-only]
                                 [--tcp-ns-size 512M] [--clocksource tsc|hpet] [--json] [--out FILE] [--timeout SEC]
  Boots the QEMU guest once and runs examples/perf.ts against the C reference driver (bench/perf-c.ts),
  then against fio through the kernel's nvme driver, on the same emulated controller; prints
  ours / C and ours / kernel per workload, the growth tables, the queue core against perf.ts and
  ours against the kernel over NVMe/TCP. At most one of --c-only, --only-core, --tcp-only.
  --seconds S    measured seconds per run (default 5); --warmup S before each (default 5: the JIT
                 tiers up slowly under TCG; fio gets the same ramp_time)
  --repeat N     runs per figure, the median is reported (default 1)
  --slices N     TS/C section: per workload one process (bench/perf-alternate.ts) in which TS and C take
                 turns on the queue pair in 1 s slices, N slices each (default 10): adjacent slices see the
                 same host load, so the ratio holds on a shared machine
  --separate     instead, separate runs of each driver, --pairs N per workload (default 3), taking turns
  --boots N      boot the guest N times; the TS/C table is then the median of the boots' medians
  --cpu N        the vCPU both drivers of the TS/C section are pinned to (default 1)
  --c-only       only the TS/C section; --skip-c leaves it out
  --ns-size SZ   namespace size (default 1G; written once in full before the reads)
  --only LIST    workloads by name (e.g. randread-qd1,seqwrite-qd8)
  --only-core    only the queue core's host mode against perf.ts (4 KiB random reads)
  --skip-core    leave that comparison out
  --skip-tcp     leave out the NVMe/TCP section; --tcp-only: only it
  --tcp-ns-size  the brd namespace nvmet serves for the NVMe/TCP section (default 512M)
  --clocksource  the guest kernel's: tsc (default, tsc=reliable; a clock read costs ~0.5 µs under TCG)
                 or hpet (the kernel's own choice under TCG, ~2 µs a read, as in figures before 2026-12-06)
  --json         print the JSON document instead of the tables; --out FILE also writes it
`;
if (opts.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const SECONDS = Number(opts.seconds);
const WARMUP = Number(opts.warmup);
const REPEAT = Math.max(1, Math.floor(Number(opts.repeat)));
const PAIRS = Math.max(1, Math.floor(Number(opts.pairs)));
const SLICES = Math.max(1, Math.floor(Number(opts.slices)));
const BOOTS = Math.max(1, Math.floor(Number(opts.boots)));
const PIN_CPU = Math.floor(Number(opts.cpu));
if (!(SECONDS > 0) || !(WARMUP >= 0) || !Number.isFinite(REPEAT) || !Number.isFinite(PAIRS) || !Number.isFinite(BOOTS) || !(PIN_CPU >= 0) ||
  (opts["c-only"] && opts["skip-c"]) || (opts["only-core"] && opts["skip-core"]) || (opts["tcp-only"] && opts["skip-tcp"]) ||
  [opts["c-only"], opts["only-core"], opts["tcp-only"]].filter(Boolean).length > 1) {
  process.stderr.write(USAGE);
  process.exit(2);
}
/** Which sections run: --c-only, --only-core and --tcp-only each leave out every other one. */
const RUN = {
  c: !opts["skip-c"] && !opts["only-core"] && !opts["tcp-only"],
  main: !opts["c-only"] && !opts["only-core"] && !opts["tcp-only"],
  core: !opts["skip-core"] && !opts["c-only"] && !opts["tcp-only"],
  growth: !opts["skip-growth"] && !opts["c-only"] && !opts["only-core"] && !opts["tcp-only"],
  tcp: !opts["skip-tcp"] && !opts["c-only"] && !opts["only-core"],
};

interface Workload {
  name: string;
  pattern: "rand" | "seq";
  rw: "read" | "write";
  bs: number;
  qd: number;
}

const WORKLOADS: Workload[] = [
  ...[1, 4, 32, 128].map((qd): Workload => ({ name: `randread-qd${qd}`, pattern: "rand", rw: "read", bs: 4096, qd })),
  ...[1, 4, 32, 128].map((qd): Workload => ({ name: `randwrite-qd${qd}`, pattern: "rand", rw: "write", bs: 4096, qd })),
  { name: "seqread-qd8", pattern: "seq", rw: "read", bs: 131072, qd: 8 },
  { name: "seqwrite-qd8", pattern: "seq", rw: "write", bs: 131072, qd: 8 },
];
/** The TS/C section's workloads (issue 13): 4 KiB random read and write at four depths, 128 KiB sequential read. */
const C_WORKLOADS: Workload[] = WORKLOADS.filter((w) => w.name !== "seqwrite-qd8");
const GROWTH_QD = [1, 2, 4, 8, 16, 32, 64, 128];
const GROWTH_QUEUES = [1, 2, 4];
const GROWTH_QUEUES_QD = 32;
/** Hybrid polling for the queue-pair growth rows: sleep this long after 64 empty polls. */
const GROWTH_IDLE_SLEEP_US = 50;
const ENGINES = ["io_uring", "io_uring-hipri", "libaio"] as const;
/**
 * The queue core's host mode against examples/perf.ts, 4 KiB random reads at the same total queue
 * depth: perf.ts keeps qd outstanding on one queue from the JS thread; the core runs `threads` C
 * threads keeping `depth` each on one queue (shared mode).
 */
const CORE_ROWS = [
  { qd: 1, threads: 1, depth: 1 },
  { qd: 4, threads: 1, depth: 4 },
  { qd: 32, threads: 1, depth: 32 },
  { qd: 32, threads: 2, depth: 16 },
  { qd: 128, threads: 1, depth: 128 },
  { qd: 128, threads: 2, depth: 64 },
];
type Engine = (typeof ENGINES)[number];

/** One measurement: IOPS, MiB/s and latency in microseconds (ours: submit to reap; fio: lat = slat + clat). */
interface Figure {
  iops: number;
  mibPerSec: number;
  latUs: { mean: number; p50: number; p99: number; p999: number; max: number };
  runs: number[];
  error?: string;
}

interface Results {
  machine: MachineInfo & {
    fio?: string;
    guestKernel?: string;
    /** The guest kernel's clocksource (--clocksource). */
    clocksource?: string;
    hostKernel?: string;
    hostCpu?: string;
    hostNproc?: number;
    /** Host load averages before the boot and after the run (filled in on the host). */
    hostLoad?: { start: number[]; end: number[] };
  };
  config: { seconds: number; warmup: number; repeat: number; nsSize: number; lbaSize: number; ctrl: string };
  ours: Record<string, Figure>;
  /** TS (examples/perf.ts) against the C reference (bench/perf-c.ts), pinned, taking turns. */
  cref?: CRef;
  kernel: Partial<Record<Engine, Record<string, Figure>>>;
  kernelNotes: string[];
  /** NVMe/TCP: ours against the kernel's nvme-tcp host, both against nvmet on loopback (brd). */
  tcp?: { ours: Record<string, Figure>; kernel: Record<string, Figure>; notes: string[]; uri: string; nsSize: number };
  growth: {
    qd: { qd: number; fig: Figure }[];
    queues: { queues: number; qd: number; fig: Figure; perQueue: number[]; hybrid?: Figure }[];
    /** The kernel (io_uring, interrupts) with as many fio jobs as our queue pairs, same depth each. */
    kernelJobs: { jobs: number; qd: number; fig: Figure }[];
  };
  /** The queue core's host mode against perf.ts at the same total queue depth. */
  core: { qd: number; threads: number; depth: number; core: Figure; ts: Figure }[];
}

interface CRef {
  /** separate: one process per run, in pairs; alternate: TS and C take turns in 1 s slices in one process. */
  method?: "separate" | "alternate";
  /** Pairs of runs, or of slices. */
  pairs: number;
  cpu: number;
  /** Per workload, the runs in the order they ran (ts[i] and c[i] are pair i). */
  rows: Record<string, { ts: Figure[]; c: Figure[] }>;
}

function sh(cmd: string[], timeoutMs = 600_000): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
}

function log(s: string): void {
  process.stderr.write(`bench-guest: ${s}\n`);
}

// ==== in the guest =================================================================================

interface PerfJson {
  total: { iops: number; mibPerSec: number; errors: number; firstError?: string; latencyUs: { mean: number; max: number; percentiles: Record<string, number> } };
  queues: { iops: number }[];
}

const NO_FIGURE: Figure = { iops: 0, mibPerSec: 0, latUs: { mean: 0, p50: 0, p99: 0, p999: 0, max: 0 }, runs: [] };

/** The run with the median IOPS of several, with every run's IOPS and the last error seen. */
function combine(runs: Figure[]): Figure {
  const ok = runs.filter((r) => !r.error || r.iops > 0);
  const error = runs.find((r) => r.error)?.error;
  if (ok.length === 0) return { ...NO_FIGURE, error: error ?? "no run" };
  const pick = [...ok].sort((x, y) => x.iops - y.iops)[Math.floor((ok.length - 1) / 2)]!;
  return { ...pick, runs: runs.map((r) => r.iops), ...(error ? { error } : {}) };
}

/** One run of examples/perf.ts (or of the C reference, bench/perf-c.ts); `perQueue` holds each queue pair's IOPS. */
function ours(
  ctrl: string,
  w: { pattern: string; rw: string; bs: number; qd: number },
  queues = 1,
  workers = false,
  idleSleepUs = 0,
  extra: { tool?: string; cpu?: number; seed?: number } = {},
): Figure & { perQueue: number[] } {
  const tool = extra.tool ?? "examples/perf.ts";
  const r = sh([
    "bun", tool, `--ctrl=${ctrl}`, "--ns=1", `--qd=${w.qd}`, `--bs=${w.bs}`, `--pattern=${w.pattern}`, `--rw=${w.rw}`,
    `--seconds=${SECONDS}`, `--warmup=${WARMUP}`, `--queues=${queues}`, ...(workers ? ["--workers"] : []), `--idle-sleep=${idleSleepUs}`,
    ...(extra.cpu !== undefined ? [`--cpu=${extra.cpu}`] : []), ...(extra.seed !== undefined ? [`--seed=${extra.seed}`] : []), "--json",
  ]);
  if (r.code !== 0) return { ...NO_FIGURE, perQueue: [], error: `${tool} exited ${r.code}: ${r.err.trim().split("\n").slice(-2).join(" ")}` };
  const j = JSON.parse(r.out) as PerfJson;
  const t = j.total;
  return {
    iops: t.iops,
    mibPerSec: t.mibPerSec,
    latUs: { mean: t.latencyUs.mean, p50: t.latencyUs.percentiles.p50!, p99: t.latencyUs.percentiles.p99!, p999: t.latencyUs.percentiles["p99.9"]!, max: t.latencyUs.max },
    runs: [t.iops],
    perQueue: j.queues.map((q) => q.iops),
    ...(t.errors > 0 ? { error: `${t.errors} commands failed: ${t.firstError}` } : {}),
  };
}

/** One run of examples/gpu-bench.ts --device=cpu: 4 KiB random reads on one queue. */
function core(ctrl: string, threads: number, depth: number): Figure {
  let entries = 2;
  while (entries < threads * depth + 1) entries *= 2;
  const r = sh([
    "bun", "examples/gpu-bench.ts", `--ctrl=${ctrl}`, "--ns=1", "--device=cpu", "--queues=1", `--entries=${entries}`, `--threads=${threads}`, `--depth=${depth}`,
    "--bs=4k", `--seconds=${SECONDS}`, "--json",
  ]);
  if (!r.out.trim()) return { ...NO_FIGURE, error: `gpu-bench exited ${r.code}: ${r.err.trim().split("\n").slice(-2).join(" ")}` };
  const res = (JSON.parse(r.out) as { result: { iops: number; mibPerSec: number; errors: number; timeouts: number; firstError?: string; latency: { meanUs: number; maxUs: number; percentilesUs: Record<string, number> } } }).result;
  const l = res.latency;
  return {
    iops: Number(res.iops.toFixed(1)),
    mibPerSec: Number(res.mibPerSec.toFixed(2)),
    latUs: { mean: l.meanUs, p50: l.percentilesUs.p50!, p99: l.percentilesUs.p99!, p999: l.percentilesUs["p99.9"]!, max: l.maxUs },
    runs: [Number(res.iops.toFixed(1))],
    ...(res.errors + res.timeouts > 0 || r.code !== 0 ? { error: `${res.errors} errors, ${res.timeouts} timeouts${res.firstError ? `: ${res.firstError}` : ""}` } : {}),
  };
}

interface FioJob {
  error: number;
  read: FioDir;
  write: FioDir;
}
interface FioDir {
  iops: number;
  bw_bytes: number;
  lat_ns: { mean: number; max: number };
  clat_ns: { percentile?: Record<string, number> };
}

/** One fio run through the kernel's driver (`jobs` > 1: that many threads, --group_reporting). */
function fio(dev: string, w: Workload, engine: Engine, jobs = 1): Figure {
  const rw = w.pattern === "rand" ? `rand${w.rw}` : w.rw;
  const r = sh([
    "fio", "--name=bench", `--filename=${dev}`, "--direct=1", `--ioengine=${engine === "libaio" ? "libaio" : "io_uring"}`,
    ...(engine === "io_uring-hipri" ? ["--hipri"] : []),
    `--rw=${rw}`, `--bs=${w.bs}`, `--iodepth=${w.qd}`, `--runtime=${SECONDS}`, `--ramp_time=${WARMUP}`, "--time_based",
    "--norandommap", "--randrepeat=0", `--numjobs=${jobs}`, "--group_reporting", "--output-format=json", "--percentile_list=50:99:99.9",
  ]);
  if (r.code !== 0) return { ...NO_FIGURE, error: `fio exited ${r.code}: ${r.err.trim().split("\n").slice(-2).join(" ")}` };
  const job = (JSON.parse(r.out.slice(r.out.indexOf("{"))) as { jobs: FioJob[] }).jobs[0]!;
  const dir = w.rw === "read" ? job.read : job.write;
  const pct = dir.clat_ns.percentile ?? {};
  const p = (k: string) => Number(((pct[k] ?? 0) / 1000).toFixed(3));
  return {
    iops: Number(dir.iops.toFixed(1)),
    mibPerSec: Number((dir.bw_bytes / 1048576).toFixed(2)),
    // fio's lat = slat + clat; its percentiles are of clat (submission to completion).
    latUs: { mean: Number((dir.lat_ns.mean / 1000).toFixed(3)), p50: p("50.000000"), p99: p("99.000000"), p999: p("99.900000"), max: Number((dir.lat_ns.max / 1000).toFixed(3)) },
    runs: [Number(dir.iops.toFixed(1))],
    ...(job.error ? { error: `fio job error ${job.error}` } : {}),
  };
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await Bun.sleep(100);
  }
  return cond();
}

/** Load the kernel's nvme driver (it probes the unbound controller) and wait for the namespace. */
async function loadNvme(ctrl: string, params: string[], notes: string[]): Promise<string | undefined> {
  const modroot = process.env.LIBNVM_VM_MODROOT;
  const r = sh(["modprobe", ...(modroot ? ["-d", modroot] : []), "nvme", ...params]);
  if (r.code !== 0) {
    notes.push(`modprobe nvme ${params.join(" ")} failed: ${r.err.trim()}`);
    return undefined;
  }
  const dev = "/dev/nvme0n1";
  if (!(await waitFor(() => existsSync(dev) && existsSync("/sys/block/nvme0n1/queue/io_poll"), 20_000))) {
    notes.push(`nvme ${params.join(" ")}: ${dev} did not appear (driver: ${driverOf(ctrl) ?? "none"})`);
    return undefined;
  }
  return dev;
}

function driverOf(ctrl: string): string | undefined {
  try {
    return readFileSync(`/sys/bus/pci/devices/${ctrl}/driver/module/drivers`, "utf8").trim();
  } catch {
    const r = sh(["readlink", `/sys/bus/pci/devices/${ctrl}/driver`]);
    return r.code === 0 ? r.out.trim().split("/").pop() : undefined;
  }
}

function unloadNvme(ctrl: string, notes: string[]): void {
  try {
    writeFileSync("/sys/bus/pci/drivers/nvme/unbind", ctrl);
  } catch (e) {
    notes.push(`unbind ${ctrl} from nvme: ${(e as Error).message}`);
  }
  const r = sh(["rmmod", "nvme"]);
  if (r.code !== 0) notes.push(`rmmod nvme: ${r.err.trim()}`);
}

/**
 * Ours against the C reference, each run pinned to vCPU PIN_CPU: PAIRS rounds over every
 * workload, each round one run of each driver with the round's seed (the same LBA sequence), the
 * first driver alternating from round to round.
 */
function cReference(ctrl: string, workloads: Workload[]): CRef {
  const rows: CRef["rows"] = {};
  for (const w of workloads) rows[w.name] = { ts: [], c: [] };
  if (!opts.separate) {
    for (const w of workloads) {
      log(`TS/C ${w.name}: bench/perf-alternate.ts on vCPU ${PIN_CPU}, ${SLICES} slice pairs of 1 s`);
      const r = sh([
        "bun", "bench/perf-alternate.ts", `--ctrl=${ctrl}`, "--ns=1", `--qd=${w.qd}`, `--bs=${w.bs}`, `--pattern=${w.pattern}`, `--rw=${w.rw}`,
        `--seconds=${2 * SLICES}`, `--warmup=${WARMUP}`, `--cpu=${PIN_CPU}`, "--seed=1000", "--slice=1", "--json",
      ]);
      const line = r.err.split("\n").find((l) => l.startsWith("alternate: "));
      if (r.code !== 0 || !line) {
        const error = `perf-alternate exited ${r.code}: ${r.err.trim().split("\n").slice(-2).join(" ")}`;
        rows[w.name] = { ts: [{ ...NO_FIGURE, error }], c: [{ ...NO_FIGURE, error }] };
        continue;
      }
      const slices = (JSON.parse(line.slice("alternate: ".length)) as { slices: { ts: SliceFigure; c: SliceFigure }[] }).slices;
      const fig = (f: SliceFigure): Figure => ({
        iops: f.iops,
        mibPerSec: (f.iops * w.bs) / 2 ** 20,
        latUs: { mean: 0, p50: f.p50Us, p99: 0, p999: 0, max: 0 },
        runs: [f.iops],
        ...(f.errors > 0 ? { error: `${f.errors} commands failed` } : {}),
      });
      rows[w.name] = { ts: slices.map((x) => fig(x.ts)), c: slices.map((x) => fig(x.c)) };
    }
    return { pairs: SLICES, cpu: PIN_CPU, method: "alternate", rows };
  }
  for (let pair = 0; pair < PAIRS; pair++) {
    const seed = 1000 + pair;
    for (const w of workloads) {
      const order = pair % 2 === 0 ? (["ts", "c"] as const) : (["c", "ts"] as const);
      for (const who of order) {
        log(`TS/C pair ${pair + 1}/${PAIRS} ${w.name}: ${who === "ts" ? "examples/perf.ts" : "bench/perf-c.ts"} on vCPU ${PIN_CPU}`);
        const f = ours(ctrl, w, 1, false, 0, { tool: who === "ts" ? "examples/perf.ts" : "bench/perf-c.ts", cpu: PIN_CPU, seed });
        rows[w.name]![who].push(f);
      }
    }
  }
  return { pairs: PAIRS, cpu: PIN_CPU, method: "separate", rows };
}

// ---- NVMe/TCP ------------------------------------------------------------------------------------

const TCP_SUB = "nqn.2024-01.io.libnvm:sub1";
const TCP_URI = `nvme+tcp://127.0.0.1:4420/${TCP_SUB}`;
const TCP_WORKLOADS: Workload[] = [
  { name: "randread-qd1", pattern: "rand", rw: "read", bs: 4096, qd: 1 },
  { name: "randread-qd32", pattern: "rand", rw: "read", bs: 4096, qd: 32 },
  { name: "seqread-qd8", pattern: "seq", rw: "read", bs: 131072, qd: 8 },
];

/** The kernel's nvme-tcp host connected to the bench subsystem: its block device, or undefined (noted why). */
async function kernelTcpConnect(notes: string[]): Promise<string | undefined> {
  const c = sh(["nvme", "connect", "-t", "tcp", "-a", "127.0.0.1", "-s", "4420", "-n", TCP_SUB]);
  if (c.code !== 0) {
    notes.push(`nvme connect failed: ${c.err.trim() || c.out.trim()}`);
    return undefined;
  }
  let dev: string | undefined;
  const found = await waitFor(() => {
    const l = sh(["nvme", "list", "-o", "json"]);
    try {
      const devices = (JSON.parse(l.out) as { Devices?: { DevicePath: string; SerialNumber: string; NameSpace: number }[] }).Devices ?? [];
      dev = devices.find((d) => d.SerialNumber.trim() === "LIBNVMTCP0001" && d.NameSpace === 1)?.DevicePath;
    } catch {
      dev = undefined;
    }
    return dev !== undefined && existsSync(dev);
  }, 20_000);
  if (!found) notes.push("the kernel's nvme-tcp namespace did not appear within 20 s");
  return found ? dev : undefined;
}

function kernelTcpDisconnect(notes: string[]): void {
  const d = sh(["nvme", "disconnect", "-n", TCP_SUB]);
  if (d.code !== 0) notes.push(`nvme disconnect: ${d.err.trim()}`);
}

/**
 * Linux nvmet on loopback over a brd namespace (test/hw-tcp/target.sh --bench), written once in
 * full; then per workload, interleaved: ours (examples/perf.ts over nvme+tcp://), and the kernel's
 * host (nvme connect, fio io_uring on its block device, nvme disconnect).
 */
async function tcpSection(): Promise<NonNullable<Results["tcp"]>> {
  const nsSize = parseSize(opts["tcp-ns-size"]!);
  const notes: string[] = [];
  const t = sh(["bash", "test/hw-tcp/target.sh", "--bench", String(Math.floor(nsSize / (1 << 20)))]);
  if (t.code !== 0) throw new Error(`the nvmet target did not come up: ${t.err.trim()}`);
  const modroot = process.env.LIBNVM_VM_MODROOT;
  const m = sh(["modprobe", ...(modroot ? ["-d", modroot] : []), "nvme-tcp"]);
  if (m.code !== 0) notes.push(`modprobe nvme-tcp failed: ${m.err.trim()}`);
  log(`NVMe/TCP: preconditioning ${nsSize} bytes over ${TCP_URI}`);
  const pre = sh(["bun", "examples/perf.ts", `--ctrl=${TCP_URI}`, "--ns=1", "--pattern=seq", "--rw=write", "--bs=128k", "--qd=8", `--ios=${Math.floor(nsSize / 131072)}`, "--json"]);
  if (pre.code !== 0) throw new Error(`NVMe/TCP preconditioning failed: ${pre.err.trim()}`);
  const samples = new Map<string, Figure[]>();
  const add = (key: string, f: Figure) => samples.set(key, [...(samples.get(key) ?? []), f]);
  for (let round = 0; round < REPEAT; round++) {
    for (const w of TCP_WORKLOADS) {
      log(`NVMe/TCP round ${round + 1}/${REPEAT} ${w.name}: ours`);
      add(`ours ${w.name}`, ours(TCP_URI, w));
      if (opts["skip-kernel"]) continue;
      const dev = await kernelTcpConnect(notes);
      if (dev) {
        log(`NVMe/TCP round ${round + 1}/${REPEAT} ${w.name}: kernel nvme-tcp, fio io_uring on ${dev}`);
        add(`kernel ${w.name}`, fio(dev, w, "io_uring"));
        kernelTcpDisconnect(notes);
      }
    }
  }
  const out: NonNullable<Results["tcp"]> = { ours: {}, kernel: {}, notes, uri: TCP_URI, nsSize };
  for (const w of TCP_WORKLOADS) {
    out.ours[w.name] = combine(samples.get(`ours ${w.name}`) ?? []);
    const k = samples.get(`kernel ${w.name}`);
    if (k) out.kernel[w.name] = combine(k);
  }
  return out;
}

async function inside(): Promise<Results> {
  const ctrl = process.env.LIBNVM_TEST_CTRL;
  if (!ctrl) throw new Error("LIBNVM_TEST_CTRL is not set: run this through the guest harness (bun test/vm/bench-guest.ts)");
  const expect = JSON.parse(process.env.LIBNVM_TEST_EXPECT ?? "{}") as { namespaces?: { sizeBytes: number; lbaSize: number }[] };
  const ns = expect.namespaces?.[0] ?? { sizeBytes: parseSize(opts["ns-size"]!), lbaSize: 4096 };
  const host = JSON.parse(process.env.BENCH_HOST ?? "{}") as Partial<MachineInfo>;
  const fioVersion = sh(["fio", "--version"]).out.trim();
  const results: Results = {
    machine: {
      ...machineInfo({ guest: true, ...(host.qemu ? { qemu: host.qemu } : {}) }),
      fio: fioVersion,
      guestKernel: sh(["uname", "-r"]).out.trim(),
      clocksource: readFileSync("/sys/devices/system/clocksource/clocksource0/current_clocksource", "utf8").trim(),
      hostKernel: host.kernel,
      hostCpu: host.cpu,
      hostNproc: host.nproc,
    },
    config: { seconds: SECONDS, warmup: WARMUP, repeat: REPEAT, nsSize: ns.sizeBytes, lbaSize: ns.lbaSize, ctrl },
    ours: {},
    kernel: {},
    kernelNotes: [],
    growth: { qd: [], queues: [], kernelJobs: [] },
    core: [],
  };
  const only = opts.only ? new Set(opts.only.split(",")) : undefined;
  const workloads = RUN.main ? WORKLOADS.filter((w) => !only || only.has(w.name)) : [];
  if (opts["tcp-only"]) {
    results.tcp = await tcpSection();
    return results;
  }

  // Write the whole namespace once: reads then hit allocated data for both drivers.
  log(`preconditioning: sequential 128 KiB writes over ${ns.sizeBytes} bytes`);
  const pre = sh([
    "bun", "examples/perf.ts", `--ctrl=${ctrl}`, "--ns=1", "--pattern=seq", "--rw=write", "--bs=128k", "--qd=8",
    `--ios=${Math.floor(ns.sizeBytes / 131072)}`, "--json",
  ]);
  if (pre.code !== 0) throw new Error(`preconditioning failed: ${pre.err.trim()}`);

  if (RUN.c) results.cref = cReference(ctrl, C_WORKLOADS.filter((w) => !only || only.has(w.name)));

  // Interleaved: for each workload ours, then the kernel with interrupts, then polled; the driver
  // is switched per workload, so a change in the host's load hits every column of a row alike.
  const samples = new Map<string, Figure[]>();
  const add = (key: string, f: Figure) => samples.set(key, [...(samples.get(key) ?? []), f]);
  const notes = results.kernelNotes;
  let pollChecked = false;
  for (let round = 0; round < REPEAT; round++) {
    for (const w of workloads) {
      log(`round ${round + 1}/${REPEAT} ${w.name}: ours`);
      add(`ours ${w.name}`, ours(ctrl, w));
      if (opts["skip-kernel"]) continue;
      // Interrupt-driven queues only: the stock configuration.
      let dev = await loadNvme(ctrl, [], notes);
      if (dev) {
        for (const engine of ["io_uring", "libaio"] as const) {
          log(`round ${round + 1}/${REPEAT} ${w.name}: kernel ${engine}`);
          add(`${engine} ${w.name}`, fio(dev, w, engine));
        }
        unloadNvme(ctrl, notes);
      }
      // Polled queues: nvme.poll_queues at module load, then io_uring --hipri (IORING_SETUP_IOPOLL).
      dev = await loadNvme(ctrl, ["poll_queues=2"], notes);
      if (dev) {
        if (!pollChecked) {
          pollChecked = true;
          const ioPoll = readFileSync("/sys/block/nvme0n1/queue/io_poll", "utf8").trim();
          notes.push(`nvme poll_queues=2: /sys/block/nvme0n1/queue/io_poll = ${ioPoll}`);
          if (ioPoll !== "1") notes.push("the kernel did not enable polling: the hipri column ran interrupt-driven");
        }
        log(`round ${round + 1}/${REPEAT} ${w.name}: kernel io_uring --hipri`);
        add(`io_uring-hipri ${w.name}`, fio(dev, w, "io_uring-hipri"));
        unloadNvme(ctrl, notes);
      }
    }
  }
  for (const w of workloads) {
    results.ours[w.name] = combine(samples.get(`ours ${w.name}`) ?? []);
    for (const e of ENGINES) {
      const runs = samples.get(`${e} ${w.name}`);
      if (runs) (results.kernel[e] ??= {})[w.name] = combine(runs);
    }
  }

  if (RUN.core) {
    // Alternating per row and per round: a change in the host's load hits both columns alike.
    const coreRuns = new Map<number, { core: Figure[]; ts: Figure[] }>();
    for (let round = 0; round < REPEAT; round++) {
      CORE_ROWS.forEach((row, i) => {
        const runs = coreRuns.get(i) ?? { core: [], ts: [] };
        log(`round ${round + 1}/${REPEAT} core vs perf.ts: qd ${row.qd} (${row.threads} thread(s) x ${row.depth})`);
        runs.ts.push(ours(ctrl, { pattern: "rand", rw: "read", bs: 4096, qd: row.qd }));
        runs.core.push(core(ctrl, row.threads, row.depth));
        coreRuns.set(i, runs);
      });
    }
    CORE_ROWS.forEach((row, i) => results.core.push({ ...row, core: combine(coreRuns.get(i)!.core), ts: combine(coreRuns.get(i)!.ts) }));
  }

  if (RUN.growth) {
    for (const qd of GROWTH_QD) {
      log(`ours growth: randread qd ${qd}`);
      const runs = Array.from({ length: REPEAT }, () => ours(ctrl, { pattern: "rand", rw: "read", bs: 4096, qd }));
      results.growth.qd.push({ qd, fig: combine(runs) });
    }
    for (const queues of GROWTH_QUEUES) {
      log(`ours growth: randread qd ${GROWTH_QUEUES_QD} x ${queues} queue pairs`);
      // Workers for 1 queue pair too: like for like (the main table's runs use this thread).
      const runs = Array.from({ length: REPEAT }, () => ours(ctrl, { pattern: "rand", rw: "read", bs: 4096, qd: GROWTH_QUEUES_QD }, queues, true));
      const fig = combine(runs);
      const picked = runs.find((r) => r.iops === fig.iops) ?? runs[0]!;
      log(`ours growth: randread qd ${GROWTH_QUEUES_QD} x ${queues} queue pairs, hybrid polling (${GROWTH_IDLE_SLEEP_US} µs)`);
      const hybrid = combine(
        Array.from({ length: REPEAT }, () => ours(ctrl, { pattern: "rand", rw: "read", bs: 4096, qd: GROWTH_QUEUES_QD }, queues, true, GROWTH_IDLE_SLEEP_US)),
      );
      results.growth.queues.push({ queues, qd: GROWTH_QUEUES_QD, fig, perQueue: picked.perQueue, hybrid });
    }
    if (!opts["skip-kernel"]) {
      const dev = await loadNvme(ctrl, [], notes);
      if (dev) {
        for (const jobs of GROWTH_QUEUES) {
          log(`kernel growth: io_uring randread qd ${GROWTH_QUEUES_QD} x ${jobs} fio jobs`);
          const w: Workload = { name: "randread", pattern: "rand", rw: "read", bs: 4096, qd: GROWTH_QUEUES_QD };
          const fig = combine(Array.from({ length: REPEAT }, () => fio(dev, w, "io_uring", jobs)));
          results.growth.kernelJobs.push({ jobs, qd: GROWTH_QUEUES_QD, fig });
        }
        unloadNvme(ctrl, notes);
      }
    }
  }
  if (RUN.tcp) results.tcp = await tcpSection();
  return results;
}

// ==== report =========================================================================================

const r2 = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : "-");

function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 === 1 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/** One workload of the TS/C section, summed up: medians over its pairs (or over boots). */
export interface CRefRow {
  tsIops: number;
  cIops: number;
  /** Median of the pairs' TS/C IOPS ratios. */
  ratio: number;
  tsP50: number;
  cP50: number;
  /** Median of the pairs' TS/C p50 latency ratios. */
  p50Ratio: number;
  /** Every pair's (or boot's) IOPS ratio, in order. */
  ratios: number[];
  errors: string[];
}

export function summarizeCRef(cref: CRef): Record<string, CRefRow> {
  const out: Record<string, CRefRow> = {};
  for (const [name, { ts, c }] of Object.entries(cref.rows)) {
    const n = Math.min(ts.length, c.length);
    const ratios: number[] = [];
    const p50Ratios: number[] = [];
    for (let i = 0; i < n; i++) {
      ratios.push(c[i]!.iops > 0 && ts[i]!.iops > 0 ? ts[i]!.iops / c[i]!.iops : NaN);
      p50Ratios.push(c[i]!.latUs.p50 > 0 && ts[i]!.latUs.p50 > 0 ? ts[i]!.latUs.p50 / c[i]!.latUs.p50 : NaN);
    }
    out[name] = {
      tsIops: median(ts.map((f) => f.iops)),
      cIops: median(c.map((f) => f.iops)),
      ratio: median(ratios),
      tsP50: median(ts.map((f) => f.latUs.p50)),
      cP50: median(c.map((f) => f.latUs.p50)),
      p50Ratio: median(p50Ratios),
      ratios,
      errors: [...ts, ...c].filter((f) => f.error).map((f) => f.error!),
    };
  }
  return out;
}

/** Several boots' summaries: per workload the median of the boots' medians; `ratios` are the boots' ratios. */
export function combineCRef(boots: Record<string, CRefRow>[]): Record<string, CRefRow> {
  const out: Record<string, CRefRow> = {};
  for (const name of Object.keys(boots[0] ?? {})) {
    const rows = boots.map((b) => b[name]).filter((r): r is CRefRow => r !== undefined);
    const m = (k: keyof Omit<CRefRow, "ratios" | "errors">) => median(rows.map((r) => r[k]));
    out[name] = {
      tsIops: m("tsIops"),
      cIops: m("cIops"),
      ratio: m("ratio"),
      tsP50: m("tsP50"),
      cP50: m("cP50"),
      p50Ratio: m("p50Ratio"),
      ratios: rows.map((r) => r.ratio),
      errors: rows.flatMap((r) => r.errors),
    };
  }
  return out;
}

export function renderCRef(rows: Record<string, CRefRow>, what: string, each: string): string {
  const out = [
    `IOPS: ours (examples/perf.ts) against the C reference driver (bench/perf-c.ts), same queue pair setup, same LBAs, both pinned; ${what}`,
    table(
      ["workload", "TS IOPS", "C IOPS", "TS/C", "p50 µs TS", "p50 µs C", "p50 TS/C", each],
      Object.entries(rows).map(([name, r]) => [
        name,
        Number.isFinite(r.tsIops) ? Math.round(r.tsIops) : "-",
        Number.isFinite(r.cIops) ? Math.round(r.cIops) : "-",
        r2(r.ratio),
        Number.isFinite(r.tsP50) ? r.tsP50.toFixed(1) : "-",
        Number.isFinite(r.cP50) ? r.cP50.toFixed(1) : "-",
        r2(r.p50Ratio),
        r.ratios.map((x) => (Number.isFinite(x) ? x.toFixed(2) : "-")).join(" "),
      ]),
    ),
    "targets: TS >= 0.9x C at every depth; QD1 p50 latency within 10 % of C (p50 TS/C <= 1.10)",
  ];
  const errors = Object.entries(rows).flatMap(([name, r]) => r.errors.map((e) => `error: ${name}: ${e}`));
  return [...out, ...errors].join("\n");
}

export function renderResults(res: Results): string {
  const m = res.machine;
  const out: string[] = [];
  out.push(
    `date    ${m.date}`,
    `host    ${m.hostNproc ?? "?"} CPUs, ${m.hostCpu ?? "?"}; kernel ${m.hostKernel ?? "?"}; ${m.qemu ?? "QEMU ?"} (TCG)`,
    `guest   ${m.nproc} vCPUs; kernel ${m.guestKernel}${m.clocksource ? `, clocksource ${m.clocksource}` : ""}; bun ${m.bun}; ${m.fio}`,
    ...(m.hostLoad ? [`load    host 1/5/15-min load ${m.hostLoad.start.join(" ")} before the boot, ${m.hostLoad.end.join(" ")} after (other guests on the host skew every figure)`] : []),
    `setup   namespace ${res.config.nsSize} bytes of ${res.config.lbaSize}-byte blocks, written once; ${res.config.seconds} s per run after ${res.config.warmup} s warm-up; median of ${res.config.repeat}`,
    "",
  );
  if (res.cref) {
    const alt = res.cref.method === "alternate";
    out.push(
      renderCRef(
        summarizeCRef(res.cref),
        alt ? `vCPU ${res.cref.cpu}, one process per workload taking turns in 1 s slices, median of ${res.cref.pairs} slice pairs` : `vCPU ${res.cref.cpu}, median of ${res.cref.pairs} pairs in this boot`,
        alt ? "TS/C per slice pair" : "TS/C per pair",
      ),
      "",
    );
  }
  const k = res.kernel;
  const rows = Object.keys(res.ours).map((name) => {
    const o = res.ours[name]!;
    const cell = (e: Engine) => k[e]?.[name];
    const ratio = (e: Engine) => {
      const f = cell(e);
      return f && f.iops > 0 ? r2(o.iops / f.iops) : "-";
    };
    const iops = (f: Figure | undefined) => (f ? (f.error && f.iops === 0 ? "error" : Math.round(f.iops).toString()) : "-");
    return [name, iops(o), iops(cell("io_uring")), ratio("io_uring"), iops(cell("io_uring-hipri")), ratio("io_uring-hipri"), iops(cell("libaio")), ratio("libaio")];
  });
  if (rows.length > 0) {
    out.push("IOPS: ours (libnvm, polled, userspace) against the kernel's nvme driver through fio, same controller, same boot");
    out.push(table(["workload", "ours", "io_uring", "ratio", "io_uring hipri", "ratio", "libaio", "ratio"], rows));
    out.push("targets: ours >= 1.5x io_uring at QD1 and >= 2x at QD32; >= 1.0x io_uring hipri (polled queues) at every depth");
    out.push("");
  }
  const latRows = Object.keys(res.ours).map((name) => {
    const o = res.ours[name]!;
    const f = k["io_uring"]?.[name];
    const h = k["io_uring-hipri"]?.[name];
    const l = (x: Figure | undefined) => (x ? `${x.latUs.p50.toFixed(0)} / ${x.latUs.p99.toFixed(0)} / ${x.latUs.mean.toFixed(0)}` : "-");
    return [name, l(o), l(f), l(h)];
  });
  if (latRows.length > 0) {
    out.push("latency µs, p50 / p99 / mean (ours: doorbell batch to reap; fio: clat percentiles, lat mean)");
    out.push(table(["workload", "ours", "io_uring", "io_uring hipri"], latRows));
  }
  if (res.growth.qd.length > 0) {
    out.push("", "cost of growth, ours: 4 KiB random reads, one queue pair, IOPS against queue depth");
    const base = res.growth.qd[0]!.fig.iops;
    out.push(
      table(
        ["qd", "IOPS", "x qd 1", "mean µs", "p99 µs"],
        res.growth.qd.map((g) => [g.qd, Math.round(g.fig.iops), base > 0 ? r2(g.fig.iops / base) : "-", g.fig.latUs.mean.toFixed(0), g.fig.latUs.p99.toFixed(0)]),
      ),
    );
  }
  if (res.growth.queues.length > 0) {
    out.push(
      "",
      `cost of growth, ours: 4 KiB random reads at qd ${GROWTH_QUEUES_QD} per queue pair, IOPS against queue pairs (one Worker each);`,
      `hybrid: perf --idle-sleep=${GROWTH_IDLE_SLEEP_US} (a poller that found nothing 64 times sleeps ${GROWTH_IDLE_SLEEP_US} µs, so idle vCPUs halt)`,
    );
    const base = res.growth.queues[0]!.fig.iops;
    out.push(
      table(
        ["queue pairs", "total IOPS", "x 1 pair", "per queue pair", "mean µs", `hybrid ${GROWTH_IDLE_SLEEP_US} µs`, "kernel io_uring, same jobs", "ours / kernel", "hybrid / kernel"],
        res.growth.queues.map((g) => {
          const k = res.growth.kernelJobs?.find((j) => j.jobs === g.queues);
          return [
            g.queues,
            Math.round(g.fig.iops),
            base > 0 ? r2(g.fig.iops / base) : "-",
            g.perQueue.map((x) => Math.round(x)).join(" "),
            g.fig.latUs.mean.toFixed(0),
            g.hybrid ? Math.round(g.hybrid.iops) : "-",
            k ? Math.round(k.fig.iops) : "-",
            k && k.fig.iops > 0 ? r2(g.fig.iops / k.fig.iops) : "-",
            k && g.hybrid && k.fig.iops > 0 ? r2(g.hybrid.iops / k.fig.iops) : "-",
          ];
        }),
      ),
    );
  }
  if (res.core?.length > 0) {
    out.push(
      "",
      "the queue core's host mode (examples/gpu-bench.ts --device=cpu: C threads running the GPU threads' queue code, shared mode, one queue)",
      "against examples/perf.ts (TypeScript, low-level API, one queue, JS thread), 4 KiB random reads at the same total queue depth",
    );
    out.push(
      table(
        ["total qd", "core threads x depth", "core IOPS", "perf.ts IOPS", "core / perf.ts", "core p50 / p99 µs", "perf.ts p50 / p99 µs"],
        res.core.map((c) => [
          c.qd,
          `${c.threads} x ${c.depth}`,
          c.core.error && c.core.iops === 0 ? "error" : Math.round(c.core.iops),
          c.ts.error && c.ts.iops === 0 ? "error" : Math.round(c.ts.iops),
          c.ts.iops > 0 ? r2(c.core.iops / c.ts.iops) : "-",
          `${c.core.latUs.p50.toFixed(0)} / ${c.core.latUs.p99.toFixed(0)}`,
          `${c.ts.latUs.p50.toFixed(0)} / ${c.ts.latUs.p99.toFixed(0)}`,
        ]),
      ),
    );
    out.push("target: core >= 1.0x perf.ts at every depth (issue 12)");
  }
  if (res.tcp) {
    const t = res.tcp;
    out.push(
      "",
      `NVMe/TCP: ours (libnvm over ${t.uri}) against the kernel's nvme-tcp host (nvme connect, fio io_uring), both against`,
      `Linux nvmet on loopback in the same guest, a ${t.nsSize}-byte brd namespace (512-byte blocks), same boot`,
    );
    const iops = (f: Figure | undefined) => (f ? (f.error && f.iops === 0 ? "error" : Math.round(f.iops).toString()) : "-");
    const lat = (f: Figure | undefined) => (f ? `${f.latUs.p50.toFixed(0)} / ${f.latUs.p99.toFixed(0)}` : "-");
    out.push(
      table(
        ["workload", "ours IOPS", "kernel IOPS", "ratio", "ours MiB/s", "kernel MiB/s", "ours p50/p99 µs", "kernel p50/p99 µs"],
        Object.keys(t.ours).map((name) => {
          const o = t.ours[name]!;
          const k = t.kernel[name];
          return [name, iops(o), iops(k), k && k.iops > 0 ? r2(o.iops / k.iops) : "-", o.mibPerSec.toFixed(1), k ? k.mibPerSec.toFixed(1) : "-", lat(o), lat(k)];
        }),
      ),
    );
    out.push("goal: ours >= 0.8x the kernel at QD 32 and >= 1.0x at QD 1");
    for (const n of t.notes) out.push(`note: ${n}`);
    for (const [n, f] of Object.entries(t.ours)) if (f.error) out.push(`error: ours NVMe/TCP ${n}: ${f.error}`);
    for (const [n, f] of Object.entries(t.kernel)) if (f.error) out.push(`error: kernel nvme-tcp ${n}: ${f.error}`);
  }
  const errors = [
    ...(res.core ?? []).flatMap((c) => [c.core.error ? `core qd ${c.qd} (${c.threads}x${c.depth}): ${c.core.error}` : "", c.ts.error ? `perf.ts qd ${c.qd}: ${c.ts.error}` : ""]).filter(Boolean),
    ...Object.entries(res.ours).filter(([, f]) => f.error).map(([n, f]) => `ours ${n}: ${f.error}`),
    ...Object.entries(res.kernel).flatMap(([e, mm]) => Object.entries(mm ?? {}).filter(([, f]) => f.error).map(([n, f]) => `${e} ${n}: ${f.error}`)),
  ];
  if (res.kernelNotes.length > 0) out.push("", ...res.kernelNotes.map((n) => `note: ${n}`));
  if (errors.length > 0) out.push("", ...errors.map((e) => `error: ${e}`));
  return out.join("\n");
}

// ==== on the host ====================================================================================

async function host(): Promise<number> {
  if (!Bun.which("fio")) {
    log("fio is missing: apt-get install -y fio (the guest runs the host's root)");
    const r = Bun.spawnSync(["apt-get", "install", "-y", "fio"], { stdout: "inherit", stderr: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    if (r.exitCode !== 0 || !Bun.which("fio")) {
      log("could not install fio; run: apt-get update && apt-get install -y fio");
      return 1;
    }
  }
  const hostInfo = machineInfo({ qemu: qemuVersion() });
  if (!opts.json) process.stderr.write(`${describeMachine(hostInfo)}\n`);
  const nsSize = parseSize(opts["ns-size"]!);
  const picked = (list: Workload[]) => list.filter((w) => !opts.only || opts.only.split(",").includes(w.name)).length;
  const nWork = RUN.main ? picked(WORKLOADS) : 0;
  const nC = RUN.c ? picked(C_WORKLOADS) : 0;
  const coreRuns = RUN.core ? 2 * CORE_ROWS.length : 0;
  const perRun = SECONDS + WARMUP + 4; // plus Bun/fio start-up in the guest
  const switches = opts["skip-kernel"] ? 0 : REPEAT * nWork * 2 * 8; // modprobe, probe, unbind, rmmod
  // The PCIe controller's sections (none with --tcp-only): preconditioning, TS/C pairs, ours
  // against the kernel, the queue core, the growth tables.
  const estimate = opts["tcp-only"]
    ? 60
    : 60 + nsSize / 20e6 + switches + (opts.separate ? perRun * 2 * PAIRS * nC : (2 * SLICES + 3 * WARMUP + 10) * nC) +
      perRun * REPEAT * (coreRuns + nWork * (opts["skip-kernel"] ? 1 : 4) + (RUN.growth ? GROWTH_QD.length + GROWTH_QUEUES.length * (opts["skip-kernel"] ? 2 : 3) : 0));
  // NVMe/TCP: the target, preconditioning over loopback, and per workload ours and the kernel's host (connect, fio, disconnect).
  const tcpEstimate = RUN.tcp ? 30 + parseSize(opts["tcp-ns-size"]!) / 10e6 + REPEAT * TCP_WORKLOADS.length * (perRun * (opts["skip-kernel"] ? 1 : 2) + 10) : 0;
  const total = estimate + tcpEstimate;
  const timeoutSec = opts.timeout ? Number(opts.timeout) : Math.ceil(total * 3);
  if (nC > 0) {
    // The guest sees the checkout read-only: the C reference's library is built here first.
    benchNative();
  }
  const args = [
    "--inside", `--seconds=${SECONDS}`, `--warmup=${WARMUP}`, `--repeat=${REPEAT}`, `--ns-size=${opts["ns-size"]}`, `--pairs=${PAIRS}`, `--cpu=${PIN_CPU}`,
    `--slices=${SLICES}`, ...(opts.separate ? ["--separate"] : []),
    ...(opts.only ? [`--only=${opts.only}`] : []), ...(opts["skip-growth"] ? ["--skip-growth"] : []), ...(opts["skip-kernel"] ? ["--skip-kernel"] : []),
    ...(opts["c-only"] ? ["--c-only"] : []), ...(opts["skip-c"] ? ["--skip-c"] : []),
    ...(opts["skip-core"] ? ["--skip-core"] : []), ...(opts["only-core"] ? ["--only-core"] : []),
    ...(opts["skip-tcp"] ? ["--skip-tcp"] : []), ...(opts["tcp-only"] ? ["--tcp-only"] : []), `--tcp-ns-size=${opts["tcp-ns-size"]}`,
  ];
  const boots: Results[] = [];
  for (let boot = 1; boot <= BOOTS; boot++) {
    log(`booting the guest${BOOTS > 1 ? ` (boot ${boot}/${BOOTS})` : ""} (about ${Math.round(total)} s of runs; timeout ${timeoutSec} s)`);
    const bootInfo = machineInfo();
    const res = await oneBoot(args, nsSize, hostInfo, timeoutSec);
    if (!res) return 1;
    res.machine.hostLoad = { start: bootInfo.loadStart, end: machineInfo().loadStart };
    boots.push(res);
    if (!opts.json) process.stdout.write(`${BOOTS > 1 ? `\n==== boot ${boot}/${BOOTS}\n` : ""}${renderResults(res)}\n`);
  }
  const combined = BOOTS > 1 && boots[0]!.cref ? combineCRef(boots.map((b) => summarizeCRef(b.cref!))) : undefined;
  const doc = BOOTS > 1 ? { boots, ...(combined ? { cref: combined } : {}) } : boots[0]!;
  const text = JSON.stringify(doc, null, 2) + "\n";
  if (opts.out) writeFileSync(opts.out, text);
  if (opts.json) process.stdout.write(text);
  else if (combined) {
    const loads = boots.map((b) => `${b.machine.hostLoad!.start[0]}-${b.machine.hostLoad!.end[0]}`).join(", ");
    process.stdout.write(`\n==== ${BOOTS} boots (host 1-min load before-after each boot: ${loads})\n${renderCRef(combined, `vCPU ${PIN_CPU}, median of ${BOOTS} boots (each the median of ${opts.separate ? `${PAIRS} pairs` : `${SLICES} slice pairs`})`, "TS/C per boot")}\n`);
  }
  return 0;
}

/** One boot running the inside part with `args`; its results, or undefined when it failed. */
async function oneBoot(args: string[], nsSize: number, hostInfo: MachineInfo, timeoutSec: number): Promise<Results | undefined> {
  const r = await runInGuest(
    `bun test/vm/bench-guest.ts ${args.join(" ")} --out=/run/xchg/bench-guest.json`,
    { serial: "LIBNVM-BENCH", namespaces: [{ nsid: 1, sizeBytes: nsSize, lbaSize: 4096 }], kernelArgs: clocksourceArgs(opts.clocksource) },
    // The console shows the guest's progress lines (and kernel messages) on stderr.
    { timeoutSec, echo: !opts.json, env: { BENCH_HOST: JSON.stringify(hostInfo) } },
  );
  const file = join(r.xchgDir, "bench-guest.json");
  if (!existsSync(file) || r.code !== 0) {
    process.stderr.write(r.output.split("\n").slice(-30).join("\n") + "\n");
    log(`the guest run failed (exit ${r.code}${r.error ? `: ${r.error}` : ""})`);
    await cleanup(r);
    return undefined;
  }
  const res = JSON.parse(readFileSync(file, "utf8")) as Results;
  log(`guest wall time ${(r.durationMs / 1000).toFixed(0)} s`);
  await cleanup(r);
  return res;
}

if (import.meta.main) {
  // With --out the host prints the tables; without, they are printed in the guest.
  await guestToolMain({ name: "bench-guest", script: "bench:guest", inside: opts.inside, out: opts.out, run: inside, render: renderResults, host });
}
