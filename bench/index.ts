/**
 * Per-command software cost of libnvm's I/O path, next to the same loop in C.
 *
 * Purpose: what our TypeScript path costs per command — build an SQE in place, submit, ring the
 * doorbell, reap the CQE and dispatch it — for the low-level API (acquire/rw/submit/poll, and
 * acquire/writeSqe/post for callers that write their own entries) and for the async API
 * (rwAsync), against the same loop written in C (c/src/bench.c, called once per batch).
 *
 * Method: no device. The queues live in ordinary locked memory (bench/memory-backend.ts) and a
 * completer thread (c/src/bench.c) stands in for the controller: it watches the SQ tail doorbell
 * and answers every new entry at once. The benchmark thread is pinned to CPU 0 and the completer
 * to CPU 1 when there are two CPUs or more. mitata times one batch per iteration: B commands,
 * one doorbell, then reap until all B completed; ns/command = time per batch / B.
 *   1. batch sizes 1, 8, 32 (and 128): ns/command for TS rw(), TS writeSqe+post, TS rwAsync, C,
 *      and a flat TS loop (the C loop's work hand-inlined in one function, no library): the
 *      JIT's own floor, so rw()'s distance from it is what the library's structure costs;
 *   2. outstanding 1..128: one command per doorbell while the completer holds N-1 back, so N
 *      are always outstanding: the per-command cost must stay flat;
 *   3. heap: 10^6 commands through rw() against the completer: heap before/after (full GC),
 *      and heap capacity growth per 10^4 commands (no GC in between) with rwAsync as a control
 *      that does allocate (a promise per command).
 *
 *   bun run bench [--json] [--no-pin] [--filter REGEX] [--skip-heap]
 *
 * The figures depend on the machine and on whatever else runs on it (two shared cores here):
 * the header prints date, CPUs, kernel and load; compare TS and C within one run only.
 */
import { bench, group, run } from "mitata";
import { heapStats } from "bun:jsc";
import { parseArgs } from "node:util";
import { cpus } from "node:os";
import { DmaBuffer } from "../lib/dma.ts";
import { IoCompletionQueue, IoQueue } from "../lib/io.ts";
import { NVM_READ, writeSqe } from "../lib/spec/commands.ts";
import { native } from "../lib/native.ts";
import { benchNative, NO_THREAD } from "./bench-native.ts";
import { describeMachine, finishMachineInfo, machineInfo, table } from "./machine.ts";
import { answeredQueueContext, MemoryBackend } from "./memory-backend.ts";

const { values: args } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    json: { type: "boolean", default: false },
    "no-pin": { type: "boolean", default: false },
    "skip-heap": { type: "boolean", default: false },
    "skip-mitata": { type: "boolean", default: false },
    inline: { type: "boolean", default: false },
    rounds: { type: "string", default: "60" },
    filter: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});
if (args.help) {
  process.stdout.write(
    "usage: bun run bench [--json] [--no-pin] [--rounds N] [--inline] [--skip-mitata] [--filter REGEX] [--skip-heap]\n" +
      "  --rounds N     paired rounds for the ratio tables (default 60)\n" +
      "  --inline       no completer thread: the waiting loop runs the completer itself (software cost alone,\n" +
      "                 no cross-core traffic; the async API is left out, its poller cannot step it)\n  see bench/README.md\n",
  );
  process.exit(0);
}
const ROUNDS = Math.max(3, Number(args.rounds) | 0);

const BATCHES = [1, 8, 32, 128];
const OUTSTANDING = [1, 2, 4, 8, 16, 32, 64, 128];
/** Entries per ring: depth 255 covers 128 outstanding plus a batch. */
const ENTRIES = 256;
const BS = 4096;
const BLOCKS = 8; // 512-byte LBAs: 4 KiB per command
const LBA_MASK = 0xffffff;
const HEAP_COMMANDS = 1_000_000;
const WAIT_LIMIT_MS = 10_000;
/** Commands per contestant per round in the paired comparisons. */
const BURST_COMMANDS = 4096;

const lib = benchNative();
const pin = !args["no-pin"] && cpus().length >= 2;
/** --inline: completers without a thread, stepped by whoever waits (software cost alone). */
const INLINE = args.inline === true;
const COMPLETER_CPU = INLINE ? NO_THREAD : pin ? 1 : -1;
if (pin && lib.nvm_bench_pin(0) !== 0) process.stderr.write("bench: could not pin the benchmark thread to CPU 0\n");

