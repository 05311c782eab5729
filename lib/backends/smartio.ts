/**
 * SmartIO backend: a controller borrowed across a Dolphin PCIe cluster through SISCI (lib/sisci.ts,
 * the shim c/src/sisci.c), named by its fabric device id as `smartio_tool list` prints it
 * (`--ctrl=smartio:80000`). The controller may sit in another host: SISCI maps its BAR0 through the
 * non-transparent bridge, and DMA memory is SISCI segments mapped *for the device*, whose device-side
 * address (what goes into PRPs and queue base registers) SISCI gives back. Everything above this
 * backend is the same driver as for a local controller.
 *
 * The sequence, as the C original's SmartIO path and Dolphin's examples do it: SCIInitialize, borrow
 * the device (exclusively by default: this process resets and owns the controller), connect BAR0 as
 * a device segment and map it uncached; per DMA allocation create a segment, prepare it on the
 * adapter that reaches the device, set it available, map it for the device, map it for the CPU;
 * teardown in reverse, each step retried while SISCI says busy, up to busyTimeoutMs.
 *
 * Not here: SISCI has no call for the borrowed device's PCI COMMAND register, so bus mastering
 * cannot be cleared (setBusMaster throws; a controller that cannot be disabled keeps its memory,
 * abandonDma). Completions are polled; x86 DMA is cache-coherent, so nothing syncs caches on the hot
 * path (cacheSync() is there for hosts that are not). If the process dies, what happens to the borrow
 * and the segments is SISCI's driver's business (untested: no hardware); the controller may stay
 * enabled until the next open resets it.
 */
import type { Pointer } from "bun:ffi";
import { DeviceError, InvalidArgumentError, UnsupportedError } from "../errors.ts";
import { BAR0_MIN_SIZE } from "../spec/registers.ts";
import {
  BORROW_EXCLUSIVE,
  MAP_IOSPACE,
  MEMTYPE_BAR,
  SEGMENT_AUTO_ID,
  SYNC_FLUSH,
  SYNC_INVALIDATE,
  sisciError,
  sisciScratch,
  sisciShim,
  type SisciShim,
} from "../sisci.ts";
import { freeLive } from "./dma-common.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "./types.ts";

const TWO32 = 0x1_0000_0000;
/** The largest segment the shim's u32 sizes describe in whole pages. */
const MAX_SEGMENT = 0xffff_f000;

export interface SmartIoBackendOptions {
  /**
   * Borrow the device exclusively (SCI_FLAG_EXCLUSIVE): no other host or process may borrow it while
   * this backend is open. Defaults to true: the driver resets the controller and owns its queues.
   */
  readonly exclusive?: boolean;
  /** How long each teardown call retries while SISCI says the resource is busy, in ms. Defaults to 5000. */
  readonly busyTimeoutMs?: number;
}

/** `smartio:80000` or `smartio:0x80000` (hex, as smartio_tool prints fabric device ids) → 0x80000. */
export function parseSmartIoAddress(ctrl: string): number {
  const m = /^smartio:(?:0x)?([0-9a-f]{1,8})$/i.exec(ctrl.trim());
  if (!m) {
    throw new InvalidArgumentError(`${ctrl}: a SmartIO controller is smartio:<fdid>, the fabric device id in hex as \`smartio_tool list\` prints it (e.g. smartio:80000)`);
  }
  return parseInt(m[1]!, 16);
}

/** How a backend names fabric device `fdid`. */
export function smartIoName(fdid: number): string {
  return `smartio:${fdid.toString(16)}`;
}

interface Segment extends DmaMapping {
  /** The shim's segment handle. */
  readonly handle: Pointer;
  /** The SISCI segment id. */
  readonly id: number;
  /** The device-side address of the first byte. */
  readonly ioaddr: number;
}

/** Where the cache sync of SmartIoBackend.cacheSync goes. */
export type CacheSyncDirection = "to-device" | "from-device" | "both";

export class SmartIoBackend implements Backend {
  readonly kind = "smartio" as const;
  /** smartio:<fdid in hex>: the owner lock and messages use it. */
  readonly name: string;
  /** A borrowed device has no local PCI address. */
  readonly bdf = undefined;
  readonly fdid: number;
  /** The local adapter through which the device is reached (SCIQuery). */
  readonly adapter: number;
  /** The node that lends the device, and this node's id on `adapter`. */
  readonly lenderNode: number;
  readonly localNode: number;
  readonly exclusive: boolean;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #shim: SisciShim;
  readonly #dev: Pointer;
  readonly #bar: Pointer;
  readonly #busyMs: number;
  readonly #live = new Set<Segment>();
  /** Segments whose teardown failed (SISCI still busy at the deadline): close() tries them again. */
  readonly #stuck = new Set<Pointer>();
  #closed = false;
  /** abandonDma() was called: segments the controller may still reach stay mapped for it, so the borrow stays too. */
  #abandoned = false;

