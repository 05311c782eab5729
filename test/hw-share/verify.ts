/** Checking what share clients (client.ts) left on the media, from a test process. */
import { expect } from "bun:test";
import { Namespace, type Controller } from "../../lib/index.ts";
import { fillShare } from "./pattern.ts";

/** The last round (`round`) a client with `seed` wrote over [first, first + blocks) of `nsid`, read back through `c`. */
export async function expectPattern(c: Controller, nsid: number, first: number, blocks: number, seed: number, round: number): Promise<void> {
  const ns = new Namespace(c, nsid);
  const per = Math.min(blocks, 64);
  const buf = c.allocBuffer(per * ns.lbaSize);
  const want = new Uint8Array(per * ns.lbaSize);
  for (let lba = first; lba < first + blocks; lba += per) {
    const n = Math.min(per, first + blocks - lba);
    await ns.read(lba, n, buf);
    fillShare(want, seed, round * 100_000 + lba);
    expect(Buffer.compare(buf.bytes.subarray(0, n * ns.lbaSize), want.subarray(0, n * ns.lbaSize))).toBe(0);
  }
}
