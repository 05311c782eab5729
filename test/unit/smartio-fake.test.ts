/**
 * Contract tests of the fake SmartIO (test/smartio/fake-sisci.c) through libnvm's real shim
 * (c/src/sisci.c built against the fake's headers): the rules of Dolphin's SISCI the shim and the
 * backend must live with. Each test would fail against a fake without the rule (or a shim that
 * hid it): borrow reference counts and exclusivity across processes, segment ids unique per node,
 * prepare -> available -> map-for-device order, busy answers on teardown and the shim's bounded
 * retries, data interrupts between processes (hosts), shared device segments, injected errors and
 * the shim's error record.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { join } from "node:path";
import { native } from "../../lib/native.ts";
import {
  BORROW_EXCLUSIVE,
  INTR_FIXED,
  lastSisciFailure,
  MAP_READONLY,
  MEMTYPE_BAR,
  MEMTYPE_PRIVATE,
  MEMTYPE_SHARED,
  HINT_HOST_WRITE,
  HINT_MULTIHOST_READ,
  SEGMENT_AUTO_ID,
  sisciScratch,
  sisciShim,
  type SisciShim,
} from "../../lib/sisci.ts";
import { fabricDir, fake, fakeEnv, NOTHING_LIVE, removeFabric, useFakeSmartIo } from "../smartio/fake.ts";

const REPO = join(import.meta.dir, "..", "..");
const CHILD = join(REPO, "test", "smartio", "child.ts");
const EBUSY = 16;
const EEXIST = 17;
const ENODEV = 19;
const ENOENT = 2;
const EPROTO = 71;
const ETIMEDOUT = 110;
const ECONNREFUSED = 111;
const EMSGSIZE = 90;
const EIO = 5;
const DEVICES = "80000=none,80100=none,80200=none+unavailable";

let dir = "";
let shim: SisciShim;
let s: ReturnType<typeof sisciScratch>;

beforeAll(() => {
  useFakeSmartIo();
  dir = fabricDir();
  fake.configure(dir, DEVICES);
  shim = sisciShim();
  s = sisciScratch();
});

afterAll(() => removeFabric(dir));

afterEach(() => {
  fake.clear();
  // Every test gives back what it took: the next one starts from an empty fake.
  expect(fake.state()).toEqual(NOTHING_LIVE);
});

/** Run test/smartio/child.ts as another process (another host when `node` differs from 4). */
async function child(args: string[], node = 4, extraEnv: Record<string, string> = {}) {
  const p = Bun.spawn(["bun", CHILD, ...args], {
    cwd: REPO,
    env: { ...process.env, ...fakeEnv(dir, DEVICES, node), ...extraEnv },
    stdout: "pipe",
    stderr: "pipe",
  });
  return p;
}

async function childResult(args: string[], node = 4, extraEnv: Record<string, string> = {}) {
  const p = await child(args, node, extraEnv);
  const timer = setTimeout(() => p.kill(), 30_000);
  const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
  clearTimeout(timer);
  return { out: out.trim(), err, code };
}

function borrow(fdid: number, flags = 0): Pointer {
  const d = shim.nvm_sisci_device_borrow(fdid, flags, s.ptr);
  if (d === null) throw new Error(`borrow 0x${fdid.toString(16)} failed: ${JSON.stringify(lastSisciFailure())}`);
  return d;
}

function ok(rc: number): void {
  if (rc < 0) throw new Error(`shim call failed (${rc}): ${JSON.stringify(lastSisciFailure())}`);
}

/** With SISCI initialised for the test's duration (the shim counts users). */
function withSisci<T>(f: () => T): T {
  ok(shim.nvm_sisci_init());
  try {
    return f();
  } finally {
    shim.nvm_sisci_fini();
  }
}

describe("the library", () => {
  test("nothing works before SCIInitialize: the shim reports SCI_ERR_NOT_INITIALIZED as EIO with SISCI's call and text", () => {
    expect(fake.state().init).toBe(0);
    expect(shim.nvm_sisci_device_borrow(0x80000, 0, s.ptr)).toBeNull();
    const f = lastSisciFailure();
    expect(f).toEqual({ errno: EIO, sciError: fake.errorValue("SCI_ERR_NOT_INITIALIZED"), call: "SCIOpen", text: "SCIInitialize was not called" });
  });

  test("nvm_sisci_init/fini count their users: SCIInitialize once, SCITerminate after the last", () => {
    ok(shim.nvm_sisci_init());
    ok(shim.nvm_sisci_init());
    expect(fake.calls("SCIInitialize")).toBe(1);
    shim.nvm_sisci_fini();
    expect(fake.calls("SCITerminate")).toBe(0);
    shim.nvm_sisci_fini();
    expect(fake.calls("SCITerminate")).toBe(1);
    expect(shim.nvm_sisci_fini()).toBe(-22); // EINVAL: no user left
  });
});