  /** Borrow fabric device `fdid` and map its BAR0; SmartIoError says what is missing or refused. */
  constructor(fdid: number, opts: SmartIoBackendOptions = {}) {
    if (!Number.isInteger(fdid) || fdid < 0 || fdid > 0xffff_ffff) throw new InvalidArgumentError(`fabric device id ${fdid}: must be a 32-bit unsigned integer`);
    this.fdid = fdid;
    this.name = smartIoName(fdid);
    this.exclusive = opts.exclusive ?? true;
    this.#busyMs = opts.busyTimeoutMs ?? 5000;
    const shim = sisciShim();
    this.#shim = shim;
    const s = sisciScratch();
    if (shim.nvm_sisci_init() < 0) throw sisciError("SmartIO: initialising SISCI");
    const undo: (() => void)[] = [() => shim.nvm_sisci_fini()];
    const unwind = (e: unknown): never => {
      for (const f of undo.reverse()) f();
      throw e;
    };
    const dev = shim.nvm_sisci_device_borrow(fdid, this.exclusive ? BORROW_EXCLUSIVE : 0, s.ptr);
    if (dev === null) unwind(sisciError(`SmartIO: borrowing device ${this.name}${this.exclusive ? " exclusively" : ""}`));
    this.#dev = dev!;
    this.adapter = s.u32[1]!;
    this.lenderNode = s.u32[2]!;
    this.localNode = s.u32[3]!;
    undo.push(() => shim.nvm_sisci_device_return(dev!, this.#busyMs));
    const bar = shim.nvm_sisci_connect_device_segment(dev!, 0, MEMTYPE_BAR, s.ptr);
    if (bar === null) unwind(sisciError(`SmartIO: connecting BAR0 of ${this.name}`));
    this.#bar = bar!;
    const size = s.u32[0]!;
    undo.push(() => shim.nvm_sisci_disconnect(bar!, this.#busyMs));
    if (size < BAR0_MIN_SIZE) unwind(new DeviceError(`${this.name}: BAR0 is ${size} bytes, too small for NVMe registers (${BAR0_MIN_SIZE}): is it an NVMe controller? (smartio_tool list shows its class)`));
    // Registers want uncached access: SCI_FLAG_IO_MAP_IOSPACE, as the C original mapped them.
    this.bar0Size = Math.min(size, 0x8000_0000);
    const p = shim.nvm_sisci_remote_map_cpu(bar!, 0, this.bar0Size, MAP_IOSPACE);
    if (p === null) unwind(sisciError(`SmartIO: mapping BAR0 of ${this.name}`));
    this.bar0 = p!;
  }

  #check(): void {
    if (this.#closed) throw new DeviceError(`${this.name} (SmartIO) is closed`);
  }

  /**
   * A SISCI segment of whole pages for the device: created, prepared on the adapter, made
   * available, mapped for the device (its address) and for the CPU. One address range on the
   * device's side, whatever the pages, so `contiguous` needs nothing special.
   */
  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    this.#check();
    if (!Number.isSafeInteger(size) || size <= 0) throw new DeviceError(`DMA allocation of ${size} bytes: the size must be a positive integer`);
    const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    if (bytes > MAX_SEGMENT) throw new DeviceError(`a SmartIO segment is limited to 4 GiB - 4 KiB here (asked ${size})`);
    const shim = this.#shim;
    const s = sisciScratch();
    const what = `SmartIO: ${bytes} bytes of DMA memory for ${this.name}`;
    const handle = shim.nvm_sisci_segment_create(this.#dev, 0, bytes, SEGMENT_AUTO_ID, s.ptr);
    if (handle === null) throw sisciError(what);
    const id = s.u32[0]!;
    let vaddr: Pointer | null = null;
    let ioaddr = 0;
    try {
      if (shim.nvm_sisci_segment_prepare(handle) < 0) throw sisciError(what);
      if (shim.nvm_sisci_segment_set_available(handle) < 0) throw sisciError(what);
      if (shim.nvm_sisci_segment_map_device(handle, s.ptr) < 0) throw sisciError(what);
      ioaddr = s.u32[0]! + s.u32[1]! * TWO32;
      vaddr = shim.nvm_sisci_segment_map_cpu(handle, 0);
      if (vaddr === null) throw sisciError(what);
      // PRPs and queue bases need page-aligned addresses (NVMe 2.0 4.1.1); SISCI gives pages, say so if not.
      if (ioaddr % HOST_PAGE_SIZE !== 0) throw new DeviceError(`${what}: SISCI mapped it at 0x${ioaddr.toString(16)}, not a 4 KiB boundary`);
    } catch (e) {
      this.#undo(handle);
      throw e;
    }
    const pages = bytes / HOST_PAGE_SIZE;
    const table = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = ioaddr + i * HOST_PAGE_SIZE;
      table[2 * i] = a % TWO32;
      table[2 * i + 1] = Math.floor(a / TWO32);
    }
    const seg: Segment = { vaddr, size: bytes, iova: table, contiguous: true, handle, id, ioaddr };
    this.#live.add(seg);
    return seg;
  }

  /**
   * GPU memory for the device: an empty segment with the CUDA allocation at `devicePointer`
   * attached (SCIAttachPhysicalMemory with SCI_FLAG_CUDA_BUFFER), prepared, available and mapped
   * for the device. No CPU view (vaddr null). Free it with freeDma() before the GPU memory.
   */
  attachGpuMemory(devicePointer: bigint, size: number): DmaMapping {
    this.#check();
    if (typeof devicePointer !== "bigint" || devicePointer <= 0n || devicePointer >= 1n << 64n) throw new InvalidArgumentError(`device pointer ${devicePointer}: must be a CUDA device address (bigint)`);
    if (!Number.isSafeInteger(size) || size <= 0 || size % HOST_PAGE_SIZE !== 0 || size > MAX_SEGMENT) {
      throw new InvalidArgumentError(`GPU memory of ${size} bytes: must be whole 4 KiB pages, at most 4 GiB - 4 KiB`);
    }
    const shim = this.#shim;
    const s = sisciScratch();
    const what = `SmartIO: attaching ${size} bytes of GPU memory at 0x${devicePointer.toString(16)} for ${this.name}`;
    const handle = shim.nvm_sisci_segment_create_gpu(this.#dev, 0, Number(devicePointer & 0xffff_ffffn), Number(devicePointer >> 32n), size, SEGMENT_AUTO_ID, s.ptr);
    if (handle === null) throw sisciError(what, { sisci: "SISCI attaches CUDA memory only where it was built with CUDA support (eXpressWare with CUDA)" });
    const id = s.u32[0]!;
    let ioaddr = 0;
    try {
      if (shim.nvm_sisci_segment_prepare(handle) < 0) throw sisciError(what);
      if (shim.nvm_sisci_segment_set_available(handle) < 0) throw sisciError(what);
      if (shim.nvm_sisci_segment_map_device(handle, s.ptr) < 0) throw sisciError(what);
      ioaddr = s.u32[0]! + s.u32[1]! * TWO32;
    } catch (e) {
      this.#undo(handle);
      throw e;
    }
    const pages = size / HOST_PAGE_SIZE;
    const table = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = ioaddr + i * HOST_PAGE_SIZE;
      table[2 * i] = a % TWO32;
      table[2 * i + 1] = Math.floor(a / TWO32);
    }
    const seg: Segment = { vaddr: null, size, iova: table, contiguous: true, handle, id, ioaddr };
    this.#live.add(seg);
    return seg;
  }

  /** #teardown after a failed allocation: its error is not the one to report; a segment that stays goes to close(). */
  #undo(handle: Pointer): void {
    try {
      this.#teardown(handle);
    } catch {
      this.#stuck.add(handle);
    }
  }

  /** Undo a segment in SISCI's order, every step even when one failed; throws the first failure. */
  #teardown(handle: Pointer): void {
    const shim = this.#shim;
    const t = this.#busyMs;
    const steps: [() => number, string][] = [
      [() => shim.nvm_sisci_segment_unmap_cpu(handle, t), "unmapping a segment"],
      [() => shim.nvm_sisci_segment_unmap_device(handle, t), "unmapping a segment for the device"],
      [() => shim.nvm_sisci_segment_set_unavailable(handle, t), "making a segment unavailable"],
      [() => shim.nvm_sisci_segment_remove(handle, t), "removing a segment"],
    ];
    let first: Error | undefined;
    for (const [step, what] of steps) if (step() < 0) first ??= sisciError(`SmartIO: ${what} of ${this.name}`);
    if (first) throw first;
  }

  /** SmartIO maps GPU memory by attaching it to a segment (attachGpuMemory), not through dma-bufs. */
  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError(
      "mapDmaBuf with the smartio backend: SISCI takes GPU memory by attaching the CUDA allocation to a segment (SmartIoBackend.attachGpuMemory), not as a dma-buf; for dma-bufs use the disnvm kernel module on the host that has the controller",
    );
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping, (seg) => {
      try {
        this.#teardown(seg.handle);
      } catch (e) {
        this.#stuck.add(seg.handle);
        throw e;
      }
    });
  }

  /** SISCI offers no access to a borrowed device's COMMAND register. */
  setBusMaster(_enabled: boolean): void {
    throw new UnsupportedError(`${this.name}: SISCI gives no access to a borrowed device's PCI COMMAND register, so bus mastering cannot be changed through SmartIO`);
  }

  /** The segments stay mapped for the device until the process exits; SISCI's driver has them then. */
  abandonDma(): void {
    this.#live.clear();
    this.#abandoned = true;
  }

  /** Segments whose teardown failed and that close() will try again. */
  get stuckSegments(): number {
    return this.#stuck.size;
  }

  /** The live segments, for diagnostics and tests. */
  mappings(): { id: number; ioaddr: number; size: number; cpu: boolean }[] {
    return [...this.#live].map((m) => ({ id: m.id, ioaddr: m.ioaddr, size: m.size, cpu: m.vaddr !== null })).sort((a, b) => a.ioaddr - b.ioaddr);
  }

  /**
   * Make [offset, offset + length) of a mapping coherent for a host whose DMA is not
   * (SCICacheSync): "to-device" writes CPU caches back before the controller reads, "from-device"
   * drops stale lines before the CPU reads what it wrote. A no-op on x86.
   */
  cacheSync(mapping: DmaMapping, offset: number, length: number, direction: CacheSyncDirection): void {
    this.#check();
    if (mapping.vaddr === null) throw new InvalidArgumentError(`cacheSync: this mapping has no CPU view`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > mapping.size) {
      throw new InvalidArgumentError(`cacheSync [${offset}, ${offset}+${length}) is outside the mapping's ${mapping.size} bytes`);
    }
    const flags = direction === "to-device" ? SYNC_FLUSH : direction === "from-device" ? SYNC_INVALIDATE : SYNC_FLUSH | SYNC_INVALIDATE;
    const at = ((mapping.vaddr as unknown as number) + offset) as Pointer;
    if (this.#shim.nvm_sisci_cache_sync(at, length, flags) < 0) throw sisciError(`SmartIO: cache sync of ${this.name}'s memory`);
  }

  /**
   * Unmap and remove every segment, unmap BAR0, disconnect it, return the device and end this
   * process's use of SISCI. Every step runs even when one fails; the first failure is thrown.
   * Idempotent. The controller above has disabled the device before (Controller.close).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    let first: unknown;
    const step = (f: () => void) => {
      try {
        f();
      } catch (e) {
        first ??= e;
      }
    };
    const shim = this.#shim;
    for (const seg of [...this.#live]) step(() => this.freeDma(seg));
    for (const handle of [...this.#stuck]) {
      step(() => {
        this.#teardown(handle);
        this.#stuck.delete(handle);
      });
    }
    step(() => {
      if (shim.nvm_sisci_remote_unmap_cpu(this.#bar, this.#busyMs) < 0) throw sisciError(`SmartIO: unmapping BAR0 of ${this.name}`);
    });
    step(() => {
      if (shim.nvm_sisci_disconnect(this.#bar, this.#busyMs) < 0) throw sisciError(`SmartIO: disconnecting BAR0 of ${this.name}`);
    });
    // Segments given up (abandonDma) are still mapped for the device, which SISCI does not return
    // while they are: the borrow ends with the process, and SISCI's driver releases it all then.
    if (this.#abandoned) {
      if (first !== undefined) throw first;
      return;
    }
    step(() => {
      if (shim.nvm_sisci_device_return(this.#dev, this.#busyMs) < 0) throw sisciError(`SmartIO: returning ${this.name}`);
    });
    shim.nvm_sisci_fini();
    if (first !== undefined) throw first;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
