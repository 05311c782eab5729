/**
 * Soak: mixed random reads and writes with verification for a fixed time (10 minutes by default),
 * on one namespace of a controller. Every read is checked against what was last written there.
 * Prints progress every 10 s and at the end: commands completed, errors (expected 0), latency
 * percentiles and outliers. Not part of CI: `bun run test/vm/soak-guest.ts` runs it in the guest.
 *
 *   bun bench/soak.ts --ctrl=BDF --ns=1 [--seconds=600] [--qd=32] [--blocks=8] [--json]
 */
import { Namespace } from "../lib/index.ts";
import { intOption, parse, run, toJson, openController } from "../examples/common.ts";
import { fillCrashPattern } from "../test/hw/fixtures/crash-pattern.ts";

const usage = `usage: bun bench/soak.ts --ctrl=BDF --ns=NSID [--seconds=600] [--qd=32] [--blocks=8] [--json]
  Overwrites the namespace. Mixed 50/50 random reads and writes of BLOCKS blocks, QD commands in
  flight, every read verified. Exit 1 when any command failed or any read did not match.
`;

await run(async () => {
  const args = parse(usage, { ns: { type: "string" }, seconds: { type: "string" }, qd: { type: "string" }, blocks: { type: "string" } });
  const nsid = intOption("ns", args.ns, usage) ?? 1;
  const seconds = intOption("seconds", args.seconds, usage) ?? 600;
  const qd = intOption("qd", args.qd, usage) ?? 32;
  const blocks = intOption("blocks", args.blocks, usage) ?? 8;

  using ctrl = openController(args);
  const ns = new Namespace(ctrl, nsid);
  const q = ctrl.createIoQueue({ entries: Math.max(qd + 1, 2) });
  const unitBytes = blocks * ns.lbaSize;
  const units = Math.floor(ns.blocks / blocks);
  // Generation last written to each unit (0 = never written by us: not verified).
  const gen = new Uint32Array(units);
  const busy = new Uint8Array(units);
  const buf = ctrl.allocBuffer(qd * unitBytes);
  const want = new Uint8Array(unitBytes);
  const lat = new Float64Array(1 << 22);
  let nLat = 0;
  let done = 0;
  let errors = 0;
  let mismatches = 0;
  const outliers: { ms: number; op: string; lba: number; at: number }[] = [];
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let seed = 0x5eed;
  const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);

  async function lane(slot: number): Promise<void> {
    const offset = slot * unitBytes;
    const view = buf.bytes.subarray(offset, offset + unitBytes);
    while (performance.now() < end) {
      let u = Math.floor(rand() * units);
      while (busy[u]) u = (u + 1) % units;
      busy[u] = 1;
      const lba = u * blocks;
      const write = gen[u] === 0 || rand() < 0.5;
      const s = performance.now();
      try {
        if (write) {
          fillCrashPattern(view, gen[u]! + 1, lba, ns.lbaSize);
          await ns.write(lba, blocks, buf, { queue: q, offset });
          gen[u]!++;
        } else {
          await ns.read(lba, blocks, buf, { queue: q, offset });
          fillCrashPattern(want, gen[u]!, lba, ns.lbaSize);
          if (Buffer.compare(view, want) !== 0) {
            mismatches++;
            process.stderr.write(`soak: MISMATCH at LBA ${lba} (generation ${gen[u]})\n`);
          }
        }
      } catch (e) {
        errors++;
        process.stderr.write(`soak: error: ${(e as Error).message}\n`);
      }
      const ms = performance.now() - s;
      if (nLat < lat.length) lat[nLat++] = ms;
      if (ms > 250) outliers.push({ ms, op: write ? "write" : "read", lba, at: (s - t0) / 1000 });
      busy[u] = 0;
      done++;
    }
  }

  const ticker = setInterval(() => {
    const t = (performance.now() - t0) / 1000;
    process.stderr.write(`soak: ${t.toFixed(0)} s: ${done} commands, ${(done / t).toFixed(0)} IOPS, ${errors} errors, ${mismatches} mismatches\n`);
  }, 10_000);
  await Promise.all(Array.from({ length: qd }, (_, i) => lane(i)));
  clearInterval(ticker);

  const sorted = lat.subarray(0, nLat).sort();
  const p = (x: number) => sorted[Math.min(nLat - 1, Math.floor(x * nLat))] ?? 0;
  const elapsed = (performance.now() - t0) / 1000;
  const result = {
    date: new Date().toISOString(),
    ctrl: ctrl.name,
    nsid,
    seconds: elapsed,
    qd,
    blocks,
    commands: done,
    iops: done / elapsed,
    errors,
    mismatches,
    resets: ctrl.resets,
    latencyMs: { min: sorted[0] ?? 0, p50: p(0.5), p99: p(0.99), p999: p(0.999), max: sorted[nLat - 1] ?? 0 },
    outliers: outliers.slice(0, 20),
    outlierCount: outliers.length,
  };
  if (args.json) console.log(toJson(result));
  else {
    console.log(`soak: ${done} commands in ${elapsed.toFixed(0)} s (${result.iops.toFixed(0)} IOPS), ${errors} errors, ${mismatches} mismatches, ${ctrl.resets} resets`);
    console.log(`soak: latency ms min ${result.latencyMs.min.toFixed(3)} p50 ${result.latencyMs.p50.toFixed(3)} p99 ${result.latencyMs.p99.toFixed(3)} p99.9 ${result.latencyMs.p999.toFixed(3)} max ${result.latencyMs.max.toFixed(3)}`);
    console.log(`soak: ${outliers.length} outliers over 250 ms${outliers.length ? ": " + outliers.slice(0, 5).map((o) => `${o.op} LBA ${o.lba} ${o.ms.toFixed(0)} ms at ${o.at.toFixed(1)} s`).join(", ") : ""}`);
  }
  if (errors > 0 || mismatches > 0) process.exitCode = 1;
});
