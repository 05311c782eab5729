/**
 * GPU memory (cuMemAlloc) and host DMA buffers mapped for the GPU (cuMemHostRegister).
 *
 * CudaMemory is device memory: copies to and from the host, and its dma-buf export, the way a
 * kernel module can later attach it to the NVMe controller (gpu.md section 4). HostRegistration
 * maps the pages of a DmaBuffer (from any backend) into the GPU's address space, so GPU kernels
 * read and write the very memory the controller reaches by DMA.
 *
 * Order: unregister() before the buffer is freed, and free GPU memory before cuda.close(). Freeing
 * the buffer first also unregisters (before its pages are unmapped), so the process stays sound,
 * but a GPU kernel still using the device pointer then faults. Device pointers are bigint: they are
 * set up once, not per command.
 */
import type { Pointer } from "bun:ffi";
import { ClosedError, CudaError, InvalidArgumentError } from "../errors.ts";
import { DmaBuffer } from "../dma.ts";
import { HOST_PAGE_SIZE } from "../backends/types.ts";
import {
  check,
  CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
  CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
  CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
  CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
  CU_MEMHOSTREGISTER_DEVICEMAP,
  CU_MEMHOSTREGISTER_IOMEMORY,
  CU_MEMHOSTREGISTER_PORTABLE,
  CUDA_ERROR_NOT_PERMITTED,
  CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
  CUDA_SUCCESS,
  cudaError,
  outI32,
  outU64,
  scratch,
} from "./driver.ts";
import { current, deviceAttribute, deviceHandle, deviceName } from "./device.ts";

export interface CudaAllocOptions {
  /** Ordinal of the GPU (see cuda.devices()). Defaults to 0. */
  readonly device?: number;
}

export interface HostCopyOptions {
  /** Byte offset into the device memory. Defaults to 0. */
  readonly offset?: number;
}

/** Device-addressable memory: what cuda.copy() moves bytes between. */
export type DeviceRange = CudaMemory | HostRegistration;

/** Made only here: stops `new CudaMemory()` from wrapping a made-up pointer. */
const internal = Symbol("cuda-internal");

/** Live objects of this thread, freed by releaseAll() (cuda.close()). */
const liveMemory = new Set<CudaMemory>();
const liveRegistrations = new Set<HostRegistration | IoMemoryRegistration>();

function hex(p: bigint): string {
  return "0x" + p.toString(16);
}

function checkDevice(device: number | undefined): number {
  const o = device ?? 0;
  deviceHandle(o); // throws InvalidArgumentError for an ordinal the driver does not have
  return o;
}

/** Throw CudaError "unsupported" unless the device has `attribute` set. */
function requireAttribute(ordinal: number, attribute: number, attributeName: string, what: string, instead: string): void {
  if (deviceAttribute(ordinal, attribute) !== 0) return;
  throw new CudaError(`CUDA device ${ordinal} (${deviceName(ordinal)}) cannot ${what} (${attributeName} = 0): ${instead}`, {
    reason: "unsupported",
    call: "cuDeviceGetAttribute",
  });
}

/** GPU memory from cuMemAlloc. Made by cuda.alloc(); free() it, or scope it with `using`. */
export class CudaMemory {
  /** Device address of the first byte (CUdeviceptr). */
  readonly devicePointer: bigint;
  /** Bytes: the size asked for, rounded up to whole 4 KiB pages (the unit of a dma-buf export). */
  readonly size: number;
  /** Ordinal of the GPU it lives on. */
  readonly device: number;
  #freed = false;

  constructor(key: symbol, device: number, devicePointer: bigint, size: number) {
    if (key !== internal) throw new TypeError("CudaMemory is made by cuda.alloc()");
    this.device = device;
    this.devicePointer = devicePointer;
    this.size = size;
  }

  get freed(): boolean {
    return this.#freed;
  }

  #live(what: string): void {
    if (!this.#freed) return;
    if (what === "free") throw new ClosedError("free: this CUDA memory was already freed");
    throw new ClosedError(`${what}: this CUDA memory was freed; allocate new memory with cuda.alloc()`);
  }

