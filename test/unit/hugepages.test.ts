/**
 * The hugepage sub-allocator (lib/backends/hugepages.ts) over a fake provider of plain memory:
 * what it maps and unmaps, where runs land, the bus addresses it reports, and what it zeroes.
 */
import { describe, expect, test } from "bun:test";
import { DeviceError, InvalidArgumentError } from "../../lib/errors.ts";
import { HUGE_PAGE_PAGES, HUGE_PAGE_SIZE, HugepagePool, type HugepageMapping, type HugepageProvider } from "../../lib/backends/hugepages.ts";
import type { DmaMapping } from "../../lib/backends/types.ts";

const PAGE = 4096;
const TWO32 = 0x1_0000_0000;
/** A 2 MiB-aligned address where the fake's first hugepage is mapped. */
const VBASE = 0x7f00_0000_0000;

class FakeHugepages implements HugepageProvider {
  /** Mapped hugepages: vaddr -> its 2 MiB of memory. */
  readonly mapped = new Map<number, Uint8Array>();
  readonly mapCalls: number[] = [];
  unmaps = 0;
  closes = 0;
  /** Most hugepages mapped at once; past it map() throws as the real provider does. */
  limit = Infinity;
  #nextV = VBASE;
  #nextFrame = 0;

  /** `scatter`: hugepages land in every other 2 MiB frame, so no two are consecutive on the bus. */
  constructor(readonly scatter = false) {}

  map(count: number): HugepageMapping {
    if (this.mapped.size + count > this.limit) throw new DeviceError(`fake: no free hugepage (${this.mapped.size} of ${this.limit} mapped)`);
    this.mapCalls.push(count);
    const vaddr = this.#nextV;
    // A gap in the address space after every mapping: runs must never assume one mapping follows another.
    this.#nextV += (count + 1) * HUGE_PAGE_SIZE;
    const bytes = new Uint8Array(count * HUGE_PAGE_SIZE);
    const bus: number[] = [];
    for (let i = 0; i < count; i++) {
      bus.push(TWO32 + this.#nextFrame * HUGE_PAGE_SIZE);
      this.#nextFrame += this.scatter ? 2 : 1;
      this.mapped.set(vaddr + i * HUGE_PAGE_SIZE, bytes.subarray(i * HUGE_PAGE_SIZE, (i + 1) * HUGE_PAGE_SIZE));
    }
    return { vaddr, bus, bytes };
  }

  unmap(vaddr: number): void {
    if (!this.mapped.delete(vaddr)) throw new Error(`fake: unmap of 0x${vaddr.toString(16)}, which is not a mapped hugepage`);
    this.unmaps++;
  }

  close(): void {
    this.closes++;
  }

  /** The memory behind a run, as the caller would see it through its vaddr. */
  memory(m: DmaMapping): Uint8Array {
    const v = Number(m.vaddr);
    const base = v - (v % HUGE_PAGE_SIZE);
    const first = this.mapped.get(base);
    if (!first) throw new Error("fake: run outside any mapped hugepage");
    const off = v - base;
    // A run over several hugepages: they were mapped together, so their memory is one array.
    return new Uint8Array(first.buffer, first.byteOffset + off, m.size);
  }
}

const busOf = (m: DmaMapping, page: number) => m.iova[2 * page]! + m.iova[2 * page + 1]! * TWO32;
const hugepageOf = (m: DmaMapping) => Number(m.vaddr) - (Number(m.vaddr) % HUGE_PAGE_SIZE);

function expectConsecutive(m: DmaMapping) {
  expect(m.iova.length).toBe((2 * m.size) / PAGE);
  for (let i = 1; i < m.size / PAGE; i++) expect(busOf(m, i)).toBe(busOf(m, 0) + i * PAGE);
}

describe("small runs", () => {
  test("many 4 KiB runs share one hugepage: page-aligned, disjoint, bus address = hugepage + offset", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const runs = Array.from({ length: 100 }, () => pool.alloc(PAGE));
    expect(f.mapCalls).toEqual([1]);
    expect(pool.hugepages).toBe(1);
    expect(pool.runs).toBe(100);
    const base = hugepageOf(runs[0]!);
    const offsets = new Set<number>();
    for (const r of runs) {
      expect(r.size).toBe(PAGE);
      expect(r.contiguous).toBe(true);
      expect(hugepageOf(r)).toBe(base);
      const off = Number(r.vaddr) - base;
      expect(off % PAGE).toBe(0);
      offsets.add(off);
      expect(busOf(r, 0)).toBe(TWO32 + off);
      expect(r.iova[1]).toBe(1); // the high dword of a bus address above 4 GiB
    }
    expect(offsets.size).toBe(100);
  });

  test("sizes round up to whole pages; 0, negative and fractional sizes are refused", () => {
    const pool = new HugepagePool(new FakeHugepages());
    expect(pool.alloc(1).size).toBe(PAGE);
    expect(pool.alloc(PAGE + 1).size).toBe(2 * PAGE);
    for (const bad of [0, -4096, 1.5, Number.NaN]) expect(() => pool.alloc(bad)).toThrow(InvalidArgumentError);
  });

  test("a run of up to 2 MiB stays inside one hugepage: what does not fit the free space takes a new one", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const a = pool.alloc(PAGE);
    const b = pool.alloc(HUGE_PAGE_SIZE - PAGE); // exactly the rest of the first hugepage
    expect(hugepageOf(b)).toBe(hugepageOf(a));
    expect(Number(b.vaddr)).toBe(Number(a.vaddr) + PAGE);
    const c = pool.alloc(2 * PAGE); // no room left: a second hugepage
    expect(hugepageOf(c)).not.toBe(hugepageOf(a));
    const d = pool.alloc(HUGE_PAGE_SIZE); // a whole hugepage: never split over two
    expect(Number(d.vaddr) % HUGE_PAGE_SIZE).toBe(0);
    expect(f.mapCalls).toEqual([1, 1, 1]);
    for (const r of [b, c, d]) {
      expect(r.contiguous).toBe(true);
      expectConsecutive(r);
    }
  });

