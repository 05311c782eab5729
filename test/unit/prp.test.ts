import { afterAll, describe, expect, test } from "bun:test";
import { DmaBuffer } from "../../lib/dma.ts";
import { InvalidArgumentError } from "../../lib/errors.ts";
import { buildPrp, PRP_PAGE_SIZE, prpListPages } from "../../lib/prp.ts";
import { addr64, FakeBackend } from "./fake-backend.ts";

const PAGE = PRP_PAGE_SIZE;
const backend = new FakeBackend();
afterAll(() => backend.close());

/** A data buffer of `pages` pages, scattered on the fake bus. */
function data(pages: number): DmaBuffer {
  const d = new DmaBuffer(backend, pages * PAGE);
  expect(d.contiguous).toBe(pages === 1);
  return d;
}

/** A list buffer with every byte 0xff so untouched entries are recognisable. */
function list(pages: number): DmaBuffer {
  const l = new DmaBuffer(backend, pages * PAGE);
  l.u32.fill(0xffffffff);
  return l;
}

/** Bus address of page i as the fake backend reported it. */
const page = (b: DmaBuffer, i: number) => addr64(b.iova, 2 * i);
/** List entry `slot` of list page `lp`, as a 64-bit address. */
const entry = (l: DmaBuffer, lp: number, slot: number) => addr64(l.u32, lp * 1024 + slot * 2);

test("the fake bus puts pages above 4 GiB and apart from each other", () => {
  using d = data(3);
  expect(page(d, 0)).toBeGreaterThanOrEqual(0x1_0000_0000);
  expect(page(d, 1)).not.toBe(page(d, 0) + PAGE);
  expect(page(d, 1) % PAGE).toBe(0);
});

describe("prpListPages", () => {
  test("no list for one or two pages", () => {
    expect(prpListPages(0, 1)).toBe(0);
    expect(prpListPages(0, PAGE)).toBe(0);
    expect(prpListPages(0, 2 * PAGE)).toBe(0);
    expect(prpListPages(100, PAGE)).toBe(0); // straddles two pages
    expect(prpListPages(4095, PAGE + 1)).toBe(0);
  });

  test("one list page for 3 to 513 pages", () => {
    expect(prpListPages(0, 2 * PAGE + 1)).toBe(1);
    expect(prpListPages(1, 2 * PAGE)).toBe(1); // 3 pages because of the offset
    expect(prpListPages(0, 3 * PAGE)).toBe(1);
    expect(prpListPages(0, 513 * PAGE)).toBe(1); // exactly 512 entries
  });

  test("chained lists past 512 entries: 511 entries per list page plus the chain pointer", () => {
    expect(prpListPages(0, 514 * PAGE)).toBe(2); // 513 entries
    expect(prpListPages(100, 513 * PAGE)).toBe(2); // 514 pages touched
    expect(prpListPages(0, 1024 * PAGE)).toBe(2); // 1023 entries = 511 + 512
    expect(prpListPages(0, 1025 * PAGE)).toBe(3); // 1024 entries = 511 + 511 + 2
    expect(prpListPages(0, 1535 * PAGE)).toBe(3); // 1534 entries = 511 + 511 + 512
    expect(prpListPages(0, 1536 * PAGE)).toBe(4); // 1535 entries
  });

  test("the page offset of the start counts, not the whole offset", () => {
    expect(prpListPages(5 * PAGE, 2 * PAGE)).toBe(0);
    expect(prpListPages(5 * PAGE + 8, 2 * PAGE)).toBe(1);
  });
});

