/**
 * DMA memory carved out of 2 MiB hugepages in runs of whole 4 KiB pages: the sysfs backend's
 * allocator.
 *
 * Why hugepages: the sysfs backend hands the controller physical addresses, so the memory behind
 * them must never move. mlock keeps a page resident, not in place: compaction, NUMA balancing and
 * THP collapse migrate mlocked 4 KiB pages. hugetlb pages are outside all three (SPDK keeps its
 * DMA memory in hugetlbfs for the same reason); what can still move one is memory hot-unplug, the
 * kernel retiring a page with a memory error, or (recent kernels) a large contiguous allocation
 * such as CMA, none of which a userspace driver can prevent.
 *
 * Why runs: a queue, a PRP list page or a scratch page is 4 KiB, and a hugepage each would cost
 * 512 times that. A run of up to 2 MiB lies inside one hugepage, so it is physically contiguous;
 * a larger one gets hugepages of its own, mapped back to back, and is contiguous on the bus only
 * where the kernel happened to hand out consecutive hugepages. A hugepage is unmapped as soon as
 * its last run is freed, so nothing is held that no buffer uses.
 */
import type { Pointer } from "bun:ffi";
import { DeviceError, InvalidArgumentError } from "../errors.ts";
import { HOST_PAGE_SIZE, type DmaMapping } from "./types.ts";

export const HUGE_PAGE_SIZE = 2 << 20;
/** 4 KiB pages per hugepage. */
export const HUGE_PAGE_PAGES = HUGE_PAGE_SIZE / HOST_PAGE_SIZE;

const TWO32 = 0x1_0000_0000;

/** `bus.length` hugepages mapped back to back. */
export interface HugepageMapping {
  /** Host virtual address of the first byte, 2 MiB aligned. */
  readonly vaddr: number;
  /** Bus address of each hugepage, in order. */
  readonly bus: readonly number[];
  /** The whole mapping, for zeroing runs that are handed out again. */
  readonly bytes: Uint8Array;
}

/** Where the hugepages come from: hugetlb for the sysfs backend (hugetlb.ts), plain memory in unit tests. */
export interface HugepageProvider {
  /** Map `count` zeroed, locked hugepages back to back; throws a typed error when it cannot. */
  map(count: number): HugepageMapping;
  /** Unmap the one hugepage at `vaddr` (2 MiB aligned, part of an earlier map()). */
  unmap(vaddr: number): void;
  /** Nothing more will be mapped: give back what was reserved for this provider. */
  close(): void;
}

interface Hugepage {
  readonly vaddr: number;
  readonly bus: number;
  readonly bytes: Uint8Array;
  /** Per 4 KiB page: 1 while a run holds it. */
  readonly used: Uint8Array;
  /** Per 4 KiB page: 1 once handed out, so it is zeroed before it is handed out again. */
  readonly dirty: Uint8Array;
  inUse: number;
}

interface Run {
  /** The hugepages the run covers, in address order. */
  readonly pages: readonly Hugepage[];
  /** First 4 KiB page of the run in pages[0]. */
  readonly first: number;
  readonly count: number;
}

export class HugepagePool {
  readonly #provider: HugepageProvider;
  /** Mapped hugepages by address, in the order they were mapped (first fit searches them so). */
  readonly #huge = new Map<number, Hugepage>();
  readonly #runs = new Map<DmaMapping, Run>();
  #closed = false;

  constructor(provider: HugepageProvider) {
    this.#provider = provider;
  }

  /** Hugepages mapped now. */
  get hugepages(): number {
    return this.#huge.size;
  }

  /** Runs handed out and not freed. */
  get runs(): number {
    return this.#runs.size;
  }

