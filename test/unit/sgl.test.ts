import { afterAll, describe, expect, test } from "bun:test";
import { DmaBuffer } from "../../lib/dma.ts";
import { InvalidArgumentError } from "../../lib/errors.ts";
import {
  buildSgl,
  PSDT_SGL_MPTR_ADDRESS,
  SGL_DESC_SIZE,
  SGL_TYPE_DATA_BLOCK,
  SGL_TYPE_LAST_SEGMENT,
  SGL_TYPE_SEGMENT,
  sglListPages,
  sglSupport,
} from "../../lib/sgl.ts";
import { addr64, FakeBackend } from "./fake-backend.ts";

const PAGE = 4096;
const TWO32 = 0x1_0000_0000;
const backend = new FakeBackend();
afterAll(() => backend.close());

/** A data buffer of `pages` pages, scattered on the fake bus (every page its own range). */
function data(pages: number): DmaBuffer {
  const d = new DmaBuffer(backend, pages * PAGE);
  expect(d.contiguous).toBe(pages === 1);
  return d;
}

/** A data buffer whose pages are one range on the bus. */
function contiguous(pages: number): DmaBuffer {
  const d = new DmaBuffer(backend, pages * PAGE, { contiguous: true });
  expect(d.contiguous).toBe(true);
  return d;
}

/** A list buffer with every byte 0xff so untouched descriptors are recognisable. */
function list(pages: number): DmaBuffer {
  const l = new DmaBuffer(backend, pages * PAGE);
  l.u32.fill(0xffffffff);
  return l;
}

/** An SQ of two slots, filled with a marker so untouched dwords show. */
function sq(): Uint32Array {
  return new Uint32Array(32).fill(0x5a5a5a5a);
}

/**
 * Rewrite the fake bus layout of a scattered buffer: page i of `runs[k]` pages lands right after
 * page i-1 of the same run, and each run starts 8 KiB after the previous one ends.
 */
function shape(d: DmaBuffer, runs: number[]): void {
  const iova = d.iova;
  let bus = addr64(iova, 0);
  let p = 0;
  for (const n of runs) {
    for (let i = 0; i < n; i++, p++, bus += PAGE) {
      iova[2 * p] = bus % TWO32;
      iova[2 * p + 1] = Math.floor(bus / TWO32);
    }
    bus += 2 * PAGE;
  }
  expect(p * PAGE).toBe(d.size);
}

interface Desc {
  addr: number;
  len: number;
  type: number;
  subtype: number;
  rsvd: number;
}

function desc(u: Uint32Array, d: number): Desc {
  const id = u[d + 3]! >>> 24;
  return { addr: addr64(u, d), len: u[d + 2]!, type: id >>> 4, subtype: id & 0xf, rsvd: u[d + 3]! & 0xffffff };
}

/** Bus address of page i as the fake backend reported it. */
const page = (b: DmaBuffer, i: number) => addr64(b.iova, 2 * i);

/** List page index of `l` whose bus address is `bus`, as a controller would fetch it. */
function listPageAt(l: DmaBuffer, bus: number): number {
  for (let i = 0; i < l.size / PAGE; i++) if (page(l, i) === bus) return i;
  throw new Error(`bus address 0x${bus.toString(16)} is not a page of the list buffer`);
}

/**
 * Follow SGL1 the way a controller does (NVMe Base 2.0, 4.1.2) and check the rules on the way:
 * segments are whole descriptors, only a segment's last descriptor may point on, and the segment
 * a Last Segment descriptor points at holds only Data Blocks. Returns the Data Blocks in order
 * and the list pages visited.
 */
