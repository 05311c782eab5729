import { describe, expect, test } from "bun:test";
import { DeviceError, InvalidArgumentError } from "../../lib/errors.ts";
import { IOVA_DEFAULT_BASE, IovaAllocator, iovaGranule, join64 } from "../../lib/iova.ts";

const K = 1024;
const M = 1024 * K;
const G = 1024 * M;

/** What QEMU's intel-iommu (aw-bits 39) reports: everything but the MSI window at 0xfee00000. */
const INTEL_39 = [
  { start: 0, end: 0xfedfffff },
  { start: 0xfef00000, end: 2 ** 39 - 1 },
];

describe("iovaGranule", () => {
  test("smallest page size of the bitmap, never below 4 KiB", () => {
    expect(iovaGranule(0x40201000)).toBe(4096); // 4K | 2M | 1G (intel-iommu)
    expect(iovaGranule(0x40200000)).toBe(2 * M);
    expect(iovaGranule(0x10000 | 0x20000000)).toBe(64 * K); // 64K | 512M (arm64 64K pages)
    expect(iovaGranule(0x800)).toBe(4096); // 2 KiB pages: still one host page
    expect(iovaGranule(0x80000000)).toBe(2 * G); // bit 31 is not negative
    expect(iovaGranule(0, 1)).toBe(4 * G); // only bits above 31
    expect(iovaGranule(0, 0)).toBe(4096); // not reported
    expect(iovaGranule(0xfffff000, 0xffffffff)).toBe(4096); // ~(4K-1), as some IOMMUs say
  });

  test("join64 is exact up to 2^53 and Infinity past it", () => {
    expect(join64(0xffffffff, 0x7f)).toBe(2 ** 39 - 1);
    expect(join64(0, 0x200000)).toBe(Infinity);
    expect(join64(0xffffffff, 0xffffffff)).toBe(Infinity);
    expect(join64(-1, 0)).toBe(0xffffffff);
  });
});

describe("construction", () => {
  test("the default base skips everything below 256 MiB, so IOVA 0 is never handed out", () => {
    const a = new IovaAllocator(INTEL_39);
    expect(a.base).toBe(IOVA_DEFAULT_BASE);
    expect(a.apertures).toEqual([
      { start: 0x1000_0000, end: 0xfee00000 },
      { start: 0xfef00000, end: 2 ** 39 },
    ]);
    expect(a.alloc(4096)).toBe(0x1000_0000);
  });

  test("a range starting above the base starts where it starts", () => {
    const a = new IovaAllocator([{ start: 0x8000_0000, end: 0x8fff_ffff }]);
    expect(a.alloc(1)).toBe(0x8000_0000);
  });

  test("even with base 1 and a range from 0, the first IOVA is one granule up, never 0", () => {
    const a = new IovaAllocator([{ start: 0, end: 0xffff }], { base: 1 });
    expect(a.alloc(4096)).toBe(4096);
    const b = new IovaAllocator([{ start: 0, end: 0xfffff }], { base: 1, granule: 64 * K });
    expect(b.alloc(4096)).toBe(64 * K);
  });

  test("ranges are clipped to the granule: unaligned starts rounded up, ends down", () => {
    const a = new IovaAllocator([{ start: 0x1000_0123, end: 0x1000_5fff + 0x800 }]);
    expect(a.apertures).toEqual([{ start: 0x1000_1000, end: 0x1000_6000 }]);
  });

  test("unsorted and overlapping reports become sorted, merged apertures", () => {
    const a = new IovaAllocator([
      { start: 0x3000_0000, end: 0x3fff_ffff },
      { start: 0x1000_0000, end: 0x1fff_ffff },
      { start: 0x1800_0000, end: 0x2000_0fff }, // overlaps the second, ends inside nothing
    ]);
    expect(a.apertures).toEqual([
      { start: 0x1000_0000, end: 0x2000_1000 },
      { start: 0x3000_0000, end: 0x4000_0000 },
    ]);
  });

  test("apertures past 2^53 are cut there; whole ranges past it are dropped", () => {
    const a = new IovaAllocator([
      { start: 0x1000_0000, end: Infinity }, // join64 of an end near 2^64
      { start: Infinity, end: Infinity },
    ]);
    expect(a.apertures.length).toBe(1);
    expect(a.apertures[0]!.end).toBe(2 ** 53 - 4096);
    expect(Number.isSafeInteger(a.apertures[0]!.end)).toBe(true);
  });

  test("bad options and ranges are refused; no usable range is a DeviceError naming them", () => {
    expect(() => new IovaAllocator(INTEL_39, { granule: 3000 })).toThrow(InvalidArgumentError);
    expect(() => new IovaAllocator(INTEL_39, { granule: 2048 })).toThrow(InvalidArgumentError);
    expect(() => new IovaAllocator(INTEL_39, { base: 0 })).toThrow(/IOVA 0 is never handed out/);
    expect(() => new IovaAllocator([{ start: 0x2000, end: 0x1000 }])).toThrow(InvalidArgumentError);
    expect(() => new IovaAllocator([{ start: 0, end: 0xfff_ffff }])).toThrow(DeviceError);
    expect(() => new IovaAllocator([{ start: 0, end: 0xfff_ffff }])).toThrow(/no usable IOVA range at or above 0x10000000 \(ranges: 0x0-0xfffffff\)/);
    expect(() => new IovaAllocator([])).toThrow(/ranges: none/);
  });
});