  /**
   * A zeroed run of whole 4 KiB pages covering `size` bytes. Up to 2 MiB it lies in one hugepage
   * (physically contiguous). Larger, it takes hugepages of its own; with `contiguous` they must be
   * consecutive on the bus, else a DeviceError and nothing is kept.
   */
  alloc(size: number, contiguous = false): DmaMapping {
    if (this.#closed) throw new DeviceError("the hugepage pool is closed (its backend was closed)");
    if (!Number.isInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA allocation of ${size} bytes: must be a positive integer`);
    const count = Math.ceil(size / HOST_PAGE_SIZE);
    if (count <= HUGE_PAGE_PAGES) return this.#small(count);
    return this.#large(size, count, contiguous);
  }

  #small(count: number): DmaMapping {
    for (const h of this.#huge.values()) {
      if (HUGE_PAGE_PAGES - h.inUse < count) continue;
      const at = firstFit(h.used, count);
      if (at >= 0) return this.#take([h], at, count, true);
    }
    const [h] = this.#adopt(this.#provider.map(1));
    return this.#take([h!], 0, count, true);
  }

  #large(size: number, count: number, contiguous: boolean): DmaMapping {
    const n = Math.ceil(count / HUGE_PAGE_PAGES);
    const hs = this.#adopt(this.#provider.map(n));
    let consecutive = true;
    for (let i = 1; i < hs.length; i++) if (hs[i]!.bus !== hs[i - 1]!.bus + HUGE_PAGE_SIZE) consecutive = false;
    if (contiguous && !consecutive) {
      for (const h of hs) this.#unmap(h);
      throw new DeviceError(
        `could not get ${size} physically contiguous bytes: the ${n} hugepages the kernel gave are not consecutive in memory, and one hugepage holds 2 MiB. ` +
          `Keep contiguous ranges (queues: entries x entry size) to 2 MiB, or use the VFIO backend, where the IOMMU makes any mapping contiguous`,
      );
    }
    return this.#take(hs, 0, count, consecutive);
  }

  #adopt(m: HugepageMapping): Hugepage[] {
    return m.bus.map((bus, i) => {
      const h: Hugepage = {
        vaddr: m.vaddr + i * HUGE_PAGE_SIZE,
        bus,
        bytes: m.bytes.subarray(i * HUGE_PAGE_SIZE, (i + 1) * HUGE_PAGE_SIZE),
        used: new Uint8Array(HUGE_PAGE_PAGES),
        dirty: new Uint8Array(HUGE_PAGE_PAGES),
        inUse: 0,
      };
      this.#huge.set(h.vaddr, h);
      return h;
    });
  }

  #take(hs: Hugepage[], first: number, count: number, contiguous: boolean): DmaMapping {
    let left = count;
    let at = first;
    for (const h of hs) {
      const n = Math.min(left, HUGE_PAGE_PAGES - at);
      // Callers expect memory as nvm_dma_alloc gives it: zeroed. Fresh hugepages are; reused pages are not.
      let i = at;
      while (i < at + n) {
        if (h.dirty[i] === 0) {
          i++;
          continue;
        }
        let j = i;
        while (j < at + n && h.dirty[j] === 1) j++;
        h.bytes.fill(0, i * HOST_PAGE_SIZE, j * HOST_PAGE_SIZE);
        i = j;
      }
      h.used.fill(1, at, at + n);
      h.dirty.fill(1, at, at + n);
      h.inUse += n;
      left -= n;
      at = 0;
    }
    const iova = new Uint32Array(2 * count);
    for (let i = 0; i < count; i++) {
      const p = first + i;
      const a = hs[Math.floor(p / HUGE_PAGE_PAGES)]!.bus + (p % HUGE_PAGE_PAGES) * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    const run: DmaMapping = { vaddr: (hs[0]!.vaddr + first * HOST_PAGE_SIZE) as Pointer, size: count * HOST_PAGE_SIZE, iova, contiguous };
    this.#runs.set(run, { pages: hs, first, count });
    return run;
  }

  /** Give a run back; its hugepages are unmapped once no run holds any of their pages. Unknown runs are ignored. */
  free(mapping: DmaMapping): void {
    const r = this.#runs.get(mapping);
    if (!r) return;
    this.#runs.delete(mapping);
    let left = r.count;
    let at = r.first;
    for (const h of r.pages) {
      const n = Math.min(left, HUGE_PAGE_PAGES - at);
      h.used.fill(0, at, at + n);
      h.inUse -= n;
      left -= n;
      at = 0;
    }
    for (const h of r.pages) if (h.inUse === 0) this.#unmap(h);
  }

  #unmap(h: Hugepage): void {
    this.#huge.delete(h.vaddr);
    this.#provider.unmap(h.vaddr);
  }

  /**
   * No more allocations; the provider gives back its reservation. Runs never freed (abandoned:
   * the controller may still reach them) keep their hugepages mapped until the process exits.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#provider.close();
  }
}

/** Index of the first `count` consecutive free pages in `used`, or -1. */
function firstFit(used: Uint8Array, count: number): number {
  let free = 0;
  for (let i = 0; i < used.length; i++) {
    if (used[i] !== 0) free = 0;
    else if (++free === count) return i - count + 1;
  }
  return -1;
}
