/**
 * A client's backend when the server reaches the controller through the disnvm module: the
 * module's file is the server's (one opener per controller), so this process maps BAR0 through a
 * BAR-only descriptor the server passes with its hello reply (the module lets it map the registers
 * read-only and the doorbells, and nothing else: no memory for DMA), and every DMA allocation is a
 * memfd the server has the module pin and map through its own file, telling us the bus address of
 * each 4 KiB page. The server thereby knows each client's memory: it refuses rings outside it, and
 * unmaps a dead client's memory only after deleting its queues. When the server dies, the module
 * revokes the BAR descriptor before it stops the controller: a doorbell written after that lands
 * in a page of plain memory, never on a controller someone else may own by then.
 */
import type { Pointer } from "bun:ffi";
import { toArrayBuffer } from "bun:ffi";
import { DeviceError, NativeError, UnsupportedError } from "../errors.ts";
import { checkPtr, errnoName, native } from "../native.ts";
import { DMA_HUGE, DMA_NOLOCK, dmaAllocError, freeLive, isContiguous } from "../backends/dma-common.ts";
import { HUGE_PAGE_SIZE } from "../backends/hugepages.ts";
import { HugepageReservation } from "../backends/hugepage-reserve.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "../backends/types.ts";

const ENOMEM = 12;

/** The server's side of this process's memory. */
export interface RemotePages {
  /** Hand the memfd `fd` of `bytes` bytes to the server, which has the module map it: its handle and one bus address per 4 KiB page, (lo, hi) pairs. */
  hold(fd: number, bytes: number): { handle: number; pages: Uint32Array };
  /** The memory of `handle` is reached by no command any more. */
  release(handle: number): void;
}

interface Allocation extends DmaMapping {
  readonly vaddr: Pointer;
  readonly handle: number;
  readonly flags: number;
}

export class RemoteDisnvmBackend implements Backend {
  readonly kind = "disnvm" as const;
  readonly name: string;
  readonly bdf: string;
  readonly bar0: Pointer;
  readonly bar0Size: number;
  readonly #barFd: number;
  readonly #memory: RemotePages;
  readonly #live = new Set<Allocation>();
  /** Hugepages raised for contiguous ranges without an IOMMU, given back on close. */
  readonly #reservation = new HugepageReservation();
  #closed = false;

  /** Map BAR0 through `barFd` (ours from now on): registers read-only, doorbells read-write. */
  constructor(bdf: string, name: string, barFd: number, bar0Size: number, memory: RemotePages) {
    this.name = name;
    this.bdf = bdf;
    this.#barFd = barFd;
    this.#memory = memory;
    const p = native().nvm_disnvm_map_bar_fd(barFd, bar0Size);
    if (p === null) {
      const errno = native().nvm_last_error();
      native().nvm_unix_close(barFd);
      throw new NativeError(`cannot map BAR0 of ${name} through the BAR descriptor the server passed: ${errnoName(errno)}`, errno, "mmap", name);
    }
    this.bar0 = p;
    this.bar0Size = bar0Size;
  }

  allocDma(size: number, opts: DmaOptions = {}): DmaMapping {
    if (this.#closed) throw new DeviceError(`${this.name} is closed`);
    const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    // Behind an IOMMU the module maps any pages at consecutive IOVAs; without one its bus
    // addresses are physical, and a contiguous range of more than one page takes a 2 MiB hugepage
    // (as the owner's DisnvmBackend does). Ordinary pages first: only when their addresses are
    // not consecutive is a hugepage needed.
    const a = this.#alloc(bytes, false);
    if (!opts.contiguous || a.contiguous) return this.#keep(a);
    this.#drop(a);
    if (bytes > HUGE_PAGE_SIZE) throw new DeviceError(`a bus-contiguous DMA range is limited to ${HUGE_PAGE_SIZE} bytes here without an IOMMU (asked ${size})`);
    const h = this.#alloc(HUGE_PAGE_SIZE, true);
    if (!h.contiguous) {
      this.#drop(h);
      throw new DeviceError(`could not get ${size} bus-contiguous bytes from the server's module mapping`);
    }
    return this.#keep(h);
  }

  #keep(a: Allocation): Allocation {
    this.#live.add(a);
    return a;
  }

  #drop(a: Allocation): void {
    this.#memory.release(a.handle);
    native().nvm_dma_free(a.vaddr, a.size, a.flags);
  }

  /** A memfd of `length` bytes (2 MiB hugetlb pages with `huge`), mapped for the controller by the server. */
  #alloc(length: number, huge: boolean): Allocation {
    const flags = DMA_NOLOCK | (huge ? DMA_HUGE : 0);
    const n = native();
    const out = checkPtr(n.nvm_host_alloc(8), "nvm_host_alloc");
    let vaddr: Pointer | null;
    let fd = -1;
    try {
      // Not mlocked: the module's pin (charged to the server) keeps the pages.
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
    let held: { handle: number; pages: Uint32Array };
    try {
      held = this.#memory.hold(fd, length);
    } catch (e) {
      n.nvm_dma_free(vaddr, length, flags);
      throw e;
    } finally {
      n.nvm_unix_close(fd);
    }
    const a: Allocation = { vaddr, size: length, iova: held.pages, contiguous: isContiguous(held.pages), handle: held.handle, flags };
    if (held.pages.length !== 2 * (length / HOST_PAGE_SIZE)) {
      this.#drop(a);
      throw new DeviceError(`the server gave ${held.pages.length / 2} bus addresses for ${length / HOST_PAGE_SIZE} pages`);
    }
    return a;
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError(`${this.name}: the module's file is the server's, so only the server's process can import a dma-buf for this controller`);
  }

  freeDma(mapping: DmaMapping): void {
    freeLive(this.#live, mapping as Allocation, (a) => {
      this.#memory.release(a.handle);
      native().nvm_dma_free(a.vaddr, a.size, a.flags);
    });
  }

  /** Bus mastering is the server's (the module gives it to the opener only). */
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
