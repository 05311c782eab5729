/** This process's mappings from /proc/self/smaps: where each lies and the page size backing it. */
import { readFileSync } from "node:fs";

export interface SmapsEntry {
  readonly start: number;
  readonly end: number;
  /** KernelPageSize: 2048 for a hugetlb mapping of 2 MiB pages, 4 for ordinary memory. */
  readonly kernelPageKb: number;
  /** The pathname column: "/anon_hugepage (deleted)" for MAP_HUGETLB memory. */
  readonly path: string;
}

export function smaps(): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  let cur: { start: number; end: number; path: string } | undefined;
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (head) {
      cur = { start: parseInt(head[1]!, 16), end: parseInt(head[2]!, 16), path: head[3]! };
      continue;
    }
    const kps = /^KernelPageSize:\s+(\d+) kB$/.exec(line);
    if (kps && cur) {
      out.push({ ...cur, kernelPageKb: Number(kps[1]) });
      cur = undefined;
    }
  }
  return out;
}

/** The mapping that holds `addr`, if any. */
export function smapsEntry(addr: number): SmapsEntry | undefined {
  return smaps().find((m) => m.start <= addr && addr < m.end);
}

/** Bytes of this process's address space in 2 MiB hugetlb mappings. */
export function hugetlbBytes(): number {
  return smaps()
    .filter((m) => m.kernelPageKb === 2048)
    .reduce((sum, m) => sum + (m.end - m.start), 0);
}
