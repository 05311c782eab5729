/**
 * Software cost of building commands in place, on plain locked memory (no device): what the
 * TypeScript side adds per command before the doorbell. Purpose: keep the SQE writer and the
 * completion check allocation-free and cheap as the library grows. Method: mitata, one 64-entry
 * SQ and CQ in memory from the native DMA allocator. `bun run bench [--json]`.
 * The comparison with the kernel driver and with the same loop in C comes with the I/O path.
 */
import { bench, group, run } from "mitata";
import { toArrayBuffer } from "bun:ffi";
import { native } from "../lib/native.ts";
import { CQE_DWORDS, NVM_READ, readWrite, SQE_DWORDS, writeCommand } from "../lib/spec/commands.ts";

const n = native();
const ENTRIES = 64;
const sqMem = n.nvm_dma_alloc(ENTRIES * 64, 0);
const cqMem = n.nvm_dma_alloc(ENTRIES * 16, 0);
if (!sqMem || !cqMem) throw new Error("nvm_dma_alloc failed: raise the memlock limit (ulimit -l)");
const sq = new Uint32Array(toArrayBuffer(sqMem, 0, ENTRIES * 64));
const cq = new Uint32Array(toArrayBuffer(cqMem, 0, ENTRIES * 16));
const bar = n.nvm_host_alloc(0x2000)!;

let tail = 0;
let cid = 0;
group("submission entry", () => {
  bench("writeCommand(readWrite(...)) into the SQ slot", () => {
    writeCommand(sq, tail * SQE_DWORDS, cid, readWrite(NVM_READ, 1, 123456, 8, 0x1_2345_6000, 0));
    tail = tail + 1 === ENTRIES ? 0 : tail + 1;
    cid = (cid + 1) & 0xffff;
  });
  bench("doorbell store (release fence + 32-bit store, host memory)", () => {
    n.nvm_doorbell(bar, 0x1008, tail);
  });
});

let head = 0;
group("completion check", () => {
  bench("Atomics.load of the phase tag", () => {
    const hit = (Atomics.load(cq, head * CQE_DWORDS + 3) >>> 16) & 1;
    head = hit ? head : head + 1 === ENTRIES ? 0 : head + 1;
  });
});

await run({ format: process.argv.includes("--json") ? "json" : "mitata" });
