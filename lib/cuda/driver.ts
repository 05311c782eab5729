/**
 * The only dlopen of the NVIDIA driver library (libcuda.so.1) in libnvm. Nothing here runs at
 * import: the library is loaded the first time a GPU feature is used, so programs that never touch
 * CUDA never load it, and libnvm needs no CUDA at build or install time. Driver API only (no
 * libcudart): no runtime/driver version coupling.
 *
 * The library is found at the path given to setCudaLibraryPath(), $LIBNVM_LIBCUDA, or
 * "libcuda.so.1" through the dynamic linker's search. Where cuda.h `#define`s an entry point to a
 * versioned symbol (cuMemAlloc → cuMemAlloc_v2), the versioned symbol is bound under its own name:
 * the unversioned one keeps an older ABI (32-bit device pointers and sizes for cuMemAlloc), which
 * would misbehave silently. A CUresult other than CUDA_SUCCESS becomes a CudaError named by the
 * driver itself (cuGetErrorName); NULL, errno and CUresult mapping stays in this file.
 *
 * Out-parameters go to a C-allocated scratch area (small JS typed arrays can move under C,
 * bun#32054), device pointers (u64) come back as bigint, strings go out NUL-terminated.
 */
import { CString, dlopen, FFIType, read, toArrayBuffer, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { CudaError, InvalidArgumentError, type CudaErrorReason } from "../errors.ts";
import { checkPtr, native, traced } from "../native.ts";

export const DEFAULT_LIBCUDA = "libcuda.so.1";

// CUresult values this layer tells apart (cuda.h, enum cudaError_enum).
export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;
export const CUDA_ERROR_STUB_LIBRARY = 34;
export const CUDA_ERROR_DEVICE_UNAVAILABLE = 46;
export const CUDA_ERROR_NO_DEVICE = 100;
export const CUDA_ERROR_INVALID_IMAGE = 200;
export const CUDA_ERROR_NO_BINARY_FOR_GPU = 209;
export const CUDA_ERROR_NOT_FOUND = 500;
export const CUDA_ERROR_NOT_READY = 600;
export const CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701;
export const CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712;
export const CUDA_ERROR_NOT_PERMITTED = 800;
export const CUDA_ERROR_NOT_SUPPORTED = 801;
export const CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803;

// CUdevice_attribute values used here.
export const CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY = 19;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
export const CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED = 99;
export const CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 124;

// cuMemHostRegister Flags.
export const CU_MEMHOSTREGISTER_PORTABLE = 0x01;
export const CU_MEMHOSTREGISTER_DEVICEMAP = 0x02;
/** The range is I/O memory (a PCI BAR mapping): the GPU writes it uncached, in order (gpu.md section 3). */
export const CU_MEMHOSTREGISTER_IOMEMORY = 0x04;

// cuStreamCreate Flags: no implicit synchronization with the legacy default stream.
export const CU_STREAM_NON_BLOCKING = 0x1;

// CUmemRangeHandleType.
export const CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD = 1;

const { ptr: P, i32, u32, u64 } = FFIType;

/** The entry points bound, under the symbol names libcuda.so.1 exports (the versioned ones where cuda.h maps to them). */
export const cudaSymbols = {
  // errors
  cuGetErrorName: { args: [i32, P], returns: i32 },
  cuGetErrorString: { args: [i32, P], returns: i32 },
  // initialisation, version
  cuInit: { args: [u32], returns: i32 },
  cuDriverGetVersion: { args: [P], returns: i32 },
  // devices: CUdevice is an int handle from cuDeviceGet, not the ordinal
  cuDeviceGetCount: { args: [P], returns: i32 },
  cuDeviceGet: { args: [P, i32], returns: i32 },
  cuDeviceGetName: { args: [P, i32, i32], returns: i32 },
  cuDeviceGetAttribute: { args: [P, i32, i32], returns: i32 },
  cuDeviceTotalMem_v2: { args: [P, i32], returns: i32 },
  cuDeviceGetPCIBusId: { args: [P, i32, i32], returns: i32 },
  // primary context of a device; the current context of the calling OS thread
  cuDevicePrimaryCtxRetain: { args: [P, i32], returns: i32 },
  cuDevicePrimaryCtxRelease_v2: { args: [i32], returns: i32 },
  cuCtxSetCurrent: { args: [P], returns: i32 },
  // device memory: CUdeviceptr and size_t are 64-bit
  cuMemAlloc_v2: { args: [P, u64], returns: i32 },
  cuMemFree_v2: { args: [u64], returns: i32 },
  cuMemcpyHtoD_v2: { args: [u64, P, u64], returns: i32 },
  cuMemcpyDtoH_v2: { args: [P, u64, u64], returns: i32 },
  cuMemcpyDtoD_v2: { args: [u64, u64, u64], returns: i32 },
  // host memory mapped into the device's address space
  cuMemHostRegister_v2: { args: [P, u64, u32], returns: i32 },
  cuMemHostUnregister: { args: [P], returns: i32 },
  cuMemHostGetDevicePointer_v2: { args: [P, P, u32], returns: i32 },
  // dma-buf export (CUDA 11.7 and later drivers)
  cuMemGetHandleForAddressRange: { args: [P, u64, u64, i32, u64], returns: i32 },
  // modules (the fatbin of c/cuda/nvm_queue.cu), kernels, streams
  cuModuleLoadData: { args: [P, P], returns: i32 },
  cuModuleUnload: { args: [P], returns: i32 },
  cuModuleGetFunction: { args: [P, P, P], returns: i32 },
  cuLaunchKernel: { args: [P, u32, u32, u32, u32, u32, u32, u32, P, P, P], returns: i32 },
  cuStreamCreate: { args: [P, u32], returns: i32 },
  cuStreamQuery: { args: [P], returns: i32 },
  cuStreamDestroy_v2: { args: [P], returns: i32 },
} as const;

/** A 64-bit driver argument: a bigint, or a number below 2^53. */
type U64 = bigint | number;
/** Host memory for the driver to read or write during the call. */
type HostMemory = Pointer | ArrayBufferView;

/** libcuda as TypeScript sees it; every function returns a CUresult. */
export interface CudaDriverLib {
  cuGetErrorName(error: number, pStr: Pointer): number;
  cuGetErrorString(error: number, pStr: Pointer): number;
  cuInit(flags: number): number;
  cuDriverGetVersion(driverVersion: Pointer): number;
  cuDeviceGetCount(count: Pointer): number;
  cuDeviceGet(device: Pointer, ordinal: number): number;
  cuDeviceGetName(name: Pointer, len: number, dev: number): number;
  cuDeviceGetAttribute(pi: Pointer, attrib: number, dev: number): number;
  cuDeviceTotalMem_v2(bytes: Pointer, dev: number): number;
  cuDeviceGetPCIBusId(pciBusId: Pointer, len: number, dev: number): number;
  cuDevicePrimaryCtxRetain(pctx: Pointer, dev: number): number;
  cuDevicePrimaryCtxRelease_v2(dev: number): number;
  cuCtxSetCurrent(ctx: Pointer | null): number;
  cuMemAlloc_v2(dptr: Pointer, bytesize: U64): number;
  cuMemFree_v2(dptr: U64): number;
  cuMemcpyHtoD_v2(dstDevice: U64, srcHost: HostMemory, byteCount: U64): number;
  cuMemcpyDtoH_v2(dstHost: HostMemory, srcDevice: U64, byteCount: U64): number;
  cuMemcpyDtoD_v2(dstDevice: U64, srcDevice: U64, byteCount: U64): number;
  cuMemHostRegister_v2(p: Pointer, bytesize: U64, flags: number): number;
  cuMemHostUnregister(p: Pointer): number;
  cuMemHostGetDevicePointer_v2(pdptr: Pointer, p: Pointer, flags: number): number;
  cuMemGetHandleForAddressRange(handle: Pointer, dptr: U64, size: U64, handleType: number, flags: U64): number;
  cuModuleLoadData(module: Pointer, image: HostMemory): number;
  cuModuleUnload(hmod: Pointer): number;
  cuModuleGetFunction(hfunc: Pointer, hmod: Pointer, name: Pointer | ArrayBufferView): number;
  cuLaunchKernel(
    f: Pointer,
    gridDimX: number,
    gridDimY: number,
    gridDimZ: number,
    blockDimX: number,
    blockDimY: number,
    blockDimZ: number,
    sharedMemBytes: number,
    hStream: Pointer | null,
    kernelParams: Pointer | null,
    extra: Pointer | null,
  ): number;
  cuStreamCreate(phStream: Pointer, flags: number): number;
  cuStreamQuery(hStream: Pointer | null): number;
  cuStreamDestroy_v2(hStream: Pointer): number;
}

let pathOverride: string | undefined;
let loaded: { readonly lib: CudaDriverLib; readonly path: string } | undefined;

/** Load this libcuda instead of $LIBNVM_LIBCUDA or libcuda.so.1 (tests, unusual installs). Call before first GPU use. */
export function setCudaLibraryPath(path: string): void {
  if (loaded) throw new InvalidArgumentError(`setCudaLibraryPath(${path}): libcuda is already loaded from ${loaded.path}; call it before the first GPU use`);
  pathOverride = path;
}

/** The path libcuda was loaded from, or undefined while it is not loaded. */
export function cudaLibraryPath(): string | undefined {
  return loaded?.path;
}

/** The driver's entry points; loads libcuda on the first call. Throws CudaError "no-driver" when it cannot. */
export function cudaDriver(): CudaDriverLib {
  if (loaded) return loaded.lib;
  // Where the path came from, for the message: the user set it, or the dynamic linker searched.
  const source = pathOverride ? "setCudaLibraryPath" : process.env.LIBNVM_LIBCUDA ? "LIBNVM_LIBCUDA" : undefined;
  const path = pathOverride || process.env.LIBNVM_LIBCUDA || DEFAULT_LIBCUDA;
  if (source && !existsSync(path)) throw noDriver(`libcuda.so.1 not found at ${source}=${path}`);
  let lib: CudaDriverLib;
  try {
    lib = dlopen(path, cudaSymbols).symbols as unknown as CudaDriverLib;
  } catch (e) {
    const text = e instanceof Error ? e.message : String(e);
    const missing = /Symbol "([^"]+)" not found/.exec(text)?.[1];
    if (missing) {
      // An old driver: the rest is there, this entry point came later.
      throw new CudaError(
        `the CUDA driver at ${path} has no ${missing}: it is older than libnvm needs (a driver for CUDA 11.7 or later); update the NVIDIA driver`,
        { reason: "no-driver", call: "dlopen" },
      );
    }
    // A path the user gave exists (checked above), so its failure is the file itself or a dependency.
    if (!source && text.includes(`${path}: cannot open shared object file`)) throw noDriver(`${path} not found by the dynamic linker`);
    throw noDriver(`${source ? `${source}=${path}` : path} could not be loaded: ${text}`);
  }
  loaded = { lib: process.env.LIBNVM_TRACE_FFI ? traced(lib) : lib, path };
  return loaded.lib;
}

