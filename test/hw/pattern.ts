/**
 * A deterministic test pattern for whole-namespace round trips: every 4 KiB block of the pattern is
 * a xorshift128 stream keyed by (seed, block index), so any byte range can be recomputed on its own
 * (the host checks a disk image written in the guest without either side keeping a copy).
 *
 * The state is four fmix32 outputs, three of them bijections of the seed, the block index's low half
 * and its high half: two different (seed, block) pairs never start from the same state, so a block
 * written at the wrong LBA, or a stale one, never matches. Words are stored little-endian (x86-64).
 *
 *   bun test/hw/pattern.ts --seed S --bytes N --out FILE      # write N bytes of pattern S
 *   bun test/hw/pattern.ts --seed S --bytes N --verify FILE   # exit 1 at the first mismatch
 */
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { parseArgs } from "node:util";

/** Bytes covered by one keyed stream. */
export const PATTERN_BLOCK = 4096;
const WORDS = PATTERN_BLOCK / 4;
const TWO32 = 0x1_0000_0000;
/** File I/O unit of the CLI and verifyFile: 1 MiB, a multiple of PATTERN_BLOCK. */
const IO_CHUNK = 1 << 20;

/** MurmurHash3's 32-bit finalizer: a bijection on u32. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Fill `out` (1024 words) with block `block` of pattern `seed`. */
function fillBlock(seed: number, block: number, out: Uint32Array): void {
  const lo = block >>> 0;
  const hi = Math.floor(block / TWO32) >>> 0;
  let x = fmix32(seed ^ 0x9e3779b9);
  let y = fmix32(lo ^ 0x7f4a7c15);
  let z = fmix32(hi ^ 0x2545f491 ^ seed);
  // w only has to keep the state non-zero (xorshift128's one forbidden state).
  let w = (fmix32((seed + lo + 0x61c88647) >>> 0) | 1) >>> 0;
  // A few rounds so every output word depends on the whole key.
  for (let i = -8; i < WORDS; i++) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = (w ^ (w >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    if (i >= 0) out[i] = w;
  }
}

const scratch = new Uint32Array(WORDS);
const scratchBytes = new Uint8Array(scratch.buffer);

/**
 * Fill `out` with the pattern bytes [byteOffset, byteOffset + out.length) of pattern `seed`
 * (u32). Any offset and length: a partial block at either end is cut from its full block.
 */
export function patternFill(seed: number, byteOffset: number, out: Uint8Array): void {
  if (!Number.isInteger(seed) || seed < 0 || seed >= TWO32) throw new RangeError(`pattern seed ${seed} must be a u32`);
  if (!Number.isSafeInteger(byteOffset) || byteOffset < 0) throw new RangeError(`pattern offset ${byteOffset} must be a non-negative integer`);
  let pos = 0;
  while (pos < out.length) {
    const abs = byteOffset + pos;
    const block = Math.floor(abs / PATTERN_BLOCK);
    const from = abs - block * PATTERN_BLOCK;
    const n = Math.min(PATTERN_BLOCK - from, out.length - pos);
    // Whole, word-aligned blocks are generated in place; the rest through the scratch block.
    if (from === 0 && n === PATTERN_BLOCK && (out.byteOffset + pos) % 4 === 0) {
      fillBlock(seed, block, new Uint32Array(out.buffer, out.byteOffset + pos, WORDS));
    } else {
      fillBlock(seed, block, scratch);
      out.set(scratchBytes.subarray(from, from + n), pos);
    }
    pos += n;
  }
}

/** Write `bytes` bytes of pattern `seed` to `path` (created or truncated), 1 MiB at a time. */
export function writePatternFile(path: string, seed: number, bytes: number): void {
  const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, Math.max(bytes, 1)));
  const fd = openSync(path, "w");
  try {
    for (let off = 0; off < bytes; ) {
      const n = Math.min(buf.length, bytes - off);
      const chunk = buf.subarray(0, n);
      patternFill(seed, off, chunk);
      for (let done = 0; done < n; ) done += writeSync(fd, chunk, done, n - done);
      off += n;
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Stream `path` and compare its first `bytes` bytes with pattern `seed`. Returns the offset of the
 * first byte that differs (the file's size when it is shorter than `bytes`), or -1 when they match.
 * Bytes past `bytes` are not looked at.
 */
export function verifyFile(path: string, seed: number, bytes: number): number {
  const got = Buffer.allocUnsafe(IO_CHUNK);
  const want = Buffer.allocUnsafe(IO_CHUNK);
  const fd = openSync(path, "r");
  try {
    for (let off = 0; off < bytes; ) {
      const len = Math.min(IO_CHUNK, bytes - off);
      let n = 0;
      while (n < len) {
        const r = readSync(fd, got, n, len - n, off + n);
        if (r === 0) break;
        n += r;
      }
      patternFill(seed, off, want.subarray(0, n));
      if (!got.subarray(0, n).equals(want.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (got[i] !== want[i]) return off + i;
      }
      if (n < len) return off + n;
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return -1;
}

function cli(): number {
  const usage = `usage: bun test/hw/pattern.ts --seed S --bytes N (--out FILE | --verify FILE)
  --seed S       pattern key, 0 to 4294967295
  --bytes N      length in bytes (suffix K, M or G for KiB, MiB, GiB)
  --out FILE     write the pattern to FILE
  --verify FILE  compare FILE's first N bytes with the pattern; exit 1 at the first mismatch
`;
  let values;
  try {
    ({ values } = parseArgs({
      args: Bun.argv.slice(2),
      options: { seed: { type: "string" }, bytes: { type: "string" }, out: { type: "string" }, verify: { type: "string" }, help: { type: "boolean", short: "h" } },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${usage}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(usage);
    return 0;
  }
  const seed = Number(values.seed);
  const m = /^(\d+)([KMG]?)$/i.exec(values.bytes ?? "");
  const bytes = m ? Number(m[1]) * 1024 ** " KMG".indexOf((m[2] || " ").toUpperCase()) : NaN;
  if (!/^\d+$/.test(values.seed ?? "") || seed >= TWO32 || !Number.isSafeInteger(bytes) || (values.out === undefined) === (values.verify === undefined)) {
    process.stderr.write(usage);
    return 2;
  }
  try {
    if (values.out !== undefined) {
      writePatternFile(values.out, seed, bytes);
      return 0;
    }
    const bad = verifyFile(values.verify!, seed, bytes);
    if (bad < 0) return 0;
    process.stderr.write(`${values.verify}: differs from pattern ${seed} at byte ${bad} (block ${Math.floor(bad / PATTERN_BLOCK)} of the pattern)\n`);
    return 1;
  } catch (e) {
    process.stderr.write(`pattern: ${(e as Error).message}\n`);
    return 1;
  }
}

if (import.meta.main) process.exit(cli());
