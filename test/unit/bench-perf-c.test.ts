/**
 * bench/perf-c.ts, the C reference driver of `bun run bench:guest`: it must do what
 * examples/perf.ts does, so that the two can be compared. Here both run, on the host, against the
 * benchmarks' memory backend with the completer thread of c/src/bench.c standing in for the
 * controller (it logs CDW0 and CDW10-12 of every entry it answers): for the same workload and seed
 * they must send the same commands in the same order (opcode, SLBA, NLB), return results of the
 * same shape that perf.ts turns into its JSON, file latencies under the same histogram buckets,
 * build PRPs (and PRP lists) for each CID's own slice of the buffer, and hand the queue back
 * usable. Nothing is timed.
 *
 * Both spin (the poller here, the completer thread beside it): on a busy 2-CPU machine a run can
 * stall for scheduler time slices, so these tests get a longer limit than bun's 5 s.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DmaBuffer } from "../../lib/dma.ts";
import { InvalidArgumentError, UnsupportedError } from "../../lib/errors.ts";
import { IoCompletionQueue, IoQueue } from "../../lib/io.ts";
import { NVM_READ, NVM_WRITE } from "../../lib/spec/commands.ts";
import type { NvmeIoQueue } from "../../lib/transports/types.ts";
import { benchNative } from "../../bench/bench-native.ts";
import { answeredQueueContext, MemoryBackend } from "../../bench/memory-backend.ts";
import { runJobC } from "../../bench/perf-c-engine.ts";
import { C_ENGINE } from "../../bench/perf-c.ts";
import { alternateEngine, type SliceFigure } from "../../bench/perf-alternate.ts";
import type { Controller } from "../../lib/controller.ts";
import { HIST_BUCKETS, jitCpuTicks, LatencyHistogram, progressSlots, runJob, type JobResult, type Workload } from "../../examples/perf-engine.ts";

const lib = benchNative();
const be = new MemoryBackend();
afterAll(() => be.close());

const ENTRIES = 64;
const LBA = 512;
const NSID = 1;
const WAIT_MS = 5000;
/** Per test: a few runs of a few hundred commands each, with room for scheduler stalls. */
const TEST_MS = 60_000;
const ctx = answeredQueueContext(be, { who: "bench-perf-c.test", timeoutMs: WAIT_MS, lbaSize: LBA });
/** What runJobC reads of a controller. */
const ctrl = { backend: be, knownLbaSizes: new Map([[NSID, LBA]]) };

let nextQid = 1;

interface Rig {
  q: IoQueue;
  cq: IoCompletionQueue;
  buf: DmaBuffer;
  log: DmaBuffer;
  completer: number;
  close(): void;
}

/** A queue pair over memory, a buffer of depth x bs, and a completer that logs what it answers. */
function rig(bs: number, logEntries: number): Rig {
  const qid = nextQid++;
  const sqDb = 0x1000 + 8 * qid;
  const cqDb = sqDb + 4;
  be.regs[sqDb / 4] = 0;
  be.regs[cqDb / 4] = 0;
  const cq = new IoCompletionQueue(be, qid, ENTRIES, 0);
  const q = new IoQueue(ctx, qid, ENTRIES, cq);
  cq.sqs.set(qid, q);
  const buf = new DmaBuffer(be, q.depth * bs);
  const log = new DmaBuffer(be, Math.max(1, logEntries) * 16);
  const completer = lib.nvm_bench_completer_start(q.sq.mem.pointer, ENTRIES, cq.cq.mem.pointer, ENTRIES, be.bar0, sqDb, cqDb, qid, -1);
  if (completer < 0) throw new Error(`completer: errno ${-completer}`);
  expect(lib.nvm_bench_completer_log(completer, log.pointer, logEntries)).toBe(0);
  return {
    q,
    cq,
    buf,
    log,
    completer,
    close() {
      expect(lib.nvm_bench_completer_bad(completer)).toBe(0);
      lib.nvm_bench_completer_stop(completer);
      q.free();
      cq.free();
      buf.free();
      log.free();
    },
  };
}

