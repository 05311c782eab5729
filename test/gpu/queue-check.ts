/**
 * The GPU part of test/gpu/check.sh for the queue core: GPU threads run the kernels of
 * c/cuda/nvm_queue.cu against the fake controller thread (test/queue/fake-ctrl.c) over pinned host
 * memory (a GPU machine may have no NVMe drive to spare): SQ, CQ, doorbell page, PRP lists and
 * data in host memory registered with the GPU, queue state and job in GPU memory. The matrix of
 * /work/shared/docs/gpu.md section 8: queue sizes, thread counts, contention, injected errors and
 * reordering, st.mmio doorbells, completions that never come (the kernel must end on its
 * deadlines), cooperative mode, verified data; then commands per second.
 *
 * One line per check ("gpu: ok <check> ..." / "gpu: FAIL <check> ..."); exit 1 on any failure. A
 * missing driver or GPU fails every check ("not run"). Against the mock libcuda (its "kernels"
 * are host threads running the same code) every check runs too: how CI knows this script works.
 *
 *   bun test/gpu/queue-check.ts [--only NAME,...] [--quick]
 */
import type { Pointer } from "bun:ffi";
import { parseArgs } from "node:util";
import { cuda, CudaError, DmaBuffer, type CudaMemory, type HostRegistration } from "../../lib/index.ts";
import { KERNEL_COOP, KERNEL_SHARED, KernelStream } from "../../lib/gpu/kernels.ts";
import { checkPattern } from "../../lib/gpu/pattern.ts";
import { checkLayout, D, G, J, JOB_BENCH, JOB_SEQ, JOB_VERIFY, Mem, MODE_COOP, MODE_SHARED, NVMQ_F_MMIO_DOORBELL, NVMQ_JOB_ABI, Q, W, workLayout } from "../../lib/gpu/layout.ts";
import { checkPtr, native } from "../../lib/native.ts";
import { FakeBackend } from "../unit/fake-backend.ts";
import { FakeCtrl, FC } from "../queue/fake-ctrl.ts";

const { values: opts } = parseArgs({ args: Bun.argv.slice(2), options: { only: { type: "string" }, quick: { type: "boolean", default: false } }, strict: true });
const PAGE = 4096;
const NOLOCK = 2;
const LBA = 512;
const BLOCKS = 65536; // 32 MiB RAM disk
const SEED = 0x5eed;

interface Config {
  readonly name: string;
  readonly what: string;
  readonly entries: number;
  readonly queues: number;
  readonly mode: "shared" | "coop";
  /** Shared: grid x block threads; coop: one block of `lanes` per queue. */
  readonly blocks?: number;
  readonly blockSize?: number;
  readonly depth?: number;
  readonly lanes?: number;
  readonly bs?: number;
  readonly seconds: number;
  readonly errorPpm?: number;
  readonly reorder?: number;
  readonly dropNth?: number;
  readonly dropPpm?: number;
  readonly delayMaxUs?: number;
  readonly mmio?: boolean;
  readonly verify?: boolean;
  /** Expect every queue's run to end on a deadline (completions that never come). */
  readonly expectTimeouts?: boolean;
}

