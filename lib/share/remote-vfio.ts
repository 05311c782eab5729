/**
 * A client's backend when the server reaches the controller through VFIO: the IOMMU container is
 * the server's, so this process maps BAR0 through the VFIO device descriptor the server handed it,
 * and every DMA allocation is a memfd the server maps into its container, at an IOVA it tells us.
 * The server thereby knows each client's memory: it refuses rings outside it, and it unmaps a dead
 * client's memory from the IOMMU only after deleting its queues.
 */
import type { Pointer } from "bun:ffi";
import { DeviceError, NativeError } from "../errors.ts";
import { checkPtr, errnoName, native } from "../native.ts";
import { DMA_NOLOCK, freeLive } from "../backends/dma-common.ts";
import { dmaBufUnsupported } from "../backends/dmabuf.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "../backends/types.ts";
import { toArrayBuffer } from "bun:ffi";

const TWO32 = 0x1_0000_0000;

/** The server's side of this process's memory. */
export interface RemoteMemory {
  /** Hand the memfd `fd` of `bytes` bytes to the server, which maps it for the device: its handle and IOVA. */
  hold(fd: number, bytes: number): { handle: number; iova: number };
  /** The memory of `handle` is reached by no command any more. */
  release(handle: number): void;
}

interface Allocation extends DmaMapping {
  readonly vaddr: Pointer;
  readonly handle: number;
}

export class RemoteVfioBackend implements Backend {
  readonly kind = "vfio" as const;
  readonly name: string;
  readonly bdf: string;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #device: number;
  readonly #memory: RemoteMemory;
  readonly #live = new Set<Allocation>();
  #closed = false;

  /** Map BAR0 through `deviceFd` (ours from now on) at `bar0Offset`. */
  constructor(bdf: string, deviceFd: number, bar0Offset: number, bar0Size: number, memory: RemoteMemory) {
    this.name = bdf;
    this.bdf = bdf;
    this.#device = deviceFd;
    this.#memory = memory;
    const p = native().nvm_vfio_map_region(deviceFd, bar0Offset % TWO32, Math.floor(bar0Offset / TWO32), bar0Size);
    if (p === null) {
      const errno = native().nvm_last_error();
      native().nvm_unix_close(deviceFd);
      throw new NativeError(`cannot map BAR0 of ${bdf} through the VFIO device the server passed: ${errnoName(errno)}`, errno, "mmap", bdf);
    }
    this.bar0 = p;
    this.bar0Size = bar0Size;
  }

  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    const n = native();
    const out = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
    let vaddr: Pointer | null;
    let fd = -1;
    try {
      // Not mlocked: the server's VFIO_IOMMU_MAP_DMA pins the pages.
      vaddr = n.nvm_dma_alloc_fd(bytes, DMA_NOLOCK, out);
      if (vaddr !== null) fd = new Int32Array(toArrayBuffer(out, 0, 4))[0]!;
    } finally {
      n.nvm_host_free(out);
    }
    if (vaddr === null) throw new NativeError(`DMA memory of ${bytes} bytes: ${errnoName(n.nvm_last_error())}`, n.nvm_last_error(), "memfd_create");
    let held: { handle: number; iova: number };
    try {
      held = this.#memory.hold(fd, bytes);
    } catch (e) {
      n.nvm_dma_free(vaddr, bytes, DMA_NOLOCK);
      throw e;
    } finally {
      n.nvm_unix_close(fd);
    }
    const pages = bytes / HOST_PAGE_SIZE;
    const iova = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = held.iova + i * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    const a: Allocation = { vaddr, size: bytes, iova, contiguous: true, handle: held.handle };
    this.#live.add(a);
    return a;
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw dmaBufUnsupported("vfio");
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping as Allocation, (a) => {
      this.#memory.release(a.handle);
      native().nvm_dma_free(a.vaddr, a.size, DMA_NOLOCK);
    });
  }

  /** Bus mastering is the server's (it owns the device's configuration). */
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
    native().nvm_unix_close(this.#device);
  }
}