function noDriver(what: string): CudaError {
  return new CudaError(`no CUDA driver (${what}): install the NVIDIA driver, or set LIBNVM_LIBCUDA to its libcuda.so.1`, {
    reason: "no-driver",
    call: "dlopen",
  });
}

// --- out-parameters ------------------------------------------------------------------------------

const SCRATCH_BYTES = 512;
/** Strings (device name, PCI bus id) are written at this offset of the scratch area, up to STRING_LEN bytes. */
const STRING_AT = 256;
export const STRING_LEN = 256;

export interface Scratch {
  /** For one scalar out-parameter (int, size_t, CUdeviceptr, CUcontext, const char *). */
  readonly ptr: Pointer;
  /** For a string out-parameter of STRING_LEN bytes. */
  readonly str: Pointer;
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
}

let scratchArea: Scratch | undefined;

/** The C-owned area the driver writes out-parameters into (one per JavaScript thread, like this module). */
export function scratch(): Scratch {
  if (!scratchArea) {
    const p = checkPtr(native().nvm_host_alloc(SCRATCH_BYTES), "nvm_host_alloc");
    const buf = toArrayBuffer(p, 0, SCRATCH_BYTES);
    scratchArea = { ptr: p, str: (Number(p) + STRING_AT) as Pointer, u32: new Uint32Array(buf), i32: new Int32Array(buf) };
  }
  return scratchArea;
}

