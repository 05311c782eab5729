/**
 * What a way of reaching the controller (raw sysfs, VFIO, the disnvm module, Dolphin SmartIO) provides.
 * Everything above this interface is the same NVMe driver whatever the backend.
 */
import type { Pointer } from "bun:ffi";

export type BackendKind = "sysfs" | "vfio" | "disnvm" | "smartio";

/** What an imported dma-buf mapping (Backend.importDmaBuf) came from. */
export interface DmaBufImport {
  /** The dma-buf's file descriptor when it was imported (the import keeps the buffer alive by itself). */
  readonly fd: number;
  /** Byte offset of the imported range in the dma-buf. */
  readonly offset: number;
  /** Bytes of the whole dma-buf. */
  readonly bufferSize: number;
  /** The exporter's name (exp_name in /proc/self/fdinfo: "udmabuf", "system", a GPU driver's). */
  readonly exporter: string;
  /** How the backend names the import (disnvm: the module's handle). */
  readonly handle: number;
}

/** Memory the controller can reach by DMA. Owned by the backend that made it. */
export interface DmaMapping {
  /**
   * Host virtual address of the first byte; null for memory this process has no CPU view of (a
   * dma-buf imported with Backend.importDmaBuf).
   */
  readonly vaddr: Pointer | null;
  /** Usable bytes (the request rounded up to whole 4 KiB pages). */
  readonly size: number;
  /** Bus address of each 4 KiB page as (lo, hi) pairs: page i at [2i], [2i+1]. */
  readonly iova: Uint32Array;
  /** True when the pages are consecutive on the bus (one address range). */
  readonly contiguous: boolean;
  /**
   * Set by the owner of views over this memory; the backend calls it before unmapping (e.g. on
   * close()), so no view outlives the mapping: a view into unmapped memory would crash the process.
   */
  revoke?: () => void;
  /** Set for a mapping imported from a dma-buf. */
  readonly dmaBuf?: DmaBufImport;
  /**
   * Set by the owner of the mapping's users (DmaBuffer); the backend calls it when the exporter of an
   * imported dma-buf revoked it: nothing may point the controller at the memory any more, and `err`
   * is what every use of it fails with from then on.
   */
  invalidate?: (err: Error) => void;
}

export interface DmaOptions {
  /** The controller needs one bus-contiguous range (queues when CAP.CQR = 1). Defaults to false. */
  readonly contiguous?: boolean;
}

/**
 * What DmaBuffer needs of whoever made its memory: a backend, or the host memory of an NVMe/TCP
 * controller (whose buffers have no bus addresses: their data travels in the TCP stream).
 */
export interface DmaAllocator {
  allocDma(size: number, opts?: DmaOptions): DmaMapping;
  freeDma(mapping: DmaMapping): void;
  importDmaBuf(fd: number, offset: number, size?: number): DmaMapping;
}

export interface Backend extends DmaAllocator {
  readonly kind: BackendKind;
  /** The PCI address or device path it was opened with, normalised. */
  readonly name: string;
  /** The controller's PCI address when known (the owner lock is keyed by it). */
  readonly bdf?: string | undefined;
  /** BAR0 mapped uncached. */
  readonly bar0: Pointer;
  readonly bar0Size: number;
  allocDma(size: number, opts?: DmaOptions): DmaMapping;
  /**
   * Import [offset, offset + size) of the dma-buf `fd` (to its end when `size` is undefined) as
   * memory the controller reaches: bus addresses per 4 KiB page, no CPU view (vaddr null). The
   * arguments are integers, offset and size multiples of 4 KiB (Controller.mapDmaBuf checks that);
   * the backend checks the fd and the range against the dma-buf. A backend that cannot import
   * throws UnsupportedError naming the one that can.
   */
  importDmaBuf(fd: number, offset: number, size?: number): DmaMapping;
  /**
   * Imports whose exporter revoked them since the last call, each invalidated (its `invalidate`
   * called) and given back to the kernel; [] when none. The kernel stopped the controller
   * (disabled it, cleared bus mastering) before it let the exporter have the memory, so the
   * caller resets the controller. Only backends that import have it.
   */
  takeRevokedDmaBufs?(): DmaMapping[];
  freeDma(mapping: DmaMapping): void;
  /**
   * Set or clear Bus Master Enable (PCI COMMAND bit 2). Cleared, the controller can start no DMA
   * at all: how DMA is stopped when disabling the controller failed, before any memory it was
   * given is settled or released. Throws when the bit could not be written.
   */
  setBusMaster(enabled: boolean): void;
  /**
   * Give up every live DMA mapping without freeing it: for when the controller may still reach the
   * memory (neither disabled nor its bus mastering cleared). The memory stays mapped and locked
   * until the process exits; freeDma() and close() no longer touch it.
   */
  abandonDma(): void;
  /** Unmap BAR0, release DMA mappings not yet freed, clear bus mastering if it set it. Idempotent. */
  close(): void;
}

export const HOST_PAGE_SIZE = 4096;