const machine = machineInfo();
const be = new MemoryBackend();
// The completer thread answers every command, so no deadline passes: recovery is never asked for.
const ctx = answeredQueueContext(be, { who: "bench", timeoutMs: WAIT_LIMIT_MS, lbaSize: BS / BLOCKS });

// ---- contestants: a queue pair, its completer and one way of driving it ------------------------

/** Completions seen by the low-level handler (one handler for every TS queue; context is the CID). */
let completed = 0;
let failed = 0;
function onComplete(_cid: number, status: number): void {
  completed++;
  if (status !== 0) failed++;
}

/** c: the C loop as the library works (one clock read per batch); cpc: a clock read per command. */
type Kind = "rw" | "raw" | "async" | "flat" | "c" | "cpc";
const NAMES: Record<Kind, string> = {
  rw: "ts rw()",
  raw: "ts writeSqe+post",
  async: "ts rwAsync",
  flat: "ts flat loop",
  c: "c loop",
  cpc: "c loop, clock per command",
};

interface Contestant {
  readonly kind: Kind;
  readonly batch: number;
  readonly outstanding: number;
  readonly completer: number;
  /** Run `batches` batches of `batch` commands (each: post, one doorbell, reap all). */
  run(batches: number): void | Promise<void>;
  close(): void;
}

// Every contestant has its own queue id, so several can exist at once (paired rounds).
let nextQid = 1;
const freeQids: number[] = [];
const sqDoorbell = (qid: number) => 0x1000 + 8 * qid;
const cqDoorbell = (qid: number) => 0x1000 + 8 * qid + 4;
function allocQid(): number {
  const qid = freeQids.pop() ?? nextQid++;
  // Doorbells start at 0, as on a newly created queue.
  be.regs[sqDoorbell(qid) / 4] = 0;
  be.regs[cqDoorbell(qid) / 4] = 0;
  return qid;
}

function startCompleter(qid: number, sq: DmaBuffer, cq: DmaBuffer, hold: number): number {
  const h = lib.nvm_bench_completer_start(sq.pointer, ENTRIES, cq.pointer, ENTRIES, be.bar0, sqDoorbell(qid), cqDoorbell(qid), qid, COMPLETER_CPU);
  if (h < 0) throw new Error(`nvm_bench_completer_start: errno ${-h}`);
  lib.nvm_bench_completer_hold(h, hold);
  return h;
}

function stopCompleter(h: number): void {
  const bad = lib.nvm_bench_completer_bad(h);
  lib.nvm_bench_completer_stop(h);
  if (bad !== 0) throw new Error(`the completer saw ${bad} out-of-range doorbell values`);
}

/** Nothing reaped: step an inline completer, or check the wait's deadline now and then. */
function wait(spins: number, since: number, completer: number): void {
  if (INLINE) lib.nvm_bench_completer_step(completer);
  else checkWait(spins, since);
}

function checkWait(spins: number, since: number): void {
  if ((spins & 0xffff) === 0xffff && performance.now() - since > WAIT_LIMIT_MS) {
    throw new Error(`no completion within ${WAIT_LIMIT_MS} ms: is the completer running?`);
  }
}

let lba = 0;

/** Low-level API: acquire, rw() (checks, SQE, PRPs, post), one submit, poll until B completed. */
function tsRwBatch(q: IoQueue, buf: DmaBuffer, b: number, completer: number): void {
  const want = completed + b;
  for (let i = 0; i < b; i++) {
    const cid = q.acquire();
    if (cid < 0) throw new Error("queue full");
    q.rw(cid, NVM_READ, 1, lba, BLOCKS, buf, cid * BS, BS);
    lba = (lba + BLOCKS) & LBA_MASK;
  }
  q.submit();
  const since = performance.now();
  for (let spins = 0; completed < want; spins++) if (q.poll() === 0) wait(spins, since, completer);
}

/** Low-level API with the caller's own writer: acquire, writeSqe at `slot` (PRP1 of the CID's page), post. */
function tsRawBatch(q: IoQueue, bus: number, b: number, completer: number): void {
  const sqe = q.sq.sqe;
  const want = completed + b;
  for (let i = 0; i < b; i++) {
    const cid = q.acquire();
    if (cid < 0) throw new Error("queue full");
    writeSqe(sqe, q.slot, NVM_READ, cid, 1, bus + cid * BS, 0, lba, 0, BLOCKS - 1);
    q.post(cid);
    lba = (lba + BLOCKS) & LBA_MASK;
  }
  q.submit();
  const since = performance.now();
  for (let spins = 0; completed < want; spins++) if (q.poll() === 0) wait(spins, since, completer);
}

