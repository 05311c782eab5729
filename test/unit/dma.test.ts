import { afterAll, describe, expect, test } from "bun:test";
import { DmaBuffer } from "../../lib/dma.ts";
import { ClosedError, InvalidArgumentError } from "../../lib/errors.ts";
import { native } from "../../lib/native.ts";
import { FAKE_BUS_BASE, FakeBackend } from "./fake-backend.ts";

const backend = new FakeBackend();
afterAll(() => backend.close());

describe("DmaBuffer", () => {
  test("size is rounded up to whole 4 KiB pages; memory starts zeroed", () => {
    using a = new DmaBuffer(backend, 1);
    using b = new DmaBuffer(backend, 4097);
    expect(a.size).toBe(4096);
    expect(b.size).toBe(8192);
    expect(b.bytes.length).toBe(8192);
    expect(b.u32.length).toBe(2048);
    expect(b.bytes.every((v) => v === 0)).toBe(true);
    expect(Number(b.pointer) % 4096).toBe(0);
  });

  test("bytes and u32 share the memory, which is the native memory", () => {
    using d = new DmaBuffer(backend, 4096);
    d.u32[1] = 0x04030201;
    expect([...d.bytes.subarray(4, 8)]).toEqual([1, 2, 3, 4]);
    d.bytes[12] = 0xff;
    expect(d.u32[3]).toBe(0xff);
    expect(native().nvm_read32(d.pointer, 4)).toBe(0x04030201);
    native().nvm_write32(d.pointer, 8, 0xcafebabe);
    expect(d.u32[2]).toBe(0xcafebabe);
  });

  test("busAddress(offset) = bus address of the offset's page + offset within the page", () => {
    using d = new DmaBuffer(backend, 3 * 4096);
    const page = (i: number) => d.iova[2 * i]! + d.iova[2 * i + 1]! * 0x1_0000_0000;
    expect(d.contiguous).toBe(false);
    expect(d.iova.length).toBe(6);
    expect(page(0)).toBeGreaterThanOrEqual(FAKE_BUS_BASE);
    expect(d.busAddress()).toBe(page(0));
    expect(d.busAddress(0)).toBe(page(0));
    expect(d.busAddress(4095)).toBe(page(0) + 4095);
    expect(d.busAddress(4096)).toBe(page(1));
    expect(d.busAddress(4096 + 100)).toBe(page(1) + 100);
    expect(d.busAddress(3 * 4096 - 1)).toBe(page(2) + 4095);
    expect(page(1)).not.toBe(page(0) + 4096);
  });

  test("bus addresses crossing 4 GiB carry into the high dword", () => {
    using b = new FakeBackend({ busBase: 0xffff_f000 });
    using d = new DmaBuffer(b, 2 * 4096, { contiguous: true });
    expect(d.contiguous).toBe(true);
    expect(Array.from(d.iova)).toEqual([0xfffff000, 0, 0, 1]);
    expect(d.busAddress(4095)).toBe(0xffff_ffff);
    expect(d.busAddress(4096)).toBe(0x1_0000_0000);
    expect(d.busAddress(4097)).toBe(0x1_0000_0001);
  });

  test("busAddress outside the buffer is an InvalidArgumentError", () => {
    using d = new DmaBuffer(backend, 4096);
    expect(() => d.busAddress(-1)).toThrow(InvalidArgumentError);
    expect(() => d.busAddress(4096)).toThrow(/offset 4096 outside DMA buffer of 4096 bytes/);
  });

  test("bad sizes are InvalidArgumentError and allocate nothing", () => {
    const before = backend.allocations;
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect(() => new DmaBuffer(backend, bad)).toThrow(InvalidArgumentError);
    }
    expect(backend.allocations).toBe(before);
  });

  test("free() empties old views, makes further access throw ClosedError, and is idempotent", () => {
    const d = new DmaBuffer(backend, 8192);
    const bytes = d.bytes;
    const u32 = d.u32;
    u32[0] = 7;
    const live = backend.live.size;
    const frees = backend.frees;
    expect(d.freed).toBe(false);
    d.free();
    expect(d.freed).toBe(true);
    expect(bytes.length).toBe(0);
    expect(u32.length).toBe(0);
    expect(u32[0]).toBeUndefined(); // reads nothing instead of touching unmapped memory
    expect(backend.live.size).toBe(live - 1);
    expect(backend.frees).toBe(frees + 1);
    for (const get of [() => d.bytes, () => d.u32, () => d.pointer, () => d.iova, () => d.contiguous, () => d.busAddress(0)]) {
      expect(get).toThrow(ClosedError);
    }
    d.free();
    d[Symbol.dispose]();
    expect(backend.frees).toBe(frees + 1);
    expect(d.size).toBe(8192);
  });

  test("`using` frees at the end of the scope", () => {
    const frees = backend.frees;
    let escaped: DmaBuffer | undefined;
    {
      using d = new DmaBuffer(backend, 4096);
      escaped = d;
      expect(d.freed).toBe(false);
    }
    expect(escaped.freed).toBe(true);
    expect(backend.frees).toBe(frees + 1);
  });

  test("the backend's close() releases buffers not yet freed and empties their views first", () => {
    const b = new FakeBackend();
    const d1 = new DmaBuffer(b, 4096);
    const view = d1.bytes;
    new DmaBuffer(b, 3 * 4096);
    expect(b.live.size).toBe(2);
    b.close();
    expect(b.live.size).toBe(0);
    expect(b.frees).toBe(2);
    // A view kept across close() reads as empty instead of touching unmapped memory.
    expect(view.length).toBe(0);
    expect(d1.freed).toBe(true);
    expect(() => d1.bytes).toThrow(ClosedError);
    d1.free();
    expect(b.frees).toBe(2);
  });
});

describe("DmaBuffer.onRelease (for layers that lend the pages on, e.g. a CUDA host registration)", () => {
  test("runs once on free(), before the backend gets the memory back, while the pages are still mapped", () => {
    const d = new DmaBuffer(backend, 4096);
    d.u32[0] = 0x600d;
    const p = d.pointer;
    const frees = backend.frees;
    const seen: Array<{ frees: number; word: number }> = [];
    d.onRelease(() => seen.push({ frees: backend.frees, word: native().nvm_read32(p, 0) }));
    d.free();
    d.free();
    expect(seen).toEqual([{ frees, word: 0x600d }]);
    expect(backend.frees).toBe(frees + 1);
  });

  test("a region's hook runs when its parent is freed, not when the region is", () => {
    const d = new DmaBuffer(backend, 2 * 4096);
    const r = d.region(4096, 100);
    let runs = 0;
    r.onRelease(() => runs++);
    r.free();
    expect(runs).toBe(0);
    d.free();
    expect(runs).toBe(1);
  });

  test("runs when the backend's close() takes the memory away", () => {
    const b = new FakeBackend();
    const d = new DmaBuffer(b, 4096);
    d.u32[1] = 0xfeed;
    const p = d.pointer;
    const words: number[] = [];
    // Reading unmapped memory here would kill the process: the hook must run before the unmap.
    d.onRelease(() => words.push(native().nvm_read32(p, 4)));
    b.close();
    expect(words).toEqual([0xfeed]);
    expect(d.freed).toBe(true);
  });

  test("the returned function cancels it; a freed buffer takes no hook", () => {
    const d = new DmaBuffer(backend, 4096);
    let runs = 0;
    const cancel = d.onRelease(() => runs++);
    cancel();
    d.free();
    expect(runs).toBe(0);
    expect(() => d.onRelease(() => runs++)).toThrow(ClosedError);
  });
});