describe("buildPrp without a list", () => {
  test("one page: PRP1 only", () => {
    using d = data(4);
    expect(buildPrp(d, 0, PAGE)).toEqual({ prp1: page(d, 0), prp2: 0 });
    expect(buildPrp(d, 0, 1)).toEqual({ prp1: page(d, 0), prp2: 0 });
    expect(buildPrp(d, 2 * PAGE, PAGE)).toEqual({ prp1: page(d, 2), prp2: 0 });
    expect(buildPrp(d, 100, PAGE - 100)).toEqual({ prp1: page(d, 0) + 100, prp2: 0 });
  });

  test("two pages: PRP2 is the second page, not PRP1 + 4096", () => {
    using d = data(4);
    expect(buildPrp(d, 0, 2 * PAGE)).toEqual({ prp1: page(d, 0), prp2: page(d, 1) });
    expect(buildPrp(d, PAGE, PAGE + 1)).toEqual({ prp1: page(d, 1), prp2: page(d, 2) });
  });

  test("a first page starting at an offset: PRP1 has the offset, PRP2 the next page", () => {
    using d = data(4);
    expect(buildPrp(d, 512, PAGE)).toEqual({ prp1: page(d, 0) + 512, prp2: page(d, 1) });
    expect(buildPrp(d, 512, 2 * PAGE - 512)).toEqual({ prp1: page(d, 0) + 512, prp2: page(d, 1) });
    expect(buildPrp(d, PAGE + 4092, 8)).toEqual({ prp1: page(d, 1) + 4092, prp2: page(d, 2) });
  });

  test("a list passed for a short transfer is left alone", () => {
    using d = data(2);
    using l = list(1);
    buildPrp(d, 0, 2 * PAGE, l);
    expect(l.u32.every((v) => v === 0xffffffff)).toBe(true);
  });
});

describe("buildPrp with a list", () => {
  test("three pages: PRP2 points at the list, which holds pages 1 and 2", () => {
    using d = data(3);
    using l = list(1);
    expect(buildPrp(d, 0, 3 * PAGE, l)).toEqual({ prp1: page(d, 0), prp2: page(l, 0) });
    expect(entry(l, 0, 0)).toBe(page(d, 1));
    expect(entry(l, 0, 1)).toBe(page(d, 2));
    expect(l.u32[4]).toBe(0xffffffff); // nothing written after the last entry
  });

  test("an offset start and a partial last page", () => {
    using d = data(4);
    using l = list(1);
    // 3000 bytes of page 0, all of pages 1 and 2, 1 byte of page 3.
    const r = buildPrp(d, PAGE - 3000, 3000 + 2 * PAGE + 1, l);
    expect(r).toEqual({ prp1: page(d, 0) + PAGE - 3000, prp2: page(l, 0) });
    expect([entry(l, 0, 0), entry(l, 0, 1), entry(l, 0, 2)]).toEqual([page(d, 1), page(d, 2), page(d, 3)]);
    expect(l.u32[6]).toBe(0xffffffff);
  });

  test("exactly 512 entries fill one list page with no chain pointer", () => {
    using d = data(513);
    using l = list(2);
    const r = buildPrp(d, 0, 513 * PAGE, l);
    expect(r).toEqual({ prp1: page(d, 0), prp2: page(l, 0) });
    for (let i = 0; i < 512; i++) expect(entry(l, 0, i)).toBe(page(d, i + 1));
    expect(l.u32[1024]).toBe(0xffffffff); // second list page untouched
  });

  test("513 entries chain: the last slot of list page 1 points at list page 2", () => {
    using d = data(514);
    using l = list(2);
    const r = buildPrp(d, 0, 514 * PAGE, l);
    expect(r).toEqual({ prp1: page(d, 0), prp2: page(l, 0) });
    for (let i = 0; i < 511; i++) expect(entry(l, 0, i)).toBe(page(d, i + 1));
    // The list is scattered too: the chain pointer is list page 1's own bus address.
    expect(entry(l, 0, 511)).toBe(page(l, 1));
    expect(page(l, 1)).not.toBe(page(l, 0) + PAGE);
    expect(entry(l, 1, 0)).toBe(page(d, 512));
    expect(entry(l, 1, 1)).toBe(page(d, 513));
    expect(l.u32[1024 + 4]).toBe(0xffffffff);
  });

  test("1023 entries: the second list page is full and has no chain pointer", () => {
    using d = data(1024);
    using l = list(2);
    buildPrp(d, 0, 1024 * PAGE, l);
    expect(entry(l, 0, 511)).toBe(page(l, 1));
    for (let i = 0; i < 512; i++) expect(entry(l, 1, i)).toBe(page(d, 512 + i));
  });

  test("1024 entries chain twice", () => {
    using d = data(1025);
    using l = list(3);
    buildPrp(d, 0, 1025 * PAGE, l);
    expect(entry(l, 0, 511)).toBe(page(l, 1));
    expect(entry(l, 1, 0)).toBe(page(d, 512));
    expect(entry(l, 1, 510)).toBe(page(d, 1022));
    expect(entry(l, 1, 511)).toBe(page(l, 2));
    expect(entry(l, 2, 0)).toBe(page(d, 1023));
    expect(entry(l, 2, 1)).toBe(page(d, 1024));
    expect(l.u32[2048 + 4]).toBe(0xffffffff);
  });

  test("an offset start across a chain", () => {
    using d = data(514);
    using l = list(2);
    const r = buildPrp(d, 100, 513 * PAGE, l); // touches 514 pages: 513 entries
    expect(r.prp1).toBe(page(d, 0) + 100);
    expect(entry(l, 0, 510)).toBe(page(d, 511));
    expect(entry(l, 0, 511)).toBe(page(l, 1));
    expect(entry(l, 1, 0)).toBe(page(d, 512));
    expect(entry(l, 1, 1)).toBe(page(d, 513));
  });

  test("listOffset places the list in a later page of the list buffer", () => {
    using d = data(3);
    using l = list(3);
    const r = buildPrp(d, 0, 3 * PAGE, l, 2 * PAGE);
    expect(r.prp2).toBe(page(l, 2));
    expect(entry(l, 2, 0)).toBe(page(d, 1));
    expect(entry(l, 2, 1)).toBe(page(d, 2));
    expect(l.u32[0]).toBe(0xffffffff);
  });

  test("regions: a data region inside its mapping and a list region chaining into its mapping's next page", () => {
    using d = data(520);
    using l = list(4);
    // The data region starts 3 pages and 512 bytes into its mapping; the list region one page in.
    const dr = d.region(3 * PAGE + 512, 516 * PAGE);
    const lr = l.region(PAGE, 2 * PAGE);
    const r = buildPrp(dr, PAGE, 513 * PAGE, lr); // from mapping page 4 (+512): 514 pages, 513 entries
    expect(r.prp1).toBe(page(d, 4) + 512);
    expect(r.prp2).toBe(page(l, 1));
    expect(entry(l, 1, 0)).toBe(page(d, 5));
    expect(entry(l, 1, 510)).toBe(page(d, 515));
    expect(entry(l, 1, 511)).toBe(page(l, 2));
    expect(entry(l, 2, 0)).toBe(page(d, 516));
    expect(entry(l, 2, 1)).toBe(page(d, 517));
    expect(l.u32[2 * 1024 + 4]).toBe(0xffffffff);
    expect(l.u32[0]).toBe(0xffffffff);
  });
});

