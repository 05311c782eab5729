/**
 * Physical Region Page entries (NVMe Base 2.0, 4.1.1): how a command names its data.
 * PRP1 may start inside a page; every later entry is page aligned. Offsets are relative to `data`,
 * page boundaries those of its mapping (`data.base`), so regions work too. Two pages fit in
 * PRP1+PRP2; more need PRP2 to point at a list, whose last entry chains to the next list
 * page when the transfer needs more than a page of entries.
 */
import { InvalidArgumentError } from "./errors.ts";
import type { DmaBuffer } from "./dma.ts";
import { hi32, lo32 } from "./spec/commands.ts";

export const PRP_PAGE_SIZE = 4096;
const ENTRIES_PER_LIST = PRP_PAGE_SIZE / 8;

export interface PrpPair {
  prp1: number;
  prp2: number;
}

/** How many list pages a transfer of `length` bytes starting at page offset `first` needs. */
export function prpListPages(first: number, length: number): number {
  const pages = Math.ceil(((first % PRP_PAGE_SIZE) + length) / PRP_PAGE_SIZE);
  if (pages <= 2) return 0;
  const entries = pages - 1; // PRP1 covers the first page
  // Each full list page holds 511 entries plus a chain pointer, except the last.
  return entries <= ENTRIES_PER_LIST ? 1 : Math.ceil((entries - 1) / (ENTRIES_PER_LIST - 1));
}

/**
 * Describe [offset, offset+length) of `data`; writes list entries into `list` (a DMA buffer
 * of at least prpListPages() pages, starting at listOffset) when more than two pages are needed.
 */
export function buildPrp(data: DmaBuffer, offset: number, length: number, list?: DmaBuffer, listOffset = 0): PrpPair {
  const prp2 = prp2For(data, offset, length, list, listOffset);
  return { prp1: data.busAddress(offset), prp2 };
}

/**
 * The same, written straight into DPTR (dwords 6-9) of the SQE at dword offset `o`: the I/O
 * path's variant, which allocates nothing.
 */
export function writePrp(sqe: Uint32Array, o: number, data: DmaBuffer, offset: number, length: number, list?: DmaBuffer, listOffset = 0): void {
  if (!(length > 0 && offset >= 0 && offset + length <= data.size)) checkSpan(data, offset, length);
  const at = data.base + offset;
  const page = Math.floor(at / PRP_PAGE_SIZE);
  const inPage = at - page * PRP_PAGE_SIZE;
  if (inPage + length <= 2 * PRP_PAGE_SIZE) return writePrpPair(sqe, o, data.iova, page, inPage, length);
  const prp1 = data.busAddress(offset);
  const prp2 = prp2For(data, offset, length, list, listOffset);
  sqe[o + 6] = lo32(prp1);
  sqe[o + 7] = hi32(prp1);
  sqe[o + 8] = lo32(prp2);
  sqe[o + 9] = hi32(prp2);
}

/**
 * PRP1 and PRP2 of a transfer within two pages (`inPage + bytes` <= 8 KiB), page `page` of a
 * mapping's per-4 KiB-page (lo, hi) bus addresses, with integer stores only: page bus addresses
 * are 4 KiB aligned, so lo + the in-page offset never carries into hi. Small enough for the JIT
 * to inline into an I/O loop (IoQueue.rw): literals, not module constants.
 */
export function writePrpPair(sqe: Uint32Array, o: number, iova: Uint32Array, page: number, inPage: number, bytes: number): void {
  const p = 2 * page;
  sqe[o + 6] = iova[p]! + inPage;
  sqe[o + 7] = iova[p + 1]!;
  const second = inPage + bytes > 4096;
  sqe[o + 8] = second ? iova[p + 2]! : 0;
  sqe[o + 9] = second ? iova[p + 3]! : 0;
}

function checkSpan(data: DmaBuffer, offset: number, length: number): void {
  if (!(length > 0)) throw new InvalidArgumentError(`transfer length must be positive, got ${length}`);
  if (!(offset >= 0 && offset + length <= data.size)) {
    throw new InvalidArgumentError(`buffer too small: ${offset}+${length} bytes asked of a ${data.size}-byte DMA buffer`);
  }
}

/** PRP2 for the transfer: 0, the second page, or the list (which it fills). */
function prp2For(data: DmaBuffer, offset: number, length: number, list: DmaBuffer | undefined, listOffset: number): number {
  checkSpan(data, offset, length);
  // Page boundaries are those of the mapping: a region may start inside a page.
  const firstPageBytes = PRP_PAGE_SIZE - ((data.base + offset) % PRP_PAGE_SIZE);
  if (length <= firstPageBytes) return 0;
  const nextPage = offset + firstPageBytes;
  if (length <= firstPageBytes + PRP_PAGE_SIZE) return data.busAddress(nextPage);

  const need = prpListPages(data.base + offset, length);
  if (!list || (list.base + listOffset) % PRP_PAGE_SIZE !== 0 || listOffset + need * PRP_PAGE_SIZE > list.size) {
    throw new InvalidArgumentError(`a ${length}-byte transfer needs ${need} PRP list page(s)`);
  }
  // Every entry is a whole page of `data` and every chain pointer a whole list page: their bus
  // addresses come straight from the mappings' page tables, as (lo, hi) integer pairs, with no
  // per-entry busAddress() and no 64-bit arithmetic (a 128 KiB command fills 31 entries).
  const u32 = list.u32;
  const dataIova = data.iova;
  const listIova = list.iova;
  let remaining = length - firstPageBytes;
  let dataPage = (data.base + nextPage) / PRP_PAGE_SIZE; // page index in data's mapping
  let listPage = (list.base + listOffset) / PRP_PAGE_SIZE; // page index in list's mapping
  let o = listOffset / 4; // dword of the next entry in the list's view
  let slot = 0;
  while (remaining > 0) {
    // Last slot of a list page chains to the next one, unless this entry is the final one.
    if (slot === ENTRIES_PER_LIST - 1 && remaining > PRP_PAGE_SIZE) {
      listPage++;
      u32[o] = listIova[2 * listPage]!;
      u32[o + 1] = listIova[2 * listPage + 1]!;
      o += 2;
      slot = 0;
    }
    u32[o] = dataIova[2 * dataPage]!;
    u32[o + 1] = dataIova[2 * dataPage + 1]!;
    o += 2;
    slot++;
    dataPage++;
    remaining -= PRP_PAGE_SIZE;
  }
  return list.busAddress(listOffset);
}