const CONFIGS: Config[] = [
  { name: "q64-1x32", what: "qs 64, one block of 32 threads", entries: 64, queues: 1, mode: "shared", blocks: 1, blockSize: 32, seconds: 2, verify: true },
  { name: "q1024-1x128", what: "qs 1024, one block of 128 threads", entries: 1024, queues: 1, mode: "shared", blocks: 1, blockSize: 128, seconds: 2 },
  { name: "q1024-132x128", what: "qs 1024 x 132 queues, 132 blocks of 128 threads", entries: 1024, queues: 132, mode: "shared", blocks: 132, blockSize: 128, seconds: 2, verify: true },
  { name: "errors-reorder", what: "+ 0.2% errors, completions reordered within 16, up to 50 us late", entries: 1024, queues: 8, mode: "shared", blocks: 32, blockSize: 128, seconds: 2, errorPpm: 2000, reorder: 16, delayMaxUs: 50 },
  { name: "mmio-doorbells", what: "+ st.mmio.relaxed.sys doorbell stores", entries: 1024, queues: 8, mode: "shared", blocks: 32, blockSize: 128, seconds: 2, mmio: true },
  { name: "contention", what: "qs 64 x one queue, 132 blocks of 128 threads (FIFO tickets under heavy contention)", entries: 64, queues: 1, mode: "shared", blocks: 132, blockSize: 128, seconds: 2 },
  { name: "large-prp", what: "64 KiB commands: PRP lists in each slot's list page", entries: 256, queues: 4, mode: "shared", blocks: 8, blockSize: 64, bs: 65536, seconds: 2, verify: true },
  { name: "coop", what: "cooperative mode: 8 queues, one block of 255 lanes each", entries: 256, queues: 8, mode: "coop", lanes: 255, seconds: 2, verify: true },
  { name: "drops", what: "+ 20 ppm of completions never come (and the 5000th): the queues they hit break on their 3 s deadline, the kernel still ends", entries: 1024, queues: 8, mode: "shared", blocks: 32, blockSize: 128, seconds: 6, dropPpm: 20, dropNth: 5000, expectTimeouts: true },
];

let passed = 0;
let failed = 0;
let blocked: string | undefined;

function line(ok: boolean, name: string, detail: string): void {
  if (ok) passed++;
  else failed++;
  console.log(`gpu: ${ok ? "ok" : "FAIL"} ${name} ${detail.replace(/\n/g, " | ")}`);
}

