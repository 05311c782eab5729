import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { ControllerFatalError, InvalidArgumentError, NvmeStatusError, NvmeTimeoutError } from "../../lib/errors.ts";
import { CompletionQueue, QueuePair, SubmissionQueue } from "../../lib/queue.ts";
import {
  ADMIN_IDENTIFY,
  ADMIN_SET_FEATURES,
  CID_MAX,
  flush,
  identify,
  NVM_READ,
  numberOfQueues,
  readWrite,
  SQE_DWORDS,
} from "../../lib/spec/commands.ts";
import { cqHeadDoorbell, REG_CSTS, sqTailDoorbell } from "../../lib/spec/registers.ts";
import { encodeStatus } from "../../lib/spec/status.ts";
import { FakeBackend, FakeController, postCqe } from "./fake-backend.ts";

const SIZES = [2, 3, 48, 50, 64, 1024];

const backend = new FakeBackend();
afterAll(() => backend.close());

/** Registers and doorbells start from zero in every test. */
afterEach(() => backend.regs.fill(0));

describe("SubmissionQueue ring", () => {
  for (const size of SIZES) {
    test(`${size} entries: exactly ${size - 1} fit before full, then the tail wraps`, () => {
      const sq = new SubmissionQueue(backend, 1, size, sqTailDoorbell(1, 0), backend.bar0);
      try {
        expect(sq.mem.contiguous).toBe(true);
        expect(sq.sqe.length).toBeGreaterThanOrEqual(size * SQE_DWORDS);
        expect(sq.full).toBe(false);
        expect(sq.pending).toBe(0);
        let accepted = 0;
        while (!sq.full) {
          expect(sq.slot).toBe(sq.tail * SQE_DWORDS);
          sq.advance();
          accepted++;
          expect(sq.pending).toBe(accepted);
          if (accepted > size) break; // a broken `full` must not loop forever
        }
        expect(accepted).toBe(size - 1);
        expect(sq.tail).toBe(size - 1);

        // The controller fetched everything: SQHD caught up with the tail.
        sq.head = size - 1;
        expect(sq.pending).toBe(0);
        expect(sq.full).toBe(false);
        sq.advance();
        expect(sq.tail).toBe(0); // wrapped
        expect(sq.slot).toBe(0);
        expect(sq.pending).toBe(1);
        expect(sq.full).toBe(size === 2);

        // Fill again across the wrap point.
        let again = 1;
        while (!sq.full && again <= size) {
          sq.advance();
          again++;
        }
        expect(again).toBe(size - 1);
        expect(sq.pending).toBe(size - 1);
        expect(sq.tail).toBe(size - 2);
      } finally {
        sq.mem.free();
      }
    });
  }

  test("pending follows a head in the middle of the ring", () => {
    const sq = new SubmissionQueue(backend, 1, 8, sqTailDoorbell(1, 0), backend.bar0);
    try {
      for (let i = 0; i < 7; i++) sq.advance();
      sq.head = 5;
      expect(sq.pending).toBe(2);
      sq.advance(); // tail 7 -> 0
      sq.advance(); // 0 -> 1
      expect(sq.tail).toBe(1);
      expect(sq.pending).toBe(4); // 5, 6, 7, 0
      for (let i = 0; i < 3; i++) sq.advance();
      expect(sq.tail).toBe(4);
      expect(sq.full).toBe(true);
      expect(sq.pending).toBe(7);
    } finally {
      sq.mem.free();
    }
  });

  test("ring() writes the tail to its doorbell and nothing else", () => {
    const db = sqTailDoorbell(1, 2);
    expect(db).toBe(0x1020);
    const sq = new SubmissionQueue(backend, 1, 64, db, backend.bar0);
    try {
      for (let i = 0; i < 5; i++) sq.advance();
      sq.ring();
      expect(backend.reg(0x1020)).toBe(5);
      expect(backend.reg(0x1008)).toBe(0);
      expect(backend.reg(0x1030)).toBe(0);
      const nonzero = Array.from(backend.regs.keys()).filter((i) => backend.regs[i] !== 0);
      expect(nonzero).toEqual([0x1020 / 4]);
    } finally {
      sq.mem.free();
    }
  });
});