describe("alloc", () => {
  test("first fit, consecutive, rounded up to the granule", () => {
    const a = new IovaAllocator(INTEL_39);
    expect(a.alloc(1)).toBe(0x1000_0000);
    expect(a.sizeOf(0x1000_0000)).toBe(4096);
    expect(a.alloc(4097)).toBe(0x1000_1000);
    expect(a.sizeOf(0x1000_1000)).toBe(8192);
    expect(a.alloc(3 * M)).toBe(0x1000_3000);
    expect(a.allocatedBytes).toBe(4096 + 8192 + 3 * M);
    expect(a.allocations).toBe(3);
  });

  test("a larger granule rounds sizes and aligns starts to it", () => {
    const a = new IovaAllocator(INTEL_39, { granule: 64 * K });
    const x = a.alloc(4096);
    const y = a.alloc(65 * K);
    expect(x % (64 * K)).toBe(0);
    expect(a.sizeOf(x)).toBe(64 * K);
    expect(y).toBe(x + 64 * K);
    expect(a.sizeOf(y)).toBe(128 * K);
  });

  test("an explicit alignment leaves the gap before it free for later small allocations", () => {
    const a = new IovaAllocator([{ start: 0x1000_0000, end: 0x1fff_ffff }]);
    const small = a.alloc(4096);
    const big = a.alloc(2 * M, 2 * M);
    expect(big % (2 * M)).toBe(0);
    expect(big).toBe(0x1020_0000);
    // The gap [small+4K, big) is reused first.
    expect(a.alloc(4096)).toBe(small + 4096);
    expect(() => a.alloc(4096, 3000)).toThrow(InvalidArgumentError);
  });

  test("an allocation that does not fit the first aperture comes from the next one", () => {
    const a = new IovaAllocator([
      { start: 0x1000_0000, end: 0x1000_ffff }, // 64 KiB
      { start: 0x2000_0000, end: 0x2fff_ffff },
    ]);
    expect(a.alloc(128 * K)).toBe(0x2000_0000);
    expect(a.alloc(64 * K)).toBe(0x1000_0000); // the small one still fills first
    expect(a.alloc(4096)).toBe(0x2002_0000);
  });

  test("never spans the hole between two apertures (the MSI window)", () => {
    const a = new IovaAllocator(INTEL_39);
    const below = 0xfee00000 - 0x1000_0000;
    expect(a.alloc(below - 8192)).toBe(0x1000_0000);
    // 16 KiB would fit only across 0xfee00000-0xfeefffff: it goes above the hole.
    expect(a.alloc(16 * K)).toBe(0xfef00000);
    expect(a.alloc(8192)).toBe(0xfee00000 - 8192);
  });

  test("exhaustion is a DeviceError with the sizes, and nothing changes", () => {
    const a = new IovaAllocator([{ start: 0x1000_0000, end: 0x1000_ffff }]);
    a.alloc(32 * K);
    const before = a.freeRanges();
    expect(() => a.alloc(64 * K)).toThrow(DeviceError);
    expect(() => a.alloc(64 * K)).toThrow(/IOVA space exhausted: no free range of 65536 bytes \(largest free 32768 bytes, 32768 bytes in 1 mappings\)/);
    expect(a.freeRanges()).toEqual(before);
    expect(a.alloc(32 * K)).toBe(0x1000_8000);
    expect(a.freeBytes).toBe(0);
    expect(() => a.alloc(1)).toThrow(/exhausted/);
  });

  test("sizes that are not positive integers are refused", () => {
    const a = new IovaAllocator(INTEL_39);
    for (const bad of [0, -4096, 1.5, NaN, Infinity]) expect(() => a.alloc(bad)).toThrow(InvalidArgumentError);
  });
});

