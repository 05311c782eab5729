/**
 * The main job in miniature: open a controller, create an I/O queue pair, write a random
 * pattern to a namespace, read it back and compare. Overwrites the blocks it tests.
 *
 *   bun run examples/roundtrip.ts --ctrl=05:00.0 --ns=1 [--lba=0] [--count=8]
 */
import { Namespace } from "../lib/index.ts";
import { intOption, parse, run, toJson, openController } from "./common.ts";

const usage = `usage: bun run examples/roundtrip.ts --ctrl=CTRL --ns=NSID [--lba=N] [--count=N] [--json]
  Writes a random pattern to COUNT blocks at LBA (their data is lost), reads them back, compares.
  --ctrl=CTRL  controller: PCI address (05:00.0), /dev/disnvmN, nvme+tcp://HOST:PORT/SUBNQN, unix:PATH or smartio-rpc:<fdid> (served)
  --ns=NSID    namespace (default 1)
  --lba=N      first block (default 0)
  --count=N    blocks (default 8)
  --json       print the result as one JSON object
`;

await run(async () => {
  const args = parse(usage, { ns: { type: "string" }, lba: { type: "string" }, count: { type: "string" } });
  const nsid = intOption("ns", args.ns, usage) ?? 1;
  const lba = intOption("lba", args.lba, usage) ?? 0;
  const count = intOption("count", args.count, usage) ?? 8;

  using ctrl = openController(args);
  const ns = new Namespace(ctrl, nsid);
  const bytes = ns.checkRange(lba, count);
  const granted = ctrl.ioQueuesGranted();
  using out = ctrl.allocBuffer(bytes);
  using back = ctrl.allocBuffer(bytes);
  crypto.getRandomValues(out.bytes.subarray(0, bytes));

  const t0 = performance.now();
  await ns.write(lba, count, out);
  const t1 = performance.now();
  await ns.read(lba, count, back);
  const t2 = performance.now();

  const a = out.bytes.subarray(0, bytes);
  const b = back.bytes.subarray(0, bytes);
  let mismatch = -1;
  for (let i = 0; i < bytes; i++) {
    if (a[i] !== b[i]) {
      mismatch = i;
      break;
    }
  }
  const result = { ctrl: ctrl.name, nsid, lba, count, bytes, lbaSize: ns.lbaSize, queuesGranted: granted, writeMs: t1 - t0, readMs: t2 - t1, ok: mismatch < 0 };
  if (args.json) console.log(toJson(result));
  else {
    console.log(`Namespace ${nsid}: ${ns.blocks} blocks of ${ns.lbaSize} bytes; I/O queues granted: ${granted.sqs} SQ / ${granted.cqs} CQ`);
    console.log(`Wrote ${count} blocks (${bytes} bytes) at LBA ${lba} in ${(t1 - t0).toFixed(2)} ms, read back in ${(t2 - t1).toFixed(2)} ms`);
    console.log(mismatch < 0 ? "Data read back matches: OK" : `MISMATCH at byte ${mismatch}: wrote ${a[mismatch]}, read ${b[mismatch]}`);
  }
  if (mismatch >= 0) process.exitCode = 1;
});
