/** Bring-up, identify and the admin queue against QEMU's controller. */
import { afterEach, describe, expect, test } from "bun:test";
import type { IoQueue } from "../../lib/io.ts";
import { Controller, InvalidArgumentError, NvmeStatusError, commands, formatVersion, log, registers, status } from "../../lib/index.ts";
import { openTestController, requireExpected } from "./common.ts";

let ctrl: Controller | undefined;
afterEach(() => {
  ctrl?.close();
  ctrl = undefined;
});

const open = (opts?: Parameters<typeof Controller.open>[1]) => (ctrl = openTestController(opts));

describe("identify", () => {
  test("Identify Controller matches the QEMU configuration", () => {
    const exp = requireExpected();
    const c = open();
    expect(c.info.vid).toBe(0x1b36); // Red Hat, QEMU's PCI vendor
    expect(c.info.sn).toBe(exp.serial);
    expect(c.info.mn).toBe("QEMU NVMe Ctrl");
    expect(c.info.mdts).toBe(exp.mdts ?? 7);
    expect(c.info.sqesMin).toBe(64);
    expect(c.info.cqesMin).toBe(16);
    expect(c.info.nn).toBeGreaterThanOrEqual(exp.namespaces.length);
    expect(formatVersion(c.vs)).toBe("1.4.0");
    expect(c.cap.mqes).toBe(2047);
    expect(c.cap.cqr).toBe(true);
    expect(c.cap.timeoutMs).toBeGreaterThan(0);
  });

  test("active namespace list and Identify Namespace match the images", () => {
    const exp = requireExpected();
    const c = open();
    expect(c.activeNamespaces()).toEqual(exp.namespaces.map((n) => n.nsid));
    for (const want of exp.namespaces) {
      const ns = c.identifyNamespace(want.nsid);
      expect(ns.isActive).toBe(true);
      expect(ns.lbaSize).toBe(want.lbaSize);
      expect(ns.nsze).toBe(BigInt(want.sizeBytes / want.lbaSize));
      expect(ns.ncap).toBe(ns.nsze);
      expect(ns.metadataSize).toBe(0);
    }
  });

  test("an inactive NSID reads as zeros; NSID 0 and NSIDs past NN are refused before sending", () => {
    const exp = requireExpected();
    const c = open();
    const inactive = Math.max(...exp.namespaces.map((n) => n.nsid)) + 1;
    const ns = c.identifyNamespace(inactive);
    expect(ns.isActive).toBe(false);
    expect(ns.nsze).toBe(0n);
    expect(() => c.identifyNamespace(0)).toThrow(InvalidArgumentError);
    expect(() => c.identifyNamespace(c.info.nn + 1)).toThrow(/does not exist/);
  });
});

describe("admin queue", () => {
  test("1000 admin commands in a row succeed (the C original failed at the 64th)", () => {
    const c = open();
    const sn = c.info.sn;
    for (let i = 0; i < 1000; i++) {
      if (i % 2 === 0) expect(c.identifyController().sn).toBe(sn);
      else expect(c.numberOfQueues().sqs).toBeGreaterThan(0);
    }
  });

  for (const entries of [2, 3, 48, 64, 256, 4096]) {
    test(`admin queue of ${entries} entries wraps correctly`, () => {
      const c = open({ adminQueueEntries: entries });
      const aqa = registers.decodeAqa(c.registers().aqa);
      expect(aqa).toEqual({ asqs: entries, acqs: entries });
      // Enough commands to wrap each ring at least three times (and at least 100).
      const n = Math.max(100, Math.min(3 * entries + 7, 2000));
      const start = c.admin.sq.tail;
      for (let i = 0; i < n; i++) c.adminCommand(commands.getFeatures(commands.FID_NUMBER_OF_QUEUES));
      expect(c.admin.sq.tail).toBe((start + n) % entries);
      expect(c.admin.sq.head).toBe(c.admin.sq.tail); // from the CQEs' SQHD: all fetched
      expect(c.admin.cq.head).toBe(c.admin.sq.tail); // one completion per command
    });
  }

  test("admin queue sizes outside 2..4096 are refused", () => {
    expect(() => open({ adminQueueEntries: 1 })).toThrow(InvalidArgumentError);
    expect(() => open({ adminQueueEntries: 4097 })).toThrow(/must be 2 to 4096/);
  });
});

describe("admin commands", () => {
  test("Number of Queues: what is granted, decoded NSQA/NCQA the right way round", () => {
    const c = open();
    const granted = c.setNumberOfQueues(4, 2);
    // QEMU grants max_ioqpairs of each, whatever is asked (it reports allocated, not requested).
    expect(granted.sqs).toBe(requireExpected().maxIoQpairs ?? 64);
    expect(granted.cqs).toBe(granted.sqs);
    expect(c.numberOfQueues()).toEqual(granted);
  });

  test("Create and Delete I/O queues; the controller refuses a bad queue id with its own status", () => {
    const c = open();
    const { sqs } = c.setNumberOfQueues(8);
    const q = c.createIoQueue({ qid: 1, entries: 32 }) as IoQueue;
    expect(q.sq.entries).toBe(32);
    expect(q.ioCq.qid).toBe(1);
    c.deleteIoQueue(q);
    // Past what Number of Queues granted: the controller itself must refuse the CQ id.
    try {
      c.adminCommand(commands.createIoCq(sqs + 1, 8, c.allocBuffer(4096).busAddress(0)));
      throw new Error("expected the controller to refuse queue id " + (sqs + 1));
    } catch (e) {
      expect(e).toBeInstanceOf(NvmeStatusError);
      const s = e as NvmeStatusError;
      expect(s.sct).toBe(status.SCT_COMMAND_SPECIFIC);
      expect(s.sc).toBe(status.SC_INVALID_QID);
      expect(s.message).toContain("Create I/O Completion Queue");
    }
    // The controller is still usable after the error.
    expect(c.identifyController().sn).toBe(c.info.sn);
  });

  test("Get Log Page: SMART, error information and firmware slot", () => {
    const c = open();
    const smart = c.smartLog();
    expect(smart.compositeTemperature).toBeGreaterThan(200); // kelvin
    const fw = c.firmwareSlotLog();
    expect(fw.activeSlot).toBeGreaterThanOrEqual(1);
    expect(fw.frs1.length).toBeGreaterThan(0); // QEMU reports "1.0" in slot 1
    const errors = c.errorLog();
    expect(Array.isArray(errors)).toBe(true);
  });

  test("Get Log Page longer than two pages goes through a PRP list", () => {
    const c = open();
    // SMART is 512 bytes; the controller transfers what exists and the rest stays zero.
    const big = c.getLogPage(log.LID_SMART, 16384);
    expect(big.length).toBe(16384);
    const small = c.getLogPage(log.LID_SMART, 512);
    expect(big.subarray(0, 2)).toEqual(small.subarray(0, 2));
  });

  test("an unsupported log page comes back as the controller's own error status", () => {
    const c = open();
    try {
      c.getLogPage(0x7f, 512);
      throw new Error("expected an error status");
    } catch (e) {
      expect(e).toBeInstanceOf(NvmeStatusError);
      const s = e as NvmeStatusError;
      // QEMU answers an unknown LID with Invalid Field in Command and Do Not Retry.
      expect([s.sct, s.sc, s.dnr]).toEqual([status.SCT_GENERIC, status.SC_INVALID_FIELD, true]);
      expect(s.message).toContain("Get Log Page");
    }
    expect(c.identifyController().sn).toBe(c.info.sn);
  });
});