/** The commands the completer answered: [opcode, SLBA, NLB] in SQ order. */
function commands(r: Rig): [number, number, number][] {
  const n = lib.nvm_bench_completer_logged(r.completer);
  const l = r.log.u32;
  const out: [number, number, number][] = [];
  for (let i = 0; i < n; i++) out.push([l[4 * i]! & 0xff, l[4 * i + 1]! + l[4 * i + 2]! * 0x1_0000_0000, (l[4 * i + 3]! & 0xffff) + 1]);
  return out;
}

function workload(over: Partial<Workload>): Workload {
  return {
    nsid: NSID,
    lbaSize: LBA,
    firstLba: 0,
    spanBlocks: 1 << 20,
    bs: 4096,
    qd: 4,
    pattern: "rand",
    rw: "read",
    rwmixRead: 50,
    ios: 300,
    warmupSeconds: 0,
    api: "low",
    seed: 1234,
    idleSleepUs: 0,
    ...over,
  };
}

const progress = () => new Float64Array(new SharedArrayBuffer(8 * progressSlots(1)));

/** Run `w` through TypeScript's runJob and through the C reference, each on a rig of its own. */
async function both(w: Workload): Promise<{ ts: JobResult; c: JobResult; tsCmds: [number, number, number][]; cCmds: [number, number, number][] }> {
  const n = w.ios! + 2 * ENTRIES;
  const a = rig(w.bs, n);
  const b = rig(w.bs, n);
  try {
    const ts = await runJob(a.q, a.buf, w, progress(), 0);
    const c = runJobC(ctrl, b.q, b.buf, w, progress(), 0);
    return { ts, c, tsCmds: commands(a), cCmds: commands(b) };
  } finally {
    a.close();
    b.close();
  }
}

describe("the C reference sends what perf.ts sends", () => {
  const cases: [string, Partial<Workload>][] = [
    ["4 KiB random reads at QD 4", {}],
    ["4 KiB random writes at QD 32 in part of the namespace", { rw: "write", qd: 32, firstLba: 4096, spanBlocks: 100_000, seed: 99 }],
    ["a 70/30 random mix at QD 8", { rw: "mix", rwmixRead: 70, qd: 8, seed: 7 }],
    ["sequential writes at QD 2 that wrap around a small span", { pattern: "seq", rw: "write", qd: 2, spanBlocks: 80, firstLba: 16 }],
    ["128 KiB sequential reads at QD 8 (PRP lists)", { pattern: "seq", bs: 128 * 1024, qd: 8, ios: 100 }],
    ["seed 0 (the engine's fixed fallback seed)", { seed: 0, qd: 1, ios: 50 }],
  ];
  for (const [name, over] of cases) {
    test(name, async () => {
      const w = workload(over);
      const { ts, c, tsCmds, cCmds } = await both(w);
      expect(cCmds.length).toBe(w.ios!);
      expect(cCmds).toEqual(tsCmds);
      for (const [opcode, slba, nlb] of cCmds) {
        expect(opcode === NVM_READ || opcode === NVM_WRITE).toBe(true);
        expect(nlb).toBe(w.bs / LBA);
        expect(slba).toBeGreaterThanOrEqual(w.firstLba);
        expect(slba + nlb).toBeLessThanOrEqual(w.firstLba + w.spanBlocks);
      }
      // The results perf.ts turns into its JSON: same shape, same counts.
      expect(Object.keys(c).sort()).toEqual(Object.keys(ts).sort());
      expect(Object.keys(c.hist).sort()).toEqual(Object.keys(ts.hist).sort());
      for (const r of [ts, c]) {
        expect(r.ios).toBe(w.ios!);
        expect(r.bytes).toBe(w.ios! * w.bs);
        expect(r.errors).toBe(0);
        expect(r.interrupted).toBe(false);
        expect(r.hist.count).toBe(w.ios!);
        expect(r.hist.counts.length).toBe(HIST_BUCKETS);
        expect(r.hist.counts.reduce((x, y) => x + y, 0)).toBe(w.ios!);
        expect(r.hist.min).toBeLessThanOrEqual(r.hist.max);
        // How the loop met the controller: every doorbell posted or reaped 1 to QD commands.
        const l = r.loop!;
        expect(l.reaps).toBeGreaterThanOrEqual(1);
        expect(l.reaps).toBeLessThanOrEqual(l.polls);
        expect(l.reaps).toBeLessThanOrEqual(w.ios!);
        expect(l.reaps * w.qd).toBeGreaterThanOrEqual(w.ios!);
        expect(l.submits).toBeGreaterThanOrEqual(1);
        expect(l.submits).toBeLessThanOrEqual(w.ios!);
        expect(l.submits * w.qd).toBeGreaterThanOrEqual(w.ios! - w.qd);
      }
      expect([c.reads, c.writes]).toEqual([ts.reads, ts.writes]);
      expect(c.reads + c.writes).toBe(w.ios!);
    }, TEST_MS);
  }
});