/** Async API: B promises; the doorbell rings once per microtask turn, the poller reaps. */
function tsAsyncBatch(q: IoQueue, buf: DmaBuffer, ps: Promise<number>[]): Promise<number[]> {
  for (let i = 0; i < ps.length; i++) {
    ps[i] = q.rwAsync(NVM_READ, 1, lba, BLOCKS, buf, i * BS, BS);
    lba = (lba + BLOCKS) & LBA_MASK;
  }
  return Promise.all(ps);
}

/** An IoQueue over memory with `outstanding - 1` commands held back by its completer. */
function tsContestant(kind: "rw" | "raw" | "async", batch: number, outstanding = 1): Contestant {
  const qid = allocQid();
  const cq = new IoCompletionQueue(be, qid, ENTRIES, 0);
  const q = new IoQueue(ctx, qid, ENTRIES, cq);
  cq.sqs.set(qid, q);
  q.onComplete = onComplete;
  const buf = new DmaBuffer(be, ENTRIES * BS);
  const bus = buf.busAddress(0);
  const hold = outstanding - 1;
  const completer = startCompleter(qid, q.sq.mem, cq.cq.mem, hold);
  for (let i = 0; i < hold; i++) {
    const cid = q.acquire();
    q.rw(cid, NVM_READ, 1, i * BLOCKS, BLOCKS, buf, cid * BS, BS);
  }
  if (hold > 0) q.submit();
  const ps = new Array<Promise<number>>(batch);
  let run: (n: number) => void | Promise<void>;
  if (kind === "rw") run = (n) => {
    for (let i = 0; i < n; i++) tsRwBatch(q, buf, batch, completer);
  };
  else if (kind === "raw") run = (n) => {
    for (let i = 0; i < n; i++) tsRawBatch(q, bus, batch, completer);
  };
  else run = async (n) => {
    for (let i = 0; i < n; i++) await tsAsyncBatch(q, buf, ps);
  };
  return {
    kind,
    batch,
    outstanding,
    completer,
    run,
    close() {
      lib.nvm_bench_completer_pause(completer, 0);
      lib.nvm_bench_completer_hold(completer, 0);
      const deadline = performance.now() + WAIT_LIMIT_MS;
      while (q.outstanding > 0) {
        if (q.poll() === 0 && INLINE) lib.nvm_bench_completer_step(completer);
        if (performance.now() > deadline) throw new Error(`${q.outstanding} commands never completed`);
      }
      stopCompleter(completer);
      q.free();
      cq.free();
      buf.free();
      freeQids.push(qid);
    },
  };
}

/**
 * The C loop on its own rings, same completer, same doorbell layout. Deadlines from one clock read
 * per batch, as IoQueue does (the first post() after a submit() reads it); `clockPerCommand`: one
 * read per command instead.
 */
function cContestant(batch: number, outstanding = 1, clockPerCommand = false): Contestant {
  const qid = allocQid();
  const sq = new DmaBuffer(be, ENTRIES * 64, { contiguous: true });
  const cq = new DmaBuffer(be, ENTRIES * 16, { contiguous: true });
  const buf = new DmaBuffer(be, ENTRIES * BS);
  const bus = buf.busAddress(0);
  const loop = lib.nvm_bench_loop_create(
    sq.pointer, ENTRIES, cq.pointer, ENTRIES, be.bar0, sqDoorbell(qid), cqDoorbell(qid), 1, bus % 2 ** 32, Math.floor(bus / 2 ** 32), buf.size, BS,
  );
  if (loop < 0) throw new Error(`nvm_bench_loop_create: errno ${-loop}`);
  lib.nvm_bench_loop_clock(loop, clockPerCommand ? 0 : 1);
  const hold = outstanding - 1;
  const completer = startCompleter(qid, sq, cq, hold);
  if (INLINE) lib.nvm_bench_loop_inline(loop, completer);
  if (hold > 0) lib.nvm_bench_loop_post(loop, hold, NVM_READ);
  return {
    kind: clockPerCommand ? "cpc" : "c",
    batch,
    outstanding,
    completer,
    run(n) {
      for (let i = 0; i < n; i++) {
        if (lib.nvm_bench_loop_batch(loop, batch, NVM_READ) !== batch) throw new Error("C loop: no completion within its deadline");
      }
    },
    close() {
      lib.nvm_bench_completer_pause(completer, 0);
      lib.nvm_bench_completer_hold(completer, 0);
      const left = lib.nvm_bench_loop_drain(loop);
      const errors = lib.nvm_bench_loop_errors(loop);
      stopCompleter(completer);
      lib.nvm_bench_loop_destroy(loop);
      sq.free();
      cq.free();
      buf.free();
      freeQids.push(qid);
      if (left !== 0 || errors !== 0) throw new Error(`C loop: ${left} commands left outstanding, ${errors} errors`);
    },
  };
}

