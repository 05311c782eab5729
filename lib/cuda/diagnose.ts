/**
 * The GPU side of `doctor`: whether NVMe DMA straight into GPU memory can work here, and what is
 * missing. It needs the CUDA driver (loaded here, and only here, for that), a GPU whose driver
 * exports dma-bufs, and the disnvm module bound to the controller with its dma-buf import; with the
 * IOMMU on the import gives the controller IOVAs of its own domain, with it off the module wants
 * CAP_SYS_RAWIO. Reads only; changes nothing.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { CudaError } from "../errors.ts";
import { cudaLibraryPath } from "./driver.ts";
import { cuda } from "./index.ts";

export interface GpuDiagnosis {
  /** The CUDA driver: its CUDA version (13000 = 13.0), or why it could not be used. */
  readonly driver: { readonly found: boolean; readonly version?: number; readonly library?: string; readonly error?: string };
  readonly devices: { readonly ordinal: number; readonly name: string; readonly pciBusId: string; readonly dmaBufSupported: boolean }[];
  /** The disnvm module bound to this controller imports dma-bufs (its sysfs attribute disnvm_dmabufs exists). */
  readonly moduleImportsDmaBuf: boolean;
  /** Reading GPU memory by DMA (gpu-read) works now. */
  readonly possible: boolean;
  readonly problems: string[];
  readonly fixes: string[];
}

/**
 * Check the GPU path for the controller at `devicePath` (its sysfs directory, or undefined when it
 * was not found) bound to `driver`.
 */
export function diagnoseGpu(devicePath: string | undefined, driver: string | null, iommuTranslating: boolean, capSysRawio: boolean): GpuDiagnosis {
  const problems: string[] = [];
  const fixes: string[] = [];
  let found = false;
  let version: number | undefined;
  let error: string | undefined;
  let devices: GpuDiagnosis["devices"] = [];
  try {
    version = cuda.driverVersion();
    found = true;
    devices = cuda.devices().map((d) => ({ ordinal: d.ordinal, name: d.name, pciBusId: d.pciBusId, dmaBufSupported: d.dmaBufSupported }));
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
    if (e instanceof CudaError && e.reason === "no-driver") {
      problems.push("no CUDA driver");
      fixes.push("install NVIDIA's driver (its open kernel modules export dma-bufs), or set LIBNVM_LIBCUDA to its libcuda.so.1");
    } else if (e instanceof CudaError && e.reason === "no-device") {
      problems.push("the CUDA driver sees no GPU");
      fixes.push("nvidia-smi   # check the GPU and its driver");
    } else problems.push(`the CUDA driver failed: ${error}`);
  }
  if (found && devices.length > 0 && !devices.some((d) => d.dmaBufSupported)) {
    problems.push("no GPU exports dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0)");
    fixes.push("use NVIDIA's open kernel modules on Linux 5.12 or newer; or register host DMA buffers with cuda.registerHost() instead");
  }
  const moduleImportsDmaBuf = driver === "disnvm" && devicePath !== undefined && existsSync(join(devicePath, "disnvm_dmabufs"));
  if (driver !== "disnvm") {
    problems.push(`the controller is ${driver ? `bound to ${driver}` : "not bound"}: only the disnvm module imports dma-bufs (VFIO type1 cannot)`);
    fixes.push("load and bind the disnvm module (the disnvm fixes above)");
  } else if (!moduleImportsDmaBuf) {
    problems.push("the loaded disnvm module has no dma-buf import (an older build)");
    fixes.push("load the disnvm module built from this checkout (bash test/vm/build-module.sh, or make -C module)");
  }
  if (!iommuTranslating && !capSysRawio) {
    problems.push("without a translating IOMMU the module needs CAP_SYS_RAWIO");
    fixes.push("run as root, or turn the IOMMU on (intel_iommu=on / amd_iommu=on)");
  }
  return {
    driver: { found, ...(version !== undefined ? { version } : {}), ...(cudaLibraryPath() ? { library: cudaLibraryPath() } : {}), ...(error ? { error } : {}) },
    devices,
    moduleImportsDmaBuf,
    possible: problems.length === 0,
    problems,
    fixes,
  };
}