function why(e: unknown): string {
  return e instanceof CudaError ? `${e.message} [${e.reason}, ${e.call}]` : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** C memory for a structure the GPU reads or writes, with its GPU copy. */
class Staged {
  readonly host: Mem;
  readonly gpu: CudaMemory;
  constructor(bytes: number) {
    const size = Math.max(PAGE, Math.ceil(bytes / PAGE) * PAGE);
    this.host = new Mem(checkPtr(native().nvm_dma_alloc(size, NOLOCK), "nvm_dma_alloc"), size);
    this.gpu = cuda.alloc(size);
  }
  upload(): void {
    this.gpu.copyFromHost(this.host.bytes);
  }
  download(): void {
    this.gpu.copyToHost(this.host.bytes);
  }
  free(): void {
    this.gpu.free();
    native().nvm_dma_free(this.host.pointer, this.host.size, NOLOCK);
  }
}

interface Outcome {
  ios: number;
  errors: number;
  timeouts: number;
  verifyErrors: number;
  seconds: number;
  fc: number[];
  broken: number;
  doorbells: number;
  ms: number;
  hung: boolean;
}

async function runConfig(c: Config): Promise<string> {
  const backend = new FakeBackend();
  const frees: (() => void)[] = [];
  const regs: HostRegistration[] = [];
  const reg = (b: DmaBuffer) => {
    const r = cuda.registerHost(b);
    regs.push(r);
    return r;
  };
  try {
    const bs = c.bs ?? 4096;
    const shared = c.mode === "shared";
    const executors = shared ? c.blocks! * c.blockSize! : c.queues;
    const perExecutor = shared ? (c.depth ?? 1) : c.lanes!;
    const regions = executors * perExecutor;
    // The "BAR": doorbells at 0x1000 + 8 qid (DSTRD 0), ordinary pinned memory here.
    const barBytes = Math.ceil((0x1000 + 8 * (c.queues + 1)) / PAGE) * PAGE;
    const bar = new DmaBuffer(backend, barBytes);
    const barReg = reg(bar);
    const fc = new FakeCtrl(bar.pointer, {
      lbaBytes: LBA,
      blocks: BLOCKS,
      delayMaxUs: c.delayMaxUs ?? 0,
      reorder: c.reorder ?? 0,
      errorPpm: 0,
      dropPpm: c.dropPpm ?? 0,
      dropNth: c.dropNth ?? 0,
      seed: 11,
    });
    frees.push(() => fc.destroy());
    const window = (b: DmaBuffer) => {
      const pages = b.size / PAGE;
      for (let i = 0; i < pages; i++) fc.window(b.iova[2 * i]! + b.iova[2 * i + 1]! * 0x1_0000_0000, (Number(b.pointer) + i * PAGE) as Pointer, PAGE);
    };
    const data = new DmaBuffer(backend, regions * bs);
    window(data);
    const dataReg = reg(data);
    const stop = new DmaBuffer(backend, PAGE);
    const stopReg = reg(stop);
    const withLists = bs > 2 * PAGE;
    const stride = Math.ceil(native().nvm_q_state_bytes(c.entries) / 256) * 256;
    const states = new Staged(c.queues * stride);
    frees.push(() => states.free());
    const table = new Staged(c.queues * 8);
    frees.push(() => table.free());
    const listsBus = new Staged(withLists ? c.queues * c.entries * 8 : 8);
    frees.push(() => listsBus.free());
    const desc = new Mem(checkPtr(native().nvm_host_alloc(D.SIZE), "nvm_host_alloc"), D.SIZE);
    frees.push(() => native().nvm_host_free(desc.pointer));
    // Per queue: where the GPU sees its rings, and the ring state the next run starts from.
    const rings: { qid: number; sq: bigint; cq: bigint; lists: bigint; listsBus: bigint; tail: number; head: number; cqHead: number; phase: number }[] = [];
    for (let i = 0; i < c.queues; i++) {
      const qid = i + 1;
      const sq = new DmaBuffer(backend, c.entries * 64, { contiguous: true });
      const cq = new DmaBuffer(backend, c.entries * 16, { contiguous: true });
      fc.queue(qid, sq.pointer, cq.pointer, c.entries);
      let lists = 0n;
      let lb = 0n;
      if (withLists) {
        const l = new DmaBuffer(backend, c.entries * PAGE);
        window(l);
        for (let k = 0; k < c.entries; k++) listsBus.host.setU64((i * c.entries + k) * 8, l.busAddress(k * PAGE));
        lists = reg(l).devicePointer;
        lb = listsBus.gpu.devicePointer + BigInt(i * c.entries * 8);
      }
      rings.push({ qid, sq: reg(sq).devicePointer, cq: reg(cq).devicePointer, lists, listsBus: lb, tail: 0, head: 0, cqHead: 0, phase: 1 });
      table.host.setU64(i * 8, states.gpu.devicePointer + BigInt(i * stride));
    }
    table.upload();
    listsBus.upload();
    const initStates = () => {
      rings.forEach((q, i) => {
        desc.bytes.fill(0);
        desc.setU32(D.entries, c.entries);
        desc.setU32(D.sqid, q.qid);
        desc.setU32(D.flags, c.mmio ? NVMQ_F_MMIO_DOORBELL : 0);
        desc.setU32(D.sqTail, q.tail);
        desc.setU32(D.sqHead, q.head);
        desc.setU32(D.cqHead, q.cqHead);
        desc.setU32(D.cqPhase, q.phase);
        desc.setU64(D.sq, q.sq);
        desc.setU64(D.cq, q.cq);
        desc.setU64(D.sqDb, barReg.devicePointer + BigInt(0x1000 + 8 * q.qid));
        desc.setU64(D.cqDb, barReg.devicePointer + BigInt(0x1000 + 8 * q.qid + 4));
        desc.setU64(D.lists, q.lists);
        desc.setU64(D.listsBus, q.listsBus);
        desc.setU64(D.stop, stopReg.devicePointer);
        desc.setU64(D.timeoutNs, 3e9);
        if (native().nvm_q_init((Number(states.host.pointer) + i * stride) as Pointer, desc.pointer) !== 0) throw new Error(`nvm_q_init of queue ${q.qid} refused`);
      });
      states.upload();
    };
    const npages = data.size / PAGE;
    const pages = new Staged(npages * 8);
    frees.push(() => pages.free());
    for (let i = 0; i < npages; i++) pages.host.setU64(i * 8, data.busAddress(i * PAGE));
    pages.upload();
    const groups = Math.min(executors, 256);
    const layout = workLayout(groups, executors, perExecutor);
    const work = new Staged(layout.bytes);
    frees.push(() => work.free());
    const job = new Staged(J.SIZE);
    frees.push(() => job.free());
    const stream = new KernelStream(0);
    frees.push(() => stream.destroy());

    const run = async (kind: { readPct: number; seq: boolean; verify: boolean; ios: number; seconds: number }): Promise<Outcome> => {
      // Every run starts from fresh queue state, on rings where the last run left them.
      initStates();
      stop.u32[0] = 0;
      work.host.bytes.fill(0);
      work.upload();
      const j = job.host;
      j.bytes.fill(0);
      j.setU32(J.abi, NVMQ_JOB_ABI);
      j.setU32(J.kind, JOB_BENCH);
      j.setU32(J.mode, shared ? MODE_SHARED : MODE_COOP);
      j.setU32(J.nqueues, c.queues);
      j.setU32(J.threads, executors);
      j.setU32(J.lanes, shared ? 1 : perExecutor);
      j.setU32(J.depth, shared ? perExecutor : 1);
      j.setU32(J.nsid, 1);
      j.setU32(J.lbaBytes, LBA);
      j.setU32(J.bs, bs);
      j.setU32(J.readPct, kind.readPct);
      j.setU32(J.flags, (kind.verify ? JOB_VERIFY : 0) | (kind.seq ? JOB_SEQ : 0));
      j.setU32(J.seed, SEED);
      j.setU32(J.groups, groups);
      j.setU64(J.lbaSpan, BLOCKS);
      j.setU64(J.ios, kind.ios);
      j.setU64(J.durationNs, Math.round(kind.seconds * 1e9));
      j.setU64(J.timeoutNs, 3e9);
      j.setU64(J.queues, table.gpu.devicePointer);
      j.setU64(J.data, dataReg.devicePointer);
      j.setU64(J.dataBytes, data.size);
      j.setU64(J.pages, pages.gpu.devicePointer);
      j.setU64(J.work, work.gpu.devicePointer);
      if (native().nvm_q_work_bytes(j.pointer) !== layout.bytes) throw new Error("work layout mismatch: rebuild the C library");
      job.upload();
      const t0 = performance.now();
      stream.launch(shared ? KERNEL_SHARED : KERNEL_COOP, shared ? c.blocks! : c.queues, shared ? c.blockSize! : perExecutor, job.gpu.devicePointer);
      let hung = false;
      const limit = (kind.seconds || 10) * 1000 + 20_000;
      while (!stream.done()) {
        await Bun.sleep(2);
        if (performance.now() - t0 > limit && !hung) {
          hung = true;
          Atomics.store(stop.u32, 0, 1); // the kernel must still end: every wait sees the stop word
        }
        if (performance.now() - t0 > limit + 15_000) throw new Error(`the kernel did not end within ${Math.round(limit / 1000) + 15} s, even after the stop word`);
      }
      const ms = performance.now() - t0;
      work.download();
      states.download();
      const w = work.host;
      const o: Outcome = { ios: 0, errors: 0, timeouts: 0, verifyErrors: 0, seconds: Math.max(0, w.u64(W.endNs) - w.u64(W.startNs)) / 1e9, fc: fc.stats(), broken: 0, doorbells: 0, ms, hung };
      for (let g = 0; g < groups; g++) {
        const at = W.SIZE + g * G.SIZE;
        o.ios += w.u64(at + G.ios);
        o.errors += w.u64(at + G.errors);
        o.timeouts += w.u64(at + G.timeouts);
        o.verifyErrors += w.u64(at + G.verifyErrors);
      }
      rings.forEach((q, i) => {
        const at = i * stride;
        if (states.host.u32(at + Q.broken) !== 0) o.broken++;
        o.doorbells += states.host.u32(at + Q.doorbells);
        // The next run continues each ring where this one left it (SQ tail, SQHD, CQ head, phase).
        q.tail = states.host.u32(at + Q.published) & (c.entries - 1);
        q.head = states.host.u32(at + Q.sqHead);
        q.cqHead = states.host.u32(at + Q.cqHead);
        q.phase = states.host.u32(at + Q.cqPhase);
      });
      return o;
    };

    const problems: string[] = [];
    const common = (o: Outcome, what: string) => {
      if (o.fc[FC.DUP_CID]) problems.push(`${what}: ${o.fc[FC.DUP_CID]} CIDs fetched while in flight`);
      if (o.fc[FC.BAD_DOORBELL]) problems.push(`${what}: ${o.fc[FC.BAD_DOORBELL]} doorbell values out of range`);
      if (o.fc[FC.BAD_PRP]) problems.push(`${what}: ${o.fc[FC.BAD_PRP]} data pointers outside the IOMMU windows`);
      if (o.fc[FC.MAX_INFLIGHT]! > c.entries - 1) problems.push(`${what}: ${o.fc[FC.MAX_INFLIGHT]} in flight on a queue of ${c.entries}`);
      if (o.hung) problems.push(`${what}: the kernel ran past its bound and had to be stopped`);
      if (o.verifyErrors) problems.push(`${what}: ${o.verifyErrors} blocks read back without their pattern`);
    };
    fc.start();
    const seconds = opts.quick ? Math.min(c.seconds, 1) : c.seconds;
    if (c.verify) {
      // Writes of the pattern over the whole RAM disk, in order, by the same threads; the disk then holds it.
      const fill = await run({ readPct: 0, seq: true, verify: false, ios: (BLOCKS * LBA) / bs, seconds: 0 });
      common(fill, "fill");
      if (fill.ios !== (BLOCKS * LBA) / bs || fill.errors || fill.timeouts || fill.broken) problems.push(`fill: ${fill.ios} writes, ${fill.errors} errors, ${fill.timeouts} timeouts, ${fill.broken} broken queues`);
      const bad = checkPattern(fc.disk(), 0, BLOCKS, LBA, SEED);
      if (bad >= 0) problems.push(`fill: LBA ${bad} on the fake controller's disk does not hold its pattern`);
    }
    fc.setErrorPpm(c.errorPpm ?? 0);
    const before = fc.stats();
    const o = await run({ readPct: 100, seq: false, verify: c.verify === true, ios: 0, seconds });
    common(o, "run");
    const injected = o.fc[FC.ERRORS]! - before[FC.ERRORS]!;
    if (c.expectTimeouts) {
      if (o.timeouts === 0 || o.broken === 0) problems.push(`no deadline fired (${o.fc[FC.DROPPED]} commands dropped)`);
    } else if (o.timeouts || o.broken) problems.push(`${o.timeouts} timeouts, ${o.broken} broken queues`);
    if (o.errors !== injected) problems.push(`${o.errors} errors reported, ${injected} injected`);
    if (o.ios === 0) problems.push("no command completed");
    if (problems.length) throw new Error(problems.join("; "));
    const rate = o.seconds > 0 ? o.ios / o.seconds : 0;
    return (
      `${c.what}: ${o.ios} commands${c.verify ? " (every block checked)" : ""}, ${(rate / 1e6).toFixed(3)} M commands/s, ${o.doorbells} doorbells, ` +
      `errors ${o.errors} = injected, timeouts ${o.timeouts}, broken queues ${o.broken}, kernel ${(o.ms / 1000).toFixed(1)} s`
    );
  } finally {
    for (const r of regs) if (r.registered) r.unregister();
    for (const f of frees.reverse()) {
      try {
        f();
      } catch {
        // cleanup after a failure: the first error is reported
      }
    }
    backend.close();
  }
}

await (async () => {
  try {
    checkLayout();
    cuda.devices();
  } catch (e) {
    blocked = why(e);
  }
  const only = opts.only ? new Set(opts.only.split(",")) : undefined;
  for (const c of CONFIGS) {
    if (only && !only.has(c.name)) continue;
    const name = `queue-${c.name}`;
    if (blocked) {
      line(false, name, `not run: ${blocked}`);
      continue;
    }
    const t0 = performance.now();
    try {
      line(true, name, `${await runConfig(c)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (e) {
      line(false, name, why(e));
    }
  }
  console.log(`gpu: queue checks ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
})();
