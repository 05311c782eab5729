/**
 * JSON as nvme-cli prints it (json-c, pretty): `"key":value`, two spaces per level. A bigint is
 * written as a plain number with every digit, so a u64 such as NSZE keeps the exact value and the
 * number type nvme-cli gives it; nvme-cli's 128-bit counters are strings, and callers pass them so.
 */
export type JsonValue = string | number | bigint | boolean | null | readonly JsonValue[] | { readonly [key: string]: JsonValue };

export function formatJson(v: JsonValue, indent = ""): string {
  if (typeof v === "bigint") return v.toString();
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  const inner = indent + "  ";
  if (Array.isArray(v)) {
    const items = v as readonly JsonValue[];
    return `[\n${items.map((x) => inner + formatJson(x, inner)).join(",\n")}${items.length ? "\n" : ""}${indent}]`;
  }
  const entries = Object.entries(v as { readonly [key: string]: JsonValue });
  return `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}:${formatJson(x, inner)}`).join(",\n")}${entries.length ? "\n" : ""}${indent}}`;
}

/** One JSON document on stdout, newline-terminated. */
export function printJson(v: JsonValue): void {
  process.stdout.write(formatJson(v) + "\n");
}