/** The int out-parameter. */
export function outI32(): number {
  return scratch().i32[0]!;
}

/** The 64-bit out-parameter (CUdeviceptr, size_t). */
export function outU64(): bigint {
  const u = scratch().u32;
  return BigInt(u[0]!) | (BigInt(u[1]!) << 32n);
}

/** The pointer out-parameter (CUcontext, const char *), null for NULL. */
export function outPointer(): Pointer | null {
  const p = read.ptr(scratch().ptr, 0);
  return p === 0 ? null : (p as Pointer);
}

/** The string out-parameter. */
export function outString(): string {
  return String(new CString(scratch().str));
}

// --- results -------------------------------------------------------------------------------------

/** What to do about a result, where there is something better to say than the driver's text. */
const hints: Record<number, string> = {
  [CUDA_ERROR_OUT_OF_MEMORY]: "free GPU memory (CudaMemory.free()) or ask for less",
  [CUDA_ERROR_STUB_LIBRARY]:
    "this libcuda is the CUDA toolkit's stub, not the driver: point LIBNVM_LIBCUDA at the NVIDIA driver's libcuda.so.1, or unset it",
  [CUDA_ERROR_DEVICE_UNAVAILABLE]: "the GPU is in exclusive-process compute mode and in use by another process (nvidia-smi -q -d COMPUTE)",
  [CUDA_ERROR_NO_DEVICE]: "no CUDA device: the driver sees no GPU; check nvidia-smi, the permissions of /dev/nvidia*, and CUDA_VISIBLE_DEVICES",
  [CUDA_ERROR_SYSTEM_DRIVER_MISMATCH]: "libcuda and the loaded nvidia kernel module are different versions: reload the module or reboot after the driver update",
  [CUDA_ERROR_NO_BINARY_FOR_GPU]: "the kernels have no code for this GPU: rebuild c/cuda with an nvcc that supports it (cmake -S c -B c/build -DLIBNVM_CUDA=ON)",
  [CUDA_ERROR_INVALID_IMAGE]: "the kernel image is not a fatbin, cubin or PTX the driver accepts: rebuild it (cmake --build c/build) or point LIBNVM_KERNELS at a good one",
};

