/**
 * The only dlopen of libnvm's SmartIO shim (libnvm-sisci.so, c/include/nvm_sisci.h one to one), made
 * the first time SmartIO is used, so nobody else loads it. libsisci itself is never loaded from
 * here: its exported names are macro-renamed by Dolphin's headers, so the shim, compiled against
 * them, is the only way in (see c/src/sisci.c).
 *
 * The shim is found at the path given to setSisciLibraryPath(), $LIBNVM_SISCI, or c/build/ of this
 * package; CMake builds it there only where Dolphin's eXpressWare is installed (c/CMakeLists.txt),
 * and says what it found in c/build/sisci-status.txt. Missing, or not loadable (libsisci gone), it
 * is a SmartIoError with reason "not-installed" that says where it looked and how to install.
 * Failures of shim calls become SmartIoError here (sisciError) with SISCI's own text.
 */
import { CString, dlopen, FFIType, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError, SmartIoError, type SmartIoErrorReason } from "./errors.ts";
import { checkPtr, native, traced } from "./native.ts";

const ABI_VERSION = 1;
const SHIM_FILE = "libnvm-sisci.so";
const PKG_ROOT = join(import.meta.dir, "..");
/** Where CMake builds the shim, and where it writes what it found (c/CMakeLists.txt). */
export const SISCI_BUILD_DIR = join(PKG_ROOT, "c", "build");

const { ptr: P, u32, i32, void: VOID } = FFIType;

const symbols = {
  nvm_sisci_abi_version: { args: [], returns: u32 },
  nvm_sisci_last_error: { args: [P, P, u32, P, u32], returns: i32 },
  nvm_sisci_init: { args: [], returns: i32 },
  nvm_sisci_fini: { args: [], returns: i32 },
  // devices
  nvm_sisci_device_borrow: { args: [u32, u32, P], returns: P },
  nvm_sisci_device_return: { args: [P, u32], returns: i32 },
  nvm_sisci_device_query: { args: [u32, P], returns: i32 },
  nvm_sisci_device_list: { args: [u32, P, u32], returns: i32 },
  nvm_sisci_device_segment_create: { args: [P, u32, u32, u32, u32], returns: i32 },
  // device memory (remote segments)
  nvm_sisci_connect_device_segment: { args: [P, u32, u32, P], returns: P },
  nvm_sisci_remote_map_cpu: { args: [P, u32, u32, u32], returns: P },
  nvm_sisci_remote_unmap_cpu: { args: [P, u32], returns: i32 },
  nvm_sisci_remote_map_device: { args: [P, P], returns: i32 },
  nvm_sisci_remote_unmap_device: { args: [P, u32], returns: i32 },
  nvm_sisci_disconnect: { args: [P, u32], returns: i32 },
  // host memory (local segments)
  nvm_sisci_segment_create: { args: [P, u32, u32, u32, P], returns: P },
  nvm_sisci_segment_create_gpu: { args: [P, u32, u32, u32, u32, u32, P], returns: P },
  nvm_sisci_segment_prepare: { args: [P], returns: i32 },
  nvm_sisci_segment_set_available: { args: [P], returns: i32 },
  nvm_sisci_segment_map_device: { args: [P, P], returns: i32 },
  nvm_sisci_segment_map_cpu: { args: [P, u32], returns: P },
  nvm_sisci_segment_unmap_cpu: { args: [P, u32], returns: i32 },
  nvm_sisci_segment_unmap_device: { args: [P, u32], returns: i32 },
  nvm_sisci_segment_set_unavailable: { args: [P, u32], returns: i32 },
  nvm_sisci_segment_remove: { args: [P, u32], returns: i32 },
  // data interrupts
  nvm_sisci_intr_create: { args: [u32, u32, u32, P], returns: P },
  nvm_sisci_intr_wait: { args: [P, P, u32, u32], returns: i32 },
  nvm_sisci_intr_remove: { args: [P, u32], returns: i32 },
  nvm_sisci_intr_connect: { args: [u32, u32, u32, u32], returns: P },
  nvm_sisci_intr_trigger: { args: [P, P, u32], returns: i32 },
  nvm_sisci_intr_disconnect: { args: [P], returns: i32 },
  nvm_sisci_local_node: { args: [u32, P], returns: i32 },
  // coherence
  nvm_sisci_cache_sync: { args: [P, u32, u32], returns: i32 },
  nvm_sisci_flush: { args: [], returns: VOID },
} as const;

