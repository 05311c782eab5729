/**
 * What the queue core itself costs on the host: commands per second per submitting thread, against
 * the fake controller thread of test/queue (no delay, no faults: it answers as fast as it can), for
 * shared mode at 1 to 16 threads and several depths, and for cooperative mode.
 *
 * Method: test/queue/core-suite.c --bench, built optimised (-O2, no sanitizer) by
 * test/queue/build.ts. Each row builds fresh queues (64 entries, 512-byte blocks, 4 KiB reads from
 * a RAM disk through scattered IOMMU windows) and runs the host-mode runner of c/src/queue.c for
 * `--seconds`. The fake controller is one more thread on the same CPUs: on a 2-core machine it
 * competes with the submitters, so the figures are what this machine gives, not the core's limit.
 *
 *   bun bench/queue-core.ts [--seconds S] [--json]
 */
import { parseArgs } from "node:util";
import { coreSuite } from "../test/queue/build.ts";
import { describeMachine, finishMachineInfo, machineInfo } from "./machine.ts";

const { values: args } = parseArgs({
  args: Bun.argv.slice(2),
  options: { seconds: { type: "string", default: "2" }, json: { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
  strict: true,
});
if (args.help) {
  process.stdout.write("usage: bun bench/queue-core.ts [--seconds S] [--json]\n  commands/s of the queue core against the fake controller thread (see bench/README.md)\n");
  process.exit(0);
}
const seconds = Number(args.seconds);
if (!(seconds > 0)) throw new Error(`--seconds=${args.seconds}: a positive number`);

const machine = machineInfo();
const exe = coreSuite();
const r = Bun.spawnSync([exe, "--bench", "--seconds", String(seconds)], { stdout: "pipe", stderr: "pipe", timeout: 600_000 });
finishMachineInfo(machine);
const out = r.stdout.toString();
if (r.exitCode !== 0) {
  process.stderr.write(out + r.stderr.toString());
  process.exit(1);
}
const rows = out
  .split("\n")
  .filter((l) => /^(shared|coop)\s/.test(l))
  .map((l) => {
    const [mode, submitters, depth, queues, entries, rate, perThread, doorbells] = l.trim().split(/\s+/);
    return { mode, submitters: Number(submitters), depth: Number(depth), queues: Number(queues), entries: Number(entries), commandsPerSec: Number(rate), perSubmitter: Number(perThread), doorbellsPerCommand: Number(doorbells) };
  });
if (args.json) process.stdout.write(JSON.stringify({ machine, seconds, rows }, null, 2) + "\n");
else process.stdout.write(`${describeMachine(machine)}\n${out}`);
