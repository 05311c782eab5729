/**
 * What QEMU's TCG does to the cost of our code against C's: `bun run bench` (bench/index.ts, no
 * device: the queues in plain memory, a completer thread or the waiting loop itself answering) on
 * this machine, then the same command inside the benchmark guest (same build, same checkout,
 * TSC clocksource), one table side by side. The guest's TS/C table (bun run bench:guest) runs
 * under the same emulation: where the software path alone costs k times more against C in the
 * guest than on the host, the end-to-end ratios there say as much about TCG as about the driver.
 *
 *   bun run bench:tcg [--rounds 30] [--mode inline|thread|both] [--json] [--out FILE]
 *
 * Host first, then the guest (it runs on the host's CPUs): keep the machine otherwise quiet.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { benchNative } from "../../bench/bench-native.ts";
import { describeMachine, table, type MachineInfo } from "../../bench/machine.ts";
import { cleanup, clocksourceArgs, guestToolMain, REPO_ROOT, runInGuest } from "./run.ts";

const { values: opts } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    rounds: { type: "string", default: "30" },
    mode: { type: "string", default: "both" },
    json: { type: "boolean", default: false },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});

if (opts.help) {
  process.stdout.write(
    "usage: bun run bench:tcg [--rounds N] [--mode inline|thread|both] [--json] [--out FILE]\n" +
      "  bun run bench (software cost of our I/O path against the same loop in C, no device) on this machine,\n" +
      "  then inside the QEMU (TCG) benchmark guest; prints both side by side (bench/README.md, section 5)\n",
  );
  process.exit(0);
}

function usageError(msg: string): never {
  process.stderr.write(`tcg-guest: ${msg} (--help)\n`);
  process.exit(2);
}
const ROUNDS = Number(opts.rounds);
if (!Number.isInteger(ROUNDS) || ROUNDS < 3) usageError(`--rounds ${opts.rounds}: an integer, 3 or more`);
const MODES: readonly ("inline" | "thread")[] =
  opts.mode === "both" ? ["inline", "thread"] : opts.mode === "inline" || opts.mode === "thread" ? [opts.mode] : usageError(`--mode ${opts.mode}: inline, thread or both`);

interface Paired {
  median: number;
  min: number;
  ratioToC?: number;
}
interface BenchDoc {
  machine: MachineInfo;
  perBatch: { batch: number; rw: Paired; flat: Paired; c: Paired; async?: Paired }[];
}
interface Results {
  rounds: number;
  runs: { mode: "inline" | "thread"; host: BenchDoc; guest: BenchDoc }[];
}

const benchArgs = (mode: "inline" | "thread"): string[] => ["bench/index.ts", "--skip-mitata", "--skip-heap", "--json", `--rounds=${ROUNDS}`, ...(mode === "inline" ? ["--inline"] : [])];

function hostRun(mode: "inline" | "thread"): BenchDoc {
  const p = Bun.spawnSync(["bun", ...benchArgs(mode)], { cwd: REPO_ROOT, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`bun ${benchArgs(mode).join(" ")} failed on the host (exit ${p.exitCode}): ${p.stderr.toString().slice(-2000)}`);
  return JSON.parse(p.stdout.toString()) as BenchDoc;
}

async function host(): Promise<number> {
  const log = (s: string) => process.stderr.write(`tcg-guest: ${s}\n`);
  // The guest sees the checkout read-only: the C loops' library is built here.
  benchNative();
  const res: Results = { rounds: ROUNDS, runs: [] };
  const hosts = new Map<string, BenchDoc>();
  for (const mode of MODES) {
    log(`host: bun ${benchArgs(mode).join(" ")}`);
    hosts.set(mode, hostRun(mode));
  }
  const script = MODES.map((m) => `bun ${benchArgs(m).join(" ")} > /run/xchg/${m}.json || exit $?`).join("\n");
  log("guest: the same, in one boot");
  const r = await runInGuest(script, { serial: "LIBNVM-TCG", namespaces: [{ nsid: 1, sizeBytes: 64 * 1024 * 1024, lbaSize: 4096 }], kernelArgs: clocksourceArgs("tsc") }, { timeoutSec: 1800, echo: false });
  try {
    for (const mode of MODES) {
      const file = join(r.xchgDir, `${mode}.json`);
      if (r.code !== 0 || !existsSync(file)) {
        process.stderr.write(r.output.split("\n").slice(-30).join("\n") + "\n");
        log(`the guest run failed (exit ${r.code}${r.error ? `: ${r.error}` : ""})`);
        return 1;
      }
      res.runs.push({ mode, host: hosts.get(mode)!, guest: JSON.parse(readFileSync(file, "utf8")) as BenchDoc });
    }
  } finally {
    await cleanup(r);
  }
  const text = JSON.stringify(res, null, 2) + "\n";
  if (opts.out) writeFileSync(opts.out, text);
  process.stdout.write(opts.json ? text : render(res) + "\n");
  return 0;
}

const x = (v: number | undefined): string => (v === undefined ? "-" : `${v.toFixed(2)}x`);
const ns = (p: Paired | undefined): string => (p ? p.median.toFixed(0) : "-");

function render(res: Results): string {
  const out: string[] = [];
  for (const { mode, host: h, guest: g } of res.runs) {
    out.push(
      "",
      `host:  ${describeMachine(h.machine).split("\n").join("\n       ")}`,
      `guest: ${describeMachine(g.machine).split("\n").join("\n       ")}`,
      "",
      `bun run bench${mode === "inline" ? " --inline (no completer thread: software cost alone)" : " (completer thread on the other CPU)"}, ${res.rounds} paired rounds each; ns per command, median round`,
    );
    out.push(
      table(
        ["batch", "host C", "host rw()", "host flat", "rw/C", "flat/C", "guest C", "guest rw()", "guest flat", "rw/C", "flat/C", "TCG: C", "TCG: rw()", "rw/C guest/host"],
        h.perBatch.map((hb) => {
          const gb = g.perBatch.find((b) => b.batch === hb.batch)!;
          return [
            hb.batch,
            ns(hb.c),
            ns(hb.rw),
            ns(hb.flat),
            x(hb.rw.ratioToC),
            x(hb.flat.ratioToC),
            ns(gb.c),
            ns(gb.rw),
            ns(gb.flat),
            x(gb.rw.ratioToC),
            x(gb.flat.ratioToC),
            x(gb.c.median / hb.c.median),
            x(gb.rw.median / hb.rw.median),
            x(gb.rw.ratioToC! / hb.rw.ratioToC!),
          ];
        }),
      ),
    );
  }
  out.push(
    "",
    "TCG: C / TCG: rw() = how much slower the same code runs in the guest than on this host. rw/C guest/host = how",
    "much more the emulation charges rw() than this CPU does, relative to C (1.00x: the host's ratio carries into",
    "the guest); compare flat/C, the same work hand-inlined, in both.",
  );
  return out.join("\n");
}

if (import.meta.main) {
  await guestToolMain({
    name: "tcg-guest",
    script: "bench:tcg",
    inside: false,
    out: opts.out,
    run: () => Promise.reject(new Error("no --inside mode")),
    render,
    host,
  });
}
