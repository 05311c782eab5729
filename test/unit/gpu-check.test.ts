/**
 * test/gpu/check.sh is run on a machine with a GPU, which CI has not: here its parts that need none
 * are run, so the script a GPU machine gets is known to work. Without a driver it must fail loudly
 * (every check reported, none skipped); against the mock libcuda every check must pass but the
 * dma-buf export, which the mock can only do through /dev/udmabuf.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { MOCK_LIBCUDA } from "../cuda/mock.ts";

const REPO = join(import.meta.dir, "..", "..");
const CHECKS = ["driver", "devices", "alloc", "copy", "errors", "dmabuf-attribute", "dmabuf-export", "registerHost", "registerHost-release", "worker", "close"];

function runCheck(libcuda: string): { lines: string[]; status: number | null } {
  const r = spawnSync("bash", [join(REPO, "test", "gpu", "check.sh")], {
    cwd: REPO,
    env: { ...process.env, LIBNVM_LIBCUDA: libcuda },
    encoding: "utf8",
    timeout: 120_000,
  });
  return { lines: `${r.stdout}${r.stderr}`.trim().split("\n"), status: r.status };
}

/** The check name and verdict of each "gpu: ok|FAIL <check> ..." line. */
function verdicts(lines: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of lines) {
    const v = /^gpu: (ok|FAIL) (\S+) /.exec(l);
    if (v) m.set(v[2]!, v[1]!);
  }
  return m;
}

describe("test/gpu/check.sh", () => {
  test("with no CUDA driver it fails: the driver check says what is missing, every other check is reported not run", () => {
    const r = runCheck("/nonexistent/libcuda.so.1");
    expect(r.status).toBe(1);
    expect(r.lines).toContain(
      "gpu: FAIL driver no CUDA driver (libcuda.so.1 not found at LIBNVM_LIBCUDA=/nonexistent/libcuda.so.1): install the NVIDIA driver, or set LIBNVM_LIBCUDA to its libcuda.so.1 [no-driver, dlopen]",
    );
    expect([...verdicts(r.lines)]).toEqual(CHECKS.map((c) => [c, "FAIL"]));
    expect(r.lines.filter((l) => l.includes("not run: driver failed"))).toHaveLength(CHECKS.length - 1);
    expect(r.lines.at(-1)).toBe(`gpu: 0 passed, ${CHECKS.length} failed`);
  }, 60_000);

  test("against the mock libcuda every check runs and passes, except a dma-buf export without /dev/udmabuf", () => {
    const udmabuf = existsSync("/dev/udmabuf");
    const r = runCheck(MOCK_LIBCUDA);
    const v = verdicts(r.lines);
    expect([...v.keys()]).toEqual(CHECKS);
    for (const c of CHECKS) expect([c, v.get(c)]).toEqual([c, c === "dmabuf-export" && !udmabuf ? "FAIL" : "ok"]);
    if (!udmabuf) expect(r.lines.find((l) => l.startsWith("gpu: FAIL dmabuf-export"))).toContain("CUDA_ERROR_NOT_SUPPORTED");
    expect(r.lines.at(-1)).toBe(udmabuf ? `gpu: ${CHECKS.length} passed, 0 failed` : `gpu: ${CHECKS.length - 1} passed, 1 failed`);
    expect(r.status).toBe(udmabuf ? 0 : 1);
  }, 60_000);
});