describe("free", () => {
  test("a freed range is handed out again (same size, same address)", () => {
    const a = new IovaAllocator(INTEL_39);
    const x = a.alloc(1 * M);
    const y = a.alloc(64 * K);
    a.free(x);
    expect(a.alloc(1 * M)).toBe(x);
    a.free(y);
    expect(a.alloc(64 * K)).toBe(y);
  });

  test("a smaller allocation reuses the front of a freed hole", () => {
    const a = new IovaAllocator(INTEL_39);
    const x = a.alloc(1 * M);
    a.alloc(4096); // keeps the hole from merging with the tail
    a.free(x);
    expect(a.alloc(8192)).toBe(x);
    expect(a.alloc(8192)).toBe(x + 8192);
  });

  test("coalescing: with the previous, with the next, with both", () => {
    const a = new IovaAllocator([{ start: 0x1000_0000, end: 0x1000_ffff }]); // 16 pages
    const p = Array.from({ length: 16 }, () => a.alloc(4096));
    expect(a.freeBytes).toBe(0);
    a.free(p[2]!);
    a.free(p[3]!); // merges with the previous
    expect(a.freeRanges()).toEqual([{ start: p[2]!, end: p[4]! }]);
    a.free(p[6]!);
    a.free(p[5]!); // merges with the next
    expect(a.freeRanges()).toEqual([
      { start: p[2]!, end: p[4]! },
      { start: p[5]!, end: p[7]! },
    ]);
    a.free(p[4]!); // fills the gap: one interval
    expect(a.freeRanges()).toEqual([{ start: p[2]!, end: p[7]! }]);
    expect(a.largestFree).toBe(5 * 4096);
    expect(a.alloc(5 * 4096)).toBe(p[2]!); // one range of 5 pages fits only after merging
  });

  test("freeing everything in any order restores the original apertures", () => {
    const a = new IovaAllocator(INTEL_39);
    const initial = a.freeRanges();
    const xs: number[] = [];
    for (let i = 0; i < 50; i++) xs.push(a.alloc(((i * 7) % 13 + 1) * 4096));
    xs.push(a.alloc(0xfee00000 - 0x1000_0000 - 1000 * 4096)); // most of the lower aperture
    // A fixed shuffle.
    const order = xs.map((x, i) => ({ x, k: (i * 37) % xs.length })).sort((p, q) => p.k - q.k);
    for (const { x } of order) a.free(x);
    expect(a.freeRanges()).toEqual(initial);
    expect(a.allocatedBytes).toBe(0);
    expect(a.allocations).toBe(0);
  });

  test("double free and unknown addresses are InvalidArgumentErrors and change nothing", () => {
    const a = new IovaAllocator(INTEL_39);
    const x = a.alloc(8192);
    a.free(x);
    const before = a.freeRanges();
    expect(() => a.free(x)).toThrow(InvalidArgumentError);
    expect(() => a.free(x)).toThrow(/IOVA 0x10000000 is not the start of an allocated range \(freed twice\?\)/);
    const y = a.alloc(8192);
    expect(() => a.free(y + 4096)).toThrow(InvalidArgumentError); // inside, not the start
    expect(() => a.free(0)).toThrow(InvalidArgumentError);
    a.free(y);
    expect(a.freeRanges()).toEqual(before);
  });
});
