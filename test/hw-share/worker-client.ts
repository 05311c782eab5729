/**
 * A Worker of the share guest test: what a client does instead of lending a queue to a Worker. It
 * opens the served controller itself (another client, with a queue of its own), writes a pattern
 * over its range, reads it back, closes the controller (a VFIO client holds the device's
 * descriptor, which is the process's, not the Worker's: it must go before the Worker does) and
 * posts what it found.
 */
import { parentPort, workerData } from "node:worker_threads";
import { Controller, Namespace } from "../../lib/index.ts";
import { fillShare } from "./pattern.ts";

const { target, nsid, lba, blocks, seed } = workerData as { target: string; nsid: number; lba: number; blocks: number; seed: number };
let answer: { qid?: number; same?: boolean; error?: string };
let c: Controller | undefined;
try {
  c = Controller.open(target, { handleSignals: false, timeoutMs: 5000 });
  const ns = new Namespace(c, nsid);
  const q = c.createIoQueue({ entries: 8 });
  const out = c.allocBuffer(blocks * ns.lbaSize);
  const back = c.allocBuffer(blocks * ns.lbaSize);
  fillShare(out.bytes, seed, lba);
  await ns.write(lba, blocks, out, { queue: q });
  await ns.read(lba, blocks, back, { queue: q });
  answer = { qid: q.qid, same: Buffer.compare(out.bytes, back.bytes) === 0 };
} catch (e) {
  answer = { error: `${(e as Error).name}: ${(e as Error).message}` };
} finally {
  c?.close();
}
parentPort!.postMessage(answer);