/**
 * The C loop's work written flat in TypeScript, with no library: one function, locals, the same
 * checks, tracker stores and PRPs from the page table. Not an API anyone should use; it shows what
 * the JIT itself costs over C, so the rest of the gap is what the library's structure costs.
 */
function flatContestant(batch: number, outstanding = 1): Contestant {
  const qid = allocQid();
  const sqMem = new DmaBuffer(be, ENTRIES * 64, { contiguous: true });
  const cqMem = new DmaBuffer(be, ENTRIES * 16, { contiguous: true });
  const buf = new DmaBuffer(be, ENTRIES * BS);
  const sq = sqMem.u32;
  const cq = cqMem.u32;
  const iova = buf.iova;
  const bar0 = be.bar0;
  const n = native();
  const depth = ENTRIES - 1;
  const state = new Uint8Array(depth);
  const free = new Uint16Array(depth);
  const deadline = new Float64Array(depth);
  const slbas = new Float64Array(depth);
  const opcodes = new Uint8Array(depth);
  for (let i = 0; i < depth; i++) free[i] = depth - 1 - i;
  let freeTop = depth;
  let credits = depth;
  let tail = 0;
  let head = 0;
  let phase = 1;
  let inflight = 0;
  let sqHead = 0;
  const completer = startCompleter(qid, sqMem, cqMem, outstanding - 1);
  const post = (count: number): void => {
    const now = performance.now();
    for (let i = 0; i < count; i++) {
      if (freeTop === 0 || credits === 0) throw new Error("queue full");
      const cid = free[--freeTop]!;
      credits--;
      const offset = cid * BS;
      if (state[cid] !== 0 || offset % 4 !== 0 || offset + BS > buf.size) throw new Error("bad command");
      const page = offset >>> 12;
      const inPage = offset & 4095;
      const o = tail * 16;
      sq[o] = NVM_READ | (cid << 16);
      sq[o + 1] = 1;
      sq[o + 2] = 0;
      sq[o + 3] = 0;
      sq[o + 4] = 0;
      sq[o + 5] = 0;
      sq[o + 6] = iova[2 * page]! + inPage;
      sq[o + 7] = iova[2 * page + 1]!;
      sq[o + 8] = 0;
      sq[o + 9] = 0;
      sq[o + 10] = lba;
      sq[o + 11] = 0;
      sq[o + 12] = BLOCKS - 1;
      sq[o + 13] = 0;
      sq[o + 14] = 0;
      sq[o + 15] = 0;
      state[cid] = 2;
      opcodes[cid] = NVM_READ;
      slbas[cid] = lba;
      deadline[cid] = now + WAIT_LIMIT_MS;
      inflight++;
      tail = tail + 1 === ENTRIES ? 0 : tail + 1;
      lba = (lba + BLOCKS) & LBA_MASK;
    }
    n.nvm_doorbell(bar0, sqDoorbell(qid), tail);
  };
  const reap = (): number => {
    let k = 0;
    for (;;) {
      const o = head * 4;
      const dw3 = Atomics.load(cq, o + 3);
      if (((dw3 >>> 16) & 1) !== phase) break;
      const dw2 = cq[o + 2]!;
      if (++head === ENTRIES) {
        head = 0;
        phase ^= 1;
      }
      k++;
      sqHead = dw2 & 0xffff;
      const cid = dw3 & 0xffff;
      if (cid >= depth || state[cid] !== 2) continue;
      state[cid] = 0;
      free[freeTop++] = cid;
      credits++;
      inflight--;
      onComplete(cid, dw3 >>> 17);
    }
    if (k > 0) n.nvm_doorbell(bar0, cqDoorbell(qid), head);
    return k;
  };
  if (outstanding > 1) post(outstanding - 1);
  return {
    kind: "flat",
    batch,
    outstanding,
    completer,
    run(batches) {
      for (let b = 0; b < batches; b++) {
        const want = completed + batch;
        post(batch);
        const since = performance.now();
        for (let spins = 0; completed < want; spins++) if (reap() === 0) wait(spins, since, completer);
      }
    },
    close() {
      lib.nvm_bench_completer_pause(completer, 0);
      lib.nvm_bench_completer_hold(completer, 0);
      const until = performance.now() + WAIT_LIMIT_MS;
      while (inflight > 0) {
        if (reap() === 0 && INLINE) lib.nvm_bench_completer_step(completer);
        if (performance.now() > until) throw new Error(`${inflight} commands never completed`);
      }
      if (sqHead !== tail) throw new Error(`SQ head ${sqHead} != tail ${tail} after draining`);
      stopCompleter(completer);
      sqMem.free();
      cqMem.free();
      buf.free();
      freeQids.push(qid);
    },
  };
}

