/**
 * The SmartIO backend's whole sequence against QEMU's NVMe with real DMA: libnvm's shim
 * (c/src/sisci.c) over the fake SISCI (test/smartio), which lends the guest's controller, bound to
 * vfio-pci, as fabric device 0x80000: BAR0 is the VFIO BAR mmap, every segment "mapped for the
 * device" is a VFIO_IOMMU_MAP_DMA of its memory, so the controller reaches exactly the segments and
 * faults anywhere else. Identify, verified I/O (and the same blocks read back afterwards through
 * the VFIO backend itself), every injected SISCI failure -> a typed error with nothing left
 * borrowed or mapped, the tools with --ctrl=smartio:80000, and the call trace.
 *
 * What this does not test: NTB address translation, remote segments across hosts, non-coherent
 * hosts, write combining, or Dolphin's driver; no SISCI hardware or library was available.
 *
 * Runs in the vfio-io guest (q35 + intel-iommu, the controller bound to vfio-pci by the suite's
 * prelude): bun test/vm/hw.ts --suite vfio-io (or --suite smartio for this file alone).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { Controller, Namespace, SmartIoBackend, SmartIoError } from "../../lib/index.ts";
import { ctrlAddress, REPO, requireExpected } from "../hw/common.ts";
import { fabricDir, fake, fakeEnv, NOTHING_LIVE, removeFabric, useFakeSmartIo } from "../smartio/fake.ts";

const FDID = 0x80000;
const CTRL = "smartio:80000";
let bdf = "";
let dir = "";
let devices = "";

function driverOf(b: string): string | undefined {
  try {
    return basename(readlinkSync(`/sys/bus/pci/devices/${b}/driver`));
  } catch {
    return undefined;
  }
}

beforeAll(() => {
  bdf = ctrlAddress();
  if (driverOf(bdf) !== "vfio-pci") {
    throw new Error(
      `the SmartIO suite lends ${bdf} through VFIO, but it is bound to ${driverOf(bdf) ?? "no driver"}: run it in the IOMMU guest with the controller bound to vfio-pci: bun test/vm/hw.ts --suite smartio`,
    );
  }
  useFakeSmartIo();
  dir = fabricDir();
  devices = `80000=${bdf},80100=none+unavailable`;
  fake.configure(dir, devices);
});

afterAll(() => removeFabric(dir));

afterEach(() => {
  fake.clear();
  // Returned and unmapped, IOMMU mappings included: the fake closed its VFIO container.
  expect(fake.state()).toEqual(NOTHING_LIVE);
});

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("expected a throw");
}

function tool(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync(["bun", ...args], { cwd: REPO, env: { ...process.env, ...fakeEnv(dir, devices), ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("through SmartIO, the same driver", () => {
  test("identify: the controller borrowed as smartio:80000, its queues and scratch page in segments the IOMMU maps", () => {
    const exp = requireExpected();
    const ctrl = Controller.open(CTRL, { handleSignals: false });
    try {
      const b = ctrl.backend as SmartIoBackend;
      expect(b).toBeInstanceOf(SmartIoBackend);
      expect([b.kind, b.name, b.fdid]).toEqual(["smartio", CTRL, FDID]);
      expect(ctrl.info.sn.trim()).toBe(exp.serial);
      expect(ctrl.info.mn.trim()).toBe("QEMU NVMe Ctrl");
      expect(ctrl.activeNamespaces()).toEqual(exp.namespaces.map((n) => n.nsid));
      const st = fake.state();
      expect(st).toMatchObject({ borrows: 1, backings: 1, connected: 1 });
      // Admin SQ, CQ and the identify page at least, each a real IOMMU mapping at the fake's addresses.
      expect(st.iommuMaps).toBeGreaterThanOrEqual(3);
      expect(st.iommuMaps).toBe(b.mappings().length);
      for (const m of b.mappings()) expect(m.ioaddr).toBeGreaterThanOrEqual(0x1_0000_0000);
    } finally {
      ctrl.close();
    }
  });

  test("verified I/O: 2 MiB written and read back through SmartIO on both namespaces, then read again through VFIO itself", async () => {
    const exp = requireExpected();
    const written: { nsid: number; lba: number; data: Uint8Array }[] = [];
    const ctrl = Controller.open(CTRL, { handleSignals: false });
    try {
      for (const e of exp.namespaces) {
        const ns = new Namespace(ctrl, e.nsid);
        const bytes = 2 << 20;
        const blocks = bytes / e.lbaSize;
        const lba = ns.blocks - blocks - 8; // away from the blocks the other suites' tests use
        using out = ctrl.allocBuffer(bytes);
        using back = ctrl.allocBuffer(bytes);
        for (let o = 0; o < bytes; o += 65536) crypto.getRandomValues(out.bytes.subarray(o, o + 65536));
        // Four commands in flight at once, 512 KiB each: PRP lists built from the segments' device addresses.
        const per = blocks / 4;
        await Promise.all([0, 1, 2, 3].map((i) => ns.write(lba + i * per, per, out.region(i * per * e.lbaSize, per * e.lbaSize))));
        await Promise.all([0, 1, 2, 3].map((i) => ns.read(lba + i * per, per, back.region(i * per * e.lbaSize, per * e.lbaSize))));
        expect(Buffer.compare(back.bytes, out.bytes)).toBe(0);
        expect(await ns.compare(lba, blocks, out)).toBe(true);
        written.push({ nsid: e.nsid, lba, data: Uint8Array.from(out.bytes) });
      }
    } finally {
      ctrl.close();
    }
    expect(fake.state()).toEqual(NOTHING_LIVE); // the VFIO group is free again
    // The data is on the namespaces: the VFIO backend reads the same blocks back.
    const direct = Controller.open(bdf, { backend: "vfio", handleSignals: false });
    try {
      for (const w of written) {
        const ns = new Namespace(direct, w.nsid);
        using buf = direct.allocBuffer(w.data.length);
        await ns.read(w.lba, w.data.length / ns.lbaSize, buf);
        expect(Buffer.compare(buf.bytes, w.data)).toBe(0);
      }
    } finally {
      direct.close();
    }
  });
});

describe("every SISCI failure is a typed error, and nothing is left borrowed or mapped", () => {
  // Opening: the borrow, BAR0, then the admin queues' segments (create, map for device, map for CPU).
  const steps: [string, string, SmartIoError["reason"]][] = [
    ["SCIBorrowDevice", "SCI_ERR_TIMEOUT", "timeout"],
    ["SCIConnectDeviceSegment", "SCI_ERR_TIMEOUT", "timeout"],
    ["SCIMapRemoteSegment", "SCI_ERR_NOSPC", "sisci"],
    ["SCICreateSegment", "SCI_ERR_NOSPC", "sisci"],
    ["SCIPrepareSegment", "SCI_ERR_TIMEOUT", "timeout"],
    ["SCIMapLocalSegmentForDevice", "SCI_ERR_TIMEOUT", "timeout"],
    ["SCIMapLocalSegment", "SCI_ERR_NOSPC", "sisci"],
  ];
  test("Controller.open failing at each SISCI step: SmartIoError naming the call; the device returned, the IOMMU unmapped", () => {
    for (const [call, error, reason] of steps) {
      fake.inject(call, error);
      const e = thrown(() => Controller.open(CTRL, { handleSignals: false })) as SmartIoError;
      expect(e).toBeInstanceOf(SmartIoError);
      expect([e.call, e.reason]).toEqual([call, reason]);
      expect(fake.state()).toEqual(NOTHING_LIVE);
      fake.clear();
    }
    // And nothing stuck: it opens.
    Controller.open(CTRL, { handleSignals: false }).close();
  });

  test("a failure while the controller runs (an I/O queue's segment) is typed, and the controller carries on", async () => {
    const ctrl = Controller.open(CTRL, { handleSignals: false });
    try {
      fake.inject("SCIMapLocalSegmentForDevice", "SCI_ERR_TIMEOUT");
      const e = thrown(() => ctrl.createIoQueue({ entries: 16 })) as SmartIoError;
      expect([e.name, e.call, e.reason]).toEqual(["SmartIoError", "SCIMapLocalSegmentForDevice", "timeout"]);
      const ns = new Namespace(ctrl, 1);
      using buf = ctrl.allocBuffer(4096);
      await ns.read(0, 8, buf);
      const q = ctrl.createIoQueue({ entries: 16 });
      expect(q.qid).toBeGreaterThan(0);
    } finally {
      ctrl.close();
    }
  });

  test("no such fabric device, a device not lent, and one another process holds (libnvm's owner lock, then SISCI's exclusive borrow): the reason and what to do", async () => {
    const none = thrown(() => Controller.open("smartio:81000", { handleSignals: false })) as SmartIoError;
    expect([none.reason, none.call]).toEqual(["no-device", "SCIBorrowDevice"]);
    const off = thrown(() => Controller.open("smartio:80100", { handleSignals: false })) as SmartIoError;
    expect([off.reason, off.call]).toEqual(["not-available", "SCIBorrowDevice"]);
    const ctrl = Controller.open(CTRL, { handleSignals: false });
    try {
      // Root on this host: libnvm's owner lock names the holder first.
      const r = tool(["examples/identify.ts", `--ctrl=${CTRL}`]);
      expect(r.code).toBe(1);
      expect(r.err).toContain(`error: ControllerBusyError: ${CTRL} is in use by process ${process.pid}`);
      // Past the lock (--force, or another host), SISCI's exclusive borrow refuses it, and force cannot take it.
      const f = tool(["examples/identify.ts", `--ctrl=${CTRL}`, "--force"]);
      expect(f.code).toBe(1);
      expect(f.err).toContain("SCIBorrowDevice failed: not available");
      expect(f.err).toContain("SISCI allows one exclusive borrower");
    } finally {
      ctrl.close();
    }
  });
});

describe("the tools, unchanged, with --ctrl=smartio:80000", () => {
  test("identify --json and a write-blocks / read-blocks round trip; the SISCI call trace is SISCI's order", () => {
    const exp = requireExpected();
    const trace = join(process.env.LIBNVM_VM_XCHG ?? dir, "smartio-trace.txt");
    rmSync(trace, { force: true });
    const id = tool(["examples/identify.ts", `--ctrl=${CTRL}`, "--json"], { LIBNVM_SISCI_TRACE: trace });
    expect(id.code).toBe(0);
    const j = JSON.parse(id.out);
    expect([j.controller, j.identify.sn.trim()]).toEqual([CTRL, exp.serial]);

    // What the backend asked of SISCI, in order (kept in the run's xchg directory as the record to
    // compare with a real cluster's, LIBNVM_SISCI_TRACE).
    const calls = readFileSync(trace, "utf8").trim().split("\n").map((l) => l.slice(0, l.indexOf("(")));
    expect(calls.slice(0, 7)).toEqual(["SCIInitialize", "SCIOpen", "SCIBorrowDevice", "SCIQuery", "SCIGetLocalNodeId", "SCIConnectDeviceSegment", "SCIMapRemoteSegment"]);
    expect(calls.slice(7, 13)).toEqual(["SCIOpen", "SCICreateSegment", "SCIPrepareSegment", "SCISetSegmentAvailable", "SCIMapLocalSegmentForDevice", "SCIMapLocalSegment"]);
    expect(calls.slice(-5)).toEqual(["SCIUnmapSegment", "SCIDisconnectSegment", "SCIReturnDevice", "SCIClose", "SCITerminate"]);
    const order = ["SCIUnmapSegment", "SCIUnmapLocalSegmentForDevice", "SCISetSegmentUnavailable", "SCIRemoveSegment", "SCIClose"];
    const firstFree = calls.indexOf("SCIUnmapLocalSegmentForDevice") - 1;
    expect(calls.slice(firstFree, firstFree + 5)).toEqual(order);
    expect(readFileSync(trace, "utf8")).not.toContain(" = E"); // no call failed

    const e = exp.namespaces[0]!;
    const data = new Uint8Array(256 * 1024 + 100);
    crypto.getRandomValues(data);
    writeFileSync(join(dir, "in.bin"), data);
    const lba = 4096;
    const w = tool(["examples/write-blocks.ts", `--ctrl=${CTRL}`, `--ns=${e.nsid}`, `--lba=${lba}`, `--input=${join(dir, "in.bin")}`]);
    expect(w.code).toBe(0);
    const blocks = Math.ceil(data.length / e.lbaSize);
    const r = tool(["examples/read-blocks.ts", `--ctrl=${CTRL}`, `--ns=${e.nsid}`, `--lba=${lba}`, `--count=${blocks}`, `--output=${join(dir, "out.bin")}`]);
    expect(r.code).toBe(0);
    expect(Buffer.compare(readFileSync(join(dir, "out.bin")).subarray(0, data.length), data)).toBe(0);
  });

  test("the libnvm command: id-ctrl smartio:80000 -o json is nvme-cli's JSON of this controller", () => {
    const r = tool(["bin/libnvm.ts", "id-ctrl", CTRL, "-o", "json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).sn.trim()).toBe(requireExpected().serial);
  });

  test("a SISCI failure in a tool is one line naming the call and the next step, exit 1", () => {
    const r = tool(["examples/identify.ts", `--ctrl=${CTRL}`], { FAKE_SISCI_INJECT: "SCIMapLocalSegmentForDevice=SCI_ERR_TIMEOUT*1" });
    expect(r.code).toBe(1);
    expect(r.err).toContain("error: SmartIoError: SmartIO: 4096 bytes of DMA memory for smartio:80000: SCIMapLocalSegmentForDevice failed: operation timed out");
    expect(r.err).toContain("did not answer in time");
  });
});