function walk(sqe: Uint32Array, o: number, l?: DmaBuffer): { blocks: Desc[]; pages: number[] } {
  const sgl1 = desc(sqe, o + 6);
  expect(sgl1.subtype).toBe(0);
  expect(sgl1.rsvd).toBe(0);
  if (sgl1.type === SGL_TYPE_DATA_BLOCK) return { blocks: [sgl1], pages: [] };
  if (!l) throw new Error("SGL1 points at a segment but no list buffer was given");
  const blocks: Desc[] = [];
  const pages: number[] = [];
  let ptr = sgl1;
  for (;;) {
    expect([SGL_TYPE_SEGMENT, SGL_TYPE_LAST_SEGMENT]).toContain(ptr.type);
    expect(ptr.len % SGL_DESC_SIZE).toBe(0);
    expect(ptr.len).toBeGreaterThan(0);
    expect(ptr.len).toBeLessThanOrEqual(PAGE);
    const lp = listPageAt(l, ptr.addr);
    pages.push(lp);
    const n = ptr.len / SGL_DESC_SIZE;
    for (let i = 0; i < n - 1; i++) {
      const d = desc(l.u32, lp * 1024 + i * 4);
      expect(d.type).toBe(SGL_TYPE_DATA_BLOCK);
      blocks.push(d);
    }
    const lastD = desc(l.u32, lp * 1024 + (n - 1) * 4);
    expect(lastD.subtype).toBe(0);
    expect(lastD.rsvd).toBe(0);
    if (lastD.type === SGL_TYPE_DATA_BLOCK) {
      // A segment ending in a Data Block is the last one, and must have been named as such.
      expect(ptr.type).toBe(SGL_TYPE_LAST_SEGMENT);
      blocks.push(lastD);
      return { blocks, pages };
    }
    expect(ptr.type).toBe(SGL_TYPE_SEGMENT);
    ptr = lastD;
  }
}

const sum = (blocks: Desc[]) => blocks.reduce((s, b) => s + b.len, 0);

test("layout constants", () => {
  expect(SGL_DESC_SIZE).toBe(16);
  expect([SGL_TYPE_DATA_BLOCK, SGL_TYPE_SEGMENT, SGL_TYPE_LAST_SEGMENT]).toEqual([0x0, 0x2, 0x3]);
  expect(PSDT_SGL_MPTR_ADDRESS).toBe(1);
});

describe("sglSupport (Identify Controller SGLS bits 1:0)", () => {
  test("00b none, 01b byte, 10b dword, 11b reserved = none", () => {
    expect(sglSupport(0)).toBe("none");
    expect(sglSupport(0x1)).toBe("byte");
    expect(sglSupport(0x2)).toBe("dword");
    expect(sglSupport(0x3)).toBe("none");
  });

  test("other SGLS bits do not matter", () => {
    expect(sglSupport(0x0010_0001)).toBe("byte"); // the identify fixture's value
    expect(sglSupport(0xffff_fffe)).toBe("dword");
    expect(sglSupport(0xffff_fffc)).toBe("none");
  });
});

