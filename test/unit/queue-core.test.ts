/**
 * The queue core (c/include/nvm_queue_core.h) for the host, driven by the host-mode runner
 * (c/src/queue.c) against the fake controller thread (test/queue/fake-ctrl.c), under
 * ThreadSanitizer: the protocol's scenarios (FIFO tickets under contention, a 2-entry queue,
 * out-of-order and late completions with injected errors, PRP lists, cooperative mode, completions
 * that never come, a stop from the host, request lists) all pass with no race reported; and the
 * same suite with one release store weakened to relaxed must make TSan report a race, which shows
 * the suite can see one. The scenarios and what each checks are in test/queue/core-suite.c.
 */
import { describe, expect, test } from "bun:test";
import { coreSuite, coreSuiteRace, coreSuiteTsan, TSAN_OPTIONS } from "../queue/build.ts";

const SCENARIOS = ["shared-verify", "tiny-queue", "contention", "reorder-delay", "large-prp", "coop", "drop-shared", "drop-coop", "stop", "list", "list-coop"];

function run(exe: string, args: string[] = []): { code: number | null; out: string; err: string } {
  const r = Bun.spawnSync([exe, ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, TSAN_OPTIONS },
    // Every wait in the suite is bounded; this only guards the test itself.
    timeout: 240_000,
  });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

function verdicts(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of out.split("\n")) {
    const v = /^core: (ok|FAIL) (\S+) /.exec(l);
    if (v) m.set(v[2]!, v[1]!);
  }
  return m;
}

describe("queue core against the fake controller", () => {
  test("under ThreadSanitizer: every scenario passes and no race is reported", () => {
    const r = run(coreSuiteTsan());
    const failures = r.out.split("\n").filter((l) => l.startsWith("core: FAIL"));
    expect(failures).toEqual([]);
    expect(r.err).not.toContain("WARNING: ThreadSanitizer");
    expect([...verdicts(r.out)]).toEqual(SCENARIOS.map((s) => [s, "ok"]));
    expect(r.out.trim().split("\n").at(-1)).toBe(`core: ${SCENARIOS.length} passed, 0 failed`);
    expect(r.code).toBe(0);
  }, 240_000);

  test("ThreadSanitizer reports the race a ready[] store weakened to relaxed lets through", () => {
    // Without the release, a combining publisher's doorbell does not carry the submitter's SQE and
    // data writes: the controller reads them with no happens-before.
    // TSan sees the race only when a publisher rings for another executor's entry, which the
    // scheduler decides: up to 5 runs, and at least one must show it.
    let r = run(coreSuiteRace(), ["--only", "contention,shared-verify,reorder-delay"]);
    for (let i = 1; i < 5 && !r.err.includes("WARNING: ThreadSanitizer: data race"); i++) r = run(coreSuiteRace(), ["--only", "contention,shared-verify,reorder-delay"]);
    expect(r.err).toContain("WARNING: ThreadSanitizer: data race");
    // The chain the store starts (submitter, publisher's doorbell, controller, CQE, reaper) is
    // broken at its first link: TSan reports the controller's read of the entry (fake-ctrl.c) or,
    // as often under load, another executor reaping the command and reading what the submitter
    // wrote with nothing ordering the two (nvmq_reap against nvmq_write); which one comes first
    // is the scheduler's choice.
    expect(r.err).toMatch(/fake-ctrl\.c|nvmq_reap[\s\S]*nvmq_write/);
    expect(r.err).toMatch(/nvm_queue_(core|job)\.h/);
    expect(r.code).toBe(66);
  }, 600_000);

  test("optimised without a sanitizer (other timings): every scenario passes", () => {
    const r = run(coreSuite());
    expect(r.out.split("\n").filter((l) => l.startsWith("core: FAIL"))).toEqual([]);
    expect(r.out.trim().split("\n").at(-1)).toBe(`core: ${SCENARIOS.length} passed, 0 failed`);
    expect(r.code).toBe(0);
  }, 120_000);
});