const contestant = (kind: Kind, batch: number, outstanding = 1): Contestant =>
  kind === "c" || kind === "cpc"
    ? cContestant(batch, outstanding, kind === "cpc")
    : kind === "flat"
      ? flatContestant(batch, outstanding)
      : tsContestant(kind, batch, outstanding);

/** What mitata passes a generator benchmark: its arguments by name. */
interface BenchState {
  get(name: string): unknown;
}

// ---- mitata: distributions per case -------------------------------------------------------------

if (!args["skip-mitata"]) {
  group("per-command cost: a batch of B 4 KiB reads, one doorbell, reap all (completer thread)", () => {
    for (const kind of INLINE ? (["rw", "raw", "c"] as const) : (["rw", "raw", "async", "c"] as const)) {
      bench(`${NAMES[kind]} B=$batch`, function* (state: BenchState) {
        const c = contestant(kind, state.get("batch") as number);
        yield kind === "async" ? async () => await c.run(1) : () => c.run(1);
        c.close();
      }).args("batch", BATCHES);
    }
  });
  group("per-command cost with N outstanding: 1 read per doorbell, the completer holds N-1 back", () => {
    for (const kind of ["rw", "c"] as const) {
      bench(`${NAMES[kind]} N=$outstanding`, function* (state: BenchState) {
        const c = contestant(kind, 1, state.get("outstanding") as number);
        yield () => c.run(1);
        c.close();
      }).args("outstanding", OUTSTANDING);
    }
  });
}

const mitataResult = args["skip-mitata"]
  ? { benchmarks: [] }
  : await run({
      format: args.json ? "quiet" : "mitata",
      ...(args.filter ? { filter: new RegExp(args.filter) } : {}),
    });

/** mitata's figures per case: ns per command of the fastest and the median iteration. */
const mitataCosts: Record<string, { min: number; p50: number }> = {};
for (const trial of mitataResult.benchmarks) {
  for (const r of trial.runs) {
    if (!r.stats) continue;
    const per = (r.args.batch as number | undefined) ?? 1;
    mitataCosts[r.name] = { min: Number((r.stats.min / per).toFixed(1)), p50: Number((r.stats.p50 / per).toFixed(1)) };
  }
}

// ---- paired rounds: the ratios -----------------------------------------------------------------

/**
 * Run the contestants in turns, `ROUNDS` times, each for about BURST_COMMANDS commands with only
 * its own completer awake (the others sleep). Interference from the rest of the machine then
 * hits all of them alike within a round; ratios are taken per round, then the median.
 */
async function contest(cs: Contestant[]): Promise<number[][]> {
  const perRound: number[][] = cs.map(() => []);
  for (const c of cs) lib.nvm_bench_completer_pause(c.completer, 1);
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < cs.length; k++) {
      const i = (k + r) % cs.length; // rotate the order: no contestant always runs first
      const c = cs[i]!;
      lib.nvm_bench_completer_pause(c.completer, 0);
      await c.run(2); // wakes the completer (it sleeps up to 1 ms when paused)
      const n = Math.max(1, Math.round(BURST_COMMANDS / c.batch));
      const t0 = Bun.nanoseconds();
      await c.run(n);
      perRound[i]!.push((Bun.nanoseconds() - t0) / (n * c.batch));
      lib.nvm_bench_completer_pause(c.completer, 1);
    }
  }
  for (const c of cs) lib.nvm_bench_completer_pause(c.completer, 0);
  return perRound;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const r1 = (x: number) => Number(x.toFixed(1));
