/**
 * A client of a controller served over SISCI (guest fixture for rpc.test.ts), in a process of its
 * own so that its borrow ends with it: opens smartio-rpc:<fdid>, writes 64 blocks at LBA through its
 * own queue and reads them back, prints "ready", then waits for a line on stdin (the test kills the
 * server meanwhile) and makes an admin call: prints "error NAME REASON MS" (how long the typed
 * error took) or "answered", then closes and prints "closed MS".
 *
 *   bun test/hw-smartio/rpc-client.ts smartio-rpc:80000 NSID LBA
 */
import { Controller, Namespace, ShareError } from "../../lib/index.ts";

const [target, nsidS, lbaS] = process.argv.slice(2);
try {
  const c = Controller.open(target!, { handleSignals: false, timeoutMs: 10_000 });
  const ns = new Namespace(c, Number(nsidS));
  const q = c.createIoQueue({ entries: 16 });
  const out = c.allocBuffer(64 * ns.lbaSize);
  const back = c.allocBuffer(64 * ns.lbaSize);
  crypto.getRandomValues(out.bytes);
  await ns.write(Number(lbaS), 64, out, { queue: q });
  await ns.read(Number(lbaS), 64, back, { queue: q });
  if (Buffer.compare(out.bytes, back.bytes) !== 0) {
    console.log("MISMATCH");
    process.exit(1);
  }
  console.log(`ready qid ${q.qid} backend ${c.backend.kind}`);
  for await (const _ of console) break;
  const t0 = performance.now();
  try {
    c.activeNamespaces();
    console.log("answered");
  } catch (e) {
    console.log(`error ${(e as Error).name} ${e instanceof ShareError ? e.reason : "-"} ${Math.round(performance.now() - t0)}`);
  }
  const t1 = performance.now();
  c.close();
  console.log(`closed ${Math.round(performance.now() - t1)}`);
} catch (e) {
  console.log(`error ${(e as Error).name}: ${(e as Error).message}`);
  process.exit(1);
}
