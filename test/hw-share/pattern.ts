/** The data a share client (client.ts) writes: xorshift32 from (seed, key), so any process can check it. */
export function fillShare(b: Uint8Array, seed: number, key: number): void {
  const v = new Uint32Array(b.buffer, b.byteOffset, b.length / 4);
  let x = (seed * 2654435761 + key * 40503) >>> 0 || 1;
  for (let i = 0; i < v.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    v[i] = x;
  }
}
