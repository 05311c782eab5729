/**
 * lib/cuda against the test-only mock libcuda (test/cuda/mock-libcuda.c): symbol binding,
 * initialisation, devices and contexts, GPU memory and copies, dma-buf export, host registration
 * of DmaBuffers, and every error path, with the mock's controls injecting driver results.
 *
 * The mock keeps device pointers above 2^53 and CUdevice handles apart from ordinals, so a value
 * that went through a double or an ordinal passed as a handle fails here. The last test checks
 * that this file made every entry point lib/cuda binds run at least once.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { dlopen, FFIType } from "bun:ffi";
import { existsSync, readFileSync, readSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { cuda, CudaMemory, HostRegistration } from "../../lib/cuda/index.ts";
import { cudaSymbols } from "../../lib/cuda/driver.ts";
import { liveCounts } from "../../lib/cuda/memory.ts";
import { DmaBuffer } from "../../lib/dma.ts";
import { ClosedError, CudaError, InvalidArgumentError } from "../../lib/errors.ts";
import { MOCK_DPTR_BASE, MOCK_HOSTMAP_BIAS, MOCK_LIBCUDA, mock, useMockDriver } from "../cuda/mock.ts";
import { FakeBackend } from "./fake-backend.ts";
import { kernel, KERNEL_COOP, KERNEL_SHARED, KernelStream, setKernelImagePath, unloadKernels } from "../../lib/gpu/kernels.ts";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";

const PAGE = 4096;
const CUDA_ERROR_INVALID_VALUE = 1;
const CUDA_ERROR_OUT_OF_MEMORY = 2;
const CUDA_ERROR_STUB_LIBRARY = 34;
const CUDA_ERROR_NO_DEVICE = 100;
const CUDA_ERROR_INVALID_DEVICE = 101;
const CUDA_ERROR_INVALID_CONTEXT = 201;
const CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713;
const CUDA_ERROR_UNKNOWN = 999;
const ATTR_CAN_MAP_HOST_MEMORY = 19;
const ATTR_CC_MAJOR = 75;
const ATTR_CC_MINOR = 76;
const ATTR_HOST_REGISTER_SUPPORTED = 99;
const ATTR_DMA_BUF_SUPPORTED = 124;

useMockDriver();
const backend = new FakeBackend();
/** Calls per entry point when this file started, for the coverage test at the end. */
const callsAtStart = new Map<string, number>();

beforeAll(() => {
  for (const name of Object.keys(cudaSymbols)) callsAtStart.set(name, mock.calls(name));
});
beforeEach(() => {
  // Each test starts from a fresh driver: lib/cuda lets go of everything first, then the mock forgets.
  cuda.close();
  mock.reset();
});
afterAll(() => {
  cuda.close();
  mock.reset();
  backend.close();
});

/** The CudaError `fn` throws (fails the test when it throws something else or nothing). */
function cudaErrorOf(fn: () => unknown): CudaError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CudaError);
    return e as CudaError;
  }
  throw new Error("expected a CudaError, nothing was thrown");
}

function pattern(n: number, seed: number): Uint8Array {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i++) a[i] = (i * 31 + seed) & 0xff;
  return a;
}

/** `n` bytes of the memfd behind device memory at `dptr`, from byte `at`, read with pread. */
function memfdBytes(dptr: bigint, at: number, n: number): Uint8Array {
  const fd = mock.memfd(dptr);
  expect(fd).toBeGreaterThanOrEqual(0);
  const b = new Uint8Array(n);
  expect(readSync(fd, b, 0, n, at)).toBe(n);
  return b;
}

describe("symbol binding", () => {
  // What cuda.h #defines the public names to: the unversioned symbols keep an older ABI.
  const versioned = [
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRelease_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoD_v2",
    "cuMemHostRegister_v2",
    "cuMemHostGetDevicePointer_v2",
  ];

  test("every entry point cuda.h maps to a versioned symbol is bound by that symbol, never the unversioned one", () => {
    const bound = Object.keys(cudaSymbols);
    for (const v of versioned) {
      expect(bound).toContain(v);
      expect(bound).not.toContain(v.replace(/_v2$/, ""));
    }
    expect(bound).toEqual(
      expect.arrayContaining(["cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuCtxSetCurrent", "cuMemHostUnregister", "cuMemGetHandleForAddressRange"]),
    );
  });

  test("the mock exports every bound symbol and none of the old-ABI unversioned ones, so binding one of those fails", () => {
    expect(() => dlopen(MOCK_LIBCUDA, cudaSymbols).close()).not.toThrow();
    for (const v of versioned) {
      const old = v.replace(/_v2$/, "");
      expect(() => dlopen(MOCK_LIBCUDA, { [old]: { args: [], returns: FFIType.i32 } })).toThrow(`Symbol "${old}" not found`);
    }
  });
});

