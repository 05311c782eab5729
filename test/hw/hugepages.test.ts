/**
 * The sysfs backend's DMA memory: every byte in 2 MiB hugetlb pages (which the kernel does not
 * migrate), reserved by the library itself on a machine that has none and given back on close,
 * and shared among small buffers instead of a hugepage each.
 */
import { toArrayBuffer, type Pointer } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { Controller, Namespace, SysfsBackend, type DmaMapping } from "../../lib/index.ts";
import { native } from "../../lib/native.ts";
import { ctrlAddress, requireExpected, spawnFixture } from "./common.ts";
import { hugetlbBytes, smapsEntry } from "./smaps.ts";

const NR = "/proc/sys/vm/nr_hugepages";
const HUGE = 2 << 20;
const PAGE = 4096;
const TWO32 = 0x1_0000_0000;

const nr = () => Number(readFileSync(NR, "utf8"));
const meminfo = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(readFileSync("/proc/meminfo", "utf8"))![1]);

/** A fresh machine's hugepage pool: none reserved. */
function fromZero() {
  writeFileSync(NR, "0");
  expect(nr()).toBe(0);
  expect(meminfo("HugePages_Total")).toBe(0);
}

/** Physical address of the 4 KiB page at `addr`, read from pagemap here (not by the library). */
function physOf(addr: number): number {
  const n = native();
  const out = n.nvm_host_alloc(8)!;
  try {
    expect(n.nvm_phys_addrs(addr as Pointer, 1, out)).toBe(0);
    const pa = new Uint32Array(toArrayBuffer(out, 0, 8));
    return pa[0]! + pa[1]! * TWO32;
  } finally {
    n.nvm_host_free(out);
  }
}

/** A sysfs backend that records every DMA mapping it hands out, from the first (the admin queues) on. */
function recordingBackend(): { backend: SysfsBackend; seen: DmaMapping[] } {
  const backend = new SysfsBackend(ctrlAddress());
  const seen: DmaMapping[] = [];
  const alloc = backend.allocDma.bind(backend);
  backend.allocDma = (size, opts) => {
    const m = alloc(size, opts);
    seen.push(m);
    return m;
  };
  return { backend, seen };
}

