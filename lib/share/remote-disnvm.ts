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
import { DeviceError, NativeError, UnsupportedError } from "../errors.ts";
import { errnoName, native } from "../native.ts";
import { HUGE_PAGE_SIZE } from "../backends/hugepages.ts";
import { HOST_PAGE_SIZE, type DmaMapping, type DmaOptions } from "../backends/types.ts";
import { RemoteMemoryBackend, type RemoteMemory } from "./remote-memory.ts";

/** What a disnvm server answers for memory it had the module map: its handle and each page's bus address, (lo, hi) pairs. */
export interface PinnedPages {
  readonly handle: number;
  readonly pages: Uint32Array;
}

export class RemoteDisnvmBackend extends RemoteMemoryBackend<PinnedPages> {
  readonly kind = "disnvm" as const;

  /** Map BAR0 through `barFd` (ours from now on): registers read-only, doorbells read-write. */
  constructor(bdf: string, name: string, barFd: number, bar0Size: number, memory: RemoteMemory<PinnedPages>) {
    const p = native().nvm_disnvm_map_bar_fd(barFd, bar0Size);
    if (p === null) {
      const errno = native().nvm_last_error();
      native().nvm_unix_close(barFd);
      throw new NativeError(`cannot map BAR0 of ${name} through the BAR descriptor the server passed: ${errnoName(errno)}`, errno, "mmap", name);
    }
    super(name, bdf, barFd, p, bar0Size, memory);
  }

  protected busPages(held: PinnedPages): Uint32Array {
    return held.pages;
  }

  allocDma(size: number, opts: DmaOptions = {}): DmaMapping {
    const bytes = Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE;
    // Behind an IOMMU the module maps any pages at consecutive IOVAs; without one its bus
    // addresses are physical, and a contiguous range of more than one page takes a 2 MiB hugepage
    // (as the owner's DisnvmBackend does). Ordinary pages first: only when their addresses are
    // not consecutive is a hugepage needed.
    const a = this.allocHeld(bytes, false);
    if (!opts.contiguous || a.contiguous) return this.keep(a);
    this.dropHeld(a);
    if (bytes > HUGE_PAGE_SIZE) throw new DeviceError(`a bus-contiguous DMA range is limited to ${HUGE_PAGE_SIZE} bytes here without an IOMMU (asked ${size})`);
    const h = this.allocHeld(HUGE_PAGE_SIZE, true);
    if (!h.contiguous) {
      this.dropHeld(h);
      throw new DeviceError(`could not get ${size} bus-contiguous bytes from the server's module mapping`);
    }
    return this.keep(h);
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw new UnsupportedError(`${this.name}: the module's file is the server's, so only the server's process can import a dma-buf for this controller`);
  }
}
