/**
 * What the backends share around their DMA memory: nvm_dma_alloc with a 2 MiB hugepage for a
 * contiguous range of the backends that map pages as they come (disnvm), the typed error for a
 * failed allocation (no free hugepage, the memlock limit) with the command that fixes it,
 * freeDma's forget-revoke-release order, and the bus-contiguity test of a page table.
 */
import type { Pointer } from "bun:ffi";
import { DeviceError, NativeError, PermissionError } from "../errors.ts";
import { native } from "../native.ts";
import type { HugepageReservation } from "./hugepage-reserve.ts";
import { HUGE_PAGE_SIZE } from "./hugepages.ts";
import { HOST_PAGE_SIZE, type DmaMapping } from "./types.ts";

/** nvm_dma_alloc flag NVM_DMA_HUGE (c/include/nvm_native.h): 2 MiB hugetlb pages, physically contiguous per page. */
export const DMA_HUGE = 1;
/**
 * nvm_dma_alloc flag NVM_DMA_NOLOCK: no mlock. For the backends whose kernel side pins the pages
 * and charges them to RLIMIT_MEMLOCK itself (VFIO type1, the disnvm module): an mlock on top would
 * count every page twice against the same limit.
 */
export const DMA_NOLOCK = 2;

const TWO32 = 0x1_0000_0000;
const EPERM = 1;
const EAGAIN = 11;
const ENOMEM = 12;

/**
 * Host memory for `size` bytes, whole 4 KiB pages, for a backend that has the pages mapped as they
 * come (disnvm); locked unless `flags` has DMA_NOLOCK. `contiguous` over more than one page takes a
 * 2 MiB hugepage, so it is limited to 2 MiB (a DeviceError: "a <contiguousWord> DMA range is
 * limited ..."); when none is free, `reservation` raises the pool once (its errors name the
 * command); any other failure is dmaAllocError's. The returned `flags` go back to nvm_dma_free.
 */
export function allocHostPages(
  size: number,
  contiguous: boolean,
  contiguousWord: "physically contiguous" | "bus-contiguous",
  reservation?: HugepageReservation,
  flags = 0,
): { vaddr: Pointer; pages: number; flags: number } {
  const n = native();
  const pages = Math.ceil(size / HOST_PAGE_SIZE);
  // One 4 KiB page is contiguous by itself; larger contiguous ranges come from 2 MiB hugepages.
  const huge = contiguous && pages > 1;
  if (huge && size > HUGE_PAGE_SIZE) {
    throw new DeviceError(`a ${contiguousWord} DMA range is limited to ${HUGE_PAGE_SIZE} bytes here (asked ${size})`);
  }
  const all = huge ? flags | DMA_HUGE : flags;
  let vaddr = n.nvm_dma_alloc(size, all);
  if (vaddr === null && huge && reservation && n.nvm_last_error() === ENOMEM) {
    reservation.raise(1);
    vaddr = n.nvm_dma_alloc(size, all);
  }
  if (vaddr === null) throw dmaAllocError(size, n.nvm_last_error(), { huge, locked: (all & DMA_NOLOCK) === 0 });
  return { vaddr, pages, flags: all };
}

/**
 * The error for nvm_dma_alloc of `size` bytes returning NULL with `errno`: a PermissionError naming
 * nr_hugepages when a hugepage allocation (`huge`) found none free, a PermissionError naming the
 * memlock limit when the memory could not be locked (ENOMEM, EPERM, EAGAIN; only when `locked`,
 * the default: without mlock those mean the memory itself ran out), else a NativeError.
 * `errnoText` is how the messages name the errno (default "errno 12").
 */
export function dmaAllocError(
  size: number,
  errno: number,
  opts: { huge?: boolean; locked?: boolean; errnoText?: (errno: number) => string } = {},
): Error {
  const why = (opts.errnoText ?? ((e: number) => `errno ${e}`))(errno);
  if (opts.huge === true && errno === ENOMEM) {
    return new PermissionError(
      `no free 2 MiB hugepage for ${size} bytes of DMA memory: reserve some as root: echo 64 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`,
    );
  }
  if (opts.locked !== false && (errno === ENOMEM || errno === EPERM || errno === EAGAIN)) return memlockError(size, why);
  return new NativeError(`DMA allocation of ${size} bytes failed: ${why}`, errno, "nvm_dma_alloc");
}

/**
 * The PermissionError for `size` bytes of DMA memory that would take the process over
 * RLIMIT_MEMLOCK, whoever counted it (mlock here, or the kernel's pin: VFIO, the disnvm module);
 * `why` names the failed call and errno.
 */
export function memlockError(size: number, why: string): PermissionError {
  return new PermissionError(
    `cannot lock ${size} bytes of DMA memory (${why}): raise the memlock limit (\`ulimit -l unlimited\`, or LimitMEMLOCK= for a service)`,
  );
}

/**
 * freeDma's order: forget `mapping` (nothing happens when it is not in `live`: freed already, or
 * not this backend's), revoke every view of it, and only then `release` it (unmap, free).
 */
export function freeLive<A extends DmaMapping>(live: Set<A>, mapping: DmaMapping, release: (a: A) => void): void {
  const a = mapping as A;
  if (!live.delete(a)) return;
  a.revoke?.();
  release(a);
}

/** True when the (lo, hi) bus addresses in `iova` are consecutive 4 KiB pages. */
export function isContiguous(iova: Uint32Array): boolean {
  for (let i = 2; i < iova.length; i += 2) {
    const prev = iova[i - 2]! + iova[i - 1]! * TWO32;
    const cur = iova[i]! + iova[i + 1]! * TWO32;
    if (cur !== prev + HOST_PAGE_SIZE) return false;
  }
  return true;
}
