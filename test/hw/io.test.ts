/** A first data round trip through an I/O queue pair (the full I/O path comes with issue 3). */
import { afterEach, expect, test } from "bun:test";
import { Controller, InvalidArgumentError, Namespace } from "../../lib/index.ts";
import { ctrlAddress, requireExpected } from "./common.ts";

let ctrl: Controller | undefined;
afterEach(() => {
  ctrl?.close();
  ctrl = undefined;
});

for (const lbaSize of [512, 4096]) {
  test(`write, read back and compare on the ${lbaSize}-byte namespace, 1 block to MDTS`, () => {
    const exp = requireExpected().namespaces.find((n) => n.lbaSize === lbaSize)!;
    const c = (ctrl = Controller.open(ctrlAddress()));
    const ns = new Namespace(c, exp.nsid);
    c.setNumberOfQueues(1);
    const qp = c.createQueuePair(1, 16);
    const max = ns.maxTransfer! / lbaSize;
    const out = c.allocBuffer(ns.maxTransfer!);
    const back = c.allocBuffer(ns.maxTransfer!);
    for (const count of [1, 2, 3, max - 1, max]) {
      const lba = ns.blocks - count - 7;
      const bytes = count * lbaSize;
      crypto.getRandomValues(out.bytes.subarray(0, bytes));
      back.bytes.fill(0xa5);
      ns.writeSync(qp, lba, count, out);
      ns.readSync(qp, lba, count, back);
      expect(Buffer.compare(back.bytes.subarray(0, bytes), out.bytes.subarray(0, bytes))).toBe(0);
    }
  });
}

test("past the end, over MDTS and a too-small buffer are refused before anything is sent", () => {
  const exp = requireExpected().namespaces[0]!;
  const c = (ctrl = Controller.open(ctrlAddress()));
  const ns = new Namespace(c, exp.nsid);
  c.setNumberOfQueues(1);
  const qp = c.createQueuePair(1, 4);
  const buf = c.allocBuffer(4096);
  expect(() => ns.writeSync(qp, ns.blocks - 1, 2, buf)).toThrow(/past NSZE/);
  expect(() => ns.readSync(qp, 0, ns.maxTransfer! / ns.lbaSize + 1, buf)).toThrow(/exceed MDTS/);
  expect(() => ns.readSync(qp, 0, 4096 / ns.lbaSize + 1, buf)).toThrow(/buffer too small/);
  expect(() => ns.readSync(qp, 0, 0, buf)).toThrow(InvalidArgumentError);
  expect(qp.sq.tail).toBe(0); // nothing reached the queue
});