// c/include/nvm_sisci.h
export const BORROW_EXCLUSIVE = 1;
export const DEVICE_DWORDS = 4;
export const MEMTYPE_BAR = 1;
export const MEMTYPE_PRIVATE = 2;
export const MEMTYPE_SHARED = 3;
export const HINT_DEVICE_READ = 1;
export const HINT_DEVICE_WRITE = 2;
export const HINT_HOST_READ = 4;
export const HINT_HOST_WRITE = 8;
export const HINT_MULTIHOST_READ = 16;
export const HINT_MULTIHOST_WRITE = 32;
export const MAP_READONLY = 1;
export const MAP_IOSPACE = 2;
export const SEGMENT_AUTO_ID = 1;
export const INTR_FIXED = 1;
export const SYNC_FLUSH = 1;
export const SYNC_INVALIDATE = 2;

/** c/include/nvm_sisci.h as TypeScript sees it. Handles are opaque pointers the shim owns. */
export interface SisciShim {
  nvm_sisci_abi_version(): number;
  nvm_sisci_last_error(out: Pointer, call: Pointer, callLen: number, text: Pointer, textLen: number): number;
  nvm_sisci_init(): number;
  nvm_sisci_fini(): number;
  nvm_sisci_device_borrow(fdid: number, flags: number, info: Pointer): Pointer | null;
  nvm_sisci_device_return(dev: Pointer, timeoutMs: number): number;
  nvm_sisci_device_query(fdid: number, info: Pointer): number;
  nvm_sisci_device_list(pciClass: number, fdids: Pointer, max: number): number;
  nvm_sisci_device_segment_create(dev: Pointer, id: number, size: number, memtype: number, hints: number): number;
  nvm_sisci_connect_device_segment(dev: Pointer, id: number, memtype: number, sizeOut: Pointer): Pointer | null;
  nvm_sisci_remote_map_cpu(rseg: Pointer, offset: number, size: number, flags: number): Pointer | null;
  nvm_sisci_remote_unmap_cpu(rseg: Pointer, timeoutMs: number): number;
  nvm_sisci_remote_map_device(rseg: Pointer, ioaddr: Pointer): number;
  nvm_sisci_remote_unmap_device(rseg: Pointer, timeoutMs: number): number;
  nvm_sisci_disconnect(rseg: Pointer, timeoutMs: number): number;
  nvm_sisci_segment_create(dev: Pointer, id: number, size: number, flags: number, idOut: Pointer): Pointer | null;
  nvm_sisci_segment_create_gpu(dev: Pointer, id: number, dptrLo: number, dptrHi: number, size: number, flags: number, idOut: Pointer): Pointer | null;
  nvm_sisci_segment_prepare(seg: Pointer): number;
  nvm_sisci_segment_set_available(seg: Pointer): number;
  nvm_sisci_segment_map_device(seg: Pointer, ioaddr: Pointer): number;
  nvm_sisci_segment_map_cpu(seg: Pointer, flags: number): Pointer | null;
  nvm_sisci_segment_unmap_cpu(seg: Pointer, timeoutMs: number): number;
  nvm_sisci_segment_unmap_device(seg: Pointer, timeoutMs: number): number;
  nvm_sisci_segment_set_unavailable(seg: Pointer, timeoutMs: number): number;
  nvm_sisci_segment_remove(seg: Pointer, timeoutMs: number): number;
  nvm_sisci_intr_create(adapter: number, number: number, flags: number, out: Pointer): Pointer | null;
  nvm_sisci_intr_wait(intr: Pointer, buf: Pointer, len: number, timeoutMs: number): number;
  nvm_sisci_intr_remove(intr: Pointer, timeoutMs: number): number;
  nvm_sisci_intr_connect(adapter: number, node: number, number: number, timeoutMs: number): Pointer | null;
  nvm_sisci_intr_trigger(rintr: Pointer, data: Pointer, len: number): number;
  nvm_sisci_intr_disconnect(rintr: Pointer): number;
  nvm_sisci_local_node(adapter: number, node: Pointer): number;
  nvm_sisci_cache_sync(addr: Pointer, len: number, flags: number): number;
  nvm_sisci_flush(): void;
}