  #range(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size) {
      throw new InvalidArgumentError(`${what} of ${length} bytes at offset ${offset} does not fit CUDA memory of ${this.size} bytes`);
    }
  }

  /** Copy `src` into this memory at `offset` (cuMemcpyHtoD); returns when `src` may be reused. */
  copyFromHost(src: ArrayBufferView, opts: Readonly<HostCopyOptions> = {}): void {
    this.#live("copyFromHost");
    const offset = opts.offset ?? 0;
    this.#range("copyFromHost", offset, src.byteLength);
    if (src.byteLength === 0) return;
    // The view itself goes to the call (not a ptr() taken earlier): bun:ffi borrows its current storage.
    const d = current(this.device);
    check(d.cuMemcpyHtoD_v2(this.devicePointer + BigInt(offset), src, src.byteLength), "cuMemcpyHtoD_v2", `${src.byteLength} bytes to ${hex(this.devicePointer)}+${offset}`);
  }

  /** Copy from this memory at `offset` into `dst`, filling it (cuMemcpyDtoH); returns when the bytes are there. */
  copyToHost(dst: ArrayBufferView, opts: Readonly<HostCopyOptions> = {}): void {
    this.#live("copyToHost");
    const offset = opts.offset ?? 0;
    this.#range("copyToHost", offset, dst.byteLength);
    if (dst.byteLength === 0) return;
    const d = current(this.device);
    check(d.cuMemcpyDtoH_v2(dst, this.devicePointer + BigInt(offset), dst.byteLength), "cuMemcpyDtoH_v2", `${dst.byteLength} bytes from ${hex(this.devicePointer)}+${offset}`);
  }

  /**
   * A dma-buf file descriptor for the whole allocation (cuMemGetHandleForAddressRange with
   * CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, flags 0): what a kernel module attaches to the NVMe
   * controller to get bus addresses of GPU memory. The caller owns the fd (close it when the
   * importer has it) and keeps this memory allocated while the dma-buf is in use.
   * Throws CudaError "unsupported" where the GPU or driver cannot export dma-bufs.
   */
  exportDmaBuf(): number {
    this.#live("exportDmaBuf");
    requireAttribute(
      this.device,
      CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
      "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED",
      "export GPU memory as a dma-buf",
      "it needs NVIDIA's open kernel modules (R515 or later) and Linux 5.12 or later; without it, keep the data in host DMA buffers and use cuda.registerHost()",
    );
    // The driver exports whole host pages only, and packs small allocations off page boundaries.
    if (this.devicePointer % BigInt(HOST_PAGE_SIZE) !== 0n) {
      throw new CudaError(
        `CUDA memory at ${hex(this.devicePointer)} does not start on a 4 KiB page, so it cannot be exported as a dma-buf: allocate more (the driver places large allocations, 2 MiB and up, on page boundaries) and use part of it`,
        { reason: "unsupported", call: "cuMemGetHandleForAddressRange" },
      );
    }
    const d = current(this.device);
    const s = scratch();
    check(
      d.cuMemGetHandleForAddressRange(s.ptr, this.devicePointer, this.size, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0),
      "cuMemGetHandleForAddressRange",
      `dma-buf of ${this.size} bytes at ${hex(this.devicePointer)} on device ${this.device}`,
    );
    return outI32();
  }

  /**
   * Give the memory back to the driver (cuMemFree). A second free() throws ClosedError: the driver
   * must never see a pointer twice (it may belong to a newer allocation by then).
   */
  free(): void {
    this.#live("free");
    // Marked first: whatever the driver answers, this pointer is not handed to it again.
    this.#freed = true;
    liveMemory.delete(this);
    const d = current(this.device);
    check(d.cuMemFree_v2(this.devicePointer), "cuMemFree_v2", `${hex(this.devicePointer)}, ${this.size} bytes on device ${this.device}`);
  }

  /** free() unless already freed: `using` after an explicit free() is fine. */
  [Symbol.dispose](): void {
    if (!this.#freed) this.free();
  }
}

