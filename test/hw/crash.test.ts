/**
 * Crash safety: a writer is SIGKILLed at a random moment, 20 times. After each kill a new process
 * opens (resets) the controller and every write whose completion had been reported — logged before
 * the kill — reads back exactly as written.
 */
import { expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { Controller, Namespace } from "../../lib/index.ts";
import { ctrlAddress, requireExpected, spawnFixture, waitForLine } from "./common.ts";
import { fillCrashPattern } from "./fixtures/crash-pattern.ts";

test("SIGKILL at random moments during writes, 20 times: every reported write reads back", async () => {
  const ns1 = requireExpected().namespaces[0]!;
  const dir = process.env.LIBNVM_VM_XCHG ?? process.env.TMPDIR ?? "/tmp";
  // Deterministic "random" kill times, printed so a failure can be replayed.
  let seed = 20261126;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  let verified = 0;
  for (let run = 1; run <= 20; run++) {
    const log = join(dir, `crash-${run}.log`);
    rmSync(log, { force: true });
    const first = 20_000 + run * 4096; // a fresh region per run: no LBA is written twice
    const p = spawnFixture("crash-writer.ts", [String(ns1.nsid), String(run), String(first), "400", log]);
    await waitForLine(p.stdout, /^ready/, 60_000);
    const delay = Math.floor(rand() * 400);
    await Bun.sleep(delay);
    p.kill("SIGKILL");
    await p.exited;
    const lbas = readFileSync(log, { flag: "a+" }).toString().split("\n").filter(Boolean).map(Number);
    const c = Controller.open(ctrlAddress());
    try {
      const ns = new Namespace(c, ns1.nsid);
      const bytes = 8 * ns.lbaSize;
      const back = c.allocBuffer(bytes);
      const want = new Uint8Array(bytes);
      for (const lba of lbas) {
        await ns.read(lba, 8, back);
        fillCrashPattern(want, run, lba, ns.lbaSize);
        if (Buffer.compare(back.bytes.subarray(0, bytes), want) !== 0) {
          throw new Error(`run ${run} (killed after ${delay} ms): LBA ${lba} was reported written but reads back different`);
        }
      }
      verified += lbas.length;
    } finally {
      c.close();
    }
  }
  // The kills must have landed mid-workload at least sometimes, and writes must have completed.
  expect(verified).toBeGreaterThan(0);
  console.log(`crash: ${verified} reported writes verified over 20 kills`);
});