describe("CompletionQueue ring", () => {
  for (const size of SIZES) {
    test(`${size} entries: phase starts at 1 and inverts at each wrap`, () => {
      const cq = new CompletionQueue(backend, 1, size, cqHeadDoorbell(1, 0), backend.bar0);
      try {
        expect(cq.mem.contiguous).toBe(true);
        expect(cq.phase).toBe(1);
        expect(cq.head).toBe(0);
        expect(cq.peek()).toBe(-1); // zeroed memory has phase 0: nothing posted
        for (let pass = 0; pass < 3; pass++) {
          const phase = pass % 2 === 0 ? 1 : 0;
          expect(cq.phase).toBe(phase);
          for (let i = 0; i < size; i++) {
            // The entry still holds the previous pass's phase: not new.
            expect(cq.peek()).toBe(-1);
            postCqe(cq.cqe, i, { cid: i, phase, sqhd: i });
            expect(cq.peek()).toBe(i * 4);
            expect(cq.cqe[i * 4 + 3]! & 0xffff).toBe(i);
            cq.pop();
          }
          expect(cq.head).toBe(0);
          expect(cq.phase).toBe(phase ^ 1);
        }
      } finally {
        cq.mem.free();
      }
    });
  }

  test("peek does not move the head; pop does", () => {
    const cq = new CompletionQueue(backend, 1, 4, cqHeadDoorbell(1, 0), backend.bar0);
    try {
      postCqe(cq.cqe, 0, { cid: 7, phase: 1 });
      postCqe(cq.cqe, 1, { cid: 8, phase: 1 });
      expect(cq.peek()).toBe(0);
      expect(cq.peek()).toBe(0);
      cq.pop();
      expect(cq.peek()).toBe(4);
      cq.pop();
      expect(cq.peek()).toBe(-1);
      expect(cq.head).toBe(2);
    } finally {
      cq.mem.free();
    }
  });

  test("ring() writes the head to its doorbell", () => {
    const cq = new CompletionQueue(backend, 3, 4, cqHeadDoorbell(3, 0), backend.bar0);
    try {
      for (let i = 0; i < 3; i++) {
        postCqe(cq.cqe, i, { cid: i, phase: 1 });
        cq.pop();
      }
      cq.ring();
      expect(backend.reg(0x101c)).toBe(3);
      cq.pop(); // wraps to 0
      cq.ring();
      expect(backend.reg(0x101c)).toBe(0);
      expect(backend.reg(0x1018)).toBe(0);
    } finally {
      cq.mem.free();
    }
  });
});

/** A pair on its own backend, answered by a FakeController. */
function pair(qid: number, entries: number, dstrd = 0, timeoutMs = 1000) {
  const b = new FakeBackend();
  const qp = new QueuePair(b, qid, entries, dstrd, timeoutMs);
  const ctrl = new FakeController(b, qp);
  return {
    b,
    qp,
    ctrl,
    [Symbol.dispose]() {
      qp.free();
      b.close();
    },
  };
}

describe("QueuePair construction", () => {
  test("fewer than 2 entries, or a fraction, is an InvalidArgumentError", () => {
    using b = new FakeBackend();
    expect(() => new QueuePair(b, 1, 1, 0, 100)).toThrow(InvalidArgumentError);
    expect(() => new QueuePair(b, 1, 2.5, 0, 100)).toThrow(InvalidArgumentError);
    expect(b.allocations).toBe(0);
  });

  test("the rings are contiguous DMA buffers at the qid's doorbells; free() releases both", () => {
    using b = new FakeBackend();
    const qp = new QueuePair(b, 2, 16, 2, 100);
    expect(qp.admin).toBe(false);
    expect(qp.sq.doorbell).toBe(0x1000 + 4 * 16);
    expect(qp.cq.doorbell).toBe(0x1000 + 5 * 16);
    expect(qp.sq.mem.contiguous && qp.cq.mem.contiguous).toBe(true);
    expect(b.live.size).toBe(2);
    qp.free();
    expect(b.live.size).toBe(0);
    expect(b.frees).toBe(2);
  });
});

