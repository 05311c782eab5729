/**
 * The disnvm module behind a translating IOMMU (the disnvm-iommu suite: q35 + intel-iommu, the
 * controller alone in its IOMMU group, a lazy DMA-FQ domain).
 *
 * - Memlock (issue 10, item 8): the pages the module pins are charged to the opener's
 *   RLIMIT_MEMLOCK, and only once (the library no longer mlocks them): VmLck grows by exactly the
 *   mapped bytes and falls back on unmap and on close; over the limit without CAP_IPC_LOCK the
 *   mapping is a typed PermissionError and the controller keeps working.
 * - Unmap (item 7): once DISNVM_IOC_UNMAP returns the controller can no longer reach the pages, even
 *   though a DMA-FQ domain defers its IOTLB invalidation: a command pointing at them fails.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Controller, DisnvmBackend, Namespace, NvmeStatusError, PermissionError, commands } from "../../lib/index.ts";
import { CAP_IPC_LOCK, CAP_SYS_RAWIO, disnvmNode, ensureHugepages, hasCap, iommuDomainType, pinnedPages, runUser } from "./common.ts";

let node = "";
let giveBackHugepages = () => {};

beforeAll(() => {
  node = disnvmNode();
  giveBackHugepages = ensureHugepages(8);
  // The flush-before-unpin test only means something with deferred invalidation.
  if (iommuDomainType() !== "DMA-FQ") throw new Error(`the controller's IOMMU domain is ${iommuDomainType() ?? "absent"}, expected DMA-FQ (intel_iommu=on iommu.strict=0)`);
});
afterAll(() => giveBackHugepages());

test("VmLck grows by exactly the mapped bytes, the memory is not mlocked as well, and unmap and close give it back", () => {
  const r = runUser(node, "vmlck", { drop: ["sys_rawio", "ipc_lock"], memlock: 64 << 20 });
  expect(hasCap(r.capEff, CAP_SYS_RAWIO)).toBe(false);
  expect(hasCap(r.capEff, CAP_IPC_LOCK)).toBe(false);
  expect(r.error).toBeUndefined();
  expect(r.bigSize).toBe(1 << 20);
  expect(r.smallSize).toBe(65536);
  // VmLck is in kB: the module's charge is all there is (the library's mlock would double it).
  expect(r.afterBig - r.before).toBe(1024);
  expect(r.afterBoth - r.before).toBe(1024 + 64);
  expect(r.bigLocked).toBe(false);
  expect(r.afterFree - r.before).toBe(64);
  expect(r.pinnedBeforeClose).toBe(16);
  // close() with the 64 KiB still mapped: the module's release uncharged it.
  expect(r.afterClose).toBe(r.before);
  expect(pinnedPages()).toBe(0);
});

test("over RLIMIT_MEMLOCK without CAP_IPC_LOCK: a typed PermissionError from the module, nothing pinned, the controller still works", () => {
  const limit = 16 << 20;
  const r = runUser(node, "limit", { drop: ["sys_rawio", "ipc_lock"], memlock: limit });
  expect(hasCap(r.capEff, CAP_IPC_LOCK)).toBe(false);
  expect(r.error).toBeUndefined();
  expect(r.limit).toBe(limit);
  expect(r.first).toBe(true);
  // 32 MiB of plain memory is fine under a 16 MiB limit: the library does not mlock it any more.
  expect(r.plainOk).toBe(true);
  expect(r.refused?.name).toBe(PermissionError.name);
  expect(r.refused.message).toContain("cannot lock 33554432 bytes of DMA memory (DISNVM_IOC_MAP_HOST: ENOMEM)");
  expect(r.refused.message).toContain("ulimit -l");
  expect(r.lckAfter).toBe(r.lckBefore);
  expect(r.pinnedAfter).toBe(r.pinnedBefore);
  expect(r.after).toBe(true);
  expect(pinnedPages()).toBe(0);
});

test("after DISNVM_IOC_UNMAP the controller cannot reach the pages: a command whose PRP list sits there fails", () => {
  const ctrl = Controller.openBackend(new DisnvmBackend(node));
  try {
    const ns = new Namespace(ctrl, 1);
    const q = ctrl.createIoQueue({ entries: 8 });
    const blocks = (3 * 4096) / ns.lbaSize; // three pages: PRP1 and a list at PRP2 with two entries
    using data = ctrl.allocBuffer(3 * 4096);
    using back = ctrl.allocBuffer(3 * 4096);
    crypto.getRandomValues(data.bytes);
    const write = (lba: number, list: number) => (sqe: Uint32Array, o: number, cid: number) =>
      commands.writeSqe(sqe, o, commands.NVM_WRITE, cid, ns.nsid, data.busAddress(0), list, lba, 0, blocks - 1);
    for (let attempt = 0; attempt < 3; attempt++) {
      const lba = 16384 + attempt * 64;
      const list = ctrl.allocBuffer(4096);
      for (const [i, page] of [1, 2].entries()) {
        const a = data.busAddress(page * 4096);
        list.u32[2 * i] = a % 2 ** 32;
        list.u32[2 * i + 1] = Math.floor(a / 2 ** 32);
      }
      const listIova = list.busAddress(0);
      // The controller reads the list through the IOMMU: its IOTLB now caches that translation.
      q.commandSync(write(lba, listIova));
      list.free(); // DISNVM_IOC_UNMAP; the page goes back to the system
      // At once, well inside the flush queue's deferral (10 ms): the same list by its old IOVA.
      let err: unknown;
      try {
        q.commandSync(write(lba + 32, listIova));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(NvmeStatusError);
      expect((err as NvmeStatusError).sct).toBe(0);
      expect((err as NvmeStatusError).sc).toBe(0x04); // Data Transfer Error: the list could not be read
      // The first write landed whole; the refused one wrote nothing.
      back.bytes.fill(0xee);
      q.rwSync(commands.NVM_READ, ns.nsid, lba, blocks, back, 0, back.size);
      expect(Buffer.compare(back.bytes, data.bytes)).toBe(0);
      q.rwSync(commands.NVM_READ, ns.nsid, lba + 32, blocks, back, 0, back.size);
      expect(back.bytes.every((b) => b === 0)).toBe(true);
    }
  } finally {
    ctrl.close();
  }
  expect(pinnedPages()).toBe(0);
});
