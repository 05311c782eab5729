/**
 * A client's backend when the server reaches the controller through VFIO: the IOMMU container is
 * the server's, so this process maps BAR0 through the VFIO device descriptor the server handed it,
 * and every DMA allocation is a memfd the server maps into its container, at an IOVA it tells us.
 * The server thereby knows each client's memory: it refuses rings outside it, and it unmaps a dead
 * client's memory from the IOMMU only after deleting its queues.
 */
import { NativeError } from "../errors.ts";
import { errnoName, native } from "../native.ts";
import { dmaBufUnsupported } from "../backends/dmabuf.ts";
import { HOST_PAGE_SIZE, type DmaMapping, type DmaOptions } from "../backends/types.ts";
import { RemoteMemoryBackend, type RemoteMemory } from "./remote-memory.ts";

const TWO32 = 0x1_0000_0000;

/** What a VFIO server answers for memory it mapped: its handle and the IOVA of its first byte. */
export interface MappedAt {
  readonly handle: number;
  readonly iova: number;
}

export class RemoteVfioBackend extends RemoteMemoryBackend<MappedAt> {
  readonly kind = "vfio" as const;

  /** Map BAR0 through `deviceFd` (ours from now on) at `bar0Offset`. */
  constructor(bdf: string, deviceFd: number, bar0Offset: number, bar0Size: number, memory: RemoteMemory<MappedAt>) {
    const p = native().nvm_vfio_map_region(deviceFd, bar0Offset % TWO32, Math.floor(bar0Offset / TWO32), bar0Size);
    if (p === null) {
      const errno = native().nvm_last_error();
      native().nvm_unix_close(deviceFd);
      throw new NativeError(`cannot map BAR0 of ${bdf} through the VFIO device the server passed: ${errnoName(errno)}`, errno, "mmap", bdf);
    }
    super(bdf, bdf, deviceFd, p, bar0Size, memory);
  }

  /** One IOVA range: the IOMMU makes any pages contiguous for the controller. */
  protected busPages(held: MappedAt, bytes: number): Uint32Array {
    const pages = bytes / HOST_PAGE_SIZE;
    const iova = new Uint32Array(2 * pages);
    for (let i = 0; i < pages; i++) {
      const a = held.iova + i * HOST_PAGE_SIZE;
      iova[2 * i] = a % TWO32;
      iova[2 * i + 1] = Math.floor(a / TWO32);
    }
    return iova;
  }

  allocDma(size: number, _opts: DmaOptions = {}): DmaMapping {
    return this.keep(this.allocHeld(Math.ceil(size / HOST_PAGE_SIZE) * HOST_PAGE_SIZE, false));
  }

  importDmaBuf(_fd: number, _offset: number, _size?: number): DmaMapping {
    throw dmaBufUnsupported("vfio");
  }
}