const r2 = (x: number) => Number(x.toFixed(2));

interface Paired {
  /** ns per command: median over rounds, and the fastest round. */
  median: number;
  min: number;
  /** Median over rounds of this contestant's ns / the C loop's ns in the same round. */
  ratioToC?: number;
}

function pairedStats(times: number[], cTimes?: number[]): Paired {
  const out: Paired = { median: r1(median(times)), min: r1(Math.min(...times)) };
  if (cTimes) out.ratioToC = r2(median(times.map((t, i) => t / cTimes[i]!)));
  return out;
}

const perBatch: { batch: number; rw: Paired; raw: Paired; async?: Paired; flat: Paired; c: Paired; cpc: Paired }[] = [];
for (const b of BATCHES) {
  // The async API's own poller reaps: it cannot step an inline completer.
  const kinds: Kind[] = INLINE ? ["rw", "raw", "flat", "c", "cpc"] : ["rw", "raw", "async", "flat", "c", "cpc"];
  const cs = kinds.map((k) => contestant(k, b));
  const t = await contest(cs);
  for (const c of cs) c.close();
  const of = (k: Kind) => t[kinds.indexOf(k)]!;
  const cT = of("c");
  perBatch.push({
    batch: b,
    rw: pairedStats(of("rw"), cT),
    raw: pairedStats(of("raw"), cT),
    ...(INLINE ? {} : { async: pairedStats(of("async"), cT) }),
    flat: pairedStats(of("flat"), cT),
    c: pairedStats(cT),
    cpc: pairedStats(of("cpc"), cT),
  });
}

const perOutstanding: { outstanding: number; rw: Paired; c: Paired }[] = [];
{
  const cs: Contestant[] = [];
  for (const n of OUTSTANDING) cs.push(contestant("rw", 1, n), contestant("c", 1, n));
  const t = await contest(cs);
  for (const c of cs) c.close();
  OUTSTANDING.forEach((n, i) => perOutstanding.push({ outstanding: n, rw: pairedStats(t[2 * i]!, t[2 * i + 1]!), c: pairedStats(t[2 * i + 1]!) }));
}

// ---- 3. heap -----------------------------------------------------------------------------------

interface HeapSnapshot {
  heapSize: number;
  heapCapacity: number;
  objectCount: number;
  rss: number;
}

function snapshot(): HeapSnapshot {
  const h = heapStats();
  return { heapSize: h.heapSize, heapCapacity: h.heapCapacity, objectCount: h.objectCount, rss: process.memoryUsage().rss };
}

/** Median heap-capacity growth over windows of `per` commands with no forced GC inside a window. */
async function capacityGrowth(step: (n: number) => Promise<void> | void, per: number, windows: number): Promise<number> {
  const deltas: number[] = [];
  for (let w = 0; w < windows; w++) {
    Bun.gc(true);
    const before = heapStats().heapCapacity;
    await step(per);
    deltas.push(heapStats().heapCapacity - before);
  }
  deltas.sort((a, b) => a - b);
  return deltas[Math.floor(deltas.length / 2)]!;
}

async function heapSection() {
  const B = 32;
  const c = contestant("rw", B);
  await c.run(10_000 / B); // warm up: the JIT's own allocations are not ours
  Bun.gc(true);
  const before = snapshot();
  const t0 = performance.now();
  await c.run(HEAP_COMMANDS / B);
  const seconds = (performance.now() - t0) / 1000;
  const afterNoGc = snapshot();
  Bun.gc(true);
  const after = snapshot();
  const rwGrowth = await capacityGrowth((n) => c.run(n / B), 10_000, 9);
  c.close();

  const a = contestant("async", B);
  await a.run(10_000 / B);
  const asyncGrowth = await capacityGrowth((n) => a.run(n / B), 10_000, 9);
  a.close();
  return {
    commands: HEAP_COMMANDS,
    batch: B,
    seconds: Number(seconds.toFixed(3)),
    before,
    afterNoGc,
    after,
    heapGrowthBytes: after.heapSize - before.heapSize,
    objectGrowth: after.objectCount - before.objectCount,
    capacityGrowthPer10kRw: rwGrowth,
    capacityGrowthPer10kAsync: asyncGrowth,
  };
}