describe("driver version and devices", () => {
  test("driverVersion() is cuDriverGetVersion, which needs no cuInit", () => {
    mock.setDriverVersion(12040);
    const inits = mock.calls("cuInit");
    expect(cuda.driverVersion()).toBe(12040);
    expect(mock.calls("cuInit")).toBe(inits);
  });

  test("devices() lists every GPU: name, lower-case PCI address, compute capability, memory, dma-buf and mapping support", () => {
    mock.setDeviceCount(2);
    mock.setAttribute(1, ATTR_CC_MAJOR, 8);
    mock.setAttribute(1, ATTR_CC_MINOR, 6);
    mock.setTotalMemMiB(1, 512);
    mock.setAttribute(1, ATTR_DMA_BUF_SUPPORTED, 0);
    mock.setAttribute(1, ATTR_CAN_MAP_HOST_MEMORY, 0);
    const list = cuda.devices();
    expect(list).toEqual([
      {
        ordinal: 0,
        name: "Mock GPU 0 (libnvm test double)",
        pciBusId: "0000:c1:00.0",
        computeCapability: { major: 9, minor: 0 },
        totalMemory: 1 << 30,
        dmaBufSupported: true,
        canMapHostMemory: true,
      },
      {
        ordinal: 1,
        name: "Mock GPU 1 (libnvm test double)",
        pciBusId: "0000:c2:00.0",
        computeCapability: { major: 8, minor: 6 },
        totalMemory: 512 << 20,
        dmaBufSupported: false,
        canMapHostMemory: false,
      },
    ]);
  });

  test("no device: CudaError naming cuDeviceGetCount = 0 and what to check", () => {
    mock.setDeviceCount(0);
    const e = cudaErrorOf(() => cuda.devices());
    expect(e.reason).toBe("no-device");
    expect(e.call).toBe("cuDeviceGetCount");
    expect(e.code).toBe("ERR_NVME_CUDA");
    expect(e.message).toContain("no CUDA device (cuDeviceGetCount = 0)");
    expect(e.message).toContain("nvidia-smi");
    expect(() => cuda.alloc(PAGE)).toThrow("cuDeviceGetCount = 0");
  });

  test("cuInit failing with NO_DEVICE is a no-device CudaError with the driver's own name and text", () => {
    mock.failNext("cuInit", CUDA_ERROR_NO_DEVICE);
    const names = mock.calls("cuGetErrorName");
    const strings = mock.calls("cuGetErrorString");
    const e = cudaErrorOf(() => cuda.devices());
    expect(e.reason).toBe("no-device");
    expect(e.call).toBe("cuInit");
    expect(e.result).toBe(CUDA_ERROR_NO_DEVICE);
    expect(e.resultName).toBe("CUDA_ERROR_NO_DEVICE");
    expect(e.message).toStartWith('cuInit failed: CUDA_ERROR_NO_DEVICE (100, "no CUDA-capable device is detected"): no CUDA device');
    expect(mock.calls("cuGetErrorName")).toBe(names + 1);
    expect(mock.calls("cuGetErrorString")).toBe(strings + 1);
    // A failed initialisation is not remembered: the next call tries again.
    expect(cuda.devices()).toHaveLength(1);
  });

  test("the toolkit's stub library (CUDA_ERROR_STUB_LIBRARY) is a no-driver CudaError that says to point LIBNVM_LIBCUDA at the driver", () => {
    mock.failNext("cuInit", CUDA_ERROR_STUB_LIBRARY);
    const e = cudaErrorOf(() => cuda.alloc(PAGE));
    expect(e.reason).toBe("no-driver");
    expect(e.message).toContain("stub");
    expect(e.message).toContain("LIBNVM_LIBCUDA");
  });

  test("a CUresult the driver has no name for is reported by number", () => {
    mock.failNext("cuDeviceGetCount", 12345);
    const e = cudaErrorOf(() => cuda.devices());
    expect(e.resultName).toBe("CUresult 12345");
    expect(e.message).toBe("cuDeviceGetCount failed: CUresult 12345 (12345)");
    expect(e.reason).toBe("driver");
  });

  test.each(["cuDeviceGet", "cuDeviceGetName", "cuDeviceGetPCIBusId", "cuDeviceTotalMem_v2", "cuDeviceGetAttribute"])(
    "%s failing is a CudaError naming it and the device",
    (entry) => {
      mock.failNext(entry, CUDA_ERROR_INVALID_DEVICE);
      const e = cudaErrorOf(() => cuda.devices());
      expect(e.call).toBe(entry);
      expect(e.resultName).toBe("CUDA_ERROR_INVALID_DEVICE");
      expect(e.message).toContain("device 0");
    },
  );

  test("an ordinal the driver does not have is an InvalidArgumentError naming the range; nothing is allocated", () => {
    mock.setDeviceCount(2);
    const allocs = mock.calls("cuMemAlloc_v2");
    for (const device of [2, -1, 0.5]) {
      expect(() => cuda.alloc(PAGE, { device })).toThrow(InvalidArgumentError);
    }
    expect(() => cuda.alloc(PAGE, { device: 2 })).toThrow("CUDA device 2 does not exist: the driver sees 2 (ordinals 0 to 1)");
    expect(mock.calls("cuMemAlloc_v2")).toBe(allocs);
  });
});

