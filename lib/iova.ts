/**
 * An I/O virtual address allocator for a device behind an IOMMU (the VFIO backend): hands out
 * IOVA ranges inside the apertures the IOMMU reports (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE),
 * aligned to its smallest page size (iova_pgsizes), first fit, with freed ranges reused and
 * merged with their free neighbours. Pure bookkeeping: nothing here touches the IOMMU.
 *
 * Addresses are JS numbers, exact up to 2^53 (8 PiB); apertures above that are cut there.
 */
import { DeviceError, InvalidArgumentError } from "./errors.ts";

/** A range of IOVAs, `end` inclusive, as VFIO reports them (struct vfio_iova_range). */
export interface IovaRange {
  readonly start: number;
  readonly end: number;
}

export interface IovaAllocatorOptions {
  /**
   * Allocation unit and alignment in bytes (a power of two, at least 4096). Defaults to 4096;
   * use `iovaGranule(pgsizes)` for what the IOMMU reports.
   */
  readonly granule?: number;
  /**
   * Lowest IOVA handed out; nothing below it is used. Defaults to 0x1000_0000 (256 MiB): IOVA 0
   * is never valid, so a zeroed PRP entry — the classic bug — faults in the IOMMU instead of
   * reaching a live buffer, and small bogus addresses stay unmapped too.
   */
  readonly base?: number;
}

export const IOVA_DEFAULT_BASE = 0x1000_0000;
const MIN_GRANULE = 4096;
/** Highest address kept exactly by a JS number, rounded down to the largest granule we accept. */
const MAX_IOVA = Number.MAX_SAFE_INTEGER;
const TWO32 = 0x1_0000_0000;

/**
 * The allocation unit for an IOMMU: its smallest supported page size (lowest set bit of the
 * iova_pgsizes bitmap, given as two u32 halves), and never below 4096.
 */
export function iovaGranule(pgsizesLo: number, pgsizesHi = 0): number {
  const lo = pgsizesLo >>> 0;
  const hi = pgsizesHi >>> 0;
  // x & -x isolates the lowest set bit (as a signed 32-bit value: >>> 0 makes bit 31 positive).
  if (lo !== 0) return Math.max(MIN_GRANULE, (lo & -lo) >>> 0);
  if (hi !== 0) return ((hi & -hi) >>> 0) * TWO32;
  return MIN_GRANULE; // not reported: the host page
}