describe("the C reference's queue handling", () => {
  test("--turnaround-delay: both engines wait that long after each poll that reaped, before the refill, and still send the same commands", async () => {
    // Only the low-level loop has a turnaround to delay: perf.ts refuses it with --api=async, before any controller.
    const refused = Bun.spawnSync(["bun", join(import.meta.dir, "../../examples/perf.ts"), "--ctrl=0000:00:00.0", "--api=async", "--turnaround-delay=2"], { stdout: "pipe", stderr: "pipe" });
    expect({ code: refused.exitCode, err: refused.stderr.toString().split("\n")[0] }).toEqual({ code: 2, err: "--turnaround-delay is an experiment of the low-level loop: use it with --api=low" });
    const delayUs = 300;
    const w = workload({ qd: 4, ios: 60, turnaroundDelayUs: delayUs });
    const { ts, c, tsCmds, cCmds } = await both(w);
    expect(cCmds).toEqual(tsCmds);
    for (const r of [ts, c]) {
      expect(r.ios).toBe(w.ios!);
      // Every reap but the last waits inside the measured window, by construction (a clock-bounded spin).
      expect(r.seconds).toBeGreaterThanOrEqual(((r.loop!.reaps - 1) * delayUs) / 1e6 - 1e-6);
    }
  }, TEST_MS);

  test("PRP1 is the CID's slice of the buffer; PRP2 the next page or the CID's own PRP list", () => {
    for (const bs of [4096, 8192, 128 * 1024]) {
      const r = rig(bs, 256);
      try {
        const w = workload({ bs, qd: 8, ios: 40, pattern: "seq" });
        runJobC(ctrl, r.q, r.buf, w, progress(), 0);
        const sqe = r.q.sq.sqe;
        const bus = r.buf.busAddress(0);
        // The ring still holds the last ENTRIES commands; check every one of them.
        for (let slot = 0; slot < ENTRIES; slot++) {
          const o = slot * 16;
          if (sqe[o] === 0) continue;
          const cid = sqe[o]! >>> 16;
          const prp1 = sqe[o + 6]! + sqe[o + 7]! * 0x1_0000_0000;
          const prp2 = sqe[o + 8]! + sqe[o + 9]! * 0x1_0000_0000;
          expect(prp1).toBe(bus + cid * bs);
          if (bs === 4096) expect(prp2).toBe(0);
          else if (bs === 8192) expect(prp2).toBe(prp1 + 4096);
          else {
            const list = r.q.listBuffer(cid);
            expect(prp2).toBe(list.busAddress(0));
            const l = list.u32;
            for (let i = 0; i < bs / 4096 - 1; i++) expect(l[2 * i]! + l[2 * i + 1]! * 0x1_0000_0000).toBe(prp1 + (i + 1) * 4096);
          }
        }
      } finally {
        r.close();
      }
    }
  }, TEST_MS);

  test("hands the rings back: TypeScript runs on the same queue afterwards, and C again after it", async () => {
    const r = rig(4096, 0);
    try {
      const w = workload({ qd: 16, ios: 3 * ENTRIES + 5 }); // wraps both rings, phase flips
      expect(runJobC(ctrl, r.q, r.buf, w, progress(), 0).ios).toBe(w.ios!);
      expect(r.q.sq.tail).toBe(w.ios! % ENTRIES);
      expect(r.cq.cq.head).toBe(w.ios! % ENTRIES);
      expect(r.cq.cq.phase).toBe(Math.floor(w.ios! / ENTRIES) % 2 === 0 ? 1 : 0);
      expect((await runJob(r.q, r.buf, w, progress(), 0)).ios).toBe(w.ios!);
      expect(runJobC(ctrl, r.q, r.buf, w, progress(), 0).ios).toBe(w.ios!);
      expect(r.q.outstanding).toBe(0);
      expect(r.cq.credits).toBe(ENTRIES - 1);
    } finally {
      r.close();
    }
  }, TEST_MS);

  test("a timed run measures after its warm-up and stops; the stop flag interrupts it", () => {
    const r = rig(4096, 0);
    try {
      const p = progress();
      const res = runJobC(ctrl, r.q, r.buf, workload({ ios: undefined, seconds: 0.2, warmupSeconds: 0.1, qd: 2 }), p, 0);
      expect(res.ios).toBeGreaterThan(0);
      expect(res.seconds).toBeGreaterThanOrEqual(0.2);
      expect(res.interrupted).toBe(false);
      expect(p[1]).toBe(res.ios); // progress: commands, bytes, measuring
      expect(p[2]).toBe(res.ios * 4096);
      expect(p[3]).toBe(1);
      // Set before the start: seen at the first look (50 ms in), long before 60 s.
      const stop = progress();
      stop[0] = 1;
      const cut = runJobC(ctrl, r.q, r.buf, workload({ ios: undefined, seconds: 60, qd: 2 }), stop, 0);
      expect(cut.interrupted).toBe(true);
      expect(r.q.outstanding).toBe(0);
    } finally {
      r.close();
    }
  }, TEST_MS);

  test("the engine's warm-up lasts at least --warmup and waits (bounded) for the JIT's threads to go quiet", async () => {
    expect(jitCpuTicks()).toBeGreaterThanOrEqual(0); // Linux: /proc/self/task names JSC's JIT threads
    const r = rig(4096, 0);
    try {
      const res = await runJob(r.q, r.buf, workload({ ios: undefined, seconds: 0.1, warmupSeconds: 0.2, qd: 2 }), progress(), 0);
      expect(res.warmupSeconds).toBeGreaterThanOrEqual(0.2);
      expect(typeof res.jitQuiet).toBe("boolean");
      expect(res.ios).toBeGreaterThan(0);
      // Without a warm-up the window starts at once and nothing is checked.
      const now = await runJob(r.q, r.buf, workload({ ios: 20 }), progress(), 0);
      expect(now.warmupSeconds).toBe(0);
      expect(now.jitQuiet).toBeUndefined();
    } finally {
      r.close();
    }
  }, TEST_MS);

  test("--mark: both engines write when the measured window starts (C's lies a warm-up ahead); only the first job writes", async () => {
    const dir = mkdtempSync(join(tmpdir(), "libnvm-mark-"));
    const r = rig(4096, 0);
    try {
      const file = join(dir, "ts");
      const before = Date.now();
      const res = await runJob(r.q, r.buf, workload({ ios: undefined, seconds: 0.1, warmupSeconds: 0.2, qd: 2, markFile: file }), progress(), 0);
      const ts = JSON.parse(readFileSync(file, "utf8")) as { at: number; seconds: number };
      expect(ts.seconds).toBe(0.1);
      // Written when measuring began: after the warm-up the job reports, before the job ended.
      expect(ts.at).toBeGreaterThanOrEqual(before + res.warmupSeconds * 1000 - 50);
      expect(ts.at).toBeLessThanOrEqual(Date.now());
      const cFile = join(dir, "c");
      const t0 = Date.now();
      runJobC(ctrl, r.q, r.buf, workload({ ios: undefined, seconds: 0.1, warmupSeconds: 0.3, qd: 2, markFile: cFile }), progress(), 0);
      const c = JSON.parse(readFileSync(cFile, "utf8")) as { at: number };
      expect(c.at).toBeGreaterThanOrEqual(t0 + 300);
      const other = join(dir, "second");
      await runJob(r.q, r.buf, workload({ ios: 10, markFile: other }), progress(), 1);
      expect(existsSync(other)).toBe(false);
    } finally {
      r.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, TEST_MS);

  test("perf-alternate: TS and C take turns on one queue pair in slices; each slice pair has both figures; the queue is left empty", async () => {
    const r = rig(4096, 0);
    try {
      const out = { slices: [] as { ts: SliceFigure; c: SliceFigure }[] };
      const engine = alternateEngine(0.2, out);
      expect(engine.refuse({ api: "async", queues: 1, workers: false })).toContain("low-level API only");
      const res = await engine.run(ctrl as unknown as Controller, r.q, r.buf, workload({ ios: undefined, seconds: 1.2, qd: 4 }), progress(), 0);
      expect(out.slices.length).toBe(3); // 1.2 s in turns of 0.2 s each side
      for (const s of out.slices) {
        expect(s.ts.iops).toBeGreaterThan(0);
        expect(s.c.iops).toBeGreaterThan(0);
        expect(s.ts.p50Us).toBeGreaterThan(0);
        expect(s.ts.errors + s.c.errors).toBe(0);
      }
      // The TypeScript slices together: as many commands as their histograms hold.
      expect(res.ios).toBe(res.hist.count);
      expect(res.seconds).toBeGreaterThan(0.5);
      expect(r.q.outstanding).toBe(0);
    } finally {
      r.close();
    }
  }, TEST_MS);

  test("refuses what it does not run", () => {
    const r = rig(4096, 0);
    try {
      expect(() => runJobC(ctrl, r.q, r.buf, workload({ api: "async" }), progress(), 0)).toThrow(UnsupportedError);
      expect(() => runJobC(ctrl, r.q, r.buf, workload({ api: "async" }), progress(), 0)).toThrow(/low-level API only/);
      // A TCP queue has no rings or doorbells to hand to C: refused before anything is read from it.
      const tcp = { transport: "tcp", qid: 1, depth: 4 } as unknown as NvmeIoQueue;
      expect(() => runJobC(ctrl, tcp, r.buf, workload({}), progress(), 0)).toThrow(UnsupportedError);
      expect(() => runJobC(ctrl, tcp, r.buf, workload({}), progress(), 0)).toThrow(/PCIe queues/);
      expect(() => runJobC(ctrl, r.q, r.buf, workload({ qd: r.q.depth + 1 }), progress(), 0)).toThrow(InvalidArgumentError);
      expect(() => runJobC(ctrl, r.q, r.buf, workload({ qd: r.q.depth + 1 }), progress(), 0)).toThrow(/exceeds the queue's/);
      expect(() => runJobC({ backend: be, knownLbaSizes: new Map() }, r.q, r.buf, workload({}), progress(), 0)).toThrow(/LBA size is not known/);
      expect(C_ENGINE.refuse({ api: "low", queues: 1, workers: false })).toBeUndefined();
      expect(C_ENGINE.refuse({ api: "async", queues: 1, workers: false })).toMatch(/--api=low/);
      expect(C_ENGINE.refuse({ api: "low", queues: 2, workers: false })).toMatch(/one queue pair/);
      expect(C_ENGINE.refuse({ api: "low", queues: 1, workers: true })).toMatch(/one queue pair/);
    } finally {
      r.close();
    }
  });
});

test("latencies fall in the same histogram buckets in C and in the engine", () => {
  const values = [0, 1, 63, 64, 65, 127, 128, 129, 1000, 4095, 4096, 65_535, 1_234_567, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 12_345, 2 ** 40 + 7, 2 ** 47, 2 ** 47 + 2 ** 41, 2 ** 50];
  for (let v = 1; v < 2 ** 36; v = Math.floor(v * 1.37) + 1) values.push(v);
  for (const v of values) {
    const h = new LatencyHistogram();
    h.record(v);
    const ts = h.counts.findIndex((x) => x === 1);
    expect([v, lib.nvm_bench_perf_bucket(v >>> 0, Math.floor(v / 0x1_0000_0000))]).toEqual([v, ts]);
  }
});
