/**
 * The data pattern the queue core's bench writes and checks (nvmq_pattern() in
 * c/include/nvm_queue_job.h), in TypeScript: dword i of the block at LBA `lba` is a hash of
 * (lba, i, seed), so any block read back can be checked without knowing what else was written.
 */

/** Dword `dword` of the block at `lba`. */
export function patternDword(lba: number, dword: number, seed: number): number {
  const lo = lba >>> 0;
  const hi = Math.floor(lba / 0x1_0000_0000) >>> 0;
  let x = (Math.imul(lo, 0x9e3779b1) ^ Math.imul(hi, 0x85ebca77) ^ Math.imul(dword, 0xc2b2ae3d) ^ seed) >>> 0;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x ^= x >>> 16;
  return x >>> 0;
}

/** Fill `out` (a whole number of blocks) with the pattern of `blocks` blocks from `lba`. */
export function fillPattern(out: Uint32Array, lba: number, blocks: number, lbaSize: number, seed: number): void {
  const per = lbaSize / 4;
  for (let b = 0; b < blocks; b++) for (let i = 0; i < per; i++) out[b * per + i] = patternDword(lba + b, i, seed);
}

/** The first LBA of `blocks` blocks from `lba` whose bytes in `data` are not its pattern, or -1. */
export function checkPattern(data: Uint32Array, lba: number, blocks: number, lbaSize: number, seed: number): number {
  const per = lbaSize / 4;
  for (let b = 0; b < blocks; b++) {
    for (let i = 0; i < per; i++) if (data[b * per + i] !== patternDword(lba + b, i, seed)) return lba + b;
  }
  return -1;
}
