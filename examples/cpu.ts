/**
 * --cpu for the load generator: pin the whole process to a set of CPUs, as `taskset -c LIST`
 * does. Every thread the runtime already started (JIT compiler, GC helpers, the event loop's pool)
 * is pinned, and threads started later inherit the mask of the thread that starts them, so the
 * poller and everything that could take a CPU from it share the same CPUs: a run is then
 * comparable with another process pinned the same way (bench:guest's C reference).
 *
 * Placing threads is the application's business, not the library's, so this is a tool's helper
 * over libc's sched_setaffinity(2) rather than part of lib/.
 */
import { dlopen, FFIType, ptr } from "bun:ffi";
import { existsSync, readdirSync } from "node:fs";
import { cpus as osCpus } from "node:os";

/** "3" -> [3]; "0,2" -> [0, 2]; "0-3" -> [0, 1, 2, 3]; sorted, without duplicates. */
export function parseCpuList(s: string, online = osCpus().length): number[] {
  const out = new Set<number>();
  for (const part of s.split(",")) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new Error(`expected CPU numbers and ranges like 1, 0,2 or 0-3`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw new Error(`range ${part} runs backwards`);
    for (let c = lo; c <= hi; c++) {
      if (c >= online) throw new Error(`CPU ${c} does not exist (this machine has ${online}: 0 to ${online - 1})`);
      out.add(c);
    }
  }
  return [...out].sort((a, b) => a - b);
}

/** Bytes of the affinity mask: 1024 CPUs, glibc's cpu_set_t. */
const MASK_BYTES = 128;

/** Pin every thread of this process to `cpus`; throws when the kernel refuses one. */
export function pinProcess(cpus: readonly number[]): void {
  const mask = new Uint8Array(MASK_BYTES);
  // bun#32054: a small typed array's ptr() may move once its buffer is materialized; do it first.
  void mask.buffer;
  for (const c of cpus) mask[c >> 3]! |= 1 << (c & 7);
  const libc = dlopen("libc.so.6", { sched_setaffinity: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 } });
  try {
    const failed: string[] = [];
    // A thread that exits meanwhile is simply gone; one started meanwhile inherits its creator's mask.
    for (const tid of readdirSync("/proc/self/task")) {
      if (libc.symbols.sched_setaffinity(Number(tid), MASK_BYTES, ptr(mask)) !== 0 && existsSync(`/proc/self/task/${tid}`)) failed.push(tid);
    }
    if (failed.length > 0) throw new Error(`sched_setaffinity refused CPUs ${cpus.join(",")} for threads ${failed.join(", ")}`);
  } finally {
    libc.close();
  }
}
