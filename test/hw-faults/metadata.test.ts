/**
 * Namespaces formatted with metadata, which libnvm does not transfer yet: QEMU's controller is
 * started (test/vm/hw.ts FAULT_CONFIG) with one of each layout — 8 bytes of separate metadata
 * (the controller would DMA it to MPTR, which libnvm leaves 0), 8 bytes interleaved (extended
 * LBA: it would move 520 bytes per block, past the buffer) and extended with protection
 * information type 1. Each is refused with UnsupportedError before any command reaches the
 * controller: its own SMART counters of host reads and writes do not move.
 */
import { expect, test } from "bun:test";
import type { IoQueue } from "../../lib/io.ts";
import { Controller, Namespace, UnsupportedError, commands } from "../../lib/index.ts";
import { ctrlAddress, REPO, requireExpected } from "../hw/common.ts";

function tool(args: string[]) {
  const p = Bun.spawnSync(["bun", ...args], { cwd: REPO, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

interface MetaNs {
  nsid: number;
  metadata?: { ms: number; extended: boolean; pi?: number };
}

test("metadata namespaces (separate, extended, with PI) are refused with UnsupportedError; nothing reaches the controller", async () => {
  const exp = requireExpected().namespaces as MetaNs[];
  const meta = exp.filter((n) => n.metadata);
  expect(meta.length).toBe(3);
  const c = Controller.open(ctrlAddress());
  try {
    const plain = new Namespace(c, exp.find((n) => !n.metadata)!.nsid);
    const q = c.createIoQueue({ entries: 4 }) as IoQueue;
    const buf = c.allocBuffer(16 * 520);
    await plain.read(0, 1, buf); // the queue works
    const before = c.smartLog();
    for (const n of meta) {
      // Identify still reports the format as the controller has it.
      const info = c.identifyNamespace(n.nsid);
      expect(info.isActive).toBe(true);
      expect(info.metadataSize).toBe(n.metadata!.ms);
      expect(info.extendedMetadata).toBe(n.metadata!.extended);
      expect(info.dps & 7).toBe(n.metadata!.pi ?? 0);
      let err: unknown;
      try {
        new Namespace(c, n.nsid);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UnsupportedError);
      expect((err as Error).message).toContain(`${n.metadata!.ms} bytes of ${n.metadata!.extended ? "extended (interleaved)" : "separate"} metadata`);
      if (n.metadata!.pi) expect((err as Error).message).toContain(`protection information type ${n.metadata!.pi}`);
      // The low-level path is refused the same way, before the SQ.
      const tail = q.sq.tail;
      const cid = q.acquire();
      expect(() => q.rw(cid, commands.NVM_WRITE, n.nsid, 0, 16, buf, 0, 16 * 512)).toThrow(UnsupportedError);
      q.release(cid);
      expect(() => q.rwSync(commands.NVM_READ, n.nsid, 0, 16, buf, 0, 16 * 512)).toThrow(UnsupportedError);
      expect(await q.rwAsync(commands.NVM_WRITE, n.nsid, 0, 1, buf, 0, 512).catch((e: unknown) => e)).toBeInstanceOf(UnsupportedError);
      expect(q.sq.tail).toBe(tail);
    }
    const after = c.smartLog();
    expect(after.hostWriteCommands).toBe(before.hostWriteCommands);
    expect(after.hostReadCommands).toBe(before.hostReadCommands);
  } finally {
    c.close();
  }
  // The identify tool still lists them (it only reads Identify Namespace).
  const r = tool(["examples/identify.ts", `--ctrl=${ctrlAddress()}`]);
  expect(r.code).toBe(0);
  for (const n of meta) expect(r.out).toContain(`Namespace ${n.nsid} information`);
});
