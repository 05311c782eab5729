/**
 * A client of a disnvm server (lib/share/remote-disnvm.ts) against a server played by hand
 * (disnvm-server-worker.ts): BAR0 mapped from the passed descriptor with the register page
 * read-only; DMA memory handed over as memfds, its bus addresses gathered page by page over as
 * many pages messages as the server needs; memory given back on free.
 */
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { native } from "../../../lib/native.ts";
import { ShareClientTransport } from "../../../lib/share/client.ts";
import { REG_CAP } from "../../../lib/spec/registers.ts";

const dir = mkdtempSync(join(tmpdir(), "libnvm-share-disnvm-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("BAR0 through the server's descriptor; 5000 scattered pages gathered over two pages messages; memory given back on free", async () => {
  const path = join(dir, "d.sock");
  const w = new Worker(join(import.meta.dir, "disnvm-server-worker.ts"), { workerData: { path, bar0Size: 16384 } });
  const messages: Record<string, unknown>[] = [];
  let wake = () => {};
  w.on("message", (m) => {
    messages.push(m);
    wake();
  });
  const next = async () => {
    const end = performance.now() + 10_000;
    while (messages.length === 0 && performance.now() < end) await new Promise<void>((r) => ((wake = r), setTimeout(r, 50)));
    return messages.shift();
  };
  try {
    expect(await next()).toEqual({ listening: true });
    const t = ShareClientTransport.connect(path, { timeoutMs: 2000 });
    expect(t.backend.kind).toBe("disnvm");
    expect(native().nvm_read32(t.backend.bar0, REG_CAP)).toBe(0x0f0103ff);
    // The doorbells are writable.
    native().nvm_write32(t.backend.bar0, 0x1000, 7);
    expect(native().nvm_read32(t.backend.bar0, 0x1000)).toBe(7);
    const pages = 5000;
    const m = t.backend.allocDma(pages * 4096);
    expect(m.iova.length).toBe(2 * pages);
    for (const i of [0, 1, 4095, 4096, 4999]) {
      const a = m.iova[2 * i]! + m.iova[2 * i + 1]! * 0x1_0000_0000;
      expect(a).toBe(0x10_0000_0000 + 1 * 0x1_0000_0000 + 2 * i * 4096);
    }
    expect(m.contiguous).toBe(false);
    const small = t.backend.allocDma(4096);
    t.backend.freeDma(m);
    t.close();
    const report = (await next()) as { seen: string[]; stillHeld: number };
    // The free gave its memory back; what close() leaves after its goodbye is the server's to drop
    // with the client (a real server releases all of a client's memory once its queues are gone).
    expect(report.seen).toEqual(["hello", "hold-memory", "memory-pages 1 4096", "hold-memory", "release-memory", "bye"]);
    expect(report.stillHeld).toBe(1);
    expect(small.size).toBe(4096);
  } finally {
    await w.terminate();
  }
});
