/** Sizes with units, the way nvme-cli shows them: decimal (kB, MB) for capacities, binary (KiB) for block sizes. */

const SI = ["", "k", "M", "G", "T", "P", "E"];
const BINARY = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/** [value, prefix] with value below 1000 (SI) or 1024 (binary). */
function scale(bytes: number, base: number, prefixes: readonly string[]): [number, string] {
  let v = bytes;
  let i = 0;
  while (v >= base && i < prefixes.length - 1) {
    v /= base;
    i++;
  }
  return [v, prefixes[i]!];
}

/** "67.11 MB", "512.00 kB", "0.00 B": decimal units, two decimals. */
export function siBytes(bytes: number | bigint): string {
  const [v, p] = scale(Number(bytes), 1000, SI);
  return `${v.toFixed(2)} ${p}B`;
}

/** Fixed-width SI size for tables: "%6.2f %2sB" ("  67.11  MB"). */
export function siBytesColumn(bytes: number | bigint): string {
  const [v, p] = scale(Number(bytes), 1000, SI);
  return `${v.toFixed(2).padStart(6)} ${p.padStart(2)}B`;
}

/** "4 KiB", "512 B", "1.5 MiB": binary units, no decimals for whole values. */
export function binaryBytes(bytes: number | bigint): string {
  const [v, p] = scale(Number(bytes), 1024, BINARY);
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${p}B`;
}

/** Fixed-width binary size for tables: "%3.0f %3sB" ("512   B", "  4 KiB"). */
export function binaryBytesColumn(bytes: number | bigint): string {
  const [v, p] = scale(Number(bytes), 1024, BINARY);
  return `${v.toFixed(0).padStart(3)} ${p.padStart(2)}B`;
}
