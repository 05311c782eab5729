/**
 * test/gpu/check.sh is run on a machine with a GPU, which CI has not: here its parts that need none
 * are run, so the script a GPU machine gets is known to work. Without a driver it must fail loudly
 * (every check reported, none skipped); against the mock libcuda every check must pass but the
 * dma-buf export, which the mock can only do through /dev/udmabuf, and the compute-sanitizer
 * memcheck, which needs a real GPU. The queue checks run the mock's "kernels" (host threads
 * running the queue core) against the fake controller thread, with a kernel image the mock
 * accepts (no nvcc needed).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MOCK_LIBCUDA } from "../cuda/mock.ts";
import { fakeCtrlLibrary } from "../queue/build.ts";

const REPO = join(import.meta.dir, "..", "..");
const LAYER = ["driver", "devices", "alloc", "copy", "errors", "dmabuf-attribute", "dmabuf-export", "registerHost", "registerHost-release", "worker", "close"];
const QUEUE = ["q64-1x32", "q1024-1x128", "q1024-132x128", "errors-reorder", "mmio-doorbells", "contention", "large-prp", "coop", "drops"].map((c) => `queue-${c}`);
const CHECKS = [...LAYER, ...QUEUE, "memcheck"];

const dir = mkdtempSync(join(tmpdir(), "libnvm-gpu-check-"));
const image = join(dir, "nvm_queue.fatbin");
writeFileSync(image, new Uint8Array([0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// Built here, before check.sh runs two processes that would each build it.
fakeCtrlLibrary();

function runCheck(libcuda: string): { lines: string[]; status: number | null } {
  const r = spawnSync("bash", [join(REPO, "test", "gpu", "check.sh")], {
    cwd: REPO,
    env: { ...process.env, LIBNVM_LIBCUDA: libcuda, LIBNVM_KERNELS: image, LIBNVM_GPU_CHECK_QUICK: "1" },
    encoding: "utf8",
    timeout: 240_000,
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
    expect(r.lines.filter((l) => l.includes("not run: driver failed"))).toHaveLength(LAYER.length - 1);
    expect(r.lines.filter((l) => /^gpu: FAIL queue-\S+ not run: no CUDA driver/.test(l))).toHaveLength(QUEUE.length);
    expect(r.lines.at(-1)).toBe(`gpu: 0 passed, ${CHECKS.length} failed`);
  }, 240_000);

  test("against the mock libcuda every check runs and passes, except a dma-buf export without /dev/udmabuf and the GPU memcheck", () => {
    const udmabuf = existsSync("/dev/udmabuf");
    const r = runCheck(MOCK_LIBCUDA);
    const v = verdicts(r.lines);
    expect([...v.keys()]).toEqual(CHECKS);
    const failing = (c: string) => (c === "dmabuf-export" && !udmabuf) || c === "memcheck";
    for (const c of CHECKS) expect([c, v.get(c)]).toEqual([c, failing(c) ? "FAIL" : "ok"]);
    if (!udmabuf) expect(r.lines.find((l) => l.startsWith("gpu: FAIL dmabuf-export"))).toContain("CUDA_ERROR_NOT_SUPPORTED");
    // compute-sanitizer is not installed here, or has no GPU to check: either way it did not pass.
    expect(r.lines.find((l) => l.startsWith("gpu: FAIL memcheck"))).toMatch(/compute-sanitizer/);
    // The queue checks report what held: every block checked, errors as injected, the deadline fired.
    expect(r.lines.find((l) => l.startsWith("gpu: ok queue-q1024-132x128"))).toMatch(/every block checked.*errors 0 = injected, timeouts 0/);
    expect(r.lines.find((l) => l.startsWith("gpu: ok queue-errors-reorder"))).toMatch(/errors [1-9]\d* = injected/);
    expect(r.lines.find((l) => l.startsWith("gpu: ok queue-drops"))).toMatch(/timeouts [1-9]/);
    const fails = CHECKS.filter(failing).length;
    expect(r.lines.at(-1)).toBe(`gpu: ${CHECKS.length - fails} passed, ${fails} failed`);
    expect(r.status).toBe(1);
  }, 240_000);
});