const heap = args["skip-heap"] || args.filter ? undefined : await heapSection();
finishMachineInfo(machine);
if (failed !== 0) throw new Error(`${failed} commands completed with a non-zero status`);

const doc = {
  machine,
  config: {
    entries: ENTRIES,
    bytesPerCommand: BS,
    pinned: pin,
    completerCpu: COMPLETER_CPU,
    inline: INLINE,
    rounds: ROUNDS,
    burstCommands: BURST_COMMANDS,
    unit: "ns per command; paired: median over rounds (fastest round), ratio = median of per-round TS/C",
  },
  perBatch,
  perOutstanding,
  mitata: mitataCosts,
  heap,
};

const fmt = (p: Paired | undefined): string => (p ? `${p.median.toFixed(0)} (${p.min.toFixed(0)})` : "-");
const fmtR = (x: number | undefined): string => (x === undefined ? "-" : `${x.toFixed(2)}x`);

if (args.json) {
  process.stdout.write(JSON.stringify(doc, null, 2) + "\n");
} else {
  const out: string[] = ["", describeMachine(machine), ""];
  if (INLINE) out.push("--inline: no completer thread; the waiting loop answers the commands itself (software cost alone)", "");
  out.push(
    `ns per command, paired rounds (${ROUNDS} rounds of ~${BURST_COMMANDS} commands each): median round (fastest round); ratio = median over rounds of TS / C`,
  );
  out.push(
    table(
      ["batch", "ts rw()", "ts writeSqe+post", "ts rwAsync", "ts flat loop", "c loop", "rw/C", "writeSqe/C", "async/C", "flat/C", "c, clock/command"],
      perBatch.map((r) => [
        r.batch,
        fmt(r.rw),
        fmt(r.raw),
        fmt(r.async),
        fmt(r.flat),
        fmt(r.c),
        fmtR(r.rw.ratioToC),
        fmtR(r.raw.ratioToC),
        fmtR(r.async?.ratioToC),
        fmtR(r.flat.ratioToC),
        fmt(r.cpc),
      ]),
    ),
  );
  out.push(
    "targets: rw/C <= 1.3x at batch 32, <= 2x at batch 1. The C loop reads the clock once per batch for the deadlines,",
    "as IoQueue does; the last column reads it once per command (what both did before). The flat loop is the",
    "C loop's work hand-inlined in one TS function (no library): what the JIT alone costs over C.",
    "",
  );
  out.push("ns per command with N commands outstanding (1 command per doorbell, the completer holds N-1); flat = no growth with N");
  const base = perOutstanding[0]!;
  out.push(
    table(
      ["N", "ts rw()", "vs N=1", "c loop", "vs N=1", "rw/C"],
      perOutstanding.map((r) => [r.outstanding, fmt(r.rw), fmtR(r.rw.median / base.rw.median), fmt(r.c), fmtR(r.c.median / base.c.median), fmtR(r.rw.ratioToC)]),
    ),
  );
  if (heap) {
    const kb = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
    out.push("", `heap over ${heap.commands.toLocaleString("en-US")} commands through rw() (batches of ${heap.batch}, ${heap.seconds} s):`);
    out.push(
      table(
        ["", "heap size", "heap capacity", "objects", "rss"],
        [
          ["before (full GC)", kb(heap.before.heapSize), kb(heap.before.heapCapacity), heap.before.objectCount, kb(heap.before.rss)],
          ["after, no GC", kb(heap.afterNoGc.heapSize), kb(heap.afterNoGc.heapCapacity), heap.afterNoGc.objectCount, kb(heap.afterNoGc.rss)],
          ["after (full GC)", kb(heap.after.heapSize), kb(heap.after.heapCapacity), heap.after.objectCount, kb(heap.after.rss)],
        ],
      ),
    );
    out.push(
      `growth: ${heap.heapGrowthBytes} bytes, ${heap.objectGrowth} objects. Heap capacity growth per 10^4 commands (median of 9): ` +
        `rw() ${kb(heap.capacityGrowthPer10kRw)}, rwAsync ${kb(heap.capacityGrowthPer10kAsync)} (control: a promise per command)`,
    );
  }
  process.stdout.write(out.join("\n") + "\n");
}
be.close();
