/**
 * CUDA devices and their primary contexts, as seen from this JavaScript thread.
 *
 * The driver is initialised (cuInit) on first use; each device's primary context is retained once
 * per thread that uses it and released by releaseContexts() (cuda.close()). The current context
 * belongs to the OS thread, and a Worker is another thread with its own copy of this module, so
 * every path that needs a context makes it current first (current()): a Worker then works without
 * setup of its own, and calls for device 1 after device 0 land on device 1. cuCtxSetCurrent is a
 * thread-local store in the driver, cheap next to any call that needs it.
 */
import type { Pointer } from "bun:ffi";
import { CudaError, InvalidArgumentError } from "../errors.ts";
import {
  check,
  CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
  CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
  cudaDriver,
  outI32,
  outPointer,
  outString,
  outU64,
  scratch,
  STRING_LEN,
  type CudaDriverLib,
} from "./driver.ts";

/** One GPU as the driver describes it. */
export interface CudaDevice {
  /** The ordinal to pass as `device` (0 for the first GPU the driver lists). */
  readonly ordinal: number;
  /** Marketing name, e.g. "NVIDIA H100 80GB HBM3" (cuDeviceGetName). */
  readonly name: string;
  /** PCI address in lspci -D form, lower case: "0000:65:00.0" (cuDeviceGetPCIBusId). */
  readonly pciBusId: string;
  readonly computeCapability: { readonly major: number; readonly minor: number };
  /** Bytes of device memory (cuDeviceTotalMem). */
  readonly totalMemory: number;
  /** Whether CudaMemory.exportDmaBuf() can work here (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED). */
  readonly dmaBufSupported: boolean;
  /** Whether registerHost() can map host memory for this GPU (CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY). */
  readonly canMapHostMemory: boolean;
}

interface DeviceState {
  readonly count: number;
  /** CUdevice handle per ordinal (cuDeviceGet): the driver's handle need not equal the ordinal. */
  readonly handles: Map<number, number>;
  /** Primary context per ordinal, retained by this thread. */
  readonly contexts: Map<number, Pointer>;
}

let state: DeviceState | undefined;
/** Bumped each time this thread's contexts are released: what lives in them (modules) is gone. */
let generation = 0;

/** Changes whenever releaseContexts() let go of this thread's contexts (cuda.close()). */
export function contextGeneration(): number {
  return generation;
}

function initialized(): DeviceState {
  if (state) return state;
  const d = cudaDriver();
  check(d.cuInit(0), "cuInit");
  const s = scratch();
  check(d.cuDeviceGetCount(s.ptr), "cuDeviceGetCount");
  const count = outI32();
  if (count <= 0) {
    throw new CudaError(
      `no CUDA device (cuDeviceGetCount = ${count}): the driver loaded but sees no GPU; check nvidia-smi, the permissions of /dev/nvidia*, and CUDA_VISIBLE_DEVICES`,
      { reason: "no-device", call: "cuDeviceGetCount" },
    );
  }
  state = { count, handles: new Map(), contexts: new Map() };
  return state;
}

/** How many GPUs the driver sees (throws CudaError when there is no driver or none). */
export function deviceCount(): number {
  return initialized().count;
}

/** The CUdevice handle for an ordinal, after checking it names a device. */
export function deviceHandle(ordinal: number): number {
  const st = initialized();
  if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= st.count) {
    throw new InvalidArgumentError(
      `CUDA device ${ordinal} does not exist: the driver sees ${st.count} (ordinals 0 to ${st.count - 1}); see cuda.devices()`,
    );
  }
  let h = st.handles.get(ordinal);
  if (h === undefined) {
    check(cudaDriver().cuDeviceGet(scratch().ptr, ordinal), "cuDeviceGet", `device ${ordinal}`);
    h = outI32();
    st.handles.set(ordinal, h);
  }
  return h;
}

/** A device attribute (cuDeviceGetAttribute). */
export function deviceAttribute(ordinal: number, attribute: number): number {
  const h = deviceHandle(ordinal);
  check(cudaDriver().cuDeviceGetAttribute(scratch().ptr, attribute, h), "cuDeviceGetAttribute", `attribute ${attribute} of device ${ordinal}`);
  return outI32();
}

/** The device's name (cuDeviceGetName), for messages. */
export function deviceName(ordinal: number): string {
  const s = scratch();
  check(cudaDriver().cuDeviceGetName(s.str, STRING_LEN, deviceHandle(ordinal)), "cuDeviceGetName", `device ${ordinal}`);
  return outString();
}

/** Everything cuda.devices() reports about one device. */
export function deviceInfo(ordinal: number): CudaDevice {
  const d = cudaDriver();
  const h = deviceHandle(ordinal);
  const s = scratch();
  const name = deviceName(ordinal);
  check(d.cuDeviceGetPCIBusId(s.str, STRING_LEN, h), "cuDeviceGetPCIBusId", `device ${ordinal}`);
  // The driver prints hex digits in upper case; lspci -D and parseBdf() use lower case.
  const pciBusId = outString().toLowerCase();
  check(d.cuDeviceTotalMem_v2(s.ptr, h), "cuDeviceTotalMem_v2", `device ${ordinal}`);
  const totalMemory = Number(outU64());
  return {
    ordinal,
    name,
    pciBusId,
    computeCapability: {
      major: deviceAttribute(ordinal, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
      minor: deviceAttribute(ordinal, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    },
    totalMemory,
    dmaBufSupported: deviceAttribute(ordinal, CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED) !== 0,
    canMapHostMemory: deviceAttribute(ordinal, CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY) !== 0,
  };
}

/**
 * Make the device's primary context current on the calling thread (retaining it on first use)
 * and return the driver. Every call path that needs a context goes through here.
 */
export function current(ordinal: number): CudaDriverLib {
  const st = initialized();
  const d = cudaDriver();
  let ctx = st.contexts.get(ordinal);
  if (ctx === undefined) {
    const h = deviceHandle(ordinal);
    check(d.cuDevicePrimaryCtxRetain(scratch().ptr, h), "cuDevicePrimaryCtxRetain", `device ${ordinal}`);
    const p = outPointer();
    if (p === null) throw new CudaError(`cuDevicePrimaryCtxRetain returned a NULL context for device ${ordinal}: the driver is broken; reinstall it`, { reason: "driver", call: "cuDevicePrimaryCtxRetain" });
    ctx = p;
    st.contexts.set(ordinal, ctx);
  }
  check(d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent", `primary context of device ${ordinal}`);
  return d;
}

/**
 * Release the primary contexts this thread retained and forget the driver state, so the next GPU
 * call initialises again. The caller frees this thread's memory first: a context's last release
 * takes its allocations with it. Throws the first failure after trying every device.
 */
export function releaseContexts(): void {
  const st = state;
  if (!st) return;
  state = undefined;
  generation++;
  const d = cudaDriver();
  let first: unknown;
  // Leave no context of ours current on this thread once it may be gone.
  if (st.contexts.size > 0) {
    try {
      check(d.cuCtxSetCurrent(null), "cuCtxSetCurrent", "NULL");
    } catch (e) {
      first ??= e;
    }
  }
  for (const ordinal of st.contexts.keys()) {
    try {
      check(d.cuDevicePrimaryCtxRelease_v2(st.handles.get(ordinal)!), "cuDevicePrimaryCtxRelease_v2", `device ${ordinal}`);
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}
