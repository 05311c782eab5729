/**
 * The GPU kernels of c/cuda/nvm_queue.cu: found, loaded into a device's primary context
 * (cuModuleLoadData, cuModuleGetFunction) and launched (cuLaunchKernel) on a stream of their own,
 * whose completion is polled (cuStreamQuery): JavaScript never blocks on a kernel.
 *
 * The fatbin (SASS for sm_75 and later, plus PTX) is found at the path given to
 * setKernelImagePath(), $LIBNVM_KERNELS, c/build/nvm_queue.fatbin (built by CMake when nvcc is
 * there) or prebuilds/linux-x64/nvm_queue.fatbin (shipped in the npm package).
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CudaError, InvalidArgumentError } from "../errors.ts";
import { check, CU_STREAM_NON_BLOCKING, CUDA_ERROR_NOT_READY, CUDA_SUCCESS, cudaError, outPointer, scratch } from "../cuda/driver.ts";
import { contextGeneration, current } from "../cuda/device.ts";
import { checkPtr, native } from "../native.ts";

export const KERNEL_FILE = "nvm_queue.fatbin";
const PKG_ROOT = join(import.meta.dir, "..", "..");

/** Kernel names in the fatbin (extern "C"). */
export const KERNEL_SHARED = "nvmq_shared_kernel";
export const KERNEL_COOP = "nvmq_coop_kernel";

let imageOverride: string | undefined;

/** Load the kernels from this file instead (tests, custom builds); undefined: the search again. Unloads what was loaded. */
export function setKernelImagePath(path: string | undefined): void {
  imageOverride = path;
  unloadKernels();
}

/** Where the kernel image is looked for, in order. */
export function kernelImageCandidates(): string[] {
  const explicit = imageOverride ?? process.env.LIBNVM_KERNELS;
  if (explicit) return [explicit];
  return [join(PKG_ROOT, "c", "build", KERNEL_FILE), join(PKG_ROOT, "prebuilds", `linux-${process.arch}`, KERNEL_FILE)];
}

function findImage(): { path: string; bytes: Uint8Array } {
  const candidates = kernelImageCandidates();
  for (const c of candidates) {
    if (existsSync(c)) return { path: c, bytes: new Uint8Array(readFileSync(c)) };
  }
  throw new CudaError(
    `the GPU kernels of libnvm were not built (no ${candidates.join(", no ")}): build them with nvcc (CUDA 12.8 or later) ` +
      `through cmake -S c -B c/build -DLIBNVM_CUDA=ON && cmake --build c/build, or set LIBNVM_KERNELS to a nvm_queue.fatbin; ` +
      `or run the same queues on host threads with device: "cpu"`,
    { reason: "unsupported", call: "cuModuleLoadData" },
  );
}

interface Loaded {
  readonly module: Pointer;
  /** contextGeneration() when loaded: a context released since took the module with it. */
  readonly generation: number;
  readonly path: string;
  readonly functions: Map<string, Pointer>;
}

/** Per device ordinal, in this thread (a module belongs to the context it was loaded in). */
const modules = new Map<number, Loaded>();

function load(device: number): Loaded {
  let m = modules.get(device);
  if (m && m.generation === contextGeneration()) return m;
  const d = current(device);
  const img = findImage();
  // The driver reads the image during the call only; a NUL after it ends a PTX text image.
  const bytes = new Uint8Array(img.bytes.length + 1);
  bytes.set(img.bytes);
  const s = scratch();
  check(d.cuModuleLoadData(s.ptr, bytes), "cuModuleLoadData", `${img.path} (${img.bytes.length} bytes) on device ${device}`);
  const mod = outPointer();
  if (mod === null) throw new CudaError(`cuModuleLoadData returned a NULL module for ${img.path}`, { reason: "driver", call: "cuModuleLoadData" });
  m = { module: mod, generation: contextGeneration(), path: img.path, functions: new Map() };
  modules.set(device, m);
  return m;
}