/** `size` bytes of GPU memory on `opts.device` (cuMemAlloc). */
export function alloc(size: number, opts: Readonly<CudaAllocOptions> = {}): CudaMemory {
  if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`CUDA allocation size must be a positive integer, got ${size}`);
  const device = checkDevice(opts.device);
  const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
  const d = current(device);
  check(d.cuMemAlloc_v2(scratch().ptr, bytes), "cuMemAlloc_v2", `${bytes} bytes on device ${device}`);
  const m = new CudaMemory(internal, device, outU64(), bytes);
  liveMemory.add(m);
  return m;
}

/**
 * A DmaBuffer's pages mapped into the GPU's address space (cuMemHostRegister with DEVICEMAP |
 * PORTABLE): GPU kernels reach the buffer in place through `devicePointer`. Made by
 * cuda.registerHost(); released by unregister(), `using`, or the buffer's free().
 */
export class HostRegistration {
  /** Device address of the buffer's first byte (its offset into the first page included). */
  readonly devicePointer: bigint;
  /** Bytes reachable from devicePointer: the buffer's size. */
  readonly size: number;
  /** Ordinal of the GPU whose context registered it (PORTABLE: every context sees it). */
  readonly device: number;
  readonly buffer: DmaBuffer;
  /** Host address and length of the registered range: the buffer's pages, whole. */
  readonly #base: number;
  readonly #length: number;
  #registered = true;
  readonly #cancelHook: () => void;

  constructor(key: symbol, buffer: DmaBuffer, device: number, devicePointer: bigint, base: number, length: number) {
    if (key !== internal) throw new TypeError("HostRegistration is made by cuda.registerHost()");
    this.buffer = buffer;
    this.device = device;
    this.devicePointer = devicePointer;
    this.size = buffer.size;
    this.#base = base;
    this.#length = length;
    // The pages must leave the GPU's address space before they are unmapped, whoever frees them.
    this.#cancelHook = buffer.onRelease(() => this.#releaseOnFree());
  }

  /** False once unregistered (explicitly, or because the buffer was freed). */
  get registered(): boolean {
    return this.#registered;
  }

  /**
   * Unmap the pages from the GPU (cuMemHostUnregister). Do it before freeing the buffer, once no
   * GPU work uses devicePointer any more. A second unregister() throws ClosedError.
   */
  unregister(): void {
    if (!this.#registered) {
      throw new ClosedError("unregister: this host registration was already released (by unregister() or by freeing its buffer)");
    }
    this.#cancelHook();
    this.#release();
  }