let pathOverride: string | undefined;
let loaded: { readonly shim: SisciShim; readonly path: string } | undefined;

/** Load this shim instead of $LIBNVM_SISCI or c/build/libnvm-sisci.so (tests, custom builds). Call before first SmartIO use. */
export function setSisciLibraryPath(path: string): void {
  if (loaded && loaded.path !== path) {
    throw new InvalidArgumentError(`setSisciLibraryPath(${path}): the SmartIO shim is already loaded from ${loaded.path}; call it before the first SmartIO use`);
  }
  pathOverride = path;
}

/** The shim's path once loaded, else undefined. */
export function sisciLibraryPath(): string | undefined {
  return loaded?.path;
}

/** What CMake found when it configured c/build (sisci-status.txt), or undefined when it never did. */
export function sisciBuildStatus(): string | undefined {
  try {
    return readFileSync(join(SISCI_BUILD_DIR, "sisci-status.txt"), "utf8").trim();
  } catch {
    return undefined;
  }
}

const INSTALL =
  "on a cluster node, install Dolphin eXpressWare with SmartIO (its installer: --install-node --enable-smartio; headers in /opt/DIS/include, libsisci in /opt/DIS/lib64), " +
  `then rebuild libnvm's C library so it finds them: cmake -S ${join(PKG_ROOT, "c")} -B ${SISCI_BUILD_DIR} -DDIS=/opt/DIS && cmake --build ${SISCI_BUILD_DIR}`;

/** Load the shim, or say why it cannot be loaded (where it was looked for; what CMake found). */
function load(): { readonly shim: SisciShim; readonly path: string } | { readonly why: string } {
  if (loaded) return loaded;
  const explicit = pathOverride ?? process.env.LIBNVM_SISCI;
  let path: string;
  if (explicit) {
    if (!existsSync(explicit)) return { why: `the shim ${explicit} (${pathOverride ? "setSisciLibraryPath" : "LIBNVM_SISCI"}) does not exist; unset it to use ${join(SISCI_BUILD_DIR, SHIM_FILE)}` };
    path = explicit;
  } else {
    path = join(SISCI_BUILD_DIR, SHIM_FILE);
    if (!existsSync(path)) {
      const status = sisciBuildStatus();
      return { why: `libnvm's SmartIO shim was not built (looked for ${path}; ${status ? `CMake: ${status}` : `CMake has not configured ${SISCI_BUILD_DIR} (no sisci-status.txt)`})` };
    }
  }
  let shim: SisciShim;
  try {
    shim = dlopen(path, symbols).symbols as unknown as SisciShim;
  } catch (e) {
    // The shim is there but its libsisci is not (eXpressWare removed, or not on the loader's path).
    const status = sisciBuildStatus();
    return { why: `${path} could not be loaded (${(e as Error).message}): libsisci is missing or not where the shim was built against it${status ? ` (${status})` : ""}` };
  }
  const abi = shim.nvm_sisci_abi_version();
  if (abi !== ABI_VERSION) return { why: `${path} has ABI ${abi}, this libnvm needs ${ABI_VERSION}: rebuild it (cmake --build ${SISCI_BUILD_DIR})` };
  loaded = { shim: process.env.LIBNVM_TRACE_FFI ? traced(shim) : shim, path };
  return loaded;
}

/** The shim, loaded on first use; SmartIoError("not-installed") says where it looked and what to install. */
export function sisciShim(): SisciShim {
  const l = load();
  if ("why" in l) {
    throw new SmartIoError(`SmartIO needs Dolphin's SISCI library, which is not usable here: ${l.why}. To use SmartIO: ${INSTALL}`, { reason: "not-installed", call: "dlopen" });
  }
  return l.shim;
}

