/**
 * dma-bufs as the backends see them: what a file descriptor is (/proc/self/fdinfo names a dma-buf's
 * size and exporter), the range checks an import makes before it asks the kernel, and the errors of
 * the backends that cannot import one.
 *
 * A dma-buf is memory another driver exports (a GPU's, udmabuf's memfd pages, a dma-heap's) for
 * devices to reach by DMA. Only a kernel module can attach it to the controller (disnvm's
 * DISNVM_IOC_MAP_DMABUF): the exporter then makes bus addresses for the controller itself, through
 * its IOMMU domain when one translates.
 */
import { readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError, UnsupportedError } from "../errors.ts";
import { HOST_PAGE_SIZE, type BackendKind } from "./types.ts";

/** What /proc/self/fdinfo says about a dma-buf file descriptor. */
export interface DmaBufFile {
  /** Bytes of the whole dma-buf. */
  readonly size: number;
  /** exp_name: "udmabuf", "system" (dma-heap), a GPU driver's name. */
  readonly exporter: string;
}

/**
 * The dma-buf open as `fd` in this process: its size and exporter. InvalidArgumentError when the fd
 * is not open, or is open but not a dma-buf (the message says what it is). `proc` is for tests.
 */
export function inspectDmaBuf(fd: number, proc = "/proc/self"): DmaBufFile {
  let info: string;
  try {
    info = readFileSync(join(proc, "fdinfo", String(fd)), "utf8");
  } catch {
    throw new InvalidArgumentError(`fd ${fd} is not open in this process: pass the dma-buf's file descriptor (from udmabuf, a dma-heap or a GPU driver's export)`);
  }
  const exporter = /^exp_name:\s*(.*)$/m.exec(info)?.[1]?.trim();
  const size = Number(/^size:\s*(\d+)$/m.exec(info)?.[1]);
  if (exporter === undefined || !Number.isSafeInteger(size)) {
    let what = "another kind of file";
    try {
      what = readlinkSync(join(proc, "fd", String(fd)));
    } catch {
      // closed meanwhile: the generic words do
    }
    throw new InvalidArgumentError(
      `fd ${fd} is not a dma-buf (it is ${what}): pass a dma-buf's file descriptor, e.g. from /dev/udmabuf (UDMABUF_CREATE over a memfd), a dma-heap, or cuMemGetHandleForAddressRange`,
    );
  }
  return { size, exporter };
}

/**
 * The bytes [offset, offset + size) covers of a `file` (to its end when `size` is undefined),
 * after checking the range lies inside it and is at most `max` bytes. `fd` names it in messages.
 */
export function dmaBufRange(fd: number, file: DmaBufFile, offset: number, size: number | undefined, max: number): number {
  if (offset >= file.size) {
    throw new InvalidArgumentError(`offset ${offset} is past the end of dma-buf fd ${fd} (${file.size} bytes, exporter ${file.exporter})`);
  }
  const bytes = size ?? file.size - offset;
  if (offset + bytes > file.size) {
    throw new InvalidArgumentError(
      `offset ${offset} + size ${bytes} runs past the end of dma-buf fd ${fd} (${file.size} bytes, exporter ${file.exporter}): import at most ${file.size - offset} bytes there`,
    );
  }
  if (bytes % HOST_PAGE_SIZE !== 0) {
    throw new InvalidArgumentError(`dma-buf fd ${fd} is ${file.size} bytes, not whole 4 KiB pages: give a size that is`);
  }
  if (bytes > max) throw new InvalidArgumentError(`${bytes} bytes of dma-buf fd ${fd} exceed the largest import (${max} bytes): import it in parts`);
  return bytes;
}

/**
 * The error of a backend that cannot import a dma-buf: VFIO's type1 IOMMU maps only this process's
 * own pages (iommufd's MAP_FILE takes only VFIO's own dma-bufs, and Debian's kernels have no
 * iommufd), and raw sysfs has nothing but physical addresses of this process's pages.
 */
export function dmaBufUnsupported(kind: BackendKind): UnsupportedError {
  const why =
    kind === "vfio"
      ? "VFIO's type1 IOMMU maps only this process's own memory (VFIO_IOMMU_MAP_DMA of a virtual address): it cannot import a dma-buf another driver exported"
      : "the raw sysfs backend hands the controller physical addresses of this process's own pages: it has no way to attach another driver's dma-buf";
  return new UnsupportedError(
    `mapDmaBuf with the ${kind} backend: ${why}. Use the disnvm kernel module (module/README.md): bind the controller to disnvm and open /dev/disnvmN, which attaches the dma-buf to the controller and maps it through the IOMMU`,
  );
}