  [Symbol.dispose](): void {
    if (this.#registered) this.unregister();
  }

  #release(): void {
    this.#registered = false;
    liveRegistrations.delete(this);
    const d = current(this.device);
    check(d.cuMemHostUnregister(this.#base as Pointer), "cuMemHostUnregister", `${this.#length} bytes at 0x${this.#base.toString(16)}`);
  }

  #releaseOnFree(): void {
    try {
      this.#release();
    } catch (e) {
      // The buffer's memory goes either way: the driver keeps its own reference to pinned pages,
      // so nothing is freed under it; say what happened instead of failing free().
      process.emitWarning(e instanceof Error ? e : String(e), { code: "ERR_NVME_CUDA" });
    }
  }
}

/**
 * Map `buf`'s pages into the address space of GPU `opts.device` and return the device pointer of
 * its first byte. Registers exactly the 4 KiB pages the buffer covers; two registrations may not
 * share a page (a region and its parent, or two regions in one page): the second fails with
 * CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED.
 */
export function registerHost(buf: DmaBuffer, opts: Readonly<CudaAllocOptions> = {}): HostRegistration {
  if (!(buf instanceof DmaBuffer)) throw new InvalidArgumentError("registerHost() takes a DmaBuffer (ctrl.allocBuffer(), or a region of one)");
  if (buf.freed) throw new ClosedError("registerHost: this DMA buffer was freed (or its controller closed); register a live buffer");
  const device = checkDevice(opts.device);
  const instead = "GPU kernels cannot reach host DMA buffers in place here; copy through cuda.alloc() memory instead";
  requireAttribute(device, CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED, "CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED", "register host memory", instead);
  requireAttribute(device, CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, "CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY", "map host memory", instead);
  const first = Number(buf.pointer);
  const base = first - (first % HOST_PAGE_SIZE);
  const length = Math.ceil((first + buf.size) / HOST_PAGE_SIZE) * HOST_PAGE_SIZE - base;
  const d = current(device);
  const where = `${length} bytes at 0x${base.toString(16)}`;
  const r = d.cuMemHostRegister_v2(base as Pointer, length, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE);
  if (r !== CUDA_SUCCESS) {
    const overlap =
      "another registerHost() holds some of these pages (the buffer itself, its parent, or a region sharing a page); unregister it first, or register the whole buffer once and use offsets from its devicePointer";
    throw cudaError(r, "cuMemHostRegister_v2", where, r === CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED ? overlap : undefined);
  }
  let devBase: bigint;
  try {
    check(d.cuMemHostGetDevicePointer_v2(scratch().ptr, base as Pointer, 0), "cuMemHostGetDevicePointer_v2", where);
    devBase = outU64();
  } catch (e) {
    d.cuMemHostUnregister(base as Pointer); // best effort: the error that matters is the one thrown
    throw e;
  }
  const reg = new HostRegistration(internal, buf, device, devBase + BigInt(first - base), base, length);
  liveRegistrations.add(reg);
  return reg;
}

/**
 * Pages of a PCI BAR mapping (an NVMe controller's doorbells) mapped into a GPU's address space as
 * I/O memory (cuMemHostRegister with IOMEMORY | DEVICEMAP), so GPU threads can write doorbell
 * registers: the GPU then writes them uncached and in order. Made by registerIoMemory(); release
 * it (unregister()) before the BAR is unmapped (the controller's close()).
 */
export class IoMemoryRegistration {
  /** Device address of the first registered byte. */
  readonly devicePointer: bigint;
  /** Host address and length of the registered range (whole 4 KiB pages). */
  readonly hostAddress: number;
  readonly size: number;
  readonly device: number;
  #registered = true;

  constructor(key: symbol, device: number, hostAddress: number, size: number, devicePointer: bigint) {
    if (key !== internal) throw new TypeError("IoMemoryRegistration is made by cuda.registerIoMemory()");
    this.device = device;
    this.hostAddress = hostAddress;
    this.size = size;
    this.devicePointer = devicePointer;
  }

  get registered(): boolean {
    return this.#registered;
  }