describe("buildPrp errors", () => {
  test("non-positive length", () => {
    using d = data(1);
    expect(() => buildPrp(d, 0, 0)).toThrow(InvalidArgumentError);
    expect(() => buildPrp(d, 0, -1)).toThrow(InvalidArgumentError);
  });

  test("past the end of the buffer, or a negative offset", () => {
    using d = data(2);
    expect(() => buildPrp(d, 0, 2 * PAGE + 1)).toThrow(InvalidArgumentError);
    expect(() => buildPrp(d, PAGE, PAGE + 1)).toThrow(/buffer too small/);
    expect(() => buildPrp(d, -1, 10)).toThrow(InvalidArgumentError);
  });

  test("list missing, too small, or not page aligned", () => {
    using d = data(514);
    using l1 = list(1);
    using l2 = list(2);
    expect(() => buildPrp(d, 0, 3 * PAGE)).toThrow(InvalidArgumentError);
    expect(() => buildPrp(d, 0, 3 * PAGE)).toThrow(/needs 1 PRP list page/);
    expect(() => buildPrp(d, 0, 514 * PAGE, l1)).toThrow(/needs 2 PRP list page/);
    expect(() => buildPrp(d, 0, 3 * PAGE, l2, 8)).toThrow(InvalidArgumentError);
    expect(() => buildPrp(d, 0, 514 * PAGE, l2, PAGE)).toThrow(InvalidArgumentError);
    // A failed build writes nothing.
    expect(l1.u32.every((v) => v === 0xffffffff)).toBe(true);
  });
});