function reasonOf(result: number): CudaErrorReason {
  if (result === CUDA_ERROR_NO_DEVICE) return "no-device";
  if (result === CUDA_ERROR_NOT_SUPPORTED) return "unsupported";
  if (result === CUDA_ERROR_STUB_LIBRARY || result === CUDA_ERROR_SYSTEM_DRIVER_MISMATCH) return "no-driver";
  return "driver";
}

/** The driver's name for a CUresult (cuGetErrorName), or "CUresult <n>" for one it does not know. */
export function errorName(result: number): string {
  return describe(result, "cuGetErrorName") ?? `CUresult ${result}`;
}

/** The driver's description of a CUresult (cuGetErrorString), or undefined. */
export function errorString(result: number): string | undefined {
  return describe(result, "cuGetErrorString");
}

function describe(result: number, call: "cuGetErrorName" | "cuGetErrorString"): string | undefined {
  const s = scratch();
  if (cudaDriver()[call](result, s.ptr) !== CUDA_SUCCESS) return undefined;
  const p = outPointer();
  return p === null ? undefined : String(new CString(p));
}

/** The CudaError for `result` returned by `call`; `detail` says what it was asked, `hint` what to do. */
export function cudaError(result: number, call: string, detail?: string, hint?: string): CudaError {
  const resultName = errorName(result);
  const text = errorString(result);
  const next = hint ?? hints[result];
  return new CudaError(
    `${call}${detail ? ` (${detail})` : ""} failed: ${resultName} (${result}${text ? `, "${text}"` : ""})${next ? `: ${next}` : ""}`,
    { reason: reasonOf(result), call, result, resultName },
  );
}

/** Throw the CudaError for a result other than CUDA_SUCCESS. */
export function check(result: number, call: string, detail?: string, hint?: string): void {
  if (result !== CUDA_SUCCESS) throw cudaError(result, call, detail, hint);
}