  /** Unmap the pages from the GPU (cuMemHostUnregister); a second call throws ClosedError. */
  unregister(): void {
    if (!this.#registered) throw new ClosedError("unregister: this I/O memory registration was already released");
    this.#registered = false;
    liveRegistrations.delete(this);
    const d = current(this.device);
    check(d.cuMemHostUnregister(this.hostAddress as Pointer), "cuMemHostUnregister", `${this.size} bytes of I/O memory at 0x${this.hostAddress.toString(16)}`);
  }

  [Symbol.dispose](): void {
    if (this.#registered) this.unregister();
  }
}

/**
 * Register `size` bytes of a BAR mapping at host address `address` (page aligned: whole 4 KiB
 * pages) as I/O memory for GPU `opts.device`. What the NVIDIA driver needs (gpu.md section 3, read
 * from its source, not run here): a VM_IO | VM_PFNMAP mapping with physically contiguous pages whose
 * PTEs are present (touch each page first: a mapping filled on first touch has none), and often
 * root. Throws CudaError naming the next step when the driver refuses.
 */
export function registerIoMemory(address: number, size: number, opts: Readonly<CudaAllocOptions> = {}): IoMemoryRegistration {
  if (!Number.isSafeInteger(address) || address <= 0 || address % HOST_PAGE_SIZE !== 0) {
    throw new InvalidArgumentError(`registerIoMemory(): address 0x${address.toString(16)} must be a page-aligned host address (a BAR page)`);
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size % HOST_PAGE_SIZE !== 0) {
    throw new InvalidArgumentError(`registerIoMemory(): size ${size} must be a positive number of whole 4 KiB pages`);
  }
  const device = checkDevice(opts.device);
  requireAttribute(
    device,
    CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
    "CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED",
    "register host memory",
    "GPU threads cannot ring the controller's doorbells here; use device: \"cpu\" (host threads run the same queue code)",
  );
  const d = current(device);
  const where = `${size} bytes of I/O memory at 0x${address.toString(16)}`;
  const r = d.cuMemHostRegister_v2(address as Pointer, size, CU_MEMHOSTREGISTER_IOMEMORY | CU_MEMHOSTREGISTER_DEVICEMAP);
  if (r !== CUDA_SUCCESS) {
    throw cudaError(
      r,
      "cuMemHostRegister_v2",
      `${where}, IOMEMORY | DEVICEMAP`,
      r === CUDA_ERROR_NOT_PERMITTED
        ? "the driver refused to map BAR pages for the GPU: run as root, and check that the controller's BAR0 is mapped through the sysfs, VFIO or disnvm backend (a VM_IO | VM_PFNMAP mapping); or use device: \"cpu\""
        : undefined,
    );
  }
  let dptr: bigint;
  try {
    check(d.cuMemHostGetDevicePointer_v2(scratch().ptr, address as Pointer, 0), "cuMemHostGetDevicePointer_v2", where);
    dptr = outU64();
  } catch (e) {
    d.cuMemHostUnregister(address as Pointer); // best effort: the error that matters is the one thrown
    throw e;
  }
  const reg = new IoMemoryRegistration(internal, device, address, size, dptr);
  liveRegistrations.add(reg);
  return reg;
}

/** Copy `size` bytes from `src` to `dst` with the GPU's copy engine (cuMemcpyDtoD), on `dst`'s device. */
export function copy(dst: DeviceRange, src: DeviceRange, size: number): void {
  for (const [r, role] of [
    [dst, "destination"],
    [src, "source"],
  ] as const) {
    if (!(r instanceof CudaMemory || r instanceof HostRegistration)) throw new InvalidArgumentError(`cuda.copy(): the ${role} must be CudaMemory or a HostRegistration`);
    if (r instanceof CudaMemory ? r.freed : !r.registered) throw new ClosedError(`cuda.copy(): the ${role} was freed or unregistered`);
  }
  if (!Number.isSafeInteger(size) || size < 0 || size > dst.size || size > src.size) {
    throw new InvalidArgumentError(`cuda.copy() of ${size} bytes does not fit: destination ${dst.size} bytes, source ${src.size} bytes`);
  }
  if (size === 0) return;
  const d = current(dst.device);
  check(d.cuMemcpyDtoD_v2(dst.devicePointer, src.devicePointer, size), "cuMemcpyDtoD_v2", `${size} bytes ${hex(src.devicePointer)} -> ${hex(dst.devicePointer)}`);
}

/** Free every CudaMemory and registration this thread still holds (cuda.close()); throws the first failure. */
export function releaseAll(): void {
  let first: unknown;
  for (const r of [...liveRegistrations]) {
    try {
      r.unregister();
    } catch (e) {
      first ??= e;
    }
  }
  for (const m of [...liveMemory]) {
    try {
      m.free();
    } catch (e) {
      first ??= e;
    }
  }
  if (first !== undefined) throw first;
}

/** How many CudaMemory and registrations of this thread are live (tests check the bookkeeping with it). */
export function liveCounts(): { readonly memory: number; readonly registrations: number } {
  return { memory: liveMemory.size, registrations: liveRegistrations.size };
}