/** Whether the shim loads here, without throwing (for doctor): its path, or why not. */
export function sisciAvailable(): { readonly installed: boolean; readonly path: string | undefined; readonly detail: string } {
  const l = load();
  if ("why" in l) return { installed: false, path: undefined, detail: l.why };
  return { installed: true, path: l.path, detail: `${l.path}${sisciBuildStatus() && !process.env.LIBNVM_SISCI && !pathOverride ? ` (${sisciBuildStatus()})` : ""}` };
}

/** C memory for out-parameters and error texts (never a JS typed array: bun#32054). */
export interface SisciScratch {
  readonly ptr: Pointer;
  readonly u32: Uint32Array;
  readonly bytes: Uint8Array;
}
const SCRATCH_BYTES = 1024;
const CALL_AT = 512;
const CALL_LEN = 64;
const TEXT_AT = 640;
const TEXT_LEN = 256;
let scratchArea: SisciScratch | undefined;

/** A C-owned area of 1 KiB; the first 512 bytes are for out-parameters, the rest error texts. */
export function sisciScratch(): SisciScratch {
  if (!scratchArea) {
    const p = checkPtr(native().nvm_host_alloc(SCRATCH_BYTES), "nvm_host_alloc");
    const buf = toArrayBuffer(p, 0, SCRATCH_BYTES);
    scratchArea = { ptr: p, u32: new Uint32Array(buf), bytes: new Uint8Array(buf) };
  }
  return scratchArea;
}

/** The shim's record of this thread's last failure. */
export interface SisciFailure {
  readonly errno: number;
  readonly sciError: number;
  readonly call: string;
  readonly text: string;
}

export function lastSisciFailure(): SisciFailure {
  const s = sisciScratch();
  const base = s.ptr as unknown as number;
  const errno = sisciShim().nvm_sisci_last_error(s.ptr, (base + CALL_AT) as Pointer, CALL_LEN, (base + TEXT_AT) as Pointer, TEXT_LEN);
  return {
    errno,
    sciError: s.u32[1]!,
    call: new CString((base + CALL_AT) as Pointer).toString(),
    text: new CString((base + TEXT_AT) as Pointer).toString(),
  };
}

const ENODEV = 19;
const EBUSY = 16;
const ETIMEDOUT = 110;

/**
 * The typed error for the shim call that just failed: `what` says what was being done ("borrow
 * SmartIO device 0x80000"), `fix` is the next step for the reason, if the caller knows a better one
 * than the default.
 */
export function sisciError(what: string, fix: Partial<Record<SmartIoErrorReason, string>> = {}): SmartIoError {
  const f = lastSisciFailure();
  let reason: SmartIoErrorReason = "sisci";
  if (f.errno === ENODEV) reason = "no-device";
  else if (f.errno === ETIMEDOUT) reason = "timeout";
  else if (f.errno === EBUSY) reason = f.call === "SCIBorrowDevice" || f.call === "SCICreateDataInterrupt" ? "not-available" : "busy";
  const defaults: Record<SmartIoErrorReason, string> = {
    "not-installed": INSTALL,
    "no-device": "list the devices lent in the cluster with `smartio_tool list` (fabric device ids in hex)",
    "not-available":
      "the device is not lent (on the lending host: smartio_tool add <BDF>; smartio_tool available <BDF>), or another host or process borrowed it exclusively (close it there); `smartio_tool list` shows its state",
    timeout: "the lending node or the NTB link did not answer in time: check that the lender is up and its adapter linked, then try again",
    busy: "a remote node still had it connected when the deadline passed: close the remote users, or give teardown more time",
    sisci: "see Dolphin's documentation of the call, and LIBNVM_SISCI_TRACE=<file> for the calls that led to it",
  };
  const sci = f.sciError ? ` (sci 0x${f.sciError.toString(16)})` : "";
  return new SmartIoError(`${what}: ${f.call || "SISCI"} failed: ${f.text || "unknown error"}${sci}; ${fix[reason] ?? defaults[reason]}`, {
    reason,
    call: f.call,
    sciError: f.sciError || undefined,
    sciText: f.text,
    errno: f.errno,
  });
}
