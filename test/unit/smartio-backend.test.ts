/**
 * The SmartIO backend (lib/backends/smartio.ts) over the fake SISCI's plain-memory devices: naming
 * (`smartio:<fdid>` wherever --ctrl goes), BAR0 and DMA segments and their device addresses, every
 * SISCI failure on the way in -> a typed SmartIoError naming the call, with nothing left borrowed,
 * connected or mapped; teardown that SISCI keeps busy; the typed error where SISCI is not installed
 * (the shim not built, libsisci missing), CMake's detection, and doctor's smartio entry. Real DMA
 * through the same code runs in the guest (test/hw-smartio).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { toArrayBuffer } from "bun:ffi";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { native } from "../../lib/native.ts";
import { ControllerBusyError, InvalidArgumentError, NvmeTimeoutError, SmartIoError, UnsupportedError } from "../../lib/errors.ts";
import { parseSmartIoAddress, SmartIoBackend } from "../../lib/backends/smartio.ts";
import { resolveController } from "../../lib/backends/index.ts";
import { FAKE_DIS, FAKE_LIBSISCI, FAKE_SHIM, fabricDir, fake, fakeEnv, NOTHING_LIVE, removeFabric, useFakeSmartIo } from "../smartio/fake.ts";

const REPO = join(import.meta.dir, "..", "..");
const lockDir = mkdtempSync(join(tmpdir(), "libnvm-smartio-lock-"));
process.env.LIBNVM_LOCK_DIR = lockDir;
const { Controller } = await import("../../lib/controller.ts");

const DEVICES = "80000=none,80100=none,80200=none+unavailable";
let dir = "";

beforeAll(() => {
  useFakeSmartIo();
  dir = fabricDir();
  fake.configure(dir, DEVICES);
});

afterAll(() => {
  removeFabric(dir);
  rmSync(lockDir, { recursive: true, force: true });
});

afterEach(() => {
  fake.clear();
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

describe("naming: smartio:<fdid> wherever --ctrl goes", () => {
  test("fabric device ids are hex, as smartio_tool prints them; anything else is refused before SISCI is touched", () => {
    expect(parseSmartIoAddress("smartio:80000")).toBe(0x80000);
    expect(parseSmartIoAddress("SMARTIO:0x80A00")).toBe(0x80a00);
    for (const bad of ["smartio:", "smartio:xyz", "smartio:123456789", "smartio:80000?adapter=0"]) {
      expect(thrown(() => parseSmartIoAddress(bad))).toBeInstanceOf(InvalidArgumentError);
    }
    expect(resolveController("smartio:80000")).toEqual({ kind: "smartio", bdf: undefined, path: undefined, fdid: 0x80000 });
    expect(resolveController("smartio:80000", "smartio").kind).toBe("smartio");
    const wrong = thrown(() => resolveController("smartio:80000", "vfio")) as Error;
    expect(wrong).toBeInstanceOf(InvalidArgumentError);
    expect(wrong.message).toContain("only the smartio backend opens");
    const local = thrown(() => resolveController("0000:05:00.0", "smartio")) as Error;
    expect(local).toBeInstanceOf(InvalidArgumentError);
    expect(local.message).toContain("smartio_tool add <BDF>");
    expect(fake.calls("SCIInitialize")).toBe(0);
  });

  test("the examples take --ctrl=smartio:<fdid> and --backend=smartio, and say so in --help", () => {
    const help = Bun.spawnSync(["bun", "examples/identify.ts", "--help"], { cwd: REPO, stdout: "pipe" });
    expect(help.stdout.toString()).toContain("smartio:<fdid>");
    const r = Bun.spawnSync(["bun", "examples/identify.ts", "--ctrl=smartio:81000", "--backend=smartio"], {
      cwd: REPO,
      env: { ...process.env, ...fakeEnv(dir, DEVICES) },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toContain("error: SmartIoError: SmartIO: borrowing device smartio:81000 exclusively: SCIBorrowDevice failed: no such fabric device id");
    expect(r.stderr.toString()).toContain("smartio_tool list");
  });

  test("the libnvm command takes smartio:<fdid> as its device: a SISCI refusal is exit 3 (the device), doctor names the way", () => {
    const env = { ...process.env, ...fakeEnv(dir, DEVICES) };
    const id = Bun.spawnSync(["bun", "bin/libnvm.ts", "id-ctrl", "smartio:80200"], { cwd: REPO, env, stdout: "pipe", stderr: "pipe" });
    expect(id.exitCode).toBe(3);
    expect(id.stderr.toString()).toContain("SCIBorrowDevice failed: not available");
    const doc = Bun.spawnSync(["bun", "bin/libnvm.ts", "doctor", "smartio:80000", "--skip-gpu"], { cwd: REPO, env, stdout: "pipe", stderr: "pipe" });
    expect(doc.exitCode).toBe(0);
    const out = doc.stdout.toString();
    expect(out).toContain("libnvm doctor: smartio:80000: SmartIO device lent by node 4, reached through adapter 0");
    expect(out).toContain("smartio works now");
    expect(out).toContain("SISCI installed, node 4, NVMe devices 80000, 80100, 80200");
    expect(out).toContain("use:    libnvm id-ctrl smartio:80000   # smartio");
    const help = Bun.spawnSync(["bun", "bin/libnvm.ts", "id-ctrl", "--help"], { cwd: REPO, stdout: "pipe" });
    expect(help.stdout.toString()).toContain("smartio:<fdid>");
  });
});

describe("the backend", () => {
  test("opens: the device borrowed exclusively, BAR0 mapped; DMA memory is one device range per allocation, above 4 GiB", () => {
    const b = new SmartIoBackend(0x80000);
    try {
      expect([b.kind, b.name, b.bdf, b.fdid, b.adapter, b.lenderNode, b.localNode, b.bar0Size]).toEqual(["smartio", "smartio:80000", undefined, 0x80000, 0, 4, 4, 16384]);
      expect(fake.state()).toMatchObject({ init: 1, borrows: 1, connected: 1, cpuMaps: 1 });
      native().nvm_write32(b.bar0, 0x28, 0x1234_5000);
      expect(native().nvm_read32(b.bar0, 0x28)).toBe(0x1234_5000);

      const m = b.allocDma(10_000, { contiguous: true });
      expect(m.size).toBe(12288);
      expect(m.contiguous).toBe(true);
      const io = m.iova[0]! + m.iova[1]! * 0x1_0000_0000;
      expect(io).toBeGreaterThanOrEqual(0x1_0000_0000);
      for (let i = 0; i < 3; i++) expect(m.iova[2 * i]! + m.iova[2 * i + 1]! * 0x1_0000_0000).toBe(io + i * 4096);
      const bytes = new Uint8Array(toArrayBuffer(m.vaddr!, 0, m.size));
      bytes.fill(0xa5);
      const m2 = b.allocDma(4096);
      const io2 = m2.iova[0]! + m2.iova[1]! * 0x1_0000_0000;
      expect(io2 >= io + 12288 || io2 + 4096 <= io).toBe(true); // ranges never overlap
      expect(b.mappings().map((x) => x.size)).toEqual(io < io2 ? [12288, 4096] : [4096, 12288]);
      expect(fake.state()).toMatchObject({ localSegments: 2, deviceMaps: 2, available: 2, cpuMaps: 3 });
      b.freeDma(m);
      b.freeDma(m); // freed already: nothing happens
      expect(fake.state()).toMatchObject({ localSegments: 1, deviceMaps: 1 });
      // A second borrower of an exclusively borrowed device is refused.
      const e = thrown(() => new SmartIoBackend(0x80000)) as SmartIoError;
      expect(e).toBeInstanceOf(SmartIoError);
      expect([e.reason, e.call]).toEqual(["not-available", "SCIBorrowDevice"]);
      // Shared borrowers may be many.
      const s1 = new SmartIoBackend(0x80100, { exclusive: false });
      const s2 = new SmartIoBackend(0x80100, { exclusive: false });
      s1.close();
      s2.close();
    } finally {
      b.close(); // frees m2 too
      b.close();
    }
  });

  test("what SISCI cannot do is refused with the reason: bus mastering, dma-buf imports; views need a CPU mapping", () => {
    const b = new SmartIoBackend(0x80000);
    try {
      expect(thrown(() => b.setBusMaster(false))).toBeInstanceOf(UnsupportedError);
      const imp = thrown(() => b.importDmaBuf(3, 0)) as Error;
      expect(imp).toBeInstanceOf(UnsupportedError);
      expect(imp.message).toContain("attachGpuMemory");
      const m = b.allocDma(8192);
      b.cacheSync(m, 0, 8192, "to-device");
      b.cacheSync(m, 4096, 100, "from-device");
      expect(fake.calls("SCICacheSync")).toBe(2);
      expect(thrown(() => b.cacheSync(m, 4096, 8192, "both"))).toBeInstanceOf(InvalidArgumentError);
    } finally {
      b.close();
    }
  });

  test("GPU memory (SCI_FLAG_CUDA_BUFFER) becomes a mapping without CPU view; bad pointers are refused", () => {
    const b = new SmartIoBackend(0x80000);
    const host = native().nvm_dma_alloc(16384, 0)!; // the fake's "GPU memory"
    try {
      const g = b.attachGpuMemory(BigInt(host as unknown as number), 16384);
      expect(g.vaddr).toBeNull();
      expect(g.size).toBe(16384);
      expect(g.iova[1]).toBe(1);
      expect(b.mappings()).toEqual([{ id: expect.any(Number), ioaddr: expect.any(Number), size: 16384, cpu: false }]);
      expect(thrown(() => b.cacheSync(g, 0, 4096, "both"))).toBeInstanceOf(InvalidArgumentError);
      b.freeDma(g);
      const odd = thrown(() => b.attachGpuMemory(BigInt((host as unknown as number) + 512), 4096)) as SmartIoError;
      expect([odd.reason, odd.call]).toEqual(["sisci", "SCIAttachPhysicalMemory"]);
      expect(thrown(() => b.attachGpuMemory(1n, 1000))).toBeInstanceOf(InvalidArgumentError);
    } finally {
      b.close();
      native().nvm_dma_free(host, 16384, 0);
    }
  });
});

describe("every SISCI failure is a typed error, and nothing is left borrowed, connected or mapped", () => {
  const OPEN = ["SCIInitialize", "SCIOpen", "SCIBorrowDevice", "SCIQuery", "SCIGetLocalNodeId", "SCIConnectDeviceSegment", "SCIMapRemoteSegment"];
  for (const call of OPEN) {
    test(`opening, ${call} times out -> SmartIoError(timeout, ${call})`, () => {
      fake.inject(call, "SCI_ERR_TIMEOUT");
      const e = thrown(() => new SmartIoBackend(0x80000)) as SmartIoError;
      expect(e).toBeInstanceOf(SmartIoError);
      expect([e.reason, e.call, e.sciText]).toEqual(["timeout", call, "operation timed out"]);
      expect(e.message).toContain("did not answer in time");
      expect(fake.state()).toEqual(NOTHING_LIVE);
    });
  }

  const ALLOC = ["SCIOpen", "SCICreateSegment", "SCIPrepareSegment", "SCISetSegmentAvailable", "SCIMapLocalSegmentForDevice", "SCIMapLocalSegment"];
  for (const call of ALLOC) {
    test(`allocating DMA memory, ${call} fails -> SmartIoError naming it; the segment is undone and the backend still works`, () => {
      const b = new SmartIoBackend(0x80000);
      try {
        const before = fake.state();
        fake.inject(call, "SCI_ERR_NOSPC");
        const e = thrown(() => b.allocDma(4096)) as SmartIoError;
        expect(e).toBeInstanceOf(SmartIoError);
        expect([e.reason, e.call, e.errno]).toEqual(["sisci", call, 28]); // ENOSPC
        expect(e.message).toContain(`SmartIO: 4096 bytes of DMA memory for smartio:80000: ${call} failed: out of resources`);
        expect(fake.state()).toEqual(before);
        expect(b.mappings()).toEqual([]);
        b.freeDma(b.allocDma(4096));
      } finally {
        b.close();
      }
    });
  }

  test("no such device, and a device not lent: the reasons and the next step", () => {
    const none = thrown(() => new SmartIoBackend(0x81000)) as SmartIoError;
    expect([none.reason, none.call]).toEqual(["no-device", "SCIBorrowDevice"]);
    expect(none.message).toContain("smartio_tool list");
    const off = thrown(() => new SmartIoBackend(0x80200)) as SmartIoError;
    expect([off.reason, off.call]).toEqual(["not-available", "SCIBorrowDevice"]);
    expect(off.message).toContain("smartio_tool available <BDF>");
  });

  test("teardown SISCI keeps busy: retried within busyTimeoutMs; past it a typed error, and close() finishes the job", () => {
    const b = new SmartIoBackend(0x80000, { busyTimeoutMs: 50 });
    const m = b.allocDma(4096);
    fake.inject("SCIRemoveSegment", "SCI_ERR_BUSY", 3);
    b.freeDma(m); // busy three times, then gone
    expect(fake.calls("SCIRemoveSegment")).toBe(4);
    const m2 = b.allocDma(4096);
    fake.inject("SCIRemoveSegment", "SCI_ERR_BUSY", 0xffff_ffff);
    const e = thrown(() => b.freeDma(m2)) as SmartIoError;
    expect([e.reason, e.call]).toEqual(["busy", "SCIRemoveSegment"]);
    expect(b.stuckSegments).toBe(1);
    expect(fake.state().localSegments).toBe(1);
    fake.clear(); // the remote user went away
    b.close();
    expect(b.stuckSegments).toBe(0);
  });

  test("Controller.open on a SmartIO device whose controller never becomes ready: NvmeTimeoutError after CAP.TO, and the device is returned", () => {
    // The plain-memory device's BAR0 is writable memory: give it a CAP that Controller accepts.
    const prep = new SmartIoBackend(0x80000);
    native().nvm_write32(prep.bar0, 0x00, 63 | (1 << 24)); // MQES 63, CAP.TO 1 (500 ms)
    native().nvm_write32(prep.bar0, 0x04, 1 << 5); // CSS: the NVM command set
    // The fake keeps a device's BAR while it is borrowed: open through the same borrow.
    const err = thrown(() => Controller.openBackend(prep)) as Error;
    expect(err).toBeInstanceOf(NvmeTimeoutError);
    expect(err.message).toContain("CAP.TO");
  });

  test("force cannot take a device another process borrowed exclusively: ControllerBusyError with the way out", () => {
    const holder = new SmartIoBackend(0x80000);
    try {
      const e = thrown(() => Controller.open("smartio:80000", { force: true, handleSignals: false })) as Error;
      expect(e).toBeInstanceOf(ControllerBusyError);
      expect(e.message).toContain("SISCI allows one exclusive borrower");
    } finally {
      holder.close();
    }
  });
});

describe("SISCI not installed", () => {
  const probe = `
    import { SmartIoBackend } from "./lib/backends/smartio.ts";
    try { new SmartIoBackend(0x80000); console.log("opened"); }
    catch (e) { console.log(JSON.stringify({ name: e.name, reason: e.reason, message: e.message })); }`;
  function run(env: Record<string, string | undefined>, cwd = REPO) {
    const e = { ...process.env, ...env };
    for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
    const r = Bun.spawnSync(["bun", "-e", probe], { cwd, env: e as Record<string, string>, stdout: "pipe", stderr: "pipe" });
    return JSON.parse(r.stdout.toString().trim()) as { name: string; reason: string; message: string };
  }

  test("the shim is not built: SmartIoError(not-installed) says where libnvm and CMake looked and how to install", () => {
    // A copy of lib/ is a package of its own, whatever this machine has: no c/build there yet.
    const t = mkdtempSync(join(tmpdir(), "libnvm-no-sisci-"));
    try {
      cpSync(join(REPO, "lib"), join(t, "lib"), { recursive: true });
      const shim = join(t, "c", "build", "libnvm-sisci.so");
      const fresh = run({ LIBNVM_SISCI: undefined }, t);
      expect([fresh.name, fresh.reason]).toEqual(["SmartIoError", "not-installed"]);
      expect(fresh.message).toContain(`looked for ${shim}; CMake has not configured ${join(t, "c", "build")} (no sisci-status.txt)`);
      // CMake configured there without SISCI: its finding is quoted.
      const cfg = Bun.spawnSync(["cmake", "-S", join(REPO, "c"), "-B", join(t, "c", "build"), "-DDIS=/nonexistent/DIS"], { stdout: "pipe", stderr: "pipe" });
      expect(cfg.exitCode).toBe(0);
      const r = run({ LIBNVM_SISCI: undefined }, t);
      expect(r.reason).toBe("not-installed");
      expect(r.message).toContain(`looked for ${shim}; CMake: not built: sisci_api.h not found in /nonexistent/DIS/include`);
      expect(r.message).toContain("--enable-smartio");
      expect(r.message).toContain("-DDIS=/opt/DIS");
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
    const gone = run({ LIBNVM_SISCI: "/nonexistent/libnvm-sisci.so" });
    expect(gone.reason).toBe("not-installed");
    expect(gone.message).toContain("the shim /nonexistent/libnvm-sisci.so (LIBNVM_SISCI) does not exist");
  });

  test("the shim is built but libsisci is gone: not-installed, naming the library the loader could not find", () => {
    const t = mkdtempSync(join(tmpdir(), "libnvm-sisci-gone-"));
    try {
      // A SISCI install of our own (the fake's), the shim built against it, then the library removed.
      mkdirSync(join(t, "dis", "lib64"), { recursive: true });
      symlinkSync(join(FAKE_DIS, "include"), join(t, "dis", "include"));
      copyFileSync(FAKE_LIBSISCI, join(t, "dis", "lib64", "libsisci.so"));
      for (const cmd of [
        ["cmake", "-S", join(REPO, "c"), "-B", join(t, "c"), `-DDIS=${join(t, "dis")}`, "-DLIBNVM_SISCI=ON"],
        ["cmake", "--build", join(t, "c"), "--target", "nvm-sisci"],
      ]) {
        expect(Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" }).exitCode).toBe(0);
      }
      rmSync(join(t, "dis", "lib64", "libsisci.so"));
      const r = run({ LIBNVM_SISCI: join(t, "c", "libnvm-sisci.so") });
      expect(r.reason).toBe("not-installed");
      expect(r.message).toContain("could not be loaded");
      expect(r.message).toContain("libsisci.so");
      expect(r.message).toContain("libsisci is missing");
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
  });

  test("CMake builds the shim only where SISCI is: without it sisci-status.txt says where it looked; LIBNVM_SISCI=ON fails", () => {
    const t = mkdtempSync(join(tmpdir(), "libnvm-cmake-sisci-"));
    try {
      const auto = Bun.spawnSync(["cmake", "-S", join(REPO, "c"), "-B", join(t, "auto"), "-DDIS=/nonexistent/DIS"], { stdout: "pipe", stderr: "pipe" });
      expect(auto.exitCode).toBe(0);
      expect(readFileSync(join(t, "auto", "sisci-status.txt"), "utf8")).toBe(
        "not built: sisci_api.h not found in /nonexistent/DIS/include; libsisci not found in /nonexistent/DIS/lib64 or /nonexistent/DIS/lib\n",
      );
      const on = Bun.spawnSync(["cmake", "-S", join(REPO, "c"), "-B", join(t, "on"), "-DDIS=/nonexistent/DIS", "-DLIBNVM_SISCI=ON"], { stdout: "pipe", stderr: "pipe" });
      expect(on.exitCode).not.toBe(0);
      expect(on.stderr.toString()).toContain("LIBNVM_SISCI=ON but sisci_api.h not found");
      // The fake's install is found the way a real one is, and the shim compiled against it.
      expect(readFileSync(join(FAKE_SHIM, "..", "sisci-status.txt"), "utf8")).toStartWith(`built: DIS=${FAKE_DIS}`);
    } finally {
      rmSync(t, { recursive: true, force: true });
    }
  });
});

describe("doctor's smartio entry", () => {
  function doctor(ctrl: string, env: Record<string, string>) {
    const r = Bun.spawnSync(["bun", "examples/doctor.ts", `--ctrl=${ctrl}`, "--skip-gpu", "--json"], { cwd: REPO, env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
    const j = JSON.parse(r.stdout.toString());
    return { code: r.exitCode, j, smartio: j.paths.find((p: { kind: string }) => p.kind === "smartio") };
  }

  test("SISCI installed and the device lent: smartio works now, recommended, with the simulated-only warning", () => {
    const d = doctor("smartio:80000", fakeEnv(dir, DEVICES));
    expect(d.code).toBe(0);
    expect(d.smartio.possible).toBe(true);
    expect(d.smartio.warnings.join()).toContain("simulated SISCI only");
    expect(d.j.recommended).toBe("smartio");
    expect(d.j.facts.sisci).toMatchObject({ installed: true, localNode: 4, nvmeDevices: ["80000", "80100", "80200"], device: { fdid: "smartio:80000", adapter: 0, lenderNode: 4 } });
    const local = d.j.paths.find((p: { kind: string }) => p.kind === "vfio");
    expect(local.possible).toBe(false);
    expect(local.problems[0]).toContain("needs its PCI address, on the host that has it");
  });

  test("not installed, or a local address: not possible, and the fixes are the cluster's steps", () => {
    const missing = doctor("smartio:80000", { LIBNVM_SISCI: "/nonexistent/libnvm-sisci.so" });
    expect(missing.code).toBe(1);
    expect(missing.smartio.possible).toBe(false);
    expect(missing.smartio.problems[0]).toContain("Dolphin's SISCI is not installed here");
    const fixes = missing.smartio.fixes.join("\n");
    expect(fixes).toContain("--install-node --enable-smartio");
    expect(fixes).toContain("-DDIS=/opt/DIS");
    expect(fixes).toContain("smartio_tool add <BDF>; smartio_tool available <BDF>");
    expect(fixes).toContain("smartio_tool list");
    expect(fixes).toContain("--ctrl=smartio:<fdid>");
    const unknown = doctor("smartio:81000", fakeEnv(dir, DEVICES));
    expect(unknown.smartio.possible).toBe(false);
    expect(unknown.smartio.problems[0]).toContain("SCIQuery failed: no such fabric device id");
  });
});
