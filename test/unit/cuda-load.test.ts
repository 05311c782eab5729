/**
 * How libcuda gets loaded, each case in a fresh bun process (a library once dlopened stays for the
 * life of a process): importing libnvm loads nothing; the first GPU call loads $LIBNVM_LIBCUDA or
 * libcuda.so.1; a missing, foreign or too old driver is a CudaError "no-driver" saying what to do;
 * LIBNVM_TRACE_FFI traces the driver calls too.
 */
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { MOCK_LIBCUDA, MOCK_LIBCUDA_OLD } from "../cuda/mock.ts";

const REPO = join(import.meta.dir, "..", "..");

interface Outcome {
  /** What the script printed last on stdout, parsed. */
  readonly out: Record<string, unknown>;
  readonly stderr: string;
  readonly status: number | null;
}

/**
 * Run `body` (TypeScript, with `lib` = libnvm's index and `mapped(s)` = whether a mapping of the
 * process names s) in a new bun process with `env` added; it prints one JSON line.
 */
function run(body: string, env: Record<string, string | undefined>): Outcome {
  const script = `
    import { readFileSync } from "node:fs";
    const mapped = (s: string) => readFileSync("/proc/self/maps", "utf8").includes(s);
    const lib = await import(${JSON.stringify(join(REPO, "lib", "index.ts"))});
    const failure = (f: () => unknown) => { try { f(); return null; } catch (e: any) { return { name: e.name, code: e.code, reason: e.reason, call: e.call, message: e.message }; } };
    ${body}
  `;
  const childEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) childEnv[k] = v;
  const r = spawnSync(process.execPath, ["-e", script], { cwd: REPO, env: childEnv, encoding: "utf8", timeout: 20_000 });
  const last = r.stdout.trim().split("\n").pop() ?? "";
  let out: Record<string, unknown> = {};
  try {
    out = JSON.parse(last);
  } catch {
    throw new Error(`no JSON from the child (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
  return { out, stderr: r.stderr, status: r.status };
}

describe("libcuda is loaded lazily", () => {
  test("importing libnvm and using its non-GPU API works with LIBNVM_LIBCUDA pointing nowhere; the first GPU call then fails typed", () => {
    const r = run(
      `
      const bdf = lib.parseBdf("05:00.0");
      const abi = lib.native().nvm_abi_version();
      const loadedBefore = lib.cudaLibraryPath() ?? null;
      const err = failure(() => lib.cuda.devices());
      console.log(JSON.stringify({ bdf, abi, loadedBefore, err, isCudaError: err?.name === "CudaError" }));
      `,
      { LIBNVM_LIBCUDA: "/nonexistent/libcuda.so.1" },
    );
    expect(r.status).toBe(0);
    expect(r.out).toMatchObject({ bdf: "0000:05:00.0", abi: 6, loadedBefore: null, isCudaError: true });
    expect(r.out.err).toEqual({
      name: "CudaError",
      code: "ERR_NVME_CUDA",
      reason: "no-driver",
      call: "dlopen",
      message:
        "no CUDA driver (libcuda.so.1 not found at LIBNVM_LIBCUDA=/nonexistent/libcuda.so.1): install the NVIDIA driver, or set LIBNVM_LIBCUDA to its libcuda.so.1",
    });
  });

  test("with a driver present, import maps nothing of it; the first GPU call maps it from LIBNVM_LIBCUDA", () => {
    const r = run(
      `
      lib.parseBdf("0000:05:00.0");
      const before = mapped(${JSON.stringify(MOCK_LIBCUDA)});
      const version = lib.cuda.driverVersion();
      const after = mapped(${JSON.stringify(MOCK_LIBCUDA)});
      console.log(JSON.stringify({ before, version, after, path: lib.cudaLibraryPath() }));
      `,
      { LIBNVM_LIBCUDA: MOCK_LIBCUDA },
    );
    expect(r.out).toEqual({ before: false, version: 13000, after: true, path: MOCK_LIBCUDA });
  });

  test("without LIBNVM_LIBCUDA, libcuda.so.1 comes from the dynamic linker's search, or the error says it was not found", () => {
    // Whether this machine has the NVIDIA driver decides what is right; ldconfig knows independently.
    const ld = spawnSync("/sbin/ldconfig", ["-p"], { encoding: "utf8" });
    const hasDriver = /\blibcuda\.so\.1\b/.test(ld.stdout ?? "");
    const r = run(
      `
      const err = failure(() => lib.cuda.driverVersion());
      console.log(JSON.stringify({ err, path: lib.cudaLibraryPath() ?? null }));
      `,
      { LIBNVM_LIBCUDA: undefined },
    );
    if (hasDriver) {
      expect(r.out).toEqual({ err: null, path: "libcuda.so.1" });
    } else {
      expect(r.out.err).toMatchObject({
        reason: "no-driver",
        message:
          "no CUDA driver (libcuda.so.1 not found by the dynamic linker): install the NVIDIA driver, or set LIBNVM_LIBCUDA to its libcuda.so.1",
      });
    }
  });

  test("a file that is not a shared library is a no-driver CudaError carrying the loader's reason", () => {
    const r = run(`console.log(JSON.stringify({ err: failure(() => lib.cuda.driverVersion()) }));`, { LIBNVM_LIBCUDA: join(REPO, "package.json") });
    const err = r.out.err as { reason: string; message: string };
    expect(err.reason).toBe("no-driver");
    expect(err.message).toStartWith(`no CUDA driver (LIBNVM_LIBCUDA=${join(REPO, "package.json")} could not be loaded: `);
    expect(err.message).toEndWith("install the NVIDIA driver, or set LIBNVM_LIBCUDA to its libcuda.so.1");
  });

  test("a driver without cuMemGetHandleForAddressRange (older than CUDA 11.7) is named as too old, with the fix", () => {
    const r = run(`console.log(JSON.stringify({ err: failure(() => lib.cuda.devices()) }));`, { LIBNVM_LIBCUDA: MOCK_LIBCUDA_OLD });
    expect(r.out.err).toEqual({
      name: "CudaError",
      code: "ERR_NVME_CUDA",
      reason: "no-driver",
      call: "dlopen",
      message: `the CUDA driver at ${MOCK_LIBCUDA_OLD} has no cuMemGetHandleForAddressRange: it is older than libnvm needs (a driver for CUDA 11.7 or later); update the NVIDIA driver`,
    });
  });

  test("setCudaLibraryPath() wins over LIBNVM_LIBCUDA, and is refused once the driver is loaded", () => {
    const r = run(
      `
      lib.setCudaLibraryPath(${JSON.stringify(MOCK_LIBCUDA)});
      const version = lib.cuda.driverVersion();
      const late = failure(() => lib.setCudaLibraryPath("/elsewhere/libcuda.so.1"));
      console.log(JSON.stringify({ version, path: lib.cudaLibraryPath(), late }));
      `,
      { LIBNVM_LIBCUDA: "/nonexistent/libcuda.so.1" },
    );
    expect(r.out).toMatchObject({ version: 13000, path: MOCK_LIBCUDA });
    expect(r.out.late).toMatchObject({ name: "InvalidArgumentError", message: expect.stringContaining(`already loaded from ${MOCK_LIBCUDA}`) });
  });

  test("LIBNVM_TRACE_FFI=1 traces every driver call with its arguments and result", () => {
    const r = run(
      `
      const m = lib.cuda.alloc(4096);
      m.free();
      console.log(JSON.stringify({ ok: true }));
      `,
      { LIBNVM_LIBCUDA: MOCK_LIBCUDA, LIBNVM_TRACE_FFI: "1" },
    );
    expect(r.out).toEqual({ ok: true });
    expect(r.stderr).toContain("[ffi] cuInit(0) = 0");
    expect(r.stderr).toMatch(/\[ffi\] cuMemAlloc_v2\(\d+, 4096\) = 0/);
    expect(r.stderr).toContain(`[ffi] cuMemFree_v2(${0xc0de_0000_0000_0000n}) = 0`);
  });
});
