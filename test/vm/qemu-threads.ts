/**
 * QEMU's threads while perf.ts and the C reference take turns in the benchmark guest, seen from the
 * host: for a window inside each measured run, the CPU each QEMU thread used and how often it went to
 * sleep (voluntary context switches, /proc/<qemu>/task/<tid>/status: a thread that slept had to be
 * woken by the next event). The NVMe model runs in QEMU's main loop; the driver in vCPU 1's thread.
 * bench/README.md section 5 (finding 6) reads these: main-loop sleeps a command say how often a
 * doorbell found the controller asleep, vCPU CPU how much host CPU the driver's loop took from it.
 *
 *   bun run profile:qemu [--qd 4,128] [--runs ts,c,c+2,c+4] [--rounds 2] [--seconds 14] [--warmup 5]
 *                        [--window 8] [--bs 4k] [--pattern rand|seq] [--json] [--out FILE]
 *
 * A run is `ts` (examples/perf.ts) or `c` (bench/perf-c.ts), then optionally `+D` (--turnaround-delay=D
 * µs: a wait after each reaping poll, before the refill) and `~S` (--idle-sleep=S µs: hybrid polling):
 * `c+2`, `ts~20`. Each depth's runs repeat `--rounds` times in order, all in one boot; 4 KiB random read
 * by default, both drivers pinned to vCPU 1.
 */
import { readdirSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { benchNative } from "../../bench/bench-native.ts";
import { cleanup, clocksourceArgs, runInGuest } from "./run.ts";

export interface RunSpec {
  label: string;
  driver: "ts" | "c";
  delayUs: number;
  idleSleepUs: number;
}

/** `ts`, `c`, `c+2`, `ts~20`, `c+4~20`: the driver, a turnaround delay and an idle sleep (µs). */
export function parseRun(label: string): RunSpec {
  const m = /^(ts|c)(?:\+(\d+))?(?:~(\d+))?$/.exec(label.trim());
  if (!m) throw new Error(`run ${JSON.stringify(label)}: ts or c, then optionally +DELAY_US and ~IDLE_SLEEP_US (c+2, ts~20)`);
  return { label: label.trim(), driver: m[1] as "ts" | "c", delayUs: Number(m[2] ?? 0), idleSleepUs: Number(m[3] ?? 0) };
}

export type Role = "main" | "vcpu0" | "vcpu1" | "worker" | "other";

/** A QEMU thread's role from its name (QEMU started with -name ...,debug-threads=on). */
export function roleOf(comm: string, isMain: boolean): Role {
  if (isMain) return "main";
  if (/^CPU 0\//.test(comm)) return "vcpu0";
  if (/^CPU 1\//.test(comm)) return "vcpu1";
  if (comm === "worker") return "worker";
  return "other";
}

export interface ThreadSample {
  tid: number;
  role: Role;
  /** utime + stime, clock ticks. */
  ticks: number;
  voluntary: number;
}

export interface RoleFigures {
  /** Percent of one host CPU over the window. */
  cpu: number;
  /** Voluntary context switches a second. */
  sleepsPerSecond: number;
}

/** Per role, CPU and sleeps a second between two samples `seconds` apart (threads in both only). */
export function between(a: ThreadSample[], b: ThreadSample[], seconds: number, hz: number): Record<Role, RoleFigures> {
  const out = Object.fromEntries((["main", "vcpu0", "vcpu1", "worker", "other"] as Role[]).map((r) => [r, { cpu: 0, sleepsPerSecond: 0 }])) as Record<Role, RoleFigures>;
  const before = new Map(a.map((t) => [t.tid, t]));
  for (const t of b) {
    const p = before.get(t.tid);
    if (!p) continue;
    out[t.role].cpu += ((t.ticks - p.ticks) / hz / seconds) * 100;
    out[t.role].sleepsPerSecond += (t.voluntary - p.voluntary) / seconds;
  }
  return out;
}

function sample(pid: number): ThreadSample[] {
  const out: ThreadSample[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out; // QEMU is gone
  }
  for (const tid of tids) {
    try {
      const at = `/proc/${pid}/task/${tid}`;
      const comm = readFileSync(`${at}/comm`, "utf8").trim();
      const f = readFileSync(`${at}/stat`, "utf8").replace(/^.*\) /s, "").split(" ");
      const voluntary = Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`${at}/status`, "utf8"))?.[1] ?? 0);
      out.push({ tid: Number(tid), role: roleOf(comm, Number(tid) === pid), ticks: Number(f[11]) + Number(f[12]), voluntary });
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

function hostBusy(): [number, number] {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  return [f.reduce((x, y) => x + y, 0) - idle, idle];
}

export interface Row {
  qd: number;
  round: number;
  run: string;
  iops: number;
  p50Us: number;
  /** Percent of both host CPUs in use over the window. */
  hostBusy: number;
  threads: Record<Role, RoleFigures>;
  /** Main-loop sleeps a command: its sleeps a second over the run's IOPS. */
  mainSleepsPerCommand: number;
}

const options = () =>
  parseArgs({
    options: {
      qd: { type: "string", default: "4" },
      runs: { type: "string", default: "ts,c" },
      rounds: { type: "string", default: "2" },
      seconds: { type: "string", default: "14" },
      warmup: { type: "string", default: "5" },
      window: { type: "string", default: "8" },
      bs: { type: "string", default: "4k" },
      pattern: { type: "string", default: "rand" },
      json: { type: "boolean", default: false },
      out: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }).values;

const log = (s: string) => process.stderr.write(`profile:qemu: ${s}\n`);

export function render(rows: Row[]): string {
  const lines = [
    "QEMU's threads (host side) in a window inside each measured run; sleeps = voluntary context switches",
    "qd   run        IOPS    p50 µs  host busy  main CPU  main sleeps/cmd  vCPU1 CPU  workers CPU",
  ];
  for (const r of rows) {
    lines.push(
      [
        String(r.qd).padEnd(4),
        r.run.padEnd(8),
        String(Math.round(r.iops)).padStart(8),
        r.p50Us.toFixed(1).padStart(9),
        `${r.hostBusy.toFixed(0)} %`.padStart(10),
        `${r.threads.main.cpu.toFixed(0)} %`.padStart(9),
        r.mainSleepsPerCommand.toFixed(2).padStart(16),
        `${r.threads.vcpu1.cpu.toFixed(0)} %`.padStart(10),
        `${r.threads.worker.cpu.toFixed(0)} %`.padStart(12),
      ].join(" "),
    );
  }
  return lines.join("\n");
}

async function main(): Promise<number> {
  const opts = options();
  if (opts.help) {
    process.stdout.write(readFileSync(import.meta.path, "utf8").split("*/")[0]!.replace(/^\/\*\*\n/, "").replace(/^ \* ?/gm, "") + "\n");
    return 0;
  }
  const qds = opts.qd.split(",").map(Number);
  const runs = opts.runs.split(",").map(parseRun);
  const rounds = Number(opts.rounds);
  const [seconds, warmup, window] = [Number(opts.seconds), Number(opts.warmup), Number(opts.window)];
  if (qds.some((q) => !Number.isInteger(q) || q < 1) || !(rounds >= 1) || !(window > 0) || window + 3 > seconds) {
    log("--qd: depths 1 or more; --rounds >= 1; the window must fit inside the run with 3 s to spare");
    return 2;
  }
  // The guest sees the checkout read-only: the C reference's library is built here first.
  benchNative();
  const plan: { qd: number; round: number; run: RunSpec }[] = [];
  for (const qd of qds) for (let round = 1; round <= rounds; round++) for (const run of runs) plan.push({ qd, round, run });
  const script = [
    "C=$LIBNVM_TEST_CTRL",
    // Every block written once: reads of never-written blocks cost the emulator less.
    "bun examples/perf.ts --ctrl=$C --ns=1 --pattern=seq --rw=write --bs=128k --qd=8 --ios=2048 > /dev/null 2>&1 || exit 3",
    ...plan.map(({ qd, run }, i) => {
      const tool = run.driver === "c" ? "bench/perf-c.ts" : "examples/perf.ts";
      const extra = [run.delayUs > 0 ? `--turnaround-delay=${run.delayUs}` : "", run.idleSleepUs > 0 ? `--idle-sleep=${run.idleSleepUs}` : ""].join(" ");
      return (
        `bun ${tool} --ctrl=$C --ns=1 --qd=${qd} --bs=${opts.bs} --pattern=${opts.pattern} --seconds=${seconds} --warmup=${warmup} ` +
        `--cpu=1 --seed=7 ${extra} --mark=/run/xchg/mark-${i}.json --json > /run/xchg/out-${i}.json 2>/run/xchg/err-${i}.txt; touch /run/xchg/done-${i}`
      );
    }),
  ].join("\n");

  const hz = 100; // USER_HZ: /proc's clock ticks
  const windows: { busy: number; threads: Record<Role, RoleFigures> }[] = [];
  let watcher: Promise<void> | undefined;
  // Set once the guest is gone: the watcher stops waiting for files no run will write.
  let guestDone = false;
  const r = await runInGuest(
    script,
    {
      serial: "LIBNVM-QEMU-THREADS",
      namespaces: [{ nsid: 1, sizeBytes: 256 * 1024 * 1024, lbaSize: 4096 }],
      kernelArgs: clocksourceArgs("tsc"),
      // Thread names ("CPU 1/TCG", "worker"): which thread is which.
      extraQemuArgs: ["-name", "libnvm-bench,debug-threads=on"],
    },
    {
      timeoutSec: 600 + plan.length * (seconds + warmup + 30),
      echo: false,
      onStarted: ({ pid, xchgDir }) => {
        watcher = (async () => {
          for (let i = 0; i < plan.length; i++) {
            const mark = join(xchgDir, `mark-${i}.json`);
            const done = join(xchgDir, `done-${i}`);
            // Bounded: the guest's own timeout ends the boot, and with it these files' chances.
            const deadline = Date.now() + (seconds + warmup + 300) * 1000;
            while (!existsSync(mark) && !existsSync(done) && !guestDone && Date.now() < deadline) await Bun.sleep(100);
            let at = Date.now();
            try {
              at = (JSON.parse(readFileSync(mark, "utf8")) as { at: number }).at;
            } catch {
              windows.push({ busy: NaN, threads: between([], [], 1, hz) });
              continue;
            }
            // Two seconds into the measured window, for `window` seconds.
            await Bun.sleep(Math.max(0, at + 2000 - Date.now()));
            const [a, ha, t0] = [sample(pid), hostBusy(), performance.now()];
            await Bun.sleep(window * 1000);
            const [b, hb, t1] = [sample(pid), hostBusy(), performance.now()];
            const busy = hb[0] - ha[0];
            windows.push({ busy: (100 * busy) / (busy + hb[1] - ha[1]), threads: between(a, b, (t1 - t0) / 1000, hz) });
            while (!existsSync(done) && !guestDone && Date.now() < deadline) await Bun.sleep(100);
          }
        })();
      },
    },
  );
  guestDone = true;
  await watcher;
  const rows: Row[] = [];
  for (let i = 0; i < plan.length; i++) {
    const file = join(r.xchgDir, `out-${i}.json`);
    let iops = NaN;
    let p50Us = NaN;
    try {
      const q = (JSON.parse(readFileSync(file, "utf8")) as { queues: { iops: number; latencyUs: { percentiles: { p50: number } } }[] }).queues[0]!;
      iops = q.iops;
      p50Us = q.latencyUs.percentiles.p50;
    } catch {
      const err = existsSync(join(r.xchgDir, `err-${i}.txt`)) ? readFileSync(join(r.xchgDir, `err-${i}.txt`), "utf8").trim().split("\n").slice(-3).join(" / ") : "";
      log(`qd ${plan[i]!.qd} ${plan[i]!.run.label}: no result${err ? `: ${err}` : ""}`);
    }
    const w = windows[i] ?? { busy: NaN, threads: between([], [], 1, hz) };
    rows.push({ qd: plan[i]!.qd, round: plan[i]!.round, run: plan[i]!.run.label, iops, p50Us, hostBusy: w.busy, threads: w.threads, mainSleepsPerCommand: w.threads.main.sleepsPerSecond / iops });
  }
  await cleanup(r);
  if (r.code !== 0) {
    process.stderr.write(r.output.split("\n").slice(-30).join("\n") + "\n");
    log(`the guest run failed (exit ${r.code}${r.error ? `: ${r.error}` : ""})`);
    return 1;
  }
  const result = { date: new Date().toISOString(), bs: opts.bs, pattern: opts.pattern, seconds, warmup, window, rows };
  if (opts.out) writeFileSync(opts.out, JSON.stringify(result, null, 2) + "\n");
  process.stdout.write(opts.json ? JSON.stringify(result, null, 2) + "\n" : render(rows) + "\n");
  return rows.some((x) => Number.isNaN(x.iops)) ? 1 : 0;
}

if (import.meta.main) process.exit(await main());
