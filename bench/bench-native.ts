/**
 * bun:ffi binding of libnvm-bench.so (c/src/bench.c): the completer thread and the C reference
 * loop. A benchmark instrument only: lib/ never loads it. Built (or brought up to date) on every
 * load with `cmake --build c/build --target nvm-bench`; the target is not in the default build.
 */
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const BUILD = join(ROOT, "c", "build");
const LIB = join(BUILD, "libnvm-bench.so");
const { ptr: P, u32, i32 } = FFIType;

const symbols = {
  nvm_bench_abi_version: { args: [], returns: u32 },
  nvm_bench_pin: { args: [i32], returns: i32 },
  nvm_bench_completer_start: { args: [P, u32, P, u32, P, u32, u32, u32, i32], returns: i32 },
  nvm_bench_completer_hold: { args: [i32, u32], returns: i32 },
  nvm_bench_completer_count: { args: [i32], returns: u32 },
  nvm_bench_completer_bad: { args: [i32], returns: u32 },
  nvm_bench_completer_step: { args: [i32], returns: u32 },
  nvm_bench_completer_pause: { args: [i32, u32], returns: i32 },
  nvm_bench_completer_latency: { args: [i32, u32], returns: i32 },
  nvm_bench_completer_stop: { args: [i32], returns: i32 },
  nvm_bench_completer_log: { args: [i32, P, u32], returns: i32 },
  nvm_bench_completer_logged: { args: [i32], returns: u32 },
  nvm_bench_loop_create: { args: [P, u32, P, u32, P, u32, u32, u32, u32, u32, u32, u32], returns: i32 },
  nvm_bench_loop_batch: { args: [i32, u32, u32], returns: u32 },
  nvm_bench_loop_post: { args: [i32, u32, u32], returns: u32 },
  nvm_bench_loop_drain: { args: [i32], returns: u32 },
  nvm_bench_loop_inline: { args: [i32, i32], returns: i32 },
  nvm_bench_loop_clock: { args: [i32, u32], returns: i32 },
  nvm_bench_loop_outstanding: { args: [i32], returns: u32 },
  nvm_bench_loop_errors: { args: [i32], returns: u32 },
  nvm_bench_loop_destroy: { args: [i32], returns: i32 },
  nvm_bench_perf_layout: { args: [u32], returns: u32 },
  nvm_bench_perf_run: { args: [P, P], returns: i32 },
  nvm_bench_perf_bucket: { args: [u32, u32], returns: u32 },
} as const;

export interface BenchLib {
  nvm_bench_abi_version(): number;
  nvm_bench_pin(cpu: number): number;
  nvm_bench_completer_start(
    sq: Pointer, sqEntries: number, cq: Pointer, cqEntries: number, bar0: Pointer, sqDb: number, cqDb: number, sqid: number, cpu: number,
  ): number;
  nvm_bench_completer_hold(h: number, hold: number): number;
  nvm_bench_completer_count(h: number): number;
  nvm_bench_completer_bad(h: number): number;
  nvm_bench_completer_step(h: number): number;
  nvm_bench_completer_pause(h: number, paused: number): number;
  nvm_bench_completer_latency(h: number, latencyNs: number): number;
  nvm_bench_completer_stop(h: number): number;
  /** Log CDW0, CDW10-12 of the next `capacity` entries answered into `log` (4 u32 each); tests only. */
  nvm_bench_completer_log(h: number, log: Pointer | null, capacity: number): number;
  nvm_bench_completer_logged(h: number): number;
  nvm_bench_loop_create(
    sq: Pointer, sqEntries: number, cq: Pointer, cqEntries: number, bar0: Pointer, sqDb: number, cqDb: number,
    nsid: number, busLo: number, busHi: number, bufBytes: number, bs: number,
  ): number;
  nvm_bench_loop_batch(h: number, batch: number, opcode: number): number;
  nvm_bench_loop_post(h: number, count: number, opcode: number): number;
  nvm_bench_loop_drain(h: number): number;
  nvm_bench_loop_inline(h: number, completer: number): number;
  nvm_bench_loop_clock(h: number, perBatch: number): number;
  nvm_bench_loop_outstanding(h: number): number;
  nvm_bench_loop_errors(h: number): number;
  nvm_bench_loop_destroy(h: number): number;
  /** 0: parameter slots, 1: where the histogram starts in the results, 2: histogram buckets. */
  nvm_bench_perf_layout(what: number): number;
  /** The C reference driver's job (c/src/bench_perf.c): `params` and `out` are Float64Arrays. */
  nvm_bench_perf_run(params: Pointer, out: Pointer): number;
  /** The histogram bucket the C reference files a latency of hi:lo ns under. */
  nvm_bench_perf_bucket(lo: number, hi: number): number;
}

/** nvm_bench_completer_start `cpu` value: no thread, the caller steps the completer itself. */
export const NO_THREAD = -2;

let lib: BenchLib | undefined;

/** Bump with every change of c/src/bench.c's symbols. */
const ABI = 6;

/**
 * Build, or bring up to date (make compares timestamps: a no-op when nothing changed), and load
 * the library. Without cmake an existing build is used as it is, and so it is in the QEMU guest
 * (LIBNVM_VM), which sees the checkout read-only: bench:guest builds it on the host first.
 */
export function benchNative(): BenchLib {
  if (lib) return lib;
  if (Bun.which("cmake") !== null && !process.env.LIBNVM_VM) {
    const steps = [
      ...(existsSync(join(BUILD, "CMakeCache.txt")) ? [] : [["cmake", "-S", join(ROOT, "c"), "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release"]]),
      ["cmake", "--build", BUILD, "--target", "nvm-bench"],
    ];
    for (const cmd of steps) {
      const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
      if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed:\n${r.stderr.toString()}${r.stdout.toString()}`);
    }
  } else if (!existsSync(LIB)) {
    throw new Error(`${LIB} is missing and cmake is not installed: apt-get install -y cmake gcc`);
  }
  lib = dlopen(LIB, symbols).symbols as unknown as BenchLib;
  if (lib.nvm_bench_abi_version() !== ABI) throw new Error(`${LIB} is stale: cmake --build c/build --target nvm-bench`);
  return lib;
}
