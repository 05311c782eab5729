/**
 * `bun run bench:parts`: what one command costs the CPU in the library's low-level path, posting
 * and reaping timed apart, against the same work written flat (no library), with no completer
 * thread: this process answers each command itself (a successful CQE, written the same way for
 * every contestant), so nothing but software is measured.
 *
 * Contestants, in turns (paired rounds; ratios per round, then the median):
 *   - `rw()`: IoQueue.acquire() + rw() per command, submit() per batch; poll() until the batch
 *     completed, one onComplete handler;
 *   - `flat, object`: the C reference loop's work (bench.c: CID stack, three checks, 16 dwords,
 *     PRP1 from the page table, tracker stores, reap with the phase first) hand-written in
 *     methods of one class, its state in fields, as a library's would be;
 *   - `flat`: the same in closures over local variables (what bench/index.ts calls the flat loop).
 * What `rw()` costs over `flat, object` is the work the library does and the flat loop does not
 * (bench/README.md, section 1: the checks, the bookkeeping that DMA safety and error messages
 * need); `flat, object` over `flat` is the cost of state in an object.
 *
 *   bun run bench:parts [--batch N] [--rounds N] [--commands N] [--json]
 */
import type { Pointer } from "bun:ffi";
import { parseArgs } from "node:util";
import { DmaBuffer } from "../lib/dma.ts";
import { IoCompletionQueue, IoQueue } from "../lib/io.ts";
import { native } from "../lib/native.ts";
import { NVM_READ } from "../lib/spec/commands.ts";
import { describeMachine, finishMachineInfo, machineInfo, table } from "./machine.ts";
import { answeredQueueContext, MemoryBackend } from "./memory-backend.ts";

const { values: args } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    batch: { type: "string", default: "128" },
    rounds: { type: "string", default: "40" },
    commands: { type: "string", default: "128000" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
  strict: true,
});
if (args.help) {
  process.stdout.write("usage: bun run bench:parts [--batch N (1-200)] [--rounds N] [--commands N per contestant per round] [--json]\n  see bench/README.md\n");
  process.exit(0);
}
const B = Number(args.batch);
const ROUNDS = Number(args.rounds);
const PER_ROUND = Number(args.commands);
if (!(Number.isInteger(B) && B >= 1 && B <= 200) || !(Number.isInteger(ROUNDS) && ROUNDS >= 2) || !(PER_ROUND >= B)) {
  process.stderr.write("bench:parts: --batch is 1 to 200, --rounds at least 2, --commands at least one batch\n");
  process.exit(2);
}
/** The first rounds warm the JIT up and are not counted. */
const WARMUP_ROUNDS = Math.max(1, Math.floor(ROUNDS / 4));
const ENTRIES = 256;
const BS = 4096;
const BLOCKS = 8;
const WAIT_MS = 10_000;

const machine = machineInfo();
const be = new MemoryBackend();
const ctx = answeredQueueContext(be, { who: "bench:parts", timeoutMs: WAIT_MS, lbaSize: BS / BLOCKS });

let completed = 0;
let failed = 0;
function onComplete(_cid: number, status: number): void {
  completed++;
  if (status !== 0) failed++;
}
let lba = 0;

interface Contestant {
  readonly name: string;
  post(b: number): void;
  /** Play the controller: a successful CQE for each of the last `b` commands posted. */
  answer(b: number): void;
  reap(b: number): void;
}

/** The controller's part, the same for everyone: read each new SQE's CID, write its CQE. */
function answerer(sqe: Uint32Array, cqe: Uint32Array, sqTail: () => number, sqid: number): (b: number) => void {
  let head = 0;
  let phase = 1;
  return (b) => {
    let slot = (sqTail() - b + ENTRIES) % ENTRIES;
    for (let i = 0; i < b; i++) {
      const cid = sqe[slot * 16]! >>> 16;
      slot = slot + 1 === ENTRIES ? 0 : slot + 1;
      const o = head * 4;
      cqe[o] = 0;
      cqe[o + 1] = 0;
      cqe[o + 2] = slot | (sqid << 16);
      cqe[o + 3] = cid | (phase << 16);
      if (++head === ENTRIES) {
        head = 0;
        phase ^= 1;
      }
    }
  };
}

function library(): Contestant {
  const cq = new IoCompletionQueue(be, 1, ENTRIES, 0);
  const q = new IoQueue(ctx, 1, ENTRIES, cq);
  cq.sqs.set(1, q);
  q.onComplete = onComplete;
  const buf = new DmaBuffer(be, ENTRIES * BS);
  return {
    name: "rw()",
    post(b) {
      for (let i = 0; i < b; i++) {
        const cid = q.acquire();
        if (cid < 0) throw new Error("queue full");
        q.rw(cid, NVM_READ, 1, lba, BLOCKS, buf, cid * BS, BS);
        lba = (lba + BLOCKS) & 0xffffff;
      }
      q.submit();
    },
    answer: answerer(q.sq.sqe, cq.cq.cqe, () => q.sq.tail, 1),
    reap(b) {
      const want = completed + b;
      while (completed < want) if (q.poll() === 0) throw new Error("rw(): a completion written was not reaped");
    },
  };
}