/** A 64-bit value from two u32 halves; values past 2^53 come back as Infinity (unrepresentable). */
export function join64(lo: number, hi: number): number {
  const v = (hi >>> 0) * TWO32 + (lo >>> 0);
  return v > MAX_IOVA ? Infinity : v;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

const hex = (v: number) => "0x" + v.toString(16);

export class IovaAllocator {
  readonly granule: number;
  readonly base: number;
  /** The usable apertures after clipping to [base, 2^53) and to the granule; exclusive ends. */
  readonly apertures: readonly { readonly start: number; readonly end: number }[];
  /** Free intervals [start, end), sorted by start, never touching (touching ones are merged). */
  readonly #free: { start: number; end: number }[] = [];
  /** Allocated start -> size. */
  readonly #used = new Map<number, number>();
  #usedBytes = 0;

  constructor(ranges: readonly IovaRange[], opts: IovaAllocatorOptions = {}) {
    const granule = opts.granule ?? MIN_GRANULE;
    if (!isPowerOfTwo(granule) || granule < MIN_GRANULE) {
      throw new InvalidArgumentError(`IOVA granule ${granule} must be a power of two of at least ${MIN_GRANULE}`);
    }
    const base = opts.base ?? IOVA_DEFAULT_BASE;
    if (!Number.isSafeInteger(base) || base <= 0) {
      throw new InvalidArgumentError(`IOVA base ${base} must be a positive integer: IOVA 0 is never handed out`);
    }
    this.granule = granule;
    this.base = base;
    const spans: { start: number; end: number }[] = [];
    for (const r of ranges) {
      if (!(r.start >= 0) || !(r.end >= r.start)) {
        throw new InvalidArgumentError(`IOVA range ${hex(r.start)}-${hex(r.end)} is not a range (end is inclusive)`);
      }
      const start = this.#alignUp(Math.max(r.start, base, granule));
      // Inclusive end -> exclusive, cut at 2^53 so every address stays exact.
      const end = Math.floor(Math.min(r.end + 1, MAX_IOVA) / granule) * granule;
      if (end > start) spans.push({ start, end });
    }
    spans.sort((a, b) => a.start - b.start);
    for (const s of spans) {
      const last = this.#free.at(-1);
      if (last && s.start <= last.end) last.end = Math.max(last.end, s.end); // overlapping reports
      else this.#free.push({ ...s });
    }
    if (this.#free.length === 0) {
      const list = ranges.map((r) => `${hex(r.start)}-${hex(r.end)}`).join(", ") || "none";
      throw new DeviceError(`the IOMMU reports no usable IOVA range at or above ${hex(base)} (ranges: ${list})`);
    }
    this.apertures = this.#free.map((f) => Object.freeze({ ...f }));
  }

  #alignUp(v: number, align = this.granule): number {
    return Math.ceil(v / align) * align;
  }

  /** Bytes handed out and not yet freed. */
  get allocatedBytes(): number {
    return this.#usedBytes;
  }

  /** Number of live allocations. */
  get allocations(): number {
    return this.#used.size;
  }

  /** Free bytes in all apertures. */
  get freeBytes(): number {
    let n = 0;
    for (const f of this.#free) n += f.end - f.start;
    return n;
  }

  /** The largest single range alloc() could still return. */
  get largestFree(): number {
    let n = 0;
    for (const f of this.#free) n = Math.max(n, f.end - f.start);
    return n;
  }

  /** The free intervals [start, end), for diagnostics and tests. */
  freeRanges(): { start: number; end: number }[] {
    return this.#free.map((f) => ({ ...f }));
  }

  /** The size of the allocation starting at `iova`, or undefined. */
  sizeOf(iova: number): number | undefined {
    return this.#used.get(iova);
  }

  /**
   * Reserve `size` bytes (rounded up to the granule) of IOVA space, first fit from the lowest
   * address, aligned to the granule or to `align` (a power of two) when larger. Returns the start.
   */
  alloc(size: number, align = this.granule): number {
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`IOVA allocation size ${size} must be a positive integer`);
    if (!isPowerOfTwo(align)) throw new InvalidArgumentError(`IOVA alignment ${align} must be a power of two`);
    const bytes = this.#alignUp(size);
    const a = Math.max(align, this.granule);
    for (let i = 0; i < this.#free.length; i++) {
      const f = this.#free[i]!;
      const start = this.#alignUp(f.start, a);
      if (start + bytes > f.end) continue;
      // Carve [start, start+bytes) out: up to a piece before (alignment) and one after.
      const pieces: { start: number; end: number }[] = [];
      if (start > f.start) pieces.push({ start: f.start, end: start });
      if (start + bytes < f.end) pieces.push({ start: start + bytes, end: f.end });
      this.#free.splice(i, 1, ...pieces);
      this.#used.set(start, bytes);
      this.#usedBytes += bytes;
      return start;
    }
    throw new DeviceError(
      `IOVA space exhausted: no free range of ${bytes} bytes` +
        `${a > this.granule ? ` aligned to ${hex(a)}` : ""} (largest free ${this.largestFree} bytes, ` +
        `${this.#usedBytes} bytes in ${this.#used.size} mappings): free DMA buffers first`,
    );
  }

  /**
   * Give back the allocation starting at `iova`; its space merges with free neighbours. An address
   * that is not the start of a live allocation (a double free) is an InvalidArgumentError.
   */
  free(iova: number): void {
    const bytes = this.#used.get(iova);
    if (bytes === undefined) {
      throw new InvalidArgumentError(`IOVA ${hex(iova)} is not the start of an allocated range (freed twice?)`);
    }
    this.#used.delete(iova);
    this.#usedBytes -= bytes;
    const end = iova + bytes;
    // Binary search: the first free interval starting after iova.
    let lo = 0;
    let hi = this.#free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#free[mid]!.start < iova) lo = mid + 1;
      else hi = mid;
    }
    const prev = this.#free[lo - 1];
    const next = this.#free[lo];
    if (prev && prev.end === iova && next && next.start === end) {
      prev.end = next.end;
      this.#free.splice(lo, 1);
    } else if (prev && prev.end === iova) {
      prev.end = end;
    } else if (next && next.start === end) {
      next.start = iova;
    } else {
      this.#free.splice(lo, 0, { start: iova, end });
    }
  }
}