  test("a freed run is reused, and split among smaller runs, before any new hugepage is mapped", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const big = pool.alloc(64 * PAGE);
    const keep = pool.alloc(PAGE); // keeps the hugepage mapped
    const start = Number(big.vaddr);
    pool.free(big);
    const parts = Array.from({ length: 4 }, () => pool.alloc(16 * PAGE));
    expect(parts.map((p) => Number(p.vaddr) - start)).toEqual([0, 16 * PAGE, 32 * PAGE, 48 * PAGE]);
    // First fit: a one-page run fills the hole in front of a larger free stretch.
    pool.free(parts[1]!);
    expect(Number(pool.alloc(PAGE).vaddr)).toBe(start + 16 * PAGE);
    expect(f.mapCalls).toEqual([1]);
    expect(Number(keep.vaddr)).toBe(start + 64 * PAGE);
  });
});

describe("zeroing", () => {
  test("memory handed out again is zeroed, and only the run is touched", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const a = pool.alloc(8 * PAGE);
    const neighbour = pool.alloc(PAGE);
    f.memory(a).fill(0xab);
    f.memory(neighbour).fill(0xcd);
    pool.free(a);
    // The freed pages still hold the old bytes (nothing is zeroed on free)...
    expect(f.memory({ ...a }).every((v) => v === 0xab)).toBe(true);
    // ...until they are handed out again, partly: a 3-page run from the front, then the rest.
    const b = pool.alloc(3 * PAGE);
    expect(Number(b.vaddr)).toBe(Number(a.vaddr));
    expect(f.memory(b).every((v) => v === 0)).toBe(true);
    const rest = new Uint8Array(f.memory(a).buffer, f.memory(a).byteOffset + 3 * PAGE, 5 * PAGE);
    expect(rest.every((v) => v === 0xab)).toBe(true);
    const c = pool.alloc(5 * PAGE);
    expect(Number(c.vaddr)).toBe(Number(a.vaddr) + 3 * PAGE);
    expect(f.memory(c).every((v) => v === 0)).toBe(true);
    expect(f.memory(neighbour).every((v) => v === 0xcd)).toBe(true);
  });

  test("a run over pages used before and pages never used comes back all zero", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const x = pool.alloc(PAGE);
    const y = pool.alloc(PAGE);
    const hold = pool.alloc(PAGE); // page 2 keeps the hugepage mapped
    f.memory(x).fill(0x11);
    f.memory(y).fill(0x22);
    f.memory(hold).fill(0x33);
    pool.free(x);
    pool.free(y);
    // Pages 0-1 were used, page 2 is held, pages 3.. were never used: a 2-page run reuses 0-1,
    // a 4-page one comes from 3-6.
    const z = pool.alloc(2 * PAGE);
    expect(Number(z.vaddr)).toBe(Number(x.vaddr));
    expect(f.memory(z).every((v) => v === 0)).toBe(true);
    const w = pool.alloc(4 * PAGE);
    expect(Number(w.vaddr)).toBe(Number(hold.vaddr) + PAGE);
    expect(f.memory(w).every((v) => v === 0)).toBe(true);
    pool.free(z);
    f.memory(w).fill(0x44);
    pool.free(w);
    // One run over used pages (0-1), the held page's other side (3-6, used) and fresh ones (7-9).
    const v = pool.alloc(7 * PAGE);
    expect(Number(v.vaddr)).toBe(Number(hold.vaddr) + PAGE);
    expect(f.memory(v).every((b) => b === 0)).toBe(true);
    expect(f.memory(hold).every((b) => b === 0x33)).toBe(true);
  });
});

