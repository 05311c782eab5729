/**
 * Scatter Gather Lists (NVMe Base 2.0, 4.1.2): the other way a command names its data. Where a
 * PRP list needs one entry per 4 KiB page, an SGL Data Block descriptor covers any run of bytes
 * that is one range on the bus, so a bus-contiguous transfer of any size is a single descriptor
 * in SGL1 and a scattered one needs a descriptor per run of adjacent pages.
 *
 * Layout chosen here: SGL1 (DPTR, CDW6..CDW9) is either one Data Block, or a (Last) Segment
 * descriptor pointing at a 4 KiB list page of Data Blocks. A segment holds at most 256
 * descriptors (one page, so it never crosses a page of a scattered list buffer); when more are
 * needed its last slot points at the next list page, as a Segment descriptor, or as a Last
 * Segment descriptor when that next page is the final one. The final segment holds only Data
 * Blocks ("SGL Last Segment descriptor": the segment it points to has no further pointer).
 *
 * Call after the SQE has been written (writeCommand clears PSDT and DPTR): buildSgl overwrites
 * CDW6..CDW9 and sets only CDW0.PSDT.
 */
import { InvalidArgumentError } from "./errors.ts";
import type { DmaBuffer } from "./dma.ts";
import { hi32, lo32 } from "./spec/commands.ts";

/** Every SGL descriptor is 16 bytes (Figure "Generic SGL Descriptor Format"). */
export const SGL_DESC_SIZE = 16;
/** SGL Descriptor Type, SGL Identifier (byte 15) bits 7:4 (Figure "SGL Descriptor Type"). */
export const SGL_TYPE_DATA_BLOCK = 0x0;
export const SGL_TYPE_SEGMENT = 0x2;
export const SGL_TYPE_LAST_SEGMENT = 0x3;
/** SGL Descriptor Sub Type, SGL Identifier bits 3:0: Address (0h), the only one a PCIe host uses. */
export const SGL_SUBTYPE_ADDRESS = 0x0;
/**
 * PRP or SGL for Data Transfer (PSDT), CDW0 bits 15:14: 01b = SGLs are used for this transfer and
 * MPTR holds the address of a contiguous metadata buffer.
 */
export const PSDT_SGL_MPTR_ADDRESS = 1;

/** One list page: 4 KiB, so a segment never crosses a page of the list buffer. */
export const SGL_LIST_PAGE_SIZE = 4096;
const DESCS_PER_PAGE = SGL_LIST_PAGE_SIZE / SGL_DESC_SIZE; // 256
/** DmaBuffer.iova has one bus address per 4 KiB page of the mapping. */
const PAGE = 4096;
/** Data Block Length (bytes 11:8) is 32 bits. */
const MAX_DATA_BLOCK_LENGTH = 0xffff_ffff;
const TWO32 = 0x1_0000_0000;
const PSDT_SHIFT = 14;
const PSDT_MASK = 0x3 << PSDT_SHIFT;

/**
 * What the controller supports, from Identify Controller SGL Support (SGLS, bytes 539:536)
 * bits 1:0: 00b none, 01b supported with no alignment or granularity requirement for Data
 * Blocks, 10b supported with dword alignment and granularity (address and length multiples of
 * 4). 11b is reserved and read as "none".
 */
export function sglSupport(sgls: number): "none" | "byte" | "dword" {
  switch (sgls & 0x3) {
    case 0x1:
      return "byte";
    case 0x2:
      return "dword";
    default:
      return "none";
  }
}

function checkRange(data: DmaBuffer, offset: number, length: number): void {
  if (length <= 0) throw new InvalidArgumentError(`transfer length must be positive, got ${length}`);
  if (offset < 0 || offset + length > data.size) {
    throw new InvalidArgumentError(`buffer too small: ${offset}+${length} bytes asked of a ${data.size}-byte DMA buffer`);
  }
  if (length > MAX_DATA_BLOCK_LENGTH) {
    throw new InvalidArgumentError(`a ${length}-byte transfer exceeds the 32-bit SGL Data Block Length; split it`);
  }
}

/** Bus address of page `p` of `iova` (the (lo, hi) pairs of DmaBuffer.iova). */
const pageBus = (iova: Uint32Array, p: number): number => iova[2 * p]! + iova[2 * p + 1]! * TWO32;

/**
 * Data Block descriptors needed: one per run of pages that are adjacent on the bus. Pages are
 * counted in mapping coordinates (data.base + offset): a region's iova is its parent's, and its
 * page boundaries are the parent's.
 */
function countRuns(data: DmaBuffer, offset: number, length: number): number {
  if (data.contiguous) return 1;
  const iova = data.iova;
  const at = data.base + offset;
  const last = Math.floor((at + length - 1) / PAGE);
  let p = Math.floor(at / PAGE);
  let runs = 1;
  let prev = pageBus(iova, p);
  while (++p <= last) {
    const bus = pageBus(iova, p);
    if (bus !== prev + PAGE) runs++;
    prev = bus;
  }
  return runs;
}

