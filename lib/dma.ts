/**
 * DMA buffers: C-owned memory the controller reaches by bus address, seen from JS through
 * zero-copy typed-array views. free() detaches the views before the memory goes away, so a
 * stale view reads as empty instead of touching unmapped memory (which would kill the process).
 */
import { toArrayBuffer } from "bun:ffi";
import type { Pointer } from "bun:ffi";
import { ClosedError, InvalidArgumentError } from "./errors.ts";
import { HOST_PAGE_SIZE, type Backend, type DmaMapping, type DmaOptions } from "./backends/types.ts";

const TWO32 = 0x1_0000_0000;

export class DmaBuffer {
  readonly size: number;
  readonly #backend: Backend;
  #mapping: DmaMapping | undefined;
  #buffer: ArrayBuffer;
  #bytes: Uint8Array;
  #u32: Uint32Array;

  constructor(backend: Backend, size: number, opts: DmaOptions = {}) {
    if (!Number.isInteger(size) || size <= 0) throw new InvalidArgumentError(`DMA buffer size must be a positive integer, got ${size}`);
    this.#backend = backend;
    this.#mapping = backend.allocDma(size, opts);
    this.size = this.#mapping.size;
    this.#buffer = toArrayBuffer(this.#mapping.vaddr, 0, this.size);
    this.#bytes = new Uint8Array(this.#buffer);
    this.#u32 = new Uint32Array(this.#buffer);
    // The backend may unmap this memory itself (close()); detach the views first.
    this.#mapping.revoke = () => this.#detach();
  }

  #detach(): DmaMapping | undefined {
    const m = this.#mapping;
    if (!m) return undefined;
    this.#mapping = undefined;
    m.revoke = undefined;
    // Every view over the external memory becomes empty before it is unmapped.
    this.#buffer.transfer(0);
    return m;
  }

  get freed(): boolean {
    return this.#mapping === undefined;
  }

  #live(): DmaMapping {
    if (!this.#mapping) throw new ClosedError("this DMA buffer was freed; allocate a new one");
    return this.#mapping;
  }

  /** Host address of the first byte, for native calls. */
  get pointer(): Pointer {
    return this.#live().vaddr;
  }

  /** Byte view over the whole buffer (no copy). */
  get bytes(): Uint8Array {
    this.#live();
    return this.#bytes;
  }

  /** Dword view over the whole buffer (no copy); SQ/CQ rings and PRP lists are written through it. */
  get u32(): Uint32Array {
    this.#live();
    return this.#u32;
  }

  /** The backend's per-page bus addresses as (lo, hi) pairs. */
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
    const page = Math.floor(offset / HOST_PAGE_SIZE);
    return m.iova[2 * page]! + m.iova[2 * page + 1]! * TWO32 + (offset % HOST_PAGE_SIZE);
  }

  /** Release the memory. Views taken from `bytes`/`u32` become empty. Idempotent. */
  free(): void {
    const m = this.#detach();
    if (m) this.#backend.freeDma(m);
  }

  [Symbol.dispose](): void {
    this.free();
  }
}
