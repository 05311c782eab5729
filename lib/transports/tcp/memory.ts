/**
 * Buffers of an NVMe/TCP controller: ordinary host memory, page aligned and C-owned (a JS typed
 * array's address can go stale under bun:ffi, bun#32054), with no bus address: nothing but this
 * process's own socket reads and writes it, so there is no DMA mapping, no lock and no IOMMU. The
 * same DmaBuffer class wraps it, so Namespace, IoQueue-level calls and tools take it unchanged;
 * what needs a bus address (PRPs, busAddress()) says UnsupportedError.
 *
 * The TCP queues register with it as DmaUsers: free() of a buffer a command may still receive
 * into keeps the memory until the command settled (which, after a timeout, is once its connection
 * was closed, so no late C2HData can land in it).
 */
import type { Pointer } from "bun:ffi";
import { UnsupportedError } from "../../errors.ts";
import { check, checkPtr, native } from "../../native.ts";
import { HOST_PAGE_SIZE, type DmaAllocator, type DmaMapping, type DmaOptions } from "../../backends/types.ts";

/** nvm_dma_alloc flag: no mlock (nothing maps this memory for a device). */
const NVM_DMA_NOLOCK = 2;
const NO_IOVA = new Uint32Array(0);
/** One mapping is at most 4 GiB minus a page (nvm_dma_alloc takes a u32 size). */
const MAX_MAPPING = 0xffff_f000;

export class HostMemory implements DmaAllocator {
  readonly #live = new Set<DmaMapping & { readonly vaddr: Pointer }>();

  constructor(readonly name: string) {}

  allocDma(size: number, _opts?: DmaOptions): DmaMapping {
    const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    if (bytes > MAX_MAPPING) throw new UnsupportedError(`a buffer of ${size} bytes: libnvm allocates at most ${MAX_MAPPING} bytes at once`);
    const vaddr = checkPtr(native().nvm_dma_alloc(bytes, NVM_DMA_NOLOCK), "nvm_dma_alloc");
    const m = { vaddr, size: bytes, iova: NO_IOVA, contiguous: false };
    this.#live.add(m);
    return m;
  }

  freeDma(mapping: DmaMapping): void {
    const m = mapping as DmaMapping & { readonly vaddr: Pointer };
    if (!this.#live.delete(m)) return;
    m.revoke?.();
    check(native().nvm_dma_free(m.vaddr, m.size, NVM_DMA_NOLOCK), "nvm_dma_free");
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError(`${this.name} is an NVMe/TCP controller: its data travels in the TCP stream, so a dma-buf (device memory without a CPU view) cannot be its buffer`);
  }

  /** Release every mapping not yet freed (the controller closed); views are detached first. */
  close(): void {
    for (const m of [...this.#live]) this.freeDma(m);
  }
}

/** Host memory that belongs to another thread's HostMemory (a Worker's view of exported buffers): never freed here. */
export class BorrowedHostMemory implements DmaAllocator {
  readonly #lent: DmaMapping[] = [];
  readonly #live = new Set<DmaMapping>();

  lend(vaddr: number, size: number): void {
    this.#lent.push({ vaddr: vaddr as Pointer, size, iova: NO_IOVA, contiguous: false });
  }

  allocDma(size: number): DmaMapping {
    const m = this.#lent.shift();
    if (!m || m.size < size) throw new UnsupportedError(`a Worker cannot allocate buffers (${size} bytes asked): allocate them in the owner thread and export them`);
    this.#live.add(m);
    return m;
  }

  freeDma(m: DmaMapping): void {
    if (!this.#live.delete(m)) return;
    m.revoke?.();
  }

  importDmaBuf(): DmaMapping {
    throw new UnsupportedError("a Worker cannot import a dma-buf");
  }

  close(): void {
    this.#lent.length = 0;
    for (const m of [...this.#live]) this.freeDma(m);
  }
}