describe("hugepage lifetime", () => {
  test("a hugepage is unmapped when its last run is freed, not before; double and foreign frees change nothing", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const a = pool.alloc(PAGE);
    const b = pool.alloc(PAGE);
    pool.free(a);
    expect(f.unmaps).toBe(0);
    expect(pool.hugepages).toBe(1);
    pool.free(a);
    pool.free({ vaddr: a.vaddr, size: PAGE, iova: a.iova, contiguous: true }); // same address, not a run of this pool
    expect(pool.runs).toBe(1);
    pool.free(b);
    expect(f.unmaps).toBe(1);
    expect(f.mapped.size).toBe(0);
    expect(pool.hugepages).toBe(0);
    pool.alloc(PAGE);
    expect(f.mapCalls).toEqual([1, 1]);
  });

  test("close() tells the provider once and refuses new runs; runs never freed (abandoned) stay mapped", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    pool.alloc(PAGE);
    pool.close();
    pool.close();
    expect(f.closes).toBe(1);
    expect(f.mapped.size).toBe(1);
    expect(f.unmaps).toBe(0);
    expect(() => pool.alloc(PAGE)).toThrow(DeviceError);
  });
});

describe("runs over 2 MiB", () => {
  test("take hugepages of their own in one mapping; contiguous when the hugepages are consecutive; the tail serves small runs", () => {
    const f = new FakeHugepages();
    const pool = new HugepagePool(f);
    const big = pool.alloc(5 * (1 << 20)); // 2.5 hugepages
    expect(f.mapCalls).toEqual([3]);
    expect(Number(big.vaddr) % HUGE_PAGE_SIZE).toBe(0);
    expect(big.size).toBe(5 << 20);
    expect(big.contiguous).toBe(true);
    expectConsecutive(big);
    const small = pool.alloc(PAGE);
    expect(Number(small.vaddr)).toBe(Number(big.vaddr) + (5 << 20));
    expect(f.mapCalls).toEqual([3]);
    pool.free(big);
    expect(f.unmaps).toBe(2); // the third hugepage still holds `small`
    pool.free(small);
    expect(f.unmaps).toBe(3);
    expect(f.mapped.size).toBe(0);
  });

  test("over hugepages that are not consecutive: one bus address per page, not contiguous; asked contiguous it is a DeviceError and nothing stays mapped", () => {
    const f = new FakeHugepages(true);
    const pool = new HugepagePool(f);
    const big = pool.alloc(HUGE_PAGE_SIZE + PAGE);
    expect(big.contiguous).toBe(false);
    expect(busOf(big, HUGE_PAGE_PAGES - 1)).toBe(TWO32 + HUGE_PAGE_SIZE - PAGE);
    expect(busOf(big, HUGE_PAGE_PAGES)).toBe(TWO32 + 2 * HUGE_PAGE_SIZE); // the next frame but one
    const before = f.mapped.size;
    let err: unknown;
    try {
      pool.alloc(4 << 20, true);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeviceError);
    expect((err as Error).message).toContain("4194304 physically contiguous bytes");
    expect((err as Error).message).toContain("VFIO");
    expect(f.mapped.size).toBe(before);
    // Up to 2 MiB, contiguous is always possible.
    expect(pool.alloc(HUGE_PAGE_SIZE, true).contiguous).toBe(true);
  });
});

describe("exhaustion", () => {
  test("the provider's error comes through, nothing changes, and freeing makes room again", () => {
    const f = new FakeHugepages();
    f.limit = 2;
    const pool = new HugepagePool(f);
    const a = pool.alloc(HUGE_PAGE_SIZE);
    const b = pool.alloc(HUGE_PAGE_SIZE - PAGE);
    const c = pool.alloc(PAGE); // the last free page
    expect(() => pool.alloc(PAGE)).toThrow(/fake: no free hugepage/);
    expect(() => pool.alloc(3 << 20)).toThrow(DeviceError);
    expect(pool.runs).toBe(3);
    expect(pool.hugepages).toBe(2);
    pool.free(c);
    expect(hugepageOf(pool.alloc(PAGE))).toBe(hugepageOf(b));
    pool.free(a);
    expect(pool.alloc(2 * PAGE).contiguous).toBe(true);
  });
});
