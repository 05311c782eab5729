/**
 * Where the time goes: examples/perf.ts and the C reference driver (bench/perf-c.ts) profiled in
 * one guest boot, on the same emulated controller, both pinned to one vCPU (issue 13).
 *
 * For each workload (4 KiB random read at QD 1 and QD 32 by default), each driver runs once with
 * `--mark`, so the profiler knows when its measured window starts; over that window it takes
 *   - every thread's CPU time (utime and stime from /proc/PID/task/TID/stat), by thread name, and
 *     the pinned vCPU's own split (user, system, irq, softirq, idle from /proc/stat);
 *   - `perf record -e cpu-clock` of the process: its samples by DSO (JIT code shows as the
 *     anonymous map; bun's runtime, libc, our native library, the kernel) and by symbol;
 * then perf.ts runs once more under `bun --cpu-prof-md` for the JavaScript functions' self time.
 * Before all that: the guest's clocksource and what one performance.now() costs in it.
 *
 *   bun run profile:guest [--seconds 12] [--warmup 5] [--cpu 1] [--only randread-qd1,...] [--clocksource tsc|hpet] [--json] [--out FILE]
 *
 * The profiler itself runs on vCPU 0 (taskset), the drivers on --cpu. Figures come from a TCG
 * guest on a shared host: they say where one run's time went, not how fast anything is.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { benchNative } from "../../bench/bench-native.ts";
import { cleanup, clocksourceArgs, guestToolMain, REPO_ROOT, runInGuest } from "./run.ts";

const { values: opts } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    inside: { type: "boolean", default: false },
    seconds: { type: "string", default: "12" },
    warmup: { type: "string", default: "5" },
    cpu: { type: "string", default: "1" },
    only: { type: "string" },
    clocksource: { type: "string", default: "tsc" },
    json: { type: "boolean", default: false },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

const USAGE = `usage: bun test/vm/profile-guest.ts [--seconds S] [--warmup S] [--cpu N] [--only NAME,...] [--clocksource tsc|hpet] [--json] [--out FILE]
  Boots the guest once and profiles examples/perf.ts and bench/perf-c.ts pinned to vCPU N (default 1)
  over their measured windows: thread CPU times, the vCPU's split, perf record by DSO and symbol,
  and bun --cpu-prof-md of perf.ts. Workloads: randread-qd1, randread-qd32 (also randwrite-qd1, randwrite-qd32).
  --clocksource  the guest kernel's: tsc (default, tsc=reliable) or hpet (what the kernel picks under TCG)
`;
if (opts.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const SECONDS = Number(opts.seconds);
const WARMUP = Number(opts.warmup);
const CPU = Math.floor(Number(opts.cpu));
if (!(SECONDS >= 4) || !(WARMUP >= 0) || !(CPU >= 0)) {
  process.stderr.write(USAGE);
  process.exit(2);
}

interface Workload {
  name: string;
  rw: "read" | "write";
  qd: number;
}
const WORKLOADS: Workload[] = [
  { name: "randread-qd1", rw: "read", qd: 1 },
  { name: "randread-qd4", rw: "read", qd: 4 },
  { name: "randread-qd32", rw: "read", qd: 32 },
  { name: "randread-qd128", rw: "read", qd: 128 },
  { name: "randwrite-qd1", rw: "write", qd: 1 },
  { name: "randwrite-qd32", rw: "write", qd: 32 },
];
const DEFAULT_WORKLOADS = ["randread-qd1", "randread-qd32"];
const DRIVERS = { ts: "examples/perf.ts", c: "bench/perf-c.ts" } as const;
type Driver = keyof typeof DRIVERS;

interface ThreadCpu {
  /** Thread name (comm); threads of one name summed. */
  name: string;
  threads: number;
  /** Percent of one CPU over the window. */
  user: number;
  system: number;
}

