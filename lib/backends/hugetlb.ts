/**
 * The sysfs backend's hugepages: 2 MiB hugetlb mappings (nvm_dma_alloc with NVM_DMA_HUGE, i.e.
 * MAP_HUGETLB | MAP_HUGE_2MB on the kernel's internal hugetlbfs), the physical address of each
 * hugepage read once from /proc/self/pagemap, and the pool raised when it has none free.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { DeviceError, InvalidArgumentError, PermissionError } from "../errors.ts";
import { check, checkPtr, native } from "../native.ts";
import { DMA_HUGE, dmaAllocError } from "./dma-common.ts";
import { HugepageReservation } from "./hugepage-reserve.ts";
import { HUGE_PAGE_SIZE, type HugepageMapping, type HugepageProvider } from "./hugepages.ts";

const TWO32 = 0x1_0000_0000;
const ENOMEM = 12;
/** nvm_dma_alloc takes a u32 size. */
const MAX_MAPPING = Math.floor(0xffff_ffff / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
/** Raises in a row before giving up: another process may take the pages we reserved. */
const RAISE_TRIES = 3;

export class HugetlbProvider implements HugepageProvider {
  readonly #reservation: HugepageReservation;

  constructor(reservation: HugepageReservation = new HugepageReservation()) {
    this.#reservation = reservation;
  }

  map(count: number): HugepageMapping {
    const n = native();
    const bytes = count * HUGE_PAGE_SIZE;
    if (bytes > MAX_MAPPING) throw new InvalidArgumentError(`DMA allocation of ${bytes} bytes: the sysfs backend maps at most ${MAX_MAPPING} bytes at once`);
    let vaddr = n.nvm_dma_alloc(bytes, DMA_HUGE);
    for (let tries = 0; vaddr === null; tries++) {
      const errno = n.nvm_last_error();
      if (errno !== ENOMEM) throw dmaAllocError(bytes, errno, { huge: true });
      if (tries === RAISE_TRIES) {
        throw new DeviceError(
          `no free 2 MiB hugepage for ${bytes} bytes of DMA memory although libnvm raised the pool ${RAISE_TRIES} times: other processes took the pages first; reserve enough up front: echo <pages> > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`,
        );
      }
      this.#reservation.raise(count);
      vaddr = n.nvm_dma_alloc(bytes, DMA_HUGE);
    }
    try {
      return { vaddr: Number(vaddr), bus: physAddrs(vaddr, count), bytes: new Uint8Array(toArrayBuffer(vaddr, 0, bytes)) };
    } catch (e) {
      n.nvm_dma_free(vaddr, bytes, DMA_HUGE);
      throw e;
    }
  }

  unmap(vaddr: number): void {
    check(native().nvm_dma_free(vaddr as Pointer, HUGE_PAGE_SIZE, DMA_HUGE), "nvm_dma_free");
  }

  close(): void {
    this.#reservation.release();
  }
}

/** The physical address of each of `count` hugepages at `vaddr`: one pagemap entry per hugepage. */
function physAddrs(vaddr: Pointer, count: number): number[] {
  const n = native();
  const out = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
  const pa = new Uint32Array(toArrayBuffer(out, 0, 8));
  try {
    const bus: number[] = [];
    for (let i = 0; i < count; i++) {
      const rc = n.nvm_phys_addrs((Number(vaddr) + i * HUGE_PAGE_SIZE) as Pointer, 1, out);
      if (rc === -1) throw new PermissionError("/proc/self/pagemap gave physical page 0: this process lacks CAP_SYS_ADMIN; run as root");
      check(rc, "read /proc/self/pagemap");
      const a = pa[0]! + pa[1]! * TWO32;
      // A hugetlb page is one naturally aligned 2 MiB frame; anything else is not what was mapped.
      if (a % HUGE_PAGE_SIZE !== 0) throw new DeviceError(`the mapping at 0x${(Number(vaddr) + i * HUGE_PAGE_SIZE).toString(16)} is not a 2 MiB hugepage (physical 0x${a.toString(16)})`);
      bus.push(a);
    }
    return bus;
  } finally {
    n.nvm_host_free(out);
  }
}
