/**
 * The I/O path against QEMU's controller: data written is read back and compared, across ring
 * sizes and wraps, transfer sizes and page offsets, PRPs and SGLs, both LBA formats, many queues.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { Controller, DmaBuffer, InvalidArgumentError, IoQueue, Namespace, NvmeStatusError, commands, status } from "../../lib/index.ts";
import { openTestController, requireExpected } from "./common.ts";

let ctrl: Controller | undefined;
afterEach(() => {
  ctrl?.close();
  ctrl = undefined;
});

function open(): Controller {
  ctrl = openTestController();
  return ctrl;
}

function namespaceWith(c: Controller, lbaSize: number): Namespace {
  const exp = requireExpected().namespaces.find((n) => n.lbaSize === lbaSize);
  if (!exp) throw new Error(`the guest has no namespace with ${lbaSize}-byte blocks`);
  return new Namespace(c, exp.nsid);
}

function random(buf: DmaBuffer, bytes = buf.size): void {
  for (let o = 0; o < bytes; o += 65536) crypto.getRandomValues(buf.bytes.subarray(o, Math.min(bytes, o + 65536)));
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

describe("rings", () => {
  // 6 sizes × 3400 commands ≈ 20 000 commands, each ring wrapped many times.
  for (const entries of [2, 3, 48, 50, 64, 1024]) {
    test(`queue of ${entries} entries: 1700 one-block writes then 1700 reads, pipelined, data compared`, async () => {
      const c = open();
      const ns = namespaceWith(c, 512);
      const q = c.createIoQueue({ entries }) as IoQueue;
      expect(q.depth).toBe(entries - 1);
      const n = 1700;
      const out = c.allocBuffer(n * 512);
      const back = c.allocBuffer(n * 512);
      random(out);
      back.bytes.fill(0);
      const base = 1000 + entries; // distinct ranges per size
      // More promises than the queue holds: the rest wait for CIDs, doorbells are batched.
      await Promise.all(Array.from({ length: n }, (_, i) => ns.write(base + i, 1, out, { queue: q, offset: i * 512 })));
      await Promise.all(Array.from({ length: n }, (_, i) => ns.read(base + i, 1, back, { queue: q, offset: i * 512 })));
      expect(same(back.bytes.subarray(0, n * 512), out.bytes.subarray(0, n * 512))).toBe(true);
      expect(q.outstanding).toBe(0);
      expect(q.sq.head).toBe(q.sq.tail); // SQ head from the CQEs' SQHD
      expect(q.sq.tail).toBe((2 * n) % entries);
      expect(q.ioCq.cq.head).toBe((2 * n) % entries);
    });
  }
});

describe("data pointers", () => {
  for (const lbaSize of [512, 4096]) {
    for (const dataPointer of ["prp", "sgl"] as const) {
      test(`${lbaSize}-byte blocks through ${dataPointer.toUpperCase()}s: 1 block to MDTS, at offsets inside pages`, () => {
        const c = open();
        const ns = namespaceWith(c, lbaSize);
        const q = c.createIoQueue({ entries: 8, dataPointer }) as IoQueue;
        const out = c.allocBuffer(ns.maxTransfer + 8192);
        const back = c.allocBuffer(ns.maxTransfer + 8192);
        const max = ns.maxBlocks;
        for (const count of [1, 2, 3, 9, max - 1, max]) {
          for (const [wo, ro] of [
            [0, 0],
            [4, 512],
            [4092, 100],
            [2048, 4096],
          ] as const) {
            const lba = ns.blocks - count - 3;
            const bytes = count * lbaSize;
            // QEMU maps at most 1024 segments (IOV_MAX) per command and answers Internal Error past
            // that: a full 4 MiB (MDTS 10) starting inside a page spans 1025 pages. Not a spec limit.
            const pages = (off: number) => Math.ceil(((off % 4096) + bytes) / 4096);
            if (dataPointer === "prp" && (pages(wo) > 1024 || pages(ro) > 1024)) continue;
            random(out);
            back.bytes.fill(0xa5);
            ns.writeSync(q, lba, count, out, wo);
            ns.readSync(q, lba, count, back, ro);
            expect(same(back.bytes.subarray(ro, ro + bytes), out.bytes.subarray(wo, wo + bytes))).toBe(true);
            // Nothing written outside the transfer.
            expect(back.bytes[ro + bytes]).toBe(0xa5);
            if (ro > 0) expect(back.bytes[ro - 1]).toBe(0xa5);
          }
        }
      });
    }
  }

  test("a region of a larger buffer is used in place (no copy)", async () => {
    const c = open();
    const ns = namespaceWith(c, 4096);
    const big = c.allocBuffer(64 * 1024);
    random(big);
    const part = big.region(8192 + 4, 3 * 4096);
    await ns.write(7, 3, part);
    const back = c.allocBuffer(3 * 4096);
    await ns.read(7, 3, back);
    expect(same(back.bytes, big.bytes.subarray(8196, 8196 + 3 * 4096))).toBe(true);
    big.free();
    expect(part.freed).toBe(true);
    expect(() => ns.readSync(c.defaultIoQueue(), 7, 1, part)).toThrow(/freed/);
  });
});

describe("queues", () => {
  test("64 queue pairs at once, each with its own data", async () => {
    const c = open();
    const ns = namespaceWith(c, 4096);
    const granted = c.ioQueuesGranted();
    expect(granted.sqs).toBeGreaterThanOrEqual(64);
    const queues: IoQueue[] = [];
    for (let i = 0; i < 64; i++) queues.push(c.createIoQueue({ entries: 8 }) as IoQueue);
    expect(new Set(queues.map((q) => q.qid)).size).toBe(64);
    const out = c.allocBuffer(64 * 4 * 4096);
    const back = c.allocBuffer(64 * 4 * 4096);
    random(out);
    await Promise.all(queues.flatMap((q, i) => [0, 1, 2, 3].map((k) => ns.write(2000 + i * 4 + k, 1, out, { queue: q, offset: (i * 4 + k) * 4096 }))));
    await Promise.all(queues.flatMap((q, i) => [0, 1, 2, 3].map((k) => ns.read(2000 + i * 4 + k, 1, back, { queue: q, offset: (i * 4 + k) * 4096 }))));
    expect(same(back.bytes, out.bytes)).toBe(true);
    for (const q of queues) c.deleteIoQueue(q);
    expect(() => c.createIoQueue({ qid: granted.sqs + 1 })).toThrow(InvalidArgumentError);
  });

  test("two submission queues sharing one completion queue", async () => {
    const c = open();
    const ns = namespaceWith(c, 512);
    const cq = c.createCompletionQueue({ entries: 16 });
    const a = c.createIoQueue({ entries: 32, cq }) as IoQueue;
    const b = c.createIoQueue({ entries: 32, cq }) as IoQueue;
    expect(a.ioCq).toBe(cq);
    expect(b.ioCq).toBe(cq);
    const out = c.allocBuffer(400 * 512);
    const back = c.allocBuffer(400 * 512);
    random(out);
    await Promise.all(Array.from({ length: 400 }, (_, i) => ns.write(5000 + i, 1, out, { queue: i % 2 ? a : b, offset: i * 512 })));
    await Promise.all(Array.from({ length: 400 }, (_, i) => ns.read(5000 + i, 1, back, { queue: i % 2 ? b : a, offset: i * 512 })));
    expect(same(back.bytes.subarray(0, 400 * 512), out.bytes.subarray(0, 400 * 512))).toBe(true);
    expect(() => c.deleteCompletionQueue(cq)).toThrow(/delete them first/);
    c.deleteIoQueue(a);
    c.deleteIoQueue(b);
    c.deleteCompletionQueue(cq);
  });

  test("low-level API: acquire, fill in place, one doorbell for a batch, poll into one handler", () => {
    const c = open();
    const ns = namespaceWith(c, 4096);
    const q = c.createIoQueue({ entries: 32 }) as IoQueue;
    const buf = c.allocBuffer(16 * 4096);
    random(buf);
    const done = new Int32Array(q.depth).fill(-1);
    q.onComplete = (cid, st) => {
      done[cid] = st;
    };
    const cids: number[] = [];
    for (let i = 0; i < 16; i++) {
      const cid = q.acquire();
      expect(cid).toBeGreaterThanOrEqual(0);
      q.rw(cid, commands.NVM_WRITE, ns.nsid, 300 + i, 1, buf, i * 4096, 4096);
      cids.push(cid);
    }
    expect(new Set(cids).size).toBe(16);
    q.submit(); // one doorbell write for all 16
    const deadline = performance.now() + 10_000;
    while (cids.some((cid) => done[cid] === -1)) {
      q.poll();
      if (performance.now() > deadline) throw new Error("low-level completions did not arrive in 10 s");
    }
    expect(cids.map((cid) => done[cid])).toEqual(Array(16).fill(0));
    // Posting a CID that was not acquired (or is in flight) is refused before it reaches the SQ.
    const tail = q.sq.tail;
    expect(() => q.rw(cids[0]!, commands.NVM_READ, ns.nsid, 0, 1, buf, 0, 4096)).toThrow(/CID .* is free/);
    const cid = q.acquire();
    q.rw(cid, commands.NVM_READ, ns.nsid, 0, 1, buf, 0, 4096);
    expect(() => q.rw(cid, commands.NVM_READ, ns.nsid, 0, 1, buf, 0, 4096)).toThrow(/already in flight/);
    expect(q.sq.tail).toBe((tail + 1) % 32);
    q.submit();
    while (q.outstanding > 0) q.poll();
  });

  test("rw() with a block count and a byte count that disagree is refused before the SQ, for each namespace's LBA size", async () => {
    const c = open();
    const small = namespaceWith(c, 512);
    const big = namespaceWith(c, 4096);
    const q = c.createIoQueue({ entries: 8 }) as IoQueue;
    const buf = c.allocBuffer(8 * 4096);
    random(buf);
    await big.write(40, 2, buf);
    await small.write(40, 16, buf);
    const before = c.smartLog();
    const tail = q.sq.tail;
    for (const [ns, blocks, bytes] of [
      [small, 16, 4096], // the controller would take the second data page for a PRP list
      [small, 8, 8192], // PRP2 would be 0 for a second page the controller never reads
      [big, 1, 8192],
      [big, 2, 4096],
    ] as const) {
      const cid = q.acquire();
      expect(() => q.rw(cid, commands.NVM_WRITE, ns.nsid, 40, blocks, buf, 0, bytes)).toThrow(/pass blocks x LBA size/);
      q.release(cid);
      expect(() => q.rwSync(commands.NVM_WRITE, ns.nsid, 40, blocks, buf, 0, bytes)).toThrow(InvalidArgumentError);
    }
    expect(q.sq.tail).toBe(tail);
    expect(c.smartLog().hostWriteCommands).toBe(before.hostWriteCommands);
    // What matches goes through, on either namespace, in any order.
    const back = c.allocBuffer(8 * 4096);
    q.rwSync(commands.NVM_READ, big.nsid, 40, 2, back, 0, 8192);
    q.rwSync(commands.NVM_READ, small.nsid, 40, 16, back, 8192, 8192);
    expect(same(back.bytes.subarray(0, 8192), buf.bytes.subarray(0, 8192))).toBe(true);
    expect(same(back.bytes.subarray(8192, 16384), buf.bytes.subarray(0, 8192))).toBe(true);
  });

  test("write with FUA and Flush: the controller takes both, the data reads back", async () => {
    const c = open();
    const ns = namespaceWith(c, 4096);
    expect(c.info.vwc & 1).toBe(1); // QEMU reports a volatile write cache: completion alone is not durability
    const buf = c.allocBuffer(4 * 4096);
    const back = c.allocBuffer(4 * 4096);
    random(buf);
    await ns.write(60, 4, buf, { fua: true });
    await ns.flush();
    await ns.read(60, 4, back);
    expect(same(back.bytes, buf.bytes)).toBe(true);
  });

  test("thousands of promises on one small queue", async () => {
    const c = open();
    const ns = namespaceWith(c, 512);
    const q = c.createIoQueue({ entries: 16 }) as IoQueue;
    const buf = c.allocBuffer(4096);
    const n = 3000;
    await Promise.all(Array.from({ length: n }, (_, i) => ns.read(i % 1000, 1, buf, { queue: q, offset: (i % 8) * 512 })));
    expect(q.outstanding).toBe(0);
  });
});

describe("NVM commands", () => {
  test("Write Zeroes and Deallocate, then the blocks read back as zeros", async () => {
    const c = open();
    for (const lbaSize of [512, 4096]) {
      const ns = namespaceWith(c, lbaSize);
      const buf = c.allocBuffer(64 * lbaSize);
      const back = c.allocBuffer(64 * lbaSize);
      random(buf);
      await ns.write(100, 64, buf);
      await ns.writeZeroes(100, 16);
      await ns.deallocate([{ lba: 132, count: 16 }]);
      await ns.read(100, 64, back);
      const z = (from: number, n: number) => back.bytes.subarray(from * lbaSize, (from + n) * lbaSize).every((x) => x === 0);
      expect(z(0, 16)).toBe(true);
      expect(z(32, 16)).toBe(true);
      // The blocks in between are untouched.
      expect(same(back.bytes.subarray(16 * lbaSize, 32 * lbaSize), buf.bytes.subarray(16 * lbaSize, 32 * lbaSize))).toBe(true);
      expect(same(back.bytes.subarray(48 * lbaSize), buf.bytes.subarray(48 * lbaSize))).toBe(true);
      await ns.flush();
    }
  });

  test("Compare: equal data succeeds, one changed byte is the controller's Compare Failure", async () => {
    const c = open();
    const ns = namespaceWith(c, 4096);
    const buf = c.allocBuffer(4 * 4096);
    random(buf);
    await ns.write(40, 4, buf);
    expect(await ns.compare(40, 4, buf)).toBe(true);
    buf.bytes[3 * 4096 + 17]! ^= 0xff;
    expect(await ns.compare(40, 4, buf)).toBe(false);
  });

  test("an LBA range past the end is refused before sending and writes nothing", async () => {
    const c = open();
    const ns = namespaceWith(c, 512);
    const buf = c.allocBuffer(8 * 512);
    const back = c.allocBuffer(8 * 512);
    random(buf);
    await ns.write(ns.blocks - 4, 4, buf);
    const before = Buffer.from(buf.bytes.subarray(0, 4 * 512));
    random(buf);
    await expect(ns.write(ns.blocks - 4, 8, buf)).rejects.toThrow(/past NSZE/);
    await expect(ns.write(ns.blocks, 1, buf)).rejects.toThrow(InvalidArgumentError);
    await ns.read(ns.blocks - 4, 4, back);
    expect(same(back.bytes.subarray(0, 4 * 512), before)).toBe(true);
  });

  test("past the end through the low-level API: the controller answers LBA Out of Range", () => {
    const c = open();
    const ns = namespaceWith(c, 512);
    const q = c.createIoQueue({ entries: 4 }) as IoQueue;
    const buf = c.allocBuffer(4096);
    try {
      q.rwSync(commands.NVM_READ, ns.nsid, ns.blocks, 1, buf, 0, 512);
      throw new Error("expected LBA Out of Range");
    } catch (e) {
      expect(e).toBeInstanceOf(NvmeStatusError);
      const s = e as NvmeStatusError;
      expect([s.sct, s.sc, s.dnr]).toEqual([status.SCT_GENERIC, status.SC_LBA_OUT_OF_RANGE, true]);
      expect(s.message).toContain(`Read(0x02) @ LBA ${ns.blocks}, 1 blocks: LBA Out of Range`);
    }
    // The queue carries on.
    ns.readSync(q, 0, 1, buf);
  });

  test("over MDTS, block count 0 or over 65536, and a too-small buffer are refused before sending", async () => {
    const c = open();
    const ns = namespaceWith(c, 512);
    const q = c.createIoQueue({ entries: 4 }) as IoQueue;
    const buf = c.allocBuffer(4096);
    expect(() => ns.readSync(q, 0, ns.maxBlocks + 1, buf)).toThrow(/exceed MDTS/);
    expect(() => ns.readSync(q, 0, 0, buf)).toThrow(/block count 0/);
    expect(() => ns.readSync(q, 0, 65537, buf)).toThrow(/block count 65537/);
    expect(() => ns.readSync(q, 0, 9, buf)).toThrow(/buffer too small/);
    await expect(ns.read(0, 9, buf)).rejects.toThrow(/buffer too small/);
    expect(q.sq.tail).toBe(0); // nothing reached the queue
  });
});