describe("QueuePair.execute", () => {
  test("success returns DW0, DW1 and the CID; the SQE, doorbells and SQ head are right", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => ({ dw0: 0x0003_0007, dw1: 0xabcd });
    const c = p.qp.execute(numberOfQueues(8, 4));
    expect(c).toEqual({ dw0: 0x0003_0007, dw1: 0xabcd, cid: 0 });
    expect(p.qp.admin).toBe(true);
    const seen = p.ctrl.seen[0]!;
    expect(seen.cid).toBe(0);
    expect(seen.opcode).toBe(ADMIN_SET_FEATURES);
    expect(Array.from(seen.sqe)).toEqual([ADMIN_SET_FEATURES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0x00030007, 0, 0, 0, 0]);
    expect(p.b.reg(0x1000)).toBe(1); // SQ 0 tail
    expect(p.b.reg(0x1004)).toBe(1); // CQ 0 head
    expect(p.qp.sq.head).toBe(1); // SQHD from the CQE
    expect(p.qp.sq.pending).toBe(0);
  });

  test("CIDs count up from 0; doorbells and the CQ phase wrap with the rings", () => {
    using p = pair(1, 3, 2);
    p.ctrl.responder = (cmd) => ({ dw0: cmd.cid * 10 });
    for (let i = 0; i < 7; i++) {
      const c = p.qp.execute(flush(1));
      expect(c.cid).toBe(i);
      expect(c.dw0).toBe(i * 10);
      expect(p.b.reg(0x1020)).toBe((i + 1) % 3); // SQ 1 tail, DSTRD 2
      expect(p.b.reg(0x1030)).toBe((i + 1) % 3); // CQ 1 head
    }
    expect(p.ctrl.seen.map((s) => s.cid)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    // 7 completions on a 3-entry CQ: two wraps, back to phase 1, head at 1.
    expect(p.qp.cq.head).toBe(1);
    expect(p.qp.cq.phase).toBe(1);
  });

  test("a non-zero status throws NvmeStatusError decoded from DW3 31:17", () => {
    using p = pair(1, 4);
    const status = encodeStatus({ sct: 0, sc: 0x80, dnr: true });
    expect(status).toBe(0x4080);
    p.ctrl.responder = () => ({ status });
    let err: unknown;
    try {
      p.qp.execute(readWrite(NVM_READ, 1, 2048, 8, 0x1000, 0), { detail: "@ LBA 2048, 8 blocks" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NvmeStatusError);
    const e = err as NvmeStatusError;
    expect(e.sct).toBe(0);
    expect(e.sc).toBe(0x80);
    expect(e.dnr).toBe(true);
    expect(e.more).toBe(false);
    expect(e.crd).toBe(0);
    expect(e.command).toBe("Read");
    expect(e.opcode).toBe(NVM_READ);
    expect(e.cid).toBe(0);
    expect(e.sqid).toBe(1);
    expect(e.status).toBe("LBA Out of Range");
    expect(e.message).toContain("@ LBA 2048, 8 blocks");
    // The failed command was consumed: the next one runs.
    p.ctrl.responder = () => ({ dw0: 1 });
    expect(p.qp.execute(flush(1))).toEqual({ dw0: 1, dw1: 0, cid: 1 });
  });

  test("MORE, CRD and SCT come from their own bits", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => ({ status: (1 << 13) | (2 << 11) | (1 << 8) | 0x02 });
    try {
      p.qp.execute(identify(1, 0, 0x1000));
      throw new Error("execute did not throw");
    } catch (e) {
      expect(e).toBeInstanceOf(NvmeStatusError);
      const s = e as NvmeStatusError;
      expect([s.sct, s.sc, s.crd, s.more, s.dnr]).toEqual([1, 0x02, 2, true, false]);
      expect(s.command).toBe("Identify");
      expect(s.opcode).toBe(ADMIN_IDENTIFY);
      expect(s.status).toBe("Invalid Queue Size");
    }
  });

  test("no completion: NvmeTimeoutError within a bounded time", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    const t0 = performance.now();
    let err: unknown;
    try {
      p.qp.execute(identify(1, 0, 0x1000), { timeoutMs: 20 });
    } catch (e) {
      err = e;
    }
    const elapsed = performance.now() - t0;
    expect(err).toBeInstanceOf(NvmeTimeoutError);
    expect((err as NvmeTimeoutError).timeoutMs).toBe(20);
    expect((err as Error).message).toContain("Identify (cid 0) on queue 0 did not complete within 20 ms: if the controller stopped answering, Controller.reset()");
    expect(elapsed).toBeGreaterThanOrEqual(19);
    expect(elapsed).toBeLessThan(1000);
    expect(p.ctrl.seen.length).toBe(1); // it was posted and the doorbell rung
  });

  test("the pair's own timeout applies when none is given", () => {
    using b = new FakeBackend();
    const qp = new QueuePair(b, 0, 4, 0, 15);
    try {
      const t0 = performance.now();
      expect(() => qp.execute(flush(0))).toThrow(/within 15 ms/);
      expect(performance.now() - t0).toBeLessThan(1000);
    } finally {
      qp.free();
    }
  });

  test("an entry already in the CQ before the command is posted is not taken as its answer", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    // A stale CQE carrying the CID the next command will get.
    p.ctrl.complete(0, { dw0: 0xdead });
    expect(() => p.qp.execute(flush(0), { timeoutMs: 20 })).toThrow(NvmeTimeoutError);
    expect(p.qp.cq.head).toBe(1); // reaped
  });

  test("a late completion found before the next command is reaped", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    expect(() => p.qp.execute(flush(0), { timeoutMs: 20 })).toThrow(NvmeTimeoutError);
    p.ctrl.complete(0, { dw0: 0xdead, status: encodeStatus({ sct: 0, sc: 0x06 }) });
    p.ctrl.responder = () => ({ dw0: 0x1234 });
    expect(p.qp.execute(flush(0))).toEqual({ dw0: 0x1234, dw1: 0, cid: 1 });
    expect(p.qp.cq.head).toBe(2);
    expect(p.b.reg(0x1004)).toBe(2);
  });

  test("a late completion posted ahead of the answer is skipped, even with an error status", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    expect(() => p.qp.execute(flush(0), { timeoutMs: 20 })).toThrow(NvmeTimeoutError);
    p.ctrl.queue.push({ cid: 0, dw0: 0xdead, status: encodeStatus({ sct: 0, sc: 0x06, dnr: true }) });
    p.ctrl.responder = () => ({ dw0: 0x1234 });
    expect(p.qp.execute(flush(0))).toEqual({ dw0: 0x1234, dw1: 0, cid: 1 });
    expect(p.qp.cq.head).toBe(2);
  });

  test("reap() consumes posted entries, follows SQHD and rings the CQ head once", () => {
    using p = pair(0, 4);
    expect(p.qp.reap()).toBe(0);
    p.ctrl.sqHead = 3;
    p.ctrl.complete(0);
    p.ctrl.complete(1);
    expect(p.qp.reap()).toBe(2);
    expect(p.qp.sq.head).toBe(3);
    expect(p.qp.cq.head).toBe(2);
    expect(p.b.reg(0x1004)).toBe(2);
  });

  test("commands that never complete fill the SQ: the next execute fails at once", () => {
    using p = pair(0, 2);
    p.ctrl.responder = () => undefined;
    expect(() => p.qp.execute(flush(0), { timeoutMs: 20 })).toThrow(NvmeTimeoutError);
    // One slot of two is taken by the lost command (no CQE moved SQHD).
    expect(p.qp.sq.full).toBe(true);
    const t0 = performance.now();
    expect(() => p.qp.execute(flush(0), { timeoutMs: 5000 })).toThrow(/full of commands that never completed/);
    expect(performance.now() - t0).toBeLessThan(100);
    expect(p.ctrl.seen.length).toBe(1); // nothing more was posted
    // Its completion arrives late: the queue is usable again, with the next CID.
    p.ctrl.complete(0);
    p.ctrl.responder = () => ({ dw0: 5 });
    expect(p.qp.execute(flush(0))).toEqual({ dw0: 5, dw1: 0, cid: 1 });
  });

  test("CSTS all ones while waiting: ControllerFatalError, long before the timeout", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    p.b.setReg(REG_CSTS, 0xffffffff);
    const t0 = performance.now();
    let err: unknown;
    try {
      p.qp.execute(flush(0), { timeoutMs: 4000 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ControllerFatalError);
    expect((err as ControllerFatalError).csts).toBe(0xffffffff);
    expect((err as Error).message).toContain("device is gone");
    expect(performance.now() - t0).toBeLessThan(2000);
  });

  test("CSTS.CFS while waiting: ControllerFatalError naming the command", () => {
    using p = pair(0, 4);
    p.ctrl.responder = () => undefined;
    p.b.setReg(REG_CSTS, 0x3); // RDY | CFS
    expect(() => p.qp.execute(identify(1, 0, 0x1000), { timeoutMs: 4000 })).toThrow(
      /Controller Fatal Status \(CSTS.CFS\) set while waiting for Identify/,
    );
  });

  test("the CID of a timed-out command is skipped when the counter wraps", () => {
    using p = pair(1, 64);
    p.ctrl.responder = () => undefined;
    expect(() => p.qp.execute(flush(1), { timeoutMs: 20 })).toThrow(NvmeTimeoutError);
    p.ctrl.responder = () => ({});
    // CIDs 1 .. CID_MAX, then the counter wraps to 0, which is still outstanding.
    for (let cid = 1; cid <= CID_MAX; cid++) {
      const c = p.qp.execute(flush(1));
      if (c.cid !== cid) expect(c.cid).toBe(cid);
    }
    expect(p.qp.execute(flush(1)).cid).toBe(1);
    expect(p.ctrl.seen.filter((s) => s.cid === 0).length).toBe(1);
    // CID 0xFFFF is reserved and never used.
    expect(p.ctrl.seen.some((s) => s.cid === 0xffff)).toBe(false);

    // Once its late completion is seen, CID 0 is free again on the next wrap.
    p.ctrl.complete(0);
    for (let cid = 2; cid <= CID_MAX; cid++) p.qp.execute(flush(1));
    expect(p.qp.execute(flush(1)).cid).toBe(0);
  });
});