describe("one Data Block in SGL1", () => {
  test("one page", () => {
    using d = data(4);
    using l = list(1);
    const s = sq();
    expect(sglListPages(d, 0, PAGE)).toBe(0);
    buildSgl(s, 0, d, 0, PAGE, l);
    expect(desc(s, 6)).toEqual({ addr: page(d, 0), len: PAGE, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
    buildSgl(s, 0, d, 2 * PAGE + 100, 200);
    expect(desc(s, 6)).toEqual({ addr: page(d, 2) + 100, len: 200, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
    expect(l.u32.every((v) => v === 0xffffffff)).toBe(true);
  });

  test("a contiguous multi-page buffer is one descriptor covering everything", () => {
    using d = contiguous(16);
    const s = sq();
    expect(sglListPages(d, 0, 16 * PAGE)).toBe(0);
    buildSgl(s, 0, d, 0, 16 * PAGE);
    expect(desc(s, 6)).toEqual({ addr: page(d, 0), len: 16 * PAGE, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
    // Starting inside a page and ending inside another.
    buildSgl(s, 0, d, 300, 10 * PAGE + 7);
    expect(desc(s, 6)).toEqual({ addr: page(d, 0) + 300, len: 10 * PAGE + 7, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
  });

  test("a large contiguous transfer needs no list, where PRPs would need two list pages", () => {
    using d = contiguous(1024);
    const s = sq();
    expect(sglListPages(d, 0, 1024 * PAGE)).toBe(0);
    buildSgl(s, 0, d, 0, 1024 * PAGE);
    expect(desc(s, 6).len).toBe(1024 * PAGE);
  });

  test("pages of a scattered buffer that happen to be adjacent on the bus merge", () => {
    using d = data(4);
    shape(d, [4]);
    const s = sq();
    expect(sglListPages(d, 10, 3 * PAGE)).toBe(0);
    buildSgl(s, 0, d, 10, 3 * PAGE);
    expect(desc(s, 6)).toEqual({ addr: page(d, 0) + 10, len: 3 * PAGE, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
  });
});

describe("a Last Segment in SGL1 pointing at one list page", () => {
  test("a scattered buffer: one Data Block per page, partial first and last", () => {
    using d = data(4);
    using l = list(1);
    const s = sq();
    // 3000 bytes of page 0, all of pages 1 and 2, 1 byte of page 3.
    const off = PAGE - 3000;
    const len = 3000 + 2 * PAGE + 1;
    expect(sglListPages(d, off, len)).toBe(1);
    buildSgl(s, 0, d, off, len, l);
    expect(desc(s, 6)).toEqual({ addr: page(l, 0), len: 4 * SGL_DESC_SIZE, type: SGL_TYPE_LAST_SEGMENT, subtype: 0, rsvd: 0 });
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0]);
    expect(blocks.map((b) => [b.addr, b.len])).toEqual([
      [page(d, 0) + off, 3000],
      [page(d, 1), PAGE],
      [page(d, 2), PAGE],
      [page(d, 3), 1],
    ]);
    expect(sum(blocks)).toBe(len);
    expect(l.u32[16]).toBe(0xffffffff); // nothing after the fourth descriptor
  });

  test("runs of bus-adjacent pages become one Data Block each", () => {
    using d = data(8);
    shape(d, [3, 1, 2, 2]); // runs start at pages 0, 3, 4, 6
    using l = list(1);
    const s = sq();
    const off = 1000;
    const len = 8 * PAGE - 1000 - 5; // ends 5 bytes before the end of page 7
    expect(sglListPages(d, off, len)).toBe(1);
    buildSgl(s, 0, d, off, len, l);
    expect(desc(s, 6).type).toBe(SGL_TYPE_LAST_SEGMENT);
    expect(desc(s, 6).len).toBe(4 * SGL_DESC_SIZE);
    const { blocks } = walk(s, 0, l);
    expect(blocks.map((b) => [b.addr, b.len])).toEqual([
      [page(d, 0) + off, 3 * PAGE - off],
      [page(d, 3), PAGE],
      [page(d, 4), 2 * PAGE],
      [page(d, 6), 2 * PAGE - 5],
    ]);
    expect(sum(blocks)).toBe(len);
  });

  test("a transfer inside one run of a shaped buffer needs no list", () => {
    using d = data(8);
    shape(d, [3, 1, 2, 2]);
    const s = sq();
    expect(sglListPages(d, 4 * PAGE + 1, PAGE)).toBe(0);
    buildSgl(s, 0, d, 4 * PAGE + 1, PAGE);
    expect(desc(s, 6)).toEqual({ addr: page(d, 4) + 1, len: PAGE, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
  });

  test("exactly 256 Data Blocks fill one list page with no pointer", () => {
    using d = data(256);
    using l = list(2);
    const s = sq();
    expect(sglListPages(d, 0, 256 * PAGE)).toBe(1);
    buildSgl(s, 0, d, 0, 256 * PAGE, l);
    expect(desc(s, 6)).toEqual({ addr: page(l, 0), len: PAGE, type: SGL_TYPE_LAST_SEGMENT, subtype: 0, rsvd: 0 });
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0]);
    expect(blocks.length).toBe(256);
    for (let i = 0; i < 256; i++) expect(blocks[i]!.addr).toBe(page(d, i));
    expect(l.u32[1024]).toBe(0xffffffff); // second list page untouched
  });

  test("listOffset places the list in a later page of the list buffer", () => {
    using d = data(3);
    using l = list(3);
    const s = sq();
    buildSgl(s, 0, d, 0, 3 * PAGE, l, 2 * PAGE);
    expect(desc(s, 6).addr).toBe(page(l, 2));
    expect(walk(s, 0, l).blocks.map((b) => b.addr)).toEqual([page(d, 0), page(d, 1), page(d, 2)]);
    expect(l.u32.subarray(0, 2048).every((v) => v === 0xffffffff)).toBe(true);
  });
});

describe("chained segments past 256 descriptors", () => {
  test("257: SGL1 is a Segment; the first page's last slot is a Last Segment to page 2", () => {
    using d = data(257);
    using l = list(2);
    const s = sq();
    expect(sglListPages(d, 0, 257 * PAGE)).toBe(2);
    buildSgl(s, 0, d, 0, 257 * PAGE, l);
    expect(desc(s, 6)).toEqual({ addr: page(l, 0), len: PAGE, type: SGL_TYPE_SEGMENT, subtype: 0, rsvd: 0 });
    // The list is scattered too: the pointer is list page 1's own bus address.
    expect(desc(l.u32, 255 * 4)).toEqual({ addr: page(l, 1), len: 2 * SGL_DESC_SIZE, type: SGL_TYPE_LAST_SEGMENT, subtype: 0, rsvd: 0 });
    expect(page(l, 1)).not.toBe(page(l, 0) + PAGE);
    expect(desc(l.u32, 254 * 4).addr).toBe(page(d, 254));
    expect(desc(l.u32, 1024).addr).toBe(page(d, 255));
    expect(desc(l.u32, 1028).addr).toBe(page(d, 256));
    expect(l.u32[1024 + 8]).toBe(0xffffffff);
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0, 1]);
    expect(blocks.length).toBe(257);
    expect(sum(blocks)).toBe(257 * PAGE);
  });

  test("511 = 255 + 256: the second page is full and ends in a Data Block", () => {
    using d = data(511);
    using l = list(2);
    const s = sq();
    expect(sglListPages(d, 0, 511 * PAGE)).toBe(2);
    buildSgl(s, 0, d, 0, 511 * PAGE, l);
    expect(desc(l.u32, 255 * 4)).toMatchObject({ addr: page(l, 1), len: PAGE, type: SGL_TYPE_LAST_SEGMENT });
    expect(desc(l.u32, 1024 + 255 * 4)).toMatchObject({ addr: page(d, 510), type: SGL_TYPE_DATA_BLOCK });
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0, 1]);
    expect(blocks.map((b) => b.addr)).toEqual(Array.from({ length: 511 }, (_, i) => page(d, i)));
  });

  test("512 chains twice: Segment, Segment, Last Segment", () => {
    using d = data(512);
    using l = list(3);
    const s = sq();
    expect(sglListPages(d, 0, 512 * PAGE)).toBe(3);
    buildSgl(s, 0, d, 0, 512 * PAGE, l);
    expect(desc(s, 6)).toMatchObject({ addr: page(l, 0), len: PAGE, type: SGL_TYPE_SEGMENT });
    expect(desc(l.u32, 255 * 4)).toMatchObject({ addr: page(l, 1), len: PAGE, type: SGL_TYPE_SEGMENT });
    expect(desc(l.u32, 1024 + 255 * 4)).toMatchObject({ addr: page(l, 2), len: 2 * SGL_DESC_SIZE, type: SGL_TYPE_LAST_SEGMENT });
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0, 1, 2]);
    expect(blocks.map((b) => b.addr)).toEqual(Array.from({ length: 512 }, (_, i) => page(d, i)));
    expect(l.u32[2048 + 8]).toBe(0xffffffff);
  });

  test("an offset start and a partial end across a chain", () => {
    using d = data(258);
    using l = list(2);
    const s = sq();
    const off = PAGE + 100; // skip page 0: pages 1..257 touched, 257 descriptors
    const len = 256 * PAGE + 50;
    expect(sglListPages(d, off, len)).toBe(2);
    buildSgl(s, 0, d, off, len, l);
    const { blocks } = walk(s, 0, l);
    expect(blocks.length).toBe(257);
    expect(blocks[0]).toMatchObject({ addr: page(d, 1) + 100, len: PAGE - 100 });
    expect(blocks[256]).toMatchObject({ addr: page(d, 257), len: 150 });
    expect(sum(blocks)).toBe(len);
  });

  test("merging decides the count: 600 pages in 300 runs of two need two list pages", () => {
    using d = data(600);
    shape(d, Array.from({ length: 300 }, () => 2));
    using l = list(2);
    const s = sq();
    expect(sglListPages(d, 0, 600 * PAGE)).toBe(2);
    buildSgl(s, 0, d, 0, 600 * PAGE, l);
    const { blocks, pages } = walk(s, 0, l);
    expect(pages).toEqual([0, 1]);
    expect(blocks.length).toBe(300);
    for (let i = 0; i < 300; i++) expect(blocks[i]).toMatchObject({ addr: page(d, 2 * i), len: 2 * PAGE });
  });

  test("sglListPages is what buildSgl uses, for many shapes", () => {
    using d = data(1100);
    using l = list(5);
    const s = sq();
    for (const [off, len] of [
      [0, 1],
      [5, 2 * PAGE],
      [0, 256 * PAGE],
      [1, 256 * PAGE],
      [0, 511 * PAGE],
      [4095, 511 * PAGE + 2],
      [0, 766 * PAGE],
      [0, 767 * PAGE],
      [0, 1100 * PAGE],
    ] as const) {
      l.u32.fill(0xffffffff);
      const need = sglListPages(d, off, len);
      buildSgl(s, 0, d, off, len, l);
      const { blocks, pages } = walk(s, 0, l);
      expect(pages.length).toBe(need);
      expect(sum(blocks)).toBe(len);
      // Nothing written past the pages it asked for.
      expect(l.u32.subarray(need * 1024).every((v) => v === 0xffffffff)).toBe(true);
    }
  });
});

describe("regions (DmaBuffer.region): page boundaries are the parent's", () => {
  test("a region starting inside a page gets descriptors split at the parent's pages", () => {
    using d = data(4);
    const r = d.region(2000, 2 * PAGE);
    using l = list(1);
    const s = sq();
    expect(sglListPages(r, 0, 2 * PAGE)).toBe(1);
    buildSgl(s, 0, r, 0, 2 * PAGE, l);
    const { blocks } = walk(s, 0, l);
    expect(blocks.map((b) => [b.addr, b.len])).toEqual([
      [page(d, 0) + 2000, PAGE - 2000],
      [page(d, 1), PAGE],
      [page(d, 2), 2000],
    ]);
  });

  test("a region inside one parent page is one Data Block", () => {
    using d = data(4);
    const r = d.region(PAGE + 8, 1000);
    const s = sq();
    expect(sglListPages(r, 0, 1000)).toBe(0);
    buildSgl(s, 0, r, 100, 900);
    expect(desc(s, 6)).toEqual({ addr: page(d, 1) + 108, len: 900, type: SGL_TYPE_DATA_BLOCK, subtype: 0, rsvd: 0 });
  });

  test("a list region must start on a page of the parent", () => {
    using d = data(3);
    using l = list(3);
    const s = sq();
    buildSgl(s, 0, d, 0, 3 * PAGE, l.region(PAGE, 2 * PAGE));
    expect(desc(s, 6).addr).toBe(page(l, 1));
    expect(walk(s, 0, l).blocks.map((b) => b.addr)).toEqual([page(d, 0), page(d, 1), page(d, 2)]);
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE, l.region(16, 2 * PAGE))).toThrow(/buffer base 16/);
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE, l.region(16, 2 * PAGE), PAGE)).toThrow(InvalidArgumentError);
  });
});