interface Profile {
  driver: Driver;
  workload: string;
  iops: number;
  p50Us: number;
  /** Per command measured: CQ polls, and commands per reap (CQ head doorbell) and per SQ tail doorbell. */
  loop?: { pollsPerCmd: number; cmdsPerReap: number; cmdsPerSubmit: number };
  windowSeconds: number;
  threads: ThreadCpu[];
  /** The pinned vCPU over the window, percent: user, system, irq, softirq, idle (and steal). */
  vcpu: Record<string, number>;
  /** perf record's samples by DSO and by symbol, percent (top entries). */
  dsos: { pct: number; name: string }[];
  symbols: { pct: number; dso: string; sym: string }[];
  /** For the largest DSOs with symbols: their own top symbols, in percent of that DSO's samples. */
  within: { dso: string; pct: number; symbols: { pct: number; sym: string }[] }[];
  perfError?: string;
  warning?: string;
  error?: string;
}

interface JsFunction {
  selfPct: number;
  selfMs: number;
  name: string;
  location: string;
}

interface Results {
  date: string;
  guestKernel: string;
  clocksource: { current: string; available: string };
  /** ns per performance.now() in the guest (200 000 calls, pinned to --cpu). */
  clockNs: number;
  profiles: Profile[];
  cpuProf: { workload: string; iops: number; top: JsFunction[]; error?: string }[];
}

function log(s: string): void {
  process.stderr.write(`profile-guest: ${s}\n`);
}

function sh(cmd: string[], timeoutMs = 120_000): { code: number; out: string; err: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
  return { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
}

// ==== in the guest =================================================================================

const HZ = Number(sh(["getconf", "CLK_TCK"]).out.trim()) || 100;

/** Per thread: name and utime + stime in clock ticks. */
function threadTicks(pid: number): Map<string, { name: string; user: number; system: number }> {
  const out = new Map<string, { name: string; user: number; system: number }>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "latin1");
      const close = stat.lastIndexOf(")");
      const name = stat.slice(stat.indexOf("(") + 1, close);
      const f = stat.slice(close + 2).split(" ");
      out.set(tid, { name, user: Number(f[11]), system: Number(f[12]) });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/** The cpuN line of /proc/stat: user nice system idle iowait irq softirq steal, in ticks. */
function cpuTicks(cpu: number): number[] {
  const line = readFileSync("/proc/stat", "latin1").split("\n").find((l) => l.startsWith(`cpu${cpu} `));
  return line ? line.trim().split(/\s+/).slice(1, 9).map(Number) : [];
}

function threadDelta(a: ReturnType<typeof threadTicks>, b: ReturnType<typeof threadTicks>, seconds: number): ThreadCpu[] {
  const byName = new Map<string, ThreadCpu>();
  for (const [tid, t1] of b) {
    const t0 = a.get(tid) ?? { name: t1.name, user: 0, system: 0 };
    // Pool threads carry a number (e.g. "HeapHelper 3"): one row per kind.
    const name = t1.name.replace(/\s*\d+$/, "");
    const row = byName.get(name) ?? { name, threads: 0, user: 0, system: 0 };
    row.threads++;
    row.user += ((t1.user - t0.user) / HZ / seconds) * 100;
    row.system += ((t1.system - t0.system) / HZ / seconds) * 100;
    byName.set(name, row);
  }
  return [...byName.values()].map((r) => ({ ...r, user: round1(r.user), system: round1(r.system) })).sort((x, y) => y.user + y.system - (x.user + x.system));
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.max(0, ms)));
}

function driverArgs(ctrl: string, w: Workload, seed: number): string[] {
  return [
    `--ctrl=${ctrl}`, "--ns=1", `--qd=${w.qd}`, "--bs=4k", "--pattern=rand", `--rw=${w.rw}`, `--seconds=${SECONDS}`, `--warmup=${WARMUP}`,
    `--cpu=${CPU}`, `--seed=${seed}`, "--json",
  ];
}

