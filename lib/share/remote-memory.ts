/**
 * What the backends of a client share when the server maps the client's memory for the controller
 * (VFIO: into its IOMMU container; disnvm: pinned by the module through its file): BAR0 mapped
 * through a descriptor the server passed, each DMA allocation a memfd handed to the server (which
 * keeps it, so its pages outlive this process until its queues are deleted) with the bus address
 * of each page coming back, the memory given back to the server before it is freed here.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { DeviceError } from "../errors.ts";
import { checkPtr, errnoName, native } from "../native.ts";
import { DMA_HUGE, DMA_NOLOCK, dmaAllocError, freeLive, isContiguous } from "../backends/dma-common.ts";
import { HugepageReservation } from "../backends/hugepage-reserve.ts";
import { HOST_PAGE_SIZE, type Backend, type BackendKind, type DmaMapping, type DmaOptions } from "../backends/types.ts";

const ENOMEM = 12;

/** The server's side of this process's memory, as each backend's server answers it. */
export interface RemoteMemory<H> {
  /** Hand the memfd `fd` of `bytes` bytes to the server, which maps it for the device. */
  hold(fd: number, bytes: number): H;
  /** The memory of `handle` is reached by no command any more. */
  release(handle: number): void;
}

export interface RemoteAllocation extends DmaMapping {
  readonly vaddr: Pointer;
  readonly handle: number;
  readonly flags: number;
}

export abstract class RemoteMemoryBackend<H extends { readonly handle: number }> implements Backend {
  abstract readonly kind: BackendKind;
  readonly name: string;
  readonly bdf: string;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #barFd: number;
  readonly #memory: RemoteMemory<H>;
  readonly #live = new Set<RemoteAllocation>();
  /** Hugepages raised for contiguous ranges, given back on close. */
  readonly #reservation = new HugepageReservation();
  #closed = false;

  /** `bar0` was mapped through `barFd`, which is ours from now on (closed with this backend). */
  protected constructor(name: string, bdf: string, barFd: number, bar0: Pointer, bar0Size: number, memory: RemoteMemory<H>) {
    this.name = name;
    this.bdf = bdf;
    this.#barFd = barFd;
    this.bar0 = bar0;
    this.bar0Size = bar0Size;
    this.#memory = memory;
  }

  /** One bus address per 4 KiB page of `bytes` held as `held`, (lo, hi) pairs. */
  protected abstract busPages(held: H, bytes: number): Uint32Array;

  abstract allocDma(size: number, opts?: DmaOptions): DmaMapping;

  abstract importDmaBuf(fd: number, offset: number, size?: number): DmaMapping;

  /** A memfd of `length` bytes (2 MiB hugetlb pages with `huge`) the server mapped for the controller; not yet kept. */
  protected allocHeld(length: number, huge: boolean): RemoteAllocation {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const flags = DMA_NOLOCK | (huge ? DMA_HUGE : 0);
    const n = native();
    const out = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
    let vaddr: Pointer | null;
    let fd = -1;
    try {
      // Not mlocked: the server's mapping (VFIO_IOMMU_MAP_DMA, the module's pin) keeps the pages.
      vaddr = n.nvm_dma_alloc_fd(length, flags, out);
      if (vaddr === null && huge && n.nvm_last_error() === ENOMEM) {
        this.#reservation.raise(1);
        vaddr = n.nvm_dma_alloc_fd(length, flags, out);
      }
      if (vaddr !== null) fd = new Int32Array(toArrayBuffer(out, 0, 4))[0]!;
    } finally {
      n.nvm_host_free(out);
    }
    if (vaddr === null) throw dmaAllocError(length, n.nvm_last_error(), { huge, locked: false, errnoText: errnoName });
    let held: H;
    try {
      held = this.#memory.hold(fd, length);
    } catch (e) {
      n.nvm_dma_free(vaddr, length, flags);
      throw e;
    } finally {
      n.nvm_unix_close(fd);
    }
    const a: RemoteAllocation = { vaddr, size: length, iova: new Uint32Array(0), contiguous: false, handle: held.handle, flags };
    let iova: Uint32Array;
    try {
      iova = this.busPages(held, length);
      if (iova.length !== 2 * (length / HOST_PAGE_SIZE)) throw new DeviceError(`the server gave ${iova.length / 2} bus addresses for ${length / HOST_PAGE_SIZE} pages`);
    } catch (e) {
      this.dropHeld(a);
      throw e;
    }
    return { ...a, iova, contiguous: isContiguous(iova) };
  }

  protected keep(a: RemoteAllocation): RemoteAllocation {
    this.#live.add(a);
    return a;
  }

  /** Give memory not kept back to the server, then free it. */
  protected dropHeld(a: RemoteAllocation): void {
    this.#memory.release(a.handle);
    native().nvm_dma_free(a.vaddr, a.size, a.flags);
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping as RemoteAllocation, (a) => this.dropHeld(a));
  }

  /** Bus mastering is the server's (it owns the device). */
  setBusMaster(_enabled: boolean): void {}

  abandonDma(): void {
    this.#live.clear();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const a of [...this.#live]) {
      try {
        this.freeDma(a);
      } catch {
        // Releasing the rest anyway.
      }
    }
    native().nvm_unmap(this.bar0, this.bar0Size);
    native().nvm_unix_close(this.#barFd);
    this.#reservation.release();
  }
}
