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

/**
 * Another process that keeps this process's DMA memory alive (a served controller's server,
 * lib/share): each mapping is a memfd whose descriptor hold() hands over, so its pages are not
 * freed when this process dies, only once that process let them go (after deleting our queues).
 */
export interface MemoryHolder {
  /** Hand over the memfd `fd` of `bytes` bytes; returns its handle. The caller closes its own fd. */
  hold(fd: number, bytes: number): number;
  /** The memory of `handle` is unmapped here and reached by no command: it may go. */
  release(handle: number): void;
}

export class HugetlbProvider implements HugepageProvider {
  readonly #reservation: HugepageReservation;
  readonly #holder: MemoryHolder | undefined;
  /** Held mappings: first vaddr → handle, hugepages still mapped, count. */
  readonly #held = new Map<number, { handle: number; mapped: number; count: number }>();

  constructor(reservation: HugepageReservation = new HugepageReservation(), holder?: MemoryHolder) {
    this.#reservation = reservation;
    this.#holder = holder;
  }

  #alloc(bytes: number): { vaddr: Pointer | null; fd: number } {
    const n = native();
    if (!this.#holder) return { vaddr: n.nvm_dma_alloc(bytes, DMA_HUGE), fd: -1 };
    const out = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
    try {
      const vaddr = n.nvm_dma_alloc_fd(bytes, DMA_HUGE, out);
      return { vaddr, fd: vaddr === null ? -1 : new Int32Array(toArrayBuffer(out, 0, 4))[0]! };
    } finally {
      n.nvm_host_free(out);
    }
  }

  map(count: number): HugepageMapping {
    const n = native();
    const bytes = count * HUGE_PAGE_SIZE;
    if (bytes > MAX_MAPPING) throw new InvalidArgumentError(`DMA allocation of ${bytes} bytes: the sysfs backend maps at most ${MAX_MAPPING} bytes at once`);
    let { vaddr, fd } = this.#alloc(bytes);
    for (let tries = 0; vaddr === null; tries++) {
      const errno = n.nvm_last_error();
      if (errno !== ENOMEM) throw dmaAllocError(bytes, errno, { huge: true });
      if (tries === RAISE_TRIES) {
        throw new DeviceError(
          `no free 2 MiB hugepage for ${bytes} bytes of DMA memory although libnvm raised the pool ${RAISE_TRIES} times: other processes took the pages first; reserve enough up front: echo <pages> > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`,
        );
      }
      this.#reservation.raise(count);
      ({ vaddr, fd } = this.#alloc(bytes));
    }
    try {
      const m = { vaddr: Number(vaddr), bus: physAddrs(vaddr, count), bytes: new Uint8Array(toArrayBuffer(vaddr, 0, bytes)) };
      if (this.#holder) this.#held.set(m.vaddr, { handle: this.#holder.hold(fd, bytes), mapped: count, count });
      return m;
    } catch (e) {
      n.nvm_dma_free(vaddr, bytes, DMA_HUGE);
      throw e;
    } finally {
      // The holder has its own descriptor now; ours would keep the pages after we unmapped them.
      if (fd >= 0) n.nvm_unix_close(fd);
    }
  }

  unmap(vaddr: number): void {
    check(native().nvm_dma_free(vaddr as Pointer, HUGE_PAGE_SIZE, DMA_HUGE), "nvm_dma_free");
    if (!this.#holder) return;
    for (const [start, h] of this.#held) {
      if (vaddr < start || vaddr >= start + h.count * HUGE_PAGE_SIZE) continue;
      if (--h.mapped === 0) {
        this.#held.delete(start);
        this.#holder.release(h.handle);
      }
      return;
    }
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