/** The flat loop's rings, buffer and tracker arrays. */
function flatParts(qid: number) {
  const sqMem = new DmaBuffer(be, ENTRIES * 64, { contiguous: true });
  const cqMem = new DmaBuffer(be, ENTRIES * 16, { contiguous: true });
  const buf = new DmaBuffer(be, ENTRIES * BS);
  const depth = ENTRIES - 1;
  const free = new Uint16Array(depth);
  for (let i = 0; i < depth; i++) free[i] = depth - 1 - i;
  return {
    sq: sqMem.u32,
    cq: cqMem.u32,
    iova: buf.iova,
    bufSize: buf.size,
    depth,
    state: new Uint8Array(depth),
    free,
    deadline: new Float64Array(depth),
    slbas: new Float64Array(depth),
    opcodes: new Uint8Array(depth),
    bar0: be.bar0,
    sqDoorbell: 0x1000 + 8 * qid,
    cqDoorbell: 0x1000 + 8 * qid + 4,
  };
}

/** The flat loop with its state in the fields of an object. */
class FlatObject implements Contestant {
  readonly name = "flat, object";
  readonly sq: Uint32Array;
  readonly cq: Uint32Array;
  readonly iova: Uint32Array;
  readonly bufSize: number;
  readonly depth: number;
  readonly state: Uint8Array;
  readonly free: Uint16Array;
  readonly deadline: Float64Array;
  readonly slbas: Float64Array;
  readonly opcodes: Uint8Array;
  readonly bar0: Pointer;
  readonly sqDoorbell: number;
  readonly cqDoorbell: number;
  readonly answer: (b: number) => void;
  readonly n = native();
  freeTop: number;
  credits: number;
  tail = 0;
  head = 0;
  phase = 1;
  inflight = 0;
  sqHead = 0;

  constructor(qid: number) {
    const p = flatParts(qid);
    this.sq = p.sq;
    this.cq = p.cq;
    this.iova = p.iova;
    this.bufSize = p.bufSize;
    this.depth = p.depth;
    this.state = p.state;
    this.free = p.free;
    this.deadline = p.deadline;
    this.slbas = p.slbas;
    this.opcodes = p.opcodes;
    this.bar0 = p.bar0;
    this.sqDoorbell = p.sqDoorbell;
    this.cqDoorbell = p.cqDoorbell;
    this.freeTop = p.depth;
    this.credits = p.depth;
    this.answer = answerer(p.sq, p.cq, () => this.tail, qid);
  }

  post(count: number): void {
    const now = performance.now();
    for (let i = 0; i < count; i++) {
      if (this.freeTop === 0 || this.credits === 0) throw new Error("queue full");
      const cid = this.free[--this.freeTop]!;
      this.credits--;
      const offset = cid * BS;
      if (this.state[cid] !== 0 || offset % 4 !== 0 || offset + BS > this.bufSize) throw new Error("bad command");
      const page = offset >>> 12;
      const o = this.tail * 16;
      const sq = this.sq;
      sq[o] = NVM_READ | (cid << 16);
      sq[o + 1] = 1;
      sq[o + 2] = 0;
      sq[o + 3] = 0;
      sq[o + 4] = 0;
      sq[o + 5] = 0;
      sq[o + 6] = this.iova[2 * page]! + (offset & 4095);
      sq[o + 7] = this.iova[2 * page + 1]!;
      sq[o + 8] = 0;
      sq[o + 9] = 0;
      sq[o + 10] = lba;
      sq[o + 11] = 0;
      sq[o + 12] = BLOCKS - 1;
      sq[o + 13] = 0;
      sq[o + 14] = 0;
      sq[o + 15] = 0;
      this.state[cid] = 2;
      this.opcodes[cid] = NVM_READ;
      this.slbas[cid] = lba;
      this.deadline[cid] = now + WAIT_MS;
      this.inflight++;
      this.tail = this.tail + 1 === ENTRIES ? 0 : this.tail + 1;
      lba = (lba + BLOCKS) & 0xffffff;
    }
    this.n.nvm_doorbell(this.bar0, this.sqDoorbell, this.tail);
  }

  reap(b: number): void {
    const want = completed + b;
    while (completed < want) {
      let k = 0;
      for (;;) {
        const o = this.head * 4;
        const dw3 = Atomics.load(this.cq, o + 3);
        if (((dw3 >>> 16) & 1) !== this.phase) break;
        const dw2 = this.cq[o + 2]!;
        if (++this.head === ENTRIES) {
          this.head = 0;
          this.phase ^= 1;
        }
        k++;
        this.sqHead = dw2 & 0xffff;
        const cid = dw3 & 0xffff;
        if (cid >= this.depth || this.state[cid] !== 2) continue;
        this.state[cid] = 0;
        this.free[this.freeTop++] = cid;
        this.credits++;
        this.inflight--;
        onComplete(cid, dw3 >>> 17);
      }
      if (k === 0) throw new Error("flat, object: a completion written was not reaped");
      this.n.nvm_doorbell(this.bar0, this.cqDoorbell, this.head);
    }
  }
}