describe("borrowing", () => {
  test("borrows are counted: two in this process share one backing, which goes with the last return", () =>
    withSisci(() => {
      const a = borrow(0x80000);
      expect(s.u32[0]).toBe(0x80000); // info: fdid, adapter, lender node, local node
      expect([s.u32[1], s.u32[2], s.u32[3]]).toEqual([0, 4, 4]);
      const b = borrow(0x80000);
      expect(fake.state()).toMatchObject({ borrows: 2, backings: 1, descriptors: 2 });
      ok(shim.nvm_sisci_device_return(a, 100));
      expect(fake.state()).toMatchObject({ borrows: 1, backings: 1 });
      ok(shim.nvm_sisci_device_return(b, 100));
      expect(fake.state()).toMatchObject({ borrows: 0, backings: 0, descriptors: 0 });
    }));

  test("an exclusive borrow excludes every other, in this process and in others; it is free again once returned", async () => {
    ok(shim.nvm_sisci_init());
    try {
      const shared = borrow(0x80000);
      expect(shim.nvm_sisci_device_borrow(0x80000, BORROW_EXCLUSIVE, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: EBUSY, call: "SCIBorrowDevice", sciError: fake.errorValue("SCI_ERR_NOT_AVAILABLE") });
      // Another host cannot have it exclusively while this one borrows it...
      const refused = await childResult(["borrow", "80000", "exclusive"], 8);
      expect(refused.out).toBe(`errno ${EBUSY} SCIBorrowDevice`);
      ok(shim.nvm_sisci_device_return(shared, 100));
      // ...and once it holds it exclusively, nobody else gets it.
      const holder = await child(["borrow", "80000", "exclusive", "1500"], 8);
      const reader = holder.stdout.getReader();
      const first = new TextDecoder().decode((await reader.read()).value);
      expect(first.trim()).toBe("ok");
      expect(shim.nvm_sisci_device_borrow(0x80000, 0, s.ptr)).toBeNull();
      expect(lastSisciFailure().errno).toBe(EBUSY);
      reader.releaseLock();
      expect(await holder.exited).toBe(0);
      // The holder returned it (or died): the kernel dropped its lock.
      ok(shim.nvm_sisci_device_return(borrow(0x80000, BORROW_EXCLUSIVE), 100));
    } finally {
      shim.nvm_sisci_fini();
    }
  });

  test("no such fabric device id, and a device that is not lent, are refused with SISCI's codes", () =>
    withSisci(() => {
      expect(shim.nvm_sisci_device_borrow(0x81000, 0, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toEqual({ errno: ENODEV, sciError: fake.errorValue("SCI_ERR_NO_SUCH_FDID"), call: "SCIBorrowDevice", text: "no such fabric device id" });
      expect(shim.nvm_sisci_device_borrow(0x80200, 0, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: EBUSY, call: "SCIBorrowDevice", text: "not available" });
      fake.setAvailable(0x80200, true); // smartio_tool available
      try {
        ok(shim.nvm_sisci_device_return(borrow(0x80200), 100));
      } finally {
        fake.setAvailable(0x80200, false);
      }
    }));

  test("an injected timeout reaches the caller as ETIMEDOUT; the shim undoes what it did before", () =>
    withSisci(() => {
      fake.inject("SCIQuery", "SCI_ERR_TIMEOUT");
      expect(shim.nvm_sisci_device_borrow(0x80000, 0, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: ETIMEDOUT, call: "SCIQuery", text: "operation timed out" });
      expect(fake.calls("SCIReturnDevice")).toBe(1);
      expect(fake.calls("SCIClose")).toBe(1);
    }));

  test("the device list and query answer without borrowing", () =>
    withSisci(() => {
      expect(shim.nvm_sisci_device_list(0x010802, s.ptr, 8)).toBe(3);
      expect([...s.u32.subarray(0, 3)]).toEqual([0x80000, 0x80100, 0x80200]);
      expect(shim.nvm_sisci_device_list(0x020000, s.ptr, 8)).toBe(0); // a class nobody lends
      ok(shim.nvm_sisci_device_query(0x80100, s.ptr));
      expect([...s.u32.subarray(0, 3)]).toEqual([0x80100, 0, 4]);
      expect(fake.state().borrows).toBe(0);
    }));
});

describe("segments", () => {
  test("segment ids are unique per node: a duplicate fails here and in another process of the node, not on another node", async () => {
    ok(shim.nvm_sisci_init());
    const dev = borrow(0x80000);
    try {
      const seg = shim.nvm_sisci_segment_create(dev, 7, 4096, 0, s.ptr);
      expect(seg).not.toBeNull();
      expect(s.u32[0]).toBe(7);
      expect(shim.nvm_sisci_segment_create(dev, 7, 4096, 0, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: EEXIST, call: "SCICreateSegment", sciError: fake.errorValue("SCI_ERR_SEGMENTID_USED") });
      expect((await childResult(["segment", "7", "80100"], 4)).out).toBe(`errno ${EEXIST} SCICreateSegment`);
      expect((await childResult(["segment", "7", "80100"], 8)).out).toBe("ok");
      ok(shim.nvm_sisci_segment_remove(seg!, 100));
      // Removed: the id is free again.
      expect((await childResult(["segment", "7", "80100"], 4)).out).toBe("ok");
      // AUTO_ID: SISCI picks distinct ids.
      const a = shim.nvm_sisci_segment_create(dev, 0, 4096, SEGMENT_AUTO_ID, s.ptr)!;
      const ida = s.u32[0]!;
      const b = shim.nvm_sisci_segment_create(dev, 0, 4096, SEGMENT_AUTO_ID, s.ptr)!;
      expect(s.u32[0]).not.toBe(ida);
      ok(shim.nvm_sisci_segment_remove(a, 100));
      ok(shim.nvm_sisci_segment_remove(b, 100));
    } finally {
      ok(shim.nvm_sisci_device_return(dev, 100));
      shim.nvm_sisci_fini();
    }
  });

  test("prepare -> available -> map for the device, in that order; the CPU mapping is of the segment's own memory", () =>
    withSisci(() => {
      const dev = borrow(0x80000);
      const seg = shim.nvm_sisci_segment_create(dev, 0, 8192, SEGMENT_AUTO_ID, s.ptr)!;
      expect(shim.nvm_sisci_segment_map_device(seg, s.ptr)).toBe(-EPROTO);
      expect(lastSisciFailure()).toMatchObject({ call: "SCIMapLocalSegmentForDevice", sciError: fake.errorValue("SCI_ERR_SEGMENT_NOT_PREPARED") });
      expect(shim.nvm_sisci_segment_set_available(seg)).toBe(-EPROTO);
      expect(lastSisciFailure()).toMatchObject({ call: "SCISetSegmentAvailable", sciError: fake.errorValue("SCI_ERR_SEGMENT_NOT_PREPARED") });
      ok(shim.nvm_sisci_segment_prepare(seg));
      expect(shim.nvm_sisci_segment_map_device(seg, s.ptr)).toBe(-EPROTO); // prepared, not available
      expect(lastSisciFailure()).toMatchObject({ call: "SCIMapLocalSegmentForDevice", sciError: fake.errorValue("SCI_ERR_ILLEGAL_OPERATION") });
      ok(shim.nvm_sisci_segment_set_available(seg));
      ok(shim.nvm_sisci_segment_map_device(seg, s.ptr));
      const io = s.u32[0]! + s.u32[1]! * 0x1_0000_0000;
      expect(io % 4096).toBe(0);
      expect(io).toBeGreaterThanOrEqual(0x1_0000_0000); // the high dword is exercised
      let p = shim.nvm_sisci_segment_map_cpu(seg, 0)!;
      let view = new Uint32Array(toArrayBuffer(p, 0, 8192));
      view[0] = 0xfeedface;
      view[2047] = 0xc0ffee;
      expect(shim.nvm_sisci_segment_map_cpu(seg, 0)).toBeNull(); // one CPU mapping per handle
      expect(fake.state()).toMatchObject({ localSegments: 1, deviceMaps: 1, cpuMaps: 1, available: 1 });
      // The memory is the segment's, not the mapping's: mapped again, it still holds the data.
      ok(shim.nvm_sisci_segment_unmap_cpu(seg, 100));
      p = shim.nvm_sisci_segment_map_cpu(seg, 0)!;
      view = new Uint32Array(toArrayBuffer(p, 0, 8192));
      expect([view[0], view[2047]]).toEqual([0xfeedface, 0xc0ffee]);
      ok(shim.nvm_sisci_segment_unmap_cpu(seg, 100));
      ok(shim.nvm_sisci_segment_unmap_device(seg, 100));
      ok(shim.nvm_sisci_segment_set_unavailable(seg, 100));
      ok(shim.nvm_sisci_segment_remove(seg, 100));
      ok(shim.nvm_sisci_device_return(dev, 100));
    }));

  test("teardown out of order is busy: the shim retries until its deadline, then reports EBUSY; in order it succeeds", () =>
    withSisci(() => {
      const dev = borrow(0x80000);
      const seg = shim.nvm_sisci_segment_create(dev, 0, 4096, SEGMENT_AUTO_ID, s.ptr)!;
      ok(shim.nvm_sisci_segment_prepare(seg));
      ok(shim.nvm_sisci_segment_set_available(seg));
      ok(shim.nvm_sisci_segment_map_device(seg, s.ptr));
      const t0 = performance.now();
      expect(shim.nvm_sisci_segment_remove(seg, 60)).toBe(-EBUSY); // still mapped for the device
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(55);
      expect(took).toBeLessThan(2000);
      expect(fake.calls("SCIRemoveSegment")).toBeGreaterThan(5); // retried, not asked once
      expect(lastSisciFailure()).toMatchObject({ errno: EBUSY, call: "SCIRemoveSegment", sciError: fake.errorValue("SCI_ERR_BUSY") });
      expect(shim.nvm_sisci_device_return(dev, 20)).toBe(-EBUSY); // a segment is mapped for it
      expect(shim.nvm_sisci_segment_set_unavailable(seg, 20)).toBe(-EBUSY); // and it is still mapped
      ok(shim.nvm_sisci_segment_unmap_device(seg, 100));
      ok(shim.nvm_sisci_segment_set_unavailable(seg, 100));
      ok(shim.nvm_sisci_segment_remove(seg, 100));
      ok(shim.nvm_sisci_device_return(dev, 100));
    }));

  test("SISCI busy for a while (a remote user going away): the shim's retry rides it out", () =>
    withSisci(() => {
      const dev = borrow(0x80000);
      const seg = shim.nvm_sisci_segment_create(dev, 0, 4096, SEGMENT_AUTO_ID, s.ptr)!;
      fake.inject("SCIRemoveSegment", "SCI_ERR_BUSY", 3);
      fake.inject("SCIReturnDevice", "SCI_ERR_BUSY", 2);
      ok(shim.nvm_sisci_segment_remove(seg, 1000));
      expect(fake.calls("SCIRemoveSegment")).toBe(4);
      ok(shim.nvm_sisci_device_return(dev, 1000));
      expect(fake.calls("SCIReturnDevice")).toBe(3);
    }));

  test("device memory: BAR0 connects and maps; a private segment maps for the device; an unknown id is ENOENT", () =>
    withSisci(() => {
      const dev = borrow(0x80000);
      const bar = shim.nvm_sisci_connect_device_segment(dev, 0, MEMTYPE_BAR, s.ptr)!;
      expect(s.u32[0]).toBe(16384);
      expect(shim.nvm_sisci_connect_device_segment(dev, 1, MEMTYPE_BAR, s.ptr)).toBeNull(); // the fake's devices have BAR0 only
      expect(lastSisciFailure()).toMatchObject({ errno: ENOENT, call: "SCIConnectDeviceSegment" });
      const regs = shim.nvm_sisci_remote_map_cpu(bar, 0, 0, 2)!;
      native().nvm_write32(regs, 0x14, 0x460001);
      expect(native().nvm_read32(regs, 0x14)).toBe(0x460001);
      expect(shim.nvm_sisci_disconnect(bar, 20)).toBe(-EBUSY); // still mapped
      ok(shim.nvm_sisci_remote_unmap_cpu(bar, 100));
      ok(shim.nvm_sisci_disconnect(bar, 100));

      ok(shim.nvm_sisci_device_segment_create(dev, 3, 4096, MEMTYPE_PRIVATE, 0));
      expect(shim.nvm_sisci_device_segment_create(dev, 3, 4096, MEMTYPE_PRIVATE, 0)).toBe(-EEXIST);
      expect(shim.nvm_sisci_connect_device_segment(dev, 4, MEMTYPE_PRIVATE, s.ptr)).toBeNull();
      expect(lastSisciFailure().errno).toBe(ENOENT);
      const priv = shim.nvm_sisci_connect_device_segment(dev, 3, MEMTYPE_PRIVATE, s.ptr)!;
      ok(shim.nvm_sisci_remote_map_device(priv, s.ptr));
      expect(s.u32[1]).toBe(1); // above 4 GiB
      ok(shim.nvm_sisci_remote_unmap_device(priv, 100));
      ok(shim.nvm_sisci_disconnect(priv, 100));
      ok(shim.nvm_sisci_device_return(dev, 100));
    }));

  test("a shared device segment is one for every borrower: another host maps it read-only and reads what this one wrote", async () => {
    ok(shim.nvm_sisci_init());
    const dev = borrow(0x80000);
    try {
      // The rendezvous of the C original's RPC: created once, found taken by everyone after.
      ok(shim.nvm_sisci_device_segment_create(dev, 0, 48, MEMTYPE_SHARED, HINT_HOST_WRITE | HINT_MULTIHOST_READ));
      expect(shim.nvm_sisci_device_segment_create(dev, 0, 48, MEMTYPE_SHARED, HINT_HOST_WRITE | HINT_MULTIHOST_READ)).toBe(-EEXIST);
      const seg = shim.nvm_sisci_connect_device_segment(dev, 0, MEMTYPE_SHARED, s.ptr)!;
      expect(s.u32[0]).toBe(48);
      const p = shim.nvm_sisci_remote_map_cpu(seg, 0, 0, 0)!;
      const slot = new Uint32Array(toArrayBuffer(p, 0, 12));
      slot.set([0xdeadbeef, 4, 1234]); // {magic, node id, interrupt number}
      const r = await childResult(["shared", "80000", "0", "12"], 8);
      expect(r.out).toBe("efbeadde04000000d2040000");
      expect(shim.nvm_sisci_remote_map_cpu(seg, 0, 0, MAP_READONLY)).toBeNull(); // one CPU mapping per handle
      ok(shim.nvm_sisci_remote_unmap_cpu(seg, 100));
      ok(shim.nvm_sisci_disconnect(seg, 100));
    } finally {
      ok(shim.nvm_sisci_device_return(dev, 100));
      shim.nvm_sisci_fini();
    }
  });

  test("GPU memory attaches to an empty segment (SCI_FLAG_CUDA_BUFFER) and maps for the device; it has no CPU view; a SISCI without CUDA says EOPNOTSUPP", async () => {
    await withSisci(async () => {
      const dev = borrow(0x80000);
      const host = native().nvm_dma_alloc(8192, 0)!; // the fake has no GPU: host pages stand in
      const a = BigInt(host as unknown as number);
      const seg = shim.nvm_sisci_segment_create_gpu(dev, 0, Number(a & 0xffffffffn), Number(a >> 32n), 8192, SEGMENT_AUTO_ID, s.ptr)!;
      expect(seg).not.toBeNull();
      expect(fake.calls("SCIAttachPhysicalMemory")).toBe(1);
      ok(shim.nvm_sisci_segment_prepare(seg));
      ok(shim.nvm_sisci_segment_set_available(seg));
      ok(shim.nvm_sisci_segment_map_device(seg, s.ptr));
      expect(shim.nvm_sisci_segment_map_cpu(seg, 0)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: EPROTO, call: "SCIMapLocalSegment" });
      ok(shim.nvm_sisci_segment_unmap_device(seg, 100));
      ok(shim.nvm_sisci_segment_set_unavailable(seg, 100));
      ok(shim.nvm_sisci_segment_remove(seg, 100));
      ok(shim.nvm_sisci_device_return(dev, 100));
      native().nvm_dma_free(host, 8192, 0);
    });
    const nocuda = await childResult(["gpu", "80000"], 4, { FAKE_SISCI_NO_CUDA: "1" });
    expect(nocuda.out).toBe("errno 95 SCIAttachPhysicalMemory"); // EOPNOTSUPP
    expect((await childResult(["gpu", "80000"])).out).toBe("ok");
  });
});

describe("data interrupts", () => {
  test("a message to an interrupt of this process arrives whole; waiting is bounded; a short buffer is EMSGSIZE", () =>
    withSisci(() => {
      const intr = shim.nvm_sisci_intr_create(0, 0, 0, s.ptr)!;
      const [number, node] = [s.u32[0]!, s.u32[1]!];
      expect(node).toBe(4);
      const r = shim.nvm_sisci_intr_connect(0, node, number, 100)!;
      const buf = native().nvm_host_alloc(256)!;
      const bytes = new Uint8Array(toArrayBuffer(buf, 0, 256));
      bytes.set(Buffer.from("hello, 72 bytes would be an RPC request"));
      ok(shim.nvm_sisci_intr_trigger(r, buf, 39));
      bytes.fill(0);
      expect(shim.nvm_sisci_intr_wait(intr, buf, 256, 1000)).toBe(39);
      expect(Buffer.from(bytes.subarray(0, 39)).toString()).toBe("hello, 72 bytes would be an RPC request");
      const t0 = performance.now();
      expect(shim.nvm_sisci_intr_wait(intr, buf, 256, 80)).toBe(-ETIMEDOUT);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(70);
      ok(shim.nvm_sisci_intr_trigger(r, buf, 80));
      expect(shim.nvm_sisci_intr_wait(intr, buf, 16, 1000)).toBe(-EMSGSIZE);
      // A fixed number in use is refused; after removal, triggering finds nobody.
      expect(shim.nvm_sisci_intr_create(0, number, INTR_FIXED, s.ptr)).toBeNull();
      expect(lastSisciFailure()).toMatchObject({ errno: EBUSY, call: "SCICreateDataInterrupt" });
      ok(shim.nvm_sisci_intr_remove(intr, 100));
      expect(shim.nvm_sisci_intr_trigger(r, buf, 4)).toBeLessThan(0);
      expect(lastSisciFailure()).toMatchObject({ call: "SCITriggerDataInterrupt", sciError: fake.errorValue("SCI_ERR_NOT_CONNECTED") });
      ok(shim.nvm_sisci_intr_disconnect(r));
      native().nvm_host_free(buf);
    }));

  test("connecting to an interrupt nobody created is refused once the timeout passed", () =>
    withSisci(() => {
      const t0 = performance.now();
      expect(shim.nvm_sisci_intr_connect(0, 9, 4242, 60)).toBeNull();
      expect(performance.now() - t0).toBeGreaterThanOrEqual(50);
      expect(lastSisciFailure()).toMatchObject({ errno: ECONNREFUSED, call: "SCIConnectDataInterrupt" });
    }));

  test("between hosts: another process (node 8) answers a message on its interrupt with one to ours", async () => {
    ok(shim.nvm_sisci_init());
    const intr = shim.nvm_sisci_intr_create(0, 0, 0, s.ptr)!;
    const mine = s.u32[0]!;
    const buf = native().nvm_host_alloc(256)!;
    try {
      const server = await child(["echo", "777", "10000"], 8);
      const reader = server.stdout.getReader();
      expect(new TextDecoder().decode((await reader.read()).value).trim()).toBe("ready 8");
      reader.releaseLock();
      const r = shim.nvm_sisci_intr_connect(0, 8, 777, 2000)!;
      const msg = Buffer.from(`4 ${mine} ping over the fabric`);
      new Uint8Array(toArrayBuffer(buf, 0, msg.length)).set(msg);
      ok(shim.nvm_sisci_intr_trigger(r, buf, msg.length));
      const n = shim.nvm_sisci_intr_wait(intr, buf, 256, 10_000);
      expect(Buffer.from(new Uint8Array(toArrayBuffer(buf, 0, n))).toString()).toBe("echo: ping over the fabric");
      ok(shim.nvm_sisci_intr_disconnect(r));
      expect(await server.exited).toBe(0);
    } finally {
      ok(shim.nvm_sisci_intr_remove(intr, 100));
      native().nvm_host_free(buf);
      shim.nvm_sisci_fini();
    }
  });
});