describe("contexts", () => {
  test("each call runs in its device's primary context, retained once per device, released by close()", () => {
    mock.setDeviceCount(2);
    const a = cuda.alloc(PAGE, { device: 1 });
    const b = cuda.alloc(PAGE, { device: 0 });
    const c = cuda.alloc(PAGE, { device: 1 });
    expect(mock.allocationDevice(a.devicePointer)).toBe(1);
    expect(mock.allocationDevice(b.devicePointer)).toBe(0);
    expect(mock.allocationDevice(c.devicePointer)).toBe(1);
    expect(mock.currentDevice()).toBe(1);
    expect(mock.contextRefs(0)).toBe(1);
    expect(mock.contextRefs(1)).toBe(1);
    cuda.close();
    expect(mock.contextRefs(0)).toBe(0);
    expect(mock.contextRefs(1)).toBe(0);
    expect(mock.currentDevice()).toBe(-1);
    expect(mock.liveAllocations()).toBe(0);
    expect([a.freed, b.freed, c.freed]).toEqual([true, true, true]);
  });

  test("the context is made current on every call: work goes on after something else cleared it on this thread", () => {
    using mem = cuda.alloc(PAGE);
    // Another library in this thread unbinds the context (the mock's own entry point, called directly).
    const other = dlopen(MOCK_LIBCUDA, { cuCtxSetCurrent: { args: [FFIType.ptr], returns: FFIType.i32 } });
    expect(other.symbols.cuCtxSetCurrent(null)).toBe(0);
    other.close();
    expect(mock.currentDevice()).toBe(-1);
    const data = pattern(PAGE, 7);
    mem.copyFromHost(data);
    const back = new Uint8Array(PAGE);
    mem.copyToHost(back);
    expect(back).toEqual(data);
  });

  test.each([
    ["cuDevicePrimaryCtxRetain", CUDA_ERROR_INVALID_DEVICE],
    ["cuCtxSetCurrent", CUDA_ERROR_INVALID_CONTEXT],
  ] as const)("%s failing is a CudaError, and the next call succeeds", (entry, result) => {
    mock.failNext(entry, result);
    const e = cudaErrorOf(() => cuda.alloc(PAGE));
    expect(e.call).toBe(entry);
    expect(e.result).toBe(result);
    using mem = cuda.alloc(PAGE);
    expect(mem.freed).toBe(false);
    expect(mock.contextRefs(0)).toBe(1);
  });

  test("cuDevicePrimaryCtxRelease_v2 failing makes close() throw after releasing everything else", () => {
    cuda.alloc(PAGE);
    mock.failNext("cuDevicePrimaryCtxRelease_v2", CUDA_ERROR_INVALID_CONTEXT);
    const e = cudaErrorOf(() => cuda.close());
    expect(e.call).toBe("cuDevicePrimaryCtxRelease_v2");
    expect(mock.liveAllocations()).toBe(0);
    expect(liveCounts()).toEqual({ memory: 0, registrations: 0 });
  });

  test("a Worker uses the GPU with a context of its own thread, and its close() leaves the owner's alone", async () => {
    using mine = cuda.alloc(PAGE);
    const w = new Worker(join(import.meta.dir, "cuda-worker.ts"));
    const result = await new Promise<{ ok: boolean; error?: string; currentDevice?: number; refsDuring?: number; roundTrip?: boolean }>(
      (resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the CUDA Worker did not answer in 10 s")), 10_000);
        w.once("message", (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        w.once("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    await w.terminate();
    expect(result.error).toBeUndefined();
    expect(result).toMatchObject({ ok: true, currentDevice: 0, refsDuring: 2, roundTrip: true });
    expect(mock.contextRefs(0)).toBe(1);
    // The Worker's context being current there changed nothing here.
    const back = new Uint8Array(PAGE);
    mine.copyToHost(back);
    expect(mock.currentDevice()).toBe(0);
  });
});

describe("GPU memory", () => {
  test("alloc() rounds up to whole pages and returns a 64-bit device pointer that survives exactly", () => {
    using m = cuda.alloc(5000);
    expect(m).toBeInstanceOf(CudaMemory);
    expect(m.size).toBe(8192);
    expect(m.device).toBe(0);
    expect(typeof m.devicePointer).toBe("bigint");
    // Above 2^53: a pointer that went through a double would have lost its low bits.
    expect(m.devicePointer).toBe(MOCK_DPTR_BASE);
    expect(m.devicePointer > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
    expect(mock.liveAllocations()).toBe(1);
    expect(mock.memfd(m.devicePointer + 8191n)).toBe(mock.memfd(m.devicePointer));
  });

  test("a pointer off a page boundary (the driver packs small allocations) keeps every bit, and copies at offsets land right", () => {
    mock.setAllocOffset(0x300);
    using m = cuda.alloc(PAGE);
    // 0xC0DE000000000300 needs 55 significant bits: a double would have rounded it.
    expect(m.devicePointer).toBe(MOCK_DPTR_BASE + 0x300n);
    expect(BigInt(Number(m.devicePointer))).not.toBe(m.devicePointer);
    m.copyFromHost(pattern(10, 4), { offset: 7 });
    expect(memfdBytes(m.devicePointer, 7, 10)).toEqual(pattern(10, 4));
  });

  test("bad sizes are InvalidArgumentError and reach no driver", () => {
    const allocs = mock.calls("cuMemAlloc_v2");
    for (const size of [0, -4096, 1.5, Number.NaN, 2 ** 60]) expect(() => cuda.alloc(size)).toThrow(InvalidArgumentError);
    expect(mock.calls("cuMemAlloc_v2")).toBe(allocs);
  });

  test("out of device memory: CudaError CUDA_ERROR_OUT_OF_MEMORY with what to do", () => {
    mock.setTotalMemMiB(0, 1);
    const e = cudaErrorOf(() => cuda.alloc(2 << 20));
    expect(e.call).toBe("cuMemAlloc_v2");
    expect(e.result).toBe(CUDA_ERROR_OUT_OF_MEMORY);
    expect(e.message).toContain("2097152 bytes on device 0");
    expect(e.message).toContain("free GPU memory");
    expect(liveCounts().memory).toBe(0);
  });

  test("free() gives the pointer back once; a second free() is a ClosedError and never reaches the driver", () => {
    const m = cuda.alloc(PAGE);
    const frees = mock.calls("cuMemFree_v2");
    m.free();
    expect(m.freed).toBe(true);
    expect(mock.liveAllocations()).toBe(0);
    expect(() => m.free()).toThrow(ClosedError);
    expect(() => m.free()).toThrow("already freed");
    m[Symbol.dispose](); // `using` after an explicit free(): fine
    expect(mock.calls("cuMemFree_v2")).toBe(frees + 1);
    expect(() => m.copyToHost(new Uint8Array(4))).toThrow(ClosedError);
    expect(() => m.exportDmaBuf()).toThrow(ClosedError);
  });

  test("the driver refusing a free is a CudaError, and the pointer is not offered again", () => {
    const m = cuda.alloc(PAGE);
    mock.failNext("cuMemFree_v2", CUDA_ERROR_INVALID_VALUE);
    const e = cudaErrorOf(() => m.free());
    expect(e.call).toBe("cuMemFree_v2");
    expect(e.resultName).toBe("CUDA_ERROR_INVALID_VALUE");
    expect(m.freed).toBe(true);
    expect(() => m.free()).toThrow(ClosedError);
  });

  test("`using` frees at the end of the scope", () => {
    {
      using m = cuda.alloc(PAGE);
      expect(mock.liveAllocations()).toBe(1);
      expect(m.freed).toBe(false);
    }
    expect(mock.liveAllocations()).toBe(0);
  });

  test("new CudaMemory() outside cuda.alloc() is refused", () => {
    expect(() => new CudaMemory(Symbol("x"), 0, 1n, PAGE)).toThrow(TypeError);
  });
});

describe("copies between host and GPU", () => {
  test("copyFromHost lands at the offset (checked through the memfd); copyToHost reads it back", () => {
    using m = cuda.alloc(4 * PAGE);
    const data = pattern(3000, 5);
    m.copyFromHost(data, { offset: 5000 });
    expect(memfdBytes(m.devicePointer, 5000, 3000)).toEqual(data);
    expect(memfdBytes(m.devicePointer, 4999, 1)).toEqual(new Uint8Array(1));
    expect(memfdBytes(m.devicePointer, 8000, 1)).toEqual(new Uint8Array(1));
    const back = new Uint8Array(3000);
    m.copyToHost(back, { offset: 5000 });
    expect(back).toEqual(data);
  });

  test("bytes written through the memfd are what copyToHost returns", () => {
    using m = cuda.alloc(PAGE);
    const fd = mock.memfd(m.devicePointer);
    const data = pattern(100, 9);
    expect(writeSync(fd, data, 0, 100, 200)).toBe(100);
    const back = new Uint8Array(100);
    m.copyToHost(back, { offset: 200 });
    expect(back).toEqual(data);
  });

  test("a view's own offset is honoured (subarray of a larger buffer), for small and MiB-sized views", () => {
    for (const n of [16, 1 << 20]) {
      using m = cuda.alloc(n);
      const whole = pattern(n + 64, 3);
      m.copyFromHost(whole.subarray(32, 32 + n));
      expect(memfdBytes(m.devicePointer, 0, 16)).toEqual(whole.subarray(32, 48));
      const into = new Uint8Array(n + 64);
      m.copyToHost(into.subarray(64));
      expect(into.subarray(0, 64).every((v) => v === 0)).toBe(true);
      expect(into.subarray(64)).toEqual(whole.subarray(32, 32 + n));
    }
  });

  test("a DmaBuffer's bytes copy both ways", () => {
    using m = cuda.alloc(2 * PAGE);
    using buf = new DmaBuffer(backend, 2 * PAGE);
    buf.bytes.set(pattern(2 * PAGE, 1));
    m.copyFromHost(buf.bytes);
    buf.bytes.fill(0);
    m.copyToHost(buf.bytes);
    expect(buf.bytes).toEqual(pattern(2 * PAGE, 1));
  });

  test("copies that do not fit are InvalidArgumentError and reach no driver; empty copies are no-ops", () => {
    using m = cuda.alloc(PAGE);
    const h2d = mock.calls("cuMemcpyHtoD_v2");
    const d2h = mock.calls("cuMemcpyDtoH_v2");
    expect(() => m.copyFromHost(new Uint8Array(PAGE + 1))).toThrow(InvalidArgumentError);
    expect(() => m.copyFromHost(new Uint8Array(8), { offset: PAGE - 4 })).toThrow("copyFromHost of 8 bytes at offset 4092 does not fit CUDA memory of 4096 bytes");
    expect(() => m.copyToHost(new Uint8Array(8), { offset: -1 })).toThrow(InvalidArgumentError);
    expect(() => m.copyToHost(new Uint8Array(8), { offset: 0.5 })).toThrow(InvalidArgumentError);
    m.copyFromHost(new Uint8Array(0));
    m.copyToHost(new Uint8Array(0), { offset: PAGE });
    expect(mock.calls("cuMemcpyHtoD_v2")).toBe(h2d);
    expect(mock.calls("cuMemcpyDtoH_v2")).toBe(d2h);
  });

  test.each(["cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2"])("%s failing is a CudaError naming the copy", (entry) => {
    using m = cuda.alloc(PAGE);
    mock.failNext(entry, CUDA_ERROR_UNKNOWN);
    const e = cudaErrorOf(() => (entry === "cuMemcpyHtoD_v2" ? m.copyFromHost(new Uint8Array(8)) : m.copyToHost(new Uint8Array(8))));
    expect(e.call).toBe(entry);
    expect(e.message).toContain(`8 bytes ${entry === "cuMemcpyHtoD_v2" ? "to" : "from"} 0x${m.devicePointer.toString(16)}+0`);
    expect(e.message).toContain('CUDA_ERROR_UNKNOWN (999, "unknown error")');
  });
});

describe("dma-buf export", () => {
  test("unsupported device (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0): CudaError 'unsupported' before any export is tried", () => {
    mock.setAttribute(0, ATTR_DMA_BUF_SUPPORTED, 0);
    using m = cuda.alloc(PAGE);
    const exports = mock.calls("cuMemGetHandleForAddressRange");
    const e = cudaErrorOf(() => m.exportDmaBuf());
    expect(e.reason).toBe("unsupported");
    expect(e.message).toContain("cannot export GPU memory as a dma-buf (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0)");
    expect(e.message).toContain("Mock GPU 0");
    expect(e.message).toContain("open kernel modules");
    expect(mock.calls("cuMemGetHandleForAddressRange")).toBe(exports);
  });

  test("asks for a DMA_BUF_FD of the whole allocation with flags 0; the driver's NOT_SUPPORTED (no /dev/udmabuf in the mock) is 'unsupported'", () => {
    mock.setUdmabufPath("/nonexistent/udmabuf");
    using m = cuda.alloc(3 * PAGE - 100);
    const e = cudaErrorOf(() => m.exportDmaBuf());
    expect(e.call).toBe("cuMemGetHandleForAddressRange");
    expect(e.result).toBe(801);
    expect(e.resultName).toBe("CUDA_ERROR_NOT_SUPPORTED");
    expect(e.reason).toBe("unsupported");
    expect(mock.lastExport()).toEqual({ handleType: 1, flags: 0n, devicePointer: m.devicePointer, size: 3 * PAGE });
  });

  test("memory off a page boundary cannot be exported: CudaError 'unsupported' saying to allocate more, before the driver is asked", () => {
    mock.setAllocOffset(0x200);
    using m = cuda.alloc(PAGE);
    const exports = mock.calls("cuMemGetHandleForAddressRange");
    const e = cudaErrorOf(() => m.exportDmaBuf());
    expect(e.reason).toBe("unsupported");
    expect(e.message).toContain(`CUDA memory at 0x${m.devicePointer.toString(16)} does not start on a 4 KiB page`);
    expect(mock.calls("cuMemGetHandleForAddressRange")).toBe(exports);
  });

  test("a failing udmabuf ioctl (a device that is not udmabuf) is a driver CudaError", () => {
    mock.setUdmabufPath("/dev/null");
    using m = cuda.alloc(PAGE);
    const e = cudaErrorOf(() => m.exportDmaBuf());
    expect(e.resultName).toBe("CUDA_ERROR_OPERATING_SYSTEM");
    expect(e.reason).toBe("driver");
  });

  const udmabuf = existsSync("/dev/udmabuf");
  test(`this machine ${udmabuf ? "has" : "has no"} /dev/udmabuf: the mock's export ${udmabuf ? "is a real dma-buf of the allocation" : "is CUDA_ERROR_NOT_SUPPORTED"}`, () => {
    using m = cuda.alloc(2 * PAGE);
    if (!udmabuf) {
      expect(cudaErrorOf(() => m.exportDmaBuf()).resultName).toBe("CUDA_ERROR_NOT_SUPPORTED");
      return;
    }
    const fd = m.exportDmaBuf();
    try {
      expect(fd).toBeGreaterThan(2);
      const info = readFileSync(`/proc/self/fdinfo/${fd}`, "utf8");
      expect(info).toMatch(/^exp_name:\s+udmabuf$/m);
      expect(info).toMatch(new RegExp(`^size:\\s+${2 * PAGE}$`, "m"));
    } finally {
      closeSync(fd);
    }
  });
});

describe("host DMA buffers mapped for the GPU (registerHost)", () => {
  test("registers exactly the buffer's pages, DEVICEMAP | PORTABLE, and returns the device pointer of its first byte", () => {
    using buf = new DmaBuffer(backend, 3 * PAGE);
    using reg = cuda.registerHost(buf);
    expect(reg).toBeInstanceOf(HostRegistration);
    const base = Number(buf.pointer);
    expect(mock.registration(base)).toEqual({ size: 3 * PAGE, flags: 0x02 | 0x01, devicePointer: BigInt(base) + MOCK_HOSTMAP_BIAS });
    expect(reg.devicePointer).toBe(BigInt(base) + MOCK_HOSTMAP_BIAS);
    expect(reg.size).toBe(3 * PAGE);
    expect(reg.buffer).toBe(buf);
    expect(reg.registered).toBe(true);
  });

  test("a region registers only the pages it covers, and its pointer includes its offset into the first", () => {
    using buf = new DmaBuffer(backend, 4 * PAGE);
    const region = buf.region(PAGE + 4, 5000); // bytes 4100..9099: pages 1 and 2
    using reg = cuda.registerHost(region);
    const page1 = Number(buf.pointer) + PAGE;
    expect(mock.registration(page1)).toEqual({ size: 2 * PAGE, flags: 3, devicePointer: BigInt(page1) + MOCK_HOSTMAP_BIAS });
    expect(mock.liveRegistrations()).toBe(1);
    expect(reg.devicePointer).toBe(BigInt(page1) + MOCK_HOSTMAP_BIAS + 4n);
    expect(reg.size).toBe(5000);
  });

  test("the GPU's copy engine writes and reads the DMA buffer in place through the device pointer", () => {
    using buf = new DmaBuffer(backend, 2 * PAGE);
    using mem = cuda.alloc(2 * PAGE);
    using reg = cuda.registerHost(buf.region(PAGE, PAGE));
    const data = pattern(PAGE, 11);
    mem.copyFromHost(data);
    cuda.copy(reg, mem, PAGE); // GPU memory → the buffer's second page
    expect(buf.bytes.subarray(PAGE)).toEqual(data);
    expect(buf.bytes.subarray(0, PAGE).every((v) => v === 0)).toBe(true);
    buf.bytes.subarray(PAGE).set(pattern(PAGE, 12));
    cuda.copy(mem, reg, 100); // the buffer → GPU memory
    const back = new Uint8Array(100);
    mem.copyToHost(back);
    expect(back).toEqual(pattern(PAGE, 12).subarray(0, 100));
  });

  test("pages already registered (parent, or a region sharing a page): CudaError HOST_MEMORY_ALREADY_REGISTERED saying what to do", () => {
    using buf = new DmaBuffer(backend, 2 * PAGE);
    using a = cuda.registerHost(buf.region(0, 100));
    const e = cudaErrorOf(() => cuda.registerHost(buf.region(200, 100)));
    expect(e.resultName).toBe("CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED");
    expect(e.message).toContain("another registerHost() holds some of these pages");
    expect(() => cuda.registerHost(buf)).toThrow("CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED");
    using b = cuda.registerHost(buf.region(PAGE, 100)); // the next page is free
    expect(mock.liveRegistrations()).toBe(2);
    expect([a.registered, b.registered]).toEqual([true, true]);
  });

  test("unregister() releases the pages once; a second unregister() is a ClosedError", () => {
    using buf = new DmaBuffer(backend, PAGE);
    const reg = cuda.registerHost(buf);
    const unregs = mock.calls("cuMemHostUnregister");
    reg.unregister();
    expect(reg.registered).toBe(false);
    expect(mock.liveRegistrations()).toBe(0);
    expect(() => reg.unregister()).toThrow(ClosedError);
    reg[Symbol.dispose]();
    expect(mock.calls("cuMemHostUnregister")).toBe(unregs + 1);
    // The buffer lives on, and its pages can be registered again.
    using again = cuda.registerHost(buf);
    expect(again.registered).toBe(true);
    buf.free();
    expect(mock.calls("cuMemHostUnregister")).toBe(unregs + 2);
  });

  test("freeing the buffer unregisters its pages before they go; unregister() after that is a ClosedError", () => {
    const buf = new DmaBuffer(backend, 2 * PAGE);
    const reg = cuda.registerHost(buf.region(0, PAGE));
    const base = Number(buf.pointer);
    buf.free();
    expect(mock.registration(base)).toBeUndefined();
    expect(reg.registered).toBe(false);
    expect(() => reg.unregister()).toThrow("already released");
    expect(() => cuda.copy(reg, reg, 1)).toThrow(ClosedError);
  });

  test("the backend's close() unregisters the pages of buffers it takes away", () => {
    const own = new FakeBackend();
    const buf = new DmaBuffer(own, PAGE);
    const reg = cuda.registerHost(buf);
    own.close();
    expect(buf.freed).toBe(true);
    expect(reg.registered).toBe(false);
    expect(mock.liveRegistrations()).toBe(0);
  });

  test("a failing unregister during the buffer's free() is a warning; the free completes", async () => {
    const buf = new DmaBuffer(backend, PAGE);
    cuda.registerHost(buf);
    mock.failNext("cuMemHostUnregister", CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
    const warned = new Promise<Error>((resolve) => process.once("warning", resolve));
    buf.free();
    expect(buf.freed).toBe(true);
    const w = await warned;
    expect(w).toBeInstanceOf(CudaError);
    expect(w.message).toContain("cuMemHostUnregister");
    expect(liveCounts().registrations).toBe(0);
  });

  test("registerHost of a freed buffer is a ClosedError, of anything else an InvalidArgumentError; neither reaches the driver", () => {
    const regs = mock.calls("cuMemHostRegister_v2");
    const buf = new DmaBuffer(backend, PAGE);
    buf.free();
    expect(() => cuda.registerHost(buf)).toThrow(ClosedError);
    expect(() => cuda.registerHost(buf)).toThrow("was freed");
    expect(() => cuda.registerHost(new Uint8Array(PAGE) as unknown as DmaBuffer)).toThrow(InvalidArgumentError);
    expect(mock.calls("cuMemHostRegister_v2")).toBe(regs);
  });

  test.each([
    [ATTR_HOST_REGISTER_SUPPORTED, "CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED"],
    [ATTR_CAN_MAP_HOST_MEMORY, "CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY"],
  ] as const)("a device without attribute %d (%s) gives CudaError 'unsupported'", (attribute, name) => {
    mock.setAttribute(0, attribute, 0);
    using buf = new DmaBuffer(backend, PAGE);
    const e = cudaErrorOf(() => cuda.registerHost(buf));
    expect(e.reason).toBe("unsupported");
    expect(e.message).toContain(`(${name} = 0)`);
    expect(e.message).toContain("copy through cuda.alloc() memory instead");
    expect(mock.liveRegistrations()).toBe(0);
  });

  test("cuMemHostGetDevicePointer_v2 failing undoes the registration", () => {
    using buf = new DmaBuffer(backend, PAGE);
    mock.failNext("cuMemHostGetDevicePointer_v2", CUDA_ERROR_INVALID_VALUE);
    const e = cudaErrorOf(() => cuda.registerHost(buf));
    expect(e.call).toBe("cuMemHostGetDevicePointer_v2");
    expect(mock.liveRegistrations()).toBe(0);
    expect(liveCounts().registrations).toBe(0);
  });

  test("cuMemHostRegister_v2 failing is a CudaError naming the range", () => {
    using buf = new DmaBuffer(backend, PAGE);
    mock.failNext("cuMemHostRegister_v2", CUDA_ERROR_OUT_OF_MEMORY);
    const e = cudaErrorOf(() => cuda.registerHost(buf));
    expect(e.call).toBe("cuMemHostRegister_v2");
    expect(e.message).toContain(`4096 bytes at 0x${Number(buf.pointer).toString(16)}`);
  });
});

describe("cuda.copy (device to device)", () => {
  test("copies between two allocations", () => {
    using a = cuda.alloc(PAGE);
    using b = cuda.alloc(PAGE);
    a.copyFromHost(pattern(PAGE, 2));
    cuda.copy(b, a, PAGE);
    expect(memfdBytes(b.devicePointer, 0, PAGE)).toEqual(pattern(PAGE, 2));
  });

  test("sizes that do not fit, freed ends and foreign objects are refused before the driver", () => {
    using a = cuda.alloc(PAGE);
    const b = cuda.alloc(2 * PAGE);
    const copies = mock.calls("cuMemcpyDtoD_v2");
    expect(() => cuda.copy(b, a, PAGE + 1)).toThrow("cuda.copy() of 4097 bytes does not fit: destination 8192 bytes, source 4096 bytes");
    expect(() => cuda.copy(b, a, -1)).toThrow(InvalidArgumentError);
    expect(() => cuda.copy({ devicePointer: 1n, size: PAGE, device: 0 } as unknown as CudaMemory, a, 1)).toThrow(InvalidArgumentError);
    cuda.copy(b, a, 0);
    b.free();
    expect(() => cuda.copy(b, a, 1)).toThrow(ClosedError);
    expect(mock.calls("cuMemcpyDtoD_v2")).toBe(copies);
  });

  test("cuMemcpyDtoD_v2 failing is a CudaError", () => {
    using a = cuda.alloc(PAGE);
    mock.failNext("cuMemcpyDtoD_v2", CUDA_ERROR_INVALID_VALUE);
    expect(cudaErrorOf(() => cuda.copy(a, a, 8)).call).toBe("cuMemcpyDtoD_v2");
  });
});

describe("close()", () => {
  test("frees this thread's memory and registrations, releases contexts, and the next call starts over", () => {
    using buf = new DmaBuffer(backend, PAGE);
    const m = cuda.alloc(PAGE);
    const reg = cuda.registerHost(buf);
    const inits = mock.calls("cuInit");
    cuda.close();
    expect([m.freed, reg.registered]).toEqual([true, false]);
    expect(mock.liveAllocations()).toBe(0);
    expect(mock.liveRegistrations()).toBe(0);
    expect(mock.contextRefs(0)).toBe(0);
    cuda.close(); // nothing left: a no-op
    using again = cuda.alloc(PAGE);
    expect(mock.calls("cuInit")).toBe(inits + 1);
    expect(buf.freed).toBe(false);
  });
});

describe("BAR pages for the GPU (registerIoMemory)", () => {
  test("refused unprivileged (CUDA_ERROR_NOT_PERMITTED): the error names root and the host-thread alternative", () => {
    using buf = new DmaBuffer(backend, PAGE);
    let e: unknown;
    try {
      cuda.registerIoMemory(Number(buf.pointer), PAGE);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(CudaError);
    expect((e as CudaError).resultName).toBe("CUDA_ERROR_NOT_PERMITTED");
    expect((e as Error).message).toMatch(/IOMEMORY \| DEVICEMAP.*run as root.*device: "cpu"/);
    expect(mock.liveRegistrations()).toBe(0);
  });

  test("registered as IOMEMORY | DEVICEMAP, whole pages, released by unregister() or cuda.close()", () => {
    mock.setIoMemory(true);
    using buf = new DmaBuffer(backend, 2 * PAGE);
    const p = Number(buf.pointer);
    const reg = cuda.registerIoMemory(p, 2 * PAGE);
    expect(mock.registration(p)).toEqual({ size: 2 * PAGE, flags: 0x04 | 0x02, devicePointer: BigInt(p) + MOCK_HOSTMAP_BIAS });
    expect(reg.devicePointer).toBe(BigInt(p) + MOCK_HOSTMAP_BIAS);
    reg.unregister();
    expect(mock.liveRegistrations()).toBe(0);
    expect(() => reg.unregister()).toThrow(ClosedError);
    expect(() => cuda.registerIoMemory(p + 4, PAGE)).toThrow(/page-aligned/);
    expect(() => cuda.registerIoMemory(p, 100)).toThrow(/whole 4 KiB pages/);
    cuda.registerIoMemory(p, PAGE);
    cuda.close();
    expect(mock.liveRegistrations()).toBe(0);
  });
});

describe("kernels: modules, launches, streams", () => {
  const dir = mkdtempSync(join(tmpdir(), "libnvm-cuda-kernels-"));
  const fatbin = join(dir, "nvm_queue.fatbin");
  writeFileSync(fatbin, new Uint8Array([0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  const garbage = join(dir, "garbage.fatbin");
  writeFileSync(garbage, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
  afterAll(() => {
    setKernelImagePath(undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  test("the image is loaded once per context, its kernels found by name; an unknown name is CUDA_ERROR_NOT_FOUND", () => {
    setKernelImagePath(fatbin);
    const f = kernel(0, KERNEL_SHARED);
    expect(kernel(0, KERNEL_SHARED)).toBe(f);
    expect(kernel(0, KERNEL_COOP)).not.toBe(f);
    expect(mock.liveModules()).toBe(1);
    expect(() => kernel(0, "no_such_kernel")).toThrow(/CUDA_ERROR_NOT_FOUND/);
    // A context released (cuda.close()) took the module with it: the next use loads it again.
    cuda.close();
    mock.reset();
    kernel(0, KERNEL_SHARED);
    expect(mock.liveModules()).toBe(1);
    unloadKernels();
    expect(mock.liveModules()).toBe(0);
  });

  test("an image the driver does not recognise: CUDA_ERROR_INVALID_IMAGE, with how to rebuild it", () => {
    setKernelImagePath(garbage);
    expect(() => kernel(0, KERNEL_SHARED)).toThrow(/CUDA_ERROR_INVALID_IMAGE.*rebuild it/);
    setKernelImagePath(join(dir, "missing.fatbin"));
    expect(() => kernel(0, KERNEL_SHARED)).toThrow(/not built.*-DLIBNVM_CUDA=ON/);
  });

  test("a launch whose job is a host pointer, not a device address, fails on the GPU: the stream reports CUDA_ERROR_ILLEGAL_ADDRESS", () => {
    setKernelImagePath(fatbin);
    const st = new KernelStream(0);
    try {
      using buf = new DmaBuffer(backend, PAGE); // host memory the GPU was never given
      st.launch(KERNEL_SHARED, 2, 64, BigInt(Number(buf.pointer)));
      expect(mock.lastLaunch()).toMatchObject({ grid: 2, block: 64, shared: 0, param: BigInt(Number(buf.pointer)), kind: 1 });
      expect(() => st.done()).toThrow(/CUDA_ERROR_ILLEGAL_ADDRESS/);
      expect(st.done()).toBe(true); // reported once, then idle
      expect(() => st.launch(KERNEL_COOP, 1, 2048, 0n)).toThrow(/threads per block 1 to 1024/);
    } finally {
      st.destroy();
      unloadKernels();
    }
  });
});

describe("coverage", () => {
  test("every entry point lib/cuda binds ran in this file", () => {
    const idle = Object.keys(cudaSymbols).filter((name) => mock.calls(name) <= (callsAtStart.get(name) ?? 0));
    expect(idle).toEqual([]);
  });
});