describe("sysfs DMA memory in hugepages", () => {
  test("from nr_hugepages 0 the README's API example runs: hugepages reserved, said once on stderr, given back on close", async () => {
    fromZero();
    const p = spawnFixture("readme-api.ts");
    const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect({ code, err: code === 0 ? "" : err }).toEqual({ code: 0, err: "" });
    const r = JSON.parse(out);
    expect(r.sn).toBe(requireExpected().serial);
    expect(r.namespaces).toEqual(requireExpected().namespaces.map((n) => n.nsid));
    expect(r.readBack).toBe(true);
    expect(r.compare).toBe(true);
    // The 1 MiB buffer is backed by 2 MiB pages, not 4 KiB ones.
    expect(r.kernelPageKb).toBe(2048);
    expect(r.nrOpen).toBeGreaterThanOrEqual(1);
    expect(r.nrClosed).toBe(0);
    expect(nr()).toBe(0);
    // Several raises (queues, list pages, the buffer), one notice: how many, from what to what, how to keep them.
    const notices = err.match(/^libnvm: .*$/gm) ?? [];
    expect(notices.length).toBe(1);
    expect(notices[0]).toContain("libnvm: no free 2 MiB hugepage for DMA memory: raised /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages from 0 to 1 (1 page, more as needed), given back on close");
    expect(notices[0]).toContain("to reserve them permanently: echo 'vm.nr_hugepages = 64' > /etc/sysctl.d/80-libnvm.conf && sysctl --system");
    expect(err.replace(/^libnvm: .*\n/m, "")).toBe("");
  });

  test("queues, PRP list pages, the scratch page and buffers all lie in 2 MiB hugetlb mappings, at the bus addresses pagemap gives", async () => {
    fromZero();
    const base = hugetlbBytes();
    const { backend, seen } = recordingBackend();
    const c = Controller.openBackend(backend);
    try {
      const ns = new Namespace(c, requireExpected().namespaces[0]!.nsid);
      const q = c.createIoQueue({ entries: 64 });
      const buf = c.allocBuffer(64 * PAGE);
      crypto.getRandomValues(buf.bytes);
      await ns.write(0, (64 * PAGE) / ns.lbaSize, buf, { queue: q }); // 256 KiB: a PRP list
      // Admin SQ, admin CQ, scratch, the I/O SQ, CQ and list pages, the buffer.
      expect(seen.length).toBeGreaterThanOrEqual(7);
      for (const m of seen) {
        for (const at of [0, m.size - 1]) {
          const e = smapsEntry(Number(m.vaddr) + at);
          expect(e?.kernelPageKb).toBe(2048);
        }
        // The library's bus addresses are the kernel's physical ones, page by page.
        for (const page of [0, m.size / PAGE - 1]) expect(m.iova[2 * page]! + m.iova[2 * page + 1]! * TWO32).toBe(physOf(Number(m.vaddr) + page * PAGE));
      }
      // 7+ allocations, a few hugepages: the small ones share.
      expect(backend.hugepages).toBeLessThan(seen.length);
      expect(nr()).toBe(meminfo("HugePages_Total"));
      expect(nr()).toBeGreaterThanOrEqual(backend.hugepages);
    } finally {
      c.close();
    }
    expect(hugetlbBytes()).toBe(base);
    expect(nr()).toBe(0);
  });

  test("many small buffers share hugepages; memory handed out again is zeroed; the last free unmaps", () => {
    fromZero();
    const c = Controller.open(ctrlAddress());
    try {
      const backend = c.backend as SysfsBackend;
      expect(backend.kind).toBe("sysfs");
      const before = hugetlbBytes();
      const pagesBefore = backend.hugepages;
      const bufs = Array.from({ length: 200 }, () => c.allocBuffer(PAGE));
      // 200 x 4 KiB = 800 KiB: at most one more hugepage, not 200.
      expect(backend.hugepages - pagesBefore).toBeLessThanOrEqual(1);
      expect(hugetlbBytes() - before).toBeLessThanOrEqual(HUGE);
      const addrs = bufs.map((b) => Number(b.pointer));
      expect(new Set(addrs).size).toBe(200);
      for (const b of bufs) {
        expect(b.contiguous).toBe(true);
        expect(b.bytes.every((v) => v === 0)).toBe(true);
        b.bytes.fill(0xa5);
      }
      for (const b of bufs) b.free();
      const again = Array.from({ length: 200 }, () => c.allocBuffer(PAGE));
      expect(new Set(again.map((b) => Number(b.pointer)))).toEqual(new Set(addrs)); // the same runs, reused
      for (const b of again) expect(b.bytes.every((v) => v === 0)).toBe(true);
      for (const b of again) b.free();
      // Only the controller's own queues and scratch page are left: the buffers' hugepage is gone.
      expect(backend.hugepages).toBe(pagesBefore);
      expect(hugetlbBytes()).toBe(before);
    } finally {
      c.close();
    }
    expect(nr()).toBe(0);
  });

  test("a buffer over 2 MiB spans hugepages: a 4 MiB transfer across the boundary round-trips", async () => {
    fromZero();
    const c = Controller.open(ctrlAddress());
    try {
      const ns = new Namespace(c, requireExpected().namespaces[0]!.nsid);
      const buf = c.allocBuffer(6 << 20);
      const e = smapsEntry(Number(buf.pointer));
      expect(e?.kernelPageKb).toBe(2048);
      const out = buf.region(1 << 20, 4 << 20); // crosses the first 2 MiB boundary
      crypto.getRandomValues(out.bytes);
      const want = out.bytes.slice();
      const blocks = (4 << 20) / ns.lbaSize;
      expect(blocks).toBeLessThanOrEqual(ns.maxBlocks);
      await ns.write(0, blocks, out);
      const back = c.allocBuffer(5 << 20).region(PAGE, 4 << 20);
      await ns.read(0, blocks, back);
      expect(Buffer.compare(back.bytes, want)).toBe(0);
      expect(nr()).toBeGreaterThanOrEqual(6);
    } finally {
      c.close();
    }
    expect(nr()).toBe(0);
  });
});