/** The kernel `name` of the fatbin, loaded into device `device`'s primary context on first use. */
export function kernel(device: number, name: string): Pointer {
  const m = load(device);
  let f = m.functions.get(name);
  if (f) return f;
  const d = current(device);
  const s = scratch();
  check(d.cuModuleGetFunction(s.ptr, m.module, Buffer.from(name + "\0")), "cuModuleGetFunction", `${name} in ${m.path}`);
  const p = outPointer();
  if (p === null) throw new CudaError(`cuModuleGetFunction returned NULL for ${name}`, { reason: "driver", call: "cuModuleGetFunction" });
  f = p;
  m.functions.set(name, f);
  return f;
}

/** Unload the modules of this thread (before cuda.close()). */
export function unloadKernels(): void {
  for (const [device, m] of modules) {
    modules.delete(device);
    if (m.generation !== contextGeneration()) continue;
    try {
      current(device).cuModuleUnload(m.module);
    } catch {
      // The context may already be gone with cuda.close(): the module went with it.
    }
  }
}

/** A stream of its own for one launch at a time, polled, never waited on. */
export class KernelStream {
  readonly device: number;
  readonly #stream: Pointer;
  /** C memory for the launch parameters: [0] points at [8], which holds the job's device address. */
  readonly #params: Pointer;
  readonly #paramWords: Uint32Array;
  #destroyed = false;

  constructor(device: number) {
    this.device = device;
    const d = current(device);
    const s = scratch();
    check(d.cuStreamCreate(s.ptr, CU_STREAM_NON_BLOCKING), "cuStreamCreate", `device ${device}`);
    const st = outPointer();
    if (st === null) throw new CudaError("cuStreamCreate returned a NULL stream", { reason: "driver", call: "cuStreamCreate" });
    this.#stream = st;
    this.#params = checkPtr(native().nvm_host_alloc(16), "nvm_host_alloc");
    this.#paramWords = new Uint32Array(toArrayBuffer(this.#params, 0, 16));
  }

  /**
   * Launch `name` with one parameter, a device address (the job), on `grid` blocks of `block`
   * threads. Returns at once; poll done().
   */
  launch(name: string, grid: number, block: number, param: bigint): void {
    if (this.#destroyed) throw new InvalidArgumentError("this kernel stream was destroyed");
    if (!Number.isInteger(grid) || grid < 1 || grid > 0x7fffffff || !Number.isInteger(block) || block < 1 || block > 1024) {
      throw new InvalidArgumentError(`kernel launch of ${grid} blocks of ${block} threads: blocks 1 to 2^31-1, threads per block 1 to 1024`);
    }
    const f = kernel(this.device, name);
    const d = current(this.device);
    // kernelParams: an array of pointers, one per kernel parameter, each to the value's storage.
    const base = Number(this.#params);
    this.#paramWords[0] = (base + 8) >>> 0;
    this.#paramWords[1] = Math.floor((base + 8) / 0x1_0000_0000);
    this.#paramWords[2] = Number(param & 0xffff_ffffn);
    this.#paramWords[3] = Number(param >> 32n);
    check(d.cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, this.#stream, this.#params, null), "cuLaunchKernel", `${name} <<<${grid}, ${block}>>>`);
  }

  /** True once everything launched on the stream finished; a kernel's failure throws its CudaError. */
  done(): boolean {
    const d = current(this.device);
    const r = d.cuStreamQuery(this.#stream);
    if (r === CUDA_SUCCESS) return true;
    if (r === CUDA_ERROR_NOT_READY) return false;
    throw cudaError(r, "cuStreamQuery", "the queue kernel failed on the GPU");
  }

  /** Destroy the stream (the driver lets work still on it finish first). */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    try {
      check(current(this.device).cuStreamDestroy_v2(this.#stream), "cuStreamDestroy_v2");
    } finally {
      native().nvm_host_free(this.#params);
    }
  }
}
