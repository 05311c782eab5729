/**
 * Raising the 2 MiB hugepage pool on demand and giving it back (lib/backends/hugepage-reserve.ts),
 * against a fake of the kernel's counters that behaves as mm/hugetlb.c does: the pool never shrinks
 * below the pages in use, and grows only as far as free memory allows.
 */
import { describe, expect, test } from "bun:test";
import { DeviceError, PermissionError } from "../../lib/errors.ts";
import { HugepageReservation, type HugepageCounters, type Notice } from "../../lib/backends/hugepage-reserve.ts";

class FakeKernel implements HugepageCounters {
  readonly path = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
  nr = 0;
  /** Pages mapped by anyone. */
  used = 0;
  /** Free pages promised to mappings that have not touched them (resv_hugepages). */
  resv = 0;
  /** The most pages the kernel can find: past it a write gets fewer (fragmentation). */
  capacity = Infinity;
  /** A write fails with this errno code (EACCES for a non-root writer, EROFS in a container). */
  writeError: string | undefined;
  readonly writes: number[] = [];

  total(): number {
    return this.nr;
  }
  setTotal(n: number): void {
    if (this.writeError) throw Object.assign(new Error(`${this.writeError}: write ${this.path}`), { code: this.writeError });
    this.writes.push(n);
    // Shrinking stops at the pages in use (the kernel makes them surplus); growing at what it finds.
    this.nr = Math.max(this.used, Math.min(n, this.capacity));
  }
  free(): number {
    return this.nr - this.used;
  }
  reserved(): number {
    return this.resv;
  }
}

function notice(): Notice & { lines: string[] } {
  const lines: string[] = [];
  return { said: false, lines, say: (l) => void lines.push(l) };
}

describe("raise", () => {
  test("from 0: raised by what is lacking, said once (how many, from what to what, how to keep them)", () => {
    const k = new FakeKernel();
    const say = notice();
    const r = new HugepageReservation(k, say);
    r.raise(1);
    expect(k.nr).toBe(1);
    k.used = 1;
    r.raise(3);
    expect(k.nr).toBe(4);
    expect(r.raised).toBe(4);
    expect(say.lines.length).toBe(1);
    const line = say.lines[0]!;
    expect(line).toContain(`raised ${k.path} from 0 to 1 (1 page, more as needed), given back on close`);
    expect(line).toContain("/etc/sysctl.d/");
    expect(line).toContain("hugepages=64");
    // Another owner in the same process says nothing more.
    new HugepageReservation(k, say).raise(1);
    expect(say.lines.length).toBe(1);
  });

  test("free pages nobody has claimed count; pages promised to others (resv_hugepages) do not", () => {
    const k = new FakeKernel();
    k.nr = 10;
    k.used = 7; // 3 free...
    k.resv = 1; // ...one of them promised
    const r = new HugepageReservation(k, notice());
    r.raise(4);
    expect(k.writes).toEqual([12]); // 4 wanted, 2 unclaimed: 2 more
  });

  test("a process that may not write the pool gets a PermissionError with the exact command; nothing is raised", () => {
    for (const code of ["EACCES", "EROFS", "EPERM"]) {
      const k = new FakeKernel();
      k.nr = 2;
      k.used = 2;
      k.writeError = code;
      const say = notice();
      const r = new HugepageReservation(k, say);
      let err: unknown;
      try {
        r.raise(1);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(PermissionError);
      const msg = (err as Error).message;
      expect(msg).toContain(`(${code} writing ${k.path})`);
      expect(msg).toContain(`reserve them as root: echo 3 > ${k.path}`);
      expect(msg).toContain("vm.nr_hugepages = 3");
      expect(r.raised).toBe(0);
      expect(say.lines).toEqual([]);
    }
  });

  test("fragmented memory: the kernel finds fewer pages than asked -> DeviceError naming compaction and the command, the partial gain given back", () => {
    const k = new FakeKernel();
    k.nr = 1;
    k.used = 1;
    k.capacity = 2;
    const r = new HugepageReservation(k, notice());
    let err: unknown;
    try {
      r.raise(3);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DeviceError);
    const msg = (err as Error).message;
    expect(msg).toContain("could not supply 3 more 2 MiB hugepage(s)");
    expect(msg).toContain("from 1 to 4, got 2");
    expect(msg).toContain(`echo 1 > /proc/sys/vm/compact_memory; echo 4 > ${k.path}`);
    expect(k.writes).toEqual([4, 1]);
    expect(k.nr).toBe(1);
    expect(r.raised).toBe(0);
  });
});

describe("release", () => {
  test("gives back what it raised once its pages are unmapped, down to what was there before", () => {
    const k = new FakeKernel();
    k.nr = 5; // the administrator's, all in use
    k.used = 5;
    const r = new HugepageReservation(k, notice());
    r.raise(2);
    expect(k.nr).toBe(7);
    k.used = 7; // ours mapped...
    k.used = 5; // ...and unmapped again
    r.release();
    expect(k.nr).toBe(5);
    r.release(); // idempotent
    expect(k.writes).toEqual([7, 5]);
  });

  test("pages still mapped at release (DMA memory abandoned to a controller) stay reserved", () => {
    const k = new FakeKernel();
    const r = new HugepageReservation(k, notice());
    r.raise(2);
    k.used = 2;
    r.release();
    expect(k.nr).toBe(2);
    expect(k.writes).toEqual([2]);
  });

  test("never takes a page another process maps or has been promised", () => {
    const k = new FakeKernel();
    const r = new HugepageReservation(k, notice());
    r.raise(3);
    expect(k.nr).toBe(3);
    // Meanwhile another process maps one of the pages and has one more promised.
    k.used = 1;
    k.resv = 1;
    r.release();
    expect(k.nr).toBe(2); // one page free and unclaimed: only that one goes
    expect(k.used + k.resv).toBe(2);
  });

  test("never raises the pool on the way down: someone lowered it meanwhile", () => {
    const k = new FakeKernel();
    k.nr = 4;
    k.used = 4;
    const r = new HugepageReservation(k, notice());
    r.raise(1);
    expect(k.nr).toBe(5);
    k.used = 0;
    k.nr = 3; // the administrator shrank it below what we found
    r.release();
    expect(k.nr).toBe(3);
    expect(k.writes).toEqual([5]);
  });

  test("nothing raised, nothing written", () => {
    const k = new FakeKernel();
    new HugepageReservation(k, notice()).release();
    expect(k.writes).toEqual([]);
  });
});
