/**
 * Builds the test-only programs and library of test/queue with gcc, on first use, into
 * test/queue/build/ (git-ignored; rebuilt when a source is newer):
 *   core-suite-tsan   the queue core suite under ThreadSanitizer (test/unit/queue-core.test.ts)
 *   core-suite-race   the same with the ready[] store weakened to relaxed: TSan must report a race
 *   core-suite        optimised, no sanitizer (the suite again, and bench/queue-core.ts)
 *   libfakectrl.so    the fake controller thread for TypeScript (the GPU check, GPU-mode tests)
 */
import { existsSync, mkdirSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";

const HERE = import.meta.dir;
const ROOT = join(HERE, "..", "..");
export const BUILD = join(HERE, "build");
const INCLUDE = join(ROOT, "c", "include");
const SUITE = [join(HERE, "core-suite.c"), join(HERE, "fake-ctrl.c"), join(ROOT, "c", "src", "queue.c")];
const DEPENDS = [
  ...SUITE,
  join(HERE, "fake-ctrl.h"),
  join(INCLUDE, "nvm_queue_core.h"),
  join(INCLUDE, "nvm_queue_job.h"),
  join(INCLUDE, "nvm_native.h"),
  join(ROOT, "c", "src", "common.h"),
];
const COMMON = ["-std=gnu11", "-g", "-Wall", "-Wextra", "-Werror", `-I${INCLUDE}`, `-I${join(ROOT, "c", "src")}`];

function build(out: string, args: string[]): string {
  if (existsSync(out) && DEPENDS.every((d) => statSync(out).mtimeMs >= statSync(d).mtimeMs)) return out;
  mkdirSync(BUILD, { recursive: true });
  // Built under a temporary name and renamed, so a concurrent reader never runs half a file.
  const tmp = `${out}.${process.pid}.tmp`;
  const cmd = ["gcc", ...COMMON, ...args, "-o", tmp];
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`building ${out} failed (${cmd.join(" ")}):\n${r.stderr.toString()}`);
  renameSync(tmp, out);
  return out;
}

/** The suite under ThreadSanitizer. */
export function coreSuiteTsan(): string {
  return build(join(BUILD, "core-suite-tsan"), ["-O1", "-fsanitize=thread", ...SUITE, "-lpthread"]);
}

/** The suite under ThreadSanitizer with the release store of ready[] weakened to relaxed. */
export function coreSuiteRace(): string {
  return build(join(BUILD, "core-suite-race"), ["-O1", "-fsanitize=thread", "-DNVMQ_ORDER_READY=NVMQ_RLX", ...SUITE, "-lpthread"]);
}

/** The suite optimised, without a sanitizer. */
export function coreSuite(): string {
  return build(join(BUILD, "core-suite"), ["-O2", ...SUITE, "-lpthread"]);
}

/** The fake controller as a shared library. */
export function fakeCtrlLibrary(): string {
  return build(join(BUILD, "libfakectrl.so"), ["-O2", "-shared", "-fPIC", "-fvisibility=hidden", join(HERE, "fake-ctrl.c"), "-lpthread"]);
}

/** TSAN_OPTIONS for the suite: report every race, exit 66 when any was found. */
export const TSAN_OPTIONS = "halt_on_error=0 exitcode=66 history_size=7";