/** The flat loop over closure variables. */
function flatClosure(qid: number): Contestant {
  const { sq, cq, iova, bufSize, depth, state, free, deadline, slbas, opcodes, bar0, sqDoorbell, cqDoorbell } = flatParts(qid);
  const n = native();
  let freeTop = depth;
  let credits = depth;
  let tail = 0;
  let head = 0;
  let phase = 1;
  let inflight = 0;
  let sqHead = 0;
  return {
    name: "flat",
    post(count) {
      const now = performance.now();
      for (let i = 0; i < count; i++) {
        if (freeTop === 0 || credits === 0) throw new Error("queue full");
        const cid = free[--freeTop]!;
        credits--;
        const offset = cid * BS;
        if (state[cid] !== 0 || offset % 4 !== 0 || offset + BS > bufSize) throw new Error("bad command");
        const page = offset >>> 12;
        const o = tail * 16;
        sq[o] = NVM_READ | (cid << 16);
        sq[o + 1] = 1;
        sq[o + 2] = 0;
        sq[o + 3] = 0;
        sq[o + 4] = 0;
        sq[o + 5] = 0;
        sq[o + 6] = iova[2 * page]! + (offset & 4095);
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
        deadline[cid] = now + WAIT_MS;
        inflight++;
        tail = tail + 1 === ENTRIES ? 0 : tail + 1;
        lba = (lba + BLOCKS) & 0xffffff;
      }
      n.nvm_doorbell(bar0, sqDoorbell, tail);
    },
    answer: answerer(sq, cq, () => tail, qid),
    reap(b) {
      const want = completed + b;
      while (completed < want) {
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
        if (k === 0) throw new Error("flat: a completion written was not reaped");
        n.nvm_doorbell(bar0, cqDoorbell, head);
      }
      if (inflight < 0 || sqHead !== tail) throw new Error(`flat: SQ head ${sqHead} != tail ${tail} after reaping the batch`);
    },
  };
}

const contestants: Contestant[] = [library(), new FlatObject(2), flatClosure(3)];
const batches = Math.max(1, Math.round(PER_ROUND / B));
/** Per contestant, per counted round: ns per command of post, answer, reap. */
const samples = contestants.map(() => [[], [], []] as number[][]);
for (let r = 0; r < ROUNDS; r++) {
  for (let k = 0; k < contestants.length; k++) {
    const i = (k + r) % contestants.length;
    const c = contestants[i]!;
    let post = 0;
    let answer = 0;
    let reap = 0;
    for (let j = 0; j < batches; j++) {
      const t0 = Bun.nanoseconds();
      c.post(B);
      const t1 = Bun.nanoseconds();
      c.answer(B);
      const t2 = Bun.nanoseconds();
      c.reap(B);
      const t3 = Bun.nanoseconds();
      post += t1 - t0;
      answer += t2 - t1;
      reap += t3 - t2;
    }
    if (r < WARMUP_ROUNDS) continue;
    const per = batches * B;
    samples[i]![0]!.push(post / per);
    samples[i]![1]!.push(answer / per);
    samples[i]![2]!.push(reap / per);
  }
}
if (failed !== 0) throw new Error(`${failed} completions carried an error status`);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const flat = samples[2]!;
const rows = contestants.map((c, i) => {
  const s = samples[i]!;
  const ratio = (part: number) => median(s[part]!.map((x, r) => x / flat[part]![r]!));
  const total = s[0]!.map((x, r) => x + s[2]![r]!);
  const flatTotal = flat[0]!.map((x, r) => x + flat[2]![r]!);
  return {
    name: c.name,
    postNs: Number(median(s[0]!).toFixed(1)),
    reapNs: Number(median(s[2]!).toFixed(1)),
    answerNs: Number(median(s[1]!).toFixed(1)),
    postVsFlat: Number(ratio(0).toFixed(2)),
    reapVsFlat: Number(ratio(2).toFixed(2)),
    totalVsFlat: Number(median(total.map((x, r) => x / flatTotal[r]!)).toFixed(2)),
  };
});
finishMachineInfo(machine);
if (args.json) {
  process.stdout.write(`${JSON.stringify({ machine, batch: B, rounds: ROUNDS - WARMUP_ROUNDS, commandsPerRound: batches * B, rows }, null, 2)}\n`);
} else {
  process.stdout.write(`${describeMachine(machine)}\n\n`);
  process.stdout.write(
    `ns per command, software only (this process plays the controller), batches of ${B}, ${ROUNDS - WARMUP_ROUNDS} paired rounds of ${batches * B} commands after ${WARMUP_ROUNDS} of warm-up: median round; ratio = median over rounds of contestant / flat\n`,
  );
  process.stdout.write(
    `${table(
      ["contestant", "post", "reap", "answer (controller)", "post/flat", "reap/flat", "post+reap/flat"],
      rows.map((r) => [r.name, r.postNs, r.reapNs, r.answerNs, `${r.postVsFlat}x`, `${r.reapVsFlat}x`, `${r.totalVsFlat}x`]),
    )}\n`,
  );
}
be.close?.();
