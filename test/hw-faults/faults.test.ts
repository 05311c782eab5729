/**
 * Real faults injected by QEMU's block layer under the emulated controller (test/vm/hw.ts boots
 * FAULT_CONFIG): media errors from blkdebug come back as the controller's own status codes, and
 * commands a throttle filter stalls past their deadline are aborted, then the controller is reset
 * and the application carries on.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { Controller, Namespace, NvmeStatusError, NvmeTimeoutError, status } from "../../lib/index.ts";
import { ctrlAddress, requireExpected } from "../hw/common.ts";

/** Must match FAULT_CONFIG in test/vm/hw.ts. */
export const READ_ERROR_LBA = 100;
export const WRITE_ERROR_LBA = 200;

let ctrl: Controller | undefined;
afterEach(() => {
  ctrl?.close();
  ctrl = undefined;
});

function nsWith(kind: "blkdebug" | "throttle" | "none") {
  const exp = requireExpected().namespaces as { nsid: number; fault?: { throttleIops?: number; blkdebug?: string } }[];
  const n = exp.find((e) =>
    kind === "none" ? !e.fault : kind === "blkdebug" ? e.fault?.blkdebug !== undefined : e.fault?.throttleIops !== undefined,
  );
  if (!n) throw new Error(`FAULT_CONFIG has no ${kind} namespace`);
  return n.nsid;
}

describe("media errors (blkdebug)", () => {
  test("a read of the poisoned block is the controller's Unrecovered Read Error; its neighbours read fine", async () => {
    const c = (ctrl = Controller.open(ctrlAddress()));
    const ns = new Namespace(c, nsWith("blkdebug"));
    const buf = c.allocBuffer(4 * ns.lbaSize);
    await ns.read(READ_ERROR_LBA - 2, 2, buf);
    await ns.read(READ_ERROR_LBA + 1, 2, buf);
    const err = await ns.read(READ_ERROR_LBA, 1, buf).catch((e) => e);
    expect(err).toBeInstanceOf(NvmeStatusError);
    expect([err.sct, err.sc]).toEqual([status.SCT_MEDIA, status.SC_UNRECOVERED_READ]);
    expect(err.message).toContain(`Read(0x02) @ LBA ${READ_ERROR_LBA}, 1 blocks: Unrecovered Read Error`);
    // A range that covers the block fails too; the queue carries on.
    await expect(ns.read(READ_ERROR_LBA - 1, 3, buf)).rejects.toThrow(/Unrecovered Read Error/);
    await ns.read(0, 1, buf);
  });

  test("a write of the poisoned block is the controller's Write Fault", async () => {
    const c = (ctrl = Controller.open(ctrlAddress()));
    const ns = new Namespace(c, nsWith("blkdebug"));
    const buf = c.allocBuffer(ns.lbaSize);
    const err = await ns.write(WRITE_ERROR_LBA, 1, buf).catch((e) => e);
    expect(err).toBeInstanceOf(NvmeStatusError);
    expect([err.sct, err.sc]).toEqual([status.SCT_MEDIA, status.SC_WRITE_FAULT]);
    await ns.write(WRITE_ERROR_LBA + 1, 1, buf);
  });
});

describe("stalled commands (throttle)", () => {
  test("commands stalled past their deadline: Abort, then a reset fails them with NvmeTimeoutError, and I/O goes on", async () => {
    const c = (ctrl = Controller.open(ctrlAddress(), { timeoutMs: 400, abortGraceMs: 100 }));
    const slow = new Namespace(c, nsWith("throttle"));
    const fast = new Namespace(c, nsWith("none"));
    const buf = c.allocBuffer(64 * 1024);
    const q = c.createIoQueue({ entries: 16 });
    // The throttle lets a few through a second: most of these wait in QEMU past 400 ms.
    const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => slow.read(i, 1, buf, { queue: q, offset: i * 4096 })));
    const timedOut = results.filter((r) => r.status === "rejected" && r.reason instanceof NvmeTimeoutError);
    const other = results.filter((r) => r.status === "rejected" && !(r.reason instanceof NvmeTimeoutError));
    expect(other).toEqual([]);
    expect(timedOut.length).toBeGreaterThan(0);
    // QEMU never aborts a command (Abort answers "not aborted"): the controller was reset.
    const deadline = Date.now() + 30_000;
    while (c.resets === 0 && Date.now() < deadline) await Bun.sleep(50);
    expect(c.resets).toBeGreaterThanOrEqual(1);
    expect(q.outstanding).toBe(0);
    // Same queue objects, re-created on the controller: the application carries on.
    const data = c.allocBuffer(8 * 4096);
    crypto.getRandomValues(data.bytes);
    await fast.write(10, 8 * (4096 / fast.lbaSize), data, { queue: q });
    const back = c.allocBuffer(8 * 4096);
    await fast.read(10, 8 * (4096 / fast.lbaSize), back, { queue: q });
    expect(Buffer.compare(back.bytes, data.bytes)).toBe(0);
    expect(c.identifyController().sn).toBe(c.info.sn);
  });
});
