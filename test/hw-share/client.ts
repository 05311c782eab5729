/**
 * A client of a served controller (guest fixture): opens unix:PATH, creates its own I/O queue,
 * then writes a pattern over its LBA range and reads it back, round after round, for `seconds`.
 * Prints "ready", "round N" after each verified round, and "done N" at the end; any mismatch or
 * error prints it and exits 1.
 *
 *   bun test/hw-share/client.ts unix:PATH NSID FIRST_LBA BLOCKS SECONDS SEED
 */
import { Controller, Namespace } from "../../lib/index.ts";
import { fillShare } from "./pattern.ts";

const [target, nsidS, firstS, blocksS, secondsS, seedS] = process.argv.slice(2);
const nsid = Number(nsidS);
const first = Number(firstS);
const blocks = Number(blocksS);
const seconds = Number(secondsS);
const seed = Number(seedS);

try {
  using c = Controller.open(target!, { handleSignals: false, timeoutMs: 5000 });
  const ns = new Namespace(c, nsid);
  const q = c.createIoQueue({ entries: 16 });
  const per = Math.min(blocks, 64);
  const bytes = per * ns.lbaSize;
  const out = c.allocBuffer(bytes);
  const back = c.allocBuffer(bytes);
  console.log(`ready qid ${q.qid}`);
  const end = performance.now() + seconds * 1000;
  let round = 0;
  while (performance.now() < end) {
    round++;
    for (let lba = first; lba < first + blocks; lba += per) {
      const n = Math.min(per, first + blocks - lba);
      fillShare(out.bytes, seed, round * 100_000 + lba);
      await ns.write(lba, n, out, { queue: q });
      back.bytes.fill(0);
      await ns.read(lba, n, back, { queue: q });
      if (Buffer.compare(out.bytes.subarray(0, n * ns.lbaSize), back.bytes.subarray(0, n * ns.lbaSize)) !== 0) {
        console.log(`MISMATCH round ${round} lba ${lba}`);
        process.exit(1);
      }
    }
    console.log(`round ${round}`);
  }
  // The last round's pattern stays on the media for the test to check from another process.
  console.log(`done ${round}`);
} catch (e) {
  console.log(`error ${(e as Error).name}: ${(e as Error).message}`);
  process.exit(1);
}
