/**
 * The C reference driver: examples/perf.ts with its job loop in C (bench/perf-c-engine.ts over
 * c/src/bench_perf.c). Same options, same controller bring-up, queue pair, buffer, workload and
 * random LBA sequence (give the same --seed), same JSON (its `engine` is "c"); one queue pair on
 * this thread, low-level API only. `bun run bench:guest` runs it beside perf.ts in one boot.
 *
 *   bun bench/perf-c.ts --ctrl=05:00.0 --qd=32 --seconds=5 --warmup=5 --cpu=1 --json
 */
import { perf, type PerfEngine } from "../examples/perf.ts";
import { run } from "../examples/common.ts";
import { runJobC } from "./perf-c-engine.ts";

export const C_ENGINE: PerfEngine = {
  name: "c",
  tool: "libnvm bench/perf-c.ts",
  refuse: ({ api, queues, workers }) =>
    api !== "low" ? "the C reference runs the low-level API only (--api=low)" : queues > 1 || workers ? "the C reference drives one queue pair in this thread (no --queues, no --workers)" : undefined,
  run: runJobC,
};

if (import.meta.main) await run(() => perf(Bun.argv.slice(2), C_ENGINE));
