/**
 * The low-level I/O path stays inlinable: JSC's optimizing tier (FTL) inlines a callee only if its
 * bytecode cost is at most maximumFunctionForCallInlineCandidateBytecodeCostForFTL (170 in Bun
 * 1.4.5); a function over it becomes a real call per command. That happened once unnoticed:
 * IoQueue.complete() had grown to 189 and was called, not inlined, for every completion
 * (bench/README.md, "inlining"). This reads the limit and each hot function's cost from JSC itself
 * (BUN_JSC_dumpOptions, BUN_JSC_dumpGeneratedBytecodes) while a fixture runs the path once.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const FIXTURE = join(import.meta.dir, "fixtures", "hot-path.ts");

/**
 * Functions a command passes through between the caller's loop and the doorbell or the handler
 * (rw(), or the caller's own writer and post()).
 * IoCompletionQueue.poll is not here: it holds the reap loop and is called once per poll.
 */
const HOT = [
  "acquire",
  "rw",
  "rwCheck",
  "rwFieldsOk",
  "spanOk",
  "belongsTo",
  "rwSqe",
  "writeSqeHead",
  "writeRwCdws",
  "lo32",
  "rwDataAndPost",
  "dataPointer",
  "iova",
  "writePrpPair",
  "postChecked",
  "advance",
  "post",
  "recordCommand",
  "writeSqe",
  "writeSqeHeader",
  "writeSqePrps",
  "writeSqeCdws",
  "submit",
  "ring",
  "complete",
  "freeCid",
  "resolveCid",
] as const;

function run(env: Record<string, string>, args: string[]): string {
  const p = Bun.spawnSync([process.execPath, ...args], { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe", timeout: 30_000 });
  const out = p.stdout.toString() + p.stderr.toString();
  if (p.exitCode !== 0) throw new Error(`bun ${args.join(" ")} exited ${p.exitCode}:\n${out.slice(-2000)}`);
  return out;
}

describe("hot path bytecode cost", () => {
  test("every function of the low-level path is under the FTL inlining limit", () => {
    const options = run({ BUN_JSC_dumpOptions: "2" }, ["-e", "0"]);
    const limit = Number(/maximumFunctionForCallInlineCandidateBytecodeCostForFTL=(\d+)/.exec(options)?.[1]);
    expect(limit).toBeGreaterThan(0);

    const dump = run({ BUN_JSC_dumpGeneratedBytecodes: "1" }, [FIXTURE]);
    // The fixture really ran the path: five commands posted (four by rw(), one by writeSqe and
    // post()), reaped and handled, and one promise.
    expect(dump).toContain(`{"reaped":5,"done":5,"dw0":0}`);
    // Each function's header: "name#HASH:[..., <kind>, COST (StrictMode)]: N instructions ..."
    const costs = new Map<string, number[]>();
    for (const m of dump.matchAll(/^([A-Za-z_$][\w$]*)#[A-Za-z0-9]+:\[[^\]]*?, \w+, (\d+) /gm)) {
      const list = costs.get(m[1]!) ?? [];
      list.push(Number(m[2]));
      costs.set(m[1]!, list);
    }
    const over: string[] = [];
    for (const name of HOT) {
      const seen = costs.get(name);
      if (!seen) over.push(`${name}: not in the dump (renamed? the fixture no longer calls it?)`);
      else for (const c of seen) if (c > limit) over.push(`${name}: ${c}`);
    }
    // IoQueue.poll (small) must inline; IoCompletionQueue.poll (the reap loop) may not.
    expect(Math.min(...(costs.get("poll") ?? [Infinity]))).toBeLessThanOrEqual(limit);
    expect(over).toEqual([]);
  }, 60_000);
});

describe("bun run bench:parts", () => {
  // Nothing timed: the tool runs its three contestants to the end (each checks its completions)
  // and prints a row for each, ratios to the flat loop included.
  test("runs every contestant and reports each part", () => {
    const p = Bun.spawnSync([process.execPath, join(import.meta.dir, "..", "..", "bench", "parts.ts"), "--rounds", "4", "--commands", "2048", "--batch", "32", "--json"], {
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    const out = JSON.parse(p.stdout.toString()) as { batch: number; rows: { name: string; postNs: number; reapNs: number; postVsFlat: number }[] };
    expect(out.batch).toBe(32);
    expect(out.rows.map((r) => r.name)).toEqual(["rw()", "flat, object", "flat"]);
    for (const r of out.rows) {
      expect(r.postNs).toBeGreaterThan(0);
      expect(r.reapNs).toBeGreaterThan(0);
    }
    expect(out.rows[2]!.postVsFlat).toBe(1);
  }, 60_000);

  test("refuses a batch the ring cannot hold", () => {
    const p = Bun.spawnSync([process.execPath, join(import.meta.dir, "..", "..", "bench", "parts.ts"), "--batch", "256"], { stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode).toBe(2);
    expect(p.stderr.toString()).toContain("--batch is 1 to 200");
  });
});