/** List pages for `descs` Data Blocks: 256 in the final segment, 255 plus a pointer in the others. */
function pagesFor(descs: number): number {
  if (descs <= 1) return 0;
  return descs <= DESCS_PER_PAGE ? 1 : Math.ceil((descs - 1) / (DESCS_PER_PAGE - 1));
}

/**
 * How many 4 KiB list pages describing [offset, offset+length) of `data` takes; 0 when the
 * transfer is one bus range and fits in SGL1. Depends on how the buffer's pages lie on the bus.
 */
export function sglListPages(data: DmaBuffer, offset: number, length: number): number {
  checkRange(data, offset, length);
  return pagesFor(countRuns(data, offset, length));
}

/** Write one descriptor at dword `d` of `u`: Address 7:0, Length 11:8, SGL Identifier byte 15. */
function writeDesc(u: Uint32Array, d: number, addr: number, len: number, type: number): void {
  u[d] = lo32(addr);
  u[d + 1] = hi32(addr);
  u[d + 2] = len >>> 0;
  // Bytes 14:12 reserved (zero); byte 15 = Descriptor Type 7:4 | Sub Type 3:0.
  u[d + 3] = (((type << 4) | SGL_SUBTYPE_ADDRESS) << 24) >>> 0;
}

/**
 * Describe [offset, offset+length) of `data` with an SGL: SGL1 goes into CDW6..CDW9 of the SQE at
 * dword offset `o` and CDW0.PSDT becomes 01b (other CDW0 bits kept). When the transfer is more
 * than one bus range, Data Block descriptors go into `list` (a DMA buffer with sglListPages()
 * pages free from the page-aligned `listOffset`).
 */
export function buildSgl(
  sqe: Uint32Array,
  o: number,
  data: DmaBuffer,
  offset: number,
  length: number,
  list?: DmaBuffer,
  listOffset = 0,
): void {
  checkRange(data, offset, length);
  const descs = countRuns(data, offset, length);
  const need = pagesFor(descs);
  // Page aligned in the mapping, not just in a region, so no segment crosses a bus page.
  if (need > 0 && (!list || listOffset < 0 || (list.base + listOffset) % SGL_LIST_PAGE_SIZE !== 0 || listOffset + need * SGL_LIST_PAGE_SIZE > list.size)) {
    const where = list ? ` from a page-aligned offset (got ${listOffset}, buffer base ${list.base}) of the ${list.size}-byte list buffer` : "";
    throw new InvalidArgumentError(`a ${length}-byte transfer in ${descs} bus ranges needs ${need} SGL list page(s)${where}`);
  }

  sqe[o] = ((sqe[o]! & ~PSDT_MASK) | (PSDT_SGL_MPTR_ADDRESS << PSDT_SHIFT)) >>> 0;
  if (descs === 1) {
    writeDesc(sqe, o + 6, data.busAddress(offset), length, SGL_TYPE_DATA_BLOCK);
    return;
  }

  // SGL1 points at the first list page: Last Segment when it holds every descriptor.
  const l = list!;
  const u = l.u32;
  if (need === 1) writeDesc(sqe, o + 6, l.busAddress(listOffset), descs * SGL_DESC_SIZE, SGL_TYPE_LAST_SEGMENT);
  else writeDesc(sqe, o + 6, l.busAddress(listOffset), SGL_LIST_PAGE_SIZE, SGL_TYPE_SEGMENT);

  // Walk in mapping coordinates (see countRuns).
  const iova = data.iova;
  const at = data.base + offset;
  const end = at + length;
  let listPage = listOffset;
  let slot = 0;
  let left = descs; // descriptors not yet written, this one included
  let runStart = data.busAddress(offset);
  let runLen = Math.min(length, PAGE - (at % PAGE));
  let pos = at + runLen; // page aligned from here on
  let prev = pageBus(iova, Math.floor(at / PAGE));
  for (;;) {
    let bus = 0;
    if (pos < end) {
      bus = pageBus(iova, pos / PAGE);
      if (bus === prev + PAGE) {
        runLen += Math.min(PAGE, end - pos);
        pos += PAGE;
        prev = bus;
        continue;
      }
    }
    // The run ends here. In a non-final segment the last slot chains to the next list page,
    // which is the final segment when the descriptors left (this one included) fit in it.
    if (slot === DESCS_PER_PAGE - 1 && left > 1) {
      const next = listPage + SGL_LIST_PAGE_SIZE;
      const final = left <= DESCS_PER_PAGE;
      writeDesc(
        u,
        (listPage + slot * SGL_DESC_SIZE) / 4,
        l.busAddress(next),
        final ? left * SGL_DESC_SIZE : SGL_LIST_PAGE_SIZE,
        final ? SGL_TYPE_LAST_SEGMENT : SGL_TYPE_SEGMENT,
      );
      listPage = next;
      slot = 0;
    }
    writeDesc(u, (listPage + slot * SGL_DESC_SIZE) / 4, runStart, runLen, SGL_TYPE_DATA_BLOCK);
    slot++;
    left--;
    if (pos >= end) break;
    runStart = bus;
    runLen = Math.min(PAGE, end - pos);
    pos += PAGE;
    prev = bus;
  }
}
