/**
 * A controller served through the disnvm module (suites share-disnvm, and disnvm-iommu, whose boot
 * it rides on): what the module gives a client and what it keeps from it.
 *
 * - The BAR descriptor the server passes (DISNVM_IOC_BAR_FD) maps BAR0 and nothing else: the
 *   register page only read-only, no ioctl (no memory can be mapped through it).
 * - A client's DMA memory is pinned through the server's file: the controller's pinned-page count
 *   grows with it, and a client killed with SIGKILL has its pages unpinned only after the server
 *   deleted its queues.
 * - A server killed with SIGKILL: the module revokes its clients' BAR mappings before it stops the
 *   controller; a client's later doorbell lands in a page of plain memory (no crash, no controller).
 */
import { afterEach, expect, test } from "bun:test";
import { join } from "node:path";
import { toArrayBuffer } from "bun:ffi";
import { Controller, Namespace, ShareError } from "../../lib/index.ts";
import { native } from "../../lib/native.ts";
import { REG_CAP, REG_CSTS } from "../../lib/spec/registers.ts";
import { expectedBackend, requireExpected, waitForLine } from "../hw/common.ts";
import { client, killChildren, RawShareClient, serve, tmp } from "../hw-share/harness.ts";
import { pinnedPages } from "./common.ts";

afterEach(killChildren);

const EACCES = 13;
const ENOTTY = 25;

function requireDisnvm(): void {
  if (expectedBackend() !== "disnvm") throw new Error(`these tests need the controller bound to disnvm (LIBNVM_TEST_BACKEND=disnvm), got ${expectedBackend()}`);
}

test("the BAR descriptor a client gets maps BAR0 and nothing else: registers read-only, doorbells read-write, no ioctl", async () => {
  requireDisnvm();
  const { path } = await serve(join(tmp, "disnvm-bar.sock"));
  const raw = new RawShareClient(path);
  const n = native();
  try {
    const hello = raw.request({ type: "hello", pid: process.pid, label: "bar probe" });
    if (hello.type !== "hello-ok") throw new Error(`no hello-ok: ${JSON.stringify(hello)}`);
    expect(hello.backend).toBe("disnvm");
    expect(raw.fds.length).toBe(1);
    const fd = raw.fds[0]!;
    const size = hello.bar0Size;
    // The whole BAR read-write from offset 0 (as the owner maps it): refused, the registers are the server's.
    expect(n.nvm_disnvm_map_bar(fd, size)).toBeNull();
    expect(n.nvm_last_error()).toBe(EACCES);
    // Registers read-only, doorbells read-write: the client's mapping.
    const bar = n.nvm_disnvm_map_bar_fd(fd, size);
    expect(bar).not.toBeNull();
    expect(n.nvm_read32(bar!, REG_CAP)).toBe(hello.capLo);
    expect(n.nvm_read32(bar!, REG_CSTS) & 1).toBe(1); // CSTS.RDY: the server's controller is enabled
    n.nvm_unmap(bar!, size);
    // No ioctl at all: it maps no memory for DMA, and gives out no further descriptors.
    const out = n.nvm_host_alloc(4096)!;
    const page = n.nvm_host_alloc(4096)!;
    try {
      expect(n.nvm_disnvm_map_host(fd, page, 4096, out)).toBe(-ENOTTY);
      expect(n.nvm_disnvm_info(fd, out)).toBe(-ENOTTY);
      expect(n.nvm_disnvm_bar_fd(fd)).toBe(-ENOTTY);
      expect(n.nvm_disnvm_bus_master(fd, 0)).toBe(-ENOTTY);
    } finally {
      n.nvm_host_free(out);
      n.nvm_host_free(page);
    }
  } finally {
    raw.close();
  }
});

test("a client's memory is pinned through the server's file, and a client killed mid-I/O is unpinned only after its queues are deleted", async () => {
  requireDisnvm();
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { path } = await serve(join(tmp, "disnvm-pin.sock"));
  const before = pinnedPages();
  const victim = client(path, nsid, 12_288, 256, 30, 5);
  await waitForLine(victim.stdout, /^round 1$/, 60_000);
  // Its rings, list pages and buffers: pinned by the module for the server, not by the client.
  const during = pinnedPages();
  expect(during).toBeGreaterThan(before);
  victim.kill("SIGKILL");
  await victim.exited;
  const end = Date.now() + 10_000;
  while (pinnedPages() > before && Date.now() < end) await Bun.sleep(50);
  expect(pinnedPages()).toBe(before);
  // The server serves on.
  using c = Controller.open(`unix:${path}`, { handleSignals: false });
  const buf = c.allocBuffer(4096);
  await new Namespace(c, nsid).read(0, 8, buf);
});

test("SIGKILL of the server: the module revokes the clients' BAR mappings before it stops the controller; a late doorbell lands nowhere", async () => {
  requireDisnvm();
  const nsid = requireExpected().namespaces[0]!.nsid;
  const { p: server, path } = await serve(join(tmp, "disnvm-revoke.sock"));
  const c = Controller.open(`unix:${path}`, { handleSignals: false, timeoutMs: 3000 });
  const ns = new Namespace(c, nsid);
  const q = c.createIoQueue({ entries: 8 });
  const buf = c.allocBuffer(4096);
  ns.readSync(q, 0, 8, buf);
  const n = native();
  const cap = c.registers().cap;
  expect(n.nvm_read32(c.backend.bar0, REG_CAP)).toBe(Number(cap & 0xffff_ffffn));
  server.kill("SIGKILL");
  await server.exited;
  // The server's file is released (the process is gone): the client's BAR pages are now a page of
  // plain memory, zero where nothing was written.
  expect(n.nvm_read32(c.backend.bar0, REG_CAP)).toBe(0);
  expect(n.nvm_read32(c.backend.bar0, REG_CSTS)).toBe(0);
  // A doorbell written now (as a submission would) reaches no controller, and does not crash us.
  n.nvm_doorbell(c.backend.bar0, 0x1000 + 2 * q.qid * 4, 1);
  expect(new Uint32Array(toArrayBuffer(c.backend.bar0, 0x1000 + 2 * q.qid * 4, 4))[0]).toBe(1);
  let e: unknown;
  try {
    c.activeNamespaces();
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(ShareError);
  expect((e as ShareError).reason).toBe("server-gone");
  const t0 = performance.now();
  c.close();
  expect(performance.now() - t0).toBeLessThan(5000);
  // Nothing is left pinned: the module's release unpinned everything after stopping the controller.
  expect(pinnedPages()).toBe(0);
});
