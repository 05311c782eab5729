/**
 * DMA buffers: C-owned memory the controller reaches by bus address, seen from JS through
 * zero-copy typed-array views. free() detaches the views before the memory goes away, so a
 * stale view reads as empty instead of touching unmapped memory (which would kill the process).
 * region() wraps part of a buffer without copying; it lives and dies with its parent.
 */
import { toArrayBuffer } from "bun:ffi";
import type { Pointer } from "bun:ffi";
import { ClosedError, InvalidArgumentError } from "./errors.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "./backends/types.ts";

const TWO32 = 0x1_0000_0000;

/** The memory a region shares with its parent buffer. */
interface Shared {
  mapping: DmaMapping | undefined;
  readonly buffer: ArrayBuffer;
}

/** Passed by region() only: makes the constructor wrap shared memory instead of allocating. */
interface RegionOf {
  readonly shared: Shared;
  readonly base: number;
}

export class DmaBuffer {
  /** Usable bytes: whole 4 KiB pages for a buffer, exactly the length asked for a region. */
  readonly size: number;
  /** Byte offset of this buffer inside its mapping (0 except for regions). */
  readonly base: number;
  readonly #backend: Backend;
  readonly #shared: Shared;
  readonly #owner: boolean;
  readonly #bytes: Uint8Array;
  readonly #u32: Uint32Array;

  constructor(backend: Backend, size: number, opts: DmaOptions = {}, regionOf?: RegionOf) {
    if (!Number.isInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA buffer size must be a positive integer, got ${size}`);
    this.#backend = backend;
    if (regionOf) {
      this.#shared = regionOf.shared;
      this.#owner = false;
      this.base = regionOf.base;
      this.size = size;
    } else {
      const mapping = backend.allocDma(size, opts);
      const shared: Shared = { mapping, buffer: toArrayBuffer(mapping.vaddr, 0, mapping.size) };
      // The backend may unmap this memory itself (close()); detach the views first.
      mapping.revoke = () => detach(shared);
      this.#shared = shared;
      this.#owner = true;
      this.base = 0;
      this.size = mapping.size;
    }
    this.#bytes = new Uint8Array(this.#shared.buffer, this.base, this.size);
    this.#u32 = new Uint32Array(this.#shared.buffer, this.base, Math.floor(this.size / 4));
  }

  get freed(): boolean {
    return this.#shared.mapping === undefined;
  }

  #live(): DmaMapping {
    const m = this.#shared.mapping;
    if (!m) throw new ClosedError("this DMA buffer was freed (or its controller closed); allocate a new one");
    return m;
  }

  /** True when the controller behind `backend` can reach this memory. */
  belongsTo(backend: Backend): boolean {
    return this.#backend === backend;
  }

  /** Host address of the first byte, for native calls. */
  get pointer(): Pointer {
    return (Number(this.#live().vaddr) + this.base) as Pointer;
  }

  /** Byte view over the buffer (no copy). */
  get bytes(): Uint8Array {
    this.#live();
    return this.#bytes;
  }

  /** Dword view over the buffer (no copy); SQ/CQ rings and PRP lists are written through it. */
  get u32(): Uint32Array {
    this.#live();
    return this.#u32;
  }

  /** The mapping's per-4 KiB-page bus addresses as (lo, hi) pairs (of the whole mapping for a region). */
  get iova(): Uint32Array {
    return this.#live().iova;
  }

  get contiguous(): boolean {
    return this.#live().contiguous;
  }

  /** Bus address of the byte at `offset`. */
  busAddress(offset = 0): number {
    const m = this.#live();
    if (offset < 0 || offset >= this.size) throw new InvalidArgumentError(`offset ${offset} outside DMA buffer of ${this.size} bytes`);
    const at = this.base + offset;
    const page = Math.floor(at / HOST_PAGE_SIZE);
    return m.iova[2 * page]! + m.iova[2 * page + 1]! * TWO32 + (at % HOST_PAGE_SIZE);
  }

  /**
   * A view of [offset, offset+length) of this buffer that commands use like a buffer of its
   * own, without copying. Freeing the parent invalidates it; freeing the region does nothing.
   * `offset` must be a multiple of 4 (data pointers are dword aligned).
   */
  region(offset: number, length: number): DmaBuffer {
    this.#live();
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new InvalidArgumentError(`region ${offset}+${length} does not fit a DMA buffer of ${this.size} bytes`);
    }
    if (offset % 4 !== 0) throw new InvalidArgumentError(`region offset ${offset} must be a multiple of 4 (dword alignment)`);
    return new DmaBuffer(this.#backend, length, {}, { shared: this.#shared, base: this.base + offset });
  }

  /** Release the memory. Views from `bytes`/`u32`, and regions, become empty. Idempotent. */
  free(): void {
    if (!this.#owner) return;
    const m = detach(this.#shared);
    if (m) this.#backend.freeDma(m);
  }

  [Symbol.dispose](): void {
    this.free();
  }
}

function detach(shared: Shared): DmaMapping | undefined {
  const m = shared.mapping;
  if (!m) return undefined;
  shared.mapping = undefined;
  m.revoke = undefined;
  // Every view over the external memory (regions' too) becomes empty before it is unmapped.
  shared.buffer.transfer(0);
  return m;
}