function parsePerfJson(text: string): { iops: number; p50Us: number; loop?: Profile["loop"] } {
  const j = JSON.parse(text) as {
    total: { iops: number; latencyUs: { percentiles: Record<string, number> } };
    queues: { ios: number; loop?: { polls: number; reaps: number; submits: number } }[];
  };
  const q = j.queues[0];
  const l = q?.loop;
  const r2 = (x: number) => Math.round(x * 100) / 100;
  return {
    iops: Math.round(j.total.iops),
    p50Us: j.total.latencyUs.percentiles.p50!,
    ...(q && l && q.ios > 0 && l.reaps > 0 && l.submits > 0 ? { loop: { pollsPerCmd: r2(l.polls / q.ios), cmdsPerReap: r2(q.ios / l.reaps), cmdsPerSubmit: r2(q.ios / l.submits) } } : {}),
  };
}

/** perf report of `file`: top DSOs and symbols, in percent of samples. */
function perfReport(file: string): { dsos: Profile["dsos"]; symbols: Profile["symbols"]; within: Profile["within"] } {
  const rows = (sort: string) =>
    sh(["perf", "report", "-i", file, "--stdio", "--no-children", "--sort", sort, "--percent-limit", "0.5"]).out
      .split("\n")
      .filter((l) => /^\s+\d+\.\d+%/.test(l));
  const dsos = rows("dso").slice(0, 12).map((l) => {
    const m = /^\s+([\d.]+)%\s+(.*)$/.exec(l)!;
    return { pct: Number(m[1]), name: m[2]!.trim() };
  });
  const symbols = rows("dso,sym").slice(0, 20).map((l) => {
    const m = /^\s+([\d.]+)%\s+(\S+)\s+(.*)$/.exec(l)!;
    return { pct: Number(m[1]), dso: m[2]!, sym: m[3]!.replace(/^\[[.k]\]\s*/, "").trim() };
  });
  // JIT code has no symbols (JSC writes no perf map); within each other large DSO, its own top symbols.
  const within: Profile["within"] = [];
  for (const d of dsos.filter((x) => x.pct >= 5 && !x.name.startsWith("[JIT]") && x.name !== "[unknown]").slice(0, 3)) {
    const syms = sh(["perf", "report", "-i", file, "--stdio", "--no-children", "--dsos", d.name, "--sort", "sym", "--percent-limit", "2"]).out
      .split("\n")
      .map((l) => /^\s+([\d.]+)%\s+(?:\[[.k]\]\s*)?(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .slice(0, 8)
      .map((m) => ({ pct: Number(m[1]), sym: m[2]!.trim() }));
    within.push({ dso: d.name, pct: d.pct, symbols: syms });
  }
  return { dsos, symbols, within };
}

/** One run of `driver`, profiled over its measured window. */
async function profileRun(ctrl: string, driver: Driver, w: Workload, seed: number, dir: string): Promise<Profile> {
  const mark = join(dir, `mark-${driver}-${w.name}`);
  const data = join(dir, `perf-${driver}-${w.name}.data`);
  rmSync(mark, { force: true });
  const base: Profile = { driver, workload: w.name, iops: 0, p50Us: 0, windowSeconds: 0, threads: [], vcpu: {}, dsos: [], symbols: [], within: [] };
  const child = Bun.spawn(["bun", DRIVERS[driver], ...driverArgs(ctrl, w, seed), `--mark=${mark}`], { stdout: "pipe", stderr: "pipe" });
  const stdout = new Response(child.stdout).text();
  const stderr = new Response(child.stderr).text();
  // Bring-up plus a warm-up the JIT may stretch to 3x: bounded.
  const giveUp = Date.now() + (60 + 4 * WARMUP) * 1000;
  while (!existsSync(mark) && Date.now() < giveUp && child.exitCode === null) await sleep(50);
  if (!existsSync(mark)) {
    child.kill();
    await child.exited;
    return { ...base, error: `no measured window: ${(await stderr).trim().split("\n").slice(-2).join(" ") || "timed out"}` };
  }
  const { at } = JSON.parse(readFileSync(mark, "utf8")) as { at: number };
  // Half a second in, and out a second before the end: the window holds nothing but the job.
  await sleep(at + 500 - Date.now());
  // perf takes a second or two to start and stop under emulation: half the window is recorded.
  const window = round1(SECONDS / 3);
  const t0 = threadTicks(child.pid);
  const c0 = cpuTicks(CPU);
  const w0 = performance.now();
  const rec = Bun.spawnSync(["perf", "record", "-q", "--no-buildid-cache", "-e", "cpu-clock", "-F", "997", "-p", String(child.pid), "-o", data, "--", "sleep", String(window)], {
    stdout: "pipe",
    stderr: "pipe",
    timeout: (window + 30) * 1000,
  });
  const t1 = threadTicks(child.pid);
  const c1 = cpuTicks(CPU);
  // perf's own start and stop lengthen the window: the CPU figures use the time that passed.
  const elapsed = (performance.now() - w0) / 1000;
  const late = Date.now() > at + SECONDS * 1000;
  const code = await Promise.race([child.exited, sleep(60_000).then(() => -1)]);
  if (code === -1) child.kill();
  const out = await stdout;
  if (code !== 0) return { ...base, error: `${DRIVERS[driver]} exited ${code}: ${(await stderr).trim().split("\n").slice(-2).join(" ")}` };
  const cpuNames = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
  const total = c1.reduce((s, v, i) => s + v - (c0[i] ?? 0), 0) || 1;
  const vcpu: Record<string, number> = {};
  cpuNames.forEach((n, i) => {
    const v = ((c1[i]! - c0[i]!) / total) * 100;
    if (v >= 0.05) vcpu[n] = round1(v);
  });
  const profile: Profile = {
    ...base,
    ...parsePerfJson(out),
    windowSeconds: round1(elapsed),
    threads: threadDelta(t0, t1, elapsed),
    vcpu,
    ...(late ? { warning: "the profile window outlasted the measured window: give more --seconds" } : {}),
  };
  if (rec.exitCode !== 0 || !existsSync(data)) {
    const why = rec.exitCode === null ? `was killed (${rec.signalCode ?? "timeout"}); kernel: ${sh(["sh", "-c", "dmesg | tail -n 3"]).out.trim().replace(/\s+/g, " ")}` : `exited ${rec.exitCode}`;
    return { ...profile, perfError: `perf record ${why}: ${rec.stderr.toString().trim().replace(/\s+/g, " ")}` };
  }
  return { ...profile, ...perfReport(data) };
}

/** perf.ts under bun --cpu-prof-md: the JavaScript functions' self time over the whole run. */
function cpuProfile(ctrl: string, w: Workload, seed: number, dir: string): Results["cpuProf"][number] {
  const profDir = join(dir, `cpuprof-${w.name}`);
  mkdirSync(profDir, { recursive: true });
  const r = sh(["bun", "--cpu-prof-md", `--cpu-prof-dir=${profDir}`, DRIVERS.ts, ...driverArgs(ctrl, w, seed)], (60 + 4 * WARMUP + SECONDS) * 1000);
  if (r.code !== 0) return { workload: w.name, iops: 0, top: [], error: `exited ${r.code}: ${r.err.trim().split("\n").slice(-2).join(" ")}` };
  const md = readdirSync(profDir).find((f) => f.endsWith(".md"));
  if (!md) return { workload: w.name, iops: parsePerfJson(r.out).iops, top: [], error: "no profile written" };
  const text = readFileSync(join(profDir, md), "utf8");
  const hot = text.split("## Hot Functions")[1]?.split("\n## ")[0] ?? "";
  const top: JsFunction[] = [];
  for (const line of hot.split("\n")) {
    const m = /^\|\s*([\d.]+)%\s*\|\s*([\d.]+)(ms|s|µs|us)\s*\|[^|]*\|[^|]*\|\s*`([^`]*)`\s*\|\s*`?([^`|]*)`?\s*\|/.exec(line);
    if (!m) continue;
    const scale = m[3] === "s" ? 1000 : m[3] === "ms" ? 1 : 0.001;
    top.push({ selfPct: Number(m[1]), selfMs: Number(m[2]) * scale, name: m[4]!, location: m[5]!.replace(`${REPO_ROOT}/`, "").trim() });
    if (top.length === 15) break;
  }
  return { workload: w.name, iops: parsePerfJson(r.out).iops, top };
}

/** ns per performance.now() here, pinned to the drivers' vCPU. */
function clockCost(): number {
  const code = "const N=200000;let x=0;for(let i=0;i<20000;i++)x+=performance.now();const t=process.hrtime.bigint();for(let i=0;i<N;i++)x+=performance.now();console.log(Number(process.hrtime.bigint()-t)/N, x>0)";
  const r = sh(["taskset", "-c", String(CPU), "bun", "-e", code]);
  return round1(Number(r.out.trim().split(" ")[0]));
}

async function inside(): Promise<Results> {
  const ctrl = process.env.LIBNVM_TEST_CTRL;
  if (!ctrl) throw new Error("LIBNVM_TEST_CTRL is not set: run this through the guest harness (bun test/vm/profile-guest.ts)");
  // The guest's root is the host's, read-only: the exchange dir is writable.
  const dir = join(process.env.LIBNVM_VM_XCHG ?? "/tmp", "profile-guest");
  mkdirSync(dir, { recursive: true });
  const cs = "/sys/devices/system/clocksource/clocksource0";
  const results: Results = {
    date: new Date().toISOString(),
    guestKernel: sh(["uname", "-r"]).out.trim(),
    clocksource: { current: readFileSync(`${cs}/current_clocksource`, "utf8").trim(), available: readFileSync(`${cs}/available_clocksource`, "utf8").trim() },
    clockNs: clockCost(),
    profiles: [],
    cpuProf: [],
  };
  log(`clocksource ${results.clocksource.current} (available: ${results.clocksource.available}); performance.now() ${results.clockNs} ns`);
  const names = opts.only ? opts.only.split(",") : DEFAULT_WORKLOADS;
  const workloads = WORKLOADS.filter((w) => names.includes(w.name));
  if (workloads.length !== names.length) throw new Error(`unknown workload in --only=${opts.only}: choose from ${WORKLOADS.map((w) => w.name).join(", ")}`);
  // Reads hit written blocks.
  log("preconditioning: the namespace written once");
  const pre = sh(["bun", "examples/perf.ts", `--ctrl=${ctrl}`, "--ns=1", "--pattern=seq", "--rw=write", "--bs=128k", "--qd=8", "--ios=2048", "--json"], 300_000);
  if (pre.code !== 0) throw new Error(`preconditioning failed: ${pre.err.trim()}`);
  let seed = 1;
  for (const w of workloads) {
    for (const d of ["ts", "c"] as const) {
      log(`${w.name}: ${DRIVERS[d]} on vCPU ${CPU}, perf record over the measured window`);
      results.profiles.push(await profileRun(ctrl, d, w, seed, dir));
    }
    log(`${w.name}: ${DRIVERS.ts} under bun --cpu-prof-md`);
    results.cpuProf.push(cpuProfile(ctrl, w, seed, dir));
    seed++;
  }
  return results;
}

// ==== on the host ==================================================================================

function render(r: Results): string {
  const out: string[] = [];
  out.push(`date    ${r.date}`, `guest   kernel ${r.guestKernel}; clocksource ${r.clocksource.current} (available: ${r.clocksource.available})`);
  out.push(`clock   performance.now() costs ${r.clockNs} ns in the guest (200 000 calls on vCPU ${CPU})`, "");
  for (const p of r.profiles) {
    out.push(`== ${p.workload}, ${p.driver === "ts" ? "TypeScript (examples/perf.ts)" : "C reference (bench/perf-c.ts)"}: ${p.iops} IOPS, p50 ${p.p50Us} µs`);
    if (p.loop) out.push(`   loop: ${p.loop.pollsPerCmd} CQ polls a command (most find nothing: time spent waiting on the controller), ${p.loop.cmdsPerReap} commands a reap, ${p.loop.cmdsPerSubmit} a tail doorbell`);
    if (p.error) {
      out.push(`   failed: ${p.error}`, "");
      continue;
    }
    if (p.warning) out.push(`   warning: ${p.warning}`);
    out.push(`   vCPU ${CPU} over ${p.windowSeconds} s: ${Object.entries(p.vcpu).map(([k, v]) => `${k} ${v}%`).join(", ")}`);
    out.push(`   threads (% of one CPU, user + system): ${p.threads.filter((t) => t.user + t.system >= 0.1).map((t) => `${t.name}${t.threads > 1 ? ` x${t.threads}` : ""} ${t.user}+${t.system}`).join("; ")}`);
    if (p.perfError) out.push(`   perf: ${p.perfError}`);
    else {
      out.push(`   by DSO: ${p.dsos.map((d) => `${d.name} ${d.pct}%`).join(", ")}`);
      out.push("   top symbols:");
      for (const s of p.symbols.slice(0, 12)) out.push(`     ${s.pct.toFixed(2).padStart(6)}%  ${s.dso.padEnd(22)} ${s.sym}`);
      for (const d of p.within) out.push(`   within ${d.dso} (${d.pct}% of all): ${d.symbols.map((x) => `${x.sym} ${x.pct}%`).join(", ")}`);
    }
    out.push("");
  }
  for (const c of r.cpuProf) {
    out.push(`== ${c.workload}, perf.ts under bun --cpu-prof-md (whole run, ${c.iops} IOPS): JavaScript self time`);
    if (c.error) out.push(`   failed: ${c.error}`);
    for (const f of c.top) out.push(`   ${f.selfPct.toFixed(1).padStart(5)}%  ${f.name.padEnd(28)} ${f.location}`);
    out.push("");
  }
  return out.join("\n");
}

async function host(): Promise<number> {
  // The guest runs the host's root: perf must be installed here.
  if (Bun.spawnSync(["sh", "-c", "command -v perf"]).exitCode !== 0) {
    log("installing linux-perf (perf record in the guest)");
    const r = Bun.spawnSync(["apt-get", "install", "-y", "linux-perf"], { stdout: "inherit", stderr: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    if (r.exitCode !== 0) {
      log("apt-get install linux-perf failed: install it, or run as root");
      return 2;
    }
  }
  // The guest sees the checkout read-only: the C reference's library is built here first.
  benchNative();
  const args = ["--inside", `--seconds=${SECONDS}`, `--warmup=${WARMUP}`, `--cpu=${CPU}`, ...(opts.only ? [`--only=${opts.only}`] : [])];
  const r = await runInGuest(
    // The profiler keeps off the drivers' vCPU.
    `taskset -c ${CPU === 0 ? 1 : 0} bun test/vm/profile-guest.ts ${args.join(" ")} --out=/run/xchg/profile.json`,
    { serial: "LIBNVM-PROFILE", namespaces: [{ nsid: 1, sizeBytes: 256 * 1024 * 1024, lbaSize: 4096 }], kernelArgs: clocksourceArgs(opts.clocksource) },
    { timeoutSec: 1800, echo: !opts.json },
  );
  const file = join(r.xchgDir, "profile.json");
  if (!existsSync(file) || r.code !== 0) {
    process.stderr.write(r.output.split("\n").slice(-30).join("\n") + "\n");
    log(`the guest run failed (exit ${r.code}${r.error ? `: ${r.error}` : ""})`);
    await cleanup(r);
    return 1;
  }
  const res = JSON.parse(readFileSync(file, "utf8")) as Results;
  await cleanup(r);
  const text = JSON.stringify(res, null, 2) + "\n";
  if (opts.out) writeFileSync(opts.out, text);
  process.stdout.write(opts.json ? text : render(res) + "\n");
  return 0;
}

if (import.meta.main) {
  await guestToolMain({ name: "profile-guest", script: "profile:guest", inside: opts.inside, out: opts.out, run: inside, render, host });
}