describe("CDW0 and the rest of the SQE", () => {
  test("PSDT becomes 01b; OPC, FUSE, CID and the other bits stay", () => {
    using d = data(3);
    using l = list(1);
    const s = sq();
    const cdw0 = 0xbeef_0002 | (0x3 << 8) | (0x2 << 14) | (0xf << 10); // CID, OPC, FUSE, PSDT=10b, reserved bits
    s[16] = cdw0 >>> 0;
    buildSgl(s, 16, d, 0, 3 * PAGE, l);
    expect((s[16]! >>> 14) & 3).toBe(PSDT_SGL_MPTR_ADDRESS);
    expect((s[16]! & ~(3 << 14)) >>> 0).toBe((cdw0 & ~(3 << 14)) >>> 0);
    expect(s[16]! >>> 16).toBe(0xbeef);
    // Slot 1 only: CDW1-5 and CDW10-15 of this slot, and all of slot 0, untouched.
    for (const i of [17, 18, 19, 20, 21, 26, 27, 28, 29, 30, 31]) expect(s[i]).toBe(0x5a5a5a5a);
    expect(s.subarray(0, 16).every((v) => v === 0x5a5a5a5a)).toBe(true);
    expect(walk(s, 16, l).blocks.length).toBe(3);
  });

  test("PSDT 00b (as writeCommand leaves it) becomes 01b too", () => {
    using d = data(1);
    const s = sq();
    s[0] = 0x0001_0002;
    buildSgl(s, 0, d, 0, 512);
    expect(s[0]).toBe(0x0001_4002);
  });
});

