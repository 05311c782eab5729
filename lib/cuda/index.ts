/**
 * The GPU layer: `import { cuda } from "libnvm"`. Importing it loads nothing; libcuda.so.1 is
 * loaded by the first call below that needs the driver (see driver.ts), and a missing driver, no
 * GPU, or a feature the GPU lacks is a CudaError whose `reason` says which.
 *
 *   for (const g of cuda.devices()) console.log(g.ordinal, g.name, g.pciBusId, g.dmaBufSupported);
 *   using mem = cuda.alloc(1 << 20);                  // GPU memory, 4 KiB pages
 *   mem.copyFromHost(bytes); mem.copyToHost(out);
 *   using reg = cuda.registerHost(buf);               // buf: a DmaBuffer of any backend
 *   launchMyKernel(reg.devicePointer);                // the GPU reads and writes buf in place
 *   const fd = mem.exportDmaBuf();                    // for a module that attaches it to the NVMe
 */
import { cudaDriver, check, outI32, scratch } from "./driver.ts";
import { deviceCount, deviceInfo, releaseContexts, type CudaDevice } from "./device.ts";
import { alloc, copy, registerHost, registerIoMemory, releaseAll } from "./memory.ts";

/** The driver's CUDA version, 1000 * major + 10 * minor (13000 = CUDA 13.0); needs no GPU (cuDriverGetVersion). */
function driverVersion(): number {
  check(cudaDriver().cuDriverGetVersion(scratch().ptr), "cuDriverGetVersion");
  return outI32();
}

/** Every GPU the driver sees, in ordinal order. Throws CudaError "no-device" when it sees none. */
function devices(): CudaDevice[] {
  const n = deviceCount();
  const out: CudaDevice[] = [];
  for (let i = 0; i < n; i++) out.push(deviceInfo(i));
  return out;
}

/**
 * Free this thread's GPU memory and host registrations still live, release the primary contexts
 * it retained, and forget the driver state (the next call starts again). For the end of a
 * program or a Worker that used the GPU; a no-op when nothing was used. Throws the first failure
 * after trying everything.
 */
function close(): void {
  let first: unknown;
  try {
    releaseAll();
  } catch (e) {
    first = e;
  }
  try {
    releaseContexts();
  } catch (e) {
    first ??= e;
  }
  if (first !== undefined) throw first;
}

export const cuda = Object.freeze({ driverVersion, devices, alloc, registerHost, registerIoMemory, copy, close });

export { CudaMemory, HostRegistration, IoMemoryRegistration, type CudaAllocOptions, type DeviceRange, type HostCopyOptions } from "./memory.ts";
export type { CudaDevice } from "./device.ts";
export { setCudaLibraryPath, cudaLibraryPath } from "./driver.ts";
