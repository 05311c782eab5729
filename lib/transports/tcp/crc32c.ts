/**
 * CRC-32C (Castagnoli), the NVMe/TCP header and data digest (NVMe/TCP Transport Specification
 * 1.0, 3.6.2.2 "Digests"): reflected polynomial 0x82F63B78, initial value and final XOR
 * 0xFFFFFFFF, stored little endian. The transport computes digests in C (nvm_crc32c: the SSE4.2
 * instruction where the CPU has it, about ten times faster); this TypeScript twin, slicing by 8,
 * is the reference the tests check the C one against and what the test targets compute with, so a
 * bug in one cannot hide in the other.
 */

/** CRC32C("123456789"): the check value every implementation must give. */
export const CRC32C_CHECK = 0xe3069283;

const T = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
    t[0]![i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) for (let s = 1; s < 8; s++) t[s]![i] = (t[s - 1]![i]! >>> 8) ^ t[0]![t[s - 1]![i]! & 0xff]!;
  return t;
})();

/**
 * CRC-32C of `data`, continuing from `prev` (a finished CRC; 0 to start), as nvm_crc32c:
 * crc32c(b, crc32c(a)) is the CRC of a followed by b.
 */
export function crc32c(data: Uint8Array, prev = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = T as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let crc = ~prev >>> 0;
  let i = 0;
  const n = data.length;
  for (; i + 8 <= n; i += 8) {
    const lo = (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)) ^ crc;
    const hi = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    crc =
      t7[lo & 0xff]! ^ t6[(lo >>> 8) & 0xff]! ^ t5[(lo >>> 16) & 0xff]! ^ t4[lo >>> 24]! ^
      t3[hi & 0xff]! ^ t2[(hi >>> 8) & 0xff]! ^ t1[(hi >>> 16) & 0xff]! ^ t0[hi >>> 24]!;
  }
  for (; i < n; i++) crc = (crc >>> 8) ^ t0[(crc ^ data[i]!) & 0xff]!;
  return ~crc >>> 0;
}
