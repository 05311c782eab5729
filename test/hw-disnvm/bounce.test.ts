/**
 * Bounce buffers (issue 10, item 9), in the disnvm-bounce suite: a pc guest without an IOMMU booted
 * with swiotlb=force, so the DMA API would bounce every mapping of the controller through kernel
 * buffers the process never sees, as it does in SEV/TDX guests. The module refuses such mappings
 * with EXDEV, before pinning anything; the library turns that into a DeviceError that says why and
 * what to use instead. Run as root (CAP_SYS_RAWIO: there is no IOMMU), so opening works.
 */
import { beforeAll, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { Controller, DeviceError, DisnvmBackend, native } from "../../lib/index.ts";
import { disnvmNode, ensureHugepages, pinnedPages } from "./common.ts";

const EXDEV = 18;
let node = "";

/** FOLL_PIN pins held anywhere in the guest (/proc/vmstat), folded first. */
function follPins(): number {
  writeFileSync("/proc/sys/vm/stat_refresh", "1");
  const v = readFileSync("/proc/vmstat", "utf8");
  const get = (k: string) => Number(new RegExp(`^${k} (\\d+)$`, "m").exec(v)?.[1] ?? NaN);
  return get("nr_foll_pin_acquired") - get("nr_foll_pin_released");
}

const vmLck = () => Number(/^VmLck:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"))![1]);

beforeAll(() => {
  if (!/(^|\s)swiotlb=force(\s|$)/.test(readFileSync("/proc/cmdline", "utf8"))) throw new Error("this suite needs a guest booted with swiotlb=force (test/vm/hw.ts, disnvm-bounce)");
  node = disnvmNode();
});

test("mapping host memory is refused with EXDEV, pinned and charged nothing, and logged once", () => {
  const n = native();
  const fd = n.nvm_disnvm_open(Buffer.from(`${node}\0`));
  expect(fd).toBeGreaterThanOrEqual(0);
  const addrs = n.nvm_host_alloc(512 * 8)!;
  const scattered = n.nvm_dma_alloc(16 * 4096, 2 /* NVM_DMA_NOLOCK */)!;
  const release = ensureHugepages(1);
  const huge = n.nvm_dma_alloc(2 << 20, 1 | 2 /* NVM_DMA_HUGE | NVM_DMA_NOLOCK */)!;
  const lck = vmLck();
  try {
    expect(scattered).not.toBeNull();
    expect(huge).not.toBeNull();
    expect(-n.nvm_disnvm_map_host(fd, scattered, 16 * 4096, addrs)).toBe(EXDEV);
    // One 2 MiB segment: too large for any bounce slot, refused the same way, not with an I/O error.
    expect(-n.nvm_disnvm_map_host(fd, huge, 2 << 20, addrs)).toBe(EXDEV);
    expect(pinnedPages()).toBe(0);
    expect(follPins()).toBe(0);
    expect(vmLck()).toBe(lck);
  } finally {
    n.nvm_dma_free(huge, 2 << 20, 3);
    release();
    n.nvm_dma_free(scattered, 16 * 4096, 2);
    n.nvm_host_free(addrs);
    expect(n.nvm_disnvm_close(fd)).toBe(0);
  }
  const log = Bun.spawnSync(["dmesg"], { stdout: "pipe" }).stdout.toString();
  expect(log.match(/swiotlb bounces all DMA \(swiotlb=force, or an encrypted-memory guest\): refusing userspace DMA mappings/g)?.length).toBe(1);
});

test("through the library: a DeviceError naming bounce buffers, VFIO and forced bouncing; the node is free again", () => {
  let err: unknown;
  try {
    Controller.openBackend(new DisnvmBackend(node)).close();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(DeviceError);
  const msg = (err as Error).message;
  expect(msg).toContain("DISNVM_IOC_MAP_HOST: EXDEV");
  expect(msg).toContain("swiotlb=force");
  expect(msg).toContain("SEV/TDX");
  expect(msg).toContain("not cache-coherent");
  expect(msg).toContain("VFIO");
  expect(pinnedPages()).toBe(0);
  // Opening failed cleanly: the backend was closed, so the node opens again.
  const b = new DisnvmBackend(node);
  try {
    expect(() => b.allocDma(4096)).toThrow(DeviceError);
    expect(b.info()).toMatchObject({ fileMappings: 0, filePinnedPages: 0, isolated: false });
  } finally {
    b.close();
  }
});
