/**
 * The fake SmartIO (fake-sisci.c, TEST-ONLY) and libnvm's real shim built against it, on first use,
 * into c/build/fake-sisci/ (inside the git-ignored C build directory, which is never packed and
 * which tsc does not read; rebuilt when a source is newer):
 *
 *   dis/include -> test/smartio/dis/include   the fake's SISCI headers (our own declarations)
 *   dis/lib64/libsisci.so                     the fake library (links c/build/libnvm-native.so for VFIO)
 *   c/libnvm-sisci.so                         c/src/sisci.c, configured by c/CMakeLists.txt with
 *                                             -DDIS=<that dis> -DLIBNVM_SISCI=ON: the shim's real build
 *
 * The shim finds the fake through its RUNPATH; the test's controls (fake_sisci_*) are bound from the
 * same file, so both see one set of C globals. In the guest (read-only root) nothing can be built:
 * test/vm/setup.sh builds it on the host first.
 */
import { dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, symlinkSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { native } from "../../lib/native.ts";
import { setSisciLibraryPath } from "../../lib/sisci.ts";

const HERE = import.meta.dir;
const REPO = join(HERE, "..", "..");
const BUILD = join(REPO, "c", "build", "fake-sisci");
export const FAKE_DIS = join(BUILD, "dis");
export const FAKE_LIBSISCI = join(FAKE_DIS, "lib64", "libsisci.so");
export const FAKE_SHIM = join(BUILD, "c", "libnvm-sisci.so");
const SOURCE = join(HERE, "fake-sisci.c");
const HEADERS = ["sisci_api.h", "sisci_types.h", "sisci_error.h"].map((h) => join(HERE, "dis", "include", h));
const SHIM_SOURCES = [join(REPO, "c", "src", "sisci.c"), join(REPO, "c", "include", "nvm_sisci.h"), join(REPO, "c", "CMakeLists.txt")];
const NATIVE = join(REPO, "c", "build", "libnvm-native.so");

const mtime = (p: string) => statSync(p).mtimeMs;
const stale = (out: string, inputs: string[]) => !existsSync(out) || inputs.some((i) => mtime(i) > mtime(out));

function run(cmd: string[], what: string): void {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe", cwd: REPO });
  if (r.exitCode !== 0) throw new Error(`${what} failed (${cmd.join(" ")}):\n${r.stdout.toString()}${r.stderr.toString()}`);
}

/** Build the fake libsisci and the shim against it when stale; returns the shim's path. */
export function buildFakeSmartIo(): string {
  native(); // the fake links c/build/libnvm-native.so: built first if missing
  const include = join(FAKE_DIS, "include");
  if (!existsSync(include)) {
    mkdirSync(FAKE_DIS, { recursive: true });
    symlinkSync(join(HERE, "dis", "include"), include);
  }
  if (stale(FAKE_LIBSISCI, [SOURCE, ...HEADERS, NATIVE])) {
    mkdirSync(join(FAKE_DIS, "lib64"), { recursive: true });
    // Built under a temporary name and renamed, so a concurrent reader never loads half a file.
    const tmp = `${FAKE_LIBSISCI}.${process.pid}.tmp`;
    run(
      [
        "cc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
        "-Wl,-soname,libsisci.so", `-I${join(HERE, "dis", "include")}`, `-I${join(REPO, "c", "include")}`,
        "-o", tmp, SOURCE, `-L${join(REPO, "c", "build")}`, `-Wl,-rpath,${join(REPO, "c", "build")}`, "-lnvm-native", "-lpthread",
      ],
      "building the fake libsisci",
    );
    renameSync(tmp, FAKE_LIBSISCI);
  }
  if (stale(FAKE_SHIM, [...SHIM_SOURCES, ...HEADERS, FAKE_LIBSISCI])) {
    const dir = join(BUILD, "c");
    // c/CMakeLists.txt as a user's build runs it, with SISCI "installed" at the fake's prefix;
    // -Werror: the shim must compile cleanly against the documented API.
    run(["cmake", "-S", join(REPO, "c"), "-B", dir, `-DDIS=${FAKE_DIS}`, "-DLIBNVM_SISCI=ON", "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_C_FLAGS=-Werror"], "configuring the shim against the fake SISCI");
    run(["cmake", "--build", dir, "--target", "nvm-sisci"], "building the shim against the fake SISCI");
    if (!existsSync(FAKE_SHIM)) throw new Error(`cmake built no ${FAKE_SHIM}`);
    // make leaves the old file's time when nothing needed rebuilding: mark it current for stale().
    const now = new Date();
    utimesSync(FAKE_SHIM, now, now);
  }
  return FAKE_SHIM;
}

const { ptr: P, u32, i32, void: VOID } = FFIType;

const cstr = (s: string) => Buffer.from(s + "\0");

let controls:
  | {
      fake_sisci_configure(dir: Buffer, devices: Buffer, node: number): number;
      fake_sisci_inject(call: Buffer, error: Buffer, count: number): number;
      fake_sisci_clear(): void;
      fake_sisci_calls(call: Buffer): number;
      fake_sisci_error_value(name: Buffer): number;
      fake_sisci_state(out: Pointer): number;
      fake_sisci_set_available(fdid: number, available: number): number;
    }
  | undefined;
let out: { ptr: Pointer; u32: Uint32Array } | undefined;

function c() {
  if (!controls) {
    buildFakeSmartIo();
    controls = dlopen(FAKE_LIBSISCI, {
      fake_sisci_configure: { args: [P, P, u32], returns: i32 },
      fake_sisci_inject: { args: [P, P, u32], returns: i32 },
      fake_sisci_clear: { args: [], returns: VOID },
      fake_sisci_calls: { args: [P], returns: u32 },
      fake_sisci_error_value: { args: [P], returns: i32 },
      fake_sisci_state: { args: [P], returns: u32 },
      fake_sisci_set_available: { args: [u32, u32], returns: i32 },
    }).symbols as unknown as typeof controls;
    const p = native().nvm_host_alloc(256);
    if (p === null) throw new Error("nvm_host_alloc failed");
    out = { ptr: p, u32: new Uint32Array(toArrayBuffer(p, 0, 256)) };
  }
  return controls!;
}

/** What is alive in this process, as the fake counts it (fake-sisci.c, enum ST_*). */
export interface FakeState {
  init: number;
  descriptors: number;
  borrows: number;
  connected: number;
  localSegments: number;
  cpuMaps: number;
  deviceMaps: number;
  available: number;
  interrupts: number;
  remoteInterrupts: number;
  backings: number;
  iommuMaps: number;
}
const STATE_KEYS: (keyof FakeState)[] = [
  "init", "descriptors", "borrows", "connected", "localSegments", "cpuMaps", "deviceMaps", "available",
  "interrupts", "remoteInterrupts", "backings", "iommuMaps",
];
/** Nothing borrowed, connected, mapped or open. */
export const NOTHING_LIVE: FakeState = Object.fromEntries(STATE_KEYS.map((k) => [k, 0])) as unknown as FakeState;

/** The fake's controls. */
export const fake = {
  /** Devices as FAKE_SISCI_DEVICES ("80000=0000:00:04.0,80100=none,80200=none+unavailable"). */
  configure(dir: string, devices: string, node = 4): void {
    const rc = c().fake_sisci_configure(cstr(dir), cstr(devices), node);
    if (rc !== 0) throw new Error(`fake_sisci_configure failed: ${rc}`);
  },
  /** The next `count` calls of `call` fail with `error` ("SCI_ERR_TIMEOUT"); 0xffffffff: all of them. */
  inject(call: string, error: string, count = 1): void {
    const rc = c().fake_sisci_inject(cstr(call), cstr(error), count);
    if (rc !== 0) throw new Error(`fake_sisci_inject(${call}, ${error}) failed: ${rc}`);
  },
  clear: () => c().fake_sisci_clear(),
  calls: (call: string) => c().fake_sisci_calls(cstr(call)),
  errorValue(name: string): number {
    const v = c().fake_sisci_error_value(cstr(name));
    if (v < 0) throw new Error(`the fake has no error ${name}`);
    return v;
  },
  state(): FakeState {
    c().fake_sisci_state(out!.ptr);
    return Object.fromEntries(STATE_KEYS.map((k, i) => [k, out!.u32[i]!])) as unknown as FakeState;
  },
  setAvailable(fdid: number, available: boolean): void {
    if (c().fake_sisci_set_available(fdid, available ? 1 : 0) !== 0) throw new Error(`no fake device 0x${fdid.toString(16)}`);
  },
};

/** Point lib/sisci at the shim built against the fake (once per process). */
export function useFakeSmartIo(): string {
  const shim = buildFakeSmartIo();
  setSisciLibraryPath(shim);
  c();
  return shim;
}

/** A fresh fabric directory for one test file. */
export function fabricDir(): string {
  return mkdtempSync(join(process.env.TMPDIR || tmpdir(), "fake-sisci-"));
}

export function removeFabric(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** The environment a child process needs to use the fake (its own node id: another host). */
export function fakeEnv(dir: string, devices: string, node = 4, inject?: string): Record<string, string> {
  return {
    LIBNVM_SISCI: FAKE_SHIM,
    FAKE_SISCI_FABRIC: dir,
    FAKE_SISCI_DEVICES: devices,
    FAKE_SISCI_NODE: String(node),
    ...(inject ? { FAKE_SISCI_INJECT: inject } : {}),
  };
}
