/**
 * Bad input, each answered with a typed error that names the limit, before anything reaches the
 * controller: the controller stays usable and the media keeps what it had.
 */
import { expect, test } from "bun:test";
import type { IoQueue } from "../../lib/io.ts";
import { ClosedError, Controller, DmaBuffer, InvalidArgumentError, Namespace, SysfsBackend, commands } from "../../lib/index.ts";
import { ctrlAddress, requireExpected } from "./common.ts";

test("every bad input is refused with a typed error, the controller stays usable, the media unchanged", async () => {
  const exp = requireExpected();
  const c = Controller.open(ctrlAddress());
  const ns = new Namespace(c, exp.namespaces[0]!.nsid);
  const sentinel = c.allocBuffer(4096);
  crypto.getRandomValues(sentinel.bytes);
  const SENT = 64;
  await ns.write(SENT, 8, sentinel);
  const buf = c.allocBuffer(8192);
  buf.bytes.fill(0x77);

  const refused = (what: string, f: () => unknown, pattern: RegExp, type: Function = InvalidArgumentError) => {
    let err: unknown;
    try {
      f();
    } catch (e) {
      err = e;
    }
    if (!(err instanceof type)) throw new Error(`${what}: expected ${type.name}, got ${String(err)}`);
    expect((err as Error).message).toMatch(pattern);
  };
  const refusedAsync = async (what: string, p: Promise<unknown>, pattern: RegExp, type: Function = InvalidArgumentError) => {
    const err = await p.then(
      () => undefined,
      (e) => e,
    );
    if (!(err instanceof type)) throw new Error(`${what}: expected ${type.name}, got ${String(err)}`);
    expect((err as Error).message).toMatch(pattern);
  };

  // Namespaces
  refused("namespace 0", () => new Namespace(c, 0), /namespace 0 does not exist: this controller has NSIDs 1 to \d+/);
  refused("NSID 0xFFFFFFFF (broadcast) for Identify Namespace", () => new Namespace(c, 0xffffffff), /does not exist/);
  refused("an inactive namespace", () => new Namespace(c, exp.namespaces.length + 1), /is not active/);
  // Ranges and sizes
  await refusedAsync("LBA past the end", ns.write(ns.blocks, 1, buf), /past NSZE/);
  await refusedAsync("range crossing the end", ns.write(ns.blocks - 1, 2, buf), /past NSZE/);
  await refusedAsync("block count 0", ns.write(0, 0, buf), /block count 0/);
  await refusedAsync("block count over 65536", ns.write(0, 65537, buf), /block count 65537/);
  await refusedAsync("over MDTS", ns.write(0, ns.maxBlocks + 1, buf), /exceed MDTS/);
  await refusedAsync("buffer too small", ns.write(0, 17, buf), /buffer too small/);
  await refusedAsync("negative LBA", ns.write(-1, 1, buf), /LBA -1/);
  // Buffers
  const freed = c.allocBuffer(4096);
  freed.free();
  await refusedAsync("a freed buffer", ns.write(SENT, 1, freed), /freed/, ClosedError);
  const other = new SysfsBackend(ctrlAddress()); // a second mapping of the device: another owner of memory
  try {
    const foreign = new DmaBuffer(other, 4096);
    await refusedAsync("a buffer of another controller", ns.write(SENT, 1, foreign), /belongs to another controller/);
  } finally {
    other.close();
  }
  // Queues
  refused("queue size 0", () => c.createIoQueue({ entries: 0 }), /must be 2 to 2048/);
  refused("queue size 1", () => c.createIoQueue({ entries: 1 }), /must be 2 to 2048/);
  refused("queue size over MQES+1", () => c.createIoQueue({ entries: c.cap.mqes + 2 }), /CAP.MQES\+1/);
  const granted = c.ioQueuesGranted();
  refused("a queue id past what was granted", () => c.createIoQueue({ qid: granted.sqs + 1 }), /granted ids 1 to/);
  const q = c.createIoQueue({ entries: 4 }) as IoQueue;
  refused("a CID that was never acquired", () => q.rw(2, commands.NVM_WRITE, ns.nsid, SENT, 1, buf, 0, ns.lbaSize), /CID 2 .* is free/);
  const cid = q.acquire();
  commands.writeSqe(q.sq.sqe, q.slot, commands.NVM_WRITE, cid + 1, ns.nsid, buf.busAddress(0), 0, SENT, 0, 0);
  refused("an SQE carrying another CID than the acquired one", () => q.post(cid), /holds CID/);
  q.release(cid);
  c.deleteIoQueue(q);
  await refusedAsync("a deleted queue", ns.write(SENT, 1, buf, { queue: q }), /closed/, ClosedError);

  // Nothing reached the media, and the controller still answers.
  const back = c.allocBuffer(4096);
  await ns.read(SENT, 8, back);
  expect(Buffer.compare(back.bytes, sentinel.bytes)).toBe(0);
  expect(c.identifyController().sn).toBe(exp.serial);
  c.close();
  // A closed controller and its buffers.
  refused("a closed controller", () => c.identifyController(), /is closed/, ClosedError);
  refused("a buffer of a closed controller", () => back.bytes, /freed/, ClosedError);
  refused("a queue of a closed controller", () => c.createIoQueue(), /is closed/, ClosedError);
});
