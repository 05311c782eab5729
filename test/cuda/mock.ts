/**
 * The test-only mock libcuda (mock-libcuda.c): built with cc on first use into test/cuda/build/
 * (git-ignored, rebuilt when the source is newer), and its mock_* controls bound for tests.
 * lib/cuda loads the same file as its driver (useMockDriver()), so both see one set of C globals.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { cudaLibraryPath, setCudaLibraryPath } from "../../lib/cuda/driver.ts";
import { native } from "../../lib/native.ts";

const HERE = import.meta.dir;
const SOURCE = join(HERE, "mock-libcuda.c");
/** The queue code the mock's "kernels" run: a change there rebuilds the mock. */
const INCLUDE = join(HERE, "..", "..", "c", "include");
const DEPENDS = [SOURCE, join(INCLUDE, "nvm_queue_core.h"), join(INCLUDE, "nvm_queue_job.h")];
const BUILD = join(HERE, "build");

/** Build `out` from the mock's source with extra compiler flags, unless it is up to date. */
function build(out: string, defines: string[]): string {
  if (existsSync(out) && DEPENDS.every((d) => statSync(out).mtimeMs >= statSync(d).mtimeMs)) return out;
  mkdirSync(join(out, ".."), { recursive: true });
  // Built under a temporary name and renamed, so a concurrent reader never loads half a file.
  const tmp = `${out}.${process.pid}.tmp`;
  const cmd = ["cc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden", `-I${INCLUDE}`, ...defines, "-o", tmp, SOURCE, "-lpthread"];
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`building the mock libcuda failed (${cmd.join(" ")}):\n${r.stderr.toString()}`);
  renameSync(tmp, out);
  return out;
}

/** The mock, named as the driver's library is. */
export const MOCK_LIBCUDA = build(join(BUILD, "libcuda.so.1"), []);
/** A driver too old to export cuMemGetHandleForAddressRange (before CUDA 11.7). */
export const MOCK_LIBCUDA_OLD = build(join(BUILD, "old", "libcuda.so.1"), ["-DMOCK_WITHOUT_DMA_BUF"]);

const { ptr: P, i32, u32, u64, void: VOID } = FFIType;

const controls = dlopen(MOCK_LIBCUDA, {
  mock_reset: { args: [], returns: VOID },
  mock_set_device_count: { args: [i32], returns: i32 },
  mock_set_attribute: { args: [i32, i32, i32], returns: i32 },
  mock_set_total_mem: { args: [i32, u32], returns: i32 },
  mock_set_driver_version: { args: [i32], returns: VOID },
  mock_set_alloc_offset: { args: [u32], returns: i32 },
  mock_set_udmabuf_path: { args: [P], returns: VOID },
  mock_fail_next: { args: [P, i32], returns: i32 },
  mock_calls: { args: [P], returns: u32 },
  mock_memfd: { args: [u64], returns: i32 },
  mock_allocation_device: { args: [u64], returns: i32 },
  mock_live_allocations: { args: [], returns: u32 },
  mock_live_registrations: { args: [], returns: u32 },
  mock_registration: { args: [P, P], returns: i32 },
  mock_current_device: { args: [], returns: i32 },
  mock_context_refs: { args: [i32], returns: i32 },
  mock_last_export: { args: [P], returns: VOID },
  mock_set_iomemory: { args: [i32], returns: VOID },
  mock_last_launch: { args: [P], returns: u32 },
  mock_live_modules: { args: [], returns: u32 },
}).symbols;

function cstr(s: string): Buffer {
  return Buffer.from(s + "\0");
}

/** C memory for the mock's u64 out-arrays (never a JS typed array: bun#32054). */
const out = (() => {
  const p = native().nvm_host_alloc(64);
  if (p === null) throw new Error("nvm_host_alloc failed");
  return { ptr: p, u64: new BigUint64Array(toArrayBuffer(p, 0, 64)) };
})();

/** Point lib/cuda at the mock (once per process; every CUDA test file shares the loaded driver). */
export function useMockDriver(): void {
  const loaded = cudaLibraryPath();
  if (loaded === undefined) setCudaLibraryPath(MOCK_LIBCUDA);
  else if (loaded !== MOCK_LIBCUDA) throw new Error(`lib/cuda already loaded ${loaded}, not the mock`);
}

/** The mock's test-only controls. */
export const mock = {
  reset: () => controls.mock_reset(),
  setDeviceCount: (n: number) => expectOk(controls.mock_set_device_count(n)),
  setAttribute: (device: number, attribute: number, value: number) => expectOk(controls.mock_set_attribute(device, attribute, value)),
  setTotalMemMiB: (device: number, mib: number) => expectOk(controls.mock_set_total_mem(device, mib)),
  setDriverVersion: (v: number) => controls.mock_set_driver_version(v),
  /** Later allocations start this many bytes into their slot (a multiple of 256): not page aligned. */
  setAllocOffset: (bytes: number) => expectOk(controls.mock_set_alloc_offset(bytes)),
  setUdmabufPath: (path: string) => controls.mock_set_udmabuf_path(cstr(path)),
  /** The next call of `entry` returns `result` instead of running. */
  failNext: (entry: string, result: number) => expectOk(controls.mock_fail_next(cstr(entry), result)),
  /** Calls of `entry` since the mock was loaded. */
  calls: (entry: string) => controls.mock_calls(cstr(entry)),
  memfd: (dptr: bigint) => controls.mock_memfd(dptr),
  allocationDevice: (dptr: bigint) => controls.mock_allocation_device(dptr),
  liveAllocations: () => controls.mock_live_allocations(),
  liveRegistrations: () => controls.mock_live_registrations(),
  /** The registration starting at host address `p`, or undefined. */
  registration(p: number): { size: number; flags: number; devicePointer: bigint } | undefined {
    if (controls.mock_registration(p as Pointer, out.ptr) !== 0) return undefined;
    return { size: Number(out.u64[0]), flags: Number(out.u64[1]), devicePointer: out.u64[2]! };
  },
  currentDevice: () => controls.mock_current_device(),
  contextRefs: (device: number) => controls.mock_context_refs(device),
  /** IOMEMORY registrations (doorbells): refused with NOT_PERMITTED (the default) or accepted. */
  setIoMemory: (allow: boolean) => controls.mock_set_iomemory(allow ? 1 : 0),
  /** Launches so far and the last one's grid, block, shared bytes, parameter and kind (1 shared, 2 coop). */
  lastLaunch(): { launches: number; grid: number; block: number; shared: number; param: bigint; kind: number } {
    const n = controls.mock_last_launch(out.ptr);
    return { launches: n, grid: Number(out.u64[0]), block: Number(out.u64[1]), shared: Number(out.u64[2]), param: out.u64[3]!, kind: Number(out.u64[4]) };
  },
  liveModules: () => controls.mock_live_modules(),
  lastExport(): { handleType: number; flags: bigint; devicePointer: bigint; size: number } {
    controls.mock_last_export(out.ptr);
    return { handleType: Number(out.u64[0]), flags: out.u64[1]!, devicePointer: out.u64[2]!, size: Number(out.u64[3]) };
  },
};

function expectOk(rc: number): void {
  if (rc !== 0) throw new Error(`mock control failed: ${rc}`);
}

/** Where the mock puts device memory and how it maps registered host pages (mock-libcuda.c). */
export const MOCK_DPTR_BASE = 0xc0de_0000_0000_0000n;
export const MOCK_HOSTMAP_BIAS = 0x5000_0000_0000_0000n;
export const MOCK_DEVICE_HANDLE_BASE = 0x100;