describe("buildSgl errors", () => {
  test("non-positive length", () => {
    using d = data(1);
    const s = sq();
    expect(() => buildSgl(s, 0, d, 0, 0)).toThrow(InvalidArgumentError);
    expect(() => buildSgl(s, 0, d, 0, -1)).toThrow(/must be positive, got -1/);
    expect(() => sglListPages(d, 0, 0)).toThrow(InvalidArgumentError);
  });

  test("past the end of the buffer, or a negative offset", () => {
    using d = data(2);
    const s = sq();
    expect(() => buildSgl(s, 0, d, 0, 2 * PAGE + 1)).toThrow(InvalidArgumentError);
    expect(() => buildSgl(s, 0, d, PAGE, PAGE + 1)).toThrow(/buffer too small: 4096\+4097 bytes asked of a 8192-byte/);
    expect(() => buildSgl(s, 0, d, -1, 10)).toThrow(InvalidArgumentError);
    expect(() => sglListPages(d, PAGE, PAGE + 1)).toThrow(/buffer too small/);
  });

  test("list missing, too small, or not page aligned; a failed build writes nothing", () => {
    using d = data(257);
    using l1 = list(1);
    using l2 = list(2);
    const s = sq();
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE)).toThrow(InvalidArgumentError);
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE)).toThrow(/3 bus ranges needs 1 SGL list page/);
    expect(() => buildSgl(s, 0, d, 0, 257 * PAGE, l1)).toThrow(/needs 2 SGL list page\(s\).*4096-byte list buffer/);
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE, l2, 8)).toThrow(/got 8/);
    expect(() => buildSgl(s, 0, d, 0, 257 * PAGE, l2, PAGE)).toThrow(InvalidArgumentError);
    expect(() => buildSgl(s, 0, d, 0, 3 * PAGE, l2, -PAGE)).toThrow(InvalidArgumentError);
    expect(l1.u32.every((v) => v === 0xffffffff)).toBe(true);
    expect(l2.u32.every((v) => v === 0xffffffff)).toBe(true);
    expect(s.every((v) => v === 0x5a5a5a5a)).toBe(true);
  });

  test("a contiguous transfer needs no list even when one is given badly", () => {
    using d = contiguous(4);
    using l = list(1);
    const s = sq();
    buildSgl(s, 0, d, 0, 4 * PAGE, l, 8);
    expect(desc(s, 6).type).toBe(SGL_TYPE_DATA_BLOCK);
    expect(l.u32.every((v) => v === 0xffffffff)).toBe(true);
  });
});
